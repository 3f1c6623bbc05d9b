//! Servers and workers started in this process (port 0, the real Redis at
//! 127.0.0.1:6379, a random `REDIS_PREFIX` per test), driven by Rust
//! y-websocket clients. What each test proves:
//!
//! - `an_entry_added_during_the_initial_load_arrives_once_and_in_order`: an
//!   update that reaches the stream while a room's load is in flight (the
//!   storage read held at a gate) reaches the joining client exactly once,
//!   after its initial sync and before later updates.
//! - `every_client_gets_each_senders_updates_in_order`: writers on two
//!   servers sharing one Redis send thousands of updates; every client
//!   receives each sender's updates exactly once, in send order, and all
//!   documents end equal.

// The server's future is as deep as in src/main.rs, which raises the limit too.
#![recursion_limit = "256"]

mod support;

use std::sync::Arc;

use support::inproc::{self, GatedStorage, REDIS_URL};
use support::ws::Client;
use y_redis::redis::RedisStore;
use y_redis::storage::{MemoryStorage, Storage};
use y_redis_protocol::message::encode_sync_update;
use yrs::{ReadTxn, Text, Transact, ID};

/// An update (v1) by client `client` appending `text` to Y.Text "text" of
/// a document that already holds `base` (update v1), and the item's id.
fn append(client: u64, base: &[u8], text: &str) -> (Vec<u8>, ID) {
    use yrs::updates::decoder::Decode;
    let doc = yrs::Doc::with_client_id(client);
    let shared = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    if !base.is_empty() {
        txn.apply_update(yrs::Update::decode_v1(base).expect("base"))
            .expect("applies");
    }
    let before = txn.state_vector();
    let end = shared.len(&txn);
    shared.insert(&mut txn, end, text);
    let update = txn.encode_diff_v1(&before);
    (update, ID::new(yrs::ClientID::new(client), 0))
}

/// The same update in encoding v2 (as storage holds documents).
fn v2_of(update_v1: &[u8]) -> Vec<u8> {
    use yrs::updates::decoder::Decode;
    let doc = yrs::Doc::new();
    let mut txn = doc.transact_mut();
    txn.apply_update(yrs::Update::decode_v1(update_v1).expect("v1"))
        .expect("applies");
    txn.encode_state_as_update_v2(&yrs::StateVector::default())
}

#[actix_rt::test]
async fn an_entry_added_during_the_initial_load_arrives_once_and_in_order() {
    let prefix = inproc::prefix();
    let config = inproc::config(&[("REDIS_PREFIX", &prefix)]);
    let redis = RedisStore::for_config(&config).await.expect("redis");
    let room = "race";
    // Storage holds "A", the stream "B" before anyone joins.
    let (storage, mut gate) = GatedStorage::new();
    let (doc_a, _) = append(1, &[], "A");
    storage
        .inner
        .persist_doc(room, "index", v2_of(&doc_a), Vec::new())
        .await
        .expect("stored");
    let (b, b_id) = append(2, &doc_a, "B");
    inproc::publish(&redis, room, &[encode_sync_update(&b)]).await;

    let server = inproc::start_server(config, storage.clone() as Arc<dyn Storage>);
    let client = Client::connect(server.addr, room).await;
    // The room has read the stream (A's storage read comes after it) and
    // waits at the gate: "C" reaches the stream now.
    gate.wait_entered().await;
    let (c, c_id) = append(3, &doc_a, "C");
    inproc::publish(&redis, room, &[encode_sync_update(&c)]).await;
    gate.open();
    client
        .wait_until("A, B and C", |c| {
            let text = c.text();
            ["A", "B", "C"].iter().all(|s| text.contains(s))
        })
        .await;
    // A later update comes after C.
    let (d, d_id) = append(4, &doc_a, "D");
    inproc::publish(&redis, room, &[encode_sync_update(&d)]).await;
    client.wait_until("D", |c| c.text().contains('D')).await;

    assert_eq!(client.times_received(&b_id), 1, "B once");
    assert_eq!(client.times_received(&c_id), 1, "C once");
    assert_eq!(client.times_received(&d_id), 1, "D once");
    let state = client.state.lock().unwrap();
    let position = |id: &ID| {
        state
            .received
            .iter()
            .position(|r| r.inserts.contains(id))
            .expect("received")
    };
    assert_eq!(
        state.received[0].kind,
        y_redis_protocol::message::SYNC_STEP2,
        "the initial sync comes first"
    );
    assert_eq!(position(&b_id), 0, "B is in the initial sync");
    assert!(
        position(&b_id) < position(&c_id),
        "C after the initial sync"
    );
    assert!(position(&c_id) < position(&d_id), "D after C");
    drop(state);
    drop(server);
    inproc::remove_prefix(REDIS_URL, &prefix).await;
}

#[actix_rt::test]
async fn every_client_gets_each_senders_updates_in_order() {
    const WRITERS_PER_SERVER: usize = 2;
    const UPDATES: u32 = 600;
    let prefix = inproc::prefix();
    let pairs = [
        ("REDIS_PREFIX", prefix.as_str()),
        ("MAX_MESSAGES_PER_SECOND", "100000"),
    ];
    let servers = [
        inproc::start_server(inproc::config(&pairs), Arc::new(MemoryStorage::default())),
        inproc::start_server(inproc::config(&pairs), Arc::new(MemoryStorage::default())),
    ];
    let room = "ordered";
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for server in &servers {
        for _ in 0..WRITERS_PER_SERVER {
            writers.push(Client::connect(server.addr, room).await);
        }
        readers.push(Client::connect(server.addr, room).await);
    }
    for client in writers.iter().chain(&readers) {
        client
            .wait_until("the initial sync", |c| c.state.lock().unwrap().synced)
            .await;
    }
    // Round after round, every writer appends one character.
    for i in 0..UPDATES {
        for writer in &writers {
            writer
                .insert(&char::from(b'a' + (i % 26) as u8).to_string())
                .await;
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut everything = yrs::StateVector::default();
    for writer in &writers {
        everything.set_max(writer.client_id(), UPDATES);
    }
    for client in writers.iter().chain(&readers) {
        client.wait_for_state(&everything).await;
    }
    let text = readers[0].text();
    assert_eq!(text.len(), UPDATES as usize * writers.len());
    for (n, client) in writers.iter().chain(&readers).enumerate() {
        assert_eq!(client.text(), text, "client {n} ends equal");
        for writer in &writers {
            let ranges = client.ranges_from(writer.client_id());
            let mut next = 0;
            for range in &ranges {
                assert_eq!(
                    range.start,
                    next,
                    "client {n}: {:?}'s updates out of order or repeated: {ranges:?}",
                    writer.client_id()
                );
                next = range.end;
            }
            assert_eq!(
                next,
                UPDATES,
                "client {n} got all of {:?}",
                writer.client_id()
            );
        }
    }
    drop(servers);
    inproc::remove_prefix(REDIS_URL, &prefix).await;
}
