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
//! The table is made by the stores' migrations, and by each handle before
//! its first keyed write or sweep (a `Database` used on its own may never
//! be migrated): the same statement, `IF NOT EXISTS`, in a trusted write of
//! its own. That write also reads where the records' own clock starts
//! ([`Clock`]): a record is forgotten only when it is a day old by both
//! that clock and the system's.
//!
//! A record answers only a send of its own write: no rows in
//! `execute_many` write nothing and record nothing (as on PostgreSQL), so
//! they are neither recorded nor refused. A replay in a batch whose COMMIT
//! then fails is told that COMMIT's error, although the write it answers
//! for committed before: a retry gets the record.

use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension as _};

use crate::db::guard;
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::value::ExecResult;

/// The records' table and its index (also migration 3 -> 4). Their text,
/// as SQLite keeps it, is checked at open (`store::schema`): never edit it.
pub(crate) const TABLE: &str = "CREATE TABLE IF NOT EXISTS main.litebridge_claims(
         key BLOB PRIMARY KEY,
         result TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         clock_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS main.litebridge_claims_created ON litebridge_claims(created_at);
     CREATE INDEX IF NOT EXISTS main.litebridge_claims_clock ON litebridge_claims(clock_at, created_at);";

/// The table's definition as `sqlite_schema` keeps it: an object of that
/// name with any other is not litebridge's (see `store::schema`).
pub(crate) const TABLE_SQL: &str = "CREATE TABLE litebridge_claims(
         key BLOB PRIMARY KEY,
         result TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         clock_at INTEGER NOT NULL
     ) WITHOUT ROWID";

const LOOKUP: &str = "SELECT result FROM main.litebridge_claims WHERE key = ?1";
const RECORD: &str = "INSERT INTO main.litebridge_claims(key, result, created_at, clock_at)
     VALUES (?1, ?2, ?3, ?4)";

/// What a keyed job answers once its batch commits: the write's results
/// (run now, or recorded before), or why the key cannot answer.
pub(crate) type Answer = Result<Vec<ExecResult>>;

/// Runs `write` at most once for `key`: the recorded results if the key was
/// recorded with this write (`fingerprint`), else `write`'s, recorded with
/// the time of `clock`.
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
    clock: &Clock,
    write: impl FnOnce(&Connection) -> Result<Vec<ExecResult>>,
) -> Result<Answer> {
    if let Some(stored) = longer_values(conn, || guard::as_trusted(|| lookup(conn, key)))? {
        return Ok(idempotency::decode(&stored, fingerprint));
    }
    let results = write(conn)?;
    let record = idempotency::encode(fingerprint, &results);
    longer_values(conn, || {
        // The row must fit as well as its result: its key and stamp, and
        // SQLite's record header, take under a hundred bytes.
        let longest = conn.limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH)?;
        if record.len() + 100 > usize::try_from(longest).unwrap_or(0) {
            return Err(Error::TooLarge {
                what: format!(
                    "the record of this write's idempotency_key ({} bytes: about 20 a statement, \
                     and its returned rows as JSON; send fewer statements or rows under one key)",
                    record.len()
                ),
                limit: u64::try_from(longest).unwrap_or(0),
            });
        }
        guard::as_trusted(|| {
            conn.prepare_cached(RECORD)?
                .execute(rusqlite::params![
                    &key.0[..],
                    record,
                    micros(SystemTime::now()),
                    clock.now_micros()
                ])
                .map_err(Error::from)
        })
    })?;
    Ok(Ok(results))
}

/// The longest a record may be: [`longer_values`]' eight times the
/// limit, but never past this (a record is kept a day, and built in
/// memory outside any request's budget).
const MOST_RECORD: i32 = 64 << 20;

/// Runs `f` with the connection's length limit (`db.max_result_bytes`, for
/// client SQL) raised for a record: a keyed write's rows, all within the
/// limit, are kept in its record as JSON, up to six times their bytes (a
/// control character is `\u0001`); so eight times the limit and a megabyte
/// for the statements' counts, up to [`MOST_RECORD`]. SQLite refuses to
/// write, and to read back, a value past the limit. Only litebridge's own
/// statements run meanwhile, and the limit is put back however `f` ends
/// (a panic too: the writer goes on with the connection).
fn longer_values<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH;
    struct Restore<'c>(&'c Connection, i32);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = self.0.set_limit(SQLITE_LIMIT_LENGTH, self.1);
        }
    }
    let before = conn.limit(SQLITE_LIMIT_LENGTH)?;
    let longer = before
        .saturating_mul(8)
        .saturating_add(1 << 20)
        .min(MOST_RECORD)
        .max(before);
    let _restore = Restore(conn, before);
    conn.set_limit(SQLITE_LIMIT_LENGTH, longer)?;
    f()
}

