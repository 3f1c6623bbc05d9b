//! The command line and the configuration, from one clap declaration: each
//! setting is an environment variable with the name @y/redis uses (README,
//! "Configuration") and a long flag (`PORT`, `--port`). A flag wins over the
//! environment, the environment over `.env`, `.env` over the default; an empty
//! value means unset. A bad value stops start-up with one line naming the
//! variable.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use thiserror::Error;

use crate::auth::TokenVerifier;
use crate::limits::{IpNet, Limits};
pub use crate::secret::Secret;
use crate::storage::{S3Config, S3Keys, StorageConfig, DEFAULT_REGION};
use crate::streams::{RedisSettings, SentinelSettings, TlsFiles};

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The variable at fault (or `.env`).
    pub var: String,
    pub reason: String,
}

impl ConfigError {
    fn new(var: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            var: var.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Horizontally scalable y-websocket backend on Redis streams.
#[derive(Debug, Parser)]
#[command(
    name = "y-redis",
    arg_required_else_help = true,
    after_help = "Every setting is an environment variable (also read from ./.env) and a flag \
                  of the same name: PORT=3003 or --port 3003. A flag wins over the environment, \
                  the environment over .env; an empty value means the default. \
                  `y-redis <command> --help` lists the settings of a command."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Websocket server on ws://HOST:PORT/{room}, plus /healthz, /readyz, /metrics
    Server(Settings),
    /// Persistence worker: moves documents from Redis to storage
    Worker(Settings),
    /// Server and worker in one process
    All(Settings),
    /// Prepare the storage and exit: create or update the Postgres table (under
    /// an advisory lock, so any number may run at once), or create the S3
    /// bucket or the STORAGE_DIR folder
    Migrate(MigrateArgs),
    /// Print the name of every configuration variable
    Variables,
    /// Print a new AUTH_PUBLIC_KEY / AUTH_PRIVATE_KEY pair (lib0 JWK format) as
    /// .env lines (single-quoted: y-redis keygen >> .env)
    Keygen,
    /// Example auth backend on AUTH_EXAMPLE_PORT, signing tokens with AUTH_PRIVATE_KEY
    AuthExample(AuthExampleArgs),
}

/// The settings of `server`, `worker` and `all`: what [`Config`] holds.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub docs: DocArgs,
    #[command(flatten)]
    pub worker: WorkerConfig,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AuthExampleArgs {
    /// JWK signing tokens (y-redis keygen prints one)
    #[arg(long, env = "AUTH_PRIVATE_KEY", hide_env_values = true, value_parser = secret)]
    pub auth_private_key: Option<Secret>,
    /// Port of the example auth backend
    #[arg(long, env = "AUTH_EXAMPLE_PORT", default_value_t = 5173, value_parser = port)]
    pub auth_example_port: u16,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter: error..trace or tracing directives like y_redis=debug; * means debug
    #[arg(long, env = "LOG", default_value = "info", value_parser = text)]
    pub log: String,
    /// text, or json for one JSON object per line
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = log_format)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listening and shutdown")]
pub struct ListenArgs {
    /// Address to bind (server and worker endpoints)
    #[arg(long, env = "HOST", default_value = "0.0.0.0", value_parser = text)]
    pub host: String,
    /// Server port: ws://HOST:PORT/{room}
    #[arg(long, env = "PORT", default_value_t = 3002, value_parser = port)]
    pub port: u16,
    /// Serve /metrics, /readyz, /healthz and /admin/recheck on this port
    /// instead of the public one, which then serves websockets only
    #[arg(long, env = "INTERNAL_PORT", value_parser = port)]
    pub internal_port: Option<u16>,
    /// Port of the worker's /healthz, /readyz, /metrics
    #[arg(long, env = "WORKER_PORT", default_value_t = 3003, value_parser = port)]
    pub worker_port: u16,
    /// On SIGTERM, ms sessions get to close (the worker: compactions in flight to finish)
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value = "2000", value_parser = millis)]
    pub shutdown_grace_ms: Duration,
    /// On SIGTERM, ms the server keeps serving with /readyz failing, so load balancers take it out first
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value = "0", value_parser = millis)]
    pub shutdown_drain_ms: Duration,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    /// Redis URL (redis:// or rediss:// for TLS), may carry a user and password;
    /// with REDIS_CLUSTER=true one or more seed nodes, comma-separated
    #[arg(long, env = "REDIS", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = secret)]
    pub redis: Secret,
    /// true: REDIS names seed nodes of a Redis Cluster
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, value_parser = boolean,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key; must not contain ':'
    #[arg(long, env = "REDIS_PREFIX", default_value = "y", value_parser = text)]
    pub redis_prefix: String,
    /// PEM file of the CA(s) of the Redis server's certificate, with rediss:// (default: the system roots)
    #[arg(long, env = "REDIS_TLS_CA_FILE", value_parser = text)]
    pub redis_tls_ca_file: Option<String>,
    /// PEM client certificate, with rediss:// and REDIS_TLS_KEY_FILE
    #[arg(long, env = "REDIS_TLS_CERT_FILE", value_parser = text)]
    pub redis_tls_cert_file: Option<String>,
    /// PEM key of the client certificate
    #[arg(long, env = "REDIS_TLS_KEY_FILE", value_parser = text)]
    pub redis_tls_key_file: Option<String>,
    /// Sentinels as host:port,host:port,... (needs REDIS_SENTINEL_MASTER)
    #[arg(long, env = "REDIS_SENTINELS", value_parser = text)]
    pub redis_sentinels: Option<String>,
    /// The master name the Sentinels monitor
    #[arg(long, env = "REDIS_SENTINEL_MASTER", value_parser = text)]
    pub redis_sentinel_master: Option<String>,
    /// Password of the Sentinels, if they require one
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true, value_parser = secret)]
    pub redis_sentinel_password: Option<Secret>,
    /// Timeout in ms of each Redis command except the blocking read
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub redis_command_timeout_ms: Duration,
    /// How long in ms one XREAD BLOCK waits
    #[arg(long, env = "REDIS_BLOCK_MS", default_value = "1000", value_parser = millis)]
    pub redis_block_ms: Duration,
    /// While the streams are busy, reads start at most this often (ms); 0: no spacing (a busy read still waits until the rooms handled the previous one)
    #[arg(long, env = "REDIS_READ_INTERVAL_MS", default_value = "10", value_parser = millis)]
    pub redis_read_interval_ms: Duration,
    /// Longest spacing of busy reads (ms): it grows with the messages delivered per second above 60,000; equal to REDIS_READ_INTERVAL_MS keeps the spacing fixed
    #[arg(long, env = "REDIS_READ_INTERVAL_MAX_MS", default_value = "30", value_parser = millis)]
    pub redis_read_interval_max_ms: Duration,
    /// Name only busy streams in stream reads and wake quiet ones by Redis keyspace notifications (turned on with CONFIG SET if needed; not on Redis Cluster)
    #[arg(long, env = "REDIS_STREAM_EVENTS", default_value_t = true, value_parser = boolean,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub redis_stream_events: bool,
}

