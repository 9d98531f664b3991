//! Statistics and health: `pool.*`, `persistence.stats`, `cache.stats`,
//! `bridge.stats`, `bridge.health`.

use super::*;

/// `bridge.stats`, `bridge.health`.
pub(super) fn bridge_status(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let pool = workers(service)?;
        let s = pool.status();
        let stats = json!({
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
        });
        Ok(stats)
    })
}

/// `cache.stats`.
pub(super) fn cache_stats(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        Ok(cache_figures(service))
    })
}

/// `pool.health`.
pub(super) fn pool_health(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        Ok(health_of(service))
    })
}

/// `pool.stats`.
pub(super) fn pool_stats(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        Ok(stats_of(service))
    })
}

/// `persistence.stats`.
pub(super) fn persistence_stats(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
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
    })
}
