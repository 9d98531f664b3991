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
            ..CacheConfig::default()
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

/// Lets moka apply its bounds (it does so in the background) until
/// `done` holds of the cache's figures, or five seconds pass.
async fn settled(cache: &Cache, done: impl Fn(&litebridge::store::CacheStats) -> bool) {
    for _ in 0..500 {
        if done(&cache.stats()) {
            return;
        }
        let _ = cache.get("settle").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `write` key's `cache.set` of a 16 MiB array of zeros kept a tree of
/// about 256 MiB in memory for as long as its TTL, and forty of them took
/// the server down; the bound was a count of entries, whatever their size.
#[tokio::test]
async fn memory_is_bounded_by_the_size_of_what_it_keeps() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let config = CacheConfig {
        max_bytes: 1 << 20,
        max_entry_bytes: 256 << 10,
        ..CacheConfig::default()
    };
    let cache = Cache::open(Some(db), config).await.unwrap();
    // 40 entries of about 100 KiB: 4 MiB in all, against a bound of 1 MiB.
    let big = |i: usize| json!([i, "x".repeat(100 << 10)]);
    for i in 0..40 {
        cache.set(&format!("k{i}"), big(i), None).await.unwrap();
    }
    settled(&cache, |s| s.l1_bytes <= 1 << 20).await;
    let s = cache.stats();
    assert!(s.l1_bytes <= 1 << 20, "{s:?}");
    assert!(s.l1_entries <= 10, "{s:?}");
    // What memory let go of is read from L2.
    for i in 0..40 {
        assert_eq!(cache.get(&format!("k{i}")).await.unwrap(), Some(big(i)));
    }

    // An entry past `max_entry_bytes` never stays in memory: 100,000
    // zeros are 200 KB of JSON but about 3 MiB of tree.
    let zeros = json!(vec![0; 100_000]);
    assert!(litebridge::store::footprint(&zeros) > 3 << 20);
    cache.set("zeros", zeros.clone(), None).await.unwrap();
    let hits = cache.stats().l2_hits;
    assert_eq!(cache.get("zeros").await.unwrap(), Some(zeros.clone()));
    assert_eq!(cache.get("zeros").await.unwrap(), Some(zeros.clone()));
    assert_eq!(cache.stats().l2_hits, hits + 2, "read from L2 each time");
    // Nor when a load computed it.
    let loaded = cache
        .get_or_load("loaded", None, || async { Ok(json!(vec![1; 100_000])) })
        .await
        .unwrap();
    assert_eq!(loaded, json!(vec![1; 100_000]));
    settled(&cache, |s| s.l1_bytes <= 1 << 20).await;
    assert!(cache.stats().l1_bytes <= 1 << 20, "{:?}", cache.stats());
    let hits = cache.stats().l2_hits;
    assert_eq!(cache.get("loaded").await.unwrap(), Some(loaded));
    assert_eq!(cache.stats().l2_hits, hits + 1, "read from L2");
}

/// The estimate counts the tree, not the text: its nodes, its arrays and
/// strings by capacity, and its objects' map nodes (found by a review: a
/// `[{"":0}, ...]` of 8 bytes of JSON per element takes about 670 bytes of
/// tree per element, and was counted as 104).
#[test]
fn a_footprint_counts_every_node_and_every_byte() {
    use litebridge::store::footprint;
    let node = std::mem::size_of::<serde_json::Value>() as u64;
    assert_eq!(footprint(&json!(null)), node);
    let three: serde_json::Value = serde_json::from_str("[0, 0, 0]").unwrap();
    assert!(footprint(&three) >= 4 * node, "{}", footprint(&three));
    assert!(footprint(&json!("abc")) >= node + 3);
    let objects: serde_json::Value =
        serde_json::from_str(&format!("[{}{{\"\":0}}]", "{\"\":0},".repeat(999))).unwrap();
    assert!(footprint(&objects) >= 1000 * 672, "{}", footprint(&objects));
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

/// A hostile crowd calls a cached method, and each caller that came to run
/// the load for everyone hangs up. moka panics in a waiter that saw 200
/// such loads abandoned in a row; the waiter now runs its own load.
/// Driven by hand, so that the waiter never comes to run the shared load.
#[tokio::test]
async fn a_waiter_outliving_hundreds_of_abandoned_loads_runs_its_own() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    type Call<'a> = Pin<Box<dyn Future<Output = litebridge::Result<serde_json::Value>> + 'a>>;
    let cache = Cache::memory_only(CacheConfig::default(), "no L2 in this test");
    let started = AtomicUsize::new(0);
    let hang_up = || -> Call<'_> {
        Box::pin(cache.get_or_load("hot", None, || async {
            started.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }))
    };
    let mut cx = Context::from_waker(Waker::noop());
    // Polls `call` until `done` (moka's steps may take a few polls).
    let settle = |call: &mut Call<'_>, cx: &mut Context<'_>, done: &dyn Fn() -> bool| {
        for _ in 0..1000 {
            if let Poll::Ready(r) = call.as_mut().poll(cx) {
                return Some(r);
            }
            if done() {
                return None;
            }
        }
        panic!("the call never reached the expected step");
    };

    let mut loader = hang_up();
    assert!(
        settle(&mut loader, &mut cx, &|| started.load(Ordering::SeqCst)
            == 1)
        .is_none()
    );
    let mut waiter: Call<'_> =
        Box::pin(cache.get_or_load("hot", None, || async { Ok(json!("its own")) }));
    assert!(waiter.as_mut().poll(&mut cx).is_pending());

    let mut answer = None;
    for abandoned in 1..=250 {
        // A fresh budget of tokio's cooperative scheduling each round.
        tokio::task::yield_now().await;
        drop(loader);
        // A newcomer comes to run the load before the waiter wakes.
        let mut next = hang_up();
        let runs = abandoned + 1;
        assert!(
            settle(&mut next, &mut cx, &|| started.load(Ordering::SeqCst)
                == runs)
            .is_none()
        );
        loader = next;
        if let Poll::Ready(r) = waiter.as_mut().poll(&mut cx) {
            answer = Some((abandoned, r));
            break;
        }
    }
    let (abandoned, r) = answer.expect("the waiter still waits after 250 abandoned loads");
    assert_eq!(r.unwrap(), json!("its own"));
    assert!(abandoned >= 200, "it ran its own after {abandoned}");
    drop(loader);
    // Nothing was stored by the abandoned loads; the waiter's own was.
    assert_eq!(cache.get("hot").await.unwrap(), Some(json!("its own")));
}

