//! Read-your-writes through replicas (issue 19): a write's token, passed to
//! a read on another front end, is never answered with data older than the
//! write, even by a replica that replays 300 ms late; the same reads without
//! the token do see old data (so the test can fail). Needs the cluster of
//! scripts/pg-cluster.sh (`LB_TEST_PG_REPLICAS`, `_DELAYED`).
#![cfg(feature = "postgres")]

mod common;

use litebridge::pg::{Consistency, Fallback, PgDatabase};
use litebridge::{QueryOptions, Value, WriteOptions, params};

fn env(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(str::to_owned).collect())
}

async fn front_end(schema: &common::pg::Schema, replicas: &[String]) -> PgDatabase {
    let config = schema.config().replicas(replicas.iter().cloned());
    PgDatabase::connect(config).await.unwrap()
}

/// Reads that asked for a replica and went to the primary for `why`.
fn fell_back(db: &PgDatabase, why: Fallback) -> u64 {
    db.primary_fallbacks()[why as usize].1
}

async fn value(db: &PgDatabase, consistency: Consistency) -> (i64, Option<litebridge::pg::Token>) {
    let (rows, token) = db
        .query_at(
            "SELECT v FROM kv WHERE k = 1",
            (),
            QueryOptions::default(),
            consistency,
        )
        .await
        .unwrap();
    match rows.rows.first().map(|r| &r[0]) {
        Some(Value::Integer(v)) => (*v, token),
        _ => (-1, token),
    }
}

/// A front end reading from the streaming replica alone (not the late one),
/// with `kv` made and (1, `v`) written: the write's token.
async fn on_the_streaming_replica(
    schema: &common::pg::Schema,
    v: i64,
) -> (PgDatabase, litebridge::pg::Token) {
    let replicas = env("LB_TEST_PG_REPLICAS").expect("set with LB_TEST_PG");
    let delayed = env("LB_TEST_PG_DELAYED").expect("set with LB_TEST_PG");
    let streaming: Vec<String> = replicas
        .iter()
        .filter(|r| !delayed.contains(r))
        .cloned()
        .collect();
    let db = front_end(schema, &streaming).await;
    db.execute_with(
        "CREATE TABLE kv(k int PRIMARY KEY, v bigint NOT NULL)",
        (),
        WriteOptions::default(),
    )
    .await
    .unwrap();
    let (_, token) = db
        .execute_at(
            "INSERT INTO kv VALUES (1, ?1)",
            params![v],
            WriteOptions::default(),
        )
        .await
        .unwrap();
    (db, token.expect("a token"))
}

