//! The pool: dispatch, queueing, deadlines, retries, breakers, restarts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::error::{Error, Result, TimeoutStage};
use crate::resilience::{BreakerRegistry, BreakerStatus, RetryPolicy};
use crate::sync::{lock, read, write};
use crate::workers::config::WorkerConfig;
use crate::workers::launch::{Launcher, Processes};
use crate::workers::ledger::{FirstUnknown, Ledger};
use crate::workers::names::MethodNames;
use crate::workers::process::{Process, SEEN_DEAD_AFTER_KILL, Starting};

/// Options of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOptions {
    /// Deadline, time queued included; `None` uses [`WorkerConfig::call_timeout`].
    pub timeout: Option<Duration>,
    /// Retry after a crash when the method is idempotent. Default: true.
    pub retry: bool,
    /// Retries at most after the first attempt (0: none), up to the pool's
    /// retry policy's; `None` uses that policy.
    pub max_retries: Option<u32>,
    /// Cache the result under this key (with a cache attached through
    /// [`WorkerPool::use_cache`]). Methods a worker declares cacheable are
    /// cached under their name and parameters without one.
    pub cache_key: Option<String>,
    /// Lifetime of the cached result; `None` uses the method's `cache_ttl_s`
    /// or the cache's default.
    pub cache_ttl: Option<Duration>,
    /// Whose `cache_key` this is. Results cached under an explicit key are
    /// kept apart per scope (the RPC gives the caller's key name), so one
    /// caller can neither read nor poison another's entry; results of a
    /// method declared cacheable are keyed by its parameters and shared.
    /// `None`: one shared scope.
    pub cache_scope: Option<String>,
    /// The id of the request this call serves, sent to the worker (as
    /// `meta.request_id`) so its logs can name it.
    pub request_id: Option<String>,
    /// What the call's caller keeps of it once abandoned (its caller went
    /// away, or its deadline passed) while a worker still runs it, until
    /// the worker is done with it: the RPC layer counts such calls against
    /// their key's requests in flight, so a key cannot hold more worker
    /// places than its limit by hanging up. Local workers only.
    pub abandoned: Option<Abandoned>,
}

/// Called once when a call is abandoned with a worker still running it;
/// what it returns is dropped when that worker answers the call or ends.
#[derive(Clone)]
pub struct Abandoned(Arc<dyn Fn() -> Box<dyn std::any::Any + Send> + Send + Sync>);

impl Abandoned {
    /// `keep`, called at the abandonment.
    pub fn new(keep: impl Fn() -> Box<dyn std::any::Any + Send> + Send + Sync + 'static) -> Self {
        Abandoned(Arc::new(keep))
    }

    pub(crate) fn keep(&self) -> Box<dyn std::any::Any + Send> {
        (self.0)()
    }
}

impl std::fmt::Debug for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Abandoned")
    }
}

impl PartialEq for Abandoned {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Abandoned {}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: None,
            retry: true,
            max_retries: None,
            cache_key: None,
            cache_ttl: None,
            cache_scope: None,
            request_id: None,
            abandoned: None,
        }
    }
}

/// Something that happened in the pool, for subscribers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// The pool started with this many workers.
    Started {
        /// Worker processes.
        processes: usize,
    },
    /// A worker process sent `$/ready`.
    WorkerStarted {
        /// The pool's number for it.
        id: u64,
        /// Its pid.
        pid: u32,
    },
    /// A worker process ended without being asked to; also one that ended
    /// right after it got ready, before it was put to work, which no
    /// `WorkerStarted` or `WorkerRestarted` named.
    WorkerExited {
        /// The pool's number for it.
        id: u64,
        /// Its pid.
        pid: u32,
        /// How it ended (`exit code 3`, `signal 9 (SIGKILL)`).
        exit: String,
        /// Its last line on stderr, if any (it may quote a call's
        /// parameters: not for every eye).
        last_stderr: Option<String>,
    },
    /// A replacement for a dead worker is ready.
    WorkerRestarted {
        /// The new worker.
        id: u64,
        /// Its pid.
        pid: u32,
    },
    /// A worker was replaced on purpose and is finishing its calls.
    WorkerRecycled {
        /// The retired worker.
        id: u64,
        /// Why.
        reason: String,
        /// The worker that took its place.
        replaced_by: u64,
    },
    /// A call is tried again after a crash.
    Retry {
        /// The method.
        method: String,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// Attempts the call may make in all.
        max_attempts: u32,
        /// Why the attempt failed, as a kind (`worker_crashed`).
        kind: crate::ErrorKind,
        /// Why the attempt failed, in full (it may quote the worker's
        /// stderr: not for every eye).
        error: String,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// A circuit breaker changed state.
    Breaker(crate::resilience::BreakerEvent),
    /// A worker host began sending heartbeats (NATS transport).
    HostJoined {
        /// Its id.
        host: String,
    },
    /// A worker host stopped sending heartbeats; the calls it had
    /// acknowledged failed with `worker_crashed` (NATS transport).
    HostLost {
        /// Its id.
        host: String,
        /// How it was seen to be lost.
        reason: String,
    },
    /// A worker host stopped on purpose: it finished its calls and said it
    /// retired (NATS transport).
    HostRetired {
        /// Its id.
        host: String,
    },
    /// The pool is shutting down.
    Shutdown,
}

/// Statistics of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodStats {
    /// The method.
    pub method: String,
    /// Calls completed.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Latency percentiles, retries included.
    pub latency: crate::LatencySummary,
}

/// A snapshot of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The pool's number for the process.
    pub id: u64,
    /// Its process id.
    pub pid: u32,
    /// Calls in flight on it.
    pub in_flight: usize,
    /// Calls sent to it since it started.
    pub calls: u64,
    /// How long it has been running.
    pub uptime: Duration,
}

/// A snapshot of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    /// Whether every worker slot is served and no restart storm is going on.
    pub healthy: bool,
    /// Configured processes.
    pub processes: usize,
    /// Running workers.
    pub workers: Vec<WorkerStatus>,
    /// Calls waiting for a free worker.
    pub waiting: usize,
    /// Restarts since the pool started.
    pub restarts: u64,
    /// Crashes seen (workers that died without being asked to).
    pub crashes: u64,
    /// The circuit breakers, one per method called.
    pub breakers: Vec<BreakerStatus>,
    /// Workers recycled on purpose.
    pub recycled: u64,
    /// Per-method statistics, by name.
    pub methods: Vec<MethodStats>,
    /// Every call of every method (named `*`): the seed's pool-wide figures.
    pub all: MethodStats,
}

