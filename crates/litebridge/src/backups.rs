//! Scheduled backups and recovery from them.
//!
//! Backups go to one directory as `<db file name>.<UTC time>.backup`. Each is
//! written with the online backup API and verified before it gets its name
//! (see [`Database::backup_to`]); the newest is recorded in `LATEST`, and the
//! oldest beyond `keep` are deleted. Recovery never trusts a name: it checks
//! the candidates newest first and uses the first that passes `quick_check`.
//!
//! A name is not an owner either: two databases of one file name (two
//! services' `app.db`) may share a directory (reviews 180-187 found each
//! rule below wanting in turn). Each backup of a database litebridge serves
//! says whose it is: the database's id (`backup_of`) and its place
//! (`backup_source`, the file's path with every link followed, however it
//! was reached). What a backup is to a database (`Identity::owns`):
//! - marked with a place: its own when the place and the id are its own (a
//!   copy restored elsewhere, a staging database, carries its source's id;
//!   a database moved to another place starts a set of its own, the older
//!   one reached with `litebridge restore --from FILE` and pruned by hand);
//! - marked by id only (made before places were marked; a copy made before
//!   backups were marked at all carries its `database_id`): counted as its
//!   own by id, but neither pruned nor restored on its own, since a copy
//!   restored elsewhere shares the id (review 188): `restore --from` takes
//!   one, and they are removed by hand once newer ones exist;
//! - unmarked (a copy of a database without an id, opened by the library
//!   without litebridge's stores): a database without an id's, by name.
//!
//! A database counts its own ([`list_of`]), prunes its own marked with its
//! place (or unmarked, without an id), and nothing while its id cannot be
//! read. Recovery restores the same (`recovery_candidates`); of a database
//! whose id cannot be read (lost, emptied, damaged), only what can be told
//! as its own without it: its place's backups when they are all of one
//! database, or unmarked ones when no backup of its name is marked.
//! Otherwise it names the newest and asks for `restore --from`: a lost
//! database cannot tell another machine's database at the same path from
//! one made before it at its place.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::db::{
    BackupReport, Database, RestoreReport, check_file_bounded, restore_file, utc_file_stamp,
};
use crate::error::{Error, Result};

/// Where and how often backups are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPolicy {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// Between two scheduled backups.
    pub interval: Duration,
    /// Backups kept; older ones are deleted. At least 1.
    pub keep: usize,
}

fn prefix(db: &Path) -> String {
    format!(
        "{}.",
        db.file_name().map_or_else(
            || "litebridge.db".into(),
            |n| n.to_string_lossy().into_owned()
        )
    )
}

/// The backups of `db` in `dir`, newest first.
pub fn list(dir: &Path, db: &Path) -> Vec<PathBuf> {
    let prefix = prefix(db);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(&prefix))
                        .is_some_and(is_scheduled_name)
                })
                .collect()
        })
        .unwrap_or_default();
    // The UTC stamp in the name sorts in time order; a second backup within
    // one second is `<stamp>.<n>.backup` and comes after `<stamp>.backup`.
    // A stamp in the future (taken while the clock ran ahead, then set
    // right) counts as older than every other: by name it would stay the
    // newest for as long as the clock had run ahead, be what `--recover`
    // restores, and have every fresh backup pruned for it.
    let soon = utc_file_stamp(SystemTime::now() + Duration::from_secs(300));
    found.sort_by_cached_key(|p| {
        let (stem, n) = order(p);
        // `<db>.<stamp>`: the stamp is its last 16 characters.
        let stamp = stem
            .get(stem.len().saturating_sub(16)..)
            .unwrap_or_default();
        std::cmp::Reverse((stamp <= soon.as_str(), stem.clone(), n))
    });
    found
}

