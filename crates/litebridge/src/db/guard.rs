//! Deadlines, cancellation and the statement guard, enforced inside SQLite.
//!
//! Every connection gets the same progress handler and authorizer, and both
//! read a *thread-local* operation context. SQLite calls them synchronously on
//! the thread that is stepping or preparing the statement, and a connection is
//! used by one thread at a time, so the context the handler sees is always the
//! one of the operation running on that connection. That is what makes an
//! interrupt unable to hit another caller: there is no cross-thread
//! `sqlite3_interrupt` racing against the next request on the connection.
//!
//! - The progress handler interrupts a statement once its deadline passes,
//!   its caller has gone away (heavy lane and writes), its hold on the
//!   writer passes, or the database was halted (`Database::interrupt`).
//! - The authorizer refuses, in caller-supplied SQL only, statements that
//!   would break the engine or leak from one caller to the next through a
//!   shared connection: transaction control everywhere (the writer owns
//!   BEGIN/COMMIT; a reader left inside BEGIN would stop seeing new commits),
//!   engine pragmas on the writer (journal and locking mode, `synchronous`,
//!   `foreign_keys`, ...), and on readers any pragma assignment and any
//!   temporary table, view, index or trigger. litebridge's own statements run
//!   in [`Mode::Internal`] and are not restricted.
//!
//! Client SQL (SQL text given to `query`, `execute`, `batch` and
//! `execute_many`: everything the RPC runs) is held to more rules than
//! closures (`read`, `write`), which are the embedding application's own Rust
//! code and run trusted, like the stores (SECURITY.md lists the rules):
//! - no ATTACH or DETACH (VACUUM and `VACUUM INTO` attach a database
//!   internally, so they are refused too: no file is written by a request);
//! - no `load_extension()` or `fts3_tokenizer()`;
//! - pragma assignments only from an allowlist (introspection everywhere,
//!   `user_version`, `application_id`, `optimize` and `incremental_vacuum` on
//!   the writer), none of the pragmas that act without a value
//!   (`wal_checkpoint`, `shrink_memory`, ...), and none that tell file paths
//!   (`database_list`, `temp_store_directory`, `data_store_directory`);
//! - no temporary table, view, index or trigger on any connection: every
//!   connection is shared, so a temporary object would reach every later
//!   caller (a temporary table shadows an ordinary one of the same name);
//! - litebridge's own tables (`litebridge_*`: keys, quotas, cache, stores,
//!   migrations) can be neither read, written, altered, dropped, indexed,
//!   described by the introspection pragmas nor given triggers, and no object
//!   may be created under that prefix. `ALTER TABLE ... RENAME TO` tells the
//!   authorizer only the old name, so `exec` runs a client's `ALTER TABLE` in a
//!   savepoint and undoes it if litebridge's namespace changed;
//! - the planner statistics (`sqlite_stat*`) are neither read nor written by
//!   a client; `ANALYZE` and `PRAGMA optimize` still work (their own reads
//!   and clears are allowed while they run), and leave litebridge's tables out
//!   (their rows would be sampled into `sqlite_stat4`).
//!
//! litebridge's own statements use no trigger, view or named subquery (the
//! authorizer is told which one acts), so one acting in them was made on
//! litebridge's tables by another program, and is refused; in the
//! application's trusted closures, what one does is held to the client
//! rules. No client table has a foreign key to litebridge's (so no cascade
//! reaches a client table from a trusted statement) and no client virtual
//! table reads one of litebridge's (`content=` is refused): `exec` checks
//! both after every schema change. Trusted statements name their schema
//! (`main.litebridge_*`) as a second line.
//!
//! Because the authorizer runs when
//! a statement is prepared and prepared statements are cached by their text,
//! a client sending the exact text of a trusted statement could otherwise get
//! the trusted, already-authorized statement from the cache; every trusted
//! statement names a `litebridge_` table, and client SQL that contains that
//! prefix is prepared outside the cache (see `exec::prepare`).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::db::heap;
use crate::error::{Error, Result, TimeoutStage};

/// VM instructions between two calls of the progress handler. A call costs one
/// clock read; 1000 instructions take a few microseconds.
const PROGRESS_OPS: i32 = 1000;

/// The deadline and cancellation of one operation.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    /// When the operation was asked for (its latency is measured from here).
    pub(crate) started: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancelled: Option<Arc<AtomicBool>>,
    /// litebridge's own code (the stores) or the embedding application's
    /// closures: may use litebridge's tables.
    pub(crate) trusted: bool,
    /// litebridge's own statements (the stores, the records of idempotency
    /// keys, migrations), which use no trigger, view or named subquery: one
    /// acting in them is another program's, on litebridge's tables, and is
    /// refused ([`authorize`]). Implies `trusted`.
    pub(crate) own: bool,
    /// The keys' and quotas' reads, which may take the read lane's kept
    /// connection (`readers`). Implies `own`.
    pub(crate) keys: bool,
    /// The most memory SQLite may take for client SQL of this operation
    /// (`DbConfig::max_request_memory`; see `heap`).
    pub(crate) memory: Option<usize>,
}

