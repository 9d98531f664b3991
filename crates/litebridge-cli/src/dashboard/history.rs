//! The dashboard's history: the server's figures sampled every second, the
//! last five minutes kept, so a page opened late still shows them.
//!
//! Counters and latency histograms are kept since start; a point is the
//! difference of two samples a second apart: requests and errors per
//! second, and percentiles of what ran in that second alone (histogram
//! snapshots, see `litebridge::HistogramSnapshot::since`), never totals
//! since start, which would hide a slow minute behind a fast day. Gauges
//! (queues, WAL size) are read as they are.
//!
//! The ring is bounded ([`KEPT`] points, about 110 kB of JSON) and each point
//! has a sequence number: a page asks for the points after the last it has.

use crate::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use litebridge::{HistogramSnapshot, LatencySummary, Service};
use serde::Serialize;

/// How often a point is taken.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);
/// Points kept: five minutes.
pub(crate) const KEPT: usize = 300;

/// What ran in one window, per second and its percentiles (ms).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Window {
    pub(crate) per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
}

/// One second of the server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) seq: u64,
    /// When it was taken, ms since the Unix epoch.
    pub(crate) ts: u64,
    /// JSON-RPC requests per second (over HTTP, stdio and MCP), and those
    /// that failed.
    pub(crate) requests_per_s: f64,
    pub(crate) errors_per_s: f64,
    pub(crate) read: Window,
    pub(crate) write: Window,
    /// `bridge.call` requests, when there are workers.
    pub(crate) call: Option<Window>,
    pub(crate) batches_per_s: f64,
    /// Mean requests per group commit in this second.
    pub(crate) batch_size: f64,
    pub(crate) write_queue: usize,
    pub(crate) read_queue: usize,
    pub(crate) heavy_queue: usize,
    pub(crate) wal_bytes: u64,
    /// Counted in this second.
    pub(crate) checkpoints: u64,
    pub(crate) timeouts: u64,
    pub(crate) overloaded: u64,
}

/// The counters a point is the difference of.
struct Sample {
    at: Instant,
    requests: u64,
    errors: u64,
    reads: HistogramSnapshot,
    writes: HistogramSnapshot,
    calls: Option<HistogramSnapshot>,
    batches: u64,
    batched: f64,
    checkpoints: u64,
    timeouts: u64,
    overloaded: u64,
}

/// See the module documentation.
pub(crate) struct History {
    state: Mutex<State>,
    /// The figures of the last sample, built by [`History::run`] for
    /// `dashboard::data` (requests copy them instead of building them).
    figures: Mutex<Option<serde_json::Value>>,
    /// The backups' state, read every [`BACKUPS_EVERY`] periods off the runtime.
    backups: Mutex<serde_json::Value>,
}

/// How often (in periods) the backup directory is read.
const BACKUPS_EVERY: u32 = 5;

struct State {
    last: Option<Sample>,
    points: VecDeque<Point>,
    next_seq: u64,
}

impl History {
    pub(crate) fn new() -> Arc<History> {
        Arc::new(History {
            state: Mutex::new(State {
                last: None,
                points: VecDeque::with_capacity(KEPT),
                next_seq: 1,
            }),
            figures: Mutex::new(None),
            backups: Mutex::new(serde_json::Value::Null),
        })
    }

