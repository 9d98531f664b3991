//! API keys, scopes and quotas (the library side; the HTTP side is in the
//! CLI's tests).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use litebridge::auth::{
    Auth, Caller, NewKey, Scope, Scopes, TierLimits, Tiers, create_key, list_keys, revoke_key,
};
use litebridge::store::{Clock, migrate};
use litebridge::{Database, DbConfig, Error, ErrorKind};

#[derive(Debug)]
struct TestClock(Mutex<SystemTime>);

impl TestClock {
    /// 2026-11-23 22:00:00 UTC: two hours before a day ends, a week before a month ends.
    fn new() -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(20_780 * 86_400 + 22 * 3_600),
        )))
    }
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

async fn open(dir: &tempfile::TempDir) -> Database {
    let db = Database::open(dir.path().join("app.db"), DbConfig::default())
        .await
        .unwrap();
    migrate(&db).await.unwrap();
    db
}

fn tiers() -> Tiers {
    let mut t = Tiers::default();
    t.set(
        "tiny",
        TierLimits {
            daily: Some(3),
            monthly: Some(5),
            concurrent: Some(2),
        },
    );
    t
}

async fn key(db: &Database, name: &str, scopes: &str, tier: &str) -> String {
    create_key(
        db,
        &tiers(),
        NewKey {
            name: Some(name.into()),
            scopes: scopes.parse::<Scopes>().unwrap(),
            tier: tier.into(),
        },
    )
    .await
    .unwrap()
    .1
}

#[tokio::test]
async fn keys_are_stored_as_hashes_listed_without_secrets_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let secret = key(&db, "ci", "read", "pro").await;
    assert!(secret.starts_with("lb_") && secret.len() == 46, "{secret}");
    let other = key(&db, "ops", "admin", "enterprise").await;
    assert_ne!(secret, other);
    let listed = list_keys(&db).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|k| (k.name.as_str(), k.scopes.to_string(), k.tier.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("ci", "read".into(), "pro"),
            ("ops", "admin".into(), "enterprise")
        ]
    );
    // The secret is nowhere in the file.
    db.close().await;
    let mut bytes = std::fs::read(dir.path().join("app.db")).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("app.db-wal")) {
        bytes.extend(wal);
    }
    let needle = &secret.as_bytes()[3..];
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));

    let db = open(&dir).await;
    let auth = Auth::open(db.clone(), tiers(), TestClock::new())
        .await
        .unwrap();
    assert!(auth.has_keys());
    let caller = auth.authenticate(&secret).unwrap();
    assert_eq!(caller.key().unwrap().name(), "ci");
    assert!(caller.require(Scope::Read, "sql.query").is_ok());
    let e = caller.require(Scope::Write, "sql.execute").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden);
    assert!(
        e.to_string()
            .contains("sql.execute needs the `write` scope"),
        "{e}"
    );
    for wrong in ["", "lb_", "lb_nope", &secret[..secret.len() - 1]] {
        let e = auth.authenticate(wrong).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(!e.to_string().contains("lb_"), "{e}");
    }
}

