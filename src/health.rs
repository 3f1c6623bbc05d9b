//! `/healthz` (the process is alive), `/readyz` (Redis and storage answer)
//! and `/metrics` (Prometheus), on the server's port and on the worker's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{guard, web, HttpResponse, HttpServer};
use serde_json::json;

use crate::storage::Storage;
use crate::streams::RedisStreams;

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Probes {
    pub redis: RedisStreams,
    pub storage: Arc<dyn Storage>,
    /// Set on SIGTERM: the process still serves but wants no new clients.
    pub draining: Arc<AtomicBool>,
}

/// Adds the three endpoints. Websocket upgrades never match them, so a
/// room may still be called `metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let plain_get = || {
        web::get().guard(guard::fn_guard(|ctx| {
            ctx.head().headers().get("upgrade").is_none()
        }))
    };
    cfg.route("/healthz", plain_get().to(healthz))
        .route("/readyz", plain_get().to(readyz))
        .route("/metrics", plain_get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

fn outcome<E: std::fmt::Display>(
    result: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Result<(), String> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    if probes.draining.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "ready": false, "draining": true }));
    }
    let (redis, storage) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, probes.redis.ping()),
        tokio::time::timeout(PROBE_TIMEOUT, probes.storage.check()),
    );
    let (redis, storage) = (outcome(redis), outcome(storage));
    let ready = redis.is_ok() && storage.is_ok();
    // Anyone may ask: the answer names what is down, the reason goes to the log.
    let show = |what: &str, r: &Result<(), String>| match r {
        Ok(()) => "ok",
        Err(reason) => {
            tracing::warn!(dependency = what, reason = %reason, "not ready");
            "down"
        }
    };
    let body = json!({ "ready": ready, "redis": show("redis", &redis), "storage": show("storage", &storage) });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(crate::metrics::render())
}

/// The worker's own small HTTP server for probes and metrics.
pub fn serve(host: &str, port: u16, probes: Probes) -> std::io::Result<actix_web::dev::Server> {
    let probes = web::Data::new(probes);
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(probes.clone())
            .configure(routes)
    })
    .workers(1)
    .disable_signals()
    .bind((host, port))?
    .run();
    tracing::info!(port, "worker health and metrics endpoints listening");
    Ok(server)
}
