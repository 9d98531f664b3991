//! The read-mark keeper: one idle read transaction that makes every point
//! read cheaper.
//!
//! A WAL read transaction takes a shared lock on one of the `-shm` file's
//! read-mark slots, and gives it back when it ends. SQLite's unix VFS counts
//! those locks per process and only asks the kernel (`fcntl`) when the count
//! of its slot goes from 0 to 1 or back. With two readers taking turns, that
//! is two system calls per read: a quarter of a point read's time (measured
//! with `perf` on the `read-point` bench; the ratio to raw threads went from
//! 0.61-0.70 to 0.95-0.97 on one core with a read transaction left open
//! beside the readers).
//!
//! So this connection keeps a read transaction open on the newest snapshot:
//! a reader that starts on the same snapshot finds that slot already held in
//! this process and takes its lock without a system call. It is not a
//! snapshot anyone reads; correctness is SQLite's, as with any other reader.
//! What it costs is what any open read transaction costs, so it is kept
//! short of harm:
//!
//! - **It follows every commit.** The writer calls [`Keeper::refresh`] after
//!   each batch, so the keeper never pins frames a checkpoint wants to copy
//!   (a checkpoint copies up to the oldest reader's mark, and this one's is
//!   the newest).
//! - **It lets the log restart.** SQLite starts the WAL over only when no
//!   reader holds a slot other than 0, and a reader takes slot 0 only once
//!   every frame is copied. Whoever runs a checkpoint refreshes the keeper
//!   right after, so once the log is fully copied the keeper moves to slot 0
//!   and the next write restarts the log.
//! - **It steps aside for `RESTART` and `TRUNCATE`,** which wait for every
//!   reader: [`Keeper::aside`] ends its transaction for the checkpoint's
//!   length.
//! - **It never waits.** Its busy timeout is zero: if it cannot start a
//!   transaction (WAL recovery by another process, say), it stays without
//!   one until the next refresh; reads only lose the shortcut.
//! - Closed before the checkpoint thread's last `TRUNCATE` at close.
//!
//! Commits made by another process leave it on an older snapshot until the
//! next local commit or checkpoint, or the checkpoint thread's idle tick (at
//! most a second): meanwhile reads pay their system calls again, and that
//! process's checkpoints copy no further than the keeper's snapshot.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::sync::lock;

/// See the module documentation.
pub(crate) struct Keeper {
    conn: Mutex<Option<Connection>>,
}

impl Keeper {
    /// A keeper on the database at `path`, with its transaction started.
    /// One that cannot open is `None`: reads are only slower without it.
    pub(crate) fn open(path: &Path) -> Keeper {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.busy_timeout(Duration::ZERO)?;
            // It reads one page (the header) per refresh.
            c.execute_batch("PRAGMA cache_size = 1")?;
            Ok(c)
        });
        if let Err(e) = &conn {
            tracing::debug!("the read-mark keeper could not open: {e}");
        }
        let keeper = Keeper {
            conn: Mutex::new(conn.ok()),
        };
        keeper.refresh();
        keeper
    }

    /// Moves the keeper's read transaction to the newest snapshot.
    pub(crate) fn refresh(&self) {
        if let Some(conn) = lock(&self.conn).as_ref() {
            end(conn);
            begin(conn);
        }
    }

    /// Runs `f` with the keeper's transaction ended, then starts it again on
    /// the newest snapshot. For checkpoints that wait for every reader.
    pub(crate) fn aside<T>(&self, f: impl FnOnce() -> T) -> T {
        let guard = lock(&self.conn);
        if let Some(conn) = guard.as_ref() {
            end(conn);
        }
        let out = f();
        if let Some(conn) = guard.as_ref() {
            begin(conn);
        }
        out
    }

    /// Ends the transaction and closes the connection for good.
    pub(crate) fn close(&self) {
        if let Some(conn) = lock(&self.conn).take() {
            end(&conn);
        }
    }

    /// Whether the keeper holds a read transaction now (for tests).
    #[cfg(test)]
    pub(crate) fn holding(&self) -> bool {
        lock(&self.conn)
            .as_ref()
            .is_some_and(|c| !c.is_autocommit())
    }
}

/// Starts a read transaction: `BEGIN` starts none by itself, the first read
/// does. `schema_version` reads the header only, never the schema.
fn begin(conn: &Connection) {
    let started = conn.prepare_cached("BEGIN").and_then(|mut s| {
        s.execute([])?;
        conn.prepare_cached("PRAGMA schema_version")?
            .query_row([], |r| r.get::<_, i64>(0))
    });
    if started.is_err() {
        end(conn);
    }
}

fn end(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_frames(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    fn write(conn: &Connection, n: i64) {
        conn.execute("INSERT INTO t VALUES (?1, randomblob(2000))", [n])
            .unwrap();
    }

    fn setup() -> (tempfile::TempDir, Connection, Keeper) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let writer = Connection::open(&path).unwrap();
        writer.busy_timeout(Duration::ZERO).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        let keeper = Keeper::open(&path);
        assert!(keeper.holding());
        (dir, writer, keeper)
    }

    #[test]
    fn refreshed_after_a_full_checkpoint_the_keeper_lets_the_log_restart() {
        let (_dir, writer, keeper) = setup();
        for n in 0..20 {
            write(&writer, n);
            keeper.refresh();
        }
        // Copies every frame (the keeper's mark is the newest), and the
        // refresh puts the keeper on slot 0.
        let frames = wal_frames(&writer);
        assert!(frames > 20);
        keeper.refresh();
        write(&writer, 100);
        keeper.refresh();
        assert!(wal_frames(&writer) < 5, "the log did not restart");
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
}