#[derive(Debug, Clone, Args)]
#[command(
    next_help_heading = "Storage (S3 if S3_ENDPOINT is set, else Postgres if POSTGRES is, else STORAGE_DIR)"
)]
pub struct StorageArgs {
    /// S3 host name; when set, documents go to S3
    #[arg(long, env = "S3_ENDPOINT", value_parser = text)]
    pub s3_endpoint: Option<String>,
    /// S3 port [default: 443 with S3_SSL, else 80]
    #[arg(long, env = "S3_PORT", value_parser = port)]
    pub s3_port: Option<u16>,
    /// Use https for S3
    #[arg(long, env = "S3_SSL", default_value_t = false, value_parser = boolean,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub s3_ssl: bool,
    /// Region the S3 requests are signed for
    #[arg(long, env = "S3_REGION", default_value = DEFAULT_REGION, value_parser = text)]
    pub s3_region: String,
    /// S3 access key; both keys unset: the standard AWS credential chain
    #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true, value_parser = text)]
    pub s3_access_key: Option<String>,
    /// S3 secret key
    #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true, value_parser = secret)]
    pub s3_secret_key: Option<Secret>,
    /// Bucket, created at start if missing
    #[arg(long, env = "S3_BUCKET", default_value = "ydocs", value_parser = text)]
    pub s3_bucket: String,
    /// postgres:// URL; used when S3_ENDPOINT is not set
    #[arg(long, env = "POSTGRES", hide_env_values = true, value_parser = secret)]
    pub postgres: Option<Secret>,
    /// Filesystem storage, used when neither S3 nor Postgres is set
    #[arg(long, env = "STORAGE_DIR", default_value = "./y-redis-data", value_parser = text)]
    pub storage_dir: String,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Largest message a client may send, in bytes (at least 1024)
    #[arg(long, env = "WS_MAX_FRAME_BYTES", default_value_t = 32 << 20, value_parser = bytes)]
    pub ws_max_frame_bytes: usize,
    /// Bytes queued towards a client that stopped reading before it is cut off
    #[arg(long, env = "WS_MAX_SEND_QUEUE_BYTES", default_value_t = 64 << 20, value_parser = bytes)]
    pub ws_max_send_queue_bytes: usize,
    /// Send clients their own messages back, as @y/redis does (y-websocket ignores them); off, a client gets its own only after 10 s without other messages, which keeps a lone client's connection alive
    #[arg(long, env = "ECHO_OWN_MESSAGES", default_value_t = false, value_parser = boolean,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub echo_own_messages: bool,
    /// Longest room name (the raw path segment) in bytes
    #[arg(long, env = "MAX_ROOM_NAME_BYTES", default_value_t = 512, value_parser = positive)]
    pub max_room_name_bytes: usize,
    /// Open websocket connections per process
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = positive)]
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64)
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 1_000, value_parser = positive)]
    pub max_connections_per_ip: usize,
    /// Upgrades per second per client address
    #[arg(long, env = "MAX_UPGRADES_PER_IP_PER_SECOND", default_value = "50", value_parser = per_second)]
    pub max_upgrades_per_ip_per_second: f64,
    /// Messages per second per connection
    #[arg(long, env = "MAX_MESSAGES_PER_SECOND", default_value = "500", value_parser = per_second)]
    pub max_messages_per_second: f64,
    /// Bytes per second per connection
    #[arg(long, env = "MAX_BYTES_PER_SECOND", default_value = "8388608", value_parser = per_second)]
    pub max_bytes_per_second: f64,
    /// Comma-separated addresses or ranges (10.0.0.0/8) of proxies whose X-Forwarded-For names the client
    #[arg(long, env = "TRUSTED_PROXIES", value_parser = text)]
    pub trusted_proxies: Option<String>,
    /// Entries one client awareness message may carry
    #[arg(long, env = "AWARENESS_MAX_ENTRIES", default_value_t = 1_000, value_parser = positive)]
    pub awareness_max_entries: usize,
    /// Bytes of one awareness state
    #[arg(long, env = "AWARENESS_MAX_STATE_BYTES", default_value_t = 64 << 10, value_parser = positive)]
    pub awareness_max_state_bytes: usize,
    /// Awareness messages per second per connection (faster ones are coalesced)
    #[arg(long, env = "AWARENESS_MAX_UPDATES_PER_SECOND", default_value = "10", value_parser = per_second)]
    pub awareness_max_updates_per_second: f64,
    /// Presence states one room tracks
    #[arg(long, env = "AWARENESS_MAX_CLIENTS", default_value_t = 1_000, value_parser = positive)]
    pub awareness_max_clients: usize,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Document engine")]
