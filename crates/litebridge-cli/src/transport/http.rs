//! JSON-RPC over HTTP (axum), plus health, readiness and metrics.
//!
//! - `POST /rpc`: `application/json` only (415 otherwise); bodies past the
//!   limit get 413; every JSON-RPC reply, errors included, is 200; a request
//!   of notifications only gets 204.
//! - `GET /health`: liveness, 200 while the process serves; 503 once every
//!   request thread has been held for a minute (see
//!   [`crate::transport::standby`], which answers these three paths while
//!   the request threads are held).
//! - `GET /ready`: 200 when the writer accepts writes, readers are there,
//!   the workers (if any) are healthy and the request threads are not held;
//!   503 with the problems otherwise.
//! - `GET /metrics`: Prometheus text exposition.
//! - `/mcp`: MCP over streamable HTTP (see [`crate::transport::mcp`]).
//!
//! Authentication: `Authorization: Bearer KEY`. Once any key has been
//! created in the database (revoked ones count), or when the server listens
//! beyond loopback, `/rpc`, `/mcp` and `/metrics` need one (401 with
//! `unauthorized` otherwise, before the body is read). Without keys on
//! loopback, requests run with the local scopes. A key with none of its
//! concurrent slots free gets 429 (`quota_exceeded`), also before the body
//! is read. `/health` and `/ready` stay
//! open: load balancers probe them and they tell nothing but up or down.
//!
//! In front of every route, [`same_site`] refuses (403) what a web page in a
//! browser could send: on a loopback listener a `Host` that is not a
//! loopback name (DNS rebinding: a page whose name now points at 127.0.0.1),
//! and everywhere an `Origin` of another site.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
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
    /// A request body must arrive whole within this.
    read_timeout: std::time::Duration,
}

/// Who may call without a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    /// Listening beyond loopback: a key is always needed.
    pub(crate) exposed: bool,
    /// The scopes of keyless requests on loopback while no key exists.
    pub(crate) local: Scopes,
}

/// The routes, for [`crate::transport::accept::serve`] (and for tests,
/// without a socket), handling at most `max_concurrent` JSON-RPC requests at
/// once, each body read within `read_timeout`; with `mcp`, also `/mcp`,
/// whose requests end when that token is cancelled.
pub(crate) fn router(
    app: Arc<rpc::App>,
    max_concurrent: usize,
    access: Access,
    read_timeout: std::time::Duration,
    mcp: Option<tokio_util::sync::CancellationToken>,
    dashboard: bool,
) -> Router {
    let state = AppState {
        app,
        permits: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
        limit: max_concurrent,
        access,
        read_timeout,
    };
    let mcp = match mcp {
        Some(stop) => Router::new()
            .nest_service(
                "/mcp",
                crate::transport::mcp::http_service(state.app.clone(), stop),
            )
            // Its routes only: a POST to a path of no route is not MCP.
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::transport::mcp::authenticate,
            )),
        None => Router::new(),
    };
    let dashboard = if dashboard {
        Router::new()
            .route("/", get(dashboard_file))
            .route("/dashboard/app.js", get(dashboard_file))
            .route("/dashboard/app.css", get(dashboard_file))
            .route("/api/dashboard", get(dashboard_data))
            // Nothing, said plainly: a browser asks for it by itself, and a
            // 404 is an error on the page's console.
            .route(
                "/favicon.ico",
                get(|| async { StatusCode::NO_CONTENT.into_response() }),
            )
    } else {
        Router::new()
    };
    Router::new()
        .merge(dashboard)
        .route("/rpc", post(rpc_handler))
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_handler))
        .route("/events", get(events_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state.clone())
        .merge(mcp)
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ))
        .layer(axum::middleware::from_fn_with_state(state, same_site))
}

/// A path litebridge serves nothing at (said in JSON-RPC's shape, for a
/// client that posted there).
async fn no_route() -> Response {
    let e = rpc::RpcError::InvalidRequest(
        "nothing is served at this path: JSON-RPC is POST /rpc, MCP /mcp, health GET /health and /ready".into(),
    );
    rpc_error(StatusCode::NOT_FOUND, &e)
}

