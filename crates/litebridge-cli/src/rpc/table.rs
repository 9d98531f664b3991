//! The method table: every method's name, scope, description, example,
//! annotations and parameters (a typed struct, see `params`), written once.
//! The scope check, the parameters' reading, the `/metrics` method labels,
//! the MCP tools and their schemas, and `rpc.discover` (an OpenRPC
//! document) are all read from here, so they cannot drift apart.

use litebridge::auth::Scope;
use serde_json::{Map, Value as Json, json};

use crate::rpc::params::{Typed, handler};

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
    /// Its parameters' struct: how they are read, their schema, and what
    /// the method does with them.
    pub(crate) handler: Typed,
    /// It changes nothing.
    pub(crate) read_only: bool,
    /// The MCP tool that runs it, if it is one.
    pub(crate) tool: Option<Tool>,
}

impl Method {
    /// The parameter names in order (positional parameters map to them).
    pub(crate) fn param_names(&self) -> &'static [&'static str] {
        (self.handler.names)()
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
        (self.handler.schema)()
    }

    /// Its parameters in positional order, as the schema describes them.
    pub(crate) fn params(&self) -> Vec<Param> {
        let schema = self.params_schema();
        let required = |name: &str| {
            schema["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|n| n == name))
        };
        self.param_names()
            .iter()
            .map(|&name| Param {
                name,
                required: required(name),
                schema: schema["properties"][name].clone(),
            })
            .collect()
    }
}

/// One parameter of a method, as its schema describes it.
pub(crate) struct Param {
    pub(crate) name: &'static str,
    pub(crate) required: bool,
    /// Its JSON schema, with a description where it has one.
    pub(crate) schema: Json,
}

/// The method named `name`.
pub(crate) fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// "Method not found" for `name`, naming what it was probably meant to be:
/// the closest method when one is close (`sql.querry`), else the methods
/// of its namespace (`state.get`: the `state.` ones). Every name is public
/// (`rpc.discover` lists the table), so the guess tells no caller more.
pub(crate) fn not_found(name: &str) -> super::RpcError {
    let hint = match crate::suggest::closest(name, METHODS.iter().map(|m| m.name)) {
        Some(m) => crate::suggest::did_you_mean(&[m.to_owned()]),
        None => {
            let namespace = name.split_once('.').map_or("", |(n, _)| n);
            let siblings: Vec<&str> = METHODS
                .iter()
                .map(|m| m.name)
                .filter(|m| {
                    !namespace.is_empty()
                        && m.strip_prefix(namespace)
                            .is_some_and(|r| r.starts_with('.'))
                })
                .collect();
            if siblings.is_empty() {
                String::new()
            } else {
                format!("; the methods of `{namespace}` are {}", siblings.join(", "))
            }
        }
    };
    // Cut: the message is logged and answered (a name of megabytes was
    // written whole to the log for each request: review 158).
    super::RpcError::MethodNotFound(format!("{}{hint}", super::params::shortened(name, 64)))
}

const fn tool(name: &'static str) -> Option<Tool> {
    Some(Tool {
        name,
        needs_workers: false,
    })
}

