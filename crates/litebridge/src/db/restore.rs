//! Restoring a database file from a backup.
//!
//! The backup is verified before anything is touched, then copied through
//! SQLite's backup API (its `-wal` included, as SQLite reads it) to a
//! hidden file beside the database, and the copy verified: until then the
//! database is not touched, so a copy that fails (a full disk) leaves it as
//! it was. Then the database's content is replaced in place, through
//! SQLite, in one transaction (a copy of the old kept aside first): see
//! `place`. A damaged file (SQLite finds it corrupt, or not a database)
//! that no other program has open, or a missing one, has its place cleared
//! instead: it and every companion SQLite would take for it
//! (`-wal`, `-shm`, `-journal`, even with no database beside them: a stale
//! log would be replayed into the restored file) are moved aside, never
//! deleted, and the copy renamed into place, the directory synced. A crash
//! at any point leaves the old database whole (in place, or aside) and the
//! new one whole or not there.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use crate::db::backup::{
    COMPANIONS, check_file_bounded, copy_into, create_partial, open_elsewhere, sync_dir,
    with_suffix,
};
use crate::error::{Error, Result};

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored database file.
    pub path: PathBuf,
    /// Bytes of the restored file.
    pub bytes: u64,
    /// Where what was replaced is kept: a copy of the database (replaced in
    /// place), or the damaged file (or the companions a missing one left
    /// behind) moved there; None when there was nothing.
    pub replaced_kept_at: Option<PathBuf>,
    /// How old the backup is (from its modification time).
    pub backup_age: Duration,
}

/// Replaces the database at `db` with the backup at `from`, keeping what it
/// replaces at `aside` (see `place`). `progress(copied, total)` is called
/// as pages are copied.
///
/// # Errors
/// [`Error::Corrupt`] if the backup fails verification (nothing is changed);
/// [`Error::Busy`] if another process holds a lock on `db` past 100 ms,
/// has a WAL database open, or has a damaged one open (nothing is changed);
/// [`Error::Io`] for file errors (a failed copy changes nothing; an error
/// that may have followed the restore's commit keeps the copy aside and
/// names it; a failure after a damaged file was moved aside moves it back,
/// or names where it is).
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
    // A link whose file is gone (a volume not mounted) is not replaced by a
    // file in its place, nor a file made where it leads (review 185: the
    // link was replaced, and the database on the volume cut off once it
    // was mounted again).
    if std::fs::symlink_metadata(db).is_ok_and(|m| m.file_type().is_symlink())
        && matches!(std::fs::metadata(db), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        return Err(Error::Unavailable {
            what: "restore",
            reason: format!(
                "{} is a link to {}, which does not exist (a volume not mounted?): mount what \
                 it is on, or remove the link to restore into {} itself",
                db.display(),
                crate::db::backup::source_mark(db),
                db.display()
            ),
        });
    }
    // A database's own log, shared memory or journal named as the database
    // (review 180: the log moved aside for a restored file put in its
    // place, whose header SQLite then ignores, and the commits the log
    // held were gone from the database).
    if let Some((main, companion)) = companion_of(db) {
        return Err(Error::invalid(
            "db",
            format!(
                "{} is the {companion} file of the database {}, not a database; give the database's own path",
                db.display(),
                main.display()
            ),
        ));
    }
    // An empty file passes the check (SQLite reads it as an empty
    // database), but no backup is empty: SQLite writes a copy's first
    // page (review 182).
    if std::fs::metadata(from).is_ok_and(|m| m.len() == 0) {
        return Err(Error::Corrupt {
            path: from.to_path_buf(),
            detail: "the backup is empty (0 bytes) and was not used: a backup holds at least \
                     its database's first page"
                .into(),
        });
    }
    let report = check_file_bounded(from)?;
    if report.could_not_run() {
        // Not "corrupt": nothing was read (review 219).
        return Err(Error::CheckFailed {
            path: from.to_path_buf(),
            detail: format!(
                "{}, so the backup was not used (`litebridge check --db {}` tells more)",
                report.unfinished.as_deref().unwrap_or_default(),
                from.display()
            ),
        });
    }
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
    let placed = copy_into(
        from,
        &partial,
        crate::db::backup::Role::Restore,
        Duration::from_secs(5),
        None,
        &mut |p| progress(p.copied, p.total),
    )
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