pub struct DocArgs {
    /// Document engine helper processes (they run yrs); the default is the number of CPUs
    #[arg(long, env = "DOC_HELPERS", default_value_t = cpus(), value_parser = positive)]
    pub doc_helpers: usize,
    /// Address space of one helper process in MiB (0: no limit)
    #[arg(long, env = "DOC_HELPER_MEMORY_MB", default_value_t = 4096, value_parser = mib)]
    pub doc_helper_memory_mb: u64,
    /// How long in ms one document may take to build; a helper past it is killed
    #[arg(long, env = "DOC_HELPER_TIMEOUT_MS", default_value = "60000", value_parser = millis)]
    pub doc_helper_timeout_ms: Duration,
}

// Value parsers: each error is the reason after "VARIABLE: ".

fn number<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("expected {what}, got {raw:?}"))
}

fn port(raw: &str) -> Result<u16, String> {
    number(raw, "a port number 0-65535")
}

fn bytes(raw: &str) -> Result<usize, String> {
    number(raw, "a size in bytes")
}

fn mib(raw: &str) -> Result<u64, String> {
    number(raw, "a size in MiB")
}

fn millis(raw: &str) -> Result<Duration, String> {
    number(raw, "a duration in milliseconds").map(Duration::from_millis)
}

/// A count that must be at least 1.
fn positive(raw: &str) -> Result<usize, String> {
    match number(raw, "a positive number")? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn per_second(raw: &str) -> Result<f64, String> {
    let value: f64 = number(raw, "a number per second")?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("must be above 0, got {value}"))
    }
}

fn boolean(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        v => Err(format!("expected true or false, got {v:?}")),
    }
}

/// A flag given an empty value (the environment's empty values never get
/// here: they mean unset).
fn text(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("empty (leave it unset for the default)".into())
    } else {
        Ok(raw.to_owned())
    }
}

fn secret(raw: &str) -> Result<Secret, String> {
    text(raw).map(Secret)
}

/// A JWK that verifies tokens.
fn jwk(raw: &str) -> Result<String, String> {
    TokenVerifier::from_jwk(raw)?;
    Ok(raw.to_owned())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn http_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else {
        Err("expected an http:// or https:// URL".into())
    }
}

fn log_format(raw: &str) -> Result<LogFormat, String> {
    match raw {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("expected text or json, got {other:?}")),
    }
}

/// How a command line failed.
#[derive(Debug)]
pub enum CliError {
    /// A variable (or its flag) has a bad value.
    Invalid(ConfigError),
    /// Anything else (also `--help`): clap prints it and picks the exit code.
    Usage(clap::Error),
}

impl Cli {
    /// Parses `args` (the program name first) and the process environment,
    /// into which [`load_dotenv`] has put `.env`.
    pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cli, CliError> {
        parse(Cli::command(), args)
    }
}

/// Parses with `cmd`, variables set to an empty value left out: clap would
/// take "" as a value, y-redis (like its .env template) means "unset".
fn parse<T: FromArgMatches>(
    cmd: clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<T, CliError> {
    fn unset_blank(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|arg| {
            let blank = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.to_string_lossy().trim().is_empty());
            if blank {
                arg.env(None::<&str>)
            } else {
                arg
            }
        })
        .mut_subcommands(unset_blank)
    }
    let mut cmd = unset_blank(cmd);
    let parsed = cmd
        .try_get_matches_from_mut(args)
        .and_then(|matches| T::from_arg_matches(&matches));
    parsed.map_err(|e| {
        // Every subcommand's arguments complete, to be shown and compared.
        cmd.build();
        match invalid_value(&cmd, &e) {
            Some(invalid) => CliError::Invalid(invalid),
            None => CliError::Usage(e),
        }
    })
}

