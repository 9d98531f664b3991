//! A two-level cache: L1 in memory (bounded, TTL), L2 a table in the
//! litebridge database (survives a restart).
//!
//! - `get` looks in L1, then L2 (an L2 hit is copied into L1).
//! - `set` writes through both levels; the L2 write goes through group commit.
//! - `get_or_load` computes a missing value once however many callers miss
//!   the same key at the same time (moka coalesces the loads), then stores it
//!   in both levels.
//! - Every entry carries its own expiry time, checked against a [`Clock`] on
//!   every read, so an expired entry is never returned and tests control time
//!   exactly; moka's own expiry only reclaims the memory.
//!
//! Values are JSON. The L2 table is `litebridge_cache`; its name is fixed
//! and the values are always bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::params;
use crate::value::Value;

/// Where the cache reads the time (tests substitute their own).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The configuration of a [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Entries kept in memory at most. Default: 10,000.
    pub max_entries: u64,
    /// Lifetime of an entry set without one; `None` keeps it until deleted
    /// or evicted. Default: 1 hour.
    pub default_ttl: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            default_ttl: Some(Duration::from_secs(3600)),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: Arc<Json>,
    expires: Option<SystemTime>,
}

/// Counters of a [`Cache`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CacheStats {
    /// Reads answered from memory.
    pub l1_hits: u64,
    /// Reads answered from the database.
    pub l2_hits: u64,
    /// Reads that found nothing (or only expired entries).
    pub misses: u64,
    /// Entries evicted from memory for room.
    pub evictions: u64,
    /// Entries in memory now (approximate).
    pub l1_entries: u64,
    /// Hits over reads (0 when nothing was read).
    pub hit_rate: f64,
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

/// The two-level cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    l1: moka::future::Cache<String, Entry>,
    db: Option<Database>,
    clock: Arc<dyn Clock>,
    default_ttl: Option<Duration>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

struct Expire;

impl moka::Expiry<String, Entry> for Expire {
    fn expire_after_create(
        &self,
        _: &String,
        v: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        v.expires.map(|e| {
            e.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

fn micros(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(i64::MAX)
}

impl Cache {
    /// A cache with its L2 in `db` (or memory only with `None`).
    ///
    /// # Errors
    /// Creating the L2 table failed.
    pub async fn open(db: Option<Database>, config: CacheConfig) -> Result<Cache> {
        Cache::with_clock(db, config, Arc::new(SystemClock)).await
    }

    /// As [`Cache::open`], reading time from `clock`.
    ///
    /// # Errors
    /// Creating the L2 table failed.
    pub async fn with_clock(
        db: Option<Database>,
        config: CacheConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Cache> {
        if let Some(db) = &db {
            super::schema::migrate(db).await?;
        }
        let counters = Arc::new(Counters::default());
        let evictions = counters.evictions.clone();
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(Expire)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Ok(Cache {
            l1,
            db,
            clock,
            default_ttl: config.default_ttl,
            counters,
        })
    }

    fn live(&self, e: &Entry) -> bool {
        e.expires.is_none_or(|t| self.clock.now() < t)
    }

    /// The value of `key`, if present and not expired.
    ///
    /// # Errors
    /// Reading L2 failed.
    pub async fn get(&self, key: &str) -> Result<Option<Json>> {
        if let Some(e) = self.l1.get(key).await {
            if self.live(&e) {
                self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some((*e.value).clone()));
            }
            self.l1.invalidate(key).await;
        }
        match self.l2_get(key).await? {
            Some(e) => {
                self.counters.l2_hits.fetch_add(1, Ordering::Relaxed);
                let v = (*e.value).clone();
                self.l1.insert(key.to_owned(), e).await;
                Ok(Some(v))
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    async fn l2_get(&self, key: &str) -> Result<Option<Entry>> {
        let Some(db) = &self.db else { return Ok(None) };
        let rows = db
            .query_trusted(
                "SELECT value, expires_at FROM main.litebridge_cache WHERE key = ?1",
                params![key],
            )
            .await?;
        let Some(row) = rows.rows.into_iter().next() else {
            return Ok(None);
        };
        let expires = match row.get(1) {
            Some(Value::Integer(us)) => {
                Some(UNIX_EPOCH + Duration::from_micros(u64::try_from(*us).unwrap_or(0)))
            }
            _ => None,
        };
        let value = match row.into_iter().next() {
            Some(Value::Text(t)) => serde_json::from_str(&t).unwrap_or(Json::Null),
            _ => Json::Null,
        };
        let e = Entry {
            value: Arc::new(value),
            expires,
        };
        Ok(self.live(&e).then_some(e))
    }

    /// When an entry stored now for `ttl` (or the default) expires: `None`
    /// for never, and for a lifetime past what a clock can count (a TTL of
    /// 1e19 s overflowed and panicked).
    fn expiry(&self, ttl: Option<Duration>) -> Option<SystemTime> {
        ttl.or(self.default_ttl)
            .and_then(|t| self.clock.now().checked_add(t))
    }

    /// Stores `value` under `key` for `ttl` (or the default), in both levels.
    ///
    /// # Errors
    /// Writing L2 failed (then nothing is cached).
    pub async fn set(&self, key: &str, value: Json, ttl: Option<Duration>) -> Result<()> {
        let expires = self.expiry(ttl);
        if let Some(db) = &self.db {
            let text = serde_json::to_string(&value)
                .map_err(|e| Error::invalid("value", e.to_string()))?;
            db.execute_trusted(
                "INSERT INTO main.litebridge_cache(key, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                params![key, text, expires.map(micros)],
            )
            .await?;
        }
        self.l1
            .insert(
                key.to_owned(),
                Entry {
                    value: Arc::new(value),
                    expires,
                },
            )
            .await;
        Ok(())
    }

    /// Removes `key` from both levels; whether it was there.
    ///
    /// # Errors
    /// Writing L2 failed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let in_l1 = self.l1.remove(key).await.is_some();
        let in_l2 = match &self.db {
            Some(db) => {
                db.execute_trusted(
                    "DELETE FROM main.litebridge_cache WHERE key = ?1",
                    params![key],
                )
                .await?
                .changes
                    > 0
            }
            None => false,
        };
        Ok(in_l1 || in_l2)
    }

    /// The value of `key`, computing it with `load` when missing. Concurrent
    /// misses of one key run `load` once and share its result; errors are not
    /// cached.
    ///
    /// # Errors
    /// What `load` returns, or an L2 error.
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<Json>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Json>>,
    {
        if let Some(v) = self.get(key).await? {
            return Ok(v);
        }
        let entry = self
            .l1
            .try_get_with(key.to_owned(), async {
                if let Some(e) = self.l2_get(key).await? {
                    return Ok(e);
                }
                let value = load().await?;
                self.set(key, value.clone(), ttl).await?;
                let expires = self.expiry(ttl);
                Ok::<_, Error>(Entry {
                    value: Arc::new(value),
                    expires,
                })
            })
            .await
            .map_err(|e: Arc<Error>| (*e).clone())?;
        Ok((*entry.value).clone())
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let (h1, h2, m) = (
            c.l1_hits.load(Ordering::Relaxed),
            c.l2_hits.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
        );
        let reads = h1 + h2 + m;
        CacheStats {
            l1_hits: h1,
            l2_hits: h2,
            misses: m,
            evictions: c.evictions.load(Ordering::Relaxed),
            l1_entries: self.l1.entry_count(),
            hit_rate: if reads == 0 {
                0.0
            } else {
                (h1 + h2) as f64 / reads as f64
            },
        }
    }
}
