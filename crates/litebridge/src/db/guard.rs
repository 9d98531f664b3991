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
//! - The authorizer refuses, in client SQL only, statements that would break
//!   the engine: transaction control (the writer owns BEGIN/COMMIT; a reader
//!   left inside BEGIN would stop seeing new commits) and pragmas that change
//!   the journal or locking mode. litebridge's own statements run outside a
//!   client context and are not restricted.

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

struct Current {
    budget: Budget,
    client: bool,
    denied: Option<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Marks the current thread as running one operation until dropped.
pub(crate) struct Scope(());

/// Enters an operation on this thread. `client` marks caller-supplied SQL,
/// which the authorizer restricts.
pub(crate) fn enter(budget: &Budget, client: bool) -> Scope {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            budget: budget.clone(),
            client,
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

/// Pragmas whose assignment would break the engine's assumptions.
const ENGINE_PRAGMAS: &[&str] = &[
    "journal_mode",
    "locking_mode",
    "wal_autocheckpoint",
    "query_only",
    "synchronous",
    "writable_schema",
];

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(cur) = c.as_mut() else {
            return Authorization::Allow;
        };
        if !cur.client {
            return Authorization::Allow;
        }
        let denied = match ctx.action {
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Some(
                "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) is not allowed: \
                 every request is already atomic; use batch for several statements in one transaction"
                    .to_owned(),
            ),
            AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(_),
            } if ENGINE_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
            {
                Some(format!(
                    "PRAGMA {pragma_name} is managed by litebridge and cannot be changed through a request"
                ))
            }
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
