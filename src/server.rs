//! The HTTP shell of `y-redis server`: the websocket endpoint
//! `ws://HOST:PORT/{room}` and what an upgrade passes before a session
//! starts (room name, connection limits, auth), the admin endpoint, the
//! actors behind them, and graceful shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::{h1, HttpMessage, HttpService, Request};
use actix_rt::net::TcpStream;
use actix_service::{fn_factory, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::http::header::{self, HeaderName};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use y_redis_protocol::awareness::AwarenessLimits;
use y_redis_protocol::names::{check_room_name, NameError};

use crate::actors::listener::RedisListener;
use crate::actors::messages::{Broadcast, CLOSE_SERVICE_RESTART};
use crate::actors::revocation::{RecheckLog, RecheckRequest, RevocationListener, DEFAULT_DOCID};
use crate::actors::room::RoomContext;
use crate::actors::rooms::ThreadRooms;
use crate::actors::session::{SessionContext, SessionParams, WsSession};
use crate::auth::{token_from_request, Authenticator, Grant, TokenVerifier};
use crate::config::{Config, Secret};
use crate::document::Documents;
use crate::limits::{self, client_address, Admission, ConnectionLimiter};
use crate::metrics;
use crate::storage::Storage;
use crate::streams::{RedisError, RedisStreams};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("AUTH_PUBLIC_KEY: {0}")]
    Auth(String),
    #[error("server stopped with an error: {0}")]
    Io(#[from] std::io::Error),
}

/// What every request handler of the process shares.
struct ServerState {
    sessions: Arc<SessionContext>,
    limiter: Arc<ConnectionLimiter>,
    max_room_name_bytes: usize,
    next_conn: AtomicU64,
    admin_secret: Option<Secret>,
}

/// The raw path segment after `/`, not percent-decoded, as @y/redis has it.
fn room_from_path(path: &str) -> Option<&str> {
    path.strip_prefix('/').filter(|room| !room.contains('/'))
}

/// An upgrade refused before any session started: an HTTP status and why.
struct Refusal {
    status: StatusCode,
    reason: String,
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    metrics::REFUSED_UPGRADES.inc();
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// What the upgrade service of one worker thread works with.
#[derive(Clone)]
struct Upgrades {
    state: Arc<ServerState>,
    rooms: ThreadRooms,
    /// For permission callbacks.
    http: awc::Client,
}

/// An upgrade that passed: what the session starts with.
struct Accepted {
    room: String,
    grant: Grant,
    authorized_at: Instant,
    admission: Admission,
    accept_key: String,
    protocol: Option<String>,
}

/// Everything an upgrade request passes before a session starts, cheapest
/// first: the handshake, the room name, the connection limits, then auth.
async fn accept(req: &Request, up: &Upgrades) -> Result<Accepted, Refusal> {
    let header = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let key = header(header::SEC_WEBSOCKET_KEY).filter(|_| {
        req.method() == Method::GET
            && header(header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
            && header(header::SEC_WEBSOCKET_VERSION) == Some("13")
    });
    let Some(key) = key else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "expected a websocket upgrade (version 13)",
        ));
    };
    let Some(room) = room_from_path(req.uri().path()) else {
        return Err(refuse(StatusCode::NOT_FOUND, "expected /{room}"));
    };
    let state = &up.state;
    // Names first: nothing else happens for a room that cannot exist.
    if let Err(e) = check_room_name(room, state.max_room_name_bytes) {
        let status = match e {
            NameError::TooLong { .. } => StatusCode::URI_TOO_LONG,
            NameError::Empty => StatusCode::NOT_FOUND,
            NameError::DotSegment => StatusCode::BAD_REQUEST,
        };
        tracing::info!(status = status.as_u16(), reason = %e, "refused connection: room name");
        return Err(refuse(status, format!("room name refused: {e}")));
    }
    let peer = req
        .peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let client = client_address(
        peer,
        header(HeaderName::from_static("x-forwarded-for")),
        &state.limiter.limits().trusted_proxies,
    );
    let admission = state.limiter.admit(client).map_err(|refusal| {
        metrics::LIMITED_UPGRADES.inc();
        let (status, reason) = match refusal {
            limits::Refusal::ProcessFull => (StatusCode::SERVICE_UNAVAILABLE, "server full"),
            limits::Refusal::AddressBusy => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ),
        };
        tracing::debug!(room, %client, status = status.as_u16(), "refused connection: limit");
        refuse(status, reason)
    })?;
    let offered = header(header::SEC_WEBSOCKET_PROTOCOL);
    let token = token_from_request(offered, req.uri().query().unwrap_or(""));
    let authorized_at = Instant::now();
    let grant = match &state.sessions.auth {
        None => Grant::open(),
        Some(auth) => auth
            .authorize(&up.http, token.as_deref(), room)
            .await
            .map_err(|e| {
                tracing::info!(room, status = e.status().as_u16(), reason = %e, "refused connection");
                refuse(e.status(), e.to_string())
            })?,
    };
    // A client that sent its token as a subprotocol must get it back, or it drops the socket.
    let protocol = offered.and_then(|header| {
        header
            .split(',')
            .map(str::trim)
            .find(|p| p.starts_with("yauth-"))
            .map(str::to_owned)
    });
    Ok(Accepted {
        room: room.to_owned(),
        grant,
        authorized_at,
        admission,
        accept_key: String::from_utf8_lossy(&actix_http::ws::hash_key(key.as_bytes())).into_owned(),
        protocol,
    })
}

