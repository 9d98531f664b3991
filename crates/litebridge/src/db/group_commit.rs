//! Group commit: many callers' writes in one transaction, each caller answered
//! after COMMIT, one caller's failure never sinking the others.
//!
//! # How a batch runs
//!
//! `BEGIN IMMEDIATE`, then each request in queue order, then `COMMIT`, then
//! every caller is answered: with its result if the COMMIT succeeded, with the
//! COMMIT's error otherwise (and then nothing of the batch is visible).
//!
//! # Why most requests get no savepoint
//!
//! A SAVEPOINT/RELEASE pair is two more statements per request, which costs a
//! third of the throughput on single-row inserts (a published measurement
//! fell from 186k to 122k transactions/s with one per caller).
//! SQLite already undoes a failing statement by itself, so a single-statement
//! request runs bare, and its failure is examined instead:
//!
//! - `sqlite3_get_autocommit` says the transaction is gone (`OR ROLLBACK`,
//!   `RAISE(ROLLBACK)`, an I/O error): the failing request gets its error and
//!   the others are run again in a new transaction.
//! - `total_changes` moved although the statement failed: it may have left
//!   partial effects (`OR FAIL`, `RAISE(FAIL)` in a trigger). The transaction
//!   is rolled back, the failing request keeps its error, and the rest of the
//!   batch runs again in *careful* mode, where every request has a savepoint.
//! - Otherwise SQLite undid the statement completely; the batch goes on.
//!
//! Multi-statement requests (`batch`, `execute_many`, closures) always run in a
//! savepoint, so a failure rolls back that request alone.
//!
//! Errors of the environment (disk full, I/O, corruption) that abort the
//! transaction are given to every request not yet answered rather than
//! retried one request at a time.

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::db::exec::Prepared;
use crate::db::guard::{self, Budget, Mode};
use crate::db::{exec, ffi};
use crate::error::{Error, Result, TimeoutStage};
use crate::stats::Counters;
use crate::value::{ExecResult, Params, Value};

/// One write request as the writer thread sees it.
pub(crate) trait WriteJob: Send {
    fn budget(&self) -> &Budget;
    /// Whether the caller has gone away (its future was dropped).
    fn abandoned(&self) -> bool;
    /// Whether the request runs several statements and needs its own savepoint.
    fn multi(&self) -> bool;
    /// Runs the request inside the open transaction, keeping its result.
    fn run<'c>(&mut self, conn: &'c Connection, slot: &mut StatementSlot<'c>) -> Result<()>;
    /// Answers the caller: the kept result if `outcome` is Ok, else the error.
    fn finish(self: Box<Self>, outcome: Result<()>);
}

/// A [`WriteJob`] built from a closure that may be called more than once
/// (when another request of its batch forces a re-run).
pub(crate) struct Job<T, F> {
    f: F,
    result: Option<T>,
    reply: oneshot::Sender<Result<T>>,
    budget: Budget,
    multi: bool,
}

impl<T, F> Job<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> Result<T> + Send + 'static,
{
    pub(crate) fn new(
        budget: Budget,
        multi: bool,
        f: F,
    ) -> (Box<Self>, oneshot::Receiver<Result<T>>) {
        let (reply, rx) = oneshot::channel();
        (
            Box::new(Job {
                f,
                result: None,
                reply,
                budget,
                multi,
            }),
            rx,
        )
    }
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> Result<T> + Send + 'static,
{
    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn multi(&self) -> bool {
        self.multi
    }

    fn run<'c>(&mut self, conn: &'c Connection, _: &mut StatementSlot<'c>) -> Result<()> {
        let f = &mut self.f;
        match catch_unwind(AssertUnwindSafe(|| f(conn))) {
            Ok(Ok(v)) => {
                self.result = Some(v);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(Error::Internal {
                message: format!("the write closure panicked: {}", panic_message(&panic)),
            }),
        }
    }

    fn finish(self: Box<Self>, outcome: Result<()>) {
        answer(self.reply, outcome, self.result);
    }
}

/// The prepared statement of the previous single-statement request of a pass,
/// kept so a run of requests with the same SQL (the common case: many callers
/// inserting the same way) skips the statement cache's lookup and return.
///
/// The slot remembers whether trusted code prepared its statement: client SQL
/// must never be served a statement the authorizer passed for trusted code.
pub(crate) struct StatementSlot<'c> {
    current: Option<(Cow<'static, str>, bool, Prepared<'c>)>,
}