fn lookup(conn: &Connection, key: &IdempotencyKey) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(LOOKUP)?
        .query_row([&key.0[..]], |r| r.get(0))
        .optional()?)
}

/// The key of the row that keeps the records' clock between handles (see
/// [`Clock`]): one byte, where every record's key is 32.
const MARK: &[u8] = &[0];

/// Moves the mark up to `now` (never down).
const SET_MARK: &str = "INSERT INTO main.litebridge_claims(key, result, created_at, clock_at)
     VALUES (?1, '', 0, ?2)
     ON CONFLICT(key) DO UPDATE SET clock_at = max(clock_at, excluded.clock_at)";

/// The records' own clock, in microseconds.
///
/// A record has two ages: by the system's clock (`created_at`) and by this
/// clock (`clock_at`), and is forgotten when both have passed
/// [`KEEP`](idempotency::KEEP) (or the first has passed [`LONG_AGO`] times
/// it). A step of the system's clock (a VM resumed from a snapshot, a host
/// a day slow until NTP set it) ages records by the first only: this one
/// is not moved by it. It starts from the latest time written in the table
/// (a record's, or the mark each handle leaves when it starts and at each
/// sweep; the system's time on an empty table) and runs by the monotonic
/// clock while the handle is open; time while no handle is open does not
/// count. Two services open at once read it within about a minute of each
/// other (each sweeps once a minute); a handle that never sweeps may be
/// further behind, which keeps records longer by its reading and shorter by
/// the others', where the system's clock still holds them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: i64,
    at: Instant,
}

impl Clock {
    /// Makes the table if it is missing, reads where the clock starts and
    /// leaves the mark there; runs as a trusted write of its own.
    pub(crate) fn start(conn: &Connection) -> Result<Clock> {
        conn.execute_batch(TABLE)?;
        // A value that is not a whole number, or so large that the clock
        // would stop at the largest one, is not litebridge's: the system's
        // time instead. (By the index: the latest first.)
        let latest: Option<i64> = conn
            .query_row(
                "SELECT clock_at FROM main.litebridge_claims
                  WHERE typeof(clock_at) = 'integer' AND clock_at < 4611686018427387904
                  ORDER BY clock_at DESC LIMIT 1",
                [],
                |r| r.get::<_, rusqlite::types::Value>(0),
            )
            .optional()?
            .and_then(|v| match v {
                rusqlite::types::Value::Integer(i) => Some(i),
                _ => None,
            });
        let clock = Clock {
            base: latest.unwrap_or_else(|| micros(SystemTime::now())),
            at: Instant::now(),
        };
        conn.prepare_cached(SET_MARK)?
            .execute(rusqlite::params![MARK, clock.base])?;
        Ok(clock)
    }

    /// Now, in microseconds.
    pub(crate) fn now_micros(&self) -> i64 {
        let ran = i64::try_from(self.at.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.base.saturating_add(ran)
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `now` less `keep`, in microseconds.
fn before(now: i64, keep: Duration) -> i64 {
    now.saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX))
}

/// Forgets the records older than `keep` by both clocks, or older than
/// [`LONG_AGO`] times `keep` by the system's alone,
/// [`idempotency::FORGET_BATCH`] at most, and while the results before
/// each come to less than [`idempotency::FORGET_BYTES`] (so that much and
/// one record at most: a write's record keeps the rows it returned, up to
/// the result limit, and a statement that freed 10,000 of them held the
/// writer past every deadline, review 207); moves the mark on. How many
/// it forgot, and whether any old one is left.
pub(crate) fn forget(
    conn: &Connection,
    clock: &Clock,
    keep: Duration,
) -> Result<idempotency::Forgot> {
    let now = clock.now_micros();
    let wall = micros(SystemTime::now());
    let long_ago = keep.saturating_mul(LONG_AGO);
    let bounds = rusqlite::params![
        before(wall, keep),
        before(now, keep),
        // A stamp a day or more ahead of the system's clock now came from
        // a clock that was wrong: its age by that clock means nothing.
        wall.saturating_add(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX)),
        before(wall, long_ago),
        idempotency::FORGET_BYTES,
        idempotency::FORGET_BATCH,
    ];
    let deleted = conn.prepare_cached(FORGET)?.execute(bounds)? as u64;
    let more = conn
        .prepare_cached(OLD_LEFT)?
        .query_row(&bounds[..4], |r| r.get::<_, bool>(0))?;
    conn.prepare_cached(SET_MARK)?
        .execute(rusqlite::params![MARK, now])?;
    Ok(idempotency::Forgot { deleted, more })
}

