//! `YDOC_UPDATE_CALLBACK`: after a changed document is persisted, `PUT` it
//! (multipart field `ydoc`, update v2) to `<url>/<room>`, as @y/redis does.

use std::time::Duration;

use y_redis_protocol::names::push_path_segment;

pub fn callback_url(base: &str, room: &str) -> String {
    let mut url = base.to_owned();
    push_path_segment(&mut url, room);
    url
}

/// The multipart body browsers send for `formData.append('ydoc', new Blob([update]))`.
pub fn multipart_body(boundary: &str, update_v2: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(update_v2.len() + 200);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"ydoc\"; filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(update_v2);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// Sends the document; failures are logged, never returned, so a broken
/// callback can not hold up persistence.
pub async fn send(
    client: &awc::Client,
    base: &str,
    room: &str,
    update_v2: Vec<u8>,
    timeout: Duration,
) {
    let url = callback_url(base, room);
    let boundary = format!("yredis{}", uuid::Uuid::new_v4().simple());
    let body = multipart_body(&boundary, &update_v2);
    let result = client
        .put(&url)
        .timeout(timeout)
        .insert_header((
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        ))
        .send_body(body)
        .await;
    match result {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(room, status = %response.status(), "update callback delivered")
        }
        Ok(response) => {
            tracing::warn!(room, status = %response.status(), "update callback refused the document")
        }
        Err(e) => tracing::warn!(room, error = %e, "update callback failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_one_multipart_field_named_ydoc() {
        let body = multipart_body("XYZ", &[1, 2, 3]);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("--XYZ\r\nContent-Disposition: form-data; name=\"ydoc\""));
        assert!(text.ends_with("\r\n--XYZ--\r\n"));
        assert!(body.windows(3).any(|w| w == [1, 2, 3]));
    }
}
