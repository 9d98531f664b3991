//! `events.subscribe` and `events.unsubscribe`: the event stream on
//! transports that can push (stdio). Over HTTP the stream is `GET /events`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::Handler;
use super::stats::without_params;
use super::*;

/// What the transport serving a request can do beyond replying: switch its
/// session's event feed on and off. Set by the transport around each request
/// it hands to [`handle`] (stdio); absent elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Whether the session's events are written to it.
    pub(crate) events: Arc<AtomicBool>,
    /// How far its `consistency: "session"` reads must see.
    pub(crate) token: Arc<std::sync::Mutex<super::sql::SessionTokens>>,
}

tokio::task_local! {
    /// The session of the request being handled, when its transport has one.
    pub(crate) static SESSION: Session;
}

fn switch(on: bool) -> Result<Json, RpcError> {
    let method = if on {
        "events.subscribe"
    } else {
        "events.unsubscribe"
    };
    SESSION
        .try_with(|s| s.events.store(on, Ordering::Release))
        .map_err(|_| {
            RpcError::App(Error::Unsupported {
                what: method.into(),
                here: "over HTTP or MCP".into(),
                instead: "read GET /events (server-sent events), or call it over stdio".into(),
                backend: "sqlite",
            })
        })?;
    Ok(json!({"subscribed": on}))
}

without_params!(
    /// `events.subscribe`.
    Subscribe,
    |_cx| switch(true)
);

without_params!(
    /// `events.unsubscribe`.
    Unsubscribe,
    |_cx| switch(false)
);
