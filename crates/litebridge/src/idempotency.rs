//! [`IdempotencyKey`]: a write that carries one applies at most once,
//! however often it is sent again (a client retrying after a lost answer,
//! or after `outcome_unknown`).
//!
//! The key a client gives is a string of its own choosing, scoped to its
//! caller (two API keys may use the same string). What travels inside
//! litebridge is a SHA-256 of the caller and the string, so the options
//! that carry it stay `Copy`. Each backend records a key inside the write's
//! own transaction, so that the record and the write commit together or not
//! at all: SQLite in `litebridge_claims`, which client SQL cannot reach (see
//! `db/claims.rs`); PostgreSQL through functions of its own, under a second
//! hash with a secret, so that nobody who can run SQL there can compute,
//! and claim first, another caller's key (see `pg/claims.rs`).
//!
//! What both backends share is here: how long a record is kept, and what it
//! holds (the write's fingerprint and its results).

use sha2::Digest as _;

use std::time::Duration;

use crate::error::{Error, Result};
use crate::value::{ExecResult, Rows, Value};

/// How long a record is kept: a retry later than this runs again.
pub(crate) const KEEP: Duration = Duration::from_secs(24 * 3600);

/// The most records one statement of the sweep forgets.
pub(crate) const FORGET_BATCH: i64 = 10_000;

/// The most bytes of recorded results one statement of the sweep frees
/// (and one record more): a record keeps the rows its write returned.
pub(crate) const FORGET_BYTES: i64 = 16 << 20;

/// The most statements of one round of a service's sweep, each a turn of
/// the writer of its own; while old records are left, it comes back soon
/// (see `service`).
pub(crate) const FORGET_STEPS: usize = 20;

/// What the records' sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forgot {
    /// Records forgotten.
    pub(crate) deleted: u64,
    /// Old records are left: the sweep comes back soon.
    pub(crate) more: bool,
}

/// The longest idempotency key a client may give, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A write's idempotency key, for one caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(..)")
    }
}

impl IdempotencyKey {
    /// The key `key` of `caller` (an API key's id; 0 for local callers).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty key or one longer than
    /// [`MAX_IDEMPOTENCY_KEY`] bytes.
    pub fn new(caller: u64, key: &str) -> Result<IdempotencyKey> {
        IdempotencyKey::hashed(caller, "", key)
    }

    /// The key `key` of a local caller (no API key: a stdio or MCP session,
    /// or HTTP on loopback while no key exists) holding `scopes`. Sessions
    /// narrowed by `security.local_scopes` keep records of their own, by
    /// their scopes, as their `bridge.call` cache entries are: an agent's
    /// session given `write` could otherwise block the owner's retries of a
    /// key, or answer them with its own write's result (review 181). A
    /// session with every scope (the default) keeps the records it always
    /// had, those of [`IdempotencyKey::new`] with caller 0.
    ///
    /// # Errors
    /// As [`IdempotencyKey::new`].
    pub fn local(scopes: crate::auth::Scopes, key: &str) -> Result<IdempotencyKey> {
        if scopes == crate::auth::Scopes::ALL {
            return IdempotencyKey::new(0, key);
        }
        // A scope's name is never empty and holds no NUL: distinct from
        // every caller's key above, whose caller's bytes are followed by 0.
        IdempotencyKey::hashed(0, &scopes.to_string(), key)
    }

    fn hashed(caller: u64, session: &str, key: &str) -> Result<IdempotencyKey> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(Error::invalid(
                "idempotency_key",
                format!("is {} bytes; give 1 to {MAX_IDEMPOTENCY_KEY}", key.len()),
            ));
        }
        let mut h = sha2::Sha256::new();
        h.update(caller.to_le_bytes());
        h.update(session.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        Ok(IdempotencyKey(h.finalize().into()))
    }
}

