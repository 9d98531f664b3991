//! Fake workers for the pool's tests: the worker protocol spoken by a task
//! over in-memory pipes, doing on cue what real workers do when things go
//! wrong (hang, crash mid-call, print garbage, start slowly or never), so
//! the pool's answers to each are tested under paused time, in
//! milliseconds, exactly. The end-to-end tests with real Python workers
//! (`tests/worker_pool.rs`) stay beside these.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::workers::config::WorkerConfig;
use crate::workers::launch::{Control, Launched, Launcher};
use crate::workers::signal;

/// What a fake worker does with a call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Act {
    /// Answers `{"echo": params, "worker": n}` after this long; stops (and
    /// answers "cancelled") on `$/cancelRequest`.
    Answer(Duration),
    /// Never answers and ignores `$/cancelRequest`, as a stuck handler does.
    Hang,
    /// Prints these stderr lines and exits with this code, answering nothing.
    Crash(i32, &'static [&'static str]),
    /// Prints a line that is not JSON, then answers.
    Garbage,
    /// Answers with a line longer than the pool's `max_line_bytes`.
    Flood,
    /// Prints a line that never ends, past what the pool passes over.
    Endless,
    /// Stops reading and answering anything, pings included, as a worker
    /// whose event loop a handler blocks does, until it is signalled.
    Freeze,
    /// Answers at once `{"echo": params, "pad": "x..."}`, a line of this
    /// many bytes and more.
    Large(usize),
}

/// One fake worker's part: the `n`th started (from 1) gets `script(n)`.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// Time before `$/ready`; `None`: it never sends it.
    pub(crate) ready_after: Option<Duration>,
    /// Its `$/ready` longer than the pool's `max_line_bytes`, after which
    /// it waits to be stopped.
    pub(crate) long_ready: bool,
    /// Its methods and whether each is idempotent.
    pub(crate) methods: &'static [(&'static str, bool)],
    /// What it does with a call of a method.
    pub(crate) act: fn(&str) -> Act,
    /// It never answers `$/ping` (and serves on).
    pub(crate) deaf: bool,
    /// It exits (code 3) this long after `$/ready`, unless frozen
    /// (`Act::Freeze`) by then.
    pub(crate) lives: Option<Duration>,
}

/// Starts fake workers; counts them.
pub(crate) struct Fakes {
    script: Box<dyn Fn(u64) -> Script + Send + Sync>,
    started: AtomicU64,
    /// Workers launched and not yet ready (nor ended), and the most at once.
    starting: Arc<(AtomicU64, AtomicU64)>,
    /// Workers launched and not yet ended.
    running: Arc<AtomicU64>,
}

impl Fakes {
    pub(crate) fn new(script: impl Fn(u64) -> Script + Send + Sync + 'static) -> Arc<Fakes> {
        Arc::new(Fakes {
            script: Box::new(script),
            started: AtomicU64::new(0),
            starting: Arc::default(),
            running: Arc::default(),
        })
    }

    /// Workers launched and not yet ended.
    pub(crate) fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Workers started so far.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The most workers that were starting at once (launched, not ready)
    /// since the last [`Fakes::count_starting_from_now`].
    pub(crate) fn most_starting(&self) -> u64 {
        self.starting.1.load(Ordering::Relaxed)
    }

    pub(crate) fn count_starting_from_now(&self) {
        let now = self.starting.0.load(Ordering::Relaxed);
        self.starting.1.store(now, Ordering::Relaxed);
    }
}

/// Counts a fake worker as starting until dropped.
struct Starting(Arc<(AtomicU64, AtomicU64)>);

impl Starting {
    fn new(counts: &Arc<(AtomicU64, AtomicU64)>) -> Starting {
        let now = counts.0.fetch_add(1, Ordering::Relaxed) + 1;
        counts.1.fetch_max(now, Ordering::Relaxed);
        Starting(counts.clone())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Launcher for Fakes {
    fn launch(&self, config: &WorkerConfig) -> Result<Launched> {
        let n = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        let (stdin, worker_stdin) = tokio::io::duplex(1 << 16);
        let (worker_stdout, stdout) = tokio::io::duplex(1 << 16);
        let (worker_stderr, stderr) = tokio::io::duplex(1 << 16);
        let (signals, signalled) = mpsc::unbounded_channel();
        let (exited, exit) = oneshot::channel();
        let worker = Worker {
            n,
            script: (self.script)(n),
            max_line: config.max_line_bytes,
            stdout: worker_stdout,
            starting: Some(Starting::new(&self.starting)),
        };
        let running = self.running.clone();
        running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut stderr = worker_stderr;
            let (how, last_words) = worker.run(worker_stdin, signalled).await;
            running.fetch_sub(1, Ordering::Relaxed);
            // As with a real process, the exit can be seen before the last
            // stderr lines are read: they come a moment later here.
            let _ = exited.send(how);
            tokio::time::sleep(Duration::from_millis(10)).await;
            for l in last_words {
                let _ = stderr.write_all(format!("{l}\n").as_bytes()).await;
            }
        });
        Ok(Launched {
            // Past any real pid, so `/proc` has nothing under it.
            pid: 4_000_000_000 + n as u32,
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            control: std::sync::Arc::new(Signals(signals)),
            exit: Box::pin(
                async move { exit.await.unwrap_or_else(|_| "exit status unknown".into()) },
            ),
        })
    }
}

#[derive(Debug)]
struct Signals(mpsc::UnboundedSender<i32>);

impl Control for Signals {
    fn signal(&self, sig: i32) {
        let _ = self.0.send(sig);
    }
}

struct Worker {
    n: u64,
    script: Script,
    max_line: usize,
    stdout: DuplexStream,
    /// Counted as starting until it is ready or ends.
    starting: Option<Starting>,
}

