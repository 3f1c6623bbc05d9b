//! y-redis: a horizontally scalable y-websocket backend on Redis streams,
//! a drop-in replacement for @y/redis (ARCHITECTURE.md).
//!
//! - [`y_redis_protocol`] (its own crate): the wire protocol, update checks,
//!   awareness rules, key names; pure.
//! - [`streams`]: Redis: the room streams, the worker queue and locks, and
//!   the connections to every kind of deployment.
//! - [`document`]: assembling documents, with yrs contained in helper processes.
//! - [`storage`]: persistence backends behind one trait.
//! - [`actors`]: sessions, rooms and the Redis listener.
//! - [`server`]: the HTTP/websocket shell; [`worker`]: the persistence worker;
//!   [`config`]: settings; [`limits`]: what one client may cost.
//! - [`service`]: running the server and/or worker from a program of your
//!   own, on a [`storage::Storage`] of your own (README, "Your own storage").

pub mod actors;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod document;
pub mod example_auth;
pub mod health;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod own_messages;
pub mod secret;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod socket;
pub mod storage;
pub mod streams;
pub mod worker;
