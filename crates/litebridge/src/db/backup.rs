//! Online backups and integrity checks.
//!
//! A backup copies the database with SQLite's online backup API from a
//! dedicated read-only connection that holds one read transaction for the
//! whole copy. In WAL mode a reader never blocks the writer, so writes go on
//! during the copy, and because the snapshot is fixed the copy never restarts
//! however many commits happen meanwhile: the backup is the database exactly
//! as of its first step. Pages are copied in steps so progress can be shown.
//!
//! The copy is written to a new file of its own beside `FILE` (created
//! exclusively, under a random name), verified with `quick_check`, and only
//! then moved to `FILE`, so a crash or a failed verification never leaves a
//! half-written file under the backup's name, and no existing file is ever
//! opened for writing. The copy holds an advisory lock (`flock`) on its
//! partial file while it is written; the next backup or restore in that
//! directory removes every partial file (`.NAME.TAG.partial`, whatever the
//! name: scheduled backups get a new one each time) whose lock it can take
//! (its process was killed mid-copy, and the kernel let the lock go) once
//! it is a minute old, with the `-journal` its copy left: a crash does not
//! leave a database-sized file behind for good. This process's own copies
//! are skipped without being opened. Where the file system has no `flock`,
//! copies go on unlocked and nothing is removed; on NFS, where Linux builds
//! `flock` from `fcntl` locks, a copy whose SQLite connection closes gives
//! its lock up early, and another host may remove it past the minute.
//!
//! A destination is refused when it is a symbolic link, when it is the
//! database itself or its `-wal`, `-shm` or `-journal` (by name or as the same
//! file through another link), when its name ends like one of those (another
//! database's log or index), when another process has it open (SQLite's locks
//! on it, or `/proc/<pid>/fd`), and when a `-wal`, `-shm` or `-journal` lies
//! beside it: each is a database
//! in use (or one with a log still to apply), and a file swapped in under it
//! would be served, or patched with the old log, by whoever has it open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

pub(crate) use crate::db::open::Bound;
use crate::db::open::{Findings, Watch, check_halting, is_damage};

/// Whether `halt` is given and set.
fn halted(halt: Option<&Arc<AtomicBool>>) -> bool {
    halt.is_some_and(|h| h.load(Ordering::Relaxed))
}
use crate::error::{Error, Result};

/// Pages copied per backup step.
const STEP_PAGES: i32 = 1024;

/// Progress of a running backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupProgress {
    /// Pages copied so far.
    pub copied: u64,
    /// Pages in the database.
    pub total: u64,
}

/// What a backup produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The verified backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Pages copied.
    pub pages: u64,
    /// How long the copy and the verification took.
    pub elapsed: Duration,
    /// Why the verification did not read the whole copy, if it did not
    /// (its time ran out on a table's costly generated columns, or one
    /// could not be computed): what it read was sound.
    pub partly_verified: Option<String>,
}

/// Copies the database file at `source` to `dest` while other connections
/// (in this process or another) go on reading and writing, verifies the copy
/// with `quick_check`, and moves it into place. `progress` is called after
/// each step of 1024 pages.
///
/// An existing `dest` is refused with [`IfExists::Refuse`]. With
/// [`IfExists::Replace`] it is replaced only if it is an earlier copy: a
/// regular file holding a SQLite database (or empty) that no process has
/// open, carrying the source's id if the source has one (see
/// [`IfExists::Replace`]). A file of anything else, a symbolic link, the database itself or
/// its `-wal`, `-shm` or `-journal` (under any name), and a file with one of
/// those companions beside it are refused (see the module documentation).
///
/// # Errors
/// [`Error::Open`] for a bad source or a refused destination (the reason
/// says which rule); [`Error::Corrupt`] when the copy fails verification
/// (then nothing is left at `dest`).
pub fn backup_file(
    source: &Path,
    dest: &Path,
    if_exists: IfExists,
    busy_timeout: Duration,
    mut progress: impl FnMut(BackupProgress),
) -> Result<BackupReport> {
    copy_verified(source, dest, if_exists, busy_timeout, None, &mut progress)
}

/// What [`backup_file`] does when its destination exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Refuse: the backup only ever creates a new file.
    Refuse,
    /// Replace an earlier copy: a SQLite database (or an empty file) that
    /// no process has open, and, when the source has the id litebridge
    /// draws when it first migrates a database, one of its backups (marked
    /// `backup_of` that id); from a source without the id, a file without
    /// marks. Any other file is refused.
    Replace,
}

