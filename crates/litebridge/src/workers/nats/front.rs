//! The front end's side: `bridge.call` over NATS to any host serving the method.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{Client, StatusCode};
use futures_util::StreamExt;
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::{Error, Result, TimeoutStage};
use crate::resilience::RetryPolicy;
use crate::sync::{lock, read, write};
use crate::workers::ledger::{FirstUnknown, Ledger, outcome_unknown};
use crate::workers::nats::NatsConfig;
use crate::workers::nats::asking::{Asking, Instances, Verdict};
use crate::workers::nats::bundle;
use crate::workers::nats::fields::{Fields, Name};
use crate::workers::nats::mailbox;
use crate::workers::nats::outbox::{self, Outbox};
use crate::workers::nats::wire::{self, Heartbeat, Subjects};
use crate::workers::pool::cache_key;
use crate::workers::{CallOptions, MethodInfo, PoolEvent, PoolStatus, WorkerConfig, WorkerStatus};

/// Per-method state (breakers, statistics) is kept for this many names;
/// calls to more share one entry, `(other)`.
const MAX_METHODS: usize = 256;
/// Hosts followed at most (heartbeats of more are ignored, with a warning).
const MAX_HOSTS: usize = 1024;
/// Methods of one host's announcement kept at most.
const MAX_METHODS_PER_HOST: usize = 1024;
/// Workers of one host's heartbeat kept at most.
const MAX_WORKERS_PER_HOST: usize = 1024;
/// The most bytes of methods' names, descriptions and parameters kept of
/// one host: what a front end keeps of all is at most [`MAX_HOSTS`] times
/// this (review 191).
const MAX_ANNOUNCED_BYTES: usize = 256 * 1024;
/// The most workers of all hosts a status lists (each host's heartbeat
/// names up to [`MAX_WORKERS_PER_HOST`]; a million made every
/// `bridge.stats` take seconds: review 191).
const MAX_WORKERS_SHOWN: usize = 4096;

/// `bridge.call` over NATS: each call goes to one host of the queue group
/// serving its method, with the same deadlines, retries, breakers, cache and
/// statistics as the local [`WorkerPool`](crate::workers::WorkerPool).
/// Cheap to clone.
#[derive(Clone)]
pub struct NatsBridge {
    shared: Arc<Front>,
}

impl std::fmt::Debug for NatsBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBridge")
            .field("url", &self.shared.config.url)
            .finish_non_exhaustive()
    }
}

/// A worker host as this front end sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// Its id.
    pub id: String,
    /// Calls in flight on it, from its last heartbeat.
    pub in_flight: usize,
    /// Its worker processes.
    pub processes: usize,
    /// Whether its pool says it is healthy.
    pub healthy: bool,
    /// Whether it is shutting down.
    pub draining: bool,
    /// Since its last heartbeat.
    pub last_seen: Duration,
    /// The methods it serves.
    pub methods: Vec<String>,
}

/// A host's methods in the order it announced them, found by name at once:
/// a front end looks each call's method up in every host it knows, and
/// through lists that took 19 ms a call at 1,024 hosts of 1,024 methods
/// (review 191). A name announced twice is the first.
#[derive(Default)]
struct Methods {
    list: Vec<MethodInfo>,
    by_name: HashMap<String, usize>,
}

impl Methods {
    fn new(list: Vec<MethodInfo>) -> Methods {
        let mut by_name = HashMap::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            by_name.entry(m.name.clone()).or_insert(i);
        }
        Methods { list, by_name }
    }

    fn get(&self, name: &str) -> Option<&MethodInfo> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    fn iter(&self) -> std::slice::Iter<'_, MethodInfo> {
        self.list.iter()
    }
}

struct Known {
    beat: Option<Heartbeat>,
    /// Where its window to be heard from starts: its last heartbeat, or a
    /// fresh start after this end lost its connection.
    last_seen: Instant,
    /// Its last heartbeat (none for a host known only from its INFO).
    heard: Option<Instant>,
    /// From the services protocol's INFO.
    methods: Methods,
    dynamic: bool,
    /// It reads bundles of calls (its services-protocol metadata says
    /// `bundles`).
    bundles: bool,
    /// The instance (services-protocol id) and `methods_hash` the methods
    /// above were read for.
    read_for: Option<(String, String)>,
    /// Instances heard from lately (two live hosts sharing an id alternate).
    instances: Vec<(String, Instant)>,
    /// A `let_go_retired` runs for it: one at a time, however many
    /// heartbeats say it retired.
    letting_go: bool,
    /// When its INFO was last asked for: once a heartbeat's time at most,
    /// however many heartbeats say its methods changed (review 225: each
    /// forged one made every front end ask it).
    asked: Option<Instant>,
}

/// What reaches a call waiting for its answer.
enum Reply {
    Message(Note),
    /// The call is lost; with the death to count against its method, when
    /// its host was lost (not the connection to NATS).
    Lost(Error, Option<u64>),
}

/// A message about a call, as it reaches the call (alone or from a bundle).
struct Note {
    /// The server's status (its "no responders").
    status: Option<StatusCode>,
    fields: Fields,
    payload: bytes::Bytes,
}

/// A method's calls in flight from this end, and the subject they are
/// sent to (made once while any is in flight).
struct InFlight {
    calls: usize,
    subject: async_nats::Subject,
}

struct Pending {
    tx: mailbox::Sender<Reply>,
    method: String,
    /// The host running the call, as its acknowledgement (or a `running`
    /// notice, or an answer saying its worker runs on) named it, and its
    /// instance (a host restarted under the same id is another instance).
    host: Option<(String, String)>,
    /// Its host said `done` (the call is over there) before this end
    /// stopped waiting.
    done: bool,
    /// What its notices and answer must carry ([`wire::TOKEN`]), in hex.
    token: u64,
    /// It is being asked about (`asking`): the hosts' answers, which carry
    /// no token, count for it.
    asking: bool,
}

/// A call its caller gave up on (or that its host's deadline ended) while
/// a worker may still run it: it keeps a place of its caller's key
/// ([`CallOptions::abandoned`]) until its host says `done`, answers it
/// after all, or is lost; until its acknowledgement's time passes with no
/// host known to have it; and at most the default deadline past its own
/// (by then its host has found the worker stuck and replaced it). Losing
/// the connection to NATS gives none back.
struct Kept {
    _place: Box<dyn std::any::Any + Send>,
    host: Option<(String, String)>,
    token: u64,
}

