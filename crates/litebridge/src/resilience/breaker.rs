//! A circuit breaker with resilience4j's behaviour, and a registry of them.
//!
//! **Closed**: calls go through; outcomes fill a count-based sliding window.
//! Once the window holds `minimum_calls`, a failure rate (or, when configured,
//! a slow-call rate) at or above its threshold opens the breaker; so does a
//! run of `consecutive_failures` (the seed system's `circuitBreakerThreshold`).
//! **Open**: calls are refused at once with `retry_after` until `open_for` has
//! passed. **Half-open**: exactly `half_open_probes` calls are let through;
//! when they have all finished, the breaker closes if their failure rate is
//! below the threshold and opens again otherwise. A probe that has not
//! finished by its own call's deadline counts as failed. A naive breaker lets
//! every call through in half-open; this one never admits more than the probes.
//!
//! # Slow calls
//!
//! The seed system's calls are LLM requests of 10 s to 2 min: a long call is
//! the normal case, not a symptom. So no call is slow unless
//! `slow_call_duration` is set, and a probe is given as long as its caller
//! gave the call (a fixed probe timeout shorter than the calls would reopen
//! the breaker forever). What a slow method costs its callers is bounded by
//! their deadlines, which count as failures when they pass.
//!
//! Asking is cheap: one uncontended lock and a `Result` holding a `Copy`
//! value; the refusal becomes an [`Error`] only if the caller converts it.
//! Outcomes are reported through the [`Permit`]; a permit dropped without an
//! outcome (the caller gave up) frees its probe slot and counts as nothing.
//! Outcomes of permits issued before a state change are ignored.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::Error;
use crate::sync::{lock, read, write};

/// Configuration of every breaker of a registry.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Whether the pool keeps breakers at all (the seed's
    /// `circuitBreakerEnabled`); when false no call is refused. Default: true.
    pub enabled: bool,
    /// Outcomes kept in the sliding window. Default: 20.
    pub window: usize,
    /// Outcomes needed before the rates are judged. Default: 10.
    pub minimum_calls: usize,
    /// Failure rate (0-1) that opens the breaker. Default: 0.5.
    pub failure_rate: f64,
    /// Failures in a row that open the breaker, whatever the window says.
    /// Default: Some(5).
    pub consecutive_failures: Option<u32>,
    /// A successful call taking at least this long is slow; `None`: no call
    /// is slow. Default: `None` (see the module's note on slow calls).
    pub slow_call_duration: Option<Duration>,
    /// Slow-call rate (0-1) that opens the breaker; above 1 never. Default: 1.0.
    pub slow_call_rate: f64,
    /// How long the breaker stays open (the seed's `circuitBreakerTimeout`).
    /// Default: 60 s.
    pub open_for: Duration,
    /// Calls let through while half-open. Default: 3.
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// Calls in the window before its rates are judged: at least
    /// `minimum_calls`, and never fewer than `consecutive_failures`, so that a
    /// threshold of, say, 20 failures in a row is not pre-empted by the rate
    /// rule tripping on the first 10 of them.
    pub fn judged_after(&self) -> usize {
        let run = self.consecutive_failures.map_or(0, |t| t as usize);
        self.minimum_calls.max(run).max(1)
    }

    /// Outcomes the window keeps: `window`, widened to [`judged_after`](Self::judged_after).
    pub fn window_len(&self) -> usize {
        self.window.max(self.judged_after())
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            window: 20,
            minimum_calls: 10,
            failure_rate: 0.5,
            consecutive_failures: Some(5),
            slow_call_duration: None,
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(60),
            half_open_probes: 3,
        }
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until `open_for` has passed.
    Open,
    /// A few probe calls go through.
    HalfOpen,
    /// Opened by hand; refused until [`CircuitBreaker::reset`].
    ForcedOpen,
}

impl BreakerState {
    /// The wire name (`closed`, `open`, `half_open`, `forced_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
        }
    }
}

/// A state change, sent to every subscriber of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state it left.
    pub from: BreakerState,
    /// The state it entered.
    pub to: BreakerState,
}

/// A refused call: cheap to make and to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When a call may be let through again.
    pub retry_after: Duration,
}

/// A snapshot of one breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerStatus {
    /// Its name.
    pub name: Arc<str>,
    /// Its state.
    pub state: BreakerState,
    /// Outcomes in the window.
    pub calls: usize,
    /// Failure rate over the window (0-1).
    pub failure_rate: f64,
    /// Slow-call rate over the window (0-1).
    pub slow_call_rate: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