impl Worker {
    /// Plays the script; returns how it ended and its last stderr lines.
    /// Its stdin and stdout close as it returns.
    async fn run(
        mut self,
        stdin: DuplexStream,
        mut signals: mpsc::UnboundedReceiver<i32>,
    ) -> (String, &'static [&'static str]) {
        let killed = |sig: Option<i32>| {
            let sig = sig.unwrap_or(libc::SIGKILL);
            (format!("signal {sig} ({})", signal::name(sig)), &[][..])
        };
        match self.script.ready_after {
            Some(after) => tokio::select! {
                () = tokio::time::sleep(after) => {}
                sig = signals.recv() => return killed(sig),
            },
            None => return killed(signals.recv().await),
        }
        let methods: Vec<Json> = self
            .script
            .methods
            .iter()
            .map(|(name, idempotent)| json!({"name": name, "idempotent": idempotent}))
            .collect();
        let pid = 4_000_000_000 + self.n;
        if self.script.long_ready {
            let padding = "x".repeat(self.max_line);
            self.line(json!({"jsonrpc": "2.0", "method": "$/ready", "params": {"pid": pid, "methods": methods, "padding": padding}}))
                .await;
            return killed(signals.recv().await);
        }
        self.line(json!({"jsonrpc": "2.0", "method": "$/ready", "params": {"pid": pid, "methods": methods}}))
            .await;
        self.starting = None;
        let death = tokio::time::sleep(self.script.lives.unwrap_or(Duration::MAX));
        tokio::pin!(death);
        let (answers, mut answered) = mpsc::unbounded_channel::<Json>();
        let mut running: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        let mut lines = BufReader::new(stdin).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else {
                        // Stdin closed: finish what runs, then exit.
                        drop(answers);
                        while let Some(answer) = answered.recv().await {
                            self.line(answer).await;
                        }
                        return ("exit code 0".into(), &[]);
                    };
                    let call: Json = serde_json::from_str(&line).unwrap_or_default();
                    let method = call["method"].as_str().unwrap_or_default();
                    let id = call["id"].as_u64();
                    match (method, id) {
                        ("$/cancelRequest", _) => {
                            let target = call["params"]["id"].as_u64().unwrap_or_default();
                            if let Some(task) = running.remove(&target) {
                                task.abort();
                                self.line(json!({"jsonrpc": "2.0", "id": target, "error": {"code": -32004, "message": "cancelled", "data": {"type": "CancelledError"}}})).await;
                            }
                        }
                        ("$/ping", Some(_)) if self.script.deaf => {}
                        ("$/ping", Some(id)) => {
                            self.line(json!({"jsonrpc": "2.0", "id": id, "result": "pong"})).await;
                        }
                        (_, Some(id)) => match (self.script.act)(method) {
                            Act::Answer(after) => {
                                let answers = answers.clone();
                                let result = json!({"echo": call["params"], "worker": self.n});
                                let task = tokio::spawn(async move {
                                    tokio::time::sleep(after).await;
                                    let _ = answers.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
                                });
                                running.insert(id, task.abort_handle());
                            }
                            Act::Hang => {}
                            Act::Crash(code, stderr) => return (format!("exit code {code}"), stderr),
                            Act::Garbage => {
                                let _ = self.stdout.write_all(b"this is not JSON\n").await;
                                self.line(json!({"jsonrpc": "2.0", "id": id, "result": {"worker": self.n}})).await;
                            }
                            Act::Flood => {
                                let long = "x".repeat(self.max_line);
                                self.line(json!({"jsonrpc": "2.0", "id": id, "result": long})).await;
                            }
                            Act::Endless => {
                                let _ = self.stdout.write_all(&vec![b'x'; 17 * self.max_line]).await;
                            }
                            Act::Freeze => return killed(signals.recv().await),
                            Act::Large(len) => {
                                let pad = "x".repeat(len);
                                self.line(json!({"jsonrpc": "2.0", "id": id, "result": {"echo": call["params"], "pad": pad}})).await;
                            }
                        },
                        _ => {}
                    }
                }
                Some(answer) = answered.recv() => {
                    if let Some(id) = answer["id"].as_u64() {
                        running.remove(&id);
                    }
                    self.line(answer).await;
                }
                sig = signals.recv() => {
                    // SIGTERM and SIGKILL both end it at once.
                    return killed(sig);
                }
                () = &mut death, if self.script.lives.is_some() => return ("exit code 3".into(), &[]),
            }
        }
    }

    async fn line(&mut self, message: Json) {
        let _ = self
            .stdout
            .write_all(format!("{message}\n").as_bytes())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::workers::{CallOptions, PoolEvent, WorkerPool};

    const METHODS: &[(&str, bool)] = &[
        ("echo", true),
        ("slow", true),
        ("hang", false),
        ("boom", false),
        ("flaky", true),
        ("garbage", true),
        ("flood", true),
        ("endless", true),
        ("llm", false),
        ("freeze", false),
        ("large", true),
    ];

    fn act(method: &str) -> Act {
        match method {
            "slow" => Act::Answer(Duration::from_secs(20)),
            "llm" => Act::Answer(Duration::from_secs(60)),
            "hang" => Act::Hang,
            "boom" => Act::Crash(
                3,
                &[
                    "Traceback (most recent call last):",
                    "ValueError: bad input",
                ],
            ),
            "garbage" => Act::Garbage,
            "flood" => Act::Flood,
            "endless" => Act::Endless,
            "freeze" => Act::Freeze,
            "large" => Act::Large(1_200_000),
            _ => Act::Answer(Duration::from_millis(5)),
        }
    }

    /// What the `n`th worker does: the first crashes on `flaky`.
    fn first_crashes_on_flaky(n: u64) -> fn(&str) -> Act {
        if n == 1 {
            |m| match m {
                "flaky" => Act::Crash(1, &["Segmentation fault"]),
                other => act(other),
            }
        } else {
            act
        }
    }

    /// The tests that hold the process's turn of large answers, one at a
    /// time: another's hold would move their waits.
    static HOLDING_THE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Another answer's read holding the process's turn of large answers
    /// for `how_long`, once it has it; ends with `Ok(Null)`.
    async fn hold_the_turn(how_long: Duration) -> tokio::task::JoinHandle<Option<Result<Json>>> {
        let held = tokio::spawn(crate::json::read_large_answer(None, move || {
            std::thread::sleep(how_long);
            Ok(Json::Null)
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        held
    }

    fn ready_at_once(_: u64) -> Script {
        Script {
            long_ready: false,
            ready_after: Some(Duration::ZERO),
            methods: METHODS,
            act,
            deaf: false,
            lives: None,
        }
    }

    fn config(processes: usize) -> WorkerConfig {
        let mut c = WorkerConfig::new(["fake-worker"]);
        c.processes = processes;
        c.call_timeout = Duration::from_secs(1);
        c.cancel_grace = Duration::from_secs(5);
        c.start_timeout = Duration::from_secs(10);
        c.max_line_bytes = 4096;
        c
    }

    /// A call that freezes its worker (`Act::Freeze`), waited for by a
    /// caller with an hour to give: it ends only as its worker does.
    fn freeze_patiently(pool: &WorkerPool) -> tokio::task::JoinHandle<Result<Json>> {
        let pool = pool.clone();
        tokio::spawn(async move {
            let patient = CallOptions {
                timeout: Some(Duration::from_secs(3600)),
                ..CallOptions::default()
            };
            pool.call("freeze", json!({}), patient).await
        })
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never happened");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_start_is_waited_for_within_the_start_timeout_and_a_silent_worker_is_refused() {
        let slow = Fakes::new(|_| Script {
            ready_after: Some(Duration::from_secs(9)),
            ..ready_at_once(0)
        });
        let started = tokio::time::Instant::now();
        let pool = WorkerPool::start_with(config(2), slow).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(9));
        let r = pool
            .call("echo", json!([1]), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["echo"], json!([1]));
        pool.shutdown().await;

        let silent = Fakes::new(|_| Script {
            ready_after: None,
            ..ready_at_once(0)
        });
        let started = tokio::time::Instant::now();
        let e = WorkerPool::start_with(config(1), silent).await.unwrap_err();
        // Its stderr read to its end first (a moment after its exit here).
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took <= Duration::from_millis(10_500),
            "{took:?}"
        );
        assert!(
            e.to_string()
                .contains("did not send $/ready within 10000 ms (workers.start_timeout_ms)"),
            "{e}"
        );

        // Found by review 125: a `$/ready` too long to read, from a worker
        // that goes on running, hung the start for good.
        let long = Fakes::new(|_| Script {
            long_ready: true,
            ..ready_at_once(0)
        });
        let started = tokio::time::Instant::now();
        let e = WorkerPool::start_with(config(1), long).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            e.to_string()
                .contains("a line longer than 4096 bytes (workers.max_reply_mb) before $/ready"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_times_out_and_its_worker_is_replaced_after_the_grace() {
        let fakes = Fakes::new(ready_at_once);
        let pool = WorkerPool::start_with(config(1), fakes.clone())
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let e = pool
            .call("hang", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // The worker ignores $/cancelRequest: 5 s later it is replaced, at
        // the next health check (recycled: not killed, so no other caller's
        // call on it fails).
        until("a replacement", || fakes.started() == 2).await;
        assert!(
            started.elapsed() >= Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        until("the replacement serving", || {
            pool.status().workers.len() == 1
        })
        .await;
        let r = pool
            .call("echo", json!({}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["worker"], 2);
        assert_eq!(pool.status().recycled, 1);
        assert_eq!(pool.status().restarts, 0);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_worker_whose_replacement_cannot_start_is_killed() {
        // The first worker starts; none after it ever gets ready.
        let fakes = Fakes::new(|n| Script {
            ready_after: (n == 1).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let pool = WorkerPool::start_with(config(1), fakes.clone())
            .await
            .unwrap();
        let first = pool.status().workers[0].pid;
        let started = tokio::time::Instant::now();
        let e = pool
            .call("hang", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        // Stuck 5 s after its call's deadline: the next health check starts
        // a replacement, which is given up after the 10 s start timeout.
        // The worker, stuck for longer than a call's deadline by then, is
        // killed: it would otherwise hold its slot for good.
        until("a replacement tried", || fakes.started() == 2).await;
        until("the stuck worker killed", || {
            pool.status().workers.iter().all(|w| w.pid != first)
        })
        .await;
        let took = started.elapsed();
        let checks = config(1).health_interval;
        assert!(
            took >= Duration::from_secs(16)
                && took <= Duration::from_secs(16) + checks + Duration::from_millis(100),
            "{took:?}"
        );
        assert_eq!(pool.status().recycled, 0);
        pool.shutdown().await;
    }

    /// Review 230: the health checks looked at the slots one after the
    /// other, so a slot whose stuck worker's replacement took its whole
    /// start timeout to fail held up every other slot's ping: a worker that
    /// stopped answering was found that much later, taking calls meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_slot_whose_replacement_cannot_start_holds_up_no_other_slots_checks() {
        // The first two start; none after them ever gets ready.
        let fakes = Fakes::new(|n| Script {
            ready_after: (n <= 2).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(2);
        c.start_timeout = Duration::from_secs(300);
        let (interval, ping) = (c.health_interval, c.ping_timeout);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let pids: Vec<u32> = pool.status().workers.iter().map(|w| w.pid).collect();
        // One worker stuck on a call given up on: each check tries to
        // replace it, and the replacement waits out its 300 s.
        let e = pool
            .call("hang", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        until("a replacement tried", || fakes.started() == 3).await;
        // The other stops answering anything (its call not given up on
        // meanwhile: a stuck worker is replaced, not pinged).
        let frozen = tokio::time::Instant::now();
        let pool2 = pool.clone();
        let freeze = tokio::spawn(async move {
            let patient = CallOptions {
                timeout: Some(Duration::from_secs(3600)),
                ..CallOptions::default()
            };
            pool2.call("freeze", json!({}), patient).await
        });
        until("the frozen worker killed", || {
            pool.status()
                .workers
                .iter()
                .filter(|w| pids.contains(&w.pid))
                .count()
                < 2
        })
        .await;
        let took = frozen.elapsed();
        assert!(
            took <= interval + ping + Duration::from_millis(100),
            "the frozen worker was found after {took:?}"
        );
        let _ = freeze.await;
        pool.shutdown().await;
    }

    /// Review 231: with each slot looked after on its own, workers due
    /// together (their age, their calls) were all replaced at once: as many
    /// processes starting as slots, twice the workers for a moment.
    #[tokio::test(start_paused = true)]
    async fn workers_due_together_are_replaced_one_at_a_time() {
        // Replacements take 5 s to get ready.
        let fakes = Fakes::new(|n| Script {
            ready_after: Some(if n <= 4 {
                Duration::ZERO
            } else {
                Duration::from_secs(5)
            }),
            ..ready_at_once(0)
        });
        let mut c = config(4);
        c.recycle_after_calls = Some(1);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first: Vec<u32> = pool.status().workers.iter().map(|w| w.pid).collect();
        fakes.count_starting_from_now();
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let p = pool.clone();
                tokio::spawn(
                    async move { p.call("slow", json!([i]), CallOptions::default()).await },
                )
            })
            .collect();
        for c in calls {
            let _ = c.await;
        }
        until("every worker replaced", || {
            pool.status().recycled == 4
                && pool
                    .status()
                    .workers
                    .iter()
                    .all(|w| !first.contains(&w.pid))
        })
        .await;
        assert_eq!(fakes.most_starting(), 1, "replacements started together");
        pool.shutdown().await;
    }

    /// Review 232: a slot whose worker was due waited for its turn to start
    /// a replacement before its ping: with workers due together, each
    /// waited out the start timeouts of those ahead of it, its worker
    /// unpinged (and frozen here) meanwhile.
    #[tokio::test(start_paused = true)]
    async fn slots_waiting_for_their_turn_to_replace_still_ping() {
        // The first three start; none after them ever gets ready.
        let fakes = Fakes::new(|n| Script {
            ready_after: (n <= 3).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(3);
        c.max_age = Some(Duration::from_secs(1));
        let (interval, ping) = (c.health_interval, c.ping_timeout);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first: Vec<u32> = pool.status().workers.iter().map(|w| w.pid).collect();
        let frozen = tokio::time::Instant::now();
        let patient = CallOptions {
            timeout: Some(Duration::from_secs(3600)),
            ..CallOptions::default()
        };
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let (p, o) = (pool.clone(), patient.clone());
                tokio::spawn(async move { p.call("freeze", json!({}), o).await })
            })
            .collect();
        tokio::time::sleep(interval + ping + Duration::from_millis(100)).await;
        let left = pool
            .status()
            .workers
            .iter()
            .filter(|w| first.contains(&w.pid))
            .count();
        // Not even the one whose replacement is starting (review 233).
        assert!(
            left == 0,
            "{left} of 3 frozen workers still served after {:?}",
            frozen.elapsed()
        );
        for c in calls {
            let _ = c.await;
        }
        pool.shutdown().await;
    }

    /// Review 233: a worker whose replacement was starting was not pinged
    /// until that start ended, a whole `start_timeout` (300 s here) when
    /// the replacement never gets ready: frozen, it kept its slot and its
    /// calls meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_worker_is_pinged_while_its_replacement_starts() {
        // The first starts; none after it ever gets ready.
        let fakes = Fakes::new(|n| Script {
            ready_after: (n == 1).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_age = Some(Duration::from_secs(1));
        c.start_timeout = Duration::from_secs(300);
        let (interval, ping) = (c.health_interval, c.ping_timeout);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first = pool.status().workers[0].pid;
        let frozen = tokio::time::Instant::now();
        let call = freeze_patiently(&pool);
        until("the frozen worker killed", || {
            pool.status().workers.iter().all(|w| w.pid != first)
        })
        .await;
        let took = frozen.elapsed();
        assert!(fakes.started() >= 2, "no replacement was started");
        assert!(
            took <= interval + ping + Duration::from_millis(100),
            "the frozen worker was found after {took:?}"
        );
        let e = call.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::WorkerCrashed { .. }), "{e}");
        pool.shutdown().await;
    }

    /// A worker killed by its ping while its replacement started had that
    /// replacement thrown away once ready (its slot had changed), and its
    /// slot started again after the restart's backoff: a start wasted, and
    /// the slot empty longer. The replacement takes the slot now, and the
    /// restart waits for it.
    #[tokio::test(start_paused = true)]
    async fn a_worker_that_dies_while_its_replacement_starts_is_replaced_by_it() {
        let ready_in = Duration::from_secs(20);
        let fakes = Fakes::new(move |n| Script {
            ready_after: Some(if n == 1 { Duration::ZERO } else { ready_in }),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_age = Some(Duration::from_secs(1));
        c.start_timeout = Duration::from_secs(300);
        let (interval, ping) = (c.health_interval, c.ping_timeout);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first = pool.status().workers[0].pid;
        let frozen = tokio::time::Instant::now();
        let call = freeze_patiently(&pool);
        until("the frozen worker killed", || {
            pool.status().workers.is_empty()
        })
        .await;
        assert!(frozen.elapsed() <= interval + ping + Duration::from_millis(100));
        let e = call.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::WorkerCrashed { .. }), "{e}");
        until("the slot served again", || pool.status().workers.len() == 1).await;
        // Filled by the replacement, ready `ready_in` after its start at
        // the first check, not by a start of its own after a backoff.
        let took = frozen.elapsed();
        assert!(
            took <= interval + ready_in + Duration::from_millis(100),
            "served again after {took:?}"
        );
        // Before the next check, which recycles this one too (`max_age`).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = pool.status();
        assert_eq!(fakes.started(), 2, "a start wasted");
        assert_eq!(status.workers.len(), 1);
        assert_ne!(status.workers[0].pid, first);
        assert_eq!(
            (status.restarts, status.crashes, status.recycled),
            (1, 1, 0)
        );
        let answer = pool.call("echo", json!(1), CallOptions::default()).await;
        assert_eq!(answer.unwrap()["worker"], json!(2));
        pool.shutdown().await;
    }

    /// Review 238: a worker killed by its ping is seen dead a moment after
    /// (its stderr is read first). A replacement ready in that moment swapped
    /// it out as if recycled, and its end was not counted; one ready as it
    /// was seen dead, before `supervise` looked, took its place uncounted.
    /// Whenever the replacement gets ready around the kill, the worker's
    /// end is one crash, told, and the replacement one restart.
    #[tokio::test(start_paused = true)]
    async fn a_worker_killed_as_its_replacement_gets_ready_is_one_crash_and_one_restart() {
        for late in 1..=24u64 {
            let ready_in = config(1).ping_timeout + Duration::from_millis(late);
            let fakes = Fakes::new(move |n| Script {
                ready_after: Some(if n == 1 { Duration::ZERO } else { ready_in }),
                ..ready_at_once(0)
            });
            let mut c = config(1);
            c.max_age = Some(Duration::from_secs(1));
            c.start_timeout = Duration::from_secs(300);
            let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
            let mut events = pool.subscribe();
            let call = freeze_patiently(&pool);
            until("the slot served by the replacement", || {
                pool.status().workers.iter().any(|w| w.id == 2)
            })
            .await;
            let e = call.await.unwrap().unwrap_err();
            assert!(matches!(e, Error::WorkerCrashed { .. }), "{late} ms: {e}");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let status = pool.status();
            assert_eq!(
                (
                    status.restarts,
                    status.crashes,
                    status.recycled,
                    fakes.started()
                ),
                (1, 1, 0, 2),
                "ready {late} ms after the kill"
            );
            let mut told = Vec::new();
            while let Ok(event) = events.try_recv() {
                match event {
                    PoolEvent::WorkerExited { id, .. } => told.push(format!("exited {id}")),
                    PoolEvent::WorkerRestarted { id, .. } => told.push(format!("restarted {id}")),
                    PoolEvent::WorkerRecycled { id, .. } => told.push(format!("recycled {id}")),
                    _ => {}
                }
            }
            assert_eq!(
                told,
                ["exited 1", "restarted 2"],
                "ready {late} ms after the kill"
            );
            pool.shutdown().await;
        }
    }

    /// Review 239: while a recycle waits for its worker, killed by its
    /// ping, to be seen dead (above), the replacement, ready and so no
    /// longer among the workers starting, was in no list the pool's
    /// `kill_now`, `shutdown` or drop read: it outlived them until the wait
    /// ended, or for good if the runtime went first.
    #[tokio::test(start_paused = true)]
    async fn a_replacement_waiting_for_its_killed_worker_is_killed_with_the_pool() {
        let mut c = config(1);
        c.max_age = Some(Duration::from_secs(1));
        c.start_timeout = Duration::from_secs(300);
        let (interval, ping) = (c.health_interval, c.ping_timeout);
        let ready_in = ping + Duration::from_millis(1);
        let fakes = Fakes::new(move |n| Script {
            ready_after: Some(if n == 1 { Duration::ZERO } else { ready_in }),
            ..ready_at_once(0)
        });
        let started = tokio::time::Instant::now();
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let call = freeze_patiently(&pool);
        // The worker killed at `interval + ping`, its replacement ready 1
        // ms after, its end seen 10 ms after the kill.
        tokio::time::sleep_until(started + interval + ping + Duration::from_millis(3)).await;
        // The replacement is ready (not among those starting, which the
        // pool's end stops anyway), and not yet in the slot.
        assert_eq!(fakes.started(), 2);
        fakes.count_starting_from_now();
        assert_eq!(fakes.most_starting(), 0);
        assert_eq!(pool.status().restarts + pool.status().recycled, 0);
        pool.kill_now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fakes.running(), 0, "a worker outlived kill_now");
        let _ = call.await.unwrap();
    }

    /// Review 238: a replacement that took the place of a worker that died
    /// meanwhile, and then died itself before that worker's restart looked
    /// again, had the slot restarted twice: once by that restart, once for
    /// its own end. Each restart now starts only the slot of the worker it
    /// is for.
    #[tokio::test(start_paused = true)]
    async fn a_replacement_that_dies_at_once_is_restarted_once() {
        let ready_in = config(1).ping_timeout + Duration::from_millis(20);
        let fakes = Fakes::new(move |n| Script {
            ready_after: Some(if n == 2 { ready_in } else { Duration::ZERO }),
            lives: (n == 2).then_some(Duration::from_millis(1)),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_age = Some(Duration::from_secs(1));
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let call = freeze_patiently(&pool);
        until("served again after the replacement", || {
            pool.status().workers.iter().any(|w| w.id > 2)
        })
        .await;
        let _ = call.await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = pool.status();
        assert_eq!(
            (status.restarts, status.crashes, fakes.started()),
            (2, 2, 3),
            "the slot started twice for one end"
        );
        pool.shutdown().await;
    }

    /// The replacement a restart waits for (above) may fail to start: the
    /// restart then goes ahead, and the slot is served again.
    #[tokio::test(start_paused = true)]
    async fn a_restart_waiting_for_a_replacement_that_fails_starts_the_slot_again() {
        let fakes = Fakes::new(|n| Script {
            ready_after: (n != 2).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_age = Some(Duration::from_secs(1));
        c.start_timeout = Duration::from_secs(30);
        let (interval, start) = (c.health_interval, c.start_timeout);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let frozen = tokio::time::Instant::now();
        let call = freeze_patiently(&pool);
        until("the frozen worker killed", || {
            pool.status().workers.is_empty()
        })
        .await;
        // Well past the restart's backoff (100 ms).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            fakes.started(),
            2,
            "restarted before its replacement's start ended"
        );
        let _ = call.await.unwrap();
        until("the slot served again", || pool.status().workers.len() == 1).await;
        let took = frozen.elapsed();
        assert!(
            took >= interval + start && took <= interval + start + Duration::from_millis(150),
            "served again after {took:?}"
        );
        assert_eq!(fakes.started(), 3);
        let status = pool.status();
        assert_eq!((status.restarts, status.crashes), (1, 1));
        let answer = pool.call("echo", json!(1), CallOptions::default()).await;
        assert_eq!(answer.unwrap()["worker"], json!(3));
        pool.shutdown().await;
    }

    /// Review 233: a ping left unanswered when its worker was swapped out
    /// (`ping_while_replaced` dropped with it) stayed among the calls the
    /// retired worker's drain waits for: a frozen worker lived on for the
    /// drain's hour.
    #[tokio::test(start_paused = true)]
    async fn a_ping_cut_short_by_the_swap_holds_up_no_drain() {
        // Replacements get ready in 2 s, within the ping's 5.
        let fakes = Fakes::new(|n| Script {
            ready_after: Some(if n == 1 {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            }),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_age = Some(Duration::from_secs(1));
        let (interval, grace) = (c.health_interval, c.shutdown_grace);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first = pool.status().workers[0].pid;
        // Frozen just before its recycling, its call given up on.
        tokio::time::sleep(interval - Duration::from_millis(500)).await;
        let brief = CallOptions {
            timeout: Some(Duration::from_millis(300)),
            ..CallOptions::default()
        };
        let e = pool.call("freeze", json!({}), brief).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        until("swapped out", || {
            pool.status().workers.iter().all(|w| w.pid != first)
        })
        .await;
        let swapped = tokio::time::Instant::now();
        until("the retired worker ended", || fakes.running() == 1).await;
        let took = swapped.elapsed();
        assert!(
            took <= 2 * grace + Duration::from_millis(100),
            "the retired worker ended {took:?} after the swap"
        );
        pool.shutdown().await;
    }

    /// Answers over 1 MiB are read off the worker's reader, one at a time
    /// in the process: pipelined on one worker, each reaches its caller,
    /// once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_answers_pipelined_on_one_worker_each_reach_their_caller() {
        let fakes = Fakes::new(ready_at_once);
        let mut c = config(1);
        c.max_line_bytes = 4 << 20;
        c.call_timeout = Duration::from_secs(30);
        let pool = WorkerPool::start_with(c, fakes).await.unwrap();
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { pool.call("large", json!([i]), CallOptions::default()).await },
                )
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let answer = call.await.unwrap().unwrap();
            assert_eq!(answer["echo"], json!([i]));
            assert_eq!(answer["pad"].as_str().map(str::len), Some(1_200_000));
        }
        // Its load given back.
        let status = pool.status();
        assert_eq!(status.workers[0].in_flight, 0, "{status:?}");
        pool.shutdown().await;
    }

    /// Review 234: a worker whose reader waited for the turn of large
    /// answers (its second large answer behind its first, which waited for
    /// another's) read nothing meanwhile, its pings' answers included: it
    /// was killed for them, and its calls' timeouts were counted by their
    /// methods' breakers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_whose_large_answers_wait_for_the_turn_is_not_blamed() {
        let _alone = HOLDING_THE_TURN.lock().await;
        let fakes = Fakes::new(ready_at_once);
        let mut c = config(1);
        c.max_line_bytes = 4 << 20;
        c.call_timeout = Duration::from_millis(800);
        c.health_interval = Duration::from_millis(100);
        c.ping_timeout = Duration::from_millis(200);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let pid = pool.status().workers[0].pid;
        // Another answer holds the process's turn for 2 s.
        let held = hold_the_turn(Duration::from_secs(2)).await;
        // The large calls wait past `call_timeout` and `ping_timeout` both
        // (review 236: an excuse limited to them killed the worker, and
        // lost its answers); the small one gives up at its default.
        let patient = CallOptions {
            timeout: Some(Duration::from_secs(10)),
            ..CallOptions::default()
        };
        let calls: Vec<_> = [
            ("large", &patient),
            ("large", &patient),
            ("echo", &CallOptions::default()),
        ]
        .into_iter()
        .map(|(method, options)| {
            let (pool, options) = (pool.clone(), options.clone());
            tokio::spawn(async move { pool.call(method, json!([]), options).await })
        })
        .collect();
        for (n, call) in calls.into_iter().enumerate() {
            match call.await.unwrap() {
                Err(e) => assert!(n == 2 && matches!(e, Error::Timeout { .. }), "{e}"),
                Ok(answer) => assert!(n == 2 || answer["pad"].is_string(), "{answer}"),
            }
        }
        held.await.unwrap().unwrap().unwrap();
        let answer = pool.call("echo", json!([1]), CallOptions::default()).await;
        assert_eq!(answer.unwrap()["echo"], json!([1]));
        let status = pool.status();
        assert_eq!(status.workers[0].pid, pid, "the worker was replaced");
        assert_eq!(fakes.started(), 1);
        for b in &status.breakers {
            assert_eq!(b.consecutive_failures, 0, "{b:?}");
        }
        pool.shutdown().await;
    }

    /// Review 236: a worker that ended while its reader waited for the
    /// turn (its second large answer behind its first) was seen to only
    /// once the turn came: its other calls waited for it to fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_ends_while_its_reader_waits_fails_its_calls_at_once() {
        let _alone = HOLDING_THE_TURN.lock().await;
        let fakes = Fakes::new(ready_at_once);
        let mut c = config(1);
        c.max_line_bytes = 4 << 20;
        c.call_timeout = Duration::from_secs(20);
        let pool = WorkerPool::start_with(c, fakes).await.unwrap();
        // Another answer holds the process's turn for 3 s.
        let held = hold_the_turn(Duration::from_secs(3)).await;
        let large: Vec<_> = (0..2)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { pool.call("large", json!([i]), CallOptions::default()).await },
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = std::time::Instant::now();
        let e = pool
            .call("boom", json!([]), CallOptions::default())
            .await
            .unwrap_err();
        let took = asked.elapsed();
        assert!(matches!(e, Error::WorkerCrashed { .. }), "{e}");
        assert!(
            took < Duration::from_millis(1500),
            "the crash was told after {took:?}"
        );
        // The large answers it wrote before it ended still reach their
        // callers once the turn comes.
        held.await.unwrap().unwrap().unwrap();
        for call in large {
            assert!(call.await.unwrap().unwrap()["pad"].is_string());
        }
        pool.shutdown().await;
    }

    /// Review 235: the excuse for a reader waiting for the turn was given
    /// whenever the worker had answered large twice, waited or not: a
    /// worker deaf to pings that answered large now and then was never
    /// killed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_deaf_to_pings_is_killed_however_large_it_answers() {
        let fakes = Fakes::new(|n| Script {
            deaf: n == 1,
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_line_bytes = 4 << 20;
        c.call_timeout = Duration::from_secs(1);
        c.health_interval = Duration::from_millis(100);
        c.ping_timeout = Duration::from_millis(200);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let started = std::time::Instant::now();
        // Large answers all the time, two at once: its reader may wait for
        // the turn now and then (and another test may hold the turn for
        // 2 s), while which it is excused.
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (pool, fakes) = (pool.clone(), fakes.clone());
                tokio::spawn(async move {
                    while fakes.started() < 2 && started.elapsed() < Duration::from_secs(6) {
                        let _ = pool.call("large", json!([]), CallOptions::default()).await;
                    }
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap();
        }
        assert!(
            fakes.started() >= 2,
            "a worker deaf to pings still served after 6 s"
        );
        pool.shutdown().await;
    }

    /// Review 235: a call's timeout was taken for the pool's whenever the
    /// worker's reader had waited for the turn during the call, even long
    /// before its deadline: a method that hung was not counted by its
    /// breaker. Only a wait at the deadline excuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hang_after_a_wait_for_the_turn_counts() {
        let _alone = HOLDING_THE_TURN.lock().await;
        let fakes = Fakes::new(ready_at_once);
        let mut c = config(1);
        c.max_line_bytes = 4 << 20;
        c.call_timeout = Duration::from_millis(1500);
        let pool = WorkerPool::start_with(c, fakes).await.unwrap();
        // Another answer holds the process's turn for 300 ms: this
        // worker's second large answer waits for its first.
        let held = hold_the_turn(Duration::from_millis(300)).await;
        let calls: Vec<_> = ["large", "large", "hang"]
            .into_iter()
            .map(|method| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { pool.call(method, json!([]), CallOptions::default()).await },
                )
            })
            .collect();
        let results: Vec<_> = futures_util::future::join_all(calls).await;
        held.await.unwrap().unwrap().unwrap();
        assert!(
            matches!(results[2], Ok(Err(Error::Timeout { .. }))),
            "{results:?}"
        );
        let status = pool.status();
        let hang = status.breakers.iter().find(|b| &*b.name == "hang").unwrap();
        assert_eq!(hang.consecutive_failures, 1, "{hang:?}");
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_replacements_cannot_start_is_recycled_ever_less_often() {
        // The first worker starts; the next four never get ready (a bad
        // deploy), the ones after them do.
        let fakes = Fakes::new(|n| Script {
            ready_after: (n == 1 || n > 5).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.recycle_after_calls = Some(1);
        assert_eq!(c.health_interval, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first = pool.status().workers[0].pid;
        pool.call("echo", json!([1]), CallOptions::default())
            .await
            .unwrap();
        // Each try takes a start timeout (10 s) and is followed by a wait of
        // 2, 4, 8, then 16 health checks: tries at 10, 40, 90 and 180 s,
        // where one at each check would have made 15 in these 5 minutes.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(fakes.started(), 1 + 4);
        assert_eq!(pool.status().recycled, 0);
        // The old worker serves on meanwhile.
        assert_eq!(pool.status().workers[0].pid, first);
        pool.call("echo", json!([2]), CallOptions::default())
            .await
            .unwrap();
        // The fifth try, 16 checks after the fourth failed (at 190 s),
        // starts one that gets ready, and the worker is recycled.
        until("recycled", || pool.status().recycled == 1).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(350) && took < Duration::from_millis(350_100),
            "{took:?}"
        );
        assert_eq!(fakes.started(), 1 + 5);
        assert_ne!(pool.status().workers[0].pid, first);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_recycling_is_postponed_is_tried_at_once_when_stuck() {
        // The second worker never gets ready; the others do.
        let fakes = Fakes::new(|n| Script {
            ready_after: (n != 2).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.recycle_after_calls = Some(1);
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        let first = pool.status().workers[0].pid;
        pool.call("echo", json!([1]), CallOptions::default())
            .await
            .unwrap();
        // The check at 10 s tries a replacement, given up at 20 s: the
        // next try is two checks later, at 40 s.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(fakes.started(), 2);
        // Stuck from 26 s (its cancel ignored for cancel_grace), it is
        // tried at the next check, at 30 s, and replaced, not killed.
        let e = pool
            .call("hang", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let status = pool.status();
        assert_eq!((status.recycled, status.restarts), (1, 0), "{status:?}");
        assert_ne!(status.workers[0].pid, first);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_recycles_count_only_while_the_worker_stays_due() {
        // The second and third workers never get ready; the others do.
        let fakes = Fakes::new(|n| Script {
            ready_after: (!(2..=3).contains(&n)).then_some(Duration::ZERO),
            ..ready_at_once(0)
        });
        let mut c = config(1);
        c.max_idle = Some(Duration::from_secs(15));
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        // Idle at the check at 20 s: a replacement tried, given up at 30 s.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(fakes.started(), 2);
        // A call: no longer idle at the check at 40 s, so that failure is
        // forgotten. Idle again at 50 s: a first failure again (at 60 s),
        // so the next try is two checks later, at 80 s, not four.
        pool.call("echo", json!([1]), CallOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(44)).await;
        assert_eq!(fakes.started(), 3);
        assert_eq!(pool.status().recycled, 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fakes.started(), 4);
        assert_eq!(pool.status().recycled, 1);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_local_call_through_the_bridge_does_not_carry_the_nats_calls_size() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let pool = WorkerPool::start_with(config(1), Fakes::new(ready_at_once))
            .await
            .unwrap();
        let direct = size(&pool.call("echo", json!({}), CallOptions::default()));
        let bridge = crate::workers::Bridge::Local(pool.clone());
        let through = size(&bridge.call("echo", json!({}), CallOptions::default()));
        assert!(
            through <= direct + 256,
            "{through} bytes through the bridge, {direct} bytes direct"
        );
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_stops_in_its_worker_which_keeps_serving() {
        let fakes = Fakes::new(ready_at_once);
        let pool = WorkerPool::start_with(config(1), fakes.clone())
            .await
            .unwrap();
        let e = pool
            .call("slow", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            fakes.started(),
            1,
            "a worker that honours cancellation is not killed"
        );
        let r = pool
            .call("echo", json!({}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["worker"], 1);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_mid_call_fails_it_with_the_exit_and_stderr_without_a_retry() {
        let fakes = Fakes::new(ready_at_once);
        let pool = WorkerPool::start_with(config(1), fakes.clone())
            .await
            .unwrap();
        let mut events = pool.subscribe();
        let e = pool
            .call("boom", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        match &e {
            Error::WorkerCrashed {
                pid, exit, stderr, ..
            } => {
                assert_eq!(*pid, 4_000_000_001);
                assert_eq!(exit, "exit code 3");
                assert_eq!(
                    stderr.last().map(String::as_str),
                    Some("ValueError: bad input")
                );
            }
            other => panic!("{other}"),
        }
        // Not idempotent: tried once; the replacement serves the next call.
        until("a replacement", || fakes.started() == 2).await;
        until("the replacement serving", || {
            pool.status().workers.len() == 1
        })
        .await;
        assert_eq!(pool.status().crashes, 1);
        // The event says how it ended and what it last printed.
        let exited = loop {
            if let crate::workers::PoolEvent::WorkerExited {
                exit, last_stderr, ..
            } = events.recv().await.unwrap()
            {
                break (exit, last_stderr);
            }
        };
        assert_eq!(
            exited,
            ("exit code 3".into(), Some("ValueError: bad input".into()))
        );
        let r = pool
            .call("echo", json!({}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["worker"], 2);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idempotent_call_that_crashed_its_worker_is_retried_on_another() {
        // The first worker crashes on `flaky`; the others answer it.
        let fakes = Fakes::new(|n| Script {
            act: first_crashes_on_flaky(n),
            ..ready_at_once(n)
        });
        let pool = WorkerPool::start_with(config(2), fakes.clone())
            .await
            .unwrap();
        let mut served = Vec::new();
        for _ in 0..2 {
            let r = pool
                .call("flaky", json!({}), CallOptions::default())
                .await
                .unwrap();
            served.push(r["worker"].as_u64().unwrap());
        }
        assert!(!served.contains(&1), "{served:?}");
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_call_is_not_retried_on_a_new_worker_that_says_it_is_not_idempotent() {
        // The first worker (an old version) declares `flaky` idempotent and
        // crashes on it; its replacement (a new version) declares it not.
        const NEW: &[(&str, bool)] = &[("echo", true), ("flaky", false)];
        let fakes = Fakes::new(|n| Script {
            act: first_crashes_on_flaky(n),
            methods: if n == 1 { METHODS } else { NEW },
            ..ready_at_once(n)
        });
        let pool = WorkerPool::start_with(config(1), fakes.clone())
            .await
            .unwrap();
        let e = pool
            .call("flaky", json!({}), CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::OutcomeUnknown, "{e}");
        assert!(!e.is_recoverable(), "{e}");
        assert!(e.to_string().contains("not idempotent"), "{e}");
        assert_eq!(fakes.started(), 2, "the replacement was started");
        // It never ran there: the replacement answers, and is the same one.
        let r = pool
            .call("echo", json!({}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["worker"], 2);
        assert_eq!(pool.status().crashes, 1);
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_on_stdout_is_skipped_an_answer_too_long_fails_its_call_alone_and_a_line_without_end_gets_the_worker_replaced()
     {
        let fakes = Fakes::new(ready_at_once);
        let pool = WorkerPool::start_with(config(1), fakes.clone())
            .await
            .unwrap();
        let r = pool
            .call("garbage", json!({}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["worker"], 1);
        // Found by review 121: the worker was killed, and the call (an
        // idempotent one) retried on the next worker, which was killed
        // too, each time with every other call it ran.
        let slow = pool.call("echo", json!([1]), CallOptions::default());
        let flood = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            pool.call("flood", json!({}), CallOptions::default()).await
        };
        let (slow, flood) = tokio::join!(slow, flood);
        let e = flood.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TooLarge, "{e}");
        assert!(e.to_string().contains("workers.max_reply_mb"), "{e}");
        assert!(!e.is_recoverable());
        assert_eq!(
            slow.unwrap()["echo"],
            json!([1]),
            "the other call was answered"
        );
        assert_eq!(fakes.started(), 1, "the worker was kept");
        let r = pool
            .call("echo", json!([2]), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(r["echo"], json!([2]), "the stream is still in step");
        let e = pool
            .call(
                "endless",
                json!({}),
                CallOptions {
                    retry: false,
                    ..CallOptions::default()
                },
            )
            .await
            .unwrap_err();
        match &e {
            Error::WorkerCrashed { exit, .. } => assert_eq!(exit, "signal 9 (SIGKILL)"),
            other => panic!("{other}"),
        }
        until("a replacement", || fakes.started() == 2).await;
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn calls_of_a_minute_never_trip_the_breaker_with_the_defaults() {
        let fakes = Fakes::new(ready_at_once);
        let mut c = config(2);
        c.breaker = crate::resilience::BreakerConfig::default();
        let pool = WorkerPool::start_with(c, fakes).await.unwrap();
        let two_minutes = || CallOptions {
            timeout: Some(Duration::from_secs(120)),
            ..CallOptions::default()
        };
        // Thirty rounds of four calls at once, each taking a minute.
        for round in 0..30 {
            let call = || pool.call("llm", json!({}), two_minutes());
            let (a, b, c, d) = tokio::join!(call(), call(), call(), call());
            for r in [a, b, c, d] {
                r.unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        let b = &pool.status().breakers[0];
        assert_eq!(
            (b.state, b.calls),
            (crate::resilience::BreakerState::Closed, 20)
        );
        pool.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_breaker_off_failing_calls_are_never_refused() {
        let fakes = Fakes::new(ready_at_once);
        let mut c = config(1);
        c.breaker.enabled = false;
        c.max_restarts_per_minute = 1000;
        let pool = WorkerPool::start_with(c, fakes.clone()).await.unwrap();
        for i in 1..=12u64 {
            let e = pool
                .call("hang", json!({}), CallOptions::default())
                .await
                .unwrap_err();
            // Timed out, or lost with the hung worker when it was killed.
            assert!(
                matches!(e, Error::Timeout { .. } | Error::WorkerCrashed { .. }),
                "call {i}: {e}"
            );
        }
        assert!(pool.status().breakers.is_empty());
        pool.shutdown().await;
    }
}
