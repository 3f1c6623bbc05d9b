//! `WsSession`: one per websocket connection. Validates every frame before it
//! goes to Redis, sends the initial sync and the room's deliveries, and
//! announces its user's departure when it stops.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};

use super::hub::{Hub, JoinRoom, LeaveRoom};
use super::room::{ConnId, Join, QueryAwareness, Room, CLOSE_TRY_AGAIN_LATER};
use crate::auth::{check_permission, now_ms, Access, AuthError, Authenticator, Grant};
use crate::document::AssembledDoc;
use crate::metrics;
use crate::protocol::{self, parse_client_frame, ClientMessage};
use crate::redis::RedisStore;

/// Close code for a frame that breaks the protocol; y-websocket does not reconnect.
pub const CLOSE_BAD_MESSAGE: u16 = 4400;
/// Close code for a frame over the size limit; y-websocket does not reconnect.
pub const CLOSE_TOO_LARGE: u16 = 4413;
/// Close code for an expired token; y-websocket does not reconnect.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4401;
/// Close code for lost permission; y-websocket does not reconnect.
pub const CLOSE_PERMISSION_REVOKED: u16 = 4403;

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// Close reasons travel in a control frame, which holds at most 125 bytes.
const MAX_REASON_BYTES: usize = 120;

/// Shuts a connection's socket from outside its session: the only way to drop
/// a client that stopped reading, because its session is not polled while the
/// socket's send buffer is full. Holds its own duplicate of the socket, so it
/// can never hit a reused descriptor.
#[derive(Clone)]
pub struct ConnectionKiller(Arc<TcpStream>);

impl ConnectionKiller {
    pub fn new(socket: TcpStream) -> Self {
        ConnectionKiller(Arc::new(socket))
    }

