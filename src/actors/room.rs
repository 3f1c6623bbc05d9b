//! `Room`: one open subscription per (room, docid) and thread with sessions of
//! that room (ARCHITECTURE.md, "Fan-out"). It lives on the thread of its
//! sessions, so fanning a batch out never crosses threads: the listener
//! hands it each batch once, it encodes the frames once and hands every
//! session the same shared buffers. It serves initial syncs (joins during a
//! load share it) and keeps the room's view: what the document holds (to
//! check the sessions' updates) and who is present.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use y_redis_protocol::awareness::AwarenessStates;
use y_redis_protocol::doc_state::DocState;
use y_redis_protocol::message::{
    classify_stream_message, encode_sync_step1, encode_sync_step2, StreamMessage,
};
use y_redis_protocol::update::{index_document, judge, Effects, Verdict};

use super::checks::{self, INLINE_CHECK_BYTES};
use super::listener::RedisListener;
use super::messages::{
    ConnId, FromSession, RoomEvent, StreamBatch, Subscribe, ToSession, Unsubscribe,
    CLOSE_ROOM_UNAVAILABLE, CLOSE_TRY_AGAIN_LATER,
};
use crate::auth::now_ms;
use crate::document::{AssembledDoc, Documents, LoadError};
use crate::metrics;
use crate::socket::{binary_frame, Outlet};
use crate::storage::Storage;
use crate::streams::{RedisStreams, StreamEntry, StreamId};

/// What every room subscription of the process shares.
pub struct RoomContext {
    pub redis: RedisStreams,
    pub storage: Arc<dyn Storage>,
    pub documents: Arc<Documents>,
    pub listener: Addr<RedisListener>,
    /// Awareness states one room tracks at most.
    pub awareness_max_clients: usize,
    pub next_room_id: AtomicU64,
}

