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

/// Takes the virtual-table module `name` away from the connection
/// (`sqlite3_create_module_v2` with no module): no statement of it can make
/// a table of that module, read one another program made, or call it as a
/// table-valued function.
#[allow(unsafe_code)]
pub(crate) fn drop_module(conn: &Connection, name: &std::ffi::CStr) -> rusqlite::Result<()> {
    // SAFETY: `handle()` is the live connection owned by `conn`; `name` is
    // NUL-terminated and outlives the call, which copies it. A null module
    // with no client data and no destructor deletes the module of that name.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_create_module_v2(
            conn.handle(),
            name.as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
            None,
        )
    };
    check(rc)
}

/// Takes every virtual-table module away from the connection
/// (`sqlite3_drop_modules`): a virtual table of the file is then neither
/// connected nor checked by `PRAGMA integrity_check`, which skips one whose
/// module is missing.
#[allow(unsafe_code)]
pub(crate) fn drop_all_modules(conn: &Connection) -> rusqlite::Result<()> {
    // SAFETY: `handle()` is the live connection owned by `conn`; a null
    // list keeps no module.
    let rc = unsafe { rusqlite::ffi::sqlite3_drop_modules(conn.handle(), std::ptr::null_mut()) };
    check(rc)
}

fn check(rc: std::ffi::c_int) -> rusqlite::Result<()> {
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            None,
        ))
    }
}

/// Whether the file system refuses to let this process read the file at
/// `path` (`EACCES`, by its effective ids), asked with `faccessat`, which
/// opens nothing: closing a descriptor of a database file drops every
/// `fcntl` lock the process holds on it, SQLite's included. False for any
/// other answer.
#[allow(unsafe_code)]
pub(crate) fn read_refused(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that outlives the call; `faccessat`
    // only reads it.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::R_OK, libc::AT_EACCESS) };
    rc != 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::PermissionDenied
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

/// Syncs the connection's main database file through its own VFS file
/// (`SQLITE_FCNTL_FILE_POINTER`, then the file's `xSync`), as a checkpoint
/// that copied every frame would. Does nothing when the file is not open yet.
///
/// The checkpoint thread calls it after each background copy so that the
/// writer's last short checkpoint finds the database file nearly clean: its
/// own sync then flushes a few pages instead of everything the copy wrote
/// (measured: 6-10 ms of the writer's time, each log cycle, which stalled
/// every request in flight). An fd of our own on the file would not do:
/// closing it would drop every POSIX lock SQLite holds on the file in this
/// process.
#[allow(unsafe_code)]
pub(crate) fn sync_database_file(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::ffi;
    let Some(file) = main_file(conn) else {
        return Ok(());
    };
    // SAFETY: `file` is the connection's open file, valid as above; its
    // methods are null until the file is opened, and `xSync` is the VFS's own
    // sync of it (the `unix` VFS: an fsync of its descriptor).
    let rc = unsafe {
        match (*file).pMethods.as_ref().and_then(|m| m.xSync) {
            Some(sync) => sync(file, ffi::SQLITE_SYNC_NORMAL),
            None => ffi::SQLITE_OK,
        }
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))
    }
}

/// The main database's `sqlite3_file` of `conn` (SQLite's
/// `SQLITE_FCNTL_FILE_POINTER`, answered by SQLite itself without calling
/// the VFS): owned by the connection, valid while it is open and no other
/// call runs on it; its methods are null until the file is opened.
#[allow(unsafe_code)]
pub(crate) fn main_file(conn: &Connection) -> Option<*mut rusqlite::ffi::sqlite3_file> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `handle()` is the live connection owned by `conn`, used on this
    // thread only while `conn` is borrowed; FILE_POINTER writes one pointer
    // into `file`.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    (rc == ffi::SQLITE_OK && !file.is_null()).then_some(file)
}

/// Whether `sql` ends a complete statement (`sqlite3_complete`: its last
/// `;` is not inside a string, a comment or a trigger's body); `None` for
/// text with a NUL byte.
#[allow(unsafe_code)]
pub(crate) fn complete(sql: &str) -> Option<bool> {
    let text = std::ffi::CString::new(sql).ok()?;
    // SAFETY: `text` is a NUL-terminated string that outlives the call, and
    // sqlite3_complete only reads it.
    Some(unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr()) } != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_file_is_synced_through_its_own_connection() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        sync_database_file(&conn).unwrap();
        // A database with no file (in memory) has nothing to sync.
        let memory = Connection::open_in_memory().unwrap();
        sync_database_file(&memory).unwrap();
    }
}
