//! SQLite's functions that can run long in one call, replaced: `instr`,
//! `replace`, two-argument `trim`/`ltrim`/`rtrim` and `unhex` in linear
//! time, `json_patch`/`jsonb_patch` bounded, (in `patterns`) `like` and
//! `glob` interruptible, and (in `snippet`) FTS5's `snippet()` linear.
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
//! - `trim`, `unhex`: see [`trim`] and [`unhex`]; SQLite compares each
//!   character of the set at every place (`len(X) * len(Y)`), these look
//!   each one up in a table, whose memory counts in the request's budget.
//! - `json_patch`: SQLite's own (on this thread's plain connection), refused
//!   past [`MAX_PATCH_WORK`].
//!
//! Arguments that are numbers are turned into text by SQLite's own rules
//! (`CAST(x AS TEXT)` on an in-memory connection of this thread), then
//! searched the same way. Tested against SQLite's own on random inputs
//! (`tests/functions_property.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use memchr::memmem::Finder;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{ToSql, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, Error as SqlError};

use crate::db::guard::Ticker;
use crate::db::heap::{self, Charge};
use crate::db::patterns::read_utf8;

use rusqlite::ffi::SQLITE_TOOBIG;

/// Argument `i` of a function call, read without risking a refused
/// allocation while SQLite terminates a text (see `heap::lenient`).
pub(crate) fn arg<'a>(ctx: &'a Context<'_>, i: usize) -> ValueRef<'a> {
    heap::lenient(|| ctx.get_raw(i))
}

/// Replaces SQLite's functions that can run long in one call on `conn`:
/// `instr` and `replace` (linear here), `like`, `glob`, two-argument
/// `trim`/`ltrim`/`rtrim` and `unhex` (interruptible, see `patterns` and
/// [`trim`]), `json_patch` (refused past [`MAX_PATCH_WORK`]) and FTS5's
/// `snippet()` (linear, see `snippet`).
/// `max_len` and `max_pattern` are the connection's length and LIKE
/// pattern limits; `halt` is the database's (see `guard::install`).
pub(crate) fn install(
    conn: &Connection,
    max_len: usize,
    max_pattern: usize,
    halt: Arc<AtomicBool>,
) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("instr", 2, flags, instr_function)?;
    conn.create_scalar_function("replace", 3, flags, move |ctx| {
        replace_function(ctx, max_len)
    })?;
    for (name, glob, args) in [("like", false, 2), ("like", false, 3), ("glob", true, 2)] {
        let halt = halt.clone();
        conn.create_scalar_function(name, args, flags, move |ctx| {
            crate::db::patterns::function(ctx, glob, max_pattern, &halt)
        })?;
    }
    for (name, side) in [
        ("trim", Side::Both),
        ("ltrim", Side::Left),
        ("rtrim", Side::Right),
    ] {
        let halt = halt.clone();
        conn.create_scalar_function(name, 2, flags, move |ctx| trim_function(ctx, side, &halt))?;
    }
    let unhex_halt = halt.clone();
    conn.create_scalar_function("unhex", 2, flags, move |ctx| {
        unhex_function(ctx, &unhex_halt)
    })?;
    for (name, sql) in [
        ("json_patch", "SELECT json_patch(?1, ?2)"),
        ("jsonb_patch", "SELECT jsonb_patch(?1, ?2)"),
    ] {
        conn.create_scalar_function(
            name,
            2,
            flags | FunctionFlags::SQLITE_RESULT_SUBTYPE,
            move |ctx| json_patch_function(ctx, name, sql),
        )?;
    }
    crate::db::snippet::install(conn, max_len, halt)
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

