//! MCP over stdio, with each line checked before the SDK reads it.
//!
//! The MCP SDK parses messages with serde_json, which keeps the last of two
//! members of the same name silently. `/rpc`, stdio JSON-RPC and `/mcp`
//! refuse such a message (a filter in front may have read the other one);
//! so does `litebridge mcp`: [`checked`] stands between the process's stdin
//! and stdout and the SDK. A line naming a member twice, longer than the
//! stdio limit, or not of MCP's shape ([`super::shape`]) is answered here
//! and never reaches the SDK; the SDK's own lines and these answers are
//! written out whole, one at a time.
//!
//! The SDK runs every request it reads at once, with no limit. So, as
//! `litebridge stdio` does, at most [`MAX_IN_FLIGHT`] requests are with the
//! SDK unanswered, and no line is read past that until one is answered; and
//! each keeps its tree's share of the memory budget until its answer is
//! written (review 192: a read-only agent held 1.1 GB in 80 slow queries of
//! 12 MB each, none refused). The SDK answers every request it reads but a
//! cancelled one (`notifications/cancelled`), which gives its place back
//! here; and each line is read here as the SDK reads it, so that a request
//! it would answer with no id (of a shape it cannot read) is answered here
//! with its id. An id of a request still in flight is refused (the SDK
//! keeps one request an id).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader, DuplexStream,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::rpc::{RpcError, error_reply};
use crate::transport::stdio::{MAX_IN_FLIGHT, MAX_LINE, read_line};
use litebridge::json::{Held, Unreadable};

/// The requests with the SDK, by id (as JSON text), not answered yet: each
/// holds a place of [`MAX_IN_FLIGHT`] and its tree's memory.
#[derive(Default)]
struct Pending(parking_lot::Mutex<HashMap<String, Vec<(OwnedSemaphorePermit, Held)>>>);

impl Pending {
    fn sent(&self, id: String, place: OwnedSemaphorePermit, held: Held) {
        self.0.lock().entry(id).or_default().push((place, held));
    }

    fn has(&self, id: &str) -> bool {
        self.0.lock().contains_key(id)
    }

    /// The SDK wrote a line with this id, or the client cancelled it (the
    /// SDK then drops its answer, as MCP wants): one request of it is done.
    fn answered(&self, id: &str) {
        let mut pending = self.0.lock();
        if let Some(held) = pending.get_mut(id) {
            held.pop();
            if held.is_empty() {
                pending.remove(id);
            }
        }
    }
}

