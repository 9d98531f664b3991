//! A worker host: a local [`WorkerPool`] served on NATS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Client;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt};
use serde_json::{Value as Json, json};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::error::{Error, Result, TimeoutStage};
use crate::sync::lock;
use crate::workers::nats::NatsConfig;
use crate::workers::nats::bundle;
use crate::workers::nats::fields::{Fields, Name};
use crate::workers::nats::outbox::{Outbox, Outgoing};
use crate::workers::nats::seen::{Seen, Take};
use crate::workers::nats::wire::{self, Subjects};
use crate::workers::{Abandoned, CallOptions, WorkerPool};

/// A worker pool served on NATS: every method its workers announce becomes
/// an endpoint of the services protocol, in one queue group, so calls spread
/// over every host serving them. Dropping it stops serving; call
/// [`WorkerHost::shutdown`] to finish the calls in flight first.
pub struct WorkerHost {
    inner: Arc<Host>,
    /// The tasks taking calls from the endpoints, one each (see `serve`
    /// and `shutdown`).
    serving: JoinSet<()>,
    tasks: JoinSet<()>,
    service: Option<async_nats::service::Service>,
}

impl std::fmt::Debug for WorkerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHost")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

struct Host {
    id: String,
    /// Every message about a call (acknowledgement, answer, `running`,
    /// `done`), in the order given and published together ([`Outbox`]).
    outbox: Outbox,
    /// Its id in the services protocol.
    service_id: String,
    /// Changes when the methods it serves change.
    methods_hash: String,
    /// Its endpoints are there: until then its heartbeats announce no
    /// methods (a hash of its own), so front ends read them once they are.
    endpoints_ready: AtomicBool,
    client: Client,
    /// The calls it took lately, to answer questions about them (`seen`).
    seen: Mutex<Seen>,
    /// Where front ends' inboxes start (`_INBOX_<prefix>.`), and hosts'
    /// (within them): questions are answered only into the former.
    front_inboxes: String,
    host_inboxes: String,
    /// Its connections to NATS so far (async-nats counts one before the
    /// subscriptions of a new one are made again), and how many there were
    /// when its last heartbeat was written: on a connection with no
    /// heartbeat of its yet it refuses calls (`asking`: a front end may no
    /// longer wait for a host silent long, a paused one woken, say).
    stats: Arc<async_nats::Statistics>,
    announced_on: AtomicU64,
    /// When (Unix ms) it last announced itself on a connection other than
    /// its first, after a silence long enough for front ends to have
    /// stopped waiting for its word: a call sent before then is not
    /// started (`handle`). 0: none.
    announced_at_ms: AtomicU64,
    /// When its last heartbeat was published.
    last_beat: Mutex<tokio::time::Instant>,
    /// How long `seen` remembers a call, in ms: a call older than that
    /// when it comes is not started.
    seen_span_ms: u64,
    /// Answers to questions waiting in the outbox.
    answers_queued: Arc<AtomicUsize>,
    pool: WorkerPool,
    config: NatsConfig,
    subjects: Subjects,
    /// Calls running, and cancels that came before their calls.
    running: Mutex<Running>,
    draining: AtomicBool,
    /// Calls taken from NATS whose handling has not ended (answered,
    /// refused or dropped): a shutdown waits for them before its last flush.
    handling: AtomicUsize,
    /// Calls cancelled by their callers.
    cancelled: AtomicU64,
    /// The methods with an endpoint of their own (others come to `dynamic`).
    endpoints: std::collections::HashSet<String>,
    /// Calls answered, by endpoint ([`Counted`]).
    counted: Arc<Mutex<HashMap<String, Counted>>>,
    /// When a warning about an unreadable bundle, or about a call naming
    /// a running call's reply subject, was last logged (peers on the bus
    /// can cause either at will).
    warned: Mutex<Option<tokio::time::Instant>>,
    warned_duplicate: Mutex<Option<tokio::time::Instant>>,
}