/// The cache key and lifetime of a call, when its result may be cached:
/// under the caller's `cache_key`, or under its parameters when the workers
/// declared the method cacheable (`declared`: its `cache_ttl_s`).
///
/// An entry keyed by parameters is shared by every caller, so a caller's
/// `cache_ttl` may only shorten the lifetime the workers declared: a longer
/// one would decide for everyone how stale their answers may be. Its
/// parameters are in the key as their JSON text up to [`PARAMS_IN_KEY`]
/// bytes, and as their SHA-256 past that, so a caller cannot make keys of
/// any size.
pub(crate) fn cache_key(
    method: &str,
    params: &Json,
    options: &CallOptions,
    declared: Option<f64>,
) -> Option<(String, Option<Duration>)> {
    let declared = declared.and_then(|s| Duration::try_from_secs_f64(s).ok());
    match (&options.cache_key, declared) {
        // Lengths first, so no choice of scope, method and key can spell
        // another caller's entry (or a declared one).
        (Some(k), _) => {
            let scope = options.cache_scope.as_deref().unwrap_or("");
            Some((
                format!(
                    "bridge:key:{}:{scope}:{}:{method}:{k}",
                    scope.len(),
                    method.len()
                ),
                options.cache_ttl.or(declared),
            ))
        }
        (None, Some(declared)) => {
            let ttl = options.cache_ttl.map_or(declared, |t| t.min(declared));
            // serde_json keeps object keys sorted: the text is canonical.
            // It begins with `[` or `{`, a digest with `sha256:`.
            let text = params.to_string();
            let params = if text.len() > PARAMS_IN_KEY {
                let digest = crate::auth::keys::hash(&text);
                format!("sha256:{}", crate::auth::keys::hex(&digest))
            } else {
                text
            };
            Some((format!("bridge:params:{method}:{params}"), Some(ttl)))
        }
        (None, None) => None,
    }
}

/// The longest parameters' text a shared cache key holds as it is.
pub(crate) const PARAMS_IN_KEY: usize = 1024;

struct Shared {
    config: WorkerConfig,
    /// Starts the workers: real processes, or a test's fakes.
    launcher: Arc<dyn Launcher>,
    /// Retries calls that crashed a worker (for idempotent methods).
    retry_crashes: RetryPolicy,
    no_retry: RetryPolicy,
    slots: Vec<RwLock<Option<Arc<Process>>>>,
    /// Per slot, whether a replacement is starting for its worker
    /// (`recycle`). A worker that dies meanwhile has its restart wait for
    /// that start, which takes the slot once ready: a second start for the
    /// slot was wasted, and the ready replacement thrown away.
    replacing: Vec<tokio::sync::watch::Sender<bool>>,
    next_call: AtomicU64,
    next_process: AtomicU64,
    capacity: Arc<Notify>,
    waiting: AtomicUsize,
    /// Breakers, retries' events and statistics.
    ledger: Arc<Ledger>,
    restart_times: Mutex<VecDeque<Instant>>,
    restarts: AtomicU64,
    crashes: AtomicU64,
    storm: AtomicBool,
    closing: AtomicBool,
    recycled: AtomicU64,
    /// Workers swapped out and still finishing their calls.
    retiring: Arc<AtomicUsize>,
    /// The recycled workers still finishing their calls, out of the slots:
    /// `kill_now` and `shutdown` reach them too (review 143: one outlived
    /// litebridge running a call).
    retired: Arc<Mutex<Vec<Arc<Process>>>>,
    /// The workers still starting (a restart's, a recycle's): `kill_now`,
    /// `shutdown` and a drop stop them too.
    starting: Starting,
    names: MethodNames,
    exit_tx: mpsc::UnboundedSender<u64>,
    cache: std::sync::OnceLock<crate::store::Cache>,
}

