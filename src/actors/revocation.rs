//! `RevocationListener`: subscribes to the Redis channel `PREFIX:recheck`,
//! where the admin endpoint of any server (or the application backend
//! directly) publishes `{"room": "...", "user": "..."}`; every process then
//! re-checks the affected sessions.

use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::hub::{Hub, RecheckRoom};
use crate::redis::{RedisError, RedisStore};
use crate::server::DEFAULT_DOCID;

/// A recheck request: a room (as in the URL path) and optionally one user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecheckRequest {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RevocationListener {
    redis: RedisStore,
    hub: Addr<Hub>,
    failures: u32,
}

impl RevocationListener {
    pub fn new(redis: RedisStore, hub: Addr<Hub>) -> Self {
        RevocationListener {
            redis,
            hub,
            failures: 0,
        }
    }

    fn listen(&mut self, ctx: &mut Context<Self>) {
        let (redis, hub) = (self.redis.clone(), self.hub.clone());
        let listening = async move {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(redis.keys().recheck_channel()).await?;
            tracing::debug!("listening for permission rechecks");
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let payload: Vec<u8> = message.get_payload().unwrap_or_default();
                match serde_json::from_slice::<RecheckRequest>(&payload) {
                    Ok(request) => hub.do_send(RecheckRoom {
                        key: redis.keys().room_stream(&request.room, DEFAULT_DOCID),
                        user: request.user,
                    }),
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed recheck message"),
                }
            }
            Ok::<(), RedisError>(())
        };
        ctx.spawn(listening.into_actor(self).map(|result, act, ctx| {
            if act.failures == 0 {
                match result {
                    Ok(()) => tracing::warn!("recheck subscription ended; resubscribing"),
                    Err(e) => tracing::error!(error = %e, "recheck subscription failed; retrying"),
                }
            }
            act.failures += 1;
            let backoff = (Duration::from_millis(100) * 2u32.saturating_pow(act.failures.min(6)))
                .min(MAX_BACKOFF);
            ctx.run_later(backoff, |act, ctx| act.listen(ctx));
        }));
    }
}

impl Actor for RevocationListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.listen(ctx);
    }
}
