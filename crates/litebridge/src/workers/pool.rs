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
use crate::workers::config::WorkerConfig;
use crate::workers::process::Process;

/// Options of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOptions {
    /// Deadline, time queued included; `None` uses [`WorkerConfig::call_timeout`].
    pub timeout: Option<Duration>,
    /// Retry after a crash when the method is idempotent. Default: true.
    pub retry: bool,
    /// Attempts at most when retrying; `None` uses the pool's retry policy.
    pub max_attempts: Option<u32>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: None,
            retry: true,
            max_attempts: None,
        }
    }
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
}

struct Shared {
    config: WorkerConfig,
    /// Retries calls that crashed a worker (for idempotent methods).
    retry_crashes: RetryPolicy,
    no_retry: RetryPolicy,
    slots: Vec<RwLock<Option<Arc<Process>>>>,
    next_call: AtomicU64,
    next_process: AtomicU64,
    capacity: Notify,
    waiting: AtomicUsize,
    breakers: BreakerRegistry,
    restart_times: Mutex<VecDeque<Instant>>,
    restarts: AtomicU64,
    crashes: AtomicU64,
    storm: AtomicBool,
    closing: AtomicBool,
}

/// A pool of long-lived worker processes called over JSON-RPC on their
/// stdin/stdout. Cheap to clone.
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
        config.validate()?;
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let retry_crashes = config
            .retry
            .clone()
            .retry_if(|e| matches!(e, Error::WorkerCrashed { .. }));
        let shared = Arc::new(Shared {
            retry_crashes,
            no_retry: RetryPolicy::none(),
            slots: (0..config.processes).map(|_| RwLock::new(None)).collect(),
            next_call: AtomicU64::new(1),
            next_process: AtomicU64::new(1),
            capacity: Notify::new(),
            waiting: AtomicUsize::new(0),
            breakers: BreakerRegistry::new(config.breaker.clone()),
            restart_times: Mutex::new(VecDeque::new()),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            storm: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            config,
        });
        let mut starting = tokio::task::JoinSet::new();
        for slot in 0..shared.slots.len() {
            let (s, tx) = (shared.clone(), exit_tx.clone());
            starting.spawn(async move {
                let id = s.next_process.fetch_add(1, Ordering::Relaxed);
                (slot, Process::spawn(&s.config, id, tx).await)
            });
        }
        let mut failure = None;
        while let Some(joined) = starting.join_next().await {
            match joined {
                Ok((slot, Ok(p))) => *write(&shared.slots[slot]) = Some(p),
                Ok((_, Err(e))) => failure = failure.or(Some(e)),
                Err(e) => {
                    failure = failure.or(Some(Error::Internal {
                        message: format!("starting a worker panicked: {e}"),
                    }));
                }
            }
        }
        let pool = WorkerPool { shared };
        if let Some(e) = failure {
            pool.shutdown().await;
            return Err(e);
        }
        tokio::spawn(supervise(Arc::downgrade(&pool.shared), exit_rx, exit_tx));
        Ok(pool)
    }

    /// Calls `method` with `params` on the least-loaded worker.
    ///
    /// # Errors
    /// [`Error::WorkerError`] when the handler raised; [`Error::WorkerCrashed`]
    /// when the worker died (after retries, for idempotent methods);
    /// [`Error::Timeout`]; [`Error::Overloaded`] when the queue is full;
    /// [`Error::CircuitOpen`] when the method's breaker is open;
    /// [`Error::InvalidArgument`] for an unknown method or bad params.
    pub async fn call(&self, method: &str, params: Json, options: CallOptions) -> Result<Json> {
        let s = &self.shared;
        if s.closing.load(Ordering::Acquire) {
            return Err(Error::Unavailable {
                what: "workers",
                reason: "the pool is shutting down".into(),
            });
        }
        let timeout = options.timeout.unwrap_or(s.config.call_timeout);
        let deadline = Instant::now() + timeout;
        let breaker = s.breakers.get(method);
        let custom;
        let policy = if options.retry && self.idempotent(method) {
            match options.max_attempts {
                Some(n) => {
                    custom = s.retry_crashes.clone().max_attempts(n);
                    &custom
                }
                None => &s.retry_crashes,
            }
        } else {
            &s.no_retry
        };
        // The breaker sees one outcome per call, after its retries: one worker
        // dying with many calls in flight is one event, and the calls it took
        // down may well succeed elsewhere.
        let permit = breaker.acquire()?;
        let r = policy
            .run(|_| self.call_once(method, &params, deadline, timeout))
            .await;
        match &r {
            Ok(_) => permit.success(),
            Err(
                Error::WorkerCrashed { .. } | Error::Timeout { .. } | Error::WorkerError { .. },
            ) => permit.failure(),
            // The caller's mistake or our own queue: not the method's health.
            Err(_) => drop(permit),
        }
        r
    }

    /// Whether `method` may be retried after a crash: declared idempotent by
    /// the workers. Unknown methods are not.
    pub fn idempotent(&self, method: &str) -> bool {
        self.shared.slots.iter().any(|slot| {
            read(slot)
                .as_ref()
                .and_then(|p| p.methods.get(method))
                .is_some_and(|m| m.idempotent)
        })
    }

    async fn call_once(
        &self,
        method: &str,
        params: &Json,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Json> {
        let s = &self.shared;
        let process = self.pick(deadline, timeout).await?;
        let id = s.next_call.fetch_add(1, Ordering::Relaxed);
        let reply = process.send(id, method, params)?;
        // If this future is dropped (the caller went away) or times out, the
        // worker is told to cancel, and killed if it stays stuck.
        let mut guard = Abandon {
            process: process.clone(),
            id,
            armed: true,
        };
        let outcome = tokio::time::timeout_at(deadline, reply).await;
        let r = match outcome {
            Ok(Ok(r)) => {
                guard.armed = false;
                r
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(Error::WorkerCrashed {
                    pid: process.pid,
                    exit: "the worker stopped".into(),
                    stderr: Vec::new(),
                })
            }
            Err(_) => Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Running,
            }),
        };
        drop(guard);
        s.capacity.notify_one();
        r
    }

    /// The least-loaded live worker with room, waiting (until the deadline)
    /// when all are full.
    async fn pick(&self, deadline: Instant, timeout: Duration) -> Result<Arc<Process>> {
        let s = &self.shared;
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

    /// The live worker with the fewest calls in flight and room for one more.
    fn least_loaded(&self) -> Option<Arc<Process>> {
        let max = self.shared.config.max_in_flight;
        let mut best: Option<(usize, Arc<Process>)> = None;
        for slot in &self.shared.slots {
            let guard = read(slot);
            let Some(p) = guard.as_ref() else { continue };
            let load = p.load.load(Ordering::Acquire);
            if p.is_dead() || load >= max || best.as_ref().is_some_and(|(l, _)| *l <= load) {
                continue;
            }
            best = Some((load, p.clone()));
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
        self.shared.breakers.reset(method)
    }

    /// The breakers, for events (`subscribe`) and statistics.
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.shared.breakers
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
            breakers: s.breakers.statuses(),
        }
    }

    /// Stops the pool: refuses new calls, lets calls in flight finish (up to
    /// the grace period), closes the workers' stdin, then sends SIGTERM and
    /// finally SIGKILL to any process group still alive.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        s.closing.store(true, Ordering::Release);
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
            .collect();
        for p in &all {
            p.close_stdin();
        }
        for p in &all {
            if !p.wait_exit(grace).await {
                p.signal(libc::SIGTERM);
                if !p.wait_exit(grace).await {
                    p.signal(libc::SIGKILL);
                    p.wait_exit(Duration::from_secs(5)).await;
                }
            }
        }
    }
}

