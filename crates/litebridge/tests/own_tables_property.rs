//! No sequence of client statements reaches litebridge's own tables.
//!
//! A `write` session (client SQL through `execute`, `batch` and `query`, as
//! the RPC runs it for a write key) sends random sequences drawn from a small
//! grammar of the ways in: temporary objects, triggers, views, renames,
//! `ANALYZE` and the statistics tables, CTEs, pragma functions, `RETURNING`
//! and upserts, aimed at litebridge's table names and at ordinary ones.
//! Afterwards keys, quotas, state, memory and the cache must behave exactly
//! as on a fresh database, litebridge's namespace must hold exactly what a
//! migration made, and no byte of litebridge's rows may have come back to
//! the client in a result or an error message.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use litebridge::auth::{Auth, NewKey, Scopes, Tiers, create_key};
use litebridge::store::{
    Cache, CacheConfig, MemoryStore, StateStore, StateUpdate, SystemClock, migrate,
};
use litebridge::{Database, DbConfig, Statement, Value, WriteOptions};

/// Strings planted in litebridge's tables; none may reach the client.
const SECRETS: &[&str] = &[
    "run-SECRET-RUN",
    "SECRET-STATE",
    "SECRET-STATUS",
    "SECRET-NS",
    "SECRET-MEMKEY",
    "SECRET-MEMVAL",
    "SECRET-CACHEKEY",
    "SECRET-CACHEVAL",
    "secret-key-name",
];

/// sha256("lb_evil_secret_0123456789"): a key the attacker would like to plant.
const EVIL_HASH: &str = "8902c152d50372021d7501d448bf3cf52a371fb28e54837d2d0791ee407f4788";
const EVIL_SECRET: &str = "lb_evil_secret_0123456789";

/// Every object a fresh, migrated database has under litebridge's prefix.
const FRESH_OBJECTS: &str = "litebridge_cache litebridge_cache_expiry litebridge_claims litebridge_claims_clock litebridge_claims_created \
     litebridge_keys litebridge_memory litebridge_memory_expiry \
     litebridge_meta litebridge_quota litebridge_state litebridge_state_status \
     sqlite_autoindex_litebridge_keys_1 sqlite_autoindex_litebridge_keys_2";

/// Tables the client owns (created by the fixture).
fn user_tables() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["t", "plain", "x", "main.t"])
}

/// Names in litebridge's namespace, existing and not.
fn own_names() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "litebridge_state",
        "litebridge_keys",
        "litebridge_cache",
        "litebridge_future",
        "LiteBridge_Future2",
        "litebridge_quota",
        "litebridge_claims",
    ])
}

fn names() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "t",
        "plain",
        "x",
        "v",
        "litebridge_state",
        "litebridge_keys",
        "litebridge_memory",
        "litebridge_cache",
        "litebridge_quota",
        "litebridge_meta",
        "litebridge_claims",
        "litebridge_future",
        "LITEBRIDGE_KEYS",
        "main.litebridge_keys",
        "temp.x",
        "temp.litebridge_state",
        "sqlite_stat1",
        "sqlite_stat4",
    ])
}

/// What a trigger body or an upsert may try to do to litebridge's tables.
fn payloads() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        format!(
            "INSERT INTO main.litebridge_keys(name, hash, scopes, tier, created_at) \
             VALUES ('evil', '{EVIL_HASH}', 'admin', 'enterprise', 0)"
        ),
        "UPDATE main.litebridge_keys SET scopes = 'admin', revoked_at = NULL".to_owned(),
        "UPDATE main.litebridge_meta SET value = value + 1 WHERE key = 'keys_version'".to_owned(),
        "DELETE FROM main.litebridge_quota".to_owned(),
        "DELETE FROM main.litebridge_claims".to_owned(),
        "INSERT INTO main.litebridge_claims VALUES (x'00', '{\"write\":\"\",\"changes\":[5]}', 0)"
            .to_owned(),
        "INSERT INTO t SELECT hex(key), result, 0 FROM litebridge_claims".to_owned(),
        "INSERT INTO t SELECT group_concat(hash) FROM litebridge_keys".to_owned(),
        "INSERT INTO t SELECT state FROM litebridge_state".to_owned(),
        "INSERT INTO t SELECT CAST(sample AS TEXT) FROM sqlite_stat4".to_owned(),
        "INSERT INTO sqlite_stat1 VALUES ('litebridge_keys', NULL, '1')".to_owned(),
        "INSERT INTO t VALUES (1)".to_owned(),
    ])
}

const STATE_COLUMNS: &str = "run_id TEXT PRIMARY KEY, state TEXT NOT NULL, status TEXT, total_steps INTEGER, \
     error_message TEXT, execution_time_ms INTEGER, memory_usage_mb REAL, created_at INTEGER NOT NULL, \
     updated_at INTEGER NOT NULL";

