//! Giving freed memory back to the system. glibc's allocator keeps freed
//! pages in its arenas, so a server that served many connections would keep
//! its peak size for good; every 30 s the freed pages go back to the kernel.
//!
//! What `malloc_trim` cannot give back is a page that still holds a block in
//! use, and glibc's per-thread cache (tcache: up to seven freed blocks of each
//! small size per thread, kept out of the arena) counts as in use. After a
//! burst of connections closes, each HTTP worker thread's cache holds a few
//! hundred blocks scattered over its arena, pinning about a megabyte per
//! thread. The cache is set only through `GLIBC_TUNABLES` before a process
//! starts, so the process starts itself once more with it turned off (see
//! [`without_thread_caches`]).

use std::time::Duration;

const EVERY: Duration = Duration::from_secs(30);

/// The tunable this process sets, and the value it sets it to.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

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

/// `GLIBC_TUNABLES` for a process started with `current`: None when it
/// already names the per-thread cache (the operator's value stands, and a
/// restarted process sees its own), else `current` with the cache off.
fn tunables_without_thread_caches(current: Option<&str>) -> Option<String> {
    let names_cache = |set: &str| {
        set.split(':')
            .any(|t| t.split('=').next() == Some(TCACHE_COUNT))
    };
    match current {
        None | Some("") => Some(TCACHE_OFF.to_owned()),
        Some(set) if names_cache(set) => None,
        Some(set) => Some(format!("{set}:{TCACHE_OFF}")),
    }
}

/// Restarts this process (same pid, arguments and environment) with glibc's
/// per-thread cache off, unless `GLIBC_TUNABLES` already sets
/// `glibc.malloc.tcache_count` (7 is glibc's default). Call it first thing,
/// before any thread starts. Where the restart cannot happen, the process
/// goes on with glibc's defaults and says so on stderr.
///
/// Measured with bench/idle-memory.mjs (1,000 connections): RSS 35 s after
/// all closed is 13-19% over the start value instead of 28-37%; server CPU
/// under fan-out load (bench/fanout.py) shows no difference beyond noise.
pub fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        let current = std::env::var_os("GLIBC_TUNABLES");
        let current = current.as_ref().map(|v| v.to_string_lossy());
        let Some(tunables) = tunables_without_thread_caches(current.as_deref()) else {
            return;
        };
        let mut args = std::env::args_os();
        let program_name = args.next().unwrap_or_default();
        let error = std::process::Command::new("/proc/self/exe")
            .arg0(program_name)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
        eprintln!(
            "y-redis: could not restart with {TCACHE_OFF} ({error}); running with glibc's per-thread caches"
        );
    }
}

/// One log event with the allocator tunables this process runs with (its
/// `/proc/<pid>/environ` may show them cut short: glibc edits the string
/// in place when it reads it).
pub fn log_allocator_settings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    match std::env::var("GLIBC_TUNABLES") {
        Ok(tunables) => tracing::info!(glibc_tunables = %tunables, "allocator settings"),
        Err(_) => tracing::info!("allocator settings: glibc's defaults"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_turned_off_once_and_an_operators_choice_stands() {
        assert_eq!(
            tunables_without_thread_caches(None).as_deref(),
            Some(TCACHE_OFF)
        );
        assert_eq!(
            tunables_without_thread_caches(Some("")).as_deref(),
            Some(TCACHE_OFF)
        );
        assert_eq!(
            tunables_without_thread_caches(Some("glibc.pthread.rseq=0")).as_deref(),
            Some("glibc.pthread.rseq=0:glibc.malloc.tcache_count=0")
        );
        // What the restarted process sees: no second restart.
        assert_eq!(tunables_without_thread_caches(Some(TCACHE_OFF)), None);
        assert_eq!(
            tunables_without_thread_caches(Some(
                "glibc.pthread.rseq=0:glibc.malloc.tcache_count=7"
            )),
            None
        );
        // A different tunable whose name starts the same is not the cache count.
        assert_eq!(
            tunables_without_thread_caches(Some("glibc.malloc.tcache_count_x=1")).as_deref(),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=0")
        );
    }
}
