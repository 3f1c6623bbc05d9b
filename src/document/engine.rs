//! The document engine: all the work y-redis does with yrs, run in helper
//! processes (`y-redis doc-helper`, ARCHITECTURE.md "Containing yrs").
//!
//! yrs works on raw item pointers; a combination of well-formed updates can
//! drive it out of bounds (a segfault, not a panic), and a caught panic
//! leaves its pointers in an unknown state. So no server or worker process
//! applies stored or streamed updates itself: it sends them here, over the
//! helper's stdin and stdout, one request at a time. A crash costs that
//! helper process and one request, which the caller retries without the
//! update that caused it.

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thiserror::Error;
use y_redis_protocol::doc_state::DocState;
use y_redis_protocol::lib0::{write_var_bytes, write_var_uint, DecodeError, Decoder};
use y_redis_protocol::update::{index_document, judge, Verdict};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// Build a document from stored pieces (updates v2) and stream updates (v1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssembleRequest<'a> {
    pub pieces: Vec<&'a [u8]>,
    pub updates: Vec<&'a [u8]>,
    /// Also encode the result as an update v2 (what storage keeps).
    pub want_v2: bool,
    /// For each, the part of the document a client with that state vector lacks.
    pub state_vectors: Vec<&'a [u8]>,
}

/// A document built by the engine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The whole document as an update v1 (what a SyncStep2 carries).
    pub update_v1: Vec<u8>,
    pub state_vector: Vec<u8>,
    /// Whether the updates added anything to the stored pieces.
    pub changed: bool,
    pub update_v2: Option<Vec<u8>>,
    /// One per requested state vector (None: the vector did not decode).
    pub diffs: Vec<Option<Vec<u8>>>,
    /// Indexes of updates left out: refused by the checks or by yrs.
    pub refused: Vec<u32>,
    /// Indexes of updates still waiting for their dependencies (never applied).
    pub held: Vec<u32>,
}

/// Why the engine could not build a document (the process survived).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    #[error("stored document cannot be applied: {0}")]
    CorruptStored(String),
    #[error("yrs panicked")]
    Panicked,
    #[error("malformed request: {0}")]
    BadRequest(String),
}

const OBSERVER_KEY: &str = "y-redis-engine";

/// The yrs work itself. Stream updates go through the same checks as a
/// client's (against the document built so far), so yrs only ever sees
/// updates it can integrate at once: one that waits for dependencies is
/// held and applied once they arrived, as yjs does with pending structs.
pub fn assemble(request: &AssembleRequest) -> Result<Assembled, EngineError> {
    let doc = Doc::new();
    for piece in &request.pieces {
        let corrupt = |e: &dyn std::fmt::Display| EngineError::CorruptStored(e.to_string());
        let update = Update::decode_v2(piece).map_err(|e| corrupt(&e))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| corrupt(&e))?;
    }
    // What the stored document holds; a document with content this reader
    // does not know (legacy kinds) is taken as it is, its updates unchecked.
    let mut known = if request.pieces.is_empty() {
        Some(DocState::default())
    } else {
        let stored = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        index_document(&stored).ok().map(|effects| {
            let mut state = DocState::default();
            state.apply(&effects);
            state
        })
    };
    let changed = Arc::new(AtomicBool::new(false));
    let flag = changed.clone();
    let observer = doc
        .observe_update_v1(OBSERVER_KEY, move |_, _| {
            flag.store(true, Ordering::Relaxed)
        })
        .map_err(|e| EngineError::BadRequest(e.to_string()));
    let mut refused = Vec::new();
    let mut held: Vec<u32> = Vec::new();
    for index in 0..request.updates.len() {
        let outcome = apply_checked(&doc, &mut known, request.updates[index]);
        match outcome {
            Outcome::Applied => {
                // Held updates may be complete now; retry until none moves.
                loop {
                    let before = held.len();
                    held.retain(|&i| {
                        match apply_checked(&doc, &mut known, request.updates[i as usize]) {
                            Outcome::Held => true,
                            Outcome::Refused => {
                                refused.push(i);
                                false
                            }
                            Outcome::Applied | Outcome::Redundant => false,
                        }
                    });
                    if held.len() == before {
                        break;
                    }
                }
            }
            Outcome::Redundant => {}
            Outcome::Held => held.push(index as u32),
            Outcome::Refused => refused.push(index as u32),
        }
    }
    if observer.is_ok() {
        let _ = doc.unobserve_update_v1(OBSERVER_KEY);
    }
    refused.sort_unstable();
    let txn = doc.transact();
    let diffs = request
        .state_vectors
        .iter()
        .map(|sv| {
            StateVector::decode_v1(sv)
                .ok()
                .map(|sv| txn.encode_state_as_update_v1(&sv))
        })
        .collect();
    Ok(Assembled {
        update_v1: txn.encode_state_as_update_v1(&StateVector::default()),
        state_vector: txn.state_vector().encode_v1(),
        changed: changed.load(Ordering::Relaxed),
        update_v2: request
            .want_v2
            .then(|| txn.encode_state_as_update_v2(&StateVector::default())),
        diffs,
        refused,
        held,
    })
}