/// [`backup_file`], told each step through `progress`, stopped at the next
/// step or during the verification once `halt` is set (a database
/// interrupted for good stops its backup: nothing is left at `dest`).
pub(crate) fn copy_verified(
    source: &Path,
    dest: &Path,
    existing: IfExists,
    busy_timeout: Duration,
    halt: Option<&Arc<AtomicBool>>,
    progress: &mut impl FnMut(BackupProgress),
) -> Result<BackupReport> {
    let started = Instant::now();
    check_destination(source, dest, existing)?;
    let partial = create_partial(dest, source)?;
    let result = copy_into(source, &partial, Role::Backup, busy_timeout, halt, progress);
    let (pages, partly_verified) = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // Checked again right before the move: a database may have appeared there.
    let placed = check_destination(source, dest, existing).and_then(|()| match existing {
        IfExists::Replace => std::fs::rename(&partial, dest)
            .map_err(|e| Error::io("cannot move the backup to", dest, e)),
        // A hard link fails if the name exists: no window to replace anything.
        IfExists::Refuse => std::fs::hard_link(&partial, dest)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => exists_error(dest),
                _ => Error::io("cannot move the backup to", dest, e),
            })
            .map(|()| {
                let _ = std::fs::remove_file(&partial);
            }),
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    // The backup's name outlives a power loss, as its bytes do.
    sync_dir(dest);
    let bytes = std::fs::metadata(dest).map_or(0, |m| m.len());
    Ok(BackupReport {
        path: dest.to_path_buf(),
        bytes,
        pages,
        elapsed: started.elapsed(),
        partly_verified,
    })
}

/// Syncs the directory holding `path`, so a rename or link there outlives
/// a power loss.
pub(crate) fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Copies `source` into the empty file `partial` and verifies the copy;
/// stops (with [`halted_error`](crate::db::guard::halted_error)) at the
/// next step, or during the verification, once `halt` is set.
pub(crate) fn copy_into(
    source: &Path,
    partial: &Path,
    role: Role,
    busy_timeout: Duration,
    halt: Option<&Arc<AtomicBool>>,
    progress: &mut impl FnMut(BackupProgress),
) -> Result<(u64, Option<String>)> {
    // Before this process's first connection: SQLite takes its allocator
    // once, and a database opened later enforces its memory budget by it.
    crate::db::heap::install();
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    src.busy_timeout(busy_timeout)?;
    // Pin one snapshot for the whole copy (see the module documentation).
    src.execute_batch("BEGIN")?;
    src.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })?;
    let result = (|| -> Result<(u64, Option<String>)> {
        let mut dst = Connection::open(partial).map_err(|e| Error::Open {
            path: partial.to_path_buf(),
            reason: Error::from(e).to_string(),
        })?;
        let pages = {
            let b = Backup::new(&src, &mut dst)?;
            loop {
                let step = b.step(STEP_PAGES)?;
                let p = b.progress();
                let total = u64::try_from(p.pagecount).unwrap_or(0);
                let remaining = u64::try_from(p.remaining).unwrap_or(0);
                progress(BackupProgress {
                    copied: total - remaining,
                    total,
                });
                if halted(halt) {
                    return Err(crate::db::guard::halted_error());
                }
                match step {
                    rusqlite::backup::StepResult::Done => break total,
                    rusqlite::backup::StepResult::More => {}
                    // Only possible for locks held by another process on the
                    // destination; wait a little and go on.
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        };
        // The copy is whole: the source's snapshot may go (held through the
        // check, it kept the log from being checkpointed past it).
        let _ = src.execute_batch("COMMIT");
        // The copy is a self-contained file: no WAL to carry around with it.
        let _ = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        });
        mark(&dst, role, source).map_err(|e| Error::Open {
            path: partial.to_path_buf(),
            reason: format!("the copy's marks (litebridge_meta) could not be written: {e}"),
        })?;
        let found = check_halting(&mut dst, false, 10, Bound::Bounded, halt).map_err(|e| {
            if is_damage(&e) || halted(halt) {
                Error::from(e)
            } else {
                // Said as such, not as the bare SQL error (review 218).
                Error::CheckFailed {
                    path: partial.to_path_buf(),
                    detail: format!(
                        "{CHECK_COULD_NOT_RUN} ({}), so the backup is not verified and not kept",
                        Error::from(e)
                    ),
                }
            }
        })?;
        if halted(halt) {
            return Err(crate::db::guard::halted_error());
        }
        if let Some(why) = &found.unfinished {
            tracing::warn!(backup = %partial.display(), "the backup's verification was cut short: {why}");
        }
        let problems = found.damage;
        if !problems.is_empty() {
            return Err(Error::Corrupt {
                path: partial.to_path_buf(),
                detail: format!("the backup failed verification: {}", problems.join("; ")),
            });
        }
        dst.close().map_err(|(_, e)| Error::from(e))?;
        Ok((pages, found.unfinished))
    })();
    let _ = src.execute_batch("COMMIT");
    result
}

