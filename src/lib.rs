//! y-redis: a horizontally scalable y-websocket backend on Redis streams,
//! a drop-in replacement for @y/redis (see DESIGN.md).
//!
//! - [`protocol`]: the y-websocket wire protocol, pure.
//! - [`redis`]: key layout and Redis commands.
//! - [`document`]: assembling a document from storage and its stream.
//! - [`storage`]: persistence backends behind one trait.
//! - [`actors`]: sessions, rooms, the hub and the Redis listener.
//! - [`server`]: the HTTP/websocket shell; [`worker`]: the persistence worker;
//!   [`config`]: settings.

pub mod actors;
pub mod auth;
pub mod config;
pub mod document;
pub mod example_auth;
pub mod health;
pub mod metrics;
pub mod protocol;
pub mod redis;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod url;
pub mod worker;