/// The upgrade service: answers the handshake itself and hands the socket
/// to a new session, or answers an HTTP error and closes.
async fn upgrade(
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    up: Upgrades,
) -> Result<(), actix_web::Error> {
    let parts = framed.into_parts();
    let mut io = parts.io;
    match accept(&req, &up).await {
        Err(refusal) => {
            let head = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                refusal.status.as_u16(),
                refusal.status.canonical_reason().unwrap_or(""),
                refusal.reason.len()
            );
            io.write_all(head.as_bytes()).await?;
            io.write_all(refusal.reason.as_bytes()).await?;
            Ok(io.shutdown().await?)
        }
        Ok(accepted) => {
            let protocol = accepted.protocol.as_ref().map_or(String::new(), |p| {
                format!("sec-websocket-protocol: {p}\r\n")
            });
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n{protocol}\r\n",
                accepted.accept_key
            );
            io.write_all(head.as_bytes()).await?;
            let state = &up.state;
            WsSession::new(SessionParams {
                conn: state.next_conn.fetch_add(1, Ordering::Relaxed),
                room: accepted.room,
                docid: DEFAULT_DOCID.to_owned(),
                rooms: up.rooms.clone(),
                context: state.sessions.clone(),
                stream: io,
                early: parts.read_buf.to_vec(),
                grant: accepted.grant,
                authorized_at: accepted.authorized_at,
                http: up.http.clone(),
                admission: accepted.admission,
            })
            .start();
            Ok(())
        }
    }
}

/// A plain request where a websocket upgrade was expected.
async fn not_an_upgrade() -> HttpResponse {
    HttpResponse::BadRequest().body("expected a websocket upgrade to /{room}")
}

/// The largest recheck request body.
const MAX_RECHECK_BODY: usize = 4096;

