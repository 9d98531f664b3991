//! Idempotency keys on SQLite: a write that carries one records it in the
//! same savepoint as its statements, so that the record and the write
//! commit together or not at all, and a second send of the key finds the
//! record and answers with the first send's results instead of running.
//!
//! # Design
//!
//! SQLite has one writer, so there is no race to settle: the write's job
//! looks the key up in `litebridge_claims`, runs the client's statements
//! (held to the client rules, as any client write), then inserts the
//! record, all inside the job's savepoint. A second send of the key in the
//! same batch finds the first's record in the open transaction; one in a
//! later batch finds it committed. If the first failed, its savepoint took
//! the record with it and the retry runs. A COMMIT answered
//! `outcome_unknown` (see `group_commit::commit_failed`) either reached the
//! disk with its record, and a retry after the restart is answered from it,
//! or did not, and the retry runs.
//!
//! The lookup and the record are litebridge's own statements, run trusted
//! inside the client's request ([`guard::as_trusted`]); client SQL cannot
//! read, write or shadow `litebridge_` tables, so, unlike on PostgreSQL, the
//! record's key needs no secret: it is the [`IdempotencyKey`] itself (a
//! hash of the caller and its key).
//!
//! A refusal (the key was recorded with another write) or a replay is the
//! job's *result*, not its failure: if the batch runs again (another
//! request aborted it), the job is asked again, and the record it was
//! answered from may have gone with the first pass (see `group_commit`).
//!
//! The table is made by the stores' migrations, and, on a database the
//! stores never migrated (a `Database` used on its own), by a trusted write
//! of its own before the first keyed write: the same statement, `IF NOT
//! EXISTS`. Records are stamped by a clock that a step of the system's
//! clock cannot move forward ([`Clock`]).

use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension as _};

use crate::db::guard;
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::value::ExecResult;

/// The records' table and its index (also migration 3 -> 4).
pub(crate) const TABLE: &str = "CREATE TABLE IF NOT EXISTS main.litebridge_claims(
         key BLOB PRIMARY KEY,
         result TEXT NOT NULL,
         created_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS main.litebridge_claims_created ON litebridge_claims(created_at);";

/// The table's definition as `sqlite_schema` keeps it: an object of that
/// name with any other is not litebridge's (see `store::schema`).
pub(crate) const TABLE_SQL: &str = "CREATE TABLE litebridge_claims(
         key BLOB PRIMARY KEY,
         result TEXT NOT NULL,
         created_at INTEGER NOT NULL
     ) WITHOUT ROWID";

const LOOKUP: &str = "SELECT result FROM main.litebridge_claims WHERE key = ?1";
const RECORD: &str =
    "INSERT INTO main.litebridge_claims(key, result, created_at) VALUES (?1, ?2, ?3)";

/// What a keyed job answers once its batch commits: the write's results
/// (run now, or recorded before), or why the key cannot answer.
pub(crate) type Answer = Result<Vec<ExecResult>>;

/// Runs `write` at most once for `key`: the recorded results if the key was
/// recorded with this write (`fingerprint`), else `write`'s, recorded with
/// the stamp `now` (microseconds of [`Clock`]).
///
/// # Errors
/// The outer error fails the job (its savepoint is rolled back, nothing is
/// recorded): `write`'s error, or [`Error::TooLarge`] for a record longer
/// than a value may be. The inner one is the answer, after COMMIT:
/// [`Error::InvalidArgument`] naming `idempotency_key` when the key was
/// recorded with another write.
pub(crate) fn once(
    conn: &Connection,
    key: &IdempotencyKey,
    fingerprint: &str,
    now: i64,
    write: impl FnOnce(&Connection) -> Result<Vec<ExecResult>>,
) -> Result<Answer> {
    if let Some(stored) = guard::as_trusted(|| lookup(conn, key))? {
        return Ok(idempotency::decode(&stored, fingerprint));
    }
    let results = write(conn)?;
    let record = idempotency::encode(fingerprint, &results);
    let longest = conn.limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)?;
    if record.len() > usize::try_from(longest).unwrap_or(0) {
        return Err(Error::TooLarge {
            what: format!(
                "the record of this write's idempotency_key ({} bytes, about 20 a statement; \
                 send fewer statements under one key)",
                record.len()
            ),
            limit: u64::try_from(longest).unwrap_or(0),
        });
    }
    guard::as_trusted(|| {
        conn.prepare_cached(RECORD)?
            .execute(rusqlite::params![&key.0[..], record, now])
            .map_err(Error::from)
    })?;
    Ok(Ok(results))
}

fn lookup(conn: &Connection, key: &IdempotencyKey) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(LOOKUP)?
        .query_row([&key.0[..]], |r| r.get(0))
        .optional()?)
}

/// The clock of the records: the system's time when the database was
/// opened, moved on by the monotonic clock, or the system's time now if
/// that is earlier. A system clock stepped forward (a VM resumed from a
/// snapshot, a host whose clock was a day slow until NTP set it) must not
/// age every record at once, or the retry the records are kept for would
/// run again; stepped back, records are kept longer, never shorter.
/// Across a restart the system's time is all there is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall: SystemTime,
    at: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }

    /// Now, in microseconds since the epoch.
    pub(crate) fn now_micros(&self) -> i64 {
        micros((self.wall + self.at.elapsed()).min(SystemTime::now()))
    }

    /// The cutoff of [`FORGET`] for records older than `keep`.
    pub(crate) fn cutoff(&self, keep: Duration) -> i64 {
        self.now_micros()
            .saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX))
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The statement that forgets the records made before `?1` (microseconds),
/// [`idempotency::FORGET_BATCH`] at most: the sweep comes back soon while
/// it finds that many.
pub(crate) const FORGET: &str = "DELETE FROM main.litebridge_claims WHERE key IN (
         SELECT key FROM main.litebridge_claims WHERE created_at <= ?1 LIMIT 10000)";

