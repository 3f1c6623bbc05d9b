//! Servers and workers started in this process (port 0, the real Redis at
//! 127.0.0.1:6379, a random `REDIS_PREFIX` per test), driven by Rust
//! y-websocket clients. What each test proves:
//!
//! - `an_entry_added_during_the_initial_load_arrives_once_and_in_order`: an
//!   update that reaches the stream while a room's load is in flight (the
//!   storage read held at a gate) reaches the joining client exactly once,
//!   after its initial sync and before later updates.
//! - `an_entry_added_while_joiners_load_an_open_room_arrives_once_and_in_order`:
//!   the same while the room is already open on the server (the listener
//!   reads its stream and hands C to rooms whose loads are in flight).
//! - `every_client_gets_each_senders_updates_in_order`: writers on two
//!   servers sharing one Redis send thousands of updates; every client
//!   receives each sender's updates exactly once, in send order, and all
//!   documents end equal.
//! - `a_worker_compacts_into_storage_and_trims_the_stream`: the worker,
//!   started in-process with a short debounce and message lifetime, stores
//!   the document (equal to the clients') and trims the room stream.
//! - `an_update_waiting_for_its_dependency_reaches_clients_and_storage`: an
//!   update in the stream whose dependency is not there yet goes to a
//!   client's initial sync all the same (its yjs holds it), stays in the
//!   stream through compactions, and is stored once the dependency came.
//! - `a_permanent_storage_error_closes_once_with_4422`: a room storage can
//!   never hold gets one close 4422 with the reason (no 1013 retry loop),
//!   other rooms keep working, and the worker gives up on the room once.
//! - `a_client_that_stops_reading_is_cut_off`: a raw websocket client that
//!   never reads while others write megabytes is disconnected by the server
//!   (`WS_MAX_SEND_QUEUE_BYTES`), and a reader in the same room still gets
//!   everything.
//! - `a_room_that_closed_its_sessions_takes_no_new_ones`: a thread's room
//!   that closed every session (as after a Redis outage) turns away a
//!   session whose join arrives after the close, sessions that connect
//!   from then on get a fresh room (the old view may hold what Redis
//!   lost), and each room stops with the last of its own sessions.
//! - `edits_flow_again_after_redis_restarts`: a server whose Redis is
//!   SIGKILLed and restarted empty on the same port subscribes again:
//!   clients asked to resync (1013) reconnect, are not refused a second
//!   time (connections from before the outage are renewed), the documents
//!   converge, and edits made after the restart are delivered.

// The server's future is as deep as in src/main.rs, which raises the limit too.
#![recursion_limit = "256"]

#[path = "support/inproc.rs"]
mod inproc;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use inproc::{PrivateRedis, TestStorage, REDIS_URL};
use support::ws::Client;
use y_redis::actors::messages::ToSession;
use y_redis::storage::{MemoryStorage, Storage};
use y_redis::streams::RedisStreams;
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

