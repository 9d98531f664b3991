//! The red team's attacks, one test each, against the real binary.
//!
//! Each test is named after an attack that worked against an earlier
//! version (SECURITY.md, "Red-teaming", says how they were found and how to
//! add one). An attack is written the way the attacker sent it, and the
//! test checks both that it is refused and that nothing of it took effect.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{Server, create_key};

fn call(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
}

/// The error code of a reply (0 for a result).
fn code(reply: &Value) -> i64 {
    reply["error"]["code"].as_i64().unwrap_or(0)
}

/// Sends `head` (request line and headers, without the final blank line)
/// and `body` on a fresh connection; the status and the body.
fn raw(addr: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn rpc_head(host: &str, extra: &str, len: usize) -> String {
    format!(
        "POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len}{extra}"
    )
}

const STATE_COLUMNS: &str = "run_id TEXT PRIMARY KEY, state TEXT NOT NULL, status TEXT, total_steps INTEGER, \
     error_message TEXT, execution_time_ms INTEGER, memory_usage_mb REAL, created_at INTEGER NOT NULL, \
     updated_at INTEGER NOT NULL";

/// A read that runs until its deadline stops it.
const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

/// sha256("lb_evil_secret_0123456789").
const EVIL_HASH: &str = "8902c152d50372021d7501d448bf3cf52a371fb28e54837d2d0791ee407f4788";
const EVIL_SECRET: &str = "lb_evil_secret_0123456789";

#[test]
fn write_key_becomes_admin_through_a_shadow_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let write = create_key(&db, "writer", "write", "pro");
    let server = Server::start(&db, &["--config", "/dev/null"]);
    let as_writer = |sql: &str| {
        server
            .rpc_as(Some(&write), &call("sql.execute", json!({"sql": sql})))
            .1
    };
    let steps = [
        format!("CREATE TEMP TABLE x({STATE_COLUMNS}) WITHOUT ROWID"),
        format!(
            "CREATE TEMP TRIGGER t AFTER INSERT ON x BEGIN \
             INSERT INTO main.litebridge_keys(name, hash, scopes, tier, created_at) \
             VALUES ('evil', '{EVIL_HASH}', 'admin', 'enterprise', 0); \
             UPDATE main.litebridge_meta SET value = value + 1 WHERE key = 'keys_version'; END"
        ),
        "ALTER TABLE temp.x RENAME TO litebridge_state".to_owned(),
        // The same on the tables behind revocation and quotas, and a table
        // planted for a later migration to adopt.
        "CREATE TABLE plain(key TEXT PRIMARY KEY, value TEXT, expires_at INTEGER) WITHOUT ROWID"
            .to_owned(),
        "ALTER TABLE plain RENAME TO litebridge_future".to_owned(),
        "ALTER TABLE plain RENAME TO litebridge_keys2".to_owned(),
    ];
    for sql in &steps {
        let r = as_writer(sql);
        if !sql.starts_with("CREATE TABLE plain") {
            // Refused (the later steps fail for want of the first one too).
            assert_ne!(code(&r), 0, "{sql}: {r}");
        }
    }
    // The store write lands in the real table and the trigger never ran.
    let saved = server
        .rpc_as(
            Some(&write),
            &call("state.save", json!({"run_id": "r1", "state": {"ok": 1}})),
        )
        .1;
    assert_eq!(code(&saved), 0, "{saved}");
    std::thread::sleep(Duration::from_millis(1_500)); // past one key refresh
    let (status, _) = server.rpc_as(Some(EVIL_SECRET), &call("pool.health", json!({})));
    assert_eq!(status, 401, "the planted secret must not be a key");
    let (_, r) = server.rpc_as(Some(&write), &call("admin.keys.list", json!({})));
    assert_eq!(code(&r), -32007, "still a write key: {r}");
    assert!(server.stop().success());
    // After a restart the acknowledged write is there, in the real table.
    let server = Server::start(&db, &[]);
    let loaded = server
        .rpc_as(Some(&write), &call("state.load", json!({"run_id": "r1"})))
        .1;
    assert_eq!(loaded["result"]["state"], json!({"ok": 1}), "{loaded}");
    assert!(server.stop().success());
}

#[test]
fn generic_mode_escapes_its_allow_list_through_an_imported_module() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let trace = dir.path().join("shell-ran");
    let server = Server::start_with(
        &db,
        &[
            "--workers",
            "python3 -m litebridge_worker --root python/tests/fixtures --allow pkg.tools",
        ],
        &[("PYTHONPATH", "python")],
    );
    let touch = format!("touch {}", trace.display());
    for method in [
        "pkg.tools.os.system",
        "pkg.tools.run_shell",
        "pkg.tools.evaluate",
        "pkg.tools.Agent.system",
        "pkg.tools.Agent.helper_module.system",
        "pkg.tools.shell",
    ] {
        let r = server.rpc(call(
            "bridge.call",
            json!({"method": method, "params": [touch]}),
        ));
        assert_ne!(code(&r), 0, "{method}: {r}");
    }
    // Outside the prefixes: refused before reaching a worker.
    let r = server.rpc(call(
        "bridge.call",
        json!({"method": "os.system", "params": [touch]}),
    ));
    assert_eq!(code(&r), -32602, "{r}");
    let ok = server.rpc(call(
        "bridge.call",
        json!({"method": "pkg.tools.add", "params": [2, 3]}),
    ));
    assert_eq!(ok["result"], 5, "{ok}");
    assert!(!trace.exists(), "a shell command ran");
    assert!(server.stop().success());
}

#[test]
fn a_web_page_gets_admin_on_a_keyless_server_by_dns_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let server = Server::start(&db, &[]);
    let body = call("sql.execute", json!({"sql": "CREATE TABLE pwned(x)"})).to_string();
    let evil = [
        ("evil.example:7070", ""),
        ("evil.example", ""),
        ("127.0.0.1.evil.example", ""),
        ("localhost.evil.example", ""),
        // A loopback Host, but the request comes from a page of another site.
        ("127.0.0.1", "\r\nOrigin: http://evil.example"),
        ("localhost", "\r\nOrigin: null"),
        (
            "localhost",
            "\r\nOrigin: https://localhost.evil.example:7070",
        ),
    ];
    for (host, extra) in evil {
        let (status, reply) = raw(
            &server.addr,
            &rpc_head(host, extra, body.len()),
            body.as_bytes(),
        );
        assert_eq!(status, 403, "Host {host}{extra}: {reply}");
        for path in ["/metrics", "/health", "/ready"] {
            let (status, _) = raw(
                &server.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}{extra}"),
                b"",
            );
            assert_eq!(status, 403, "{path} with Host {host}{extra}");
        }
        let (status, _) = raw(
            &server.addr,
            &format!(
                "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 2{extra}"
            ),
            b"{}",
        );
        assert_eq!(status, 403, "/mcp with Host {host}{extra}");
    }
    // A request target in absolute form names its host too, with or
    // without a Host header (review 206).
    for path in ["/rpc", "/mcp"] {
        for host in ["", "\r\nHost: 127.0.0.1"] {
            let (status, reply) = raw(
                &server.addr,
                &format!(
                    "POST http://evil.example{path} HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}{host}",
                    body.len()
                ),
                body.as_bytes(),
            );
            assert_eq!(status, 403, "absolute-form {path}{host:?}: {reply}");
        }
    }
    // A request with no host is refused as /rpc refuses, in JSON, saying
    // what is missing (it was rmcp's plain text). (A Host it cannot parse
    // is refused before that on loopback, as not a loopback name; the unit
    // tests of `unreadable_host` cover a server listening beyond.)
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let (status, reply) = raw(
        &server.addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}",
            ping.len()
        ),
        ping.as_bytes(),
    );
    assert_eq!(status, 400, "/mcp with no Host: {reply}");
    let body: Value = serde_json::from_str(&reply)
        .unwrap_or_else(|e| panic!("/mcp with no Host, not JSON ({e}): {reply}"));
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("needs a Host header"), "{body}");
    // The server's own names work, with or without a same-site Origin, on
    // /rpc and /mcp alike (rmcp's own list took only 127.0.0.1 of 127.x).
    for (host, extra) in [
        ("127.0.0.1", ""),
        ("127.0.0.2", ""),
        ("localhost", ""),
        ("[::1]", ""),
        // An empty port is no port, with brackets or without; an IPv4
        // address written as IPv6 is that address (review 207).
        ("localhost:", ""),
        ("[::1]:", ""),
        ("[::ffff:127.0.0.1]:7070", ""),
        ("localhost", "\r\nOrigin: http://localhost:3000"),
    ] {
        let q = call("sql.query", json!({"sql": "SELECT 1"})).to_string();
        let (status, reply) = raw(&server.addr, &rpc_head(host, extra, q.len()), q.as_bytes());
        assert_eq!(status, 200, "Host {host}{extra}: {reply}");
        let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
        let (status, reply) = raw(
            &server.addr,
            &format!(
                "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}{extra}",
                ping.len()
            ),
            ping.as_bytes(),
        );
        assert_eq!(status, 200, "/mcp with Host {host}{extra}: {reply}");
    }
    let tables = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT count(*) FROM sqlite_schema WHERE name = 'pwned'"}),
    ));
    assert_eq!(tables["result"]["rows"][0][0], 0);
    assert!(server.stop().success());
}