/// What identifies a write, so that a key sent again with another write is
/// refused, not answered with the first write's result: SHA-256 of its
/// shape, statements and values (as [`values_text`] gives them). The shape
/// is `Each` for `execute` and `batch` (a batch of one statement is the same
/// write as its `execute`) and `Rows` for `execute_many`, on both backends.
pub(crate) fn fingerprint<'a>(
    shape: &str,
    statements: impl Iterator<Item = (&'a str, String)>,
) -> String {
    let mut h = sha2::Sha256::new();
    h.update(shape.as_bytes());
    for (sql, v) in statements {
        h.update((sql.len() as u64).to_le_bytes());
        h.update(sql.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A statement's values as [`fingerprint`] reads them.
pub(crate) fn values_text(values: &impl serde::Serialize) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

/// A write's results as recorded: its fingerprint, the changes of each
/// statement, the last inserted rowid where it changed from the
/// statement before (`[index, rowid]` pairs; none on PostgreSQL, where it
/// is always 0): SQLite's rowid stays from one insert through the
/// statements after it, and a batch of ten thousand would repeat it; and
/// the rows of each statement that returned some (`[index, {columns,
/// rows}]` pairs, values as JSON maps them, blobs and infinities tagged).
pub(crate) fn encode<'a>(
    fingerprint: &str,
    results: impl IntoIterator<Item = &'a ExecResult>,
) -> String {
    let results = results.into_iter().collect::<Vec<_>>();
    // Each statement's (or row's) count of changes, as runs of equal
    // counts: an `execute_many` of a million rows that each changed one is
    // `[[1, 1000000]]`, not two megabytes.
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for r in &results {
        match runs.last_mut() {
            Some((changes, n)) if *changes == r.changes => *n += 1,
            _ => runs.push((r.changes, 1)),
        }
    }
    let mut last = 0;
    let rowids: Vec<(usize, i64)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| std::mem::replace(&mut last, r.last_insert_rowid) != r.last_insert_rowid)
        .map(|(i, r)| (i, r.last_insert_rowid))
        .collect();
    let returning: Vec<(usize, Returned<'_>)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let rows = r.returning.as_deref()?;
            Some((
                i,
                Returned {
                    columns: &rows.columns,
                    rows: &rows.rows,
                },
            ))
        })
        .collect();
    // Written straight to its text (review 147: a tree of JSON values
    // first held a copy of every row, outside any budget).
    serde_json::to_string(&Record {
        write: fingerprint,
        runs,
        rowids,
        returning,
    })
    .unwrap_or_default()
}

/// A record as [`encode`] writes it.
#[derive(serde::Serialize)]
struct Record<'a> {
    write: &'a str,
    runs: Vec<(u64, usize)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rowids: Vec<(usize, i64)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    returning: Vec<(usize, Returned<'a>)>,
}

/// A statement's returned rows in a record.
#[derive(serde::Serialize)]
struct Returned<'a> {
    columns: &'a [String],
    rows: &'a [Vec<Value>],
}

