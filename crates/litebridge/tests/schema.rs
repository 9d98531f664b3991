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
