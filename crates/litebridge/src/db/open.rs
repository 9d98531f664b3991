//! Opening the database file and its connections, with the pragmas from
//! [`DbConfig`].
//!
//! Order matters. The writer connection opens first, proves the file is a
//! SQLite database by *reading* it (so a wrong file is refused with nothing
//! written), optionally runs `quick_check`, and only then switches the file to
//! WAL. Readers open afterwards, read-only, and never touch `journal_mode`:
//! the mode is persistent in the file, so there is no race between many
//! connections setting it on a new file (the failure mode of pools that run
//! the same init pragmas on every connection at once).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::config::DbConfig;
use crate::db::guard;
use crate::error::{Error, Result};

/// The longest LIKE or GLOB pattern.
pub(crate) const MAX_LIKE_PATTERN: i32 = 1000;

/// Opens connections to one database file. Cloned into every component that
/// may have to replace a broken connection.
#[derive(Debug, Clone)]
pub(crate) struct Opener {
    pub(crate) path: PathBuf,
    pub(crate) config: Arc<DbConfig>,
    /// Set by [`crate::Database::interrupt`]: every statement on every
    /// connection of the database is interrupted (see `guard::install`).
    pub(crate) halt: Arc<AtomicBool>,
    /// The files the writer opened, to tell when they are removed or
    /// replaced under it (see `on_disk`).
    pub(crate) on_disk: Arc<crate::db::on_disk::OnDisk>,
    /// SQLite opened the file read-only (litebridge's user may read it but
    /// not write it): reads are served, writes refused naming the file.
    pub(crate) read_only: Arc<AtomicBool>,
    /// Changes of the file by connections other than the writer, told by
    /// the writer's shim (`foreign_commits`).
    pub(crate) foreign_commits: Arc<crate::db::foreign_commits::ForeignCommits>,
}

impl Opener {
    /// The answer to a write while the file is read-only.
    pub(crate) fn read_only_refusal(&self) -> Error {
        Error::ReadOnly {
            message: format!(
                "the database file {} is read-only for litebridge's user: writes are refused \
                 (give the user write access to it and restart litebridge)",
                self.path.display()
            ),
        }
    }

