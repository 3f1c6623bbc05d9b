//! Configuration from environment variables (and a `.env` file), with the
//! names @y/redis uses (README, "Configuration"). A bad value stops start-up with one line
//! naming the variable.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use thiserror::Error;

use crate::auth::TokenVerifier;
use crate::limits::{IpNet, Limits};
use crate::redis::{RedisSettings, SentinelSettings, TlsFiles};
pub use crate::secret::Secret;
use crate::storage::{S3Config, S3Keys, StorageConfig, DEFAULT_REGION};

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

/// Everything the server needs; the worker and auth settings join as they land.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Where Redis is (`REDIS`, which may carry a password, `REDIS_TLS_*`, `REDIS_SENTINEL*`).
    pub redis: RedisSettings,
    pub redis_prefix: String,
    pub log: String,
    /// `LOG_FORMAT=json`: one JSON object per line instead of text.
    pub log_json: bool,
    /// Largest websocket frame accepted from a client.
    pub max_frame_bytes: usize,
    /// Bytes queued towards one client before it counts as not reading and is cut off.
    pub max_send_queue_bytes: usize,
    /// How long one `XREAD BLOCK` waits before the listener loops.
    pub redis_block: Duration,
    /// Pause after a stream read that found entries (batches reads under load).
    pub redis_read_interval: Duration,
    /// Longest room name (raw path segment) in bytes.
    pub max_room_name_bytes: usize,
    /// Connection, message and byte limits.
    pub limits: Limits,
    /// Entries one client awareness message may carry.
    pub awareness_max_entries: usize,
    /// Bytes of one awareness state.
    pub awareness_max_state_bytes: usize,
    /// Awareness states one room tracks.
    pub awareness_max_clients: usize,
    /// Document engine helper processes (they run yrs).
    pub doc_helpers: usize,
    /// Address space of one helper process.
    pub doc_helper_memory_mb: u64,
    /// How long one helper request may take.
    pub doc_helper_timeout: Duration,
    /// Timeout of a single Redis command (other than the blocking read).
    pub redis_command_timeout: Duration,
    /// How long SIGTERM waits for sessions to close (and the worker for
    /// compactions in flight) before exiting.
    pub shutdown_grace: Duration,
    /// How long a server keeps serving after SIGTERM with `/readyz` failing,
    /// so load balancers stop sending it clients first.
    pub shutdown_drain: Duration,
    /// Port of `/metrics`, `/readyz`, `/healthz` and `/admin/recheck`, apart
    /// from the public websocket port; None: all on the public port.
    pub internal_port: Option<u16>,
    pub storage: StorageConfig,
    pub worker: WorkerConfig,
    pub auth: AuthConfig,
    /// Port of `y-redis auth-example`.
    pub auth_example_port: u16,
    /// Port of the worker's `/healthz`, `/readyz` and `/metrics`.
    pub worker_port: u16,
}

/// Settings of authentication (ARCHITECTURE.md, "Auth").
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `AUTH_DISABLED=true`: everyone reads and writes.
    pub disabled: bool,
    /// The JWK verifying tokens (already checked to parse).
    pub public_key: Option<String>,
    pub private_key: Option<Secret>,
    pub perm_callback: Option<String>,
    pub perm_timeout: Duration,
    /// Bearer secret of `POST /admin/recheck`; the endpoint is off without it.
    pub admin_secret: Option<Secret>,
}

impl Config {
    /// A server refuses to run open unless told so: both auth settings or
    /// `AUTH_DISABLED=true`.
    pub fn require_auth(&self) -> Result<(), ConfigError> {
        if self.auth.disabled {
            return Ok(());
        }
        let missing = |var| {
            ConfigError {
            var,
            reason: "required to authenticate clients (or set AUTH_DISABLED=true to let everyone read and write)".into(),
        }
        };
        if self.auth.public_key.is_none() {
            return Err(missing("AUTH_PUBLIC_KEY"));
        }
        if self.auth.perm_callback.is_none() {
            return Err(missing("AUTH_PERM_CALLBACK"));
        }
        Ok(())
    }
}

fn http_url(src: &Source, var: &'static str) -> Result<Option<String>, ConfigError> {
    match src.get(var).map(str::trim) {
        None => Ok(None),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(Some(url.to_owned()))
        }
        Some(_) => Err(ConfigError {
            var,
            reason: "expected an http:// or https:// URL".into(),
        }),
    }
}

