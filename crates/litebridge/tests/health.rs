//! Broken connections are replaced, and a dead writer thread gives errors,
//! never hangs, and comes back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{count, eventually, insert, open_kv};
use litebridge::fault::Faults;
use litebridge::{DbConfig, ErrorKind};

#[tokio::test]
async fn a_reader_that_fails_is_replaced_and_the_read_succeeds() {
    let faults = Arc::new(Faults::default());
    let (_dir, db) = open_kv(DbConfig::builder().readers(2).faults(faults.clone())).await;
    insert(&db, 1).await.unwrap();
    faults.break_readers(1);
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
    assert_eq!(db.stats().failed_connections, 1);
    for _ in 0..10 {
        assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
    }
    assert_eq!(db.stats().failed_connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_replaces_a_broken_idle_reader() {
    let faults = Arc::new(Faults::default());
    let (_dir, db) = open_kv(
        DbConfig::builder()
            .readers(2)
            .health_check_interval(Duration::from_millis(20))
            .faults(faults.clone()),
    )
    .await;
    faults.break_readers(1);
    // Check a connection out without running a statement: it goes back broken.
    db.read(|_| Ok(())).await.unwrap();
    assert_eq!(db.stats().failed_connections, 0);
    // The pass that replaced it stamps its time when it ends.
    eventually(Duration::from_secs(10), || {
        let stats = db.stats();
        stats.failed_connections == 1 && stats.last_health_check.is_some()
    })
    .await;
    for _ in 0..10 {
        count(&db, "SELECT count(*) FROM kv").await;
    }
    assert_eq!(db.stats().failed_connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_gives_errors_not_hangs_and_is_restarted() {
    let faults = Arc::new(Faults::default());
    let (_dir, db) = open_kv(DbConfig::builder().faults(faults.clone())).await;
    insert(&db, 1).await.unwrap();
    faults.panic_writer();
    let doomed = tokio::time::timeout(Duration::from_secs(10), insert(&db, 2))
        .await
        .expect("a caller of a dead writer must not hang");
    let e = doomed.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_recoverable());
    // The supervisor restarts the writer; writes work again.
    insert(&db, 3).await.unwrap();
    assert_eq!(db.stats().writer_restarts, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k = 2").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 2);
    assert!(db.health().healthy);
}

#[tokio::test]
async fn closing_commits_what_was_queued_and_refuses_what_comes_after() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    let path = db.path().to_path_buf();
    let pending: Vec<_> = (0..50i64)
        .map(|k| {
            let db = db.clone();
            tokio::spawn(async move { insert(&db, k).await })
        })
        .collect();
    for p in pending {
        p.await.unwrap().unwrap();
    }
    db.close().await;
    let e = insert(&db, 99).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(
        db.query("SELECT 1", ()).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert!(!db.health().healthy);
    drop(db);
    let reopened = litebridge::Database::open(&path, DbConfig::default())
        .await
        .unwrap();
    assert_eq!(count(&reopened, "SELECT count(*) FROM kv").await, 50);
}

/// A database file removed or replaced while open would take writes into an
/// inode no path names, every one lost at the restart (an operator's audit
/// saw a minute of them acknowledged): writes are refused, nothing of them
/// written, and `health` says why; for the log beside it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_once_the_database_file_is_removed_or_replaced() {
    for what in ["removed", "replaced", "log removed"] {
        let (dir, db) = open_kv(DbConfig::builder()).await;
        insert(&db, 1).await.unwrap();
        let path = dir.path().join("test.db");
        assert!(path.exists(), "{}", path.display());
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        match what {
            "removed" => std::fs::remove_file(&path).unwrap(),
            "replaced" => {
                let other = dir.path().join("other.db");
                std::fs::copy(&path, &other).unwrap();
                std::fs::rename(&other, &path).unwrap();
            }
            _ => std::fs::remove_file(&wal).unwrap(),
        }
        let e = insert(&db, 2).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{what}: {e}");
        assert!(
            e.to_string()
                .contains("nothing of this request was written"),
            "{e}"
        );
        let health = db.health();
        assert!(!health.healthy, "{what}");
        assert!(
            health
                .problems
                .iter()
                .any(|p| p.contains("while litebridge had it open")),
            "{what}: {:?}",
            health.problems
        );
        // Reads go on, from the file still open.
        assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
    }
}

/// A closed database's health says it was closed, not that its log "was
/// removed while litebridge had it open" (closing removes it: a review).
#[tokio::test]
async fn a_closed_database_says_it_was_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = litebridge::Database::open(dir.path().join("c.db"), litebridge::DbConfig::default())
        .await
        .unwrap();
    db.execute("CREATE TABLE t(x)", ()).await.unwrap();
    db.close().await;
    let health = db.health();
    assert!(!health.healthy);
    assert_eq!(health.problems, ["it was closed (Database::close)"]);
}