    /// Checks the path before SQLite sees it, so each mistake gets its own message.
    pub(crate) fn validate_path(path: &Path, create: bool) -> Result<()> {
        let open_err = |reason: String| Error::Open {
            path: path.to_path_buf(),
            reason,
        };
        let s = path.to_string_lossy();
        if s.is_empty() {
            return Err(open_err("the path is empty".into()));
        }
        if s == ":memory:" || s.starts_with("file:") {
            return Err(open_err(
                "litebridge needs a database file (WAL mode, several connections); use a file in a temporary directory instead of an in-memory database".into(),
            ));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Err(open_err("it is a directory, not a file".into())),
            Ok(m) if !m.is_file() => return Err(open_err("it is not a regular file".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Err(open_err(
                        "the file does not exist (and creating it is turned off)".into(),
                    ));
                }
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                match std::fs::metadata(parent) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(open_err(format!("{} is not a directory", parent.display())));
                    }
                    Err(_) => {
                        return Err(open_err(format!(
                            "the directory {} does not exist",
                            parent.display()
                        )));
                    }
                }
            }
            Err(e) => return Err(open_err(e.to_string())),
        }
        Ok(())
    }

    /// Opens the read-write connection, refusing files that are not SQLite
    /// databases or (when configured) are damaged, then sets WAL and the pragmas.
    pub(crate) fn open_writer(&self, first: bool) -> Result<Connection> {
        self.open_writer_unnamed(first).map_err(|e| self.named(e))
    }

    fn open_writer_unnamed(&self, first: bool) -> Result<Connection> {
        let c = &self.config;
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if c.create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        // Before SQLite initializes (the first connection does): the
        // per-request memory budget needs litebridge's allocator.
        crate::db::heap::install();
        // The writer's WAL writes go through `wal_vfs` (one write per commit).
        let mut conn = match crate::db::wal_vfs::name() {
            Some(vfs) => Connection::open_with_flags_and_vfs(&self.path, flags, vfs),
            None => Connection::open_with_flags(&self.path, flags),
        }
        .map_err(|e| self.open_error(e))?;
        crate::db::wal_vfs::watch(&conn, self.foreign_commits.clone());
        conn.busy_timeout(c.busy_timeout)?;
        // Read before anything writes: a file that is not a database is refused untouched.
        conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            .map_err(|e| self.open_error(e))?;
        // SQLite opens a file it may not write read-only, without a word: in
        // WAL mode already, nothing of the opening writes. Reads are served
        // (`litebridge query` on a file one may only read); writes are
        // refused naming the file, and health says why (reviews 145, 147).
        let read_only = conn.is_readonly(rusqlite::MAIN_DB)?;
        if read_only
            && !self
                .read_only
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                db = %self.path.display(),
                "the database file is read-only for litebridge's user: writes are refused"
            );
        }
        if first && c.quick_check_on_open {
            let found = quick_check(&mut conn, 20, Bound::Bounded).map_err(|e| {
                match self.open_error(e) {
                    // Said as the check's, not as the file's (review 218);
                    // a file that is no database is said as such (review 219).
                    Error::Open { path, reason } if reason != super::NOT_A_DATABASE => {
                        Error::Open {
                            path,
                            reason: format!(
                                "{}: {reason}; the file is not served unchecked \
                             (`litebridge check --db FILE` tells more; \
                             db.quick_check_on_open = false starts without the check)",
                                crate::db::CHECK_COULD_NOT_RUN
                            ),
                        }
                    }
                    other => other,
                }
            })?;
            if let Some(why) = &found.unfinished {
                tracing::warn!(db = %self.path.display(), "opened without a whole check: {why}");
            }
            for line in &found.virtual_tables {
                tracing::warn!(
                    db = %self.path.display(),
                    "quick_check: {line} (the file is sound; rebuild that table's index: \
                     INSERT INTO t(t) VALUES('rebuild'))"
                );
            }
            for line in &found.data {
                tracing::warn!(
                    db = %self.path.display(),
                    "quick_check: {line} (the file is sound; a generated column, or the \
                     default of a column added later, breaks its declaration, as a schema \
                     change can leave it)"
                );
            }
            let problems = found.damage;
            if !problems.is_empty() {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    // One line: SQLite's first finding starts with a line
                    // of its own (`*** in database main ***`).
                    detail: format!(
                        "quick_check found {}{}",
                        problems.join("; ").replace(['\n', '\r'], " "),
                        " (run `litebridge check --full`, or restore a backup)"
                    ),
                });
            }
        }
        let mode = self.switch_to_wal(&conn)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Open {
                path: self.path.clone(),
                reason: format!(
                    "WAL mode could not be enabled (the journal mode stayed {mode:?}); the file system may not support shared memory"
                ),
            });
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {};
             PRAGMA foreign_keys = {};
             PRAGMA journal_size_limit = {};
             PRAGMA wal_autocheckpoint = 0;",
            c.durability.pragma_value(),
            if c.foreign_keys { "ON" } else { "OFF" },
            c.journal_size_limit,
        ))?;
        self.common(&mut conn)?;
        self.on_disk.note(&self.path);
        Ok(conn)
    }

    /// `PRAGMA journal_mode = WAL`, again while another opener of the same
    /// new file holds it up, until the busy timeout. SQLite answers busy
    /// at once, without its busy handler, when two connections that both
    /// read the file want to change its mode (each waiting on the other's
    /// lock would deadlock), so the busy timeout alone does not cover many
    /// openers of one new file; giving up the turn and trying again does.
    fn switch_to_wal(&self, conn: &Connection) -> Result<String> {
        let give_up = std::time::Instant::now() + self.config.busy_timeout;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
                Ok(mode) => return Ok(mode),
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(self.open_error(e)),
            }
        }
    }

    /// Opens a read-only connection for the read or heavy lane.
    pub(crate) fn open_reader(&self) -> Result<Connection> {
        self.open_reader_unnamed().map_err(|e| self.named(e))
    }

    fn open_reader_unnamed(&self) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        crate::db::heap::install();
        let mut conn =
            Connection::open_with_flags(&self.path, flags).map_err(|e| self.open_error(e))?;
        conn.busy_timeout(self.config.busy_timeout)?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        self.common(&mut conn)?;
        Ok(conn)
    }

    fn common(&self, conn: &mut Connection) -> Result<()> {
        let c = &self.config;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = {};
             PRAGMA mmap_size = {};
             PRAGMA temp_store = {};",
            c.cache_size,
            c.mmap_size,
            c.temp_store.pragma_value(),
        ))?;
        conn.set_prepared_statement_cache_capacity(c.statement_cache);
        // A double-quoted word in a schema statement is a name, never a
        // string, as SQLite advises: read as a string while no column has
        // its name, an index's expression would change meaning when a
        // column of that name is added, and the whole check report a sound
        // file as damaged. Schemas already in the file still load (SQLite
        // reads them as it always has); other statements keep the old
        // reading (`SELECT "x"`).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
        // No single value (text or blob) longer than the largest result a
        // client may get: `randomblob(6e8)` or `printf('%.*c', 1e9, 'x')`
        // fail before the memory is taken.
        let longest = i32::try_from(c.max_result_bytes).unwrap_or(i32::MAX);
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, longest)?;
        // SQLite's functions that can run for minutes or hours in one call
        // (which no deadline interrupts) replaced: `instr` and `replace`
        // linear, LIKE/GLOB/trim/unhex interruptible, json_patch bounded,
        // FTS5's snippet() linear.
        crate::db::functions::install(
            conn,
            c.max_result_bytes,
            MAX_LIKE_PATTERN as usize,
            self.halt.clone(),
        )?;
        // LIKE and GLOB take up to len(value) * len(pattern): patterns of
        // 1000 bytes at most (SQLite allows 50,000) keep that work small
        // even before the deadline stops it.
        conn.set_limit(
            rusqlite::limits::Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH,
            MAX_LIKE_PATTERN,
        )?;
        guard::install(conn, self.halt.clone())
    }

    /// An error of any step of opening a connection, naming the file (a
    /// lock held by another process or a file not writable showed up at the
    /// first write of the opening, without it).
    fn named(&self, e: Error) -> Error {
        match e {
            Error::Open { .. } | Error::Corrupt { .. } | Error::Config { .. } => e,
            Error::Busy { message } => Error::Open {
                path: self.path.clone(),
                reason: format!("it is locked by another process ({message})"),
            },
            Error::ReadOnly { .. } => Error::Open {
                path: self.path.clone(),
                reason: "the file or its directory is not writable by litebridge's user".into(),
            },
            other => Error::Open {
                path: self.path.clone(),
                reason: self.why_not(other.to_string()),
            },
        }
    }

    /// `reason`, or what the file system says when it refuses the file to
    /// litebridge's user (SQLite says only "unable to open database file").
    fn why_not(&self, reason: String) -> String {
        why_not(&self.path, reason)
    }

    fn open_error(&self, e: rusqlite::Error) -> Error {
        let reason = match Error::from(e) {
            Error::Corrupt { detail, .. } if detail.contains("not a database") => {
                super::NOT_A_DATABASE.to_owned()
            }
            Error::Corrupt { detail, .. } => {
                return Error::Corrupt {
                    path: self.path.clone(),
                    detail,
                };
            }
            Error::Busy { message } => format!("it is locked by another process ({message})"),
            Error::ReadOnly { .. } => "the file or its directory is not writable".to_owned(),
            other => self.why_not(other.to_string()),
        };
        Error::Open {
            path: self.path.clone(),
            reason,
        }
    }

    /// The `-wal` file of the database.
    pub(crate) fn wal_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    }
}

/// `reason`, or "permission denied" when litebridge's user may not read the
/// file at `path`, asked without opening it: this runs when a connection of
/// a database already open is reopened, and closing a descriptor of the
/// file (the `open` it used to try) drops every `fcntl` lock this process
/// holds on it, SQLite's included (review 180: another process could then
/// take the file from under the service).
fn why_not(path: &Path, reason: String) -> String {
    if crate::db::ffi::read_refused(path) {
        format!("permission denied: litebridge's user cannot read it ({reason})")
    } else {
        reason
    }
}

/// What `quick_check` or `integrity_check` reported, in two kinds.
///
/// Since SQLite 3.44 both also ask each full-text and R-tree table whether
/// its own index agrees with its content. A disagreement is not damage to
/// the file (pages and b-trees are checked on their own, shadow tables
/// included): a contentless full-text table deleted from with other values
/// than were inserted reports one, and any writer of the database can make
/// one. Counted as damage, it would refuse to open or back up a sound file;
/// it is reported apart instead, with its fix (`'rebuild'`).
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Damage to the file: pages, b-trees, indexes of ordinary tables.
    pub(crate) damage: Vec<String>,
    /// A full-text or R-tree table whose index disagrees with its content.
    pub(crate) virtual_tables: Vec<String>,
    /// A value of a generated column, or a column's default, that breaks its
    /// declared type or `NOT NULL`: the data's doing, not the file's (see [`from_the_data`]).
    pub(crate) data: Vec<String>,
    /// Why a check stopped before the end: a bounded one's budget, or an
    /// error that is not damage (what it found until then is in the other
    /// fields).
    pub(crate) unfinished: Option<String>,
}

