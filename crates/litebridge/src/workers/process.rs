//! One worker: started by a `Launcher` (a process in its own process group,
//! or a test's fake), spoken to through three tasks (stdin writer, stdout
//! reader, stderr forwarder).
//!
//! The reader owns the worker's exit. When stdout ends (the process died, or
//! closed it), the reader waits for the exit status and for stderr's last
//! lines, fails every call still in flight with `worker_crashed` (pid, exit,
//! the last stderr lines), and tells the pool, which starts a replacement.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::json::LARGE_ANSWER_BYTES;
use crate::sync::lock;
use crate::workers::config::WorkerConfig;
use crate::workers::launch::{Control, Launched, Launcher};
use crate::workers::protocol::{self, Incoming, MethodInfo};
use crate::workers::signal;

type Input = Pin<Box<dyn AsyncRead + Send>>;
type Exit = Pin<Box<dyn Future<Output = String> + Send>>;

/// How long the last stderr lines of a worker that ended may take to
/// arrive (a process it started may still hold stderr open).
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// How long what a worker wrote to stdout is read after it ended, if
/// something outside its group holds its stdout open (`read_stdout`).
const AFTER_EXIT: Duration = Duration::from_millis(500);

/// A worker sent SIGKILL is seen dead within about this ([`Process::killed`]):
/// its end, then what it wrote, then its last stderr lines, and a margin
/// for a loaded machine.
pub(crate) const SEEN_DEAD_AFTER_KILL: Duration = Duration::from_millis(2_000);

type Reply = oneshot::Sender<Result<Json>>;

/// A call whose caller gave up while the worker still runs it.
struct Cancelled {
    /// What its caller keeps of it until then (recycled out of the pool,
    /// the process still runs it: kept until the process ends).
    _kept: Option<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cancelled")
    }
}

/// A running worker.
#[derive(Debug)]
pub(crate) struct Process {
    /// The pool's number for this process (for logs and events).
    pub(crate) id: u64,
    /// The pid the worker reported in `$/ready` (or the spawned process's).
    pub(crate) pid: u32,
    /// Signals to what was started: for a process, its whole group (a worker
    /// started through a wrapper (`timeout`, a script, `uv run`) reports its
    /// own pid, but signals go to everything in the group).
    control: Arc<dyn Control>,
    pub(crate) methods: HashMap<String, MethodInfo>,
    pub(crate) dynamic: bool,
    /// The prefixes a generic-mode worker serves, when it said.
    pub(crate) prefixes: Option<Vec<String>>,
    pub(crate) started: Instant,
    /// Calls sent and not yet answered (cancelled ones included).
    pub(crate) load: AtomicUsize,
    pub(crate) calls: AtomicU64,
    /// When the last call was sent.
    pub(crate) last_call: Mutex<Instant>,
    /// Lines for its stdin, each with the id of the call it sends (none
    /// for a notification).
    stdin: Mutex<Option<mpsc::UnboundedSender<Line>>>,
    pending: Mutex<HashMap<u64, Reply>>,
    /// Calls given up by their caller that the worker has not answered yet.
    cancelled: Mutex<HashMap<u64, Cancelled>>,
    dead: AtomicBool,
    /// Sent SIGKILL: it will be dead once its end is read
    /// ([`Process::killed`]).
    killed: AtomicBool,
    /// Its end counted by the pool ([`Process::count_exit`]).
    exit_counted: AtomicBool,
    /// Whether its stdout reader waits for the turn of large answers, and
    /// when it last stopped ([`Process::reader_waited_within`]).
    reader_waits: Mutex<(bool, Option<Instant>)>,
    /// Since when a call it was told to cancel still ran `cancel_grace`
    /// later: the pool replaces it (its other calls finish first).
    stuck: Mutex<Option<Instant>>,
    exited: watch::Receiver<Option<String>>,
    /// How it ended, set before `dead`: whoever sees it dead can tell how
    /// ([`Process::ending`]; review 239: between the two, a crash was told
    /// as "it is stopping").
    exit: std::sync::OnceLock<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    cancel_grace: Duration,
    /// A call's default deadline (`call_timeout`): a call cancelled by a
    /// caller who gave it less is not counted stuck before it has run this
    /// long.
    call_timeout: Duration,
    /// Told whenever an answer frees room, whoever waits for it (the call's
    /// caller may be gone, as for a cancelled call or a ping): the pool's
    /// callers waiting for a worker.
    freed: Arc<tokio::sync::Notify>,
}

/// The workers still starting, by id: `kill_now` and `shutdown` stop
/// them too (review 153: a worker loading a model outlived a `kill_now`
/// that was followed by the process's exit). Once closed, a worker that
/// starts is killed as it enters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Starting(Arc<Mutex<StartingSet>>);

#[derive(Debug, Default)]
struct StartingSet {
    closed: bool,
    controls: HashMap<u64, Arc<dyn Control>>,
}

impl Starting {
    /// Notes worker `id` until the returned value is disarmed or drops.
    fn enter(&self, id: u64, control: &Arc<dyn Control>) -> Entered {
        let mut set = lock(&self.0);
        if set.closed {
            control.signal(libc::SIGKILL);
        } else {
            set.controls.insert(id, control.clone());
        }
        Entered {
            starting: self.clone(),
            id,
            control: Some(control.clone()),
        }
    }