/// Tells the worker to cancel a call whose caller went away.
struct Abandon {
    process: Arc<Process>,
    id: u64,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            self.process.abandon(self.id);
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Replaces workers that end, with backoff, until the pool closes.
async fn supervise(
    shared: std::sync::Weak<Shared>,
    mut exits: mpsc::UnboundedReceiver<u64>,
    exit_tx: mpsc::UnboundedSender<u64>,
) {
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
        s.crashes.fetch_add(1, Ordering::Relaxed);
        let (s2, tx) = (s.clone(), exit_tx.clone());
        drop(s);
        tokio::spawn(async move { restart(s2, slot, tx).await });
    }
}

async fn restart(s: Arc<Shared>, slot: usize, exit_tx: mpsc::UnboundedSender<u64>) {
    let mut attempt = 0u32;
    loop {
        if s.closing.load(Ordering::Acquire) {
            return;
        }
        attempt += 1;
        let storm = {
            let mut times = s.restart_times.lock().unwrap_or_else(|p| p.into_inner());
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
        tokio::time::sleep(wait).await;
        if s.closing.load(Ordering::Acquire) {
            return;
        }
        let id = s.next_process.fetch_add(1, Ordering::Relaxed);
        match Process::spawn(&s.config, id, exit_tx.clone()).await {
            Ok(p) => {
                tracing::info!(worker = id, pid = p.pid, "worker restarted");
                *write(&s.slots[slot]) = Some(p);
                s.restarts.fetch_add(1, Ordering::Relaxed);
                s.capacity.notify_waiters();
                return;
            }
            Err(e) => tracing::warn!("restarting a worker failed: {e}"),
        }
    }
}