/// How long a check that must not hold up a start or a backup may run:
/// [`CHECK_BASE`], and [`CHECK_PER_GIB`] more for each GiB of the file
/// (a check reads a GiB in seconds here). What a client can make a check
/// do beyond reading the file is computing its tables' virtual generated
/// columns, on every row (SQLite checks their values against their
/// declarations). An insert or an update computes them for its own rows
/// only, and `ALTER TABLE ... ADD COLUMN` adds one to every row there is
/// without computing it (unless it is `NOT NULL`, has a `CHECK`, or the
/// table is `STRICT`: SQLite then checks the table): a client can add, at
/// no cost, a column that
/// builds a string of 50 MB, and a million rows then cost every check hours.
const CHECK_BASE: Duration = Duration::from_secs(60);
/// See [`CHECK_BASE`].
const CHECK_PER_GIB: Duration = Duration::from_secs(60);

/// Whether a check is bounded (at a start, and verifying a backup) or runs
/// to its end (asked for by an operator: `admin.check`, `litebridge check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Stops after [`CHECK_BASE`] and [`CHECK_PER_GIB`], with
    /// [`Findings::unfinished`] saying so.
    Bounded,
    /// Runs to its end.
    Whole,
    /// Stops after this long (tests).
    #[cfg(test)]
    Within(Duration),
}

/// Runs `PRAGMA quick_check`, keeping at most `limit` lines of each kind.
pub(crate) fn quick_check(
    conn: &mut Connection,
    limit: u32,
    bound: Bound,
) -> rusqlite::Result<Findings> {
    check_pragma(conn, "quick_check", limit, bound, None)
}

/// Runs `PRAGMA integrity_check`, keeping at most `limit` lines of each kind.
#[cfg(test)]
pub(crate) fn integrity_check(conn: &mut Connection, limit: u32) -> rusqlite::Result<Findings> {
    check_pragma(conn, "integrity_check", limit, Bound::Whole, None)
}

/// `quick_check` (or, `full`, `integrity_check`) that stops early once
/// `halt` is set ([`Database::interrupt`](crate::Database::interrupt)), as
/// every request does: what it found then is incomplete, and the caller
/// answers [`halted_error`](crate::db::guard::halted_error) instead.
pub(crate) fn check_halting(
    conn: &mut Connection,
    full: bool,
    limit: u32,
    bound: Bound,
    halt: Option<&Arc<AtomicBool>>,
) -> rusqlite::Result<Findings> {
    let pragma = if full {
        "integrity_check"
    } else {
        "quick_check"
    };
    check_pragma(conn, pragma, limit, bound, halt)
}

/// What stops a check's statements early: a time (`until`) or a flag
/// (`halt`), either of which sets `stopped`. A progress handler looks every
/// 10,000 steps of a statement; and a thread interrupts the connection once
/// either comes, then again every 100 ms until the watch ends (SQLite
/// forgets an interrupt when a statement starts with none running, and a
/// check runs statement after statement), since a table whose few rows
/// each compute a huge value (one step each) never reaches the progress
/// handler's count; and SQLite's allocations on this thread are refused
/// once `stopped` is set (`heap::stop_when`), which stops a step of
/// straight-line code that neither of those reaches. Dropped (on the
/// thread that started it), it joins the thread; [`Watch::end`] also
/// removes the progress handler.
pub(crate) struct Watch {
    cancel: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// SQLite's allocations on this thread refused once `stopped` is set:
    /// a step of straight-line code over large values reaches neither the
    /// progress handler nor the interrupt, but it allocates.
    _heap: crate::db::heap::StopWhen,
}

impl Watch {
    /// Watches `conn`, unless there is nothing to watch for.
    pub(crate) fn start(
        conn: &mut Connection,
        until: Option<Instant>,
        halt: Option<&Arc<AtomicBool>>,
        stopped: &Arc<AtomicBool>,
    ) -> rusqlite::Result<Option<Watch>> {
        if until.is_none() && halt.is_none() {
            return Ok(None);
        }
        let due = {
            let halt = halt.cloned();
            move || {
                until.is_some_and(|until| Instant::now() >= until)
                    || halt.as_ref().is_some_and(|h| h.load(Ordering::Relaxed))
            }
        };
        let (s, is_due) = (stopped.clone(), due.clone());
        conn.progress_handler(
            10_000,
            Some(move || {
                let past = is_due();
                if past {
                    s.store(true, Ordering::Relaxed);
                }
                past
            }),
        )?;
        let handle = conn.get_interrupt_handle();
        let s = stopped.clone();
        let polled = halt.is_some();
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        // Without a thread (none could be made), the progress handler.
        let thread = std::thread::Builder::new()
            .name("litebridge-check".into())
            .spawn(move || {
                let tick = Duration::from_millis(100);
                loop {
                    let fired = due();
                    if fired {
                        s.store(true, Ordering::Relaxed);
                        handle.interrupt();
                    }
                    // A flag is looked at every tick; a time alone is
                    // waited for.
                    let wait = match until {
                        Some(until) if !fired && !polled => {
                            until.saturating_duration_since(Instant::now())
                        }
                        _ => tick,
                    };
                    if cancelled.recv_timeout(wait)
                        != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    {
                        return;
                    }
                }
            })
            .ok();
        Ok(Some(Watch {
            cancel: Some(cancel),
            thread,
            _heap: crate::db::heap::stop_when(stopped.clone()),
        }))
    }

    /// Ends the watch: the thread joined, the progress handler removed.
    pub(crate) fn end(mut self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.stop();
        conn.progress_handler(0, None::<fn() -> bool>)
    }

