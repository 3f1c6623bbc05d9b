//! `y-redis worker`: a supervisor owning a group of persistence actors. Each
//! claims compaction tasks from `PREFIX:worker` (DESIGN §4), persists rooms
//! whose stream changed the document, and trims Redis.

mod callback;
mod persistence;

pub use persistence::PersistenceWorker;

use std::sync::Arc;

use actix::prelude::*;

use crate::config::WorkerConfig;
use crate::document::Documents;
use crate::redis::RedisStore;
use crate::storage::Storage;

/// Starts `config.concurrency` supervised persistence actors, each on its own
/// arbiter; a crashed one is restarted and its task reclaimed after the debounce.
pub fn start(
    config: &WorkerConfig,
    redis: RedisStore,
    storage: Arc<dyn Storage>,
    documents: Arc<Documents>,
) -> Vec<Addr<PersistenceWorker>> {
    let process = format!("{}-{}", hostname(), std::process::id());
    (0..config.concurrency)
        .map(|slot| {
            let consumer = format!("worker-{process}-{slot}");
            let (config, redis, storage) = (config.clone(), redis.clone(), storage.clone());
            let documents = documents.clone();
            // Built inside its arbiter: the actor holds a thread-bound HTTP client.
            Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                PersistenceWorker::new(consumer, config, redis, storage, documents)
            })
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