impl WorkerHost {
    /// Serves `pool` on the NATS servers of `config`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad configuration; [`Error::Unavailable`] when
    /// NATS cannot be reached within `connect_timeout` (naming the address)
    /// or refuses the service.
    pub async fn start(pool: WorkerPool, config: NatsConfig) -> Result<WorkerHost> {
        config.validate()?;
        let id = match &config.host_id {
            Some(id) => id.clone(),
            None => default_host_id(),
        };
        let client = super::connect(
            &config,
            &format!("litebridge worker-host {id}"),
            super::config::Side::Host,
            None,
        )
        .await?;
        let subjects = Subjects::new(&config.prefix);
        let url = config.url.clone();
        let unavailable = move |e: &dyn std::fmt::Display| Error::Unavailable {
            what: "NATS",
            reason: format!("cannot serve the workers on {url}: {e}"),
        };
        if let Some(e) = id_in_use(&client, &config, &id).await {
            return Err(e);
        }
        let stats_pool = pool.clone();
        let counted: Arc<Mutex<HashMap<String, Counted>>> = Arc::default();
        let stats_counted = counted.clone();
        let service = client
            .service_builder()
            .description("litebridge worker host: calls to Python workers")
            .metadata(HashMap::from([
                ("host".to_owned(), id.clone()),
                ("protocol".to_owned(), "1".to_owned()),
                // Also in the service's name: front ends check both.
                ("prefix".to_owned(), config.prefix.clone()),
                // It reads calls in bundles (`bundle`), of this version.
                ("bundles".to_owned(), bundle::VERSION.to_owned()),
            ]))
            .queue_group(&config.queue_group)
            .stats_handler(move |endpoint, _stats| {
                let s = stats_pool.status();
                let c = lock(&stats_counted)
                    .get(&endpoint)
                    .copied()
                    .unwrap_or_default();
                json!({
                    "crashes": s.crashes, "restarts": s.restarts, "healthy": s.healthy,
                    "bundled_requests": c.bundled, "errors": c.errors, "not_started": c.not_started,
                })
            })
            .start(wire::service(&config.prefix), env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| unavailable(&e))?;
        let cancels = client
            .subscribe(subjects.cancel())
            .await
            .map_err(|e| unavailable(&e))?;
        let seen_span = (2 * config.ack_within()).max(Duration::from_secs(5));
        // One look at what the pool serves, for the hash its heartbeats
        // carry and for the endpoints announced: a worker replaced between
        // two looks (its pool then lists nothing) made them differ, and
        // front ends never took the host's INFO (review 227).
        let (announced, dynamic) = (pool.methods(), pool.accepts_any_method());
        let endpoints = announced
            .iter()
            .map(|m| m.name.clone())
            .filter(|m| wire::method_is_subject_safe(m))
            .collect();
        let inner = Arc::new(Host {
            outbox: Outbox::start(client.clone(), None),
            stats: client.statistics(),
            id,
            service_id: service.info().await.id,
            methods_hash: methods_hash(&announced, dynamic),
            endpoints_ready: AtomicBool::new(false),
            client,
            seen: Mutex::new(Seen::new(seen_span)),
            front_inboxes: format!("_INBOX_{}.", config.prefix),
            host_inboxes: format!("_INBOX_{}.hosts.", config.prefix),
            announced_on: AtomicU64::new(0),
            announced_at_ms: AtomicU64::new(0),
            last_beat: Mutex::new(tokio::time::Instant::now()),
            seen_span_ms: seen_span.as_millis() as u64,
            answers_queued: Arc::new(AtomicUsize::new(0)),
            pool,
            config,
            subjects,
            running: Mutex::new(Running::default()),
            draining: AtomicBool::new(false),
            handling: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
            endpoints,
            counted,
            warned: Mutex::new(None),
            warned_duplicate: Mutex::new(None),
        });
        // Heard from before it can take a call: a front end asking whether
        // any host had a call knows this one by then (`asking`).
        match tokio::time::timeout(inner.config.connect_timeout, inner.announce()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unavailable(&e)),
            Err(_) => return Err(unavailable(&"no heartbeat written within connect_timeout")),
        }
        let subjects = &inner.subjects;
        let mut endpoints = Vec::new();
        // An endpoint's name is only what operators' tools show (a front
        // end reads the method from its metadata), but the services library
        // keeps one endpoint a name: `a.b` and `a-b` (dots become dashes)
        // each get one of their own, or one was never announced (review 191).
        let mut names = std::collections::HashSet::new();
        if dynamic {
            names.insert("dynamic".to_owned());
        }
        for m in announced {
            if !wire::method_is_subject_safe(&m.name) {
                tracing::warn!(
                    method = m.name,
                    "not served on NATS: a method name must be dot-separated letters, digits, `_` or `-`"
                );
                continue;
            }
            let base = m.name.replace('.', "-");
            let mut name = base.clone();
            let mut n = 2;
            while !names.insert(name.clone()) {
                name = format!("{base}-{n}");
                n += 1;
            }
            let e = service
                .endpoint_builder()
                .name(name)
                .metadata(wire::method_metadata(&m))
                .add(subjects.call(&m.name))
                .await
                .map_err(|e| unavailable(&e))?;
            endpoints.push(e);
        }
        if dynamic {
            let e = service
                .endpoint_builder()
                .name("dynamic")
                .metadata(HashMap::from([("dynamic".to_owned(), "true".to_owned())]))
                .add(subjects.any_call())
                .await
                .map_err(|e| unavailable(&e))?;
            endpoints.push(e);
        }
        inner.endpoints_ready.store(true, Ordering::Release);
        let mut tasks = JoinSet::new();
        let mut serving = JoinSet::new();
        for e in endpoints {
            serving.spawn(serve(inner.clone(), e));
        }
        tasks.spawn(cancel_on_request(inner.clone(), cancels));
        tasks.spawn(heartbeat(inner.clone()));
        inner.client.flush().await.map_err(|e| unavailable(&e))?;
        tracing::info!(
            host = inner.id,
            url = inner.config.url,
            "serving the workers on NATS"
        );
        Ok(WorkerHost {
            inner,
            serving,
            tasks,
            service: Some(service),
        })
    }

    /// This host's id, as the front ends see it.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Calls cancelled by their callers so far.
    pub fn cancelled(&self) -> u64 {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// Stops taking calls (the services protocol's stop unsubscribes), lets
    /// the calls in flight finish within the pool's shutdown grace, answers
    /// front ends' questions about calls dropped on their way here for an
    /// acknowledgement's time and a second, then stops the pool.
    pub async fn shutdown(mut self) {
        self.inner.draining.store(true, Ordering::Release);
        // A heartbeat says `draining` first, so front ends neither count on
        // this host nor take a replacement under its id for a restart.
        self.inner.beat().await;
        let _ = self.inner.client.flush().await;
        if let Some(service) = self.service.take()
            && let Err(e) = service.stop().await
        {
            tracing::warn!("stopping the NATS service: {e}");
        }
        let stopped = tokio::time::Instant::now();
        // Stopped, each endpoint unsubscribes and yields what its client
        // had received before it dropped the subscription, then ends: those
        // calls are handled (refused as not started, which their front ends
        // send elsewhere), not dropped to be taken for lost.
        let ended = async {
            while let Some(ended) = self.serving.join_next().await {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    tracing::error!("taking the calls of an endpoint panicked: {e}");
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), ended)
            .await
            .is_err()
        {
            self.serving.abort_all();
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while lock(&self.inner.running).len() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A call on its way here as the endpoints stopped was dropped
        // (async-nats's endpoints cannot drain): its front end asks about
        // it an acknowledgement's time after sending it (`asking`), so the
        // questions are answered until then, with a second to spare (and
        // at most `MAX_LINGER`; not at all when NATS is out of reach).
        let config = &self.inner.config;
        let linger = (config.ack_within() + Duration::from_secs(1)).min(MAX_LINGER);
        let answered_until = stopped + linger;
        while tokio::time::Instant::now() < answered_until
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
        {
            tokio::time::sleep_until(
                answered_until.min(tokio::time::Instant::now() + Duration::from_millis(100)),
            )
            .await;
        }
        self.tasks.shutdown().await;
        self.inner.pool.shutdown().await;
        // The calls still being handled: those the pool's end has just
        // failed, and the refusals of calls taken as it stopped (with a
        // floor of its own: the wait for `running` may have used all of
        // `until`). Then their answers, and the socket, within a bound:
        // NATS may be gone.
        let handled_by = until.max(tokio::time::Instant::now() + Duration::from_secs(2));
        while self.inner.handling.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < handled_by
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let flushed = async {
            self.inner.outbox.flushed().await;
            let _ = self.inner.client.flush().await;
        };
        let _ = tokio::time::timeout(left.max(Duration::from_secs(1)), flushed).await;
        // Last, after its answers: it takes no call any more, and front
        // ends need not wait for its word on one (`asking`).
        self.inner.beat_with(true).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.client.flush()).await;
    }
}

