//! Writes answered once standbys flushed them (`postgres.replicated_to`):
//! with as many standbys as stream, the clients' writes and the stores'
//! are answered; asking for more than stream, a write answers
//! `outcome_unknown` at its deadline, committed on the primary, and its
//! retry with the same idempotency key does not apply it twice; a standby
//! that stops flushing (its WAL receiver stopped with SIGSTOP) holds the
//! acknowledgement of every kind of write until it goes on, while a standby
//! not named in `replicated_standbys` does not count, nor a sender that
//! replays nothing, nor a count on another session; a quota flush not
//! confirmed is not counted again; one caller's writes waiting for a
//! connection go one to a message; a role that cannot see the standbys'
//! positions is refused at connect; a front end whose idempotency secret a
//! failover lost writes nothing with it. Needs the cluster of
//! scripts/pg-cluster.sh (a primary and two streaming replicas).
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use litebridge::pg::{PgConfig, PgDatabase};
use litebridge::store::{StateStore, StateUpdate, SystemClock};
use litebridge::{ErrorKind, QueryOptions, Value, WriteOptions, params};

/// The standbys scripts/pg-cluster.sh starts, both streaming from the
/// primary (the delayed one replays late, but flushes at once).
const STANDBYS: usize = 2;

async fn count(db: &PgDatabase) -> i64 {
    let rows = db
        .query_with("SELECT count(*) FROM t", (), QueryOptions::default())
        .await
        .unwrap();
    match rows.rows[0][0] {
        Value::Integer(n) => n,
        ref v => panic!("a count: {v:?}"),
    }
}

/// A database of `config`, with the table `t(id bigint)` the tests write.
async fn with_table(config: PgConfig) -> PgDatabase {
    let db = PgDatabase::connect(config).await.unwrap();
    db.execute_with("CREATE TABLE t(id bigint)", (), WriteOptions::default())
        .await
        .unwrap();
    db
}

/// Inserts `id` into `t` with the idempotency key `key`.
async fn insert_keyed(
    db: &PgDatabase,
    id: i64,
    key: &str,
    timeout: Duration,
) -> litebridge::Result<litebridge::ExecResult> {
    db.execute_with(
        "INSERT INTO t VALUES (?1)",
        params![id],
        keyed(key, timeout),
    )
    .await
}

