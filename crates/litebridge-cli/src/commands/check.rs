//! `litebridge check`: exit 0 when sound, 2 when damaged, 1 when the check
//! could not run at all.

use std::path::Path;

use crate::{CliResult, Failure};

pub(crate) fn run(path: &Path, full: bool, json: bool) -> CliResult {
    let depth = if full {
        litebridge::CheckDepth::Full
    } else {
        litebridge::CheckDepth::Quick
    };
    let report = match litebridge::check_file(path, depth) {
        Ok(report) => report,
        // No database any more, or never one: exit 2 (a header damaged
        // is damage, which monitoring must see), not 1.
        Err(e) if e.is_not_a_database() => return not_a_database(path, full, json),
        Err(e) => return Err(e.into()),
    };
    let what = if full {
        "integrity_check and foreign_key_check"
    } else {
        "quick_check"
    };
    if json {
        println!("{}", as_json(path, full, &report));
        if report.could_not_run() {
            return Err(Failure {
                message: String::new(),
                code: 1,
            });
        }
        return finish(path, &report, json);
    }
    for p in &report.virtual_table_problems {
        println!(
            "warning: {p} (not damage to the file; rebuild the table's index: \
             INSERT INTO t(t) VALUES('rebuild'))"
        );
    }
    for p in &report.data_problems {
        println!(
            "warning: {p} (not damage to the file: a generated column breaks its declaration, \
             as a schema change can leave it)"
        );
    }
    for p in &report.foreign_key_violations {
        println!(
            "warning: {p} (not damage to the file: the data's references, as rows written \
             with foreign keys off or a schema change can leave them)"
        );
    }
    if let Some(why) = &report.unfinished {
        println!("warning: the check did not read the whole file: {why}");
    }
    if report.could_not_run() {
        return Err(Failure {
            message: format!(
                "{} could not be checked: {} (nothing was read; this says nothing of damage)",
                path.display(),
                report.unfinished.as_deref().unwrap_or_default()
            ),
            code: 1,
        });
    }
    if report.ok && report.unfinished.is_some() {
        println!(
            "ok: {} showed no damage in what {what} read ({} ms)",
            path.display(),
            report.elapsed.as_millis()
        );
    } else if report.ok {
        println!(
            "ok: {} passed {what} ({} ms)",
            path.display(),
            report.elapsed.as_millis()
        );
    } else {
        println!("{} FAILED {what}:", path.display());
        for p in &report.problems {
            println!("  {p}");
        }
    }
    finish(path, &report, json)
}

/// A check's report as `--json` prints it.
fn as_json(path: &Path, full: bool, report: &litebridge::CheckReport) -> serde_json::Value {
    serde_json::json!({
        "ok": report.ok,
        "db": path.display().to_string(),
        "check": if full { "full" } else { "quick" },
        "problems": report.problems,
        "virtual_table_problems": report.virtual_table_problems,
        "data_problems": report.data_problems,
        "foreign_key_violations": report.foreign_key_violations,
        "unfinished": report.unfinished,
        "elapsed_ms": report.elapsed.as_millis() as u64,
    })
}

/// How a file SQLite does not take for a database is described.
const NOT_A_DATABASE: &str =
    "is not a SQLite database (its header is damaged, or it is another kind of file)";

/// Exit 2 for a file SQLite does not take for a database.
fn not_a_database(path: &Path, full: bool, json: bool) -> CliResult {
    if json {
        let report = litebridge::CheckReport {
            ok: false,
            problems: vec![format!("the file {NOT_A_DATABASE}")],
            virtual_table_problems: Vec::new(),
            data_problems: Vec::new(),
            foreign_key_violations: Vec::new(),
            unfinished: None,
            elapsed: std::time::Duration::ZERO,
        };
        println!("{}", as_json(path, full, &report));
    }
    Err(damaged(
        path,
        json,
        &format!("{NOT_A_DATABASE}; if it was one,"),
    ))
}

/// Exit 2, saying `what` of the file at `path` and the way out (nothing in
/// JSON mode: the report said it).
fn damaged(path: &Path, json: bool, what: &str) -> Failure {
    Failure {
        message: if json {
            String::new()
        } else {
            format!(
                "{} {what} restore a backup with `litebridge restore --from BACKUP --db {}`",
                path.display(),
                path.display()
            )
        },
        code: 2,
    }
}

/// Exit 0 when sound, 2 (with the way out) when damaged.
fn finish(path: &Path, report: &litebridge::CheckReport, json: bool) -> CliResult {
    if report.ok {
        Ok(())
    } else {
        Err(damaged(path, json, "is damaged;"))
    }
}
