//! The server's actors (DESIGN §2). A frame enters in [`session`], goes to
//! Redis through [`crate::redis::RedisStore::add_message`], and comes back
//! through [`listener`] → [`room`] → [`session`]. [`hub`] maps rooms to actors.

pub mod hub;
pub mod listener;
pub mod revocation;
pub mod room;
pub mod session;
