//! Awareness (presence) messages and the rules a room applies to them
//! (ARCHITECTURE.md, "Awareness"): y-protocols' ordering by clock, a cap on
//! the states a room tracks, and expiry of states not renewed in time (the
//! 30 s y-protocols clients use themselves; they renew every 15 s).

use std::collections::HashMap;

use crate::lib0::{write_var_bytes, write_var_uint, DecodeError, Decoder};
use crate::message::{ProtocolError, MESSAGE_AWARENESS};

/// How long a state lives without renewal (y-protocols' `outdatedTimeout`).
pub const AWARENESS_TIMEOUT_MS: u64 = 30_000;

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

/// Limits on what a client may put in one awareness message.
#[derive(Debug, Clone, Copy)]
pub struct AwarenessLimits {
    /// Entries per message (y-websocket sends one: its own).
    pub max_entries: usize,
    /// Bytes of one state's JSON.
    pub max_state_bytes: usize,
}

/// Reads the entries of an awareness update without checking them, for
/// messages that already passed a server's checks (a room stream).
pub struct AwarenessEntries<'a> {
    decoder: Decoder<'a>,
    left: u64,
}

impl<'a> AwarenessEntries<'a> {
    pub fn new(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut decoder = Decoder::new(payload);
        let left = decoder.read_var_uint()?;
        Ok(AwarenessEntries { decoder, left })
    }

    /// Entries the message declares.
    pub fn declared(&self) -> u64 {
        self.left
    }
}

impl<'a> Iterator for AwarenessEntries<'a> {
    type Item = Result<(u64, u64, &'a str), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut read = || {
            Ok((
                self.decoder.read_var_uint()?,
                self.decoder.read_var_uint()?,
                self.decoder.read_var_string()?,
            ))
        };
        let entry = read();
        if entry.is_err() {
            self.left = 0;
        }
        Some(entry)
    }
}

