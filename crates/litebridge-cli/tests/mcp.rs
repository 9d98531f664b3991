//! `litebridge mcp` with rmcp's own client against the real binary, and
//! `/mcp` on `serve` over streamable HTTP with the keys of `/rpc`.

use std::collections::BTreeSet;

use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde_json::{Value, json};

mod common;

type Client = RunningService<RoleClient, ()>;

async fn connect(db: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Client {
    connect_as((), db, extra, env).await
}

/// `litebridge mcp` on `dir`'s database with one `changing_worker.py`,
/// whose methods are the names in the file `methods`.
async fn with_changing_worker<H: rmcp::ClientHandler>(
    handler: H,
    dir: &std::path::Path,
    methods: &str,
) -> RunningService<RoleClient, H> {
    connect_as(
        handler,
        &dir.join("m.db"),
        &[
            "--workers",
            "python3 crates/litebridge-cli/tests/workers/changing_worker.py",
            "--processes",
            "1",
        ],
        &[("LB_TEST_METHODS", methods)],
    )
    .await
}

/// `litebridge mcp` with `handler` as the client (one that takes
/// notifications).
async fn connect_as<H: rmcp::ClientHandler>(
    handler: H,
    db: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> RunningService<RoleClient, H> {
    let (transport, _) = TokioChildProcess::builder(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_litebridge")).configure(|cmd| {
            cmd.arg("mcp")
                .arg("--db")
                .arg(db)
                .args(extra)
                .envs(env.iter().copied())
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        }),
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    handler.serve(transport).await.expect("initialize")
}

async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// The structured result of a call that must succeed.
async fn ok(client: &Client, tool: &str, args: Value) -> Value {
    let r = call(client, tool, args).await;
    assert_ne!(r.is_error, Some(true), "{tool}: {r:?}");
    assert!(!r.content.is_empty(), "{tool}: no readable text");
    r.structured_content
        .unwrap_or_else(|| panic!("{tool}: no structured content"))
}

/// The structured error of a call that must fail.
async fn fails(client: &Client, tool: &str, args: Value) -> Value {
    let r = call(client, tool, args).await;
    assert_eq!(r.is_error, Some(true), "{tool}: {r:?}");
    let text = r.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .unwrap_or_default();
    assert!(text.starts_with("error ("), "{text}");
    r.structured_content.unwrap()["error"].clone()
}

async fn tool_names(client: &Client) -> BTreeSet<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_over_stdio_with_rmcps_client() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let client = connect(
        &db,
        &[
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
        &[],
    )
    .await;
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "litebridge");
    assert!(
        info.instructions
            .as_deref()
            .unwrap_or_default()
            .contains("schema")
    );

    let tools = client.list_all_tools().await.unwrap();
    let names: BTreeSet<String> = tools.iter().map(|t| t.name.to_string()).collect();
    for expected in [
        "query",
        "execute",
        "schema",
        "pool_health",
        "pool_stats",
        "persistence_stats",
        "state_save",
        "state_load",
        "memory_store",
        "memory_get",
        "memory_list",
        "cache_get",
        "cache_set",
        "bridge_call",
        "backup",
        "worker_echo",
        "worker_analyze",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    for t in &tools {
        assert!(
            t.description.as_deref().is_some_and(|d| d.len() > 10),
            "{}",
            t.name
        );
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            t.name
        );
    }
    let analyze = tools.iter().find(|t| t.name == "worker_analyze").unwrap();
    assert!(
        analyze
            .description
            .as_deref()
            .unwrap()
            .contains("counts words")
    );
    assert_eq!(analyze.input_schema["required"], json!(["description"]));
    // A worker's tool says whether a call may be repeated, and claims no
    // closed world (it may call anything).
    let hints = |name: &str| {
        let t = tools.iter().find(|t| t.name == name).unwrap();
        let a = t.annotations.clone().unwrap();
        (a.idempotent_hint, a.open_world_hint)
    };
    assert_eq!(hints("worker_analyze"), (Some(true), None));
    assert_eq!(hints("worker_charge"), (Some(false), None));

    ok(
        &client,
        "execute",
        json!({"sql": "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)"}),
    )
    .await;
    let r = ok(
        &client,
        "execute",
        json!({"sql": "INSERT INTO notes(body) VALUES (?1), (?2)", "params": ["a", "b"]}),
    )
    .await;
    assert_eq!(r["changes"], 2);
    let r = ok(
        &client,
        "query",
        json!({"sql": "SELECT id, body FROM notes ORDER BY id"}),
    )
    .await;
    assert_eq!(r["rows"], json!([[1, "a"], [2, "b"]]));
    let text = call(
        &client,
        "query",
        json!({"sql": "SELECT body FROM notes WHERE id = 1"}),
    )
    .await;
    let text = text.content[0].as_text().unwrap().text.clone();
    assert!(text.contains("body") && text.contains("(1 row)"), "{text}");
    let r = ok(&client, "schema", json!({})).await;
    let notes = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "notes")
        .unwrap()
        .clone();
    assert_eq!(notes["columns"][1]["name"], "body");
    assert_eq!(notes["columns"][1]["not_null"], true);
    assert_eq!(notes["row_estimate"], 2);
    assert!(
        r["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| !t["name"].as_str().unwrap().starts_with("litebridge_")),
        "litebridge's own tables are not shown: {r}"
    );
    assert_eq!(ok(&client, "pool_health", json!({})).await["healthy"], true);
    assert!(
        ok(&client, "pool_stats", json!({})).await["pool_metrics"]["total_writes"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(
        ok(&client, "persistence_stats", json!({})).await["persistence_layer"],
        "litebridge"
    );
    ok(
        &client,
        "state_save",
        json!({"run_id": "run-1", "state": {"step": 3}, "status": "running"}),
    )
    .await;
    let r = ok(&client, "state_load", json!({"run_id": "run-1"})).await;
    assert_eq!(r["state"], json!({"step": 3}));
    ok(
        &client,
        "memory_store",
        json!({"namespace": "agent", "key": "goal", "value": "ship it", "ttl_s": 60}),
    )
    .await;
    assert_eq!(
        ok(
            &client,
            "memory_get",
            json!({"namespace": "agent", "key": "goal"})
        )
        .await["value"],
        "ship it"
    );
    assert_eq!(
        ok(&client, "memory_list", json!({"namespace": "agent"})).await["entries"][0]["key"],
        "goal"
    );
    ok(&client, "cache_set", json!({"key": "k", "value": [1, 2]})).await;
    assert_eq!(
        ok(&client, "cache_get", json!({"key": "k"})).await["value"],
        json!([1, 2])
    );
    assert_eq!(
        ok(
            &client,
            "bridge_call",
            json!({"method": "echo", "params": ["hi"]})
        )
        .await["result"],
        "hi"
    );
    assert_eq!(
        ok(
            &client,
            "worker_analyze",
            json!({"description": "one two three"})
        )
        .await["words"],
        3
    );
    // A backup goes to the backup directory, under the name given.
    let r = ok(&client, "backup", json!({"to": "copy.db"})).await;
    assert_eq!(r["verified"], true);
    assert!(dir.path().join("agent.db.backups/copy.db").exists());
    // A name taken is the caller's to change: a bad argument, not the
    // service unavailable.
    let e = fails(&client, "backup", json!({"to": "copy.db"})).await;
    assert_eq!(e["kind"], "invalid_params", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("exists already"),
        "{e}"
    );
    // Never a path chosen by the caller.
    let to = dir.path().join("elsewhere.db");
    let e = fails(&client, "backup", json!({"to": to.to_str().unwrap()})).await;
    assert_eq!(e["kind"], "invalid_params", "{e}");
    assert!(!to.exists());

    // Failures are tool errors an agent can act on.
    let e = fails(&client, "query", json!({"sql": "SELECT * FROM missing"})).await;
    assert_eq!(e["kind"], "sql");
    assert_eq!(e["recoverable"], false);
    assert!(e["message"].as_str().unwrap().contains("missing"));
    let e = fails(
        &client,
        "query",
        json!({"sql": "INSERT INTO notes(body) VALUES ('x')"}),
    )
    .await;
    assert_eq!(e["kind"], "read_only");
    let e = fails(&client, "query", json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "timeout_ms": 100})).await;
    assert_eq!(e["kind"], "timeout");
    assert_eq!(e["recoverable"], true);
    let e = fails(&client, "execute", json!({"sql": "ATTACH 'x.db' AS x"})).await;
    assert_eq!(e["kind"], "forbidden");
    let e = fails(&client, "query", json!({"sqll": "SELECT 1"})).await;
    assert_eq!(e["kind"], "invalid_params");
    let e = fails(&client, "worker_fail", json!({"message": "boom"})).await;
    assert_eq!(e["kind"], "worker_error");
    let e = fails(&client, "no_such_tool", json!({})).await;
    assert_eq!(e["kind"], "method_not_found");

    // Results are bounded, with a marker saying so.
    let r = call(&client, "query", json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50000) SELECT x, printf('%040d', x) FROM c", "max_rows": 50000})).await;
    let s = r.structured_content.unwrap();
    assert_eq!(s["truncated"], true);
    let shown = s["rows"].as_array().unwrap().len();
    assert!(shown > 100 && shown < 50_000, "{shown}");
    let text = r.content[0].as_text().unwrap().text.clone();
    assert!(
        text.contains(&format!("truncated: {shown} of 50000 rows")),
        "{}",
        &text[text.len() - 300..]
    );
    assert!(text.len() < 200_000);
    let r = call(&client, "query", json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 500) SELECT x FROM c"})).await;
    assert_eq!(
        r.structured_content.unwrap()["rows"]
            .as_array()
            .unwrap()
            .len(),
        100,
        "100 rows unless asked"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_session_has_no_write_tools() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.db");
    let client = connect(
        &db,
        &[
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
        &[("LITEBRIDGE_SECURITY_LOCAL_SCOPES", "read")],
    )
    .await;
    let names = tool_names(&client).await;
    let expected: BTreeSet<String> = [
        "query",
        "schema",
        "bridge_stats",
        "pool_health",
        "pool_stats",
        "persistence_stats",
        "state_load",
        "memory_get",
        "memory_list",
        "cache_get",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
    // Called anyway: refused by scope.
    let e = fails(&client, "execute", json!({"sql": "CREATE TABLE t(x)"})).await;
    assert_eq!(e["kind"], "forbidden");
    let e = fails(&client, "worker_echo", json!({"value": 1})).await;
    assert_eq!(e["kind"], "forbidden");
    ok(&client, "query", json!({"sql": "SELECT 1"})).await;
    client.cancel().await.unwrap();
}

/// The MCP tools of a session with each set of local scopes are exactly the
/// table's methods that set allows (as `rpc.discover` lists them, with their
/// `x-scope` and `x-mcp-tool`), plus one tool per worker method when the
/// scopes allow `bridge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_of_each_scope_are_the_table_s_methods_for_that_scope() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db"])
        .arg(dir.path().join("d.db"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(
                stdin,
                r#"{{"jsonrpc":"2.0","method":"rpc.discover","id":1}}"#
            )?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let methods = doc["result"]["methods"].as_array().unwrap().clone();
    // What each scope allows: write includes read, read includes metrics;
    // admin includes all.
    let allows = |given: &str, needed: &str| {
        given.split(',').any(|g| {
            g == needed
                || g == "admin"
                || (g == "write" && matches!(needed, "read" | "metrics"))
                || (g == "read" && needed == "metrics")
        })
    };
    for scopes in ["read", "write", "bridge", "admin", "read,bridge", "metrics"] {
        let client = connect(
            &dir.path().join(format!("{}.db", scopes.replace(',', "-"))),
            &[
                "--workers",
                "python3 examples/worker.py",
                "--processes",
                "1",
            ],
            &[("LITEBRIDGE_SECURITY_LOCAL_SCOPES", scopes)],
        )
        .await;
        let names = tool_names(&client).await;
        let expected: BTreeSet<String> = methods
            .iter()
            .filter(|m| allows(scopes, m["x-scope"].as_str().unwrap()))
            .filter_map(|m| m["x-mcp-tool"].as_str().map(str::to_owned))
            .collect();
        let (workers, table): (BTreeSet<String>, BTreeSet<String>) =
            names.into_iter().partition(|n| n.starts_with("worker_"));
        assert_eq!(table, expected, "{scopes}");
        assert_eq!(
            !workers.is_empty(),
            allows(scopes, "bridge"),
            "{scopes}: {workers:?}"
        );
        client.cancel().await.unwrap();
    }
}

/// Reads a streamable-HTTP reply: JSON, or the `data:` lines of an event stream.
fn mcp_reply(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("no reply in {text}"))
}

fn mcp_post(
    server: &common::Server,
    key: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, String, Value) {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![
        ("Authorization", bearer.as_str()),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
    }
    let (status, head, bytes) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &headers,
        body.to_string().as_bytes(),
    );
    let value = if bytes.is_empty() || status >= 300 && status != 400 && status != 401 {
        Value::Null
    } else {
        mcp_reply(&bytes)
    };
    (status, head, value)
}

#[test]
fn mcp_over_http_uses_the_keys_of_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let key = |scope: &str| common::create_key(&db, scope, scope, "free");
    let (read, write) = (key("read"), key("write"));
    let server = common::Server::start(&db, &[]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    // No key, or a wrong one: 401 before MCP sees anything.
    for k in ["", "lb_wrong"] {
        let (status, head, _) = mcp_post(&server, k, None, init.clone());
        assert_eq!(status, 401, "{head}");
    }
    let tools_of = |secret: &str| {
        let (status, head, reply) = mcp_post(&server, secret, None, init.clone());
        assert_eq!(status, 200, "{head} {reply}");
        assert_eq!(reply["result"]["serverInfo"]["name"], "litebridge");
        let session = head
            .lines()
            .find_map(|l| l.strip_prefix("mcp-session-id:"))
            .map(|s| s.trim().to_owned());
        let s = session.as_deref();
        let (status, _, _) = mcp_post(
            &server,
            secret,
            s,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        );
        assert!(status == 202 || status == 200, "{status}");
        let (_, _, reply) = mcp_post(
            &server,
            secret,
            s,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        );
        let names: BTreeSet<String> = reply["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        let (_, _, created) = mcp_post(
            &server,
            secret,
            s,
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "execute", "arguments": {"sql": "CREATE TABLE IF NOT EXISTS t(x)"}}}),
        );
        (names, created["result"].clone())
    };
    let (names, created) = tools_of(&read);
    assert!(
        names.contains("query") && !names.contains("execute"),
        "{names:?}"
    );
    assert_eq!(created["isError"], true, "{created}");
    assert_eq!(created["structuredContent"]["error"]["kind"], "forbidden");
    let (names, created) = tools_of(&write);
    assert!(
        names.contains("execute") && !names.contains("backup"),
        "{names:?}"
    );
    assert_eq!(created["isError"], false, "{created}");
    assert!(server.stop().success());
}

