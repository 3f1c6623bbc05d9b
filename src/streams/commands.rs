//! Redis commands of the server and worker. The hot path (publishing a
//! client's messages, reading a room for an initial sync) goes over one
//! multiplexed connection per thread, pipelined, replaced when it breaks;
//! the worker and occasional commands use a deadpool pool; the blocking
//! stream read gets its own connection (see [`RedisStreams::reader_connection`]).
//! Every connection is opened by [`Connector`] (standalone, TLS, Sentinel or
//! Cluster); with Cluster the keys follow the bucket layout ([`Keys::clustered`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool::managed::{self, Metrics, Object, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::streams::StreamAutoClaimReply;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Script, Value};
use thiserror::Error;
use tokio::sync::oneshot;

use super::connect::{
    is_connection_unusable, is_tls_rejection, ConnectError, Connection, Connector,
};
use super::{Keys, StreamId};

#[derive(Debug, Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("TLS with redis failed ({0}); check REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE")]
    Tls(redis::RedisError),
    #[error("redis did not answer a blocking read within {0:?}")]
    ReadTimeout(Duration),
    #[error("redis refuses keyspace notifications ({0}); stream reads name every stream (set REDIS_STREAM_EVENTS=false to skip asking)")]
    EventsUnavailable(String),
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

    /// The same failure for another caller of a shared pipeline: a Redis
    /// error as it is (its kind and code decide retries), others by message.
    fn duplicate(&self) -> RedisError {
        match self {
            RedisError::Command(e) => RedisError::Command(e.clone()),
            RedisError::Pool(e) => RedisError::Pool(e.clone()),
            other => RedisError::Command(io::Error::other(other.to_string()).into()),
        }
    }
}

impl From<managed::PoolError<redis::RedisError>> for RedisError {
    fn from(e: managed::PoolError<redis::RedisError>) -> Self {
        match e {
            managed::PoolError::Backend(e) => RedisError::Command(e),
            other => RedisError::Pool(other.to_string()),
        }
    }
}

/// Opens the pool's connections through the [`Connector`], so they follow
/// the deployment (a Sentinel failover included).
struct PoolManager {
    connector: Connector,
    config: AsyncConnectionConfig,
}

impl managed::Manager for PoolManager {
    type Type = Connection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Connection, redis::RedisError> {
        self.connector.connect(&self.config).await
    }

    async fn recycle(
        &self,
        conn: &mut Connection,
        _: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await?;
        Ok(())
    }
}

type Pool = managed::Pool<PoolManager>;

/// A connection checked out of the pool. One that failed in a way that
/// makes it unusable (broken, or talking to a demoted master) is dropped
/// instead of going back to the pool.
pub(super) struct Pooled {
    conn: Option<Object<PoolManager>>,
    unusable: bool,
}

impl Pooled {
    fn note(&mut self, result: &Result<impl Sized, redis::RedisError>) {
        if let Err(e) = result {
            self.unusable |= is_connection_unusable(e);
        }
    }

    fn inner(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.unusable {
            if let Some(conn) = self.conn.take() {
                drop(Object::take(conn));
            }
        }
    }
}

impl ConnectionLike for Pooled {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner().req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.inner().req_packed_commands(cmd, offset, count).await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.as_ref().map_or(0, |c| c.get_db())
    }
}

/// One entry of a room stream: its id and its message (field `m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: StreamId,
    pub message: Bytes,
}

/// Adds messages to a room stream, in order; a stream that did not exist
/// yet first gets a `compact` task, claimed by the pseudo-consumer
/// `pending` so that workers only see it after the debounce (XAUTOCLAIM
/// min-idle). Atomic, with the same effect as @y/redis's add-message script
/// called once per message. Answers how many it added.
const ADD_MESSAGES_LUA: &str = r#"
if redis.call("EXISTS", KEYS[1]) == 0 then
  redis.call("XADD", KEYS[2], "*", "compact", KEYS[1])
  redis.call("XREADGROUP", "GROUP", KEYS[2], "pending", "STREAMS", KEYS[2], ">")