struct Front {
    client: Client,
    /// Calls and their cancels, published together ([`Outbox`]).
    outbox: Outbox,
    /// The reply subjects of bundles of calls, for "no responders".
    replies: Arc<bundle::Replies>,
    /// Calls in flight by method (locked after `calls`), for the size
    /// of bundles, with the subject they go to.
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Calls are bundled only from then on (two heartbeats after this end
    /// connected, or connected again): hosts of an older version, and
    /// instances that replaced others meanwhile, are heard by then.
    bundles_from: Mutex<Instant>,
    /// When a warning about an unreadable bundle was last logged.
    warned_bundle: Mutex<Option<Instant>>,
    config: NatsConfig,
    subjects: Subjects,
    /// Replies come to `<inbox>.<call id>`.
    inbox: String,
    calls: Mutex<HashMap<u64, Pending>>,
    /// Calls given up on while a worker may run them (locked after `calls`).
    kept: Mutex<HashMap<u64, Kept>>,
    /// The key of the calls' tokens ([`wire::TOKEN`]).
    tokens: std::hash::RandomState,
    /// The key that makes a call's id (its reply subject's last token) from
    /// its number: a peer that saw other calls' cannot name the next ones
    /// (review 194: it could send calls naming them ahead, and a host that
    /// drops a call naming a reply subject it took already dropped the
    /// real ones).
    ids: std::hash::RandomState,
    next_call: AtomicU64,
    hosts: RwLock<HashMap<String, Known>>,
    /// The host instances heard from, for questions about calls no host
    /// acknowledged (`asking`).
    instances: Mutex<Instances>,
    connected: watch::Sender<bool>,
    call_timeout: Duration,
    /// Idempotent methods: retried after a crash, a lost host or a lost
    /// connection, and when a host did not start the call.
    retry_started: RetryPolicy,
    /// Other methods: retried only when a host did not start the call.
    retry_unstarted: RetryPolicy,
    /// Breakers, retries' events and statistics.
    ledger: Arc<Ledger>,
    late: AtomicU64,
    /// When [`Front::warn_once_a_minute`] last logged.
    warned: Mutex<Option<Instant>>,
    /// Where this end sends itself probes of its link, the nonces of the
    /// probes sent and not back yet (with whether each came back), and a
    /// wake-up for each that comes. Only those: a peer that may publish on
    /// the subject flooded made-up nonces through a ring of the latest
    /// ones, and pushed each real one out (review 225).
    probe_subject: String,
    probes_out: Mutex<HashMap<u64, bool>>,
    probe_came: tokio::sync::Notify,
    /// When a warning about the probes was last logged (a limiter of its
    /// own: peers on the bus can trigger the other warnings at will).
    warned_probe: Mutex<Option<Instant>>,
    closing: AtomicBool,
    cache: OnceLock<crate::store::Cache>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// An error a host gave for a call it did not start: safe to send elsewhere.
fn unstarted(e: &Error) -> bool {
    matches!(
        e,
        Error::Overloaded {
            queue: "worker host",
            ..
        } | Error::Unavailable {
            what: "worker host",
            ..
        }
    )
}

/// What one attempt of a call goes by.
struct Attempt<'a> {
    deadline: Instant,
    timeout: Duration,
    /// Whether a timeout of the attempt is the method's (see `call_once`).
    fair: &'a AtomicBool,
    /// The call's first unknown outcome and first worker death.
    unknown: &'a FirstUnknown,
    /// What its caller keeps of it once given up on while a worker runs it.
    abandoned: Option<&'a crate::workers::Abandoned>,
}

/// The number under which a death is counted against the methods whose
/// calls it took down (once each, however many calls): `worker` (the
/// host's pool's own number for it) of host `instance` (a services-protocol
/// id, new each time a host starts), or with no worker the host itself,
/// lost. Not the host's name (a restarted host may keep it) nor a pid
/// (workers in containers of their own are all pid 1): either would merge
/// two deaths, and keep a crashing method's breaker shut.
fn death(instance: &str, worker: Option<u64>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (instance, worker).hash(&mut h);
    h.finish()
}

/// A number of its own for a death that cannot be told apart from others
/// (a host of an older version names neither its instance nor its
/// worker): each call's counts. Over-counting a death opens a breaker
/// early, where merging two would keep a crashing method's shut.
fn a_death() -> u64 {
    static DEATHS: AtomicU64 = AtomicU64::new(1);
    DEATHS.fetch_add(1, Ordering::Relaxed)
}

/// A call's token as it travels ([`wire::TOKEN`]): 16 lowercase hex
/// digits, written without an allocation.
struct TokenHex([u8; 16]);

impl TokenHex {
    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written (`token_hex`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn token_hex(token: &u64) -> TokenHex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((token >> (60 - 4 * i)) & 0xf) as usize];
    }
    TokenHex(out)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NatsBridge {
    /// Connects to NATS and starts following the worker hosts. Calls use the
    /// deadline, retry and breaker settings of `calls` (its command and
    /// process settings are the hosts' business).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad configuration; [`Error::Unavailable`] when
    /// NATS cannot be reached within `connect_timeout`.
    pub async fn connect(config: NatsConfig, calls: &WorkerConfig) -> Result<NatsBridge> {
        config.validate()?;
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let client = super::connect(
            &config,
            "litebridge front end",
            super::config::Side::Front,
            Some(event_tx),
        )
        .await?;
        let subjects = Subjects::new(&config.prefix);
        let inbox = client.new_inbox();
        let unavailable = |e: &dyn std::fmt::Display| Error::Unavailable {
            what: "NATS",
            reason: format!("{}: {e}", config.url),
        };
        let replies = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| unavailable(&e))?;
        let beats = client
            .subscribe(subjects.heartbeats())
            .await
            .map_err(|e| unavailable(&e))?;
        // The inbox's random part names this end's own probe subject.
        let probe_subject = subjects.probe(inbox.rsplit('.').next().unwrap_or_default());
        let probes = client
            .subscribe(probe_subject.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        // An attempt that may have run is tried again only while the method
        // is still idempotent by every host's word (see `call`).
        let retry_started = calls
            .retry
            .clone()
            .retry_if(|e| unstarted(e) || (outcome_unknown(e) && e.is_recoverable()));
        let retry_unstarted = calls.retry.clone().retry_if(unstarted);
        // Kept as long as a bundle's calls wait for a word of a host.
        let bundle_replies = Arc::new(bundle::Replies::new(&inbox, config.ack_within()));
        let shared = Arc::new(Front {
            outbox: Outbox::start(client.clone(), Some(bundle_replies.clone())),
            replies: bundle_replies,
            in_flight: Mutex::new(HashMap::new()),
            bundles_from: Mutex::new(Instant::now() + 2 * config.heartbeat),
            warned_bundle: Mutex::new(None),
            client,
            subjects,
            inbox,
            calls: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            tokens: std::hash::RandomState::new(),
            ids: std::hash::RandomState::new(),
            next_call: AtomicU64::new(1),
            hosts: RwLock::new(HashMap::new()),
            instances: Mutex::new(Instances::new(
                config.dead_after(),
                config.server_stale_after,
                // A question waits at most half the acknowledgement's time.
                config.ack_within() + config.ack_timeout / 2,
            )),
            connected: watch::Sender::new(true),
            call_timeout: calls.call_timeout,
            retry_started,
            retry_unstarted,
            ledger: Ledger::new(&calls.breaker),
            late: AtomicU64::new(0),
            warned: Mutex::new(None),
            probe_subject,
            probes_out: Mutex::new(HashMap::new()),
            probe_came: tokio::sync::Notify::new(),
            warned_probe: Mutex::new(None),
            closing: AtomicBool::new(false),
            cache: OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        lock(&shared.instances).listening_again();
        let weak = Arc::downgrade(&shared);
        let tasks = vec![
            tokio::spawn(route_replies(weak.clone(), replies)),
            tokio::spawn(follow_heartbeats(weak.clone(), beats)),
            tokio::spawn(follow_probes(weak.clone(), probes)),
            tokio::spawn(watch_liveness(weak.clone())),
            tokio::spawn(follow_connection(weak.clone(), event_rx)),
        ];
        *lock(&shared.tasks) = tasks;
        let bridge = NatsBridge { shared };
        bridge.discover().await;
        Ok(bridge)
    }

    /// Asks every host serving now for its methods (the services protocol's
    /// INFO), waiting a short while for the answers.
    async fn discover(&self) {
        let s = &self.shared;
        let inbox = s.client.new_inbox();
        let Ok(mut answers) = s.client.subscribe(inbox.clone()).await else {
            return;
        };
        let subject = format!("$SRV.INFO.{}", wire::service(&s.config.prefix));
        if s.client
            .publish_with_reply(subject, inbox, Default::default())
            .await
            .is_err()
        {
            return;
        }
        let until = Instant::now() + Duration::from_millis(300);
        while let Ok(Some(m)) = tokio::time::timeout_at(until, answers.next()).await {
            if let Ok(info) = serde_json::from_slice::<async_nats::service::Info>(&m.payload) {
                s.learn(&info, None);
            }
        }
    }

    /// Calls `method` with `params` on one host serving it.
    ///
    /// # Errors
    /// As [`WorkerPool::call`](crate::workers::WorkerPool::call), and:
    /// [`Error::Unavailable`] when no host serves the method (at once) or
    /// NATS stayed unreachable past `reconnect_grace` (the call was not
    /// sent); [`Error::HostLost`] when the host running it stopped
    /// answering; [`Error::CallOutcomeUnknown`] when the connection to NATS
    /// was lost with the call in flight; [`Error::TooLarge`] when the params
    /// are over the server's `max_payload`.
    pub async fn call(&self, method: &str, params: Json, options: CallOptions) -> Result<Json> {
        // One deadline for the call, from the moment it was asked: a wait
        // on another caller's cached call and a call of its own both end by it.
        let timeout = options.timeout.unwrap_or(self.shared.call_timeout);
        let deadline = Instant::now() + timeout;
        if method.starts_with('$') {
            return Err(Error::invalid(
                "method",
                format!(
                    "{method:?}: names starting with `$` belong to the worker protocol and cannot be called"
                ),
            ));
        }
        if !wire::method_is_subject_safe(method) {
            return Err(Error::invalid(
                "method",
                format!(
                    "{method:?} cannot be called over NATS: a name must be dot-separated letters, digits, `_` or `-`"
                ),
            ));
        }
        if let Some(cache) = self.shared.cache.get() {
            let declared = self.cache_ttl_s(method);
            if let Some((key, ttl)) = cache_key(method, &params, &options, declared) {
                // Boxed: a call that is not cached does not carry the
                // cache's future in its own (it is moved as the call is).
                return Box::pin(cache.get_or_load_by(
                    &key,
                    ttl,
                    Some((deadline, timeout)),
                    || self.call_uncached(method, params, options, deadline),
                ))
                .await;
            }
        }
        self.call_uncached(method, params, options, deadline).await
    }

    /// The call, uncached, ending by `deadline` (from `options.timeout`, or
    /// the default, when the caller asked).
    async fn call_uncached(
        &self,
        method: &str,
        params: Json,
        options: CallOptions,
        deadline: Instant,
    ) -> Result<Json> {
        let s = &self.shared;
        if s.closing.load(Ordering::Acquire) {
            return Err(Error::Unavailable {
                what: "workers",
                reason: "the bridge is shutting down".into(),
            });
        }
        let timeout = options.timeout.unwrap_or(s.call_timeout);
        // A caller that waited on a shared call of the cache and came to
        // run its own has a deadline that may have passed: nothing starts.
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            });
        }
        let state = self.state_name(method);
        let idempotent = self.idempotent(method);
        let custom;
        let base = if idempotent {
            &s.retry_started
        } else {
            &s.retry_unstarted
        };
        let policy = match (options.retry, options.max_retries) {
            (false, _) => RetryPolicy::none(),
            // Fewer than the server's, never more.
            (true, Some(n)) => {
                custom = base.clone().max_retries(n.min(base.retries()));
                custom
            }
            (true, None) => base.clone(),
        };
        let body =
            bytes::Bytes::from(serde_json::to_vec(&params).map_err(|e| Error::Internal {
                message: format!("params of `{method}`: {e}"),
            })?);
        let request_id = options.request_id.as_deref();
        // The first attempt whose outcome became unknown: if a later one
        // fails without starting, the caller must still learn the call may
        // have run.
        let unknown = FirstUnknown::default();
        // Whether a timeout is the method's, decided by each attempt as it
        // is sent (`call_once`); the last attempt's counts.
        let fair = AtomicBool::new(false);
        // A later attempt that fails without starting must not hide that
        // an earlier one may have run (nor count as the method's outcome).
        let r = s
            .ledger
            .run(
                method,
                state,
                &policy,
                deadline,
                &fair,
                &unknown,
                |_| async {
                    // After an attempt that may have run, another goes ahead
                    // only while every host announcing the method still
                    // declares it idempotent (a host of a new version may
                    // say otherwise): else that attempt's error is the end.
                    let earlier = unknown.get();
                    if let Some(e) = earlier.filter(|_| !self.idempotent(method)) {
                        return Err(e.of_method(false));
                    }
                    let r = self
                        .call_once(
                            method,
                            &body,
                            request_id,
                            Attempt {
                                deadline,
                                timeout,
                                fair: &fair,
                                unknown: &unknown,
                                abandoned: options.abandoned.as_ref(),
                            },
                        )
                        .await
                        .map_err(|e| e.of_method(self.idempotent(method)));
                    unknown.note(&r);
                    r
                },
            )
            .await;
        // A name no host announces is tracked once it succeeds (a host may
        // serve names it does not announce), while there is room.
        if r.is_ok() && state.is_none() && s.ledger.tracks(method).1 < MAX_METHODS {
            s.ledger.track(method);
        }
        // Never more than the method's idempotency when the call began.
        r.map_err(|e| if idempotent { e } else { e.of_method(false) })
    }