/// Reads `token` until a replica serves it (it has replayed the write).
async fn until_the_replica_serves(db: &PgDatabase, token: litebridge::pg::Token) {
    for _ in 0..100 {
        let before = db.replica_counts().0;
        value(db, Consistency::Session(token)).await;
        if db.replica_counts().0 > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no replica served {token} within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_front_ends_read_their_writes_from_replicas() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (Some(replicas), Some(delayed)) = (env("LB_TEST_PG_REPLICAS"), env("LB_TEST_PG_DELAYED"))
    else {
        panic!(
            "LB_TEST_PG is set but not LB_TEST_PG_REPLICAS and _DELAYED (scripts/pg-cluster.sh sets all three)"
        );
    };
    let writer = front_end(&schema, &replicas).await;
    let reader = front_end(&schema, &replicas).await;
    assert!(
        replicas.iter().any(|r| delayed.contains(r)),
        "the late replica takes turns too"
    );
    writer
        .execute_with(
            "CREATE TABLE kv(k int PRIMARY KEY, v bigint NOT NULL)",
            (),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let upsert = "INSERT INTO kv VALUES (1, ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v";
    // 2,000 cycles: write on one front end, read on the other with the token.
    let mut stale = 0;
    let mut session = None;
    for i in 0..2000i64 {
        let (_, token) = writer
            .execute_at(upsert, params![i], WriteOptions::default())
            .await
            .unwrap();
        let token = token.expect("a write returns a token when replicas are configured");
        // The session's token: the later of what it wrote and what it read.
        let wanted = session.map_or(token, |s: litebridge::pg::Token| s.max(token));
        let (v, seen) = value(&reader, Consistency::Session(wanted)).await;
        if v != i {
            stale += 1;
        }
        session = seen;
    }
    let (from_replicas, to_primary) = reader.replica_counts();
    eprintln!(
        "2000 cycles: {stale} stale, {from_replicas} reads from replicas, {to_primary} sent to the primary"
    );
    assert_eq!(
        stale, 0,
        "a read with the token saw data older than the write"
    );
    assert_eq!(from_replicas + to_primary, 2000);
    assert!(from_replicas > 0, "no read was served by a replica");

    // Monotonic reads: a session that passes on what each read returns never
    // sees an older value than it saw before, whichever node serves it (the
    // 300 ms replica takes turns with the others). Writes go on elsewhere,
    // and the session never sees their tokens.
    let mut session = litebridge::pg::Token::default();
    let mut last = -1;
    let mut backwards = 0;
    for i in 3000..4000i64 {
        writer
            .execute_with(upsert, params![i], WriteOptions::default())
            .await
            .unwrap();
        let (v, seen) = value(&reader, Consistency::Session(session)).await;
        if v < last {
            backwards += 1;
        }
        last = last.max(v);
        session = seen.expect("a session read returns a token");
    }
    eprintln!("1000 session reads while another front end writes: {backwards} went back in time");
    assert_eq!(backwards, 0, "a session read went back in time");

    // The same reads without the token, from the replica 300 ms behind: old data.
    let lagging = front_end(&schema, &delayed).await;
    let mut stale_without = 0;
    for i in 2000..2200i64 {
        writer
            .execute_with(upsert, params![i], WriteOptions::default())
            .await
            .unwrap();
        let (v, _) = value(&lagging, Consistency::Any).await;
        if v != i {
            stale_without += 1;
        }
    }
    eprintln!("200 cycles without the token: {stale_without} stale");
    assert!(
        stale_without > 0,
        "the lagging replica never served old data: the test cannot tell"
    );
    // With the token, the lagging replica is passed over for the primary.
    let (_, token) = writer
        .execute_at(upsert, params![9999], WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        value(&lagging, Consistency::Session(token.unwrap()))
            .await
            .0,
        9999
    );
    for db in [writer, reader, lagging] {
        db.close();
    }
    schema.drop_now().await;
}

/// A read that went to the primary returns the primary's position, not the
/// token it was given: it may have seen later writes (of others), and a
/// replica between the two positions would otherwise serve the next read of
/// the session from before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_the_primary_moves_the_session_past_what_it_saw() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let delayed = env("LB_TEST_PG_DELAYED").expect("set with LB_TEST_PG");
    // (The writer lists a replica too: writes return tokens only then.)
    let writer = front_end(&schema, &delayed).await;
    let reader = front_end(&schema, &delayed).await;
    writer
        .execute_with(
            "CREATE TABLE kv(k int PRIMARY KEY, v bigint NOT NULL)",
            (),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    // Let the late replica have the table before the rounds start.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let upsert = "INSERT INTO kv VALUES (1, ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v";
    let mut backwards = 0;
    for round in 0..3i64 {
        let mine = writer
            .execute_at(upsert, params![round * 2], WriteOptions::default())
            .await
            .unwrap()
            .1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Someone else's write, whose token this session never gets.
        writer
            .execute_with(upsert, params![round * 2 + 1], WriteOptions::default())
            .await
            .unwrap();
        // The replica (300 ms late) is behind `mine`: the primary answers,
        // with the other write in it.
        let token = mine.expect("a token");
        let (first, seen) = value(&reader, Consistency::Session(token)).await;
        assert_eq!(first, round * 2 + 1);
        // Now the replica is past `mine` but not past the other write.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let (second, _) = value(&reader, Consistency::Session(seen.unwrap())).await;
        if second < first {
            backwards += 1;
        }
    }
    assert_eq!(backwards, 0, "the session went back in time");
    for db in [writer, reader] {
        db.close();
    }
    schema.drop_now().await;
}

/// After a failover the new primary writes on a new timeline, and a node
/// left on the old one may have replayed past a new write's position
/// without holding it. A token names its timeline, and only a replica on
/// that timeline serves it. Here the replicas are on the primary's
/// timeline: a token of the same position on the next timeline stands for
/// the new primary's write, and must not be served by them (without the
/// timeline check, they pass it: their replay is past the position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_timeline_is_not_served_by_these_replicas() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, token) = on_the_streaming_replica(&schema, 7).await;
    assert!(
        token.timeline >= 1,
        "a write's token names its timeline: {token}"
    );
    assert!(
        token.to_string().ends_with(&format!("@{}", token.timeline)),
        "{token}"
    );
    // The replica catches up and serves the token itself.
    let mut served = false;
    for _ in 0..100 {
        let before = db.replica_counts().0;
        let (v, seen) = value(&db, Consistency::Session(token)).await;
        assert_eq!(v, 7);
        assert_eq!(seen.map(|t| t.timeline), Some(token.timeline));
        if db.replica_counts().0 > before {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(served, "the streaming replica never served the token");
    // The same position on the next timeline (the replica's guard refuses
    // it), and on none (not sent to a replica at all): the primary.
    for (other, why) in [
        (
            litebridge::pg::Token::new(token.timeline + 1, token.lsn),
            Fallback::Behind,
        ),
        (litebridge::pg::Token::new(0, token.lsn), Fallback::Token),
    ] {
        let (replica_reads, _) = db.replica_counts();
        let before = fell_back(&db, why);
        let (v, _) = value(&db, Consistency::Session(other)).await;
        assert_eq!(v, 7);
        assert_eq!(
            db.replica_counts().0,
            replica_reads,
            "a replica served the token {other}"
        );
        assert_eq!(
            fell_back(&db, why),
            before + 1,
            "{other}: {:?}",
            db.primary_fallbacks()
        );
    }
    db.close();
    schema.drop_now().await;
}

/// Found by a hostile review: a replica that received a batch the promoted
/// node never got, pointed at the new primary and restarted after a crash,
/// replays its own log of that batch past the switch point and then
/// streams from the new primary, reporting its timeline with a replay
/// position past the new primary's writes, which it does not hold
/// (`scripts/pg-fork.sh` builds it: P with standbys A and B, B ahead when
/// P crashes, A promoted). A session read with a new write's token must not
/// be served by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_a_history_the_cluster_gave_up_serves_no_session_read() {
    if common::pg::url().is_none() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-fork.sh");
    let run = |step: &str| {
        let out = std::process::Command::new(script)
            .arg(step)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-fork.sh {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Stopped however the test ends.
    struct Stop(&'static str);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new(self.0).arg("stop").output();
        }
    }
    let _stop = Stop(script);
    let settings = run("start");
    let node = |name: &str| {
        settings
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export LB_TEST_PG_FORK_{name}='")))
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or_else(|| panic!("pg-fork.sh start printed no {name}: {settings}"))
            .to_owned()
    };
    let (p, a, b) = (node("P"), node("A"), node("B"));
    let url = |at: &str| format!("postgres://postgres@{at}/postgres");
    // litebridge's schema and functions are made on P, before the fork,
    // and both standbys replay them.
    let schema = common::pg::Schema::on(url(&p)).await;
    schema.open().await.close();
    let admin = common::pg::admin(&url(&p)).await;
    let made = admin
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    for standby in [&a, &b] {
        let s = common::pg::admin(&url(standby)).await;
        for _ in 0..200 {
            let r = s
                .query_one(
                    "SELECT pg_catalog.pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&made],
                )
                .await
                .unwrap();
            // NULL until the standby has replayed anything.
            if r.get::<_, Option<bool>>(0) == Some(true) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    drop(admin);
    run("fork");
    let config = litebridge::pg::PgConfig::new(url(&a))
        .client(common::pg::CLIENT_ROLE, None)
        .client_schema(schema.name.clone())
        .schema(schema.own())
        .replicas([b.clone()]);
    let db = PgDatabase::connect(config).await.unwrap();
    db.execute_with(
        "CREATE TABLE kv(k int PRIMARY KEY, v bigint NOT NULL)",
        (),
        WriteOptions::default(),
    )
    .await
    .unwrap();
    // The state under test: B streams timeline 2 from A, with a replay
    // position past anything A wrote and past what its receiver wrote.
    let on_b = common::pg::admin(&url(&b)).await;
    let forked = "SELECT r.status = 'streaming' AND r.received_tli = 2 \
         AND pg_catalog.pg_last_wal_replay_lsn() > r.written_lsn \
         AND pg_catalog.pg_last_wal_replay_lsn() > $1::text::pg_lsn \
         FROM pg_catalog.pg_stat_wal_receiver r";
    let on_a = common::pg::admin(&url(&a)).await;
    let a_at = || async {
        on_a.query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let mut is_forked = false;
    for _ in 0..250 {
        let at = a_at().await;
        // NULL while B's receiver has not reported its positions yet.
        if let Ok(Some(r)) = on_b.query_opt(forked, &[&at]).await
            && r.get::<_, Option<bool>>(0) == Some(true)
        {
            is_forked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(is_forked, "B did not reach the forked state");
    // B answers reads: an `any` read is served there.
    let before = db.replica_counts();
    db.query_at("SELECT 1", (), QueryOptions::default(), Consistency::Any)
        .await
        .unwrap();
    assert_eq!(
        db.replica_counts().0,
        before.0 + 1,
        "B serves no read at all"
    );
    let (_, fallbacks) = db.replica_counts();
    let behind = fell_back(&db, Fallback::Behind);
    let mut served_by_b = 0;
    for i in 0..20i64 {
        let (_, token) = db
            .execute_at(
                "INSERT INTO kv VALUES (1, ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                params![i],
                WriteOptions::default(),
            )
            .await
            .unwrap();
        let token = token.expect("a token");
        assert_eq!(token.timeline, 2, "A writes on timeline 2: {token}");
        let before = db.replica_counts().0;
        let read = db
            .query_at(
                "SELECT v FROM kv WHERE k = 1",
                (),
                QueryOptions::default(),
                Consistency::Session(token),
            )
            .await;
        served_by_b += db.replica_counts().0 - before;
        let rows = read.unwrap_or_else(|e| panic!("read {i} with {token}: {e}"));
        assert_eq!(
            rows.0.rows[0][0],
            Value::Integer(i),
            "read {i} with {token}"
        );
    }
    let at = a_at().await;
    let still = on_b.query_one(forked, &[&at]).await.unwrap();
    assert!(
        still.get::<_, Option<bool>>(0) == Some(true),
        "B left the forked state during the reads"
    );
    let (_, fallbacks_after) = db.replica_counts();
    eprintln!(
        "20 session reads: {served_by_b} served by B, {} by the primary A",
        fallbacks_after - fallbacks
    );
    db.close();
    assert_eq!(served_by_b, 0, "the forked replica served session reads");
    assert_eq!(fallbacks_after - fallbacks, 20);
    // Each refused by the replica's guard, which saw it was not on the
    // token's history.
    assert_eq!(
        fell_back(&db, Fallback::Behind) - behind,
        20,
        "{:?}",
        db.primary_fallbacks()
    );
}

/// A read that a replica cancels for a recovery conflict (it held up the
/// replay of a lock the primary took; scripts/pg-cluster.sh's replicas
/// wait 300 ms) is read again on the primary, which has no such conflict,
/// instead of answering `busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cancelled_by_a_replicas_recovery_is_read_on_the_primary() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, token) = on_the_streaming_replica(&schema, 1).await;
    // The read below runs there.
    until_the_replica_serves(&db, token).await;
    let (replica_reads, fallbacks) = db.replica_counts();
    let conflicts = fell_back(&db, Fallback::Conflict);
    let read = db.query_at(
        "SELECT count(*) FROM kv, pg_sleep(2)",
        (),
        QueryOptions::default(),
        Consistency::Session(token),
    );
    let lock = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        db.execute_with(
            "ALTER TABLE kv ADD COLUMN x int",
            (),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    };
    let (read, ()) = tokio::join!(read, lock);
    let (rows, _) = read.expect("read again on the primary, not busy");
    assert_eq!(rows.rows[0][0], Value::Integer(1));
    assert_eq!(db.replica_counts(), (replica_reads, fallbacks + 1));
    assert_eq!(fell_back(&db, Fallback::Conflict), conflicts + 1);
    db.close();
    schema.drop_now().await;
}

/// Found by a hostile review: a client that ends its own session on a
/// replica (or runs past the deadline there) must not get the replica left
/// alone for everyone; only failures before its read began rest it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_ends_its_own_session_does_not_rest_the_replica() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, token) = on_the_streaming_replica(&schema, 3).await;
    let served = |db: &PgDatabase| db.replica_counts().0;
    until_the_replica_serves(&db, token).await;
    // The read kills its own backend on the replica (and then on the
    // primary, where it is read again): an error for this client only.
    let failed = fell_back(&db, Fallback::Failed);
    let killed = db
        .query_at(
            "SELECT pg_catalog.pg_terminate_backend(pg_catalog.pg_backend_pid())",
            (),
            QueryOptions::default(),
            Consistency::Session(token),
        )
        .await;
    assert!(killed.is_err(), "{killed:?}");
    assert_eq!(fell_back(&db, Fallback::Failed), failed + 1);
    // The next reader is still served by the replica.
    let before = served(&db);
    let (v, _) = value(&db, Consistency::Session(token)).await;
    assert_eq!(v, 3);
    assert_eq!(served(&db), before + 1, "the replica was left alone");
    db.close();
    schema.drop_now().await;
}

/// Reads that ask for a replica which cannot serve them are answered by the
/// primary and counted by why: a node that is not in recovery
/// (`not_a_replica`), one that cannot be reached (`failed`), and then, while
/// either is left alone, `resting`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_replica_cannot_serve_are_counted_by_why() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let primary: tokio_postgres::Config = schema.url.parse().unwrap();
    let host = match &primary.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test server is reached over TCP, not {other:?}"),
    };
    let primary_node = format!("{host}:{}", primary.get_ports()[0]);
    // Nothing listens on port 1 of the loopback.
    for (replica, first) in [
        (primary_node.as_str(), Fallback::NotAReplica),
        ("127.0.0.1:1", Fallback::Failed),
    ] {
        let db = front_end(&schema, &[replica.to_owned()]).await;
        for n in 0..2 {
            let (rows, _) = db
                .query_at("SELECT 1", (), QueryOptions::default(), Consistency::Any)
                .await
                .unwrap_or_else(|e| panic!("replica {replica}, read {n}: {e}"));
            assert_eq!(rows.rows[0][0], Value::Integer(1));
        }
        assert_eq!(fell_back(&db, first), 1, "{replica}");
        assert_eq!(fell_back(&db, Fallback::Resting), 1, "{replica}");
        assert_eq!(db.replica_counts(), (0, 2), "{replica}");
        db.close();
    }
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_will_not_give_its_position_still_serves_the_read() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, token) = on_the_streaming_replica(&schema, 7).await;
    // Not before the replica has the table: a read of it there failed
    // ("relation kv does not exist") one run in five.
    until_the_replica_serves(&db, token).await;
    // The position query after a replica's read calls litebridge's
    // function, which the clients' role may no longer call once the
    // replica replays this: the query fails, and aborts the read's
    // transaction after its rows came.
    let admin = common::pg::admin(&schema.url).await;
    admin
        .batch_execute(&format!(
            "REVOKE EXECUTE ON FUNCTION {}_claims.received_timeline() FROM {}",
            schema.own(),
            common::pg::CLIENT_ROLE
        ))
        .await
        .unwrap();
    let mut without_position = 0;
    for _ in 0..100 {
        let (v, token) = value(&db, Consistency::Any).await;
        assert!(v == 7 || v == -1, "{v}");
        if token.is_none() && v == 7 {
            without_position += 1;
            if without_position == 3 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        without_position, 3,
        "the replica never served a read without its position"
    );
    assert_eq!(
        fell_back(&db, Fallback::Failed),
        0,
        "a read went to the primary"
    );
    db.close();
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cut_before_a_failing_row_answers_on_either_node() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, _) = on_the_streaming_replica(&schema, 1).await;
    let cut = QueryOptions {
        max_rows: Some(2),
        ..QueryOptions::default()
    };
    // The statement's error aborts the transaction after the rows kept
    // came, so the position query after it fails: not the read's failure,
    // on the primary (strong) or the replica (any).
    for consistency in [Consistency::Strong, Consistency::Any] {
        for _ in 0..2 {
            let (rows, token) = db
                .query_at(common::pg::FAILS_LATE, (), cut, consistency)
                .await
                .unwrap_or_else(|e| panic!("{consistency:?}: {e}"));
            assert_eq!(
                rows.rows,
                vec![vec![Value::Integer(1)], vec![Value::Integer(2)]]
            );
            assert!(rows.truncated);
            // The primary's position, read again once the read ended (it
            // fails on a standby reached as the primary).
            if consistency == Consistency::Strong {
                assert!(token.is_some(), "a strong read answers its position");
            }
        }
    }
    let e = db
        .query_at(
            "SELECT 1 / 0",
            (),
            QueryOptions::default(),
            Consistency::Strong,
        )
        .await
        .expect_err("division by zero");
    assert!(e.to_string().contains("division by zero"), "{e}");
    db.close();
    schema.drop_now().await;
}

/// Reads of one caller that went in one message with a read that failed
/// still answer the primary's position after them (they run again on
/// their own), or a session would lose what they saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_went_with_a_failing_one_still_answers_a_position() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let delayed = env("LB_TEST_PG_DELAYED").expect("set with LB_TEST_PG");
    let mut config = schema.config().replicas(delayed.iter().cloned());
    config.connections = 1;
    config.one_message_reads = true;
    let db = PgDatabase::connect(config).await.unwrap();
    let q = QueryOptions {
        caller: Some(1),
        ..QueryOptions::default()
    };
    let read =
        |sql: &'static str, p: litebridge::Params| db.query_at(sql, p, q, Consistency::Strong);
    let int = "SELECT ?1::int";
    let divide = "SELECT (10 / ?1)::int";
    read(int, params![1]).await.unwrap();
    // Noted on the connection (its session reset for caller 1 first).
    read(divide, params![1]).await.unwrap();
    read(divide, params![1]).await.unwrap();
    let hold = read("SELECT pg_sleep(0.3)::text", params![]);
    let queued = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tokio::join!(read(int, params![2]), read(divide, params![0]))
    };
    let (held, (before, failed)) = tokio::join!(hold, queued);
    held.unwrap();
    assert!(failed.is_err());
    let (rows, token) = before.unwrap();
    assert_eq!(rows.rows, [[Value::Integer(2)]]);
    assert!(token.is_some(), "the read's position");
    db.close();
    schema.drop_now().await;
}

/// A read can run on a replica a function whose `SET` clause switches off
/// the server's check of its client, and that catches its cancel (the
/// limit the twenty-seventh session left: litebridge's own role ended such
/// statements on the primary only). It is ended on the replica too, past
/// its deadline and when its caller gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_read_on_a_replica_is_ended() {
    use std::time::Duration;
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, _) = on_the_streaming_replica(&schema, 1).await;
    let (_, token) = db
        .execute_at(
            "CREATE FUNCTION spin() RETURNS int LANGUAGE plpgsql \
             SET client_connection_check_interval TO 0 AS $$ BEGIN LOOP BEGIN \
             PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN NULL; END; \
             END LOOP; END $$",
            (),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let token = token.expect("a token");
    until_the_replica_serves(&db, token).await;
    let replica = on_node(&schema.url, &streaming_replica());
    let nodes = [schema.url.clone(), replica.clone()];
    let read = |tag: &'static str, timeout: Duration| {
        let db = db.clone();
        async move {
            let sql = format!("SELECT spin() /* {tag} */");
            let options = QueryOptions {
                timeout: Some(timeout),
                ..QueryOptions::default()
            };
            db.query_at(&sql, (), options, Consistency::Session(token))
                .await
        }
    };
    // Each case is tried up to three times: a read the replica cancels
    // for a recovery conflict (other tests write on the primary) goes to
    // the primary, and proves nothing here.
    let mut ran = false;
    for _ in 0..3 {
        // Past its deadline: half of it on the replica, then on the primary.
        let (e, seen_there) = tokio::join!(
            read("replica-deadline", Duration::from_millis(2000)),
            seen(&replica, "replica-deadline")
        );
        let e = e.expect_err("past its deadline");
        assert_eq!(e.kind(), litebridge::ErrorKind::Timeout, "{e}");
        for node in &nodes {
            assert_eq!(
                ended(node, "replica-deadline").await,
                0,
                "still runs on {node}"
            );
        }
        ran |= seen_there;
        if ran {
            break;
        }
    }
    assert!(ran, "the read never ran on the replica");
    ran = false;
    for _ in 0..3 {
        // Given up on with an hour left, while it runs on the replica.
        let reading = tokio::spawn(read("replica-given-up", Duration::from_secs(3600)));
        let seen_there = seen(&replica, "replica-given-up").await;
        reading.abort();
        assert!(reading.await.unwrap_err().is_cancelled());
        for node in &nodes {
            assert_eq!(
                ended(node, "replica-given-up").await,
                0,
                "still runs on {node}"
            );
        }
        ran |= seen_there;
        if ran {
            break;
        }
    }
    assert!(ran, "the read never ran on the replica");
    db.close();
    schema.drop_now().await;
}