/// Puts the verified copy `partial` at `db`, keeping what was there at
/// `aside`; whether anything was kept.
///
/// A database SQLite can open and lock is replaced in place, through
/// SQLite ([`replace_in_place`]): its file stays where it is, and every
/// program with it open sees the restore as one transaction. A review
/// showed that renaming a copy over it cannot be made safe: a program
/// holding the old file (opened before, or waiting on its lock) opens the
/// `-wal` beside the restored file by its name and writes into it. A
/// damaged one (SQLite finds it corrupt, or not a database), or none, has
/// its place cleared instead, when no other program has it open: it and
/// its companions are moved aside, and the copy renamed into its place.
fn place(partial: &Path, db: &Path, aside: &Path) -> Result<bool> {
    if db.exists() {
        match replace_in_place(partial, db, aside) {
            Ok(()) => {
                let _ = std::fs::remove_file(partial);
                return Ok(true);
            }
            Err(InPlace::Failed(e)) => return Err(e),
            Err(InPlace::Damaged(why)) => tracing::warn!(
                db = %db.display(),
                "the database cannot be restored in place ({why}): it is moved aside"
            ),
        }
        // Renamed, the file must not be in another program's hands.
        let held = std::iter::once(db.to_path_buf())
            .chain(COMPANIONS.iter().map(|c| with_suffix(db, c)))
            .any(|p| p.exists() && open_elsewhere(&p));
        if held || crate::db::ffi::locked_by_another_process(db) {
            return Err(in_use(db));
        }
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
    // A program that opened the file between the look and the moves would
    // open a log beside the restored file by its name: all undone, unless a
    // program has the restored file open already (its writes would go with
    // it) or made it a companion. (One holding only a companion moved
    // aside, its database gone, uses it by its descriptors.)
    let old_file_held = moved
        .first()
        .is_some_and(|(from, to)| from == db && open_elsewhere(to));
    if old_file_held {
        let restored_in_use = open_elsewhere(db)
            || COMPANIONS
                .iter()
                .any(|c| with_suffix(db, c).symlink_metadata().is_ok());
        if restored_in_use {
            return Err(Error::io(
                "another program opened the database during the restore:",
                db,
                std::io::Error::other(format!(
                    "the restored database is in place and in use, the old one is kept at {}; \
                     stop the program that has the old one open",
                    aside.display()
                )),
            ));
        }
        let undone = std::fs::rename(db, partial).and_then(|()| move_back(&moved));
        return Err(match undone {
            Ok(()) => in_use(db),
            Err(e) => Error::io(
                "cannot put back",
                db,
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (another program opened it during the restore); the database is kept at {}",
                        aside.display()
                    ),
                ),
            ),
        });
    }
    sync_dir(db);
    Ok(!moved.is_empty())
}

/// Why a database was not replaced in place.
enum InPlace {
    /// It is damaged: SQLite finds it corrupt, or not a database (its
    /// content is as it was, a WAL database's log perhaps checkpointed
    /// into it; no copy kept).
    Damaged(String),
    /// Anything else (it is in use, a disk error): its content is as it
    /// was, unless the error says it may not be.
    Failed(Error),
}

/// Whether SQLite found the database damaged.
fn damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

impl From<rusqlite::Error> for InPlace {
    fn from(e: rusqlite::Error) -> Self {
        if damaged(&e) {
            InPlace::Damaged(e.to_string())
        } else {
            InPlace::Failed(Error::from(e))
        }
    }
}