    /// One attempt: sent to the queue group, then waited for until its
    /// answer, its deadline, the loss of its host, or no acknowledgement.
    async fn call_once(
        &self,
        method: &str,
        body: &bytes::Bytes,
        request_id: Option<&str>,
        attempt: Attempt<'_>,
    ) -> Result<Json> {
        let Attempt {
            deadline,
            timeout,
            fair,
            unknown,
            abandoned,
        } = attempt;
        let s = &self.shared;
        self.wait_connected(deadline, timeout).await?;
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            });
        }
        // A timeout from here on is the method's only if the call has most
        // of the default deadline as it is sent (as in the pool): not when
        // its caller chose less, nor after a wait for NATS or a retry's
        // backoff. A host's own queue is not seen from here.
        fair.store(left >= s.call_timeout.mul_f64(0.9), Ordering::Relaxed);
        let limit = s.client.max_payload();
        if body.len() + 1024 > limit {
            return Err(Error::TooLarge {
                what: format!(
                    "params of `{method}` ({} bytes), against the NATS server's max_payload",
                    body.len()
                ),
                limit: limit as u64,
            });
        }
        // No known host serves it: NATS's no-responders would say so too,
        // but not while anything else (an operator's `nats sub '>'`)
        // listens on the subject.
        let per_bundle = self.serving(method)?;
        let id =
            std::hash::BuildHasher::hash_one(&s.ids, s.next_call.fetch_add(1, Ordering::Relaxed));
        // A `Subject` from the start: the outbox's and this call's are one
        // (a clone is a count, not a copy).
        let reply: async_nats::Subject = format!("{}.{id}", s.inbox).into();
        let token = std::hash::BuildHasher::hash_one(&s.tokens, id);
        let (tx, mut rx) = mailbox::mailbox();
        let subject = {
            let mut calls = lock(&s.calls);
            calls.insert(
                id,
                Pending {
                    tx,
                    method: method.to_owned(),
                    host: None,
                    done: false,
                    token,
                    asking: false,
                },
            );
            let mut in_flight = lock(&s.in_flight);
            match in_flight.get_mut(method) {
                Some(n) => {
                    n.calls += 1;
                    n.subject.clone()
                }
                None => {
                    let subject: async_nats::Subject = s.subjects.call(method).into();
                    in_flight.insert(
                        method.to_owned(),
                        InFlight {
                            calls: 1,
                            subject: subject.clone(),
                        },
                    );
                    subject
                }
            }
        };
        let mut guard = Waiting {
            front: s.clone(),
            id,
            reply: reply.clone(),
            ticket: None,
            cancel: true,
            asked: false,
            runs_on: false,
            abandoned: abandoned.cloned(),
            ack_by: now + s.config.ack_within(),
            deadline,
        };
        let mut headers = Fields::new();
        let left_ms = left.as_millis().max(1) as u64;
        headers.insert_number(Name::BudgetMs, left_ms);
        headers.insert_number(Name::Deadline, unix_ms() + left_ms);
        headers.insert(Name::Token, token_hex(&token).as_str());
        if let Some(rid) =
            request_id.filter(|r| r.len() <= 128 && r.bytes().all(|b| b.is_ascii_graphic()))
        {
            headers.insert(Name::RequestId, rid);
        }
        // Sent once async-nats has it, as with its own `publish`: the
        // acknowledgement's time counts from then. Until the outbox takes
        // it, the call can be withdrawn (its deadline, NATS lost, its
        // caller gone: `Waiting`), and then never leaves.
        let mut sending = s
            .outbox
            .call(subject, reply, headers, body.clone(), per_bundle);
        guard.ticket = Some(sending.ticket.clone());
        let mut early = None;
        // A message that came before the hand-off was reported (below).
        let mut held: Option<Reply> = None;
        // One timer for the call's waits: the deadline until the call is
        // handed over, then the acknowledgement's time (or the deadline,
        // if sooner) until the call is acknowledged or asked about, then
        // the deadline or the question's time. (A message that comes
        // before the hand-off is told waits with a timer of its own.)
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        let handed = tokio::select! {
            biased;
            r = sending.handed() => Some(r),
            got = rx.recv() => {
                early = Some(got);
                None
            }
            () = &mut timer => None,
        };
        match handed {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                guard.cancel = false;
                return Err(Error::Unavailable {
                    what: "NATS",
                    reason: format!("the call was not sent: {e}"),
                });
            }
            None if sending.ticket.withdraw() => {
                guard.cancel = false;
                return Err(match early {
                    None => Error::Timeout {
                        after: timeout,
                        stage: TimeoutStage::Queued,
                    },
                    Some(None) => Error::Unavailable {
                        what: "workers",
                        reason: "the bridge stopped; the call was not sent".into(),
                    },
                    Some(Some(_)) => Error::Unavailable {
                        what: "NATS",
                        reason: "the call was not sent: the connection to NATS was lost".into(),
                    },
                });
            }
            // Taken by the outbox: on its way, its outcome unknown from here.
            None => match early {
                Some(Some(Reply::Lost(e, _))) => return Err(e),
                Some(None) => {
                    return Err(Error::Unavailable {
                        what: "workers",
                        reason: "the bridge stopped".into(),
                    });
                }
                // A message about the call came before the outbox said it
                // had handed the call over: its thread can be preempted
                // between the two, while the call goes out, is answered
                // and the answer is routed here. It is taken first below,
                // before any that came since (dropping it lost answers to
                // fast calls, which then looked unacknowledged, under
                // load; put back behind the others, an answer could come
                // after the loss of NATS).
                Some(Some(m @ Reply::Message(_))) => {
                    match tokio::time::timeout_at(deadline, sending.handed()).await {
                        Ok(Ok(())) => held = Some(m),
                        Ok(Err(e)) => {
                            return Err(Error::Unavailable {
                                what: "NATS",
                                reason: format!("the call was not sent: {e}"),
                            });
                        }
                        Err(_) => {
                            fair.store(false, Ordering::Relaxed);
                            return Err(Error::Timeout {
                                after: timeout,
                                stage: TimeoutStage::InWorker { idempotent: false },
                            });
                        }
                    }
                }
                None => {
                    fair.store(false, Ordering::Relaxed);
                    return Err(Error::Timeout {
                        after: timeout,
                        stage: TimeoutStage::InWorker { idempotent: false },
                    });
                }
            },
        }
        let (sent, sent_unix) = (Instant::now(), unix_ms());
        let ack_by = sent + s.config.ack_within();
        guard.ack_by = ack_by;
        let mut acked = false;
        // Every host asked whether it had the call, once no host
        // acknowledged it in time (`asking`).
        let mut asking: Option<Asking> = None;
        // The instance of the host that acknowledged the call.
        let mut acked_by: Option<String> = None;
        timer.as_mut().reset(ack_by.min(deadline));
        loop {
            tokio::select! {
                // Messages first: one that came with the timer wins.
                biased;
                got = async {
                    match held.take() {
                        Some(m) => Some(m),
                        None => rx.recv().await,
                    }
                } => match got {
                    Some(Reply::Message(m)) => {
                        if m.status == Some(StatusCode::NO_RESPONDERS) {
                            // The server says so only before a host has the
                            // call: after an acknowledgement, it is a peer's,
                            // and while asking it is about the question.
                            if acked || asking.is_some() {
                                continue;
                            }
                            guard.cancel = false;
                            return Err(self.no_host(method));
                        }
                        let h = &m.fields;
                        let host = h.get(Name::Host).unwrap_or("(unnamed)");
                        let status = h.get(Name::Status);
                        if let Some(answer @ (wire::UNSEEN | wire::MAYBE)) = status {
                            let Some(a) = asking.as_mut() else { continue };
                            let instance = h.get(Name::Instance).unwrap_or_default();
                            match a.answer(answer == wire::UNSEEN, host, instance) {
                                Verdict::Waiting => continue,
                                Verdict::NeverTaken => {
                                    guard.cancel = false;
                                    return Err(self.never_taken());
                                }
                                Verdict::MayHave(host) => return Err(self.unacknowledged(Some(&host))),
                            }
                        }
                        if status == Some("accepted") {
                            // Late, while asking: the host had it, and the
                            // question cancelled it there.
                            if asking.is_some() {
                                return Err(self.unacknowledged(Some(host)));
                            }
                            if !acked {
                                acked = true;
                                acked_by = h.get(Name::Instance).map(str::to_owned);
                                timer.as_mut().reset(deadline);
                            }
                            continue;
                        }
                        guard.cancel = false;
                        // Answered at its host's deadline, its worker running on.
                        guard.runs_on = h.get(Name::RunsOn) == Some("1");
                        // A large answer is read in the turn of large
                        // answers (`crate::json::read_large_answer`), within
                        // the call's deadline: the turn's wait and the read
                        // both (a read past it goes on, unwaited for).
                        let r = if m.payload.len() <= crate::json::LARGE_ANSWER_BYTES {
                            wire::decode_answer(&m.payload, host)
                        } else if Instant::now() >= deadline {
                            // Come with the deadline: not read for nothing
                            // (review 237: it took the turn, then timed out).
                            fair.store(false, Ordering::Relaxed);
                            return Err(Error::Timeout { after: timeout, stage: TimeoutStage::InWorker { idempotent: false } });
                        } else {
                            let (payload, named) = (m.payload.clone(), host.to_owned());
                            let read = move || wire::decode_answer(&payload, &named);
                            let read = crate::json::read_large_answer(Some(deadline), read);
                            match tokio::time::timeout_at(deadline, read).await {
                                Ok(Some(r)) => r,
                                // Answered in time: the wait is this
                                // process's, not the method's.
                                _ => {
                                    fair.store(false, Ordering::Relaxed);
                                    return Err(Error::Timeout { after: timeout, stage: TimeoutStage::InWorker { idempotent: false } });
                                }
                            }
                        };
                        if let Err(Error::WorkerCrashed { worker, .. }) = &r {
                            // Named by the instance that acknowledged the
                            // call, if one did; else (a host of an older
                            // version, or a mistaken one) each call's crash
                            // counts.
                            let instance = h
                                .get(Name::Instance)
                                .filter(|i| {
                                    super::config::is_token(i)
                                        && acked_by.as_deref().is_none_or(|a| a == *i)
                                });
                            unknown.worker_died(match instance {
                                Some(i) if *worker != 0 => death(i, Some(*worker)),
                                _ => a_death(),
                            });
                        }
                        return r;
                    }
                    Some(Reply::Lost(e, counted)) => {
                        if let Some(counted) = counted {
                            unknown.worker_died(counted);
                        }
                        return Err(e);
                    }
                    None => return Err(Error::Unavailable { what: "workers", reason: "the bridge stopped".into() }),
                },
                () = &mut timer => {
                    if acked || deadline <= ack_by || Instant::now() >= deadline {
                        // Not acknowledged by any host: nothing says the
                        // method ran, so its timeout is not the method's.
                        if !acked {
                            fair.store(false, Ordering::Relaxed);
                        }
                        return Err(Error::Timeout { after: timeout, stage: TimeoutStage::InWorker { idempotent: false } });
                    }
                    if asking.is_none()
                        && let Some(a) = self.ask(id, &guard.reply, sent, sent_unix, deadline)
                    {
                        // The question is the call's cancel.
                        guard.asked = true;
                        timer.as_mut().reset(a.until);
                        asking = Some(a);
                        continue;
                    }
                    return Err(self.unacknowledged(None));
                }
            }
        }
    }

    /// Asks every host whether it had call `id` (reply subject `reply`),
    /// handed to NATS at `sent` (`sent_unix` by the clock), or `None` when
    /// no answers could show that it was never taken (`asking`).
    fn ask(
        &self,
        id: u64,
        reply: &str,
        sent: Instant,
        sent_unix: u64,
        deadline: Instant,
    ) -> Option<Asking> {
        let s = &self.shared;
        let waiting = lock(&s.instances).plan(sent)?;
        // Answers count for it from now on (they carry no token).
        lock(&s.calls).get_mut(&id)?.asking = true;
        let wait = (s.config.ack_timeout / 2).max(Duration::from_millis(50));
        let mut headers = Fields::new();
        headers.insert(Name::Sent, &sent_unix.to_string());
        s.outbox.ask(s.subjects.cancel(), reply.to_owned(), headers);
        Some(Asking::new(waiting, (Instant::now() + wait).min(deadline)))
    }

    /// The end of a call no host acknowledged in time, that `host` (if
    /// asked) said it may have had: its outcome is unknown.
    fn unacknowledged(&self, host: Option<&str>) -> Error {
        let within = self.shared.config.ack_within().as_millis();
        Error::HostLost {
            host: host.unwrap_or("unknown").to_owned(),
            reason: match host {
                None => format!("no worker host acknowledged the call within {within} ms"),
                Some(_) => format!(
                    "it did not acknowledge the call within {within} ms; asked, it said it may have had it, and was told to cancel it"
                ),
            },
            idempotent: false,
        }
    }

    /// The end of a call no host acknowledged in time, that every host
    /// that could have it said it never had: it was not started.
    fn never_taken(&self) -> Error {
        Error::Unavailable {
            what: "worker host",
            reason: format!(
                "no worker host acknowledged the call within {} ms, and every host said it never had it (a host stopping as a call comes drops it); the call was not started",
                self.shared.config.ack_within().as_millis()
            ),
        }
    }

    /// `unavailable` for a method no host serves.
    fn no_host(&self, method: &str) -> Error {
        Error::Unavailable {
            what: "workers",
            reason: format!(
                "no worker host serves `{method}` on NATS (subject prefix `{}`); the call was not started",
                self.shared.config.prefix
            ),
        }
    }

    /// `unavailable` when every host known has announced its methods and
    /// none serves `method` (nor takes any name); else how many of its
    /// calls one message may carry: 1 unless every host that may serve it
    /// reads bundles (`bundle`), and then a few against the calls in
    /// flight and those hosts.
    fn serving(&self, method: &str) -> Result<usize> {
        let dead_after = self.shared.config.dead_after();
        let hosts = read(&self.shared.hosts);
        let (mut serving, mut bundles) = (0usize, true);
        for h in hosts.values() {
            if h.read_for.is_none() || h.dynamic || h.methods.get(method).is_some() {
                serving += 1;
                bundles &= h.reads_bundles(dead_after);
            }
        }
        drop(hosts);
        if serving == 0 {
            return Err(self.no_host(method));
        }
        if !bundles || Instant::now() < *lock(&self.shared.bundles_from) {
            return Ok(1);
        }
        let in_flight = lock(&self.shared.in_flight)
            .get(method)
            .map_or(0, |n| n.calls);
        Ok(bundle::calls_per_bundle(in_flight, serving))
    }

    /// Waits (up to `reconnect_grace` and the deadline) for NATS.
    async fn wait_connected(&self, deadline: Instant, timeout: Duration) -> Result<()> {
        let s = &self.shared;
        let mut rx = s.connected.subscribe();
        if *rx.borrow_and_update() {
            return Ok(());
        }
        let grace = Instant::now() + s.config.reconnect_grace;
        let until = grace.min(deadline);
        match tokio::time::timeout_at(until, rx.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(()),
            _ if until == deadline && deadline < grace => Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            }),
            _ => Err(Error::Unavailable {
                what: "NATS",
                reason: format!(
                    "not connected to NATS for the last {} ms; the call was not sent",
                    s.config.reconnect_grace.as_millis()
                ),
            }),
        }
    }

    /// The name per-method state is kept under: a method a host announces,
    /// or one that has succeeded before; `None` for any other name, whose
    /// calls count under `(other)` and go through no breaker, so names that
    /// exist nowhere can neither take the room of real ones nor open a
    /// breaker others share (as for the local pool: `workers::names`).
    fn state_name<'a>(&self, method: &'a str) -> Option<&'a str> {
        // Tracked first: a method announced is tracked from its first call,
        // and the hosts' lists are looked through only until then.
        let known = self.shared.ledger.tracks(method).0
            || read(&self.shared.hosts)
                .values()
                .any(|h| h.methods.get(method).is_some());
        known.then_some(method)
    }

    /// How long results of `method` may be cached: the shortest time the
    /// hosts announcing it declare, and not at all if one declares none
    /// (the first host found decided, and a host declaring a century
    /// cached what the others do not: review 191).
    fn cache_ttl_s(&self, method: &str) -> Option<f64> {
        let hosts = read(&self.shared.hosts);
        let mut said = hosts
            .values()
            .filter_map(|h| h.methods.get(method))
            .map(|m| m.cache_ttl_s.filter(|t| t.is_finite() && *t >= 0.0));
        let first = said.next()??;
        said.try_fold(first, |least, ttl| Some(least.min(ttl?)))
    }

    /// Whether `method` may be retried after its outcome became unknown:
    /// every host announcing it declares it idempotent (so a host on an
    /// older version that does not cannot be sent a retry), and no host
    /// whose methods were read takes any name (generic mode declares
    /// nothing of a method, and its hosts may be sent the call: review 225).
    pub fn idempotent(&self, method: &str) -> bool {
        let hosts = read(&self.shared.hosts);
        if hosts
            .values()
            .any(|h| h.dynamic && h.read_for.is_some() && h.methods.get(method).is_none())
        {
            return false;
        }
        let mut said = hosts
            .values()
            .filter_map(|h| h.methods.get(method))
            .peekable();
        said.peek().is_some() && said.all(|m| m.idempotent)
    }

    /// The methods the hosts announce, one entry a name. Where hosts
    /// announce one name differently, what all of them allow: idempotent
    /// only if every one says so (and [`NatsBridge::idempotent`] agrees),
    /// cached for the shortest time any declares, and its parameters
    /// unknown unless all describe them alike (review 225: the first host
    /// found decided, which a hostile or older host could be).
    pub fn methods(&self) -> Vec<MethodInfo> {
        let hosts = read(&self.shared.hosts);
        let mut ids: Vec<&String> = hosts.keys().collect();
        ids.sort();
        let generic = |h: &Known| h.dynamic && h.read_for.is_some();
        // Each name, and how many hosts in generic mode announce it.
        let mut by_name: HashMap<String, (MethodInfo, usize)> = HashMap::new();
        for h in ids.into_iter().map(|id| &hosts[id]) {
            // Each name once a host (the first of a name announced twice, as
            // `Methods::get`), and cloned only when new.
            for m in h.methods.by_name.values().map(|&i| &h.methods.list[i]) {
                let (kept, n) = match by_name.get_mut(&m.name) {
                    Some(entry) => entry,
                    None => by_name
                        .entry(m.name.clone())
                        .or_insert_with(|| (m.clone(), 0)),
                };
                *n += usize::from(generic(h));
                kept.idempotent &= m.idempotent;
                kept.cache_ttl_s = kept.cache_ttl_s.zip(m.cache_ttl_s).map(|(a, b)| a.min(b));
                if (&kept.params, kept.positional) != (&m.params, m.positional) {
                    kept.params = None;
                    kept.positional = false;
                }
            }
        }
        // As `idempotent`: a host in generic mode that does not announce a
        // name may be sent its calls.
        let generic_hosts = hosts.values().filter(|h| generic(h)).count();
        drop(hosts);
        let mut v: Vec<_> = by_name
            .into_values()
            .map(|(mut m, n)| {
                m.idempotent &= n == generic_hosts;
                m
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Whether a host accepts names it did not announce (generic mode).
    pub fn accepts_any_method(&self) -> bool {
        read(&self.shared.hosts).values().any(|h| h.dynamic)
    }

    /// The hosts seen, by id.
    pub fn hosts(&self) -> Vec<HostStatus> {
        let mut v: Vec<HostStatus> = read(&self.shared.hosts)
            .iter()
            // Those whose methods were read: a heartbeat alone says nothing
            // of what a host is (anyone who may publish one can).
            .filter(|(_, h)| h.read_for.is_some())
            .map(|(id, h)| HostStatus {
                id: id.clone(),
                in_flight: h.beat.as_ref().map_or(0, |b| b.in_flight),
                processes: h.beat.as_ref().map_or(0, |b| b.processes),
                healthy: h.read_for.is_some() && h.beat.as_ref().is_some_and(|b| b.healthy),
                draining: h.beat.as_ref().is_some_and(|b| b.draining),
                last_seen: h.heard.unwrap_or(h.last_seen).elapsed(),
                methods: h.methods.iter().map(|m| m.name.clone()).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Answers that came after their caller had stopped waiting (a deadline,
    /// a cancel, a lost host): each was counted and dropped.
    pub fn late_answers(&self) -> u64 {
        self.shared.late.load(Ordering::Relaxed)
    }

    /// Whether the connection to NATS is up.
    pub fn connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Caches results through `cache` from now on (the first cache given stays).
    pub fn use_cache(&self, cache: crate::store::Cache) {
        let _ = self.shared.cache.set(cache);
    }

    /// Events from now on: hosts joining and lost, retries, breaker changes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<PoolEvent> {
        self.shared.ledger.events.subscribe()
    }

    /// Resets the circuit breaker of `method`; false if it has none yet.
    pub fn reset_breaker(&self, method: &str) -> bool {
        self.shared.ledger.breakers.reset(method)
    }

    /// A snapshot in the local pool's shape: the workers are the hosts'
    /// processes (from their heartbeats), the statistics this front end's.
    pub fn status(&self) -> PoolStatus {
        let s = &self.shared;
        let hosts = read(&s.hosts);
        let mut workers = Vec::new();
        let (mut processes, mut restarts, mut crashes) = (0, 0, 0);
        for b in hosts.values().filter_map(|h| h.beat.as_ref()) {
            // Figures a host states: a lying one could overflow a sum.
            processes = usize::saturating_add(processes, b.processes);
            restarts = u64::saturating_add(restarts, b.restarts);
            crashes = u64::saturating_add(crashes, b.crashes);
            for w in b
                .workers
                .iter()
                .take(MAX_WORKERS_SHOWN.saturating_sub(workers.len()))
            {
                workers.push(WorkerStatus {
                    id: workers.len() as u64 + 1,
                    pid: w.pid,
                    in_flight: w.in_flight,
                    calls: w.calls,
                    uptime: Duration::from_millis(w.uptime_ms),
                });
            }
        }
        let healthy = self.connected()
            && hosts.values().any(|h| {
                h.read_for.is_some() && h.beat.as_ref().is_some_and(|b| b.healthy && !b.draining)
            });
        drop(hosts);
        PoolStatus {
            healthy,
            processes,
            workers,
            waiting: 0,
            restarts,
            crashes,
            breakers: s.ledger.breakers.statuses(),
            recycled: 0,
            methods: s.ledger.methods(),
            all: s.ledger.all(),
        }
    }

    /// Refuses new calls, waits (up to `grace`) for the calls in flight,
    /// then closes the connection.
    pub async fn shutdown(&self, grace: Duration) {
        let s = &self.shared;
        if !s.closing.swap(true, Ordering::AcqRel) {
            let _ = s.ledger.events.send(PoolEvent::Shutdown);
        }
        let until = Instant::now() + grace;
        while !lock(&s.calls).is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in lock(&s.tasks).drain(..) {
            t.abort();
        }
        // The cancels of the calls that ended meanwhile, then the socket
        // (within a bound: NATS may be gone).
        let flushed = async {
            s.outbox.flushed().await;
            let _ = s.client.flush().await;
        };
        let left = until.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left.max(Duration::from_secs(1)), flushed).await;
    }
}

/// A call waiting for its answer; dropping it (answered, timed out, or its
/// caller gone) forgets the call, and tells the hosts to cancel it unless
/// it is known to be over. A call given up on, or answered while its worker
/// runs on, is [`Kept`].
struct Waiting {
    front: Arc<Front>,
    id: u64,
    reply: async_nats::Subject,
    /// Its place in the outbox, once queued there.
    ticket: Option<outbox::Ticket>,
    cancel: bool,
    /// Its cancel went out already, as a question (`asking`).
    asked: bool,
    /// Its answer said its worker runs on.
    runs_on: bool,
    abandoned: Option<crate::workers::Abandoned>,
    /// When a host must have acknowledged it, if one has it.
    ack_by: Instant,
    deadline: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A call withdrawn before the outbox took it never leaves: it keeps
        // no place and needs no cancel (one would sit in every host's table
        // of cancels that came before their calls).
        if self.cancel && self.ticket.as_ref().is_some_and(outbox::Ticket::withdraw) {
            self.cancel = false;
        }
        {
            let mut calls = lock(&self.front.calls);
            let pending = calls.remove(&self.id);
            if let Some(p) = &pending {
                let mut in_flight = lock(&self.front.in_flight);
                if let Some(n) = in_flight.get_mut(&p.method) {
                    n.calls -= 1;
                    if n.calls == 0 {
                        in_flight.remove(&p.method);
                    }
                }
            }
            if let (Some(p), Some(a)) = (pending, &self.abandoned)
                && (self.cancel || self.runs_on)
                && !p.done
            {
                let unknown_host = p.host.is_none();
                lock(&self.front.kept).insert(
                    self.id,
                    Kept {
                        _place: a.keep(),
                        host: p.host,
                        token: p.token,
                    },
                );
                drop(calls);
                let (front, id) = (Arc::downgrade(&self.front), self.id);
                let (ack_by, at_most) = (self.ack_by, self.deadline + self.front.call_timeout);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if unknown_host {
                            tokio::time::sleep_until(ack_by).await;
                            let Some(f) = front.upgrade() else { return };
                            let mut kept = lock(&f.kept);
                            if kept.get(&id).is_some_and(|k| k.host.is_none()) {
                                kept.remove(&id);
                            }
                        }
                        tokio::time::sleep_until(at_most).await;
                        if let Some(f) = front.upgrade() {
                            lock(&f.kept).remove(&id);
                        }
                    });
                }
            }
        }
        if !self.cancel || self.asked {
            return;
        }
        // The host that acknowledged it is the one running it; before an
        // acknowledgement any host may be, and every host listens. Behind
        // the call in the same outbox.
        let reply = bytes::Bytes::copy_from_slice(self.reply.as_bytes());
        self.front
            .outbox
            .publish(self.front.subjects.cancel(), Fields::new(), reply);
    }
}

