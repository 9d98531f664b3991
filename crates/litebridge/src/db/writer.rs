//! The writer thread: the only read-write connection, its bounded queue, and
//! the supervisor that restarts it.
//!
//! Callers put a [`WriteJob`] on a bounded queue and await its answer. The
//! thread takes what is queued (up to `max_batch`, waiting up to `max_wait` for
//! more) and hands it to [`commit_batch`]. After a commit that leaves the WAL
//! past the checkpoint threshold it nudges the checkpointer thread, so
//! checkpoint I/O never runs here. When idle it checks its connection.
//!
//! If the thread panics, the requests of the batch in hand are answered with
//! an `unavailable` error as their reply channels drop (they did not commit:
//! the connection, and with it the open transaction, is dropped too), and the
//! supervisor opens a new connection and goes on with the queue. Nobody hangs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::db::checkpointer::{Checkpointer, Nudge};
use crate::db::group_commit::{Request, commit_batch};
use crate::db::guard::{self, Budget, Mode};
use crate::db::open::Opener;
use crate::error::{Error, Result, TimeoutStage};
use crate::stats::Counters;

/// A message on the writer's queue.
pub(crate) enum Msg {
    Job(Request),
    /// Run a checkpoint between two batches and answer with its report.
    Checkpoint(
        CheckpointMode,
        tokio::sync::oneshot::Sender<Result<CheckpointReport>>,
    ),
    /// Commit what came before, answer what comes after with `closed`, exit.
    Stop,
}

/// How callers reach the writer thread.
pub(crate) struct WriterHandle {
    tx: flume::Sender<Msg>,
    /// Kept so that a request that slipped in after the writer exited can be
    /// answered instead of waiting forever.
    drain: flume::Receiver<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    capacity: usize,
    counters: Arc<Counters>,
}

/// Whether a caller waits for room in a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Wait,
    Try,
}

impl WriterHandle {
    /// Opens the writer connection (failing `open` if it cannot) and starts the thread.
    pub(crate) fn start(
        opener: Opener,
        counters: Arc<Counters>,
    ) -> Result<(WriterHandle, Checkpointer)> {
        let conn = opener.open_writer(true)?;
        let checkpointer = Checkpointer::start(&opener, counters.clone())?;
        let nudge = checkpointer.nudge(&opener);
        let capacity = opener.config.write_queue;
        let (tx, rx) = flume::bounded(capacity);
        let c = counters.clone();
        let drain = rx.clone();
        let thread = std::thread::Builder::new()
            .name("litebridge-writer".into())
            .spawn(move || supervise(conn, rx, opener, c, nudge))
            .map_err(|e| Error::io("cannot start the writer thread", "litebridge-writer", e))?;
        let handle = WriterHandle {
            tx,
            drain,
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            capacity,
            counters,
        };
        Ok((handle, checkpointer))
    }

    pub(crate) fn queued(&self) -> usize {
        self.tx.len()
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && self
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|t| !t.is_finished())
    }

    /// Queues a job if there is room now. A full queue gives the job back
    /// (`Ok(Some(job))`) on the `Wait` path and answers `overloaded` on the
    /// `Try` path.
    ///
    /// Not async: the common case needs no future at all, and the caller's
    /// future stays small (it is moved and allocated once per request by
    /// whoever drives it; the waiting path is boxed, see [`Self::wait_for_room`]).
    pub(crate) fn submit_now(&self, job: Request, admission: Admission) -> Result<Option<Msg>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        let job = match self.tx.try_send(Msg::Job(job)) {
            Ok(()) => return self.after_send().map(|()| None),
            Err(flume::TrySendError::Disconnected(_)) => return Err(Error::closed()),
            Err(flume::TrySendError::Full(job)) => job,
        };
        if admission == Admission::Try {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded {
                queue: "write",
                capacity: self.capacity,
                retry_after: Duration::from_millis(10),
            });
        }
        Ok(Some(job))
    }

    /// Waits for room for a job the queue was too full to take, until the
    /// job's deadline.
    pub(crate) async fn wait_for_room(&self, job: Msg) -> Result<()> {
        let budget = match &job {
            Msg::Job(j) => j.budget().clone(),
            Msg::Stop | Msg::Checkpoint(..) => Budget::new(None),
        };
        let send = self.tx.send_async(job);
        let sent = match budget.deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), send).await {
                Ok(r) => r,
                Err(_) => {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(budget.timeout_error(TimeoutStage::Queued));
                }
            },
            None => send.await,
        };
        sent.map_err(|_| Error::closed())?;
        self.after_send()
    }

    /// Runs a checkpoint on the writer thread between two batches.
    pub(crate) async fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointReport> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send_async(Msg::Checkpoint(mode, reply))
            .await
            .map_err(|_| Error::closed())?;
        self.after_send()?;
        answer.await.unwrap_or_else(|_| Err(Error::writer_gone()))
    }

    fn after_send(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            // Closed while we were sending: the writer may already be gone.
            // Whatever is still queued is answered here (a request answered
            // `closed` was never run).
            self.fail_queued();
        }
        Ok(())
    }

    fn fail_queued(&self) {
        while let Ok(msg) = self.drain.try_recv() {
            match msg {
                Msg::Job(job) => job.finish(Err(Error::closed())),
                Msg::Checkpoint(_, reply) => {
                    let _ = reply.send(Err(Error::closed()));
                }
                Msg::Stop => {}
            }
        }
    }

    /// Stops accepting, lets the thread commit what was queued before, checkpoint and exit.
    pub(crate) fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.tx.send(Msg::Stop);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.fail_queued();
    }
}

