//! A COMMIT whose log sync fails (`durability = "full"`, `fsync` reporting
//! that the disk may not hold the pages): SQLite had written the commit's
//! frames, so a crash before the next commit recovers the batch from the
//! log. Its caller is told the outcome is unknown, never that nothing was
//! saved; the next commit writes over the frames, and the database goes on.
//!
//! A process of its own: the fault switch is process-wide (and its tests
//! take turns with it).

mod common;

use std::path::Path;

use common::{config, count, open_kv};
use litebridge::fault::fail_wal_sync;
use litebridge::{Database, DbConfig, Durability, ErrorKind, IdempotencyKey, WriteOptions, params};

/// The fault switch, one test at a time.
static SWITCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The files as they are now, opened elsewhere: what a SIGKILL leaves.
async fn crashed_copy(dir: &Path, name: &str) -> Database {
    let copy = dir.join(name);
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(dir.join("test.db"), copy.join("test.db")).unwrap();
    std::fs::copy(dir.join("test.db-wal"), copy.join("test.db-wal")).unwrap();
    Database::open(copy.join("test.db"), DbConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_log_sync_failed_has_an_unknown_outcome() {
    let _switch = SWITCH.lock().await;
    let (dir, db) = open_kv(config().durability(Durability::Full)).await;
    db.execute("INSERT INTO kv VALUES (1, 'acknowledged')", ())
        .await
        .unwrap();

    fail_wal_sync(1);
    let e = db
        .execute("INSERT INTO kv VALUES (2, 'unknown')", ())
        .await
        .unwrap_err();
    fail_wal_sync(0);
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert!(!e.is_recoverable(), "a blind retry could apply it twice");
    assert!(
        e.to_string().contains("may or may not have committed"),
        "{e}"
    );
    // Not visible in this process...
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k = 2").await, 0);
    // ...but in the log: a crash now brings it back.
    let crashed = crashed_copy(dir.path(), "now").await;
    assert_eq!(count(&crashed, "SELECT count(*) FROM kv").await, 2);
    crashed.close().await;

    // The next commit writes over those frames: from then on the batch is
    // gone for good, crash or not.
    db.execute("INSERT INTO kv VALUES (3, ?1)", params!["after"])
        .await
        .unwrap();
    let crashed = crashed_copy(dir.path(), "after").await;
    assert_eq!(
        count(&crashed, "SELECT group_concat(k) = '1,3' FROM kv").await,
        1
    );
    assert!(
        crashed
            .check(litebridge::CheckDepth::Full)
            .await
            .unwrap()
            .ok
    );
    crashed.close().await;
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 2);
    db.close().await;
}

/// The retry the `outcome_unknown` calls for, made safe by an idempotency
/// key: whether the batch survived (a crash brought it back from the log)
/// or not (the next commit wrote over it), the retry applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_the_retry_after_an_unknown_outcome_safe() {
    let _switch = SWITCH.lock().await;
    let (dir, db) = open_kv(config().durability(Durability::Full)).await;
    let once = WriteOptions {
        idempotency_key: Some(IdempotencyKey::new(1, "order-7").unwrap()),
        ..WriteOptions::default()
    };
    let insert = "INSERT INTO kv VALUES (7, 'order')";
    // The key's table is made by this database's first keyed write.
    db.execute_with(
        "INSERT INTO kv VALUES (1, 'first')",
        (),
        WriteOptions {
            idempotency_key: Some(IdempotencyKey::new(1, "first").unwrap()),
            ..WriteOptions::default()
        },
    )
    .await
    .unwrap();

    fail_wal_sync(1);
    let e = db.execute_with(insert, (), once).await.unwrap_err();
    fail_wal_sync(0);
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");

    // A crash now: the batch, and its record, come back from the log; the
    // retry is answered from the record.
    let crashed = crashed_copy(dir.path(), "now").await;
    let r = crashed.execute_with(insert, (), once).await.unwrap();
    assert_eq!(r.changes, 1);
    assert_eq!(
        count(&crashed, "SELECT count(*) FROM kv WHERE k = 7").await,
        1
    );
    crashed.close().await;

    // No crash: the batch is gone, and so is its record; the retry runs.
    let r = db.execute_with(insert, (), once).await.unwrap();
    assert_eq!(r.changes, 1);
    let r = db.execute_with(insert, (), once).await.unwrap();
    assert_eq!(r.changes, 1, "answered from the record");
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k = 7").await, 1);
    db.close().await;
}
