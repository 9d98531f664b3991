//! One-message requests (`postgres.one_message_reads` and
//! `postgres.one_message_writes`, off by default): a clients' read whose
//! statement its connection knows already, sent as one simple query and
//! answered with one `ReadyForQuery`; a clients' write whose statements its
//! connection knows already, sent with its `BEGIN` as one simple query,
//! then committed as on the long way.
//!
//! # Design
//!
//! A read runs in `BEGIN READ ONLY` ... `COMMIT`, and `BEGIN` must be
//! answered before the statement runs: behind a `BEGIN` that failed (a
//! cancel from another session of the clients' role, a `statement_timeout`
//! the caller set), a statement sent on its own would run read-write in a
//! transaction of its own. Through tokio-postgres's extended protocol every
//! request ends in its own `Sync`, so the statement cannot travel with its
//! `BEGIN`: a read took two round trips, and PostgreSQL woke, answered and
//! flushed three times for it.
//!
//! PostgreSQL's simple query protocol runs the statements of one message in
//! order and skips the rest at the first error, so
//! `BEGIN READ ONLY; EXECUTE ...; COMMIT; UNLISTEN *; CLOSE ALL` runs the
//! statement inside its read-only transaction or not at all, in one round
//! trip (pgbench on the loopback cluster: 35,500 reads/s in this shape
//! against 17,100 in three messages and 39,700 for the bare `SELECT`).
//!
//! - **The clients' SQL never enters the message.** Its first read on a
//!   connection goes the long way (`super::PgDatabase::read_on`), whose
//!   Parse (one statement only) prepares it as a named statement of the
//!   extended protocol. Later reads run that same statement with SQL's
//!   `EXECUTE`, which reaches the protocol's statements too: one analysis
//!   and one plan, shared with the long way. (A `PREPARE` of the SQL under
//!   a name of litebridge's was tried first; a review showed that a
//!   function created between the two analyses could make them differ.)
//! - **Values travel as dollar-quoted literals** (`$l$...$l$`, or a random
//!   tag the value does not contain), whose reading depends on no setting: not
//!   `standard_conforming_strings`, which a caller can turn off in its own
//!   session, nor the client encoding (a tag's `$` cannot be the second
//!   byte of a character in any encoding PostgreSQL takes from a client).
//!   Each value is encoded first exactly as the long way binds it
//!   ([`super::types::Param`]), then written as the text its type's input
//!   function reads back to the same value; a value that would not bind
//!   (or holds a NUL, or is a `name` the input function would cut short)
//!   goes the long way, which answers its error.
//! - **Results come as text**, read by the statement's column types:
//!   booleans, integers, floats, bytea (hex or escape
//!   form) and `"char"` are parsed to the values the binary reading gives;
//!   every other readable type is PostgreSQL's text already. The session's
//!   settings that decide that text are fixed at connect (`TimeZone`,
//!   `DateStyle`, `extra_float_digits`, `bytea_output`); a caller that
//!   changes them in its own session sees its own settings in its results.
//! - **PostgreSQL runs an `EXECUTE` to its end before it sends a row**, so
//!   an error of a row past a read's `max_rows` comes with no rows: a read
//!   with `max_rows` whose statement failed goes the long way again (which
//!   answers the rows asked for) when its time left allows, and that
//!   statement goes the long way on that connection from then on.
//! - **The values are in the query's text**, which every session of the
//!   clients' role (every other API key) can read in `pg_stat_activity`,
//!   and which the server logs when the read fails: hence off by default.
//! - **Only reads on the primary** go this way: a replica's read carries a
//!   guard whose refusal must be told from the statement's own errors.
//!
//! A write took three round trips the same way: `BEGIN` (with the Parse of
//! statements not prepared yet), the statements once it was answered, and
//! `COMMIT` with the tidy-up. `BEGIN; EXECUTE ...; EXECUTE ...;` in one
//! simple query takes the first two together, for the same reason a read
//! can: nothing runs behind a `BEGIN` that failed. `COMMIT` stays a message
//! of its own, sent once every statement answered, so each answer keeps
//! the long way's meaning: an error before it means nothing committed, and
//! only a `COMMIT` sent and not answered is `outcome_unknown`. Sending it
//! in the same message would make every lost connection and every
//! deadline an unknown outcome. A write with an idempotency key goes the
//! long way: its claim is read before its statements run. Its statements
//! are noted the same way, on a named caller's write the long way.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::Object;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_postgres::SimpleQueryMessage as M;
use tokio_postgres::Statement as PgStatement;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::error::from_pg;
use super::types::{Param, real_text};
use super::{
    Done, MOST_KNOWN_SQL, PgDatabase, Prepared, Shape, Token, WAL_INSERT_POSITION, found_prepared,
    names, primary_token, readable_columns, statements_in, too_large, value_size,
};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::value::{ExecResult, Rows, Value};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// The name of tokio-postgres's statement, as SQL's `EXECUTE` names it (a
/// quoted identifier). tokio-postgres keeps the name to itself but for its
/// `Debug` form, read here; a form this does not read (a newer
/// tokio-postgres) gives `None`, and every read goes the long way (the
/// tests count one-message reads, so they would fail where a PostgreSQL
/// server is at hand, as in CI).
pub(super) fn statement_name(stmt: &tokio_postgres::Statement) -> Option<String> {
    let debug = format!("{stmt:?}");
    let rest = debug.strip_prefix("Statement { name: \"")?;
    let name = rest.split_once('"')?.0;
    // tokio-postgres's names: `s` and a number from a counter of the
    // process's, never used twice.
    let plain =
        name.len() > 1 && name.starts_with('s') && name[1..].bytes().all(|b| b.is_ascii_digit());
    plain.then(|| format!("\"{name}\""))
}

