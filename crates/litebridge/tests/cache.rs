//! The two-level cache, with time controlled by the test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use litebridge::store::{Cache, CacheConfig, Clock};
use serde_json::json;

#[derive(Debug)]
struct TestClock(Mutex<SystemTime>);

impl TestClock {
    fn new() -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(SystemTime::now())))
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

#[tokio::test]
async fn entries_expire_exactly_at_their_ttl_in_both_levels() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let clock = TestClock::new();
    let cache = Cache::with_clock(Some(db.clone()), CacheConfig::default(), clock.clone())
        .await
        .unwrap();
    cache
        .set("k", json!({"v": 1}), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!({"v": 1})));
    clock.advance(Duration::from_secs(9));
    assert!(cache.get("k").await.unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        cache.get("k").await.unwrap(),
        None,
        "expired entries are never returned"
    );
    // A second cache on the same database (a restart) sees L2, with its expiry.
    cache
        .set("long", json!("lives"), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    let after_restart = Cache::with_clock(Some(db), CacheConfig::default(), clock.clone())
        .await
        .unwrap();
    assert_eq!(
        after_restart.get("long").await.unwrap(),
        Some(json!("lives"))
    );
    assert_eq!(after_restart.get("k").await.unwrap(), None);
    let s = after_restart.stats();
    assert_eq!((s.l2_hits, s.misses), (1, 1));
    assert!(after_restart.delete("long").await.unwrap());
    assert_eq!(after_restart.get("long").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_load_once() {
    let cache = Cache::open(None, CacheConfig::default()).await.unwrap();
    let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, loads) = (cache.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("hot", None, || async move {
                    loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(json!(42))
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), json!(42));
    }
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Errors are not cached.
    let e = cache
        .get_or_load("bad", None, || async {
            Err(litebridge::Error::Busy {
                message: "try later".into(),
            })
        })
        .await;
    assert!(e.is_err());
    let ok = cache
        .get_or_load("bad", None, || async { Ok(json!(1)) })
        .await
        .unwrap();
    assert_eq!(ok, json!(1));
}

#[tokio::test]
async fn memory_is_bounded_and_evictions_are_counted() {
    let cache = Cache::open(
        None,
        CacheConfig {
            max_entries: 100,
            default_ttl: None,
        },
    )
    .await
    .unwrap();
    for i in 0..1000 {
        cache.set(&format!("k{i}"), json!(i), None).await.unwrap();
    }
    // moka applies its bound in the background; ask it to catch up.
    for _ in 0..50 {
        if cache.stats().l1_entries <= 100 {
            break;
        }
        let _ = cache.get("k0").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = cache.stats();
    assert!(s.l1_entries <= 100, "{s:?}");
    assert!(s.evictions >= 800, "{s:?}");
}

/// A lifetime past what a clock can count is "never expires", not a panic
/// (a TTL of 1e19 s overflowed the expiry time and took the request down).
#[tokio::test]
async fn a_lifetime_past_the_clock_never_expires() {
    let cache = Cache::open(None, CacheConfig::default()).await.unwrap();
    cache.set("k", json!(1), Some(Duration::MAX)).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!(1)));
    let v = cache
        .get_or_load("l", Some(Duration::MAX), || async { Ok(json!(2)) })
        .await
        .unwrap();
    assert_eq!(v, json!(2));
}

#[tokio::test]
async fn expired_rows_are_swept_by_bounded_sweeps_and_counted() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let clock = TestClock::new();
    let cache = Cache::with_clock(Some(db.clone()), CacheConfig::default(), clock.clone())
        .await
        .unwrap();
    for k in 0..5 {
        cache
            .set(&format!("live{k}"), json!(k), None)
            .await
            .unwrap();
    }
    // 10,500 rows that expired long ago, as a cache left running would have.
    db.write(|c| {
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10500)
             INSERT INTO main.litebridge_cache(key, value, expires_at)
             SELECT 'old' || i, '1', 1 FROM n",
        )?;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(cache.count_l2().await, Some(10_505));
    assert_eq!(cache.stats().l2_entries, Some(10_505));
    let sweeper = cache.sweeper();
    let first = sweeper.sweep(&db).await.unwrap();
    assert_eq!((first.deleted, first.more), (10_000, true), "bounded");
    let second = sweeper.sweep(&db).await.unwrap();
    assert_eq!((second.deleted, second.more), (500, false));
    assert_eq!(cache.stats().l2_entries, Some(5), "counted after the sweep");
    // The live ones expire in their turn (default TTL one hour).
    clock.advance(Duration::from_secs(3600));
    assert_eq!(sweeper.sweep(&db).await.unwrap().deleted, 5);
    assert_eq!(cache.count_l2().await, Some(0));
}

#[tokio::test]
async fn a_full_disk_leaves_the_cache_working_in_memory() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("before", json!(1), None).await.unwrap();
    let pages = common::count(&db, "PRAGMA page_count").await;
    db.write(move |c| {
        c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(())
    })
    .await
    .unwrap();
    let big = json!("x".repeat(256 * 1024));
    // An explicit set that cannot be stored says so, and leaves nothing
    // behind that a later read could mistake for it.
    cache
        .set("before", big.clone(), None)
        .await
        .expect_err("the disk is full");
    assert_eq!(
        cache.get("before").await.unwrap(),
        Some(json!(1)),
        "the stored value, not the lost one"
    );
    let loaded = cache
        .get_or_load("loaded", None, || async {
            Ok(json!("x".repeat(256 * 1024)))
        })
        .await
        .expect("a successful load is not turned into an error by L2");
    assert_eq!(loaded.as_str().map(str::len), Some(256 * 1024));
    assert_eq!(
        cache.get("loaded").await.unwrap(),
        Some(loaded),
        "in memory"
    );
    let stats = cache.stats();
    assert_eq!(stats.l2_errors, 2, "{stats:?}");
    // The database itself is fine: reads work, and so do small writes.
    assert!(db.health().healthy);
}

#[tokio::test]
async fn a_cache_without_its_table_runs_in_memory_and_says_why() {
    let cache = Cache::memory_only(CacheConfig::default(), "the disk is full");
    cache.set("k", json!(1), None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!(1)));
    let stats = cache.stats();
    assert_eq!(stats.l2_entries, None);
    assert_eq!(stats.l2_unavailable.as_deref(), Some("the disk is full"));
}