    fn stop(&mut self) {
        drop(self.cancel.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The time a bounded check of `conn`'s file may take.
fn check_budget(conn: &Connection) -> rusqlite::Result<Duration> {
    let bytes: i64 = conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
        [],
        |r| r.get(0),
    )?;
    let gib = bytes.max(0) as f64 / f64::from(1u32 << 30);
    Ok(CHECK_BASE + CHECK_PER_GIB.mul_f64(gib))
}

/// Runs an integrity check with tables' `CHECK` constraints left out.
///
/// A check is for damage to the file, and a `CHECK` says nothing of that:
/// a client can make a row break one without any damage (a
/// `CHECK("b" = 'b')` whose `"b"` was a string until `ALTER TABLE ... ADD
/// COLUMN b` made it a column: SQLite checks only the new column's own
/// constraints). Counted as damage, that made every backup fail and the
/// next start refuse the file. Evaluating them also runs the clients'
/// expressions on a connection without litebridge's linear functions and
/// deadlines (a `CHECK (instr(a, b) >= 0)` on large values took seconds
/// per row at every start and backup). Read-only connections never checked
/// them (SQLite drops `CHECK`s there), so every check now agrees.
///
/// A check still computes generated columns declared `NOT NULL`, so it
/// runs with litebridge's linear functions (`instr`, `replace`, ...), as
/// the writer that stored the rows did: SQLite's own take time quadratic
/// in a client's values, on a connection no deadline stops.
///
/// SQLite stops a check after as many lines as it is given, whatever they
/// say: the data's lines could use up the limit and hide damage in the rows
/// after them. So when a check stops at its limit with data lines among
/// them and no damage yet, it runs again without a limit of its own, and
/// stops once `limit` lines of damage are found. (The first pass keeps its
/// limit for the b-tree phase, whose findings SQLite gathers into one line
/// that grows with the file: they come first, and a second pass happens
/// only when there were none.)
///
/// A [`Bound::Bounded`] check stops at its budget ([`check_budget`]), with
/// [`Findings::unfinished`] saying so and what it found so far.
fn check_pragma(
    conn: &mut Connection,
    pragma: &str,
    limit: u32,
    bound: Bound,
    halt: Option<&Arc<AtomicBool>>,
) -> rusqlite::Result<Findings> {
    // SQLite connects every virtual table as it prepares a whole-file
    // check, and one that cannot be connected (a full-text table whose
    // content table was dropped) fails it. The whole file is then checked
    // on a connection of its own with no virtual-table module, where SQLite
    // skips every virtual table. Only a whole-file check finds pages no
    // table holds and a page two tables share: when it cannot be prepared
    // there either (a function a generated column calls is unknown here),
    // or that connection cannot be made, the check could not run (an
    // error), never a weaker check taken for a whole one (review 216, 217).
    install_functions(conn, halt)?;
    let Err(e) = prepares(conn, pragma) else {
        return check_on(conn, pragma, limit, bound, halt);
    };
    if is_damage(&e) || halt.is_some_and(|h| h.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(e);
    }
    let Some(mut bare) = without_modules(conn, halt) else {
        return Err(e);
    };
    match prepares(&bare, pragma) {
        Ok(_) => {}
        Err(damage) if is_damage(&damage) => return Err(damage),
        Err(second) => {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(format!(
                    "{}; and without its virtual tables: {}",
                    Error::from(e),
                    Error::from(second)
                )),
            ));
        }
    }
    let mut found = check_on(&mut bare, pragma, limit, bound, halt)?;
    let note = format!(
        "the virtual tables were not checked: {} (SQLite connects each as it prepares the \
         check); the file's pages and every other table were checked without them",
        Error::from(e)
    );
    found.unfinished = Some(match found.unfinished.take() {
        Some(why) if !why.is_empty() => format!("{note}; {why}"),
        _ => note,
    });
    Ok(found)
}

/// Whether the check `pragma` can be prepared on `conn`, as [`check_on`]
/// runs it: with `CHECK` constraints ignored (a `CHECK` calling a function
/// litebridge lacks would otherwise fail it; review 218).
fn prepares(conn: &Connection, pragma: &str) -> rusqlite::Result<()> {
    let ignoring: bool = conn.query_row("PRAGMA ignore_check_constraints", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA ignore_check_constraints = ON")?;
    let prepared = conn.prepare(&format!("PRAGMA {pragma}(1)")).map(drop);
    if !ignoring {
        conn.execute_batch("PRAGMA ignore_check_constraints = OFF")?;
    }
    prepared
}

/// litebridge's SQL functions, which a generated column or an index may
/// call: a check computes them.
fn install_functions(conn: &Connection, halt: Option<&Arc<AtomicBool>>) -> rusqlite::Result<()> {
    let longest = conn
        .limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)?
        .max(0) as usize;
    crate::db::functions::install(
        conn,
        longest,
        MAX_LIKE_PATTERN as usize,
        halt.cloned().unwrap_or_default(),
    )
}

/// A read-only connection to `conn`'s file with litebridge's functions and
/// no virtual-table module (FTS5's functions need its module as they are
/// installed: the modules go after); None when it cannot be opened.
fn without_modules(conn: &Connection, halt: Option<&Arc<AtomicBool>>) -> Option<Connection> {
    let path = conn.path().filter(|p| !p.is_empty())?;
    let bare = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    install_functions(&bare, halt).ok()?;
    crate::db::ffi::drop_all_modules(&bare).ok()?;
    Some(bare)
}