/// A pool of long-lived worker processes called over JSON-RPC on their
/// stdin/stdout. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> litebridge::Result<()> {
/// use std::time::Duration;
/// use litebridge::workers::{CallOptions, WorkerConfig, WorkerPool};
/// use serde_json::json;
///
/// // Two Python workers written with the SDK (`python/litebridge_worker`).
/// let mut config = WorkerConfig::from_command_line("python3 examples/worker.py");
/// config.processes = 2;
/// let pool = WorkerPool::start(config).await?;
///
/// // A call with its own deadline; a crash of an idempotent method is
/// // retried on another worker, and each method has a circuit breaker.
/// let answer = pool
///     .call(
///         "analyze",
///         json!({"description": "a todo app"}),
///         CallOptions { timeout: Some(Duration::from_secs(60)), ..CallOptions::default() },
///     )
///     .await?;
/// println!("{answer}");
/// println!("{:?}", pool.status().workers);
/// pool.shutdown().await; // drain, close stdin, then SIGTERM and SIGKILL
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("command", &self.shared.config.command)
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    /// Starts `config.processes` workers and waits until each has sent `$/ready`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad configuration; [`Error::Unavailable`] when a
    /// worker cannot start, ends before it is ready or does not send `$/ready`
    /// in time (the message names the command and its last stderr line). The
    /// workers already started are stopped.
    pub async fn start(config: WorkerConfig) -> Result<WorkerPool> {
        WorkerPool::start_with(config, Arc::new(Processes)).await
    }

    /// [`WorkerPool::start`] with workers started by `launcher`.
    pub(crate) async fn start_with(
        config: WorkerConfig,
        launcher: Arc<dyn Launcher>,
    ) -> Result<WorkerPool> {
        config.validate()?;
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        // Retried only when the worker that ran it declared the method
        // idempotent too (see `call_once`).
        let retry_crashes = config.retry.clone().retry_if(|e| {
            matches!(
                e,
                Error::WorkerCrashed {
                    idempotent: true,
                    ..
                }
            )
        });
        let shared = Arc::new(Shared {
            launcher,
            retry_crashes,
            no_retry: RetryPolicy::none(),
            slots: (0..config.processes).map(|_| RwLock::new(None)).collect(),
            replacing: (0..config.processes)
                .map(|_| tokio::sync::watch::Sender::new(false))
                .collect(),
            next_call: AtomicU64::new(1),
            next_process: AtomicU64::new(1),
            capacity: Arc::new(Notify::new()),
            waiting: AtomicUsize::new(0),
            ledger: Ledger::new(&config.breaker),
            restart_times: Mutex::new(VecDeque::new()),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            storm: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            recycled: AtomicU64::new(0),
            retiring: Arc::new(AtomicUsize::new(0)),
            retired: Arc::default(),
            starting: Starting::default(),
            names: MethodNames::default(),
            exit_tx: exit_tx.clone(),
            cache: std::sync::OnceLock::new(),
            config,
        });
        // Started together in this future, not in tasks of their own: a
        // `start` dropped half way (a timeout around it, a signal) drops
        // each start where it is, which kills a worker still starting at
        // once (its process group, `Entered`); aborted tasks were dropped
        // later, after a process about to exit had gone (review 156). Each
        // worker is put in its slot as soon as it is ready, where the
        // pool's drop stops it (review 153).
        let starts = (0..shared.slots.len()).map(|slot| {
            let (s, tx) = (shared.clone(), exit_tx.clone());
            async move {
                let id = s.next_process.fetch_add(1, Ordering::Relaxed);
                let p = Process::spawn(
                    &s.config,
                    &*s.launcher,
                    id,
                    tx,
                    s.capacity.clone(),
                    &s.starting,
                )
                .await?;
                s.names.learn(&p);
                let _ = s.ledger.events.send(PoolEvent::WorkerStarted {
                    id: p.id,
                    pid: p.pid,
                });
                *write(&s.slots[slot]) = Some(p);
                Ok::<(), Error>(())
            }
        });
        // Dropped before every start ended (the start given up), the
        // workers already ready are killed at once too: they served
        // nothing, and a process about to exit runs no drain (review 157).
        let mut unfinished = Unfinished(&shared, true);
        let failure = futures_util::future::join_all(starts)
            .await
            .into_iter()
            .find_map(std::result::Result::err);
        unfinished.1 = false;
        drop(unfinished);
        let pool = WorkerPool { shared };
        if let Some(e) = failure {
            pool.shutdown().await;
            return Err(e);
        }
        tokio::spawn(supervise(Arc::downgrade(&pool.shared), exit_rx));
        tokio::spawn(maintain(Arc::downgrade(&pool.shared)));
        let _ = pool.shared.ledger.events.send(PoolEvent::Started {
            processes: pool.shared.slots.len(),
        });
        Ok(pool)
    }

    /// Calls `method` with `params` on the least-loaded worker.
    ///
    /// # Errors
    /// [`Error::WorkerError`] when the handler raised; [`Error::WorkerCrashed`]
    /// when the worker died (after retries, for idempotent methods);
    /// [`Error::Timeout`]; [`Error::Overloaded`] when the queue is full;
    /// [`Error::CircuitOpen`] when the method's breaker is open;
    /// [`Error::InvalidArgument`] for a method no worker announced (or, in
    /// generic mode, outside the announced prefixes), a name of the worker
    /// protocol (`$/...`), or bad params.
    pub async fn call(&self, method: &str, params: Json, options: CallOptions) -> Result<Json> {
        // One deadline for the call, from the moment it was asked: a wait
        // on another caller's cached call and a call of its own both end by it.
        let timeout = options.timeout.unwrap_or(self.shared.config.call_timeout);
        let deadline = Instant::now() + timeout;
        self.shared.names.check(method)?;
        if let Some(cache) = self.shared.cache.get()
            && let Some((key, ttl)) = self.cache_key(method, &params, &options)
        {
            // Boxed: a call that is not cached does not carry the cache's
            // future in its own (half its size; a NATS host boxes each
            // call's future, and callers move theirs).
            return Box::pin(
                cache.get_or_load_by(&key, ttl, Some((deadline, timeout)), || {
                    self.call_uncached(method, params, options, deadline)
                }),
            )
            .await;
        }
        self.call_uncached(method, params, options, deadline).await
    }

    /// Caches results through `cache` from now on (the first cache given stays).
    pub fn use_cache(&self, cache: crate::store::Cache) {
        let _ = self.shared.cache.set(cache);
    }

    /// The cache key and lifetime of a call, when its result may be cached.
    fn cache_key(
        &self,
        method: &str,
        params: &Json,
        options: &CallOptions,
    ) -> Option<(String, Option<Duration>)> {
        let declared = self.shared.slots.iter().find_map(|slot| {
            read(slot)
                .as_ref()
                .and_then(|p| p.methods.get(method))
                .and_then(|m| m.cache_ttl_s)
        });
        cache_key(method, params, options, declared)
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
                reason: "the pool is shutting down".into(),
            });
        }
        let timeout = options.timeout.unwrap_or(s.config.call_timeout);
        // A caller that waited on a shared call of the cache and came to
        // run its own has a deadline that may have passed: nothing starts.
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            });
        }
        let state = s.names.state_name(method);
        let idempotent = self.idempotent(method);
        let custom;
        let policy = if options.retry && idempotent {
            match options.max_retries {
                // Fewer than the server's, never more: each retry of a call
                // that crashes its worker takes another worker down.
                Some(n) => {
                    custom = s
                        .retry_crashes
                        .clone()
                        .max_retries(n.min(s.retry_crashes.retries()));
                    &custom
                }
                None => &s.retry_crashes,
            }
        } else {
            &s.no_retry
        };
        let request_id = options.request_id.as_deref();
        let abandoned = options.abandoned.as_ref();
        // Whether a timeout is the method's (see `call_once`).
        let fair = AtomicBool::new(false);
        // A retry that finds no worker in time (its crashed one restarting)
        // must not hide the crash: the caller gets that, and so does the
        // breaker.
        let unknown = FirstUnknown::default();
        let r = s
            .ledger
            .run(
                method,
                state,
                policy,
                deadline,
                &fair,
                &unknown,
                |attempt| {
                    let (fair, params, unknown) = (&fair, &params, &unknown);
                    async move {
                        let call = Call {
                            deadline,
                            timeout,
                            again: attempt > 1,
                            fair,
                            unknown,
                            abandoned,
                        };
                        let r = self.call_once(method, params, request_id, call).await;
                        unknown.note(&r);
                        r
                    }
                },
            )
            .await;
        // A name outside the announced ones is tracked once it succeeds.
        if r.is_ok() && state.is_none() {
            s.names.promote(method);
        }
        // Never more than the method's idempotency when the call began
        // (`call_once` says what the worker that ran it declared).
        r.map_err(|e| if idempotent { e } else { e.of_method(false) })
    }

    /// Whether `method` may be retried after a crash: declared idempotent by
    /// every worker that announces it (during a recycle to a new version of
    /// the workers, one that says otherwise wins). Unknown methods are not.
    pub fn idempotent(&self, method: &str) -> bool {
        let mut said = self
            .shared
            .slots
            .iter()
            .filter_map(|slot| {
                read(slot)
                    .as_ref()
                    .and_then(|p| p.methods.get(method).map(|m| m.idempotent))
            })
            .peekable();
        said.peek().is_some() && said.all(|idempotent| idempotent)
    }

    /// One attempt.
    async fn call_once(
        &self,
        method: &str,
        params: &Json,
        request_id: Option<&str>,
        call: Call<'_>,
    ) -> Result<Json> {
        let Call {
            deadline,
            timeout,
            again,
            fair,
            unknown,
            abandoned,
        } = call;
        let s = &self.shared;
        let mut tries = 0;
        let (process, id, reply) = loop {
            let process = self.pick(deadline, timeout).await?;
            // A timeout from here on is the method's only if the call had
            // in the worker most of what the default deadline allows: not
            // when its caller chose less, nor when it waited for a worker
            // (that is the pool's load). The last attempt's counts.
            fair.store(
                deadline.saturating_duration_since(Instant::now())
                    >= s.config.call_timeout.mul_f64(0.9),
                Ordering::Relaxed,
            );
            // Retried after a crash only where it is still safe: the worker
            // picked, and every worker now, declare the method idempotent
            // (a replacement may be a new version that says otherwise).
            if again && !(declares_idempotent(&process, method) && self.idempotent(method)) {
                return Err(Error::CallOutcomeUnknown {
                    method: method.to_owned(),
                    reason: "its worker crashed with the call in flight, and it was not tried \
                             again: the workers now say it is not idempotent"
                        .into(),
                    idempotent: false,
                });
            }
            let id = s.next_call.fetch_add(1, Ordering::Relaxed);
            match process.send(id, method, params, request_id) {
                Ok(reply) => break (process, id, reply),
                // It stopped taking calls between the pick and the send (its
                // stdin broke, or it died): the call never left, so another
                // worker may take it, whatever the method.
                Err(e) => {
                    tries += 1;
                    if tries >= 3 {
                        return Err(e);
                    }
                }
            }
        };
        // If this future is dropped (the caller went away) or times out, the
        // worker is told to cancel, and replaced if it stays stuck.
        let mut guard = Abandon {
            process: process.clone(),
            id,
            sent: Instant::now(),
            armed: true,
            abandoned: abandoned.cloned(),
        };
        let mut reply = reply;
        let outcome = match tokio::time::timeout_at(deadline, &mut reply).await {
            Ok(got) => Some(got.ok()),
            // What came with the deadline counts: a crash, an answer.
            Err(_) => match reply.try_recv() {
                Ok(got) => Some(Some(got)),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(None),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            },
        };
        let r = match outcome {
            Some(Some(r)) => {
                guard.armed = false;
                r
            }
            Some(None) => {
                guard.armed = false;
                Err(Error::WorkerCrashed {
                    pid: process.pid,
                    worker: process.id,
                    exit: "the worker stopped".into(),
                    stderr: Vec::new(),
                    idempotent: false,
                })
            }
            None => {
                // Answered in time, its tree waiting for the turn of large
                // answers, or its answer perhaps unread behind the worker's
                // that wait for it, at the deadline (`process.rs`): the wait
                // is the pool's, not the method's. (Only then: a wait
                // earlier in the call excused a hang, review 235.)
                if process.answered(id) || process.reader_waited_within(BACKLOG) {
                    fair.store(false, Ordering::Relaxed);
                }
                Err(Error::Timeout {
                    after: timeout,
                    stage: TimeoutStage::InWorker { idempotent: false },
                })
            }
        };
        drop(guard);
        if let Err(Error::WorkerCrashed { .. }) = &r {
            unknown.worker_died(process.id);
        }
        // Safe to call again only if the worker that ran it, and every
        // worker announcing the method now, declare it idempotent: during a
        // recycle to new workers, one version may say otherwise. Asked only
        // of a failure: an answer takes no look at the slots.
        r.map_err(|e| e.of_method(declares_idempotent(&process, method) && self.idempotent(method)))
    }

    /// The least-loaded live worker with room, waiting (until the deadline)
    /// when all are full.
    async fn pick(&self, deadline: Instant, timeout: Duration) -> Result<Arc<Process>> {
        let s = &self.shared;
        // Nothing starts past the deadline, a worker free or not.
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            });
        }
        let mut counted = false;
        let r = loop {
            let notified = s.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.least_loaded() {
                break Ok(p);
            }
            if !counted {
                if s.waiting.fetch_add(1, Ordering::AcqRel) >= s.config.queue {
                    s.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::Overloaded {
                        queue: "worker",
                        capacity: s.config.queue,
                        retry_after: Duration::from_millis(50),
                    });
                }
                counted = true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break Err(Error::Timeout {
                    after: timeout,
                    stage: TimeoutStage::Queued,
                });
            }
        };
        if counted {
            s.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        r
    }

    /// The live worker with the fewest calls in flight and room for one
    /// more, among those taking calls; one stuck on a cancelled call (to be
    /// replaced) only when no other has room.
    fn least_loaded(&self) -> Option<Arc<Process>> {
        let max = self.shared.config.max_in_flight;
        let mut best: Option<((bool, usize), Arc<Process>)> = None;
        for slot in &self.shared.slots {
            let guard = read(slot);
            let Some(p) = guard.as_ref() else { continue };
            let rank = (p.is_stuck(), p.load.load(Ordering::Acquire));
            if p.is_dead()
                || !p.takes_calls()
                || rank.1 >= max
                || best.as_ref().is_some_and(|(b, _)| *b <= rank)
            {
                continue;
            }
            best = Some((rank, p.clone()));
        }
        best.map(|(_, p)| p)
    }

    fn live(&self) -> Vec<Arc<Process>> {
        self.shared
            .slots
            .iter()
            .filter_map(|slot| read(slot).clone())
            .filter(|p| !p.is_dead())
            .collect()
    }

    /// Events from now on: workers starting, exiting, restarting and being
    /// recycled, retries, breaker changes, shutdown.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<PoolEvent> {
        self.shared.ledger.events.subscribe()
    }

    /// The methods the workers announced in `$/ready`.
    pub fn methods(&self) -> Vec<crate::workers::MethodInfo> {
        let mut v: Vec<_> = self
            .live()
            .first()
            .map(|p| p.methods.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Whether the workers accept names they did not announce (generic mode).
    pub fn accepts_any_method(&self) -> bool {
        self.live().iter().any(|p| p.dynamic)
    }

    /// Resets the circuit breaker of `method`; false if it has none yet.
    pub fn reset_breaker(&self, method: &str) -> bool {
        self.shared.ledger.breakers.reset(method)
    }

    /// The breakers, for events (`subscribe`) and statistics.
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.shared.ledger.breakers
    }

    /// A snapshot of the pool.
    pub fn status(&self) -> PoolStatus {
        let s = &self.shared;
        let workers: Vec<WorkerStatus> = self
            .live()
            .iter()
            .map(|p| WorkerStatus {
                id: p.id,
                pid: p.pid,
                in_flight: p.load.load(Ordering::Relaxed),
                calls: p.calls.load(Ordering::Relaxed),
                uptime: p.started.elapsed(),
            })
            .collect();
        PoolStatus {
            healthy: workers.len() == s.slots.len() && !s.storm.load(Ordering::Relaxed),
            processes: s.slots.len(),
            workers,
            waiting: s.waiting.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
            crashes: s.crashes.load(Ordering::Relaxed),
            breakers: s.ledger.breakers.statuses(),
            recycled: s.recycled.load(Ordering::Relaxed),
            methods: s.ledger.methods(),
            all: s.ledger.all(),
        }
    }

    /// Kills every worker's process group now (SIGKILL), without waiting:
    /// for a process about to leave before [`shutdown`](Self::shutdown) is
    /// done (its grace period over), so that no worker outlives it running
    /// a call nobody waits for.
    pub fn kill_now(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.starting.close();
        // The slots, then `retired`: a recycle moves its old worker to
        // `retired` before it lets go of the slot, so read in this order
        // each worker is in one of them (review 153: read the other way,
        // a worker retired in between was in neither, and outlived us).
        let live = self.live();
        let retired = lock(&self.shared.retired).clone();
        for p in live.into_iter().chain(retired) {
            p.signal(libc::SIGKILL);
        }
    }

    /// Stops the pool: refuses new calls, lets calls in flight finish (up to
    /// the grace period), closes the workers' stdin, then sends SIGTERM and
    /// finally SIGKILL to any process group still alive.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        if !s.closing.swap(true, Ordering::AcqRel) {
            let _ = s.ledger.events.send(PoolEvent::Shutdown);
        }
        // A worker still starting never served a call: stopped now.
        s.starting.close();
        s.capacity.notify_waiters();
        let grace = s.config.shutdown_grace;
        let drained = Instant::now() + grace;
        while Instant::now() < drained
            && self
                .live()
                .iter()
                .any(|p| p.load.load(Ordering::Acquire) > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all: Vec<Arc<Process>> = s
            .slots
            .iter()
            .filter_map(|slot| read(slot).clone())
            .chain(lock(&s.retired).clone())
            .collect();
        for p in &all {
            p.close_stdin();
        }
        stop(&all, grace).await;
    }
}

