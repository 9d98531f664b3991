//! The SQLite engine: one writer with group commit, a read lane, a heavy lane.
//!
//! # Design
//!
//! **One writer.** SQLite allows one write transaction at a time. Several
//! read-write connections do not write faster; they queue on the file lock
//! and show it as p99 latency (an r2d2 pool of 4 measured 51,000 rows/s and
//! a p99 of 1.9 ms here, against 72,000 for one shared connection). So exactly one thread
//! owns the only read-write connection, and every write is a request on its
//! bounded queue (`writer`, `queue`). What the writer does per request is
//! what limits a pipelined load, so the hand-off is lean: the queue is taken
//! whole under one lock, `execute`'s future is small (`execute`), and each
//! commit's WAL frames leave in one write (`wal_vfs`).
//!
//! **Group commit.** The writer takes everything queued (up to `max_batch`)
//! into one transaction and answers each caller after COMMIT
//! (`group_commit`). One COMMIT (one fsync under `durability = full`) pays
//! for the whole batch, which is where the throughput comes from, and each
//! caller still gets its own result and its own error. `max_wait` trades
//! latency for batch size: zero (the default) commits what is queued
//! immediately; under load the queue fills while the previous batch commits,
//! so batches grow by themselves exactly when it pays.
//!
//! **Reads on the caller's thread.** The read lane runs point reads inline
//! (`readers`): a thread hand-off costs more than the read. Long queries go
//! to the heavy lane (`heavy`), a few connections on their own threads with
//! their own queue, so they cannot starve point reads.
//!
//! **Deadlines inside SQLite.** A statement still running at its deadline is
//! interrupted by a progress handler reading a thread-local context
//! (`guard`); an interrupt can never hit another caller's statement. A
//! request whose deadline passes while it is queued is never started. A write
//! that times out did not commit: the writer, not the caller's timer, decides.
//!
//! **Checkpoints** run on a thread of their own (`checkpointer`), nudged by
//! the writer when the WAL passes a threshold: passive first, `TRUNCATE` when
//! readers keep the WAL from being reused, so the WAL stays bounded under
//! continuous reads and writes and checkpoint I/O never stalls a write.

mod backup;
pub(crate) use backup::{
    NOT_A_DATABASE, backup_marks, check_file_bounded, mode_of, read_database_id, source_mark,
    sync_dir, with_suffix,
};
pub(crate) use guard::ON_THE_WRITER;
mod checkpointer;
mod claims;
mod exec;
mod execute;
mod ffi;
pub(crate) mod foreign_commits;
mod functions;
mod group_commit;
mod guard;
pub(crate) mod heap;
mod heavy;
mod inline;
mod introspect;
mod keeper;
mod on_disk;
mod open;
mod patterns;
mod queue;
mod readers;
mod restore;
pub(crate) mod shm_peers;
mod snippet;
mod wal_vfs;
mod writer;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

pub use backup::{
    BackupProgress, BackupReport, CHECK_COULD_NOT_RUN, CheckDepth, CheckReport, IfExists,
    backup_file, check_file, utc_file_stamp, utc_stamp,
};
pub use inline::inline_reads;
pub use introspect::{ColumnInfo, IndexInfo, TableInfo};
pub use restore::{RestoreReport, restore_file};
pub use writer::{CheckpointMode, CheckpointReport};

/// The fingerprint of `execute_many`'s write (see `idempotency`), read off
/// the async runtime's threads when the rows are many (a million rows are
/// a lot of values to serialize).
async fn rows_fingerprint(sql: String, rows: Vec<Params>) -> Result<(Vec<Params>, String)> {
    let fingerprint = move |rows: Vec<Params>| {
        let fp = crate::idempotency::fingerprint(
            "Rows",
            rows.iter().map(|p| (sql.as_str(), claims::params_text(p))),
        );
        (rows, fp)
    };
    if rows.len() <= 1_000 {
        return Ok(fingerprint(rows));
    }
    tokio::task::spawn_blocking(move || fingerprint(rows))
        .await
        .map_err(|e| Error::Internal {
            message: format!("the fingerprint of an execute_many failed: {e}"),
        })
}

/// The table of idempotency records (see `claims`), for the stores'
/// migrations: the statement, and the definition `sqlite_schema` keeps.
pub(crate) const CLAIMS_TABLE: (&str, &str) = (claims::TABLE, claims::TABLE_SQL);

/// For the open-time check of litebridge's namespace (`store::schema`).
pub(crate) fn foreign_key_to_own(conn: &Connection) -> Result<Option<(String, String)>> {
    exec::foreign_key_to_own(conn, guard::internal_sql())
}

use crate::config::DbConfig;
use crate::error::{Error, Result};
use crate::stats::{Counters, DbStats, LatencySnapshots};
use crate::sync::lock;
use crate::value::{ExecResult, Params, Rows, Statement};
use group_commit::{Job, Request};
use guard::Budget;