/// [`check_pragma`] on `conn` as it is, its functions installed.
fn check_on(
    conn: &mut Connection,
    pragma: &str,
    limit: u32,
    bound: Bound,
    halt: Option<&Arc<AtomicBool>>,
) -> rusqlite::Result<Findings> {
    let columns = columns(conn)?;
    let ignoring: bool = conn.query_row("PRAGMA ignore_check_constraints", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA ignore_check_constraints = ON")?;
    let limit = limit.max(1);
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let budget = match bound {
        Bound::Whole => None,
        Bound::Bounded => Some(check_budget(conn)?),
        #[cfg(test)]
        Bound::Within(budget) => Some(budget),
    };
    let watch = Watch::start(
        conn,
        budget.map(|budget| Instant::now() + budget),
        halt,
        &stopped,
    )?;
    let is_stopped = || stopped.load(std::sync::atomic::Ordering::Relaxed);
    // Any failure once the time is out (an interrupted prepare) is the
    // time's: said as such, not taken for the file's.
    let out_of_time = |r: rusqlite::Result<Findings>| match r {
        Err(_) if is_stopped() => Ok(Findings {
            unfinished: Some(String::new()),
            ..Findings::default()
        }),
        r => r,
    };
    let found = out_of_time(
        run_check(
            conn,
            pragma,
            &limit.to_string(),
            limit,
            &columns,
            &stopped,
            None,
        )
        .and_then(|(found, lines)| {
            if found.unfinished.is_none()
                && !is_stopped()
                && lines >= limit as usize
                && found.damage.is_empty()
                && !found.data.is_empty()
            {
                let all = (i32::MAX as u32).to_string();
                run_check(conn, pragma, &all, limit, &columns, &stopped, None).map(|(f, _)| f)
            } else {
                Ok(found)
            }
        }),
    )
    .map(|found| table_by_table(conn, pragma, found, limit, &columns, &stopped));
    if let Some(watch) = watch {
        watch.end(conn)?;
    }
    if !ignoring {
        conn.execute_batch("PRAGMA ignore_check_constraints = OFF")?;
    }
    let mut found = found?;
    if let (Some(budget), Some(why)) = (budget, found.unfinished.as_mut())
        && why.is_empty()
    {
        *why = format!(
            "{pragma} stopped after {:.1} s, before the end ({} s, and {} s more per GiB of the \
             file: a table's generated columns may be costly to compute); what it found \
             in what it read is reported",
            budget.as_secs_f64(),
            CHECK_BASE.as_secs(),
            CHECK_PER_GIB.as_secs()
        );
    }
    Ok(found)
}

/// One pass of `PRAGMA pragma(arg)` (a line limit, or one table's name):
/// its findings (at most `keep` of each
/// kind, stopping at `keep` lines of damage) and how many lines it gave. A
/// check that fails half way keeps what it found: with the failure as one
/// more line of damage when SQLite gave up on a malformed page or record
/// ([`is_damage`]), as [`Findings::unfinished`] otherwise.
fn run_check(
    conn: &Connection,
    pragma: &str,
    arg: &str,
    keep: u32,
    columns: &Columns,
    stopped: &std::sync::atomic::AtomicBool,
    table: Option<&str>,
) -> rusqlite::Result<(Findings, usize)> {
    let keep = keep as usize;
    let mut found = Findings::default();
    let mut lines = 0;
    // Where the check failed: damage first (one met as the budget ran out
    // is damage still), then the budget (not the file's doing). Anything
    // else says nothing of damage: computing a row's value failed (a
    // generated column's `abs()` overflowing, which a client's schema
    // change can arrange). Taken for damage, it refused a sound file at
    // every start and backup, and `--recover` replaced it with an older
    // backup.
    let failed = |found: &mut Findings, e: rusqlite::Error| {
        if is_damage(&e) {
            found.damage.push(Error::from(e).to_string());
        } else if stopped.load(std::sync::atomic::Ordering::Relaxed) {
            found.unfinished = Some(String::new());
        } else {
            found.unfinished = Some(format!(
                "{pragma} could not go on ({}), which is not a sign of damage; what it \
                 found before is reported",
                Error::from(e)
            ));
        }
    };
    // A check that cannot be prepared could not run: an error (see
    // `check_pragma`).
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({arg})"))?;
    let mut rows = stmt.query([])?;
    loop {
        let line: String = match rows.next() {
            // Once it must stop, SQLite's allocations may be refused
            // (`heap::stop_when`), and a page it could not read for that
            // is reported as a line of damage ("unable to get the page"):
            // no line is taken from then on (review 152).
            Ok(Some(_)) if stopped.load(std::sync::atomic::Ordering::Relaxed) => {
                found.unfinished = Some(String::new());
                break;
            }
            Ok(Some(row)) => row.get(0)?,
            Ok(None) => break,
            Err(e) => {
                failed(&mut found, e);
                break;
            }
        };
        if line == "ok" {
            continue;
        }
        lines += 1;
        let kind = if from_virtual_table(&line) {
            &mut found.virtual_tables
        } else if from_the_data(&line, columns, table) {
            &mut found.data
        } else {
            &mut found.damage
        };
        if kind.len() < keep {
            kind.push(line);
        }
        if found.damage.len() >= keep {
            break;
        }
    }
    Ok((found, lines))
}

/// After a whole-file check stopped at an error that is not damage: the
/// rows of every ordinary table checked again, table by table, so that one
/// table whose values cannot be computed (a client's) hides nothing of the
/// others. SQLite checks the pages and b-trees of the whole file first, and
/// the rows table by table after, newest tables first: the error stopped
/// the check of every older table's rows, litebridge's own among them.
///
/// It never fails: what the first pass found is kept whatever happens here.
/// The budget is checked between tables.
fn table_by_table(
    conn: &Connection,
    pragma: &str,
    mut found: Findings,
    limit: u32,
    columns: &Columns,
    stopped: &std::sync::atomic::AtomicBool,
) -> Findings {
    let Some(why) = found.unfinished.clone().filter(|w| !w.is_empty()) else {
        return found; // whole, or out of time
    };
    let out_of_time = |mut found: Findings| {
        found.unfinished = Some(String::new());
        found
    };
    let listed = conn
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'shadow')")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    let tables = match listed {
        Ok(tables) => tables,
        Err(_) if stopped.load(std::sync::atomic::Ordering::Relaxed) => return out_of_time(found),
        Err(e) => {
            found.unfinished = Some(format!(
                "{why}; the tables could not be listed to check them one by one ({})",
                Error::from(e)
            ));
            return found;
        }
    };
    let keep = limit as usize;
    let mut unchecked = Vec::new();
    for table in tables {
        if stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return out_of_time(found);
        }
        if found.damage.len() >= keep {
            break;
        }
        let arg = format!("'{}'", table.replace('\'', "''"));
        let (one, _) = match run_check(conn, pragma, &arg, limit, columns, stopped, Some(&table)) {
            Ok(one) => one,
            Err(e) if is_damage(&e) => {
                found.damage.push(Error::from(e).to_string());
                continue;
            }
            Err(_) => {
                unchecked.push(table);
                continue;
            }
        };
        if one.unfinished.as_deref() == Some("") {
            return out_of_time(found);
        }
        if one.unfinished.is_some() {
            unchecked.push(table);
        }
        for (into, from) in [
            (&mut found.damage, one.damage),
            (&mut found.virtual_tables, one.virtual_tables),
            (&mut found.data, one.data),
        ] {
            for line in from {
                if into.len() < keep && !into.contains(&line) {
                    into.push(line);
                }
            }
        }
    }
    let mut names = unchecked
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if unchecked.len() > 10 {
        names.push_str(&format!(" and {} more", unchecked.len() - 10));
    }
    found.unfinished = Some(if unchecked.is_empty() {
        format!("{why}; every table was then checked on its own")
    } else {
        format!(
            "{why}; every table was then checked on its own, and the rows of {names} could not all be"
        )
    });
    found
}

/// Whether a check's error is damage to the file (SQLite found a page or
/// record it cannot read as one), rather than a failure to go on.
pub(crate) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Every column of every ordinary table, by the name a check gives it
/// (`table.column`, in lower case: two may share one, `a` . `b.c` and
/// `a.b` . `c`).
type Columns = std::collections::HashMap<String, Vec<Column>>;

/// A column, as [`from_the_data`] judges a check's line about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    table: String,
    /// A virtual generated column: its value is computed at each read.
    computed: bool,
    /// Its default may read NULL in rows older than it ([`may_read_null`]).
    null_default: bool,
}

