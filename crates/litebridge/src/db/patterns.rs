//! `LIKE` and `GLOB` that a deadline can interrupt, in place of SQLite's own.
//!
//! # Why
//!
//! SQLite's matcher (`patternCompare` in `func.c`) takes up to `len(value) *
//! len(pattern)` in one call: `'%aaa...ab'` (1,000 bytes, the pattern limit
//! litebridge sets) over 4 MiB of `a` takes 6 s here, over a 64 MiB value
//! (the length limit) about 90 s, and one function call is one step of the
//! statement, which the progress handler never sees. It would hold the
//! writer past `db.max_write_hold`, or a thread of the async runtime. This
//! is the same algorithm, translated line by line so it answers exactly
//! what SQLite's answers (`tests/functions_property.rs` compares the two on
//! random patterns and strings, invalid UTF-8 included), with one addition:
//! it counts its work and asks `guard` every [`Ticker`] period whether the
//! operation must stop, as the progress handler would between steps; then
//! the statement fails with SQLITE_INTERRUPT and `guard` reports why.
//!
//! One cost: SQLite's LIKE/GLOB optimisation (a prefix pattern on an indexed
//! column turned into a range of the index) applies only to its built-in
//! functions, so it no longer applies: write `x >= 'abc' AND x < 'abd'` where
//! an index must serve a prefix search (SECURITY.md says so).
//!
//! C strings end at their first NUL byte; so do the values here.

use std::sync::atomic::AtomicBool;

use rusqlite::Error as SqlError;
use rusqlite::functions::Context;

use crate::db::functions::arg;
use crate::db::guard::Ticker;

/// How one of the two functions matches (`compareInfo` in SQLite).
#[derive(Debug, Clone, Copy)]
struct Info {
    /// `%` or `*` (0 when it is the escape character).
    match_all: u32,
    /// `_` or `?` (0 when it is the escape character).
    match_one: u32,
    /// `[` for GLOB, 0 for LIKE.
    match_set: u32,
    no_case: bool,
}

const LIKE: Info = Info {
    match_all: b'%' as u32,
    match_one: b'_' as u32,
    match_set: 0,
    no_case: true,
};

const GLOB: Info = Info {
    match_all: b'*' as u32,
    match_one: b'?' as u32,
    match_set: b'[' as u32,
    no_case: false,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Match,
    NoMatch,
    /// No match, and none is possible with the rest of the string either
    /// (SQLite's `SQLITE_NOWILDCARDMATCH`: stops the search of an outer `%`).
    NoWildcardMatch,
}

/// A string as C sees it: up to its first NUL, then zeros.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a [u8]) -> Cursor<'a> {
        let end = memchr::memchr(0, s).unwrap_or(s.len());
        Cursor {
            s: &s[..end],
            at: 0,
        }
    }

    fn peek(&self) -> u8 {
        self.s.get(self.at).copied().unwrap_or(0)
    }

    /// `sqlite3Utf8Read`: one character, leniently (any lead byte and the
    /// continuation bytes after it); 0 at the end, without moving.
    fn read(&mut self) -> u32 {
        read_utf8(self.s, &mut self.at)
    }

    /// `SQLITE_SKIP_UTF8`.
    fn skip(&mut self) {
        if let Some(&b) = self.s.get(self.at) {
            self.at += 1;
            if b >= 0xC0 {
                while self.s.get(self.at).is_some_and(|n| n & 0xC0 == 0x80) {
                    self.at += 1;
                }
            }
        }
    }
}

/// `sqlite3Utf8Read` over `s` from `at` (moved past the character): a lead
/// byte and every continuation byte after it, as SQLite reads them; 0 at
/// the end, without moving.
pub(crate) fn read_utf8(s: &[u8], at: &mut usize) -> u32 {
    let Some(&b) = s.get(*at) else {
        return 0;
    };
    *at += 1;
    let mut c = u32::from(b);
    if c >= 0xC0 {
        c = u32::from(TRANS1[(c - 0xC0) as usize]);
        while let Some(&n) = s.get(*at) {
            if n & 0xC0 != 0x80 {
                break;
            }
            c = c.wrapping_shl(6).wrapping_add(u32::from(n & 0x3F));
            *at += 1;
        }
        if c < 0x80 || (c & 0xFFFF_F800) == 0xD800 {
            c = 0xFFFD;
        }
    }
    c
}