/// The backups of the database at `db` in `dir`, newest first: those of
/// its file name ([`list`]) that are its own by their marks (see the
/// module's notes); never one whose marks cannot be read.
pub fn list_of(dir: &Path, db: &Path) -> Vec<PathBuf> {
    judged_by(&Identity::of(db), dir, db)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// [`list_of`] by `me` (read once), each with what it is to `me`.
fn judged_by(me: &Identity, dir: &Path, db: &Path) -> Vec<(PathBuf, Owned)> {
    // Marks that cannot be read tell nothing of whose it is (review 187):
    // never taken for its own.
    let all: Vec<(PathBuf, Owned)> = list(dir, db)
        .into_iter()
        .filter_map(|p| me.owns(&p).map(|owned| (p, owned)))
        .collect();
    // A database that cannot say its id, with backups of its place: those,
    // never unmarked ones, which are a database without an id's of that
    // name (review 185).
    let placed = matches!(me.id, Id::Unknown) && all.iter().any(|(_, o)| *o == Owned::Placed);
    all.into_iter()
        .filter(|(_, o)| match o {
            Owned::No => false,
            Owned::Unmarked => !placed,
            Owned::Placed | Owned::IdOnly => true,
        })
        .collect()
}

/// The newest of the database at `db`'s backups in `dir` ([`list_of`]),
/// found reading the marks of as few as it takes.
pub fn newest_of(dir: &Path, db: &Path) -> Option<PathBuf> {
    list_of(dir, db).into_iter().next()
}

/// What tells a database's backups from others' of the same file name.
struct Identity {
    /// Its place, as its backups' `backup_source` says it.
    place: String,
    id: Id,
}

/// A database's id, as far as it can be read.
enum Id {
    Is(String),
    /// It has none: the library's own database, without litebridge's
    /// stores (its backups are unmarked).
    None,
    /// It cannot be read: missing, emptied, damaged, or locked.
    Unknown,
}

impl Identity {
    fn of(db: &Path) -> Identity {
        let id = if is_empty_file(db) {
            Id::Unknown
        } else {
            match crate::db::read_database_id(db) {
                Ok(Some(id)) => Id::Is(id),
                Ok(None) => Id::None,
                Err(_) => Id::Unknown,
            }
        };
        Identity {
            place: crate::db::source_mark(db),
            id,
        }
    }

    /// Whether the backup at `p` is this database's (`None` when its marks
    /// cannot be read):
    /// - marked with a place: that place, and this database's id, or any
    ///   id while its own cannot be read (`recovery_candidates` then asks
    ///   which, when they are two); never a database without an id's (one
    ///   that took a served one's place does not prune its backups:
    ///   review 184);
    /// - marked by id only: that id, or any while this one's cannot be read
    ///   (`recovery_candidates` then asks which);
    /// - unmarked: a database without an id's (or one that cannot say).
    fn owns(&self, p: &Path) -> Option<Owned> {
        let (of, place) = crate::db::backup_marks(p).ok()?;
        let id_is = |of: &Option<String>| match &self.id {
            Id::Is(id) => of.as_ref() == Some(id),
            Id::None => false,
            Id::Unknown => true,
        };
        Some(match (&of, place) {
            (_, Some(place)) if place == self.place && id_is(&of) => Owned::Placed,
            (Some(_), None) if id_is(&of) => Owned::IdOnly,
            (None, None) if !matches!(self.id, Id::Is(_)) => Owned::Unmarked,
            _ => Owned::No,
        })
    }
}

/// What a backup is to a database, by its marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    /// Another database's.
    No,
    /// Its own, marked with its place.
    Placed,
    /// Its own by id, made before places were marked.
    IdOnly,
    /// Unmarked: a database without an id's, by name.
    Unmarked,
}

/// Whether `rest` (a file name after `<db>.`) is `<stamp>[.<n>].backup`,
/// `<stamp>` as [`utc_file_stamp`] writes it: only that. A looser match
/// (anything ending in `.backup`) took the backups of `app.db.old`, kept
/// in the same directory, for `app.db`'s: newest by their names, they were
/// what `--recover` restored, and `app.db`'s own were pruned for them.
fn is_scheduled_name(rest: &str) -> bool {
    let Some(stem) = rest.strip_suffix(".backup") else {
        return false;
    };
    let (stamp, n) = match stem.split_once('.') {
        Some((stamp, n)) => (stamp, Some(n)),
        None => (stem, None),
    };
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    stamp_ok
        && n.is_none_or(|n| !n.is_empty() && n.len() <= 19 && n.bytes().all(|c| c.is_ascii_digit()))
}

