//! Calls of SQLite's C API for what rusqlite does not wrap (the other place
//! that touches the C API is the writer's VFS, `wal_vfs`).

use rusqlite::Connection;

/// The number of unresolved deferred foreign-key violations in the open
/// transaction (`SQLITE_DBSTATUS_DEFERRED_FKS`). The writer checks it after
/// each request so that a request leaving a violation behind fails alone,
/// instead of making the whole batch's COMMIT fail.
#[allow(unsafe_code)]
pub(crate) fn deferred_fk_violations(conn: &Connection) -> i32 {
    let mut current = 0;
    let mut highwater = 0;
    // SAFETY: `handle()` is the live connection owned by `conn`, used on this
    // thread only while `conn` is borrowed; sqlite3_db_status only reads a
    // counter of that connection into the two out-parameters.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut current,
            &mut highwater,
            0,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        current
    } else {
        0
    }
}
