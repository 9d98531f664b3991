//! One client cannot take the service from the others: the data-safety and
//! availability report, one test per item (the SIGKILL items are in
//! `crash_safety.rs`, the backup ones in `red_team.rs`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::Server;

fn call(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
}

/// A statement that runs until it is interrupted.
const FOREVER: &str = "INSERT INTO t SELECT count(*) FROM \
    (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i FROM c)";

/// POSTs `body` to `/rpc` on a connection of its own and waits up to `wait`
/// for the answer or the connection's end (whichever the server gives).
fn post_and_wait(addr: &str, body: &str, wait: Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(
        format!(
            "POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
}

fn ready(server: &Server) -> (u16, Value) {
    let (status, body) = server.request("GET", "/ready", None, b"");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn one_request_holds_the_writer_for_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hold.db");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_DB_MAX_WRITE_HOLD_MS", "2000")]);
    server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    let addr_server = &server;
    std::thread::scope(|scope| {
        let long = scope.spawn(move || {
            addr_server.rpc(call(
                "sql.execute",
                json!({"sql": FOREVER, "timeout_ms": 3_600_000}),
            ))
        });
        std::thread::sleep(Duration::from_millis(300));
        // A store write with no deadline of its own is answered, after the
        // hold ends the long statement.
        let started = Instant::now();
        let saved = server.rpc(call("state.save", json!({"run_id": "r", "state": 1})));
        assert!(saved["result"].is_object(), "{saved}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let long = long.join().unwrap();
        assert_eq!(long["error"]["data"]["kind"], "timeout", "{long}");
        assert_eq!(long["error"]["data"]["timeout_ms"], 2000, "{long}");
        assert!(
            long["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_write_hold"),
            "{long}"
        );
    });
    // While one runs past half the hold, /ready says so; then it is ready again.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            server.rpc(call(
                "sql.execute",
                json!({"sql": FOREVER, "timeout_ms": 3_600_000}),
            ))
        });
        std::thread::sleep(Duration::from_millis(1_400));
        let (status, body) = ready(&server);
        assert_eq!(status, 503, "{body}");
        assert!(body.to_string().contains("writer"), "{body}");
    });
    // Ready again once the writer has rolled the batch back (the failed
    // request is answered first, a moment before).
    let waited = Instant::now();
    let (status, body) = loop {
        let (status, body) = ready(&server);
        if status == 200 || waited.elapsed() > Duration::from_secs(5) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 200, "{body}");
    let n = server.rpc(call("sql.query", json!({"sql": "SELECT count(*) FROM t"})));
    assert_eq!(
        n["result"]["rows"][0][0], 0,
        "nothing of the long ones committed"
    );
    assert!(server.stop().success());
}

#[test]
fn a_queued_request_is_answered_by_its_deadline_while_the_writer_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queued.db");
    let server = Server::start_with(
        &db,
        &[],
        &[
            ("LITEBRIDGE_DB_MAX_WRITE_HOLD_MS", "60000"),
            ("LITEBRIDGE_DB_TIMEOUT_MS", "1000"),
        ],
    );
    server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            server.rpc(call(
                "sql.execute",
                json!({"sql": FOREVER, "timeout_ms": 4_000}),
            ))
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let r = server.rpc(call(
            "memory.store",
            json!({"namespace": "n", "key": "k", "value": 1}),
        ));
        let took = started.elapsed();
        assert_eq!(r["error"]["data"]["kind"], "timeout", "{r}");
        assert!(
            took < Duration::from_millis(2_000),
            "answered at its 1 s deadline, not when the writer got free: {took:?}"
        );
    });
    // It never ran.
    let got = server.rpc(call("memory.get", json!({"namespace": "n", "key": "k"})));
    assert_eq!(got["result"]["found"], false, "{got}");
    assert!(server.stop().success());
}

