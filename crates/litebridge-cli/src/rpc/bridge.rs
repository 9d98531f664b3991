//! `bridge.call` and `bridge.breaker.reset`: the worker processes.

use super::*;

/// `bridge.call`.
pub(super) fn bridge_call(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx {
            app,
            caller,
            request_id,
            ..
        } = cx;
        let service = &app.service;
        let target = a.string("method")?;
        if target.is_empty()
            || target.len() > MAX_METHOD_NAME
            || target.chars().any(char::is_control)
        {
            return Err(a.bad(
                "method",
                &format!(
                    "a method name of 1 to {MAX_METHOD_NAME} characters, without control characters"
                ),
                &Json::String(target.chars().take(64).collect()),
            ));
        }
        let call_params = a.take("params").unwrap_or(Json::Array(Vec::new()));
        if !matches!(call_params, Json::Array(_) | Json::Object(_)) {
            return Err(a.bad("params", "an array or an object", &call_params));
        }
        let options = CallOptions {
            timeout: a.timeout()?,
            retry: a.opt_bool("retry")?.unwrap_or(true),
            max_attempts: a
                .opt_u64("max_retries")?
                .map(|n| u32::try_from(n + 1).unwrap_or(u32::MAX)),
            cache_key: a.opt_string("cache_key")?,
            cache_ttl: a.opt_secs("cache_ttl_s")?,
            // Each key's `cache_key` entries are its own (local sessions
            // share one scope, which no key name can spell).
            cache_scope: Some(caller.key().map_or_else(
                || "local session".to_owned(),
                |k| format!("key {}", k.name()),
            )),
            request_id: Some(request_id.to_owned()),
        };
        Ok(workers(service)?
            .call(&target, call_params, options)
            .await?)
    })
}

/// `bridge.breaker.reset`.
pub(super) fn bridge_breaker_reset(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let target = a.string("method")?;
        Ok(json!({ "reset": workers(service)?.reset_breaker(&target) }))
    })
}