/// A cache with its L2 in a database whose writer another write holds
/// until `gate` opens.
struct Held {
    _dir: tempfile::TempDir,
    db: litebridge::Database,
    cache: Cache,
    gate: common::Gate,
    holder: tokio::task::JoinHandle<litebridge::Result<()>>,
}

impl Held {
    async fn start() -> Held {
        let (_dir, db) = common::open_kv(litebridge::DbConfig::builder()).await;
        let cache = Cache::open(Some(db.clone()), CacheConfig::default())
            .await
            .unwrap();
        let gate = common::Gate::default();
        let holder = common::hold_writer(&db, &gate).await;
        Held {
            _dir,
            db,
            cache,
            gate,
            holder,
        }
    }
}

/// A call's answer waited on its value's L2 write, however long the writer
/// was held by others: a call with a 200 ms deadline answered when the
/// writer came free, seconds later. Storing now ends at the deadline; the
/// value stays in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_value_is_answered_by_its_deadline_while_the_writer_is_held() {
    let Held {
        _dir,
        db,
        cache,
        gate,
        holder,
    } = Held::start().await;
    let timeout = Duration::from_millis(200);
    let asked = tokio::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_or_load_by("k", None, Some((asked + timeout, timeout)), || async {
            Ok(json!("loaded"))
        }),
    )
    .await;
    let took = asked.elapsed();
    gate.open();
    holder.await.unwrap().unwrap();
    let answer = answer.expect("the answer waited for the writer");
    assert_eq!(answer.unwrap(), json!("loaded"));
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("loaded")));
    // The L2 write was finished in the background: a cache that has only
    // L2 to read finds the value.
    let fresh = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    let waited = tokio::time::Instant::now();
    while fresh.get("k").await.unwrap().is_none() {
        assert!(waited.elapsed() < Duration::from_secs(5), "never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The L2 read before a call waited as long as its key was being written,
/// past the caller's deadline. It now times out there, never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_l2_read_waits_past_its_deadline_times_out_queued() {
    use std::future::Future;
    use std::task::{Context, Waker};

    use litebridge::TimeoutStage;

    let Held {
        _dir,
        db: _,
        cache,
        gate,
        holder,
    } = Held::start().await;
    // A `set` of the key, waiting for the writer, holds the key's turn.
    let mut set = Box::pin(cache.set("k", json!("set"), None));
    assert!(
        set.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    let timeout = Duration::from_millis(200);
    let asked = tokio::time::Instant::now();
    let ran = std::sync::atomic::AtomicBool::new(false);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        cache.get_or_load_by("k", None, Some((asked + timeout, timeout)), || async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(json!("loaded"))
        }),
    )
    .await;
    gate.open();
    holder.await.unwrap().unwrap();
    set.await.unwrap();
    let e = answer.expect("the read waited for the write").unwrap_err();
    assert!(
        matches!(
            e,
            litebridge::Error::Timeout {
                stage: TimeoutStage::Queued,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("set")));
}

/// Only moka's own panic is caught: a panic of the caller's own load is
/// the caller's, and goes on unwinding.
#[tokio::test]
async fn a_panic_of_a_callers_own_load_is_not_taken_for_moka_s() {
    let cache = Cache::memory_only(CacheConfig::default(), "no L2 in this test");
    let call = tokio::spawn(async move {
        cache
            .get_or_load("p", None, || async { panic!("the load's own") })
            .await
    });
    let panic = call.await.unwrap_err().into_panic();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the load's own"));
}

/// A Python process on the L2's file: `script`, with the file's path as
/// `path`, started and read line by line.
struct Other {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    stdin: std::process::ChildStdin,
}

impl Other {
    fn start(db: &litebridge::Database, script: &str) -> Other {
        let script = format!(
            "import sqlite3, sys\npath = {:?}\n{script}",
            db.path().display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Other {
            out: std::io::BufReader::new(child.stdout.take().unwrap()),
            stdin: child.stdin.take().unwrap(),
            child,
        }
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    fn tell(&mut self) {
        use std::io::Write;
        writeln!(self.stdin).unwrap();
    }

    fn wait(mut self) {
        assert!(self.child.wait().unwrap().success());
    }
}

/// Found by reviews 207 and 210: a process that opened the file, replaced
/// or deleted a cache key and exited while this one made no cache call was
/// never seen, and this one served the key's old value from memory until its
/// TTL. Every read of memory now looks for a change of the file that this
/// process's writer did not make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_process_that_changed_a_key_is_seen_at_the_next_read() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("k", json!("old"), None).await.unwrap();
    cache.set("gone", json!("here"), None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("old")));
    assert_eq!(cache.get("gone").await.unwrap(), Some(json!("here")));
    let hits = cache.stats().l1_hits;
    // Opens, writes, exits: no cache call here meanwhile.
    Other::start(
        &db,
        "c = sqlite3.connect(path, isolation_level=None)\n\
         c.execute(\"UPDATE litebridge_cache SET value = '\\\"new\\\"' WHERE key = 'k'\")\n\
         c.execute(\"DELETE FROM litebridge_cache WHERE key = 'gone'\")\n\
         c.close()\n",
    )
    .wait();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("new")));
    assert_eq!(cache.get("gone").await.unwrap(), None);
    // Memory serves again, with the new value.
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("new")));
    assert_eq!(cache.stats().l1_hits, hits + 1, "{:?}", cache.stats());
}

