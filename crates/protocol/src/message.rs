//! The y-websocket wire protocol (ARCHITECTURE.md, "Wire protocol"): the
//! frames a client sends, parsed and checked, and the messages a server
//! sends, encoded.

use thiserror::Error;

use crate::awareness::{decode_awareness_update, AwarenessEntry, AwarenessLimits};
use crate::lib0::{write_var_bytes, write_var_uint, DecodeError, Decoder};
use crate::update::InvalidUpdate;

pub const MESSAGE_SYNC: u64 = 0;
pub const MESSAGE_AWARENESS: u64 = 1;
pub const MESSAGE_AUTH: u64 = 2;
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;

pub const SYNC_STEP1: u64 = 0;
pub const SYNC_STEP2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// Why a client frame was refused. Each maps to a 44xx close code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error(transparent)]
    InvalidUpdate(#[from] InvalidUpdate),
    #[error("payload is not a valid state vector: {0}")]
    InvalidStateVector(String),
    #[error("awareness state of client {0} is not valid JSON")]
    InvalidAwarenessJson(u64),
    #[error("awareness message with {0} entries")]
    TooManyAwarenessEntries(u64),
    #[error("awareness state of client {client} has {bytes} bytes")]
    AwarenessStateTooLarge { client: u64, bytes: usize },
}

impl ProtocolError {
    /// Whether the frame was refused for its size rather than its form.
    pub fn is_too_large(&self) -> bool {
        matches!(self, ProtocolError::AwarenessStateTooLarge { .. })
    }
}

/// What a parsed client frame asks the server to do. Updates are not
/// checked here: that needs the room's state (see [`crate::update`]).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// The client's state vector: it wants what it lacks.
    SyncStep1 {
        state_vector: &'a [u8],
    },
    /// A document update (`step2`: the answer to our SyncStep1).
    Update {
        update: &'a [u8],
        step2: bool,
    },
    /// An awareness update (the payload) and its entries.
    Awareness {
        payload: &'a [u8],
        entries: Vec<AwarenessEntry>,
    },
    QueryAwareness,
    /// An auth message from a client means nothing to the server.
    Auth,
}

/// Whether `frame` is a document update, read from its first two bytes
/// only: read-only sessions drop these without decoding anything.
pub fn is_update_frame(frame: &[u8]) -> bool {
    let mut decoder = Decoder::new(frame);
    decoder.read_var_uint() == Ok(MESSAGE_SYNC)
        && matches!(decoder.read_var_uint(), Ok(SYNC_STEP2 | SYNC_UPDATE))
}

/// Parses one binary frame from a client, checking everything that does
/// not depend on the room.
pub fn parse_client_frame<'a>(
    frame: &'a [u8],
    awareness: &AwarenessLimits,
) -> Result<ClientMessage<'a>, ProtocolError> {
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
                        state_vector: payload,
                    })
                }
                SYNC_STEP2 | SYNC_UPDATE => Ok(ClientMessage::Update {
                    update: payload,
                    step2: subtype == SYNC_STEP2,
                }),
                other => Err(ProtocolError::UnknownSyncType(other)),
            }
        }
        MESSAGE_AWARENESS => {
            let payload = decoder.read_var_bytes()?;
            decoder.finish()?;
            let entries = decode_awareness_update(payload, awareness)?;
            Ok(ClientMessage::Awareness { payload, entries })
        }
        MESSAGE_QUERY_AWARENESS => {
            decoder.finish()?;
            Ok(ClientMessage::QueryAwareness)
        }
        MESSAGE_AUTH => Ok(ClientMessage::Auth),
        other => Err(ProtocolError::UnknownMessageType(other)),
    }
}

/// A state vector is `count` pairs of (client, clock); read here rather than
/// by yrs, which would reserve room for the declared count first.
pub fn validate_state_vector(sv: &[u8]) -> Result<(), ProtocolError> {
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
        let clock = decoder.read_var_uint()?;
        if clock > u64::from(u32::MAX) {
            return Err(ProtocolError::InvalidStateVector(format!(
                "clock {clock} does not fit in 32 bits"
            )));
        }
    }
    decoder.finish()?;
    Ok(())
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

/// A sync Update message: what a room stream stores for every update (a
/// client's SyncStep2 is stored as one too, as @y/redis does).
pub fn encode_sync_update(update_v1: &[u8]) -> Vec<u8> {
    sync_message(SYNC_UPDATE, update_v1)
}

/// An awareness message around an (already checked) awareness update.
pub fn encode_awareness_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 6);
    write_var_uint(&mut out, MESSAGE_AWARENESS);
    write_var_bytes(&mut out, payload);
    out
}

/// A message as stored in a room stream (field `m`), classified for routing.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamMessage<'a> {
    /// A sync Update: its update v1.
    Update(&'a [u8]),
    /// An awareness message: its awareness update.
    Awareness(&'a [u8]),
    /// Something another (perhaps older or foreign) writer put in the stream;
    /// skipped rather than trusted.
    Unknown,
}

pub fn classify_stream_message(message: &[u8]) -> StreamMessage<'_> {
    let mut decoder = Decoder::new(message);
    let kind = match decoder.read_var_uint() {
        Ok(MESSAGE_SYNC) => match decoder.read_var_uint() {
            Ok(SYNC_UPDATE) => MESSAGE_SYNC,
            _ => return StreamMessage::Unknown,
        },
        Ok(MESSAGE_AWARENESS) => MESSAGE_AWARENESS,
        _ => return StreamMessage::Unknown,
    };
    match decoder.read_var_bytes() {
        Ok(payload) if decoder.finish().is_ok() => {
            if kind == MESSAGE_SYNC {
                StreamMessage::Update(payload)
            } else {
                StreamMessage::Awareness(payload)
            }
        }
        _ => StreamMessage::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_frames_are_recognised_from_two_bytes() {
        assert!(is_update_frame(&[0, 2]));
        assert!(is_update_frame(&[0, 1, 0xff]));
        assert!(!is_update_frame(&[0, 0, 1, 0]));
        assert!(!is_update_frame(&[1, 2]));
    }

    #[test]
    fn stream_messages_are_classified() {
        assert_eq!(
            classify_stream_message(&encode_sync_update(&[0, 0])),
            StreamMessage::Update(&[0, 0])
        );
        assert_eq!(
            classify_stream_message(&encode_awareness_payload(&[0])),
            StreamMessage::Awareness(&[0])
        );
        assert_eq!(
            classify_stream_message(&[0, 1, 1, 0]),
            StreamMessage::Unknown
        );
        assert_eq!(classify_stream_message(&[]), StreamMessage::Unknown);
    }
}
