//! `WsSession`: one per websocket connection (ARCHITECTURE.md, "The path
//! of a frame"). A frame enters in `WsSession::handle_frame`: it is
//! rate-limited, dropped unread if it is an update from a read-only user,
//! parsed, and checked against what the room holds; what passes goes to
//! Redis through the session's outbox, in order, without ever pausing
//! deliveries. Deliveries come from the room as shared frames and leave in
//! one socket write per batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::rc::Rc;

use actix::prelude::*;
use actix_rt::net::TcpStream;
use bytes::Bytes;
use y_redis_protocol::awareness::{
    encode_awareness_message, encode_awareness_removal, AwarenessEntry, AwarenessLimits,
};
use y_redis_protocol::doc_state::{DocState, Layered};
use y_redis_protocol::message::{
    encode_sync_step1, encode_sync_update, is_update_frame, parse_client_frame, ClientMessage,
    ProtocolError,
};
use y_redis_protocol::update::{judge, Id, InvalidUpdate, Known, Verdict};

use super::checks::{self, INLINE_CHECK_BYTES};
use super::messages::{
    ConnId, FromSession, ToSession, CLOSE_BAD_MESSAGE, CLOSE_PERMISSION_REVOKED,
    CLOSE_TOKEN_EXPIRED, CLOSE_TOO_LARGE, CLOSE_TOO_MANY_MESSAGES, CLOSE_TRY_AGAIN_LATER,
};
use super::outbox::{Destination, Outbox};
use super::revocation::RecheckLog;
use super::room::SharedView;
use super::rooms::{JoinedRoom, ThreadRooms};
use crate::auth::{check_permission, now_ms, Access, AuthError, Authenticator, Grant};
use crate::limits::{Admission, Limits, TokenBucket};
use crate::metrics;
use crate::socket::{self, Flush, Outlet};
use crate::streams::RedisStreams;
use y_redis_protocol::websocket::{FrameError, Incoming};

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// How long a client over the backlog cap may go without taking anything
/// before it counts as not reading (a slow but reading client is spared).
const STALL_GRACE: Duration = Duration::from_secs(5);
/// Past this multiple of the cap a client is cut off even if it still reads.
const HARD_CAP_FACTOR: usize = 4;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// Updates a session may hold while their dependencies have not reached the
/// room (an honest client's wait for its own SyncStep2 is one or two).
const MAX_HELD_UPDATES: usize = 4096;
const MAX_HELD_BYTES: usize = 8 << 20;

/// What every session of the process shares.
pub struct SessionContext {
    pub redis: RedisStreams,
    pub max_frame_bytes: usize,
    pub awareness: AwarenessLimits,
    pub limits: Limits,
    /// None when auth is disabled.
    pub auth: Option<Arc<Authenticator>>,
    pub rechecks: Arc<RecheckLog>,
    /// Sessions open now (shutdown waits for them to close).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// Backlog of a client that stopped reading before it is cut off.
    pub max_send_queue_bytes: usize,
    /// Clients get their own messages back, as from @y/redis.
    pub echo_own_messages: bool,
}

pub struct SessionParams {
    pub conn: ConnId,
    pub room: String,
    pub docid: String,
    pub rooms: ThreadRooms,
    pub context: Arc<SessionContext>,
    pub stream: TcpStream,
    /// Bytes the handshake read after the request (the client's first frames).
    pub early: Vec<u8>,
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
    held: VecDeque<Held>,
    held_bytes: usize,
    /// When the oldest held update started waiting.
    held_since: Option<Instant>,
    /// Arrived while a large update was being checked; checked after it.
    queued: VecDeque<Vec<u8>>,
    checking: bool,
    /// Updates accepted so far (held ones are retried when it moves).
    accepted: u64,
}

