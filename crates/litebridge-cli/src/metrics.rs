//! Prometheus text exposition: every metric name in one place, all starting
//! with `litebridge_`.

use std::fmt::Write as _;
use std::time::Duration;

use litebridge::{LatencySummary, Service};

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

/// The metrics of `service` now.
pub(crate) fn render(service: &Service) -> String {
    let mut o = Out(String::with_capacity(4096));
    let s = service.db.stats();
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
    let c = service.cache.stats();
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
    if let Some(w) = &service.workers {
        let p = w.status();
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
            p.workers.iter().map(|w| w.in_flight).sum::<usize>() as f64,
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
    o.0
}
