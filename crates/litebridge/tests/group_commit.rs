//! Group commit: every acknowledged write is there exactly once, and one
//! request's failure stays its own.

mod common;

use common::{config, count, insert, open_kv};
use litebridge::{ErrorKind, Statement, WriteOptions, params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_writers_every_acknowledged_row_once() {
    let (_dir, db) = open_kv(config()).await;
    let per_writer = 500;
    let mut tasks = Vec::new();
    for w in 0..8i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per_writer {
                let k = w * 1_000_000 + i;
                insert(&db, k).await.unwrap();
                acked.push(k);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 8 * per_writer as usize);
    assert_eq!(
        count(&db, "SELECT count(*) FROM kv").await,
        acked.len() as i64
    );
    for k in acked.iter().step_by(97) {
        let rows = db
            .query("SELECT count(*) FROM kv WHERE k = ?1", params![*k])
            .await
            .unwrap();
        assert_eq!(rows.rows[0][0], litebridge::Value::Integer(1), "key {k}");
    }
    let stats = db.stats();
    assert_eq!(stats.total_writes, 8 * per_writer as u64 + 1);
    assert!(stats.batches > 0 && stats.batches <= stats.total_writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_gets_its_own_error_while_the_rest_commit() {
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 7).await.unwrap();
    // Many writes in flight at once so they share batches; key 7 collides.
    let mut tasks = Vec::new();
    for k in 0..64i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move { (k, insert(&db, k).await) }));
    }
    for t in tasks {
        let (k, r) = t.await.unwrap();
        if k == 7 {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Sql);
            assert_eq!(e.sqlite_codes(), Some((19, 1555)), "{e}");
        } else {
            assert_eq!(r.unwrap().changes, 1, "key {k}");
        }
    }
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_effects_of_a_failed_statement_are_never_committed() {
    // OR FAIL keeps the rows inserted before the failing one: the request
    // fails, so none of them may be committed, and its neighbours must be.
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 1).await.unwrap();
    let mut tasks = Vec::new();
    for k in 100..140i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move { insert(&db, k).await }));
    }
    let bad = db.execute(
        "INSERT OR FAIL INTO kv(k, v) VALUES (50, 'a'), (51, 'b'), (1, 'dup')",
        (),
    );
    let bad = bad.await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Sql);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM kv WHERE k IN (50, 51)").await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 41);
}

/// Found by a review: a trigger's `INSERT OR FAIL` keeps the rows it
/// inserted before failing, and SQLite takes them out of the connection's
/// count of changes as the trigger's statement fails, so the batch saw no
/// change and committed half of a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggers_partial_effects_of_a_failed_request_are_never_committed() {
    let (_dir, db) = open_kv(config()).await;
    for sql in [
        "CREATE TABLE t(x UNIQUE)",
        "CREATE TABLE a(x)",
        "CREATE TRIGGER tr BEFORE INSERT ON a BEGIN \
         INSERT OR FAIL INTO t VALUES (1), (2), (1); END",
    ] {
        db.execute(sql, ()).await.unwrap();
    }
    let mut tasks = Vec::new();
    for k in 100..120i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move { insert(&db, k).await }));
    }
    let bad = db
        .execute("INSERT INTO a VALUES (0)", ())
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Sql, "{bad}");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM t").await,
        0,
        "half a failed request"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM a").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_rolls_back_the_transaction_does_not_sink_its_batch() {
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 1).await.unwrap();
    let mut tasks = Vec::new();
    for k in 10..50i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move { insert(&db, k).await }));
    }
    let r = db
        .execute("INSERT OR ROLLBACK INTO kv(k, v) VALUES (1, 'dup')", ())
        .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Sql);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 41);
}

#[tokio::test]
async fn batch_is_all_or_nothing_and_names_the_failing_statement() {
    let (_dir, db) = open_kv(config()).await;
    let ok = db
        .batch(
            vec![
                Statement::new("INSERT INTO kv VALUES (1, 'a')", ()),
                Statement::new("UPDATE kv SET v = 'b' WHERE k = 1", ()),
            ],
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].changes, 1);
    let err = db
        .batch(
            vec![
                Statement::new("INSERT INTO kv VALUES (2, 'c')", ()),
                Statement::new("INSERT INTO kv VALUES (1, 'dup')", ()),
            ],
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("statements[1]: UNIQUE"),
        "{err}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k = 2").await, 0);
}

#[tokio::test]
async fn execute_many_is_atomic_and_names_the_failing_row() {
    let (_dir, db) = open_kv(config()).await;
    let rows = (0..1000).map(|k| params![k, "x"]).collect();
    let r = db
        .execute_many(
            "INSERT INTO kv VALUES (?1, ?2)",
            rows,
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.changes, 1000);
    let bad = vec![params![5000, "x"], params![5, "dup"]];
    let err = db
        .execute_many(
            "INSERT INTO kv VALUES (?1, ?2)",
            bad,
            WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("rows[1]:"), "{err}");
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1000);
}

