//! The read-mark keeper: one idle read transaction that makes every point
//! read cheaper.
//!
//! A WAL read transaction takes a shared lock on one of the `-shm` file's
//! read-mark slots, and gives it back when it ends. SQLite's unix VFS counts
//! those locks per process and only asks the kernel (`fcntl`) when the count
//! of its slot goes from 0 to 1 or back. With two readers taking turns, that
//! is two system calls per read: a quarter of a point read's time (measured
//! with `perf` on the `read-point` bench; BENCHMARKS.md has the figures with
//! and without).
//!
//! So this connection keeps a read transaction open on the newest snapshot:
//! a reader that starts on the same snapshot finds that slot already held in
//! this process and takes its lock without a system call. It is not a
//! snapshot anyone reads; correctness is SQLite's, as with any other reader.
//! What it costs is what any open read transaction costs, so it is kept
//! short of harm:
//!
//! - **It follows every commit.** The writer calls [`Keeper::after_commit`]
//!   after each batch, so the keeper never pins frames a checkpoint wants to
//!   copy (a checkpoint copies up to the oldest reader's mark, and this one's
//!   is the newest). Checkpoints move it before they start, too.
//! - **It lets the log restart.** SQLite starts the WAL over only when no
//!   reader holds a slot other than 0, and a reader takes slot 0 only once
//!   every frame is copied. Whoever runs a checkpoint moves the keeper right
//!   after, so once the log is fully copied the keeper sits on slot 0 and the
//!   next write restarts the log.
//! - **It steps aside for `FULL`, `RESTART` and `TRUNCATE`,** which wait for
//!   readers: [`Keeper::aside`] ends its transaction for their length.
//! - **It holds only while it is of use.** Reads mark it used; the checkpoint
//!   thread's tick ([`Keeper::tick`], at least once a second) ends its
//!   transaction when no read ran since the last tick. An idle process (a
//!   `litebridge stdio` beside a server, a second `Database` on the file)
//!   holds nothing, so it cannot keep another one's log from restarting.
//! - **It yields to others.** When the tick sees that another process
//!   committed (the snapshot moved while this process's writer did not
//!   commit), or the `-wal` file is past `max_wal_bytes`, the keeper holds
//!   nothing until a tick sees neither: another process's checkpoints and
//!   `TRUNCATE` are never held up by it for more than a tick.
//! - **It does not wait for locks.** Its busy timeout is zero: if it cannot
//!   start a transaction (WAL recovery by another process, say), it stays
//!   without one until the next move; reads only lose the shortcut. (Its
//!   mutex is held across a checkpoint set aside for, which the checkpoint
//!   thread's tick may wait for.)
//! - A connection that cannot open, or fails to end its transaction, is
//!   dropped and opened again at the next tick; closed for good before the
//!   checkpoint thread's last `TRUNCATE`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::sync::lock;

/// See the module documentation.
pub(crate) struct Keeper {
    path: PathBuf,
    state: Mutex<State>,
    /// Whether the keeper should hold a transaction (it holds one unless it
    /// could not start it).
    active: AtomicBool,
    /// A read ran since the last tick.
    used: AtomicBool,
    /// The last tick saw another process commit, or the WAL past its bound.
    barred: AtomicBool,
    /// This process's writer committed since the last tick.
    committed: AtomicBool,
}

struct State {
    conn: Option<Connection>,
    closed: bool,
    /// `PRAGMA data_version` at the last start: it changes when any other
    /// connection commits.
    data_version: Option<i64>,
}

