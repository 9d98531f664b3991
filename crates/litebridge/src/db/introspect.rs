//! What the database holds, as a client may see it: tables and views with
//! their columns, indexes and a row estimate (for agents and tools that must
//! write SQL against a schema they have not seen).
//!
//! It runs on the read lane as litebridge's own code (it reads the planner
//! statistics, which client SQL may not) and shows what a `query` could see:
//! litebridge's own tables and SQLite's internal and shadow tables are left
//! out, and so are views and virtual tables a client's `SELECT` would be
//! refused (a view's columns are those of that `SELECT`), and any one
//! object SQLite cannot describe. Row counts are estimates, cheap on any
//! size: the `ANALYZE` statistics when there are some, otherwise the
//! largest rowid (an upper bound after deletes; none when columns take
//! every name of the rowid), and none for views and WITHOUT ROWID tables
//! without statistics.

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
    /// A generated column (`AS (...)`): read, never written.
    pub generated: bool,
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

/// The statements `describe` runs for each object. Prepared here, not
/// through the statement cache: a trusted statement in the cache could be
/// served to client SQL of the same text.
struct Statements<'c> {
    columns: rusqlite::Statement<'c>,
    indexes: rusqlite::Statement<'c>,
    index_columns: rusqlite::Statement<'c>,
}

fn describe(conn: &Connection) -> Result<Vec<TableInfo>> {
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
    let listed: Vec<(String, String, bool)> = rows
        .filter(|r| r.as_ref().map_or(true, |(name, _, _)| !hidden(name)))
        .collect::<rusqlite::Result<_>>()?;
    let stats = analyze_stats(conn)?;
    let mut statements = Statements {
        columns: conn.prepare(
            "SELECT name, type, \"notnull\", pk, dflt_value, hidden IN (2, 3) \
             FROM pragma_table_xinfo(?1) WHERE hidden != 1",
        )?,
        indexes: conn.prepare(
            "SELECT name, \"unique\" FROM pragma_index_list(?1) WHERE origin != 'pk' OR ?2 ORDER BY name",
        )?,
        index_columns: conn.prepare(
            "SELECT name FROM pragma_index_info(?1) WHERE name IS NOT NULL ORDER BY seqno",
        )?,
    };
    // A virtual table may read other tables when it is read (a full-text
    // table over `content=`): one a client could not read is left out, and
    // so is every view that reads it.
    let mut unreadable = Vec::new();
    for (name, kind, _) in &listed {
        if kind == "virtual" && as_client(conn, name, &[], true)?.is_none() {
            unreadable.push(name.clone());
        }
    }
    let mut tables = Vec::new();
    for (name, kind, without_rowid) in listed {
        let described = match kind.as_str() {
            "virtual" if unreadable.contains(&name) => continue,
            // A view's columns are those of the client's `SELECT` of it:
            // compiled once (a client's views may be costly to compile).
            "view" => match as_client(conn, &name, &unreadable, false)? {
                Some(columns) => Ok(TableInfo {
                    name,
                    kind,
                    without_rowid,
                    columns,
                    indexes: Vec::new(),
                    row_estimate: None,
                }),
                None => continue,
            },
            _ => describe_one(conn, &mut statements, &stats, name, kind, without_rowid),
        };
        match described {
            Ok(table) => tables.push(table),
            // One object SQLite cannot describe (a virtual table whose
            // content table was dropped) is left out rather than failing
            // the whole answer; a deadline or want of memory still does.
            Err(e) if fatal(&e) => return Err(e.into()),
            Err(_) => {}
        }
    }
    Ok(tables)
}

/// An error that ends `describe`, not only one object's description.
fn fatal(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::OperationInterrupted | rusqlite::ErrorCode::OutOfMemory)
    )
}

