//! A lock-free latency histogram for p50/p95/p99.
//!
//! Log-linear buckets over nanoseconds: exact below 16 ns, then 16 buckets per
//! power of two (about 6 % relative error), 976 buckets in all. Each recording
//! thread writes a shard of its own (see [`Lease`]) with plain loads and
//! stores, so threads recording at a million operations a second neither
//! bounce one cache line between cores nor pay a locked instruction; reading
//! merges the shards. `hdrhistogram` needs a lock
//! around every record, which is what this avoids on the hot path.

use crate::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) * SUB as usize) + SUB as usize;

const SHARDS: usize = 8;

/// One shard, aligned so two shards never share a cache line.
#[repr(align(128))]
struct Shard {
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

/// A concurrent latency histogram: cheap to record into from many threads,
/// read as percentiles with [`Histogram::summary`].
pub struct Histogram {
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                    sum_nanos: AtomicU64::new(0),
                    max_nanos: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

/// The shard a thread records into, and whether it is the thread's alone.
///
/// Shards `0..SHARDS - 1` are each lent to one thread at a time (and given
/// back when it exits); that thread updates its shard with plain loads and
/// stores, because a locked read-modify-write is a full barrier that waits
/// for every store before it (measured: 2-3 % of a pipelined write load's
/// throughput). Threads beyond those share the last shard with atomic adds.
#[derive(Clone, Copy)]
struct Lease {
    index: usize,
    own: bool,
}

/// The owned shards not lent to a thread.
static FREE: std::sync::LazyLock<std::sync::Mutex<Vec<usize>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new((0..SHARDS - 1).rev().collect()));

struct Held(Lease);

impl Held {
    fn take() -> Held {
        let index = lock(&FREE).pop();
        Held(match index {
            Some(index) => Lease { index, own: true },
            None => Lease {
                index: SHARDS - 1,
                own: false,
            },
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.own {
            // The mutex orders this thread's last stores before the next
            // owner's first loads.
            lock(&FREE).push(self.0.index);
        }
    }
}

fn lease() -> Lease {
    thread_local! {
        static HELD: Held = Held::take();
    }
    // While the thread's locals are being destroyed, record as a guest.
    HELD.try_with(|h| h.0).unwrap_or(Lease {
        index: SHARDS - 1,
        own: false,
    })
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - SUB_BITS)) & (SUB - 1);
    ((msb - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The middle of bucket `i`, the value reported for it.
fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let msb = i / SUB + u64::from(SUB_BITS) - 1;
    let sub = i % SUB;
    let low = (1u64 << msb) | (sub << (msb - u64::from(SUB_BITS)));
    let width = 1u64 << (msb - u64::from(SUB_BITS));
    low + width / 2
}

impl Histogram {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let lease = lease();
        let shard = &self.shards[lease.index];
        let bucket = &shard.buckets[index(nanos)];
        if lease.own {
            // Only this thread writes this shard: no read-modify-write needed.
            bucket.store(bucket.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            let sum = shard.sum_nanos.load(Ordering::Relaxed);
            shard
                .sum_nanos
                .store(sum.wrapping_add(nanos), Ordering::Relaxed);
            if nanos > shard.max_nanos.load(Ordering::Relaxed) {
                shard.max_nanos.store(nanos, Ordering::Relaxed);
            }
        } else {
            bucket.fetch_add(1, Ordering::Relaxed);
            shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
            if nanos > shard.max_nanos.load(Ordering::Relaxed) {
                shard.max_nanos.fetch_max(nanos, Ordering::Relaxed);
            }
        }
    }

    /// Samples recorded so far.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.buckets.iter())
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Samples at or below each of `bounds` (ascending), as Prometheus
    /// histogram buckets count them; a sample counts by its bucket's middle.
    pub fn cumulative(&self, bounds: &[Duration]) -> Vec<u64> {
        let mut counts = vec![0u64; BUCKETS];
        for shard in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(shard.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
        }
        bounds
            .iter()
            .map(|bound| {
                let limit = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
                counts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| value_of(*i) <= limit)
                    .map(|(_, c)| c)
                    .sum()
            })
            .collect()
    }

    /// Percentiles of what was recorded.
    pub fn summary(&self) -> LatencySummary {
        let snapshot = self.snapshot();
        summarize(
            &snapshot.counts,
            snapshot.sum_nanos,
            Some(snapshot.max_nanos),
        )
    }

    /// The counts now: the difference of two snapshots
    /// ([`HistogramSnapshot::since`]) is what was recorded between them, so
    /// a recent window's percentiles come from counters kept since start.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = vec![0u64; BUCKETS];
        let (mut sum, mut max) = (0u64, 0u64);
        for shard in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(shard.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
            max = max.max(shard.max_nanos.load(Ordering::Relaxed));
        }
        HistogramSnapshot {
            counts: counts.into_boxed_slice(),
            sum_nanos: sum,
            max_nanos: max,
        }
    }
}

/// A [`Histogram`]'s counts at one moment.
#[derive(Clone)]
pub struct HistogramSnapshot {
    counts: Box<[u64]>,
    sum_nanos: u64,
    max_nanos: u64,
}

impl std::fmt::Debug for HistogramSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramSnapshot")
            .field("count", &self.counts.iter().sum::<u64>())
            .finish_non_exhaustive()
    }
}