/// `(stamp, n)` of `<db>.<stamp>[.<n>].backup`.
fn order(p: &Path) -> (String, u64) {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = name.trim_end_matches(".backup");
    match stem.rsplit_once('.') {
        Some((stamp, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (stamp.to_owned(), n.parse().unwrap_or(u64::MAX))
        }
        _ => (stem.to_owned(), 0),
    }
}

/// The newest backup in `dir` that recovery would restore over `db` (its
/// own, as the module's notes tell) and that passes `quick_check` now,
/// with its age; `None` also when recovery would ask which.
pub fn newest_verified(dir: &Path, db: &Path) -> Option<(PathBuf, Duration)> {
    verified_first(recovery_candidates(dir, db).ok()?)
}

/// The backups recovery may restore over the database at `db`, newest
/// first: its own ([`list_of`]) when its id can be read. When it cannot
/// (lost, emptied, damaged), only what can be told as its own without it:
/// the backups of its place, when they are all of one database; with none
/// there, unmarked ones, when no backup of its name is marked (a database
/// without an id's). Anything else the operator chooses (review 186: a
/// set of another place's backups made before places were marked was
/// restored over a database lost before its first backup).
///
/// # Errors
/// [`Error::Unavailable`] naming the newest backups that cannot be told
/// apart, and `restore --from`.
fn recovery_candidates(dir: &Path, db: &Path) -> Result<Vec<PathBuf>> {
    let me = Identity::of(db);
    let judged = judged_by(&me, dir, db);
    let older = |judged: &[(PathBuf, Owned)]| {
        judged
            .iter()
            .find(|(_, o)| *o == Owned::IdOnly)
            .map(|(p, _)| p.clone())
    };
    if !matches!(me.id, Id::Unknown) {
        // Its own marked with its place (or, without an id, unmarked ones);
        // those made before places were marked may be a staging copy's,
        // which carries the same id (review 188): asked for.
        let own: Vec<PathBuf> = judged
            .iter()
            .filter(|(_, o)| matches!(o, Owned::Placed | Owned::Unmarked))
            .map(|(p, _)| p.clone())
            .collect();
        if own.is_empty()
            && let Some(newest) = older(&judged)
        {
            return Err(Error::Unavailable {
                what: "recovery",
                reason: format!(
                    "{} holds backups of {} made before backups were marked with their \
                     database's place (the newest: {}), which a copy of it restored elsewhere \
                     would share; restore one with `litebridge restore --from FILE`",
                    dir.display(),
                    db.display(),
                    newest.display()
                ),
            });
        }
        return Ok(own);
    }
    let ask = |why: String| Error::Unavailable {
        what: "recovery",
        reason: format!(
            "{why}, and {} cannot say which is its own (its id cannot be read); restore one \
             with `litebridge restore --from FILE`",
            db.display()
        ),
    };
    // Of its place: the newest of each database's.
    let mut newest_of_each: Vec<(String, &PathBuf)> = Vec::new();
    for (p, o) in &judged {
        if *o == Owned::Placed
            && let Ok((Some(of), _)) = crate::db::backup_marks(p)
            && !newest_of_each.iter().any(|(id, _)| *id == of)
        {
            newest_of_each.push((of, p));
        }
    }
    let named = |paths: &mut dyn Iterator<Item = &PathBuf>| {
        paths
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match newest_of_each.len() {
        0 => {}
        1 => {
            return Ok(judged
                .into_iter()
                .filter(|(_, o)| *o == Owned::Placed)
                .map(|(p, _)| p)
                .collect());
        }
        n => {
            // Two databases at one place one after the other (made afresh)
            // cannot be told from two at once (two machines'
            // `/data/app.db` sharing the directory: review 185).
            return Err(ask(format!(
                "{} holds backups of {n} databases at its place (the newest of each: {})",
                dir.display(),
                named(&mut newest_of_each.iter().map(|(_, p)| *p))
            )));
        }
    }
    if let Some(newest) = older(&judged) {
        return Err(ask(format!(
            "{} holds backups of that name made before backups were marked with their \
             database's place (the newest: {})",
            dir.display(),
            newest.display()
        )));
    }
    // Unmarked ones are a database without an id's: this one's only while
    // no backup of its name says whose it is (review 187).
    let marked = list(dir, db).into_iter().find(|p| {
        // One whose marks cannot be read says nothing (review 188).
        crate::db::backup_marks(p).is_ok_and(|(of, place)| of.is_some() || place.is_some())
    });
    if let Some(marked) = marked
        && let Some((newest, _)) = judged.iter().find(|(_, o)| *o == Owned::Unmarked)
    {
        return Err(ask(format!(
            "{} holds unmarked backups of that name (the newest: {}) beside backups of \
                 other databases (as {})",
            dir.display(),
            newest.display(),
            marked.display()
        )));
    }
    Ok(judged
        .into_iter()
        .filter(|(_, o)| *o == Owned::Unmarked)
        .map(|(p, _)| p)
        .collect())
}

/// The first of `candidates` that passes `quick_check` now, with its age.
/// An empty file passes it (SQLite reads it as an empty database) but is
/// no backup: SQLite writes a copy's first page (review 182).
fn verified_first(candidates: Vec<PathBuf>) -> Option<(PathBuf, Duration)> {
    candidates.into_iter().find_map(|p| {
        // A check that could not run is not ok (review 218: such a backup,
        // damaged, was named the newest verified one, and a sound older one
        // never tried).
        let ok = !is_empty_file(&p) && check_file_bounded(&p).is_ok_and(|r| r.ok);
        if !ok {
            tracing::warn!("backup {} fails verification; it is skipped", p.display());
            return None;
        }
        let age = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        Some((p, age))
    })
}

/// Takes one verified backup of `db` named `name` in the policy's directory
/// (not recorded as the newest, never pruned). `name` is a plain file name:
/// one with a directory in it, a hidden one (`.x`, where partial copies are
/// written), one with control characters and one named like a scheduled
/// backup (`<db>.<time>.backup`, or `LATEST` and `LATEST.partial`) are
/// refused, as are names starting with `-`, holding bidirectional or
/// invisible format characters, or ending like SQLite's own files
/// (`-wal`, `-shm`, `-journal`), and so is a name
/// that exists already: a request never chooses where the service writes,
/// replaces a file, or passes its copy off as a scheduled backup.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `to` for a name that is not plain;
/// otherwise as [`Database::backup_to`].
pub async fn take_named(db: &Database, policy: &BackupPolicy, name: &str) -> Result<BackupReport> {
    // Nor a name an operator's shell or terminal would misread: one taken
    // for an option (`-rf`), or one whose text reads in another order than
    // its letters (bidirectional and invisible format characters).
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-'])
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_control() || invisible(c));
    if !plain {
        return Err(Error::invalid(
            "to",
            format!(
                "{:?} is not a plain file name; a backup is written to the backup directory \
                 under a name of its own (no directory, not starting with a dot)",
                name.chars().take(64).collect::<String>()
            ),
        ));
    }
    // SQLite's own files beside a database: refused by name here, as the
    // caller's to change (review 246: said as `unavailable` by the copy).
    if let Some(end) = ["-wal", "-shm", "-journal"]
        .iter()
        .find(|e| name.ends_with(*e))
    {
        return Err(Error::invalid(
            "to",
            format!(
                "{name:?} ends in {end}, the name SQLite gives a database's log or index \
                 beside it; give another name"
            ),
        ));
    }
    let scheduled = prefix(db.path());
    // `LATEST` is the schedule's record (and `LATEST.partial` where
    // earlier versions wrote it before moving it into place): a backup of
    // either name would be overwritten.
    if name.starts_with(&scheduled) && name.ends_with(".backup")
        || name == "LATEST"
        || name == "LATEST.partial"
    {
        return Err(Error::invalid(
            "to",
            format!(
                "{name:?} is named like a scheduled backup ({scheduled}<time>.backup) or its record; \
                 those names are kept for the schedule, which prunes and recovers from them"
            ),
        ));
    }
    let dest = policy.dir.join(name);
    let (dir, db_path, at) = (policy.dir.clone(), db.path().to_path_buf(), dest.clone());
    // The directory's steps block (a slow or hung mount): off the runtime.
    let taken = off_runtime(move || {
        create_dir(&dir, &db_path)?;
        Ok(std::fs::symlink_metadata(&at).is_ok())
    })
    .await?;
    // The caller's to change (another name), not the service's state: said
    // as a bad argument (it was `unavailable`). Refused again, atomically,
    // by the copy's own placing should it appear meanwhile.
    if taken {
        return Err(Error::invalid(
            "to",
            format!(
                "a backup named {name:?} exists already; backups are never replaced, give a new name"
            ),
        ));
    }
    db.backup_to(dest, |_| {}).await
}

/// A character that changes how a name reads without showing itself:
/// bidirectional controls and marks, zero-width characters, the BOM.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Takes one verified backup of `db` into the policy's directory, records
/// it as the newest, and prunes the oldest beyond `keep`.
///
/// # Errors
/// The directory cannot be created or written; the copy fails verification.
pub async fn take(db: &Database, policy: &BackupPolicy) -> Result<BackupReport> {
    // One at a time in this process: two at once (the schedule's and an
    // `admin.backup`) could each prune the other's new backup.
    static TAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = TAKING.lock().await;
    // The directory's steps block (a slow or hung mount): off the runtime.
    let (db_path, dir) = (db.path().to_path_buf(), policy.dir.clone());
    let dest = off_runtime(move || {
        create_dir(&dir, &db_path)?;
        Ok(next_name(&dir, &db_path))
    })
    .await?;
    let report = db.backup_to(&dest, |_| {}).await?;
    let (db_path, policy, taken) = (db.path().to_path_buf(), policy.clone(), dest.clone());
    let partly_verified = report.partly_verified.clone();
    off_runtime(move || record_and_prune(&db_path, &policy, &taken, partly_verified)).await?;
    Ok(report)
}

/// Runs `f` on a thread of the runtime's blocking pool.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal {
            message: format!("a backup's step on the blocking pool stopped: {e}"),
        })?
}

