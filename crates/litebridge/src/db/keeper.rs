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
//! What it costs is what any open read transaction costs, which is why it
//! holds one only while it is of use and harms nobody:
//!
//! - **Only while this `Database` is alone on the file.** An open read
//!   transaction keeps *other* writers' logs from restarting and their
//!   `TRUNCATE` from finishing, and this process cannot move it when they
//!   commit. So the keeper holds nothing while another `Database` of this
//!   process has the file open (counted whether its keeper is on or off; a
//!   new one makes the others let go at once) or another process has (asked
//!   of the kernel, see `shm_peers`: every process with a connection that
//!   has read the file holds a lock on one byte of its `-shm` until its last
//!   such connection closes). Where that cannot be told, it never holds. It
//!   asks when it opens and at each tick of the checkpoint thread that
//!   follows reads ([`Keeper::tick`], every half `restart_wait` up to 50 ms,
//!   later when a checkpoint runs long), so a process that opens the file
//!   later waits at most about a tick for it.
//!   Connections of this process that are not litebridge's cannot be told
//!   from its own: `db.read_mark_keeper = false` turns the keeper off for
//!   an application that writes the file through its own connections.
//! - **Only while reads use it.** A read wakes it ([`Keeper::used`]); a tick
//!   with no read since the last one ends its transaction, and then only
//!   the next tick (which asks again whether it is alone) lets reads wake it.
//! - **It follows every commit.** The writer calls [`Keeper::refresh`] after
//!   each batch, so the keeper never pins frames a checkpoint wants to copy
//!   (a checkpoint copies up to the oldest reader's mark, and this one's is
//!   the newest). Checkpoints move it before they start, too: one left on
//!   slot 0 by a complete checkpoint would stop the next from copying.
//! - **It lets the log restart.** SQLite starts the WAL over only when no
//!   reader holds a slot other than 0, and a reader takes slot 0 only once
//!   every frame is copied. Whoever runs a checkpoint moves the keeper right
//!   after, so once the log is fully copied the keeper sits on slot 0 and the
//!   next write restarts the log.
//! - **It steps aside for `FULL`, `RESTART` and `TRUNCATE`,** which wait for
//!   readers: [`Keeper::aside`] ends its transaction for their length.
//! - **It does not wait for locks.** Its busy timeout is zero: if it cannot
//!   start a transaction, it stays without one until the next move; reads
//!   only lose the shortcut.
//! - Once open, every change of what it holds happens under its mutex; a
//!   connection that cannot end its transaction is dropped and opened again
//!   at a tick; it is closed for good before the checkpoint thread's last
//!   `TRUNCATE`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::db::shm_peers::{FileId, Peers, file_id};
use crate::sync::lock;

/// See the module documentation.
pub(crate) struct Keeper {
    /// The database file, links followed (SQLite names its `-shm` after it).
    path: PathBuf,
    shm: PathBuf,
    /// The file's identity when opened, as counted in [`OPEN`].
    file: Option<FileId>,
    /// `db.read_mark_keeper`: a keeper turned off never holds, but counts.
    enabled: bool,
    state: Mutex<State>,
    /// Whether the keeper should hold a transaction (it holds one, unless it
    /// could not start it). Changed under `state`; read without it as a hint.
    active: AtomicBool,
    /// A read ran since the last tick.
    used: AtomicBool,
    /// Somebody else has the file open, or may have. Changed under `state`.
    barred: AtomicBool,
}

struct State {
    conn: Option<Connection>,
    closed: bool,
    peers: Peers,
}

/// The open keepers of this process, per file.
static OPEN: Mutex<Option<HashMap<FileId, Vec<Weak<Keeper>>>>> = Mutex::new(None);

