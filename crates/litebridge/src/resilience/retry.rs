//! Retrying an operation: when, how often, how long to wait.
//!
//! The policy decides nothing about the operation itself: the operation runs,
//! and on failure the policy asks, in order, whether attempts are left, whether
//! the error is worth retrying (by default [`Error::is_recoverable`]), whether
//! the wait would pass `max_elapsed`, and whether the [`RetryBudget`] allows
//! one more retry. Only then does it wait (the backoff's delay, or the error's
//! own `retry_after` if that is longer) and try again. Waiting uses Tokio's
//! clock, so tests advance time instead of sleeping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::resilience::backoff::{Backoff, DefaultRandom, Random};
use crate::resilience::budget::RetryBudget;

/// Default attempts in all (the first one included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What happened before a retry, for events and logs.
#[derive(Debug)]
pub struct RetryEvent<'a> {
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// Its error.
    pub error: &'a Error,
    /// The wait before the next attempt.
    pub delay: Duration,
}

type Predicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// When and how to retry a failed operation: at most `max_attempts`, with a
/// backoff between them, only for errors the predicate accepts (by default
/// those whose [`Error::is_recoverable`] is true), optionally within a
/// retry budget shared by many callers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use litebridge::resilience::{Backoff, Growth, RetryPolicy};
/// use litebridge::Error;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(4)
///     .backoff(Backoff {
///         growth: Growth::Exponential { base: Duration::from_millis(1), factor: 2.0 },
///         max: Duration::from_millis(10),
///         full_jitter: true,
///     });
/// // Fails twice with a recoverable error, then succeeds.
/// let answer = policy
///     .run(|attempt| async move {
///         if attempt < 3 {
///             let retry_after = Duration::from_millis(1);
///             Err(Error::Overloaded { queue: "demo", capacity: 1, retry_after })
///         } else {
///             Ok(attempt)
///         }
///     })
///     .await;
/// assert_eq!(answer.unwrap(), 3);
///
/// // An error that is not recoverable is returned at once.
/// let refused: litebridge::Result<()> = policy
///     .run(|_| async {
///         Err(Error::InvalidArgument { param: "x".into(), message: "is wrong".into() })
///     })
///     .await;
/// assert!(refused.is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    backoff: Backoff,
    predicate: Predicate,
    budget: Option<Arc<RetryBudget>>,
    random: Arc<dyn Random>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("backoff", &self.backoff)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Default for RetryPolicy {
    /// 3 attempts, 30 s at most, [`Backoff::default`], recoverable errors only, no budget.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_elapsed: Some(Duration::from_secs(30)),
            backoff: Backoff::default(),
            predicate: Arc::new(Error::is_recoverable),
            budget: None,
            random: Arc::new(DefaultRandom::default()),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy::default().max_attempts(1)
    }

    /// Attempts in all, the first one included (at least 1). Default: 3.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// No retry starts later than this after the first attempt. Default: 30 s.
    pub fn max_elapsed(mut self, limit: Option<Duration>) -> Self {
        self.max_elapsed = limit;
        self
    }

    /// The schedule of waits. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Which errors are retried. Default: [`Error::is_recoverable`].
    pub fn retry_if(mut self, predicate: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Arc::new(predicate);
        self
    }

    /// Shares a budget that caps retries across every use of this policy.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The random source of the jitter (tests use a fixed sequence).
    pub fn random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = random;
        self
    }

    /// The configured attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Retries after the first attempt (the seed system's count: 0 is no
    /// retry). Same as `max_attempts(n + 1)`.
    pub fn max_retries(self, n: u32) -> Self {
        self.max_attempts(n.saturating_add(1))
    }

    /// The configured retries: attempts less one.
    pub fn retries(&self) -> u32 {
        self.max_attempts - 1
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds or the
    /// policy gives up, returning the last error.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_with(op, |_| {}).await
    }

    /// As [`RetryPolicy::run`], calling `on_retry` before each wait.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run_with<T, F, Fut>(
        &self,
        op: F,
        on_retry: impl FnMut(&RetryEvent<'_>),
    ) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_until(None, op, on_retry).await
    }

    /// As [`RetryPolicy::run_with`], for an operation with a `deadline`: a
    /// retry whose wait would reach it is not made (the last error is the
    /// answer, by the deadline rather than after it).
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run_until<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        mut op: F,
        mut on_retry: impl FnMut(&RetryEvent<'_>),
    ) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // Read only for a limit of the time spent (not on every call).
        let started = self.max_elapsed.map(|_| Instant::now());
        if let Some(b) = &self.budget {
            b.deposit();
        }
        let mut attempt = 1;
        loop {
            let error = match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(delay) = self.next_delay(attempt, &error, started, deadline) else {
                return Err(error);
            };
            on_retry(&RetryEvent {
                attempt,
                error: &error,
                delay,
            });
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The wait before retrying after `attempt` failed with `error`, or `None`
    /// to give up.
    fn next_delay(
        &self,
        attempt: u32,
        error: &Error,
        started: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts || !(self.predicate)(error) {
            return None;
        }
        let jittered = self.backoff.delay(attempt, self.random.as_ref());
        let delay = error.retry_after().map_or(jittered, |r| r.max(jittered));
        if let (Some(limit), Some(started)) = (self.max_elapsed, started)
            && started.elapsed() + delay > limit
        {
            return None;
        }
        if deadline.is_some_and(|end| Instant::now().checked_add(delay).is_none_or(|at| at >= end))
        {
            return None;
        }
        if let Some(b) = &self.budget
            && !b.try_withdraw()
        {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::resilience::backoff::Growth;
    use crate::resilience::backoff::tests::Sequence;

    fn flaky(fail_first: u32, calls: &AtomicU32) -> Result<&'static str> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= fail_first {
            Err(Error::Busy {
                message: format!("busy #{n}"),
            })
        } else {
            Ok("done")
        }
    }

    fn exact() -> RetryPolicy {
        RetryPolicy::default()
            .backoff(Backoff {
                growth: Growth::Exponential {
                    base: Duration::from_millis(100),
                    factor: 2.0,
                },
                max: Duration::from_secs(10),
                full_jitter: true,
            })
            .random(Arc::new(Sequence::new(&[0.5])))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_recoverable_errors_with_exact_waits() {
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let started = Instant::now();
        let r = exact()
            .max_attempts(4)
            .run_with(|_| async { flaky(3, &calls) }, |e| waits.push(e.delay))
            .await;
        assert_eq!(r.unwrap(), "done");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200]);
        assert_eq!(started.elapsed(), Duration::from_millis(350));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let e = exact()
            .run(|_| async { flaky(10, &calls) })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(e.to_string().contains("busy #3"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_what_cannot_succeed() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = exact()
            .run(|_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::invalid("x", "bad"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_stops_before_a_wait_that_would_pass_it() {
        let calls = AtomicU32::new(0);
        let r = exact()
            .max_attempts(10)
            .max_elapsed(Some(Duration::from_millis(200)))
            .run(|_| async { flaky(10, &calls) })
            .await;
        assert!(r.is_err());
        // Waits of 50 and 100 ms fit in 200 ms; the next (200 ms) would not.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_whose_wait_would_reach_the_deadline_is_not_made() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let r = exact()
            .max_attempts(10)
            .run_until(
                Some(started + Duration::from_millis(160)),
                |_| async { flaky(10, &calls) },
                |_| {},
            )
            .await;
        assert!(r.is_err());
        // Waits of 50 and 100 ms end before 160 ms; the next would not.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_retry_after_from_the_error_is_honoured() {
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let _ = exact()
            .max_attempts(2)
            .run_with(
                |_| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(Error::Overloaded {
                        queue: "q",
                        capacity: 1,
                        retry_after: Duration::from_secs(2),
                    })
                },
                |e| waits.push(e.delay),
            )
            .await;
        assert_eq!(waits, [Duration::from_secs(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_when_everything_fails() {
        let budget = Arc::new(RetryBudget::new(0.1, 0, Duration::from_secs(60)));
        let policy = exact().max_attempts(5).budget(budget);
        let calls = AtomicU32::new(0);
        for _ in 0..100 {
            let _ = policy.run(|_| async { flaky(u32::MAX, &calls) }).await;
        }
        // 100 first attempts; retries capped at 10 % of them.
        let total = calls.load(Ordering::SeqCst);
        assert!(total <= 110, "{total} calls");
        assert!(
            total >= 105,
            "{total} calls: the budget should still allow some retries"
        );
    }
}
