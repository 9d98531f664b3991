//! The writer gathers each commit's WAL frames into one write (`wal_vfs`).
//! These tests take the paths where SQLite does more than append one commit:
//! a transaction larger than the page cache (pages spill to the WAL before
//! the commit, and are read back), pages rewritten in place within a
//! transaction, and a spilled transaction rolled back. Each time the data is
//! checked through the readers (other connections, the plain VFS) and in a
//! copy of the files recovered from the WAL alone, which is what survives a
//! crash.

mod common;

use std::path::Path;

use common::{config, count, open_kv};
use litebridge::{CheckpointConfig, Database, DbConfig, Error, Value, params};

/// A cache of 16 pages: anything bigger spills before it commits.
/// Checkpoints are left to the end, so the WAL holds everything.
fn small_cache() -> litebridge::DbConfigBuilder {
    config().cache_size(16).checkpoint(CheckpointConfig {
        passive_pages: 1_000_000,
        ..CheckpointConfig::default()
    })
}

fn value(k: i64, round: i64) -> String {
    format!("{round}-{k}-{}", "x".repeat(150))
}

/// Copies the database and its WAL (not the shared-memory index) while
/// nothing writes, and opens the copy: SQLite rebuilds the index from the
/// WAL, trusting only frames with valid checksums up to a commit.
async fn recovered_copy(dir: &Path, db: &Database) -> Database {
    let copy = dir.join("copy");
    std::fs::create_dir(&copy).unwrap();
    let src = dir.join("test.db");
    std::fs::copy(&src, copy.join("test.db")).unwrap();
    std::fs::copy(dir.join("test.db-wal"), copy.join("test.db-wal")).unwrap();
    assert!(db.wal_bytes() > 0, "the WAL holds the data being checked");
    Database::open(copy.join("test.db"), DbConfig::default())
        .await
        .unwrap()
}

/// The rows are `expected` through the readers, and in a copy recovered
/// from the WAL, which passes a full integrity check.
async fn assert_seen_everywhere(dir: &Path, db: &Database, expected: &[(i64, String)]) {
    assert_eq!(values(db).await, expected, "through the readers");
    let copy = recovered_copy(dir, db).await;
    assert_eq!(values(&copy).await, expected, "recovered from the WAL");
    assert!(copy.check(litebridge::CheckDepth::Full).await.unwrap().ok);
    copy.close().await;
}

