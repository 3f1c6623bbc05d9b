//! Redis stream ids (`<ms>-<seq>`), ordered as Redis orders them.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// The id before every entry: reading "after 0" reads the whole stream.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(StreamId { ms, seq }),
            _ => Err(format!("not a stream id: {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let a: StreamId = "1700000000000-5".parse().expect("valid id");
        let b: StreamId = "1700000000000-12".parse().expect("valid id");
        let c: StreamId = "1700000000001".parse().expect("valid id");
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!("x-1".parse::<StreamId>().is_err());
    }
}
