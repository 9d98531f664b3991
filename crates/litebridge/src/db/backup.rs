//! Online backups and integrity checks.
//!
//! A backup copies the database with SQLite's online backup API from a
//! dedicated read-only connection that holds one read transaction for the
//! whole copy. In WAL mode a reader never blocks the writer, so writes go on
//! during the copy, and because the snapshot is fixed the copy never restarts
//! however many commits happen meanwhile: the backup is the database exactly
//! as of its first step. Pages are copied in steps so progress can be shown.
//!
//! The copy is written to `FILE.partial`, verified with `quick_check`, and only
//! then renamed over `FILE`, so a crash or a failed verification never leaves a
//! half-written file under the backup's name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use crate::db::open::{integrity_check, quick_check};
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
}

/// Copies the database file at `source` to `dest` while other connections
/// (in this process or another) go on reading and writing, verifies the copy
/// with `quick_check`, and renames it into place. `progress` is called after
/// each step of 1024 pages.
///
/// # Errors
/// [`Error::Open`] for a bad source or destination; [`Error::Corrupt`] when the
/// copy fails verification (then nothing is left at `dest`).
pub fn backup_file(
    source: &Path,
    dest: &Path,
    busy_timeout: Duration,
    mut progress: impl FnMut(BackupProgress),
) -> Result<BackupReport> {
    let started = Instant::now();
    if dest.is_dir() {
        return Err(Error::Open {
            path: dest.to_path_buf(),
            reason: "the backup destination is a directory; give a file name".into(),
        });
    }
    let partial = with_suffix(dest, ".partial");
    let _ = std::fs::remove_file(&partial);
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
    let result = (|| -> Result<u64> {
        let mut dst = Connection::open(&partial).map_err(|e| Error::Open {
            path: partial.clone(),
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
                match step {
                    rusqlite::backup::StepResult::Done => break total,
                    rusqlite::backup::StepResult::More => {}
                    // Only possible for locks held by another process on the
                    // destination; wait a little and go on.
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        };
        // The copy is a self-contained file: no WAL to carry around with it.
        let _ = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        });
        let problems = quick_check(&dst, 10)?;
        if !problems.is_empty() {
            return Err(Error::Corrupt {
                path: partial.clone(),
                detail: format!("the backup failed verification: {}", problems.join("; ")),
            });
        }
        dst.close().map_err(|(_, e)| Error::from(e))?;
        Ok(pages)
    })();
    let _ = src.execute_batch("COMMIT");
    let pages = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, dest).map_err(|e| Error::io("cannot move the backup to", dest, e))?;
    let bytes = std::fs::metadata(dest).map_or(0, |m| m.len());
    Ok(BackupReport {
        path: dest.to_path_buf(),
        bytes,
        pages,
        elapsed: started.elapsed(),
    })
}

/// `2026-11-23T14:05:09Z` for a time, in UTC (`20261123T140509Z` when `compact`).
pub fn utc_stamp(t: std::time::SystemTime, compact: bool) -> String {
    let secs = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::calendar::civil_from_days(days);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if compact {
        format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
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
    /// True when no problem was found.
    pub ok: bool,
    /// Problems reported by `quick_check` / `integrity_check` (first 100).
    pub problems: Vec<String>,
    /// Foreign-key violations (`full` checks only), as `table rowid -> parent`.
    pub foreign_key_violations: Vec<String>,
    /// How long the check took.
    pub elapsed: Duration,
}

/// Checks the file at `path` from a read-only connection: `quick_check`, or
/// with `full`, `integrity_check` and `foreign_key_check`. Never writes to it.
///
/// # Errors
/// [`Error::Open`] when the file cannot be opened or is not a database.
pub fn check_file(path: &Path, full: bool) -> Result<CheckReport> {
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
    let conn = Connection::open_with_flags(
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
        let e = Error::from(e);
        if matches!(e, Error::Corrupt { ref detail, .. } if detail.contains("not a database")) {
            return Err(Error::Open {
                path: path.to_path_buf(),
                reason: "the file is not a SQLite database".into(),
            });
        }
        return Ok(CheckReport {
            ok: false,
            problems: vec![e.to_string()],
            foreign_key_violations: Vec::new(),
            elapsed: started.elapsed(),
        });
    }
    let run = |f: fn(&Connection, u32) -> rusqlite::Result<Vec<String>>| -> Vec<String> {
        f(&conn, 100).unwrap_or_else(|e| vec![Error::from(e).to_string()])
    };
    let problems = if full {
        run(integrity_check)
    } else {
        run(quick_check)
    };
    let mut fk = Vec::new();
    if full {
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
        fk = found.unwrap_or_else(|e| vec![Error::from(e).to_string()]);
    }
    Ok(CheckReport {
        ok: problems.is_empty() && fk.is_empty(),
        problems,
        foreign_key_violations: fk,
        elapsed: started.elapsed(),
    })
}