/// The name of a backup of `db` taken now in `dir`: backups within one
/// second get `.1`, `.2`, ... after the newest of that second still present
/// (pruning only removes older ones), so names stay in time order.
fn next_name(dir: &Path, db: &Path) -> PathBuf {
    let stem = format!("{}{}", prefix(db), utc_file_stamp(SystemTime::now()));
    let newest_this_second = list(dir, db)
        .iter()
        .map(|p| order(p))
        .filter(|(s, _)| *s == stem)
        .map(|(_, n)| n)
        .max();
    match newest_this_second {
        None => dir.join(format!("{stem}.backup")),
        Some(n) => dir.join(format!("{stem}.{}.backup", n + 1)),
    }
}

/// Records `dest` as the newest backup of `db` and prunes the oldest of
/// its own beyond `keep`.
fn record_and_prune(
    db: &Path,
    policy: &BackupPolicy,
    dest: &Path,
    partly_verified: Option<String>,
) -> Result<()> {
    let latest = policy.dir.join("LATEST");
    record_latest(&latest, dest)
        .map_err(|e| Error::io("cannot record the newest backup in", &latest, e))?;
    // One verified only in part counts one more: it does not push out the
    // newest before it, and a schedule of them (a client's table whose check
    // cannot finish) still keeps at most `keep + 1`.
    let extra = match &partly_verified {
        Some(why) => {
            tracing::warn!(
                path = %dest.display(),
                "the backup was verified only in part ({why}); one more older backup is kept"
            );
            1
        }
        None => 0,
    };
    // The one just taken is never pruned, even if its name sorts oldest
    // (the clock was set back): `LATEST` names it. Only this database's own
    // are, marked with its place (or unmarked, of a database without an
    // id): another database of the same file name may share the directory.
    // One whose marks cannot be read is kept, and so are those made before
    // places were marked, which a staging copy restored elsewhere would
    // share by id (review 188): removed by hand.
    // An id that cannot be read now (the file locked past the busy
    // timeout) is not taken for none: nothing is pruned this time (review
    // 183: the backups of databases without an id, and older backups of
    // other ids, would have been).
    let me = Identity::of(db);
    if matches!(me.id, Id::Unknown) {
        tracing::warn!("no backup pruned this time: the database's id cannot be read");
        return Ok(());
    }
    for old in list(&policy.dir, db)
        .into_iter()
        .filter(|p| p != dest && matches!(me.owns(p), Some(Owned::Placed | Owned::Unmarked)))
        .skip(policy.keep.max(1) - 1 + extra)
    {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!("cannot prune the old backup {}: {e}", old.display());
        }
    }
    Ok(())
}

