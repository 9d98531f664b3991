//! The server on PostgreSQL: `backend.kind = "postgres"` serves the same
//! methods over HTTP and stdio, with position tokens for read-your-writes,
//! `unsupported` for SQLite's file operations, and the cluster in health,
//! readiness, `pool.*` and `/metrics`. Runs against `LB_TEST_PG` (see
//! `scripts/pg-cluster.sh`); skipped without it unless `LB_TEST_REQUIRE`
//! names `pg`.

mod common;

use std::process::Command;

use common::{Server, StdioSession};
use serde_json::{Value, json};

const CLIENT_ROLE: &str = "lb_test_client";

fn url() -> Option<String> {
    match std::env::var("LB_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            let required = std::env::var("LB_TEST_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|s| s.trim() == "pg"),
                "LB_TEST_REQUIRE names pg but LB_TEST_PG is not set"
            );
            eprintln!("LB_TEST_PG is not set: skipped");
            None
        }
    }
}

fn psql(url: &str, sql: &str) -> String {
    common::psql(url, sql).unwrap_or_else(|e| panic!("psql {sql}: {e}"))
}

/// A schema for the clients' SQL, a configuration file naming it, and the
/// cleanup of both.
struct Setup {
    url: String,
    schema: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(replicas: bool) -> Option<Setup> {
        let url = url()?;
        psql(
            &url,
            &format!(
                "DO $$ BEGIN CREATE ROLE {CLIENT_ROLE} LOGIN; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            ),
        );
        let schema = format!(
            "s_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        psql(
            &url,
            &format!("CREATE SCHEMA {schema} AUTHORIZATION {CLIENT_ROLE}"),
        );
        let dir = tempfile::tempdir().unwrap();
        let replicas = if replicas {
            std::env::var("LB_TEST_PG_REPLICAS").unwrap_or_default()
        } else {
            String::new()
        };
        std::fs::write(
            dir.path().join("lb.toml"),
            format!(
                "[backend]\nkind = \"postgres\"\n\n[postgres]\nurl = \"{url}\"\n\
                 client_user = \"{CLIENT_ROLE}\"\nclient_schema = \"{schema}\"\n\
                 schema = \"{schema}_own\"\nreplicas = \"{replicas}\"\n\
                 health_check_interval_ms = 200\n"
            ),
        )
        .unwrap();
        Some(Setup { url, schema, dir })
    }

    fn config(&self) -> String {
        self.dir.path().join("lb.toml").display().to_string()
    }

    fn serve(&self) -> Server {
        Server::start(
            &self.dir.path().join("unused.db"),
            &["--config", &self.config()],
        )
    }

    fn key(&self, scope: &str) -> String {
        let (stdout, secret) =
            common::keys_create(&["--config", &self.config()], scope, scope, "free");
        assert!(stdout.contains("PostgreSQL at"), "{stdout}");
        secret
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-d", &self.url, "-c"])
            .arg(format!(
                "DROP SCHEMA IF EXISTS {0} CASCADE; DROP SCHEMA IF EXISTS {0}_own CASCADE",
                self.schema
            ))
            .current_dir("/")
            .output();
    }
}

fn call(server: &Server, key: &str, method: &str, params: Value) -> Value {
    let (status, body) = server.rpc_as(
        Some(key),
        &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
    );
    assert_eq!(status, 200, "{method}: {body}");
    body
}

fn ok(server: &Server, key: &str, method: &str, params: Value) -> Value {
    let body = call(server, key, method, params);
    assert!(body.get("error").is_none(), "{method}: {body}");
    body["result"].clone()
}

#[test]
fn the_one_message_settings_reach_postgres_and_put_values_in_the_text() {
    let Some(setup) = Setup::new(false) else {
        return;
    };
    let file = setup.config();
    let mut toml = std::fs::read_to_string(&file).unwrap();
    // The file ends in its `[postgres]` table.
    toml.push_str("one_message_reads = true\none_message_writes = true\n");
    std::fs::write(&file, toml).unwrap();
    let key = setup.key("admin");
    let server = setup.serve();
    ok(
        &server,
        &key,
        "sql.execute",
        json!({"sql": "CREATE TABLE om(id bigint, body text)"}),
    );
    // A statement's first write and read go the long way; the later ones
    // in one message, their values in the query's text.
    for id in 1..=3 {
        let w = ok(
            &server,
            &key,
            "sql.execute",
            json!({"sql": "INSERT INTO om VALUES (?1, ?2)", "params": [id, format!("secret-{id}")]}),
        );
        assert_eq!(w["changes"], 1, "{w}");
    }
    let batch = ok(
        &server,
        &key,
        "sql.batch",
        json!({"statements": [
            {"sql": "INSERT INTO om VALUES (?1, ?2)", "params": [4, "secret-4"]},
            {"sql": "INSERT INTO om VALUES (?1, ?2)", "params": [5, "secret-5"]},
        ]}),
    );
    assert_eq!(
        batch["results"].as_array().map(Vec::len),
        Some(2),
        "{batch}"
    );
    for _ in 0..3 {
        let r = ok(
            &server,
            &key,
            "sql.query",
            json!({"sql": "SELECT id, body FROM om WHERE id >= ?1 ORDER BY id", "params": [4]}),
        );
        assert_eq!(r["rows"], json!([[4, "secret-4"], [5, "secret-5"]]), "{r}");
    }
    // What the settings cost, as documented: another session of the
    // clients' role reads the values in pg_stat_activity.
    let seen = psql(
        &setup.url,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{CLIENT_ROLE}' \
             AND query LIKE '%EXECUTE \"s%$l$4$l$%'"
        ),
    );
    let seen: u32 = seen.trim().parse().unwrap();
    assert!(seen >= 1, "the last read's text, values and all");
}

