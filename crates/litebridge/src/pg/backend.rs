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
//!
//! "The same server" is checked, not assumed (review 122): an address may
//! lead to several servers (a load balancer) or to another one than it
//! did, and a pid there names some other process with a start of its own.
//! So a name also holds when its server started
//! (`pg_postmaster_start_time()`, from the clients' connection), an own
//! connection that reached another server is dropped, and the terminating
//! statement matches the server too. A connection that could not be named
//! is not used at all (its request fails): were it used unnamed, a caller
//! that made the look fail (a short deadline, a server made full) would
//! have a connection beyond the backstop's reach. Only a role that may not
//! see the starts leaves connections unnamed, warned of.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, ObjectId, Pool};
use tokio::time::Instant;
use tokio_postgres::{CancelToken, NoTls};

use super::STOP_GRACE;
use super::error::error_chain;
use crate::error::{Error, TimeoutStage};
use crate::fault::Faults;
use crate::sync::lock;

/// A server process: its pid and when it started, and when its server
/// started (which tells one server from another: a replica's address may
/// lead to another server than it did, or to several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backend {
    pub(super) pid: i32,
    pub(super) started: SystemTime,
    pub(super) server: SystemTime,
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
    /// litebridge's own connections reached another server than the
    /// process's, however often tried.
    Elsewhere,
}

/// What [`Backend::of`] could not do.
#[derive(Debug)]
pub(super) enum Unnamed {
    /// litebridge's role may not see when other sessions started: lasting
    /// (its grants), so the connection goes without a backstop.
    Unseen,
    /// Anything else (a connection refused, a server full, an answer from
    /// another server): the connection is not used.
    Failed(String),
}

/// How many of litebridge's own connections are tried before one reaches
/// the server a process is on.
const TRIES: usize = 3;

/// A connection of `own` to the server that started at `server`; `None`
/// when [`TRIES`] of them reached other servers (the address leads
/// elsewhere now, or to several), each taken out of the pool.
async fn on_server(
    own: &Pool,
    server: SystemTime,
    faults: Option<&Faults>,
) -> Result<Option<Object>, String> {
    for _ in 0..TRIES {
        let c = own.get().await.map_err(|e| e.to_string())?;
        let started: SystemTime = c
            .query_one("SELECT pg_catalog.pg_postmaster_start_time()", &[])
            .await
            .map_err(|e| error_chain(&e))?
            .try_get(0)
            .map_err(|e| error_chain(&e))?;
        if started == server && !faults.is_some_and(Faults::take_other_server) {
            return Ok(Some(c));
        }
        drop(Object::take(c));
    }
    Ok(None)
}

