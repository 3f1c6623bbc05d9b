//! A session's messages on their way to Redis. They leave in order, one
//! `add_messages` call at a time (what arrives meanwhile goes with the next
//! call), from a task of their own that outlives the session: an edit a
//! client sent just before its connection ended is still stored, as it is
//! by @y/redis. A failed call tells the session to close (the client keeps
//! its edits and sends them again after reconnecting). The messages, and
//! the id Redis gave the last of them, go to the session's socket too,
//! whose deliveries leave them out (`own_messages`).

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use actix::Recipient;
use bytes::Bytes;

use super::messages::{ConnId, ToSession, CLOSE_TRY_AGAIN_LATER};
use crate::metrics;
use crate::socket::Outlet;
use crate::streams::RedisStreams;

#[derive(Default)]
struct Queue {
    messages: Vec<Bytes>,
    /// Bytes queued or being sent.
    bytes: usize,
    /// The sending task runs.
    sending: bool,
}

/// Where a session's messages go, and who hears if they cannot be stored.
pub struct Destination {
    pub redis: RedisStreams,
    pub stream_key: Arc<str>,
    pub room: Arc<str>,
    pub conn: ConnId,
    pub session: Recipient<ToSession>,
    /// The session's socket, told of its messages and their ids so that
    /// deliveries leave them out; None where clients get their own
    /// messages back (`ECHO_OWN_MESSAGES`).
    pub outlet: Option<Weak<Outlet>>,
}

/// Cheap to hold while idle: one shared, empty queue.
#[derive(Default)]
pub struct Outbox {
    queue: Rc<RefCell<Queue>>,
}

impl Outbox {
    /// Queues `message` after everything queued before, and starts the
    /// sending task (to `destination()`) unless it runs; answers the bytes
    /// now queued or being sent. Must run on an actix thread.
    pub fn push(&self, message: Bytes, destination: impl FnOnce() -> Destination) -> usize {
        let (queued, start) = {
            let mut queue = self.queue.borrow_mut();
            queue.bytes += message.len();
            queue.messages.push(message);
            let start = !queue.sending;
            queue.sending = true;
            (queue.bytes, start)
        };
        if start {
            actix::spawn(send(self.queue.clone(), destination()));
        }
        queued
    }
}

async fn send(queue: Rc<RefCell<Queue>>, to: Destination) {
    loop {
        let batch = {
            let mut queue = queue.borrow_mut();
            if queue.messages.is_empty() {
                queue.sending = false;
                return;
            }
            std::mem::take(&mut queue.messages)
        };
        let outlet = || to.outlet.as_ref().and_then(Weak::upgrade);
        let first = outlet().map(|outlet| outlet.own().sending(&batch));
        let result = to.redis.add_messages(&to.stream_key, &batch).await;
        let mut queue = queue.borrow_mut();
        queue.bytes -= batch.iter().map(Bytes::len).sum::<usize>();
        if let (Ok(Some(last)), Some(first), Some(outlet)) = (&result, first, outlet()) {
            outlet.own().stored(first, batch.len(), *last);
        }
        if let Err(e) = result {
            metrics::ERRORS.inc();
            tracing::error!(room = %to.room, conn = to.conn, error = %e, "could not publish messages");
            *queue = Queue::default();
            to.session.do_send(ToSession::Close {
                code: CLOSE_TRY_AGAIN_LATER,
                reason: "could not store the message, please reconnect".into(),
            });
            return;
        }
    }
}