impl Keeper {
    /// A keeper on the database at `path`, holding nothing until a read
    /// uses it.
    pub(crate) fn open(path: &Path) -> Keeper {
        Keeper {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                conn: connect(path),
                closed: false,
                data_version: None,
            }),
            active: AtomicBool::new(false),
            used: AtomicBool::new(false),
            barred: AtomicBool::new(false),
            committed: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Called by a reader for each read: marks the keeper used, and starts
    /// its transaction when it holds none and may.
    pub(crate) fn used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        if !self.active.load(Ordering::Relaxed) && !self.barred.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        // Whoever holds the lock is moving the keeper already.
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        if self.active.load(Ordering::Relaxed) || self.barred.load(Ordering::Relaxed) {
            return;
        }
        // Set even if the start fails: the next move tries again, not every read.
        self.active.store(true, Ordering::Relaxed);
        state.restart();
    }

    /// Called by the writer after each commit. `wal_past_bound`: the WAL is
    /// past `max_wal_bytes` (the writer is about to truncate it).
    pub(crate) fn after_commit(&self, wal_past_bound: bool) {
        self.committed.store(true, Ordering::Relaxed);
        if wal_past_bound {
            self.barred.store(true, Ordering::Relaxed);
            self.active.store(false, Ordering::Relaxed);
            self.state().end();
        } else {
            self.refresh();
        }
    }

    /// Moves the keeper's read transaction to the newest snapshot, if it
    /// holds one.
    pub(crate) fn refresh(&self) {
        if self.active.load(Ordering::Relaxed) {
            self.state().restart();
        }
    }

    /// Runs `f` with the keeper's transaction ended, then starts it again on
    /// the newest snapshot. For checkpoints that wait for readers.
    pub(crate) fn aside<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut state = self.state();
        state.end();
        let out = f();
        if self.active.load(Ordering::Relaxed) {
            state.restart();
        }
        out
    }

    /// The checkpoint thread's tick (see the module documentation).
    /// `wal_past_bound`: the `-wal` file is past `max_wal_bytes`.
    pub(crate) fn tick(&self, wal_past_bound: bool) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        if state.conn.is_none() {
            state.conn = connect(&self.path);
        }
        let before = state.data_version;
        state.restart();
        let own = self.committed.swap(false, Ordering::Relaxed);
        let foreign = !own && before.is_some() && state.data_version != before;
        let barred = foreign || wal_past_bound;
        self.barred.store(barred, Ordering::Relaxed);
        let hold = self.used.swap(false, Ordering::Relaxed) && !barred;
        self.active.store(hold, Ordering::Relaxed);
        if !hold {
            state.end();
        }
    }

    /// Ends the transaction and closes the connection for good.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        self.active.store(false, Ordering::Relaxed);
        state.end();
        state.conn = None;
    }

    /// Whether the keeper holds a read transaction now (for tests).
    #[cfg(test)]
    pub(crate) fn holding(&self) -> bool {
        self.state()
            .conn
            .as_ref()
            .is_some_and(|c| !c.is_autocommit())
    }
}

fn connect(path: &Path) -> Option<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        c.busy_timeout(Duration::ZERO)?;
        // It reads one page (the header) per start.
        c.execute_batch("PRAGMA cache_size = 1")?;
        Ok(c)
    });
    match conn {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!("the read-mark keeper could not open: {e}");
            None
        }
    }
}

