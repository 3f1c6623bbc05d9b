//! Names: the Redis key layout (byte-compatible with @y/redis:
//! `PREFIX:room:enc(room):enc(docid)`), percent-encoding, and the rules a
//! room name or user id must follow before it becomes part of a key, a file
//! name or a callback URL (ARCHITECTURE.md, "Names").

use thiserror::Error;

/// Characters JavaScript's `encodeURIComponent` leaves alone.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// Characters a URL path segment may hold unescaped (RFC 3986 pchar), plus
/// `%`, because rooms are kept in their URL form (the raw path segment).
fn is_path_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

/// Percent-encodes every byte of `s` that `keep` refuses (upper-case hex).
fn percent_encode(out: &mut String, s: &str, keep: fn(u8) -> bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// JavaScript's `encodeURIComponent` (UTF-8, upper-case hex).
pub fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    percent_encode(&mut out, s, is_unreserved);
    out
}

/// Appends `segment` to `url` as one path segment. `segment` is in URL form
/// already (a room), so `%` stays; escape it first for plain text.
pub fn push_path_segment(url: &mut String, segment: &str) {
    if !url.ends_with('/') {
        url.push('/');
    }
    percent_encode(url, segment, is_path_safe);
}

/// JavaScript's `decodeURIComponent`; None where JS would throw.
pub fn decode_uri_component(s: &str) -> Option<String> {
    String::from_utf8(percent_decode(s.as_bytes())?).ok()
}

fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Why a room name or user id cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name of {bytes} bytes is longer than {max}")]
    TooLong { bytes: usize, max: usize },
    #[error("name contains a '.' or '..' path segment")]
    DotSegment,
}

/// A room is the raw path segment (`a%20b`), as @y/redis has it. It must
/// fit in `max_bytes`, and no spelling of it may turn into a `.` or `..`
/// path segment: proxies decode `%2e` and `%2f` and then normalise the path
/// of a permission or update callback URL.
pub fn check_room_name(raw: &str, max_bytes: usize) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > max_bytes {
        return Err(NameError::TooLong {
            bytes: raw.len(),
            max: max_bytes,
        });
    }
    // Decoded twice: a proxy may decode once, an application server again.
    let once = percent_decode_lossy(raw.as_bytes());
    let twice = percent_decode_lossy(&once);
    for spelling in [raw.as_bytes(), &once, &twice] {
        if has_dot_segment(spelling) {
            return Err(NameError::DotSegment);
        }
    }
    Ok(())
}

/// A user id is plain text that becomes a callback path segment.
pub fn check_user_id(user: &str) -> Result<(), NameError> {
    if user.is_empty() {
        return Err(NameError::Empty);
    }
    if has_dot_segment(user.as_bytes()) {
        return Err(NameError::DotSegment);
    }
    Ok(())
}

