//! `bridge.call` and `bridge.breaker.reset`: the worker processes.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::{CacheKeyName, CallTimeoutMs, Handler, MethodName, Ttl, parameter};
use super::*;

/// `bridge.call`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BridgeCall {
    method: MethodName,
    #[serde(default)]
    params: Option<CallParams>,
    #[serde(default)]
    timeout_ms: Option<CallTimeoutMs>,
    /// Retry an idempotent method after a recoverable failure (default true).
    #[serde(default)]
    retry: Option<bool>,
    /// Retries at most after the first attempt, 0 for none (default, and
    /// most: the server's workers.max_retries).
    #[serde(default)]
    max_retries: Option<u64>,
    /// Cache the result under this key (per API key) and answer from the
    /// cache while it is fresh.
    #[serde(default)]
    cache_key: Option<CacheKeyName>,
    /// How long a cached result stays fresh, in seconds (for a method the
    /// workers declared cacheable, and no `cache_key`, at most what they
    /// declared: that entry is shared by every caller).
    #[serde(default)]
    cache_ttl_s: Option<Ttl>,
}

parameter!(
    /// A worker call's arguments: positional (an array) or named (an object).
    CallParams(Json) from Json = "serde_json::Value",
    |v| match v {
        Json::Array(_) | Json::Object(_) => Ok(v),
        other => Err(format!("must be an array or an object, got {other}")),
    },
    schemars::json_schema!({"type": ["array", "object"], "description": "Its arguments: positional (array) or named (object)."})
);

impl Handler for BridgeCall {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let options = CallOptions {
                timeout: self.timeout_ms.map(|t| t.0),
                retry: self.retry.unwrap_or(true),
                max_retries: self
                    .max_retries
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                cache_key: self.cache_key.map(|k| k.0),
                cache_ttl: self.cache_ttl_s.map(|t| t.0),
                // Each key's `cache_key` entries are its own. Local sessions
                // (no key) share theirs by scopes, which no key name can
                // spell: a session narrowed to `read,bridge` (an agent's
                // `litebridge mcp`) poisoned the owner's entries in the
                // shared file when all local sessions shared one.
                cache_scope: Some(cx.caller.key().map_or_else(
                    || format!("local session {}", cx.caller.scopes()),
                    |k| format!("key {}", k.name()),
                )),
                request_id: Some(cx.request_id.to_owned()),
                // A call its caller abandons keeps a place of its key while
                // a worker still runs it.
                abandoned: cx.caller.abandoned_calls(),
            };
            let params = self.params.map_or(Json::Array(Vec::new()), |p| p.0);
            Ok(workers(&cx.app.service)?
                .call(&self.method.0, params, options)
                .await?)
        })
    }
}

/// `bridge.breaker.reset`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BreakerReset {
    /// The worker method's name.
    method: String,
}

impl Handler for BreakerReset {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            Ok(json!({ "reset": workers(&cx.app.service)?.reset_breaker(&self.method) }))
        })
    }
}