/// The companions SQLite keeps beside a database file.
pub(crate) const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// What a copy is: a backup (marked as the backup of its source's id, and
/// of its source's path) or a restored database (its backup marks removed:
/// it is served, and no backup of anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Backup,
    Restore,
}

/// Writes `role`'s marks into a copy that has litebridge's marks table:
/// for a backup, whose it is (`backup_of`, the id of `source`) and where
/// that database was (`backup_source`, [`source_mark`]: a restored copy, a
/// staging database, carries its source's id, and a missing database has
/// none, so the id alone cannot tell whose a backup is; see
/// `backups::list_of`).
fn mark(copy: &Connection, role: Role, source: &Path) -> rusqlite::Result<()> {
    let has_table: bool = copy.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_schema WHERE name = 'litebridge_meta' AND type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(());
    }
    copy.execute_batch(
        "DELETE FROM main.litebridge_meta WHERE key IN ('backup_of', 'backup_source')",
    )?;
    match role {
        Role::Backup => {
            copy.execute_batch(
                "INSERT INTO main.litebridge_meta(key, value)
                     SELECT 'backup_of', value FROM main.litebridge_meta WHERE key = 'database_id'",
            )?;
            copy.execute(
                "INSERT INTO main.litebridge_meta(key, value)
                     SELECT 'backup_source', ?1 WHERE EXISTS
                         (SELECT 1 FROM main.litebridge_meta WHERE key = 'database_id')",
                [source_mark(source)],
            )?;
            Ok(())
        }
        Role::Restore => Ok(()),
    }
}

/// How a database's place is written in its backups' `backup_source`, and
/// compared: its path with every link on the way followed and `.` and `..`
/// taken as they lead, as the kernel would (for a file that exists, its
/// canonical path), however it is reached (a relative path, `..`, a link,
/// a linked directory: review 183). Of a database that is missing, the
/// path it would have, its links followed as far as they exist (a link to
/// a volume that is not mounted is still the place of the file it names:
/// review 184).
pub(crate) fn source_mark(db: &Path) -> String {
    use std::path::Component;
    let start = std::path::absolute(db).unwrap_or_else(|_| db.to_path_buf());
    // What is left to walk, the next component last.
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let push = |rest: &mut Vec<std::ffi::OsString>, path: &Path| {
        for c in path.components().rev() {
            rest.push(c.as_os_str().to_owned());
        }
    };
    push(&mut rest, &start);
    let mut done = PathBuf::from("/");
    // At most 40 links, as Linux follows.
    let mut links = 0;
    while let Some(c) = rest.pop() {
        match Path::new(&c).components().next() {
            Some(Component::RootDir | Component::Prefix(_)) => done = PathBuf::from(&c),
            Some(Component::ParentDir) => {
                done.pop();
            }
            Some(Component::Normal(name)) => {
                let next = done.join(name);
                match std::fs::read_link(&next) {
                    Ok(target) if links < 40 => {
                        links += 1;
                        if target.is_absolute() {
                            done = PathBuf::from("/");
                        }
                        push(&mut rest, &target);
                    }
                    _ => done = next,
                }
            }
            Some(Component::CurDir) | None => {}
        }
    }
    done.to_string_lossy().into_owned()
}

/// What litebridge's marks say of the database at `path`: the id drawn at
/// its migration (`database_id`, which every copy carries) and, on a
/// backup, the id of the database it is a backup of (`backup_of`, written
/// into the copy, removed from a restored or served one). Neither when it
/// has no `litebridge_meta` table.
#[derive(Debug, Default, PartialEq)]
struct Marks {
    database_id: Option<String>,
    backup_of: Option<String>,
    backup_source: Option<String>,
}

