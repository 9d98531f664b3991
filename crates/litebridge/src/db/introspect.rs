//! What the database holds, as a client may see it: tables and views with
//! their columns, indexes and a row estimate (for agents and tools that must
//! write SQL against a schema they have not seen).
//!
//! It runs on the read lane as litebridge's own code (it reads the planner
//! statistics, which client SQL may not) and shows what a `query` could see:
//! litebridge's own tables and SQLite's internal and shadow tables are left
//! out, and so are views a client's `SELECT` would be refused. Row counts
//! are estimates, cheap on any size: the `ANALYZE` statistics when there are
//! some, otherwise the largest rowid (an upper bound after deletes), and none
//! for views and WITHOUT ROWID tables without statistics.

use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

use crate::db::Database;
use crate::db::guard::{self, OWN_PREFIX};
use crate::error::Result;

/// A table or view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableInfo {
    /// Its name.
    pub name: String,
    /// `table`, `view` or `virtual`.
    pub kind: String,
    /// Whether it is a WITHOUT ROWID table.
    pub without_rowid: bool,
    /// Its columns, in order.
    pub columns: Vec<ColumnInfo>,
    /// Its indexes.
    pub indexes: Vec<IndexInfo>,
    /// About how many rows it has (see the module documentation).
    pub row_estimate: Option<i64>,
}

/// A column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// The declared type (may be empty).
    pub decl_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Part of the primary key.
    pub primary_key: bool,
    /// The default, as SQL text.
    pub default: Option<String>,
}

/// An index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexInfo {
    /// Its name.
    pub name: String,
    /// `UNIQUE`.
    pub unique: bool,
    /// The indexed columns (expressions show as null names and are left out).
    pub columns: Vec<String>,
}

fn hidden(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(OWN_PREFIX) || lower.starts_with("sqlite_")
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn describe(conn: &Connection) -> Result<Vec<TableInfo>> {
    let mut tables = Vec::new();
    let mut list = conn.prepare(
        "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main' \
         AND type IN ('table', 'view', 'virtual') ORDER BY name",
    )?;
    let rows = list.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    let listed: Vec<(String, String, bool)> = rows.collect::<rusqlite::Result<_>>()?;
    let stats = analyze_stats(conn)?;
    // Prepared here, not through the statement cache: a trusted statement in
    // the cache could be served to client SQL of the same text.
    let mut cols =
        conn.prepare("SELECT name, type, \"notnull\", pk, dflt_value FROM pragma_table_info(?1)")?;
    let mut idx = conn.prepare(
        "SELECT name, \"unique\" FROM pragma_index_list(?1) WHERE origin != 'pk' OR ?2 ORDER BY name",
    )?;
    let mut ic = conn
        .prepare("SELECT name FROM pragma_index_info(?1) WHERE name IS NOT NULL ORDER BY seqno")?;
    for (name, kind, without_rowid) in listed.into_iter().filter(|(n, _, _)| !hidden(n)) {
        if kind == "view" && !readable(conn, &name) {
            continue;
        }
        let columns = cols
            .query_map([&name], |r| {
                Ok(ColumnInfo {
                    name: r.get(0)?,
                    decl_type: r.get(1)?,
                    not_null: r.get(2)?,
                    primary_key: r.get::<_, i64>(3)? > 0,
                    default: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let names = idx
            .query_map(rusqlite::params![&name, without_rowid], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut indexes = Vec::with_capacity(names.len());
        for (index, unique) in names {
            let columns = ic
                .query_map([&index], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            indexes.push(IndexInfo {
                name: index,
                unique,
                columns,
            });
        }
        let row_estimate = match stats.get(&name) {
            Some(n) => Some(*n),
            None if kind == "table" && !without_rowid => conn
                .query_row(
                    &format!("SELECT max(rowid) FROM {}", quote(&name)),
                    [],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .or(Some(0)),
            None => None,
        };
        tables.push(TableInfo {
            name,
            kind,
            without_rowid,
            columns,
            indexes,
            row_estimate,
        });
    }
    Ok(tables)
}

/// Whether a client's `SELECT` of the view `name` would be prepared: one
/// over litebridge's tables (or anything else the client rules refuse) is
/// left out, or its column list would show a layout the client may not read
/// (review 213); so is one that no longer compiles (a table it reads was
/// dropped), which no client could read either.
fn readable(conn: &Connection, name: &str) -> bool {
    guard::as_client(|| {
        conn.prepare(&format!("SELECT * FROM {}", quote(name)))
            .is_ok()
    })
}

/// Row counts from `sqlite_stat1`, when `ANALYZE` has run.
fn analyze_stats(conn: &Connection) -> Result<HashMap<String, i64>> {
    let present: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM main.sqlite_schema WHERE name = 'sqlite_stat1')",
        [],
        |r| r.get(0),
    )?;
    if !present {
        return Ok(HashMap::new());
    }
    let mut stmt =
        conn.prepare("SELECT tbl, max(CAST(stat AS INTEGER)) FROM main.sqlite_stat1 GROUP BY tbl")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Database {
    /// The tables and views a client can query, with columns, indexes and
    /// row estimates.
    ///
    /// # Errors
    /// SQLite errors; [`crate::Error::Timeout`] past the default deadline.
    pub async fn schema(&self) -> Result<Vec<TableInfo>> {
        let budget = self.inner.budget(None).trusted();
        self.read_lane(&budget, false, describe).await
    }
}
