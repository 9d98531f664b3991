//! `pool.health`, `pool.stats` and `persistence.stats` against the seed
//! system's own examples (`shared/seeds/002`, "MCP tools for monitoring"),
//! field by field: every member the seed shows is there, with the seed's
//! JSON type and, for text, the seed's format (timestamps to the millisecond,
//! rates as the seed writes them). Members litebridge adds are listed here,
//! so adding one is a decision a test records.

use serde_json::{Value, json};

mod common;

/// Seed 002, `pool_health`.
const POOL_HEALTH: &str = r#"{
  "healthy": true,
  "pool_status": {
    "total_connections": 7,
    "active_connections": 1,
    "available_readers": 6,
    "available_workers": 3,
    "queue_lengths": {
      "read_queue": 0,
      "write_queue": 0,
      "worker_queue": 0
    }
  },
  "last_health_check": "2025-07-08T22:47:35.000Z",
  "timestamp": "2025-07-08T22:47:35.663Z"
}"#;

/// Seed 002, `pool_stats`.
const POOL_STATS: &str = r#"{
  "pool_metrics": {
    "total_reads": 1250,
    "total_writes": 340,
    "total_worker_tasks": 25,
    "failed_connections": 0,
    "average_read_time": 0.85,
    "average_write_time": 2.3,
    "active_connections": 1,
    "available_readers": 6,
    "available_workers": 3
  },
  "persistence_metrics": {
    "total_operations": 1615,
    "total_errors": 0,
    "average_response_time": 1.2,
    "error_rate": "0%"
  },
  "health_status": {
    "healthy": true,
    "last_check": "2025-07-08T22:47:35.000Z"
  }
}"#;

/// Seed 002, `persistence_stats`.
const PERSISTENCE_STATS: &str = r#"{
  "persistence_layer": "SwarmPersistencePooled",
  "connection_pool": "enabled",
  "statistics": {
    "total_operations": 1615,
    "total_errors": 0,
    "average_response_time_ms": 1.2,
    "error_rate_percent": "0.00",
    "success_rate_percent": "100.00"
  },
  "pool_health": {
    "healthy": true,
    "total_connections": 7,
    "active_connections": 1,
    "available_readers": 6,
    "available_workers": 3
  }
}"#;

/// What litebridge answers beyond the seed's members, by path.
const ADDED: &[&str] = &[
    "problems",
    // Which database serves (sqlite, postgres); on PostgreSQL, `cluster`.
    "backend",
    "cluster",
    "pool_metrics.read_p50_ms",
    "pool_metrics.read_p95_ms",
    "pool_metrics.read_p99_ms",
    "pool_metrics.write_p50_ms",
    "pool_metrics.write_p95_ms",
    "pool_metrics.write_p99_ms",
    "pool_metrics.batches",
    "pool_metrics.wal_bytes",
    "pool_metrics.timeouts",
    "pool_metrics.overloaded",
    "pool_metrics.writer_restarts",
    "pool_metrics.checkpoints",
    // `available_workers` under the name of what it counts: the heavy
    // lane's free connections (an audit read it as worker processes).
    "pool_status.available_heavy",
    "pool_metrics.available_heavy",
];

/// The seed's text formats, recognised by a member's example value.
fn same_format(seed: &str, ours: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let millis_stamp = |s: &str| {
        // 2025-07-08T22:47:35.663Z
        let b = s.as_bytes();
        s.len() == 24
            && [4, 7].iter().all(|&i| b[i] == b'-')
            && b[10] == b'T'
            && [13, 16].iter().all(|&i| b[i] == b':')
            && b[19] == b'.'
            && b[23] == b'Z'
            && [
                &s[0..4],
                &s[5..7],
                &s[8..10],
                &s[11..13],
                &s[14..16],
                &s[17..19],
                &s[20..23],
            ]
            .iter()
            .all(|p| digits(p))
    };
    let two_decimals = |s: &str| {
        s.split_once('.')
            .is_some_and(|(i, f)| digits(i) && f.len() == 2 && digits(f))
    };
    let seed_percent = |s: &str| {
        s.strip_suffix('%')
            .is_some_and(|n| match n.split_once('.') {
                None => digits(n),
                Some((i, f)) => {
                    digits(i) && (1..=2).contains(&f.len()) && digits(f) && !f.ends_with('0')
                }
            })
    };
    if millis_stamp(seed) {
        millis_stamp(ours)
    } else if two_decimals(seed) {
        two_decimals(ours)
    } else if seed.ends_with('%') {
        seed_percent(ours)
    } else {
        // A name (`persistence_layer`, `connection_pool`): any text.
        true
    }
}

