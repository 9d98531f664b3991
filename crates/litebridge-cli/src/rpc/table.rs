//! The method table: every method's name, scope, description, parameters
//! (with their JSON schemas) and annotations, written once. The scope check,
//! the parameter names (`Args`), the `/metrics` method labels, the MCP tools
//! and their schemas, and `rpc.discover` (an OpenRPC document) are all read
//! from here, so they cannot drift apart.

use litebridge::auth::Scope;
use serde_json::{Map, Value as Json, json};

use crate::rpc::{Answer, Args, Ctx, DEFAULT_MAX_ROWS, MAX_METHOD_NAME, MAX_ROWS, MAX_TIMEOUT};

/// One parameter of a method.
pub(crate) struct Param {
    pub(crate) name: &'static str,
    pub(crate) required: bool,
    /// Its JSON schema, with a description.
    pub(crate) schema: fn() -> Json,
}

/// How a method is offered to MCP clients.
pub(crate) struct Tool {
    /// The tool's name.
    pub(crate) name: &'static str,
    /// Shown only when workers are configured.
    pub(crate) needs_workers: bool,
}

/// One method of the table.
pub(crate) struct Method {
    pub(crate) name: &'static str,
    pub(crate) scope: Scope,
    /// What it does and returns, for people and agents.
    pub(crate) description: &'static str,
    /// Parameters of a call that succeeds (a JSON object), run in table
    /// order: shown in `rpc.discover` and the reference, and run over HTTP
    /// and stdio by the tests (`tests/every_method.rs`).
    pub(crate) example: &'static str,
    pub(crate) params: &'static [Param],
    /// It changes nothing.
    pub(crate) read_only: bool,
    /// The MCP tool that runs it, if it is one.
    pub(crate) tool: Option<Tool>,
    /// What it does.
    pub(crate) run: Run,
}

/// A method's implementation: its parameters read into [`Args`] (names
/// checked against the table), the answer to come.
pub(crate) type Run = for<'a> fn(Ctx<'a>, Args) -> Answer<'a>;

impl Method {
    /// The parameter names in order (positional parameters map to them).
    pub(crate) fn param_names(&self) -> Vec<&'static str> {
        self.params.iter().map(|p| p.name).collect()
    }

    /// Its example's parameters (see [`Method::example`]).
    pub(crate) fn example_params(&self) -> Map<String, Json> {
        match serde_json::from_str(self.example) {
            Ok(Json::Object(o)) => o,
            _ => Map::new(),
        }
    }

    /// Its parameters as the JSON schema of one object.
    pub(crate) fn params_schema(&self) -> Json {
        let properties: Map<String, Json> = self
            .params
            .iter()
            .map(|p| (p.name.to_owned(), (p.schema)()))
            .collect();
        let required: Vec<&str> = self
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name)
            .collect();
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }
}

/// The method named `name`.
pub(crate) fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

const fn param(name: &'static str, required: bool, schema: fn() -> Json) -> Param {
    Param {
        name,
        required,
        schema,
    }
}

const fn tool(name: &'static str) -> Option<Tool> {
    Some(Tool {
        name,
        needs_workers: false,
    })
}

fn sql() -> Json {
    json!({"type": "string", "description": "One SQLite statement (at most 1 MiB). Use ?1, ?2 or :name placeholders for values instead of pasting them into the text."})
}

fn sql_params() -> Json {
    json!({
        "type": ["array", "object"],
        "description": "Values for ?1, ?2, ... (an array) or for :name parameters (an object). Numbers, strings, booleans, null; a blob is {\"$blob\": \"<base64>\"}.",
    })
}