/// The longest a host shutting down answers questions after its endpoints
/// stopped (a container's default grace before it is killed is 30 s).
const MAX_LINGER: Duration = Duration::from_secs(20);

impl Drop for WorkerHost {
    fn drop(&mut self) {
        self.serving.abort_all();
        self.tasks.abort_all();
    }
}

/// An error when a live host of this deployment already uses `id` (two
/// hosts under one id would be taken for one restarting host, and the calls
/// of either lost silently): asked with the services protocol's PING,
/// whose answers name each host and its prefix.
async fn id_in_use(client: &Client, config: &NatsConfig, id: &str) -> Option<Error> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.ok()?;
    let ping = format!("$SRV.PING.{}", wire::service(&config.prefix));
    client
        .publish_with_reply(ping, inbox, Default::default())
        .await
        .ok()?;
    let until = tokio::time::Instant::now() + Duration::from_millis(250);
    while let Ok(Some(m)) = tokio::time::timeout_at(until, answers.next()).await {
        let Ok(pong) = serde_json::from_slice::<async_nats::service::PingResponse>(&m.payload)
        else {
            continue;
        };
        if pong.metadata.get("host").map(String::as_str) == Some(id)
            && pong.metadata.get("prefix") == Some(&config.prefix)
        {
            return Some(Error::Config {
                key: "nats.host_id".into(),
                value: format!("{id:?}"),
                expected: format!(
                    "an id no live worker host of prefix `{}` uses (give each host its own --name)",
                    config.prefix
                ),
            });
        }
    }
    None
}

/// `<machine>-<pid>`, in subject-safe characters.
fn default_host_id() -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_else(|_| "host".into())
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect::<String>();
    format!("{machine}-{}", std::process::id())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes the calls of one endpoint. A task each, not one over them all:
/// `futures_util`'s `select_all` wakes its task again once it has polled
/// every stream it holds, which with one endpoint (a host serving one
/// method) was after every message; on two runtime threads that wake-up
/// sent the idle one over to take the task, a crossing of CPUs for every
/// call (seen with `perf record -e sched:sched_waking`).
async fn serve(host: Arc<Host>, mut requests: async_nats::service::endpoint::Endpoint) {
    while let Some(request) = requests.next().await {
        let Some(entries) = bundle::entries_of(&request.message) else {
            let fields = Fields::from_map(request.message.headers.as_ref());
            take(&host, Incoming::Alone(request, fields));
            continue;
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                // Never taken here: a question about one of its calls is
                // answered `unseen`.
                host.warn_limited(
                    &host.warned,
                    &format!("a bundle of calls that cannot be read ({e}); dropped"),
                );
                continue;
            }
        };
        let subject = request.message.subject.clone();
        let method = host.subjects.method_of(&subject).unwrap_or_default();
        // One task for the bundle's calls: its poll gives the pool every
        // call's line before the pool's writer runs (one write to the
        // worker for them all, not one each), and the answers that come
        // together reach the outbox together.
        // Only calls a front end made: a reply subject in a front end's
        // inbox (so a bundle cannot make this host publish anywhere else;
        // one naming a running call's is dropped, as alone).
        let calls = futures_util::stream::FuturesUnordered::new();
        let acks = Arc::new(BundleAck::default());
        // Where the previous entry's answer goes: a bundle's calls come
        // from one front end, and their inbox is made once.
        let mut last: Option<(String, async_nats::Subject)> = None;
        for e in entries {
            let Some(inbox) = host.front_inbox_of(&e.subject) else {
                tracing::debug!(
                    "a bundled call with a reply subject no front end gave it; dropped"
                );
                continue;
            };
            let to = match &last {
                Some((known, to)) if known == inbox => to.clone(),
                _ => {
                    let to: async_nats::Subject = format!("{}{inbox}.b", host.front_inboxes).into();
                    last = Some((inbox.to_owned(), to.clone()));
                    to
                }
            };
            let to = Some(to);
            let message = async_nats::Message {
                subject: subject.clone(),
                reply: Some(e.subject),
                payload: e.body,
                headers: None,
                status: None,
                description: None,
                length: 0,
            };
            let call = Incoming::Bundled {
                message,
                fields: e.fields,
                to,
                acks: acks.clone(),
            };
            let Some(handling) = taken(&host, &call) else {
                continue;
            };
            // A panic ends its own call only, as a task of its own would.
            // Pushed where it is made (a future moved less is copied less).
            calls.push(
                std::panic::AssertUnwindSafe(async move {
                    handle(handling.0.clone(), call).await;
                    drop(handling);
                })
                .catch_unwind(),
            );
        }
        if !calls.is_empty() {
            host.count(method, |c| c.bundled += calls.len() as u64);
            let ack_delay = host.config.ack_delay;
            tokio::spawn(async move {
                let mut calls = calls;
                let due = tokio::time::sleep(ack_delay);
                tokio::pin!(due);
                loop {
                    tokio::select! {
                        biased;
                        ended = calls.next() => match ended {
                            Some(Ok(())) => {}
                            Some(Err(_)) => tracing::error!(
                                "handling a call panicked; its caller finds it lost"
                            ),
                            None => break,
                        },
                        () = &mut due, if !acks.is_due() => acks.fire(),
                    }
                }
            });
        }
    }
}

/// What a host counts of the calls it answers, by endpoint, beyond what
/// the services protocol counts (it counts only the calls it answers
/// itself, those that came alone, and none of them as errors: litebridge
/// answers errors in the body).
#[derive(Debug, Default, Clone, Copy)]
struct Counted {
    /// Calls taken from bundles.
    bundled: u64,
    /// Calls answered with an error after they started.
    errors: u64,
    /// Calls answered with an error before they started: a full or
    /// draining host and an open breaker (the front end may send these
    /// to another host), params refused, a deadline passed on the way.
    not_started: u64,
}

/// A call as it came: alone, or in a bundle (`bundle`).
enum Incoming {
    /// Answered through the services protocol, which counts it; with its
    /// headers read.
    Alone(async_nats::service::Request, Fields),
    /// Its answer and notices go back in bundles to `to`, its front end's
    /// inbox.
    Bundled {
        message: async_nats::Message,
        fields: Fields,
        to: Option<async_nats::Subject>,
        /// When its bundle's calls are acknowledged.
        acks: Arc<BundleAck>,
    },
}

