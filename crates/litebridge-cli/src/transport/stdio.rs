//! JSON-RPC over stdin/stdout: one JSON value per line in, one reply per line
//! out, nothing else ever written to stdout (logs go to stderr).
//!
//! Requests are handled concurrently (a slow query does not hold up the next
//! line), up to [`MAX_IN_FLIGHT`]; replies are written as they complete, so
//! they may come back in another order than the requests (ids tell them
//! apart). When stdin ends, the requests in flight are answered, then the
//! service shuts down.
//!
//! The session runs as the local user: every request has the scopes of
//! `security.local_scopes` and no quotas.
//!
//! `$/cancelRequest` (a notification, `{"id": ID}`, as in the Language
//! Server Protocol) withdraws a request still running: it is answered at
//! once with -32800 `cancelled`, and its work is dropped (a worker call is
//! cancelled in its worker, a read stops). Only reads and `bridge.call` can
//! be withdrawn: a write already queued may still commit, so it is answered
//! when it has (its `timeout_ms` is what bounds it); a batch of requests is
//! one unit and runs to its end.
//!
//! After `events.subscribe`, the pool's events are written between replies
//! as `event` notifications. They wait for stdout in a queue of their own of
//! [`EVENT_QUEUE`] lines: a reader slower than that misses events (and is
//! sent a `missed` event with their count) rather than slowing the bridge
//! or holding up replies.

use crate::lock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use litebridge::auth::Caller;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};

use crate::rpc;

/// Requests handled at once; reading pauses beyond this.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// The longest line accepted; a longer one is answered with -32600.
pub(crate) const MAX_LINE: usize = 64 * 1024 * 1024;
/// Event notifications waiting for stdout at most.
pub(crate) const EVENT_QUEUE: usize = 256;
/// The most bytes of replies joined into one write.
const JOIN_BYTES: usize = 64 * 1024;

