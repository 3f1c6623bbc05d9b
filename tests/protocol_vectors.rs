//! The protocol and document code checked byte for byte against vectors the
//! npm `yjs`, `y-protocols` and `lib0` packages produced
//! (`tests/e2e/gen-fixtures.mjs` → `tests/fixtures/protocol_vectors.json`).

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;
use y_redis::document::assemble;
use y_redis::protocol::{
    encode_awareness_message, encode_awareness_removal, encode_sync_step1, encode_sync_step2,
    encode_sync_update, parse_client_frame, AwarenessEntry, ClientMessage, ProtocolError,
};
use y_redis::redis::{StreamEntry, StreamId};
use y_redis::storage::StoredDoc;
use yrs::types::ToJson;
use yrs::{GetString, Transact};

struct Vectors(HashMap<String, Value>);

impl Vectors {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/protocol_vectors.json"
        );
        let text = std::fs::read_to_string(path).expect("fixture file is readable");
        let json: Value = serde_json::from_str(&text).expect("fixture file is JSON");
        let vectors = json["vectors"].as_array().expect("vectors array");
        Vectors(
            vectors
                .iter()
                .map(|v| (v["name"].as_str().expect("name").to_owned(), v.clone()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> &Value {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("vector {name} missing"))
    }

    fn bytes(&self, name: &str, field: &str) -> Vec<u8> {
        hex(self.get(name)[field]
            .as_str()
            .unwrap_or_else(|| panic!("{name}.{field} missing")))
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn entry(ms: u64, message: Vec<u8>) -> StreamEntry {
    StreamEntry {
        id: StreamId { ms, seq: 0 },
        message: Bytes::from(message),
    }
}

fn text_of(update_v1: &[u8]) -> String {
    use yrs::updates::decoder::Decode;
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("text");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update_v1).expect("valid update"))
        .expect("applies");
    let txn = doc.transact();
    text.get_string(&txn)
}

#[test]
fn sync_step1_is_parsed_and_encoded_like_y_protocols() {
    let v = Vectors::load();
    let frame = v.bytes("sync_step1", "hex");
    let sv = v.bytes("sync_step1", "state_vector_hex");
    assert_eq!(
        parse_client_frame(&frame),
        Ok(ClientMessage::SyncStep1 {
            state_vector: sv.clone()
        })
    );
    assert_eq!(encode_sync_step1(&sv), frame);
    let empty = v.bytes("sync_step1_empty", "hex");
    assert!(matches!(
        parse_client_frame(&empty),
        Ok(ClientMessage::SyncStep1 { .. })
    ));
}

#[test]
fn sync_step2_becomes_an_update_in_the_stream() {
    let v = Vectors::load();
    let frame = v.bytes("sync_step2", "hex");
    let update = v.bytes("sync_step2", "update_hex");
    assert_eq!(encode_sync_step2(&update), frame);
    let rewritten = v.bytes("sync_step2_rewritten_as_update", "hex");
    assert_eq!(
        parse_client_frame(&frame),
        Ok(ClientMessage::Update { message: rewritten })
    );
    assert_eq!(
        parse_client_frame(&v.bytes("sync_step2_empty", "hex")),
        Ok(ClientMessage::EmptyUpdate)
    );
}

#[test]
fn sync_update_passes_through_unchanged() {
    let v = Vectors::load();
    let frame = v.bytes("sync_update", "hex");
    assert_eq!(
        encode_sync_update(&v.bytes("sync_update", "update_hex")),
        frame
    );
    assert_eq!(
        parse_client_frame(&frame),
        Ok(ClientMessage::Update {
            message: frame.clone()
        })
    );
}

fn entries_of(v: &Vectors, name: &str) -> Vec<AwarenessEntry> {
    v.get(name)["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| AwarenessEntry {
            client_id: c["client_id"].as_u64().expect("client_id"),
            clock: c["clock"].as_u64().expect("clock"),
            state: c["state_json"].as_str().expect("state_json").to_owned(),
        })
        .collect()
}

#[test]
fn awareness_messages_match_y_protocols() {
    let v = Vectors::load();
    for name in [
        "awareness_one_client",
        "awareness_two_clients",
        "awareness_user_left",
    ] {
        let frame = v.bytes(name, "hex");
        let expected = entries_of(&v, name);
        assert_eq!(
            parse_client_frame(&frame),
            Ok(ClientMessage::Awareness {
                message: frame.clone(),
                entries: expected.clone()
            }),
            "{name}"
        );
        assert_eq!(encode_awareness_message(expected.iter()), frame, "{name}");
    }
    assert_eq!(
        encode_awareness_removal(5005, 1),
        v.bytes("awareness_user_left", "hex")
    );
}

#[test]
fn query_awareness_and_auth_frames() {
    let v = Vectors::load();
    assert_eq!(
        parse_client_frame(&v.bytes("query_awareness", "hex")),
        Ok(ClientMessage::QueryAwareness)
    );
    assert_eq!(
        parse_client_frame(&v.bytes("auth_permission_denied", "hex")),
        Ok(ClientMessage::Ignored)
    );
}

