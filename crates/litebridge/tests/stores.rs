//! The state and memory stores and the schema migrations.

use std::sync::Arc;

use litebridge::store::{SCHEMA_VERSION, StateStore, StateUpdate, migrate};
use litebridge::{Database, DbConfig};
use serde_json::json;

async fn open(path: &std::path::Path) -> Database {
    let db = Database::open(path, DbConfig::default()).await.unwrap();
    migrate(&db).await.unwrap();
    db
}

fn update(run: &str, state: serde_json::Value) -> StateUpdate {
    StateUpdate {
        run_id: run.into(),
        state,
        ..StateUpdate::default()
    }
}

/// Review 213: a trigger another process made on the state's table, then
/// dropped, kept refusing `save` (a write that returns its row) until some
/// other write had the writer read the schema again, up to a minute.
#[tokio::test]
async fn a_trigger_another_process_dropped_no_longer_refuses_state_saves() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let store = StateStore::new(db.clone(), Arc::new(litebridge::store::SystemClock));
    store.save(update("run", json!(1))).await.unwrap();
    let other = rusqlite::Connection::open(db.path()).unwrap();
    other
        .execute_batch("CREATE TRIGGER audit BEFORE UPDATE ON litebridge_state BEGIN SELECT 1; END")
        .unwrap();
    let refused = store.save(update("run", json!(2))).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        litebridge::ErrorKind::Forbidden,
        "{refused}"
    );
    assert!(refused.to_string().contains("\"audit\""), "{refused}");
    other.execute_batch("DROP TRIGGER audit").unwrap();
    store.save(update("run", json!(3))).await.unwrap();
    assert_eq!(store.load("run").await.unwrap().unwrap().state, json!(3));
}

/// Review 213: a trigger another process made on `litebridge_meta` made
/// every open fail with the authorizer's refusal of the migration's write,
/// before the check that names such objects and says what to do.
#[tokio::test]
async fn a_trigger_on_the_meta_table_is_named_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    open(&path).await.close().await;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TRIGGER zmeta AFTER UPDATE ON litebridge_meta BEGIN SELECT 1; END")
        .unwrap();
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    let e = migrate(&db).await.unwrap_err().to_string();
    assert!(e.contains("did not create") && e.contains("zmeta"), "{e}");
    assert!(e.contains("sqlite3 shell"), "{e}");
    db.close().await;
}

// The stores' behaviour on both backends is in stores_backends.rs; here:
// what is SQLite's own (a restart keeps the state, the migrations).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let clock = Arc::new(litebridge::store::SystemClock);
    let store = StateStore::new(db.clone(), clock.clone());
    store
        .save(update("run-b", json!({"step": 2})))
        .await
        .unwrap();
    db.close().await;
    drop(db);
    let db = open(&path).await;
    let store = StateStore::new(db, clock);
    assert_eq!(
        store.load("run-b").await.unwrap().unwrap().state,
        json!({"step": 2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_is_migrated_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // A version-0 database: a cache table with data and no meta table.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE litebridge_cache(key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER) WITHOUT ROWID;
             INSERT INTO litebridge_cache VALUES ('kept', '\"yes\"', NULL);
             PRAGMA user_version = 42;",
        )
        .unwrap();
    }
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    assert_eq!(migrate(&db).await.unwrap(), 0);
    assert_eq!(
        migrate(&db).await.unwrap(),
        SCHEMA_VERSION,
        "a second run finds it current"
    );
    assert_eq!(
        own_count(
            &db,
            "SELECT count(*) FROM litebridge_cache WHERE key = 'kept'"
        )
        .await,
        1
    );
    let uv = db.query("PRAGMA user_version", ()).await.unwrap();
    assert_eq!(
        uv.rows[0][0],
        litebridge::Value::Integer(42),
        "the application's user_version is untouched"
    );
    db.write(|c| {
        c.execute(
            "UPDATE litebridge_meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let e = migrate(&db).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("newer litebridge") && msg.contains("99") && msg.contains("old.db"),
        "{msg}"
    );
}

/// Reads litebridge's own tables the way application code may: in a closure
/// (client SQL through `query` is refused them).
async fn own_count(db: &Database, sql: &'static str) -> i64 {
    db.read(move |c| Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap()
}

/// The memory sweeper holds the database weakly: dropping the service's last
/// handle closes the database (its log is checkpointed and removed), as
/// `Database`'s documentation says. It held a strong handle, so a database
/// inside a `Service` stayed open for the life of the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_service_closes_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.db");
    let service = litebridge::Service::open(&path, litebridge::ServiceConfig::default())
        .await
        .unwrap();
    service
        .memory
        .store("ns", "k", &serde_json::json!(1), None)
        .await
        .unwrap();
    let wal = dir.path().join("svc.db-wal");
    assert!(wal.exists());
    drop(service);
    let closed = std::time::Instant::now();
    while wal.exists() && closed.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!wal.exists(), "the database stayed open");
}

/// The records' table is made `IF NOT EXISTS` (a keyed write may have made
/// it before the stores were migrated); one of another shape, or a trigger
/// given a name of litebridge's, is not adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_table_litebridge_did_not_make_stops_the_migration() {
    for planted in [
        "CREATE TABLE main.litebridge_claims(key BLOB PRIMARY KEY, result TEXT, created_at INTEGER)",
        "CREATE VIEW main.litebridge_claims AS SELECT 1 AS key, '' AS result, 0 AS created_at",
        "CREATE TABLE main.litebridge_claims(
         key BLOB PRIMARY KEY,
         result TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         clock_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TRIGGER main.litebridge_claims_created AFTER INSERT ON litebridge_claims BEGIN SELECT 1; END",
        "CREATE TABLE main.litebridge_claims(
         key BLOB PRIMARY KEY,
         result TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         clock_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX main.litebridge_claims_created ON litebridge_claims(result)",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("p.db"), DbConfig::default())
            .await
            .unwrap();
        db.write(move |c| Ok(c.execute_batch(planted)?))
            .await
            .unwrap();
        // Refused by the check of the namespace, or by the migration itself
        // (a view cannot be indexed).
        let e = migrate(&db).await.unwrap_err().to_string();
        assert!(
            (e.contains("did not create") && e.contains("litebridge_claims"))
                || e.contains("migration 3 -> 4 failed"),
            "{planted}: {e}"
        );
        db.close().await;
    }
    // The table a keyed write made first is litebridge's: adopted.
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("k.db"), DbConfig::default())
        .await
        .unwrap();
    db.execute("CREATE TABLE t(n)", ()).await.unwrap();
    let keyed = litebridge::WriteOptions {
        idempotency_key: Some(litebridge::IdempotencyKey::new(0, "k").unwrap()),
        ..litebridge::WriteOptions::default()
    };
    db.execute_with("INSERT INTO t VALUES (1)", (), keyed)
        .await
        .unwrap();
    assert_eq!(migrate(&db).await.unwrap(), 0);
    db.close().await;
}