#[test]
fn mcp_tool_calls_count_against_the_keys_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let config = dir.path().join("q.toml");
    // initialize, ping and resources/list, then two tool calls; the third is
    // refused, and so is the protocol's own next request.
    std::fs::write(&config, "[quota]\nfree_daily = 5\n").unwrap();
    let secret = common::create_key(&db, "agent", "read", "free");
    let server = common::Server::start(&db, &["--config", config.to_str().unwrap()]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (status, head, _) = mcp_post(&server, &secret, None, init);
    assert_eq!(status, 200);
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id:"))
        .map(|s| s.trim().to_owned());
    let s = session.as_deref();
    mcp_post(
        &server,
        &secret,
        s,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    for (id, method) in [(10, "ping"), (11, "resources/list")] {
        let (status, _, body) = mcp_post(
            &server,
            &secret,
            s,
            json!({"jsonrpc": "2.0", "id": id, "method": method}),
        );
        assert_eq!(status, 200, "{method}: {body}");
    }
    let query = |id: u64| {
        mcp_post(
            &server,
            &secret,
            s,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}),
        )
        .2["result"]
            .clone()
    };
    assert_eq!(query(2)["isError"], false);
    assert_eq!(query(3)["isError"], false);
    let refused = query(4);
    assert_eq!(refused["isError"], true, "{refused}");
    let e = &refused["structuredContent"]["error"];
    assert_eq!(e["kind"], "quota_exceeded");
    assert_eq!(e["recoverable"], true);
    assert_eq!(e["data"]["quota"], "daily");
    assert!(e["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    let text = refused["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("retrying after"), "{text}");
    // The protocol's own requests are refused too, before rmcp answers them.
    let (status, head, _) = mcp_post(
        &server,
        &secret,
        s,
        json!({"jsonrpc": "2.0", "id": 12, "method": "ping"}),
    );
    assert_eq!(status, 429, "{head}");
    assert!(server.stop().success());
}