/// Writes `dest`'s path into the record `latest` (the newest backup made
/// in the directory, by any database sharing it), through a new file of a
/// name of its own beside it, renamed over it: created, never opened if
/// there (review 180: a link put at `LATEST.partial`, where it was written,
/// by anyone who can write to the directory had the record written into
/// the file it pointed to, the database itself if so; review 182: two
/// processes sharing the directory took each other's), and synced before
/// and after its rename.
fn record_latest(latest: &Path, dest: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = latest.with_file_name(format!(
        ".LATEST.{}.{}.partial",
        std::process::id(),
        MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let written = file
        .write_all(format!("{}\n", dest.display()).as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, latest));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    crate::db::sync_dir(latest);
    Ok(())
}

/// Takes a backup every `policy.interval` until the database closes.
pub fn schedule(db: Database, policy: BackupPolicy) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(policy.interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if db.is_closed() {
                return;
            }
            // Unhealthy for a moment (one long batch holding the writer):
            // this tick is skipped, said so; the schedule goes on. It used
            // to end there for good, in silence.
            let health = db.health();
            if !health.healthy {
                tracing::warn!(
                    "scheduled backup skipped this time, the database being unhealthy: {}",
                    health.problems.join("; ")
                );
                continue;
            }
            match take(&db, &policy).await {
                Ok(r) => {
                    tracing::info!(path = %r.path.display(), bytes = r.bytes, "scheduled backup taken and verified")
                }
                Err(e) => tracing::error!("scheduled backup failed: {e}"),
            }
        }
    })
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The database passed `quick_check`; nothing was touched.
    Sound,
    /// It was replaced by a backup.
    Restored {
        /// The backup used.
        from: PathBuf,
        /// How old it was.
        age: Duration,
        /// What the restore did (where the damaged file was moved).
        report: RestoreReport,
    },
}