/// A value parser's error as `VARIABLE: reason` (clap's own names the flag).
fn invalid_value(cmd: &clap::Command, e: &clap::Error) -> Option<ConfigError> {
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let arg = all_args(cmd)
        .into_iter()
        .find(|a| a.to_string() == *shown)?;
    let var = arg.get_env()?.to_string_lossy();
    let reason = std::error::Error::source(e)?.to_string();
    Some(ConfigError::new(&var, reason))
}

/// The arguments of `cmd` and of its subcommands.
fn all_args(cmd: &clap::Command) -> Vec<&clap::Arg> {
    cmd.get_arguments()
        .chain(cmd.get_subcommands().flat_map(all_args))
        .collect()
}

/// Every variable some command reads, sorted (`y-redis variables`).
pub fn variables() -> Vec<String> {
    let cmd = Cli::command();
    let names: BTreeSet<String> = all_args(&cmd)
        .into_iter()
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    names.into_iter().collect()
}

/// Puts `./.env` (or the nearest in a parent folder) into the process
/// environment, under the variables already set.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::from_filename(".env") {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e @ dotenvy::Error::LineParse(..)) => {
            Err(ConfigError::new(".env", format!("cannot parse: {e}")))
        }
        Err(e) => Err(ConfigError::new(".env", format!("cannot read: {e}"))),
    }
}

/// Everything a server or worker needs (`y-redis server|worker|all`).
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Where Redis is (`REDIS`, which may carry a password, `REDIS_TLS_*`, `REDIS_SENTINEL*`).
    pub redis: RedisSettings,
    pub redis_prefix: String,
    /// Largest websocket frame accepted from a client.
    pub max_frame_bytes: usize,
    /// Bytes queued towards one client before it counts as not reading and is cut off.
    pub max_send_queue_bytes: usize,
    /// Clients get their own messages back.
    pub echo_own_messages: bool,
    /// How long one `XREAD BLOCK` waits before the listener loops.
    pub redis_block: Duration,
    /// Least spacing of stream reads while the streams are busy (batches reads under load).
    pub redis_read_interval: Duration,
    /// Spacing the listener grows to as the streams get busier.
    pub redis_read_interval_max: Duration,
    /// Whether keyspace notifications wake stream reads.
    pub redis_stream_events: bool,
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
    /// Port of the worker's `/healthz`, `/readyz` and `/metrics`.
    pub worker_port: u16,
}

/// Settings of authentication (ARCHITECTURE.md, "Auth").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Auth")]
pub struct AuthConfig {
    /// true lets everyone read and write (logged loudly)
    #[arg(long = "auth-disabled", env = "AUTH_DISABLED", default_value_t = false, value_parser = boolean,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub disabled: bool,
    /// JWK verifying client tokens (ES384); required by the server unless AUTH_DISABLED=true
    #[arg(long = "auth-public-key", env = "AUTH_PUBLIC_KEY", value_parser = jwk)]
    pub public_key: Option<String>,
    /// Permission callback base URL: GET {url}/{room}/{userid}; required likewise
    #[arg(long = "auth-perm-callback", env = "AUTH_PERM_CALLBACK", value_parser = http_url)]
    pub perm_callback: Option<String>,
    /// Timeout in ms of one permission callback
    #[arg(long = "auth-perm-callback-timeout-ms", env = "AUTH_PERM_CALLBACK_TIMEOUT_MS", default_value = "5000", value_parser = millis)]
    pub perm_timeout: Duration,
    /// Bearer secret of POST /admin/recheck; the endpoint is off without it
    #[arg(long = "admin-secret", env = "ADMIN_SECRET", hide_env_values = true, value_parser = secret)]
    pub admin_secret: Option<Secret>,
}

/// Settings of `y-redis worker`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// Ms a room waits after its first change before a worker claims it (XAUTOCLAIM min-idle)
    #[arg(long = "redis-task-debounce", env = "REDIS_TASK_DEBOUNCE", default_value = "10000", value_parser = millis)]
    pub task_debounce: Duration,
    /// Ms stream entries younger than the newest survive trimming (late readers still find them)
    #[arg(long = "redis-min-message-lifetime", env = "REDIS_MIN_MESSAGE_LIFETIME", default_value = "60000", value_parser = millis)]
    pub min_message_lifetime: Duration,
    /// Persistence actors in one worker process
    #[arg(long = "worker-concurrency", env = "WORKER_CONCURRENCY", default_value_t = 4, value_parser = positive)]
    pub concurrency: usize,
    /// Tasks one actor claims at a time
    #[arg(long = "worker-claim-count", env = "WORKER_CLAIM_COUNT", default_value_t = 5, value_parser = positive)]
    pub claim_count: usize,
    /// Pause in ms when the queue had nothing to claim
    #[arg(long = "worker-idle-ms", env = "WORKER_IDLE_MS", default_value = "1000", value_parser = millis)]
    pub idle_wait: Duration,
    /// After persisting a changed document the worker PUTs it to {url}/{room}
    #[arg(long = "ydoc-update-callback", env = "YDOC_UPDATE_CALLBACK", value_parser = http_url)]
    pub update_callback: Option<String>,
    /// Timeout in ms of that call
    #[arg(long = "ydoc-update-callback-timeout-ms", env = "YDOC_UPDATE_CALLBACK_TIMEOUT_MS", default_value = "10000", value_parser = millis)]
    pub update_callback_timeout: Duration,
}