#[test]
fn private_rows_leak_through_planner_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let write = create_key(&db, "writer", "write", "pro");
    let read = create_key(&db, "reader", "read", "pro");
    let server = Server::start(&db, &[]);
    for i in 0..30 {
        let r = server
            .rpc_as(
                Some(&write),
                &call(
                    "memory.store",
                    json!({"namespace": "tenant-secret", "key": format!("private-{i}"), "value": i}),
                ),
            )
            .1;
        assert_eq!(code(&r), 0, "{r}");
    }
    for sql in [
        "ANALYZE litebridge_memory",
        "ANALYZE litebridge_keys",
        "ANALYZE litebridge_state",
        "ANALYZE",
    ] {
        let r = server
            .rpc_as(Some(&write), &call("sql.execute", json!({"sql": sql})))
            .1;
        assert_eq!(
            code(&r),
            0,
            "{sql} runs (leaving litebridge's tables out): {r}"
        );
    }
    for sql in [
        "SELECT CAST(sample AS TEXT) FROM sqlite_stat4",
        "SELECT * FROM sqlite_stat1",
    ] {
        let r = server
            .rpc_as(Some(&read), &call("sql.query", json!({"sql": sql})))
            .1;
        assert_eq!(code(&r), -32007, "{sql}: {r}");
        assert!(!r.to_string().contains("private-"), "{r}");
    }
    for sql in [
        "INSERT INTO sqlite_stat1 VALUES ('litebridge_keys', NULL, '1')",
        "DELETE FROM sqlite_stat1",
    ] {
        let r = server
            .rpc_as(Some(&write), &call("sql.execute", json!({"sql": sql})))
            .1;
        assert_eq!(code(&r), -32007, "{sql}: {r}");
    }
    assert!(server.stop().success());
    // Nothing about litebridge's tables was gathered.
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT (SELECT count(*) FROM sqlite_stat1 WHERE tbl LIKE 'litebridge%') + \
                    (SELECT count(*) FROM sqlite_stat4 WHERE tbl LIKE 'litebridge%')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_bridge_key_reaches_the_worker_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let bridge = create_key(&db, "caller", "bridge", "pro");
    let server = Server::start(&db, &["--workers", "python3 examples/worker.py"]);
    // Another client's call, in flight while the attacker guesses ids.
    let addr = server.addr.clone();
    let (key, body) = (
        bridge.clone(),
        call("bridge.call", json!({"method": "wait", "params": [1.0]})).to_string(),
    );
    let other = std::thread::spawn(move || {
        raw(
            &addr,
            &rpc_head(
                "127.0.0.1",
                &format!("\r\nAuthorization: Bearer {key}"),
                body.len(),
            ),
            body.as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    for id in 1..20 {
        for method in ["$/cancelRequest", "$/ping", "$/ready"] {
            let r = server
                .rpc_as(
                    Some(&bridge),
                    &call(
                        "bridge.call",
                        json!({"method": method, "params": {"id": id}}),
                    ),
                )
                .1;
            assert_eq!(code(&r), -32602, "{method}: {r}");
        }
    }
    for method in ["no_such_method", "echo.extra", "\u{0435}cho"] {
        let r = server
            .rpc_as(
                Some(&bridge),
                &call("bridge.call", json!({"method": method})),
            )
            .1;
        assert_eq!(code(&r), -32602, "{method}: {r}");
    }
    let (status, reply) = other.join().unwrap();
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        reply["result"], 1.0,
        "the other call was not touched: {reply}"
    );
    let stats = server
        .rpc_as(
            Some(&bridge),
            &call("bridge.call", json!({"method": "echo", "params": [1]})),
        )
        .1;
    assert_eq!(stats["result"], 1);
    assert!(server.stop().success());
}

#[test]
fn the_body_is_read_before_the_key_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    create_key(&db, "someone", "read", "free");
    let server = Server::start(&db, &[]);
    // Headers that announce 16 MiB, and not one byte of body: the answer
    // comes at once, without waiting for the body.
    let started = Instant::now();
    let (status, _) = raw(
        &server.addr,
        &rpc_head("127.0.0.1", "", 16 * 1024 * 1024),
        b"",
    );
    assert_eq!(status, 401);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.stop().success());
}

#[test]
fn revoking_every_key_turns_keyless_admin_back_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    create_key(&db, "only", "read", "free");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["keys", "revoke", "--db"])
        .arg(&db)
        .args(["--name", "only"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = Server::start(&db, &[]);
    let (status, r) = server.rpc_as(None, &call("admin.keys.list", json!({})));
    assert_eq!(status, 401, "{r}");
    assert!(server.stop().success());
}

#[test]
fn introspection_describes_litebridges_tables_and_tells_file_paths() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("i.db");
    let server = Server::start(&db, &[]);
    for sql in [
        "SELECT * FROM pragma_database_list",
        "PRAGMA database_list",
        "SELECT * FROM pragma_table_info('litebridge_keys')",
        "PRAGMA index_list(litebridge_memory)",
    ] {
        let r = server.rpc(call("sql.query", json!({"sql": sql})));
        assert_eq!(code(&r), -32007, "{sql}: {r}");
        assert!(!r.to_string().contains(dir.path().to_str().unwrap()), "{r}");
    }
    assert!(server.stop().success());
}

#[test]
fn admin_backup_writes_over_any_file_the_service_can_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let server = Server::start(&db, &[]);
    server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    let names = [
        victim.to_str().unwrap().to_owned(),
        db.to_str().unwrap().to_owned(),
        format!("{}-wal", db.display()),
        "../live.db".to_owned(),
        "../victim.txt".to_owned(),
        ".hidden".to_owned(),
        String::new(),
        // Named like a scheduled backup: recovery would take it for the newest.
        "live.db.29991231T000000Z.backup".to_owned(),
        "LATEST".to_owned(),
        // Where the schedule writes its record: the next scheduled backup
        // would overwrite this one.
        "LATEST.partial".to_owned(),
    ];
    for to in &names {
        let r = server.rpc(call("admin.backup", json!({"to": to})));
        assert_ne!(code(&r), 0, "to {to:?}: {r}");
    }
    // Review 246: SQLite's own names were refused by the copy as
    // `unavailable`, and names an operator's shell or terminal misreads
    // were taken. Each is the caller's bad `to` now.
    for to in [
        "foo-wal",
        "foo-shm",
        "foo-journal",
        "-rf",
        "x\u{202e}yz",
        "a\u{200b}b",
    ] {
        let r = server.rpc(call("admin.backup", json!({"to": to})));
        assert_eq!(code(&r), -32602, "to {to:?}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("`to`"),
            "{r}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    // A plain name goes into the backup directory, once.
    let r = server.rpc(call("admin.backup", json!({"to": "nightly.db"})));
    assert_eq!(code(&r), 0, "{r}");
    assert!(dir.path().join("live.db.backups/nightly.db").is_file());
    let again = server.rpc(call("admin.backup", json!({"to": "nightly.db"})));
    assert_ne!(
        code(&again),
        0,
        "an existing backup is not replaced: {again}"
    );
    let w = server.rpc(call(
        "sql.execute",
        json!({"sql": "INSERT INTO t VALUES (1)"}),
    ));
    assert_eq!(code(&w), 0);
    assert!(server.stop().success());
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the live database is intact");
}

#[test]
fn a_backup_on_the_command_line_replaces_the_live_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let server = Server::start(&db, &[]);
    server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let hard = dir.path().join("hard.db");
    std::fs::hard_link(&db, &hard).unwrap();
    let wal = format!("{}-wal", db.display());
    for to in [
        db.to_str().unwrap(),
        link.to_str().unwrap(),
        hard.to_str().unwrap(),
        wal.as_str(),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .args(["backup", "--db"])
            .arg(&db)
            .args(["--to", to])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "--to {to}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(to) || stderr.contains("live.db"),
            "{stderr}"
        );
    }
    // The server goes on, and what it acknowledges survives a restart.
    let w = server.rpc(call(
        "sql.execute",
        json!({"sql": "INSERT INTO t VALUES (1)"}),
    ));
    assert_eq!(code(&w), 0, "{w}");
    assert!(server.stop().success());
    let server = Server::start(&db, &[]);
    let r = server.rpc(call("sql.query", json!({"sql": "SELECT count(*) FROM t"})));
    assert_eq!(r["result"]["rows"][0][0], 1, "{r}");
    assert!(server.stop().success());
}

#[test]
fn one_keys_cache_key_serves_another_keys_call() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let alice = create_key(&db, "alice", "bridge", "pro");
    let mallory = create_key(&db, "mallory", "bridge", "pro");
    let server = Server::start(&db, &["--workers", "python3 examples/worker.py"]);
    let echo = |key: &str, value: &str| {
        server
            .rpc_as(
                Some(key),
                &call(
                    "bridge.call",
                    json!({"method": "echo", "params": [value], "cache_key": "shared", "cache_ttl_s": 60}),
                ),
            )
            .1["result"]
            .clone()
    };
    // Mallory poisons the key first; Alice must get her own result.
    assert_eq!(echo(&mallory, "poison"), "poison");
    assert_eq!(echo(&alice, "alice's"), "alice's");
    // And each is served from the cache afterwards.
    assert_eq!(echo(&alice, "other"), "alice's");
    assert_eq!(echo(&mallory, "other"), "poison");
    assert!(server.stop().success());
}

#[test]
fn mcp_sessions_are_unbounded_and_free() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let config = dir.path().join("m.toml");
    std::fs::write(&config, "[quota]\nfree_daily = 5\n").unwrap();
    let key = create_key(&db, "agent", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let auth = format!("Bearer {key}");
    let mut refused = 0;
    for _ in 0..8 {
        let (status, head, body) = server.request_with(
            "POST",
            "/mcp",
            Some("application/json"),
            &[
                ("Authorization", auth.as_str()),
                ("Accept", "application/json, text/event-stream"),
            ],
            init.as_bytes(),
        );
        assert!(
            !head.contains("mcp-session-id"),
            "no session is kept: {head}"
        );
        let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 || reply.get("error").is_some() {
            assert!(reply.to_string().contains("quota"), "{status} {reply}");
            refused += 1;
        }
    }
    // Five initializations fit the day's quota; the rest do not.
    assert_eq!(refused, 3);
    assert!(server.stop().success());
}

#[test]
fn worker_error_messages_with_parameter_values_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let server = Server::start(&db, &["--workers", "python3 examples/worker.py"]);
    let r = server.rpc(call(
        "bridge.call",
        json!({"method": "fail", "params": ["card 4111-1111-1111-1111"]}),
    ));
    assert_eq!(code(&r), -32004, "{r}");
    let log = server.log.clone();
    assert!(server.stop().success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("worker"), "the failure is logged: {log}");
    assert!(!log.contains("4111-1111"), "{log}");
}

// ---- Found by the red team after the first fixes -------------------------------

#[test]
fn a_client_trigger_reads_litebridges_tables_through_a_foreign_key_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fk.db");
    let write = create_key(&db, "writer", "write", "pro");
    let server = Server::start(&db, &[]);
    let x = |sql: &str| {
        server
            .rpc_as(Some(&write), &call("sql.execute", json!({"sql": sql})))
            .1
    };
    let saved = server
        .rpc_as(
            Some(&write),
            &call("state.save", json!({"run_id": "secret-run", "state": {}})),
        )
        .1;
    assert_eq!(code(&saved), 0, "{saved}");
    assert_eq!(code(&x("CREATE TABLE spy(x TEXT)")), 0);
    assert_eq!(code(&x("INSERT INTO spy VALUES ('secret-run')")), 0);
    assert_eq!(code(&x("CREATE TABLE loot(src, a, b, c, d)")), 0);
    let fk = x(
        "ALTER TABLE spy ADD COLUMN r TEXT GENERATED ALWAYS AS (x) VIRTUAL \
                REFERENCES litebridge_state(run_id) ON DELETE CASCADE",
    );
    assert_eq!(code(&fk), -32007, "{fk}");
    let trigger = x("CREATE TRIGGER tr AFTER DELETE ON spy BEGIN \
         INSERT INTO loot SELECT 'keys', * FROM (WITH litebridge_x AS \
           (SELECT id, name, hash, scopes FROM main.litebridge_keys) SELECT * FROM litebridge_x); END");
    assert_eq!(code(&trigger), 0, "{trigger}");
    // The trusted delete touches no client table.
    let deleted = server
        .rpc_as(
            Some(&write),
            &call("state.delete", json!({"run_id": "secret-run"})),
        )
        .1;
    assert_eq!(deleted["result"]["deleted"], true, "{deleted}");
    let loot = server
        .rpc_as(
            Some(&write),
            &call("sql.query", json!({"sql": "SELECT count(*) FROM loot"})),
        )
        .1;
    assert_eq!(loot["result"]["rows"][0][0], 0, "{loot}");
    let spied = server
        .rpc_as(
            Some(&write),
            &call("sql.query", json!({"sql": "SELECT count(*) FROM spy"})),
        )
        .1;
    assert_eq!(spied["result"]["rows"][0][0], 1, "no cascade: {spied}");
    assert!(server.stop().success());
}