    /// Kills every worker starting now and from now on.
    pub(crate) fn close(&self) {
        let mut set = lock(&self.0);
        set.closed = true;
        for control in set.controls.values() {
            control.signal(libc::SIGKILL);
        }
    }
}

/// A worker noted as starting. Dropped before it is disarmed (its start
/// given up: `WorkerPool::start` under a timeout, a runtime shutting down),
/// it kills the worker's process group, not only the process a dropped
/// child kills: a wrapper's worker (`uv run`, a shell) lived on (review
/// 154). Disarmed once the worker is ready, or once it was killed and
/// before it is reaped (a kill after the reap could reach a process that
/// took the group id since).
struct Entered {
    starting: Starting,
    id: u64,
    control: Option<Arc<dyn Control>>,
}

impl Entered {
    fn disarm(&mut self) {
        lock(&self.starting.0).controls.remove(&self.id);
        self.control = None;
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            lock(&self.starting.0).controls.remove(&self.id);
            control.signal(libc::SIGKILL);
        }
    }
}

impl Process {
    /// Starts a worker with `launcher` and waits for its `$/ready`.
    ///
    /// `on_exit` receives `id` when the process ends after it was ready.
    pub(crate) async fn spawn(
        config: &WorkerConfig,
        launcher: &dyn Launcher,
        id: u64,
        on_exit: mpsc::UnboundedSender<u64>,
        freed: Arc<tokio::sync::Notify>,
        starting: &Starting,
    ) -> Result<Arc<Process>> {
        let shown = config.command.join(" ");
        let Launched {
            pid,
            stdin,
            stdout,
            stderr: stderr_pipe,
            control,
            mut exit,
        } = launcher.launch(config)?;
        // Where `kill_now` and `shutdown` reach it until it is ready (or
        // killed at once: the pool is closing already).
        let mut entered = starting.enter(id, &control);
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(config.stderr_lines)));
        // Stopped if this start is given up (dropped) before it is handed on.
        let stderr_done = Forwarder(tokio::spawn(forward_stderr(
            stderr_pipe,
            stderr.clone(),
            id,
            pid,
            config.stderr_lines,
        )));

        let mut reader = BufReader::with_capacity(64 * 1024, stdout);
        let mut line = Vec::new();
        // Until `$/ready` or its start timeout; a pool that closes or is
        // dropped meanwhile kills it through `starting`, which ends this.
        let ready = tokio::time::timeout(config.start_timeout, async {
            loop {
                line.clear();
                match read_line(&mut reader, &mut line, config.max_line_bytes).await {
                    Ok(Read::Line) if !line.is_empty() => {}
                    Ok(Read::TooLong) => {
                        return Err(format!(
                            "a line longer than {} bytes (workers.max_reply_mb) before $/ready",
                            config.max_line_bytes
                        ));
                    }
                    Ok(Read::Line) => return Err("its stdout closed".to_owned()),
                    Err(e) => return Err(e.to_string()),
                }
                // A blank line, which the SDK writes before `$/ready` to end
                // whatever the program wrote to stdout before it began
                // (review 241), is passed over without a word.
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                // Said by its kind: what a line holds may be a call's data
                // (review 230: a whole answer was logged).
                match protocol::parse(&line) {
                    Ok(Incoming::Ready(r)) => return Ok(r),
                    Ok(Incoming::Response { id: call, .. }) => tracing::warn!(
                        worker = id,
                        pid,
                        "before $/ready: an answer to call {call}, ignored"
                    ),
                    Ok(Incoming::Notification(_)) => {
                        tracing::warn!(worker = id, pid, "before $/ready: a notification, ignored")
                    }
                    // It will not send another: the start fails at once,
                    // saying why (the methods' descriptions, not a call's
                    // data).
                    Err(e) if e.starts_with(protocol::BAD_READY) => return Err(e),
                    Err(_) => tracing::warn!(
                        worker = id,
                        pid,
                        "before $/ready: a line that is not JSON-RPC ({} bytes), ignored",
                        line.len()
                    ),
                }
            }
        })
        .await;
        let ready = match ready {
            Ok(Ok(r)) => r,
            Ok(Err(why)) => {
                // A process that wrote what cannot be read, or closed its
                // stdout, may go on running: stopped, not waited for
                // (found by review 125: a start hung for good on it).
                control.signal(libc::SIGKILL);
                entered.disarm();
                let exit = exit.await;
                drain_stderr(stderr_done).await;
                return Err(Error::Unavailable {
                    what: "workers",
                    reason: format!(
                        "`{shown}` ended before it was ready ({why}; {exit}){}",
                        last_line(&stderr)
                    ),
                });
            }
            Err(_) => {
                control.signal(libc::SIGKILL);
                entered.disarm();
                let _ = (&mut exit).await;
                // As after any other end (review 231: a grandchild holding
                // the pipe kept the reader, and a descriptor, for good).
                drain_stderr(stderr_done).await;
                return Err(Error::Unavailable {
                    what: "workers",
                    reason: format!(
                        "`{shown}` did not send $/ready within {} ms (workers.start_timeout_ms){}",
                        config.start_timeout.as_millis(),
                        last_line(&stderr)
                    ),
                });
            }
        };

        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let (exited_tx, exited_rx) = watch::channel(None);
        let process = Arc::new(Process {
            id,
            pid: ready.pid.unwrap_or(pid),
            control,
            methods: ready
                .methods
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
            dynamic: ready.dynamic,
            prefixes: ready.prefixes,
            started: Instant::now(),
            load: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            last_call: Mutex::new(Instant::now()),
            stdin: Mutex::new(Some(stdin_tx)),
            pending: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            exit_counted: AtomicBool::new(false),
            reader_waits: Mutex::new((false, None)),
            stuck: Mutex::new(None),
            exited: exited_rx,
            exit: std::sync::OnceLock::new(),
            stderr,
            cancel_grace: config.cancel_grace,
            call_timeout: config.call_timeout,
            freed,
        });
        // A worker whose stdin cannot be written (it closed its end, as a
        // library a handler called may do) can take no more calls, though
        // it lives and answers what it has. The calls whose lines were not
        // written are answered `unavailable` (they did not run); then it is
        // killed and replaced, and the calls it had end as a crash ends them.
        let weak = Arc::downgrade(&process);
        tokio::spawn(async move {
            if let Err((e, unsent)) = write_stdin(stdin, stdin_rx).await
                && let Some(p) = weak.upgrade()
                && !p.is_dead()
            {
                tracing::warn!(
                    worker = p.id,
                    pid = p.pid,
                    "its stdin could not be written ({e}): killing the worker"
                );
                for id in unsent {
                    p.answer(id, Err(p.not_sent()));
                }
                p.signal(libc::SIGKILL);
            }
        });
        tokio::spawn(read_stdout(
            process.clone(),
            reader,
            Ended {
                exit,
                stderr: stderr_done,
                exited: exited_tx,
                on_exit,
            },
            config.max_line_bytes,
        ));
        entered.disarm();
        Ok(process)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Whether it was sent SIGKILL: dead, or about to be seen so (its end
    /// is read after its stderr, up to [`STDERR_DRAIN`]; see
    /// [`SEEN_DEAD_AFTER_KILL`]).
    pub(crate) fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// True the first time only: the one who counts its end (a crash, its
    /// event) and sees to its slot.
    pub(crate) fn count_exit(&self) -> bool {
        !self.exit_counted.swap(true, Ordering::AcqRel)
    }

    /// Sends a call; the answer arrives on the returned channel.
    pub(crate) fn send(
        &self,
        id: u64,
        method: &str,
        params: &Json,
        request_id: Option<&str>,
    ) -> Result<oneshot::Receiver<Result<Json>>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if self.is_dead() {
                return Err(self.not_sent());
            }
            pending.insert(id, tx);
        }
        self.load.fetch_add(1, Ordering::AcqRel);
        if !method.starts_with("$/") {
            self.calls.fetch_add(1, Ordering::Relaxed);
            *lock(&self.last_call) = Instant::now();
        }
        let sent = lock(&self.stdin).as_ref().is_some_and(|s| {
            s.send((Some(id), protocol::request(id, method, params, request_id)))
                .is_ok()
        });
        if !sent {
            // Its stdin broke (the worker is being killed), was closed (it
            // is being retired), or it died: the call never left, so it did
            // not run.
            lock(&self.pending).remove(&id);
            // Saturating: the exit handler may have set it to 0 meanwhile.
            let _ = self
                .load
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            return Err(self.not_sent());
        }
        Ok(rx)
    }

    /// The answer to a call whose line never reached the worker: not a
    /// crash of the call (it did not run), so another worker may take it,
    /// whatever the method.
    fn not_sent(&self) -> Error {
        let why = if self.is_dead() {
            "has exited"
        } else {
            "takes no more calls (its stdin is closed)"
        };
        Error::Unavailable {
            what: "workers",
            reason: format!("worker process {} {why}; the call was not sent", self.pid),
        }
    }

    /// The caller of `id` (sent at `sent`) gave up: tells the worker with
    /// `$/cancelRequest`, and marks the worker stuck if it has not answered
    /// within the grace period, nor by the time the call has run as long
    /// as the default deadline allows (a caller's own 1 ms deadline on a
    /// handler that takes 10 s and ignores cancellation does not make its
    /// worker stuck, nor get it replaced). A stuck worker is not killed here: it may be running other
    /// callers' calls, which a kill would fail (as `worker_crashed`, outcome
    /// unknown, for a method that must not run twice). The pool replaces it
    /// at its next health check and lets those calls finish first
    /// (`recycle`); a worker that stops answering pings is killed there.
    /// `kept` is dropped when the worker answers the call or ends
    /// ([`CallOptions::abandoned`](crate::workers::CallOptions::abandoned)).
    pub(crate) fn abandon(
        self: &Arc<Self>,
        id: u64,
        sent: Instant,
        abandoned: Option<&crate::workers::Abandoned>,
    ) {
        {
            // Both under `pending`'s lock, as `answer` takes them: an answer
            // in between would find the call in neither, and its room
            // would never be given back.
            let mut pending = lock(&self.pending);
            if pending.remove(&id).is_none() {
                return; // already answered: nothing to keep
            }
            let kept = abandoned.map(crate::workers::Abandoned::keep);
            lock(&self.cancelled).insert(id, Cancelled { _kept: kept });
        }
        if let Some(s) = lock(&self.stdin).as_ref() {
            let _ = s.send((
                None,
                protocol::notification("$/cancelRequest", &serde_json::json!({ "id": id })),
            ));
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(me.cancel_grace).await;
            let running = || lock(&me.cancelled).contains_key(&id);
            if running() && !me.is_dead() {
                tokio::time::sleep_until(sent + me.call_timeout).await;
            }
            let stuck = running();
            if !stuck || me.is_dead() {
                return;
            }
            let first = {
                let mut at = lock(&me.stuck);
                let first = at.is_none();
                at.get_or_insert_with(Instant::now);
                first
            };
            if first {
                tracing::warn!(
                    worker = me.id,
                    pid = me.pid,
                    "call {id} still running {} ms after $/cancelRequest: the worker will be replaced once its other calls are done",
                    me.cancel_grace.as_millis()
                );
            }
        });
    }

    /// Whether a call sent now would reach it: its stdin is neither closed
    /// (retired) nor broken.
    pub(crate) fn takes_calls(&self) -> bool {
        lock(&self.stdin).as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Whether a call it was told to cancel still ran `cancel_grace` later.
    pub(crate) fn is_stuck(&self) -> bool {
        lock(&self.stuck).is_some()
    }

    /// How long it has been stuck (see [`Process::is_stuck`]).
    pub(crate) fn stuck_for(&self) -> Option<Duration> {
        lock(&self.stuck).map(|at| at.elapsed())
    }

    /// The grace a cancelled call has to end.
    pub(crate) fn cancel_grace(&self) -> Duration {
        self.cancel_grace
    }

    /// Calls sent to it that a caller still waits for (not the cancelled).
    pub(crate) fn answering(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Closes stdin: a well-behaved worker finishes its calls and exits.
    pub(crate) fn close_stdin(&self) {
        lock(&self.stdin).take();
    }

    /// Resident memory in bytes, from `/proc` (None where it cannot be read).
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * signal::page_size())
    }

    pub(crate) fn signal(&self, sig: i32) {
        if !self.is_dead() {
            if sig == libc::SIGKILL {
                self.killed.store(true, Ordering::Release);
            }
            self.control.signal(sig);
        }
    }

    /// Waits until the process has ended, up to `limit`; true if it has.
    /// Its reader gone without saying (it panicked) proves nothing: then
    /// the rest of `limit` is waited and the answer is no (review 153: it
    /// was taken for an exit, and the worker was never signalled).
    pub(crate) async fn wait_exit(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        let mut rx = self.exited.clone();
        let ended = tokio::time::timeout_at(until, rx.wait_for(Option::is_some))
            .await
            .map(|seen| seen.is_ok());
        match ended {
            Ok(true) => true,
            Ok(false) => {
                tokio::time::sleep_until(until).await;
                false
            }
            Err(_) => false,
        }
    }

    /// How the process ended, and its last stderr line, for events.
    pub(crate) fn ending(&self) -> (String, Option<String>) {
        let exit = self
            .exit
            .get()
            .cloned()
            .unwrap_or_else(|| "it is stopping".into());
        (exit, lock(&self.stderr).back().cloned())
    }

    /// Hands call `id` its answer; a result is read into a tree only for a
    /// call still waiting for it (`protocol::tree`).
    fn answer(&self, id: u64, outcome: Result<protocol::Raw>) {
        if let Some(tx) = self.take_waiting(id) {
            let _ = tx.send(outcome.and_then(|raw| protocol::tree(&raw)));
        }
    }

    /// Whether call `id`, sent, is no longer waited for from the worker:
    /// answered (or the worker ended).
    pub(crate) fn answered(&self, id: u64) -> bool {
        !lock(&self.pending).contains_key(&id)
    }

    /// Forgets call `id` (a ping whose waiter went away), as if answered.
    pub(crate) fn forget(&self, id: u64) {
        let _ = self.take_waiting(id);
    }

    /// Call `id` answered: the worker's load freed, and where its answer
    /// goes, if its caller still waits for it.
    fn take_waiting(&self, id: u64) -> Option<Reply> {
        let (waiting, was_cancelled) = {
            let mut pending = lock(&self.pending);
            let waiting = pending.remove(&id);
            (waiting, lock(&self.cancelled).remove(&id).is_some())
        };
        if waiting.is_some() || was_cancelled {
            // Saturating: the exit path sets it to 0, and a ping forgotten
            // after it (`forget`) would wrap it (review 234).
            let _ = self
                .load
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            self.freed.notify_one();
        }
        waiting.filter(|tx| !tx.is_closed())
    }

    /// Whether its stdout reader waits for the turn of large answers (see
    /// `read_stdout`), or stopped less than `window` ago: what the worker
    /// wrote meanwhile waited with it, pings' answers included.
    pub(crate) fn reader_waited_within(&self, window: Duration) -> bool {
        match *lock(&self.reader_waits) {
            (true, _) => true,
            (false, Some(ended)) => ended.elapsed() < window,
            (false, None) => false,
        }
    }

    /// The stdout reader begins (`true`) or stops waiting for the turn.
    fn reader_waits(&self, waits: bool) {
        let mut w = lock(&self.reader_waits);
        *w = (waits, if waits { w.1 } else { Some(Instant::now()) });
    }
}