/// How many times [`KEEP`](idempotency::KEEP) a record is kept at most by
/// the system's clock alone: the records' own clock runs only while a
/// handle is open, so handles open for moments at a time (a CLI run, a
/// short `stdio` session) would otherwise keep records for ever.
const LONG_AGO: u32 = 7;

/// The statement that forgets records old by both clocks (stamped at or
/// before `?1` by the system's clock, or after `?3`, and at or before `?2`
/// by the records' own, found and checked in the latter's index, which
/// holds both), or by the system's alone long ago (at or before `?4`),
/// `?6` at most, each once, while the results before each come to less
/// than `?5` bytes (`octet_length` reads a result's size, not the result).
/// Not the mark.
const FORGET: &str = "DELETE FROM main.litebridge_claims WHERE key IN (
         SELECT key FROM (
             SELECT key, own, sum(own) OVER (ORDER BY key ROWS UNBOUNDED PRECEDING) AS upto
             FROM (
                 SELECT key, octet_length(result) AS own FROM main.litebridge_claims
                  WHERE key IN (
                      SELECT key FROM main.litebridge_claims
                       WHERE clock_at <= ?2 AND (created_at <= ?1 OR created_at > ?3) AND length(key) = 32
                      UNION
                      SELECT key FROM main.litebridge_claims
                       WHERE created_at <= ?4 AND length(key) = 32
                      LIMIT ?6)) AS old) AS sized
          WHERE upto - own < ?5)";