fn keyed(key: &str, timeout: Duration) -> WriteOptions {
    WriteOptions {
        timeout: Some(timeout),
        idempotency_key: Some(litebridge::IdempotencyKey::new(1, key).unwrap()),
        ..WriteOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_answered_once_the_standbys_flushed_them() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let mut config = schema.config();
    config.replicated_to = STANDBYS;
    let db = with_table(config).await;
    for i in 0..50i64 {
        let (_, token) = db
            .execute_at(
                "INSERT INTO t VALUES (?1)",
                params![i],
                keyed(&format!("k{i}"), Duration::from_secs(10)),
            )
            .await
            .unwrap();
        // No replicas to read from: the position was read for the wait alone.
        assert_eq!(token, None);
    }
    assert_eq!(count(&db).await, 50);
    // The stores' writes wait too.
    let store = StateStore::new(db.clone(), Arc::new(SystemClock));
    store
        .save(StateUpdate {
            run_id: "r1".into(),
            state: serde_json::json!({"step": 1}),
            ..StateUpdate::default()
        })
        .await
        .unwrap();
    db.close();
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_no_standby_set_can_confirm_is_outcome_unknown_and_applied_once() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let plain = with_table(schema.config()).await;
    let mut config = schema.config();
    config.replicated_to = STANDBYS + 1;
    // The stores' writes below run to the default deadline.
    config.default_timeout = Duration::from_secs(1);
    let db = PgDatabase::connect(config).await.unwrap();
    let deadline = Duration::from_millis(400);
    for attempt in 0..2 {
        let sent = Instant::now();
        let e = db
            .execute_with("INSERT INTO t VALUES (1)", (), keyed("once", deadline))
            .await
            .expect_err("more standbys asked for than stream");
        let took = sent.elapsed();
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
        let message = e.to_string();
        assert!(
            message.contains("postgres.replicated_to")
                && message.contains(" of them flushed it (at ")
                && message.contains("idempotency key"),
            "attempt {attempt}: {message}"
        );
        // Given up at most one pause (20 ms) before the deadline.
        assert!(
            took + Duration::from_millis(25) >= deadline
                && took < deadline + Duration::from_secs(1),
            "answered after {took:?}"
        );
        // Committed on the primary, once: the retry found the record.
        assert_eq!(count(&plain).await, 1, "attempt {attempt}");
    }
    // The stores' writes are held to it too.
    let store = StateStore::new(db.clone(), Arc::new(SystemClock));
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        store.save(StateUpdate {
            run_id: "r1".into(),
            state: serde_json::json!({"step": 1}),
            ..StateUpdate::default()
        }),
    )
    .await
    .expect("answered by the default deadline")
    .expect_err("not confirmed");
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    db.close();
    plain.close();
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_see_the_standbys_is_refused_naming_the_setting() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let admin = common::pg::admin(&schema.url).await;
    let _ = admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE lb_t_blind_owner LOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .await;
    admin
        .batch_execute(
            "REVOKE pg_read_all_stats FROM lb_t_blind_owner; \
             GRANT CREATE ON DATABASE postgres TO lb_t_blind_owner",
        )
        .await
        .unwrap();
    let url = schema
        .url
        .replacen("://postgres@", "://lb_t_blind_owner@", 1);
    assert_ne!(url, schema.url, "the admin URL's user is postgres");
    let mut config = PgConfig::new(url)
        .client(common::pg::CLIENT_ROLE, None)
        .client_schema(schema.name.clone())
        .schema(schema.own());
    config.replicated_to = 1;
    let e = PgDatabase::connect(config.clone())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let message = e.to_string();
    assert!(
        message.contains("postgres.replicated_to") && message.contains("pg_read_all_stats"),
        "{message}"
    );
    // Without it, the same role connects.
    config.replicated_to = 0;
    PgDatabase::connect(config).await.unwrap().close();
    schema.drop_now().await;
    admin
        .batch_execute("REVOKE CREATE ON DATABASE postgres FROM lb_t_blind_owner")
        .await
        .unwrap();
}

/// A standby's WAL receiver, stopped (SIGSTOP) until dropped.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: i32) {
    let ok = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(
        ok,
        "kill {which} {pid} (the tests run as root or as PostgreSQL's user)"
    );
}

/// The tests that stop the first replica's WAL receiver take turns.
static RECEIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The first replica's WAL receiver, asked on the replica itself.
async fn receiver(schema: &common::pg::Schema) -> i32 {
    let replica = std::env::var("LB_TEST_PG_REPLICAS")
        .expect("set with LB_TEST_PG")
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let (_, rest) = schema.url.split_once('@').unwrap();
    let (_, db_name) = rest.split_once('/').unwrap();
    let on_replica = format!("postgres://postgres@{replica}/{db_name}");
    common::pg::admin(&on_replica)
        .await
        .query_one("SELECT pid FROM pg_stat_wal_receiver", &[])
        .await
        .unwrap()
        .get(0)
}

