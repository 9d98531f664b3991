//! Deadlines are real: a statement still running at its deadline is
//! interrupted on its own connection, a timed-out write did not commit, a
//! request whose deadline passed in the queue never starts, and a dropped
//! caller does not leave a connection busy.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Gate, count, hold_writer, insert, open_kv};
use litebridge::{
    CheckpointMode, Database, DbConfig, ErrorKind, Lane, QueryOptions, Statement, TimeoutStage,
    WriteOptions, params,
};

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

fn within(timeout_ms: u64) -> QueryOptions {
    QueryOptions {
        timeout: Some(Duration::from_millis(timeout_ms)),
        ..QueryOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_is_interrupted_on_time_while_other_readers_go_on() {
    let (_dir, db) = open_kv(DbConfig::builder().readers(2)).await;
    insert(&db, 1).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (db, done, reads) = (db.clone(), done.clone(), reads.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                db.query("SELECT v FROM kv WHERE k = 1", ()).await.unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let started = Instant::now();
    let e = db.query_with(ENDLESS, (), within(300)).await.unwrap_err();
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert!(
        matches!(
            e,
            litebridge::Error::Timeout {
                stage: TimeoutStage::Running,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(300),
        "interrupted early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "interrupted late: {took:?}");
    assert!(reads.load(Ordering::Relaxed) > 0, "point reads stalled");
    // The interrupted connection is fine afterwards.
    for _ in 0..4 {
        db.query("SELECT count(*) FROM kv", ()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_lane_queries_are_interrupted_too() {
    let (_dir, db) = open_kv(DbConfig::builder().heavy_readers(1)).await;
    let opts = QueryOptions {
        lane: Lane::Heavy,
        ..within(200)
    };
    let e = db.query_with(ENDLESS, (), opts).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let ok = db
        .query_with(
            "SELECT 1",
            (),
            QueryOptions {
                lane: Lane::Heavy,
                ..QueryOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_is_absent() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    let endless_insert = "INSERT INTO kv(k, v) \
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, 'v' FROM c";
    let neighbour = {
        let db = db.clone();
        tokio::spawn(async move { insert(&db, -1).await })
    };
    let e = db
        .execute_with(
            endless_insert,
            (),
            WriteOptions {
                timeout: Some(Duration::from_millis(200)),
                ..WriteOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            litebridge::Error::Timeout {
                stage: TimeoutStage::Running,
                ..
            }
        ),
        "{e}"
    );
    neighbour.await.unwrap().unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k > 0").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_deadline_passed_in_the_queue_is_never_started() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    let gate = Gate::default();
    let holder = hold_writer(&db, &gate).await;
    let ran = Arc::new(AtomicBool::new(false));
    let late = {
        let (db, ran) = (db.clone(), ran.clone());
        tokio::spawn(async move {
            db.write_with(
                WriteOptions {
                    timeout: Some(Duration::from_millis(50)),
                    ..WriteOptions::default()
                },
                move |c| {
                    ran.store(true, Ordering::SeqCst);
                    c.execute("INSERT INTO kv VALUES (5, 'late')", [])?;
                    Ok(())
                },
            )
            .await
        })
    };
    // Real time must pass for the deadline: the writer is held meanwhile.
    tokio::time::sleep(Duration::from_millis(120)).await;
    gate.open();
    holder.await.unwrap().unwrap();
    let e = late.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            litebridge::Error::Timeout {
                stage: TimeoutStage::Queued,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "an expired request was started"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_caller_does_not_leave_a_connection_busy() {
    let (_dir, db) = open_kv(DbConfig::builder().heavy_readers(1)).await;
    let heavy = QueryOptions {
        lane: Lane::Heavy,
        timeout: Some(Duration::from_secs(120)),
        ..QueryOptions::default()
    };
    // The caller gives up (drops its future) long before the query's deadline.
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        db.query_with(ENDLESS, (), heavy),
    )
    .await;
    assert!(r.is_err());
    // With one heavy connection, this only runs if the endless one was interrupted.
    let started = Instant::now();
    db.query_with("SELECT 1", (), heavy).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // A dropped write that had not started is never run.
    let gate = Gate::default();
    let holder = hold_writer(&db, &gate).await;
    let dropped = {
        let db = db.clone();
        tokio::spawn(async move { insert(&db, 9).await })
    };
    common::eventually(Duration::from_secs(5), || db.stats().write_queue == 1).await;
    dropped.abort();
    let _ = dropped.await;
    gate.open();
    holder.await.unwrap().unwrap();
    insert(&db, 10).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k = 9").await, 0);
    let _ = params![1];
}

/// A write running for a caller that went away (a hung-up HTTP client, an
/// MCP cancel) is interrupted, not left holding the writer until its
/// deadline or `max_write_hold`; none of it commits. Statement and batch
/// alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_write_whose_caller_went_away_is_interrupted() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    let endless_insert = "INSERT INTO kv(k, v) \
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, 'v' FROM c";
    let long = WriteOptions {
        timeout: Some(Duration::from_secs(120)),
        ..WriteOptions::default()
    };
    for shape in ["statement", "batch"] {
        let gone = async {
            match shape {
                "statement" => db.execute_with(endless_insert, (), long).await.map(drop),
                _ => db
                    .batch(
                        vec![
                            Statement::new("DELETE FROM kv", ()),
                            Statement::new(endless_insert, ()),
                        ],
                        long,
                    )
                    .await
                    .map(drop),
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(200), gone)
                .await
                .is_err()
        );
        // Without the interrupt this waits for the writer's hold (10 s).
        let started = Instant::now();
        insert(&db, -1).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{shape}: the next write waited {:?}",
            started.elapsed()
        );
        assert_eq!(count(&db, "SELECT count(*) FROM kv WHERE k > 0").await, 0);
        db.execute("DELETE FROM kv", ()).await.unwrap();
    }
}

/// A statement whose time goes into one step of SQLite (one long function
/// call) is never seen by the progress handler; ending past its deadline it
/// must still not commit, and the rest of its batch must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_ends_past_its_deadline_inside_one_step_does_not_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = litebridge::Database::open(dir.path().join("d.db"), litebridge::DbConfig::default())
        .await
        .unwrap();
    db.execute("CREATE TABLE x(v)", ()).await.unwrap();
    let slow = db.execute_with(
        "INSERT INTO x SELECT printf('%.*c', 2000000, 'a') LIKE '%' || printf('%.*c', 900, 'a') || 'b'",
        (),
        litebridge::WriteOptions {
            timeout: Some(std::time::Duration::from_millis(200)),
            ..Default::default()
        },
    );
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        db.execute("INSERT INTO x VALUES ('innocent')", ()).await
    };
    let (slow, other) = tokio::join!(slow, other);
    let e = slow.unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::Timeout, "{e}");
    other.unwrap();
    let rows = db.query("SELECT v FROM x", ()).await.unwrap();
    assert_eq!(rows.rows, vec![vec![litebridge::Value::from("innocent")]]);
    db.close().await;
}

/// One row of many expensive columns is one stretch of SQLite with no
/// progress check in it: the query cannot be stopped at its deadline, but it
/// is not answered as if it had been on time either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_ends_past_its_deadline_in_one_step_is_a_timeout() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    db.execute("CREATE TABLE b(v TEXT)", ()).await.unwrap();
    db.execute("INSERT INTO b VALUES (printf('%.*c', 4000000, 'a'))", ())
        .await
        .unwrap();
    let columns = vec!["length(v)"; 100].join(", ");
    let sql = format!("SELECT {columns} FROM b");
    for lane in [Lane::Read, Lane::Heavy] {
        let started = Instant::now();
        let r = db
            .query_with(
                &sql,
                (),
                QueryOptions {
                    timeout: Some(Duration::from_millis(20)),
                    lane,
                    ..QueryOptions::default()
                },
            )
            .await;
        let e = r.expect_err("answered past its deadline");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
    // Within its deadline the same query answers.
    let r = db.query(&sql, ()).await.unwrap();
    assert_eq!(r.rows[0].len(), 100);
}

/// `n` copies of `term` summed as a balanced tree (a left-deep sum of
/// thousands of terms passes SQLite's expression depth limit).
fn balanced_sum(term: &str, n: usize) -> String {
    if n == 1 {
        return term.to_owned();
    }
    format!(
        "({} + {})",
        balanced_sum(term, n / 2),
        balanced_sum(term, n - n / 2)
    )
}

/// How many `length(hex(b))` over the 4 MB in `big` make `work` of one step here.
async fn terms_for(db: &litebridge::Database, work: Duration) -> usize {
    let probe = format!("SELECT {} FROM big", balanced_sum("length(hex(b))", 10));
    let started = Instant::now();
    db.query(&probe, ()).await.unwrap();
    let per_term = started.elapsed() / 10;
    let n = work.as_nanos() / per_term.as_nanos().max(1);
    usize::try_from(n).unwrap_or(usize::MAX).clamp(50, 5_000)
}

/// One step of SQLite that makes large values (here a sum of thousands of
/// `length(hex(b))` over 4 MB, ~30 s of work in one row) is stopped near
/// its deadline: the allocator asks whether the operation must stop every
/// megabyte it hands out, where the progress handler is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_long_step_that_makes_large_values_is_stopped_at_its_deadline() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    db.execute("CREATE TABLE big(b)", ()).await.unwrap();
    db.execute("INSERT INTO big VALUES (zeroblob(4000000))", ())
        .await
        .unwrap();
    let terms = terms_for(&db, Duration::from_secs(30)).await;
    let expensive = balanced_sum("length(hex(b))", terms);
    let read = format!("SELECT {expensive} FROM big");
    for lane in [Lane::Read, Lane::Heavy] {
        let started = Instant::now();
        let e = db
            .query_with(
                &read,
                (),
                QueryOptions {
                    timeout: Some(Duration::from_millis(200)),
                    lane,
                    ..QueryOptions::default()
                },
            )
            .await
            .expect_err("a step of ~30 s answered within 200 ms");
        let took = started.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{lane:?}: {e}");
        assert!(
            took < Duration::from_secs(5),
            "{lane:?}: stopped after {took:?}"
        );
    }
    // A write: stopped too, nothing of it committed, its batch commits.
    db.execute("CREATE TABLE x(v)", ()).await.unwrap();
    let slow = db.execute_with(
        format!("INSERT INTO x SELECT {expensive} FROM big"),
        (),
        WriteOptions {
            timeout: Some(Duration::from_millis(200)),
            ..WriteOptions::default()
        },
    );
    let other = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        db.execute("INSERT INTO x VALUES ('innocent')", ()).await
    };
    let started = Instant::now();
    let (slow, other) = tokio::join!(slow, other);
    let e = slow.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    other.unwrap();
    let rows = db.query("SELECT v FROM x", ()).await.unwrap();
    assert_eq!(rows.rows, vec![vec![litebridge::Value::from("innocent")]]);
    db.close().await;
}

/// A call that walks a large value to return small ones (`json_extract`
/// with a hundred paths to the end of a JSONB document of ~1 MB, in hundreds of
/// columns: seconds of work in one step) is stopped near its deadline too:
/// its small allocations are counted towards the allocator's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_long_step_of_small_answers_from_a_large_document_is_stopped() {
    let (_dir, db) = open_kv(DbConfig::builder()).await;
    let n = 150_000;
    let doc = format!(
        "[{}]",
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let paths = (0..100)
        .map(|i| format!("'$[{}]'", n - 1 - i))
        .collect::<Vec<_>>()
        .join(", ");
    // The document as JSONB, which SQLite walks without parsing it again.
    let doc = db
        .query("SELECT jsonb(?1)", [litebridge::Value::from(doc.as_str())])
        .await
        .unwrap()
        .rows[0][0]
        .clone();
    let call = format!("json_extract(?1, {paths})");
    // Calibrate: one call, then enough columns for ~30 s.
    let started = Instant::now();
    db.query(&format!("SELECT {call}"), [doc.clone()])
        .await
        .unwrap();
    let per_call = started.elapsed();
    let columns = (Duration::from_secs(30).as_nanos() / per_call.as_nanos().max(1)) as usize;
    let columns = columns.clamp(10, 1_900);
    // Each column a distinct expression, so that SQLite does not compute one
    // and reuse it.
    let sql = format!(
        "SELECT {}",
        (0..columns)
            .map(|i| format!("json_extract(?1, {paths}, '$[{i}]')"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for lane in [Lane::Read, Lane::Heavy] {
        let started = Instant::now();
        let e = db
            .query_with(
                &sql,
                [doc.clone()],
                QueryOptions {
                    timeout: Some(Duration::from_millis(200)),
                    lane,
                    ..QueryOptions::default()
                },
            )
            .await
            .expect_err("seconds of work answered within 200 ms");
        let took = started.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{lane:?}: {e}");
        assert!(
            took < Duration::from_secs(5),
            "{lane:?}: stopped after {took:?} ({columns} columns of {per_call:?})"
        );
    }
}

/// Queries stopped at their deadlines at many points while their rows are
/// built and read (texts whose lengths are multiples of 8, which SQLite may
/// reallocate to terminate when they are read; a refused reallocation there
/// would make rusqlite panic, which `heap::lenient` rules out): every
/// outcome is an answer, and both lanes are whole afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_stopped_while_their_rows_are_read_leave_the_lanes_whole() {
    let (_dir, db) = open_kv(DbConfig::builder().readers(2).heavy_readers(1)).await;
    db.execute("CREATE TABLE docs(body TEXT)", ())
        .await
        .unwrap();
    // Texts whose lengths are multiples of 8 and too large for lookaside,
    // so SQLite cannot terminate them in place.
    db.execute(
        "INSERT INTO docs SELECT printf('%.*c', 8 * (1000 + value % 200), 'q') \
         FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c LIMIT 3000) SELECT value FROM c)",
        (),
    )
    .await
    .unwrap();
    for lane in [Lane::Read, Lane::Heavy] {
        for timeout_ms in [5, 10, 20, 30, 40, 60] {
            for _ in 0..4 {
                let r = db
                    .query_with(
                        "SELECT replace(body, 'q', 'r'), substr(body, 2) FROM docs",
                        (),
                        QueryOptions {
                            timeout: Some(Duration::from_millis(timeout_ms)),
                            lane,
                            ..QueryOptions::default()
                        },
                    )
                    .await;
                if let Err(e) = r {
                    assert!(
                        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::TooLarge),
                        "{lane:?}: {e}"
                    );
                }
            }
        }
    }
    // Every connection of both lanes still answers.
    let (a, b, c) = tokio::join!(
        db.query("SELECT count(*) FROM docs", ()),
        db.query("SELECT count(*) FROM docs", ()),
        db.query("SELECT count(*) FROM docs", ()),
    );
    for r in [a, b, c] {
        r.unwrap();
    }
    for _ in 0..2 {
        db.query_with(
            "SELECT count(*) FROM docs",
            (),
            QueryOptions {
                lane: Lane::Heavy,
                ..QueryOptions::default()
            },
        )
        .await
        .unwrap();
    }
}

/// After `interrupt`, every request is refused as `unavailable`, short ones
/// too (which never meet the progress handler): a one-row write, a batch,
/// a closure and reads on both lanes; nothing more is written (a Rust
/// user's review: all of them ran and committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_interrupt_every_request_is_refused_and_nothing_is_written() {
    let (dir, db) = open_kv(common::config()).await;
    insert(&db, 1).await.unwrap();
    db.interrupt();
    let refused = |e: litebridge::Error| {
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains("shutting down"), "{e}");
    };
    refused(insert(&db, 2).await.unwrap_err());
    refused(
        db.batch(
            vec![Statement::new("INSERT INTO kv VALUES (3, 'x')", ())],
            WriteOptions::default(),
        )
        .await
        .unwrap_err(),
    );
    refused(
        db.write(|c| Ok(c.execute("INSERT INTO kv VALUES (4, 'x')", [])?))
            .await
            .unwrap_err(),
    );
    refused(db.query("SELECT 1", ()).await.unwrap_err());
    let heavy = QueryOptions {
        lane: Lane::Heavy,
        ..QueryOptions::default()
    };
    refused(db.query_with("SELECT 1", (), heavy).await.unwrap_err());
    refused(
        db.backup_to(dir.path().join("after.db"), |_| {})
            .await
            .unwrap_err(),
    );
    assert!(!dir.path().join("after.db").exists());
    db.close().await;
    let db = litebridge::Database::open(dir.path().join("test.db"), DbConfig::default())
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
    db.close().await;
}

/// Starts a closure write that signals once it runs, waits for `gate`, then
/// runs `sql` (one short statement); returns once the closure runs.
async fn closure_waiting(
    db: &Database,
    gate: &Gate,
    sql: &'static str,
) -> tokio::task::JoinHandle<litebridge::Result<usize>> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (g, d) = (gate.clone(), db.clone());
    let h = tokio::spawn(async move {
        d.write(move |c| {
            let _ = tx.send(());
            g.wait();
            Ok(c.execute(sql, [])?)
        })
        .await
    });
    tokio::task::spawn_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    h
}

async fn committed(dir: &tempfile::TempDir, sql: &str) -> i64 {
    let db = Database::open(dir.path().join("test.db"), DbConfig::default())
        .await
        .unwrap();
    let n = count(&db, sql).await;
    db.close().await;
    n
}

/// Review 147. interrupt() promises: "Interrupts every statement running ... and every
/// one started afterwards, for good. Whatever was not committed is not
/// (each request fails whole with `unavailable`)". A closure that was in
/// the writer (between statements) when interrupt() returned runs its next
/// short statement and commits, answered Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_under_way_at_interrupt_commits_nothing() {
    let (dir, db) = open_kv(common::config()).await;
    let gate = Gate::default();
    let h = closure_waiting(&db, &gate, "INSERT INTO kv VALUES (100, 'after interrupt')").await;
    db.interrupt();
    gate.open();
    let r = h.await.unwrap();
    db.close().await;
    let n = committed(&dir, "SELECT count(*) FROM kv WHERE k = 100").await;
    assert!(
        r.is_err() && n == 0,
        "a statement started after interrupt() returned was committed and acknowledged: {r:?}, rows {n}"
    );
}

/// Writes queued before interrupt(), in the batch the writer had taken,
/// behind a request it was running: all of them run after interrupt() and
/// commit (the halt flag is read once per batch, before it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_the_batch_under_way_at_interrupt_commit_nothing() {
    let (dir, db) = open_kv(common::config()).await;
    let first = Gate::default();
    let blocker = hold_writer(&db, &first).await;
    // Queued behind the blocker: a closure held by a second gate, then 20 inserts.
    let second = Gate::default();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (g, d) = (second.clone(), db.clone());
    let held = tokio::spawn(async move {
        d.write(move |_| {
            let _ = tx.send(());
            g.wait();
            Ok(())
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let inserts: Vec<_> = (1..=20)
        .map(|k| {
            let d = db.clone();
            tokio::spawn(async move { insert(&d, k).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.open();
    blocker.await.unwrap().unwrap();
    // The second batch (closure + 20 inserts) is running: interrupt now.
    tokio::task::spawn_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    db.interrupt();
    let interrupted = Instant::now();
    second.open();
    let held = held.await.unwrap();
    let mut ok = 0;
    for i in inserts {
        if i.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    let took = interrupted.elapsed();
    db.close().await;
    let n = committed(&dir, "SELECT count(*) FROM kv").await;
    assert!(
        ok == 0 && n == 0 && held.is_err(),
        "after interrupt(): {ok} queued writes acknowledged, {n} rows committed, closure {held:?} ({took:?})"
    );
}

/// A checkpoint asked after interrupt() is not refused (the halt check is
/// skipped when the batch is empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_asked_after_interrupt_is_refused() {
    let (_dir, db) = open_kv(common::config()).await;
    insert(&db, 1).await.unwrap();
    db.interrupt();
    let r = db.checkpoint(CheckpointMode::Truncate).await;
    db.close().await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Unavailable),
        "checkpoint after interrupt: {r:?}"
    );
}

/// A check asked after interrupt() is refused, and one under way stops
/// (review 147: `check` went on for as long as the file took, holding up
/// a shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_stops_at_interrupt() {
    let (_dir, db) = open_kv(common::config()).await;
    db.write(|c| {
        c.execute_batch(
            "CREATE TABLE big(a INTEGER, b TEXT);
             CREATE INDEX big_a ON big(a); CREATE INDEX big_b ON big(b);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400000)
             INSERT INTO big SELECT i * 7919 % 400000, hex(i * 104729) FROM n;",
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let whole = Instant::now();
    let report = db.check(litebridge::CheckDepth::Full).await.unwrap();
    let whole = whole.elapsed();
    assert!(report.ok, "{report:?}");
    let (r, took) = interrupted_check(&db, whole / 4).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Unavailable),
        "a check under way at interrupt() (a whole check takes {whole:?}): {r:?}"
    );
    assert!(
        took < whole / 2,
        "the check took {took:?} to stop (a whole check takes {whole:?})"
    );
    let r = db.check(litebridge::CheckDepth::Quick).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Unavailable),
        "a check after interrupt(): {r:?}"
    );
    db.close().await;
}

/// A check and a backup's verification stop at interrupt() also when each
/// row takes one long step, which the progress handler never sees (review
/// 149: a generated column computing 40 MB per row held both for seconds),
/// and when that step is straight-line code the interrupt does not reach
/// either (review 151: forty such terms in one row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_of_rows_each_one_long_step_stops_at_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.db");
    // Before this process's first SQLite connection, which the raw one
    // below could be: SQLite takes its allocator once, and the other tests
    // here need litebridge's (it stops long steps).
    litebridge::install_memory_budgets();
    {
        // The column is made cheap, filled, then made costly behind
        // SQLite's back (as a file from elsewhere could be).
        let c = rusqlite::Connection::open(&path).unwrap();
        let term = "length(hex(zeroblob(0 * n)))";
        let terms = vec![term; 40].join(" + ");
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(n INTEGER,
                 g INTEGER NOT NULL GENERATED ALWAYS AS ({terms}) VIRTUAL);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 4)
             INSERT INTO t(n) SELECT 20000000 FROM k;
             PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = replace(sql, 'zeroblob(0 * n)', 'zeroblob(n)')
                 WHERE name = 't';
             PRAGMA writable_schema = OFF;"
        ))
        .unwrap();
    }
    let config = common::config().quick_check_on_open(false).build().unwrap();
    let db = Database::open(&path, config).await.unwrap();
    let checking = {
        let db = db.clone();
        tokio::spawn(async move { db.check(litebridge::CheckDepth::Quick).await })
    };
    let backing_up = {
        let db = db.clone();
        let dest = dir.path().join("copy.db");
        tokio::spawn(async move { db.backup_to(dest, |_| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.interrupt();
    let interrupted = Instant::now();
    let checked = checking.await.unwrap();
    let backed_up = backing_up.await.unwrap();
    let took = interrupted.elapsed();
    for r in [checked.map(|_| ()), backed_up.map(|_| ())] {
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::Unavailable),
            "{r:?}"
        );
    }
    assert!(
        took < Duration::from_millis(600),
        "the check and the backup took {took:?} to stop after interrupt() (each row is one long step)"
    );
    assert!(!dir.path().join("copy.db").exists());
    db.close().await;
}

/// A full check's foreign-key phase stops at interrupt() too (review 149:
/// it ran to its end and answered a report saying the file was fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_checks_foreign_key_phase_stops_at_interrupt() {
    let (_dir, db) = open_kv(common::config()).await;
    let columns: Vec<String> = (0..30)
        .map(|i| format!("f{i} INTEGER REFERENCES p(id)"))
        .collect();
    let values: Vec<String> = (0..30).map(|i| format!("(i * {}) % 1000", i + 1)).collect();
    let sql = format!(
        "CREATE TABLE p(id INTEGER PRIMARY KEY);
         WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < 999)
         INSERT INTO p SELECT i FROM k;
         CREATE TABLE c({});
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 100000)
         INSERT INTO c SELECT {} FROM k;",
        columns.join(", "),
        values.join(", ")
    );
    db.write(move |c| {
        c.execute_batch(&sql)?;
        Ok(())
    })
    .await
    .unwrap();
    let quick = Instant::now();
    db.check(litebridge::CheckDepth::Quick).await.unwrap();
    let quick = quick.elapsed();
    let whole = Instant::now();
    let report = db.check(litebridge::CheckDepth::Full).await.unwrap();
    let whole = whole.elapsed();
    assert!(report.ok, "{report:?}");
    // Past the integrity pass (about a quick check's time), in the
    // foreign keys' (the rest).
    let at = quick * 2 + (whole.saturating_sub(quick * 2)) / 3;
    let (r, took) = interrupted_check(&db, at).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Unavailable),
        "a full check interrupted at {at:?} (quick {quick:?}, whole {whole:?}): {r:?}"
    );
    assert!(
        took < Duration::from_millis(500) || took < (whole - at) / 2,
        "took {took:?} to stop (whole {whole:?}, interrupted at {at:?})"
    );
    db.close().await;
}

/// A full check of `db`, interrupted `after` it started: its answer, and
/// how long it took to come after the interrupt.
async fn interrupted_check(
    db: &Database,
    after: Duration,
) -> (litebridge::Result<litebridge::CheckReport>, Duration) {
    let checking = {
        let db = db.clone();
        tokio::spawn(async move { db.check(litebridge::CheckDepth::Full).await })
    };
    tokio::time::sleep(after).await;
    db.interrupt();
    let interrupted = Instant::now();
    let r = checking.await.unwrap();
    (r, interrupted.elapsed())
}
