//! JSON-RPC over HTTP (axum), plus health, readiness and metrics.
//!
//! - `POST /rpc`: `application/json` only (415 otherwise); bodies past the
//!   limit get 413; every JSON-RPC reply, errors included, is 200; a request
//!   of notifications only gets 204.
//! - `GET /health`: liveness, 200 while the process serves.
//! - `GET /ready`: 200 when the writer accepts writes, readers are there and
//!   the workers (if any) are healthy; 503 with the problems otherwise.
//! - `GET /metrics`: Prometheus text exposition.
//! - `/mcp`: MCP over streamable HTTP (see [`crate::transport::mcp`]).
//!
//! Authentication: `Authorization: Bearer KEY`. While any key exists, or
//! when the server listens beyond loopback, `/rpc` and `/metrics` need one
//! (401 with `unauthorized` otherwise, before the body is looked at).
//! Without keys on loopback, requests run with the local scopes.
//! `/health` and `/ready` stay open: load balancers probe them and they tell
//! nothing but up or down.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use litebridge::auth::{Caller, Scope, Scopes};
use serde_json::json;

use crate::{metrics, rpc};

/// The largest request body accepted.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    app: Arc<rpc::App>,
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    access: Access,
}

/// Who may call without a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    /// Listening beyond loopback: a key is always needed.
    pub(crate) exposed: bool,
    /// The scopes of keyless requests on loopback while no key exists.
    pub(crate) local: Scopes,
}

/// The routes, for `axum::serve` (and for tests, without a socket), handling
/// at most `max_concurrent` JSON-RPC requests at once; with `mcp`, also
/// `/mcp`, whose sessions end when that token is cancelled.
pub(crate) fn router(
    app: Arc<rpc::App>,
    max_concurrent: usize,
    access: Access,
    mcp: Option<tokio_util::sync::CancellationToken>,
) -> Router {
    let state = AppState {
        app,
        permits: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
        limit: max_concurrent,
        access,
    };
    let mcp = match mcp {
        Some(stop) => Router::new()
            .nest_service(
                "/mcp",
                crate::transport::mcp::http_service(state.app.clone(), access.exposed, stop),
            )
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::transport::mcp::authenticate,
            )),
        None => Router::new(),
    };
    Router::new()
        .route("/rpc", post(rpc_handler))
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
        .merge(mcp)
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

/// A JSON-RPC error with `id: null` (the request was not read), with `status`.
fn rpc_error(status: StatusCode, e: &rpc::RpcError) -> Response {
    let mut r = json_response(status, &rpc::error_reply(serde_json::Value::Null, e));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The caller a request speaks for, or why not (401).
pub(crate) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, litebridge::Error> {
    let unauthorized = |message: &str| litebridge::Error::Unauthorized {
        message: message.to_owned(),
    };
    match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let secret = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, secret)| secret.trim())
                .ok_or_else(|| unauthorized("the Authorization header must be `Bearer KEY`"))?;
            state.app.auth.authenticate(secret)
        }
        None if state.access.exposed || state.app.auth.has_keys() => Err(unauthorized(
            "this server needs an API key: send `Authorization: Bearer KEY` (keys come from `litebridge keys create`)",
        )),
        None => Ok(Caller::local(state.access.local)),
    }
}

/// The 401 (or 403) for a refused request.
pub(crate) fn refused(e: litebridge::Error) -> Response {
    let status = match e.kind() {
        litebridge::ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        _ => StatusCode::FORBIDDEN,
    };
    rpc_error(status, &rpc::RpcError::App(e))
}

async fn rpc_handler(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    // Refused at once past the limit, before any work: `overloaded`, retry later.
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        let e = rpc::RpcError::App(litebridge::Error::Overloaded {
            queue: "request",
            capacity: state.limit,
            retry_after: std::time::Duration::from_millis(100),
        });
        return rpc_error(StatusCode::OK, &e);
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json_type {
        let e = rpc::RpcError::InvalidRequest("the Content-Type must be application/json".into());
        return rpc_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &e);
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(crate::logging::new_request_id, str::to_owned);
    let mut response = match rpc::handle(&state.app, &caller, &body, &request_id).await {
        Some(reply) => json_response(StatusCode::OK, &reply),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn ready(State(state): State<AppState>) -> Response {
    let service = &state.app.service;
    let db = service.db.health();
    let mut problems = db.problems;
    if let Some(w) = &service.workers {
        let s = w.status();
        if !s.healthy {
            problems.push(format!(
                "{} of {} workers are running",
                s.workers.len(),
                s.processes
            ));
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({"ready": problems.is_empty(), "problems": problems}),
    )
}

async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&state, &headers) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    if let Err(e) = caller.require(Scope::Read, "/metrics") {
        return refused(e);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&state.app.service),
    )
        .into_response()
}