impl Known {
    /// Whether calls to it may go in bundles: its services-protocol
    /// metadata says it reads them, for the instance heartbeating now, and
    /// no other instance under its id was heard from lately (one restarted
    /// under the same id, say as an older version, while the old one
    /// drains: NATS may hand a bundle to either).
    fn reads_bundles(&self, dead_after: Duration) -> bool {
        let Some((instance, _)) = &self.read_for else {
            return false;
        };
        self.bundles
            && self
                .beat
                .as_ref()
                .is_some_and(|b| b.service_id == *instance)
            && self
                .instances
                .iter()
                .all(|(i, at)| i == instance || at.elapsed() > dead_after)
    }

    fn new() -> Known {
        Known {
            beat: None,
            last_seen: Instant::now(),
            heard: None,
            methods: Methods::default(),
            dynamic: false,
            bundles: false,
            read_for: None,
            instances: Vec::new(),
            letting_go: false,
            asked: None,
        }
    }
}

impl Front {
    /// Logs `message` unless something was logged this way in the last
    /// minute (what a peer on the bus can trigger at will).
    fn warn_once_a_minute(&self, message: &str) {
        let mut last = lock(&self.warned);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!("{message}");
        }
    }

    /// Takes in a host's INFO: its id (metadata `host`) and methods, when
    /// they hash to what the host's last heartbeat says (any, before one
    /// came), or, for an INFO `asked` of a host's instance after its
    /// heartbeat with a hash, when it is that host's and instance's and
    /// hashes to that. Whether it was taken.
    fn learn(&self, info: &async_nats::service::Info, asked: Option<(&str, &str, &str)>) -> bool {
        // Another deployment's host (the services protocol's subjects are
        // shared by every deployment on the server).
        if info.metadata.get("prefix") != Some(&self.config.prefix) {
            return false;
        }
        // Held to the rules of heartbeats: the id names a subject.
        let Some(id) = info
            .metadata
            .get("host")
            .filter(|id| super::config::is_token(id))
        else {
            return false;
        };
        // Asked of one host's instance, an answer speaks for that one only:
        // a peer asked under its own id answered in another host's name, and
        // its methods were taken as that host's (review 227).
        if asked.is_some_and(|(host, instance, _)| id != host || info.id != instance) {
            return false;
        }
        let mut left = MAX_ANNOUNCED_BYTES;
        let mut cut = false;
        let methods: Vec<MethodInfo> = info
            .endpoints
            .iter()
            .filter_map(|e| wire::method_from_metadata(&e.metadata))
            .take(MAX_METHODS_PER_HOST)
            .take_while(|m| {
                let bytes = m.name.len()
                    + m.description.as_ref().map_or(0, String::len)
                    + m.params
                        .iter()
                        .flatten()
                        .map(|p| p.name.len() + p.json_type.as_ref().map_or(0, String::len) + 16)
                        .sum::<usize>();
                cut = bytes > left;
                left = left.saturating_sub(bytes);
                !cut
            })
            .collect();
        if cut {
            self.warn_once_a_minute(&format!(
                "worker host {id}: only the first {} methods are served, within {} KiB of \
                 names, descriptions and parameters a host",
                methods.len(),
                MAX_ANNOUNCED_BYTES / 1024
            ));
        }
        let dynamic = info
            .endpoints
            .iter()
            .any(|e| e.metadata.get("dynamic").is_some_and(|d| d == "true"));
        let announced: Vec<_> = info
            .endpoints
            .iter()
            .filter(|e| e.metadata.contains_key("method"))
            .map(|e| e.metadata.clone())
            .collect();
        let announced = wire::methods_hash(&announced, dynamic);
        let mut hosts = write(&self.hosts);
        if !hosts.contains_key(id) && hosts.len() >= MAX_HOSTS {
            return false;
        }
        let known = hosts.entry(id.clone()).or_insert_with(Known::new);
        // An answer about an instance that is gone (the host restarted).
        if known.beat.as_ref().is_some_and(|b| b.service_id != info.id) {
            return false;
        }
        let hash = asked
            .map(|(_, _, hash)| hash.to_owned())
            .or_else(|| known.beat.as_ref().map(|b| b.methods_hash.clone()))
            .unwrap_or_default();
        // Its endpoints are still being added: read again once they are.
        if hash == wire::NONE_ANNOUNCED {
            return false;
        }
        // Not what the host's heartbeats announce: another's answer for it
        // (review 225), or an INFO older than its last heartbeat.
        if !hash.is_empty() && hash != announced {
            return false;
        }
        known.methods = Methods::new(methods);
        known.dynamic = dynamic;
        known.bundles = info
            .metadata
            .get("bundles")
            .is_some_and(|b| b == bundle::VERSION);
        // Told once its methods are read: a heartbeat alone costs anyone
        // who may publish one nothing, and each new id logged a line and
        // took a place of the events' ring (review 191).
        let joined = known.read_for.is_none();
        known.read_for = Some((info.id.clone(), announced));
        drop(hosts);
        // Heard only once taken (review 227: every answer in the window
        // took a place of the table of instances).
        if super::config::is_token(&info.id) {
            lock(&self.instances).heard(&info.id);
        }
        if joined {
            tracing::info!(host = %id, "worker host joined");
            let _ = self
                .ledger
                .events
                .send(PoolEvent::HostJoined { host: id.clone() });
        }
        true
    }

    /// Whether this end's link to NATS works now: it sends itself a probe
    /// (a random nonce on a subject of its own) and waits a heartbeat for
    /// it to come back through the server. A peer listening on the subject
    /// gets a copy and cannot swallow it, nor make one up in advance.
    /// Failing that, a host's heartbeat that came meanwhile shows the link
    /// works too (a front end not allowed the probe's subject).
    async fn link_works(&self) -> bool {
        let sent = Instant::now();
        let mut nonce = [0u8; 8];
        if getrandom::fill(&mut nonce).is_err() {
            return false;
        }
        let nonce = u64::from_le_bytes(nonce);
        let came = self.probe_came.notified();
        tokio::pin!(came);
        came.as_mut().enable();
        let wait = self.config.heartbeat.max(Duration::from_millis(200));
        let until = sent + wait;
        lock(&self.probes_out).insert(nonce, false);
        let published = self
            .client
            .publish(self.probe_subject.clone(), nonce.to_string().into())
            .await;
        let mut back = false;
        if published.is_ok() {
            loop {
                if lock(&self.probes_out).get(&nonce) == Some(&true) {
                    back = true;
                    break;
                }
                if tokio::time::timeout_at(until, came.as_mut()).await.is_err() {
                    break;
                }
                came.set(self.probe_came.notified());
                came.as_mut().enable();
            }
        }
        lock(&self.probes_out).remove(&nonce);
        if back {
            return true;
        }
        let heard = read(&self.hosts)
            .values()
            .any(|h| h.heard.is_some_and(|t| t > sent));
        let warning = if heard {
            format!(
                "this front end's probe on {} did not come back though heartbeats do: allow front ends to publish and subscribe on `{}.v1.probe.*`; until then hosts are judged dead only while others' heartbeats show the link works",
                self.probe_subject, self.config.prefix
            )
        } else {
            format!(
                "this front end's link to NATS looks cut (its probe did not come back within {} ms): no worker host is judged dead until it does",
                wait.as_millis()
            )
        };
        let mut last = lock(&self.warned_probe);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!("{warning}");
        }
        heard
    }

    /// Gives every host a fresh window to be heard from: after this end
    /// lost its connection, their silence meanwhile says nothing about them.
    fn fresh_window(&self) {
        for h in write(&self.hosts).values_mut() {
            h.last_seen = Instant::now();
        }
    }

    /// Fails every call a lost host had acknowledged (only those of
    /// `instance`, when given: a restarted host's old calls). When its
    /// death is `confirmed` (NATS itself no longer knows it), it counts
    /// once against each method it was running.
    fn host_lost(&self, host: &str, instance: Option<&str>, reason: &str, confirmed: bool) {
        let mut calls = lock(&self.calls);
        lock(&self.kept).retain(|_, k| {
            !k.host.as_ref().is_some_and(|(h, i)| {
                h == host && (i.is_empty() || instance.is_none_or(|want| want == i))
            })
        });
        for p in calls.values_mut() {
            let Some((h, i)) = &p.host else { continue };
            if h == host && (i.is_empty() || instance.is_none_or(|want| want == i)) {
                // Failed here, it keeps no place when its waiter drops it.
                p.done = true;
                // An older host names no instance: each of its calls counts.
                let counted = confirmed.then(|| {
                    if i.is_empty() {
                        a_death()
                    } else {
                        death(i, None)
                    }
                });
                let _ = p.tx.send(Reply::Lost(
                    Error::HostLost {
                        host: host.to_owned(),
                        reason: reason.to_owned(),
                        idempotent: false,
                    },
                    counted,
                ));
            }
        }
    }
}

