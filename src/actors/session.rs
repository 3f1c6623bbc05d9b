//! `WsSession`: one per websocket connection (ARCHITECTURE.md, "The path
//! of a frame"). A frame enters in [`WsSession::handle_frame`]: it is
//! rate-limited, dropped unread if it is an update from a read-only user,
//! parsed, and checked against what the room holds; what passes goes to
//! Redis through the session's outbox, in order, without ever pausing
//! deliveries. Deliveries come from the room as shared frames and leave in
//! one socket write per batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use y_redis_protocol::awareness::{
    encode_awareness_message, encode_awareness_removal, AwarenessEntry, AwarenessLimits,
};
use y_redis_protocol::doc_state::{DocState, Layered};
use y_redis_protocol::message::{
    encode_sync_step1, encode_sync_update, is_update_frame, parse_client_frame, ClientMessage,
    ProtocolError,
};
use y_redis_protocol::update::{analyze, InvalidUpdate, Verdict};

use super::backlog::{ConnectionKiller, SendQueue};
use super::messages::{
    ConnId, FromSession, ToSession, CLOSE_BAD_MESSAGE, CLOSE_PERMISSION_REVOKED,
    CLOSE_TOKEN_EXPIRED, CLOSE_TOO_LARGE, CLOSE_TOO_MANY_MESSAGES, CLOSE_TRY_AGAIN_LATER,
};
use super::revocation::RecheckLog;
use super::room::{Room, SharedView};
use super::rooms::ThreadRooms;
use crate::auth::{check_permission, now_ms, Access, AuthError, Authenticator, Grant};
use crate::limits::{Admission, Limits, TokenBucket};
use crate::metrics;
use crate::redis::RedisStore;

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// Close reasons travel in a control frame, which holds at most 125 bytes.
const MAX_REASON_BYTES: usize = 120;
/// Updates up to this size are checked on the socket's thread; larger ones
/// on the blocking pool, a few at a time process-wide.
const INLINE_CHECK_BYTES: usize = 64 * 1024;
static LARGE_CHECKS: Semaphore = Semaphore::const_new(2);
/// Updates a session may hold while their dependencies have not reached the
/// room (an honest client's wait for its own SyncStep2 is one or two).
const MAX_HELD_UPDATES: usize = 256;
const MAX_HELD_BYTES: usize = 8 << 20;

/// What every session of the process shares.
pub struct SessionContext {
    pub redis: RedisStore,
    pub max_frame_bytes: usize,
    pub awareness: AwarenessLimits,
    pub limits: Limits,
    /// None when auth is disabled.
    pub auth: Option<Arc<Authenticator>>,
    pub rechecks: Arc<RecheckLog>,
    /// Sessions open now (shutdown waits for them to close).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct SessionParams {
    pub conn: ConnId,
    pub room: String,
    pub docid: String,
    pub rooms: ThreadRooms,
    pub context: Arc<SessionContext>,
    pub killer: Option<ConnectionKiller>,
    pub grant: Grant,
    /// When the permission callback was asked (rechecks since then apply).
    pub authorized_at: Instant,
    pub http: awc::Client,
    pub admission: Admission,
}

/// How long an update may wait for its dependencies before the client is
/// asked to reconnect (a full sync both ways fills any gap an honest client
/// can have, e.g. edits it made while read-only).
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// Updates on their way from the client to the outbox.
#[derive(Default)]
struct Updates {
    /// Waiting for dependencies that have not reached the room.
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
    /// When the oldest held update started waiting.
    held_since: Option<Instant>,
    /// Arrived while a large update was being checked; checked after it.
    queued: VecDeque<Vec<u8>>,
    checking: bool,
    /// Updates accepted so far (held ones are retried when it moves).
    accepted: u64,
}

/// This connection's presence: the client id it speaks for, and a rate
/// limit that coalesces (only the newest state waits; none is lost).
struct Presence {
    owned: Option<(u64, u64)>,
    rate: TokenBucket,
    /// Entries that came before the room knew who is present: judged then.
    unjudged: Option<Vec<AwarenessEntry>>,
    /// This connection's newest entry, not sent yet (the rate).
    pending: Option<AwarenessEntry>,
    flush_scheduled: bool,
}

