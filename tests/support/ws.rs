//! A small y-websocket client for the in-process tests: a raw RFC 6455
//! client over tokio (handshake, masked frames out, whole or fragmented
//! frames in) and a `yrs::Doc` that follows the y-websocket protocol
//! (SyncStep1 on connect, answers the server's SyncStep1 with a SyncStep2,
//! applies SyncStep2 and Update). Every document message received is
//! recorded with the ids it inserts, so tests can check exactly-once and
//! in-order delivery.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use y_redis_protocol::lib0::Decoder;
use y_redis_protocol::message::{
    encode_sync_step1, encode_sync_step2, encode_sync_update, MESSAGE_SYNC, SYNC_STEP1, SYNC_STEP2,
    SYNC_UPDATE,
};
use y_redis_protocol::websocket::encode_client_frame;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, IdSet, ReadTxn, StateVector, Text, Transact, ID};

/// Generous: two cores shared with compilers.
pub const WAIT: Duration = Duration::from_secs(15);

/// Sends the upgrade request for `/room` and reads the answer up to the
/// blank line (byte by byte, so no frame byte is consumed). Panics unless
/// the server switches protocols.
pub async fn handshake(stream: &mut TcpStream, room: &str) {
    let request = format!(
        "GET /{room} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("upgrade answer");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
}

/// One client frame: FIN, the opcode, masked with a random key.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_client_frame(true, opcode, payload, rand::random())
}

/// Reads one frame from the server: (FIN, opcode, payload).
async fn read_frame(input: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    input.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(input.read_u16().await?),
        127 => input.read_u64().await?,
        n => u64::from(n),
    };
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let mut payload = vec![0; len as usize];
    input.read_exact(&mut payload).await?;
    Ok((head[0] & 0x80 != 0, head[0] & 0x0f, payload))
}

/// A document message the client received.
#[derive(Debug)]
pub struct Received {
    /// `SYNC_STEP2` or `SYNC_UPDATE`.
    pub kind: u64,
    /// The ids of the items the message inserts.
    pub inserts: IdSet,
}

#[derive(Default)]
pub struct ClientState {
    pub received: Vec<Received>,
    /// The close frame's code and reason, once one came.
    pub close: Option<(u16, String)>,
    /// Close frames received over all connections.
    pub closes: Vec<(u16, String)>,
    /// The connection ended (close frame, EOF or error).
    pub ended: bool,
    /// A SyncStep2 arrived on the current connection.
    pub synced: bool,
}

/// A y-websocket client with its own document (Y.Text "text").
pub struct Client {
    pub doc: yrs::Doc,
    pub state: Arc<Mutex<ClientState>>,
    changed: Arc<Notify>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    addr: SocketAddr,
    room: String,
}

impl Client {
    /// Connects to `ws://addr/room` and sends SyncStep1 (as y-websocket does).
    pub async fn connect(addr: SocketAddr, room: &str) -> Client {
        Self::connect_with(addr, room, yrs::Doc::new()).await
    }

