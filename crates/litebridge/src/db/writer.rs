//! The writer thread: the only read-write connection, its bounded queue, and
//! the supervisor that restarts it.
//!
//! Callers put a `WriteJob` on a bounded queue ([`WriteQueue`]) and await
//! its answer. The thread takes everything queued at once (waiting up to
//! `max_wait` for more) and hands it to [`commit_batch`] in transactions of
//! at most `max_batch` requests. After a commit that leaves the WAL
//! past the checkpoint threshold it nudges the checkpointer thread, so
//! checkpoint I/O never runs here. When idle it checks its connection.
//!
//! If the thread panics, the requests of the batch in hand are answered with
//! an `unavailable` error as their reply channels drop (they did not commit:
//! the connection, and with it the open transaction, is dropped too), and the
//! supervisor opens a new connection and goes on with the queue. Nobody hangs.
//!
//! **Nobody waits on one caller for long.** A client request may hold the
//! writer at most `max_write_hold` (its statements are interrupted past it,
//! between their steps; one that ends past it inside a single long step
//! fails all the same, and its batch re-runs without it; and a batch takes
//! no new request once it has run that long: the rest wait for the next one). While a batch runs longer than a moment, a watch
//! thread answers the queued requests whose deadline has passed with
//! `timeout` (they never ran), so every caller hears back by its deadline.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::db::checkpointer::{Checkpointer, Nudge};
use crate::db::group_commit::{Limits, Request, Scratch, commit_batch};
use crate::db::guard::{self, Budget, Mode};
use crate::db::on_disk::OnDisk;
use crate::db::open::Opener;
use crate::db::queue::{Asked, Refused, Taken, WriteQueue};
use crate::error::{Error, Result, TimeoutStage};
use crate::stats::Counters;
use crate::sync::lock;

/// How callers reach the writer thread.
pub(crate) struct WriterHandle {
    queue: Arc<WriteQueue>,
    thread: Mutex<Option<JoinHandle<()>>>,
    watch: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    counters: Arc<Counters>,
    busy: Arc<Busy>,
}

/// Since when the writer has been running its current batch.
pub(crate) struct Busy {
    base: Instant,
    /// Nanoseconds after `base` the batch started, plus one; 0 when idle.
    since: AtomicU64,
}

impl Busy {
    fn new() -> Busy {
        Busy {
            base: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    fn start(&self) {
        let at = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.since.store(at + 1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// How long the current batch has run; `None` when idle.
    pub(crate) fn running_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1)),
            ),
        }
    }
}

