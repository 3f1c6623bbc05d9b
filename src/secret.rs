//! `Secret`: a configuration value (a key, a password, a URL that may hold
//! one) whose `Debug` never shows it, so no log line or error can leak it.

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