/// Every call counts against the key's quota, a refused one too: a tool
/// that does not exist, a `tools/call` rmcp refuses for its shape, a tool
/// outside the key's scopes, and on `/rpc` a method that does not exist, one
/// outside the scopes and a request of no valid shape. (A user audit sent
/// sixty such calls on a key allowed eight a day: none was counted.)
#[test]
fn calls_refused_for_their_name_shape_or_scope_count_against_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let config = dir.path().join("q.toml");
    std::fs::write(&config, "[quota]\nfree_daily = 14\n").unwrap();
    let secret = common::create_key(&db, "agent", "read", "free");
    let server = common::Server::start(&db, &["--config", config.to_str().unwrap()]);
    let tool = |id: u64, params: Value| {
        mcp_post(
            &server,
            &secret,
            None,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}),
        )
    };
    let (_, _, unknown) = tool(1, json!({"name": "nosuch_tool", "arguments": {}}));
    assert_eq!(unknown["result"]["isError"], true, "{unknown}");
    let (status, _, named) = tool(2, json!({"name": 5}));
    assert_eq!(status, 400, "{named}");
    assert_eq!(named["error"]["code"], -32602, "{named}");
    let (_, _, scoped) = tool(
        3,
        json!({"name": "execute", "arguments": {"sql": "SELECT 1"}}),
    );
    assert_eq!(scoped["result"]["isError"], true, "{scoped}");
    for body in [
        json!({"jsonrpc": "2.0", "id": 4, "method": "no.such.method"}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "sql.execute", "params": ["SELECT 1"]}),
        json!({"jsonrpc": "2.0", "id": 6}),
    ] {
        let (_, reply) = server.rpc_as(Some(&secret), &body);
        assert!(reply["error"].is_object(), "{reply}");
        assert_ne!(reply["error"]["code"], -32008, "{reply}");
    }
    // Shapes refused before any tool or method runs (review 142): a body
    // that is not JSON's content type, a method other than POST, a response
    // where a request should be, a client that is not MCP's, an id the SDK
    // refuses. A notification costs nothing.
    let bearer = format!("Bearer {secret}");
    let auth = ("Authorization", bearer.as_str());
    let accept = ("Accept", "application/json, text/event-stream");
    let (s415, _, _) = server.request_with("POST", "/rpc", Some("text/plain"), &[auth], b"{}");
    assert_eq!(s415, 415);
    let (s405, _, _) = server.request_with("GET", "/mcp", None, &[auth, accept], b"");
    assert!(s405 >= 400, "{s405}");
    for body in [
        json!({"jsonrpc": "2.0", "id": 7, "result": {}}).to_string(),
        json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/call", "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}).to_string(),
    ] {
        let (status, _, _) =
            server.request_with("POST", "/mcp", Some("application/json"), &[auth, accept], body.as_bytes());
        assert!(status >= 400, "{status}: {body}");
    }
    let (advice, _, _) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[auth],
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(advice, 400);
    // Refused as its body is read (a member named twice: review 143).
    let (twice, _, _) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[auth, accept],
        br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
    );
    assert_eq!(twice, 400);
    // Answered with the request's id where it is named once (review 246).
    let (twice, _, body) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[auth, accept],
        br#"{"jsonrpc":"2.0","id":9,"method":"ping","params":{"a":1,"a":2}}"#,
    );
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((twice, &r["id"]), (400, &serde_json::json!(9)), "{r}");
    let (free, _, _) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[auth, accept],
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert!(free < 300, "{free}");
    // The fourteenth call is the last the day allows; the next is refused.
    let (_, ok) = server.rpc_as(
        Some(&secret),
        &json!({"jsonrpc": "2.0", "id": 7, "method": "sql.query", "params": ["SELECT 1"]}),
    );
    assert!(ok["result"].is_object(), "{ok}");
    let (_, spent) = server.rpc_as(
        Some(&secret),
        &json!({"jsonrpc": "2.0", "id": 8, "method": "sql.query", "params": ["SELECT 1"]}),
    );
    assert_eq!(spent["error"]["code"], -32008, "{spent}");
    assert_eq!(spent["error"]["data"]["quota"], "daily", "{spent}");
    assert!(server.stop().success());
}