/// `EXECUTE name(values...)`, or `None` when a value must go the long way.
pub(super) fn execute(name: &str, params: &[Type], values: &[Value]) -> Option<String> {
    if params.len() != values.len() {
        return None;
    }
    let mut sql = String::with_capacity(32 + values.len() * 16);
    sql.push_str("EXECUTE ");
    sql.push_str(name);
    for (i, (v, ty)) in values.iter().zip(params).enumerate() {
        sql.push_str(if i == 0 { "(" } else { ", " });
        match literal(v, ty).ok()? {
            None => sql.push_str("NULL"),
            Some(text) => quote(&mut sql, &text),
        }
    }
    if !values.is_empty() {
        sql.push(')');
    }
    Some(sql)
}

/// `text` dollar-quoted with a tag it does not contain: `l`, or, for a
/// text that holds `$l`, a random one (each try one pass over the text: a
/// value cannot make the choice slow).
fn quote(out: &mut String, text: &str) {
    let mut tag = String::from("l");
    while text.contains(&format!("${tag}")) {
        tag = format!("l{:016x}", random());
    }
    let _ = write!(out, "${tag}${text}${tag}$");
}

/// 64 random bits (the standard library's per-process hash keys).
fn random() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

/// The text a parameter of type `ty` reads back as the value the long way
/// binds (`None` for NULL). An error when the value would not bind, or
/// holds a NUL (which a simple query cannot carry).
fn literal(v: &Value, ty: &Type) -> Result<Option<String>, BoxError> {
    let mut buf = BytesMut::new();
    let param = Param(v);
    if let IsNull::Yes = param.to_sql(ty, &mut buf)? {
        return Ok(None);
    }
    let raw = &buf[..];
    let text = match param.encode_format(ty) {
        tokio_postgres::types::Format::Text => std::str::from_utf8(raw)?.to_owned(),
        tokio_postgres::types::Format::Binary => match *ty {
            Type::BOOL => if raw == [1] { "true" } else { "false" }.to_owned(),
            Type::INT2 => i16::from_be_bytes(raw.try_into()?).to_string(),
            Type::INT4 => i32::from_be_bytes(raw.try_into()?).to_string(),
            Type::INT8 => i64::from_be_bytes(raw.try_into()?).to_string(),
            Type::OID => u32::from_be_bytes(raw.try_into()?).to_string(),
            Type::FLOAT4 => real_text(f32::from_be_bytes(raw.try_into()?)),
            Type::FLOAT8 => real_text(f64::from_be_bytes(raw.try_into()?)),
            Type::BYTEA => {
                let mut s = String::with_capacity(2 + raw.len() * 2);
                s.push_str("\\x");
                for b in raw {
                    let _ = write!(s, "{b:02x}");
                }
                s
            }
            // jsonb's binary form is a version byte, then the text.
            Type::JSONB => std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned(),
            _ => std::str::from_utf8(raw)?.to_owned(),
        },
    };
    if text.contains('\0') {
        return Err("a NUL cannot travel in a simple query".into());
    }
    // `name` keeps 63 bytes: its input function cuts a longer text short
    // where its binary one refuses it.
    if *ty == Type::NAME && text.len() >= 64 {
        return Err("a name of 64 bytes or more".into());
    }
    Ok(Some(text))
}

