//! `RedisListener`: loops `XREAD BLOCK` over every room stream this process
//! serves, handing each batch once to each room subscription of that stream
//! (one per thread with sessions of the room). Streams are read in groups,
//! each over its own dedicated connection: one group for all streams on a
//! single Redis, one per bucket on a Redis Cluster (a bucket's streams share
//! a slot, so one `XREAD` may name them all; ARCHITECTURE.md, "Redis Cluster
//! layout"). A group exists only while it has subscribed streams, so quiet
//! buckets cost nothing. A new subscription interrupts its group's blocked
//! read (`CLIENT UNBLOCK`), so it never waits for the block timeout. It also
//! knows every room subscription of the process, so process-wide requests
//! (close everything, recheck permissions) go through it.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::aio::MultiplexedConnection;

use super::messages::{
    Broadcast, HandledSignal, RoomEvent, StreamBatch, Subscribe, Unsubscribe, CLOSE_TRY_AGAIN_LATER,
};
use crate::backoff::Backoff;
use crate::metrics;
use crate::streams::{
    client_id, read_streams_blocking, stream_read_command, ReaderNode, RedisError, RedisStreams,
    StreamEntry, StreamId,
};

struct Subscription {
    /// Entries up to here were handed out; None while no room reads yet.
    after: Option<StreamId>,
    /// Where the running read asked this stream from. Its entries are
    /// handed out only if `after` is still there: a subscription rewound
    /// (or renewed) meanwhile reads them again from its new position.
    read_from: Option<StreamId>,
    rooms: Vec<(u64, Recipient<RoomEvent>)>,
}

/// Entries per stream per read; a busy room catches up over several reads.
const READ_COUNT: usize = 1000;
/// A read returning at least this many entries (over all streams) means
/// the streams are busy.
const BUSY_READ_ENTRIES: usize = 2;
/// Messages per second this process delivers to clients up to which busy
/// reads are spaced by the least interval; above it the spacing grows in
/// proportion (up to the longest), so heavy fan-out carries more messages
/// per read and per socket write instead of making more of each.
const BUSY_DELIVERY_RATE: f64 = 60_000.0;
/// The delivery rate is measured over windows of at least this long.
const RATE_WINDOW: Duration = Duration::from_millis(200);
/// The longest a busy read waits for the rooms to handle the previous one
/// (a thread stuck elsewhere must not stop every room's stream).
const FAN_OUT_WAIT: Duration = Duration::from_secs(1);

/// Streams read together, and the connection reading them: all streams
/// (key None), or one cluster bucket's.
type GroupKey = Option<u16>;

struct Group {
    subscriptions: HashMap<String, Subscription>,
    /// The connection, its `CLIENT ID` and node while idle; it travels with the read future.
    connection: Option<(MultiplexedConnection, i64, ReaderNode)>,
    /// Connecting, reading or waiting to retry.
    busy: bool,
    /// `CLIENT ID` and node of the connection inside the running read, if one runs.
    reading: Option<(i64, ReaderNode)>,
    backoff: Backoff,
}

