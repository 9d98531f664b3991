//! Running one statement on a connection: preparing through the connection's
//! statement cache, binding [`Params`], collecting [`Rows`]. Shared by the
//! read lane, the heavy lane and the writer.

use rusqlite::{CachedStatement, Connection, OptionalExtension, Statement};

use crate::db::guard::{self, Ddl, OWN_PREFIX};
use crate::db::heap;

use crate::error::{Error, Result};
use crate::value::{ExecResult, Params, Rows, Value};

use rusqlite::ffi::{
    SQLITE_CANTOPEN, SQLITE_INTERRUPT, SQLITE_IOERR, SQLITE_MISUSE, SQLITE_NOMEM, SQLITE_TOOBIG,
};

/// Whether an error means the connection itself is broken (rather than the
/// statement being wrong), so the connection should be replaced.
pub(crate) fn is_connection_failure(err: &Error) -> bool {
    matches!(
        err.sqlite_codes(),
        Some((
            SQLITE_INTERRUPT | SQLITE_NOMEM | SQLITE_IOERR | SQLITE_CANTOPEN | SQLITE_MISUSE,
            _
        ))
    )
}

/// A statement from the connection's cache, or prepared outside it, with
/// what it does to the schema when it is client SQL.
pub(crate) struct Prepared<'c> {
    stmt: Stmt<'c>,
    /// Noted by the authorizer while the statement was prepared (client SQL
    /// only; a statement from the cache never changes the schema).
    ddl: Ddl,
    /// Client SQL that is `ANALYZE` or `PRAGMA optimize` (see `guard`).
    maintenance: bool,
}

enum Stmt<'c> {
    Cached(CachedStatement<'c>),
    Fresh(Statement<'c>),
    /// A cached statement too big to keep ([`MAX_CACHED_STATEMENT`]): used
    /// once, then discarded instead of going back to the cache.
    Oversized(Option<CachedStatement<'c>>),
}

/// The most memory a prepared statement may hold and still be kept in the
/// connection's cache after it ran. A statement's memory is counted in its
/// request's budget while it is prepared, but a cached one stays when the
/// request is over: `SELECT x IN (1, 1, ... 450,000 times)` holds 45 MB,
/// and 128 of them per connection would hold gigabytes between requests.
/// Ordinary statements hold a few kilobytes.
pub(crate) const MAX_CACHED_STATEMENT: i32 = 256 * 1024;

impl<'c> Stmt<'c> {
    fn cached(stmt: CachedStatement<'c>) -> Stmt<'c> {
        // Measuring a statement walks all of it (SQLITE_STMTSTATUS_MEMUSED
        // counts as if freeing it): only a fresh one, never run, is measured;
        // one that ran came from the cache, where only small ones are kept.
        if stmt.get_status(rusqlite::StatementStatus::Run) == 0
            && stmt.get_status(rusqlite::StatementStatus::MemUsed) > MAX_CACHED_STATEMENT
        {
            Stmt::Oversized(Some(stmt))
        } else {
            Stmt::Cached(stmt)
        }
    }
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        if let Stmt::Oversized(stmt) = self
            && let Some(stmt) = stmt.take()
        {
            stmt.discard();
        }
    }
}

impl<'c> std::ops::Deref for Prepared<'c> {
    type Target = Statement<'c>;
    fn deref(&self) -> &Statement<'c> {
        match &self.stmt {
            Stmt::Cached(s) | Stmt::Oversized(Some(s)) => s,
            Stmt::Fresh(s) => s,
            Stmt::Oversized(None) => unreachable!("taken only when dropped"),
        }
    }
}

impl std::ops::DerefMut for Prepared<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.stmt {
            Stmt::Cached(s) | Stmt::Oversized(Some(s)) => s,
            Stmt::Fresh(s) => s,
            Stmt::Oversized(None) => unreachable!("taken only when dropped"),
        }
    }
}

/// Prepares `sql` through the connection's statement cache, except:
///
/// - client SQL naming litebridge's own tables: it could otherwise be served
///   the cached statement of the same text that a trusted store prepared (and
///   the authorizer allowed); prepared afresh, the authorizer sees it as
///   client SQL;
/// - client SQL that changes the schema: the authorizer runs only when a
///   statement is prepared, and what it notes about a schema change (see
///   [`schema_change`]) must be noted each time the statement runs, so such
///   a statement never stays in the cache.
pub(crate) fn prepare<'c>(conn: &'c Connection, sql: &str) -> Result<Prepared<'c>> {
    // SQLite stops reading at a NUL byte, so anything after one would be
    // silently ignored: refuse it instead.
    if let Some(at) = sql.bytes().position(|b| b == 0) {
        return Err(Error::invalid(
            "sql",
            format!("it contains a NUL byte at offset {at}"),
        ));
    }
    let client = guard::is_client();
    if !client {
        let stmt = match conn.prepare_cached(sql) {
            Ok(stmt) => stmt,
            // Refused by the authorizer: a trigger or view on litebridge's
            // own tables, made by another process (no request can), which
            // may have dropped it since. SQLite reads a connection's schema
            // again only when one of its statements starts a transaction,
            // and a statement that fails to prepare never does: the writer
            // refused every cache write until some client statement ran
            // (review 211). Read again, and prepared once more.
            Err(e)
                if e.sqlite_error_code()
                    == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) =>
            {
                read_schema_again(conn);
                conn.prepare_cached(sql)?
            }
            Err(e) => return Err(e.into()),
        };
        return Ok(Prepared {
            stmt: Stmt::cached(stmt),
            ddl: Ddl::default(),
            maintenance: false,
        });
    }
    // VACUUM attaches a database of its own (refused by the authorizer when
    // it runs), or fails inside the writer's transaction: say so plainly.
    if starts_with_keyword(sql, "VACUUM") {
        return Err(Error::Forbidden {
            message: "VACUUM and VACUUM INTO are not allowed through a request \
                      (no file is written by a request; use admin.backup for a copy)"
                .into(),
        });
    }
    let maintenance = is_maintenance(sql);
    guard::begin_prepare(maintenance);
    if !mentions_own_tables(sql) {
        let cached = conn.prepare_cached(sql).map_err(|e| several_or(sql, e))?;
        let ddl = guard::prepared_ddl();
        if !ddl.any {
            return Ok(Prepared {
                stmt: Stmt::cached(cached),
                ddl,
                maintenance,
            });
        }
        cached.discard();
        guard::begin_prepare(maintenance);
    }
    let fresh = conn.prepare(sql).map_err(|e| several_or(sql, e))?;
    let mut ddl = guard::prepared_ddl();
    if ddl.alters.is_some()
        && let Some(at) = comment_in_statement(sql)
    {
        return Err(Error::Forbidden {
            message: format!(
                "a comment in ALTER TABLE (at offset {at}) is not allowed through a request: \
                 SQLite copies it into the table's saved definition, where one can hide \
                 columns or constraints from the table (review 199); remove it"
            ),
        });
    }
    if ddl.alters.is_some() {
        ddl.drops_not_null = bare_words(sql)
            .windows(3)
            .any(|w| w == ["DROP", "NOT", "NULL"]);
    }
    if ddl.creates && external_content(sql) {
        return Err(Error::Forbidden {
            message: "full-text tables with a content= or content_rowid= option are not available through a request: \
                      their index can fall out of step with the table it reads (which the integrity \
                      check at start takes for damage), or read one of litebridge's"
                .into(),
        });
    }
    Ok(Prepared {
        stmt: Stmt::Fresh(fresh),
        ddl,
        maintenance,
    })
}

