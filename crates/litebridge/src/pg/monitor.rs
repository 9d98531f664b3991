//! The cluster as litebridge last saw it: which server answers as the
//! primary, how far each replica has replayed, and whether the service is
//! healthy.
//!
//! # Design
//!
//! A task probes every node each [`PgConfig::health_check_interval`]
//! (and once at connect), with a deadline of its own, and keeps what it
//! found. Health, readiness, `/metrics` and `pool.*` read that record and
//! never touch the network: a flood of health checks costs the cluster
//! nothing, and a node that hangs makes its entry stale, not the check.
//!
//! The primary is probed on litebridge's own pool (it reports which
//! server of the URL's host list answered, and whether that server is in
//! recovery, as a demoted primary is); each replica on its pool. A
//! replica's lag is the primary's log position minus the replica's replay
//! position, both from the same round of probes.
//!
//! [`PgConfig::health_check_interval`]: super::PgConfig::health_check_interval

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;

use super::Inner;
use super::error::error_chain;
use crate::consistency::Token;
use crate::db::Health;
use crate::sync::lock;

/// One server of the cluster as last probed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Where it is: `host:port` as the server reports it, or as configured
    /// until it answered.
    pub address: String,
    /// `primary` or `replica`: what it is configured as.
    pub role: &'static str,
    /// Whether the last probe got an answer.
    pub reachable: bool,
    /// Whether the server said it is in recovery (a standby). A primary in
    /// recovery was demoted: writes fail there.
    pub in_recovery: bool,
    /// Its position in the log: the primary's write position, on its
    /// timeline; a replica's replay position (timeline 0: a replica's is
    /// not shown to the clients' role the probe runs as).
    pub position: Option<Token>,
    /// A replica's distance behind the primary, in bytes of log.
    pub lag_bytes: Option<u64>,
    /// What the last probe failed with.
    pub error: Option<String>,
    /// When it was last probed.
    pub checked: Option<SystemTime>,
}

/// The primary and the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// The server the URL leads to.
    pub primary: NodeStatus,
    /// The configured replicas, in order.
    pub replicas: Vec<NodeStatus>,
}

impl ClusterStatus {
    /// Before the first probe: every node as configured, unreached.
    pub(super) fn configured(url_hosts: String, replicas: &[String]) -> ClusterStatus {
        let node = |address: String, role| NodeStatus {
            address,
            role,
            reachable: false,
            in_recovery: false,
            position: None,
            lag_bytes: None,
            error: Some("not probed yet".into()),
            checked: None,
        };
        ClusterStatus {
            primary: node(url_hosts, "primary"),
            replicas: replicas
                .iter()
                .map(|r| node(r.clone(), "replica"))
                .collect(),
        }
    }

    /// Healthy while the primary answers both of litebridge's roles, is not
    /// in recovery, and was probed lately (`every` is the probes' interval).
    /// Replicas are not needed: reads fall back to the primary. The problems
    /// name no address and carry no server message: readiness is served
    /// without a key (`pool.health` has the details).
    pub(super) fn health(&self, open: bool, every: Duration) -> Health {
        let mut problems = Vec::new();
        let p = &self.primary;
        let stale = every * 2 + PROBE_TIMEOUT * 2;
        if !open {
            problems.push("the PostgreSQL pool is closed".to_owned());
        } else if !p.reachable {
            problems.push(
                "the PostgreSQL primary does not answer one of litebridge's roles (pool.health says which and why)"
                    .to_owned(),
            );
        } else if p.in_recovery {
            problems.push(
                "the PostgreSQL server the URL leads to is in recovery (a standby, or a demoted primary): writes fail there until the URL leads to a primary"
                    .to_owned(),
            );
        } else if let Some(age) = p.checked.and_then(|t| t.elapsed().ok())
            && age > stale
        {
            problems.push(format!(
                "no probe of the PostgreSQL primary has finished for {} s",
                age.as_secs()
            ));
        }
        Health {
            healthy: problems.is_empty(),
            problems,
        }
    }
}

/// Longest a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one probe of one node found.
struct Probe {
    address: Option<String>,
    in_recovery: bool,
    position: Option<Token>,
}

const PROBE: &str = "SELECT pg_catalog.pg_is_in_recovery()::text, \
     CASE WHEN pg_catalog.pg_is_in_recovery() \
          THEN pg_catalog.pg_last_wal_replay_lsn() \
          ELSE pg_catalog.pg_current_wal_lsn() END::text, \
     COALESCE(pg_catalog.host(pg_catalog.inet_server_addr()) || ':' || \
              pg_catalog.current_setting('port'), ''), \
     CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL \
          ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END";