/// `POST /admin/recheck` with `Authorization: Bearer <ADMIN_SECRET>` and
/// `{"room": "...", "user": "..."}`: every server re-checks those sessions.
/// The secret is checked before a byte of the body is read.
async fn admin_recheck(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<ServerState>,
    redis: web::Data<RedisStreams>,
) -> HttpResponse {
    let Some(secret) = &state.admin_secret else {
        return HttpResponse::NotFound().body("admin endpoint disabled (set ADMIN_SECRET)");
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), secret.0.as_bytes())) {
        return HttpResponse::Unauthorized().body("wrong or missing admin secret");
    }
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return HttpResponse::BadRequest().body("unreadable body");
        };
        if bytes.len() + chunk.len() > MAX_RECHECK_BODY {
            return HttpResponse::PayloadTooLarge()
                .body(format!("body larger than {MAX_RECHECK_BODY} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    let request: RecheckRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => {
            return HttpResponse::BadRequest().body(format!("expected {{\"room\", \"user\"}}: {e}"))
        }
    };
    let payload = match serde_json::to_vec(&request) {
        Ok(p) => p,
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    match redis
        .publish(&redis.keys().recheck_channel(), &payload)
        .await
    {
        Ok(servers) => {
            tracing::info!(room = %request.room, servers, "permission recheck requested");
            HttpResponse::Accepted().json(serde_json::json!({ "servers": servers }))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot publish permission recheck");
            HttpResponse::ServiceUnavailable().body("redis unavailable")
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authenticator(config: &Config) -> Result<Option<Arc<Authenticator>>, ServerError> {
    match (
        &config.auth.disabled,
        &config.auth.public_key,
        &config.auth.perm_callback,
    ) {
        (false, Some(jwk), Some(perm_callback)) => Ok(Some(Arc::new(Authenticator {
            verifier: TokenVerifier::from_jwk(jwk).map_err(ServerError::Auth)?,
            perm_callback: perm_callback.clone(),
            timeout: config.auth.perm_timeout,
        }))),
        _ => {
            tracing::warn!("AUTH IS DISABLED: every client may read and write every document");
            Ok(None)
        }
    }
}

/// The sockets a server serves on: the public websocket port, and the
/// internal one for probes, metrics and the admin endpoint, if separate.
pub struct Listeners {
    pub public: std::net::TcpListener,
    pub internal: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds `HOST:PORT` and, if set, `HOST:INTERNAL_PORT`.
    pub fn bind(config: &Config) -> Result<Self, ServerError> {
        let bind = |port: u16| {
            let addr = format!("{}:{port}", config.host);
            std::net::TcpListener::bind(&addr).map_err(|source| ServerError::Bind { addr, source })
        };
        Ok(Listeners {
            public: bind(config.port)?,
            internal: config.internal_port.map(bind).transpose()?,
        })
    }
}

/// Runs the server until `shutdown` completes, then drains: `/readyz`
/// answers 503 at once while everything else goes on for
/// `SHUTDOWN_DRAIN_MS` (so load balancers take the server out first), then
/// sessions are closed with 1012 (waiting up to `SHUTDOWN_GRACE_MS`).
pub async fn run(
    config: Config,
    storage: Arc<dyn Storage>,
    documents: Arc<Documents>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + 'static,
) -> Result<(), ServerError> {
    let redis = RedisStreams::for_config(&config).await?;
    let listener = RedisListener::new(redis.clone(), &config).start();
    let rechecks = Arc::new(RecheckLog::default());
    RevocationListener::new(redis.clone(), listener.clone(), rechecks.clone()).start();
    let open_sessions = Arc::new(AtomicUsize::new(0));
    let room_context = Arc::new(RoomContext {
        redis: redis.clone(),
        storage: storage.clone(),
        documents,
        listener: listener.clone(),
        awareness_max_clients: config.awareness_max_clients,
        next_room_id: AtomicU64::new(1),
    });
    let state = web::Data::new(ServerState {
        sessions: Arc::new(SessionContext {
            redis: redis.clone(),
            max_frame_bytes: config.max_frame_bytes,
            awareness: AwarenessLimits {
                max_entries: config.awareness_max_entries,
                max_state_bytes: config.awareness_max_state_bytes,
            },
            limits: config.limits.clone(),
            auth: authenticator(&config)?,
            rechecks,
            open: open_sessions.clone(),
            max_send_queue_bytes: config.max_send_queue_bytes,
            echo_own_messages: config.echo_own_messages,
        }),
        limiter: Arc::new(ConnectionLimiter::new(config.limits.clone())),
        max_room_name_bytes: config.max_room_name_bytes,
        next_conn: AtomicU64::new(1),
        admin_secret: config.auth.admin_secret.clone(),
    });
    let draining = Arc::new(AtomicBool::new(false));
    let probes = web::Data::new(crate::health::Probes {
        redis: redis.clone(),
        storage,
        draining: draining.clone(),
    });
    let redis_data = web::Data::new(redis);
    let separate = listeners.internal.is_some();
    // The operator's endpoints: on the internal port if there is one.
    let operator = {
        let (state, probes, redis_data) = (state.clone(), probes.clone(), redis_data.clone());
        move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(state.clone())
                .app_data(probes.clone())
                .app_data(redis_data.clone())
                .configure(crate::health::routes)
                .route("/admin/recheck", web::post().to(admin_recheck));
        }
    };
    let public_operator = operator.clone();
    let public_addr = listeners.public.local_addr()?;
    let state = state.into_inner();
    let public = actix_server::Server::build()
        .listen("y-redis", listeners.public, move || {
            // Per worker thread: its room subscriptions and an HTTP client
            // for permission callbacks.
            let upgrades = Upgrades {
                state: state.clone(),
                rooms: ThreadRooms::new(room_context.clone()),
                http: awc::Client::default(),
            };
            let app = if separate {
                App::new()
            } else {
                App::new().configure(public_operator.clone())
            };
            let app = app.default_service(web::to(not_an_upgrade));
            HttpService::build()
                .client_request_timeout(Duration::from_secs(10))
                .upgrade(fn_factory(move || {
                    let upgrades = upgrades.clone();
                    async move {
                        Ok::<_, ()>(fn_service(move |(req, framed)| {
                            upgrade(req, framed, upgrades.clone())
                        }))
                    }
                }))
                .h1(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?
        .disable_signals()
        // Storage reads and large update checks run on the blocking pool; a
        // few threads per worker serve them, where a burst of joins would
        // otherwise leave dozens of idle threads behind.
        .worker_max_blocking_threads(8)
        .shutdown_timeout(config.shutdown_grace.as_secs().max(1))
        .run();
    crate::memory::release_freed_memory_periodically();
    tracing::info!(addr = %public_addr, prefix = %config.redis_prefix, "y-redis server listening");
    let internal = match listeners.internal {
        Some(socket) => {
            let addr = socket.local_addr()?;
            let server = HttpServer::new(move || App::new().configure(operator.clone()))
                .workers(1)
                .disable_signals()
                .listen(socket)?
                .run();
            tracing::info!(%addr, "metrics, probes and admin endpoint listening");
            Some(server)
        }
        None => None,
    };
    let handles: Vec<_> = std::iter::once(public.handle())
        .chain(internal.as_ref().map(|s| s.handle()))
        .collect();
    let (drain, grace) = (config.shutdown_drain, config.shutdown_grace);
    actix::spawn(async move {
        shutdown.await;
        draining.store(true, Ordering::Relaxed);
        if !drain.is_zero() {
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "draining: /readyz fails, clients still served"
            );
            tokio::time::sleep(drain).await;
        }
        close_sessions(&listener, &open_sessions, grace).await;
        for handle in handles {
            handle.stop(true).await;
        }
    });
    match internal {
        Some(internal) => {
            let (public, internal) = futures_util::future::join(public, internal).await;
            public?;
            internal?;
        }
        None => public.await?,
    }
    tracing::info!("y-redis server stopped");
    Ok(())
}

/// Asks every session to close with 1012 and waits (at most `grace`) until
/// they have. The request goes out again every 100 ms while sessions stay
/// open: one that was opening as shutdown began (or connected since) joins
/// its room after the first request passed and would otherwise be cut
/// without a close frame when the server stops.
async fn close_sessions(listener: &Addr<RedisListener>, open: &AtomicUsize, grace: Duration) {
    tracing::info!(sessions = open.load(Ordering::Relaxed), "closing sessions");
    let deadline = Instant::now() + grace;
    let mut next_request = Instant::now();
    while Instant::now() < deadline && open.load(Ordering::Relaxed) > 0 {
        if Instant::now() >= next_request {
            listener.do_send(Broadcast::CloseAll {
                code: CLOSE_SERVICE_RESTART,
                reason: "server restarting",
            });
            next_request += Duration::from_millis(100);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::room_from_path;

    #[test]
    fn room_is_the_raw_path_segment() {
        assert_eq!(room_from_path("/a%20b"), Some("a%20b"));
        assert_eq!(room_from_path("/my-room"), Some("my-room"));
        assert_eq!(room_from_path("/"), Some(""));
        assert_eq!(room_from_path("/a/b"), None);
    }
}