fn last_line(stderr: &Mutex<VecDeque<String>>) -> String {
    lock(stderr)
        .back()
        .map(|l| format!("; its last stderr line: {l}"))
        .unwrap_or_default()
}

/// What [`read_line`] read.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A line (its newline included), or what the stream held before its
    /// end; nothing at all at the end (also when the stream ended in a line
    /// too long: its writer died, and its calls are answered as a crash).
    Line,
    /// A line longer than the limit, read to its newline: `buf` holds its
    /// first [`HEAD`] bytes then its last [`TAIL`] (for the id of the call
    /// it answers, written first or last), the rest was passed over.
    TooLong,
}

/// What is kept of the start of a line too long, to find the call it answers.
const HEAD: usize = 256;
/// And of its end (its newline not counted).
const TAIL: usize = 64;

/// How far past the limit a line too long is passed over before the
/// worker is taken as broken (a line without end would otherwise keep
/// every other call of the worker waiting).
const SKIP_FACTOR: usize = 16;

/// Reads one line into `buf` (newline included), holding no more than
/// `max` bytes of it; past `SKIP_FACTOR` times `max` it is an error.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Read> {
    let mut passed: Option<usize> = None;
    let mut tail: VecDeque<u8> = VecDeque::new();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            if passed.is_some() {
                buf.clear();
            }
            return Ok(Read::Line);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        match &mut passed {
            None if buf.len() + take <= max => buf.extend_from_slice(&available[..take]),
            // Checked before the copy, so the buffer never grows past `max`.
            None => {
                tail.extend(buf.iter().skip(buf.len().saturating_sub(TAIL)));
                let keep = HEAD.saturating_sub(buf.len()).min(take);
                buf.extend_from_slice(&available[..keep]);
                buf.truncate(HEAD);
                passed = Some(take - keep);
            }
            Some(n) => *n += take,
        }
        if passed.is_some() {
            let line = available[..take]
                .strip_suffix(b"\n")
                .unwrap_or(&available[..take]);
            tail.extend(&line[line.len().saturating_sub(TAIL)..]);
            let over = tail.len().saturating_sub(TAIL);
            tail.drain(..over);
        }
        r.consume(take);
        if passed.is_some_and(|n| n > SKIP_FACTOR.saturating_mul(max)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a line longer than {} bytes",
                    SKIP_FACTOR.saturating_mul(max)
                ),
            ));
        }
        if done {
            if passed.is_none() {
                return Ok(Read::Line);
            }
            buf.extend(tail);
            return Ok(Read::TooLong);
        }
    }
}

