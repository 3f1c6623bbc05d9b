//! Building URLs for outgoing calls (permission and update callbacks).

/// Characters a URL path segment may hold unescaped (RFC 3986 pchar), plus
/// `%`, because rooms are kept in their URL form (the raw path segment).
fn is_path_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

/// Appends `segment` to `url` as one path segment.
pub fn push_path_segment(url: &mut String, segment: &str) {
    if !url.ends_with('/') {
        url.push('/');
    }
    for &b in segment.as_bytes() {
        if is_path_safe(b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_path_segment;

    #[test]
    fn segments_are_escaped_but_keep_url_form() {
        let mut url = "http://h/ydoc".to_owned();
        push_path_segment(&mut url, "a%20b");
        assert_eq!(url, "http://h/ydoc/a%20b");
        let mut url = "http://h/ydoc/".to_owned();
        push_path_segment(&mut url, "a b/ü");
        assert_eq!(url, "http://h/ydoc/a%20b%2F%C3%BC");
    }
}
