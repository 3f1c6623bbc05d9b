//! `RedisListener`: one dedicated connection looping `XREAD BLOCK` over
//! every room stream this process serves, handing each batch once to each
//! room subscription of that stream (one per thread with sessions of the
//! room). A new subscription interrupts the blocked read (`CLIENT UNBLOCK`),
//! so it never waits for the block timeout. It also knows every room
//! subscription of the process, so process-wide requests (close everything,
//! recheck permissions) go through it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::aio::MultiplexedConnection;

use super::messages::{
    Broadcast, RoomEvent, StreamBatch, Subscribe, Unsubscribe, CLOSE_TRY_AGAIN_LATER,
};
use crate::backoff::Backoff;
use crate::redis::{
    client_id, read_streams_blocking, RedisError, RedisStore, StreamEntry, StreamId,
};

struct Subscription {
    /// Entries up to here were handed out; None while no room reads yet.
    after: Option<StreamId>,
    rooms: Vec<(u64, Recipient<RoomEvent>)>,
}

/// Entries per stream per read; a busy room catches up over several reads.
const READ_COUNT: usize = 1000;
/// A read returning at least this many entries (over all streams) means
/// the streams are busy.
const BUSY_READ_ENTRIES: usize = 2;

pub struct RedisListener {
    store: RedisStore,
    block: Duration,
    read_margin: Duration,
    /// Least time between the starts of two reads while the streams are
    /// busy, so that under load one read collects many publishes.
    read_interval: Duration,
    subscriptions: HashMap<String, Subscription>,
    /// The connection and its `CLIENT ID` while idle; it travels with the read future.
    connection: Option<(MultiplexedConnection, i64)>,
    /// Connecting, reading or waiting to retry.
    busy: bool,
    /// `CLIENT ID` of the connection inside the running read, if one runs.
    reading: Option<i64>,
    backoff: Backoff,
}