#[test]
fn every_part_of_the_service_runs_on_postgres() {
    let Some(setup) = Setup::new(true) else {
        return;
    };
    let admin = setup.key("admin");
    let server = setup.serve();

    // The clients' SQL, in PostgreSQL's dialect, with the same shapes.
    ok(
        &server,
        &admin,
        "sql.execute",
        json!({"sql": "CREATE TABLE notes(id bigint PRIMARY KEY, body text, raw bytea)"}),
    );
    let w = ok(
        &server,
        &admin,
        "sql.execute",
        json!({"sql": "INSERT INTO notes VALUES (?1, ?2, ?3)", "params": [9007199254740993i64, "hello", {"$blob": "AAEC"}]}),
    );
    assert_eq!(w["changes"], 1, "{w}");
    let token = w["token"].as_str().expect("a write's token with replicas");
    let r = ok(
        &server,
        &admin,
        "sql.query",
        json!({"sql": "SELECT id, body FROM notes", "token": token}),
    );
    assert_eq!(r["columns"], json!(["id", "body"]), "{r}");
    assert_eq!(r["rows"], json!([[9007199254740993i64, "hello"]]), "{r}");
    assert!(
        r["token"].is_string(),
        "a session read returns its position: {r}"
    );
    let strong = ok(
        &server,
        &admin,
        "sql.query",
        json!({"sql": "SELECT count(*) FROM notes"}),
    );
    // A strong read's token is the primary's position after it: a session
    // that passes it on reads nothing older afterwards.
    assert!(strong["token"].is_string(), "{strong}");
    // A session read with no token (HTTP keeps no session) has nothing to
    // wait for: a replica serves it, as an `any` read.
    let replica_reads = |server: &Server| {
        ok(server, &admin, "pool.stats", json!({}))["cluster"]["replica_reads"]
            .as_u64()
            .expect("pool.stats reports the cluster")
    };
    // On a cluster just made, the delayed replica refuses the clients' role
    // until it has replayed its creation (a read sent there falls back to
    // the primary): the read below waits for both to have answered a probe.
    let reachable = || {
        let stats = ok(&server, &admin, "pool.stats", json!({}));
        stats["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|n| n["reachable"] == true))
    };
    for _ in 0..100 {
        if reachable() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = replica_reads(&server);
    ok(
        &server,
        &admin,
        "sql.query",
        json!({"sql": "SELECT 1", "consistency": "session"}),
    );
    assert_eq!(
        replica_reads(&server),
        before + 1,
        "a session read without a token went to the primary: {}",
        ok(&server, &admin, "pool.stats", json!({}))["cluster"]
    );
    let b = ok(
        &server,
        &admin,
        "sql.batch",
        json!({"statements": [
            {"sql": "INSERT INTO notes(id, body) VALUES (1, 'a')"},
            {"sql": "UPDATE notes SET body = 'b' WHERE id = 1"}]}),
    );
    assert_eq!(b["results"].as_array().map(Vec::len), Some(2), "{b}");
    assert!(b["token"].is_string(), "{b}");
    // A write with an idempotency key, sent twice (a lost answer): once.
    for _ in 0..2 {
        let w = ok(
            &server,
            &admin,
            "sql.execute",
            json!({"sql": "INSERT INTO notes(id, body) VALUES (77, 'once')", "idempotency_key": "order-77"}),
        );
        assert_eq!(w["changes"], 1, "{w}");
    }
    let e = call(
        &server,
        &admin,
        "sql.execute",
        json!({"sql": "SELECT 1", "idempotency_key": ""}),
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idempotency_key"),
        "{e}"
    );
    let m = ok(
        &server,
        &admin,
        "sql.execute_many",
        json!({"sql": "INSERT INTO notes(id, body) VALUES ($1, $2)", "rows": [[2, "x"], [3, "y"]]}),
    );
    assert_eq!(m["changes"], 2, "{m}");
    let schema = ok(&server, &admin, "sql.schema", json!({}));
    let tables = schema["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "only the clients' schema: {schema}");
    assert_eq!(tables[0]["name"], "notes");
    assert_eq!(tables[0]["columns"][0]["primary_key"], true, "{schema}");
    // A generated column is marked, and its expression is no default.
    ok(
        &server,
        &admin,
        "sql.execute",
        json!({"sql": "CREATE TABLE g(a BIGINT DEFAULT 1, b BIGINT GENERATED ALWAYS AS (a * 2) STORED)"}),
    );
    let schema = ok(&server, &admin, "sql.schema", json!({}));
    let g = &schema["tables"][0];
    assert_eq!(g["name"], "g", "{schema}");
    assert_eq!(g["columns"][0]["generated"], false, "{schema}");
    assert_eq!(g["columns"][0]["default"], "1", "{schema}");
    assert_eq!(g["columns"][1]["generated"], true, "{schema}");
    assert_eq!(g["columns"][1]["default"], Value::Null, "{schema}");
    ok(
        &server,
        &admin,
        "sql.execute",
        json!({"sql": "DROP TABLE g"}),
    );

    // A read that writes is refused as on SQLite; a bad token names itself.
    let e = call(
        &server,
        &admin,
        "sql.query",
        json!({"sql": "DELETE FROM notes"}),
    );
    assert_eq!(e["error"]["data"]["kind"], "read_only", "{e}");
    let e = call(
        &server,
        &admin,
        "sql.query",
        json!({"sql": "SELECT 1", "token": "not-a-token"}),
    );
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("token"),
        "{e}"
    );
    let e = call(
        &server,
        &admin,
        "sql.query",
        json!({"sql": "SELECT 1", "consistency": "eventual"}),
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("consistency"),
        "{e}"
    );

    // litebridge's own tables are out of the clients' reach.
    let e = call(
        &server,
        &admin,
        "sql.query",
        json!({"sql": format!("SELECT * FROM {}_own.litebridge_keys", setup.schema)}),
    );
    assert!(e.get("error").is_some(), "{e}");

    // Nor can the clients take the lock the front ends' sweeps run under.
    let e = call(
        &server,
        &admin,
        "sql.execute",
        json!({"sql": format!("LOCK TABLE {}_own.litebridge_memory IN SHARE UPDATE EXCLUSIVE MODE", setup.schema)}),
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("permission denied"),
        "{e}"
    );

    // SQLite's file operations answer `unsupported`, saying what to use.
    for (method, names) in [
        ("admin.checkpoint", "checkpoint"),
        ("admin.backup", "pg_basebackup"),
        ("admin.check", "pg_amcheck"),
    ] {
        let e = call(&server, &admin, method, json!({}));
        assert_eq!(e["error"]["code"], -32012, "{method}: {e}");
        assert_eq!(e["error"]["data"]["kind"], "unsupported", "{e}");
        assert_eq!(e["error"]["data"]["backend"], "postgres", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("PostgreSQL") && message.contains(names),
            "{e}"
        );
    }

    // The stores.
    ok(
        &server,
        &admin,
        "state.save",
        json!({"run_id": "r1", "state": {"step": 1}, "status": "running"}),
    );
    let st = ok(&server, &admin, "state.load", json!({"run_id": "r1"}));
    assert_eq!(st["state"], json!({"step": 1}), "{st}");
    ok(
        &server,
        &admin,
        "memory.store",
        json!({"namespace": "a", "key": "k", "value": [1, 2], "ttl_s": 60}),
    );
    let mem = ok(
        &server,
        &admin,
        "memory.get",
        json!({"namespace": "a", "key": "k"}),
    );
    assert_eq!(mem["value"], json!([1, 2]), "{mem}");
    ok(
        &server,
        &admin,
        "cache.set",
        json!({"key": "c", "value": {"v": 1}, "ttl_s": 60}),
    );
    let c = ok(&server, &admin, "cache.get", json!({"key": "c"}));
    assert_eq!(c["value"], json!({"v": 1}), "{c}");

    // Keys: made, used, revoked through the methods.
    let made = ok(
        &server,
        &admin,
        "admin.keys.create",
        json!({"scope": "read", "name": "reader"}),
    );
    let reader = made["secret"].as_str().unwrap().to_owned();
    ok(&server, &reader, "sql.query", json!({"sql": "SELECT 1"}));
    let e = call(
        &server,
        &reader,
        "sql.execute",
        json!({"sql": "DELETE FROM notes"}),
    );
    assert_eq!(e["error"]["data"]["kind"], "forbidden", "{e}");
    ok(
        &server,
        &admin,
        "admin.keys.revoke",
        json!({"name": "reader"}),
    );
    let (status, _) = server.rpc_as(
        Some(&reader),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "sql.query", "params": {"sql": "SELECT 1"}}),
    );
    assert_eq!(status, 401, "a revoked key is refused at once");

    // The cluster in health, statistics, readiness and metrics.
    std::thread::sleep(std::time::Duration::from_millis(500)); // a probe round
    let h = ok(&server, &admin, "pool.health", json!({}));
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["backend"], "postgres", "{h}");
    assert_eq!(h["cluster"]["primary"]["reachable"], true, "{h}");
    assert_eq!(h["cluster"]["primary"]["in_recovery"], false, "{h}");
    let replicas = h["cluster"]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{h}");
    for r in replicas {
        assert_eq!(r["reachable"], true, "{h}");
        assert_eq!(r["in_recovery"], true, "{h}");
        assert!(r["lag_bytes"].is_u64(), "{h}");
    }
    let s = ok(&server, &admin, "pool.stats", json!({}));
    assert!(
        s["pool_metrics"]["total_writes"].as_u64().unwrap() >= 4,
        "{s}"
    );
    assert!(
        s["pool_metrics"]["total_reads"].as_u64().unwrap() >= 3,
        "{s}"
    );
    assert!(s["cluster"]["replica_reads"].is_u64(), "{s}");
    let (status, body) = server.request("GET", "/ready", None, b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, _, metrics) = server.request_as(Some(&admin), "GET", "/metrics", None, b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("litebridge_pg_node_up{node=\"127.0.0.1:"),
        "{metrics}"
    );
    assert!(
        metrics.contains("litebridge_pg_replica_lag_bytes{"),
        "{metrics}"
    );
    for reason in [
        "token",
        "resting",
        "behind",
        "not_a_replica",
        "conflict",
        "failed",
    ] {
        assert!(
            metrics.contains(&format!(
                "litebridge_pg_primary_fallbacks_total{{reason=\"{reason}\"}} "
            )),
            "{metrics}"
        );
    }
    assert!(server.stop().success());
}

