//! A full write queue: `overloaded` at once on the try path, waiting on the
//! normal path.

mod common;

use std::time::Duration;

use common::{Gate, count, eventually, hold_writer, insert, open_kv};
use litebridge::{DbConfig, ErrorKind, params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_overloads_the_try_path_and_holds_the_waiting_path() {
    let (_dir, db) = open_kv(DbConfig::builder().write_queue(2)).await;
    let gate = Gate::default();
    let holder = hold_writer(&db, &gate).await;
    let queued: Vec<_> = (0..2i64)
        .map(|k| {
            let db = db.clone();
            tokio::spawn(async move { insert(&db, k).await })
        })
        .collect();
    eventually(Duration::from_secs(5), || db.stats().write_queue == 2).await;

    let e = db
        .try_execute("INSERT INTO kv VALUES (10, 'x')", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    assert!(e.is_recoverable());
    assert!(e.retry_after().is_some());
    assert_eq!(db.stats().overloaded, 1);

    let waiting = {
        let db = db.clone();
        tokio::spawn(async move { insert(&db, 11).await })
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "a waiting write must wait for room");
    gate.open();
    holder.await.unwrap().unwrap();
    for q in queued {
        q.await.unwrap().unwrap();
    }
    waiting.await.unwrap().unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 3);
    assert_eq!(
        count(&db, "SELECT count(*) FROM kv WHERE k = 10").await,
        0,
        "the refused write must not have been written"
    );
    let _ = params![1];
}