/// An argument as `sqlite3_value_text` gives it: text and blobs as their
/// bytes, numbers as SQLite writes them; `None` for NULL.
pub(crate) fn text(v: ValueRef<'_>) -> rusqlite::Result<Option<std::borrow::Cow<'_, [u8]>>> {
    Ok(bytes(v)?.map(|(b, _)| b))
}

fn instr_function(ctx: &mut Context<'_>) -> rusqlite::Result<RawOrValue> {
    let (Some((hay, h_blob)), Some((needle, n_blob))) = (bytes(arg(ctx, 0))?, bytes(arg(ctx, 1))?)
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
    let (Some((x, _)), Some((pattern, _))) = (bytes(arg(ctx, 0))?, bytes(arg(ctx, 1))?) else {
        return Ok(RawOrValue::Value(Value::Null));
    };
    if pattern.first().is_none_or(|&b| b == 0) {
        return Ok(RawOrValue::Raw(RawText(x.into_owned())));
    }
    let Some((rep, _)) = bytes(arg(ctx, 2))? else {
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
    // The result being built is the request's memory (up to the limit).
    let _charge = Charge::take(x.len().max(max_len.min(x.len().saturating_mul(2))))?;
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

/// Which ends `trim` strips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
    Both,
}

fn trim_function(ctx: &Context<'_>, side: Side, halt: &AtomicBool) -> rusqlite::Result<RawOrValue> {
    let (Some(x), Some(set)) = (text(arg(ctx, 0))?, text(arg(ctx, 1))?) else {
        return Ok(RawOrValue::Value(Value::Null));
    };
    let mut ticker = Ticker::new(halt);
    let (start, end) = trim(&x, &set, side, &mut ticker)?;
    Ok(RawOrValue::Raw(RawText(x[start..end].to_vec())))
}

/// SQLite's `trim(X, Y)` (`trimFunc`): the range of `x` left once every
/// character of `set` (split as SQLite splits it, up to its first NUL) is
/// stripped from the chosen ends, trying at each place the set's
/// characters in their order. SQLite compares every character of the set
/// at every place stripped (`len(X) * len(Y)`: 80 s for 1 MiB and a set of
/// 19,000 characters); here each length of character present in the set
/// is one table lookup, and the work is counted by `ticker`.
fn trim(
    x: &[u8],
    set: &[u8],
    side: Side,
    ticker: &mut Ticker<'_>,
) -> rusqlite::Result<(usize, usize)> {
    let set = &set[..memchr::memchr(0, set).unwrap_or(set.len())];
    // The tables below, about 48 bytes a distinct character, are the
    // request's memory.
    let mut charge = Charge::take(0)?;
    // The first index in the set of each character, by its length in bytes.
    let mut by_len: Vec<(usize, HashMap<&[u8], usize>)> = Vec::new();
    let (mut at, mut index) = (0, 0);
    while at < set.len() {
        let start = at;
        at += 1;
        if set[start] >= 0xC0 {
            while set.get(at).is_some_and(|b| b & 0xC0 == 0x80) {
                at += 1;
            }
        }
        let len = at - start;
        let slot = match by_len.iter().position(|(l, _)| *l == len) {
            Some(i) => i,
            None => {
                by_len.push((len, HashMap::new()));
                by_len.len() - 1
            }
        };
        if let std::collections::hash_map::Entry::Vacant(new) =
            by_len[slot].1.entry(&set[start..at])
        {
            charge.grow(48)?;
            new.insert(index);
        }
        index += 1;
        ticker.tick()?;
    }
    // The length of the set's first character found at this end of `rest`.
    let mut first = |rest: &[u8], left: bool| -> rusqlite::Result<Option<usize>> {
        let mut best: Option<(usize, usize)> = None;
        for (len, chars) in &by_len {
            ticker.tick()?;
            if *len > rest.len() {
                continue;
            }
            let piece = if left {
                &rest[..*len]
            } else {
                &rest[rest.len() - len..]
            };
            if let Some(&i) = chars.get(piece)
                && best.is_none_or(|(b, _)| i < b)
            {
                best = Some((i, *len));
            }
        }
        Ok(best.map(|(_, len)| len))
    };
    let (mut start, mut end) = (0, x.len());
    if side != Side::Right {
        while start < end {
            let Some(len) = first(&x[start..end], true)? else {
                break;
            };
            start += len;
        }
    }
    if side != Side::Left {
        while start < end {
            let Some(len) = first(&x[start..end], false)? else {
                break;
            };
            end -= len;
        }
    }
    Ok((start, end))
}

fn unhex_function(ctx: &Context<'_>, halt: &AtomicBool) -> rusqlite::Result<Value> {
    let (Some(hex), Some(pass)) = (text(arg(ctx, 0))?, text(arg(ctx, 1))?) else {
        return Ok(Value::Null);
    };
    let mut ticker = Ticker::new(halt);
    Ok(unhex(&hex, &pass, &mut ticker)?.map_or(Value::Null, Value::Blob))
}

/// SQLite's `unhex(X, Y)` (`unhexFunc`): pairs of hexadecimal digits of `x`
/// (up to its first NUL), with characters of `pass` allowed between pairs;
/// `None` (NULL) for anything else. SQLite looks each character between
/// pairs up in `pass` from its start (`len(X) * len(Y)`); here in a set.
fn unhex(x: &[u8], pass: &[u8], ticker: &mut Ticker<'_>) -> rusqlite::Result<Option<Vec<u8>>> {
    // The set (about 16 bytes a distinct character) and the result are the
    // request's memory.
    let mut charge = Charge::take(x.len() / 2)?;
    let mut allowed = std::collections::HashSet::new();
    let mut at = 0;
    while at < pass.len() {
        if allowed.insert(read_utf8(pass, &mut at)) {
            charge.grow(16)?;
        }
        ticker.tick()?;
    }
    let x = &x[..memchr::memchr(0, x).unwrap_or(x.len())];
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(x.len() / 2);
    let mut at = 0;
    while at < x.len() {
        ticker.tick()?;
        let high = loop {
            let Some(&c) = x.get(at) else {
                return Ok(Some(out));
            };
            if let Some(d) = digit(c) {
                break d;
            }
            if !allowed.contains(&read_utf8(x, &mut at)) {
                return Ok(None);
            }
            ticker.tick()?;
        };
        at += 1;
        let Some(low) = x.get(at).copied().and_then(digit) else {
            return Ok(None);
        };
        at += 1;
        out.push(high << 4 | low);
    }
    Ok(Some(out))
}

/// The most work (the product of its arguments' lengths) one `json_patch`
/// call may take: SQLite merges each member of the patch by a search
/// through the target's members (two objects of 500 KB take 10 s), in one
/// step no deadline can stop. A member of JSONB can be 2 bytes, so a
/// product of 2^30 bytes is up to 2.7e8 pairs of members: about 2 s at
/// worst on this kind of machine (a 1 MB document with a 1 KB patch).
pub(crate) const MAX_PATCH_WORK: u64 = 1 << 30;

/// SQLite's subtype for text that is JSON (`json_object` embeds it as is).
const JSON_SUBTYPE: std::ffi::c_uint = b'J' as std::ffi::c_uint;

fn json_patch_function(
    ctx: &Context<'_>,
    name: &str,
    sql: &str,
) -> rusqlite::Result<(RawOrValue, rusqlite::functions::SubType)> {
    let (a, b) = (arg(ctx, 0), arg(ctx, 1));
    let len = |v: ValueRef<'_>| match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.len() as u64,
        _ => 0,
    };
    let work = len(a).saturating_mul(len(b));
    if work > MAX_PATCH_WORK {
        return Err(SqlError::UserFunctionError(
            format!(
                "{name} over values of {} and {} bytes is refused: SQLite's merge takes their \
                 product ({work}) in one step, which no deadline can interrupt (at most {MAX_PATCH_WORK})",
                len(a),
                len(b)
            )
            .into(),
        ));
    }
    // SQLite's own merge, on this thread's connection without overrides.
    BUILTINS.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(Connection::open_in_memory()?);
        }
        let conn = cell.as_ref().expect("opened above");
        let mut stmt = conn.prepare_cached(sql)?;
        stmt.query_row([Arg(a), Arg(b)], |r| {
            Ok(match heap::lenient(|| r.get_ref(0))? {
                ValueRef::Text(t) => (RawOrValue::Raw(RawText(t.to_vec())), Some(JSON_SUBTYPE)),
                ValueRef::Blob(b) => (RawOrValue::Value(Value::Blob(b.to_vec())), None),
                ValueRef::Integer(i) => (RawOrValue::Value(Value::Integer(i)), None),
                ValueRef::Real(f) => (RawOrValue::Value(Value::Real(f)), None),
                ValueRef::Null => (RawOrValue::Value(Value::Null), None),
            })
        })
        // Out of memory there is this request's budget: the code alone, so
        // that it reaches the caller as too_large (a message would turn it
        // into a plain SQL error).
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OutOfMemory) => SqlError::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOMEM),
                None,
            ),
            _ => e,
        })
    })
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
        stmt.query_row([Arg(number)], |r| {
            Ok(heap::lenient(|| r.get_ref(0))?.as_bytes()?.to_vec())
        })
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