/// Restarts the writer loop whenever it dies, until it is stopped.
fn supervise(
    conn: Connection,
    rx: flume::Receiver<Msg>,
    opener: Opener,
    counters: Arc<Counters>,
    nudge: Nudge,
) {
    let mut conn = Some(conn);
    let mut backoff = Duration::from_millis(10);
    loop {
        let run = catch_unwind(AssertUnwindSafe(|| {
            writer_loop(&mut conn, &rx, &opener, &counters, &nudge)
        }));
        match run {
            Ok(()) => return,
            Err(_) => {
                // The connection may hold a half-done transaction: drop it, which
                // rolls it back, and start from a fresh one.
                conn = None;
                counters.writer_restarts.fetch_add(1, Ordering::Relaxed);
                counters.failed_connections.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn writer_loop(
    slot: &mut Option<Connection>,
    rx: &flume::Receiver<Msg>,
    opener: &Opener,
    counters: &Counters,
    nudge: &Nudge,
) {
    let config = opener.config.clone();
    let max_batch = config.max_batch;
    let idle_tick = config.health_check_interval.min(Duration::from_secs(1));
    let check_fks = config.foreign_keys;
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch.min(4096));
    let mut asked: Vec<(
        CheckpointMode,
        tokio::sync::oneshot::Sender<Result<CheckpointReport>>,
    )> = Vec::new();
    let wal_pages = Arc::new(AtomicU32::new(0));
    let mut hooked = false;
    let mut last_check = Instant::now();
    loop {
        if slot.is_none() {
            match opener.open_writer(false) {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    // Cannot open: answer what is queued rather than leave it waiting.
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(Msg::Job(job)) => job.finish(Err(e)),
                        Ok(Msg::Checkpoint(_, reply)) => {
                            let _ = reply.send(Err(e));
                        }
                        Ok(Msg::Stop) | Err(flume::RecvTimeoutError::Disconnected) => return,
                        Err(flume::RecvTimeoutError::Timeout) => {}
                    }
                    continue;
                }
            }
            hooked = false;
        }
        let conn = slot.as_mut().expect("opened above");
        if !hooked {
            install_hooks(conn, &wal_pages, opener);
            hooked = true;
        }
        let mut stopping = false;
        let first = match spin_recv(rx).map_or_else(|| rx.recv_timeout(idle_tick), Ok) {
            Ok(Msg::Job(job)) => job,
            Ok(Msg::Checkpoint(mode, reply)) => {
                let _ = reply.send(nudge.on_demand(conn, mode, &wal_pages, counters));
                continue;
            }
            Ok(Msg::Stop) => return,
            Err(flume::RecvTimeoutError::Timeout) => {
                if last_check.elapsed() >= config.health_check_interval {
                    last_check = Instant::now();
                    counters.health_checked_now();
                    if !healthy(conn) {
                        counters.failed_connections.fetch_add(1, Ordering::Relaxed);
                        *slot = None;
                        continue;
                    }
                }
                continue;
            }
            Err(flume::RecvTimeoutError::Disconnected) => return,
        };
        batch.push(first);
        // One message at a time, not `drain()`: draining hands the channel's
        // buffer to the writer, and the producers then grow a new one from
        // nothing for every batch (reallocations, copies and fresh pages on
        // their cores, frees on the writer's: measured).
        while !stopping && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Checkpoint(mode, reply)) => asked.push((mode, reply)),
                Ok(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !stopping && !config.max_wait.is_zero() && batch.len() < max_batch {
            let until = Instant::now() + config.max_wait;
            while batch.len() < max_batch {
                match rx.recv_deadline(until) {
                    Ok(Msg::Job(job)) => batch.push(job),
                    Ok(Msg::Checkpoint(mode, reply)) => asked.push((mode, reply)),
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        counters.write_active.store(1, Ordering::Relaxed);
        let panic_now = config
            .faults
            .as_ref()
            .is_some_and(|f| f.take_panic_writer());
        commit_batch(conn, &mut batch, counters, check_fks, panic_now);
        counters.write_active.store(0, Ordering::Relaxed);
        for (mode, reply) in asked.drain(..) {
            let _ = reply.send(nudge.on_demand(conn, mode, &wal_pages, counters));
        }
        nudge.after_commit(conn, &wal_pages, counters);
        if stopping {
            return;
        }
    }
}

/// Waking a parked thread costs ~50 us on this class of machine (baselines,
/// finding 2), more than a whole batch. Right after a batch the callers it
/// answered are about to send their next requests, so the writer first polls
/// the queue for a short while, yielding its core to them, before it parks.
const SPIN: Duration = Duration::from_micros(60);

fn spin_recv(rx: &flume::Receiver<Msg>) -> Option<Msg> {
    let start = Instant::now();
    loop {
        if let Ok(m) = rx.try_recv() {
            return Some(m);
        }
        if start.elapsed() >= SPIN {
            return None;
        }
        std::thread::yield_now();
    }
}

fn install_hooks(conn: &mut Connection, wal_pages: &Arc<AtomicU32>, opener: &Opener) {
    let pages = wal_pages.clone();
    // SQLite calls this after every commit with the number of pages in the WAL.
    let _ = conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, n: std::os::raw::c_int| {
            pages.store(u32::try_from(n).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        },
    ));
    if let Some(faults) = opener.config.faults.clone() {
        // Returning true turns the COMMIT into a rollback, as a real failure would.
        let _ = conn.commit_hook(Some(move || faults.take_fail_commit()));
    }
}

fn healthy(conn: &Connection) -> bool {
    if !conn.is_autocommit() {
        return false;
    }
    let _scope = guard::enter(&Budget::new(Some(Duration::from_secs(5))), Mode::Internal);
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok()
}

/// A `PRAGMA wal_checkpoint` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copy what can be copied without waiting for anyone.
    Passive,
    /// Wait for the writer lock and for readers on old snapshots, copy everything.
    Full,
    /// As `Full`, then make the next writer start the log from the beginning.
    Restart,
    /// As `Restart`, then truncate the `-wal` file to zero bytes.
    Truncate,
}

impl CheckpointMode {
    /// Parses `passive`, `full`, `restart` or `truncate` (any case).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `mode` for anything else.
    pub fn parse(s: &str) -> Result<CheckpointMode> {
        match s.to_ascii_lowercase().as_str() {
            "passive" => Ok(CheckpointMode::Passive),
            "full" => Ok(CheckpointMode::Full),
            "restart" => Ok(CheckpointMode::Restart),
            "truncate" => Ok(CheckpointMode::Truncate),
            _ => Err(Error::invalid(
                "mode",
                format!(
                    "{s:?} is not a checkpoint mode; expected passive, full, restart or truncate"
                ),
            )),
        }
    }

    fn sql(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            CheckpointMode::Full => "PRAGMA wal_checkpoint(FULL)",
            CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
            CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

/// What a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Whether it could not finish because of readers or another writer.
    pub busy: bool,
    /// Frames in the WAL (-1 if not in WAL mode).
    pub log_pages: i64,
    /// Frames copied back into the database (-1 if not in WAL mode).
    pub checkpointed_pages: i64,
}

pub(crate) fn checkpoint(conn: &Connection, mode: CheckpointMode) -> Result<CheckpointReport> {
    let (busy, log, done) = conn.query_row(mode.sql(), [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    Ok(CheckpointReport {
        busy: busy != 0,
        log_pages: log,
        checkpointed_pages: done,
    })
}
