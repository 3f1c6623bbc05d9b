//! A bounded, deterministic fuzz run of frame decoding and validation, part of
//! the normal test command (the libFuzzer targets in `fuzz/` go deeper). Seeds
//! are real y-websocket frames from npm; mutations flip, insert, delete,
//! truncate and splice bytes. Nothing may panic, and every accepted frame
//! must become a stream entry that readers can decode.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use y_redis::document::assemble;
use y_redis::protocol::{
    classify_stream_message, parse_client_frame, ClientMessage, StreamMessage,
};
use y_redis::redis::{StreamEntry, StreamId};

fn seeds() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/protocol_vectors.json"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixtures")).expect("json");
    json["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .filter_map(|v| v["hex"].as_str())
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>], frame: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..7) {
            0 if !frame.is_empty() => {
                let i = rng.random_range(0..frame.len());
                frame[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=frame.len());
                frame.insert(i, rng.random());
            }
            2 if !frame.is_empty() => {
                let i = rng.random_range(0..frame.len());
                frame.remove(i);
            }
            3 => {
                let len = rng.random_range(0..=frame.len());
                frame.truncate(len);
            }
            4 if !frame.is_empty() => {
                // Interesting integers where lengths and counts live.
                let i = rng.random_range(0..frame.len());
                frame[i] = *[0x00, 0x01, 0x7f, 0x80, 0xff]
                    .get(rng.random_range(0..5))
                    .unwrap_or(&0);
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..=other.len());
                let at = rng.random_range(0..=frame.len());
                frame.splice(at..at, other[from..].iter().copied());
            }
            _ => frame.extend((0..rng.random_range(0..16)).map(|_| rng.random::<u8>())),
        }
    }
}

fn check(frame: &[u8]) -> Option<&'static str> {
    match parse_client_frame(frame) {
        Ok(ClientMessage::Update { message }) => {
            assert!(
                matches!(classify_stream_message(&message), StreamMessage::Update(_)),
                "accepted update {frame:02x?} is not a stream update"
            );
            let entry = StreamEntry {
                id: StreamId { ms: 1, seq: 0 },
                message: Bytes::from(message),
            };
            assert!(
                assemble(None, &[entry]).is_ok(),
                "accepted update {frame:02x?} does not assemble"
            );
            Some("update")
        }
        Ok(ClientMessage::Awareness { message, .. }) => {
            assert!(
                matches!(
                    classify_stream_message(&message),
                    StreamMessage::Awareness(_)
                ),
                "accepted awareness {frame:02x?} does not decode from the stream"
            );
            Some("awareness")
        }
        Ok(_) => Some("other"),
        Err(_) => None,
    }
}

#[test]
fn mutated_frames_never_panic_and_accepted_ones_are_stream_safe() {
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0x79_72_65_64_69_73);
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for _ in 0..iterations {
        let mut frame = seeds[rng.random_range(0..seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut frame);
        match check(&frame) {
            Some(_) => accepted += 1,
            None => rejected += 1,
        }
    }
    for _ in 0..iterations / 10 {
        let frame: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let _ = check(&frame);
    }
    println!("fuzzed {iterations} mutated frames: {accepted} accepted, {rejected} rejected");
    assert!(
        accepted > 0 && rejected > 0,
        "mutations should produce both outcomes"
    );
}