    pub fn kill(&self) {
        // Fails only if the socket is already gone, which is what we wanted.
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// What a room handed to a session that the session has not taken yet, and
/// when it last took something. A session whose socket is full is not polled,
/// so it stops taking: the room sees the backlog grow and the progress stop.
pub struct SendQueue {
    bytes: AtomicUsize,
    last_progress_ms: AtomicU64,
}

impl SendQueue {
    fn new() -> Self {
        SendQueue {
            bytes: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Adds `n` bytes; answers the backlog.
    pub fn push(&self, n: usize) -> usize {
        self.bytes.fetch_add(n, Ordering::Relaxed) + n
    }

    fn taken(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.progressed();
    }

    fn progressed(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn stalled_for(&self) -> Duration {
        Duration::from_millis(
            now_ms().saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)),
        )
    }
}

/// What a room sends to its sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    InitialSync {
        doc: Arc<AssembledDoc>,
        awareness: Option<Bytes>,
    },
    Deliver(Bytes),
    Close {
        code: u16,
        reason: &'static str,
    },
    /// Ask the permission callback again (for `user`, or everyone when None).
    Recheck {
        user: Option<String>,
    },
}

impl ToSession {
    /// Bytes this message adds to the session's outgoing queue accounting.
    pub fn queued_size(&self) -> usize {
        match self {
            ToSession::Deliver(bytes) => bytes.len(),
            _ => 0,
        }
    }
}

pub struct WsSession {
    conn: ConnId,
    room: String,
    docid: String,
    key: String,
    hub: Addr<Hub>,
    redis: RedisStore,
    room_addr: Option<Addr<Room>>,
    queue: Arc<SendQueue>,
    killer: Option<ConnectionKiller>,
    max_frame_bytes: usize,
    /// The client's SyncStep1, if it came before our initial sync went out.
    client_state_vector: Option<Vec<u8>>,
    synced: bool,
    /// The awareness client id this connection speaks for, and its last clock.
    awareness: Option<(u64, u64)>,
    /// A fragmented binary message being reassembled.
    fragments: Option<BytesMut>,
    last_heard: Instant,
    grant: Grant,
    /// For rechecks; None when auth is disabled.
    auth: Option<(Arc<Authenticator>, awc::Client)>,
}

pub struct SessionParams {
    pub conn: ConnId,
    pub room: String,
    pub docid: String,
    pub hub: Addr<Hub>,
    pub redis: RedisStore,
    pub killer: Option<ConnectionKiller>,
    pub max_frame_bytes: usize,
    pub grant: Grant,
    pub auth: Option<(Arc<Authenticator>, awc::Client)>,
}

impl WsSession {
    pub fn new(p: SessionParams) -> Self {
        let key = p.redis.keys().room_stream(&p.room, &p.docid);
        WsSession {
            conn: p.conn,
            room: p.room,
            docid: p.docid,
            key,
            hub: p.hub,
            redis: p.redis,
            room_addr: None,
            queue: Arc::new(SendQueue::new()),
            killer: p.killer,
            max_frame_bytes: p.max_frame_bytes,
            client_state_vector: None,
            synced: false,
            awareness: None,
            fragments: None,
            last_heard: Instant::now(),
            grant: p.grant,
            auth: p.auth,
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(reason[..end].to_owned()),
        }));
        ctx.stop();
    }

    fn reject(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        metrics::REJECTED_MESSAGES.inc();
        tracing::warn!(room = %self.room, conn = self.conn, code, reason, "closing connection: bad frame");
        self.close(ctx, code, reason);
    }

    fn handle_frame(&mut self, frame: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        match parse_client_frame(frame) {
            Err(e) => self.reject(ctx, CLOSE_BAD_MESSAGE, &e.to_string()),
            Ok(ClientMessage::SyncStep1 { state_vector }) => {
                // After our initial sync the client has everything; y-redis ignores it too.
                if !self.synced {
                    self.client_state_vector = Some(state_vector);
                }
            }
            // Read-only users still sync; their edits just go nowhere.
            Ok(ClientMessage::Update { .. }) if self.grant.access == Access::ReadOnly => {
                tracing::debug!(room = %self.room, conn = self.conn, "dropped an update from a read-only user");
            }
            Ok(ClientMessage::Update { message }) => self.publish(message, ctx),
            Ok(ClientMessage::Awareness { message, entries }) => {
                // Like y-redis: a single-client update names the connection's user.
                if let [entry] = entries.as_slice() {
                    match self.awareness {
                        Some((id, _)) if id != entry.client_id => {}
                        _ => self.awareness = Some((entry.client_id, entry.clock)),
                    }
                }
                self.publish(message, ctx);
            }
            Ok(ClientMessage::QueryAwareness) => {
                if let Some(room) = &self.room_addr {
                    room.send(QueryAwareness)
                        .into_actor(self)
                        .map(|reply, _, ctx| {
                            if let Ok(Some(message)) = reply {
                                send(ctx, message);
                            }
                        })
                        .wait(ctx);
                }
            }
            Ok(ClientMessage::EmptyUpdate | ClientMessage::Ignored) => {}
        }
    }

    /// Appends to the room stream, holding further frames of this connection
    /// until Redis answered, so its messages keep their order.
    fn publish(&mut self, message: Vec<u8>, ctx: &mut ws::WebsocketContext<Self>) {
        let redis = self.redis.clone();
        let key = self.key.clone();
        async move { redis.add_message(&key, &message).await }
            .into_actor(self)
            .map(|result, act, ctx| {
                if let Err(e) = result {
                    // The client keeps the edit and resends it after reconnecting.
                    metrics::ERRORS.inc();
                    tracing::error!(room = %act.room, conn = act.conn, error = %e, "could not publish a message");
                    act.close(ctx, CLOSE_TRY_AGAIN_LATER, "could not store the message, please reconnect");
                }
            })
            .wait(ctx);
    }

    fn send_initial_sync(
        &mut self,
        doc: Arc<AssembledDoc>,
        awareness: Option<Bytes>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        send(ctx, protocol::encode_sync_step1(&doc.state_vector));
        // A client that already holds part of the document gets only the rest.
        let client_sv = self
            .client_state_vector
            .take()
            .filter(|sv| sv.as_slice() != [0]);
        let Some(client_sv) = client_sv else {
            send(ctx, protocol::encode_sync_step2(&doc.update_v1));
            self.finish_sync(awareness, ctx);
            return;
        };
        let full = doc.clone();
        async move {
            tokio::task::spawn_blocking(move || yrs::diff_updates_v1(&doc.update_v1, &client_sv))
                .await
        }
        .into_actor(self)
        .map(move |diff, act, ctx| {
            let step2 = match diff {
                Ok(Ok(diff)) => protocol::encode_sync_step2(&diff),
                _ => protocol::encode_sync_step2(&full.update_v1),
            };
            send(ctx, step2);
            act.finish_sync(awareness, ctx);
        })
        .wait(ctx);
    }

    /// Re-asks the permission callback; closes with 4403 on lost access and
    /// switches between read-write and read-only otherwise. A failing callback
    /// keeps the session as it is: a flaky backend must not kick everyone out.
    fn recheck(&mut self, user: Option<String>, ctx: &mut ws::WebsocketContext<Self>) {
        let (Some((auth, http)), Some(own)) = (&self.auth, &self.grant.user_id) else {
            return;
        };
        if user.as_ref().is_some_and(|u| u != own) {
            return;
        }
        let (auth, http, room, own) = (auth.clone(), http.clone(), self.room.clone(), own.clone());
        async move { check_permission(&http, &auth.perm_callback, &room, &own, auth.timeout).await }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(access) => {
                    if access != act.grant.access {
                        tracing::info!(room = %act.room, conn = act.conn, ?access, "permission changed");
                        act.grant.access = access;
                    }
                }
                Err(AuthError::Forbidden) => {
                    tracing::info!(room = %act.room, conn = act.conn, "permission revoked; closing");
                    act.close(ctx, CLOSE_PERMISSION_REVOKED, "permission revoked");
                }
                Err(e) => {
                    tracing::warn!(room = %act.room, conn = act.conn, error = %e, "permission recheck failed; keeping session")
                }
            })
            .spawn(ctx);
    }

    fn finish_sync(&mut self, awareness: Option<Bytes>, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(awareness) = awareness {
            send(ctx, awareness);
        }
        self.synced = true;
        // A big initial sync takes a while to write; that is progress too.
        self.queue.progressed();
        tracing::debug!(room = %self.room, conn = self.conn, "initial sync sent");
    }
}