/// When the calls of one bundle still running are acknowledged: at
/// `ack_delay` after the bundle came, by one timer for them all. A timer
/// each cost a registration in tokio's timer wheel, and each registered
/// earlier than the wheel's next wake-up (the first calls after a moment
/// with no short timer, a whole bundle of them) a write to wake the
/// runtime: about one for every two calls in `bridge-nats-pipelined`,
/// 94 % of its wake-ups (`perf record -e syscalls:sys_enter_write`; one
/// for every 50 calls with this timer). A call of the bundle first polled
/// after the timer fired (a loaded host) is acknowledged at once: it came
/// `ack_delay` ago.
#[derive(Default)]
struct BundleAck {
    due: AtomicBool,
    notify: tokio::sync::Notify,
}

impl BundleAck {
    fn is_due(&self) -> bool {
        self.due.load(Ordering::Acquire)
    }

    fn fire(&self) {
        self.due.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Ready once the bundle's calls are due to be acknowledged.
    async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a `fire` between the two
        // is not missed.
        notified.as_mut().enable();
        if self.is_due() {
            return;
        }
        notified.await;
    }
}

impl Incoming {
    fn message(&self) -> &async_nats::Message {
        match self {
            Incoming::Alone(r, _) => &r.message,
            Incoming::Bundled { message, .. } => message,
        }
    }

    fn fields(&self) -> &Fields {
        match self {
            Incoming::Alone(_, fields) | Incoming::Bundled { fields, .. } => fields,
        }
    }

    /// Its bundle's acknowledgement, when it came in one.
    fn acks(&self) -> Option<Arc<BundleAck>> {
        match self {
            Incoming::Alone(..) => None,
            Incoming::Bundled { acks, .. } => Some(acks.clone()),
        }
    }

    /// Where its notices may be bundled.
    fn bundle_to(&self) -> Option<async_nats::Subject> {
        match self {
            Incoming::Alone(..) => None,
            Incoming::Bundled { to, .. } => to.clone(),
        }
    }
}

/// Starts handling a call in a task of its own.
fn take(host: &Arc<Host>, call: Incoming) {
    let Some(handling) = taken(host, &call) else {
        return;
    };
    tokio::spawn(async move {
        handle(handling.0.clone(), call).await;
        drop(handling);
    });
}

/// A call noted as taken, counted as being handled; or `None` when it is
/// refused, unanswered: a question about it came first and was answered
/// `unseen` (its caller sent it elsewhere).
fn taken(host: &Arc<Host>, call: &Incoming) -> Option<Handling> {
    if let Some(reply) = &call.message().reply {
        match lock(&host.seen).take(reply) {
            Take::New => {}
            Take::Asked => {
                host.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("a call that came after this host said it never had it; dropped");
                return None;
            }
            Take::Again => {
                host.warn_limited(
                    &host.warned_duplicate,
                    "dropped a call whose reply subject names a call this host had",
                );
                return None;
            }
        }
    }
    Some(Handling::new(host))
}

/// A call being handled, counted in [`Host::handling`] from its making
/// until dropped (whatever way its task ends, aborted with the runtime
/// too).
struct Handling(Arc<Host>);

