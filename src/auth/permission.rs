//! The permission callback: `GET <AUTH_PERM_CALLBACK>/<room>/<yuserid>`
//! answering `{"yroom", "yaccess": "rw" | "r", "yuserid"}`.

use std::time::Duration;

use serde::Deserialize;

use super::AuthError;
use y_redis_protocol::names::push_path_segment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

#[derive(Deserialize)]
struct PermissionReply {
    yaccess: Option<String>,
}

pub fn permission_url(base: &str, room: &str, user_id: &str) -> String {
    let mut url = base.to_owned();
    push_path_segment(&mut url, room);
    // A user id is plain text, so `%` is escaped too.
    push_path_segment(&mut url, &user_id.replace('%', "%25"));
    url
}

pub async fn check_permission(
    http: &awc::Client,
    base: &str,
    room: &str,
    user_id: &str,
    timeout: Duration,
) -> Result<Access, AuthError> {
    let url = permission_url(base, room, user_id);
    let request = http.get(&url).timeout(timeout).send();
    let mut response = match request.await {
        Ok(r) => r,
        Err(awc::error::SendRequestError::Timeout) => {
            return Err(AuthError::CallbackTimeout(timeout))
        }
        Err(e) => return Err(AuthError::CallbackFailed(e.to_string())),
    };
    if response.status().is_server_error() {
        return Err(AuthError::CallbackFailed(format!(
            "HTTP {}",
            response.status()
        )));
    }
    if !response.status().is_success() {
        return Err(AuthError::Forbidden);
    }
    let reply: PermissionReply = match response.json().limit(64 * 1024).await {
        Ok(r) => r,
        Err(awc::error::JsonPayloadError::Payload(actix_web::error::PayloadError::Io(e)))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            return Err(AuthError::CallbackTimeout(timeout))
        }
        Err(e) => return Err(AuthError::CallbackFailed(format!("unreadable answer: {e}"))),
    };
    match reply.yaccess.as_deref() {
        Some("rw") => Ok(Access::ReadWrite),
        Some("r") => Ok(Access::ReadOnly),
        _ => Err(AuthError::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::permission_url;

    #[test]
    fn url_is_base_room_user() {
        assert_eq!(
            permission_url("http://a/auth/perm", "r1", "u1"),
            "http://a/auth/perm/r1/u1"
        );
        assert_eq!(
            permission_url("http://a/auth/perm/", "a%20b", "u 1"),
            "http://a/auth/perm/a%20b/u%201"
        );
        assert_eq!(
            permission_url("http://a/p", "x/y", "50%"),
            "http://a/p/x%2Fy/50%25"
        );
    }
}
