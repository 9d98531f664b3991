//! PostgreSQL's errors as litebridge's kinds.
//!
//! By SQLSTATE: a lost or refused connection (class 08, 57P01-57P03) is
//! `unavailable` and the connection is not reused; 25006 (a read-only
//! transaction, or a primary that was demoted) is `read_only`; 57014 (the
//! query was cancelled: litebridge cancels at the deadline) is `timeout`;
//! 40001/40P01 (serialization failure, deadlock) `busy`; 53300 (too many
//! connections) `overloaded`; 42501 (no privilege) `forbidden`; everything
//! else `sql`, with the SQLSTATE in the error's data.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::error::{Error, TimeoutStage};

/// Whether the connection that gave `e` must not be used again.
pub(crate) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || matches!(
                    code,
                    &SqlState::ADMIN_SHUTDOWN
                        | &SqlState::CRASH_SHUTDOWN
                        | &SqlState::CANNOT_CONNECT_NOW
                )
        }
        // No SQLSTATE: an I/O error, a protocol error, a closed socket.
        None => e.as_db_error().is_none() && !is_parameter_error(e),
    }
}

/// Errors raised before anything was sent: a value that cannot be encoded
/// for its parameter, or a wrong number of parameters.
fn is_parameter_error(e: &tokio_postgres::Error) -> bool {
    let text = e.to_string();
    text.starts_with("error serializing parameter") || text.contains("parameters but")
}

/// The litebridge error for `e`, raised while running the client's SQL.
/// The parameter (1 for `$1`) a server error's context names, as
/// PostgreSQL names the one it failed to read while binding a statement
/// (`unnamed portal parameter $2`, with its value when logged).
fn portal_parameter(context: &str) -> Option<usize> {
    let at = context.find("portal parameter $")? + "portal parameter $".len();
    let digits: String = context[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|n| *n >= 1)
}

pub(crate) fn from_pg(e: &tokio_postgres::Error, timeout: Duration) -> Error {
    let Some(db) = e.as_db_error() else {
        if is_parameter_error(e) {
            let text = e.to_string();
            // "error serializing parameter 0", the reason in its source.
            let param = text
                .strip_prefix("error serializing parameter ")
                .and_then(|n| n.trim().parse::<usize>().ok())
                .map_or_else(|| "params".to_owned(), |n| format!("params[{n}]"));
            let source = std::error::Error::source(e).map(ToString::to_string);
            return Error::invalid(param, source.unwrap_or(text));
        }
        return Error::Unavailable {
            what: "the PostgreSQL connection",
            reason: error_chain(e),
        };
    };
    let mut message = db.message().to_owned();
    if let Some(detail) = db.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        message.push_str(" (hint: ");
        message.push_str(hint);
        message.push(')');
    }
    let code = db.code();
    // A value the server could not take for its parameter's type (bad
    // date text, a NUL in text): said of that parameter, as the values
    // refused before they are sent are (review 247).
    if code.code().starts_with("22")
        && let Some(n) = db.where_().and_then(portal_parameter)
    {
        return Error::invalid(format!("params[{}]", n - 1), message);
    }
    match code {
        &SqlState::READ_ONLY_SQL_TRANSACTION => Error::ReadOnly { message },
        &SqlState::QUERY_CANCELED => Error::Timeout {
            after: timeout,
            stage: TimeoutStage::Running,
        },
        &SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED => {
            Error::Busy { message }
        }
        &SqlState::TOO_MANY_CONNECTIONS => Error::Overloaded {
            queue: "the PostgreSQL server's connections (SQLSTATE 53300, too many clients)",
            capacity: 0,
            retry_after: Duration::from_millis(100),
        },
        &SqlState::INSUFFICIENT_PRIVILEGE => Error::Forbidden { message },
        c if connection_lost(e) => Error::Unavailable {
            what: "the PostgreSQL server",
            reason: format!("{message} (SQLSTATE {})", c.code()),
        },
        c => Error::Postgres {
            sqlstate: c.code().to_owned(),
            message,
        },
    }
}

/// `e` with its sources, which tokio-postgres keeps apart.
pub(crate) fn error_chain(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
