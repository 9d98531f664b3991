//! NATS cases: `bridge.call` through worker hosts on a NATS server, against
//! the local pipes in the same run (`bridge-nats-sequential`,
//! `bridge-nats-pipelined`), and two hosts against one on a handler that
//! sleeps 5 ms (`bridge-nats-two-hosts`).
//!
//! Each run starts its own `nats-server` (Debian's package; `scripts/nats.sh
//! start` installs it) on a free loopback port, the hosts in this process
//! ([`WorkerHost`] over a [`WorkerPool`] of Python SDK workers) and one front
//! end ([`NatsBridge`]), and stops them all at its end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use litebridge::workers::nats::{NatsBridge, NatsConfig, WorkerHost};
use litebridge::workers::{Bridge, WorkerConfig, WorkerPool};

use super::bridge::{SDK_ECHO, drive, sdk_dir, spawn_raw_echo};
use super::measure::{Figures, Samples, stop_after};
use crate::{CliResult, Failure};

/// A sync handler that sleeps 5 ms: the time of a small LLM-style call
/// scaled down, so hosts, not the bus, bound the rate.
const SDK_NAP: &str = r#"
import time
from litebridge_worker import Worker
w = Worker()
@w.method()
def nap(value=None):
    time.sleep(0.005)
    return value
w.run()
"#;

/// A `nats-server` of one run; killed on drop.
struct Server {
    child: Child,
    url: String,
}