/// One cell of a text result, as the binary reading gives it.
pub(super) fn cell(ty: &Type, text: Option<&str>) -> Result<Value, BoxError> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    Ok(match *ty {
        Type::BOOL => match text {
            "t" => Value::Integer(1),
            "f" => Value::Integer(0),
            _ => return Err(format!("{text:?} is not a boolean").into()),
        },
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => Value::Integer(text.parse()?),
        Type::FLOAT4 => real(f64::from(text.parse::<f32>()?)),
        Type::FLOAT8 => real(text.parse::<f64>()?),
        Type::BYTEA => Value::Blob(bytea(text)?),
        Type::VOID => Value::Null,
        // `"char"`: one byte, printed as nothing for 0 and as `\ooo` past
        // ASCII; read as the binary reading reads the byte.
        Type::CHAR => {
            let byte = match text.as_bytes() {
                [] => 0,
                [b] => *b,
                [b'\\', octal @ ..] if octal.len() == 3 => {
                    u8::from_str_radix(std::str::from_utf8(octal)?, 8)?
                }
                _ => return Err(format!("{text:?} is not a \"char\"").into()),
            };
            Value::Text(super::types::char_text(byte))
        }
        _ => Value::Text(text.to_owned()),
    })
}

/// NaN is read as the text `NaN`, as the binary reading gives it.
fn real(f: f64) -> Value {
    if f.is_nan() {
        Value::Text("NaN".into())
    } else {
        Value::Real(f)
    }
}

/// bytea's text: `\x` and hex digits, or the escape form (`\\` and `\ooo`).
fn bytea(text: &str) -> Result<Vec<u8>, BoxError> {
    if let Some(hex) = text.strip_prefix("\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd bytea hex".into());
        }
        return hex
            .as_bytes()
            .chunks(2)
            .map(|pair| {
                let digit = |b: u8| (b as char).to_digit(16).ok_or("bad bytea hex");
                Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
            })
            .collect();
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = b
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
                .ok_or("bad bytea escape")?;
            out.push(octal);
            i += 4;
        }
    }
    Ok(out)
}

impl PgDatabase {
    /// Reads of the clients' SQL answered in one message: a statement their
    /// connection had prepared already (the module's design note).
    pub fn one_message_reads(&self) -> u64 {
        self.inner.one_message_reads.load(Ordering::Relaxed)
    }

    /// Writes of the clients' SQL whose `BEGIN` and statements went in one
    /// message (the module's design note).
    pub fn one_message_writes(&self) -> u64 {
        self.inner.one_message_writes.load(Ordering::Relaxed)
    }

    /// The statement and the `EXECUTE` of a one-message read: when `conn`
    /// prepared `p`'s statement for them, its columns are of types a read
    /// gives (one noted by a write may not be), and its values travel as
    /// literals.
    pub(super) fn one_message(&self, conn: &Object, p: &Prepared) -> Option<(PgStatement, String)> {
        let (name, stmt) = lock(&self.inner.known)
            .get(&Object::id(conn))?
            .get(&p.sql)?
            .clone()?;
        readable_columns(&stmt).ok()?;
        let execute = execute(&name, stmt.params(), &p.values)?;
        Some((stmt, execute))
    }

