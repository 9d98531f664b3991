//! Prometheus text exposition: every metric name in one place, all starting
//! with `litebridge_`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use std::time::Duration;

use litebridge::{LatencyHistogram, LatencySummary, Service};

/// Bucket bounds of `litebridge_request_seconds`, in seconds.
const BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// JSON-RPC requests by method and outcome, and their latency by method.
#[derive(Default)]
struct Requests {
    outcomes: RwLock<HashMap<(&'static str, &'static str), Arc<AtomicU64>>>,
    latency: RwLock<HashMap<&'static str, Arc<LatencyHistogram>>>,
}

fn requests() -> &'static Requests {
    static REQUESTS: OnceLock<Requests> = OnceLock::new();
    REQUESTS.get_or_init(Requests::default)
}

/// Counts one request. `method` must be a name from the method table (or
/// "other"), so hostile input cannot create labels without bound.
pub(crate) fn record_request(method: &'static str, outcome: &'static str, took: Duration) {
    let r = requests();
    let counter = r.outcomes.read().get(&(method, outcome)).cloned();
    let counter = counter.unwrap_or_else(|| {
        r.outcomes
            .write()
            .entry((method, outcome))
            .or_default()
            .clone()
    });
    counter.fetch_add(1, Ordering::Relaxed);
    let hist = r.latency.read().get(method).cloned();
    let hist = hist.unwrap_or_else(|| r.latency.write().entry(method).or_default().clone());
    hist.record(took);
}

/// JSON-RPC requests so far, and those that failed.
pub(crate) fn request_totals() -> (u64, u64) {
    let outcomes = requests().outcomes.read();
    let mut all = 0;
    let mut failed = 0;
    for ((_, outcome), n) in outcomes.iter() {
        let n = n.load(Ordering::Relaxed);
        all += n;
        if *outcome != "ok" {
            failed += n;
        }
    }
    (all, failed)
}

/// The latency histogram of `method`'s requests now (empty before the first).
pub(crate) fn request_latency(method: &'static str) -> litebridge::HistogramSnapshot {
    let r = requests();
    let hist = r.latency.read().get(method).cloned();
    hist.unwrap_or_else(|| r.latency.write().entry(method).or_default().clone())
        .snapshot()
}

struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP litebridge_{name} {help}\n# TYPE litebridge_{name} {kind}"
        );
    }

    fn value(&mut self, name: &str, labels: &str, v: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "litebridge_{name} {v}");
        } else {
            let _ = writeln!(self.0, "litebridge_{name}{{{labels}}} {v}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.metric(name, kind, help);
        self.value(name, "", v);
    }

    fn summary(&mut self, name: &str, help: &str, labels: &str, s: &LatencySummary, header: bool) {
        if header {
            self.metric(name, "summary", help);
        }
        let sep = if labels.is_empty() { "" } else { "," };
        for (q, d) in [("0.5", s.p50), ("0.95", s.p95), ("0.99", s.p99)] {
            self.value(name, &format!("{labels}{sep}quantile=\"{q}\""), secs(d));
        }
        let sum = s.mean.as_secs_f64() * s.count as f64;
        self.value(&format!("{name}_sum"), labels, sum);
        self.value(&format!("{name}_count"), labels, s.count as f64);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of `service` now, with the backups' state when backups
/// are configured (read off the runtime by the caller: a listing of a
/// directory).
pub(crate) fn render(service: &Service, backups: Option<&Backups>) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.metric(
        "build_info",
        "gauge",
        "This build: its version and the commit it was built from (1).",
    );
    o.value(
        "build_info",
        &format!(
            "version=\"{}\",commit=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            env!("LB_BUILD_COMMIT")
        ),
        1.0,
    );
    if let Some(b) = backups {
        backup_metrics(&mut o, b);
    }
    request_metrics(&mut o);
    db_metrics(&mut o, &service.db.stats());
    if let Some(pg) = service.db.postgres() {
        cluster_metrics(&mut o, pg);
    }
    cache_metrics(&mut o, &service.cache.stats());
    if let Some(w) = &service.workers {
        worker_metrics(&mut o, &w.status());
        if w.transport() == "nats" {
            host_metrics(&mut o, w);
        }
    }
    o.0
}

/// The database's backups in `backup.dir` (`backups::list_of`), for an alert on their age.
#[derive(Clone)]
pub(crate) struct Backups {
    /// How many there are.
    pub(crate) count: usize,
    /// The newest one's age, by its file's modification time.
    pub(crate) newest_age: Option<Duration>,
}

impl Backups {
    /// Reads `policy.dir` for the backups of `db` (blocks: a listing).
    pub(crate) fn read(
        policy: &litebridge::backups::BackupPolicy,
        db: &std::path::Path,
    ) -> Backups {
        let all = litebridge::backups::list_of(&policy.dir, db);
        let newest_age = all
            .first()
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| m.modified().ok())
            .map(|t| t.elapsed().unwrap_or_default());
        Backups {
            count: all.len(),
            newest_age,
        }
    }
}