/// Debian's `nats-server`, when installed.
pub(crate) fn server_binary() -> Option<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl Server {
    fn start(dir: &Path) -> CliResult<Server> {
        let bin = server_binary().ok_or_else(|| {
                Failure::new(
                    "the bridge-nats-* cases need Debian's nats-server (scripts/nats.sh start installs it)",
                )
            })?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Failure::new(format!("cannot start nats-server: {e}")))?;
        let mut server = Server {
            url: String::new(),
            child,
        };
        let ports = dir.join(format!("nats-server_{}.ports", server.child.id()));
        let until = Instant::now() + Duration::from_secs(10);
        server.url = loop {
            let listed = std::fs::read_to_string(&ports)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(url) = listed.as_ref().and_then(|v| v["nats"][0].as_str()) {
                break url.to_owned();
            }
            if Instant::now() > until {
                return Err(Failure::new("nats-server did not start within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hosts` worker hosts of `processes` workers each running `program`, at
/// most `max_in_flight` calls per worker; then `callers` x `depth` calls of
/// `method` through one front end.
#[allow(clippy::too_many_arguments)]
async fn run(
    dir: &Path,
    seconds: f64,
    hosts: usize,
    processes: usize,
    max_in_flight: usize,
    program: &'static str,
    method: &'static str,
    depth: usize,
) -> CliResult<Figures> {
    let server = Server::start(dir)?;
    let sdk = sdk_dir()?;
    let mut started = Vec::new();
    for i in 0..hosts {
        let mut config = WorkerConfig::new(["python3", "-c", program]);
        config.processes = processes;
        config.max_in_flight = max_in_flight;
        config
            .env
            .push(("PYTHONPATH".into(), sdk.display().to_string()));
        let pool = WorkerPool::start(config).await?;
        let mut nats = NatsConfig::new(server.url.clone());
        nats.host_id = Some(format!("bench-{i}"));
        started.push(WorkerHost::start(pool, nats).await?);
    }
    let front_config = NatsConfig::new(server.url.clone());
    // A front end bundles calls only after two heartbeats' time connected
    // (docs/workers-nats.md, "Bundles"): the clock starts after that, as
    // it does after every host is known.
    let bundles_from = Instant::now() + 2 * front_config.heartbeat;
    let front = NatsBridge::connect(front_config, &WorkerConfig::new(Vec::<String>::new())).await?;
    // Every host known before the clock starts.
    let until = Instant::now() + Duration::from_secs(10);
    while front
        .hosts()
        .iter()
        .filter(|h| !h.methods.is_empty())
        .count()
        < hosts
    {
        if Instant::now() > until {
            return Err(Failure::new(
                "the worker hosts did not show up on NATS within 10 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep_until(bundles_from.into()).await;
    let bridge = Bridge::Nats(front);
    let figures = drive(&bridge, seconds, 1, depth, method).await;
    bridge.shutdown(Duration::from_secs(1)).await;
    for h in started {
        h.shutdown().await;
    }
    drop(server);
    figures
}

/// `bridge-nats-sequential` / `bridge-nats-pipelined`: `bridge-sequential`'s
/// and `bridge-pipelined`'s loads through one host.
pub(crate) async fn echo(
    dir: &Path,
    seconds: f64,
    processes: usize,
    depth: usize,
) -> CliResult<Figures> {
    run(dir, seconds, 1, processes, 64, SDK_ECHO, "echo", depth).await
}

/// `bridge-nats-two-hosts` (and its baseline with one host): two workers per
/// host taking one call at a time, 16 calls in flight.
pub(crate) async fn naps(dir: &Path, seconds: f64, hosts: usize) -> CliResult<Figures> {
    run(dir, seconds, hosts, 2, 1, SDK_NAP, "nap", 16).await
}

/// `raw-nats-relay`: a relay written by hand, the least anyone would write:
/// async-nats request/reply to a responder that passes each request over a
/// pipe to `raw-pipe-seq`'s Python echo loop and answers with its line; one
/// call in flight. What NATS and a pipe cost on this machine, with no
/// deadlines, acknowledgements, cancels or heartbeats.
pub(crate) async fn raw_relay(dir: &Path, seconds: f64) -> CliResult<Figures> {
    use futures_util::StreamExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let server = Server::start(dir)?;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(format!("raw-nats-relay: {what}: {e}"))
    };
    let (child, mut stdin, mut stdout) = spawn_raw_echo("raw-nats-relay")?;
    let responder = async_nats::connect(server.url.as_str())
        .await
        .map_err(|e| failed("connect", &e))?;
    let mut requests = responder
        .subscribe("relay")
        .await
        .map_err(|e| failed("subscribe", &e))?;
    let replies = responder.clone();
    let relay = tokio::spawn(async move {
        let mut line = String::new();
        while let Some(m) = requests.next().await {
            let Some(reply) = m.reply else { continue };
            let mut request = br#"{"jsonrpc":"2.0","id":1,"method":"echo","params":"#.to_vec();
            request.extend_from_slice(&m.payload);
            request.extend_from_slice(b"}\n");
            if stdin.write_all(&request).await.is_err() || stdin.flush().await.is_err() {
                return;
            }
            line.clear();
            if stdout.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let _ = replies.publish(reply, line.clone().into()).await;
        }
    });
    responder.flush().await.map_err(|e| failed("flush", &e))?;
    let client = async_nats::connect(server.url.as_str())
        .await
        .map_err(|e| failed("connect", &e))?;
    let stop = stop_after(seconds);
    let started = Instant::now();
    let mut samples = Samples::with_capacity(1 << 18);
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let start = Instant::now();
        client
            .request("relay", format!("[{n}]").into())
            .await
            .map_err(|e| failed("request", &e))?;
        samples.record(start);
    }
    relay.abort();
    drop(child);
    Ok(Figures::from_samples(vec![samples], started.elapsed()))
}

/// `raw-nats-relay-pipelined`: the hand-written relay with `depth` requests
/// in flight from one client, spread over `processes` echo loops (ids match
/// answers to reply subjects): what NATS and the pipes cost at
/// `bridge-nats-pipelined`'s load.
pub(crate) async fn raw_relay_pipelined(
    dir: &Path,
    seconds: f64,
    processes: usize,
    depth: usize,
) -> CliResult<Figures> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let server = Server::start(dir)?;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(format!("raw-nats-relay-pipelined: {what}: {e}"))
    };
    let responder = async_nats::connect(server.url.as_str())
        .await
        .map_err(|e| failed("connect", &e))?;
    let waiting: Arc<Mutex<HashMap<u64, async_nats::Subject>>> = Arc::default();
    let mut loops = Vec::new();
    let mut children = Vec::new();
    for _ in 0..processes {
        let (child, stdin, mut stdout) = spawn_raw_echo("raw-nats-relay-pipelined")?;
        let (waiting, replies) = (waiting.clone(), responder.clone());
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let id = line
                    .split("\"id\": ")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.trim().parse::<u64>().ok());
                let reply = id.and_then(|id| waiting.lock().ok()?.remove(&id));
                if let Some(reply) = reply {
                    let _ = replies.publish(reply, line.clone().into()).await;
                }
            }
        });
        loops.push(stdin);
        children.push(child);
    }
    let mut requests = responder
        .subscribe("relay")
        .await
        .map_err(|e| failed("subscribe", &e))?;
    let relay = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(m) = requests.next().await {
            let Some(reply) = m.reply else { continue };
            n += 1;
            if let Ok(mut w) = waiting.lock() {
                w.insert(n, reply);
            }
            let mut request =
                format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"echo","params":"#).into_bytes();
            request.extend_from_slice(&m.payload);
            request.extend_from_slice(b"}\n");
            let count = loops.len();
            let pipe = &mut loops[(n as usize) % count];
            if pipe.write_all(&request).await.is_err() || pipe.flush().await.is_err() {
                return;
            }
        }
    });
    responder.flush().await.map_err(|e| failed("flush", &e))?;
    let client = async_nats::connect(server.url.as_str())
        .await
        .map_err(|e| failed("connect", &e))?;
    let stop = stop_after(seconds);
    let started = Instant::now();
    let mut samples = Samples::with_capacity(1 << 20);
    let mut in_flight = FuturesUnordered::new();
    let mut n = 0u64;
    loop {
        while in_flight.len() < depth && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let client = &client;
            in_flight.push(async move {
                let start = Instant::now();
                client
                    .request("relay", format!("[{n}]").into())
                    .await
                    .map(|_| start)
            });
        }
        match in_flight.next().await {
            Some(done) => samples.record(done.map_err(|e| failed("request", &e))?),
            None => break,
        }
    }
    relay.abort();
    drop(children);
    Ok(Figures::from_samples(vec![samples], started.elapsed()))
}