#[derive(Debug)]
struct State {
    state: BreakerState,
    /// Bumped on every state change; outcomes of older permits are ignored.
    generation: u64,
    /// (failed, slow) per outcome, oldest first.
    window: VecDeque<(bool, bool)>,
    failures: usize,
    slow: usize,
    consecutive: u32,
    opened_at: Instant,
    /// The latest deadline of the probes let through.
    probes_due: Instant,
    probes_admitted: u32,
    probes_done: u32,
    probes_failed: u32,
}

/// One circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    state: Mutex<State>,
    events: broadcast::Sender<BreakerEvent>,
}

/// Leave to make one call; report its outcome through it.
#[derive(Debug)]
#[must_use = "report the outcome with success() or failure()"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    /// When it was given, when calls may count as slow (the clock is read
    /// only when needed: twice a call on a busy bridge's two ends).
    started: Option<Instant>,
    reported: bool,
}

impl Permit<'_> {
    /// The call succeeded (it may still count as slow).
    pub fn success(mut self) {
        self.reported = true;
        let took = self.started.map(|s| s.elapsed());
        self.breaker
            .record(self.generation, self.probe, false, took);
    }

    /// The call failed.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(self.generation, self.probe, true, None);
    }

    /// Reports `failed`.
    pub fn record(self, failed: bool) {
        if failed {
            self.failure()
        } else {
            self.success()
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker; state changes go to `events`.
    pub fn new(
        name: &str,
        config: BreakerConfig,
        events: broadcast::Sender<BreakerEvent>,
    ) -> CircuitBreaker {
        let now = Instant::now();
        CircuitBreaker {
            name: name.into(),
            state: Mutex::new(State {
                state: BreakerState::Closed,
                generation: 0,
                window: VecDeque::with_capacity(config.window_len()),
                failures: 0,
                slow: 0,
                consecutive: 0,
                opened_at: now,
                probes_due: now,
                probes_admitted: 0,
                probes_done: 0,
                probes_failed: 0,
            }),
            config,
            events,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Asks to make one call that will be given up at `deadline` (the limit
    /// of a probe, if it is one).
    ///
    /// # Errors
    /// [`Rejected`] with `retry_after` while open, or half-open with every
    /// probe already out.
    pub fn try_acquire(&self, deadline: Instant) -> Result<Permit<'_>, Rejected> {
        let mut s = self.lock();
        // Read only when needed (a closed breaker that counts no slow calls
        // does not).
        let mut now = None;
        let mut now = || *now.get_or_insert_with(Instant::now);
        let probe = match s.state {
            BreakerState::Closed => false,
            BreakerState::ForcedOpen => {
                return Err(Rejected {
                    retry_after: self.config.open_for,
                });
            }
            BreakerState::Open => {
                let until = s.opened_at + self.config.open_for;
                let now = now();
                if now < until {
                    return Err(Rejected {
                        retry_after: until - now,
                    });
                }
                self.transition(&mut s, BreakerState::HalfOpen, now);
                self.admit_probe(&mut s, now, deadline)?
            }
            BreakerState::HalfOpen => self.admit_probe(&mut s, now(), deadline)?,
        };
        Ok(Permit {
            breaker: self,
            generation: s.generation,
            probe,
            started: self.config.slow_call_duration.map(|_| now()),
            reported: false,
        })
    }

    /// As [`CircuitBreaker::try_acquire`], with the refusal as an [`Error`].
    ///
    /// # Errors
    /// [`Error::CircuitOpen`] naming this breaker.
    pub fn acquire(&self, deadline: Instant) -> Result<Permit<'_>, Error> {
        self.try_acquire(deadline).map_err(|r| Error::CircuitOpen {
            breaker: self.name.to_string(),
            retry_after: r.retry_after,
        })
    }

    fn admit_probe(
        &self,
        s: &mut State,
        now: Instant,
        deadline: Instant,
    ) -> Result<bool, Rejected> {
        if s.probes_admitted > s.probes_done && now >= s.probes_due {
            // Probes out past their own deadlines did not come back: failed.
            self.transition(s, BreakerState::Open, now);
            return Err(Rejected {
                retry_after: self.config.open_for,
            });
        }
        if s.probes_admitted >= self.config.half_open_probes {
            return Err(Rejected {
                retry_after: s.probes_due.saturating_duration_since(now),
            });
        }
        s.probes_admitted += 1;
        s.probes_due = s.probes_due.max(deadline);
        Ok(true)
    }

    fn release_probe(&self, generation: u64) {
        let mut s = self.lock();
        if s.generation == generation && s.state == BreakerState::HalfOpen {
            s.probes_admitted = s.probes_admitted.saturating_sub(1);
        }
    }

    /// Counts a call's outcome; `took`: how long a success took, when
    /// calls may count as slow.
    fn record(&self, generation: u64, probe: bool, failed: bool, took: Option<Duration>) {
        let slow = !failed
            && self
                .config
                .slow_call_duration
                .zip(took)
                .is_some_and(|(d, took)| took >= d);
        let c = &self.config;
        let mut s = self.lock();
        if s.generation != generation {
            return;
        }
        match s.state {
            BreakerState::Closed => {
                if s.window.len() >= c.window_len()
                    && let Some((f, sl)) = s.window.pop_front()
                {
                    s.failures -= usize::from(f);
                    s.slow -= usize::from(sl);
                }
                s.window.push_back((failed, slow));
                s.failures += usize::from(failed);
                s.slow += usize::from(slow);
                s.consecutive = if failed { s.consecutive + 1 } else { 0 };
                let n = s.window.len() as f64;
                let tripped = c.consecutive_failures.is_some_and(|t| s.consecutive >= t)
                    || (s.window.len() >= c.judged_after()
                        && (s.failures as f64 / n >= c.failure_rate
                            || s.slow as f64 / n >= c.slow_call_rate));
                if tripped {
                    self.transition(&mut s, BreakerState::Open, Instant::now());
                }
            }
            BreakerState::HalfOpen if probe => {
                s.probes_done += 1;
                s.probes_failed += u32::from(failed || slow);
                if s.probes_done >= c.half_open_probes {
                    let rate = f64::from(s.probes_failed) / f64::from(s.probes_done);
                    let to = if rate >= c.failure_rate {
                        BreakerState::Open
                    } else {
                        BreakerState::Closed
                    };
                    self.transition(&mut s, to, Instant::now());
                }
            }
            _ => {}
        }
    }

    fn transition(&self, s: &mut State, to: BreakerState, now: Instant) {
        let from = s.state;
        s.state = to;
        s.generation += 1;
        match to {
            BreakerState::Closed => {
                s.window.clear();
                s.failures = 0;
                s.slow = 0;
                s.consecutive = 0;
            }
            BreakerState::Open | BreakerState::ForcedOpen => s.opened_at = now,
            BreakerState::HalfOpen => {
                s.probes_due = now;
                s.probes_admitted = 0;
                s.probes_done = 0;
                s.probes_failed = 0;
            }
        }
        if from != to {
            // Nobody listening is fine.
            let _ = self.events.send(BreakerEvent {
                breaker: self.name.clone(),
                from,
                to,
            });
        }
    }

    /// Closes the breaker and forgets its history.
    pub fn reset(&self) {
        let mut s = self.lock();
        self.transition(&mut s, BreakerState::Closed, Instant::now());
    }

    /// Opens the breaker until [`CircuitBreaker::reset`].
    pub fn force_open(&self) {
        let mut s = self.lock();
        self.transition(&mut s, BreakerState::ForcedOpen, Instant::now());
    }

    /// The current state (an open breaker whose time is up still reads open
    /// until the next call asks).
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// A snapshot for statistics.
    pub fn status(&self) -> BreakerStatus {
        let s = self.lock();
        let n = s.window.len();
        let rate = |x: usize| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        BreakerStatus {
            name: self.name.clone(),
            state: s.state,
            calls: n,
            failure_rate: rate(s.failures),
            slow_call_rate: rate(s.slow),
            consecutive_failures: s.consecutive,
        }
    }
}

/// Breakers keyed by name (one per worker method), made on first use.
#[derive(Debug)]
pub struct BreakerRegistry {
    config: BreakerConfig,
    breakers: RwLock<HashMap<String, Arc<CircuitBreaker>>>,
    events: broadcast::Sender<BreakerEvent>,
}

impl BreakerRegistry {
    /// An empty registry whose breakers use `config`.
    pub fn new(config: BreakerConfig) -> BreakerRegistry {
        BreakerRegistry {
            config,
            breakers: RwLock::new(HashMap::new()),
            events: broadcast::channel(256).0,
        }
    }

    /// The breaker for `name`, made closed on first use.
    pub fn get(&self, name: &str) -> Arc<CircuitBreaker> {
        if let Some(b) = read(&self.breakers).get(name) {
            return b.clone();
        }
        let mut map = write(&self.breakers);
        map.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(CircuitBreaker::new(
                    name,
                    self.config.clone(),
                    self.events.clone(),
                ))
            })
            .clone()
    }

    /// Resets the breaker for `name`; false if there is none.
    pub fn reset(&self, name: &str) -> bool {
        let b = read(&self.breakers).get(name).cloned();
        b.map(|b| b.reset()).is_some()
    }

    /// State changes of every breaker from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.events.subscribe()
    }

    /// Snapshots of every breaker, by name.
    pub fn statuses(&self) -> Vec<BreakerStatus> {
        let mut v: Vec<_> = read(&self.breakers).values().map(|b| b.status()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