fn describe_one(
    conn: &Connection,
    statements: &mut Statements<'_>,
    stats: &HashMap<String, i64>,
    name: String,
    kind: String,
    without_rowid: bool,
) -> rusqlite::Result<TableInfo> {
    let columns = statements
        .columns
        .query_map([&name], |r| {
            Ok(ColumnInfo {
                name: r.get(0)?,
                decl_type: r.get(1)?,
                not_null: r.get(2)?,
                primary_key: r.get::<_, i64>(3)? > 0,
                default: r.get(4)?,
                generated: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let names = statements
        .indexes
        .query_map(rusqlite::params![&name, without_rowid], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut indexes = Vec::with_capacity(names.len());
    for (index, unique) in names {
        let columns = statements
            .index_columns
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
        None if kind == "table" && !without_rowid => largest_rowid(conn, &name, &columns)?,
        None => None,
    };
    Ok(TableInfo {
        name,
        kind,
        without_rowid,
        columns,
        indexes,
        row_estimate,
    })
}

/// The table's largest rowid (0 when empty), read through the one of its
/// names (`rowid`, `_rowid_`, `oid`) no column of the table takes: a column
/// named `rowid` would make `max(rowid)` a scan of that column, and its
/// largest value no count at all. None when columns take all three.
fn largest_rowid(
    conn: &Connection,
    name: &str,
    columns: &[ColumnInfo],
) -> rusqlite::Result<Option<i64>> {
    let Some(alias) = ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|alias| !columns.iter().any(|c| c.name.eq_ignore_ascii_case(alias)))
    else {
        return Ok(None);
    };
    let largest = conn.query_row(
        &format!("SELECT max({alias}) FROM {}", quote(name)),
        [],
        |r| r.get::<_, Option<i64>>(0),
    )?;
    Ok(largest.or(Some(0)))
}

/// The columns of a client's `SELECT` of `name`, or None if it would not be
/// let through: one over litebridge's tables (or anything else the client
/// rules refuse, or one of the virtual tables in `refused`) is left out, or
/// its column list would show a layout the client may not read (review
/// 213); so is one that no longer compiles (a table it reads was dropped),
/// which no client could read either. A view's reads are all named when it
/// is prepared; a virtual table may read others only when it is read
/// (`step`: its first row is read). A deadline or want of memory is an
/// error, not a refusal.
fn as_client(
    conn: &Connection,
    name: &str,
    refused: &[String],
    step: bool,
) -> rusqlite::Result<Option<Vec<ColumnInfo>>> {
    guard::as_client(refused, || {
        let mut stmt = match conn.prepare(&format!("SELECT * FROM {} LIMIT 1", quote(name))) {
            Ok(stmt) => stmt,
            Err(e) if fatal(&e) => return Err(e),
            Err(_) => return Ok(None),
        };
        let columns = stmt
            .columns()
            .map(|c| ColumnInfo {
                name: c.name().to_owned(),
                decl_type: c.decl_type().unwrap_or_default().to_owned(),
                not_null: false,
                primary_key: false,
                default: None,
                generated: false,
            })
            .collect();
        if step {
            match stmt.raw_query().next() {
                Err(e) if fatal(&e) => return Err(e),
                Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
        Ok(Some(columns))
    })
}

/// Row counts from `sqlite_stat1`, when `ANALYZE` has run. Another program
/// may have left anything there (a NULL name, a table of another shape, a
/// view in its place: review 215, 216): only a name with a count is taken,
/// and a table that cannot be read as `ANALYZE` writes it gives none.
fn analyze_stats(conn: &Connection) -> Result<HashMap<String, i64>> {
    match read_stats(conn) {
        Ok(stats) => Ok(stats),
        Err(e) if fatal(&e) => Err(e.into()),
        Err(_) => Ok(HashMap::new()),
    }
}

fn read_stats(conn: &Connection) -> rusqlite::Result<HashMap<String, i64>> {
    let present: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM main.sqlite_schema \
         WHERE type = 'table' AND name = 'sqlite_stat1' AND rootpage <> 0)",
        [],
        |r| r.get(0),
    )?;
    if !present {
        return Ok(HashMap::new());
    }
    let mut stmt =
        conn.prepare("SELECT tbl, max(CAST(stat AS INTEGER)) FROM main.sqlite_stat1 GROUP BY tbl")?;
    let mut rows = stmt.query([])?;
    let mut stats = HashMap::new();
    while let Some(r) = rows.next()? {
        if let (Ok(table), Ok(n)) = (r.get_ref(0)?.as_str(), r.get_ref(1)?.as_i64()) {
            stats.insert(table.to_owned(), n);
        }
    }
    Ok(stats)
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