impl Budget {
    pub(crate) fn new(timeout: Option<Duration>) -> Budget {
        let started = Instant::now();
        Budget {
            started,
            deadline: timeout.map(|t| started + t),
            timeout,
            cancelled: None,
            trusted: false,
            own: false,
            keys: false,
            memory: None,
        }
    }

    /// The same budget, with SQLite's memory for client SQL capped.
    pub(crate) fn with_memory(self, bytes: usize) -> Budget {
        Budget {
            memory: Some(bytes),
            ..self
        }
    }

    /// The same budget, marked as the embedding application's code.
    pub(crate) fn trusted(self) -> Budget {
        Budget {
            trusted: true,
            ..self
        }
    }

    /// The same budget, marked as a read of the keys or quotas.
    pub(crate) fn keys(self) -> Budget {
        Budget {
            keys: true,
            ..self.own()
        }
    }

    /// The same budget, marked as litebridge's own statements.
    pub(crate) fn own(self) -> Budget {
        Budget {
            trusted: true,
            own: true,
            ..self
        }
    }

    pub(crate) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub(crate) fn expired_at(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// The same budget with a cancellation flag of its own, and the guard
    /// that raises it when dropped: held by the caller's future, it has the
    /// progress handler interrupt what runs for a caller that went away (a
    /// hung-up HTTP client, an MCP `notifications/cancelled`). Raised after
    /// the answer, it does nothing.
    pub(crate) fn cancellable(self) -> (Budget, CancelOnDrop) {
        let flag = Arc::new(AtomicBool::new(false));
        let budget = Budget {
            cancelled: Some(flag.clone()),
            ..self
        };
        (budget, CancelOnDrop(flag))
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn timeout_error(&self, stage: TimeoutStage) -> Error {
        Error::Timeout {
            after: self.timeout.unwrap_or_default(),
            stage,
        }
    }
}

/// Raises a [`Budget`]'s cancellation flag when dropped (see
/// [`Budget::cancellable`]).
pub(crate) struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whose SQL runs, which decides what the authorizer allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// litebridge's own statements.
    Internal,
    /// Caller SQL on the writer connection.
    Writer,
    /// Caller SQL on a read-only connection shared by every caller.
    Reader,
}

struct Current {
    budget: Budget,
    mode: Mode,
    denied: Option<String>,
    /// What a client write on the writer is held to (none elsewhere).
    writer: Option<WriterRules>,
    /// The database was halted while this operation ran (see [`install`]).
    halted: bool,
    /// A read on the caller's (async runtime) thread still running at this
    /// time is interrupted, to be run again off that thread (see [`run_inline`]).
    inline_until: Option<Instant>,
    /// It was, for that reason.
    inline_exceeded: bool,
    /// What the client statement being prepared does to the schema.
    ddl: Ddl,
    /// The client statement being prepared is `ANALYZE` or `PRAGMA
    /// optimize`: SQLite's own work for it may use the `sqlite_stat*` tables.
    maintenance: bool,
    /// Tables no read may use besides those the rules refuse (see
    /// [`as_client`]; empty otherwise).
    refused_reads: Vec<String>,
    /// Bytes of rows its statements returned so far (`RETURNING`): the
    /// request's, all its statements' together, within
    /// `WriterRules::max_result_bytes`.
    returned: usize,
}

/// What a client statement does to the schema, as its authorizer calls showed
/// while it was prepared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ddl {
    /// It creates a table, index, view, trigger or virtual table.
    pub(crate) creates: bool,
    /// It is an `ALTER TABLE` of this table (which may rename it to any
    /// name: the authorizer is only told the old one).
    pub(crate) alters: Option<String>,
    /// It is an `ALTER TABLE ... ALTER COLUMN ... DROP NOT NULL`, as its
    /// text says (set by `exec::prepare`).
    pub(crate) drops_not_null: bool,
    /// It drops a table (virtual ones too) or an index, whose rows of
    /// `sqlite_stat*` SQLite deletes as part of the drop (reading them to
    /// find which).
    pub(crate) drops_statistics: bool,
    /// It changes the schema in any way (create, alter, drop).
    pub(crate) any: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Marks the current thread as running one operation until dropped.
pub(crate) struct Scope(());

/// The limits of a client request on the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterRules {
    /// It is interrupted at `hold.0`, having held the writer `hold.1`
    /// (`DbConfig::max_write_hold`), whatever its own deadline.
    pub(crate) hold: (Instant, Duration),
    /// It may create schema objects while the schema holds fewer than this
    /// many objects and bytes of SQL (`DbConfig::max_schema_objects`, `_bytes`).
    pub(crate) max_schema: (usize, usize),
    /// The most bytes of rows a statement may return (`RETURNING`;
    /// `DbConfig::max_result_bytes`).
    pub(crate) max_result_bytes: usize,
}

