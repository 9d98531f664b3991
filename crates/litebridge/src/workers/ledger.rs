//! What the local pool and the NATS bridge share around each call: its
//! method's circuit breaker, its retries (logged and published as events),
//! and the statistics by method.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value as Json;
use tokio::time::Instant;

use crate::error::{Error, Result, TimeoutStage};
use crate::resilience::{BreakerConfig, BreakerRegistry, RetryPolicy};
use crate::sync::{lock, read, write};
use crate::workers::{MethodStats, PoolEvent};

#[derive(Default)]
struct MethodCounters {
    errors: AtomicU64,
    latency: crate::histogram::Histogram,
    /// The workers whose deaths the method's breaker counted last: a worker
    /// dying with many calls of the method in flight is one failure of it,
    /// not one per call.
    crashes_counted: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// How many of a method's counted worker deaths are remembered: more than
/// the workers that may die together.
const CRASHES_REMEMBERED: usize = 64;

impl MethodCounters {
    /// Whether the death of `worker` is news to the method's breaker (and
    /// from now on, it is not).
    fn first_news_of(&self, worker: u64) -> bool {
        let mut seen = lock(&self.crashes_counted);
        if seen.contains(&worker) {
            return false;
        }
        if seen.len() == CRASHES_REMEMBERED {
            seen.pop_front();
        }
        seen.push_back(worker);
        true
    }
}

/// Breakers, retries and statistics of the calls of one bridge.
pub(crate) struct Ledger {
    pub(crate) breakers: BreakerRegistry,
    breaker_enabled: bool,
    pub(crate) events: tokio::sync::broadcast::Sender<PoolEvent>,
    stats: RwLock<HashMap<String, Arc<MethodCounters>>>,
    /// Every call, whatever its method.
    all: MethodCounters,
}

impl Ledger {
    /// A ledger whose breakers follow `breaker`; their changes are logged
    /// and published as [`PoolEvent::Breaker`] while the ledger lives.
    pub(crate) fn new(breaker: &BreakerConfig) -> Arc<Ledger> {
        let ledger = Arc::new(Ledger {
            breakers: BreakerRegistry::new(breaker.clone()),
            breaker_enabled: breaker.enabled,
            events: tokio::sync::broadcast::channel(1024).0,
            stats: RwLock::new(HashMap::new()),
            all: MethodCounters::default(),
        });
        let mut changes = ledger.breakers.subscribe();
        let weak = Arc::downgrade(&ledger);
        tokio::spawn(async move {
            loop {
                let e = match changes.recv().await {
                    Ok(e) => e,
                    // Changes it missed are gone; the next ones still count.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(l) = weak.upgrade() else { return };
                if e.to == crate::resilience::BreakerState::Closed {
                    tracing::info!(
                        method = &*e.breaker,
                        "circuit breaker {} -> closed",
                        e.from.as_str()
                    );
                } else {
                    tracing::warn!(
                        method = &*e.breaker,
                        "circuit breaker {} -> {}",
                        e.from.as_str(),
                        e.to.as_str()
                    );
                }
                let _ = l.events.send(PoolEvent::Breaker(e));
            }
        });
        ledger
    }

    /// Whether statistics are kept under `name` already, and how many names
    /// have them.
    #[cfg(feature = "nats")]
    pub(crate) fn tracks(&self, name: &str) -> (bool, usize) {
        let stats = read(&self.stats);
        (stats.contains_key(name), stats.len())
    }

    /// Gives `name` statistics (and a breaker) of its own from now on.
    #[cfg(feature = "nats")]
    pub(crate) fn track(&self, name: &str) {
        self.counters(name);
    }

    /// Runs one call: through its breaker (when `state` names one and
    /// breakers are on), `op` once per attempt as `policy` says (and no
    /// retry past `deadline`), its outcome settled by `unknown` (what the
    /// caller will get: an earlier attempt's unknown outcome rather than a
    /// later one's failure to start), then counted under `state` (or
    /// `(other)`). The breaker sees one outcome per call, after its
    /// retries: the calls a worker took down may well succeed elsewhere, and
    /// one worker dying with many calls of the method in flight is one
    /// failure of it, not one per call. Crashes and exceptions are the
    /// method's failures (a crash also when a retry then failed otherwise),
    /// and so is a timeout of a call that ran, when `fair` says so after the
    /// call (it had in the worker most of the default deadline): a caller's
    /// own shorter deadline is its choice (1 ms calls would otherwise open
    /// any method's breaker for everyone), and a long wait for a worker is
    /// the pool's load, not the method's doing. A worker host lost with
    /// calls in flight is a death too (once per method per host). Anything
    /// else (the caller's mistakes, a full queue, a call that timed out
    /// waiting for a worker, a lost connection to NATS) is not.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run<F, Fut>(
        &self,
        method: &str,
        state: Option<&str>,
        policy: &RetryPolicy,
        deadline: Instant,
        fair: &AtomicBool,
        unknown: &FirstUnknown,
        op: F,
    ) -> Result<Json>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<Json>>,
    {
        let breaker = state
            .filter(|_| self.breaker_enabled)
            .map(|name| self.breakers.get(name));
        let permit = match &breaker {
            // A probe is given as long as the call.
            Some(b) => Some(b.acquire(deadline)?),
            None => None,
        };
        let started = Instant::now();
        let r = policy
            .run_until(Some(deadline), op, |retry| {
                // What a worker printed may quote the call's params: the
                // kind at the default level, the rest at debug.
                tracing::warn!(
                    method,
                    attempt = retry.attempt,
                    kind = retry.error.kind().as_str(),
                    "retrying a call"
                );
                tracing::debug!(method, "the attempt failed: {}", retry.error);
                let _ = self.events.send(PoolEvent::Retry {
                    method: method.to_owned(),
                    attempt: retry.attempt,
                    max_attempts: policy.attempts(),
                    kind: retry.error.kind(),
                    error: retry.error.to_string(),
                    delay: retry.delay,
                });
            })
            .await;
        // Whether an attempt saw its worker die, and which: the method's
        // failure once per worker, whatever a retry came to (unless it
        // succeeded).
        let crashed = unknown.crashed();
        let crash = !crashed.is_empty() || matches!(r, Err(Error::WorkerCrashed { .. }));
        let r = unknown.settle(r);
        let counters = self.counters(state.unwrap_or(super::names::OTHER));
        let took = started.elapsed();
        counters.latency.record(took);
        self.all.latency.record(took);
        if r.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            self.all.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(permit) = permit {
            match &r {
                Ok(_) => permit.success(),
                // Raised on purpose (an answer about the input, say): not
                // counted either way. Counted a success, a caller could
                // close an open breaker with one (review 142).
                Err(Error::WorkerError {
                    deliberate: true, ..
                }) => drop(permit),
                Err(Error::WorkerError { .. }) => permit.failure(),
                Err(Error::Timeout { stage, .. })
                    if fair.load(Ordering::Relaxed) && *stage != TimeoutStage::Queued =>
                {
                    permit.failure();
                }
                // Every death its attempts saw counted already, for other
                // calls they took down: no outcome of this one. (Each is
                // remembered, so none is merged with another's.)
                Err(_)
                    if crash
                        && !crashed.is_empty()
                        && !crashed
                            .iter()
                            .fold(false, |news, w| counters.first_news_of(*w) | news) =>
                {
                    drop(permit);
                }
                Err(_) if crash => permit.failure(),
                Err(_) => drop(permit),
            }
        }
        r
    }