/// Counts the first replica alone (scripts/pg-cluster.sh names it
/// `replica`; the other, `delayed`, goes on streaming and is not counted).
fn first_replica_alone(schema: &common::pg::Schema) -> PgConfig {
    let mut config = schema.config();
    config.replicated_to = 1;
    config.replicated_standbys = vec!["repl_ca".into()];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_stops_flushing_holds_the_acknowledgement() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let _turn = RECEIVER.lock().await;
    let pid = receiver(&schema).await;
    let db = with_table(first_replica_alone(&schema)).await;
    let stopped = Stopped::new(pid);
    let e = insert_keyed(&db, 1, "held", Duration::from_millis(500))
        .await
        .expect_err("one standby does not flush");
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert!(e.to_string().contains("0 of them flushed it (at "), "{e}");
    // Let go while a write waits: it is answered then.
    let waiting = tokio::spawn({
        let db = db.clone();
        async move { insert_keyed(&db, 2, "waits", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "answered before the standby flushed it"
    );
    drop(stopped);
    waiting.await.unwrap().unwrap();
    // The first one's retry finds it committed, now on that standby.
    insert_keyed(&db, 1, "held", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(count(&db).await, 2);
    db.close();
    schema.drop_now().await;
}

/// A quota flush whose standbys do not confirm it committed on the
/// primary: its counts are not kept for the next flush, which would write
/// them again at every flush while the standbys lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_flush_not_confirmed_is_not_counted_again() {
    use litebridge::auth::{Auth, NewKey, Scopes, TierLimits, Tiers, create_key};
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let mut tiers = Tiers::default();
    tiers.set(
        "tiny",
        TierLimits {
            daily: Some(100),
            monthly: Some(100),
            concurrent: Some(2),
        },
    );
    let plain = schema.open().await;
    let (_, secret) = create_key(
        plain.clone(),
        &tiers,
        NewKey {
            name: Some("k".into()),
            scopes: "read".parse::<Scopes>().unwrap(),
            tier: "tiny".into(),
        },
    )
    .await
    .unwrap();
    let mut config = first_replica_alone(&schema);
    config.default_timeout = Duration::from_millis(300);
    let db = PgDatabase::connect(config).await.unwrap();
    let auth = Auth::open(db.clone(), tiers.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let caller = auth.authenticate(&secret).unwrap();
    caller.charge().unwrap();
    caller.charge().unwrap();
    {
        let _turn = RECEIVER.lock().await;
        let _stopped = Stopped::new(receiver(&schema).await);
        let e = auth.flush().await.expect_err("not confirmed");
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
        // Nothing left to write: the counts were not kept for it.
        auth.flush().await.unwrap();
        auth.flush().await.unwrap();
    }
    // Counted once on the primary, not once a flush.
    let other = Auth::open(plain.clone(), tiers, Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(
        other.authenticate(&secret).unwrap().key().unwrap().used(),
        (2, 2)
    );
    db.close();
    plain.close();
    schema.drop_now().await;
}

/// One caller's one-message writes, several waiting for a connection at
/// once: none is acknowledged while the standby does not flush, each once
/// it does, and one that waited past its deadline names it. (They do not
/// go several to a message here: the first one's connection is closed at
/// its deadline, and the next one's new connection has not prepared the
/// statement: `writes_waiting_for_a_connection_go_apart_while_standbys_are_counted`
/// shows that `replicated_to` keeps them apart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_writes_of_one_caller_each_wait_for_the_standby() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let mut config = first_replica_alone(&schema);
    config.one_message_writes = true;
    config.connections = 1;
    let db = with_table(config).await;
    let write = |id: i64, timeout: Duration| {
        let db = db.clone();
        async move {
            db.execute_with(
                "INSERT INTO t VALUES (?1)",
                params![id],
                WriteOptions {
                    timeout: Some(timeout),
                    caller: Some(7),
                    ..WriteOptions::default()
                },
            )
            .await
        }
    };
    // Prepared on the caller's connection, and quick alone, as writes sent
    // several to a message need.
    for i in 0..4 {
        write(i, Duration::from_secs(10)).await.unwrap();
    }
    let _turn = RECEIVER.lock().await;
    let stopped = Stopped::new(receiver(&schema).await);
    // The first holds the only connection until its deadline; the others
    // wait for it meanwhile, then have the connection after it.
    let first = tokio::spawn(write(100, Duration::from_millis(300)));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiting: Vec<_> = (0..3)
        .map(|i| tokio::spawn(write(101 + i, Duration::from_secs(3))))
        .collect();
    let e = first
        .await
        .unwrap()
        .expect_err("not flushed by the standby");
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    for h in waiting {
        let e = h.await.unwrap().expect_err("not flushed by the standby");
        assert!(
            matches!(e.kind(), ErrorKind::OutcomeUnknown | ErrorKind::Timeout),
            "{e}"
        );
        assert!(!e.to_string().contains("after 0 ms"), "{e}");
    }
    drop(stopped);
    let after: Vec<_> = (0..8)
        .map(|i| tokio::spawn(write(200 + i, Duration::from_secs(10))))
        .collect();
    for h in after {
        h.await.unwrap().unwrap();
    }
    db.close();
    schema.drop_now().await;
}

/// With `replicated_to`, one caller's writes that wait for a connection
/// go one to a message, each counted on its own session; without it the
/// same writes go several to a message (the first round, which shows the
/// test would see them go together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_for_a_connection_go_apart_while_standbys_are_counted() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    for replicated_to in [0, STANDBYS] {
        let mut config = schema.config();
        config.replicated_to = replicated_to;
        config.one_message_writes = true;
        config.connections = 1;
        let db = PgDatabase::connect(config).await.unwrap();
        let (w, q) = (
            WriteOptions {
                caller: Some(7),
                ..WriteOptions::default()
            },
            QueryOptions {
                caller: Some(7),
                ..QueryOptions::default()
            },
        );
        db.execute_with("CREATE TABLE IF NOT EXISTS t(id bigint)", (), w)
            .await
            .unwrap();
        let write = |id: i64| db.execute_with("INSERT INTO t VALUES (?1)", params![id], w);
        // Prepared on the one connection, and quick alone, as writes sent
        // several to a message need.
        for i in 0..4 {
            write(i).await.unwrap();
        }
        let before = db.writes_together();
        // The one connection held while two writes queue behind it.
        let hold = db.query_with("SELECT pg_sleep(0.3)::text AS held", (), q);
        let queued = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::join!(write(10), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                write(11).await
            })
        };
        let (held, (first, second)) = tokio::join!(hold, queued);
        held.unwrap();
        first.unwrap();
        second.unwrap();
        let together = db.writes_together() - before;
        if replicated_to == 0 {
            assert!(
                together > 0,
                "the writes went together without replicated_to"
            );
        } else {
            assert_eq!(together, 0, "writes went together with replicated_to");
        }
        db.close();
    }
    schema.drop_now().await;
}

