//! Hand-picked hostile requests, each sent over HTTP (with a write-scoped
//! key) and over stdio (local scopes `write`), each with the one answer the
//! specification allows. Afterwards the server is healthy, the sentinel data
//! is intact and no file was written outside the database.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod common;

/// What a request must get back.
#[derive(Debug, Clone)]
enum Expect {
    /// A result.
    Ok,
    /// An error with this code.
    Code(i64),
    /// No reply at all (notifications).
    Silent,
    /// A batch reply: these codes in any order (0 for a result).
    Batch(Vec<i64>),
}

use Expect::{Batch, Code, Ok as Fine, Silent};

fn req(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).to_string()
}

fn q(sql: &str) -> String {
    req("sql.query", json!({"sql": sql}))
}

fn x(sql: &str) -> String {
    req("sql.execute", json!({"sql": sql}))
}

const PARSE: i64 = -32700;
const INVALID: i64 = -32600;
const NO_METHOD: i64 = -32601;
const PARAMS: i64 = -32602;
const SQL: i64 = -32000;
const TIMEOUT: i64 = -32001;
const FORBIDDEN: i64 = -32007;
const READ_ONLY: i64 = -32009;

fn cases(dir: &str) -> Vec<(String, Expect)> {
    let mut c: Vec<(String, Expect)> = Vec::new();
    let mut add = |raw: String, e: Expect| c.push((raw, e));

    // --- malformed JSON: -32700, id null --------------------------------------
    for raw in [
        "{",
        "}",
        "[",
        "]",
        "nul",
        "tru",
        "{\"jsonrpc\":\"2.0\"",
        "{\"a\":1,}",
        "[1,2,]",
        "{'jsonrpc':'2.0'}",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "01",
        "\"unterminated",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\ud800\"}",
        "{} {}",
        "// comment",
        "/* c */ {}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"sql.query\",\"params\":[\"SELECT 1\"],\"id\":1",
        "\u{feff}{\"jsonrpc\":\"2.0\",\"method\":\"pool.health\",\"id\":1}",
        "{\"a\" 1}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "undefined",
        "{\"jsonrpc\":\"2.0\",,}",
        "\"\\u0000",
        "{\"\\u\":1}",
    ] {
        add(raw.to_owned(), Code(PARSE));
    }
    let deep_object = format!("{}1{}", "{\"a\":".repeat(300), "}".repeat(300));
    add(deep_object, Code(PARSE));
    let deep_array = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    add(deep_array, Code(PARSE));

    // --- not a request: -32600 --------------------------------------------------
    for raw in [
        "1",
        "\"sql.query\"",
        "true",
        "null",
        "{}",
        "[]",
        "-0",
        "{\"id\":1}",
    ] {
        add(raw.to_owned(), Code(INVALID));
    }
    for raw in [
        r#"{"method":"pool.health","id":1}"#,
        r#"{"jsonrpc":"1.0","method":"pool.health","id":1}"#,
        r#"{"jsonrpc":2.0,"method":"pool.health","id":1}"#,
        r#"{"jsonrpc":"2.0 ","method":"pool.health","id":1}"#,
        r#"{"jsonrpc":"2.0","method":1,"id":1}"#,
        r#"{"jsonrpc":"2.0","method":null,"id":1}"#,
        r#"{"jsonrpc":"2.0","method":["sql.query"],"id":1}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","method":"pool.health","params":"x","id":1}"#,
        r#"{"jsonrpc":"2.0","method":"pool.health","params":1,"id":1}"#,
        r#"{"jsonrpc":"2.0","method":"pool.health","params":true,"id":1}"#,
        r#"{"jsonrpc":"2.0","method":"pool.health","id":{"a":1}}"#,
        r#"{"jsonrpc":"2.0","method":"pool.health","id":[1]}"#,
        r#"{"jsonrpc":"2.0","method":"pool.health","id":true}"#,
    ] {
        add(raw.to_owned(), Code(INVALID));
    }
    add("[1,2,3]".into(), Batch(vec![INVALID, INVALID, INVALID]));
    add("[[]]".into(), Batch(vec![INVALID]));
    add(
        format!(
            "[{}]",
            vec![r#"{"jsonrpc":"2.0","method":"pool.health","id":1}"#; 1001].join(",")
        ),
        Code(INVALID),
    );
    add(format!("[{},1]", q("SELECT 1")), Batch(vec![0, INVALID]));

    // --- no such method: -32601 -------------------------------------------------
    let long = "m".repeat(10_000);
    for m in [
        "",
        " sql.query",
        "SQL.QUERY",
        "sql.query\u{0}",
        "rpc.discover.x",
        "rpc.Discover",
        "__proto__",
        "constructor",
        "../../etc/passwd",
        "sql.query;DROP TABLE secret",
        "sql",
        "sql.",
        "admin",
        "admin.keys",
        "bridge.call.x",
        "$/cancelRequest",
        &long,
        "sql.query ",
        "pool.health\n",
    ] {
        add(req(m, json!({})), Code(NO_METHOD));
    }
    // The table describes itself (OpenRPC's convention); it takes no parameters.
    add(req("rpc.discover", json!({})), Fine);
    add(req("rpc.discover", json!([])), Fine);
    add(req("rpc.discover", json!({"x": 1})), Code(PARAMS));

    // --- scopes: a write key reaches no bridge and no admin method: -32007 -------
    for (m, p) in [
        (
            "bridge.call",
            json!({"method": "os.system", "params": ["rm -rf /"]}),
        ),
        (
            "bridge.call",
            json!({"method": "__import__", "params": ["os"]}),
        ),
        ("bridge.breaker.reset", json!({"method": "x"})),
        ("admin.backup", json!({"to": "/etc/passwd"})),
        ("admin.backup", json!({"to": format!("{dir}/stolen.db")})),
        ("admin.check", json!({"full": true})),
        ("admin.checkpoint", json!({"mode": "truncate"})),
        (
            "admin.keys.create",
            json!({"scope": "admin", "name": "backdoor"}),
        ),
        ("admin.keys.list", json!({})),
        ("admin.keys.revoke", json!({"name": "hostile"})),
    ] {
        add(req(m, p), Code(FORBIDDEN));
    }

    // --- invalid params: -32602 --------------------------------------------------
    for p in [
        json!({}),
        json!({"sql": 1}),
        json!({"sql": ["SELECT 1"]}),
        json!({"sql": null}),
        json!({"sql": "SELECT ?1", "params": "1"}),
        json!({"sql": "SELECT ?1", "params": [[1]]}),
        json!({"sql": "SELECT ?1", "params": [{"a": 1}]}),
        json!({"sql": "SELECT ?1", "params": [{"$blob": "%%%"}]}),
        json!({"sql": "SELECT ?1", "params": [{"$blob": 1}]}),
        json!({"sql": "SELECT ?1", "params": [{"$blob": "AA==", "x": 1}]}),
        json!({"sql": "SELECT ?1", "params": [9_223_372_036_854_775_808_u64]}),
        json!({"sql": "SELECT ?1", "params": []}),
        json!({"sql": "SELECT ?1", "params": [1, 2]}),
        json!({"sql": "SELECT :a", "params": {"b": 1}}),
        json!({"sql": "SELECT :a", "params": {":a; DROP TABLE secret": 1}}),
        json!({"sql": "SELECT 1", "timeout_ms": 0}),
        json!({"sql": "SELECT 1", "timeout_ms": -1}),
        json!({"sql": "SELECT 1", "timeout_ms": 1.5}),
        json!({"sql": "SELECT 1", "timeout_ms": "100"}),
        json!({"sql": "SELECT 1", "timeout_ms": 1e20}),
        json!({"sql": "SELECT 1", "timeout_ms": 999_999_999_999_u64}),
        json!({"sql": "SELECT 1", "max_rows": -1}),
        json!({"sql": "SELECT 1", "max_rows": 1_000_000_000_000_u64}),
        json!({"sql": "SELECT 1", "lane": "fast"}),
        json!({"sql": "SELECT 1", "lane": 1}),
        json!({"sql": "SELECT 1", "sqll": 1}),
        json!({"sql": "SELECT 1", "__proto__": {}}),
        json!(["SELECT 1", [], 100, 10, "read", "extra"]),
        json!({"sql": "SELECT 1\u{0}; DROP TABLE secret"}),
        json!({"sql": format!("SELECT '{}'", "x".repeat(1 << 21))}),
    ] {
        add(req("sql.query", p), Code(PARAMS));
    }
    for (m, p) in [
        (
            "sql.execute",
            json!({"sql": "INSERT INTO scratch VALUES (?1)", "params": [[1, 2]]}),
        ),
        (
            "sql.batch",
            json!({"statements": "INSERT INTO scratch VALUES (1)"}),
        ),
        ("sql.batch", json!({"statements": []})),
        ("sql.batch", json!({"statements": [1]})),
        (
            "sql.batch",
            json!({"statements": [{"sql": "SELECT 1", "x": 1}]}),
        ),
        ("sql.batch", json!({"statements": [{"params": [1]}]})),
        (
            "sql.execute_many",
            json!({"sql": "INSERT INTO scratch VALUES (?1)", "rows": {"a": 1}}),
        ),
        (
            "sql.execute_many",
            json!({"sql": "INSERT INTO scratch VALUES (?1)", "rows": [[1], [[2]]]}),
        ),
        (
            "sql.execute_many",
            json!({"sql": "INSERT INTO scratch VALUES (?1)"}),
        ),
        ("state.save", json!({"run_id": "r"})),
        ("state.save", json!({"run_id": "", "state": {}})),
        (
            "state.save",
            json!({"run_id": "x".repeat(100_000), "state": {}}),
        ),
        (
            "state.save",
            json!({"run_id": "r", "state": {}, "total_steps": -5}),
        ),
        (
            "state.save",
            json!({"run_id": "r", "state": {}, "memory_usage_mb": "lots"}),
        ),
        ("state.load", json!({"run_id": 7})),
        ("state.list", json!({"limit": -1})),
        (
            "memory.store",
            json!({"namespace": "", "key": "k", "value": 1}),
        ),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k".repeat(5_000), "value": 1}),
        ),
        ("memory.store", json!({"namespace": "n", "key": "k"})),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": 1, "ttl_s": -1}),
        ),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": 1, "ttl_s": 0}),
        ),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": 1, "ttl_s": 1e300}),
        ),
        ("memory.get", json!({"namespace": "n"})),
        ("cache.set", json!({"key": "k"})),
        (
            "cache.set",
            json!({"key": "k", "value": 1, "ttl_s": "soon"}),
        ),
        ("cache.get", json!({"key": {"$ne": null}})),
        ("pool.health", json!({"verbose": true})),
        ("pool.stats", json!([1])),
    ] {
        add(req(m, p), Code(PARAMS));
    }

    // --- SQL that would escape: forbidden, read-only or a plain SQL error ------
    for sql in [
        &format!("ATTACH DATABASE '{dir}/evil.db' AS evil") as &str,
        "ATTACH ':memory:' AS m",
        &format!("VACUUM INTO '{dir}/stolen.db'"),
        "VACUUM",
        "SELECT load_extension('/tmp/evil.so')",
        "SELECT fts3_tokenizer('simple')",
        "PRAGMA query_only = 0",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA writable_schema = 1",
        "PRAGMA trusted_schema = 1",
        "PRAGMA cache_size = 1",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "SELECT * FROM litebridge_keys",
        "SELECT hash FROM litebridge_keys",
        "SELECT * FROM LiteBridge_Quota",
        "SELECT * FROM \"litebridge_cache\"",
        "SELECT * FROM main.litebridge_meta",
        "SELECT (SELECT count(*) FROM litebridge_keys)",
        "SELECT * FROM secret WHERE EXISTS (SELECT 1 FROM litebridge_state)",
        "CREATE TEMP TABLE t(x)",
        "CREATE TEMP VIEW v AS SELECT 1",
    ] {
        add(q(sql), Code(FORBIDDEN));
    }
    // No connection has dbstat's module: no such table, under any name.
    for sql in ["SELECT * FROM dbstat", "SELECT * FROM dbstat('main')"] {
        add(q(sql), Code(SQL));
    }
    for sql in [
        "DROP TABLE secret",
        "DELETE FROM secret",
        "UPDATE secret SET v = 'pwned'",
        "INSERT INTO secret VALUES ('x')",
        "WITH x AS (SELECT 1) DELETE FROM secret",
        "WITH x(v) AS (SELECT 'x') INSERT INTO secret SELECT v FROM x",
        "REPLACE INTO secret VALUES ('y')",
        "CREATE TABLE evil(x)",
        "ALTER TABLE secret RENAME TO gone",
    ] {
        add(q(sql), Code(READ_ONLY));
    }
    for sql in [
        &format!("ATTACH DATABASE '{dir}/evil.db' AS evil") as &str,
        "ATTACH 'file:evil?mode=memory' AS m",
        "DETACH DATABASE temp",
        &format!("VACUUM INTO '{dir}/stolen.db'"),
        "VACUUM",
        "SELECT load_extension('/tmp/evil.so')",
        "BEGIN",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "ROLLBACK",
        "END",
        "SAVEPOINT s",
        "RELEASE s",
        "PRAGMA writable_schema = ON",
        "PRAGMA journal_mode = OFF",
        "PRAGMA synchronous = OFF",
        "PRAGMA query_only = 1",
        "PRAGMA foreign_keys = OFF",
        "PRAGMA trusted_schema = ON",
        "PRAGMA locking_mode = EXCLUSIVE",
        "PRAGMA ignore_check_constraints = 1",
        "PRAGMA schema_version = 1",
        "PRAGMA temp_store_directory = '/tmp'",
        "PRAGMA hard_heap_limit = 1",
        "PRAGMA max_page_count = 1",
        "INSERT INTO litebridge_cache VALUES ('k', '1', NULL)",
        "UPDATE litebridge_keys SET scopes = 'admin'",
        "DELETE FROM litebridge_quota",
        "DROP TABLE litebridge_state",
        "ALTER TABLE litebridge_memory RENAME TO m",
        "CREATE TRIGGER t AFTER INSERT ON litebridge_keys BEGIN SELECT 1; END",
        "CREATE TABLE litebridge_evil(x)",
        "CREATE TABLE copy AS SELECT * FROM litebridge_keys",
        "INSERT INTO scratch SELECT hash FROM litebridge_keys",
        "CREATE VIEW litebridge_v AS SELECT 1",
        "CREATE INDEX i ON litebridge_keys(hash)",
    ] {
        add(x(sql), Code(FORBIDDEN));
    }
    add(q("SELECT 1; DROP TABLE secret"), Code(PARAMS));
    // Values over db.max_result_bytes: refused before they are built.
    for sql in [
        "SELECT zeroblob(2000000000)",
        "SELECT randomblob(2000000000)",
        "SELECT printf('%.*c', 2000000000, 'x')",
    ] {
        add(q(sql), Code(-32011));
    }
    for sql in [
        "SELECT * FROM no_such_table",
        "SELEC 1",
        "SELECT * FROM sqlite_dbpage",
        "SELECT json('{')",
    ] {
        add(q(sql), Code(SQL));
    }
    add(
        req(
            "sql.query",
            json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "timeout_ms": 150}),
        ),
        Code(TIMEOUT),
    );
    add(
        req(
            "sql.query",
            json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "timeout_ms": 150, "lane": "heavy"}),
        ),
        Code(TIMEOUT),
    );
    add(
        req(
            "sql.execute",
            json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) INSERT INTO scratch SELECT x FROM c", "timeout_ms": 150}),
        ),
        Code(TIMEOUT),
    );
    add(
        req(
            "sql.batch",
            json!({"statements": [
                {"sql": "INSERT INTO scratch VALUES (1)"},
                {"sql": format!("ATTACH '{dir}/evil.db' AS e")},
            ]}),
        ),
        Code(FORBIDDEN),
    );
    add(
        req(
            "sql.batch",
            json!({"statements": [
                {"sql": "DELETE FROM secret"},
                {"sql": "INSERT INTO litebridge_keys(name) VALUES ('x')"},
            ]}),
        ),
        Code(FORBIDDEN),
    );
    add(
        req(
            "sql.execute_many",
            json!({"sql": "INSERT INTO litebridge_cache VALUES (?1, '1', NULL)", "rows": [["a"], ["b"]]}),
        ),
        Code(FORBIDDEN),
    );
    add(
        req(
            "sql.execute",
            json!({"sql": "CREATE TRIGGER sneak AFTER INSERT ON scratch BEGIN DELETE FROM litebridge_keys; END"}),
        ),
        Fine,
    );
    add(x("INSERT INTO scratch VALUES (1)"), Code(FORBIDDEN));
    add(x("DROP TRIGGER sneak"), Fine);

    // --- injection through values: only data ------------------------------------
    for (m, p) in [
        (
            "memory.store",
            json!({"namespace": "x'); DROP TABLE secret; --", "key": "k", "value": 1}),
        ),
        (
            "memory.store",
            json!({"namespace": "n", "key": "\u{0}\u{1}\u{7f}", "value": "\u{0}"}),
        ),
        (
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": {"$blob": "x"}}),
        ),
        ("memory.get", json!({"namespace": "%", "key": "%"})),
        (
            "memory.list",
            json!({"namespace": "n", "prefix": "%' OR 1=1 --"}),
        ),
        ("memory.list", json!({"namespace": "n", "prefix": "_"})),
        (
            "state.save",
            json!({"run_id": "../../etc/passwd", "state": {"a": "'; DROP TABLE secret; --"}}),
        ),
        (
            "state.save",
            json!({"run_id": "deep", "state": serde_json::from_str::<Value>(&format!("{}1{}", "[".repeat(100), "]".repeat(100))).unwrap()}),
        ),
        ("state.load", json!({"run_id": "' OR '1'='1"})),
        ("state.list", json!({"status": "' OR 1=1 --"})),
        ("state.delete", json!({"run_id": "*"})),
        (
            "cache.set",
            json!({"key": "bridge:echo", "value": "poisoned"}),
        ),
        ("cache.get", json!({"key": "../user:x"})),
        ("cache.delete", json!({"key": "%"})),
        (
            "sql.query",
            json!({"sql": "SELECT ?1", "params": ["'; DROP TABLE secret; --"]}),
        ),
        (
            "sql.query",
            json!({"sql": "SELECT :a", "params": {"a": "\u{0}"}}),
        ),
        (
            "sql.query",
            json!({"sql": "SELECT ?1", "params": [{"$blob": ""}]}),
        ),
        (
            "sql.query",
            json!({"sql": "SELECT ?1", "params": [-9_223_372_036_854_775_808_i64]}),
        ),
        (
            "sql.query",
            json!({"sql": "SELECT ?1", "params": [1.7976931348623157e308]}),
        ),
        (
            "sql.query",
            json!({"sql": "SELECT name FROM sqlite_schema WHERE name LIKE 'litebridge_%'"}),
        ),
        ("sql.query", json!({"sql": "SELECT * FROM secret"})),
        (
            "sql.execute",
            json!({"sql": "INSERT INTO scratch VALUES (?1)", "params": ["litebridge_keys"]}),
        ),
        ("pool.health", json!([])),
        ("persistence.stats", json!({})),
    ] {
        add(req(m, p), Fine);
    }
    // litebridge's own tables are not even described.
    add(
        req(
            "sql.query",
            json!({"sql": "PRAGMA table_info(litebridge_keys)"}),
        ),
        Code(-32007),
    );

    // --- notifications: never answered, whatever they hold ----------------------
    for raw in [
        r#"{"jsonrpc":"2.0","method":"pool.health"}"#,
        r#"{"jsonrpc":"2.0","method":"no.such.method"}"#,
        r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":1}}"#,
        r#"{"jsonrpc":"2.0","method":"admin.backup","params":{"to":"/etc/passwd"}}"#,
        r#"{"jsonrpc":"2.0","method":"sql.execute","params":{"sql":"DROP TABLE litebridge_keys"}}"#,
        r#"[{"jsonrpc":"2.0","method":"pool.health"},{"jsonrpc":"2.0","method":"nope"}]"#,
    ] {
        add(raw.to_owned(), Silent);
    }
    // Mixed batch: every id answered once, notifications not at all.
    add(
        format!(
            "[{},{},{},{}]",
            q("SELECT 1"),
            x("DROP TABLE litebridge_keys"),
            r#"{"jsonrpc":"2.0","method":"pool.health"}"#,
            req("nope", json!({}))
        ),
        Batch(vec![0, FORBIDDEN, NO_METHOD]),
    );
    c
}

