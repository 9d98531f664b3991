//! Logs: `tracing` events on stderr (stdout belongs to the protocol or to the
//! `listening on` line), human-readable on a terminal (what callers and
//! workers wrote escaped where it could move or hide text: `printable`),
//! JSON otherwise. Each
//! request runs in a span carrying its request id, so every line it logs, in
//! litebridge and in the worker (which receives the id), can be tied to it.

use std::io::IsTerminal;

use tracing::Level;

/// Installs the subscriber; `format` is auto, json or text.
pub(crate) fn init(level: &str, format: &str) {
    let level = match level {
        "error" => Level::ERROR,
        "warn" => Level::WARN,
        "debug" => Level::DEBUG,
        "trace" => Level::TRACE,
        _ => Level::INFO,
    };
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(true);
    // A second initialization (tests) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(|| crate::printable::Sanitized(std::io::stderr()))
            .try_init()
    };
}

/// A new request id: 16 hex digits.
pub(crate) fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    format!("{:016x}", h.finish())
}