fn auth_config(src: &Source) -> Result<AuthConfig, ConfigError> {
    let public_key = src.get("AUTH_PUBLIC_KEY").map(str::to_owned);
    if let Some(jwk) = &public_key {
        TokenVerifier::from_jwk(jwk).map_err(|reason| ConfigError {
            var: "AUTH_PUBLIC_KEY",
            reason,
        })?;
    }
    Ok(AuthConfig {
        disabled: src.bool("AUTH_DISABLED", false)?,
        public_key,
        private_key: src.get("AUTH_PRIVATE_KEY").map(|k| Secret(k.to_owned())),
        perm_callback: http_url(src, "AUTH_PERM_CALLBACK")?,
        perm_timeout: src.millis("AUTH_PERM_CALLBACK_TIMEOUT_MS", 5_000)?,
        admin_secret: src.get("ADMIN_SECRET").map(|k| Secret(k.to_owned())),
    })
}

/// Settings of `y-redis worker`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// A task is claimed only once it has waited this long (XAUTOCLAIM min-idle).
    pub task_debounce: Duration,
    /// Stream entries younger than this (relative to the newest) survive trimming.
    pub min_message_lifetime: Duration,
    /// Persistence actors in one worker process.
    pub concurrency: usize,
    /// Tasks one actor claims at a time.
    pub claim_count: usize,
    /// Pause when the queue had nothing to claim.
    pub idle_wait: Duration,
    pub update_callback: Option<String>,
    pub update_callback_timeout: Duration,
}

/// Where settings are read from: the process environment, falling back to a
/// `.env` file. Kept as a map so tests can build one without touching the
/// process environment.
pub struct Source {
    vars: HashMap<String, String>,
    /// Every variable the loader asked for, to keep [`VARIABLES`] honest.
    read: RefCell<BTreeSet<String>>,
}

/// Every variable the loader reads (`y-redis variables` prints them).
pub const VARIABLES: &[&str] = &[
    "ADMIN_SECRET",
    "AUTH_DISABLED",
    "AUTH_EXAMPLE_PORT",
    "AUTH_PERM_CALLBACK",
    "AUTH_PERM_CALLBACK_TIMEOUT_MS",
    "AUTH_PRIVATE_KEY",
    "AUTH_PUBLIC_KEY",
    "AWARENESS_MAX_CLIENTS",
    "AWARENESS_MAX_ENTRIES",
    "AWARENESS_MAX_STATE_BYTES",
    "AWARENESS_MAX_UPDATES_PER_SECOND",
    "DOC_HELPERS",
    "DOC_HELPER_MEMORY_MB",
    "DOC_HELPER_TIMEOUT_MS",
    "HOST",
    "INTERNAL_PORT",
    "LOG",
    "LOG_FORMAT",
    "MAX_BYTES_PER_SECOND",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "MAX_MESSAGES_PER_SECOND",
    "MAX_ROOM_NAME_BYTES",
    "MAX_UPGRADES_PER_IP_PER_SECOND",
    "PORT",
    "POSTGRES",
    "REDIS",
    "REDIS_BLOCK_MS",
    "REDIS_CLUSTER",
    "REDIS_COMMAND_TIMEOUT_MS",
    "REDIS_MIN_MESSAGE_LIFETIME",
    "REDIS_PREFIX",
    "REDIS_READ_INTERVAL_MS",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_TASK_DEBOUNCE",
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
    "S3_ACCESS_KEY",
    "S3_BUCKET",
    "S3_ENDPOINT",
    "S3_PORT",
    "S3_REGION",
    "S3_SECRET_KEY",
    "S3_SSL",
    "SHUTDOWN_DRAIN_MS",
    "SHUTDOWN_GRACE_MS",
    "STORAGE_DIR",
    "TRUSTED_PROXIES",
    "WORKER_CLAIM_COUNT",
    "WORKER_CONCURRENCY",
    "WORKER_IDLE_MS",
    "WORKER_PORT",
    "WS_MAX_FRAME_BYTES",
    "WS_MAX_SEND_QUEUE_BYTES",
    "YDOC_UPDATE_CALLBACK",
    "YDOC_UPDATE_CALLBACK_TIMEOUT_MS",
];