impl Group {
    fn new() -> Self {
        Group {
            subscriptions: HashMap::new(),
            connection: None,
            busy: false,
            reading: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// How fast this process delivers messages to clients, which sets the
/// spacing of busy reads.
#[derive(Default)]
struct DeliveryRate {
    per_second: f64,
    /// When the current window started, and the delivery count then.
    window: Option<(Instant, u64)>,
}

impl DeliveryRate {
    /// The spacing of busy reads at `now`, with `delivered` messages
    /// delivered so far: `interval`'s start up to [`BUSY_DELIVERY_RATE`],
    /// then growing in proportion up to its end.
    fn spacing(
        &mut self,
        now: Instant,
        delivered: u64,
        interval: &RangeInclusive<Duration>,
    ) -> Duration {
        let (since, at_start) = *self.window.get_or_insert((now, delivered));
        let elapsed = now.duration_since(since);
        if elapsed >= RATE_WINDOW {
            self.per_second = delivered.saturating_sub(at_start) as f64 / elapsed.as_secs_f64();
            self.window = Some((now, delivered));
        }
        interval
            .start()
            .mul_f64((self.per_second / BUSY_DELIVERY_RATE).max(1.0))
            .min(*interval.end())
    }
}

pub struct RedisListener {
    streams: RedisStreams,
    block: Duration,
    read_margin: Duration,
    /// Least and longest time between the starts of two reads of a group
    /// while its streams are busy, so that under load one read collects
    /// many publishes (see [`BUSY_DELIVERY_RATE`]).
    read_interval: RangeInclusive<Duration>,
    delivery_rate: DeliveryRate,
    groups: HashMap<GroupKey, Group>,
}

/// Whether a read failed only because its slot moved or is moving between
/// cluster nodes (resharding): nothing was lost, so read again soon (from
/// the node serving it now) without counting an outage. (`CLUSTERDOWN` is
/// an outage: a failed node may come back without its data.)
fn is_redirect(error: &RedisError) -> bool {
    matches!(error, RedisError::Command(e)
        if matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN")))
}

impl RedisListener {
    /// `read_margin`: how much longer than `block` a read may take.
    pub fn new(
        streams: RedisStreams,
        block: Duration,
        read_margin: Duration,
        read_interval: RangeInclusive<Duration>,
    ) -> Self {
        RedisListener {
            streams,
            block,
            read_margin,
            read_interval,
            delivery_rate: DeliveryRate::default(),
            groups: HashMap::new(),
        }
    }

    fn group_of(&self, key: &str) -> GroupKey {
        self.streams.keys().bucket_of(key)
    }

    fn read_next(&mut self, key: GroupKey, ctx: &mut Context<Self>) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        if group.busy {
            return;
        }
        if group.subscriptions.is_empty() {
            // A cluster bucket nobody here reads any more: close its connection.
            if key.is_some() {
                self.groups.remove(&key);
            }
            return;
        }
        group.busy = true;
        let Some((mut conn, id, node)) = group.connection.take() else {
            let streams = self.streams.clone();
            let connect = async move {
                let (mut conn, node) = streams.reader_connection(key).await?;
                let id = client_id(&mut conn).await?;
                Ok::<_, RedisError>((conn, id, node))
            };
            ctx.spawn(connect.into_actor(self).map(move |result, act, ctx| {
                let Some(group) = act.groups.get_mut(&key) else {
                    return;
                };
                group.busy = false;
                match result {
                    Ok(connection) => {
                        group.connection = Some(connection);
                        act.read_next(key, ctx);
                    }
                    Err(e) => act.retry_later(key, e, ctx),
                }
            }));
            return;
        };
        let mut ready = 0;
        for sub in group.subscriptions.values_mut() {
            sub.read_from = sub.after;
            ready += usize::from(sub.after.is_some());
        }
        // Only subscriptions still loading their room: idle until one is
        // ready (its Subscribe starts the read, as `reading` stays None).
        if ready == 0 {
            group.busy = false;
            group.connection = Some((conn, id, node));
            return;
        }
        let ready_streams = group
            .subscriptions
            .iter()
            .filter_map(|(key, sub)| Some((key.as_str(), sub.after?)));
        let command = stream_read_command(ready_streams, self.block, READ_COUNT);
        group.reading = Some((id, node.clone()));
        let block = self.block;
        // A connection whose peer vanished without a reset never answers;
        // past this the read counts as failed and the connection is replaced.
        let deadline = block + self.read_margin;
        let started = Instant::now();
        let read = async move {
            let reading = read_streams_blocking(&mut conn, command);
            let result = match tokio::time::timeout(deadline, reading).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::ReadTimeout(deadline)),
            };
            (conn, result)
        };
        ctx.spawn(read.into_actor(self).map(move |(conn, result), act, ctx| {
            let Some(group) = act.groups.get_mut(&key) else {
                return;
            };
            group.busy = false;
            group.reading = None;
            match result {
                Ok(batches) => {
                    let recovered = group.backoff.failures() > 0;
                    if recovered {
                        group.backoff.reset();
                    }
                    group.connection = Some((conn, id, node));
                    let entries: usize = batches.iter().map(|(_, e)| e.len()).sum();
                    if recovered {
                        act.resync_rooms(key);
                    }
                    let (signal, handled) = HandledSignal::new();
                    act.route(key, batches, Arc::new(signal));
                    // One entry is light traffic (an edit at a time):
                    // read again at once. Several: the streams are
                    // busy, so space the reads out, and wait until
                    // the rooms wrote this read's entries: a server
                    // short of CPU then reads less often, in larger
                    // batches (fewer reads, fewer socket writes per
                    // message), instead of queueing batches.
                    if entries < BUSY_READ_ENTRIES {
                        act.read_next(key, ctx);
                        return;
                    }
                    if let Some(group) = act.groups.get_mut(&key) {
                        group.busy = true;
                    }
                    let spacing = act.delivery_rate.spacing(
                        Instant::now(),
                        metrics::MESSAGES_OUT.get(),
                        &act.read_interval,
                    );
                    let pause = async move {
                        let _ = tokio::time::timeout(FAN_OUT_WAIT, handled).await;
                        tokio::time::sleep(spacing.saturating_sub(started.elapsed())).await;
                    };
                    ctx.spawn(pause.into_actor(act).map(move |(), act, ctx| {
                        if let Some(group) = act.groups.get_mut(&key) {
                            group.busy = false;
                        }
                        act.read_next(key, ctx);
                    }));
                }
                Err(e) => act.retry_later(key, e, ctx),
            }
        }));
    }

    /// Drops the connection and tries again with backoff; logs once per
    /// outage. A slot moving between cluster nodes is no outage: read again
    /// shortly from the node serving it.
    fn retry_later(&mut self, key: GroupKey, error: RedisError, ctx: &mut Context<Self>) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        group.connection = None;
        group.busy = true;
        let delay = if is_redirect(&error) {
            tracing::debug!(error = %error, bucket = ?key, "stream read redirected; reading again");
            Duration::from_millis(50)
        } else {
            if group.backoff.failures() == 0 {
                tracing::error!(error = %error, bucket = ?key, "redis listener cannot read; retrying with backoff");
            }
            group.backoff.next_delay()
        };
        ctx.run_later(delay, move |act, ctx| {
            if let Some(group) = act.groups.get_mut(&key) {
                group.busy = false;
            }
            act.read_next(key, ctx);
        });
    }

