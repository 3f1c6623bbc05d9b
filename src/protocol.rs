//! The y-websocket wire protocol (DESIGN §3): lib0 variable-length encoding,
//! parsing and validating client frames, and encoding server messages.
//!
//! Nothing here does I/O; the session actor feeds frames in and sends what
//! comes out, so the rules can be tested byte for byte against npm vectors.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use thiserror::Error;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

pub const MESSAGE_SYNC: u64 = 0;
pub const MESSAGE_AWARENESS: u64 = 1;
pub const MESSAGE_AUTH: u64 = 2;
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;

pub const SYNC_STEP1: u64 = 0;
pub const SYNC_STEP2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// Why a client frame was rejected. Each maps to a 44xx close code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unexpected end of message")]
    UnexpectedEnd,
    #[error("variable-length integer overflows 53 bits")]
    VarIntOverflow,
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("payload is not a valid Yjs update: {0}")]
    InvalidUpdate(String),
    #[error("payload is not a valid state vector: {0}")]
    InvalidStateVector(String),
    #[error("awareness state of client {0} is not valid JSON")]
    InvalidAwarenessJson(u64),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
}

/// A lib0 decoder over a byte slice.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    pub fn read_var_uint(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.buf.get(self.pos).ok_or(ProtocolError::UnexpectedEnd)?;
            self.pos += 1;
            if shift > 49 {
                return Err(ProtocolError::VarIntOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                // lib0 numbers are JavaScript numbers: at most 2^53 - 1.
                if value > (1u64 << 53) - 1 {
                    return Err(ProtocolError::VarIntOverflow);
                }
                return Ok(value);
            }
            shift += 7;
        }
    }

    pub fn read_var_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len =
            usize::try_from(self.read_var_uint()?).map_err(|_| ProtocolError::UnexpectedEnd)?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or(ProtocolError::UnexpectedEnd)?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(ProtocolError::UnexpectedEnd)?;
        self.pos = end;
        Ok(bytes)
    }

    pub fn read_var_string(&mut self) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.read_var_bytes()?).map_err(|_| ProtocolError::InvalidUtf8)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn finish(&self) -> Result<(), ProtocolError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(ProtocolError::TrailingBytes(n)),
        }
    }
}

pub fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value > 0x7f {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn sync_message(subtype: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    write_var_uint(&mut out, MESSAGE_SYNC);
    write_var_uint(&mut out, subtype);
    write_var_bytes(&mut out, payload);
    out
}

pub fn encode_sync_step1(state_vector: &[u8]) -> Vec<u8> {
    sync_message(SYNC_STEP1, state_vector)
}

pub fn encode_sync_step2(update_v1: &[u8]) -> Vec<u8> {
    sync_message(SYNC_STEP2, update_v1)
}

pub fn encode_sync_update(update_v1: &[u8]) -> Vec<u8> {
    sync_message(SYNC_UPDATE, update_v1)
}

/// One client's entry in an awareness update. `state` is the raw JSON text;
/// `"null"` means the client left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    pub client_id: u64,
    pub clock: u64,
    pub state: String,
}

impl AwarenessEntry {
    pub fn is_removal(&self) -> bool {
        self.state == "null"
    }
}

/// Decodes an awareness update (the payload inside an awareness message),
/// checking that every state is valid JSON as the JS client will `JSON.parse` it.
pub fn decode_awareness_update(payload: &[u8]) -> Result<Vec<AwarenessEntry>, ProtocolError> {
    let mut decoder = Decoder::new(payload);
    let count = decoder.read_var_uint()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let client_id = decoder.read_var_uint()?;
        let clock = decoder.read_var_uint()?;
        let state = decoder.read_var_string()?;
        if serde_json::from_str::<serde::de::IgnoredAny>(state).is_err() {
            return Err(ProtocolError::InvalidAwarenessJson(client_id));
        }
        entries.push(AwarenessEntry {
            client_id,
            clock,
            state: state.to_owned(),
        });
    }
    decoder.finish()?;
    Ok(entries)
}

/// Encodes a whole awareness message (type 1) holding `entries`.
pub fn encode_awareness_message<'a>(
    entries: impl ExactSizeIterator<Item = &'a AwarenessEntry>,
) -> Vec<u8> {
    let mut update = Vec::new();
    write_var_uint(&mut update, entries.len() as u64);
    for entry in entries {
        write_var_uint(&mut update, entry.client_id);
        write_var_uint(&mut update, entry.clock);
        write_var_bytes(&mut update, entry.state.as_bytes());
    }
    let mut out = Vec::with_capacity(update.len() + 6);
    write_var_uint(&mut out, MESSAGE_AWARENESS);
    write_var_bytes(&mut out, &update);
    out
}

