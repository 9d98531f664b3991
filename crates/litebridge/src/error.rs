//! The one error type of the library.
//!
//! Every failure a caller can see is an [`Error`]. Callers decide what to do
//! with [`Error::kind`] (a stable, wire-visible classification matching the
//! spec's error table) and [`Error::is_recoverable`] (whether trying the same
//! thing again later can succeed). Errors are never classified by message text.

use std::path::PathBuf;
use std::time::Duration;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stable classification of an [`Error`], as named on the wire (`data.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// SQLite rejected the statement: syntax, constraint, missing table, ...
    Sql,
    /// The operation's deadline passed. A timed-out write did not commit.
    Timeout,
    /// A queue is full; try again later.
    Overloaded,
    /// SQLite stayed busy (locked by another process) past the busy timeout.
    Busy,
    /// A write was sent on a read-only path, or to a database file
    /// litebridge's user may not write.
    ReadOnly,
    /// The database file is damaged.
    Corrupt,
    /// A component is not running (closed, restarting, failed to open).
    Unavailable,
    /// A parameter or argument given by the caller is invalid.
    InvalidArgument,
    /// A configuration value is invalid.
    Config,
    /// A file-system operation failed.
    Io,
    /// A check found a problem that is not corruption (for example a foreign-key violation).
    CheckFailed,
    /// The statement is not allowed (transaction control, engine settings).
    Forbidden,
    /// A bug or a panic in caller-supplied code.
    Internal,
    /// A circuit breaker is open: calls are refused until `retry_after`.
    CircuitOpen,
    /// A worker's handler raised an exception.
    WorkerError,
    /// A worker process died with the call in flight; its outcome is unknown.
    WorkerCrashed,
    /// No valid credentials (missing, unknown or revoked API key).
    Unauthorized,
    /// A per-key quota (daily, monthly or concurrent requests) is used up.
    QuotaExceeded,
    /// A result, a value or a message is over a configured limit.
    TooLarge,
    /// The method has no meaning on this backend or transport.
    Unsupported,
    /// A write's COMMIT was sent but its answer was lost (the connection to
    /// the database failed): it may or may not have committed.
    OutcomeUnknown,
}

impl ErrorKind {
    /// The wire name of this kind, as in the spec's error table.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Sql => "sql",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Busy => "busy",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Config => "config",
            ErrorKind::Io => "io",
            ErrorKind::CheckFailed => "check_failed",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Internal => "internal",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::WorkerError => "worker_error",
            ErrorKind::WorkerCrashed => "worker_crashed",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in litebridge.
///
/// `Clone`: one failure (a failed COMMIT, a full disk) is the answer to every
/// request of a batch; the I/O error is shared, not rebuilt.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite rejected a statement.
    #[error("{message}")]
    Sql {
        /// The primary result code (`SQLITE_CONSTRAINT` = 19, ...).
        code: i32,
        /// The extended result code (`SQLITE_CONSTRAINT_UNIQUE` = 2067, ...).
        extended_code: i32,
        /// SQLite's own message.
        message: String,
    },
    /// The deadline passed before the operation finished; a write that times out did not commit.
    #[error("timed out after {} ms {stage}", after.as_millis())]
    Timeout {
        /// The timeout that applied.
        after: Duration,
        /// Where the time ran out.
        stage: TimeoutStage,
    },
    /// A bounded queue is full.
    #[error("{}", overloaded(queue, *capacity, *retry_after))]
    Overloaded {
        /// Which queue.
        queue: &'static str,
        /// Its capacity; 0 when another's (a PostgreSQL server with no
        /// connection left).
        capacity: usize,
        /// A suggested wait before retrying.
        retry_after: Duration,
    },
    /// SQLite reported `SQLITE_BUSY`/`SQLITE_LOCKED` after the busy timeout.
    #[error("{message} (the lock was held past the busy timeout)")]
    Busy {
        /// SQLite's message.
        message: String,
    },
    /// A statement that writes was sent on a read path, or a write to a
    /// database file litebridge's user may not write.
    #[error("{message}")]
    ReadOnly {
        /// What was refused and what to use instead.
        message: String,
    },
    /// The database file is damaged.
    #[error("database {}is corrupt: {detail}", named(path))]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// A component is not available (closed, restarting, could not be opened).
    #[error("{what} is unavailable: {reason}")]
    Unavailable {
        /// The component.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A caller-supplied argument is invalid.
    #[error("invalid parameter `{param}`: {message}")]
    InvalidArgument {
        /// The parameter's name (or position).
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration `{key}` = {value}: expected {expected}")]
    Config {
        /// The configuration key.
        key: String,
        /// The rejected value.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// PostgreSQL rejected a statement (kind `sql`).
    #[error("{message}")]
    Postgres {
        /// The SQLSTATE (`23505` unique violation, ...).
        sqlstate: String,
        /// PostgreSQL's message, with its detail and hint when it sent them.
        message: String,
    },
    /// A write's COMMIT may have taken effect or not: on PostgreSQL the
    /// connection failed after COMMIT was sent, before its answer came; on
    /// SQLite the log's frames were written and flushing them to the disk
    /// failed (they are in the file, and a crash before the next write
    /// would recover them). Never retried automatically; a write with an
    /// idempotency key can be sent again with the same key, and one without
    /// is to be read back first.
    #[error("{what} may or may not have committed: {reason}")]
    OutcomeUnknown {
        /// What was being done.
        what: String,
        /// What failed.
        reason: String,
    },
    /// A database file could not be opened or created.
    #[error("cannot open database {}: {reason}", path.display())]
    Open {
        /// The path that was given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot read", "cannot rename", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The statement or method is not allowed (authorizer rule, missing scope).
    #[error("{message}")]
    Forbidden {
        /// What was refused and why.
        message: String,
    },
    /// The caller did not prove who it is.
    #[error("{message}")]
    Unauthorized {
        /// What was missing or wrong (never the secret itself).
        message: String,
    },
    /// A quota of the caller's key is used up.
    #[error("the {quota} quota of key {key:?} ({limit} requests) is used up; retry after {} ms", retry_after.as_millis())]
    QuotaExceeded {
        /// Which quota: `daily`, `monthly` or `concurrent`.
        quota: &'static str,
        /// The key's name.
        key: String,
        /// The limit that was reached.
        limit: u64,
        /// When the quota frees up.
        retry_after: Duration,
    },
    /// Caller-supplied code panicked, or litebridge hit a bug.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
    /// A worker's handler raised an exception (or refused the call).
    #[error("worker raised {type_name}: {message}")]
    WorkerError {
        /// The JSON-RPC error code the worker sent (-32004 for an exception).
        code: i64,
        /// The exception's message.
        message: String,
        /// The exception's type (`ValueError`, ...).
        type_name: String,
        /// The worker's traceback.
        traceback: String,
        /// The handler raised it on purpose (the SDK's `WorkerError`): an
        /// answer about the call, such as a refusal of its input, not a
        /// failure of the method, so its breaker does not count it (any
        /// caller could otherwise open it for everyone with bad input).
        deliberate: bool,
    },
    /// The worker process died while the call was in flight.
    ///
    /// The message leaves out what the worker wrote to stderr: that was
    /// written for every call the process served, and may quote other
    /// callers' parameters. The lines are in `stderr`, for a program that
    /// embeds the pool; the server's log has them, and its wire errors do
    /// not.
    #[error(
        "worker process {pid} died ({exit}) with the call in flight; its outcome is unknown (its last stderr lines are in the server's log)"
    )]
    WorkerCrashed {
        /// The process id.
        pid: u32,
        /// The pool's own number for the worker, never given to another
        /// worker of that pool (a pid may be: workers in containers of
        /// their own are all pid 1). How the calls one death took down are
        /// told from another's; 0 when not known (an error from a worker
        /// host of an older version).
        worker: u64,
        /// How it ended: `exit code 1`, `signal 9 (SIGKILL)`, ...
        exit: String,
        /// The last lines it wrote to stderr, while serving any caller.
        stderr: Vec<String>,
        /// Whether the method is declared idempotent, so that calling it
        /// again is safe; when it is not, the error is not recoverable.
        idempotent: bool,
    },
    /// A worker host stopped answering with the call in flight (kind
    /// `worker_crashed`): its heartbeats stopped, or it never acknowledged
    /// the call. The call may or may not have run.
    #[error(
        "worker host {host} was lost with the call in flight ({reason}); its outcome is unknown"
    )]
    HostLost {
        /// The host's id (`unknown` when no host acknowledged the call).
        host: String,
        /// How it was seen to be lost.
        reason: String,
        /// Whether the method is declared idempotent, so that calling it
        /// again is safe; when it is not, the error is not recoverable.
        idempotent: bool,
    },
    /// The connection to the worker hosts was lost with a call in flight
    /// (kind `outcome_unknown`): the call may or may not have run. Retried
    /// only for idempotent methods.
    #[error("call of `{method}`: {reason}; it may or may not have run")]
    CallOutcomeUnknown {
        /// The worker method.
        method: String,
        /// What was lost.
        reason: String,
        /// Whether the method is declared idempotent, so that calling it
        /// again is safe; when it is not, the error is not recoverable.
        idempotent: bool,
    },
    /// A circuit breaker refused the call without trying it.
    #[error("circuit breaker `{breaker}` is open; retry after {} ms", retry_after.as_millis())]
    CircuitOpen {
        /// The breaker's name (the method it guards).
        breaker: String,
        /// How long until it lets a probe through.
        retry_after: Duration,
    },
    /// Something a request built or asked for is over a configured limit; it
    /// was refused before more of it was built.
    #[error("{what} is over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (names the setting that limits it).
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The method has no meaning here (this backend, this transport); the
    /// message says what to use instead.
    #[error("{what} is not supported {here}: {instead}")]
    Unsupported {
        /// The method or feature.
        what: String,
        /// Where it was asked for (`over HTTP`, `on PostgreSQL`).
        here: String,
        /// What to use instead.
        instead: String,
        /// The storage backend serving (`sqlite`).
        backend: &'static str,
    },
    /// An integrity or foreign-key check found problems.
    #[error("check of {} failed: {detail}", path.display())]
    CheckFailed {
        /// The checked file.
        path: PathBuf,
        /// The first problems reported.
        detail: String,
    },
}

/// Where a [`Error::Timeout`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutStage {
    /// While waiting in a queue; the operation never started.
    Queued,
    /// While the statement ran; it was interrupted (a write was rolled back).
    Running,
    /// A write ran past `db.max_write_hold`, the longest one request may hold
    /// the writer; it was interrupted and rolled back.
    WriterHold,
    /// A worker call ran out while its handler ran: the worker was told to
    /// cancel, and what the handler did before stays done.
    InWorker {
        /// Whether the method is declared idempotent, so that calling it
        /// again is safe; when it is not, the error is not recoverable.
        idempotent: bool,
    },
}

impl std::fmt::Display for TimeoutStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutStage::Queued => "while queued; it was never started",
            TimeoutStage::Running => "while running; it was interrupted and nothing was committed",
            TimeoutStage::InWorker { .. } => {
                "while its worker ran it; the worker was told to cancel, and what it did before stays done"
            }
            TimeoutStage::WriterHold => {
                "while holding the writer (db.max_write_hold: the longest one request may make \
                 every other write wait); it was interrupted and nothing was committed"
            }
        })
    }
}

/// [`Error::Overloaded`]'s message.
fn overloaded(queue: &str, capacity: usize, retry_after: Duration) -> String {
    let ms = retry_after.as_millis();
    if capacity == 0 {
        format!("{queue}: no room (the limit is not litebridge's); retry after {ms} ms")
    } else {
        format!("{queue} queue is full ({capacity} at most); retry after {ms} ms")
    }
}

impl Error {
    /// This error naming the item of a multi-item request it came from
    /// (`statements[2]: ...`, `rows[7].params[0]`).
    pub(crate) fn at(self, what: &str, i: usize) -> Error {
        let place = format!("{what}[{i}]");
        match self {
            Error::Sql {
                code,
                extended_code,
                message,
            } => Error::Sql {
                code,
                extended_code,
                message: format!("{place}: {message}"),
            },
            Error::Postgres { sqlstate, message } => Error::Postgres {
                sqlstate,
                message: format!("{place}: {message}"),
            },
            Error::InvalidArgument { param, message } => Error::InvalidArgument {
                param: format!("{place}.{param}"),
                message,
            },
            Error::ReadOnly { message } => Error::ReadOnly {
                message: format!("{place}: {message}"),
            },
            Error::Forbidden { message } => Error::Forbidden {
                message: format!("{place}: {message}"),
            },
            other => other,
        }
    }

    /// The stable classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Sql { .. } | Error::Postgres { .. } => ErrorKind::Sql,
            Error::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Overloaded { .. } => ErrorKind::Overloaded,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::ReadOnly { .. } => ErrorKind::ReadOnly,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unavailable { .. } | Error::Open { .. } => ErrorKind::Unavailable,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Config { .. } => ErrorKind::Config,
            Error::Io { .. } => ErrorKind::Io,
            Error::CheckFailed { .. } => ErrorKind::CheckFailed,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::Unauthorized { .. } => ErrorKind::Unauthorized,
            Error::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            Error::Internal { .. } => ErrorKind::Internal,
            Error::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            Error::WorkerError { .. } => ErrorKind::WorkerError,
            Error::WorkerCrashed { .. } | Error::HostLost { .. } => ErrorKind::WorkerCrashed,
            Error::CallOutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
        }
    }

    /// Whether the same operation, tried again later, can succeed and may be
    /// tried again.
    ///
    /// True for timeouts, full queues, lock contention and components that are
    /// restarting; false for errors in the request itself or damaged files.
    /// A worker call whose outcome is unknown (its worker crashed, its host
    /// or NATS was lost, it timed out while running) is recoverable only when its
    /// method is declared idempotent: calling a method that is not again may
    /// do its work twice.
    ///
    /// `unavailable` is recoverable, as a server's client sees it: the
    /// service is shutting down or restarting, and another instance, or this
    /// one later, can answer. A program that closed its own [`Database`] or
    /// shut down its own pool gets `unavailable` from that handle for good:
    /// it should not retry on it (`Database::health` says it was closed).
    ///
    /// [`Database`]: crate::Database
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::WorkerCrashed { idempotent, .. }
            | Error::HostLost { idempotent, .. }
            | Error::CallOutcomeUnknown { idempotent, .. }
            | Error::Timeout {
                stage: TimeoutStage::InWorker { idempotent },
                ..
            } => *idempotent,
            Error::Timeout { .. }
            | Error::Overloaded { .. }
            | Error::Busy { .. }
            | Error::Unavailable { .. }
            | Error::CircuitOpen { .. }
            | Error::QuotaExceeded { .. } => true,
            // SQLITE_FULL and I/O errors can go away when space returns.
            Error::Sql { code, .. } => {
                matches!(*code, SQLITE_FULL | SQLITE_IOERR | SQLITE_NOMEM)
            }
            _ => false,
        }
    }

    /// This error of a call of a method whose idempotency is `idempotent`:
    /// an outcome-unknown error of a worker call learns whether calling again
    /// is safe (see [`Error::is_recoverable`]). Other errors are unchanged.
    pub(crate) fn of_method(mut self, idempotent: bool) -> Error {
        match &mut self {
            Error::WorkerCrashed { idempotent: i, .. }
            | Error::HostLost { idempotent: i, .. }
            | Error::CallOutcomeUnknown { idempotent: i, .. }
            | Error::Timeout {
                stage: TimeoutStage::InWorker { idempotent: i },
                ..
            } => *i = idempotent,
            _ => {}
        }
        self
    }

    /// The SQLite primary and extended result codes, when SQLite produced this error.
    pub fn sqlite_codes(&self) -> Option<(i32, i32)> {
        match self {
            Error::Sql {
                code,
                extended_code,
                ..
            } => Some((*code, *extended_code)),
            _ => None,
        }
    }

    /// Whether this is an open refused because the file is no SQLite
    /// database (its header damaged, or another kind of file): damage, for
    /// a check of it.
    pub fn is_not_a_database(&self) -> bool {
        matches!(self, Error::Open { reason, .. } if reason == crate::db::NOT_A_DATABASE)
    }

    /// Whether a statement refused on the read path may run on the writer
    /// (`execute`): a write, or a PRAGMA that sets a value.
    pub fn belongs_on_the_writer(&self) -> bool {
        match self {
            Error::ReadOnly { .. } => true,
            Error::Forbidden { message } => message.ends_with(crate::db::ON_THE_WRITER),
            _ => false,
        }
    }

    /// `invalid_argument` of `params`: the statement takes `expected`
    /// parameters, and `given` were given.
    pub(crate) fn wrong_parameter_count(expected: usize, given: usize) -> Error {
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("1 {one}")
            } else {
                format!("{n} {many}")
            }
        };
        let given = match given {
            0 => "none were given".to_owned(),
            n => plural(n, "was given", "were given"),
        };
        Error::invalid(
            "params",
            format!(
                "the statement takes {}, {given}",
                plural(expected, "parameter", "parameters")
            ),
        )
    }

    /// A suggested wait before retrying, for errors that carry one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Overloaded { retry_after, .. }
            | Error::CircuitOpen { retry_after, .. }
            | Error::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            Error::Busy { .. } => Some(Duration::from_millis(50)),
            _ => None,
        }
    }

    pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            param: param.into(),
            message: message.into(),
        }
    }

    pub(crate) fn config(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Error {
        Error::Config {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source: std::sync::Arc::new(source),
        }
    }

    pub(crate) fn writer_gone() -> Error {
        Error::Unavailable {
            what: "writer",
            reason: "the writer thread stopped while handling this request; it is being restarted and the request did not commit".into(),
        }
    }

    pub(crate) fn closed() -> Error {
        Error::Unavailable {
            what: "database",
            reason: "it has been closed".into(),
        }
    }
}

/// A path followed by a space, or nothing for an empty one (an error from
/// SQLite knows no path until a caller adds it).
fn named(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{} ", path.display())
    }
}

use rusqlite::ffi::{
    SQLITE_BUSY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_IOERR, SQLITE_LOCKED, SQLITE_NOMEM,
    SQLITE_NOTADB, SQLITE_READONLY,
};

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                let message = msg.unwrap_or_else(|| f.to_string());
                match f.code as i32 {
                    _ if matches!(f.extended_code & 0xff, SQLITE_BUSY | SQLITE_LOCKED) => {
                        Error::Busy { message }
                    }
                    _ if f.extended_code & 0xff == SQLITE_READONLY => Error::ReadOnly {
                        message: format!("{message} (this path is read-only)"),
                    },
                    // A virtual table's own index found inconsistent (an FTS5
                    // table any writer can make so, through its external
                    // content or its commands): that table's problem, not
                    // damage to the file, so it does not mark the database
                    // unhealthy (as `check` reports them apart).
                    _ if f.extended_code == rusqlite::ffi::SQLITE_CORRUPT_VTAB => Error::Sql {
                        code: f.extended_code & 0xff,
                        extended_code: f.extended_code,
                        message: format!(
                            "{message} (a full-text or other virtual table's index does not match \
                             its content; rebuild it, e.g. INSERT INTO t(t) VALUES('rebuild'))"
                        ),
                    },
                    _ if matches!(f.extended_code & 0xff, SQLITE_CORRUPT | SQLITE_NOTADB) => {
                        Error::Corrupt {
                            path: PathBuf::new(),
                            detail: message,
                        }
                    }
                    _ => Error::Sql {
                        code: f.extended_code & 0xff,
                        extended_code: f.extended_code,
                        message,
                    },
                }
            }
            rusqlite::Error::InvalidParameterName(name) => {
                Error::invalid(name, "the statement has no parameter of this name")
            }
            rusqlite::Error::InvalidParameterCount(given, expected) => {
                Error::wrong_parameter_count(expected, given)
            }
            rusqlite::Error::MultipleStatement => Error::invalid(
                "sql",
                "only one statement is allowed here; use batch for several",
            ),
            rusqlite::Error::Empty => Error::invalid("sql", "there is no statement in it"),
            rusqlite::Error::SqlInputError {
                error, msg, offset, ..
            } => Error::Sql {
                code: error.extended_code & 0xff,
                extended_code: error.extended_code,
                message: format!("{msg} (at offset {offset})"),
            },
            other => Error::Sql {
                code: 1,
                extended_code: 1,
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_error_names_its_file_or_none_without_a_gap() {
        let named = Error::Corrupt {
            path: PathBuf::from("/d/app.db"),
            detail: "malformed".into(),
        };
        assert_eq!(
            named.to_string(),
            "database /d/app.db is corrupt: malformed"
        );
        let unnamed = Error::Corrupt {
            path: PathBuf::new(),
            detail: "malformed".into(),
        };
        assert_eq!(unnamed.to_string(), "database is corrupt: malformed");
    }

    #[test]
    fn constraint_errors_are_sql_and_not_recoverable() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(k INTEGER PRIMARY KEY)")
            .unwrap();
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let err: Error = conn
            .execute("INSERT INTO t VALUES (1)", [])
            .unwrap_err()
            .into();
        assert_eq!(err.kind(), ErrorKind::Sql);
        assert_eq!(err.sqlite_codes(), Some((19, 1555)));
        assert!(!err.is_recoverable());
    }

    #[test]
    fn syntax_errors_carry_their_offset() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let err: Error = conn.prepare("SELEC 1").unwrap_err().into();
        assert_eq!(err.kind(), ErrorKind::Sql);
        assert!(err.to_string().contains("syntax error"), "{err}");
    }

    #[test]
    fn kinds_have_wire_names() {
        let e = Error::Overloaded {
            queue: "write",
            capacity: 4,
            retry_after: Duration::from_millis(5),
        };
        assert_eq!(e.kind().as_str(), "overloaded");
        assert!(e.is_recoverable());
        assert_eq!(e.retry_after(), Some(Duration::from_millis(5)));
    }
}
