//! `litebridge check`: exit 0 when sound, 2 when damaged.

use std::path::Path;

use crate::{CliResult, Failure};

pub(crate) fn run(path: &Path, full: bool, json: bool) -> CliResult {
    let report = litebridge::check_file(path, full)?;
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
            "foreign_key_violations": report.foreign_key_violations,
            "elapsed_ms": report.elapsed.as_millis() as u64,
        });
        println!("{v}");
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