impl State {
    /// Ends the transaction held, if any, and starts one on the newest
    /// snapshot. `BEGIN` starts none by itself, the first read does;
    /// `data_version` reads the header only, never the schema.
    fn restart(&mut self) {
        self.end();
        let Some(conn) = &self.conn else { return };
        let started = conn.prepare_cached("BEGIN").and_then(|mut s| {
            s.execute([])?;
            conn.prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get::<_, i64>(0))
        });
        match started {
            Ok(v) => self.data_version = Some(v),
            Err(_) => self.end(),
        }
    }

    /// Ends the transaction held, if any. A connection that cannot is
    /// dropped (it would pin its snapshot for good).
    fn end(&mut self) {
        let Some(conn) = &self.conn else { return };
        if conn.is_autocommit() {
            return;
        }
        let ended = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .or_else(|_| conn.execute_batch("ROLLBACK").map(|()| 0));
        if ended.is_err() || !conn.is_autocommit() {
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap()
    }

    fn write(conn: &Connection, n: i64) {
        conn.execute("INSERT INTO t VALUES (?1, randomblob(2000))", [n])
            .unwrap();
    }

    fn open(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.busy_timeout(Duration::ZERO).unwrap();
        c
    }

    /// A database in WAL mode, its writer, and a keeper a read has woken.
    fn setup() -> (tempfile::TempDir, Connection, Keeper) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let writer = open(&path);
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        let keeper = Keeper::open(&path);
        assert!(!keeper.holding(), "a keeper nobody used holds nothing");
        keeper.used();
        assert!(keeper.holding());
        (dir, writer, keeper)
    }

    #[test]
    fn moved_after_a_complete_checkpoint_the_keeper_lets_the_log_restart() {
        let (_dir, writer, keeper) = setup();
        for n in 0..20 {
            write(&writer, n);
            keeper.after_commit(false);
        }
        // Copies every frame (the keeper's mark is the newest)...
        let (log, copied) = passive(&writer);
        assert!(log > 20 && copied == log);
        // ... and moved now, the keeper sits on slot 0: the log restarts.
        keeper.refresh();
        write(&writer, 100);
        keeper.after_commit(false);
        assert!(passive(&writer).0 < 5, "the log did not restart");
    }

    #[test]
    fn a_keeper_on_slot_0_is_moved_before_a_passive_checkpoint_or_it_copies_nothing() {
        let (_dir, writer, keeper) = setup();
        write(&writer, 1);
        keeper.after_commit(false);
        passive(&writer);
        keeper.refresh();
        // Frames the keeper has not seen (another process's, say).
        for n in 2..10 {
            write(&writer, n);
        }
        assert_eq!(
            passive(&writer).1,
            0,
            "SQLite's rule changed: revisit the keeper"
        );
        keeper.refresh();
        let (log, copied) = passive(&writer);
        assert!(log > 0 && copied == log);
    }

    #[test]
    fn truncate_waits_for_no_keeper_set_aside() {
        let (_dir, writer, keeper) = setup();
        write(&writer, 1);
        keeper.after_commit(false);
        let truncate = || {
            writer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
        };
        // A keeper on a snapshot in the log holds TRUNCATE off...
        assert_eq!(truncate(), 1, "TRUNCATE was not busy");
        write(&writer, 2);
        keeper.after_commit(false);
        // ... and set aside it does not.
        assert_eq!(keeper.aside(truncate), 0);
        assert!(keeper.holding());
    }

    #[test]
    fn a_keeper_no_read_used_since_the_last_tick_holds_nothing() {
        let (_dir, writer, keeper) = setup();
        keeper.tick(false);
        assert!(keeper.holding(), "used since the last tick");
        keeper.tick(false);
        assert!(!keeper.holding());
        // The writer's commits do not wake it; a read does.
        write(&writer, 1);
        keeper.after_commit(false);
        assert!(!keeper.holding());
        keeper.used();
        assert!(keeper.holding());
    }

    #[test]
    fn a_keeper_yields_to_another_process_writing_until_it_stops() {
        let (_dir, writer, keeper) = setup();
        keeper.tick(false);
        // Commits this process's writer did not report: someone else's.
        write(&writer, 1);
        keeper.used();
        keeper.tick(false);
        assert!(!keeper.holding());
        keeper.used();
        assert!(!keeper.holding(), "a read woke a barred keeper");
        // A tick with no foreign commit lifts the bar.
        keeper.tick(false);
        keeper.used();
        assert!(keeper.holding());
        // This process's own commits are not foreign.
        write(&writer, 2);
        keeper.after_commit(false);
        keeper.tick(false);
        assert!(keeper.holding());
    }

    #[test]
    fn a_keeper_holds_nothing_while_the_log_is_past_its_bound() {
        let (_dir, writer, keeper) = setup();
        write(&writer, 1);
        keeper.after_commit(true);
        assert!(!keeper.holding());
        keeper.used();
        assert!(!keeper.holding());
        keeper.tick(true);
        keeper.used();
        assert!(!keeper.holding());
        keeper.tick(false);
        keeper.used();
        assert!(keeper.holding());
    }

    #[test]
    fn a_closed_keeper_stays_closed() {
        let (_dir, _writer, keeper) = setup();
        keeper.close();
        assert!(!keeper.holding());
        keeper.used();
        keeper.tick(false);
        keeper.used();
        assert!(!keeper.holding());
    }
}
