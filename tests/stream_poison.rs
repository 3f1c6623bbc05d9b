//! A stream whose entries make yrs panic while integrating (found by cargo
//! fuzz, `fuzz/fuzz_targets/stream_document.rs`) must not take the room down.

use bytes::Bytes;
use y_redis::document::assemble;
use y_redis::redis::{StreamEntry, StreamId};

#[test]
fn entries_that_crash_yrs_are_skipped() {
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stream_poison.bin"
    ))
    .expect("fixture");
    let entries: Vec<StreamEntry> = data
        .split(|&b| b == 0xfe)
        .enumerate()
        .map(|(i, chunk)| StreamEntry {
            id: StreamId {
                ms: i as u64 + 1,
                seq: 0,
            },
            message: Bytes::copy_from_slice(chunk),
        })
        .collect();
    let doc = assemble(None, &entries);
    assert!(doc.is_ok(), "assembling failed: {:?}", doc.err());
}

#[test]
fn updates_that_crash_yrs_never_reach_a_stream() {
    use y_redis::protocol::{
        classify_stream_message, encode_sync_update, parse_client_frame, StreamMessage,
    };
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stream_poison.bin"
    ))
    .expect("fixture");
    let first = data.split(|&b| b == 0xfe).next().expect("an entry");
    let StreamMessage::Update(update) = classify_stream_message(first) else {
        panic!("the fixture's first entry is an update message");
    };
    // The same update, sent as a well-formed frame by a client.
    let frame = encode_sync_update(update);
    assert!(
        parse_client_frame(&frame).is_err(),
        "a client update that crashes yrs on integration must be refused"
    );
}
