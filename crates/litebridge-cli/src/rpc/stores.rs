//! `state.*`, `memory.*`, `cache.get`/`set`/`delete`: the stores.

use super::*;

/// `state.save`.
pub(super) fn state_save(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let run_id = a.string("run_id")?;
        let state = a
            .take("state")
            .ok_or_else(|| RpcError::InvalidParams("state.save: `state` is required".into()))?;
        let status = a.opt_string("status")?;
        let total_steps = a.opt_u64("total_steps")?.map(|n| n as i64);
        let error_message = a.opt_string("error_message")?;
        let execution_time_ms = a.opt_u64("execution_time_ms")?.map(|n| n as i64);
        let memory_usage_mb = match a.take("memory_usage_mb") {
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| a.bad("memory_usage_mb", "a number", &v))?,
            ),
            None => None,
        };
        let saved = service
            .state
            .save(litebridge::store::StateUpdate {
                run_id,
                state,
                status,
                total_steps,
                error_message,
                execution_time_ms,
                memory_usage_mb,
            })
            .await?;
        to_json(&saved)
    })
}

/// `state.load`.
pub(super) fn state_load(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let run_id = a.string("run_id")?;
        to_json(&service.state.load(&run_id).await?)
    })
}

/// `state.list`.
pub(super) fn state_list(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let status = a.opt_string("status")?;
        let limit = a.opt_u64("limit")?.unwrap_or(100).min(10_000) as usize;
        let after = a.opt_string("after")?;
        let runs = service
            .state
            .list(status.as_deref(), limit, after.as_deref())
            .await?;
        let next = (runs.len() == limit)
            .then(|| runs.last().map(|r| r.run_id.clone()))
            .flatten();
        Ok(json!({ "runs": to_json(&runs)?, "next": next }))
    })
}

/// `state.delete`.
pub(super) fn state_delete(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let run_id = a.string("run_id")?;
        Ok(json!({ "deleted": service.state.delete(&run_id).await? }))
    })
}

/// `memory.store`.
pub(super) fn memory_store(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let namespace = a.string("namespace")?;
        let key = a.string("key")?;
        let value = a
            .take("value")
            .ok_or_else(|| RpcError::InvalidParams("memory.store: `value` is required".into()))?;
        let ttl = a.opt_secs("ttl_s")?;
        service.memory.store(&namespace, &key, &value, ttl).await?;
        Ok(json!({ "ok": true }))
    })
}

/// `memory.get`.
pub(super) fn memory_get(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let (namespace, key) = (a.string("namespace")?, a.string("key")?);
        let value = service.memory.get(&namespace, &key).await?;
        Ok(json!({ "found": value.is_some(), "value": value }))
    })
}

/// `memory.list`.
pub(super) fn memory_list(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let namespace = a.string("namespace")?;
        let prefix = a.opt_string("prefix")?;
        let limit = a.opt_u64("limit")?.unwrap_or(100).min(10_000) as usize;
        let entries = service
            .memory
            .list(&namespace, prefix.as_deref(), limit)
            .await?;
        Ok(json!({ "entries": to_json(&entries)? }))
    })
}

/// `memory.delete`.
pub(super) fn memory_delete(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let (namespace, key) = (a.string("namespace")?, a.string("key")?);
        Ok(json!({ "deleted": service.memory.delete(&namespace, &key).await? }))
    })
}

/// `cache.get`.
pub(super) fn cache_get(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let key = a.string("key")?;
        let value = service.cache.get(&user_key(&key)).await?;
        Ok(json!({ "found": value.is_some(), "value": value }))
    })
}

/// `cache.set`.
pub(super) fn cache_set(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let key = a.string("key")?;
        let value = a
            .take("value")
            .ok_or_else(|| RpcError::InvalidParams("cache.set: `value` is required".into()))?;
        let ttl = a.opt_secs("ttl_s")?;
        service.cache.set(&user_key(&key), value, ttl).await?;
        Ok(json!({ "ok": true }))
    })
}

/// `cache.delete`.
pub(super) fn cache_delete(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let key = a.string("key")?;
        Ok(json!({ "deleted": service.cache.delete(&user_key(&key)).await? }))
    })
}
