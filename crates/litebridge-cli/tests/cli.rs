//! The `litebridge` binary end to end: exit codes, messages, files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn litebridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(args)
        .output()
        .expect("run litebridge")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A database with a table of 5000 rows and an index.
fn sample_db(dir: &Path) -> PathBuf {
    let path = dir.join("app.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX t_v ON t(v);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 5000)
         INSERT INTO t SELECT x, printf('%0100d', x) FROM c;",
    )
    .unwrap();
    path
}

fn corrupt_middle_pages(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for page in [len / 4096 / 2, len / 4096 / 2 + 3] {
        f.seek(SeekFrom::Start(page * 4096 + 8)).unwrap();
        f.write_all(&[0xA5; 2000]).unwrap();
    }
}

#[test]
fn check_exits_0_when_sound_and_2_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample_db(dir.path());
    let ok = litebridge(&["check", "--db", s(&db)]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("passed quick_check"));
    let full = litebridge(&["check", "--db", s(&db), "--full", "--json"]);
    assert_eq!(full.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    assert_eq!(v["ok"], true);

    corrupt_middle_pages(&db);
    let bad = litebridge(&["check", "--db", s(&db)]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stdout));
    assert!(
        text(&bad.stdout).contains("FAILED"),
        "{}",
        text(&bad.stdout)
    );
    assert!(
        text(&bad.stderr).contains("app.db is damaged"),
        "{}",
        text(&bad.stderr)
    );
    let bad_json = litebridge(&["check", "--db", s(&db), "--json"]);
    assert_eq!(bad_json.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&bad_json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(!v["problems"].as_array().unwrap().is_empty());

    // A damaged header is damage too (exit 2, not 1: monitoring that looks
    // for 2 missed it), said in one line, and in JSON.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&[0; 16]).unwrap();
    }
    let header = litebridge(&["check", "--db", s(&db)]);
    assert_eq!(header.status.code(), Some(2), "{}", text(&header.stderr));
    let err = text(&header.stderr);
    assert!(
        err.contains("not a SQLite database") && err.contains("restore"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let header_json = litebridge(&["check", "--db", s(&db), "--json"]);
    assert_eq!(header_json.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&header_json.stdout).unwrap();
    assert_eq!(v["ok"], false);
}

/// Foreign keys that break, or cannot be read ("foreign key mismatch", a
/// schema any `write` key can make), are the data's: the whole check warns
/// of them and exits 0; it said the file was damaged and to restore a
/// backup (review 198). A file whose schema SQLite cannot read is not
/// called sound: exit 1, "could not be checked" (it said "ok").
#[test]
fn check_tells_the_datas_findings_and_a_check_that_could_not_run_from_damage() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fk.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p(a);
             CREATE TABLE c(x REFERENCES p(a));
             CREATE TABLE q(a PRIMARY KEY);
             CREATE TABLE d(x REFERENCES q(a));
             INSERT INTO d VALUES (7);",
        )
        .unwrap();
    let full = litebridge(&["check", "--db", s(&db), "--full"]);
    let out = text(&full.stdout);
    assert_eq!(full.status.code(), Some(0), "{out}{}", text(&full.stderr));
    assert!(
        out.contains("foreign key mismatch") && out.contains("not damage"),
        "{out}"
    );
    let json = litebridge(&["check", "--db", s(&db), "--full", "--json"]);
    assert_eq!(json.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert!(!v["foreign_key_violations"].as_array().unwrap().is_empty());
    // Without the mismatch the violation itself is listed, as the data's.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE c")
        .unwrap();
    let full = litebridge(&["check", "--db", s(&db), "--full"]);
    let out = text(&full.stdout);
    assert_eq!(full.status.code(), Some(0), "{out}");
    assert!(out.contains("d rowid 1 -> q"), "{out}");

    // A generated column that reads itself (made by another program).
    let loop_db = dir.path().join("loop.db");
    rusqlite::Connection::open(&loop_db)
        .unwrap()
        .execute_batch(
            r#"CREATE TABLE t(x, g INT AS (x + true));
               ALTER TABLE t RENAME COLUMN g TO "true";"#,
        )
        .unwrap();
    for args in [vec!["--full"], vec![], vec!["--json"]] {
        let mut all = vec!["check", "--db", s(&loop_db)];
        all.extend(args.iter().copied());
        let out = litebridge(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        if args.is_empty() {
            let err = text(&out.stderr);
            assert!(
                err.contains("could not be checked") && err.contains("generated column loop"),
                "{err}"
            );
        }
    }
}

/// A PRAGMA that sets a value runs on the writer, as the README says of
/// anything that is not a plain read (it was refused: "send it with
/// execute", which the command line has no way to).
#[test]
fn query_sets_a_pragma_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let set = litebridge(&[
        "query",
        "--db",
        s(&db),
        "--create",
        "PRAGMA user_version = 6",
    ]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set.stderr));
    let read = litebridge(&["query", "--db", s(&db), "--json", "PRAGMA user_version"]);
    assert!(text(&read.stdout).contains('6'), "{}", text(&read.stdout));
}

