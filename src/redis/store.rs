//! Redis commands of the server and worker, over a deadpool connection pool.
//! The blocking stream read gets its own connection (see [`RedisStore::dedicated_connection`]).

use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::{Manager, Pool};
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimReply, StreamId as RawEntry, StreamRangeReply, StreamReadReply,
};
use redis::{AsyncConnectionConfig, Script, Value};
use thiserror::Error;

use super::{Keys, StreamId};

#[derive(Debug, Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis did not answer a blocking read within {0:?}")]
    ReadTimeout(Duration),
    #[error("redis returned a malformed stream entry {id} in {key}: {reason}")]
    MalformedEntry {
        key: String,
        id: String,
        reason: String,
    },
}

impl RedisError {
    /// The worker queue's consumer group is gone (Redis restarted empty).
    pub fn is_missing_group(&self) -> bool {
        matches!(self, RedisError::Command(e) if e.code() == Some("NOGROUP"))
    }
}

impl From<deadpool_redis::PoolError> for RedisError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        RedisError::Pool(e.to_string())
    }
}

/// One entry of a room stream: its id and its message (field `m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: StreamId,
    pub message: Bytes,
}

/// Adds a message to a room stream; a stream that did not exist yet gets a
/// `compact` task, claimed by the pseudo-consumer `pending` so that workers
/// only see it after the debounce (XAUTOCLAIM min-idle). Atomic, as in @y/redis.
const ADD_MESSAGE_LUA: &str = r#"
if redis.call("EXISTS", KEYS[1]) == 0 then
  redis.call("XADD", KEYS[2], "*", "compact", KEYS[1])
  redis.call("XREADGROUP", "GROUP", KEYS[2], "pending", "STREAMS", KEYS[2], ">")
end
return redis.call("XADD", KEYS[1], "*", "m", ARGV[1])
"#;

/// Deletes a room stream and its task only if the stream is (still) empty,
/// in one step, so a message added meanwhile never loses its task.
const DELETE_EMPTY_ROOM_LUA: &str = r#"
if redis.call("XLEN", KEYS[1]) == 0 then
  redis.call("DEL", KEYS[1])
  redis.call("XDEL", KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

/// The end of a compaction (DESIGN §4's MULTI, as one script): trim the room
/// stream, and if the old task was still there to delete, queue its
/// successor claimed by `pending`. A worker that compacted a room whose task
/// another worker already replaced adds no second task, so tasks never
/// multiply.
const FINISH_COMPACTION_LUA: &str = r#"
redis.call("XTRIM", KEYS[1], "MINID", ARGV[2])
if redis.call("XDEL", KEYS[2], ARGV[1]) == 1 then
  redis.call("XADD", KEYS[2], "*", "compact", KEYS[1])
  redis.call("XREADGROUP", "GROUP", KEYS[2], "pending", "COUNT", 50, "STREAMS", KEYS[2], ">")
end
return 0
"#;

/// Extends a room lock only if we still hold it.
const RENEW_LUA: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"#;

/// Releases a room lock only if we still hold it.
const UNLOCK_LUA: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// A worker task: compact the room stream `stream_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: StreamId,
    pub stream_key: String,
}

#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    client: redis::Client,
    keys: Keys,
    add_message: Script,
    delete_empty_room: Script,
    finish_compaction: Script,
    renew: Script,
    unlock: Script,
}

