//! Fault injection for tests: switches that make the real components fail in
//! the ways production ones do (a connection whose statements all fail, a
//! COMMIT that SQLite refuses, a writer thread that dies mid-batch), so the
//! recovery paths under test are the production paths.
//!
//! Hidden from the documentation; it costs one `Option` check where it hooks in.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

/// Switches read by the database's components. All start off.
#[derive(Debug, Default)]
pub struct Faults {
    break_readers: AtomicUsize,
    fail_commits: AtomicUsize,
    panic_writer: AtomicBool,
    fail_begins: AtomicUsize,
    fail_read_begins: AtomicUsize,
    fail_settles: AtomicUsize,
    fail_tidies: AtomicUsize,
    lose_before_commits: AtomicUsize,
    reused_pid: AtomicI64,
    other_server: AtomicUsize,
    count_elsewhere: AtomicUsize,
    hold_secret_looks: AtomicBool,
}

impl Faults {
    /// Makes the next `n` read-lane checkouts break their connection: every
    /// statement on it fails from then on, until the pool replaces it.
    pub fn break_readers(&self, n: usize) {
        self.break_readers.store(n, Ordering::SeqCst);
    }

    /// Makes SQLite refuse the next `n` COMMITs of the writer (through a commit hook).
    pub fn fail_commits(&self, n: usize) {
        self.fail_commits.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` `BEGIN`s of PostgreSQL writes fail on the server
    /// (as a cancel from another session makes them), with what was to
    /// follow them sent all the same.
    pub fn fail_begins(&self, n: usize) {
        self.fail_begins.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_fail_begin(&self) -> bool {
        take_one(&self.fail_begins)
    }

    /// Makes the `BEGIN READ ONLY` of the next `n` PostgreSQL reads
    /// answered in one message fail on the server, with the rest of the
    /// message sent all the same.
    pub fn fail_read_begins(&self, n: usize) {
        self.fail_read_begins.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_fail_read_begin(&self) -> bool {
        take_one(&self.fail_read_begins)
    }

    /// Makes the record of the next `n` PostgreSQL writes with an
    /// idempotency key too large, which the server refuses, aborting their
    /// transactions before their `COMMIT`.
    pub fn fail_settles(&self, n: usize) {
        self.fail_settles.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_fail_settle(&self) -> bool {
        take_one(&self.fail_settles)
    }

    /// Makes the tidy-up after the `COMMIT` of the next `n` PostgreSQL
    /// writes of the clients fail on the server, in the same message.
    pub fn fail_tidies(&self, n: usize) {
        self.fail_tidies.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_fail_tidy(&self) -> bool {
        take_one(&self.fail_tidies)
    }

    /// Makes the connection of the next `n` PostgreSQL messages that would
    /// commit the clients' writes (a write's `COMMIT`, or writes sent
    /// together) lost before the message is sent: its server process is
    /// ended, and the message waits until the connection has seen it.
    pub fn lose_before_commits(&self, n: usize) {
        self.lose_before_commits.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_lose_before_commit(&self) -> bool {
        take_one(&self.lose_before_commits)
    }

    /// Makes the next clients' PostgreSQL statement litebridge gives up on
    /// look, to the backstop that ends its server process, as if that
    /// process had ended and its pid been handed to the session whose pid
    /// is `pid` (the start time kept is the first process's).
    pub fn reuse_pid(&self, pid: i32) {
        self.reused_pid.store(i64::from(pid) + 1, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_reused_pid(&self) -> Option<i32> {
        match self.reused_pid.swap(0, Ordering::SeqCst) {
            0 => None,
            n => i32::try_from(n - 1).ok(),
        }
    }

    /// Makes the next `n` of litebridge's own PostgreSQL connections taken
    /// to name a clients' server process look as if they reached another
    /// server than that process's (an address that leads to several).
    pub fn other_server(&self, n: usize) {
        self.other_server.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_other_server(&self) -> bool {
        take_one(&self.other_server)
    }

    /// Makes the standbys' count of the next `n` PostgreSQL writes
    /// (`postgres.replicated_to`) run on another server session than the
    /// one that committed them, as a pooler in transaction mode would.
    pub fn count_elsewhere(&self, n: usize) {
        self.count_elsewhere.store(n, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn take_count_elsewhere(&self) -> bool {
        take_one(&self.count_elsewhere)
    }

    /// Holds the PostgreSQL cache listeners' looks at the idempotency
    /// secret while on, as if each next look were not due yet.
    pub fn hold_secret_looks(&self, on: bool) {
        self.hold_secret_looks.store(on, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn secret_looks_held(&self) -> bool {
        self.hold_secret_looks.load(Ordering::SeqCst)
    }

    /// Makes the writer thread panic in the middle of its next batch.
    pub fn panic_writer(&self) {
        self.panic_writer.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take_break_reader(&self) -> bool {
        take_one(&self.break_readers)
    }

    pub(crate) fn take_fail_commit(&self) -> bool {
        take_one(&self.fail_commits)
    }

    pub(crate) fn take_panic_writer(&self) -> bool {
        self.panic_writer.swap(false, Ordering::SeqCst)
    }
}

/// The writer's WAL shim (`db::wal_vfs`) is one per process, so its switch
/// is too: 0 is off; `n` fails the `n`-th write-out of gathered frames from
/// now on, once.
static WAL_FLUSH_FAILURE: AtomicUsize = AtomicUsize::new(0);

/// Makes the `n`-th write-out of gathered WAL frames from now fail (once), in
/// every database of the process, as a full disk or an I/O error would. `0`
/// turns it off. Tests that use it run in a process of their own.
pub fn fail_wal_flush(n: usize) {
    WAL_FLUSH_FAILURE.store(n, Ordering::SeqCst);
}

/// Whether this write-out of WAL frames is to fail.
pub(crate) fn take_wal_flush_failure() -> bool {
    take_nth(&WAL_FLUSH_FAILURE)
}

/// As [`WAL_FLUSH_FAILURE`], for the writer's syncs of the WAL after a
/// commit frame: 0 is off; `n` makes the `n`-th from now report a failure
/// once.
static WAL_SYNC_FAILURE: AtomicUsize = AtomicUsize::new(0);

/// Makes the `n`-th sync of a WAL file through the writer's shim from now,
/// counting those after a commit frame was written (the sync of a COMMIT
/// under `durability = "full"`), report `SQLITE_IOERR_FSYNC` (once) after it
/// ran, as `fsync` does when the disk failed to store pages it was given:
/// the frames are in the file, and whether they reached the disk is
/// unknown. `0` turns it off. Tests that use it run in a process of their
/// own.
pub fn fail_wal_sync(n: usize) {
    WAL_SYNC_FAILURE.store(n, Ordering::SeqCst);
}

/// Whether this sync of a WAL file is to report a failure.
pub(crate) fn take_wal_sync_failure() -> bool {
    take_nth(&WAL_SYNC_FAILURE)
}

/// Counts one event down on a switch that fails its `n`-th event: whether
/// this is the one (a relaxed look first: the switches sit on hot paths).
fn take_nth(switch: &AtomicUsize) -> bool {
    if switch.load(Ordering::Relaxed) == 0 {
        return false;
    }
    switch
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok_and(|n| n == 1)
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