/// Reads `path`'s [`Marks`]. `quiet` reads it as an immutable file: no lock
/// taken and no `-shm` made beside a file that is not litebridge's to touch
/// (what a log not yet applied holds is not seen, which only a database in
/// use has, and that is refused anyway); only a real table is read, with a
/// bound on the work (a view of that name would run anything). An error
/// (locked past its busy timeout, unreadable) is an error, never "no
/// marks": that would let the weaker rule decide.
fn marks(path: &Path, quiet: bool) -> Result<Marks> {
    use std::os::unix::ffi::OsStrExt as _;
    // Before this process's first connection: see `copy_into`.
    crate::db::heap::install();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let unreadable = |e: rusqlite::Error| Error::Open {
        path: path.to_path_buf(),
        reason: format!(
            "its marks (litebridge_meta) cannot be read to tell whether it is a copy of this database: {}",
            Error::from(e)
        ),
    };
    let mut conn = if quiet {
        // Bytes as they are (a name need not be UTF-8), but those a URI
        // reads otherwise, and any not ASCII, as %HH.
        let mut uri = String::from("file:");
        for &b in path.as_os_str().as_bytes() {
            if b.is_ascii() && !b.is_ascii_control() && !matches!(b, b'%' | b'?' | b'#') {
                uri.push(char::from(b));
            } else {
                uri.push_str(&format!("%{b:02x}"));
            }
        }
        uri.push_str("?immutable=1");
        Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
    } else {
        Connection::open_with_flags(path, flags)
    }
    .map_err(unreadable)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(unreadable)?;
    let table: Option<String> = conn
        .query_row(
            "SELECT type FROM main.sqlite_schema WHERE name = 'litebridge_meta'",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(unreadable)?;
    match table.as_deref() {
        None => return Ok(Marks::default()),
        Some("table") => {}
        Some(_) => {
            return Err(Error::Open {
                path: path.to_path_buf(),
                reason:
                    "its litebridge_meta is not a table: it is no database or copy of litebridge's"
                        .into(),
            });
        }
    }
    // A table of the usual shape answers in a few steps.
    conn.progress_handler(10_000, Some(|| true))
        .map_err(unreadable)?;
    let read = |key: &str| {
        conn.query_row(
            "SELECT value FROM main.litebridge_meta WHERE key = ?1",
            [key],
            |r| r.get::<_, String>(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(unreadable)
    };
    Ok(Marks {
        database_id: read("database_id")?,
        backup_of: read("backup_of")?,
        backup_source: read("backup_source")?,
    })
}

/// The id of the database at `path` (`database_id`, read through a
/// read-only connection, its log included): `Ok(None)` for one without.
///
/// # Errors
/// The marks cannot be read (locked past the busy timeout, damaged).
pub(crate) fn read_database_id(path: &Path) -> Result<Option<String>> {
    marks(path, false).map(|m| m.database_id)
}

/// Whose backup the file at `path` says it is, read as an immutable file:
/// the id of its database (`backup_of`; for a copy made before backups
/// were marked, the `database_id` it carries: review 187) and its place
/// (`backup_source`); `None`s for a copy of a database without an id, a
/// place missing from one made before places were marked.
///
/// # Errors
/// The marks cannot be read.
pub(crate) fn backup_marks(path: &Path) -> Result<(Option<String>, Option<String>)> {
    marks(path, true).map(|m| (m.backup_of.or(m.database_id), m.backup_source))
}

/// Whether the file at `path` starts with SQLite's header.
fn is_sqlite_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}

fn exists_error(dest: &Path) -> Error {
    Error::Open {
        path: dest.to_path_buf(),
        reason:
            "a file of that name exists already; a backup never replaces one here, give a new name"
                .into(),
    }
}

/// Refuses a destination that is a link, the database (or one of its
/// companions) under any name, or a database in use.
fn check_destination(source: &Path, dest: &Path, existing: IfExists) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::Open {
            path: dest.to_path_buf(),
            reason,
        })
    };
    let name = match dest.file_name() {
        Some(n) if !dest.as_os_str().is_empty() => n,
        _ => return refuse("the backup destination needs a file name".into()),
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = match std::fs::canonicalize(parent) {
        Ok(d) if d.is_dir() => d,
        Ok(_) => return refuse(format!("{} is not a directory", parent.display())),
        Err(e) => {
            return refuse(format!(
                "its directory {} cannot be used: {e}",
                parent.display()
            ));
        }
    };
    let dest_real = dir.join(name);
    // The database and its companions, by name (the companions need not exist yet).
    let source_real = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let mut own = vec![source_real.clone()];
    own.extend(COMPANIONS.iter().map(|c| with_suffix(&source_real, c)));
    if own.contains(&dest_real) {
        return refuse(format!(
            "it is the database being backed up, or its {}; choose another file",
            COMPANIONS.join("/")
        ));
    }
    let lossy = name.to_string_lossy();
    if let Some(c) = COMPANIONS.iter().find(|c| lossy.ends_with(*c)) {
        return refuse(format!(
            "a name ending in {c} is where SQLite keeps a database's log or index; \
             a backup is never written there"
        ));
    }
    match std::fs::symlink_metadata(&dest_real) {
        Ok(m) if m.file_type().is_symlink() => {
            return refuse(
                "it is a symbolic link; a backup is only written to a file of its own".into(),
            );
        }
        Ok(m) if m.is_dir() => {
            return refuse("the backup destination is a directory; give a file name".into());
        }
        Ok(m) => {
            if existing == IfExists::Refuse {
                return Err(exists_error(dest));
            }
            if !m.is_file() {
                return refuse("it is not a regular file".into());
            }
            // The same file under another name (a hard link). Asked first,
            // by its inode: reading the database's header would open and
            // close it, which drops this process's locks on it.
            if own.iter().any(|p| same_file(p, &m)) {
                return refuse("it is the database being backed up, under another name".into());
            }
            // Only an earlier copy is replaced: a mistyped destination
            // naming a document (or anything else) is not overwritten.
            if m.len() > 0 && !is_sqlite_file(&dest_real) {
                return refuse(
                    "it is not a SQLite database; a backup replaces only an earlier copy (or an empty file), choose another file".into(),
                );
            }
            // A database litebridge serves has an id, and its backups say
            // whose backup they are: then only one of its own backups is
            // replaced, not another database that happens to be idle (a
            // mistyped --to), nor a database restored from one of them (a
            // staging copy), which shares its id but is no backup.
            if m.len() > 0 {
                let ours = marks(source, false)?.database_id;
                let theirs = marks(&dest_real, true)?;
                let replaceable = match &ours {
                    // Of its place too, when the backup names one: a copy
                    // restored elsewhere (a staging database) carries its
                    // source's id (review 183).
                    Some(id) => {
                        theirs.backup_of.as_ref() == Some(id)
                            && theirs
                                .backup_source
                                .as_ref()
                                .is_none_or(|place| *place == source_mark(source))
                    }
                    // A source without marks replaces no marked file.
                    None => theirs == Marks::default(),
                };
                if !replaceable {
                    return refuse(
                        "it is not an earlier backup of this database (another database, a \
                         database restored from a backup, or a backup made before backups were \
                         marked); a backup replaces only its own earlier backups: choose \
                         another file, or remove it first"
                            .into(),
                    );
                }
            }
            // A database some process has open (in any journal mode): one
            // using it holds SQLite's locks; an idle one only has it open.
            if crate::db::ffi::locked_by_another_process(&dest_real) || open_elsewhere(&dest_real) {
                return refuse(
                    "another process has it open; a backup never replaces a file in use".into(),
                );
            }
        }
        Err(_) => {}
    }
    for c in COMPANIONS {
        let p = with_suffix(&dest_real, c);
        if std::fs::symlink_metadata(&p).is_ok() {
            return refuse(format!(
                "{} exists beside it: that is a database in use (or with a log still to apply), \
                 which a backup never replaces; choose another file",
                p.display()
            ));
        }
    }
    Ok(())
}