impl RedisListener {
    /// `read_margin`: how much longer than `block` a read may take.
    pub fn new(
        store: RedisStore,
        block: Duration,
        read_margin: Duration,
        read_interval: Duration,
    ) -> Self {
        RedisListener {
            store,
            block,
            read_margin,
            read_interval,
            subscriptions: HashMap::new(),
            connection: None,
            busy: false,
            reading: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    fn read_next(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.subscriptions.is_empty() {
            return;
        }
        self.busy = true;
        let Some((mut conn, id)) = self.connection.take() else {
            let store = self.store.clone();
            let connect = async move {
                let mut conn = store.dedicated_connection().await?;
                let id = client_id(&mut conn).await?;
                Ok::<_, RedisError>((conn, id))
            };
            ctx.spawn(connect.into_actor(self).map(|result, act, ctx| {
                act.busy = false;
                match result {
                    Ok(connection) => {
                        act.connection = Some(connection);
                        act.read_next(ctx);
                    }
                    Err(e) => act.retry_later(e, ctx),
                }
            }));
            return;
        };
        let streams: Vec<(String, StreamId)> = self
            .subscriptions
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), s.after?)))
            .collect();
        // Only subscriptions still loading their room: idle until one is
        // ready (its Subscribe starts the read, as `reading` stays None).
        if streams.is_empty() {
            self.busy = false;
            self.connection = Some((conn, id));
            return;
        }
        self.reading = Some(id);
        let block = self.block;
        // A connection whose peer vanished without a reset never answers;
        // past this the read counts as failed and the connection is replaced.
        let deadline = block + self.read_margin;
        let started = Instant::now();
        let read = async move {
            let reading = read_streams_blocking(&mut conn, &streams, block, READ_COUNT);
            let result = match tokio::time::timeout(deadline, reading).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::ReadTimeout(deadline)),
            };
            (conn, streams, result)
        };
        ctx.spawn(
            read.into_actor(self)
                .map(move |(conn, asked, result), act, ctx| {
                    act.busy = false;
                    act.reading = None;
                    match result {
                        Ok(batches) => {
                            if act.backoff.failures() > 0 {
                                act.backoff.reset();
                                act.resync_rooms();
                            }
                            act.connection = Some((conn, id));
                            let entries: usize = batches.iter().map(|(_, e)| e.len()).sum();
                            act.route(&asked, batches);
                            // One entry is light traffic (an edit at a time):
                            // read again at once. Several: the streams are
                            // busy, so space the reads out.
                            let wait = act.read_interval.saturating_sub(started.elapsed());
                            if entries >= BUSY_READ_ENTRIES && !wait.is_zero() {
                                act.busy = true;
                                ctx.run_later(wait, |act, ctx| {
                                    act.busy = false;
                                    act.read_next(ctx);
                                });
                            } else {
                                act.read_next(ctx);
                            }
                        }
                        Err(e) => act.retry_later(e, ctx),
                    }
                }),
        );
    }

    /// Drops the connection and tries again with backoff; logs once per outage.
    fn retry_later(&mut self, error: RedisError, ctx: &mut Context<Self>) {
        if self.backoff.failures() == 0 {
            tracing::error!(error = %error, "redis listener cannot read; retrying with backoff");
        }
        self.connection = None;
        self.busy = true;
        ctx.run_later(self.backoff.next_delay(), |act, ctx| {
            act.busy = false;
            act.read_next(ctx);
        });
    }

    /// After an outage the stream may have lost entries (Redis restarted
    /// empty) and sessions may have edits that never reached it: clients
    /// reconnect and run a full sync both ways, which restores both.
    fn resync_rooms(&mut self) {
        tracing::info!(
            rooms = self.subscriptions.len(),
            "redis listener reading again; asking clients to resync"
        );
        self.broadcast(RoomEvent::CloseAll {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "redis connection restored, resyncing",
        });
    }

    fn broadcast(&self, event: RoomEvent) {
        for sub in self.subscriptions.values() {
            for (_, room) in &sub.rooms {
                room.do_send(event.clone());
            }
        }
    }

    fn route(&mut self, asked: &[(String, StreamId)], batches: Vec<(String, Vec<StreamEntry>)>) {
        let asked: HashMap<&str, StreamId> =
            asked.iter().map(|(k, id)| (k.as_str(), *id)).collect();
        for (key, entries) in batches {
            let Some(sub) = self.subscriptions.get_mut(&key) else {
                continue;
            };
            // A subscription rewound while this read ran: the next read
            // fetches these entries again, from the earlier position.
            if asked.get(key.as_str()) != sub.after.as_ref() {
                continue;
            }
            let Some(last) = entries.last() else { continue };
            sub.after = Some(last.id);
            let batch = StreamBatch {
                entries: Arc::from(entries),
            };
            for (_, room) in &sub.rooms {
                room.do_send(RoomEvent::Batch(batch.clone()));
            }
        }
    }

    /// Interrupts the running read so the next one sees new subscriptions.
    fn interrupt_read(&mut self, ctx: &mut Context<Self>) {
        match self.reading {
            Some(client_id) => {
                let store = self.store.clone();
                actix::spawn(async move {
                    if let Err(e) = store.unblock_client(client_id).await {
                        tracing::warn!(error = %e, "could not interrupt the blocked stream read");
                    }
                });
            }
            // Idle: start reading; connecting or backing off: the next read includes it.
            None => self.read_next(ctx),
        }
    }
}

impl Actor for RedisListener {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let sub = self
            .subscriptions
            .entry(msg.key)
            .or_insert_with(|| Subscription {
                after: None,
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
            self.interrupt_read(ctx);
        }
    }
}

impl Handler<Unsubscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(sub) = self.subscriptions.get_mut(&msg.key) {
            sub.rooms.retain(|(id, _)| *id != msg.room_id);
            if sub.rooms.is_empty() {
                self.subscriptions.remove(&msg.key);
            }
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
                if let Some(sub) = self.subscriptions.get(&key) {
                    for (_, room) in &sub.rooms {
                        room.do_send(RoomEvent::Recheck { user: user.clone() });
                    }
                }
            }
        }
    }
}
