//! Who may call, what they may do, and how much.
//!
//! - **Keys** ([`create_key`], [`list_keys`], [`revoke_key`]) live in the
//!   database the service serves, stored as hashes. [`Auth`] keeps the active
//!   ones in memory, indexed by hash, so checking a request is one SHA-256
//!   and one map lookup; it re-reads them when `keys_version` changes
//!   ([`Auth::refresh`], every second while serving), which is how a key
//!   revoked by `litebridge keys revoke` from another process stops working
//!   without a restart.
//! - **Scopes** ([`Scope`], [`Scopes`]) say which methods a caller may use;
//!   the method table names the scope each method needs and asks
//!   [`Caller::require`].
//! - **Quotas** ([`Tiers`]): a key's tier limits its requests per UTC day and
//!   month ([`Caller::charge`], per call) and its requests in flight
//!   ([`Caller::enter`], per transport message). See `quota` for how counts
//!   persist.
//!
//! Transports decide who the caller is: HTTP from the bearer key, stdio and
//! MCP as the local user with scopes from configuration ([`Caller::local`]).
//! Nothing here sees a transport, a secret after hashing, or a request's
//! parameters.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> litebridge::Result<()> {
//! use std::sync::Arc;
//! use litebridge::auth::{Auth, NewKey, Scope, Scopes, Tiers, create_key};
//! use litebridge::store::{SystemClock, migrate};
//! use litebridge::{Database, DbConfig};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let db = Database::open(dir.path().join("app.db"), DbConfig::default()).await?;
//! migrate(&db).await?; // litebridge's own tables, keys among them
//! let tiers = Tiers::default();
//! let (key, secret) = create_key(&db, &tiers, NewKey {
//!     name: Some("dashboard".into()),
//!     scopes: "read".parse::<Scopes>()?,
//!     tier: "free".into(),
//! }).await?;
//! assert_eq!(key.name, "dashboard"); // the secret is shown only now
//!
//! let auth = Auth::open(db.clone(), tiers, Arc::new(SystemClock)).await?;
//! let caller = auth.authenticate(&secret)?; // one hash, one lookup
//! caller.require(Scope::Read, "sql.query")?;
//! assert!(caller.require(Scope::Write, "sql.execute").is_err());
//! caller.charge()?; // one request against the key's daily and monthly quota
//! # Ok(()) }
//! ```

pub(crate) mod keys;
mod quota;
mod scope;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use keys::{KeyInfo, NewKey, create_key, list_keys, revoke_key};
pub use quota::{InFlight, TierLimits, Tiers};
pub use scope::{Scope, Scopes};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::params;
use crate::store::Clock;
use crate::sync::{lock, read, write};
use quota::{Meter, Period, Usage, periods};

/// One active key, as the service holds it.
#[derive(Debug)]
pub struct KeyEntry {
    id: i64,
    name: String,
    scopes: Scopes,
    tier: String,
    meter: Arc<Meter>,
    /// Set when a refresh finds the key gone: a caller holding it (a batch
    /// still running, an event stream) is refused from its next call on.
    revoked: AtomicBool,
}

impl KeyEntry {
    /// The key's id (positive; unique in its database).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its tier.
    pub fn tier(&self) -> &str {
        &self.tier
    }

    /// Requests counted today and this month (UTC).
    pub fn used(&self) -> (u64, u64) {
        self.meter.used()
    }

    /// Whether the key was revoked since it was presented.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

/// One key's use of its quotas (see [`Auth::usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// The key's name.
    pub name: String,
    /// Its tier.
    pub tier: String,
    /// Requests counted today (UTC).
    pub today: u64,
    /// Requests counted this month (UTC).
    pub month: u64,
    /// Its tier's limits.
    pub limits: TierLimits,
}

