//! [`Backend`]: the database the stores run on, SQLite or PostgreSQL.
//!
//! The stores' logic (validation, lifetimes, JSON, result shapes,
//! timestamps computed in Rust) and their statements are written once: the
//! statements use the SQL both engines share (`?N` placeholders, `ON
//! CONFLICT ... DO UPDATE`, `RETURNING`) and name each table through
//! [`Backend::own`], which puts the schema in front (`main.` on SQLite,
//! litebridge's own schema on PostgreSQL). Only the tables' definitions
//! differ (`store/schema.rs`, `pg/schema.rs`).

use crate::db::Database;
use crate::error::Result;
use crate::value::{ExecResult, Params, Rows};

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

#[cfg(feature = "postgres")]
impl From<crate::pg::PgDatabase> for Backend {
    fn from(db: crate::pg::PgDatabase) -> Backend {
        Backend::Postgres(db)
    }
}

impl Backend {
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
            Backend::Sqlite(db) => db.query_trusted(sql, params).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_query(sql, params.into()).await,
        }
    }

    /// A write of litebridge's own tables.
    pub(crate) async fn own_execute(
        &self,
        sql: String,
        params: impl Into<Params>,
    ) -> Result<ExecResult> {
        match self {
            Backend::Sqlite(db) => db.execute_trusted(sql, params).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_execute(&sql, params.into()).await,
        }
    }

    /// Writes of litebridge's own tables in one transaction: all or none.
    pub(crate) async fn own_batch(
        &self,
        statements: Vec<(String, Params)>,
    ) -> Result<Vec<ExecResult>> {
        match self {
            Backend::Sqlite(db) => db.batch_trusted(statements).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_batch(statements).await,
        }
    }

    /// Whether the database is open and (on SQLite) its writer and readers run.
    pub(crate) fn is_open(&self) -> bool {
        match self {
            Backend::Sqlite(db) => db.health().healthy,
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
            Backend::Sqlite(db) => db.write_returning_trusted(sql, params.into()).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(db) => db.own_write_rows(&sql, params.into()).await,
        }
    }
}
