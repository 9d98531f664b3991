//! MCP (Model Context Protocol) for LLM agents, with the official SDK (rmcp):
//! `litebridge mcp` over stdio, and `/mcp` (streamable HTTP) on `serve`.
//!
//! The tools are the method table's ([`tools`]); this module only says who
//! the caller is. Over stdio it is the local user with
//! `security.local_scopes`; over HTTP the same bearer-key check as `/rpc`
//! runs as a middleware in front of rmcp, which hands the request's parts
//! (with the [`Caller`] in their extensions) to the handler, so
//! `tools/list` and `tools/call` see the key's scopes and quotas.
//!
//! Every request costs its key one call of its daily quota, as on `/rpc`:
//! the middleware charges the protocol's own requests (`initialize`,
//! `ping`, `tools/list`, `resources/list`, whatever rmcp answers), and a tool
//! call is charged by the method table it runs through. A stdio session's
//! local caller has no quotas.

mod shape;
mod stdio;
mod tools;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use litebridge::auth::Caller;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _};
use tokio_util::sync::CancellationToken;

use crate::rpc::App;

const INSTRUCTIONS: &str = "litebridge: a SQLite database and a pool of worker processes. \
Call `schema` to see the tables, `query` to read (read-only SQL, values as params), \
`execute` to change data (one statement, committed when it returns). \
`memory_*` remembers values by namespace and key (with optional TTL), `state_*` keeps \
workflow runs, `cache_*` caches values. Tools named worker_* call the workers' methods. \
Errors say their kind and whether retrying can help.";

/// The MCP server of one session.
#[derive(Clone)]
pub(crate) struct McpServer {
    app: Arc<App>,
    /// The caller of a stdio session; HTTP requests bring their own.
    local: Option<Caller>,
    /// A stdio session's watch of its tools (`tools_watch`).
    watch: Option<Arc<Watch>>,
}

/// What [`tools_watch`] waits for and may do.
#[derive(Default)]
struct Watch {
    /// The client said `notifications/initialized`: notifications may go.
    initialized: tokio::sync::Notify,
    /// The session's protocol has `notifications/tools/list_changed` as a
    /// plain notification (before 2026-07-28, which sends it on a
    /// subscription's stream, which litebridge does not serve).
    may_notify: std::sync::atomic::AtomicBool,
}

