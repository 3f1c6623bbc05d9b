//! The document engine and its containment. Stream updates go through the
//! same checks as a client's before yrs sees them, so the seven updates that
//! make yrs 0.28 write through a freed block are held (they wait for
//! structs that never come) and never applied. What slips through anyway
//! crashes a helper process, not this one: the update to blame is found by
//! bisection and skipped, and the rest of the document survives. That path
//! runs against a real crash: an engine that dies of SIGSEGV on a marker
//! (`support/crashing_engine.py`) in front of the real one.

use std::time::Duration;

use bytes::Bytes;
use y_redis::document::helper::{EngineCommand, EnginePool};
use y_redis::document::{Documents, LoadError};
use y_redis::streams::{StreamEntry, StreamId};
use y_redis_protocol::message::encode_sync_update;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact};

fn documents() -> std::sync::Arc<Documents> {
    let command = EngineCommand {
        program: env!("CARGO_BIN_EXE_y-redis").into(),
        args: vec!["doc-helper".into(), "--memory-mb".into(), "2048".into()],
    };
    Documents::new(EnginePool::new(command, 2, Duration::from_secs(30)))
}

/// Documents built by the engine that crashes on `CRASH-ME`.
fn crashing_documents() -> std::sync::Arc<Documents> {
    let command = EngineCommand {
        program: "python3".into(),
        args: vec![
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/crashing_engine.py"
            )
            .into(),
            env!("CARGO_BIN_EXE_y-redis").into(),
        ],
    };
    Documents::new(EnginePool::new(command, 2, Duration::from_secs(30)))
}

/// The crash counters are process-wide: tests that read them take turns.
static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn entries(messages: Vec<Vec<u8>>) -> Vec<StreamEntry> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| StreamEntry {
            id: StreamId {
                ms: i as u64 + 1,
                seq: 0,
            },
            message: Bytes::from(m),
        })
        .collect()
}

/// A text insert by its own client, as a stream entry.
fn insert(text: &str) -> Vec<u8> {
    let doc = yrs::Doc::new();
    let shared = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    shared.insert(&mut txn, 0, text);
    encode_sync_update(&txn.encode_update_v1())
}

fn text_of(update_v1: &[u8]) -> String {
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("text");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update_v1).expect("decodes"))
        .expect("applies");
    let txn = doc.transact();
    text.get_string(&txn)
}

const YRS_SEGV: [&str; 7] = [
    "00021b0101bf988b9c0f29a8bf988b9c0f0b017d0601bf988b9c40010b01",
    "00021c0101bf988b9c009601a8bf988b9c0f73017d1601bf988b9c0f017301",
    "0002150101bf988b9c0f0b2801036d6170026b31017d0000",
    "00021b0101bf988b9c0f3ec4bf988b9c0f39bf988b9c003a046162313000",
    "00021b0101bf988b9c0f49a8bf988b9c0f29017d0b01bf988b9c40012901",
    "00021b0101bf988b9c0f6fc4bf988b9c0f68bf988b9c0f69046100313700",
    "00021b0101bf988b9c0f400188bf988b9c0f9801027d007601016f7d1700",
];

#[actix_rt::test]
async fn the_updates_that_crash_yrs_never_reach_it() {
    let _turn = METRICS.lock().await;
    let documents = documents();
    let mut messages = vec![insert("before ")];
    messages.extend(YRS_SEGV.iter().map(|h| unhex(h)));
    messages.push(insert("after"));
    let crashes = y_redis::metrics::ENGINE_CRASHES.get();
    let doc = documents
        .assemble("test:room:segv:index", None, &entries(messages), &[], true)
        .await
        .expect("the room assembles");
    let text = text_of(&doc.update_v1);
    assert!(
        text.contains("before") && text.contains("after"),
        "good edits kept: {text:?}"
    );
    assert!(doc.update_v2.is_some());
    assert_eq!(
        y_redis::metrics::ENGINE_CRASHES.get(),
        crashes,
        "no helper crashed"
    );
}

#[actix_rt::test]
async fn a_crash_costs_one_update_found_by_bisection() {
    let _turn = METRICS.lock().await;
    let documents = crashing_documents();
    let mut messages: Vec<Vec<u8>> = (0..20).map(|i| insert(&format!("good{i} "))).collect();
    messages.insert(13, insert("CRASH-ME"));
    let stream = entries(messages);
    let (crashes, quarantined) = (
        y_redis::metrics::ENGINE_CRASHES.get(),
        y_redis::metrics::QUARANTINED_UPDATES.get(),
    );
    let doc = documents
        .assemble("test:room:crash:index", None, &stream, &[], false)
        .await
        .expect("the room still assembles");
    let text = text_of(&doc.update_v1);
    assert!(
        !text.contains("CRASH-ME"),
        "the culprit is skipped: {text:?}"
    );
    for i in 0..20 {
        assert!(
            text.contains(&format!("good{i} ")),
            "good{i} kept: {text:?}"
        );
    }
    assert!(y_redis::metrics::ENGINE_CRASHES.get() > crashes);
    assert!(y_redis::metrics::QUARANTINED_UPDATES.get() > quarantined);
    // The next load skips the known culprit without crashing again.
    let crashes = y_redis::metrics::ENGINE_CRASHES.get();
    let again = documents
        .assemble("test:room:crash:index", None, &stream, &[], false)
        .await
        .expect("assembles again");
    assert_eq!(again.state_vector, doc.state_vector);
    assert_eq!(y_redis::metrics::ENGINE_CRASHES.get(), crashes);
}

#[actix_rt::test]
async fn a_stream_that_makes_yrs_panic_is_contained_too() {
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stream_poison.bin"
    ))
    .expect("fixture");
    let mut messages: Vec<Vec<u8>> = data.split(|&b| b == 0xfe).map(<[u8]>::to_vec).collect();
    messages.push(insert("survivor"));
    let doc = documents()
        .assemble(
            "test:room:poison:index",
            None,
            &entries(messages),
            &[],
            false,
        )
        .await
        .expect("assembles");
    assert!(text_of(&doc.update_v1).contains("survivor"));
}

#[actix_rt::test]
async fn a_corrupt_stored_document_is_a_permanent_error() {
    let stored = y_redis::storage::StoredDoc {
        pieces: vec![vec![0xff, 0xff, 0x01]],
        references: vec!["1".into()],
    };
    let result = documents()
        .assemble("test:room:corrupt:index", Some(&stored), &[], &[], false)
        .await;
    match result {
        Err(e @ LoadError::CorruptStored(_)) => assert!(e.is_permanent()),
        other => panic!("expected a corrupt-document error, got {other:?}"),
    }
}
