//! The SQL authorizer against client SQL: one test per way around it.
//!
//! `query` is all a read-scoped key reaches; `execute`, `batch` and
//! `execute_many` are what a write-scoped key adds. Closures (`read`,
//! `write`) are the embedding application's code and are not restricted.

use std::sync::Arc;

use litebridge::store::{StateStore, StateUpdate, SystemClock, migrate};
use litebridge::{Database, DbConfig, Error, ErrorKind, Statement, WriteOptions};

async fn open() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path().join("a.db"),
        DbConfig::builder().readers(1).build().unwrap(),
    )
    .await
    .unwrap();
    migrate(&db).await.unwrap();
    db.execute("CREATE TABLE t(x)", ()).await.unwrap();
    (dir, db)
}

fn refused(e: &Error, sql: &str) {
    assert!(
        matches!(e.kind(), ErrorKind::Forbidden | ErrorKind::ReadOnly),
        "{sql}: expected a refusal, got {e:?}"
    );
}

async fn query_refused(db: &Database, sql: &str) -> Error {
    let e = db.query(sql, ()).await.expect_err(sql);
    refused(&e, sql);
    e
}

async fn execute_refused(db: &Database, sql: &str) -> Error {
    let e = db.execute(sql.to_owned(), ()).await.expect_err(sql);
    refused(&e, sql);
    e
}

