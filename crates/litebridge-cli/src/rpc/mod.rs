//! The method table, shared by every transport, and strict JSON-RPC 2.0
//! processing: single requests, batches (run concurrently, answered in any
//! order), notifications (never answered), ids echoed exactly, the standard
//! errors with `id: null` where the specification says so.
//!
//! Layout: `table` defines every method once (name, scope, description,
//! example, MCP tool, and its parameters' struct); `params` reads
//! parameters into those structs and derives their schemas; `sql`,
//! `bridge`, `stores`, `stats` and `admin` hold the structs and what each
//! method does with them; `error` turns every failure into a JSON-RPC error
//! ([`RpcError`]); this file reads requests and checks each call against the
//! caller's scopes and quotas ([`call`]). Each transport message takes one
//! of the key's concurrent-request slots.
//!
//! # Why the table lives in the binary
//!
//! A crate of its own between the library and the binary (JSON in, JSON
//! out) would let a Rust program mount this API on its own router. It is
//! not one yet, on purpose: a Rust program that embeds litebridge calls the
//! library's typed API (`Service`, `Database`, `WorkerPool`), which is what
//! this table itself calls, and no user has asked to serve the JSON-RPC
//! surface from their own server. The seam is already transport-free
//! ([`handle`] takes bytes and a [`Caller`], [`call`] a method name and
//! JSON), and the table depends only on the library, serde and schemars,
//! so making it a crate is a move of this directory, not a rewrite, once
//! someone needs it. Until then one crate fewer keeps builds and the public
//! API smaller.

use std::sync::Arc;
use std::time::Duration;

use litebridge::auth::{Auth, Caller};
use litebridge::workers::CallOptions;
use litebridge::{
    CheckpointMode, Consistency, Error, ErrorKind, Lane, Params, QueryOptions, Service, Statement,
    Token, WriteOptions,
};
use serde_json::value::RawValue;
use serde_json::{Value as Json, json};

mod admin;
mod bridge;
mod error;
mod events;
mod params;
pub(crate) use params::shortened;
mod sql;
mod stats;
mod stores;
mod table;

pub(crate) use error::RpcError;
pub(crate) use events::{SESSION, Session};
pub(crate) use sql::SessionTokens;
pub(crate) use stats::bridge_status;
pub(crate) use table::{METHODS, Method, find};

/// Rows a query returns when it does not say (`max_rows`).
pub(crate) const DEFAULT_MAX_ROWS: usize = 10_000;
/// The most rows a query may ask for.
pub(crate) const MAX_ROWS: usize = 1_000_000;
/// Requests in one batch at most.
pub(crate) const MAX_BATCH: usize = 1_000;
/// The longest SQL text a request may send (bytes).
pub(crate) const MAX_SQL: usize = 1 << 20;
/// Statements in one `sql.batch` at most.
pub(crate) const MAX_STATEMENTS: usize = 10_000;
/// Parameter rows in one `sql.execute_many` at most.
pub(crate) const MAX_MANY_ROWS: usize = 1_000_000;
/// The longest deadline a request may ask for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The longest worker method name.
pub(crate) const MAX_METHOD_NAME: usize = 256;

/// A whole JSON-RPC error reply.
pub(crate) fn error_reply(id: Json, e: &RpcError) -> Json {
    json!({"jsonrpc": "2.0", "error": e.to_wire(), "id": id})
}