impl Backend {
    /// The process behind `conn`, a clients' connection that is leased (so
    /// its process runs and its pid is its own): its pid and its server's
    /// start from itself, when it started from litebridge's own role on the
    /// same server (`own`), which sees it whatever the clients' role may
    /// read and whatever role the session has set.
    async fn of(
        conn: &tokio_postgres::Client,
        own: &Pool,
        faults: &Faults,
    ) -> Result<Backend, Unnamed> {
        let failed = |e: String| Unnamed::Failed(e);
        let row = conn
            .query_one(
                "SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_postmaster_start_time()",
                &[],
            )
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let (pid, server): (i32, SystemTime) = (
            row.try_get(0).map_err(|e| failed(error_chain(&e)))?,
            row.try_get(1).map_err(|e| failed(error_chain(&e)))?,
        );
        let own = on_server(own, server, Some(faults))
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                failed(format!(
                    "{TRIES} of its connections reached another server than the clients' \
                 connection (each address must lead to one server)"
                ))
            })?;
        let row = own
            .query_opt(
                "SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity($1) a",
                &[&pid],
            )
            .await
            .map_err(|e| failed(error_chain(&e)))?
            .ok_or_else(|| failed(format!("no server process {pid} is seen")))?;
        match row.try_get::<_, Option<SystemTime>>(0) {
            Ok(Some(started)) => Ok(Backend {
                pid,
                started,
                server,
            }),
            Ok(None) => Err(Unnamed::Unseen),
            Err(e) => Err(failed(error_chain(&e))),
        }
    }

    /// Ends the process if it still runs, from litebridge's own role
    /// (`own`) on its server: the pid and the start are matched in the
    /// statement that signals, so a session that started since is not
    /// ended (but for the moment between the server's look and its signal,
    /// as with any `pg_terminate_backend`).
    async fn terminate(self, own: &Pool) -> Result<Ended, String> {
        let Some(c) = on_server(own, self.server, None).await? else {
            return Ok(Ended::Elsewhere);
        };
        let rows = c
            .query(
                "SELECT a.backend_start IS NULL, \
                 CASE WHEN a.backend_start OPERATOR(pg_catalog.=) $2 \
                 AND pg_catalog.pg_postmaster_start_time() OPERATOR(pg_catalog.=) $3 \
                 THEN pg_catalog.pg_terminate_backend(a.pid) END \
                 FROM pg_catalog.pg_stat_get_activity($1) a",
                &[&self.pid, &self.started, &self.server],
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
    /// What its errors name (`Error::Unavailable`'s `what`).
    what: &'static str,
    own: Pool,
    map: Mutex<HashMap<ObjectId, Entry>>,
    /// Whether litebridge's role was found unable to see sessions' starts.
    warned: AtomicBool,
    /// Connections that could not be named (warned of at the 1st, 2nd, 4th... time).
    failures: AtomicU64,
}

/// A connection's process, if named, and when it went back to the pool
/// (`None` while leased).
type Entry = (Option<Backend>, Option<Instant>);

impl Backends {
    pub(super) fn new(server: String, what: &'static str, own: Pool) -> Backends {
        Backends {
            server,
            what,
            own,
            map: Mutex::default(),
            warned: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        }
    }

    /// The process of `conn`, leased now (see [`Backend::of`]). A process
    /// litebridge's role may not see the start of goes without a backstop
    /// (warned of once per server); any other failure, and `deadline`
    /// coming first, is an error: the request then fails and its connection
    /// is closed, never used unnamed (a caller must not be able to leave a
    /// connection without a backstop by making the look fail: a short
    /// deadline, a server made full).
    pub(super) async fn name(
        &self,
        conn: &tokio_postgres::Client,
        (deadline, timeout): (Instant, Duration),
        faults: &Faults,
    ) -> Result<Option<Backend>, Error> {
        let named = tokio::time::timeout_at(deadline, Backend::of(conn, &self.own, faults))
            .await
            .map_err(|_| Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            })?;
        let e = match named {
            Ok(backend) => return Ok(Some(backend)),
            Err(Unnamed::Unseen) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "litebridge's own PostgreSQL role cannot see when the clients' sessions \
                         on {} started, so a statement there that switches off \
                         client_connection_check_interval and ignores its cancel would go on \
                         after litebridge gave up on it (grant it pg_read_all_stats)",
                        self.server
                    );
                }
                return Ok(None);
            }
            Err(Unnamed::Failed(e)) => e,
        };
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = format!(
            "litebridge's own role could not name the server process of a clients' connection \
             to {}, so the connection is not used (let the role connect there): {e}",
            self.server
        );
        if n.is_power_of_two() {
            tracing::warn!(failures = n, "{reason}");
        }
        Err(Error::Unavailable {
            what: self.what,
            reason,
        })
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

/// The backstops under way ([`end`]): counted, so that closing the
/// database can wait for them (found by review 122: the process may end
/// right after, and a backstop still in its grace then never ran, or found
/// litebridge's own connections closed), and told to act at once then.
pub(super) struct Backstops {
    running: tokio::sync::watch::Sender<usize>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Backstops {
    fn default() -> Backstops {
        Backstops {
            running: tokio::sync::watch::Sender::new(0),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Backstops {
    /// Tells every backstop to act now, and waits up to `most` for them.
    pub(super) async fn finish(&self, most: Duration) {
        self.closing.send_replace(true);
        let mut running = self.running.subscribe();
        let _ = tokio::time::timeout(most, running.wait_for(|n| *n == 0)).await;
    }

    /// Whether [`Backstops::finish`] was called: wait no more.
    async fn closing(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }
}

/// One backstop, counted while it lives.
struct Running(Arc<Backstops>);

impl Running {
    fn new(backstops: Arc<Backstops>) -> Running {
        backstops.running.send_modify(|n| *n += 1);
        Running(backstops)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n -= 1);
    }
}

/// After the connection of a statement litebridge gave up on was closed:
/// the cancel (for a statement that heeds it), then, two seconds after it
/// was answered (or gave up), or at once when the database is closing, the
/// backstop on `backend`'s process when there is one (see the module's
/// design note), waiting up to ten seconds for one of litebridge's own
/// connections. Spawned on the current runtime, if any; a backstop is
/// counted in its database's [`Backstops`].
pub(super) fn end(token: CancelToken, backstop: Option<(Backend, Pool, Arc<Backstops>)>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let backstop =
        backstop.map(|(backend, own, backstops)| (backend, own, Running::new(backstops)));
    runtime.spawn(async move {
        let _ = tokio::time::timeout(STOP_GRACE, token.cancel_query(NoTls)).await;
        let Some((backend, own, running)) = backstop else {
            return;
        };
        let backstops = &running.0;
        tokio::select! {
            () = tokio::time::sleep(STOP_GRACE) => {}
            () = backstops.closing() => {}
        }
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
            Ok(Ok(Ended::Elsewhere)) => tracing::warn!(
                pid,
                "a PostgreSQL statement litebridge gave up on may go on: litebridge's own \
                 connections reached another server than its own (each address must lead to \
                 one server)"
            ),
            Err(_) => tracing::warn!(pid, "terminating a runaway PostgreSQL statement timed out"),
        }
    });
}
