//! litebridge's linear FTS5 `snippet()` and `highlight()` answer exactly
//! what SQLite's own do, for any table (tokenizer, detail, column sizes,
//! contentless), query and arguments; one call over a document of hundreds
//! of thousands of matches takes milliseconds where SQLite's own took
//! minutes, and one whose match list alone would take seconds is refused.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use litebridge::{Database, DbConfig, Value};

/// A document: words and separators that make sentences ('.', ':'), runs
/// of white space and punctuation, or NULL.
fn document() -> impl Strategy<Value = Option<String>> {
    let word = prop::sample::select(vec!["a", "b", "c", "ab", "ba", "x", "abc"]);
    let gap = prop::sample::select(vec![" ", " ", " ", ". ", ": ", ",", "  ", "\n", ".", "\t:"]);
    prop::option::weighted(
        0.9,
        prop::collection::vec((word, gap), 0..40)
            .prop_map(|v| v.into_iter().map(|(w, g)| format!("{w}{g}")).collect()),
    )
}

/// An FTS5 query over the words above.
fn query() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec!["a", "b", "c", "ab", "x", "a*"]);
    prop_oneof![
        word.clone().prop_map(str::to_owned),
        (word.clone(), word.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
        (word.clone(), word.clone()).prop_map(|(a, b)| format!("{a} {b}")),
        (word.clone(), word.clone()).prop_map(|(a, b)| format!("\"{a} {b}\"")),
        (word.clone(), word.clone()).prop_map(|(a, b)| format!("NEAR({a} {b}, 2)")),
        (word.clone(), word.clone(), word).prop_map(|(a, b, c)| format!("{a} OR ({b} {c}) OR {a}")),
        (0..3usize, prop::sample::select(vec!["a", "b"])).prop_map(|(c, w)| format!("c{c} : {w}")),
    ]
}

/// A trigram query: three to five characters.
fn trigram_query() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "ab ", "a b", "b. ", "abc", "ba a", ": a", "b, ab", "xyz",
    ])
    .prop_map(|q| format!("\"{q}\""))
}

fn marker() -> impl Strategy<Value = Value> {
    prop::option::weighted(
        0.9,
        prop::sample::select(vec!["[", "]", "...", "", "<b>", "</b>", "…"]),
    )
    .prop_map(|s| s.map_or(Value::Null, |s| Value::Text(s.to_owned())))
}

#[derive(Debug, Clone)]
struct Case {
    trigram: bool,
    /// More options of the table (`detail`, `columnsize`, `content`).
    options: &'static str,
    columns: usize,
    rows: Vec<Vec<Option<String>>>,
    query: Option<String>,
    args: Vec<Value>,
}

fn case() -> impl Strategy<Value = Case> {
    let options = prop::sample::select(vec![
        "",
        "",
        ", detail=column",
        ", detail=none",
        ", columnsize=0",
        ", detail=none, columnsize=0",
        ", content=''",
        ", content='', columnsize=0",
    ]);
    (any::<bool>(), 1..=3usize, options).prop_flat_map(|(trigram, columns, options)| {
        let q = if trigram {
            trigram_query().boxed()
        } else {
            query().boxed()
        };
        (
            prop::collection::vec(prop::collection::vec(document(), columns), 1..4),
            prop::option::weighted(0.9, q),
            -2i64..=3,
            marker(),
            marker(),
            marker(),
            prop::sample::select(vec![-1i64, 0, 1, 2, 3, 4, 5, 7, 10, 16, 64, 65]),
        )
            .prop_map(move |(rows, query, col, open, close, ellipsis, tokens)| {
                let args = vec![
                    Value::Integer(col),
                    open,
                    close,
                    ellipsis,
                    Value::Integer(tokens),
                ];
                Case {
                    trigram,
                    options,
                    columns,
                    rows,
                    query,
                    args,
                }
            })
    })
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        other => panic!("{other:?}"),
    }
}

type Answers = Result<Vec<(i64, Option<String>)>, String>;