/// A line that is not JSON, or a batch, is answered (-32700, -32600) on
/// stdio, where the SDK dropped it without a word and its client waited;
/// and on `/mcp` it is said so, not taken for another protocol's request.
#[test]
fn mcp_answers_what_is_not_json_and_refuses_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut mcp = McpStdio::start(&dir.path().join("nj.db"));
    let mut exchange = |line: &str| mcp.exchange(line);
    let init = exchange(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    for (line, code) in [
        ("hello", -32700),
        (r#"{"jsonrpc":"2.0","id":10,"method":"#, -32700),
        (&format!("{}1{}", "[".repeat(200), "]".repeat(200)), -32700),
        (r#"[{"jsonrpc":"2.0","id":14,"method":"ping"}]"#, -32600),
    ] {
        let answer = exchange(line);
        assert_eq!(answer["error"]["code"], code, "{line:.40}: {answer}");
        assert!(answer.get("id").is_some(), "{answer}");
    }
    // The session goes on.
    let pong = exchange(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    assert_eq!(pong["id"], 2, "{pong}");
    assert!(mcp.finish().success());

    let server = common::Server::start(&dir.path().join("nj-http.db"), &[]);
    for (body, code) in [
        (r#"{"jsonrpc":"2.0","id":10,"method":"#, -32700),
        (r#"[{"jsonrpc":"2.0","id":14,"method":"ping"}]"#, -32600),
        // rmcp answered a bare 415 (review 192).
        (
            r#"{"jsonrpc":"2.0","id":15,"method":"tools/call","params":[1]}"#,
            -32602,
        ),
    ] {
        let (status, _, reply) = server.request_with(
            "POST",
            "/mcp",
            Some("application/json"),
            &[("Accept", "application/json, text/event-stream")],
            body.as_bytes(),
        );
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        if code == -32602 {
            assert_eq!(reply["id"], 15, "{reply}");
        }
        assert!(
            !reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Model Context"),
            "{reply}"
        );
    }
    assert!(server.stop().success());
}

/// Review 192: what rmcp read wrong was answered wrong (a `tools/call`
/// whose `arguments` is an array: -32601 "tools/call"; an `id` of 1.5: an
/// error with no id), a line of 16 to 64 MiB was dropped by rmcp with no
/// answer at all, and rmcp logged every request and answer whole at
/// `debug`, and every notification at `info`.
#[test]
fn mcp_answers_every_shape_and_logs_nothing_of_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mcp.log");
    let mut mcp = McpStdio::start_with(
        &dir.path().join("shape.db"),
        &[("LITEBRIDGE_SERVER_LOG_LEVEL", "debug")],
        std::fs::File::create(&log).unwrap().into(),
    );
    let init = mcp.exchange(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    mcp.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    for (line, id, code, names) in [
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"query","arguments":["SELECT 1"]}}"#,
            json!(2),
            -32602,
            "`params.arguments`",
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":7}}"#,
            json!(3),
            -32602,
            "`params.name`",
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"ping","params":[1]}"#,
            json!(4),
            -32602,
            "`params`",
        ),
        (r#"{"id":5,"method":"ping"}"#, json!(5), -32600, "`jsonrpc`"),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            Value::Null,
            -32600,
            "`id`",
        ),
    ] {
        let answer = mcp.exchange(line);
        assert_eq!(answer["id"], id, "{line}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{line}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{line}: {answer}");
    }
    // A line of 17 MiB, over rmcp's own limit and under litebridge's.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"query","arguments":{{"sql":"SELECT 1","params":["{}"]}}}}}}"#,
        "x".repeat(17 << 20)
    );
    let answer = mcp.exchange(&big);
    assert_eq!(answer["id"], 6, "{:.300}", answer.to_string());
    // Nothing of a request, an answer or a notification is logged.
    let secret = "lb_LOGSECRET";
    mcp.send(&format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":99,"reason":"{secret}"}}}}"#
    ));
    let answer = mcp.exchange(&format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"query","arguments":{{"sql":"SELECT ?1","params":["{secret}"]}}}}}}"#
    ));
    assert!(answer.to_string().contains(secret), "{answer}");
    assert!(mcp.finish().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains(secret), "{log}");
    assert!(!log.contains("xxxxxxxx"), "the 17 MiB line was logged");
}

