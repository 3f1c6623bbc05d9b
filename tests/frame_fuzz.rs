//! A bounded, deterministic fuzz run of the door, part of the normal test
//! command (the libFuzzer targets in `fuzz/` go deeper). Seeds are real
//! y-websocket frames from npm; mutations flip, insert, delete, truncate and
//! splice bytes. Each frame goes through what a session does: parse, check
//! against the room, accept, hold or refuse. Every accepted update is
//! applied, in order, to one yrs document in this very process (the room's
//! stream as the engine will see it): yrs must accept each one and must not
//! crash. Nothing may panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use y_redis_protocol::awareness::AwarenessLimits;
use y_redis_protocol::doc_state::DocState;
use y_redis_protocol::message::{
    classify_stream_message, encode_awareness_payload, encode_sync_update, parse_client_frame,
    ClientMessage, StreamMessage,
};
use y_redis_protocol::update::{analyze, Verdict};
use yrs::updates::decoder::Decode;
use yrs::Transact;

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

const LIMITS: AwarenessLimits = AwarenessLimits {
    max_entries: 4,
    max_state_bytes: 64 << 10,
};

#[derive(Default)]
struct Outcome {
    accepted: usize,
    held: usize,
    refused: usize,
    other: usize,
}

/// One frame through the door; accepted updates go into `room` and `doc`.
fn check(frame: &[u8], room: &mut DocState, doc: &yrs::Doc, outcome: &mut Outcome) {
    match parse_client_frame(frame, &LIMITS) {
        Ok(ClientMessage::Update { update, .. }) => match analyze(update, room) {
            Ok(analysis) => match analysis.verdict(room) {
                Verdict::Accept(effects) => {
                    room.apply(&effects);
                    let message = encode_sync_update(update);
                    assert!(matches!(
                        classify_stream_message(&message),
                        StreamMessage::Update(_)
                    ));
                    let decoded = yrs::Update::decode_v1(update).unwrap_or_else(|e| {
                        panic!("accepted update {frame:02x?} does not decode in yrs: {e}")
                    });
                    doc.transact_mut()
                        .apply_update(decoded)
                        .unwrap_or_else(|e| {
                            panic!("accepted update {frame:02x?} does not apply in yrs: {e}")
                        });
                    outcome.accepted += 1;
                }
                Verdict::Hold { .. } => outcome.held += 1,
                Verdict::Redundant => outcome.other += 1,
            },
            Err(_) => outcome.refused += 1,
        },
        Ok(ClientMessage::Awareness { payload, .. }) => {
            let message = encode_awareness_payload(payload);
            assert!(matches!(
                classify_stream_message(&message),
                StreamMessage::Awareness(_)
            ));
            outcome.other += 1;
        }
        Ok(_) => outcome.other += 1,
        Err(_) => outcome.refused += 1,
    }
}

#[test]
fn mutated_frames_never_panic_and_accepted_ones_apply_in_yrs() {
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0x79_72_65_64_69_73);
    let mut room = DocState::default();
    let doc = yrs::Doc::new();
    let mut outcome = Outcome::default();
    // The unmutated seeds first: the room then holds the structs mutations refer to.
    for seed in &seeds {
        check(seed, &mut room, &doc, &mut outcome);
    }
    for _ in 0..iterations {
        let mut frame = seeds[rng.random_range(0..seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut frame);
        check(&frame, &mut room, &doc, &mut outcome);
    }
    for _ in 0..iterations / 10 {
        let frame: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        check(&frame, &mut room, &doc, &mut outcome);
    }
    println!(
        "fuzzed {iterations} mutated frames: {} accepted, {} held, {} refused, {} other",
        outcome.accepted, outcome.held, outcome.refused, outcome.other
    );
    assert!(
        outcome.accepted > 0 && outcome.refused > 0 && outcome.held > 0,
        "mutations should produce every outcome"
    );
}