impl Config {
    /// The configuration `y-redis server` would run with, from (VARIABLE,
    /// value) pairs that win over the process environment (an empty value:
    /// unset). For tests and programs embedding the server.
    pub fn from_vars<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let cmd = Settings::augment_args(clap::Command::new("y-redis"));
        let mut args = vec![OsString::from("y-redis")];
        for (var, value) in pairs {
            let flag = cmd
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|env| env == var))
                .and_then(|a| a.get_long())
                .ok_or_else(|| ConfigError::new(var, "not a setting of y-redis server"))?;
            if !value.trim().is_empty() {
                args.push(format!("--{flag}={value}").into());
            }
        }
        match parse::<Settings>(cmd, args) {
            Ok(settings) => settings.into_config(),
            Err(CliError::Invalid(e)) => Err(e),
            Err(CliError::Usage(e)) => Err(ConfigError::new("arguments", e.to_string())),
        }
    }

    /// A server refuses to run open unless told so: both auth settings or
    /// `AUTH_DISABLED=true`.
    pub fn require_auth(&self) -> Result<(), ConfigError> {
        if self.auth.disabled {
            return Ok(());
        }
        let missing = |var| {
            ConfigError::new(
                var,
                "required to authenticate clients (or set AUTH_DISABLED=true to let everyone read and write)",
            )
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

impl Settings {
    /// Checks what single values cannot tell (settings that go together,
    /// URLs, lists) and builds the [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let Settings {
            log: _,
            listen,
            redis,
            storage,
            auth,
            limits,
            docs,
            worker,
        } = self;
        let redis_settings = redis_settings(&redis)?;
        let redis_prefix = redis.redis_prefix;
        if redis_settings.cluster && redis_prefix.contains(['{', '}']) {
            // A brace would open a hash tag and put every key in one slot.
            return Err(ConfigError::new(
                "REDIS_PREFIX",
                format!("must not contain braces with REDIS_CLUSTER, got {redis_prefix:?}"),
            ));
        }
        if redis_prefix.contains(':') {
            // Stream names are split on ':' to recover the room; a prefix with
            // one would make worker tasks unparseable.
            return Err(ConfigError::new(
                "REDIS_PREFIX",
                format!("must not contain ':', got {redis_prefix:?}"),
            ));
        }
        if limits.ws_max_frame_bytes < 1024 {
            return Err(ConfigError::new(
                "WS_MAX_FRAME_BYTES",
                format!("must be at least 1024, got {}", limits.ws_max_frame_bytes),
            ));
        }
        let trusted_proxies = match &limits.trusted_proxies {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.parse::<IpNet>())
                .collect::<Result<_, _>>()
                .map_err(|reason| ConfigError::new("TRUSTED_PROXIES", reason))?,
        };
        Ok(Config {
            host: listen.host,
            port: listen.port,
            redis: redis_settings,
            redis_prefix,
            max_frame_bytes: limits.ws_max_frame_bytes,
            max_send_queue_bytes: limits.ws_max_send_queue_bytes,
            echo_own_messages: limits.echo_own_messages,
            redis_block: redis.redis_block_ms,
            redis_read_interval: redis.redis_read_interval_ms,
            redis_read_interval_max: redis
                .redis_read_interval_max_ms
                .max(redis.redis_read_interval_ms),
            redis_stream_events: redis.redis_stream_events,
            max_room_name_bytes: limits.max_room_name_bytes,
            limits: Limits {
                max_connections: limits.max_connections,
                max_connections_per_ip: limits.max_connections_per_ip,
                upgrades_per_ip_per_second: limits.max_upgrades_per_ip_per_second,
                messages_per_second: limits.max_messages_per_second,
                bytes_per_second: limits.max_bytes_per_second,
                awareness_per_second: limits.awareness_max_updates_per_second,
                trusted_proxies,
            },
            awareness_max_entries: limits.awareness_max_entries,
            awareness_max_state_bytes: limits.awareness_max_state_bytes,
            awareness_max_clients: limits.awareness_max_clients,
            doc_helpers: docs.doc_helpers,
            doc_helper_memory_mb: docs.doc_helper_memory_mb,
            doc_helper_timeout: docs.doc_helper_timeout_ms,
            redis_command_timeout: redis.redis_command_timeout_ms,
            shutdown_grace: listen.shutdown_grace_ms,
            shutdown_drain: listen.shutdown_drain_ms,
            internal_port: listen.internal_port,
            storage: storage.into_config()?,
            worker,
            auth,
            worker_port: listen.worker_port,
        })
    }
}

