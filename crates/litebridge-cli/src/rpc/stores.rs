//! `state.*`, `memory.*`, `cache.get`/`set`/`delete`: the stores.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::{AnyValue, CacheKeyName, Count, Handler, Limit, Ttl};
use super::*;

/// `state.save`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StateSave {
    /// The run's id (1 to 1024 bytes).
    run_id: String,
    /// Any JSON value: the run's state.
    state: AnyValue,
    /// For example running, done, failed.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    total_steps: Option<Count>,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    execution_time_ms: Option<Count>,
    #[serde(default)]
    memory_usage_mb: Option<f64>,
}

impl Handler for StateSave {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let saved = cx
                .app
                .service
                .state
                .save(litebridge::store::StateUpdate {
                    run_id: self.run_id,
                    state: self.state.0,
                    status: self.status,
                    total_steps: self.total_steps.map(|n| n.0),
                    error_message: self.error_message,
                    execution_time_ms: self.execution_time_ms.map(|n| n.0),
                    memory_usage_mb: self.memory_usage_mb,
                })
                .await?;
            record_reply(saved)
        })
    }
}

/// `state.load` and `state.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunId {
    /// The run's id.
    run_id: String,
}

/// `state.load`.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(super) struct StateLoad(RunId);

/// `state.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(super) struct StateDelete(RunId);

impl Handler for StateLoad {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            match cx.app.service.state.load(&self.0.run_id).await? {
                Some(record) => record_reply(record),
                None => Ok(Json::Null),
            }
        })
    }
}

impl Handler for StateDelete {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            Ok(json!({ "deleted": cx.app.service.state.delete(&self.0.run_id).await? }))
        })
    }
}

/// `state.list`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StateList {
    /// Only runs with this status.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<Limit>,
    /// The `next` of the previous page.
    #[serde(default)]
    after: Option<String>,
}

impl Handler for StateList {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let limit = self.limit.unwrap_or_default().0;
            let page = cx
                .app
                .service
                .state
                .page(self.status.as_deref(), limit, self.after.as_deref())
                .await?;
            let runs = page
                .items
                .into_iter()
                .map(record_reply)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(page_reply("runs", runs, page.next))
        })
    }
}

/// `memory.store`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemoryStore {
    /// For example the agent's or the user's name.
    namespace: String,
    key: String,
    value: AnyValue,
    #[serde(default)]
    ttl_s: Option<Ttl>,
}

impl Handler for MemoryStore {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let ttl = self.ttl_s.map(|t| t.0);
            cx.app
                .service
                .memory
                .store(&self.namespace, &self.key, &self.value.0, ttl)
                .await?;
            Ok(json!({ "ok": true }))
        })
    }
}

/// `memory.get` and `memory.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemoryKey {
    namespace: String,
    key: String,
}

/// `memory.get`.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(super) struct MemoryGet(MemoryKey);

/// `memory.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(super) struct MemoryDelete(MemoryKey);

impl Handler for MemoryGet {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let MemoryKey { namespace, key } = self.0;
            let value = cx.app.service.memory.get(&namespace, &key).await?;
            Ok(found(value))
        })
    }
}

impl Handler for MemoryDelete {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let MemoryKey { namespace, key } = self.0;
            Ok(json!({ "deleted": cx.app.service.memory.delete(&namespace, &key).await? }))
        })
    }
}

/// `memory.list`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemoryList {
    namespace: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    limit: Option<Limit>,
    /// The `next` of the previous page.
    #[serde(default)]
    after: Option<String>,
}

impl Handler for MemoryList {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let limit = self.limit.unwrap_or_default().0;
            let page = cx
                .app
                .service
                .memory
                .page(
                    &self.namespace,
                    self.prefix.as_deref(),
                    limit,
                    self.after.as_deref(),
                )
                .await?;
            let entries = page
                .items
                .into_iter()
                .map(|mut e| {
                    let value = std::mem::take(&mut e.value);
                    moved_in(&e, "value", value)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(page_reply("entries", entries, page.next))
        })
    }
}

/// `cache.get` and `cache.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheKey {
    key: CacheKeyName,
}

/// `cache.get`.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(super) struct CacheGet(CacheKey);

/// `cache.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(transparent)]
pub(super) struct CacheDelete(CacheKey);

impl Handler for CacheGet {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let value = cx.app.service.cache.get(&user_key(&self.0.key.0)).await?;
            Ok(found(value))
        })
    }
}

impl Handler for CacheDelete {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let deleted = cx
                .app
                .service
                .cache
                .delete(&user_key(&self.0.key.0))
                .await?;
            Ok(json!({ "deleted": deleted }))
        })
    }
}

/// `cache.set`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheSet {
    key: CacheKeyName,
    value: AnyValue,
    #[serde(default)]
    ttl_s: Option<Ttl>,
}

impl Handler for CacheSet {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let ttl = self.ttl_s.map(|t| t.0);
            cx.app
                .service
                .cache
                .set(&user_key(&self.key.0), self.value.0, ttl)
                .await?;
            Ok(json!({ "ok": true }))
        })
    }
}

/// `item` as JSON with `value` moved in as its member `name` (taken out of
/// it before: serializing it would copy the whole tree, which a page of
/// large values doubled).
fn moved_in<T: serde::Serialize>(item: &T, name: &str, value: Json) -> Result<Json, RpcError> {
    let mut v = to_json(item)?;
    if let Json::Object(members) = &mut v {
        members.insert(name.to_owned(), value);
    }
    Ok(v)
}

/// `{found, value}`, the value moved in (`json!` would copy it: a read of
/// a large value built its tree twice, review 250).
fn found(value: Option<Json>) -> Json {
    let mut reply = serde_json::Map::new();
    reply.insert("found".to_owned(), Json::Bool(value.is_some()));
    reply.insert("value".to_owned(), value.unwrap_or(Json::Null));
    Json::Object(reply)
}

/// A run's record as JSON, its state moved in.
fn record_reply(mut record: litebridge::store::StateRecord) -> Result<Json, RpcError> {
    let state = std::mem::take(&mut record.state);
    moved_in(&record, "state", state)
}

/// `{<name>: items, next}`, the items moved in (`json!` would copy them).
fn page_reply(name: &str, items: Vec<Json>, next: Option<String>) -> Json {
    let mut reply = serde_json::Map::new();
    reply.insert(name.to_owned(), Json::Array(items));
    reply.insert("next".to_owned(), next.map_or(Json::Null, Json::String));
    Json::Object(reply)
}