/// Whether a record [`FORGET`] would forget is left (its first four
/// parameters).
const OLD_LEFT: &str = "SELECT EXISTS (
         SELECT 1 FROM main.litebridge_claims
          WHERE clock_at <= ?2 AND (created_at <= ?1 OR created_at > ?3) AND length(key) = 32)
      OR EXISTS (
         SELECT 1 FROM main.litebridge_claims WHERE created_at <= ?4 AND length(key) = 32)";

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
    use std::time::Duration;

    use super::*;
    use crate::{Database, DbConfig, Params, Statement, Value, WriteOptions};

    /// A database in a directory of its own, with a table `t(n)`.
    async fn scratch(config: DbConfig) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("c.db"), config)
            .await
            .unwrap();
        db.execute("CREATE TABLE t(n)", ()).await.unwrap();
        (dir, db)
    }

    fn keyed(key: &str) -> WriteOptions {
        WriteOptions {
            idempotency_key: Some(IdempotencyKey::new(0, key).unwrap()),
            ..WriteOptions::default()
        }
    }

    /// Shifts every row's stamps back: `wall` on the system's clock,
    /// `clock` on the records' own (the mark's too).
    async fn age(db: &Database, wall: Duration, clock: Duration) {
        let (wall, clock) = (wall.as_micros() as i64, clock.as_micros() as i64);
        db.write(move |c| {
            Ok(c.execute(
                "UPDATE main.litebridge_claims
                    SET created_at = created_at - ?1, clock_at = clock_at - ?2",
                [wall, clock],
            )?)
        })
        .await
        .unwrap();
    }

    /// A record is forgotten only once both of its ages have passed a day:
    /// a step of the system's clock alone, or a second handle's clock
    /// alone, keeps it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_is_forgotten_only_when_both_clocks_say_so() {
        let (_dir, db) = scratch(DbConfig::default()).await;
        db.execute_with("INSERT INTO t VALUES (1)", (), keyed("k"))
            .await
            .unwrap();
        let two_days = Duration::from_secs(2 * 24 * 3600);
        // The system's clock stepped forward two days.
        age(&db, two_days, Duration::ZERO).await;
        assert_eq!(db.forget_claims().await.unwrap(), 0);
        // j made now; then the records' clock read two days on (a handle
        // whose clock ran ahead), the system's clock right: k is old by
        // both, j by one.
        db.execute_with("INSERT INTO t VALUES (2)", (), keyed("j"))
            .await
            .unwrap();
        age(&db, Duration::ZERO, two_days).await;
        let forgot = db.forget_claims().await.unwrap();
        assert_eq!(forgot, 1, "k, two days old by both; j by one only");
        let again = db
            .execute_with("INSERT INTO t VALUES (2)", (), keyed("j"))
            .await
            .unwrap();
        assert_eq!(again.changes, 1);
        assert_eq!(
            db.query("SELECT count(*) FROM t", ()).await.unwrap().rows[0][0],
            Value::Integer(2),
            "j answered from its record"
        );
        db.close().await;
    }

    /// Review 207: a record keeps the rows its write returned, and one
    /// statement of the sweep freed 10,000 of them, 9.5 GB, holding the
    /// writer past every deadline each minute and forgetting nothing. A
    /// statement frees 16 MiB of results and one record more at most.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_of_the_sweep_frees_a_bounded_size_of_results() {
        let (_dir, db) = scratch(DbConfig::default()).await;
        for k in ["a", "b", "c"] {
            let r = db
                .execute_with(
                    "INSERT INTO t VALUES (1) RETURNING zeroblob(9000000)",
                    (),
                    keyed(k),
                )
                .await
                .unwrap();
            assert_eq!(r.changes, 1);
        }
        let two_days = Duration::from_secs(2 * 24 * 3600);
        age(&db, two_days, two_days).await;
        // 12 MB of base64 each: the first two (the second starts before
        // 16 MiB), not the third.
        let step = db.forget_claims_round(idempotency::KEEP, 1).await.unwrap();
        assert_eq!(
            step,
            idempotency::Forgot {
                deleted: 2,
                more: true
            }
        );
        let step = db.forget_claims_round(idempotency::KEEP, 20).await.unwrap();
        assert_eq!(
            step,
            idempotency::Forgot {
                deleted: 1,
                more: false
            }
        );
        assert_eq!(db.forget_claims().await.unwrap(), 0);
        db.close().await;
    }

    /// Stamped a week and a day ago by the system's clock, a record goes
    /// whatever the records' own clock says (its handles may have been
    /// open for moments at a time); stamped a day or more ahead of the
    /// system's clock, its age by that clock means nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_ago_or_ahead_by_the_systems_clock() {
        let (_dir, db) = scratch(DbConfig::default()).await;
        db.execute_with("INSERT INTO t VALUES (1)", (), keyed("h"))
            .await
            .unwrap();
        age(&db, Duration::from_secs(6 * 24 * 3600), Duration::ZERO).await;
        assert_eq!(db.forget_claims().await.unwrap(), 0, "six days");
        age(&db, Duration::from_secs(2 * 24 * 3600), Duration::ZERO).await;
        assert_eq!(db.forget_claims().await.unwrap(), 1, "eight days");
        db.execute_with("INSERT INTO t VALUES (2)", (), keyed("f"))
            .await
            .unwrap();
        let ahead = |c: &Connection| {
            Ok(c.execute(
                "UPDATE main.litebridge_claims SET created_at = created_at + 172800000000
                  WHERE length(key) = 32",
                [],
            )?)
        };
        db.write(ahead).await.unwrap();
        assert_eq!(
            db.forget_claims().await.unwrap(),
            0,
            "young by its own clock"
        );
        age(&db, Duration::ZERO, Duration::from_secs(2 * 24 * 3600)).await;
        assert_eq!(db.forget_claims().await.unwrap(), 1, "old by its own clock");
        db.close().await;
    }

    /// A first handle stamped its records by a system clock two days slow
    /// (and its own clock started from it); a second handle, with the right
    /// time, starts its own clock from theirs and does not forget them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_handle_starts_from_the_records_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let db = Database::open(&path, DbConfig::default()).await.unwrap();
        db.execute("CREATE TABLE t(n)", ()).await.unwrap();
        db.execute_with("INSERT INTO t VALUES (1)", (), keyed("k"))
            .await
            .unwrap();
        let two_days = Duration::from_secs(2 * 24 * 3600);
        age(&db, two_days, two_days).await;
        db.close().await;
        let db = Database::open(&path, DbConfig::default()).await.unwrap();
        assert_eq!(db.forget_claims().await.unwrap(), 0);
        let again = db
            .execute_with("INSERT INTO t VALUES (1)", (), keyed("k"))
            .await
            .unwrap();
        assert_eq!(again.changes, 1);
        assert_eq!(
            db.query("SELECT count(*) FROM t", ()).await.unwrap().rows[0][0],
            Value::Integer(1),
            "answered from the record"
        );
        assert_eq!(
            db.forget_claims_older_than(Duration::ZERO).await.unwrap(),
            1,
            "the record, not the mark"
        );
        db.close().await;
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
        let (_dir, db) = scratch(DbConfig {
            max_result_bytes: 1024,
            ..DbConfig::default()
        })
        .await;
        // A record may take eight times the limit and a megabyte (see
        // `longer_values`): 100,000 rowids take more.
        let many: Vec<_> = (0..100_000)
            .map(|i| Statement::new("INSERT INTO t VALUES (?1)", crate::params![i]))
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
        let (_dir, db) = scratch(DbConfig::default()).await;
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
        let (_dir, db) = scratch(DbConfig::default()).await;
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
            1,
            "the record, not the clock's mark"
        );
        // Forgotten: the key is free again.
        db.execute_with("INSERT INTO t VALUES (1)", (), once)
            .await
            .unwrap();
        assert_eq!(count().await, Value::Integer(2));
        db.close().await;
    }
}