/// When [`recover`] restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only if the database fails `quick_check` (what a start with
    /// `--recover` does).
    Damaged,
    /// Whatever the database's state (`litebridge restore --latest`).
    Always,
}

/// Restores the newest verified backup over `db` when `when` says (always,
/// or if the database fails `quick_check`); what it replaces is kept aside
/// (named `.damaged-<time>` when it failed the check, `.replaced-<time>`
/// otherwise: a copy, or the file itself when SQLite cannot use it; see
/// [`restore_file`]), never deleted. `progress(done, total)` follows the copy.
///
/// # Errors
/// [`Error::Unavailable`] when no backup in `dir` passes verification; the
/// restore's own errors.
pub fn recover(
    db: &Path,
    dir: &Path,
    when: When,
    progress: impl FnMut(u64, u64),
) -> Result<Recovery> {
    let force = when == When::Always;
    let sound = match judge(db) {
        Judged::Sound => true,
        Judged::Damaged => false,
        Judged::Unchecked(_) if force => true,
        // Restoring over a file nobody could check would throw away every
        // write since the backup, for what may be no damage at all.
        Judged::Unchecked(e) => {
            return Err(Error::Unavailable {
                what: "recovery",
                reason: format!(
                    "{} could not be checked ({e}), so it is not replaced by a backup; \
                     `litebridge check` tells more, and `litebridge restore --latest` \
                     replaces it anyway (the file is moved aside, never deleted)",
                    db.display()
                ),
            });
        }
    };
    if sound && !force {
        return Ok(Recovery::Sound);
    }
    let candidates = recovery_candidates(dir, db)?;
    // An empty file with no backup is an empty database, as SQLite says.
    if !force && candidates.is_empty() && is_empty_file(db) {
        return Ok(Recovery::Sound);
    }
    let others = list(dir, db).len() - candidates.len();
    let (from, age) = verified_first(candidates).ok_or_else(|| Error::Unavailable {
        what: "backup",
        reason: if !dir.is_dir() {
            format!(
                "the backup directory {} does not exist (give it with --dir, or [backup] dir)",
                dir.display()
            )
        } else if others > 0 {
            format!(
                "no backup of {} in {} passes verification ({others} backup(s) of that name there cannot \
                 be told as its own; restore one with `litebridge restore --from FILE`)",
                db.display(),
                dir.display()
            )
        } else {
            format!(
                "no backup of {} in {} passes verification",
                db.display(),
                dir.display()
            )
        },
    })?;
    let mut aside = db.as_os_str().to_owned();
    let why = if sound { "replaced" } else { "damaged" };
    aside.push(format!(".{why}-{}", utc_file_stamp(SystemTime::now())));
    let report = restore_file(&from, db, Path::new(&aside), progress)?;
    Ok(Recovery::Restored { from, age, report })
}

/// What a bounded check says of the database at `db`, for [`recover`].
enum Judged {
    /// No damage found (a check cut short judges what it read).
    Sound,
    /// Damage found, no SQLite database there, or no file at all.
    Damaged,
    /// The check could not run (the file cannot be opened or read).
    Unchecked(Error),
}