#[test]
fn foreign_key_check_tells_which_keys_exist() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oracle.db");
    let write = create_key(&db, "writer", "write", "pro");
    let server = Server::start(&db, &[]);
    let x = |sql: &str| {
        server
            .rpc_as(Some(&write), &call("sql.execute", json!({"sql": sql})))
            .1
    };
    assert_eq!(code(&x("CREATE TABLE spy2(x TEXT)")), 0);
    assert_eq!(
        code(&x(
            "INSERT INTO spy2 VALUES ('writer'), ('admin'), ('nosuchkey')"
        )),
        0
    );
    let r = x(
        "ALTER TABLE spy2 ADD COLUMN r TEXT GENERATED ALWAYS AS (x) VIRTUAL REFERENCES litebridge_keys(name)",
    );
    assert_eq!(code(&r), -32007, "{r}");
    let q = server
        .rpc_as(
            Some(&write),
            &call(
                "sql.query",
                json!({"sql": "SELECT count(*) FROM pragma_foreign_key_check('spy2')"}),
            ),
        )
        .1;
    assert_eq!(q["result"]["rows"][0][0], 0, "{q}");
    assert!(server.stop().success());
}

#[test]
fn a_temp_trigger_hides_on_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tt.db");
    let server = Server::start(&db, &[]);
    for sql in ["CREATE TABLE t(a)", "CREATE TABLE tlog(x)"] {
        assert_eq!(
            code(&server.rpc(call("sql.execute", json!({"sql": sql})))),
            0
        );
    }
    let r = server.rpc(call(
        "sql.execute",
        json!({"sql": "CREATE TRIGGER temp.tr9 AFTER INSERT ON main.t BEGIN INSERT INTO tlog VALUES ('fired'); END"}),
    ));
    assert_eq!(code(&r), -32007, "{r}");
    server.rpc(call(
        "sql.execute",
        json!({"sql": "INSERT INTO t VALUES (1)"}),
    ));
    let n = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT count(*) FROM tlog"}),
    ));
    assert_eq!(n["result"]["rows"][0][0], 0, "{n}");
    assert!(server.stop().success());
}

#[test]
fn a_backup_replaces_another_databases_wal_or_shm() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.db");
    let other = dir.path().join("other.db");
    let server = Server::start(&victim, &[]);
    server.rpc(call(
        "sql.execute",
        json!({"sql": "CREATE TABLE important(x)"}),
    ));
    server.rpc(call(
        "sql.execute",
        json!({"sql": "INSERT INTO important VALUES (42)"}),
    ));
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE o(x)")
        .unwrap();
    for suffix in ["-wal", "-shm", "-journal"] {
        let to = format!("{}{suffix}", victim.display());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .args(["backup", "--db"])
            .arg(&other)
            .args(["--to", &to])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "--to {to}: {out:?}");
    }
    // A database another process has open (and is using) is not replaced either.
    let held = dir.path().join("held.db");
    let conn = rusqlite::Connection::open(&held).unwrap();
    conn.execute_batch("CREATE TABLE h(x); BEGIN; SELECT * FROM h;")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["backup", "--db"])
        .arg(&other)
        .arg("--to")
        .arg(&held)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    drop(conn);
    let r = server.rpc(call("sql.query", json!({"sql": "SELECT x FROM important"})));
    assert_eq!(r["result"]["rows"][0][0], 42, "{r}");
    assert!(server.stop().success());
}

#[test]
fn junk_method_names_open_everyones_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("junk.db");
    let server = Server::start_with(
        &db,
        &[
            "--workers",
            "python3 -m litebridge_worker --root python/tests/fixtures --allow pkg.tools",
        ],
        &[("PYTHONPATH", "python")],
    );
    for i in 0..300 {
        let r = server.rpc(call(
            "bridge.call",
            json!({"method": format!("pkg.tools.junk{i}"), "params": []}),
        ));
        assert_ne!(code(&r), 0);
    }
    for _ in 0..40 {
        server.rpc(call("bridge.call", json!({"method": "pkg.tools.fail"})));
    }
    let ok = server.rpc(call(
        "bridge.call",
        json!({"method": "pkg.tools.add", "params": [1, 2]}),
    ));
    assert_eq!(ok["result"], 3, "{ok}");
    let stats = server.rpc(call("bridge.stats", json!({})));
    let methods = stats["result"]["methods"].as_array().unwrap();
    assert!(methods.len() <= 3, "junk names got no state: {methods:?}");
    assert!(server.stop().success());
}

// ---- Found by the red team in the third round -------------------------------------

#[test]
fn mcp_takes_the_last_of_a_duplicated_member() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mdup.db");
    let server = Server::start(&db, &[]);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute","arguments":{"sql":"CREATE TABLE first(x)","sql":"CREATE TABLE second(x)"}}}"#;
    let (status, _, reply) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[("Accept", "application/json, text/event-stream")],
        body.as_bytes(),
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reply));
    let r = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT count(*) FROM sqlite_schema WHERE name IN ('first', 'second')"}),
    ));
    assert_eq!(r["result"]["rows"][0][0], 0, "{r}");
    assert!(server.stop().success());
}

#[test]
fn a_backup_replaces_a_database_another_program_has_open() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    let live = dir.path().join("live.db");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch("CREATE TABLE s(x)")
        .unwrap();
    // Open and idle in rollback-journal mode: no lock held, no file beside it.
    let app = rusqlite::Connection::open(&live).unwrap();
    app.execute_batch("CREATE TABLE app(x); INSERT INTO app VALUES (1);")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["backup", "--db"])
        .arg(&source)
        .arg("--to")
        .arg(&live)
        .arg("--replace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("open"),
        "{out:?}"
    );
    app.execute("INSERT INTO app VALUES (2)", []).unwrap();
    let n: i64 = app
        .query_row("SELECT count(*) FROM app", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

// ---- Found by the red team in the fourth round ------------------------------------

#[test]
fn a_table_named_pragma_foreign_key_list_blocks_key_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pfk.db");
    let write = create_key(&db, "writer", "write", "pro");
    let admin = create_key(&db, "admin", "admin", "pro");
    let leaked = create_key(&db, "leaked", "read", "pro");
    let server = Server::start(&db, &[]);
    let x = |sql: &str| {
        server
            .rpc_as(Some(&write), &call("sql.execute", json!({"sql": sql})))
            .1
    };
    for sql in [
        "CREATE TABLE pragma_foreign_key_list(x)",
        "CREATE TABLE rk(x REFERENCES litebridge_keys(revoked_at))",
        "CREATE TABLE rq(x REFERENCES litebridge_quota(count))",
    ] {
        let r = x(sql);
        assert_eq!(code(&r), -32007, "{sql}: {r}");
    }
    let r = server
        .rpc_as(
            Some(&admin),
            &call("admin.keys.revoke", json!({"name": "leaked"})),
        )
        .1;
    assert_eq!(r["result"]["revoked"], true, "{r}");
    let (status, _) = server.rpc_as(Some(&leaked), &call("pool.health", json!({})));
    assert_eq!(status, 401);
    let r = server
        .rpc_as(
            Some(&write),
            &call(
                "memory.store",
                json!({"namespace": "n", "key": "k", "value": 1}),
            ),
        )
        .1;
    assert_eq!(r["result"]["ok"], true, "{r}");
    assert!(server.stop().success());
    // And it starts again.
    let server = Server::start(&db, &[]);
    let (status, _) = server.rpc_as(Some(&admin), &call("pool.health", json!({})));
    assert_eq!(status, 200);
    assert!(server.stop().success());
}

#[test]
fn one_batch_ran_past_its_keys_in_flight_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let config = dir.path().join("b.toml");
    std::fs::write(&config, "[quota]\nfree_concurrent = 2\n").unwrap();
    let key = create_key(&db, "batcher", "bridge", "free");
    let server = Server::start(
        &db,
        &[
            "--config",
            config.to_str().unwrap(),
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
    );
    // The attack: one message of six calls, with a key allowed two at once.
    let batch: Vec<Value> = (0..6)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": "bridge.call",
                   "params": {"method": "wait", "params": [0.4]}})
        })
        .collect();
    let started = Instant::now();
    let (status, reply) = server.rpc_as(Some(&key), &Value::Array(batch));
    let took = started.elapsed();
    assert_eq!(status, 200, "{reply}");
    let replies = reply.as_array().unwrap();
    assert_eq!(replies.len(), 6, "{reply}");
    for r in replies {
        assert_eq!(r["result"], 0.4, "every call runs, none refused: {r}");
    }
    // Two at a time: three rounds of 0.4 s (all six at once took 0.4 s).
    assert!(took >= Duration::from_millis(1150), "{took:?}");
    assert!(server.stop().success());
}

#[test]
fn one_batchs_replies_took_memory_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let config = dir.path().join("m.toml");
    std::fs::write(&config, "[db]\nmax_result_bytes = 100000\n").unwrap();
    let key = create_key(&db, "reader", "read", "free");
    let writer = create_key(&db, "writer", "read,write", "pro");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // Each reply is about 53 kB (a 40,000-byte blob in base64): one fits
    // under the limit, two do not. The attack sent twenty 16 MB blobs.
    let batch: Vec<Value> = (0..5)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": "sql.query",
                   "params": {"sql": "SELECT zeroblob(40000)"}})
        })
        .collect();
    let (status, reply) = server.rpc_as(Some(&key), &Value::Array(batch));
    assert_eq!(status, 200, "{reply}");
    let replies = reply.as_array().unwrap();
    assert_eq!(replies.len(), 5, "each request is answered");
    let mut ids: Vec<i64> = replies.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    let served = replies.iter().filter(|r| r["result"].is_object()).count();
    assert_eq!(served, 1, "{reply}");
    for r in replies.iter().filter(|r| r.get("error").is_some()) {
        assert_eq!(code(r), -32011, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("db.max_result_bytes"), "{message}");
    }
    // A write's acknowledgement is never dropped for want of room: the
    // write committed, and its reply says so.
    let (_, r) = server.rpc_as(
        Some(&writer),
        &call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})),
    );
    assert_eq!(code(&r), 0, "{r}");
    let mut batch: Vec<Value> = (0..4)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": "sql.query",
                   "params": {"sql": "SELECT zeroblob(40000)"}})
        })
        .collect();
    batch.push(json!({"jsonrpc": "2.0", "id": 9, "method": "sql.execute",
                      "params": {"sql": "INSERT INTO t VALUES (1)"}}));
    let (_, reply) = server.rpc_as(Some(&writer), &Value::Array(batch));
    let replies = reply.as_array().unwrap();
    let insert = replies.iter().find(|r| r["id"] == 9).unwrap();
    assert_eq!(insert["result"]["changes"], 1, "{insert}");
    for r in replies.iter().filter(|r| code(r) == -32011) {
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("ran") || message.contains("did not run"),
            "{message}"
        );
    }
    // A batch under the limit is answered whole.
    let small: Vec<Value> = (0..5)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "sql.query", "params": {"sql": "SELECT 1"}}))
        .collect();
    let (_, reply) = server.rpc_as(Some(&key), &Value::Array(small));
    assert!(
        reply
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"].is_object()),
        "{reply}"
    );
    assert!(server.stop().success());
}

