//! Every message the server's actors exchange, and the close codes sessions
//! end with (ARCHITECTURE.md, "Actors"). Kept apart from the actors so that
//! none of them depends on another's module: they hold each other as
//! typed recipients.

use std::sync::Arc;

use actix::prelude::*;

use crate::streams::{StreamEntry, StreamId};

/// A connection's id within this process (log lines carry it).
pub type ConnId = u64;

/// The server is restarting: clients reconnect (to another replica).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// Try again later (Redis or storage unavailable, resync after an outage,
/// a client that stopped reading): clients reconnect.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// A frame that breaks the protocol; y-websocket does not reconnect (44xx).
pub const CLOSE_BAD_MESSAGE: u16 = 4400;
pub const CLOSE_TOKEN_EXPIRED: u16 = 4401;
pub const CLOSE_PERMISSION_REVOKED: u16 = 4403;
pub const CLOSE_TOO_LARGE: u16 = 4413;
/// The room can never be served (a name storage cannot hold, a
/// quarantined document): one close, no reconnect loop.
pub const CLOSE_ROOM_UNAVAILABLE: u16 = 4422;
/// Sustained flooding past the message or byte rate.
pub const CLOSE_TOO_MANY_MESSAGES: u16 = 4429;

/// Entries read from one room stream, oldest first.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct StreamBatch {
    pub entries: Arc<[StreamEntry]>,
    /// Shared by every batch of one read; the listener learns that all
    /// rooms handled the read when the last copy is dropped.
    pub handled: Arc<HandledSignal>,
}

/// Dropped when every room handled a read's batches, which resolves the
/// listener's receiver (`tokio::sync::oneshot` resolves on a dropped sender).
pub struct HandledSignal {
    _sender: tokio::sync::oneshot::Sender<()>,
}

impl HandledSignal {
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (HandledSignal { _sender: sender }, receiver)
    }
}

/// A room subscription registers with the listener when it starts (`after`
/// None), then asks for the entries of `key` after its first load.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub key: String,
    pub after: Option<StreamId>,
    /// Unique per room subscription (one open per room and thread, and
    /// retired ones until their sessions have left).
    pub room_id: u64,
    pub room: Recipient<RoomEvent>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub key: String,
    pub room_id: u64,
}

/// What the listener hands a room subscription.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum RoomEvent {
    Batch(StreamBatch),
    /// Close every session (server shutdown, resync after a Redis outage);
    /// the room retires (`rooms`: later sessions get a fresh one).
    CloseAll {
        code: u16,
        reason: &'static str,
    },
    /// Ask the permission callback again for sessions of `user` (or all).
    Recheck {
        user: Option<String>,
    },
}

/// Sent to the listener, which knows every room subscription of the process.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Broadcast {
    CloseAll { code: u16, reason: &'static str },
    Recheck { key: String, user: Option<String> },
}

/// What a room tells one of its sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// The room wrote the initial sync (the document, or what the client
    /// lacks, and who is present) to the session's socket.
    Synced,
    /// The room wrote a delivery to the session's socket, and the session
    /// has to act (see [`crate::socket::Outlet::deliver`]).
    Delivered,
    Close {
        code: u16,
        reason: String,
    },
    Recheck {
        user: Option<String>,
    },
}

/// What a session tells its room.
#[derive(Message)]
#[rtype(result = "()")]
pub enum FromSession {
    Join {
        conn: ConnId,
        session: Recipient<ToSession>,
    },
    /// The client's SyncStep1: an initial sync not sent yet can be a diff.
    StateVector {
        conn: ConnId,
        state_vector: Vec<u8>,
    },
    Leave {
        conn: ConnId,
    },
}