/// The answer to a request of a database [`Database::interrupt`] stopped
/// (`crate::Database::interrupt`): running, or asked for afterwards.
pub(crate) fn halted_error() -> Error {
    Error::Unavailable {
        what: "database",
        reason: "it is shutting down; the request was interrupted or refused and nothing of it was committed"
            .into(),
    }
}

/// Enters an operation on this thread until the returned scope drops.
pub(crate) fn enter(budget: &Budget, mode: Mode) -> Scope {
    enter_writer(budget, mode, None)
}

/// As [`enter`], for a request on the writer, with the rules for client SQL.
pub(crate) fn enter_writer(budget: &Budget, mode: Mode, writer: Option<WriterRules>) -> Scope {
    if mode != Mode::Internal
        && !budget.trusted
        && let Some(bytes) = budget.memory
    {
        heap::arm(bytes);
    }
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            budget: budget.clone(),
            mode,
            denied: None,
            writer,
            halted: false,
            inline_until: None,
            inline_exceeded: false,
            ddl: Ddl::default(),
            maintenance: false,
            refused_reads: Vec::new(),
            returned: 0,
        });
    });
    Scope(())
}

impl Drop for Scope {
    fn drop(&mut self) {
        heap::disarm();
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

impl Scope {
    /// Whether the operation was interrupted to be moved off the caller's
    /// thread (see [`run_inline`]).
    pub(crate) fn inline_exceeded(&self) -> bool {
        CURRENT.with(|c| c.borrow().as_ref().is_some_and(|cur| cur.inline_exceeded))
    }

    /// Turns a failure of this operation into the error the caller should see:
    /// an interrupt becomes `timeout` (or `unavailable` when the caller left),
    /// an authorizer refusal becomes `forbidden` with the reason.
    pub(crate) fn map_err(&self, err: Error) -> Error {
        CURRENT.with(|c| {
            let c = c.borrow();
            let Some(cur) = c.as_ref() else { return err };
            let hold = cur.writer.map(|w| w.hold);
            let held_too_long = hold.is_some_and(|(until, _)| Instant::now() >= until);
            // An allocation refused because the operation had to stop is an
            // interrupt that came through the allocator (see `heap`).
            // Whatever error it surfaced as (a function of litebridge's own
            // reports it as SQLITE_ERROR "out of memory").
            let codes = if heap::stopped() && !heap::refused() {
                Some((SQLITE_INTERRUPT, 0))
            } else {
                err.sqlite_codes()
            };
            match codes {
                Some((SQLITE_NOMEM, _)) if heap::refused() => Error::TooLarge {
                    what: "the memory SQLite took for this request (db.max_request_memory)".into(),
                    limit: cur.budget.memory.unwrap_or_default() as u64,
                },
                Some((SQLITE_INTERRUPT, _)) if cur.halted => halted_error(),
                Some((SQLITE_INTERRUPT, _)) if cur.budget.expired() => {
                    cur.budget.timeout_error(TimeoutStage::Running)
                }
                Some((SQLITE_INTERRUPT, _)) if held_too_long => Error::Timeout {
                    after: hold.map(|(_, d)| d).unwrap_or_default(),
                    stage: TimeoutStage::WriterHold,
                },
                Some((SQLITE_INTERRUPT, _)) if cur.budget.is_cancelled() => Error::Unavailable {
                    what: "caller",
                    reason: "the caller went away; the statement was interrupted".into(),
                },
                // A denied function is reported as SQLITE_ERROR ("not
                // authorized to use function"), everything else as SQLITE_AUTH.
                Some((SQLITE_AUTH, _)) if cur.denied.is_some() => Error::Forbidden {
                    message: cur.denied.clone().unwrap_or_default(),
                },
                Some((SQLITE_ERROR, _))
                    if cur.denied.is_some() && err.to_string().contains("not authorized") =>
                {
                    Error::Forbidden {
                        message: cur.denied.clone().unwrap_or_default(),
                    }
                }
                _ => err,
            }
        })
    }
}

use rusqlite::ffi::{SQLITE_AUTH, SQLITE_ERROR, SQLITE_INTERRUPT, SQLITE_NOMEM};

/// How the read path's refusal of a statement the writer may run ends (see
/// [`Error::belongs_on_the_writer`]).
pub(crate) const ON_THE_WRITER: &str =
    "cannot run on a shared read connection; send it with execute";

/// Whether the operation running on this thread runs client SQL (anything but
/// litebridge's own trusted or internal statements).
pub(crate) fn is_client() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|cur| cur.mode != Mode::Internal && !cur.budget.trusted)
    })
}