/// Review 251: at shutdown the connections' tasks ran on past the grace
/// period (only the database's halt ended a long write), and the flush of
/// the quota counts under way was aborted, losing what it had taken: calls
/// made in the last moments before a stop were not counted, those of every
/// key. The connections end with the drain now, and the flush under way is
/// waited for.
#[test]
fn calls_before_a_stop_behind_a_long_write_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("counted.db");
    let writer = create_key(&db, "w", "read,write", "pro");
    let reader = create_key(&db, "r", "read", "pro");
    let server = Server::start_with(
        &db,
        &[],
        &[
            ("LITEBRIDGE_SECURITY_KEY_REFRESH_MS", "50"),
            ("LITEBRIDGE_SERVER_SHUTDOWN_GRACE_MS", "2000"),
        ],
    );
    let (_, r) = server.rpc_as(
        Some(&writer),
        &call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})),
    );
    assert_eq!(code(&r), 0, "{r}");
    let long = call(
        "sql.execute",
        json!({"sql": format!("INSERT INTO t {ENDLESS}"), "timeout_ms": 60_000}),
    )
    .to_string();
    let hold = {
        let head = rpc_head(
            &server.addr,
            &format!("\r\nAuthorization: Bearer {writer}"),
            long.len(),
        );
        let addr = server.addr.clone();
        std::thread::spawn(move || raw(&addr, &head, long.as_bytes()))
    };
    std::thread::sleep(Duration::from_millis(300));
    let until = Instant::now() + Duration::from_millis(1000);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (addr, key) = (server.addr.clone(), reader.clone());
            std::thread::spawn(move || {
                let body = call("sql.query", json!({"sql": "SELECT 1"})).to_string();
                let head = rpc_head(
                    &addr,
                    &format!("\r\nAuthorization: Bearer {key}"),
                    body.len(),
                );
                let mut ok = 0;
                while Instant::now() < until {
                    if raw(&addr, &head, body.as_bytes()).0 == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: i64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(ok > 10, "{ok}");
    server.stop();
    let _ = hold.join();
    let file = rusqlite::Connection::open(&db).unwrap();
    let counted: i64 = file
        .query_row(
            "SELECT coalesce(sum(count), 0) FROM litebridge_quota q
               JOIN litebridge_keys k ON k.id = q.key_id
              WHERE k.name = 'r' AND q.period LIKE 'd%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted, ok, "every call answered was counted");
}

/// Review 250: a read of a stored value built its tree twice (`json!`
/// copied it into the reply), so one value of 62 MB of tree, under the
/// result limit, took 140 MB at each read.
#[test]
fn a_read_of_a_stored_value_built_its_tree_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("twice.db");
    let server = Server::start(&db, &[]);
    // 90,000 objects of one member: 630 kB of text, some 62 MB of tree.
    let value = Value::Array(vec![json!({"": 0}); 90_000]);
    let r = server.rpc(call(
        "memory.store",
        json!({"namespace": "n", "key": "k", "value": value}),
    ));
    assert_eq!(code(&r), 0, "{r}");
    let r = server.rpc(call("state.save", json!({"run_id": "r", "state": value})));
    assert_eq!(code(&r), 0, "{r}");
    // Read by a server that has not held them yet.
    assert!(server.stop().success());
    let server = Server::start(&db, &[]);
    let before = peak_rss_mb(&server);
    let r = server.rpc(call("memory.get", json!({"namespace": "n", "key": "k"})));
    assert_eq!(r["result"]["value"].as_array().map(Vec::len), Some(90_000));
    let r = server.rpc(call("state.load", json!({"run_id": "r"})));
    assert_eq!(r["result"]["state"].as_array().map(Vec::len), Some(90_000));
    let grown = peak_rss_mb(&server) - before;
    // Once: 84 MB; twice: 143.
    assert!(grown < 110, "a read took {grown} MB more at its peak");
    assert!(server.stop().success());
}

/// Review 250: a batch whose replies did not fit went on starting its
/// requests, and dropped their replies: 190 of 200 inserts with large
/// `RETURNING` rows ran, each answered "the request ran", which its client
/// could only send again, writing it twice. Once a reply does not fit, the
/// requests not started yet do not run.
#[test]
fn a_full_batch_ran_its_writes_only_to_drop_their_replies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("full.db");
    let config = dir.path().join("full.toml");
    std::fs::write(&config, "[db]\nmax_result_bytes = 1048576\n").unwrap();
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let r = server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    assert_eq!(code(&r), 0, "{r}");
    let batch: Vec<Value> = (0..200)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": "sql.execute", "params": {
                "sql": "INSERT INTO t VALUES (?1) RETURNING x, printf('%.*c', 100000, 'y')",
                "params": [i]}})
        })
        .collect();
    let (status, reply) = server.rpc_as(None, &Value::Array(batch));
    assert_eq!(status, 200);
    let replies = reply.as_array().unwrap();
    assert_eq!(replies.len(), 200);
    let said = |r: &&Value| r["error"]["message"].as_str().unwrap_or("").to_owned();
    let served = replies.iter().filter(|r| r["result"].is_object()).count();
    let ran = replies
        .iter()
        .filter(|r| said(r).contains("the request ran"))
        .count();
    let not_run = replies
        .iter()
        .filter(|r| said(r).contains("did not run"))
        .count();
    assert_eq!(served + ran + not_run, 200, "{reply}");
    // What ran is what the replies say ran: no more.
    let rows = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT count(*) AS n FROM t"}),
    ));
    assert_eq!(rows["result"]["rows"][0][0], json!(served + ran), "{rows}");
    // At most one round of requests in flight ran past the first that did
    // not fit (32 at once for a batch).
    assert!(ran <= 32, "{ran} ran only to be dropped");
    assert!(not_run >= 150, "{not_run}");
    assert!(server.stop().success());
}

/// Review 249: a batch counted its replies as their JSON text but held
/// them as trees, and a reply of small blobs takes about 50 times its text
/// as a tree: a batch under `db.max_result_bytes` of text held hundreds of
/// megabytes.
#[test]
fn a_batch_of_small_blobs_held_many_times_what_it_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("blobs.db");
    let config = dir.path().join("blobs.toml");
    std::fs::write(&config, "[db]\nmax_result_bytes = 2097152\n").unwrap();
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // 2,000 empty blobs: about 1.3 MB counted as values (under the limit),
    // 30 kB of text; the text of about 70 of them fills the batch's share.
    // Held as trees, they took 120 MB; as text, under 30.
    let rows = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2000) \
                SELECT x'' FROM s";
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "sql.query", "params": {"sql": rows}}))
        .collect();
    let before = peak_rss_mb(&server);
    let (status, reply) = server.rpc_as(None, &Value::Array(batch));
    assert_eq!(status, 200);
    let replies = reply.as_array().unwrap();
    assert_eq!(replies.len(), 1000);
    let served = replies.iter().filter(|r| r["result"].is_object()).count();
    assert!(served >= 40, "{served} served");
    let grown = peak_rss_mb(&server) - before;
    assert!(grown < 70, "the batch took {grown} MB more at its peak");
    assert!(server.stop().success());
}

/// The peak resident size of `server`'s process, in MB.
fn peak_rss_mb(server: &Server) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn a_bridge_key_stored_cache_keys_of_any_size() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let bridge = create_key(&db, "bridge", "bridge", "pro");
    let write = create_key(&db, "writer", "write", "pro");
    let server = Server::start(&db, &["--workers", "python3 examples/worker.py"]);
    let huge = "K".repeat(2_000_000);
    let (_, r) = server.rpc_as(
        Some(&bridge),
        &call(
            "bridge.call",
            json!({"method": "echo", "params": [1], "cache_key": huge, "cache_ttl_s": 60}),
        ),
    );
    assert_eq!(code(&r), -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cache_key"),
        "{r}"
    );
    for method in ["cache.set", "cache.get", "cache.delete"] {
        let mut params = json!({"key": huge});
        if method == "cache.set" {
            params["value"] = json!(1);
        }
        let (_, r) = server.rpc_as(Some(&write), &call(method, params));
        assert_eq!(code(&r), -32602, "{method}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("key"),
            "{r}"
        );
    }
    // Up to 1024 bytes is a key like any other.
    let (_, r) = server.rpc_as(
        Some(&bridge),
        &call(
            "bridge.call",
            json!({"method": "echo", "params": [1], "cache_key": "K".repeat(1024)}),
        ),
    );
    assert_eq!(r["result"], 1, "{r}");
    // Nothing of the refused calls was stored.
    assert!(server.stop().success());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let longest: i64 = conn
        .query_row(
            "SELECT coalesce(max(length(key)), 0) FROM litebridge_cache",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(longest < 2048, "{longest}");
}

#[test]
fn a_workers_crash_told_one_caller_what_another_printed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let worker = dir.path().join("w.py");
    std::fs::write(
        &worker,
        "import os, sys, time\n\
         sys.path.insert(0, 'python')\n\
         from litebridge_worker import Worker\n\
         w = Worker()\n\
         @w.method()\n\
         def secret_job(token):\n\
         \x20   print('processing token=%s' % token, flush=True)\n\
         \x20   return 'ok'\n\
         @w.method(idempotent=False)\n\
         def crash():\n\
         \x20   time.sleep(0.3)\n\
         \x20   os._exit(3)\n\
         w.run()\n",
    )
    .unwrap();
    let victim = create_key(&db, "victim", "bridge", "pro");
    let mallory = create_key(&db, "mallory", "bridge", "pro");
    let command = format!("python3 {}", worker.display());
    let server = Server::start(&db, &["--workers", &command, "--processes", "1"]);
    let (_, r) = server.rpc_as(
        Some(&victim),
        &call(
            "bridge.call",
            json!({"method": "secret_job", "params": ["VICTIM-SECRET-4242"]}),
        ),
    );
    assert_eq!(r["result"], "ok", "{r}");
    let (_, r) = server.rpc_as(
        Some(&mallory),
        &call("bridge.call", json!({"method": "crash"})),
    );
    assert_eq!(r["error"]["data"]["kind"], "worker_crashed", "{r}");
    assert!(!r.to_string().contains("VICTIM-SECRET"), "{r}");
    assert_eq!(r["error"]["data"]["exit"], "exit code 3", "{r}");
    let log_file = server.log.clone();
    assert!(server.stop().success());
    // The operator still has the lines, in the server's log.
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("processing token=VICTIM-SECRET-4242"), "{log}");
}

#[test]
fn an_mcp_tool_call_took_two_of_its_keys_slots() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mslot.db");
    let config = dir.path().join("mslot.toml");
    std::fs::write(&config, "[quota]\nfree_concurrent = 1\n").unwrap();
    let key = create_key(&db, "agent", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT 41 + 1"}}}"#;
    let auth = format!("Bearer {key}");
    let (status, _, reply) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[
            ("Authorization", auth.as_str()),
            ("Accept", "application/json, text/event-stream"),
        ],
        body.as_bytes(),
    );
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status, 200, "{reply}");
    // A key allowed one request at a time gets its one tool call through.
    assert!(!reply.contains("quota_exceeded"), "{reply}");
    assert!(reply.contains("42"), "{reply}");
    assert!(server.stop().success());
}