/// A statement's parameters as the write's fingerprint reads them: named
/// ones in order of name, as the order they come in binds nothing (a
/// stable sort: a name given twice keeps its order). Prefixes are kept:
/// `:a` and `@a` may be two parameters of one statement.
pub(crate) fn params_text(params: &crate::value::Params) -> String {
    use crate::value::Params;
    match params {
        Params::None => idempotency::values_text(&[(); 0]),
        Params::Positional(v) => idempotency::values_text(v),
        Params::Named(n) => {
            let mut named: Vec<_> = n.iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            idempotency::values_text(&named)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{Database, DbConfig, Params, Statement, Value, WriteOptions};

    fn keyed(key: &str) -> WriteOptions {
        WriteOptions {
            idempotency_key: Some(IdempotencyKey::new(0, key).unwrap()),
            ..WriteOptions::default()
        }
    }

    /// A host whose clock was two days slow when the database was opened,
    /// then set right: its records do not all age at once.
    #[test]
    fn a_clock_stepped_forward_does_not_age_the_records() {
        let slow = Clock {
            wall: SystemTime::now() - Duration::from_secs(2 * 24 * 3600),
            at: Instant::now(),
        };
        let stamp = slow.now_micros();
        assert!(stamp < micros(SystemTime::now()) - 24 * 3600 * 1_000_000);
        assert!(slow.cutoff(idempotency::KEEP) < stamp, "forgotten at once");
        // Stepped back instead: the earlier time counts, records kept longer.
        let fast = Clock {
            wall: SystemTime::now() + Duration::from_secs(3600),
            at: Instant::now(),
        };
        assert!(fast.now_micros() <= micros(SystemTime::now()));
        assert!(FORGET.contains(&format!("LIMIT {}", idempotency::FORGET_BATCH)));
    }

    #[test]
    fn named_parameters_read_the_same_in_any_order_and_never_merge() {
        let named = |pairs: &[(&str, i64)]| {
            params_text(&Params::Named(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::Integer(*v)))
                    .collect(),
            ))
        };
        assert_eq!(
            named(&[(":a", 1), (":b", 2)]),
            named(&[(":b", 2), (":a", 1)])
        );
        assert_ne!(
            named(&[(":a", 1), ("@a", 2)]),
            named(&[("@a", 1), (":a", 2)])
        );
        assert_ne!(named(&[(":a", 1)]), named(&[(":a", 2)]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_too_long_fails_the_write_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = DbConfig {
            max_result_bytes: 1024,
            ..DbConfig::default()
        };
        let db = Database::open(dir.path().join("c.db"), config)
            .await
            .unwrap();
        db.execute("CREATE TABLE t(n)", ()).await.unwrap();
        let many: Vec<_> = (0..200)
            .map(|i| Statement::new(format!("INSERT INTO t VALUES ({i})"), Params::None))
            .collect();
        let e = db.batch(many.clone(), keyed("big")).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TooLarge, "{e}");
        assert!(e.to_string().contains("idempotency_key"), "{e}");
        assert_eq!(
            db.query("SELECT count(*) FROM t", ()).await.unwrap().rows[0][0],
            Value::Integer(0)
        );
        // Without the key the batch goes through.
        db.batch(many, WriteOptions::default()).await.unwrap();
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execute_many_without_rows_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("c.db"), DbConfig::default())
            .await
            .unwrap();
        db.execute("CREATE TABLE t(n)", ()).await.unwrap();
        let none = db
            .execute_many("DELETE FROM t", vec![], keyed("m"))
            .await
            .unwrap();
        assert_eq!(none.changes, 0);
        // The key is free for the write that has rows.
        let rows = vec![crate::params![1], crate::params![2]];
        let r = db
            .execute_many("INSERT INTO t VALUES (?1)", rows, keyed("m"))
            .await
            .unwrap();
        assert_eq!(r.changes, 2);
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_kept_a_day_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("c.db"), DbConfig::default())
            .await
            .unwrap();
        db.execute("CREATE TABLE t(n)", ()).await.unwrap();
        let once = keyed("k");
        let count =
            async || db.query("SELECT count(*) FROM t", ()).await.unwrap().rows[0][0].clone();
        for _ in 0..2 {
            db.execute_with("INSERT INTO t VALUES (1)", (), once)
                .await
                .unwrap();
        }
        assert_eq!(count().await, Value::Integer(1));
        assert_eq!(db.forget_claims().await.unwrap(), 0, "younger than a day");
        assert_eq!(
            db.forget_claims_older_than(Duration::ZERO).await.unwrap(),
            1
        );
        // Forgotten: the key is free again.
        db.execute_with("INSERT INTO t VALUES (1)", (), once)
            .await
            .unwrap();
        assert_eq!(count().await, Value::Integer(2));
        db.close().await;
    }
}
