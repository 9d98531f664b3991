//! The dashboard at `/` and its data at `GET /api/dashboard`, against the
//! real binary with real Python workers: the files and their headers, keys
//! and scopes, figures that move under load, the Host rule, `--no-dashboard`.

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_key};
use serde_json::{Value, json};

const WORKER: &str = "python3 examples/worker.py";

fn get(s: &Server, path: &str, key: Option<&str>) -> (u16, String, Vec<u8>) {
    s.request_as(key, "GET", path, None, b"")
}

fn data(s: &Server, key: Option<&str>, since: u64) -> Value {
    let (status, headers, body) = get(s, &format!("/api/dashboard?since={since}"), key);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains("cache-control: no-store"), "{headers}");
    assert!(
        headers.contains("x-content-type-options: nosniff"),
        "{headers}"
    );
    assert!(
        headers.contains("cross-origin-resource-policy: same-origin"),
        "{headers}"
    );
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_page_and_its_data_under_keys_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let admin = create_key(&db, "admin", "admin", "enterprise");
    let reader = create_key(&db, "reader", "read", "free");
    let s = Server::start(&db, &["--workers", WORKER, "--processes", "1"]);

    // The files: no key needed (they carry no data), a strict policy.
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let (status, headers, body) = get(&s, path, None);
        assert_eq!(status, 200, "{path}");
        assert!(
            headers.contains(&format!("content-type: {kind}")),
            "{headers}"
        );
        assert!(
            headers.contains("content-security-policy: default-src 'none'; script-src 'self';"),
            "{headers}"
        );
        assert!(!headers.contains("unsafe-inline"), "{headers}");
        assert!(headers.contains("x-content-type-options: nosniff"));
        assert!(headers.contains("referrer-policy: no-referrer"));
        assert!(headers.contains("cross-origin-resource-policy: same-origin"));
        assert!(headers.contains("cross-origin-opener-policy: same-origin"));
        assert!(!body.is_empty());
    }
    let (_, _, page) = get(&s, "/", None);
    let page = String::from_utf8(page).unwrap();
    assert!(!page.contains("<script>"), "no inline script");
    for handler in [
        "onclick=",
        "onload=",
        "onerror=",
        "onsubmit=",
        "javascript:",
    ] {
        assert!(!page.contains(handler), "no inline handlers: {handler}");
    }

    // The data: a key with the read scope; quotas for admin keys only.
    assert_eq!(get(&s, "/api/dashboard", None).0, 401);
    assert_eq!(get(&s, "/api/dashboard", Some("lb_wrong")).0, 401);
    assert_eq!(
        get(&s, "/api/dashboard?since=x", None).0,
        401,
        "the key first"
    );
    let (status, _, body) = get(&s, "/api/dashboard?since=x", Some(&reader));
    assert_eq!(status, 400);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["data"]["kind"], "invalid_argument");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`since`"),
        "{error}"
    );
    let first = data(&s, Some(&reader), 0);
    assert_eq!(first["scopes"], "read");
    assert!(first["quotas"].is_null(), "{first}");
    assert!(
        first["backups"].is_null(),
        "the backup directory names the database's: admin only"
    );
    assert_eq!(first["ready"], true);
    let run = first["run"].as_u64().unwrap();
    assert!(run > 0);
    let everything = data(&s, Some(&admin), 0);
    assert_eq!(everything["backups"]["scheduled"], false, "{everything}");
    // Past the last point (a page of an earlier run): every point, and the run.
    let later = data(&s, Some(&reader), 1_000_000);
    assert_eq!(later["run"].as_u64(), Some(run));
    assert_eq!(later["points"], data(&s, Some(&reader), 0)["points"]);
    let quotas = data(&s, Some(&admin), 0)["quotas"].clone();
    let names: Vec<&str> = quotas
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "reader"]);

    // Load: the figures of the last seconds move, and agree with /metrics.
    s.rpc_as(
        Some(&admin),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "sql.execute",
                "params": {"sql": "CREATE TABLE t(x)"}}),
    );
    let started = Instant::now();
    let mut seen = None;
    let mut since = 0;
    while started.elapsed() < Duration::from_secs(20) && seen.is_none() {
        for i in 0..20 {
            let (status, reply) = s.rpc_as(
                Some(&admin),
                &json!({"jsonrpc": "2.0", "id": i, "method": "sql.execute",
                        "params": {"sql": "INSERT INTO t VALUES (?1)", "params": [i]}}),
            );
            assert_eq!(status, 200, "{reply}");
            s.rpc_as(
                Some(&admin),
                &json!({"jsonrpc": "2.0", "id": i, "method": "bridge.call",
                        "params": {"method": "echo", "params": {"value": i}}}),
            );
        }
        let d = data(&s, Some(&reader), since);
        for p in d["points"].as_array().unwrap() {
            assert!(
                p["seq"].as_u64().unwrap() > since,
                "only points after `since`"
            );
            since = p["seq"].as_u64().unwrap();
            if p["requests_per_s"].as_f64().unwrap() > 0.0
                && p["write"]["per_s"].as_f64().unwrap() > 0.0
                && p["call"]["per_s"].as_f64().unwrap() > 0.0
            {
                seen = Some(p.clone());
            }
        }
    }
    let point = seen.expect("a point with requests, writes and worker calls within 20 s");
    assert!(point["write"]["p99_ms"].as_f64().unwrap() > 0.0, "{point}");
    assert!(point["wal_bytes"].as_u64().unwrap() > 0, "{point}");
    // The figures are a second old at most: they lie between two reads of
    // /metrics taken around them (quota counters are written in the
    // background, so the count moves on).
    let writes = || {
        let metrics = String::from_utf8(get(&s, "/metrics", Some(&reader)).2).unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("litebridge_db_writes_total "))
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let before = writes();
    let started = Instant::now();
    let d = loop {
        let d = data(&s, Some(&reader), 0);
        if d["db"]["pool_metrics"]["total_writes"].as_f64().unwrap() >= before
            || started.elapsed() > Duration::from_secs(5)
        {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let shown = d["db"]["pool_metrics"]["total_writes"].as_f64().unwrap();
    let after = writes();
    assert!(
        before <= shown && shown <= after,
        "/metrics {before}..{after}, the dashboard {shown}"
    );
    assert_eq!(d["bridge"]["workers"].as_array().unwrap().len(), 1);
    assert!(
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "process-started")
    );
    // The admin key's use is counted; polling for new points is not, but
    // an answer of the whole history is (a page opening: found by review
    // 120, uncounted it cost a read key nothing at any rate).
    let quotas = data(&s, Some(&admin), 0)["quotas"].clone();
    assert!(quotas[0]["today"].as_u64().unwrap() >= 40, "{quotas}");
    let reader_today = || {
        data(&s, Some(&admin), 0)["quotas"][1]["today"]
            .as_u64()
            .unwrap()
    };
    let before = reader_today();
    let all = data(&s, Some(&reader), 1_000_000);
    assert_eq!(reader_today(), before + 1, "the whole history is counted");
    let last = all["points"]
        .as_array()
        .and_then(|p| p.last())
        .and_then(|p| p["seq"].as_u64())
        .unwrap();
    for _ in 0..5 {
        data(&s, Some(&reader), last);
    }
    assert_eq!(reader_today(), before + 1, "polling is not counted");

    // The Host rule of every route holds here too.
    for path in ["/", "/api/dashboard"] {
        let (status, _, _) = s.request_with("GET", path, None, &[("Host", "evil.example:80")], b"");
        assert_eq!(status, 403, "{path}");
    }
    s.stop();
}

#[test]
fn no_dashboard_leaves_the_root_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n.db"), &["--no-dashboard"]);
    assert_eq!(get(&s, "/", None).0, 404);
    assert_eq!(get(&s, "/api/dashboard", None).0, 404);
    assert_eq!(get(&s, "/health", None).0, 200);
    s.stop();
}
