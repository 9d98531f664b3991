//! Keys, scopes, quotas and the exposure policy, end to end against the real
//! binary.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{Server, create_key};

fn litebridge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(args)
        .output()
        .unwrap()
}

fn call(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
}

fn code(reply: &Value) -> Option<i64> {
    reply["error"]["code"].as_i64()
}

#[test]
fn a_non_loopback_listen_without_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = litebridge(&["serve", "--db", db.to_str().unwrap(), "--listen", addr]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("without API keys") && err.contains("keys create"),
            "{err}"
        );
        assert!(!db.exists(), "nothing is created");
    }
    // An existing file without keys is refused as well; with a key it serves.
    let q = litebridge(&[
        "query",
        "--create",
        "--db",
        db.to_str().unwrap(),
        "SELECT 1",
    ]);
    assert!(q.status.success());
    let out = litebridge(&[
        "serve",
        "--db",
        db.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let secret = create_key(&db, "remote", "read", "free");
    let mut child = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args([
            "serve",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.starts_with("listening on 0.0.0.0:"), "{first}");
    assert!(!secret.is_empty());
}

#[test]
fn the_keys_command_creates_lists_and_revokes_without_showing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let secret = create_key(&db, "ci", "read,bridge", "pro");
    create_key(&db, "ops", "admin", "enterprise");
    let list = litebridge(&["keys", "list", "--db", db.to_str().unwrap(), "--json"]);
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(!text.contains(&secret[3..]), "a secret was listed: {text}");
    let keys: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys[0]["name"], "ci");
    assert_eq!(keys[0]["scopes"], "read,bridge");
    assert_eq!(keys[0]["tier"], "pro");
    assert_eq!(keys[1]["scopes"], "admin");
    assert!(keys[0]["revoked"].is_null());
    let table = litebridge(&["keys", "list", "--db", db.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("enterprise"));

    let r = litebridge(&[
        "keys",
        "revoke",
        "--db",
        db.to_str().unwrap(),
        "--name",
        "ci",
    ]);
    assert!(r.status.success());
    let again = litebridge(&[
        "keys",
        "revoke",
        "--db",
        db.to_str().unwrap(),
        "--name",
        "ci",
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active key named \"ci\""));
    for (args, needle) in [
        (vec!["--scope", "root"], "\"root\""),
        (vec!["--scope", "read", "--tier", "gold"], "\"gold\""),
        (vec!["--scope", "read", "--name", "ops"], "exists already"),
        (vec!["--scope", "read", "--name", "a b"], "\"a b\""),
    ] {
        let mut all = vec!["keys", "create", "--db", db.to_str().unwrap()];
        all.extend(args);
        let out = litebridge(&all);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
    let missing = litebridge(&["keys", "list", "--db", "/nonexistent/x.db"]);
    assert_eq!(missing.status.code(), Some(1));
}

/// Every method with parameters that pass validation, and the scope it needs.
fn methods() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("sql.query", json!({"sql": "SELECT 1"}), "read"),
        (
            "sql.execute",
            json!({"sql": "INSERT INTO t VALUES (1)"}),
            "write",
        ),
        (
            "sql.batch",
            json!({"statements": [{"sql": "INSERT INTO t VALUES (2)"}]}),
            "write",
        ),
        (
            "sql.execute_many",
            json!({"sql": "INSERT INTO t VALUES (?1)", "rows": [[3]]}),
            "write",
        ),
        (
            "bridge.call",
            json!({"method": "echo", "params": [1]}),
            "bridge",
        ),
        ("bridge.stats", json!({}), "metrics"),
        ("bridge.health", json!({}), "metrics"),
        ("bridge.breaker.reset", json!({"method": "echo"}), "bridge"),
        ("state.save", json!({"run_id": "r", "state": {}}), "write"),
        ("state.load", json!({"run_id": "r"}), "read"),
        ("state.list", json!({}), "read"),
        ("state.delete", json!({"run_id": "r"}), "write"),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": 1}),
            "write",
        ),
        ("memory.get", json!({"namespace": "n", "key": "k"}), "read"),
        ("memory.list", json!({"namespace": "n"}), "read"),
        (
            "memory.delete",
            json!({"namespace": "n", "key": "k"}),
            "write",
        ),
        ("cache.get", json!({"key": "k"}), "read"),
        ("cache.set", json!({"key": "k", "value": 1}), "write"),
        ("cache.delete", json!({"key": "k"}), "write"),
        ("cache.stats", json!({}), "metrics"),
        ("pool.health", json!({}), "metrics"),
        ("pool.stats", json!({}), "metrics"),
        ("persistence.stats", json!({}), "metrics"),
        ("admin.check", json!({}), "admin"),
        ("admin.checkpoint", json!({}), "admin"),
        ("admin.backup", json!({}), "admin"),
        ("admin.keys.list", json!({}), "admin"),
        (
            "admin.keys.create",
            json!({"scope": "read", "name": "made-by-rpc"}),
            "admin",
        ),
        ("admin.keys.revoke", json!({"name": "made-by-rpc"}), "admin"),
    ]
}

