//! `y-redis worker`: a supervisor owning a group of persistence actors. Each
//! claims compaction tasks from `PREFIX:worker` (ARCHITECTURE.md, "The worker's task protocol"), persists rooms
//! whose stream changed the document, and trims Redis.

mod callback;
mod persistence;

pub use persistence::PersistenceWorker;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::config::WorkerConfig;
use crate::document::Documents;
use crate::storage::Storage;
use crate::streams::RedisStreams;

/// What the persistence actors of one process share: whether it is
/// stopping, how many rounds are in flight, which room locks it holds.
#[derive(Default)]
pub struct WorkerShared {
    stopping: AtomicBool,
    active_rounds: AtomicUsize,
    /// (room stream key, consumer) of every room lock held now.
    locks: Mutex<HashSet<(String, String)>>,
}

impl WorkerShared {
    fn hold_lock(&self, stream_key: &str, consumer: &str) {
        if let Ok(mut locks) = self.locks.lock() {
            locks.insert((stream_key.to_owned(), consumer.to_owned()));
        }
    }

    fn release_lock(&self, stream_key: &str, consumer: &str) {
        if let Ok(mut locks) = self.locks.lock() {
            locks.remove(&(stream_key.to_owned(), consumer.to_owned()));
        }
    }
}

/// A running worker: its supervised actors (kept for the life of the
/// process: supervisors restart actors only while someone holds their
/// addresses) and what they share.
pub struct Worker {
    actors: Vec<Addr<PersistenceWorker>>,
    shared: Arc<WorkerShared>,
    redis: RedisStreams,
}

impl Worker {
    pub fn actors(&self) -> usize {
        self.actors.len()
    }

    /// Stops claiming tasks, lets compactions in flight finish for up to
    /// `grace`, then releases the room locks still held (the unfinished
    /// tasks come back to another worker after the debounce).
    pub async fn shutdown(self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        while self.shared.active_rounds.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = self.shared.active_rounds.load(Ordering::Relaxed);
        let locks: Vec<(String, String)> = self
            .shared
            .locks
            .lock()
            .map(|mut locks| locks.drain().collect())
            .unwrap_or_default();
        for (stream_key, consumer) in &locks {
            if let Err(e) = self.redis.unlock_room(stream_key, consumer).await {
                tracing::warn!(stream = %stream_key, error = %e, "could not release a room lock; it expires by itself");
            }
        }
        tracing::info!(unfinished, released_locks = locks.len(), "worker stopped");
        drop(self.actors);
    }
}

/// Starts `config.concurrency` supervised persistence actors, each on its own
/// arbiter; a crashed one is restarted and its task reclaimed after the debounce.
pub fn start(
    config: &WorkerConfig,
    redis: RedisStreams,
    storage: Arc<dyn Storage>,
    documents: Arc<Documents>,
) -> Worker {
    let process = format!("{}-{}", hostname(), std::process::id());
    let shared = Arc::new(WorkerShared::default());
    let actors = (0..config.concurrency)
        .map(|slot| {
            let consumer = format!("worker-{process}-{slot}");
            let (config, redis, storage) = (config.clone(), redis.clone(), storage.clone());
            let (documents, shared) = (documents.clone(), shared.clone());
            // Built inside its arbiter: the actor holds a thread-bound HTTP client.
            Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                PersistenceWorker::new(consumer, config, redis, storage, documents, shared)
            })
        })
        .collect();
    Worker {
        actors,
        shared,
        redis,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
