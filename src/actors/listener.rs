//! `RedisListener`: loops `XREAD BLOCK` over every room stream this process
//! serves, handing each batch once to each room subscription of that stream
//! (one open per thread with sessions of the room). Streams are read in groups,
//! each over its own dedicated connection: one group for all streams on a
//! single Redis, one per bucket on a Redis Cluster (a bucket's streams share
//! a slot, so one `XREAD` may name them all; ARCHITECTURE.md, "Redis Cluster
//! layout"). A group exists only while it has subscribed streams, so quiet
//! buckets cost nothing. A new subscription interrupts its group's blocked
//! read (`CLIENT UNBLOCK`), so it never waits for the block timeout.
//!
//! On a single Redis (or Sentinel), quiet streams are not named in reads:
//! a stream without entries for 2 s (`QUIET_AFTER`) has its keyspace
//! notification channel subscribed ([`StreamEvents`]), and is read again
//! only when Redis announces an append to it (a read blocked on the busy
//! streams is interrupted for it). Its first entries make it busy again and
//! end its subscription, since a notification per append would cost Redis
//! more than naming the stream in every read. So the cost of a read follows
//! the busy rooms, not the number of rooms served. Whenever the notification
//! connection is down, every stream counts as busy; a read naming every
//! stream also runs once per block time, in case a notification went
//! missing.
//!
//! It also knows every room subscription of the process, so process-wide
//! requests (close everything, recheck permissions) go through it.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::{wrap_stream, ActorStreamExt};
use actix::prelude::*;
use redis::aio::{MultiplexedConnection, PubSubSink};

use super::messages::{
    Broadcast, HandledSignal, RoomEvent, StreamBatch, Subscribe, Unsubscribe, CLOSE_TRY_AGAIN_LATER,
};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::metrics;
use crate::streams::{
    client_id, read_streams_blocking, stream_read_command, ReaderNode, RedisError, RedisStreams,
    StreamEntry, StreamEvents, StreamId,
};

struct Subscription {
    /// Entries up to here were handed out; None while no room reads yet.
    after: Option<StreamId>,
    /// Where the running read asked this stream from. Its entries are
    /// handed out only if `after` is still there: a subscription rewound
    /// (or renewed) meanwhile reads them again from its new position.
    read_from: Option<StreamId>,
    rooms: Vec<(u64, Recipient<RoomEvent>)>,
    /// Redis announced an append since the last read that named the stream
    /// (or entries are left over, or it was rewound).
    news: bool,
    /// Quiet: its notification channel is subscribed, and reads skip it
    /// unless it has news.
    announced: bool,
    /// Its channel is being subscribed.
    announcing: bool,
    /// When it last had entries (or was subscribed).
    last_active: Instant,
}

impl Subscription {
    /// Whether the next read names this stream.
    fn wanted(&self, sweep: bool) -> bool {
        self.after.is_some() && (sweep || self.news || !self.announced)
    }
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
/// A stream without entries this long counts as quiet: notifications wake
/// its reads (when they are live).
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// Interrupting a read that Redis has not started blocking yet does
/// nothing: tries, and the pause between them.
const UNBLOCK_TRIES: usize = 3;
const UNBLOCK_RETRY: Duration = Duration::from_millis(5);

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
    /// The next read names every stream, notified or not.
    sweep_due: bool,
}

impl Group {
    fn new() -> Self {
        Group {
            subscriptions: HashMap::new(),
            connection: None,
            busy: false,
            reading: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            sweep_due: false,
        }
    }
}