#[test]
fn malformed_frames_are_rejected() {
    let cases: &[(&[u8], &str)] = &[
        (&[], "empty frame"),
        (
            &[0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f],
            "length beyond the frame",
        ),
        (&[0, 2, 3, 0xff, 0xff, 0xff], "update that does not decode"),
        (&[9, 1, 2], "unknown message type"),
        (&[0, 7, 0], "unknown sync type"),
        (&[0, 2, 2, 0, 0, 5], "trailing bytes"),
        (
            &[1, 5, 1, 1, 1, 1, b'{'],
            "awareness state that is not JSON",
        ),
        (&[1, 4, 2, 1, 1, 0], "awareness count beyond the payload"),
        (&[0, 0, 2, 5, 1], "state vector that does not decode"),
        (
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            "type overflowing 53 bits",
        ),
    ];
    for (frame, what) in cases {
        assert!(parse_client_frame(frame).is_err(), "{what} was accepted");
    }
    assert_eq!(
        parse_client_frame(&[3, 0]),
        Err(ProtocolError::TrailingBytes(1))
    );
    // Found by the socket fuzz test: npm yjs cannot apply an empty delete range.
    let empty_delete_range = [0, 2, 8, 0, 1, 0x9e, 0x98, 0x06, 1, 0x27, 0];
    assert!(
        matches!(
            parse_client_frame(&empty_delete_range),
            Err(ProtocolError::InvalidUpdate(_))
        ),
        "{:?}",
        parse_client_frame(&empty_delete_range)
    );
    // Found by cargo fuzz: counts that would make yrs reserve gigabytes.
    let huge_state_vector = [0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0x0f, 1];
    assert!(matches!(
        parse_client_frame(&huge_state_vector),
        Err(ProtocolError::InvalidStateVector(_))
    ));
    let huge_client_count = [0, 2, 6, 0xff, 0xff, 0xff, 0x7f, 0, 0];
    assert!(matches!(
        parse_client_frame(&huge_client_count),
        Err(ProtocolError::InvalidUpdate(_))
    ));
    let huge_block_count = [0, 2, 9, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0, 0];
    assert!(matches!(
        parse_client_frame(&huge_block_count),
        Err(ProtocolError::InvalidUpdate(_))
    ));
}

#[test]
fn stored_v2_document_is_served_as_v1() {
    let v = Vectors::load();
    let stored = StoredDoc {
        update_v2: v.bytes("doc_update_v2", "hex"),
        references: vec!["1".into()],
    };
    let doc = assemble(Some(stored), &[]).expect("assembles");
    assert_eq!(doc.state_vector, v.bytes("doc_state_vector", "hex"));
    assert_eq!(text_of(&doc.update_v1), "hello");
    assert!(!doc.changed_by_stream);
    assert_eq!(doc.last_id, StreamId::ZERO);

    let ydoc = yrs::Doc::new();
    let map = ydoc.get_or_insert_map("map");
    {
        use yrs::updates::decoder::Decode;
        ydoc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&doc.update_v1).expect("decodes"))
            .expect("applies");
    }
    let txn = ydoc.transact();
    let json = serde_json::to_value(map.to_json(&txn)).expect("map to json");
    assert_eq!(json, v.get("doc_update_v1")["expected"]["maps"]["map"]);
    drop(txn);

    // What we would store again (v2) holds the same document.
    let v2 = doc.update_v2().expect("re-encodes as v2");
    let again = assemble(
        Some(StoredDoc {
            update_v2: v2,
            references: vec![],
        }),
        &[],
    )
    .expect("assembles");
    assert_eq!(again.state_vector, doc.state_vector);
}

#[test]
fn stream_updates_are_applied_on_top_of_storage() {
    let v = Vectors::load();
    let base = encode_sync_update(&v.bytes("delete_update_v1", "base_update_hex"));
    let delete = encode_sync_update(&v.bytes("delete_update_v1", "hex"));
    let awareness = v.bytes("awareness_one_client", "hex");
    let doc = assemble(
        None,
        &[
            entry(1, base.clone()),
            entry(2, awareness),
            entry(3, delete),
        ],
    )
    .expect("assembles");
    assert_eq!(text_of(&doc.update_v1), "aef");
    assert!(doc.changed_by_stream);
    assert_eq!(doc.last_id, StreamId { ms: 3, seq: 0 });
    assert_eq!(
        doc.awareness
            .present()
            .map(|e| e.client_id)
            .collect::<Vec<_>>(),
        vec![5005]
    );

    // A stream that only repeats what storage holds does not change the document.
    let stored = assemble(None, &[entry(1, base.clone())]).expect("assembles");
    let stored = StoredDoc {
        update_v2: stored.update_v2().expect("v2"),
        references: vec![],
    };
    let again = assemble(Some(stored), &[entry(4, base)]).expect("assembles");
    assert!(!again.changed_by_stream);
    // ...and the one who left is no longer present.
    let left = assemble(
        None,
        &[
            entry(1, v.bytes("awareness_one_client", "hex")),
            entry(2, v.bytes("awareness_user_left", "hex")),
        ],
    )
    .expect("assembles");
    assert_eq!(left.awareness.present().count(), 0);
}

#[test]
fn merged_updates_match_yjs_merge() {
    let v = Vectors::load();
    let inputs: Vec<Vec<u8>> = v.get("merge_updates")["inputs_hex"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|h| hex(h.as_str().expect("hex")))
        .collect();
    let entries: Vec<StreamEntry> = inputs
        .iter()
        .enumerate()
        .map(|(i, u)| entry(i as u64 + 1, encode_sync_update(u)))
        .collect();
    let doc = assemble(None, &entries).expect("assembles");
    assert_eq!(text_of(&doc.update_v1), "hello world");
    let expected_sv = v.bytes("merge_updates", "state_vector_hex");
    let sv_of = |bytes: &[u8]| {
        use yrs::updates::decoder::Decode;
        yrs::StateVector::decode_v1(bytes).expect("state vector")
    };
    assert_eq!(sv_of(&doc.state_vector), sv_of(&expected_sv));
    // The npm merge result is itself a valid document with the same content.
    let merged = v.bytes("merge_updates", "hex");
    assert_eq!(text_of(&merged), "hello world");
}