#[test]
fn query_writes_and_reads_as_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let missing = litebridge(&["query", "--db", s(&db), "SELECT 1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("does not exist"),
        "{}",
        text(&missing.stderr)
    );
    assert!(
        !db.exists(),
        "query must not create a database without --create"
    );

    let create = litebridge(&[
        "query",
        "--db",
        s(&db),
        "--create",
        "CREATE TABLE kv(k INTEGER PRIMARY KEY, v)",
    ]);
    assert_eq!(create.status.code(), Some(0), "{}", text(&create.stderr));
    let insert = litebridge(&[
        "query",
        "--db",
        s(&db),
        "INSERT INTO kv VALUES (?1, ?2)",
        "9007199254740993",
        "hello",
    ]);
    assert_eq!(insert.status.code(), Some(0), "{}", text(&insert.stderr));
    assert!(text(&insert.stdout).contains("1 row(s) changed"));

    let table = litebridge(&["query", "--db", s(&db), "SELECT k, v FROM kv"]);
    let out = text(&table.stdout);
    assert!(
        out.contains("9007199254740993") && out.contains("hello") && out.contains("(1 row)"),
        "{out}"
    );

    let json = litebridge(&[
        "query",
        "--db",
        s(&db),
        "--json",
        "SELECT k, v FROM kv WHERE v = ?1",
        "hello",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["columns"], serde_json::json!(["k", "v"]));
    assert_eq!(v["rows"][0][0].as_i64(), Some(9_007_199_254_740_993));

    let bad = litebridge(&["query", "--db", s(&db), "SELEC nonsense"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("syntax error"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn backup_then_restore_keeps_the_replaced_file_aside() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample_db(dir.path());
    let backup = dir.path().join("app.backup");
    let b = litebridge(&["backup", "--db", s(&db), "--to", s(&backup)]);
    assert_eq!(b.status.code(), Some(0), "{}", text(&b.stderr));
    assert!(text(&b.stdout).contains("verified"));

    // An existing file is never overwritten by mistake: a second backup to
    // the same name needs --replace, and --replace replaces only an earlier
    // copy, never a file of anything else (a mistyped --to).
    let again = litebridge(&["backup", "--db", s(&db), "--to", s(&backup)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("--replace"),
        "{}",
        text(&again.stderr)
    );
    let again = litebridge(&["backup", "--db", s(&db), "--to", s(&backup), "--replace"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    for extra in [&[][..], &["--replace"][..]] {
        let mut args = vec!["backup", "--db", s(&db), "--to", s(&notes)];
        args.extend_from_slice(extra);
        let out = litebridge(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(
            text(&out.stderr).contains("notes.txt"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");

    // The live database moves on after the backup.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM t WHERE k > 10", [])
        .unwrap();
    let r = litebridge(&["restore", "--from", s(&backup), "--db", s(&db)]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    let out = text(&r.stdout);
    assert!(out.contains("kept at"), "{out}");
    let n: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5000);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("app.db.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept: i64 = rusqlite::Connection::open(dir.path().join(&aside[0]))
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 10, "the replaced database must be kept as it was");
}

#[test]
fn restore_refuses_a_damaged_backup_and_a_database_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample_db(dir.path());
    let backup = dir.path().join("copy.db");
    std::fs::copy(&db, &backup).unwrap();
    corrupt_middle_pages(&backup);
    let r = litebridge(&["restore", "--from", s(&backup), "--db", s(&db)]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("failed verification"),
        "{}",
        text(&r.stderr)
    );

    let good = dir.path().join("good.db");
    assert_eq!(
        litebridge(&["backup", "--db", s(&db), "--to", s(&good)])
            .status
            .code(),
        Some(0)
    );
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    holder
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    let r = litebridge(&["restore", "--from", s(&good), "--db", s(&db)]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stdout));
    assert!(text(&r.stderr).contains("in use"), "{}", text(&r.stderr));
    drop(holder);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("replaced"))
        .collect();
    assert!(
        left.is_empty(),
        "nothing may be moved when the restore is refused: {left:?}"
    );
}

#[test]
fn user_mistakes_get_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(
        &notes,
        "not a database at all, just some words\n".repeat(100),
    )
    .unwrap();
    for (args, needle) in [
        (vec!["check", "--db", s(dir.path())], "directory"),
        (
            vec!["query", "--db", s(&notes), "SELECT 1"],
            "not a SQLite database",
        ),
        (
            vec!["backup", "--db", "/nonexistent/app.db", "--to", "/tmp/x.db"],
            "does not exist",
        ),
        (vec!["bench", "--case", "nope"], "unknown bench case"),
        (vec!["bench", "--seconds=-1"], "out of range"),
    ] {
        let out = litebridge(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let out = litebridge(&["query"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--db"), "{}", text(&out.stderr));
    let help = litebridge(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    for command in [
        "serve", "stdio", "mcp", "query", "check", "backup", "restore", "keys", "bench",
    ] {
        assert!(text(&help.stdout).contains(command), "{command}");
    }
    assert!(text(&help.stdout).contains("HTTP, stdio and MCP"));
}

#[test]
fn bench_prints_one_json_object_per_case() {
    let dir = tempfile::tempdir().unwrap();
    let out = litebridge(&[
        "bench",
        "--case",
        "write-sequential",
        "--seconds",
        "0.2",
        "--json",
        "--dir",
        s(dir.path()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<_> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["case"], "write-sequential");
    assert_eq!(v["baseline"], "mutex");
    for key in [
        "ops_per_sec",
        "p50_us",
        "p99_us",
        "baseline_ops_per_sec",
        "ratio",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    let scratch: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(scratch.is_empty(), "the bench left files behind");
}

/// The HTTP cases run in rounds on one server: each round's requests must
/// be valid after the last's (http-execute's keys once collided from the
/// second round on, failing the case).
#[test]
fn the_http_bench_cases_run_all_their_rounds() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["http-query", "http-execute"] {
        let out = litebridge(&[
            "bench",
            "--case",
            case,
            "--seconds",
            "0.3",
            "--json",
            "--dir",
            s(dir.path()),
        ]);
        assert_eq!(out.status.code(), Some(0), "{case}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!(v["case"], case);
        assert!(v["ratio"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    }
}

#[test]
fn configuration_sources_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("litebridge.toml");
    std::fs::write(
        &file,
        "[db]\nreaders = 3\ndurability = \"full\"\n[workers]\nprocesses = 4\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args([
            "serve",
            "--print-config",
            "--config",
            s(&file),
            "--processes",
            "6",
        ])
        .env("POOL_MAX_READERS", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("readers = 5  # environment POOL_MAX_READERS"),
        "{shown}"
    );
    assert!(shown.contains("durability = \"full\"  # file"), "{shown}");
    assert!(
        shown.contains("processes = 6  # flag --processes"),
        "{shown}"
    );
    // What it prints is a configuration file that gives the same values
    // (each section once: `[workers]` came twice).
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &shown).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["serve", "--print-config", "--config", s(&printed)])
        .env("LITEBRIDGE_NATS_TOKEN", "secret")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    let values = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split("  # ").next().unwrap().to_owned())
            .filter(|l| !l.starts_with('#') && !l.starts_with("token ="))
            .collect()
    };
    assert_eq!(values(&text(&again.stdout)), values(&shown));
    assert!(
        text(&again.stdout).contains("# token = (set, not shown)"),
        "{}",
        text(&again.stdout)
    );
    // What start checks without the database is checked; what needs it
    // (a key, for an address beyond loopback) is said, and nothing is made.
    let db = dir.path().join("never.db");
    let print = |listen: &str| {
        litebridge(&[
            "serve",
            "--print-config",
            "--db",
            s(&db),
            "--listen",
            listen,
        ])
    };
    let out = print("0.0.0.0:0");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("# server.listen 0.0.0.0:0 reaches beyond this machine"),
        "{}",
        text(&out.stdout)
    );
    // An IPv4 loopback address written as IPv6 is loopback (review 207).
    let out = print("[::ffff:127.0.0.1]:0");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("reaches beyond"));
    let out = print("nowhere");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("server.listen \"nowhere\" (flag --listen) is not an address"),
        "{}",
        text(&out.stderr)
    );
    assert!(!db.exists());
    std::fs::write(&file, "[db]\nreaders = 3\nwal_mode = true\n").unwrap();
    let out = litebridge(&["serve", "--print-config", "--config", s(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown configuration key `db.wal_mode`"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db", s(&dir.path().join("x.db"))])
        .env("LITEBRIDGE_DB_DURABILITY", "sometimes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("db.durability") && err.contains("sometimes") && err.contains("normal, full"),
        "{err}"
    );
    assert!(
        !dir.path().join("x.db").exists(),
        "nothing is created when the configuration is refused"
    );
}

#[test]
fn recover_uses_the_newest_backup_that_passes_verification() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample_db(dir.path());
    let backups = dir.path().join("app.db.backups");
    std::fs::create_dir_all(&backups).unwrap();
    let older = backups.join("app.db.20260101T000000Z.backup");
    let newer = backups.join("app.db.20260102T000000Z.backup");
    assert_eq!(
        litebridge(&["backup", "--db", s(&db), "--to", s(&older)])
            .status
            .code(),
        Some(0)
    );
    // Grow the table (no DELETE: damage on free pages is invisible to quick_check).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO t SELECT k + 100000, v FROM t", [])
        .unwrap();
    assert_eq!(
        litebridge(&["backup", "--db", s(&db), "--to", s(&newer)])
            .status
            .code(),
        Some(0)
    );
    // The newest backup is damaged; so is the database.
    corrupt_middle_pages(&newer);
    corrupt_middle_pages(&db);

    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db", s(&db)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    // One line says it all: what is wrong, and the backup to start from.
    let line = err.lines().find(|l| l.contains("corrupt")).unwrap_or("");
    assert!(
        line.contains("20260101T000000Z") && line.contains("--recover"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--recover", "--db", s(&db)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("restored") && text(&out.stderr).contains("20260101T000000Z"),
        "{}",
        text(&out.stderr)
    );
    let n: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5000, "the older, sound backup was restored");
    let damaged: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("app.db.damaged-"))
        .collect();
    assert_eq!(
        damaged.len(),
        1,
        "the damaged file is kept aside: {damaged:?}"
    );

    // restore --latest with no usable backup: one clear error.
    std::fs::remove_file(&older).unwrap();
    let out = litebridge(&["restore", "--latest", "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("passes verification"),
        "{}",
        text(&out.stderr)
    );
}

/// A database in WAL mode with `rows` rows in table `table` written to its
/// log and not checkpointed; the connection that wrote them, to be
/// forgotten (as a kill -9 would) so the log stays.
fn with_log(path: &Path, table: &str, rows: u32) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE {table}(x);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT {rows})
         INSERT INTO {table} SELECT i FROM c;"
    ))
    .unwrap();
    c
}

#[test]
fn restore_replayed_a_stale_log_left_beside_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample_db(dir.path());
    let backup = dir.path().join("b1.db");
    let b = litebridge(&["backup", "--db", s(&db), "--to", s(&backup)]);
    assert_eq!(b.status.code(), Some(0), "{}", text(&b.stderr));
    // Writes in the log, the process killed, the database file gone (a
    // crash between a restore's renames, or an operator).
    let writer = with_log(&db, "later", 6000);
    assert!(Path::new(&format!("{}-wal", s(&db))).exists());
    std::mem::forget(writer);
    std::fs::rename(&db, dir.path().join("elsewhere.db")).unwrap();

    let r = litebridge(&["restore", "--from", s(&backup), "--db", s(&db)]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    // The restored database is the backup, and nothing else.
    let check = litebridge(&["check", "--db", s(&db)]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5000);
    let later: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'later'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        later, 0,
        "the stale log was replayed into the restored file"
    );
    // The log was moved aside with the name the report gives.
    assert!(text(&r.stdout).contains("kept at"), "{}", text(&r.stdout));
}

#[test]
fn restore_from_a_file_whose_writes_are_still_in_its_log_copied_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    let writer = with_log(&source, "notes", 300);
    let db = dir.path().join("app.db");
    let r = litebridge(&["restore", "--from", s(&source), "--db", s(&db)]);
    drop(writer);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    let n: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 300);
    // Nothing is left beside the restored file but what SQLite makes.
    let extra: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("restoring") || n.contains("partial"))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
}