impl<'c> StatementSlot<'c> {
    fn new() -> Self {
        StatementSlot { current: None }
    }

    // A `&Cow`, not a `&str`: cloning a borrowed literal into the slot is free.
    #[allow(clippy::ptr_arg)]
    fn get(
        &mut self,
        conn: &'c Connection,
        sql: &Cow<'static, str>,
        trusted: bool,
    ) -> Result<&mut Prepared<'c>> {
        let hit = matches!(&self.current, Some((s, t, _))
            // The same string literal: no need to compare the text.
            if *t == trusted && ((s.as_ptr() == sql.as_ptr() && s.len() == sql.len()) || s == sql));
        if !hit {
            self.current = None;
            let stmt = exec::prepare(conn, sql)?;
            self.current = Some((sql.clone(), trusted, stmt));
        }
        Ok(&mut self.current.as_mut().expect("set above").2)
    }
}

/// A single-statement write (`execute`): no savepoint, statement reuse, and
/// carried inline on the queue (no allocation of its own).
pub(crate) struct ExecJob {
    sql: Cow<'static, str>,
    params: Params,
    result: Option<ExecResult>,
    reply: oneshot::Sender<ExecReply>,
    budget: Budget,
}

/// The answer to an [`ExecJob`], with the request's SQL and parameters
/// handed back: they were allocated on the caller's thread and are freed
/// there (a free from the writer's thread is a cross-thread free, which the
/// allocator makes the caller's thread collect later: measured at ~8 % of
/// the CPU of a pipelined insert load).
pub(crate) struct ExecReply {
    pub(crate) result: Result<ExecResult>,
    pub(crate) leftovers: (Cow<'static, str>, Params),
}

impl ExecJob {
    pub(crate) fn new(
        budget: Budget,
        sql: Cow<'static, str>,
        params: Params,
    ) -> (Self, oneshot::Receiver<ExecReply>) {
        let (reply, rx) = oneshot::channel();
        (
            ExecJob {
                sql,
                params,
                result: None,
                reply,
                budget,
            },
            rx,
        )
    }

    #[cfg(test)]
    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    fn run<'c>(&mut self, conn: &'c Connection, slot: &mut StatementSlot<'c>) -> Result<()> {
        let stmt = slot.get(conn, &self.sql, self.budget.trusted)?;
        self.result = Some(exec::execute_prepared(
            conn,
            stmt,
            &self.params,
            exec::Returned::Keep,
        )?);
        Ok(())
    }

    fn finish(self, outcome: Result<()>) {
        let result = match (outcome, self.result) {
            (Ok(()), Some(v)) => Ok(v),
            (Ok(()), None) => Err(Error::Internal {
                message: "a write finished without a result".into(),
            }),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(ExecReply {
            result,
            leftovers: (self.sql, self.params),
        });
    }
}

/// A write request on the queue: a single statement inline, anything else boxed.
pub(crate) enum Request {
    Exec(ExecJob),
    Other(Box<dyn WriteJob>),
}

impl Request {
    pub(crate) fn budget(&self) -> &Budget {
        match self {
            Request::Exec(j) => &j.budget,
            Request::Other(j) => j.budget(),
        }
    }

    fn abandoned(&self) -> bool {
        match self {
            Request::Exec(j) => j.reply.is_closed(),
            Request::Other(j) => j.abandoned(),
        }
    }

    fn multi(&self) -> bool {
        match self {
            Request::Exec(_) => false,
            Request::Other(j) => j.multi(),
        }
    }

    fn run<'c>(&mut self, conn: &'c Connection, slot: &mut StatementSlot<'c>) -> Result<()> {
        match self {
            Request::Exec(j) => j.run(conn, slot),
            Request::Other(j) => j.run(conn, slot),
        }
    }

