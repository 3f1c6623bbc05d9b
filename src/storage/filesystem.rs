//! Filesystem storage, the default when neither S3 nor Postgres is set: one
//! file per stored piece at `<dir>/enc(room)/enc(docid)/<uuid>`, mirroring the
//! S3 layout. A piece is written to a temporary file, synced, then renamed, so
//! a crash mid-write leaves either the whole piece or an ignored temp file.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::future::{BoxFuture, FutureExt};

use super::{merge_pieces, BoxError, Reference, Storage, StorageError, StoredDoc};
use crate::streams::encode_uri_component;

const TEMP_PREFIX: &str = ".tmp-";
/// Most filesystems cap a name at 255 bytes.
const MAX_NAME_BYTES: usize = 255;

pub struct FilesystemStorage {
    dir: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    failed(format!("{what} {}", path.display()))(e)
}

/// Maps an io or task error to a transient failure of `action`.
fn failed<E: Into<BoxError>>(action: impl Into<String>) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::unavailable("filesystem", action, e)
}

impl FilesystemStorage {
    /// Uses (and creates) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        Ok(FilesystemStorage { dir })
    }

    /// `<dir>/enc(room)/enc(docid)`. Names come from clients or from Redis
    /// keys, so they are checked here: a name the filesystem cannot hold, or
    /// one that would name `.` or `..`, is refused for good.
    fn doc_dir(&self, room: &str, docid: &str) -> Result<PathBuf, StorageError> {
        let mut path = self.dir.clone();
        for name in [room, docid] {
            let encoded = encode_uri_component(name);
            let reason = if encoded.len() > MAX_NAME_BYTES {
                format!(
                    "{} bytes encoded, the filesystem holds {MAX_NAME_BYTES}",
                    encoded.len()
                )
            } else if encoded.is_empty() || encoded == "." || encoded == ".." {
                "not a file name".to_owned()
            } else {
                path.push(encoded);
                continue;
            };
            return Err(StorageError::UnholdableName {
                room: room.to_owned(),
                reason,
            });
        }
        Ok(path)
    }
}

fn read_pieces(dir: &Path) -> Result<Vec<(Reference, Vec<u8>)>, StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot list", dir, e)),
    };
    let mut pieces = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        match std::fs::read(entry.path()) {
            Ok(bytes) => pieces.push((name, bytes)),
            // Replaced by a compaction between listing and reading: its successor was
            // written before it was deleted, so a second look finds it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return read_pieces(dir),
            Err(e) => return Err(io_error("cannot read", &entry.path(), e)),
        }
    }
    pieces.sort();
    Ok(pieces)
}

fn write_piece(dir: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
    let name = uuid::Uuid::new_v4().to_string();
    let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let mut file = std::fs::File::create(&temp).map_err(|e| io_error("cannot create", &temp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| io_error("cannot write", &temp, e))?;
    let target = dir.join(name);
    std::fs::rename(&temp, &target).map_err(|e| io_error("cannot rename", &temp, e))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync", dir, e))
}

impl Storage for FilesystemStorage {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        let dir = self.dir.clone();
        async move {
            match tokio::fs::metadata(&dir).await {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(failed(format!("reach {}", dir.display()))(
                    "not a directory",
                )),
                Err(e) => Err(io_error("cannot reach", &dir, e)),
            }
        }
        .boxed()
    }

    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>> {
        async move {
            let dir = self.doc_dir(room, docid)?;
            let pieces = tokio::task::spawn_blocking(move || read_pieces(&dir))
                .await
                .map_err(failed("read a document"))??;
            Ok(merge_pieces(pieces))
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
            let dir = self.doc_dir(room, docid)?;
            tokio::task::spawn_blocking(move || write_piece(&dir, &update_v2))
                .await
                .map_err(failed("store a document"))?
        }
        .boxed()
    }

    fn delete_references<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let dir = self.doc_dir(room, docid)?;
            let references = references.to_vec();
            tokio::task::spawn_blocking(move || {
                for name in references {
                    // A reference is a bare file name; anything else is not ours to delete.
                    if name.contains('/') || name.starts_with('.') {
                        continue;
                    }
                    let path = dir.join(&name);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error("cannot delete", &path, e)),
                    }
                }
                Ok(())
            })
            .await
            .map_err(failed("delete replaced pieces"))?
        }
        .boxed()
    }
}
