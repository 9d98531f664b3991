//! `Database::schema`: what a client may query, with row estimates.

use litebridge::store::migrate;
use litebridge::{Database, DbConfig};

/// The database at `path`, with the default settings.
async fn open(path: impl AsRef<std::path::Path>) -> Database {
    Database::open(path, DbConfig::default()).await.unwrap()
}

/// Runs each of `statements`, naming the one that failed.
async fn run_all(db: &Database, statements: &[&str]) {
    for sql in statements {
        db.execute(sql.to_string(), ())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test]
async fn tables_views_indexes_and_estimates_without_litebridges_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path().join("s.db")).await;
    migrate(&db).await.unwrap();
    for sql in [
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT DEFAULT 'anon')",
        "CREATE INDEX users_name ON users(name, id)",
        "CREATE TABLE tags(tag TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
        "CREATE VIEW named AS SELECT name FROM users",
        "CREATE TABLE \"odd \"\"name\"(x)",
        "INSERT INTO users(email) VALUES ('a@x'), ('b@x'), ('c@x')",
        "INSERT INTO \"odd \"\"name\" VALUES (1)",
    ] {
        db.execute(sql.to_owned(), ()).await.unwrap();
    }
    let tables = db.schema().await.unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["named", "odd \"name", "tags", "users"]);

    let users = &tables[3];
    assert_eq!(users.kind, "table");
    assert!(!users.without_rowid);
    assert_eq!(users.row_estimate, Some(3));
    let cols: Vec<(&str, &str, bool, bool)> = users
        .columns
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.decl_type.as_str(),
                c.not_null,
                c.primary_key,
            )
        })
        .collect();
    assert_eq!(
        cols,
        vec![
            ("id", "INTEGER", false, true),
            ("email", "TEXT", true, false),
            ("name", "TEXT", false, false)
        ]
    );
    assert_eq!(users.columns[2].default.as_deref(), Some("'anon'"));
    let index = users
        .indexes
        .iter()
        .find(|i| i.name == "users_name")
        .unwrap();
    assert_eq!(index.columns, vec!["name", "id"]);
    assert!(!index.unique);
    assert!(
        users
            .indexes
            .iter()
            .any(|i| i.unique && i.columns == ["email"])
    );

    let tags = &tables[2];
    assert!(tags.without_rowid);
    assert_eq!(tags.row_estimate, None, "no statistics, no rowid");
    assert_eq!(tables[0].kind, "view");
    assert_eq!(tables[0].row_estimate, None);
    let view: Vec<(&str, &str)> = tables[0]
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.decl_type.as_str()))
        .collect();
    assert_eq!(view, vec![("name", "TEXT")]);
    assert_eq!(
        tables[1].row_estimate,
        Some(1),
        "a quoted name is read safely"
    );

    // With ANALYZE statistics, those count.
    db.execute("INSERT INTO tags VALUES ('a', 1), ('b', 2)", ())
        .await
        .unwrap();
    db.execute("ANALYZE", ()).await.unwrap();
    let tables = db.schema().await.unwrap();
    let tags = tables.iter().find(|t| t.name == "tags").unwrap();
    assert_eq!(tags.row_estimate, Some(2));
    assert!(tables.iter().all(|t| !t.name.starts_with("sqlite_")));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ddl_cannot_grow_the_schema_past_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = litebridge::Database::open(
        dir.path().join("s.db"),
        litebridge::DbConfig::builder()
            .max_schema_bytes(64 * 1024)
            .max_schema_objects(20)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    db.execute("CREATE TABLE a(x)", ()).await.unwrap();
    // A large default grows the schema's SQL through ALTER.
    let big = "x".repeat(100 * 1024);
    let e = db
        .execute(
            format!("ALTER TABLE a ADD COLUMN y TEXT DEFAULT '{big}'"),
            (),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::TooLarge, "{e}");
    let cols = db
        .query("SELECT count(*) FROM pragma_table_info('a')", ())
        .await
        .unwrap();
    assert_eq!(
        cols.rows[0][0],
        litebridge::Value::Integer(1),
        "the column was not added"
    );
    let e = db
        .execute(format!("CREATE VIEW v AS SELECT '{big}' AS big"), ())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::TooLarge, "{e}");
    for i in 0..19 {
        db.execute(format!("CREATE TABLE t{i}(x)"), ())
            .await
            .unwrap();
    }
    let e = db.execute("CREATE INDEX i ON a(x)", ()).await.unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::TooLarge, "{e}");
    db.close().await;
}