/// Once `serve` is told to stop, a request that comes on a connection kept
/// alive is answered 503 as not run, with `Connection: close` (the client
/// then closes that connection and may send the request to another server),
/// instead of the connection closing under it: a request written as an idle
/// connection closes cannot be told from one that ran. `/health`, `/ready`
/// and `/metrics` still answer (`/ready` says it is stopping).
async fn refuse_while_draining(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !state
        .app
        .draining
        .load(std::sync::atomic::Ordering::Acquire)
        || matches!(request.uri().path(), "/health" | "/ready" | "/metrics")
    {
        return next.run(request).await;
    }
    let e = rpc::RpcError::App(litebridge::Error::Unavailable {
        what: "server",
        reason: "it is shutting down; the request was not run (send it again, to another server or once this one is back)".into(),
    });
    let mut r = rpc_error(StatusCode::SERVICE_UNAVAILABLE, &e);
    let headers = r.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    headers.insert(
        crate::transport::standby::NOT_RUN,
        header::HeaderValue::from_static("1"),
    );
    r
}

/// Refuses requests a web page could have sent (see the module docs).
async fn same_site(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check_site(
        state.access.exposed,
        request.method(),
        request.uri(),
        request.headers(),
    ) {
        Ok(()) => next.run(request).await,
        Err(reason) => forbidden(reason),
    }
}

/// The 403 for a request a web page could have sent ([`check_site`]).
pub(crate) fn forbidden(reason: String) -> Response {
    rpc_error(
        StatusCode::FORBIDDEN,
        &rpc::RpcError::App(litebridge::Error::Forbidden { message: reason }),
    )
}

/// The `Host`, `Origin` and `Sec-Fetch-Site` rules: on loopback the host
/// must be a loopback name; an `Origin`, when present, must be a loopback
/// one on loopback, and the request's own host otherwise; and a request a
/// browser marks `Sec-Fetch-Site: cross-site` is refused (a page's `<img>`
/// or `<script>` sends no `Origin`, but that header), unless it is the
/// browser itself opening the dashboard's page (`GET /` as a document,
/// `Sec-Fetch-Mode: navigate`: a link to it; the page is this server's
/// own, it holds no data, and another site's page cannot read it; any
/// other route, `/events` in a frame included, is refused). Every value of
/// a repeated header is held to them.
pub(crate) fn check_site(
    exposed: bool,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<(), String> {
    let path = uri.path();
    let mut hosts = Vec::new();
    for v in headers.get_all(header::HOST) {
        hosts.push(
            v.to_str()
                .map_err(|_| "the Host header is not readable text".to_owned())?,
        );
    }
    // A request target in absolute form (`POST http://host/rpc`) names a
    // host too, held to the same rules (review 206: with no Host header,
    // such a target reached `/mcp` once rmcp's own check was off).
    if let Some(authority) = uri.authority() {
        hosts.push(authority.as_str());
    }
    if !exposed && let Some(h) = hosts.iter().find(|h| !is_loopback(authority_host(h))) {
        return Err(format!(
            "this server listens on loopback and answers only to a loopback Host \
             (localhost, a 127.x address, [::1]), not {:?} (protection against DNS rebinding)",
            h.chars().take(100).collect::<String>()
        ));
    }
    for origin in headers.get_all(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .filter(|a| !a.is_empty() && !a.contains('/'));
        let same = match (authority, exposed) {
            (None, _) => false,
            (Some(a), false) => is_loopback(authority_host(a)),
            (Some(a), true) => {
                !hosts.is_empty()
                    && hosts
                        .iter()
                        .all(|h| authority_host(h).eq_ignore_ascii_case(authority_host(a)))
            }
        };
        if !same {
            return Err(format!(
                "requests from the web page at {:?} are refused: a browser may reach this server only from its own site",
                origin.chars().take(100).collect::<String>()
            ));
        }
    }
    let is = |name: &str, value: &[u8]| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(value))
    };
    let opening_the_page = method == axum::http::Method::GET
        && path == "/"
        && is("sec-fetch-mode", b"navigate")
        && headers.get_all("sec-fetch-mode").iter().count() == 1;
    if is("sec-fetch-site", b"cross-site") && !opening_the_page {
        return Err(
            "requests a web page of another site sent are refused (Sec-Fetch-Site: cross-site): \
             a browser may reach this server only from its own site"
                .to_owned(),
        );
    }
    Ok(())
}

