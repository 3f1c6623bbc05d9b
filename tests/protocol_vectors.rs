//! The protocol and document code checked byte for byte against vectors the
//! npm `yjs`, `y-protocols` and `lib0` packages produced
//! (`tests/e2e/gen-fixtures.mjs` → `tests/fixtures/protocol_vectors.json`).

use std::collections::HashMap;

use serde_json::Value;
use y_redis::document::engine::{assemble, AssembleRequest, Assembled};
use y_redis_protocol::awareness::{
    encode_awareness_message, encode_awareness_removal, AwarenessEntry, AwarenessLimits,
};
use y_redis_protocol::doc_state::DocState;
use y_redis_protocol::lib0::DecodeError;
use y_redis_protocol::message::{
    encode_sync_step1, encode_sync_step2, encode_sync_update, ClientMessage, ProtocolError,
};
use y_redis_protocol::update::{analyze, Verdict};
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

const LIMITS: AwarenessLimits = AwarenessLimits {
    max_entries: 4,
    max_state_bytes: 64 << 10,
};

fn parse_client_frame(frame: &[u8]) -> Result<ClientMessage<'_>, ProtocolError> {
    y_redis_protocol::message::parse_client_frame(frame, &LIMITS)
}

/// The engine's assembly, in this test process.
fn build(pieces: &[&[u8]], updates: &[&[u8]], want_v2: bool) -> Assembled {
    assemble(&AssembleRequest {
        pieces: pieces.to_vec(),
        updates: updates.to_vec(),
        want_v2,
        state_vectors: Vec::new(),
    })
    .expect("assembles")
}

/// Checks `update` against `doc` and applies it if accepted.
fn verdict(doc: &mut DocState, update: &[u8]) -> Verdict {
    let verdict = analyze(update, doc)
        .unwrap_or_else(|e| panic!("npm update refused: {e}"))
        .verdict(doc);
    if let Verdict::Accept(effects) = &verdict {
        doc.apply(effects);
    }
    verdict
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
        Ok(ClientMessage::SyncStep1 { state_vector: &sv })
    );
    assert_eq!(encode_sync_step1(&sv), frame);
    let empty = v.bytes("sync_step1_empty", "hex");
    assert!(matches!(
        parse_client_frame(&empty),
        Ok(ClientMessage::SyncStep1 { .. })
    ));
}

#[test]
fn sync_step2_and_updates_are_parsed_and_stored_as_updates() {
    let v = Vectors::load();
    let frame = v.bytes("sync_step2", "hex");
    let update = v.bytes("sync_step2", "update_hex");
    assert_eq!(encode_sync_step2(&update), frame);
    assert_eq!(
        parse_client_frame(&frame),
        Ok(ClientMessage::Update {
            update: &update,
            step2: true
        })
    );
    // The stream stores a SyncStep2 as an Update, byte for byte as @y/redis does.
    assert_eq!(
        encode_sync_update(&update),
        v.bytes("sync_step2_rewritten_as_update", "hex")
    );
    let frame = v.bytes("sync_update", "hex");
    let update = v.bytes("sync_update", "update_hex");
    assert_eq!(encode_sync_update(&update), frame);
    assert_eq!(
        parse_client_frame(&frame),
        Ok(ClientMessage::Update {
            update: &update,
            step2: false
        })
    );
}