/// Closes the places when dropped (the writer ended, however).
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What a line read from stdin is.
enum Checked {
    /// Answered here; the SDK never sees it.
    Refused(Vec<u8>),
    /// A request (it has a method and an id): the id as JSON text, and the
    /// memory of its tree.
    Request(String, Held),
    /// `notifications/cancelled` of the request whose id (as JSON text) it
    /// names: the SDK answers it no more (review 193: each cancelled
    /// request kept its place, and 256 froze the session).
    Cancel(String),
    /// Anything else the SDK reads: a notification, an answer, a blank line.
    Other,
}

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
    let pending = Arc::new(Pending::default());
    let places = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Once nothing is written out, no place comes back: the reader waiting
    // for one ends instead (review 194).
    let closing = places.clone();
    let sending = pending.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(1 << 16, input);
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut reader, &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match check(&line) {
                Checked::Refused(answer) => {
                    let _ = refusals.send(answer);
                    continue;
                }
                Checked::Request(id, _) if sending.has(&id) => {
                    // rmcp keeps one request an id, and answers only one.
                    let e = RpcError::InvalidRequest(format!(
                        "the id {id} is a request's still in flight: give each request an id of its own"
                    ));
                    let _ =
                        refusals.send(answer(serde_json::from_str(&id).unwrap_or_default(), &e));
                    continue;
                }
                Checked::Request(id, held) => {
                    // Waiting for a place, the end of stdin still ends the
                    // session (the wait would otherwise outlive the client).
                    let place = tokio::select! {
                        place = places.clone().acquire_owned() => place,
                        ended = reader.fill_buf() => match ended {
                            Ok([]) | Err(_) => break,
                            Ok(_) => places.clone().acquire_owned().await,
                        },
                    };
                    let Ok(place) = place else {
                        break;
                    };
                    sending.sent(id, place, held);
                }
                Checked::Cancel(id) => sending.answered(&id),
                Checked::Other => {}
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
        let _close = CloseOnDrop(closing);
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
                        // The server sends no requests: a line of the
                        // SDK's with an id answers one of the client's.
                        if let Some(id) = litebridge::json::top_level_id(&line).as_ref().and_then(key_of) {
                            pending.answered(&id);
                        }
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

/// What `line` is, answered here when the SDK must not read it.
fn check(line: &[u8]) -> Checked {
    // The SDK strips a leading byte-order mark before it reads a line, so
    // it is stripped here too, or such a line went by unchecked (review 125).
    let whole = line.len();
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    // A blank line is nothing to answer (the SDK skips it too).
    if line.iter().all(u8::is_ascii_whitespace) {
        return Checked::Other;
    }
    // Its mark counted: the SDK reads the line whole (review 193).
    let error = if whole > MAX_LINE {
        RpcError::InvalidRequest(format!("a line longer than {MAX_LINE} bytes"))
    } else {
        match litebridge::json::parse_for_sdk(line, "") {
            // The SDK dropped a line that is not JSON without a word, and
            // its client waited for an answer that never came.
            Err(Unreadable::Syntax(e)) => RpcError::Parse(e),
            Err(unreadable) if unreadable.is_over_memory() => RpcError::App(unreadable.error()),
            Err(unreadable) => RpcError::InvalidRequest(unreadable.refusal().unwrap_or_default()),
            // The SDK answered a batch with an error of no id.
            Ok((Value::Array(_), _)) => RpcError::InvalidRequest(
                "a batch (a JSON array): MCP takes one message per line".into(),
            ),
            Ok((message, held)) => match super::shape::refusal(&message) {
                Some(e) => e,
                None => {
                    let request = match (message.get("method"), message.get("id")) {
                        (Some(_), Some(id)) => key_of(id),
                        _ => None,
                    };
                    let cancelled = (message.get("method")
                        == Some(&Value::from("notifications/cancelled")))
                    .then(|| key_of(message.get("params")?.get("requestId")?))
                    .flatten();
                    drop(message);
                    // As the SDK reads it: it answers a request it cannot
                    // read as one of its types with no id, and its place
                    // would never come back (review 193). A notification
                    // is never answered.
                    match serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(line) {
                        Ok(_) => {}
                        Err(_) if request.is_none() => return Checked::Other,
                        Err(e) => {
                            return Checked::Refused(answer(
                                litebridge::json::top_level_id(line).unwrap_or(Value::Null),
                                &RpcError::InvalidRequest(format!(
                                    "not a message MCP reads: {}",
                                    crate::rpc::shortened(&e.to_string(), 300)
                                )),
                            ));
                        }
                    }
                    return match (request, cancelled) {
                        (Some(id), _) => Checked::Request(id, held),
                        (None, Some(id)) => Checked::Cancel(id),
                        (None, None) => Checked::Other,
                    };
                }
            },
        }
    };
    // The id, when it is not the member named twice, so the client can
    // match the answer to its request.
    // Read alone, never building the rest (a line refused for its tree's
    // size must not be read whole again here), as `/rpc` reads it: none
    // when it is named twice, not a string or an integer, or the line is
    // not an object.
    let id = litebridge::json::top_level_id(line).unwrap_or(Value::Null);
    Checked::Refused(answer(id, &error))
}

/// A request's id as [`Pending`] keeps it, read as the SDK reads it (a
/// cancel naming `1.0` cancels request 1: review 194), written as the SDK
/// writes it in its answer.
fn key_of(id: &Value) -> Option<String> {
    match serde_json::from_value::<rmcp::model::RequestId>(id.clone()).ok()? {
        rmcp::model::NumberOrString::Number(n) => Some(n.to_string()),
        rmcp::model::NumberOrString::String(s) => serde_json::to_string(&*s).ok(),
    }
}

/// The line answering request `id` with `error`.
fn answer(id: Value, error: &RpcError) -> Vec<u8> {
    let mut answer = serde_json::to_vec(&error_reply(id, error)).unwrap_or_default();
    answer.push(b'\n');
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn request(id: usize) -> String {
        format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n")
    }

    /// Lines the SDK's side has, read until `n` came or none comes for a
    /// moment.
    async fn lines_read(sdk: &mut BufReader<DuplexStream>, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            let mut line = String::new();
            match tokio::time::timeout(
                std::time::Duration::from_millis(200),
                sdk.read_line(&mut line),
            )
            .await
            {
                Ok(Ok(read)) if read > 0 => got.push(line),
                _ => break,
            }
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn no_line_is_read_past_the_requests_the_sdk_has_not_answered() {
        let (mut client, input) = tokio::io::duplex(1 << 20);
        let (output, mut answers) = tokio::io::duplex(1 << 20);
        let (sdk_input, mut sdk_output, _writing) = checked(input, output);
        let mut sdk = BufReader::new(sdk_input);
        let n = MAX_IN_FLIGHT + 10;
        for id in 0..n {
            client.write_all(request(id).as_bytes()).await.unwrap();
        }
        // A notification and an id taken twice wait behind them too.
        client
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .await
            .unwrap();
        let got = lines_read(&mut sdk, n + 1).await;
        assert_eq!(got.len(), MAX_IN_FLIGHT);
        // Each answer lets one more through, whatever the order.
        for id in [7, 3] {
            let answer = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}\n");
            sdk_output.write_all(answer.as_bytes()).await.unwrap();
        }
        let more = lines_read(&mut sdk, n + 1).await;
        assert_eq!(more, [request(MAX_IN_FLIGHT), request(MAX_IN_FLIGHT + 1)]);
        // The answers reached the client.
        let mut out = vec![0u8; 64];
        let read = answers.read(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out[..read]).contains("\"id\":7"));
        // An answer to an id not pending (already answered) frees nothing.
        sdk_output
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n")
            .await
            .unwrap();
        assert!(lines_read(&mut sdk, 1).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_gives_its_place_back_and_an_id_in_flight_is_refused() {
        let (mut client, input) = tokio::io::duplex(1 << 20);
        let (output, answers) = tokio::io::duplex(1 << 20);
        let (sdk_input, _sdk_output, writing) = checked(input, output);
        let mut sdk = BufReader::new(sdk_input);
        let mut answers = BufReader::new(answers);
        for id in 0..MAX_IN_FLIGHT {
            client.write_all(request(id).as_bytes()).await.unwrap();
        }
        assert_eq!(
            lines_read(&mut sdk, MAX_IN_FLIGHT).await.len(),
            MAX_IN_FLIGHT
        );
        // The SDK answers none of them (review 193: it drops a cancelled
        // request's answer, and the places were never given back).
        // Named as the SDK reads it: `2.0` is request 2 (review 194).
        for id in ["0", "1", "2.0"] {
            let cancel = format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":{id}}}}}\n"
            );
            client.write_all(cancel.as_bytes()).await.unwrap();
        }
        let next = [MAX_IN_FLIGHT, MAX_IN_FLIGHT + 1];
        for id in next {
            client.write_all(request(id).as_bytes()).await.unwrap();
        }
        let got = lines_read(&mut sdk, 5).await;
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[3..], [request(next[0]), request(next[1])]);
        // An id of a request in flight is answered here.
        client.write_all(request(7).as_bytes()).await.unwrap();
        let mut line = String::new();
        answers.read_line(&mut line).await.unwrap();
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["id"], 7, "{answer}");
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        // Waiting for a place, the end of stdin ends the session.
        for id in 1000..1002 {
            client.write_all(request(id).as_bytes()).await.unwrap();
        }
        drop(client);
        let mut rest = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sdk.read_to_string(&mut rest),
        )
        .await
        .expect("the SDK's side ends")
        .unwrap();
        drop(sdk);
        drop(_sdk_output);
        let _ = writing.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_not_of_mcps_shape_is_answered_with_its_id() {
        let (mut client, input) = tokio::io::duplex(1 << 20);
        let (output, answers) = tokio::io::duplex(1 << 20);
        let (sdk_input, _sdk_output, _writing) = checked(input, output);
        let mut sdk = BufReader::new(sdk_input);
        let mut answers = BufReader::new(answers);
        for (line, code) in [
            (&b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":\"query\",\"arguments\":[1]}}\n"[..], -32602),
            // Of MCP's shape to the look, but not one rmcp reads (review
            // 193: rmcp answered it with no id).
            (&b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\",\"params\":{\"_meta\":5}}\n"[..], -32600),
        ] {
            client.write_all(line).await.unwrap();
            let mut text = String::new();
            answers.read_line(&mut text).await.unwrap();
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(answer["id"], 9, "{answer}");
            assert_eq!(answer["error"]["code"], code, "{answer}");
        }
        assert!(lines_read(&mut sdk, 1).await.is_empty());
    }
}
