//! The state and memory stores and the schema migrations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use litebridge::store::{Clock, MemoryStore, SCHEMA_VERSION, StateStore, StateUpdate, migrate};
use litebridge::{Database, DbConfig, ErrorKind};
use serde_json::json;

#[derive(Debug)]
struct TestClock(Mutex<SystemTime>);

impl TestClock {
    fn new() -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )))
    }
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_upserts_keep_created_at_and_page_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let clock = TestClock::new();
    let store = StateStore::new(db.clone(), clock.clone());
    let first = store
        .save(StateUpdate {
            status: Some("running".into()),
            total_steps: Some(3),
            ..update("run-b", json!({"step": 1}))
        })
        .await
        .unwrap();
    assert_eq!(first.created_at, first.updated_at);
    clock.advance(Duration::from_secs(5));
    let second = store
        .save(StateUpdate {
            execution_time_ms: Some(1200),
            ..update("run-b", json!({"step": 2}))
        })
        .await
        .unwrap();
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(second.updated_at, first.updated_at + 5_000_000);
    assert_eq!(
        second.status.as_deref(),
        Some("running"),
        "omitted columns keep their value"
    );
    assert_eq!(second.total_steps, Some(3));
    assert_eq!(second.execution_time_ms, Some(1200));
    assert_eq!(second.state, json!({"step": 2}));
    for r in ["run-a", "run-c", "run-d", "run-e"] {
        store
            .save(StateUpdate {
                status: Some(if r == "run-c" { "failed" } else { "running" }.into()),
                ..update(r, json!(r))
            })
            .await
            .unwrap();
    }
    let page1 = store.list(Some("running"), 2, None).await.unwrap();
    let ids: Vec<_> = page1.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run-a", "run-b"]);
    let page2 = store.list(Some("running"), 2, Some("run-b")).await.unwrap();
    let ids: Vec<_> = page2.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run-d", "run-e"]);
    assert!(store.delete("run-a").await.unwrap());
    assert!(!store.delete("run-a").await.unwrap());
    assert_eq!(store.load("run-a").await.unwrap(), None);
    let e = store.save(update("", json!(1))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // A restart in between: everything is there.
    db.close().await;
    drop(db);
    let db = open(&path).await;
    let store = StateStore::new(db, clock);
    assert_eq!(
        store.load("run-b").await.unwrap().unwrap().state,
        json!({"step": 2})
    );
    assert_eq!(store.list(None, 100, None).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_of_one_run_leave_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("c.db")).await;
    let store = StateStore::new(db.clone(), Arc::new(litebridge::store::SystemClock));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.save(update("same", json!({"writer": i}))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        own_count(&db, "SELECT count(*) FROM litebridge_state").await,
        1
    );
    let w = store.load("same").await.unwrap().unwrap().state["writer"]
        .as_i64()
        .unwrap();
    assert!((0..32).contains(&w));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_entries_expire_exactly_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let db = open(&path).await;
    let clock = TestClock::new();
    let mem = MemoryStore::new(db.clone(), clock.clone());
    mem.store("agent-1", "goal", &json!("ship it"), None)
        .await
        .unwrap();
    mem.store(
        "agent-1",
        "scratch/a",
        &json!(1),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    mem.store(
        "agent-1",
        "scratch/b",
        &json!(2),
        Some(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    mem.store("agent-1", "scratch%_", &json!(3), None)
        .await
        .unwrap();
    mem.store("agent-2", "goal", &json!("other"), None)
        .await
        .unwrap();
    assert_eq!(
        mem.get("agent-2", "goal").await.unwrap(),
        Some(json!("other"))
    );
    let keys =
        |v: Vec<litebridge::store::MemoryEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(mem.list("agent-1", Some("scratch/"), 10).await.unwrap()),
        ["scratch/a", "scratch/b"]
    );
    clock.advance(Duration::from_secs(9));
    assert_eq!(
        mem.get("agent-1", "scratch/a").await.unwrap(),
        Some(json!(1))
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        mem.get("agent-1", "scratch/a").await.unwrap(),
        None,
        "expired at its TTL"
    );
    assert_eq!(
        keys(mem.list("agent-1", Some("scratch/"), 10).await.unwrap()),
        ["scratch/b"]
    );
    assert!(
        !mem.delete("agent-1", "scratch/a").await.unwrap(),
        "an expired entry is not there"
    );
    assert_eq!(mem.sweep().await.unwrap(), 1);
    assert_eq!(mem.sweep().await.unwrap(), 0);
    assert_eq!(
        own_count(&db, "SELECT count(*) FROM litebridge_memory").await,
        4
    );
    db.close().await;
    drop(db);
    let db = open(&path).await;
    let mem = MemoryStore::new(db, clock);
    assert_eq!(
        mem.get("agent-1", "goal").await.unwrap(),
        Some(json!("ship it"))
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