fn allowed(key_scope: &str, needed: &str) -> bool {
    match key_scope {
        "admin" => true,
        "write" => matches!(needed, "read" | "write" | "metrics"),
        "read" => matches!(needed, "read" | "metrics"),
        "metrics" => needed == "metrics",
        "bridge" => needed == "bridge",
        _ => unreachable!(),
    }
}

#[test]
fn each_scope_reaches_its_methods_and_is_refused_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let q = litebridge(&[
        "query",
        "--create",
        "--db",
        db.to_str().unwrap(),
        "CREATE TABLE t(x)",
    ]);
    assert!(q.status.success());
    let keys: Vec<(&str, String)> = ["metrics", "read", "write", "bridge", "admin"]
        .into_iter()
        .map(|s| (s, create_key(&db, &format!("k-{s}"), s, "enterprise")))
        .collect();
    let server = Server::start(
        &db,
        &[
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
    );
    for (scope, secret) in &keys {
        for (method, params, needed) in methods() {
            let (status, reply) = server.rpc_as(Some(secret), &call(method, params));
            assert_eq!(status, 200);
            if allowed(scope, needed) {
                assert!(
                    reply.get("result").is_some() && reply.get("error").is_none(),
                    "{scope} key, {method}: {reply}"
                );
            } else {
                assert_eq!(code(&reply), Some(-32007), "{scope} key, {method}: {reply}");
                assert_eq!(reply["error"]["data"]["kind"], "forbidden");
                let message = reply["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(method) && message.contains(needed),
                    "{message}"
                );
            }
        }
    }
    // Without a key, or with a wrong one: 401 and `unauthorized`, nothing runs.
    for key in [None, Some("lb_wrong"), Some("")] {
        let (status, reply) = server.rpc_as(key, &call("sql.query", json!({"sql": "SELECT 1"})));
        assert_eq!(status, 401, "{reply}");
        assert_eq!(code(&reply), Some(-32006), "{reply}");
        assert_eq!(reply["error"]["data"]["kind"], "unauthorized");
    }
    let (status, headers, _) = server.request_with("GET", "/metrics", None, &[], b"");
    assert_eq!(status, 401);
    assert!(headers.contains("www-authenticate: bearer"), "{headers}");
    let key = |scope: &str| &keys.iter().find(|(s, _)| *s == scope).unwrap().1;
    let bearer = format!("Bearer {}", key("metrics"));
    let (status, _, body) =
        server.request_with("GET", "/metrics", None, &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("litebridge_"));
    let bridge_only = format!("Bearer {}", key("bridge"));
    let (status, _, _) = server.request_with(
        "GET",
        "/metrics",
        None,
        &[("Authorization", &bridge_only)],
        b"",
    );
    assert_eq!(status, 403);
    // Health and readiness stay open to probes.
    assert_eq!(server.request("GET", "/health", None, b"").0, 200);
    // Secrets and parameter values are not in the log.
    let status = server.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(db.with_extension("log")).unwrap();
    for (_, secret) in &keys {
        assert!(!log.contains(&secret[3..]), "a secret reached the log");
    }
    assert!(
        log.contains("k-admin"),
        "requests are logged with the key's name"
    );
}

