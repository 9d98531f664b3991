//! Opening one new database file from many places at once does not race on
//! `journal_mode` (pools that run their init pragmas on every connection at
//! once hit "database is locked" here): every opener gets a WAL database.

use litebridge::{Database, DbConfig, params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_openers_of_a_new_file_all_get_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let openers: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                Database::open(&path, DbConfig::builder().readers(2).build().unwrap()).await
            })
        })
        .collect();
    let mut dbs = Vec::new();
    for o in openers {
        dbs.push(o.await.unwrap().expect("every concurrent open succeeds"));
    }
    dbs[0]
        .execute("CREATE TABLE t(k INTEGER PRIMARY KEY)", ())
        .await
        .unwrap();
    for (i, db) in dbs.iter().enumerate() {
        db.execute("INSERT INTO t VALUES (?1)", params![i as i64])
            .await
            .unwrap();
        let mode = db.query("PRAGMA journal_mode", ()).await.unwrap();
        assert_eq!(mode.rows[0][0], litebridge::Value::from("wal"));
    }
    let n = dbs[7].query("SELECT count(*) FROM t", ()).await.unwrap();
    assert_eq!(n.rows[0][0], litebridge::Value::Integer(8));
}
