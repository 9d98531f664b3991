//! A COMMIT whose log sync fails (`durability = "full"`, `fsync` reporting
//! that the disk may not hold the pages): SQLite had written the commit's
//! frames, so a crash before the next commit recovers the batch from the
//! log. Its caller is told the outcome is unknown, never that nothing was
//! saved; the next commit writes over the frames, and the database goes on.
//!
//! A process of its own: the fault switch is process-wide.

mod common;

use std::path::Path;

use common::{config, count, open_kv};
use litebridge::fault::fail_wal_sync;
use litebridge::{Database, DbConfig, Durability, ErrorKind, params};

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
