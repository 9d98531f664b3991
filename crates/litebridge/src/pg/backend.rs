//! Ending a clients' statement that litebridge gave up on and that goes
//! on: [`Backends`], [`end`].
//!
//! A statement can catch its cancel and go on (a `DO` loop that catches
//! `query_canceled`). When litebridge gives up on one (past its deadline,
//! or its caller gone) it sends the cancel and closes the connection; the
//! server, which checks every second during a statement that its client is
//! still there (`client_connection_check_interval`, pinned in the clients'
//! start-up options), then ends the session. That needs no right, but the
//! setting is the session's own to change (`set_config` in the statement,
//! a function's `SET` clause), so it is the first line only.
//!
//! The backstop, two to four seconds after the close (the cancel's answer
//! is waited for two at most, then two more), is `pg_terminate_backend`
//! from litebridge's own role. A pid alone does not name a process for
//! long: by then the process may have ended and the server handed its pid
//! to the next session that started, another client's or one of its own.
//! (A cancel request is safe from that: it carries the session's secret
//! key.) So each of the clients' connections is named by its pid (from the
//! connection itself) and the moment its process started (read from
//! litebridge's own role, on the same server, while the connection is
//! leased, so the pid is surely its), and the process is ended only if both
//! still match, in one statement. Seeing another role's session's start
//! needs `pg_read_all_stats` (or a superuser), ending it
//! `pg_signal_backend`, and both functions' `EXECUTE`: without all of them,
//! litebridge warns at start and leaves the backstop out (no lookup on new
//! connections either). Replicas have their own [`Backends`], with
//! connections of litebridge's own role to each (both functions run on a
//! standby): a read there can run a function whose `SET` clause switches
//! the check off as well as on the primary.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{ObjectId, Pool};
use tokio::time::Instant;
use tokio_postgres::{CancelToken, NoTls};

use super::STOP_GRACE;
use super::error::error_chain;
use crate::sync::lock;

/// A server process: its pid and when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backend {
    pub(super) pid: i32,
    pub(super) started: SystemTime,
}

/// What [`Backend::terminate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
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
    /// The process behind `conn`, a clients' connection that is leased (so
    /// its process runs and its pid is its own): its pid from itself, when
    /// it started from litebridge's own role on the same server (`own`),
    /// which sees it whatever the clients' role may read and whatever role
    /// the session has set. `Ok(None)` when the connection could not tell
    /// its pid (it is broken), an error when litebridge's role could not
    /// tell when the process started.
    async fn of(conn: &tokio_postgres::Client, own: &Pool) -> Result<Option<Backend>, String> {
        let Some(pid) = conn
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await
            .ok()
            .and_then(|r| r.try_get::<_, i32>(0).ok())
        else {
            return Ok(None);
        };
        let row = own
            .get()
            .await
            .map_err(|e| e.to_string())?
            .query_opt(
                "SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity($1) a",
                &[&pid],
            )
            .await
            .map_err(|e| error_chain(&e))?;
        match row.map(|r| r.try_get::<_, Option<SystemTime>>(0)) {
            Some(Ok(Some(started))) => Ok(Some(Backend { pid, started })),
            Some(Ok(None)) => Err("its role cannot see when other sessions started".into()),
            Some(Err(e)) => Err(error_chain(&e)),
            None => Err(format!("no server process {pid} is seen")),
        }
    }

    /// Ends the process if it still runs, from litebridge's own role
    /// (`own`): the pid and the start are matched in the statement that
    /// signals, so a session that started since is not ended (but for the
    /// moment between the server's look and its signal, as with any
    /// `pg_terminate_backend`).
    async fn terminate(self, own: &Pool) -> Result<Ended, String> {
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
                (false, Some(true)) => Ended::Terminated,
                // It ended between the look and the signal.
                (false, Some(false)) => Ended::Already,
            },
        )
    }
}

/// The process of each of the clients' connections to one server (`None`
/// when the connection could not name it), and whether the connection is
/// leased (`None`) or since when it is back in the pool; with litebridge's
/// own role's connections to that server, which name and end them.
pub(super) struct Backends {
    /// The server, for the log: `the primary`, `the replica <host:port>`.
    server: String,
    own: Pool,
    map: Mutex<HashMap<ObjectId, Entry>>,
    /// Whether a process litebridge's role could not name was logged.
    warned: AtomicBool,
}

/// A connection's process, if named, and when it went back to the pool
/// (`None` while leased).
type Entry = (Option<Backend>, Option<Instant>);

