//! The benchmark cases and their baselines (BENCHMARKS.md lists them). Every case calls
//! the public async API, one request per operation, each acknowledged on its
//! own; every baseline is the plain rusqlite design it is compared with.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use litebridge::{Database, DbConfig, Durability, WriteOptions, params};
use rusqlite::Connection;

use super::measure::{
    Figures, Rng, Samples, gather_tasks, gather_threads, keep_in_flight, stop_after,
};
use crate::{CliResult, Failure};

/// The 100-byte value of every benchmark row.
pub(crate) const VALUE: &str = "litebridge-benchmark-value-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-ABCDEFGHIJKLMNOPQRSTUVW";
const CREATE: &str = "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT)";
const INSERT: &str = "INSERT INTO kv(k, v) VALUES (?1, ?2)";
const SELECT: &str = "SELECT v FROM kv WHERE k = ?1";
/// Rows in the table that point reads look up.
pub(crate) const READ_ROWS: u64 = 100_000;

fn raw_connection(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    c.execute_batch(&format!("PRAGMA synchronous = {synchronous}; {CREATE};"))?;
    Ok(c)
}

async fn open_db(path: &Path, durability: Durability, readers: usize) -> CliResult<Database> {
    let config = DbConfig::builder()
        .durability(durability)
        .readers(readers)
        .build()?;
    let db = Database::open(path, config).await?;
    db.execute(CREATE, ()).await?;
    Ok(db)
}

// ----- writes ----------------------------------------------------------------

/// `raw-txn`: one thread, a cached statement, transactions of 200,000 rows:
/// the limit for writes (1.2 M rows/s measured on this kind of machine), which the target ratio of
/// `write-pipelined` was set against. (One transaction for the whole run is
/// slower, its dirty pages overflow the page cache, and would flatter the ratio.)
pub(crate) fn raw_txn(path: &Path, seconds: f64) -> CliResult<Figures> {
    let conn = raw_connection(path, "NORMAL").map_err(litebridge::Error::from)?;
    let stop = stop_after(seconds);
    let mut samples = Samples::with_capacity(4_000_000);
    let started = Instant::now();
    let mut k = 0i64;
    'outer: loop {
        conn.execute_batch("BEGIN")
            .map_err(litebridge::Error::from)?;
        let mut stmt = conn
            .prepare_cached(INSERT)
            .map_err(litebridge::Error::from)?;
        for _ in 0..200_000 {
            let t = Instant::now();
            stmt.execute(rusqlite::params![k, VALUE])
                .map_err(litebridge::Error::from)?;
            samples.record(t);
            k += 1;
            if k % 1000 == 0 && stop.load(Ordering::Relaxed) {
                break;
            }
        }
        drop(stmt);
        conn.execute_batch("COMMIT")
            .map_err(litebridge::Error::from)?;
        if stop.load(Ordering::Relaxed) {
            break 'outer;
        }
    }
    Ok(Figures::from_samples(vec![samples], started.elapsed()))
}

/// `mutex` / `mutex-full`: 8 threads sharing one connection behind a mutex,
/// one autocommit transaction per row.
pub(crate) fn mutex(path: &Path, seconds: f64, full: bool) -> CliResult<Figures> {
    let sync = if full { "FULL" } else { "NORMAL" };
    let conn = Arc::new(Mutex::new(
        raw_connection(path, sync).map_err(litebridge::Error::from)?,
    ));
    let stop = stop_after(seconds);
    let next_key = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (conn, stop, next_key) = (conn.clone(), stop.clone(), next_key.clone());
            super::measure::baseline_thread(move || {
                let mut samples = Samples::with_capacity(200_000);
                while !stop.load(Ordering::Relaxed) {
                    let k = next_key.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    let c = conn.lock().expect("no benchmark thread panics");
                    c.prepare_cached(INSERT)
                        .and_then(|mut s| s.execute(rusqlite::params![k, VALUE]))
                        .expect("insert");
                    drop(c);
                    samples.record(start);
                }
                samples
            })
        })
        .collect();
    Ok(gather_threads(threads, started))
}

/// `producers` tasks, each keeping `depth` one-row INSERT requests in flight
/// through group commit; every request waits for its own acknowledgement
/// (after COMMIT). `keyed`: each with an idempotency key of its own.
pub(crate) async fn group_commit(
    path: &Path,
    seconds: f64,
    producers: usize,
    depth: usize,
    durability: Durability,
    keyed: bool,
) -> CliResult<Figures> {
    let db = open_db(path, durability, 2).await?;
    let each = db.clone();
    let figures = pipelined_inserts(seconds, producers, depth, move |k| {
        let db = each.clone();
        async move {
            if keyed {
                let options = litebridge::WriteOptions {
                    idempotency_key: Some(litebridge::IdempotencyKey::new(0, &k.to_string())?),
                    ..litebridge::WriteOptions::default()
                };
                db.execute_with(INSERT, params![k, VALUE], options).await?;
            } else {
                db.execute(INSERT, params![k, VALUE]).await?;
            }
            Ok(())
        }
    })
    .await;
    db.close().await;
    figures
}

