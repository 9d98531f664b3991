//! Text from callers and workers (rows, worker output, key and method
//! names), made safe to print on an operator's terminal: a carriage return
//! would let it overwrite the start of its log line (the worker's tag, the
//! time) with text of its own, an escape sequence set the terminal's title
//! or clipboard, and a right-to-left override show a line reversed. Such
//! characters are printed as Rust escapes (`\r`, `\u{202e}`).
//!
//! JSON logs need none of this: JSON escapes every control character.

use std::borrow::Cow;
use std::io::{self, Write};

/// Whether `c` should not reach a terminal as it is: a control character
/// (C0, DEL, C1), a line or paragraph separator, or an invisible character
/// that reorders, hides or smuggles text (the bidirectional controls,
/// zero-width characters, the BOM, the soft hyphen, the fillers, the
/// interlinear annotation marks, the tag characters).
pub(crate) fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `s` with every [`unprintable`] character escaped, tabs and newlines
/// too (a table's cell is one line).
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    escape(s, |_, c| unprintable(c))
}

/// `s` with every [`unprintable`] character escaped but its newlines and
/// tabs (a message of several lines).
pub(crate) fn printable_text(s: &str) -> Cow<'_, str> {
    escape(s, |_, c| c != '\n' && c != '\t' && unprintable(c))
}

/// `s` with every character `bad` finds (given its byte offset) replaced
/// by its Rust escape.
fn escape(s: &str, bad: impl Fn(usize, char) -> bool) -> Cow<'_, str> {
    if !s.char_indices().any(|(i, c)| bad(i, c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (i, c) in s.char_indices() {
        if bad(i, c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A writer of text log lines that escapes what [`unprintable`] finds but
/// the line's own end, its tabs, and the formatter's colours (an `ESC [`
/// of digits and `;` ending in `m`: colour alone, no cursor movement;
/// `tracing-subscriber` escapes an `ESC` in a message, but not in a field
/// recorded with `%`, found by review 125). Each event comes in one
/// write, ending with its newline, so a newline inside it (a worker's
/// `\r`, a message that spans lines) cannot start a line of its own.
pub(crate) struct Sanitized<W>(pub(crate) W);

impl<W: Write> Write for Sanitized<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Ok(text) = std::str::from_utf8(buf) else {
            return self.0.write(buf);
        };
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (text, ""),
        };
        self.0.write_all(log_line(body).as_bytes())?;
        self.0.write_all(end.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `body` (a log line without its newline) escaped as [`Sanitized`] says.
fn log_line(body: &str) -> Cow<'_, str> {
    let colour = |at: usize| {
        let rest = &body.as_bytes()[at + 1..];
        let Some(rest) = rest.strip_prefix(b"[") else {
            return false;
        };
        let params = rest
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b';')
            .count();
        rest.get(params) == Some(&b'm')
    };
    escape(body, |at, c| {
        c != '\t' && unprintable(c) && !(c == '\u{1b}' && colour(at))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_move_or_hide_text_is_escaped() {
        assert!(matches!(printable("plain ü 字"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\rb\u{1b}]0;title\u{7}\u{9b}c\u{202e}d\te\nf"),
            "a\\rb\\u{1b}]0;title\\u{7}\\u{9b}c\\u{202e}d\\te\\nf"
        );
    }

    #[test]
    fn a_log_line_keeps_its_end_its_tabs_and_its_colours() {
        let mut out = Sanitized(Vec::new());
        out.write_all(b"\x1b[32mINFO\x1b[0m worker: x\rFORGED\tok\nnext line\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "\x1b[32mINFO\x1b[0m worker: x\\rFORGED\tok\\nnext line\n"
        );
        // An escape that moves the cursor or clears the line, in a field.
        let mut out = Sanitized(Vec::new());
        out.write_all("key=\x1b[1A\x1b[2K\x1b[1GFORGED\u{2028}x\x1b]0;t\x07\n".as_bytes())
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "key=\\u{1b}[1A\\u{1b}[2K\\u{1b}[1GFORGED\\u{2028}x\\u{1b}]0;t\\u{7}\n"
        );
    }
}
