//! Included by `tests/inproc.rs` as `mod inproc` (next to `mod support`).
//! Servers and workers started inside the test process, on port 0, against
//! the real Redis (each test with its own `REDIS_PREFIX`), and the storage
//! wrappers and private Redis servers the in-process tests need.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{oneshot, watch};
use y_redis::config::Config;
use y_redis::document::helper::{EngineCommand, EnginePool};
use y_redis::document::Documents;
use y_redis::server::Listeners;
use y_redis::storage::{MemoryStorage, Reference, Storage, StorageError, StoredDoc};
use y_redis::streams::RedisStreams;

/// The one place tests build a [`Config`]: defaults for an in-process test
/// server (local, open, quiet), then `pairs`, which win.
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let mut all = vec![
        ("HOST", "127.0.0.1"),
        ("AUTH_DISABLED", "true"),
        ("DOC_HELPERS", "2"),
        ("SHUTDOWN_GRACE_MS", "500"),
    ];
    all.retain(|(var, _)| !pairs.iter().any(|(given, _)| given == var));
    all.extend_from_slice(pairs);
    Config::from_vars(all).expect("test configuration")
}

/// A Redis prefix of this test alone (tests run in parallel and rerun);
/// its keys are deleted when it is dropped, also when the test fails.
pub struct Prefix(String);

impl Prefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

pub fn prefix() -> Prefix {
    Prefix(format!("inproc{}", crate::support::random_suffix()))
}

/// The document engine: helper processes of the test binary's crate.
pub fn documents() -> Arc<Documents> {
    let command = EngineCommand {
        program: env!("CARGO_BIN_EXE_y-redis").into(),
        args: vec!["doc-helper".into(), "--memory-mb".into(), "2048".into()],
    };
    Documents::new(EnginePool::new(command, 2, Duration::from_secs(30)))
}

/// A server running in this process's actix System; stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

/// Starts `y_redis::server::run` on 127.0.0.1:0. Call inside an actix
/// System (`#[actix_rt::test]`); the listening socket is bound before this
/// returns, so clients may connect at once.
pub fn start_server(config: Config, storage: Arc<dyn Storage>) -> TestServer {
    let public = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = public.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    actix_rt::spawn(async move {
        let listeners = Listeners {
            public,
            internal: None,
        };
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) =
            y_redis::server::run(config, storage, documents(), listeners, shutdown).await
        {
            panic!("in-process server failed: {e}");
        }
    });
    TestServer {
        addr,
        stop: Some(stop),
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Publishes `messages` to a room's stream as a server does (the
/// add-message script, which also queues the room's worker task).
pub async fn publish(redis: &RedisStreams, room: &str, messages: &[Vec<u8>]) {
    let key = redis.keys().room_stream(room, "index");
    let messages: Vec<Bytes> = messages.iter().cloned().map(Bytes::from).collect();
    redis.add_messages(&key, &messages).await.expect("publish");
}

/// A plain connection to the Redis at `url`, for looking at keys.
pub async fn raw_redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("tests need Redis")
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Memory storage with what the tests need of a backend: rooms named
/// `bad*` it can never hold (a permanent error, as a backend reports a name
/// it cannot hold; such reads are counted), and, when built [`gated`],
/// reads that wait until the test opens the gate and say when they
/// started: a room load held at a known point.
///
/// [`gated`]: TestStorage::gated
#[derive(Default)]
pub struct TestStorage {
    pub inner: MemoryStorage,
    pub refused_reads: AtomicUsize,
    gate: Option<(watch::Receiver<bool>, watch::Sender<usize>)>,
}

/// The test's side of a gated [`TestStorage`].
pub struct Gate {
    open: watch::Sender<bool>,
    entered: watch::Receiver<usize>,
}

impl TestStorage {
    pub fn gated() -> (Arc<TestStorage>, Gate) {
        let (open_tx, open_rx) = watch::channel(false);
        let (entered_tx, entered_rx) = watch::channel(0);
        let storage = TestStorage {
            gate: Some((open_rx, entered_tx)),
            ..TestStorage::default()
        };
        (
            Arc::new(storage),
            Gate {
                open: open_tx,
                entered: entered_rx,
            },
        )
    }
}

impl Gate {
    /// Waits until `reads` calls of `retrieve_doc` have started (those
    /// since the gate was last closed wait at it).
    pub async fn wait_entered(&mut self, reads: usize) {
        tokio::time::timeout(
            crate::support::ws::WAIT,
            self.entered.wait_for(|&n| n >= reads),
        )
        .await
        .expect("a storage read within the timeout")
        .expect("storage alive");
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// How many `retrieve_doc` calls have started.
    pub fn loads(&self) -> usize {
        *self.entered.borrow()
    }

    /// Reads from now on wait again.
    pub fn close(&self) {
        self.open.send_replace(false);
    }
}

impl Storage for TestStorage {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.check()
    }

    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>> {
        async move {
            if room.starts_with("bad") {
                self.refused_reads.fetch_add(1, Ordering::SeqCst);
                return Err(StorageError::UnholdableName {
                    room: room.into(),
                    reason: "test storage refuses rooms named bad*".into(),
                });
            }
            if let Some((open, entered)) = &self.gate {
                entered.send_modify(|n| *n += 1);
                let _ = open.clone().wait_for(|&open| open).await;
            }
            self.inner.retrieve_doc(room, docid).await
        }
        .boxed()
    }

    fn persist_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        update_v2: Vec<u8>,
        state_vector: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.persist_doc(room, docid, update_v2, state_vector)
    }

    fn delete_references<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.delete_references(room, docid, references)
    }
}

/// A redis-server of one test on a port of its own, SIGKILLed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: crate::support::free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, connections reset, the data gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tests need redis-server on PATH");
        self.child = Some(child);
        crate::support::wait_for_port(self.port, Duration::from_secs(10));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