/// An update waiting for a struct the room lacks.
struct Held {
    update: Vec<u8>,
    /// The first struct it misses; `None` if it came before the room knew
    /// its document. Judging it again before that struct arrives would
    /// only repeat the verdict.
    waits_for: Option<Id>,
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
    room: Arc<str>,
    docid: String,
    key: Arc<str>,
    rooms: ThreadRooms,
    context: Arc<SessionContext>,
    /// The room of this thread the session joined (once started).
    joined: Option<JoinedRoom>,
    out: Rc<Outlet>,
    /// A write is waiting for the socket to take more.
    write_pending: bool,
    /// Until the session starts: the socket's reading side.
    reading: Option<(Rc<TcpStream>, Vec<u8>)>,
    synced: bool,
    /// What this session published that the room may not have read back yet.
    own: DocState,
    updates: Updates,
    outbox: Outbox,
    presence: Presence,
    messages: TokenBucket,
    bytes: TokenBucket,
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
        let stream = Rc::new(p.stream);
        let limits = &p.context.limits;
        let awareness_rate = limits.awareness_per_second;
        WsSession {
            conn: p.conn,
            room: p.room.into(),
            docid: p.docid,
            key: key.into(),
            rooms: p.rooms,
            joined: None,
            out: Outlet::new(stream.clone()),
            write_pending: false,
            reading: Some((stream, p.early)),
            synced: false,
            own: DocState::default(),
            updates: Updates::default(),
            outbox: Outbox::default(),
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
            last_heard: Instant::now(),
            grant: p.grant,
            authorized_at: p.authorized_at,
            http: p.http,
            recheck_seq: 0,
            _admission: p.admission,
        }
    }

    /// Sends a close frame with `code` and `reason`, and stops the session
    /// (its socket closes once the frame is written, or after a grace).
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        self.out.outgoing().close(code, reason);
        self.flush(ctx);
        ctx.stop();
    }

    /// Queues one message for the client (written at the next flush).
    fn send(&mut self, message: impl Into<Bytes>) {
        let message = message.into();
        count_out(message.len());
        self.out.outgoing().binary(message);
    }

    /// Writes what is queued; if the socket is full, waits until it takes
    /// more. A client that stops reading is cut off past the backlog cap.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !self.write_pending {
            match self.out.outgoing().flush() {
                Flush::Done => return,
                Flush::Failed => return ctx.stop(),
                Flush::Blocked => {}
            }
        }
        let cap = self.context.max_send_queue_bytes;
        let (queued, stalled) = {
            let out = self.out.outgoing();
            (out.queued(), out.stalled_for())
        };
        if queued > cap && (stalled > STALL_GRACE || queued > cap.saturating_mul(HARD_CAP_FACTOR)) {
            metrics::SLOW_CLIENTS.inc();
            tracing::warn!(room = %self.room, conn = self.conn, queued, stalled_ms = stalled.as_millis() as u64, "client is not reading its socket; disconnecting it");
            self.out.outgoing().abort();
            return ctx.stop();
        }
        if self.write_pending {
            return;
        }
        self.write_pending = true;
        let stream = self.out.outgoing().stream().clone();
        let writable = async move { stream.writable().await };
        ctx.spawn(writable.into_actor(self).map(|ready, act, ctx| {
            act.write_pending = false;
            match ready {
                Ok(()) => act.flush(ctx),
                Err(_) => ctx.stop(),
            }
        }));
    }

    /// Whether the room should wake this session on every delivery: while
    /// its own updates are in flight or held, a delivery may settle them.
    fn watch_deliveries(&self) {
        self.out
            .set_watching(!self.own.is_empty() || !self.updates.held.is_empty());
    }

    fn reject(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        metrics::REJECTED_MESSAGES.inc();
        tracing::warn!(room = %self.room, conn = self.conn, code, reason, "closing connection: bad frame");
        self.close(ctx, code, reason);
    }

    fn rate_limited(&mut self, ctx: &mut Context<Self>) {
        metrics::RATE_LIMITED.inc();
        tracing::warn!(room = %self.room, conn = self.conn, "closing connection: message rate limit");
        self.close(ctx, CLOSE_TOO_MANY_MESSAGES, "too many messages");
    }

    /// Whether the struct a held update waits for is here now (in the room
    /// or among this session's own updates).
    fn has_arrived(&self, waits_for: Option<Id>) -> bool {
        let Some(view) = self.view() else {
            return false;
        };
        let view = view.borrow();
        let Some(doc) = &view.doc else {
            return false;
        };
        waits_for.is_none_or(|missing| {
            let known = Layered {
                base: doc,
                top: &self.own,
            };
            known.clock(missing.client) > missing.clock
        })
    }

    fn handle_frame(&mut self, frame: &[u8], ctx: &mut Context<Self>) {
        if !self.messages.try_take(1.0) || !self.bytes.try_take(frame.len() as f64) {
            return self.rate_limited(ctx);
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
                if let (false, Some(joined)) = (self.synced, &self.joined) {
                    joined.addr.do_send(FromSession::StateVector {
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
                    .view()
                    .and_then(|view| view.borrow().awareness.encode_present());
                if let Some(message) = present {
                    self.send(message);
                }
            }
            Ok(ClientMessage::Auth) => {}
        }
    }

    fn receive_update(&mut self, update: Vec<u8>, ctx: &mut Context<Self>) {
        if self.updates.checking {
            self.updates.queued.push_back(update);
        } else {
            self.check_update(update, ctx);
        }
    }

    /// Checks an update against the room and what this session published.
    fn check_update(&mut self, update: Vec<u8>, ctx: &mut Context<Self>) {
        let Some(view) = self.view().cloned().filter(|v| v.borrow().doc.is_some()) else {
            // The room does not know its document yet: judged once it does.
            return self.hold(update, None, ctx);
        };
        if update.len() <= INLINE_CHECK_BYTES {
            let verdict = {
                let view = view.borrow();
                let Some(doc) = view.doc.as_ref() else { return };
                let known = Layered {
                    base: doc,
                    top: &self.own,
                };
                judge(&update, &known)
            };
            return self.apply_verdict(update, verdict, ctx);
        }
        // What is accepted against a snapshot stays acceptable: the room only grows.
        let base = view.borrow().doc.clone().unwrap_or_default();
        let top = self.own.clone();
        self.updates.checking = true;
        let check = checks::off_thread(move || {
            let known = Layered {
                base: &base,
                top: &top,
            };
            let verdict = judge(&update, &known);
            (update, verdict)
        });
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
        ctx: &mut Context<Self>,
    ) {
        match verdict {
            Err(e) => self.reject(ctx, CLOSE_BAD_MESSAGE, &ProtocolError::from(e).to_string()),
            Ok(Verdict::Accept(effects)) => {
                self.own.apply(&effects);
                self.watch_deliveries();
                self.updates.accepted += 1;
                self.publish(Bytes::from(encode_sync_update(&update)), ctx);
            }
            Ok(Verdict::Redundant) => {
                metrics::REDUNDANT_UPDATES.inc();
            }
            Ok(Verdict::Hold { missing }) => {
                tracing::debug!(room = %self.room, conn = self.conn, client = missing.client, clock = missing.clock, "holding an update until its dependencies reach the room");
                self.hold(update, Some(missing), ctx);
            }
        }
    }

    fn hold(&mut self, update: Vec<u8>, waits_for: Option<Id>, ctx: &mut Context<Self>) {
        let held = &mut self.updates;
        if held.held.len() >= MAX_HELD_UPDATES || held.held_bytes + update.len() > MAX_HELD_BYTES {
            return self.reject(
                ctx,
                CLOSE_BAD_MESSAGE,
                "too many updates whose dependencies never reached the room",
            );
        }
        held.held_bytes += update.len();
        held.held.push_back(Held { update, waits_for });
        self.watch_deliveries();
        // Before the initial sync, updates wait for the room's document,
        // however long loading it takes; the clock runs from then on.
        if self.synced {
            self.start_hold_clock(ctx);
        }
    }

    /// Updates wait for their dependencies from now: ask the client for what
    /// the room lacks, and ask it to resync if they still wait after a while.
    fn start_hold_clock(&mut self, ctx: &mut Context<Self>) {
        if self.updates.held.is_empty() || self.updates.held_since.is_some() {
            return;
        }
        self.updates.held_since = Some(Instant::now());
        self.ask_for_missing();
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

    /// Sends the client a SyncStep1 with what the room holds: y-websocket
    /// answers with a SyncStep2 of everything the room lacks, which fills
    /// the gap a held update waits for (if the client has it).
    fn ask_for_missing(&mut self) {
        let state_vector = {
            let Some(view) = self.view() else { return };
            let view = view.borrow();
            let Some(doc) = &view.doc else { return };
            Layered {
                base: doc,
                top: &self.own,
            }
            .encode_state_vector()
        };
        self.send(encode_sync_step1(&state_vector));
    }

    /// Judges held updates again after the room or this session moved on,
    /// until no more of them pass.
    fn retry_held(&mut self, ctx: &mut Context<Self>) {
        loop {
            if self.updates.held.is_empty() || self.updates.checking {
                return;
            }
            // Most deliveries bring nothing a held update waits for: the
            // queue is then left as it is, not rebuilt.
            if !self
                .updates
                .held
                .iter()
                .any(|h| self.has_arrived(h.waits_for))
            {
                return;
            }
            let (ready, waiting): (VecDeque<Held>, VecDeque<Held>) =
                std::mem::take(&mut self.updates.held)
                    .into_iter()
                    .partition(|held| self.has_arrived(held.waits_for));
            self.updates.held = waiting;
            let size = |held: &Held| held.update.len();
            self.updates.held_bytes -= ready.iter().map(size).sum::<usize>();
            // Judging again costs what judging first did: a client whose
            // updates are released struct by struct, over and over, pays for
            // it as for sending them again. (Those that waited for the room's
            // document are judged again once, free.)
            let rejudged: usize = ready
                .iter()
                .filter(|held| held.waits_for.is_some())
                .map(size)
                .sum();
            if !self.bytes.try_take(rejudged as f64) {
                return self.rate_limited(ctx);
            }
            let accepted = self.updates.accepted;
            for held in ready {
                self.receive_update(held.update, ctx);
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
    fn receive_awareness(&mut self, entries: Vec<AwarenessEntry>, ctx: &mut Context<Self>) {
        let Some(view) = self.view().cloned().filter(|v| v.borrow().doc.is_some()) else {
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
            metrics::AWARENESS_REFUSED.inc_by(refused);
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
    fn flush_presence(&mut self, ctx: &mut Context<Self>) {
        if let Some(entries) = self.presence.unjudged.take() {
            if self.view().is_some_and(|v| v.borrow().doc.is_some()) {
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
    fn publish(&mut self, message: Bytes, ctx: &mut Context<Self>) {
        let queued = self.outbox.push(message, || self.destination(ctx));
        // The rate limits keep this small; past it Redis is not keeping up.
        let limit = (64 << 20).max(self.context.max_frame_bytes * 2);
        if queued > limit {
            metrics::ERRORS.inc();
            tracing::error!(room = %self.room, conn = self.conn, queued, "redis is not keeping up with this connection");
            self.close(ctx, CLOSE_TRY_AGAIN_LATER, "server busy, please reconnect");
        }
    }

    /// The joined room's view.
    fn view(&self) -> Option<&SharedView> {
        self.joined.as_ref().map(|joined| &joined.view)
    }

    fn destination(&self, ctx: &Context<Self>) -> Destination {
        Destination {
            redis: self.context.redis.clone(),
            stream_key: self.key.clone(),
            room: self.room.clone(),
            conn: self.conn,
            session: ctx.address().recipient(),
            outlet: (!self.context.echo_own_messages).then(|| Rc::downgrade(&self.out)),
        }
    }

    /// The room wrote the initial sync to the socket.
    fn synced(&mut self, ctx: &mut Context<Self>) {
        self.synced = true;
        tracing::debug!(room = %self.room, conn = self.conn, "initial sync sent");
        // The room knows its document now: judge what waited for that.
        self.retry_held(ctx);
        self.start_hold_clock(ctx);
        self.flush_presence(ctx);
    }

    /// Asks the permission callback again; closes with 4403 on lost access
    /// and switches between read-write and read-only otherwise. A failing
    /// callback keeps the session as it is: a flaky backend must not kick
    /// everyone out. Only the newest recheck's answer counts.
    fn recheck(&mut self, user: Option<String>, ctx: &mut Context<Self>) {
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

/// Counts one message sent to the client.
fn count_out(bytes: usize) {
    metrics::MESSAGES_OUT.inc();
    metrics::BYTES_OUT.inc_by(bytes as u64);
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::CONNECTIONS.inc();
        self.context
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::CONNECTIONS_TOTAL.inc();
        tracing::info!(room = %self.room, conn = self.conn, "connection opened");
        let joined = self.rooms.join(&self.room, &self.docid, &self.key);
        joined
            .view
            .borrow_mut()
            .arriving
            .insert(self.conn, self.out.clone());
        joined.addr.do_send(FromSession::Join {
            conn: self.conn,
            session: ctx.address().recipient(),
        });
        if let Some((stream, early)) = self.reading.take() {
            ctx.add_stream(socket::incoming(
                stream,
                early,
                self.context.max_frame_bytes,
            ));
        }
        self.joined = Some(joined);
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
                act.out.outgoing().ping();
                act.flush(ctx);
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        metrics::CONNECTIONS.dec();
        self.context
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((client_id, clock)) = self.presence.owned {
            // After whatever the client sent: the outbox outlives the session.
            let removal = Bytes::from(encode_awareness_removal(client_id, clock));
            self.outbox.push(removal, || self.destination(ctx));
        }
        if let Some(joined) = &self.joined {
            joined.addr.do_send(FromSession::Leave { conn: self.conn });
            self.rooms.leave(&self.key, joined.id);
        }
        actix::spawn(socket::linger(self.out.clone()));
        tracing::info!(room = %self.room, conn = self.conn, "connection closed");
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Synced => self.synced(ctx),
            ToSession::Delivered => {
                if let (false, Some(view)) = (self.own.is_empty(), self.view().cloned()) {
                    if let Some(doc) = &view.borrow().doc {
                        self.own.forget_known(doc);
                    }
                }
                self.retry_held(ctx);
                self.watch_deliveries();
            }
            ToSession::Close { code, reason } => self.close(ctx, code, &reason),
            ToSession::Recheck { user } => self.recheck(user, ctx),
        }
        // Everything this message queued leaves in one write.
        self.flush(ctx);
    }
}

impl StreamHandler<Result<Incoming, FrameError>> for WsSession {
    fn handle(&mut self, msg: Result<Incoming, FrameError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(Incoming::Binary(frame)) => {
                metrics::MESSAGES_IN.inc();
                metrics::BYTES_IN.inc_by(frame.len() as u64);
                self.handle_frame(&frame, ctx)
            }
            Ok(Incoming::Text) => self.reject(
                ctx,
                CLOSE_BAD_MESSAGE,
                "text frames are not part of the y-websocket protocol",
            ),
            Ok(Incoming::Ping(payload)) => self.out.outgoing().pong(&payload),
            Ok(Incoming::Pong) => {}
            Ok(Incoming::Close(reason)) => {
                // Answer with the client's code, as RFC 6455 asks, and end.
                let code = reason.map_or(1000, |(code, _)| code);
                return self.close(ctx, code, "");
            }
            Err(FrameError::TooLarge(_)) => {
                let reason = format!("message larger than {} bytes", self.context.max_frame_bytes);
                self.reject(ctx, CLOSE_TOO_LARGE, &reason)
            }
            Err(e) => self.reject(ctx, CLOSE_BAD_MESSAGE, &e.to_string()),
        }
        self.flush(ctx);
    }

    /// The client closed its side of the socket.
    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