    /// The message of a one-message write: when `conn` prepared every
    /// statement (for `Shape::Rows`, the one statement of every row), and
    /// every value travels as a literal. The values are written with the
    /// notes let go: a large write holds no other request up.
    pub(super) fn write_message(
        &self,
        conn: &Object,
        statements: &[Prepared],
    ) -> Option<WriteInOne> {
        let mut sql = String::new();
        // The statement of the SQL before, looked up again only when the
        // SQL changes (`execute_many`'s rows share theirs).
        let mut noted: Option<(&str, (Arc<str>, PgStatement))> = None;
        for p in statements {
            if noted.as_ref().is_none_or(|(before, _)| *before != p.sql) {
                let found = lock(&self.inner.known)
                    .get(&Object::id(conn))?
                    .get(&p.sql)?
                    .clone()?;
                noted = Some((&p.sql, found));
            }
            let (_, (name, stmt)) = noted.as_ref()?;
            // A statement that returns rows (`RETURNING`) goes the long way,
            // where they are read as typed values.
            if !stmt.columns().is_empty() {
                return None;
            }
            sql.push_str(&execute(name, stmt.params(), &p.values)?);
            sql.push_str("; ");
        }
        Some(WriteInOne {
            statements: sql,
            count: statements.len(),
        })
    }

    /// Notes `stmt`, tokio-postgres's statement of `sql` on `conn`, for
    /// one-message reads of `sql` there: unless `sql` is longer than
    /// [`MOST_KNOWN_SQL`], goes the long way there already, or the
    /// connection has [`PgConfig::statement_cache`] noted.
    pub(super) fn remember(&self, conn: &Object, sql: &str, stmt: &PgStatement) {
        if sql.len() > MOST_KNOWN_SQL
            || lock(&self.inner.known)
                .get(&Object::id(conn))
                .is_some_and(|k| k.contains_key(sql))
        {
            return;
        }
        let Some(name) = statement_name(stmt) else {
            return;
        };
        let mut known = lock(&self.inner.known);
        // Entries of connections the pool dropped on its own: past four
        // per connection, start over (a live connection notes its
        // statements again at their next read the long way).
        if known.len() > 4 * self.inner.config.connections {
            known.clear();
        }
        let mine = known.entry(Object::id(conn)).or_default();
        if mine.contains_key(sql) || mine.len() >= self.inner.config.statement_cache {
            return;
        }
        mine.insert(sql.to_owned(), Some((name.into(), stmt.clone())));
    }

    /// Sends `sql` the long way on `conn` from now on.
    pub(super) fn forget(&self, conn: &Object, sql: &str) {
        if let Some(k) = lock(&self.inner.known).get_mut(&Object::id(conn)) {
            k.insert(sql.to_owned(), None);
        }
    }