    async fn connect_with(addr: SocketAddr, room: &str, doc: yrs::Doc) -> Client {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        handshake(&mut stream, room).await;
        let (reader, writer) = stream.into_split();
        let client = Client {
            doc,
            state: Arc::default(),
            changed: Arc::default(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            addr,
            room: room.to_owned(),
        };
        let reading = Reader {
            doc: client.doc.clone(),
            state: client.state.clone(),
            changed: client.changed.clone(),
            writer: client.writer.clone(),
        };
        // Local: the test's runtime is an actix System (one thread).
        actix_rt::spawn(reading.run(reader));
        let sv = client.doc.transact().state_vector().encode_v1();
        client.send(&encode_sync_step1(&sv)).await;
        client
    }

    /// A new connection for the same document (what y-websocket does after
    /// a 1013): the old one is dropped, the document and its history kept.
    pub async fn reconnect(self) -> Client {
        let (addr, room, doc, state) = (self.addr, self.room.clone(), self.doc.clone(), self.state);
        let mut fresh = Self::connect_with(addr, &room, doc).await;
        // Keep what was received and the closes seen before.
        {
            let old = std::mem::take(&mut *state.lock().unwrap());
            let mut new = fresh.state.lock().unwrap();
            let mut received = old.received;
            received.append(&mut new.received);
            new.received = received;
            let mut closes = old.closes;
            closes.append(&mut new.closes);
            new.closes = closes;
        }
        fresh.room = room;
        fresh
    }

    /// Reconnects until an initial sync arrives, as y-websocket does: a
    /// server may ask a new connection to retry (1013) again while its own
    /// Redis connections recover.
    pub async fn resync(self) -> Client {
        let mut client = self;
        for _ in 0..10 {
            client = client.reconnect().await;
            client
                .wait_until("an initial sync or a close", |c| {
                    let state = c.state.lock().unwrap();
                    state.synced || state.ended
                })
                .await;
            let (synced, close) = {
                let state = client.state.lock().unwrap();
                (state.synced, state.close.clone())
            };
            if synced {
                return client;
            }
            assert_eq!(close.as_ref().map(|c| c.0), Some(1013), "{close:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no initial sync after ten reconnections");
    }

    /// Sends one binary message; a failed write is ignored (the reader sees the end).
    pub async fn send(&self, message: &[u8]) {
        let frame = client_frame(0x2, message);
        let _ = self.writer.lock().await.write_all(&frame).await;
    }

    /// Appends `text` to Y.Text "text" and sends the update; returns it (v1).
    pub async fn insert(&self, text: &str) -> Vec<u8> {
        let update = {
            let shared = self.doc.get_or_insert_text("text");
            let mut txn = self.doc.transact_mut();
            let end = shared.len(&txn);
            shared.insert(&mut txn, end, text);
            txn.encode_update_v1()
        };
        self.send(&encode_sync_update(&update)).await;
        update
    }

    /// Inserts `text` at `index` of Y.Text "text" and sends only that
    /// change (as y-websocket sends an edit); returns it (v1).
    pub async fn insert_at(&self, index: u32, text: &str) -> Vec<u8> {
        let update = {
            let shared = self.doc.get_or_insert_text("text");
            let mut txn = self.doc.transact_mut();
            let before = txn.state_vector();
            shared.insert(&mut txn, index, text);
            txn.encode_diff_v1(&before)
        };
        self.send(&encode_sync_update(&update)).await;
        update
    }

    pub fn text(&self) -> String {
        let shared = self.doc.get_or_insert_text("text");
        let txn = self.doc.transact();
        shared.get_string(&txn)
    }

    pub fn client_id(&self) -> yrs::ClientID {
        self.doc.client_id()
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// Waits until `done` holds for this client, panicking after `WAIT`
    /// with `what` and the client's text.
    pub async fn wait_until(&self, what: &str, mut done: impl FnMut(&Client) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.changed.notified();
            if done(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let (closes, ended) = {
                    let state = self.state.lock().unwrap();
                    (state.closes.clone(), state.ended)
                };
                let text = self.text();
                assert!(
                    done(self),
                    "timed out waiting for {what}; text {:?} ({} chars), closes {closes:?}, ended {ended}",
                    text.chars().take(60).collect::<String>(),
                    text.len()
                );
                return;
            }
        }
    }

    /// Waits until this client's document holds everything `other`'s does.
    pub async fn wait_for_state(&self, sv: &StateVector) {
        self.wait_until("a state vector", |c| c.state_vector().covers(sv))
            .await
    }

    /// Waits for the connection to end and returns the close frame, if any.
    pub async fn wait_closed(&self) -> Option<(u16, String)> {
        self.wait_until("the connection to end", |c| c.state.lock().unwrap().ended)
            .await;
        self.state.lock().unwrap().close.clone()
    }

    /// The clock ranges of `sender`'s items, message by message in the
    /// order they arrived (a message's ranges in clock order).
    pub fn ranges_from(&self, sender: yrs::ClientID) -> Vec<std::ops::Range<u32>> {
        let state = self.state.lock().unwrap();
        let mut ranges = Vec::new();
        for message in &state.received {
            for (client, found) in message.inserts.iter() {
                if *client == sender {
                    ranges.extend(found.iter().cloned());
                }
            }
        }
        ranges
    }

    /// How many received messages insert the item `id`.
    pub fn times_received(&self, id: &ID) -> usize {
        let state = self.state.lock().unwrap();
        state
            .received
            .iter()
            .filter(|r| r.inserts.contains(id))
            .count()
    }
}

trait Covers {
    fn covers(&self, other: &StateVector) -> bool;
}

impl Covers for StateVector {
    fn covers(&self, other: &StateVector) -> bool {
        other
            .iter()
            .all(|(client, clock)| self.get(client) >= *clock)
    }
}

/// The reading half of a client: applies what the server sends.
struct Reader {
    doc: yrs::Doc,
    state: Arc<Mutex<ClientState>>,
    changed: Arc<Notify>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl Reader {
    async fn run(self, reader: tokio::net::tcp::OwnedReadHalf) {
        let mut reader = tokio::io::BufReader::with_capacity(1 << 16, reader);
        let mut message = Vec::new();
        loop {
            let (fin, opcode, payload) = match read_frame(&mut reader).await {
                Ok(frame) => frame,
                Err(_) => break,
            };
            match opcode {
                0x8 => {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    let reason: String =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into();
                    let mut state = self.state.lock().unwrap();
                    state.closes.push((code, reason.clone()));
                    state.close = Some((code, reason));
                    break;
                }
                0x9 => {
                    let frame = client_frame(0xa, &payload);
                    let _ = self.writer.lock().await.write_all(&frame).await;
                }
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        self.handle(&std::mem::take(&mut message)).await;
                        self.changed.notify_waiters();
                    }
                }
                _ => {}
            }
        }
        self.state.lock().unwrap().ended = true;
        self.changed.notify_waiters();
    }

    async fn handle(&self, message: &[u8]) {
        let mut decoder = Decoder::new(message);
        if decoder.read_var_uint() != Ok(MESSAGE_SYNC) {
            return; // awareness, auth: not this client's business
        }
        let kind = decoder.read_var_uint().expect("sync type");
        let payload = decoder.read_var_bytes().expect("sync payload");
        match kind {
            SYNC_STEP1 => {
                let sv = StateVector::decode_v1(payload).expect("state vector");
                let diff = self.doc.transact().encode_diff_v1(&sv);
                let frame = client_frame(0x2, &encode_sync_step2(&diff));
                let _ = self.writer.lock().await.write_all(&frame).await;
            }
            SYNC_STEP2 | SYNC_UPDATE => {
                let update = yrs::Update::decode_v1(payload).expect("update v1");
                let inserts = update.insertions(true);
                self.doc
                    .transact_mut()
                    .apply_update(update)
                    .expect("update applies");
                let mut state = self.state.lock().unwrap();
                state.synced |= kind == SYNC_STEP2;
                state.received.push(Received { kind, inserts });
            }
            other => panic!("unknown sync message {other}"),
        }
    }
}
