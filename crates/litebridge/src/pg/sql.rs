//! The client's SQL on its way to PostgreSQL: placeholders and refused
//! statements.
//!
//! SQL passes through in PostgreSQL's dialect; only placeholders are
//! rewritten. `$N` is PostgreSQL's own; `?N` (SQLite's numbered form, which
//! the clients and the stores write) becomes `$N`. A bare `?` is refused: on
//! PostgreSQL it is also the jsonb operator (`?`, `?|`, `?&`), so it cannot be
//! told from a placeholder; `jsonb_exists()` and its siblings do the same
//! job. The scan skips string constants (`'...'`, `E'...'` with backslash
//! escapes), quoted identifiers, comments (nested `/* */`) and dollar-quoted
//! bodies (`$$...$$`, `$tag$...$tag$`), where a `?` is text.
//!
//! Statements that would change the session rather than the data are
//! refused before they reach the server, as on SQLite: transaction control
//! (litebridge opens and ends every transaction), `SET`/`RESET`, `LISTEN`,
//! `COPY` and the like.

use crate::error::{Error, Result};

/// The SQL with `?N` rewritten to `$N`, and the highest placeholder number
/// it uses (0 for none).
pub(crate) fn translate(sql: &str) -> Result<(String, usize)> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut highest = 0usize;
    let mut i = 0;
    // Start of the text not yet copied to `out`.
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            c if is_ident_start(c) => {
                // A whole identifier or keyword, `$` included (`a$b`, `col$0`);
                // `E'...'` is the one prefix whose string takes backslash escapes.
                let start = i;
                while i < b.len() && (is_ident(b[i]) || b[i] == b'$') {
                    i += 1;
                }
                if b.get(i) == Some(&b'\'') && matches!(&b[start..i], b"E" | b"e") {
                    i = skip_quoted(b, i, b'\'', true);
                }
            }
            b'\'' => i = skip_quoted(b, i, b'\'', false),
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line_comment(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => {
                let digits = count_digits(&b[i + 1..]);
                if digits > 0 {
                    highest = highest.max(number(sql, i + 1, digits)?);
                    i += 1 + digits;
                } else {
                    i = skip_dollar_quoted(b, i);
                }
            }
            b'?' => {
                let digits = count_digits(&b[i + 1..]);
                if digits == 0 {
                    return Err(Error::invalid(
                        "sql",
                        format!(
                            "a bare `?` at byte {i} is not a placeholder on PostgreSQL (it is also \
                             the jsonb operator): number the placeholders (?1, ?2 or $1, $2), and \
                             write jsonb_exists(a, b) for the operator"
                        ),
                    ));
                }
                highest = highest.max(number(sql, i + 1, digits)?);
                out.push_str(&sql[copied..i]);
                // `x?1` is `x`, then a placeholder; `x$1` would be one name.
                if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'$') {
                    out.push(' ');
                }
                out.push('$');
                copied = i + 1;
                i += 1 + digits;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok((out, highest))
}

/// Refuses the statements that change the session or end litebridge's
/// transaction, naming the statement's first word.
pub(crate) fn check_allowed(sql: &str) -> Result<()> {
    let word = first_word(sql).to_ascii_uppercase();
    let why = match word.as_str() {
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            "litebridge runs every request in a transaction of its own; send several statements \
             with sql.batch to have them commit together"
        }
        // `PREPARE TRANSACTION` too: a transaction left prepared outlives
        // the request, holding its locks.
        "PREPARE" => {
            "litebridge prepares statements itself (send the statement, with ?1 or $1 \
             placeholders); a prepared transaction would outlive the request"
        }
        "SET" | "RESET" | "DISCARD" | "LOAD" => {
            "session settings would carry over to other requests on the same connection"
        }
        "LISTEN" | "UNLISTEN" | "NOTIFY" => "notifications are not delivered through litebridge",
        "COPY" => "COPY streams are not carried by litebridge; insert with sql.execute_many",
        "DEALLOCATE" | "EXECUTE" | "FETCH" | "MOVE" | "CLOSE" | "DECLARE" => {
            "litebridge prepares and runs statements itself"
        }
        "VACUUM" | "CHECKPOINT" | "CLUSTER" => {
            "maintenance runs outside a transaction; run it with the database's own tools"
        }
        _ => return Ok(()),
    };
    Err(Error::Forbidden {
        message: format!("{word} is not allowed through litebridge on PostgreSQL: {why}"),
    })
}