/// The watch thread looks at the writer this often.
const WATCH_TICK: Duration = Duration::from_millis(50);

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
        let queue = Arc::new(WriteQueue::new(opener.config.write_queue));
        let busy = Arc::new(Busy::new());
        let (c, q, b) = (counters.clone(), queue.clone(), busy.clone());
        let thread = std::thread::Builder::new()
            .name("litebridge-writer".into())
            .spawn(move || supervise(conn, &q, opener, c, nudge, &b))
            .map_err(|e| Error::io("cannot start the writer thread", "litebridge-writer", e))?;
        let (c, q, b) = (counters.clone(), queue.clone(), busy.clone());
        let watch = std::thread::Builder::new()
            .name("litebridge-writer-watch".into())
            .spawn(move || watch(&q, &b, &c))
            .map_err(|e| {
                Error::io(
                    "cannot start the writer's watch thread",
                    "litebridge-writer-watch",
                    e,
                )
            })?;
        let handle = WriterHandle {
            queue,
            thread: Mutex::new(Some(thread)),
            watch: Mutex::new(Some(watch)),
            closed: AtomicBool::new(false),
            counters,
            busy,
        };
        Ok((handle, checkpointer))
    }

    /// How long the writer has been running its current batch (`None` when idle).
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        self.busy.running_for()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && lock(&self.thread)
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
    pub(crate) fn submit_now(&self, job: Request, admission: Admission) -> Result<Option<Request>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        let job = match self.queue.push(job) {
            Ok(()) => return Ok(None),
            Err(Refused::Stopped) => return Err(Error::closed()),
            Err(Refused::Full(job)) => job,
        };
        if admission == Admission::Try {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded {
                queue: "write",
                capacity: self.queue.capacity(),
                retry_after: Duration::from_millis(10),
            });
        }
        Ok(Some(job))
    }

    /// Waits for room for a job the queue was too full to take, until the
    /// job's deadline.
    pub(crate) async fn wait_for_room(&self, job: Request) -> Result<()> {
        let deadline = job.budget().deadline;
        match self.queue.push_waiting(job, deadline).await {
            Ok(()) => Ok(()),
            Err(Refused::Full(job)) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(job.budget().timeout_error(TimeoutStage::Queued))
            }
            Err(Refused::Stopped) => Err(Error::closed()),
        }
    }

    /// Runs a checkpoint on the writer thread between two batches.
    pub(crate) async fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointReport> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.ask((mode, reply)).map_err(|_| Error::closed())?;
        answer.await.unwrap_or_else(|_| Err(Error::writer_gone()))
    }

    /// Stops accepting, lets the thread commit what was queued before, checkpoint and exit.
    pub(crate) fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.queue.stop();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let watch = lock(&self.watch).take();
        if let Some(t) = watch {
            t.thread().unpark();
            let _ = t.join();
        }
        // The writer takes everything with the stop signal; this only finds
        // something if the thread is gone for another reason.
        let (mut jobs, mut asked) = (Vec::new(), Vec::new());
        self.queue.take_now(&mut jobs, &mut asked);
        answer_all(&mut jobs, &mut asked, &Error::closed());
    }
}

/// Answers every request and checkpoint request with `e` (none of them ran).
fn answer_all(jobs: &mut Vec<Request>, asked: &mut Vec<Asked>, e: &Error) {
    for job in jobs.drain(..) {
        job.finish(Err(e.clone()));
    }
    for (_, reply) in asked.drain(..) {
        let _ = reply.send(Err(e.clone()));
    }
}

/// While the writer runs one batch for longer than a tick, answers the
/// queued requests whose deadline passes with `timeout` (taken out of the
/// queue, so they never run). Ends when the queue is stopped.
fn watch(queue: &WriteQueue, busy: &Busy, counters: &Counters) {
    while !queue.stopped() {
        std::thread::park_timeout(WATCH_TICK);
        if busy.running_for().is_some_and(|d| d >= WATCH_TICK) {
            for job in queue.expire(Instant::now()) {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let e = job.budget().timeout_error(TimeoutStage::Queued);
                job.finish(Err(e));
            }
        }
    }
}