end
local last
for i = 1, #ARGV do
  last = redis.call("XADD", KEYS[1], "*", "m", ARGV[i])
end
return last
"#;

/// `XADD key NOMKSTREAM * m message`: appends only to an existing stream
/// (nil otherwise).
fn append_if_stream_exists(stream_key: &str, message: &[u8]) -> Cmd {
    let mut cmd = Cmd::with_capacity(6, 24 + stream_key.len() + message.len());
    cmd.arg("XADD")
        .arg(stream_key)
        .arg("NOMKSTREAM")
        .arg("*")
        .arg("m")
        .arg(message);
    cmd
}

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

/// The end of a compaction (ARCHITECTURE.md, "The worker's task protocol"): trim the room
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
    /// The worker queue it was claimed from (in the stream's slot).
    pub queue: String,
}

/// The node a blocking read connection talks to, with Cluster (to send it
/// `CLIENT UNBLOCK`); None otherwise.
pub type ReaderNode = Option<(String, u16)>;

/// Stores ever created in this process, to key the per-thread connections.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's multiplexed connection of each store, with the
    /// connection generation it was opened in.
    static THREAD_CONNECTIONS: RefCell<HashMap<u64, (u64, Connection)>> = RefCell::new(HashMap::new());
}

/// Messages one publish command carries at most.
const PUBLISH_BATCH: usize = 64;

/// Publishes waiting on this thread for its next pipeline.
#[derive(Default)]
struct PublishQueue {
    pipe: Pipeline,
    /// Where each command's reply goes, in order: one per caller.
    callers: Vec<oneshot::Sender<Result<Value, RedisError>>>,
}

thread_local! {
    /// Each store's publishes waiting on this thread (see [`RedisStreams::pipelined`]).
    static PUBLISH_QUEUES: RefCell<HashMap<u64, PublishQueue>> = RefCell::new(HashMap::new());
}

#[derive(Clone)]
pub struct RedisStreams {
    id: u64,
    pool: Pool,
    connector: Connector,
    command_timeout: Duration,
    /// Shared: every publish clones the store into its future, and the key
    /// names and scripts (each with its source and hash) would cost a
    /// dozen allocations per clone.
    fixed: Arc<Fixed>,
    /// Where the next claim round starts among the worker queues (cluster).
    claim_cursor: Arc<AtomicUsize>,
    /// Bumped when Redis is known to have come back after an outage:
    /// connections opened before are dropped instead of failing a client's
    /// first command after the outage.
    generation: Arc<AtomicU64>,
}

/// What a store never changes after it is made.
struct Fixed {
    keys: Keys,
    add_messages: Script,
    delete_empty_room: Script,
    finish_compaction: Script,
    renew: Script,
    unlock: Script,
}