enum Outcome {
    Applied,
    Redundant,
    Held,
    Refused,
}

/// Checks one stream update against `known` and applies it if it passes.
fn apply_checked(doc: &Doc, known: &mut Option<DocState>, bytes: &[u8]) -> Outcome {
    if let Some(state) = known.as_mut() {
        match judge(bytes, state) {
            Ok(Verdict::Accept(effects)) => state.apply(&effects),
            Ok(Verdict::Redundant) => return Outcome::Redundant,
            Ok(Verdict::Hold { .. }) => return Outcome::Held,
            Err(_) => return Outcome::Refused,
        }
    }
    let applied = Update::decode_v1(bytes)
        .map_err(|e| e.to_string())
        .and_then(|update| {
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| e.to_string())
        });
    match applied {
        Ok(()) => Outcome::Applied,
        Err(_) => Outcome::Refused,
    }
}

fn write_list(out: &mut Vec<u8>, items: &[&[u8]]) {
    write_var_uint(out, items.len() as u64);
    for item in items {
        write_var_bytes(out, item);
    }
}

fn read_list<'a>(d: &mut Decoder<'a>) -> Result<Vec<&'a [u8]>, DecodeError> {
    let count = d.read_var_uint()?;
    // Each entry takes at least its length byte.
    if count > d.remaining() as u64 {
        return Err(DecodeError::UnexpectedEnd);
    }
    (0..count).map(|_| d.read_var_bytes()).collect()
}

impl<'a> AssembleRequest<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .pieces
            .iter()
            .chain(&self.updates)
            .map(|p| p.len() + 5)
            .sum();
        let mut out = Vec::with_capacity(size + 16);
        write_list(&mut out, &self.pieces);
        write_list(&mut out, &self.updates);
        write_var_uint(&mut out, u64::from(self.want_v2));
        write_list(&mut out, &self.state_vectors);
        out
    }

    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        let request = AssembleRequest {
            pieces: read_list(&mut d)?,
            updates: read_list(&mut d)?,
            want_v2: d.read_var_uint()? == 1,
            state_vectors: read_list(&mut d)?,
        };
        d.finish()?;
        Ok(request)
    }
}

const REPLY_OK: u64 = 0;
const REPLY_CORRUPT: u64 = 1;
const REPLY_PANICKED: u64 = 2;
const REPLY_BAD_REQUEST: u64 = 3;

/// A reply on the wire: the document, or why there is none.
pub fn encode_reply(reply: &Result<Assembled, EngineError>) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        Ok(doc) => {
            let size = doc.update_v1.len() + doc.update_v2.as_ref().map_or(0, Vec::len);
            out.reserve(size + 64);
            write_var_uint(&mut out, REPLY_OK);
            write_var_bytes(&mut out, &doc.update_v1);
            write_var_bytes(&mut out, &doc.state_vector);
            write_var_uint(&mut out, u64::from(doc.changed));
            match &doc.update_v2 {
                Some(v2) => {
                    write_var_uint(&mut out, 1);
                    write_var_bytes(&mut out, v2);
                }
                None => write_var_uint(&mut out, 0),
            }
            write_var_uint(&mut out, doc.diffs.len() as u64);
            for diff in &doc.diffs {
                match diff {
                    Some(diff) => {
                        write_var_uint(&mut out, 1);
                        write_var_bytes(&mut out, diff);
                    }
                    None => write_var_uint(&mut out, 0),
                }
            }
            for list in [&doc.refused, &doc.held] {
                write_var_uint(&mut out, list.len() as u64);
                for &index in list {
                    write_var_uint(&mut out, u64::from(index));
                }
            }
        }
        Err(e) => {
            let (code, text) = match e {
                EngineError::CorruptStored(text) => (REPLY_CORRUPT, text.as_str()),
                EngineError::Panicked => (REPLY_PANICKED, ""),
                EngineError::BadRequest(text) => (REPLY_BAD_REQUEST, text.as_str()),
            };
            write_var_uint(&mut out, code);
            write_var_bytes(&mut out, text.as_bytes());
        }
    }
    out
}