/// A line for a worker's stdin, with the id of the call it sends.
type Line = (Option<u64>, Vec<u8>);

/// The most bytes of queued lines joined into one `write`: a pipe's
/// buffer. A longer line is written alone, never copied.
const JOIN_BYTES: usize = 64 * 1024;

/// Writes the queued lines to the worker's stdin until the sender is
/// dropped (then closes it: the worker finishes and exits), or until a
/// write fails: then the receiver is closed, so nothing more is queued for
/// a pipe that takes nothing, and the error comes with the ids of the calls
/// whose lines were not written whole (the one that failed, and those
/// queued behind it), which are answered as never sent: a write fails
/// when no reader is left on the pipe, so none of them can run. (A line
/// cut short because litebridge itself died mid-write may reach the
/// worker whole but for its newline; the worker runs it, as it would have
/// run it whole, and nobody is left to answer.)
///
/// The lines queued at once (many calls sent together) are joined and
/// written with one system call, up to [`JOIN_BYTES`]: one `write` per
/// call cost litebridge a system call, and the worker a wake-up, each
/// (measured on `bridge-pipelined`). A line that comes alone is written
/// as it is.
async fn write_stdin(
    mut stdin: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    mut rx: mpsc::UnboundedReceiver<Line>,
) -> Result<(), (std::io::Error, Vec<u64>)> {
    let mut joined: Vec<u8> = Vec::new();
    // The ids of the lines being written, with where each ends.
    let mut ends: Vec<(Option<u64>, usize)> = Vec::new();
    let mut next: Option<Line> = None;
    let mut written = 0;
    let outcome: std::io::Result<()> = async {
        loop {
            let (id, line) = match next.take() {
                Some(l) => l,
                None => match rx.recv().await {
                    Some(l) => l,
                    None => return Ok(()),
                },
            };
            joined.clear();
            ends.clear();
            written = 0;
            let first = rx.try_recv();
            let out: &[u8] = match first {
                Ok(more) if line.len() + more.1.len() <= JOIN_BYTES => {
                    joined.extend_from_slice(&line);
                    ends.push((id, joined.len()));
                    joined.extend_from_slice(&more.1);
                    ends.push((more.0, joined.len()));
                    while let Ok((id, more)) = rx.try_recv() {
                        if joined.len() + more.len() > JOIN_BYTES {
                            next = Some((id, more));
                            break;
                        }
                        joined.extend_from_slice(&more);
                        ends.push((id, joined.len()));
                    }
                    &joined
                }
                more => {
                    // Alone, or too long to join: written as it is.
                    next = more.ok();
                    ends.push((id, line.len()));
                    &line
                }
            };
            while written < out.len() {
                match stdin.write(&out[written..]).await? {
                    0 => return Err(std::io::ErrorKind::WriteZero.into()),
                    n => written += n,
                }
            }
            stdin.flush().await?;
        }
    }
    .await;
    if let Err(e) = outcome {
        rx.close();
        let mut unsent: Vec<u64> = ends
            .iter()
            .filter(|(_, end)| *end > written)
            .filter_map(|(id, _)| *id)
            .collect();
        unsent.extend(next.and_then(|(id, _)| id));
        while let Ok((id, _)) = rx.try_recv() {
            unsent.extend(id);
        }
        return Err((e, unsent));
    }
    // The sender was dropped: closing stdin tells the worker to finish.
    let _ = stdin.shutdown().await;
    Ok(())
}