impl Handling {
    fn new(host: &Arc<Host>) -> Handling {
        host.handling.fetch_add(1, Ordering::AcqRel);
        Handling(host.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A refusal of a call this host did not start (its front end may send it
/// to another host, whatever its method).
fn refusal(reason: &str) -> Error {
    Error::Unavailable {
        what: "worker host",
        reason: reason.into(),
    }
}

/// How long a call that came past its deadline waits for its cancel.
const LATE_CALL_GRACE: Duration = Duration::from_millis(100);

/// One call: refused when it cannot start in time, acknowledged when it
/// runs past `ack_delay`, answered once, or dropped (and the worker told to
/// cancel) when its caller cancels.
async fn handle(host: Arc<Host>, request: Incoming) {
    let msg = request.message();
    // Both kept as they came (a `Subject` is cloned by a count).
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    // A second call naming a running call's reply subject (a peer on the
    // bus that saw its token) is dropped before anything, a refusal
    // included: any answer to it would go to the running call's caller
    // (review 191). It is looked for again as the call starts.
    if lock(&host.running).runs(&reply) {
        host.warn_limited(
            &host.warned_duplicate,
            "dropped a call whose reply subject names a call running here",
        );
        return;
    }
    let subject = msg.subject.clone();
    let h = request.fields();
    let method = host.subjects.method_of(&subject).unwrap_or_default();
    let budget = h.get(Name::BudgetMs).and_then(|v| v.parse::<u64>().ok());
    let deadline = h.get(Name::Deadline).and_then(|v| v.parse::<u64>().ok());
    let request_id = h.get(Name::RequestId).map(str::to_owned);
    // Echoed on every notice and answer about the call (short and
    // printable, or none: one of a front end of an earlier version).
    let token = Token::new(h.get(Name::Token).unwrap_or_default());
    let refuse = |request, e: Error| answer(&host, request, method, &token, Err(e), false);
    if host.draining.load(Ordering::Acquire) {
        return refuse(
            request,
            refusal("it is shutting down; the call was not started"),
        );
    }
    if !host.announced() {
        return refuse(
            request,
            refusal(
                "it has just reconnected to NATS and not yet announced itself; the call was not started",
            ),
        );
    }
    let (Some(budget), Some(deadline)) = (budget, deadline) else {
        return refuse(
            request,
            Error::invalid(
                format!("{} and {}", wire::BUDGET_MS, wire::DEADLINE),
                "missing, or not a whole number of milliseconds: the call has no deadline",
            ),
        );
    };
    // A call whose caller has given up is never started: its deadline (by
    // this host's clock, allowing for skew) bounds its time here, as well as
    // the budget it was sent with, counted from its arrival (a host paused
    // with calls queued finds them late).
    let now = unix_ms();
    let left = deadline
        .saturating_add(wire::CLOCK_SKEW.as_millis() as u64)
        .saturating_sub(now);
    let mut timeout = Duration::from_millis(budget.min(left));
    // Past its deadline by this host's clock (taken only because the
    // clocks may differ). One without time for a wait for its cancel is
    // refused as one past the skew is.
    let late = now > deadline;
    // When it was sent, by its front end's clock (the deadline and budget
    // are stamped together).
    let sent = deadline.saturating_sub(budget);
    let skew = wire::CLOCK_SKEW.as_millis() as u64;
    // Sent before this host announced itself on its connection (it came
    // while the host was paused, say, and is read only now): a front end
    // may have asked about it and sent it elsewhere meanwhile (review 138).
    // Or sent so long ago that a question about it may have been answered
    // and forgotten (`seen`). Neither is started anywhere here.
    let reannounced = host.announced_at_ms.load(Ordering::Acquire);
    if (reannounced > 0 && sent < reannounced.saturating_add(skew))
        || now.saturating_sub(sent).saturating_add(skew) >= host.seen_span_ms
    {
        return refuse(
            request,
            refusal(
                "the call came too long after it was sent (this host was paused or cut off); it was not started",
            ),
        );
    }
    if timeout.is_zero() || (late && timeout <= LATE_CALL_GRACE) {
        return refuse(
            request,
            Error::Timeout {
                after: Duration::from_millis(budget),
                stage: TimeoutStage::Queued,
            },
        );
    }
    let params: Json = match serde_json::from_slice(&msg.payload) {
        Ok(p @ (Json::Array(_) | Json::Object(_))) => p,
        Ok(other) => {
            return refuse(
                request,
                Error::invalid(
                    "params",
                    format!("must be an array or an object, got {other}"),
                ),
            );
        }
        Err(e) => return refuse(request, Error::invalid("params", format!("not JSON: {e}"))),
    };
    // Read rounded otherwise (review 125): a front end never sends one, a
    // peer on the bus might.
    if let Some(number) = crate::exact::inexact_integer(&msg.payload) {
        let problem = format!(
            "{}: send it as a string",
            crate::exact::inexact_integer_named(number)
        );
        return refuse(request, Error::invalid("params", problem));
    }
    let (cancel_tx, mut cancel_rx) = oneshot::channel();
    // One call per reply subject: a second message naming a running call's
    // reply subject (a peer on the bus) is refused, and cannot take over the
    // first one's cancel.
    let started = lock(&host.running).start(&reply, cancel_tx);
    let registration = match started {
        Start::Started(ticket) => Registration {
            running: &host.running,
            reply: &reply,
            ticket,
        },
        // Not answered: its answer would go to the running call's caller.
        Start::Duplicate => {
            host.warn_limited(
                &host.warned_duplicate,
                &format!(
                    "dropped a call of `{method}` whose reply subject names a call running here"
                ),
            );
            return;
        }
        // Its caller gave up before it came (it is answered, not run).
        Start::CancelledFirst => {
            return refuse(
                request,
                Error::Timeout {
                    after: Duration::from_millis(budget),
                    stage: TimeoutStage::Queued,
                },
            );
        }
    };
    // A late call comes to a host that was paused or overloaded, and its
    // caller has probably cancelled it; but the cancel comes on another
    // subscription, read by another task, which may not have run yet (CI
    // saw such a call run). Registered (so shutdown waits for it and its
    // reply subject is its own), it waits a moment for its cancel first.
    if late {
        let arrived = tokio::time::Instant::now();
        // A cancel already there wins over a grace already over (a host
        // that wakes late finds both ready).
        let waited = tokio::select! {
            biased;
            _ = &mut cancel_rx => false,
            () = tokio::time::sleep(LATE_CALL_GRACE) => true,
        };
        if !waited || host.draining.load(Ordering::Acquire) {
            drop(registration);
            if waited {
                return refuse(
                    request,
                    refusal("it is shutting down; the call was not started"),
                );
            }
            host.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                method,
                "a late call cancelled by its caller before it started"
            );
            return;
        }
        // What is left, by the clock (an overloaded host wakes late).
        timeout = timeout.saturating_sub(arrived.elapsed());
        if timeout.is_zero() {
            drop(registration);
            return refuse(
                request,
                Error::Timeout {
                    after: Duration::from_millis(budget),
                    stage: TimeoutStage::Queued,
                },
            );
        }
    }
    // Given to the pool: if the call is given up (its caller's cancel, or
    // this host's deadline) while its worker runs on, the pool keeps the
    // notice until the worker is done, and dropping it tells the front end
    // (`done`), which keeps the call's place of its key until then.
    let runs_on = Arc::new(AtomicBool::new(false));
    let keep = {
        let (host, reply, token, runs_on, to) = (
            host.clone(),
            reply.clone(),
            token,
            runs_on.clone(),
            request.bundle_to(),
        );
        Abandoned::new(move || {
            runs_on.store(true, Ordering::Release);
            Box::new(DoneNotice {
                host: host.clone(),
                // A copy: one bundle's reply subject is a slice of its
                // whole message, which a worker running on must not keep
                // (review 171).
                reply: async_nats::Subject::from(reply.as_str()),
                token,
                to: to.clone(),
            })
        })
    };
    // The front end owns retries (on any host); a retry here would run an
    // idempotent call again behind a caller that asked for none.
    let mut call = Box::pin(host.pool.call(
        method,
        params,
        CallOptions {
            timeout: Some(timeout),
            retry: false,
            request_id,
            abandoned: Some(keep),
            ..CallOptions::default()
        },
    ));
    // A call alone, or one that came late (its acknowledgement counts
    // from its start, after the grace above), has a timer of its own,
    // counted from here (review 172). Waiting on its bundle's, it spends
    // the task's budget as a timer would: the bundle's calls wake
    // together, and one whose answer or cancel the budget held back is
    // answered on the next poll, not acknowledged first.
    let acks = if late { None } else { request.acks() };
    let ack_at = tokio::time::Instant::now() + host.config.ack_delay;
    let ack = async {
        match &acks {
            Some(acks) => tokio::task::coop::cooperative(acks.wait()).await,
            None => tokio::time::sleep_until(ack_at).await,
        }
    };
    tokio::pin!(ack);
    let mut acked = false;
    let outcome = loop {
        tokio::select! {
            // Its caller gave up (looked at first, when both are ready):
            // dropping the call tells the worker to cancel.
            biased;
            _ = &mut cancel_rx => break None,
            r = &mut call => break Some(r),
            () = &mut ack, if !acked => {
                acked = true;
                host.outbox.publish_bundled(reply.clone(), host.status("accepted", &token), Bytes::new(), request.bundle_to());
            }
        }
    };
    // Dropped, the call gives its notice to the worker still running it, if any.
    drop(call);
    drop(registration);
    let runs_on = runs_on.load(Ordering::Acquire);
    match outcome {
        // Answered; if its worker runs on past this host's deadline, the
        // answer says so, and `done` follows.
        Some(r) => answer(&host, request, method, &token, r, runs_on),
        None => {
            host.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(method, runs_on, "call cancelled by its caller");
            // Which host to wait for (the cancel may have come before the
            // acknowledgement), or that it is over here.
            let status = if runs_on { wire::RUNNING } else { wire::DONE };
            host.outbox.publish_bundled(
                reply.clone(),
                host.status(status, &token),
                Bytes::new(),
                request.bundle_to(),
            );
        }
    }
}

/// A call's token as it came (echoed on every notice and answer about
/// it): up to 64 letters and digits, kept without an allocation; empty
/// when it came with none or another (a front end of an earlier version).
#[derive(Clone, Copy)]
struct Token {
    bytes: [u8; 64],
    len: u8,
}

impl Token {
    fn new(token: &str) -> Token {
        let mut t = Token {
            bytes: [0; 64],
            len: 0,
        };
        if token.len() <= t.bytes.len() && token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            t.bytes[..token.len()].copy_from_slice(token.as_bytes());
            t.len = token.len() as u8;
        }
        t
    }
}

impl std::ops::Deref for Token {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII letters and digits are ever kept (`new`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

/// Tells a front end, when dropped, that a call it gave up on is over here
/// (its worker answered it or ended).
struct DoneNotice {
    host: Arc<Host>,
    reply: async_nats::Subject,
    token: Token,
    /// Where it may be bundled.
    to: Option<async_nats::Subject>,
}

impl Drop for DoneNotice {
    fn drop(&mut self) {
        // Through the same outbox as the call's answer (a `done` may still
        // come first, when the worker ends as its call is answered: the
        // front end takes either order).
        let reply = self.reply.clone();
        let headers = self.host.status(wire::DONE, &self.token);
        self.host
            .outbox
            .publish_bundled(reply, headers, Bytes::new(), self.to.take());
    }
}

impl Host {
    /// Logs `message` as a warning at most once a minute by `warned`
    /// (at debug otherwise).
    fn warn_limited(&self, warned: &Mutex<Option<tokio::time::Instant>>, message: &str) {
        let mut warned = lock(warned);
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *warned = Some(tokio::time::Instant::now());
            tracing::warn!("{message}");
        } else {
            tracing::debug!("{message}");
        }
    }

    /// The services-protocol endpoint a call of `method` comes to.
    fn endpoint_of(&self, method: &str) -> String {
        if self.endpoints.contains(method) {
            method.replace('.', "-")
        } else {
            "dynamic".to_owned()
        }
    }

    /// Counts something of a call of `method` under its endpoint.
    fn count(&self, method: &str, f: impl FnOnce(&mut Counted)) {
        let endpoint = if self.endpoints.contains(method) && !method.contains('.') {
            std::borrow::Cow::Borrowed(method)
        } else {
            std::borrow::Cow::Owned(self.endpoint_of(method))
        };
        let mut counts = lock(&self.counted);
        match counts.get_mut(endpoint.as_ref()) {
            Some(c) => f(c),
            None => f(counts.entry(endpoint.into_owned()).or_default()),
        }
    }

    /// The front end's inbox token of a bundled call with reply subject
    /// `reply`, when `reply` is a call's subject there
    /// (`<front_inboxes><inbox>.<number>`): its answers and notices may be
    /// bundled to `<front_inboxes><inbox>.b`.
    fn front_inbox_of<'a>(&self, reply: &'a str) -> Option<&'a str> {
        let rest = reply.strip_prefix(&self.front_inboxes)?;
        if reply.starts_with(&self.host_inboxes) {
            return None;
        }
        let (inbox, id) = rest.split_once('.')?;
        let ours = !inbox.is_empty()
            && inbox
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit());
        ours.then_some(inbox)
    }

