//! The store cases: `state-save` (workflow state upserts through the writer)
//! and `cache-get-hit` (an L1 hit through the library), each with the plain
//! design a user would otherwise write.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use litebridge::store::{Cache, CacheConfig, StateStore, StateUpdate, SystemClock, migrate};
use litebridge::{Database, DbConfig, Durability};
use rusqlite::Connection;
use serde_json::{Value as Json, json};

use super::measure::{Figures, Rng, Samples, gather_tasks, gather_threads, stop_after};
use crate::{CliResult, Failure};

/// Runs the upserts spread over; each save rewrites one of them.
const RUNS: u64 = 1_000;
/// Producers saving concurrently, one save in flight each.
const PRODUCERS: u64 = 8;

fn state(step: u64) -> Json {
    json!({"step": step, "input": "summarise the quarterly report", "notes": ["a", "b", "c"]})
}

/// The same upsert and read-back as `StateStore::save`, by hand.
const UPSERT: &str =
    "INSERT INTO litebridge_state(run_id, state, status, total_steps, created_at, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?5)
     ON CONFLICT(run_id) DO UPDATE SET state = excluded.state, status = excluded.status,
         total_steps = excluded.total_steps, updated_at = excluded.updated_at";
const READ_BACK: &str = "SELECT state, status, total_steps, created_at, updated_at
     FROM litebridge_state WHERE run_id = ?1";

async fn open_store_db(path: &Path) -> CliResult<Database> {
    let config = DbConfig::builder()
        .durability(Durability::Normal)
        .readers(2)
        .build()?;
    let db = Database::open(path, config).await?;
    migrate(&db).await?;
    Ok(db)
}

/// `mutex-state`: 8 threads sharing one `Mutex<Connection>`, each save an
/// autocommit upsert followed by reading the row back (as `save` returns it).
pub(crate) async fn mutex_state(path: &Path, seconds: f64) -> CliResult<Figures> {
    open_store_db(path).await?.close().await;
    let path = path.to_path_buf();
    super::blocking(move || {
        let c = Connection::open(&path).map_err(litebridge::Error::from)?;
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(litebridge::Error::from)?;
        let conn = Arc::new(Mutex::new(c));
        let stop = stop_after(seconds);
        let started = Instant::now();
        let threads: Vec<_> = (0..PRODUCERS)
            .map(|t| {
                let (conn, stop) = (conn.clone(), stop.clone());
                super::measure::baseline_thread(move || {
                    let mut rng = Rng::new(t + 1);
                    let mut samples = Samples::with_capacity(65_536);
                    let mut step = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let run = format!("run-{}", rng.below(RUNS));
                        step += 1;
                        let c = conn.lock().expect("no benchmark thread panics");
                        let now = micros();
                        c.prepare_cached(UPSERT)
                            .and_then(|mut s| {
                                s.execute(rusqlite::params![
                                    run,
                                    state(step).to_string(),
                                    "running",
                                    step as i64,
                                    now
                                ])
                            })
                            .expect("upsert");
                        let back: String = c
                            .prepare_cached(READ_BACK)
                            .and_then(|mut s| s.query_row([&run], |r| r.get(0)))
                            .expect("read back");
                        drop(c);
                        std::hint::black_box(serde_json::from_str::<Json>(&back).ok());
                        samples.record(start);
                    }
                    samples
                })
            })
            .collect();
        Ok(gather_threads(threads, started))
    })
    .await
}

fn micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `state-save`: 8 producers, one `StateStore::save` in flight each.
pub(crate) async fn state_save(path: &Path, seconds: f64) -> CliResult<Figures> {
    let db = open_store_db(path).await?;
    let store = Arc::new(StateStore::new(db.clone(), Arc::new(SystemClock)));
    let stop = stop_after(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(t + 1);
                let mut samples = Samples::with_capacity(65_536);
                let mut step = 0;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    step += 1;
                    let saved = store
                        .save(StateUpdate {
                            run_id: format!("run-{}", rng.below(RUNS)),
                            state: state(step),
                            status: Some("running".into()),
                            total_steps: Some(step as i64),
                            ..StateUpdate::default()
                        })
                        .await?;
                    std::hint::black_box(saved);
                    samples.record(start);
                }
                Ok::<_, litebridge::Error>(samples)
            })
        })
        .collect();
    let figures = gather_tasks(tasks, started).await?;
    db.close().await;
    Ok(figures)
}

/// Keys the cache cases read (all present, all in L1).
const KEYS: u64 = 1_000;

fn key(i: u64) -> String {
    format!("answer:{i}")
}

fn value(i: u64) -> Json {
    json!({"answer": i, "text": super::cases::VALUE})
}

/// `hashmap-mutex`: one caller reading a `Mutex<HashMap<String, Arc<Json>>>`,
/// the hand-rolled cache (no TTL, no bound, no statistics).
pub(crate) fn hashmap_mutex(seconds: f64) -> CliResult<Figures> {
    let map: Mutex<HashMap<String, Arc<Json>>> =
        Mutex::new((0..KEYS).map(|i| (key(i), Arc::new(value(i)))).collect());
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let stop: Arc<AtomicBool> = stop_after(seconds);
    let mut rng = Rng::new(7);
    let mut samples = Samples::with_capacity(1 << 22);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let k = &keys[rng.below(KEYS) as usize];
        let hit = map
            .lock()
            .expect("no benchmark thread panics")
            .get(k.as_str())
            .cloned();
        std::hint::black_box(hit.expect("present"));
        samples.record(start);
    }
    Ok(Figures::from_samples(vec![samples], started.elapsed()))
}

/// `cache-get-hit`: one caller, `Cache::get` of keys held in L1 (with the
/// L2 table behind it, as the service runs it).
pub(crate) async fn cache_get_hit(path: &Path, seconds: f64) -> CliResult<Figures> {
    let db = open_store_db(path).await?;
    let cache = Cache::open(Some(db.clone()), CacheConfig::default()).await?;
    for i in 0..KEYS {
        cache.set(&key(i), value(i), None).await?;
    }
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let stop = stop_after(seconds);
    let mut rng = Rng::new(7);
    let mut samples = Samples::with_capacity(1 << 22);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let k = &keys[rng.below(KEYS) as usize];
        let hit = cache.get(k).await?;
        std::hint::black_box(hit.ok_or_else(|| Failure::new(format!("cache miss on {k}")))?);
        samples.record(start);
    }
    let figures = Figures::from_samples(vec![samples], started.elapsed());
    db.close().await;
    Ok(figures)
}