/// While another process only has the file open, memory keeps serving
/// (it used to be turned off), and this process's own writes never empty
/// it (review 210 found a count of writes that did, several times a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_serves_beside_a_process_that_only_reads_and_through_own_writes() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("k", json!("v"), None).await.unwrap();
    let mut other = Other::start(
        &db,
        "c = sqlite3.connect(path, isolation_level=None)\n\
         c.execute('SELECT count(*) FROM litebridge_cache').fetchall()\n\
         print('open', flush=True)\n\
         sys.stdin.readline()\n",
    );
    assert_eq!(other.line(), "open");
    let hits = cache.stats().l1_hits;
    for i in 0..200 {
        cache
            .set(&format!("mine{i}"), json!(i), None)
            .await
            .unwrap();
        db.execute(
            "INSERT INTO kv(k, v) VALUES (?1, 'x')",
            litebridge::params![i],
        )
        .await
        .unwrap();
        assert_eq!(cache.get("k").await.unwrap(), Some(json!("v")));
    }
    assert_eq!(cache.stats().l1_hits, hits + 200, "{:?}", cache.stats());
    other.tell();
    other.wait();
}

/// Another process commits new values of a key as fast as it can while
/// readers here read it and a writer here writes keys of its own: a read
/// that starts after one of its commits returned never answers an older
/// value. Review 211 saw one commit behind with several readers at once
/// (a copy read before a commit went into memory after it was emptied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_behind_another_process_writing_all_along() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("k", json!(0), None).await.unwrap();
    const COMMITS: i64 = 3000;
    let mut other = Other::start(
        &db,
        &format!(
            "c = sqlite3.connect(path, isolation_level=None, timeout=30)\n\
             for i in range(1, {}):\n\
             \x20   c.execute('UPDATE litebridge_cache SET value = ? WHERE key = ?', (str(i), 'k'))\n\
             \x20   print(i, flush=True)\n",
            COMMITS + 1
        ),
    );
    let done = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let follow = {
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 1..=COMMITS {
                assert_eq!(other.line().parse::<i64>().unwrap(), i);
                done.store(i, Ordering::SeqCst);
            }
            other.wait();
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (cache, done, stop) = (cache.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut behind = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let before = done.load(Ordering::SeqCst);
                let read = cache.get("k").await.unwrap().unwrap().as_i64().unwrap();
                if read < before {
                    behind.push((read, before));
                }
            }
            behind
        }));
    }
    let own = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                cache.set("mine", json!(n), None).await.unwrap();
                n += 1;
            }
        })
    };
    tokio::task::spawn_blocking(move || follow.join().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    own.await.unwrap();
    for t in tasks {
        let behind = t.await.unwrap();
        assert!(
            behind.is_empty(),
            "reads older than a commit that had returned (read, commit): {behind:?}"
        );
    }
}

