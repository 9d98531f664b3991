//! The MCP tools: each one a method of the table (`rpc`) with a
//! JSON schema and a description an agent can act on, plus one tool per
//! worker method announced in `$/ready`.
//!
//! A session sees only the tools its scopes allow (a read-only session has no
//! `execute`, no `state_save`, ...), and calls go through [`rpc::call`], so
//! scopes, quotas, limits, metrics and logs are those of every transport.
//!
//! Results are bounded: past [`MAX_RESULT_BYTES`] of JSON a query keeps the
//! rows that fit and says `truncated`, anything else is replaced by a marker
//! with its size; the text always ends with a line saying what was cut.

use rmcp::model::{CallToolResult, ContentBlock, Tool, ToolAnnotations};
use serde_json::{Map, Value as Json, json};

use litebridge::auth::{Caller, Scope};

use crate::rpc::{self, App, RpcError};

/// The most JSON a tool result carries.
pub(crate) const MAX_RESULT_BYTES: usize = 100_000;
/// Rows `query` returns when the agent does not say.
const DEFAULT_QUERY_ROWS: u64 = 100;
/// Tool names of worker methods start with this.
const WORKER_PREFIX: &str = "worker_";

/// One tool of the table.
struct Def {
    name: &'static str,
    method: &'static str,
    scope: Scope,
    read_only: bool,
    needs_workers: bool,
    description: &'static str,
    schema: fn() -> Json,
}