/// `REDIS` and the TLS and Sentinel variables (README, "Redis deployments").
fn redis_settings(args: &RedisArgs) -> Result<RedisSettings, ConfigError> {
    let url = &args.redis.0;
    let cluster = args.redis_cluster;
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
            return Err(ConfigError::new(
                "REDIS",
                format!("expected {what}, got scheme {scheme:?}"),
            ));
        }
        if u.starts_with("rediss://") != tls {
            return Err(ConfigError::new(
                "REDIS",
                "seed nodes mix redis:// and rediss://",
            ));
        }
    }
    if urls.is_empty() {
        return Err(ConfigError::new("REDIS", "no seed node"));
    }
    let file = |var: &str, value: &Option<String>| match value {
        Some(path) if !tls => Err(ConfigError::new(
            var,
            format!("{path:?} is set but REDIS is not a rediss:// URL"),
        )),
        other => Ok(other.as_ref().map(|p| std::path::PathBuf::from(p.trim()))),
    };
    let ca_file = file("REDIS_TLS_CA_FILE", &args.redis_tls_ca_file)?;
    let client = match (
        file("REDIS_TLS_CERT_FILE", &args.redis_tls_cert_file)?,
        file("REDIS_TLS_KEY_FILE", &args.redis_tls_key_file)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(half_pair("REDIS_TLS_KEY_FILE", "REDIS_TLS_CERT_FILE")),
        (None, Some(_)) => return Err(half_pair("REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE")),
    };
    let password = &args.redis_sentinel_password;
    let sentinel = match (&args.redis_sentinels, &args.redis_sentinel_master) {
        (None, None) if password.is_some() => {
            return Err(ConfigError::new(
                "REDIS_SENTINEL_PASSWORD",
                "set without REDIS_SENTINELS",
            ))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "REDIS_SENTINEL_MASTER",
                "required with REDIS_SENTINELS (the master name the Sentinels monitor)",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "REDIS_SENTINELS",
                "required with REDIS_SENTINEL_MASTER (host:port,host:port,...)",
            ))
        }
        (Some(list), Some(master)) => Some(SentinelSettings {
            sentinels: list
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(parse_host_port)
                .collect::<Result<_, _>>()
                .map_err(|reason| ConfigError::new("REDIS_SENTINELS", reason))?,
            master: master.trim().to_owned(),
            password: password.clone(),
        }),
    };
    if cluster && sentinel.is_some() {
        return Err(ConfigError::new(
            "REDIS_CLUSTER",
            "a cluster has no Sentinels: unset REDIS_SENTINELS or REDIS_CLUSTER",
        ));
    }
    Ok(RedisSettings {
        url: args.redis.clone(),
        tls: TlsFiles { ca_file, client },
        sentinel,
        cluster,
    })
}

/// A client certificate needs its key, and the other way round.
fn half_pair(missing: &str, given: &str) -> ConfigError {
    ConfigError::new(
        missing,
        format!("required with {given} (a client certificate and its key)"),
    )
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

impl StorageArgs {
    /// S3 if `S3_ENDPOINT` is set, else Postgres if `POSTGRES` is, else a folder.
    pub fn into_config(self) -> Result<StorageConfig, ConfigError> {
        if let Some(endpoint) = self.s3_endpoint {
            // Both keys, or neither (then the AWS credential chain, e.g. IRSA).
            let keys = match (self.s3_access_key, self.s3_secret_key) {
                (Some(access_key), Some(secret_key)) => Some(S3Keys {
                    access_key,
                    secret_key,
                }),
                (None, None) => None,
                (Some(_), None) => return Err(half_keys("S3_SECRET_KEY", "S3_ACCESS_KEY")),
                (None, Some(_)) => return Err(half_keys("S3_ACCESS_KEY", "S3_SECRET_KEY")),
            };
            return Ok(StorageConfig::S3(S3Config {
                endpoint: endpoint.trim().to_owned(),
                port: self.s3_port.unwrap_or(if self.s3_ssl { 443 } else { 80 }),
                ssl: self.s3_ssl,
                region: self.s3_region.trim().to_owned(),
                keys,
                bucket: self.s3_bucket,
            }));
        }
        if let Some(url) = self.postgres {
            if !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://")) {
                return Err(ConfigError::new("POSTGRES", "expected a postgres:// URL"));
            }
            return Ok(StorageConfig::Postgres { url });
        }
        Ok(StorageConfig::Filesystem {
            dir: self.storage_dir.into(),
        })
    }
}