impl RedisStreams {
    /// Creates the pool (connections open lazily) over `connector`.
    pub fn new(
        connector: Connector,
        keys: Keys,
        command_timeout: Duration,
    ) -> Result<Self, RedisError> {
        let manager = PoolManager {
            connector: connector.clone(),
            config: command_config(command_timeout),
        };
        let pool = Pool::builder(manager)
            .max_size(32)
            .build()
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        Ok(RedisStreams {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            pool,
            connector,
            command_timeout,
            fixed: Arc::new(Fixed {
                keys,
                add_messages: Script::new(ADD_MESSAGES_LUA),
                delete_empty_room: Script::new(DELETE_EMPTY_ROOM_LUA),
                finish_compaction: Script::new(FINISH_COMPACTION_LUA),
                renew: Script::new(RENEW_LUA),
                unlock: Script::new(UNLOCK_LUA),
            }),
            claim_cursor: Arc::new(AtomicUsize::new(0)),
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The store a process runs with: the pool for `config`, and the worker
    /// queue created if Redis answers (not fatal otherwise: publishing and
    /// claiming recreate it once Redis is back). TLS refusing the server
    /// (a wrong CA, say) is fatal: no retry can fix it.
    pub async fn for_config(config: &crate::config::Config) -> Result<Self, RedisError> {
        let connector = Connector::new(&config.redis, config.redis_command_timeout)?;
        tracing::info!(redis = %connector.describe(), "redis deployment");
        let keys = if connector.is_cluster() {
            Keys::clustered(&config.redis_prefix)
        } else {
            Keys::new(&config.redis_prefix)
        };
        let streams = RedisStreams::new(connector, keys, config.redis_command_timeout)?;
        if let Err(e) = streams.ensure_worker_group().await {
            if let RedisError::Command(e) = &e {
                if is_tls_rejection(e) {
                    return Err(RedisError::Tls(e.clone()));
                }
            }
            tracing::warn!(error = %e, "cannot create the worker queue yet; will retry");
        }
        Ok(streams)
    }

    pub fn keys(&self) -> &Keys {
        &self.fixed.keys
    }

    pub(super) async fn conn(&self) -> Result<Pooled, RedisError> {
        Ok(Pooled {
            conn: Some(self.pool.get().await?),
            unusable: false,
        })
    }

    /// This thread's multiplexed connection: commands from every session of
    /// the thread share it and are pipelined, with no checkout per command.
    async fn thread_connection(&self) -> Result<Connection, RedisError> {
        let generation = self.generation.load(Ordering::Relaxed);
        let current = THREAD_CONNECTIONS.with(|c| c.borrow().get(&self.id).cloned());
        if let Some((opened_in, conn)) = current {
            if opened_in == generation {
                return Ok(conn);
            }
        }
        // Boxed: opening a connection (TLS, Sentinel) is a large future
        // that every caller would otherwise carry.
        let conn = Box::pin(
            self.connector
                .connect(&command_config(self.command_timeout)),
        )
        .await?;
        THREAD_CONNECTIONS.with(|c| c.borrow_mut().insert(self.id, (generation, conn.clone())));
        Ok(conn)
    }

    /// Redis came back after an outage (the listener reads again): every
    /// connection opened before it is dropped (idle pooled ones at once,
    /// each thread's multiplexed one at its next command), so the clients
    /// that resync are not refused once more by a connection that broke
    /// while Redis was away.
    pub fn renew_connections(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.pool.retain(|_, _| false);
    }

    /// Forgets this thread's connection if `error` made it unusable; the
    /// next command opens a new one (after a failover: to the new master).
    fn check_thread_connection(&self, error: &redis::RedisError) {
        if is_connection_unusable(error) {
            THREAD_CONNECTIONS.with(|c| c.borrow_mut().remove(&self.id));
        }
    }

    /// A connection outside the pool with no response timeout, for `XREAD
    /// BLOCK` on the streams of `bucket` (None: all streams, standalone).
    /// With Cluster it goes to the node serving the bucket's slot now.
    pub async fn reader_connection(
        &self,
        bucket: Option<u16>,
    ) -> Result<(MultiplexedConnection, ReaderNode), RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(None);
        let Some(bucket) = bucket else {
            return Ok((self.connector.connect_single(&config).await?, None));
        };
        let (host, port) = self.slot_owner(bucket_slot(bucket)).await?;
        let conn = self
            .connector
            .node_client(&host, port)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok((conn, Some((host, port))))
    }

    /// The master serving `slot`, as the cluster says now (`CLUSTER SLOTS`).
    async fn slot_owner(&self, slot: u16) -> Result<(String, u16), RedisError> {
        let mut conn = self.conn().await?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        parse_slot_owner(reply, slot).ok_or_else(|| {
            malformed(
                "CLUSTER SLOTS",
                "-",
                format!("no master serves slot {slot}"),
            )
        })
    }

    /// A fresh pub/sub connection.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        Ok(self.connector.pubsub().await?)
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

    /// Creates the worker queues and their consumer groups if missing.
    pub async fn ensure_worker_group(&self) -> Result<(), RedisError> {
        for queue in self.fixed.keys.worker_streams() {
            self.ensure_queue(&queue).await?;
        }
        Ok(())
    }

    /// Creates one worker queue and its consumer group if missing.
    async fn ensure_queue(&self, stream: &str) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let created: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(stream)
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

    /// Appends validated messages to a room stream, in order. A lone
    /// message, the usual publish under load, goes as a plain `XADD ...
    /// NOMKSTREAM`: where the stream exists (and so has its task) that does
    /// what `ADD_MESSAGES_LUA` does, for a fraction of Redis's time; where
    /// it does not, Redis answers nil and the pipeline sends the script
    /// instead (see `send_publish_queue`). Several messages
    /// go as one script call. A session has one call in flight at a time,
    /// so its order holds either way.
    ///
    /// Answers the id Redis gave the last message (the others have lower
    /// ones), unless it answered in some other form.
    pub async fn add_messages(
        &self,
        stream_key: &str,
        messages: &[Bytes],
    ) -> Result<Option<StreamId>, RedisError> {
        let _timer = CommandTimer::start();
        let worker = self.fixed.keys.worker_stream_of(stream_key);
        // The rare paths (a cluster, repairs) are boxed: their futures are
        // large, and every publish would otherwise carry and copy their
        // space (about 11 KiB).
        if self.connector.is_cluster() {
            return Box::pin(async {
                let mut conn = self.thread_connection().await?;
                self.add_messages_in_scripts(&mut conn, stream_key, &worker, messages)
                    .await
            })
            .await;
        }
        let mut last = None;
        for batch in messages.chunks(PUBLISH_BATCH) {
            let mut repairs = 0;
            loop {
                let command = match batch {
                    [message] => append_if_stream_exists(stream_key, message),
                    _ => self.add_messages_command(stream_key, &worker, batch),
                };
                let failure = match self.pipelined(command).await? {
                    Value::ServerError(e) => redis::RedisError::from(e),
                    // An append that found no stream and had no script sent
                    // for it: never taken for stored.
                    Value::Nil => {
                        let lost =
                            io::Error::other("redis stored nothing: the room stream was missing");
                        return Err(RedisError::Command(lost.into()));
                    }
                    added => {
                        last = added_id(added);
                        break;
                    }
                };
                // A missing script or queue: repair, then send the batch again.
                repairs += 1;
                self.check_thread_connection(&failure);
                let error = RedisError::Command(failure.clone());
                if repairs > 2 {
                    return Err(error);
                }
                match failure.code().unwrap_or_default() {
                    "NOSCRIPT" => {
                        Box::pin(async {
                            let mut conn = self.thread_connection().await?;
                            self.fixed.add_messages.load_async(&mut conn).await?;
                            Ok::<_, RedisError>(())
                        })
                        .await?
                    }
                    // Redis lost the worker group (restarted empty).
                    "NOGROUP" => Box::pin(self.ensure_queue(&worker)).await?,
                    _ => return Err(error),
                }
            }
        }
        Ok(last)
    }

    /// One `EVALSHA` of [`ADD_MESSAGES_LUA`] for `messages`.
    fn add_messages_command(&self, stream_key: &str, worker: &str, messages: &[Bytes]) -> Cmd {
        let hash = self.fixed.add_messages.get_hash();
        // Sized up front: the arguments would grow it several times.
        let data = 16
            + hash.len()
            + stream_key.len()
            + worker.len()
            + messages.iter().map(Bytes::len).sum::<usize>();
        let mut cmd = Cmd::with_capacity(4 + messages.len(), data);
        cmd.arg("EVALSHA")
            .arg(hash)
            .arg(2)
            .arg(stream_key)
            .arg(worker);
        for message in messages {
            cmd.arg(message.as_ref());
        }
        cmd
    }

    /// The script call that stands in for an `XADD ... NOMKSTREAM` of
    /// [`append_if_stream_exists`] that found no stream.
    fn add_message_instead_of(&self, append: &Cmd) -> Option<Cmd> {
        let args: Vec<&[u8]> = append
            .args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(bytes),
                _ => None,
            })
            .collect();
        let (Some(key), Some(message)) = (args.get(1), args.get(5)) else {
            return None;
        };
        let key = std::str::from_utf8(key).ok()?;
        let worker = self.fixed.keys.worker_stream_of(key);
        Some(self.add_messages_command(key, &worker, &[Bytes::copy_from_slice(message)]))
    }