#[test]
fn a_write_key_made_the_database_look_damaged_with_a_check_and_an_added_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    // `"b"` is a string until a column named b exists; then the old rows
    // break the CHECK, and the generated column becomes NULL. Another
    // program made this file so: a `write` key no longer can (below).
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE x(a, CHECK("b" = 'b'));
               INSERT INTO x(a) VALUES (1);
               ALTER TABLE x ADD COLUMN b DEFAULT 0;
               CREATE TABLE g(a, v AS ("b") NOT NULL);
               INSERT INTO g(a) VALUES (1);
               ALTER TABLE g ADD COLUMN b;"#,
        )
        .unwrap();
    }
    let write = create_key(&db, "writer", "read,write", "pro");
    let admin = create_key(&db, "admin", "admin", "pro");
    let server = Server::start(&db, &[]);
    let execute = |server: &Server, sql: &str| {
        server
            .rpc_as(Some(&write), &call("sql.execute", json!({ "sql": sql })))
            .1
    };
    let x = |sql: &str| execute(&server, sql);
    // Double quotes in a client's schema are names (forty-fifth session),
    // in a column added too.
    for sql in [
        r#"CREATE TABLE x2(a, CHECK("b" = 'b'))"#,
        r#"CREATE TABLE g2(a, v AS ("b") NOT NULL)"#,
        r#"ALTER TABLE x ADD COLUMN c AS ("d")"#,
    ] {
        let r = x(sql);
        assert_eq!(r["error"]["data"]["kind"], "sql", "{sql}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("no such column"), "{sql}: {r}");
    }
    // Backups go on, and the check calls the file sound, naming the row.
    let r = server
        .rpc_as(
            Some(&admin),
            &call("admin.backup", json!({"to": "after.db"})),
        )
        .1;
    assert_eq!(code(&r), 0, "{r}");
    let r = server
        .rpc_as(Some(&admin), &call("admin.check", json!({})))
        .1;
    assert_eq!(r["result"]["ok"], true, "{r}");
    assert_eq!(
        r["result"]["data_problems"],
        json!(["NULL value in g.v"]),
        "{r}"
    );
    let w = x("INSERT INTO x(a, b) VALUES (2, 'b')");
    assert_eq!(code(&w), 0, "{w}");
    assert!(server.stop().success());
    // The command-line check agrees, and the server starts again with every
    // acknowledged row.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["check", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NULL value in g.v"),
        "{out:?}"
    );
    let server = Server::start(&db, &[]);
    let r = server
        .rpc_as(
            Some(&write),
            &call("sql.query", json!({"sql": "SELECT count(*) FROM x"})),
        )
        .1;
    assert_eq!(r["result"]["rows"][0][0], 2, "{r}");
    // CHECK constraints still hold for new writes.
    let r = execute(&server, "INSERT INTO x(a, b) VALUES (3, 'c')");
    assert_ne!(code(&r), 0, "{r}");
    assert!(server.stop().success());
}

/// The rows of `table`, read with `key` from a server started again on
/// `db` (without `--recover`: a start refused fails here).
fn rows_after_a_restart(db: &std::path::Path, key: &str, table: &str) -> i64 {
    let server = Server::start(db, &[]);
    let sql = format!("SELECT count(*) FROM {table}");
    let r = server
        .rpc_as(Some(key), &call("sql.query", json!({ "sql": sql })))
        .1;
    assert!(server.stop().success());
    r["result"]["rows"][0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("{r}"))
}

#[test]
fn a_write_key_made_the_database_look_damaged_with_a_null_default() {
    // Review 190: `DEFAULT (CAST(NULL AS INT))` on a NOT NULL column passed
    // SQLite's own check; the old rows read NULL, the check at start took
    // it for damage, and `--recover` put an older backup in the file's
    // place (the writes since lost, a revoked key back).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("n.db");
    let write = create_key(&db, "writer", "read,write", "pro");
    let admin = create_key(&db, "admin", "admin", "pro");
    let server = Server::start(&db, &[]);
    let rpc = |key: &str, method: &str, params: serde_json::Value| {
        server.rpc_as(Some(key), &call(method, params)).1
    };
    let x = |sql: &str| rpc(&write, "sql.execute", json!({ "sql": sql }));
    for sql in [
        "CREATE TABLE t(a)",
        "INSERT INTO t VALUES (1)",
        "CREATE TABLE e(a)",
    ] {
        assert_eq!(code(&x(sql)), 0, "{sql}");
    }
    for default in ["(CAST(NULL AS INT))", "-NULL", "(CAST(NULL AS TEXT))"] {
        let sql = format!("ALTER TABLE t ADD COLUMN c NOT NULL DEFAULT {default}");
        let r = x(&sql);
        assert_eq!(r["error"]["data"]["kind"], "sql", "{sql}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("NOT NULL constraint failed: t.c"), "{r}");
        // In a batch, the whole batch is undone.
        let r = rpc(
            &write,
            "sql.batch",
            json!({"statements": [
                {"sql": "INSERT INTO t VALUES (2)"},
                {"sql": sql},
            ]}),
        );
        assert_ne!(code(&r), 0, "{r}");
    }
    // An empty table takes it (no row reads the default; SQLite refuses a
    // new row without c), and a default that is not NULL is kept.
    let r = x("ALTER TABLE e ADD COLUMN c NOT NULL DEFAULT (CAST(NULL AS INT))");
    assert_eq!(code(&r), 0, "{r}");
    let r = x("ALTER TABLE t ADD COLUMN d NOT NULL DEFAULT (CAST(2 AS INT))");
    assert_eq!(code(&r), 0, "{r}");
    let r = rpc(
        &write,
        "sql.query",
        json!({"sql": "SELECT group_concat(a || ':' || d) FROM t"}),
    );
    assert_eq!(r["result"]["rows"][0][0], "1:2", "{r}");
    // The file is sound: checked, backed up, started again without
    // `--recover`.
    let r = rpc(&admin, "admin.check", json!({}));
    assert_eq!(r["result"]["ok"], true, "{r}");
    assert_eq!(r["result"]["data_problems"], json!([]), "{r}");
    assert_eq!(code(&rpc(&admin, "admin.backup", json!({}))), 0);
    assert!(server.stop().success());
    assert_eq!(rows_after_a_restart(&db, &write, "t"), 1);
}

#[test]
fn a_write_key_made_the_database_look_damaged_with_a_second_table_spelling_a_line() {
    // Review 193: a line of the check names `table.column`, and `a` .
    // `b.c` and `a.b` . `c` spell it alike: a generated column's NULL,
    // the data's, was taken for damage once another table spelled it.
    // Another program made the generated columns' NULLs (`"q"` a string
    // until a column q exists); a `write` key no longer can.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE a(x, "b.c" AS ("q") NOT NULL);
               INSERT INTO a(x) VALUES (1);
               ALTER TABLE a ADD COLUMN q;
               CREATE TABLE v_docsize(x, g AS ("q") NOT NULL);
               INSERT INTO v_docsize(x) VALUES (1);
               ALTER TABLE v_docsize ADD COLUMN q;"#,
        )
        .unwrap();
    }
    let write = create_key(&db, "writer", "read,write", "pro");
    let admin = create_key(&db, "admin", "admin", "pro");
    let server = Server::start(&db, &[]);
    let rpc = |key: &str, method: &str, params: serde_json::Value| {
        server.rpc_as(Some(key), &call(method, params)).1
    };
    // The second spelling is refused, made by a table, a column added or
    // renamed, or a table renamed.
    for (sql, refused) in [
        (r#"CREATE TABLE "a.b"(c)"#, true),
        (r#"CREATE TABLE "a.b"(x)"#, false),
        (r#"ALTER TABLE "a.b" ADD COLUMN c"#, true),
        (r#"ALTER TABLE "a.b" RENAME COLUMN x TO c"#, true),
        (r#"DROP TABLE "a.b""#, false),
        ("CREATE TABLE z(c)", false),
        (r#"ALTER TABLE z RENAME TO "a.b""#, true),
    ] {
        let r = rpc(&write, "sql.execute", json!({ "sql": sql }));
        if refused {
            assert_eq!(r["error"]["data"]["kind"], "forbidden", "{sql}: {r}");
            let message = r["error"]["message"].as_str().unwrap();
            assert!(message.contains("a.b.c"), "{sql}: {r}");
        } else {
            assert_eq!(code(&r), 0, "{sql}: {r}");
        }
    }
    // A table a virtual table then claims by name (its shadow table): its
    // columns were left out, and its lines taken for damage (review 195).
    let sql = "CREATE VIRTUAL TABLE v USING fts5(y, columnsize=0)";
    let r = rpc(&write, "sql.execute", json!({ "sql": sql }));
    assert_eq!(code(&r), 0, "{sql}: {r}");
    let r = rpc(&admin, "admin.check", json!({}));
    assert_eq!(r["result"]["ok"], true, "{r}");
    let mut lines: Vec<&str> = r["result"]["data_problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["NULL value in a.b.c", "NULL value in v_docsize.g"],
        "{r}"
    );
    assert_eq!(code(&rpc(&admin, "admin.backup", json!({}))), 0);
    assert!(server.stop().success());
    assert_eq!(rows_after_a_restart(&db, &write, "a"), 1);
}

#[test]
fn a_pair_of_names_another_program_made_does_not_stop_every_schema_change() {
    // Review 195: the refusal of a `table.column` spelled twice looked at
    // the whole schema, and a pair already in the file refused every
    // client's schema change.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(r#"CREATE TABLE a("b.c"); CREATE TABLE "a.b"(c);"#)
            .unwrap();
    }
    let write = create_key(&db, "writer", "read,write", "pro");
    let server = Server::start(&db, &[]);
    let x = |sql: &str| {
        server
            .rpc_as(Some(&write), &call("sql.execute", json!({ "sql": sql })))
            .1
    };
    assert_eq!(code(&x("CREATE INDEX i ON a(\"b.c\")")), 0);
    assert_eq!(code(&x("CREATE TABLE other(x)")), 0);
    // A new pair is refused all the same, and named.
    let r = x(r#"CREATE TABLE "other.y"(z)"#);
    assert_eq!(code(&r), 0, "{r}");
    let r = x(r#"ALTER TABLE other ADD COLUMN "y.z""#);
    assert_eq!(r["error"]["data"]["kind"], "forbidden", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("other.y.z"),
        "{r}"
    );
    // So is one swapped for the file's (review 196: their count stayed).
    assert_eq!(code(&x(r#"CREATE TABLE s(k, "y.c")"#)), 0);
    let r = x(r#"ALTER TABLE "a.b" RENAME TO "s.y""#);
    assert_eq!(r["error"]["data"]["kind"], "forbidden", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("s.y.c"),
        "{r}"
    );
    assert!(server.stop().success());
}

#[test]
fn serve_recover_switched_off_the_memory_budget() {
    // `--recover` checked the file before the service opened it, and SQLite
    // takes its allocator once, at its first connection: the per-request
    // memory budget (db.max_request_memory) was off for the whole run, and
    // the log said so.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    for extra in [&[][..], &["--recover"][..]] {
        let server = Server::start(&db, extra);
        let r = server.rpc(call("sql.query", json!({"sql": "SELECT 1"})));
        assert_eq!(code(&r), 0, "{r}");
        let log_file = server.log.clone();
        assert!(server.stop().success());
        let log = std::fs::read_to_string(&log_file).unwrap();
        assert!(!log.contains("is not enforced"), "{extra:?}: {log}");
    }
}

#[test]
fn a_workers_reply_took_memory_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let config = dir.path().join("w.toml");
    std::fs::write(&config, "[workers]\nmax_reply_mb = 1\n").unwrap();
    let server = Server::start(
        &db,
        &[
            "--config",
            config.to_str().unwrap(),
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
    );
    // The answer is passed over, never held whole; since the twenty-eighth
    // session only its call fails (`too_large`, retried nowhere) and the
    // worker goes on (its kill took every other call it ran down with it,
    // and a retry took the next worker down too: review 121).
    let big = "x".repeat(2 << 20);
    let r = server.rpc(call(
        "bridge.call",
        json!({"method": "echo", "params": [big]}),
    ));
    assert_eq!(
        r["error"]["data"]["kind"],
        "too_large",
        "{}",
        &r.to_string()[..300.min(r.to_string().len())]
    );
    let r = server.rpc(call(
        "bridge.call",
        json!({"method": "echo", "params": ["small"]}),
    ));
    assert_eq!(r["result"], "small", "{r}");
    let stats = server.rpc(call("bridge.stats", json!({})));
    assert_eq!(stats["result"]["restarts"], 0, "{stats}");
    assert!(server.stop().success());
}

/// Review 230: a line a worker wrote before `$/ready` was logged whole at
/// `warn` (an answer with its result, say: a call's data, which the log
/// never holds at its default level). It is logged by its kind now.
#[test]
fn what_a_worker_writes_before_it_is_ready_is_logged_by_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("early.db");
    let worker = dir.path().join("early.py");
    std::fs::write(
        &worker,
        "import runpy, sys\n\
         sys.stdout.write('{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":\"secret-value-xyz\"}\\n')\n\
         sys.stdout.write('{\"jsonrpc\":\"2.0\",\"method\":\"note\",\"params\":\"secret-value-abc\"}\\n')\n\
         sys.stdout.flush()\n\
         runpy.run_path('examples/worker.py', run_name='__main__')\n",
    )
    .unwrap();
    let command = format!("python3 {}", worker.display());
    let server = Server::start(&db, &["--workers", &command, "--processes", "1"]);
    let r = server.rpc(call(
        "bridge.call",
        json!({"method": "echo", "params": ["ok"]}),
    ));
    assert_eq!(r["result"], "ok", "{r}");
    let log_file = server.log.clone();
    assert!(server.stop().success());
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("before $/ready: an answer to call 5"), "{log}");
    assert!(log.contains("before $/ready: a notification"), "{log}");
    assert!(!log.contains("secret-value"), "{log}");
}

/// Review 230: every line a worker wrote to stderr was logged at `info`, so
/// a handler printing in a loop filled the operator's disk. At most 200 a
/// second are logged per worker now, and the rest counted.
#[test]
fn a_worker_flooding_its_stderr_does_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flood.db");
    let server = Server::start_with(
        &db,
        &[
            "--workers",
            "python3 crates/litebridge/tests/workers/test_worker.py",
            "--processes",
            "1",
        ],
        &[("PYTHONPATH", "python")],
    );
    let r = server.rpc(call(
        "bridge.call",
        json!({"method": "flood_stderr", "params": [20000]}),
    ));
    assert_eq!(r["result"], 20000, "{r}");
    // The count is logged when the worker ends too (review 231: only with
    // a line after the second, which may never come).
    let log_file = server.log.clone();
    assert!(server.stop().success());
    let log = std::fs::read_to_string(&log_file).unwrap();
    let logged = log.matches("flooded line").count();
    assert!(logged <= 200, "{logged} of 20,000 lines logged");
    assert!(logged >= 100, "{logged} lines logged");
    assert!(
        log.contains(&format!("[{} stderr lines not logged", 20000 - logged)),
        "no count logged"
    );
}

#[test]
fn a_web_pages_img_tag_reaches_a_keyless_server_without_an_origin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("img.db");
    let server = Server::start(&db, &[]);
    // What `<img src="http://127.0.0.1:7070/events">` on another site
    // sends: a loopback Host, no Origin, Sec-Fetch-Site: cross-site.
    for path in ["/events", "/api/dashboard", "/metrics", "/"] {
        let (status, reply) = raw(
            &server.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors"
            ),
            b"",
        );
        assert_eq!(status, 403, "{path}: {reply}");
    }
    let body = call("sql.execute", json!({"sql": "CREATE TABLE pwned(x)"})).to_string();
    // A form it submits navigates too, but posts.
    for extra in [
        "\r\nSec-Fetch-Site: cross-site",
        "\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate",
    ] {
        let (status, reply) = raw(
            &server.addr,
            &rpc_head("127.0.0.1", extra, body.len()),
            body.as_bytes(),
        );
        assert_eq!(status, 403, "{extra}: {reply}");
    }
    // An event stream opened in a frame or a window navigates too.
    for path in ["/events", "/api/dashboard"] {
        let (status, reply) = raw(
            &server.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate"
            ),
            b"",
        );
        assert_eq!(status, 403, "{path}: {reply}");
    }
    // The server's own page, a typed address and tools without the header.
    for extra in [
        "\r\nSec-Fetch-Site: same-origin",
        "\r\nSec-Fetch-Site: none",
        "",
    ] {
        let (status, reply) = raw(
            &server.addr,
            &format!("GET /api/dashboard HTTP/1.1\r\nHost: 127.0.0.1{extra}"),
            b"",
        );
        assert_eq!(status, 200, "{extra}: {reply}");
    }
    // A link to the dashboard on another site's page: the browser opens
    // the page (it holds no data, and that site cannot read it).
    let (status, reply) = raw(
        &server.addr,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate",
        b"",
    );
    assert_eq!(status, 200, "{reply}");
    let tables = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT count(*) FROM sqlite_schema WHERE name = 'pwned'"}),
    ));
    assert_eq!(tables["result"]["rows"][0][0], 0);
    assert!(server.stop().success());
}

#[test]
fn a_revoked_keys_batch_went_on_to_mint_an_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let config = dir.path().join("r.toml");
    // One call at a time for the free tier: the batch's calls run in turn.
    std::fs::write(&config, "[quota]\nfree_concurrent = 1\n").unwrap();
    let leaked = create_key(&db, "leaked", "admin", "free");
    let operator = create_key(&db, "operator", "admin", "enterprise");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // The attack: a slow read first, then a new admin key, sent before the
    // leaked key is revoked and still running after.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "sql.query", "params": {
            "sql": ENDLESS,
            "timeout_ms": 1500}},
        {"jsonrpc": "2.0", "id": 2, "method": "admin.keys.create",
         "params": {"scope": "admin", "name": "backdoor"}},
    ])
    .to_string();
    let addr = server.addr.clone();
    let head = rpc_head(
        &addr,
        &format!("\r\nAuthorization: Bearer {leaked}"),
        batch.len(),
    );
    let attack = std::thread::spawn(move || raw(&addr, &head, batch.as_bytes()));
    std::thread::sleep(Duration::from_millis(400));
    let (status, r) = server.rpc_as(
        Some(&operator),
        &call("admin.keys.revoke", json!({"name": "leaked"})),
    );
    assert_eq!(
        (status, &r["result"]["revoked"]),
        (200, &json!(true)),
        "{r}"
    );
    let (status, body) = attack.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let replies: Value = serde_json::from_str(&body).unwrap();
    let minted = replies
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 2)
        .unwrap();
    assert_eq!(code(minted), -32006, "{minted}");
    assert!(
        minted["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{minted}"
    );
    let (_, listed) = server.rpc_as(Some(&operator), &call("admin.keys.list", json!({})));
    assert!(!listed.to_string().contains("backdoor"), "{listed}");
    assert!(server.stop().success());
}