fn half_keys(missing: &str, given: &str) -> ConfigError {
    ConfigError::new(
        missing,
        format!("required with {given} (or leave both unset to use the AWS credential chain)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_y_redis() {
        let cfg = Config::from_vars([]).expect("defaults are valid");
        assert_eq!(cfg.port, 3002);
        assert_eq!(cfg.redis.url.0, "redis://127.0.0.1:6379");
        assert!(cfg.redis.sentinel.is_none() && cfg.redis.tls.is_empty());
        assert_eq!(cfg.redis_prefix, "y");
        assert_eq!(cfg.worker.concurrency, 4);
        assert_eq!(cfg.redis_block, Duration::from_millis(1000));
        assert_eq!(cfg.limits.bytes_per_second, f64::from(8u32 << 20));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_vars([("PORT", "abc")]).unwrap_err();
        assert_eq!(err.var, "PORT");
        assert_eq!(
            err.to_string(),
            "PORT: expected a port number 0-65535, got \"abc\""
        );
        let err = Config::from_vars([("REDIS", "localhost")]).unwrap_err();
        assert_eq!(err.var, "REDIS");
        let err = Config::from_vars([("REDIS_PREFIX", "a:b")]).unwrap_err();
        assert_eq!(err.var, "REDIS_PREFIX");
        let err = Config::from_vars([("REDIS_BLOCK_MS", "-1")]).unwrap_err();
        assert_eq!(err.var, "REDIS_BLOCK_MS");
        let err = Config::from_vars([("AUTH_DISABLED", "maybe")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AUTH_DISABLED: expected true or false, got \"maybe\""
        );
        let err = Config::from_vars([("NO_SUCH_VARIABLE", "1")]).unwrap_err();
        assert_eq!(err.var, "NO_SUCH_VARIABLE");
    }

    #[test]
    fn flags_name_the_variable_too() {
        let cmd = Cli::command();
        let err = match parse::<Cli>(
            cmd,
            ["y-redis", "worker", "--worker-port", "x"].map(OsString::from),
        ) {
            Err(CliError::Invalid(e)) => e,
            other => panic!("expected an invalid value, got {other:?}"),
        };
        assert_eq!(
            err.to_string(),
            "WORKER_PORT: expected a port number 0-65535, got \"x\""
        );
        let parsed = parse::<Cli>(
            Cli::command(),
            ["y-redis", "server", "--auth-disabled", "--port=4000"].map(OsString::from),
        );
        match parsed {
            Ok(Cli {
                command: Command::Server(s),
            }) => {
                assert!(s.auth.disabled);
                assert_eq!(s.listen.port, 4000);
            }
            other => panic!("expected server settings, got {other:?}"),
        }
    }

    #[test]
    fn redis_tls_and_sentinel_settings() {
        let err = Config::from_vars([("REDIS", "http://u:hunter2@h")]).unwrap_err();
        assert_eq!(err.var, "REDIS");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Config::from_vars([("REDIS_TLS_CA_FILE", "/ca.pem")]).unwrap_err();
        assert_eq!(err.var, "REDIS_TLS_CA_FILE");
        let err = Config::from_vars([
            ("REDIS", "rediss://h:6380"),
            ("REDIS_TLS_CERT_FILE", "/c.pem"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "REDIS_TLS_KEY_FILE");
        let cfg = Config::from_vars([
            ("REDIS", "rediss://h:6380"),
            ("REDIS_TLS_CA_FILE", "/ca.pem"),
            ("REDIS_TLS_CERT_FILE", "/c.pem"),
            ("REDIS_TLS_KEY_FILE", "/k.pem"),
        ])
        .expect("valid");
        assert_eq!(cfg.redis.tls.ca_file.as_deref(), Some("/ca.pem".as_ref()));
        assert!(cfg.redis.tls.client.is_some());
        let err = Config::from_vars([("REDIS_SENTINELS", "a:1")]).unwrap_err();
        assert_eq!(err.var, "REDIS_SENTINEL_MASTER");
        let err = Config::from_vars([("REDIS_SENTINEL_MASTER", "m")]).unwrap_err();
        assert_eq!(err.var, "REDIS_SENTINELS");
        let err = Config::from_vars([("REDIS_SENTINELS", "a"), ("REDIS_SENTINEL_MASTER", "m")])
            .unwrap_err();
        assert_eq!(err.var, "REDIS_SENTINELS");
        let cfg = Config::from_vars([
            ("REDIS_SENTINELS", "s1:26379, [::1]:26380"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_SENTINEL_PASSWORD", "hunter2"),
        ])
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
        let fs = Config::from_vars([]).expect("valid");
        assert!(matches!(fs.storage, StorageConfig::Filesystem { .. }));
        let pg = Config::from_vars([("POSTGRES", "postgres://u@h/db")]).expect("valid");
        assert!(matches!(pg.storage, StorageConfig::Postgres { .. }));
        let s3 = Config::from_vars([
            ("POSTGRES", "postgres://u@h/db"),
            ("S3_ENDPOINT", "localhost"),
            ("S3_PORT", "9000"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "b"),
        ])
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
        let ssl = Config::from_vars([("S3_ENDPOINT", "s3"), ("S3_SSL", "yes")]).expect("valid");
        assert!(matches!(ssl.storage, StorageConfig::S3(c) if c.port == 443 && c.ssl));
    }

    #[test]
    fn s3_keys_are_optional_and_the_region_configurable() {
        // No keys: the AWS credential chain (IRSA, instance roles, AWS_* env).
        let cfg = Config::from_vars([
            ("S3_ENDPOINT", "s3.eu-central-1.amazonaws.com"),
            ("S3_REGION", "eu-central-1"),
        ])
        .expect("valid without keys");
        match cfg.storage {
            StorageConfig::S3(c) => {
                assert_eq!(c.region, "eu-central-1");
                assert!(c.keys.is_none());
            }
            other => panic!("expected s3, got {other:?}"),
        }
        // Half a key pair is a mistake, not a reason to fall back.
        let err =
            Config::from_vars([("S3_ENDPOINT", "localhost"), ("S3_ACCESS_KEY", "a")]).unwrap_err();
        assert_eq!(err.var, "S3_SECRET_KEY");
        let err =
            Config::from_vars([("S3_ENDPOINT", "localhost"), ("S3_SECRET_KEY", "b")]).unwrap_err();
        assert_eq!(err.var, "S3_ACCESS_KEY");
        let cfg = Config::from_vars([
            ("S3_ENDPOINT", "localhost"),
            ("S3_ACCESS_KEY", "a"),
            ("S3_SECRET_KEY", "hunter2"),
        ])
        .expect("valid");
        assert!(
            !format!("{cfg:?}").contains("hunter2"),
            "the S3 secret never prints"
        );
    }

    #[test]
    fn worker_settings_are_checked() {
        let err = Config::from_vars([("WORKER_CONCURRENCY", "0")]).unwrap_err();
        assert_eq!(err.var, "WORKER_CONCURRENCY");
        assert_eq!(err.reason, "must be at least 1");
    }

    #[test]
    fn auth_is_required_unless_disabled() {
        let cfg = Config::from_vars([]).expect("valid");
        assert_eq!(cfg.require_auth().unwrap_err().var, "AUTH_PUBLIC_KEY");
        let cfg = Config::from_vars([("AUTH_DISABLED", "true")]).expect("valid");
        assert!(cfg.require_auth().is_ok());
        let err = Config::from_vars([("AUTH_PUBLIC_KEY", "{not json")]).unwrap_err();
        assert_eq!(err.var, "AUTH_PUBLIC_KEY");
        let err = Config::from_vars([("AUTH_PERM_CALLBACK", "localhost:5173")]).unwrap_err();
        assert_eq!(err.var, "AUTH_PERM_CALLBACK");
        let cfg = Config::from_vars([("ADMIN_SECRET", "hunter2")]).expect("valid");
        assert!(
            !format!("{cfg:?}").contains("hunter2"),
            "secrets never print"
        );
    }

    #[test]
    fn no_secret_reaches_a_debug_print_or_the_help() {
        for pairs in [
            vec![
                ("REDIS", "redis://user:hunter2@r:6379"),
                ("POSTGRES", "postgres://u:hunter2@db/y"),
                ("ADMIN_SECRET", "hunter2"),
            ],
            vec![
                ("S3_ENDPOINT", "s3"),
                ("S3_ACCESS_KEY", "a"),
                ("S3_SECRET_KEY", "hunter2"),
            ],
        ] {
            let cfg = Config::from_vars(pairs).expect("valid");
            let printed = format!("{cfg:?}");
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        // --help shows each variable's value from the environment, except these.
        let secrets = [
            "REDIS",
            "REDIS_SENTINEL_PASSWORD",
            "POSTGRES",
            "S3_ACCESS_KEY",
            "S3_SECRET_KEY",
            "ADMIN_SECRET",
            "AUTH_PRIVATE_KEY",
        ];
        let cmd = Cli::command();
        for arg in all_args(&cmd) {
            if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
                assert_eq!(
                    arg.is_hide_env_values_set(),
                    secrets.contains(&var),
                    "{var}"
                );
            }
        }
    }

    #[test]
    fn every_option_is_a_variable_and_its_flag() {
        let cmd = Cli::command();
        for arg in all_args(&cmd) {
            if arg.get_id() == "help" {
                continue;
            }
            let var = arg.get_env().and_then(|v| v.to_str()).expect("an env name");
            let flag = var.to_ascii_lowercase().replace('_', "-");
            assert_eq!(arg.get_long(), Some(flag.as_str()), "{var}");
        }
        let vars = variables();
        assert!(vars.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
        for var in [
            "PORT",
            "REDIS",
            "AUTH_PRIVATE_KEY",
            "STORAGE_DIR",
            "YDOC_UPDATE_CALLBACK",
        ] {
            assert!(vars.iter().any(|v| v == var), "{var}");
        }
        assert_eq!(vars.len(), 62);
    }

    #[test]
    fn empty_values_mean_default() {
        let cfg = Config::from_vars([("PORT", " ")]).expect("empty is default");
        assert_eq!(cfg.port, 3002);
        // clap would take an empty variable as the value "": it is left out
        // instead. (Any test may run meanwhile: these change no outcome.)
        std::env::set_var("AWARENESS_MAX_CLIENTS", "");
        std::env::set_var("SHUTDOWN_DRAIN_MS", "  ");
        let cfg = Config::from_vars([]).expect("empty variables are unset");
        assert_eq!(cfg.awareness_max_clients, 1000);
        assert_eq!(cfg.shutdown_drain, Duration::ZERO);
        // A given value wins over the environment.
        let cfg = Config::from_vars([("AWARENESS_MAX_CLIENTS", "7")]).expect("valid");
        assert_eq!(cfg.awareness_max_clients, 7);
        std::env::remove_var("AWARENESS_MAX_CLIENTS");
        std::env::remove_var("SHUTDOWN_DRAIN_MS");
        // An empty flag is a mistake, not a default.
        let err = parse::<Cli>(
            Cli::command(),
            ["y-redis", "server", "--admin-secret="].map(OsString::from),
        );
        assert!(matches!(err, Err(CliError::Invalid(e)) if e.var == "ADMIN_SECRET"));
    }
}