/// `e`, or the refusal of several statements when `sql` holds more than
/// one: rusqlite prepares the rest to find out, and its error (`no such
/// table: t` after `CREATE TABLE t(a);`) hid the mistake.
fn several_or(sql: &str, e: rusqlite::Error) -> Error {
    if matches!(e, rusqlite::Error::MultipleStatement) {
        return e.into();
    }
    match first_statement_end(sql) {
        Some(end) if !only_comments(&sql[end..]) => rusqlite::Error::MultipleStatement.into(),
        _ => e.into(),
    }
}

/// Where the first complete statement of `sql` ends (after its `;`), as
/// SQLite's own `sqlite3_complete` tells (a `;` in a string, a comment or a
/// trigger's body does not end it); looked for among the first 16 `;`s
/// (each look reads the text up to it, on the writer's thread: 64 of them
/// on a 1 MiB statement took 50-85 ms, review 142).
fn first_statement_end(sql: &str) -> Option<usize> {
    for (at, _) in sql.match_indices(';').take(16) {
        if crate::db::ffi::complete(&sql[..=at])? {
            return Some(at + 1);
        }
    }
    None
}

/// Whether `sql` holds nothing but white space, comments and `;`s.
fn only_comments(sql: &str) -> bool {
    let mut rest = sql;
    loop {
        match past_comments(rest) {
            Err(_) => return true, // a comment to the end
            Ok("") => return true,
            Ok(r) => match r.strip_prefix(';') {
                Some(after) => rest = after,
                None => return false,
            },
        }
    }
}

/// `sql` past the white space and comments it begins with, as SQLite's
/// tokenizer reads them (white space is its five ASCII characters); `Err`
/// with the offset of a `/*` comment that never closes (SQLite reads it to
/// the end).
fn past_comments(sql: &str) -> std::result::Result<&str, usize> {
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r');
    let mut rest = sql.trim_start_matches(space);
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.split_once("*/") {
                Some((_, r)) => rest = r,
                None => return Err(sql.len() - rest.len()),
            }
        } else {
            return Ok(rest);
        }
        rest = rest.trim_start_matches(space);
    }
}

/// Where the first comment of the statement `sql` holds begins, as
/// [`comment_at`] finds it, but for comments before its first word and
/// after its `;` (a migration's header, a note after it), which SQLite
/// copies nowhere.
fn comment_in_statement(sql: &str) -> Option<usize> {
    let start = match past_comments(sql) {
        Ok(rest) => sql.len() - rest.len(),
        Err(at) => return Some(at),
    };
    let end = first_statement_end(sql).unwrap_or(sql.len()).max(start);
    comment_at(&sql[start..end]).map(|at| start + at)
}