impl Source {
    /// The process environment plus `.env` (the environment wins).
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars: HashMap<String, String> = HashMap::new();
        match dotenvy::from_filename_iter(".env") {
            Ok(iter) => {
                for item in iter {
                    let (k, v) = item.map_err(|e| ConfigError {
                        var: ".env",
                        reason: format!("cannot parse: {e}"),
                    })?;
                    vars.insert(k, v);
                }
            }
            Err(e) if e.not_found() => {}
            Err(e) => {
                return Err(ConfigError {
                    var: ".env",
                    reason: format!("cannot read: {e}"),
                })
            }
        }
        vars.extend(std::env::vars());
        Ok(Source {
            vars,
            read: RefCell::default(),
        })
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Source {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            read: RefCell::default(),
        }
    }

    /// The value of `var`, or None when unset or empty (as y-redis treats empty).
    pub fn get(&self, var: &str) -> Option<&str> {
        self.read.borrow_mut().insert(var.to_owned());
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    pub fn number<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
                var,
                reason: format!("expected {what}, got {raw:?}"),
            }),
        }
    }

    /// A count that must be at least 1.
    pub fn positive(&self, var: &'static str, default: usize) -> Result<usize, ConfigError> {
        match self.number(var, default, "a positive number")? {
            0 => Err(ConfigError {
                var,
                reason: "must be at least 1".into(),
            }),
            n => Ok(n),
        }
    }

    pub fn millis(&self, var: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.number(var, default_ms, "a duration in milliseconds")
            .map(Duration::from_millis)
    }

    pub fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError {
                var,
                reason: format!("expected true or false, got {v:?}"),
            }),
        }
    }
}

impl Config {
    pub fn load(src: &Source) -> Result<Self, ConfigError> {
        let redis = redis_settings(src)?;
        let redis_prefix = src.string("REDIS_PREFIX", "y");
        if redis.cluster && redis_prefix.contains(['{', '}']) {
            // A brace would open a hash tag and put every key in one slot.
            return Err(ConfigError {
                var: "REDIS_PREFIX",
                reason: format!("must not contain braces with REDIS_CLUSTER, got {redis_prefix:?}"),
            });
        }
        if redis_prefix.contains(':') {
            // Stream names are split on ':' to recover the room; a prefix with
            // one would make worker tasks unparseable.
            return Err(ConfigError {
                var: "REDIS_PREFIX",
                reason: format!("must not contain ':', got {redis_prefix:?}"),
            });
        }
        let port: u16 = src.number("PORT", 3002, "a port number 0-65535")?;
        let max_frame_bytes: usize =
            src.number("WS_MAX_FRAME_BYTES", 32 << 20, "a size in bytes")?;
        if max_frame_bytes < 1024 {
            return Err(ConfigError {
                var: "WS_MAX_FRAME_BYTES",
                reason: format!("must be at least 1024, got {max_frame_bytes}"),
            });
        }
        let max_send_queue_bytes: usize =
            src.number("WS_MAX_SEND_QUEUE_BYTES", 64 << 20, "a size in bytes")?;
        let positive = |var, default| src.positive(var, default);
        let rate = |var: &'static str, default: f64| -> Result<f64, ConfigError> {
            let value: f64 = src.number(var, default, "a number per second")?;
            if value.is_finite() && value > 0.0 {
                Ok(value)
            } else {
                Err(ConfigError {
                    var,
                    reason: format!("must be above 0, got {value}"),
                })
            }
        };
        let trusted_proxies = match src.get("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.parse::<IpNet>())
                .collect::<Result<_, _>>()
                .map_err(|reason| ConfigError {
                    var: "TRUSTED_PROXIES",
                    reason,
                })?,
        };
        let limits = Limits {
            max_connections: positive("MAX_CONNECTIONS", 10_000)?,
            max_connections_per_ip: positive("MAX_CONNECTIONS_PER_IP", 1_000)?,
            upgrades_per_ip_per_second: rate("MAX_UPGRADES_PER_IP_PER_SECOND", 50.0)?,
            messages_per_second: rate("MAX_MESSAGES_PER_SECOND", 500.0)?,
            bytes_per_second: rate("MAX_BYTES_PER_SECOND", f64::from(8u32 << 20))?,
            awareness_per_second: rate("AWARENESS_MAX_UPDATES_PER_SECOND", 10.0)?,
            trusted_proxies,
        };
        Ok(Config {
            host: src.string("HOST", "0.0.0.0"),
            port,
            redis,
            redis_prefix,
            log: src.string("LOG", "info"),
            log_json: match src.string("LOG_FORMAT", "text").as_str() {
                "text" => false,
                "json" => true,
                other => {
                    return Err(ConfigError {
                        var: "LOG_FORMAT",
                        reason: format!("expected text or json, got {other:?}"),
                    })
                }
            },
            max_frame_bytes,
            max_send_queue_bytes,
            redis_block: src.millis("REDIS_BLOCK_MS", 1000)?,
            redis_read_interval: src.millis("REDIS_READ_INTERVAL_MS", 10)?,
            max_room_name_bytes: positive("MAX_ROOM_NAME_BYTES", 512)?,
            limits,
            awareness_max_entries: positive("AWARENESS_MAX_ENTRIES", 1_000)?,
            awareness_max_state_bytes: positive("AWARENESS_MAX_STATE_BYTES", 64 << 10)?,
            awareness_max_clients: positive("AWARENESS_MAX_CLIENTS", 1_000)?,
            doc_helpers: positive(
                "DOC_HELPERS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )?,
            doc_helper_memory_mb: src.number("DOC_HELPER_MEMORY_MB", 4096, "a size in MiB")?,
            doc_helper_timeout: src.millis("DOC_HELPER_TIMEOUT_MS", 60_000)?,
            redis_command_timeout: src.millis("REDIS_COMMAND_TIMEOUT_MS", 10_000)?,
            shutdown_grace: src.millis("SHUTDOWN_GRACE_MS", 2_000)?,
            shutdown_drain: src.millis("SHUTDOWN_DRAIN_MS", 0)?,
            internal_port: match src.get("INTERNAL_PORT") {
                None => None,
                Some(_) => Some(src.number("INTERNAL_PORT", 0, "a port number 0-65535")?),
            },
            storage: storage_config(src)?,
            worker: worker_config(src)?,
            auth: auth_config(src)?,
            auth_example_port: src.number("AUTH_EXAMPLE_PORT", 5173, "a port number 0-65535")?,
            worker_port: src.number("WORKER_PORT", 3003, "a port number 0-65535")?,
        })
    }
}