/// `sqlite3Utf8Trans1`: the payload bits of a lead byte 0xC0..=0xFF.
const TRANS1: [u8; 64] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0x01, 0x02, 0x03, 0x00, 0x01, 0x00, 0x00,
];

fn to_lower(c: u32) -> u32 {
    if (u32::from(b'A')..=u32::from(b'Z')).contains(&c) {
        c + 32
    } else {
        c
    }
}

fn to_upper(c: u32) -> u32 {
    if (u32::from(b'a')..=u32::from(b'z')).contains(&c) {
        c - 32
    } else {
        c
    }
}

/// `patternCompare`, with a tick per character of the pattern consumed and
/// per place of the string tried.
fn compare(
    mut pattern: Cursor<'_>,
    mut string: Cursor<'_>,
    info: &Info,
    match_other: u32,
    ticker: &mut Ticker<'_>,
) -> Result<Outcome, SqlError> {
    let (match_one, match_all, no_case) = (info.match_one, info.match_all, info.no_case);
    // One past the last escaped character of the pattern.
    let mut escaped: Option<usize> = None;
    loop {
        ticker.tick()?;
        let mut c = pattern.read();
        if c == 0 {
            break;
        }
        if c == match_all {
            loop {
                c = pattern.read();
                if !(c == match_all || (c == match_one && match_one != 0)) {
                    break;
                }
                if c == match_one && string.read() == 0 {
                    return Ok(Outcome::NoWildcardMatch);
                }
            }
            if c == 0 {
                return Ok(Outcome::Match);
            } else if c == match_other {
                if info.match_set == 0 {
                    c = pattern.read();
                    if c == 0 {
                        return Ok(Outcome::NoWildcardMatch);
                    }
                } else {
                    // "[...]" right after "*": try every place.
                    let set = Cursor {
                        at: pattern.at - 1,
                        ..pattern
                    };
                    while string.peek() != 0 {
                        ticker.tick()?;
                        let r = compare(set, string, info, match_other, ticker)?;
                        if r != Outcome::NoMatch {
                            return Ok(r);
                        }
                        string.skip();
                    }
                    return Ok(Outcome::NoWildcardMatch);
                }
            }
            if c < 0x80 {
                let (a, b) = if no_case {
                    (to_upper(c) as u8, to_lower(c) as u8)
                } else {
                    (c as u8, c as u8)
                };
                loop {
                    let rest = &string.s[string.at..];
                    match memchr::memchr2(a, b, rest) {
                        None => break,
                        Some(i) => string.at += i + 1,
                    }
                    ticker.tick()?;
                    let r = compare(pattern, string, info, match_other, ticker)?;
                    if r != Outcome::NoMatch {
                        return Ok(r);
                    }
                }
            } else {
                loop {
                    let c2 = string.read();
                    if c2 == 0 {
                        break;
                    }
                    if c2 != c {
                        continue;
                    }
                    ticker.tick()?;
                    let r = compare(pattern, string, info, match_other, ticker)?;
                    if r != Outcome::NoMatch {
                        return Ok(r);
                    }
                }
            }
            return Ok(Outcome::NoWildcardMatch);
        }
        if c == match_other {
            if info.match_set == 0 {
                c = pattern.read();
                if c == 0 {
                    return Ok(Outcome::NoMatch);
                }
                escaped = Some(pattern.at);
            } else {
                let mut prior = 0u32;
                let mut seen = false;
                let mut invert = false;
                c = string.read();
                if c == 0 {
                    return Ok(Outcome::NoMatch);
                }
                let mut c2 = pattern.read();
                if c2 == u32::from(b'^') {
                    invert = true;
                    c2 = pattern.read();
                }
                if c2 == u32::from(b']') {
                    if c == u32::from(b']') {
                        seen = true;
                    }
                    c2 = pattern.read();
                }
                while c2 != 0 && c2 != u32::from(b']') {
                    ticker.tick()?;
                    let next = pattern.peek();
                    if c2 == u32::from(b'-') && next != b']' && next != 0 && prior > 0 {
                        c2 = pattern.read();
                        if c >= prior && c <= c2 {
                            seen = true;
                        }
                        prior = 0;
                    } else {
                        if c == c2 {
                            seen = true;
                        }
                        prior = c2;
                    }
                    c2 = pattern.read();
                }
                if c2 == 0 || seen == invert {
                    return Ok(Outcome::NoMatch);
                }
                continue;
            }
        }
        let c2 = string.read();
        if c == c2 {
            continue;
        }
        if no_case && c < 0x80 && c2 < 0x80 && to_lower(c) == to_lower(c2) {
            continue;
        }
        if c == match_one && escaped != Some(pattern.at) && c2 != 0 {
            continue;
        }
        return Ok(Outcome::NoMatch);
    }
    Ok(if string.peek() == 0 {
        Outcome::Match
    } else {
        Outcome::NoMatch
    })
}