/// A restart of the log by another process (a whole checkpoint, as every
/// `litebridge` command makes as it exits) is no change: memory keeps
/// serving (review 211: `litebridge query` beside a server emptied it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_restarting_the_log_does_not_empty_memory() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("k", json!("v"), None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("v")));
    let hits = cache.stats().l1_hits;
    let mut other = Other::start(
        &db,
        "c = sqlite3.connect(path, isolation_level=None, timeout=10)\n\
         print(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0], flush=True)\n\
         c.close()\n",
    );
    assert_eq!(other.line(), "0", "the checkpoint was refused");
    other.wait();
    let wal = std::fs::metadata(format!("{}-wal", db.path().display())).unwrap();
    assert_eq!(wal.len(), 0, "the log was not restarted");
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("v")));
    assert_eq!(cache.stats().l1_hits, hits + 1, "{:?}", cache.stats());
}

/// Another connection on `db`'s file, which has made a trigger on the
/// cache's table.
fn trigger_on_the_cache(db: &litebridge::Database) -> rusqlite::Connection {
    let other = rusqlite::Connection::open(db.path()).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER t AFTER INSERT ON litebridge_cache BEGIN \
             UPDATE litebridge_cache SET value = '0' WHERE key = 'victim'; END",
        )
        .unwrap();
    other
}