/// Whether another process has `path` open, as `/proc/<pid>/fd` shows
/// (processes of other users are not visible unless this one is root; where
/// there is no `/proc`, nothing is found).
pub(crate) fn open_elsewhere(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(target) = std::fs::metadata(path) else {
        return false;
    };
    let me = std::process::id().to_string();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|p| {
        let name = p.file_name();
        let Some(pid) = name.to_str() else {
            return false;
        };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
            })
        })
    })
}

fn same_file(path: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
}

/// The file a copy is written to before it is moved into place, locked
/// (`flock`) for as long as this value lives: the lock tells a copy being
/// written from one its killed process left behind.
#[derive(Debug)]
pub(crate) struct Partial {
    path: PathBuf,
    _lock: std::fs::File,
}

/// The partial files this process is writing, by device and inode: never
/// probed (closing a descriptor of a file drops this process's `fcntl`
/// locks on it, SQLite's among them), never removed.
static WRITING: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Ok(meta) = self._lock.metadata() {
            let id = file_id(&meta);
            crate::sync::lock(&WRITING).retain(|w| *w != id);
        }
    }
}

impl std::ops::Deref for Partial {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Partial {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// How old an unlocked partial file must be before it counts as abandoned:
/// a new one is locked right after it is created, and this covers the moment
/// between.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// Whether `file` is a partial copy's name (or one of its companions):
/// `.{name}.{16 hex digits}.partial[-journal|-wal|-shm]`. Returns the
/// partial file's own name and whether `file` is a companion.
fn partial_of(file: &str) -> Option<(&str, bool)> {
    let (own, companion) = match file.rsplit_once(".partial") {
        Some((head, "")) => (head, false),
        Some((head, s)) if COMPANIONS.contains(&s) => (head, true),
        _ => return None,
    };
    let (name, tag) = own.strip_prefix('.')?.rsplit_once('.')?;
    if name.is_empty() || tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((&file[..own.len() + ".partial".len()], companion))
}

/// Removes the partial copies in `dir` that no process is writing (their
/// lock is free) and that are older than [`ABANDONED_AFTER`], with their
/// companions; returns what was removed.
pub(crate) fn remove_abandoned(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let old = |p: &Path| {
        std::fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_AFTER)
    };
    let mut removed = Vec::new();
    let mut companions = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some((own, companion)) = file.to_str().and_then(partial_of) else {
            continue;
        };
        let path = entry.path();
        if companion {
            companions.push((path, dir.join(own)));
            continue;
        }
        // Never this process's own, never through a link, and only a file
        // whose lock is free (an error, where there is no `flock`, is not).
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ours = crate::sync::lock(&WRITING).contains(&file_id(&meta));
        if !ours
            && meta.is_file()
            && old(&path)
            && lock_is_free(&path, &meta)
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
    }
    // A companion goes with its partial file, or when nothing is left under
    // that name (not even a link).
    for (path, own) in companions {
        let gone = std::fs::symlink_metadata(&own).is_err();
        let file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if gone && file && old(&path) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Whether no process holds the lock of the regular file `path`, which was
/// `meta` when listed: opened without following a link and without waiting
/// (a FIFO swapped in meanwhile), and only if it is still that file.
fn lock_is_free(path: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let same = file
        .metadata()
        .is_ok_and(|now| now.is_file() && file_id(&now) == file_id(meta));
    same && file.try_lock().is_ok()
}

/// The permission bits a copy of the database `like` gets: its own (read
/// and write bits only), so that no copy is more readable than it; 0600
/// when it cannot be read.
pub(crate) fn mode_of(like: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(like).map_or(0o600, |m| m.permissions().mode() & 0o666)
}

/// Gives `file` the group of the database `like` (its group bits are for
/// that group); where that cannot be done, takes its group bits away.
fn same_group(file: &std::fs::File, like: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let gid = std::fs::metadata(like).map(|m| m.gid());
    let own = file.metadata()?.gid();
    match gid {
        Ok(gid) if gid == own => Ok(()),
        Ok(gid) if std::os::unix::fs::fchown(file, None, Some(gid)).is_ok() => Ok(()),
        _ => file.set_permissions(std::fs::Permissions::from_mode(mode & !0o070)),
    }
}

/// Creates the empty file the copy is written to, beside `dest`, under a
/// name nobody else has (exclusively: it cannot be an existing file or link),
/// and locks it. Abandoned partial copies beside it are removed first. It
/// is created readable by its owner only, then given the permission bits of
/// the database `like` (see [`mode_of`]), whatever the umask.
pub(crate) fn create_partial(dest: &Path, like: &Path) -> Result<Partial> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mode = mode_of(like);
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    for gone in remove_abandoned(parent) {
        tracing::warn!(
            "removed {}, a partial copy left by a backup or restore that did not finish",
            gone.display()
        );
    }
    for _ in 0..8 {
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(|e| Error::Internal {
            message: format!("no random bytes from the operating system: {e}"),
        })?;
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let partial = parent.join(format!(".{name}.{tag}.partial"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
        {
            Ok(file) => {
                if let Err(e) = file
                    .set_permissions(std::fs::Permissions::from_mode(mode))
                    .and_then(|()| same_group(&file, like, mode))
                {
                    let _ = std::fs::remove_file(&partial);
                    return Err(Error::io(
                        "cannot set the mode of the backup file",
                        &partial,
                        e,
                    ));
                }
                // Where there is no `flock`, the copy goes on unlocked (the
                // removal of abandoned ones finds no free lock there either).
                if let Err(e) = file.lock() {
                    tracing::warn!("cannot lock {}: {e}", partial.display());
                }
                if let Ok(meta) = file.metadata() {
                    crate::sync::lock(&WRITING).push(file_id(&meta));
                }
                return Ok(Partial {
                    path: partial,
                    _lock: file,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("cannot create the backup file", &partial, e)),
        }
    }
    Err(Error::Internal {
        message: "could not find a free name for the backup's partial file".into(),
    })
}

/// A time in UTC, ISO 8601 to the millisecond as JavaScript's
/// `toISOString` writes it (the seed system's statistics):
/// `2026-11-23T14:05:09.663Z`.
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let [y, m, d, h, mi, s] = utc_parts(t);
    let ms = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_millis();
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// A time in UTC for a file name (no separators): `20261123T140509Z`.
pub fn utc_file_stamp(t: std::time::SystemTime) -> String {
    let [y, m, d, h, mi, s] = utc_parts(t);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Year, month, day, hour, minute, second of `t` in UTC (the epoch for a
/// time before it).
fn utc_parts(t: std::time::SystemTime) -> [i64; 6] {
    let secs = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::calendar::civil_from_days(days);
    [y, m, d, rem / 3600, rem % 3600 / 60, rem % 60]
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The outcome of an integrity check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// True when the check ran and found no damage to the file (`problems`
    /// is empty); false also when it could not run
    /// ([`CheckReport::could_not_run`]).
    pub ok: bool,
    /// Damage reported by `quick_check` / `integrity_check` (first 100).
    pub problems: Vec<String>,
    /// Full-text and R-tree tables whose own index disagrees with their
    /// content, as the same check reports them: not damage to the file (it
    /// does not make `ok` false); `INSERT INTO t(t) VALUES('rebuild')`
    /// rebuilds the index of full-text table `t`.
    pub virtual_table_problems: Vec<String>,
    /// Values that break their column's declared type or `NOT NULL`
    /// (`NULL value in t.v`), as the same check reports them, where a
    /// schema change explains them: the column is a virtual generated one,
    /// or, for a NULL, its default is a constant that may hold NULL
    /// (`CAST(NULL AS INT)`; rows older than the column read it). The
    /// data's, not damage to the file (it does not make `ok` false):
    /// SQLite checks only a new column's own constraints. The same finding
    /// on another stored column is damage. Tables' `CHECK` constraints are
    /// not evaluated by a check.
    pub data_problems: Vec<String>,
    /// Foreign-key violations ([`CheckDepth::Full`] only), as `table rowid
    /// -> parent`, or why they could not be looked for (a parent key that
    /// is not unique: "foreign key mismatch"). The data's, not damage to
    /// the file (they do not make `ok` false): rows written with
    /// `db.foreign_keys` off, or under a schema a client changed.
    pub foreign_key_violations: Vec<String>,
    /// Why the check stopped before the end, if it did: its time ran out
    /// (the bounded checks of a restore and `--recover`), or computing the
    /// data failed (a generated column's `abs()` overflowing), which says
    /// nothing of damage. What it found until then is reported; `ok` is
    /// true when that was nothing, unless the check could not run at all.
    pub unfinished: Option<String>,
    /// How long the check took.
    pub elapsed: Duration,
}

impl CheckReport {
    /// Whether the check stopped before it read anything
    /// ([`CHECK_COULD_NOT_RUN`]) and found nothing else (a full check's
    /// foreign-key phase may still find damage, which is damage): the file
    /// is then neither sound nor damaged as far as anyone knows.
    pub fn could_not_run(&self) -> bool {
        self.problems.is_empty()
            && self
                .unfinished
                .as_deref()
                .is_some_and(|u| u.starts_with(CHECK_COULD_NOT_RUN))
    }
}

/// How thoroughly a database file is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckDepth {
    /// `PRAGMA quick_check`: every page and record, not the indexes'
    /// contents (seconds per GB).
    #[default]
    Quick,
    /// `PRAGMA integrity_check` and `foreign_key_check`: also that every
    /// index matches its table and every reference resolves.
    Full,
}

/// Checks the file at `path` from a read-only connection, as deep as
/// `depth` says. Never writes to it.
///
/// # Errors
/// [`Error::Open`] when the file cannot be opened or is not a database.
pub fn check_file(path: &Path, depth: CheckDepth) -> Result<CheckReport> {
    check_file_within(path, depth, Bound::Whole, None)
}

/// How [`CheckReport::unfinished`] begins when the check stopped before it
/// read anything (an error that is not damage: a schema SQLite cannot read).
pub const CHECK_COULD_NOT_RUN: &str = "the check could not run";

/// Why [`check_file`] refuses a file that is no SQLite database at all.
pub(crate) const NOT_A_DATABASE: &str = "the file is not a SQLite database";

/// [`check_file`] with `quick_check` bounded (see [`Bound::Bounded`]): for
/// the checks nobody asked for (a restore's of its backup, `--recover`'s),
/// which a table's costly generated columns must not hold up for hours. A
/// check cut short reports what it found until then, with a warning.
pub(crate) fn check_file_bounded(path: &Path) -> Result<CheckReport> {
    check_file_within(path, CheckDepth::Quick, Bound::Bounded, None)
}

/// [`check_file`] that stops once `halt` is set, answering
/// [`halted_error`](crate::db::guard::halted_error) (`Database::check`
/// after `Database::interrupt`).
pub(crate) fn check_file_within(
    path: &Path,
    depth: CheckDepth,
    bound: Bound,
    halt: Option<&Arc<AtomicBool>>,
) -> Result<CheckReport> {
    if halted(halt) {
        return Err(crate::db::guard::halted_error());
    }
    // Before this process's first connection (`serve --recover` checks the
    // file before it opens it): see `copy_into`.
    crate::db::heap::install();
    let full = depth == CheckDepth::Full;
    let started = Instant::now();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(Error::Open {
                path: path.to_path_buf(),
                reason: "it is a directory, not a file".into(),
            });
        }
        Ok(_) => {}
        Err(e) => {
            return Err(Error::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Open {
        path: path.to_path_buf(),
        reason: Error::from(e).to_string(),
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let header = conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0));
    if let Err(e) = header {
        // Not damage (its `-wal` or `-shm` cannot be opened, a full disk):
        // the file could not be checked, which is not a finding against it
        // (`recover` would have replaced a sound database for it).
        if !is_damage(&e) {
            return Err(Error::Open {
                path: path.to_path_buf(),
                reason: format!("cannot check it: {}", Error::from(e)),
            });
        }
        let e = Error::from(e);
        if matches!(e, Error::Corrupt { ref detail, .. } if detail.contains("not a database")) {
            return Err(Error::Open {
                path: path.to_path_buf(),
                reason: NOT_A_DATABASE.into(),
            });
        }
        return Ok(CheckReport {
            ok: false,
            problems: vec![e.to_string()],
            virtual_table_problems: Vec::new(),
            data_problems: Vec::new(),
            foreign_key_violations: Vec::new(),
            unfinished: None,
            elapsed: started.elapsed(),
        });
    }
    let found = check_halting(&mut conn, full, 100, bound, halt).unwrap_or_else(|e| {
        let damage = is_damage(&e);
        let line = Error::from(e).to_string();
        if damage {
            Findings {
                damage: vec![line],
                ..Findings::default()
            }
        } else {
            Findings {
                unfinished: Some(format!("{CHECK_COULD_NOT_RUN}: {line}")),
                ..Findings::default()
            }
        }
    });
    if halted(halt) {
        return Err(crate::db::guard::halted_error());
    }
    let (mut fk, mut damage) = (Vec::new(), Vec::new());
    if full {
        // Watched for `halt` as the check was (review 149: with many
        // foreign keys this phase took longer than the check).
        let stopped = Arc::default();
        let watch = Watch::start(&mut conn, None, halt, &stopped)?;
        let found = (|| -> rusqlite::Result<Vec<String>> {
            let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "{} rowid {} -> {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?
                        .map_or("?".into(), |v| v.to_string()),
                    r.get::<_, String>(2)?
                ))
            })?;
            rows.take(100).collect()
        })();
        if let Some(watch) = watch {
            watch.end(&mut conn)?;
        }
        if halted(halt) {
            return Err(crate::db::guard::halted_error());
        }
        fk = match found {
            Ok(fk) => fk,
            Err(e) if is_damage(&e) => {
                damage.push(Error::from(e).to_string());
                Vec::new()
            }
            // A schema whose foreign keys cannot be read ("foreign key
            // mismatch": the parent's key is not unique), which any `write`
            // key can make: the data's, not damage (review 198).
            Err(e) => vec![format!(
                "the foreign keys could not be checked: {}",
                Error::from(e)
            )],
        };
    }
    if let Some(why) = &found.unfinished {
        tracing::warn!(file = %path.display(), "the check was cut short: {why}");
    }
    let mut problems = found.damage;
    problems.append(&mut damage);
    // A check that could not run found nothing, and verified nothing
    // either: not ok (review 218: `admin.check` answered `ok: true`).
    let ran = !found
        .unfinished
        .as_deref()
        .is_some_and(|u| u.starts_with(CHECK_COULD_NOT_RUN));
    Ok(CheckReport {
        ok: problems.is_empty() && ran,
        problems,
        virtual_table_problems: found.virtual_tables,
        data_problems: found.data,
        foreign_key_violations: fk,
        unfinished: found.unfinished,
        elapsed: started.elapsed(),
    })
}