impl McpServer {
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>().cloned())
            .or_else(|| self.local.clone())
            .ok_or_else(|| ErrorData::invalid_request("no credentials", None))
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        // A stdio session is told when its tools change (`tools_watch`).
        let capabilities = if self.local.is_some() {
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build()
        } else {
            ServerCapabilities::builder().enable_tools().build()
        };
        ServerConfig::new(capabilities)
            .with_server_info(
                Implementation::new("litebridge", env!("CARGO_PKG_VERSION"))
                    .with_title("litebridge"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut result = self.negotiate_initialize(&request)?;
        if let Some(watch) = &self.watch {
            let plain = result.protocol_version.to_string().as_str() < "2026-07-28";
            watch
                .may_notify
                .store(plain, std::sync::atomic::Ordering::Relaxed);
            if !plain && let Some(tools) = result.capabilities.tools.as_mut() {
                tools.list_changed = None;
            }
        }
        Ok(result)
    }

    async fn on_initialized(&self, _context: rmcp::service::NotificationContext<RoleServer>) {
        if let Some(watch) = &self.watch {
            watch.initialized.notify_one();
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = self.caller(&context)?;
        Ok(ListToolsResult::with_all_items(tools::list(
            &self.app, &caller,
        )))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.caller(&context)?;
        let request_id = crate::logging::new_request_id();
        let args = request.arguments.unwrap_or_default();
        let call = tools::call(&self.app, &caller, &request.name, args, &request_id);
        // A cancelled call (notifications/cancelled) stops waiting; the
        // database interrupts what it was running when its future drops.
        let result = tokio::select! {
            r = call => r,
            () = context.ct.cancelled() => {
                let mut r = CallToolResult::error(vec![ContentBlock::text("cancelled by the client")]);
                r.is_error = Some(true);
                r
            }
        };
        Ok(result.into())
    }

    fn get_tool(&self, _name: &str) -> Option<Tool> {
        // Arguments are checked by the method table, with messages naming
        // the parameter; rmcp's own schema check is not needed in front.
        None
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
pub(crate) async fn serve_stdio(app: Arc<App>, caller: Caller) -> std::io::Result<()> {
    let watch = Arc::new(Watch::default());
    let server = McpServer {
        app: app.clone(),
        local: Some(caller.clone()),
        watch: Some(watch.clone()),
    };
    let (input, output, writing) = stdio::checked(tokio::io::stdin(), tokio::io::stdout());
    // The checker lets lines of up to MAX_LINE through; the SDK's own
    // limit (16 MiB) dropped longer ones with no answer (review 192).
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(input, output)
        .with_max_line_length(crate::transport::stdio::MAX_LINE + 1);
    let running = server
        .serve(transport)
        .await
        .map_err(|e| std::io::Error::other(format!("MCP initialization failed: {e}")))?;
    let watching = tokio::spawn(tools_watch(app, caller, running.peer().clone(), watch));
    let ended = running.waiting().await;
    watching.abort();
    ended.map_err(|e| std::io::Error::other(format!("the MCP session failed: {e}")))?;
    writing.await.unwrap_or(Ok(()))
}

/// How often a stdio session's tools are compared with what it was told.
const TOOLS_WATCH: std::time::Duration = std::time::Duration::from_secs(1);

/// Tells a stdio session's client when its tools change (a worker method
/// came or went, or its parameters or description changed: workers
/// started again with other code, a NATS host joined or left), with
/// `notifications/tools/list_changed`, so that an agent does not go on
/// calling tools that are gone (an MCP agent's audit). The list is read
/// every [`TOOLS_WATCH`] (the method table's and the workers'
/// announcements, in memory) once the client said it is initialized, and
/// told when a change has lasted two readings: a worker that starts again
/// within a second (its methods gone meanwhile) tells nothing (review 148).
async fn tools_watch(
    app: Arc<App>,
    caller: Caller,
    peer: rmcp::Peer<RoleServer>,
    watch: Arc<Watch>,
) {
    if app.service.workers.is_none() {
        // The method table's tools do not change while litebridge runs.
        return;
    }
    watch.initialized.notified().await;
    if !watch.may_notify.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let tools = || serde_json::to_string(&tools::list(&app, &caller)).unwrap_or_default();
    let mut told = tools();
    let mut seen = told.clone();
    loop {
        tokio::time::sleep(TOOLS_WATCH).await;
        if peer.is_transport_closed() {
            return;
        }
        let now = tools();
        if now == seen && now != told {
            if peer.notify_tool_list_changed().await.is_err() {
                return;
            }
            told = now.clone();
        }
        seen = now;
    }
}

/// Why rmcp could not read the host of a request, if it could not: the
/// first `Host` header must be a host name or address with an optional
/// port; with none, the request target must name one (absolute form).
fn unreadable_host(uri: &axum::http::Uri, headers: &axum::http::HeaderMap) -> Option<String> {
    match headers.get(axum::http::header::HOST) {
        Some(host) => {
            let Ok(text) = host.to_str() else {
                return Some("the Host header is not readable text".into());
            };
            match axum::http::uri::Authority::try_from(text) {
                Ok(_) => None,
                Err(_) => Some(format!(
                    "the Host header {:?} is not a host name or address with an optional port",
                    text.chars().take(100).collect::<String>()
                )),
            }
        }
        None if uri.authority().is_some() => None,
        None => Some(
            "a request to /mcp needs a Host header (the MCP SDK reads the host from it)".into(),
        ),
    }
}

/// The `/mcp` service for `serve`: streamable HTTP, stopped by `stop`.
/// rmcp's own Host check is off: the router's Host and Origin check runs in
/// front of every route (`check_site`), so `/mcp` answers to the Host
/// values `/rpc` does (rmcp's list held `127.0.0.1` of the 127.x
/// addresses, and refused in plain text).
///
/// Stateless: each POST is answered on its own, with a JSON body, and no
/// session is kept between requests (a server that keeps a session per
/// `initialize` holds memory for anyone who asks: sessions were
/// unbounded). So nothing is pushed: `/mcp` clients are not told when the
/// tools change (stdio sessions are, `tools_watch`), and list them again.
pub(crate) fn http_service(
    app: Arc<App>,
    stop: CancellationToken,
) -> StreamableHttpService<McpServer, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = stop;
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = crate::transport::http::MAX_BODY;
    config = config.disable_allowed_hosts();
    StreamableHttpService::new(
        move || {
            Ok(McpServer {
                app: app.clone(),
                local: None,
                watch: None,
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// The `/rpc` authentication in front of `/mcp`: the [`Caller`] goes into
/// the request's extensions, or the request is refused with 401. Each
/// request holds one of the key's concurrent slots and one of the server's
/// `server.max_concurrent_requests` places while it runs, and its
/// body is read first (deadline, limit, no member named twice). Each
/// JSON-RPC request in it other than `tools/call` costs the key one call of
/// its daily quota here (429 once it is spent).
pub(crate) async fn authenticate(
    State(state): State<crate::transport::http::AppState>,
    request: Request,
    next: Next,
) -> Response {
    match crate::transport::http::authenticate(&state, request.headers(), request.extensions()) {
        Ok(caller) => {
            let _slot = match caller.enter() {
                Ok(slot) => slot,
                Err(e) => return crate::transport::http::refused(e),
            };
            // A key whose quota is spent is refused before a large body is
            // read, notifications included, as on `/rpc`.
            if let Some(refusal) = crate::transport::http::spent_unread(&caller, request.headers())
            {
                return refusal;
            }
            // And one of the server's places, as on `/rpc`.
            let Some(_permit) = crate::transport::http::in_flight(&state) else {
                return crate::transport::http::overloaded(&state);
            };
            // The body is read here, under the same deadline and limit as
            // `/rpc`'s, and refused if an object names a member twice.
            let (request, read, _held) =
                match crate::transport::http::read_whole(&state, &caller, request).await {
                    Ok(read) => read,
                    // Counted as any message is (review 143).
                    Err(refused) => {
                        return match caller.charge() {
                            Ok(()) => refused,
                            Err(e) => crate::transport::http::refused(e),
                        };
                    }
                };
            let (parsed, unreadable) = match read {
                Ok(tree) => (Some(tree), None),
                Err(why) => (None, Some(why)),
            };
            let (parts, body) = request.into_parts();
            // In memory already: read_whole put it there.
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            // Every message counts once, whatever becomes of it: the SDK
            // refuses some itself, before any tool runs (review 142 found
            // seven shapes answered uncounted). A tool call's own count is
            // this one. Notifications cost nothing (they have no answer).
            let caller = if is_notification(&parts.method, parsed.as_ref()) {
                caller
            } else {
                match caller.charged_ahead() {
                    Ok(c) => c,
                    // Past its quota, a tool call is answered as a tool's
                    // error (its call counts again, and is refused), which
                    // an agent reads.
                    Err(_)
                        if parts.method == axum::http::Method::POST
                            && is_tool_call(parsed.as_ref()) =>
                    {
                        caller
                    }
                    Err(e) => return crate::transport::http::refused(e),
                }
            };
            // rmcp reads the host itself, and refuses in plain text a
            // request it cannot read one from: said here, as `/rpc` says
            // its refusals.
            if let Some(reason) = unreadable_host(&parts.uri, &parts.headers) {
                let e = crate::rpc::RpcError::InvalidRequest(reason);
                return crate::transport::http::rpc_error(axum::http::StatusCode::BAD_REQUEST, &e);
            }
            if parts.method == axum::http::Method::POST {
                // JSON that does not parse, or a batch, is said so (not
                // taken for another protocol's request, nor left to the
                // SDK, which answers a batch with an error of no id).
                let json_body = parts
                    .headers
                    .get(axum::http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
                let malformed = match (&parsed, json_body) {
                    // serde_json's words, as `/rpc` says them (a depth, a
                    // number out of range, a lone surrogate).
                    (None, true) => Some(crate::rpc::RpcError::Parse(
                        unreadable.clone().unwrap_or_else(|| "not JSON".to_owned()),
                    )),
                    (Some(serde_json::Value::Array(_)), _) => {
                        Some(crate::rpc::RpcError::InvalidRequest(
                            "a batch (a JSON array): /mcp takes one message per POST".into(),
                        ))
                    }
                    _ => None,
                };
                if let Some(e) = malformed {
                    let id = litebridge::json::top_level_id(&bytes).unwrap_or_default();
                    return crate::transport::http::rpc_error_of(
                        axum::http::StatusCode::BAD_REQUEST,
                        id,
                        &e,
                    );
                }
                if let Some(advice) = not_mcp(&parts.headers, parsed.as_ref()) {
                    let e = crate::rpc::RpcError::InvalidRequest(advice);
                    return crate::transport::http::rpc_error(
                        axum::http::StatusCode::BAD_REQUEST,
                        &e,
                    );
                }
                if let Some(e) = parsed.as_ref().and_then(shape::refusal) {
                    let id = litebridge::json::top_level_id(&bytes).unwrap_or_default();
                    return crate::transport::http::rpc_error_of(
                        axum::http::StatusCode::BAD_REQUEST,
                        id,
                        &e,
                    );
                }
            }
            // The SDK reads the body again into a tree of its own: this one
            // goes first (`_held` counts the SDK's while it runs).
            drop(parsed);
            let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
            request.extensions_mut().insert(caller);
            in_json(next.run(request).await).await
        }
        Err(e) => crate::transport::http::refused(e),
    }
}

/// The SDK's own refusals (a header it cannot read, a protocol version it
/// does not know, an `Accept` without JSON) come in plain text: said as
/// every other refusal of `/mcp` and `/rpc` is, in a JSON-RPC error naming
/// what the SDK said.
async fn in_json(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.to_ascii_lowercase().contains("json") && !v.contains("event-stream"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    let status = response.status();
    // `Allow` of a 405 is kept (RFC 9110 asks for it).
    let allow = response.headers().get(axum::http::header::ALLOW).cloned();
    let said = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let said = if said.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        said
    };
    let e =
        crate::rpc::RpcError::InvalidRequest(format!("the MCP SDK refused the request: {said}"));
    let mut response = crate::transport::http::rpc_error(status, &e);
    if let Some(allow) = allow {
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow);
    }
    response
}

/// Whether a message is a `tools/call` that reaches a tool (a request with
/// an id and a tool's name; the SDK refuses others before any tool runs).
fn is_tool_call(parsed: Option<&serde_json::Value>) -> bool {
    parsed.is_some_and(|m| {
        m.get("method").and_then(serde_json::Value::as_str) == Some("tools/call")
            && m.get("id")
                .is_some_and(|id| id.is_string() || id.is_i64() || id.is_u64())
            && m.get("params")
                .and_then(|p| p.get("name"))
                .is_some_and(serde_json::Value::is_string)
    })
}

/// Whether a request to `/mcp` is a POSTed notification (no `id`, a
/// `notifications/...` method): it has no answer, and costs no call.
fn is_notification(method: &axum::http::Method, parsed: Option<&serde_json::Value>) -> bool {
    *method == axum::http::Method::POST
        && parsed.is_some_and(|m| {
            m.get("id").is_none()
                && m.get("method")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|name| name.starts_with("notifications/"))
        })
}

/// Why a POST to `/mcp` is not MCP, with where to go instead; `None` when it
/// looks like an MCP client's (a JSON-RPC 2.0 body, JSON and an event
/// stream accepted). The seed system's habit, `curl /mcp -d
/// '{"method":"pool_health"}'`, got a bare 406 from the SDK; it gets the
/// `/rpc` request that does what it meant.
fn not_mcp(headers: &axum::http::HeaderMap, parsed: Option<&serde_json::Value>) -> Option<String> {
    let header = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase()
    };
    let accept = header(axum::http::header::ACCEPT);
    let json_body = header(axum::http::header::CONTENT_TYPE).starts_with("application/json");
    let jsonrpc = match parsed {
        Some(serde_json::Value::Object(m)) => m.get("jsonrpc").is_some(),
        Some(serde_json::Value::Array(a)) => a.iter().all(|m| m.get("jsonrpc").is_some()),
        _ => false,
    };
    if json_body
        && jsonrpc
        && accept.contains("application/json")
        && accept.contains("text/event-stream")
    {
        return None;
    }
    // A tool name the caller meant, as the method it stands for.
    let meant = parsed
        .and_then(|v| v.get("method"))
        .and_then(serde_json::Value::as_str)
        .and_then(|name| {
            crate::rpc::METHODS
                .iter()
                .find(|m| m.name == name || m.tool.as_ref().is_some_and(|t| t.name == name))
        })
        .map_or("pool.health", |m| m.name);
    // Where this request came in (checked by the router: loopback names on a
    // loopback listener), spelled only with characters a host may have.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("127.0.0.1:7070");
    Some(format!(
        "/mcp speaks the Model Context Protocol (streamable HTTP): use an MCP client, which sends \
         JSON-RPC 2.0 with `Accept: application/json, text/event-stream`. For plain requests use \
         POST /rpc, e.g. curl -s http://{host}/rpc -H 'Content-Type: application/json' \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{meant}\"}}'"
    ))
}

#[cfg(test)]
mod tests {
    use super::unreadable_host;
    use axum::http::{HeaderMap, HeaderValue, Uri, header::HOST};

    fn host(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_bytes(value).unwrap());
        h
    }

    #[test]
    fn a_host_rmcp_cannot_read_is_named() {
        let origin: Uri = "/mcp".parse().unwrap();
        let absolute: Uri = "http://example.com/mcp".parse().unwrap();
        assert_eq!(unreadable_host(&origin, &host(b"example.com:7070")), None);
        assert_eq!(unreadable_host(&origin, &host(b"[::1]")), None);
        assert_eq!(unreadable_host(&absolute, &HeaderMap::new()), None);
        let said = unreadable_host(&origin, &HeaderMap::new()).unwrap();
        assert!(said.contains("needs a Host header"), "{said}");
        for bad in [&b"a b"[..], b"example.com/x", b""] {
            let said = unreadable_host(&origin, &host(bad))
                .unwrap_or_else(|| panic!("{:?} was read", String::from_utf8_lossy(bad)));
            assert!(said.contains("Host header"), "{said}");
        }
        let said = unreadable_host(&origin, &host(b"\xffexample")).unwrap();
        assert!(said.contains("not readable text"), "{said}");
    }
}