/// Every method, in the order the README lists them.
pub(crate) const METHODS: &[Method] = &[
    Method {
        name: "sql.query",
        scope: Scope::Read,
        description: "Run one read-only SQL statement (SELECT, WITH ... SELECT, PRAGMA reads) and get its rows. Use `schema` first to see the tables. Returns {columns, rows, truncated}; at most `max_rows` rows. Writes are refused: use `execute`.",
        example: r#"{"sql":"SELECT name, type FROM sqlite_schema WHERE type = ?1 LIMIT 5","params":["table"]}"#,
        handler: handler::<super::sql::SqlQuery>(),
        read_only: true,
        tool: tool("query"),
    },
    Method {
        name: "sql.execute",
        scope: Scope::Write,
        description: "Run one SQL statement that changes the database (INSERT, UPDATE, DELETE, CREATE TABLE, ...). It commits before this returns. Returns {changes, last_insert_rowid}, with {columns, rows} when it returns rows (a RETURNING clause: `INSERT ... RETURNING id` gives the new id on either database). Transactions, ATTACH and engine settings are not allowed. In schema statements double quotes name a column, never a string (write 'x' for a string).",
        example: r#"{"sql":"CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)"}"#,
        handler: handler::<super::sql::SqlExecute>(),
        read_only: false,
        tool: tool("execute"),
    },
    Method {
        name: "sql.batch",
        scope: Scope::Write,
        description: "Run several statements in one transaction: all commit or none does. Returns {results}, one {changes, last_insert_rowid} per statement (with {columns, rows} for one that returns rows).",
        example: r#"{"statements":[{"sql":"INSERT INTO notes(body) VALUES (?1)","params":["first"]},{"sql":"UPDATE notes SET body = upper(body) WHERE body = :b","params":{":b":"first"}}]}"#,
        handler: handler::<super::sql::SqlBatch>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "sql.execute_many",
        scope: Scope::Write,
        description: "Run one statement once per parameter row, in one transaction. Returns {changes} (rows a RETURNING clause returns are not kept: use batch for those).",
        example: r#"{"sql":"INSERT INTO notes(body) VALUES (?1)","rows":[["second"],["third"]]}"#,
        handler: handler::<super::sql::SqlExecuteMany>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "sql.schema",
        scope: Scope::Read,
        description: "List the tables and views you can read: columns (name, declared type, NOT NULL, primary key, default, generated), indexes and an estimated row count. Call this before writing SQL.",
        example: r#"{}"#,
        handler: handler::<super::sql::SqlSchema>(),
        read_only: true,
        tool: tool("schema"),
    },
    Method {
        name: "bridge.call",
        scope: Scope::Bridge,
        description: "Call a method of the worker processes by name (the worker_* tools do the same, one per method). Returns the method's result.",
        example: r#"{"method":"echo","params":{"value":"hello"},"timeout_ms":10000}"#,
        handler: handler::<super::bridge::BridgeCall>(),
        read_only: false,
        tool: Some(Tool {
            name: "bridge_call",
            needs_workers: true,
        }),
    },
    Method {
        name: "bridge.stats",
        scope: Scope::Metrics,
        description: "The worker pool's statistics: pool-wide calls, success rate (percent), average and p50/p95/p99 latency (ms), process count and idle processes; per worker, per method and per breaker figures; restarts, crashes, the cache.",
        example: r#"{}"#,
        handler: handler::<super::stats::BridgeStats>(),
        read_only: true,
        tool: Some(Tool {
            name: "bridge_stats",
            needs_workers: true,
        }),
    },
    Method {
        name: "bridge.health",
        scope: Scope::Metrics,
        description: "The worker pool's health: the same figures as bridge.stats, with `healthy`.",
        example: r#"{}"#,
        handler: handler::<super::stats::BridgeHealth>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "bridge.breaker.reset",
        scope: Scope::Bridge,
        description: "Close a worker method's circuit breaker now. Returns {reset}: whether there was one.",
        example: r#"{"method":"echo"}"#,
        handler: handler::<super::bridge::BreakerReset>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "events.subscribe",
        scope: Scope::Metrics,
        description: "Over stdio: from now on, the worker pool's events come as notifications {\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{seq, event, ts, ...}} (event: started, process-started, process-error, process-restarted, process-recycling, host-joined, host-lost, host-retired (worker hosts over NATS), retry, circuit-breaker-state-change, shutdown; missed with a count when this session fell behind). Over HTTP: unsupported, read GET /events. Returns {subscribed: true}.",
        example: r#"{}"#,
        handler: handler::<super::events::Subscribe>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "events.unsubscribe",
        scope: Scope::Metrics,
        description: "Over stdio: stops the event notifications of events.subscribe. Returns {subscribed: false}.",
        example: r#"{}"#,
        handler: handler::<super::events::Unsubscribe>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "state.save",
        scope: Scope::Write,
        description: "Save the state of a workflow run (creates it, or replaces its state; the other fields left out or null keep their saved values, so send an empty string to blank error_message; created_at is kept). Returns the saved record.",
        example: r#"{"run_id":"run-1","state":{"step":2,"items":["a","b"]},"status":"running","total_steps":5}"#,
        handler: handler::<super::stores::StateSave>(),
        read_only: false,
        tool: tool("state_save"),
    },
    Method {
        name: "state.load",
        scope: Scope::Read,
        description: "Load a workflow run's saved state; null when there is none.",
        example: r#"{"run_id":"run-1"}"#,
        handler: handler::<super::stores::StateLoad>(),
        read_only: true,
        tool: tool("state_load"),
    },
    Method {
        name: "state.list",
        scope: Scope::Read,
        description: "List saved runs in order of run_id, optionally with one status. Returns {runs, next}; pass `next` as `after` for the next page (null at the end: a page of large values may hold fewer than `limit`).",
        example: r#"{"status":"running","limit":10}"#,
        handler: handler::<super::stores::StateList>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "state.delete",
        scope: Scope::Write,
        description: "Delete a run's saved state. Returns {deleted}.",
        example: r#"{"run_id":"run-1"}"#,
        handler: handler::<super::stores::StateDelete>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "memory.store",
        scope: Scope::Write,
        description: "Remember a value under namespace + key, optionally for ttl_s seconds (then it is gone). Overwrites.",
        example: r#"{"namespace":"agent-7","key":"preference","value":{"tone":"brief"},"ttl_s":3600}"#,
        handler: handler::<super::stores::MemoryStore>(),
        read_only: false,
        tool: tool("memory_store"),
    },
    Method {
        name: "memory.get",
        scope: Scope::Read,
        description: "Recall the value stored under namespace + key. Returns {found, value}.",
        example: r#"{"namespace":"agent-7","key":"preference"}"#,
        handler: handler::<super::stores::MemoryGet>(),
        read_only: true,
        tool: tool("memory_get"),
    },
    Method {
        name: "memory.list",
        scope: Scope::Read,
        description: "List what is remembered in a namespace in key order, optionally only keys starting with a prefix. Returns {entries, next}; pass `next` as `after` for the next page (null at the end: a page of large values may hold fewer than `limit`).",
        example: r#"{"namespace":"agent-7","prefix":"pref","limit":10}"#,
        handler: handler::<super::stores::MemoryList>(),
        read_only: true,
        tool: tool("memory_list"),
    },
    Method {
        name: "memory.delete",
        scope: Scope::Write,
        description: "Forget the value under namespace + key. Returns {deleted}.",
        example: r#"{"namespace":"agent-7","key":"preference"}"#,
        handler: handler::<super::stores::MemoryDelete>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "cache.get",
        scope: Scope::Read,
        description: "Read a cached value by key. Returns {found, value}.",
        example: r#"{"key":"weather:paris"}"#,
        handler: handler::<super::stores::CacheGet>(),
        read_only: true,
        tool: tool("cache_get"),
    },
    Method {
        name: "cache.set",
        scope: Scope::Write,
        description: "Cache a value under a key, optionally for ttl_s seconds.",
        example: r#"{"key":"weather:paris","value":{"celsius":18},"ttl_s":600}"#,
        handler: handler::<super::stores::CacheSet>(),
        read_only: false,
        tool: tool("cache_set"),
    },
    Method {
        name: "cache.delete",
        scope: Scope::Write,
        description: "Remove a cached value. Returns {deleted}.",
        example: r#"{"key":"weather:paris"}"#,
        handler: handler::<super::stores::CacheDelete>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "cache.stats",
        scope: Scope::Metrics,
        description: "The two-level cache's figures: hits (L1, L2), misses, hit rate, evictions, entries in memory (l1_size) and what they weigh against `cache.max_memory_mb` (l1_bytes, estimated), and in the table (l2_size, expired rows not yet swept included), L2 failures and whether L2 is in use.",
        example: r#"{}"#,
        handler: handler::<super::stats::CacheStats>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "pool.health",
        scope: Scope::Metrics,
        description: "Is the database healthy? Connections, free readers, free heavy-lane connections (available_heavy; available_workers is the same figure under the seed system's name, not the worker processes: see bridge.health), queue lengths and the last health check.",
        example: r#"{}"#,
        handler: handler::<super::stats::PoolHealth>(),
        read_only: true,
        tool: tool("pool_health"),
    },
    Method {
        name: "pool.stats",
        scope: Scope::Metrics,
        description: "Database statistics: reads, writes, latency percentiles in ms, group-commit batches, WAL size, errors.",
        example: r#"{}"#,
        handler: handler::<super::stats::PoolStats>(),
        read_only: true,
        tool: tool("pool_stats"),
    },
    Method {
        name: "persistence.stats",
        scope: Scope::Metrics,
        description: "Totals of the persistence layer: operations, errors, error and success rates, connection pool summary.",
        example: r#"{}"#,
        handler: handler::<super::stats::PersistenceStats>(),
        read_only: true,
        tool: tool("persistence_stats"),
    },
    Method {
        name: "admin.backup",
        scope: Scope::Admin,
        description: "Take an online backup of the database, verified before it counts. Returns its path and size, and verified: false with partly_verified saying why when the check could not read the whole copy (what it read was sound; one more older backup is then kept).",
        example: r#"{}"#,
        handler: handler::<super::admin::AdminBackup>(),
        read_only: false,
        tool: tool("backup"),
    },
    Method {
        name: "admin.check",
        scope: Scope::Admin,
        description: "Check the database's integrity (quick by default). Returns {ok, problems, virtual_table_problems, data_problems, foreign_key_violations, unfinished, elapsed_ms}: unfinished says why the check stopped before the end (computing a generated column failed), which is not damage. ok is false for damage to the file, and when the check could not run at all (unfinished then starts with \"the check could not run\"); data_problems and foreign_key_violations are the data's.",
        example: r#"{"full":false}"#,
        handler: handler::<super::admin::AdminCheck>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "admin.checkpoint",
        scope: Scope::Admin,
        description: "Checkpoint the WAL now. Returns {busy, log_pages, checkpointed_pages, wal_bytes}.",
        example: r#"{"mode":"passive"}"#,
        handler: handler::<super::admin::AdminCheckpoint>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "admin.keys.create",
        scope: Scope::Admin,
        description: "Create an API key. Returns {name, scopes, tier, secret}; the secret is shown only this once.",
        example: r#"{"scope":"read,bridge","tier":"free","name":"dashboard"}"#,
        handler: handler::<super::admin::KeysCreate>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "admin.keys.list",
        scope: Scope::Admin,
        description: "List the API keys (never their secrets): name, scopes, tier, created, revoked, last used.",
        example: r#"{}"#,
        handler: handler::<super::admin::KeysList>(),
        read_only: true,
        tool: None,
    },
    Method {
        name: "admin.keys.revoke",
        scope: Scope::Admin,
        description: "Revoke an API key by name, at once. Returns {revoked}.",
        example: r#"{"name":"dashboard"}"#,
        handler: handler::<super::admin::KeysRevoke>(),
        read_only: false,
        tool: None,
    },
    Method {
        name: "rpc.discover",
        scope: Scope::Metrics,
        description: "This table as an OpenRPC 1.3 document: every method, its scope, parameters and their JSON schemas.",
        example: r#"{}"#,
        handler: handler::<super::admin::Discover>(),
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
                .params()
                .into_iter()
                .map(|p| {
                    let schema = p.schema;
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
            let mut method = json!({
                "name": m.name,
                "summary": summary.trim_end_matches('.'),
                "description": m.description,
                "paramStructure": "either",
                "params": params,
                "result": {"name": "result", "schema": {}},
                "examples": [{"name": format!("{} example", m.name), "params": example}],
                "x-scope": m.scope.as_str(),
                "x-read-only": m.read_only,
            });
            if let Some(t) = &m.tool {
                method["x-mcp-tool"] = json!(t.name);
            }
            method
        })
        .collect();
    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "litebridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "SQLite service and process bridge: the JSON-RPC 2.0 method table served over HTTP (POST /rpc), stdio and as MCP tools. Each method needs the scope named in x-scope; x-mcp-tool names the MCP tool that runs it, if one does.",
        },
        "methods": methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A misspelt method is answered with the one it was meant to be, or
    /// with its namespace's methods; a long or unrelated name with neither.
    #[test]
    fn a_method_not_found_names_what_was_meant() {
        let said = |name: &str| not_found(name).message();
        assert_eq!(
            said("sql.querry"),
            "Method not found: sql.querry; did you mean sql.query?"
        );
        assert_eq!(
            said("state.get"),
            "Method not found: state.get; the methods of `state` are state.save, state.load, state.list, state.delete"
        );
        assert_eq!(said("nope"), "Method not found: nope");
        assert_eq!(said("nope.x"), "Method not found: nope.x");
        // Not a guess at a prefix of a longer namespace.
        assert_eq!(said("sq.x"), "Method not found: sq.x");
        // A long name is cut (review 158: logged and echoed whole).
        let long = format!("sql.{}", "q".repeat(100_000));
        assert_eq!(
            said(&long),
            format!(
                "Method not found: {}... (100004 bytes); the methods of `sql` are sql.query, sql.execute, sql.batch, sql.execute_many, sql.schema",
                &long[..64]
            )
        );
    }

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
            for p in m.params() {
                assert!(params.insert(p.name), "{}: `{}` twice", m.name, p.name);
                assert!(
                    p.schema.is_object(),
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
            for p in m.params().iter().filter(|p| p.required) {
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
        let params = m.params();
        if !params.is_empty() {
            out.push_str("\n| parameter | required | schema |\n|---|---|---|\n");
            for p in params {
                let mut schema = p.schema;
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
