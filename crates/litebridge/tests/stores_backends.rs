//! The stores on both backends: each body runs as `sqlite` on a SQLite file
//! and as `postgres` on PostgreSQL (with the `postgres` feature; skipped
//! without `LB_TEST_PG`, see common/pg.rs), through the same store
//! code.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use litebridge::store::{Clock, MemoryStore, StateStore, StateUpdate, migrate};
use litebridge::{Backend, Database, DbConfig, ErrorKind};
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

/// Runs `body` on a migrated SQLite file and on a migrated PostgreSQL schema.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let db = super::Database::open(dir.path().join("t.db"), super::DbConfig::default())
                    .await
                    .unwrap();
                super::migrate(&db).await.unwrap();
                super::$body(super::Backend::Sqlite(db.clone())).await;
                db.close().await;
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(schema) = super::common::pg::Schema::new().await else {
                    return;
                };
                let db = schema.open().await;
                super::$body(super::Backend::Postgres(db.clone())).await;
                db.close();
                schema.drop_now().await;
            }
        }
    };
}

fn update(run: &str, state: serde_json::Value) -> StateUpdate {
    StateUpdate {
        run_id: run.into(),
        state,
        ..StateUpdate::default()
    }
}

both!(state_upserts_keep_created_at_and_page_by_key, state_body);
async fn state_body(db: Backend) {
    let clock = TestClock::new();
    let store = StateStore::new(db, clock.clone());
    let first = store
        .save(StateUpdate {
            status: Some("running".into()),
            total_steps: Some(3),
            memory_usage_mb: Some(12.5),
            ..update("run-b", json!({"step": 1, "big": i64::MAX}))
        })
        .await
        .unwrap();
    assert_eq!(first.created_at, first.updated_at);
    assert_eq!(first.memory_usage_mb, Some(12.5));
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
    assert_eq!(second.status.as_deref(), Some("running"));
    assert_eq!(second.total_steps, Some(3));
    assert_eq!(second.execution_time_ms, Some(1200));
    for r in ["run-a", "run-c", "run-d", "run-e"] {
        store
            .save(StateUpdate {
                status: Some(if r == "run-c" { "failed" } else { "running" }.into()),
                ..update(r, json!(r))
            })
            .await
            .unwrap();
    }
    let ids = |v: Vec<litebridge::store::StateRecord>| {
        v.into_iter().map(|r| r.run_id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.list(Some("running"), 2, None).await.unwrap()),
        ["run-a", "run-b"]
    );
    assert_eq!(
        ids(store.list(Some("running"), 2, Some("run-b")).await.unwrap()),
        ["run-d", "run-e"]
    );
    assert_eq!(store.list(None, 100, None).await.unwrap().len(), 5);
    let long = "r".repeat(litebridge::store::MAX_RUN_ID + 1);
    let e = store.list(None, 100, Some(&long)).await.unwrap_err();
    assert!(e.to_string().contains("after"), "{e}");
    assert!(store.delete("run-a").await.unwrap());
    assert!(!store.delete("run-a").await.unwrap());
    assert_eq!(store.load("run-a").await.unwrap(), None);
    assert_eq!(
        store.load("run-b").await.unwrap().unwrap().state,
        json!({"step": 2})
    );
    let e = store.save(update("", json!(1))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

both!(concurrent_upserts_of_one_run_leave_one_row, concurrent_body);
async fn concurrent_body(db: Backend) {
    let store = StateStore::new(db, Arc::new(litebridge::store::SystemClock));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.save(update("same", json!({"writer": i}))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.list(None, 100, None).await.unwrap().len(), 1);
}

both!(memory_entries_expire_exactly_and_are_swept, memory_body);
async fn memory_body(db: Backend) {
    let clock = TestClock::new();
    let mem = MemoryStore::new(db, clock.clone());
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
        keys(
            mem.list("agent-1", Some("scratch/"), 10, None)
                .await
                .unwrap()
        ),
        ["scratch/a", "scratch/b"]
    );
    // No key is longer than 1 KiB: a longer prefix or cursor is refused,
    // naming the parameter (review 159: any size was taken).
    let long = "k".repeat(litebridge::store::MAX_NAME + 1);
    for (prefix, after, named) in [
        (Some(long.as_str()), None, "prefix"),
        (None, Some(long.as_str()), "after"),
    ] {
        let e = mem.list("agent-1", prefix, 10, after).await.unwrap_err();
        assert_eq!(e.kind(), litebridge::ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(named), "{e}");
    }
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        mem.get("agent-1", "scratch/a").await.unwrap(),
        None,
        "expired at its TTL"
    );
    assert!(!mem.delete("agent-1", "scratch/a").await.unwrap());
    assert_eq!(mem.sweep().await.unwrap(), 1);
    assert_eq!(mem.sweep().await.unwrap(), 0);
    assert_eq!(
        keys(mem.list("agent-1", None, 10, None).await.unwrap()).len(),
        3
    );
    // In pages: each from the key after the last of the one before.
    let first = keys(mem.list("agent-1", None, 2, None).await.unwrap());
    assert_eq!(first.len(), 2);
    let rest = keys(mem.list("agent-1", None, 2, Some(&first[1])).await.unwrap());
    assert_eq!(rest.len(), 1);
    assert!(rest[0] > first[1]);
    // With a prefix too, page by page, each key once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = keys(
            mem.list("agent-1", Some("scratch/"), 1, after.as_deref())
                .await
                .unwrap(),
        );
        let Some(last) = page.last().cloned() else {
            break;
        };
        assert!(!seen.contains(&last), "{last} twice: {seen:?}");
        seen.push(last.clone());
        after = Some(last);
    }
    assert_eq!(
        seen,
        keys(
            mem.list("agent-1", Some("scratch/"), 10, None)
                .await
                .unwrap()
        )
    );
    // Many expired at once go in batches, every one of them.
    for i in 0..150 {
        mem.store(
            "agent-3",
            &format!("k{i}"),
            &json!(i),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(mem.sweep().await.unwrap(), 150);
    assert_eq!(mem.sweep().await.unwrap(), 0);
    assert_eq!(
        keys(mem.list("agent-1", None, 10, None).await.unwrap()).len(),
        3
    );
}

/// The clients' role cannot reach litebridge's own tables on PostgreSQL:
/// not through the client SQL path, whatever it names.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_client_sql_cannot_reach_the_stores() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let db = schema.open().await;
    let store = StateStore::new(db.clone(), Arc::new(litebridge::store::SystemClock));
    store
        .save(update("secret-run", json!({"token": "s3cret"})))
        .await
        .unwrap();
    let own = schema.own();
    for sql in [
        format!("SELECT * FROM {own}.litebridge_state"),
        format!("SELECT * FROM {own}.litebridge_keys"),
        format!("SELECT * FROM {own}.litebridge_meta"),
    ] {
        let e = db
            .query_with(&sql, (), litebridge::QueryOptions::default())
            .await
            .expect_err(&sql);
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    for sql in [
        format!("UPDATE {own}.litebridge_keys SET scopes = 'admin'"),
        format!("CREATE TABLE {own}.evil(x int)"),
        format!("DROP TABLE {own}.litebridge_state"),
        format!(
            "CREATE TRIGGER t AFTER INSERT ON {own}.litebridge_state FOR EACH ROW EXECUTE FUNCTION now()"
        ),
    ] {
        let e = db
            .execute_with(&sql, (), litebridge::WriteOptions::default())
            .await
            .expect_err(&sql);
        assert!(
            matches!(e.kind(), ErrorKind::Forbidden | ErrorKind::Sql),
            "{sql}: {e}"
        );
    }
    assert_eq!(
        store.load("secret-run").await.unwrap().unwrap().state,
        json!({"token": "s3cret"})
    );
    // A schema the clients' role may use is refused at connect.
    let admin = common::pg::admin(&schema.url).await;
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA {own} TO {}",
            common::pg::CLIENT_ROLE
        ))
        .await
        .unwrap();
    let e = litebridge::pg::PgDatabase::connect(schema.config())
        .await
        .expect_err("the clients' role can use the schema");
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert!(e.to_string().contains("REVOKE"), "{e}");
    db.close();
    schema.drop_now().await;
}