/// How reads learn which streams have news.
enum Wakeups {
    /// Every read names every stream and blocks: notifications are not
    /// wanted (`REDIS_STREAM_EVENTS=false`), not usable (Redis Cluster), or
    /// Redis refused them.
    Off,
    /// Connecting the notification subscriber, or waiting to retry; reads
    /// name every stream meanwhile.
    Connecting,
    /// Notifications arrive on this connection.
    Live {
        sink: PubSubSink,
        channel_prefix: String,
        /// The task handling the notifications (cancelled to drop the connection).
        messages: SpawnHandle,
    },
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
    wakeups: Wakeups,
    /// Counts notification connections, so that late answers from one
    /// that is gone change nothing.
    wakeup_generation: u64,
    wakeup_backoff: Backoff,
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
    /// Reads block for `REDIS_BLOCK_MS` and may take `REDIS_COMMAND_TIMEOUT_MS`
    /// longer; busy reads are spaced by the `REDIS_READ_INTERVAL_*` range;
    /// `REDIS_STREAM_EVENTS` wakes reads by keyspace notifications (ignored
    /// on Redis Cluster, where each node announces only its own keys).
    pub fn new(streams: RedisStreams, config: &Config) -> Self {
        let wakeups = if config.redis_stream_events && !streams.keys().is_clustered() {
            Wakeups::Connecting
        } else {
            Wakeups::Off
        };
        RedisListener {
            streams,
            block: config.redis_block,
            read_margin: config.redis_command_timeout,
            read_interval: config.redis_read_interval..=config.redis_read_interval_max,
            delivery_rate: DeliveryRate::default(),
            groups: HashMap::new(),
            wakeups,
            wakeup_generation: 0,
            wakeup_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    fn is_live(&self) -> bool {
        matches!(self.wakeups, Wakeups::Live { .. })
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
        let sweep = std::mem::take(&mut group.sweep_due);
        let (mut named, mut news) = (0, sweep);
        for sub in group.subscriptions.values_mut() {
            sub.read_from = sub.after;
            if sub.wanted(sweep) {
                named += 1;
                news |= sub.news;
            }
        }
        // Only subscriptions still loading their room, or quiet streams
        // without news: idle until a Subscribe or a notification starts the
        // read (`reading` stays None).
        if named == 0 {
            group.busy = false;
            group.connection = Some((conn, id, node));
            return;
        }
        let named_streams = group
            .subscriptions
            .iter()
            .filter(|(_, sub)| sub.wanted(sweep))
            .filter_map(|(key, sub)| Some((key.as_str(), sub.after?)));
        // Announced news is there to read; only busy streams are waited on.
        let blocking = (!news).then_some(self.block);
        let command = stream_read_command(named_streams, blocking, READ_COUNT);
        for sub in group.subscriptions.values_mut() {
            // Named in this read (or not ready to be read at all).
            sub.news = false;
        }
        group.reading = blocking.map(|_| (id, node.clone()));
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
                    act.route(key, batches, Arc::new(signal), ctx);
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
        // What the failed read was to carry is read again, from everywhere.
        group.sweep_due = true;
        let delay = if is_redirect(&error) {
            tracing::debug!(error = %error, bucket = ?key, "stream read redirected; reading again");
            Duration::from_millis(50)
        } else {
            if group.backoff.failures() == 0 {
                tracing::error!(error = %error, bucket = ?key, "redis listener cannot read; retrying with backoff");
            }
            group.backoff.next_delay()
        };
        // The notification connection to the same Redis may be as dead
        // without knowing it: connect it again too.
        if self.is_live() {
            self.wakeups_lost(ctx);
        }
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
        ctx: &mut Context<Self>,
    ) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        let mut quiet_no_more = Vec::new();
        let now = Instant::now();
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
            // A full read may leave entries behind: no notification will say so.
            sub.news |= entries.len() >= READ_COUNT;
            sub.last_active = now;
            if sub.announced {
                // Busy again: named in every read, without notifications.
                sub.announced = false;
                quiet_no_more.push(key.clone());
            }
            let batch = StreamBatch {
                entries: Arc::from(entries),
                handled: handled.clone(),
            };
            for (_, room) in &sub.rooms {
                room.do_send(RoomEvent::Batch(batch.clone()));
            }
        }
        for key in quiet_no_more {
            self.forget(&key, ctx);
        }
    }