/// The words of `sql` outside its strings, quoted names and comments, in
/// upper case, in order. A word is what SQLite reads as one: ASCII letters,
/// digits, `_`, `$` and any byte of a character past ASCII.
fn bare_words(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let (mut words, mut word) = (Vec::new(), String::new());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 {
            // Past ASCII, the byte only keeps the word whole (`x$drop` and
            // `ödrop` are one word each); its case does not matter here.
            word.push(if b >= 0x80 {
                '\u{80}'
            } else {
                b.to_ascii_uppercase() as char
            });
            i += 1;
            continue;
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        let skipped = match b {
            b'\'' | b'"' | b'`' | b'[' => quoted_end(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => sql[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |n| i + 2 + n + 2),
            _ => i + 1,
        };
        i = skipped;
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Where the quoted run that starts at `start` (a `'`, `"`, backtick or
/// `[`) ends, just past its closing character (a doubled one stands for
/// itself, but in `[...]`); the end of `bytes` when it is never closed.
pub(crate) fn quoted_end(bytes: &[u8], start: usize) -> usize {
    let close = if bytes[start] == b'[' {
        b']'
    } else {
        bytes[start]
    };
    let mut i = start + 1;
    while let Some(&b) = bytes.get(i) {
        if b == close {
            if close != b']' && bytes.get(i + 1) == Some(&close) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// Where the first comment of `sql` begins (`--` or `/*`), outside its
/// strings and quoted names, as SQLite's tokenizer reads them; `None` when
/// it has none. A quote never closed runs to the end, as in SQLite.
pub(crate) fn comment_at(sql: &str) -> Option<usize> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' | b'`' | b'[' => i = quoted_end(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => return Some(i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Whether `sql` (a statement that creates something) gives a `content=` or
/// `content_rowid=` option: an external-content or contentless full-text
/// table, whose index `quick_check` reports as malformed once it is out of
/// step (and the start refuses a damaged file). Erring towards yes only
/// refuses a `CREATE`.
fn external_content(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("virtual") {
        return false;
    }
    let bytes = lower.as_bytes();
    let option = |name: &'static str| lower.match_indices(name).collect::<Vec<_>>();
    let mut found = option("content");
    found.extend(option("content_rowid"));
    found.into_iter().any(|(at, word)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let starts_word = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'));
        // `content=x`, `content = x`, `"content"=x`, ...
        let rest = lower[at + word.len()..].trim_start_matches(|c: char| {
            c.is_ascii_whitespace() || matches!(c, '"' | '\'' | '`' | ']')
        });
        starts_word && rest.starts_with('=')
    })
}

/// Whether `sql` is `ANALYZE` or `PRAGMA optimize`, whose own work reads and
/// clears SQLite's planner statistics. Erring towards yes is harmless: neither
/// statement returns those rows to its caller.
fn is_maintenance(sql: &str) -> bool {
    starts_with_keyword(sql, "ANALYZE")
        || (starts_with_keyword(sql, "PRAGMA") && sql.to_ascii_lowercase().contains("optimize"))
}

/// Whether `sql` contains `litebridge_` in any letter case.
pub(crate) fn mentions_own_tables(sql: &str) -> bool {
    let (p, s) = (guard::OWN_PREFIX.as_bytes(), sql.as_bytes());
    // Only where an `l` starts (on every read: kept to one fast scan).
    memchr::memchr2_iter(b'l', b'L', s).any(|at| {
        s.get(at..at + p.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(p))
    })
}

/// Binds `params` to every parameter of `stmt`, refusing missing or unknown ones.
pub(crate) fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> Result<()> {
    let count = stmt.parameter_count();
    match params {
        Params::None if count == 0 => Ok(()),
        Params::None => Err(Error::wrong_parameter_count(count, 0)),
        Params::Positional(values) => {
            if values.len() != count {
                return Err(Error::wrong_parameter_count(count, values.len()));
            }
            for (i, v) in values.iter().enumerate() {
                if is_nan(v) {
                    return Err(nan(format!("params[{i}]")));
                }
                stmt.raw_bind_parameter(i + 1, v)?;
            }
            Ok(())
        }
        Params::Named(pairs) => {
            let mut bound = vec![false; count + 1];
            for (name, v) in pairs {
                let index = find_parameter(stmt, name)?.ok_or_else(|| {
                    Error::invalid(
                        name.clone(),
                        "the statement has no parameter of this name".to_owned(),
                    )
                })?;
                // `a` and `:a` (or `:a` given twice) bind one parameter:
                // which value it took would depend on their order.
                if bound[index] {
                    return Err(Error::invalid(
                        name.clone(),
                        "names a parameter that another name given already binds",
                    ));
                }
                if is_nan(v) {
                    return Err(nan(name.clone()));
                }
                stmt.raw_bind_parameter(index, v)?;
                bound[index] = true;
            }
            if let Some(missing) = (1..=count).find(|&i| !bound[i]) {
                let name = stmt
                    .parameter_name(missing)
                    .map_or_else(|| format!("?{missing}"), str::to_owned);
                return Err(Error::invalid(
                    name,
                    "no value was given for this parameter",
                ));
            }
            Ok(())
        }
    }
}

fn is_nan(v: &Value) -> bool {
    matches!(v, Value::Real(f) if f.is_nan())
}

/// A NaN given to SQLite, which would store NULL in its place (a value
/// never comes back changed).
fn nan(param: String) -> Error {
    Error::invalid(
        param,
        "is NaN, which SQLite cannot store (it would be NULL): store NULL, or the text 'NaN'",
    )
}

fn find_parameter(stmt: &rusqlite::Statement<'_>, name: &str) -> Result<Option<usize>> {
    if name.starts_with([':', '@', '$']) {
        return Ok(stmt.parameter_index(name)?);
    }
    for prefix in [':', '@', '$'] {
        if let Some(i) = stmt.parameter_index(&format!("{prefix}{name}"))? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// SQLite's "string or blob too big" as the error a caller acts on.
fn too_big(conn: &Connection, e: Error) -> Error {
    match e.sqlite_codes() {
        Some((SQLITE_TOOBIG, _)) => Error::TooLarge {
            what: "a value the statement built (text or blob; db.max_result_bytes)".into(),
            limit: conn
                .limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)
                .map_or(0, |n| n.max(0) as u64),
        },
        _ => e,
    }
}

/// Runs a read-only statement and collects up to `max_rows` rows, and at
/// most `max_bytes` bytes of values (past it: `too_large`, before another
/// row is kept).
pub(crate) fn query(
    conn: &Connection,
    sql: &str,
    params: &Params,
    max_rows: Option<usize>,
    max_bytes: usize,
) -> Result<Rows> {
    query_rows(conn, sql, params, max_rows, max_bytes).map_err(|e| too_big(conn, e))
}

/// Runs a statement of the stores that writes and returns rows (an upsert
/// with `RETURNING`), on the writer's connection.
pub(crate) fn query_writing(conn: &Connection, sql: &str, params: &Params) -> Result<Rows> {
    let before = conn.total_changes();
    let rows = collect_rows(prepare(conn, sql)?, params, None, usize::MAX);
    if refused_on_an_old_schema(conn, before, &rows) {
        read_schema_again(conn);
        return collect_rows(prepare(conn, sql)?, params, None, usize::MAX);
    }
    rows
}

fn query_rows(
    conn: &Connection,
    sql: &str,
    params: &Params,
    max_rows: Option<usize>,
    max_bytes: usize,
) -> Result<Rows> {
    let stmt = prepare(conn, sql)?;
    // sqlite3_stmt_readonly() is conservative about pragmas (`PRAGMA
    // journal_mode` reads as a write); pragma assignments on a read connection
    // are refused by the authorizer and the connection is read-only anyway, so
    // this check only has to give writes a helpful message.
    if !stmt.readonly() && !starts_with_keyword(sql, "PRAGMA") {
        return Err(Error::ReadOnly {
            message: "this statement writes; queries run read-only statements only (use execute for writes)"
                .into(),
        });
    }
    collect_rows(stmt, params, max_rows, max_bytes)
}

fn collect_rows(
    mut stmt: Prepared<'_>,
    params: &Params,
    max_rows: Option<usize>,
    max_bytes: usize,
) -> Result<Rows> {
    bind(&mut stmt, params)?;
    collect(
        &mut stmt,
        max_rows,
        max_bytes,
        "the query's result",
        "; db.max_result_bytes, or ask for fewer rows with max_rows",
    )
    .map(|(rows, _)| rows)
}

/// Steps `stmt` (bound already) through its rows, keeping up to
/// `max_rows` and refusing past `max_bytes` of values (`what` names the
/// rows, `advice` follows the count in the error); with the bytes counted.
fn collect(
    stmt: &mut Statement<'_>,
    max_rows: Option<usize>,
    max_bytes: usize,
    what: &str,
    advice: &str,
) -> Result<(Rows, usize)> {
    let limit = max_rows.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut truncated = false;
    let mut bytes: usize = 0;
    let mut ncols = None;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        if out.len() == limit {
            truncated = true;
            break;
        }
        // Read at the first step: SQLite prepares a statement again there
        // when the schema changed since (a cached `SELECT *` after a column
        // was dropped had read a column that was gone: review 199).
        let ncols = *ncols.get_or_insert_with(|| row.as_ref().column_count());
        let mut values = Vec::with_capacity(ncols);
        for i in 0..ncols {
            let value = heap::lenient(|| row.get_ref(i))?;
            // Counted before it is copied out of SQLite.
            bytes += crate::value::cost(value);
            if bytes > max_bytes {
                return Err(Error::TooLarge {
                    what: format!("{what} ({} rows so far{advice})", out.len()),
                    limit: max_bytes as u64,
                });
            }
            values.push(Value::from_ref(value));
        }
        out.push(values);
    }
    drop(rows);
    // Named as the statement that ran (prepared again or not).
    let columns = (0..stmt.column_count())
        .map(|i| stmt.column_name(i).map(str::to_owned))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    bytes += columns.iter().map(String::len).sum::<usize>();
    if bytes > max_bytes {
        return Err(Error::TooLarge {
            what: format!("{what} ({} rows{advice})", out.len()),
            limit: max_bytes as u64,
        });
    }
    Ok((
        Rows {
            columns,
            rows: out,
            truncated,
        },
        bytes,
    ))
}

/// Whether the first keyword of `sql`, after spaces and comments, is `keyword`.
fn starts_with_keyword(sql: &str, keyword: &str) -> bool {
    past_comments(sql)
        .unwrap_or_default()
        .get(..keyword.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// What becomes of the rows a write returns (`RETURNING`, or a `SELECT`
/// run as a write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returned {
    /// Kept in its result, up to the writer's `max_result_bytes`.
    Keep,
    /// Stepped through (`execute_many`'s rows).
    Discard,
}

/// Runs one statement for its effect, keeping any rows it returns
/// (`RETURNING`), and reports the changes.
pub(crate) fn execute(conn: &Connection, sql: &str, params: &Params) -> Result<ExecResult> {
    let mut stmt = prepare(conn, sql)?;
    execute_prepared(conn, &mut stmt, params, Returned::Keep)
}

/// As [`execute`], with a statement already prepared.
///
/// A write's changes are made by its first step, whatever becomes of its
/// rows: rows past `max_result_bytes` fail it with changes made, which the
/// writer undoes as any failed write's (see `group_commit`).
pub(crate) fn execute_prepared(
    conn: &Connection,
    stmt: &mut Prepared<'_>,
    params: &Params,
    returned: Returned,
) -> Result<ExecResult> {
    bind(stmt, params)?;
    if stmt.maintenance {
        // Run again from the writer's statement slot: the flag is the
        // request's, not the statement's.
        guard::begin_prepare(true);
    }
    let before = conn.total_changes();
    let ddl = stmt.ddl.clone();
    // A schema statement returns no rows of its own: the column SQLite's
    // `ADD CONSTRAINT` shows (its look at the rows, `sqlite_fail(...)`) is
    // not a result.
    let keep = returned == Returned::Keep && stmt.column_count() > 0 && !ddl.any;
    let run = |stmt: &mut Statement<'_>| -> Result<Option<Box<Rows>>> {
        if keep {
            // A request's statements share the limit (a batch of many).
            let (rows, bytes) = collect(
                stmt,
                None,
                guard::result_left(),
                "the rows the write returned",
                "; db.max_result_bytes, for all of a request's statements; nothing of the write was kept",
            )?;
            guard::returned(bytes);
            Ok(Some(Box::new(rows)))
        } else {
            let mut rows = stmt.raw_query();
            while rows.next()?.is_some() {}
            Ok(None)
        }
    };
    let schema = ddl.any;
    let mut result = if schema {
        schema_change(conn, ddl, || run(stmt))
    } else {
        run(stmt)
    };
    if !schema && refused_on_an_old_schema(conn, before, &result) {
        read_schema_again(conn);
        result = run(stmt);
    }
    let returning = result.map_err(|e| too_big(conn, e))?;
    // sqlite3_changes() keeps the count of the last INSERT/UPDATE/DELETE, so a
    // CREATE or a SELECT would report the previous statement's count.
    let changed = conn.total_changes() != before;
    Ok(ExecResult {
        changes: if changed { conn.changes() } else { 0 },
        last_insert_rowid: conn.last_insert_rowid(),
        returning,
    })
}

/// Whether `result`, of a statement that changed nothing, is one of
/// litebridge's own statements refused by the authorizer: perhaps on an old
/// copy of the schema. A statement prepared before another process made a
/// trigger on litebridge's tables is prepared again as it runs, against
/// the connection's copy of the schema, which keeps the trigger after that
/// process dropped it (see `prepare`; review 213 found `state.save` refused
/// until some other write read the schema again). Nothing of it ran (the
/// authorizer acts only as a statement is prepared): the caller runs it once
/// more after [`read_schema_again`].
fn refused_on_an_old_schema<T>(conn: &Connection, before: u64, result: &Result<T>) -> bool {
    !guard::is_client()
        && conn.total_changes() == before
        && matches!(
            result,
            Err(Error::Forbidden { .. }
                | Error::Sql {
                    code: rusqlite::ffi::SQLITE_AUTH,
                    ..
                })
        )
}

/// Has SQLite read `conn`'s schema again if another connection changed it
/// since (a statement on it that starts a read transaction compares the
/// file's schema cookie with its own). Nothing happens when that fails:
/// the caller's statement fails as before.
fn read_schema_again(conn: &Connection) {
    let _ = conn.query_row(
        "SELECT count(*) FROM main.sqlite_schema WHERE 0",
        [],
        |_| Ok(()),
    );
}

/// Runs a client statement that changes the schema, on the writer.
///
/// Before it: a statement that creates or alters is refused while the schema
/// is at its limits (`DbConfig::max_schema_objects`, `max_schema_bytes`), and
/// undone if it took the schema past them (an `ADD COLUMN` with a large
/// default): every connection re-reads the whole schema after a change, so
/// its size is everyone's latency.
///
/// Around it: a savepoint, and the statement is undone when afterwards
///
/// - litebridge's namespace changed: SQLite tells the authorizer only the old
///   name of a rename, so `ALTER TABLE t RENAME TO litebridge_x` can only be
///   caught by looking (left in place, such a table would be adopted by a
///   later migration, or shadow one of litebridge's tables);
/// - a temporary object exists: `CREATE TRIGGER temp.t ... ON main.x` is
///   reported to the authorizer in `main`;
/// - a client table has a foreign key to one of litebridge's tables: its
///   cascades would run client triggers inside litebridge's own statements,
///   and `foreign_key_check` would answer questions about litebridge's rows;
/// - two columns spell one `table.column` name that did not before
///   ([`spelled_twice`]): the integrity check could not tell them apart;
/// - an `ALTER TABLE` changed the table's columns in a way the check would
///   report, or that changes what its indexes and generated columns read
///   ([`altered_columns_hold`]): a column named `true` or `false` added,
///   renamed to or dropped; a column added, or made `NOT NULL`, that reads
///   NULL; a new column name where the table's schema holds a double-quoted
///   string.
///
/// An `ALTER TABLE` runs with double-quoted strings read as SQLite reads
/// them by default, so that SQLite's own test of the schema takes what
/// another program left in other tables; every other statement reads them
/// as names only (`open.rs`).
fn schema_change<T>(conn: &Connection, ddl: Ddl, run: impl FnOnce() -> Result<T>) -> Result<T> {
    let sql = guard::internal_sql();
    let Some(limits) = guard::schema_limits() else {
        // Not on the writer (a read connection refuses the statement anyway).
        return run();
    };
    if ddl.creates || ddl.alters.is_some() {
        schema_within(conn, sql, limits, true)?;
    }
    let altered = ddl.alters.as_deref();
    // The table's columns and schema as they were, for what the change did.
    let table_before = match altered {
        Some(table) => Some(guard::internal(|| {
            Ok::<_, Error>(TableBefore {
                columns: columns_of(conn, table)?,
                indexes: indexes_of(conn, table)?,
                schema: table_schema(conn, table)?,
            })
        })?),
        None => None,
    };
    let internal = |text: &str| -> Result<()> {
        guard::internal(|| conn.prepare_cached(text)?.execute([]).map(drop))?;
        Ok(())
    };
    let own_objects = || -> Result<Option<String>> {
        Ok(guard::internal(|| {
            conn.prepare_cached(&sql.own_objects)?
                .query_row([], |r| r.get::<_, Option<String>>(0))
        })?)
    };
    let before = (own_objects()?, guard::internal(|| spelled_twice(conn))?);
    internal(&sql.ddl_savepoint)?;
    // SQLite's own test that the schema still reads after an ALTER reads
    // every table as the connection would: with double-quoted strings
    // refused, one another program left anywhere in the file stopped every
    // rename and drop of every table (review 198). Its test after a rename
    // or a drop refuses them in the altered table either way; what a new
    // column name would change there is refused below (`altered_columns_hold`).
    let quotes_as_strings = |on: bool| {
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DDL, on)
            .map(drop)
            .map_err(Error::from)
    };
    if altered.is_some() {
        quotes_as_strings(true)?;
    }
    let result = run();
    // SQLite refuses this setting only for an option it does not know,
    // which this build does; were it refused, the change is undone and
    // the error returned (the connection may then read double quotes as
    // strings in the schema statements that follow).
    let restored = match altered {
        Some(_) => quotes_as_strings(false).map_err(|e| Error::Internal {
            message: format!("double quotes could not be made names again: {e}"),
        }),
        None => Ok(()),
    };
    if conn.is_autocommit() {
        // The statement took the whole transaction down with it; the savepoint went too.
        return result;
    }
    // Fail closed: a check that could not run refuses the change.
    let refused = match &result {
        Err(_) => restored.err(),
        Ok(_) => match restored.and_then(|()| refusal(conn, sql, before)) {
            Err(e) => Some(e),
            Ok(Some(message)) => Some(Error::Forbidden { message }),
            Ok(None) => {
                let added = match (altered, table_before) {
                    (Some(table), Some(before)) => guard::internal(|| {
                        altered_columns_hold(conn, table, &before, ddl.drops_not_null)
                    })
                    .err(),
                    _ => None,
                };
                // What it grew the schema to (an ALTER can add a large default).
                added.or_else(|| {
                    (ddl.creates || altered.is_some())
                        .then(|| schema_within(conn, sql, limits, false).err())
                        .flatten()
                })
            }
        },
    };
    if (result.is_err() || refused.is_some())
        && let Err(e) = internal(&sql.ddl_undo)
    {
        // Fail closed: a change that could not be undone must not commit
        // with the rest of the batch. Rolling the whole transaction back
        // makes group commit run the others again without it.
        let _ = guard::internal(|| conn.execute_batch("ROLLBACK"));
        return Err(e);
    }
    internal(&sql.ddl_release)?;
    match refused {
        Some(e) => Err(e),
        None => result,
    }
}