fn columns(conn: &Connection) -> rusqlite::Result<Columns> {
    // Tables with rows of their own (a shadow table included: a client's
    // table a virtual table later claimed by name was left out, and its
    // lines taken for damage: review 195); not a virtual table, whose
    // module may be missing from this build (asking for its columns then
    // fails), nor a view. From `sqlite_schema`: `pragma_table_list`
    // prepares every view, a broken one again at each step.
    // Names are matched without regard to ASCII case, as SQLite's are: the
    // check's lines print a table's name as SQLite holds it, which may
    // differ in case from `sqlite_schema`'s in a file another program
    // changed (review 196; asking `pragma_table_list` for each name cost
    // a pass over every view each: review 197).
    let mut stmt = conn.prepare(
        "SELECT t.name, p.name, p.hidden, p.dflt_value \
         FROM main.sqlite_schema AS t, pragma_table_xinfo(t.name, 'main') AS p
         WHERE t.type = 'table' AND t.rootpage <> 0",
    )?;
    let mut columns = Columns::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let table = r.get::<_, String>(0)?;
        let name = format!("{table}.{}", r.get::<_, String>(1)?).to_ascii_lowercase();
        let default = r.get::<_, Option<String>>(3)?;
        columns.entry(name).or_default().push(Column {
            table,
            computed: r.get::<_, i64>(2)? == 2,
            null_default: default.as_deref().is_some_and(may_read_null),
        });
    }
    Ok(columns)
}

/// Whether a column's default, as `pragma_table_xinfo` gives its text, may
/// read NULL in the rows a table had when the column was added: a constant
/// expression holding the word NULL outside a string, a quoted name, a
/// comment and `CAST`'s type, that SQLite lets `ADD COLUMN` take with `NOT
/// NULL` (`CAST(NULL AS VARCHAR(10))`, `-NULL`), calling no function but
/// `CAST`. A default that calls one (`unixepoch()`) cannot be added to a
/// table with rows, so none reads it unstored: a NULL there is damage
/// (review 193). The word `NULL` alone SQLite refuses to add.
/// It errs towards "may": a NULL it lets by is a flipped bit not told as
/// damage, one it does not is a sound file refused at start (review 194).
fn may_read_null(default: &str) -> bool {
    let upper = default.trim().to_ascii_uppercase();
    // (`+NULL` is kept as written when in parentheses, and reads NULL:
    // review 195.)
    if upper == "NULL" {
        return false;
    }
    let b = upper.as_bytes();
    let mut has_null = false;
    // The depth of each open `CAST(`; its type, after `AS`, is skipped.
    let mut casts: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut skipping_to: Option<usize> = None;
    let mut after_word: Option<&str> = None;
    let mut at = 0;
    while at < b.len() {
        let c = b[at];
        if c == b'-' && b.get(at + 1) == Some(&b'-') {
            at = b[at..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |n| at + n);
            continue;
        }
        if c == b'/' && b.get(at + 1) == Some(&b'*') {
            at = upper[at + 2..]
                .find("*/")
                .map_or(b.len(), |n| at + 2 + n + 2);
            continue;
        }
        match c {
            b'\'' => {
                at = crate::db::exec::quoted_end(b, at);
                after_word = None;
                continue;
            }
            // A quoted name: a word, never the keyword.
            b'"' | b'`' | b'[' => {
                at = crate::db::exec::quoted_end(b, at);
                after_word = Some("");
                continue;
            }
            b'(' => {
                match after_word.take() {
                    Some("CAST") if skipping_to.is_none() => casts.push(depth),
                    // A function called.
                    Some(_) if skipping_to.is_none() => return false,
                    _ => {}
                }
                depth += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                if casts.last() == Some(&depth) {
                    casts.pop();
                    if skipping_to == Some(depth) {
                        skipping_to = None;
                    }
                }
                after_word = None;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = at;
                while at < b.len()
                    && (b[at].is_ascii_alphanumeric() || b[at] == b'_' || b[at] == b'$')
                {
                    at += 1;
                }
                let word = &upper[start..at];
                if skipping_to.is_none() {
                    if word == "AS"
                        && let Some(&cast) = casts.last()
                    {
                        skipping_to = Some(cast);
                    }
                    has_null |= word == "NULL";
                }
                after_word = Some(word);
                continue;
            }
            c if c.is_ascii_whitespace() => {}
            _ => after_word = None,
        }
        at += 1;
    }
    has_null
}

/// Whether a line of an integrity check is about a column's value against
/// its declaration (`NULL value in t.v`, `non-INTEGER value in t.v` for a
/// STRICT table, `NUMERIC value in t.v`, `TEXT value in t.v`), as SQLite
/// words them, where the schema explains it and the file is sound:
///
/// - a virtual generated column: its expression is computed again on every
///   read, and a new column can change what it computes (one declared `NOT
///   NULL` then reads NULL);
/// - for `NULL value in`, a column whose default may read NULL
///   ([`may_read_null`]): the rows older than the column read its default,
///   and `ALTER TABLE ... ADD COLUMN c NOT NULL DEFAULT (CAST(NULL AS
///   INT))` passes SQLite's own check (litebridge refuses it from clients;
///   a file another program changed may hold one). Taken for damage, it
///   refused a sound file at every start and backup, and `--recover`
///   replaced it with an older one (review 190).
///
/// The same line about any other stored column (a STORED generated one
/// included: its value is written once, not computed again) is damage: no
/// statement stores such a value, but a flipped bit in a record's header
/// does (integer 0 read as NULL). So is a line whose name two tables
/// spell (`a` . `b.c` and `a.b` . `c`) unless both explain it, except in a
/// check of one `table`, whose lines are its own: clients cannot make such
/// names (review 193 made a generated column's NULL look like damage so,
/// and a per-table look to tell them apart could be made to fail: review
/// 194).
fn from_the_data(line: &str, columns: &Columns, table: Option<&str>) -> bool {
    const TYPES: [&str; 6] = ["ANY", "BLOB", "INT", "INTEGER", "REAL", "TEXT"];
    let (name, null) = match line.strip_prefix("NULL value in ") {
        Some(name) => (Some(name), true),
        None => (
            ["NUMERIC value in ", "TEXT value in "]
                .iter()
                .find_map(|p| line.strip_prefix(p))
                .or_else(|| {
                    let rest = line.strip_prefix("non-")?;
                    TYPES
                        .iter()
                        .find_map(|t| rest.strip_prefix(t)?.strip_prefix(" value in "))
                }),
            false,
        ),
    };
    let Some(candidates) = name.and_then(|n| columns.get(&n.to_ascii_lowercase())) else {
        return false;
    };
    let mut candidates = candidates
        .iter()
        .filter(|c| table.is_none_or(|t| c.table.eq_ignore_ascii_case(t)))
        .peekable();
    candidates.peek().is_some() && candidates.all(|c| c.computed || (null && c.null_default))
}

