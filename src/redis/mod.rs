//! The Redis layer: key names (byte-compatible with @y/redis, DESIGN §4),
//! stream ids, and the commands the server and worker run.

mod keys;
mod store;
mod stream_id;

pub use keys::{decode_uri_component, encode_uri_component, Keys};
pub use store::{client_id, read_streams_blocking, RedisError, RedisStore, StreamEntry, Task};
pub use stream_id::StreamId;