/// Found by review 122: a connection to a replica whose server process
/// litebridge's own role cannot name (its connection reached another server
/// than the clients' one, an address that leads to several) is not used,
/// so no statement runs there beyond the backstop's reach; the read is
/// answered by the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_connection_whose_process_cannot_be_named_is_not_used() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, token) = on_the_streaming_replica(&schema, 4).await;
    // Three tries, each reaching "another server".
    db.faults().other_server(3);
    let failed = fell_back(&db, Fallback::Failed);
    let served = db.replica_counts().0;
    let (v, _) = value(&db, Consistency::Session(token)).await;
    assert_eq!(v, 4);
    assert_eq!(db.replica_counts().0, served, "the replica served nothing");
    assert_eq!(fell_back(&db, Fallback::Failed), failed + 1);
    db.close();
    schema.drop_now().await;
}

/// Found by review 122: a read whose own deadline is too short to reach a
/// replica (`timeout_ms: 1`) rested the replica for everyone, and a key
/// could keep every read on the primary that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_short_deadline_rests_no_replica() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let (db, token) = on_the_streaming_replica(&schema, 5).await;
    until_the_replica_serves(&db, token).await;
    for _ in 0..3 {
        let short = QueryOptions {
            timeout: Some(std::time::Duration::from_millis(1)),
            ..QueryOptions::default()
        };
        // A statement that takes longer than the deadline (a bare
        // `SELECT 1` was once answered within the millisecond, in CI).
        let r = db
            .query_at(
                "SELECT 1 FROM pg_sleep(0.05)",
                (),
                short,
                Consistency::Session(token),
            )
            .await;
        assert!(r.is_err(), "{r:?}");
    }
    let served = db.replica_counts().0;
    let (v, _) = value(&db, Consistency::Session(token)).await;
    assert_eq!(v, 5);
    assert_eq!(
        db.replica_counts().0,
        served + 1,
        "the replica still serves"
    );
    db.close();
    schema.drop_now().await;
}

