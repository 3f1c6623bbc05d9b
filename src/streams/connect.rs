//! How this process reaches Redis (README, "Redis deployments"): one server
//! (`redis://`, or `rediss://` with the system roots or `REDIS_TLS_CA_FILE`
//! and an optional client certificate), or the master that a set of
//! Sentinels names, or a Redis Cluster found through seed nodes. Every
//! connection of the process (the pool, the per-thread publishing
//! connections, the listener's blocking reads, the revocation subscriber) is
//! opened here, so all of them follow the same deployment. With Sentinel the
//! master is looked up again for every new connection: after a failover,
//! connections to the old master fail, and the reconnection finds the new
//! one. With Cluster, ordinary commands go through redis-rs's cluster
//! connection (routing by slot, following `MOVED`/`ASK`); blocking reads get
//! a plain connection to the node serving their slot ([`Connector::node_client`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, TlsMode, Value,
};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::secret::Secret;

/// Where Redis is, as configured (`REDIS`, `REDIS_TLS_*`, `REDIS_SENTINEL*`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `REDIS`: the server, or with Sentinel the credentials, database and
    /// scheme (`rediss://`: TLS) used towards master and Sentinels, or with
    /// Cluster one or more seed nodes, comma-separated.
    pub url: Secret,
    pub tls: TlsFiles,
    pub sentinel: Option<SentinelSettings>,
    /// `REDIS_CLUSTER=true`.
    pub cluster: bool,
}

/// PEM files for `rediss://` (`REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client.is_none()
    }
}

/// `REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`, `REDIS_SENTINEL_PASSWORD`.
#[derive(Debug, Clone)]
pub struct SentinelSettings {
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub password: Option<Secret>,
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("{var}: cannot read {path}: {source}")]
    ReadFile {
        var: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("REDIS: {0}")]
    Url(redis::RedisError),
    #[error("REDIS_TLS_CA_FILE / REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE: {0}")]
    Certificates(redis::RedisError),
    #[error("REDIS_SENTINELS: {0}")]
    Sentinel(redis::RedisError),
    #[error("REDIS (cluster seed nodes): {0}")]
    Cluster(redis::RedisError),
}

/// A connection for ordinary commands: to one server, or to a cluster.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens connections to the Redis this process uses. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    target: Arc<Target>,
    /// How long a Sentinel lookup may take.
    lookup_timeout: Duration,
}

enum Target {
    Direct(redis::Client),
    Sentinel {
        client: Mutex<SentinelClient>,
        master: String,
    },
    Cluster {
        client: ClusterClient,
        /// The seed nodes; the first one's credentials and TLS settings
        /// serve for every node.
        seeds: Vec<ConnectionInfo>,
        certificates: Option<TlsCertificates>,
    },
}