#[tokio::test]
async fn a_closure_write_that_fails_rolls_back_alone() {
    let (_dir, db) = open_kv(config()).await;
    let err = db
        .write(|conn| {
            conn.execute("INSERT INTO kv VALUES (1, 'a')", [])?;
            conn.execute("INSERT INTO kv VALUES (1, 'a')", [])?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Sql);
    let n: i64 = db
        .write(|conn| {
            conn.execute("INSERT INTO kv VALUES (2, 'b')", [])?;
            Ok(conn.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?)
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let panicked = db
        .write(|_| -> litebridge::Result<()> { panic!("boom") })
        .await;
    assert_eq!(panicked.unwrap_err().kind(), ErrorKind::Internal);
    insert(&db, 3).await.unwrap();
}

#[tokio::test]
async fn a_deferred_foreign_key_left_unresolved_fails_only_its_request() {
    let (_dir, db) = open_kv(config()).await;
    db.execute(
        "CREATE TABLE child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES kv(k) DEFERRABLE INITIALLY DEFERRED)",
        (),
    )
    .await
    .unwrap();
    let dangling = db.execute("INSERT INTO child VALUES (1, 999)", ());
    let fine = insert(&db, 5);
    let (dangling, fine) = tokio::join!(dangling, fine);
    assert!(dangling.unwrap_err().to_string().contains("FOREIGN KEY"));
    fine.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM child").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

#[tokio::test]
async fn transaction_control_in_a_request_is_refused() {
    let (_dir, db) = open_kv(config()).await;
    for sql in [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT x",
        "PRAGMA journal_mode = DELETE",
    ] {
        let e = db.execute(sql, ()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    let e = db.query("BEGIN", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    insert(&db, 1).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

/// The difference of two latency snapshots counts what ran between them,
/// lane by lane (the dashboard's recent percentiles come from it).
#[tokio::test]
async fn latency_snapshots_give_a_window_of_reads_and_writes() {
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 1).await.unwrap();
    count(&db, "SELECT count(*) FROM kv").await;
    let before = db.latency_snapshots();
    for k in 2..12 {
        insert(&db, k).await.unwrap();
    }
    for _ in 0..5 {
        assert!(count(&db, "SELECT count(*) FROM kv").await > 0);
    }
    let after = db.latency_snapshots();
    let writes = after.write.since(&before.write);
    assert_eq!(writes.count, 10);
    assert!(writes.p50 > std::time::Duration::ZERO && writes.p50 <= writes.max);
    assert_eq!(after.read.since(&before.read).count, 5);
    assert_eq!(after.heavy.since(&before.heavy).count, 0);
    assert_eq!(
        db.stats().total_writes,
        12,
        "the table's creation and 11 inserts, since start"
    );
}

/// A key refused because an earlier request of the batch recorded it with
/// another write is answered only if that record commits: when the batch
/// runs again without it, the refused request runs (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_an_idempotency_key_is_asked_again_when_the_batch_reruns() {
    use std::time::Duration;
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 1).await.unwrap();
    let key = |timeout: Option<Duration>| WriteOptions {
        timeout,
        idempotency_key: Some(litebridge::IdempotencyKey::new(1, "k").unwrap()),
        ..WriteOptions::default()
    };
    // The records' table made (by this database's first keyed write).
    let first = WriteOptions {
        idempotency_key: Some(litebridge::IdempotencyKey::new(1, "first").unwrap()),
        ..WriteOptions::default()
    };
    db.execute_with("INSERT INTO kv VALUES (2, 'first')", (), first)
        .await
        .unwrap();
    // The writer busy, so that the three below share the next batch.
    let busy = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|_| {
                std::thread::sleep(Duration::from_millis(200));
                Ok(())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A records the key and runs out of time while C holds the first pass;
    // B, another write with the key, is refused in that pass; C ends the
    // transaction, and the batch runs again: A has timed out, and B runs.
    let a = db.execute_with(
        "INSERT INTO kv VALUES (100, 'a')",
        (),
        key(Some(Duration::from_millis(400))),
    );
    let b = db.execute_with("INSERT INTO kv VALUES (200, 'b')", (), key(None));
    let c = db.write(|c| {
        std::thread::sleep(Duration::from_millis(600));
        Ok(c.execute("INSERT OR ROLLBACK INTO kv(k, v) VALUES (1, 'dup')", [])?)
    });
    let (a, b, c) = tokio::join!(a, b, c);
    busy.await.unwrap().unwrap();
    assert_eq!(a.unwrap_err().kind(), ErrorKind::Timeout);
    assert_eq!(c.unwrap_err().kind(), ErrorKind::Sql);
    assert_eq!(b.expect("the key was free after all").changes, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k > 2").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k = 200").await, 1);
}
