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
