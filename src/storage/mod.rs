//! Where whole documents live between compactions (ARCHITECTURE.md, "Storage layout"). Every backend
//! stores a document as one Yjs update v2 per reference; several references
//! of one document are merged on read and replaced by the worker.

mod filesystem;
mod memory;
mod postgres;
mod s3;

pub use filesystem::FilesystemStorage;
pub use memory::MemoryStorage;
pub use postgres::{PostgresStorage, MIGRATIONS};
pub use s3::{skip_s3_location_constraint, S3Config, S3Keys, S3Storage, DEFAULT_REGION};

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use thiserror::Error;

/// Any error a backend's client library returns, kept as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a backend, by what the caller should do about it:
/// [`StorageError::Unavailable`] is retried with backoff, the others are
/// permanent for that document and refused once with their reason.
#[derive(Debug, Error)]
pub enum StorageError {
    /// Worth retrying: the backend did not answer or failed this time.
    #[error("{backend}: {action}: {source}")]
    Unavailable {
        /// Which backend (`postgres`, `s3`, `filesystem`, or a custom one's name).
        backend: &'static str,
        /// What was being done, e.g. `read room/doc` or `connect`.
        action: String,
        #[source]
        source: BoxError,
    },
    /// Will never work: the backend cannot hold a document of this name.
    #[error("storage cannot hold room {room:?}: {reason}")]
    UnholdableName { room: String, reason: String },
    #[error("stored document {room}/{docid} is corrupt: {reason}")]
    Corrupt {
        room: String,
        docid: String,
        reason: String,
    },
}

impl StorageError {
    /// A transient failure of `backend` while doing `action`, keeping `source` as the cause.
    pub fn unavailable(
        backend: &'static str,
        action: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        StorageError::Unavailable {
            backend,
            action: action.into(),
            source: source.into(),
        }
    }

    /// Whether retrying can never help (refuse once instead of looping).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, StorageError::Unavailable { .. })
    }
}

/// Identifies one stored piece of a document (a Postgres `r`, an S3 key, a file name).
pub type Reference = String;

/// A document as stored: one update v2 per reference. The pieces are merged
/// where yrs runs, in the document engine's helper process.
#[derive(Debug, Clone, Default)]
pub struct StoredDoc {
    pub pieces: Vec<Vec<u8>>,
    pub references: Vec<Reference>,
}

pub trait Storage: Send + Sync + 'static {
    /// Whether the backend answers (for readiness probes).
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// The stored document, or None if nothing is stored.
    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>>;

    /// Stores a whole document (update v2) and its state vector (v1) under a new reference.
    fn persist_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        update_v2: Vec<u8>,
        state_vector: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes pieces that a newer persisted document replaced.
    fn delete_references<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// Which backend to use, chosen as y-redis does: S3 when `S3_ENDPOINT` is
/// set, else Postgres when `POSTGRES` is set, else the filesystem.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    S3(S3Config),
    Postgres { url: crate::secret::Secret },
    Filesystem { dir: PathBuf },
}

impl StorageConfig {
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::S3(c) => format!(
                "s3 {}:{} region {} bucket {}",
                c.endpoint, c.port, c.region, c.bucket
            ),
            // The URL may hold a password.
            StorageConfig::Postgres { .. } => "postgres".into(),
            StorageConfig::Filesystem { dir } => format!("filesystem {}", dir.display()),
        }
    }
}

/// Connects the configured backend (creating its bucket, table or folder).
pub async fn open(config: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match config {
        StorageConfig::S3(c) => Arc::new(S3Storage::connect(c).await?),
        StorageConfig::Postgres { url } => Arc::new(PostgresStorage::connect(&url.0).await?),
        StorageConfig::Filesystem { dir } => Arc::new(FilesystemStorage::open(dir.clone())?),
    })
}

/// The pieces of one document read from a backend (None when there are none).
pub fn merge_pieces(pieces: Vec<(Reference, Vec<u8>)>) -> Option<StoredDoc> {
    if pieces.is_empty() {
        return None;
    }
    let (references, pieces) = pieces.into_iter().unzip();
    Some(StoredDoc { pieces, references })
}

#[cfg(test)]
mod tests {
    use super::StorageError;
    use std::error::Error;

    #[test]
    fn errors_keep_their_cause_and_say_whether_to_retry() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let transient = StorageError::unavailable("postgres", "read a document", io);
        assert!(!transient.is_permanent());
        assert_eq!(transient.to_string(), "postgres: read a document: refused");
        let cause = transient.source().expect("the backend's error is kept");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        let unholdable = StorageError::UnholdableName {
            room: "r".into(),
            reason: "too long".into(),
        };
        assert!(unholdable.is_permanent());
    }
}
