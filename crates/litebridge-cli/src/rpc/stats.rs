//! Statistics and health: `pool.*`, `persistence.stats`, `cache.stats`,
//! `bridge.stats`, `bridge.health`.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::Handler;
use super::*;

/// Defines a method without parameters: its (empty) parameter struct and
/// what it answers.
macro_rules! without_params {
    ($(#[$doc:meta])* $name:ident, |$cx:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {}

        impl Handler for $name {
            fn run(self, $cx: Ctx<'_>) -> Answer<'_> {
                Box::pin(async move { $body })
            }
        }
    };
}
pub(super) use without_params;

without_params!(
    /// `bridge.stats`.
    BridgeStats,
    |cx| bridge_status(&cx.app.service)
);

without_params!(
    /// `bridge.health`.
    BridgeHealth,
    |cx| bridge_status(&cx.app.service)
);

/// `bridge.stats`, `bridge.health`.
pub(crate) fn bridge_status(service: &Service) -> Result<Json, RpcError> {
    {
        let pool = workers(service)?;
        let s = pool.status();
        let mut stats = json!({
            "transport": pool.transport(),
            "healthy": s.healthy,
            "processes": s.processes,
            "workers": s.workers.iter().map(|w| json!({
                "id": w.id, "pid": w.pid, "in_flight": w.in_flight, "calls": w.calls,
                "uptime_ms": w.uptime.as_millis() as u64,
            })).collect::<Vec<_>>(),
            "waiting": s.waiting,
            "restarts": s.restarts,
            "crashes": s.crashes,
            "recycled": s.recycled,
            "breakers": s.breakers.iter().map(|b| json!({
                "method": &*b.name, "state": b.state.as_str(), "calls": b.calls,
                "failure_rate": b.failure_rate, "slow_call_rate": b.slow_call_rate,
                "consecutive_failures": b.consecutive_failures,
            })).collect::<Vec<_>>(),
            "methods": s.methods.iter().map(|m| json!({
                "method": m.method, "calls": m.calls, "errors": m.errors,
                "p50_ms": ms(m.latency.p50), "p95_ms": ms(m.latency.p95), "p99_ms": ms(m.latency.p99),
            })).collect::<Vec<_>>(),
            "cache": cache_figures(service),
            // The seed's pool-wide figures (its getStats(): totalCalls,
            // successRate in percent, averageLatency and latency.p50/p95/p99
            // in ms, processPool.processCount and availableProcesses).
            "total_calls": s.all.calls,
            // Two counters read apart: never fewer successes than none.
            "successes": s.all.calls.saturating_sub(s.all.errors),
            "failures": s.all.errors,
            "success_rate": if s.all.calls == 0 {
                100.0
            } else {
                round2(percent(s.all.calls.saturating_sub(s.all.errors), s.all.calls))
            },
            "average_latency_ms": ms(s.all.latency.mean),
            "latency_ms": {
                "p50": ms(s.all.latency.p50),
                "p95": ms(s.all.latency.p95),
                "p99": ms(s.all.latency.p99),
            },
            "process_count": s.workers.len(),
            "available_processes": s.workers.iter().filter(|w| w.in_flight == 0).count(),
        });
        if pool.transport() == "nats" {
            stats["hosts"] = pool
                .hosts()
                .iter()
                .map(|h| {
                    json!({
                        "id": h.id, "healthy": h.healthy, "draining": h.draining,
                        "processes": h.processes, "in_flight": h.in_flight,
                        "last_seen_ms": h.last_seen.as_millis() as u64, "methods": h.methods,
                    })
                })
                .collect();
            stats["late_answers"] = json!(pool.late_answers());
        }
        Ok(stats)
    }
}

without_params!(
    /// `cache.stats`.
    CacheStats,
    |cx| {
        // Counted at most every few seconds, whoever asks how often.
        cx.app
            .service
            .cache
            .count_l2_within(std::time::Duration::from_secs(5))
            .await;
        Ok(cache_figures(&cx.app.service))
    }
);

without_params!(
    /// `pool.health`.
    PoolHealth,
    |cx| Ok(health_of(&cx.app.service))
);

without_params!(
    /// `pool.stats`.
    PoolStats,
    |cx| Ok(stats_of(&cx.app.service))
);

without_params!(
    /// `persistence.stats`.
    PersistenceStats,
    |cx| persistence_stats(&cx.app.service)
);

/// `persistence.stats`: the seed system's totals.
fn persistence_stats(service: &Service) -> Result<Json, RpcError> {
    {
        let db = &service.db;
        let s = db.stats();
        let ops = s.total_reads + s.total_writes + s.total_heavy;
        let errors = s.read_errors + s.write_errors + s.heavy_errors;
        let health = health_of(service);
        Ok(json!({
            "persistence_layer": "litebridge",
            "connection_pool": "enabled",
            "statistics": {
                "total_operations": ops,
                "total_errors": errors,
                "average_response_time_ms": ms(mean(&s)),
                "error_rate_percent": format!("{:.2}", percent(errors, ops)),
                "success_rate_percent": format!("{:.2}", 100.0 - percent(errors, ops)),
            },
            "pool_health": {
                "healthy": health["healthy"],
                "total_connections": health["pool_status"]["total_connections"],
                "active_connections": health["pool_status"]["active_connections"],
                "available_readers": health["pool_status"]["available_readers"],
                "available_workers": health["pool_status"]["available_workers"],
            },
        }))
    }
}

/// `x` to two decimals, as a number.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