/// A double-quoted name that no column has is read by SQLite as a string,
/// in an index's expression too; a column of that name added later makes
/// the index's entries disagree with what the expression now reads, and
/// the operator's whole check (`check --full`) report a sound file as
/// damaged ("row 1 missing from index i", review 193). Client schema
/// changes read double quotes as names only, as SQLite advises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_quotes_in_client_schema_are_names_never_strings() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path().join("s.db")).await;
    db.execute("CREATE TABLE t(a TEXT)", ()).await.unwrap();
    db.execute("INSERT INTO t VALUES ('one'), ('two')", ())
        .await
        .unwrap();
    for ddl in [
        r#"CREATE INDEX i ON t(lower("x"))"#,
        r#"CREATE INDEX i ON t(a) WHERE a <> "x""#,
        r#"CREATE TABLE u(a TEXT CHECK (a <> "x"))"#,
        r#"CREATE TABLE u(a TEXT, b TEXT AS (a || "x"))"#,
        r#"ALTER TABLE t ADD COLUMN c TEXT CHECK (c <> "x")"#,
        // ADD COLUMN leaves these to be read at the schema's next load,
        // which takes double-quoted strings: an index on `b` would store
        // `a || 'x'`, and a column `x` added later change what `b` reads.
        r#"ALTER TABLE t ADD COLUMN b AS (a || "x")"#,
    ] {
        let Err(e) = db.execute(ddl, ()).await else {
            panic!("{ddl} was taken");
        };
        assert_eq!(e.kind(), litebridge::ErrorKind::Sql, "{ddl}: {e}");
        assert!(
            e.to_string().contains(r#"no such column: "x""#),
            "{ddl}: {e}"
        );
    }
    // Statements that are not schema read them as SQLite always has (a
    // view's or a trigger's body too: what they read is computed when they
    // run, never stored).
    let r = db.query(r#"SELECT "x""#, ()).await.unwrap();
    assert_eq!(r.rows[0][0], litebridge::Value::Text("x".into()));
    // Single quotes are strings, and a double-quoted name of a column works.
    db.execute(r#"CREATE INDEX i ON t(lower('x'), "a")"#, ())
        .await
        .unwrap();
    db.execute("ALTER TABLE t ADD COLUMN b AS (a || 'x')", ())
        .await
        .unwrap();
    db.execute("CREATE INDEX j ON t(b)", ()).await.unwrap();
    db.execute("ALTER TABLE t ADD COLUMN x TEXT", ())
        .await
        .unwrap();
    let report = db.check(litebridge::CheckDepth::Full).await.unwrap();
    assert!(report.ok, "{report:?}");
    db.close().await;
}

/// A file made elsewhere (by litebridge before the forty-fifth session,
/// say) may hold a double-quoted string in a table's or an index's
/// expression, which SQLite takes by default: a column of that name added,
/// or renamed to it, would change what the expression reads, and the index
/// would no longer match its table. Either is refused on such a table;
/// schema changes of the file's other tables go on (review 198: SQLite's
/// own test of a rename or a drop read every table with double-quoted
/// strings refused, and every one of them failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_quoted_string_another_program_left_never_changes_meaning() {
    for (setup, names) in [
        (
            r#"CREATE TABLE t(a TEXT); CREATE INDEX i ON t(lower("x"));"#,
            "its index",
        ),
        (
            r#"CREATE TABLE t(a TEXT, b AS (a || "x")); CREATE INDEX i ON t(b);"#,
            "the table as it was",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(setup).unwrap();
            c.execute_batch(
                r#"INSERT INTO t(a) VALUES ('one'), ('two');
                   CREATE TABLE legacy(s TEXT CHECK (s IN ("open", "closed")));
                   CREATE TABLE other(a, b);"#,
            )
            .unwrap();
        }
        let db = open(&path).await;
        for alter in [
            "ALTER TABLE t ADD COLUMN x TEXT",
            "ALTER TABLE t RENAME COLUMN a TO x",
        ] {
            let e = db.execute(alter, ()).await.unwrap_err();
            assert_eq!(e.kind(), litebridge::ErrorKind::Sql, "{setup} {alter}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(&format!("a new column name in t: {names}"))
                    && text.contains(r#"no such column: "x""#)
                    && text.contains("nothing was changed"),
                "{setup} {alter}: {text}"
            );
        }
        let cols = db
            .query("SELECT group_concat(name) FROM pragma_table_xinfo('t')", ())
            .await
            .unwrap();
        let expected = if setup.contains(" AS ") { "a,b" } else { "a" };
        assert_eq!(cols.rows[0][0], litebridge::Value::Text(expected.into()));
        // The other tables' columns change as ever.
        for alter in [
            "ALTER TABLE other RENAME COLUMN b TO c",
            "ALTER TABLE other ADD COLUMN d",
            "ALTER TABLE other DROP COLUMN c",
            "ALTER TABLE other RENAME TO other2",
            "ALTER TABLE legacy ADD COLUMN note TEXT DEFAULT 'none'",
        ] {
            db.execute(alter, ())
                .await
                .unwrap_or_else(|e| panic!("{alter}: {e}"));
        }
        // Double quotes are names again after each ALTER.
        let e = db
            .execute(r#"CREATE INDEX k ON other2(lower("zz"))"#, ())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(r#"no such column: "zz""#), "{e}");
        let report = db.check(litebridge::CheckDepth::Full).await.unwrap();
        assert!(report.ok, "{setup}: {report:?}");
        db.close().await;
    }
}

/// `true` and `false` are values while no column has their name, and the
/// column once one has: an index on `a + true`, or one `WHERE true IS
/// NULL`, stopped matching its rows when a column `true` came or went, and
/// a generated column renamed `true` read itself (review 198: the check at
/// start then took a NULL let through by the stale index for damage, and
/// `serve --recover` restored an older backup; the file with the loop did
/// not open at all). Such a column is not added, renamed to or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_column_named_true_or_false_comes_or_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    run_all(
        &db,
        &[
            "CREATE TABLE t(a, b, c)",
            "INSERT INTO t VALUES (1, NULL, 2)",
            "CREATE INDEX pi ON t(a) WHERE true IS NULL",
            "CREATE INDEX ei ON t(a + false)",
            "CREATE TABLE g(x, v INT AS (x + true))",
            r#"CREATE TABLE n(a, "TRUE", [false])"#,
        ],
    )
    .await;
    for (alter, word, what) in [
        (
            r#"ALTER TABLE t RENAME COLUMN b TO "true""#,
            "true",
            "add or rename to",
        ),
        (
            "ALTER TABLE t RENAME COLUMN b TO False",
            "false",
            "add or rename to",
        ),
        (
            "ALTER TABLE t ADD COLUMN [TRUE]",
            "true",
            "add or rename to",
        ),
        (
            r#"ALTER TABLE t ADD COLUMN "false" DEFAULT 5"#,
            "false",
            "add or rename to",
        ),
        (
            r#"ALTER TABLE g RENAME COLUMN v TO "true""#,
            "true",
            "add or rename to",
        ),
        (r#"ALTER TABLE n DROP COLUMN "true""#, "true", "drop"),
        ("ALTER TABLE n DROP COLUMN false", "false", "drop"),
    ] {
        let e = db.execute(alter, ()).await.unwrap_err();
        assert_eq!(e.kind(), litebridge::ErrorKind::Sql, "{alter}: {e}");
        assert!(
            e.to_string()
                .contains(&format!("cannot {what} a column named {word}")),
            "{alter}: {e}"
        );
    }
    // A column renamed `current_date` (quoted or not) had views, triggers
    // and checks that named it read the clock (review 200).
    db.execute("CREATE VIEW gv AS SELECT a, c FROM t", ())
        .await
        .unwrap();
    for (alter, word) in [
        (
            "ALTER TABLE t RENAME COLUMN c TO current_date",
            "current_date",
        ),
        (
            r#"ALTER TABLE t RENAME COLUMN c TO "CURRENT_TIME""#,
            "current_time",
        ),
        (
            "ALTER TABLE t ADD COLUMN current_timestamp",
            "current_timestamp",
        ),
    ] {
        let e = db.execute(alter, ()).await.unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("cannot add or rename to a column named {word}")),
            "{alter}: {e}"
        );
    }
    let r = db.query("SELECT c FROM gv", ()).await.unwrap();
    assert_eq!(r.rows[0][0], litebridge::Value::Integer(2));
    // A table with such a column may be renamed; and a column of such a
    // name may be renamed away: every word that meant it is renamed with it.
    db.execute("ALTER TABLE n RENAME TO n2", ()).await.unwrap();
    db.execute(r#"ALTER TABLE n2 RENAME COLUMN "true" TO yes"#, ())
        .await
        .unwrap();
    let report = db.check(litebridge::CheckDepth::Full).await.unwrap();
    assert!(report.ok, "{report:?}");
    db.close().await;
    // The file opens again as it was.
    let db = open(&path).await;
    let r = db
        .query("SELECT group_concat(name) FROM pragma_table_xinfo('t')", ())
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], litebridge::Value::Text("a,b,c".into()));
    db.close().await;
}

