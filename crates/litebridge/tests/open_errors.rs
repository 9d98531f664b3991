//! Mistakes a new user makes get one clear error naming what is wrong, and
//! nothing is written.

use litebridge::{Database, DbConfig, ErrorKind};

#[tokio::test]
async fn a_directory_as_the_database_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = Database::open(dir.path(), DbConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    let msg = e.to_string();
    assert!(
        msg.contains(&dir.path().display().to_string()) && msg.contains("directory"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_missing_directory_and_an_unwritable_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("app.db");
    let e = Database::open(&path, DbConfig::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no-such-dir") && e.to_string().contains("does not exist"),
        "{e}"
    );

    // Not writable even for root.
    let e = Database::open("/proc/litebridge-test.db", DbConfig::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/proc/litebridge-test.db"), "{e}");
    assert!(!std::path::Path::new("/proc/litebridge-test.db").exists());
}

/// A database file litebridge's user may read but not write, in a
/// directory it may write: SQLite opens it read-only without a word, and
/// every write failed as a bare `read_only` (review 145). It is read (a
/// `litebridge query` of a file one may only read: review 147), writes are
/// refused naming the file, and its health says why. Run as root, the test
/// runs itself again as `nobody` (root may write any file).
#[tokio::test]
async fn a_read_only_database_file_is_read_and_its_writes_refused_naming_it() {
    const AS: &str = "LB_TEST_READ_ONLY_DB";
    if let Some(path) = std::env::var_os(AS) {
        let db = Database::open(&path, DbConfig::default()).await.unwrap();
        let rows = db.query("SELECT count(*) FROM t", ()).await.unwrap();
        assert_eq!(rows.rows[0][0], litebridge::Value::Integer(1));
        let e = db
            .execute("INSERT INTO t VALUES (2)", ())
            .await
            .expect_err("a read-only file");
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&*path.to_string_lossy())
                && msg.contains("read-only for litebridge's user"),
            "{msg}"
        );
        let health = db.health();
        assert!(!health.healthy);
        assert!(health.problems[0].contains("read-only"), "{health:?}");
        db.close().await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    // In WAL mode already: nothing of the opening writes.
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    db.execute("CREATE TABLE t(x)", ()).await.unwrap();
    db.execute("INSERT INTO t VALUES (1)", ()).await.unwrap();
    db.close().await;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let me = std::env::current_exe().unwrap();
    let test = "a_read_only_database_file_is_read_and_its_writes_refused_naming_it";
    let mut run = if is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&me);
        c
    } else {
        std::process::Command::new(&me)
    };
    let out = run
        .args([test, "--exact", "--nocapture"])
        .env(AS, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this process runs as root (`/proc/self/status`'s real uid).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let content = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let e = Database::open(&path, DbConfig::default())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("not a SQLite database"),
        "{msg}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "files were created: {names:?}");
}

#[tokio::test]
async fn a_bad_config_value_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut config = DbConfig::default();
    config.readers = 0;
    let e = Database::open(&path, config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("db.readers"), "{e}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_damaged_file_is_refused_at_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = damaged_db(dir.path());
    let e = Database::open(&path, DbConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("app.db"), "{e}");
    let r = litebridge::check_file(&path, litebridge::CheckDepth::Quick).unwrap();
    assert!(!r.ok);
}

/// `app.db` with a table and an index of 5,000 rows, pages in its middle overwritten.
fn damaged_db(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("app.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);
             CREATE INDEX t_v ON t(v);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 5000)
             INSERT INTO t SELECT x, printf('%0100d', x) FROM c;",
        )
        .unwrap();
    }
    corrupt_middle_pages(&path);
    path
}

/// Overwrites a few pages in the middle of the file with garbage.
pub fn corrupt_middle_pages(path: &std::path::Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for page in [len / 4096 / 2, len / 4096 / 2 + 3] {
        f.seek(SeekFrom::Start(page * 4096 + 8)).unwrap();
        f.write_all(&[0xA5; 2000]).unwrap();
    }
}

#[tokio::test]
async fn corruption_met_at_run_time_marks_the_database_unhealthy_and_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = damaged_db(dir.path());
    // Opened without the check, as a file damaged after start would be.
    let config = DbConfig::builder()
        .quick_check_on_open(false)
        .build()
        .unwrap();
    let db = Database::open(&path, config).await.unwrap();
    assert!(db.health().healthy);
    let scans = [
        "SELECT max(length(v)) FROM t NOT INDEXED",
        "SELECT count(*) FROM t INDEXED BY t_v WHERE v > ''",
    ];
    let mut errors = Vec::new();
    for sql in scans {
        if let Err(e) = db.query(sql, ()).await {
            errors.push(e);
        }
    }
    let e = errors
        .iter()
        .find(|e| e.kind() == ErrorKind::Corrupt)
        .unwrap_or_else(|| panic!("no scan met the damage: {errors:?}"));
    assert!(!e.is_recoverable(), "corruption is never retried blindly");
    // The message names the damaged file (it printed an empty path).
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    let health = db.health();
    assert!(!health.healthy);
    assert!(
        health.problems.iter().any(|p| p.contains("SQLITE_CORRUPT")),
        "{:?}",
        health.problems
    );
    db.close().await;
}

/// A database another process holds locked at the start is refused naming
/// the file and the lock, once ("database is locked: database is locked",
/// with no path, was the message).
#[tokio::test]
async fn a_database_locked_by_another_process_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder
        .execute_batch("CREATE TABLE t(x); PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let config = DbConfig::builder()
        .busy_timeout(std::time::Duration::from_millis(100))
        .quick_check_on_open(false)
        .build()
        .unwrap();
    let e = Database::open(&path, config).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("held.db") && msg.contains("locked by another process"),
        "{msg}"
    );
    assert_eq!(msg.matches("database is locked").count(), 1, "{msg}");
    drop(holder);
}

/// Two statements where one is allowed are refused as such, whatever the
/// first does: rusqlite prepared the second to find out, and its error
/// (`no such table: t`, the table the first would have made) hid the
/// mistake. A `;` in a string or a trailing comment is no second statement.
#[tokio::test]
async fn two_statements_in_one_request_are_refused_as_two() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("two.db"), DbConfig::default())
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE t(a); INSERT INTO t VALUES (1)",
        "CREATE TABLE t(a); SELECT * FROM nowhere",
        "SELECT 1; SELECT 2",
    ] {
        let e = db.execute(sql, ()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{sql}: {e}");
        assert!(e.to_string().contains("only one statement"), "{sql}: {e}");
    }
    db.execute("CREATE TABLE t(a); -- made here\n", ())
        .await
        .unwrap();
    db.execute("INSERT INTO t VALUES ('a;b'); /* done */", ())
        .await
        .unwrap();
    let e = db
        .execute("INSERT INTO nowhere VALUES (1)", ())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no such table"), "{e}");
}