    /// Interrupts the group's blocked read (once) so the next one sees new
    /// subscriptions or announced news.
    fn interrupt_read(&mut self, key: GroupKey, ctx: &mut Context<Self>) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        match group.reading.take() {
            Some((client_id, node)) => {
                let streams = self.streams.clone();
                actix::spawn(async move {
                    // The read may not have reached Redis yet: try again shortly.
                    for _ in 0..UNBLOCK_TRIES {
                        match streams.unblock_client(&node, client_id).await {
                            Ok(true) => return,
                            Ok(false) => tokio::time::sleep(UNBLOCK_RETRY).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not interrupt the blocked stream read");
                                return;
                            }
                        }
                    }
                });
            }
            // Idle, or reading without blocking: start reading (a running
            // read is followed by another); connecting or backing off: the
            // next read includes it.
            None => self.read_next(key, ctx),
        }
    }

    /// Connects the notification subscriber (quiet streams are then
    /// subscribed by [`Self::announce_quiet`]); retries with backoff, gives up
    /// (every stream counts as busy) if Redis refuses notifications.
    fn connect_wakeups(&mut self, ctx: &mut Context<Self>) {
        self.wakeups = Wakeups::Connecting;
        self.wakeup_generation += 1;
        let generation = self.wakeup_generation;
        let streams = self.streams.clone();
        let connect = async move { streams.stream_events().await };
        ctx.spawn(connect.into_actor(self).map(move |result, act, ctx| {
            if act.wakeup_generation != generation {
                return;
            }
            match result {
                Ok(events) => {
                    if act.wakeup_backoff.failures() > 0 {
                        tracing::info!("stream notifications restored");
                    }
                    act.wakeup_backoff.reset();
                    let messages = wrap_stream::<_, Self>(events.messages)
                        .map(|message, act, ctx| act.notified(&message, ctx))
                        .finish()
                        .map(move |(), act, ctx| {
                            if act.wakeup_generation == generation {
                                tracing::warn!("stream notification connection closed; reconnecting");
                                act.wakeups_lost(ctx);
                            }
                        });
                    let messages = ctx.spawn(messages);
                    act.wakeups = Wakeups::Live {
                        sink: events.sink,
                        channel_prefix: events.channel_prefix,
                        messages,
                    };
                    tracing::info!("quiet streams are read when redis keyspace notifications announce news");
                }
                Err(RedisError::EventsUnavailable(reason)) => {
                    tracing::warn!(%reason, "redis refuses keyspace notifications; every stream read names every stream (REDIS_STREAM_EVENTS=false skips asking)");
                    act.wakeups = Wakeups::Off;
                }
                Err(e) => {
                    if act.wakeup_backoff.failures() == 0 {
                        tracing::error!(error = %e, "cannot subscribe to stream notifications; reads name every stream meanwhile");
                    }
                    ctx.run_later(act.wakeup_backoff.next_delay(), move |act, ctx| {
                        if act.wakeup_generation == generation {
                            act.connect_wakeups(ctx);
                        }
                    });
                }
            }
        }));
    }

    /// The notification connection is gone (or suspect): every stream
    /// counts as busy until its channel is subscribed on a new one.
    fn wakeups_lost(&mut self, ctx: &mut Context<Self>) {
        if let Wakeups::Live { messages, .. } = &self.wakeups {
            ctx.cancel_future(*messages);
        }
        for group in self.groups.values_mut() {
            for sub in group.subscriptions.values_mut() {
                sub.announced = false;
                sub.announcing = false;
            }
        }
        self.connect_wakeups(ctx);
        // A quiet stream may have news that no notification will bring.
        self.interrupt_read(None, ctx);
    }

    /// Subscribes the notification channels of the streams that had no
    /// entries for [`QUIET_AFTER`].
    fn announce_quiet(&mut self, ctx: &mut Context<Self>) {
        if !self.is_live() {
            return;
        }
        let Some(group) = self.groups.get_mut(&None) else {
            return;
        };
        let now = Instant::now();
        let quiet: Vec<String> = group
            .subscriptions
            .iter_mut()
            .filter(|(_, sub)| {
                sub.after.is_some()
                    && !sub.announced
                    && !sub.announcing
                    && now.duration_since(sub.last_active) >= QUIET_AFTER
            })
            .map(|(key, sub)| {
                sub.announcing = true;
                key.clone()
            })
            .collect();
        if !quiet.is_empty() {
            tracing::debug!(
                streams = quiet.len(),
                "subscribing notifications of quiet streams"
            );
        }
        self.announce(quiet, ctx);
    }

    /// Subscribes the notification channels of `keys`; once Redis confirms,
    /// those streams are read once more (what was appended before the
    /// subscription took effect) and then only when announced. One that had
    /// entries meanwhile is busy: its channel is unsubscribed again.
    fn announce(&mut self, keys: Vec<String>, ctx: &mut Context<Self>) {
        if keys.is_empty() {
            return;
        }
        let Some((mut sink, channels)) = self.channels_of(&keys) else {
            return;
        };
        let generation = self.wakeup_generation;
        let asked = Instant::now();
        let subscribe = async move { sink.subscribe(channels).await };
        ctx.spawn(subscribe.into_actor(self).map(move |result, act, ctx| {
            if act.wakeup_generation != generation {
                return;
            }
            let Some(group) = act.groups.get_mut(&None) else {
                return;
            };
            if let Err(e) = &result {
                // The connection failing ends its messages, which reconnects.
                tracing::warn!(error = %e, streams = keys.len(), "could not subscribe stream notifications");
            }
            let mut busy_again = Vec::new();
            for key in keys {
                let Some(sub) = group.subscriptions.get_mut(&key) else {
                    continue;
                };
                sub.announcing = false;
                if result.is_err() {
                    continue;
                }
                if sub.last_active > asked {
                    busy_again.push(key);
                } else {
                    sub.announced = true;
                    sub.news = true;
                }
            }
            tracing::debug!(busy_again = busy_again.len(), ok = result.is_ok(), "quiet stream notifications subscribed");
            for key in busy_again {
                act.forget(&key, ctx);
            }
            act.interrupt_read(None, ctx);
        }));
    }

    /// Unsubscribes the notification channel of a stream that is busy again
    /// or that no room here reads any more. (Spawned on the actor like
    /// `announce`, so a quick re-subscription reaches Redis after it.)
    fn forget(&mut self, key: &str, ctx: &mut Context<Self>) {
        let Some((mut sink, channels)) = self.channels_of(&[key]) else {
            return;
        };
        let unsubscribe = async move {
            if let Err(e) = sink.unsubscribe(channels).await {
                tracing::debug!(error = %e, "could not unsubscribe stream notifications");
            }
        };
        ctx.spawn(unsubscribe.into_actor(self));
    }

    /// The notification channels of `keys`, and the connection to
    /// (un)subscribe them on, while notifications are live.
    fn channels_of(&self, keys: &[impl AsRef<str>]) -> Option<(PubSubSink, Vec<String>)> {
        let Wakeups::Live {
            sink,
            channel_prefix,
            ..
        } = &self.wakeups
        else {
            return None;
        };
        let channels = keys
            .iter()
            .map(|key| StreamEvents::channel(channel_prefix, key.as_ref()))
            .collect();
        Some((sink.clone(), channels))
    }

    /// A notification: an append to a quiet stream marks it, and starts a
    /// read, or interrupts the one blocked on the busy streams (a read
    /// running otherwise is followed by another).
    fn notified(&mut self, message: &redis::Msg, ctx: &mut Context<Self>) {
        let Wakeups::Live { channel_prefix, .. } = &self.wakeups else {
            return;
        };
        let Some(key) = StreamEvents::appended(channel_prefix, message) else {
            return;
        };
        let Some(group) = self.groups.get_mut(&None) else {
            return;
        };
        let Some(sub) = group.subscriptions.get_mut(key) else {
            return;
        };
        sub.news = true;
        self.interrupt_read(None, ctx);
    }
}