/// How long a reading of `backup.dir` serves scrapes.
const BACKUPS_FRESH: Duration = Duration::from_secs(10);

/// How long a scrape waits for a reading (a directory on a slow or hung
/// mount): past it, it answers with the last one, or none.
const BACKUPS_WAIT: Duration = Duration::from_secs(2);

/// The last reading of `backup.dir`, and whether one is under way.
#[derive(Default)]
struct BackupsSeen {
    at: Option<std::time::Instant>,
    last: Option<Backups>,
    reading: bool,
}

fn backups_seen() -> &'static parking_lot::Mutex<BackupsSeen> {
    static SEEN: OnceLock<parking_lot::Mutex<BackupsSeen>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// A backup was just taken here: the next scrape reads the directory.
pub(crate) fn backups_changed() {
    backups_seen().lock().at = None;
}

impl Backups {
    /// The backups for a scrape: read at most once per [`BACKUPS_FRESH`],
    /// one reading at a time, off the runtime, waited for up to
    /// [`BACKUPS_WAIT`] (review 147: each scrape listed the directory,
    /// any number at once, and a hung mount held a blocking thread each).
    pub(crate) async fn for_scrape(
        policy: &litebridge::backups::BackupPolicy,
        db: &std::path::Path,
    ) -> Option<Backups> {
        {
            let mut seen = backups_seen().lock();
            let fresh = seen.at.is_some_and(|t| t.elapsed() < BACKUPS_FRESH);
            if fresh || seen.reading {
                return seen.last.clone();
            }
            seen.reading = true;
        }
        let (policy, db) = (policy.clone(), db.to_owned());
        let reading = tokio::task::spawn_blocking(move || {
            let b = Backups::read(&policy, &db);
            let mut seen = backups_seen().lock();
            seen.at = Some(std::time::Instant::now());
            seen.last = Some(b.clone());
            seen.reading = false;
            b
        });
        match tokio::time::timeout(BACKUPS_WAIT, reading).await {
            Ok(Ok(b)) => Some(b),
            _ => backups_seen().lock().last.clone(),
        }
    }
}

fn backup_metrics(o: &mut Out, b: &Backups) {
    o.single(
        "backups",
        "gauge",
        "Backups of the database in backup.dir.",
        b.count as f64,
    );
    if let Some(age) = b.newest_age {
        o.single(
            "backup_newest_age_seconds",
            "gauge",
            "Age of the newest backup in backup.dir, by its file's modification time (absent when there is none).",
            secs(age),
        );
    }
}

/// JSON-RPC requests by method and outcome, and their latency.
fn request_metrics(o: &mut Out) {
    let r = requests();
    let mut outcomes: Vec<_> = r
        .outcomes
        .read()
        .iter()
        .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
        .collect();
    outcomes.sort();
    o.metric(
        "requests_total",
        "counter",
        "JSON-RPC requests by method and outcome.",
    );
    for ((method, outcome), n) in outcomes {
        o.value(
            "requests_total",
            &format!("method=\"{method}\",outcome=\"{outcome}\""),
            n as f64,
        );
    }
    let mut latency: Vec<_> = r
        .latency
        .read()
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    latency.sort_by_key(|(k, _)| *k);
    o.metric(
        "request_seconds",
        "histogram",
        "JSON-RPC request latency by method.",
    );
    let bounds: Vec<Duration> = BUCKETS_SECONDS
        .iter()
        .map(|s| Duration::from_secs_f64(*s))
        .collect();
    for (method, h) in latency {
        let counts = h.cumulative(&bounds);
        for (le, n) in BUCKETS_SECONDS.iter().zip(&counts) {
            o.value(
                "request_seconds_bucket",
                &format!("method=\"{method}\",le=\"{le}\""),
                *n as f64,
            );
        }
        let s = h.summary();
        o.value(
            "request_seconds_bucket",
            &format!("method=\"{method}\",le=\"+Inf\""),
            s.count as f64,
        );
        o.value(
            "request_seconds_sum",
            &format!("method=\"{method}\""),
            s.mean.as_secs_f64() * s.count as f64,
        );
        o.value(
            "request_seconds_count",
            &format!("method=\"{method}\""),
            s.count as f64,
        );
    }
}

