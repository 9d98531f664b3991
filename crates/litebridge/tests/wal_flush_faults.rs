//! The writer's WAL shim (`wal_vfs`) when writing out gathered frames fails,
//! at every point of a transaction that spills, rewrites pages in place and
//! commits, followed by small commits: whatever was acknowledged is in a copy
//! of the files taken right afterwards (what a SIGKILL leaves), nothing that
//! failed is, and the copy passes a full integrity check.
//!
//! A process of its own: the fault switch is process-wide.

mod common;

use common::{config, count, open_kv};
use litebridge::fault::fail_wal_flush;
use litebridge::{CheckpointConfig, Database, DbConfig, Statement, WriteOptions, params};

fn value(k: i64) -> String {
    format!("{k}-{}", "y".repeat(150))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_at_any_point_loses_no_acknowledged_write() {
    let mut failed_somewhere = 0;
    for n in 1..=24usize {
        let (dir, db) = open_kv(config().cache_size(16).checkpoint(CheckpointConfig {
            passive_pages: 1_000_000,
            ..CheckpointConfig::default()
        }))
        .await;
        let mut acknowledged: Vec<i64> = Vec::new();
        for k in 0..20 {
            db.execute("INSERT INTO kv(k, v) VALUES (?1, ?2)", params![k, value(k)])
                .await
                .unwrap();
            acknowledged.push(k);
        }
        fail_wal_flush(n);
        let mut batch: Vec<Statement> = (1_000..4_000i64)
            .map(|k| Statement::new("INSERT INTO kv(k, v) VALUES (?1, ?2)", params![k, value(k)]))
            .collect();
        batch.push(Statement::new(
            "UPDATE kv SET v = v || '!' WHERE k >= 1000",
            (),
        ));
        match db.batch(batch, WriteOptions::default()).await {
            Ok(_) => acknowledged.extend(1_000..4_000),
            Err(_) => failed_somewhere += 1,
        }
        for k in 20..40 {
            if db
                .execute("INSERT INTO kv(k, v) VALUES (?1, ?2)", params![k, value(k)])
                .await
                .is_ok()
            {
                acknowledged.push(k);
            } else {
                failed_somewhere += 1;
            }
        }
        fail_wal_flush(0);
        // What a SIGKILL leaves: the files as they are now.
        let copy_dir = dir.path().join("copy");
        std::fs::create_dir(&copy_dir).unwrap();
        std::fs::copy(dir.path().join("test.db"), copy_dir.join("test.db")).unwrap();
        std::fs::copy(dir.path().join("test.db-wal"), copy_dir.join("test.db-wal")).unwrap();
        let copy = Database::open(copy_dir.join("test.db"), DbConfig::default())
            .await
            .unwrap();
        assert!(
            copy.check(litebridge::CheckDepth::Full).await.unwrap().ok,
            "flush {n}: damaged copy"
        );
        let rows = copy.query("SELECT k FROM kv ORDER BY k", ()).await.unwrap();
        let got: Vec<i64> = rows
            .rows
            .iter()
            .map(|r| match r[0] {
                litebridge::Value::Integer(k) => k,
                ref other => panic!("{other:?}"),
            })
            .collect();
        acknowledged.sort_unstable();
        assert_eq!(
            got, acknowledged,
            "flush {n}: exactly what was acknowledged"
        );
        if acknowledged.contains(&1_000) {
            assert_eq!(
                count(&copy, "SELECT count(*) FROM kv WHERE v LIKE '%!'").await,
                3_000
            );
        }
        copy.close().await;
        // The live database agrees, and goes on taking writes.
        assert_eq!(
            count(&db, "SELECT count(*) FROM kv").await,
            acknowledged.len() as i64
        );
        db.execute("INSERT INTO kv(k, v) VALUES (-5, 'after')", ())
            .await
            .unwrap();
        db.close().await;
    }
    assert!(failed_somewhere > 0, "the injected failures were met");
}