/// `ALTER COLUMN c SET NOT NULL` (SQLite 3.54) looks for a NULL with a plan
/// that may use a partial index, and one a file another program changed may
/// hold out of step with its rows: the NULL then passed, and the check at
/// start took it for damage (review 198). The column is read without any
/// index after such a change, and the change undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_made_not_null_is_read_without_any_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        // The index stays empty while `true` is a value; once a column has
        // the name it should hold row 1, and does not.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            r#"CREATE TABLE t(a, b);
               INSERT INTO t VALUES (1, NULL);
               CREATE INDEX pi ON t(a) WHERE true IS NULL;
               ALTER TABLE t RENAME COLUMN b TO "true";"#,
        )
        .unwrap();
    }
    let db = open(&path).await;
    let e = db
        .execute(r#"ALTER TABLE t ALTER COLUMN "true" SET NOT NULL"#, ())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("NOT NULL constraint failed: t.true"),
        "{e}"
    );
    let r = db
        .query(
            "SELECT \"notnull\" FROM pragma_table_xinfo('t') WHERE name = 'true'",
            (),
        )
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], litebridge::Value::Integer(0));
    // Where no row holds NULL, the change is made.
    db.execute("ALTER TABLE t ALTER COLUMN a SET NOT NULL", ())
        .await
        .unwrap();
    db.close().await;
    let report = litebridge::check_file(&path, litebridge::CheckDepth::Quick).unwrap();
    assert!(report.ok, "{report:?}");
}

