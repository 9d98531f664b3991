//! The checkpointer: keeps the WAL bounded without ever stalling a write.
//!
//! A checkpoint copies WAL frames back into the database file and fsyncs it,
//! milliseconds of blocking I/O. Run on the writer thread, it stalls every
//! queued request (and measured as ~13 % of the writer's time and the whole
//! p99 under a pipelined load). In WAL mode a checkpoint can run from another
//! connection while the writer keeps appending, so it runs here, on a thread
//! and connection of its own:
//!
//! - the writer counts WAL pages (through the WAL hook) and, after a commit
//!   past [`CheckpointConfig::passive_pages`](crate::CheckpointConfig), nudges
//!   this thread, which runs a `PASSIVE` checkpoint (waits for nobody) and
//!   records how far it got;
//! - a background checkpoint never quite catches up with a writer that keeps
//!   committing, and SQLite only restarts the log when *every* frame has been
//!   copied. So once this thread has copied all but a few frames, the writer
//!   runs one short `PASSIVE` checkpoint itself between two batches (a few
//!   pages and one fsync); its next transaction then starts the log over;
//! - when readers keep pinning old frames and the `-wal` file grows past
//!   `max_wal_bytes`, it runs `TRUNCATE`, which waits up to `restart_wait` for
//!   them and lets the log start over;
//! - when idle it checkpoints what is left; at close it truncates the WAL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::db::open::Opener;
use crate::db::writer::{CheckpointMode, CheckpointReport, checkpoint};
use crate::error::{Error, Result};
use crate::stats::Counters;

/// Messages to the checkpointer.
enum Kick {
    /// The WAL passed the passive threshold.
    Wal,
    /// Truncate the WAL and exit.
    Stop,
}

/// Handle to the checkpointer thread.
pub(crate) struct Checkpointer {
    tx: flume::Sender<Kick>,
    progress: Arc<Progress>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Progress shared between the checkpointer and the writer.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// WAL frames known to be copied into the database by the last checkpoint.
    backfilled: AtomicU32,
    /// Whether a background checkpoint is running.
    busy: AtomicBool,
}

/// What the writer holds to drive checkpoints.
#[derive(Clone)]
pub(crate) struct Nudge {
    tx: flume::Sender<Kick>,
    progress: Arc<Progress>,
}

impl Nudge {
    /// Called by the writer after a commit, with the WAL's size in frames.
    pub(crate) fn after_commit(
        &self,
        conn: &Connection,
        wal_frames: &AtomicU32,
        passive_pages: u32,
        counters: &Counters,
    ) {
        let frames = wal_frames.load(Ordering::Relaxed);
        if frames < passive_pages || self.progress.busy.load(Ordering::Acquire) {
            return;
        }
        let left = frames.saturating_sub(self.progress.backfilled.load(Ordering::Acquire));
        if left <= passive_pages / 4 {
            // Finish the job here so the log restarts with the next batch.
            if let Ok(r) = checkpoint(conn, CheckpointMode::Passive) {
                counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                if r.log_pages == r.checkpointed_pages {
                    wal_frames.store(0, Ordering::Relaxed);
                    self.progress.backfilled.store(0, Ordering::Release);
                }
            }
        } else {
            // One pending nudge is enough: the checkpoint it starts covers
            // every commit made before it.
            let _ = self.tx.try_send(Kick::Wal);
        }
    }
}

impl Checkpointer {
    pub(crate) fn start(opener: &Opener, counters: Arc<Counters>) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            &opener.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let (tx, rx) = flume::bounded(1);
        let progress = Arc::new(Progress::default());
        let worker = Worker {
            progress: progress.clone(),
            conn,
            wal_path: opener.wal_path(),
            max_wal_bytes: opener.config.checkpoint.max_wal_bytes,
            restart_wait: opener.config.checkpoint.restart_wait,
            busy_timeout: opener.config.busy_timeout,
            idle: opener
                .config
                .health_check_interval
                .min(Duration::from_secs(1)),
            counters,
        };
        worker.conn.busy_timeout(worker.busy_timeout)?;
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
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn nudge(&self) -> Nudge {
        Nudge {
            tx: self.tx.clone(),
            progress: self.progress.clone(),
        }
    }

    /// Truncates the WAL and stops the thread. Call after the writer stopped.
    pub(crate) fn shutdown(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = self.tx.send(Kick::Stop);
            let _ = t.join();
        }
    }
}

struct Worker {
    progress: Arc<Progress>,
    conn: Connection,
    wal_path: PathBuf,
    max_wal_bytes: u64,
    restart_wait: Duration,
    busy_timeout: Duration,
    idle: Duration,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(self, rx: &flume::Receiver<Kick>) {
        let mut dirty = false;
        loop {
            match rx.recv_timeout(self.idle) {
                Ok(Kick::Wal) => {
                    self.progress.busy.store(true, Ordering::Release);
                    if let Some(r) = self.checkpoint(CheckpointMode::Passive) {
                        let done = u32::try_from(r.checkpointed_pages).unwrap_or(0);
                        self.progress.backfilled.store(done, Ordering::Release);
                    }
                    if self.wal_bytes() > self.max_wal_bytes {
                        self.truncate();
                    }
                    self.progress.busy.store(false, Ordering::Release);
                    dirty = true;
                }
                Err(flume::RecvTimeoutError::Timeout) if dirty => {
                    // Idle: finish the job so the next writes start a fresh log.
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

    fn wal_bytes(&self) -> u64 {
        std::fs::metadata(&self.wal_path).map_or(0, |m| m.len())
    }

    fn checkpoint(&self, mode: CheckpointMode) -> Option<CheckpointReport> {
        let r = checkpoint(&self.conn, mode).ok()?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Some(r)
    }

    /// Waits (briefly) for readers on old snapshots and the writer, then
    /// empties the WAL file.
    fn truncate(&self) {
        let _ = self.conn.busy_timeout(self.restart_wait);
        if self
            .checkpoint(CheckpointMode::Truncate)
            .is_some_and(|r| !r.busy)
        {
            self.progress.backfilled.store(0, Ordering::Release);
        }
        let _ = self.conn.busy_timeout(self.busy_timeout);
    }
}
