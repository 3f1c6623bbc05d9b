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
use crate::actors::room::RoomContext;
use crate::actors::session::{ConnectionKiller, SessionParams, WsSession};
use crate::config::Config;
use crate::redis::{Keys, RedisError, RedisStore};
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
    Bind { addr: String, source: std::io::Error },
    #[error("server stopped with an error: {0}")]
    Io(#[from] std::io::Error),
}

struct ServerState {
    hub: Addr<Hub>,
    redis: RedisStore,
    max_frame_bytes: usize,
    next_conn: AtomicU64,
}

/// The room is the raw path segment, not percent-decoded, as @y/redis has it.
fn room_from_path(path: &str) -> Option<&str> {
    let room = path.strip_prefix('/')?;
    (!room.is_empty() && !room.contains('/')).then_some(room)
}

async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, actix_web::Error> {
    let Some(room) = room_from_path(req.uri().path()) else {
        return Ok(HttpResponse::NotFound().body("expected /{room}"));
    };
    let session = WsSession::new(SessionParams {
        conn: state.next_conn.fetch_add(1, Ordering::Relaxed),
        room: room.to_owned(),
        docid: DEFAULT_DOCID.to_owned(),
        hub: state.hub.clone(),
        redis: state.redis.clone(),
        killer: req.conn_data::<ConnectionKiller>().cloned(),
        max_frame_bytes: state.max_frame_bytes,
    });
    ws::WsResponseBuilder::new(session, &req, payload)
        .frame_size(state.max_frame_bytes)
        .start()
}

/// Gives every connection a [`ConnectionKiller`] (a duplicate of its socket).
fn attach_killer(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    if let Some(socket) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => {
                data.insert(ConnectionKiller::new(std::net::TcpStream::from(fd)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot duplicate socket; slow-client cut-off disabled for it"),
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then closes sessions with 1012.
pub async fn run(config: Config, storage: Arc<dyn Storage>) -> Result<(), ServerError> {
    let redis = RedisStore::new(&config.redis_url, Keys::new(&config.redis_prefix), config.redis_command_timeout)?;
    if let Err(e) = redis.ensure_worker_group().await {
        // Not fatal: publishing recreates the group once Redis answers.
        tracing::warn!(error = %e, "cannot create the worker queue yet");
    }
    let listener = RedisListener::new(redis.clone(), config.redis_block).start();
    let hub = Hub::new(RoomContext {
        redis: redis.clone(),
        storage,
        listener,
        max_send_queue_bytes: config.max_send_queue_bytes,
    })
    .start();
    let state = web::Data::new(ServerState {
        hub: hub.clone(),
        redis,
        max_frame_bytes: config.max_frame_bytes,
        next_conn: AtomicU64::new(1),
    });
    let addr = format!("{}:{}", config.host, config.port);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .default_service(web::get().to(websocket))
    })
    .on_connect(attach_killer)
    .disable_signals()
    .shutdown_timeout(config.shutdown_grace.as_secs().max(1))
    .bind(&addr)
    .map_err(|source| ServerError::Bind { addr: addr.clone(), source })?
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
    }
}