/// SQLite copies text of an `ALTER TABLE` into the table's saved
/// definition, comments too: a `/*` never closed swallowed the columns after
/// it up to the next `*/` (the rows kept their fields, so `c` read `b`'s,
/// and a NULL there was taken for damage at start: `serve --recover` then
/// restored an older backup), and a `--` after an added column dropped the
/// table's constraints on its line (ids of `PRIMARY KEY(id)` read NULL).
/// Review 199. Comments in an `ALTER TABLE` are refused, and an `ALTER`
/// that changed more than one column is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alter_cannot_hide_columns_or_constraints_with_a_comment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    run_all(&db, &[
        "CREATE TABLE t(a, b /* z */, c NOT NULL)",
        "INSERT INTO t VALUES (1, NULL, 5)",
        "CREATE TABLE u(id INTEGER, v TEXT, PRIMARY KEY(id)\n)",
        "INSERT INTO u(v) VALUES ('x'), ('y')",
        "CREATE TABLE customers(\n id INTEGER PRIMARY KEY,\n email TEXT NOT NULL UNIQUE,\n name TEXT,\n balance INTEGER NOT NULL DEFAULT 0\n)",
        "INSERT INTO customers(email, name) VALUES ('a@b', 'ann')",
    ]).await;
    for alter in [
        "ALTER TABLE t ALTER COLUMN a SET NOT NULL /* x",
        "ALTER TABLE u ADD COLUMN d INT -- x",
        "ALTER TABLE customers ADD CONSTRAINT k CHECK (1) /* */",
        "ALTER TABLE customers ALTER COLUMN name SET NOT NULL -- x",
        "-- a header\nALTER TABLE u ADD COLUMN d INT /* in it */;",
    ] {
        let e = db.execute(alter, ()).await.unwrap_err();
        assert_eq!(e.kind(), litebridge::ErrorKind::Forbidden, "{alter}: {e}");
        assert!(e.to_string().contains("a comment in ALTER TABLE"), "{e}");
    }
    // The tables are as they were.
    let r = db.query("SELECT * FROM t", ()).await.unwrap();
    assert_eq!(r.columns, ["a", "b", "c"]);
    let r = db
        .query("SELECT id, v FROM u ORDER BY id", ())
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], litebridge::Value::Integer(1));
    let r = db.query("SELECT * FROM customers", ()).await.unwrap();
    assert_eq!(r.columns.len(), 4);
    // A constraint added answers as any schema statement (SQLite's look at
    // the rows showed a column, `sqlite_fail(...)`, as if it were a result).
    let r = db
        .execute("ALTER TABLE customers ADD CONSTRAINT k CHECK (1)", ())
        .await
        .unwrap();
    assert!(r.returning.is_none(), "{r:?}");
    // Comments before the statement and after its end are not its own
    // (review 200: a migration's header was refused).
    db.execute(
        "-- migration 0042\n/* v2 */ ALTER TABLE u ADD COLUMN e INT; -- note",
        (),
    )
    .await
    .unwrap();
    // Comments elsewhere in the statement's text, inside strings and names,
    // are text as ever.
    db.execute(
        r#"ALTER TABLE t ADD COLUMN "x--y" TEXT DEFAULT '/* kept */'"#,
        (),
    )
    .await
    .unwrap();
    db.close().await;
    let report = litebridge::check_file(&path, litebridge::CheckDepth::Full).unwrap();
    assert!(report.ok, "{report:?}");
}

