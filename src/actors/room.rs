//! `Room`: one per (room, docid) with sessions on this process. Fans stream
//! entries out to its sessions, serves initial syncs (joins during a load
//! share it), and keeps the room's awareness states for query-awareness.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use super::listener::{RedisListener, StreamBatch, Subscribe, Unsubscribe};
use super::session::{ConnectionKiller, SendQueue, ToSession};
use crate::document::{self, AssembledDoc, LoadError};
use crate::protocol::{classify_stream_message, AwarenessStates, StreamMessage};
use crate::redis::{RedisStore, StreamEntry, StreamId};
use crate::storage::Storage;

pub type ConnId = u64;

/// Close code for "try again later": the client reconnects.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub conn: ConnId,
    pub session: Recipient<ToSession>,
    /// Bytes handed to the session that it has not taken yet.
    pub queue: Arc<SendQueue>,
    pub killer: Option<ConnectionKiller>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub conn: ConnId,
}

/// Asks for the awareness message of everyone present (None if nobody is).
#[derive(Message)]
#[rtype(result = "Option<Bytes>")]
pub struct QueryAwareness;

/// Closes every session of the room (server shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct StopRoom;

/// Re-check permissions of the room's sessions (of `user`, or all).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recheck {
    pub user: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Loaded(Result<Arc<AssembledDoc>, Arc<LoadError>>);

struct Member {
    session: Recipient<ToSession>,
    queue: Arc<SendQueue>,
    killer: Option<ConnectionKiller>,
    /// The stream position its initial sync covered; None while it waits for one.
    synced_through: Option<StreamId>,
}

pub struct RoomContext {
    pub redis: RedisStore,
    pub storage: Arc<dyn Storage>,
    pub listener: Addr<RedisListener>,
    pub max_send_queue_bytes: usize,
}

pub struct Room {
    room: String,
    docid: String,
    key: String,
    shared: Arc<RoomContext>,
    members: HashMap<ConnId, Member>,
    subscribed: bool,
    loading: bool,
    /// Entries that arrived while a load was running, for its waiting members.
    held_back: Vec<StreamEntry>,
    awareness: AwarenessStates,
}

impl Room {
    pub fn new(room: String, docid: String, key: String, shared: Arc<RoomContext>) -> Self {
        Room {
            room,
            docid,
            key,
            shared,
            members: HashMap::new(),
            subscribed: false,
            loading: false,
            held_back: Vec::new(),
            awareness: AwarenessStates::default(),
        }
    }

    fn start_load(&mut self, ctx: &mut Context<Self>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let shared = self.shared.clone();
        let (room, docid) = (self.room.clone(), self.docid.clone());
        let addr = ctx.address();
        actix::spawn(async move {
            let result =
                document::load(&shared.redis, shared.storage.as_ref(), &room, &docid).await;
            addr.do_send(Loaded(result.map(Arc::new).map_err(Arc::new)));
        });
    }

    fn deliver(&mut self, entries: &[StreamEntry]) {
        let Some(last) = entries.last() else { return };
        let room = &self.room;
        let cap = self.shared.max_send_queue_bytes;
        self.members.retain(|&conn, member| {
            let Some(through) = member.synced_through else {
                return true;
            };
            member.synced_through = Some(through.max(last.id));
            entries
                .iter()
                .filter(|e| e.id > through && !e.message.is_empty())
                .all(|e| {
                    push(
                        room,
                        cap,
                        conn,
                        member,
                        ToSession::Deliver(e.message.clone()),
                    )
                })
        });
    }
}

/// How long a session over its send cap may go without taking anything
/// before it counts as not reading (a slow but reading client is spared).
const STALL_GRACE: Duration = Duration::from_secs(5);
/// Past this multiple of the cap a session is cut off even if it still moves.
const HARD_CAP_FACTOR: usize = 4;

/// Hands `message` to a member's session, or cuts the session off when its
/// backlog passes `cap` and it has stopped taking messages (its client stopped
/// reading), or passes the hard cap. Returns whether the member stays.
fn push(room: &str, cap: usize, conn: ConnId, member: &Member, message: ToSession) -> bool {
    let queued = member.queue.push(message.queued_size());
    let stalled = member.queue.stalled_for();
    if queued > cap && (stalled > STALL_GRACE || queued > cap.saturating_mul(HARD_CAP_FACTOR)) {
        crate::metrics::SLOW_CLIENTS.inc();
        tracing::warn!(
            room,
            conn,
            queued,
            stalled_ms = stalled.as_millis() as u64,
            "client is not reading its socket; disconnecting it"
        );
        // The session cannot act while its socket is full; cut the socket from here.
        if let Some(killer) = &member.killer {
            killer.kill();
        }
        member.session.do_send(ToSession::Close {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "send queue full",
        });
        return false;
    }
    member.session.do_send(message);
    true
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        crate::metrics::ROOMS.inc();
        tracing::debug!(room = %self.room, "room opened");
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        crate::metrics::ROOMS.dec();
        if self.subscribed {
            self.shared.listener.do_send(Unsubscribe {
                key: self.key.clone(),
                room: ctx.address(),
            });
        }
        tracing::debug!(room = %self.room, "room closed");
    }
}

