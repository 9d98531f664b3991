//! JSON-RPC over HTTP (axum), plus health, readiness and metrics.
//!
//! - `POST /rpc`: `application/json` only (415 otherwise); bodies past the
//!   limit get 413; every JSON-RPC reply, errors included, is 200; a request
//!   of notifications only gets 204.
//! - `GET /health`: liveness, 200 while the process serves.
//! - `GET /ready`: 200 when the writer accepts writes, readers are there and
//!   the workers (if any) are healthy; 503 with the problems otherwise.
//! - `GET /metrics`: Prometheus text exposition.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use litebridge::Service;
use serde_json::json;

use crate::{metrics, rpc};

/// The largest request body accepted.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    service: Arc<Service>,
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

/// The routes, for `axum::serve` (and for tests, without a socket), handling
/// at most `max_concurrent` JSON-RPC requests at once.
pub(crate) fn router(service: Arc<Service>, max_concurrent: usize) -> Router {
    let state = AppState {
        service,
        permits: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
        limit: max_concurrent,
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
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

async fn rpc_handler(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // Refused at once past the limit, before any work: `overloaded`, retry later.
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        let e = rpc::RpcError::App(litebridge::Error::Overloaded {
            queue: "request",
            capacity: state.limit,
            retry_after: std::time::Duration::from_millis(100),
        });
        return json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "error": rpc::wire_error(&e), "id": null}),
        );
    };
    let service = &state.service;
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
        return json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &json!({"jsonrpc": "2.0", "error": rpc::wire_error(&e), "id": null}),
        );
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(crate::logging::new_request_id, str::to_owned);
    let mut response = match rpc::handle(service, &body, &request_id).await {
        Some(reply) => json_response(StatusCode::OK, &reply),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn ready(State(state): State<AppState>) -> Response {
    let service = &state.service;
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

async fn metrics_handler(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&state.service),
    )
        .into_response()
}
