//! The Redis layer (named for what it carries, apart from the `redis` crate
//! it uses): the commands the server and worker run. Key names and
//! stream ids live in the protocol crate (they are pure).

mod commands;
mod connect;
mod events;

pub use commands::{
    client_id, read_streams_blocking, stream_read_command, ReaderNode, RedisError, RedisStreams,
    StreamEntry, Task,
};
pub use connect::{ConnectError, Connector, RedisSettings, SentinelSettings, TlsFiles};
pub use events::StreamEvents;
pub use y_redis_protocol::names::{decode_uri_component, encode_uri_component, Keys};
pub use y_redis_protocol::StreamId;