/// `REDIS` and the TLS and Sentinel variables (README, "Redis deployments").
fn redis_settings(src: &Source) -> Result<RedisSettings, ConfigError> {
    let url = src.string("REDIS", "redis://127.0.0.1:6379");
    let cluster = src.bool("REDIS_CLUSTER", false)?;
    let urls: Vec<&str> = if cluster {
        url.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    } else {
        vec![url.as_str()]
    };
    let tls = urls.first().is_some_and(|u| u.starts_with("rediss://"));
    for u in &urls {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            // The value may hold a password: name only its scheme.
            let scheme = u.split_once("://").map_or("none", |(scheme, _)| scheme);
            let what = if cluster {
                "redis:// or rediss:// URLs, comma-separated"
            } else {
                "a redis:// or rediss:// URL (several seed nodes only with REDIS_CLUSTER=true)"
            };
            return Err(ConfigError {
                var: "REDIS",
                reason: format!("expected {what}, got scheme {scheme:?}"),
            });
        }
        if u.starts_with("rediss://") != tls {
            return Err(ConfigError {
                var: "REDIS",
                reason: "seed nodes mix redis:// and rediss://".into(),
            });
        }
    }
    if urls.is_empty() {
        return Err(ConfigError {
            var: "REDIS",
            reason: "no seed node".into(),
        });
    }
    let file = |var: &'static str| -> Result<Option<std::path::PathBuf>, ConfigError> {
        match src.get(var) {
            Some(path) if !tls => Err(ConfigError {
                var,
                reason: format!("{path:?} is set but REDIS is not a rediss:// URL"),
            }),
            other => Ok(other.map(|p| p.trim().into())),
        }
    };
    let ca_file = file("REDIS_TLS_CA_FILE")?;
    let client = match (file("REDIS_TLS_CERT_FILE")?, file("REDIS_TLS_KEY_FILE")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(half_pair("REDIS_TLS_KEY_FILE", "REDIS_TLS_CERT_FILE")),
        (None, Some(_)) => return Err(half_pair("REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE")),
    };
    let sentinels = src.get("REDIS_SENTINELS");
    let master = src.get("REDIS_SENTINEL_MASTER");
    let password = src.get("REDIS_SENTINEL_PASSWORD");
    let sentinel = match (sentinels, master) {
        (None, None) if password.is_some() => {
            return Err(ConfigError {
                var: "REDIS_SENTINEL_PASSWORD",
                reason: "set without REDIS_SENTINELS".into(),
            })
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError {
                var: "REDIS_SENTINEL_MASTER",
                reason: "required with REDIS_SENTINELS (the master name the Sentinels monitor)"
                    .into(),
            })
        }
        (None, Some(_)) => {
            return Err(ConfigError {
                var: "REDIS_SENTINELS",
                reason: "required with REDIS_SENTINEL_MASTER (host:port,host:port,...)".into(),
            })
        }
        (Some(list), Some(master)) => Some(SentinelSettings {
            sentinels: list
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(parse_host_port)
                .collect::<Result<_, _>>()
                .map_err(|reason| ConfigError {
                    var: "REDIS_SENTINELS",
                    reason,
                })?,
            master: master.trim().to_owned(),
            password: password.map(|p| Secret(p.to_owned())),
        }),
    };
    if cluster && sentinel.is_some() {
        return Err(ConfigError {
            var: "REDIS_CLUSTER",
            reason: "a cluster has no Sentinels: unset REDIS_SENTINELS or REDIS_CLUSTER".into(),
        });
    }
    Ok(RedisSettings {
        url: Secret(url),
        tls: TlsFiles { ca_file, client },
        sentinel,
        cluster,
    })
}