/// Marks this end's probes that came back: only those it sent and waits
/// for (`probes_out`); anything else on the subject is ignored.
async fn follow_probes(front: std::sync::Weak<Front>, mut probes: async_nats::Subscriber) {
    while let Some(m) = probes.next().await {
        let Some(f) = front.upgrade() else { return };
        let Some(nonce) = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(back) = lock(&f.probes_out).get_mut(&nonce) {
            *back = true;
        } else {
            continue;
        }
        f.probe_came.notify_waiters();
    }
}

/// Hands each reply to the call waiting for it; counts the ones nobody
/// waits for. A bundle (`bundle`) is taken apart into the messages it
/// holds, each routed as if it had come alone.
async fn route_replies(front: std::sync::Weak<Front>, mut replies: async_nats::Subscriber) {
    while let Some(m) = replies.next().await {
        let Some(f) = front.upgrade() else { return };
        let tail = m.subject.rsplit('.').next().unwrap_or_default();
        if bundle::Replies::names_a_bundle(tail) {
            // The server's "no responders" to a bundle of calls (bare, as
            // for a call alone): each of its calls hears it.
            if let Some(calls) = bare_no_responders(&m)
                .then(|| f.replies.take(tail))
                .flatten()
            {
                for id in calls {
                    route(
                        &f,
                        &format!("{}.{id}", f.inbox),
                        Note {
                            status: m.status,
                            fields: Fields::new(),
                            payload: bytes::Bytes::new(),
                        },
                        true,
                    );
                }
            }
            continue;
        }
        let Some(entries) = bundle::entries_of(&m) else {
            let bare = bare_no_responders(&m);
            let note = Note {
                status: m.status,
                fields: Fields::from_map(m.headers.as_ref()),
                payload: m.payload,
            };
            route(&f, &m.subject, note, bare);
            continue;
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                // A limiter of its own: anyone who may publish into the
                // inbox can send these.
                let mut warned = lock(&f.warned_bundle);
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    *warned = Some(Instant::now());
                    tracing::warn!("a bundle of answers that cannot be read ({e}); dropped");
                }
                continue;
            }
        };
        for e in entries {
            // Only about this end's calls (as a message alone would be,
            // by its subject).
            let ours = e
                .subject
                .strip_prefix(f.inbox.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            if !ours {
                continue;
            }
            let note = Note {
                status: None,
                fields: e.fields,
                payload: e.body,
            };
            route(&f, &e.subject, note, false);
        }
    }
}

