//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use litebridge::{Database, DbConfig, DbConfigBuilder, params};
use tempfile::TempDir;

/// A database in a fresh temporary directory, with a `kv` table.
pub async fn open_kv(builder: DbConfigBuilder) -> (TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("test.db"), builder.build().unwrap())
        .await
        .unwrap();
    db.execute(
        "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL)",
        (),
    )
    .await
    .unwrap();
    (dir, db)
}

/// Writes `rows` rows of `bytes` bytes into `kv` in one request, keys from
/// `first`.
pub async fn insert_rows(db: &Database, first: i64, rows: i64, bytes: usize) {
    let rows = (first..first + rows)
        .map(|k| params![k, "v".repeat(bytes)])
        .collect();
    db.execute_many(
        "INSERT INTO kv VALUES (?1, ?2)",
        rows,
        litebridge::WriteOptions::default(),
    )
    .await
    .unwrap();
}

pub fn config() -> DbConfigBuilder {
    DbConfig::builder()
}

pub async fn count(db: &Database, sql: &str) -> i64 {
    let rows = db.query(sql, ()).await.unwrap();
    match rows.rows[0][0] {
        litebridge::Value::Integer(n) => n,
        ref other => panic!("not an integer: {other:?}"),
    }
}

pub async fn insert(db: &Database, k: i64) -> litebridge::Result<litebridge::ExecResult> {
    db.execute(
        "INSERT INTO kv(k, v) VALUES (?1, ?2)",
        params![k, format!("value-{k}")],
    )
    .await
}

/// A gate a closure write can wait on, holding the writer thread busy until
/// the test opens it. Re-entrant: a re-run of the closure passes once open.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn wait(&self) {
        let (m, c) = &*self.0;
        let mut open = m.lock().unwrap();
        while !*open {
            open = c.wait(open).unwrap();
        }
    }
    pub fn open(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}

/// Starts a write that holds the writer thread until `gate` opens, and
/// returns once the writer is inside it.
pub async fn hold_writer(
    db: &Database,
    gate: &Gate,
) -> tokio::task::JoinHandle<litebridge::Result<()>> {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let g = gate.clone();
    let d = db.clone();
    let handle = tokio::spawn(async move {
        d.write(move |_| {
            let _ = started_tx.send(());
            g.wait();
            Ok(())
        })
        .await
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    handle
}

/// Yields until `cond` holds (a background thread is doing the work), failing
/// after `limit`.
pub async fn eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
#[cfg(feature = "postgres")]
pub mod pg;

/// This process's peak resident size, in MB (`VmHWM`).
pub fn peak_rss_mb() -> u64 {
    status_mb("VmHWM:")
}

/// This process's resident size now, in MB (`VmRSS`).
pub fn rss_mb() -> u64 {
    status_mb("VmRSS:")
}

/// A size `/proc/self/status` gives in kB under `field`, in MB.
fn status_mb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