impl Actor for RedisListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.wakeups, Wakeups::Off) {
            return;
        }
        self.connect_wakeups(ctx);
        ctx.run_interval(QUIET_AFTER / 2, |act, ctx| act.announce_quiet(ctx));
        // A read naming every stream once per block time, in case a
        // notification went missing.
        ctx.run_interval(self.block, |act, ctx| {
            if !act.is_live() {
                return;
            }
            if let Some(group) = act.groups.get_mut(&None) {
                group.sweep_due = true;
            }
            act.read_next(None, ctx);
        });
    }
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
                news: false,
                announced: false,
                announcing: false,
                last_active: Instant::now(),
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
            sub.news = true;
            self.interrupt_read(key, ctx);
        }
    }
}

impl Handler<Unsubscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        let key = self.group_of(&msg.key);
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        let mut gone = false;
        if let Some(sub) = group.subscriptions.get_mut(&msg.key) {
            sub.rooms.retain(|(id, _)| *id != msg.room_id);
            if sub.rooms.is_empty() {
                gone = sub.announced || sub.announcing;
                group.subscriptions.remove(&msg.key);
            }
        }
        // A bucket without streams closes its connection once no read runs
        // (see `read_next`).
        if group.subscriptions.is_empty() && !group.busy && key.is_some() {
            self.groups.remove(&key);
        }
        if gone {
            self.forget(&msg.key, ctx);
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