impl RedisStore {
    /// Creates the pool (connections open lazily) for `url`.
    pub fn new(url: &str, keys: Keys, command_timeout: Duration) -> Result<Self, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(command_timeout))
            .set_response_timeout(Some(command_timeout));
        let manager = Manager::new_with_config(url, config)?;
        let pool = Pool::builder(manager)
            .max_size(32)
            .build()
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        Ok(RedisStore {
            pool,
            client: redis::Client::open(url)?,
            keys,
            add_message: Script::new(ADD_MESSAGE_LUA),
            delete_empty_room: Script::new(DELETE_EMPTY_ROOM_LUA),
            finish_compaction: Script::new(FINISH_COMPACTION_LUA),
            renew: Script::new(RENEW_LUA),
            unlock: Script::new(UNLOCK_LUA),
        })
    }

    /// The store a process runs with: the pool for `config`, and the worker
    /// queue created if Redis answers (not fatal otherwise: publishing and
    /// claiming recreate it once Redis is back).
    pub async fn for_config(config: &crate::config::Config) -> Result<Self, RedisError> {
        let store = RedisStore::new(
            &config.redis_url,
            Keys::new(&config.redis_prefix),
            config.redis_command_timeout,
        )?;
        if let Err(e) = store.ensure_worker_group().await {
            tracing::warn!(error = %e, "cannot create the worker queue yet; will retry");
        }
        Ok(store)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, RedisError> {
        Ok(self.pool.get().await?)
    }

    /// A connection outside the pool with no response timeout, for `XREAD BLOCK`.
    pub async fn dedicated_connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(None);
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// A fresh pub/sub connection.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        Ok(self.client.get_async_pubsub().await?)
    }

    /// Publishes on a channel; answers how many subscribers got it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<i64, RedisError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await?)
    }

    /// Creates the worker queue and its consumer group if missing.
    pub async fn ensure_worker_group(&self) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let stream = self.keys.worker_stream();
        let created: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(&stream)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Whether Redis answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Appends one validated message to a room stream (see [`ADD_MESSAGE_LUA`]).
    pub async fn add_message(
        &self,
        stream_key: &str,
        message: &[u8],
    ) -> Result<StreamId, RedisError> {
        let _timer = CommandTimer::start();
        match self.try_add_message(stream_key, message).await {
            // Redis lost the worker group (restarted empty): recreate, retry once.
            Err(e) if e.is_missing_group() => {
                self.ensure_worker_group().await?;
                self.try_add_message(stream_key, message).await
            }
            other => other,
        }
    }

    async fn try_add_message(
        &self,
        stream_key: &str,
        message: &[u8],
    ) -> Result<StreamId, RedisError> {
        let mut conn = self.conn().await?;
        let id: String = self
            .add_message
            .key(stream_key)
            .key(self.keys.worker_stream())
            .arg(message)
            .invoke_async(&mut conn)
            .await?;
        id.parse().map_err(|reason| RedisError::MalformedEntry {
            key: stream_key.to_owned(),
            id,
            reason,
        })
    }

    /// The whole room stream, oldest first.
    pub async fn read_stream(&self, stream_key: &str) -> Result<Vec<StreamEntry>, RedisError> {
        let _timer = CommandTimer::start();
        let mut conn = self.conn().await?;
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream_key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|raw| parse_entry(stream_key, raw))
            .collect()
    }

    /// Wakes a connection blocked in `XREAD BLOCK` (it returns as if timed out).
    pub async fn unblock_client(&self, client_id: i64) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(client_id)
            .query_async::<Value>(&mut conn)
            .await?;
        Ok(())
    }
}

