//! A failed COMMIT reaches every caller of its batch, leaves nothing of the
//! batch visible, and the database keeps working.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Gate, count, eventually, hold_writer, insert, open_kv};
use litebridge::fault::Faults;
use litebridge::{DbConfig, ErrorKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_answers_every_caller_and_commits_nothing() {
    let faults = Arc::new(Faults::default());
    let (_dir, db) = open_kv(DbConfig::builder().faults(faults.clone())).await;
    insert(&db, 1).await.unwrap();

    let gate = Gate::default();
    let holder = hold_writer(&db, &gate).await;
    let mut tasks = Vec::new();
    for k in 100..120i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move { insert(&db, k).await }));
    }
    eventually(Duration::from_secs(5), || db.stats().write_queue == 20).await;
    // The held batch and the batch of twenty both fail at COMMIT.
    faults.fail_commits(2);
    gate.open();
    assert_eq!(holder.await.unwrap().unwrap_err().kind(), ErrorKind::Sql);
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Sql);
        assert!(e.to_string().contains("COMMIT failed"), "{e}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
    assert_eq!(db.stats().commit_failures, 2);
    insert(&db, 2).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 2);
}

#[tokio::test]
async fn a_full_database_fails_writes_clearly_and_recovers_when_space_returns() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    let pages = count(&db, "PRAGMA page_count").await;
    db.write(move |c| {
        c.query_row(&format!("PRAGMA max_page_count = {}", pages + 2), [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(())
    })
    .await
    .unwrap();
    let big = "x".repeat(64 * 1024);
    let e = db
        .execute(
            "INSERT INTO kv VALUES (1, ?1)",
            litebridge::params![big.clone()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.sqlite_codes().map(|c| c.0), Some(13), "{e}");
    assert!(e.is_recoverable());
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 0);
    db.write(|c| {
        c.query_row("PRAGMA max_page_count = 1073741823", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(())
    })
    .await
    .unwrap();
    db.execute("INSERT INTO kv VALUES (1, ?1)", litebridge::params![big])
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}