fn statement() -> impl Strategy<Value = String> {
    let temp = prop::sample::select(vec!["", "TEMP ", "TEMPORARY "]);
    prop_oneof![
        (temp.clone(), names()).prop_map(|(t, n)| format!("CREATE {t}TABLE {n}(x, y, z)")),
        (temp.clone(), names())
            .prop_map(|(t, n)| format!("CREATE {t}TABLE {n}({STATE_COLUMNS}) WITHOUT ROWID")),
        (temp.clone(), names(), names())
            .prop_map(|(t, n, m)| format!("CREATE {t}VIEW {n} AS SELECT * FROM {m}")),
        (temp, 0..4u8, names(), payloads(), payloads()).prop_map(|(t, i, n, p, q)| format!(
            "CREATE {t}TRIGGER tr{i} AFTER INSERT ON {n} BEGIN {p}; {q}; END"
        )),
        (names(), names()).prop_map(|(n, m)| format!("ALTER TABLE {n} RENAME TO {m}")),
        (user_tables(), own_names())
            .prop_map(|(n, m)| format!("ALTER TABLE {n} RENAME TO \"{m}\"")),
        (user_tables(), own_names()).prop_map(|(n, m)| format!("ALTER TABLE {n} RENAME TO {m}")),
        names().prop_map(|n| format!("ALTER TABLE {n} ADD COLUMN extra")),
        names().prop_map(|n| format!("DROP TABLE {n}")),
        names().prop_map(|n| format!("DROP VIEW {n}")),
        (0..4u8).prop_map(|i| format!("DROP TRIGGER tr{i}")),
        Just("ANALYZE".to_owned()),
        names().prop_map(|n| format!("ANALYZE {n}")),
        Just("PRAGMA optimize".to_owned()),
        names().prop_map(|n| format!("SELECT * FROM {n}")),
        names().prop_map(|n| format!("SELECT * FROM pragma_table_info('{n}')")),
        names().prop_map(|n| format!("SELECT * FROM pragma_index_list('{n}')")),
        Just("SELECT * FROM pragma_database_list".to_owned()),
        Just("SELECT CAST(sample AS TEXT), * FROM sqlite_stat4".to_owned()),
        Just("SELECT * FROM sqlite_stat1".to_owned()),
        Just("SELECT * FROM sqlite_schema".to_owned()),
        Just("SELECT * FROM temp.sqlite_schema".to_owned()),
        names().prop_map(|n| format!(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3) \
             INSERT INTO {n} SELECT i, i, i FROM c"
        )),
        names().prop_map(|n| format!("INSERT INTO {n} VALUES (1, 2, 3) RETURNING *")),
        (names(), payloads()).prop_map(|(n, p)| format!(
            "INSERT INTO {n}(x) VALUES (1) ON CONFLICT DO UPDATE SET y = ({})",
            p.replace("INSERT INTO t ", "")
        )),
        names().prop_map(|n| format!(
            "INSERT INTO {n}(run_id, state, created_at, updated_at) \
             VALUES ('run-SECRET-RUN', 'evil', 0, 0)"
        )),
        names().prop_map(|n| format!("UPDATE {n} SET x = x")),
        names().prop_map(|n| format!("DELETE FROM {n} RETURNING *")),
        payloads(),
    ]
}

/// Everything a client statement gave back: rows as text, and error messages.
fn seen(out: &mut String, r: &litebridge::Result<litebridge::Rows>) {
    match r {
        Ok(rows) => {
            for row in &rows.rows {
                for v in row {
                    match v {
                        Value::Text(s) => out.push_str(s),
                        Value::Blob(b) => out.push_str(&String::from_utf8_lossy(b)),
                        other => out.push_str(&format!("{other:?}")),
                    }
                    out.push('|');
                }
            }
        }
        Err(e) => out.push_str(&e.to_string()),
    }
    out.push('\n');
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: Database,
    secret: String,
    key_hash_hint: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path().join("app.db"),
        DbConfig::builder().readers(1).build().unwrap(),
    )
    .await
    .unwrap();
    migrate(&db).await.unwrap();
    for table in ["t", "plain", "x", "kept"] {
        db.execute(format!("CREATE TABLE {table}(x, y, z)"), ())
            .await
            .unwrap();
    }
    // A write recorded under an idempotency key, in a table no statement
    // of the attack names.
    db.execute_with(KEPT, (), keyed("SECRET-CLAIM"))
        .await
        .unwrap();
    let clock = Arc::new(SystemClock);
    StateStore::new(db.clone(), clock.clone())
        .save(StateUpdate {
            run_id: "run-SECRET-RUN".into(),
            state: json!({"s": "SECRET-STATE"}),
            status: Some("SECRET-STATUS".into()),
            ..StateUpdate::default()
        })
        .await
        .unwrap();
    MemoryStore::new(db.clone(), clock)
        .store("SECRET-NS", "SECRET-MEMKEY", &json!("SECRET-MEMVAL"), None)
        .await
        .unwrap();
    Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap()
        .set("SECRET-CACHEKEY", json!("SECRET-CACHEVAL"), None)
        .await
        .unwrap();
    let (_, secret) = create_key(
        &db,
        &Tiers::default(),
        NewKey {
            name: Some("secret-key-name".into()),
            scopes: "read".parse::<Scopes>().unwrap(),
            tier: "pro".into(),
        },
    )
    .await
    .unwrap();
    // The stored hash's first 16 hex digits: enough to recognise a leak.
    let key_hash_hint = db
        .read(|c| {
            Ok(c.query_row(
                "SELECT substr(hash, 1, 16) FROM litebridge_keys WHERE name = 'secret-key-name'",
                [],
                |r| r.get::<_, String>(0),
            )?)
        })
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        db,
        secret,
        key_hash_hint,
    }
}

