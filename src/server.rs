//! The HTTP shell of `y-redis server`: the websocket endpoint
//! `ws://HOST:PORT/{room}`, the actors behind it, and graceful shutdown.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use thiserror::Error;

use crate::actors::hub::{CloseAllRooms, Hub, SessionCount};
use crate::actors::listener::RedisListener;
use crate::actors::revocation::{RecheckRequest, RevocationListener};
use crate::actors::room::RoomContext;
use crate::actors::session::{ConnectionKiller, SessionParams, WsSession};
use crate::auth::{token_from_request, Authenticator, Grant, TokenVerifier};
use crate::config::Config;
use crate::config::Secret;
use crate::redis::{RedisError, RedisStore};
use crate::storage::Storage;

/// The document every websocket connection edits (y-redis serves `index` only).
pub const DEFAULT_DOCID: &str = "index";
/// Close code telling clients the server is restarting: they reconnect elsewhere.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

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

struct ServerState {
    hub: Addr<Hub>,
    redis: RedisStore,
    max_frame_bytes: usize,
    next_conn: AtomicU64,
    /// None when `AUTH_DISABLED=true`.
    auth: Option<Arc<Authenticator>>,
    admin_secret: Option<Secret>,
}

/// The room is the raw path segment, not percent-decoded, as @y/redis has it.
/// `.` and `..` are refused: they would name directories in file storage.
fn room_from_path(path: &str) -> Option<&str> {
    let room = path.strip_prefix('/')?;
    (!room.is_empty() && !room.contains('/') && room != "." && room != "..").then_some(room)
}

async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, actix_web::Error> {
    let Some(room) = room_from_path(req.uri().path()) else {
        return Ok(HttpResponse::NotFound().body("expected /{room}"));
    };
    let offered = req
        .headers()
        .get(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let token = token_from_request(offered, req.query_string());
    let http = req.app_data::<awc::Client>().cloned().unwrap_or_default();
    let grant = match &state.auth {
        None => Grant::open(),
        Some(auth) => match auth.authorize(&http, token.as_deref(), room).await {
            Ok(grant) => grant,
            Err(e) => {
                crate::metrics::REFUSED_UPGRADES.inc();
                tracing::info!(room, status = e.status().as_u16(), reason = %e, "refused connection");
                return Ok(HttpResponse::build(e.status()).body(e.to_string()));
            }
        },
    };
    // A client that sent its token as a subprotocol must get it back, or it drops the socket.
    let accepted_protocol = offered.and_then(|header| {
        header
            .split(',')
            .map(str::trim)
            .find(|p| p.starts_with("yauth-"))
            .map(str::to_owned)
    });
    let session = WsSession::new(SessionParams {
        conn: state.next_conn.fetch_add(1, Ordering::Relaxed),
        room: room.to_owned(),
        docid: DEFAULT_DOCID.to_owned(),
        hub: state.hub.clone(),
        redis: state.redis.clone(),
        killer: req.conn_data::<ConnectionKiller>().cloned(),
        max_frame_bytes: state.max_frame_bytes,
        grant,
        auth: state.auth.clone().map(|auth| (auth, http)),
    });
    let protocols: Vec<&str> = accepted_protocol.iter().map(String::as_str).collect();
    ws::WsResponseBuilder::new(session, &req, payload)
        .frame_size(state.max_frame_bytes)
        .protocols(&protocols)
        .start()
}

/// `POST /admin/recheck` with `Authorization: Bearer <ADMIN_SECRET>` and
/// `{"room": "...", "user": "..."}`: every server re-checks those sessions.
async fn admin_recheck(
    req: HttpRequest,
    body: web::Json<RecheckRequest>,
    state: web::Data<ServerState>,
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
    let request = body.into_inner();
    let payload = match serde_json::to_vec(&request) {
        Ok(p) => p,
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    match state
        .redis
        .publish(&state.redis.keys().recheck_channel(), &payload)
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

/// Gives every connection a [`ConnectionKiller`] (a duplicate of its socket).
fn attach_killer(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    if let Some(socket) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => {
                data.insert(ConnectionKiller::new(std::net::TcpStream::from(fd)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate socket; slow-client cut-off disabled for it")
            }
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then closes sessions with 1012.
pub async fn run(config: Config, storage: Arc<dyn Storage>) -> Result<(), ServerError> {
    let redis = RedisStore::for_config(&config).await?;
    let auth = match (
        &config.auth.disabled,
        &config.auth.public_key,
        &config.auth.perm_callback,
    ) {
        (false, Some(jwk), Some(perm_callback)) => Some(Arc::new(Authenticator {
            verifier: TokenVerifier::from_jwk(jwk).map_err(ServerError::Auth)?,
            perm_callback: perm_callback.clone(),
            timeout: config.auth.perm_timeout,
        })),
        _ => {
            tracing::warn!("AUTH IS DISABLED: every client may read and write every document");
            None
        }
    };
    let listener = RedisListener::new(
        redis.clone(),
        config.redis_block,
        config.redis_command_timeout,
    )
    .start();
    let storage_for_probes = storage.clone();
    let hub = Hub::new(RoomContext {
        redis: redis.clone(),
        storage,
        listener,
        max_send_queue_bytes: config.max_send_queue_bytes,
    })
    .start();
    RevocationListener::new(redis.clone(), hub.clone()).start();
    let probes = web::Data::new(crate::health::Probes {
        redis: redis.clone(),
        storage: storage_for_probes,
    });
    let state = web::Data::new(ServerState {
        hub: hub.clone(),
        redis,
        max_frame_bytes: config.max_frame_bytes,
        next_conn: AtomicU64::new(1),
        auth,
        admin_secret: config.auth.admin_secret.clone(),
    });
    let addr = format!("{}:{}", config.host, config.port);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(probes.clone())
            .configure(crate::health::routes)
            // One HTTP client per worker thread, for permission callbacks.
            .app_data(awc::Client::default())
            .route("/admin/recheck", web::post().to(admin_recheck))
            .default_service(web::get().to(websocket))
    })
    .on_connect(attach_killer)
    .disable_signals()
    .shutdown_timeout(config.shutdown_grace.as_secs().max(1))
    .bind(&addr)
    .map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?
    .run();
    tracing::info!(%addr, prefix = %config.redis_prefix, "y-redis server listening");
    let handle = server.handle();
    let grace = config.shutdown_grace;
    actix::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        close_sessions(&hub, grace).await;
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("y-redis server stopped");
    Ok(())
}

/// Asks every session to close with 1012 and waits (at most `grace`) until they have.
async fn close_sessions(hub: &Addr<Hub>, grace: Duration) {
    let open = hub
        .send(CloseAllRooms {
            code: CLOSE_SERVICE_RESTART,
            reason: "server restarting",
        })
        .await
        .unwrap_or(0);
    tracing::info!(sessions = open, "closing sessions");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if hub.send(SessionCount).await.unwrap_or(0) == 0 {
            break;
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
        assert_eq!(room_from_path("/"), None);
        assert_eq!(room_from_path("/a/b"), None);
        assert_eq!(room_from_path("/.."), None);
        assert_eq!(room_from_path("/."), None);
        assert_eq!(room_from_path("/..."), Some("..."));
    }
}