/// A database gone while its backups are there (deleted by mistake, a
/// volume not mounted) is not started again empty in silence: the start is
/// refused, naming `--recover`, which restores the newest backup.
#[test]
fn a_missing_database_with_backups_is_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample_db(dir.path());
    let backups = dir.path().join("app.db.backups");
    std::fs::create_dir(&backups).unwrap();
    let copy = backups.join("app.db.20261205T000000Z.backup");
    let b = litebridge(&["backup", "--db", s(&db), "--to", s(&copy)]);
    assert_eq!(b.status.code(), Some(0), "{}", text(&b.stderr));
    std::fs::remove_file(&db).unwrap();
    let stdio = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .args(["stdio", "--db", s(&db)])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // `--recover` restores the backup: all its rows.
    let recovers = || {
        let recovered = stdio(&["--recover"]);
        assert_eq!(
            recovered.status.code(),
            Some(0),
            "{}",
            text(&recovered.stderr)
        );
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5000);
    };
    let refused = stdio(&[]);
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(
        err.contains("--recover") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!db.exists(), "an empty database was made");
    recovers();
    // Through a link whose target is gone (a volume not mounted): the same
    // (review 142: SQLite created the target).
    let volume = dir.path().join("vol");
    std::fs::create_dir(&volume).unwrap();
    std::fs::rename(&db, volume.join("real.db")).unwrap();
    std::os::unix::fs::symlink(volume.join("real.db"), &db).unwrap();
    std::fs::remove_file(volume.join("real.db")).unwrap();
    let refused = stdio(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--recover"));
    assert!(
        !volume.join("real.db").exists(),
        "an empty database was made"
    );
    // Emptied (truncated to 0 bytes, a volume made afresh): the same
    // (review 180: SQLite opened it as a new database).
    std::fs::remove_file(&db).unwrap();
    std::fs::File::create(&db).unwrap();
    let refused = stdio(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(
        err.contains("--recover") && err.contains("is empty"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "it was written");
    recovers();
}

/// Scheduled backups into a path that is a file are refused at the start,
/// naming the key (the server started, and logged a misleading failure at
/// every interval while /ready said 200).
#[test]
fn a_backup_dir_that_is_a_file_is_refused_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notadir");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db", s(&dir.path().join("b.db"))])
        .env("LITEBRIDGE_BACKUP_ENABLED", "true")
        .env("LITEBRIDGE_BACKUP_DIR", &file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("backup.dir") && err.contains("not a directory"),
        "{err}"
    );
}

/// `keys create` on a database that does not exist says it made one (a
/// mistyped --db left the server on the real database without the key,
/// unnoticed); on one that exists it says nothing of the kind.
#[test]
fn keys_create_says_when_it_made_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("typo.db");
    let create = |name: &str| {
        let out = litebridge(&[
            "keys",
            "create",
            "--db",
            s(&db),
            "--scope",
            "read",
            "--name",
            name,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let first = create("a");
    assert!(first.contains("a new database"), "{first}");
    let second = create("b");
    assert!(!second.contains("a new database"), "{second}");
}
