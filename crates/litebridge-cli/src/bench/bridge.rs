//! Bridge cases: calls to Python workers through the [`WorkerPool`], against
//! a minimal Python echo loop on the same kind of pipes, same pipelining.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use litebridge::workers::{Bridge, CallOptions, WorkerConfig, WorkerPool};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::measure::{Figures, Samples, gather_tasks, keep_in_flight, stop_after};
use crate::{CliResult, Failure};

/// The smallest JSON-RPC echo loop Python can run: the baseline.
pub(crate) const RAW_ECHO: &str = r#"
import json, sys
out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    out.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": msg["params"]}) + "\n")
    out.flush()
"#;

/// An SDK worker with one `echo` method.
pub(crate) const SDK_ECHO: &str = r#"
from litebridge_worker import Worker
w = Worker()
@w.method()
async def echo(value=None):
    return value
w.run()
"#;

/// Where the Python SDK is: `LITEBRIDGE_PYTHON_SDK`, or `./python`.
pub(crate) fn sdk_dir() -> CliResult<PathBuf> {
    let dir = std::env::var_os("LITEBRIDGE_PYTHON_SDK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python"));
    if dir.join("litebridge_worker").is_dir() {
        Ok(dir.canonicalize().unwrap_or(dir))
    } else {
        Err(Failure::new(format!(
            "the bridge cases need the Python SDK: run the bench from the repository root, or set LITEBRIDGE_PYTHON_SDK to the directory holding litebridge_worker (looked in {})",
            dir.display()
        )))
    }
}

/// One [`RAW_ECHO`] loop with its stdin and stdout; `baseline` names the
/// case in the error when python3 cannot start.
pub(crate) fn spawn_raw_echo(
    baseline: &str,
) -> CliResult<(
    tokio::process::Child,
    tokio::process::ChildStdin,
    BufReader<tokio::process::ChildStdout>,
)> {
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", RAW_ECHO])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::new(format!(
                "cannot start python3 for the {baseline} baseline: {e}"
            ))
        })?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    Ok((child, stdin, stdout))
}

/// `raw-pipe` / `raw-pipe-seq`: `processes` echo loops, `depth` calls in flight
/// on each, driven directly over their pipes.
pub(crate) async fn raw_pipe(seconds: f64, processes: usize, depth: usize) -> CliResult<Figures> {
    let stop = stop_after(seconds);
    let started = Instant::now();
    let mut drivers = Vec::new();
    for _ in 0..processes {
        let (mut child, mut stdin, mut stdout) = spawn_raw_echo("raw-pipe")?;
        let stop = stop.clone();
        drivers.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(1 << 20);
            let mut sent_at = vec![Instant::now(); depth];
            let mut line = String::new();
            let request = |id: usize| {
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"echo\",\"params\":[{id}]}}\n"
                )
            };
            let mut batch = String::new();
            for (id, at) in sent_at.iter_mut().enumerate() {
                *at = Instant::now();
                batch.push_str(&request(id));
            }
            stdin.write_all(batch.as_bytes()).await?;
            stdin.flush().await?;
            let mut in_flight = depth;
            while in_flight > 0 {
                line.clear();
                if stdout.read_line(&mut line).await? == 0 {
                    break;
                }
                let id = line
                    .split("\"id\": ")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0)
                    % depth;
                samples.record(sent_at[id]);
                if stop.load(Ordering::Relaxed) {
                    in_flight -= 1;
                } else {
                    sent_at[id] = Instant::now();
                    stdin.write_all(request(id).as_bytes()).await?;
                    stdin.flush().await?;
                }
            }
            drop(stdin);
            let _ = child.wait().await;
            Ok::<_, std::io::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for d in drivers {
        all.push(
            d.await
                .map_err(|e| Failure::new(e.to_string()))?
                .map_err(|e| Failure::new(format!("raw-pipe baseline: {e}")))?,
        );
    }
    Ok(Figures::from_samples(all, started.elapsed()))
}

/// `bridge-pipelined` / `bridge-sequential`: `callers` x `depth` calls in
/// flight through a pool of `processes` SDK workers.
pub(crate) async fn bridge(
    seconds: f64,
    processes: usize,
    callers: usize,
    depth: usize,
) -> CliResult<Figures> {
    let sdk = sdk_dir()?;
    let mut config = WorkerConfig::new(["python3", "-c", SDK_ECHO]);
    config.processes = processes;
    config
        .env
        .push(("PYTHONPATH".into(), sdk.display().to_string()));
    let pool = WorkerPool::start(config).await?;
    let bridge = Bridge::Local(pool);
    let figures = drive(&bridge, seconds, callers, depth, "echo").await;
    bridge.shutdown(std::time::Duration::ZERO).await;
    figures
}

/// `callers` tasks, each keeping `depth` calls of `method` in flight through
/// `bridge` until `seconds` pass; every call must succeed.
pub(crate) async fn drive(
    bridge: &Bridge,
    seconds: f64,
    callers: usize,
    depth: usize,
    method: &'static str,
) -> CliResult<Figures> {
    let stop: Arc<AtomicBool> = stop_after(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (bridge, stop) = (bridge.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Samples::with_capacity(1 << 18);
                let mut n = 0u64;
                let bridge = &bridge;
                keep_in_flight(depth, &stop, &mut samples, || {
                    n += 1;
                    let v = c as u64 * 1_000_000_000 + n;
                    async move {
                        bridge
                            .call(method, json!([v]), CallOptions::default())
                            .await
                            .map(drop)
                    }
                })
                .await?;
                Ok::<_, litebridge::Error>(samples)
            })
        })
        .collect();
    gather_tasks(tasks, started).await
}

/// `bridge-cached`: one caller, sequential calls whose result is in the
/// cache (a scratch database behind it), through the same `call` API.
pub(crate) async fn bridge_cached(seconds: f64, dir: &std::path::Path) -> CliResult<Figures> {
    let sdk = sdk_dir()?;
    let mut config = WorkerConfig::new(["python3", "-c", SDK_ECHO]);
    config.processes = 1;
    config
        .env
        .push(("PYTHONPATH".into(), sdk.display().to_string()));
    let pool = WorkerPool::start(config).await?;
    let db =
        litebridge::Database::open(dir.join("cache.db"), litebridge::DbConfig::default()).await?;
    pool.use_cache(litebridge::store::Cache::open(Some(db.clone()), Default::default()).await?);
    let options = CallOptions {
        cache_key: Some("bench".into()),
        ..CallOptions::default()
    };
    pool.call("echo", json!(["cached"]), options.clone())
        .await?;
    let stop = stop_after(seconds);
    let started = Instant::now();
    let mut samples = Samples::with_capacity(1 << 22);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        pool.call("echo", json!(["cached"]), options.clone())
            .await?;
        samples.record(start);
    }
    let figures = Figures::from_samples(vec![samples], started.elapsed());
    pool.shutdown().await;
    db.close().await;
    Ok(figures)
}