async fn count(db: &Database, sql: &'static str) -> i64 {
    db.read(move |c| Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_read_path_cannot_write_through_a_cte() {
    let (_d, db) = open().await;
    let sql = "WITH x(v) AS (SELECT 1) INSERT INTO t SELECT v FROM x";
    let e = query_refused(&db, sql).await;
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    for sql in [
        "WITH x AS (SELECT 1) UPDATE t SET x = 2",
        "WITH x AS (SELECT 1) DELETE FROM t",
        "INSERT INTO t VALUES (1) RETURNING x",
        "REPLACE INTO t VALUES (1)",
        "CREATE TABLE u(y)",
        "DROP TABLE t",
    ] {
        query_refused(&db, sql).await;
    }
    assert_eq!(count(&db, "SELECT count(*) FROM t").await, 0);
}

#[tokio::test]
async fn the_read_path_cannot_change_pragmas_or_turn_query_only_off() {
    let (_d, db) = open().await;
    for sql in [
        "PRAGMA query_only = 0",
        "PRAGMA query_only = OFF",
        "PRAGMA main.query_only = false",
        "/* x */ pragma QUERY_ONLY=0",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA writable_schema = 1",
        "PRAGMA trusted_schema = 1",
        "PRAGMA cache_size = 1",
        "PRAGMA user_version = 9",
        "PRAGMA wal_checkpoint",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA optimize",
        "PRAGMA shrink_memory",
    ] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    // Still read-only afterwards.
    let e = db.query("INSERT INTO t VALUES (1)", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    // Reading a pragma is fine.
    db.query("PRAGMA user_version", ()).await.unwrap();
}

#[tokio::test]
async fn vacuum_into_writes_no_file_from_either_path() {
    let (d, db) = open().await;
    let target = d.path().join("stolen.db");
    let sql = format!("VACUUM INTO '{}'", target.display());
    for sql in [
        sql.as_str(),
        "VACUUM",
        "/* c */ vacuum main INTO '/tmp/x.db'",
    ] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    }
    assert!(!target.exists());
}

#[tokio::test]
async fn attach_and_detach_are_refused_everywhere() {
    let (d, db) = open().await;
    let other = d.path().join("other.db");
    let attach = format!("ATTACH DATABASE '{}' AS o", other.display());
    let e = query_refused(&db, &attach).await;
    assert!(e.to_string().contains("ATTACH"), "{e}");
    execute_refused(&db, &attach).await;
    execute_refused(&db, "ATTACH ':memory:' AS m").await;
    execute_refused(&db, "ATTACH 'file:x?mode=memory' AS m").await;
    execute_refused(&db, "DETACH DATABASE temp").await;
    let e = db
        .batch(
            vec![
                Statement::new("INSERT INTO t VALUES (1)", ()),
                Statement::new(attach.clone(), ()),
            ],
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden);
    assert_eq!(
        count(&db, "SELECT count(*) FROM t").await,
        0,
        "the batch is all or nothing"
    );
    assert!(!other.exists());
}

#[tokio::test]
async fn extensions_cannot_be_loaded() {
    let (_d, db) = open().await;
    for sql in [
        "SELECT load_extension('/tmp/evil.so')",
        "SELECT LOAD_EXTENSION('/tmp/evil.so', 'entry')",
        "SELECT fts3_tokenizer('simple')",
    ] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
        execute_refused(&db, sql).await;
    }
}

#[tokio::test]
async fn the_writer_refuses_security_and_durability_pragmas() {
    let (_d, db) = open().await;
    for sql in [
        "PRAGMA writable_schema = ON",
        "PRAGMA main.writable_schema = 1",
        "PRAGMA journal_mode = OFF",
        "PRAGMA journal_mode = MEMORY",
        "PRAGMA synchronous = OFF",
        "PRAGMA query_only = 1",
        "PRAGMA trusted_schema = ON",
        "PRAGMA locking_mode = EXCLUSIVE",
        "PRAGMA ignore_check_constraints = 1",
        "PRAGMA schema_version = 1",
        "PRAGMA secure_delete = 0",
        "PRAGMA cell_size_check = 0",
        "PRAGMA recursive_triggers = 0",
        "PRAGMA defer_foreign_keys = 1",
        "PRAGMA temp_store_directory = '/tmp'",
        "PRAGMA data_store_directory = '/tmp'",
        "PRAGMA hard_heap_limit = 1",
        "PRAGMA soft_heap_limit = 1",
        "PRAGMA threads = 8",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA max_page_count = 1",
        "PRAGMA page_size = 512",
        "PRAGMA auto_vacuum = FULL",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    let mode = db.query("PRAGMA journal_mode", ()).await.unwrap();
    assert_eq!(mode.rows[0][0], litebridge::Value::from("wal"));
    // The application's own settings in the file stay settable.
    db.execute("PRAGMA user_version = 3", ()).await.unwrap();
    db.execute("PRAGMA application_id = 77", ()).await.unwrap();
}

#[tokio::test]
async fn litebridges_own_tables_are_hidden_from_client_sql() {
    let (_d, db) = open().await;
    for sql in [
        "SELECT * FROM litebridge_keys",
        "SELECT count(*) FROM litebridge_quota",
        "SELECT value FROM litebridge_meta",
        "SELECT * FROM LITEBRIDGE_CACHE",
        "SELECT * FROM \"litebridge_state\"",
        "SELECT * FROM [litebridge_memory]",
        "SELECT * FROM main.litebridge_keys",
        "SELECT (SELECT count(*) FROM litebridge_keys)",
        "SELECT x FROM t WHERE EXISTS (SELECT 1 FROM litebridge_keys)",
        "SELECT * FROM t JOIN litebridge_keys",
    ] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    // Through a view made for the purpose: reading it is refused.
    db.execute("CREATE VIEW peek AS SELECT * FROM litebridge_keys", ())
        .await
        .ok();
    query_refused(&db, "SELECT * FROM peek").await;
    // Naming the prefix in a literal is harmless.
    let r = db
        .query(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'litebridge_%'",
            (),
        )
        .await
        .unwrap();
    assert!(matches!(r.rows[0][0], litebridge::Value::Integer(n) if n > 0));
}

#[tokio::test]
async fn litebridges_own_tables_are_read_only_and_unalterable() {
    let (_d, db) = open().await;
    for sql in [
        "INSERT INTO litebridge_cache VALUES ('k', '1', NULL)",
        "UPDATE litebridge_keys SET scopes = 'admin'",
        "DELETE FROM litebridge_quota",
        "INSERT OR REPLACE INTO litebridge_meta VALUES ('schema_version', '0')",
        "DROP TABLE litebridge_state",
        "ALTER TABLE litebridge_memory RENAME TO m",
        "ALTER TABLE litebridge_memory ADD COLUMN z",
        "CREATE INDEX i ON litebridge_keys(name)",
        "DROP INDEX litebridge_state_status",
        "CREATE TRIGGER tr AFTER INSERT ON litebridge_keys BEGIN SELECT 1; END",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON litebridge_keys BEGIN SELECT 1; END",
        "CREATE TABLE litebridge_evil(x)",
        "CREATE VIEW litebridge_v AS SELECT 1",
        "CREATE TABLE copy AS SELECT * FROM litebridge_keys",
        "INSERT INTO t SELECT hash FROM litebridge_keys",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    let e = db
        .execute_many(
            "INSERT INTO litebridge_cache VALUES (?1, '1', NULL)",
            vec![litebridge::params!["a"], litebridge::params!["b"]],
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden);
    assert_eq!(count(&db, "SELECT count(*) FROM litebridge_cache").await, 0);
    assert!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'copy'"
        )
        .await
            == 0
    );
}

#[tokio::test]
async fn a_trigger_on_a_client_table_cannot_write_litebridges_tables() {
    let (_d, db) = open().await;
    // Creating it may pass; firing it from client SQL cannot.
    let _ = db
        .execute(
            "CREATE TRIGGER sneak AFTER INSERT ON t BEGIN \
             INSERT INTO litebridge_cache VALUES ('planted', '1', NULL); END",
            (),
        )
        .await;
    let e = db
        .execute("INSERT INTO t VALUES (1)", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert_eq!(count(&db, "SELECT count(*) FROM litebridge_cache").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM t").await, 0);
}

#[tokio::test]
async fn the_statement_cache_never_hands_client_sql_a_trusted_statement() {
    let (_d, db) = open().await;
    let store = StateStore::new(db.clone(), Arc::new(SystemClock));
    store
        .save(StateUpdate {
            run_id: "secret-run".into(),
            state: serde_json::json!({"token": "s3cret"}),
            ..StateUpdate::default()
        })
        .await
        .unwrap();
    // The store's own text, now in the reader's statement cache.
    assert!(store.load("secret-run").await.unwrap().is_some());
    let text = "SELECT run_id, state, status, total_steps, error_message, execution_time_ms, \
                memory_usage_mb, created_at, updated_at FROM main.litebridge_state WHERE run_id = ?1";
    for _ in 0..3 {
        let e = db
            .query(text, litebridge::params!["secret-run"])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
        assert!(store.load("secret-run").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn temporary_objects_are_refused_on_every_connection() {
    let (_d, db) = open().await;
    // On the writer they would outlive the request and reach every other
    // caller: a temp table named like an ordinary one shadows it for them.
    for sql in [
        "CREATE TEMP TABLE t(x)",
        "CREATE TABLE temp.shadow(x)",
        "CREATE TEMPORARY VIEW v AS SELECT 1",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
        "CREATE TEMP TABLE litebridge_state(run_id TEXT PRIMARY KEY, state TEXT) WITHOUT ROWID",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    let e = db
        .batch(
            vec![
                Statement::new("CREATE TEMP TABLE x(a)", ()),
                Statement::new("INSERT INTO x VALUES (1)", ()),
            ],
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM temp.sqlite_schema").await,
        0
    );
}

#[tokio::test]
async fn a_table_cannot_be_renamed_into_litebridges_namespace() {
    let (_d, db) = open().await;
    db.execute("CREATE TABLE plain(a, b)", ()).await.unwrap();
    db.execute("INSERT INTO plain VALUES (1, 2)", ())
        .await
        .unwrap();
    db.execute(
        "CREATE TRIGGER plain_tr AFTER INSERT ON plain BEGIN SELECT 1; END",
        (),
    )
    .await
    .unwrap();
    for sql in [
        "ALTER TABLE plain RENAME TO litebridge_future",
        "ALTER TABLE main.plain RENAME TO \"LiteBridge_Keys2\"",
        "/* c */ ALTER TABLE plain RENAME TO [litebridge_x]",
        "ALTER TABLE plain RENAME TO `litebridge_quota2`",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
        assert!(e.to_string().contains("litebridge_"), "{e}");
    }
    // Inside a batch the whole batch fails and nothing of it stays.
    let e = db
        .batch(
            vec![
                Statement::new("INSERT INTO plain VALUES (3, 4)", ()),
                Statement::new("ALTER TABLE plain RENAME TO litebridge_future", ()),
            ],
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    // The same text again: never served from a cache without the check.
    for _ in 0..3 {
        execute_refused(&db, "ALTER TABLE plain RENAME TO litebridge_future").await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'litebridge%' AND name NOT IN \
             ('litebridge_meta','litebridge_cache','litebridge_cache_expiry','litebridge_state','litebridge_state_status',\
              'litebridge_memory','litebridge_memory_expiry','litebridge_keys','litebridge_quota',\
              'litebridge_claims','litebridge_claims_created','litebridge_claims_clock')"
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM plain").await, 1);
    // Ordinary renames still work, twice (the statement is prepared each time).
    db.execute("ALTER TABLE plain RENAME TO plain2", ())
        .await
        .unwrap();
    db.execute("ALTER TABLE plain2 RENAME TO plain", ())
        .await
        .unwrap();
    db.execute("ALTER TABLE plain RENAME COLUMN b TO c", ())
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(c) FROM plain").await, 1);
}

#[tokio::test]
async fn a_clients_trigger_never_runs_with_trusted_rights() {
    let (_d, db) = open().await;
    // A trigger on a table the application writes from a (trusted) closure.
    db.execute(
        "CREATE TRIGGER sneak AFTER INSERT ON t BEGIN \
         INSERT INTO litebridge_cache VALUES ('planted', '1', NULL); \
         UPDATE litebridge_meta SET value = '99' WHERE key = 'schema_version'; END",
        (),
    )
    .await
    .unwrap();
    let e = db
        .write(|c| Ok(c.execute("INSERT INTO t VALUES (1)", [])?))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert_eq!(count(&db, "SELECT count(*) FROM litebridge_cache").await, 0);
    assert_eq!(
        count(
            &db,
            "SELECT CAST(value AS INTEGER) FROM litebridge_meta WHERE key = 'schema_version'"
        )
        .await,
        litebridge::store::SCHEMA_VERSION
    );
}

#[tokio::test]
async fn planner_statistics_of_litebridges_tables_are_never_gathered_or_shown() {
    let (_d, db) = open().await;
    let store = StateStore::new(db.clone(), Arc::new(SystemClock));
    for i in 0..20 {
        store
            .save(StateUpdate {
                run_id: format!("private-run-{i}"),
                state: serde_json::json!({}),
                status: Some("secret-status".into()),
                ..StateUpdate::default()
            })
            .await
            .unwrap();
    }
    db.execute("CREATE INDEX t_x ON t(x)", ()).await.unwrap();
    db.execute("INSERT INTO t VALUES (1), (2)", ())
        .await
        .unwrap();
    // ANALYZE in every form works, and leaves litebridge's tables out.
    for sql in [
        "ANALYZE",
        "ANALYZE main",
        "ANALYZE litebridge_state",
        "ANALYZE t",
        "PRAGMA optimize",
    ] {
        db.execute(sql, ())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert!(count(&db, "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 't'").await > 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_stat1 WHERE tbl LIKE 'litebridge%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_stat4 WHERE tbl LIKE 'litebridge%'"
        )
        .await,
        0
    );
    for sql in [
        "SELECT CAST(sample AS TEXT) FROM sqlite_stat4",
        "SELECT * FROM sqlite_stat1",
        "SELECT * FROM main.SQLITE_STAT1",
        "SELECT (SELECT count(*) FROM sqlite_stat4)",
    ] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    for sql in [
        "INSERT INTO sqlite_stat1 VALUES ('litebridge_keys', NULL, '1000000')",
        "UPDATE sqlite_stat1 SET stat = '1'",
        "DELETE FROM sqlite_stat1",
        "DROP TABLE sqlite_stat1",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
}

/// After `ANALYZE`, a table or an index is still dropped (SQLite deletes its
/// statistics as part of the drop; review 215 found every such drop refused
/// as a use of the statistics), and the statistics stay closed otherwise.
#[tokio::test]
async fn tables_and_indexes_are_dropped_after_analyze() {
    let (_d, db) = open().await;
    for sql in [
        "CREATE TABLE a(x)",
        "CREATE INDEX a_x ON a(x)",
        "CREATE TABLE b(y)",
        "CREATE INDEX b_y ON b(y)",
        "INSERT INTO a VALUES (1), (2)",
        "INSERT INTO b VALUES (1), (2)",
        "CREATE VIRTUAL TABLE f5 USING fts5(x)",
        "CREATE VIRTUAL TABLE f4 USING fts4(x)",
        "INSERT INTO f5 VALUES ('one')",
        "ANALYZE",
        "DROP TABLE f5",
        "DROP TABLE f4",
        "ALTER TABLE b RENAME TO c",
        "DROP INDEX a_x",
        "DROP TABLE a",
        "DROP TABLE c",
    ] {
        db.execute(sql, ())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_stat1 WHERE tbl IN ('a', 'c')"
        )
        .await,
        0
    );
    for sql in ["DELETE FROM sqlite_stat1", "DROP TABLE sqlite_stat1"] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }

    // A trigger a drop fires (through a foreign key's cascade) is still
    // held to the rules: only the drop's own delete may touch them.
    let dir = tempfile::tempdir().unwrap();
    let config = DbConfig::builder().foreign_keys(true).build().unwrap();
    let db = Database::open(dir.path().join("f.db"), config)
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE p(id INTEGER PRIMARY KEY)",
        "CREATE TABLE c(p REFERENCES p ON DELETE CASCADE)",
        "CREATE TABLE seen(tbl, stat)",
        "CREATE TRIGGER c_gone AFTER DELETE ON c BEGIN \
         INSERT INTO seen SELECT tbl, stat FROM sqlite_stat1; END",
        "INSERT INTO p VALUES (1)",
        "INSERT INTO c VALUES (1)",
        "ANALYZE",
    ] {
        db.execute(sql, ())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let e = execute_refused(&db, "DROP TABLE p").await;
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert!(e.to_string().contains("statistics"), "{e}");
}

/// `dbstat` tells the pages and bytes of every table, litebridge's
/// included: no connection has its module, under its own name or another
/// (review 216 made one as `d`), even one another program made.
#[tokio::test]
async fn dbstat_is_reached_under_no_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    migrate(&db).await.unwrap();
    for sql in ["SELECT * FROM dbstat", "SELECT * FROM dbstat('main')"] {
        let e = db.query(sql, ()).await.expect_err(sql);
        assert!(
            e.to_string().contains("no such table: dbstat"),
            "{sql}: {e}"
        );
    }
    let e = db
        .execute("CREATE VIRTUAL TABLE d USING dbstat", ())
        .await
        .expect_err("made");
    assert!(e.to_string().contains("no such module: dbstat"), "{e}");
    db.close().await;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE VIRTUAL TABLE d USING dbstat")
        .unwrap();
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    let e = db
        .query("SELECT name, sum(payload) FROM d GROUP BY name", ())
        .await
        .expect_err("read");
    assert!(e.to_string().contains("no such module: dbstat"), "{e}");
    db.close().await;
}

#[tokio::test]
async fn introspection_neither_describes_litebridges_tables_nor_tells_file_paths() {
    let (_d, db) = open().await;
    for sql in [
        "SELECT * FROM pragma_table_info('litebridge_keys')",
        "SELECT * FROM pragma_index_list('litebridge_state')",
        "SELECT * FROM pragma_index_info('litebridge_state_status')",
        "PRAGMA table_info(litebridge_memory)",
        "PRAGMA main.table_xinfo(\"litebridge_quota\")",
        "PRAGMA database_list",
        "SELECT file FROM pragma_database_list",
        "PRAGMA temp_store_directory",
        "PRAGMA data_store_directory",
    ] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    // The same for the client's own tables works.
    let r = db
        .query("SELECT name FROM pragma_table_info('t')", ())
        .await
        .unwrap();
    assert_eq!(r.rows.len(), 1);
    db.query("PRAGMA quick_check(1)", ()).await.unwrap();
}

#[tokio::test]
async fn a_client_table_cannot_reference_litebridges_tables() {
    let (_d, db) = open().await;
    db.execute("CREATE TABLE spy(x TEXT)", ()).await.unwrap();
    db.execute("INSERT INTO spy VALUES ('run-1')", ())
        .await
        .unwrap();
    for sql in [
        // A virtual generated column's REFERENCES is not checked by SQLite
        // on ALTER: rows pointing at litebridge's would exist at once, and a
        // cascade would run this table's triggers inside a trusted DELETE.
        "ALTER TABLE spy ADD COLUMN r TEXT GENERATED ALWAYS AS (x) VIRTUAL \
         REFERENCES litebridge_state(run_id) ON DELETE CASCADE",
        "ALTER TABLE spy ADD COLUMN k TEXT REFERENCES \"LiteBridge_Keys\"(name)",
        "CREATE TABLE pin(x TEXT REFERENCES litebridge_keys(name))",
        "CREATE TABLE pin2(x TEXT, FOREIGN KEY (x) REFERENCES [litebridge_memory](key))",
        "CREATE TABLE pin3(x TEXT REFERENCES litebridge_future(x))",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
        assert!(e.to_string().contains("foreign key"), "{sql}: {e}");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'pin%' OR sql LIKE '%litebridge%' AND name NOT LIKE 'litebridge%'"
        )
        .await,
        0
    );
    // Foreign keys between client tables still work.
    db.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)", ())
        .await
        .unwrap();
    db.execute(
        "CREATE TABLE child(p INTEGER REFERENCES parent(id) ON DELETE CASCADE)",
        (),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_temp_trigger_on_a_main_table_is_refused() {
    let (_d, db) = open().await;
    // Reported to the authorizer in the table's schema, not as temporary.
    for sql in [
        "CREATE TRIGGER temp.tr AFTER INSERT ON main.t BEGIN SELECT 1; END",
        "CREATE TEMP TRIGGER tr2 AFTER INSERT ON main.t BEGIN SELECT 1; END",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM temp.sqlite_schema").await,
        0
    );
}

#[tokio::test]
async fn a_cte_named_like_litebridge_gives_a_trigger_no_trusted_rights() {
    let (_d, db) = open().await;
    db.execute("CREATE TABLE loot(v)", ()).await.unwrap();
    db.execute(
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN \
         INSERT INTO loot SELECT * FROM (WITH litebridge_x AS (SELECT hash FROM main.litebridge_keys) \
         SELECT * FROM litebridge_x); END",
        (),
    )
    .await
    .unwrap();
    // Fired from the application's own (trusted) closure.
    let e = db
        .write(|c| Ok(c.execute("INSERT INTO t VALUES (1)", [])?))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert_eq!(count(&db, "SELECT count(*) FROM loot").await, 0);
}

#[tokio::test]
async fn a_table_named_like_a_table_valued_function_is_refused() {
    let (_d, db) = open().await;
    // It would stand in for the function in litebridge's own checks and in
    // every other caller's queries.
    for sql in [
        "CREATE TABLE pragma_foreign_key_list(x)",
        "CREATE TABLE Pragma_Table_Info(x)",
        "CREATE VIEW json_each AS SELECT 1",
        "CREATE TABLE JSON_TREE(x)",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    db.execute("CREATE TABLE plain(x)", ()).await.unwrap();
    let e = execute_refused(&db, "ALTER TABLE plain RENAME TO pragma_index_list").await;
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    // And with none of them, a foreign key to litebridge's tables is still caught.
    let e = execute_refused(
        &db,
        "CREATE TABLE rk(x REFERENCES litebridge_keys(revoked_at))",
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqlite_schema WHERE name IN ('rk') OR name LIKE 'pragma%' OR lower(name) LIKE 'json%'").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_cut_short_by_the_deadline_never_passes_a_change() {
    let (_d, db) = open().await;
    for i in 0..300 {
        db.execute(format!("CREATE TABLE filler{i}(x)"), ())
            .await
            .unwrap();
    }
    db.execute("CREATE TABLE plain(x)", ()).await.unwrap();
    for timeout_ms in 1..40u64 {
        let _ = db
            .execute_with(
                "ALTER TABLE plain RENAME TO litebridge_jobs",
                (),
                WriteOptions {
                    timeout: Some(std::time::Duration::from_millis(timeout_ms)),
                    ..WriteOptions::default()
                },
            )
            .await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'litebridge_jobs'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn external_content_full_text_tables_are_refused() {
    let (_d, db) = open().await;
    db.execute("CREATE TABLE src(x)", ()).await.unwrap();
    for sql in [
        "CREATE VIRTUAL TABLE f4 USING fts4(x, content=\"src\")",
        "CREATE VIRTUAL TABLE f4b USING fts4(x, \"content\" = src)",
        "CREATE VIRTUAL TABLE k4 USING fts4(name, content='litebridge_keys')",
        "CREATE VIRTUAL TABLE f5 USING fts5(x, content='src')",
        "CREATE VIRTUAL TABLE f5b USING fts5(x, content_rowid=x)",
    ] {
        let e = execute_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    // An ordinary full-text table works, and the file stays sound.
    db.execute("CREATE VIRTUAL TABLE plain_fts USING fts5(x, prefix=2)", ())
        .await
        .unwrap();
    assert!(db.check(litebridge::CheckDepth::Quick).await.unwrap().ok);
}

#[tokio::test]
async fn the_writers_counters_show_no_one_elses_rows() {
    let (_d, db) = open().await;
    db.execute("CREATE TABLE c(x)", ()).await.unwrap();
    // A trusted insert into litebridge's tables (rowid 1 of litebridge_keys).
    litebridge::auth::create_key(
        &db,
        &litebridge::auth::Tiers::default(),
        litebridge::auth::NewKey {
            name: Some("k".into()),
            scopes: "read".parse::<litebridge::auth::Scopes>().unwrap(),
            tier: "free".into(),
        },
    )
    .await
    .unwrap();
    let r = db.execute("UPDATE c SET x = x WHERE 0", ()).await.unwrap();
    assert_eq!(r.last_insert_rowid, 0);
    db.execute("INSERT INTO c SELECT last_insert_rowid()", ())
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT x FROM c").await, 0);
    for sql in ["SELECT changes()", "SELECT total_changes()"] {
        let e = query_refused(&db, sql).await;
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    let e = query_refused(
        &db,
        "SELECT * FROM pragma_index_info('sqlite_autoindex_litebridge_keys_2')",
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_twice_in_one_batch_works() {
    let (_d, db) = open().await;
    let (a, b, c) = tokio::join!(
        db.execute("ANALYZE", ()),
        db.execute("ANALYZE", ()),
        db.execute("ANALYZE", ())
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
}
