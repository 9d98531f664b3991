//! `instr` and `replace` in linear time, in place of SQLite's own.
//!
//! # Why
//!
//! A deadline is enforced between the steps of a statement (the progress
//! handler); a step that is one long function call cannot be interrupted
//! until it returns. SQLite's `instr(X, Y)` and `replace(X, Y, Z)` compare
//! the pattern at every position of the string, which takes `len(X) *
//! len(Y)` in the worst case: with values of tens of megabytes (the length
//! limit), one call runs for hours and holds the writer, or a read thread,
//! for all of it. These versions search with `memchr`'s two-way `memmem`,
//! in time linear in the lengths, and return exactly what SQLite's return:
//!
//! - `instr`: NULL if either argument is; 1 for an empty needle; else the
//!   1-based position of the first match, in bytes when both are blobs and
//!   otherwise in characters, where (as SQLite does) only positions that
//!   start a UTF-8 character count and are tried; 0 when there is none.
//! - `replace`: NULL if the string or the pattern is; the string unchanged
//!   (as text) when the pattern is empty or starts with a NUL byte; NULL if
//!   the replacement is; else every
//!   non-overlapping match, left to right, replaced; the result is text,
//!   refused as too big past the length limit.
//!
//! Arguments that are numbers are turned into text by SQLite's own rules
//! (`CAST(x AS TEXT)` on an in-memory connection of this thread), then
//! searched the same way. Tested against SQLite's own on random inputs
//! (`tests/functions_property.rs`).

use std::cell::RefCell;

use memchr::memmem::Finder;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{ToSql, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, Error as SqlError};

const SQLITE_TOOBIG: i32 = 18;

/// Replaces `instr` and `replace` on `conn`; `max_len` is its length limit.
pub(crate) fn install(conn: &Connection, max_len: usize) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("instr", 2, flags, instr_function)?;
    conn.create_scalar_function("replace", 3, flags, move |ctx| {
        replace_function(ctx, max_len)
    })?;
    Ok(())
}

/// Bytes returned as TEXT exactly (SQLite's `replace` keeps bytes that are
/// not UTF-8 as they are, and so does this).
struct RawText(Vec<u8>);

impl ToSql for RawText {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(&self.0)))
    }
}

/// An argument's bytes, and whether it is a blob; `None` for NULL. A number
/// is turned into text by SQLite's own rules (as its functions do).
fn bytes(v: ValueRef<'_>) -> rusqlite::Result<Option<(std::borrow::Cow<'_, [u8]>, bool)>> {
    use std::borrow::Cow;
    Ok(match v {
        ValueRef::Null => None,
        ValueRef::Text(t) => Some((Cow::Borrowed(t), false)),
        ValueRef::Blob(b) => Some((Cow::Borrowed(b), true)),
        number => Some((Cow::Owned(as_text(number)?), false)),
    })
}

fn instr_function(ctx: &mut Context<'_>) -> rusqlite::Result<RawOrValue> {
    let (Some((hay, h_blob)), Some((needle, n_blob))) =
        (bytes(ctx.get_raw(0))?, bytes(ctx.get_raw(1))?)
    else {
        return Ok(RawOrValue::Value(Value::Null));
    };
    Ok(RawOrValue::Value(Value::Integer(instr(
        &hay,
        &needle,
        !(h_blob && n_blob),
    ))))
}

fn replace_function(ctx: &mut Context<'_>, max_len: usize) -> rusqlite::Result<RawOrValue> {
    // In SQLite's order: the string, the pattern, an empty pattern (the
    // string itself, whatever the replacement), then the replacement.
    let (Some((x, _)), Some((pattern, _))) = (bytes(ctx.get_raw(0))?, bytes(ctx.get_raw(1))?)
    else {
        return Ok(RawOrValue::Value(Value::Null));
    };
    if pattern.first().is_none_or(|&b| b == 0) {
        return Ok(RawOrValue::Raw(RawText(x.into_owned())));
    }
    let Some((rep, _)) = bytes(ctx.get_raw(2))? else {
        return Ok(RawOrValue::Value(Value::Null));
    };
    replace(&x, &pattern, &rep, max_len).map(|out| RawOrValue::Raw(RawText(out)))
}

/// What the functions return: text as bytes (kept exactly), or a value.
enum RawOrValue {
    Raw(RawText),
    Value(Value),
}

impl ToSql for RawOrValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            RawOrValue::Raw(r) => r.to_sql(),
            RawOrValue::Value(v) => v.to_sql(),
        }
    }
}