/// Review 211: a trigger on the cache's table made by another process
/// refuses the cache's writes (litebridge's statements never run a
/// client's trigger), and once that process dropped it, the writer went on
/// refusing them: its copy of the schema, read again only when a statement
/// starts a transaction, still had the trigger.
#[tokio::test]
async fn a_trigger_another_process_dropped_no_longer_refuses_writes() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("k", json!(1), None).await.unwrap();
    let other = trigger_on_the_cache(&db);
    let refused = cache.set("k", json!(2), None).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        litebridge::ErrorKind::Forbidden,
        "{refused}"
    );
    other.execute_batch("DROP TRIGGER t").unwrap();
    cache.set("k", json!(3), None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!(3)));

    // A statement not prepared before: refused as it is prepared, against
    // a schema read while the trigger was there.
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    let other = trigger_on_the_cache(&db);
    // The writer reads the schema with the trigger in it.
    cache.delete("x").await.unwrap();
    let refused = cache.set("k", json!(1), None).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        litebridge::ErrorKind::Forbidden,
        "{refused}"
    );
    other.execute_batch("DROP TRIGGER t").unwrap();
    cache.set("k", json!(2), None).await.unwrap();
}

/// Review 212: a trigger another process made on the cache's table whose
/// body names no litebridge table ran inside litebridge's writes, held to
/// the client rules: `RAISE(IGNORE)` dropped a `set` (or a `delete`)
/// litebridge acknowledged. Every such trigger refuses litebridge's writes
/// now, naming it, until it is dropped.
#[tokio::test]
async fn a_trigger_another_process_made_never_runs_inside_the_caches_writes() {
    let (_dir, db) = common::open_kv(common::config()).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    cache.set("k", json!("old"), None).await.unwrap();
    let other = rusqlite::Connection::open(db.path()).unwrap();
    other.execute_batch("CREATE TABLE audit(x)").unwrap();
    for (body, write) in [
        (
            "BEFORE INSERT ON litebridge_cache BEGIN SELECT RAISE(IGNORE); END",
            "set",
        ),
        (
            "BEFORE UPDATE ON litebridge_cache BEGIN SELECT RAISE(IGNORE); END",
            "set",
        ),
        (
            "AFTER INSERT ON litebridge_cache BEGIN INSERT INTO audit VALUES (1); END",
            "set",
        ),
        (
            "BEFORE DELETE ON litebridge_cache BEGIN SELECT RAISE(IGNORE); END",
            "delete",
        ),
    ] {
        other
            .execute_batch(&format!("CREATE TRIGGER sneaky {body}"))
            .unwrap();
        let refused = match write {
            "set" => cache.set("k", json!("new"), None).await.unwrap_err(),
            _ => cache.delete("k").await.unwrap_err(),
        };
        assert_eq!(
            refused.kind(),
            litebridge::ErrorKind::Forbidden,
            "{body}: {refused}"
        );
        assert!(refused.to_string().contains("\"sneaky\""), "{refused}");
        other.execute_batch("DROP TRIGGER sneaky").unwrap();
        assert_eq!(cache.get("k").await.unwrap(), Some(json!("old")), "{body}");
    }
    let audited: i64 = other
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(audited, 0, "the trigger ran");
    cache.set("k", json!("new"), None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(json!("new")));
    // The application's own closures keep their triggers and named
    // subqueries, held to the client rules.
    db.write(|c| {
        c.execute_batch(
            "CREATE TABLE t(x); CREATE TABLE log(x);
             CREATE TRIGGER logged AFTER INSERT ON t BEGIN INSERT INTO log VALUES (NEW.x); END;
             WITH n(i) AS (SELECT 1) INSERT INTO t SELECT i FROM n;",
        )?;
        Ok(())
    })
    .await
    .unwrap();
}

