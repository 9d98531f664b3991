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
//! The table is made by the stores' migrations, and also here, the first
//! time a key is used on a database the stores never migrated (a
//! `Database` used on its own): the same statement, `IF NOT EXISTS`.

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

const LOOKUP: &str = "SELECT result FROM main.litebridge_claims WHERE key = ?1";
const RECORD: &str =
    "INSERT INTO main.litebridge_claims(key, result, created_at) VALUES (?1, ?2, ?3)";

/// Runs `write` at most once for `key`: the recorded results if the key was
/// recorded with this write (`fingerprint`), else `write`'s, recorded.
///
/// # Errors
/// `write`'s error (nothing recorded); [`Error::InvalidArgument`] naming
/// `idempotency_key` when it was recorded with another write.
pub(crate) fn once(
    conn: &Connection,
    key: &IdempotencyKey,
    fingerprint: &str,
    write: impl FnOnce(&Connection) -> Result<Vec<ExecResult>>,
) -> Result<Vec<ExecResult>> {
    if let Some(stored) = guard::as_trusted(|| with_table(conn, || lookup(conn, key)))? {
        return idempotency::decode(&stored, fingerprint);
    }
    let results = write(conn)?;
    let record = idempotency::encode(fingerprint, &results);
    guard::as_trusted(|| {
        conn.prepare_cached(RECORD)?
            .execute(rusqlite::params![&key.0[..], record, now_micros()])
            .map_err(Error::from)
    })?;
    Ok(results)
}

fn lookup(conn: &Connection, key: &IdempotencyKey) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(LOOKUP)?
        .query_row([&key.0[..]], |r| r.get(0))
        .optional()?)
}

/// `f`, run again after making the table when it is missing (a database
/// never migrated, or whose first record's batch was rolled back: a
/// statement cached before then fails when it runs, not when prepared).
fn with_table<T>(conn: &Connection, f: impl Fn() -> Result<T>) -> Result<T> {
    match f() {
        Err(e) if e.to_string().contains("no such table") => {
            conn.execute_batch(TABLE)?;
            f()
        }
        r => r,
    }
}

/// Now, in microseconds since the epoch: what records are stamped with.
fn now_micros() -> i64 {
    micros(std::time::SystemTime::now())
}

fn micros(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The statement that forgets the records made before `?1` (microseconds),
/// 10,000 at most (the sweep comes back for the rest).
pub(crate) const FORGET: &str = "DELETE FROM main.litebridge_claims WHERE key IN (
         SELECT key FROM main.litebridge_claims WHERE created_at <= ?1 LIMIT 10000)";

/// The cutoff of [`FORGET`] for records older than `keep`.
pub(crate) fn cutoff(keep: std::time::Duration) -> i64 {
    micros(std::time::SystemTime::now())
        .saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX))
}

/// A statement's parameters as the write's fingerprint reads them.
pub(crate) fn params_text(params: &crate::value::Params) -> String {
    use crate::value::Params;
    match params {
        Params::None => idempotency::values_text(&[(); 0]),
        Params::Positional(v) => idempotency::values_text(v),
        Params::Named(n) => idempotency::values_text(n),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Database, DbConfig, IdempotencyKey, Value, WriteOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_kept_a_day_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("c.db"), DbConfig::default())
            .await
            .unwrap();
        db.execute("CREATE TABLE t(n)", ()).await.unwrap();
        let once = WriteOptions {
            idempotency_key: Some(IdempotencyKey::new(0, "k").unwrap()),
            ..WriteOptions::default()
        };
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