/// Restarts the writer loop whenever it dies, until it is stopped.
fn supervise(
    conn: Connection,
    queue: &WriteQueue,
    opener: Opener,
    counters: Arc<Counters>,
    nudge: Nudge,
    busy: &Busy,
) {
    let mut conn = Some(conn);
    let mut backoff = Duration::from_millis(10);
    loop {
        let run = catch_unwind(AssertUnwindSafe(|| {
            writer_loop(&mut conn, queue, &opener, &counters, &nudge, busy)
        }));
        match run {
            Ok(()) => return,
            Err(_) => {
                busy.end();
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
    queue: &WriteQueue,
    opener: &Opener,
    counters: &Counters,
    nudge: &Nudge,
    busy: &Busy,
) {
    let config = opener.config.clone();
    let max_batch = config.max_batch;
    let idle_tick = config.health_check_interval.min(Duration::from_secs(1));
    let check_fks = config.foreign_keys;
    let mut batch: Vec<Request> = Vec::with_capacity(config.write_queue.min(4096));
    let mut asked: Vec<Asked> = Vec::new();
    let mut scratch = Scratch::default();
    let wal_pages = Arc::new(AtomicU32::new(0));
    let mut hooked = false;
    let mut last_check = Instant::now();
    // When the writer last logged that the database's files changed.
    let mut said: Option<Instant> = None;
    loop {
        if slot.is_none() {
            match opener.open_writer(false) {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    // Cannot open: answer what is queued rather than leave it waiting.
                    let taken = queue.take(
                        &mut batch,
                        &mut asked,
                        Duration::ZERO,
                        Duration::from_millis(200),
                    );
                    answer_all(&mut batch, &mut asked, &e);
                    if taken == Taken::Stop {
                        return;
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
        let mut taken = queue.take(&mut batch, &mut asked, SPIN, idle_tick);
        if taken == Taken::Idle {
            if last_check.elapsed() >= config.health_check_interval {
                last_check = Instant::now();
                counters.health_checked_now();
                if !healthy(conn) {
                    counters.failed_connections.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                }
            }
            continue;
        }
        if taken == Taken::Work
            && !config.max_wait.is_zero()
            && !batch.is_empty()
            && batch.len() < max_batch
        {
            taken = queue.take_more(
                &mut batch,
                &mut asked,
                max_batch,
                Instant::now() + config.max_wait,
            );
        }
        // Refused whole, nothing run: interrupted for good
        // (`Database::interrupt`: short statements, which never meet the
        // progress handler, and checkpoints asked for too), a file
        // litebridge's user may not write, or one no path names any more
        // (see `on_disk`).
        let refusal = if !batch.is_empty() || !asked.is_empty() {
            if opener.halt.load(Ordering::Relaxed) {
                Some(guard::halted_error())
            } else if batch.is_empty() {
                None
            } else if opener.read_only.load(Ordering::Relaxed) {
                Some(opener.read_only_refusal())
            } else if let Some(why) = opener.on_disk.changed(&opener.path) {
                if said.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                    said = Some(Instant::now());
                    tracing::error!(db = %opener.path.display(), "{why}: writes are refused");
                }
                Some(OnDisk::refusal(&why))
            } else {
                None
            }
        } else {
            None
        };
        if let Some(e) = refusal {
            answer_all(&mut batch, &mut asked, &e);
            if taken == Taken::Stop {
                return;
            }
            continue;
        }
        while !batch.is_empty() {
            counters.write_active.store(1, Ordering::Relaxed);
            busy.start();
            let panic_now = config
                .faults
                .as_ref()
                .is_some_and(|f| f.take_panic_writer());
            let n = batch.len().min(max_batch);
            let limits = Limits {
                check_deferred_fks: check_fks,
                max_hold: config.max_write_hold,
                max_schema: (config.max_schema_objects, config.max_schema_bytes),
                max_result_bytes: config.max_result_bytes,
                halt: &opener.halt,
            };
            commit_batch(
                conn,
                &mut batch,
                n,
                counters,
                limits,
                panic_now,
                &mut scratch,
            );
            busy.end();
            counters.write_active.store(0, Ordering::Relaxed);
            nudge.after_commit(conn, &wal_pages, counters);
        }
        for (mode, reply) in asked.drain(..) {
            let _ = reply.send(nudge.on_demand(conn, mode, &wal_pages, counters));
        }
        if taken == Taken::Stop {
            return;
        }
    }
}

/// Waking a parked thread costs ~50 us on this class of machine (an idle
/// vCPU is slow to wake), more than a whole batch. Right after a batch the callers it
/// answered are about to send their next requests, so the writer first polls
/// the queue for a short while, yielding its core to them, before it parks.
const SPIN: Duration = Duration::from_micros(60);

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

impl std::str::FromStr for CheckpointMode {
    type Err = Error;

    /// Parses `passive`, `full`, `restart` or `truncate` (any case).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `mode` for anything else.
    fn from_str(s: &str) -> Result<CheckpointMode> {
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
}

impl CheckpointMode {
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