#[test]
fn every_npm_update_is_accepted_where_yjs_integrates_it() {
    let v = Vectors::load();
    let mut doc = DocState::default();
    assert!(matches!(
        verdict(&mut doc, &v.bytes("doc_update_v1", "hex")),
        Verdict::Accept(_)
    ));
    let mut doc = DocState::default();
    assert!(matches!(
        verdict(&mut doc, &v.bytes("sync_step2", "update_hex")),
        Verdict::Accept(_)
    ));
    assert_eq!(
        verdict(&mut doc, &v.bytes("sync_step2", "update_hex")),
        Verdict::Redundant
    );
    // An empty SyncStep2 (a client with an empty document) adds nothing.
    assert_eq!(
        verdict(
            &mut DocState::default(),
            &v.bytes("sync_step2_empty", "update_hex")
        ),
        Verdict::Redundant
    );
    for (base, next) in [("sync_update", "update_hex"), ("delete_update_v1", "hex")] {
        let mut doc = DocState::default();
        let update = v.bytes(base, next);
        assert!(
            matches!(verdict(&mut doc, &update), Verdict::Hold { .. }),
            "{base} waits for its base"
        );
        assert!(matches!(
            verdict(&mut doc, &v.bytes(base, "base_update_hex")),
            Verdict::Accept(_)
        ));
        assert!(
            matches!(verdict(&mut doc, &update), Verdict::Accept(_)),
            "{base}"
        );
    }
    let mut doc = DocState::default();
    for input in v.get("merge_updates")["inputs_hex"]
        .as_array()
        .expect("inputs")
    {
        let update = hex(input.as_str().expect("hex"));
        assert!(matches!(verdict(&mut doc, &update), Verdict::Accept(_)));
    }
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
        let payload = v.bytes(name, "awareness_update_hex");
        assert_eq!(
            parse_client_frame(&frame),
            Ok(ClientMessage::Awareness {
                payload: &payload,
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
        Ok(ClientMessage::Auth)
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
        Err(ProtocolError::Decode(DecodeError::TrailingBytes(1)))
    );
    let refused = |update: &[u8]| analyze(update, &DocState::default()).is_err();
    assert!(
        refused(&[3, 0xff, 0xff, 0xff]),
        "update that does not decode"
    );
    // Found by the socket fuzz test: npm yjs cannot apply an empty delete range.
    assert!(
        refused(&[0, 1, 0x9e, 0x98, 0x06, 1, 0x27, 0]),
        "empty delete range"
    );
    // Found by cargo fuzz: counts that would make yrs reserve gigabytes.
    let huge_state_vector = [0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0x0f, 1];
    assert!(matches!(
        parse_client_frame(&huge_state_vector),
        Err(ProtocolError::InvalidStateVector(_))
    ));
    assert!(
        refused(&[0xff, 0xff, 0xff, 0x7f, 0, 0]),
        "huge client count"
    );
    assert!(
        refused(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0, 0]),
        "huge struct count"
    );
}

#[test]
fn stored_v2_document_is_served_as_v1() {
    let v = Vectors::load();
    let stored = v.bytes("doc_update_v2", "hex");
    let doc = build(&[&stored], &[], true);
    assert_eq!(doc.state_vector, v.bytes("doc_state_vector", "hex"));
    assert_eq!(text_of(&doc.update_v1), "hello");
    assert!(!doc.changed);

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
    let v2 = doc.update_v2.expect("asked for v2");
    assert_eq!(build(&[&v2], &[], false).state_vector, doc.state_vector);
}

#[test]
fn stream_updates_are_applied_on_top_of_storage() {
    let v = Vectors::load();
    let base = v.bytes("delete_update_v1", "base_update_hex");
    let delete = v.bytes("delete_update_v1", "hex");
    let doc = build(&[], &[&base, &delete], true);
    assert_eq!(text_of(&doc.update_v1), "aef");
    assert!(doc.changed);
    // A stream that only repeats what storage holds does not change the document.
    let stored = build(&[], &[&base], true).update_v2.expect("v2");
    assert!(!build(&[&stored], &[&base], false).changed);
    // Two stored pieces are merged.
    let other = build(&[], &[&v.bytes("sync_step2", "update_hex")], true)
        .update_v2
        .expect("v2");
    let merged = build(&[&stored, &other], &[], false);
    assert!(!merged.changed);
    let text = text_of(&merged.update_v1);
    assert!(
        text.contains("abcdef") && text.contains("hello") && text.len() == 11,
        "{text}"
    );
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
    let updates: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let doc = build(&[], &updates, false);
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

/// An update holding the edits of `clients` writers, each typing after the
/// previous one's text (so each run depends on the one before), and the
/// same update without the first writer's edits.
fn chained_edits(clients: u64) -> (Vec<u8>, Vec<u8>) {
    use yrs::updates::decoder::Decode;
    use yrs::{ReadTxn, StateVector, Text};
    let shared = yrs::Doc::with_client_id(1_000);
    for client in 1..=clients {
        let writer = yrs::Doc::with_client_id(client);
        let text = writer.get_or_insert_text("text");
        let mut txn = writer.transact_mut();
        let so_far = shared
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        txn.apply_update(yrs::Update::decode_v1(&so_far).expect("valid update"))
            .expect("applies");
        let end = text.len(&txn);
        text.insert(&mut txn, end, &format!("[{client}]"));
        let edit = txn.encode_state_as_update_v1(&StateVector::default());
        drop(txn);
        shared
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&edit).expect("valid update"))
            .expect("applies");
    }
    let txn = shared.transact();
    let whole = txn.encode_state_as_update_v1(&StateVector::default());
    let mut first_known = StateVector::default();
    let first = yrs::block::ClientID::new(1);
    first_known.set_max(first, txn.state_vector().get(&first));
    (whole, txn.encode_state_as_update_v1(&first_known))
}

#[test]
fn updates_of_few_and_many_writers_are_judged_alike() {
    // A handful of runs is looked up by scanning, more through a map.
    for clients in [3, 8, 9, 20] {
        let (whole, without_first) = chained_edits(clients);
        let mut doc = DocState::default();
        assert!(
            matches!(verdict(&mut doc, &without_first), Verdict::Hold { .. }),
            "{clients} writers: the second writer's edit needs the first's"
        );
        assert!(
            matches!(verdict(&mut doc, &whole), Verdict::Accept(_)),
            "{clients} writers: the whole chain integrates"
        );
        assert!(
            matches!(verdict(&mut doc, &without_first), Verdict::Redundant),
            "{clients} writers: nothing new once all is known"
        );
    }
}

#[test]
fn a_client_named_twice_in_one_update_is_refused() {
    // v1 updates of empty client lists: count, then (structs 0, client, clock 0)
    // per client, then an empty delete set.
    let update = |clients: &[u8]| {
        let mut bytes = vec![clients.len() as u8];
        for &client in clients {
            bytes.extend([0, client, 0]);
        }
        bytes.push(0);
        bytes
    };
    // Few clients are checked by a scan, more by a set.
    for count in [2u8, 9, 20] {
        let distinct: Vec<u8> = (1..=count).collect();
        let doc = DocState::default();
        assert!(
            analyze(&update(&distinct), &doc).is_ok(),
            "{count} distinct clients"
        );
        let mut repeated = distinct.clone();
        *repeated.last_mut().expect("clients") = 1;
        let refused = analyze(&update(&repeated), &doc)
            .err()
            .map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("appears twice")),
            "{count} clients, one twice: {refused:?}"
        );
    }
}