/// A cached `SELECT *` prepared before a column was dropped or added is
/// prepared again by SQLite at its first step: its columns are read from
/// there. They were read before it, and the read failed ("Invalid column
/// index") or named the old columns (review 199).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_schema_change_names_the_columns_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path().join("s.db")).await;
    db.execute("CREATE TABLE t(a, b, c)", ()).await.unwrap();
    db.execute("INSERT INTO t VALUES (1, 2, 3)", ())
        .await
        .unwrap();
    let read = || async {
        let r = db.query("SELECT * FROM t", ()).await.unwrap();
        (r.columns.join(","), r.rows[0].len())
    };
    // Each reader's statement cache holds it.
    for _ in 0..8 {
        assert_eq!(read().await, ("a,b,c".into(), 3));
    }
    db.execute("ALTER TABLE t DROP COLUMN c", ()).await.unwrap();
    for _ in 0..8 {
        assert_eq!(read().await, ("a,b".into(), 2));
    }
    db.execute("ALTER TABLE t ADD COLUMN d", ()).await.unwrap();
    for _ in 0..8 {
        assert_eq!(read().await, ("a,b,d".into(), 3));
    }
    // And on an empty table, where there is no first row.
    db.execute("DELETE FROM t", ()).await.unwrap();
    db.execute("ALTER TABLE t RENAME COLUMN a TO z", ())
        .await
        .unwrap();
    for _ in 0..8 {
        let r = db.query("SELECT * FROM t", ()).await.unwrap();
        assert_eq!(r.columns, ["z", "b", "d"]);
    }
    db.close().await;
}

/// SQLite's `DROP NOT NULL` takes the first `NOT` of the column's
/// definition for its `NOT NULL`: after `NOT DEFERRABLE` it removed those
/// words, answered success, and left the column `NOT NULL` (review 200).
/// Such an ALTER is undone, and says so; a plain one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_not_null_that_drops_something_else_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path().join("s.db")).await;
    run_all(
        &db,
        &[
            "CREATE TABLE p(id INTEGER PRIMARY KEY)",
            "CREATE TABLE t(a, b TEXT REFERENCES p NOT DEFERRABLE INITIALLY IMMEDIATE NOT NULL COLLATE NOCASE, c)",
            "CREATE TABLE w(a NOT NULL, b DEFAULT 'drop not null')",
        ],
    )
    .await;
    let before = db
        .query("SELECT sql FROM sqlite_schema WHERE name = 't'", ())
        .await
        .unwrap();
    let e = db
        .execute("ALTER TABLE t ALTER COLUMN b DROP NOT NULL", ())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("DROP NOT NULL left every column"),
        "{e}"
    );
    let after = db
        .query("SELECT sql FROM sqlite_schema WHERE name = 't'", ())
        .await
        .unwrap();
    assert_eq!(before.rows, after.rows, "nothing was changed");
    db.execute("ALTER TABLE w ALTER COLUMN a DROP NOT NULL", ())
        .await
        .unwrap();
    let r = db
        .query(
            "SELECT \"notnull\" FROM pragma_table_info('w') WHERE name = 'a'",
            (),
        )
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], litebridge::Value::Integer(0));
    db.close().await;
}