    /// One read in one message: `BEGIN READ ONLY`, the statement's
    /// `EXECUTE`, the position when `track`, [`END_READ`]. The rows, the
    /// primary's position and whether the session may be kept (no
    /// statement prepared with SQL was found in it), or `None` when the
    /// read must go the long way after all (its transaction rolled back).
    /// `begun` is set once `BEGIN` is answered.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_in_one(
        &self,
        conn: &Object,
        client_sql: &str,
        (stmt, execute): &(PgStatement, String),
        track: bool,
        max_rows: usize,
        max_bytes: usize,
        (deadline, timeout): (Instant, Duration),
        begun: &AtomicBool,
    ) -> Result<Option<(Rows, Option<Token>, bool)>> {
        let started = Instant::now();
        let mut sql = String::with_capacity(execute.len() + 128);
        sql.push_str(if self.inner.faults.take_fail_read_begin() {
            // Fails as the server does a cancelled BEGIN.
            "SELECT 1/0; "
        } else {
            "BEGIN READ ONLY; "
        });
        sql.push_str(execute);
        sql.push_str("; ");
        if track {
            sql.push_str(WAL_INSERT_POSITION);
            sql.push_str("; ");
        }
        sql.push_str(self.inner.end_read);
        // BEGIN, the statement, the position, then END_READ's.
        let statements = 2 + usize::from(track) + statements_in(self.inner.end_read);
        let mut clean = true;
        let columns = stmt.columns();
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = false;
        let mut position = Vec::new();
        let answered = answer(conn, &sql, timeout, |i, m| {
            match (i, m) {
                // From here on a failure may be the statement's doing.
                (0, M::CommandComplete(_)) => begun.store(true, Ordering::Relaxed),
                (1, M::RowDescription(described)) => same_columns(&described, columns)?,
                (1, M::Row(_)) if rows.len() == max_rows => truncated = true,
                (1, M::Row(row)) => rows.push(read_text_row(&row, columns, &mut bytes, max_bytes)?),
                (2, m @ M::Row(_)) if track => position.push(m),
                (i, m) if found_prepared(i, statements, &m) => clean = false,
                _ => {}
            }
            Ok(())
        })
        .await;
        if let Some(failed) = answered.failed {
            // PostgreSQL runs an `EXECUTE` to its end before it sends a
            // row, so an error of a row past the cut comes with no rows,
            // where the long way answers the rows asked for (SQLite stops
            // at the cut). A read that asked for at most `max_rows` rows
            // whose statement failed goes the long way (in its time left,
            // if that is more than this try took), and its statement goes
            // the long way on this connection from now on. A cancel
            // (another session's, or the caller's own `statement_timeout`)
            // is not run again.
            let statement_failed =
                failed.at == 1 && failed.code.is_some_and(|c| c != SqlState::QUERY_CANCELED);
            if statement_failed && max_rows != usize::MAX {
                conn.batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| from_pg(&e, timeout))?;
                self.forget(conn, client_sql);
                if deadline.saturating_duration_since(Instant::now()) > started.elapsed() {
                    // Parsed again the long way: a statement the caller
                    // dropped, or one whose result DDL changed, would fail
                    // the same way from the cache.
                    conn.statement_cache.remove(client_sql, &[]);
                    return Ok(None);
                }
            }
            return Err(failed.error);
        }
        answered.all(statements, "read")?;
        let position = if track {
            primary_token(&position)
        } else {
            None
        };
        self.inner.one_message_reads.fetch_add(1, Ordering::Relaxed);
        Ok(Some((
            Rows {
                columns: names(columns),
                rows,
                truncated,
            },
            position,
            clean,
        )))
    }

    /// A write's `BEGIN` and statements in one message ([`WriteInOne`]):
    /// the statements' outcomes, or the error of the first that failed (of
    /// `BEGIN`, when it was refused: then nothing ran). Its `COMMIT` is the
    /// caller's to send, as on the long way.
    pub(super) async fn write_in_one(
        &self,
        conn: &Object,
        write: &WriteInOne,
        shape: Shape,
        timeout: Duration,
    ) -> Result<Vec<Done>> {
        let mut sql = String::with_capacity(write.statements.len() + 16);
        sql.push_str(if self.inner.faults.take_fail_begin() {
            // Fails as the server does a cancelled BEGIN.
            "SELECT 1/0; "
        } else {
            "BEGIN; "
        });
        sql.push_str(&write.statements);
        let mut done: Vec<Done> = Vec::with_capacity(write.count);
        // No statement here returns rows (see `write_message`).
        let answered = answer(conn, &sql, timeout, |i, m| {
            if let (1.., M::CommandComplete(changes)) = (i, m) {
                done.push(Done {
                    result: ExecResult {
                        changes,
                        last_insert_rowid: 0,
                        returning: None,
                    },
                    token: None,
                });
            }
            Ok(())
        })
        .await;
        if let Some(failed) = answered.failed {
            return Err(match failed.at {
                0 => failed.error,
                _ if failed.lost => failed.error,
                _ if write.count > 1 => failed.error.at(shape.what(), failed.at - 1),
                _ => failed.error,
            });
        }
        answered.all(1 + write.count, "write")?;
        self.inner
            .one_message_writes
            .fetch_add(1, Ordering::Relaxed);
        Ok(done)
    }
}

/// The statements of a clients' write (`Shape::Each` or `Shape::Rows`)
/// whose connection prepared them all, with values that travel as
/// literals: `EXECUTE`s sent with its `BEGIN` in one message.
pub(super) struct WriteInOne {
    /// `EXECUTE ...; ` for each statement (or row).
    pub(super) statements: String,
    /// How many.
    count: usize,
}

/// How a message of several statements was answered ([`answer`]).
pub(super) struct Answered {
    /// The statements answered (a `CommandComplete` each).
    pub(super) done: usize,
    pub(super) failed: Option<Failed>,
}

/// The first error in the answer to a message of several statements.
pub(super) struct Failed {
    pub(super) error: Error,
    /// The statement's index in the message.
    pub(super) at: usize,
    /// The server's code; none for an error found in its answer here, or
    /// a lost connection.
    pub(super) code: Option<SqlState>,
    /// The connection was lost (or the message could not be sent): the
    /// statements from `at` on may have run, or not.
    pub(super) lost: bool,
    /// The message was handed to the connection, and may have reached the
    /// server; `false` when the connection had closed before: none of it
    /// ran.
    pub(super) sent: bool,
}