#[test]
fn mcp_ran_past_the_servers_request_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mlimit.db");
    let config = dir.path().join("mlimit.toml");
    std::fs::write(&config, "[server]\nmax_concurrent_requests = 1\n").unwrap();
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // The server's one place, held by a slow read.
    let slow = call(
        "sql.query",
        json!({"sql": ENDLESS,
               "timeout_ms": 1500}),
    )
    .to_string();
    let addr = server.addr.clone();
    let head = rpc_head(&addr, "", slow.len());
    let holder = std::thread::spawn(move || raw(&addr, &head, slow.as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    // The attack: a tool call on /mcp while it is held.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query","arguments":{"sql":"SELECT 41 + 1"}}}"#;
    let (status, _, reply) = server.request_with(
        "POST",
        "/mcp",
        Some("application/json"),
        &[("Accept", "application/json, text/event-stream")],
        body.as_bytes(),
    );
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("-32002"), "refused as on /rpc: {reply}");
    assert!(!reply.contains("42"), "{reply}");
    let (status, held) = holder.join().unwrap();
    assert_eq!(status, 200, "{held}");
    assert!(server.stop().success());
}

#[test]
fn a_same_host_reverse_proxy_gave_the_network_keyless_admin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proxy.db");
    let server = Server::start(&db, &[]);
    let body = call("admin.keys.list", json!({})).to_string();
    // What nginx's `proxy_pass http://127.0.0.1:PORT` forwards: a loopback
    // Host, and the headers it adds.
    for extra in [
        "\r\nX-Forwarded-For: 203.0.113.9",
        "\r\nX-Real-IP: 203.0.113.9",
        "\r\nForwarded: for=203.0.113.9;host=db.example.com",
        "\r\nX-Forwarded-Host: db.example.com",
        "\r\nVia: 1.1 nginx",
        // Envoy's defaults: the client's Host passed on, and these.
        "\r\nX-Forwarded-Proto: https",
        "\r\nX-Envoy-Expected-Rq-Timeout-Ms: 15000",
        "\r\nCF-Connecting-IP: 203.0.113.9",
        "\r\nTrue-Client-IP: 203.0.113.9",
    ] {
        let (status, reply) = raw(
            &server.addr,
            &rpc_head(&server.addr, extra, body.len()),
            body.as_bytes(),
        );
        assert_eq!(status, 401, "{extra}: {reply}");
        assert!(
            reply.contains("proxy") && reply.contains("keys create"),
            "{reply}"
        );
        assert!(!reply.contains("\"result\""), "{reply}");
    }
    // A local program, as before.
    let (status, reply) = raw(
        &server.addr,
        &rpc_head(&server.addr, "", body.len()),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"result\""), "{reply}");
    assert!(server.stop().success());
}

#[test]
fn two_authorization_headers_let_the_first_one_speak() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("twokeys.db");
    let reader = create_key(&db, "reader", "read", "free");
    let admin = create_key(&db, "admin", "admin", "free");
    let server = Server::start(&db, &[]);
    let body = call("admin.keys.list", json!({})).to_string();
    for (first, second) in [(&admin, &reader), (&reader, &admin)] {
        let extra = format!("\r\nAuthorization: Bearer {first}\r\nAuthorization: Bearer {second}");
        let (status, reply) = raw(
            &server.addr,
            &rpc_head(&server.addr, &extra, body.len()),
            body.as_bytes(),
        );
        assert_eq!(status, 401, "{reply}");
        assert!(reply.contains("more than one Authorization"), "{reply}");
    }
    assert!(server.stop().success());
}

