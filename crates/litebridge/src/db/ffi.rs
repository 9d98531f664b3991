//! Calls of SQLite's C API for what rusqlite does not wrap (the other place
//! that touches the C API is the writer's VFS, `wal_vfs`).

use rusqlite::Connection;

/// The number of unresolved deferred foreign-key violations in the open
/// transaction (`SQLITE_DBSTATUS_DEFERRED_FKS`). The writer checks it after
/// each request so that a request leaving a violation behind fails alone,
/// instead of making the whole batch's COMMIT fail.
pub(crate) fn deferred_fk_violations(conn: &Connection) -> i32 {
    db_status(conn, rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS)
}

/// The bytes of memory the connection's prepared statements (its statement
/// cache) hold (`SQLITE_DBSTATUS_STMT_USED`).
#[cfg(test)]
pub(crate) fn statement_memory(conn: &Connection) -> i32 {
    db_status(conn, rusqlite::ffi::SQLITE_DBSTATUS_STMT_USED)
}

/// One of the connection's counters (`sqlite3_db_status`); 0 if unknown.
#[allow(unsafe_code)]
fn db_status(conn: &Connection, op: std::ffi::c_int) -> i32 {
    let mut current = 0;
    let mut highwater = 0;
    // SAFETY: `handle()` is the live connection owned by `conn`, used on this
    // thread only while `conn` is borrowed; sqlite3_db_status only reads a
    // counter of that connection into the two out-parameters.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(conn.handle(), op, &mut current, &mut highwater, 0)
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        current
    } else {
        0
    }
}

/// Whether another process holds one of SQLite's locks on the database file
/// at `path` (a connection is open on it and reading or writing): SQLite's
/// unix VFS takes POSIX record locks on the bytes from `PENDING_BYTE`
/// (1 GiB) on, which `F_GETLK` reports without taking any. A file that
/// cannot be opened, or is not locked, answers false.
#[allow(unsafe_code)]
pub(crate) fn locked_by_another_process(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd as _;
    const PENDING_BYTE: libc::off_t = 0x4000_0000;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: `flock` is plain data, fully initialised here; fcntl(F_GETLK)
    // only reads and writes that struct for the open descriptor of `file`,
    // which lives until the end of this function.
    unsafe {
        let mut query: libc::flock = std::mem::zeroed();
        query.l_type = libc::F_WRLCK as libc::c_short;
        query.l_whence = libc::SEEK_SET as libc::c_short;
        query.l_start = PENDING_BYTE;
        query.l_len = 512;
        libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut query) == 0
            && query.l_type != libc::F_UNLCK as libc::c_short
    }
}

/// Sets the connection's "last inserted rowid" (`sqlite3_set_last_insert_rowid`):
/// the writer zeroes it before each client request, so neither
/// `last_insert_rowid()` nor the request's result can show a rowid another
/// caller, or litebridge's own stores, inserted before it.
#[allow(unsafe_code)]
pub(crate) fn set_last_insert_rowid(conn: &Connection, rowid: i64) {
    // SAFETY: `handle()` is the live connection owned by `conn`, used on this
    // thread only while `conn` is borrowed; the call sets one field of it.
    unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(conn.handle(), rowid) }
}