#[test]
fn sigterm_exits_within_the_grace_period_while_a_statement_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
    let server = Server::start_with(
        &db,
        &[],
        &[
            ("LITEBRIDGE_DB_MAX_WRITE_HOLD_MS", "3600000"),
            ("LITEBRIDGE_SERVER_SHUTDOWN_GRACE_MS", "1500"),
        ],
    );
    server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    server.rpc(call(
        "sql.execute",
        json!({"sql": "INSERT INTO t VALUES (1)"}),
    ));
    let addr = server.addr.clone();
    let long = std::thread::spawn(move || {
        let body = call(
            "sql.execute",
            json!({"sql": FOREVER, "timeout_ms": 3_600_000}),
        )
        .to_string();
        post_and_wait(&addr, &body, Duration::from_secs(30));
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = server.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(3_000), "exit took {took:?}");
    long.join().unwrap();
    // What was committed is there; nothing of the interrupted statement is.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// Queries whose rows run with no progress check (a row of many expensive
/// columns) hold the async runtime's threads; SIGTERM still exits within
/// the grace period, on a watchdog of its own (it overran by 1.6 s when the
/// runtime's timers decided).
#[test]
fn sigterm_exits_within_the_grace_period_while_queries_hold_every_thread() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hold.db");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_SERVER_SHUTDOWN_GRACE_MS", "1000")]);
    server.rpc(call(
        "sql.execute",
        json!({"sql": "CREATE TABLE b(v TEXT)"}),
    ));
    server.rpc(call(
        "sql.execute",
        json!({"sql": "INSERT INTO b VALUES (printf('%.*c', 4000000, 'a'))"}),
    ));
    let columns = vec!["length(v)"; 1500].join(", ");
    let sql = format!("SELECT {columns} FROM b");
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, sql) = (server.addr.clone(), sql.clone());
            std::thread::spawn(move || {
                let body =
                    call("sql.query", json!({"sql": sql, "timeout_ms": 3_600_000})).to_string();
                post_and_wait(&addr, &body, Duration::from_secs(60));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = server.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(3_500), "exit took {took:?}");
    for h in holders {
        h.join().unwrap();
    }
}

#[test]
fn a_shadow_table_swallows_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shadow.db");
    let server = Server::start(&db, &[]);
    for sql in [
        "CREATE TEMP TABLE x(namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, \
         expires_at INTEGER, updated_at INTEGER NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID",
        "ALTER TABLE temp.x RENAME TO litebridge_memory",
    ] {
        let r = server.rpc(call("sql.execute", json!({"sql": sql})));
        assert!(r["error"].is_object(), "{sql}: {r}");
    }
    let r = server.rpc(call(
        "memory.store",
        json!({"namespace": "agent", "key": "goal", "value": "kept"}),
    ));
    assert_eq!(r["result"]["ok"], true, "{r}");
    assert!(server.stop().success());
    let server = Server::start(&db, &[]);
    let got = server.rpc(call(
        "memory.get",
        json!({"namespace": "agent", "key": "goal"}),
    ));
    assert_eq!(got["result"]["value"], "kept", "{got}");
    assert!(server.stop().success());
}

