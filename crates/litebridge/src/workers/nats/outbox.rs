//! Messages published together.
//!
//! # Design
//!
//! async-nats writes whatever its connection task finds queued when that
//! task runs. A task that publishes wakes it, and tokio runs the woken task
//! next on the same thread (its LIFO slot): so messages published by many
//! call tasks, each publishing one, went out about one per system call.
//! Measured with 128 calls in flight over NATS: about 3 messages per
//! `writev` from litebridge's two ends, against 11 from a relay whose one
//! task publishes in a loop; the server then reads as many smaller pieces.
//!
//! An outbox takes messages from any task, without waiting, and one task
//! publishes them. Woken by the first, it yields once, so the tasks already
//! woken with it (the calls a worker answered in one read, say) run and
//! add theirs, then publishes all it has in one pass: the connection task
//! finds them queued together. It yields only while busy (its last pass
//! had more than one message): a message that comes alone, as calls made
//! one at a time do, is not held up by a pass of the scheduler. One queue
//! and one publisher keep the order messages were given in: a call's
//! acknowledgement, answer and `done` reach the wire in that order.
//!
//! A message that cannot be published (the connection closed for good) is
//! reported to the outbox's `failed` callback with the call it belongs to,
//! if any: a call that was never sent must not be waited for as one that
//! may run.

use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Most messages taken in one pass (the connection queues at most this
/// many commands at once, by default, anyway).
const PASS: usize = 512;

/// What [`Outbox::failed`] is told: the call a message belonged to, and why
/// it was not published.
pub(super) type Failed = Box<dyn Fn(u64, &async_nats::PublishError) + Send + Sync>;

/// A message for the outbox.
pub(super) enum Outgoing {
    /// A message; `call`, the call it belongs to (told of a failure).
    Publish {
        subject: Subject,
        reply: Option<Subject>,
        headers: HeaderMap,
        payload: Bytes,
        call: Option<u64>,
    },
    /// The answer to a request of the services protocol, sent by its
    /// `respond`, which counts it in its endpoint's statistics.
    Answer {
        request: Box<async_nats::service::Request>,
        headers: HeaderMap,
        payload: Bytes,
        method: String,
    },
    /// Told once everything given before it is published (or failed).
    Flushed(oneshot::Sender<()>),
}

/// The sending side; the publishing task ends once every clone is dropped
/// and what was given is published.
#[derive(Clone)]
pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Outbox {
    /// Starts the publishing task on `client`.
    pub(super) fn start(client: Client, failed: Failed) -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_all(client, rx, failed));
        Outbox { tx }
    }

    /// Queues `message`, in order after every message given before it.
    pub(super) fn send(&self, message: Outgoing) {
        // The task ends only when the runtime is going away.
        if let Err(mpsc::error::SendError(Outgoing::Publish { subject, .. })) =
            self.tx.send(message)
        {
            tracing::debug!(%subject, "not published: the outbox has stopped");
        }
    }

    /// A plain message (no call to tell of a failure).
    pub(super) fn publish(&self, subject: impl Into<Subject>, headers: HeaderMap, payload: Bytes) {
        self.send(Outgoing::Publish {
            subject: subject.into(),
            reply: None,
            headers,
            payload,
            call: None,
        });
    }

    /// Waits until everything given before this call is handed to the
    /// connection (then `Client::flush` writes it out).
    pub(super) async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Outgoing::Flushed(tx));
        let _ = rx.await;
    }
}

async fn publish_all(client: Client, mut rx: mpsc::UnboundedReceiver<Outgoing>, failed: Failed) {
    let mut pass = Vec::with_capacity(PASS);
    let mut busy = false;
    while rx.recv_many(&mut pass, PASS).await > 0 {
        if busy {
            // The tasks woken with the first message's sender add theirs.
            tokio::task::yield_now().await;
            while pass.len() < PASS {
                match rx.try_recv() {
                    Ok(m) => pass.push(m),
                    Err(_) => break,
                }
            }
        }
        busy = pass.len() > 1;
        for message in pass.drain(..) {
            publish(&client, message, &failed).await;
        }
    }
}

async fn publish(client: &Client, message: Outgoing, failed: &Failed) {
    match message {
        Outgoing::Publish {
            subject,
            reply,
            headers,
            payload,
            call,
        } => {
            let sent = match (reply, headers.is_empty()) {
                (Some(reply), false) => {
                    client
                        .publish_with_reply_and_headers(subject, reply, headers, payload)
                        .await
                }
                (Some(reply), true) => client.publish_with_reply(subject, reply, payload).await,
                (None, false) => client.publish_with_headers(subject, headers, payload).await,
                (None, true) => client.publish(subject, payload).await,
            };
            if let (Err(e), Some(call)) = (sent, call) {
                failed(call, &e);
            }
        }
        Outgoing::Answer {
            request,
            headers,
            payload,
            method,
        } => {
            if let Err(e) = request.respond_with_headers(Ok(payload), headers).await {
                tracing::warn!(method, "sending an answer on NATS: {e}");
            }
        }
        Outgoing::Flushed(done) => {
            let _ = done.send(());
        }
    }
}