    /// After an outage the stream may have lost entries (Redis restarted
    /// empty) and sessions may have edits that never reached it: clients
    /// reconnect and run a full sync both ways, which restores both.
    fn resync_rooms(&mut self, key: GroupKey) {
        let Some(group) = self.groups.get(&key) else {
            return;
        };
        self.streams.renew_connections();
        tracing::info!(
            rooms = group.subscriptions.len(),
            bucket = ?key,
            "redis listener reading again; asking clients to resync"
        );
        let event = RoomEvent::CloseAll {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "redis connection restored, resyncing",
        };
        for sub in group.subscriptions.values() {
            for (_, room) in &sub.rooms {
                room.do_send(event.clone());
            }
        }
    }

    fn broadcast(&self, event: RoomEvent) {
        for group in self.groups.values() {
            for sub in group.subscriptions.values() {
                for (_, room) in &sub.rooms {
                    room.do_send(event.clone());
                }
            }
        }
    }

    fn route(
        &mut self,
        key: GroupKey,
        batches: Vec<(String, Vec<StreamEntry>)>,
        handled: Arc<HandledSignal>,
    ) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        for (key, entries) in batches {
            let Some(sub) = group.subscriptions.get_mut(&key) else {
                continue;
            };
            // A subscription rewound while this read ran: the next read
            // fetches these entries again, from the earlier position.
            if sub.read_from.is_none() || sub.read_from != sub.after {
                continue;
            }
            let Some(last) = entries.last() else { continue };
            sub.after = Some(last.id);
            let batch = StreamBatch {
                entries: Arc::from(entries),
                handled: handled.clone(),
            };
            for (_, room) in &sub.rooms {
                room.do_send(RoomEvent::Batch(batch.clone()));
            }
        }
    }

    /// Interrupts the group's running read so the next one sees new subscriptions.
    fn interrupt_read(&mut self, key: GroupKey, ctx: &mut Context<Self>) {
        let Some(group) = self.groups.get(&key) else {
            return;
        };
        match &group.reading {
            Some((client_id, node)) => {
                let (streams, client_id, node) = (self.streams.clone(), *client_id, node.clone());
                actix::spawn(async move {
                    if let Err(e) = streams.unblock_client(&node, client_id).await {
                        tracing::warn!(error = %e, "could not interrupt the blocked stream read");
                    }
                });
            }
            // Idle: start reading; connecting or backing off: the next read includes it.
            None => self.read_next(key, ctx),
        }
    }
}

