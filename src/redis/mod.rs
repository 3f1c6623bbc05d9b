//! The Redis layer: the commands the server and worker run. Key names and
//! stream ids live in the protocol crate (they are pure).

mod connect;
mod store;

pub use connect::{ConnectError, Connector, RedisSettings, SentinelSettings, TlsFiles};
pub use store::{
    client_id, read_streams_blocking, ReaderNode, RedisError, RedisStore, StreamEntry, Task,
};
pub use y_redis_protocol::names::{decode_uri_component, encode_uri_component, Keys};
pub use y_redis_protocol::StreamId;