/// What every transport serves: the service and its keys.
pub(crate) struct App {
    pub(crate) service: Service,
    pub(crate) auth: Auth,
    /// The pool's events, for `/events` and stdio subscribers.
    pub(crate) events: Arc<crate::events::Events>,
    /// The dashboard's last minutes (sampled only while `serve` runs it).
    pub(crate) history: Arc<crate::dashboard::history::History>,
    /// `serve` was told to stop: requests in flight finish, new ones are
    /// refused as not run (`transport::http`).
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

impl App {
    /// The application over `service` and `auth`, its events following the
    /// worker pool (when there is one).
    pub(crate) fn new(service: Service, auth: Auth) -> App {
        let events = crate::events::Events::new();
        if let Some(pool) = &service.workers {
            events.follow(pool);
        }
        App {
            service,
            auth,
            events,
            history: crate::dashboard::history::History::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The answer to one message: a request's reply, or a batch's replies each
/// held as its JSON text (see [`run_batch`]). Transports write it as JSON.
#[derive(Debug)]
pub(crate) enum Reply {
    One(Json),
    Batch(Vec<Box<RawValue>>),
}

impl serde::Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::One(reply) => reply.serialize(s),
            Reply::Batch(replies) => replies.serialize(s),
        }
    }
}

impl Reply {
    /// The reply as a tree (parsed again for a batch).
    #[cfg(test)]
    pub(crate) fn into_json(self) -> Json {
        match self {
            Reply::One(reply) => reply,
            Reply::Batch(replies) => Json::Array(
                replies
                    .iter()
                    .map(|r| serde_json::from_str(r.get()).expect("written by serde_json"))
                    .collect(),
            ),
        }
    }
}

/// Answers one line of input (a request or a batch) from `caller`; `None`
/// when nothing is to be answered (notifications only). Everything it logs
/// carries `request_id` (also passed to the workers) and the key's name.
pub(crate) async fn handle(
    app: &App,
    caller: &Caller,
    input: &[u8],
    request_id: &str,
) -> Option<Reply> {
    handle_holding(app, caller, None, input, request_id).await
}

/// [`handle`], on a concurrent-request slot of the caller's key taken
/// before the message was read (`/rpc` takes it before the body arrives, so
/// that a key at its limit holds none of the server's places); `None`: one
/// is taken once the message is parsed.
pub(crate) async fn handle_holding(
    app: &App,
    caller: &Caller,
    slot: Option<litebridge::auth::InFlight>,
    input: &[u8],
    request_id: &str,
) -> Option<Reply> {
    use tracing::Instrument as _;
    let span = tracing::info_span!("request", request_id = %request_id, key = caller.key().map(|k| k.name()));
    handle_in_span(app, caller, slot, input, request_id)
        .instrument(span)
        .await
}

async fn handle_in_span(
    app: &App,
    caller: &Caller,
    slot: Option<litebridge::auth::InFlight>,
    input: &[u8],
    request_id: &str,
) -> Option<Reply> {
    // The tree's memory stays counted until the message is answered.
    let owner = caller.key().map_or("", |k| k.name());
    let (value, _held): (Json, _) = match litebridge::json::parse(input, owner) {
        Ok(parsed) => parsed,
        // JSON nested too deep, or with a number past a double's range, is
        // JSON, refused for its depth or its number: answered with its id,
        // as the refusals below are, where it can be read.
        Err(litebridge::json::Unreadable::Syntax(e)) => {
            let id = if e.contains("recursion limit exceeded") || e.contains("number out of range")
            {
                litebridge::json::top_level_id(input).unwrap_or(Json::Null)
            } else {
                Json::Null
            };
            return Some(Reply::One(error_reply(
                id,
                &charged(caller, RpcError::Parse(e)),
            )));
        }
        Err(unreadable) => {
            let e = if unreadable.is_over_memory() {
                RpcError::App(unreadable.error())
            } else {
                RpcError::InvalidRequest(unreadable.refusal().unwrap_or_default())
            };
            let id = litebridge::json::top_level_id(input).unwrap_or(Json::Null);
            return Some(Reply::One(error_reply(id, &charged(caller, e))));
        }
    };
    // One concurrent-request slot of the caller's key for the whole message.
    let _slot = match slot.map_or_else(|| caller.enter(), Ok) {
        Ok(slot) => slot,
        Err(e) => return refuse_all(value, &RpcError::App(e)).map(Reply::One),
    };
    match value {
        Json::Array(items) if items.is_empty() => Some(Reply::One(error_reply(
            Json::Null,
            &charged(caller, RpcError::InvalidRequest("an empty batch".into())),
        ))),
        Json::Array(items) if items.len() > MAX_BATCH => Some(Reply::One(error_reply(
            Json::Null,
            &charged(
                caller,
                RpcError::InvalidRequest(format!(
                    "a batch of {} requests; at most {MAX_BATCH} are allowed",
                    items.len()
                )),
            ),
        ))),
        Json::Array(items) => {
            let replies = run_batch(app, caller, items, request_id).await;
            (!replies.is_empty()).then_some(Reply::Batch(replies))
        }
        single => handle_one(app, caller, single, request_id)
            .await
            .map(Reply::One),
    }
}

/// The most requests of one batch that run at once, whatever the key allows.
pub(crate) const MAX_BATCH_PARALLEL: usize = 32;

/// Runs a batch's requests, in order of arrival, and answers them in that
/// order (notifications get nothing).
///
/// A batch is bounded as its requests would be if sent one by one:
/// - **At once:** the message's own concurrent slot runs one request; each
///   other request running beside it takes a slot of the caller's key, and
///   waits for one of the batch's own to finish while the key has none free
///   (so a batch never fails for want of a slot, nor runs more than the key
///   may). Never more than [`MAX_BATCH_PARALLEL`], keys or not.
/// - **In memory:** the replies are held until the last is done, each as
///   its JSON text (as a tree, a reply of small values takes many times its
///   text: a blob of none, 12 bytes of text, is a map of some 600), so
///   together they may take what one request's result may
///   (`db.max_result_bytes`, measured as the JSON sent). Once they do, or
///   once a reply did not fit, the requests not started yet are answered
///   `too_large` without running (notifications, which hold no reply,
///   still run). A
///   request that ran keeps its reply when it is small ([`SMALL_REPLY`]: a
///   write's acknowledgement, an error, a new key's secret); a larger one
///   that does not fit is answered `too_large`, saying that the request ran.
async fn run_batch(
    app: &App,
    caller: &Caller,
    items: Vec<Json>,
    request_id: &str,
) -> Vec<Box<RawValue>> {
    use futures_util::StreamExt as _;
    use futures_util::stream::FuturesUnordered;

    let budget = app.service.db.max_result_bytes();
    let mut held = 0usize;
    // Once a reply that ran did not fit, the batch is full for replies of
    // its size: starting more would run them only to drop their replies
    // (review 250: 190 of 200 inserts ran, each answered "send it alone",
    // and sent again they would have been written twice).
    let mut full = false;
    let mut replies: Vec<Option<Box<RawValue>>> = Vec::with_capacity(items.len());
    replies.resize_with(items.len(), || None);
    let mut waiting = items.into_iter().enumerate().peekable();
    let mut running = FuturesUnordered::new();
    loop {
        while let Some((i, request)) = waiting.peek()
            && running.len() < MAX_BATCH_PARALLEL
        {
            // Full: a request not started yet does not run. A notification
            // still does: it holds no reply, and nothing could tell its
            // sender it did not run.
            if (full || held >= budget) && request.get("id").is_some() {
                let e = RpcError::App(litebridge::Error::TooLarge {
                    what: "the room db.max_result_bytes gives this batch's replies, filled or passed by those before (this request did not run: send it again, in a smaller batch),".into(),
                    limit: budget as u64,
                });
                replies[*i] = refusal(request, &e).map(|r| text(&r));
                waiting.next();
                continue;
            }
            // The first runs on the message's slot; the others need one
            // each. So does the first when the key's worker calls its
            // requests abandoned (timed out) hold its places: each one
            // holds a place until its worker is done with it, and a batch
            // of calls timing out one by one would otherwise pile them up.
            let slot = if running.is_empty() && !caller.over_limit() {
                None
            } else {
                match caller.enter() {
                    Ok(slot) => Some(slot),
                    // Nothing of the batch's own to wait for.
                    Err(e) if running.is_empty() => {
                        replies[*i] = refusal(request, &RpcError::App(e)).map(|r| text(&r));
                        waiting.next();
                        continue;
                    }
                    Err(_) => break,
                }
            };
            let Some((i, request)) = waiting.next() else {
                break;
            };
            let id = request.get("id").filter(|id| valid_id(id)).cloned();
            running.push(async move {
                let reply = handle_one(app, caller, request, request_id).await;
                drop(slot);
                (i, id, reply)
            });
        }
        let Some((i, id, reply)) = running.next().await else {
            break;
        };
        replies[i] = reply.map(|reply| {
            let reply = text(&reply);
            let len = reply.get().len();
            if len <= SMALL_REPLY || held.saturating_add(len) <= budget {
                held = held.saturating_add(len);
                return reply;
            }
            full = true;
            let e = RpcError::App(litebridge::Error::TooLarge {
                what: format!(
                    "this request's reply ({len} bytes) with the batch's others, which db.max_result_bytes counts together (the request ran, and what it wrote is written: sent again, a write is done again; send such requests alone, or with an idempotency_key),"
                ),
                limit: budget as u64,
            });
            text(&error_reply(id.unwrap_or(Json::Null), &e))
        });
    }
    replies.into_iter().flatten().collect()
}

/// `reply` as JSON text.
fn text(reply: &Json) -> Box<RawValue> {
    serde_json::value::to_raw_value(reply).expect("a tree of JSON is written without fail")
}

/// A reply a batch keeps whatever its others took, in bytes: 1,000 of them
/// are 4 MiB.
const SMALL_REPLY: usize = 4096;

/// The error `e` for one request of a message, with its id; nothing for a
/// notification.
fn refusal(request: &Json, e: &RpcError) -> Option<Json> {
    match request {
        Json::Object(m) => m
            .get("id")
            .map(|id| error_reply(if valid_id(id) { id.clone() } else { Json::Null }, e)),
        _ => Some(error_reply(Json::Null, e)),
    }
}

/// The same error for every request of a message, each with its own id
/// (notifications get nothing).
fn refuse_all(value: Json, e: &RpcError) -> Option<Json> {
    let reply = |r: &Json| refusal(r, e);
    match &value {
        Json::Array(items) if !items.is_empty() => {
            let replies: Vec<Json> = items.iter().filter_map(reply).collect();
            (!replies.is_empty()).then_some(Json::Array(replies))
        }
        Json::Array(_) => Some(error_reply(Json::Null, e)),
        single => reply(single),
    }
}

fn valid_id(id: &Json) -> bool {
    matches!(id, Json::Null | Json::String(_) | Json::Number(_))
}

async fn handle_one(app: &App, caller: &Caller, request: Json, request_id: &str) -> Option<Json> {
    // A request refused for its shape costs a call as any other (a key
    // could otherwise send them without end).
    let refused = |echo, e| error_reply(echo, &charged(caller, e));
    let Json::Object(mut req) = request else {
        return Some(refused(
            Json::Null,
            RpcError::InvalidRequest("a request must be an object".into()),
        ));
    };
    let id = req.remove("id");
    let id_ok = id.as_ref().is_none_or(valid_id);
    let echo = if id_ok {
        id.clone().unwrap_or(Json::Null)
    } else {
        Json::Null
    };
    if !id_ok {
        return Some(refused(
            echo,
            RpcError::InvalidRequest("`id` must be a string, a number or null".into()),
        ));
    }
    if req.get("jsonrpc") != Some(&json!("2.0")) {
        return Some(refused(
            echo,
            RpcError::InvalidRequest("`jsonrpc` must be \"2.0\"".into()),
        ));
    }
    let Some(Json::String(method)) = req.remove("method") else {
        return Some(refused(
            echo,
            RpcError::InvalidRequest("`method` must be a string".into()),
        ));
    };
    let params = req.remove("params");
    if !matches!(params, None | Some(Json::Array(_) | Json::Object(_))) {
        return Some(refused(
            echo,
            RpcError::InvalidRequest("`params` must be an array or an object".into()),
        ));
    }
    let outcome = call(app, caller, &method, params, request_id).await;
    // A notification (no `id` member) is never answered, not even with an error.
    id.as_ref()?;
    Some(match outcome {
        // Built by hand: `json!` would copy the result, a whole tree of rows.
        Ok(result) => {
            let mut reply = serde_json::Map::new();
            reply.insert("jsonrpc".into(), Json::from("2.0"));
            reply.insert("result".into(), result);
            reply.insert("id".into(), echo);
            Json::Object(reply)
        }
        Err(e) => error_reply(echo, &e),
    })
}

/// `e`, once the caller's quota has counted the request that caused it; or
/// the quota's refusal, when it is spent.
pub(crate) fn charged(caller: &Caller, e: RpcError) -> RpcError {
    match caller.charge() {
        Ok(()) => e,
        Err(q) => RpcError::App(q),
    }
}

/// Runs one call of the method table for `caller`: the key's quotas (every
/// call counts, one naming no method or a method outside the key's scopes
/// too), the scope it needs, the method itself, the metrics and the log
/// line. Every transport (JSON-RPC over HTTP and stdio, MCP tools) goes
/// through here.
pub(crate) async fn call(
    app: &App,
    caller: &Caller,
    method: &str,
    params: Option<Json>,
    request_id: &str,
) -> Result<Json, RpcError> {
    let started = std::time::Instant::now();
    let known = table::find(method);
    let outcome = match (caller.charge(), known) {
        (Err(e), _) => Err(RpcError::App(e)),
        (Ok(()), None) => Err(table::not_found(method)),
        (Ok(()), Some(m)) => match caller.require(m.scope, m.name) {
            Ok(()) => dispatch(app, caller, m, params, request_id).await,
            Err(e) => Err(RpcError::App(e)),
        },
    };
    let took = started.elapsed();
    let elapsed_us = took.as_micros() as u64;
    crate::metrics::record_request(
        known.map_or("other", |m| m.name),
        outcome.as_ref().map_or_else(RpcError::kind, |_| "ok"),
        took,
    );
    // The table's name, or at most 64 characters of a name it does not
    // have: a name of any length was written whole to the log, once a
    // request past its quota, for nothing (review 158).
    let method: std::borrow::Cow<'_, str> = match known {
        Some(m) => m.name.into(),
        None => crate::printable::printable_text(&params::shortened(method, 64))
            .into_owned()
            .into(),
    };
    match &outcome {
        Ok(_) => tracing::debug!(method = %method, elapsed_us, "ok"),
        // What a worker raised or printed often quotes the call's parameters,
        // which are never logged at the default level: only the kind is.
        Err(RpcError::App(e @ (Error::WorkerError { .. } | Error::WorkerCrashed { .. }))) => {
            tracing::warn!(method = %method, elapsed_us, kind = e.kind().as_str(), "the worker call failed");
            tracing::debug!(method = %method, "{e}");
        }
        // A key past its quota is refused request after request, each
        // counted in the metrics' outcomes: not a warning each.
        Err(RpcError::App(e))
            if !matches!(
                e.kind(),
                ErrorKind::Sql | ErrorKind::InvalidArgument | ErrorKind::QuotaExceeded
            ) =>
        {
            tracing::warn!(method = %method, elapsed_us, kind = e.kind().as_str(), "{e}");
        }
        Err(e) => tracing::debug!(method = %method, elapsed_us, "refused: {e:?}"),
    }
    outcome
}

