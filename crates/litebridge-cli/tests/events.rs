//! The event stream through both transports, with real Python workers:
//! `GET /events` (server-sent events) and `events.subscribe` over stdio.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Opens `GET /events` with `headers`; the status line and the stream.
fn open_events(addr: &str, headers: &[(&str, &str)]) -> (String, BufReader<TcpStream>) {
    open_events_as(addr, addr, headers)
}

/// As [`open_events`], naming `host` in the `Host` header.
fn open_events_as(
    addr: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("GET /events HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    // The rest of the head.
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (status, reader)
}

/// Reads server-sent events until one named `name`; returns its data.
fn until_event(stream: &mut BufReader<TcpStream>, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut current = String::new();
    while Instant::now() < deadline {
        let mut line = String::new();
        if stream.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("the stream ended before a {name} event");
        }
        let line = line.trim_end();
        if let Some(e) = line.strip_prefix("event: ") {
            current = e.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ")
            && current == name
        {
            return serde_json::from_str(data).unwrap();
        }
    }
    panic!("no {name} event within 20 s");
}

/// Reads until the body's last chunk (the connection itself stays open).
fn until_ended(stream: &mut BufReader<TcpStream>) {
    loop {
        let mut line = String::new();
        assert!(
            stream.read_line(&mut line).unwrap() > 0,
            "closed, not ended"
        );
        if line == "0\r\n" {
            return;
        }
    }
}

fn fail_five_times(server: &common::Server) {
    for i in 0..5 {
        let r = server.rpc(json!({"jsonrpc": "2.0", "id": i, "method": "bridge.call",
            "params": {"method": "fail", "params": ["on purpose"]}}));
        assert_eq!(r["error"]["data"]["kind"], "worker_error", "{r}");
    }
}

#[test]
fn events_over_http_are_server_sent_with_the_seeds_names_and_end_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        &dir.path().join("e.db"),
        &[
            "--workers",
            "python3 examples/worker.py",
            "--processes",
            "1",
        ],
    );
    // A foreign Host is refused as on every route.
    let (status, _) = open_events_as(&server.addr, "evil.example", &[]);
    assert!(status.contains(" 403 "), "{status}");
    let (status, mut stream) = open_events(&server.addr, &[]);
    assert!(status.contains(" 200 "), "{status}");
    fail_five_times(&server);
    let e = until_event(&mut stream, "circuit-breaker-state-change");
    assert_eq!(
        (&e["method"], &e["from"], &e["to"]),
        (&json!("fail"), &json!("closed"), &json!("open")),
        "{e}"
    );
    assert!(
        e["ts"].as_str().unwrap().ends_with('Z') && e["seq"].as_u64().unwrap() >= 2,
        "{e}"
    );
    // `started` was before this reader came: a reader whose last id is of
    // another run (the server restarted) gets this run's from the start.
    let (_, mut again) = open_events(&server.addr, &[("Last-Event-ID", "1-99")]);
    let started = until_event(&mut again, "started");
    assert_eq!(started["processes"], 1);
    assert_eq!(started["seq"], 1);
    let worker = until_event(&mut again, "process-started");
    assert_eq!(worker["id"], 1, "the worker's id, as in the seed");
    // SIGTERM: the stream gets `shutdown` and ends; the server does not wait
    // out its grace period on it.
    let begun = Instant::now();
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    until_event(&mut stream, "shutdown");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let mut server = server;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(
        begun.elapsed() < Duration::from_secs(8),
        "{:?}",
        begun.elapsed()
    );
}

#[test]
fn events_over_http_need_the_read_scope_once_keys_exist() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let bridge_only = common::create_key(&db, "b", "bridge", "free");
    let reader = common::create_key(&db, "r", "read", "free");
    let other = common::create_key(&db, "r2", "read", "free");
    let server = common::Server::start(&db, &[]);
    let (status, _) = open_events(&server.addr, &[]);
    assert!(status.contains(" 401 "), "{status}");
    let (status, _) = open_events(
        &server.addr,
        &[("Authorization", &format!("Bearer {bridge_only}"))],
    );
    assert!(status.contains(" 403 "), "{status}");
    let bearer = format!("Bearer {reader}");
    let auth = [("Authorization", bearer.as_str())];
    let mut streams: Vec<_> = (0..4)
        .map(|_| {
            let (status, stream) = open_events(&server.addr, &auth);
            assert!(status.contains(" 200 "), "{status}");
            stream
        })
        .collect();
    // A fifth stream of the same key ends its oldest (a client gone without
    // closing would otherwise hold its place for minutes).
    let (status, fifth) = open_events(&server.addr, &auth);
    assert!(status.contains(" 200 "), "{status}");
    until_ended(&mut streams[0]);
    streams[0] = fifth;
    // Revoked from another process: its streams end within seconds.
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["keys", "revoke", "--db"])
        .arg(&db)
        .args(["--name", "r"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let begun = Instant::now();
    until_ended(&mut streams[0]);
    assert!(
        begun.elapsed() < Duration::from_secs(15),
        "{:?}",
        begun.elapsed()
    );
    streams.clear();
    // Over /rpc the subscription is refused, saying where to go.
    let (_, r) = server.rpc_as(
        Some(&other),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe"}),
    );
    assert_eq!(r["error"]["code"], -32012, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /events"),
        "{r}"
    );
    assert!(server.stop().success());
}

#[test]
fn events_over_stdio_come_as_notifications_after_subscribing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db").display().to_string();
    let mut s = common::StdioSession::with_worker(&db);
    let mut lines = Vec::new();
    // Not subscribed: five failures, then a probe; no notification between.
    for i in 0..5 {
        s.send_json(json!({"jsonrpc": "2.0", "id": i, "method": "bridge.call",
            "params": {"method": "fail", "params": ["x"]}}));
        lines.push(s.recv());
    }
    assert!(lines.iter().all(|l| l.get("id").is_some()), "{lines:?}");
    s.send_json(json!({"jsonrpc": "2.0", "id": "sub", "method": "events.subscribe"}));
    // The opening's event, relayed once subscribed, may come before the
    // reply (CI saw it); it is looked for with the reset's below.
    let mut early = Vec::new();
    let reply = loop {
        let line = s.recv();
        if line["id"] == "sub" {
            break line;
        }
        early.push(line);
    };
    assert_eq!(reply["result"], json!({"subscribed": true}), "{early:?}");
    assert!(early.iter().all(|l| l["method"] == "event"), "{early:?}");
    s.send_json(
        json!({"jsonrpc": "2.0", "id": "reset", "method": "bridge.breaker.reset",
        "params": {"method": "fail"}}),
    );
    // The reply and the reset's event; the opening's event may come first
    // (relayed after the subscription, as events are, a moment late).
    let is_reset = |v: &Value| v["method"] == "event" && v["params"]["to"] == "closed";
    let mut got = early;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(got.iter().any(is_reset) && got.iter().any(|v| v["id"] == "reset"))
        && got.len() < 3
        && Instant::now() < deadline
    {
        got.push(s.recv());
    }
    let note = got
        .iter()
        .find(|v| is_reset(v))
        .unwrap_or_else(|| panic!("no event in {got:?}"));
    let p = &note["params"];
    assert_eq!(p["event"], "circuit-breaker-state-change");
    assert_eq!(
        (&p["from"], &p["to"]),
        (&json!("open"), &json!("closed")),
        "{p}"
    );
    assert!(note.get("id").is_none(), "a notification");
    s.finish();
}