/// Review 246: a key whose daily quota was spent still had each request's
/// body read and parsed before it was refused (eight bodies of 16 MB took
/// 9.5 s of the server's CPU), and its MCP notifications were read and
/// accepted. Such a key is now refused before its body: here a head whose
/// body never comes is answered 429 at once, on `/rpc` and on `/mcp`.
#[test]
fn a_key_whose_quota_is_spent_is_refused_before_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spent.db");
    let config = dir.path().join("spent.toml");
    std::fs::write(&config, "[quota]\nfree_daily = 1\n").unwrap();
    let key = create_key(&db, "spent", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let (status, r) = server.rpc_as(Some(&key), &call("sql.query", json!({"sql": "SELECT 1"})));
    assert_eq!(status, 200, "{r}");
    let auth = format!("\r\nAuthorization: Bearer {key}");
    for path in ["/rpc", "/mcp"] {
        let head = rpc_head(&server.addr, &auth, 1 << 20).replacen("/rpc", path, 1);
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let extra = if path == "/mcp" {
            "\r\nAccept: application/json, text/event-stream"
        } else {
            ""
        };
        s.write_all(format!("{head}{extra}\r\n\r\n").as_bytes())
            .unwrap();
        let started = Instant::now();
        let mut answer = [0u8; 4096];
        let n = s.read(&mut answer).unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 429"), "{path}: {text}");
        assert!(text.contains("\"daily\""), "{path}: {text}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    }
    assert!(server.stop().success());
}

/// Review 246: litebridge's own reads (the keys' refresh among them) took
/// the read lane's connections as clients' reads do, so a key holding every
/// reader with long reads kept a revocation from taking effect, and
/// `admin.keys.revoke` from answering, until those reads ended. One
/// connection is kept for litebridge's own reads now.
#[test]
fn a_key_holding_every_reader_does_not_hold_back_a_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lane.db");
    let hog = create_key(&db, "hog", "read", "pro");
    let admin = create_key(&db, "admin", "admin", "pro");
    let victim = create_key(&db, "victim", "read", "pro");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_DB_READERS", "2")]);
    let long = call("sql.query", json!({"sql": ENDLESS, "timeout_ms": 8_000})).to_string();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (addr, long) = (server.addr.clone(), long.clone());
            let head = rpc_head(
                &addr,
                &format!("\r\nAuthorization: Bearer {hog}"),
                long.len(),
            );
            std::thread::spawn(move || raw(&addr, &head, long.as_bytes()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    // A store's read, which any key may ask for, waits for a reader: the
    // kept one is the keys' (review 248: `memory.list` loops held it).
    let store = {
        let (addr, hog) = (server.addr.clone(), hog);
        std::thread::spawn(move || {
            let body = call("memory.get", json!({"namespace": "n", "key": "k"})).to_string();
            let head = rpc_head(
                &addr,
                &format!("\r\nAuthorization: Bearer {hog}"),
                body.len(),
            );
            let asked = Instant::now();
            let (status, _) = raw(&addr, &head, body.as_bytes());
            (status, asked.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let (status, r) = server.rpc_as(
        Some(&admin),
        &call("admin.keys.revoke", json!({"name": "victim"})),
    );
    assert_eq!(status, 200, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (status, r) = server.rpc_as(Some(&victim), &call("pool.health", json!({})));
    assert_eq!(status, 401, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (status, waited) = store.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        waited > Duration::from_secs(5),
        "a store's read took the kept reader: {waited:?}"
    );
    for h in holders {
        let _ = h.join();
    }
    assert!(server.stop().success());
}

/// Review 248: a revocation is a write, queued behind every key's writes,
/// so a write key whose long writes kept the writer busy kept its own
/// revocation from taking effect. `admin.keys.revoke` now refuses the key
/// on its server at once, before the write is done.
#[test]
fn a_write_key_keeping_the_writer_busy_is_refused_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let writer = create_key(&db, "wf", "write", "pro");
    let admin = create_key(&db, "admin", "admin", "pro");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_DB_MAX_WRITE_HOLD_MS", "4000")]);
    let (status, r) = server.rpc_as(
        Some(&writer),
        &call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})),
    );
    assert_eq!(status, 200, "{r}");
    let long = call(
        "sql.execute",
        json!({"sql": format!("INSERT INTO t {ENDLESS}"), "timeout_ms": 60_000}),
    )
    .to_string();
    let hold = {
        let (addr, head) = (
            server.addr.clone(),
            rpc_head(
                &server.addr,
                &format!("\r\nAuthorization: Bearer {writer}"),
                long.len(),
            ),
        );
        std::thread::spawn(move || raw(&addr, &head, long.as_bytes()))
    };
    std::thread::sleep(Duration::from_millis(500));
    let revoke = {
        let (addr, body) = (
            server.addr.clone(),
            call("admin.keys.revoke", json!({"name": "wf"})).to_string(),
        );
        let head = rpc_head(
            &addr,
            &format!("\r\nAuthorization: Bearer {admin}"),
            body.len(),
        );
        std::thread::spawn(move || raw(&addr, &head, body.as_bytes()))
    };
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let (status, r) = server.rpc_as(
        Some(&writer),
        &call("sql.query", json!({"sql": "SELECT 1"})),
    );
    assert_eq!(
        status, 401,
        "the key still worked while its revocation waited: {r}"
    );
    assert!(asked.elapsed() < Duration::from_secs(2));
    let (status, said) = revoke.join().unwrap();
    assert_eq!(status, 200, "{said}");
    let _ = hold.join();
    assert!(server.stop().success());
}

/// Review 248: a reply was held by the server until its client read it,
/// while the key's place among its requests in flight was given back at
/// once: one request at a time, never read, held 2.5 GB. A large reply now
/// keeps its key's place until it is written.
#[test]
fn a_key_that_does_not_read_its_replies_holds_its_places_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unread.db");
    let config = dir.path().join("unread.toml");
    std::fs::write(&config, "[quota]\nfree_concurrent = 1\n").unwrap();
    let key = create_key(&db, "reader", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // 24 MB of reply, more than the sockets' buffers hold.
    let big = call(
        "sql.query",
        json!({"sql": "SELECT printf('%.*c', 24000000, 'x')"}),
    )
    .to_string();
    let auth = format!("\r\nAuthorization: Bearer {key}\r\nConnection: close");
    let mut unread = TcpStream::connect(&server.addr).unwrap();
    unread
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    unread
        .write_all(format!("{}\r\n\r\n{big}", rpc_head(&server.addr, &auth, big.len())).as_bytes())
        .unwrap();
    let mut head = [0u8; 4096];
    let n = unread.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(500));
    // Its reply not read: the key's one place is still taken.
    let (status, r) = server.rpc_as(Some(&key), &call("sql.query", json!({"sql": "SELECT 1"})));
    assert_eq!(status, 429, "{r}");
    assert_eq!(r["error"]["data"]["quota"], "concurrent", "{r}");
    // Read to its end, the place is given back.
    let mut rest = Vec::new();
    let _ = unread.read_to_end(&mut rest);
    drop(unread);
    std::thread::sleep(Duration::from_millis(300));
    let (status, r) = server.rpc_as(Some(&key), &call("sql.query", json!({"sql": "SELECT 1"})));
    assert_eq!(status, 200, "{r}");
    // A client that reads each reply whole before its next request never
    // finds the place still taken.
    let medium = call(
        "sql.query",
        json!({"sql": "SELECT printf('%.*c', 300000, 'x')"}),
    )
    .to_string();
    for i in 0..30 {
        let (status, said) = raw(
            &server.addr,
            &rpc_head(&server.addr, &auth, medium.len()),
            medium.as_bytes(),
        );
        assert_eq!(status, 200, "round {i}: {}", &said[..said.len().min(300)]);
    }
    assert!(server.stop().success());
}

#[test]
fn a_key_at_its_limit_held_the_servers_places_with_slow_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("slowbody.db");
    let config = dir.path().join("slowbody.toml");
    std::fs::write(
        &config,
        "[quota]\nfree_concurrent = 1\n[server]\nmax_concurrent_requests = 2\n",
    )
    .unwrap();
    let attacker = create_key(&db, "attacker", "read", "free");
    let other = create_key(&db, "other", "read", "pro");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // The attacker's one slot, held by a slow read.
    let slow = call("sql.query", json!({"sql": ENDLESS, "timeout_ms": 3000})).to_string();
    let addr = server.addr.clone();
    let auth = format!("\r\nAuthorization: Bearer {attacker}");
    let head = rpc_head(&addr, &auth, slow.len());
    let holder = std::thread::spawn(move || raw(&addr, &head, slow.as_bytes()));
    std::thread::sleep(Duration::from_millis(400));
    // The attack: requests whose bodies never come, each of which used to
    // hold one of the server's two places for `server.read_timeout_ms`.
    let mut trickles = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{}\r\n\r\n", rpc_head(&server.addr, &auth, 100)).as_bytes())
            .unwrap();
        trickles.push(s);
    }
    // Each is refused at once, before its body: 429, the key's limit named.
    for mut s in trickles {
        let started = Instant::now();
        let mut head = [0u8; 4096];
        let n = s.read(&mut head).unwrap();
        let text = String::from_utf8_lossy(&head[..n]);
        assert!(text.starts_with("HTTP/1.1 429"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("retry-after: 1"),
            "{text}"
        );
        assert!(text.contains("\"concurrent\""), "{text}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Another key still finds the server's other place free.
    let (status, r) = server.rpc_as(
        Some(&other),
        &call("sql.query", json!({"sql": "SELECT 42"})),
    );
    assert_eq!(
        (status, &r["result"]["rows"][0][0]),
        (200, &json!(42)),
        "{r}"
    );
    let (status, held) = holder.join().unwrap();
    assert_eq!(status, 200, "{held}");
    assert!(held.contains("timeout"), "{held}");
    assert!(server.stop().success());
}

#[test]
fn a_refused_request_gives_its_keys_slot_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("slotback.db");
    let config = dir.path().join("slotback.toml");
    std::fs::write(
        &config,
        "[quota]\nfree_concurrent = 1\nfree_daily = 100\n\
         [server]\nmax_concurrent_requests = 1\nread_timeout_ms = 300\n",
    )
    .unwrap();
    let key = create_key(&db, "one", "read", "free");
    let other = create_key(&db, "other", "read", "pro");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let auth = format!("\r\nAuthorization: Bearer {key}");
    let ok = |server: &Server| {
        let (status, r) = server.rpc_as(Some(&key), &call("sql.query", json!({"sql": "SELECT 7"})));
        assert_eq!(
            (status, &r["result"]["rows"][0][0]),
            (200, &json!(7)),
            "{r}"
        );
    };
    let body = call("sql.query", json!({"sql": "SELECT 1"})).to_string();
    // 415: not JSON.
    let head = format!(
        "POST /rpc HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}{auth}",
        server.addr,
        body.len()
    );
    assert_eq!(raw(&server.addr, &head, body.as_bytes()).0, 415);
    ok(&server);
    // 413: a body past the limit, refused by its length.
    let head = rpc_head(&server.addr, &auth, 64 * 1024 * 1024);
    assert_eq!(raw(&server.addr, &head, b"").0, 413);
    ok(&server);
    // 408: a body that never comes.
    let head = rpc_head(&server.addr, &auth, 100);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{head}\r\n\r\n").as_bytes()).unwrap();
    let mut answer = [0u8; 512];
    let n = s.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    drop(s);
    ok(&server);
    // -32002: the server's one place is held by another key.
    let slow = call("sql.query", json!({"sql": ENDLESS, "timeout_ms": 800})).to_string();
    let (addr, held_by) = (
        server.addr.clone(),
        format!("\r\nAuthorization: Bearer {other}"),
    );
    let head = rpc_head(&addr, &held_by, slow.len());
    let holder = std::thread::spawn(move || raw(&addr, &head, slow.as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    let (_, r) = server.rpc_as(Some(&key), &call("sql.query", json!({"sql": "SELECT 1"})));
    assert_eq!(r["error"]["code"], -32002, "{r}");
    assert_eq!(holder.join().unwrap().0, 200);
    ok(&server);
    assert!(server.stop().success());
}

#[test]
fn an_event_stream_refused_at_the_keys_limit_cost_a_call_of_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evq.db");
    let config = dir.path().join("evq.toml");
    std::fs::write(&config, "[quota]\nfree_concurrent = 1\nfree_daily = 2\n").unwrap();
    let key = create_key(&db, "reader", "read", "free");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    // The key's one slot, held by a slow read (one call of two).
    let slow = call("sql.query", json!({"sql": ENDLESS, "timeout_ms": 1000})).to_string();
    let (addr, auth) = (
        server.addr.clone(),
        format!("\r\nAuthorization: Bearer {key}"),
    );
    let head = rpc_head(&addr, &auth, slow.len());
    let holder = std::thread::spawn(move || raw(&addr, &head, slow.as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    let bearer = format!("Bearer {key}");
    for _ in 0..3 {
        let (status, _, reply) = server.request_with(
            "GET",
            "/events",
            None,
            &[("Authorization", bearer.as_str())],
            b"",
        );
        assert_eq!(status, 429, "{}", String::from_utf8_lossy(&reply));
        assert!(String::from_utf8_lossy(&reply).contains("concurrent"));
    }
    assert_eq!(holder.join().unwrap().0, 200);
    // The refused streams cost nothing: the day's second call goes through.
    let (_, r) = server.rpc_as(Some(&key), &call("sql.query", json!({"sql": "SELECT 1"})));
    assert!(r["result"].is_object(), "{r}");
    assert!(server.stop().success());
}

/// Workers inherited the server's whole environment, its settings among
/// them (`LITEBRIDGE_POSTGRES_URL` names the owner role, which can write
/// the keys table; `LITEBRIDGE_NATS_PASSWORD`): a handler that echoes
/// `os.environ` handed them to whoever read its output. Workers now get
/// the environment without litebridge's own settings.
#[test]
fn a_worker_read_the_servers_settings_from_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("env.db");
    let worker = dir.path().join("env_worker.py");
    std::fs::write(
        &worker,
        format!(
            "import os, sys\n\
             sys.path.insert(0, {python:?})\n\
             from litebridge_worker import Worker\n\
             worker = Worker()\n\
             @worker.method()\n\
             def environ():\n    \
                 return sorted(k for k in os.environ if k.startswith('LITEBRIDGE_') or k == 'LB_KEPT_FOR_THE_WORKER')\n\
             worker.run()\n",
            python = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python"),
        ),
    )
    .unwrap();
    let command = format!("python3 {}", worker.display());
    let server = Server::start_with(
        &db,
        &["--workers", &command],
        &[
            ("LITEBRIDGE_SERVER_LOG_LEVEL", "warn"),
            ("LB_KEPT_FOR_THE_WORKER", "1"),
        ],
    );
    let r = server
        .rpc_as(None, &call("bridge.call", json!({"method": "environ"})))
        .1;
    assert_eq!(r["result"], json!(["LB_KEPT_FOR_THE_WORKER"]), "{r}");
    assert!(server.stop().success());
}

/// A keyless server on loopback let in every program of the machine as
/// the local user: another user's (or a sidecar container's sharing the
/// network namespace) took admin with `admin.keys.create`, and with it the
/// only key, locking the owner out. Only programs running as litebridge's
/// own user are let in now. Needs root, to run a client as `nobody`;
/// skipped otherwise.
#[test]
fn another_user_on_the_machine_took_admin_of_a_keyless_server() {
    if !root() {
        eprintln!("skipped: running a client as another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let server = Server::start(&db, &[]);
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let body = call(
        "admin.keys.create",
        json!({"scope": "admin", "name": "mine"}),
    )
    .to_string();
    // bash's own /dev/tcp: nothing else to be found as `nobody`.
    let request = format!(
        "POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let script = format!("exec 3<>/dev/tcp/{host}/{port}; printf '%s' \"$0\" >&3; cat <&3");
    let out = as_nobody(&script, &request);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("HTTP/1.1 401 "), "{said}");
    assert!(said.contains("another user (uid 65534)"), "{said}");
    // No key was made, and the owner's programs still get in.
    let (status, r) = server.rpc_as(None, &call("admin.keys.list", json!({})));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["keys"], json!([]), "{r}");
    assert!(server.stop().success());
}

/// The kernel lists a socket its program closed with uid 0: a request
/// sent by another user, closed at once, and accepted only later (queued
/// behind a full server) passed for root's, and so for the local user's.
#[test]
fn a_request_sent_then_closed_before_it_was_accepted_is_not_roots() {
    if !root() {
        eprintln!("skipped: running a client as another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queued.db");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_SERVER_MAX_CONNECTIONS", "1")]);
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    // The server's one connection, held: the next waits in the kernel.
    let held = std::net::TcpStream::connect(&server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let body = call(
        "admin.keys.create",
        json!({"scope": "admin", "name": "mine"}),
    )
    .to_string();
    // A second request cut short after it keeps the connection's end from
    // being read as the end of the first.
    let request = format!(
        "POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}POST /rpc HTTP/1.1\r\nHost: {host}\r\n",
        body.len()
    );
    let script = format!("exec 3<>/dev/tcp/{host}/{port}; printf '%s' \"$0\" >&3; exec 3>&-");
    let out = as_nobody(&script, &request);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Long enough for the closed socket to be listed as uid 0.
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let (status, r) = server.rpc_as(None, &call("admin.keys.list", json!({})));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["keys"], json!([]), "a key was made: {r}");
    assert!(server.stop().success());
}

/// Review 246: the look at who connected failed once the server had no
/// descriptor left, and a failed look was taken for a system that cannot
/// tell, so the request was let in as the local user's. Another user's
/// idle connections ran a server under the common limit of 1,024 files
/// out of descriptors, and its next keyless request created an admin key.
/// A look that fails is now a refusal (503, to be tried again); here the
/// server runs under a hard limit of 160 files, which it cannot raise.
#[test]
fn a_server_out_of_descriptors_lets_no_keyless_request_in() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("starved.db");
    let log = db.with_extension("log");
    let (child, addr) = common::spawn_serve_under(
        &["prlimit", "--nofile=160:160"],
        &db,
        &[],
        &[],
        std::fs::File::create(&log).unwrap().into(),
    );
    let server = Server { child, addr, log };
    let list = call("admin.keys.list", json!({})).to_string();
    let post = |s: &mut TcpStream| {
        let head = format!(
            "POST /rpc HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            server.addr,
            list.len()
        );
        s.write_all(format!("{head}{list}").as_bytes()).unwrap();
        let mut answer = vec![0u8; 4096];
        let n = s.read(&mut answer).unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    // Accepted while descriptors were free; its request comes later.
    let mut victim = TcpStream::connect(&server.addr).unwrap();
    victim
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Past the limit: the last wait in the listen backlog.
    let to: std::net::SocketAddr = server.addr.parse().unwrap();
    let idle: Vec<TcpStream> = (0..200)
        .map_while(|_| TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let said = post(&mut victim);
    assert!(said.starts_with("HTTP/1.1 503 "), "{said}");
    assert!(said.contains("could not look up which user"), "{said}");
    assert!(said.contains("Too many open files"), "{said}");
    assert!(said.contains("-32010"), "{said}");
    // Descriptors back: the same connection is let in.
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let said = post(&mut victim);
    assert!(said.starts_with("HTTP/1.1 200 "), "{said}");
    assert!(said.contains(r#""keys":[]"#), "{said}");
    drop(victim);
    assert!(server.stop().success());
}

/// Whether the tests run as root (who may run a client as another user).
fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Runs bash `script` (with `arg` as its `$0`) as `nobody`; its own
/// `/dev/tcp` is the client, as nothing else may be found as that user.
fn as_nobody(script: &str, arg: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/bash",
            "-c",
        ])
        .args([script, arg])
        .output()
        .unwrap()
}

/// Found by a hostile review: a key's place was given back when its call
/// timed out (or its client hung up) while a synchronous handler ran on,
/// so a key allowed two requests at once could hold every worker by
/// sending calls with `timeout_ms: 1` one after another. A call its caller
/// abandoned now keeps a place of its key until its worker is done.
#[test]
fn a_key_held_every_worker_by_abandoning_its_calls() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let config = dir.path().join("a.toml");
    std::fs::write(&config, "[quota]\nfree_concurrent = 2\n").unwrap();
    let worker = dir.path().join("w.py");
    std::fs::write(
        &worker,
        "import sys, time\n\
         sys.path.insert(0, 'python')\n\
         from litebridge_worker import Worker\n\
         w = Worker()\n\
         @w.method()\n\
         def nap(seconds):\n\
         \x20   time.sleep(seconds)\n\
         \x20   return seconds\n\
         w.run()\n",
    )
    .unwrap();
    let key = create_key(&db, "hangs-up", "bridge", "free");
    let command = format!("python3 {}", worker.display());
    let server = Server::start(
        &db,
        &[
            "--config",
            config.to_str().unwrap(),
            "--workers",
            &command,
            "--processes",
            "1",
        ],
    );
    let abandon = || {
        call(
            "bridge.call",
            json!({"method": "nap", "params": [1.5], "timeout_ms": 100}),
        )
    };
    for _ in 0..2 {
        let (_, r) = server.rpc_as(Some(&key), &abandon());
        assert_eq!(r["error"]["data"]["kind"], "timeout", "{r}");
    }
    // Both naps still run: the key's two places are theirs.
    let (status, r) = server.rpc_as(Some(&key), &abandon());
    assert_eq!(status, 429, "{r}");
    assert!(r.to_string().contains("concurrent"), "{r}");
    // A batch does not pile them up either: nothing of it runs.
    let batch = || -> Value {
        (0..4)
            .map(|i| {
                json!({"jsonrpc": "2.0", "id": i, "method": "bridge.call",
                       "params": {"method": "nap", "params": [1.5], "timeout_ms": 100}})
            })
            .collect()
    };
    let (status, r) = server.rpc_as(Some(&key), &batch());
    assert_eq!(status, 429, "{r}");
    // Once the naps are done, the key's places are back.
    std::thread::sleep(Duration::from_millis(1600));
    let (_, r) = server.rpc_as(
        Some(&key),
        &call("bridge.call", json!({"method": "nap", "params": [0]})),
    );
    assert_eq!(r["result"], 0, "{r}");
    let (status, r) = server.rpc_as(Some(&key), &batch());
    assert_eq!(status, 200, "{r}");
    let kinds: Vec<String> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["error"]["data"]["kind"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    let timed_out = kinds.iter().filter(|k| *k == "timeout").count();
    assert!(
        timed_out <= 2,
        "a batch ran past its key's places: {kinds:?}"
    );
    assert!(server.stop().success());
}
