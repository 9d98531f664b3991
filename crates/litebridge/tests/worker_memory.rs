//! A worker's answer cannot hold gigabytes of litebridge's memory: a line
//! of small objects takes about a hundred times its size as a tree, so an
//! answer is read into one only for a call that waits for it, and its
//! memory is counted as it is built, as a request's is (review 230: a
//! stray line of 8 MB took about 700 MB; an answer of 48 MB, about 4 GB).
//! A process of its own, so its peak resident size says what they cost.

use std::time::Duration;

use litebridge::ErrorKind;
use litebridge::workers::{CallOptions, WorkerConfig, WorkerPool};
use serde_json::json;

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// A worker written by hand: `stray` answers a call nobody made with a
/// million small objects first, then its own; `bomb` answers its own with
/// six million.
const WORKER: &str = r#"
import json, os, sys
def objects(n):
    return "[" + '{"a":0},' * (n - 1) + '{"a":0}]'
sys.stdout.write(json.dumps({"jsonrpc": "2.0", "method": "$/ready", "params": {"pid": os.getpid(),
    "methods": [{"name": "stray"}, {"name": "bomb"}]}}) + "\n")
sys.stdout.flush()
for line in sys.stdin:
    call = json.loads(line)
    if "id" not in call:
        continue
    if call["method"] == "stray":
        sys.stdout.write('{"jsonrpc":"2.0","id":999999,"result":' + objects(1000000) + "}\n")
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": call["id"], "result": "ok"}) + "\n")
    elif call["method"] == "bomb":
        sys.stdout.write('{"jsonrpc":"2.0","id":%d,"result":%s}\n' % (call["id"], objects(6000000)))
    sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_answers_of_small_objects_hold_a_bounded_tree() {
    let mut config = WorkerConfig::new(["python3", "-c", WORKER]);
    config.processes = 1;
    config.start_timeout = Duration::from_secs(20);
    config.call_timeout = Duration::from_secs(60);
    let pool = WorkerPool::start(config).await.unwrap();
    let before = peak_rss_mb();
    let answer = pool.call("stray", json!([]), CallOptions::default()).await;
    assert_eq!(answer.unwrap(), json!("ok"));
    let stray = peak_rss_mb() - before;
    assert!(stray < 150, "a stray answer of 8 MB took {stray} MB");
    let e = pool
        .call("bomb", json!([]), CallOptions::default())
        .await
        .expect_err("a tree past 1 GiB");
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("the worker's answer"), "{e}");
    let bomb = peak_rss_mb() - before;
    assert!(bomb < 1400, "an answer of 48 MB took {bomb} MB");
    eprintln!("peak growth: {stray} MB after the stray answer, {bomb} MB after the bomb");
    // The worker goes on.
    let answer = pool.call("stray", json!([]), CallOptions::default()).await;
    assert_eq!(answer.unwrap(), json!("ok"));
    pool.shutdown().await;
}
