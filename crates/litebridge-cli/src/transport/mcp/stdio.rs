//! MCP over stdio, with each line checked before the SDK reads it.
//!
//! The MCP SDK parses messages with serde_json, which keeps the last of two
//! members of the same name silently. `/rpc`, stdio JSON-RPC and `/mcp`
//! refuse such a message (a filter in front may have read the other one);
//! so does `litebridge mcp`: [`checked`] stands between the process's stdin
//! and stdout and the SDK. A line naming a member twice, or longer than the
//! stdio limit, is answered here with -32600 and never reaches the SDK; the
//! SDK's own lines and these answers are written out whole, one at a time.

use serde_json::Value;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader, DuplexStream,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::json::Unreadable;
use crate::rpc::{RpcError, error_reply};
use crate::transport::stdio::{MAX_LINE, read_line};

/// What the SDK reads from and writes to in place of `input` and `output`,
/// and the task that writes to `output` (it ends once the SDK's side is
/// closed and every answer is written).
pub(crate) fn checked<R, W>(
    input: R,
    output: W,
) -> (DuplexStream, DuplexStream, JoinHandle<std::io::Result<()>>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut to_sdk, sdk_input) = tokio::io::duplex(1 << 16);
    let (sdk_output, from_sdk) = tokio::io::duplex(1 << 16);
    let (refusals, mut refused) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(1 << 16, input);
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut reader, &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(answer) = refusal(&line) {
                let _ = refusals.send(answer);
                continue;
            }
            line.push(b'\n');
            if to_sdk.write_all(&line).await.is_err() {
                break;
            }
        }
        // The end of stdin is the end of the session for the SDK too.
        let _ = to_sdk.shutdown().await;
    });
    let writing = tokio::spawn(async move {
        let mut output = output;
        let mut sdk = BufReader::new(from_sdk);
        let mut line = Vec::new();
        loop {
            tokio::select! {
                // A partial line stays in `line` if the other branch wins,
                // and the next read goes on from there.
                read = sdk.read_until(b'\n', &mut line) => {
                    if read? == 0 {
                        break;
                    }
                    if line.last() == Some(&b'\n') {
                        output.write_all(&line).await?;
                        output.flush().await?;
                        line.clear();
                    }
                }
                Some(answer) = refused.recv() => {
                    output.write_all(&answer).await?;
                    output.flush().await?;
                }
            }
        }
        while let Ok(answer) = refused.try_recv() {
            output.write_all(&answer).await?;
        }
        output.flush().await
    });
    (sdk_input, sdk_output, writing)
}

/// The answer to a line the SDK must not read, if it is one.
fn refusal(line: &[u8]) -> Option<Vec<u8>> {
    // The SDK strips a leading byte-order mark before it reads a line, so
    // it is stripped here too, or such a line went by unchecked (review 125).
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    // A blank line is nothing to answer (the SDK skips it too).
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let error = if line.len() > MAX_LINE {
        RpcError::InvalidRequest(format!("a line longer than {MAX_LINE} bytes"))
    } else {
        match crate::json::parse_for_sdk(line, "") {
            // The SDK dropped a line that is not JSON without a word, and
            // its client waited for an answer that never came.
            Err(Unreadable::Syntax(e)) => RpcError::Parse(e),
            Err(unreadable) if unreadable.is_over_memory() => RpcError::App(unreadable.error()),
            Err(unreadable) => RpcError::InvalidRequest(unreadable.refusal().unwrap_or_default()),
            // The SDK answered a batch with an error of no id.
            Ok((Value::Array(_), _)) => RpcError::InvalidRequest(
                "a batch (a JSON array): MCP takes one message per line".into(),
            ),
            Ok(_) => return None,
        }
    };
    // The id, when it is not the member named twice, so the client can
    // match the answer to its request.
    // Read alone, never building the rest (a line refused for its tree's
    // size must not be read whole again here), as `/rpc` reads it: none
    // when it is named twice, not a string or an integer, or the line is
    // not an object.
    let id = crate::json::top_level_id(line).unwrap_or(Value::Null);
    let mut answer = serde_json::to_vec(&error_reply(id, &error)).unwrap_or_default();
    answer.push(b'\n');
    Some(answer)
}