impl Actor for RedisListener {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let key = self.group_of(&msg.key);
        let sub = self
            .groups
            .entry(key)
            .or_insert_with(Group::new)
            .subscriptions
            .entry(msg.key)
            .or_insert_with(|| Subscription {
                after: None,
                read_from: None,
                rooms: Vec::new(),
            });
        if !sub.rooms.iter().any(|(id, _)| *id == msg.room_id) {
            sub.rooms.push((msg.room_id, msg.room));
        }
        let Some(after) = msg.after else { return };
        // A room that loaded an older state needs the entries since then,
        // which the others already had: read them again for everyone (each
        // room skips what it has).
        let rewind = sub.after.is_none_or(|current| after < current);
        if rewind {
            sub.after = Some(after);
            self.interrupt_read(key, ctx);
        }
    }
}

impl Handler<Unsubscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let key = self.group_of(&msg.key);
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        if let Some(sub) = group.subscriptions.get_mut(&msg.key) {
            sub.rooms.retain(|(id, _)| *id != msg.room_id);
            if sub.rooms.is_empty() {
                group.subscriptions.remove(&msg.key);
            }
        }
        // A bucket without streams closes its connection once no read runs
        // (see `read_next`).
        if group.subscriptions.is_empty() && !group.busy && key.is_some() {
            self.groups.remove(&key);
        }
    }
}

impl Handler<Broadcast> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        match msg {
            Broadcast::CloseAll { code, reason } => {
                self.broadcast(RoomEvent::CloseAll { code, reason })
            }
            Broadcast::Recheck { key, user } => {
                let group = self.group_of(&key);
                let sub = self
                    .groups
                    .get(&group)
                    .and_then(|g| g.subscriptions.get(&key));
                if let Some(sub) = sub {
                    for (_, room) in &sub.rooms {
                        room.do_send(RoomEvent::Recheck { user: user.clone() });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_millis(30);

    /// The spacing after 2 s of delivering `per_second` messages a second,
    /// asked every 10 ms.
    fn steady(per_second: u64, interval: RangeInclusive<Duration>) -> Duration {
        let mut rate = DeliveryRate::default();
        let start = Instant::now();
        let mut spacing = Duration::ZERO;
        for ms in (0..2000).step_by(10) {
            spacing = rate.spacing(
                start + Duration::from_millis(ms),
                per_second * ms / 1000,
                &interval,
            );
        }
        spacing
    }

    #[test]
    fn busy_reads_are_spaced_by_the_least_interval_up_to_the_busy_rate() {
        assert_eq!(steady(0, LEAST..=LONGEST), LEAST);
        assert_eq!(steady(50_000, LEAST..=LONGEST), LEAST);
    }

    #[test]
    fn spacing_grows_with_the_delivery_rate_up_to_the_longest() {
        let spacing = steady(120_000, LEAST..=LONGEST);
        assert!(
            (19..=21).contains(&spacing.as_millis()),
            "spacing {spacing:?} at 120,000 deliveries/s"
        );
        assert_eq!(steady(1_000_000, LEAST..=LONGEST), LONGEST);
    }

    #[test]
    fn a_fixed_range_keeps_the_spacing_fixed() {
        assert_eq!(steady(1_000_000, LEAST..=LEAST), LEAST);
    }
}