/// A view a client may not read is not described either: its column list
/// would show the layout of the litebridge table it reads (review 213). A
/// view that no longer compiles is left out rather than failing the whole
/// answer.
#[tokio::test]
async fn views_a_client_may_not_read_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    migrate(&db).await.unwrap();
    run_all(
        &db,
        &[
            "CREATE TABLE t(a)",
            "CREATE TABLE u(b)",
            "CREATE VIEW fine AS SELECT a FROM t",
            "CREATE VIEW gone AS SELECT b FROM u",
        ],
    )
    .await;
    db.close().await;
    // Made by another program with the file's own rights, as an attacker
    // with write access to it (or an old tool) would.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE VIEW peek AS SELECT * FROM litebridge_keys; DROP TABLE u;")
        .unwrap();
    drop(conn);
    let db = open(&path).await;
    let tables = db.schema().await.unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["fine", "t"]);
    let err = db.query("SELECT * FROM peek", ()).await.unwrap_err();
    assert!(err.to_string().contains("litebridge's own tables"), "{err}");
    db.close().await;
}

/// Review 215. A full-text table another program made over `litebridge_keys`
/// (its columns are that table's) is left out, and so is a client's view
/// over it; one whose content table was dropped, a NULL row in the
/// statistics and a column named `rowid` no longer fail the whole answer;
/// generated columns are listed, marked.
#[tokio::test]
async fn objects_that_read_litebridge_or_cannot_be_described_leave_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    migrate(&db).await.unwrap();
    run_all(
        &db,
        &[
            "CREATE TABLE t(a)",
            "CREATE TABLE r(rowid TEXT, x)",
            "INSERT INTO r VALUES ('x', 1), ('y', 2)",
            "CREATE TABLE all3(rowid, _rowid_, oid)",
            "CREATE TABLE g(a INTEGER, b AS (a * 2), c AS (a + 1) STORED)",
            "CREATE VIRTUAL TABLE docs USING fts5(body)",
            "INSERT INTO docs VALUES ('hello')",
        ],
    )
    .await;
    db.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE VIRTUAL TABLE ftk USING fts4(content=\"litebridge_keys\"); \
         CREATE TABLE gone(x); \
         CREATE VIRTUAL TABLE ftg USING fts4(content=\"gone\"); \
         DROP TABLE gone; \
         ANALYZE; \
         INSERT INTO sqlite_stat1 VALUES (NULL, NULL, '1');",
    )
    .unwrap();
    drop(conn);
    let db = open(&path).await;
    db.execute("CREATE VIEW peek AS SELECT * FROM ftk", ())
        .await
        .unwrap();
    db.execute("CREATE VIEW nested AS SELECT * FROM peek", ())
        .await
        .unwrap();
    let tables = db.schema().await.unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["all3", "docs", "g", "r", "t"]);
    let r = &tables[3];
    assert_eq!(r.row_estimate, Some(2), "the rowid, not the column rowid");
    assert_eq!(tables[0].row_estimate, None, "every alias taken");
    let g: Vec<(&str, bool)> = tables[2]
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.generated))
        .collect();
    assert_eq!(g, vec![("a", false), ("b", true), ("c", true)]);
    // fts5's hidden columns (its own name, rank) are not listed.
    let docs: Vec<&str> = tables[1].columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(docs, vec!["body"]);
    for sql in ["SELECT * FROM ftk", "SELECT * FROM nested"] {
        let err = db.query(sql, ()).await.unwrap_err();
        assert!(
            err.to_string().contains("litebridge's own tables"),
            "{sql}: {err}"
        );
    }
    db.close().await;
}