/// Runs `f` as litebridge's own code within the client write running on
/// this thread (the record of its idempotency key; see `claims`): its
/// statements may use litebridge's tables, while the deadline, the hold and
/// the memory cap of the request still bound them. A trigger or a view
/// acting in them is refused (see [`authorize`]).
pub(crate) fn as_trusted<T>(f: impl FnOnce() -> T) -> T {
    with_trust(true, f)
}

/// Runs `f` under the client rules within the trusted operation running on
/// this thread: what `f` runs is refused what a client's SQL would be, and
/// reads of the tables named in `refused` too (`introspect` asks this of
/// each view and virtual table before it describes it).
pub(crate) fn as_client<T>(refused: &[String], f: impl FnOnce() -> T) -> T {
    /// Clears the refused names, even if `f` unwinds.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            CURRENT.with(|c| {
                if let Some(cur) = c.borrow_mut().as_mut() {
                    cur.refused_reads.clear();
                    // A refusal seen there is not the operation's.
                    cur.denied = None;
                }
            });
        }
    }
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.refused_reads = refused.to_vec();
        }
    });
    let _clear = Clear;
    with_trust(false, f)
}

/// Runs `f` with the operation's trust (and its being litebridge's own)
/// set to `trusted`, then gives the operation its own back, even if `f`
/// unwinds.
fn with_trust<T>(trusted: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(bool, bool)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some((trusted, own)) = self.0 {
                CURRENT.with(|c| {
                    if let Some(cur) = c.borrow_mut().as_mut() {
                        cur.budget.trusted = trusted;
                        cur.budget.own = own;
                    }
                });
            }
        }
    }
    let _restore = Restore(CURRENT.with(|c| {
        c.borrow_mut().as_mut().map(|cur| {
            (
                std::mem::replace(&mut cur.budget.trusted, trusted),
                std::mem::replace(&mut cur.budget.own, trusted),
            )
        })
    }));
    f()
}

/// Marks the start of preparing (or running a statement prepared earlier)
/// one client statement: clears what the last one did to the schema, and
/// notes whether this one is `ANALYZE`/`PRAGMA optimize` (decided from its
/// text by the caller).
pub(crate) fn begin_prepare(maintenance: bool) {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.ddl = Ddl::default();
            cur.maintenance = maintenance;
        }
    });
}

/// The schema limits of the client write running on this thread, if any.
pub(crate) fn schema_limits() -> Option<(usize, usize)> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|cur| cur.writer.map(|w| w.max_schema))
    })
}

/// The bytes of rows the client write running on this thread may still
/// return (its statements share `max_result_bytes`); no bound for
/// litebridge's own.
pub(crate) fn result_left() -> usize {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|cur| {
                cur.writer
                    .map(|w| w.max_result_bytes.saturating_sub(cur.returned))
            })
            .unwrap_or(usize::MAX)
    })
}

/// Counts `bytes` of rows a statement of the write running on this thread
/// returned.
pub(crate) fn returned(bytes: usize) {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.returned = cur.returned.saturating_add(bytes);
        }
    });
}

/// What the statement just prepared does to the schema.
pub(crate) fn prepared_ddl() -> Ddl {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|cur| cur.ddl.clone())
            .unwrap_or_default()
    })
}

/// Runs `f` as litebridge's own code (no authorizer rule applies), then
/// returns to the operation's own mode.
pub(crate) fn internal<T>(f: impl FnOnce() -> T) -> T {
    // Litebridge's own checks are not interrupted by the caller's deadline
    // or hold (`should_interrupt` does not interrupt in Internal mode): a
    // check cut short must never count as a check passed.
    let saved = CURRENT.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|cur| std::mem::replace(&mut cur.mode, Mode::Internal))
    });
    // Nor do they run on what is left of the client's memory budget: an
    // undo refused for want of memory would leave the client's change in.
    let r = heap::unbudgeted(f);
    if let Some(mode) = saved {
        CURRENT.with(|c| {
            if let Some(cur) = c.borrow_mut().as_mut() {
                cur.mode = mode;
            }
        });
    }
    r
}

/// How long a read runs on the caller's thread before it is moved off it.
const INLINE_BUDGET: Duration = Duration::from_millis(5);

/// Marks the operation on this thread as a read run inline on the caller's
/// thread, a worker of the async runtime: if it is still running after
/// [`INLINE_BUDGET`] it is interrupted, and [`Scope::inline_exceeded`] tells
/// the read lane to run it again inside `tokio::task::block_in_place`, which
/// first hands the thread's other tasks (other requests, `/health`) to
/// another thread. A point read never pays for this; a long query pays a few
/// milliseconds and one thread hand-off, and a few long queries can no
/// longer freeze every request. (Outside a multi-threaded runtime there is
/// no other thread to hand work to, and the read just goes on.)
pub(crate) fn run_inline() {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.inline_until = Some(cur.budget.started + INLINE_BUDGET);
        }
    });
}