/// The fixture's write with an idempotency key.
const KEPT: &str = "INSERT INTO kept VALUES ('SECRET-KEPT', 0, 0)";

fn keyed(key: &str) -> WriteOptions {
    WriteOptions {
        idempotency_key: Some(litebridge::IdempotencyKey::new(1, key).unwrap()),
        ..WriteOptions::default()
    }
}

/// Runs the client statements, then checks every store and the namespace.
async fn attack_then_check(statements: Vec<String>) -> Result<(), TestCaseError> {
    let f = fixture().await;
    let db = &f.db;
    let mut out = String::new();
    for (i, sql) in statements.iter().enumerate() {
        // Each statement through every route a write key has.
        let q = db.query(sql, ()).await;
        seen(&mut out, &q);
        if i % 3 == 0 {
            let r = db
                .batch(
                    vec![
                        Statement::new(sql.clone(), ()),
                        Statement::new("INSERT INTO t VALUES ('batch', 0, 0)", ()),
                    ],
                    WriteOptions::default(),
                )
                .await;
            if let Err(e) = r {
                out.push_str(&e.to_string());
            }
        } else if let Err(e) = db.execute(sql.clone(), ()).await {
            out.push_str(&e.to_string());
        }
    }
    for secret in SECRETS {
        prop_assert!(
            !out.contains(secret),
            "{secret} reached the client after {statements:#?}"
        );
    }
    prop_assert!(
        !out.contains(&f.key_hash_hint),
        "a key hash reached the client"
    );

    // litebridge's namespace holds what a migration made, nothing more; no
    // temporary object exists.
    let objects = db
        .read(|c| {
            Ok(c.query_row(
                "SELECT group_concat(name, ' ' ORDER BY name) FROM main.sqlite_schema
                 WHERE name LIKE 'litebridge%' OR tbl_name LIKE 'litebridge%'",
                [],
                |r| r.get::<_, String>(0),
            )?)
        })
        .await
        .unwrap();
    prop_assert_eq!(
        objects,
        FRESH_OBJECTS
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let temp = db
        .write(|c| {
            Ok(
                c.query_row("SELECT count(*) FROM temp.sqlite_schema", [], |r| {
                    r.get::<_, i64>(0)
                })?,
            )
        })
        .await
        .unwrap();
    prop_assert_eq!(temp, 0);
    let stats = db
        .read(|c| {
            let present: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1')",
                [],
                |r| r.get(0),
            )?;
            if !present {
                return Ok(0);
            }
            Ok(c.query_row(
                "SELECT count(*) FROM sqlite_stat1 WHERE tbl LIKE 'litebridge%'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .await
        .unwrap();
    prop_assert_eq!(stats, 0, "statistics about litebridge's tables");

    // Keys: the real one works with its scopes and nothing else; the planted
    // secret does not; revocation takes effect.
    let auth = Auth::open(db.clone(), Tiers::default(), Arc::new(SystemClock))
        .await
        .unwrap();
    let caller = auth.authenticate(&f.secret).unwrap();
    prop_assert_eq!(caller.scopes(), "read".parse::<Scopes>().unwrap());
    prop_assert!(auth.authenticate(EVIL_SECRET).is_err());
    // Quotas: what is charged is what is counted.
    for _ in 0..7 {
        caller.charge().unwrap();
    }
    auth.flush().await.unwrap();
    let counted = db
        .read(|c| {
            Ok(c.query_row(
                "SELECT coalesce(sum(count), 0) FROM litebridge_quota WHERE period LIKE 'd%'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .await
        .unwrap();
    prop_assert_eq!(counted, 7);
    prop_assert!(
        litebridge::auth::revoke_key(db, "secret-key-name")
            .await
            .unwrap()
    );
    auth.refresh().await.unwrap();
    prop_assert!(auth.authenticate(&f.secret).is_err());

    // Idempotency records: the fixture's still answers its retry (which
    // runs nothing), and a new key's write runs.
    let kept = async || {
        db.query("SELECT count(*) FROM kept", ())
            .await
            .unwrap()
            .rows[0][0]
            .clone()
    };
    let again = db.execute_with(KEPT, (), keyed("SECRET-CLAIM")).await;
    prop_assert_eq!(again.map(|r| r.changes).ok(), Some(1));
    prop_assert_eq!(kept().await, Value::Integer(1));
    let fresh = db.execute_with(KEPT, (), keyed("fresh")).await;
    prop_assert_eq!(fresh.map(|r| r.changes).ok(), Some(1));
    prop_assert_eq!(kept().await, Value::Integer(2));

    // State, memory and cache: the planted rows as they were, new writes land
    // and read back after the database is closed and opened again.
    let clock = Arc::new(SystemClock);
    let state = StateStore::new(db.clone(), clock.clone());
    let run = state.load("run-SECRET-RUN").await.unwrap().unwrap();
    prop_assert_eq!(run.state, json!({"s": "SECRET-STATE"}));
    prop_assert_eq!(run.status.as_deref(), Some("SECRET-STATUS"));
    state
        .save(StateUpdate {
            run_id: "after".into(),
            state: json!(1),
            ..StateUpdate::default()
        })
        .await
        .unwrap();
    let memory = MemoryStore::new(db.clone(), clock.clone());
    prop_assert_eq!(
        memory.get("SECRET-NS", "SECRET-MEMKEY").await.unwrap(),
        Some(json!("SECRET-MEMVAL"))
    );
    memory
        .store("ns", "after", &json!(2), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    prop_assert_eq!(
        cache.get("SECRET-CACHEKEY").await.unwrap(),
        Some(json!("SECRET-CACHEVAL"))
    );
    cache.set("after", json!(3), None).await.unwrap();
    let path = db.path().to_path_buf();
    db.close().await;
    let db = Database::open(&path, DbConfig::default()).await.unwrap();
    migrate(&db).await.unwrap();
    prop_assert!(
        StateStore::new(db.clone(), clock.clone())
            .load("after")
            .await
            .unwrap()
            .is_some()
    );
    prop_assert_eq!(
        MemoryStore::new(db.clone(), clock)
            .get("ns", "after")
            .await
            .unwrap(),
        Some(json!(2))
    );
    let cache = Cache::open(Some(db.clone()), CacheConfig::default())
        .await
        .unwrap();
    prop_assert_eq!(cache.get("after").await.unwrap(), Some(json!(3)));
    db.close().await;
    Ok(())
}

#[test]
fn no_sequence_of_client_statements_reaches_litebridges_tables() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(statement(), 1..14), |statements| {
            rt.block_on(attack_then_check(statements))
        })
        .unwrap();
}

/// The attack sequences of the security report, always run.
#[test]
fn the_reported_shadow_table_sequences_fail() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for sequence in [
        vec![
            format!("CREATE TEMP TABLE x({STATE_COLUMNS}) WITHOUT ROWID"),
            format!(
                "CREATE TEMP TRIGGER t AFTER INSERT ON x BEGIN \
                 INSERT INTO main.litebridge_keys(name, hash, scopes, tier, created_at) \
                 VALUES ('evil', '{EVIL_HASH}', 'admin', 'enterprise', 0); \
                 UPDATE main.litebridge_meta SET value = value + 1 WHERE key = 'keys_version'; END"
            ),
            "ALTER TABLE temp.x RENAME TO litebridge_state".to_owned(),
        ],
        vec![
            "CREATE TABLE plain(key TEXT PRIMARY KEY, value TEXT, expires_at INTEGER) WITHOUT ROWID"
                .to_owned(),
            "ALTER TABLE plain RENAME TO litebridge_future".to_owned(),
            "ALTER TABLE plain RENAME TO litebridge_cache".to_owned(),
        ],
        vec![
            "ANALYZE litebridge_memory".to_owned(),
            "ANALYZE litebridge_keys".to_owned(),
            "ANALYZE".to_owned(),
            "SELECT CAST(sample AS TEXT) FROM sqlite_stat4".to_owned(),
        ],
    ] {
        rt.block_on(attack_then_check(sequence)).unwrap();
    }
}
