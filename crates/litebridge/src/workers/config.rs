//! The configuration of a [`WorkerPool`](crate::workers::WorkerPool).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::resilience::{Backoff, BreakerConfig, Growth, RetryPolicy};

/// How to run and supervise a pool of worker processes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The program and its arguments, e.g. `["python3", "examples/worker.py"]`.
    pub command: Vec<String>,
    /// Working directory of the workers. Default: litebridge's.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables. Workers get litebridge's environment
    /// without its own settings (`LITEBRIDGE_*`), then these.
    pub env: Vec<(String, String)>,
    /// Worker processes. Default: 2.
    pub processes: usize,
    /// Calls in flight on one worker at most. Default: 64.
    pub max_in_flight: usize,
    /// Calls that may wait for a free worker; more get `overloaded`. Default: 1024.
    pub queue: usize,
    /// How long a new worker has to send `$/ready`. Default: 10 s.
    pub start_timeout: Duration,
    /// Deadline of a call that does not set one, time queued included. Default: 30 s.
    pub call_timeout: Duration,
    /// After `$/cancelRequest`, how long a worker may stay busy with the call
    /// before it is replaced (at the next health check, its other calls
    /// finishing first); and never before the call has run `call_timeout`,
    /// so that a caller's own short deadline does not get workers replaced.
    /// Default: 5 s.
    pub cancel_grace: Duration,
    /// At shutdown, how long workers get after stdin closes, and again after
    /// SIGTERM, before SIGKILL. Default: 5 s.
    pub shutdown_grace: Duration,
    /// Waits between restarts of a worker that keeps dying.
    /// Default: exponential from 100 ms, doubling, at most 10 s, no jitter.
    pub restart_backoff: Backoff,
    /// More restarts than this within a minute mark the pool unhealthy (it
    /// keeps restarting, at the backoff's slowest pace). Default: 10.
    pub max_restarts_per_minute: u32,
    /// Retries of idempotent calls after a crash. Default: 3 retries (the
    /// seed's `retryAttempts`), backoff exponential from 100 ms, and no limit
    /// of its own on the time they take: the call's deadline bounds them (a
    /// two-minute call that crashes after a minute may still be retried).
    pub retry: RetryPolicy,
    /// The per-method circuit breakers. Default: [`BreakerConfig::default`].
    pub breaker: BreakerConfig,
    /// Stderr lines kept per worker for crash reports. Default: 20.
    pub stderr_lines: usize,
    /// The longest line a worker may write; longer is a protocol error (the
    /// worker is replaced). Default: 64 MiB, as a stdio request's line. A
    /// reply is held as a JSON tree, which for an array of small numbers
    /// takes about 45 times its text (a hostile review measured a 10 MB
    /// reply at 450 MB): lower it when workers answer only small results.
    pub max_line_bytes: usize,
    /// Interval of `$/ping` health checks and recycling checks. Default: 10 s.
    /// A worker due to be recycled whose replacement fails to start (or
    /// ends right after it is ready) keeps its slot, and is tried again
    /// after 2, 4, 8, 16, then every 32 checks (a stuck one at every
    /// check, and killed as before).
    pub health_interval: Duration,
    /// A worker not answering `$/ping` within this is killed and replaced. Default: 5 s.
    pub ping_timeout: Duration,
    /// Recycle a worker after this many calls. Default: none.
    pub recycle_after_calls: Option<u64>,
    /// Recycle a worker older than this. Default: none.
    pub max_age: Option<Duration>,
    /// Recycle a worker that had no call for this long. Default: none.
    pub max_idle: Option<Duration>,
    /// Recycle a worker whose resident memory passes this many bytes. Default: none.
    pub max_rss_bytes: Option<u64>,
}

impl WorkerConfig {
    /// A configuration running `command` (program and arguments).
    pub fn new<I, S>(command: I) -> WorkerConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WorkerConfig {
            command: command.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            processes: 2,
            max_in_flight: 64,
            queue: 1024,
            start_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            restart_backoff: Backoff {
                growth: Growth::Exponential {
                    base: Duration::from_millis(100),
                    factor: 2.0,
                },
                max: Duration::from_secs(10),
                full_jitter: false,
            },
            max_restarts_per_minute: 10,
            retry: RetryPolicy::default().max_retries(3).max_elapsed(None),
            breaker: BreakerConfig::default(),
            stderr_lines: 20,
            max_line_bytes: 64 * 1024 * 1024,
            health_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            recycle_after_calls: None,
            max_age: None,
            max_idle: None,
            max_rss_bytes: None,
        }
    }

    /// Splits a command line on whitespace (`"python3 examples/worker.py"`).
    pub fn from_command_line(line: &str) -> WorkerConfig {
        WorkerConfig::new(line.split_whitespace())
    }

    /// Checks every value, naming the first bad one.
    ///
    /// # Errors
    /// [`Error::Config`] with the key, the value and what was expected.
    pub fn validate(&self) -> Result<()> {
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            return Err(Error::config(
                "workers.command",
                "\"\"",
                "a program to run, e.g. \"python3 examples/worker.py\"",
            ));
        }
        if !(1..=256).contains(&self.processes) {
            return Err(Error::config(
                "workers.processes",
                self.processes,
                "an integer from 1 to 256",
            ));
        }
        if !(1..=100_000).contains(&self.max_in_flight) {
            return Err(Error::config(
                "workers.max_in_flight",
                self.max_in_flight,
                "an integer from 1 to 100000",
            ));
        }
        if self.start_timeout.is_zero() {
            return Err(Error::config(
                "workers.start_timeout_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if self.health_interval < Duration::from_millis(10) {
            return Err(Error::config(
                "workers.health_interval_ms",
                self.health_interval.as_millis(),
                "at least 10 ms",
            ));
        }
        if self.recycle_after_calls == Some(0) {
            return Err(Error::config(
                "workers.recycle_after_calls",
                0,
                "a positive number of calls",
            ));
        }
        if self.call_timeout.is_zero() {
            return Err(Error::config(
                "workers.timeout_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        Ok(())
    }
}
