//! Checkpoints: keeping the WAL bounded without stalling writes.
//!
//! A checkpoint copies WAL frames back into the database file and fsyncs it:
//! milliseconds of blocking I/O. Run on the writer thread it stalls every
//! queued request (measured: ~13 % of the writer's time, and all of the p99,
//! under a pipelined load). In WAL mode a `PASSIVE` checkpoint can run from
//! another connection while the writer keeps appending, so the bulk of the
//! copying runs here, on a thread and connection of its own:
//!
//! - the writer counts WAL frames (through the WAL hook); after a commit past
//!   [`CheckpointConfig::passive_pages`](crate::CheckpointConfig) it nudges this
//!   thread, which runs `PASSIVE` and records how far it got;
//! - a background checkpoint never quite catches up with a writer that keeps
//!   committing, and SQLite only restarts the log once *every* frame has been
//!   copied. So the first commit after each round asks for another (each
//!   copies what came during the one before, so they shrink) until little
//!   is left or they stop shrinking (`finish_now`); then the writer runs one
//!   short `PASSIVE` itself between two batches, and its next transaction
//!   starts the log over;
//! - that short `PASSIVE` stops every request in flight, and what it costs is
//!   mostly its two fsyncs: of the log since the last round, and of the
//!   database, which a background `PASSIVE` leaves unsynced unless it copied
//!   every frame. So this thread syncs the database after each round, and
//!   the writer's sync finds a few pages to write instead of a whole cycle's
//!   (measured with `strace`: the writer's database fsyncs went from 6-10 ms
//!   each, one a cycle, to about 1 ms; BENCHMARKS.md). The thread runs under
//!   `SCHED_BATCH`: a nudge wakes it without preempting the writer, which
//!   used to lose its core for a millisecond or more at each wake-up;
//! - when readers keep pinning old frames and the `-wal` file passes
//!   `max_wal_bytes`, the writer runs `TRUNCATE` between two batches, waiting
//!   up to `restart_wait` for them. It must be the writer: `TRUNCATE` needs the
//!   write lock, which a busy writer takes again the instant it is released,
//!   so any other connection would starve. Checkpoints asked for through
//!   [`Database::checkpoint`](crate::Database::checkpoint) run there too;
//! - SQLite refuses a checkpoint while another one runs (`SQLITE_BUSY`, without
//!   waiting), so every checkpoint of this process takes one mutex first;
//! - when idle this thread checkpoints what is left; at close it truncates;
//! - the read-mark keeper (`keeper`) follows: moved after every commit and
//!   around every checkpoint, set aside for the checkpoints that wait for
//!   readers, ticked by this thread every half `restart_wait` (10 to 50 ms;
//!   later when a checkpoint runs long), closed before the last checkpoint.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::db::keeper::Keeper;
use crate::db::open::Opener;
use crate::db::writer::{CheckpointMode, CheckpointReport, checkpoint};
use crate::error::{Error, Result};
use crate::stats::Counters;
use crate::sync::lock;

/// Messages to the checkpoint thread.
enum Kick {
    /// The WAL passed the passive threshold.
    Wal,
    /// Truncate the WAL and exit.
    Stop,
}

/// State shared by the checkpoint thread and the writer.
struct Progress {
    /// WAL frames known to be copied into the database by the last
    /// background round, with the log's generation they were counted in
    /// (`generation << 32 | frames`): a count of a log that has started over
    /// since says nothing of the new one.
    backfilled: AtomicU64,
    /// Bumped by the writer each time the log starts over.
    generation: AtomicU32,
    /// Whether a background checkpoint is running.
    busy: AtomicBool,
    /// Held by whoever runs a checkpoint in this process (before `keeper`).
    lock: Mutex<()>,
    keeper: Arc<Keeper>,
}

impl Progress {
    fn new(keeper: Arc<Keeper>) -> Progress {
        Progress {
            backfilled: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            lock: Mutex::new(()),
            keeper,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.lock)
    }

    /// Runs a checkpoint with the keeper out of its way, then moves the
    /// keeper to the newest snapshot (to slot 0 when every frame is copied,
    /// which lets the next write restart the log). Call with `lock` held.
    fn checkpoint(&self, conn: &Connection, mode: CheckpointMode) -> Result<CheckpointReport> {
        if mode == CheckpointMode::Passive {
            // PASSIVE waits for nobody. Moved first: a keeper on an older
            // snapshot limits what it may copy, and one on slot 0 (left
            // there by a complete checkpoint) stops it copying anything.
            self.keeper.refresh();
            let r = checkpoint(conn, mode);
            self.keeper.refresh();
            r
        } else {
            self.keeper.aside(|| checkpoint(conn, mode))
        }
    }

