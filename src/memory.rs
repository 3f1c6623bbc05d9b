//! Giving freed memory back to the system. glibc's allocator keeps freed
//! pages in its arenas, so a server that served many connections would keep
//! its peak size for good; every 30 s the freed pages go back to the kernel.

use std::time::Duration;

const EVERY: Duration = Duration::from_secs(30);

/// Starts the periodic release on the current arbiter (once per process).
pub fn release_freed_memory_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    actix::spawn(async {
        let mut every = tokio::time::interval(EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            // SAFETY: malloc_trim only walks glibc's own arenas; it takes
            // their locks and needs nothing from the caller.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}
