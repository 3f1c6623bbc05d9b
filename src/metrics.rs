//! Process-wide metrics for Prometheus (`/metrics`), held in prometheus-client
//! types: counting an event or moving a gauge is one relaxed atomic add on a
//! static. Every metric is registered once in a prometheus-client `Registry`;
//! [`render`] writes them in the Prometheus text format (version 0.0.4).

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Bucket upper bounds in seconds, from sub-millisecond Redis calls to slow persists.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

pub static CONNECTIONS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static CONNECTIONS_TOTAL: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static ROOMS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub static REFUSED_UPGRADES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static MESSAGES_IN: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static BYTES_IN: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static MESSAGES_OUT: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static BYTES_OUT: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static REJECTED_MESSAGES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static SLOW_CLIENTS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static LIMITED_UPGRADES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static RATE_LIMITED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static READ_ONLY_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static REDUNDANT_UPDATES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static AWARENESS_REFUSED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static AWARENESS_COALESCED: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static ENGINE_CRASHES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static QUARANTINED_UPDATES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static WORKER_PERMANENT_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static REDIS_COMMAND_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(BUCKETS));
pub static WORKER_TASKS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static WORKER_PERSISTS: LazyLock<Counter> = LazyLock::new(Counter::default);
pub static WORKER_PERSIST_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(BUCKETS));

/// Every metric above, under its exposed name. Counters are registered
/// without their `_total`, and help texts without their final full stop:
/// the encoder adds both.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r = Registry::default();
    let counters: [(&str, &str, &Counter); 20] = [
        (
            "yredis_connections",
            "Websocket connections accepted",
            &CONNECTIONS_TOTAL,
        ),
        (
            "yredis_refused_upgrades",
            "Upgrades refused by auth",
            &REFUSED_UPGRADES,
        ),
        (
            "yredis_messages_in",
            "Messages received from clients",
            &MESSAGES_IN,
        ),
        ("yredis_bytes_in", "Bytes received from clients", &BYTES_IN),
        (
            "yredis_messages_out",
            "Messages sent to clients",
            &MESSAGES_OUT,
        ),
        ("yredis_bytes_out", "Bytes sent to clients", &BYTES_OUT),
        (
            "yredis_rejected_messages",
            "Malformed or oversized client messages (connection closed)",
            &REJECTED_MESSAGES,
        ),
        (
            "yredis_slow_clients",
            "Connections cut off because they stopped reading",
            &SLOW_CLIENTS,
        ),
        (
            "yredis_errors",
            "Failures of Redis, storage or loads",
            &ERRORS,
        ),
        (
            "yredis_worker_tasks",
            "Compaction tasks handled",
            &WORKER_TASKS,
        ),
        (
            "yredis_worker_persists",
            "Documents persisted",
            &WORKER_PERSISTS,
        ),
        (
            "yredis_limited_upgrades",
            "Upgrades refused by connection limits (503 process full, 429 address busy)",
            &LIMITED_UPGRADES,
        ),
        (
            "yredis_rate_limited",
            "Connections closed with 4429 for exceeding the message or byte rate",
            &RATE_LIMITED,
        ),
        (
            "yredis_read_only_updates_dropped",
            "Updates from read-only users dropped unread",
            &READ_ONLY_DROPPED,
        ),
        (
            "yredis_redundant_updates",
            "Client updates holding nothing the room lacked (not stored)",
            &REDUNDANT_UPDATES,
        ),
        (
            "yredis_awareness_refused",
            "Awareness updates dropped: another client's id, or an id in use",
            &AWARENESS_REFUSED,
        ),
        (
            "yredis_awareness_coalesced",
            "Awareness updates held back by the rate limit (the newest is sent later)",
            &AWARENESS_COALESCED,
        ),
        (
            "yredis_engine_crashes",
            "Document engine helper processes that crashed or hung on a request",
            &ENGINE_CRASHES,
        ),
        (
            "yredis_quarantined_updates",
            "Stream updates found to crash the document engine and skipped",
            &QUARANTINED_UPDATES,
        ),
        (
            "yredis_worker_permanent_failures",
            "Compaction tasks given up for good (the stream is kept for an operator)",
            &WORKER_PERMANENT_FAILURES,
        ),
    ];
    for (name, help, counter) in counters {
        r.register(name, help, counter.clone());
    }
    r.register(
        "yredis_connections",
        "Open websocket connections",
        CONNECTIONS.clone(),
    );
    r.register(
        "yredis_rooms",
        "Rooms with at least one connection on this process",
        ROOMS.clone(),
    );
    r.register(
        "yredis_redis_command_seconds",
        "Latency of Redis commands (not the blocking read)",
        REDIS_COMMAND_SECONDS.clone(),
    );
    r.register(
        "yredis_worker_persist_seconds",
        "Time to load, persist and trim one room",
        WORKER_PERSIST_SECONDS.clone(),
    );
    r
});

/// Renders every metric in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn render() -> String {
    let mut out = String::with_capacity(4096);
    prometheus_text::encode(&mut out, &REGISTRY).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_metric_under_its_name() {
        // Dashboards and the end-to-end tests read these names and types.
        let text = render();
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "yredis_connections_total counter",
                "yredis_refused_upgrades_total counter",
                "yredis_messages_in_total counter",
                "yredis_bytes_in_total counter",
                "yredis_messages_out_total counter",
                "yredis_bytes_out_total counter",
                "yredis_rejected_messages_total counter",
                "yredis_slow_clients_total counter",
                "yredis_errors_total counter",
                "yredis_worker_tasks_total counter",
                "yredis_worker_persists_total counter",
                "yredis_limited_upgrades_total counter",
                "yredis_rate_limited_total counter",
                "yredis_read_only_updates_dropped_total counter",
                "yredis_redundant_updates_total counter",
                "yredis_awareness_refused_total counter",
                "yredis_awareness_coalesced_total counter",
                "yredis_engine_crashes_total counter",
                "yredis_quarantined_updates_total counter",
                "yredis_worker_permanent_failures_total counter",
                "yredis_connections gauge",
                "yredis_rooms gauge",
                "yredis_redis_command_seconds histogram",
                "yredis_worker_persist_seconds histogram",
            ]
        );
        assert!(text.contains("# HELP yredis_connections_total Websocket connections accepted.\n"));
        assert!(text
            .contains("# HELP yredis_rooms Rooms with at least one connection on this process.\n"));
    }

    #[test]
    fn counts_and_observes() {
        let before = MESSAGES_IN.get();
        MESSAGES_IN.inc_by(3);
        assert!(MESSAGES_IN.get() >= before + 3);
        WORKER_PERSIST_SECONDS.observe(0.0007);
        let text = render();
        let buckets: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("yredis_worker_persist_seconds_bucket{le=\""))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(
            buckets,
            [
                "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1",
                "5", "30", "+Inf"
            ]
        );
        // Nothing else in the library's tests persists a room.
        assert!(text.contains("yredis_worker_persist_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("yredis_worker_persist_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("yredis_worker_persist_seconds_count 1\n"));
    }
}