    /// Frames of the current log known to be copied.
    fn copied(&self) -> u32 {
        let v = self.backfilled.load(Ordering::Acquire);
        if (v >> 32) as u32 == self.generation.load(Ordering::Acquire) {
            v as u32
        } else {
            0
        }
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, ()>> {
        match self.lock.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// Handle to the checkpoint thread.
pub(crate) struct Checkpointer {
    tx: flume::Sender<Kick>,
    progress: Arc<Progress>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub(crate) fn start(opener: &Opener, counters: Arc<Counters>) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            &opener.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(opener.config.busy_timeout)?;
        // One pending nudge is enough: the checkpoint it starts covers every
        // commit made before it.
        let (tx, rx) = flume::bounded(1);
        let progress = Arc::new(Progress::new(Keeper::open(
            &opener.path,
            opener.config.read_mark_keeper,
        )));
        let worker = Worker {
            progress: progress.clone(),
            conn,
            restart_wait: opener.config.checkpoint.restart_wait,
            // How soon the keeper lets go of a file another process opened.
            tick: (opener.config.checkpoint.restart_wait / 2)
                .clamp(Duration::from_millis(10), Duration::from_millis(50)),
            idle: opener
                .config
                .health_check_interval
                .min(Duration::from_secs(1)),
            counters,
        };
        let thread = std::thread::Builder::new()
            .name("litebridge-checkpoint".into())
            .spawn(move || worker.run(&rx))
            .map_err(|e| {
                Error::io(
                    "cannot start the checkpoint thread",
                    "litebridge-checkpoint",
                    e,
                )
            })?;
        Ok(Checkpointer {
            tx,
            progress,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The read-mark keeper, for the readers to mark it used.
    pub(crate) fn keeper(&self) -> Arc<Keeper> {
        self.progress.keeper.clone()
    }

    /// What the writer uses to drive checkpoints.
    pub(crate) fn nudge(&self, opener: &Opener) -> Nudge {
        let c = &opener.config;
        Nudge {
            tx: self.tx.clone(),
            progress: self.progress.clone(),
            wal_path: opener.wal_path(),
            passive_pages: c.checkpoint.passive_pages,
            max_wal_bytes: c.checkpoint.max_wal_bytes,
            restart_wait: c.checkpoint.restart_wait,
            busy_timeout: c.busy_timeout,
            last_frames: Cell::new(0),
            asked: Cell::new(u32::MAX),
        }
    }

    /// Truncates the WAL and stops the thread. Call after the writer stopped.
    pub(crate) fn shutdown(&self) {
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = self.tx.send(Kick::Stop);
            let _ = t.join();
        }
    }
}

/// The writer's side of checkpointing (see the module documentation).
#[derive(Clone)]
pub(crate) struct Nudge {
    tx: flume::Sender<Kick>,
    progress: Arc<Progress>,
    wal_path: PathBuf,
    passive_pages: u32,
    max_wal_bytes: u64,
    restart_wait: Duration,
    busy_timeout: Duration,
    /// The log's size at the last commit (a smaller one: it started over).
    last_frames: Cell<u32>,
    /// What was left to copy when the last background round of this log was
    /// asked for.
    asked: Cell<u32>,
}

impl Nudge {
    /// Called by the writer after each commit, with the WAL's size in frames.
    pub(crate) fn after_commit(
        &self,
        conn: &Connection,
        wal_frames: &AtomicU32,
        counters: &Counters,
    ) {
        // First: a keeper left on the last snapshot would stop any
        // checkpoint short of this commit's frames.
        self.progress.keeper.refresh();
        let frames = wal_frames.load(Ordering::Relaxed);
        if frames < self.last_frames.replace(frames) {
            self.progress.generation.fetch_add(1, Ordering::AcqRel);
            self.asked.set(u32::MAX);
        }
        if frames < self.passive_pages {
            return;
        }
        let wal_bytes = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        if wal_bytes > self.max_wal_bytes {
            // Readers keep the log from restarting: wait for them, briefly.
            if let Some(_guard) = self.progress.try_lock() {
                let _ = conn.busy_timeout(self.restart_wait);
                let _ = self.run(conn, CheckpointMode::Truncate, wal_frames, counters);
                let _ = conn.busy_timeout(self.busy_timeout);
            }
            return;
        }
        if self.progress.busy.load(Ordering::Acquire) {
            return;
        }
        let left = frames.saturating_sub(self.progress.copied());
        if finish_now(left, self.asked.get(), frames, self.passive_pages) {
            // Finish the job here so the log restarts with the next batch.
            if let Some(_guard) = self.progress.try_lock() {
                let _ = self.run(conn, CheckpointMode::Passive, wal_frames, counters);
            }
        } else {
            self.asked.set(left);
            let _ = self.tx.try_send(Kick::Wal);
        }
    }

    /// Runs a checkpoint a caller asked for, on the writer's connection.
    pub(crate) fn on_demand(
        &self,
        conn: &Connection,
        mode: CheckpointMode,
        wal_frames: &AtomicU32,
        counters: &Counters,
    ) -> Result<CheckpointReport> {
        let _guard = self.progress.lock();
        self.run(conn, mode, wal_frames, counters)
    }

    fn run(
        &self,
        conn: &Connection,
        mode: CheckpointMode,
        wal_frames: &AtomicU32,
        counters: &Counters,
    ) -> Result<CheckpointReport> {
        let r = self.progress.checkpoint(conn, mode)?;
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        if !r.busy && r.log_pages == r.checkpointed_pages {
            wal_frames.store(0, Ordering::Relaxed);
        }
        Ok(r)
    }
}

/// Whether the writer copies what is left itself now (and fsyncs the log,
/// then the database) so that the log starts over, rather than ask the
/// background for another round. `left`: frames not known to be copied;
/// `asked`: what was left when the last round was asked for.
///
/// Each round copies what came during the one before, so rounds shrink
/// until their fixed cost (two fsyncs) stops them: the writer waits for
/// 1/64 of `passive_pages` left (62 frames at the default; at least 16, or
/// a quarter of a small setting), or, with a quarter left or less, for a
/// round that did not halve what was left. Past twice `passive_pages` the
/// background is not keeping up, and the writer takes up to a quarter so
/// that the log stays bounded.
fn finish_now(left: u32, asked: u32, frames: u32, passive_pages: u32) -> bool {
    let quarter = (passive_pages / 4).max(1);
    if frames >= passive_pages.saturating_mul(2) {
        return left <= quarter;
    }
    let few = (passive_pages / 64).max(quarter.min(16));
    left <= few || (left <= quarter && left.saturating_mul(2) > asked)
}

/// Puts the calling thread under `SCHED_BATCH`: the same share of the CPU
/// as any other thread, but its wake-ups do not preempt a running thread
/// (it may still take its turn at the next scheduler tick). Woken by a
/// commit, the checkpoint thread used to take the writer's core at once
/// (seen as 1-2 ms spent in the writer's nudge alone, every request in
/// flight waiting). Unlike a lower priority (`nice`), it keeps its share on
/// one core, so the log stays bounded (BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn batch_scheduling() {
    // SAFETY: sched_setscheduler on the calling thread (id 0) with a zeroed
    // sched_param: priority 0, the only one SCHED_BATCH takes. It only
    // changes this thread's scheduling policy.
    let rc = unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param)
    };
    if rc != 0 {
        tracing::debug!(
            "the checkpoint thread stays under the default scheduling: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn batch_scheduling() {}

struct Worker {
    progress: Arc<Progress>,
    conn: Connection,
    restart_wait: Duration,
    tick: Duration,
    idle: Duration,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(self, rx: &flume::Receiver<Kick>) {
        batch_scheduling();
        let mut dirty = false;
        let mut kicked = Instant::now();
        let mut ticked = Instant::now();
        loop {
            if ticked.elapsed() >= self.tick {
                // Every `tick`, however busy the log keeps this thread (a
                // checkpoint in between may delay it).
                ticked = Instant::now();
                self.progress.keeper.tick();
            }
            match rx.recv_timeout(self.tick.saturating_sub(ticked.elapsed())) {
                Ok(Kick::Wal) => {
                    self.progress.busy.store(true, Ordering::Release);
                    let guard = self.progress.lock();
                    // Counted in the log as it is now: if it starts over
                    // during the round, the count is of the old one.
                    let generation = self.progress.generation.load(Ordering::Acquire);
                    let round = self.checkpoint(CheckpointMode::Passive);
                    drop(guard);
                    if let Some(r) = round {
                        let done = u32::try_from(r.checkpointed_pages).unwrap_or(0);
                        // Outside the lock: an fsync needs none of SQLite's,
                        // and a checkpoint the writer runs need not wait.
                        if done > 0
                            && let Err(e) = crate::db::ffi::sync_database_file(&self.conn)
                        {
                            tracing::warn!("syncing the database file after a checkpoint: {e}");
                        }
                        self.progress.backfilled.store(
                            u64::from(generation) << 32 | u64::from(done),
                            Ordering::Release,
                        );
                    }
                    self.progress.busy.store(false, Ordering::Release);
                    dirty = true;
                    kicked = Instant::now();
                }
                Err(flume::RecvTimeoutError::Timeout) if dirty && kicked.elapsed() >= self.idle => {
                    // Idle: copy what is left so the next write starts a fresh log.
                    let _guard = self.progress.lock();
                    self.checkpoint(CheckpointMode::Passive);
                    dirty = false;
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Ok(Kick::Stop) | Err(flume::RecvTimeoutError::Disconnected) => {
                    self.truncate();
                    return;
                }
            }
        }
    }

    fn checkpoint(&self, mode: CheckpointMode) -> Option<CheckpointReport> {
        let r = self.progress.checkpoint(&self.conn, mode).ok()?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Some(r)
    }

    /// At close, after the writer stopped: waits briefly for readers on old
    /// snapshots, then empties the WAL file.
    fn truncate(&self) {
        let _guard = self.progress.lock();
        self.progress.keeper.close();
        let _ = self.conn.busy_timeout(self.restart_wait);
        self.checkpoint(CheckpointMode::Truncate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_finishes_a_cycle_when_little_is_left_or_rounds_stop_shrinking() {
        // The default: 62 frames left, first round of a cycle.
        assert!(finish_now(62, u32::MAX, 4100, 4000));
        assert!(!finish_now(63, u32::MAX, 4100, 4000));
        // Rounds halving what is left: another one.
        assert!(!finish_now(300, 800, 4500, 4000));
        // A round that did not halve it (its fsyncs cost what it saves).
        assert!(finish_now(300, 500, 4500, 4000));
        // ... but never more than a quarter while the log is short.
        assert!(!finish_now(1001, 1100, 4500, 4000));
        // Past twice the setting, a quarter, shrinking or not.
        assert!(finish_now(1000, u32::MAX, 8000, 4000));
        assert!(!finish_now(1001, u32::MAX, 8000, 4000));
        // Small settings keep a few commits' worth.
        assert!(finish_now(16, u32::MAX, 64, 64));
        assert!(!finish_now(17, u32::MAX, 64, 64));
        assert!(finish_now(2, u32::MAX, 8, 8));
        assert!(finish_now(1, u32::MAX, 1, 1));
        assert!(!finish_now(2, u32::MAX, 1, 1));
    }

    #[test]
    fn a_count_of_a_log_that_started_over_counts_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Progress::new(Keeper::open(&dir.path().join("k.db"), false));
        progress.backfilled.store(3000, Ordering::Release);
        assert_eq!(progress.copied(), 3000);
        progress.generation.fetch_add(1, Ordering::AcqRel);
        assert_eq!(progress.copied(), 0);
        progress.backfilled.store(1 << 32 | 40, Ordering::Release);
        assert_eq!(progress.copied(), 40);
    }

    /// A log that started over is copied by the background again, not by
    /// the writer on the strength of the old log's count (which would make
    /// the writer copy a whole cycle itself: the stall this module avoids).
    #[test]
    fn after_the_log_starts_over_the_writer_asks_for_a_round_instead_of_copying_a_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(x);")
            .unwrap();
        let (tx, rx) = flume::bounded(1);
        let progress = Arc::new(Progress::new(Keeper::open(&path, false)));
        let nudge = Nudge {
            tx,
            progress: progress.clone(),
            wal_path: dir.path().join("t.db-wal"),
            passive_pages: 4000,
            max_wal_bytes: u64::MAX,
            restart_wait: Duration::from_millis(10),
            busy_timeout: Duration::from_millis(10),
            last_frames: Cell::new(0),
            asked: Cell::new(u32::MAX),
        };
        let counters = Counters::default();
        let frames = AtomicU32::new(0);
        let commit = |n: u32| {
            frames.store(n, Ordering::Relaxed);
            nudge.after_commit(&conn, &frames, &counters);
        };
        // A cycle the background copied to its end (5,000 frames)...
        commit(5000);
        assert!(matches!(rx.try_recv(), Ok(Kick::Wal)));
        let generation = progress.generation.load(Ordering::Acquire);
        progress
            .backfilled
            .store(u64::from(generation) << 32 | 5000, Ordering::Release);
        // ... then the log started over, and grew to the threshold again.
        commit(10);
        commit(4000);
        assert!(
            matches!(rx.try_recv(), Ok(Kick::Wal)),
            "a new round asked for"
        );
        assert_eq!(
            counters.checkpoints.load(Ordering::Relaxed),
            0,
            "the writer copied nothing itself"
        );
    }
}