/// The host of `host[:port]` or `[v6]:port`, without the port (anything
/// after the bracket but a port keeps the whole text, which is no address).
fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, "")) => v6,
            // An empty port is no port (RFC 3986), as without brackets.
            Some((v6, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                v6
            }
            _ => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

/// A reply of `/rpc`: one past [`HELD_REPLY`] bytes holds a place of its
/// key's requests in flight until it is written (see
/// `Caller::hold_reply`), written in pieces so that the place is given
/// back only once the last is handed to the connection. A batch's replies,
/// held as text, are written as they are, not copied into one body first.
fn held_reply(caller: &litebridge::auth::Caller, reply: rpc::Reply) -> Response {
    let mut parts: std::collections::VecDeque<Bytes> = match reply {
        rpc::Reply::One(reply) => {
            [Bytes::from(serde_json::to_vec(&reply).unwrap_or_default())].into()
        }
        rpc::Reply::Batch(replies) => {
            let mut parts = std::collections::VecDeque::with_capacity(2 * replies.len() + 1);
            parts.push_back(Bytes::from_static(b"["));
            for (i, reply) in replies.into_iter().enumerate() {
                if i > 0 {
                    parts.push_back(Bytes::from_static(b","));
                }
                parts.push_back(Bytes::from(Box::<str>::from(reply).into_string()));
            }
            parts.push_back(Bytes::from_static(b"]"));
            parts
        }
    };
    let length: usize = parts.iter().map(Bytes::len).sum();
    if length <= HELD_REPLY {
        // One request's reply as it was written; a small batch's joined.
        let body = match parts.len() {
            1 => parts.pop_front().unwrap_or_default(),
            _ => {
                let mut body = Vec::with_capacity(length);
                for part in &parts {
                    body.extend_from_slice(part);
                }
                Bytes::from(body)
            }
        };
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    let pieces = futures_util::stream::unfold(
        (parts, Some(caller.hold_reply())),
        |(mut parts, mut held)| async move {
            let mut part = loop {
                match parts.pop_front() {
                    Some(part) if part.is_empty() => continue,
                    Some(part) => break part,
                    None => return None,
                }
            };
            let piece = part.split_to(part.len().min(HELD_REPLY));
            if !part.is_empty() {
                parts.push_front(part);
            }
            // Given back with the last piece, before the client can have
            // read it: one that sends its next request once it has the
            // whole reply never finds the place still taken.
            if parts.is_empty() {
                held = None;
            }
            Some((Ok::<_, std::convert::Infallible>(piece), (parts, held)))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        axum::body::Body::from_stream(pieces),
    )
        .into_response()
}

/// The size of a reply past which it holds a place of its key while it is
/// written, and of the pieces it is written in.
const HELD_REPLY: usize = 64 * 1024;

/// A JSON-RPC error with `id: null` (the request was not read), with `status`.
pub(crate) fn rpc_error(status: StatusCode, e: &rpc::RpcError) -> Response {
    rpc_error_of(status, serde_json::Value::Null, e)
}

/// [`rpc_error`], answering the request whose id is `id`.
pub(crate) fn rpc_error_of(
    status: StatusCode,
    id: serde_json::Value,
    e: &rpc::RpcError,
) -> Response {
    let mut r = json_response(status, &rpc::error_reply(id, e));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Headers a proxy adds to what it forwards (besides any `x-forwarded-*`
/// and `x-envoy-*`). A server without keys answers local programs only, and
/// a request that came through a proxy on this machine (nginx's
/// `proxy_pass http://127.0.0.1:7070` sends a loopback `Host`; Envoy passes
/// the client's on) may come from anywhere: it needs a key. A backstop
/// only: a forwarder that adds none of these is not told apart
/// (SECURITY.md).
const PROXY_HEADERS: [&str; 9] = [
    "forwarded",
    "via",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// The first header of `headers` that says a proxy forwarded the request.
fn proxied(headers: &HeaderMap) -> Option<&str> {
    headers.keys().map(header::HeaderName::as_str).find(|h| {
        h.starts_with("x-forwarded-") || h.starts_with("x-envoy-") || PROXY_HEADERS.contains(h)
    })
}

/// The caller a request speaks for, or why not (401). `extensions` are the
/// request's: its connection's [`Peer`](crate::transport::peer::Peer), when
/// it came over one, tells who a keyless caller is.
pub(crate) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> Result<Caller, litebridge::Error> {
    let unauthorized = |message: &str| litebridge::Error::Unauthorized {
        message: message.to_owned(),
    };
    // Two keys: a proxy that adds its own to the client's would otherwise
    // disagree with litebridge about who is calling.
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(unauthorized(
            "the request has more than one Authorization header: send one, `Bearer KEY`",
        ));
    }
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
        None => match proxied(headers) {
            Some(h) => Err(unauthorized(&format!(
                "this server has no API keys and answers programs on this machine only; \
                 the request came through a proxy (its {h} header): create a key first \
                 (`litebridge keys create`) and send `Authorization: Bearer KEY`"
            ))),
            None => local_user(extensions).map(|()| Caller::local(state.access.local)),
        },
    }
}

/// Whether a keyless caller on loopback is the local user: the program
/// that connected runs as litebridge's user (see `transport::peer`).
fn local_user(extensions: &axum::http::Extensions) -> Result<(), litebridge::Error> {
    use crate::transport::peer::{Peer, Verdict};
    let refuse = |who: &str| {
        Err(litebridge::Error::Unauthorized {
            message: format!(
                "this server has no API keys and answers its own user's programs only; \
                 {who}: create a key first (`litebridge keys create`) and send \
                 `Authorization: Bearer KEY`"
            ),
        })
    };
    match extensions.get::<Peer>().map(Peer::verdict) {
        Some(Verdict::SameUser | Verdict::Untold) => Ok(()),
        // Every connection is given its ends (`accept`, `standby`).
        None => refuse("the request came over no connection litebridge accepted"),
        Some(Verdict::OtherUser(uid)) => refuse(&format!(
            "the program that connected runs as another user (uid {uid})"
        )),
        Some(Verdict::Unknown) => {
            refuse("the program that connected could not be told (its socket was not found)")
        }
        // Never let in for want of an answer (review 246: a stranger ran
        // the server out of descriptors, and the next keyless request was
        // taken for the local user's).
        Some(Verdict::Unchecked(errno)) => Err(litebridge::Error::Unavailable {
            what: "the check of who connected",
            reason: format!(
                "this server has no API keys and answers its own user's programs only, and \
                 could not look up which user runs the program that connected ({}); \
                 the request was not run: try again",
                std::io::Error::from_raw_os_error(errno)
            ),
        }),
    }
}

/// The 401 (429 past a quota, with `Retry-After` in whole seconds; 503
/// when who connected could not be looked up; 403 otherwise) for a
/// refused request.
pub(crate) fn refused(e: litebridge::Error) -> Response {
    let status = match e.kind() {
        litebridge::ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        litebridge::ErrorKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        litebridge::ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    };
    let retry = match &e {
        litebridge::Error::QuotaExceeded { retry_after, .. } => {
            Some(retry_after.as_millis().div_ceil(1000).max(1))
        }
        _ => None,
    };
    let mut r = rpc_error(status, &rpc::RpcError::App(e));
    if let Some(seconds) = retry
        && let Ok(v) = header::HeaderValue::from_str(&seconds.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// `GET /events`: the event stream as server-sent events (`id` `RUN-SEQ`,
/// `event`, `data` the event's JSON), for keys with the metrics scope, under
/// the Host and Origin rules of every route. Opening one counts as a
/// request against the key's quotas (a refused one does not); the stream
/// holds none of its concurrent slots, but streams are capped, a key's
/// newest ends its oldest, and each ends after an hour and when its key is
/// revoked (see `events`). A `Last-Event-ID` header resumes.
async fn events_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Response {
    let caller = match authenticate(&state, &headers, &extensions) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    if let Err(e) = caller.require(litebridge::auth::Scope::Metrics, "GET /events") {
        // Counted, as a call outside the key's scopes is.
        return refused(caller.charge().err().unwrap_or(e));
    }
    // The server's place first, then the key's limit of requests at once,
    // then its quota: a stream refused by any costs the key nothing and ends
    // none of its others.
    let admit = || caller.enter().map(drop).and_then(|()| caller.charge());
    let ticket = match state
        .app
        .events
        .open_stream(caller.key().map(|k| k.name().to_owned()), admit)
    {
        Ok(t) => t,
        Err(e @ litebridge::Error::Overloaded { .. }) => {
            let mut r = rpc_error(StatusCode::SERVICE_UNAVAILABLE, &rpc::RpcError::App(e));
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return r;
        }
        Err(e) => return refused(e),
    };
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| state.app.events.resume_after(v));
    let stream = EventStream {
        subscription: state.app.events.subscribe(after),
        app: state.app.clone(),
        caller,
        ends: tokio::time::Instant::now() + crate::events::STREAM_LIFETIME,
        ticket,
    };
    let stream = futures_util::stream::unfold(stream, |mut s| async move {
        let event = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), s))
    });
    axum::response::sse::Sse::new(stream)
        .keep_alive(
            axum::response::sse::KeepAlive::new().interval(std::time::Duration::from_secs(15)),
        )
        .into_response()
}

/// One `/events` reader: its place in the stream, who it is, when it ends.
struct EventStream {
    subscription: crate::events::Subscription,
    app: Arc<rpc::App>,
    caller: litebridge::auth::Caller,
    ends: tokio::time::Instant,
    ticket: crate::events::StreamTicket,
}

impl EventStream {
    /// The next server-sent event; `None` when the stream ends (closed, its
    /// lifetime over, its place taken by a newer stream of its key, its key
    /// revoked, checked every few seconds).
    async fn next(&mut self) -> Option<axum::response::sse::Event> {
        const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);
        loop {
            if !self.app.auth.still_valid(&self.caller) {
                return None;
            }
            let wake = (tokio::time::Instant::now() + RECHECK).min(self.ends);
            let item = tokio::select! {
                item = self.subscription.next() => item?,
                () = self.ticket.ended().cancelled() => return None,
                () = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= self.ends {
                        return None;
                    }
                    continue;
                }
            };
            // Revoked while it waited: not this event either (review 249).
            if !self.app.auth.still_valid(&self.caller) {
                return None;
            }
            let event = match &item {
                crate::events::Item::Event(e) => axum::response::sse::Event::default()
                    .id(self.app.events.sse_id(e))
                    .event(e.name),
                crate::events::Item::Missed(_) => {
                    axum::response::sse::Event::default().event("missed")
                }
            };
            return Some(event.data(item.json()));
        }
    }
}