/// The results a record answers with, if it is the record of the same write.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `idempotency_key` when the key was
/// recorded with another write; [`Error::Internal`] for a record litebridge
/// did not make.
pub(crate) fn decode(stored: &str, fingerprint: &str) -> Result<Vec<ExecResult>> {
    #[derive(serde::Deserialize)]
    struct Stored {
        write: String,
        /// Records made before runs were.
        #[serde(default)]
        changes: Vec<u64>,
        #[serde(default)]
        runs: Vec<(u64, usize)>,
        #[serde(default)]
        rowids: Vec<(usize, i64)>,
        #[serde(default)]
        returning: Vec<(usize, Returned)>,
    }
    #[derive(serde::Deserialize)]
    struct Returned {
        columns: Vec<String>,
        rows: Vec<Vec<serde_json::Value>>,
    }
    let broken = |what: &str| Error::Internal {
        message: format!("an idempotency record's {what} do not match its statements"),
    };
    let stored: Stored = serde_json::from_str(stored).map_err(|_| Error::Internal {
        message: "an idempotency record holds no result (was it made outside litebridge?)".into(),
    })?;
    if stored.write != fingerprint {
        return Err(Error::invalid(
            "idempotency_key",
            "was given before with another write (other statements or values); a key names one write",
        ));
    }
    // A count of statements no write can have is not expanded.
    let expanded = stored
        .runs
        .iter()
        .try_fold(0usize, |total, (_, n)| total.checked_add(*n));
    if expanded.is_none_or(|n| n > 10_000_000) {
        return Err(Error::Internal {
            message: "an idempotency record names more statements than a write can hold".into(),
        });
    }
    let changes: Vec<u64> = if stored.runs.is_empty() {
        stored.changes
    } else {
        stored
            .runs
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect()
    };
    let mut rowids = stored.rowids.into_iter().peekable();
    let mut last = 0;
    let results = changes
        .iter()
        .enumerate()
        .map(|(i, &changes)| {
            if let Some((_, id)) = rowids.next_if(|(at, _)| *at == i) {
                last = id;
            }
            ExecResult {
                changes,
                last_insert_rowid: last,
                returning: None,
            }
        })
        .collect::<Vec<_>>();
    // Every rowid, in order, of a statement there is.
    if rowids.next().is_some() {
        return Err(broken("rowids"));
    }
    let mut results = results;
    for (i, r) in stored.returning {
        let slot = match results.get_mut(i) {
            Some(slot) if slot.returning.is_none() => slot,
            _ => return Err(broken("returned rows")),
        };
        let rows = r
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(Value::from_json)
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| broken("returned rows"))?;
        slot.returning = Some(Box::new(Rows {
            columns: r.columns,
            rows,
            truncated: false,
        }));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn keys_are_scoped_to_their_caller_and_bounded() {
        let a = IdempotencyKey::new(1, "order-7").unwrap();
        assert_eq!(a, IdempotencyKey::new(1, "order-7").unwrap());
        assert_ne!(a, IdempotencyKey::new(2, "order-7").unwrap());
        assert_ne!(a, IdempotencyKey::new(1, "order-8").unwrap());
        assert!(IdempotencyKey::new(1, "").is_err());
        assert!(IdempotencyKey::new(1, &"x".repeat(201)).is_err());
        assert!(format!("{a:?}").contains(".."));
    }

    #[test]
    fn local_sessions_keep_records_by_their_scopes() {
        use crate::auth::Scopes;
        let scopes = |s: &str| s.parse::<Scopes>().unwrap();
        let owner = IdempotencyKey::local(Scopes::ALL, "order-7").unwrap();
        assert_eq!(
            owner,
            IdempotencyKey::new(0, "order-7").unwrap(),
            "as before"
        );
        let agent = IdempotencyKey::local(scopes("write"), "order-7").unwrap();
        assert_ne!(agent, owner);
        assert_eq!(
            agent,
            IdempotencyKey::local(scopes("write"), "order-7").unwrap()
        );
        assert_ne!(
            agent,
            IdempotencyKey::local(scopes("write,bridge"), "order-7").unwrap()
        );
        assert_ne!(
            agent,
            IdempotencyKey::local(scopes("read"), "order-7").unwrap()
        );
        for id in [0, 1, u64::MAX] {
            assert_ne!(agent, IdempotencyKey::new(id, "order-7").unwrap());
        }
        assert!(IdempotencyKey::local(scopes("write"), "").is_err());
    }

    #[test]
    fn a_record_answers_only_its_own_write() {
        let one = |sql: &'static str, v: i64| {
            fingerprint(
                "each",
                [(sql, values_text(&[Value::Integer(v)]))].into_iter(),
            )
        };
        let fp = one("INSERT INTO t VALUES (?1)", 1);
        assert_eq!(fp, one("INSERT INTO t VALUES (?1)", 1));
        assert_ne!(fp, one("INSERT INTO t VALUES (?1)", 2));
        assert_ne!(fp, one("INSERT INTO u VALUES (?1)", 1));
        let results: Vec<ExecResult> = [(1, 7), (0, 7), (3, 0), (1, 9), (0, 9)]
            .into_iter()
            .map(|(changes, last_insert_rowid)| ExecResult {
                changes,
                last_insert_rowid,
                returning: None,
            })
            .collect();
        let record = encode(&fp, &results);
        assert!(
            record.contains(r#""rowids":[[0,7],[2,0],[3,9]]"#),
            "{record}"
        );
        assert_eq!(decode(&record, &fp).unwrap(), results);
        let e = decode(&encode(&fp, &results), &one("x", 1)).unwrap_err();
        assert!(e.to_string().contains("idempotency_key"), "{e}");
        // A record of PostgreSQL's, without rowids.
        let pg = format!(r#"{{"write":"{fp}","changes":[2]}}"#);
        assert_eq!(decode(&pg, &fp).unwrap()[0].changes, 2);
        assert!(decode("", &fp).is_err());
        for bad in [r#"[[1,5],[0,4]]"#, r#"[[0,5],[0,6]]"#, r#"[[9,1]]"#] {
            let record = format!(r#"{{"write":"{fp}","changes":[1,1],"rowids":{bad}}}"#);
            assert!(decode(&record, &fp).is_err(), "{bad}");
        }
    }
}
