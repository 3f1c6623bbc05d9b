//! The pure core of y-redis: everything about the bytes, nothing about I/O.
//! The server, the worker and the fuzz targets build on it.
//!
//! - [`message`]: the y-websocket wire protocol.
//! - [`update`]: a Yjs update reader that decides what yjs would do with an
//!   update, against what a room holds ([`doc_state`]).
//! - [`awareness`]: presence messages and a room's presence rules.
//! - [`names`]: Redis key names, percent-encoding, room name rules.
//! - [`stream_id`]: Redis stream ids.
//! - [`lib0`]: lib0's binary encoding.
//! - [`websocket`]: WebSocket framing for a server.

pub mod awareness;
pub mod doc_state;
pub mod lib0;
pub mod message;
pub mod names;
pub mod stream_id;
pub mod update;
pub mod websocket;

pub use stream_id::StreamId;
