//! `RedisListener`: one dedicated connection looping `XREAD BLOCK` over every
//! subscribed room stream of this process, routing each batch to its `Room`.
//! A new subscription interrupts the blocked read (`CLIENT UNBLOCK`) so it
//! never waits for the block timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::MultiplexedConnection;

use super::room::{CloseAll, Room, CLOSE_TRY_AGAIN_LATER};
use crate::redis::{
    client_id, read_streams_blocking, RedisError, RedisStore, StreamEntry, StreamId,
};

/// Entries read from one room stream, oldest first.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct StreamBatch {
    pub entries: Arc<[StreamEntry]>,
}

/// Start delivering entries of `key` newer than `after` to `room`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub key: String,
    pub after: StreamId,
    pub room: Addr<Room>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub key: String,
    /// Only this room's subscription ends: a new room for the same key may
    /// already have subscribed.
    pub room: Addr<Room>,
}

struct Subscription {
    after: StreamId,
    room: Addr<Room>,
}

/// Entries per stream per read; a busy room catches up over several reads.
const READ_COUNT: usize = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RedisListener {
    store: RedisStore,
    block: Duration,
    read_margin: Duration,
    subscriptions: HashMap<String, Subscription>,
    /// The connection and its `CLIENT ID` while idle; it travels with the read future.
    connection: Option<(MultiplexedConnection, i64)>,
    /// Connecting, reading or waiting to retry.
    busy: bool,
    /// `CLIENT ID` of the connection inside the running read, if one runs.
    reading: Option<i64>,
    failures: u32,
}

impl RedisListener {
    /// `read_margin`: how much longer than `block` a read may take.
    pub fn new(store: RedisStore, block: Duration, read_margin: Duration) -> Self {
        RedisListener {
            store,
            block,
            read_margin,
            subscriptions: HashMap::new(),
            connection: None,
            busy: false,
            reading: None,
            failures: 0,
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
        self.reading = Some(id);
        let streams: Vec<(String, StreamId)> = self
            .subscriptions
            .iter()
            .map(|(k, s)| (k.clone(), s.after))
            .collect();
        let block = self.block;
        // A connection whose peer vanished without a reset never answers;
        // past this the read counts as failed and the connection is replaced.
        let deadline = block + self.read_margin;
        let read = async move {
            let reading = read_streams_blocking(&mut conn, &streams, block, READ_COUNT);
            let result = match tokio::time::timeout(deadline, reading).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::ReadTimeout(deadline)),
            };
            (conn, result)
        };
        ctx.spawn(read.into_actor(self).map(move |(conn, result), act, ctx| {
            act.busy = false;
            act.reading = None;
            match result {
                Ok(batches) => {
                    if act.failures > 0 {
                        act.failures = 0;
                        act.resync_rooms();
                    }
                    act.connection = Some((conn, id));
                    act.route(batches);
                    act.read_next(ctx);
                }
                Err(e) => act.retry_later(e, ctx),
            }
        }));
    }

    /// Drops the connection and tries again with backoff; logs once per outage.
    fn retry_later(&mut self, error: RedisError, ctx: &mut Context<Self>) {
        if self.failures == 0 {
            tracing::error!(error = %error, "redis listener cannot read; retrying with backoff");
        }
        self.failures += 1;
        self.connection = None;
        self.busy = true;
        let backoff =
            Duration::from_millis(100 * 2u64.saturating_pow(self.failures.min(6))).min(MAX_BACKOFF);
        ctx.run_later(backoff, |act, ctx| {
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
        for sub in self.subscriptions.values() {
            sub.room.do_send(CloseAll {
                code: CLOSE_TRY_AGAIN_LATER,
                reason: "redis connection restored, resyncing",
            });
        }
    }

    fn route(&mut self, batches: Vec<(String, Vec<StreamEntry>)>) {
        for (key, entries) in batches {
            let Some(sub) = self.subscriptions.get_mut(&key) else {
                continue;
            };
            // A read started before a re-subscription may return entries the
            // new room already has.
            let fresh: Arc<[StreamEntry]> =
                entries.into_iter().filter(|e| e.id > sub.after).collect();
            let Some(last) = fresh.last() else { continue };
            sub.after = last.id;
            sub.room.do_send(StreamBatch { entries: fresh });
        }
    }
}

impl Actor for RedisListener {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        self.subscriptions.insert(
            msg.key,
            Subscription {
                after: msg.after,
                room: msg.room,
            },
        );
        match self.reading {
            // The running read does not include the new stream: wake it.
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

impl Handler<Unsubscribe> for RedisListener {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if self
            .subscriptions
            .get(&msg.key)
            .is_some_and(|sub| sub.room == msg.room)
        {
            self.subscriptions.remove(&msg.key);
        }
    }
}