fn on_runtime_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Whether the operation on this thread must stop now: its deadline, its
/// hold on the writer, its caller gone, or a read to move off the caller's
/// thread. Asked by the progress handler, [`Ticker`] and `heap` (which may
/// ask while this module looks at the operation: then the answer is no).
pub(crate) fn should_interrupt() -> bool {
    CURRENT.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return false;
        };
        let Some(cur) = c.as_mut() else {
            return false;
        };
        if cur.mode == Mode::Internal {
            return false;
        }
        if cur.inline_exceeded {
            // Until the operation stops: a refused allocation SQLite could
            // do without must not make the move be forgotten.
            return true;
        }
        let now = Instant::now();
        if cur.inline_until.is_some_and(|t| now >= t) {
            cur.inline_until = None;
            if on_runtime_worker() {
                cur.inline_exceeded = true;
                return true;
            }
        }
        cur.budget.expired_at(now)
            || cur.budget.is_cancelled()
            || cur.writer.is_some_and(|w| now >= w.hold.0)
    })
}

/// Counts the work of one long call of a SQL function of litebridge's own
/// (`patterns`, `functions`) and stops it when the operation must stop, as
/// the progress handler does between the steps of a statement: SQLite
/// cannot interrupt a step while it runs one function call.
pub(crate) struct Ticker<'a> {
    left: u32,
    halt: &'a AtomicBool,
}

/// Units of work between two checks (a unit is a character compared or a
/// place tried: a check every few hundred microseconds at most).
const TICKS: u32 = 1 << 16;

impl<'a> Ticker<'a> {
    /// `halt` is the database's (see [`install`]).
    pub(crate) fn new(halt: &'a AtomicBool) -> Ticker<'a> {
        Ticker { left: TICKS, halt }
    }

    /// One unit of work; every [`TICKS`] units, an error if the operation
    /// must stop. The error is SQLITE_INTERRUPT, which `Scope::map_err`
    /// turns into the reason, as for an interrupt between steps.
    pub(crate) fn tick(&mut self) -> rusqlite::Result<()> {
        self.left -= 1;
        if self.left > 0 {
            return Ok(());
        }
        self.left = TICKS;
        let stop = if self.halt.load(Ordering::Relaxed) {
            halted()
        } else {
            should_interrupt()
        };
        if stop {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(SQLITE_INTERRUPT),
                None,
            ));
        }
        Ok(())
    }
}

/// Notes that the operation on this thread was interrupted because its
/// database was halted.
fn halted() -> bool {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.halted = true;
        }
    });
    true
}

/// Pragmas whose assignment would break the engine's assumptions or change
/// its configured behaviour for every other caller (trusted code included).
const ENGINE_PRAGMAS: &[&str] = &[
    "journal_mode",
    "locking_mode",
    "wal_autocheckpoint",
    "query_only",
    "synchronous",
    "writable_schema",
    "foreign_keys",
    "busy_timeout",
    "mmap_size",
    "journal_size_limit",
    "trusted_schema",
];

/// Pragmas that take an argument (`PRAGMA table_info(t)`) only to read: the
/// authorizer cannot tell `PRAGMA x(v)` from `PRAGMA x = v`, so these are the
/// ones a read connection accepts with a value.
const INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// The only pragmas client SQL may set, on the writer: they change the
/// application's own data or statistics, never the engine.
const CLIENT_SETTABLE_PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "optimize",
    "incremental_vacuum",
];

/// Pragmas that act even without a value; client SQL may not run them.
const ACTING_PRAGMAS: &[&str] = &[
    "wal_checkpoint",
    "shrink_memory",
    "soft_heap_limit",
    "hard_heap_limit",
    "threads",
];

/// SQL functions client SQL may not call: native code, and counters of the
/// shared writer connection that count litebridge's own and other callers'
/// writes (`last_insert_rowid()` is zeroed before each request instead).
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "load_extension",
    "fts3_tokenizer",
    "changes",
    "total_changes",
];

/// The prefix of every table litebridge owns.
pub(crate) const OWN_PREFIX: &str = "litebridge_";

fn listed(list: &[&str], name: &str) -> bool {
    list.iter().any(|p| p.eq_ignore_ascii_case(name))
}

fn own(name: Option<&str>) -> bool {
    const AUTOINDEX: &str = "sqlite_autoindex_litebridge_";
    let starts = |n: &str, p: &str| n.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    name.is_some_and(|n| starts(n, OWN_PREFIX) || starts(n, AUTOINDEX))
}

