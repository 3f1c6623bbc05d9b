//! Any bytes a client sends: parsing and checking never panic, and whatever
//! is accepted for the stream decodes again as a stream message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use y_redis_protocol::awareness::AwarenessLimits;
use y_redis_protocol::doc_state::DocState;
use y_redis_protocol::message::{
    classify_stream_message, encode_awareness_payload, encode_sync_update, parse_client_frame,
    ClientMessage, StreamMessage,
};
use y_redis_protocol::update::analyze;

const LIMITS: AwarenessLimits = AwarenessLimits {
    max_entries: 4,
    max_state_bytes: 64 << 10,
};

fuzz_target!(|frame: &[u8]| {
    match parse_client_frame(frame, &LIMITS) {
        Ok(ClientMessage::Update { update, .. }) => {
            let doc = DocState::default();
            if let Ok(analysis) = analyze(update, &doc) {
                let _ = analysis.verdict(&doc);
            }
            assert!(matches!(
                classify_stream_message(&encode_sync_update(update)),
                StreamMessage::Update(_)
            ));
        }
        Ok(ClientMessage::Awareness { payload, .. }) => assert!(matches!(
            classify_stream_message(&encode_awareness_payload(payload)),
            StreamMessage::Awareness(_)
        )),
        _ => {}
    }
});