    /// Sends `command` in this thread's next pipeline. Every session of
    /// the thread that publishes before that pipeline leaves joins it, so
    /// under load many publishes share one write to Redis and one read of
    /// the replies, for the server and for Redis. Answers its reply (an
    /// error reply included). Must run on an actix (local task set) thread.
    async fn pipelined(&self, command: Cmd) -> Result<Value, RedisError> {
        let (sender, receiver) = oneshot::channel();
        let first = PUBLISH_QUEUES.with(|queues| {
            let mut queues = queues.borrow_mut();
            let queue = queues.entry(self.id).or_default();
            queue.callers.push(sender);
            queue.pipe.add_command(command);
            queue.callers.len() == 1
        });
        if first {
            // Its own task: a caller that goes away (its session closed)
            // must not take the others' publishes with it.
            actix_rt::spawn(self.clone().send_publish_queue());
        }
        receiver.await.unwrap_or_else(|_| {
            let stopped = io::Error::other("the publishing task stopped");
            Err(RedisError::Command(stopped.into()))
        })
    }

    /// Sends the thread's waiting publishes in one pipeline, then, in a
    /// second one, the script calls for appends that found no stream: here
    /// rather than in each caller, so that a caller gone meanwhile (its
    /// session closed) still has its message stored.
    async fn send_publish_queue(self) {
        // The thread's other sessions ready now publish first, into this pipeline.
        tokio::task::yield_now().await;
        let Some(PublishQueue { mut pipe, callers }) =
            PUBLISH_QUEUES.with(|queues| queues.borrow_mut().remove(&self.id))
        else {
            return;
        };
        pipe.ignore_errors();
        let sent = match self.send_pipeline(&pipe).await {
            Ok(mut replies) => {
                let mut instead = Pipeline::new();
                instead.ignore_errors();
                let mut missing = Vec::new();
                for (index, (reply, append)) in replies.iter().zip(pipe.cmd_iter()).enumerate() {
                    if *reply == Value::Nil {
                        if let Some(script) = self.add_message_instead_of(append) {
                            instead.add_command(script);
                            missing.push(index);
                        }
                    }
                }
                if missing.is_empty() {
                    Ok(replies)
                } else {
                    self.send_pipeline(&instead).await.map(|fallbacks| {
                        for (index, reply) in missing.into_iter().zip(fallbacks) {
                            replies[index] = reply;
                        }
                        replies
                    })
                }
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                for caller in callers {
                    let reply = replies.next().ok_or_else(|| {
                        let short = io::Error::other("redis answered fewer replies than commands");
                        RedisError::Command(short.into())
                    });
                    let _ = caller.send(reply);
                }
            }
            Err(e) => {
                for caller in callers {
                    let _ = caller.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// One pipeline over this thread's connection; every command's reply,
    /// error replies included (`pipe` ignores errors).
    async fn send_pipeline(&self, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
        let mut conn = self.thread_connection().await?;
        pipe.query_async::<Vec<Value>>(&mut conn)
            .await
            .map_err(|e| {
                self.check_thread_connection(&e);
                RedisError::Command(e)
            })
    }

    /// [`Self::add_messages`] on a cluster: up to [`PUBLISH_BATCH`]
    /// messages per call of [`ADD_MESSAGES_LUA`], one call at a time, so
    /// that the cluster connection can follow a `MOVED` or `ASK` (or wait
    /// out a `TRYAGAIN`) for each. A pipeline would not do: redirected
    /// mid-way, it would be sent again whole and store messages twice.
    async fn add_messages_in_scripts(
        &self,
        conn: &mut Connection,
        stream_key: &str,
        worker: &str,
        messages: &[Bytes],
    ) -> Result<Option<StreamId>, RedisError> {
        let mut last = None;
        for batch in messages.chunks(PUBLISH_BATCH) {
            let mut repaired = false;
            loop {
                let mut call = self.fixed.add_messages.key(stream_key);
                call.key(worker);
                for message in batch {
                    call.arg(message.as_ref());
                }
                let added = call.invoke_async::<Value>(conn).await;
                match added {
                    Ok(added) => {
                        last = added_id(added);
                        break;
                    }
                    Err(e) if !repaired && e.code() == Some("NOGROUP") => {
                        repaired = true;
                        self.ensure_queue(worker).await?;
                    }
                    Err(e) => {
                        self.check_thread_connection(&e);
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(last)
    }

    /// The whole room stream, oldest first.
    pub async fn read_stream(&self, stream_key: &str) -> Result<Vec<StreamEntry>, RedisError> {
        let _timer = CommandTimer::start();
        let mut conn = self.thread_connection().await?;
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream_key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.check_thread_connection(e))?;
        parse_entries(stream_key, reply)
    }

    /// Wakes a connection blocked in `XREAD BLOCK` (it returns as if timed
    /// out); with Cluster, on the node it reads from. It goes over this
    /// thread's multiplexed connection: a burst of joins interrupts the
    /// read once per new room, and a pool checkout each would open a
    /// connection per concurrent interruption and keep them all.
    /// Answers whether the connection was blocked.
    pub async fn unblock_client(
        &self,
        node: &ReaderNode,
        client_id: i64,
    ) -> Result<bool, RedisError> {
        let mut conn = self.thread_connection().await?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(client_id);
        let result = match (node, &mut conn) {
            (Some((host, port)), Connection::Cluster(cluster)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                cluster.route_command(cmd, routing).await
            }
            _ => cmd.query_async::<Value>(&mut conn).await,
        };
        let reply = result.inspect_err(|e| self.check_thread_connection(e))?;
        Ok(matches!(reply, Value::Int(1)))
    }
}

impl RedisStreams {
    /// Claims up to `count` tasks that waited at least `min_idle` (`XAUTOCLAIM`),
    /// recreating the queue if Redis lost it.
    /// With Cluster, the bucket queues are visited in turn from a rotating
    /// start until `count` tasks are found, so every bucket's tasks get claimed.
    pub async fn claim_tasks(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Task>, RedisError> {
        let queues = self.fixed.keys.worker_streams();
        let start = self.claim_cursor.fetch_add(1, Ordering::Relaxed);
        let mut tasks = Vec::new();
        for i in 0..queues.len() {
            let queue = &queues[(start + i) % queues.len()];
            let wanted = count - tasks.len();
            tasks.extend(self.claim_from(queue, consumer, min_idle, wanted).await?);
            if tasks.len() >= count {
                break;
            }
        }
        Ok(tasks)
    }

    async fn claim_from(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Task>, RedisError> {
        match self.try_claim_tasks(queue, consumer, min_idle, count).await {
            // A bucket queue that is gone holds no task: the next publish to
            // one of its rooms recreates it. Claiming would bring back all 32
            // queues of a cluster after every flush of the prefix.
            Err(e) if e.is_missing_group() && self.fixed.keys.is_clustered() => Ok(Vec::new()),
            Err(e) if e.is_missing_group() => {
                tracing::warn!(
                    queue,
                    "worker queue was missing (Redis restarted empty?); recreated it"
                );
                self.ensure_queue(queue).await?;
                self.try_claim_tasks(queue, consumer, min_idle, count).await
            }
            other => other,
        }
    }

    async fn try_claim_tasks(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Task>, RedisError> {
        let mut conn = self.conn().await?;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(queue)
            .arg(queue)
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
                    queue: queue.to_owned(),
                }),
                // Not a task of ours: drop it rather than claim it forever.
                _ => {
                    tracing::warn!(id = %raw.id, "dropping worker queue entry without a compact field");
                    redis::cmd("XDEL")
                        .arg(queue)
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
            .fixed
            .delete_empty_room
            .key(&task.stream_key)
            .key(&task.queue)
            .arg(task.id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    /// After persisting: trims the entries from before `trim_before_ms`
    /// (a stream id time) and replaces the task by a fresh one (claimed by
    /// `pending`, so it waits out the debounce), atomically. See `FINISH_COMPACTION_LUA`.
    pub async fn finish_compaction(
        &self,
        task: &Task,
        trim_before_ms: u64,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        self.fixed
            .finish_compaction
            .key(&task.stream_key)
            .key(&task.queue)
            .arg(task.id.to_string())
            .arg(trim_before_ms)
            .invoke_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes a task that can not be carried out; false if it was gone already
    /// (another worker dealt with it).
    pub async fn drop_task(&self, task: &Task) -> Result<bool, RedisError> {
        let mut conn = self.conn().await?;
        let removed: i64 = redis::cmd("XDEL")
            .arg(&task.queue)
            .arg(task.id.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
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
            .arg(self.fixed.keys.room_lock(stream_key))
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
            .fixed
            .renew
            .key(self.fixed.keys.room_lock(stream_key))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn unlock_room(&self, stream_key: &str, owner: &str) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        self.fixed
            .unlock
            .key(self.fixed.keys.room_lock(stream_key))
            .arg(owner)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
}

/// Timeouts of a connection for ordinary (non-blocking) commands.
fn command_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
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
        crate::metrics::REDIS_COMMAND_SECONDS.observe(self.0.elapsed().as_secs_f64());
    }
}

/// The cluster slot of a bucket's hash tag `{bN}` (CRC16 of `bN`, as Redis
/// Cluster computes key slots).
fn bucket_slot(bucket: u16) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(format!("b{bucket}").as_bytes()) % 16384
}

/// The master address serving `slot` in a `CLUSTER SLOTS` reply
/// (`[[start, end, [host, port, id, …], replicas…], …]`).
fn parse_slot_owner(reply: Value, slot: u16) -> Option<(String, u16)> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges.into_iter().find_map(|range| {
        let Value::Array(parts) = range else {
            return None;
        };
        let mut parts = parts.into_iter();
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if !(start..=end).contains(&i64::from(slot)) {
            return None;
        }
        let mut master = master.into_iter();
        let host = match master.next()? {
            Value::BulkString(host) => String::from_utf8(host).ok()?,
            Value::SimpleString(host) => host,
            _ => return None,
        };
        let Value::Int(port) = master.next()? else {
            return None;
        };
        Some((host, u16::try_from(port).ok()?))
    })
}

/// `CLIENT ID` of a connection, so another connection can unblock it.
pub async fn client_id(conn: &mut MultiplexedConnection) -> Result<i64, RedisError> {
    Ok(redis::cmd("CLIENT").arg("ID").query_async(conn).await?)
}

/// `XREAD COUNT count [BLOCK block] STREAMS keys... ids...`: built where the
/// streams are listed, without a copy of every key and id (a listener may
/// name thousands of streams per read).
pub fn stream_read_command<'a>(
    streams: impl Iterator<Item = (&'a str, StreamId)> + Clone,
    block: Option<Duration>,
    count: usize,
) -> Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS");
    for (key, _) in streams.clone() {
        cmd.arg(key);
    }
    let mut id_text = String::new();
    for (_, id) in streams {
        id_text.clear();
        // Writing to a String cannot fail.
        let _ = write!(id_text, "{id}");
        cmd.arg(id_text.as_str());
    }
    cmd
}

/// Runs a [`stream_read_command`]: entries per key, for the keys that have any.
pub async fn read_streams_blocking(
    conn: &mut MultiplexedConnection,
    cmd: Cmd,
) -> Result<Vec<(String, Vec<StreamEntry>)>, RedisError> {
    let reply: Value = cmd.query_async(conn).await?;
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    Ok((pair.next(), pair.next()))
                }
                other => Err(other),
            })
            .collect::<Result<Vec<_>, _>>(),
        // RESP3 answers a map.
        Value::Map(streams) => Ok(streams
            .into_iter()
            .map(|(key, entries)| (Some(key), Some(entries)))
            .collect()),
        other => Err(other),
    };
    let streams =
        streams.map_err(|other| malformed("XREAD", "-", format!("unexpected reply {other:?}")))?;
    streams
        .into_iter()
        .map(|(key, entries)| {
            let key = match key {
                Some(Value::BulkString(key)) => String::from_utf8(key)
                    .map_err(|_| malformed("XREAD", "-", "stream name is not UTF-8".into()))?,
                _ => return Err(malformed("XREAD", "-", "stream without a name".into())),
            };
            let entries = parse_entries(&key, entries.unwrap_or(Value::Nil))?;
            Ok((key, entries))
        })
        .collect()
}

/// The id in an `XADD` reply, or in an [`ADD_MESSAGES_LUA`] reply (its
/// last message's).
fn added_id(reply: Value) -> Option<StreamId> {
    match reply {
        Value::BulkString(id) => std::str::from_utf8(&id).ok()?.parse().ok(),
        Value::SimpleString(id) => id.parse().ok(),
        _ => None,
    }
}

fn malformed(key: &str, id: &str, reason: String) -> RedisError {
    RedisError::MalformedEntry {
        key: key.to_owned(),
        id: id.to_owned(),
        reason,
    }
}

/// Entries of one stream as Redis sends them (`[[id, [field, value, ...]], ...]`),
/// without building a map per entry: only field `m` matters.
fn parse_entries(key: &str, reply: Value) -> Result<Vec<StreamEntry>, RedisError> {
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(entries) => entries,
        other => return Err(malformed(key, "-", format!("unexpected reply {other:?}"))),
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err(malformed(key, "-", "entry is not an array".into()));
            };
            let mut parts = parts.into_iter();
            let raw_id = match parts.next() {
                Some(Value::BulkString(id)) => id,
                _ => return Err(malformed(key, "-", "entry without an id".into())),
            };
            let raw_id = std::str::from_utf8(&raw_id)
                .map_err(|_| malformed(key, "-", "entry id is not UTF-8".into()))?;
            let id: StreamId = raw_id.parse().map_err(|e| malformed(key, raw_id, e))?;
            let fields = match parts.next() {
                Some(Value::Array(fields)) => fields,
                Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let mut fields = fields.into_iter();
            let mut message = None;
            while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
                if let (Value::BulkString(name), Value::BulkString(bytes)) = (field, value) {
                    if name == b"m" {
                        message = Some(Bytes::from(bytes));
                        break;
                    }
                }
            }
            // Written by some other tool. Kept as an empty message (which every
            // reader skips) so readers still move past its id.
            let message = message.unwrap_or_else(|| {
                tracing::warn!(key, id = %raw_id, "stream entry without a message field m; skipping it");
                Bytes::new()
            });
            Ok(StreamEntry { id, message })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_id_is_read_from_a_bulk_or_simple_string() {
        let id = StreamId { ms: 6, seq: 1 };
        assert_eq!(added_id(Value::BulkString(b"6-1".to_vec())), Some(id));
        assert_eq!(added_id(Value::SimpleString("6-1".into())), Some(id));
        // What the script answered before it answered the last id.
        assert_eq!(added_id(Value::Int(2)), None);
    }

    #[test]
    fn a_stream_read_names_every_key_then_every_id() {
        let streams = [
            ("y:room:a:index", StreamId { ms: 5, seq: 0 }),
            (
                "y:room:b:index",
                StreamId {
                    ms: u64::MAX,
                    seq: u64::MAX,
                },
            ),
        ];
        let block = Some(Duration::from_millis(1000));
        let cmd = stream_read_command(streams.iter().copied(), block, 1000);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not a plain argument>".into(),
            })
            .collect();
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(
            args,
            [
                "XREAD",
                "COUNT",
                "1000",
                "BLOCK",
                "1000",
                "STREAMS",
                "y:room:a:index",
                "y:room:b:index",
                "5-0",
                max.as_str(),
            ]
        );
        let unblocked = stream_read_command(streams.iter().copied(), None, 10);
        assert_eq!(unblocked.args_iter().count(), 8);
    }
}