/// Refuses, on top of [`check_allowed`], what a read may not run although a
/// read-only transaction would let it: `DO` and `CALL`, which a read has no
/// use for (inside its `BEGIN READ ONLY` a `COMMIT` of theirs fails; refused
/// in case that ever changes), and the maintenance that writes catalogs and
/// takes locks (`ANALYZE`, `REINDEX`, which read-only transactions allow),
/// and `LOCK`, which they allow too.
pub(crate) fn check_read(sql: &str) -> Result<()> {
    check_allowed(sql)?;
    let word = first_word(sql).to_ascii_uppercase();
    let why = match word.as_str() {
        "DO" | "CALL" => "a read has no use for it; run it with sql.execute",
        "ANALYZE" | "ANALYSE" | "REINDEX" => {
            "maintenance writes the catalogs; run it with sql.execute or the database's own tools"
        }
        // Allowed in a read-only transaction, and held to its end: a read
        // waiting behind another read's lock in ACCESS EXCLUSIVE mode would
        // queue every other session's access to the table behind it.
        "LOCK" => "a read has no use for a table lock; run it with sql.execute",
        _ => return Ok(()),
    };
    Err(Error::Forbidden {
        message: format!("{word} is not allowed in a read (sql.query) on PostgreSQL: {why}"),
    })
}

/// The statement's first keyword, past white space and comments.
fn first_word(sql: &str) -> &str {
    let b = sql.as_bytes();
    let mut i = 0;
    loop {
        // PostgreSQL takes `;SET x = 1` as one statement: empty statements
        // before it are skipped here too.
        // (Vertical tab included: newer servers take it as white space.)
        while i < b.len() && (b[i].is_ascii_whitespace() || matches!(b[i], b'(' | b';' | 0x0b)) {
            i += 1;
        }
        if b[i..].starts_with(b"--") {
            i = skip_line_comment(b, i);
        } else if b[i..].starts_with(b"/*") {
            i = skip_block_comment(b, i);
        } else {
            break;
        }
    }
    let end = b[i..]
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .map_or(b.len(), |n| i + n);
    &sql[i..end]
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Past a `--` comment, which a line feed or a carriage return ends (as
/// PostgreSQL's lexer reads it).
fn skip_line_comment(b: &[u8], i: usize) -> usize {
    memchr::memchr2(b'\n', b'\r', &b[i..]).map_or(b.len(), |n| i + n + 1)
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// The placeholder number at `sql[at..at + digits]`, 1 to 65535 (the most
/// PostgreSQL's protocol carries).
fn number(sql: &str, at: usize, digits: usize) -> Result<usize> {
    match sql[at..at + digits].parse::<usize>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            "sql",
            format!(
                "placeholder {}{} is out of range: they are numbered from 1 to 65535",
                &sql[at - 1..at],
                &sql[at..at + digits]
            ),
        )),
    }
}

/// Past a quoted run starting at `b[i]` (a doubled quote is one; with
/// `escapes`, a backslash escapes the next byte). An unterminated run goes
/// to the end: the server reports it.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, escapes: bool) -> usize {
    i += 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Past a `/* */` comment starting at `b[i]`; they nest on PostgreSQL.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Past a dollar-quoted body starting at `b[i]` (`$tag$ ... $tag$`); a `$`