fn object(properties: Json, required: &[&str]) -> Json {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn sql_params() -> Json {
    json!({
        "type": ["array", "object"],
        "description": "Values for ?1, ?2, ... (an array) or for :name parameters (an object). Numbers, strings, booleans, null; a blob is {\"$blob\": \"<base64>\"}.",
    })
}

fn timeout() -> Json {
    json!({"type": "integer", "minimum": 1, "maximum": 3_600_000, "description": "Give up after this many milliseconds (a write that times out did not commit)."})
}

const DEFS: &[Def] = &[
    Def {
        name: "query",
        method: "sql.query",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Run one read-only SQL statement (SELECT, WITH ... SELECT, PRAGMA reads) and get its rows. Use `schema` first to see the tables. Returns {columns, rows, truncated}; at most `max_rows` rows (default 100). Writes are refused: use `execute`.",
        schema: || {
            object(
                json!({
                    "sql": {"type": "string", "description": "One SQLite statement. Use ?1, ?2 or :name placeholders for values instead of pasting them into the text."},
                    "params": sql_params(),
                    "max_rows": {"type": "integer", "minimum": 0, "maximum": 1_000_000, "description": "Most rows to return (default 100)."},
                    "lane": {"type": "string", "enum": ["read", "heavy"], "description": "`heavy` for long scans and aggregates, so point reads are not held up."},
                    "timeout_ms": timeout(),
                }),
                &["sql"],
            )
        },
    },
    Def {
        name: "execute",
        method: "sql.execute",
        scope: Scope::Write,
        read_only: false,
        needs_workers: false,
        description: "Run one SQL statement that changes the database (INSERT, UPDATE, DELETE, CREATE TABLE, ...). It commits before this returns. Returns {changes, last_insert_rowid}. Transactions, ATTACH and engine settings are not allowed.",
        schema: || {
            object(
                json!({
                    "sql": {"type": "string", "description": "One SQLite statement; values go in `params`."},
                    "params": sql_params(),
                    "timeout_ms": timeout(),
                }),
                &["sql"],
            )
        },
    },
    Def {
        name: "schema",
        method: "sql.schema",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "List the tables and views: columns (name, declared type, NOT NULL, primary key, default), indexes and an estimated row count. Call this before writing SQL.",
        schema: || object(json!({}), &[]),
    },
    Def {
        name: "pool_health",
        method: "pool.health",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Is the database healthy? Connections, free readers, queue lengths and the last health check.",
        schema: || object(json!({}), &[]),
    },
    Def {
        name: "pool_stats",
        method: "pool.stats",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Database statistics: reads, writes, latency percentiles in ms, group-commit batches, WAL size, errors.",
        schema: || object(json!({}), &[]),
    },
    Def {
        name: "persistence_stats",
        method: "persistence.stats",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Totals of the persistence layer: operations, errors, error and success rates, connection pool summary.",
        schema: || object(json!({}), &[]),
    },
    Def {
        name: "state_save",
        method: "state.save",
        scope: Scope::Write,
        read_only: false,
        needs_workers: false,
        description: "Save the state of a workflow run (creates or replaces it; created_at is kept). Returns the saved record.",
        schema: || {
            object(
                json!({
                    "run_id": {"type": "string", "description": "The run's id (1 to 1024 bytes)."},
                    "state": {"description": "Any JSON value: the run's state."},
                    "status": {"type": "string", "description": "For example running, done, failed."},
                    "total_steps": {"type": "integer", "minimum": 0},
                    "error_message": {"type": "string"},
                    "execution_time_ms": {"type": "integer", "minimum": 0},
                    "memory_usage_mb": {"type": "number"},
                }),
                &["run_id", "state"],
            )
        },
    },
    Def {
        name: "state_load",
        method: "state.load",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Load a workflow run's saved state; null when there is none.",
        schema: || object(json!({"run_id": {"type": "string"}}), &["run_id"]),
    },
    Def {
        name: "memory_store",
        method: "memory.store",
        scope: Scope::Write,
        read_only: false,
        needs_workers: false,
        description: "Remember a value under namespace + key, optionally for ttl_s seconds (then it is gone). Overwrites.",
        schema: || {
            object(
                json!({
                    "namespace": {"type": "string", "description": "For example the agent's or the user's name."},
                    "key": {"type": "string"},
                    "value": {"description": "Any JSON value."},
                    "ttl_s": {"type": "number", "exclusiveMinimum": 0, "description": "Forget it after this many seconds."},
                }),
                &["namespace", "key", "value"],
            )
        },
    },
    Def {
        name: "memory_get",
        method: "memory.get",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Recall the value stored under namespace + key. Returns {found, value}.",
        schema: || {
            object(
                json!({"namespace": {"type": "string"}, "key": {"type": "string"}}),
                &["namespace", "key"],
            )
        },
    },
    Def {
        name: "memory_list",
        method: "memory.list",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "List what is remembered in a namespace, optionally only keys starting with a prefix.",
        schema: || {
            object(
                json!({
                    "namespace": {"type": "string"},
                    "prefix": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
                }),
                &["namespace"],
            )
        },
    },
    Def {
        name: "cache_get",
        method: "cache.get",
        scope: Scope::Read,
        read_only: true,
        needs_workers: false,
        description: "Read a cached value by key. Returns {found, value}.",
        schema: || object(json!({"key": {"type": "string"}}), &["key"]),
    },
    Def {
        name: "cache_set",
        method: "cache.set",
        scope: Scope::Write,
        read_only: false,
        needs_workers: false,
        description: "Cache a value under a key, optionally for ttl_s seconds.",
        schema: || {
            object(
                json!({
                    "key": {"type": "string"},
                    "value": {"description": "Any JSON value."},
                    "ttl_s": {"type": "number", "exclusiveMinimum": 0},
                }),
                &["key", "value"],
            )
        },
    },
    Def {
        name: "bridge_call",
        method: "bridge.call",
        scope: Scope::Bridge,
        read_only: false,
        needs_workers: true,
        description: "Call a method of the worker processes by name (the worker_* tools do the same, one per method). Returns the method's result.",
        schema: || {
            object(
                json!({
                    "method": {"type": "string", "description": "The worker method's name."},
                    "params": {"type": ["array", "object"], "description": "Its arguments: positional (array) or named (object)."},
                    "timeout_ms": timeout(),
                }),
                &["method"],
            )
        },
    },
    Def {
        name: "backup",
        method: "admin.backup",
        scope: Scope::Admin,
        read_only: false,
        needs_workers: false,
        description: "Take an online backup of the database, verified before it counts. Returns its path and size.",
        schema: || {
            object(
                json!({"to": {"type": "string", "description": "A file name for the backup in the backup directory (no directory; a new name). Default: a timestamped name."}}),
                &[],
            )
        },
    },
];

fn tool(name: String, description: String, schema: Json, read_only: bool) -> Tool {
    let schema = match schema {
        Json::Object(m) => m,
        _ => Map::new(),
    };
    let mut t = Tool::new(name, description, schema);
    let mut annotations = ToolAnnotations::default();
    annotations.read_only_hint = Some(read_only);
    annotations.destructive_hint = Some(!read_only);
    annotations.open_world_hint = Some(false);
    t.annotations = Some(annotations);
    t
}

/// The tool name of a worker method: `worker_` and the name with anything
/// but letters, digits, `_` and `-` made `_`, at most 64 characters.
fn worker_tool_name(method: &str) -> String {
    let clean: String = method
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{WORKER_PREFIX}{clean}");
    name.truncate(64);
    name
}

fn worker_schema(m: &litebridge::workers::MethodInfo) -> Json {
    match &m.params {
        Some(params) => {
            let properties: Map<String, Json> = params
                .iter()
                .map(|p| {
                    let mut s = Map::new();
                    if let Some(t) = &p.json_type {
                        s.insert("type".into(), json!(t));
                    }
                    (p.name.clone(), Json::Object(s))
                })
                .collect();
            let required: Vec<&str> = params
                .iter()
                .filter(|p| p.required)
                .map(|p| p.name.as_str())
                .collect();
            object(Json::Object(properties), &required)
        }
        // The worker takes anything: named arguments as an object.
        None => json!({"type": "object", "additionalProperties": true}),
    }
}

/// The tools `caller` may use, in a stable order: the table's, then one per
/// worker method.
pub(crate) fn list(app: &App, caller: &Caller) -> Vec<Tool> {
    let workers = app.service.workers.as_ref();
    let mut tools: Vec<Tool> = DEFS
        .iter()
        .filter(|d| caller.scopes().allows(d.scope) && (!d.needs_workers || workers.is_some()))
        .map(|d| {
            tool(
                d.name.to_owned(),
                d.description.to_owned(),
                (d.schema)(),
                d.read_only,
            )
        })
        .collect();
    if let Some(pool) = workers.filter(|_| caller.scopes().allows(Scope::Bridge)) {
        let mut methods = pool.methods();
        methods.sort_by(|a, b| a.name.cmp(&b.name));
        methods.dedup_by(|a, b| a.name == b.name);
        for m in methods {
            let description = format!(
                "Worker method `{}`{}{}",
                m.name,
                m.description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default(),
                if m.idempotent {
                    ""
                } else {
                    " (not idempotent: never retried)"
                }
            );
            tools.push(tool(
                worker_tool_name(&m.name),
                description,
                worker_schema(&m),
                false,
            ));
        }
    }
    tools
}

/// What a tool name runs: a method of the table with its params, or `None`
/// for a name that is no tool.
fn resolve(app: &App, name: &str, args: Map<String, Json>) -> Option<(&'static str, Json)> {
    if let Some(d) = DEFS.iter().find(|d| d.name == name) {
        let mut args = args;
        if d.name == "query" && !args.contains_key("max_rows") {
            args.insert("max_rows".into(), json!(DEFAULT_QUERY_ROWS));
        }
        return Some((d.method, Json::Object(args)));
    }
    let pool = app.service.workers.as_ref()?;
    let method = pool
        .methods()
        .into_iter()
        .find(|m| worker_tool_name(&m.name) == name)?;
    Some((
        "bridge.call",
        json!({"method": method.name, "params": Json::Object(args)}),
    ))
}

/// Runs a tool for `caller`; every outcome is a tool result (errors too, so
/// the agent reads them).
pub(crate) async fn call(
    app: &App,
    caller: &Caller,
    name: &str,
    args: Map<String, Json>,
    request_id: &str,
) -> CallToolResult {
    let Some((method, params)) = resolve(app, name, args) else {
        return error_result(&RpcError::MethodNotFound(format!(
            "no tool named {name:?} (tools/list has the tools of this session)"
        )));
    };
    let _slot = match caller.enter() {
        Ok(slot) => slot,
        Err(e) => return error_result(&RpcError::App(e)),
    };
    match rpc::call(app, caller, method, Some(params), request_id).await {
        Ok(result) => success(result),
        Err(e) => error_result(&e),
    }
}

fn error_result(e: &RpcError) -> CallToolResult {
    let (kind, recoverable, message) = (e.kind(), e.is_recoverable(), e.message());
    let mut structured = json!({
        "error": {"kind": kind, "recoverable": recoverable, "message": message, "code": e.code()},
    });
    let data = e.data();
    if let Some(data) = &data {
        structured["error"]["data"] = Json::Object(data.clone());
    }
    let advice = if recoverable {
        match data
            .as_ref()
            .and_then(|d| d.get("retry_after_ms"))
            .and_then(Json::as_u64)
        {
            Some(ms) => format!("retrying after {ms} ms can help"),
            None => "retrying later can help".to_owned(),
        }
    } else {
        "retrying the same call will not help; change it".to_owned()
    };
    let mut r = CallToolResult::structured_error(structured);
    r.content = vec![ContentBlock::text(format!(
        "error ({kind}): {message}\n{advice}"
    ))];
    r
}

/// A result as structured content (an object) and readable text, bounded.
fn success(result: Json) -> CallToolResult {
    let (structured, note) = bound(result);
    let text = match readable_rows(&structured) {
        Some(table) => table,
        None => serde_json::to_string_pretty(&structured).unwrap_or_default(),
    };
    let text = match note {
        Some(n) => format!("{text}\n[{n}]"),
        None => text,
    };
    let mut r = CallToolResult::structured(structured);
    r.content = vec![ContentBlock::text(text)];
    r
}

/// Keeps the result within [`MAX_RESULT_BYTES`]; says what was cut.
fn bound(result: Json) -> (Json, Option<String>) {
    let structured = match result {
        Json::Object(m) => Json::Object(m),
        other => json!({ "result": other }),
    };
    let size = serde_json::to_string(&structured).map_or(0, |s| s.len());
    if size <= MAX_RESULT_BYTES {
        return (structured, None);
    }
    // A query: keep the rows that fit.
    if let Some(rows) = structured.get("rows").and_then(Json::as_array) {
        let total = rows.len();
        let mut kept = Vec::new();
        let mut used = 200 + serde_json::to_string(&structured["columns"]).map_or(0, |s| s.len());
        for row in rows {
            let n = serde_json::to_string(row).map_or(0, |s| s.len()) + 1;
            if used + n > MAX_RESULT_BYTES {
                break;
            }
            used += n;
            kept.push(row.clone());
        }
        let shown = kept.len();
        let mut trimmed = structured.clone();
        trimmed["rows"] = Json::Array(kept);
        trimmed["truncated"] = json!(true);
        let note = format!(
            "truncated: {shown} of {total} rows shown ({size} bytes is over the {MAX_RESULT_BYTES}-byte limit); select fewer columns or pass a smaller max_rows"
        );
        return (trimmed, Some(note));
    }
    let note = format!(
        "truncated: the result is {size} bytes, over the {MAX_RESULT_BYTES}-byte limit of a tool result; ask for less"
    );
    (
        json!({"truncated": true, "bytes": size, "limit": MAX_RESULT_BYTES}),
        Some(note),
    )
}

/// Query results as a small text table (columns, then one line per row).
fn readable_rows(v: &Json) -> Option<String> {
    let columns = v.get("columns")?.as_array()?;
    let rows = v.get("rows")?.as_array()?;
    let cell = |c: &Json| match c {
        Json::String(s) => s.clone(),
        Json::Null => "NULL".to_owned(),
        other => other.to_string(),
    };
    let mut out = columns.iter().map(cell).collect::<Vec<_>>().join(" | ");
    for row in rows {
        out.push('\n');
        out.push_str(
            &row.as_array()
                .map(|r| r.iter().map(cell).collect::<Vec<_>>().join(" | "))
                .unwrap_or_default(),
        );
    }
    out.push_str(&format!(
        "\n({} row{}{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if v["truncated"] == json!(true) {
            ", truncated"
        } else {
            ""
        }
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_become_valid_tool_names() {
        assert_eq!(worker_tool_name("analyze"), "worker_analyze");
        assert_eq!(
            worker_tool_name("pkg.Class.method"),
            "worker_pkg_Class_method"
        );
        assert_eq!(worker_tool_name(&"x".repeat(200)).len(), 64);
    }

    #[test]
    fn big_results_are_cut_with_a_marker() {
        let rows: Vec<Json> = (0..10_000).map(|i| json!([i, "x".repeat(50)])).collect();
        let (v, note) = bound(json!({"columns": ["a", "b"], "rows": rows, "truncated": false}));
        assert!(serde_json::to_string(&v).unwrap().len() <= MAX_RESULT_BYTES);
        assert_eq!(v["truncated"], true);
        let shown = v["rows"].as_array().unwrap().len();
        assert!(shown > 100 && shown < 10_000, "{shown}");
        assert!(note.unwrap().contains(&format!("{shown} of 10000 rows")));
        let (v, note) = bound(json!({"blob": "y".repeat(MAX_RESULT_BYTES)}));
        assert_eq!(v["truncated"], true);
        assert!(note.unwrap().contains("over the"));
        let (v, note) = bound(json!(42));
        assert_eq!(v, json!({"result": 42}));
        assert!(note.is_none());
    }
}