/// A store made with `new` on a database nobody migrated says what to do,
/// not only "no such table" (a Rust user's review).
#[tokio::test]
async fn a_store_on_an_unmigrated_database_says_to_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("s.db"), DbConfig::default())
        .await
        .unwrap();
    let store = StateStore::new(&db, Arc::new(litebridge::store::SystemClock));
    let e = store.load("run-1").await.unwrap_err();
    assert!(e.to_string().contains("store::migrate"), "{e}");
    migrate(&db).await.unwrap();
    assert!(store.load("run-1").await.unwrap().is_none());
    db.close().await;
}

/// A page of large values ends early with its cursor, never holding more
/// than `PAGE_BYTES` of trees past its first item (review 159: a `read` key
/// listed a few values of small objects into gigabytes); paging on reaches
/// every entry, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_values_ends_early_with_its_cursor() {
    use litebridge::store::{MemoryStore, PAGE_BYTES, footprint};
    let dir = tempfile::tempdir().unwrap();
    // A stored value's tree is held to the result limit: 512 MiB here.
    let config = DbConfig::builder()
        .max_result_bytes(512 << 20)
        .max_request_memory(1 << 30)
        .build()
        .unwrap();
    let db = Database::open(dir.path().join("p.db"), config)
        .await
        .unwrap();
    migrate(&db).await.unwrap();
    let mem = MemoryStore::new(db, Arc::new(litebridge::store::SystemClock));
    // 400,000 one-member objects: 2.8 MB of JSON, more than PAGE_BYTES of tree.
    let big = serde_json::Value::Array(vec![json!({"": 0}); 400_000]);
    assert!(footprint(&big) > PAGE_BYTES, "{}", footprint(&big));
    for key in ["a", "b", "c"] {
        mem.store("ns", key, &big, None).await.unwrap();
    }
    mem.store("ns", "d", &json!(1), None).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = mem.page("ns", None, 10, after.as_deref()).await.unwrap();
        assert!(!page.items.is_empty());
        // Past its first item, no more than PAGE_BYTES.
        let total: u64 = page.items.iter().skip(1).map(|e| footprint(&e.value)).sum();
        assert!(total <= PAGE_BYTES, "{total}");
        seen.extend(page.items.iter().map(|e| e.key.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d"]);
    // `list` itself is not bounded (an embedder's own call).
    assert_eq!(mem.list("ns", None, 10, None).await.unwrap().len(), 4);
}