    /// The headers of a status message (`accepted`, `running`, `done`) about a call.
    fn status(&self, status: &'static str, token: &str) -> Fields {
        let mut headers = Fields::new();
        headers.insert(Name::Status, status);
        if !token.is_empty() {
            headers.insert(Name::Token, token);
        }
        headers.insert(Name::Host, self.id.as_str());
        headers.insert(Name::Instance, self.service_id.as_str());
        headers
    }
}

/// Sends a call's answer, with the services protocol's error headers,
/// through the outbox (behind the call's acknowledgement).
/// `runs_on`: the call's worker runs on past it (the host's deadline
/// ended the call): a `done` notice follows when the worker is done.
fn answer(
    host: &Host,
    request: Incoming,
    method: &str,
    token: &str,
    outcome: Result<Json>,
    runs_on: bool,
) {
    let mut body = wire::answer_body(&outcome);
    let mut outcome = outcome;
    let limit = host.client.max_payload();
    if body.len() + 1024 > limit {
        let e = Error::TooLarge {
            what: format!(
                "the answer of `{method}` ({} bytes; it ran, and its result is lost), against the NATS server's max_payload",
                body.len()
            ),
            limit: limit as u64,
        };
        body = wire::answer_body(&Err(e.clone()));
        outcome = Err(e);
    }
    let mut headers = Fields::new();
    headers.insert(Name::Host, host.id.as_str());
    if !token.is_empty() {
        headers.insert(Name::Token, token);
    }
    if runs_on {
        headers.insert(Name::RunsOn, "1");
    }
    let started = !matches!(&outcome, Err(e) if wire::not_started(e));
    // With the worker's number in the body: which death this was; or which
    // instance's `done` (or loss) to wait for; or, for a refusal, which
    // instance refused (a front end takes it only from the instance that
    // acknowledged the call, if one did: review 191).
    if runs_on || !started || matches!(&outcome, Err(Error::WorkerCrashed { .. })) {
        headers.insert(Name::Instance, host.service_id.as_str());
    }
    if outcome.is_err() {
        host.count(method, |c| {
            c.errors += u64::from(started);
            c.not_started += u64::from(!started);
        });
    }
    headers.insert(Name::Started, if started { "1" } else { "0" });
    if let Err(e) = &outcome {
        headers.insert(Name::ServiceError, e.kind().as_str());
        headers.insert(Name::ServiceErrorCode, if started { "500" } else { "503" });
    }
    match request {
        Incoming::Alone(request, _) => host.outbox.send(Outgoing::Answer {
            request: Box::new(request),
            headers: headers.to_map(),
            payload: body.into(),
            method: method.to_owned(),
        }),
        Incoming::Bundled { message, to, .. } => {
            if let Some(reply) = message.reply {
                host.outbox.publish_bundled(reply, headers, body.into(), to);
            }
        }
    }
}