impl HistogramSnapshot {
    /// Percentiles of what was recorded between `earlier` and this snapshot
    /// (both of the same histogram). Its `max` is the middle of the highest
    /// bucket that grew: the largest sample is kept only since start.
    pub fn since(&self, earlier: &HistogramSnapshot) -> LatencySummary {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(earlier.counts.iter())
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        summarize(
            &counts,
            self.sum_nanos.wrapping_sub(earlier.sum_nanos),
            None,
        )
    }
}

/// Percentiles of bucket `counts`; `max` when known, else the highest
/// non-empty bucket's middle.
fn summarize(counts: &[u64], sum: u64, max: Option<u64>) -> LatencySummary {
    let total: u64 = counts.iter().sum();
    let max = max.unwrap_or_else(|| counts.iter().rposition(|c| *c > 0).map_or(0, value_of));
    let quantile = |q: f64| -> Duration {
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(value_of(i));
            }
        }
        Duration::from_nanos(max)
    };
    LatencySummary {
        count: total,
        mean: Duration::from_nanos(sum.checked_div(total).unwrap_or(0)),
        p50: quantile(0.50),
        p95: quantile(0.95),
        p99: quantile(0.99),
        max: Duration::from_nanos(max),
    }
}

/// Percentiles of one latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let h = Histogram::default();
        for _ in 0..1000 {
            h.record(Duration::from_millis(100));
        }
        let before = h.snapshot();
        for _ in 0..90 {
            h.record(Duration::from_micros(10));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(2));
        }
        let window = h.snapshot().since(&before);
        assert_eq!(window.count, 100);
        let near = |d: Duration, want: Duration| {
            let (d, want) = (d.as_nanos() as f64, want.as_nanos() as f64);
            (d - want).abs() / want < 0.07
        };
        assert!(near(window.p50, Duration::from_micros(10)), "{window:?}");
        assert!(near(window.p95, Duration::from_millis(2)), "{window:?}");
        assert!(near(window.max, Duration::from_millis(2)), "{window:?}");
        assert!(near(window.mean, Duration::from_micros(209)), "{window:?}");
        // Since start, the 100 ms samples dominate.
        assert!(near(h.summary().p50, Duration::from_millis(100)));
        // An empty window is zeros.
        let now = h.snapshot();
        assert_eq!(now.since(&now), LatencySummary::default());
    }

    #[test]
    fn no_sample_is_lost_when_threads_come_and_go() {
        // More threads than shards, in waves, so leases are shared, given
        // back and lent again while others record.
        let h = std::sync::Arc::new(Histogram::default());
        for _wave in 0..3 {
            let threads: Vec<_> = (0..2 * SHARDS)
                .map(|t| {
                    let h = h.clone();
                    std::thread::spawn(move || {
                        for i in 0..5_000u64 {
                            h.record(Duration::from_nanos(1_000 + (i + t as u64) % 7));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        assert_eq!(h.count(), 3 * 2 * SHARDS as u64 * 5_000);
    }

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v} -> {i}");
            last = i;
        }
    }

    #[test]
    fn reported_values_are_within_seven_percent() {
        for v in [1u64, 15, 16, 17, 100, 999, 12_345, 1_000_000, 123_456_789] {
            let got = value_of(index(v)) as f64;
            assert!((got - v as f64).abs() <= v as f64 * 0.07, "{v} -> {got}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::default();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        let near = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() <= us * 0.07;
        assert!(near(s.p50, 50.0), "{:?}", s.p50);
        assert!(near(s.p99, 99.0), "{:?}", s.p99);
        assert_eq!(s.max, Duration::from_micros(100));
    }
}
