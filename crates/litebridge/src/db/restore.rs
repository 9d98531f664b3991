//! Restoring a database file from a backup.
//!
//! The backup is verified before anything is touched. The file it replaces
//! (with its `-wal` and `-shm`) is moved aside, never deleted, and the copy is
//! written to a temporary name, synced, verified and renamed into place, so a
//! crash at any point leaves either the old file aside or the new one whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use crate::db::backup::{check_file, with_suffix};
use crate::db::open::quick_check;
use crate::error::{Error, Result};

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored database file.
    pub path: PathBuf,
    /// Bytes copied.
    pub bytes: u64,
    /// Where the replaced file was moved (None when there was none).
    pub replaced_kept_at: Option<PathBuf>,
    /// How old the backup is (from its modification time).
    pub backup_age: Duration,
}

/// Replaces the database at `db` with the backup at `from`, keeping the
/// replaced file at `aside`. `progress(copied, total)` is called as bytes are copied.
///
/// # Errors
/// [`Error::Corrupt`] if the backup fails verification (nothing is changed);
/// [`Error::Busy`] if another process has `db` open; [`Error::Io`] for file errors.
pub fn restore_file(
    from: &Path,
    db: &Path,
    aside: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<RestoreReport> {
    // Before this process's first connection: SQLite takes its allocator
    // once, and a database opened later enforces its memory budget by it.
    crate::db::heap::install();
    if same_file(from, db) {
        return Err(Error::invalid(
            "from",
            "the backup and the database are the same file",
        ));
    }
    let report = check_file(from, crate::db::CheckDepth::Quick)?;
    if !report.ok {
        return Err(Error::Corrupt {
            path: from.to_path_buf(),
            detail: format!(
                "the backup failed verification and was not used: {}",
                report.problems.join("; ")
            ),
        });
    }
    let backup_age = std::fs::metadata(from)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();

    let replaced_kept_at = if db.exists() {
        ensure_not_in_use(db)?;
        move_aside(db, aside)?;
        Some(aside.to_path_buf())
    } else {
        None
    };

    let partial = with_suffix(db, ".restoring");
    let bytes = copy_synced(from, &partial, &mut progress)?;
    let conn = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let problems = quick_check(&conn, 10)?.damage;
    drop(conn);
    if !problems.is_empty() {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Corrupt {
            path: partial,
            detail: format!("the copy failed verification: {}", problems.join("; ")),
        });
    }
    std::fs::rename(&partial, db)
        .map_err(|e| Error::io("cannot move the restored file to", db, e))?;
    Ok(RestoreReport {
        path: db.to_path_buf(),
        bytes,
        replaced_kept_at,
        backup_age,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Refuses to replace a database another connection has open. In WAL mode an
/// exclusive-locking-mode read needs the file to itself.
fn ensure_not_in_use(db: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| {
        Error::Open {
            path: db.to_path_buf(),
            reason: Error::from(e).to_string(),
        }
    })?;
    conn.busy_timeout(Duration::from_millis(100))?;
    let locked = conn
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
        .map_err(Error::from);
    match locked {
        Ok(()) => Ok(()),
        Err(Error::Busy { .. }) => Err(Error::Busy {
            message: format!(
                "{} is in use by another process; stop it (litebridge serve) before restoring",
                db.display()
            ),
        }),
        // A damaged file cannot be locked cleanly but must still be replaceable.
        Err(_) => Ok(()),
    }
}

fn move_aside(db: &Path, aside: &Path) -> Result<()> {
    for (from, to) in [
        (db.to_path_buf(), aside.to_path_buf()),
        (with_suffix(db, "-wal"), with_suffix(aside, "-wal")),
        (with_suffix(db, "-shm"), with_suffix(aside, "-shm")),
    ] {
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|e| Error::io("cannot move aside", &from, e))?;
        }
    }
    Ok(())
}

fn copy_synced(from: &Path, to: &Path, progress: &mut impl FnMut(u64, u64)) -> Result<u64> {
    let mut src = std::fs::File::open(from).map_err(|e| Error::io("cannot read", from, e))?;
    let total = src.metadata().map_or(0, |m| m.len());
    let mut dst = std::fs::File::create(to).map_err(|e| Error::io("cannot create", to, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", from, e))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .map_err(|e| Error::io("cannot write", to, e))?;
        copied += n as u64;
        progress(copied, total);
    }
    dst.sync_all()
        .map_err(|e| Error::io("cannot sync", to, e))?;
    Ok(copied)
}
