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
}

impl Budget {
    pub(crate) fn new(timeout: Option<Duration>) -> Budget {
        let started = Instant::now();
        Budget {
            started,
            deadline: timeout.map(|t| started + t),
            timeout,
            cancelled: None,
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
                Some((SQLITE_AUTH, _)) if cur.denied.is_some() => Error::Forbidden {
                    message: cur.denied.clone().unwrap_or_default(),
                },
                _ => err,
            }
        })
    }
}

const SQLITE_INTERRUPT: i32 = 9;
const SQLITE_AUTH: i32 = 23;

fn should_interrupt() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|cur| cur.budget.expired() || cur.budget.is_cancelled())
    })
}

/// Pragmas whose assignment would break the engine's assumptions or change
/// its configured behaviour for every other caller.
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

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(cur) = c.as_mut() else {
            return Authorization::Allow;
        };
        let denied = match (cur.mode, ctx.action) {
            (Mode::Internal, _) => None,
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
            ) if ENGINE_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
            {
                Some(format!(
                    "PRAGMA {pragma_name} is managed by litebridge and cannot be changed through a request"
                ))
            }
            (
                Mode::Reader,
                AuthAction::Pragma {
                    pragma_name,
                    pragma_value: Some(_),
                },
            ) if !INTROSPECTION_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
            {
                Some(format!(
                    "PRAGMA {pragma_name} = ... cannot run on a shared read connection; send it with execute"
                ))
            }
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
pub(crate) fn install(conn: &mut Connection) -> Result<()> {
    conn.progress_handler(PROGRESS_OPS, Some(should_interrupt))?;
    conn.authorizer(Some(authorize))?;
    Ok(())
}