/// The message telling everyone that `client_id` left (clock bumped past its last one).
pub fn encode_awareness_removal(client_id: u64, last_clock: u64) -> Vec<u8> {
    let entry = AwarenessEntry {
        client_id,
        clock: last_clock + 1,
        state: "null".into(),
    };
    encode_awareness_message(std::iter::once(&entry))
}

/// Rejects a v1 update whose leading counts claim more entries than its
/// bytes could hold. yrs reserves memory for the declared counts before
/// reading them, so a few bytes declaring 2^27 clients would make it touch
/// hundreds of megabytes.
pub fn check_update_counts(update: &[u8]) -> Result<(), ProtocolError> {
    let mut decoder = Decoder::new(update);
    let clients = decoder.read_var_uint()?;
    // Each client needs at least a block count, a client id and a clock.
    if clients > (decoder.remaining() / 3) as u64 {
        return Err(ProtocolError::InvalidUpdate(format!(
            "declares {clients} clients in {} bytes",
            update.len()
        )));
    }
    if clients > 0 {
        let blocks = decoder.read_var_uint()?;
        if blocks > decoder.remaining() as u64 {
            return Err(ProtocolError::InvalidUpdate(format!(
                "declares {blocks} blocks in {} bytes",
                update.len()
            )));
        }
    }
    Ok(())
}

/// Checks that `update` decodes as a Yjs v1 update and integrates into a
/// document on its own (some updates decode fine but make yrs panic when
/// integrated or encoded, which would make every later load of the room
/// fail), and tells whether it carries anything. A panic counts as invalid
/// rather than taking the thread down.
pub fn validate_update_v1(update: &[u8]) -> Result<bool, ProtocolError> {
    check_update_counts(update)?;
    let decoded = match catch_unwind(AssertUnwindSafe(|| Update::decode_v1(update))) {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(e)) => return Err(ProtocolError::InvalidUpdate(e.to_string())),
        Err(_) => return Err(ProtocolError::InvalidUpdate("decoder panicked".into())),
    };
    // npm yjs throws on an empty delete range ("Unexpected case").
    if has_empty_delete_range(&decoded) {
        return Err(ProtocolError::InvalidUpdate("empty delete range".into()));
    }
    let has_content = !decoded.is_empty();
    // The decoded update goes into the trial: decoding once per frame.
    if has_content && !integrates_alone(decoded) {
        return Err(ProtocolError::InvalidUpdate(
            "update does not integrate".into(),
        ));
    }
    Ok(has_content)
}

fn has_empty_delete_range(update: &Update) -> bool {
    update
        .delete_set()
        .iter()
        .any(|(_, ranges)| ranges.iter().any(|r| r.start >= r.end))
}

/// Applies `update` to an empty document and encodes the result.
pub fn integrates_alone(update: Update) -> bool {
    let trial = || -> Result<(), Box<dyn std::error::Error>> {
        let doc = Doc::new();
        doc.transact_mut().apply_update(update)?;
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default());
        Ok(())
    };
    matches!(catch_unwind(AssertUnwindSafe(trial)), Ok(Ok(())))
}

/// A state vector is `count` pairs of (client, clock); decoded here rather
/// than by yrs, which would reserve room for the declared count first.
fn validate_state_vector(sv: &[u8]) -> Result<(), ProtocolError> {
    let mut decoder = Decoder::new(sv);
    let count = decoder.read_var_uint()?;
    if count > (decoder.remaining() / 2) as u64 {
        return Err(ProtocolError::InvalidStateVector(format!(
            "declares {count} clients in {} bytes",
            sv.len()
        )));
    }
    for _ in 0..count {
        decoder.read_var_uint()?;
        decoder.read_var_uint()?;
    }
    decoder.finish()
}

/// What a validated client frame asks the server to do.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// The client's state vector: it wants what it lacks.
    SyncStep1 {
        state_vector: Vec<u8>,
    },
    /// A document update to publish, already in its stream form (a sync
    /// Update message; a SyncStep2 is rewritten to one).
    Update {
        message: Vec<u8>,
    },
    /// A SyncStep2 without content (a client with an empty document): nothing to publish.
    EmptyUpdate,
    /// An awareness message to publish as it is, with its decoded entries.
    Awareness {
        message: Vec<u8>,
        entries: Vec<AwarenessEntry>,
    },
    QueryAwareness,
    /// An auth message from a client means nothing to the server.
    Ignored,
}

