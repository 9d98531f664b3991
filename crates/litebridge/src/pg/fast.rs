//! One-message reads (`postgres.one_message_reads`, off by default): a
//! clients' read whose statement its connection knows already, sent as one
//! simple query and answered with one `ReadyForQuery`.
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

use std::fmt::Write as _;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::types::{Param, real_text};
use crate::value::Value;

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
            Value::Text(String::from_utf8_lossy(&[byte]).into_owned())
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
            Value::Text("\0".into())
        );
        assert_eq!(
            cell(&Type::CHAR, Some("\\303")).unwrap(),
            Value::Text("\u{FFFD}".into())
        );
        assert_eq!(
            cell(&Type::CHAR, Some("\\")).unwrap(),
            Value::Text("\\".into())
        );
        assert!(cell(&Type::BYTEA, Some("\\x0")).is_err());
        assert!(cell(&Type::BYTEA, Some("\\9")).is_err());
    }
}
