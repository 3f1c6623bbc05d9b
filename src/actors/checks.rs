//! Where update checks run: on the socket's thread up to a size, on the
//! blocking pool beyond it, a few at a time process-wide, so that one
//! client's big update neither stalls a thread's sockets nor takes every
//! core. Sessions check their clients' updates this way, rooms the stream's.

use tokio::sync::Semaphore;
use tokio::task::JoinError;

/// Updates up to this size are checked on the thread that has them.
pub const INLINE_CHECK_BYTES: usize = 64 * 1024;

static LARGE_CHECKS: Semaphore = Semaphore::const_new(2);

/// Runs `check` on the blocking pool once one of the process's few slots
/// for large checks is free.
pub async fn off_thread<T: Send + 'static>(
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    // The semaphore is never closed.
    let _slot = LARGE_CHECKS.acquire().await;
    tokio::task::spawn_blocking(check).await
}