/// A client certificate needs its key, and the other way round.
fn half_pair(missing: &'static str, given: &str) -> ConfigError {
    ConfigError {
        var: missing,
        reason: format!("required with {given} (a client certificate and its key)"),
    }
}

/// `host:port` or `[v6]:port`.
fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected host:port, got {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse()
        .map_err(|_| format!("expected host:port, got {s:?}"))?;
    if host.is_empty() {
        return Err(format!("expected host:port, got {s:?}"));
    }
    Ok((host.to_owned(), port))
}

fn storage_config(src: &Source) -> Result<StorageConfig, ConfigError> {
    if let Some(endpoint) = src.get("S3_ENDPOINT") {
        let ssl = src.bool("S3_SSL", false)?;
        // Both keys, or neither (then the AWS credential chain, e.g. IRSA).
        let keys = match (src.get("S3_ACCESS_KEY"), src.get("S3_SECRET_KEY")) {
            (Some(access), Some(secret)) => Some(S3Keys {
                access_key: access.to_owned(),
                secret_key: Secret(secret.to_owned()),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(half_keys("S3_SECRET_KEY", "S3_ACCESS_KEY")),
            (None, Some(_)) => return Err(half_keys("S3_ACCESS_KEY", "S3_SECRET_KEY")),
        };
        return Ok(StorageConfig::S3(S3Config {
            endpoint: endpoint.trim().to_owned(),
            port: src.number("S3_PORT", if ssl { 443 } else { 80 }, "a port number")?,
            ssl,
            region: src.string("S3_REGION", DEFAULT_REGION).trim().to_owned(),
            keys,
            bucket: src.string("S3_BUCKET", "ydocs"),
        }));
    }
    if let Some(url) = src.get("POSTGRES") {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: "POSTGRES",
                reason: "expected a postgres:// URL".into(),
            });
        }
        return Ok(StorageConfig::Postgres {
            url: Secret(url.to_owned()),
        });
    }
    Ok(StorageConfig::Filesystem {
        dir: src.string("STORAGE_DIR", "./y-redis-data").into(),
    })
}

fn half_keys(missing: &'static str, given: &str) -> ConfigError {
    ConfigError {
        var: missing,
        reason: format!(
            "required with {given} (or leave both unset to use the AWS credential chain)"
        ),
    }
}