/// Two front ends starting at once on a new schema migrate one after the
/// other (an advisory lock), and both work.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_front_ends_migrate_together() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let config = schema.config();
            tokio::spawn(async move { litebridge::pg::PgDatabase::connect(config).await })
        })
        .collect();
    let mut dbs = Vec::new();
    for o in opens {
        dbs.push(o.await.unwrap().unwrap());
    }
    let a = MemoryStore::new(dbs[0].clone(), Arc::new(litebridge::store::SystemClock));
    let b = MemoryStore::new(dbs[3].clone(), Arc::new(litebridge::store::SystemClock));
    a.store("ns", "k", &json!("from a"), None).await.unwrap();
    assert_eq!(b.get("ns", "k").await.unwrap(), Some(json!("from a")));
    for db in dbs {
        db.close();
    }
    schema.drop_now().await;
}

both!(cache_l2_is_shared_and_swept, cache_body);
async fn cache_body(db: Backend) {
    use litebridge::store::{Cache, CacheConfig};
    let clock = TestClock::new();
    // Two caches on one database: two front ends with their own memory.
    let a = Cache::with_backend(db.clone(), CacheConfig::default(), clock.clone());
    let b = Cache::with_backend(db.clone(), CacheConfig::default(), clock.clone());
    a.set(
        "k",
        json!({"n": i64::MAX, "s": "ü"}),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(
        b.get("k").await.unwrap(),
        Some(json!({"n": i64::MAX, "s": "ü"}))
    );
    assert_eq!(b.stats().l2_hits, 1);
    a.set("forever", json!(1), None).await.unwrap();
    for i in 0..3 {
        a.set(&format!("short{i}"), json!(i), Some(Duration::from_secs(1)))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    let swept = a.sweeper().sweep(db.clone()).await.unwrap();
    assert_eq!(swept.deleted, 4, "k and the three short ones");
    assert_eq!(a.count_l2().await, Some(1));
    assert!(b.delete("forever").await.unwrap());
    assert_eq!(a.count_l2().await, Some(0));
}

both!(keys_and_quotas_are_shared_by_front_ends, keys_body);
async fn keys_body(db: Backend) {
    use litebridge::auth::{Auth, NewKey, Scope, Scopes, Tiers, create_key, list_keys, revoke_key};
    let tiers = Tiers::default();
    let new = |name: &str| NewKey {
        name: Some(name.into()),
        scopes: "read,write".parse::<Scopes>().unwrap(),
        tier: "free".into(),
    };
    let (info, secret) = create_key(db.clone(), &tiers, new("ci")).await.unwrap();
    assert!(info.id > 0);
    let e = create_key(db.clone(), &tiers, new("ci"))
        .await
        .expect_err("taken");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("exists already"), "{e}");
    let clock = TestClock::new();
    // Two front ends on one database.
    let a = Auth::open(db.clone(), tiers.clone(), clock.clone())
        .await
        .unwrap();
    let b = Auth::open(db.clone(), tiers.clone(), clock.clone())
        .await
        .unwrap();
    let caller = a.authenticate(&secret).unwrap();
    caller.require(Scope::Write, "sql.execute").unwrap();
    for _ in 0..3 {
        a.authenticate(&secret).unwrap().charge().unwrap();
        b.authenticate(&secret).unwrap().charge().unwrap();
    }
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    a.flush().await.unwrap();
    // Each front end counts what the other counted, from its next flush.
    for front in [&a, &b] {
        let used = front.authenticate(&secret).unwrap().key().unwrap().used();
        assert_eq!(used.0, 6, "{used:?}");
    }
    // A third front end sees what both counted.
    let c = Auth::open(db.clone(), tiers.clone(), clock.clone())
        .await
        .unwrap();
    assert_eq!(c.authenticate(&secret).unwrap().key().unwrap().used().0, 6);
    let listed = list_keys(db.clone()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used.is_some());
    // Revoked through one front end: the other stops accepting it at its
    // next refresh.
    assert!(revoke_key(db.clone(), "ci").await.unwrap());
    assert!(!revoke_key(db.clone(), "ci").await.unwrap());
    assert!(b.refresh().await.unwrap());
    let e = b.authenticate(&secret).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    // A caller that presented it to the first front end before (a batch
    // still running there) starts nothing more from that front end's next
    // refresh, whatever the scope.
    assert!(a.still_valid(&caller));
    assert!(a.refresh().await.unwrap());
    assert!(!a.still_valid(&caller));
    let e = caller.require(Scope::Read, "sql.query").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
}

/// Two front ends' caches on `schema`'s database, both listening: the
/// caches and their databases.
#[cfg(feature = "postgres")]
async fn two_listening_caches(
    schema: &common::pg::Schema,
) -> (
    litebridge::store::Cache,
    litebridge::store::Cache,
    litebridge::pg::PgDatabase,
    litebridge::pg::PgDatabase,
) {
    use litebridge::store::{Cache, CacheConfig};
    let (da, db_) = (schema.open().await, schema.open().await);
    let clock = Arc::new(litebridge::store::SystemClock);
    let a = Cache::with_backend(da.clone().into(), CacheConfig::default(), clock.clone());
    let b = Cache::with_backend(db_.clone().into(), CacheConfig::default(), clock);
    let started = std::time::Instant::now();
    while a.stats().listening != Some(true) || b.stats().listening != Some(true) {
        assert!(started.elapsed() < Duration::from_secs(5), "not listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (a, b, da, db_)
}

/// Writes of one key through two front ends at once: each front end's
/// memory ends with what the table holds. A `set` put its value in memory
/// after its L2 write even when the other front end's later write had been
/// heard meanwhile, and served it until its TTL (review 159).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_writes_at_once_leave_no_stale_memory() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, b, _da, _db) = two_listening_caches(&schema).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let admin = common::pg::admin(&schema.url).await;
    let mut stale = Vec::new();
    for round in 0..5 {
        let keys: Vec<String> = (0..200).map(|i| format!("race{round}_{i}")).collect();
        let writes = keys.iter().map(|k| {
            let (a, b, k) = (a.clone(), b.clone(), k.clone());
            async move {
                let (x, y) = tokio::join!(a.set(&k, json!("a"), None), b.set(&k, json!("b"), None));
                x.unwrap();
                y.unwrap();
            }
        });
        futures_util::future::join_all(writes).await;
        // Every notification heard.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for k in &keys {
            let row = admin
                .query_one(
                    &format!(
                        "SELECT value FROM {}.litebridge_cache WHERE key = $1",
                        schema.own()
                    ),
                    &[k],
                )
                .await
                .unwrap();
            let stored: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
            for (name, cache) in [("a", &a), ("b", &b)] {
                let seen = cache.get(k).await.unwrap().unwrap();
                if seen != stored {
                    stale.push(format!(
                        "{name} serves {seen} for {k}, the table holds {stored}"
                    ));
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

/// A listener whose connection goes silent (its server process stopped:
/// nothing closes the connection) is found lost within seconds and listens
/// again; until then its memory is not trusted. It was trusted for as long
/// as TCP took to give up, hours, with other front ends' writes unheard
/// (review 160).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_listener_gone_silent_listens_again() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, b, _da, _db) = two_listening_caches(&schema).await;
    let listening = |c: &litebridge::store::Cache| c.stats().listening == Some(true);
    // The listeners' server processes, stopped: silent, not closed.
    let admin = common::pg::admin(&schema.url).await;
    let own = schema.own();
    let pattern = format!("LISTEN \"lbc_{}%", &own[..own.len().min(42)]);
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let signal = |sig: &str| {
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    };
    struct Cont<F: Fn(&str)>(F);
    impl<F: Fn(&str)> Drop for Cont<F> {
        fn drop(&mut self) {
            (self.0)("-CONT");
        }
    }
    signal("-STOP");
    let _cont = Cont(signal);
    let stopped = std::time::Instant::now();
    while listening(&a) {
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "a silent listener was trusted for {:?}",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("found lost after {:?}", stopped.elapsed());
    while !listening(&a) {
        assert!(
            stopped.elapsed() < Duration::from_secs(25),
            "never listened again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Heard again: b's write drops a's copy.
    a.set("k", json!(1), None).await.unwrap();
    b.set("k", json!(2), None).await.unwrap();
    let heard = std::time::Instant::now();
    while a.get("k").await.unwrap() != Some(json!(2)) {
        assert!(
            heard.elapsed() < Duration::from_secs(5),
            "b's write unheard"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two front ends' caches on one PostgreSQL L2: a write through one drops
/// the key from the other's memory (LISTEN/NOTIFY); while a front end's
/// listener is down, its memory is not used.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_writes_reach_the_other_front_ends_memory() {
    use litebridge::store::{Cache, CacheConfig};
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (da, db_) = (schema.open().await, schema.open().await);
    let clock = Arc::new(litebridge::store::SystemClock);
    let a = Cache::with_backend(da.clone().into(), CacheConfig::default(), clock.clone());
    let b = Cache::with_backend(db_.clone().into(), CacheConfig::default(), clock);
    let listening = |c: &Cache| c.stats().listening == Some(true);
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !f() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    };
    until("both listening", &|| listening(&a) && listening(&b));
    b.set("k", json!(1), None).await.unwrap();
    // (A copy read while b's notification is on its way is not kept.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.get("k").await.unwrap(), Some(json!(1)));
    let hits = a.stats().l1_hits;
    assert_eq!(a.get("k").await.unwrap(), Some(json!(1)));
    assert_eq!(a.stats().l1_hits, hits + 1, "served from memory");
    // Found by a hostile review: the clients' SQL (a `read` key's) could
    // notify the channel, named after the schema, and flood every front
    // end's listener. Its name now ends in a hash of a secret.
    for guess in [format!("lbc_{}", schema.own()), "lbc_litebridge".to_owned()] {
        da.query_with(
            "SELECT pg_notify(?1, ?2)::text",
            litebridge::params![guess, "1:k"],
            Default::default(),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.get("k").await.unwrap(), Some(json!(1)));
    assert_eq!(
        a.stats().l1_hits,
        hits + 2,
        "a client's notification was heard"
    );
    // A new value through b: a's memory lets the old one go.
    b.set("k", json!(2), None).await.unwrap();
    let mut seen = json!(1);
    let started = std::time::Instant::now();
    while seen != json!(2) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a kept serving {seen}"
        );
        seen = a.get("k").await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eprintln!("a saw b's write after {:?}", started.elapsed());
    b.delete("k").await.unwrap();
    let started = std::time::Instant::now();
    while a.get("k").await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a kept a deleted key"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // a's listener is cut: a reads the L2 until it listens again.
    let admin = common::pg::admin(&schema.url).await;
    a.set("j", json!("old"), None).await.unwrap();
    let cut = admin
        .query_one(
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE query ~ '^LISTEN \"lbc_{}_[0-9a-f]{{16}}\"$'",
                schema.own()
            ),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(cut, 2, "both listeners found");
    until("a noticed", &|| !listening(&a));
    b.set("j", json!("new"), None).await.unwrap();
    assert_eq!(a.get("j").await.unwrap(), Some(json!("new")));
    until("a listens again", &|| listening(&a));
    assert_eq!(a.get("j").await.unwrap(), Some(json!("new")));
    da.close();
    db_.close();
    schema.drop_now().await;
}

/// Two front ends' caches on one PostgreSQL L2 split as a failover that
/// lost the idempotency secret leaves them: `a` holds the secret it read at
/// its start, and the database another, which `b`, started after, holds.
/// `a`'s listener does not look at the secret until the test lets it.
#[cfg(feature = "postgres")]
async fn split_caches(
    schema: &common::pg::Schema,
) -> (
    litebridge::store::Cache,
    litebridge::store::Cache,
    litebridge::pg::PgDatabase,
    litebridge::pg::PgDatabase,
) {
    use litebridge::store::{Cache, CacheConfig};
    let clock = Arc::new(litebridge::store::SystemClock);
    let da = schema.open().await;
    let a = Cache::with_backend(da.clone().into(), CacheConfig::default(), clock.clone());
    wait_until("a listening", Duration::from_secs(5), || {
        a.stats().listening == Some(true)
    });
    da.faults().hold_secret_looks(true);
    common::pg::admin(&schema.url)
        .await
        .batch_execute(&format!(
            "UPDATE {}.litebridge_meta SET value = md5('lost') || md5('secret') \
             WHERE key = 'claims_secret'",
            schema.own()
        ))
        .await
        .unwrap();
    let db_ = schema.open().await;
    let b = Cache::with_backend(db_.clone().into(), CacheConfig::default(), clock);
    wait_until("b listening", Duration::from_secs(5), || {
        b.stats().listening == Some(true)
    });
    // A value in b's memory, written through a.
    a.set("k", json!(1), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.get("k").await.unwrap(), Some(json!(1)));
    let hits = b.stats().l1_hits;
    assert_eq!(b.get("k").await.unwrap(), Some(json!(1)));
    assert_eq!(b.stats().l1_hits, hits + 1, "served from memory");
    (a, b, da, db_)
}

/// A cache on a PostgreSQL L2 of its own front end, listening.
#[cfg(feature = "postgres")]
async fn listening_cache(
    schema: &common::pg::Schema,
) -> (litebridge::store::Cache, litebridge::pg::PgDatabase) {
    use litebridge::store::{Cache, CacheConfig};
    let db = schema.open().await;
    let cache = Cache::with_backend(
        db.clone().into(),
        CacheConfig::default(),
        Arc::new(litebridge::store::SystemClock),
    );
    wait_until("listening", Duration::from_secs(5), || {
        cache.stats().listening == Some(true)
    });
    (cache, db)
}

/// Waits until `cache` serves `value` for `k`, failing with `what` past
/// `within`; how long it took.
#[cfg(feature = "postgres")]
async fn until_served(
    cache: &litebridge::store::Cache,
    value: serde_json::Value,
    within: Duration,
    what: &str,
) -> Duration {
    let started = std::time::Instant::now();
    while cache.get("k").await.unwrap() != Some(value.clone()) {
        assert!(started.elapsed() < within, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[cfg(feature = "postgres")]
fn wait_until(what: &str, within: Duration, f: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Review 226: the cache's channel is named after the idempotency secret,
/// and a failover that lost it, with a front end started after it that
/// made another, left front ends on two channels: each served from memory
/// what the other changed, until it was restarted. A front end that makes
/// no keyed write never noticed. Each listener now follows the database's
/// secret, and one that moves asks the others to empty their memory.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_caches_hear_each_other_after_a_failover_changed_the_secret() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, b, da, db_) = split_caches(&schema).await;
    // The split: b does not hear a.
    a.set("k", json!(2), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.get("k").await.unwrap(), Some(json!(1)), "b heard a");
    // a's listener looks, takes the database's secret and moves.
    da.faults().hold_secret_looks(false);
    let released = until_served(
        &b,
        json!(2),
        Duration::from_secs(3),
        "b served a's old value for 3 s after a's listener could look",
    )
    .await;
    eprintln!("b saw a's write {released:?} after a's listener could look");
    // Both on one channel now: each hears the other's writes at once.
    wait_until("a listening", Duration::from_secs(5), || {
        a.stats().listening == Some(true)
    });
    for (n, (writer, reader)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        let value = json!(10 + n);
        assert!(reader.get("k").await.unwrap().is_some());
        writer.set("k", value.clone(), None).await.unwrap();
        until_served(
            reader,
            value,
            Duration::from_secs(1),
            &format!("write {n} unheard"),
        )
        .await;
    }
    da.close();
    db_.close();
    schema.drop_now().await;
}

/// Review 229: a write that named the cache's channel before its front end
/// moved, and committed after, was told on the old channel alone. The
/// move's request to empty memory had gone before it committed, so a front
/// end on the new channel read the old value again and kept it.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_write_committed_after_its_front_end_moved_is_heard() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, b, da, db_) = split_caches(&schema).await;
    let own = schema.own();
    // Another session holds k's row: a's write waits, its notification
    // named for the old channel.
    let holder = common::pg::admin(&schema.url).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {own}.litebridge_cache WHERE key = 'k' FOR UPDATE"
        ))
        .await
        .unwrap();
    let writer = tokio::spawn({
        let a = a.clone();
        async move { a.set("k", json!(2), None).await }
    });
    let watcher = common::pg::admin(&schema.url).await;
    let count = |sql: String| {
        let watcher = &watcher;
        async move { watcher.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let started = std::time::Instant::now();
    while count(format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE 'INSERT INTO {own}.litebridge_cache%'"
    ))
    .await
        < 1
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a's write never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // a moves to the database's channel and tells b there, which empties
    // its memory and reads the old value again, into memory. (Only a's
    // tell empties it: b's listener stays connected.)
    da.faults().hold_secret_looks(false);
    let from_l2 = b.stats().l2_hits;
    while b.stats().l2_hits == from_l2 {
        assert_eq!(b.get("k").await.unwrap(), Some(json!(1)));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a never moved: b's memory never emptied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.stats().listening, Some(true), "b's listener was lost");
    // a listens on the new channel before it tells it.
    wait_until("a listening", Duration::from_secs(5), || {
        a.stats().listening == Some(true)
    });
    let hits = b.stats().l1_hits;
    assert_eq!(b.get("k").await.unwrap(), Some(json!(1)));
    assert_eq!(b.stats().l1_hits, hits + 1, "b kept it in memory");
    holder.batch_execute("COMMIT").await.unwrap();
    writer.await.unwrap().unwrap();
    until_served(
        &b,
        json!(2),
        Duration::from_secs(1),
        "b kept the value a's write replaced",
    )
    .await;
    da.close();
    db_.close();
    schema.drop_now().await;
}

/// Review 229: a front end whose keyed write took the database's secret
/// while its listener was away (its connection lost) listened on the new
/// channel when it came back without asking those there to empty their
/// memory: what it wrote on the old channel before stayed unheard there.
/// (`a`'s listener never looks at the secret here: its move is found by
/// the channel alone.)
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_front_end_that_moved_while_its_listener_was_away_tells_the_others() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, b, da, db_) = split_caches(&schema).await;
    da.execute_with("CREATE TABLE t(id bigint)", (), Default::default())
        .await
        .unwrap();
    // Unheard by b: a is on the old channel.
    a.set("k", json!(2), None).await.unwrap();
    // a's listener loses its connection, and a keyed write through a finds
    // the database's secret is not a's and takes it.
    let admin = common::pg::admin(&schema.url).await;
    // a's listener started first.
    let ended: bool = admin
        .query_one(
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE query ~ '^LISTEN \"lbc_{}_' ORDER BY backend_start LIMIT 1",
                schema.own()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    let keyed = litebridge::WriteOptions {
        idempotency_key: Some(litebridge::IdempotencyKey::new(1, "moved").unwrap()),
        ..Default::default()
    };
    let e = da
        .execute_with("INSERT INTO t VALUES (1)", (), keyed)
        .await
        .expect_err("keyed with the secret the failover lost");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    until_served(
        &b,
        json!(2),
        Duration::from_secs(4),
        "b kept what a wrote on the old channel",
    )
    .await;
    da.close();
    db_.close();
    schema.drop_now().await;
}

/// Review 229: a listener that found the database's secret gone, and could
/// not make it again (another session held the table its install locks),
/// waited for the install with no bound, its memory trusted meanwhile,
/// while it heard nothing. It now stops listening first, gives the install
/// a bound, and listens again once it is done.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_listener_that_cannot_take_the_secret_leaves_memory_unused() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, da) = listening_cache(&schema).await;
    let listening = || a.stats().listening == Some(true);
    let own = schema.own();
    let admin = common::pg::admin(&schema.url).await;
    admin
        .batch_execute(&format!(
            "DELETE FROM {own}.litebridge_meta WHERE key = 'claims_secret'"
        ))
        .await
        .unwrap();
    let holder = common::pg::admin(&schema.url).await;
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {own}.litebridge_meta IN SHARE MODE"
        ))
        .await
        .unwrap();
    wait_until("a stopped listening", Duration::from_secs(5), || {
        !listening()
    });
    // Not listening while the install waits, through its bound (5 s).
    let stopped = std::time::Instant::now();
    while stopped.elapsed() < Duration::from_secs(7) {
        assert!(!listening(), "memory trusted after {:?}", stopped.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(da.reinstalls(), 0, "made while the table was held");
    holder.batch_execute("COMMIT").await.unwrap();
    wait_until("a listening again", Duration::from_secs(10), listening);
    assert_eq!(da.reinstalls(), 1, "the secret made again, once");
    da.close();
    schema.drop_now().await;
}

/// Review 229: a secret that cannot be read (not 64 hex digits) had the
/// cache's listener run the whole install every second. It is not made
/// again; the listener stops listening until it can be read.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_listener_leaves_an_unreadable_secret_alone() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a, da) = listening_cache(&schema).await;
    let listening = || a.stats().listening == Some(true);
    let admin = common::pg::admin(&schema.url).await;
    // Each install writes the claim functions again (new row versions).
    let claim_versions = format!(
        "SELECT xmin::text FROM pg_proc WHERE proname = 'claim' \
         AND pronamespace = '{}_claims'::regnamespace ORDER BY 1",
        schema.own()
    );
    let versions =
        |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<String>>();
    let before = versions(admin.query(&claim_versions, &[]).await.unwrap());
    admin
        .batch_execute(&format!(
            "UPDATE {}.litebridge_meta SET value = 'zz' WHERE key = 'claims_secret'",
            schema.own()
        ))
        .await
        .unwrap();
    wait_until("a stopped listening", Duration::from_secs(5), || {
        !listening()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!listening());
    assert_eq!(
        versions(admin.query(&claim_versions, &[]).await.unwrap()),
        before,
        "installed over an unreadable secret"
    );
    da.close();
    schema.drop_now().await;
}

/// Memory's keys compare by byte order on PostgreSQL whatever the
/// database's collation (the column is `COLLATE "C"`): on a database of
/// en-US's, a prefix ending in a digit listed nothing, `A` listed `á` and
/// `a-x`, and pages repeated themselves (reviews 143 and 144).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_memory_keys_keep_byte_order_under_another_collation() {
    let Some(url) = common::pg::url() else {
        return;
    };
    let admin = common::pg::admin(&url).await;
    let name = format!("lb_icu_{}", std::process::id());
    let made = admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
        ))
        .await;
    if let Err(e) = made {
        eprintln!("no ICU collation here ({e}): skipped");
        return;
    }
    let db_url = match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("{url}"),
    };
    let schema = common::pg::Schema::on(db_url).await;
    let db = schema.open().await;
    let mem = MemoryStore::new(Backend::Postgres(db.clone()), TestClock::new());
    for key in ["user9-x", "quiz-1", "A1", "ab", "a-x", "\u{e1}", "B"] {
        mem.store("n", key, &json!(1), None).await.unwrap();
    }
    let keys =
        |v: Vec<litebridge::store::MemoryEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(mem.list("n", Some("user9"), 10, None).await.unwrap()),
        ["user9-x"]
    );
    assert_eq!(
        keys(mem.list("n", Some("quiz"), 10, None).await.unwrap()),
        ["quiz-1"]
    );
    assert_eq!(
        keys(mem.list("n", Some("A"), 10, None).await.unwrap()),
        ["A1"]
    );
    // Page by page, each key once, in byte order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    while let Some(last) = keys(mem.list("n", None, 1, after.as_deref()).await.unwrap()).pop() {
        assert!(!seen.contains(&last), "{last} twice: {seen:?}");
        seen.push(last.clone());
        after = Some(last);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 7);
    db.close();
    schema.drop_now().await;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

both!(
    pages_of_large_values_stay_under_the_result_limit,
    large_pages_body
);
/// Review 207: five values of 13 MiB in one namespace (65 MiB of text) made
/// every `memory.list` and `state.list` of them fail on the result limit
/// (64 MiB). A page reads values while the text before each is under
/// 16 MiB, and says where the next starts.
async fn large_pages_body(db: Backend) {
    let clock = TestClock::new();
    let mem = MemoryStore::new(db.clone(), clock.clone());
    let runs = StateStore::new(db, clock.clone());
    let big = |i: usize| json!(format!("{i}{}", "x".repeat(13 << 20)));
    for i in 0..5 {
        mem.store("big", &format!("k{i}"), &big(i), None)
            .await
            .unwrap();
        runs.save(update(&format!("run-{i}"), big(i)))
            .await
            .unwrap();
    }
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = mem.page("big", None, 100, after.as_deref()).await.unwrap();
        assert!(
            page.items.len() <= 2,
            "{} values in a page",
            page.items.len()
        );
        keys.extend(page.items.iter().map(|e| e.key.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = runs.page(None, 100, after.as_deref()).await.unwrap();
        assert!(
            page.items.len() <= 2,
            "{} states in a page",
            page.items.len()
        );
        ids.extend(page.items.iter().map(|r| r.run_id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(ids, ["run-0", "run-1", "run-2", "run-3", "run-4"]);
    // Small pages are whole, and end where they end.
    let page = mem.page("big", None, 1, None).await.unwrap();
    assert_eq!(page.next.as_deref(), Some("k0"));
    let page = mem.page("nothing", None, 10, None).await.unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
    // Expired, they are swept 16 MiB a statement, every one of them.
    for i in 0..3 {
        mem.store(
            "gone",
            &format!("k{i}"),
            &big(i),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    assert_eq!(mem.sweep().await.unwrap(), 3);
}

/// Review 209: a page took values while the text *before* each was under
/// 16 MiB, whatever the configured result limit and the last value's size
/// (a value is stored larger than the request that sent it: `1e15` is kept
/// as `1000000000000000.0`). A page holds values while their text comes to
/// half the result limit, its first one whatever its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_held_to_the_configured_result_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = DbConfig::builder()
        .max_result_bytes(4 << 20)
        .build()
        .unwrap();
    let db = Database::open(dir.path().join("t.db"), config)
        .await
        .unwrap();
    migrate(&db).await.unwrap();
    let clock = TestClock::new();
    let mem = MemoryStore::new(Backend::Sqlite(db.clone()), clock.clone());
    let runs = StateStore::new(Backend::Sqlite(db.clone()), clock);
    for (key, mib) in [("a", 1), ("b", 3), ("c", 1)] {
        let value = json!("x".repeat(mib << 20));
        mem.store("n", key, &value, None).await.unwrap();
        runs.save(update(key, value)).await.unwrap();
    }
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = mem.page("n", None, 100, after.as_deref()).await.unwrap();
        pages.push(page.items.iter().map(|e| e.key.clone()).collect::<Vec<_>>());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [vec!["a"], vec!["b"], vec!["c"]]);
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = runs.page(None, 100, after.as_deref()).await.unwrap();
        pages.push(
            page.items
                .iter()
                .map(|r| r.run_id.clone())
                .collect::<Vec<_>>(),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [vec!["a"], vec!["b"], vec!["c"]]);
    db.close().await;
}

/// Review 248: a stored value was read into a tree however large: a value
/// of small objects, its tree a hundred times its text, was one gigabyte
/// of memory each time any `read` key asked for it. A value is stored only
/// if its tree fits `max_result_bytes`, and read within it; one stored
/// before the limit was lowered is refused naming its key and the setting,
/// and can still be deleted.
async fn stored_values_are_held_to_the_result_limit(roomy: Backend, tight: Backend) {
    let clock = TestClock::new();
    let objects = |n: usize| json!(vec![json!({"": 0}); n]);
    let (mem, runs) = (
        MemoryStore::new(roomy.clone(), clock.clone()),
        StateStore::new(roomy.clone(), clock.clone()),
    );
    // 2,000 objects: 14 kB of text, some 1.4 MB of tree, past 1 MiB.
    let e = mem
        .store("n", "big", &objects(2000), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(
        e.to_string().contains("value") && e.to_string().contains("db.max_result_bytes"),
        "{e}"
    );
    let e = runs.save(update("big", objects(2000))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("state"), "{e}");
    assert_eq!(mem.get("n", "big").await.unwrap(), None, "nothing stored");
    assert!(runs.load("big").await.unwrap().is_none(), "nothing stored");
    // 1,000 fit, and a string of 200 kB (its tree is its text).
    mem.store("n", "fits", &objects(1000), None).await.unwrap();
    mem.store("n", "text", &json!("x".repeat(200_000)), None)
        .await
        .unwrap();
    runs.save(update("fits", objects(1000))).await.unwrap();
    mem.store("n", "a", &json!(1), None).await.unwrap();
    runs.save(update("a", json!(1))).await.unwrap();
    assert_eq!(mem.get("n", "fits").await.unwrap(), Some(objects(1000)));
    // Read where the limit is lower: refused, naming the key.
    let (mem, runs) = (
        MemoryStore::new(tight.clone(), clock.clone()),
        StateStore::new(tight.clone(), clock),
    );
    let e = mem.get("n", "fits").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    let said = e.to_string();
    assert!(
        said.contains("\"fits\"") && said.contains("db.max_result_bytes"),
        "{said}"
    );
    // A page ends before it; first on its page, it is refused, saying how
    // to list past it.
    let page = mem.page("n", None, 10, None).await.unwrap();
    let keys: Vec<_> = page.items.iter().map(|e| e.key.as_str()).collect();
    assert_eq!((keys, page.next.as_deref()), (vec!["a"], Some("a")));
    let e = mem.page("n", None, 10, Some("a")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(
        e.to_string().contains("\"fits\"") && e.to_string().contains("`after`"),
        "{e}"
    );
    let page = mem.page("n", None, 10, Some("fits")).await.unwrap();
    assert_eq!(page.items[0].key, "text");
    let e = mem.list("n", None, 10, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    let e = runs.load("fits").await.unwrap_err();
    assert!(e.to_string().contains("run \"fits\""), "{e}");
    let page = runs.page(None, 10, None).await.unwrap();
    assert_eq!((page.items.len(), page.next.as_deref()), (1, Some("a")));
    let e = runs.page(None, 10, Some("a")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    // What is not a tree of objects is read as before.
    assert_eq!(
        mem.get("n", "text")
            .await
            .unwrap()
            .unwrap()
            .as_str()
            .unwrap()
            .len(),
        200_000
    );
    // Deleted, the rest of the namespace lists again.
    assert!(mem.delete("n", "fits").await.unwrap());
    assert!(runs.delete("fits").await.unwrap());
    let page = mem.page("n", None, 10, Some("a")).await.unwrap();
    assert_eq!(page.items[0].key, "text");
    assert_eq!(runs.page(None, 10, None).await.unwrap().items.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_values_are_held_to_the_result_limit_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let open = |limit: usize| {
        let path = dir.path().join("t.db");
        async move {
            let config = DbConfig::builder().max_result_bytes(limit).build().unwrap();
            Database::open(path, config).await.unwrap()
        }
    };
    let roomy = open(1 << 20).await;
    migrate(&roomy).await.unwrap();
    let tight = open(256 << 10).await;
    stored_values_are_held_to_the_result_limit(
        Backend::Sqlite(roomy.clone()),
        Backend::Sqlite(tight.clone()),
    )
    .await;
    tight.close().await;
    roomy.close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_values_are_held_to_the_result_limit_postgres() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let open = |limit: usize| {
        let mut config = schema.config();
        config.max_result_bytes = limit;
        async move { litebridge::pg::PgDatabase::connect(config).await.unwrap() }
    };
    let roomy = open(1 << 20).await;
    let tight = open(256 << 10).await;
    stored_values_are_held_to_the_result_limit(
        Backend::Postgres(roomy.clone()),
        Backend::Postgres(tight.clone()),
    )
    .await;
    tight.close();
    roomy.close();
    schema.drop_now().await;
}

/// Front end A (on `a_db`) and the other front end's database, a key made
/// there (its secret), A's keys, and an admin session holding `lock` on
/// litebridge's table `table` in a transaction: the revocation tests'
/// setting.
#[cfg(feature = "postgres")]
async fn revocation_against(
    schema: &common::pg::Schema,
    a_db: &litebridge::pg::PgDatabase,
    b_db: &litebridge::pg::PgDatabase,
    (table, lock): (&str, &str),
) -> (String, litebridge::auth::Auth, tokio_postgres::Client) {
    use litebridge::auth::{Auth, NewKey, Tiers, create_key};
    let tiers = Tiers::default();
    let new = NewKey {
        name: Some("k".into()),
        scopes: "read".parse().unwrap(),
        tier: "free".into(),
    };
    let (_, secret) = create_key(Backend::Postgres(b_db.clone()), &tiers, new)
        .await
        .unwrap();
    let a = Auth::open(
        Backend::Postgres(a_db.clone()),
        tiers,
        Arc::new(litebridge::store::SystemClock),
    )
    .await
    .unwrap();
    let admin = common::pg::admin(&common::pg::url().unwrap()).await;
    admin
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {}.litebridge_{table} IN {lock} MODE",
            schema.own()
        ))
        .await
        .unwrap();
    (secret, a, admin)
}

/// A front end's refresh of the keys waited for its flush of the quota
/// counts, a write: while the flush waited (here for a lock another session
/// holds on the counts; in production for the writer, or the standbys), a
/// key revoked through another front end was still accepted here.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_quota_flush_does_not_hold_back_a_revocation_postgres() {
    use litebridge::auth::revoke_key;
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (a_db, b_db) = (schema.open().await, schema.open().await);
    // Counts to write, and a lock that keeps them from being written.
    let (secret, a, admin) =
        revocation_against(&schema, &a_db, &b_db, ("quota", "EXCLUSIVE")).await;
    let maintain = a.maintain(Duration::from_millis(100));
    a.authenticate(&secret).unwrap().charge().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        revoke_key(Backend::Postgres(b_db.clone()), "k")
            .await
            .unwrap()
    );
    let revoked = std::time::Instant::now();
    while a.authenticate(&secret).is_ok() {
        assert!(
            revoked.elapsed() < Duration::from_secs(3),
            "the key was still accepted while the flush waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin.batch_execute("ROLLBACK").await.unwrap();
    // The counts were kept, and are written once the lock is gone.
    a.flush().await.unwrap();
    maintain.abort();
    a_db.close();
    b_db.close();
    schema.drop_now().await;
}

/// Review 249: on PostgreSQL the reads of the keys shared litebridge's own
/// pool with the stores' reads, which any key asks for: store reads holding
/// every connection (here waiting for a lock another session holds) kept a
/// refresh, and so a revocation, waiting. The keys have a connection of
/// their own.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_reads_holding_the_pool_do_not_hold_back_a_revocation_postgres() {
    use litebridge::auth::revoke_key;
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let mut config = schema.config();
    config.connections = 3;
    let a_db = litebridge::pg::PgDatabase::connect(config).await.unwrap();
    let b_db = schema.open().await;
    let (secret, a, admin) =
        revocation_against(&schema, &a_db, &b_db, ("memory", "ACCESS EXCLUSIVE")).await;
    // More store reads than the pool has connections, each waiting.
    let mem = MemoryStore::new(Backend::Postgres(a_db.clone()), TestClock::new());
    let reads: Vec<_> = (0..6)
        .map(|i| {
            let mem = mem.clone();
            tokio::spawn(async move { mem.get("n", &format!("k{i}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        revoke_key(Backend::Postgres(b_db.clone()), "k")
            .await
            .unwrap()
    );
    let refreshed = tokio::time::timeout(Duration::from_secs(3), a.refresh()).await;
    assert!(
        matches!(refreshed, Ok(Ok(true))),
        "the refresh waited for the stores' reads: {refreshed:?}"
    );
    assert!(a.authenticate(&secret).is_err());
    admin.batch_execute("ROLLBACK").await.unwrap();
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap(), None);
    }
    a_db.close();
    b_db.close();
    schema.drop_now().await;
}

/// Review 250: a page's trees were bounded by 256 MiB whatever the result
/// limit (a page under a limit of 1 MiB built 55 MB of trees), and a page
/// of runs counted their states alone, so runs of long error messages
/// passed the result limit and every listing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_held_to_a_low_result_limit_with_all_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = DbConfig::builder()
        .max_result_bytes(1 << 20)
        .build()
        .unwrap();
    let db = Database::open(dir.path().join("t.db"), config)
        .await
        .unwrap();
    migrate(&db).await.unwrap();
    let clock = TestClock::new();
    let mem = MemoryStore::new(Backend::Sqlite(db.clone()), clock.clone());
    let runs = StateStore::new(Backend::Sqlite(db.clone()), clock);
    // Ten values of 7 kB of text, some 700 kB of tree each.
    let value = json!(vec![json!({"": 0}); 1000]);
    for i in 0..10 {
        mem.store("n", &format!("k{i}"), &value, None)
            .await
            .unwrap();
        runs.save(StateUpdate {
            run_id: format!("r{i}"),
            state: json!(1),
            error_message: Some("e".repeat(400_000)),
            ..StateUpdate::default()
        })
        .await
        .unwrap();
    }
    let (mut seen, mut after, mut pages) = (0, None::<String>, 0);
    loop {
        let page = mem.page("n", None, 100, after.as_deref()).await.unwrap();
        assert_eq!(page.items.len(), 1, "one tree of 700 kB a page");
        (seen, pages) = (seen + page.items.len(), pages + 1);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!((seen, pages), (10, 10));
    let (mut seen, mut after) = (0, None::<String>);
    loop {
        let page = runs.page(None, 100, after.as_deref()).await.unwrap();
        assert!(page.items.len() <= 2, "{}", page.items.len());
        seen += page.items.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 10);
    db.close().await;
}