impl RedisStore {
    /// Claims up to `count` tasks that waited at least `min_idle` (`XAUTOCLAIM`),
    /// recreating the queue if Redis lost it.
    pub async fn claim_tasks(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Task>, RedisError> {
        match self.try_claim_tasks(consumer, min_idle, count).await {
            Err(e) if e.is_missing_group() => {
                tracing::warn!("worker queue was missing (Redis restarted empty?); recreated it");
                self.ensure_worker_group().await?;
                self.try_claim_tasks(consumer, min_idle, count).await
            }
            other => other,
        }
    }

    async fn try_claim_tasks(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Task>, RedisError> {
        let mut conn = self.conn().await?;
        let queue = self.keys.worker_stream();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&queue)
            .arg(&queue)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        let mut tasks = Vec::with_capacity(reply.claimed.len());
        for raw in reply.claimed {
            match (raw.id.parse::<StreamId>(), raw.map.get("compact")) {
                (Ok(id), Some(Value::BulkString(key))) => tasks.push(Task {
                    id,
                    stream_key: String::from_utf8_lossy(key).into_owned(),
                }),
                // Not a task of ours: drop it rather than claim it forever.
                _ => {
                    tracing::warn!(id = %raw.id, "dropping worker queue entry without a compact field");
                    redis::cmd("XDEL")
                        .arg(&queue)
                        .arg(&raw.id)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
            }
        }
        Ok(tasks)
    }

    /// Drops an empty room stream together with its task; false if it is not empty.
    pub async fn delete_room_if_empty(&self, task: &Task) -> Result<bool, RedisError> {
        let mut conn = self.conn().await?;
        let deleted: i64 = self
            .delete_empty_room
            .key(&task.stream_key)
            .key(self.keys.worker_stream())
            .arg(task.id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    /// After persisting up to `last_ms`: trims entries older than
    /// `last_ms - lifetime` and replaces the task by a fresh one (claimed by
    /// `pending`, so it waits out the debounce), atomically. See [`FINISH_COMPACTION_LUA`].
    pub async fn finish_compaction(
        &self,
        task: &Task,
        last_ms: u64,
        lifetime: Duration,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let min_id = last_ms.saturating_sub(lifetime.as_millis() as u64);
        self.finish_compaction
            .key(&task.stream_key)
            .key(self.keys.worker_stream())
            .arg(task.id.to_string())
            .arg(min_id)
            .invoke_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes a task that can not be carried out (its key is not a room stream).
    pub async fn drop_task(&self, task: &Task) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        redis::cmd("XDEL")
            .arg(self.keys.worker_stream())
            .arg(task.id.to_string())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes the per-room compaction lock for `ttl`, so two workers never
    /// compact one room at once. False if another worker holds it.
    pub async fn lock_room(
        &self,
        stream_key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, RedisError> {
        let mut conn = self.conn().await?;
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.keys.room_lock(stream_key))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(reply.is_some())
    }

    /// Extends our room lock to `ttl` from now; false if we lost it.
    pub async fn renew_room_lock(
        &self,
        stream_key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, RedisError> {
        let mut conn = self.conn().await?;
        let renewed: i64 = self
            .renew
            .key(self.keys.room_lock(stream_key))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn unlock_room(&self, stream_key: &str, owner: &str) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        self.unlock
            .key(self.keys.room_lock(stream_key))
            .arg(owner)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
}

/// Records a command's latency when dropped.
struct CommandTimer(std::time::Instant);

impl CommandTimer {
    fn start() -> Self {
        CommandTimer(std::time::Instant::now())
    }
}

impl Drop for CommandTimer {
    fn drop(&mut self) {
        crate::metrics::REDIS_COMMAND_SECONDS.observe(self.0.elapsed());
    }
}

/// `CLIENT ID` of a connection, so another connection can unblock it.
pub async fn client_id(conn: &mut MultiplexedConnection) -> Result<i64, RedisError> {
    Ok(redis::cmd("CLIENT").arg("ID").query_async(conn).await?)
}

/// `XREAD COUNT count BLOCK block STREAMS keys... ids...`, entries per key.
pub async fn read_streams_blocking(
    conn: &mut MultiplexedConnection,
    streams: &[(String, StreamId)],
    block: Duration,
    count: usize,
) -> Result<Vec<(String, Vec<StreamEntry>)>, RedisError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS");
    for (key, _) in streams {
        cmd.arg(key);
    }
    for (_, id) in streams {
        cmd.arg(id.to_string());
    }
    let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
    let Some(reply) = reply else {
        return Ok(Vec::new());
    };
    reply
        .keys
        .into_iter()
        .map(|stream| {
            let entries = stream
                .ids
                .into_iter()
                .map(|raw| parse_entry(&stream.key, raw))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((stream.key, entries))
        })
        .collect()
}

fn parse_entry(key: &str, raw: RawEntry) -> Result<StreamEntry, RedisError> {
    let malformed = |reason: &str| RedisError::MalformedEntry {
        key: key.to_owned(),
        id: raw.id.clone(),
        reason: reason.to_owned(),
    };
    let id = raw.id.parse().map_err(|e: String| malformed(&e))?;
    let message = match raw.map.get("m") {
        Some(Value::BulkString(bytes)) => Bytes::copy_from_slice(bytes),
        // Written by some other tool. Kept as an empty message (which every
        // reader skips) so readers still move past its id.
        _ => {
            tracing::warn!(key, id = %raw.id, "stream entry without a message field m; skipping it");
            Bytes::new()
        }
    };
    Ok(StreamEntry { id, message })
}
