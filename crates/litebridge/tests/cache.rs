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
