//! A read that starts after a write was acknowledged sees that write, on
//! whichever reader connection it lands.

mod common;

use common::{config, insert, open_kv};
use litebridge::{ErrorKind, Lane, QueryOptions, Value, params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_sees_every_acknowledged_write() {
    let (_dir, db) = open_kv(config().readers(4)).await;
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let k = w * 10_000 + i;
                insert(&db, k).await.unwrap();
                let lane = if i % 10 == 0 { Lane::Heavy } else { Lane::Read };
                let rows = db
                    .query_with(
                        "SELECT v FROM kv WHERE k = ?1",
                        params![k],
                        QueryOptions {
                            lane,
                            ..QueryOptions::default()
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    rows.rows,
                    vec![vec![Value::Text(format!("value-{k}"))]],
                    "key {k}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn queries_refuse_writes_and_bind_parameters_strictly() {
    let (_dir, db) = open_kv(config()).await;
    let e = db
        .query("INSERT INTO kv VALUES (1, 'x')", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert!(e.to_string().contains("use execute"), "{e}");

    insert(&db, 1).await.unwrap();
    let named = db
        .query(
            "SELECT v FROM kv WHERE k = :k",
            litebridge::Params::Named(vec![("k".into(), Value::Integer(1))]),
        )
        .await
        .unwrap();
    assert_eq!(named.rows.len(), 1);
    let e = db
        .query(
            "SELECT v FROM kv WHERE k = :k",
            litebridge::Params::Named(vec![("key".into(), Value::Integer(1))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("`key`"), "{e}");
    let e = db.query("SELECT ?1, ?2", params![1]).await.unwrap_err();
    assert!(
        e.to_string().contains("takes 2 parameters, 1 was given"),
        "{e}"
    );
    let e = db.query("SELECT 1; SELECT 2", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = db.query("   ", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

#[tokio::test]
async fn max_rows_truncates_and_says_so() {
    let (_dir, db) = open_kv(config()).await;
    for k in 0..10 {
        insert(&db, k).await.unwrap();
    }
    let opts = QueryOptions {
        max_rows: Some(3),
        ..QueryOptions::default()
    };
    let rows = db
        .query_with("SELECT k FROM kv ORDER BY k", (), opts)
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 3);
    assert!(rows.truncated);
    assert_eq!(rows.columns, vec!["k".to_owned()]);
    let all = db.query("SELECT k FROM kv", ()).await.unwrap();
    assert!(!all.truncated);
    assert_eq!(all.rows.len(), 10);
}

#[tokio::test]
async fn nothing_a_caller_runs_on_a_shared_connection_leaks_to_the_next() {
    let (_dir, db) = open_kv(config().readers(1)).await;
    // Pragma reads work through query.
    let mode = db.query("PRAGMA journal_mode", ()).await.unwrap();
    assert_eq!(mode.rows[0][0], Value::from("wal"));
    let info = db.query("PRAGMA table_info(kv)", ()).await.unwrap();
    assert_eq!(info.rows.len(), 2);
    // Assignments and temp objects on a read connection are refused.
    for sql in [
        "PRAGMA cache_size = 1",
        "/* sneaky */ PRAGMA query_only = 0",
        "CREATE TEMP TABLE scratch(x)",
        "CREATE TEMP VIEW v AS SELECT 1",
    ] {
        let e = db.query(sql, ()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    // Engine pragmas cannot be changed through the writer either.
    for sql in [
        "PRAGMA foreign_keys = OFF",
        "PRAGMA synchronous = OFF",
        "PRAGMA busy_timeout = 0",
    ] {
        let e = db.execute(sql, ()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden, "{sql}: {e}");
    }
    let fk = db.query("PRAGMA foreign_keys", ()).await.unwrap();
    assert_eq!(fk.rows[0][0], Value::Integer(1));
    // A database-level setting stored in the file is fine.
    db.execute("PRAGMA user_version = 7", ()).await.unwrap();
    let v = db.query("PRAGMA user_version", ()).await.unwrap();
    assert_eq!(v.rows[0][0], Value::Integer(7));
}
