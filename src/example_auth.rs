//! `y-redis auth-example`: a small auth backend like the one @y/redis ships
//! for its demo. It issues tokens, grants everyone `rw`, and receives the
//! worker's update callback. A starting point, not a production service.

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{now_ms, Signer};

/// How long an issued token is valid.
const TOKEN_LIFETIME_MS: u64 = 60 * 60 * 1000;

#[derive(Deserialize)]
struct TokenQuery {
    user: Option<String>,
}

async fn issue_token(signer: web::Data<Signer>, query: web::Query<TokenQuery>) -> HttpResponse {
    let user = query.user.clone().unwrap_or_else(|| "demo-user".into());
    // Milliseconds, as lib0-based backends write `exp`.
    let claims = json!({ "iss": "y-redis-auth-example", "exp": now_ms() + TOKEN_LIFETIME_MS, "yuserid": user });
    match signer.sign(&claims) {
        Ok(token) => HttpResponse::Ok().content_type("text/plain").body(token),
        Err(e) => HttpResponse::InternalServerError().body(e),
    }
}

async fn permission(path: web::Path<(String, String)>) -> HttpResponse {
    let (room, user) = path.into_inner();
    HttpResponse::Ok().json(json!({ "yroom": room, "yaccess": "rw", "yuserid": user }))
}

async fn receive_update(room: web::Path<String>, body: web::Bytes) -> HttpResponse {
    tracing::info!(room = %room, bytes = body.len(), "received document update from the worker");
    HttpResponse::Ok().finish()
}

/// Serves `/auth/token`, `/auth/perm/{room}/{user}` and `PUT /ydoc/{room}` on `port`.
pub async fn run(private_jwk: &str, port: u16) -> Result<(), String> {
    let signer = web::Data::new(
        Signer::from_private_jwk(private_jwk).map_err(|e| format!("AUTH_PRIVATE_KEY: {e}"))?,
    );
    let server = HttpServer::new(move || {
        App::new()
            .app_data(signer.clone())
            .app_data(web::PayloadConfig::new(256 << 20))
            .route("/auth/token", web::get().to(issue_token))
            .route("/auth/perm/{room}/{user}", web::get().to(permission))
            .route("/ydoc/{room}", web::put().to(receive_update))
    })
    .bind(("0.0.0.0", port))
    .map_err(|e| format!("cannot listen on port {port}: {e}"))?
    .run();
    tracing::info!(port, "example auth backend listening");
    server.await.map_err(|e| e.to_string())
}
