//! A retry budget: retries may add at most a fixed fraction to the traffic.
//!
//! Without one, every caller retrying three times turns an outage into four
//! times the load on whatever is failing. Each first attempt deposits into a
//! sliding window; each retry withdraws, and is refused once retries in the
//! window exceed `ratio` times the first attempts plus a small floor (so a
//! quiet caller can still retry now and then). Same idea as Finagle's and
//! tower's budgets.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;
use tokio::time::Instant;

const BUCKETS: u32 = 10;

/// A sliding-window retry budget, shared by every caller of one target.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: u64,
    window: Duration,
    state: Mutex<VecDeque<Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    /// Allows `ratio` retries per first attempt (0.2 = 20 % extra load at
    /// most), plus `min_per_sec` retries per second of `window` regardless.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> RetryBudget {
        let window = window.max(Duration::from_millis(BUCKETS as u64));
        RetryBudget {
            ratio: ratio.max(0.0),
            floor: (f64::from(min_per_sec) * window.as_secs_f64()).round() as u64,
            window,
            state: Mutex::new(VecDeque::with_capacity(BUCKETS as usize + 1)),
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        self.with_current(|b| b.requests += 1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let mut allowed = false;
        let (ratio, floor) = (self.ratio, self.floor);
        self.with_window(|window| {
            let (requests, retries) = window
                .iter()
                .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
            let limit = floor + (ratio * requests as f64) as u64;
            if retries < limit {
                allowed = true;
                if let Some(b) = window.back_mut() {
                    b.retries += 1;
                }
            }
        });
        allowed
    }

    fn with_current(&self, f: impl FnOnce(&mut Bucket)) {
        self.with_window(|w| {
            if let Some(b) = w.back_mut() {
                f(b);
            }
        });
    }

    /// Drops buckets older than the window, opens the current one, runs `f`.
    fn with_window(&self, f: impl FnOnce(&mut VecDeque<Bucket>)) {
        let now = Instant::now();
        let width = self.window / BUCKETS;
        let mut w = lock(&self.state);
        while w
            .front()
            .is_some_and(|b| now.duration_since(b.start) >= self.window)
        {
            w.pop_front();
        }
        if w.back()
            .is_none_or(|b| now.duration_since(b.start) >= width)
        {
            w.push_back(Bucket {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        f(&mut w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..1000).filter(|_| b.try_withdraw()).count();
        assert_eq!(granted, 10 + 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let b = RetryBudget::new(0.0, 1, Duration::from_secs(10));
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(), "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 10);
    }
}