impl Keeper {
    /// A keeper on the database at `path`, holding nothing until a read
    /// uses it (and never when not `enabled`: it then has no connection, but
    /// still counts as a `Database` on the file). Other keepers of this
    /// process on the same file let go at once.
    pub(crate) fn open(path: &Path, enabled: bool) -> Arc<Keeper> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut shm = path.clone().into_os_string();
        shm.push("-shm");
        let keeper = Arc::new(Keeper {
            file: file_id(&path),
            enabled,
            shm: PathBuf::from(shm),
            state: Mutex::new(State {
                conn: enabled.then(|| connect(&path)).flatten(),
                closed: false,
                peers: Peers::default(),
            }),
            path,
            active: AtomicBool::new(false),
            used: AtomicBool::new(false),
            barred: AtomicBool::new(true),
        });
        let others: Vec<Arc<Keeper>> = match keeper.file {
            Some(id) => {
                let mut open = lock(&OPEN);
                let list = open.get_or_insert_with(HashMap::new).entry(id).or_default();
                list.retain(|k| k.strong_count() > 0);
                list.push(Arc::downgrade(&keeper));
                list.iter().filter_map(Weak::upgrade).collect()
            }
            None => Vec::new(),
        };
        for other in others.iter().filter(|k| !Arc::ptr_eq(k, &keeper)) {
            other.bar();
        }
        if enabled {
            let mut state = keeper.state();
            let alone = keeper.alone(&mut state);
            keeper.barred.store(!alone, Ordering::Relaxed);
        }
        keeper
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
        // A busy lock: whoever holds it is moving the keeper already.
        let mut state = match self.state.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if state.closed
            || self.active.load(Ordering::Relaxed)
            || self.barred.load(Ordering::Relaxed)
        {
            return;
        }
        // Set even if the start fails: the next move tries again, not every read.
        self.active.store(true, Ordering::Relaxed);
        state.restart();
    }

    /// Lets go until a tick finds it alone again.
    fn bar(&self) {
        let mut state = self.state();
        self.barred.store(true, Ordering::Relaxed);
        self.active.store(false, Ordering::Relaxed);
        state.end();
    }

    /// Moves the keeper's read transaction to the newest snapshot, if it
    /// holds one. The writer calls it after each batch.
    pub(crate) fn refresh(&self) {
        if self.active.load(Ordering::Relaxed) {
            let mut state = self.state();
            // A tick may have let go meanwhile.
            if self.active.load(Ordering::Relaxed) {
                state.restart();
            }
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

    /// The checkpoint thread's tick (see the module documentation). Asks
    /// whether the keeper is alone only when reads used it since the last.
    pub(crate) fn tick(&self) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        let hold = self.used.swap(false, Ordering::Relaxed) && self.enabled && {
            if state.conn.is_none() {
                state.conn = connect(&self.path);
            }
            self.alone(&mut state)
        };
        // Unused, it may not wake before a tick has asked.
        self.barred.store(!hold, Ordering::Relaxed);
        self.active.store(hold, Ordering::Relaxed);
        if hold {
            state.restart();
        } else {
            state.end();
        }
    }

    /// Whether no other `Database` of this process and no other process has
    /// the file open, and it is still the file this keeper opened (false
    /// when any of that cannot be told).
    fn alone(&self, state: &mut State) -> bool {
        let Some(id) = self.file else { return false };
        if file_id(&self.path) != Some(id) {
            return false;
        }
        let ours = lock(&OPEN)
            .as_ref()
            .and_then(|m| m.get(&id))
            .map_or(0, |list| {
                list.iter().filter(|k| k.strong_count() > 0).count()
            });
        ours == 1 && !state.peers.another_process_has_open(&self.shm)
    }

    /// Ends the transaction and closes the connection for good.
    pub(crate) fn close(&self) {
        {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.closed = true;
            self.barred.store(true, Ordering::Relaxed);
            self.active.store(false, Ordering::Relaxed);
            state.end();
            state.conn = None;
        }
        // Not under `state`: the order is always a state, then the registry.
        if let Some(id) = self.file
            && let Some(open) = lock(&OPEN).as_mut()
            && let Some(list) = open.get_mut(&id)
        {
            list.retain(|k| k.strong_count() > 0 && !std::ptr::eq(k.as_ptr(), self));
            if list.is_empty() {
                open.remove(&id);
            }
        }
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

impl Drop for Keeper {
    fn drop(&mut self) {
        self.close();
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
    /// `schema_version` reads the header only, never the schema.
    fn restart(&mut self) {
        self.end();
        let Some(conn) = &self.conn else { return };
        let started = conn.prepare_cached("BEGIN").and_then(|mut s| {
            s.execute([])?;
            conn.prepare_cached("PRAGMA schema_version")?
                .query_row([], |r| r.get::<_, i64>(0))
        });
        if started.is_err() {
            self.end();
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
    #[cfg(unix)]
    use crate::db::shm_peers::tests::hold_from_another_process;

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

    /// A database in WAL mode and its writer.
    fn database() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let writer = open(&path);
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        (dir, path, writer)
    }

    /// ... and a keeper a read has woken.
    fn setup() -> (tempfile::TempDir, Connection, Arc<Keeper>) {
        let (dir, path, writer) = database();
        let keeper = Keeper::open(&path, true);
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
            keeper.refresh();
        }
        // Copies every frame (the keeper's mark is the newest)...
        let (log, copied) = passive(&writer);
        assert!(log > 20 && copied == log);
        // ... and moved now, the keeper sits on slot 0: the log restarts.
        keeper.refresh();
        write(&writer, 100);
        keeper.refresh();
        assert!(passive(&writer).0 < 5, "the log did not restart");
    }

    #[test]
    fn a_keeper_on_slot_0_is_moved_before_a_passive_checkpoint_or_it_copies_nothing() {
        let (_dir, writer, keeper) = setup();
        write(&writer, 1);
        keeper.refresh();
        passive(&writer);
        keeper.refresh();
        // Frames the keeper has not been moved past.
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
        keeper.refresh();
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
        keeper.refresh();
        // ... and set aside it does not.
        assert_eq!(keeper.aside(truncate), 0);
        assert!(keeper.holding());
    }

    #[test]
    fn a_keeper_no_read_used_since_the_last_tick_holds_nothing() {
        let (_dir, writer, keeper) = setup();
        keeper.tick();
        assert!(keeper.holding(), "used since the last tick");
        keeper.tick();
        assert!(!keeper.holding());
        // The writer's commits do not wake it; a read does, from the next
        // tick on (which asks first whether it is still alone).
        write(&writer, 1);
        keeper.refresh();
        assert!(!keeper.holding());
        keeper.used();
        assert!(!keeper.holding());
        keeper.tick();
        assert!(keeper.holding());
    }

    #[test]
    fn two_keepers_of_one_process_on_a_file_hold_nothing() {
        let (_dir, path, _writer) = database();
        let first = Keeper::open(&path, true);
        first.used();
        assert!(first.holding());
        let second = Keeper::open(&path, true);
        assert!(!first.holding(), "the first one did not let go at once");
        second.used();
        assert!(!second.holding());
        first.tick();
        first.used();
        assert!(!first.holding(), "the first one did not let go at its tick");
        // Alone again once the other one closes.
        drop(second);
        first.tick();
        first.used();
        assert!(first.holding());
    }

    #[cfg(unix)]
    #[test]
    fn a_keeper_holds_nothing_while_another_process_has_the_file_open() {
        let (_dir, path, _writer) = database();
        let keeper = Keeper::open(&path, true);
        keeper.used();
        assert!(keeper.holding());
        // Another process: a connection that reads once and waits for stdin.
        let Some(mut other) = hold_from_another_process(&path) else {
            return;
        };
        keeper.tick();
        assert!(!keeper.holding());
        keeper.used();
        assert!(!keeper.holding(), "a read woke it while the other was open");
        drop(other.stdin.take());
        other.wait().unwrap();
        keeper.tick();
        keeper.used();
        assert!(keeper.holding(), "alone again, it did not hold");
    }

    #[test]
    fn a_keeper_turned_off_never_holds() {
        let (_dir, path, _writer) = database();
        let keeper = Keeper::open(&path, false);
        keeper.used();
        keeper.tick();
        keeper.used();
        assert!(!keeper.holding());
        // But it counts: another one on the file is not alone (its
        // Database's writer would find the log held up).
        let on = Keeper::open(&path, true);
        on.used();
        assert!(!on.holding());
        on.tick();
        assert!(!on.holding());
        drop(keeper);
        on.tick();
        on.used();
        on.tick();
        assert!(on.holding());
    }

    #[test]
    fn a_closed_keeper_stays_closed() {
        let (_dir, _writer, keeper) = setup();
        keeper.close();
        assert!(!keeper.holding());
        keeper.used();
        keeper.tick();
        keeper.used();
        assert!(!keeper.holding());
    }
}