/// Whose statements a write runs (see `guard::Budget`).
#[derive(Debug, Clone, Copy)]
enum Trust {
    /// Client SQL, under the authorizer's client rules.
    Client,
    /// The embedding application's closure ([`Database::write`]).
    Application,
    /// litebridge's own statements.
    Own,
}
use heavy::HeavyLane;
use open::Opener;
use readers::ReaderPool;
use writer::{Admission, WriterHandle};

/// Which connections run a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// The read lane: short queries, run on the caller's thread.
    #[default]
    Read,
    /// The heavy lane: long queries, on their own threads and queue.
    Heavy,
}

impl std::str::FromStr for Lane {
    type Err = Error;

    /// Parses `"read"` or `"heavy"`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `lane` for anything else.
    fn from_str(s: &str) -> Result<Lane> {
        match s {
            "read" => Ok(Lane::Read),
            "heavy" => Ok(Lane::Heavy),
            _ => Err(Error::invalid(
                "lane",
                format!("{s:?} is not a lane; expected \"read\" or \"heavy\""),
            )),
        }
    }
}

/// Options of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryOptions {
    /// Deadline; `None` uses [`DbConfig::default_timeout`].
    pub timeout: Option<Duration>,
    /// Rows returned at most; more set [`Rows::truncated`]. Default: all.
    pub max_rows: Option<usize>,
    /// Which connections run it. Default: [`Lane::Read`].
    pub lane: Lane,
    /// Who asks, when the caller's requests may share database sessions
    /// (an API key's id; the RPC layer gives local callers 0). On
    /// PostgreSQL a connection that last served another caller, or one that
    /// gave none, is reset before it runs this; `None` (the default) always
    /// gets a reset connection. SQLite ignores it.
    pub caller: Option<u64>,
}

/// Options of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// Deadline, covering the time queued; `None` uses [`DbConfig::default_timeout`].
    /// A write that times out did not commit.
    pub timeout: Option<Duration>,
    /// Answer `overloaded` at once when the write queue is full, instead of waiting.
    pub no_wait: bool,
    /// Who asks (see [`QueryOptions::caller`]).
    pub caller: Option<u64>,
    /// Apply at most once for this key, however often it is sent: a send
    /// after the first committed answers with the first one's results and
    /// runs nothing (see `idempotency`). For [`Database::execute_with`],
    /// [`Database::batch`] and [`Database::execute_many`]; a closure
    /// ([`Database::write_with`]) answers `unsupported`.
    pub idempotency_key: Option<crate::IdempotencyKey>,
}

/// The answer to a write closure with an idempotency key: its result
/// cannot be recorded, nor the closure told apart from another.
fn once_unsupported() -> Error {
    Error::Unsupported {
        what: "idempotency_key".into(),
        here: "on a write closure".into(),
        instead: "give the key to execute, batch or execute_many, whose statements and \
                  results litebridge can record"
            .into(),
        backend: "sqlite",
    }
}

/// Health of a database, for readiness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the writer accepts writes and readers are available.
    pub healthy: bool,
    /// What is wrong, when not healthy.
    pub problems: Vec<String>,
}

/// A litebridge database: one writer with group commit, a read lane and a
/// heavy lane over one SQLite file. Cheap to clone; every clone is the same
/// database.
///
/// Use it inside a Tokio runtime with its time driver enabled (the default
/// `#[tokio::main]` or `Builder::enable_all`): waits for a full queue or a busy
/// pool are bounded by deadlines. Dropping the last clone (or [`close`]) commits
/// what is queued, checkpoints and joins the threads.
///
/// [`close`]: Database::close
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// A handle that does not keep its [`Database`] open: background tasks hold
/// one, so dropping the last `Database` still closes it.
#[derive(Clone)]
pub(crate) struct WeakDatabase(std::sync::Weak<Inner>);

