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
//! - The progress handler interrupts a statement once its deadline passes or
//!   its caller has gone away (heavy lane).
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
//!   the writer), and none of the pragmas that act without a value
//!   (`wal_checkpoint`, `shrink_memory`, ...);
//! - litebridge's own tables (`litebridge_*`: keys, quotas, cache, stores,
//!   migrations) can be neither read, written, altered, dropped, indexed nor
//!   given triggers, and no object may be created under that prefix.
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
    /// litebridge's own code (the stores): may use litebridge's tables.
    pub(crate) trusted: bool,
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
        }
    }

    /// The same budget, marked as litebridge's own code.
    pub(crate) fn trusted(self) -> Budget {
        Budget {
            trusted: true,
            ..self
        }
    }

    pub(crate) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub(crate) fn expired_at(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
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
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Marks the current thread as running one operation until dropped.
pub(crate) struct Scope(());

/// Enters an operation on this thread until the returned scope drops.
pub(crate) fn enter(budget: &Budget, mode: Mode) -> Scope {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            budget: budget.clone(),
            mode,
            denied: None,
        });
    });
    Scope(())
}

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

impl Scope {
    /// Turns a failure of this operation into the error the caller should see:
    /// an interrupt becomes `timeout` (or `unavailable` when the caller left),
    /// an authorizer refusal becomes `forbidden` with the reason.
    pub(crate) fn map_err(&self, err: Error) -> Error {
        CURRENT.with(|c| {
            let c = c.borrow();
            let Some(cur) = c.as_ref() else { return err };
            match err.sqlite_codes() {
                Some((SQLITE_INTERRUPT, _)) if cur.budget.expired() => {
                    cur.budget.timeout_error(TimeoutStage::Running)
                }
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

const SQLITE_ERROR: i32 = 1;
const SQLITE_INTERRUPT: i32 = 9;
const SQLITE_AUTH: i32 = 23;

/// Whether the operation running on this thread runs client SQL (anything but
/// litebridge's own trusted or internal statements).
pub(crate) fn is_client() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|cur| cur.mode != Mode::Internal && !cur.budget.trusted)
    })
}

fn should_interrupt() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|cur| cur.budget.expired() || cur.budget.is_cancelled())
    })
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

/// SQL functions client SQL may not call.
const FORBIDDEN_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer"];

/// The prefix of every table litebridge owns.
pub(crate) const OWN_PREFIX: &str = "litebridge_";

fn listed(list: &[&str], name: &str) -> bool {
    list.iter().any(|p| p.eq_ignore_ascii_case(name))
}

fn own(name: Option<&str>) -> bool {
    name.is_some_and(|n| {
        n.get(..OWN_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX))
    })
}

const OWN_TABLES: &str = "litebridge's own tables (litebridge_*) cannot be read or changed through client SQL; use the state, memory and cache methods";

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(cur) = c.as_mut() else {
            return Authorization::Allow;
        };
        let denied = match cur.mode {
            Mode::Internal => None,
            mode => common_rule(mode, ctx.action).or_else(|| {
                (!cur.budget.trusted)
                    .then(|| client_rule(mode, ctx.action))
                    .flatten()
            }),
        };
        match denied {
            Some(reason) => {
                cur.denied = Some(reason);
                Authorization::Deny
            }
            None => Authorization::Allow,
        }
    })
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
            "PRAGMA {pragma_name} = ... cannot run on a shared read connection; send it with execute"
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

/// Rules for client SQL only.
fn client_rule(mode: Mode, action: AuthAction<'_>) -> Option<String> {
    match action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Some(
            "ATTACH, DETACH and VACUUM are not allowed through a request \
             (no other file can be opened or written; use admin.backup for a copy)"
                .to_owned(),
        ),
        AuthAction::Function { function_name } if listed(FORBIDDEN_FUNCTIONS, function_name) => {
            Some(format!("the function {function_name}() is not allowed"))
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if !(listed(INTROSPECTION_PRAGMAS, pragma_name)
            || (mode == Mode::Writer && listed(CLIENT_SETTABLE_PRAGMAS, pragma_name))) =>
        {
            Some(format!(
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
            Some(format!(
                "PRAGMA {pragma_name} cannot run through a request: litebridge manages it"
            ))
        }
        AuthAction::Read { table_name, .. } if table_name.eq_ignore_ascii_case("dbstat") => {
            Some("the dbstat table is not available to client SQL".to_owned())
        }
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Reindex {
            index_name: table_name,
        }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::CreateView {
            view_name: table_name,
        }
        | AuthAction::CreateTempView {
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
            Some(OWN_TABLES.to_owned())
        }
        AuthAction::CreateIndex {
            index_name,
            table_name,
        }
        | AuthAction::CreateTempIndex {
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
        | AuthAction::CreateTempTrigger {
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
        } if own(Some(index_name)) || own(Some(table_name)) => Some(OWN_TABLES.to_owned()),
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
}

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
        }
    })
}

/// Installs the progress handler and the authorizer on a connection.
///
/// Defensive mode is switched on as well: even SQL that got past the
/// authorizer cannot corrupt the file on purpose (no `writable_schema`
/// edits, no writes to shadow tables or to `sqlite_dbpage`).
pub(crate) fn install(conn: &mut Connection) -> Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.progress_handler(PROGRESS_OPS, Some(should_interrupt))?;
    conn.authorizer(Some(authorize))?;
    Ok(())
}