/// A server restarted on a file closed cleanly, serving what the table
/// holds and writing nothing: the file's header counts no commit then, and
/// a header counting none is never taken as seen (review 212), so memory
/// was never used (the bench's `bridge-cached` fell from 1.2 to 3 us a
/// call). The cache has the writer commit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_serves_a_process_that_only_reads_a_file_closed_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    for round in 0..3 {
        let db = litebridge::Database::open(&path, common::config().build().unwrap())
            .await
            .unwrap();
        let cache = Cache::open(Some(db.clone()), CacheConfig::default())
            .await
            .unwrap();
        let mut hits = 0;
        for _ in 0..200 {
            let v = cache
                .get_or_load("k", None, || async { Ok(json!("v")) })
                .await
                .unwrap();
            assert_eq!(v, json!("v"));
            hits = cache.stats().l1_hits;
            if hits >= 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(hits >= 10, "round {round}: {:?}", cache.stats());
        db.close().await;
    }
}

/// Review 214: the commit asked of the writer when the file's header
/// counts none was asked once; refused (here: another process held the
/// write lock past the busy timeout, and then wrote nothing), memory stayed
/// unused for good. It is asked again a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_that_lets_memory_serve_is_asked_again_after_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let config = || {
        common::config()
            .busy_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    let db = litebridge::Database::open(&path, config()).await.unwrap();
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    // In the table: the reads below write nothing.
    cache.set("k", json!("v"), None).await.unwrap();
    db.close().await;
    let db = litebridge::Database::open(&path, config()).await.unwrap();
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let read = || async {
        cache
            .get_or_load("k", None, || async { Ok(json!("v")) })
            .await
            .unwrap()
    };
    // The first commit asked for waits for the lock, and is refused.
    for _ in 0..30 {
        read().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.execute_batch("ROLLBACK").unwrap();
    let mut hits = 0;
    for _ in 0..300 {
        read().await;
        hits = cache.stats().l1_hits;
        if hits >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hits >= 10, "{:?}", cache.stats());
}

/// A loaded value whose tree passes the result limit is the caller's, and
/// is not cached: a read of it would build that tree again for any caller
/// (review 250: it was silently dropped after a copy of it was made). One
/// set directly is refused, naming the setting.
#[tokio::test]
async fn a_loaded_value_past_the_result_limit_is_answered_and_not_cached() {
    let (_dir, db) = common::open_kv(common::config().max_result_bytes(64 << 10)).await;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    // 2,000 objects: 14 kB of text, some 1.4 MB of tree.
    let big = json!(vec![json!({"": 0}); 2000]);
    let loads = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..2 {
        let got = cache
            .get_or_load("big", None, || async {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(big.clone())
            })
            .await
            .unwrap();
        assert_eq!(got, big);
    }
    assert_eq!(loads.into_inner(), 2, "loaded again: not cached");
    assert_eq!(cache.get("big").await.unwrap(), None);
    assert_eq!(cache.stats().l2_errors, 0, "not an L2 failure");
    let e = cache.set("big", big, None).await.unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("db.max_result_bytes"), "{e}");
    // A small one is cached as before.
    let small = cache
        .get_or_load("small", None, || async { Ok(json!([1, 2])) })
        .await
        .unwrap();
    assert_eq!(cache.get("small").await.unwrap(), Some(small));
    db.close().await;
}
