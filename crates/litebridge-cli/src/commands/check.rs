//! `litebridge check`: exit 0 when sound, 2 when damaged.

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
        let v = serde_json::json!({
            "ok": report.ok,
            "db": path.display().to_string(),
            "check": if full { "full" } else { "quick" },
            "problems": report.problems,
            "virtual_table_problems": report.virtual_table_problems,
            "data_problems": report.data_problems,
            "foreign_key_violations": report.foreign_key_violations,
            "unfinished": report.unfinished,
            "elapsed_ms": report.elapsed.as_millis() as u64,
        });
        println!("{v}");
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
    if let Some(why) = &report.unfinished {
        println!("warning: the check did not read the whole file: {why}");
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
        for p in report.problems.iter().chain(&report.foreign_key_violations) {
            println!("  {p}");
        }
    }
    finish(path, &report, json)
}

/// Exit 2 for a file SQLite does not take for a database.
fn not_a_database(path: &Path, full: bool, json: bool) -> CliResult {
    let problem =
        "the file is not a SQLite database (its header is damaged, or it is another kind of file)";
    if json {
        let v = serde_json::json!({
            "ok": false,
            "db": path.display().to_string(),
            "check": if full { "full" } else { "quick" },
            "problems": [problem],
            "virtual_table_problems": [],
            "data_problems": [],
            "foreign_key_violations": [],
            "unfinished": null,
            "elapsed_ms": 0,
        });
        println!("{v}");
    }
    Err(Failure {
        message: if json {
            String::new()
        } else {
            format!(
                "{} is not a SQLite database (its header is damaged, or it is another kind of file); if it was one, restore a backup with `litebridge restore --from BACKUP --db {}`",
                path.display(),
                path.display()
            )
        },
        code: 2,
    })
}

/// Exit 0 when sound, 2 (with the way out) when damaged.
fn finish(path: &Path, report: &litebridge::CheckReport, json: bool) -> CliResult {
    if report.ok {
        Ok(())
    } else {
        Err(Failure {
            message: if json {
                String::new()
            } else {
                format!(
                    "{} is damaged; restore a backup with `litebridge restore --from BACKUP --db {}`",
                    path.display(),
                    path.display()
                )
            },
            code: 2,
        })
    }
}
