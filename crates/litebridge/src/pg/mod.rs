//! The PostgreSQL backend: the clients' SQL on a PostgreSQL server or
//! cluster (feature `postgres`).
//!
//! # Design
//!
//! There is no writer thread and no group commit here: PostgreSQL commits
//! concurrent sessions together itself. Each request takes a connection of
//! a pool (deadpool-postgres over tokio-postgres) for itself and runs in a
//! transaction litebridge opens and ends:
//!
//! - **Reads** run in `BEGIN READ ONLY` ... `COMMIT`. `BEGIN` is awaited
//!   first: sent ahead unanswered, a `BEGIN` that failed (on a
//!   `statement_timeout` the caller set with `set_config()`, or a cancel
//!   from another session of the clients' role) would leave the statement
//!   to run in a transaction of its own, read-write. The statement, then
//!   the `COMMIT` and the tidy-up in one message, go together: two round
//!   trips (three when the statement is not cached yet: its Parse is
//!   awaited). With [`PgConfig::one_message_reads`] on, that is a
//!   statement's first read on a connection to the primary, and later
//!   reads of it take one round trip (`fast`: one simple query, `BEGIN READ
//!   ONLY; EXECUTE ...; COMMIT`, which PostgreSQL stops at its first
//!   error). `BEGIN` is not sent ahead for the next read on the
//!   previous read's round trip either: PostgreSQL fixes `now()` at
//!   `BEGIN`, so the next read would see the time the last one ended (a
//!   review found a read after a write seeing `now()` before the write's;
//!   tried and reverted on 2026-12-02). A
//!   read-only *transaction*, not a read-only session default: a session
//!   default was tried and hostile reviews broke it four ways (a `DO`
//!   block that commits; code run while parsing, by tokio-postgres's type
//!   lookups, or by a cast in litebridge's own position query resolved
//!   through the caller's `search_path`, turning the default off for the
//!   statement after it). Reads refuse `DO`, `CALL`, `ANALYZE` and
//!   `REINDEX` all the same (`sql::check_read`).
//! - **Writes** send `BEGIN` (and the Parse of statements not prepared
//!   yet), run the statements once `BEGIN` is answered, then `COMMIT` once
//!   they succeeded: three round trips. The deadline covers them all. Until
//!   `COMMIT` is sent, a deadline or a lost connection means nothing
//!   committed (`timeout`, `unavailable`); after, a lost answer means the
//!   outcome is unknown (`outcome_unknown`), never reported as either.
//!   Statements sent behind an unanswered `BEGIN` ran one by one, each
//!   committed, when it failed: any session of the clients' role can
//!   cancel another's `BEGIN` (`pg_cancel_backend`), so a `read` key could
//!   break other callers' batches in parts and leave an idempotency key
//!   claimed with no result. With [`PgConfig::one_message_writes`] on,
//!   a write whose statements its connection prepared already sends
//!   `BEGIN` and them in one simple query (`fast`: PostgreSQL skips the
//!   rest of it behind a `BEGIN` that failed), then `COMMIT`: two round
//!   trips, with the same meaning of each answer.
//! - **Deadlines** are enforced by the client: at the deadline litebridge
//!   sends PostgreSQL's cancel request for the connection's query and drops
//!   the connection, so no request outlives its deadline and no server
//!   backend keeps running for it.
//! - **Who runs the SQL.** The clients' SQL logs in as its own role
//!   ([`PgConfig::client_user`]), never a superuser: PostgreSQL's privileges,
//!   not a statement filter, keep it away from litebridge's own tables.
//!   Statements that change the session or end the transaction are refused
//!   before they are sent (`sql`).
//! - **Prepared statements** are cached per connection, at most
//!   [`PgConfig::statement_cache`] (the cache starts over when full; the
//!   one-message requests' notes of them go with it). A
//!   statement whose parameter types the server cannot infer (`SELECT $1`)
//!   is prepared again with types taken from the values.

mod backend;
mod claims;
mod config;
mod describe;
mod error;
mod fast;
mod lease;
mod listen;
mod monitor;
mod replicated;
mod schema;
mod sql;
mod together;
mod token;
mod types;
mod writes_together;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::collections::HashMap;

use deadpool_postgres::{Manager, ManagerConfig, Object, ObjectId, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage as M, Statement as PgStatement};

pub use crate::consistency::{Consistency, Token};
pub use config::PgConfig;
pub use monitor::{ClusterStatus, NodeStatus};
use token::WalLayout;

use crate::db::Health;
use crate::error::{Error, ErrorKind, Result, TimeoutStage};
use crate::stats::{Counters, DbStats, LatencySnapshots};
use crate::sync::lock;
use crate::value::{ExecResult, Params, Rows, Statement, Value};
use crate::{QueryOptions, WriteOptions};
use error::{connection_lost, error_chain, from_pg};
use lease::Lease;
pub(crate) use listen::Heard;
use types::{Cell, Param, readable};

/// A PostgreSQL database serving the clients' SQL. Cheap to clone; every
/// clone is the same pool.
#[derive(Clone)]
pub struct PgDatabase {
    inner: Arc<Inner>,
}

struct Inner {
    config: PgConfig,
    /// Switches of the tests (`PgDatabase::faults`).
    faults: crate::fault::Faults,
    /// The clients' SQL, as [`PgConfig::client_user`].
    client: Pool,
    /// litebridge's own work (the stores), as the URL's user.
    own: Pool,
    /// One connection more, as the URL's user, for the reads of the keys
    /// and the quota totals alone (`keys_query`): any key's store reads
    /// (`memory.list` loops) may hold every connection of `own`, and a
    /// revocation would wait for them (review 249; on SQLite a reader is
    /// kept for them the same way).
    keys: Pool,
    /// The server process of each of the clients' connections to the
    /// primary, for ending a statement that goes on after litebridge gave
    /// up on it (`backend`); kept only when `ends_runaways`. Each replica
    /// has its own.
    backends: backend::Backends,
    /// The backstops under way, waited for when the database closes.
    backstops: Arc<backend::Backstops>,
    /// Whether litebridge's own role may see and end the clients' sessions
    /// (`pg_read_all_stats`, `pg_signal_backend`, and `EXECUTE` on
    /// `pg_terminate_backend` and `pg_stat_get_activity`).
    ends_runaways: bool,
    /// Connections closed for a statement prepared with SQL in their
    /// session ([`PgDatabase::prepared_with_sql`]).
    prepared_with_sql: AtomicU64,
    /// The caller each of the clients' connections last served (by node):
    /// one handed to another caller is reset first.
    /// With how many times another caller passed it over since
    /// ([`PgDatabase::for_caller`]).
    callers: std::sync::Mutex<Callers>,
    /// The statements each of the clients' connections to the primary
    /// noted for one-message requests (`fast`), by their SQL.
    known: std::sync::Mutex<HashMap<ObjectId, Known>>,
    /// Reads answered in one message.
    one_message_reads: AtomicU64,
    /// Writes whose `BEGIN` and statements went in one message.
    one_message_writes: AtomicU64,
    /// Sessions reset for another caller.
    session_resets: AtomicU64,
    /// The clients' reads waiting for a connection, by caller, for another
    /// read of theirs to take along (`together`).
    waiting: std::sync::Mutex<together::Queues>,
    /// The number of the next read put in `waiting`.
    next_waiting: AtomicU64,
    /// How long the clients' reads took alone, by statement, for the ones
    /// that may go together (`together`).
    paces: std::sync::Mutex<together::Paces>,
    /// Reads answered in a message shared with other reads.
    reads_together: AtomicU64,
    /// Writes answered from a message shared with other writes.
    writes_together: AtomicU64,
    /// Streaming replicas for reads that allow them.
    replicas: Vec<Replica>,
    /// Round robin among replicas.
    turn: AtomicUsize,
    /// Where the server's WAL pages begin, for the write tokens.
    wal: WalLayout,
    /// The latest timeline the primary was seen writing on (0 before the
    /// first): session tokens of an earlier one go to the primary.
    primary_timeline: AtomicU32,
    /// Whether litebridge's role may see a replica's timeline (checked at
    /// connect): without it, session tokens go to the primary.
    sees_timelines: bool,
    replica_reads: AtomicU64,
    /// Reads that asked for a replica and went to the primary, by [`Fallback`].
    primary_fallbacks: [AtomicU64; Fallback::ALL.len()],
    /// The clients' requests: counts, errors and latencies.
    counters: Counters,
    /// The nodes as last probed (`monitor`).
    cluster: std::sync::Mutex<ClusterStatus>,
    /// The probes' own connections.
    probes: monitor::Probes,
    /// Sent after every clients' write's `COMMIT`, in the same message:
    /// what must not pile up across a caller's requests, [`TIDY`].
    /// Reads end with [`END_READ`] instead (a read-only transaction cannot
    /// make temporary objects).
    tidy: &'static str,
    /// The end of a clients' read: [`END_READ`], or without
    /// [`PgConfig::isolate_requests`] its shorter form.
    end_read: &'static str,
    /// One reinstall at a time ([`PgDatabase::reinstall`]).
    reinstalling: tokio::sync::Mutex<()>,
    /// Installs it ran ([`PgDatabase::reinstalls`]).
    reinstalls: AtomicU64,
    /// What a write reads after its `COMMIT`: [`WAL_INSERT_POSITION`], or
    /// with `replicated_to` [`position_in_session_sql`].
    position_sql: String,
    /// The secret the idempotency records are keyed with (`claims`), and
    /// its fingerprint, read again when the database's is found another.
    claims_secret: std::sync::RwLock<claims::Secret>,
}

impl Inner {
    /// Notes a position read on the primary: its timeline is the latest
    /// the primary was seen on (timelines only grow in one cluster).
    fn primary_at(&self, at: Option<Token>) -> Option<Token> {
        if let Some(t) = at {
            self.primary_timeline
                .fetch_max(t.timeline, Ordering::Relaxed);
        }
        at
    }
    /// Whether `who`'s writes read their position after their `COMMIT`:
    /// the clients' for read-your-writes on replicas, everyone's to wait
    /// for standbys ([`PgConfig::replicated_to`]).
    fn tracks_writes(&self, who: Who) -> bool {
        (who == Who::Client && !self.replicas.is_empty()) || self.config.replicated_to > 0
    }
    /// The token of a transaction whose `COMMIT` came before the primary's
    /// insert position `insert` ([`Inner::primary_at`] of its commit's end).
    fn committed_at(&self, insert: Option<Token>) -> Option<Token> {
        self.primary_at(insert.map(|t| Token::after_commit(t, self.wal)))
    }

    /// What a write reads after its `COMMIT` ([`Inner::position_sql`]).
    fn position_sql(&self) -> &str {
        &self.position_sql
    }
}

/// A [`PgDatabase`] that does not keep its pools open.
#[derive(Clone)]
pub(crate) struct WeakPgDatabase(std::sync::Weak<Inner>);

impl WeakPgDatabase {
    pub(crate) fn upgrade(&self) -> Option<PgDatabase> {
        self.0.upgrade().map(|inner| PgDatabase { inner })
    }
}

/// A replica, and until when it rests after a failure.
struct Replica {
    pool: Pool,
    down_until: std::sync::Mutex<Option<Instant>>,
    /// The server processes of its clients' connections (`backend`).
    backends: backend::Backends,
}

impl Inner {
    /// The server processes of the clients' connections to `node`.
    fn backends(&self, node: Node) -> &backend::Backends {
        match node {
            Node::Primary => &self.backends,
            Node::Replica(i) => &self.replicas[i].backends,
        }
    }
}

/// How long a replica that failed is left alone.
const REPLICA_REST: Duration = Duration::from_secs(5);

/// The least time a read gives a replica to begin before a replica that
/// did not is taken as failing (and rested): a caller's own short deadline
/// says nothing of the replica.
const REPLICA_PATIENCE: Duration = Duration::from_millis(250);

/// Why a replica's guard refused a read: it has not replayed as far as the
/// read needs, or it is no replica any more.
const BEHIND: &str = "it has not replayed as far as the session's token";
const NOT_A_REPLICA: &str = "it is not in recovery (promoted?)";

/// The error of a replica whose guard refused a read, for `why`.
fn refused(why: &'static str) -> Error {
    Error::Unavailable {
        what: "a PostgreSQL replica",
        reason: why.into(),
    }
}

fn is_refused(e: &Error, why: &str) -> bool {
    matches!(e, Error::Unavailable { what, reason } if *what == "a PostgreSQL replica" && reason == why)
}

fn is_behind(e: &Error) -> bool {
    is_refused(e, BEHIND)
}

/// Why a read that asked for a replica (`session` or `any`) was served by
/// the primary; counted by [`PgDatabase::primary_fallbacks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// A `session` token no replica is trusted with: one naming no
    /// timeline, or a timeline the primary has left, or a role that may
    /// not see the replicas' timelines.
    Token,
    /// Every replica was resting after a failure.
    Resting,
    /// The replica's guard refused the read: it had not replayed as far as
    /// the token, was on another timeline, or the guard's own query failed
    /// there (a statement timeout, a recovery conflict, a missing grant).
    Behind,
    /// The node listed as a replica was not in recovery (promoted?).
    NotAReplica,
    /// The replica cancelled the read for a recovery conflict.
    Conflict,
    /// The replica could not be reached, or the read failed on it.
    Failed,
}

impl Fallback {
    /// Every reason, in the order of [`PgDatabase::primary_fallbacks`].
    pub const ALL: [Fallback; 6] = [
        Fallback::Token,
        Fallback::Resting,
        Fallback::Behind,
        Fallback::NotAReplica,
        Fallback::Conflict,
        Fallback::Failed,
    ];

    /// Its name in `/metrics` (`reason`) and `pool.stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Token => "token",
            Fallback::Resting => "resting",
            Fallback::Behind => "behind",
            Fallback::NotAReplica => "not_a_replica",
            Fallback::Conflict => "conflict",
            Fallback::Failed => "failed",
        }
    }
}

/// Which server a read goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    Primary,
    Replica(usize),
}

/// Whose SQL a request runs: the clients' (checked, on their role) or
/// litebridge's own (the stores' fixed statements, on the owner's role);
/// the reads of the keys and quota totals are litebridge's own too, on a
/// connection of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Client,
    Own,
    Keys,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase")
            .field("url", &config::redact(&self.inner.config.url))
            .finish_non_exhaustive()
    }
}

/// The longest SQL prepared for one-message requests (a longer one takes the
/// long way: it is held here as well as in tokio-postgres's cache).
const MOST_KNOWN_SQL: usize = 64 * 1024;

/// A connection's statements for one-message requests, by their SQL: the
/// name `EXECUTE` gives it and tokio-postgres's statement (its types, and
/// kept open while noted), or `None` for one that goes the long way there
/// from now on (its one-message read failed).
type Known = HashMap<String, Option<(Arc<str>, PgStatement)>>;

/// The caller each of the clients' connections last served, by node and
/// connection, and how many times other callers passed it over since.
type Callers = HashMap<(Node, ObjectId), (Option<u64>, usize)>;

/// A statement ready to run: its SQL for PostgreSQL and its values.
struct Prepared {
    sql: String,
    values: Vec<Value>,
}

