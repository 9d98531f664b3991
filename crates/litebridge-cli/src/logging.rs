//! Logs: `tracing` events on stderr (stdout belongs to the protocol or to the
//! `listening on` line), human-readable on a terminal (what callers and
//! workers wrote escaped where it could move or hide text: `printable`),
//! JSON otherwise. Each
//! request runs in a span carrying its request id, so every line it logs, in
//! litebridge and in the worker (which receives the id), can be tied to it.
//!
//! The level set applies to litebridge's own lines; the libraries it is
//! built on log their warnings and errors only. rmcp logs every MCP
//! request and answer whole at `debug` (SQL parameters, rows, a worker's
//! result), where litebridge quotes nothing of a request but a refusal,
//! three lines at `info` for each request (review 190), and a warning
//! quoting an unknown method's name, whole: rmcp logs its errors only.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;

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
    // Every target of litebridge's starts with `litebridge` (its crates,
    // and `litebridge::worker` for what workers write to stderr).
    let own = Targets::new()
        .with_default(level.min(Level::WARN))
        .with_target("litebridge", level)
        // Its warnings quote what a client sent (a method's name, whole:
        // review 193).
        .with_target("rmcp", level.min(Level::ERROR));
    // A second initialization (tests) keeps the first subscriber.
    let _ = if json {
        let subscriber = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish();
        tracing::subscriber::set_global_default(own.with_subscriber(subscriber))
    } else {
        let subscriber = builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(|| crate::printable::Sanitized(std::io::stderr()))
            .finish();
        tracing::subscriber::set_global_default(own.with_subscriber(subscriber))
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