#[test]
fn our_snippet_and_highlight_answer_as_sqlites_own() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = rt
        .block_on(Database::open(&path, DbConfig::default()))
        .unwrap();
    // SQLite's own functions: a plain connection on the same file.
    let plain = rusqlite::Connection::open(&path).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::cell::Cell::new(0);
    runner
        .run(&case(), |c| {
            n.set(n.get() + 1);
            let table = format!("t{}", n.get());
            let cols: Vec<String> = (0..c.columns).map(|i| format!("c{i}")).collect();
            let tokenize = if c.trigram {
                ", tokenize='trigram'"
            } else {
                ""
            };
            let create = format!(
                "CREATE VIRTUAL TABLE {table} USING fts5({}{tokenize}{})",
                cols.join(", "),
                c.options
            );
            let insert = format!(
                "INSERT INTO {table} VALUES ({})",
                vec!["?"; c.columns].join(", ")
            );
            if c.options.contains("content=") {
                // Client SQL may not name content=: the application made it.
                plain.execute(&create, []).unwrap();
                // (A contentless table needs the rowid and refuses NULL.)
                let insert = format!(
                    "INSERT INTO {table}(rowid, {}) VALUES ({})",
                    cols.join(", "),
                    vec!["?"; c.columns + 1].join(", ")
                );
                for (k, row) in c.rows.iter().enumerate() {
                    let row = std::iter::once((k + 1).to_string())
                        .chain(row.iter().map(|d| d.clone().unwrap_or_default()));
                    plain
                        .execute(&insert, rusqlite::params_from_iter(row))
                        .unwrap();
                }
            } else {
                rt.block_on(db.execute(create, ())).unwrap();
                for row in &c.rows {
                    let values: Vec<Value> = row
                        .iter()
                        .map(|d| d.clone().map_or(Value::Null, Value::Text))
                        .collect();
                    rt.block_on(db.execute(insert.clone(), values)).unwrap();
                }
            }
            let filter = match c.query {
                Some(_) => format!(" WHERE {table} MATCH ?6"),
                None => String::new(),
            };
            let mut all = c.args.clone();
            all.extend(c.query.iter().map(|q| Value::Text(q.clone())));
            for call in [
                format!("snippet({table}, ?1, ?2, ?3, ?4, ?5)"),
                format!("highlight({table}, ?1, ?2, ?3) || coalesce(?4, ?5, '')"),
            ] {
                let sql = format!("SELECT rowid, {call} FROM {table}{filter} ORDER BY rowid");
                let theirs: Answers = (|| {
                    let mut stmt = plain.prepare(&sql)?;
                    let p: Vec<rusqlite::types::Value> = all.iter().map(to_sql).collect();
                    let rows = stmt.query_map(rusqlite::params_from_iter(p), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })()
                .map_err(|e| e.to_string());
                let ours: Answers = rt
                    .block_on(db.query(&sql, all.clone()))
                    .map(|r| {
                        r.rows
                            .into_iter()
                            .map(|row| match (&row[0], &row[1]) {
                                (Value::Integer(id), Value::Text(t)) => (*id, Some(t.clone())),
                                (Value::Integer(id), Value::Null) => (*id, None),
                                other => panic!("{other:?}"),
                            })
                            .collect()
                    })
                    .map_err(|e| e.to_string());
                match (&theirs, &ours) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{:?} {:?}", sql, all),
                    (Err(_), Err(_)) => {}
                    _ => prop_assert!(false, "SQLite: {theirs:?}\nours: {ours:?}\n{sql} {all:?}"),
                }
            }
            plain.execute(&format!("DROP TABLE {table}"), []).unwrap();
            Ok(())
        })
        .unwrap();
    drop(plain);
    rt.block_on(db.close());
}