/// The streaming replica (not the late one) of the test cluster.
fn streaming_replica() -> String {
    let delayed = env("LB_TEST_PG_DELAYED").expect("set with LB_TEST_PG");
    env("LB_TEST_PG_REPLICAS")
        .expect("set with LB_TEST_PG")
        .into_iter()
        .find(|r| !delayed.contains(r))
        .expect("a streaming replica")
}

/// Whether a statement tagged `tag` is seen running on the server of `url`
/// within five seconds.
async fn seen(url: &str, tag: &str) -> bool {
    let admin = common::pg::admin(url).await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/* {tag} */' \
         AND pid <> pg_backend_pid()"
    );
    for _ in 0..100 {
        if admin.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) > 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// `url` (an admin URL) with its `host:port` replaced by `node`'s.
fn on_node(url: &str, node: &str) -> String {
    let at = url.find('@').expect("a user in the admin URL") + 1;
    let path = url[at..].find('/').map_or(url.len(), |p| at + p);
    format!("{}{node}{}", &url[..at], &url[path..])
}

/// How many statements tagged `tag` still ran on the server of `url` after
/// up to ten seconds; those are then terminated, so a failing test leaves
/// nothing running.
async fn ended(url: &str, tag: &str) -> i64 {
    let admin = common::pg::admin(url).await;
    let running = format!(
        "FROM pg_stat_activity WHERE query LIKE '%/* {tag} */' AND pid <> pg_backend_pid()"
    );
    let mut left = 0;
    for _ in 0..100 {
        left = admin
            .query_one(&format!("SELECT count(*) {running}"), &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = admin
        .execute(&format!("SELECT pg_terminate_backend(pid) {running}"), &[])
        .await;
    left
}

/// A URL that leads to a standby is refused at start, saying so and naming
/// the URL (the docs' audit, review 205: the migration's "cannot execute
/// CREATE SCHEMA in a read-only transaction" was all it said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_leads_to_a_standby_is_refused_saying_so() {
    let Some(schema) = common::pg::Schema::new().await else {
        return;
    };
    let replicas = env("LB_TEST_PG_REPLICAS").expect("set with LB_TEST_PG");
    let (head, tail) = schema.url.split_once('@').unwrap();
    let path = &tail[tail.find('/').unwrap()..];
    let on_standby = format!("{head}@{}{path}", replicas[0]);
    let config = litebridge::pg::PgConfig::new(on_standby)
        .client(common::pg::CLIENT_ROLE, None)
        .client_schema(schema.name.clone())
        .schema(schema.own());
    let e = PgDatabase::connect(config).await.expect_err("refused");
    let text = e.to_string();
    assert_eq!(e.kind(), litebridge::ErrorKind::Unavailable, "{text}");
    assert!(
        text.contains("standby") && text.contains(&replicas[0]),
        "{text}"
    );
    schema.drop_now().await;
}