/// Decodes a client's awareness update, enforcing `limits` and checking
/// that every state is JSON (the JS clients `JSON.parse` it).
pub fn decode_awareness_update(
    payload: &[u8],
    limits: &AwarenessLimits,
) -> Result<Vec<AwarenessEntry>, ProtocolError> {
    let mut entries = AwarenessEntries::new(payload)?;
    if entries.declared() > limits.max_entries as u64 {
        return Err(ProtocolError::TooManyAwarenessEntries(entries.declared()));
    }
    let mut out = Vec::with_capacity(entries.declared() as usize);
    for entry in entries.by_ref() {
        let (client_id, clock, state) = entry?;
        if state.len() > limits.max_state_bytes {
            return Err(ProtocolError::AwarenessStateTooLarge {
                client: client_id,
                bytes: state.len(),
            });
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(state).is_err() {
            return Err(ProtocolError::InvalidAwarenessJson(client_id));
        }
        out.push(AwarenessEntry {
            client_id,
            clock,
            state: state.to_owned(),
        });
    }
    entries.decoder.finish()?;
    Ok(out)
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

struct Presence {
    clock: u64,
    state: String,
    renewed_ms: u64,
}

/// The awareness states of one room, as y-protocols' `Awareness` keeps them:
/// per client the newest clock wins and a removal at the same clock beats a
/// state. At most `max_clients` are tracked; states expire unless renewed.
pub struct AwarenessStates {
    clients: HashMap<u64, Presence>,
    max_clients: usize,
}

impl AwarenessStates {
    pub fn new(max_clients: usize) -> Self {
        AwarenessStates {
            clients: HashMap::new(),
            max_clients,
        }
    }

    /// Applies one entry read at `now_ms`; answers whether it was taken.
    pub fn apply(&mut self, client_id: u64, clock: u64, state: &str, now_ms: u64) -> bool {
        let removal = state == "null";
        let full = self.clients.len() >= self.max_clients;
        match self.clients.get_mut(&client_id) {
            Some(current) => {
                // A removal at the same clock wins, as in y-protocols.
                if clock < current.clock || (clock == current.clock && !removal) {
                    return false;
                }
                if removal {
                    self.clients.remove(&client_id);
                } else {
                    current.clock = clock;
                    state.clone_into(&mut current.state);
                    current.renewed_ms = now_ms;
                }
                true
            }
            None if removal || full => false,
            None => {
                self.clients.insert(
                    client_id,
                    Presence {
                        clock,
                        state: state.to_owned(),
                        renewed_ms: now_ms,
                    },
                );
                true
            }
        }
    }

    /// Applies every entry of a stream message (already checked by whoever wrote it).
    pub fn apply_message(&mut self, payload: &[u8], now_ms: u64) {
        let Ok(entries) = AwarenessEntries::new(payload) else {
            return;
        };
        for (client, clock, state) in entries.map_while(Result::ok) {
            self.apply(client, clock, state, now_ms);
        }
    }

    /// Whether an entry would change the states (a newer clock, or a removal
    /// at the same clock). What would not is an echo of what the room has.
    pub fn would_take(&self, client_id: u64, clock: u64, state: &str) -> bool {
        match self.clients.get(&client_id) {
            Some(current) => clock > current.clock || (clock == current.clock && state == "null"),
            None => state != "null",
        }
    }

    /// Whether `client_id` has a state renewed within the timeout.
    pub fn is_live(&self, client_id: u64, now_ms: u64) -> bool {
        self.clients
            .get(&client_id)
            .is_some_and(|p| now_ms.saturating_sub(p.renewed_ms) < AWARENESS_TIMEOUT_MS)
    }

    pub fn is_full(&self) -> bool {
        self.clients.len() >= self.max_clients
    }

    /// Forgets states not renewed within the timeout; answers how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.clients.len();
        self.clients
            .retain(|_, p| now_ms.saturating_sub(p.renewed_ms) < AWARENESS_TIMEOUT_MS);
        before - self.clients.len()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The awareness message announcing every present client, if any.
    pub fn encode_present(&self) -> Option<Vec<u8>> {
        if self.clients.is_empty() {
            return None;
        }
        let mut ids: Vec<&u64> = self.clients.keys().collect();
        ids.sort();
        let entries: Vec<AwarenessEntry> = ids
            .into_iter()
            .map(|id| {
                let p = &self.clients[id];
                AwarenessEntry {
                    client_id: *id,
                    clock: p.clock,
                    state: p.state.clone(),
                }
            })
            .collect();
        Some(encode_awareness_message(entries.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_clock_wins_and_removal_beats_equal_clock() {
        let mut states = AwarenessStates::new(10);
        assert!(states.apply(1, 1, "{\"a\":1}", 0));
        assert!(!states.apply(1, 0, "{\"a\":0}", 0));
        assert!(states.apply(1, 2, "{\"a\":2}", 0));
        assert!(states.apply(1, 2, "null", 0));
        assert!(states.is_empty());
    }

    #[test]
    fn capped_and_expiring() {
        let mut states = AwarenessStates::new(2);
        assert!(states.apply(1, 0, "{}", 0));
        assert!(states.apply(2, 0, "{}", 0));
        assert!(!states.apply(3, 0, "{}", 0), "the room is full");
        assert!(states.apply(1, 1, "{}", 20_000), "renewals still count");
        assert_eq!(states.expire(31_000), 1);
        assert!(states.is_live(1, 31_000) && !states.is_live(2, 31_000));
        assert!(states.apply(3, 0, "{}", 31_000));
    }

    #[test]
    fn client_limits() {
        let limits = AwarenessLimits {
            max_entries: 1,
            max_state_bytes: 8,
        };
        let one = encode_awareness_message(
            [AwarenessEntry {
                client_id: 7,
                clock: 1,
                state: "{}".into(),
            }]
            .iter(),
        );
        assert!(decode_awareness_update(&one[2..], &limits).is_ok());
        let big = encode_awareness_message(
            [AwarenessEntry {
                client_id: 7,
                clock: 1,
                state: "\"123456789\"".into(),
            }]
            .iter(),
        );
        assert!(matches!(
            decode_awareness_update(&big[2..], &limits),
            Err(ProtocolError::AwarenessStateTooLarge { .. })
        ));
    }
}