#[test]
fn a_key_revoked_from_another_process_stops_working_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let secret = create_key(&db, "leaked", "read", "free");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_SECURITY_KEY_REFRESH_MS", "100")]);
    let q = call("sql.query", json!({"sql": "SELECT 1"}));
    assert_eq!(server.rpc_as(Some(&secret), &q).0, 200);
    let out = litebridge(&[
        "keys",
        "revoke",
        "--db",
        db.to_str().unwrap(),
        "--name",
        "leaked",
    ]);
    assert!(out.status.success());
    let started = Instant::now();
    loop {
        let (status, reply) = server.rpc_as(Some(&secret), &q);
        if status == 401 {
            assert_eq!(code(&reply), Some(-32006));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still accepted: {reply}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
}

#[test]
fn quotas_run_out_with_retry_after_and_the_concurrent_limit_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let config = dir.path().join("q.toml");
    std::fs::write(&config, "[quota]\nfree_daily = 3\nfree_concurrent = 1\n").unwrap();
    let small = create_key(&db, "small", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let q = call("sql.query", json!({"sql": "SELECT 1"}));
    for _ in 0..3 {
        let (_, reply) = server.rpc_as(Some(&small), &q);
        assert!(reply["result"].is_object(), "{reply}");
    }
    let (_, reply) = server.rpc_as(Some(&small), &q);
    assert_eq!(code(&reply), Some(-32008), "{reply}");
    let data = &reply["error"]["data"];
    assert_eq!(data["kind"], "quota_exceeded");
    assert_eq!(data["quota"], "daily");
    assert_eq!(data["limit"], 3);
    assert_eq!(data["recoverable"], true);
    let after = data["retry_after_ms"].as_u64().unwrap();
    assert!(after > 0 && after <= 86_400_000, "{after}");
    server.stop();

    // The count survives a restart; a key of another name still has its own.
    let other = create_key(&db, "other", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let (_, reply) = server.rpc_as(Some(&small), &q);
    assert_eq!(reply["error"]["data"]["quota"], "daily", "{reply}");
    // One slow request holds the only concurrent slot of `other`.
    let slow = call(
        "sql.query",
        json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
               "timeout_ms": 1500, "lane": "heavy"}),
    );
    std::thread::scope(|s| {
        let holder = s.spawn(|| server.rpc_as(Some(&other), &slow));
        std::thread::sleep(Duration::from_millis(400));
        let (_, reply) = server.rpc_as(Some(&other), &q);
        assert_eq!(reply["error"]["data"]["quota"], "concurrent", "{reply}");
        let (_, held) = holder.join().unwrap();
        assert_eq!(held["error"]["data"]["kind"], "timeout", "{held}");
    });
    let (_, reply) = server.rpc_as(Some(&other), &q);
    assert!(
        reply["result"].is_object(),
        "the slot is free again: {reply}"
    );
    server.stop();
}

/// `/metrics` counts against the key's quota as a read does (review 158:
/// scraped without end and uncounted), and a scope refusal there counts too.
#[test]
fn metrics_scrapes_count_against_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let config = dir.path().join("m.toml");
    std::fs::write(&config, "[quota]\nfree_daily = 3\n").unwrap();
    let reader = create_key(&db, "scraper", "read", "free");
    let bridge = create_key(&db, "bridge", "bridge", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let scrape = |secret: &str| {
        let auth = format!("Bearer {secret}");
        server
            .request_with("GET", "/metrics", None, &[("Authorization", &auth)], b"")
            .0
    };
    for _ in 0..3 {
        assert_eq!(scrape(&reader), 200);
    }
    assert_eq!(scrape(&reader), 429);
    // Outside its scopes: refused, and counted (the fourth is the quota's).
    for _ in 0..3 {
        assert_eq!(scrape(&bridge), 403);
    }
    assert_eq!(scrape(&bridge), 429);
    server.stop();
}

