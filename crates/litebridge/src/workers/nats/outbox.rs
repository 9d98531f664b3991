//! Messages about calls, published together.
//!
//! # Design
//!
//! async-nats writes whatever its connection task finds queued when that
//! task runs. A task that publishes wakes it, and tokio runs the woken task
//! next on the same thread (its LIFO slot): so calls and answers, each
//! published by its call's own task, went out about one per system call.
//! Measured with 128 calls in flight over NATS: about 3 messages per
//! `writev` from litebridge's two ends, against 11 from a relay whose one
//! task publishes in a loop; the server then reads as many smaller pieces.
//!
//! An outbox takes messages from any task, without waiting, and one task
//! publishes them. Woken by the first, it yields once, so the tasks already
//! woken with it (the calls a worker answered in one read, say) run and
//! add theirs, then publishes all it has in one pass: the connection task
//! finds them queued together. It yields only while busy (its last pass
//! had more than one message, or ended less than [`BUSY_GAP`] ago): a
//! message that comes alone, long after the last, is not held up by a pass
//! of the scheduler.
//! One queue and one publisher keep the order messages were given in.
//!
//! A front end's call waits until async-nats has taken it, as it waited in
//! async-nats's own `publish` before (review 134): its acknowledgement's
//! time starts only then, a link that stalls holds its callers back
//! (async-nats's queue is bounded) rather than letting this queue grow, and
//! a call whose caller stops waiting before then never leaves. A host's
//! messages (acknowledgements, answers, `running`, `done`) are made once
//! their calls have come, so its queue holds a few per call running or
//! just answered, as the calls' own tasks did before.
//!
//! Messages of one pass that go to the same place are published as one
//! (`bundle`): a front end's calls of one method, when each says how many
//! may share a message; a host's answers and notices to one front end.
//! Another message about a call (a cancel, a question or its answer, a
//! notice of a call that came alone) is published in its place, after
//! every bundle begun before it: so the order of any two messages one of
//! which is such a message is kept, and so is the order within a bundle.
//! A call or a services-protocol answer that goes alone is published at
//! once, without ending the bundles being filled: neither has an order
//! with the calls or answers of other calls, and a trickle of them would
//! otherwise cut the bundles of a busy method short.
//!
//! A message whose publishing panics (the services protocol's statistics
//! lock poisoned, which `respond` takes after publishing) costs that message
//! alone, as when each call's task sent its own: the outbox goes on with the
//! next, and says so at most once a minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot};

use crate::workers::nats::bundle;
use crate::workers::nats::fields::Fields;

/// Most messages taken in one pass.
const PASS: usize = 512;

/// At most one log line about panics this often (they may come at the
/// rate of answers).
const PANIC_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A message that comes this soon after the last pass finds the outbox
/// busy: under a steady load the tasks give one message each, and one
/// that is woken for each would never see two. About half a NATS round
/// trip on two cores of this kind of machine (190 us), so calls made one
/// at a time do not pay the yield there; on one core (75 us) they may, a
/// pass of the scheduler each (`bridge-nats-sequential` on one core,
/// alternating: +97.1, +85.8, +84.1 us over the local pipe before, +101.6,
/// +88.1, +59.1 after: no cost beyond the spread).
const BUSY_GAP: std::time::Duration = std::time::Duration::from_micros(100);

/// A message for the outbox.
pub(super) enum Outgoing {
    /// A message about a call (`accepted`, `running`, `done`, a cancel, a
    /// question and its answers).
    Publish {
        subject: Subject,
        /// Where answers go (a question's).
        reply: Option<Subject>,
        headers: Fields,
        payload: Bytes,
        /// Counted down once published or dropped (a host's answers to
        /// questions).
        counted: Option<CountedDown>,
        /// Where a bundle holding it goes (a front end's inbox), when it
        /// may be bundled with others to the same place.
        bundle: Option<Subject>,
    },
    /// A call, published unless its caller has withdrawn it first (then
    /// nothing of it leaves); `handed` says when async-nats has it, or why
    /// it could not take it.
    Call {
        subject: Subject,
        reply: Subject,
        headers: Fields,
        payload: Bytes,
        ticket: Ticket,
        handed: oneshot::Sender<Result<(), String>>,
        /// How many calls to `subject` a bundle holding it may carry (1:
        /// it goes alone).
        bundle: usize,
    },
    /// The answer to a request of the services protocol, sent by its
    /// `respond`, which counts it in its endpoint's statistics.
    Answer {
        request: Box<async_nats::service::Request>,
        headers: HeaderMap,
        payload: Bytes,
        method: String,
    },
    /// Told once everything given before it is handed to the connection.
    Flushed(oneshot::Sender<()>),
}