/// Sends one message to the client, counting it.
fn send(ctx: &mut ws::WebsocketContext<WsSession>, message: impl Into<Bytes>) {
    let message = message.into();
    metrics::MESSAGES_OUT.inc();
    metrics::BYTES_OUT.add(message.len() as u64);
    ctx.binary(message);
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::CONNECTIONS.inc();
        metrics::CONNECTIONS_TOTAL.inc();
        tracing::info!(room = %self.room, conn = self.conn, "connection opened");
        let join = JoinRoom {
            room: self.room.clone(),
            docid: self.docid.clone(),
            key: self.key.clone(),
            join: Join {
                conn: self.conn,
                session: ctx.address().recipient(),
                queue: self.queue.clone(),
                killer: self.killer.clone(),
            },
        };
        self.hub
            .send(join)
            .into_actor(self)
            .map(|room, act, ctx| match room {
                Ok(room) => act.room_addr = Some(room),
                Err(_) => act.close(ctx, CLOSE_TRY_AGAIN_LATER, "server is shutting down"),
            })
            .wait(ctx);
        if let Some(expires_at) = self.grant.expires_at_ms {
            let remaining = Duration::from_millis(expires_at.saturating_sub(now_ms()));
            ctx.run_later(remaining, |act, ctx| {
                tracing::info!(room = %act.room, conn = act.conn, "token expired; closing");
                act.close(ctx, CLOSE_TOKEN_EXPIRED, "token expired");
            });
        }
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_TIMEOUT {
                tracing::info!(room = %act.room, conn = act.conn, "client timed out");
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::CONNECTIONS.dec();
        if let Some((client_id, clock)) = self.awareness {
            let redis = self.redis.clone();
            let key = self.key.clone();
            let (room, conn) = (self.room.clone(), self.conn);
            actix::spawn(async move {
                let removal = protocol::encode_awareness_removal(client_id, clock);
                if let Err(e) = redis.add_message(&key, &removal).await {
                    tracing::warn!(room = %room, conn, error = %e, "could not announce that the user left");
                }
            });
        }
        if self.room_addr.is_some() {
            self.hub.do_send(LeaveRoom {
                key: self.key.clone(),
                conn: self.conn,
            });
        }
        tracing::info!(room = %self.room, conn = self.conn, "connection closed");
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::InitialSync { doc, awareness } => {
                self.send_initial_sync(doc, awareness, ctx)
            }
            ToSession::Deliver(message) => {
                self.queue.taken(message.len());
                send(ctx, message);
            }
            ToSession::Close { code, reason } => self.close(ctx, code, reason),
            ToSession::Recheck { user } => self.recheck(user, ctx),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Binary(frame)) => {
                metrics::MESSAGES_IN.inc();
                metrics::BYTES_IN.add(frame.len() as u64);
                self.handle_frame(&frame, ctx)
            }
            Ok(ws::Message::Text(_)) => self.reject(
                ctx,
                CLOSE_BAD_MESSAGE,
                "text frames are not part of the y-websocket protocol",
            ),
            Ok(ws::Message::Continuation(item)) => self.handle_fragment(item, ctx),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_) | ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                let reason = format!("message larger than {} bytes", self.max_frame_bytes);
                self.reject(ctx, CLOSE_TOO_LARGE, &reason);
            }
            Err(e) => self.reject(ctx, CLOSE_BAD_MESSAGE, &e.to_string()),
        }
    }
}

impl WsSession {
    fn handle_fragment(&mut self, item: Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (chunk, last) = match item {
            Item::FirstBinary(chunk) => {
                self.fragments = Some(BytesMut::new());
                (chunk, false)
            }
            Item::FirstText(_) => {
                return self.reject(
                    ctx,
                    CLOSE_BAD_MESSAGE,
                    "text frames are not part of the y-websocket protocol",
                )
            }
            Item::Continue(chunk) => (chunk, false),
            Item::Last(chunk) => (chunk, true),
        };
        let Some(buffer) = self.fragments.as_mut() else {
            return self.reject(
                ctx,
                CLOSE_BAD_MESSAGE,
                "continuation frame without a first frame",
            );
        };
        buffer.extend_from_slice(&chunk);
        if buffer.len() > self.max_frame_bytes {
            let reason = format!("message larger than {} bytes", self.max_frame_bytes);
            return self.reject(ctx, CLOSE_TOO_LARGE, &reason);
        }
        if last {
            if let Some(message) = self.fragments.take() {
                self.handle_frame(&message, ctx);
            }
        }
    }
}