    /// Takes a sample of `service` now; from the second one on, each adds a
    /// point (the oldest goes past [`KEPT`]).
    pub(crate) fn sample(&self, service: &Service) {
        let stats = service.db.stats();
        let latency = service.db.latency_snapshots();
        let (requests, errors) = crate::metrics::request_totals();
        let sample = Sample {
            at: Instant::now(),
            requests,
            errors,
            reads: latency.read,
            writes: latency.write,
            calls: service
                .workers
                .as_ref()
                .map(|_| crate::metrics::request_latency("bridge.call")),
            batches: stats.batches,
            batched: stats.avg_batch_size * stats.batches as f64,
            checkpoints: stats.checkpoints,
            timeouts: stats.timeouts,
            overloaded: stats.overloaded,
        };
        let mut state = lock(&self.state);
        if let Some(last) = state.last.take() {
            let secs = sample.at.duration_since(last.at).as_secs_f64().max(1e-3);
            let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            let window =
                |now: &HistogramSnapshot, then: &HistogramSnapshot| window(&now.since(then), secs);
            let batches = sample.batches.saturating_sub(last.batches);
            let point = Point {
                seq: state.next_seq,
                ts: unix_ms(SystemTime::now()),
                requests_per_s: per_s(sample.requests, last.requests),
                errors_per_s: per_s(sample.errors, last.errors),
                read: window(&sample.reads, &last.reads),
                write: window(&sample.writes, &last.writes),
                call: match (&sample.calls, &last.calls) {
                    (Some(now), Some(then)) => Some(window(now, then)),
                    _ => None,
                },
                batches_per_s: batches as f64 / secs,
                batch_size: if batches == 0 {
                    0.0
                } else {
                    ((sample.batched - last.batched).max(0.0) / batches as f64 * 10.0).round()
                        / 10.0
                },
                write_queue: stats.write_queue,
                read_queue: stats.read_queue,
                heavy_queue: stats.heavy_queue,
                wal_bytes: stats.wal_bytes,
                checkpoints: sample.checkpoints.saturating_sub(last.checkpoints),
                timeouts: sample.timeouts.saturating_sub(last.timeouts),
                overloaded: sample.overloaded.saturating_sub(last.overloaded),
            };
            state.next_seq += 1;
            if state.points.len() == KEPT {
                state.points.pop_front();
            }
            state.points.push_back(point);
        }
        state.last = Some(sample);
    }

    /// The points after `seq` (all kept ones for 0), oldest first.
    pub(crate) fn since(&self, seq: u64) -> Vec<Point> {
        let state = lock(&self.state);
        state
            .points
            .iter()
            .filter(|p| p.seq > seq)
            .cloned()
            .collect()
    }

    /// The `seq` of the newest point (0 before the first).
    pub(crate) fn last_seq(&self) -> u64 {
        lock(&self.state).next_seq - 1
    }

    /// The figures of the last sample, if one was taken.
    pub(crate) fn figures(&self) -> Option<serde_json::Value> {
        lock(&self.figures).clone()
    }

    /// The backups' state when last read (`null` before, or without a policy).
    pub(crate) fn backups(&self) -> serde_json::Value {
        lock(&self.backups).clone()
    }

    /// Samples `service` every [`PERIOD`], and builds the figures the
    /// dashboard's requests copy, until the task is aborted; `scheduled`:
    /// whether backups run on a schedule.
    pub(crate) fn run(
        self: Arc<Self>,
        app: Arc<crate::rpc::App>,
        scheduled: bool,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PERIOD);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks = 0u32;
            loop {
                every.tick().await;
                if ticks.is_multiple_of(BACKUPS_EVERY)
                    && let Some(policy) = app.service.backups.clone()
                    && let Some(db) = app.service.db.sqlite().map(|d| d.path().to_owned())
                {
                    // A directory listing may block (a slow disk, a network
                    // mount): never on the runtime.
                    let uptime = Duration::from_millis(
                        unix_ms(SystemTime::now()).saturating_sub(app.events.started_ms()),
                    );
                    if let Ok(b) = tokio::task::spawn_blocking(move || {
                        crate::dashboard::backups(&policy, &db, scheduled, uptime)
                    })
                    .await
                    {
                        *lock(&self.backups) = b;
                    }
                }
                ticks = ticks.wrapping_add(1);
                self.sample(&app.service);
                let figures = crate::dashboard::figures(&app);
                *lock(&self.figures) = Some(figures);
            }
        })
    }
}

fn window(s: &LatencySummary, secs: f64) -> Window {
    Window {
        per_s: (s.count as f64 / secs * 10.0).round() / 10.0,
        p50_ms: ms(s.p50),
        p95_ms: ms(s.p95),
        p99_ms: ms(s.p99),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ring_keeps_the_last_five_minutes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::open(
            dir.path().join("h.db"),
            litebridge::ServiceConfig::default(),
        )
        .await
        .unwrap();
        let history = History::new();
        history.sample(&service);
        assert!(history.since(0).is_empty(), "one sample is no point yet");
        for _ in 0..KEPT + 10 {
            history.sample(&service);
        }
        let points = history.since(0);
        assert_eq!(points.len(), KEPT);
        assert_eq!(points[0].seq, 11);
        assert!(points.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let last = points[KEPT - 1].seq;
        assert_eq!(history.since(last - 2).len(), 2);
        assert!(history.since(last).is_empty());
        // No workers, no worker-call window.
        assert!(points.iter().all(|p| p.call.is_none()));
        service.shutdown().await;
    }
}