/// The code of one reply (0 for a result); panics on a malformed one.
fn code_of(r: &Value) -> i64 {
    assert_eq!(r["jsonrpc"], "2.0", "{r}");
    match (r.get("result"), r.get("error")) {
        (Some(_), None) => 0,
        (None, Some(e)) => {
            let code = e["code"].as_i64().unwrap();
            if (-32012..=-32000).contains(&code) {
                assert!(e["data"]["kind"].is_string(), "{r}");
            }
            code
        }
        _ => panic!("not exactly one of result and error: {r}"),
    }
}

fn check(transport: &str, raw: &str, expect: &Expect, reply: Option<Value>) {
    let shown: String = raw.chars().take(160).collect();
    match (expect, reply) {
        (Silent, None) => {}
        (Silent, Some(r)) => panic!("{transport}: {shown}: expected no reply, got {r}"),
        (_, None) => panic!("{transport}: {shown}: no reply"),
        (Batch(codes), Some(r)) => {
            let items = r
                .as_array()
                .unwrap_or_else(|| panic!("{transport}: {shown}: not a batch reply: {r}"));
            let mut got: Vec<i64> = items.iter().map(code_of).collect();
            let mut want = codes.clone();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{transport}: {shown}: {r}");
        }
        (Fine, Some(r)) => assert_eq!(code_of(&r), 0, "{transport}: {shown}: {r}"),
        (Code(c), Some(r)) => {
            assert_eq!(code_of(&r), *c, "{transport}: {shown}: {r}");
            // The id could not be read: it must be null. (An invalid request
            // whose id could be read gets its id back.)
            if *c == PARSE && r["id"] != Value::Null {
                panic!("{transport}: {shown}: id must be null: {r}");
            }
        }
    }
}