/// SQLite's `instr` on bytes (`text`: not both blobs), in linear time.
pub(crate) fn instr(hay: &[u8], needle: &[u8], text: bool) -> i64 {
    if needle.is_empty() {
        return 1;
    }
    // A position SQLite tries: the first, and each that starts a character.
    let tried = |i: usize| !text || i == 0 || hay[i] & 0xC0 != 0x80;
    let finder = Finder::new(needle);
    let mut start = 0;
    while hay.len() - start >= needle.len() {
        let Some(at) = finder.find(&hay[start..]) else {
            return 0;
        };
        let at = start + at;
        if tried(at) {
            let steps = (1..=at).filter(|&i| tried(i)).count();
            return 1 + steps as i64;
        }
        // A match SQLite never looks at: go on from the next position it tries.
        start = at + 1;
        while start < hay.len() && !tried(start) {
            start += 1;
        }
        if start >= hay.len() {
            return 0;
        }
    }
    0
}

/// SQLite's `replace` on bytes, in linear time.
pub(crate) fn replace(
    x: &[u8],
    pattern: &[u8],
    rep: &[u8],
    max_len: usize,
) -> rusqlite::Result<Vec<u8>> {
    if pattern.first().is_none_or(|&b| b == 0) {
        return Ok(x.to_vec());
    }
    let mut out = Vec::with_capacity(x.len());
    let mut last = 0;
    for at in Finder::new(pattern).find_iter(x) {
        out.extend_from_slice(&x[last..at]);
        out.extend_from_slice(rep);
        last = at + pattern.len();
        if out.len() + (x.len() - last) > max_len {
            // No message of our own: SQLite's "string or blob too big"
            // keeps the code (a message would turn it into SQLITE_ERROR).
            return Err(SqlError::SqliteFailure(
                rusqlite::ffi::Error::new(SQLITE_TOOBIG),
                None,
            ));
        }
    }
    out.extend_from_slice(&x[last..]);
    Ok(out)
}

/// An argument bound as it came (text that is not UTF-8 included).
struct Arg<'a>(ValueRef<'a>);

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.0))
    }
}

thread_local! {
    /// A connection that turns numbers into text the way SQLite does.
    static BUILTINS: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// A number as SQLite writes it as text (`CAST(x AS TEXT)`).
fn as_text(number: ValueRef<'_>) -> rusqlite::Result<Vec<u8>> {
    BUILTINS.with(|b| {
        let mut b = b.borrow_mut();
        if b.is_none() {
            *b = Some(Connection::open_in_memory()?);
        }
        let conn = b.as_ref().expect("opened above");
        let mut stmt = conn.prepare_cached("SELECT CAST(?1 AS TEXT)")?;
        stmt.query_row([Arg(number)], |r| Ok(r.get_ref(0)?.as_bytes()?.to_vec()))
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instr_counts_characters_and_only_tries_their_starts() {
        assert_eq!(instr(b"hello", b"l", true), 3);
        assert_eq!(instr("héllo".as_bytes(), b"l", true), 3);
        assert_eq!(instr("héllo".as_bytes(), b"l", false), 4);
        assert_eq!(instr(b"abc", b"", true), 1);
        assert_eq!(instr(b"", b"a", true), 0);
        // A match starting inside a character is never tried.
        assert_eq!(instr(b"x\x80\x80", b"\x80", true), 0);
        assert_eq!(instr(b"x\x80\x80", b"\x80", false), 2);
        assert_eq!(instr(b"\x80\x80", b"\x80", true), 1);
    }

    #[test]
    fn replace_is_left_to_right_and_non_overlapping() {
        let r = |x: &str, p: &str, z: &str| {
            String::from_utf8(replace(x.as_bytes(), p.as_bytes(), z.as_bytes(), 1 << 20).unwrap())
                .unwrap()
        };
        assert_eq!(r("aaaa", "aa", "b"), "bb");
        assert_eq!(r("abc", "", "x"), "abc");
        assert_eq!(r("abcabc", "bc", "XYZ"), "aXYZaXYZ");
        assert!(replace(b"aaaa", b"a", b"bbbb", 8).is_err());
    }

    #[test]
    fn the_worst_cases_take_milliseconds() {
        let hay = vec![b'a'; 4_000_000];
        let mut needle = vec![b'a'; 2_000_000];
        needle.push(b'b');
        let started = std::time::Instant::now();
        assert_eq!(instr(&hay, &needle, true), 0);
        assert_eq!(
            replace(&hay, &needle, b"x", usize::MAX).unwrap().len(),
            hay.len()
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