/// Who is calling: what they may do and whose quotas they use.
#[derive(Debug, Clone)]
pub struct Caller {
    scopes: Scopes,
    key: Option<Arc<KeyEntry>>,
    /// One call already counted for the message being handled (see
    /// [`Caller::charged_ahead`]): the next [`Caller::charge`] takes it.
    prepaid: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Caller {
    /// The local user (stdio, MCP, HTTP on loopback without keys), with the
    /// configured scopes and no quotas.
    pub fn local(scopes: Scopes) -> Caller {
        Caller {
            scopes,
            key: None,
            prepaid: None,
        }
    }

    /// What the caller may do.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The key the caller presented, if any.
    pub fn key(&self) -> Option<&KeyEntry> {
        self.key.as_deref()
    }

    /// Refuses `method` unless the caller holds `scope` with a key that has
    /// not been revoked since it was presented: every call of a request that
    /// lasts (a batch, an MCP session's tool calls) is checked as it starts,
    /// so a key revoked while its batch runs starts nothing more.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a revoked key; [`Error::Forbidden`]
    /// naming the method, the scope it needs and the caller's scopes.
    pub fn require(&self, scope: Scope, method: &str) -> Result<()> {
        if let Some(k) = &self.key
            && k.is_revoked()
        {
            return Err(Error::Unauthorized {
                message: format!("key {:?} was revoked; {method} was not run", k.name),
            });
        }
        if self.scopes.allows(scope) {
            return Ok(());
        }
        let who = match &self.key {
            Some(k) => format!("key {:?}", k.name),
            None => "this session".to_owned(),
        };
        Err(Error::Forbidden {
            message: format!(
                "{method} needs the `{}` scope; {who} has `{}`",
                scope.as_str(),
                self.scopes
            ),
        })
    }

    /// Counts one call against the key's daily and monthly quotas.
    ///
    /// # Errors
    /// [`Error::QuotaExceeded`] with the time until the quota resets.
    pub fn charge(&self) -> Result<()> {
        if self
            .prepaid
            .as_ref()
            .is_some_and(|p| p.swap(false, std::sync::atomic::Ordering::AcqRel))
        {
            return Ok(());
        }
        match &self.key {
            Some(k) => k.meter.charge(),
            None => Ok(()),
        }
    }

    /// Whether the key's quotas have a call left, without counting one: a
    /// transport asks before it reads a request's body, so that a key whose
    /// quota is spent costs the server no parsing of megabytes only to be
    /// refused (review 246: eight bodies of 16 MB took 9.5 s of CPU).
    ///
    /// # Errors
    /// [`Error::QuotaExceeded`], as [`charge`] gives.
    ///
    /// [`charge`]: Caller::charge
    pub fn spent(&self) -> Result<()> {
        match &self.key {
            Some(k) => k.meter.spent(),
            None => Ok(()),
        }
    }

    /// Counts one call now, for a message whose handling may or may not
    /// reach a call of the method table (a transport that cannot tell
    /// beforehand: MCP's, whose SDK refuses some messages itself), and
    /// returns the caller to handle it with: its first [`charge`] is that
    /// one. Every message counts once, whatever becomes of it.
    ///
    /// # Errors
    /// [`Error::QuotaExceeded`], as [`charge`] gives.
    ///
    /// [`charge`]: Caller::charge
    pub fn charged_ahead(&self) -> Result<Caller> {
        self.charge()?;
        Ok(Caller {
            prepaid: Some(Arc::new(std::sync::atomic::AtomicBool::new(true))),
            ..self.clone()
        })
    }

    /// Takes one of the key's concurrent-request slots for one transport
    /// message (a request or a whole batch).
    ///
    /// # Errors
    /// [`Error::QuotaExceeded`] (`concurrent`) when all are taken.
    pub fn enter(&self) -> Result<InFlight> {
        match &self.key {
            Some(k) => k.meter.enter(),
            None => Ok(InFlight::none()),
        }
    }

    /// For a worker call: its key keeps a request's place for the call
    /// once abandoned (the caller hung up, or its deadline passed) as long
    /// as a worker still runs it, so hanging up does not let a key hold
    /// more workers than its limit of requests in flight. `None` without a
    /// key (no limit).
    pub fn abandoned_calls(&self) -> Option<crate::workers::Abandoned> {
        let meter = self.key.as_ref()?.meter.clone();
        Some(crate::workers::Abandoned::new(move || {
            Box::new(meter.keep_abandoned())
        }))
    }

    /// A place among the key's requests in flight for a reply still being
    /// written to its client, past the limit if it must be (the request
    /// had one), given back on drop: a client that does not read its
    /// replies cannot have more of them held in the server than its key may
    /// have requests at once (review 248: one at a time, never read, held
    /// 2.5 GB). A place of nobody without a key.
    pub fn hold_reply(&self) -> InFlight {
        self.key
            .as_ref()
            .map_or_else(InFlight::none, |k| k.meter.keep_abandoned())
    }

    /// Whether the key is past its limit of requests in flight (its
    /// abandoned worker calls count): a batch starts no more of its
    /// requests then.
    pub fn over_limit(&self) -> bool {
        self.key.as_ref().is_some_and(|k| k.meter.over_limit())
    }
}

/// A key's id, its counts per period name and its last use, to be written.
type PendingRow = (i64, Vec<(String, u64)>, Option<i64>);

#[derive(Debug, Default)]
struct Registry {
    /// Whether the keys were read at least once.
    loaded: bool,
    version: Option<String>,
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
}

#[derive(Debug)]
struct Inner {
    db: Backend,
    tiers: Tiers,
    clock: Arc<dyn Clock>,
    registry: RwLock<Arc<Registry>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// One write or read of the counts at a time (a read between a write's
    /// taking the pending counts and its commit would count them nowhere).
    /// Not the refresh's: it reads the counts of new keys only, which have
    /// none pending, and a refresh waiting for a flush (a write, behind the
    /// writer or the standbys) kept a revocation from taking effect.
    counting: tokio::sync::Mutex<()>,
    /// Keys dropped from the registry with counts not yet written.
    retired: Mutex<Vec<Arc<KeyEntry>>>,
    /// Names revoked here whose revocation the database may not show yet:
    /// a refresh meanwhile loads them refused (`revoke_here`).
    revoked_here: Mutex<std::collections::HashSet<String>>,
}

/// The keys and quotas of one service.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl Auth {
    /// Loads the active keys of `db` and what they used this day and month.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn open(db: impl Into<Backend>, tiers: Tiers, clock: Arc<dyn Clock>) -> Result<Auth> {
        let auth = Auth {
            inner: Arc::new(Inner {
                db: db.into(),
                tiers,
                clock,
                registry: RwLock::new(Arc::new(Registry::default())),
                refreshing: tokio::sync::Mutex::new(()),
                counting: tokio::sync::Mutex::new(()),
                retired: Mutex::new(Vec::new()),
                revoked_here: Mutex::new(std::collections::HashSet::new()),
            }),
        };
        auth.prune().await?;
        auth.refresh().await?;
        Ok(auth)
    }

    /// The tiers keys may be given.
    pub fn tiers(&self) -> &Tiers {
        &self.inner.tiers
    }

    fn registry(&self) -> Arc<Registry> {
        read(&self.inner.registry).clone()
    }

    /// Whether keys are in use: once any key has been created in this
    /// database, every HTTP request needs one, even after every key is
    /// revoked (revoking them all refuses everyone rather than letting
    /// everyone in as the local user).
    pub fn has_keys(&self) -> bool {
        let r = self.registry();
        r.version.is_some() || !r.by_hash.is_empty()
    }

    /// The caller presenting `secret`.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for an unknown or revoked key (the message
    /// never repeats the secret).
    pub fn authenticate(&self, secret: &str) -> Result<Caller> {
        let digest = keys::hash(secret.trim());
        match self.registry().by_hash.get(&digest) {
            Some(k) if !k.is_revoked() => Ok(Caller {
                scopes: k.scopes,
                key: Some(k.clone()),
                prepaid: None,
            }),
            _ => Err(Error::Unauthorized {
                message: "the API key is not valid (unknown or revoked)".into(),
            }),
        }
    }

    /// Stops accepting the key named `name` on this server at once, before
    /// its revocation is written (which waits for the writer, behind any
    /// key's writes: review 248 had a write key's long writes keep its own
    /// revocation from taking effect). It stays refused here whatever
    /// becomes of the write, a refresh before the write is done included;
    /// true when such a key was known.
    pub fn revoke_here(&self, name: &str) -> bool {
        lock(&self.inner.revoked_here).insert(name.to_owned());
        let registry = self.registry();
        let mut found = false;
        for k in registry.by_hash.values().filter(|k| k.name == name) {
            k.revoked.store(true, Ordering::Release);
            found = true;
        }
        found
    }

    /// Every active key's use of its quotas now, by name.
    pub fn usage(&self) -> Vec<KeyUsage> {
        let registry = self.registry();
        let mut out: Vec<KeyUsage> = registry
            .by_hash
            .values()
            .map(|k| {
                let (today, month) = k.used();
                KeyUsage {
                    name: k.name.clone(),
                    tier: k.tier.clone(),
                    today,
                    month,
                    limits: self.inner.tiers.get(&k.tier).unwrap_or(TierLimits {
                        daily: None,
                        monthly: None,
                        concurrent: None,
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether `caller` is still let in: its key has not been revoked since
    /// it was presented (a local caller always is). For requests that last,
    /// as event streams do.
    pub fn still_valid(&self, caller: &Caller) -> bool {
        caller.key().is_none_or(|k| !k.is_revoked())
    }

    /// Re-reads the keys when `keys_version` changed; true when it did.
    /// Keys still active keep their counters.
    ///
    /// # Errors
    /// SQLite errors (the keys in memory stay as they were).
    pub async fn refresh(&self) -> Result<bool> {
        let _one = self.inner.refreshing.lock().await;
        let current = self.registry();
        let db = &self.inner.db;
        let version = keys::version(db).await?;
        if current.loaded && version == current.version {
            return Ok(false);
        }
        let (day, month, _) = periods(self.inner.clock.now());
        let (dname, mname) = (day.name(), month.name());
        let rows = db
            .keys_query(
                &format!(
                    "SELECT k.id, k.name, k.hash, k.scopes, k.tier,
                            coalesce((SELECT count FROM {q} q WHERE q.key_id = k.id AND q.period = ?1), 0),
                            coalesce((SELECT count FROM {q} q WHERE q.key_id = k.id AND q.period = ?2), 0)
                     FROM {k} k WHERE k.revoked_at IS NULL",
                    q = db.own("quota"),
                    k = db.own("keys")
                ),
                params![dname, mname],
            )
            .await?;
        let rows: Vec<(i64, String, String, String, String, i64, i64)> = rows
            .rows
            .into_iter()
            .map(|r| {
                (
                    keys::int(&r[0]).unwrap_or(0),
                    keys::text(&r[1]),
                    keys::text(&r[2]),
                    keys::text(&r[3]),
                    keys::text(&r[4]),
                    keys::int(&r[5]).unwrap_or(0),
                    keys::int(&r[6]).unwrap_or(0),
                )
            })
            .collect();
        let by_id: HashMap<i64, &Arc<KeyEntry>> =
            current.by_hash.values().map(|k| (k.id, k)).collect();
        let mut next = Registry {
            loaded: true,
            version,
            by_hash: HashMap::with_capacity(rows.len()),
        };
        for (id, name, digest, scopes, tier, used_day, used_month) in rows {
            let Some(digest) = keys::unhex(&digest) else {
                tracing::warn!(key = %name, "key has a malformed hash; it is ignored");
                continue;
            };
            let entry = match by_id.get(&id) {
                Some(e) => Arc::clone(e),
                None => {
                    let limits = self.inner.tiers.get(&tier).unwrap_or_else(|| {
                        tracing::warn!(key = %name, tier = %tier, "key has a tier the configuration does not define; it gets the limits of `free`");
                        self.inner.tiers.get("free").unwrap_or(TierLimits {
                            daily: Some(0),
                            monthly: Some(0),
                            concurrent: Some(0),
                        })
                    });
                    Arc::new(KeyEntry {
                        id,
                        scopes: scopes.parse::<Scopes>().unwrap_or(Scopes::NONE),
                        meter: Arc::new(Meter {
                            name: name.clone(),
                            limits,
                            usage: Mutex::new(Usage::resume(
                                (day, used_day.max(0) as u64),
                                (month, used_month.max(0) as u64),
                            )),
                            clock: self.inner.clock.clone(),
                        }),
                        revoked: AtomicBool::new(lock(&self.inner.revoked_here).contains(&name)),
                        name,
                        tier,
                    })
                }
            };
            next.by_hash.insert(digest, entry);
        }
        let kept: std::collections::HashSet<i64> = next.by_hash.values().map(|k| k.id).collect();
        let gone: Vec<Arc<KeyEntry>> = current
            .by_hash
            .values()
            .filter(|k| !kept.contains(&k.id))
            .cloned()
            .collect();
        for k in &gone {
            k.revoked.store(true, Ordering::Release);
        }
        // Revoked in the database now: nothing left to remember.
        lock(&self.inner.revoked_here).retain(|n| next.by_hash.values().any(|k| &k.name == n));
        if !gone.is_empty() {
            tracing::info!(keys = gone.len(), "revoked keys no longer accepted");
            lock(&self.inner.retired).extend(gone);
        }
        *write(&self.inner.registry) = Arc::new(next);
        Ok(true)
    }

    /// Adds the counts of the requests since the last flush to
    /// `litebridge_quota`, records each key's last use, then reads every
    /// key's totals back: what other servers on the same database counted
    /// is then counted here too (each key's count is the database's total
    /// plus what this server has not written yet), so their requests add up
    /// against one quota, within one flush interval.
    ///
    /// # Errors
    /// SQLite errors; the counts are kept for the next flush.
    pub async fn flush(&self) -> Result<()> {
        self.write_counts().await?;
        self.read_totals().await
    }

    /// Sets each key's counts of the current day and month to the
    /// database's totals plus what is pending here.
    async fn read_totals(&self) -> Result<()> {
        let _one = self.inner.counting.lock().await;
        let (day, month, _) = periods(self.inner.clock.now());
        let db = &self.inner.db;
        // Two lookups by primary key per key, every flush: the counts of
        // past periods (up to 40 days and 13 months of them) are never read.
        let (keys, quota) = (db.own("keys"), db.own("quota"));
        let rows = db
            .keys_query(
                &format!(
                    "SELECT k.id,
                            coalesce((SELECT q.count FROM {quota} AS q
                                      WHERE q.key_id = k.id AND q.period = ?1), 0),
                            coalesce((SELECT q.count FROM {quota} AS q
                                      WHERE q.key_id = k.id AND q.period = ?2), 0)
                     FROM {keys} AS k"
                ),
                params![day.name(), month.name()],
            )
            .await?;
        let totals: HashMap<i64, (u64, u64)> = rows
            .rows
            .iter()
            .map(|r| {
                let n = |v: &crate::Value| keys::int(v).unwrap_or(0).max(0) as u64;
                (keys::int(&r[0]).unwrap_or(0), (n(&r[1]), n(&r[2])))
            })
            .collect();
        for e in self.registry().by_hash.values() {
            let (d, m) = totals.get(&e.id).copied().unwrap_or((0, 0));
            lock(&e.meter.usage).sync(day, d, month, m);
        }
        Ok(())
    }

    async fn write_counts(&self) -> Result<()> {
        let _one = self.inner.counting.lock().await;
        let retired = std::mem::take(&mut *lock(&self.inner.retired));
        let entries: Vec<Arc<KeyEntry>> = self
            .registry()
            .by_hash
            .values()
            .cloned()
            .chain(retired.iter().cloned())
            .collect();
        let mut taken = Vec::new();
        for e in &entries {
            let (pending, last) = lock(&e.meter.usage).take_pending();
            if !pending.is_empty() || last.is_some() {
                taken.push((e.clone(), pending, last));
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let rows: Vec<PendingRow> = taken
            .iter()
            .map(|(e, p, l)| {
                (
                    e.id,
                    p.iter().map(|(per, n)| (per.name(), *n)).collect(),
                    *l,
                )
            })
            .collect();
        let db = &self.inner.db;
        let (add, used) = (
            format!(
                "INSERT INTO {}(key_id, period, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key_id, period) DO UPDATE
                     SET count = litebridge_quota.count + excluded.count",
                db.own("quota")
            ),
            format!(
                "UPDATE {} SET last_used_at = CASE
                     WHEN last_used_at IS NULL OR last_used_at < ?2 THEN ?2 ELSE last_used_at END
                 WHERE id = ?1",
                db.own("keys")
            ),
        );
        let mut statements = Vec::new();
        for (id, pending, last) in &rows {
            for (period, n) in pending {
                statements.push((add.clone(), params![*id, period.clone(), *n as i64]));
            }
            if let Some(ms) = last {
                statements.push((used.clone(), params![*id, *ms]));
            }
        }
        // Every key's counts in one transaction: all written or all kept.
        let written = db.own_batch(statements).await;
        if let Err(e) = written {
            // Kept for the next flush, unless they may be written already:
            // an unknown outcome is most often a commit that was made (on
            // PostgreSQL, one that standbys did not confirm in time,
            // `postgres.replicated_to`), and counting it again at every
            // flush while that lasts would refuse keys for calls they did
            // not make. At most one flush's counts are lost instead.
            if e.kind() != crate::ErrorKind::OutcomeUnknown {
                for (entry, pending, last) in taken {
                    lock(&entry.meter.usage).restore_pending(pending, last);
                }
                // Revoked keys' counts too: out of the registry, they are
                // found only there (review 251: they were dropped).
                lock(&self.inner.retired).extend(retired);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Deletes counts of periods that can no longer matter (days over 40
    /// days old, months over 13 months old).
    async fn prune(&self) -> Result<()> {
        let (day, month, _) = periods(self.inner.clock.now());
        let (Period::Day(d), Period::Month(m)) = (day, month) else {
            return Ok(());
        };
        let (old_day, old_month) = (Period::Day(d - 40).name(), Period::Month(m - 13).name());
        let db = &self.inner.db;
        db.own_execute(
            format!(
                "DELETE FROM {} WHERE (period LIKE 'd%' AND period < ?1)
                     OR (period LIKE 'm%' AND period < ?2)",
                db.own("quota")
            ),
            params![old_day, old_month],
        )
        .await?;
        Ok(())
    }

    /// Refreshes the keys and flushes the counters every `interval` until
    /// the database closes, each on its own beat: a flush is a write, which
    /// may wait long (behind the writer, for the standbys), and the keys'
    /// refresh, a revocation's way in from other servers, does not wait
    /// for it. Stop it by aborting the handle; call [`Auth::flush`] once
    /// more at shutdown.
    pub fn maintain(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let refreshing = every(self.clone(), interval, |auth| async move {
            if let Err(e) = auth.refresh().await {
                tracing::warn!("re-reading the API keys failed: {e}");
            }
        });
        let flushing = every(self.clone(), interval, |auth| async move {
            if let Err(e) = auth.flush().await {
                tracing::warn!("writing the quota counters failed (kept for the next try): {e}");
            }
        });
        tokio::spawn(async move {
            tokio::join!(refreshing, flushing);
        })
    }
}

/// Runs `work` on `auth` every `interval` (counted from the end of the
/// last run) while its database is open.
async fn every<W: Future<Output = ()>>(auth: Auth, interval: Duration, work: impl Fn(Auth) -> W) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if auth.inner.db.is_open() {
            work(auth.clone()).await;
        }
    }
}
