//! Process-wide counters for Prometheus (`/metrics`), kept as atomics so the
//! hot paths pay one relaxed add. Rendered in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (open connections, rooms).
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Gauge {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        // Saturating, so a stray decrement never wraps to 2^64.
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Bucket upper bounds in seconds, from sub-millisecond Redis calls to slow persists.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

pub struct Histogram {
    name: &'static str,
    help: &'static str,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

pub static CONNECTIONS: Gauge = Gauge::new("yredis_connections", "Open websocket connections.");
pub static CONNECTIONS_TOTAL: Counter = Counter::new(
    "yredis_connections_total",
    "Websocket connections accepted.",
);
pub static ROOMS: Gauge = Gauge::new(
    "yredis_rooms",
    "Rooms with at least one connection on this process.",
);
pub static REFUSED_UPGRADES: Counter =
    Counter::new("yredis_refused_upgrades_total", "Upgrades refused by auth.");
pub static MESSAGES_IN: Counter = Counter::new(
    "yredis_messages_in_total",
    "Messages received from clients.",
);
pub static BYTES_IN: Counter =
    Counter::new("yredis_bytes_in_total", "Bytes received from clients.");
pub static MESSAGES_OUT: Counter =
    Counter::new("yredis_messages_out_total", "Messages sent to clients.");
pub static BYTES_OUT: Counter = Counter::new("yredis_bytes_out_total", "Bytes sent to clients.");
pub static REJECTED_MESSAGES: Counter = Counter::new(
    "yredis_rejected_messages_total",
    "Malformed or oversized client messages (connection closed).",
);
pub static SLOW_CLIENTS: Counter = Counter::new(
    "yredis_slow_clients_total",
    "Connections cut off because they stopped reading.",
);
pub static ERRORS: Counter = Counter::new(
    "yredis_errors_total",
    "Failures of Redis, storage or loads.",
);
pub static LIMITED_UPGRADES: Counter = Counter::new(
    "yredis_limited_upgrades_total",
    "Upgrades refused by connection limits (503 process full, 429 address busy).",
);
pub static RATE_LIMITED: Counter = Counter::new(
    "yredis_rate_limited_total",
    "Connections closed with 4429 for exceeding the message or byte rate.",
);
pub static READ_ONLY_DROPPED: Counter = Counter::new(
    "yredis_read_only_updates_dropped_total",
    "Updates from read-only users dropped unread.",
);
pub static REDUNDANT_UPDATES: Counter = Counter::new(
    "yredis_redundant_updates_total",
    "Client updates holding nothing the room lacked (not stored).",
);
pub static AWARENESS_REFUSED: Counter = Counter::new(
    "yredis_awareness_refused_total",
    "Awareness updates dropped: another client's id, or an id in use.",
);
pub static AWARENESS_COALESCED: Counter = Counter::new(
    "yredis_awareness_coalesced_total",
    "Awareness updates held back by the rate limit (the newest is sent later).",
);
pub static ENGINE_CRASHES: Counter = Counter::new(
    "yredis_engine_crashes_total",
    "Document engine helper processes that crashed or hung on a request.",
);
pub static QUARANTINED_UPDATES: Counter = Counter::new(
    "yredis_quarantined_updates_total",
    "Stream updates found to crash the document engine and skipped.",
);
pub static WORKER_PERMANENT_FAILURES: Counter = Counter::new(
    "yredis_worker_permanent_failures_total",
    "Compaction tasks given up for good (the stream is kept for an operator).",
);
pub static REDIS_COMMAND_SECONDS: Histogram = Histogram::new(
    "yredis_redis_command_seconds",
    "Latency of Redis commands (not the blocking read).",
);
pub static WORKER_TASKS: Counter =
    Counter::new("yredis_worker_tasks_total", "Compaction tasks handled.");
pub static WORKER_PERSISTS: Counter =
    Counter::new("yredis_worker_persists_total", "Documents persisted.");
pub static WORKER_PERSIST_SECONDS: Histogram = Histogram::new(
    "yredis_worker_persist_seconds",
    "Time to load, persist and trim one room.",
);

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::with_capacity(4096);
    for c in [
        &CONNECTIONS_TOTAL,
        &REFUSED_UPGRADES,
        &MESSAGES_IN,
        &BYTES_IN,
        &MESSAGES_OUT,
        &BYTES_OUT,
        &REJECTED_MESSAGES,
        &SLOW_CLIENTS,
        &ERRORS,
        &WORKER_TASKS,
        &WORKER_PERSISTS,
        &LIMITED_UPGRADES,
        &RATE_LIMITED,
        &READ_ONLY_DROPPED,
        &REDUNDANT_UPDATES,
        &AWARENESS_REFUSED,
        &AWARENESS_COALESCED,
        &ENGINE_CRASHES,
        &QUARANTINED_UPDATES,
        &WORKER_PERMANENT_FAILURES,
    ] {
        let _ = write!(
            out,
            "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n",
            c.name,
            c.help,
            c.get()
        );
    }
    for g in [&CONNECTIONS, &ROOMS] {
        let _ = write!(
            out,
            "# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n",
            g.name,
            g.help,
            g.get()
        );
    }
    for h in [&REDIS_COMMAND_SECONDS, &WORKER_PERSIST_SECONDS] {
        let _ = write!(
            out,
            "# HELP {0} {1}\n# TYPE {0} histogram\n",
            h.name, h.help
        );
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {cumulative}", h.name);
        }
        let count = h.count.load(Ordering::Relaxed);
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = write!(
            out,
            "{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n",
            h.name, count, sum
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        MESSAGES_IN.add(3);
        REDIS_COMMAND_SECONDS.observe(Duration::from_micros(700));
        let text = render();
        assert!(text.contains("# TYPE yredis_messages_in_total counter"));
        assert!(text.contains("yredis_redis_command_seconds_bucket{le=\"0.001\"}"));
        assert!(text.contains("yredis_redis_command_seconds_bucket{le=\"+Inf\"}"));
        CONNECTIONS.dec(); // never below zero
        assert!(text.contains("yredis_connections 0") || CONNECTIONS.get() < u64::MAX / 2);
    }
}
