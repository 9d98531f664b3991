//! Restoring a database file from a backup.
//!
//! The backup is verified before anything is touched, then copied through
//! SQLite's backup API (its `-wal` included, as SQLite reads it) to a
//! hidden file beside the database, and the copy verified: until then the
//! database is not touched, so a copy that fails (a full disk) leaves it as
//! it was. Then the database's place is cleared: the file and every
//! companion SQLite would take for it (`-wal`, `-shm`, `-journal`, even with
//! no database beside them: a stale log would be replayed into the restored
//! file) are moved aside, never deleted; the copy is renamed into place and
//! the directory synced. A crash at any point leaves the old file where it
//! was or aside, and the new one whole or not there.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use crate::db::backup::{
    COMPANIONS, check_file_bounded, copy_into, create_partial, sync_dir, with_suffix,
};
use crate::error::{Error, Result};

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored database file.
    pub path: PathBuf,
    /// Bytes of the restored file.
    pub bytes: u64,
    /// Where the replaced file (or the companions a missing one left
    /// behind) was moved: None when there was nothing.
    pub replaced_kept_at: Option<PathBuf>,
    /// How old the backup is (from its modification time).
    pub backup_age: Duration,
}

/// Replaces the database at `db` with the backup at `from`, keeping the
/// replaced file at `aside`. `progress(copied, total)` is called as pages
/// are copied.
///
/// # Errors
/// [`Error::Corrupt`] if the backup fails verification (nothing is changed);
/// [`Error::Busy`] if another process has `db` open; [`Error::Io`] for file
/// errors (a failed copy changes nothing; a failure after the database was
/// moved aside moves it back, or names where it is).
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
    let report = check_file_bounded(from)?;
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

    // The restored file is no more readable than the one it replaces (or,
    // with none, than the backup).
    let partial = create_partial(db, if db.exists() { db } else { from })?;
    let placed = copy_into(from, &partial, Duration::from_secs(5), &mut |p| {
        progress(p.copied, p.total);
    })
    .and_then(|_| place(&partial, db, aside));
    let replaced_kept_at = match placed {
        Ok(moved) => moved.then(|| aside.to_path_buf()),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    Ok(RestoreReport {
        path: db.to_path_buf(),
        bytes: std::fs::metadata(db).map_or(0, |m| m.len()),
        replaced_kept_at,
        backup_age,
    })
}

/// Clears `db`'s place (moving the file and its companions to `aside`) and
/// renames the verified copy `partial` there; whether anything was moved.
fn place(partial: &Path, db: &Path, aside: &Path) -> Result<bool> {
    if db.exists() {
        ensure_not_in_use(db)?;
    }
    let moved = move_aside(db, aside)?;
    if let Err(e) = std::fs::rename(partial, db) {
        let e = if !moved.is_empty() && move_back(&moved).is_err() {
            std::io::Error::new(
                e.kind(),
                format!("{e}; the database is kept at {}", aside.display()),
            )
        } else {
            e
        };
        return Err(Error::io("cannot move the restored file to", db, e));
    }
    sync_dir(db);
    Ok(!moved.is_empty())
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

/// `db` and each companion of it that exists, moved to the same names
/// beside `aside`; the moves made. Nothing is moved while any aside name is
/// taken (a companion left there would be taken for the database's), and
/// a move that fails half way is undone (or the error says where the
/// database is).
fn move_aside(db: &Path, aside: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let pairs = pairs(db, aside);
    if let Some((_, to)) = pairs.iter().find(|(_, to)| to.symlink_metadata().is_ok()) {
        return Err(Error::io(
            "cannot move the database aside to",
            to,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file of that name exists",
            ),
        ));
    }
    let mut moved = Vec::new();
    for (from, to) in pairs {
        if !from.exists() {
            continue;
        }
        if let Err(e) = std::fs::rename(&from, &to) {
            let e = if !moved.is_empty() && move_back(&moved).is_err() {
                std::io::Error::new(
                    e.kind(),
                    format!("{e}; the database is kept at {}", aside.display()),
                )
            } else {
                e
            };
            return Err(Error::io("cannot move aside", &from, e));
        }
        moved.push((from, to));
    }
    Ok(moved)
}

/// Undoes the moves [`move_aside`] made.
fn move_back(moved: &[(PathBuf, PathBuf)]) -> std::io::Result<()> {
    for (back, from) in moved {
        std::fs::rename(from, back)?;
    }
    Ok(())
}

fn pairs(db: &Path, aside: &Path) -> Vec<(PathBuf, PathBuf)> {
    std::iter::once((db.to_path_buf(), aside.to_path_buf()))
        .chain(
            COMPANIONS
                .iter()
                .map(|c| (with_suffix(db, c), with_suffix(aside, c))),
        )
        .collect()
}
