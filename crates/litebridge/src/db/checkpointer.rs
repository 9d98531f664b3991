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
//!   copied. So when this thread has copied all but a few frames, the writer
//!   runs one short `PASSIVE` itself between two batches; its next
//!   transaction then starts the log over;
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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
    /// WAL frames known to be copied into the database by the last checkpoint.
    backfilled: AtomicU32,
    /// Whether a background checkpoint is running.
    busy: AtomicBool,
    /// Held by whoever runs a checkpoint in this process (before `keeper`).
    lock: Mutex<()>,
    keeper: Arc<Keeper>,
}

impl Progress {
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
        let progress = Arc::new(Progress {
            backfilled: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            lock: Mutex::new(()),
            keeper: Keeper::open(&opener.path, opener.config.read_mark_keeper),
        });
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
        let left = frames.saturating_sub(self.progress.backfilled.load(Ordering::Acquire));
        if left <= self.passive_pages / 4 {
            // Finish the job here so the log restarts with the next batch.
            if let Some(_guard) = self.progress.try_lock() {
                let _ = self.run(conn, CheckpointMode::Passive, wal_frames, counters);
            }
        } else {
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
            self.progress.backfilled.store(0, Ordering::Release);
        }
        Ok(r)
    }
}

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
                    if let Some(r) = self.checkpoint(CheckpointMode::Passive) {
                        let done = u32::try_from(r.checkpointed_pages).unwrap_or(0);
                        self.progress.backfilled.store(done, Ordering::Release);
                    }
                    drop(guard);
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