/// A worker's stderr forwarder, stopped if dropped before it ends (a
/// start given up, or a drain whose caller goes away: review 232).
struct Forwarder(tokio::task::JoinHandle<()>);

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lines of a worker's stderr not logged ([`STDERR_LINES_PER_WINDOW`]),
/// their count logged when a window ends, and when the forwarder ends or is
/// stopped (review 231: a flood followed by the worker's end was never
/// counted).
struct Unlogged {
    worker: u64,
    pid: u32,
    count: u64,
}

impl Unlogged {
    fn log(&mut self) {
        if self.count > 0 {
            tracing::info!(
                target: "litebridge::worker",
                worker = self.worker,
                pid = self.pid,
                "[{} stderr lines not logged: more than {STDERR_LINES_PER_WINDOW} a second]",
                self.count
            );
            self.count = 0;
        }
    }
}

impl Drop for Unlogged {
    fn drop(&mut self) {
        self.log();
    }
}

/// Waits up to [`STDERR_DRAIN`] for the stderr forwarder to read the pipe
/// to its end, then stops it: a process the worker started in a session of
/// its own can hold the pipe open for good, and the forwarder with it (a
/// task and a descriptor per worker that died: review 230).
async fn drain_stderr(mut forwarder: Forwarder) {
    // Past the drain, dropped: stopped.
    let _ = tokio::time::timeout(STDERR_DRAIN, &mut forwarder.0).await;
}