    /// Asks the CPU to start loading this request's list of parameters.
    fn prefetch_params(&self) {
        if let Request::Exec(ExecJob {
            params: Params::Positional(v),
            ..
        }) = self
        {
            prefetch(v.as_ptr().cast(), std::mem::size_of_val(v.as_slice()));
        }
    }

    /// Asks the CPU to start loading this request's texts and blobs.
    fn prefetch_values(&self) {
        if let Request::Exec(ExecJob {
            params: Params::Positional(v),
            ..
        }) = self
        {
            for value in v.iter().take(8) {
                match value {
                    Value::Text(t) => prefetch(t.as_ptr(), t.len()),
                    Value::Blob(b) => prefetch(b.as_ptr(), b.len()),
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn finish(self, outcome: Result<()>) {
        match self {
            Request::Exec(j) => j.finish(outcome),
            Request::Other(j) => j.finish(outcome),
        }
    }
}

/// A hint to load the first bytes at `p` (up to 256) into the cache. Only
/// a hint: it never faults, whatever the address.
#[allow(unsafe_code)]
fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for offset in (0..len.min(256)).step_by(64) {
            // SAFETY: SSE is part of every x86_64 target, and a prefetch
            // reads nothing the program sees: it cannot fault or change memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(offset).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Sends a caller its answer: the kept result when the batch committed.
fn answer<T>(reply: oneshot::Sender<Result<T>>, outcome: Result<()>, result: Option<T>) {
    let answer = match (outcome, result) {
        (Ok(()), Some(v)) => Ok(v),
        (Ok(()), None) => Err(Error::Internal {
            message: "a write finished without a result".into(),
        }),
        (Err(e), _) => Err(e),
    };
    let _ = reply.send(answer);
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The state of one request within a batch.
/// What [`commit_batch`] keeps from one batch to the next: its per-request
/// status list, which for a full batch is tens of kilobytes that the
/// allocator would otherwise hand out fresh, page faults and all (5 % of the
/// writer thread's time under a pipelined insert load, measured with `perf`).
#[derive(Default)]
pub(crate) struct Scratch {
    status: Vec<Status>,
}

enum Status {
    Pending,
    Done,
    Failed(Error),
}

/// How a pass over the batch ended.
enum Pass {
    /// Every request ran (some may have failed alone); COMMIT next.
    Complete,
    /// The transaction is gone or was rolled back; run the pending requests again.
    Rerun { careful: bool },
    /// An error of the environment; every pending request gets it.
    Abort(Error),
}

/// What bounds a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits<'a> {
    /// Check deferred foreign keys at the end of each request.
    pub(crate) check_deferred_fks: bool,
    /// The longest a client request may run (`DbConfig::max_write_hold`);
    /// also when a batch stops taking new requests.
    pub(crate) max_hold: std::time::Duration,
    /// `DbConfig::max_schema_objects` and `max_schema_bytes`.
    pub(crate) max_schema: (usize, usize),
    /// `DbConfig::max_result_bytes`.
    pub(crate) max_result_bytes: usize,
    /// The database's `Database::interrupt` flag: once set, no request
    /// starts and nothing commits (review 147: a batch under way went on
    /// to commit short writes after it).
    pub(crate) halt: &'a std::sync::atomic::AtomicBool,
}

/// Runs up to the first `n` requests of `queued` as one transaction, answers
/// their callers and removes them. A batch that has run `max_hold` takes no
/// further request: those stay at the front of `queued` for the next batch.
/// Returns how many were answered.
#[allow(clippy::too_many_arguments)]
pub(crate) fn commit_batch(
    conn: &Connection,
    queued: &mut Vec<Request>,
    n: usize,
    counters: &Counters,
    limits: Limits<'_>,
    panic_for_test: bool,
    scratch: &mut Scratch,
) -> usize {
    let mut n = n;
    let jobs = &mut queued[..n];
    let now = Instant::now();
    let status = &mut scratch.status;
    status.clear();
    for job in jobs.iter() {
        status.push(if job.abandoned() {
            Status::Failed(Error::Unavailable {
                what: "caller",
                reason: "went away before the write started".into(),
            })
        } else if job.budget().expired_at(now) {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            Status::Failed(job.budget().timeout_error(TimeoutStage::Queued))
        } else {
            Status::Pending
        });
    }
    let mut careful = false;
    let outcome = loop {
        if !status[..n]
            .iter()
            .any(|s| matches!(s, Status::Done | Status::Pending))
        {
            break Ok(());
        }
        if let Err(e) = run_cached(conn, &guard::internal_sql().begin) {
            break Err(e);
        }
        match run_pass(
            conn,
            &mut jobs[..n],
            &mut status[..n],
            careful,
            limits,
            now,
            &mut n,
            counters,
        ) {
            Pass::Complete => {}
            Pass::Rerun { careful: c } => {
                counters.batch_reruns.fetch_add(1, Ordering::Relaxed);
                rollback(conn);
                careful |= c;
                for s in status.iter_mut() {
                    if matches!(s, Status::Done) {
                        *s = Status::Pending;
                    }
                }
                continue;
            }
            Pass::Abort(e) => {
                rollback(conn);
                break Err(e);
            }
        }
        if panic_for_test {
            panic!("writer thread killed by fault injection");
        }
        if limits.halt.load(Ordering::Relaxed) {
            rollback(conn);
            break Err(guard::halted_error());
        }
        crate::db::wal_vfs::forget_commit_written();
        match run_cached(conn, &guard::internal_sql().commit) {
            Ok(()) => {
                // What the writer's thread syncs next (a checkpoint) is not
                // this COMMIT's.
                crate::db::wal_vfs::forget_commit_written();
                break Ok(());
            }
            Err(e) => {
                counters.commit_failures.fetch_add(1, Ordering::Relaxed);
                say_environmental(&e);
                let written = match crate::db::wal_vfs::name() {
                    Some(_) => crate::db::wal_vfs::commit_written(),
                    // Without the shim, which would tell: a failed sync of
                    // the log is the one failure known to come after it.
                    None => e
                        .sqlite_codes()
                        .is_some_and(|c| c.1 == rusqlite::ffi::SQLITE_IOERR_FSYNC),
                };
                crate::db::wal_vfs::forget_commit_written();
                rollback(conn);
                break Err(commit_failed(&e, written));
            }
        }
    };
    counters.batch(n);
    for (job, s) in queued.drain(..n).zip(status.drain(..)) {
        let answer = match (s, &outcome) {
            (Status::Failed(e), _) => Err(e),
            (_, Err(e)) => Err(e.clone()),
            (_, Ok(())) => Ok(()),
        };
        job.finish(answer);
    }
    n
}

#[allow(clippy::too_many_arguments)]
fn run_pass(
    conn: &Connection,
    jobs: &mut [Request],
    status: &mut [Status],
    careful: bool,
    limits: Limits<'_>,
    batch_started: Instant,
    taken: &mut usize,
    counters: &Counters,
) -> Pass {
    let mut slot = StatementSlot::new();
    // Deadlines are compared with one clock reading per pass; a statement
    // that runs long is still interrupted on time by the progress handler.
    let now = Instant::now();
    let mut last_ok: Option<Finished> = None;
    for i in 0..jobs.len() {
        // The requests were built on the callers' cores: start loading the
        // next ones' parameters while this one runs (a chain of two misses,
        // the parameter list and then each text, which SQLite copies).
        if let Some(next) = jobs.get(i + 2) {
            next.prefetch_params();
        }
        if let Some(next) = jobs.get(i + 1) {
            next.prefetch_values();
        }
        let (job, s) = (&mut jobs[i], &mut status[i]);
        if !matches!(s, Status::Pending) {
            continue;
        }
        if limits.halt.load(Ordering::Relaxed) {
            return Pass::Abort(guard::halted_error());
        }
        if job.budget().expired_at(now) {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            *s = Status::Failed(job.budget().timeout_error(TimeoutStage::Queued));
            continue;
        }
        // One clock reading per request (vDSO, ~20 ns) bounds everyone's
        // wait: a batch that has held the writer `max_hold` ends here (the
        // rest run in the next one), and client SQL may run `max_hold` at
        // most, whatever its own deadline.
        let at = Instant::now();
        if let Some(pass) = overran(&mut last_ok, at, status, counters) {
            return pass;
        }
        let (job, s) = (&mut jobs[i], &mut status[i]);
        if i > 0 && at.duration_since(batch_started) >= limits.max_hold {
            *taken = i;
            break;
        }
        let rules = (!job.budget().trusted).then(|| guard::WriterRules {
            hold: (at + limits.max_hold, limits.max_hold),
            max_schema: limits.max_schema,
            max_result_bytes: limits.max_result_bytes,
        });
        let savepoint = careful || job.multi();
        if savepoint && let Err(e) = run_cached(conn, &guard::internal_sql().savepoint) {
            return Pass::Abort(e);
        }
        if rules.is_some() {
            ffi::set_last_insert_rowid(conn, 0);
        }
        let before = conn.total_changes();
        let scope = guard::enter_writer(job.budget(), Mode::Writer, rules);
        let mut result = job.run(conn, &mut slot).map_err(|e| scope.map_err(e));
        drop(scope);
        if result.is_ok() && limits.check_deferred_fks && ffi::deferred_fk_violations(conn) > 0 {
            result = Err(Error::Sql {
                code: rusqlite::ffi::SQLITE_CONSTRAINT,
                extended_code: rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
                message: "FOREIGN KEY constraint failed (a deferred foreign key was left unresolved at the end of the request)".into(),
            });
        }
        match result {
            Ok(()) => {
                if savepoint && let Err(e) = run_cached(conn, &guard::internal_sql().release) {
                    return Pass::Abort(e);
                }
                *s = Status::Done;
                last_ok = Some(Finished {
                    index: i,
                    deadline: job.budget().deadline,
                    timeout: job.budget().timeout,
                    hold: rules.map(|r| r.hold),
                });
            }
            Err(e) => {
                if matches!(e, Error::Timeout { .. }) {
                    counters.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                let environment = is_environmental(&e);
                if environment {
                    say_environmental(&e);
                }
                if conn.is_autocommit() {
                    // The transaction is gone. This request failed; the others
                    // did nothing wrong and run again, unless the environment
                    // failed under everyone.
                    if environment {
                        *s = Status::Failed(e.clone());
                        return Pass::Abort(e);
                    }
                    *s = Status::Failed(e);
                    return Pass::Rerun { careful: false };
                }
                if savepoint {
                    let undo = conn.execute_batch("ROLLBACK TO lb_request; RELEASE lb_request");
                    *s = Status::Failed(e);
                    if let Err(u) = undo {
                        return Pass::Abort(u.into());
                    }
                } else if conn.total_changes() != before
                    || (!changes_nothing(&e) && any_trigger(conn))
                {
                    // Its changes may outlive its failure: those counted,
                    // and those of a trigger it fired, which SQLite takes
                    // out of the count when the trigger's statement fails
                    // on a constraint while keeping them (`INSERT OR FAIL`
                    // or `RAISE(FAIL)` in a trigger: a review committed
                    // half a failed request that way). Only failures known
                    // to change nothing (a syntax error, a refusal) are
                    // spared the rerun: the error seen here may be a
                    // rewriting of the constraint's (one met at the
                    // deadline answers `timeout`).
                    *s = Status::Failed(e);
                    return Pass::Rerun { careful: true };
                } else {
                    *s = Status::Failed(e);
                }
            }
        }
    }
    overran(&mut last_ok, Instant::now(), status, counters).unwrap_or(Pass::Complete)
}

/// The last request of a pass that ran without an error, and what bounded it.
struct Finished {
    index: usize,
    deadline: Option<Instant>,
    timeout: Option<std::time::Duration>,
    hold: Option<(Instant, std::time::Duration)>,
}

/// Whether the last request that succeeded ended past its deadline or its
/// hold (`now` is read right after it ended): a statement whose time went
/// into one long step of SQLite is never seen by the progress handler, and
/// must not commit as if it had been on time. It fails with `timeout`, and
/// the transaction is rolled back and the others run again.
fn overran(
    last_ok: &mut Option<Finished>,
    now: Instant,
    status: &mut [Status],
    counters: &Counters,
) -> Option<Pass> {
    let f = last_ok.take()?;
    let error = if let Some((_, after)) = f.hold.filter(|(until, _)| now >= *until) {
        Error::Timeout {
            after,
            stage: TimeoutStage::WriterHold,
        }
    } else if f.deadline.is_some_and(|d| now >= d) {
        Error::Timeout {
            after: f.timeout.unwrap_or_default(),
            stage: TimeoutStage::Running,
        }
    } else {
        return None;
    };
    counters.timeouts.fetch_add(1, Ordering::Relaxed);
    status[f.index] = Status::Failed(error);
    Some(Pass::Rerun { careful: false })
}

/// Whether `e` is a failure that changed nothing: refused before running,
/// or an SQL error other than a constraint's (a syntax error, a missing
/// table). A constraint's is what `OR FAIL` and `RAISE(FAIL)` answer.
fn changes_nothing(e: &Error) -> bool {
    match e {
        Error::Sql { code, .. } => *code != rusqlite::ffi::SQLITE_CONSTRAINT,
        Error::Forbidden { .. } | Error::ReadOnly { .. } | Error::InvalidArgument { .. } => true,
        _ => false,
    }
}

/// Whether the schema has a trigger (in `main` or `temp`); when that cannot
/// be read, as if it had.
fn any_trigger(conn: &Connection) -> bool {
    conn.prepare_cached(&guard::internal_sql().triggers)
        .and_then(|mut s| s.query_row([], |r| r.get::<_, bool>(0)))
        .unwrap_or(true)
}

/// Runs one of litebridge's own statements (see [`guard::InternalSql`])
/// through the statement cache.
fn run_cached(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// The answer to a batch whose COMMIT failed; `written`: its commit frame
/// had reached the log.
///
/// Nothing of it was saved, unless the failure came after its commit frame
/// was written (the sync of the log under `durability = "full"`, which the
/// disk refused; the log's index, which could not grow). SQLite rolls back
/// and the batch is not visible; but its frames are in the file, and if
/// the process dies before the next commit writes over them, the next start
/// recovers the batch from the log. So its outcome is unknown
/// (`outcome_unknown`, not recoverable: a blind retry could apply it
/// twice), as a PostgreSQL COMMIT whose answer was lost.
fn commit_failed(e: &Error, written: bool) -> Error {
    if written {
        return Error::OutcomeUnknown {
            what: "this batch".into(),
            reason: format!(
                "COMMIT failed after its commit frame was written to the log ({e}); it is not \
                 visible now, and a crash before the next commit would recover it from the log"
            ),
        };
    }
    let codes = e.sqlite_codes();
    Error::Sql {
        code: codes.map_or(1, |c| c.0),
        extended_code: codes.map_or(1, |c| c.1),
        message: format!("COMMIT failed, nothing of this batch was saved: {e}"),
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// Logs a write's failure that comes from the machine (a full disk, an I/O
/// error): its callers are told, but the operator must be too (a full disk
/// was invisible at the default level). At most one line every ten
/// seconds, with how many there were since: a full disk fails every write,
/// and its log may share the disk.
fn say_environmental(e: &Error) {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static START: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SINCE: AtomicU64 = AtomicU64::new(0);
    let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 10_000;
    let last = LAST_MS.load(Ordering::Relaxed);
    let unsaid = SINCE.fetch_add(1, Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        SINCE.store(0, Ordering::Relaxed);
        tracing::error!(
            failures_since_last_line = unsaid + 1,
            "a write failed for the machine's reason, not the request's: {e}"
        );
    }
}

/// Errors that come from the machine, not the request.
fn is_environmental(e: &Error) -> bool {
    use rusqlite::ffi::{SQLITE_CANTOPEN, SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM};
    match e {
        Error::Corrupt { .. } | Error::Busy { .. } | Error::ReadOnly { .. } => true,
        _ => matches!(
            e.sqlite_codes(),
            Some((
                SQLITE_NOMEM | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN,
                _
            ))
        ),
    }
}