fn timeout() -> Json {
    json!({"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT.as_millis() as u64, "description": "Give up after this many milliseconds (a write that times out did not commit). Default: the server's db.timeout_ms."})
}

fn text(description: &'static str) -> Json {
    json!({"type": "string", "description": description})
}

fn any(description: &'static str) -> Json {
    json!({"description": description})
}

fn ttl() -> Json {
    json!({"type": "number", "exclusiveMinimum": 0, "description": "Forget it after this many seconds."})
}

fn limit() -> Json {
    json!({"type": "integer", "minimum": 1, "maximum": 10_000, "description": "Most entries to return (default 100)."})
}

const SQL_PARAM: Param = param("sql", true, sql);
const PARAMS_PARAM: Param = param("params", false, sql_params);
const TIMEOUT_PARAM: Param = param("timeout_ms", false, timeout);
const NO_PARAMS: &[Param] = &[];

/// Every method, in the order the README lists them.
pub(crate) const METHODS: &[Method] = &[
    Method {
        name: "sql.query",
        run: super::sql::sql_query,
        scope: Scope::Read,
        description: "Run one read-only SQL statement (SELECT, WITH ... SELECT, PRAGMA reads) and get its rows. Use `schema` first to see the tables. Returns {columns, rows, truncated}; at most `max_rows` rows. Writes are refused: use `execute`.",
        example: r#"{"sql":"SELECT name, type FROM sqlite_schema WHERE type = ?1 LIMIT 5","params":["table"]}"#,
        params: &[
            SQL_PARAM,
            PARAMS_PARAM,
            TIMEOUT_PARAM,
            param(
                "max_rows",
                false,
                || json!({"type": "integer", "minimum": 0, "maximum": MAX_ROWS, "description": format!("Most rows to return (default {DEFAULT_MAX_ROWS}; 100 as an MCP tool).")}),
            ),
            param(
                "lane",
                false,
                || json!({"type": "string", "enum": ["read", "heavy"], "description": "`heavy` for long scans and aggregates, so point reads are not held up (default `read`)."}),
            ),
        ],
        read_only: true,
        tool: tool("query"),
    },
    Method {
        name: "sql.execute",
        run: super::sql::sql_execute,
        scope: Scope::Write,
        description: "Run one SQL statement that changes the database (INSERT, UPDATE, DELETE, CREATE TABLE, ...). It commits before this returns. Returns {changes, last_insert_rowid}. Transactions, ATTACH and engine settings are not allowed.",
        example: r#"{"sql":"CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)"}"#,
        params: &[SQL_PARAM, PARAMS_PARAM, TIMEOUT_PARAM],
        read_only: false,
        tool: tool("execute"),
    },
    Method {
        name: "sql.batch",
        run: super::sql::sql_batch,
        scope: Scope::Write,
        description: "Run several statements in one transaction: all commit or none does. Returns {results}, one {changes, last_insert_rowid} per statement.",
        example: r#"{"statements":[{"sql":"INSERT INTO notes(body) VALUES (?1)","params":["first"]},{"sql":"UPDATE notes SET body = upper(body) WHERE body = :b","params":{":b":"first"}}]}"#,
        params: &[
            param(
                "statements",
                true,
                || json!({"type": "array", "minItems": 1, "maxItems": crate::rpc::MAX_STATEMENTS, "items": {"type": "object", "properties": {"sql": sql(), "params": sql_params()}, "required": ["sql"], "additionalProperties": false}, "description": "The statements, in order."}),
            ),
            TIMEOUT_PARAM,
        ],
        read_only: false,
        tool: None,
    },
    Method {
        name: "sql.execute_many",
        run: super::sql::sql_execute_many,
        scope: Scope::Write,
        description: "Run one statement once per parameter row, in one transaction. Returns {changes}.",
        example: r#"{"sql":"INSERT INTO notes(body) VALUES (?1)","rows":[["second"],["third"]]}"#,
        params: &[
            SQL_PARAM,
            param(
                "rows",
                true,
                || json!({"type": "array", "maxItems": crate::rpc::MAX_MANY_ROWS, "items": sql_params(), "description": "One parameter list (or object) per run."}),
            ),
            TIMEOUT_PARAM,
        ],
        read_only: false,
        tool: None,
    },
    Method {
        name: "sql.schema",
        run: super::sql::sql_schema,
        scope: Scope::Read,
        description: "List the tables and views: columns (name, declared type, NOT NULL, primary key, default), indexes and an estimated row count. Call this before writing SQL.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: tool("schema"),
    },
    Method {
        name: "bridge.call",
        run: super::bridge::bridge_call,
        scope: Scope::Bridge,
        description: "Call a method of the worker processes by name (the worker_* tools do the same, one per method). Returns the method's result.",
        example: r#"{"method":"echo","params":{"value":"hello"},"timeout_ms":10000}"#,
        params: &[
            param(
                "method",
                true,
                || json!({"type": "string", "minLength": 1, "maxLength": MAX_METHOD_NAME, "description": "The worker method's name."}),
            ),
            param(
                "params",
                false,
                || json!({"type": ["array", "object"], "description": "Its arguments: positional (array) or named (object)."}),
            ),
            TIMEOUT_PARAM,
            param(
                "retry",
                false,
                || json!({"type": "boolean", "description": "Retry an idempotent method after a recoverable failure (default true)."}),
            ),
            param(
                "max_retries",
                false,
                || json!({"type": "integer", "minimum": 0, "description": "Retries at most (default: the server's workers.retry_attempts, which counts attempts, less one)."}),
            ),
            param("cache_key", false, || {
                text(
                    "Cache the result under this key (per API key) and answer from the cache while it is fresh.",
                )
            }),
            param(
                "cache_ttl_s",
                false,
                || json!({"type": "number", "exclusiveMinimum": 0, "description": "How long a cached result stays fresh, in seconds."}),
            ),
        ],
        read_only: false,
        tool: Some(Tool {
            name: "bridge_call",
            needs_workers: true,
        }),
    },
    Method {
        name: "bridge.stats",
        run: super::stats::bridge_status,
        scope: Scope::Read,
        description: "The worker pool's statistics: processes, calls, restarts, crashes, breakers and per-method latency percentiles.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: None,
    },
    Method {
        name: "bridge.health",
        run: super::stats::bridge_status,
        scope: Scope::Read,
        description: "The worker pool's health: the same figures as bridge.stats, with `healthy`.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: None,
    },
    Method {
        name: "bridge.breaker.reset",
        run: super::bridge::bridge_breaker_reset,
        scope: Scope::Bridge,
        description: "Close a worker method's circuit breaker now. Returns {reset}: whether there was one.",
        example: r#"{"method":"echo"}"#,
        params: &[param("method", true, || text("The worker method's name."))],
        read_only: false,
        tool: None,
    },
    Method {
        name: "state.save",
        run: super::stores::state_save,
        scope: Scope::Write,
        description: "Save the state of a workflow run (creates or replaces it; created_at is kept). Returns the saved record.",
        example: r#"{"run_id":"run-1","state":{"step":2,"items":["a","b"]},"status":"running","total_steps":5}"#,
        params: &[
            param("run_id", true, || text("The run's id (1 to 1024 bytes).")),
            param("state", true, || any("Any JSON value: the run's state.")),
            param("status", false, || {
                text("For example running, done, failed.")
            }),
            param(
                "total_steps",
                false,
                || json!({"type": "integer", "minimum": 0}),
            ),
            param("error_message", false, || json!({"type": "string"})),
            param(
                "execution_time_ms",
                false,
                || json!({"type": "integer", "minimum": 0}),
            ),
            param("memory_usage_mb", false, || json!({"type": "number"})),
        ],
        read_only: false,
        tool: tool("state_save"),
    },
    Method {
        name: "state.load",
        run: super::stores::state_load,
        scope: Scope::Read,
        description: "Load a workflow run's saved state; null when there is none.",
        example: r#"{"run_id":"run-1"}"#,
        params: &[param("run_id", true, || text("The run's id."))],
        read_only: true,
        tool: tool("state_load"),
    },
    Method {
        name: "state.list",
        run: super::stores::state_list,
        scope: Scope::Read,
        description: "List saved runs, newest first, optionally with one status. Returns {runs, next}; pass `next` as `after` for the next page.",
        example: r#"{"status":"running","limit":10}"#,
        params: &[
            param("status", false, || text("Only runs with this status.")),
            param("limit", false, limit),
            param("after", false, || text("The `next` of the previous page.")),
        ],
        read_only: true,
        tool: None,
    },
    Method {
        name: "state.delete",
        run: super::stores::state_delete,
        scope: Scope::Write,
        description: "Delete a run's saved state. Returns {deleted}.",
        example: r#"{"run_id":"run-1"}"#,
        params: &[param("run_id", true, || text("The run's id."))],
        read_only: false,
        tool: None,
    },
    Method {
        name: "memory.store",
        run: super::stores::memory_store,
        scope: Scope::Write,
        description: "Remember a value under namespace + key, optionally for ttl_s seconds (then it is gone). Overwrites.",
        example: r#"{"namespace":"agent-7","key":"preference","value":{"tone":"brief"},"ttl_s":3600}"#,
        params: &[
            param("namespace", true, || {
                text("For example the agent's or the user's name.")
            }),
            param("key", true, || json!({"type": "string"})),
            param("value", true, || any("Any JSON value.")),
            param("ttl_s", false, ttl),
        ],
        read_only: false,
        tool: tool("memory_store"),
    },
    Method {
        name: "memory.get",
        run: super::stores::memory_get,
        scope: Scope::Read,
        description: "Recall the value stored under namespace + key. Returns {found, value}.",
        example: r#"{"namespace":"agent-7","key":"preference"}"#,
        params: &[
            param("namespace", true, || json!({"type": "string"})),
            param("key", true, || json!({"type": "string"})),
        ],
        read_only: true,
        tool: tool("memory_get"),
    },
    Method {
        name: "memory.list",
        run: super::stores::memory_list,
        scope: Scope::Read,
        description: "List what is remembered in a namespace, optionally only keys starting with a prefix.",
        example: r#"{"namespace":"agent-7","prefix":"pref","limit":10}"#,
        params: &[
            param("namespace", true, || json!({"type": "string"})),
            param("prefix", false, || json!({"type": "string"})),
            param("limit", false, limit),
        ],
        read_only: true,
        tool: tool("memory_list"),
    },
    Method {
        name: "memory.delete",
        run: super::stores::memory_delete,
        scope: Scope::Write,
        description: "Forget the value under namespace + key. Returns {deleted}.",
        example: r#"{"namespace":"agent-7","key":"preference"}"#,
        params: &[
            param("namespace", true, || json!({"type": "string"})),
            param("key", true, || json!({"type": "string"})),
        ],
        read_only: false,
        tool: None,
    },
    Method {
        name: "cache.get",
        run: super::stores::cache_get,
        scope: Scope::Read,
        description: "Read a cached value by key. Returns {found, value}.",
        example: r#"{"key":"weather:paris"}"#,
        params: &[param("key", true, || json!({"type": "string"}))],
        read_only: true,
        tool: tool("cache_get"),
    },
    Method {
        name: "cache.set",
        run: super::stores::cache_set,
        scope: Scope::Write,
        description: "Cache a value under a key, optionally for ttl_s seconds.",
        example: r#"{"key":"weather:paris","value":{"celsius":18},"ttl_s":600}"#,
        params: &[
            param("key", true, || json!({"type": "string"})),
            param("value", true, || any("Any JSON value.")),
            param("ttl_s", false, ttl),
        ],
        read_only: false,
        tool: tool("cache_set"),
    },
    Method {
        name: "cache.delete",
        run: super::stores::cache_delete,
        scope: Scope::Write,
        description: "Remove a cached value. Returns {deleted}.",
        example: r#"{"key":"weather:paris"}"#,
        params: &[param("key", true, || json!({"type": "string"}))],
        read_only: false,
        tool: None,
    },
    Method {
        name: "cache.stats",
        run: super::stats::cache_stats,
        scope: Scope::Read,
        description: "The two-level cache's figures: hits, misses, hit rate, entries and bytes in memory.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: None,
    },
    Method {
        name: "pool.health",
        run: super::stats::pool_health,
        scope: Scope::Read,
        description: "Is the database healthy? Connections, free readers, queue lengths and the last health check.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: tool("pool_health"),
    },
    Method {
        name: "pool.stats",
        run: super::stats::pool_stats,
        scope: Scope::Read,
        description: "Database statistics: reads, writes, latency percentiles in ms, group-commit batches, WAL size, errors.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: tool("pool_stats"),
    },
    Method {
        name: "persistence.stats",
        run: super::stats::persistence_stats,
        scope: Scope::Read,
        description: "Totals of the persistence layer: operations, errors, error and success rates, connection pool summary.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: tool("persistence_stats"),
    },
    Method {
        name: "admin.backup",
        run: super::admin::admin_backup,
        scope: Scope::Admin,
        description: "Take an online backup of the database, verified before it counts. Returns its path and size.",
        example: r#"{}"#,
        params: &[param("to", false, || {
            text(
                "A file name for the backup in the backup directory (no directory; a new name). Default: a timestamped name.",
            )
        })],
        read_only: false,
        tool: tool("backup"),
    },
    Method {
        name: "admin.check",
        run: super::admin::admin_check,
        scope: Scope::Admin,
        description: "Check the database's integrity (quick by default). Returns {ok, problems, virtual_table_problems, foreign_key_violations, elapsed_ms}.",
        example: r#"{"full":false}"#,
        params: &[param(
            "full",
            false,
            || json!({"type": "boolean", "description": "The full integrity check instead of the quick one (default false)."}),
        )],
        read_only: true,
        tool: None,
    },
    Method {
        name: "admin.checkpoint",
        run: super::admin::admin_checkpoint,
        scope: Scope::Admin,
        description: "Checkpoint the WAL now. Returns {busy, log_pages, checkpointed_pages, wal_bytes}.",
        example: r#"{"mode":"passive"}"#,
        params: &[param(
            "mode",
            false,
            || json!({"type": "string", "enum": ["passive", "full", "restart", "truncate"], "description": "SQLite's checkpoint mode (default passive)."}),
        )],
        read_only: false,
        tool: None,
    },
    Method {
        name: "admin.keys.create",
        run: super::admin::admin_keys_create,
        scope: Scope::Admin,
        description: "Create an API key. Returns {name, scopes, tier, secret}; the secret is shown only this once.",
        example: r#"{"scope":"read,bridge","tier":"free","name":"dashboard"}"#,
        params: &[
            param("scope", true, || {
                text("Comma-separated scopes: read, write, bridge, admin.")
            }),
            param(
                "tier",
                false,
                || json!({"type": "string", "enum": ["free", "pro", "enterprise"], "description": "Its quota tier (default free)."}),
            ),
            param("name", false, || text("Its name (default: generated).")),
        ],
        read_only: false,
        tool: None,
    },
    Method {
        name: "admin.keys.list",
        run: super::admin::admin_keys_list,
        scope: Scope::Admin,
        description: "List the API keys (never their secrets): name, scopes, tier, created, revoked, last used.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: None,
    },
    Method {
        name: "admin.keys.revoke",
        run: super::admin::admin_keys_revoke,
        scope: Scope::Admin,
        description: "Revoke an API key by name, at once. Returns {revoked}.",
        example: r#"{"name":"dashboard"}"#,
        params: &[param("name", true, || text("The key's name."))],
        read_only: false,
        tool: None,
    },
    Method {
        name: "rpc.discover",
        run: super::admin::rpc_discover,
        scope: Scope::Read,
        description: "This table as an OpenRPC 1.3 document: every method, its scope, parameters and their JSON schemas.",
        example: r#"{}"#,
        params: NO_PARAMS,
        read_only: true,
        tool: None,
    },
];

/// The table as an OpenRPC 1.3 document (`rpc.discover`).
pub(crate) fn openrpc() -> Json {
    let methods: Vec<Json> = METHODS
        .iter()
        .map(|m| {
            let params: Vec<Json> = m
                .params
                .iter()
                .map(|p| {
                    let schema = (p.schema)();
                    let mut d = json!({"name": p.name, "required": p.required, "schema": schema});
                    if let Some(text) = schema.get("description") {
                        d["description"] = text.clone();
                    }
                    d
                })
                .collect();
            let summary = m.description.split(". ").next().unwrap_or(m.description);
            let example: Vec<Json> = m
                .example_params()
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            json!({
                "name": m.name,
                "summary": summary.trim_end_matches('.'),
                "description": m.description,
                "paramStructure": "either",
                "params": params,
                "result": {"name": "result", "schema": {}},
                "examples": [{"name": format!("{} example", m.name), "params": example}],
                "x-scope": m.scope.as_str(),
                "x-read-only": m.read_only,
            })
        })
        .collect();
    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "litebridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "SQLite service and process bridge: the JSON-RPC 2.0 method table served over HTTP (POST /rpc), stdio and as MCP tools. Each method needs the scope named in x-scope.",
        },
        "methods": methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method cannot be added half-described: a name of its own, a
    /// sentence for people and agents, and a JSON schema per parameter;
    /// tool names are unique too.
    #[test]
    fn every_method_is_fully_described() {
        let mut names = std::collections::BTreeSet::new();
        let mut tools = std::collections::BTreeSet::new();
        for m in METHODS {
            assert!(names.insert(m.name), "{} twice", m.name);
            assert!(
                m.description.len() > 20 && m.description.ends_with('.'),
                "{}: describe it in a sentence",
                m.name
            );
            let mut params = std::collections::BTreeSet::new();
            for p in m.params {
                assert!(params.insert(p.name), "{}: `{}` twice", m.name, p.name);
                assert!(
                    (p.schema)().is_object(),
                    "{}: `{}` needs a schema",
                    m.name,
                    p.name
                );
            }
            assert_eq!(m.params_schema()["type"], "object");
            // An example that names only its parameters, and all the
            // required ones (the tests run it; its values are checked
            // against the schemas in tests/openrpc.rs).
            let example: Json = serde_json::from_str(m.example)
                .unwrap_or_else(|e| panic!("{}: the example is not JSON: {e}", m.name));
            let example = example.as_object().unwrap_or_else(|| {
                panic!("{}: the example must be an object of parameters", m.name)
            });
            for name in example.keys() {
                assert!(
                    params.contains(name.as_str()),
                    "{}: the example sets unknown `{name}`",
                    m.name
                );
            }
            for p in m.params.iter().filter(|p| p.required) {
                assert!(
                    example.contains_key(p.name),
                    "{}: the example lacks `{}`",
                    m.name,
                    p.name
                );
            }
            if let Some(t) = &m.tool {
                assert!(tools.insert(t.name), "tool {} twice", t.name);
            }
        }
        let doc = openrpc();
        assert_eq!(doc["methods"].as_array().map(Vec::len), Some(METHODS.len()));
    }
}

/// The table as Markdown: `docs/methods.md`, kept current by a test.
#[cfg(test)]
fn reference() -> String {
    let mut out = String::from(
        "# Methods\n\n\
         Generated from `crates/litebridge-cli/src/rpc/table.rs` (the test\n\
         `the_method_reference_is_current` fails when this file is stale; run it with\n\
         `LITEBRIDGE_UPDATE_DOCS=1` to rewrite it). The same table answers `rpc.discover`\n\
         as an OpenRPC 1.3 document. Parameters are named (an object) or positional (an\n\
         array, in the order below). Each method needs the scope shown.\n",
    );
    for m in METHODS {
        out.push_str(&format!(
            "\n## `{}`\n\nScope `{}`{}{}.\n\n{}\n",
            m.name,
            m.scope.as_str(),
            if m.read_only { ", read-only" } else { "" },
            m.tool
                .as_ref()
                .map(|t| format!(", MCP tool `{}`", t.name))
                .unwrap_or_default(),
            m.description
        ));
        if !m.params.is_empty() {
            out.push_str("\n| parameter | required | schema |\n|---|---|---|\n");
            for p in m.params {
                let mut schema = (p.schema)();
                let description = schema
                    .as_object_mut()
                    .and_then(|o| o.remove("description"))
                    .and_then(|d| d.as_str().map(str::to_owned));
                let shape = serde_json::to_string(&schema).unwrap_or_default();
                out.push_str(&format!(
                    "| `{}` | {} | `{}`{} |\n",
                    p.name,
                    if p.required { "yes" } else { "no" },
                    shape.replace('|', "\\|"),
                    description
                        .map(|d| format!(" {}", d.replace('|', "\\|")))
                        .unwrap_or_default()
                ));
            }
        }
        out.push_str(&format!(
            "\nExample: `{{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"{}\", \"params\": {}}}`\n",
            m.name, m.example
        ));
    }
    out
}

#[cfg(test)]
mod reference_tests {
    /// `docs/methods.md` is what the table says today.
    #[test]
    fn the_method_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/methods.md");
        let want = super::reference();
        if std::env::var_os("LITEBRIDGE_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{} is stale: run `LITEBRIDGE_UPDATE_DOCS=1 cargo test -p litebridge-cli the_method_reference_is_current`",
            path.display()
        );
    }
}
