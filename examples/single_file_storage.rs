//! A y-redis server and worker in one process, persisting to a storage
//! backend of its own: one file per document, replaced as a whole on every
//! compaction (where the built-in filesystem backend adds a file per
//! compaction and deletes the replaced ones).
//!
//! Configuration is `y-redis all`'s (flags, environment and `.env`: REDIS,
//! PORT, AUTH_*, ...; `--help` lists them); the documents go to
//! `STORAGE_DIR` (default `./y-redis-data`).
//!
//! ```text
//! AUTH_DISABLED=true STORAGE_DIR=/tmp/docs cargo run --example single_file_storage
//! ```

// service::run's future nests deeply (actix, the Redis client's TLS and
// Sentinel connection futures); its layout needs more than 128 levels.
#![recursion_limit = "256"]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use futures_util::future::{BoxFuture, FutureExt};
use y_redis::config::{self, Settings};
use y_redis::service::{self, Roles};
use y_redis::storage::{Reference, Storage, StorageConfig, StorageError, StoredDoc};

/// A y-redis server and worker storing one file per document; every y-redis
/// setting is a flag or an environment variable.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

/// `<dir>/<hex(room)>/<hex(docid)>`: hex keeps any name a valid file name.
struct SingleFileStorage {
    dir: PathBuf,
}

/// The one reference a document has: its file.
const CURRENT: &str = "current";

/// Most filesystems cap a name at 255 bytes.
const MAX_NAME_BYTES: usize = 255;

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn failed(action: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::unavailable("single-file", action, e)
}

impl SingleFileStorage {
    fn open(dir: PathBuf) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&dir).map_err(failed(format!("create {}", dir.display())))?;
        Ok(SingleFileStorage { dir })
    }

    /// The document's file; a name too long to be a file name is refused for
    /// good (the server closes such a room once with the reason, the worker
    /// gives it up) instead of being retried.
    fn file(&self, room: &str, docid: &str) -> Result<PathBuf, StorageError> {
        let (room_dir, doc_file) = (hex(room), hex(docid));
        if room_dir.len().max(doc_file.len()) > MAX_NAME_BYTES {
            return Err(StorageError::UnholdableName {
                room: room.to_owned(),
                reason: format!("names above {} bytes", MAX_NAME_BYTES / 2),
            });
        }
        Ok(self.dir.join(room_dir).join(doc_file))
    }
}

/// Writes `contents` next to `file`, then renames it over `file`: a reader
/// sees the old document or the new one, never half of one.
fn replace(file: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staging = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&staging, contents)?;
    std::fs::rename(&staging, file)
}

impl Storage for SingleFileStorage {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            tokio::fs::metadata(&self.dir)
                .await
                .map(|_| ())
                .map_err(failed(format!("reach {}", self.dir.display())))
        }
        .boxed()
    }

    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>> {
        async move {
            let file = self.file(room, docid)?;
            match tokio::fs::read(&file).await {
                Ok(update_v2) => Ok(Some(StoredDoc {
                    pieces: vec![update_v2],
                    references: vec![CURRENT.to_owned()],
                })),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(failed(format!("read {}", file.display()))(e)),
            }
        }
        .boxed()
    }

    fn persist_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        update_v2: Vec<u8>,
        _state_vector: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let file = self.file(room, docid)?;
            let action = format!("write {}", file.display());
            tokio::task::spawn_blocking(move || replace(&file, &update_v2))
                .await
                .map_err(|e| StorageError::unavailable("single-file", action.clone(), e))?
                .map_err(failed(action))
        }
        .boxed()
    }

    fn delete_references<'a>(
        &'a self,
        _room: &'a str,
        _docid: &'a str,
        _references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // persist_doc replaced the whole file: nothing older is left to delete.
        async { Ok(()) }.boxed()
    }
}

fn main() -> ExitCode {
    // The document engine runs this executable as its helper process.
    if let Some(exit) = service::serve_doc_helper_if_asked() {
        return exit;
    }
    // .env first: clap reads the environment.
    let dotenv = config::load_dotenv();
    let settings = Cli::parse().settings;
    let log = settings.log.log.clone();
    let config = match dotenv.and_then(|()| settings.into_config()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("single_file_storage: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log))
        .init();
    let StorageConfig::Filesystem { dir } = config.storage.clone() else {
        eprintln!("single_file_storage: stores into STORAGE_DIR; unset S3_ENDPOINT and POSTGRES");
        return ExitCode::from(2);
    };
    let outcome = actix_web::rt::System::new().block_on(async move {
        config.require_auth()?;
        let storage = Arc::new(SingleFileStorage::open(dir)?);
        service::run(
            Roles::All,
            config,
            storage,
            y_redis::shutdown::wait_for_signal(),
        )
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("single_file_storage: {e}");
            ExitCode::FAILURE
        }
    }
}