impl Answered {
    /// An error unless all of the message's `statements` were answered.
    fn all(&self, statements: usize, what: &str) -> Result<()> {
        if self.done == statements {
            return Ok(());
        }
        Err(Error::Internal {
            message: format!(
                "a one-message {what} was answered for {} statements of {statements}",
                self.done
            ),
        })
    }
}

/// Sends `sql`, a simple query of several statements, and reads its
/// answer: each message goes to `each` with the index of the statement it
/// belongs to, until the first error, the server's (which skipped the rest
/// of the message) or `each`'s. The answer is read to its end all the same
/// (the caller's deadline tells the server to stop): a connection dropped
/// half way through would leave its server process sending the rest
/// unwatched. A lost connection ends the reading at once (its stream
/// answers its error for ever), as a failure with `lost` set.
pub(super) async fn answer(
    conn: &Object,
    sql: &str,
    timeout: Duration,
    mut each: impl FnMut(usize, M) -> Result<()>,
) -> Answered {
    let mut answered = Answered {
        done: 0,
        failed: None,
    };
    let lost = |e: &tokio_postgres::Error, at, sent| Failed {
        error: from_pg(e, timeout),
        at,
        code: None,
        lost: true,
        sent,
    };
    // tokio-postgres fails here only when the connection's task has ended
    // (or the text cannot be encoded): the message was never sent.
    let stream = match conn.simple_query_raw(sql).await {
        Ok(stream) => stream,
        Err(e) => {
            answered.failed = Some(lost(&e, 0, false));
            return answered;
        }
    };
    futures_util::pin_mut!(stream);
    while let Some(m) = stream.next().await {
        match m {
            Err(e) if e.code().is_none() => {
                answered.failed = Some(lost(&e, answered.done, true));
                return answered;
            }
            _ if answered.failed.is_some() => {}
            Err(e) => {
                answered.failed = Some(Failed {
                    error: from_pg(&e, timeout),
                    at: answered.done,
                    code: e.code().cloned(),
                    lost: false,
                    sent: true,
                });
            }
            Ok(m) => {
                let complete = matches!(m, M::CommandComplete(_));
                if let Err(error) = each(answered.done, m) {
                    answered.failed = Some(Failed {
                        error,
                        at: answered.done,
                        code: None,
                        lost: false,
                        sent: true,
                    });
                } else if complete {
                    answered.done += 1;
                }
            }
        }
    }
    answered
}

/// An error unless a statement prepared for one-message requests answered
/// the columns it was prepared with.
pub(super) fn same_columns(
    described: &[tokio_postgres::SimpleColumn],
    columns: &[tokio_postgres::Column],
) -> Result<()> {
    let same = described.len() == columns.len()
        && described
            .iter()
            .zip(columns)
            .all(|(d, c)| d.name() == c.name());
    if same {
        return Ok(());
    }
    Err(Error::Internal {
        message: format!(
            "the statement prepared for one-message requests answered other columns than its \
             own ({} for {})",
            described.len(),
            columns.len()
        ),
    })
}