/// Parses and validates one binary frame from a client.
pub fn parse_client_frame(frame: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let mut decoder = Decoder::new(frame);
    match decoder.read_var_uint()? {
        MESSAGE_SYNC => {
            let subtype = decoder.read_var_uint()?;
            let payload = decoder.read_var_bytes()?;
            decoder.finish()?;
            match subtype {
                SYNC_STEP1 => {
                    validate_state_vector(payload)?;
                    Ok(ClientMessage::SyncStep1 {
                        state_vector: payload.to_vec(),
                    })
                }
                SYNC_STEP2 | SYNC_UPDATE => {
                    let has_content = validate_update_v1(payload)?;
                    if subtype == SYNC_STEP2 && !has_content {
                        return Ok(ClientMessage::EmptyUpdate);
                    }
                    // Re-encoding (rather than patching byte 1) keeps the
                    // stream entry canonical whatever varint form came in.
                    Ok(ClientMessage::Update {
                        message: encode_sync_update(payload),
                    })
                }
                other => Err(ProtocolError::UnknownSyncType(other)),
            }
        }
        MESSAGE_AWARENESS => {
            let payload = decoder.read_var_bytes()?;
            decoder.finish()?;
            let entries = decode_awareness_update(payload)?;
            let mut message = Vec::with_capacity(payload.len() + 6);
            write_var_uint(&mut message, MESSAGE_AWARENESS);
            write_var_bytes(&mut message, payload);
            Ok(ClientMessage::Awareness { message, entries })
        }
        MESSAGE_QUERY_AWARENESS => {
            decoder.finish()?;
            Ok(ClientMessage::QueryAwareness)
        }
        MESSAGE_AUTH => Ok(ClientMessage::Ignored),
        other => Err(ProtocolError::UnknownMessageType(other)),
    }
}

/// A message as stored in a room stream (field `m`), classified for routing.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamMessage<'a> {
    Update(&'a [u8]),
    Awareness(Vec<AwarenessEntry>),
    /// Something another (perhaps older or foreign) writer put in the stream;
    /// skipped rather than trusted.
    Unknown,
}

pub fn classify_stream_message(message: &[u8]) -> StreamMessage<'_> {
    let mut decoder = Decoder::new(message);
    match decoder.read_var_uint() {
        Ok(MESSAGE_SYNC) => match (decoder.read_var_uint(), decoder.read_var_bytes()) {
            (Ok(SYNC_UPDATE), Ok(update)) => StreamMessage::Update(update),
            _ => StreamMessage::Unknown,
        },
        Ok(MESSAGE_AWARENESS) => match decoder.read_var_bytes().map(decode_awareness_update) {
            Ok(Ok(entries)) => StreamMessage::Awareness(entries),
            _ => StreamMessage::Unknown,
        },
        _ => StreamMessage::Unknown,
    }
}

/// Awareness states as y-protocols' `Awareness` keeps them: per client the
/// newest clock wins; a removal at the same clock beats a state.
#[derive(Debug, Default, Clone)]
pub struct AwarenessStates {
    clients: BTreeMap<u64, AwarenessEntry>,
}

impl AwarenessStates {
    pub fn apply(&mut self, entry: AwarenessEntry) {
        let newer = match self.clients.get(&entry.client_id) {
            None => true,
            Some(current) => {
                current.clock < entry.clock
                    || (current.clock == entry.clock && entry.is_removal() && !current.is_removal())
            }
        };
        if newer {
            self.clients.insert(entry.client_id, entry);
        }
    }

    /// Clients with a live (non-null) state.
    pub fn present(&self) -> impl Iterator<Item = &AwarenessEntry> {
        self.clients.values().filter(|e| !e.is_removal())
    }

    /// Forgets clients that left, so the map only grows with present users.
    pub fn prune_removed(&mut self) {
        self.clients.retain(|_, e| !e.is_removal());
    }

    /// The awareness message announcing every present client, if any.
    pub fn encode_present(&self) -> Option<Vec<u8>> {
        let present: Vec<&AwarenessEntry> = self.present().collect();
        (!present.is_empty()).then(|| encode_awareness_message(present.into_iter()))
    }
}