/// Whether `m` is the NATS server's "no responders": its status, and no
/// header of litebridge's (a peer can write a status line too).
fn bare_no_responders(m: &async_nats::Message) -> bool {
    m.status == Some(StatusCode::NO_RESPONDERS)
        && m.headers.as_ref().is_none_or(|h| {
            h.iter().all(|(name, _)| {
                let name: &str = name.as_ref();
                !name.to_ascii_lowercase().starts_with("litebridge-")
            })
        })
}

/// Hands one reply, which came to `subject`, to the call waiting for it,
/// or counts it. `bare_no_responders`: it is the server's "no responders"
/// ([`bare_no_responders`]).
fn route(f: &Front, subject: &str, m: Note, bare_no_responders: bool) {
    {
        let id = subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let h = &m.fields;
        let host = h.get(Name::Host);
        // No instance named (another version): matches any.
        let instance = h.get(Name::Instance);
        let named = || host.map(|h| (h.to_owned(), instance.unwrap_or_default().to_owned()));
        // A notice (`accepted`, `running`, `done`), or else an answer.
        let status = h.get(Name::Status);
        let runs_on = h.get(Name::RunsOn) == Some("1");
        // A message about a call counts only with the call's token; the
        // NATS server's "no responders" carries none, and is taken only
        // bare (a peer can write a status line too: one with any other
        // status, or with litebridge's headers, is not the server's).
        let token = h.get(Name::Token);
        // An answer to a question (`asking`) carries none (a host that
        // never had the call does not know it): it is taken only for a
        // call being asked about.
        let answer_to_question = matches!(status, Some(wire::UNSEEN | wire::MAYBE));
        let its = |want: u64| token == Some(token_hex(&want).as_str()) || bare_no_responders;
        let mut calls = lock(&f.calls);
        // A notice about a call whose host is known counts only from that
        // host (a peer on the bus naming it could otherwise give places
        // back early).
        let from_its_host = |known: &Option<(String, String)>| {
            known
                .as_ref()
                .is_none_or(|(h, _)| host.is_some_and(|named| named == h))
        };
        // An acknowledgement or an answer of a call whose host is known
        // counts only from that host, and from its instance when both are
        // named. Another front end, which sees the call's token in its
        // acknowledgement (front ends may read every inbox), could
        // otherwise send a call naming the same reply subject and token to
        // another host: that host's answer took the call's place, and its
        // refusal ("not started") had the call sent again while it ran
        // (review 191).
        let from_its_instance = |known: &Option<(String, String)>| {
            from_its_host(known)
                && known
                    .as_ref()
                    .is_none_or(|(_, i)| i.is_empty() || instance.is_none_or(|named| named == i))
        };
        let id = id.filter(|id| {
            let theirs = calls
                .get(id)
                .map(|p| its(p.token) || (answer_to_question && p.asking))
                .or_else(|| lock(&f.kept).get(id).map(|k| its(k.token)));
            if theirs == Some(false) {
                tracing::debug!(id, "a message without its call's token; dropped");
            }
            theirs != Some(false)
        });
        match id.and_then(|id| calls.get_mut(&id)) {
            Some(p) if matches!(status, None | Some("accepted")) && !from_its_instance(&p.host) => {
                tracing::debug!(
                    host = host.unwrap_or("(unnamed)"),
                    "a message about a call another host has; dropped"
                );
            }
            Some(p) => match status {
                Some("accepted") => {
                    p.host = p.host.take().or_else(named);
                    let _ = p.tx.send(Reply::Message(m));
                }
                Some(wire::RUNNING) => p.host = p.host.take().or_else(named),
                Some(wire::DONE) if from_its_host(&p.host) => p.done = true,
                Some(wire::UNSEEN | wire::MAYBE) if p.asking => {
                    let _ = p.tx.send(Reply::Message(m));
                }
                Some(_) => {}
                None => {
                    // An answer at its host's deadline, its worker running
                    // on: the host to wait for, even before any
                    // acknowledgement came.
                    if runs_on {
                        p.host = p.host.take().or_else(named);
                    }
                    let _ = p.tx.send(Reply::Message(m));
                }
            },
            None if m.status.is_some() => {}
            None => {
                // A call given up on: what its host says of it now.
                let mut kept = lock(&f.kept);
                let over = match (id.and_then(|id| kept.get_mut(&id)), status) {
                    (Some(k), Some("accepted" | wire::RUNNING)) => {
                        k.host = k.host.take().or_else(named);
                        false
                    }
                    (Some(k), None) if runs_on => {
                        k.host = k.host.take().or_else(named);
                        false
                    }
                    (Some(k), Some(wire::DONE) | None) => from_its_host(&k.host),
                    _ => false,
                };
                if over && let Some(id) = id {
                    kept.remove(&id);
                }
                drop(kept);
                drop(calls);
                if status.is_none() {
                    f.late.fetch_add(1, Ordering::Relaxed);
                    let started = match h.get(Name::Started) {
                        Some("1") => "the call had started there",
                        Some(_) => "the call had not started there",
                        None => "whether the call had started is not said",
                    };
                    // At most once a minute: anyone who may publish into
                    // the inbox can send these.
                    f.warn_once_a_minute(&format!(
                        "an answer from host {} ({started}) came after its caller \
                         stopped waiting; dropped and counted (late answers: {})",
                        host.unwrap_or("(unnamed)"),
                        f.late.load(Ordering::Relaxed)
                    ));
                }
            }
        }
    }
}