/// that opens no tag is one byte.
fn skip_dollar_quoted(b: &[u8], i: usize) -> usize {
    let tag_len = b[i + 1..].iter().take_while(|c| is_ident(**c)).count();
    let close = i + 1 + tag_len;
    if b.get(close) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return i + 1;
    }
    let tag = &b[i..=close];
    match memchr::memmem::find(&b[close + 1..], tag) {
        Some(n) => close + 1 + n + tag.len(),
        None => b.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sql: &str) -> String {
        translate(sql).expect("translates").0
    }

    #[test]
    fn numbered_question_marks_become_dollars() {
        assert_eq!(t("SELECT ?1, ?2, ?1"), "SELECT $1, $2, $1");
        assert_eq!(t("SELECT x?1"), "SELECT x $1");
        assert_eq!(translate("SELECT ?1, $3").expect("ok").1, 3);
        assert_eq!(t("SELECT $1::int"), "SELECT $1::int");
    }

    #[test]
    fn quoted_text_comments_and_dollar_bodies_are_left_alone() {
        assert_eq!(t("SELECT '?1', \"?2\", ?3"), "SELECT '?1', \"?2\", $3");
        assert_eq!(t("SELECT 'it''s ?1', ?2"), "SELECT 'it''s ?1', $2");
        assert_eq!(t("SELECT E'\\' ?1', ?2"), "SELECT E'\\' ?1', $2");
        assert_eq!(t("SELECT 1 -- ?1\n, ?2"), "SELECT 1 -- ?1\n, $2");
        assert_eq!(
            t("SELECT /* /* ?1 */ ? */ ?2"),
            "SELECT /* /* ?1 */ ? */ $2"
        );
        assert_eq!(
            t("SELECT $$ ? $$, $f$ ?1 $f$, ?2"),
            "SELECT $$ ? $$, $f$ ?1 $f$, $2"
        );
        assert_eq!(t("SELECT a$b, ?1 FROM t"), "SELECT a$b, $1 FROM t");
        // `e'` after an identifier character is not an escape string.
        assert_eq!(t("SELECT name'\\', ?1"), "SELECT name'\\', $1");
        // A comment ends at a carriage return too.
        assert_eq!(t("SELECT 1 --c\r, ?1"), "SELECT 1 --c\r, $1");
        // `$` inside identifiers opens nothing.
        assert_eq!(t("SELECT a$$b$, ?1, col$0"), "SELECT a$$b$, $1, col$0");
        assert_eq!(t("SELECT x$e'\\', ?1"), "SELECT x$e'\\', $1");
        // The text inside E'' after an identifier named E.
        assert_eq!(t("SELECT E'\\' ?1', ?2"), "SELECT E'\\' ?1', $2");
        assert_eq!(
            t("SELECT U&'?1', B'01', X'?1', ?2"),
            "SELECT U&'?1', B'01', X'?1', $2"
        );
    }

    #[test]
    fn a_bare_question_mark_is_refused_and_named() {
        let e = translate("SELECT data ? 'k' FROM t").expect_err("refused");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("jsonb_exists"), "{e}");
        let e = translate("SELECT ?0").expect_err("refused");
        assert!(e.to_string().contains("?0"), "{e}");
        assert!(translate("SELECT ?99999999999999999999999").is_err());
    }

    #[test]
    fn unterminated_runs_do_not_panic() {
        for sql in ["'", "\"", "/*", "$a$", "E'\\", "$", "?", "--"] {
            let _ = translate(sql);
            let _ = check_allowed(sql);
        }
    }

    #[test]
    fn reads_refuse_what_may_commit_or_maintain() {
        for sql in [
            "DO $$ BEGIN COMMIT; END $$",
            "/* x */ do 'BEGIN NULL; END'",
            "(CALL p())",
            ";call p()",
            "ANALYZE t",
            "analyse t",
            "REINDEX TABLE CONCURRENTLY t",
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "COMMIT",
        ] {
            let e = check_read(sql).expect_err(sql);
            assert_eq!(e.kind(), crate::ErrorKind::Forbidden, "{sql}");
        }
        for sql in [
            "DO $$ BEGIN NULL; END $$",
            "CALL p()",
            "ANALYZE t",
            "LOCK t",
        ] {
            check_allowed(sql).expect(sql);
        }
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1)",
        ] {
            check_read(sql).expect(sql);
        }
    }

    #[test]
    fn session_and_transaction_statements_are_forbidden() {
        for sql in [
            "BEGIN",
            "  commit",
            "/* x */ SET search_path = x",
            "-- c\nRESET ALL",
            "LISTEN x",
            "COPY t FROM STDIN",
            "rollback",
            "(SET x = 1)",
            ";SET search_path = x",
            " ; ;COMMIT",
            "--c\rSET x = 1",
            ";DEALLOCATE ALL",
            "\x0bCOMMIT",
        ] {
            let e = check_allowed(sql).expect_err(sql);
            assert_eq!(e.kind(), crate::ErrorKind::Forbidden, "{sql}");
        }
        for sql in ["SELECT 1", "WITH x AS (SELECT 1) SELECT * FROM x", "settle"] {
            check_allowed(sql).expect(sql);
        }
    }
}