async fn cancel_on_request(host: Arc<Host>, mut cancels: async_nats::Subscriber) {
    while let Some(msg) = cancels.next().await {
        // A reply subject: short, printable, no spaces (anything else is
        // not one of ours, and is not kept).
        let Ok(reply) = std::str::from_utf8(&msg.payload) else {
            continue;
        };
        if reply.is_empty()
            || reply.len() > MAX_REPLY_SUBJECT
            || !reply.bytes().all(|b| b.is_ascii_graphic())
        {
            continue;
        }
        let had = lock(&host.running).cancel(reply);
        // A question (`asking`): asked with the call's own reply subject,
        // which must be a front end's inbox of this deployment (anyone who
        // may cancel could otherwise have every host publish where it
        // names).
        if msg.reply.as_deref() == Some(reply)
            && reply.starts_with(&host.front_inboxes)
            && !reply.starts_with(&host.host_inboxes)
            // Silent under a flood of questions: the asker then ends the
            // call as lost, as when a host does not answer.
            && host.answers_queued.load(Ordering::Acquire) < MAX_ANSWERS_QUEUED
        {
            let age = (msg.headers.as_ref())
                .and_then(|h| h.get(wire::SENT))
                .map(|v| v.as_str())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::MAX, |sent| {
                    Duration::from_millis(unix_ms().saturating_sub(sent))
                });
            let maybe = had || lock(&host.seen).asked(reply, age);
            let status = if maybe { wire::MAYBE } else { wire::UNSEEN };
            host.outbox.publish_counted(
                reply.to_owned(),
                host.status(status, ""),
                &host.answers_queued,
            );
        }
    }
}

/// The hash of what a pool announces ([`wire::methods_hash`]): every
/// method it serves on NATS, with its metadata, and generic mode.
fn methods_hash(methods: &[crate::workers::MethodInfo], dynamic: bool) -> String {
    let announced: Vec<_> = methods
        .iter()
        .filter(|m| wire::method_is_subject_safe(&m.name))
        .map(wire::method_metadata)
        .collect();
    wire::methods_hash(&announced, dynamic)
}

/// Answers to questions a host lets wait to be published, at most.
const MAX_ANSWERS_QUEUED: usize = 4096;

/// Cancels that came before their calls are remembered this long.
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(60);
/// And at most this many of them (a peer on the bus could send any number);
/// the oldest make way.
const EARLY_CANCEL_MAX: usize = 4096;
/// The longest reply subject a cancel may name (a front end's are about 40
/// bytes).
const MAX_REPLY_SUBJECT: usize = 128;

/// What [`Running::start`] found.
enum Start {
    Started(u64),
    Duplicate,
    CancelledFirst,
}

/// A call's place in [`Running`], given up when dropped: however its task
/// ends (an answer, a cancel, a refusal, or a panic in the pool's call,
/// which would otherwise leave shutdown waiting for it).
struct Registration<'a> {
    running: &'a Mutex<Running>,
    reply: &'a str,
    ticket: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(self.running).finish(self.reply, self.ticket);
    }
}

/// A running call's reply subject, as the call has it (a clone is a
/// count, not a copy), looked up by `&str`.
#[derive(PartialEq, Eq)]
struct ReplyKey(async_nats::Subject);

impl std::hash::Hash for ReplyKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the `str` it is borrowed as.
        self.0.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ReplyKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The calls running on a host, by reply subject, and the cancels that came
/// first: a cancel and its call arrive on different subscriptions, and a
/// call is registered by a task of its own, so the cancel can win the race
/// (a host paused with both queued always sees it so).
#[derive(Default)]
struct Running {
    calls: HashMap<ReplyKey, (u64, oneshot::Sender<()>)>,
    next: u64,
    early: std::collections::HashSet<String>,
    /// The early cancels in the order they came, to forget the oldest.
    early_order: std::collections::VecDeque<(tokio::time::Instant, String)>,
}

impl Running {
    /// Whether a call with this reply subject runs.
    fn runs(&self, reply: &async_nats::Subject) -> bool {
        self.calls.contains_key(reply.as_str())
    }

    /// Registers a call, unless one with this reply subject runs already or
    /// its cancel came first.
    fn start(&mut self, reply: &async_nats::Subject, cancel: oneshot::Sender<()>) -> Start {
        if self.early.remove(reply.as_str()) {
            self.early_order.retain(|(_, r)| r != reply.as_str());
            return Start::CancelledFirst;
        }
        if self.calls.contains_key(reply.as_str()) {
            return Start::Duplicate;
        }
        self.next += 1;
        self.calls
            .insert(ReplyKey(reply.clone()), (self.next, cancel));
        Start::Started(self.next)
    }

    /// Forgets a call that ended, if it is still this one.
    fn finish(&mut self, reply: &str, ticket: u64) {
        if self.calls.get(reply).is_some_and(|(t, _)| *t == ticket) {
            self.calls.remove(reply);
        }
    }

    /// Cancels the call with reply subject `reply`, or notes the cancel
    /// for a call yet to come; whether the call was running here.
    fn cancel(&mut self, reply: &str) -> bool {
        match self.calls.remove(reply) {
            Some((_, tx)) => {
                let _ = tx.send(());
                true
            }
            None => {
                let now = tokio::time::Instant::now();
                while let Some((at, oldest)) = self.early_order.front() {
                    if now.duration_since(*at) < EARLY_CANCEL_KEPT
                        && self.early_order.len() < EARLY_CANCEL_MAX
                    {
                        break;
                    }
                    self.early.remove(oldest);
                    self.early_order.pop_front();
                }
                if self.early.insert(reply.to_owned()) {
                    self.early_order.push_back((now, reply.to_owned()));
                }
                false
            }
        }
    }

    /// Cancels every call; how many there were.
    fn cancel_all(&mut self) -> usize {
        let n = self.calls.len();
        for (_, (_, tx)) in self.calls.drain() {
            let _ = tx.send(());
        }
        n
    }

    fn len(&self) -> usize {
        self.calls.len()
    }
}

impl Host {
    /// Whether a heartbeat was written on the connection it has now.
    fn announced(&self) -> bool {
        self.stats.connects.load(Ordering::Relaxed) == self.announced_on.load(Ordering::Acquire)
    }