/// What a method runs with: who calls, on what, under which request id.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) app: &'a App,
    pub(crate) caller: &'a Caller,
    pub(crate) request_id: &'a str,
}

/// A method's answer, to come.
pub(crate) type Answer<'a> = futures_util::future::BoxFuture<'a, Result<Json, RpcError>>;

fn to_json<T: serde::Serialize>(v: &T) -> Result<Json, RpcError> {
    serde_json::to_value(v).map_err(|e| {
        RpcError::App(Error::Internal {
            message: e.to_string(),
        })
    })
}

fn workers(service: &Service) -> Result<&litebridge::workers::Bridge, RpcError> {
    service.workers.as_ref().ok_or_else(|| {
        RpcError::App(Error::Unavailable {
            what: "bridge",
            reason: "no workers are configured (start litebridge with --workers \"CMD\")".into(),
        })
    })
}

async fn dispatch(
    app: &App,
    caller: &Caller,
    method: &'static Method,
    params: Option<Json>,
    request_id: &str,
) -> Result<Json, RpcError> {
    let cx = Ctx {
        app,
        caller,
        request_id,
    };
    (method.handler.run)(cx, method.name, params).await
}

/// Keys given to `cache.*` live apart from the bridge's own entries.
fn user_key(key: &str) -> String {
    format!("user:{key}")
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A percentage as the seed system's `error_rate` writes it: `"0%"`,
/// `"12.5%"`, `"33.33%"` (two decimals at most, no trailing zeros).
fn percent_text(p: f64) -> String {
    let text = format!("{p:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn mean(s: &litebridge::DbStats) -> Duration {
    let n = s.read_latency.count + s.write_latency.count;
    if n == 0 {
        return Duration::ZERO;
    }
    let total = s.read_latency.mean.as_secs_f64() * s.read_latency.count as f64
        + s.write_latency.mean.as_secs_f64() * s.write_latency.count as f64;
    Duration::from_secs_f64(total / n as f64)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    crate::output::utc_stamp(t)
}

pub(crate) fn cache_figures(service: &Service) -> Json {
    let c = service.cache.stats();
    json!({
        "hits": c.l1_hits + c.l2_hits, "l1_hits": c.l1_hits, "l2_hits": c.l2_hits,
        "misses": c.misses, "hit_rate": c.hit_rate, "evictions": c.evictions,
        "l1_size": c.l1_entries, "l1_bytes": c.l1_bytes, "l2_size": c.l2_entries, "l2_errors": c.l2_errors,
        "listening": c.listening,
        "l2": match &c.l2_unavailable {
            None if c.l2_entries.is_some() => "ok".to_owned(),
            None => "none".to_owned(),
            Some(why) => format!("unavailable, caching in memory only: {why}"),
        },
    })
}

/// On PostgreSQL, the nodes as last probed: `{primary, replicas, replica_reads,
/// primary_fallbacks}`; `None` on SQLite.
pub(crate) fn cluster_figures(service: &Service) -> Option<Json> {
    let pg = service.db.postgres()?;
    let node = |n: &litebridge::pg::NodeStatus| {
        json!({
            "address": n.address, "role": n.role, "reachable": n.reachable,
            "in_recovery": n.in_recovery,
            "position": n.position.map(|p| p.to_string()),
            "lag_bytes": n.lag_bytes, "error": n.error,
            "checked": n.checked.map(rfc3339),
        })
    };
    let c = pg.cluster();
    let (replica_reads, primary_fallbacks) = pg.replica_counts();
    Some(json!({
        "primary": node(&c.primary),
        "replicas": c.replicas.iter().map(node).collect::<Vec<_>>(),
        "replica_reads": replica_reads,
        "primary_fallbacks": primary_fallbacks,
        "primary_fallbacks_by_reason": pg
            .primary_fallbacks()
            .iter()
            .map(|(why, n)| (why.as_str().to_owned(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

/// `pool.health`, with the field names of the seed system's statistics.
pub(crate) fn health_of(service: &Service) -> Json {
    let s = service.db.stats();
    let h = service.db.health();
    let workers_ok = service.workers.as_ref().is_none_or(|w| w.status().healthy);
    let mut answer = json!({
        "healthy": h.healthy && workers_ok,
        "backend": service.db.kind(),
        "problems": h.problems,
        "pool_status": {
            "total_connections": s.readers + s.heavy_readers + 1,
            "active_connections": s.active_connections,
            "available_readers": s.available_readers,
            // The seed's name for the heavy lane's free connections (not
            // the worker processes: `bridge.health` has those).
            "available_workers": s.available_heavy,
            "available_heavy": s.available_heavy,
            "queue_lengths": {
                "read_queue": s.read_queue,
                "write_queue": s.write_queue,
                "worker_queue": s.heavy_queue,
            },
        },
        "last_health_check": s.last_health_check.map(rfc3339),
        "timestamp": rfc3339(std::time::SystemTime::now()),
    });
    if let Some(c) = cluster_figures(service) {
        answer["cluster"] = c;
    }
    answer
}

/// `pool.stats`, with the seed system's field names plus percentiles.
pub(crate) fn stats_of(service: &Service) -> Json {
    let s = service.db.stats();
    let ops = s.total_reads + s.total_writes + s.total_heavy;
    let errors = s.read_errors + s.write_errors + s.heavy_errors;
    let mut answer = json!({
        "backend": service.db.kind(),
        "pool_metrics": {
            "total_reads": s.total_reads,
            "total_writes": s.total_writes,
            "total_worker_tasks": s.total_heavy,
            "failed_connections": s.failed_connections,
            "average_read_time": ms(s.read_latency.mean),
            "average_write_time": ms(s.write_latency.mean),
            "read_p50_ms": ms(s.read_latency.p50),
            "read_p95_ms": ms(s.read_latency.p95),
            "read_p99_ms": ms(s.read_latency.p99),
            "write_p50_ms": ms(s.write_latency.p50),
            "write_p95_ms": ms(s.write_latency.p95),
            "write_p99_ms": ms(s.write_latency.p99),
            "batches": {
                "count": s.batches,
                "avg_size": s.avg_batch_size,
                "max_size": s.max_batch_size,
            },
            "wal_bytes": s.wal_bytes,
            "active_connections": s.active_connections,
            "available_readers": s.available_readers,
            // The seed's name for the heavy lane's free connections (not
            // the worker processes: `bridge.health` has those).
            "available_workers": s.available_heavy,
            "available_heavy": s.available_heavy,
            "timeouts": s.timeouts,
            "overloaded": s.overloaded,
            "writer_restarts": s.writer_restarts,
            "checkpoints": s.checkpoints,
        },
        "persistence_metrics": {
            "total_operations": ops,
            "total_errors": errors,
            "average_response_time": ms(mean(&s)),
            "error_rate": percent_text(percent(errors, ops)),
        },
        "health_status": {
            "healthy": service.db.health().healthy,
            "last_check": s.last_health_check.map(rfc3339),
        },
    });
    if let Some(c) = cluster_figures(service) {
        answer["cluster"] = c;
    }
    answer
}

#[cfg(test)]
mod properties;