/// A `pg_receivewal` of the test's, killed when dropped, and its folder.
struct Receivewal {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Receivewal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sender that keeps the log but replays none of it (`pg_receivewal`,
/// as archivers run it, flushing each write) could never be promoted: it
/// does not count, even named in `replicated_standbys` (review 223).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_replays_nothing_does_not_count() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let name = format!("lb_receivewal_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (_, rest) = schema.url.split_once('@').unwrap();
    let (server, _) = rest.split_once('/').unwrap();
    let child = std::process::Command::new("pg_receivewal")
        .arg("-d")
        .arg(format!(
            "postgres://postgres@{server}/postgres?application_name={name}"
        ))
        .arg("-D")
        .arg(dir.path())
        .args(["--synchronous", "--no-loop"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pg_receivewal (Debian's postgresql-client)");
    let _receivewal = Receivewal { child, _dir: dir };
    let admin = common::pg::admin(&schema.url).await;
    let since = Instant::now();
    loop {
        let streaming = admin
            .query_opt(
                "SELECT 1 FROM pg_stat_replication \
                 WHERE application_name = $1 AND state = 'streaming' AND flush_lsn IS NOT NULL",
                &[&name],
            )
            .await
            .unwrap();
        if streaming.is_some() {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "pg_receivewal never streamed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut config = first_replica_alone(&schema);
    config.replicated_standbys.push(name);
    let db = with_table(config).await;
    let _turn = RECEIVER.lock().await;
    let stopped = Stopped::new(receiver(&schema).await);
    let e = insert_keyed(&db, 1, "archived", Duration::from_millis(500))
        .await
        .expect_err("only pg_receivewal flushed it");
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    drop(stopped);
    db.close();
    schema.drop_now().await;
}

/// Standbys counted on another server session than the one that committed
/// the write (as a pooler in transaction mode gives each transaction) do
/// not acknowledge it: that session may be on a server restarted since, or
/// on another (review 223).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_counted_on_another_session_do_not_acknowledge_a_write() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let mut config = schema.config();
    config.replicated_to = 1;
    let db = with_table(config).await;
    for who in ["the clients'", "litebridge's own"] {
        db.faults().count_elsewhere(1);
        let e = if who == "the clients'" {
            insert_keyed(&db, 1, "elsewhere", Duration::from_secs(5))
                .await
                .expect_err("counted on another session")
        } else {
            let store = StateStore::new(db.clone(), Arc::new(SystemClock));
            store
                .save(StateUpdate {
                    run_id: "r1".into(),
                    state: serde_json::json!({"step": 1}),
                    ..StateUpdate::default()
                })
                .await
                .expect_err("counted on another session")
        };
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{who}: {e}");
        assert!(
            e.to_string().contains("another server session"),
            "{who}: {e}"
        );
    }
    // The retry, counted on its own session, finds the first write.
    insert_keyed(&db, 1, "elsewhere", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(count(&db).await, 1);
    db.close();
    schema.drop_now().await;
}

/// Review 223: a failover that lost the idempotency secret (written at the
/// first start, before any write was counted), and a front end started
/// after it that made another, left the first front end keying records
/// with the lost one: a retry of its write through the second applied the
/// write again. Now the first is told by its claim, reads the database's
/// secret, and writes nothing that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_whose_idempotency_secret_a_failover_lost_writes_nothing_with_it() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let a = with_table(schema.config()).await;
    // The failover: the secret is gone, and a front end started after it
    // makes another.
    common::pg::admin(&schema.url)
        .await
        .batch_execute(&format!(
            "DELETE FROM {}.litebridge_meta WHERE key = 'claims_secret'",
            schema.own()
        ))
        .await
        .unwrap();
    let b = schema.open().await;
    let write =
        |db: PgDatabase| async move { insert_keyed(&db, 1, "once", Duration::from_secs(5)).await };
    let e = write(a.clone())
        .await
        .expect_err("keyed with a secret that is gone");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("idempotency secret"), "{e}");
    assert_eq!(count(&a).await, 0, "written with it");
    // Sent again, it is written once, and its retry through the other
    // front end finds it.
    write(a.clone()).await.unwrap();
    write(b.clone()).await.unwrap();
    assert_eq!(count(&b).await, 1);
    // Lost with no front end started after: the first keyed write to find
    // it gone makes it again (review 226: every keyed write failed until a
    // front end started).
    common::pg::admin(&schema.url)
        .await
        .batch_execute(&format!(
            "DELETE FROM {}.litebridge_meta WHERE key = 'claims_secret'",
            schema.own()
        ))
        .await
        .unwrap();
    let again =
        |db: PgDatabase| async move { insert_keyed(&db, 2, "twice", Duration::from_secs(5)).await };
    let e = again(a.clone()).await.expect_err("no secret to check");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    again(a.clone()).await.unwrap();
    again(b.clone())
        .await
        .expect_err("the other front end's is not the new one");
    again(b.clone()).await.unwrap();
    assert_eq!(count(&b).await, 2);
    a.close();
    b.close();
    schema.drop_now().await;
}

/// Every kind of write waits for the standby, not only the keyed single
/// statements the tests above send (review 223): a write without a key, a
/// batch, `execute_many`, and the stores' writes each commit on the primary
/// and answer `outcome_unknown` at their deadline while it does not flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_waits_for_the_standby() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let _turn = RECEIVER.lock().await;
    let pid = receiver(&schema).await;
    let mut config = first_replica_alone(&schema);
    // The stores' writes take the default deadline.
    config.default_timeout = Duration::from_millis(500);
    let db = with_table(config).await;
    let short = WriteOptions {
        timeout: Some(Duration::from_millis(500)),
        ..WriteOptions::default()
    };
    let memory = litebridge::store::MemoryStore::new(db.clone(), Arc::new(SystemClock));
    let state = StateStore::new(db.clone(), Arc::new(SystemClock));
    let stopped = Stopped::new(pid);
    let outcomes = [
        (
            "a write without a key",
            db.execute_with("INSERT INTO t VALUES (1)", (), short)
                .await
                .map(drop),
        ),
        (
            "a batch",
            db.batch(
                vec![
                    litebridge::Statement::new("INSERT INTO t VALUES (2)", ()),
                    litebridge::Statement::new("INSERT INTO t VALUES (3)", ()),
                ],
                short,
            )
            .await
            .map(drop),
        ),
        (
            "execute_many",
            db.execute_many(
                "INSERT INTO t VALUES (?1)",
                vec![params![4], params![5]],
                short,
            )
            .await
            .map(drop),
        ),
        (
            "memory.store",
            memory
                .store("agent", "k", &serde_json::json!(1), None)
                .await,
        ),
        (
            "state.save",
            state
                .save(StateUpdate {
                    run_id: "r".into(),
                    state: serde_json::json!({}),
                    ..StateUpdate::default()
                })
                .await
                .map(drop),
        ),
    ];
    for (what, outcome) in outcomes {
        let e = outcome.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{what}: {e}");
    }
    drop(stopped);
    // Each committed on the primary.
    assert_eq!(count(&db).await, 5);
    db.close();
    schema.drop_now().await;
}

/// Review 226: the session a write committed on was read as the clients'
/// role, through `pg_stat_get_activity(integer)`, which docs/postgres.md
/// tells operators they may revoke from `PUBLIC`: every write then
/// answered `outcome_unknown`. It is read through a function of
/// litebridge's role now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_acknowledged_where_the_clients_may_not_read_the_activity() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let admin = common::pg::admin(&schema.url).await;
    let grant = |verb: &'static str| {
        format!(
            "{verb} EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) {} PUBLIC",
            if verb == "GRANT" { "TO" } else { "FROM" }
        )
    };
    admin.batch_execute(&grant("REVOKE")).await.unwrap();
    let config = {
        let mut c = schema.config();
        c.replicated_to = 1;
        c
    };
    let body = tokio::spawn(async move {
        let db = with_table(config).await;
        let write = || {
            db.execute_with(
                "INSERT INTO t VALUES (1)",
                (),
                keyed("hardened", Duration::from_secs(5)),
            )
        };
        write().await.unwrap();
        // Its retry, counted from the position read after its rollback.
        write().await.unwrap();
        assert_eq!(count(&db).await, 1);
        db.close();
    })
    .await;
    admin.batch_execute(&grant("GRANT")).await.unwrap();
    body.unwrap();
    schema.drop_now().await;
}

/// Review 228: a failover that lost the install of this version's start
/// (its functions) left every keyed write failing with "function does not
/// exist" (found at Parse, on a new connection, before the claim's error
/// was looked at), and with `replicated_to` every write answering
/// `outcome_unknown` (its session unread), until a restart. They are made
/// again by the first write to find them gone; not over a schema a newer
/// litebridge wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_a_failover_lost_are_made_again() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let admin = common::pg::admin(&schema.url).await;
    let mut config = schema.config();
    config.replicated_to = 1;
    config.connections = 1;
    let db = with_table(config).await;
    let own = schema.own();
    let write = |id: i64, key: Option<&'static str>| {
        let db = db.clone();
        async move {
            let options = match key {
                Some(k) => keyed(k, Duration::from_secs(5)),
                None => WriteOptions::default(),
            };
            db.execute_with("INSERT INTO t VALUES (?1)", params![id], options)
                .await
        }
    };
    // The claim lost, before this connection first prepared it; over a
    // schema of a newer version first, which is left as it is.
    admin
        .batch_execute(&format!(
            "DROP FUNCTION {own}_claims.claim(bytea, bytea); \
             UPDATE {own}.litebridge_meta SET value = '6' WHERE key = 'schema_version'"
        ))
        .await
        .unwrap();
    let e = write(1, Some("a")).await.expect_err("no claim function");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("newer litebridge"), "{e}");
    admin
        .batch_execute(&format!(
            "UPDATE {own}.litebridge_meta SET value = '5' WHERE key = 'schema_version'"
        ))
        .await
        .unwrap();
    let e = write(1, Some("a")).await.expect_err("no claim function");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    write(1, Some("a")).await.unwrap();
    // The session's function lost: the write committed, its count could
    // not be made; the next writes are acknowledged once it is back.
    admin
        .batch_execute(&format!("DROP FUNCTION {own}_claims.this_session()"))
        .await
        .unwrap();
    let e = write(2, None).await.expect_err("its session unread");
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    let since = Instant::now();
    while write(3, None).await.is_err() {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the function was not made again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close();
    schema.drop_now().await;
}