impl Connector {
    /// Reads the certificate files and prepares the clients; connects to nothing yet.
    pub fn new(settings: &RedisSettings, lookup_timeout: Duration) -> Result<Self, ConnectError> {
        // rustls needs a process-wide crypto provider; the dependency graph
        // enables two, so it cannot choose one itself. Already set: kept.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certificates = if settings.tls.is_empty() {
            None
        } else {
            Some(read_certificates(&settings.tls)?)
        };
        if settings.cluster {
            return Self::cluster(settings, certificates, lookup_timeout);
        }
        let info = settings
            .url
            .0
            .as_str()
            .into_connection_info()
            .map_err(ConnectError::Url)?;
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let target = match &settings.sentinel {
            None => Target::Direct(match certificates {
                Some(certs) => redis::Client::build_with_tls(info, certs)
                    .map_err(ConnectError::Certificates)?,
                None => redis::Client::open(info).map_err(ConnectError::Url)?,
            }),
            Some(sentinel) => {
                // With `rediss://` the Sentinels are spoken to over TLS too.
                let addrs = sentinel.sentinels.iter().map(|(host, port)| match tls {
                    true => ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    },
                    false => ConnectionAddr::Tcp(host.clone(), *port),
                });
                let node = info.redis_settings();
                let mut builder =
                    SentinelClientBuilder::new(addrs, &sentinel.master, SentinelServerType::Master)
                        .map_err(ConnectError::Sentinel)?
                        .set_client_to_redis_db(node.db());
                if let Some(username) = node.username() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = node.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = &sentinel.password {
                    builder = builder.set_client_to_sentinel_password(&password.0);
                }
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certificates {
                        builder = builder
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                Target::Sentinel {
                    client: Mutex::new(builder.build().map_err(ConnectError::Sentinel)?),
                    master: sentinel.master.clone(),
                }
            }
        };
        Ok(Connector {
            target: Arc::new(target),
            lookup_timeout,
        })
    }

    fn cluster(
        settings: &RedisSettings,
        certificates: Option<TlsCertificates>,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let seeds = settings
            .url
            .0
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.into_connection_info())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectError::Url)?;
        let mut builder = ClusterClient::builder(seeds.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(certs) = &certificates {
            builder = builder.certs(certs.clone());
        }
        let client = builder.build().map_err(ConnectError::Cluster)?;
        Ok(Connector {
            target: Arc::new(Target::Cluster {
                client,
                seeds,
                certificates,
            }),
            lookup_timeout: timeout,
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target.as_ref(), Target::Cluster { .. })
    }

    /// What this connects to, for logs: no credentials.
    pub fn describe(&self) -> String {
        match self.target.as_ref() {
            Target::Cluster { seeds, .. } => {
                let addrs: Vec<String> = seeds.iter().map(|s| describe_addr(s.addr())).collect();
                format!("redis cluster via seeds {}", addrs.join(", "))
            }
            Target::Direct(client) => {
                format!(
                    "redis at {}",
                    describe_addr(client.get_connection_info().addr())
                )
            }
            Target::Sentinel { master, .. } => format!("redis master {master:?} via Sentinel"),
        }
    }

    /// A client for the server to talk to now: the configured one, or the
    /// master the Sentinels name at this moment (checked to be a master), or
    /// with Cluster the first seed node (for pub/sub, which a cluster
    /// delivers on every node).
    pub async fn client(&self) -> Result<redis::Client, redis::RedisError> {
        match self.target.as_ref() {
            Target::Direct(client) => Ok(client.clone()),
            Target::Cluster { seeds, .. } => {
                let seed = seeds.first().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed"))
                })?;
                self.node_at(seed.clone())
            }
            Target::Sentinel { client, master } => {
                let lookup = async { client.lock().await.async_get_client().await };
                match tokio::time::timeout(self.lookup_timeout, lookup).await {
                    Ok(found) => found,
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "Sentinel lookup timed out",
                        format!(
                            "no master {master:?} found within {:?}",
                            self.lookup_timeout
                        ),
                    ))),
                }
            }
        }
    }

    /// A client for one node of the cluster, with the seeds' credentials and TLS settings.
    pub fn node_client(&self, host: &str, port: u16) -> Result<redis::Client, redis::RedisError> {
        let Target::Cluster { seeds, .. } = self.target.as_ref() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a cluster",
            )));
        };
        let Some(seed) = seeds.first() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no seed",
            )));
        };
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        self.node_at(seed.clone().set_addr(addr))
    }

    fn node_at(&self, info: ConnectionInfo) -> Result<redis::Client, redis::RedisError> {
        match self.target.as_ref() {
            Target::Cluster {
                certificates: Some(certs),
                ..
            } => redis::Client::build_with_tls(info, certs.clone()),
            _ => redis::Client::open(info),
        }
    }

    /// A new connection for ordinary commands (the timeouts of `config`;
    /// a cluster connection has those it was built with, the same).
    pub async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<Connection, redis::RedisError> {
        match self.target.as_ref() {
            Target::Cluster { client, .. } => {
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
            _ => Ok(Connection::Single(self.connect_single(config).await?)),
        }
    }

    /// A new connection to the one server (or present master); with
    /// Cluster, to the first seed node.
    pub async fn connect_single(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, redis::RedisError> {
        self.client()
            .await?
            .get_multiplexed_async_connection_with_config(config)
            .await
    }

    /// A new pub/sub connection. With Cluster: to the first seed node that
    /// answers (a cluster delivers `PUBLISH` on every node).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let Target::Cluster { seeds, .. } = self.target.as_ref() else {
            return self.client().await?.get_async_pubsub().await;
        };
        let mut last = None;
        for seed in seeds {
            match self.node_at(seed.clone())?.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed"))
        }))
    }
}