#[tokio::test]
async fn a_bad_name_scope_or_tier_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    key(&db, "dup", "read", "free").await;
    for (name, tier, needle) in [
        ("dup", "free", "exists already"),
        ("bad name", "free", "\"bad name\""),
        ("ok", "platinum", "\"platinum\""),
    ] {
        let e = create_key(
            &db,
            &tiers(),
            NewKey {
                name: Some(name.into()),
                scopes: Scopes::ALL,
                tier: tier.into(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert_eq!(list_keys(&db).await.unwrap().len(), 1);
}

#[tokio::test]
async fn revocation_from_another_connection_takes_effect_at_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let secret = key(&db, "temp", "write", "pro").await;
    let auth = Auth::open(db.clone(), tiers(), TestClock::new())
        .await
        .unwrap();
    assert!(auth.authenticate(&secret).is_ok());
    // Another process: its own handle on the file.
    let other = open(&dir).await;
    assert!(revoke_key(&other, "temp").await.unwrap());
    assert!(
        !revoke_key(&other, "temp").await.unwrap(),
        "already revoked"
    );
    assert!(auth.refresh().await.unwrap());
    assert_eq!(
        auth.authenticate(&secret).unwrap_err().kind(),
        ErrorKind::Unauthorized
    );
    // Revoking the last key does not bring keyless access back.
    assert!(auth.has_keys());
    assert!(list_keys(&db).await.unwrap()[0].revoked.is_some());
    assert!(!auth.refresh().await.unwrap(), "nothing changed since");
}

fn quota(e: Error) -> (&'static str, Duration) {
    match e {
        Error::QuotaExceeded {
            quota, retry_after, ..
        } => (quota, retry_after),
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn daily_and_monthly_quotas_run_out_and_reset_with_the_calendar() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let secret = key(&db, "small", "read", "tiny").await;
    let clock = TestClock::new();
    let auth = Auth::open(db.clone(), tiers(), clock.clone())
        .await
        .unwrap();
    let caller = auth.authenticate(&secret).unwrap();
    for _ in 0..3 {
        caller.charge().unwrap();
    }
    let (which, after) = quota(caller.charge().unwrap_err());
    assert_eq!(which, "daily");
    assert_eq!(after, Duration::from_secs(2 * 3_600), "until UTC midnight");
    // The next day: two more fit in the month's five.
    clock.advance(Duration::from_secs(2 * 3_600));
    caller.charge().unwrap();
    caller.charge().unwrap();
    let (which, after) = quota(caller.charge().unwrap_err());
    assert_eq!(which, "monthly");
    assert_eq!(after, Duration::from_secs(7 * 86_400), "until December 1st");
    assert_eq!(caller.key().unwrap().used(), (2, 5));
    clock.advance(Duration::from_secs(7 * 86_400));
    caller.charge().unwrap();
    assert_eq!(caller.key().unwrap().used(), (1, 1));
}

#[tokio::test]
async fn counts_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let secret = key(&db, "small", "read", "tiny").await;
    let clock = TestClock::new();
    let auth = Auth::open(db.clone(), tiers(), clock.clone())
        .await
        .unwrap();
    let caller = auth.authenticate(&secret).unwrap();
    caller.charge().unwrap();
    caller.charge().unwrap();
    auth.flush().await.unwrap();
    auth.flush().await.unwrap(); // nothing new: adds nothing
    caller.charge().unwrap(); // not flushed: a crash here loses it
    db.close().await;

    let db = open(&dir).await;
    let auth = Auth::open(db.clone(), tiers(), clock).await.unwrap();
    let caller = auth.authenticate(&secret).unwrap();
    assert_eq!(caller.key().unwrap().used(), (2, 2));
    caller.charge().unwrap();
    assert_eq!(quota(caller.charge().unwrap_err()).0, "daily");
    let listed = list_keys(&db).await.unwrap();
    assert!(
        listed[0].last_used.is_some(),
        "the flush recorded the last use"
    );
}

#[tokio::test]
async fn the_concurrent_limit_refuses_past_its_slots_and_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let secret = key(&db, "small", "read", "tiny").await;
    let auth = Auth::open(db.clone(), tiers(), TestClock::new())
        .await
        .unwrap();
    let caller = auth.authenticate(&secret).unwrap();
    let a = caller.enter().unwrap();
    let _b = caller.enter().unwrap();
    let (which, after) = quota(caller.enter().unwrap_err());
    assert_eq!(which, "concurrent");
    assert!(after > Duration::ZERO);
    drop(a);
    let _c = caller.enter().unwrap();
    // The local user has no quotas.
    let local = Caller::local(Scopes::ALL);
    let _slots: Vec<_> = (0..100).map(|_| local.enter().unwrap()).collect();
}

#[tokio::test]
async fn two_servers_on_one_database_count_against_one_quota() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir).await;
    let secret = key(&db, "shared", "read", "tiny").await;
    let clock = TestClock::new();
    // Two servers: two `Auth`s, each with its own counts in memory.
    let one = Auth::open(db.clone(), tiers(), clock.clone())
        .await
        .unwrap();
    let two = Auth::open(db.clone(), tiers(), clock.clone())
        .await
        .unwrap();
    let (a, b) = (
        one.authenticate(&secret).unwrap(),
        two.authenticate(&secret).unwrap(),
    );
    a.charge().unwrap();
    a.charge().unwrap();
    b.charge().unwrap();
    // Each flush adds its own and reads the other's.
    one.flush().await.unwrap();
    two.flush().await.unwrap();
    one.flush().await.unwrap();
    assert_eq!(a.key().unwrap().used(), (3, 3));
    assert_eq!(b.key().unwrap().used(), (3, 3));
    // The day's three are spent on both.
    assert_eq!(quota(a.charge().unwrap_err()).0, "daily");
    assert_eq!(quota(b.charge().unwrap_err()).0, "daily");
    // A count not written yet is not lost by the reading.
    clock.advance(Duration::from_secs(3 * 3_600));
    a.charge().unwrap();
    one.flush().await.unwrap();
    two.flush().await.unwrap();
    b.charge().unwrap();
    two.flush().await.unwrap();
    one.flush().await.unwrap();
    assert_eq!(a.key().unwrap().used(), (2, 5));
    assert_eq!(b.key().unwrap().used(), (2, 5));
    assert_eq!(quota(b.charge().unwrap_err()).0, "monthly");
}

/// Review 251: a revoked key's counts not written yet were kept only in the
/// list of retired keys, which a flush empties as it starts: a flush that
/// failed put them back in the key's meter, which nothing looked at again,
/// and they were lost. They are written by the next flush.
#[tokio::test]
async fn a_revoked_keys_counts_survive_a_failed_flush() {
    let dir = tempfile::tempdir().unwrap();
    let config = DbConfig::builder()
        .busy_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let db = Database::open(dir.path().join("app.db"), config)
        .await
        .unwrap();
    migrate(&db).await.unwrap();
    let secret = key(&db, "gone", "read", "pro").await;
    let auth = Auth::open(db.clone(), tiers(), TestClock::new())
        .await
        .unwrap();
    for _ in 0..5 {
        auth.authenticate(&secret).unwrap().charge().unwrap();
    }
    assert!(revoke_key(&db, "gone").await.unwrap());
    assert!(auth.refresh().await.unwrap());
    // Another program holds the write lock: the flush fails.
    let other = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    auth.flush().await.expect_err("the file is locked");
    other.execute_batch("ROLLBACK").unwrap();
    auth.flush().await.unwrap();
    let counted: i64 = other
        .query_row(
            "SELECT sum(count) FROM litebridge_quota q JOIN litebridge_keys k ON k.id = q.key_id
             WHERE k.name = 'gone' AND q.period LIKE 'd%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted, 5, "the revoked key's calls were counted");
    db.close().await;
}
