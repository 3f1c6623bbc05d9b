//! The server's actors (ARCHITECTURE.md, "Actors"). A frame enters in
//! [`session`], goes to Redis from its [`outbox`] through
//! [`crate::streams::RedisStreams::add_messages`],
//! and comes back through [`listener`] → [`room`] → [`session`]. [`rooms`]
//! is each thread's registry of rooms; [`messages`] holds every message
//! they exchange, so no actor module depends on another's.

pub mod checks;
pub mod listener;
pub mod messages;
pub mod outbox;
pub mod revocation;
pub mod room;
pub mod rooms;
pub mod session;