/// A worker's stdout buffer past this, after a line, is given back.
const SHRINK_PAST: usize = 1 << 20;

/// Stderr lines logged per worker each [`STDERR_WINDOW`]; the rest are
/// counted, and the count logged when the next window opens (review 230: a
/// handler printing in a loop filled the log, every line at `info`).
const STDERR_LINES_PER_WINDOW: u32 = 200;
const STDERR_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest stderr line kept whole; the rest of a longer one is dropped
/// (and the line marked so): a worker printing megabytes without a newline
/// cannot make litebridge hold them.
const MAX_STDERR_LINE: usize = 16 * 1024;

/// Forwards the worker's stderr to the log line by line, keeping the last
/// `keep` lines. Bytes that are not UTF-8 are shown as U+FFFD and the lines
/// after them still come through.
async fn forward_stderr(
    pipe: Input,
    tail: Arc<Mutex<VecDeque<String>>>,
    id: u64,
    pid: u32,
    keep: usize,
) {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = BufReader::new(pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let (mut window, mut logged) = (tokio::time::Instant::now(), 0u32);
    let mut unlogged = Unlogged {
        worker: id,
        pid,
        count: 0,
    };
    loop {
        let (done, used, eof) = match reader.fill_buf().await {
            Ok([]) | Err(_) => (true, 0, true),
            Ok(chunk) => match chunk.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    take(&mut line, &mut cut, &chunk[..at]);
                    (true, at + 1, false)
                }
                None => {
                    take(&mut line, &mut cut, chunk);
                    (false, chunk.len(), false)
                }
            },
        };
        reader.consume(used);
        if done && (!line.is_empty() || cut || !eof) {
            let mut text = String::from_utf8_lossy(&line).into_owned();
            if cut {
                text.push_str(" [line cut: longer than 16 KiB]");
            }
            if window.elapsed() >= STDERR_WINDOW {
                unlogged.log();
                (window, logged) = (tokio::time::Instant::now(), 0);
            }
            if logged < STDERR_LINES_PER_WINDOW {
                logged += 1;
                tracing::info!(target: "litebridge::worker", worker = id, pid, "{text}");
            } else {
                unlogged.count += 1;
            }
            let mut t = lock(&tail);
            if t.len() >= keep.max(1) {
                t.pop_front();
            }
            t.push_back(text);
            line.clear();
            cut = false;
        }
        if eof {
            return;
        }
    }
}

/// Adds `bytes` to a stderr line, up to [`MAX_STDERR_LINE`].
fn take(line: &mut Vec<u8>, cut: &mut bool, bytes: &[u8]) {
    let room = MAX_STDERR_LINE.saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    *cut |= bytes.len() > room;
}

/// What the reader does when the worker's stdout ends.
struct Ended {
    /// Resolves to how the worker ended.
    exit: Exit,
    /// The stderr forwarder, which ends when stderr does.
    stderr: Forwarder,
    exited: watch::Sender<Option<String>>,
    on_exit: mpsc::UnboundedSender<u64>,
}