/// `litebridge mcp` on stdio refuses a message that names a member twice,
/// as `/rpc`, `/mcp` and stdio JSON-RPC do (the SDK alone kept the last):
/// answered -32600 with the request's id, and nothing runs.
#[test]
fn mcp_over_stdio_refuses_a_duplicated_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut mcp = McpStdio::start(&dir.path().join("dup.db"));
    mcp.send(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert!(mcp.recv()["result"]["serverInfo"].is_object());
    mcp.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    mcp.send(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"execute","arguments":{"sql":"CREATE TABLE first(x)","sql":"CREATE TABLE second(x)"}}}"#,
    );
    let refused = mcp.recv();
    assert_eq!(refused["id"], 2, "{refused}");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"sql\""),
        "{refused}"
    );
    // Found by review 125: the SDK strips a byte-order mark before it
    // reads a line, and such a line went by unchecked. And an integer past
    // 64 bits, which would be read rounded.
    for (id, line) in [
        (
            4,
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"execute","arguments":{"sql":"CREATE TABLE first(x)","sql":"CREATE TABLE second(x)"}}}"#,
        ),
        (
            5,
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"execute","arguments":{"sql":"CREATE TABLE first(x CHECK (x <> ?1))","params":[18446744073709551617]}}}"#,
        ),
    ] {
        for bom in ["", "\u{feff}"] {
            mcp.send(&format!("{bom}{line}"));
            let refused = mcp.recv();
            assert_eq!(refused["id"], id, "{refused}");
            assert_eq!(refused["error"]["code"], -32600, "{bom:?} {refused}");
        }
    }
    // The session goes on; nothing of the refused calls ran.
    mcp.send(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT count(*) AS n FROM sqlite_schema WHERE name IN ('first', 'second')"}}}"#,
    );
    let counted = mcp.recv();
    assert_eq!(counted["id"], 3, "{counted}");
    assert_eq!(
        counted["result"]["structuredContent"]["rows"][0][0], 0,
        "{counted}"
    );
    assert!(mcp.finish().success());
}

