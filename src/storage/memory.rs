//! In-process storage, for tests and for a server run without a backend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::{ready, BoxFuture, FutureExt};

use super::{merge_pieces, Reference, Storage, StorageError, StoredDoc};

type Pieces = BTreeMap<Reference, Vec<u8>>;

#[derive(Default)]
pub struct MemoryStorage {
    docs: Mutex<BTreeMap<(String, String), Pieces>>,
    next_reference: AtomicU64,
}

impl MemoryStorage {
    fn with_docs<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<(String, String), Pieces>) -> T,
    ) -> Result<T, StorageError> {
        let mut docs = self
            .docs
            .lock()
            .map_err(|_| StorageError::unavailable("memory", "lock", "poisoned by a panic"))?;
        Ok(f(&mut docs))
    }
}

impl Storage for MemoryStorage {
    fn check(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        ready(self.with_docs(|_| ())).boxed()
    }

    fn retrieve_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredDoc>, StorageError>> {
        let pieces = self.with_docs(|docs| {
            docs.get(&(room.to_owned(), docid.to_owned()))
                .map(|p| {
                    p.iter()
                        .map(|(r, u)| (r.clone(), u.clone()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        });
        ready(pieces.map(merge_pieces)).boxed()
    }

    fn persist_doc<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        update_v2: Vec<u8>,
        _state_vector: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        // Zero-padded so references sort in the order they were written.
        let reference = format!(
            "{:020}",
            self.next_reference.fetch_add(1, Ordering::Relaxed)
        );
        let result = self.with_docs(|docs| {
            docs.entry((room.to_owned(), docid.to_owned()))
                .or_default()
                .insert(reference, update_v2);
        });
        ready(result).boxed()
    }

    fn delete_references<'a>(
        &'a self,
        room: &'a str,
        docid: &'a str,
        references: &'a [Reference],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let result = self.with_docs(|docs| {
            if let Some(pieces) = docs.get_mut(&(room.to_owned(), docid.to_owned())) {
                for r in references {
                    pieces.remove(r);
                }
            }
        });
        ready(result).boxed()
    }
}