/// Waits for workers whose stdin was closed to end, up to `grace`; then
/// SIGTERM, up to `grace` again; then SIGKILL.
async fn stop(all: &[Arc<Process>], grace: Duration) {
    // All at once: one after the other, the last of N stubborn workers
    // went 2 x grace x N after the first (review 151).
    futures_util::future::join_all(all.iter().map(|p| async move {
        if !p.wait_exit(grace).await {
            p.signal(libc::SIGTERM);
            if !p.wait_exit(grace).await {
                p.signal(libc::SIGKILL);
                p.wait_exit(Duration::from_secs(5)).await;
            }
        }
    }))
    .await;
}

impl Drop for Shared {
    /// The last handle went without [`WorkerPool::shutdown`] (an
    /// application dropped its pool or its `Service`): the workers are
    /// stopped as `shutdown` stops them, in a task of the runtime. A worker
    /// process is held by the task that reads its stdout, so without this
    /// the workers lived until the application ended (found by a review).
    /// Without a runtime, or when the runtime drops that task before it is
    /// done (it is shutting down), what is left is killed.
    fn drop(&mut self) {
        self.starting.close();
        let all: Vec<Arc<Process>> = self
            .slots
            .iter()
            .filter_map(|slot| read(slot).clone())
            .chain(lock(&self.retired).drain(..))
            .filter(|p| !p.is_dead())
            .collect();
        if all.is_empty() {
            return;
        }
        for p in &all {
            p.close_stdin();
        }
        let left = KillLeft(all);
        let grace = self.config.shutdown_grace;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { stop(&left.0, grace).await });
        }
    }
}

