//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use litebridge::{Database, DbConfig, DbConfigBuilder, params};
use tempfile::TempDir;

/// A database in a fresh temporary directory, with a `kv` table.
pub async fn open_kv(builder: DbConfigBuilder) -> (TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("test.db"), builder.build().unwrap())
        .await
        .unwrap();
    db.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL)", ())
        .await
        .unwrap();
    (dir, db)
}

pub fn config() -> DbConfigBuilder {
    DbConfig::builder()
}

pub async fn count(db: &Database, sql: &str) -> i64 {
    let rows = db.query(sql, ()).await.unwrap();
    match rows.rows[0][0] {
        litebridge::Value::Integer(n) => n,
        ref other => panic!("not an integer: {other:?}"),
    }
}

pub async fn insert(db: &Database, k: i64) -> litebridge::Result<litebridge::ExecResult> {
    db.execute("INSERT INTO kv(k, v) VALUES (?1, ?2)", params![k, format!("value-{k}")])
        .await
}