impl Backends {
    pub(super) fn new(server: String, own: Pool) -> Backends {
        Backends {
            server,
            own,
            map: Mutex::default(),
            warned: AtomicBool::new(false),
        }
    }

    /// The process of `conn`, leased now (see [`Backend::of`]); a process
    /// litebridge's role cannot name is warned of once per server. An error
    /// when `deadline` came first: the request then fails and its
    /// connection is closed, never used unnamed (a caller's short deadlines
    /// must not leave connections without a backstop).
    pub(super) async fn name(
        &self,
        conn: &tokio_postgres::Client,
        deadline: Instant,
    ) -> Result<Option<Backend>, tokio::time::error::Elapsed> {
        let e = match tokio::time::timeout_at(deadline, Backend::of(conn, &self.own)).await? {
            Ok(backend) => return Ok(backend),
            Err(e) => e,
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "litebridge's own PostgreSQL role could not name the server process of a \
                 clients' connection to {}, so a statement there that switches off \
                 client_connection_check_interval and ignores its cancel would go on after \
                 litebridge gave up on it (let the role connect there, with \
                 pg_read_all_stats): {e}",
                self.server
            );
        }
        Ok(None)
    }

    /// Closes litebridge's own connections to the server.
    pub(super) fn close(&self) {
        self.own.close();
    }

    /// Notes `id` leased; false when its process is not known yet.
    pub(super) fn lease(&self, id: ObjectId) -> bool {
        lock(&self.map)
            .get_mut(&id)
            .map(|(_, back)| *back = None)
            .is_some()
    }

    /// Notes the process of `id` (or that it could not be named), leased
    /// now. Connections the pool drops on its own (found closed) leave
    /// entries: past `most`, those back in the pool for a minute go (a
    /// leased one never does: its statement may be the one to end), and a
    /// connection whose entry went is named again at its next lease.
    pub(super) fn insert(&self, id: ObjectId, backend: Option<Backend>, most: usize) {
        let mut map = lock(&self.map);
        if map.len() > most {
            map.retain(|_, (_, back)| back.is_none_or(|t| t.elapsed() < Duration::from_secs(60)));
        }
        map.insert(id, (backend, None));
    }

    /// Notes `id` back in the pool.
    pub(super) fn released(&self, id: ObjectId) {
        if let Some((_, back)) = lock(&self.map).get_mut(&id) {
            *back = Some(Instant::now());
        }
    }

    /// The process of `id`, forgotten (its connection is being closed),
    /// with the way to end it.
    pub(super) fn take(&self, id: ObjectId) -> Option<(Backend, Pool)> {
        let backend = lock(&self.map)
            .remove(&id)
            .and_then(|(backend, _)| backend)?;
        Some((backend, self.own.clone()))
    }
}

/// After the connection of a statement litebridge gave up on was closed:
/// the cancel (for a statement that heeds it), then, two seconds after it
/// was answered (or gave up), the backstop on `backend`'s process when
/// there is one (see the module's design note), waiting up to ten seconds
/// for one of litebridge's own connections. Spawned on the current
/// runtime, if any.
pub(super) fn end(token: CancelToken, backstop: Option<(Backend, Pool)>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let _ = tokio::time::timeout(STOP_GRACE, token.cancel_query(NoTls)).await;
        let Some((backend, own)) = backstop else {
            return;
        };
        tokio::time::sleep(STOP_GRACE).await;
        let pid = backend.pid;
        match tokio::time::timeout(5 * STOP_GRACE, backend.terminate(&own)).await {
            Ok(Ok(Ended::Already)) => {}
            Ok(Ok(Ended::Terminated)) => tracing::warn!(
                pid,
                "a PostgreSQL statement went on after its cancel and its connection closed \
                 (it switched off client_connection_check_interval); its server process was \
                 terminated"
            ),
            Ok(Ok(Ended::Reused)) => tracing::debug!(
                pid,
                "a PostgreSQL server process litebridge gave up on ended; its pid is another \
                 session's now, left alone"
            ),
            Ok(Ok(Ended::Unseen)) => tracing::warn!(
                pid,
                "a PostgreSQL statement litebridge gave up on may go on: litebridge's role \
                 cannot see when the process with its pid started (grant it pg_read_all_stats)"
            ),
            Ok(Err(e)) => tracing::warn!(
                pid,
                "a PostgreSQL statement litebridge gave up on may go on: its server process \
                 could not be terminated (give litebridge's role pg_signal_backend and \
                 pg_read_all_stats): {e}"
            ),
            Err(_) => tracing::warn!(pid, "terminating a runaway PostgreSQL statement timed out"),
        }
    });
}
