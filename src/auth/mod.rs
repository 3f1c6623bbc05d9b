//! Auth compatible with @y/redis (ARCHITECTURE.md, "Auth"): ES384 JWTs carrying `yuserid`,
//! and a permission callback answering `rw`, `r` or anything else per room.

mod keys;
mod permission;
mod token;

pub use keys::{generate_keypair, KeyPair, Signer};
pub use permission::{check_permission, permission_url, Access};
pub use token::{token_from_request, Claims, TokenVerifier};

use std::time::Duration;

use actix_web::http::StatusCode;
use thiserror::Error;

/// Why an upgrade or an open session was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("no access to this room")]
    Forbidden,
    #[error("permission callback failed: {0}")]
    CallbackFailed(String),
    #[error("permission callback did not answer within {0:?}")]
    CallbackTimeout(Duration),
}

impl AuthError {
    /// The HTTP status a refused upgrade gets.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken | AuthError::InvalidToken(_) | AuthError::Expired => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Forbidden => StatusCode::FORBIDDEN,
            AuthError::CallbackFailed(_) => StatusCode::BAD_GATEWAY,
            AuthError::CallbackTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the server needs to authenticate connections.
pub struct Authenticator {
    pub verifier: TokenVerifier,
    pub perm_callback: String,
    pub timeout: Duration,
}

/// A connection that may proceed: who it is, what it may do, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user_id: Option<String>,
    pub access: Access,
    /// Token expiry in milliseconds since the epoch.
    pub expires_at_ms: Option<u64>,
}

impl Grant {
    /// Everyone may read and write (`AUTH_DISABLED=true`).
    pub fn open() -> Self {
        Grant {
            user_id: None,
            access: Access::ReadWrite,
            expires_at_ms: None,
        }
    }
}

impl Authenticator {
    /// Verifies `token` and asks the permission callback about `room`.
    pub async fn authorize(
        &self,
        http: &awc::Client,
        token: Option<&str>,
        room: &str,
    ) -> Result<Grant, AuthError> {
        let claims = self
            .verifier
            .verify(token.ok_or(AuthError::MissingToken)?, now_ms())?;
        // The user id becomes a path segment of the callback URL.
        y_redis_protocol::names::check_user_id(&claims.user_id)
            .map_err(|e| AuthError::InvalidToken(format!("yuserid: {e}")))?;
        let access = check_permission(
            http,
            &self.perm_callback,
            room,
            &claims.user_id,
            self.timeout,
        )
        .await?;
        Ok(Grant {
            user_id: Some(claims.user_id),
            access,
            expires_at_ms: claims.expires_at_ms,
        })
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