/// The sending side; the publishing task ends once every clone is dropped
/// and what was given is published.
#[derive(Clone)]
pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Outbox {
    /// Starts the publishing task on `client`; a front end's gives its
    /// bundles of calls reply subjects from `replies`.
    pub(super) fn start(client: Client, replies: Option<Arc<bundle::Replies>>) -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_all(client, rx, replies));
        Outbox { tx }
    }

    /// Queues `message`, in order after every message given before it.
    pub(super) fn send(&self, message: Outgoing) {
        // The task ends only when the runtime is going away.
        if self.tx.send(message).is_err() {
            tracing::debug!("a message about a call not published: the outbox has stopped");
        }
    }

    /// A message about a call.
    pub(super) fn publish(&self, subject: impl Into<Subject>, headers: Fields, payload: Bytes) {
        self.publish_bundled(subject, headers, payload, None);
    }

    /// A message about a call that may share a message with others going
    /// to `bundle` (the inbox of the front end `subject` is in).
    pub(super) fn publish_bundled(
        &self,
        subject: impl Into<Subject>,
        headers: Fields,
        payload: Bytes,
        bundle: Option<Subject>,
    ) {
        self.send(Outgoing::Publish {
            subject: subject.into(),
            reply: None,
            headers,
            payload,
            counted: None,
            bundle,
        });
    }

    /// A message counted in `queued` until it is published: a host answers
    /// a question only while few such answers wait (a flood of questions
    /// must not grow its queue without bound).
    pub(super) fn publish_counted(
        &self,
        subject: impl Into<Subject>,
        headers: Fields,
        queued: &Arc<AtomicUsize>,
    ) {
        queued.fetch_add(1, Ordering::AcqRel);
        self.send(Outgoing::Publish {
            subject: subject.into(),
            reply: None,
            headers,
            payload: Bytes::new(),
            counted: Some(CountedDown(queued.clone())),
            bundle: None,
        });
    }

    /// A question about the call with reply subject `reply` (`asking`):
    /// its cancel, with that subject as the place for answers.
    pub(super) fn ask(&self, subject: impl Into<Subject>, reply: String, headers: Fields) {
        self.send(Outgoing::Publish {
            subject: subject.into(),
            payload: Bytes::from(reply.clone().into_bytes()),
            reply: Some(reply.into()),
            headers,
            counted: None,
            bundle: None,
        });
    }

    /// Queues a call: [`Sending::handed`] is done once async-nats has it
    /// (as its own `publish` is), or says why it could not take it; until
    /// the outbox takes it, [`Ticket::withdraw`] keeps it from leaving.
    /// Up to `bundle` calls to `subject` given in one pass leave as one
    /// message.
    pub(super) fn call(
        &self,
        subject: Subject,
        reply: Subject,
        headers: Fields,
        payload: Bytes,
        bundle: usize,
    ) -> Sending {
        let (handed, taken) = oneshot::channel();
        let ticket = Ticket::default();
        self.send(Outgoing::Call {
            subject,
            reply,
            headers,
            payload,
            ticket: ticket.clone(),
            handed,
            bundle,
        });
        Sending { ticket, taken }
    }

    /// Waits until everything given before this call is handed to the
    /// connection (then `Client::flush` writes it out).
    pub(super) async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Outgoing::Flushed(tx));
        let _ = rx.await;
    }
}

