//! `litebridge backup` and `litebridge restore`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::output::{Progress, human_age, human_bytes, utc_file_stamp};
use crate::{CliResult, Failure};

pub(crate) fn backup(db: &Path, to: &Path, replace: bool) -> CliResult {
    if !db.is_file() {
        return Err(Failure::new(format!(
            "database {} does not exist or is not a file",
            db.display()
        )));
    }
    // Said here with the flag that allows it (the library refuses it too,
    // atomically, should the file appear meanwhile).
    if !replace && to.symlink_metadata().is_ok() {
        return Err(Failure::new(format!(
            "backup destination {} exists already: give a new file name, or pass --replace to overwrite an earlier backup there",
            to.display()
        )));
    }
    let if_exists = if replace {
        litebridge::IfExists::Replace
    } else {
        litebridge::IfExists::Refuse
    };
    let bar = Progress::new(format!("backup {}", db.display()));
    let report = litebridge::backup_file(db, to, if_exists, Duration::from_secs(5), |p| {
        bar.ratio(p.copied, p.total)
    })?;
    bar.finish();
    // A copy whose check stopped before the end is not called verified
    // (review 218): what was read showed no damage, and the rest is named.
    let verified = match &report.partly_verified {
        None => "verified".to_owned(),
        Some(why) => format!("partly verified: {why}"),
    };
    println!(
        "backed up {} to {} ({}, {} pages, {verified}) in {} ms",
        db.display(),
        report.path.display(),
        human_bytes(report.bytes),
        report.pages,
        report.elapsed.as_millis()
    );
    Ok(())
}

pub(crate) fn restore(from: &Path, db: &Path) -> CliResult {
    if !from.is_file() {
        return Err(Failure::new(format!(
            "backup {} does not exist or is not a file",
            from.display()
        )));
    }
    let mut aside = db.as_os_str().to_owned();
    aside.push(format!(".replaced-{}", utc_file_stamp(SystemTime::now())));
    let bar = Progress::new(format!("restore {}", from.display()));
    let report = litebridge::restore_file(from, db, Path::new(&aside), |done, total| {
        bar.ratio(done, total)
    })?;
    bar.finish();
    println!(
        "restored {} from {} ({}, backup taken {} ago)",
        db.display(),
        from.display(),
        human_bytes(report.bytes),
        human_age(report.backup_age)
    );
    if let Some(kept) = report.replaced_kept_at {
        println!("the replaced database is kept at {}", kept.display());
    }
    Ok(())
}

pub(crate) fn restore_latest(db: &Path, dir: Option<&Path>) -> CliResult {
    let dir = dir.map_or_else(
        || {
            let mut p = db.as_os_str().to_owned();
            p.push(".backups");
            std::path::PathBuf::from(p)
        },
        Path::to_path_buf,
    );
    let bar = Progress::new(format!("restore --latest {}", db.display()));
    let recovery = litebridge::backups::recover(
        db,
        &dir,
        litebridge::backups::When::Always,
        |done, total| bar.ratio(done, total),
    );
    bar.finish();
    match recovery? {
        litebridge::backups::Recovery::Restored { from, age, report } => {
            println!(
                "restored {} from {} ({}, backup taken {} ago)",
                db.display(),
                from.display(),
                human_bytes(report.bytes),
                human_age(age)
            );
            if let Some(kept) = report.replaced_kept_at {
                println!("the replaced database is kept at {}", kept.display());
            }
            Ok(())
        }
        litebridge::backups::Recovery::Sound => Ok(()),
    }
}
