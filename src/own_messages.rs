//! A client's own messages on their way through Redis and back. Every
//! message in a room stream goes to every client of the room, including
//! the one that sent it, which has it already: y-websocket applies its own
//! update or awareness state again as a no-op. Leaving them out saves the
//! server a write and the client a read; in rooms of one or two clients
//! that is half of all deliveries. `ECHO_OWN_MESSAGES=true` sends them as
//! @y/redis does.
//!
//! A delivered entry is recognised as the client's own by its bytes, not
//! by its id: the listener may read an entry before the session hears from
//! its `XADD` which id Redis gave it (that id then only bounds the search,
//! and lets a later delivery forget a message it passed by). Bytes equal
//! to a message the client sent are safe to leave out whoever sent them:
//! the client has that content already.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::streams::{StreamEntry, StreamId};

/// How long a client may go without a data frame before its own messages
/// are sent back to it after all. y-websocket reconnects after 30 s
/// without a message, and a client alone in a room hears nothing but the
/// echo of its own awareness renewal (every 15 s).
pub const ECHO_KEEPALIVE: Duration = Duration::from_secs(10);

/// Messages, and their bytes, kept at most: about two seconds of a client
/// publishing at the default rate limits while its deliveries lag (or
/// stall: it is not synced yet); one forgotten is only an echo sent.
const MAX_PENDING: usize = 1024;
const MAX_PENDING_BYTES: usize = 16 << 20;

/// A client's messages sent to Redis and not yet seen in a delivery,
/// oldest first (a session's messages are stored in the order it sends
/// them, one call at a time).
#[derive(Default)]
pub struct OwnMessages {
    pending: VecDeque<Pending>,
    /// The pending messages' bytes.
    bytes: usize,
    next_seq: u64,
}

struct Pending {
    seq: u64,
    message: Bytes,
    /// Its id is at most this; known once Redis answered the `XADD`.
    stored_through: Option<StreamId>,
}

impl OwnMessages {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Notes messages about to be sent to Redis; answers the first one's
    /// number, for [`Self::stored`].
    pub fn sending(&mut self, messages: &[Bytes]) -> u64 {
        let first = self.next_seq;
        for message in messages {
            self.pending.push_back(Pending {
                seq: self.next_seq,
                message: message.clone(),
                stored_through: None,
            });
            self.next_seq += 1;
            self.bytes += message.len();
        }
        while self.pending.len() > MAX_PENDING || self.bytes > MAX_PENDING_BYTES {
            self.forget_oldest(1);
        }
        first
    }

    fn forget_oldest(&mut self, count: usize) {
        for gone in self.pending.drain(..count) {
            self.bytes -= gone.message.len();
        }
    }

    /// Redis stored the `count` messages numbered from `first` on, the
    /// last of them under `last`.
    pub fn stored(&mut self, first: u64, count: usize, last: StreamId) {
        let numbers = first..first.saturating_add(count as u64);
        for pending in &mut self.pending {
            if numbers.contains(&pending.seq) {
                pending.stored_through = Some(last);
            }
        }
    }

    /// Whether `entry` is one of the client's own messages. Forgets it, and
    /// any sent before it: stored earlier, they will not come any more.
    pub fn take(&mut self, entry: &StreamEntry) -> bool {
        let found = self.pending.iter().position(|p| {
            p.stored_through.is_none_or(|last| entry.id <= last) && p.message == entry.message
        });
        match found {
            Some(at) => {
                self.forget_oldest(at + 1);
                true
            }
            None => false,
        }
    }

    /// Forgets messages stored at or before `id`: a delivery passed them
    /// by (the session joined later than it sent them, say).
    pub fn forget_through(&mut self, id: StreamId) {
        self.pending
            .retain(|p| p.stored_through.is_none_or(|last| last > id));
        self.bytes = self.pending.iter().map(|p| p.message.len()).sum();
        if self.pending.is_empty() {
            // An idle connection keeps no buffer.
            self.pending = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn entry(ms: u64, message: &'static [u8]) -> StreamEntry {
        StreamEntry {
            id: id(ms),
            message: Bytes::from_static(message),
        }
    }

    #[test]
    fn an_own_message_is_recognised_before_and_after_its_id_is_known() {
        let mut own = OwnMessages::default();
        let first = own.sending(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(!own.take(&entry(1, b"other")));
        // Read back before the XADD answered.
        assert!(own.take(&entry(2, b"a")));
        assert!(!own.take(&entry(2, b"a")), "recognised once");
        own.stored(first, 2, id(3));
        // Once the id is known, equal bytes stored later are not it.
        assert!(!own.take(&entry(4, b"b")));
        assert!(own.take(&entry(3, b"b")));
        assert!(own.is_empty());
    }

    #[test]
    fn a_match_forgets_the_messages_sent_before_it() {
        let mut own = OwnMessages::default();
        own.sending(&[Bytes::from_static(b"lost"), Bytes::from_static(b"next")]);
        assert!(own.take(&entry(5, b"next")));
        assert!(own.is_empty());
    }

    #[test]
    fn a_delivery_past_a_stored_message_forgets_it() {
        let mut own = OwnMessages::default();
        let first = own.sending(&[Bytes::from_static(b"a")]);
        own.sending(&[Bytes::from_static(b"b")]);
        own.stored(first, 1, id(5));
        own.forget_through(id(6));
        // "b" has no id yet: it stays.
        assert!(!own.is_empty());
        assert!(own.take(&entry(7, b"b")));
        assert!(own.is_empty());
    }

    #[test]
    fn pending_messages_are_bounded() {
        let mut own = OwnMessages::default();
        let many: Vec<Bytes> = (0..MAX_PENDING + 10)
            .map(|n| Bytes::from(n.to_string()))
            .collect();
        own.sending(&many);
        assert_eq!(own.pending.len(), MAX_PENDING);
        assert!(!own.take(&entry(1, b"9")), "the oldest went first");
        assert!(own.take(&entry(1, b"10")));

        let mut own = OwnMessages::default();
        let big = Bytes::from(vec![7; MAX_PENDING_BYTES / 2]);
        own.sending(&[big.clone(), big.clone(), Bytes::from_static(b"small")]);
        assert_eq!(own.pending.len(), 2, "the first big one went");
        assert_eq!(own.bytes, big.len() + 5);
        assert!(own.take(&entry(1, b"small")));
        assert_eq!(own.bytes, 0);
    }
}