/// Serves `input` until it ends, writing replies to `output`.
pub(crate) async fn serve<R, W>(
    app: rpc::App,
    caller: Caller,
    input: R,
    mut output: W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (event_tx, mut event_rx) = mpsc::channel::<Vec<u8>>(EVENT_QUEUE);
    let writer = tokio::spawn(async move {
        // The replies ready at once are joined into one write, up to
        // JOIN_BYTES (a longer one is written alone, not copied): one
        // system call for many replies when many requests are in flight.
        let mut joined = Vec::new();
        let mut next = None;
        loop {
            let mut line = match next.take() {
                Some(line) => line,
                None => tokio::select! {
                    biased;
                    Some(line) = rx.recv() => line,
                    Some(line) = event_rx.recv() => line,
                    else => break,
                },
            };
            line.push(b'\n');
            match rx.try_recv() {
                Ok(more) if line.len() + more.len() < JOIN_BYTES => {
                    // (`more` gets its newline here: `<` leaves room for it.)
                    joined.clear();
                    joined.extend_from_slice(&line);
                    joined.extend_from_slice(&more);
                    joined.push(b'\n');
                    while let Ok(more) = rx.try_recv() {
                        if joined.len() + more.len() + 1 > JOIN_BYTES {
                            next = Some(more);
                            break;
                        }
                        joined.extend_from_slice(&more);
                        joined.push(b'\n');
                    }
                    output.write_all(&joined).await?;
                }
                more => {
                    // Alone, or too long to join: written as it is.
                    next = more.ok();
                    output.write_all(&line).await?;
                }
            }
            output.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let session = rpc::Session {
        events: Arc::new(AtomicBool::new(false)),
        token: Arc::new(std::sync::Mutex::new(rpc::SessionTokens::default())),
    };
    let forwarder = tokio::spawn(forward_events(
        app.events.subscribe(None),
        session.events.clone(),
        event_tx,
    ));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let app = Arc::new((app, caller));
    // Requests that may be withdrawn, by their id's JSON text.
    let withdrawable: Arc<std::sync::Mutex<HashMap<String, Arc<CancellationToken>>>> =
        Arc::default();
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = read_line(&mut reader, &mut line).await?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            let e = rpc::RpcError::InvalidRequest(format!("a line longer than {MAX_LINE} bytes"));
            let reply = rpc::error_reply(serde_json::Value::Null, &e);
            let _ = tx.send(serde_json::to_vec(&reply).unwrap_or_default());
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let withdraw = match probe(&line) {
            Probe::Cancel(id) => {
                if let Some(token) = lock(&withdrawable).get(&id) {
                    token.cancel();
                }
                continue;
            }
            Probe::Withdrawable(id) => {
                let token = Arc::new(CancellationToken::new());
                lock(&withdrawable).insert(id.clone(), token.clone());
                Some((id, token))
            }
            Probe::Other => None,
        };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (app, tx, request) = (app.clone(), tx.clone(), std::mem::take(&mut line));
        let (session, withdrawable) = (session.clone(), withdrawable.clone());
        tokio::spawn(rpc::SESSION.scope(session, async move {
            let request_id = crate::logging::new_request_id();
            let work = rpc::handle(&app.0, &app.1, &request, &request_id);
            let reply = match &withdraw {
                None => work.await,
                Some((id, token)) => {
                    let reply = tokio::select! {
                        reply = work => reply,
                        () = token.cancelled() => {
                            let id = serde_json::from_str(id).unwrap_or(serde_json::Value::Null);
                            Some(rpc::Reply::One(rpc::error_reply(id, &rpc::RpcError::Cancelled)))
                        }
                    };
                    let mut map = lock(&withdrawable);
                    // Unless a later request took the same id.
                    if map.get(id).is_some_and(|t| Arc::ptr_eq(t, token)) {
                        map.remove(id);
                    }
                    reply
                }
            };
            if let Some(reply) = reply {
                let _ = tx.send(serde_json::to_vec(&reply).unwrap_or_default());
            }
            drop(permit);
        }));
    }
    // Wait for every request in flight, then close the writer.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    forwarder.abort();
    let written = writer.await.unwrap_or(Ok(()));
    let (app, _) = &*app;
    if let Err(e) = app.auth.flush().await {
        tracing::warn!("writing the quota counters at shutdown failed: {e}");
    }
    app.service.shutdown().await;
    written
}

/// What a line is, as far as withdrawing goes.
enum Probe {
    /// `$/cancelRequest` for the request of this id (its JSON text).
    Cancel(String),
    /// A request of this id that `$/cancelRequest` may withdraw.
    Withdrawable(String),
    Other,
}

/// Reads a line's `id` and `method` (skipping its params): a cancellation,
/// a withdrawable request (a read, or `bridge.call`), or anything else.
fn probe(line: &[u8]) -> Probe {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<serde_json::Value>,
        method: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Cancel {
        params: CancelParams,
    }
    #[derive(serde::Deserialize)]
    struct CancelParams {
        id: serde_json::Value,
    }
    let Ok(head) = serde_json::from_slice::<Head>(line) else {
        return Probe::Other;
    };
    let Some(method) = head.method else {
        return Probe::Other;
    };
    if method == "$/cancelRequest" {
        return match serde_json::from_slice::<Cancel>(line) {
            Ok(c) => Probe::Cancel(c.params.id.to_string()),
            Err(_) => Probe::Other,
        };
    }
    let withdrawable = method == "bridge.call" || rpc::find(&method).is_some_and(|m| m.read_only);
    match head.id {
        Some(id) if withdrawable && (id.is_string() || id.is_number()) => {
            Probe::Withdrawable(id.to_string())
        }
        _ => Probe::Other,
    }
}

/// Writes the events of `subscription` as notifications while `on`, into
/// `out` without ever waiting for it: what does not fit is counted and
/// reported by a `missed` event once there is room again.
async fn forward_events(
    mut subscription: crate::events::Subscription,
    on: Arc<AtomicBool>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let mut missed = 0u64;
    while let Some(item) = subscription.next().await {
        if !on.load(Ordering::Acquire) {
            missed = 0;
            continue;
        }
        if let crate::events::Item::Missed(n) = item {
            missed += n;
            continue;
        }
        if missed > 0 {
            match out.try_send(notification(&crate::events::Item::Missed(missed))) {
                Ok(()) => missed = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    missed += 1;
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        match out.try_send(notification(&item)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => missed += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

fn notification(item: &crate::events::Item) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","method":"event","params":{}}}"#,
        item.json()
    )
    .into_bytes()
}

/// Reads one line; past [`MAX_LINE`] bytes the rest of it is skipped (the
/// caller answers it as too large) so memory stays bounded.
pub(crate) async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() <= MAX_LINE {
            buf.extend_from_slice(&available[..take.min(available.len())]);
        }
        total += take;
        r.consume(take);
        if done {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            return Ok(total);
        }
    }
}
