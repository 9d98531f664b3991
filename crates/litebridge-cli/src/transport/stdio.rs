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

use std::sync::Arc;

use litebridge::auth::Caller;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};

use crate::rpc;

/// Requests handled at once; reading pauses beyond this.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// The longest line accepted; a longer one is answered with -32600.
pub(crate) const MAX_LINE: usize = 64 * 1024 * 1024;

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
    let writer = tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
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
        tokio::spawn(async move {
            let request_id = crate::logging::new_request_id();
            if let Some(reply) = rpc::handle(&app.0, &app.1, &request, &request_id).await {
                let _ = tx.send(serde_json::to_vec(&reply).unwrap_or_default());
            }
            drop(permit);
        });
    }
    // Wait for every request in flight, then close the writer.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    let (app, _) = &*app;
    if let Err(e) = app.auth.flush().await {
        tracing::warn!("writing the quota counters at shutdown failed: {e}");
    }
    app.service.shutdown().await;
    written
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