/// A `WorkerPool::start` under way (while `.1`): dropped then (the start
/// given up), it kills every worker started so far, and any still
/// starting, at once.
struct Unfinished<'a>(&'a Shared, bool);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        self.0.starting.close();
        for slot in &self.0.slots {
            if let Some(p) = read(slot).as_ref() {
                p.signal(libc::SIGKILL);
            }
        }
    }
}

/// Workers killed when this drops, those not ended by then.
struct KillLeft(Vec<Arc<Process>>);

impl Drop for KillLeft {
    fn drop(&mut self) {
        for p in &self.0 {
            p.signal(libc::SIGKILL);
        }
    }
}

/// What an attempt needs to know of its call.
struct Call<'a> {
    deadline: Instant,
    timeout: Duration,
    /// An earlier attempt's worker crashed with the call in flight.
    again: bool,
    /// Whether a timeout of the attempt is the method's (see `call_once`).
    fair: &'a AtomicBool,
    /// The call's first unknown outcome and first worker death.
    unknown: &'a FirstUnknown,
    /// See [`CallOptions::abandoned`].
    abandoned: Option<&'a Abandoned>,
}

/// Tells the worker to cancel a call whose caller went away.
struct Abandon {
    process: Arc<Process>,
    id: u64,
    /// When the call was sent.
    sent: Instant,
    armed: bool,
    abandoned: Option<Abandoned>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            self.process
                .abandon(self.id, self.sent, self.abandoned.as_ref());
        }
    }
}

/// Replaces workers that end, with backoff, until the pool closes.
async fn supervise(shared: std::sync::Weak<Shared>, mut exits: mpsc::UnboundedReceiver<u64>) {
    // No sender of its own: once the pool and its workers are gone, the
    // channel ends, and so does this task (review 153: it waited for good).
    while let Some(id) = exits.recv().await {
        let Some(s) = shared.upgrade() else { return };
        if s.closing.load(Ordering::Acquire) {
            continue;
        }
        let Some(slot) = s
            .slots
            .iter()
            .position(|slot| read(slot).as_ref().is_some_and(|p| p.id == id))
        else {
            continue;
        };
        {
            // Counted once: here, or by the replacement that took its
            // place meanwhile (`recycle`), which then needs no restart.
            let current = read(&s.slots[slot]);
            let Some(p) = current.as_ref().filter(|p| p.id == id && p.count_exit()) else {
                continue;
            };
            crashed(&s, p);
        }
        let (weak, tx) = (Arc::downgrade(&s), s.exit_tx.clone());
        drop(s);
        tokio::spawn(async move { restart(weak, slot, id, tx).await });
    }
}

/// Counts `p`, put in a slot whose worker died, as a restart, tells it,
/// and wakes the calls waiting for a worker.
fn restarted(s: &Shared, p: &Process) {
    let _ = s.ledger.events.send(PoolEvent::WorkerRestarted {
        id: p.id,
        pid: p.pid,
    });
    s.restarts.fetch_add(1, Ordering::Relaxed);
    s.capacity.notify_waiters();
}

/// Counts the crash of `p` (a slot's worker, or one that died right after
/// it got ready, before it had a slot) and tells it with its exit and last
/// stderr lines.
fn crashed(s: &Shared, p: &Process) {
    s.crashes.fetch_add(1, Ordering::Relaxed);
    let (exit, last_stderr) = p.ending();
    let _ = s.ledger.events.send(PoolEvent::WorkerExited {
        id: p.id,
        pid: p.pid,
        exit,
        last_stderr,
    });
}

/// Starts a worker in `slot`, whose worker `dead` died, again, with
/// backoff, until one starts, the pool closes or goes, or another takes
/// the slot (a replacement that was starting: `recycle`).
///
/// The pool is not held while it waits, nor while a worker starts
/// (`spawn_unheld`): a pool whose last handle went while its workers could
/// not start (a bad deploy) kept them all, and tried again for ever
/// (review 147).
async fn restart(
    shared: std::sync::Weak<Shared>,
    slot: usize,
    dead: u64,
    exit_tx: mpsc::UnboundedSender<u64>,
) {
    let mut attempt = 0u32;
    loop {
        let Some(s) = shared.upgrade() else { return };
        if s.closing.load(Ordering::Acquire) {
            return;
        }
        attempt += 1;
        let storm = {
            let mut times = lock(&s.restart_times);
            let now = Instant::now();
            times.push_back(now);
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                times.pop_front();
            }
            times.len() > s.config.max_restarts_per_minute as usize
        };
        s.storm.store(storm, Ordering::Relaxed);
        // Back off per consecutive failure; in a storm, at the slowest pace.
        let wait = if storm {
            s.config.restart_backoff.max
        } else {
            s.config.restart_backoff.ceiling(attempt)
        };
        let mut replacing = s.replacing[slot].subscribe();
        drop(s);
        tokio::time::sleep(wait).await;
        // A replacement starting for the worker that died (`recycle`)
        // takes the slot once ready: waited for, not started twice. The
        // channel ends with the pool. (A replacement that never gets
        // ready holds the slot empty up to its `start_timeout`; it
        // started first, with the same command, so it is ready first
        // otherwise.)
        if replacing.wait_for(|r| !*r).await.is_err() {
            return;
        }
        match shared.upgrade() {
            // Taken by another meanwhile: its own end, if it died too,
            // brings its own restart (review 238: two loops started the
            // slot, each start after the first wasted).
            Some(s) if !s.closing.load(Ordering::Acquire) => {
                if !holds(&s, slot, dead) {
                    return;
                }
            }
            _ => return,
        }
        let Some((id, started)) = spawn_unheld(&shared, exit_tx.clone()).await else {
            return;
        };
        let Some(s) = shared.upgrade() else {
            if let Ok(p) = started {
                p.signal(libc::SIGKILL);
            }
            return;
        };
        match started {
            Ok(p) => {
                s.names.learn(&p);
                {
                    // Started as the pool closed: never put in a slot,
                    // where no shutdown would look for it any more; looked
                    // at under the slot's lock, as in `recycle` (review 144).
                    let mut current = write(&s.slots[slot]);
                    // Another there (a recycle's replacement, put in while
                    // this one started) keeps the slot.
                    if s.closing.load(Ordering::Acquire)
                        || current.as_ref().is_none_or(|c| c.id != dead)
                    {
                        drop(current);
                        p.signal(libc::SIGKILL);
                        return;
                    }
                    // Dead already (it died right after `$/ready`): its
                    // exit found no slot to restart, so this loop starts
                    // another (review 153: the slot kept a dead worker).
                    // A crash all the same (review 239: not counted).
                    if p.is_dead() {
                        if p.count_exit() {
                            crashed(&s, &p);
                        }
                        continue;
                    }
                    *current = Some(p.clone());
                }
                tracing::info!(worker = id, pid = p.pid, "worker restarted");
                restarted(&s, &p);
                return;
            }
            // Not worth a warning when it was stopped for the pool's closing.
            Err(_) if s.closing.load(Ordering::Acquire) => return,
            Err(e) => tracing::warn!("restarting a worker failed: {e}"),
        }
    }
}