async fn rpc_handler(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers();
    // The key is checked before a byte of the body is read.
    let caller = match authenticate(&state, headers, request.extensions()) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    // The key's slot before the server's place, and both before the body:
    // a key at its limit is refused at once (429), holding no place while
    // it sends a body slowly.
    let slot = match caller.enter() {
        Ok(slot) => slot,
        Err(e) => return refused(e),
    };
    if let Some(refusal) = spent_unread(&caller, headers) {
        return refusal;
    }
    let Some(_permit) = in_flight(&state) else {
        return overloaded(&state);
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    // A request refused before it is read counts as any other (review 142).
    let counted = |status, e| rpc_error(status, &rpc::charged(&caller, e));
    if !json_type {
        let e = rpc::RpcError::InvalidRequest("the Content-Type must be application/json".into());
        return counted(StatusCode::UNSUPPORTED_MEDIA_TYPE, e);
    }
    if let Some(refused) = declared_too_large(headers) {
        let _ = caller.charge();
        return refused;
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(crate::logging::new_request_id, str::to_owned);
    // Read under the body limit (413 past it), within the read timeout (408
    // past it: a client trickling its body holds a request slot no longer).
    // A body that came with the headers, as most do, is taken at once,
    // without arming the timer.
    let mut reading = std::pin::pin!(Bytes::from_request(request, &()));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(reading.as_mut().poll(cx))).await;
    let read = match first {
        std::task::Poll::Ready(read) => Ok(read),
        std::task::Poll::Pending => tokio::time::timeout(state.read_timeout, reading).await,
    };
    let body = match read {
        Ok(Ok(b)) => b,
        Ok(Err(rejection)) => {
            let e = rpc::RpcError::InvalidRequest(rejection.body_text());
            return counted(rejection.status(), e);
        }
        Err(_) => {
            let e = rpc::RpcError::InvalidRequest(format!(
                "the body did not arrive within {} ms (server.read_timeout_ms)",
                state.read_timeout.as_millis()
            ));
            return counted(StatusCode::REQUEST_TIMEOUT, e);
        }
    };
    let mut response =
        match rpc::handle_holding(&state.app, &caller, Some(slot), &body, &request_id).await {
            Some(reply) => held_reply(&caller, reply),
            None => StatusCode::NO_CONTENT.into_response(),
        };
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The 413 for a body whose `Content-Length` is over [`MAX_BODY`], at
/// once: it is not waited for.
fn declared_too_large(headers: &HeaderMap) -> Option<Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()?;
    (declared > MAX_BODY as u64).then(|| {
        let e = rpc::RpcError::InvalidRequest(format!(
            "the body is {declared} bytes (Content-Length); at most {MAX_BODY} are accepted"
        ));
        rpc_error(StatusCode::PAYLOAD_TOO_LARGE, &e)
    })
}

/// The refusal of a key whose quota is spent, answered before a body
/// larger than [`SPENT_READ`] (or of no declared length) is read: such a
/// key costs the server no parsing of megabytes only to be refused (review
/// 246: eight bodies of 16 MB took 9.5 s of CPU). A smaller body is read,
/// so that its refusal names its id (an MCP tool's, as a tool error).
pub(crate) fn spent_unread(
    caller: &litebridge::auth::Caller,
    headers: &HeaderMap,
) -> Option<Response> {
    let e = caller.spent().err()?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    declared.is_none_or(|n| n > SPENT_READ).then(|| refused(e))
}

/// The largest body of a key whose quota is spent that is still read.
const SPENT_READ: u64 = 64 * 1024;

/// One of the server's `server.max_concurrent_requests` places, held by a
/// `/rpc` or `/mcp` request while it runs; `None` past the limit, where the
/// request is refused at once before any work ([`overloaded`]).
pub(crate) fn in_flight(state: &AppState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    state.permits.clone().try_acquire_owned().ok()
}

/// The answer to a request [`in_flight`] found no place for: `overloaded`,
/// retry later.
pub(crate) fn overloaded(state: &AppState) -> Response {
    let e = rpc::RpcError::App(litebridge::Error::Overloaded {
        queue: "request",
        capacity: state.limit,
        retry_after: std::time::Duration::from_millis(100),
    });
    rpc_error(StatusCode::OK, &e)
}

/// Reads `request`'s body whole, within the read timeout and the body
/// limit, refuses JSON that names a member twice or whose tree is over the
/// memory limits (`json`), and gives the request back with the body in
/// memory (for `/mcp`, whose SDK would read it with no deadline and keep a
/// duplicated member's last value), with its tree if it is JSON (else why
/// not, serde_json's words), and the tree's share of memory to hold while
/// the SDK reads it again.
pub(crate) async fn read_whole(
    state: &AppState,
    caller: &Caller,
    request: Request,
) -> Result<
    (
        Request,
        Result<serde_json::Value, String>,
        litebridge::json::Held,
    ),
    Response,
> {
    if let Some(refused) = declared_too_large(request.headers()) {
        return Err(refused);
    }
    let (parts, body) = request.into_parts();
    let limited = axum::body::to_bytes(body, MAX_BODY);
    let bytes = match tokio::time::timeout(state.read_timeout, limited).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let e = rpc::RpcError::InvalidRequest(format!(
                "the body could not be read whole or is over {MAX_BODY} bytes"
            ));
            return Err(rpc_error(StatusCode::PAYLOAD_TOO_LARGE, &e));
        }
        Err(_) => {
            let e = rpc::RpcError::InvalidRequest(format!(
                "the body did not arrive within {} ms (server.read_timeout_ms)",
                state.read_timeout.as_millis()
            ));
            return Err(rpc_error(StatusCode::REQUEST_TIMEOUT, &e));
        }
    };
    let (parsed, held) =
        match litebridge::json::parse_for_sdk(&bytes, caller.key().map_or("", |k| k.name())) {
            Ok((tree, held)) => (Ok(tree), held),
            Err(unreadable) if unreadable.is_over_memory() => {
                let e = rpc::RpcError::App(unreadable.error());
                return Err(rpc_error(StatusCode::OK, &e));
            }
            Err(unreadable) => match unreadable.refusal() {
                Some(why) => {
                    // Answered with the request's id where it can be read,
                    // as on `/rpc` (review 246).
                    let e = rpc::RpcError::InvalidRequest(why);
                    let id =
                        litebridge::json::top_level_id(&bytes).unwrap_or(serde_json::Value::Null);
                    return Err(rpc_error_of(StatusCode::BAD_REQUEST, id, &e));
                }
                None => {
                    let why = match unreadable {
                        litebridge::json::Unreadable::Syntax(why) => why,
                        _ => "not JSON".to_owned(),
                    };
                    (Err(why), litebridge::json::Held::default())
                }
            },
        };
    Ok((
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        parsed,
        held,
    ))
}

