//! Awareness payloads: decoding never panics; what decodes re-encodes to a
//! message that decodes to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use y_redis::protocol::{classify_stream_message, decode_awareness_update, encode_awareness_message, StreamMessage};

fuzz_target!(|payload: &[u8]| {
    if let Ok(entries) = decode_awareness_update(payload) {
        let message = encode_awareness_message(entries.iter());
        assert_eq!(classify_stream_message(&message), StreamMessage::Awareness(entries));
    }
});
