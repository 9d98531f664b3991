//! `Database::schema`: what a client may query, with row estimates.

use litebridge::store::migrate;
use litebridge::{Database, DbConfig};

#[tokio::test]
async fn tables_views_indexes_and_estimates_without_litebridges_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("s.db"), DbConfig::default())
        .await
        .unwrap();
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
    let db = litebridge::Database::open(dir.path().join("s.db"), litebridge::DbConfig::default())
        .await
        .unwrap();
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

/// A file made elsewhere may hold a double-quoted string in a table's or
/// an index's expression (SQLite takes them by default): a column of that
/// name added would change what the expression reads, and the index would
/// no longer match its table. Adding a column to such a table is refused
/// (renaming or dropping one is refused by SQLite's own test); the file
/// stays sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_is_not_added_where_a_double_quoted_string_would_change() {
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
            c.execute_batch("INSERT INTO t(a) VALUES ('one'), ('two')")
                .unwrap();
        }
        let db = litebridge::Database::open(&path, litebridge::DbConfig::default())
            .await
            .unwrap();
        let e = db
            .execute("ALTER TABLE t ADD COLUMN x TEXT", ())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), litebridge::ErrorKind::Sql, "{setup}: {e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("adding a column to t: {names}"))
                && text.contains(r#"no such column: "x""#)
                && text.contains("nothing was changed"),
            "{setup}: {text}"
        );
        let cols = db
            .query("SELECT count(*) FROM pragma_table_xinfo('t')", ())
            .await
            .unwrap();
        let expected = if setup.contains(" AS ") { 2 } else { 1 };
        assert_eq!(cols.rows[0][0], litebridge::Value::Integer(expected));
        // Renaming a column to the word, or dropping its column, SQLite
        // refuses itself, reading double quotes as names only.
        let e = db
            .execute("ALTER TABLE t RENAME COLUMN a TO x", ())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(r#"no such column: "x""#), "{e}");
        let report = db.check(litebridge::CheckDepth::Full).await.unwrap();
        assert!(report.ok, "{setup}: {report:?}");
        db.close().await;
    }
}
