//! # litebridge
//!
//! A resilient SQLite service: one writer with group commit, a pool of
//! readers, a lane for heavy queries, real query deadlines, health checks,
//! WAL checkpoints, online backups and integrity checks. This crate is the
//! library; it never sees a transport. The `litebridge` binary serves it.
//!
//! ```no_run
//! # async fn demo() -> litebridge::Result<()> {
//! use litebridge::{Database, DbConfig, params};
//! let db = Database::open("app.db", DbConfig::default()).await?;
//! db.execute("CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT)", ()).await?;
//! db.execute("INSERT INTO kv(k, v) VALUES (?1, ?2)", params![1, "one"]).await?;
//! let rows = db.query("SELECT v FROM kv WHERE k = ?1", params![1]).await?;
//! assert_eq!(rows.rows[0][0], litebridge::Value::from("one"));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! What a program uses is at the crate's root (the database, its
//! configuration, values, errors, the service) or in a module named for its
//! part (`auth`, `backups`, `resilience`, `store`, `workers`); the modules
//! below without a link are private, their public items re-exported at the
//! root, so each has one path.
//!
//! - [`auth`]: API keys (hashed), [`Scopes`](auth::Scopes), tiers and quotas,
//!   [`Caller`](auth::Caller); the design note is there (SECURITY.md for the whole).
//! - [`backups`]: scheduled, verified, pruned backups and recovery from them.
//! - `backend`: [`Backend`], the database under the stores (SQLite or
//!   PostgreSQL), and how their statements are written once for both.
//! - `error`: [`Error`], [`ErrorKind`], `kind()` and `is_recoverable()`.
//! - `config`: [`DbConfig`] and its builder; the `DEFAULT_*` values.
//! - `value`: [`Value`], [`Params`], [`Rows`]: SQLite values and their JSON mapping.
//! - `db`: [`Database`]; the design note is there. Inside: `writer` (the
//!   thread), `queue` (its bounded queue and admission), `group_commit` (one
//!   transaction per batch), `execute` (the future of one write), `readers`
//!   (read lane), `inline` (which threads run a read right now), `heavy`
//!   (heavy lane), `guard` (deadlines, the statement guard and the SQL
//!   authorizer), `heap` (SQLite's allocator with a memory budget per
//!   request, where long steps are also stopped), `functions`, `patterns`
//!   and `snippet` (SQLite's functions that could run long in one call,
//!   replaced), `exec` (binding and running),
//!   `introspect` ([`Database::schema`]), `open` (pragmas), `checkpointer`
//!   (WAL checkpoints off the writer thread), `wal_vfs` (the writer's WAL
//!   writes, one per commit), `keeper` (an idle read transaction that
//!   makes point reads cheaper), `shm_peers` (whether another process has
//!   the file open), `foreign_commits` (whether anyone but the writer
//!   changed the file since last looked: the cache's memory), `on_disk` (whether the file open is still the one at
//!   its path), `claims` (idempotency records), `backup` (online backup,
//!   checks), `restore` (restore with the old file kept aside), `ffi`
//!   (calls of SQLite's C API that rusqlite does not wrap).
//! - `idempotency`: [`IdempotencyKey`], a write applied at most once.
//! - `consistency`: where a read may be served, and the position token of
//!   read-your-writes on replicas.
//! - [`exact`]: integers JSON carries that would be read inexactly.
//! - [`resilience`]: backoff, [`RetryPolicy`](resilience::RetryPolicy) with a
//!   retry budget, [`CircuitBreaker`](resilience::CircuitBreaker) and its registry.
//! - `stats`: [`DbStats`], the database's statistics.
//! - [`store`]: [`Cache`](store::Cache), the two-level cache (memory and the database).
//! - [`Service`]: the database, workers and cache wired together; what the
//!   transports call.
//! - [`workers`]: [`WorkerPool`](workers::WorkerPool), worker processes over
//!   JSON-RPC on stdin/stdout; the design note is there. `workers::nats`
//!   (feature `nats`): `WorkerHost` serves a pool on NATS and `NatsBridge`
//!   calls hosts from a front end, with its own design note;
//!   [`Bridge`](workers::Bridge) is either transport.
//! - [`pg`] (feature `postgres`): [`PgDatabase`](pg::PgDatabase), the
//!   clients' SQL on PostgreSQL; the design note is there.
//! - `histogram`: the lock-free latency histogram behind the percentiles.
//! - `calendar`: UTC civil dates for stamps and quota periods.
//! - `sync`: the crate's locks, which ignore poisoning (the reason is there).
//! - `fault`: fault switches for tests (hidden).

pub mod auth;
mod backend;
pub mod backups;
mod calendar;
mod config;
mod consistency;
mod db;
mod error;
pub mod exact;
#[doc(hidden)]
pub mod fault;
mod histogram;
mod idempotency;
#[doc(hidden)]
pub mod json;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod resilience;
mod service;
mod stats;
pub mod store;
mod sync;
mod value;
pub mod workers;

pub use backend::Backend;
pub use config::{
    CheckpointConfig, DEFAULT_BUSY_TIMEOUT, DEFAULT_CACHE_SIZE, DEFAULT_HEALTH_CHECK_INTERVAL,
    DEFAULT_HEAVY_QUEUE, DEFAULT_HEAVY_READERS, DEFAULT_JOURNAL_SIZE_LIMIT, DEFAULT_MAX_BATCH,
    DEFAULT_MAX_REQUEST_MEMORY, DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_SCHEMA_BYTES,
    DEFAULT_MAX_SCHEMA_OBJECTS, DEFAULT_MAX_WRITE_HOLD, DEFAULT_MMAP_SIZE, DEFAULT_READERS,
    DEFAULT_STATEMENT_CACHE, DEFAULT_TIMEOUT, DEFAULT_WRITE_QUEUE, DbConfig, DbConfigBuilder,
    Durability, TempStore,
};
pub use consistency::{Consistency, Token};
pub use db::{
    BackupProgress, BackupReport, CHECK_COULD_NOT_RUN, CheckDepth, CheckReport, CheckpointMode,
    CheckpointReport, ColumnInfo, Database, Health, IfExists, IndexInfo, Lane, QueryOptions,
    RestoreReport, TableInfo, WriteOptions, backup_file, check_file, inline_reads, restore_file,
    utc_file_stamp, utc_stamp,
};
pub use error::{Error, ErrorKind, Result, TimeoutStage};
pub use histogram::{Histogram as LatencyHistogram, HistogramSnapshot, LatencySummary};
pub use idempotency::{IdempotencyKey, MAX_IDEMPOTENCY_KEY};
pub use rusqlite;
pub use service::{Service, ServiceConfig};
pub use stats::{DbStats, LatencySnapshots};
pub use value::{ExecResult, Params, Rows, Statement, Value};

/// Sets SQLite's allocator up for litebridge's per-request memory budgets
/// ([`DbConfig::max_request_memory`]) if SQLite has not run yet in this
/// process, and returns whether they are enforced. Opening a database does
/// it too; an application that uses SQLite in other ways as well calls it
/// first, before them (after them it returns false: SQLite's allocator
/// cannot change once SQLite ran).
pub fn install_memory_budgets() -> bool {
    db::heap::install()
}

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