/// Keeps the hosts' heartbeats, and reads the methods of a host that is new
/// or changed them.
async fn follow_heartbeats(front: std::sync::Weak<Front>, mut beats: async_nats::Subscriber) {
    while let Some(m) = beats.next().await {
        let Some(f) = front.upgrade() else { return };
        let Ok(mut beat) = serde_json::from_slice::<Heartbeat>(&m.payload) else {
            continue;
        };
        // A host speaks for itself only: on its own subject, under its own name.
        if m.subject.as_str() != f.subjects.heartbeat(&beat.host)
            || !super::config::is_token(&beat.host)
        {
            continue;
        }
        // Ids are ours to use in subjects: a long or odd one is refused
        // (it could push a request past the server's limits).
        if !super::config::is_token(&beat.service_id)
            || !super::config::is_token(&beat.methods_hash)
        {
            continue;
        }
        beat.workers.truncate(MAX_WORKERS_PER_HOST);
        // Followed even when the table below has no room: a host it turns
        // away may still take calls.
        if beat.retired {
            lock(&f.instances).retired(&beat.service_id);
        } else {
            lock(&f.instances).heard(&beat.service_id);
        }
        let (stale, replaced, let_go) = {
            let mut hosts = write(&f.hosts);
            if !hosts.contains_key(&beat.host) && hosts.len() >= MAX_HOSTS {
                // Room goes to hosts that answer: one whose INFO never came
                // (a forged name) makes way.
                let silent = hosts
                    .iter()
                    .filter(|(_, h)| h.read_for.is_none())
                    .min_by_key(|(_, h)| h.last_seen)
                    .map(|(id, _)| id.clone());
                match silent {
                    Some(id) => {
                        hosts.remove(&id);
                    }
                    None => {
                        f.warn_once_a_minute(&format!(
                            "ignoring worker host {}: {MAX_HOSTS} are followed already",
                            beat.host
                        ));
                        continue;
                    }
                }
            }
            let known = hosts.entry(beat.host.clone()).or_insert_with(Known::new);
            let now = Instant::now();
            let dead_after = f.config.dead_after();
            known
                .instances
                .retain(|(_, at)| now.duration_since(*at) <= dead_after);
            let recent = known.instances.iter().any(|(i, _)| *i == beat.service_id);
            // Another instance under this id, not heard from lately: the
            // host restarted, or a second host took the same id. An old
            // instance that said it was draining is finishing its calls
            // (its replacement may start at once): those are not lost.
            // Told only when the old instance is the one whose methods were
            // read (review 206: a peer alternating made-up ids under a read
            // host's name had a restart told for each heartbeat).
            let read_of = |i: &str| known.read_for.as_ref().is_some_and(|(r, _)| r == i);
            let replaced = known
                .beat
                .as_ref()
                .filter(|b| b.service_id != beat.service_id && !recent && !b.draining)
                .map(|b| (b.service_id.clone(), read_of(&b.service_id)));
            // One that said it retired is let go early only if it is the
            // instance read (a made-up one cannot speak for it, review 206),
            // by one task at a time.
            let let_go = beat.retired && read_of(&beat.service_id) && !known.letting_go;
            known.instances.retain(|(i, _)| *i != beat.service_id);
            if known.instances.len() < 4 {
                known.instances.push((beat.service_id.clone(), now));
            }
            known.last_seen = now;
            known.heard = Some(now);
            let stale = known.read_for.as_ref()
                != Some(&(beat.service_id.clone(), beat.methods_hash.clone()))
                && beat.methods_hash != wire::NONE_ANNOUNCED
                && known
                    .asked
                    .is_none_or(|at| now.duration_since(at) >= f.config.heartbeat);
            if stale {
                known.asked = Some(now);
            }
            known.beat = Some(beat.clone());
            known.letting_go |= let_go;
            (stale, replaced, let_go)
        };
        if let_go {
            // Any other (an instance never read: a made-up one) is left to
            // the dead-host timer: a flood of them asks NATS nothing here.
            tokio::spawn(let_go_retired(
                front.clone(),
                beat.host.clone(),
                beat.service_id.clone(),
            ));
        }
        if let Some((old, read)) = replaced {
            // Asked of the old instance itself: one that answers is alive,
            // and its calls are not lost.
            let with_calls = {
                let with = |h: &Option<(String, String)>| {
                    h.as_ref()
                        .is_some_and(|(h, i)| *h == beat.host && *i == old)
                };
                lock(&f.calls).values().any(|p| with(&p.host))
                    || lock(&f.kept).values().any(|k| with(&k.host))
            };
            let weak = front.clone();
            let (client, host) = (f.client.clone(), beat.host.clone());
            let prefix = f.config.prefix.clone();
            let wait = f.config.heartbeat.max(Duration::from_millis(200));
            let dead_after = f.config.dead_after();
            tokio::spawn(async move {
                // One that does not answer is asked again for a dead host's
                // time: a host paused for a moment is no host restarted, and
                // a heartbeat anyone may forge must not take its calls
                // (review 225). Only an instance whose methods were read, or
                // that has calls of this end (one a heartbeat at most):
                // made-up ones, one each forged heartbeat, are asked once
                // (reviews 227, 228).
                let asks_again = read || with_calls;
                let until = Instant::now()
                    + if asks_again {
                        dead_after
                    } else {
                        Duration::ZERO
                    };
                let found = loop {
                    let asked = Instant::now();
                    let found = ping_instance(&client, &prefix, &old, wait).await;
                    if found != Found::Unknown || asked + wait >= until {
                        break found;
                    }
                    tokio::time::sleep_until(asked + wait).await;
                };
                let Some(f) = weak.upgrade() else { return };
                if found == Found::Alive {
                    f.warn_once_a_minute(&format!(
                        "two live worker hosts use the id {host}: give each its own --name (their lost calls are noticed only at their deadlines)"
                    ));
                    return;
                }
                let reason = "it restarted with the call in flight";
                f.host_lost(&host, Some(&old), reason, found == Found::Gone);
                // Told only of a host told as joined (review 193: made-up
                // ids whose instance changed at each heartbeat logged a
                // line and an event each).
                if read {
                    tracing::warn!(host, "worker host restarted");
                    let _ = f.ledger.events.send(PoolEvent::HostLost {
                        host,
                        reason: reason.into(),
                    });
                }
            });
        }
        if stale {
            let (client, hash) = (f.client.clone(), beat.methods_hash.clone());
            let (host, instance) = (beat.host.clone(), beat.service_id.clone());
            let subject = format!(
                "$SRV.INFO.{}.{}",
                wire::service(&f.config.prefix),
                beat.service_id
            );
            let weak = front.clone();
            // Every answer is looked at, until one hashes to the heartbeat's
            // hash: another's answer may come first (review 225).
            let wait = f.config.heartbeat.max(Duration::from_millis(500));
            tokio::spawn(async move {
                let inbox = client.new_inbox();
                let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
                    return;
                };
                if client
                    .publish_with_reply(subject, inbox, Default::default())
                    .await
                    .is_err()
                {
                    return;
                }
                let until = Instant::now() + wait;
                while let Ok(Some(m)) = tokio::time::timeout_at(until, answers.next()).await {
                    let Some(f) = weak.upgrade() else { return };
                    if let Ok(info) =
                        serde_json::from_slice::<async_nats::service::Info>(&m.payload)
                        && f.learn(&info, Some((&host, &instance, &hash)))
                    {
                        return;
                    }
                }
            });
        }
    }
}

/// Lets a host whose instance said it retired (its last heartbeat, once
/// its calls are done) go at once, quietly: logged at `info` and told as
/// `host-retired`, not as lost. Only the instance whose methods were read,
/// once NATS no longer knows it (its `PING` finds no one listening), with
/// no call of this end with it, and still the host's last word: a peer
/// that forges a retired heartbeat for a live host (its instance, or a
/// made-up one) changes nothing (review 206: a made-up instance had the
/// live host dropped). Otherwise the dead-host timer lets it go, as
/// retired if no call is with it ([`watch_liveness`]). What is left: a host
/// that dies with no call in flight just after a peer forged its retired
/// heartbeat is told as retired, not lost.
async fn let_go_retired(front: std::sync::Weak<Front>, host: String, instance: String) {
    let_go_once(&front, host.clone(), &instance).await;
    if let Some(f) = front.upgrade()
        && let Some(known) = write(&f.hosts).get_mut(&host)
    {
        known.letting_go = false;
    }
}