/// `like(pattern, string [, escape])` and `glob(pattern, string)` as SQL
/// functions (`likeFunc`); `max_pattern` is the connection's
/// `SQLITE_LIMIT_LIKE_PATTERN_LENGTH`.
pub(crate) fn function(
    ctx: &Context<'_>,
    glob: bool,
    max_pattern: usize,
    halt: &AtomicBool,
) -> rusqlite::Result<Option<bool>> {
    use crate::db::functions::text;
    let mut info = if glob { GLOB } else { LIKE };
    let pattern = text(arg(ctx, 0))?;
    if pattern.as_ref().map_or(0, |p| p.len()) > max_pattern {
        return Err(SqlError::UserFunctionError(
            "LIKE or GLOB pattern too complex".into(),
        ));
    }
    let escape = if ctx.len() == 3 {
        let Some(esc) = text(arg(ctx, 2))? else {
            return Ok(None);
        };
        let mut chars = Cursor::new(&esc);
        let mut count = 0;
        while chars.peek() != 0 {
            chars.skip();
            count += 1;
        }
        if count != 1 {
            return Err(SqlError::UserFunctionError(
                "ESCAPE expression must be a single character".into(),
            ));
        }
        let escape = Cursor::new(&esc).read();
        if escape == info.match_all {
            info.match_all = 0;
        }
        if escape == info.match_one {
            info.match_one = 0;
        }
        escape
    } else {
        info.match_set
    };
    let (Some(pattern), Some(string)) = (pattern, text(arg(ctx, 1))?) else {
        return Ok(None);
    };
    let mut ticker = Ticker::new(halt);
    let outcome = compare(
        Cursor::new(&pattern),
        Cursor::new(&string),
        &info,
        escape,
        &mut ticker,
    )?;
    Ok(Some(outcome == Outcome::Match))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(p: &str, s: &str) -> bool {
        let halt = AtomicBool::new(false);
        let mut t = Ticker::new(&halt);
        compare(
            Cursor::new(p.as_bytes()),
            Cursor::new(s.as_bytes()),
            &LIKE,
            0,
            &mut t,
        )
        .unwrap()
            == Outcome::Match
    }

    fn glob(p: &str, s: &str) -> bool {
        let halt = AtomicBool::new(false);
        let mut t = Ticker::new(&halt);
        compare(
            Cursor::new(p.as_bytes()),
            Cursor::new(s.as_bytes()),
            &GLOB,
            u32::from(b'['),
            &mut t,
        )
        .unwrap()
            == Outcome::Match
    }

    #[test]
    fn the_usual_patterns() {
        assert!(like("abc", "ABC"));
        assert!(like("a%", "abc"));
        assert!(like("%b%", "abc"));
        assert!(like("a_c", "abc"));
        assert!(!like("a_c", "ac"));
        assert!(like("%é%", "café"));
        assert!(!like("É", "é"), "only ASCII folds");
        assert!(glob("a*", "abc"));
        assert!(!glob("A*", "abc"));
        assert!(glob("[a-c]?[^x]", "bzy"));
        assert!(glob("*[]]", "a]"));
        assert!(!glob("[a-c]", "d"));
    }

    #[test]
    fn a_halted_database_stops_the_worst_case() {
        let halt = AtomicBool::new(true);
        let mut t = Ticker::new(&halt);
        let string = vec![b'a'; 4 << 20];
        let pattern = format!("%{}b", "a".repeat(998));
        let started = std::time::Instant::now();
        let r = compare(
            Cursor::new(pattern.as_bytes()),
            Cursor::new(&string),
            &LIKE,
            0,
            &mut t,
        );
        assert!(r.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
