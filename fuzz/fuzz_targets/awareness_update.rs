//! Awareness payloads: decoding never panics; what decodes re-encodes to a
//! message that decodes to the same entries; a room's states take any of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use y_redis_protocol::awareness::{
    decode_awareness_update, encode_awareness_message, AwarenessLimits, AwarenessStates,
};
use y_redis_protocol::message::{classify_stream_message, StreamMessage};

const LIMITS: AwarenessLimits = AwarenessLimits {
    max_entries: 4,
    max_state_bytes: 64 << 10,
};

fuzz_target!(|payload: &[u8]| {
    let mut states = AwarenessStates::new(8);
    states.apply_message(payload, 1);
    let _ = states.encode_present();
    if let Ok(entries) = decode_awareness_update(payload, &LIMITS) {
        let message = encode_awareness_message(entries.iter());
        let StreamMessage::Awareness(again) = classify_stream_message(&message) else {
            panic!("re-encoded awareness does not classify");
        };
        assert_eq!(decode_awareness_update(again, &LIMITS), Ok(entries));
    }
});