/// Whether `slot` holds the worker `id`.
fn holds(s: &Shared, slot: usize, id: u64) -> bool {
    read(&s.slots[slot]).as_ref().is_some_and(|p| p.id == id)
}

/// Why a worker is recycled, if it should be.
fn recycle_reason(config: &WorkerConfig, p: &Process) -> Option<String> {
    if p.is_stuck() {
        return Some(format!(
            "a call it was told to cancel still ran {} ms later",
            p.cancel_grace().as_millis()
        ));
    }
    if let Some(n) = config.recycle_after_calls
        && p.calls.load(Ordering::Relaxed) >= n
    {
        return Some(format!("served {n} calls"));
    }
    if let Some(age) = config.max_age
        && p.started.elapsed() >= age
    {
        return Some(format!("older than {} s", age.as_secs_f64()));
    }
    if let Some(idle) = config.max_idle {
        let last = *lock(&p.last_call);
        if p.load.load(Ordering::Relaxed) == 0 && last.elapsed() >= idle {
            return Some(format!("idle for {} s", idle.as_secs_f64()));
        }
    }
    if let Some(limit) = config.max_rss_bytes
        && p.rss_bytes().is_some_and(|rss| rss > limit)
    {
        return Some(format!("resident memory over {limit} bytes"));
    }
    None
}

/// How many health checks a worker whose recycling failed `failures`
/// times in a row waits before the next try: 2, 4, 8, 16, then 32 (about
/// five minutes at the default interval). Each try starts a whole
/// process: a bad deploy whose workers cannot start would otherwise start
/// and lose one for each worker at every health check, for good. Counted
/// in checks, not time: a round of checks whose starts each take up to
/// `start_timeout` lasts longer than an interval.
fn recycle_wait(failures: u32) -> u64 {
    1 << failures.clamp(1, 5)
}

/// Pings every worker and recycles those due, every `health_interval`.
/// The pool is held only while a worker is looked at, not while a ping is
/// answered or a replacement starts: a pool dropped meanwhile stops its
/// workers then, not a `ping_timeout` per worker (or a `start_timeout`)
/// later. Each slot is looked after on its own: one whose replacement
/// takes its whole `start_timeout` to fail, or whose worker answers pings
/// slowly, holds up no other slot's checks (review 230: a worker that
/// stopped answering was found a start timeout late, and kept taking calls
/// meanwhile).
async fn maintain(shared: std::sync::Weak<Shared>) {
    let slots = match shared.upgrade() {
        Some(s) => s.slots.len(),
        None => return,
    };
    // Replacements start one at a time, as when the slots were looked at
    // in turn (review 231: workers due together, by `max_age` say, were
    // all replaced at once, twice the processes for a moment, and the
    // rule of as many retiring as slots was checked by each before any
    // counted); a slot never waits for the turn (`maintain_slot`).
    let starts = tokio::sync::Semaphore::new(1);
    futures_util::future::join_all(
        (0..slots).map(|slot| maintain_slot(shared.clone(), slot, &starts)),
    )
    .await;
}

/// [`maintain`] for one slot; `starts` lets one replacement start at a time.
async fn maintain_slot(
    shared: std::sync::Weak<Shared>,
    slot: usize,
    starts: &tokio::sync::Semaphore,
) {
    let interval = match shared.upgrade() {
        Some(s) => s.config.health_interval,
        None => return,
    };
    // The worker whose recycling failed, how many times in a row, and at
    // which round of checks it is tried again (`recycle_wait`).
    let mut postponed: Option<(u64, u32, u64)> = None;
    for round in 0u64.. {
        tokio::time::sleep(interval).await;
        let Some(mut s) = shared.upgrade() else {
            return;
        };
        if s.closing.load(Ordering::Acquire) {
            return;
        }
        let Some(p) = read(&s.slots[slot]).clone() else {
            continue;
        };
        if p.is_dead() {
            continue;
        }
        let reason = recycle_reason(&s.config, &p);
        if reason.is_none() {
            // No longer due: failures counted before do not carry over.
            postponed = None;
        }
        if let Some(reason) = reason {
            // As many retiring as there are slots at most: a caller
            // that gets worker after worker stuck (a 1 ms deadline on a
            // handler that ignores cancellation) could otherwise pile
            // up processes finishing their calls. Past that, a stuck
            // worker is killed, as before there was recycling for it.
            let room = s.retiring.load(Ordering::Acquire) < s.slots.len();
            let (failures, due) = match postponed {
                Some((id, failures, at)) if id == p.id => (failures, round >= at),
                _ => (0, true),
            };
            // A stuck worker is tried at every check, as before: its
            // other calls finish on it if a replacement starts.
            // One replacement starts at a time: while another slot's
            // starts, this one's waits for a later check (not counted as a
            // failure), and its worker is still looked at below (review
            // 232: waiting for the turn held up its ping and the kill
            // rule, a start timeout per slot in line).
            if (room || !p.is_stuck())
                && (due || p.is_stuck())
                && let Ok(turn) = starts.try_acquire()
            {
                drop(s);
                let wait = if p.is_stuck() {
                    1
                } else {
                    recycle_wait(failures + 1)
                };
                // Its worker is still pinged while the replacement starts
                // (up to `start_timeout`): one that stops answering
                // meanwhile is killed then, not once the start ends.
                let replaced = tokio::select! {
                    biased;
                    replaced = recycle(&shared, slot, &p, reason, wait) => replaced,
                    never = ping_while_replaced(&shared, interval, &p) => match never {},
                };
                drop(turn);
                if replaced {
                    postponed = None;
                    continue;
                }
                postponed = Some((p.id, failures + 1, round + wait));
                let Some(again) = shared.upgrade() else {
                    return;
                };
                if again.closing.load(Ordering::Acquire) {
                    return;
                }
                s = again;
            }
            // Not replaced (no room, or its replacement cannot start),
            // and stuck on a cancelled call for longer than a call's
            // default deadline (at once when there is no room): killed,
            // as a worker that stops answering pings is.
            if p.stuck_for()
                .is_some_and(|t| !room || t >= s.config.call_timeout)
            {
                tracing::warn!(
                    worker = p.id,
                    pid = p.pid,
                    "still stuck on a cancelled call and not replaced: killing the worker"
                );
                p.signal(libc::SIGKILL);
                continue;
            }
        }
        let id = s.next_call.fetch_add(1, Ordering::Relaxed);
        let within = s.config.ping_timeout;
        drop(s);
        ping(id, within, &p).await;
    }
}

