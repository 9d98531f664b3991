//! [`Backend`]: the server process behind one of the clients' connections,
//! named so that it can be ended safely when a statement ignores its cancel.
//!
//! A pid alone does not name a process for long: the connection is dropped
//! before the terminate is sent (two seconds of grace go by), its process
//! ends, and the server may hand the same pid to the next session that
//! starts, another client's, or one of the server's own. A cancel request
//! is safe from that (it carries the session's secret key), a
//! `pg_terminate_backend` is not. So the process is named by its pid and
//! the moment it started, read by the connection itself when it is first
//! leased, and ended only if both still match, in one statement. Seeing
//! another session's start time needs `pg_read_all_stats` (or a superuser)
//! where ending it needs `pg_signal_backend`: without the first, nothing
//! is ended and the log says what to grant.

use std::time::SystemTime;

use deadpool_postgres::Pool;

use super::error::error_chain;

/// A server process: its pid and when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backend {
    pub(super) pid: i32,
    pub(super) started: SystemTime,
}

/// What [`Backend::terminate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// It was running and was told to end.
    Terminated,
    /// No process has its pid any more.
    Already,
    /// Its pid is another process's now (started at another moment): left alone.
    Reused,
    /// litebridge's role cannot see when the process with its pid started,
    /// so it was left alone.
    Unseen,
}

impl Backend {
    /// Run on the connection itself: its own pid and start, which every
    /// session may read of itself.
    pub(super) const OWN: &'static str = "SELECT a.pid, a.backend_start \
         FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a";

    /// Ends the process if it still runs, from litebridge's own role
    /// (`own`): the pid and the start are matched in the statement that
    /// terminates, so no session that started since can be hit.
    pub(super) async fn terminate(self, own: &Pool) -> Result<Ended, String> {
        let c = own.get().await.map_err(|e| e.to_string())?;
        let rows = c
            .query(
                "SELECT a.backend_start IS NULL, \
                 CASE WHEN a.backend_start OPERATOR(pg_catalog.=) $2 \
                 THEN pg_catalog.pg_terminate_backend(a.pid) END \
                 FROM pg_catalog.pg_stat_get_activity($1) a",
                &[&self.pid, &self.started],
            )
            .await
            .map_err(|e| error_chain(&e))?;
        let Some(row) = rows.first() else {
            return Ok(Ended::Already);
        };
        Ok(
            match (row.get::<_, bool>(0), row.get::<_, Option<bool>>(1)) {
                (true, _) => Ended::Unseen,
                (false, None) => Ended::Reused,
                // `false`: it ended between the look and the signal.
                (false, Some(true)) => Ended::Terminated,
                (false, Some(false)) => Ended::Already,
            },
        )
    }
}