/// `raw-group`: group commit as one would write it by hand, for the same load
/// as `write-pipelined`: one thread with its own connection takes what is
/// queued on a channel (up to the library's default batch of 1,024), runs it
/// in one transaction and answers each request after COMMIT; SQLite's own
/// automatic checkpoint, which runs on that thread after a COMMIT.
pub(crate) async fn raw_group(
    path: &Path,
    seconds: f64,
    producers: usize,
    depth: usize,
) -> CliResult<Figures> {
    type Ack = tokio::sync::oneshot::Sender<()>;
    let conn = raw_connection(path, "NORMAL").map_err(litebridge::Error::from)?;
    let (queue, requests) = std::sync::mpsc::channel::<(i64, Ack)>();
    let writer = super::measure::baseline_thread(move || -> rusqlite::Result<()> {
        let mut batch = Vec::with_capacity(litebridge::DEFAULT_MAX_BATCH);
        while let Ok(first) = requests.recv() {
            batch.push(first);
            batch.extend(requests.try_iter().take(litebridge::DEFAULT_MAX_BATCH - 1));
            conn.execute_batch("BEGIN")?;
            let mut stmt = conn.prepare_cached(INSERT)?;
            for (k, _) in &batch {
                stmt.execute(rusqlite::params![k, VALUE])?;
            }
            drop(stmt);
            conn.execute_batch("COMMIT")?;
            for (_, ack) in batch.drain(..) {
                let _ = ack.send(());
            }
        }
        Ok(())
    });
    let figures = pipelined_inserts(seconds, producers, depth, move |k| {
        let queue = queue.clone();
        async move {
            let (ack, acked) = tokio::sync::oneshot::channel();
            let gone = || Failure::new("the raw-group writer stopped");
            queue.send((k, ack)).map_err(|_| gone())?;
            acked.await.map_err(|_| gone())
        }
    })
    .await;
    // The load has dropped every sender: the writer ends.
    match writer.join() {
        Ok(Ok(())) => figures,
        Ok(Err(e)) => Err(litebridge::Error::from(e).into()),
        Err(_) => Err(Failure::new("the raw-group writer panicked")),
    }
}

/// `producers` tasks, each keeping `depth` requests in flight, with keys
/// from one sequence (rows append); `insert(k)` is one request, timed from
/// its first poll to its acknowledgement.
async fn pipelined_inserts<F, R>(
    seconds: f64,
    producers: usize,
    depth: usize,
    insert: F,
) -> CliResult<Figures>
where
    F: Fn(i64) -> R + Send + Sync + 'static,
    R: std::future::Future<Output = CliResult<()>> + Send,
{
    let insert = Arc::new(insert);
    let stop = stop_after(seconds);
    let next_key = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let (insert, stop, next_key) = (insert.clone(), stop.clone(), next_key.clone());
            tokio::spawn(async move {
                let mut samples = Samples::with_capacity(65_536);
                keep_in_flight(depth, &stop, &mut samples, || {
                    insert(next_key.fetch_add(1, Ordering::Relaxed))
                })
                .await?;
                Ok::<_, Failure>(samples)
            })
        })
        .collect();
    gather_tasks(tasks, started).await
}

// ----- reads -----------------------------------------------------------------

/// Fills the table point reads look up.
pub(crate) async fn populate(path: &Path) -> CliResult {
    let db = open_db(path, Durability::Normal, 1).await?;
    let rows = (0..READ_ROWS as i64).map(|k| params![k, VALUE]).collect();
    db.execute_many(INSERT, rows, WriteOptions::default())
        .await?;
    db.close().await;
    Ok(())
}

/// `raw-threads`: 2 threads, each with its own connection, point reads.
pub(crate) fn raw_threads(path: &Path, seconds: f64) -> CliResult<Figures> {
    let stop = stop_after(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let stop = stop.clone();
            let path = path.to_path_buf();
            super::measure::baseline_thread(move || -> rusqlite::Result<Samples> {
                let conn = Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                let mut stmt = conn.prepare_cached(SELECT)?;
                let mut rng = Rng::new(t + 1);
                let mut samples = Samples::with_capacity(1_000_000);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let k = rng.below(READ_ROWS) as i64;
                    let v: String = stmt.query_row([k], |r| r.get(0))?;
                    std::hint::black_box(v);
                    samples.record(start);
                }
                Ok(samples)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.push(
            t.join()
                .map_err(|_| crate::Failure::new("a baseline thread panicked"))?
                .map_err(litebridge::Error::from)?,
        );
    }
    Ok(Figures::from_samples(all, started.elapsed()))
}

/// `read-point`: 64 concurrent callers, point reads through the read lane of 2 readers.
pub(crate) async fn read_point(path: &Path, seconds: f64) -> CliResult<Figures> {
    let db = open_db(path, Durability::Normal, 2).await?;
    let stop: Arc<AtomicBool> = stop_after(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let (db, stop) = (db.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(t + 100);
                let mut samples = Samples::with_capacity(100_000);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let k = rng.below(READ_ROWS) as i64;
                    let rows = db.query(SELECT, params![k]).await?;
                    std::hint::black_box(rows);
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
