//! How long to wait before the next attempt.
//!
//! Delays grow exponentially, linearly or stay constant, are capped, and by
//! default use *full jitter* (a uniform draw between zero and the computed
//! delay), which spreads retries of many callers instead of synchronizing them
//! into waves. The random source is a trait so tests can make delays exact.

use crate::sync::lock;
use std::sync::Mutex;
use std::time::Duration;

/// A source of uniform random numbers in `[0, 1)`.
pub trait Random: Send + Sync + std::fmt::Debug {
    /// The next number in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// The default random source: xorshift64*, seeded from the process's random state.
#[derive(Debug)]
pub struct DefaultRandom(Mutex<u64>);

impl Default for DefaultRandom {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        DefaultRandom(Mutex::new(seed | 1))
    }
}

impl Random for DefaultRandom {
    fn next_f64(&self) -> f64 {
        let mut s = lock(&self.0);
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The growth of delays between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Growth {
    /// `base * factor^(retry - 1)`.
    Exponential {
        /// First delay.
        base: Duration,
        /// Multiplier per retry (at least 1).
        factor: f64,
    },
    /// `base + step * (retry - 1)`.
    Linear {
        /// First delay.
        base: Duration,
        /// Added per retry.
        step: Duration,
    },
    /// The same delay every time.
    Constant(Duration),
}

/// A backoff schedule: growth, a cap, and whether to jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// How delays grow.
    pub growth: Growth,
    /// The largest delay. Default: 10 s.
    pub max: Duration,
    /// Draw each delay uniformly from `[0, computed]` (full jitter). Default: true.
    pub full_jitter: bool,
}

impl Default for Backoff {
    /// Exponential from 100 ms, doubling, capped at 10 s, full jitter.
    fn default() -> Self {
        Backoff {
            growth: Growth::Exponential {
                base: Duration::from_millis(100),
                factor: 2.0,
            },
            max: Duration::from_secs(10),
            full_jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first retry), before jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let n = retry.max(1) - 1;
        let d = match self.growth {
            Growth::Exponential { base, factor } => {
                let f = factor.max(1.0).powi(i32::try_from(n).unwrap_or(i32::MAX));
                Duration::try_from_secs_f64(base.as_secs_f64() * f).unwrap_or(self.max)
            }
            Growth::Linear { base, step } => base.saturating_add(step.saturating_mul(n)),
            Growth::Constant(d) => d,
        };
        d.min(self.max)
    }

    /// The delay before retry number `retry`, with jitter drawn from `random`.
    pub fn delay(&self, retry: u32, random: &dyn Random) -> Duration {
        let ceiling = self.ceiling(retry);
        if self.full_jitter {
            ceiling.mul_f64(random.next_f64().clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Returns the given numbers in turn, forever.
    #[derive(Debug)]
    pub(crate) struct Sequence(pub(crate) Mutex<(Vec<f64>, usize)>);

    impl Sequence {
        pub(crate) fn new(values: &[f64]) -> Sequence {
            Sequence(Mutex::new((values.to_vec(), 0)))
        }
    }

    impl Random for Sequence {
        fn next_f64(&self) -> f64 {
            let mut s = self.0.lock().unwrap();
            let v = s.0[s.1 % s.0.len()];
            s.1 += 1;
            v
        }
    }

    #[test]
    fn exponential_linear_constant_and_the_cap() {
        let exp = Backoff {
            growth: Growth::Exponential {
                base: Duration::from_millis(100),
                factor: 2.0,
            },
            max: Duration::from_millis(500),
            full_jitter: false,
        };
        let ms: Vec<u128> = (1..=5).map(|r| exp.ceiling(r).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        let lin = Backoff {
            growth: Growth::Linear {
                base: Duration::from_millis(10),
                step: Duration::from_millis(5),
            },
            ..exp
        };
        assert_eq!(lin.ceiling(3), Duration::from_millis(20));
        let constant = Backoff {
            growth: Growth::Constant(Duration::from_millis(7)),
            ..exp
        };
        assert_eq!(constant.ceiling(9), Duration::from_millis(7));
        assert_eq!(exp.ceiling(1000), Duration::from_millis(500), "no overflow");
    }

    #[test]
    fn full_jitter_draws_below_the_ceiling_exactly() {
        let b = Backoff {
            max: Duration::from_secs(10),
            ..Backoff::default()
        };
        let r = Sequence::new(&[0.5, 0.0, 0.25]);
        assert_eq!(b.delay(1, &r), Duration::from_millis(50));
        assert_eq!(b.delay(2, &r), Duration::ZERO);
        assert_eq!(b.delay(3, &r), Duration::from_millis(100));
    }

    #[test]
    fn the_default_random_source_stays_in_range() {
        let r = DefaultRandom::default();
        for _ in 0..10_000 {
            let v = r.next_f64();
            assert!((0.0..1.0).contains(&v));
        }
    }
}