/// PostgreSQL's nodes as last probed, and where reads went.
fn cluster_metrics(o: &mut Out, pg: &litebridge::pg::PgDatabase) {
    let c = pg.cluster();
    let label = |n: &litebridge::pg::NodeStatus| {
        format!("node=\"{}\",role=\"{}\"", escape(&n.address), n.role)
    };
    let nodes = || std::iter::once(&c.primary).chain(&c.replicas);
    o.metric(
        "pg_node_up",
        "gauge",
        "1 when the node answered the last probe.",
    );
    for n in nodes() {
        o.value("pg_node_up", &label(n), f64::from(u8::from(n.reachable)));
    }
    o.metric(
        "pg_node_in_recovery",
        "gauge",
        "1 when the node is a standby (on the primary: it was demoted).",
    );
    for n in nodes() {
        o.value(
            "pg_node_in_recovery",
            &label(n),
            f64::from(u8::from(n.in_recovery)),
        );
    }
    o.metric(
        "pg_replica_lag_bytes",
        "gauge",
        "Bytes of log a replica has not replayed yet.",
    );
    for n in &c.replicas {
        if let Some(lag) = n.lag_bytes {
            o.value("pg_replica_lag_bytes", &label(n), lag as f64);
        }
    }
    let (replica_reads, _) = pg.replica_counts();
    o.single(
        "pg_replica_reads_total",
        "counter",
        "Reads served by a replica.",
        replica_reads as f64,
    );
    o.metric(
        "pg_primary_fallbacks_total",
        "counter",
        "Reads that asked for a replica and went to the primary, by reason (token, resting, behind, not_a_replica, conflict, failed).",
    );
    for (why, n) in pg.primary_fallbacks() {
        o.value(
            "pg_primary_fallbacks_total",
            &format!("reason=\"{}\"", why.as_str()),
            n as f64,
        );
    }
}

/// The database: operations and errors by lane, then the writer's.
fn db_metrics(o: &mut Out, s: &litebridge::DbStats) {
    o.single(
        "db_reads_total",
        "counter",
        "Reads on the read lane.",
        s.total_reads as f64,
    );
    o.single(
        "db_writes_total",
        "counter",
        "Write requests.",
        s.total_writes as f64,
    );
    o.single(
        "db_heavy_queries_total",
        "counter",
        "Queries on the heavy lane.",
        s.total_heavy as f64,
    );
    o.metric("db_errors_total", "counter", "Failed operations by lane.");
    o.value("db_errors_total", "lane=\"read\"", s.read_errors as f64);
    o.value("db_errors_total", "lane=\"write\"", s.write_errors as f64);
    o.value("db_errors_total", "lane=\"heavy\"", s.heavy_errors as f64);
    o.single(
        "db_timeouts_total",
        "counter",
        "Operations past their deadline.",
        s.timeouts as f64,
    );
    o.single(
        "db_overloaded_total",
        "counter",
        "Requests refused by a full queue.",
        s.overloaded as f64,
    );
    writer_metrics(o, s);
}

/// The writer and the files: group commit, queues, the WAL, restarts,
/// latency.
fn writer_metrics(o: &mut Out, s: &litebridge::DbStats) {
    o.single(
        "db_batches_total",
        "counter",
        "Group-commit transactions.",
        s.batches as f64,
    );
    o.single(
        "db_batch_size_avg",
        "gauge",
        "Mean requests per group commit.",
        s.avg_batch_size,
    );
    o.single(
        "db_batch_size_max",
        "gauge",
        "Largest group commit.",
        s.max_batch_size as f64,
    );
    o.metric("db_queue_length", "gauge", "Requests waiting, by queue.");
    o.value("db_queue_length", "queue=\"write\"", s.write_queue as f64);
    o.value("db_queue_length", "queue=\"read\"", s.read_queue as f64);
    o.value("db_queue_length", "queue=\"heavy\"", s.heavy_queue as f64);
    o.single(
        "db_wal_bytes",
        "gauge",
        "Size of the -wal file.",
        s.wal_bytes as f64,
    );
    o.single(
        "db_checkpoints_total",
        "counter",
        "WAL checkpoints run.",
        s.checkpoints as f64,
    );
    o.single(
        "db_failed_connections_total",
        "counter",
        "Connections found broken and replaced.",
        s.failed_connections as f64,
    );
    o.single(
        "db_writer_restarts_total",
        "counter",
        "Writer thread restarts.",
        s.writer_restarts as f64,
    );
    o.summary(
        "db_read_seconds",
        "Read latency.",
        "",
        &s.read_latency,
        true,
    );
    o.summary(
        "db_write_seconds",
        "Write latency, to the acknowledgement after COMMIT.",
        "",
        &s.write_latency,
        true,
    );
}