impl Prepared {
    /// A clients' statement for a write.
    fn new(sql: &str, params: Params) -> Result<Prepared> {
        sql::check_allowed(sql)?;
        Prepared::own(sql, params)
    }

    /// A clients' statement for a read.
    fn read(sql: &str, params: Params) -> Result<Prepared> {
        sql::check_read(sql)?;
        Prepared::own(sql, params)
    }

    /// A statement of litebridge's own (not checked: its text is fixed).
    fn own(sql: &str, params: Params) -> Result<Prepared> {
        let (sql, _) = sql::translate(sql)?;
        let values = match params {
            Params::None => Vec::new(),
            Params::Positional(v) => v,
            Params::Named(_) => {
                return Err(Error::invalid(
                    "params",
                    "named parameters are not supported on PostgreSQL: pass an array for $1, $2, ...",
                ));
            }
        };
        Ok(Prepared { sql, values })
    }
}

impl PgDatabase {
    /// Connects to the server (the first host of the URL that answers as
    /// its `target_session_attrs` asks) and checks the role that runs the
    /// clients' SQL.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad setting; [`Error::Unavailable`] when no
    /// host answers; [`Error::Forbidden`] when the clients' role is a
    /// superuser.
    pub async fn connect(config: PgConfig) -> Result<PgDatabase> {
        config.validate()?;
        let pool = |c: tokio_postgres::Config, size: usize| {
            let manager = Manager::from_config(
                c,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|e| Error::Internal {
                    message: format!("cannot build the PostgreSQL pool: {e}"),
                })
        };
        let deadline = Instant::now() + config.connect_timeout;
        // At least three: a sweep holds one for its lock while its
        // statements take others, and keys and quotas need theirs.
        let own = pool(config.own_config()?, config.connections.clamp(3, 8))?;
        // Errors at start name the server they are about (the URL, its
        // password starred).
        let at_url = |e: Error| match e {
            Error::Unavailable { what, reason } => Error::Unavailable {
                what,
                reason: format!("{reason} (postgres.url {})", config.redacted_url()),
            },
            e => e,
        };
        let mut owner = connect_to(&own, deadline).await.map_err(at_url)?;
        let standby: bool = owner
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| at_url(from_pg(&e, Duration::ZERO)))?
            .get(0);
        if standby {
            return Err(at_url(Error::Unavailable {
                what: "the PostgreSQL primary",
                reason: "the server reached is a standby (in recovery), where litebridge \
                         cannot write: point postgres.url at the primary, or list every \
                         node with ?target_session_attrs=read-write"
                    .into(),
            }));
        }
        let client_user = config.client_user.clone().unwrap_or_default();
        check_client_role(&owner, &client_user).await?;
        schema::migrate(&mut owner, &config.schema, &client_user).await?;
        let claims_secret = claims::install(&mut owner, &config.schema, &client_user).await?;
        // What litebridge's own role may do beyond its schema: see others'
        // sessions (a replica's timeline, `received_timeline`; when a
        // process started, `backend`) and end them (`backend`).
        let (sees, ends) = owner
            .query_one(
                "SELECT pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), \
                 pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE') \
                 AND pg_catalog.has_function_privilege(current_user, \
                     'pg_catalog.pg_terminate_backend(integer, bigint)', 'EXECUTE') \
                 AND pg_catalog.has_function_privilege(current_user, \
                     'pg_catalog.pg_stat_get_activity(integer)', 'EXECUTE')",
                &[],
            )
            .await
            .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1)))
            .unwrap_or((false, false));
        if !(sees && ends) {
            tracing::warn!(
                "litebridge's own PostgreSQL role cannot end a clients' statement that goes \
                 on after its cancel and its connection's close, having switched off the \
                 server's check of its client (client_connection_check_interval): grant it \
                 pg_signal_backend, pg_read_all_stats and EXECUTE on \
                 pg_terminate_backend(integer, bigint) and pg_stat_get_activity(integer), \
                 then restart"
            );
        }
        // `replicated_to` reads the standbys' flush positions, which
        // PostgreSQL shows only to that role: every write would wait to its
        // deadline without them.
        if config.replicated_to > 0 && !sees {
            return Err(Error::Config {
                key: "postgres.replicated_to".into(),
                value: config.replicated_to.to_string(),
                expected: "0, unless litebridge's own PostgreSQL role may read the standbys' \
                           flush positions in pg_stat_replication (GRANT pg_read_all_stats TO \
                           <its role>)"
                    .into(),
            });
        }
        // The count each write will make, made once now: a function it
        // needs that cannot run refuses the start; fewer standbys streaming
        // than asked for make every write wait, which is said.
        if config.replicated_to > 0 {
            let count = format!(
                "SELECT flushed FROM {}_claims.standbys_flushed('0/0'::pg_catalog.pg_lsn, {})",
                config.schema,
                replicated::names_sql(&config.replicated_standbys)
            );
            let streaming = owner
                .query_one(&count, &[])
                .await
                .map_err(|e| Error::Config {
                    key: "postgres.replicated_to".into(),
                    value: config.replicated_to.to_string(),
                    expected: format!(
                        "0, unless litebridge's own role can count the standbys: {}",
                        error::error_chain(&e)
                    ),
                })?;
            let streaming = usize::try_from(streaming.get::<_, i64>(0)).unwrap_or(0);
            if streaming < config.replicated_to {
                tracing::warn!(
                    "postgres.replicated_to is {} but {streaming} standby(s) counted by it \
                     stream from the primary now (postgres.replicated_standbys: {:?}): every \
                     write will wait for more until its deadline, then answer outcome_unknown",
                    config.replicated_to,
                    config.replicated_standbys
                );
            }
        }
        // Standbys stream from the primary, and writes are acknowledged on
        // the primary's word alone: a failover can lose some (`replicated`).
        if config.replicated_to == 0 {
            let standbys = owner
                .query_one(
                    "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_get_wal_senders()",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            if standbys > 0 {
                tracing::warn!(
                    "{standbys} standby(s) stream from this PostgreSQL primary, and \
                     postgres.replicated_to is 0: a write is acknowledged once the primary \
                     commits it, and a failover that promotes a standby which had not \
                     received it loses it (pg_auto_failover can, while its standby catches \
                     up). Set postgres.replicated_to to 1 to acknowledge a write only once a \
                     standby flushed it (docs/postgres.md)"
                );
            }
        }
        // Without it a replica's timeline is unknown: see `received_timeline`.
        let sees_timelines = config.replicas.is_empty() || sees;
        if !sees_timelines {
            tracing::warn!(
                "litebridge's own PostgreSQL role cannot see the replicas' timelines: \
                 `session` reads with a token will all go to the primary until it is \
                 granted pg_read_all_stats (GRANT pg_read_all_stats TO <its role>, \
                 then restart)"
            );
        }
        let (tidy, end_read) = if config.isolate_requests {
            (TIDY, END_READ)
        } else {
            (TIDY_SHARED, END_READ_SHARED)
        };
        // The server's own durability setting, fixed for the clients'
        // sessions so that a role-level setting cannot lower it, and its
        // version (which settings it knows to fix).
        let facts = owner
            .query_one(
                "SELECT pg_catalog.current_setting('synchronous_commit'),
                        pg_catalog.current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|e| from_pg(&e, Duration::ZERO))?;
        let version: i32 = facts.get(1);
        if version < MIN_VERSION {
            return Err(Error::Unavailable {
                what: "the PostgreSQL server",
                reason: format!(
                    "it is version {}.{} (server_version_num {version}); litebridge needs \
                     PostgreSQL 14 or later (the settings it fixes for each session)",
                    version / 10_000,
                    version % 10_000
                ),
            });
        }
        // Whether the server can watch its clients' sockets during a
        // statement (Linux, macOS and the BSDs can; a server that cannot
        // refuses any other value than 0).
        let watches_clients = match owner
            .query_one(
                "SELECT pg_catalog.set_config('client_connection_check_interval', '1000', true)",
                &[],
            )
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) => false,
            Err(e) => return Err(from_pg(&e, Duration::ZERO)),
        };
        if !watches_clients {
            tracing::warn!(
                "this PostgreSQL server cannot check that a client is still connected \
                 (client_connection_check_interval): a clients' statement that ignores its \
                 cancel goes on after litebridge has given up on it and closed its connection, \
                 until litebridge's own role ends it (if it may)"
            );
        }
        let sync = config::Server {
            synchronous_commit: facts.get(0),
            version: u32::try_from(facts.get::<_, i32>(1)).unwrap_or(0),
            watches_clients,
        };
        let layout = owner
            .query_one(
                "SELECT (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_block_size'),
                        (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size')",
                &[],
            )
            .await
            .map_err(|e| from_pg(&e, Duration::ZERO))?;
        let wal = WalLayout {
            page: u64::try_from(layout.get::<_, i64>(0)).unwrap_or(0),
            segment: u64::try_from(layout.get::<_, i64>(1)).unwrap_or(0),
        };
        drop(owner);
        let client = pool(config.client_config(&sync)?, config.connections)?;
        drop(connect_to(&client, deadline).await?);
        // Replicas are not waited for: one that is down costs its reads a
        // detour to the primary, not the start.
        let replicas = config
            .replicas
            .iter()
            .map(|r| {
                Ok(Replica {
                    pool: pool(config.replica_config(r, &sync)?, config.connections)?,
                    down_until: std::sync::Mutex::new(None),
                    backends: backend::Backends::new(
                        format!("the replica {r}"),
                        "a PostgreSQL replica",
                        pool(config.own_replica_config(r)?, 2)?,
                    ),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let probes = monitor::Probes {
            own: pool(config.own_config()?, 1)?,
            client: pool(config.client_config(&sync)?, 1)?,
            replicas: config
                .replicas
                .iter()
                .map(|r| pool(config.replica_config(r, &sync)?, 1))
                .collect::<Result<Vec<_>>>()?,
        };
        let keys = pool(config.own_config()?, 1)?;
        let cluster = ClusterStatus::configured(config.hosts(), &config.replicas);
        let every = config.health_check_interval;
        let position_sql = if config.replicated_to > 0 {
            position_in_session_sql(&config.schema)
        } else {
            WAL_INSERT_POSITION.to_owned()
        };
        let inner = Arc::new(Inner {
            config,
            client,
            backends: backend::Backends::new(
                "the primary".into(),
                "the PostgreSQL server",
                own.clone(),
            ),
            own,
            keys,
            backstops: Arc::default(),
            ends_runaways: sees && ends,
            prepared_with_sql: AtomicU64::new(0),
            callers: std::sync::Mutex::new(HashMap::new()),
            known: std::sync::Mutex::new(HashMap::new()),
            one_message_reads: AtomicU64::new(0),
            one_message_writes: AtomicU64::new(0),
            session_resets: AtomicU64::new(0),
            waiting: std::sync::Mutex::default(),
            next_waiting: AtomicU64::new(0),
            paces: std::sync::Mutex::default(),
            reads_together: AtomicU64::new(0),
            writes_together: AtomicU64::new(0),
            replicas,
            turn: AtomicUsize::new(0),
            wal,
            primary_timeline: AtomicU32::new(0),
            sees_timelines,
            replica_reads: AtomicU64::new(0),
            primary_fallbacks: Default::default(),
            faults: Default::default(),
            counters: Counters::default(),
            cluster: std::sync::Mutex::new(cluster),
            probes,
            tidy,
            end_read,
            position_sql,
            reinstalling: tokio::sync::Mutex::new(()),
            reinstalls: AtomicU64::new(0),
            claims_secret: std::sync::RwLock::new(claims_secret),
        });
        monitor::probe_all(&inner).await;
        monitor::watch(Arc::downgrade(&inner), every);
        Ok(PgDatabase { inner })
    }

    /// The primary and the replicas as last probed (every
    /// [`PgConfig::health_check_interval`]).
    pub fn cluster(&self) -> ClusterStatus {
        lock(&self.inner.cluster).clone()
    }

    /// Healthy while the primary answered the last probe and is not in
    /// recovery.
    pub fn health(&self) -> Health {
        lock(&self.inner.cluster).health(self.is_open(), self.inner.config.health_check_interval)
    }

    /// The clients' requests so far, with the pool's state now. Reads are
    /// counted as the read lane's, writes as the writer's; there is no
    /// heavy lane, group commit, checkpoint or log file here.
    pub fn stats(&self) -> DbStats {
        let i = &self.inner;
        let mut s = DbStats::from_counters(&i.counters);
        let pool = i.client.status();
        s.readers = pool.max_size;
        s.available_readers = pool.available;
        s.active_connections = pool.size.saturating_sub(pool.available);
        s.read_queue = pool.waiting;
        s
    }

    /// The clients' sessions reset because their connection last served
    /// another caller ([`QueryOptions::caller`], [`WriteOptions::caller`]):
    /// a round trip, and the caller's statements prepared again.
    pub fn session_resets(&self) -> u64 {
        self.inner.session_resets.load(Ordering::Relaxed)
    }

    /// The latency histograms (reads, writes; the heavy lane's is empty).
    pub fn latency_snapshots(&self) -> LatencySnapshots {
        let c = &self.inner.counters;
        LatencySnapshots {
            read: c.read_latency.snapshot(),
            write: c.write_latency.snapshot(),
            heavy: c.heavy_latency.snapshot(),
        }
    }

    /// Counts a client request's outcome and time.
    fn counted<T>(&self, write: bool, started: Instant, r: Result<T>) -> Result<T> {
        let c = &self.inner.counters;
        let (latency, errors) = if write {
            (&c.write_latency, &c.write_errors)
        } else {
            (&c.read_latency, &c.read_errors)
        };
        latency.record(started.elapsed());
        if let Err(e) = &r {
            errors.fetch_add(1, Ordering::Relaxed);
            match e.kind() {
                ErrorKind::Timeout => {
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                ErrorKind::Unavailable | ErrorKind::OutcomeUnknown => {
                    c.failed_connections.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        r
    }

    /// Runs `work` while this front end holds a lock on litebridge's own
    /// table `table` (its name without the `litebridge_` prefix), or returns
    /// `None` at once when another session holds it. The lock is a table
    /// lock (`SHARE UPDATE EXCLUSIVE`, which conflicts with itself, not with
    /// reads and writes of the rows) taken in a transaction on a connection
    /// of litebridge's own role: the clients' role has no rights on the
    /// table, so it cannot take the lock and starve the work (an advisory
    /// lock's number could be taken by anyone). The connection is closed
    /// afterwards, even when `work` is dropped half way, so the lock never
    /// stays behind in the pool.
    pub(crate) async fn exclusively<T>(
        &self,
        table: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>> {
        let deadline = Instant::now() + self.inner.config.connect_timeout;
        // Never released: dropped, the lease closes the connection, which
        // ends the transaction and its lock.
        let conn = self
            .connection(Who::Own, None, deadline, self.inner.config.connect_timeout)
            .await?;
        let sql = format!(
            "BEGIN; LOCK TABLE {}.litebridge_{table} IN SHARE UPDATE EXCLUSIVE MODE NOWAIT",
            self.own_schema()
        );
        match tokio::time::timeout_at(deadline, conn.batch_execute(&sql)).await {
            Err(_) => Err(Error::Unavailable {
                what: "the PostgreSQL server",
                reason: "no answer to a lock request".into(),
            }),
            Ok(Err(e)) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(None),
            Ok(Err(e)) => Err(from_pg(&e, Duration::ZERO)),
            Ok(Ok(())) => {
                let out = work.await;
                drop(conn);
                Ok(Some(out))
            }
        }
    }

    /// Deletes the idempotency records older than [`KEEP`](crate::idempotency::KEEP).
    ///
    /// # Errors
    /// The delete failed.
    pub(crate) async fn forget_claims(&self) -> Result<crate::idempotency::Forgot> {
        use crate::idempotency::{FORGET_BATCH, FORGET_BYTES, FORGET_STEPS, Forgot, KEEP};
        // The server's clock, which stamped the records; bounded
        // statements (records, and bytes of their results: a record keeps
        // the rows its write returned, review 207), the next round taking
        // the rest. `octet_length` reads a result's size, not the result.
        let keep = i64::try_from(KEEP.as_micros()).unwrap_or(i64::MAX);
        let old =
            "created_at < (pg_catalog.date_part('epoch', pg_catalog.now()) * 1000000)::int8 - ?1";
        let sql = format!(
            "DELETE FROM {s}.litebridge_claims WHERE key IN (
                 SELECT key FROM (
                     SELECT key, own, pg_catalog.sum(own) OVER (
                         ORDER BY created_at, key ROWS UNBOUNDED PRECEDING) AS upto
                     FROM (
                         SELECT key, created_at, pg_catalog.octet_length(result)::int8 AS own
                           FROM {s}.litebridge_claims WHERE {old}
                          ORDER BY created_at, key LIMIT {FORGET_BATCH}) AS oldest) AS sized
                  WHERE upto - own < ?2)",
            s = self.own_schema()
        );
        let left = format!(
            "SELECT EXISTS (SELECT 1 FROM {s}.litebridge_claims WHERE {old})",
            s = self.own_schema()
        );
        let mut round = Forgot {
            deleted: 0,
            more: false,
        };
        for _ in 0..FORGET_STEPS {
            let params = vec![Value::Integer(keep), Value::Integer(FORGET_BYTES)];
            round.deleted += self
                .own_execute(&sql, Params::Positional(params))
                .await?
                .changes;
            let rows = self
                .own_query(&left, Params::Positional(vec![Value::Integer(keep)]))
                .await?;
            round.more = rows.rows.first().and_then(|r| r.first()) == Some(&Value::Integer(1));
            if !round.more {
                break;
            }
        }
        Ok(round)
    }

    /// A handle that does not keep it open.
    pub(crate) fn downgrade(&self) -> WeakPgDatabase {
        WeakPgDatabase(Arc::downgrade(&self.inner))
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    /// Runs a read-only statement and returns its rows.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for a statement that writes; [`Error::Postgres`]
    /// from the server; [`Error::Timeout`]; [`Error::TooLarge`] past
    /// [`PgConfig::max_result_bytes`]; [`Error::Unavailable`] when the
    /// server cannot be reached.
    pub async fn query_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: QueryOptions,
    ) -> Result<Rows> {
        let started = Instant::now();
        let r = match Prepared::read(sql, params.into()) {
            Ok(p) => self.read(Who::Client, p, options).await,
            Err(e) => Err(e),
        };
        self.counted(false, started, r)
    }

    /// A read of the stores (litebridge's own tables).
    pub(crate) async fn own_query(&self, sql: &str, params: Params) -> Result<Rows> {
        let p = Prepared::own(sql, params)?;
        self.read(Who::Own, p, QueryOptions::default()).await
    }

    /// A read of the keys or the quota totals, on their own connection.
    pub(crate) async fn keys_query(&self, sql: &str, params: Params) -> Result<Rows> {
        let p = Prepared::own(sql, params)?;
        self.read(Who::Keys, p, QueryOptions::default()).await
    }

    /// A write of the stores.
    pub(crate) async fn own_execute(&self, sql: &str, params: Params) -> Result<ExecResult> {
        let p = Prepared::own(sql, params)?;
        let d = self
            .write_one(Who::Own, p, WriteOptions::default(), Shape::Each)
            .await?;
        Ok(d.result)
    }

    /// A write of the stores that returns rows (an upsert with `RETURNING`).
    pub(crate) async fn own_write_rows(&self, sql: &str, params: Params) -> Result<Rows> {
        let p = Prepared::own(sql, params)?;
        let d = self
            .write_one(Who::Own, p, WriteOptions::default(), Shape::Each)
            .await?;
        Ok(d.result.returning.map(|r| *r).unwrap_or_default())
    }

    /// Writes of the stores in one transaction.
    pub(crate) async fn own_batch(
        &self,
        statements: Vec<(String, Params)>,
    ) -> Result<Vec<ExecResult>> {
        let prepared = statements
            .into_iter()
            .map(|(sql, p)| Prepared::own(&sql, p))
            .collect::<Result<Vec<_>>>()?;
        let done = self
            .write(Who::Own, prepared, WriteOptions::default(), Shape::Each)
            .await?;
        Ok(done.into_iter().map(|d| d.result).collect())
    }

    /// Whether it still hands out connections (not closed).
    pub(crate) fn is_open(&self) -> bool {
        !self.inner.client.is_closed()
    }

    /// The schema of litebridge's own tables.
    pub(crate) fn own_schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// The channel of the cache's notifications between front ends, which
    /// the clients' role cannot name (`claims::channel`); it moves with the
    /// idempotency secret (`listen.rs`).
    pub(crate) fn cache_channel(&self) -> String {
        crate::sync::read(&self.inner.claims_secret).channel.clone()
    }

    /// Times the functions of `claims` and the idempotency secret were made
    /// again after a failover lost them, one install at a time.
    pub fn reinstalls(&self) -> u64 {
        self.inner.reinstalls.load(Ordering::Relaxed)
    }

    /// The answer to a write whose claim found this front end's
    /// idempotency secret (fingerprinted `used`) not the database's, or a
    /// function of `claims` missing (`missing`): the database's secret is
    /// read for the next writes, and the functions and the secret made again
    /// when a failover lost them ([`PgDatabase::reinstall`]). This write
    /// wrote nothing.
    async fn other_secret(&self, used: &[u8], missing: bool) -> Error {
        let now = match self.reinstall(Some(used), missing).await {
            Ok(()) => "it holds the database's now".to_owned(),
            Err(e) => format!("reading the database's failed too: {e}"),
        };
        Error::Unavailable {
            what: "the idempotency record",
            reason: format!(
                "this front end's idempotency secret was not the database's (a failover lost \
                 the one it read at its start, or litebridge's functions); nothing was \
                 written, retry ({now})"
            ),
        }
    }

    /// Takes the database's idempotency secret, whose text the cache's
    /// listener read as `stored` (`None`: there is none), if it is not the
    /// one this front end holds, making it again if it is gone
    /// ([`PgDatabase::reinstall`]). A front end that makes no keyed write
    /// would otherwise never notice, and would notify and listen on the
    /// cache's old channel (`listen.rs`).
    pub(crate) async fn follow_secret(&self, stored: Option<String>) -> Result<()> {
        if self.holds_secret(stored.as_deref()) {
            return Ok(());
        }
        let held = crate::sync::read(&self.inner.claims_secret)
            .fingerprint
            .clone();
        self.reinstall(Some(&held), false).await
    }

    /// Whether `stored` (the secret's text, as read; `None`: there is none)
    /// is the idempotency secret this front end holds.
    pub(crate) fn holds_secret(&self, stored: Option<&str>) -> bool {
        let held = crate::sync::read(&self.inner.claims_secret);
        stored.is_some_and(|s| claims::is(s, &held.fingerprint))
    }

    /// Reads the database's idempotency secret again, and with `missing`
    /// (a function of `claims` not found: a failover lost the install of
    /// this version's start) installs the functions and the secret again,
    /// as at start: one at a time, and not at all when another did since
    /// the secret fingerprinted `used` was read (review 228: each write in
    /// flight ran the whole install, one after the other under its lock).
    async fn reinstall(&self, used: Option<&[u8]>, missing: bool) -> Result<()> {
        let _one = self.inner.reinstalling.lock().await;
        if used.is_some_and(|used| crate::sync::read(&self.inner.claims_secret).fingerprint != used)
        {
            return Ok(());
        }
        let schema = self.own_schema();
        let mut owner = self.inner.own.get().await.map_err(|e| Error::Unavailable {
            what: "the PostgreSQL schema",
            reason: e.to_string(),
        })?;
        // A secret that cannot be read (not 64 hex digits) is not made
        // again: the install would keep it (review 229: the cache's
        // listener ran the whole install every second).
        let secret = match (claims::read(&owner, schema).await, missing) {
            (Ok(Some(secret)), false) => secret,
            (Err(e), false) => return Err(e),
            _ => {
                let client_user = self.inner.config.client_user.clone().unwrap_or_default();
                schema::refuse_newer(&owner, schema).await?;
                let made = claims::install(&mut owner, schema, &client_user).await?;
                self.inner.reinstalls.fetch_add(1, Ordering::Relaxed);
                made
            }
        };
        let changed = {
            let mut held = crate::sync::write(&self.inner.claims_secret);
            let changed = held.fingerprint != secret.fingerprint;
            *held = secret;
            changed
        };
        if changed {
            tracing::error!(
                "the idempotency secret in {schema}.litebridge_meta is not the one this front \
                 end held (a failover lost that one, and a front end made another, or this \
                 one found it gone): records are keyed with the database's \
                 from now on, and the cache's notifications go on its channel"
            );
        } else if missing {
            tracing::error!(
                "litebridge's functions in {schema}_claims were missing (a failover lost their \
                 install): made again"
            );
        }
        Ok(())
    }

    /// Runs one statement read-only.
    async fn read(&self, who: Who, p: Prepared, options: QueryOptions) -> Result<Rows> {
        let timeout = options.timeout.unwrap_or(self.inner.config.default_timeout);
        let deadline = Instant::now() + timeout;
        let (rows, _) = self
            .read_on_primary(who, &p, options, deadline, timeout)
            .await?;
        Ok(rows)
    }

    /// [`PgDatabase::read_on`] the primary.
    async fn read_on_primary(
        &self,
        who: Who,
        p: &Prepared,
        options: QueryOptions,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Rows, Option<Token>)> {
        let begun = AtomicBool::new(false);
        self.read_on(
            Node::Primary,
            who,
            p,
            options,
            deadline,
            timeout,
            None,
            &begun,
        )
        .await
    }

    /// Runs a read-only statement where `consistency` allows (see the
    /// `token` module); returns its rows and, when replicas are configured,
    /// the position they reflect (for a strong read, the primary's after
    /// it), to pass on to the next read of the session.
    ///
    /// # Errors
    /// As [`PgDatabase::query_with`]. A replica that fails or lags is not an
    /// error: the read goes to the primary.
    pub async fn query_at(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: QueryOptions,
        consistency: Consistency,
    ) -> Result<(Rows, Option<Token>)> {
        let started = Instant::now();
        let r = self.read_at(sql, params.into(), options, consistency).await;
        self.counted(false, started, r)
    }

    async fn read_at(
        &self,
        sql: &str,
        params: Params,
        options: QueryOptions,
        consistency: Consistency,
    ) -> Result<(Rows, Option<Token>)> {
        let timeout = options.timeout.unwrap_or(self.inner.config.default_timeout);
        let deadline = Instant::now() + timeout;
        let p = Prepared::read(sql, params)?;
        let replicas = &self.inner.replicas;
        // What a replica must show: replayed this far, on this timeline
        // (position 0 on no timeline: any replica in recovery).
        let wanted = match consistency {
            Consistency::Strong => None,
            Consistency::Session(t) => {
                // A token naming no timeline (written before tokens had
                // one), or a timeline the primary has left behind (from
                // before a failover: a node still on it may hold writes the
                // cluster gave up), is served by the primary, which moves
                // the session onto its own timeline.
                let primary = self.inner.primary_timeline.load(Ordering::Relaxed);
                (t.timeline > 0 && t.timeline >= primary && self.inner.sees_timelines).then_some(t)
            }
            Consistency::Any => Some(Token::new(0, 0)),
        };
        let wants_replica = consistency != Consistency::Strong && !replicas.is_empty();
        // Why the read ends on the primary, when it asked for a replica.
        let mut why = Fallback::Token;
        if let Some(wanted) = wanted {
            why = Fallback::Resting;
            if let Some(i) = self.next_replica() {
                let begun = AtomicBool::new(false);
                // A replica failing costs at most half of what is left.
                let leg = deadline.saturating_duration_since(Instant::now()) / 2;
                let half = Instant::now() + leg;
                match self
                    .read_on(
                        Node::Replica(i),
                        Who::Client,
                        &p,
                        options,
                        half,
                        timeout,
                        Some(wanted),
                        &begun,
                    )
                    .await
                {
                    Ok((rows, at)) => {
                        self.inner.replica_reads.fetch_add(1, Ordering::Relaxed);
                        // The replica's position, past the token it passed; the
                        // token itself when the replica could not tell its
                        // timeline; none for an `any` read that got neither.
                        let answer = at.or(Some(wanted)).filter(|t| *t != Token::default());
                        return Ok((rows, answer));
                    }
                    Err(e) if is_behind(&e) => why = Fallback::Behind,
                    // A recovery conflict: the replica cancelled the read to
                    // replay what the primary did (a lock, a vacuum). The
                    // primary has no such conflict; the read ran read-only.
                    Err(e) if e.kind() == ErrorKind::Busy => {
                        tracing::debug!(replica = %self.inner.config.replicas[i], "a read on a replica conflicted with its recovery, reading from the primary: {e}");
                        why = Fallback::Conflict;
                    }
                    // The statement's own error: the primary would give it too.
                    Err(e) if !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) => {
                        return Err(e);
                    }
                    // Down, or refusing us, before the read began: left alone
                    // for a while. (Not for a failure of the read itself: a
                    // client can end its own session or run past the deadline,
                    // and would otherwise rest the replica for everyone. Nor
                    // for a deadline too short to reach the replica at all:
                    // found by review 122, `timeout_ms: 1` rested every replica.)
                    Err(e)
                        if (!begun.load(Ordering::Relaxed)
                            && (e.kind() != ErrorKind::Timeout || leg >= REPLICA_PATIENCE))
                            || is_refused(&e, NOT_A_REPLICA) =>
                    {
                        tracing::warn!(replica = %self.inner.config.replicas[i], "reading from a replica failed, reading from the primary: {e}");
                        *lock(&replicas[i].down_until) = Some(Instant::now() + REPLICA_REST);
                        why = if is_refused(&e, NOT_A_REPLICA) {
                            Fallback::NotAReplica
                        } else {
                            Fallback::Failed
                        };
                    }
                    Err(e) => {
                        tracing::debug!(replica = %self.inner.config.replicas[i], "a read on a replica failed, reading from the primary: {e}");
                        why = Fallback::Failed;
                    }
                }
            }
        }
        if wants_replica {
            self.inner.primary_fallbacks[why as usize].fetch_add(1, Ordering::Relaxed);
        }
        let (rows, at) = self
            .read_on_primary(Who::Client, &p, options, deadline, timeout)
            .await?;
        // The primary's position after the read: nothing the read saw is
        // past it, so a session that passes it on never goes back in time.
        // Not the token given, which can only be behind it (or made up: a
        // position or timeline the primary has not reached would keep the
        // session on the primary for good).
        Ok((rows, at))
    }

    /// The next replica in turn that is not resting after a failure.
    fn next_replica(&self) -> Option<usize> {
        let replicas = &self.inner.replicas;
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        (0..replicas.len())
            .map(|k| (turn + k) % replicas.len())
            .find(|i| {
                let mut down = lock(&replicas[*i].down_until);
                match *down {
                    Some(until) if Instant::now() < until => false,
                    Some(_) => {
                        *down = None;
                        true
                    }
                    None => true,
                }
            })
    }

    /// Reads served by replicas and reads that asked for a replica and went
    /// to the primary (for any [`Fallback`]), since connect.
    pub fn replica_counts(&self) -> (u64, u64) {
        (
            self.inner.replica_reads.load(Ordering::Relaxed),
            self.primary_fallbacks().iter().map(|(_, n)| n).sum(),
        )
    }

    /// The reads that asked for a replica and went to the primary since
    /// connect, by why, in [`Fallback::ALL`]'s order.
    pub fn primary_fallbacks(&self) -> [(Fallback, u64); Fallback::ALL.len()] {
        Fallback::ALL.map(|f| {
            (
                f,
                self.inner.primary_fallbacks[f as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// One read on `node`, in `BEGIN READ ONLY` ... `COMMIT`. On a replica,
    /// `guard` first: the transaction is aborted (an error [`is_behind`]
    /// tells) unless the replica has replayed that far, so a lagging replica
    /// does not run the query. With replicas configured, also the node's
    /// position read after the query: an upper bound of what the read saw.
    /// `begun` is set once `BEGIN` is answered: a failure from then on may be
    /// the statement's doing.
    ///
    /// The long way, `BEGIN` is awaited before anything else is sent. Sent
    /// ahead unanswered, a `BEGIN` that failed (a `statement_timeout` the
    /// caller set, a cancel from another session of the clients' role)
    /// would leave the statement to run read-write in a transaction of its
    /// own (litebridge sets no read-only session default: see the module's
    /// design note). A statement the connection prepared for one-message
    /// reads goes in one simple query instead, which PostgreSQL stops at
    /// its first error ([`PgDatabase::read_in_one`]).
    #[allow(clippy::too_many_arguments)]
    async fn read_on(
        &self,
        node: Node,
        who: Who,
        p: &Prepared,
        options: QueryOptions,
        deadline: Instant,
        timeout: Duration,
        guard: Option<Token>,
        begun: &AtomicBool,
    ) -> Result<(Rows, Option<Token>)> {
        let track = who == Who::Client && !self.inner.replicas.is_empty();
        let max_rows = options.max_rows.unwrap_or(usize::MAX);
        let max_bytes = self.inner.config.max_result_bytes;
        let fast =
            who == Who::Client && node == Node::Primary && self.inner.config.one_message_reads;
        // A named caller's read that waits for a connection may go in the
        // message of another read of its caller (`together`).
        let together = options
            .caller
            .filter(|_| fast && self.inner.config.reads_per_message > 1);
        let mut led = None;
        if let Some(caller) = together {
            let kind = (together::Kind::Read, max_rows);
            let turn = Box::pin(self.lease_or_join(p, kind, caller, (deadline, timeout)));
            match turn.await? {
                together::Turn::Lead(conn) => led = Some((caller, conn)),
                together::Turn::Answered(answer) => {
                    if let Some(r) = answer.read() {
                        return r;
                    }
                }
            }
        }
        let (leader, mut conn) = match led {
            Some((caller, conn)) => (Some(caller), conn),
            None => (
                None,
                self.lease(node, who, options.caller, deadline, timeout)
                    .await?,
            ),
        };
        // A statement this connection prepared for one-message reads, with
        // values that travel as literals: one round trip (`fast`).
        let mut one_message = if fast {
            self.one_message(&conn, p)
        } else {
            None
        };
        if let Some(caller) = leader
            && let Some(one) = one_message.take()
        {
            let together = self.read_together(
                conn,
                &p.sql,
                one,
                caller,
                track,
                max_rows,
                (deadline, timeout),
            );
            match Box::pin(together).await {
                Ok(Some(answered)) => return answered,
                Ok(None) => {
                    conn = self
                        .lease(node, who, options.caller, deadline, timeout)
                        .await?;
                    one_message = self.one_message(&conn, p);
                }
                Err((back, one)) => {
                    conn = back;
                    one_message = Some(one);
                }
            }
        }
        // BEGIN goes first, before the statement is parsed: parsing can run
        // the clients' code (a domain's CHECK on a literal), which must run
        // inside the read-only transaction; and so do tokio-postgres's own
        // type lookups, whose operators resolve through the clients'
        // `search_path`. Then, polled in order, the futures send Parse when
        // the statement is not cached yet, then the rest in one go.
        let run = async {
            if let Some(one) = &one_message {
                let read = Box::pin(self.read_in_one(
                    &conn,
                    &p.sql,
                    one,
                    track,
                    max_rows,
                    max_bytes,
                    (deadline, timeout),
                    begun,
                ))
                .await?;
                if let Some((rows, position, clean)) = read {
                    let at = self.inner.committed_at(position);
                    return Ok((Ok(rows), at, clean));
                }
            }
            conn.batch_execute("BEGIN READ ONLY")
                .await
                .map_err(|e| from_pg(&e, timeout))?;
            // From here on a failure may be the statement's doing.
            begun.store(true, Ordering::Relaxed);
            // The guard goes before Parse too: on a replica that is behind,
            // the statement may name what it has not replayed yet.
            let guarded = async {
                match (node, guard) {
                    (Node::Replica(_), Some(t)) => conn
                        .simple_query(&guard_sql(t, &self.inner.config.schema))
                        .await
                        .map(|_| ()),
                    _ => Ok(()),
                }
            };
            let rest = async {
                let (stmt, typed) = self
                    .prepare_within(
                        &conn,
                        who == Who::Client && node == Node::Primary,
                        p,
                        "BEGIN READ ONLY",
                        timeout,
                    )
                    .await?;
                readable_columns(&stmt)?;
                // A statement prepared from the server's own types, for a
                // named caller (a caller with no name has its session reset
                // at its next request), is noted for one-message reads.
                if who == Who::Client
                    && node == Node::Primary
                    && !typed
                    && options.caller.is_some()
                    && self.inner.config.one_message_reads
                {
                    self.remember(&conn, &p.sql, &stmt);
                }
                let rows = read_rows(&conn, &stmt, &p.values, max_rows, max_bytes);
                let position = async {
                    match node {
                        _ if !track => Ok(None),
                        Node::Primary => conn
                            .simple_query(WAL_INSERT_POSITION)
                            .await
                            .map(|m| primary_token(&m)),
                        Node::Replica(_) => conn
                            .simple_query(&replica_position(&self.inner.config.schema))
                            .await
                            .map(|m| replica_token(&m)),
                    }
                };
                // The clients' read ends in one message ([`END_READ`]): the
                // `COMMIT` and the tidy-up. A failure in it fails the read
                // (the connection is closed).
                let end_read = match who {
                    Who::Client => self.inner.end_read,
                    Who::Own | Who::Keys => "COMMIT",
                };
                let end = conn.simple_query(end_read);
                let (rows, position, ended) = tokio::join!(rows, position, end);
                let rows = rows?;
                // A replica's position it would not give (a function it
                // has not replayed yet) only costs the token. The primary's
                // must come: it fails on a standby reached as the primary.
                // A read cut at `max_rows` leaves its statement running on
                // the server (as SQLite's is not), and an error of the rows
                // it was not asked for aborts the transaction after the
                // rows kept came: the position query then finds it aborted,
                // and the primary's is asked again once the read has ended.
                let late = |e: &tokio_postgres::Error| {
                    rows.truncated && e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
                };
                let (position, again) = match position {
                    Ok(p) => (p, false),
                    Err(e) if node == Node::Primary && late(&e) => (None, true),
                    Err(e) if e.code().is_some() && node != Node::Primary => (None, false),
                    Err(e) => return Err(from_pg(&e, timeout)),
                };
                // A `COMMIT` of an aborted transaction rolls it back and
                // answers without an error: the tidy-up runs all the same.
                let ended = ended.map_err(|e| from_pg(&e, timeout))?;
                let clean = !found_prepared_in(&ended, statements_in(end_read));
                let position = if again {
                    conn.simple_query(WAL_INSERT_POSITION)
                        .await
                        .map(|m| primary_token(&m))
                        .map_err(|e| from_pg(&e, timeout))?
                } else {
                    position
                };
                Ok::<_, Error>((position, Ok(rows), clean))
            };
            let (guarded, rest) = tokio::join!(guarded, rest);
            if let Err(e) = guarded {
                if let Some(behind_it) = e.code().map(guard_refusal) {
                    // The transaction aborted before the statement was
                    // parsed, so none of the clients' code ran; rolled back,
                    // the connection is clean. The primary serves the read.
                    let clean = conn.batch_execute("ROLLBACK").await.is_ok();
                    let refusal = refused(if behind_it { BEHIND } else { NOT_A_REPLICA });
                    return Ok((Err(refusal), None, clean));
                }
                return Err(from_pg(&e, timeout));
            }
            let (position, rows, clean) = rest?;
            // The primary's is an insert position, a replica's a replay one.
            let at = match node {
                Node::Primary => self.inner.committed_at(position),
                Node::Replica(_) => position,
            };
            Ok::<_, Error>((rows, at, clean))
        };
        let run = async {
            match run.await {
                Ok((Err(refusal), _, clean)) => Err((refusal, clean)),
                Ok((Ok(rows), at, clean)) => Ok((rows, at, clean)),
                Err(e) => Err((e, false)),
            }
        };
        let started = Instant::now();
        let ran = tokio::time::timeout_at(deadline, run).await;
        // A read that answered, or ran to its deadline, tells how long its
        // statement takes; one that failed may not have run.
        if let Some(caller) = together
            && node == Node::Primary
            && matches!(ran, Ok(Ok(_)) | Err(_))
        {
            self.paced(caller, &p.sql, started.elapsed());
        }
        match ran {
            Ok(Ok((rows, at, clean))) => {
                if clean {
                    self.keep(node, who, conn, options.caller);
                } else {
                    self.prepared_with_sql(node, who, conn);
                }
                Ok((rows, at))
            }
            Ok(Err((e, true))) => {
                // A replica that refused the guard: kept, its session is clean.
                conn.release();
                Err(e)
            }
            Ok(Err((e, false))) => {
                self.after_error(node, who, conn).await;
                Err(e)
            }
            Err(_) => {
                self.stop(node, who, conn);
                Err(Error::Timeout {
                    after: timeout,
                    stage: TimeoutStage::Running,
                })
            }
        }
    }

    /// Runs one statement that writes, in a transaction of its own.
    ///
    /// # Errors
    /// As [`PgDatabase::query_with`]; [`Error::OutcomeUnknown`] when the
    /// connection failed after `COMMIT` was sent.
    pub async fn execute_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: WriteOptions,
    ) -> Result<ExecResult> {
        let (result, _) = self.execute_at(sql, params, options).await?;
        Ok(result)
    }

    /// As [`PgDatabase::execute_with`], also returning the write's position
    /// in the log when replicas are configured: pass it to
    /// [`PgDatabase::query_at`] as [`Consistency::Session`] to read the write
    /// back from a replica. A position that could not be read after the
    /// `COMMIT` is `0/0`, on no timeline: such a read goes to the primary.
    ///
    /// # Errors
    /// As [`PgDatabase::execute_with`].
    pub async fn execute_at(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: WriteOptions,
    ) -> Result<(ExecResult, Option<Token>)> {
        let started = Instant::now();
        let r = match Prepared::new(sql, params.into()) {
            Ok(p) => self.write_one(Who::Client, p, options, Shape::Each).await,
            Err(e) => Err(e),
        };
        self.counted(true, started, r).map(|d| (d.result, d.token))
    }

    /// Runs several statements as one transaction: all of them commit or none.
    ///
    /// # Errors
    /// The first failing statement's error, naming its index (nothing of the
    /// batch is committed).
    pub async fn batch(
        &self,
        statements: Vec<Statement>,
        options: WriteOptions,
    ) -> Result<Vec<ExecResult>> {
        Ok(self.batch_at(statements, options).await?.0)
    }

    /// As [`PgDatabase::batch`], also returning the transaction's position
    /// token (see [`PgDatabase::execute_at`]).
    ///
    /// # Errors
    /// As [`PgDatabase::batch`].
    pub async fn batch_at(
        &self,
        statements: Vec<Statement>,
        options: WriteOptions,
    ) -> Result<(Vec<ExecResult>, Option<Token>)> {
        if statements.is_empty() {
            return Ok((Vec::new(), None));
        }
        let prepared = statements
            .into_iter()
            .enumerate()
            .map(|(i, s)| Prepared::new(&s.sql, s.params).map_err(|e| e.at("statements", i)))
            .collect::<Result<Vec<_>>>();
        let done = self.client_write(prepared, options, Shape::Each).await?;
        let token = done.first().and_then(|d| d.token);
        Ok((done.into_iter().map(|d| d.result).collect(), token))
    }

    /// Runs one statement once per parameter set, in one transaction.
    ///
    /// # Errors
    /// The first failing row's error, naming its index (nothing is committed).
    pub async fn execute_many(
        &self,
        sql: &str,
        rows: Vec<Params>,
        options: WriteOptions,
    ) -> Result<ExecResult> {
        Ok(self.execute_many_at(sql, rows, options).await?.0)
    }

    /// As [`PgDatabase::execute_many`], also returning the transaction's
    /// position token (see [`PgDatabase::execute_at`]).
    ///
    /// # Errors
    /// As [`PgDatabase::execute_many`].
    pub async fn execute_many_at(
        &self,
        sql: &str,
        rows: Vec<Params>,
        options: WriteOptions,
    ) -> Result<(ExecResult, Option<Token>)> {
        if rows.is_empty() {
            Prepared::new(sql, Params::None)?;
            return Ok((ExecResult::default(), None));
        }
        let prepared = rows
            .into_iter()
            .enumerate()
            .map(|(i, p)| Prepared::new(sql, p).map_err(|e| e.at("rows", i)))
            .collect::<Result<Vec<_>>>();
        let done = self.client_write(prepared, options, Shape::Rows).await?;
        let result = ExecResult {
            changes: done.iter().map(|d| d.result.changes).sum(),
            last_insert_rowid: 0,
            returning: None,
        };
        Ok((result, done.first().and_then(|d| d.token)))
    }

    /// A write of the clients', counted in the statistics.
    async fn client_write(
        &self,
        prepared: Result<Vec<Prepared>>,
        options: WriteOptions,
        shape: Shape,
    ) -> Result<Vec<Done>> {
        let started = Instant::now();
        let r = match prepared {
            Ok(p) => self.write(Who::Client, p, options, shape).await,
            Err(e) => Err(e),
        };
        self.counted(true, started, r)
    }

    /// Fault injection for tests.
    #[doc(hidden)]
    pub fn faults(&self) -> &crate::fault::Faults {
        &self.inner.faults
    }

    /// Closes it ([`PgDatabase::close`]) once the statements litebridge
    /// gave up on that went on were ended on their servers (at once, not
    /// after the backstop's grace), waiting up to four seconds for that:
    /// a process that ends right after would otherwise leave them running.
    pub async fn shutdown(&self) {
        self.inner.backstops.finish(2 * STOP_GRACE).await;
        self.close();
    }

    /// Stops handing out connections and closes the idle ones.
    pub fn close(&self) {
        self.inner.client.close();
        self.inner.own.close();
        self.inner.keys.close();
        for r in &self.inner.replicas {
            r.pool.close();
            r.backends.close();
        }
        let probes = &self.inner.probes;
        for p in std::iter::once(&probes.own)
            .chain([&probes.client])
            .chain(&probes.replicas)
        {
            p.close();
        }
    }

    /// [`PgDatabase::write`] of one statement: its outcome.
    async fn write_one(
        &self,
        who: Who,
        p: Prepared,
        options: WriteOptions,
        shape: Shape,
    ) -> Result<Done> {
        let done = self.write(who, vec![p], options, shape).await?;
        Ok(done.into_iter().next().unwrap_or_default())
    }

    /// Runs `statements` in one transaction ([`PgDatabase::committed`]),
    /// answered once [`PgConfig::replicated_to`] standbys flushed it
    /// ([`PgDatabase::replicated_on`], on the session that committed it).
    async fn write(
        &self,
        who: Who,
        statements: Vec<Prepared>,
        options: WriteOptions,
        shape: Shape,
    ) -> Result<Vec<Done>> {
        let timeout = options.timeout.unwrap_or(self.inner.config.default_timeout);
        let deadline = Instant::now() + timeout;
        let mut done = self
            .committed(who, statements, options, shape, (deadline, timeout))
            .await?;
        if who != Who::Client || self.inner.replicas.is_empty() {
            // Read for the standbys' count alone (`replicated`): no
            // replica to read it back from.
            for d in &mut done {
                d.token = None;
            }
        }
        Ok(done)
    }

    /// Runs `statements` in one transaction: `BEGIN` and the statements sent
    /// together, then `COMMIT`.
    async fn committed(
        &self,
        who: Who,
        statements: Vec<Prepared>,
        options: WriteOptions,
        shape: Shape,
        (deadline, timeout): (Instant, Duration),
    ) -> Result<Vec<Done>> {
        // A named caller's single-statement write with no idempotency key
        // may go in a message with its caller's other writes that wait for
        // a connection (`writes_together`).
        let config = &self.inner.config;
        let together = options.caller.filter(|_| {
            who == Who::Client
                && shape == Shape::Each
                && statements.len() == 1
                && options.idempotency_key.is_none()
                && config.one_message_writes
                && config.writes_per_message > 1
                // Each write waits for the standbys on its own session.
                && config.replicated_to == 0
        });
        let Some(caller) = together else {
            let conn = self
                .lease(Node::Primary, who, options.caller, deadline, timeout)
                .await?;
            return self
                .write_on(
                    (conn, None),
                    who,
                    statements,
                    options,
                    shape,
                    (deadline, timeout),
                )
                .await;
        };
        // The connection, and its message for this write when it was
        // made already.
        let mut conn = None;
        if self.may_write_together(deadline) {
            let p = &statements[0];
            let kind = (together::Kind::Write, 0);
            let turn = Box::pin(self.lease_or_join(p, kind, caller, (deadline, timeout)));
            match turn.await? {
                together::Turn::Lead(leased) => match self.write_message(&leased, &statements) {
                    None => conn = Some((leased, None)),
                    Some(one) => {
                        let led = self.write_together(leased, p, one, caller, (deadline, timeout));
                        match Box::pin(led).await {
                            Ok(Some(done)) => return done.map(|d| vec![d]),
                            Ok(None) => {}
                            Err((back, one)) => conn = Some((back, Some(one))),
                        }
                    }
                },
                together::Turn::Answered(answer) => {
                    if let Some(done) = answer.wrote() {
                        return done.map(|d| vec![d]);
                    }
                }
            }
        }
        self.write_timed(
            conn,
            caller,
            statements,
            options,
            shape,
            (deadline, timeout),
        )
        .await
    }

    /// [`PgDatabase::write`] alone of a write that may go with others: on
    /// `conn`, or a connection leased for it, its pace noted when it
    /// succeeds (`together`).
    async fn write_timed(
        &self,
        conn: Option<(Lease, Option<fast::WriteInOne>)>,
        caller: u64,
        statements: Vec<Prepared>,
        options: WriteOptions,
        shape: Shape,
        (deadline, timeout): (Instant, Duration),
    ) -> Result<Vec<Done>> {
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let leased =
                    self.lease(Node::Primary, Who::Client, Some(caller), deadline, timeout);
                (leased.await?, None)
            }
        };
        let sql = statements[0].sql.clone();
        let started = Instant::now();
        let done = self
            .write_on(
                conn,
                Who::Client,
                statements,
                options,
                shape,
                (deadline, timeout),
            )
            .await;
        if done.is_ok() {
            self.paced(caller, &sql, started.elapsed());
        }
        done
    }

    /// [`PgDatabase::write`] on `conn`, with the one-message write made
    /// for it already, if any.
    async fn write_on(
        &self,
        (conn, made): (Lease, Option<fast::WriteInOne>),
        who: Who,
        statements: Vec<Prepared>,
        options: WriteOptions,
        shape: Shape,
        (deadline, timeout): (Instant, Duration),
    ) -> Result<Vec<Done>> {
        let max_bytes = self.inner.config.max_result_bytes;
        let what = shape.what();
        let many = statements.len() > 1;
        // With an idempotency key, the record's key (see `claims`).
        let claim = match (who, options.idempotency_key) {
            (Who::Client, Some(k)) => {
                let secret = crate::sync::read(&self.inner.claims_secret).clone();
                Some((claims::row_key(&secret.key, k), secret.fingerprint))
            }
            _ => None,
        };
        let schema = self.own_schema();
        // What the key's record must have been made by (see `claims`).
        let fingerprint = claim.as_ref().map(|_| {
            crate::idempotency::fingerprint(
                &format!("{shape:?}"),
                statements
                    .iter()
                    .map(|p| (p.sql.as_str(), crate::idempotency::values_text(&p.values))),
            )
        });
        // Prepared with the claim, so that the result is recorded in the
        // same pipeline as (and before) the COMMIT.
        let mut settle: Option<PgStatement> = None;
        // BEGIN first, then the statements parsed (inside the transaction:
        // parsing can run the clients' code), then the claim, then the
        // statements run together. Nothing runs before BEGIN is answered:
        // a BEGIN that failed (a cancel from any other session of the
        // clients' role, a `read` key's among them) left what was sent
        // behind it to run and commit one statement at a time, breaking a
        // batch's atomicity and committing an idempotency key's claim with
        // no result. That costs a round trip when every statement is
        // prepared already; a Parse sent behind BEGIN is answered after it.
        //
        // With `one_message_writes`, a write whose statements this
        // connection prepared already, with values that travel as literals,
        // sends its BEGIN and statements in one message instead (`fast`):
        // behind a BEGIN that failed, the server skips the rest of it. A
        // write with an idempotency key goes the long way: its claim must
        // be read before its statements run.
        let one_message = match (who, &claim, shape) {
            (Who::Client, None, Shape::Each | Shape::Rows)
                if self.inner.config.one_message_writes =>
            {
                made.or_else(|| self.write_message(&conn, &statements))
            }
            _ => None,
        };
        // A statement prepared from the server's own types, for a named
        // caller (a caller with no name has its session reset at its next
        // request), is noted for one-message writes.
        let note =
            who == Who::Client && options.caller.is_some() && self.inner.config.one_message_writes;
        let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<bool>();
        let run = async {
            if let Some(one) = &one_message {
                return Box::pin(self.write_in_one(&conn, one, shape, timeout))
                    .await
                    .map(Ok);
            }
            let begin = async {
                let r = if self.inner.faults.take_fail_begin() {
                    // Fails as the server does a cancelled BEGIN.
                    conn.batch_execute("SELECT 1/0").await
                } else {
                    conn.batch_execute("BEGIN").await
                };
                let _ = begun_tx.send(r.is_ok());
                r
            };
            let rest = async {
                let mut prepared = Vec::with_capacity(statements.len());
                let mut failed = None;
                for (i, p) in statements.iter().enumerate() {
                    // One preparation for `execute_many`'s rows, which share their SQL.
                    if shape == Shape::Rows && i > 0 {
                        break;
                    }
                    match self
                        .prepare_within(&conn, who == Who::Client, p, "BEGIN", timeout)
                        .await
                    {
                        Ok((stmt, typed)) => {
                            if note && !typed {
                                self.remember(&conn, &p.sql, &stmt);
                            }
                            prepared.push(stmt);
                        }
                        Err(e) => {
                            failed = Some(if many { e.at(what, i) } else { e });
                            break;
                        }
                    }
                }
                if !begun_rx.await.unwrap_or(false) {
                    // BEGIN's own error is the answer (below).
                    return Ok(Ok(Vec::new()));
                }
                // A write sent again after it committed may no longer
                // prepare (it renamed its table): its record answers first.
                if failed.is_some() && claim.is_some() {
                    conn.batch_execute("ROLLBACK; BEGIN")
                        .await
                        .map_err(|e| from_pg(&e, timeout))?;
                }
                // After the preparations (one may begin the transaction
                // again), before anything runs: a record of the key means
                // the write ran and committed; its result is the answer.
                if let Some((k, secret)) = &claim {
                    let claim_sql = format!("SELECT {schema}_claims.claim($1, $2)");
                    let settle_sql = format!("SELECT {schema}_claims.settle($1, $2)");
                    let (stmt, settling) = tokio::join!(
                        conn.prepare_cached(&claim_sql),
                        conn.prepare_cached(&settle_sql)
                    );
                    // Another secret, or none, or a function that a failover
                    // lost with its version's install (found at Parse, on a
                    // new connection: review 228).
                    let lost = |e: &tokio_postgres::Error| {
                        e.code().and_then(|c| {
                            (c == &SqlState::UNDEFINED_FUNCTION)
                                .then_some(true)
                                .or((c.code() == claims::OTHER_SECRET).then_some(false))
                        })
                    };
                    let (stmt, settling) = match (stmt, settling) {
                        (Ok(stmt), Ok(settling)) => (stmt, settling),
                        (Err(e), _) | (_, Err(e)) => {
                            return Err(match lost(&e) {
                                Some(missing) => self.other_secret(secret, missing).await,
                                None => from_pg(&e, timeout),
                            });
                        }
                    };
                    settle = Some(settling);
                    let row = match conn.query_one(&stmt, &[k, secret]).await {
                        Ok(row) => row,
                        Err(e) => {
                            return Err(match lost(&e) {
                                Some(missing) => self.other_secret(secret, missing).await,
                                None => from_pg(&e, timeout),
                            });
                        }
                    };
                    if let Some(stored) = row.get::<_, Option<String>>(0) {
                        return Ok(Err(stored));
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                // The bytes of rows the statements returned, together within
                // `max_result_bytes`.
                let returned = &AtomicUsize::new(0);
                let each = statements.iter().enumerate().map(|(i, p)| {
                    let stmt = &prepared[if shape == Shape::Rows { 0 } else { i }];
                    let conn = &conn;
                    async move {
                        // Rows a statement returns (`RETURNING`) are kept,
                        // but not each row's of `execute_many`.
                        if shape == Shape::Each && !stmt.columns().is_empty() {
                            readable_columns(stmt)?;
                            let (rows, affected) = stream_rows(
                                conn,
                                stmt,
                                &p.values,
                                usize::MAX,
                                (max_bytes, returned),
                            )
                            .await
                            .map_err(returned_too_large)?;
                            return Ok(Done {
                                result: ExecResult {
                                    changes: affected.unwrap_or(rows.rows.len() as u64),
                                    last_insert_rowid: 0,
                                    returning: Some(Box::new(rows)),
                                },
                                token: None,
                            });
                        }
                        let changes = conn
                            .execute_raw(stmt, p.values.iter().map(Param))
                            .await
                            .map_err(|e| from_pg(&e, timeout))?;
                        Ok(Done {
                            result: ExecResult {
                                changes,
                                last_insert_rowid: 0,
                                returning: None,
                            },
                            token: None,
                        })
                    }
                });
                let results = futures_util::future::join_all(each).await;
                results
                    .into_iter()
                    .enumerate()
                    .map(|(i, r): (usize, Result<Done>)| {
                        r.map_err(|e| if many { e.at(what, i) } else { e })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Ok)
            };
            let (begun, rest) = tokio::join!(begin, rest);
            // The server refused BEGIN (a cancel, a `statement_timeout`):
            // none of the write ran. (What was sent behind it: the Parse of
            // statements not prepared yet, and tokio-postgres's lookups of
            // their types, which may resolve an operator through the
            // caller's `search_path`: a key's own code, run outside the
            // transaction, as it could run it in any write.)
            begun.map_err(|e| from_pg(&e, timeout))?;
            rest
        };
        let results = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(Ok(results))) => results,
            Ok(Ok(Err(stored))) => {
                // Sent before and committed: its first answer, again.
                let fp = fingerprint.as_deref().unwrap_or_default();
                return self
                    .replay(conn, who, options.caller, &stored, fp, (deadline, timeout))
                    .await;
            }
            Ok(Err(Error::ReadOnly { message })) => {
                // A write's transaction is read-write: a read-only server is
                // a standby, or a primary demoted by a failover. Nothing was
                // written; the next connection finds the primary again
                // through the URL's hosts.
                self.discard(Node::Primary, who, conn);
                return Err(not_the_primary(&message));
            }
            Ok(Err(e)) => {
                self.after_error(Node::Primary, who, conn).await;
                return Err(e);
            }
            Err(_) => {
                self.stop(Node::Primary, who, conn);
                return Err(Error::Timeout {
                    after: timeout,
                    stage: TimeoutStage::Running,
                });
            }
        };
        // Past its deadline already (the statements took it all), the write
        // is stopped before its COMMIT: nothing committed, and it says so.
        if Instant::now() >= deadline {
            self.stop(Node::Primary, who, conn);
            return Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Running,
            });
        }
        // With replicas, the write's position in the log, read after its
        // COMMIT (in the same message): the token of read-your-writes.
        let want_token = self.inner.tracks_writes(who);
        // COMMIT, the position, and the tidy-up in one message: an error
        // skips the rest of it, and the index of the statement it belongs
        // to tells whether the COMMIT went through.
        let tidy = if who == Who::Client && self.inner.faults.take_fail_tidy() {
            // Fails as the server would, after the COMMIT.
            "SELECT 1/0"
        } else {
            self.inner.tidy
        };
        // With `replicated_to`, the session that committed is read too.
        let position_sql = self.inner.position_sql();
        let end = match who {
            Who::Own | Who::Keys if want_token => format!("COMMIT; {position_sql}"),
            Who::Own | Who::Keys => "COMMIT".to_owned(),
            Who::Client if want_token => format!("COMMIT; {position_sql}; {tidy}"),
            Who::Client => format!("COMMIT; {tidy}"),
        };
        let statements = statements_in(&end);
        // What is known at the deadline: a COMMIT answered (not a
        // ROLLBACK, when the record was made) means the write committed.
        let committed = AtomicBool::new(false);
        let recorded = AtomicBool::new(claim.is_none());
        // A statement prepared with SQL found in the session by the tidy-up.
        let prepared = AtomicBool::new(false);
        if who == Who::Client && self.inner.faults.take_lose_before_commit() {
            self.lose(&conn).await;
        }
        let commit = async {
            // The record of an idempotency key, sent first (a failure aborts
            // the transaction, and the COMMIT answers ROLLBACK: nothing
            // committed, and the record's error is the answer).
            let settled = async {
                let r = match (&claim, &settle, &fingerprint) {
                    (Some((k, _)), Some(stmt), Some(fp)) => {
                        let record = if self.inner.faults.take_fail_settle() {
                            // A record too large, which the server refuses.
                            "r".repeat(1_000_001)
                        } else {
                            crate::idempotency::encode(fp, results.iter().map(|d| &d.result))
                        };
                        conn.execute(stmt, &[k, &record]).await.map(|_| ())
                    }
                    _ => Ok(()),
                };
                if r.is_ok() {
                    recorded.store(true, Ordering::Relaxed);
                }
                r
            };
            let mut position = Vec::new();
            let ended = fast::answer(&conn, &end, timeout, |i, m| {
                match (i, m) {
                    (0, M::CommandComplete(_)) => committed.store(true, Ordering::Relaxed),
                    (1, m @ M::Row(_)) if want_token => position.push(m),
                    (i, m) if found_prepared(i, statements, &m) => {
                        prepared.store(true, Ordering::Relaxed);
                    }
                    _ => {}
                }
                Ok(())
            });
            // In this order: the record goes out before the COMMIT.
            let (settled, ended) = tokio::join!(biased; settled, ended);
            (settled, ended, position)
        };
        let (settled, ended, position) = match tokio::time::timeout_at(deadline, commit).await {
            Ok(answered) => answered,
            Err(_) => {
                self.stop(Node::Primary, who, conn);
                let answered =
                    committed.load(Ordering::Relaxed) && recorded.load(Ordering::Relaxed);
                if answered && self.inner.config.replicated_to == 0 {
                    // The COMMIT was answered; what came after it was not.
                    let mut results = results;
                    for d in &mut results {
                        d.token = want_token.then(unknown_position);
                    }
                    return Ok(results);
                }
                let reason = if answered {
                    format!(
                        "it committed, but its standbys were not counted within the deadline \
                         of {} ms (postgres.replicated_to)",
                        timeout.as_millis()
                    )
                } else {
                    format!(
                        "no answer to COMMIT within the deadline of {} ms",
                        timeout.as_millis()
                    )
                };
                return Err(Error::OutcomeUnknown {
                    what: "the write".into(),
                    reason,
                });
            }
        };
        let unknown = |reason: String| Error::OutcomeUnknown {
            what: "the write".into(),
            reason: format!("the connection failed after COMMIT was sent: {reason}"),
        };
        // A message answered to its end with no error answered every
        // statement of it. `fast::answer` reports a session the server
        // ended (a FATAL error, as `exit_on_error` makes one of a failed
        // deferred constraint) as a lost connection: it may have ended
        // after the commit was made durable, so the outcome is unknown.
        match (settled, ended.failed) {
            (_, Some(failed)) if !failed.sent => {
                // The connection had closed before the COMMIT could be
                // sent: the server rolled the transaction back.
                self.discard(Node::Primary, who, conn);
                Err(Error::Unavailable {
                    what: "the PostgreSQL connection",
                    reason: format!(
                        "it closed before the write's COMMIT was sent, and nothing was \
                         written ({})",
                        failed.error
                    ),
                })
            }
            (Err(e), _) if e.as_db_error().is_some() && !connection_lost(&e) => {
                // The server refused the record: its transaction aborted,
                // and nothing committed.
                self.discard(Node::Primary, who, conn);
                Err(from_pg(&e, timeout))
            }
            (Err(e), _) => {
                self.discard(Node::Primary, who, conn);
                Err(unknown(error_chain(&e)))
            }
            (Ok(()), Some(failed)) if failed.at == 0 => {
                self.discard(Node::Primary, who, conn);
                if failed.lost {
                    Err(unknown(failed.error.to_string()))
                } else {
                    // The server answered: the COMMIT failed (a deferred
                    // constraint, a serialization failure) and nothing
                    // committed.
                    Err(failed.error)
                }
            }
            (Ok(()), None) if ended.done == 0 => {
                self.discard(Node::Primary, who, conn);
                Err(unknown("the COMMIT was not answered".into()))
            }
            (Ok(()), failed) => {
                // Committed. With `replicated_to`, answered once the
                // standbys flushed it, counted on this session (the server
                // that committed it).
                let at = self.inner.committed_at(primary_token(&position));
                // Its session not read for want of `this_session()`: a
                // failover lost the install of this version's start, and
                // every write would answer `outcome_unknown` until a
                // restart (review 228). Made again for the next writes.
                if self.inner.config.replicated_to > 0
                    && failed
                        .as_ref()
                        .is_some_and(|f| f.code == Some(SqlState::UNDEFINED_FUNCTION))
                {
                    let db = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = db.reinstall(None, true).await {
                            tracing::warn!("litebridge's functions could not be made again: {e}");
                        }
                    });
                }
                if self.inner.config.replicated_to > 0
                    && let Err(e) = self
                        .replicated_on(&conn, who, at, session_of(&position), deadline, timeout)
                        .await
                {
                    self.stop(Node::Primary, who, conn);
                    return Err(e);
                }
                // A tidy-up that failed (or did not answer) closes the
                // connection; a position that did not come is unknown.
                if prepared.load(Ordering::Relaxed) {
                    self.prepared_with_sql(Node::Primary, who, conn);
                } else if failed.is_none() && ended.done == statements {
                    self.keep(Node::Primary, who, conn, options.caller);
                } else {
                    self.discard(Node::Primary, who, conn);
                }
                let token = want_token.then(|| at.unwrap_or_else(unknown_position));
                let mut results = results;
                for d in &mut results {
                    d.token = token;
                }
                Ok(results)
            }
        }
    }

    /// The answer to a write whose idempotency key was recorded: its
    /// transaction (which ran nothing) rolled back, the first answer's
    /// results, and, with replicas, the primary's position now (past the
    /// first write's commit).
    #[allow(clippy::too_many_arguments)]
    async fn replay(
        &self,
        conn: Lease,
        who: Who,
        caller: Option<u64>,
        stored: &str,
        fingerprint: &str,
        (deadline, timeout): (Instant, Duration),
    ) -> Result<Vec<Done>> {
        let results = crate::idempotency::decode(stored, fingerprint);
        let want_token = self.inner.tracks_writes(who);
        // The statements parsed for it may have run the clients' code (a
        // domain's `CHECK` on a literal): the tidy-up and its check follow.
        let rollback = match who {
            Who::Client => format!("ROLLBACK; {}", self.inner.tidy),
            Who::Own | Who::Keys => "ROLLBACK".to_owned(),
        };
        let end = async {
            let (rolled, (position, session)) = tokio::join!(conn.simple_query(&rollback), async {
                if want_token {
                    // Past the first write's commit: as a commit's own
                    // position, at a page boundary when just past one.
                    let (at, session) = insert_position(&conn, self.inner.position_sql()).await;
                    let at = self.inner.committed_at(at);
                    (Some(at.unwrap_or_else(unknown_position)), session)
                } else {
                    (None, None)
                }
            });
            let rolled = rolled.map(|answer| !found_prepared_in(&answer, statements_in(&rollback)));
            (rolled, position, session)
        };
        // The write committed before, and its results were read: they are
        // the answer whatever becomes of this connection's empty
        // transaction. Answered `unavailable` or `timeout` ("nothing
        // committed"), a client would have sent it again without its key.
        let (clean, token, session) = match tokio::time::timeout_at(deadline, end).await {
            Ok((Ok(clean), token, session)) => (Some(clean), token, session),
            Ok((Err(_), _, _)) | Err(_) => (None, want_token.then(unknown_position), None),
        };
        // With `replicated_to`, answered once the standbys flushed the
        // position, on this session: the first write is before it.
        if self.inner.config.replicated_to > 0 {
            let counted = match clean {
                Some(_) => {
                    self.replicated_on(&conn, who, token, session, deadline, timeout)
                        .await
                }
                None => {
                    self.replicated_on(&conn, who, None, None, deadline, timeout)
                        .await
                }
            };
            if let Err(e) = counted {
                self.stop(Node::Primary, who, conn);
                return Err(e);
            }
        }
        match clean {
            Some(true) => self.keep(Node::Primary, who, conn, caller),
            Some(false) => self.prepared_with_sql(Node::Primary, who, conn),
            None => self.stop(Node::Primary, who, conn),
        }
        Ok(results?
            .into_iter()
            .map(|result| Done { result, token })
            .collect())
    }

    /// After a failed request: the clients' connections are dropped (what
    /// a failed statement left in the session is not looked into); one of
    /// litebridge's own is rolled back and kept, unless it is gone.
    async fn after_error(&self, node: Node, who: Who, conn: Lease) {
        if who == Who::Client || conn.batch_execute("ROLLBACK").await.is_err() {
            self.discard(node, who, conn);
        } else {
            conn.release();
        }
    }

    /// Drops a connection instead of returning it to the pool.
    fn discard(&self, node: Node, who: Who, conn: Lease) {
        // Each pool numbers its connections from 0: the maps hold the
        // clients' alone (the primary's, for `known`; each node has its
        // `backends`).
        if who == Who::Client {
            let id = Object::id(&conn);
            lock(&self.inner.callers).remove(&(node, id));
            if node == Node::Primary {
                lock(&self.inner.known).remove(&id);
            }
            self.inner.backends(node).take(id);
        }
        drop(Object::take(conn.detach()));
    }

    /// Stops what a connection runs past its deadline, off the caller's
    /// time: the lease's drop closes the connection and sends PostgreSQL's
    /// cancel request; a statement that goes on is ended by the server
    /// within a second, or by the backstop two to four seconds later
    /// (`backend`).
    fn stop(&self, node: Node, who: Who, conn: Lease) {
        if who == Who::Client {
            lock(&self.inner.callers).remove(&(node, Object::id(&conn)));
            if node == Node::Primary {
                lock(&self.inner.known).remove(&Object::id(&conn));
            }
        }
        drop(conn);
    }

    /// A connection of `node` for `who`, waited for until `deadline`. One of
    /// the clients' connections that last served another caller is reset
    /// first ([`RESET`]), and one that cannot be reset cleanly is closed
    /// and another taken: what a caller leaves in a session (settings,
    /// advisory locks, temporary tables, held cursors, prepared statements,
    /// `SET ROLE`) reaches no other caller. A caller's own requests share
    /// their sessions, as the requests of one client of PostgreSQL would.
    async fn lease(
        &self,
        node: Node,
        who: Who,
        caller: Option<u64>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Lease> {
        loop {
            let conn = match node {
                Node::Primary => self.connection(who, caller, deadline, timeout).await?,
                Node::Replica(i) => Lease::watched(
                    replica_connection(&self.inner.replicas[i].pool, deadline, timeout).await?,
                    Arc::downgrade(&self.inner),
                    node,
                ),
            };
            if let Some(conn) = self
                .settle(node, who, caller, conn, deadline, timeout)
                .await?
            {
                return Ok(conn);
            }
        }
    }

    /// `conn`, ready for `caller` ([`PgDatabase::lease`]): as it is when
    /// it last served `caller` (or none), reset otherwise; `None` when it
    /// could not be reset cleanly (it was closed: take another). A clients'
    /// connection has its server process named then, the first time
    /// (`backend`).
    async fn settle(
        &self,
        node: Node,
        who: Who,
        caller: Option<u64>,
        conn: Lease,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Option<Lease>> {
        let ready = self
            .settle_session(node, who, caller, conn, deadline, timeout)
            .await?;
        if let Some(conn) = &ready
            && who == Who::Client
        {
            self.name_process(node, conn, deadline, timeout).await?;
        }
        Ok(ready)
    }

    /// Notes the server process of a clients' connection to `node`,
    /// leased, the first time, when litebridge's own role may end it
    /// ([`backend`]).
    async fn name_process(
        &self,
        node: Node,
        conn: &Lease,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let id = Object::id(conn);
        let backends = self.inner.backends(node);
        if !self.inner.ends_runaways || backends.lease(id) {
            return Ok(());
        }
        // Not named (litebridge's role may not see when it started): no
        // backstop for it, and no lookup again.
        let backend = backends
            .name(conn, (deadline, timeout), &self.inner.faults)
            .await?;
        let most = 4 * self.inner.config.connections;
        backends.insert(id, backend, most);
        Ok(())
    }

    /// [`PgDatabase::settle`]'s session: as it is, or reset.
    async fn settle_session(
        &self,
        node: Node,
        who: Who,
        caller: Option<u64>,
        conn: Lease,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Option<Lease>> {
        if who != Who::Client {
            return Ok(Some(conn));
        }
        // A connection never handed out before needs no reset; one that
        // was needs its last caller to be this one, named (an unknown
        // last caller, or one that gave no name, counts as another).
        let fresh = Object::metrics(&conn).recycle_count == 0;
        let last = lock(&self.inner.callers)
            .get(&(node, Object::id(&conn)))
            .and_then(|(last, _)| *last);
        if fresh || (caller.is_some() && last == caller) {
            return Ok(Some(conn));
        }
        // The reset deallocates the statements of one-message requests.
        if node == Node::Primary {
            lock(&self.inner.known).remove(&Object::id(&conn));
        }
        self.inner.session_resets.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout_at(deadline, reset_session(&conn)).await {
            Ok(true) => {
                lock(&self.inner.callers).remove(&(node, Object::id(&conn)));
                Ok(Some(conn))
            }
            Ok(false) => {
                self.discard(node, who, conn);
                Ok(None)
            }
            Err(_) => {
                self.stop(node, who, conn);
                Err(Error::Timeout {
                    after: timeout,
                    stage: TimeoutStage::Queued,
                })
            }
        }
    }

    /// Back to the pool after a clean request of `caller`.
    fn keep(&self, node: Node, who: Who, conn: Lease, caller: Option<u64>) {
        if who != Who::Client {
            // litebridge's own pool numbers its connections apart.
            conn.release();
            return;
        }
        let mut callers = lock(&self.inner.callers);
        // Entries of connections the pool dropped on its own: past four per
        // connection, start over (a missing entry costs a reset, no more).
        let most = 4 * (self.inner.config.connections * (1 + self.inner.replicas.len()));
        if callers.len() > most {
            callers.clear();
        }
        callers.insert((node, Object::id(&conn)), (caller, 0));
        drop(callers);
        conn.release();
    }

    /// Closes a clients' connection in whose session `prepared_with_sql!`
    /// found a statement prepared with SQL, instead of keeping it.
    /// Logged the 1st, 2nd, 4th, 8th... time: a `write` key's function
    /// every reader of a view runs would otherwise fill the log.
    fn prepared_with_sql(&self, node: Node, who: Who, conn: Lease) {
        let times = self.inner.prepared_with_sql.fetch_add(1, Ordering::Relaxed) + 1;
        if times.is_power_of_two() {
            tracing::warn!(
                times,
                "a statement was prepared with SQL in a session of the clients' role (by a \
                 function their SQL ran: the filter refuses PREPARE itself); its connection is \
                 closed (logged at 1, 2, 4, 8... times)"
            );
        }
        self.discard(node, who, conn);
    }

    /// Ends `conn`'s server process (the session ends itself, after
    /// rolling back what it was doing) and waits (a grace at most) until
    /// the connection has seen it: [`Faults::lose_before_commits`].
    ///
    /// [`Faults::lose_before_commits`]: crate::fault::Faults::lose_before_commits
    async fn lose(&self, conn: &Object) {
        let end = "ROLLBACK; SELECT pg_catalog.pg_terminate_backend(pg_catalog.pg_backend_pid())";
        let _ = tokio::time::timeout(STOP_GRACE, conn.batch_execute(end)).await;
        let grace = Instant::now() + STOP_GRACE;
        while !conn.is_closed() && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A connection of `who`'s pool, waited for until `deadline` (of a
    /// request of `timeout`, which a timeout names).
    async fn connection(
        &self,
        who: Who,
        caller: Option<u64>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Lease> {
        let pool = match who {
            Who::Client => &self.inner.client,
            Who::Own => &self.inner.own,
            Who::Keys => &self.inner.keys,
        };
        match tokio::time::timeout_at(deadline, pool.get()).await {
            Ok(Ok(c)) if who != Who::Client => Ok(Lease::new(c)),
            Ok(Ok(c)) => {
                let c = self.for_caller(c, caller).await;
                let c = Lease::watched(c, Arc::downgrade(&self.inner), Node::Primary);
                Ok(c)
            }
            Ok(Err(deadpool_postgres::PoolError::Backend(e))) => Err(Error::Unavailable {
                what: "the PostgreSQL server",
                reason: error_chain(&e),
            }),
            Ok(Err(e)) => Err(Error::Unavailable {
                what: "the PostgreSQL pool",
                reason: e.to_string(),
            }),
            Err(_) => Err(Error::Timeout {
                after: timeout,
                stage: TimeoutStage::Queued,
            }),
        }
    }

    /// One of the clients' connections to the primary for `caller`:
    /// `first`, the pool's next, unless it last served another caller and
    /// a connection waiting idle last served this one (it then needs no
    /// reset, and keeps the statements the caller prepared). Only idle
    /// connections are looked at, none waited for (the zero `create`
    /// timeout fails at once: the pool has no runtime for timeouts, so
    /// none is made either); those passed over go back to the pool
    /// untouched (deadpool's `Fast` recycling sends nothing), behind the
    /// others. A connection other callers passed over more times than the
    /// pool has connections goes to whoever asks, and is reset for it:
    /// what a caller that went quiet left in its session (a session-level
    /// advisory lock) lasts about as long as it did when the pool handed
    /// its connections out in turn. `lease` decides the reset, whichever
    /// connection this gives.
    async fn for_caller(&self, first: Object, caller: Option<u64>) -> Object {
        let Some(caller) = caller else { return first };
        let most = self.inner.config.connections;
        // Whether `c` is this caller's, or anybody's by now; if not, it
        // is counted as passed over.
        let take = |c: &Object| {
            Object::metrics(c).recycle_count == 0
                || match lock(&self.inner.callers).get_mut(&(Node::Primary, Object::id(c))) {
                    Some((last, _)) if *last == Some(caller) => true,
                    Some((_, passed)) => {
                        *passed += 1;
                        *passed > most
                    }
                    None => true,
                }
        };
        if take(&first) {
            return first;
        }
        let pool = &self.inner.client;
        let now = deadpool_postgres::Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(Duration::ZERO),
            // None: a recycle cut short would drop the connection (and the
            // pool's `Fast` recycling runs no query).
            recycle: None,
        };
        let mut passed = Vec::new();
        let mut found = None;
        while pool.status().available > 0 && passed.len() < most {
            let Ok(c) = pool.timeout_get(&now).await else {
                break;
            };
            if take(&c) {
                found = Some(c);
                break;
            }
            passed.push(c);
        }
        match found {
            Some(c) => {
                passed.push(first);
                c
            }
            None => first,
        }
    }

    /// The statement prepared on `conn` (cached) inside the transaction
    /// `begin` opened, with types from the values when the server cannot
    /// infer them (the failed Parse aborted the transaction: it is begun
    /// again).
    async fn prepare_within(
        &self,
        conn: &Object,
        noted: bool,
        p: &Prepared,
        begin: &str,
        timeout: Duration,
    ) -> Result<(PgStatement, bool)> {
        if conn.statement_cache.size() >= self.inner.config.statement_cache {
            conn.statement_cache.clear();
            // And the notes of one-message requests, whose statements are
            // closed with the cache's.
            if noted {
                lock(&self.inner.known).remove(&Object::id(conn));
            }
        }
        let mut typed = false;
        let stmt = match conn.prepare_cached(&p.sql).await {
            // The server could not type a parameter (42P18), or typed one
            // two ways (42P08, e.g. `?3 IS NULL OR key < ?3`).
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::INDETERMINATE_DATATYPE | &SqlState::AMBIGUOUS_PARAMETER)
                ) =>
            {
                typed = true;
                let types: Vec<Type> = p.values.iter().map(type_hint).collect();
                conn.batch_execute(&format!("ROLLBACK; {begin}"))
                    .await
                    .map_err(|e| from_pg(&e, timeout))?;
                conn.prepare_typed_cached(&p.sql, &types).await
            }
            other => other,
        }
        .map_err(|e| from_pg(&e, timeout))?;
        if stmt.params().len() != p.values.len() {
            return Err(Error::wrong_parameter_count(
                stmt.params().len(),
                p.values.len(),
            ));
        }
        Ok((stmt, typed))
    }
}

/// What a write's statements are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Each its own statement.
    Each,
    /// One statement, once per parameter set (`execute_many`).
    Rows,
}

impl Shape {
    /// What an error names one of the statements as.
    fn what(self) -> &'static str {
        if self == Shape::Rows {
            "rows"
        } else {
            "statements"
        }
    }
}

/// One statement's outcome.
#[derive(Default)]
struct Done {
    result: ExecResult,
    /// The transaction's position in the log, when replicas are configured.
    token: Option<Token>,
}

/// The type a value suggests, for a parameter the server cannot type.
fn type_hint(v: &Value) -> Type {
    match v {
        Value::Integer(_) => Type::INT8,
        Value::Real(_) => Type::FLOAT8,
        Value::Blob(_) => Type::BYTEA,
        Value::Null | Value::Text(_) => Type::TEXT,
    }
}

/// Refuses a statement with a column litebridge cannot read, naming it.
fn readable_columns(stmt: &PgStatement) -> Result<()> {
    match stmt.columns().iter().find(|c| !readable(c.type_())) {
        None => Ok(()),
        Some(c) => Err(Error::invalid(
            "sql",
            format!(
                "column {:?} has type {}, which litebridge does not map to JSON; cast it, \
                 e.g. {}::text (docs/postgres.md lists the types)",
                c.name(),
                c.type_().name(),
                c.name()
            ),
        )),
    }
}

/// Reads up to `max_rows` rows (noting whether more came), refusing past
/// `max_bytes`.
async fn read_rows(
    conn: &Object,
    stmt: &PgStatement,
    values: &[Value],
    max_rows: usize,
    max_bytes: usize,
) -> Result<Rows> {
    let spent = AtomicUsize::new(0);
    Ok(
        stream_rows(conn, stmt, values, max_rows, (max_bytes, &spent))
            .await?
            .0,
    )
}

/// As [`read_rows`], with the count of rows the statement affected (as
/// its command tag says: `INSERT 0 3`) when all its rows were read; the
/// bytes of its values counted in `spent`, which a write's statements
/// share, within `max_bytes`.
async fn stream_rows(
    conn: &Object,
    stmt: &PgStatement,
    values: &[Value],
    max_rows: usize,
    (max_bytes, spent): (usize, &AtomicUsize),
) -> Result<(Rows, Option<u64>)> {
    let timeout = Duration::ZERO;
    let columns = names(stmt.columns());
    let stream = conn
        .query_raw(stmt, values.iter().map(Param))
        .await
        .map_err(|e| from_pg(&e, timeout))?;
    futures_util::pin_mut!(stream);
    let mut rows = Vec::new();
    let mut truncated = false;
    while let Some(row) = stream.next().await {
        let row = row.map_err(|e| from_pg(&e, timeout))?;
        if rows.len() == max_rows {
            truncated = true;
            break;
        }
        let mut out = Vec::with_capacity(columns.len());
        for (i, name) in columns.iter().enumerate() {
            let Cell(v) = row.try_get::<_, Cell>(i).map_err(|e| {
                Error::invalid(
                    "sql",
                    format!("column {name:?} cannot be read: {}", error_chain(&e)),
                )
            })?;
            let size = value_size(&v);
            spent.fetch_add(size, Ordering::Relaxed);
            out.push(v);
        }
        if spent.load(Ordering::Relaxed) > max_bytes {
            return Err(too_large(max_bytes));
        }
        rows.push(out);
    }
    let affected = stream.rows_affected();
    Ok((
        Rows {
            columns,
            rows,
            truncated,
        },
        affected,
    ))
}

/// [`too_large`] of the rows a write returned: the write fails, and
/// nothing of it commits.
fn returned_too_large(e: Error) -> Error {
    match e {
        Error::TooLarge { limit, .. } => Error::TooLarge {
            what: "the rows the write returned (db.max_result_bytes, for all of a request's statements); nothing of the write was kept"
                .into(),
            limit,
        },
        e => e,
    }
}

/// A read refused past `db.max_result_bytes`.
fn too_large(max_bytes: usize) -> Error {
    Error::TooLarge {
        what: "the query's rows (db.max_result_bytes; ask for fewer with max_rows)".into(),
        limit: max_bytes as u64,
    }
}

/// A statement's column names.
fn names(columns: &[tokio_postgres::Column]) -> Vec<String> {
    columns.iter().map(|c| c.name().to_owned()).collect()
}

/// The oldest PostgreSQL litebridge runs on (`server_version_num`): 14
/// brought `idle_session_timeout` and `client_connection_check_interval`,
/// which every client session fixes.
const MIN_VERSION: i32 = 140_000;

/// What a value counts against `max_result_bytes`, as on SQLite.
fn value_size(v: &Value) -> usize {
    v.cost()
}

/// The timeline a replica replays on: the one its WAL receiver last
/// received, through `<schema>_claims.received_timeline()`. PostgreSQL
/// shows it only to roles with `pg_read_all_stats`, and litebridge's own
/// role owns the function; without that grant, while the receiver is
/// down, or when the replica has replayed past what the receiver wrote
/// (after a crash, its own log of a history the cluster gave up), it is
/// NULL, and no timeline is known.
///
/// Why the receiver's and not the replay's (which no function shows): a
/// receiver streams only a timeline of the replica's own history, and is
/// past the replay's timeline only before the replay reaches the switch
/// point, short of every write on the new timeline. (The control file's
/// timelines, which every role may read, lag a failover until the next
/// restart point: a replica replaying the new timeline for minutes would
/// pass for one on the old.)
fn received_timeline(schema: &str) -> String {
    format!("{schema}_claims.received_timeline()")
}

/// A replica's replay position and its [`received_timeline`].
fn replica_position(schema: &str) -> String {
    format!(
        "SELECT pg_catalog.pg_last_wal_replay_lsn()::pg_catalog.text, \
         ({})::pg_catalog.text",
        received_timeline(schema)
    )
}

/// The primary's insert position and the timeline it writes on: after a
/// write's `COMMIT`, past its commit record. The timeline is the first of
/// the three numbers of the log file's name, which names the one written
/// now (the control file's lags behind a promotion until its first
/// checkpoint). Every name qualified: these run on the clients' sessions,
/// whose `search_path` the clients set.
const WAL_INSERT_POSITION: &str = "SELECT l::pg_catalog.text, \
     pg_catalog.pg_walfile_name(l) \
     FROM pg_catalog.pg_current_wal_insert_lsn() AS l";

/// [`WAL_INSERT_POSITION`] and, as a third column, the session that reads
/// it (its server process and when that started, `this_session()` of
/// `claims`): with `replicated_to`, a write's standbys are counted on the
/// session that committed it, and this tells that they are (`replicated`).
fn position_in_session_sql(schema: &str) -> String {
    format!(
        "SELECT l::pg_catalog.text, pg_catalog.pg_walfile_name(l), \
         {schema}_claims.this_session() FROM pg_catalog.pg_current_wal_insert_lsn() AS l"
    )
}

/// The guard a read runs on a replica before its statement. It aborts the
/// transaction before the statement is parsed: with a numeric overflow
/// (22003) when the node is not in recovery (a promoted one keeps its last
/// replay position, and is no replica any more); with a division by zero
/// (22012) unless it has replayed as far as `token` and, when the token
/// names one, receives its timeline ([`received_timeline`]). (No constant
/// may overflow or divide by zero: the planner folds constants, in any
/// branch.)
fn guard_sql(token: Token, schema: &str) -> String {
    let timeline = if token.timeline == 0 {
        String::new()
    } else {
        format!(
            " AND COALESCE({} OPERATOR(pg_catalog.=) {}::pg_catalog.int8, false)",
            received_timeline(schema),
            token.timeline
        )
    };
    let at = Token::new(0, token.lsn);
    format!(
        "SELECT CASE WHEN NOT pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.+) 2147483647::pg_catalog.int4 \
         ELSE 1 OPERATOR(pg_catalog./) (CASE WHEN \
         COALESCE(pg_catalog.pg_last_wal_replay_lsn() OPERATOR(pg_catalog.>=) \
         '{at}'::pg_catalog.pg_lsn, false){timeline} THEN 1 ELSE 0 END) END"
    )
}

/// What a guard's error says of the replica: `false` not a replica any
/// more (22003, from the guard), `true` not to be read now: behind (22012),
/// or the guard could not run there (a function or grant not replayed yet,
/// a timeout the caller set, the server short of something). The statement
/// never ran, so no error of the guard is the client's.
fn guard_refusal(code: &SqlState) -> bool {
    code != &SqlState::NUMERIC_VALUE_OUT_OF_RANGE
}

/// The token of a write whose position could not be read after its
/// `COMMIT` (its node going down between the two, a `statement_timeout` the
/// caller set, a cancel from another session): on no timeline, so that a
/// `session` read with it goes to the primary rather than to a replica that
/// may not have the write. Without it, a client over HTTP (no session kept)
/// had no token to send, and its next `session` read could be stale.
fn unknown_position() -> Token {
    Token::default()
}

/// The answer to a write that a read-only server refused: a standby, or a
/// primary demoted by a failover. Nothing was written; the next connection
/// finds the primary again through the URL's hosts.
fn not_the_primary(message: &str) -> Error {
    Error::Unavailable {
        what: "the PostgreSQL primary",
        reason: format!(
            "the server reached is read-only (a standby, or a primary demoted by a failover): \
             nothing was written, retry ({message})"
        ),
    }
}

/// The primary's insert position now, and, when `sql` reads it
/// ([`position_in_session_sql`]), the session that read it, if it answers.
async fn insert_position(conn: &Object, sql: &str) -> (Option<Token>, Option<String>) {
    match conn.simple_query(sql).await {
        Ok(m) => (primary_token(&m), session_of(&m)),
        Err(_) => (None, None),
    }
}

/// The session a position was read in, as [`position_in_session_sql`]
/// answers it (its third column).
fn session_of(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        // `try_get`: `get` panics on a column the row does not have (a
        // position read without its session, with `replicated_to` 0).
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            r.try_get(2).ok().flatten().map(str::to_owned)
        }
        _ => None,
    })
}

/// The timeline of a log file's name (`pg_walfile_name`): its first eight
/// hexadecimal digits.
fn walfile_timeline(file: &str) -> Option<u32> {
    u32::from_str_radix(file.get(..8)?, 16).ok()
}

/// A position and a log file's name, as [`WAL_INSERT_POSITION`] answers.
fn primary_token(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<Token> {
    let (position, file) = first_two(messages)?;
    let timeline = walfile_timeline(file)?;
    let at: Token = position.parse().ok()?;
    Some(Token::new(timeline, at.lsn))
}

/// A position and a timeline, as [`replica_position`] answers: none
/// without the timeline (a position on an unknown timeline would tell a
/// later guard nothing it can trust).
fn replica_token(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<Token> {
    let (position, timeline) = first_two(messages)?;
    let at: Token = position.parse().ok()?;
    Some(Token::new(timeline.parse().ok()?, at.lsn))
}

/// The first two columns of the first row of a simple query's answer.
fn first_two(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<(&str, &str)> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some((r.get(0)?, r.get(1)?)),
        _ => None,
    })
}

/// A connection of a replica's pool, by `deadline` (of a request of
/// `timeout`, which a timeout names).
async fn replica_connection(pool: &Pool, deadline: Instant, timeout: Duration) -> Result<Object> {
    match tokio::time::timeout_at(deadline, pool.get()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::Unavailable {
            what: "a PostgreSQL replica",
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::Timeout {
            after: timeout,
            stage: TimeoutStage::Queued,
        }),
    }
}

/// How long a runaway statement is given at each step of [`PgDatabase::stop`].
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

/// Statements that end what a caller may have left in its session (the
/// clients' SQL can reach them through functions and `DO` blocks, past any
/// statement filter): cursors, notifications, advisory locks, temporary
/// tables, settings made with `set_config()`, and the statements prepared
/// with SQL's `PREPARE` (which could take the name of one of litebridge's).
/// litebridge's own prepared statements, whose parameter types and plans
/// the session's objects may have decided, go with the connection's
/// statement cache, emptied with the reset (each is closed as it is
/// dropped). Not `DEALLOCATE ALL`: tokio-postgres keeps statements of its
/// own for looking up types, which it cannot be told to forget, and the
/// next key's first read of a type it looks up failed without them.
///
/// `RESET ALL` and `RESET ROLE` come first, and every name is qualified with
/// `pg_catalog`: what follows must not call a function of the clients' own
/// through a `search_path` they set.
const RESET: &str = "RESET ALL; RESET ROLE; CLOSE ALL; UNLISTEN *; \
                     SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
                     DO $$ DECLARE n pg_catalog.text; BEGIN \
                     FOR n IN SELECT p.name FROM pg_catalog.pg_prepared_statements p \
                     WHERE p.from_sql LOOP \
                     EXECUTE pg_catalog.format('DEALLOCATE %I', n); END LOOP; END $$";

/// Last of every clients' request, in its last message: a row when a
/// statement was prepared with SQL in the session. The filter refuses the
/// clients' own `PREPARE`, so a function their SQL ran did it (a `write`
/// key's, through a view or a trigger another key's request ran), and it
/// may have taken the name of one of litebridge's statements after
/// `DEALLOCATE`: the caller's later requests on the session would run it
/// with their values. Such a connection is closed, never kept
/// ([`PgDatabase::prepared_with_sql`]). Qualified, and with no operator: it
/// runs in the caller's session. The function, not the view over it: one
/// rewrite less (pgbench: 21,000-23,200 lone reads a second with it and
/// the resets, against 30,600-33,600 without, and 26,000-29,500 with the
/// resets alone).
macro_rules! prepared_with_sql {
    () => {
        "SELECT 1 FROM pg_catalog.pg_prepared_statement() p WHERE p.from_sql LIMIT 1"
    };
}
/// After every clients' request: a notification queue that a listener left
/// inside a later long transaction would stop every `NOTIFY` of the cluster
/// once full, and held cursors spill to disk. After a write, its temporary
/// objects too (`DISCARD TEMP`, after the cursors that may read them).
macro_rules! tidy_shared {
    ($($temp:literal)?) => {
        concat!("UNLISTEN *; CLOSE ALL", $($temp)?)
    };
}
/// With [`PgConfig::isolate_requests`], then every setting back to the
/// connection's start-up options, and the role to its own: a setting a
/// function changed (`set_config(..., false)` by a `write` key's function
/// another key's request ran) would reach that caller's later requests: a
/// `search_path` ahead of `pg_catalog` resolving its statements, prepared
/// ones too, to the key's operators, `synchronous_commit` off
/// acknowledging its writes before they are durable, `client_encoding`,
/// `TimeZone` or `DateStyle` reading its values as other text (found by
/// reviews). Then `prepared_with_sql!`.
macro_rules! isolated {
    ($($shared:tt)*) => {
        concat!($($shared)*, "; RESET ALL; RESET ROLE; ", prepared_with_sql!())
    };
}
/// After a clients' write's `COMMIT`: with its temporary objects, whether
/// or not the clients' role could make any when litebridge started (were
/// `TEMP` granted to it since, a function's temporary table would shadow
/// one of the caller's and take its later writes: found by a review, when
/// the `DISCARD TEMP` was decided at start). With nothing to drop, pgbench
/// measured no cost (16 clients, the write and this tidy-up in one
/// message: 14,000-16,000 a second with it or without); pipelined, an
/// early session measured 14 % (BENCHMARKS.md).
const TIDY: &str = isolated!(tidy_shared!("; DISCARD TEMP"));
/// The end of a clients' read, in one message: the `COMMIT`, then the
/// tidy-up (in a transaction of its own: after the `COMMIT`, so that
/// nothing a deferred trigger does at `COMMIT` outlives it). After an error
/// the rest of the message is skipped, the read fails and the connection is
/// closed.
const END_READ: &str = isolated!(concat!("COMMIT; ", tidy_shared!()));
/// [`TIDY`] and [`END_READ`] without [`PgConfig::isolate_requests`].
const TIDY_SHARED: &str = tidy_shared!("; DISCARD TEMP");
const END_READ_SHARED: &str = concat!("COMMIT; ", tidy_shared!());

/// How many statements `sql`, a message of litebridge's own, holds.
fn statements_in(sql: &str) -> usize {
    sql.matches(';').count() + 1
}

/// Whether `m`, an answer to statement `i` of a message of `statements`
/// that ends with `prepared_with_sql!`, is a row of that check: a
/// statement prepared with SQL found. A message without the check
/// ([`PgConfig::isolate_requests`] off) ends with statements that answer
/// no rows.
fn found_prepared(i: usize, statements: usize, m: &M) -> bool {
    i + 1 == statements && matches!(m, M::Row(_))
}

/// [`found_prepared`] over the whole answer to such a message.
fn found_prepared_in(answer: &[M], statements: usize) -> bool {
    let mut done = 0;
    answer.iter().any(|m| {
        let found = found_prepared(done, statements, m);
        done += usize::from(matches!(m, M::CommandComplete(_)));
        found
    })
}

/// Resets the session of a clients' connection; whether it may be reused.
async fn reset_session(conn: &Object) -> bool {
    let reset = conn.batch_execute(RESET).await.is_ok();
    conn.statement_cache.clear();
    reset
}

/// The clients' role may not reach past the database's privileges, by
/// itself or through any role it can `SET ROLE` to (attributes are not
/// inherited, but `SET ROLE` reaches every role one is a member of): no
/// superuser, `CREATEROLE`, `REPLICATION` or `BYPASSRLS`; not the owner of
/// litebridge's schema or the database, nor a member of a role they are in;
/// none of the predefined roles that read or write everything, the server's
/// files or programs, or signal other sessions.
async fn check_client_role(owner: &tokio_postgres::Client, user: &str) -> Result<()> {
    let exists = owner
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .map_err(|e| from_pg(&e, Duration::ZERO))?;
    if exists.is_none() {
        return Err(Error::Config {
            key: "postgres.client_user".into(),
            value: user.to_owned(),
            expected: "an existing login role (docs/postgres.md shows how to create one)".into(),
        });
    }
    let rows = owner
        .query(
            "SELECT r.rolname::text,
                    CASE
                      WHEN r.rolsuper THEN 'is a superuser'
                      WHEN r.rolcreaterole THEN 'may create roles'
                      WHEN r.rolreplication THEN 'may replicate (and make replication slots)'
                      WHEN r.rolbypassrls THEN 'bypasses row security'
                      WHEN r.rolname = current_user OR (NOT me.rolsuper
                        AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))
                        THEN 'is litebridge''s own role or one it is in'
                      WHEN r.oid = (SELECT datdba FROM pg_catalog.pg_database
                                    WHERE datname = pg_catalog.current_database())
                        THEN 'owns the database'
                      WHEN r.rolname = 'pg_read_all_stats'
                        THEN 'reads every session''s statements (pg_read_all_stats, which pg_monitor includes): litebridge''s own name the secret channel of its cache'
                      ELSE 'is a predefined role with access past table privileges'
                    END
             FROM pg_catalog.pg_roles r,
                  (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) me
             WHERE pg_catalog.pg_has_role($1, r.oid, 'MEMBER')
               AND (r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls
                    OR r.rolname = current_user
                    -- (a superuser is in every role: only another owner's groups count)
                    OR (NOT me.rolsuper AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))
                    OR r.oid = (SELECT datdba FROM pg_catalog.pg_database
                                WHERE datname = pg_catalog.current_database())
                    OR r.rolname IN ('pg_read_all_data', 'pg_write_all_data', 'pg_signal_backend',
                                     'pg_read_server_files', 'pg_write_server_files',
                                     'pg_execute_server_program', 'pg_database_owner',
                                     'pg_checkpoint', 'pg_read_all_stats'))
             ORDER BY r.rolname
             LIMIT 1",
            &[&user],
        )
        .await
        .map_err(|e| from_pg(&e, Duration::ZERO))?;
    if let Some(row) = rows.first() {
        let (role, why): (String, String) = (row.get(0), row.get(1));
        let through = if role == user {
            String::new()
        } else {
            format!(" (through role {role:?}, which it is a member of)")
        };
        return Err(Error::Forbidden {
            message: format!(
                "the clients' SQL would run as {user:?}, which {why}{through}: it could reach \
                 litebridge's own tables or past the database's privileges; set \
                 postgres.client_user to a plain login role (docs/postgres.md shows how to \
                 create one)"
            ),
        });
    }
    // Functions that read the server's files (its data directory holds
    // litebridge's secret, its logs the statements of every session),
    // granted one by one as monitoring logins often are.
    let reads_files = owner
        .query_opt(
            "SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text
             FROM pg_catalog.pg_proc p
             WHERE p.proname IN ('pg_read_file', 'pg_read_binary_file', 'pg_ls_dir',
                                 'pg_ls_logdir', 'pg_ls_waldir', 'pg_stat_file', 'lo_import',
                                 'lo_export', 'pg_get_wal_records_info', 'pg_get_wal_record_info',
                                 'pg_get_wal_block_info', 'pg_get_wal_stats', 'pg_logdir_ls')
               AND pg_catalog.has_function_privilege($1, p.oid, 'EXECUTE')
             ORDER BY 1 LIMIT 1",
            &[&user],
        )
        .await
        .map_err(|e| from_pg(&e, Duration::ZERO))?;
    if let Some(row) = reads_files {
        let function: String = row.get(0);
        return Err(Error::Forbidden {
            message: format!(
                "the clients' SQL would run as {user:?}, which may run {function}: it could read \
                 the server's files (litebridge's secret among them, or every session's \
                 statements in the logs); revoke it (REVOKE EXECUTE ON FUNCTION {function} FROM ...)"
            ),
        });
    }
    // PostgreSQL 15 can grant `SET` or `ALTER SYSTEM` on a parameter: `SET`
    // on a superuser's parameter (`session_replication_role` turns triggers
    // off) reaches past privileges, and `ALTER SYSTEM` changes the server's
    // configuration (litebridge's transaction blocks stop it today, and
    // read-only transactions would not). Older servers have no such grants.
    let granted = owner
        .query_opt(
            "SELECT a.parname::pg_catalog.text, x.privilege_type::pg_catalog.text
             FROM pg_catalog.pg_parameter_acl a, pg_catalog.aclexplode(a.paracl) x
             WHERE x.grantee = 0 OR pg_catalog.pg_has_role($1, x.grantee, 'MEMBER')
             ORDER BY 1, 2 LIMIT 1",
            &[&user],
        )
        .await;
    match granted {
        Ok(None) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(()),
        Err(e) => Err(from_pg(&e, Duration::ZERO)),
        Ok(Some(row)) => {
            let (parameter, privilege): (String, String) = (row.get(0), row.get(1));
            Err(Error::Forbidden {
                message: format!(
                    "the clients' SQL would run as {user:?}, which holds {privilege} on the \
                     parameter {parameter:?} (directly, through a role or as PUBLIC): the \
                     clients' SQL could change settings only a superuser may, or the \
                     server's configuration; revoke it (REVOKE {privilege} ON PARAMETER {parameter} FROM ...)"
                ),
            })
        }
    }
}

/// A first connection of `pool`, by `deadline`.
async fn connect_to(pool: &Pool, deadline: Instant) -> Result<Object> {
    match tokio::time::timeout_at(deadline, pool.get()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(deadpool_postgres::PoolError::Backend(e))) => {
            Err(match from_pg(&e, Duration::ZERO) {
                Error::Postgres { message, .. } => Error::Unavailable {
                    what: "the PostgreSQL server",
                    reason: message,
                },
                other => other,
            })
        }
        Ok(Err(e)) => Err(Error::Unavailable {
            what: "the PostgreSQL server",
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::Unavailable {
            what: "the PostgreSQL server",
            reason: "no connection within postgres.connect_timeout".into(),
        }),
    }
}