/// Who has a queued call: still queued, taken by the outbox (it may be
/// on the wire), or withdrawn by its caller (it never leaves). Whichever
/// of the two moves it first out of "queued" decides.
#[derive(Clone, Default)]
pub(super) struct Ticket(Arc<AtomicU8>);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Ticket {
    /// Withdraws the call unless the outbox has taken it: true when it
    /// will never leave (withdrawn now or before).
    pub(super) fn withdraw(&self) -> bool {
        match self
            .0
            .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == WITHDRAWN,
        }
    }

    fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A call on its way to async-nats.
pub(super) struct Sending {
    pub(super) ticket: Ticket,
    taken: oneshot::Receiver<Result<(), String>>,
}

impl Sending {
    /// Done once async-nats has the call, or with why it could not take
    /// it (then it was not sent).
    pub(super) async fn handed(&mut self) -> Result<(), String> {
        (&mut self.taken)
            .await
            .unwrap_or_else(|_| Err("the outbox has stopped".into()))
    }
}

async fn publish_all(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    replies: Option<Arc<bundle::Replies>>,
) {
    let mut pass = Vec::with_capacity(PASS);
    let mut busy = false;
    let mut last_pass = std::time::Instant::now();
    let (mut panics, mut last_panic_log) = (0u64, None::<std::time::Instant>);
    // This pass's bundles being filled, and what is ready to publish, in order.
    let (mut filling, mut sent): (Vec<Filling>, Vec<Filling>) = (Vec::new(), Vec::new());
    while rx.recv_many(&mut pass, PASS).await > 0 {
        if busy || last_pass.elapsed() < BUSY_GAP {
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
        let limit = client
            .max_payload()
            .saturating_sub(4096)
            .min(bundle::MAX_BYTES);
        for message in pass.drain(..) {
            let Some((to, cap, size)) = bundling(&message, limit) else {
                // In its place: after every bundle begun before it, unless
                // it has no order with them.
                if !matches!(message, Outgoing::Call { .. } | Outgoing::Answer { .. }) {
                    sent.append(&mut filling);
                }
                sent.push(Filling::alone(message));
                continue;
            };
            let at = filling.iter().position(|f| f.to == to);
            let at = match at {
                Some(i)
                    if filling[i].members.len() >= filling[i].cap.min(cap)
                        || filling[i].bytes + size > limit =>
                {
                    sent.push(filling.remove(i));
                    None
                }
                at => at,
            };
            match at {
                Some(i) => filling[i].add(message, size, cap),
                None => filling.push(Filling {
                    to,
                    cap,
                    bytes: size,
                    members: vec![message],
                }),
            }
        }
        sent.append(&mut filling);
        for f in sent.drain(..) {
            if std::panic::AssertUnwindSafe(f.publish(&client, replies.as_deref()))
                .catch_unwind()
                .await
                .is_err()
            {
                panics += 1;
                if last_panic_log.is_none_or(|at| at.elapsed() >= PANIC_LOG_EVERY) {
                    last_panic_log = Some(std::time::Instant::now());
                    tracing::error!(
                        panics,
                        "publishing a message about a call panicked (an answer's, after it was \
                         published, when the services protocol's statistics lock is poisoned); \
                         going on with the next"
                    );
                }
            }
        }
        last_pass = std::time::Instant::now();
    }
}

/// Where `message` may go in a bundle, with how many its bundle may hold
/// and the bytes it takes there; `None` when it goes alone.
fn bundling(message: &Outgoing, limit: usize) -> Option<(Subject, usize, usize)> {
    let (to, cap, subject, headers, payload) = match message {
        Outgoing::Call {
            subject,
            reply,
            headers,
            payload,
            bundle,
            ..
        } if *bundle > 1 => (subject, *bundle, reply, headers, payload),
        Outgoing::Publish {
            subject,
            reply: None,
            headers,
            payload,
            counted: None,
            bundle: Some(to),
        } => (to, bundle::MAX_ENTRIES, subject, headers, payload),
        _ => return None,
    };
    let size = bundle::entry_size(subject, headers, payload).filter(|&s| s <= limit / 4)?;
    Some((to.clone(), cap.min(bundle::MAX_ENTRIES), size))
}

/// Messages of a pass going to one place, published as one (or a
/// message alone).
struct Filling {
    to: Subject,
    /// The fewest messages any of its members lets a bundle hold.
    cap: usize,
    bytes: usize,
    members: Vec<Outgoing>,
}

impl Filling {
    fn alone(message: Outgoing) -> Filling {
        Filling {
            to: Subject::from_static(""),
            cap: 1,
            bytes: 0,
            members: vec![message],
        }
    }

    fn add(&mut self, message: Outgoing, size: usize, cap: usize) {
        self.cap = self.cap.min(cap);
        self.bytes += size;
        self.members.push(message);
    }

    /// Publishes its one message as itself, or its messages as a bundle
    /// (one of calls with a reply subject from `replies`, for the server's
    /// "no responders").
    async fn publish(mut self, client: &Client, replies: Option<&bundle::Replies>) {
        if self.members.len() == 1 {
            if let Some(message) = self.members.pop() {
                publish(client, message).await;
            }
            return;
        }
        let mut writer = bundle::Writer::new(self.bytes);
        let mut handed = Vec::new();
        let mut calls = Vec::new();
        for message in self.members {
            match message {
                Outgoing::Call {
                    reply,
                    headers,
                    payload,
                    ticket,
                    handed: h,
                    ..
                } => {
                    // Withdrawn meanwhile: it never leaves.
                    if ticket.take() {
                        writer.push(&reply, &headers, &payload);
                        handed.push(h);
                        if let Some(id) = reply.rsplit('.').next().and_then(|t| t.parse().ok()) {
                            calls.push(id);
                        }
                    }
                }
                Outgoing::Publish {
                    subject,
                    headers,
                    payload,
                    ..
                } => writer.push(&subject, &headers, &payload),
                // Never bundled (`bundling`).
                Outgoing::Answer { .. } | Outgoing::Flushed(_) => {}
            }
        }
        if writer.is_empty() {
            return;
        }
        let (headers, body) = writer.finish();
        let sent = match replies.filter(|_| !handed.is_empty()) {
            Some(r) => {
                let (reply, n) = r.open(calls);
                let sent = client
                    .publish_with_reply_and_headers(self.to, reply, headers, body)
                    .await;
                r.handed(n);
                sent
            }
            None => client.publish_with_headers(self.to, headers, body).await,
        }
        .map_err(|e| e.to_string());
        if let Err(e) = &sent
            && handed.is_empty()
        {
            tracing::debug!("sending a bundle of notices on NATS: {e}");
        }
        for h in handed {
            let _ = h.send(sent.clone());
        }
    }
}

/// Counts one message down when dropped: published, or dropped unsent
/// (the outbox stopped).
pub(super) struct CountedDown(Arc<AtomicUsize>);

impl Drop for CountedDown {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn publish(client: &Client, message: Outgoing) {
    match message {
        Outgoing::Publish {
            subject,
            reply,
            headers,
            payload,
            counted,
            ..
        } => {
            // Counted as published (or not) whatever happens below.
            let _counted = counted;
            let sent = match reply {
                Some(reply) => {
                    client
                        .publish_with_reply_and_headers(subject, reply, headers.to_map(), payload)
                        .await
                }
                None if headers.is_empty() => client.publish(subject, payload).await,
                None => {
                    client
                        .publish_with_headers(subject, headers.to_map(), payload)
                        .await
                }
            };
            if let Err(e) = sent {
                tracing::debug!("sending a call's notice on NATS: {e}");
            }
        }
        Outgoing::Call {
            subject,
            reply,
            headers,
            payload,
            ticket,
            handed,
            ..
        } => {
            if !ticket.take() {
                return;
            }
            let sent = client
                .publish_with_reply_and_headers(subject, reply, headers.to_map(), payload)
                .await;
            let _ = handed.send(sent.map_err(|e| e.to_string()));
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
