//! The room subscriptions of one thread. Every HTTP worker thread has one
//! registry; its sessions join and leave rooms through it, so it alone
//! decides when a room has no sessions left and stops it. Everything here
//! runs on that one thread, so a join can never reach a stopping room.
//!
//! A room that closed all its sessions (a resync after a Redis outage, or
//! shutdown) is retired: its view may hold what Redis lost, so sessions
//! that connect meanwhile get a fresh room, and the retired one stops when
//! the last of its own sessions has left.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::room::{Room, RoomContext, SharedView, StopRoom};

/// The room a session joined: its address, its view (shared on this
/// thread) and its id, which the session leaves by.
#[derive(Clone)]
pub struct JoinedRoom {
    pub addr: Addr<Room>,
    pub view: SharedView,
    pub id: u64,
}

struct Entry {
    room: JoinedRoom,
    sessions: usize,
}

#[derive(Default)]
struct Registry {
    /// The room new sessions of each key join.
    open: HashMap<String, Entry>,
    /// Retired rooms whose sessions have not all left yet, by room id.
    retired: HashMap<u64, Entry>,
}

#[derive(Clone)]
pub struct ThreadRooms {
    registry: Rc<RefCell<Registry>>,
    context: Arc<RoomContext>,
}

impl ThreadRooms {
    pub fn new(context: Arc<RoomContext>) -> Self {
        ThreadRooms {
            registry: Rc::default(),
            context,
        }
    }

    /// The room of `key` on this thread (started if needed, or if the one
    /// there retired), counted as one more session's.
    pub fn join(&self, room: &str, docid: &str, key: &str) -> JoinedRoom {
        let mut registry = self.registry.borrow_mut();
        let Registry { open, retired } = &mut *registry;
        if open
            .get(key)
            .is_some_and(|e| e.room.view.borrow().closed_all.is_some())
        {
            if let Some(entry) = open.remove(key) {
                retired.insert(entry.room.id, entry);
            }
        }
        let entry = open.entry(key.to_owned()).or_insert_with(|| {
            let room = Room::new(
                room.to_owned(),
                docid.to_owned(),
                key.to_owned(),
                self.context.clone(),
            );
            let (view, id) = (room.view(), room.id());
            Entry {
                room: JoinedRoom {
                    addr: room.start(),
                    view,
                    id,
                },
                sessions: 0,
            }
        });
        entry.sessions += 1;
        entry.room.clone()
    }

    /// One session of room `id` (of `key`) left; the room stops with its
    /// last one.
    pub fn leave(&self, key: &str, id: u64) {
        let mut registry = self.registry.borrow_mut();
        let Registry { open, retired } = &mut *registry;
        let last = if open.get(key).is_some_and(|e| e.room.id == id) {
            open.get_mut(key)
                .is_some_and(Entry::release)
                .then(|| open.remove(key))
        } else {
            retired
                .get_mut(&id)
                .is_some_and(Entry::release)
                .then(|| retired.remove(&id))
        };
        if let Some(entry) = last.flatten() {
            entry.room.addr.do_send(StopRoom);
        }
    }
}

impl Entry {
    /// Counts one session less; true once none is left.
    fn release(&mut self) -> bool {
        self.sessions = self.sessions.saturating_sub(1);
        self.sessions == 0
    }
}