#[test]
fn stdio_runs_with_the_configured_local_scopes() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db"])
        .arg(dir.path().join("l.db"))
        .env("LITEBRIDGE_SECURITY_LOCAL_SCOPES", "read")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    {
        let mut ask = |req: Value| {
            writeln!(stdin, "{req}").unwrap();
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            serde_json::from_str::<Value>(&line).unwrap()
        };
        assert!(ask(call("sql.query", json!({"sql": "SELECT 1"})))["result"].is_object());
        let r = ask(call("sql.execute", json!({"sql": "CREATE TABLE x(a)"})));
        assert_eq!(code(&r), Some(-32007), "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("this session")
        );
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// A key with the `metrics` scope reads the figures (statistics, health,
/// `/metrics`, the dashboard's data, the event stream) and no data
/// (review 181: the key given to Prometheus had to be a `read` key, which
/// reads every table, run, memory and cache entry).
#[test]
fn a_metrics_key_reads_the_figures_and_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let admin = create_key(&db, "owner", "admin", "free");
    let prom = create_key(&db, "prom", "metrics", "free");
    let server = Server::start_with(&db, &[], &[]);
    let (status, r) = server.rpc_as(
        Some(&admin),
        &call(
            "memory.store",
            json!({"namespace": "agent-a", "key": "secret", "value": "x"}),
        ),
    );
    assert_eq!(status, 200, "{r}");
    for method in [
        "pool.stats",
        "pool.health",
        "persistence.stats",
        "cache.stats",
    ] {
        let (status, r) = server.rpc_as(Some(&prom), &call(method, json!({})));
        assert_eq!(status, 200, "{method}: {r}");
        assert!(r["error"].is_null(), "{method}: {r}");
    }
    for path in ["/metrics", "/api/dashboard"] {
        let (status, _, body) = server.request_as(Some(&prom), "GET", path, None, b"");
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    }
    for (method, params) in [
        (
            "memory.get",
            json!({"namespace": "agent-a", "key": "secret"}),
        ),
        ("memory.list", json!({"namespace": "agent-a"})),
        ("state.list", json!({})),
        ("cache.get", json!({"key": "k"})),
        ("sql.query", json!({"sql": "SELECT 1"})),
        ("sql.schema", json!({})),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": 1}),
        ),
    ] {
        let (_, r) = server.rpc_as(Some(&prom), &call(method, params));
        assert_eq!(code(&r), Some(-32007), "{method}: {r}");
        assert!(!r.to_string().contains("\"x\""), "{method}: {r}");
    }
    // Listed with its scope.
    let (status, r) = server.rpc_as(Some(&admin), &call("admin.keys.list", json!({})));
    assert_eq!(status, 200, "{r}");
    let listed = r["result"].to_string();
    assert!(listed.contains("\"metrics\""), "{listed}");
}