/// Whether a line of an integrity check comes from a virtual table's own
/// check (`xIntegrity` of FTS3/4, FTS5 and R-tree, as SQLite words them).
/// Every other line is SQLite's check of the file, which a client cannot
/// word: the two never mix.
fn from_virtual_table(line: &str) -> bool {
    [
        "malformed inverted index for FTS",
        "unable to validate the inverted index for FTS",
        "In RTree ",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

#[cfg(test)]
mod tests {

    /// Review 180: explaining a failed reopen opened the file and closed it,
    /// which drops every `fcntl` lock of this process on it, the shared lock
    /// SQLite's connections hold on a database in WAL mode included: another
    /// process could then take it out of WAL mode (and `litebridge restore`
    /// replace it) under the running service.
    #[tokio::test]
    async fn explaining_a_failed_open_leaves_the_locks_of_the_open_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let db = crate::Database::open(&path, crate::DbConfig::default())
            .await
            .unwrap();
        db.execute("CREATE TABLE t(a)", ()).await.unwrap();
        let leave_wal = || {
            let out = std::process::Command::new("python3")
                .arg("-c")
                .arg(
                    "import sqlite3, sys\n\
                     c = sqlite3.connect(sys.argv[1], timeout=0)\n\
                     try:\n    print(c.execute('PRAGMA journal_mode=DELETE').fetchone()[0])\n\
                     except sqlite3.OperationalError as e:\n    print(e)",
                )
                .arg(&path)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(leave_wal(), "database is locked", "held while open");
        let reason = super::why_not(&path, "disk I/O error".into());
        assert_eq!(reason, "disk I/O error");
        assert_eq!(
            leave_wal(),
            "database is locked",
            "still held after why_not"
        );
        db.close().await;
    }

    /// A database of `rows` rows in a table whose virtual generated column
    /// builds a string of `width` bytes for each: added after the rows, as
    /// a client can, so that nothing computed it before a check does.
    fn costly(rows: u32, width: u64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("costly.db")).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t(n INTEGER);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
             INSERT INTO t(n) SELECT {width} FROM c;
             ALTER TABLE t ADD COLUMN g TEXT AS (printf('%.*c', n, 'x'));"
        ))
        .unwrap();
        (dir, conn)
    }

    /// A client's table whose virtual generated column builds a large
    /// string, added after its rows: no insert computed it, every check
    /// does, for every row. A bounded check stops at its budget and says
    /// so; what it read is not called damage.
    #[test]
    fn a_bounded_check_stops_at_its_budget_without_calling_it_damage() {
        let (_dir, mut conn) = costly(20_000, 2_000_000);
        let started = std::time::Instant::now();
        // The whole check takes about a second here (it took 97 ms for a
        // tenth of the rows, which made a budget of 100 ms a coin toss).
        let found = quick_check(&mut conn, 10, Bound::Within(Duration::from_millis(20))).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(found.damage.is_empty(), "{found:?}");
        let why = found.unfinished.expect("it stopped before the end");
        assert!(why.contains("stopped after"), "{why}");
        // The connection is as it was: no progress handler left behind.
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM t WHERE rowid <= 100 AND length(g) > 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 100);
    }

    use super::*;

    /// Found by a review: the budget was kept by a progress handler, which
    /// SQLite calls every 10,000 steps of a statement; a table of a few
    /// rows each computing a huge value (one step each) never reached it.
    #[test]
    fn a_bounded_check_stops_on_time_in_a_table_of_few_costly_rows() {
        let (_dir, mut conn) = costly(5, 200_000_000);
        let started = std::time::Instant::now();
        let found = quick_check(&mut conn, 10, Bound::Within(Duration::from_millis(50))).unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(
            found
                .unfinished
                .as_deref()
                .is_some_and(|w| w.contains("stopped after")),
            "{found:?} in {took:?}"
        );
    }

    #[test]
    fn only_values_the_schema_explains_are_the_datas_and_the_rest_is_damage() {
        let column = |table: &str, computed, null_default| Column {
            table: table.to_owned(),
            computed,
            null_default,
        };
        let columns: Columns = [
            ("g.v".to_owned(), vec![column("g", true, false)]),
            ("a.b.c".to_owned(), vec![column("a", true, false)]),
            ("g.w".to_owned(), vec![column("g", false, false)]),
            ("t.flag".to_owned(), vec![column("t", false, false)]),
            ("t.late".to_owned(), vec![column("t", false, true)]),
            // `x` . `y.z` and `x.y` . `z` (review 193).
            (
                "x.y.z".to_owned(),
                vec![column("x", true, false), column("x.y", false, false)],
            ),
        ]
        .into();
        for line in [
            "NULL value in g.v",
            "NULL value in a.b.c",
            "non-INTEGER value in g.v",
            "non-TEXT value in g.v",
            "NUMERIC value in g.v",
            "TEXT value in g.v",
            "NULL value in t.late",
            // As SQLite holds the name, which may differ in case from
            // `sqlite_schema`'s (review 196).
            "NULL value in G.V",
        ] {
            assert!(from_the_data(line, &columns, None), "{line}");
        }
        for line in [
            // A stored column: a flipped bit, not a statement.
            "NULL value in t.flag",
            "NULL value in g.w",
            // A default explains a NULL only.
            "non-INTEGER value in t.late",
            "non-unique entry in index i",
            "non-INTEGERS value in g.v",
            "row 3 missing from index i",
            "*** in database main ***\nTree 2 page 2 cell 0: invalid page number 9",
            "CHECK constraint failed in x",
            "NULL value in no.such",
        ] {
            assert!(!from_the_data(line, &columns, None), "{line}");
        }
        // Spelled by two tables: damage unless both explain it, but a check
        // of one table knows whose it is.
        assert!(!from_the_data("NULL value in x.y.z", &columns, None));
        assert!(from_the_data("NULL value in x.y.z", &columns, Some("x")));
        assert!(!from_the_data("NULL value in x.y.z", &columns, Some("x.y")));
    }

    #[test]
    fn only_a_constant_default_holding_null_may_read_null() {
        for may in [
            "CAST(NULL AS INT)",
            "-NULL",
            "- NULL",
            "(-NULL)",
            "CAST(NULL AS TEXT) COLLATE nocase",
            "cast ( null as int )",
            "CAST(NULL AS VARCHAR(10))",
            "-NULL /* f( */",
            "CAST(NULL AS [f(])",
            "-NULL -- f(",
            "CAST(CAST(NULL AS INT) AS DECIMAL(10, 2))",
            "+NULL",
        ] {
            assert!(may_read_null(may), "{may}");
        }
        for not in [
            "NULL",
            "0",
            "'a'",
            "'NULL'",
            "x'00'",
            "CURRENT_TIMESTAMP",
            "unixepoch()",
            "nullif(1, 1)",
            "coalesce(NULL, 1)",
            "lower(hex(randomblob(16)))",
            "datetime('now')",
            "\"f\"(NULL)",
            "abc",
            "CAST('x' AS INT)",
            "[NULL]",
            "`NULL`",
            "\"NULL\"",
            "CAST(0 AS [NULL])",
            "CAST(0 AS NULL)",
            "0 /* NULL */",
            "0 -- NULL",
            "[f](NULL)",
            "`f` (NULL)",
            "'it''s NULL'",
        ] {
            assert!(!may_read_null(not), "{not}");
        }
    }

    #[test]
    fn a_column_added_with_a_null_default_by_another_program_is_the_datas() {
        // SQLite lets these through on a table with rows (only the literal
        // `DEFAULT NULL` is refused); litebridge refuses them from clients,
        // but a file another program changed may hold them (review 190).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE t(a);
                 INSERT INTO t VALUES (1);
                 ALTER TABLE t ADD COLUMN c NOT NULL DEFAULT (CAST(NULL AS INT));
                 ALTER TABLE t ADD COLUMN d NOT NULL DEFAULT -NULL;
                 ALTER TABLE t ADD COLUMN e NOT NULL DEFAULT 7;",
            )
            .unwrap();
        }
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let found = quick_check(&mut conn, 20, Bound::Whole).unwrap();
        assert!(found.damage.is_empty(), "{found:?}");
        assert_eq!(
            found.data,
            ["NULL value in t.c", "NULL value in t.d"],
            "{found:?}"
        );
    }

    #[test]
    fn the_datas_lines_do_not_use_up_the_limit_and_hide_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                r#"PRAGMA page_size = 4096;
                   CREATE TABLE g(a, v AS ("b") NOT NULL);
                   WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT 50)
                   INSERT INTO g(a) SELECT i FROM c;
                   ALTER TABLE g ADD COLUMN b;
                   CREATE TABLE t(id INTEGER PRIMARY KEY, flag INTEGER NOT NULL);
                   INSERT INTO t VALUES (1, 0);"#,
            )
            .unwrap();
        }
        // t's one record: its flag's type byte 8 (the integer 0) made 0
        // (NULL), as a flipped bit would. The record sits at the end of
        // t's root page, the last page.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 4096;
        let page = &mut bytes[last..];
        let at = page.iter().rposition(|&b| b == 0x08).unwrap();
        page[at] = 0x00;
        std::fs::write(&path, &bytes).unwrap();
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        for limit in [1, 5, 20] {
            let found = quick_check(&mut conn, limit, Bound::Whole).unwrap();
            assert!(!found.damage.is_empty(), "limit {limit}: {found:?}");
            assert!(found.data.len() <= limit as usize, "{found:?}");
            assert!(
                found.data.iter().all(|l| l == "NULL value in g.v"),
                "{found:?}"
            );
        }
    }

    /// A database made by `sql`, whose last page's last byte 8 (a record
    /// header's integer 0) is made 0 (NULL), as a flipped bit would.
    fn flipped(dir: &tempfile::TempDir, sql: &str) -> Connection {
        let path = dir.path().join("f.db");
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 4096;
        let at = bytes[last..].iter().rposition(|&b| b == 0x08).unwrap();
        bytes[last + at] = 0x00;
        std::fs::write(&path, &bytes).unwrap();
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    #[test]
    fn a_stored_generated_column_or_a_name_that_might_be_one_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        // A STORED value is written once: only damage makes it NULL.
        let mut conn = flipped(
            &dir,
            "PRAGMA page_size = 4096;
             CREATE TABLE t(a INTEGER NOT NULL, v AS (a * 1) STORED NOT NULL);
             INSERT INTO t(a) VALUES (0);",
        );
        let found = quick_check(&mut conn, 10, Bound::Whole).unwrap();
        assert_eq!(found.damage, ["NULL value in t.v"], "{found:?}");
        drop(conn);
        let dir = tempfile::tempdir().unwrap();
        // `a`.`b.c` is virtual, `a.b`.`c` stored: the line could be either.
        let mut conn = flipped(
            &dir,
            r#"PRAGMA page_size = 4096;
               CREATE TABLE a(x, "b.c" AS (x) VIRTUAL);
               CREATE TABLE "a.b"(id INTEGER PRIMARY KEY, c INTEGER NOT NULL);
               INSERT INTO "a.b" VALUES (1, 0);"#,
        );
        let found = quick_check(&mut conn, 10, Bound::Whole).unwrap();
        assert_eq!(found.damage, ["NULL value in a.b.c"], "{found:?}");
    }

    #[test]
    fn a_virtual_table_of_a_module_this_build_lacks_does_not_fail_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(x);
             PRAGMA writable_schema = ON;
             INSERT INTO sqlite_schema VALUES
                 ('table', 'v', 'v', 0, 'CREATE VIRTUAL TABLE v USING no_such_module(x)');
             PRAGMA writable_schema = OFF;",
        )
        .unwrap();
        drop(conn);
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let found = quick_check(&mut conn, 10, Bound::Whole).unwrap();
        assert!(found.damage.is_empty(), "{found:?}");
    }

    #[test]
    fn a_check_computes_generated_columns_with_the_linear_functions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let halt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            // Written as the writer writes: with litebridge's functions.
            let conn = Connection::open(&path).unwrap();
            crate::db::functions::install(&conn, 1 << 30, 1000, halt).unwrap();
            conn.execute_batch(
                "CREATE TABLE g(a, b, v AS (instr(a, b)) NOT NULL);
                 INSERT INTO g(a, b) VALUES (printf('%.*c', 800000, 'a'), printf('%.*c', 399999, 'a') || 'b');",
            )
            .unwrap();
        }
        // A fresh connection, as every check opens: SQLite's own instr took
        // seconds here (quadratic), on every start and backup.
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let started = std::time::Instant::now();
        let found = quick_check(&mut conn, 10, Bound::Whole).unwrap();
        assert!(
            found.damage.is_empty() && found.data.is_empty(),
            "{found:?}"
        );
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_check_leaves_check_constraints_out_and_as_it_found_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            r#"CREATE TABLE x(a, CHECK("b" = 'b'));
               INSERT INTO x(a) VALUES (1);
               ALTER TABLE x ADD COLUMN b DEFAULT 0;"#,
        )
        .unwrap();
        let found = integrity_check(&mut conn, 10).unwrap();
        assert!(
            found.damage.is_empty() && found.data.is_empty(),
            "{found:?}"
        );
        let on: bool = conn
            .query_row("PRAGMA ignore_check_constraints", [], |r| r.get(0))
            .unwrap();
        assert!(!on, "the connection enforces CHECK constraints again");
        assert!(
            conn.execute("INSERT INTO x(a, b) VALUES (2, 'c')", [])
                .is_err()
        );
    }
}
