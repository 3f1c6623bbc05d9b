//! Keyspace notifications of stream appends: what lets the listener leave
//! quiet streams out of its reads instead of naming every stream it serves
//! in every read (README, "Waking the stream reader"). Redis publishes
//! `xadd` on `__keyspace@<db>__:<key>` whenever anyone appends to `key`
//! (this server, another one, or an @y/redis server), once the
//! `notify-keyspace-events` setting holds `K` (keyspace channels) and `t`
//! (stream commands). Subscribing per stream, rather than to a pattern, keeps
//! each server's share of notifications to the rooms it serves.

use redis::aio::{ConnectionLike, PubSubSink, PubSubStream};
use std::collections::HashMap;

use super::{RedisError, RedisStreams};

const SETTING: &str = "notify-keyspace-events";

/// A pub/sub connection ready for stream notifications.
pub struct StreamEvents {
    /// Subscribes and unsubscribes channels ([`StreamEvents::channel`]).
    pub sink: PubSubSink,
    /// The notifications; ends when the connection does.
    pub messages: PubSubStream,
    /// `__keyspace@<db>__:`, the start of every notification channel.
    pub channel_prefix: String,
}

impl StreamEvents {
    /// The channel on which Redis announces appends to stream `key`.
    pub fn channel(prefix: &str, key: &str) -> String {
        format!("{prefix}{key}")
    }

    /// The stream an append notification is about, or None for other
    /// messages (another event on the stream, such as a trim).
    pub fn appended<'m>(prefix: &str, message: &'m redis::Msg) -> Option<&'m str> {
        if message.get_payload_bytes() != b"xadd" {
            return None;
        }
        message.get_channel_name().strip_prefix(prefix)
    }
}

impl RedisStreams {
    /// A pub/sub connection for stream notifications, after making sure
    /// Redis sends them: flags missing from `notify-keyspace-events` are
    /// added with `CONFIG SET`, keeping the ones already there (Redis
    /// forgets this on restart, so it is checked on every connection).
    /// Redis refusing `CONFIG` (managed services, ACLs) answers
    /// [`RedisError::EventsUnavailable`].
    pub async fn stream_events(&self) -> Result<StreamEvents, RedisError> {
        let mut conn = self.conn().await?;
        let db = conn.get_db();
        let current: HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(SETTING)
            .query_async(&mut conn)
            .await
            .map_err(refused)?;
        let current = current.get(SETTING).map_or("", String::as_str);
        if let Some(wanted) = with_stream_events(current) {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(SETTING)
                .arg(&wanted)
                .query_async::<()>(&mut conn)
                .await
                .map_err(refused)?;
            tracing::info!(setting = SETTING, was = current, now = %wanted, "turned on redis keyspace notifications of stream commands");
        }
        let (sink, messages) = self.pubsub().await?.split();
        Ok(StreamEvents {
            sink,
            messages,
            channel_prefix: format!("__keyspace@{db}__:"),
        })
    }
}

/// An error reply (not a lost connection) means Redis will not let us.
fn refused(error: redis::RedisError) -> RedisError {
    if error.code().is_some() {
        RedisError::EventsUnavailable(error.to_string())
    } else {
        RedisError::Command(error)
    }
}

/// `flags` with keyspace channels (`K`) and stream commands (`t`, part of
/// the alias `A`) added, or None if it has both.
fn with_stream_events(flags: &str) -> Option<String> {
    let keyspace = flags.contains('K');
    let streams = flags.contains('t') || flags.contains('A');
    if keyspace && streams {
        return None;
    }
    let mut wanted = flags.to_string();
    if !keyspace {
        wanted.push('K');
    }
    if !streams {
        wanted.push('t');
    }
    Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_only_the_missing_flags() {
        assert_eq!(with_stream_events("").as_deref(), Some("Kt"));
        assert_eq!(with_stream_events("Ex").as_deref(), Some("ExKt"));
        assert_eq!(with_stream_events("Kg").as_deref(), Some("Kgt"));
        assert_eq!(with_stream_events("Et").as_deref(), Some("EtK"));
        assert_eq!(with_stream_events("tK"), None);
        assert_eq!(with_stream_events("AK"), None);
        assert_eq!(with_stream_events("AKE"), None);
    }
}