/// The two-level cache.
fn cache_metrics(o: &mut Out, c: &litebridge::store::CacheStats) {
    o.single(
        "cache_hits_total",
        "counter",
        "Cache reads answered.",
        (c.l1_hits + c.l2_hits) as f64,
    );
    o.single(
        "cache_misses_total",
        "counter",
        "Cache reads that found nothing.",
        c.misses as f64,
    );
    o.single(
        "cache_evictions_total",
        "counter",
        "Entries evicted from memory.",
        c.evictions as f64,
    );
    o.single(
        "cache_entries",
        "gauge",
        "Entries in memory.",
        c.l1_entries as f64,
    );
    o.single(
        "cache_memory_bytes",
        "gauge",
        "What the entries in memory count against cache.max_memory_mb (estimated).",
        c.l1_bytes as f64,
    );
    if let Some(n) = c.l2_entries {
        o.single(
            "cache_l2_entries",
            "gauge",
            "Rows of the cache's table when last counted (after each sweep, or by cache.stats).",
            n as f64,
        );
    }
    o.single(
        "cache_l2_errors_total",
        "counter",
        "Reads and writes of the cache's table that failed (the cache went on in memory).",
        c.l2_errors as f64,
    );
    o.single(
        "cache_l2_available",
        "gauge",
        "1 while the cache's table is in use, 0 when the cache runs in memory only.",
        if c.l2_entries.is_some() { 1.0 } else { 0.0 },
    );
}

/// Worker hosts over NATS: each one's health and load, and late answers.
fn host_metrics(o: &mut Out, w: &litebridge::workers::Bridge) {
    let hosts = w.hosts();
    let label = |h: &litebridge::workers::nats::HostStatus| format!("host=\"{}\"", escape(&h.id));
    o.metric(
        "worker_host_healthy",
        "gauge",
        "1 when the worker host's pool is healthy and not shutting down (from its heartbeats).",
    );
    for h in &hosts {
        o.value(
            "worker_host_healthy",
            &label(h),
            f64::from(u8::from(h.healthy && !h.draining)),
        );
    }
    o.metric(
        "worker_host_in_flight",
        "gauge",
        "Calls in flight on the worker host, from its last heartbeat.",
    );
    for h in &hosts {
        o.value("worker_host_in_flight", &label(h), h.in_flight as f64);
    }
    o.single(
        "bridge_late_answers_total",
        "counter",
        "Answers that came after their caller stopped waiting (counted and dropped).",
        w.late_answers() as f64,
    );
}

/// The worker pool: processes, calls, breakers, per-method latency.
fn worker_metrics(o: &mut Out, p: &litebridge::workers::PoolStatus) {
    o.single(
        "workers_processes",
        "gauge",
        "Worker processes running.",
        p.workers.len() as f64,
    );
    o.single(
        "workers_in_flight",
        "gauge",
        "Calls in flight on the workers.",
        p.workers
            .iter()
            .fold(0usize, |n, w| n.saturating_add(w.in_flight)) as f64,
    );
    o.single(
        "workers_waiting",
        "gauge",
        "Calls waiting for a worker.",
        p.waiting as f64,
    );
    o.single(
        "workers_restarts_total",
        "counter",
        "Worker restarts after a crash.",
        p.restarts as f64,
    );
    o.single(
        "workers_recycles_total",
        "counter",
        "Workers recycled on purpose.",
        p.recycled as f64,
    );
    o.single(
        "workers_healthy",
        "gauge",
        "1 when every worker slot is served.",
        f64::from(u8::from(p.healthy)),
    );
    o.metric(
        "breaker_state",
        "gauge",
        "Circuit breaker state per method (1 for the current state).",
    );
    for b in &p.breakers {
        for state in ["closed", "open", "half_open", "forced_open"] {
            let v = f64::from(u8::from(b.state.as_str() == state));
            o.value(
                "breaker_state",
                &format!("method=\"{}\",state=\"{state}\"", escape(&b.name)),
                v,
            );
        }
    }
    o.metric(
        "bridge_call_seconds",
        "summary",
        "Worker call latency per method, retries included.",
    );
    for m in &p.methods {
        o.summary(
            "bridge_call_seconds",
            "",
            &format!("method=\"{}\"", escape(&m.method)),
            &m.latency,
            false,
        );
    }
}