/// SQLite's own scores every match against every other: a document of
/// 200,000 matching tokens is 4e10 steps, minutes in one call no deadline
/// interrupts. Ours is linear: the whole query takes well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snippet_over_a_document_of_many_matches_takes_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("m.db"), DbConfig::default())
        .await
        .unwrap();
    db.execute("CREATE VIRTUAL TABLE d USING fts5(body)", ())
        .await
        .unwrap();
    db.execute(
        "INSERT INTO d VALUES ('Start: ' || replace(printf('%.*c', 200000, 'a'), 'a', 'a b. ') || 'end')",
        (),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = db
        .query(
            "SELECT snippet(d, 0, '[', ']', '…', 8) FROM d WHERE d MATCH 'a OR b OR start'",
            (),
        )
        .await
        .unwrap();
    assert_eq!(
        r.rows[0][0],
        Value::Text("[Start]: [a] [b]. [a] [b]. [a] [b]. [a]…".into())
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    db.close().await;
}

/// FTS5 builds a row's match list in one step no deadline interrupts, in
/// time that grows as the square of the query's phrases times the row's
/// tokens (on `detail=none` it tokenizes the row once per phrase): a query
/// of 512 phrases over 8,000 tokens took 6 s, one of 32,768 over 200,000
/// tokens 10 s. snippet() and highlight() refuse such a call before it
/// starts, naming the phrases and tokens; the same query without them (the
/// match itself, counted) still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_list_that_would_take_seconds_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("w.db"), DbConfig::default())
        .await
        .unwrap();
    // 512 phrases, every one matching every token.
    let query = "WITH RECURSIVE r(s, n) AS (SELECT 'q', 0 UNION ALL \
                 SELECT '(' || s || ' OR ' || s || ')', n + 1 FROM r WHERE n < 9) \
                 SELECT s FROM r WHERE n = 9";
    for options in ["", ", detail=none", ", detail=column"] {
        db.execute(format!("CREATE VIRTUAL TABLE t USING fts5(a{options})"), ())
            .await
            .unwrap();
        db.execute(
            "INSERT INTO t VALUES (replace(printf('%.*c', 8191, 'x'), 'x', 'q '))",
            (),
        )
        .await
        .unwrap();
        let counted = db
            .query(
                &format!("SELECT count(*) FROM t WHERE t MATCH ({query})"),
                (),
            )
            .await
            .unwrap();
        assert_eq!(counted.rows[0][0], Value::Integer(1));
        for call in [
            "snippet(t, 0, '[', ']', '...', 8)",
            "highlight(t, 0, '[', ']')",
        ] {
            let started = std::time::Instant::now();
            let e = db
                .query(
                    &format!("SELECT length({call}) FROM t WHERE t MATCH ({query})"),
                    (),
                )
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains("a query of 512 phrases and a row of 8191 tokens is refused"),
                "{options} {call}: {text}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{options} {call}: {:?}",
                started.elapsed()
            );
        }
        db.execute("DROP TABLE t", ()).await.unwrap();
    }
    db.close().await;
}

/// SQLite's own highlight() copies its whole answer again for every match
/// it marks; ours builds it once: 200,000 marked matches in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn highlight_over_a_document_of_many_matches_is_linear() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("h.db"), DbConfig::default())
        .await
        .unwrap();
    db.execute("CREATE VIRTUAL TABLE d USING fts5(body)", ())
        .await
        .unwrap();
    db.execute(
        "INSERT INTO d VALUES (replace(printf('%.*c', 200000, 'a'), 'a', 'a b '))",
        (),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = db
        .query(
            "SELECT length(highlight(d, 0, '[', ']')), substr(highlight(d, 0, '[', ']'), 1, 12) \
             FROM d WHERE d MATCH 'a'",
            (),
        )
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], Value::Integer(200_000 * 6));
    assert_eq!(r.rows[0][1], Value::Text("[a] b [a] b ".into()));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    db.close().await;
}

/// What FTS5 reports as its own index's corruption (SQLITE_CORRUPT_VTAB)
/// is that table's problem, not damage to the file: an application's
/// contentless table without column sizes makes even SQLite's own
/// snippet() of one column say so. The query fails, naming the way out; the
/// database stays healthy (before, one such query marked it damaged until a
/// restart). Over every column, snippet() answers NULL, as SQLite's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_text_index_s_complaint_fails_the_query_not_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    // The application's table (client SQL may not name content=).
    let plain = rusqlite::Connection::open(&path).unwrap();
    plain
        .execute_batch(
            "CREATE VIRTUAL TABLE bare USING fts5(a, b, content='', columnsize=0);
             INSERT INTO bare(rowid, a, b) VALUES (1, 'hello world', 'zzz');",
        )
        .unwrap();
    let theirs = plain
        .query_row(
            "SELECT snippet(bare, 0, '[', ']', '...', 10) FROM bare WHERE bare MATCH 'hello'",
            [],
            |r| r.get::<_, Option<String>>(0),
        )
        .unwrap_err();
    assert!(theirs.to_string().contains("malformed"), "{theirs}");
    let e = db
        .query(
            "SELECT snippet(bare, 0, '[', ']', '...', 10) FROM bare WHERE bare MATCH 'hello'",
            (),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::Sql, "{e}");
    assert!(e.to_string().contains("rebuild"), "{e}");
    assert!(db.health().healthy, "{:?}", db.health());
    let r = db
        .query(
            "SELECT snippet(bare, -1, '[', ']', '...', 10) FROM bare WHERE bare MATCH 'hello'",
            (),
        )
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], Value::Null);
    drop(plain);
    db.close().await;
}