async fn read_stdout(
    process: Arc<Process>,
    mut reader: BufReader<Input>,
    ended: Ended,
    max_line: usize,
) {
    let Ended {
        exit,
        stderr,
        exited,
        on_exit,
    } = ended;
    // Its end is watched from the start, not only once stdout closes: a
    // process it started may hold its stdout open (a subprocess inheriting
    // it) and hide its death. What it started and left running (a
    // subprocess, a daemon) is stopped with it, which closes that stdout:
    // its process group outlives it while any member does, and the group's
    // number cannot be taken by another process meanwhile.
    let (ended_tx, mut how) = tokio::sync::oneshot::channel::<String>();
    {
        let process = process.clone();
        tokio::spawn(async move {
            let how = exit.await;
            process.signal(libc::SIGKILL);
            let _ = ended_tx.send(how);
        });
    }
    let unknown = |_| "exit status unknown".to_owned();
    let mut line = Vec::new();
    // The worker's last large answer, being read (`deliver_large`).
    let mut reading: Option<tokio::task::JoinHandle<()>> = None;
    // How it ended, once it did, and until when what it wrote is read.
    let mut ended: Option<(String, tokio::time::Instant)> = None;
    loop {
        let read = match ended {
            None => tokio::select! {
                biased;
                r = read_line(&mut reader, &mut line, max_line) => r,
                h = &mut how => {
                    // `line` keeps what was read of a line (`read_line`
                    // appends what it consumes before it waits).
                    let until = tokio::time::Instant::now() + AFTER_EXIT;
                    ended = Some((h.unwrap_or_else(unknown), until));
                    continue;
                }
            },
            // It ended, and its group with it: what it wrote is read until
            // its stdout closes, or for a moment more if something outside
            // its group holds that open (a daemon that left the group with
            // `setsid`, which may go on writing). Its calls were waiting on
            // it until their deadlines, and what their callers kept of them
            // was never given back.
            Some((_, until)) => {
                match tokio::time::timeout_at(until, read_line(&mut reader, &mut line, max_line))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
        };
        match read {
            Ok(Read::Line) if line.is_empty() => break,
            Ok(Read::Line) => {}
            // Passed over, the stream still in step: only the call it
            // answers fails (retrying it elsewhere would take that worker's
            // other calls down too, as a kill did here).
            Ok(Read::TooLong) => {
                let limit = max_line as u64;
                let (head, tail) = line.split_at(line.len().min(HEAD));
                match protocol::leading_id(head).or_else(|| protocol::trailing_id(tail)) {
                    Some(id) => {
                        tracing::warn!(
                            worker = process.id,
                            pid = process.pid,
                            "the answer to call {id} is longer than {limit} bytes \
                             (workers.max_reply_mb): the call fails"
                        );
                        process.answer(
                            id,
                            Err(Error::TooLarge {
                                what: "the worker's answer (workers.max_reply_mb)".into(),
                                limit,
                            }),
                        );
                    }
                    // Whose answer it was cannot be told: as before, the
                    // worker is replaced (a call would otherwise wait out
                    // its deadline, counted by its breaker: review 125).
                    None => {
                        tracing::warn!(
                            worker = process.id,
                            pid = process.pid,
                            "protocol broken (a line longer than {limit} bytes, \
                             workers.max_reply_mb, naming no call): killing the worker"
                        );
                        process.signal(libc::SIGKILL);
                        break;
                    }
                }
                line = Vec::new();
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    worker = process.id,
                    pid = process.pid,
                    "protocol broken ({e}): killing the worker"
                );
                process.signal(libc::SIGKILL);
                break;
            }
        }
        match protocol::parse_after_ready(&line) {
            // Read in the turn of large answers, off this reader, which goes
            // on reading the worker's other lines (its pings' answers)
            // meanwhile. One of the worker's at a time: the reader waits for
            // its last before it queues another, so a worker has at most two
            // answers' copies waiting, where it had a line and its copy
            // before (review 233: one waited for each call, and a worker
            // answering every call at once with 64 MiB could fill memory).
            // While the reader waits, it reads nothing of this worker.
            Ok(Incoming::Response {
                id,
                outcome: Ok(raw),
            }) if line.len() > LARGE_ANSWER_BYTES => {
                if let Some(tx) = process.take_waiting(id) {
                    if let Some(mut last) = reading.take()
                        && !last.is_finished()
                    {
                        // The line is copied in `raw`: not held twice.
                        line = Vec::new();
                        // Meanwhile this worker's pings are not held
                        // against it, nor its calls' timeouts at that
                        // moment against their methods (review 234: a
                        // worker writing two large answers while another's
                        // held the turn was killed for its unread ping's
                        // answer).
                        process.reader_waits(true);
                        // A worker that ends meanwhile is seen to at once,
                        // and what it wrote after is read for its half
                        // second, as ever (review 236: its calls waited
                        // for the turn to fail); its last answer waits on,
                        // unwaited for. Once it has ended, its answers
                        // are queued one at a time again (review 237: a
                        // wait cut short at its end let them all queue).
                        match ended {
                            None => tokio::select! {
                                _ = &mut last => {}
                                h = &mut how => {
                                    let until = tokio::time::Instant::now() + AFTER_EXIT;
                                    ended = Some((h.unwrap_or_else(unknown), until));
                                }
                            },
                            Some(_) => {
                                let _ = last.await;
                            }
                        }
                        process.reader_waits(false);
                    }
                    reading = Some(tokio::spawn(deliver_large(tx, raw)));
                }
            }
            Ok(Incoming::Response { id, outcome }) => process.answer(id, outcome),
            Ok(Incoming::Notification(m)) => {
                tracing::debug!(worker = process.id, "notification {}", protocol::cut(&m));
            }
            Ok(Incoming::Ready(_)) => {}
            Err(e) => {
                let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                tracing::warn!(
                    worker = process.id,
                    pid = process.pid,
                    "ignored a line on stdout ({e}): {shown}"
                );
            }
        }
        line.clear();
        // One large answer does not keep its room for the worker's life
        // (up to `max_reply_mb` a worker: review 230).
        if line.capacity() > SHRINK_PAST {
            line = Vec::new();
        }
    }
    // Stdout is closed, or the process ended: it is ending (or closed its
    // stdout; then it is killed).
    let exit = match ended {
        Some((how, _)) => how,
        None => match tokio::time::timeout(Duration::from_secs(2), &mut how).await {
            Ok(how) => how.unwrap_or_else(unknown),
            Err(_) => {
                process.signal(libc::SIGKILL);
                how.await.unwrap_or_else(unknown)
            }
        },
    };
    // Its last stderr lines, which explain the crash, before it is reported.
    drain_stderr(stderr).await;
    let _ = process.exit.set(exit.clone());
    process.dead.store(true, Ordering::Release);
    let _ = exited.send(Some(exit.clone()));
    let stderr: Vec<String> = lock(&process.stderr).iter().cloned().collect();
    let orphans: Vec<Reply> = lock(&process.pending).drain().map(|(_, tx)| tx).collect();
    lock(&process.cancelled).clear();
    process.load.store(0, Ordering::Release);
    for tx in orphans {
        let _ = tx.send(Err(Error::WorkerCrashed {
            pid: process.pid,
            worker: process.id,
            exit: exit.clone(),
            stderr: stderr.clone(),
            idempotent: false,
        }));
    }
    let _ = on_exit.send(process.id);
}