#[test]
fn a_few_long_queries_freeze_every_request_health_included() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("freeze.db");
    let server = Server::start(&db, &[]);
    let long =
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT count(*) FROM c";
    std::thread::scope(|scope| {
        // More long queries than readers and heavy connections, from many clients.
        for i in 0..12 {
            let server = &server;
            scope.spawn(move || {
                let lane = if i % 3 == 0 { "heavy" } else { "read" };
                server.rpc(call(
                    "sql.query",
                    json!({"sql": long, "timeout_ms": 3_000, "lane": lane}),
                ))
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..8 {
            let started = Instant::now();
            let (status, _) = server.request("GET", "/health", None, b"");
            let took = started.elapsed();
            assert_eq!(status, 200);
            assert!(took < Duration::from_millis(500), "/health took {took:?}");
            // A point read on a fresh connection is not stuck either once a
            // reader frees (they time out at 3 s); /metrics is served at once.
            let started = Instant::now();
            let (status, _) = server.request("GET", "/metrics", None, b"");
            assert_eq!(status, 200);
            assert!(started.elapsed() < Duration::from_millis(500));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(server.stop().success());
}

#[test]
fn slow_and_stalled_clients_take_every_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("slow.db");
    let server = Server::start_with(
        &db,
        &[],
        &[
            ("LITEBRIDGE_SERVER_MAX_CONNECTIONS", "8"),
            ("LITEBRIDGE_SERVER_READ_TIMEOUT_MS", "1000"),
        ],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for i in 0..12 {
        let (addr, stop) = (server.addr.clone(), stop.clone());
        attackers.push(std::thread::spawn(move || {
            let mut answers = Vec::new();
            // Each attacker reconnects as soon as it is dropped.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut s) = std::net::TcpStream::connect(&addr) else { break };
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                match i % 3 {
                    // A head trickled a byte at a time.
                    0 => {
                        let _ = s.write_all(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
                    }
                    // A head, then a body that stops.
                    1 => {
                        let _ = s.write_all(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"jsonrpc\"");
                    }
                    // Nothing at all.
                    _ => {}
                }
                let mut buf = [0u8; 512];
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return answers;
                    }
                    if i % 3 == 0 && s.write_all(b"a").is_err() {
                        break;
                    }
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
            }
            answers
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Honest clients keep being served, within about a read timeout or two.
    for i in 0..6 {
        let started = Instant::now();
        let r = server.rpc(call(
            "sql.query",
            json!({"sql": "SELECT ?1", "params": [i]}),
        ));
        let took = started.elapsed();
        assert_eq!(r["result"]["rows"][0][0], i, "{r}");
        assert!(took < Duration::from_secs(6), "request {i} took {took:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers: Vec<String> = attackers
        .into_iter()
        .flat_map(|a| a.join().unwrap())
        .collect();
    // Stalled bodies were told so.
    assert!(
        answers.iter().any(|a| a.starts_with("HTTP/1.1 408")),
        "{answers:?}"
    );
    assert!(server.stop().success());
}

#[test]
fn select_1e999_comes_back_as_null_and_a_duplicated_member_is_resolved_silently() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("values.db");
    let server = Server::start(&db, &[]);
    let r = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT 1e999, -1e999, 1.5"}),
    ));
    assert_eq!(
        r["result"]["rows"][0],
        json!([{"$real": "Infinity"}, {"$real": "-Infinity"}, 1.5]),
        "{r}"
    );
    // And back: an infinite REAL binds as itself.
    let r = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT ?1 > 1e308, typeof(?1)", "params": [{"$real": "Infinity"}]}),
    ));
    assert_eq!(r["result"]["rows"][0], json!([1, "real"]), "{r}");
    // Text that is not UTF-8: its bytes, unchanged, as a blob (not U+FFFD).
    let r = server.rpc(call(
        "sql.query",
        json!({"sql": "SELECT CAST(X'41FF42' AS TEXT), 'é'"}),
    ));
    assert_eq!(
        r["result"]["rows"][0],
        json!([{"$blob": "Qf9C"}, "é"]),
        "{r}"
    );
    // A member named twice: which one was meant is not clear, nothing runs.
    server.rpc(call("sql.execute", json!({"sql": "CREATE TABLE t(x)"})));
    let text = r#"{"jsonrpc":"2.0","method":"sql.execute","params":{"sql":"INSERT INTO t VALUES (1)","sql":"DROP TABLE t"},"id":7}"#;
    let (status, body) = server.request("POST", "/rpc", Some("application/json"), text.as_bytes());
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"sql\""),
        "{reply}"
    );
    let n = server.rpc(call("sql.query", json!({"sql": "SELECT count(*) FROM t"})));
    assert_eq!(n["result"]["rows"][0][0], 0, "{n}");
    assert!(server.stop().success());
}

#[test]
fn every_distinct_name_sent_to_bridge_call_creates_state_forever() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("names.db");
    let server = Server::start(&db, &["--workers", "python3 examples/worker.py"]);
    let metrics_lines = || {
        let (_, body) = server.request("GET", "/metrics", None, b"");
        String::from_utf8_lossy(&body).lines().count()
    };
    server.rpc(call(
        "bridge.call",
        json!({"method": "echo", "params": [1]}),
    ));
    let before = metrics_lines();
    for i in 0..300 {
        let r = server.rpc(call("bridge.call", json!({"method": format!("m{i}")})));
        assert_eq!(r["error"]["code"], -32602, "{r}");
    }
    let after = metrics_lines();
    assert!(
        after <= before + 5,
        "/metrics grew from {before} to {after} lines"
    );
    assert!(server.stop().success());
}

#[test]
fn schema_bloat_stalls_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bloat.db");
    let server = Server::start_with(&db, &[], &[("LITEBRIDGE_DB_MAX_SCHEMA_OBJECTS", "200")]);
    let creates = |from: usize, n: usize| {
        let statements: Vec<Value> = (from..from + n)
            .map(|i| json!({"sql": format!("CREATE TABLE t{i}(a INTEGER PRIMARY KEY, b TEXT)")}))
            .collect();
        server.rpc(call("sql.batch", json!({ "statements": statements })))
    };
    let tables = || {
        server.rpc(call(
            "sql.query",
            json!({"sql": "SELECT count(*) FROM sqlite_schema WHERE name GLOB 't[0-9]*'"}),
        ))["result"]["rows"][0][0]
            .as_i64()
            .unwrap()
    };
    let r = creates(0, 300);
    assert_eq!(r["error"]["data"]["kind"], "too_large", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_schema_objects"),
        "{r}"
    );
    assert_eq!(tables(), 0, "the batch is atomic");
    let r = creates(0, 150);
    assert!(r["result"].is_object(), "{r}");
    let r = creates(150, 100);
    assert_eq!(r["error"]["data"]["kind"], "too_large", "{r}");
    assert_eq!(tables(), 150);
    // Dropping makes room again; reads after DDL stay quick.
    let r = server.rpc(call("sql.execute", json!({"sql": "DROP TABLE t0"})));
    assert!(r["result"].is_object(), "{r}");
    let started = Instant::now();
    assert_eq!(tables(), 149);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(server.stop().success());
}

#[test]
fn clients_that_never_read_their_answer_or_trickle_an_mcp_body_hold_every_connection() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("noread.db");
    let server = Server::start_with(
        &db,
        &[],
        &[
            ("LITEBRIDGE_SERVER_MAX_CONNECTIONS", "4"),
            ("LITEBRIDGE_SERVER_READ_TIMEOUT_MS", "1000"),
        ],
    );
    let mut held = Vec::new();
    // Two ask for 40 MB and never read it.
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        let body = call(
            "sql.query",
            json!({"sql": "SELECT hex(zeroblob(20000000))"}),
        )
        .to_string();
        s.write_all(
            format!(
                "POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        held.push(s);
    }
    // Two trickle an /mcp body.
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 100000\r\n\r\n{")
            .unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // Building the answers takes CPU time (more when other tests run beside
    // this one); then each stalled write gives its slot up after 1 s. Before,
    // the slots stayed taken for good.
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _) = server.request("GET", "/health", None, b"");
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
    drop(held);
    assert!(server.stop().success());
}

/// One row of many expensive columns (each `hex` of 16 MB): one long step
/// of SQLite with no progress check in it, which used to hold the runtime
/// thread it started on for its whole run.
fn expensive_row(columns: usize) -> String {
    let cols = vec!["length(hex(b))"; columns].join(", ");
    format!("SELECT {cols} FROM (SELECT zeroblob(16000000) AS b)")
}

#[test]
fn a_few_rows_of_expensive_columns_freeze_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    let server = Server::start(&db, &[]);
    // How long one such query runs here, to make them last seconds.
    let started = Instant::now();
    let r = server.rpc(call("sql.query", json!({"sql": expensive_row(4)})));
    assert!(r["result"]["rows"].is_array(), "{r}");
    let per_column = started.elapsed() / 4;
    let columns = (Duration::from_secs(6).as_nanos() / per_column.as_nanos().max(1)) as usize;
    let held = expensive_row(columns.clamp(20, 1900));
    std::thread::scope(|scope| {
        // More of them than the runtime has threads, from clients of their own.
        for _ in 0..4 {
            let (addr, held) = (server.addr.clone(), held.clone());
            scope.spawn(move || {
                let body = call("sql.query", json!({"sql": held, "timeout_ms": 60_000}));
                post_and_wait(&addr, &body.to_string(), Duration::from_secs(120));
            });
        }
        std::thread::sleep(Duration::from_millis(700));
        let waiting =
            scope.spawn(|| server.rpc(call("sql.query", json!({"sql": "SELECT 7 AS x"}))));
        for _ in 0..4 {
            let started = Instant::now();
            let (status, _) = server.request("GET", "/health", None, b"");
            let took = started.elapsed();
            assert_eq!(status, 200);
            assert!(took < Duration::from_millis(500), "/health took {took:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let answer = waiting.join().unwrap();
        assert_eq!(answer["result"]["rows"][0][0], 7, "{answer}");
    });
    assert!(server.stop().success());
}

/// A worker call that outlasts the grace period at SIGTERM: the server
/// leaves on time and its worker is killed with it, not left running the
/// call nobody waits for (an operator's audit saw it outlive the server).
#[test]
fn sigterm_kills_a_worker_still_running_a_call_at_the_end_of_the_grace_period() {
    sigterm_kills_the_worker_of_a_long_call(false);
}

/// The same for a worker recycled while it runs a call (out of its slot,
/// finishing the call): it is killed with the others, not left running
/// after the server is gone (review 143).
#[test]
fn sigterm_kills_a_recycled_worker_still_running_a_call() {
    sigterm_kills_the_worker_of_a_long_call(true);
}

/// One worker runs a 60 s call, recycled meanwhile or not; SIGTERM with a
/// grace of 1.5 s: the server leaves within 4 s and the worker is gone.
fn sigterm_kills_the_worker_of_a_long_call(recycled: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wterm.db");
    let mut env = vec![("LITEBRIDGE_SERVER_SHUTDOWN_GRACE_MS", "1500")];
    if recycled {
        env.push(("LITEBRIDGE_WORKERS_RECYCLE_AFTER_CALLS", "1"));
    }
    let server = Server::start_with(
        &db,
        &[
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
        &env,
    );
    let worker = |server: &Server| {
        let h = server.rpc(call("bridge.health", json!({})));
        let w = &h["result"]["workers"][0];
        (w["id"].as_u64().unwrap(), w["pid"].as_u64().unwrap())
    };
    let (first_id, pid) = worker(&server);
    let addr = server.addr.clone();
    let long = std::thread::spawn(move || {
        let body = call(
            "bridge.call",
            json!({"method": "wait", "params": [60], "timeout_ms": 120_000}),
        )
        .to_string();
        post_and_wait(&addr, &body, Duration::from_secs(30));
    });
    if recycled {
        // Until it is recycled: another worker in its slot.
        let until = Instant::now() + Duration::from_secs(20);
        while worker(&server).0 == first_id {
            assert!(Instant::now() < until, "the worker was not recycled");
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    assert!(server.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    let until = Instant::now() + Duration::from_secs(2);
    while alive() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(),
        "worker {pid} outlived the server (recycled: {recycled})"
    );
    long.join().unwrap();
}

/// SIGTERM while the workers start (one loading for 30 s) stops litebridge
/// at once, exit 0, and the worker with it (it was the signal's default
/// action: litebridge died, and the loading worker lived on until ready).
#[test]
fn sigterm_while_the_workers_start_stops_them() {
    sigterm_while_starting(&["serve", "--listen", "127.0.0.1:0", "--db", "start.db"]);
    // A worker host too (its NATS server is never reached: the signal
    // comes while its workers start).
    sigterm_while_starting(&["worker-host", "--nats", "nats://127.0.0.1:1"]);
}

/// Runs `litebridge <args>` in a directory of its own with one worker that
/// takes 30 s to start, sends SIGTERM once it runs, and checks that both
/// are gone at once and the exit is 0.
fn sigterm_while_starting(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let script = dir.path().join("slow.py");
    std::fs::write(
        &script,
        format!(
            "import os, time\nopen({:?}, 'w').write(str(os.getpid()))\ntime.sleep(30)\n",
            pid_file.display().to_string()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .current_dir(dir.path())
        .args(args)
        .args(["--processes", "1", "--workers"])
        .arg(format!("python3 {}", script.display()))
        .env("LITEBRIDGE_WORKERS_START_TIMEOUT_MS", "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let worker: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < until, "the worker never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = sigterm_and_wait(&mut child, Duration::from_secs(10));
    let gone = Instant::now() + Duration::from_secs(3);
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
    };
    while alive(worker) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survived = alive(worker);
    if survived {
        let _ = std::process::Command::new("kill")
            .args(["-9", &worker.to_string()])
            .status();
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.code() == Some(0) && took < Duration::from_secs(5) && !survived,
        "{args:?}: after SIGTERM while starting: {status:?} in {took:?}, worker {worker} alive: {survived}; stderr: {err}"
    );
}

/// `stdio` and `mcp` end at a signal once started, with their workers
/// (review 155: listening for signals at the start had left them deaf to
/// SIGTERM and Ctrl-C for good).
#[test]
fn stdio_and_mcp_end_at_a_signal() {
    use std::io::{BufRead as _, Write as _};
    for command in ["stdio", "mcp"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .arg(command)
            .arg("--db")
            .arg(dir.path().join("s.db"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let request = if command == "stdio" {
            r#"{"jsonrpc":"2.0","id":1,"method":"pool.health","params":{}}"#
        } else {
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#
        };
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("\"id\":1"), "{command}: {line}");
        let (status, _) = signal_and_wait(&mut child, "-TERM", Duration::from_secs(5));
        drop(stdin);
        // A stop as asked: 0, as `serve` after its drain (see `signals`).
        assert_eq!(
            status.code(),
            Some(0),
            "{command} after SIGTERM: {status:?}"
        );
    }
}

/// `/ready` needs no key: a removed database file is named, its directory
/// is not (review 158: the whole path was shown to anyone).
#[test]
fn ready_names_a_removed_file_without_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gone.db");
    let server = Server::start(&db, &[]);
    std::fs::rename(&db, dir.path().join("elsewhere.db")).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = ready(&server);
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < until, "still ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = body.to_string();
    assert!(text.contains("gone.db was removed"), "{text}");
    let shown = dir.path().display().to_string();
    assert!(!text.contains(&shown), "{text}");
    server.stop();
}

/// Under `nohup` (SIGHUP ignored at start), a closed terminal does not stop
/// `serve`: it listened for SIGHUP whatever its disposition, and drained.
#[test]
fn a_hangup_ignored_at_start_stays_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hup.log");
    let (child, addr) = common::spawn_serve_under(
        &["nohup"],
        &dir.path().join("hup.db"),
        &[],
        &[],
        std::fs::File::create(&log).unwrap().into(),
    );
    let mut server = Server { child, addr, log };
    std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP under nohup stopped it"
    );
    assert_eq!(server.request("GET", "/ready", None, b"").0, 200);
    assert!(server.stop().success());
}

/// SIGINT ignored at the start (a script's background job) is still heard:
/// `kill -INT` stops a background litebridge, draining, with 130. (Only
/// SIGHUP ignored at the start stays ignored.)
#[test]
fn sigint_ignored_at_start_is_still_heard() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("int.log");
    let ignoring = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])";
    let (child, addr) = common::spawn_serve_under(
        &["python3", "-c", ignoring],
        &dir.path().join("int.db"),
        &[],
        &[],
        std::fs::File::create(&log).unwrap().into(),
    );
    let mut server = Server { child, addr, log };
    assert_eq!(server.request("GET", "/ready", None, b"").0, 200);
    let (status, took) = signal_and_wait(&mut server.child, "-INT", Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{status:?} after {took:?}");
}

/// One signal delivered twice a few milliseconds apart (Ctrl-C reaching a
/// wrapper that forwards it, and litebridge through the terminal) is one:
/// `serve` drains, a worker call in flight is answered, and it exits as
/// stopped by it. It counted two, left at once and killed the call.
#[test]
fn a_signal_delivered_twice_at_once_still_drains() {
    // (Ctrl-C forwarded as SIGTERM, as honcho and foreman do, too: the
    // status is the first's.)
    for (flags, code) in [
        (["-TERM", "-TERM"], 0),
        (["-INT", "-INT"], 130),
        (["-INT", "-TERM"], 130),
    ] {
        let flag = flags.join(" ");
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::start_with(
            &dir.path().join("twice.db"),
            &[
                "--workers",
                "python3 examples/worker.py",
                "--processes",
                "1",
            ],
            &[("LITEBRIDGE_SERVER_SHUTDOWN_GRACE_MS", "10000")],
        );
        let addr = server.addr.clone();
        let waiting = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let body = call("bridge.call", json!({"method": "wait", "params": [1.5]})).to_string();
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(
                format!(
                    "POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        std::thread::sleep(Duration::from_millis(500));
        let pid = server.child.id().to_string();
        for one in flags {
            std::process::Command::new("kill")
                .args([one, &pid])
                .status()
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let answer = waiting.join().unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < until, "{flag}: no exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(answer.contains("\"result\":1.5"), "{flag}: {answer}");
        assert_eq!(status.code(), Some(code), "{flag}: {status:?}");
    }
}

/// Sends SIGTERM to `child` and waits up to `limit` for it to end (killed
/// past that): how it ended, and how long after the signal.
fn sigterm_and_wait(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    signal_and_wait(child, "-TERM", limit)
}

/// [`sigterm_and_wait`] with the signal `flag` names (`kill`'s, `-INT`).
fn signal_and_wait(
    child: &mut std::process::Child,
    flag: &str,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args([flag, &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, signalled.elapsed());
        }
        if signalled.elapsed() > limit {
            let _ = child.kill();
            return (child.wait().unwrap(), signalled.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