/// One probe on `pool`'s connection; with `fresh`, on a new connection
/// each time (closed after), so that a role that can no longer log in is
/// seen at once, not at the next reconnect.
async fn probe(pool: &Pool, fresh: bool) -> Result<Probe, String> {
    let run = async {
        let conn = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => error_chain(&e),
            other => other.to_string(),
        })?;
        let conn = closing_if(conn, fresh);
        let messages = conn
            .simple_query(PROBE)
            .await
            .map_err(|e| error_chain(&e))?;
        let row = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .ok_or("the probe returned no row")?;
        Ok(Probe {
            in_recovery: row.get(0) == Some("true"),
            // A primary's timeline, from its log file's name (a replica's
            // is not shown to every role: none).
            position: row.get(1).and_then(|t| t.parse::<Token>().ok()).map(|t| {
                let timeline = row.get(3).and_then(super::walfile_timeline);
                Token::new(timeline.unwrap_or(0), t.lsn)
            }),
            address: row.get(2).filter(|a| !a.is_empty()).map(str::to_owned),
        })
    };
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// The pooled connection, closed when dropped if `fresh`.
fn closing_if(
    conn: deadpool_postgres::Object,
    fresh: bool,
) -> impl std::ops::Deref<Target = deadpool_postgres::Object> {
    struct Guard(Option<deadpool_postgres::Object>, bool);
    impl std::ops::Deref for Guard {
        type Target = deadpool_postgres::Object;
        fn deref(&self) -> &deadpool_postgres::Object {
            self.0.as_ref().expect("held until dropped")
        }
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if let (Some(c), true) = (self.0.take(), self.1) {
                drop(deadpool_postgres::Object::take(c));
            }
        }
    }
    Guard(Some(conn), fresh)
}

fn record(node: &mut NodeStatus, found: Result<Probe, String>) {
    node.checked = Some(SystemTime::now());
    match found {
        Ok(p) => {
            if let Some(a) = p.address {
                node.address = a;
            }
            node.reachable = true;
            node.in_recovery = p.in_recovery;
            node.position = p.position;
            node.error = None;
        }
        Err(e) => {
            node.reachable = false;
            node.position = None;
            node.error = Some(e);
        }
    }
}

/// One connection per node and role, for the probes alone: a probe never
/// waits behind the workload for a pooled connection (which would report a
/// busy primary as down), and never holds one the workload needs.
pub(super) struct Probes {
    /// The primary, as litebridge's own role.
    pub(super) own: Pool,
    /// The primary, as the clients' role (a role locked out, by a password
    /// changed or a grant revoked, fails every `sql.*` call).
    pub(super) client: Pool,
    /// Each replica, as the clients' role.
    pub(super) replicas: Vec<Pool>,
}

/// The primary through both roles: its state from litebridge's own, and
/// whether the clients' role still gets in.
async fn probe_primary(probes: &Probes) -> Result<Probe, String> {
    let (own, client) = tokio::join!(probe(&probes.own, false), probe(&probes.client, true));
    match (own, client) {
        (Ok(p), Ok(_)) => Ok(p),
        (Err(e), _) => Err(format!("as litebridge's own role: {e}")),
        (_, Err(e)) => Err(format!("as the clients' role: {e}")),
    }
}

/// Probes every node once and records what it found.
pub(super) async fn probe_all(inner: &Inner) {
    let probes = &inner.probes;
    let primary = probe_primary(probes);
    let replicas = futures_util::future::join_all(probes.replicas.iter().map(|p| probe(p, false)));
    let (primary, replicas) = tokio::join!(primary, replicas);
    let mut status = lock(&inner.cluster);
    record(&mut status.primary, primary);
    let head = status.primary.position;
    if !status.primary.in_recovery {
        inner.primary_at(head);
    }
    for (node, found) in status.replicas.iter_mut().zip(replicas) {
        record(node, found);
        node.lag_bytes = match (head, node.position) {
            (Some(h), Some(r)) => Some(h.lsn.saturating_sub(r.lsn)),
            _ => None,
        };
    }
    inner.counters.health_checked_now();
}

/// Probes every `every` until the database is dropped.
pub(super) fn watch(inner: Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.client.is_closed() {
                return;
            }
            probe_all(&inner).await;
            drop::<Arc<Inner>>(inner);
        }
    });
}
