//! A session's outgoing backlog, shared with its room: the room adds what it
//! hands the session, the session subtracts what it wrote. A session whose
//! socket is full is not polled, so it stops subtracting; the room sees the
//! backlog grow and the progress stop, and cuts the socket from outside.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::now_ms;

pub struct SendQueue {
    bytes: AtomicUsize,
    last_progress_ms: AtomicU64,
}

impl Default for SendQueue {
    fn default() -> Self {
        SendQueue {
            bytes: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl SendQueue {
    /// Adds `n` bytes; answers the backlog.
    pub fn push(&self, n: usize) -> usize {
        self.bytes.fetch_add(n, Ordering::Relaxed) + n
    }

    /// The session wrote `n` bytes to its socket buffer.
    pub fn taken(&self, n: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            });
        self.progressed();
    }

    pub fn progressed(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long the session has taken nothing.
    pub fn stalled_for(&self) -> Duration {
        Duration::from_millis(
            now_ms().saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)),
        )
    }
}

/// Shuts a connection's socket from outside its session: the only way to
/// drop a client that stopped reading, because its session is not polled
/// while the socket's send buffer is full. Holds its own duplicate of the
/// socket, so it can never hit a reused descriptor.
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
