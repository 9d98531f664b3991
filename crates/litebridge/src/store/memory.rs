//! Agent memory: values by namespace and key, with an optional time to live.
//! An expired entry is never returned (every read compares with the clock)
//! and is deleted by [`MemoryStore::sweep`], which the service runs in the
//! background.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value as Json;

use super::cache::Clock;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::params;
use crate::value::Value;

/// Longest namespace or key accepted.
pub const MAX_NAME: usize = 1024;

/// One entry of a namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryEntry {
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: Json,
    /// When it expires, microseconds since the epoch (`None`: never).
    pub expires_at: Option<i64>,
}

/// The memory store.
#[derive(Clone)]
pub struct MemoryStore {
    db: Backend,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

fn check(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::invalid(
            what,
            format!("must be 1 to {MAX_NAME} bytes"),
        ));
    }
    Ok(())
}

/// The smallest string greater than every string starting with `prefix`
/// (so a prefix search is a key range, with no LIKE escaping to get wrong).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value: a range of chars steps over the surrogates
        // (after U+D7FF comes U+E000, as in UTF-8's byte order).
        if let Some(next) = (last..=char::MAX).nth(1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// An entry of a listing's row (key, value's text, expiry) in `namespace`
/// of `db`.
fn entry(row: Vec<Value>, namespace: &str, db: &Backend) -> Result<MemoryEntry> {
    let mut it = row.into_iter();
    let key = match it.next() {
        Some(Value::Text(t)) => t,
        _ => String::new(),
    };
    let value = match it.next() {
        Some(Value::Text(t)) => {
            super::read_tree(&t, db, || value_name(namespace, &key))?.unwrap_or(Json::Null)
        }
        _ => Json::Null,
    };
    let expires_at = match it.next() {
        Some(Value::Integer(i)) => Some(i),
        _ => None,
    };
    Ok(MemoryEntry {
        key,
        value,
        expires_at,
    })
}

/// How an error names the value of `key` in `namespace`.
fn value_name(namespace: &str, key: &str) -> String {
    format!("the value of memory key {key:?} in namespace {namespace:?}")
}

impl MemoryStore {
    /// The store over `db` (its table comes from the schema migrations).
    pub fn new(db: impl Into<Backend>, clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore {
            db: db.into(),
            clock,
        }
    }

    fn now_us(&self) -> i64 {
        i64::try_from(
            self.clock
                .now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(i64::MAX)
    }

    /// Stores `value` under `namespace`/`key`, for `ttl` if given.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for empty or overlong names;
    /// [`Error::TooLarge`] for a value whose tree would pass the database's
    /// `max_result_bytes`; write errors.
    pub async fn store(
        &self,
        namespace: &str,
        key: &str,
        value: &Json,
        ttl: Option<Duration>,
    ) -> Result<()> {
        check(namespace, "namespace")?;
        check(key, "key")?;
        let now = self.now_us();
        let expires =
            ttl.map(|t| now.saturating_add(i64::try_from(t.as_micros()).unwrap_or(i64::MAX)));
        let text =
            serde_json::to_string(value).map_err(|e| Error::invalid("value", e.to_string()))?;
        super::storable(&text, &self.db, "value")?;
        self.db
            .own_execute(
                format!(
                    "INSERT INTO {}(namespace, key, value, expires_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(namespace, key) DO UPDATE SET
                         value = excluded.value, expires_at = excluded.expires_at,
                         updated_at = excluded.updated_at",
                    self.db.own("memory")
                ),
                params![namespace, key, text, expires, now],
            )
            .await?;
        Ok(())
    }

    /// The value, unless absent or expired.
    ///
    /// # Errors
    /// Read errors; bad names; [`Error::TooLarge`] for a value whose tree
    /// passes the database's `max_result_bytes` (stored by an earlier
    /// version, or before the limit was lowered).
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Json>> {
        check(namespace, "namespace")?;
        check(key, "key")?;
        let rows = self
            .db
            .own_query(
                &format!(
                    "SELECT value FROM {}
                     WHERE namespace = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
                    self.db.own("memory")
                ),
                params![namespace, key, self.now_us()],
            )
            .await?;
        match rows
            .rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
        {
            Some(Value::Text(t)) => super::read_tree(&t, &self.db, || value_name(namespace, key)),
            _ => Ok(None),
        }
    }

    /// Live entries of a namespace in key order, optionally with a key
    /// prefix, from the key after `after` (the last of the previous page).
    ///
    /// # Errors
    /// Read errors; bad names.
    pub async fn list(
        &self,
        namespace: &str,
        prefix: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<MemoryEntry>> {
        let rows = self.rows(namespace, prefix, limit, after).await?;
        rows.into_iter()
            .map(|row| entry(row, namespace, &self.db))
            .collect()
    }

    /// As [`list`](Self::list), a page that ends early once its values'
    /// trees take [`PAGE_BYTES`](super::PAGE_BYTES) (or the result limit,
    /// where lower), or before a value too large to read, with the cursor
    /// of the next page: what a server answers a caller with.
    ///
    /// # Errors
    /// Read errors; bad names.
    pub async fn page(
        &self,
        namespace: &str,
        prefix: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<super::Page<MemoryEntry>> {
        let (rows, left) =
            super::text_bounded(self.select(namespace, prefix, limit, after, true).await?);
        let full = rows.len() == limit;
        let (items, cut) = super::within_page_bytes(
            &self.db,
            rows.into_iter().map(|row| entry(row, namespace, &self.db)),
            |e| super::footprint(&e.value),
        )?;
        let next = (full || left || cut)
            .then(|| items.last().map(|e| e.key.clone()))
            .flatten();
        Ok(super::Page { items, next })
    }

    /// The rows of a [`list`](Self::list): key, value's text, expiry.
    async fn rows(
        &self,
        namespace: &str,
        prefix: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Vec<Value>>> {
        self.select(namespace, prefix, limit, after, false).await
    }

    /// [`rows`](Self::rows), or with `bounded` the first and those after
    /// it while their values' text comes to at most
    /// [`page_text_bytes`](super::page_text_bytes), each with the count of
    /// rows there were (see [`text_bounded`](super::text_bounded)).
    async fn select(
        &self,
        namespace: &str,
        prefix: Option<&str>,
        limit: usize,
        after: Option<&str>,
        bounded: bool,
    ) -> Result<Vec<Vec<Value>>> {
        check(namespace, "namespace")?;
        // No key is longer: a prefix or a page's last key past it is a
        // mistake (and a prefix's end was built from it four bytes a
        // character: review 159).
        for (text, what) in [(prefix, "prefix"), (after, "after")] {
            if let Some(t) = text
                && t.len() > MAX_NAME
            {
                return Err(Error::invalid(
                    what,
                    format!("must be at most {MAX_NAME} bytes, as a key is"),
                ));
            }
        }
        // One lower bound, so a late page's index range starts there (two,
        // and it scanned every key before it: review 142): the larger, by
        // byte order, which is the keys' order on both backends (SQLite's
        // BINARY; on PostgreSQL the column is `COLLATE "C"`, without which
        // a page repeated itself for ever: reviews 143, 144).
        let (from, start) = match (after, prefix.unwrap_or("")) {
            (Some(after), prefix) if after >= prefix => (">", after),
            (_, prefix) => (">=", prefix),
        };
        let end = prefix.and_then(prefix_end);
        let t = self.db.own("memory");
        let chosen = format!(
            "FROM {t} WHERE namespace = ?1 AND key {from} ?2 AND (?3 IS NULL OR key < ?3)
               AND (expires_at IS NULL OR expires_at > ?4)
             ORDER BY key LIMIT ?5"
        );
        let sql = if bounded {
            // The keys and sizes first (`octet_length` reads a value's
            // size, not the value), then the values of those that fit: a
            // page of a few 15 MiB values passed the result limit, and
            // every reader of the namespace failed (review 207).
            // (Subqueries, not a `WITH`: the authorizer holds what a named
            // one reads to the rules of client SQL.)
            format!(
                "SELECT m.key, m.value, m.expires_at, sized.lb_chosen
                   FROM (SELECT key,
                                sum(lb_own) OVER (ORDER BY key ROWS UNBOUNDED PRECEDING) AS lb_upto,
                                row_number() OVER (ORDER BY key) AS lb_n,
                                count(*) OVER () AS lb_chosen
                           FROM (SELECT key, octet_length(value) AS lb_own {chosen}) AS chosen) AS sized
                   JOIN {t} AS m ON m.namespace = ?1 AND m.key = sized.key
                  WHERE sized.lb_upto <= ?6 OR sized.lb_n = 1
                  ORDER BY m.key"
            )
        } else {
            format!("SELECT key, value, expires_at {chosen}")
        };
        let mut params = vec![
            Value::from(namespace),
            Value::from(start),
            Value::from(end),
            Value::from(self.now_us()),
            Value::from(i64::try_from(limit).unwrap_or(i64::MAX)),
        ];
        if bounded {
            params.push(Value::from(super::page_text_bytes(&self.db)));
        }
        let rows = self
            .db
            .own_query(&sql, crate::Params::Positional(params))
            .await?;
        Ok(rows.rows)
    }

    /// Deletes an entry; whether a live one existed.
    ///
    /// # Errors
    /// Write errors; bad names.
    pub async fn delete(&self, namespace: &str, key: &str) -> Result<bool> {
        check(namespace, "namespace")?;
        check(key, "key")?;
        Ok(self
            .db
            .own_execute(
                format!(
                    "DELETE FROM {} WHERE namespace = ?1 AND key = ?2
                     AND (expires_at IS NULL OR expires_at > ?3)",
                    self.db.own("memory")
                ),
                params![namespace, key, self.now_us()],
            )
            .await?
            .changes
            > 0)
    }

    /// Deletes every expired entry, 64 at a time and while the values
    /// before each come to less than 16 MiB (each statement its own write,
    /// so others interleave); how many.
    ///
    /// One statement for all of them could not finish: a `write` key's
    /// hundreds of 16 MiB entries with a TTL of a second took longer to
    /// free than a statement may run, so the sweep was rolled back at its
    /// deadline every minute, holding the writer each time, and nothing
    /// expired was ever deleted.
    ///
    /// # Errors
    /// Write errors (what earlier batches deleted stays deleted).
    pub async fn sweep(&self) -> Result<u64> {
        let now = self.now_us();
        let mut deleted = 0;
        loop {
            let n = self
                .db
                .own_execute(
                    format!(
                        // The condition again outside: on PostgreSQL a row
                        // renewed after the inner select (waited for, then
                        // re-read) is deleted only if still expired.
                        // `octet_length` reads a value's size, not the value.
                        "DELETE FROM {t} WHERE (namespace, key) IN (
                             SELECT namespace, key FROM (
                                 SELECT namespace, key, own, sum(own) OVER (
                                     ORDER BY expires_at, namespace, key ROWS UNBOUNDED PRECEDING) AS upto
                                 FROM (
                                     SELECT namespace, key, expires_at, octet_length(value) AS own FROM {t}
                                     WHERE expires_at IS NOT NULL AND expires_at <= ?1
                                     ORDER BY expires_at, namespace, key LIMIT ?2) AS oldest) AS sized
                             WHERE upto - own < ?3)
                           AND expires_at IS NOT NULL AND expires_at <= ?1",
                        t = self.db.own("memory")
                    ),
                    params![now, SWEEP_BATCH as i64, SWEEP_BYTES],
                )
                .await?
                .changes;
            deleted += n;
            // Until none is left (a batch may come short when a row in it
            // was set again meanwhile, with others left behind it).
            if n == 0 {
                return Ok(deleted);
            }
        }
    }
}

/// Entries one statement of a sweep deletes at most.
const SWEEP_BATCH: u64 = 64;

/// The bytes of values one statement of a sweep frees at most, and one
/// value more (16 MiB at most, a request body): 64 of the largest, a GiB,
/// had held the writer for seconds (review 207).
const SWEEP_BYTES: i64 = 16 << 20;

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_end("a%_").as_deref(), Some("a%`"));
        assert_eq!(prefix_end("").as_deref(), None);
        // Across the surrogates: a\u{D7FF} ends before a\u{E000}, which it
        // does not start (a hostile review found both listed).
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}").as_deref(), None);
    }
}