impl Handler<Join> for Room {
    type Result = ();

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) {
        self.members.insert(
            msg.conn,
            Member {
                session: msg.session,
                queue: msg.queue,
                killer: msg.killer,
                synced_through: None,
            },
        );
        self.start_load(ctx);
    }
}

impl Handler<Loaded> for Room {
    type Result = ();

    fn handle(&mut self, msg: Loaded, ctx: &mut Context<Self>) {
        self.loading = false;
        let held_back = std::mem::take(&mut self.held_back);
        let doc = match msg.0 {
            Ok(doc) => doc,
            Err(e) => {
                crate::metrics::ERRORS.inc();
                tracing::error!(room = %self.room, error = %e, "initial sync failed; asking waiting clients to retry");
                for member in self.members.values().filter(|m| m.synced_through.is_none()) {
                    member.session.do_send(ToSession::Close {
                        code: CLOSE_TRY_AGAIN_LATER,
                        reason: "document temporarily unavailable",
                    });
                }
                self.members.retain(|_, m| m.synced_through.is_some());
                return;
            }
        };
        for state in doc.awareness.present() {
            self.awareness.apply(state.clone());
        }
        if !self.subscribed {
            self.subscribed = true;
            self.shared.listener.do_send(Subscribe {
                key: self.key.clone(),
                after: doc.last_id,
                room: ctx.address(),
            });
        }
        // Entries the load did not cover but that arrived while it ran.
        let newer: Vec<&StreamEntry> = held_back
            .iter()
            .filter(|e| e.id > doc.last_id && !e.message.is_empty())
            .collect();
        let through = newer.last().map_or(doc.last_id, |e| e.id);
        let awareness = self.awareness.encode_present().map(Bytes::from);
        let room = &self.room;
        let cap = self.shared.max_send_queue_bytes;
        self.members.retain(|&conn, member| {
            if member.synced_through.is_some() {
                return true;
            }
            member.synced_through = Some(through);
            let sync = ToSession::InitialSync {
                doc: doc.clone(),
                awareness: awareness.clone(),
            };
            push(room, cap, conn, member, sync)
                && newer.iter().all(|e| {
                    push(
                        room,
                        cap,
                        conn,
                        member,
                        ToSession::Deliver(e.message.clone()),
                    )
                })
        });
    }
}

impl Handler<StreamBatch> for Room {
    type Result = ();

    fn handle(&mut self, msg: StreamBatch, _: &mut Context<Self>) {
        for entry in msg.entries.iter() {
            if let StreamMessage::Awareness(states) = classify_stream_message(&entry.message) {
                states.into_iter().for_each(|s| self.awareness.apply(s));
            }
        }
        self.awareness.prune_removed();
        if self.loading {
            self.held_back.extend(msg.entries.iter().cloned());
        }
        self.deliver(&msg.entries);
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        self.members.remove(&msg.conn);
    }
}

impl Handler<QueryAwareness> for Room {
    type Result = Option<Bytes>;

    fn handle(&mut self, _: QueryAwareness, _: &mut Context<Self>) -> Option<Bytes> {
        self.awareness.encode_present().map(Bytes::from)
    }
}

impl Handler<CloseAll> for Room {
    type Result = ();

    fn handle(&mut self, msg: CloseAll, _: &mut Context<Self>) {
        for member in self.members.values() {
            member.session.do_send(ToSession::Close {
                code: msg.code,
                reason: msg.reason,
            });
        }
    }
}

impl Handler<Recheck> for Room {
    type Result = ();

    fn handle(&mut self, msg: Recheck, _: &mut Context<Self>) {
        for member in self.members.values() {
            member.session.do_send(ToSession::Recheck {
                user: msg.user.clone(),
            });
        }
    }
}

impl Handler<StopRoom> for Room {
    type Result = ();

    fn handle(&mut self, _: StopRoom, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