/// Over stdio the session remembers its writes' tokens: a `session` read
/// with no token still sees the session's own writes, even when a replica
/// that replays 300 ms late is in the rotation.
#[test]
fn a_stdio_session_reads_its_own_writes_from_replicas() {
    let Some(setup) = Setup::new(true) else {
        return;
    };
    let config = setup.config();
    let mut s = StdioSession::start(&["--config", &config], &[]);
    let mut id = 0;
    let mut call = |s: &mut StdioSession, method: &str, params: Value| {
        id += 1;
        let reply = s.call(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        );
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    };
    call(
        &mut s,
        "sql.execute",
        json!({"sql": "CREATE TABLE c(n bigint)"}),
    );
    call(
        &mut s,
        "sql.execute",
        json!({"sql": "INSERT INTO c VALUES (0)"}),
    );
    let mut replica_reads_before = None;
    for n in 1..=30 {
        call(
            &mut s,
            "sql.execute",
            json!({"sql": "UPDATE c SET n = ?1", "params": [n]}),
        );
        let r = call(
            &mut s,
            "sql.query",
            json!({"sql": "SELECT n FROM c", "consistency": "session"}),
        );
        assert_eq!(r["rows"], json!([[n]]), "read {n} went back in time: {r}");
        if n == 1 {
            let st = call(&mut s, "pool.stats", json!({}));
            replica_reads_before = st["cluster"]["replica_reads"].as_u64();
        }
    }
    let st = call(&mut s, "pool.stats", json!({}));
    let (before, after) = (
        replica_reads_before.unwrap(),
        st["cluster"]["replica_reads"].as_u64().unwrap(),
    );
    let fallbacks = st["cluster"]["primary_fallbacks"].as_u64().unwrap();
    let by_reason = st["cluster"]["primary_fallbacks_by_reason"]
        .as_object()
        .unwrap();
    assert_eq!(
        by_reason.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "behind",
            "conflict",
            "failed",
            "not_a_replica",
            "resting",
            "token"
        ],
    );
    assert_eq!(
        by_reason.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        fallbacks,
        "{st}"
    );
    // The reads asked for replicas: each was either served by one that had
    // caught up or sent to the primary.
    assert!(
        after - before + fallbacks >= 29,
        "reads did not ask replicas: {st}"
    );
    s.finish();
}