/// [`let_go_retired`]'s work.
async fn let_go_once(front: &std::sync::Weak<Front>, host: String, instance: &str) {
    for wait in [50, 200, 500, 1_000, 2_000].map(Duration::from_millis) {
        tokio::time::sleep(wait).await;
        let Some(f) = front.upgrade() else { return };
        let asked = f.config.heartbeat.max(Duration::from_millis(200));
        if ping_instance(&f.client, &f.config.prefix, instance, asked).await != Found::Gone {
            continue;
        }
        let with = |h: &Option<(String, String)>| {
            h.as_ref()
                .is_some_and(|(h, i)| *h == host && *i == instance)
        };
        if lock(&f.calls).values().any(|p| !p.done && with(&p.host))
            || lock(&f.kept).values().any(|k| with(&k.host))
        {
            return;
        }
        {
            let mut hosts = write(&f.hosts);
            let retired = hosts.get(&host).is_some_and(|h| {
                h.read_for.as_ref().is_some_and(|(i, _)| i == instance)
                    && h.beat
                        .as_ref()
                        .is_some_and(|b| b.retired && b.service_id == instance)
            });
            if !retired {
                return; // heard from again: another instance, or a forgery
            }
            hosts.remove(&host);
        }
        tracing::info!(host, "worker host retired");
        let _ = f.ledger.events.send(PoolEvent::HostRetired { host });
        return;
    }
}

/// What asking a host instance for a `PING` found.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// It answered.
    Alive,
    /// NATS said no one listens on its subject: its connection is gone.
    Gone,
    /// No answer in time, or another error: alive but slow, cut off, or
    /// gone (nothing can be concluded).
    Unknown,
}

/// Asks host `instance` for the services protocol's `PING`.
async fn ping_instance(
    client: &async_nats::Client,
    prefix: &str,
    instance: &str,
    wait: Duration,
) -> Found {
    let ping = format!("$SRV.PING.{}.{instance}", wire::service(prefix));
    match tokio::time::timeout(wait, client.request(ping, Default::default())).await {
        Ok(Ok(_)) => Found::Alive,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Found::Gone,
        _ => Found::Unknown,
    }
}

/// Declares dead the hosts whose heartbeats stopped, judged only on time
/// this end's own link was shown to work: a cut without a word (no
/// Disconnected yet) makes every host look silent, and when it heals the
/// server may answer before the heartbeats held up behind it arrive. So a
/// host silent for `dead_after` is dead only if, the link once shown to
/// work, a heartbeat and a quarter more pass (the link still working)
/// without a word from it.
async fn watch_liveness(front: std::sync::Weak<Front>) {
    let every = match front.upgrade() {
        Some(f) => f.config.heartbeat / 4,
        None => return,
    };
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    // When the link was first shown to work with hosts silent.
    let mut armed: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(f) = front.upgrade() else { return };
        // Cut off from NATS, every host looks silent: none is judged then.
        if !*f.connected.borrow() {
            armed = None;
            continue;
        }
        let dead_after = f.config.dead_after();
        let silent = read(&f.hosts)
            .values()
            .any(|h| h.last_seen.elapsed() > dead_after);
        if !silent || !f.link_works().await {
            armed = None;
            continue;
        }
        let now = Instant::now();
        let since = *armed.get_or_insert(now);
        if now.duration_since(since) < f.config.heartbeat + f.config.heartbeat / 4 {
            continue;
        }
        armed = None;
        let dead: Vec<(String, Option<String>, bool, bool)> = {
            let mut hosts = write(&f.hosts);
            let dead: Vec<String> = hosts
                .iter()
                .filter(|(_, h)| h.last_seen.elapsed() > dead_after && h.last_seen < since)
                .map(|(id, _)| id.clone())
                .collect();
            dead.into_iter()
                .map(|id| {
                    let known = hosts.remove(&id);
                    let read = known.as_ref().is_some_and(|h| h.read_for.is_some());
                    let read_for = known.as_ref().and_then(|h| h.read_for.clone());
                    let beat = known.and_then(|h| h.beat);
                    let retired = beat.as_ref().is_some_and(|b| {
                        b.retired && read_for.is_some_and(|(i, _)| i == b.service_id)
                    });
                    (id, beat.map(|b| b.service_id), read, retired)
                })
                .collect()
        };
        // Several at once share a cause (a NATS server of a cluster, the
        // network, a flood of the heartbeat subject), not a method's doing.
        let alone = dead.len() == 1;
        for (host, instance, read, retired) in dead {
            // A host that retired had finished its calls: one still with a
            // call was lost, whatever its last heartbeat said (a peer can
            // forge that, review 206).
            let with = |h: &Option<(String, String)>| h.as_ref().is_some_and(|(h, _)| *h == host);
            let retired = retired
                && !lock(&f.calls).values().any(|p| !p.done && with(&p.host))
                && !lock(&f.kept).values().any(|k| with(&k.host));
            if retired {
                // Its last word was that it retired, and no call is with it
                // (`let_go_retired` found it still known to NATS).
                if read {
                    tracing::info!(host, "worker host retired");
                    let _ = f.ledger.events.send(PoolEvent::HostRetired { host });
                }
                continue;
            }
            let reason = format!("no heartbeat for {} ms", dead_after.as_millis());
            // One never told as joined (its methods were never read: a
            // flood of made-up ids) is not logged nor told as lost; its
            // calls, if it took any, fail all the same.
            if read {
                tracing::warn!(host, "worker host lost: {reason}");
            } else {
                tracing::debug!(host, "a worker host never read is gone: {reason}");
            }
            // A silent host may only be slow or cut off: its death counts
            // against the methods it ran only once NATS no longer knows it.
            let confirmed = match instance {
                Some(i) if alone => {
                    ping_instance(
                        &f.client,
                        &f.config.prefix,
                        &i,
                        f.config.heartbeat.max(Duration::from_millis(200)),
                    )
                    .await
                        == Found::Gone
                }
                _ => false,
            };
            f.host_lost(&host, None, &reason, confirmed);
            if read {
                let _ = f.ledger.events.send(PoolEvent::HostLost { host, reason });
            }
        }
    }
}

/// Follows the connection: when it drops, every call in flight fails at
/// once (core NATS loses answers sent during the gap); new calls wait for
/// its return (`reconnect_grace`).
async fn follow_connection(
    front: std::sync::Weak<Front>,
    mut events: mpsc::UnboundedReceiver<async_nats::Event>,
) {
    while let Some(e) = events.recv().await {
        let Some(f) = front.upgrade() else { return };
        match e {
            async_nats::Event::Disconnected => {
                f.connected.send_replace(false);
                tracing::warn!(url = f.config.url, "lost the connection to NATS");
                let mut calls = lock(&f.calls);
                // Calls given up on keep their places: their workers run on
                // (a host cancels its calls only once its own link has been
                // down for a dead host's time), and a `done` lost with the
                // connection leaves them to their bound (`Kept`), as a key
                // could otherwise start as many again after any restart of
                // the server (review 225).
                for p in calls.values_mut() {
                    // Failed here, it keeps its place when its waiter drops
                    // it, as a call given up on does: its worker runs on
                    // (review 227).
                    let _ = p.tx.send(Reply::Lost(
                        Error::CallOutcomeUnknown {
                            method: p.method.clone(),
                            reason: "the connection to NATS was lost with the call in flight"
                                .into(),
                            idempotent: false,
                        },
                        None,
                    ));
                }
            }
            async_nats::Event::Connected => {
                // Hosts get a fresh window to be heard from, and are asked
                // for their methods again (the ones silent meanwhile may
                // have changed).
                f.fresh_window();
                lock(&f.instances).listening_again();
                *lock(&f.bundles_from) = Instant::now() + 2 * f.config.heartbeat;
                f.connected.send_replace(true);
                tracing::info!(url = f.config.url, "connected to NATS");
                let bridge = NatsBridge { shared: f.clone() };
                tokio::spawn(async move { bridge.discover().await });
            }
            // Heartbeats may be among what it dropped: a host not heard
            // from may have taken calls (`asking`).
            async_nats::Event::SlowConsumer(_) => {
                lock(&f.instances).listening_again();
                tracing::debug!("NATS: a slow consumer here; messages were dropped");
            }
            other => tracing::debug!("NATS: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_methods_are_found_by_name_the_first_of_a_name_announced_twice() {
        let info = MethodInfo::named;
        let m = Methods::new(vec![info("b", true), info("a", true), info("b", false)]);
        assert!(m.get("b").is_some_and(|b| b.idempotent));
        assert_eq!(m.get("a").map(|a| a.name.as_str()), Some("a"));
        assert!(m.get("c").is_none() && Methods::default().get("a").is_none());
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "b"], "in the order announced");
    }

    #[test]
    fn a_token_travels_as_sixteen_hex_digits() {
        for t in [0, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(token_hex(&t).as_str(), format!("{t:016x}"));
        }
    }

    fn beat(instance: &str) -> Heartbeat {
        Heartbeat {
            host: "h1".into(),
            service_id: instance.into(),
            methods_hash: "x".into(),
            in_flight: 0,
            processes: 1,
            healthy: true,
            restarts: 0,
            crashes: 0,
            draining: false,
            retired: false,
            workers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn bundles_go_only_to_a_host_read_for_the_one_instance_heard_under_its_id() {
        let dead_after = Duration::from_secs(3);
        let mut k = Known::new();
        assert!(!k.reads_bundles(dead_after), "never read");
        k.bundles = true;
        k.read_for = Some(("A".into(), "x".into()));
        k.beat = Some(beat("A"));
        k.instances = vec![("A".into(), Instant::now())];
        assert!(k.reads_bundles(dead_after));
        // Another instance under the id, heard lately (a restart, perhaps
        // as an older version, while A drains): whichever heartbeat came
        // last, no bundles.
        k.instances.push(("B".into(), Instant::now()));
        assert!(!k.reads_bundles(dead_after));
        k.beat = Some(beat("B"));
        assert!(!k.reads_bundles(dead_after));
        // B alone, not yet read: none either.
        k.instances = vec![("B".into(), Instant::now())];
        assert!(!k.reads_bundles(dead_after));
        // Read for B, which says it reads bundles.
        k.read_for = Some(("B".into(), "x".into()));
        assert!(k.reads_bundles(dead_after));
        k.bundles = false;
        assert!(!k.reads_bundles(dead_after));
    }
}