impl WeakDatabase {
    /// The database, while a `Database` handle of it is still held.
    pub(crate) fn upgrade(&self) -> Option<Database> {
        self.0.upgrade().map(|inner| Database { inner })
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.opener.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    opener: Opener,
    writer: WriterHandle,
    checkpointer: checkpointer::Checkpointer,
    readers: ReaderPool,
    heavy: HeavyLane,
    counters: Arc<Counters>,
    default_timeout: Option<Duration>,
    health: Mutex<Option<(flume::Sender<()>, JoinHandle<()>)>>,
    /// The clock of idempotency records, read once their table is known
    /// to be there (see `claims`).
    claims: tokio::sync::OnceCell<claims::Clock>,
    /// [`Database::close`] was called (its health says so, not what the
    /// closing did: it removes the log).
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some((stop, thread)) = lock(&self.health).take() {
            drop(stop);
            // The health thread holds the database for a moment while it
            // checks; if the last handle went away meanwhile, this drop runs
            // on that thread, which must not wait for itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        self.readers.close();
        self.heavy.shutdown();
        self.writer.shutdown();
        self.checkpointer.shutdown();
    }

    fn budget(&self, timeout: Option<Duration>) -> Budget {
        Budget::new(timeout.or(self.default_timeout))
            .with_memory(self.opener.config.max_request_memory)
    }

    /// `r`, with this database's path in a `Corrupt` error: SQLite's
    /// SQLITE_CORRUPT comes without one (it printed an empty path).
    fn named<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| match e {
            Error::Corrupt { path, detail } if path.as_os_str().is_empty() => Error::Corrupt {
                path: self.opener.path.clone(),
                detail,
            },
            other => other,
        })
    }

    fn record_write<T>(&self, started: std::time::Instant, r: &Result<T>) {
        let c = &self.counters;
        c.write_latency.record(started.elapsed());
        c.saw(r);
        if r.is_err() {
            c.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a closure for group commit (always in its own savepoint), run
    /// with `trust`.
    async fn submit<T, F>(&self, options: WriteOptions, trust: Trust, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
    {
        let budget = self.budget(options.timeout);
        let budget = match trust {
            Trust::Client => budget,
            Trust::Application => budget.trusted(),
            Trust::Own => budget.own(),
        };
        let started = budget.started;
        // Until this future ends: dropped early, it interrupts the write.
        let (budget, _cancel) = budget.cancellable();
        let (job, reply) = Job::new(budget, true, f);
        let reply = async { reply.await.unwrap_or_else(|_| Err(Error::writer_gone())) };
        let queued = match self
            .writer
            .submit_now(Request::Other(job), admission(&options))
        {
            Ok(None) => Ok(()),
            Ok(Some(job)) => Box::pin(self.writer.wait_for_room(job)).await,
            Err(e) => Err(e),
        };
        let r = self.named(match queued {
            Ok(()) => reply.await,
            Err(e) => Err(e),
        });
        self.record_write(started, &r);
        r
    }

    /// Queues client SQL `run` with the idempotency key `key` of the write
    /// `fingerprint` (see `claims`).
    async fn submit_once<F>(
        &self,
        options: WriteOptions,
        key: crate::IdempotencyKey,
        fingerprint: String,
        mut run: F,
    ) -> Result<Vec<ExecResult>>
    where
        F: FnMut(&Connection) -> Result<Vec<ExecResult>> + Send + 'static,
    {
        let started = std::time::Instant::now();
        // One deadline for both writes, and for a wait on another caller's
        // start of the clock.
        let timeout = options.timeout.or(self.default_timeout);
        let clock = match timeout {
            Some(t) => tokio::time::timeout(t, self.claims_clock(&options))
                .await
                .unwrap_or(Err(Error::Timeout {
                    after: t,
                    stage: crate::error::TimeoutStage::Queued,
                }))?,
            None => self.claims_clock(&options).await?,
        };
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        if left == Some(Duration::ZERO) {
            return Err(Error::Timeout {
                after: timeout.unwrap_or_default(),
                stage: crate::error::TimeoutStage::Queued,
            });
        }
        let options = WriteOptions {
            timeout: left,
            ..options
        };
        self.submit(options, Trust::Client, move |conn| {
            claims::once(conn, &key, &fingerprint, &clock, &mut run)
        })
        .await?
    }

    /// The records' clock, after making their table if it is missing, in
    /// a trusted write of its own (made in a keyed write's savepoint, it
    /// would go and come back with every keyed write that fails); once per
    /// handle.
    async fn claims_clock(&self, options: &WriteOptions) -> Result<claims::Clock> {
        let start = async {
            let options = WriteOptions {
                idempotency_key: None,
                ..*options
            };
            self.submit(options, Trust::Own, claims::Clock::start)
                .await
                .map_err(|e| match e {
                    // Nothing of the caller's ran: say so, whatever the COMMIT said.
                    Error::OutcomeUnknown { reason, .. } => Error::Unavailable {
                        what: "database",
                        reason: format!(
                            "the table of idempotency records could not be made, and nothing \
                             of the write ran: {reason}"
                        ),
                    },
                    e => e,
                })
        };
        // One start at a time: the others wait for it.
        Ok(*self.claims.get_or_try_init(|| start).await?)
    }
}

fn admission(options: &WriteOptions) -> Admission {
    if options.no_wait {
        Admission::Try
    } else {
        Admission::Wait
    }
}

impl Database {
    /// Opens (creating it if allowed) the database file at `path`.
    ///
    /// Checks the path, proves the file is a SQLite database without writing
    /// to it, runs `quick_check` when [`DbConfig::quick_check_on_open`] is set,
    /// switches it to WAL, then opens the readers and starts the threads.
    ///
    /// # Errors
    /// - [`Error::Config`] for an invalid configuration, naming the key.
    /// - [`Error::Open`] when the path is a directory, its directory does not
    ///   exist, it cannot be opened or switched to WAL for want of write
    ///   access, or the file is not a SQLite database. A file in WAL mode
    ///   that may be read but not written is opened: reads are served,
    ///   writes fail with [`Error::ReadOnly`] naming the file, and
    ///   [`Database::health`] says why.
    /// - [`Error::Corrupt`] when `quick_check` finds damage, naming the file.
    pub async fn open(path: impl AsRef<Path>, config: DbConfig) -> Result<Database> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Database::open_blocking(path, config))
            .await
            .map_err(|e| Error::Internal {
                message: format!("opening the database panicked: {e}"),
            })?
    }

    fn open_blocking(path: PathBuf, config: DbConfig) -> Result<Database> {
        config.validate()?;
        Opener::validate_path(&path, config.create)?;
        let default_timeout = config.default_timeout;
        let opener = Opener {
            path,
            config: Arc::new(config),
            halt: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            read_only: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            on_disk: Arc::default(),
            foreign_commits: Arc::default(),
        };
        let counters = Arc::new(Counters::default());
        let (writer, checkpointer) = WriterHandle::start(opener.clone(), counters.clone())?;
        let lanes = ReaderPool::new(opener.clone(), counters.clone(), checkpointer.keeper())
            .and_then(|readers| Ok((readers, HeavyLane::start(&opener, counters.clone())?)));
        let (readers, heavy) = match lanes {
            Ok(lanes) => lanes,
            Err(e) => {
                // The threads started so far hold the file: stop them.
                writer.shutdown();
                checkpointer.shutdown();
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            opener,
            writer,
            checkpointer,
            readers,
            heavy,
            counters,
            default_timeout,
            health: Mutex::new(None),
            claims: tokio::sync::OnceCell::new(),
            closed: AtomicBool::new(false),
        });
        // Every connection was just opened and set up: that is a check, and
        // `last_health_check` is not empty for the first interval.
        inner.counters.health_checked_now();
        let (stop_tx, stop_rx) = flume::bounded::<()>(0);
        let weak = Arc::downgrade(&inner);
        let interval = inner.opener.config.health_check_interval;
        let thread = std::thread::Builder::new()
            .name("litebridge-health".into())
            .spawn(move || {
                // Disconnection (the sender dropped) is the stop signal.
                while let Err(flume::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.readers.health_check(interval);
                    inner.counters.health_checked_now();
                }
            })
            .map_err(|e| Error::io("cannot start the health thread", "litebridge-health", e))?;
        *lock(&inner.health) = Some((stop_tx, thread));
        Ok(Database { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.opener.path
    }

    /// The count of changes of the file by connections other than this
    /// database's writer, looked at now, and whether the file's header counts
    /// no commit (see `foreign_commits`); `None` when that cannot be told.
    pub(crate) fn foreign_commits(&self) -> Option<foreign_commits::Look> {
        self.inner.opener.foreign_commits.look()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &DbConfig {
        &self.inner.opener.config
    }

    // ----- reads -------------------------------------------------------------

    /// Runs a read-only statement on the read lane with the default options.
    ///
    /// The statement runs inside the poll of this future, on the caller's
    /// thread (moved aside with `block_in_place` after a few milliseconds
    /// on a multi-thread runtime): an outer timeout or a dropped future
    /// cannot stop it. Its deadline does ([`QueryOptions::timeout`],
    /// [`DbConfig::default_timeout`]); the heavy lane's reads stop when
    /// their future is dropped.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for a statement that writes; [`Error::Sql`] from
    /// SQLite; [`Error::InvalidArgument`] for parameters that do not match;
    /// [`Error::Timeout`] past the deadline.
    pub async fn query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        self.query_with(sql, params, QueryOptions::default()).await
    }

    /// Runs a read-only statement with explicit options (deadline, row limit, lane).
    ///
    /// # Errors
    /// As [`Database::query`]; on the heavy lane also [`Error::Overloaded`].
    pub async fn query_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: QueryOptions,
    ) -> Result<Rows> {
        let budget = self.inner.budget(options.timeout);
        self.query_in(sql, params.into(), options, budget).await
    }

    async fn query_in(
        &self,
        sql: &str,
        params: Params,
        options: QueryOptions,
        budget: Budget,
    ) -> Result<Rows> {
        let max_bytes = self.inner.opener.config.max_result_bytes;
        // A query whose time went into one long step of SQLite (which the
        // progress handler never sees) and ended past its deadline is not
        // answered as if it had been on time.
        let on_time = {
            let budget = budget.clone();
            move |rows: Rows| {
                if budget.expired() {
                    Err(budget.timeout_error(crate::TimeoutStage::Running))
                } else {
                    Ok(rows)
                }
            }
        };
        match options.lane {
            Lane::Read => {
                self.read_lane(&budget, true, |conn| {
                    exec::query(conn, sql, &params, options.max_rows, max_bytes)
                        .and_then(on_time.clone())
                })
                .await
            }
            Lane::Heavy => {
                let sql = sql.to_owned();
                self.heavy_lane(budget, move |conn| {
                    exec::query(conn, &sql, &params, options.max_rows, max_bytes).and_then(on_time)
                })
                .await
            }
        }
    }

    /// Runs `f` with a read-only connection of the read lane, on this thread.
    /// `f` may be called a second time if the first connection turns out to be
    /// broken.
    ///
    /// # Errors
    /// What `f` returns; [`Error::Timeout`] if no connection frees up in time.
    pub async fn read<T>(&self, f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let budget = self.inner.budget(None).trusted();
        self.read_lane(&budget, false, f).await
    }

    /// Runs `f` with a read-only connection of the heavy lane, on its thread.
    ///
    /// # Errors
    /// What `f` returns; [`Error::Overloaded`] when the heavy queue is full.
    pub async fn read_heavy<T, F>(&self, timeout: Option<Duration>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let budget = self.inner.budget(timeout).trusted();
        self.heavy_lane(budget, f).await
    }

    async fn read_lane<T>(
        &self,
        budget: &Budget,
        inline: bool,
        f: impl FnMut(&Connection) -> Result<T>,
    ) -> Result<T> {
        let started = budget.started;
        let c = &self.inner.counters;
        let r = self
            .inner
            .named(self.inner.readers.run(budget, inline, f).await);
        c.read_latency.record(started.elapsed());
        self.count_error(&r, &c.read_errors);
        r
    }

    async fn heavy_lane<T, F>(&self, budget: Budget, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let started = budget.started;
        let c = &self.inner.counters;
        let r = self.inner.named(self.inner.heavy.run(budget, f).await);
        c.heavy_latency.record(started.elapsed());
        self.count_error(&r, &c.heavy_errors);
        r
    }

    fn count_error<T>(&self, r: &Result<T>, errors: &std::sync::atomic::AtomicU64) {
        self.inner.counters.saw(r);
        if let Err(e) = r {
            errors.fetch_add(1, Ordering::Relaxed);
            if matches!(e, Error::Timeout { .. }) {
                self.inner.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    // ----- writes ------------------------------------------------------------

    /// Runs one statement through group commit; answers after COMMIT.
    ///
    /// `sql` is a string literal or an owned `String` (a literal costs no copy).
    ///
    /// # Errors
    /// [`Error::Sql`] for this statement alone (the rest of its batch commits);
    /// [`Error::Timeout`] if it did not commit before the deadline;
    /// [`Error::Unavailable`] if the writer died while holding it (not committed).
    pub fn execute(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: impl Into<Params>,
    ) -> impl std::future::Future<Output = Result<ExecResult>> + Send + '_ {
        self.run_exec(sql.into(), params.into(), WriteOptions::default(), false)
    }

    /// As [`Database::execute`], but answers [`Error::Overloaded`] at once
    /// instead of waiting when the write queue is full.
    ///
    /// # Errors
    /// As [`Database::execute`], plus [`Error::Overloaded`].
    pub fn try_execute(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: impl Into<Params>,
    ) -> impl std::future::Future<Output = Result<ExecResult>> + Send + '_ {
        let options = WriteOptions {
            no_wait: true,
            ..WriteOptions::default()
        };
        self.run_exec(sql.into(), params.into(), options, false)
    }

    /// Runs one statement through group commit with explicit options.
    ///
    /// # Errors
    /// As [`Database::execute`].
    pub fn execute_with(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: impl Into<Params>,
        options: WriteOptions,
    ) -> impl std::future::Future<Output = Result<ExecResult>> + Send + '_ {
        self.run_exec(sql.into(), params.into(), options, false)
    }

    /// One statement through group commit (see [`execute::Execute`]).
    fn run_exec(
        &self,
        sql: Cow<'static, str>,
        params: Params,
        options: WriteOptions,
        trusted: bool,
    ) -> execute::Execute<'_> {
        execute::Execute::new(&self.inner, sql, params, options, trusted)
    }

    /// A read of the stores: may use litebridge's own tables (see `guard`).
    pub(crate) async fn query_trusted(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        debug_assert!(
            exec::mentions_own_tables(sql),
            "trusted SQL names litebridge_ tables"
        );
        let options = QueryOptions::default();
        let budget = self.inner.budget(options.timeout).own();
        self.query_in(sql, params.into(), options, budget).await
    }

    /// [`query_trusted`](Self::query_trusted) for the keys and quotas: it
    /// may take the read lane's kept connection (see `readers`).
    pub(crate) async fn query_keys(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        let options = QueryOptions::default();
        let budget = self.inner.budget(options.timeout).keys();
        self.query_in(sql, params.into(), options, budget).await
    }

    /// A write of the stores: may use litebridge's own tables (see `guard`).
    pub(crate) fn execute_trusted(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: impl Into<Params>,
    ) -> impl std::future::Future<Output = Result<ExecResult>> + Send + '_ {
        let sql = sql.into();
        debug_assert!(
            exec::mentions_own_tables(&sql),
            "trusted SQL names litebridge_ tables"
        );
        self.run_exec(sql, params.into(), WriteOptions::default(), true)
    }

    /// Forgets the records of idempotency keys (see
    /// [`WriteOptions::idempotency_key`]) a day old both by the system's
    /// clock and by the records' own (which runs only while a handle is
    /// open), or a week old by the system's, all of them; returns how
    /// many. Each statement frees 10,000 records and 16 MiB of their
    /// results at most (a record keeps the rows its write returned), in a
    /// turn of the writer of its own. A [`Service`](crate::Service) does
    /// it each minute; an application using a `Database` on its own and
    /// keys calls it as often.
    ///
    /// # Errors
    /// As [`Database::execute`].
    pub async fn forget_claims(&self) -> Result<u64> {
        self.forget_claims_older_than(crate::idempotency::KEEP)
            .await
    }

    /// As [`Database::forget_claims`], for records older than `keep`.
    pub(crate) async fn forget_claims_older_than(&self, keep: Duration) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let round = self.forget_claims_round(keep, usize::MAX).await?;
            deleted += round.deleted;
            if !round.more {
                return Ok(deleted);
            }
        }
    }

    /// One round of the records' sweep: bounded statements, each a turn
    /// of the writer of its own, until none is left or `steps` were made.
    pub(crate) async fn forget_claims_round(
        &self,
        keep: Duration,
        steps: usize,
    ) -> Result<crate::idempotency::Forgot> {
        let clock = self.inner.claims_clock(&WriteOptions::default()).await?;
        let mut round = crate::idempotency::Forgot {
            deleted: 0,
            more: false,
        };
        for _ in 0..steps {
            let step = self
                .write_own(move |c| claims::forget(c, &clock, keep))
                .await?;
            round.deleted += step.deleted;
            round.more = step.more;
            if !step.more {
                break;
            }
        }
        Ok(round)
    }

    /// A write of the stores that returns rows (an upsert with `RETURNING`).
    pub(crate) async fn write_returning_trusted(
        &self,
        sql: String,
        params: Params,
    ) -> Result<Rows> {
        debug_assert!(
            exec::mentions_own_tables(&sql),
            "trusted SQL names litebridge_ tables"
        );
        self.write_own(move |c| exec::query_writing(c, &sql, &params))
            .await
    }

    /// Writes of the stores in one transaction (all or none).
    pub(crate) async fn batch_trusted(
        &self,
        statements: Vec<(String, Params)>,
    ) -> Result<Vec<ExecResult>> {
        debug_assert!(
            statements
                .iter()
                .all(|(sql, _)| exec::mentions_own_tables(sql)),
            "trusted SQL names litebridge_ tables"
        );
        self.write_own(move |c| {
            statements
                .iter()
                .map(|(sql, p)| exec::execute(c, sql, p))
                .collect()
        })
        .await
    }

    /// Runs several statements as one atomic unit: all of them commit or none.
    ///
    /// # Errors
    /// The first failing statement's error, with its index in the message
    /// (nothing of the batch is committed).
    pub async fn batch(
        &self,
        statements: Vec<Statement>,
        options: WriteOptions,
    ) -> Result<Vec<ExecResult>> {
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let fingerprint = options.idempotency_key.map(|_| {
            crate::idempotency::fingerprint(
                "Each",
                statements
                    .iter()
                    .map(|s| (s.sql.as_str(), claims::params_text(&s.params))),
            )
        });
        let run = move |conn: &Connection| {
            statements
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    exec::execute(conn, &s.sql, &s.params).map_err(|e| e.at("statements", i))
                })
                .collect()
        };
        match (options.idempotency_key, fingerprint) {
            (Some(key), Some(fp)) => self.inner.submit_once(options, key, fp, run).await,
            _ => self.inner.submit(options, Trust::Client, run).await,
        }
    }

    /// Runs one statement once per parameter set, atomically (bulk insert).
    ///
    /// # Errors
    /// The first failing row's error, naming its index (nothing is committed).
    pub async fn execute_many(
        &self,
        sql: &str,
        rows: Vec<Params>,
        options: WriteOptions,
    ) -> Result<ExecResult> {
        // No rows write nothing: nothing to record (as on PostgreSQL).
        let (rows, fingerprint) = match options.idempotency_key {
            Some(_) if !rows.is_empty() => {
                let (rows, fp) = rows_fingerprint(sql.to_owned(), rows).await?;
                (rows, Some(fp))
            }
            _ => (rows, None),
        };
        let sql = sql.to_owned();
        let run = move |conn: &Connection| {
            let mut stmt = exec::prepare(conn, &sql)?;
            let mut changes = 0;
            for (i, p) in rows.iter().enumerate() {
                changes += exec::execute_prepared(conn, &mut stmt, p, exec::Returned::Discard)
                    .map_err(|e| e.at("rows", i))?
                    .changes;
            }
            Ok(ExecResult {
                changes,
                last_insert_rowid: conn.last_insert_rowid(),
                returning: None,
            })
        };
        match (options.idempotency_key, fingerprint) {
            (Some(key), Some(fp)) => {
                let one = self
                    .inner
                    .submit_once(options, key, fp, move |c| Ok(vec![run(c)?]))
                    .await?;
                one.into_iter().next().ok_or_else(|| Error::Internal {
                    message: "an idempotency record of execute_many holds no result".into(),
                })
            }
            _ => self.inner.submit(options, Trust::Client, run).await,
        }
    }

    /// Runs `f` on the writer connection inside the group-commit transaction,
    /// in its own savepoint: if `f` fails, its changes are rolled back alone.
    /// The result is returned after COMMIT.
    ///
    /// `f` may be called more than once: when another request of the same
    /// batch aborts the transaction, the others are run again. Keep side
    /// effects outside the database out of it.
    ///
    /// # Errors
    /// What `f` returns; [`Error::Internal`] if it panics; otherwise as
    /// [`Database::execute`].
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
    {
        self.inner
            .submit(WriteOptions::default(), Trust::Application, f)
            .await
    }

    /// [`Database::write`] for litebridge's own statements: a trigger or a
    /// view acting in them is refused (see `guard::Budget::own`).
    pub(crate) async fn write_own<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
    {
        self.inner
            .submit(WriteOptions::default(), Trust::Own, f)
            .await
    }

    /// As [`Database::write`] with explicit options.
    ///
    /// # Errors
    /// As [`Database::write`], plus [`Error::Overloaded`] with `no_wait`,
    /// and [`Error::Unsupported`] for an idempotency key (see
    /// [`WriteOptions::idempotency_key`]).
    pub async fn write_with<T, F>(&self, options: WriteOptions, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T> + Send + 'static,
    {
        if options.idempotency_key.is_some() {
            return Err(once_unsupported());
        }
        self.inner.submit(options, Trust::Application, f).await
    }

    // ----- operations --------------------------------------------------------

    /// Copies the database to the new file `dest` with the online backup API
    /// while reads and writes go on, verifies the copy with `quick_check`, and
    /// only then puts it in place. `progress` is called after each step.
    ///
    /// It never replaces a file: `dest` must not exist (see [`backup_file`]
    /// for what else is refused).
    ///
    /// # Errors
    /// [`Error::Open`] for a destination that exists, is a link, is this
    /// database or one of its companions, or lies in a directory that cannot
    /// be used; [`Error::Io`] when writing fails; [`Error::Corrupt`] if the
    /// copy fails verification (nothing is left at `dest`).
    pub async fn backup_to(
        &self,
        dest: impl AsRef<Path>,
        progress: impl FnMut(BackupProgress) + Send + 'static,
    ) -> Result<BackupReport> {
        let source = self.inner.opener.path.clone();
        let dest = dest.as_ref().to_path_buf();
        let busy = self.inner.opener.config.busy_timeout;
        // Stopped at the next step by `interrupt` (review 147).
        let halt = self.inner.opener.halt.clone();
        if halt.load(Ordering::Relaxed) {
            return Err(guard::halted_error());
        }
        let mut progress = progress;
        tokio::task::spawn_blocking(move || {
            backup::copy_verified(
                &source,
                &dest,
                backup::IfExists::Refuse,
                busy,
                Some(&halt),
                &mut progress,
            )
        })
        .await
        .map_err(|e| Error::Internal {
            message: format!("the backup panicked: {e}"),
        })?
    }

    /// Runs a checkpoint now, on the writer thread between two batches
    /// (`Restart` and `Truncate` also wait, up to the busy timeout, for readers
    /// on old snapshots).
    ///
    /// # Errors
    /// [`Error::Busy`] if the locks could not be had in time;
    /// [`Error::Unavailable`] once closed.
    pub async fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointReport> {
        self.inner.writer.checkpoint(mode).await
    }

    /// Checks the file as deep as `depth` says, from a read-only connection
    /// of its own. [`Database::interrupt`] stops it.
    ///
    /// # Errors
    /// [`Error::Open`] if the file cannot be opened;
    /// [`Error::Unavailable`] once interrupted.
    pub async fn check(&self, depth: CheckDepth) -> Result<CheckReport> {
        let path = self.inner.opener.path.clone();
        let halt = self.inner.opener.halt.clone();
        tokio::task::spawn_blocking(move || {
            backup::check_file_within(&path, depth, backup::Bound::Whole, Some(&halt))
        })
        .await
        .map_err(|e| Error::Internal {
            message: format!("the check panicked: {e}"),
        })?
    }

    /// The size of the `-wal` file in bytes (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(self.inner.opener.wal_path()).map_or(0, |m| m.len())
    }

    /// The latency histograms' counts now, by lane: the difference of two
    /// ([`HistogramSnapshot::since`](crate::HistogramSnapshot::since)) gives
    /// a recent window's percentiles, where [`stats`](Self::stats) gives
    /// them since start.
    pub fn latency_snapshots(&self) -> LatencySnapshots {
        let c = &self.inner.counters;
        LatencySnapshots {
            read: c.read_latency.snapshot(),
            write: c.write_latency.snapshot(),
            heavy: c.heavy_latency.snapshot(),
        }
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> DbStats {
        let i = &self.inner;
        let mut s = DbStats::from_counters(&i.counters);
        s.write_queue = i.writer.queued();
        s.heavy_queue = i.heavy.queued();
        s.readers = i.readers.size();
        s.available_readers = i.readers.available();
        s.heavy_readers = i.heavy.size();
        s.available_heavy = i
            .heavy
            .size()
            .saturating_sub(i.counters.heavy_active.load(Ordering::Relaxed));
        s.active_connections = (i.readers.size() - i.readers.available())
            + i.counters.heavy_active.load(Ordering::Relaxed)
            + i.counters.write_active.load(Ordering::Relaxed);
        s.wal_bytes = self.wal_bytes();
        s
    }

    /// Whether the writer accepts writes and the readers are there.
    pub fn health(&self) -> Health {
        let mut problems = Vec::new();
        if self.inner.closed.load(Ordering::Acquire) {
            // Closed on purpose: its log is gone because close removed it.
            return Health {
                healthy: false,
                problems: vec!["it was closed (Database::close)".to_owned()],
            };
        }
        if !self.inner.writer.is_running() {
            problems.push("the writer thread is not running".to_owned());
        }
        if self.inner.readers.size() == 0 {
            problems.push("there are no read connections".to_owned());
        }
        // Half the longest a client may hold the writer: past it, writes are
        // visibly waiting on one caller.
        let threshold = self.inner.opener.config.max_write_hold / 2;
        if let Some(busy) = self.inner.writer.busy_for()
            && busy > threshold
        {
            problems.push(format!(
                "the writer has been running one batch for {} ms (over half of db.max_write_hold): writes are waiting",
                busy.as_millis(),
            ));
        }
        if self.inner.opener.read_only.load(Ordering::Relaxed) {
            problems.push(
                "the database file is read-only for litebridge's user: writes are refused"
                    .to_owned(),
            );
        }
        if let Some(why) = self.inner.opener.on_disk.changed(&self.inner.opener.path) {
            problems.push(format!(
                "{why}: writes are refused until litebridge is restarted"
            ));
        }
        if let Some(detail) = self.inner.counters.corruption() {
            problems.push(format!(
                "SQLITE_CORRUPT met at run time ({detail}); run `litebridge check`, then restart with --recover"
            ));
        }
        Health {
            healthy: problems.is_empty(),
            problems,
        }
    }

    /// Whether the database was closed (its writer is gone).
    pub(crate) fn is_closed(&self) -> bool {
        !self.inner.writer.is_running()
    }

    /// A handle that does not keep this database open.
    pub(crate) fn downgrade(&self) -> WeakDatabase {
        WeakDatabase(Arc::downgrade(&self.inner))
    }

    /// Interrupts every statement running on any connection of this
    /// database, and every one started afterwards, for good: to shut down
    /// within a deadline. Whatever was not committed is not (each request
    /// fails whole with `unavailable`); what was committed stays. Call
    /// [`Database::close`] afterwards.
    pub fn interrupt(&self) {
        self.inner.opener.halt.store(true, Ordering::Relaxed);
    }

    /// Commits what is queued, checkpoints, stops every thread and closes the
    /// connections. Calls made afterwards (from any clone) get `unavailable`.
    /// It waits for what is running; [`Database::interrupt`] ends that.
    pub async fn close(&self) {
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.shutdown()).await;
    }
}