#[test]
fn print_config_never_shows_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lb.toml");
    std::fs::write(
        &file,
        "[backend]\nkind = \"postgres\"\n[postgres]\nurl = \"postgres://owner:hunter2@127.0.0.1:1/db\"\n\
         client_user = \"c\"\nclient_password = \"swordfish\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("kind = \"postgres\""), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("swordfish"),
        "{text}"
    );
    assert!(
        text.contains("client_password = (set, not shown)"),
        "{text}"
    );
}

#[test]
fn sqlite_only_settings_are_refused_on_postgres_naming_them() {
    let Some(setup) = Setup::new(false) else {
        return;
    };
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                &setup.config(),
            ])
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--recover"], &[]);
    assert!(e.contains("--recover") && e.contains("postgres"), "{e}");
    let e = run(&[], &[("LITEBRIDGE_BACKUP_ENABLED", "true")]);
    assert!(e.contains("backup.enabled"), "{e}");
    let e = run(&[], &[("LITEBRIDGE_POSTGRES_URL", "")]);
    assert!(e.contains("postgres.url"), "{e}");
    let e = run(&[], &[("LITEBRIDGE_POSTGRES_CLIENT_USER", "")]);
    assert!(e.contains("postgres.client_user"), "{e}");
}

#[test]
fn postgres_settings_for_a_sqlite_service_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("a.db"))
        .env("LITEBRIDGE_POSTGRES_URL", "postgres://o@127.0.0.1:1/db")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("postgres.url")
            && e.contains("LITEBRIDGE_POSTGRES_URL")
            && e.contains("backend.kind"),
        "{e}"
    );
    assert!(!dir.path().join("a.db").exists(), "a SQLite file was made");
}

#[test]
fn a_toml_error_does_not_echo_the_line_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lb.toml");
    std::fs::write(
        &file,
        "[backend]\nkind = \"postgres\"\n[postgres]\nclient_password = \"s3cr3t\\q\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!e.contains("s3cr3t"), "{e}");
    assert!(e.contains("line 4") && e.contains("lb.toml"), "{e}");
}