/// A front end refuses a schema a newer version wrote, naming both
/// versions, before it touches the functions of `claims`: what keeps a
/// front end of version 4 from replacing version 5's (review 226; the
/// version is 5 for that alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_a_newer_version_wrote_is_refused_and_left_as_it_is() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    schema.open().await.close();
    let own = schema.own();
    let admin = common::pg::admin(&schema.url).await;
    let definition = || async {
        admin
            .query_one(
                &format!(
                    "SELECT pg_get_functiondef('{own}_claims.standbys_flushed(pg_lsn, text[])'::regprocedure)"
                ),
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = definition().await;
    admin
        .batch_execute(&format!(
            "UPDATE {own}.litebridge_meta SET value = '6' WHERE key = 'schema_version'; \
             CREATE OR REPLACE FUNCTION {own}_claims.standbys_flushed(at pg_lsn, names text[]) \
             RETURNS TABLE(flushed int8, furthest text) LANGUAGE sql AS $$ SELECT 7::int8, '' $$"
        ))
        .await
        .unwrap();
    let newer = definition().await;
    assert_ne!(newer, before);
    let e = PgDatabase::connect(schema.config())
        .await
        .expect_err("a newer schema");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string().contains("newer litebridge") && e.to_string().contains("version 6"),
        "{e}"
    );
    assert_eq!(
        definition().await,
        newer,
        "the newer version's function replaced"
    );
    schema.drop_now().await;
}