fn judge(db: &Path) -> Judged {
    match std::fs::symlink_metadata(db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Judged::Damaged,
        _ => {}
    }
    match std::fs::metadata(db) {
        // An empty file is a sound, empty database to SQLite, but one whose
        // backups exist lost everything they hold (truncated, a volume made
        // afresh): recovered as a missing one is (review 180), when it has
        // backups.
        Ok(m) if m.is_file() && m.len() == 0 => return Judged::Damaged,
        _ => {}
    }
    roll_back_hot_journal(db);
    match check_file_bounded(db) {
        // Not "passes quick_check": nothing was read (review 218).
        Ok(r) if r.could_not_run() => Judged::Unchecked(crate::Error::Open {
            path: db.to_path_buf(),
            reason: r.unfinished.unwrap_or_default(),
        }),
        Ok(r) if r.ok => Judged::Sound,
        Ok(_) => Judged::Damaged,
        Err(e) if e.is_not_a_database() => Judged::Damaged,
        Err(e) => Judged::Unchecked(e),
    }
}

/// Whether `path` is a file of no bytes (through a link too).
pub fn is_empty_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// Rolls back the hot journal beside `db`, if any: a write (a restore's
/// among them) cut short by a crash leaves one, which only a connection
/// that may write rolls back. The check that follows reads the file
/// read-only, and found it "unchecked" (`SQLITE_READONLY_ROLLBACK`), so
/// `serve --recover` refused to start after such a crash (a review found
/// it). Whatever goes wrong here, the check says.
fn roll_back_hot_journal(db: &Path) {
    // Before this process's first connection: SQLite takes its allocator
    // once (a review found `serve --recover` running without its memory
    // budget after such a rollback).
    crate::db::heap::install();
    let journal = crate::db::with_suffix(db, "-journal");
    if std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0)
        && let Ok(c) =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
    {
        let _ = c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        });
    }
}

/// Creates the backup directory `dir` (and its parents) if missing, no
/// more open than the database `db` is readable: 0700 for a database only
/// its owner reads, 0750 for one its group reads, 0755 for one anyone
/// reads (and written by its owner only).
fn create_dir(dir: &Path, db: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let file = crate::db::mode_of(db);
    // Each read bit with its search bit; only its owner writes in it.
    let mode = (file & 0o644) | ((file & 0o444) >> 2);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io("cannot create the backup directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 218: a backup whose check could not run (a generated column
    /// calls a function litebridge lacks) verified nothing: it is skipped
    /// for an older one that passes, and a database in that state is
    /// unchecked, not "passes quick_check".
    #[test]
    fn a_check_that_could_not_run_verifies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, unknown: bool| {
            let path = dir.path().join(name);
            let c = rusqlite::Connection::open(&path).unwrap();
            c.create_scalar_function(
                "myf",
                1,
                rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
                |ctx| ctx.get::<rusqlite::types::Value>(0),
            )
            .unwrap();
            c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
            if unknown {
                c.execute_batch("CREATE TABLE g(x, y AS (myf(x)) NOT NULL)")
                    .unwrap();
            }
            path
        };
        let unchecked = make("newer.db", true);
        let sound = make("older.db", false);
        let (first, _) = verified_first(vec![unchecked.clone(), sound.clone()]).unwrap();
        assert_eq!(first, sound);
        assert!(matches!(judge(&unchecked), Judged::Unchecked(_)));
        assert!(matches!(judge(&sound), Judged::Sound));
    }

    /// Found by a hostile review: a write cut short by a crash (a restore's,
    /// now one transaction) leaves a hot journal, which the read-only check
    /// could not roll back: `serve --recover` refused to start.
    #[test]
    fn recovery_rolls_back_a_write_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES (1);")
            .unwrap();
        // A big transaction that spills into the file, then a crash.
        let status = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import os, sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('PRAGMA cache_size = 5')\n\
                 c.execute('BEGIN')\n\
                 c.execute('INSERT INTO t SELECT randomblob(4000) FROM \
                 (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                 WHERE i < 500) SELECT i FROM n)')\n\
                 os._exit(0)",
            )
            .arg(&db)
            .status()
            .unwrap();
        assert!(status.success());
        let journal = crate::db::with_suffix(&db, "-journal");
        assert!(
            std::fs::metadata(&journal).unwrap().len() > 0,
            "no hot journal"
        );
        let backups = dir.path().join("backups");
        std::fs::create_dir(&backups).unwrap();
        let r = recover(&db, &backups, When::Damaged, |_, _| {}).unwrap();
        assert!(matches!(r, Recovery::Sound), "{r:?}");
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "rolled back");
    }
}