async fn values(db: &Database) -> Vec<(i64, String)> {
    db.query("SELECT k, v FROM kv ORDER BY k", ())
        .await
        .unwrap()
        .rows
        .into_iter()
        .map(|r| match (&r[0], &r[1]) {
            (Value::Integer(k), Value::Text(v)) => (*k, v.clone()),
            other => panic!("unexpected row {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_spilled_and_rewritten_before_a_commit_are_what_readers_and_recovery_see() {
    let (dir, db) = open_kv(small_cache()).await;
    // One transaction: 4,000 rows (far more than 16 pages), then every row
    // updated twice, so pages spilled to the WAL are rewritten in place.
    db.write(|tx| {
        for k in 0..4_000i64 {
            tx.execute(
                "INSERT INTO kv(k, v) VALUES (?1, ?2)",
                rusqlite::params![k, value(k, 0)],
            )?;
        }
        for round in 1..=2i64 {
            for k in 0..4_000i64 {
                tx.execute(
                    "UPDATE kv SET v = ?2 WHERE k = ?1",
                    rusqlite::params![k, value(k, round)],
                )?;
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    // And small commits after it, appended behind it.
    for k in 4_000..4_100i64 {
        db.execute(
            "INSERT INTO kv(k, v) VALUES (?1, ?2)",
            params![k, value(k, 2)],
        )
        .await
        .unwrap();
    }
    let expected: Vec<(i64, String)> = (0..4_100).map(|k| (k, value(k, 2))).collect();
    assert_seen_everywhere(dir.path(), &db, &expected).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_transaction_rolled_back_leaves_nothing_behind() {
    let (dir, db) = open_kv(small_cache()).await;
    for k in 0..50i64 {
        db.execute(
            "INSERT INTO kv(k, v) VALUES (?1, ?2)",
            params![k, value(k, 0)],
        )
        .await
        .unwrap();
    }
    // A request that writes megabytes (spilling them to the WAL) and then
    // fails: it is rolled back alone.
    let failed = db
        .write(|tx| {
            for k in 1_000..6_000i64 {
                tx.execute(
                    "INSERT INTO kv(k, v) VALUES (?1, ?2)",
                    rusqlite::params![k, value(k, 9)],
                )?;
            }
            tx.execute("UPDATE kv SET v = 'changed' WHERE k < 50", [])?;
            Err::<(), _>(Error::InvalidArgument {
                param: "test".into(),
                message: "fails after spilling".into(),
            })
        })
        .await;
    assert!(failed.is_err());
    // Writes after it land where its frames were.
    for k in 50..100i64 {
        db.execute(
            "INSERT INTO kv(k, v) VALUES (?1, ?2)",
            params![k, value(k, 0)],
        )
        .await
        .unwrap();
    }
    let expected: Vec<(i64, String)> = (0..100).map(|k| (k, value(k, 0))).collect();
    assert_eq!(
        count(&db, "SELECT count(*) FROM kv WHERE k >= 1000").await,
        0
    );
    assert_seen_everywhere(dir.path(), &db, &expected).await;
    db.close().await;
}

/// The case that lost acknowledged transactions: a transaction that spills
/// and rewrites pages in place makes SQLite rewrite its frames' checksums at
/// commit, the commit frame's header last. Nothing is written after it here:
/// the copy taken right after the acknowledgement is what a SIGKILL leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilling_transaction_is_in_the_file_when_its_commit_returns() {
    for statements in [2_000i64, 6_000] {
        let (dir, db) = open_kv(small_cache()).await;
        let mut batch: Vec<litebridge::Statement> = (0..statements)
            .map(|k| {
                litebridge::Statement::new(
                    "INSERT INTO kv(k, v) VALUES (?1, ?2)",
                    params![k, value(k, 0)],
                )
            })
            .collect();
        batch.push(litebridge::Statement::new(
            "UPDATE kv SET v = v || '-updated'",
            (),
        ));
        batch.push(litebridge::Statement::new(
            "INSERT INTO kv(k, v) VALUES (-1, 'marker')",
            (),
        ));
        db.batch(batch, litebridge::WriteOptions::default())
            .await
            .unwrap();
        // No other write: the copy is taken with the writer idle.
        let copy = recovered_copy(dir.path(), &db).await;
        assert_eq!(
            count(&copy, "SELECT count(*) FROM kv WHERE k = -1").await,
            1,
            "the acknowledged marker ({statements} rows)"
        );
        assert_eq!(
            count(&copy, "SELECT count(*) FROM kv WHERE v LIKE '%-updated'").await,
            statements
        );
        assert!(copy.check(litebridge::CheckDepth::Full).await.unwrap().ok);
        copy.close().await;
        db.close().await;
    }
}

/// A transaction that spills pages and then rolls back leaves its frames
/// gathered but never written: another connection (another process) may
/// commit frames at the same offsets, and must keep them. (A 2 MB cache: the
/// pages that spill past it, under the 1 MiB a buffer is written out at,
/// are still gathered when the transaction rolls back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_spill_never_overwrites_another_connections_commit() {
    for rows in [1201, 1301] {
        let (dir, db) = open_kv(small_cache().cache_size(-2000)).await;
        db.execute("CREATE TABLE other(v TEXT)", ()).await.unwrap();
        db.checkpoint(litebridge::CheckpointMode::Truncate)
            .await
            .unwrap();
        // Frames gathered, then the whole transaction rolls back.
        let failed = db
            .execute(
                format!(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) \
                     INSERT OR ROLLBACK INTO kv(k, v) \
                     SELECT CASE WHEN x = {rows} THEN x - 1 ELSE x END, randomblob(2000) FROM c"
                ),
                (),
            )
            .await;
        assert!(failed.is_err());
        // Another process commits where the rolled-back frames would go.
        let other = rusqlite::Connection::open(dir.path().join("test.db")).unwrap();
        other
            .execute(
                "INSERT INTO other VALUES ('committed by another process')",
                [],
            )
            .unwrap();
        drop(other);
        db.execute("INSERT INTO kv(k, v) VALUES (424242, 'acked')", ())
            .await
            .unwrap();
        assert_eq!(
            count(&db, "SELECT count(*) FROM other").await,
            1,
            "{rows} rows"
        );
        assert!(
            db.check(litebridge::CheckDepth::Full).await.unwrap().ok,
            "the live file ({rows} rows)"
        );
        let copy = recovered_copy(dir.path(), &db).await;
        assert_eq!(
            count(&copy, "SELECT count(*) FROM other").await,
            1,
            "{rows} rows"
        );
        assert_eq!(
            count(&copy, "SELECT count(*) FROM kv WHERE k = 424242").await,
            1,
            "{rows} rows"
        );
        assert!(
            copy.check(litebridge::CheckDepth::Full).await.unwrap().ok,
            "recovered ({rows} rows)"
        );
        copy.close().await;
        db.close().await;
    }
}