/// Replaces the content of the database `db` with that of `copy`, through
/// SQLite, after keeping a copy of it at `aside`.
///
/// One connection takes the database for itself (SQLite's exclusive lock,
/// kept until it closes: no other program reads or writes it meanwhile, so
/// nothing is written between the copy kept and the restore). A WAL
/// database is first brought back to a rollback journal (its log
/// checkpointed into the file: the same content; it goes back to WAL when
/// it is next served), which also lets it take pages of another size. The
/// file's bytes are then copied aside as they are (not through SQLite,
/// which would copy as many pages as a damaged header says), and its
/// content replaced in one transaction of SQLite's backup API through the
/// journal: a crash at any point leaves the old content or the new, whole,
/// and a program that has the database open waits for the transaction as
/// for any writer's, then reads the new content. A WAL database another
/// program has open is refused (its connection keeps a lock on it). The
/// journal, the copy aside and the verified copy each take about the
/// database's size on disk while it runs.
fn replace_in_place(copy: &Path, db: &Path, aside: &Path) -> std::result::Result<(), InPlace> {
    let busy = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            InPlace::Failed(in_use(db))
        }
        _ => InPlace::from(e),
    };
    // The file's bytes are read through this descriptor, opened before
    // SQLite's locks are taken and closed after its connection: closing
    // any descriptor of the file would let this process's locks go.
    let raw =
        std::fs::File::open(db).map_err(|e| InPlace::Failed(Error::io("cannot open", db, e)))?;
    let mut live = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    live.busy_timeout(Duration::from_millis(100))?;
    // A damaged schema does not stop the pragmas (none reads it).
    live.execute_batch("PRAGMA writable_schema = ON; PRAGMA locking_mode = EXCLUSIVE;")?;
    let mode: String = live
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(busy)?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(InPlace::Failed(in_use(db)));
    }
    live.execute_batch("PRAGMA synchronous = EXTRA; BEGIN EXCLUSIVE; COMMIT;")
        .map_err(busy)?;
    // The descriptor and the connection are of the same file (not one
    // renamed over it in between).
    let same = {
        use std::os::unix::fs::MetadataExt as _;
        match (raw.metadata(), std::fs::metadata(db)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    };
    if !same {
        return Err(InPlace::Failed(in_use(db)));
    }
    keep_aside(&raw, db, aside)?;
    let src = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| InPlace::Failed(Error::from(e)));
    let stepped = src.and_then(|src| {
        let backup = rusqlite::backup::Backup::new(&src, &mut live).map_err(InPlace::from)?;
        // Every page in one step: one transaction. From here on, an error
        // may come after the commit (its journal's sync failed).
        Ok(backup.step(-1))
    });
    let result = match stepped {
        Ok(Ok(rusqlite::backup::StepResult::Done)) => Ok(()),
        // Not begun (busy): nothing of the database changed, and the copy
        // aside is not needed.
        Ok(Ok(_)) | Err(_) => {
            drop(live);
            drop(raw);
            let _ = std::fs::remove_file(aside);
            return match stepped {
                Err(e) => Err(e),
                _ => Err(InPlace::Failed(in_use(db))),
            };
        }
        Ok(Err(e)) => Err(InPlace::Failed(Error::io(
            "the restore may or may not have taken effect in",
            db,
            std::io::Error::other(format!(
                "{}; the database as it was is kept at {}",
                Error::from(e),
                aside.display()
            )),
        ))),
    };
    // SQLite deletes the journal (and syncs the directory) as it closes.
    if let Err((_, e)) = live.close() {
        tracing::warn!(db = %db.display(), "closing the restored database: {e}");
    }
    drop(raw);
    result
}

/// A copy of the database file `raw` (a descriptor of `db`, which this
/// process holds SQLite's exclusive lock on) at `aside`: its bytes as they
/// are, in a new file no more readable than `db`, synced.
fn keep_aside(raw: &std::fs::File, db: &Path, aside: &Path) -> std::result::Result<(), InPlace> {
    use std::os::unix::fs::FileExt as _;
    // Nor beside a companion of that name: a log left there would be
    // taken for the kept database's.
    if let Some((_, to)) = pairs(db, aside)
        .into_iter()
        .find(|(_, to)| to.symlink_metadata().is_ok())
    {
        return Err(InPlace::Failed(Error::io(
            "cannot keep the database at",
            to,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file of that name exists",
            ),
        )));
    }
    let partial = create_partial(aside, db).map_err(InPlace::Failed)?;
    let copied = (|| -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new().write(true).open(&*partial)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            // `read_at`: the descriptor is never closed, nor its offset shared.
            let n = raw.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut out, &buf[..n])?;
            at += n as u64;
        }
        out.sync_all()?;
        // Linked, then the partial name removed: never over a file that
        // came meanwhile.
        std::fs::hard_link(&*partial, aside)?;
        let _ = std::fs::remove_file(&*partial);
        sync_dir(aside);
        Ok(())
    })();
    copied.map_err(|e| {
        let _ = std::fs::remove_file(&*partial);
        InPlace::Failed(Error::io("cannot keep the database at", aside, e))
    })
}