const OWN_TABLES: &str = "litebridge's own tables (litebridge_*) cannot be read or changed through client SQL; use the state, memory and cache methods";

/// What the authorizer answers for one action.
enum Verdict {
    Deny(String),
    /// Leave the object out silently (`ANALYZE` of litebridge's tables).
    Ignore,
}

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(cur) = c.as_mut() else {
            return Authorization::Allow;
        };
        if cur.mode == Mode::Internal {
            return Authorization::Allow;
        }
        // A trigger or a view that acts within one of litebridge's own
        // statements was made by another program on litebridge's tables (no
        // request can make one, and litebridge's statements name no view
        // and no named subquery). Held to the client rules below, one whose
        // body names no litebridge table ran inside litebridge's writes, and
        // `RAISE(IGNORE)` dropped a write litebridge then acknowledged
        // (review 212): refused whole, naming it.
        if cur.budget.own
            && let Some(by) = ctx.accessor
        {
            let by: String = by.chars().take(100).collect();
            cur.denied = Some(format!(
                "a trigger or view another program made on litebridge's own tables ({by:?}) \
                 would run inside litebridge's own statement: its writes there are refused \
                 until it is dropped (with the sqlite3 shell: client SQL cannot)"
            ));
            return Authorization::Deny;
        }
        // In the embedding application's closures, whatever acts through a
        // trigger, a view or a named subquery is held to the rules of client
        // SQL (and its name proves nothing: a client may call a CTE
        // `litebridge_x`). A client's trigger never runs with litebridge's
        // rights.
        let client = !cur.budget.trusted || ctx.accessor.is_some();
        if client {
            note_ddl(&mut cur.ddl, ctx.action);
            if let AuthAction::Read { table_name, .. } = ctx.action
                && cur
                    .refused_reads
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(table_name))
            {
                cur.denied = Some(format!("{table_name} cannot be read"));
                return Authorization::Deny;
            }
        }
        let verdict = common_rule(cur.mode, ctx.action)
            .map(Verdict::Deny)
            .or_else(|| {
                client
                    .then(|| {
                        // A drop's own delete of the dropped object's
                        // statistics is SQLite's, as ANALYZE's work is; a
                        // trigger it fires through a foreign key's cascade
                        // acts under its own name and is not. (The cascade's
                        // own change acts under none, and is let through
                        // too: it changes only a child table of a foreign
                        // key, which no statistics table can be.)
                        let maintenance =
                            cur.maintenance || (cur.ddl.drops_statistics && ctx.accessor.is_none());
                        client_rule(cur.mode, maintenance, ctx.action, ctx.database_name)
                    })
                    .flatten()
            });
        match verdict {
            Some(Verdict::Deny(reason)) => {
                cur.denied = Some(reason);
                Authorization::Deny
            }
            Some(Verdict::Ignore) => Authorization::Ignore,
            None => Authorization::Allow,
        }
    })
}