/// Local sessions narrowed by `security.local_scopes` keep idempotency
/// records of their own (review 181): an agent's session given `write`
/// neither blocks the owner's write of the same key nor answers it with its
/// own result; the owner's sessions share theirs, as before.
#[test]
fn a_narrowed_local_session_keeps_its_idempotency_keys_apart_from_the_owners() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let session = |scopes: Option<&str>, requests: &[Value]| -> Vec<Value> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_litebridge"));
        command
            .args(["stdio", "--db"])
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(scopes) = scopes {
            command.env("LITEBRIDGE_SECURITY_LOCAL_SCOPES", scopes);
        }
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let replies = requests
            .iter()
            .map(|req| {
                writeln!(stdin, "{req}").unwrap();
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                serde_json::from_str::<Value>(&line).unwrap()
            })
            .collect();
        drop(stdin);
        assert!(child.wait().unwrap().success());
        replies
    };
    let insert = |v: i64| {
        call(
            "sql.execute",
            json!({"sql": format!("INSERT INTO t VALUES ({v})"), "idempotency_key": "order-7"}),
        )
    };
    session(
        None,
        &[call("sql.execute", json!({"sql": "CREATE TABLE t(a)"}))],
    );
    let agent = session(Some("write"), &[insert(1)]);
    assert_eq!(agent[0]["result"]["changes"], 1, "{}", agent[0]);
    // The owner's write of the same key runs: neither refused as another
    // write's key, nor answered with the agent's result.
    let owner = session(None, &[insert(2), insert(2)]);
    for r in &owner {
        assert_eq!(r["result"]["changes"], 1, "{r}");
        assert_eq!(r["result"]["last_insert_rowid"], 2, "{r}");
    }
    // The agent's own retry is still answered from its record, and its
    // key with another write refused.
    let again = session(Some("write"), &[insert(1), insert(3)]);
    assert_eq!(again[0]["result"]["last_insert_rowid"], 1, "{}", again[0]);
    assert_eq!(code(&again[1]), Some(-32602), "{}", again[1]);
    let rows = session(
        None,
        &[call(
            "sql.query",
            json!({"sql": "SELECT a FROM t ORDER BY a"}),
        )],
    );
    assert_eq!(rows[0]["result"]["rows"], json!([[1], [2]]), "{}", rows[0]);
}

/// An idempotency key is its caller's: the same string from another API
/// key is another write, and nobody's SQL reaches the records.
#[test]
fn idempotency_keys_are_per_api_key_and_out_of_the_clients_reach() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("i.db");
    let a = create_key(&db, "a", "write", "free");
    let b = create_key(&db, "b", "write", "free");
    let server = Server::start_with(&db, &[], &[]);
    let ok = |key: &str, method: &str, params: Value| {
        let (status, reply) = server.rpc_as(Some(key), &call(method, params));
        assert_eq!(status, 200, "{reply}");
        assert!(reply["error"].is_null(), "{reply}");
        reply["result"].clone()
    };
    ok(
        &a,
        "sql.execute",
        json!({"sql": "CREATE TABLE orders(n INTEGER)"}),
    );
    let insert = json!({"sql": "INSERT INTO orders VALUES (7)", "idempotency_key": "order-7"});
    for _ in 0..3 {
        let r = ok(&a, "sql.execute", insert.clone());
        assert_eq!(r["changes"], 1, "{r}");
        assert_eq!(r["last_insert_rowid"], 1, "the first send's rowid: {r}");
    }
    let r = ok(&b, "sql.execute", insert);
    assert_eq!(r["last_insert_rowid"], 2, "b's own write: {r}");
    let count = ok(
        &a,
        "sql.query",
        json!({"sql": "SELECT count(*) AS n FROM orders"}),
    );
    assert_eq!(count["rows"][0][0], 2, "{count}");
    // Another write under the same key is refused, naming the parameter.
    let (_, reply) = server.rpc_as(
        Some(&a),
        &call(
            "sql.execute",
            json!({"sql": "DELETE FROM orders", "idempotency_key": "order-7"}),
        ),
    );
    assert_eq!(
        reply["error"]["data"]["kind"], "invalid_argument",
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idempotency_key"),
        "{reply}"
    );
    let (_, reply) = server.rpc_as(
        Some(&a),
        &call(
            "sql.query",
            json!({"sql": "SELECT * FROM litebridge_claims"}),
        ),
    );
    assert_eq!(reply["error"]["data"]["kind"], "forbidden", "{reply}");
    server.stop();
}