fn in_use(db: &Path) -> Error {
    Error::Busy {
        message: format!(
            "{} is in use by another process; stop it (litebridge serve) before restoring",
            db.display()
        ),
    }
}

/// Whether `a` and `b` are one file: one device and inode, so a hard link
/// is seen too (review 180: by their canonical paths, a backup given as a
/// hard link of the database was copied over it without its log).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `(the database, the companion's kind)` when `path` is a companion
/// (`-wal`, `-shm`, `-journal`) of a database file that exists beside it.
fn companion_of(path: &Path) -> Option<(PathBuf, &'static str)> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    COMPANIONS.iter().find_map(|suffix| {
        let main = bytes.strip_suffix(suffix.as_bytes())?;
        let main = PathBuf::from(std::ffi::OsStr::from_bytes(main));
        std::fs::metadata(&main)
            .is_ok_and(|m| m.is_file())
            .then(|| (main, suffix.trim_start_matches('-')))
    })
}

/// `db` and each companion of it that exists, moved to the same names
/// beside `aside`; the moves made, as (from, to). Nothing is moved while
/// any aside name is taken (a companion left there would be taken for the
/// database's), and a move that fails half way is undone (or the error
/// says where the database is).
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

/// Undoes the moves [`move_aside`] made, never over a file that came to
/// a name meanwhile (linked, then the aside name removed).
fn move_back(moved: &[(PathBuf, PathBuf)]) -> std::io::Result<()> {
    for (back, from) in moved {
        std::fs::hard_link(from, back)?;
        std::fs::remove_file(from)?;
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

    fn database(path: &Path, mode: &str, value: &str) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = {mode}; CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('{value}');"
        ))
        .unwrap();
    }

    fn values(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut q = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Another program with the database open: it reads, then waits for a
    /// line, reads again and writes.
    fn holder(
        db: &Path,
    ) -> (
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
        String,
    ) {
        use std::io::BufRead as _;
        let mut other = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)\n\
                 print(c.execute('SELECT v FROM t').fetchone()[0], flush=True)\n\
                 sys.stdin.readline()\n\
                 print(c.execute('SELECT v FROM t').fetchone()[0], flush=True)\n\
                 c.execute(\"INSERT INTO t VALUES ('late')\")\n\
                 print('wrote', flush=True)",
            )
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(other.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        (other, out, first.trim().to_owned())
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join("app.db"),
            dir.join(".app.db.partial"),
            dir.join("app.db.replaced"),
        )
    }

    /// Found by two hostile reviews: the restored copy was renamed over the
    /// database, and a program holding the old file (opened before, or
    /// waiting on its lock) then opened the `-wal` beside the restored
    /// file by its name and wrote into it. The restore is now one
    /// transaction in the database's own file: such a program reads the
    /// restored content after it, and its writes land there, whole.
    #[test]
    fn a_restore_is_one_transaction_that_a_program_with_the_database_open_sees() {
        use std::io::{BufRead as _, Write as _};
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (db, partial, aside) = paths(dir.path());
        database(&db, "DELETE", "old");
        database(&partial, "DELETE", "restored");
        let inode = std::fs::metadata(&db).unwrap().ino();
        let (mut other, out, first) = holder(&db);
        assert_eq!(first, "old");
        assert!(place(&partial, &db, &aside).unwrap());
        assert_eq!(std::fs::metadata(&db).unwrap().ino(), inode, "not in place");
        other.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let rest: Vec<String> = out.lines().map(Result::unwrap).collect();
        let status = other.wait().unwrap();
        assert!(status.success(), "{rest:?}");
        assert_eq!(rest, ["restored", "wrote"]);
        assert_eq!(values(&db), ["restored", "late"]);
        assert_eq!(values(&aside), ["old"]);
        assert!(!partial.exists());
        let report = crate::db::backup::check_file_bounded(&db).unwrap();
        assert!(report.ok, "{report:?}");
    }

    /// A WAL database another program has open cannot be restored (its
    /// connection keeps a lock for as long as it is open): refused,
    /// nothing changed.
    #[test]
    fn a_wal_database_another_program_has_open_is_not_restored() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let (db, partial, aside) = paths(dir.path());
        database(&db, "WAL", "old");
        database(&partial, "DELETE", "restored");
        let (mut other, _out, _) = holder(&db);
        let e = place(&partial, &db, &aside).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Busy, "{e}");
        assert!(e.to_string().contains("in use"), "{e}");
        other.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(other.wait().unwrap().success());
        assert_eq!(values(&db), ["old", "late"]);
        assert!(!aside.exists());
        assert!(partial.exists(), "the caller removes it");
    }

    /// Found by a hostile review: a database whose schema is damaged (what
    /// `serve --recover` is for) could not be restored in place, and the
    /// restore failed: the pragmas it ran read the schema.
    #[test]
    fn a_database_whose_schema_is_damaged_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let (db, partial, aside) = paths(dir.path());
        database(&db, "WAL", "old");
        Connection::open(&db)
            .unwrap()
            .execute_batch(
                "PRAGMA writable_schema = ON;
                 UPDATE sqlite_schema SET sql = 'CREATE TABLE t(' WHERE name = 't';",
            )
            .unwrap();
        let broken = Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(broken.to_string().contains("malformed"), "{broken}");
        database(&partial, "DELETE", "restored");
        assert!(place(&partial, &db, &aside).unwrap());
        assert_eq!(values(&db), ["restored"]);
        assert!(aside.exists());
    }

    /// Found by a hostile review: the copy kept aside was made through
    /// SQLite, which copies as many pages as the header says: a header
    /// whose page count a flipped bit made smaller kept only those pages,
    /// and the restore then cut the rest from the file. The copy is now of
    /// the file's bytes.
    #[test]
    fn the_copy_kept_aside_is_every_byte_of_the_file_whatever_its_header_says() {
        let dir = tempfile::tempdir().unwrap();
        let (db, partial, aside) = paths(dir.path());
        database(&db, "DELETE", "old");
        Connection::open(&db)
            .unwrap()
            .execute_batch(
                "CREATE TABLE big(b); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL \
                 SELECT i + 1 FROM n WHERE i < 50) INSERT INTO big SELECT randomblob(4000) FROM n;",
            )
            .unwrap();
        let mut bytes = std::fs::read(&db).unwrap();
        assert!(bytes.len() > 40 * 4096);
        // The page count (bytes 28..32), trusted while bytes 92..96 match
        // the change counter (24..28): now 2.
        bytes[28..32].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(bytes[92..96], bytes[24..28]);
        std::fs::write(&db, &bytes).unwrap();
        database(&partial, "DELETE", "restored");
        assert!(place(&partial, &db, &aside).unwrap());
        assert_eq!(values(&db), ["restored"]);
        assert!(
            std::fs::read(&aside).unwrap() == bytes,
            "the copy aside is not the file"
        );
    }

    /// Found by a hostile review: a damaged file is moved aside, not
    /// replaced in place, and a program that had it open would then open a
    /// log beside the restored file by its name: refused while another
    /// program has it open, nothing moved.
    #[test]
    fn a_damaged_file_another_program_has_open_is_not_moved() {
        use std::io::{BufRead as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let (db, partial, aside) = paths(dir.path());
        std::fs::write(&db, vec![7u8; 8192]).unwrap();
        database(&partial, "DELETE", "restored");
        let mut other = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sys\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\nsys.stdin.readline()")
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(other.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let e = place(&partial, &db, &aside).unwrap_err();
        other.stdin.take().unwrap().write_all(b"\n").unwrap();
        other.wait().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::Busy, "{e}");
        assert_eq!(std::fs::read(&db).unwrap(), vec![7u8; 8192]);
        assert!(!aside.exists());
        // Once it is closed, the damaged file is moved aside.
        assert!(place(&partial, &db, &aside).unwrap());
        assert_eq!(values(&db), ["restored"]);
        assert_eq!(std::fs::read(&aside).unwrap(), vec![7u8; 8192]);
    }
}