/// Pings `p` now and every `interval` after, for as long as it is polled:
/// a worker whose replacement is starting. Stops (pending) once the pool
/// is gone or closing, or the worker dead.
async fn ping_while_replaced(
    shared: &std::sync::Weak<Shared>,
    interval: Duration,
    p: &Arc<Process>,
) -> std::convert::Infallible {
    loop {
        let Some(s) = shared
            .upgrade()
            .filter(|s| !s.closing.load(Ordering::Acquire) && !p.is_dead())
        else {
            return std::future::pending().await;
        };
        let id = s.next_call.fetch_add(1, Ordering::Relaxed);
        let within = s.config.ping_timeout;
        drop(s);
        ping(id, within, p).await;
        tokio::time::sleep(interval).await;
    }
}

/// Starts a worker for the pool without holding it: a pool dropped or
/// closed while the worker starts has it stopped then (not once it is
/// ready, which a worker loading a model may take minutes to be). The worker's id and
/// how its start went; `None` when the pool is gone already. The caller
/// upgrades `shared` again, and stops a worker started for a pool gone
/// meanwhile.
async fn spawn_unheld(
    shared: &std::sync::Weak<Shared>,
    on_exit: mpsc::UnboundedSender<u64>,
) -> Option<(u64, Result<Arc<Process>>)> {
    let s = shared.upgrade()?;
    let id = s.next_process.fetch_add(1, Ordering::Relaxed);
    let (config, launcher, capacity) = (s.config.clone(), s.launcher.clone(), s.capacity.clone());
    let starting = s.starting.clone();
    drop(s);
    // Dropped or closed meanwhile (`shutdown`, `kill_now`: review 151
    // found a worker starting then outlived both), the pool kills the
    // worker through `starting`, and the start ends.
    let started = Process::spawn(&config, &*launcher, id, on_exit, capacity, &starting).await;
    Some((id, started))
}

/// Kills a worker that does not answer `$/ping` (call `id`) `within` (it
/// is then replaced).
async fn ping(id: u64, within: Duration, p: &Arc<Process>) {
    /// Forgets a ping dropped before its answer (its worker swapped out
    /// meanwhile: `ping_while_replaced`): left waiting, it held the retired
    /// worker's drain, which waits for its calls, up to `MAX_DRAIN`
    /// (review 233).
    struct Forget<'a>(&'a Process, u64, bool);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            if self.2 {
                self.0.forget(self.1);
            }
        }
    }
    let Ok(reply) = p.send(id, "$/ping", &Json::Null, None) else {
        return;
    };
    let mut waiting = Forget(p, id, true);
    let mut reply = reply;
    loop {
        if tokio::time::timeout(within, &mut reply).await.is_ok() {
            return;
        }
        // Its answer waited behind the worker's large answers, which wait
        // for the process's turn (`process.rs`): not the worker's fault,
        // and read once the turn comes (review 234). Excused while its
        // reader waits, and for `within` after (review 235: a count of
        // waits moved with none, and a worker deaf to pings that answered
        // large was never killed). Not for a set time: the turn may be
        // held long by others (review 236: a cap killed honest workers,
        // and the kill was not seen until the wait ended anyway).
        if !p.reader_waited_within(within) {
            break;
        }
    }
    waiting.2 = false;
    tracing::warn!(
        worker = p.id,
        pid = p.pid,
        "no answer to $/ping: killing the worker"
    );
    p.abandon(id, Instant::now(), None);
    p.signal(libc::SIGKILL);
}