    /// Publishes a heartbeat and waits for it to be written, then takes
    /// calls on this connection.
    async fn announce(&self) -> std::result::Result<(), async_nats::client::FlushError> {
        let connects = self.stats.connects.load(Ordering::Relaxed);
        let silent = lock(&self.last_beat).elapsed();
        self.beat().await;
        self.client.flush().await?;
        // After a silence a front end may have taken as the server's drop
        // (`asking`; `dead_after` short of theirs, for heartbeats lost on
        // the way), calls sent before now may have been asked about and
        // sent elsewhere. Not on its first connection: its heartbeat went
        // out before its endpoints existed.
        let long = silent >= self.config.server_stale_after;
        self.announced_at_ms.store(
            if connects > 1 && long { unix_ms() } else { 0 },
            Ordering::Release,
        );
        self.announced_on.store(connects, Ordering::Release);
        Ok(())
    }

    /// Publishes one heartbeat.
    async fn beat(&self) {
        self.beat_with(false).await;
    }

    /// Publishes one heartbeat; `retired`: its last.
    async fn beat_with(&self, retired: bool) {
        let s = self.pool.status();
        let beat = wire::Heartbeat {
            host: self.id.clone(),
            service_id: self.service_id.clone(),
            methods_hash: if self.endpoints_ready.load(Ordering::Acquire) {
                self.methods_hash.clone()
            } else {
                wire::NONE_ANNOUNCED.to_owned()
            },
            in_flight: lock(&self.running).len(),
            processes: s.processes,
            healthy: s.healthy,
            restarts: s.restarts,
            crashes: s.crashes,
            draining: self.draining.load(Ordering::Acquire),
            retired,
            workers: s
                .workers
                .iter()
                .map(|w| wire::HeartbeatWorker {
                    pid: w.pid,
                    in_flight: w.in_flight,
                    calls: w.calls,
                    uptime_ms: w.uptime.as_millis() as u64,
                })
                .collect(),
        };
        if let Ok(body) = serde_json::to_vec(&beat)
            && self
                .client
                .publish(self.subjects.heartbeat(&self.id), body.into())
                .await
                .is_ok()
            && self.client.connection_state() == async_nats::connection::State::Connected
        {
            *lock(&self.last_beat) = tokio::time::Instant::now();
        }
    }
}

/// Announces the host every `heartbeat` (and as soon as it can on a new
/// connection: it refuses calls until then); cancels every call in flight once
/// NATS has been unreachable long enough that the front ends count this host
/// as dead (their callers have their answer already).
async fn heartbeat(host: Arc<Host>) {
    let mut tick = tokio::time::interval(host.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cut_off_since: Option<tokio::time::Instant> = None;
    loop {
        // On a new connection, it looks often, to announce itself soon.
        if host.announced() {
            tick.tick().await;
        } else {
            tokio::time::sleep(host.config.heartbeat.min(Duration::from_millis(50))).await;
        }
        if host.client.connection_state() == async_nats::connection::State::Connected {
            cut_off_since = None;
            if host.announced() {
                host.beat().await;
            } else {
                let _ = tokio::time::timeout(host.config.heartbeat, host.announce()).await;
            }
            continue;
        }
        let since = *cut_off_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= host.config.dead_after() {
            let gone = lock(&host.running).cancel_all();
            if gone > 0 {
                tracing::warn!(
                    calls = gone,
                    "NATS unreachable: cancelling the calls in flight (their callers have given up)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::MethodInfo;

    fn method(name: &str, idempotent: bool) -> MethodInfo {
        MethodInfo::named(name, idempotent)
    }

    #[test]
    fn the_methods_hash_changes_with_any_announced_fact() {
        let base = methods_hash(&[method("a", true), method("b", true)], false);
        assert_eq!(
            base,
            methods_hash(&[method("b", true), method("a", true)], false)
        );
        // A redeploy that makes a method non-idempotent must be read again.
        assert_ne!(
            base,
            methods_hash(&[method("a", true), method("b", false)], false)
        );
        let mut cached = method("a", true);
        cached.cache_ttl_s = Some(5.0);
        assert_ne!(base, methods_hash(&[cached, method("b", true)], false));
        assert_ne!(
            base,
            methods_hash(&[method("a", true), method("b", true)], true)
        );
    }

    #[test]
    fn a_cancel_that_comes_first_stops_its_call_and_a_duplicate_cannot_take_over() {
        let mut r = Running::default();
        r.cancel("_INBOX.x.1");
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            r.start(&"_INBOX.x.1".into(), tx),
            Start::CancelledFirst
        ));
        let (tx, mut rx) = oneshot::channel();
        let Start::Started(ticket) = r.start(&"_INBOX.x.2".into(), tx) else {
            panic!("not started")
        };
        let (tx2, _rx2) = oneshot::channel();
        assert!(matches!(
            r.start(&"_INBOX.x.2".into(), tx2),
            Start::Duplicate
        ));
        // The duplicate's end does not forget the running call.
        r.finish("_INBOX.x.2", ticket + 1);
        assert_eq!(r.len(), 1);
        r.cancel("_INBOX.x.2");
        assert!(rx.try_recv().is_ok());
        // Early cancels are bounded.
        for i in 0..(EARLY_CANCEL_MAX + 10) {
            r.cancel(&format!("_INBOX.y.{i}"));
        }
        assert!(r.early.len() <= EARLY_CANCEL_MAX && r.early_order.len() <= EARLY_CANCEL_MAX);
        // A flood makes the oldest go, not the newest: a cancel that has
        // just come still stops its call.
        r.cancel("_INBOX.z.1");
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            r.start(&"_INBOX.z.1".into(), tx),
            Start::CancelledFirst
        ));
    }

    #[test]
    fn a_call_whose_task_panics_gives_up_its_registration() {
        let running = Mutex::new(Running::default());
        let (tx, _rx) = oneshot::channel();
        let Start::Started(ticket) = lock(&running).start(&"_INBOX.p.1".into(), tx) else {
            panic!("not started")
        };
        let reply = String::from("_INBOX.p.1");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _registration = Registration {
                running: &running,
                reply: &reply,
                ticket,
            };
            panic!("the pool's call panicked");
        }));
        assert!(panicked.is_err());
        // Shutdown, which waits while calls are registered, does not wait
        // for it; and the reply subject is free for a new call.
        assert_eq!(lock(&running).len(), 0);
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            lock(&running).start(&"_INBOX.p.1".into(), tx),
            Start::Started(_)
        ));
    }
}
