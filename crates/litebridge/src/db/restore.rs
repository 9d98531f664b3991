//! Restoring a database file from a backup.
//!
//! The backup is verified before anything is touched, then copied through
//! SQLite's backup API (its `-wal` included, as SQLite reads it) to a
//! hidden file beside the database, and the copy verified: until then the
//! database is not touched, so a copy that fails (a full disk) leaves it as
//! it was. Then the database's place is cleared: every companion SQLite
//! would take for the file (`-wal`, `-shm`, `-journal`, even with no
//! database beside them: a stale log would be replayed into the restored
//! file) is moved aside, never deleted, and the file itself linked aside
//! (or moved, see `place_with`; a linked one is marked for a rollback
//! journal, which changes nothing of its data); the copy is renamed into
//! place and the directory synced. A crash at any point leaves the old file where it was
//! or aside, and the new one whole or not there.

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
    place_with(partial, db, aside, || {})
}

/// [`place`], calling `before_rename` just before the copy is renamed into
/// place (tests look at the files then).
///
/// There is a file at `db` at every moment: the old one is linked to
/// `aside` (not moved) and the copy renamed over it, so no program can
/// open `db` in between and make a new, empty database there (whose log
/// would then sit beside the restored file). Until the rename, this
/// process holds SQLite's locks on the old file, so a program that opens
/// it meanwhile can neither read nor write it, nor make it a log: it is
/// told the database is locked. That is done only when the old file
/// closed cleanly (its log checkpointed, a hot journal rolled back) and
/// left no companion with anything in it: a crash before the rename then
/// leaves it whole at its place. Otherwise (a damaged file, a log that
/// could not be emptied, no hard links or record locks), the file is
/// moved aside with its companions and the copy renamed into its place.
fn place_with(
    partial: &Path,
    db: &Path,
    aside: &Path,
    before_rename: impl FnOnce(),
) -> Result<bool> {
    let clean = db.exists() && ensure_not_in_use(db)?;
    let held = if clean && companions_are_empty(db) {
        match crate::db::ffi::hold_sqlite_locks(db) {
            Ok(held) => held,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(Error::Busy {
                    message: format!(
                        "{} is in use by another process; stop it (litebridge serve) before restoring",
                        db.display()
                    ),
                });
            }
            Err(e) => return Err(Error::io("cannot lock", db, e)),
        }
    } else {
        None
    };
    let moved = move_aside(db, aside, held.is_some())?;
    // A program that opened the old file meanwhile waits for the lock (a
    // busy timeout), then reads its header: were it still marked WAL, it
    // would open `-wal` and `-shm` by their names, beside the restored
    // file, and its writes would be replayed into it (a review showed
    // it). Marked for a rollback journal, SQLite refuses its writes (the
    // file was moved: `SQLITE_READONLY_DBMOVED`) and it opens no log. The
    // old file, now aside, is otherwise as it was.
    let remarked = match (&held, moved.first()) {
        (Some(file), Some(m)) if m.linked => match mark_rollback(file) {
            Ok(was) => was,
            Err(e) => {
                let _ = move_back(&moved);
                return Err(Error::io("cannot prepare the old file", db, e));
            }
        },
        _ => None,
    };
    before_rename();
    if let Err(e) = std::fs::rename(partial, db) {
        if let (Some(file), Some(was)) = (&held, remarked) {
            let _ = std::os::unix::fs::FileExt::write_all_at(file, &was, 18);
        }
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
    drop(held);
    Ok(!moved.is_empty())
}

