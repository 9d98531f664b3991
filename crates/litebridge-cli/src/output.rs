//! Printing: tables, progress on a terminal, times.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use litebridge::{Rows, Value};

use crate::printable::printable;

/// Prints rows as an aligned text table.
pub(crate) fn print_table(rows: &Rows) {
    let cells: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| r.iter().map(cell).collect())
        .collect();
    let columns: Vec<String> = rows
        .columns
        .iter()
        .map(|c| printable(c).into_owned())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |values: &[String]| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_owned()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(&columns));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in &cells {
        let _ = writeln!(out, "{}", line(r));
    }
    let n = rows.rows.len();
    let _ = writeln!(
        out,
        "({n} row{}{})",
        if n == 1 { "" } else { "s" },
        if rows.truncated { ", truncated" } else { "" }
    );
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => printable(t).into_owned(),
        Value::Blob(b) => format!("<blob {} bytes>", b.len()),
    }
}

/// A one-line progress display on stderr, drawn only on a terminal.
pub(crate) struct Progress {
    enabled: bool,
    label: String,
}

impl Progress {
    pub(crate) fn new(label: impl Into<String>) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            label: label.into(),
        }
    }

    pub(crate) fn ratio(&self, done: u64, total: u64) {
        if !self.enabled || total == 0 {
            return;
        }
        let pct = done as f64 / total as f64;
        let filled = (pct * 30.0).round() as usize;
        eprint!(
            "\r{} [{}{}] {:>5.1}%",
            self.label,
            "#".repeat(filled),
            " ".repeat(30 - filled.min(30)),
            pct * 100.0
        );
        let _ = std::io::stderr().flush();
    }

    pub(crate) fn message(&self, msg: &str) {
        if self.enabled {
            eprint!("\r\x1b[2K{} {msg}", self.label);
            let _ = std::io::stderr().flush();
        }
    }

    pub(crate) fn finish(&self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

pub(crate) use litebridge::{utc_file_stamp, utc_stamp};

/// "3 h 12 min", "45 s", "2 d 4 h".
pub(crate) fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// "1.2 MB".
pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn utc_stamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_435_509_663);
        assert_eq!(utc_stamp(t), "2026-11-23T12:05:09.663Z");
        assert_eq!(utc_file_stamp(t), "20261123T120509Z");
        assert_eq!(
            utc_stamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_age(Duration::from_secs(3 * 3600 + 720)), "3 h 12 min");
    }
}
