//! Assembling a document from storage plus its room stream: what an initial
//! sync sends and what the worker persists. The Y.Doc lives only inside
//! [`assemble`], which callers run on the blocking pool.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thiserror::Error;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::protocol::{
    check_update_counts, classify_stream_message, integrates_alone, AwarenessStates, StreamMessage,
};
use crate::redis::{RedisError, RedisStore, StreamEntry, StreamId};
use crate::storage::{Reference, Storage, StorageError, StoredDoc};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored document cannot be applied: {0}")]
    CorruptStored(String),
    #[error("document assembly task failed: {0}")]
    Task(String),
}

/// A document as of `last_id` of its room stream.
#[derive(Debug, Clone)]
pub struct AssembledDoc {
    /// The whole document as an update v1 (what a SyncStep2 carries).
    pub update_v1: Vec<u8>,
    pub state_vector: Vec<u8>,
    pub awareness: AwarenessStates,
    /// The last stream entry included ([`StreamId::ZERO`] if the stream was empty).
    pub last_id: StreamId,
    /// Storage pieces the document was built from.
    pub references: Vec<Reference>,
    /// Whether the stream added anything to what storage held.
    pub changed_by_stream: bool,
}

impl AssembledDoc {
    pub fn update_v2(&self) -> Result<Vec<u8>, LoadError> {
        Update::decode_v1(&self.update_v1)
            .map(|u| u.encode_v2())
            .map_err(|e| LoadError::Task(format!("re-encoding own update failed: {e}")))
    }
}

const OBSERVER_KEY: &str = "y-redis-assemble";
/// Stream entries that crash yrs one assembly skips before giving up.
const MAX_CRASHING_ENTRIES: usize = 8;

/// Why one attempt at building the document stopped.
enum Attempt {
    Failed(LoadError),
    /// Entry `index` made yrs panic; the document may be inconsistent.
    Crashed {
        index: usize,
    },
}

/// Builds the document. Stream entries that are not valid messages are
/// skipped: one foreign bad entry must not make a room unloadable. An entry
/// that makes yrs panic (possible for updates that decode but do not
/// integrate) is skipped too, by starting over without it.
pub fn assemble(
    stored: Option<StoredDoc>,
    entries: &[StreamEntry],
) -> Result<AssembledDoc, LoadError> {
    let mut crashing = Vec::new();
    loop {
        match catch_unwind(AssertUnwindSafe(|| {
            build(stored.as_ref(), entries, &crashing)
        })) {
            Ok(Ok(doc)) => return Ok(doc),
            Ok(Err(Attempt::Failed(e))) => return Err(e),
            Ok(Err(Attempt::Crashed { index })) if crashing.len() < MAX_CRASHING_ENTRIES => {
                tracing::error!(id = %entries[index].id, "skipping stream update that crashed yrs");
                crashing.push(index);
            }
            Ok(Err(Attempt::Crashed { .. })) => {
                return Err(LoadError::Task(format!(
                    "more than {MAX_CRASHING_ENTRIES} stream entries crash yrs"
                )))
            }
            // Not attributable to one entry (yrs panicked encoding the result):
            // skip the updates that cannot even integrate on their own.
            Err(_) if crashing.is_empty() => {
                crashing = updates_that_crash_alone(entries);
                tracing::error!(
                    skipped = crashing.len(),
                    "document did not encode; skipping updates that crash yrs alone"
                );
                if crashing.is_empty() {
                    return Err(LoadError::Task(
                        "yrs panicked while encoding the document".into(),
                    ));
                }
            }
            Err(_) => {
                return Err(LoadError::Task(
                    "yrs panicked while encoding the document".into(),
                ))
            }
        }
    }
}

fn updates_that_crash_alone(entries: &[StreamEntry]) -> Vec<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            matches!(
                classify_stream_message(&e.message),
                StreamMessage::Update(u) if !decode_guarded(u).is_some_and(integrates_alone)
            )
        })
        .map(|(i, _)| i)
        .collect()
}

/// Decodes a stream update the way validation does: counts checked first,
/// a decoder panic counted as undecodable.
fn decode_guarded(update: &[u8]) -> Option<Update> {
    check_update_counts(update).ok()?;
    catch_unwind(AssertUnwindSafe(|| Update::decode_v1(update)))
        .ok()?
        .ok()
}

fn build(
    stored: Option<&StoredDoc>,
    entries: &[StreamEntry],
    skip: &[usize],
) -> Result<AssembledDoc, Attempt> {
    let doc = Doc::new();
    let references = match stored {
        Some(stored) => {
            let corrupt = |e: String| Attempt::Failed(LoadError::CorruptStored(e));
            let update =
                Update::decode_v2(&stored.update_v2).map_err(|e| corrupt(e.to_string()))?;
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| corrupt(e.to_string()))?;
            stored.references.clone()
        }
        None => Vec::new(),
    };

    let changed = Arc::new(AtomicBool::new(false));
    let flag = changed.clone();
    let task_error = |e: &dyn std::fmt::Display| Attempt::Failed(LoadError::Task(e.to_string()));
    doc.observe_update_v1(OBSERVER_KEY, move |_, _| {
        flag.store(true, Ordering::Relaxed)
    })
    .map_err(|e| task_error(&e))?;
    let mut awareness = AwarenessStates::default();
    for (index, entry) in entries.iter().enumerate() {
        match classify_stream_message(&entry.message) {
            StreamMessage::Update(_) if skip.contains(&index) => {}
            StreamMessage::Update(bytes) => {
                match check_update_counts(bytes).map(|()| Update::decode_v1(bytes)) {
                    // Its own transaction, so a panic while committing is caught here too.
                    Ok(Ok(update)) => match catch_unwind(AssertUnwindSafe(|| {
                        doc.transact_mut().apply_update(update)
                    })) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(id = %entry.id, error = %e, "skipping stream update that does not apply")
                        }
                        Err(_) => return Err(Attempt::Crashed { index }),
                    },
                    Ok(Err(e)) => {
                        tracing::warn!(id = %entry.id, error = %e, "skipping undecodable stream update")
                    }
                    Err(e) => {
                        tracing::warn!(id = %entry.id, error = %e, "skipping stream update with impossible counts")
                    }
                }
            }
            StreamMessage::Awareness(states) => states.into_iter().for_each(|s| awareness.apply(s)),
            StreamMessage::Unknown => {
                tracing::warn!(id = %entry.id, "skipping unknown stream message")
            }
        }
    }
    doc.unobserve_update_v1(OBSERVER_KEY)
        .map_err(|e| task_error(&e))?;
    awareness.prune_removed();

    let txn = doc.transact();
    Ok(AssembledDoc {
        update_v1: txn.encode_state_as_update_v1(&StateVector::default()),
        state_vector: txn.state_vector().encode_v1(),
        awareness,
        last_id: entries.last().map(|e| e.id).unwrap_or(StreamId::ZERO),
        references,
        changed_by_stream: changed.load(Ordering::Relaxed),
    })
}

/// Reads the stream first, then storage: whatever the worker persists and
/// trims in between is then in one or the other (DESIGN §4).
pub async fn load(
    redis: &RedisStore,
    storage: &dyn Storage,
    room: &str,
    docid: &str,
) -> Result<AssembledDoc, LoadError> {
    let key = redis.keys().room_stream(room, docid);
    let entries = redis.read_stream(&key).await?;
    let stored = storage.retrieve_doc(room, docid).await?;
    tokio::task::spawn_blocking(move || assemble(stored, &entries))
        .await
        .map_err(|e| LoadError::Task(e.to_string()))?
}