fn describe_addr(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "?".to_owned(),
    }
}

fn read_certificates(files: &TlsFiles) -> Result<TlsCertificates, ConnectError> {
    let read = |var: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| ConnectError::ReadFile {
            var,
            path: path.display().to_string(),
            source,
        })
    };
    let root_cert = match &files.ca_file {
        Some(path) => Some(read("REDIS_TLS_CA_FILE", path)?),
        None => None,
    };
    let client_tls = match &files.client {
        Some((cert, key)) => Some(ClientTlsConfig {
            client_cert: read("REDIS_TLS_CERT_FILE", cert)?,
            client_key: read("REDIS_TLS_KEY_FILE", key)?,
        }),
        None => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// Whether a connection failed because TLS refused the other side (a
/// certificate no configured CA signed, a wrong host name, or the server
/// refusing our client certificate): retrying cannot help, so a process
/// stops at start on it. rustls reports these as I/O errors whose text is
/// all that reaches us through the Redis client.
pub fn is_tls_rejection(error: &redis::RedisError) -> bool {
    let text = error.to_string();
    [
        "invalid peer certificate",
        "UnknownIssuer",
        "NotValidForName",
        "received fatal alert",
        "InvalidCertificate",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Whether a connection that returned this error should not be used again:
/// it is broken, or it talks to a server that is no longer the master (a
/// failover demoted it).
pub fn is_connection_unusable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: Secret(url.to_owned()),
            tls: TlsFiles::default(),
            sentinel: None,
            cluster: false,
        }
    }

    #[test]
    fn describes_without_credentials() {
        let c = Connector::new(
            &settings("rediss://user:hunter2@example.org:6380"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.describe(), "redis at example.org:6380 (TLS)");
        let mut s = settings("redis://:pw@ignored:1/2");
        s.sentinel = Some(SentinelSettings {
            sentinels: vec![("s1".into(), 26379)],
            master: "mymaster".into(),
            password: Some(Secret("sentinel-secret".into())),
        });
        let c = Connector::new(&s, Duration::from_secs(1)).unwrap();
        assert_eq!(c.describe(), "redis master \"mymaster\" via Sentinel");
        // rediss://: master and Sentinels over TLS (the Sentinels' addresses become TLS ones)
        s.url = Secret("rediss://:pw@ignored:1".into());
        assert!(Connector::new(&s, Duration::from_secs(1)).is_ok());
        let mut s = settings("redis://u:hunter2@a:7000, redis://u:hunter2@b:7001");
        s.cluster = true;
        let c = Connector::new(&s, Duration::from_secs(1)).unwrap();
        assert_eq!(c.describe(), "redis cluster via seeds a:7000, b:7001");
        assert!(c.is_cluster());
        let node = c.node_client("10.0.0.9", 7002).unwrap();
        let info = node.get_connection_info();
        assert_eq!(info.addr().to_string(), "10.0.0.9:7002");
        assert_eq!(info.redis_settings().password(), Some("hunter2"));
    }

    #[test]
    fn missing_ca_file_names_the_variable() {
        let mut s = settings("rediss://127.0.0.1:6380");
        s.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let err = Connector::new(&s, Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("REDIS_TLS_CA_FILE: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
