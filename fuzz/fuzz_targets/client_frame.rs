//! Any bytes a client sends: parsing never panics, and whatever is accepted
//! for the stream decodes again as a stream message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use y_redis::protocol::{classify_stream_message, parse_client_frame, ClientMessage, StreamMessage};

fuzz_target!(|frame: &[u8]| {
    match parse_client_frame(frame) {
        Ok(ClientMessage::Update { message }) => {
            assert!(matches!(classify_stream_message(&message), StreamMessage::Update(_)))
        }
        Ok(ClientMessage::Awareness { message, .. }) => {
            assert!(matches!(classify_stream_message(&message), StreamMessage::Awareness(_)))
        }
        _ => {}
    }
});
