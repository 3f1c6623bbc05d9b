//! `Hub`: the registry of this process's rooms. Joins and leaves pass through
//! it, so it alone decides when a room has no sessions left and stops it; a
//! join can therefore never reach a room that is shutting down.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::room::{CloseAll, ConnId, Join, Leave, Recheck, Room, RoomContext, StopRoom};

/// Registers a session with the room of `key`, creating the room if needed.
#[derive(Message)]
#[rtype(result = "Addr<Room>")]
pub struct JoinRoom {
    pub room: String,
    pub docid: String,
    pub key: String,
    pub join: Join,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveRoom {
    pub key: String,
    pub conn: ConnId,
}

/// Closes every session of every room; answers with the number of sessions.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAllRooms {
    pub code: u16,
    pub reason: &'static str,
}

/// Number of sessions still registered.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SessionCount;

/// Re-check permissions in the room of `key`, if this process has it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecheckRoom {
    pub key: String,
    pub user: Option<String>,
}

struct RoomEntry {
    addr: Addr<Room>,
    sessions: usize,
}

pub struct Hub {
    shared: Arc<RoomContext>,
    rooms: HashMap<String, RoomEntry>,
}

impl Hub {
    pub fn new(shared: RoomContext) -> Self {
        Hub {
            shared: Arc::new(shared),
            rooms: HashMap::new(),
        }
    }
}

impl Actor for Hub {
    type Context = Context<Self>;
}

impl Handler<JoinRoom> for Hub {
    type Result = MessageResult<JoinRoom>;

    fn handle(&mut self, msg: JoinRoom, _: &mut Context<Self>) -> Self::Result {
        let shared = &self.shared;
        let entry = self
            .rooms
            .entry(msg.key.clone())
            .or_insert_with(|| RoomEntry {
                addr: Room::new(msg.room, msg.docid, msg.key, shared.clone()).start(),
                sessions: 0,
            });
        entry.sessions += 1;
        entry.addr.do_send(msg.join);
        MessageResult(entry.addr.clone())
    }
}

impl Handler<LeaveRoom> for Hub {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, _: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        entry.addr.do_send(Leave { conn: msg.conn });
        entry.sessions -= 1;
        if entry.sessions == 0 {
            if let Some(entry) = self.rooms.remove(&msg.key) {
                entry.addr.do_send(StopRoom);
            }
        }
    }
}

impl Handler<CloseAllRooms> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: CloseAllRooms, _: &mut Context<Self>) -> usize {
        for entry in self.rooms.values() {
            entry.addr.do_send(CloseAll {
                code: msg.code,
                reason: msg.reason,
            });
        }
        self.rooms.values().map(|e| e.sessions).sum()
    }
}

impl Handler<SessionCount> for Hub {
    type Result = usize;

    fn handle(&mut self, _: SessionCount, _: &mut Context<Self>) -> usize {
        self.rooms.values().map(|e| e.sessions).sum()
    }
}

impl Handler<RecheckRoom> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RecheckRoom, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&msg.key) {
            entry.addr.do_send(Recheck { user: msg.user });
        }
    }
}