    fn counters(&self, name: &str) -> Arc<MethodCounters> {
        if let Some(c) = read(&self.stats).get(name) {
            return c.clone();
        }
        write(&self.stats)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The statistics of each method, by name.
    pub(crate) fn methods(&self) -> Vec<MethodStats> {
        let mut v: Vec<MethodStats> = read(&self.stats)
            .iter()
            .map(|(name, c)| summary(name, c))
            .collect();
        v.sort_by(|a, b| a.method.cmp(&b.method));
        v
    }

    /// Every call of every method, named `*`.
    pub(crate) fn all(&self) -> MethodStats {
        summary("*", &self.all)
    }
}

/// The first attempt of a call whose outcome became unknown (it may have
/// run): a later attempt that fails without starting must not hide it from
/// the caller, nor count as the method's outcome.
/// Also the workers its attempts saw die.
#[derive(Default)]
pub(crate) struct FirstUnknown {
    first: std::sync::Mutex<Option<Error>>,
    crashes: std::sync::Mutex<Vec<u64>>,
}

impl FirstUnknown {
    /// Keeps `r`'s error if it is the first whose outcome is unknown.
    pub(crate) fn note(&self, r: &Result<Json>) {
        if let Err(e) = r
            && outcome_unknown(e)
        {
            lock(&self.first).get_or_insert_with(|| e.clone());
        }
    }

    /// Keeps `worker` (a number no other worker has had: not a pid, which
    /// every worker in a container of its own may share; over NATS, a
    /// number for a host's worker or for a lost host) as one an attempt
    /// saw die (one of the call's attempts each: a handful).
    pub(crate) fn worker_died(&self, worker: u64) {
        let mut crashes = lock(&self.crashes);
        if !crashes.contains(&worker) {
            crashes.push(worker);
        }
    }

    /// The error kept, if any.
    #[cfg(feature = "nats")]
    pub(crate) fn get(&self) -> Option<Error> {
        lock(&self.first).clone()
    }

    /// The workers the call's attempts saw die.
    fn crashed(&self) -> Vec<u64> {
        lock(&self.crashes).clone()
    }

    /// What the caller gets: the error kept rather than a last attempt's
    /// that never started.
    fn settle(&self, r: Result<Json>) -> Result<Json> {
        match r {
            Err(e) if !outcome_unknown(&e) && claims_not_started(&e) => {
                Err(lock(&self.first).take().unwrap_or(e))
            }
            r => r,
        }
    }
}

/// An error that says its call never started.
fn claims_not_started(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. }
            | Error::Overloaded { .. }
            | Error::CircuitOpen { .. }
            | Error::Timeout {
                stage: TimeoutStage::Queued,
                ..
            }
    )
}

/// An error after which the call may or may not have run.
pub(crate) fn outcome_unknown(e: &Error) -> bool {
    matches!(
        e,
        Error::WorkerCrashed { .. } | Error::HostLost { .. } | Error::CallOutcomeUnknown { .. }
    )
}

fn summary(name: &str, c: &MethodCounters) -> MethodStats {
    let latency = c.latency.summary();
    MethodStats {
        method: name.to_owned(),
        calls: latency.count,
        errors: c.errors.load(Ordering::Relaxed),
        latency,
    }
}