async fn ready(
    State(state): State<AppState>,
    stalled: Option<axum::Extension<crate::transport::standby::Stalled>>,
) -> Response {
    let service = &state.app.service;
    let db = service.db.health();
    let mut problems = db.problems;
    // `/ready` needs no key: a problem names the database's file, not the
    // directory it is in (review 158: a removed file showed its whole
    // path to anyone). `pool.health` and the log say it whole.
    if let Some(dir) = service
        .db
        .sqlite()
        .and_then(|d| d.path().parent().map(|p| format!("{}/", p.display())))
        .filter(|dir| dir.len() > 1)
    {
        for problem in &mut problems {
            if problem.contains(&dir) {
                *problem = problem.replace(&dir, "");
            }
        }
    }
    if state
        .app
        .draining
        .load(std::sync::atomic::Ordering::Acquire)
    {
        problems.push("it is shutting down".to_owned());
    }
    if let Some(axum::Extension(crate::transport::standby::Stalled(age))) = stalled {
        problems.push(format!(
            "every request thread has been busy for {} ms (long steps of SQLite); \
             requests wait until one frees",
            age.as_millis()
        ));
    }
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

/// The dashboard's files (see [`crate::dashboard`]): no data in them, so no key.
async fn dashboard_file(uri: axum::http::Uri) -> Response {
    crate::dashboard::file(uri.path()).unwrap_or_else(|| StatusCode::NOT_FOUND.into_response())
}

/// `GET /api/dashboard?since=SEQ`: the dashboard's data, for keys with the
/// metrics scope (quotas per key and backups for admin keys only). Polling for
/// the last few points is not counted against quotas (a page asks every
/// second), more is; held to the key's limit of requests at once; the
/// figures are built once a second by the sampler, so a request costs a
/// copy.
async fn dashboard_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    extensions: axum::http::Extensions,
) -> Response {
    let caller = match authenticate(&state, &headers, &extensions) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    if let Err(e) = caller.require(Scope::Metrics, "GET /api/dashboard") {
        return counted_refusal(&caller, e);
    }
    let _in_flight = match caller.enter() {
        Ok(g) => g,
        Err(e) => return refused(e),
    };
    let mut since = 0;
    for (name, value) in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        if name == "since" {
            match value.parse::<u64>() {
                Ok(n) => since = n,
                Err(_) => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        &rpc::RpcError::App(litebridge::Error::InvalidArgument {
                            param: "since".into(),
                            message: "the `seq` of a point: a whole number (0 for all)".into(),
                        }),
                    );
                }
            }
        }
    }
    // Polling for the points since the last answer is not counted; an
    // answer of the whole history (a page opening) costs a hundred times
    // as much, and is (found by review 120: a read key asked for it 67
    // times a second, uncounted, and took most of a core).
    let last = state.app.history.last_seq();
    if (since > last || last - since > crate::dashboard::POLL_POINTS)
        && let Err(e) = caller.charge()
    {
        return refused(e);
    }
    let mut r = json_response(
        StatusCode::OK,
        &crate::dashboard::data(&state.app, since, caller.scopes()),
    );
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        axum::http::HeaderValue::from_static("same-origin"),
    );
    r
}

/// The answer to a request outside `caller`'s scopes, counted against its
/// quota as every call outside them is (SECURITY.md); the quota's refusal
/// once spent.
fn counted_refusal(caller: &Caller, e: litebridge::Error) -> Response {
    match caller.charge() {
        Ok(()) => refused(e),
        Err(q) => refused(q),
    }
}

async fn metrics_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Response {
    let caller = match authenticate(&state, &headers, &extensions) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    // Counted as any read request, refused or not (review 158: a read key
    // scraped without end, uncounted). Not held to the key's limit of
    // requests at once: a scrape must answer while stuck requests hold
    // them, which is when it matters (review 160); it only copies
    // counters. Give Prometheus a key of its own.
    if let Err(e) = caller.require(Scope::Metrics, "/metrics") {
        return counted_refusal(&caller, e);
    }
    if let Err(e) = caller.charge() {
        return refused(e);
    }
    let service = &state.app.service;
    let backups = match (&service.backups, service.db.sqlite()) {
        (Some(policy), Some(db)) => metrics::Backups::for_scrape(policy, db.path()).await,
        _ => None,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(service, backups.as_ref()),
    )
        .into_response()
}
