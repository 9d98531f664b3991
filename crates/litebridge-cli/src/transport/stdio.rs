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
//! After `events.subscribe`, the pool's events are written between replies
//! as `event` notifications. They wait for stdout in a queue of their own of
//! [`EVENT_QUEUE`] lines: a reader slower than that misses events (and is
//! sent a `missed` event with their count) rather than slowing the bridge
//! or holding up replies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        loop {
            let mut line = tokio::select! {
                biased;
                Some(line) = rx.recv() => line,
                Some(line) = event_rx.recv() => line,
                else => break,
            };
            line.push(b'\n');
            output.write_all(&line).await?;
            while let Ok(mut more) = rx.try_recv() {
                more.push(b'\n');
                output.write_all(&more).await?;
            }
            output.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let session = rpc::Session {
        events: Arc::new(AtomicBool::new(false)),
    };
    let forwarder = tokio::spawn(forward_events(
        app.events.subscribe(None),
        session.events.clone(),
        event_tx,
    ));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let app = Arc::new((app, caller));
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
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (app, tx, request) = (app.clone(), tx.clone(), std::mem::take(&mut line));
        let session = session.clone();
        tokio::spawn(rpc::SESSION.scope(session, async move {
            let request_id = crate::logging::new_request_id();
            if let Some(reply) = rpc::handle(&app.0, &app.1, &request, &request_id).await {
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