/// A table's columns, indexes and SQL (its own and its indexes'), as they
/// were before a client's `ALTER TABLE`.
struct TableBefore {
    columns: Vec<ColumnRow>,
    indexes: Vec<String>,
    schema: Vec<String>,
}

/// A column as `pragma_table_xinfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnRow {
    name: String,
    declared: String,
    not_null: bool,
    default: Option<String>,
    key: i64,
    hidden: i64,
}

impl ColumnRow {
    /// Whether `other` is this column renamed, or made or unmade `NOT NULL`:
    /// the one thing an `ALTER` changes of a column it keeps.
    fn changed_once(&self, other: &ColumnRow) -> bool {
        let renamed = ColumnRow {
            name: other.name.clone(),
            ..self.clone()
        };
        let nullness = ColumnRow {
            not_null: other.not_null,
            ..self.clone()
        };
        &renamed == other || &nullness == other
    }
}

/// The columns of `table` in `main`, hidden ones too.
fn columns_of(conn: &Connection, table: &str) -> Result<Vec<ColumnRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT name, type, \"notnull\", dflt_value, pk, hidden \
             FROM pragma_table_xinfo(?1, 'main')",
        )?
        .query_map([table], |r| {
            Ok(ColumnRow {
                name: r.get(0)?,
                declared: r.get(1)?,
                not_null: r.get(2)?,
                default: r.get(3)?,
                key: r.get(4)?,
                hidden: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// The indexes of `table` in `main`, each as one line of what
/// `pragma_index_list` says of it.
fn indexes_of(conn: &Connection, table: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT name || ' ' || \"unique\" || ' ' || origin || ' ' || partial \
             FROM pragma_index_list(?1, 'main') ORDER BY name",
        )?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Whether `after` is `before` with what one `ALTER TABLE` does to a
/// table's columns: a column added at the end, one dropped, one renamed,
/// one made or unmade `NOT NULL`, or nothing (a constraint added or
/// dropped, the table renamed). Anything more is a statement doing what
/// it does not say: SQLite copies text of the statement into the table's
/// saved definition, and a comment there hid columns and the table's
/// constraints (review 199).
fn one_alter(before: &[ColumnRow], after: &[ColumnRow]) -> bool {
    use std::cmp::Ordering;
    match after.len().cmp(&before.len()) {
        Ordering::Greater => after.len() == before.len() + 1 && after[..before.len()] == *before,
        Ordering::Less => {
            after.len() + 1 == before.len() && {
                let at = (0..after.len())
                    .find(|&i| before[i] != after[i])
                    .unwrap_or(after.len());
                before[at + 1..] == after[at..]
            }
        }
        Ordering::Equal => {
            let mut changed = before.iter().zip(after).filter(|(b, a)| b != a);
            match (changed.next(), changed.next()) {
                (None, _) => true,
                (Some((b, a)), None) => b.changed_once(a),
                _ => false,
            }
        }
    }
}

/// Words SQLite reads as a value while no column has their name, as it does
/// a double-quoted word: `true` and `false`. (`rowid`, `oid` and `_rowid_`,
/// the third such kind, SQLite itself keeps from being added, renamed to or
/// dropped.)
const LITERAL_NAMES: [&str; 2] = ["true", "false"];

/// Words that are a column's name only when quoted, and the clock's time
/// otherwise. SQLite writes a column's new name into the views, triggers
/// and `CHECK`s that name it, unquoted when the statement gave it so: a
/// column renamed `current_date` made them read the date, and later writes
/// stored it (review 200).
const CLOCK_NAMES: [&str; 3] = ["current_date", "current_time", "current_timestamp"];

/// Refuses what a client's `ALTER TABLE` did to the columns of `table`
/// (`before`: as they were) that the integrity check would report, or that
/// would change what the table's indexes and generated columns read:
///
/// - a column named `true` or `false` added, renamed to or dropped: the word
///   means the column while one has its name, and the value otherwise, so
///   an index on `a + true`, or one `WHERE true IS NULL`, stopped matching
///   its rows (review 198: "row 1 missing from index i"; a partial index
///   that no longer matched then let `ALTER COLUMN c SET NOT NULL` pass
///   over a NULL, which the check at start took for damage, and `serve
///   --recover` restored an older backup; a generated column renamed to
///   `true` read itself, and the file no longer opened);
/// - a column added that reads NULL under `NOT NULL` ([`added_column_holds`]);
/// - a column made `NOT NULL` (`ALTER COLUMN c SET NOT NULL`) that holds a
///   NULL, read without any index: SQLite's own look may use a partial
///   index, which a file another program changed may hold out of step;
/// - a column named `current_date`, `current_time` or `current_timestamp`
///   added or renamed to ([`CLOCK_NAMES`]);
/// - a column name new to the table where a double-quoted word of its
///   schema is, or may become, a string ([`added_column_reads_names`]).
fn altered_columns_hold(
    conn: &Connection,
    table: &str,
    before: &TableBefore,
    drops_not_null: bool,
) -> Result<()> {
    let after = columns_of(conn, table)?;
    if after.is_empty() {
        // Renamed (`RENAME TO`): its columns are as they were.
        return Ok(());
    }
    if !one_alter(&before.columns, &after) || indexes_of(conn, table)? != before.indexes {
        return Err(Error::Forbidden {
            message: format!(
                "the ALTER TABLE changed more of {table}'s columns or indexes than it names \
                 (one column added, dropped, renamed or made NOT NULL, or none); nothing was \
                 changed"
            ),
        });
    }
    let names = |columns: &[ColumnRow]| -> std::collections::HashSet<String> {
        columns
            .iter()
            .map(|c| c.name.to_ascii_lowercase())
            .collect()
    };
    let (was, is) = (names(&before.columns), names(&after));
    let dropped = after.len() < before.columns.len();
    for word in LITERAL_NAMES {
        let named = is.contains(word) && !was.contains(word);
        let unnamed = dropped && was.contains(word) && !is.contains(word);
        if named || unnamed {
            let what = if named { "add or rename to" } else { "drop" };
            return Err(Error::Sql {
                code: rusqlite::ffi::SQLITE_ERROR,
                extended_code: rusqlite::ffi::SQLITE_ERROR,
                message: format!(
                    "cannot {what} a column named {word} in {table}: SQLite reads the word as \
                     a value while no column has that name, so the table's indexes and \
                     generated columns would read something else; nothing was changed"
                ),
            });
        }
    }
    for word in CLOCK_NAMES {
        if is.contains(word) && !was.contains(word) {
            return Err(Error::Sql {
                code: rusqlite::ffi::SQLITE_ERROR,
                extended_code: rusqlite::ffi::SQLITE_ERROR,
                message: format!(
                    "cannot add or rename to a column named {word} in {table}: SQLite writes \
                     a new name into the views, triggers and checks that use the column, where \
                     {word} reads the clock; nothing was changed (choose another name)"
                ),
            });
        }
    }
    if after.len() > before.columns.len() {
        added_column_holds(conn, table)?;
    }
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    for ColumnRow {
        name: column,
        not_null,
        ..
    } in &after
    {
        let made_not_null = *not_null
            && before
                .columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(column) && !c.not_null);
        if !made_not_null {
            continue;
        }
        let holds_null = conn
            .prepare(&format!(
                "SELECT 1 FROM main.{} NOT INDEXED WHERE typeof({}) = 'null' LIMIT 1",
                quoted(table),
                quoted(column)
            ))?
            .exists([])?;
        if holds_null {
            return Err(Error::Sql {
                code: rusqlite::ffi::SQLITE_CONSTRAINT,
                extended_code: rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL,
                message: format!(
                    "NOT NULL constraint failed: {table}.{column} (a row holds NULL); nothing \
                     was changed"
                ),
            });
        }
    }
    if drops_not_null
        && !before
            .columns
            .iter()
            .zip(&after)
            .any(|(b, a)| b.not_null && !a.not_null)
        && table_schema(conn, table)?.first() != before.schema.first()
    {
        return Err(Error::Sql {
            code: rusqlite::ffi::SQLITE_ERROR,
            extended_code: rusqlite::ffi::SQLITE_ERROR,
            message: format!(
                "DROP NOT NULL left every column of {table} as NOT NULL as it was, and changed \
                 the table's definition elsewhere (SQLite takes the first NOT of the column's \
                 definition for its NOT NULL: of NOT DEFERRABLE, or one NOT NULL of two; a key \
                 column of a WITHOUT ROWID table stays NOT NULL); nothing was changed"
            ),
        });
    }
    if is.difference(&was).next().is_some() {
        added_column_reads_names(conn, table, &before.schema)?;
    }
    Ok(())
}

/// Refuses the column `ALTER TABLE ... ADD COLUMN` just gave `table` if it
/// is `NOT NULL` but reads NULL in the rows the
/// table already had: SQLite refuses the literal `DEFAULT NULL` only, and
/// checks the rows only for a `CHECK`, a `STRICT` table or a generated
/// column, so `DEFAULT (CAST(NULL AS INT))` or `DEFAULT -NULL` went
/// through. Every row older than a column reads its default, so the first
/// row says it for all; the integrity check reports each of them (`NULL
/// value in t.c`), which a check at start once took for damage (review 190).
fn added_column_holds(conn: &Connection, table: &str) -> Result<()> {
    let (column, not_null, hidden): (String, bool, i64) = conn
        .prepare_cached(
            "SELECT name, \"notnull\", hidden FROM pragma_table_xinfo(?1, 'main') \
             ORDER BY cid DESC LIMIT 1",
        )?
        .query_row([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    // A generated column's NOT NULL SQLite checks itself.
    if !not_null || hidden != 0 {
        return Ok(());
    }
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let reads_null: Option<bool> = conn
        .prepare(&format!(
            // `typeof`, not `IS NULL`: SQLite may answer that from the
            // column's NOT NULL without reading the row (review 195).
            "SELECT typeof({}) = 'null' FROM main.{} LIMIT 1",
            quoted(&column),
            quoted(table)
        ))?
        .query_row([], |r| r.get(0))
        .optional()?;
    if reads_null == Some(true) {
        return Err(Error::Sql {
            code: rusqlite::ffi::SQLITE_CONSTRAINT,
            extended_code: rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL,
            message: format!(
                "NOT NULL constraint failed: {table}.{column} (the column's default is NULL, \
                 and the table's rows would read it); nothing was changed"
            ),
        });
    }
    Ok(())
}

/// The SQL of `table` in `main` and of its indexes, as SQLite keeps it.
fn table_schema(conn: &Connection, table: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT sql FROM main.sqlite_schema WHERE tbl_name = ?1 COLLATE NOCASE \
             AND type IN ('table', 'index') AND sql IS NOT NULL \
             ORDER BY type = 'index'",
        )?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Refuses a column name a client's `ALTER TABLE` just gave `table` (a
/// column added or renamed) when a double-quoted word of the table's schema
/// is, or may become, a string.
///
/// SQLite reads a double-quoted word that names no column as a string, for
/// schemas it loads too. Client schema statements read double quotes as
/// names only (`SQLITE_DBCONFIG_DQS_DDL` off, `open.rs`), but `ADD COLUMN`
/// leaves its new column's `CHECK` and generated expression unread, and
/// reads no index. So `ADD COLUMN b AS (a || "x")` made `b` read
/// `a || 'x'`, an index on `b` stored that, and `ADD COLUMN x` then made `b`
/// read `a || x`: the index's entries no longer matched what it indexes,
/// and the whole check reported the sound file damaged ("row 1 missing from
/// index i"). An index or table already holding such a word (a file made
/// elsewhere) changes meaning the same way when a column of that name is
/// added, or renamed to it (SQLite's test after a rename finds nothing
/// wrong: the word is a column's name then).
///
/// `before` is the table's and its indexes' SQL from before the statement;
/// each is read again (the table as it is now, too) on a scratch database
/// in memory, with double quotes as names only. Only SQLite's own hint
/// for this case refuses; other errors (none expected: the same SQLite
/// took this SQL) refuse too, as every check here fails closed.
fn added_column_reads_names(conn: &Connection, table: &str, before: &[String]) -> Result<()> {
    let now: Option<String> = conn
        .prepare_cached(
            "SELECT sql FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type = 'table'",
        )?
        .query_row([table], |r| r.get(0))
        .optional()?;
    let scratch = || -> Result<Connection> {
        let c = Connection::open_in_memory()?;
        c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
        Ok(c)
    };
    let refused = |what: &str, e: rusqlite::Error| -> Error {
        let e = Error::from(e);
        Error::Sql {
            code: rusqlite::ffi::SQLITE_ERROR,
            extended_code: rusqlite::ffi::SQLITE_ERROR,
            message: format!(
                "{what}: {e}; litebridge reads a double-quoted word in a schema as a name, never \
                 a string, since adding a column of that name would change what it means \
                 (use single quotes for a string); nothing was changed"
            ),
        }
    };
    let then = scratch()?;
    for (i, sql) in before.iter().enumerate() {
        let what = if i == 0 {
            "the table as it was"
        } else {
            "its index"
        };
        then.execute_batch(sql)
            .map_err(|e| refused(&format!("a new column name in {table}: {what}"), e))?;
    }
    if let Some(sql) = now {
        scratch()?
            .execute_batch(&sql)
            .map_err(|e| refused(&format!("the column added to {table}"), e))?;
    }
    Ok(())
}

/// A client table with a foreign key to one of litebridge's tables, and that
/// table. Only tables whose SQL names `litebridge` can have one; each is
/// asked with the `PRAGMA` statement (a client table named like a
/// table-valued pragma function cannot stand in for it).
pub(crate) fn foreign_key_to_own(
    conn: &Connection,
    sql: &guard::InternalSql,
) -> Result<Option<(String, String)>> {
    let candidates: Vec<String> = conn
        .prepare_cached(&sql.foreign_refs)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for table in candidates {
        let pragma = format!(
            "PRAGMA main.foreign_key_list(\"{}\")",
            table.replace('"', "\"\"")
        );
        let mut stmt = conn.prepare(&pragma)?;
        let parents = stmt.query_map([], |r| r.get::<_, String>(2))?;
        for parent in parents {
            let parent = parent?;
            if parent
                .get(..OWN_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(OWN_PREFIX))
            {
                return Ok(Some((table, parent)));
            }
        }
    }
    Ok(None)
}

/// Refuses when the schema is at (`before`: before a statement that creates
/// or alters) or past (after it) `db.max_schema_objects` or
/// `db.max_schema_bytes`.
fn schema_within(
    conn: &Connection,
    sql: &guard::InternalSql,
    (max_objects, max_bytes): (usize, usize),
    before: bool,
) -> Result<()> {
    let (objects, bytes) = guard::internal(|| {
        conn.prepare_cached(&sql.schema_size)?
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
    })?;
    let (objects, bytes) = (objects as usize, bytes as usize);
    let over = |n: usize, max: usize| if before { n >= max } else { n > max };
    if over(objects, max_objects) {
        return Err(Error::TooLarge {
            what: format!("the schema ({objects} objects; db.max_schema_objects)"),
            limit: max_objects as u64,
        });
    }
    if over(bytes, max_bytes) {
        return Err(Error::TooLarge {
            what: format!("the schema's SQL ({bytes} bytes; db.max_schema_bytes)"),
            limit: max_bytes as u64,
        });
    }
    Ok(())
}

/// Each column of `main`'s tables whose `table.column` name another
/// column spells too, ASCII case aside (as the check's names are
/// matched), as (that name in lower case, its table). A pair needs a table
/// whose name holds a dot; without one nothing more is read. The columns
/// are read from `sqlite_schema`'s tables: `pragma_table_list` prepares
/// every view, a broken one again at each step (a schema change held the
/// writer for seconds: review 195).
fn spelled_twice(conn: &Connection) -> Result<std::collections::HashSet<(String, String)>> {
    let dotted: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM main.sqlite_schema \
             WHERE type = 'table' AND rootpage <> 0 AND instr(name, '.') > 0 LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    if dotted.is_none() {
        return Ok(Default::default());
    }
    let mut stmt = conn.prepare_cached(
        "WITH columns AS MATERIALIZED ( \
             SELECT lower(t.name || '.' || p.name) AS spelled, t.name AS tbl \
             FROM main.sqlite_schema AS t, pragma_table_xinfo(t.name, 'main') AS p \
             WHERE t.type = 'table' AND t.rootpage <> 0) \
         SELECT spelled, tbl FROM columns WHERE spelled IN \
             (SELECT spelled FROM columns GROUP BY spelled HAVING count(*) > 1)",
    )?;
    let members = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(members)
}

/// Why a schema change that ran must be undone, if it must; `before` is
/// what [`own_objects`](guard::InternalSql) and [`spelled_twice`] said
/// before it.
fn refusal(
    conn: &Connection,
    sql: &guard::InternalSql,
    before: (Option<String>, std::collections::HashSet<(String, String)>),
) -> Result<Option<String>> {
    guard::internal(|| -> Result<Option<String>> {
        let now: Option<String> = conn
            .prepare_cached(&sql.own_objects)?
            .query_row([], |r| r.get(0))?;
        if now != before.0 {
            return Ok(Some(format!(
                "names starting with {OWN_PREFIX} (litebridge's own tables) or pragma_, and the names \
                 of SQLite's table-valued functions (json_each, ...), are reserved; nothing was changed"
            )));
        }
        let temp: i64 = conn
            .prepare_cached(&sql.temp_objects)?
            .query_row([], |r| r.get(0))?;
        if temp > 0 {
            return Ok(Some(
                "temporary tables, views, indexes and triggers are not allowed through a request \
                 (a connection is shared by every caller); nothing was changed"
                    .to_owned(),
            ));
        }
        if let Some((table, parent)) = foreign_key_to_own(conn, sql)? {
            return Ok(Some(format!(
                "table {table} would have a foreign key to {parent}: litebridge's own tables \
                 cannot be referenced by client tables; nothing was changed"
            )));
        }
        // The integrity check names a column `table.column`: two that
        // spell it alike (`a` . `b.c` and `a.b` . `c`) cannot be told apart
        // in its lines, and one's value, the data's, was taken for damage
        // (review 193). Only a new pair is refused: one a file already
        // held (another program's) does not stop every schema change.
        // Each member compared, not their count: a statement could swap a
        // pair for one of its own (review 196).
        let now = spelled_twice(conn)?;
        if let Some((spelled, _)) = now.difference(&before.1).min() {
            return Ok(Some(format!(
                "two columns would both be named {spelled} (a table and a column whose names \
                 hold a dot), which the integrity check cannot tell apart; nothing was changed"
            )));
        }
        Ok(None)
    })
}

#[cfg(test)]
mod tests {
    use super::mentions_own_tables;

    #[test]
    fn a_comment_is_found_outside_strings_and_quoted_names_only() {
        use super::comment_at;
        for (sql, at) in [
            ("ALTER TABLE t ADD COLUMN d INT -- x", Some(31)),
            ("ALTER TABLE t ALTER COLUMN a SET NOT NULL /* x", Some(42)),
            ("ALTER TABLE t ADD COLUMN d DEFAULT '--x' /**/", Some(41)),
            (
                "ALTER TABLE t ADD COLUMN \"a--b\" DEFAULT 'it''s /* no'",
                None,
            ),
            ("ALTER TABLE t ADD COLUMN `x``/*` DEFAULT 1", None),
            ("ALTER TABLE t ADD COLUMN [a--b] DEFAULT 1", None),
            ("ALTER TABLE t ADD COLUMN [a]]--b", Some(29)),
            (
                "ALTER TABLE t ADD COLUMN d DEFAULT 'never closed -- no",
                None,
            ),
            ("ALTER TABLE t ADD COLUMN d DEFAULT 1-1 / 2 - -3", None),
            ("ALTER TABLE t ADD COLUMN d DEFAULT x'2d2d'", None),
        ] {
            assert_eq!(comment_at(sql), at, "{sql}");
        }
    }

    #[test]
    fn comments_before_an_alter_and_after_its_end_are_not_its_own() {
        use super::comment_in_statement;
        for (sql, at) in [
            ("-- migration 0042\nALTER TABLE t ADD COLUMN d INT", None),
            ("/* v2 */ ALTER TABLE t RENAME COLUMN b TO b2", None),
            (
                "  /* a */ -- b\n /**/ALTER TABLE t ADD COLUMN e INT;  -- note",
                None,
            ),
            ("ALTER TABLE t ADD COLUMN e INT; /* note */", None),
            ("-- head\nALTER TABLE t ADD COLUMN d INT -- x", Some(39)),
            ("ALTER TABLE t ADD COLUMN d INT /* x */;", Some(31)),
            ("ALTER TABLE t ALTER COLUMN a SET NOT NULL /* x", Some(42)),
            ("/* never closed ALTER TABLE t ADD COLUMN d", Some(0)),
            ("ALTER TABLE t ADD COLUMN d DEFAULT ';' -- x", Some(39)),
        ] {
            assert_eq!(comment_in_statement(sql), at, "{sql}");
        }
    }

    #[test]
    fn leading_comments_and_white_space_are_read_as_sqlite_reads_them() {
        use super::{only_comments, past_comments, starts_with_keyword};
        assert_eq!(past_comments(" -- a\n/* b */\tVACUUM"), Ok("VACUUM"));
        assert_eq!(past_comments("\r\n/* open"), Err(2));
        // White space is SQLite's five ASCII characters: a no-break space
        // begins a word, as SQLite reads it.
        assert_eq!(past_comments("\u{a0}VACUUM"), Ok("\u{a0}VACUUM"));
        assert!(starts_with_keyword("/**/vacuum", "VACUUM"));
        assert!(!starts_with_keyword("\u{a0}VACUUM", "VACUUM"));
        assert!(!starts_with_keyword("/* VACUUM", "VACUUM"));
        assert!(only_comments(" ; -- x\n ;/* y */;"));
        assert!(only_comments("; /* never closed"));
        assert!(!only_comments("; SELECT 1"));
    }

    #[test]
    fn bare_words_are_read_outside_strings_names_and_comments() {
        let words = |sql: &str| super::bare_words(sql).join(" ");
        assert_eq!(
            words("alter table t Alter column [drop not null] drop  not\nnull"),
            "ALTER TABLE T ALTER COLUMN DROP NOT NULL"
        );
        assert_eq!(
            words("ADD COLUMN d DEFAULT 'drop not null' -- drop not null\n"),
            "ADD COLUMN D DEFAULT"
        );
        assert_eq!(words("a\"drop\"b /* not */ c_1`x``y`"), "A B C_1");
        assert_eq!(words("x 'never closed drop"), "X");
        // SQLite's own words: `$` and characters past ASCII belong to one.
        assert_eq!(words("ADD x$drop NOT NULL"), "ADD X$DROP NOT NULL");
        assert_eq!(words("ADD \u{f6}drop NOT NULL").split(' ').count(), 4);
    }

    #[test]
    fn an_alter_changes_one_column_or_none() {
        use super::{ColumnRow, one_alter};
        let col = |name: &str, not_null: bool| ColumnRow {
            name: name.into(),
            declared: "TEXT".into(),
            not_null,
            default: None,
            key: 0,
            hidden: 0,
        };
        let t = [col("a", false), col("b", false), col("c", true)];
        let with = |f: &dyn Fn(&mut Vec<ColumnRow>)| {
            let mut v = t.to_vec();
            f(&mut v);
            v
        };
        // What one ALTER does.
        assert!(one_alter(&t, &t));
        assert!(one_alter(&t, &with(&|v| v.push(col("d", false)))));
        for i in 0..3 {
            assert!(one_alter(&t, &with(&|v| drop(v.remove(i)))), "drop {i}");
        }
        assert!(one_alter(&t, &with(&|v| v[1].name = "x".into())));
        assert!(one_alter(&t, &with(&|v| v[0].not_null = true)));
        assert!(one_alter(&t, &with(&|v| v[2].not_null = false)));
        // More than it says (review 199: columns hidden by a comment, a
        // key's constraint dropped with a column added).
        assert!(!one_alter(&t, &with(&|v| v.truncate(1))));
        assert!(!one_alter(
            &t,
            &with(&|v| {
                v.remove(1);
                v[1].name = "b".into();
            })
        ));
        assert!(!one_alter(
            &t,
            &with(&|v| {
                v[0].key = 1;
                v.push(col("d", false));
            })
        ));
        assert!(!one_alter(&t, &with(&|v| v.insert(0, col("d", false)))));
        assert!(!one_alter(
            &t,
            &with(&|v| {
                v[1].name = "x".into();
                v[1].not_null = true;
            })
        ));
        assert!(!one_alter(
            &t,
            &with(&|v| {
                v[0].not_null = true;
                v[1].not_null = true;
            })
        ));
        assert!(!one_alter(&t, &with(&|v| v[1].declared = "INT".into())));
        assert!(!one_alter(&t, &with(&|v| v[1].default = Some("1".into()))));
        assert!(!one_alter(&t, &with(&|v| v.swap(0, 1))));
    }

    #[test]
    fn a_statement_holding_megabytes_is_not_kept_in_the_cache() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let used = || crate::db::ffi::statement_memory(&conn);
        drop(super::prepare(&conn, "SELECT 1").unwrap());
        let small = used();
        assert!(small > 0, "a small statement stays cached");
        let list = vec!["1"; 100_000].join(",");
        let big = super::prepare(&conn, &format!("SELECT 1 IN ({list})")).unwrap();
        assert!(used() > small + super::MAX_CACHED_STATEMENT);
        drop(big);
        assert_eq!(used(), small, "the big one was finalized, not cached");
    }

    #[test]
    fn own_tables_are_seen_in_any_case_anywhere() {
        for sql in [
            "litebridge_keys",
            "SELECT * FROM main.LiteBridge_Keys",
            "SELECT 1 /* llitebridge_ */",
            "xlitebridge_",
        ] {
            assert!(mentions_own_tables(sql), "{sql}");
        }
        for sql in [
            "",
            "l",
            "litebridge",
            "SELECT lite_bridge_keys",
            "litebridge-keys",
        ] {
            assert!(!mentions_own_tables(sql), "{sql}");
        }
    }
}
