//! Counters kept by the database's components and the snapshot they give
//! (the statistics `/metrics` and the `*.stats` methods show). Every field is an atomic updated without locks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::histogram::{Histogram, HistogramSnapshot, LatencySummary};
use crate::sync::lock;

/// Live counters, shared by the components of one database.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read_errors: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) heavy_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) failed_connections: AtomicU64,
    pub(crate) writer_restarts: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batched_requests: AtomicU64,
    pub(crate) max_batch: AtomicUsize,
    pub(crate) batch_reruns: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) read_waiters: AtomicUsize,
    pub(crate) heavy_active: AtomicUsize,
    pub(crate) write_active: AtomicUsize,
    pub(crate) last_health_check_unix_ms: AtomicU64,
    pub(crate) read_latency: Histogram,
    pub(crate) write_latency: Histogram,
    pub(crate) heavy_latency: Histogram,
    /// The first SQLITE_CORRUPT met by a running operation: the service is
    /// unhealthy from then on (only a restart, after check/restore, clears it).
    pub(crate) corruption: std::sync::Mutex<Option<String>>,
}

impl Counters {
    /// Notes an operation's error; SQLITE_CORRUPT marks the database damaged.
    pub(crate) fn saw<T>(&self, r: &crate::Result<T>) {
        if let Err(crate::Error::Corrupt { detail, .. }) = r {
            let mut seen = lock(&self.corruption);
            if seen.is_none() {
                tracing::error!(detail = %detail, "SQLITE_CORRUPT met at run time; the database is marked unhealthy");
                *seen = Some(detail.clone());
            }
        }
    }

    /// What corruption was met, if any.
    pub(crate) fn corruption(&self) -> Option<String> {
        lock(&self.corruption).clone()
    }

    pub(crate) fn batch(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched_requests
            .fetch_add(size as u64, Ordering::Relaxed);
        self.max_batch.fetch_max(size, Ordering::Relaxed);
    }

    pub(crate) fn health_checked_now(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_health_check_unix_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }
}

/// A snapshot of a database's statistics.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DbStats {
    /// Reads completed (read lane), successful or not.
    pub total_reads: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Write requests completed (each request counts once, whatever its size).
    pub total_writes: u64,
    /// Write requests that failed.
    pub write_errors: u64,
    /// Heavy-lane queries completed.
    pub total_heavy: u64,
    /// Heavy-lane queries that failed.
    pub heavy_errors: u64,
    /// Operations that ran out of time.
    pub timeouts: u64,
    /// Requests refused because a queue was full.
    pub overloaded: u64,
    /// Connections found broken and replaced.
    pub failed_connections: u64,
    /// Times the writer thread died and was restarted.
    pub writer_restarts: u64,
    /// Group-commit transactions.
    pub batches: u64,
    /// Mean requests per group-commit transaction.
    pub avg_batch_size: f64,
    /// Largest group-commit transaction, in requests.
    pub max_batch_size: usize,
    /// Batches re-run because one request aborted the transaction.
    pub batch_reruns: u64,
    /// COMMITs that failed (every request of the batch got the error).
    pub commit_failures: u64,
    /// Checkpoints run by litebridge.
    pub checkpoints: u64,
    /// Requests waiting in the write queue.
    pub write_queue: usize,
    /// Requests waiting for a read-lane connection.
    pub read_queue: usize,
    /// Requests waiting in the heavy-lane queue.
    pub heavy_queue: usize,
    /// Read-lane connections.
    pub readers: usize,
    /// Read-lane connections idle now.
    pub available_readers: usize,
    /// Heavy-lane connections.
    pub heavy_readers: usize,
    /// Heavy-lane connections idle now.
    pub available_heavy: usize,
    /// Connections busy now (writer included).
    pub active_connections: usize,
    /// Size of the `-wal` file in bytes.
    pub wal_bytes: u64,
    /// Read-lane latency, from call to result.
    pub read_latency: LatencySummary,
    /// Write latency, from call to acknowledgement after COMMIT.
    pub write_latency: LatencySummary,
    /// Heavy-lane latency.
    pub heavy_latency: LatencySummary,
    /// When the last health check ran.
    pub last_health_check: Option<SystemTime>,
}

impl DbStats {
    pub(crate) fn from_counters(c: &Counters) -> DbStats {
        let batches = c.batches.load(Ordering::Relaxed);
        let batched = c.batched_requests.load(Ordering::Relaxed);
        let last = c.last_health_check_unix_ms.load(Ordering::Relaxed);
        DbStats {
            total_reads: c.read_latency.count(),
            read_errors: c.read_errors.load(Ordering::Relaxed),
            total_writes: c.write_latency.count(),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            total_heavy: c.heavy_latency.count(),
            heavy_errors: c.heavy_errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            failed_connections: c.failed_connections.load(Ordering::Relaxed),
            writer_restarts: c.writer_restarts.load(Ordering::Relaxed),
            batches,
            avg_batch_size: if batches == 0 {
                0.0
            } else {
                batched as f64 / batches as f64
            },
            max_batch_size: c.max_batch.load(Ordering::Relaxed),
            batch_reruns: c.batch_reruns.load(Ordering::Relaxed),
            commit_failures: c.commit_failures.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            read_queue: c.read_waiters.load(Ordering::Relaxed),
            read_latency: c.read_latency.summary(),
            write_latency: c.write_latency.summary(),
            heavy_latency: c.heavy_latency.summary(),
            last_health_check: (last > 0)
                .then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(last)),
            ..DbStats::default()
        }
    }
}

/// The latency histograms of one database at one moment, by lane (see
/// [`Database::latency_snapshots`](crate::Database::latency_snapshots)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LatencySnapshots {
    /// Reads on the read lane.
    pub read: HistogramSnapshot,
    /// Writes, to the acknowledgement after COMMIT.
    pub write: HistogramSnapshot,
    /// Queries on the heavy lane.
    pub heavy: HistogramSnapshot,
}