/// A large answer read into a tree in the turn of large answers
/// (`crate::json::read_large_answer`), then handed to its caller; not read
/// once its caller went away (review 233: it held the turn for a tree
/// nobody would take).
async fn deliver_large(mut tx: Reply, raw: protocol::Raw) {
    let read = move || protocol::tree(&raw);
    tokio::select! {
        built = crate::json::read_large_answer(None, read) => {
            if let Some(tree) = built {
                let _ = tx.send(tree);
            }
        }
        () = tx.closed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a [`Pipe`] was given, write by write.
    type Writes = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A stdin that takes at most `chunk` bytes a `write`, and fails every
    /// `write` once `budget` bytes were taken; it notes each write.
    struct Pipe {
        writes: Writes,
        budget: usize,
        chunk: usize,
    }

    impl tokio::io::AsyncWrite for Pipe {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.budget == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            let n = buf.len().min(self.budget).min(self.chunk);
            self.budget -= n;
            lock(&self.writes).push(buf[..n].to_vec());
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn pipe(budget: usize, chunk: usize) -> (Pin<Box<Pipe>>, Writes) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let p = Pipe {
            writes: writes.clone(),
            budget,
            chunk,
        };
        (Box::pin(p), writes)
    }

    fn line(id: u64, len: usize) -> Line {
        let mut l = vec![b'x'; len - 1];
        l.push(b'\n');
        (Some(id), l)
    }

    #[tokio::test]
    async fn lines_queued_together_are_written_in_one_write_and_a_long_one_alone() {
        let (stdin, writes) = pipe(usize::MAX, usize::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        for id in 0..10 {
            tx.send(line(id, 100)).unwrap();
        }
        tx.send(line(10, JOIN_BYTES)).unwrap();
        tx.send(line(11, 100)).unwrap();
        drop(tx);
        write_stdin(stdin, rx).await.unwrap();
        let sizes: Vec<usize> = lock(&writes).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, JOIN_BYTES, 100]);
    }

    #[tokio::test]
    async fn a_failed_write_names_every_line_not_written_whole_and_only_those() {
        // Lines of 100 bytes, written 64 bytes a write, the pipe breaking
        // after 250 bytes: lines 0 and 1 went whole, line 2 in part.
        let (stdin, writes) = pipe(250, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        for id in 0..5 {
            tx.send(line(id, 100)).unwrap();
        }
        let (e, unsent) = write_stdin(stdin, rx).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(unsent, [2, 3, 4]);
        assert_eq!(lock(&writes).iter().map(Vec::len).sum::<usize>(), 250);
        assert!(tx.send(line(5, 10)).is_err(), "nothing more is queued");
        // Past the join's limit, the line held back for the next write is
        // named too.
        let (stdin, _) = pipe(10, usize::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(line(0, JOIN_BYTES - 10)).unwrap();
        tx.send(line(1, 100)).unwrap();
        tx.send(line(2, 100)).unwrap();
        let (_, unsent) = write_stdin(stdin, rx).await.unwrap_err();
        assert_eq!(unsent, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_line_too_long_is_passed_over_holding_no_more_than_the_limit() {
        let max = 1000;
        let mut input = vec![b'{'; 3 * max];
        input.extend_from_slice(b"}\n{}\n");
        input.extend(std::iter::repeat_n(b'x', (SKIP_FACTOR + 2) * max));
        let mut r = BufReader::with_capacity(64, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut r, &mut buf, max).await.unwrap(),
            Read::TooLong
        );
        assert_eq!(buf.len(), HEAD + TAIL, "its head and its tail only");
        assert_eq!(buf.last(), Some(&b'}'), "its end, without the newline");
        assert!(buf.capacity() < 2 * max, "held {} bytes", buf.capacity());
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf, max).await.unwrap(), Read::Line);
        assert_eq!(buf, b"{}\n", "the next line, in step");
        buf.clear();
        let e = read_line(&mut r, &mut buf, max).await.unwrap_err();
        assert!(
            e.to_string().contains("a line longer than 16000 bytes"),
            "{e}"
        );
        // One cut short by the end of the stream (its writer died) is no
        // answer: the stream's end.
        let cut = vec![b'x'; 2 * max];
        let mut r = BufReader::with_capacity(64, &cut[..]);
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf, max).await.unwrap(), Read::Line);
        assert!(buf.is_empty());
    }
}