pub struct WsSession {
    conn: ConnId,
    room: String,
    docid: String,
    key: String,
    rooms: ThreadRooms,
    context: Arc<SessionContext>,
    room_addr: Option<Addr<Room>>,
    view: Option<SharedView>,
    queue: Arc<SendQueue>,
    killer: Option<ConnectionKiller>,
    synced: bool,
    /// What this session published that the room may not have read back yet.
    own: DocState,
    updates: Updates,
    outbox: VecDeque<Bytes>,
    outbox_bytes: usize,
    publishing: bool,
    presence: Presence,
    messages: TokenBucket,
    bytes: TokenBucket,
    /// A fragmented binary message being reassembled.
    fragments: Option<BytesMut>,
    last_heard: Instant,
    grant: Grant,
    authorized_at: Instant,
    http: awc::Client,
    /// Rechecks started; only the newest one's answer counts.
    recheck_seq: u64,
    _admission: Admission,
}

impl WsSession {
    pub fn new(p: SessionParams) -> Self {
        let key = p.context.redis.keys().room_stream(&p.room, &p.docid);
        let limits = &p.context.limits;
        let awareness_rate = limits.awareness_per_second;
        WsSession {
            conn: p.conn,
            room: p.room,
            docid: p.docid,
            key,
            rooms: p.rooms,
            room_addr: None,
            view: None,
            queue: Arc::new(SendQueue::default()),
            killer: p.killer,
            synced: false,
            own: DocState::default(),
            updates: Updates::default(),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            publishing: false,
            presence: Presence {
                owned: None,
                rate: TokenBucket::new(awareness_rate, awareness_rate.max(1.0) * 0.5 + 1.0),
                unjudged: None,
                pending: None,
                flush_scheduled: false,
            },
            messages: TokenBucket::new(
                limits.messages_per_second,
                limits.messages_per_second * 2.0,
            ),
            bytes: TokenBucket::new(
                limits.bytes_per_second,
                (limits.bytes_per_second * 2.0).max(p.context.max_frame_bytes as f64),
            ),
            context: p.context,
            fragments: None,
            last_heard: Instant::now(),
            grant: p.grant,
            authorized_at: p.authorized_at,
            http: p.http,
            recheck_seq: 0,
            _admission: p.admission,
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
        if !self.messages.try_take(1.0) || !self.bytes.try_take(frame.len() as f64) {
            metrics::RATE_LIMITED.inc();
            tracing::warn!(room = %self.room, conn = self.conn, "closing connection: message rate limit");
            return self.close(ctx, CLOSE_TOO_MANY_MESSAGES, "too many messages");
        }
        // Read-only users still sync; their edits go nowhere, unread.
        if self.grant.access == Access::ReadOnly && is_update_frame(frame) {
            metrics::READ_ONLY_DROPPED.inc();
            return;
        }
        match parse_client_frame(frame, &self.context.awareness) {
            Err(e) => {
                let code = if e.is_too_large() {
                    CLOSE_TOO_LARGE
                } else {
                    CLOSE_BAD_MESSAGE
                };
                self.reject(ctx, code, &e.to_string())
            }
            Ok(ClientMessage::SyncStep1 { state_vector }) => {
                // After our initial sync the client has everything; y-redis ignores it too.
                if let (false, Some(room)) = (self.synced, &self.room_addr) {
                    room.do_send(FromSession::StateVector {
                        conn: self.conn,
                        state_vector: state_vector.to_vec(),
                    });
                }
            }
            Ok(ClientMessage::Update { update, .. }) => {
                self.receive_update(update.to_vec(), ctx);
                self.retry_held(ctx);
            }
            Ok(ClientMessage::Awareness { entries, .. }) => self.receive_awareness(entries, ctx),
            Ok(ClientMessage::QueryAwareness) => {
                let present = self
                    .view
                    .as_ref()
                    .and_then(|view| view.borrow().awareness.encode_present());
                if let Some(message) = present {
                    send(ctx, message);
                }
            }
            Ok(ClientMessage::Auth) => {}
        }
    }

    fn receive_update(&mut self, update: Vec<u8>, ctx: &mut ws::WebsocketContext<Self>) {
        if self.updates.checking {
            self.updates.queued.push_back(update);
        } else {
            self.check_update(update, ctx);
        }
    }

    /// Checks an update against the room and what this session published.
    fn check_update(&mut self, update: Vec<u8>, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(view) = self.view.clone().filter(|v| v.borrow().doc.is_some()) else {
            // The room does not know its document yet: judged once it does.
            return self.hold(update, ctx);
        };
        if update.len() <= INLINE_CHECK_BYTES {
            let verdict = {
                let view = view.borrow();
                let Some(doc) = view.doc.as_ref() else { return };
                let known = Layered {
                    base: doc,
                    top: &self.own,
                };
                analyze(&update, &known).map(|analysis| analysis.verdict(&known))
            };
            return self.apply_verdict(update, verdict, ctx);
        }
        // What is accepted against a snapshot stays acceptable: the room only grows.
        let base = view.borrow().doc.clone().unwrap_or_default();
        let top = self.own.clone();
        self.updates.checking = true;
        let check = async move {
            let _permit = LARGE_CHECKS.acquire().await;
            tokio::task::spawn_blocking(move || {
                let known = Layered {
                    base: &base,
                    top: &top,
                };
                let verdict = analyze(&update, &known).map(|analysis| analysis.verdict(&known));
                (update, verdict)
            })
            .await
        };
        ctx.spawn(check.into_actor(self).map(|checked, act, ctx| {
            act.updates.checking = false;
            match checked {
                Ok((update, verdict)) => act.apply_verdict(update, verdict, ctx),
                Err(_) => return act.close(ctx, CLOSE_TRY_AGAIN_LATER, "server error"),
            }
            while !act.updates.checking {
                let Some(next) = act.updates.queued.pop_front() else {
                    break;
                };
                act.check_update(next, ctx);
            }
            act.retry_held(ctx);
        }));
    }

    fn apply_verdict(
        &mut self,
        update: Vec<u8>,
        verdict: Result<Verdict, InvalidUpdate>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        match verdict {
            Err(e) => self.reject(ctx, CLOSE_BAD_MESSAGE, &ProtocolError::from(e).to_string()),
            Ok(Verdict::Accept(effects)) => {
                self.own.apply(&effects);
                self.updates.accepted += 1;
                self.publish(Bytes::from(encode_sync_update(&update)), ctx);
            }
            Ok(Verdict::Redundant) => metrics::REDUNDANT_UPDATES.inc(),
            Ok(Verdict::Hold { missing }) => {
                tracing::debug!(room = %self.room, conn = self.conn, client = missing.client, clock = missing.clock, "holding an update until its dependencies reach the room");
                self.hold(update, ctx);
            }
        }
    }

    fn hold(&mut self, update: Vec<u8>, ctx: &mut ws::WebsocketContext<Self>) {
        let held = &mut self.updates;
        if held.held.len() >= MAX_HELD_UPDATES || held.held_bytes + update.len() > MAX_HELD_BYTES {
            return self.reject(
                ctx,
                CLOSE_BAD_MESSAGE,
                "too many updates whose dependencies never reached the room",
            );
        }
        held.held_bytes += update.len();
        held.held.push_back(update);
        if held.held_since.is_none() {
            held.held_since = Some(Instant::now());
            self.ask_for_missing(ctx);
            ctx.run_later(HOLD_TIMEOUT, |act, ctx| {
                if act
                    .updates
                    .held_since
                    .is_some_and(|since| since.elapsed() >= HOLD_TIMEOUT)
                {
                    tracing::info!(room = %act.room, conn = act.conn, held = act.updates.held.len(), "updates still miss their dependencies; asking the client to resync");
                    act.close(ctx, CLOSE_TRY_AGAIN_LATER, "missing updates, please resync");
                }
            });
        }
    }

    /// Sends the client a SyncStep1 with what the room holds: y-websocket
    /// answers with a SyncStep2 of everything the room lacks, which fills
    /// the gap a held update waits for (if the client has it).
    fn ask_for_missing(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(view) = &self.view else { return };
        let view = view.borrow();
        let Some(doc) = &view.doc else { return };
        let known = Layered {
            base: doc,
            top: &self.own,
        };
        send(ctx, encode_sync_step1(&known.encode_state_vector()));
    }

    /// Judges held updates again after the room or this session moved on,
    /// until no more of them pass.
    fn retry_held(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        loop {
            if self.updates.held.is_empty() || self.updates.checking {
                return;
            }
            let accepted = self.updates.accepted;
            let held = std::mem::take(&mut self.updates.held);
            self.updates.held_bytes = 0;
            for update in held {
                self.receive_update(update, ctx);
            }
            if self.updates.held.is_empty() {
                self.updates.held_since = None;
            }
            if self.updates.accepted == accepted {
                return;
            }
        }
    }

    /// Applies the presence rules to an awareness message (ARCHITECTURE.md,
    /// "Awareness"). A connection speaks for one client id: the first one it
    /// sends that nobody else's live state uses. Its own entry goes on
    /// (coalesced under the rate); entries for other ids are dropped: either
    /// echoes (y-websocket sends back every change it receives, which the
    /// room already has) or attempts to change someone else's presence,
    /// which are counted.
    fn receive_awareness(
        &mut self,
        entries: Vec<AwarenessEntry>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(view) = self.view.clone().filter(|v| v.borrow().doc.is_some()) else {
            // Judged once the room knows who is present (the initial sync).
            self.presence.unjudged = Some(entries);
            return;
        };
        let now = now_ms();
        let mut own = None;
        let mut refused = 0;
        {
            let view = view.borrow();
            let states = &view.awareness;
            for entry in entries {
                let mine = match self.presence.owned {
                    Some((id, _)) => entry.client_id == id,
                    None => own.is_none() && !states.is_live(entry.client_id, now),
                };
                if mine {
                    if own
                        .as_ref()
                        .is_none_or(|o: &AwarenessEntry| o.clock <= entry.clock)
                    {
                        own = Some(entry);
                    }
                } else if states.would_take(entry.client_id, entry.clock, &entry.state) {
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            metrics::AWARENESS_REFUSED.add(refused);
            tracing::debug!(room = %self.room, conn = self.conn, refused, "dropped awareness entries for client ids this connection does not own");
        }
        let Some(own) = own else { return };
        let last = self.presence.owned.map_or(0, |(_, c)| c);
        self.presence.owned = Some((own.client_id, last.max(own.clock)));
        self.presence.pending = Some(own);
        self.flush_presence(ctx);
    }

    /// Sends this connection's newest awareness entry if the rate allows,
    /// else waits for the rate (newer entries replace it meanwhile).
    fn flush_presence(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(entries) = self.presence.unjudged.take() {
            if self.view.as_ref().is_some_and(|v| v.borrow().doc.is_some()) {
                self.receive_awareness(entries, ctx);
            } else {
                self.presence.unjudged = Some(entries);
            }
            return;
        }
        if self.presence.pending.is_none() {
            return;
        }
        if self.presence.rate.try_take(1.0) {
            if let Some(entry) = self.presence.pending.take() {
                let message = encode_awareness_message(std::iter::once(&entry));
                self.publish(Bytes::from(message), ctx);
            }
            return;
        }
        metrics::AWARENESS_COALESCED.inc();
        if !self.presence.flush_scheduled {
            self.presence.flush_scheduled = true;
            let wait = self.presence.rate.wait_for(1.0);
            ctx.run_later(wait, |act, ctx| {
                act.presence.flush_scheduled = false;
                act.flush_presence(ctx);
            });
        }
    }

    /// Queues a message for Redis; messages leave in order, several per
    /// round trip, while deliveries go on.
    fn publish(&mut self, message: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        self.outbox_bytes += message.len();
        self.outbox.push_back(message);
        // The rate limits keep this small; past it Redis is not keeping up.
        let limit = (64 << 20).max(self.context.max_frame_bytes * 2);
        if self.outbox_bytes > limit {
            metrics::ERRORS.inc();
            tracing::error!(room = %self.room, conn = self.conn, queued = self.outbox_bytes, "redis is not keeping up with this connection");
            return self.close(ctx, CLOSE_TRY_AGAIN_LATER, "server busy, please reconnect");
        }
        self.send_outbox(ctx);
    }

    fn send_outbox(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.publishing || self.outbox.is_empty() {
            return;
        }
        self.publishing = true;
        let batch: Vec<Bytes> = self.outbox.drain(..).collect();
        let sent: usize = batch.iter().map(Bytes::len).sum();
        let (redis, key) = (self.context.redis.clone(), self.key.clone());
        let publishing = async move { redis.add_messages(&key, &batch).await };
        ctx.spawn(publishing.into_actor(self).map(move |result, act, ctx| {
            act.publishing = false;
            act.outbox_bytes = act.outbox_bytes.saturating_sub(sent);
            match result {
                Ok(()) => act.send_outbox(ctx),
                Err(e) => {
                    // The client keeps its edits and sends them again after reconnecting.
                    metrics::ERRORS.inc();
                    tracing::error!(room = %act.room, conn = act.conn, error = %e, "could not publish messages");
                    act.outbox.clear();
                    act.close(ctx, CLOSE_TRY_AGAIN_LATER, "could not store the message, please reconnect");
                }
            }
        }));
    }

    fn initial_sync(
        &mut self,
        step1: Bytes,
        step2: Bytes,
        awareness: Option<Bytes>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let size = step1.len() + step2.len();
        send(ctx, step1);
        send(ctx, step2);
        if let Some(awareness) = awareness {
            send(ctx, awareness);
        }
        self.synced = true;
        self.queue.taken(size);
        tracing::debug!(room = %self.room, conn = self.conn, "initial sync sent");
        // The room knows its document now: judge what waited for that.
        self.retry_held(ctx);
        self.flush_presence(ctx);
    }

    /// Asks the permission callback again; closes with 4403 on lost access
    /// and switches between read-write and read-only otherwise. A failing
    /// callback keeps the session as it is: a flaky backend must not kick
    /// everyone out. Only the newest recheck's answer counts.
    fn recheck(&mut self, user: Option<String>, ctx: &mut ws::WebsocketContext<Self>) {
        let (Some(auth), Some(own)) = (&self.context.auth, &self.grant.user_id) else {
            return;
        };
        if user.as_ref().is_some_and(|u| u != own) {
            return;
        }
        self.recheck_seq += 1;
        let seq = self.recheck_seq;
        let (auth, http, room, own) = (
            auth.clone(),
            self.http.clone(),
            self.room.clone(),
            own.clone(),
        );
        async move { check_permission(&http, &auth.perm_callback, &room, &own, auth.timeout).await }
            .into_actor(self)
            .map(move |result, act, ctx| {
                if seq != act.recheck_seq {
                    return; // a newer recheck decides
                }
                match result {
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
                }
            })
            .spawn(ctx);
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
        self.context
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::CONNECTIONS_TOTAL.inc();
        tracing::info!(room = %self.room, conn = self.conn, "connection opened");
        let (room, view) = self.rooms.join(&self.room, &self.docid, &self.key);
        room.do_send(FromSession::Join {
            conn: self.conn,
            session: ctx.address().recipient(),
            queue: self.queue.clone(),
            killer: self.killer.clone(),
        });
        self.room_addr = Some(room);
        self.view = Some(view);
        // A recheck of this user that ran while the upgrade was being authorized.
        if let Some(user) = self.grant.user_id.clone() {
            if self
                .context
                .rechecks
                .since(self.authorized_at, &self.key, &user)
            {
                self.recheck(Some(user), ctx);
            }
        }
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
        self.context
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((client_id, clock)) = self.presence.owned {
            let redis = self.context.redis.clone();
            let key = self.key.clone();
            let (room, conn) = (self.room.clone(), self.conn);
            actix::spawn(async move {
                let removal = Bytes::from(encode_awareness_removal(client_id, clock));
                if let Err(e) = redis.add_messages(&key, &[removal]).await {
                    tracing::warn!(room = %room, conn, error = %e, "could not announce that the user left");
                }
            });
        }
        if let Some(room) = &self.room_addr {
            room.do_send(FromSession::Leave { conn: self.conn });
            self.rooms.leave(&self.key);
        }
        tracing::info!(room = %self.room, conn = self.conn, "connection closed");
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::InitialSync {
                step1,
                step2,
                awareness,
            } => self.initial_sync(step1, step2, awareness, ctx),
            ToSession::Deliver { delivery, start } => {
                let mut size = 0;
                for frame in &delivery.frames[start..] {
                    size += frame.len();
                    send(ctx, frame.clone());
                }
                self.queue.taken(size);
                if let (false, Some(view)) = (self.own.is_empty(), &self.view) {
                    if let Some(doc) = &view.borrow().doc {
                        self.own.forget_known(doc);
                    }
                }
                self.retry_held(ctx);
            }
            ToSession::Close { code, reason } => self.close(ctx, code, &reason),
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
                let reason = format!("message larger than {} bytes", self.context.max_frame_bytes);
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
        if buffer.len() > self.context.max_frame_bytes {
            let reason = format!("message larger than {} bytes", self.context.max_frame_bytes);
            return self.reject(ctx, CLOSE_TOO_LARGE, &reason);
        }
        if last {
            if let Some(message) = self.fragments.take() {
                self.handle_frame(&message, ctx);
            }
        }
    }
}
