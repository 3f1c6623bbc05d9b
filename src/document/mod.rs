//! Assembling a document from storage plus its room stream: what an initial
//! sync sends and what the worker persists. The yrs work runs in helper
//! processes ([`engine`], [`helper`]); this module decides what to send
//! them and contains what goes wrong: when the engine crashes on a room,
//! the update that makes it crash is found by bisection, remembered and
//! skipped from then on (ARCHITECTURE.md, "Containing yrs").

pub mod engine;
pub mod helper;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use y_redis_protocol::message::{classify_stream_message, StreamMessage};

use self::engine::{AssembleRequest, Assembled, EngineError};
use self::helper::{EnginePool, HelperError};
use crate::metrics;
use crate::storage::{Reference, Storage, StorageError, StoredDoc};
use crate::streams::{RedisError, RedisStreams, StreamEntry, StreamId};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored document cannot be applied: {0}")]
    CorruptStored(String),
    /// The engine keeps crashing on this room; an operator has to look.
    #[error("room quarantined: {0}")]
    Quarantined(String),
    #[error(transparent)]
    Engine(#[from] HelperError),
}

impl LoadError {
    /// Whether retrying can never help (refuse once instead of looping).
    pub fn is_permanent(&self) -> bool {
        match self {
            LoadError::Storage(e) => e.is_permanent(),
            LoadError::CorruptStored(_) | LoadError::Quarantined(_) => true,
            LoadError::Redis(_) | LoadError::Engine(_) => false,
        }
    }
}

/// A document as of `last_id` of its room stream.
#[derive(Debug, Clone)]
pub struct AssembledDoc {
    /// The whole document as an update v1 (what a SyncStep2 carries).
    pub update_v1: Vec<u8>,
    pub state_vector: Vec<u8>,
    /// The document as an update v2, when asked for (what storage keeps).
    pub update_v2: Option<Vec<u8>>,
    /// What clients with the requested state vectors lack, in request order.
    pub diffs: Vec<Option<Vec<u8>>>,
    /// The last stream entry included ([`StreamId::ZERO`] if the stream was empty).
    pub last_id: StreamId,
    /// Storage pieces the document was built from.
    pub references: Vec<Reference>,
    /// Whether the stream added anything to what storage held.
    pub changed_by_stream: bool,
    /// Stream updates left out because they build on something the
    /// document lacks (yet: it may still come), in stream order. Clients
    /// syncing get them as they are (yjs holds them until it can apply
    /// them), and the worker keeps them in the stream.
    pub waiting: Vec<StreamId>,
}

/// Stream updates that crashed the engine, per room stream, so the
/// bisection runs once per process and room.
#[derive(Default)]
struct Quarantine {
    rooms: Mutex<HashMap<String, HashSet<StreamId>>>,
}

/// Rooms remembered at most; past it the oldest knowledge is dropped (and
/// found again by bisection if the room comes back).
const QUARANTINE_ROOMS: usize = 1024;
/// Crashing updates one room may have before it is quarantined for good.
const MAX_CRASHING_UPDATES: usize = 16;

impl Quarantine {
    fn known(&self, key: &str) -> HashSet<StreamId> {
        self.rooms
            .lock()
            .ok()
            .and_then(|rooms| rooms.get(key).cloned())
            .unwrap_or_default()
    }

    fn add(&self, key: &str, id: StreamId) {
        if let Ok(mut rooms) = self.rooms.lock() {
            if rooms.len() >= QUARANTINE_ROOMS && !rooms.contains_key(key) {
                if let Some(other) = rooms.keys().next().cloned() {
                    rooms.remove(&other);
                }
            }
            rooms.entry(key.to_owned()).or_default().insert(id);
        }
    }
}

/// Builds documents with the engine, containing its crashes.
pub struct Documents {
    pool: Arc<EnginePool>,
    quarantine: Quarantine,
}

/// One stream update as sent to the engine.
struct Candidate<'a> {
    id: StreamId,
    update: &'a [u8],
}

impl Documents {
    pub fn new(pool: Arc<EnginePool>) -> Arc<Self> {
        Arc::new(Documents {
            pool,
            quarantine: Quarantine::default(),
        })
    }

    pub fn pool(&self) -> &EnginePool {
        &self.pool
    }

    /// Reads the stream first, then storage: whatever the worker persists
    /// and trims in between is then in one or the other. `state_vectors` is
    /// asked once the reads are done (clients that sent theirs meanwhile
    /// get a diff).
    pub async fn load(
        &self,
        redis: &RedisStreams,
        storage: &dyn Storage,
        room: &str,
        docid: &str,
        want_v2: bool,
        state_vectors: impl FnOnce() -> Vec<Vec<u8>>,
    ) -> Result<(AssembledDoc, Vec<StreamEntry>), LoadError> {
        let key = redis.keys().room_stream(room, docid);
        let entries = redis.read_stream(&key).await?;
        let stored = storage.retrieve_doc(room, docid).await?;
        let doc = self
            .assemble(&key, stored.as_ref(), &entries, &state_vectors(), want_v2)
            .await?;
        Ok((doc, entries))
    }

