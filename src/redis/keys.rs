//! Key names: `PREFIX:room:enc(room):enc(docid)` and the worker queue.

/// Characters JavaScript's `encodeURIComponent` leaves alone.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

/// JavaScript's `encodeURIComponent` (UTF-8, upper-case hex).
pub fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// JavaScript's `decodeURIComponent`; None where JS would throw.
pub fn decode_uri_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The key names of one deployment (one `REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn room_stream(&self, room: &str, docid: &str) -> String {
        format!(
            "{}:room:{}:{}",
            self.prefix,
            encode_uri_component(room),
            encode_uri_component(docid)
        )
    }

    /// Recovers (room, docid) from a room stream key.
    pub fn parse_room_stream(&self, key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":room:")?;
        let (room, docid) = rest.split_once(':')?;
        if docid.contains(':') {
            return None;
        }
        Some((decode_uri_component(room)?, decode_uri_component(docid)?))
    }

    /// The lock a worker holds while compacting the room of `stream_key`.
    pub fn room_lock(&self, stream_key: &str) -> String {
        format!("{}:lock:{}", self.prefix, stream_key)
    }

    /// The pub/sub channel carrying permission recheck requests.
    pub fn recheck_channel(&self) -> String {
        format!("{}:recheck", self.prefix)
    }

    /// The worker queue stream; its consumer group has the same name.
    pub fn worker_stream(&self) -> String {
        format!("{}:worker", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_javascript() {
        // Expected values from node: encodeURIComponent(...)
        assert_eq!(encode_uri_component("a b/ü?x"), "a%20b%2F%C3%BC%3Fx");
        assert_eq!(encode_uri_component("AZaz09-_.!~*'()"), "AZaz09-_.!~*'()");
        assert_eq!(encode_uri_component("a%20b:c"), "a%2520b%3Ac");
        assert_eq!(encode_uri_component("😀"), "%F0%9F%98%80");
    }

    #[test]
    fn room_keys_round_trip() {
        let keys = Keys::new("y");
        let key = keys.room_stream("my room:1/ü", "index");
        assert_eq!(key, "y:room:my%20room%3A1%2F%C3%BC:index");
        assert_eq!(
            keys.parse_room_stream(&key),
            Some(("my room:1/ü".into(), "index".into()))
        );
        assert_eq!(keys.parse_room_stream("other:room:a:index"), None);
        assert_eq!(keys.parse_room_stream("y:room:%E0%A4%A:index"), None);
        assert_eq!(keys.worker_stream(), "y:worker");
    }
}
