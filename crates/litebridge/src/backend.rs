//! [`Backend`]: the database the stores run on, SQLite or PostgreSQL.
//!
//! The stores' logic (validation, lifetimes, JSON, result shapes,
//! timestamps computed in Rust) and their statements are written once: the
//! statements use the SQL both engines share (`?N` placeholders, `ON
//! CONFLICT ... DO UPDATE`, `RETURNING`) and name each table through
//! [`Backend::own`], which puts the schema in front (`main.` on SQLite,
//! litebridge's own schema on PostgreSQL). Only the tables' definitions
//! differ (`store/schema.rs`, `pg/schema.rs`).

use std::borrow::Cow;

use crate::consistency::{Consistency, Token};
use crate::db::{Database, Health, QueryOptions, TableInfo, WeakDatabase, WriteOptions};
use crate::error::{Error, Result};
use crate::stats::{DbStats, LatencySnapshots};
use crate::value::{ExecResult, Params, Rows, Statement};

/// The database under the stores. Cheap to clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Backend {
    /// A SQLite file.
    Sqlite(Database),
    /// A PostgreSQL server or cluster.
    #[cfg(feature = "postgres")]
    Postgres(crate::pg::PgDatabase),
}

impl From<Database> for Backend {
    fn from(db: Database) -> Backend {
        Backend::Sqlite(db)
    }
}

impl From<&Database> for Backend {
    fn from(db: &Database) -> Backend {
        Backend::Sqlite(db.clone())
    }
}

impl From<&Backend> for Backend {
    fn from(db: &Backend) -> Backend {
        db.clone()
    }
}

#[cfg(feature = "postgres")]
impl From<crate::pg::PgDatabase> for Backend {
    fn from(db: crate::pg::PgDatabase) -> Backend {
        Backend::Postgres(db)
    }
}

/// The clients' API, the same on both engines. Where an engine has no
/// counterpart of a method ([`Database::checkpoint`], file backups), take
/// the engine's own handle with [`Backend::sqlite`] or
/// [`Backend::require_sqlite`].
impl Backend {
    /// The SQLite database, when this is one.
    pub fn sqlite(&self) -> Option<&Database> {
        match self {
            Backend::Sqlite(db) => Some(db),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => None,
        }
    }

    /// The SQLite database, or [`Error::Unsupported`] naming `what` and
    /// what to do `instead` on another engine.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on PostgreSQL.
    pub fn require_sqlite(&self, what: &str, instead: &str) -> Result<&Database> {
        self.sqlite().ok_or_else(|| Error::Unsupported {
            what: what.to_owned(),
            here: format!("on {}", self.engine_name()),
            instead: instead.to_owned(),
            backend: self.kind(),
        })
    }