pub fn decode_reply(bytes: &[u8]) -> Result<Result<Assembled, EngineError>, DecodeError> {
    let mut d = Decoder::new(bytes);
    let code = d.read_var_uint()?;
    if code != REPLY_OK {
        let text = d.read_var_string()?.to_owned();
        d.finish()?;
        return Ok(Err(match code {
            REPLY_CORRUPT => EngineError::CorruptStored(text),
            REPLY_PANICKED => EngineError::Panicked,
            _ => EngineError::BadRequest(text),
        }));
    }
    let update_v1 = d.read_var_bytes()?.to_vec();
    let state_vector = d.read_var_bytes()?.to_vec();
    let changed = d.read_var_uint()? == 1;
    let update_v2 = match d.read_var_uint()? {
        1 => Some(d.read_var_bytes()?.to_vec()),
        _ => None,
    };
    let count = d.read_var_uint()?;
    let mut diffs = Vec::new();
    for _ in 0..count.min(d.remaining() as u64) {
        diffs.push(match d.read_var_uint()? {
            1 => Some(d.read_var_bytes()?.to_vec()),
            _ => None,
        });
    }
    let mut read_indexes = || -> Result<Vec<u32>, DecodeError> {
        let count = d.read_var_uint()?;
        (0..count.min(d.remaining() as u64))
            .map(|_| Ok(d.read_var_uint()? as u32))
            .collect()
    };
    let refused = read_indexes()?;
    let held = read_indexes()?;
    d.finish()?;
    Ok(Ok(Assembled {
        update_v1,
        state_vector,
        changed,
        update_v2,
        diffs,
        refused,
        held,
    }))
}

/// Frames on the helper's pipes: a 4-byte little-endian length, then the bytes.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(payload)?;
    out.flush()
}

/// Reads one frame; None at a clean end of input.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut payload = vec![0; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// The helper process: answers requests from stdin on stdout until stdin
/// closes. After a panic it answers once more and exits, so no request ever
/// meets a yrs that already misbehaved.
pub fn serve_stdio() -> io::Result<()> {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("y-redis doc-helper: yrs panicked: {info}");
    }));
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    while let Some(frame) = read_frame(&mut input)? {
        let reply = match AssembleRequest::decode(&frame) {
            Ok(request) => catch_unwind(AssertUnwindSafe(|| assemble(&request)))
                .unwrap_or(Err(EngineError::Panicked)),
            Err(e) => Err(EngineError::BadRequest(e.to_string())),
        };
        write_frame(&mut output, &encode_reply(&reply))?;
        if reply == Err(EngineError::Panicked) {
            break;
        }
    }
    Ok(())
}

/// Caps the helper's address space, so a document that makes yrs allocate
/// without end fails in the helper instead of exhausting the machine.
pub fn limit_memory(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and changes only this process's limit.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    if result != 0 {
        eprintln!(
            "y-redis doc-helper: cannot limit memory: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let request = AssembleRequest {
            pieces: vec![b"p1", b""],
            updates: vec![b"u1", b"u2"],
            want_v2: true,
            state_vectors: vec![&[0]],
        };
        assert_eq!(AssembleRequest::decode(&request.encode()), Ok(request));
        let reply = Ok(Assembled {
            update_v1: vec![0, 0],
            state_vector: vec![0],
            changed: true,
            update_v2: Some(vec![1]),
            diffs: vec![None, Some(vec![2])],
            refused: vec![3],
            held: vec![4, 5],
        });
        assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
        let failed = Err(EngineError::CorruptStored("x".into()));
        assert_eq!(decode_reply(&encode_reply(&failed)), Ok(failed));
    }
}