fn compare(seed: &Value, ours: &Value, path: &str, problems: &mut Vec<String>) {
    match (seed, ours) {
        (Value::Object(s), Value::Object(o)) => {
            for (k, sv) in s {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => compare(sv, ov, &p, problems),
                    None => problems.push(format!("{p}: missing")),
                }
            }
            for k in o.keys().filter(|k| !s.contains_key(*k)) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if !ADDED.contains(&p.as_str()) {
                    problems.push(format!("{p}: not in the seed and not listed as added"));
                }
            }
        }
        (Value::Bool(_), Value::Bool(_)) => {}
        (Value::Number(s), Value::Number(o)) => {
            // Counts are integers in the seed; times in ms may be fractional.
            if s.is_u64() && !o.is_u64() && !path.contains("time") {
                problems.push(format!("{path}: the seed has an integer, litebridge {o}"));
            }
        }
        (Value::String(s), Value::String(o)) => {
            if !same_format(s, o) {
                problems.push(format!("{path}: {o:?} is not written as the seed's {s:?}"));
            }
        }
        (s, o) => problems.push(format!("{path}: the seed has {s}, litebridge {o}")),
    }
}

fn call_all(methods: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("seed.db").display().to_string();
    let mut session = common::StdioSession::start(&["--db", &db], &[]);
    let mut answers = Vec::new();
    // Some traffic first, so the figures are not all zero.
    let mut lines = vec![
        json!({"jsonrpc": "2.0", "id": "t", "method": "sql.execute", "params": {"sql": "CREATE TABLE t(x)"}}),
        json!({"jsonrpc": "2.0", "id": "i", "method": "sql.execute", "params": {"sql": "INSERT INTO t VALUES (1)"}}),
        json!({"jsonrpc": "2.0", "id": "q", "method": "sql.query", "params": {"sql": "SELECT x FROM t"}}),
        json!({"jsonrpc": "2.0", "id": "e", "method": "sql.query", "params": {"sql": "SELECT nope FROM t"}}),
    ];
    lines.extend(
        methods
            .iter()
            .map(|m| json!({"jsonrpc": "2.0", "id": m, "method": m})),
    );
    for line in lines {
        let id = line["id"].clone();
        session.send_json(line);
        let reply = session.recv();
        assert_eq!(reply["id"], id, "{reply}");
        if methods.contains(&id.as_str().unwrap_or("")) {
            answers.push(reply["result"].clone());
        }
    }
    session.finish();
    answers
}

#[test]
fn pool_and_persistence_stats_have_the_seeds_shapes_field_by_field() {
    let methods = ["pool.health", "pool.stats", "persistence.stats"];
    let answers = call_all(&methods);
    let mut problems = Vec::new();
    for ((method, seed), ours) in methods
        .iter()
        .zip([POOL_HEALTH, POOL_STATS, PERSISTENCE_STATS])
        .zip(&answers)
    {
        let seed: Value = serde_json::from_str(seed).unwrap();
        let mut found = Vec::new();
        compare(&seed, ours, "", &mut found);
        problems.extend(found.into_iter().map(|p| format!("{method} {p}")));
    }
    assert!(problems.is_empty(), "{problems:#?}\n{answers:#?}");
    // Values the seed's fields mean, not only their shapes.
    let [health, stats, persistence] = &answers[..] else {
        unreachable!()
    };
    assert!(
        health["last_health_check"].is_string(),
        "checked at open: {health}"
    );
    let m = &stats["persistence_metrics"];
    assert_eq!(m["total_errors"], 1, "{stats}");
    let rate = 100.0 / m["total_operations"].as_f64().unwrap();
    let text = m["error_rate"].as_str().unwrap();
    let shown: f64 = text.trim_end_matches('%').parse().unwrap();
    assert!((shown - rate).abs() < 0.006, "{text} for {rate}");
    assert_eq!(
        persistence["statistics"]["error_rate_percent"],
        format!("{rate:.2}"),
        "{persistence}"
    );
}

#[test]
fn the_format_checks_tell_the_seeds_formats_apart() {
    assert!(same_format(
        "2025-07-08T22:47:35.663Z",
        "2026-12-01T10:07:12.000Z"
    ));
    assert!(!same_format(
        "2025-07-08T22:47:35.663Z",
        "2026-12-01T10:07:12Z"
    ));
    assert!(same_format("0%", "0%") && same_format("0%", "12.5%") && same_format("0%", "33.33%"));
    assert!(!same_format("0%", "0.00%") && !same_format("0%", "12.50%"));
    assert!(same_format("100.00", "66.67") && !same_format("100.00", "66.7"));
    let mut problems = Vec::new();
    compare(
        &json!({"a": 1, "b": "0%"}),
        &json!({"a": 1.5, "c": 2}),
        "",
        &mut problems,
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
}