/// Starts a replacement, swaps it in, then lets the old worker finish its
/// calls and exit (stdin closed), with SIGTERM and SIGKILL as a last resort.
/// Whether the old worker was swapped out (or died meanwhile, or the pool
/// is gone); if not, it is tried again after `wait` health checks
/// (logged). The pool is not held while the replacement starts.
async fn recycle(
    shared: &std::sync::Weak<Shared>,
    slot: usize,
    old: &Arc<Process>,
    reason: String,
    wait: u64,
) -> bool {
    /// Ends the slot's `replacing` mark, and with it the wait of a restart
    /// for the worker, if it died meanwhile: after the slot was filled, or
    /// not, however `recycle` ends.
    struct Replacing<'a>(&'a std::sync::Weak<Shared>, usize);
    impl Drop for Replacing<'_> {
        fn drop(&mut self) {
            if let Some(s) = self.0.upgrade() {
                s.replacing[self.1].send_replace(false);
            }
        }
    }
    let Some(s) = shared.upgrade() else {
        return true;
    };
    let exit_tx = s.exit_tx.clone();
    s.replacing[slot].send_replace(true);
    let _replacing = Replacing(shared, slot);
    drop(s);
    let Some((id, started)) = spawn_unheld(shared, exit_tx).await else {
        return true;
    };
    let fresh = match started {
        Ok(p) => p,
        // The worker died meanwhile: its restart, waiting for this start,
        // goes ahead.
        Err(_) if old.is_dead() => return true,
        Err(e) => {
            if shared
                .upgrade()
                .is_some_and(|s| !s.closing.load(Ordering::Acquire))
            {
                tracing::warn!(
                    worker = old.id,
                    "recycling postponed for {wait} health checks, the replacement did not start: {e}"
                );
            }
            return false;
        }
    };
    // Killed meanwhile (by its ping) and not yet seen dead (its stderr is
    // read first): waited for, so that it is counted as the crash it is
    // and replaced as one, not retired as if recycled (review 238: its
    // end was then not counted, depending on a few milliseconds).
    // Meanwhile the new worker is in `retired`, where `kill_now`,
    // `shutdown` and a drop find it (review 239: out of `starting` once
    // ready, it was in no list for the wait), until it is in the slot or
    // killed (`Parked`).
    let mut parked = if old.killed() && !old.is_dead() {
        let Some(s) = shared.upgrade() else {
            fresh.signal(libc::SIGKILL);
            return true;
        };
        lock(&s.retired).push(fresh.clone());
        let parked = Parked(s.retired.clone(), fresh.clone(), true);
        drop(s);
        if !old.wait_exit(SEEN_DEAD_AFTER_KILL).await {
            tracing::warn!(
                worker = old.id,
                pid = old.pid,
                "killed {} ms ago and not yet ended: recycled as if alive",
                SEEN_DEAD_AFTER_KILL.as_millis()
            );
        }
        Some(parked)
    } else {
        None
    };
    let Some(s) = shared.upgrade() else {
        // Dropped while it started: it never served, and goes.
        fresh.signal(libc::SIGKILL);
        return true;
    };
    s.names.learn(&fresh);
    {
        // `closing` looked at, and `old` moved to `retired`, under the
        // slot's lock: `kill_now` and `shutdown` read the slots, then
        // `retired`, so each worker is in one of them when they look
        // (review 144 found windows where a worker was in neither).
        let mut current = write(&s.slots[slot]);
        if s.closing.load(Ordering::Acquire)
            || !current.as_ref().is_some_and(|p| Arc::ptr_eq(p, old))
        {
            drop(current);
            // Closing, or the slot filled meanwhile: the new one never
            // served, and goes.
            fresh.signal(libc::SIGKILL);
            return true;
        }
        // `dead` is set before its exit is told, so a worker that died
        // meanwhile (killed by a ping, say) is seen here: the replacement
        // takes its place as a restart would have, and a restart that
        // `supervise` started for it, waiting for this start, ends (review
        // 151: the slot is filled once, every worker in it or in
        // `retired`). A replacement dead already leaves the slot to that
        // restart.
        if old.is_dead() {
            if fresh.is_dead() {
                if fresh.count_exit() {
                    crashed(&s, &fresh);
                }
                return true;
            }
            // Its end counted here if `supervise` has not yet (then it
            // finds the slot taken, and starts no restart).
            if old.count_exit() {
                crashed(&s, old);
            }
            *current = Some(fresh.clone());
            if let Some(p) = parked.take() {
                p.placed();
            }
            drop(current);
            tracing::info!(
                worker = id,
                pid = fresh.pid,
                "worker restarted: its replacement was starting as it ended"
            );
            restarted(&s, &fresh);
            return true;
        }
        // Dead already (right after `$/ready`): not swapped in, where its
        // slot would keep a dead worker with no restart to come (review
        // 153); the old one serves on, and recycling is tried again.
        if fresh.is_dead() {
            tracing::warn!(
                worker = old.id,
                "recycling postponed for {wait} health checks: the replacement ended right after it was ready"
            );
            if fresh.count_exit() {
                crashed(&s, &fresh);
            }
            return false;
        }
        lock(&s.retired).push(old.clone());
        *current = Some(fresh.clone());
        if let Some(p) = parked.take() {
            p.placed();
        }
    }
    s.recycled.fetch_add(1, Ordering::Relaxed);
    s.capacity.notify_waiters();
    tracing::info!(
        worker = old.id,
        replaced_by = id,
        "recycling a worker: {reason}"
    );
    let _ = s.ledger.events.send(PoolEvent::WorkerRecycled {
        id: old.id,
        reason,
        replaced_by: id,
    });
    let _ = s
        .ledger
        .events
        .send(PoolEvent::WorkerStarted { id, pid: fresh.pid });
    let old = old.clone();
    let grace = s.config.shutdown_grace;
    let retiring = s.retiring.clone();
    retiring.fetch_add(1, Ordering::AcqRel);
    let retired = s.retired.clone();
    tokio::spawn(async move {
        // Calls already sent are answered as usual, whatever their
        // deadlines (a caller that gives up at its own takes its call out
        // of those waited for, as do the cancelled: a stuck one would hold
        // this up); then stdin closes.
        let until = Instant::now() + MAX_DRAIN;
        while old.answering() > 0 && Instant::now() < until && !old.is_dead() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        old.close_stdin();
        if !old.wait_exit(grace).await {
            old.signal(libc::SIGTERM);
            if !old.wait_exit(grace).await {
                old.signal(libc::SIGKILL);
            }
        }
        retiring.fetch_sub(1, Ordering::AcqRel);
        lock(&retired).retain(|p| !Arc::ptr_eq(p, &old));
    });
    true
}

/// A new worker kept in `retired` while its recycle waits (`recycle`):
/// taken out, under its slot's lock, once it is in the slot
/// ([`Parked::placed`]); otherwise killed as well (the recycle dropped
/// during its wait, or its worker not wanted: review 240 found a dropped
/// recycle left it running, in no list).
struct Parked(Arc<Mutex<Vec<Arc<Process>>>>, Arc<Process>, bool);

impl Parked {
    /// It is in its slot: out of `retired`, and kept.
    fn placed(mut self) {
        self.2 = false;
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        lock(&self.0).retain(|p| !Arc::ptr_eq(p, &self.1));
        if self.2 {
            self.1.signal(libc::SIGKILL);
        }
    }
}

/// Whether `process` announced `method` as idempotent.
fn declares_idempotent(process: &Process, method: &str) -> bool {
    process.methods.get(method).is_some_and(|m| m.idempotent)
}

/// How long after its stdout reader stopped waiting for the turn of large
/// answers a worker's answer may still be unread behind it.
const BACKLOG: Duration = Duration::from_millis(100);

/// The longest a retired worker is left to answer the calls it has (each
/// also ends at its caller's deadline): the longest deadline a request may
/// ask for.
const MAX_DRAIN: Duration = Duration::from_secs(3_600);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ttl(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn a_caller_may_shorten_a_shared_entrys_lifetime_but_not_lengthen_it() {
        let longer = CallOptions {
            cache_ttl: ttl(3_155_760_000),
            ..CallOptions::default()
        };
        let (_, t) = cache_key("now", &json!([]), &longer, Some(1.0)).unwrap();
        assert_eq!(t, ttl(1));
        let shorter = CallOptions {
            cache_ttl: ttl(5),
            ..CallOptions::default()
        };
        let (_, t) = cache_key("now", &json!([]), &shorter, Some(60.0)).unwrap();
        assert_eq!(t, ttl(5));
        // Not declared cacheable: no shared entry, whatever the caller asks.
        assert!(cache_key("now", &json!([]), &longer, None).is_none());
        // A caller's own entry (its `cache_key`) lives as long as it asks.
        let own = CallOptions {
            cache_key: Some("k".into()),
            ..longer
        };
        let (_, t) = cache_key("now", &json!([]), &own, Some(1.0)).unwrap();
        assert_eq!(t, ttl(3_155_760_000));
    }

    #[test]
    fn long_parameters_are_keyed_by_their_digest() {
        let options = CallOptions::default();
        let (short, _) = cache_key("m", &json!({"b": 1, "a": [2]}), &options, Some(1.0)).unwrap();
        assert_eq!(short, r#"bridge:params:m:{"a":[2],"b":1}"#);
        let big = json!(["x".repeat(10 * PARAMS_IN_KEY)]);
        let (long, _) = cache_key("m", &big, &options, Some(1.0)).unwrap();
        assert_eq!(long.len(), "bridge:params:m:sha256:".len() + 64, "{long}");
        assert!(long.starts_with("bridge:params:m:sha256:"));
        // The same parameters, the same key; others, another.
        assert_eq!(cache_key("m", &big, &options, Some(1.0)).unwrap().0, long);
        let other = json!(["y".repeat(10 * PARAMS_IN_KEY)]);
        assert_ne!(cache_key("m", &other, &options, Some(1.0)).unwrap().0, long);
    }
}