/// Records what an action of a client statement does to the schema.
fn note_ddl(ddl: &mut Ddl, action: AuthAction<'_>) {
    match action {
        AuthAction::CreateTable { .. }
        | AuthAction::CreateIndex { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::CreateTrigger { .. }
        | AuthAction::CreateVtable { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTempTrigger { .. } => {
            ddl.creates = true;
            ddl.any = true;
        }
        AuthAction::AlterTable { table_name, .. } => {
            ddl.alters = Some(table_name.to_owned());
            ddl.any = true;
        }
        AuthAction::DropTable { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropVtable { .. } => {
            ddl.drops_statistics = true;
            ddl.any = true;
        }
        AuthAction::DropView { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropTempTrigger { .. } => ddl.any = true,
        _ => {}
    }
}

/// Rules for every caller of the writer and the readers, trusted or not.
fn common_rule(mode: Mode, action: AuthAction<'_>) -> Option<String> {
    match (mode, action) {
        (_, AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }) => Some(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) is not allowed: \
             every request is already atomic; use batch for several statements in one transaction"
                .to_owned(),
        ),
        (
            Mode::Writer,
            AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(_),
            },
        ) if listed(ENGINE_PRAGMAS, pragma_name) => Some(format!(
            "PRAGMA {pragma_name} is managed by litebridge and cannot be changed through a request"
        )),
        (
            Mode::Reader,
            AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(_),
            },
        ) if !listed(INTROSPECTION_PRAGMAS, pragma_name) => Some(format!(
            "PRAGMA {pragma_name} = ... {ON_THE_WRITER}"
        )),
        (
            Mode::Reader,
            AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::CreateTempView { .. },
        ) => Some(
            "temporary tables, views, indexes and triggers cannot be created on a shared read connection"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Pragmas that tell where the server's files are.
const PATH_PRAGMAS: &[&str] = &[
    "database_list",
    "temp_store_directory",
    "data_store_directory",
];

/// Whether `name` is one of SQLite's planner statistics tables.
fn stat_table(name: &str) -> bool {
    name.get(..11)
        .is_some_and(|p| p.eq_ignore_ascii_case("sqlite_stat"))
}

const STATS: &str = "the planner statistics (sqlite_stat*) cannot be read or changed through a request; ANALYZE updates them";

const TEMP_OBJECTS: &str = "temporary tables, views, indexes and triggers are not allowed through a request: \
     a connection is shared by every caller, so they would reach (and could shadow tables for) other callers; \
     use an ordinary table";

/// Rules for client SQL only. `maintenance`: the statement is `ANALYZE`,
/// `PRAGMA optimize` or a drop of a table or an index, whose own work reads
/// and clears `sqlite_stat*`.
fn client_rule(
    mode: Mode,
    maintenance: bool,
    action: AuthAction<'_>,
    database: Option<&str>,
) -> Option<Verdict> {
    let deny = |reason: String| Some(Verdict::Deny(reason));
    let mut schema_change = Ddl::default();
    note_ddl(&mut schema_change, action);
    // `CREATE TABLE temp.x` is reported as CREATE_TABLE in database "temp".
    if schema_change.creates && database.is_some_and(|d| d.eq_ignore_ascii_case("temp")) {
        return deny(TEMP_OBJECTS.to_owned());
    }
    match action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => deny(
            "ATTACH, DETACH and VACUUM are not allowed through a request \
             (no other file can be opened or written; use admin.backup for a copy)"
                .to_owned(),
        ),
        AuthAction::Function { function_name } if listed(FORBIDDEN_FUNCTIONS, function_name) => {
            deny(format!("the function {function_name}() is not allowed"))
        }
        AuthAction::Pragma { pragma_name, .. } if listed(PATH_PRAGMAS, pragma_name) => {
            deny(format!(
                "PRAGMA {pragma_name} tells where the server's files are and is not available through a request"
            ))
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(value),
        } if listed(INTROSPECTION_PRAGMAS, pragma_name) => {
            own(Some(value)).then(|| Verdict::Deny(OWN_TABLES.to_owned()))
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if !(mode == Mode::Writer && listed(CLIENT_SETTABLE_PRAGMAS, pragma_name)) => {
            deny(format!(
                "PRAGMA {pragma_name} cannot be set through a request (settable: {})",
                CLIENT_SETTABLE_PRAGMAS.join(", ")
            ))
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value: None,
        } if listed(ACTING_PRAGMAS, pragma_name)
            || (mode == Mode::Reader
                && listed(&["optimize", "incremental_vacuum"], pragma_name)) =>
        {
            deny(format!(
                "PRAGMA {pragma_name} cannot run through a request: litebridge manages it"
            ))
        }
        AuthAction::Read { table_name, .. }
            if table_name.eq_ignore_ascii_case("dbstat")
                || table_name.eq_ignore_ascii_case("sqlite_dbpage") =>
        {
            deny(format!(
                "the {table_name} table is not available to client SQL"
            ))
        }
        // ANALYZE (and PRAGMA optimize) read and clear these tables as part of
        // their work; nothing else may use them.
        AuthAction::Read { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
            if stat_table(table_name) =>
        {
            (!maintenance).then(|| Verdict::Deny(STATS.to_owned()))
        }
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
            if stat_table(table_name) =>
        {
            deny(STATS.to_owned())
        }
        // ANALYZE with no argument visits every table: litebridge's are left
        // out (their rows would be sampled into sqlite_stat4).
        AuthAction::Analyze { table_name } if own(Some(table_name)) => Some(Verdict::Ignore),
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => deny(TEMP_OBJECTS.to_owned()),
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Reindex {
            index_name: table_name,
        }
        | AuthAction::CreateTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::CreateView {
            view_name: table_name,
        }
        | AuthAction::DropView {
            view_name: table_name,
        }
        | AuthAction::DropTempView {
            view_name: table_name,
        }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::DropVtable { table_name, .. }
            if own(Some(table_name)) =>
        {
            deny(OWN_TABLES.to_owned())
        }
        AuthAction::CreateIndex {
            index_name,
            table_name,
        }
        | AuthAction::DropIndex {
            index_name,
            table_name,
        }
        | AuthAction::DropTempIndex {
            index_name,
            table_name,
        }
        | AuthAction::CreateTrigger {
            trigger_name: index_name,
            table_name,
        }
        | AuthAction::DropTrigger {
            trigger_name: index_name,
            table_name,
        }
        | AuthAction::DropTempTrigger {
            trigger_name: index_name,
            table_name,
        } if own(Some(index_name)) || own(Some(table_name)) => deny(OWN_TABLES.to_owned()),
        _ => None,
    }
}

/// The text of litebridge's own statements (BEGIN, COMMIT, savepoints, probes).
///
/// The authorizer runs when a statement is *prepared*, and prepared statements
/// are cached by their text. If `COMMIT` prepared by the writer (allowed) sat
/// in the cache under the text `COMMIT`, a client sending `COMMIT` would get
/// that cached, already-authorized statement. So every internal statement
/// carries a comment with a per-process random tag that client SQL cannot
/// reproduce, and client text never hits an internal cache entry.
pub(crate) struct InternalSql {
    pub(crate) begin: String,
    pub(crate) commit: String,
    pub(crate) savepoint: String,
    pub(crate) release: String,
    pub(crate) probe: String,
    /// Around a client's `ALTER TABLE` (see `exec::schema_change`).
    pub(crate) ddl_savepoint: String,
    pub(crate) ddl_release: String,
    pub(crate) ddl_undo: String,
    /// The names of every object in `main` and `temp` under a reserved name
    /// (see [`RESERVED`]).
    pub(crate) own_objects: String,
    /// The objects in `main` and the bytes of their SQL.
    pub(crate) schema_size: String,
    /// The client tables whose SQL names `litebridge` (the only ones that
    /// can have a foreign key to one of litebridge's tables).
    pub(crate) foreign_refs: String,
    /// The objects in `temp`.
    pub(crate) temp_objects: String,
    /// Whether any trigger exists (in `main` or `temp`).
    pub(crate) triggers: String,
}

/// The names no client object may take, as an SQL condition on `name`:
/// litebridge's prefix, and the eponymous virtual tables that litebridge's
/// own statements and every caller's queries use (a table named
/// `pragma_table_info` would stand in for the function of that name).
const RESERVED: &str = "(name LIKE 'litebridge\\_%' ESCAPE '\\' OR name LIKE 'pragma\\_%' ESCAPE '\\' \
     OR lower(name) IN ('json_each', 'json_tree', 'jsonb_each', 'jsonb_tree', 'dbstat', 'sqlite_dbpage'))";

pub(crate) fn internal_sql() -> &'static InternalSql {
    static SQL: std::sync::OnceLock<InternalSql> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let random = || {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let tag = format!("/* litebridge {:016x}{:016x} */", random(), random());
        InternalSql {
            begin: format!("BEGIN IMMEDIATE {tag}"),
            commit: format!("COMMIT {tag}"),
            savepoint: format!("SAVEPOINT lb_request {tag}"),
            release: format!("RELEASE lb_request {tag}"),
            probe: format!("SELECT count(*) FROM sqlite_schema {tag}"),
            ddl_savepoint: format!("SAVEPOINT lb_ddl {tag}"),
            ddl_release: format!("RELEASE lb_ddl {tag}"),
            ddl_undo: format!("ROLLBACK TO lb_ddl {tag}"),
            schema_size: format!(
                "SELECT count(*), coalesce(sum(length(sql)), 0) FROM main.sqlite_schema {tag}"
            ),
            foreign_refs: format!(
                "SELECT name FROM main.sqlite_schema \
                 WHERE type = 'table' AND name NOT LIKE 'litebridge\\_%' ESCAPE '\\' \
                   AND sql LIKE '%litebridge%' {tag}"
            ),
            temp_objects: format!("SELECT count(*) FROM temp.sqlite_schema {tag}"),
            triggers: format!(
                "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger')                  OR EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger') {tag}"
            ),
            own_objects: format!(
                "SELECT group_concat(name, ' ' ORDER BY name) FROM (\
                 SELECT name FROM main.sqlite_schema WHERE {RESERVED} \
                 UNION ALL SELECT name FROM temp.sqlite_schema WHERE {RESERVED}) {tag}"
            ),
        }
    })
}

/// Installs the progress handler and the authorizer on a connection.
///
/// `halt` is the database's: once set, every statement on the connection is
/// interrupted at its next progress check (shutting down within a deadline).
///
/// Defensive mode is switched on as well: even SQL that got past the
/// authorizer cannot corrupt the file on purpose (no `writable_schema`
/// edits, no writes to shadow tables or to `sqlite_dbpage`).
pub(crate) fn install(conn: &mut Connection, halt: Arc<AtomicBool>) -> Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    // `dbstat` tells the pages and bytes of every table, litebridge's
    // included. Refusing reads of that name left `CREATE VIRTUAL TABLE d
    // USING dbstat` (review 216): no connection has the module, so no name
    // reaches it (litebridge never uses it).
    crate::db::ffi::drop_module(conn, c"dbstat")?;
    conn.progress_handler(
        PROGRESS_OPS,
        Some(move || {
            if halt.load(Ordering::Relaxed) {
                halted()
            } else {
                should_interrupt()
            }
        }),
    )?;
    conn.authorizer(Some(authorize))?;
    Ok(())
}