fn worker_config(src: &Source) -> Result<WorkerConfig, ConfigError> {
    let positive = |var, default| src.positive(var, default);
    let update_callback = http_url(src, "YDOC_UPDATE_CALLBACK")?;
    Ok(WorkerConfig {
        task_debounce: src.millis("REDIS_TASK_DEBOUNCE", 10_000)?,
        min_message_lifetime: src.millis("REDIS_MIN_MESSAGE_LIFETIME", 60_000)?,
        concurrency: positive("WORKER_CONCURRENCY", 4)?,
        claim_count: positive("WORKER_CLAIM_COUNT", 5)?,
        idle_wait: src.millis("WORKER_IDLE_MS", 1_000)?,
        update_callback,
        update_callback_timeout: src.millis("YDOC_UPDATE_CALLBACK_TIMEOUT_MS", 10_000)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_y_redis() {
        let cfg = Config::load(&Source::from_pairs([])).expect("defaults are valid");
        assert_eq!(cfg.port, 3002);
        assert_eq!(cfg.redis.url.0, "redis://127.0.0.1:6379");
        assert!(cfg.redis.sentinel.is_none() && cfg.redis.tls.is_empty());
        assert_eq!(cfg.redis_prefix, "y");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::load(&Source::from_pairs([("PORT", "abc")])).unwrap_err();
        assert_eq!(err.var, "PORT");
        assert_eq!(
            err.to_string(),
            "PORT: expected a port number 0-65535, got \"abc\""
        );
        let err = Config::load(&Source::from_pairs([("REDIS", "localhost")])).unwrap_err();
        assert_eq!(err.var, "REDIS");
        let err = Config::load(&Source::from_pairs([("REDIS_PREFIX", "a:b")])).unwrap_err();
        assert_eq!(err.var, "REDIS_PREFIX");
        let err = Config::load(&Source::from_pairs([("REDIS_BLOCK_MS", "-1")])).unwrap_err();
        assert_eq!(err.var, "REDIS_BLOCK_MS");
    }

    #[test]
    fn redis_tls_and_sentinel_settings() {
        let err = Config::load(&Source::from_pairs([("REDIS", "http://u:hunter2@h")])).unwrap_err();
        assert_eq!(err.var, "REDIS");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err =
            Config::load(&Source::from_pairs([("REDIS_TLS_CA_FILE", "/ca.pem")])).unwrap_err();
        assert_eq!(err.var, "REDIS_TLS_CA_FILE");
        let err = Config::load(&Source::from_pairs([
            ("REDIS", "rediss://h:6380"),
            ("REDIS_TLS_CERT_FILE", "/c.pem"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "REDIS_TLS_KEY_FILE");
        let cfg = Config::load(&Source::from_pairs([
            ("REDIS", "rediss://h:6380"),
            ("REDIS_TLS_CA_FILE", "/ca.pem"),
            ("REDIS_TLS_CERT_FILE", "/c.pem"),
            ("REDIS_TLS_KEY_FILE", "/k.pem"),
        ]))
        .expect("valid");
        assert_eq!(cfg.redis.tls.ca_file.as_deref(), Some("/ca.pem".as_ref()));
        assert!(cfg.redis.tls.client.is_some());
        let err = Config::load(&Source::from_pairs([("REDIS_SENTINELS", "a:1")])).unwrap_err();
        assert_eq!(err.var, "REDIS_SENTINEL_MASTER");
        let err = Config::load(&Source::from_pairs([("REDIS_SENTINEL_MASTER", "m")])).unwrap_err();
        assert_eq!(err.var, "REDIS_SENTINELS");
        let err = Config::load(&Source::from_pairs([
            ("REDIS_SENTINELS", "a"),
            ("REDIS_SENTINEL_MASTER", "m"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "REDIS_SENTINELS");
        let cfg = Config::load(&Source::from_pairs([
            ("REDIS_SENTINELS", "s1:26379, [::1]:26380"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_SENTINEL_PASSWORD", "hunter2"),
        ]))
        .expect("valid");
        let sentinel = cfg.redis.sentinel.as_ref().expect("sentinel");
        assert_eq!(
            sentinel.sentinels,
            vec![("s1".into(), 26379), ("::1".into(), 26380)]
        );
        assert_eq!(sentinel.master, "mymaster");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn storage_is_chosen_like_y_redis() {
        let fs = Config::load(&Source::from_pairs([])).expect("valid");
        assert!(matches!(fs.storage, StorageConfig::Filesystem { .. }));
        let pg =
            Config::load(&Source::from_pairs([("POSTGRES", "postgres://u@h/db")])).expect("valid");
        assert!(matches!(pg.storage, StorageConfig::Postgres { .. }));
        let s3 = Config::load(&Source::from_pairs([
            ("POSTGRES", "postgres://u@h/db"),
            ("S3_ENDPOINT", "localhost"),
            ("S3_PORT", "9000"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "b"),
        ]))
        .expect("valid");
        match s3.storage {
            StorageConfig::S3(c) => {
                assert_eq!((c.port, c.bucket.as_str(), c.ssl), (9000, "ydocs", false));
                assert_eq!(c.region, "us-east-1");
                let keys = c.keys.expect("keys given");
                assert_eq!(
                    (keys.access_key.as_str(), keys.secret_key.0.as_str()),
                    ("a", "b")
                );
            }
            other => panic!("expected s3, got {other:?}"),
        }
    }

    #[test]
    fn s3_keys_are_optional_and_the_region_configurable() {
        // No keys: the AWS credential chain (IRSA, instance roles, AWS_* env).
        let cfg = Config::load(&Source::from_pairs([
            ("S3_ENDPOINT", "s3.eu-central-1.amazonaws.com"),
            ("S3_REGION", "eu-central-1"),
        ]))
        .expect("valid without keys");
        match cfg.storage {
            StorageConfig::S3(c) => {
                assert_eq!(c.region, "eu-central-1");
                assert!(c.keys.is_none());
            }
            other => panic!("expected s3, got {other:?}"),
        }
        // Half a key pair is a mistake, not a reason to fall back.
        let err = Config::load(&Source::from_pairs([
            ("S3_ENDPOINT", "localhost"),
            ("S3_ACCESS_KEY", "a"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "S3_SECRET_KEY");
        let err = Config::load(&Source::from_pairs([
            ("S3_ENDPOINT", "localhost"),
            ("S3_SECRET_KEY", "b"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "S3_ACCESS_KEY");
        let cfg = Config::load(&Source::from_pairs([
            ("S3_ENDPOINT", "localhost"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "hunter2"),
        ]))
        .expect("valid");
        assert!(
            !format!("{cfg:?}").contains("hunter2"),
            "the S3 secret never prints"
        );
    }

    #[test]
    fn worker_settings_are_checked() {
        let err = Config::load(&Source::from_pairs([("WORKER_CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(err.var, "WORKER_CONCURRENCY");
    }

    #[test]
    fn auth_is_required_unless_disabled() {
        let cfg = Config::load(&Source::from_pairs([])).expect("valid");
        assert_eq!(cfg.require_auth().unwrap_err().var, "AUTH_PUBLIC_KEY");
        let cfg = Config::load(&Source::from_pairs([("AUTH_DISABLED", "true")])).expect("valid");
        assert!(cfg.require_auth().is_ok());
        let err =
            Config::load(&Source::from_pairs([("AUTH_PUBLIC_KEY", "{not json")])).unwrap_err();
        assert_eq!(err.var, "AUTH_PUBLIC_KEY");
        let err = Config::load(&Source::from_pairs([(
            "AUTH_PERM_CALLBACK",
            "localhost:5173",
        )]))
        .unwrap_err();
        assert_eq!(err.var, "AUTH_PERM_CALLBACK");
        let cfg = Config::load(&Source::from_pairs([("ADMIN_SECRET", "hunter2")])).expect("valid");
        assert!(
            !format!("{cfg:?}").contains("hunter2"),
            "secrets never print"
        );
    }

    #[test]
    fn no_secret_reaches_a_debug_print() {
        for pairs in [
            vec![
                ("REDIS", "redis://user:hunter2@r:6379"),
                ("POSTGRES", "postgres://u:hunter2@db/y"),
                ("AUTH_PRIVATE_KEY", "hunter2"),
            ],
            vec![
                ("S3_ENDPOINT", "s3"),
                ("S3_ACCESS_KEY", "a"),
                ("S3_SECRET_KEY", "hunter2"),
            ],
        ] {
            let cfg = Config::load(&Source::from_pairs(pairs)).expect("valid");
            let printed = format!("{cfg:?}");
            assert!(!printed.contains("hunter2"), "{printed}");
        }
    }

    #[test]
    fn variables_list_is_exactly_what_the_loader_reads() {
        let mut read = BTreeSet::new();
        let s3 = [
            ("S3_ENDPOINT", "h"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "b"),
        ];
        for pairs in [vec![], vec![("POSTGRES", "postgres://x/y")], s3.to_vec()] {
            let src = Source::from_pairs(pairs);
            Config::load(&src).expect("valid");
            read.extend(src.read.take());
        }
        let listed: BTreeSet<String> = VARIABLES.iter().map(|v| v.to_string()).collect();
        assert_eq!(read, listed);
    }

    #[test]
    fn empty_values_mean_default() {
        let cfg = Config::load(&Source::from_pairs([("PORT", " ")])).expect("empty is default");
        assert_eq!(cfg.port, 3002);
    }
}