/// The room as its sessions (on the same thread) see it.
pub struct RoomView {
    /// What the document holds; None until the first load finished.
    pub doc: Option<DocState>,
    pub awareness: AwarenessStates,
    /// Sockets of sessions that joined, until the room takes them with the
    /// join (an `Rc` cannot travel in an actor message).
    pub arriving: HashMap<ConnId, Rc<Outlet>>,
    /// Set (with the close's code and reason) when the room closed all its
    /// sessions (resync or shutdown): it has retired. What it holds may be
    /// gone from Redis, so the thread's registry starts a fresh room for
    /// sessions that connect from now on.
    pub closed_all: Option<(u16, &'static str)>,
}

/// Shared by a room and its sessions; they run on one thread.
pub type SharedView = Rc<RefCell<RoomView>>;

/// Stops a room whose last session left (the thread's registry decides).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopRoom;

#[derive(Message)]
#[rtype(result = "()")]
struct Loaded {
    result: Result<(AssembledDoc, Vec<StreamEntry>, Option<DocState>), LoadError>,
    /// Whose state vector the load's diffs answer, in order.
    diffs_for: Vec<ConnId>,
}

struct Member {
    session: Recipient<ToSession>,
    outlet: Rc<Outlet>,
    /// The stream position its initial sync covered; None while it waits for one.
    synced_through: Option<StreamId>,
}

/// State vectors of members still waiting for their initial sync.
type StateVectors = Rc<RefCell<HashMap<ConnId, Vec<u8>>>>;

pub struct Room {
    room: String,
    docid: String,
    key: String,
    id: u64,
    context: Arc<RoomContext>,
    view: SharedView,
    /// The last stream entry the view includes.
    position: StreamId,
    members: HashMap<ConnId, Member>,
    state_vectors: StateVectors,
    subscribed: bool,
    loading: bool,
    /// Entries that arrived while a load was running, for its waiting members.
    held_back: Vec<StreamEntry>,
    /// Stream updates the view has still to take, in stream order (shared
    /// with the frames, not copied), and their bytes.
    view_queue: VecDeque<Bytes>,
    view_queue_bytes: usize,
    /// A large update is being checked off the thread; the queue waits.
    view_busy: bool,
}

/// Past this many bytes waiting for the view, the thread checks them
/// itself: slower for its sockets, but the queue stays bounded.
const MAX_VIEW_QUEUE_BYTES: usize = 64 << 20;

/// How often presence states are checked for expiry.
const AWARENESS_SWEEP: Duration = Duration::from_secs(5);

impl Room {
    pub fn new(room: String, docid: String, key: String, context: Arc<RoomContext>) -> Self {
        let view = Rc::new(RefCell::new(RoomView {
            doc: None,
            awareness: AwarenessStates::new(context.awareness_max_clients),
            arriving: HashMap::new(),
            closed_all: None,
        }));
        Room {
            room,
            docid,
            key,
            id: context.next_room_id.fetch_add(1, Ordering::Relaxed),
            context,
            view,
            position: StreamId::ZERO,
            members: HashMap::new(),
            state_vectors: Rc::default(),
            subscribed: false,
            loading: false,
            held_back: Vec::new(),
            view_queue: VecDeque::new(),
            view_queue_bytes: 0,
            view_busy: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    fn start_load(&mut self, ctx: &mut Context<Self>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let context = self.context.clone();
        let (room, docid) = (self.room.clone(), self.docid.clone());
        let first = self.view.borrow().doc.is_none();
        let state_vectors = self.state_vectors.clone();
        let addr = ctx.address();
        actix::spawn(async move {
            // Collected once the reads are done, so a client whose SyncStep1
            // came meanwhile gets only what it lacks.
            let mut diffs_for = Vec::new();
            let collect = || {
                let (conns, vectors) = state_vectors
                    .borrow()
                    .iter()
                    .map(|(conn, sv)| (*conn, sv.clone()))
                    .unzip();
                diffs_for = conns;
                vectors
            };
            let loaded = context
                .documents
                .load(
                    &context.redis,
                    context.storage.as_ref(),
                    &room,
                    &docid,
                    false,
                    collect,
                )
                .await;
            let result = match loaded {
                // The first load also tells what the document holds.
                Ok((doc, entries)) if first => {
                    let state = index_off_thread(doc.update_v1.clone()).await;
                    Ok((doc, entries, Some(state)))
                }
                Ok((doc, entries)) => Ok((doc, entries, None)),
                Err(e) => Err(e),
            };
            addr.do_send(Loaded { result, diffs_for });
        });
    }

    /// Moves the view on by `entries` (those past its position) and answers them.
    fn advance(&mut self, entries: &[StreamEntry], ctx: &mut Context<Self>) -> usize {
        let fresh = entries.partition_point(|e| e.id <= self.position);
        {
            let mut view = self.view.borrow_mut();
            let now = now_ms();
            for entry in &entries[fresh..] {
                match classify_stream_message(&entry.message) {
                    StreamMessage::Update(update) => {
                        self.view_queue_bytes += update.len();
                        self.view_queue.push_back(entry.message.slice_ref(update));
                    }
                    StreamMessage::Awareness(payload) => view.awareness.apply_message(payload, now),
                    StreamMessage::Unknown => {}
                }
            }
        }
        if let Some(last) = entries.last() {
            self.position = self.position.max(last.id);
        }
        self.take_view_updates(ctx);
        fresh
    }

    /// The view takes queued updates in order: small ones here, a large
    /// one on the blocking pool (the queue waits for it).
    fn take_view_updates(&mut self, ctx: &mut Context<Self>) {
        while !self.view_busy {
            let Some(update) = self.view_queue.pop_front() else {
                return;
            };
            self.view_queue_bytes -= update.len();
            let mut view = self.view.borrow_mut();
            let Some(doc) = view.doc.as_mut() else {
                // The first load covers it.
                continue;
            };
            if update.len() <= INLINE_CHECK_BYTES || self.view_queue_bytes > MAX_VIEW_QUEUE_BYTES {
                if let Some(effects) = accepted_effects(&update, doc) {
                    doc.apply(&effects);
                }
                continue;
            }
            // What the view holds now is what it will hold when the check
            // returns: the queue waits.
            let snapshot = doc.clone();
            drop(view);
            self.view_busy = true;
            let check = checks::off_thread(move || accepted_effects(&update, &snapshot));
            ctx.spawn(check.into_actor(self).map(|checked, act, ctx| {
                act.view_busy = false;
                if let Ok(Some(effects)) = checked {
                    if let Some(doc) = act.view.borrow_mut().doc.as_mut() {
                        doc.apply(&effects);
                    }
                }
                // Sessions holding updates that build on this one may pass
                // now; the others have nothing to judge again.
                for member in act.members.values().filter(|m| m.outlet.is_watching()) {
                    member.session.do_send(ToSession::Delivered);
                }
                act.take_view_updates(ctx);
            }));
        }
    }

    /// Writes `entries` to every synced member past its own position.
    fn deliver(&mut self, entries: &[StreamEntry]) {
        // Each message becomes a websocket frame once, for every member.
        let mut frames = Vec::with_capacity(entries.len());
        let mut sent = Vec::with_capacity(entries.len());
        for entry in entries.iter().filter(|e| !e.message.is_empty()) {
            frames.push(binary_frame(&entry.message));
            sent.push(entry);
        }
        let Some(last) = sent.last().map(|e| e.id) else {
            return;
        };
        let now = Instant::now();
        let (mut messages_out, mut bytes_out) = (0, 0);
        for member in self.members.values_mut() {
            let Some(through) = member.synced_through else {
                continue;
            };
            let start = sent.partition_point(|e| e.id <= through);
            if start == sent.len() {
                continue;
            }
            member.synced_through = Some(last);
            let delivered = member.outlet.deliver(&frames[start..], &sent[start..], now);
            messages_out += delivered.frames;
            bytes_out += delivered.bytes;
            if delivered.wake {
                member.session.do_send(ToSession::Delivered);
            }
        }
        metrics::MESSAGES_OUT.inc_by(messages_out as u64);
        metrics::BYTES_OUT.inc_by(bytes_out as u64);
    }

    fn close_members(&mut self, code: u16, reason: &str, waiting_only: bool) {
        self.members.retain(|_, member| {
            if waiting_only && member.synced_through.is_some() {
                return true;
            }
            member.session.do_send(ToSession::Close {
                code,
                reason: reason.to_owned(),
            });
            false
        });
    }
}

/// What `update` adds to `doc` if yjs would integrate all of it at once.
/// Anything else (from a foreign writer) leaves the view behind, on the safe
/// side: sessions then hold what builds on it.
fn accepted_effects(update: &[u8], doc: &DocState) -> Option<Effects> {
    match judge(update, doc) {
        Ok(Verdict::Accept(effects)) => Some(effects),
        _ => None,
    }
}

async fn index_off_thread(update_v1: Vec<u8>) -> DocState {
    let indexed = tokio::task::spawn_blocking(move || index_document(&update_v1)).await;
    let mut state = DocState::default();
    match indexed {
        Ok(Ok(effects)) => state.apply(&effects),
        // Legacy content this reader does not know: every parent then looks
        // unknown and such updates are refused, but nothing is let through.
        _ => tracing::warn!("cannot index the stored document; update checks run without it"),
    }
    state
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::ROOMS.inc();
        tracing::debug!(room = %self.room, "room opened");
        self.context.listener.do_send(Subscribe {
            key: self.key.clone(),
            after: None,
            room_id: self.id,
            room: ctx.address().recipient(),
        });
        ctx.run_interval(AWARENESS_SWEEP, |act, _| {
            act.view.borrow_mut().awareness.expire(now_ms());
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::ROOMS.dec();
        self.context.listener.do_send(Unsubscribe {
            key: self.key.clone(),
            room_id: self.id,
        });
        tracing::debug!(room = %self.room, "room closed");
    }
}

impl Handler<FromSession> for Room {
    type Result = ();

    fn handle(&mut self, msg: FromSession, ctx: &mut Context<Self>) {
        match msg {
            FromSession::Join { conn, session } => {
                let outlet = self.view.borrow_mut().arriving.remove(&conn);
                // It joined before the room retired, and its join arrived
                // after: it goes the way of the others.
                let closed_all = self.view.borrow().closed_all;
                if let Some((code, reason)) = closed_all {
                    session.do_send(ToSession::Close {
                        code,
                        reason: reason.to_owned(),
                    });
                    return;
                }
                let Some(outlet) = outlet else {
                    tracing::error!(room = %self.room, conn, "a session joined without its socket; ignored");
                    return;
                };
                self.members.insert(
                    conn,
                    Member {
                        session,
                        outlet,
                        synced_through: None,
                    },
                );
                self.start_load(ctx);
            }
            FromSession::StateVector { conn, state_vector } => {
                if self
                    .members
                    .get(&conn)
                    .is_some_and(|m| m.synced_through.is_none())
                {
                    self.state_vectors.borrow_mut().insert(conn, state_vector);
                }
            }
            FromSession::Leave { conn } => {
                self.members.remove(&conn);
                self.view.borrow_mut().arriving.remove(&conn);
                self.state_vectors.borrow_mut().remove(&conn);
            }
        }
    }
}

impl Handler<Loaded> for Room {
    type Result = ();

    fn handle(&mut self, msg: Loaded, ctx: &mut Context<Self>) {
        self.loading = false;
        if self.view.borrow().closed_all.is_some() {
            // Retired: no member waits for this load, and its position must
            // not move the stream's subscription back for the fresh room.
            self.held_back.clear();
            return;
        }
        let held_back = std::mem::take(&mut self.held_back);
        let (doc, entries, indexed) = match msg.result {
            Ok(loaded) => loaded,
            Err(e) => {
                metrics::ERRORS.inc();
                if e.is_permanent() {
                    tracing::error!(room = %self.room, error = %e, "room cannot be served; refusing its clients");
                    self.close_members(CLOSE_ROOM_UNAVAILABLE, &e.to_string(), true);
                } else {
                    tracing::error!(room = %self.room, error = %e, "initial sync failed; asking waiting clients to retry");
                    self.close_members(
                        CLOSE_TRY_AGAIN_LATER,
                        "document temporarily unavailable",
                        true,
                    );
                }
                self.state_vectors.borrow_mut().clear();
                return;
            }
        };
        if let Some(state) = indexed {
            let mut view = self.view.borrow_mut();
            view.doc = Some(state);
            let now = now_ms();
            for entry in &entries {
                if let StreamMessage::Awareness(payload) = classify_stream_message(&entry.message) {
                    view.awareness.apply_message(payload, now);
                }
            }
            self.position = doc.last_id;
        } else {
            // A later load (for members that joined since) may have read
            // entries the listener has not brought yet. The joiners' sync
            // covers them, so the listener's copy will pass them by: take
            // them in now, for the view (its awareness goes into the sync)
            // and for the members already here.
            let fresh = self.advance(&entries, ctx);
            self.deliver(&entries[fresh..]);
        }
        if !self.subscribed {
            self.subscribed = true;
            self.context.listener.do_send(Subscribe {
                key: self.key.clone(),
                after: Some(self.position),
                room_id: self.id,
                room: ctx.address().recipient(),
            });
        }
        // Entries the load did not cover but that arrived while it ran.
        let newer: Vec<StreamEntry> = held_back
            .into_iter()
            .filter(|e| e.id > doc.last_id)
            .collect();
        // Whole websocket frames, encoded once for every member that gets them.
        let step1 = binary_frame(&encode_sync_step1(&doc.state_vector));
        let full = binary_frame(&encode_sync_step2(&doc.update_v1));
        let diffs: HashMap<ConnId, Bytes> = msg
            .diffs_for
            .iter()
            .zip(&doc.diffs)
            .filter_map(|(conn, diff)| {
                diff.as_ref()
                    .map(|d| (*conn, binary_frame(&encode_sync_step2(d))))
            })
            .collect();
        // Updates the document could not take yet go as they are: yjs
        // holds them until what they build on arrives. Left out, they would
        // never come: the sync covers the stream through `last_id`.
        let waiting: Vec<Bytes> = doc
            .waiting
            .iter()
            .filter_map(|id| entries.binary_search_by_key(id, |e| e.id).ok())
            .map(|at| binary_frame(&entries[at].message))
            .collect();
        let awareness = self
            .view
            .borrow()
            .awareness
            .encode_present()
            .map(|message| binary_frame(&message));
        let mut synced = Vec::new();
        for (&conn, member) in self.members.iter_mut() {
            if member.synced_through.is_some() {
                continue;
            }
            member.synced_through = Some(doc.last_id);
            synced.push(conn);
            let step2 = diffs.get(&conn).unwrap_or(&full);
            let mut frames = vec![step1.clone(), step2.clone()];
            frames.extend_from_slice(&waiting);
            frames.extend(awareness.clone());
            let delivered = member.outlet.deliver(&frames, &[], Instant::now());
            // The load covered what the client had stored through it.
            member.outlet.own().forget_through(doc.last_id);
            metrics::MESSAGES_OUT.inc_by(delivered.frames as u64);
            metrics::BYTES_OUT.inc_by(delivered.bytes as u64);
            member.session.do_send(ToSession::Synced);
        }
        {
            let mut vectors = self.state_vectors.borrow_mut();
            for conn in &synced {
                vectors.remove(conn);
            }
        }
        if !newer.is_empty() {
            self.deliver(&newer);
        }
        // Members that joined while this load ran need one of their own.
        if self.members.values().any(|m| m.synced_through.is_none()) {
            self.start_load(ctx);
        }
    }
}

impl Handler<RoomEvent> for Room {
    type Result = ();

    fn handle(&mut self, msg: RoomEvent, ctx: &mut Context<Self>) {
        match msg {
            RoomEvent::Batch(StreamBatch { entries, .. }) => {
                let fresh = self.advance(&entries, ctx);
                if self.loading {
                    self.held_back.extend(entries[fresh..].iter().cloned());
                }
                self.deliver(&entries[fresh..]);
            }
            RoomEvent::CloseAll { code, reason } => {
                self.view.borrow_mut().closed_all = Some((code, reason));
                self.close_members(code, reason, false);
            }
            RoomEvent::Recheck { user } => {
                for member in self.members.values() {
                    member
                        .session
                        .do_send(ToSession::Recheck { user: user.clone() });
                }
            }
        }
    }
}

impl Handler<StopRoom> for Room {
    type Result = ();

    fn handle(&mut self, _: StopRoom, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