/// The updates in a room stream, in order.
async fn stream_updates(key: &str) -> Vec<yrs::Update> {
    use y_redis_protocol::message::{classify_stream_message, StreamMessage};
    use yrs::updates::decoder::Decode;
    let mut redis = inproc::raw_redis(REDIS_URL).await;
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .flat_map(|(_, fields)| fields)
        .filter_map(|(_, message)| match classify_stream_message(&message) {
            StreamMessage::Update(update) => Some(yrs::Update::decode_v1(update).expect("v1")),
            _ => None,
        })
        .collect()
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

/// Storage holds "A" and the stream "B"; `early` clients join first (the
/// gate open), then `joiners` join while their loads wait at the gate,
/// "C" reaches the stream, the gate opens, then "D" is published. Every
/// joiner must get B, C and D exactly once, its initial sync first, C
/// before D; returns the joiners for further checks.
async fn load_race(early: usize, joiners: usize) -> Vec<(Client, [ID; 3])> {
    let prefix = inproc::prefix();
    let config = inproc::config(&[("REDIS_PREFIX", prefix.as_str())]);
    let redis = RedisStreams::for_config(&config).await.expect("redis");
    let room = "race";
    let (storage, mut gate) = TestStorage::gated();
    let (doc_a, _) = append(1, &[], "A");
    storage
        .inner
        .persist_doc(room, "index", v2_of(&doc_a), Vec::new())
        .await
        .expect("stored");
    let (b, b_id) = append(2, &doc_a, "B");
    inproc::publish(&redis, room, &[encode_sync_update(&b)]).await;
    let server = inproc::start_server(config, storage.clone() as Arc<dyn Storage>);

    gate.open();
    let mut present = Vec::new();
    for _ in 0..early {
        let client = Client::connect(server.addr, room).await;
        client
            .wait_until("the initial sync", |c| c.state.lock().unwrap().synced)
            .await;
        present.push(client);
    }
    gate.close();
    let loads_before = gate.loads();
    let mut joining = Vec::new();
    for _ in 0..joiners {
        joining.push(Client::connect(server.addr, room).await);
    }
    // Each joiner's room has read the stream (the storage read comes after
    // it) and waits at the gate: "C" reaches the stream now. (With two or
    // more HTTP worker threads two joiners land on different threads, so
    // both load now.)
    gate.wait_entered(loads_before + joiners).await;
    let (c, c_id) = append(3, &doc_a, "C");
    inproc::publish(&redis, room, &[encode_sync_update(&c)]).await;
    for client in &present {
        // The listener brought C to the open room while the loads run.
        client.wait_until("C", |c| c.text().contains('C')).await;
    }
    gate.open();
    for client in &joining {
        client
            .wait_until("A, B and C", |c| {
                let text = c.text();
                ["A", "B", "C"].iter().all(|s| text.contains(s))
            })
            .await;
    }
    let (d, d_id) = append(4, &doc_a, "D");
    inproc::publish(&redis, room, &[encode_sync_update(&d)]).await;
    for client in joining.iter().chain(&present) {
        client.wait_until("D", |c| c.text().contains('D')).await;
    }
    // Each joiner now edits right after C, sending only its change: the
    // room's view must hold C (it came while the view was being loaded), so
    // the edit is stored at once, once, and C is not asked for again.
    let key = redis.keys().room_stream(room, "index");
    let stored_before = stream_updates(&key).await.len();
    for (n, client) in joining.iter().enumerate() {
        let after_c = client.text().find('C').expect("C") as u32 + 1;
        client.insert_at(after_c, &n.to_string()).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream_updates(&key).await.len() < stored_before + joiners {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the joiners' edits to reach the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for a re-sent copy to arrive, had there been one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edits = stream_updates(&key).await.split_off(stored_before);
    assert_eq!(edits.len(), joiners, "one stream entry per joiner's edit");
    for update in &edits {
        assert!(
            !update.insertions(true).contains(&c_id),
            "a joiner was asked for C again: the room's view missed it"
        );
    }

    for (n, client) in joining.iter().enumerate() {
        for (name, id) in [("B", &b_id), ("C", &c_id), ("D", &d_id)] {
            assert_eq!(client.times_received(id), 1, "joiner {n}: {name} once");
        }
        let state = client.state.lock().unwrap();
        let position = |id: &ID| state.received.iter().position(|r| r.inserts.contains(id));
        assert_eq!(
            state.received[0].kind,
            y_redis_protocol::message::SYNC_STEP2,
            "joiner {n}: the initial sync comes first"
        );
        assert_eq!(
            position(&b_id),
            Some(0),
            "joiner {n}: B in the initial sync"
        );
        assert!(position(&c_id) < position(&d_id), "joiner {n}: C before D");
    }
    drop(server);
    joining
        .into_iter()
        .map(|client| (client, [b_id, c_id, d_id]))
        .collect()
}

#[actix_rt::test]
async fn an_entry_added_during_the_initial_load_arrives_once_and_in_order() {
    let joined = load_race(0, 1).await;
    // The load read the stream before C: C comes after the initial sync.
    let (client, [_, c_id, _]) = &joined[0];
    assert!(!client.state.lock().unwrap().received[0]
        .inserts
        .contains(c_id));
}

#[actix_rt::test]
async fn an_entry_added_while_joiners_load_an_open_room_arrives_once_and_in_order() {
    // One client has the room open (the listener reads its stream), two
    // more join: one a new room subscription on the other thread, one a
    // later load of the open room; both see C come from the listener while
    // their loads are held.
    load_race(1, 2).await;
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
    // Each client gets every other writer's updates; a writer has its own
    // already and does not get them back (they keep coming from the others).
    let others = |client: &Client| {
        writers
            .iter()
            .filter(|w| w.client_id() != client.client_id())
            .map(Client::client_id)
            .collect::<Vec<_>>()
    };
    for client in writers.iter().chain(&readers) {
        client.wait_for_state(&everything).await;
        let senders = others(client);
        client
            .wait_until("every update received", |c| {
                senders.iter().all(|&w| {
                    let ranges = c.ranges_from(w);
                    ranges.iter().map(|r| r.end).max() == Some(UPDATES)
                })
            })
            .await;
    }
    let text = readers[0].text();
    assert_eq!(text.len(), UPDATES as usize * writers.len());
    for writer in &writers {
        assert_eq!(
            writer.ranges_from(writer.client_id()),
            [],
            "a writer's own updates are not sent back to it"
        );
    }
    for (n, client) in writers.iter().chain(&readers).enumerate() {
        assert_eq!(client.text(), text, "client {n} ends equal");
        for writer in others(client) {
            let ranges = client.ranges_from(writer);
            let mut next = 0;
            for range in &ranges {
                assert_eq!(
                    range.start, next,
                    "client {n}: {writer:?}'s updates out of order or repeated: {ranges:?}"
                );
                next = range.end;
            }
            assert_eq!(next, UPDATES, "client {n} got all of {writer:?}");
        }
    }
    drop(servers);
}

#[actix_rt::test]
async fn own_messages_come_back_only_with_echo_on_or_after_ten_quiet_seconds() {
    let prefix = inproc::prefix();
    let start = |echo: &str| {
        let pairs = [
            ("REDIS_PREFIX", prefix.as_str()),
            ("ECHO_OWN_MESSAGES", echo),
        ];
        inproc::start_server(inproc::config(&pairs), Arc::new(MemoryStorage::default()))
    };
    let (server, echoing) = (start("false"), start("true"));
    let own = |c: &Client| c.ranges_from(c.client_id()).len();
    let synced = |c: &Client| c.state.lock().unwrap().synced;

    // ECHO_OWN_MESSAGES=true: as from @y/redis.
    let echoed = Client::connect(echoing.addr, "echoed").await;
    echoed.wait_until("the initial sync", synced).await;
    echoed.insert("a").await;
    echoed
        .wait_until("its own update back", |c| own(c) == 1)
        .await;

    // By default a client's own update is left out: the next client's
    // update, stored after it, arrives without it.
    let lone = Client::connect(server.addr, "lone").await;
    lone.wait_until("the initial sync", synced).await;
    for _ in 0..10 {
        lone.insert("a").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = Client::connect(server.addr, "lone").await;
    other.wait_until("the initial sync", synced).await;
    other.insert("b").await;
    lone.wait_until("the other client's update", |c| c.text().len() == 11)
        .await;
    assert_eq!(own(&lone), 0, "its own updates were sent back");
    drop(other);

    // After ten seconds without a message (y-websocket gives up after 30),
    // its own message comes back: a client alone stays connected.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    lone.insert("c").await;
    lone.wait_until("its own update after a quiet spell", |c| own(c) == 1)
        .await;
    drop((server, echoing));
}

/// The text of the document `storage` holds for `room` (its pieces merged).
async fn stored_text(storage: &dyn Storage, room: &str) -> Option<String> {
    use yrs::updates::decoder::Decode;
    use yrs::GetString;
    let stored = storage.retrieve_doc(room, "index").await.ok()??;
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("text");
    let mut txn = doc.transact_mut();
    for piece in &stored.pieces {
        txn.apply_update(yrs::Update::decode_v2(piece).expect("stored v2"))
            .expect("applies");
    }
    Some(text.get_string(&txn))
}

/// Polls `check` every 50 ms until it holds, panicking after the clients' wait.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + support::ws::WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// A server and an in-process worker on one memory storage; the worker
/// takes tasks `debounce_ms` old and trims messages `lifetime_ms` old.
struct WithWorker {
    storage: Arc<MemoryStorage>,
    redis: RedisStreams,
    worker: y_redis::worker::Worker,
    server: inproc::TestServer,
    /// Last: its keys go once the server and the worker are gone.
    _prefix: inproc::Prefix,
}

impl WithWorker {
    async fn start(debounce_ms: &str, lifetime_ms: &str) -> Self {
        let prefix = inproc::prefix();
        let config = inproc::config(&[
            ("REDIS_PREFIX", prefix.as_str()),
            ("REDIS_TASK_DEBOUNCE", debounce_ms),
            ("REDIS_MIN_MESSAGE_LIFETIME", lifetime_ms),
            ("WORKER_IDLE_MS", "50"),
            ("WORKER_CONCURRENCY", "1"),
        ]);
        let storage = Arc::new(MemoryStorage::default());
        let redis = RedisStreams::for_config(&config).await.expect("redis");
        let worker = y_redis::worker::start(
            &config.worker,
            redis.clone(),
            storage.clone(),
            inproc::documents(),
        );
        let server = inproc::start_server(config, storage.clone());
        WithWorker {
            storage,
            redis,
            worker,
            server,
            _prefix: prefix,
        }
    }
}

#[actix_rt::test]
async fn a_worker_compacts_into_storage_and_trims_the_stream() {
    const EDITS: usize = 20;
    let w = WithWorker::start("300", "100").await;
    let room = "compacted";
    let writer = Client::connect(w.server.addr, room).await;
    writer
        .wait_until("the initial sync", |c| c.state.lock().unwrap().synced)
        .await;
    // Edits over a second: the early ones are past the lifetime at the end.
    for i in 0..EDITS {
        writer.insert(&format!("edit{i} ")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sv = writer.state_vector();
    writer.wait_for_state(&sv).await;
    let key = w.redis.keys().room_stream(room, "index");
    let conn = inproc::raw_redis(REDIS_URL).await;
    let text = writer.text();
    eventually("the document stored and the stream trimmed", || {
        let (storage, key, text, conn) =
            (w.storage.clone(), key.clone(), text.clone(), conn.clone());
        async move {
            let mut conn = conn;
            stored_text(storage.as_ref(), room).await.as_deref() == Some(text.as_str())
                && xlen(&mut conn, &key).await < EDITS
        }
    })
    .await;
    // A client joining now loads storage plus what is left of the stream.
    let reader = Client::connect(w.server.addr, room).await;
    reader.wait_for_state(&sv).await;
    assert_eq!(reader.text(), text);
    w.worker.shutdown(Duration::from_secs(2)).await;
    drop(w.server);
}

/// B builds on A, and reaches the stream first (a foreign writer, or A
/// lost in a failover and sent again on reconnect): B waits in the stream.
/// A client that syncs then must get B too (held by its yjs until A comes),
/// and the worker, storing what applies, must keep B (not trim it,
/// unstored) until A is there.
#[actix_rt::test]
async fn an_update_waiting_for_its_dependency_reaches_clients_and_storage() {
    let w = WithWorker::start("100", "50").await;
    let room = "waiting";
    let (a, _) = append(1, &[], "A");
    let (b, b_id) = append(2, &a, "B");
    // C applies on its own: the worker has something to store.
    let (c, _) = append(3, &[], "C");
    let messages = [encode_sync_update(&c), encode_sync_update(&b)];
    inproc::publish(&w.redis, room, &messages).await;
    let early = Client::connect(w.server.addr, room).await;
    early.wait_until("C", |c| c.text() == "C").await;
    eventually("the worker to store C (B waiting)", || {
        let storage = w.storage.clone();
        async move { stored_text(storage.as_ref(), room).await.as_deref() == Some("C") }
    })
    .await;
    // Compactions go on every 100 ms; B is long past its 50 ms lifetime.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let key = w.redis.keys().room_stream(room, "index");
    let kept = stream_updates(&key).await;
    assert!(
        kept.iter().any(|u| u.insertions(true).contains(&b_id)),
        "B stays in the stream"
    );

    inproc::publish(&w.redis, room, &[encode_sync_update(&a)]).await;
    let holds_all = |text: &str| text.len() == 3 && text.contains("AB") && text.contains('C');
    early
        .wait_until("A, B and C", |c| holds_all(&c.text()))
        .await;
    let late = Client::connect(w.server.addr, room).await;
    late.wait_until("A, B and C", |c| holds_all(&c.text()))
        .await;
    eventually("storage to hold A, B and C", || {
        let storage = w.storage.clone();
        async move {
            stored_text(storage.as_ref(), room)
                .await
                .is_some_and(|text| holds_all(&text))
        }
    })
    .await;
    w.worker.shutdown(Duration::from_secs(2)).await;
    drop(w.server);
}

#[actix_rt::test]
async fn a_permanent_storage_error_closes_once_with_4422() {
    let prefix = inproc::prefix();
    let config = inproc::config(&[
        ("REDIS_PREFIX", prefix.as_str()),
        ("REDIS_TASK_DEBOUNCE", "200"),
        ("WORKER_IDLE_MS", "50"),
        ("WORKER_CONCURRENCY", "1"),
    ]);
    let redis = RedisStreams::for_config(&config).await.expect("redis");
    let server = inproc::start_server(config.clone(), Arc::new(TestStorage::default()));

    let refused = Client::connect(server.addr, "bad-room").await;
    refused.insert("lost").await;
    let good = Client::connect(server.addr, "good-room").await;
    let close = refused.wait_closed().await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 4422, "{reason}");
    assert!(reason.contains("cannot hold"), "reason says why: {reason}");
    assert_eq!(refused.state.lock().unwrap().closes.len(), 1);
    assert!(
        refused.state.lock().unwrap().received.is_empty(),
        "no document sent"
    );

    // Other rooms keep working.
    let other = Client::connect(server.addr, "good-room").await;
    good.insert("still served").await;
    other
        .wait_until("the good room's edit", |c| c.text() == "still served")
        .await;

    // The worker tries the refused room once and drops its task.
    let bad_key = redis.keys().room_stream("bad-room", "index");
    inproc::publish(
        &redis,
        "bad-room",
        &[encode_sync_update(&append(9, &[], "x").0)],
    )
    .await;
    let worker_storage = Arc::new(TestStorage::default());
    let worker = y_redis::worker::start(
        &config.worker,
        redis.clone(),
        worker_storage.clone(),
        inproc::documents(),
    );
    let mut conn = inproc::raw_redis(REDIS_URL).await;
    let queue = format!("{}:worker", prefix.as_str());
    eventually("the refused room's task dropped", || {
        let (storage, conn, queue, bad_key) = (
            worker_storage.clone(),
            conn.clone(),
            queue.clone(),
            bad_key.clone(),
        );
        async move {
            let mut conn = conn;
            let tasks: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&queue)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            let pending = tasks.ids.iter().any(|task| {
                task.map.get("compact").is_some_and(|v| {
                    redis::from_redis_value::<String>(v.clone()).is_ok_and(|k| k == bad_key)
                })
            });
            storage.refused_reads.load(Ordering::SeqCst) > 0 && !pending
        }
    })
    .await;
    // Several debounces later it has not tried again; the stream stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(worker_storage.refused_reads.load(Ordering::SeqCst), 1);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&bad_key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(exists, "the stream is kept for an operator");
    worker.shutdown(Duration::from_secs(2)).await;
    drop(server);
}

#[actix_rt::test]
async fn a_client_that_stops_reading_is_cut_off() {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 64 << 10;
    const CHUNKS_PER_WRITER: usize = 64;
    let prefix = inproc::prefix();
    let config = inproc::config(&[
        ("REDIS_PREFIX", prefix.as_str()),
        ("WS_MAX_SEND_QUEUE_BYTES", "262144"),
        ("MAX_BYTES_PER_SECOND", "1000000000"),
        ("MAX_MESSAGES_PER_SECOND", "100000"),
    ]);
    let server = inproc::start_server(config, Arc::new(MemoryStorage::default()));
    let room = "slow";
    // The client that never reads, with a small receive window so the
    // backlog lands in the server's queue rather than in kernel buffers.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = socket.connect(server.addr).await.expect("connect");
    support::ws::handshake(&mut stalled, room).await;

    let writers = [
        Client::connect(server.addr, room).await,
        Client::connect(server.addr, room).await,
    ];
    let reader = Client::connect(server.addr, room).await;
    for client in writers.iter().chain([&reader]) {
        client
            .wait_until("the initial sync", |c| c.state.lock().unwrap().synced)
            .await;
    }
    // Writers go on as fast as the reader keeps up, so only the stalled
    // client falls behind.
    let chunk = "x".repeat(CHUNK);
    for _ in 0..CHUNKS_PER_WRITER {
        for writer in &writers {
            writer.insert(&chunk).await;
        }
        for writer in &writers {
            reader.wait_for_state(&writer.state_vector()).await;
        }
    }
    let sent = 2 * CHUNK * CHUNKS_PER_WRITER;
    assert_eq!(reader.text().len(), sent);

    // Only now does the stalled client read: it finds the connection
    // ended (EOF or reset) before everything came. Had it not been cut off,
    // it would read all of it (the frames hold more than the text).
    let mut got = 0usize;
    let mut buffer = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(support::ws::WAIT, async {
        loop {
            match stalled.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
            assert!(
                got < sent,
                "never cut off: the stalled client got all {got} bytes"
            );
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stalled connection is still open after {got} bytes"
    );
    drop(server);
}

/// Stands in for a session: says what its room told it.
struct RecordingSession(tokio::sync::mpsc::UnboundedSender<String>);

impl actix::Actor for RecordingSession {
    type Context = actix::Context<Self>;
}

impl actix::Handler<ToSession> for RecordingSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, _: &mut actix::Context<Self>) {
        let told = match msg {
            ToSession::Close { code, reason } => format!("close {code} {reason}"),
            ToSession::Synced => "synced".to_owned(),
            ToSession::Delivered => "delivered".to_owned(),
            ToSession::Recheck { .. } => "recheck".to_owned(),
        };
        let _ = self.0.send(told);
    }
}

#[actix_rt::test]
async fn a_room_that_closed_its_sessions_takes_no_new_ones() {
    use actix::Actor;
    use std::rc::Rc;
    use y_redis::actors::listener::RedisListener;
    use y_redis::actors::messages::{FromSession, RoomEvent};
    use y_redis::actors::room::RoomContext;
    use y_redis::actors::rooms::ThreadRooms;

    let prefix = inproc::prefix();
    let config = inproc::config(&[("REDIS_PREFIX", prefix.as_str())]);
    let redis = RedisStreams::for_config(&config).await.expect("redis");
    let listener = RedisListener::new(redis.clone(), &config).start();
    let rooms = ThreadRooms::new(Arc::new(RoomContext {
        redis: redis.clone(),
        storage: Arc::new(MemoryStorage::default()),
        documents: inproc::documents(),
        listener,
        awareness_max_clients: config.awareness_max_clients,
        next_room_id: 1.into(),
    }));
    let (room, docid) = ("retire", "index");
    let key = redis.keys().room_stream(room, docid);

    // A session joins; the resync close reaches the room before its join.
    let old = rooms.join(room, docid, &key);
    let resync = "redis connection restored, resyncing";
    old.addr
        .send(RoomEvent::CloseAll {
            code: 1013,
            reason: resync,
        })
        .await
        .expect("the room runs");
    // As a session joins: its socket first, then the message.
    let accepting = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = accepting.local_addr().expect("address");
    let _client = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (socket, _) = accepting.accept().await.expect("accept");
    let outlet = y_redis::socket::Outlet::new(Rc::new(socket));
    old.view.borrow_mut().arriving.insert(1, outlet);
    let (told, mut hears) = tokio::sync::mpsc::unbounded_channel();
    let session = RecordingSession(told).start().recipient();
    old.addr.do_send(FromSession::Join { conn: 1, session });
    let heard = tokio::time::timeout(support::ws::WAIT, hears.recv()).await;
    assert_eq!(
        heard.ok().flatten(),
        Some(format!("close 1013 {resync}")),
        "a join after the close is closed the same way"
    );
    assert!(old.view.borrow().arriving.is_empty(), "its socket let go");

    // Sessions connecting from now on share a fresh room.
    let fresh = rooms.join(room, docid, &key);
    assert_ne!(fresh.id, old.id, "a retired room takes no new sessions");
    assert!(!Rc::ptr_eq(&fresh.view, &old.view));
    assert!(fresh.view.borrow().closed_all.is_none());
    let second = rooms.join(room, docid, &key);
    assert_eq!(second.id, fresh.id);

    // Each room stops with the last of its own sessions.
    rooms.leave(&key, old.id);
    eventually("the retired room to stop", || async {
        !old.addr.connected()
    })
    .await;
    rooms.leave(&key, fresh.id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(fresh.addr.connected(), "one of its sessions is still here");
    rooms.leave(&key, second.id);
    eventually("the fresh room to stop", || async {
        !fresh.addr.connected()
    })
    .await;
}

#[actix_rt::test]
async fn edits_flow_again_after_redis_restarts() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let config = inproc::config(&[
        ("REDIS", &url),
        ("REDIS_PREFIX", "y"),
        ("REDIS_COMMAND_TIMEOUT_MS", "2000"),
    ]);
    let server = inproc::start_server(config, Arc::new(MemoryStorage::default()));
    let room = "restart";
    let mut clients = vec![
        Client::connect(server.addr, room).await,
        Client::connect(server.addr, room).await,
    ];
    clients[0].insert("before ").await;
    let sv = clients[0].state_vector();
    clients[1].wait_for_state(&sv).await;

    redis.kill();
    redis.restart();

    // Each client is asked to resync and reconnects, as y-websocket does.
    let mut resynced = Vec::new();
    for client in clients.drain(..) {
        let close = client.wait_closed().await;
        assert_eq!(close.as_ref().map(|c| c.0), Some(1013), "{close:?}");
        resynced.push(client.resync().await);
    }
    // Edits made after the restart reach the other client, both ways.
    resynced[0].insert("after0 ").await;
    resynced[1].insert("after1 ").await;
    let mut everything = resynced[0].state_vector();
    everything.merge(resynced[1].state_vector());
    for client in &resynced {
        client.wait_for_state(&everything).await;
    }
    // One close each: the resync request. The connections the server used
    // before the outage are renewed before it asks clients back, so their
    // first commands after it do not fail them once more.
    for client in &resynced {
        let state = client.state.lock().unwrap();
        assert!(!state.ended, "still connected");
        assert_eq!(
            state.closes,
            vec![(1013, "redis connection restored, resyncing".to_owned())],
            "closes after the restart"
        );
    }
    assert_eq!(resynced[0].text(), resynced[1].text());
    let text = resynced[0].text();
    for part in ["before", "after0", "after1"] {
        assert!(text.contains(part), "{part} in {text:?}");
    }
    // A client joining now gets everything from the restarted Redis.
    let late = Client::connect(server.addr, room).await;
    late.wait_for_state(&everything).await;
    assert_eq!(late.text(), text);
    drop(server);
}