/// The seed system's habit, `curl -X POST .../mcp -d '{"method": "pool_health"}'`,
/// is not MCP: it is told so, and given the `/rpc` request that does it.
#[test]
fn a_plain_request_to_mcp_is_told_where_to_go() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let server = common::Server::start(&db, &[]);
    for (content_type, body) in [
        (
            "application/x-www-form-urlencoded",
            r#"{"method": "pool_health"}"#,
        ),
        ("application/json", r#"{"method": "pool_health"}"#),
        (
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"method":"pool.health"}"#,
        ),
    ] {
        let (status, head, bytes) =
            server.request_with("POST", "/mcp", Some(content_type), &[], body.as_bytes());
        assert_eq!(status, 400, "{content_type} {body}: {head}");
        let reply: Value = serde_json::from_slice(&bytes).unwrap();
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("use an MCP client")
                && message.contains("/rpc")
                && message.contains(r#""method":"pool.health""#),
            "{message}"
        );
    }
    // The SDK's own refusals, and JSON nested too deep, are said in
    // JSON-RPC as every refusal is (review 207: they were plain text, or
    // "not JSON" with no id).
    let accept = ("Accept", "application/json, text/event-stream");
    let ping = br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":8,"method":"ping","params":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for (headers, body, says, id) in [
        (
            vec![accept, ("MCP-Protocol-Version", "garbage")],
            &ping[..],
            "Unsupported MCP-Protocol-Version",
            Value::Null,
        ),
        (vec![accept], deep.as_bytes(), "recursion limit", json!(8)),
        (
            vec![accept],
            &br#"{"jsonrpc":"2.0","id":9,"method":"ping","params":[1e400]}"#[..],
            "number out of range",
            json!(9),
        ),
    ] {
        let (status, head, bytes) =
            server.request_with("POST", "/mcp", Some("application/json"), &headers, body);
        assert!((400..500).contains(&status), "{says}: {head}");
        let reply: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{says}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
    }
    // A 405 keeps its `Allow`.
    let (status, head, _) = server.request_with("GET", "/mcp", None, &[accept], b"");
    assert_eq!(status, 405, "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nallow: "), "{head}");
    // What it says to do works.
    let (status, _, bytes) = server.request_with(
        "POST",
        "/rpc",
        Some("application/json"),
        &[],
        br#"{"jsonrpc":"2.0","id":1,"method":"pool.health"}"#,
    );
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(reply["result"]["healthy"], true, "{reply}");
    assert!(server.stop().success());
}