    /// The PostgreSQL database, when this is one.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&crate::pg::PgDatabase> {
        match self {
            Backend::Sqlite(_) => None,
            Backend::Postgres(db) => Some(db),
        }
    }

    fn engine_name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// Runs a read-only statement (see [`Database::query`]).
    ///
    /// # Errors
    /// As [`Database::query`] or [`PgDatabase::query_with`](crate::pg::PgDatabase::query_with).
    pub async fn query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        self.query_with(sql, params, QueryOptions::default()).await
    }

    /// Runs a read-only statement with options.
    ///
    /// # Errors
    /// As [`Backend::query`].
    pub async fn query_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: QueryOptions,
    ) -> Result<Rows> {
        match self {
            Backend::Sqlite(db) => db.query_with(sql, params, options).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.query_with(sql, params, options).await,
        }
    }

    /// Runs a read-only statement where `consistency` allows, returning the
    /// position the rows reflect on PostgreSQL with replicas (pass it on in
    /// [`Consistency::Session`]). SQLite serves every read from its one
    /// file, sees every acknowledged write and returns no token.
    ///
    /// # Errors
    /// As [`Backend::query`].
    pub async fn query_at(
        &self,
        sql: &str,
        params: impl Into<Params>,
        options: QueryOptions,
        consistency: Consistency,
    ) -> Result<(Rows, Option<Token>)> {
        match self {
            Backend::Sqlite(db) => {
                let _ = consistency;
                Ok((db.query_with(sql, params, options).await?, None))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.query_at(sql, params, options, consistency).await,
        }
    }

    /// Runs one statement that writes (see [`Database::execute`]).
    ///
    /// # Errors
    /// As [`Database::execute`] or [`PgDatabase::execute_with`](crate::pg::PgDatabase::execute_with).
    pub async fn execute(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: impl Into<Params>,
    ) -> Result<ExecResult> {
        Ok(self
            .execute_at(sql, params, WriteOptions::default())
            .await?
            .0)
    }

    /// Runs one statement that writes, with options; returns the write's
    /// position token on PostgreSQL with replicas.
    ///
    /// # Errors
    /// As [`Backend::execute`].
    pub async fn execute_at(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: impl Into<Params>,
        options: WriteOptions,
    ) -> Result<(ExecResult, Option<Token>)> {
        // Owned text goes to SQLite's writer as it is (no copy of the SQL).
        match self {
            Backend::Sqlite(db) => Ok((db.execute_with(sql, params, options).await?, None)),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.execute_at(&sql.into(), params, options).await,
        }
    }

    /// Runs statements as one transaction: all commit or none.
    ///
    /// # Errors
    /// The first failing statement's error, naming its index.
    pub async fn batch_at(
        &self,
        statements: Vec<Statement>,
        options: WriteOptions,
    ) -> Result<(Vec<ExecResult>, Option<Token>)> {
        match self {
            Backend::Sqlite(db) => Ok((db.batch(statements, options).await?, None)),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.batch_at(statements, options).await,
        }
    }

    /// Runs one statement once per parameter set, in one transaction.
    ///
    /// # Errors
    /// The first failing row's error, naming its index.
    pub async fn execute_many_at(
        &self,
        sql: &str,
        rows: Vec<Params>,
        options: WriteOptions,
    ) -> Result<(ExecResult, Option<Token>)> {
        match self {
            Backend::Sqlite(db) => Ok((db.execute_many(sql, rows, options).await?, None)),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.execute_many_at(sql, rows, options).await,
        }
    }

    /// The tables and views the clients' SQL sees (on PostgreSQL, read as
    /// `options.caller`; SQLite reads them as litebridge's own code).
    ///
    /// # Errors
    /// As [`Backend::query`].
    pub async fn schema(&self, options: QueryOptions) -> Result<Vec<TableInfo>> {
        match self {
            Backend::Sqlite(db) => {
                let _ = options;
                db.schema().await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.schema(options).await,
        }
    }

    /// Counts, errors, latencies and the connections' state.
    pub fn stats(&self) -> DbStats {
        match self {
            Backend::Sqlite(db) => db.stats(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.stats(),
        }
    }

    /// Whether it serves reads and writes, and what is wrong if not.
    pub fn health(&self) -> Health {
        match self {
            Backend::Sqlite(db) => db.health(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.health(),
        }
    }

    /// The latency histograms by lane.
    pub fn latency_snapshots(&self) -> LatencySnapshots {
        match self {
            Backend::Sqlite(db) => db.latency_snapshots(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.latency_snapshots(),
        }
    }

    /// Stops statements running for clients at shutdown: on SQLite every
    /// statement is interrupted for good; on PostgreSQL no new connection
    /// is handed out (those running end at their deadlines).
    pub fn interrupt(&self) {
        match self {
            Backend::Sqlite(db) => db.interrupt(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.close(),
        }
    }

    /// Closes it: on SQLite commits what is queued, checkpoints and joins
    /// the threads; on PostgreSQL ends the statements given up on that went
    /// on, then closes the pools.
    pub async fn close(&self) {
        match self {
            Backend::Sqlite(db) => db.close().await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.shutdown().await,
        }
    }

    /// Runs `work` unless another front end on the same database is running
    /// work under the lock of litebridge's table `table` (then `None`): on
    /// PostgreSQL a table lock only litebridge's own role can take (see
    /// [`PgDatabase::exclusively`](crate::pg::PgDatabase)); on SQLite at once
    /// (its writer takes one request at a time already).
    ///
    /// # Errors
    /// The lock could not be asked for (the server is unreachable).
    pub(crate) async fn exclusively<T>(
        &self,
        table: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>> {
        match self {
            Backend::Sqlite(_) => {
                let _ = table;
                Ok(Some(work.await))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.exclusively(table, work).await,
        }
    }

    /// A handle that does not keep it open (for background tasks).
    pub(crate) fn downgrade(&self) -> WeakBackend {
        match self {
            Backend::Sqlite(db) => WeakBackend::Sqlite(db.downgrade()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => WeakBackend::Postgres(db.downgrade()),
        }
    }

    /// The most bytes one request's result may take
    /// (`max_result_bytes` of the engine's configuration).
    pub fn max_result_bytes(&self) -> usize {
        match self {
            Backend::Sqlite(db) => db.config().max_result_bytes,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.config().max_result_bytes,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        }
    }

    /// One of litebridge's tables, named with its schema: `table` is its
    /// name without the `litebridge_` prefix.
    pub(crate) fn own(&self, table: &str) -> String {
        match self {
            Backend::Sqlite(_) => format!("main.litebridge_{table}"),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => format!("{}.litebridge_{table}", db.own_schema()),
        }
    }

    /// A read of litebridge's own tables.
    pub(crate) async fn own_query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        match self {
            Backend::Sqlite(db) => db.query_trusted(sql, params).await.map_err(unmigrated),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_query(sql, params.into()).await,
        }
    }

    /// A read of the keys or quotas: on SQLite it may take the read lane's
    /// connection kept for them, on PostgreSQL it has a connection of its
    /// own, so that reads holding every other one do not hold back a
    /// revocation.
    pub(crate) async fn keys_query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows> {
        match self {
            Backend::Sqlite(db) => db.query_keys(sql, params).await.map_err(unmigrated),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.keys_query(sql, params.into()).await,
        }
    }

    /// A write of litebridge's own tables.
    pub(crate) async fn own_execute(
        &self,
        sql: String,
        params: impl Into<Params>,
    ) -> Result<ExecResult> {
        match self {
            Backend::Sqlite(db) => db.execute_trusted(sql, params).await.map_err(unmigrated),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_execute(&sql, params.into()).await,
        }
    }

    /// One round of the sweep of idempotency records older than
    /// [`KEEP`](crate::idempotency::KEEP): bounded statements (records and
    /// bytes of their results); how many it forgot and whether old ones
    /// are left.
    ///
    /// # Errors
    /// The delete failed.
    pub(crate) async fn forget_claims(&self) -> Result<crate::idempotency::Forgot> {
        match self {
            Backend::Sqlite(db) => {
                db.forget_claims_round(crate::idempotency::KEEP, crate::idempotency::FORGET_STEPS)
                    .await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.forget_claims().await,
        }
    }

    /// Writes of litebridge's own tables in one transaction: all or none.
    pub(crate) async fn own_batch(
        &self,
        statements: Vec<(String, Params)>,
    ) -> Result<Vec<ExecResult>> {
        match self {
            Backend::Sqlite(db) => db.batch_trusted(statements).await.map_err(unmigrated),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_batch(statements).await,
        }
    }

    /// Whether the database is open (on SQLite: its writer runs).
    pub(crate) fn is_open(&self) -> bool {
        match self {
            // Open, healthy or not: keys are re-read while one long batch
            // holds the writer or after SQLITE_CORRUPT was met (reads may
            // still work), so a revocation made elsewhere is not missed for
            // as long as that lasts.
            Backend::Sqlite(db) => !db.is_closed(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.is_open(),
        }
    }

    /// A write of litebridge's own tables that returns rows (`RETURNING`).
    pub(crate) async fn own_write_rows(
        &self,
        sql: String,
        params: impl Into<Params>,
    ) -> Result<Rows> {
        match self {
            Backend::Sqlite(db) => db
                .write_returning_trusted(sql, params.into())
                .await
                .map_err(unmigrated),
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_write_rows(&sql, params.into()).await,
        }
    }
}

/// A store's statement that met none of litebridge's tables on SQLite: they
/// are made by `store::migrate` (a [`Service`](crate::Service) runs it),
/// which a store made with `new` on a database of its own does not run.
fn unmigrated(e: Error) -> Error {
    match e {
        Error::Sql {
            code,
            extended_code,
            message,
        } if message.contains("no such table: main.litebridge_") => Error::Sql {
            code,
            extended_code,
            message: format!(
                "{message} (litebridge's tables are not made yet: call \
                 `litebridge::store::migrate(&db)` once after opening the database, or use a `Service`)"
            ),
        },
        e => e,
    }
}

/// A [`Backend`] that does not keep its database open.
#[derive(Clone)]
pub(crate) enum WeakBackend {
    Sqlite(WeakDatabase),
    #[cfg(feature = "postgres")]
    Postgres(crate::pg::WeakPgDatabase),
}

impl WeakBackend {
    /// The database, while a handle of it is still held.
    pub(crate) fn upgrade(&self) -> Option<Backend> {
        match self {
            WeakBackend::Sqlite(w) => w.upgrade().map(Backend::Sqlite),
            #[cfg(feature = "postgres")]
            WeakBackend::Postgres(w) => w.upgrade().map(Backend::Postgres),
        }
    }
}