fn seed(db: &std::path::Path) {
    for sql in [
        "CREATE TABLE secret(v TEXT)",
        "INSERT INTO secret VALUES ('the crown jewels')",
        "CREATE TABLE scratch(x)",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .args(["query", "--create", "--db", db.to_str().unwrap(), sql])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

fn intact(db: &std::path::Path, dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let v: String = conn
        .query_row("SELECT v FROM secret", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "the crown jewels");
    let keys: i64 = conn
        .query_row(
            "SELECT count(*) FROM litebridge_keys WHERE revoked_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(keys <= 1);
    let cache: i64 = conn
        .query_row(
            "SELECT count(*) FROM litebridge_cache WHERE key NOT LIKE 'user:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cache, 0, "nothing planted in the bridge's cache");
    for f in ["evil.db", "stolen.db"] {
        assert!(!dir.join(f).exists(), "{f} was written");
    }
    let ok: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn hostile_requests_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    seed(&db);
    let key = common::create_key(&db, "hostile", "write", "enterprise");
    let server = common::Server::start(&db, &[]);
    let cases = cases(dir.path().to_str().unwrap());
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let bearer = format!("Bearer {key}");
    let mut failures = Vec::new();
    for (raw, expect) in &cases {
        let (status, _, body) = server.request_with(
            "POST",
            "/rpc",
            Some("application/json"),
            &[("Authorization", &bearer)],
            raw.as_bytes(),
        );
        let reply = if status == 204 {
            None
        } else {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            Some(serde_json::from_slice(&body).unwrap())
        };
        if let Err(e) = std::panic::catch_unwind(|| check("http", raw, expect, reply)) {
            failures.push(e.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let (status, _) = server.rpc_as(
        Some(&key),
        &json!({"jsonrpc": "2.0", "method": "pool.health", "id": 1}),
    );
    assert_eq!(status, 200);
    assert_eq!(server.request("GET", "/ready", None, b"").0, 200);
    assert!(server.stop().success());
    intact(&db, dir.path());
    eprintln!(
        "{} hostile requests over HTTP answered as specified",
        cases.len()
    );
}

#[test]
fn hostile_requests_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    seed(&db);
    let mut child = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db", db.to_str().unwrap()])
        .env("LITEBRIDGE_SECURITY_LOCAL_SCOPES", "write")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let cases = cases(dir.path().to_str().unwrap());
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let probe = r#"{"jsonrpc":"2.0","method":"pool.health","id":"probe"}"#;
    let mut failures = Vec::new();
    for (raw, expect) in &cases {
        // Each request, then a probe: the probe's reply marks the end of the
        // request's (requests run concurrently, so either may come first).
        writeln!(stdin, "{raw}").unwrap();
        writeln!(stdin, "{probe}").unwrap();
        stdin.flush().unwrap();
        let mut replies = Vec::new();
        let mut seen_probe = false;
        while !(seen_probe && (replies.len() == 1 || matches!(expect, Silent))) {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "stdout closed after {raw}"
            );
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == "probe" {
                seen_probe = true;
            } else {
                replies.push(v);
            }
            if seen_probe && matches!(expect, Silent) {
                break;
            }
        }
        assert!(replies.len() <= 1, "{raw}: {replies:?}");
        let reply = replies.pop();
        if let Err(e) = std::panic::catch_unwind(|| check("stdio", raw, expect, reply)) {
            failures.push(e.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
    intact(&db, dir.path());
    eprintln!(
        "{} hostile requests over stdio answered as specified",
        cases.len()
    );
}
