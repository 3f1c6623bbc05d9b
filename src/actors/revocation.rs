//! `RevocationListener`: subscribes to the Redis channel `PREFIX:recheck`,
//! where the admin endpoint of any server (or the application backend
//! directly) publishes `{"room": "...", "user": "..."}`; every process then
//! re-checks the affected sessions. Rechecks are also remembered for a
//! while, so a session whose upgrade was authorized before a recheck but
//! joined after it rechecks itself.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::listener::RedisListener;
use super::messages::Broadcast;
use crate::backoff::Backoff;
use crate::streams::{RedisError, RedisStreams};

/// The document every websocket connection edits (y-redis serves `index` only).
pub const DEFAULT_DOCID: &str = "index";

/// A recheck request: a room (as in the URL path) and optionally one user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecheckRequest {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// How long rechecks are remembered: longer than any upgrade's permission call.
const REMEMBER: Duration = Duration::from_secs(60);
const REMEMBER_AT_MOST: usize = 10_000;

/// Rechecks of the last minute: (when, room stream key, user or everyone).
#[derive(Default)]
pub struct RecheckLog {
    recent: Mutex<VecDeque<(Instant, String, Option<String>)>>,
}

impl RecheckLog {
    pub fn record(&self, key: String, user: Option<String>) {
        if let Ok(mut recent) = self.recent.lock() {
            let now = Instant::now();
            while recent
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > REMEMBER)
                || recent.len() >= REMEMBER_AT_MOST
            {
                recent.pop_front();
            }
            recent.push_back((now, key, user));
        }
    }

    /// Whether a recheck for `key` that concerns `user` came after `since`.
    pub fn since(&self, since: Instant, key: &str, user: &str) -> bool {
        self.recent.lock().is_ok_and(|recent| {
            recent.iter().any(|(at, k, u)| {
                *at >= since && k == key && u.as_deref().is_none_or(|u| u == user)
            })
        })
    }
}

pub struct RevocationListener {
    redis: RedisStreams,
    rooms: Addr<RedisListener>,
    log: std::sync::Arc<RecheckLog>,
    backoff: Backoff,
}

impl RevocationListener {
    pub fn new(
        redis: RedisStreams,
        rooms: Addr<RedisListener>,
        log: std::sync::Arc<RecheckLog>,
    ) -> Self {
        RevocationListener {
            redis,
            rooms,
            log,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    fn listen(&mut self, ctx: &mut Context<Self>) {
        let (redis, rooms, log) = (self.redis.clone(), self.rooms.clone(), self.log.clone());
        let addr = ctx.address();
        let listening = async move {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(redis.keys().recheck_channel()).await?;
            addr.do_send(Subscribed);
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let payload: Vec<u8> = message.get_payload().unwrap_or_default();
                match serde_json::from_slice::<RecheckRequest>(&payload) {
                    Ok(request) => {
                        let key = redis.keys().room_stream(&request.room, DEFAULT_DOCID);
                        log.record(key.clone(), request.user.clone());
                        rooms.do_send(Broadcast::Recheck {
                            key,
                            user: request.user,
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed recheck message"),
                }
            }
            Ok::<(), RedisError>(())
        };
        ctx.spawn(listening.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok(()) => tracing::warn!("recheck subscription ended; resubscribing"),
                Err(e) if act.backoff.failures() == 0 => {
                    tracing::error!(error = %e, "recheck subscription failed; retrying")
                }
                Err(_) => {}
            }
            ctx.run_later(act.backoff.next_delay(), |act, ctx| act.listen(ctx));
        }));
    }
}

/// The subscription is in place: the connection works again.
#[derive(Message)]
#[rtype(result = "()")]
struct Subscribed;

impl Handler<Subscribed> for RevocationListener {
    type Result = ();

    fn handle(&mut self, _: Subscribed, _: &mut Context<Self>) {
        if self.backoff.failures() > 0 {
            tracing::info!("recheck subscription restored");
        }
        self.backoff.reset();
    }
}

impl Actor for RevocationListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.listen(ctx);
    }
}
