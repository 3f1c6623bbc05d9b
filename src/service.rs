//! Running y-redis from a program: a process takes the server role, the
//! worker role or both, on a [`Storage`] the caller chooses. The `y-redis`
//! binary is a thin shell over [`run`]; a program with its own storage
//! backend calls it the same way (README, "Your own storage";
//! `examples/single_file_storage.rs`).

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::config::Config;
use crate::document::engine;
use crate::document::helper::{EngineCommand, EnginePool};
use crate::document::Documents;
use crate::health::Probes;
use crate::server::{Listeners, ServerError};
use crate::storage::Storage;
use crate::streams::{RedisError, RedisStreams};

/// Which parts of y-redis one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// The websocket server (`y-redis server`).
    Server,
    /// The persistence worker, with its health endpoints on `WORKER_PORT` (`y-redis worker`).
    Worker,
    /// Both in one process (`y-redis all`).
    All,
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("cannot start document engine helpers: {0}")]
    Engine(std::io::Error),
    #[error("worker health endpoints on port {port}: {source}")]
    WorkerEndpoints { port: u16, source: std::io::Error },
}

/// Runs `roles` on `storage` until `shutdown` completes, then stops as
/// SIGTERM does: the server drains and closes its sessions, the worker lets
/// compactions in flight finish (both within `SHUTDOWN_GRACE_MS`). Must be
/// called inside an actix system (`actix_web::rt::System::new().block_on`).
///
/// The document engine runs this very executable as `<exe> doc-helper`: a
/// program calling `run` starts with [`serve_doc_helper_if_asked`].
pub async fn run(
    roles: Roles,
    config: Config,
    storage: Arc<dyn Storage>,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServiceError> {
    let documents = start_documents(&config)?;
    let worker = if matches!(roles, Roles::Worker | Roles::All) {
        let redis = RedisStreams::for_config(&config).await?;
        let worker = crate::worker::start(
            &config.worker,
            redis.clone(),
            storage.clone(),
            documents.clone(),
        );
        tracing::info!(actors = worker.actors(), prefix = %config.redis_prefix, "y-redis worker running");
        if roles == Roles::Worker {
            let draining = Arc::new(AtomicBool::new(false));
            let probes = Probes {
                redis,
                storage,
                draining: draining.clone(),
            };
            let endpoints = crate::health::serve(&config.host, config.worker_port, probes)
                .map_err(|source| ServiceError::WorkerEndpoints {
                    port: config.worker_port,
                    source,
                })?;
            let handle = endpoints.handle();
            tokio::select! {
                served = endpoints => served.map_err(|source| ServiceError::WorkerEndpoints {
                    port: config.worker_port,
                    source,
                })?,
                _ = shutdown => {
                    draining.store(true, Ordering::Relaxed);
                    worker.shutdown(config.shutdown_grace).await;
                    handle.stop(true).await;
                }
            }
            return Ok(());
        }
        Some(worker)
    } else {
        None
    };
    let grace = config.shutdown_grace;
    let listeners = Listeners::bind(&config)?;
    crate::server::run(config, storage, documents, listeners, shutdown).await?;
    if let Some(worker) = worker {
        worker.shutdown(grace).await;
    }
    Ok(())
}

/// The engine helpers of this process (one pool for server and worker),
/// with idle helpers reaped every 30 s.
pub fn start_documents(config: &Config) -> Result<Arc<Documents>, ServiceError> {
    let command =
        EngineCommand::current_exe(config.doc_helper_memory_mb).map_err(ServiceError::Engine)?;
    let pool = EnginePool::new(command, config.doc_helpers, config.doc_helper_timeout);
    let reaper = pool.clone();
    actix::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            reaper.reap_idle();
        }
    });
    Ok(Documents::new(pool))
}

/// When this process was started as a document engine helper
/// (`<exe> doc-helper [--memory-mb <MiB>]`), serves it and answers the exit
/// code; otherwise None. Call it first in `main`, before anything reads
/// configuration: helpers get no environment.
pub fn serve_doc_helper_if_asked() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, options) = args.split_first()?;
    if command != "doc-helper" {
        return None;
    }
    if let [flag, mb] = options {
        match (flag.as_str(), mb.parse::<u64>()) {
            ("--memory-mb", Ok(0)) => {}
            ("--memory-mb", Ok(mb)) => engine::limit_memory(mb << 20),
            _ => {
                eprintln!("doc-helper: expected --memory-mb <MiB>");
                return Some(ExitCode::from(2));
            }
        }
    }
    Some(match engine::serve_stdio() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doc-helper: {e}");
            ExitCode::FAILURE
        }
    })
}