/// Percent-decoding that keeps malformed escapes as they are.
fn percent_decode_lossy(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn has_dot_segment(bytes: &[u8]) -> bool {
    bytes
        .split(|&b| b == b'/' || b == b'\\')
        .any(|segment| segment == b"." || segment == b"..")
}

/// Buckets of the Redis Cluster layout: every room belongs to one, and a
/// bucket's rooms and its worker queue share one hash tag, so one slot
/// (ARCHITECTURE.md, "Redis Cluster layout"). Fixed: changing it moves rooms.
pub const CLUSTER_BUCKETS: u16 = 32;

/// The key names of one deployment (one `REDIS_PREFIX`): the @y/redis
/// layout, or the Redis Cluster layout with its buckets.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    /// The standalone layout, byte-compatible with @y/redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: false,
        }
    }

    /// The Redis Cluster layout: `PREFIX:{bN}:room:…` and `PREFIX:{bN}:worker`.
    pub fn clustered(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: true,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster
    }

    pub fn room_stream(&self, room: &str, docid: &str) -> String {
        let (room, docid) = (encode_uri_component(room), encode_uri_component(docid));
        if self.cluster {
            let bucket = room_bucket(&room, &docid);
            format!("{}:{{b{bucket}}}:room:{room}:{docid}", self.prefix)
        } else {
            format!("{}:room:{room}:{docid}", self.prefix)
        }
    }

    /// The bucket of a room stream key in the cluster layout (its hash tag);
    /// None in the standalone layout or for other keys.
    pub fn bucket_of(&self, key: &str) -> Option<u16> {
        if !self.cluster {
            return None;
        }
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{b")?;
        let (bucket, _) = rest.split_once('}')?;
        bucket.parse().ok().filter(|b| *b < CLUSTER_BUCKETS)
    }

    /// Recovers (room, docid) from a room stream key.
    pub fn parse_room_stream(&self, key: &str) -> Option<(String, String)> {
        let mut rest = key.strip_prefix(&self.prefix)?;
        if self.cluster {
            let bucket = self.bucket_of(key)?;
            rest = rest.strip_prefix(&format!(":{{b{bucket}}}"))?;
        }
        let rest = rest.strip_prefix(":room:")?;
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

    /// The worker queue of the room of `stream_key` (its consumer group
    /// has the same name): the one queue, or in the cluster layout its
    /// bucket's queue, in the stream's slot.
    pub fn worker_stream_of(&self, stream_key: &str) -> String {
        match self.bucket_of(stream_key) {
            Some(bucket) => self.bucket_worker_stream(bucket),
            None => format!("{}:worker", self.prefix),
        }
    }

    /// Every worker queue: one, or one per bucket.
    pub fn worker_streams(&self) -> Vec<String> {
        if self.cluster {
            (0..CLUSTER_BUCKETS)
                .map(|b| self.bucket_worker_stream(b))
                .collect()
        } else {
            vec![format!("{}:worker", self.prefix)]
        }
    }

    /// The worker queue of a bucket (cluster layout).
    pub fn bucket_worker_stream(&self, bucket: u16) -> String {
        format!("{}:{{b{bucket}}}:worker", self.prefix)
    }
}

/// The bucket of a room in the cluster layout: FNV-1a (32 bit) of
/// `enc(room):enc(docid)`, modulo [`CLUSTER_BUCKETS`].
fn room_bucket(room: &str, docid: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in room.bytes().chain([b':']).chain(docid.bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(CLUSTER_BUCKETS)) as u16
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
        assert_eq!(keys.worker_stream_of(&key), "y:worker");
        assert_eq!(keys.worker_streams(), vec!["y:worker".to_owned()]);
        assert_eq!(keys.bucket_of(&key), None);
    }

    #[test]
    fn cluster_keys_share_a_hash_tag_per_bucket() {
        let keys = Keys::clustered("y");
        let key = keys.room_stream("my room:1/ü", "index");
        // FNV-1a of "my%20room%3A1%2F%C3%BC:index" is 0xd35f6215; mod 32 = 21
        assert_eq!(key, "y:{b21}:room:my%20room%3A1%2F%C3%BC:index");
        assert_eq!(keys.bucket_of(&key), Some(21));
        assert_eq!(keys.worker_stream_of(&key), "y:{b21}:worker");
        assert_eq!(
            keys.room_lock(&key),
            "y:lock:y:{b21}:room:my%20room%3A1%2F%C3%BC:index"
        );
        assert_eq!(
            keys.parse_room_stream(&key),
            Some(("my room:1/ü".into(), "index".into()))
        );
        // room names cannot open a hash tag: encodeURIComponent escapes braces
        assert_eq!(
            keys.room_stream("{x}", "index"),
            format!(
                "y:{{b{}}}:room:%7Bx%7D:index",
                room_bucket("%7Bx%7D", "index")
            )
        );
        assert_eq!(keys.parse_room_stream("y:room:a:index"), None);
        assert_eq!(keys.bucket_of("y:{b32}:room:a:index"), None);
        let queues = keys.worker_streams();
        assert_eq!(queues.len(), CLUSTER_BUCKETS as usize);
        assert_eq!(queues[3], "y:{b3}:worker");
        // rooms spread over the buckets
        let mut seen = std::collections::HashSet::new();
        for i in 0..400 {
            seen.insert(keys.bucket_of(&keys.room_stream(&format!("room-{i}"), "index")));
        }
        assert_eq!(seen.len(), CLUSTER_BUCKETS as usize);
    }

    #[test]
    fn path_segments_keep_url_form() {
        let mut url = "http://h/ydoc".to_owned();
        push_path_segment(&mut url, "a%20b");
        assert_eq!(url, "http://h/ydoc/a%20b");
        let mut url = "http://h/ydoc/".to_owned();
        push_path_segment(&mut url, "a b/ü");
        assert_eq!(url, "http://h/ydoc/a%20b%2F%C3%BC");
    }

    #[test]
    fn room_names_that_could_become_dot_segments_are_refused() {
        for bad in [
            ".",
            "..",
            "%2e%2e",
            "%2E.",
            "a%2F..",
            "a%2f%2e%2e%2fb",
            "%252e%252e",
            "..%5Cx",
        ] {
            assert_eq!(
                check_room_name(bad, 512),
                Err(NameError::DotSegment),
                "{bad}"
            );
        }
        for good in ["...", "a.b", "%2e%2e%2e", "org%2Fdoc", "a%20b", "x%"] {
            assert_eq!(check_room_name(good, 512), Ok(()), "{good}");
        }
        assert!(matches!(
            check_room_name(&"a".repeat(513), 512),
            Err(NameError::TooLong { bytes: 513, .. })
        ));
        assert_eq!(check_user_id(".."), Err(NameError::DotSegment));
        assert_eq!(check_user_id("a/../b"), Err(NameError::DotSegment));
        assert_eq!(check_user_id("alice.smith"), Ok(()));
    }
}