/// Marks the database `file` as one of a rollback journal (its header's
/// bytes 18 and 19, the read and write versions: 2 for WAL, 1 for a
/// journal), synced; returns what they were when it changed them.
fn mark_rollback(file: &std::fs::File) -> std::io::Result<Option<[u8; 2]>> {
    use std::os::unix::fs::FileExt as _;
    let mut versions = [0u8; 2];
    // An empty file is a new database's: a program that makes it a WAL
    // one writes its header through a journal first, which is refused.
    if file.metadata()?.len() < 100 {
        return Ok(None);
    }
    file.read_exact_at(&mut versions, 18)?;
    if versions == [1, 1] {
        return Ok(None);
    }
    file.write_all_at(&[1, 1], 18)?;
    file.sync_data()?;
    Ok(Some(versions))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Whether every companion of `db` that exists is empty (`-shm` aside: it
/// holds no data).
fn companions_are_empty(db: &Path) -> bool {
    COMPANIONS
        .iter()
        .filter(|c| !c.ends_with("-shm"))
        .all(|c| std::fs::symlink_metadata(with_suffix(db, c)).map_or(true, |m| m.len() == 0))
}

/// Refuses to replace a database another connection has open. In WAL mode an
/// exclusive-locking-mode read needs the file to itself. Whether the file
/// was locked and closed cleanly (a damaged one cannot be, and is still
/// replaceable).
fn ensure_not_in_use(db: &Path) -> Result<bool> {
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
        Ok(()) => Ok(conn.close().is_ok()),
        Err(Error::Busy { .. }) => Err(Error::Busy {
            message: format!(
                "{} is in use by another process; stop it (litebridge serve) before restoring",
                db.display()
            ),
        }),
        // A damaged file cannot be locked cleanly but must still be replaceable.
        Err(_) => Ok(false),
    }
}

/// `db` and each companion of it that exists, moved to the same names
/// beside `aside`; the moves made. With `link_db`, `db` itself is linked
/// there rather than moved (it stays where it is until the restored copy
/// is renamed over it), where the file system can. Nothing is moved while
/// any aside name is taken (a companion left there would be taken for the
/// database's), and a move that fails half way is undone (or the error
/// says where the database is).
fn move_aside(db: &Path, aside: &Path, link_db: bool) -> Result<Vec<Moved>> {
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
    for (i, (from, to)) in pairs.into_iter().enumerate() {
        if !from.exists() {
            continue;
        }
        let linked = i == 0 && link_db && std::fs::hard_link(&from, &to).is_ok();
        if !linked && let Err(e) = std::fs::rename(&from, &to) {
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
        moved.push(Moved { from, to, linked });
    }
    Ok(moved)
}

/// One file [`move_aside`] moved (or linked).
struct Moved {
    from: PathBuf,
    to: PathBuf,
    /// Linked: `from` is still there.
    linked: bool,
}

/// Undoes the moves [`move_aside`] made.
fn move_back(moved: &[Moved]) -> std::io::Result<()> {
    for m in moved {
        if m.linked {
            std::fs::remove_file(&m.to)?;
        } else {
            std::fs::rename(&m.to, &m.from)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn database(path: &Path, value: &str) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('{value}');"
        ))
        .unwrap();
    }

    fn value(path: &Path) -> String {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT v FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Found by a hostile review: the database was moved aside before the
    /// copy was renamed into its place, so for a moment there was no file
    /// at its path, and a program opening it then made a new, empty
    /// database there. Now the old file stays until the copy replaces it,
    /// and another process opening it meanwhile is told it is locked.
    #[test]
    fn there_is_a_database_at_its_path_throughout_a_restore_and_no_one_else_can_use_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (db, partial, aside) = (
            dir.path().join("app.db"),
            dir.path().join(".app.db.partial"),
            dir.path().join("app.db.replaced"),
        );
        database(&db, "old");
        database(&partial, "restored");
        let mut seen = None;
        let mut waiting = None;
        let moved = place_with(&partial, &db, &aside, || {
            // One that waits for the lock (a review showed its writes
            // replayed into the restored file through a log it made).
            waiting = Some(
                std::process::Command::new("python3")
                    .arg("-c")
                    .arg(
                        "import sqlite3, sys\n\
                         c = sqlite3.connect(sys.argv[1], timeout=5)\n\
                         c.execute(\"INSERT INTO t VALUES ('late')\")\n\
                         c.commit()",
                    )
                    .arg(&db)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
            let other = std::process::Command::new("python3")
                .arg("-c")
                .arg(
                    "import sqlite3, sys\n\
                     c = sqlite3.connect(sys.argv[1], timeout=0)\n\
                     print(c.execute('SELECT v FROM t').fetchone()[0])",
                )
                .arg(&db)
                .output()
                .unwrap();
            seen = Some((
                db.exists(),
                String::from_utf8_lossy(&other.stdout).into_owned(),
                String::from_utf8_lossy(&other.stderr).into_owned(),
            ));
        })
        .unwrap();
        assert!(moved);
        let (there, out, err) = seen.unwrap();
        assert!(there, "no file at the database's path");
        assert!(out.is_empty(), "another process read {out:?}");
        assert!(err.contains("locked"), "{err}");
        let late = waiting.unwrap().wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&late.stderr);
        assert!(!late.status.success(), "the late writer wrote");
        assert!(said.contains("readonly"), "{said}");
        assert_eq!(value(&db), "restored");
        assert_eq!(value(&aside), "old");
        for c in ["-wal", "-journal"] {
            let beside = with_suffix(&db, c);
            assert!(
                std::fs::metadata(&beside).map_or(true, |m| m.len() == 0),
                "{} beside the restored file",
                beside.display()
            );
        }
        for c in COMPANIONS {
            assert!(!with_suffix(&aside, c).exists() || c == "-shm", "{c}");
        }
    }
}