/// An MCP tool call in flight at SIGTERM finishes within the grace period,
/// as a `/rpc` request does: the MCP service was cancelled at the signal,
/// which interrupted the write and answered a bare 500 (review 142).
#[test]
fn an_mcp_write_in_flight_at_sigterm_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
    let server = common::Server::start(&db, &[]);
    server.rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "sql.execute", "params": ["CREATE TABLE t(x)"]}));
    let addr = server.addr.clone();
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "execute",
        "arguments": {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<15000000) INSERT INTO t SELECT -count(*) FROM c", "timeout_ms": 60000}}});
    let call = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let text = body.to_string();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        raw
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(server.stop().success());
    let raw = call.join().unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"isError\":false"), "{raw}");
    let n: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t WHERE x < 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the write in flight was not committed");
}

/// A `litebridge mcp` session on stdio: one JSON line each way.
struct McpStdio {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl McpStdio {
    fn start(db: &std::path::Path) -> McpStdio {
        McpStdio::start_with(db, &[], std::process::Stdio::null())
    }

    fn start_with(
        db: &std::path::Path,
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> McpStdio {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .arg("mcp")
            .arg("--db")
            .arg(db)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        McpStdio {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Value {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn exchange(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    /// Closes stdin (the session ends) and waits for the exit.
    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }
}

/// A worker tool's arguments are checked against its handler's annotated
/// types before the call, and a `*args` handler takes `{"args": [...]}`
/// (an MCP agent's audit: `"5"` reached an `int`; `*args` could not be
/// called).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_tools_check_annotated_types_and_take_positional_args() {
    let dir = tempfile::tempdir().unwrap();
    let methods = dir.path().join("methods");
    std::fs::write(&methods, "alpha").unwrap();
    let methods = methods.display().to_string();
    let client = with_changing_worker((), dir.path(), &methods).await;
    let e = fails(&client, "worker_typed", json!({"n": "5"})).await;
    assert_eq!(e["kind"], "invalid_params", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`n` must be an integer"),
        "{e}"
    );
    let r = ok(&client, "worker_typed", json!({"n": 5, "label": "x"})).await;
    assert_eq!(r["result"], json!([5, "x"]), "{r}");
    let r = ok(&client, "worker_spread", json!({"args": [1, "two"]})).await;
    assert_eq!(r["result"], json!([1, "two"]), "{r}");
    // `bridge_call` with named params is checked alike (review 148).
    let e = fails(
        &client,
        "bridge_call",
        json!({"method": "typed", "params": {"n": "5"}}),
    )
    .await;
    assert_eq!(e["kind"], "invalid_params", "{e}");
    let r = ok(
        &client,
        "bridge_call",
        json!({"method": "typed", "params": {"n": 5.0}}),
    )
    .await;
    assert_eq!(r["result"], json!([5, ""]), "{r}");
    // `Optional[int]` takes null and an integer, a string annotation and
    // `Annotated[str, {...}]` are read as their types.
    let r = ok(&client, "worker_maybe", json!({"n": null})).await;
    assert_eq!(r["result"], json!([null, null, ""]), "{r}");
    // `tags: "list[str]" = None` takes the null it defaults to (and its
    // schema says so, below).
    let r = ok(&client, "worker_maybe", json!({"n": 1, "tags": null})).await;
    assert_eq!(r["result"], json!([1, null, ""]), "{r}");
    for (args, named) in [
        (json!({"n": "5"}), "`n` must be an integer"),
        (json!({"n": 1, "tags": "a"}), "`tags` must be an array"),
        (json!({"n": 1, "note": 5}), "`note` must be a string"),
    ] {
        let e = fails(&client, "worker_maybe", args).await;
        assert_eq!(e["kind"], "invalid_params", "{e}");
        assert!(e["message"].as_str().unwrap().contains(named), "{e}");
    }
    let r = ok(
        &client,
        "worker_maybe",
        json!({"n": 2, "tags": ["a"], "note": "b"}),
    )
    .await;
    assert_eq!(r["result"], json!([2, ["a"], "b"]), "{r}");
    let tools = client.list_all_tools().await.unwrap();
    let maybe = tools.iter().find(|t| t.name == "worker_maybe").unwrap();
    assert_eq!(
        maybe.input_schema["properties"]["n"]["type"],
        json!(["integer", "null"]),
        "{:?}",
        maybe.input_schema
    );
    assert_eq!(
        maybe.input_schema["properties"]["tags"]["type"],
        json!(["array", "null"]),
        "{:?}",
        maybe.input_schema
    );
    client.cancel().await.unwrap();
}

/// A client that is woken by `notifications/tools/list_changed`.
#[derive(Clone, Default)]
struct Watching(std::sync::Arc<tokio::sync::Notify>);

impl rmcp::ClientHandler for Watching {
    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        self.0.notify_one();
    }
}

/// A stdio session is told when its tools change: here a worker started
/// again with other methods (an MCP agent's audit: the agent kept calling
/// tools that were gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_session_is_told_when_its_tools_change() {
    let dir = tempfile::tempdir().unwrap();
    let methods = dir.path().join("methods");
    std::fs::write(&methods, "alpha").unwrap();
    let methods = methods.display().to_string();
    let told = Watching::default();
    let client = with_changing_worker(told.clone(), dir.path(), &methods).await;
    let names = |tools: Vec<rmcp::model::Tool>| {
        tools
            .into_iter()
            .map(|t| t.name.to_string())
            .filter(|n| n.starts_with("worker_"))
            .collect::<BTreeSet<_>>()
    };
    let before = names(client.list_all_tools().await.unwrap());
    assert!(before.contains("worker_alpha"), "{before:?}");
    std::fs::write(&methods, "beta").unwrap();
    // The worker leaves; the pool starts it again, which reads `beta`.
    let left = client
        .call_tool(CallToolRequestParams::new("worker_leave"))
        .await
        .unwrap();
    assert_eq!(left.is_error, Some(true), "{left:?}");
    // Told once the change lasted two readings; a slow restart may be
    // told as its gap (no worker tools) first, then as `beta`.
    let mut after = BTreeSet::new();
    for _ in 0..3 {
        tokio::time::timeout(std::time::Duration::from_secs(30), told.0.notified())
            .await
            .expect("notifications/tools/list_changed");
        after = names(client.list_all_tools().await.unwrap());
        if after.contains("worker_beta") {
            break;
        }
    }
    assert!(
        after.contains("worker_beta") && !after.contains("worker_alpha"),
        "{after:?}"
    );
    client.cancel().await.unwrap();
}
