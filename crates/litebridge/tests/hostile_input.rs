//! Hostile and malformed input: every case gets a clear error (or a correct
//! result), never a panic, and never damages the data or the engine.

mod common;

use common::{config, count, insert, open_kv};
use litebridge::{ErrorKind, Params, QueryOptions, Value, params};

#[tokio::test]
async fn stacked_statements_are_refused_and_nothing_runs() {
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 1).await.unwrap();
    let e = db
        .execute("INSERT INTO kv VALUES (2, 'x'); DROP TABLE kv", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = db.query("SELECT 1; DELETE FROM kv", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

#[tokio::test]
async fn injection_through_parameters_is_just_data() {
    let (_dir, db) = open_kv(config()).await;
    let evil = "x'); DROP TABLE kv; --";
    db.execute("INSERT INTO kv VALUES (1, ?1)", params![evil])
        .await
        .unwrap();
    let rows = db.query("SELECT v FROM kv WHERE k = 1", ()).await.unwrap();
    assert_eq!(rows.rows[0][0], Value::from(evil));
    let named = Params::Named(vec![("k); DROP TABLE kv; --".into(), Value::Integer(1))]);
    let e = db
        .query("SELECT v FROM kv WHERE k = :k", named)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

/// Two names that bind one parameter (`a` and `:a`, or `:a` twice): which
/// value it took would depend on their order. Refused, naming the second.
/// A NaN is refused naming its parameter: SQLite would store NULL in its
/// place, and a value never comes back changed (a Rust user's review).
#[tokio::test]
async fn a_nan_is_refused_naming_its_parameter() {
    let (_dir, db) = open_kv(config()).await;
    let e = db
        .execute("INSERT INTO kv VALUES (1, ?1)", params![f64::NAN])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(
        e.to_string().contains("params[0]") && e.to_string().contains("NaN"),
        "{e}"
    );
    let named = Params::Named(vec![(":v".into(), Value::Real(f64::NAN))]);
    let e = db.query("SELECT :v", named).await.unwrap_err();
    assert!(e.to_string().contains(":v"), "{e}");
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 0);
    let e = db.query("SELECT ?1", ()).await.unwrap_err();
    assert!(
        e.to_string().contains("takes 1 parameter, none were given"),
        "{e}"
    );
}

#[tokio::test]
async fn two_names_for_one_parameter_are_refused() {
    let (_dir, db) = open_kv(config()).await;
    for names in [["a", ":a"], [":a", ":a"], [":a", "a"]] {
        let named = Params::Named(
            names
                .iter()
                .zip([1, 2])
                .map(|(n, v)| ((*n).to_owned(), Value::Integer(v)))
                .collect(),
        );
        let e = db
            .execute("INSERT INTO kv VALUES (:a, 'x')", named)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{names:?}: {e}");
        assert!(e.to_string().contains(names[1]), "{e}");
    }
    // Two parameters of their own, `:a` and `@a`, are two.
    let named = Params::Named(vec![
        (":a".into(), Value::Integer(1)),
        ("@a".into(), Value::from("y")),
    ]);
    db.execute("INSERT INTO kv VALUES (:a, @a)", named)
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

#[tokio::test]
async fn nul_bytes_huge_and_deep_sql_get_errors_not_panics() {
    let (_dir, db) = open_kv(config()).await;
    let e = db.query("SELECT 1\0; DROP TABLE kv", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("NUL byte at offset 8"), "{e}");
    let e = db
        .execute("DELETE FROM kv\0 WHERE k = 1", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let e = db.query(&deep, ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Sql, "{e}");
    let long = format!("SELECT 1{}", " + 1".repeat(250_000));
    match db.query(&long, ()).await {
        Ok(r) => assert_eq!(r.rows[0][0], Value::Integer(250_001)),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Sql, "{e}"),
    }
    let many = format!("SELECT {}", vec!["?"; 40_000].join(", "));
    let e = db
        .query(&many, Params::Positional(vec![Value::Integer(1); 40_000]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Sql, "{e}");
    // The engine is fine afterwards.
    insert(&db, 1).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 1);
}

#[tokio::test]
async fn large_blobs_and_invalid_utf8_round_trip_safely() {
    let (_dir, db) = open_kv(config()).await;
    db.execute("CREATE TABLE b(id INTEGER PRIMARY KEY, data BLOB)", ())
        .await
        .unwrap();
    let blob: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    db.execute("INSERT INTO b VALUES (1, ?1)", params![blob.clone()])
        .await
        .unwrap();
    let rows = db
        .query("SELECT data FROM b WHERE id = 1", ())
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], Value::Blob(blob));
    let rows = db
        .query("SELECT CAST(x'ff00fe41' AS TEXT)", ())
        .await
        .unwrap();
    // Not UTF-8: its bytes, unchanged, as a blob (never U+FFFD).
    assert_eq!(rows.rows[0][0], Value::Blob(vec![0xff, 0x00, 0xfe, 0x41]));
}

#[tokio::test]
async fn statements_that_cannot_run_in_the_group_transaction_fail_alone() {
    let (_dir, db) = open_kv(config()).await;
    insert(&db, 1).await.unwrap();
    let e = db.execute("VACUUM", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    let e = db
        .query("SELECT load_extension('/tmp/evil.so')", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    insert(&db, 2).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM kv").await, 2);
}

#[tokio::test]
async fn an_enormous_result_is_cut_at_max_rows_without_reading_it_all() {
    let (_dir, db) = open_kv(config()).await;
    let opts = QueryOptions {
        max_rows: Some(10),
        ..QueryOptions::default()
    };
    let started = std::time::Instant::now();
    let rows = db
        .query_with(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
            (),
            opts,
        )
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 10);
    assert!(rows.truncated);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