/// One row of a one-message read, read from its text by the statement's
/// column types, its size added to `bytes` and refused past `max_bytes`.
pub(super) fn read_text_row(
    row: &tokio_postgres::SimpleQueryRow,
    columns: &[tokio_postgres::Column],
    bytes: &mut usize,
    max_bytes: usize,
) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let text = row.try_get(i).map_err(|e| from_pg(&e, Duration::ZERO))?;
        let v = cell(c.type_(), text).map_err(|e| {
            Error::invalid("sql", format!("column {:?} cannot be read: {e}", c.name()))
        })?;
        *bytes += value_size(&v);
        out.push(v);
    }
    if *bytes > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_as_their_types_read_them_back() {
        let lit = |v: Value, ty: Type| literal(&v, &ty).expect("binds");
        assert_eq!(lit(Value::Integer(7), Type::INT8).as_deref(), Some("7"));
        assert_eq!(lit(Value::Integer(1), Type::BOOL).as_deref(), Some("true"));
        assert_eq!(
            lit(Value::Text("f".into()), Type::BOOL).as_deref(),
            Some("false")
        );
        assert_eq!(lit(Value::Real(0.1), Type::FLOAT4).as_deref(), Some("0.1"));
        assert_eq!(lit(Value::Real(0.1), Type::FLOAT8).as_deref(), Some("0.1"));
        assert_eq!(
            lit(Value::Real(f64::INFINITY), Type::FLOAT8).as_deref(),
            Some("Infinity")
        );
        assert_eq!(
            lit(Value::Blob(vec![0, 255]), Type::BYTEA).as_deref(),
            Some("\\x00ff")
        );
        assert_eq!(
            lit(Value::Text("{\"a\":1}".into()), Type::JSONB).as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(lit(Value::Integer(3), Type::NUMERIC).as_deref(), Some("3"));
        assert_eq!(lit(Value::Null, Type::INT8), None);
        // What would not bind goes the long way, which names the error.
        assert!(literal(&Value::Blob(vec![1]), &Type::INT8).is_err());
        assert!(literal(&Value::Integer(1 << 40), &Type::INT4).is_err());
        assert!(literal(&Value::Text("a\0b".into()), &Type::TEXT).is_err());
        assert!(literal(&Value::Text("n".repeat(64)), &Type::NAME).is_err());
        assert!(literal(&Value::Text("n".repeat(63)), &Type::NAME).is_ok());
    }

    #[test]
    fn a_literal_cannot_end_early_whatever_it_holds() {
        let sql = |t: &str| execute("s1", &[Type::TEXT], &[Value::Text(t.into())]).unwrap();
        assert_eq!(sql("a'b\\"), "EXECUTE s1($l$a'b\\$l$)");
        // A value holding the tag's start gets another tag, which it does
        // not hold.
        for value in ["x$l$); COMMIT", "$l", "$l$l1", "$l$ $l0 $la"] {
            let sql = sql(value);
            let inner = sql
                .strip_prefix("EXECUTE s1(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap();
            let tag_end = inner[1..].find('$').unwrap() + 2;
            let tag = &inner[..tag_end];
            assert!(tag.starts_with("$l") && tag.len() == 19, "{tag}");
            assert_eq!(inner, format!("{tag}{value}{tag}"));
            assert!(!value.contains(&tag[..tag.len() - 1]));
        }
        assert_eq!(execute("s2", &[], &[]).unwrap(), "EXECUTE s2");
        // Choosing a tag takes one pass over a value built to make it slow.
        let hostile: String = (0..200_000).map(|i| format!("$l{i}")).collect();
        let started = std::time::Instant::now();
        execute("s3", &[Type::TEXT], &[Value::Text(hostile)]).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn text_results_read_as_binary_ones_do() {
        assert_eq!(cell(&Type::BOOL, Some("t")).unwrap(), Value::Integer(1));
        assert_eq!(
            cell(&Type::INT8, Some("-9223372036854775808")).unwrap(),
            Value::Integer(i64::MIN)
        );
        assert_eq!(
            cell(&Type::FLOAT4, Some("0.1")).unwrap(),
            Value::Real(f64::from(0.1f32))
        );
        assert_eq!(
            cell(&Type::FLOAT8, Some("NaN")).unwrap(),
            Value::Text("NaN".into())
        );
        assert_eq!(
            cell(&Type::FLOAT8, Some("-Infinity")).unwrap(),
            Value::Real(f64::NEG_INFINITY)
        );
        assert_eq!(
            cell(&Type::BYTEA, Some("\\x00ff")).unwrap(),
            Value::Blob(vec![0, 255])
        );
        assert_eq!(
            cell(&Type::BYTEA, Some("a\\\\\\000")).unwrap(),
            Value::Blob(vec![b'a', b'\\', 0])
        );
        assert_eq!(cell(&Type::TEXT, None).unwrap(), Value::Null);
        // `"char"` as its byte: nothing is 0, `\ooo` past ASCII.
        assert_eq!(
            cell(&Type::CHAR, Some("")).unwrap(),
            Value::Text(String::new())
        );
        assert_eq!(
            cell(&Type::CHAR, Some("\\303")).unwrap(),
            Value::Text("\\303".into())
        );
        assert_eq!(
            cell(&Type::CHAR, Some("\\")).unwrap(),
            Value::Text("\\".into())
        );
        assert!(cell(&Type::BYTEA, Some("\\x0")).is_err());
        assert!(cell(&Type::BYTEA, Some("\\9")).is_err());
    }
}
