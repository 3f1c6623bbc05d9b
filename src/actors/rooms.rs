//! The room subscriptions of one thread. Every HTTP worker thread has one
//! registry; its sessions join and leave rooms through it, so it alone
//! decides when a room has no sessions left and stops it. Everything here
//! runs on that one thread, so a join can never reach a stopping room.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use super::room::{Room, RoomContext, SharedView, StopRoom};

struct Entry {
    addr: Addr<Room>,
    view: SharedView,
    sessions: usize,
}

#[derive(Clone)]
pub struct ThreadRooms {
    rooms: Rc<RefCell<HashMap<String, Entry>>>,
    context: Arc<RoomContext>,
}

impl ThreadRooms {
    pub fn new(context: Arc<RoomContext>) -> Self {
        ThreadRooms {
            rooms: Rc::default(),
            context,
        }
    }

    /// The room of `key` on this thread (started if needed), counted as one
    /// more session's.
    pub fn join(&self, room: &str, docid: &str, key: &str) -> (Addr<Room>, SharedView) {
        let mut rooms = self.rooms.borrow_mut();
        let entry = rooms.entry(key.to_owned()).or_insert_with(|| {
            let room = Room::new(
                room.to_owned(),
                docid.to_owned(),
                key.to_owned(),
                self.context.clone(),
            );
            let view = room.view();
            Entry {
                addr: room.start(),
                view,
                sessions: 0,
            }
        });
        entry.sessions += 1;
        (entry.addr.clone(), entry.view.clone())
    }

    /// One session of `key` left; the room stops with its last one.
    pub fn leave(&self, key: &str) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(entry) = rooms.get_mut(key) else {
            return;
        };
        entry.sessions = entry.sessions.saturating_sub(1);
        if entry.sessions == 0 {
            if let Some(entry) = rooms.remove(key) {
                entry.addr.do_send(StopRoom);
            }
        }
    }
}