/// Review 228: after a failover lost the idempotency secret, every keyed
/// write in flight ran the whole install (its functions, grants and secret)
/// one after the other under its lock, each holding a connection of its
/// own. One install serves them all now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_find_the_secret_gone_together_install_it_once() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let mut config = schema.config();
    config.connections = 8;
    let db = with_table(config).await;
    // Each connection ready to claim, so that the writes race to the claim.
    let warm: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                insert_keyed(&db, i, &format!("warm{i}"), Duration::from_secs(5)).await
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap().unwrap();
    }
    common::pg::admin(&schema.url)
        .await
        .batch_execute(&format!(
            "DELETE FROM {}.litebridge_meta WHERE key = 'claims_secret'",
            schema.own()
        ))
        .await
        .unwrap();
    let racing: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                insert_keyed(&db, 100 + i, &format!("race{i}"), Duration::from_secs(5)).await
            })
        })
        .collect();
    // Those that claimed before the install are refused (nothing
    // written); one that came after it goes through.
    let mut refused = 0;
    for r in racing {
        match r.await.unwrap() {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "none found the secret gone");
    assert_eq!(db.reinstalls(), 1);
    insert_keyed(&db, 200, "after", Duration::from_secs(5))
        .await
        .unwrap();
    db.close();
    schema.drop_now().await;
}
