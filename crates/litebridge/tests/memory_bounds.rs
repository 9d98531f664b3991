//! One request cannot hold gigabytes: values SQLite builds are capped by its
//! length limit, results by `db.max_result_bytes`, and what SQLite holds at
//! once for one request (a row of many values, each under the limit) by
//! `db.max_request_memory`, all refused with `too_large` before the memory is
//! taken. A process of its own, so its
//! peak resident size says what these requests cost.

mod common;

use common::{config, peak_rss_mb};
use litebridge::{Database, ErrorKind, Lane, QueryOptions};

/// One row of `n` values of 7 MB each, all held at once by the subquery,
/// summed to one small number.
fn wide_row(n: usize) -> String {
    let columns: Vec<String> = (0..n)
        .map(|i| format!("randomblob(7000000) c{i}"))
        .collect();
    let sum: Vec<String> = (0..n).map(|i| format!("length(c{i})")).collect();
    format!(
        "SELECT {} FROM (SELECT {} LIMIT 1)",
        sum.join(" + "),
        columns.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_request_holds_gigabytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path().join("m.db"),
        config()
            .max_result_bytes(8 * 1024 * 1024)
            .max_request_memory(96 * 1024 * 1024)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(litebridge::install_memory_budgets(), "budgets enforced");
    let before = peak_rss_mb();
    let wide = wide_row(120);
    // Empty values counted 0 bytes, so a long result of them passed any
    // limit (review 246: 9 GB for one read key's query of `x''`).
    let empties = |value: &str, rows: usize| {
        format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {rows}) SELECT {} FROM c",
            vec![value; 100].join(", ")
        )
    };
    let (empty_blobs, empty_texts) = (empties("x''", 10_000), empties("''", 30_000));
    // Text that is not UTF-8 goes out as a blob, and counts as one (review 249).
    let not_utf8 = empties("CAST(x'ff' AS TEXT)", 2_000);
    for (sql, lane) in [
        (
            "SELECT length(a) + length(b) + length(c) FROM \
             (SELECT randomblob(6e8) a, randomblob(6e8) b, randomblob(6e8) c)",
            Lane::Read,
        ),
        ("SELECT printf('%.*c', 999999999, 'x')", Lane::Read),
        (
            "SELECT length(printf('%.*c', 999999999, 'x') || printf('%.*c', 999999999, 'y'))",
            Lane::Heavy,
        ),
        ("SELECT zeroblob(100000000)", Lane::Heavy),
        // Many values each under the limit: the result's total is capped.
        (
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) \
             SELECT randomblob(1000000) FROM c",
            Lane::Read,
        ),
        // Many values each under the limit held at once in one step (a
        // subquery's row): SQLite's memory for the request is capped.
        (wide.as_str(), Lane::Read),
        (wide.as_str(), Lane::Heavy),
        (empty_blobs.as_str(), Lane::Read),
        (empty_texts.as_str(), Lane::Heavy),
        (not_utf8.as_str(), Lane::Read),
        // Control characters are six bytes each in the reply (review 248).
        ("SELECT printf('%.*c', 2000000, char(1))", Lane::Read),
    ] {
        let e = db
            .query_with(
                sql,
                (),
                QueryOptions {
                    lane,
                    ..QueryOptions::default()
                },
            )
            .await
            .map(|r| format!("{} rows", r.rows.len()))
            .expect_err(&sql[..sql.len().min(120)]);
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{sql}: {e}");
    }
    // Temporary b-trees (DISTINCT over big values) live in files, not memory.
    let distinct = db
        .query(
            "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300) \
             SELECT DISTINCT x || hex(zeroblob(500000)) FROM c)",
            (),
        )
        .await
        .unwrap();
    assert_eq!(distinct.rows[0][0], litebridge::Value::Integer(300));
    let e = db
        .execute("CREATE TABLE big AS SELECT randomblob(6e8) AS b", ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    // A write holding as much fails alone: the others in its batch commit.
    db.execute("CREATE TABLE t(x)", ()).await.unwrap();
    let wide_insert = format!("INSERT INTO t {wide}");
    let (a, b, c) = tokio::join!(
        db.execute("INSERT INTO t VALUES (1)", ()),
        db.execute(wide_insert, ()),
        db.execute("INSERT INTO t VALUES (2)", ()),
    );
    a.unwrap();
    c.unwrap();
    let e = b.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("db.max_request_memory"), "{e}");
    let rows = db.query("SELECT x FROM t ORDER BY x", ()).await.unwrap();
    assert_eq!(rows.rows.len(), 2);
    // litebridge's own functions count what they hold outside SQLite: trim's
    // table of a set of 600,000 distinct characters (29 MB) is over a
    // 16 MiB budget.
    let small = Database::open(
        dir.path().join("small.db"),
        config()
            .cache_size(-2000)
            .max_result_bytes(8 * 1024 * 1024)
            .max_request_memory(16 * 1024 * 1024)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let e = small
        .query(
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < 600000) \
             SELECT trim('x', group_concat(unhex(printf('F8%02X%02X%02X%02X', 128 + (i >> 18) % 64, \
             128 + (i >> 12) % 64, 128 + (i >> 6) % 64, 128 + i % 64)), '')) FROM c",
            (),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.to_string().contains("db.max_request_memory"), "{e}");
    small.close().await;
    let grew = peak_rss_mb().saturating_sub(before);
    assert!(grew < 200, "the peak resident size grew by {grew} MB");
    // Within the limits everything still works.
    let ok = db
        .query("SELECT length(randomblob(1000000))", ())
        .await
        .unwrap();
    assert_eq!(ok.rows[0][0], litebridge::Value::Integer(1_000_000));
    db.close().await;
}