    /// Builds the document of stream `key` from `stored` and `entries`.
    pub async fn assemble(
        &self,
        key: &str,
        stored: Option<&StoredDoc>,
        entries: &[StreamEntry],
        state_vectors: &[Vec<u8>],
        want_v2: bool,
    ) -> Result<AssembledDoc, LoadError> {
        let pieces: Vec<&[u8]> =
            stored.map_or_else(Vec::new, |s| s.pieces.iter().map(Vec::as_slice).collect());
        let candidates: Vec<Candidate> = entries
            .iter()
            .filter_map(|e| match classify_stream_message(&e.message) {
                StreamMessage::Update(update) => Some(Candidate { id: e.id, update }),
                _ => None,
            })
            .collect();
        let mut skip = self.quarantine.known(key);
        loop {
            let live: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| !skip.contains(&c.id))
                .collect();
            let updates: Vec<&[u8]> = live.iter().map(|c| c.update).collect();
            let request = AssembleRequest {
                pieces: pieces.clone(),
                updates,
                want_v2,
                state_vectors: state_vectors.iter().map(Vec::as_slice).collect(),
            };
            match self.pool.run(request.encode()).await {
                Ok(Ok(doc)) => {
                    if !doc.refused.is_empty() || !doc.held.is_empty() {
                        tracing::warn!(stream = key, refused = doc.refused.len(), waiting = doc.held.len(), "stream updates left out of the document: refused, or waiting for what they build on");
                    }
                    let mut waiting: Vec<StreamId> = doc
                        .held
                        .iter()
                        .filter_map(|&i| live.get(i as usize).map(|c| c.id))
                        .collect();
                    waiting.sort_unstable();
                    return Ok(finish(doc, entries, stored, waiting));
                }
                Ok(Err(EngineError::CorruptStored(reason))) => {
                    return Err(LoadError::CorruptStored(reason))
                }
                Ok(Err(e)) => return Err(LoadError::Quarantined(e.to_string())),
                Err(e) if e.blames_input() => {
                    metrics::ENGINE_CRASHES.inc();
                    tracing::error!(stream = key, error = %e, "the document engine failed on this room; searching for the update to blame");
                    let bad = self.find_crashing(&pieces, &live).await?;
                    if skip.len() >= MAX_CRASHING_UPDATES {
                        return Err(LoadError::Quarantined(format!(
                            "more than {MAX_CRASHING_UPDATES} updates crash the document engine"
                        )));
                    }
                    metrics::QUARANTINED_UPDATES.inc();
                    tracing::error!(stream = key, id = %bad, "skipping a stream update that crashes the document engine");
                    self.quarantine.add(key, bad);
                    skip.insert(bad);
                }
                Err(e) => return Err(LoadError::Engine(e)),
            }
        }
    }

    /// Whether the engine survives the stored pieces plus these updates.
    async fn survives(&self, pieces: &[&[u8]], updates: Vec<&[u8]>) -> Result<bool, LoadError> {
        let request = AssembleRequest {
            pieces: pieces.to_vec(),
            updates,
            want_v2: false,
            state_vectors: Vec::new(),
        };
        match self.pool.run(request.encode()).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(EngineError::CorruptStored(reason))) => Err(LoadError::CorruptStored(reason)),
            Ok(Err(_)) => Ok(false),
            Err(e) if e.blames_input() => Ok(false),
            Err(e) => Err(LoadError::Engine(e)),
        }
    }

    /// The update whose addition makes the engine crash: the shortest
    /// crashing prefix of the (not yet skipped) updates ends with it.
    async fn find_crashing(
        &self,
        pieces: &[&[u8]],
        live: &[&Candidate<'_>],
    ) -> Result<StreamId, LoadError> {
        if !self.survives(pieces, Vec::new()).await? {
            return Err(LoadError::Quarantined(
                "the stored document crashes the document engine".into(),
            ));
        }
        // survives(prefix of `ok` updates), crashes with `bad` (the whole list, or less).
        let (mut ok, mut bad) = (0, live.len());
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            let prefix = live[..mid].iter().map(|c| c.update).collect();
            if self.survives(pieces, prefix).await? {
                ok = mid;
            } else {
                bad = mid;
            }
        }
        match bad.checked_sub(1).and_then(|i| live.get(i)) {
            Some(candidate) => Ok(candidate.id),
            None => Err(LoadError::Quarantined(
                "the document engine crashes without any update".into(),
            )),
        }
    }
}

fn finish(
    doc: Assembled,
    entries: &[StreamEntry],
    stored: Option<&StoredDoc>,
    waiting: Vec<StreamId>,
) -> AssembledDoc {
    AssembledDoc {
        update_v1: doc.update_v1,
        state_vector: doc.state_vector,
        update_v2: doc.update_v2,
        diffs: doc.diffs,
        last_id: entries.last().map_or(StreamId::ZERO, |e| e.id),
        references: stored.map_or_else(Vec::new, |s| s.references.clone()),
        changed_by_stream: doc.changed,
        waiting,
    }
}
