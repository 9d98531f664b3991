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
//!
//! # When L2 fails
//!
//! The cache is an optimisation: a failing L2 (a full disk, a file made
//! read-only) must not turn a worker call that succeeded into an error, nor
//! stop the service. A read that fails counts as a miss; a result loaded by
//! [`Cache::get_or_load`] whose L2 write fails stays in memory only (an
//! older row of its key, if L2 could not be read either, may come back once
//! memory lets it go: a result of the same call, by its key).
//! Each failure is logged (at most once every ten seconds) and counted in
//! [`CacheStats::l2_errors`]. An explicit [`Cache::set`] or
//! [`Cache::delete`] that fails is an error, and leaves the key out of
//! memory, so what is read next comes from L2.
//! [`Cache::memory_only`] is the cache a service falls back to when L2
//! cannot even be opened, as the seed system's cache manager did.
//!
//! # Memory never older than the table
//!
//! A `set` or `delete` of a key and a `get` copying the key's row from L2
//! into memory take turns (one of [`STRIPES`] locks, by the key's hash): a
//! `get` that read the old row cannot put it in memory after a `set` wrote
//! the new one. A write takes the key out of memory first and puts the new
//! value in only once L2 has it, so a caller that goes away mid-write
//! leaves memory empty rather than stale. `get_or_load`'s results are not
//! in this order (its load may take minutes); the RPC layer keeps its keys
//! (`bridge:`) apart from those of `cache.set` (`user:`).
//!
//! # Memory never older than another writer's
//!
//! Other writers of the L2 change it behind memory's back: other front ends
//! on PostgreSQL (`cache_peers` hears them), and on SQLite any other process
//! that opens the file (a `litebridge stdio` session, a cron job, a second
//! server during a deploy). On SQLite, every read of memory first looks at
//! the file's shared index for a change this process's writer did not make
//! (`db/foreign_commits.rs`: a mutex and 64 bytes of shared memory, no
//! system call); memory is emptied when there is one, and an entry read from
//! L2 (or written) before it is never answered. This process's own writes
//! never empty it. A header that counts no commit cannot be trusted, so a
//! process that only reads a file closed cleanly has its writer commit once.
//!
//! # Sweeping
//!
//! Expired rows are never returned, and [`CacheSweeper::sweep`] deletes them
//! by the `expires_at` index in bounded batches (each one write of its own,
//! so other writes interleave); the service runs it every minute, and again
//! a second later while a sweep finds more than its bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;

use crate::backend::Backend;
use crate::db::Database;
use crate::error::{Error, Result, TimeoutStage};
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
    /// Memory the entries kept in memory may take in all, estimated from
    /// their JSON trees ([`footprint`]). Default: 64 MiB.
    pub max_bytes: u64,
    /// An entry whose tree is estimated larger is never kept in memory: it
    /// is read from L2 each time (and, without an L2, not kept at all).
    /// Default: 1 MiB.
    pub max_entry_bytes: u64,
    /// Lifetime of an entry set without one; `None` keeps it until deleted
    /// or evicted. Default: 1 hour.
    pub default_ttl: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            default_ttl: Some(Duration::from_secs(3600)),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: Arc<Json>,
    expires: Option<SystemTime>,
    /// What it counts against the memory's bound: its [`footprint`], at
    /// least the bound over `max_entries` (so the count is bounded too), and
    /// `u32::MAX` past `max_entry_bytes` (more than moka will ever admit).
    weight: u32,
    /// The generation ([`Cache::watch`]) seen before its value was read
    /// from L2 or written there: on SQLite it is answered only while the
    /// generation is no later ([`Cache::fresh`]).
    generation: u64,
}

/// How many bytes `value`'s tree takes in memory, estimated as the request
/// parser estimates a tree as it builds one (`json`'s `Budget`): every
/// node, every array's and string's allocation (by capacity, each with its
/// allocator's overhead), and for every object the nodes of its map
/// (serde_json's is a `BTreeMap`, whose first node takes 632 bytes and
/// holds up to 11 members) and its members' names. An array of 8 million
/// zeros is 16 MiB of JSON and about 256 MiB of tree; `[{"":0}, ...]` is 8
/// bytes of JSON and about 700 of tree per element. It is the tree that
/// memory keeps. (A short string counted by its bytes alone let a page of
/// them hold twice its bound: review 251.)
pub fn footprint(value: &Json) -> u64 {
    footprint_past(value, u64::MAX)
}

/// [`footprint`], stopping once it is past `limit` (a huge value is not
/// walked whole to learn that it is too large).
fn footprint_past(value: &Json, limit: u64) -> u64 {
    use crate::json::{MEMBER, NODE as MAP_NODE, block};
    const NODE: u64 = std::mem::size_of::<Json>() as u64;
    let mut total = NODE;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Json::String(s) => total += block(s.capacity()) as u64,
            Json::Array(a) => {
                total += block(a.capacity() * NODE as usize) as u64;
                stack.extend(a.iter());
            }
            Json::Object(o) => {
                if !o.is_empty() {
                    total += (MAP_NODE + (o.len() - 1) * MEMBER) as u64;
                }
                for (k, v) in o {
                    total += block(k.capacity()) as u64;
                    stack.push(v);
                }
            }
            Json::Null | Json::Bool(_) | Json::Number(_) => {}
        }
        if total > limit {
            break;
        }
    }
    total
}

/// Counters of a [`Cache`].
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// What the entries in memory now count against
    /// [`CacheConfig::max_bytes`] (approximate: each counts its
    /// [`footprint`], and at least `max_bytes / max_entries`).
    pub l1_bytes: u64,
    /// Rows in the L2 table (expired ones not yet swept included) when last
    /// counted: by [`Cache::count_l2`] and after every sweep. `None` without
    /// an L2.
    pub l2_entries: Option<u64>,
    /// L2 reads and writes that failed (the cache went on in memory).
    pub l2_errors: u64,
    /// Why the cache has no L2 although it was meant to, if so.
    pub l2_unavailable: Option<Arc<str>>,
    /// Hits over reads (0 when nothing was read).
    pub hit_rate: f64,
    /// With an L2 on PostgreSQL, whether this front end hears the other
    /// front ends' writes now (its memory is used only then); `None`
    /// elsewhere.
    pub listening: Option<bool>,
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
    l2_errors: AtomicU64,
    /// `u64::MAX` until counted.
    l2_entries: AtomicU64,
    /// When an L2 failure was last logged.
    last_warning: Mutex<Option<std::time::Instant>>,
    /// When `count_l2_within` last counted the L2 rows.
    counted_at: Mutex<Option<std::time::Instant>>,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            l2_entries: AtomicU64::new(u64::MAX),
            ..Counters::default()
        }
    }

    /// Counts an L2 failure, and logs it unless a warning was logged in
    /// the last ten seconds (a full disk fails every write).
    fn l2_failed(&self, what: &str, e: &Error) {
        let n = self.l2_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warning_due() {
            tracing::warn!(
                "the cache's L2 (table litebridge_cache) failed to {what}, going on in memory ({n} failures so far): {e}"
            );
        }
    }

    /// Logs, as [`Counters::l2_failed`] does, a loaded value not cached.
    fn not_kept(&self, key: &str, e: &Error) {
        if self.warning_due() {
            tracing::warn!(
                "a loaded value for the cache key {key:?} is not cached (each call loads it again): {e}"
            );
        }
    }

    /// Whether no warning was logged in the last ten seconds (then one is
    /// now).
    fn warning_due(&self) -> bool {
        let mut last = crate::sync::lock(&self.last_warning);
        let now = std::time::Instant::now();
        let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            *last = Some(now);
        }
        due
    }
}

/// Locks that order writes of a key against copies of it into memory.
const STRIPES: usize = 64;

/// Rows deleted by one statement of a sweep at most.
const SWEEP_BATCH: u64 = 500;
/// Bytes of values deleted by one statement of a sweep at most (past the
/// first row, which goes whatever its size): the writer frees every page
/// of what it deletes, and 500 rows of the largest values would hold it
/// for seconds.
const SWEEP_BYTES: i64 = 16 << 20;
/// Statements per sweep: a sweep deletes at most `SWEEP_BATCH * SWEEP_STEPS` rows.
const SWEEP_STEPS: u64 = 20;

/// The two-level cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    l1: moka::future::Cache<String, Entry>,
    db: Option<Backend>,
    clock: Arc<dyn Clock>,
    default_ttl: Option<Duration>,
    counters: Arc<Counters>,
    l2_unavailable: Option<Arc<str>>,
    stripes: Arc<[tokio::sync::Mutex<()>]>,
    /// The least weight of an entry, and the most kept in memory.
    weights: Weights,
    /// The count of changes of the SQLite file of the L2 by others
    /// (`foreign_commits`) memory was last emptied for.
    emptied_for: Arc<AtomicU64>,
    /// When a commit was last asked of the writer because the file's
    /// header counted none ([`Cache::count_a_commit`]).
    commit_asked: Arc<Mutex<Option<std::time::Instant>>>,
    /// Other front ends on the same PostgreSQL L2 (`cache_peers`).
    #[cfg(feature = "postgres")]
    peers: Option<Arc<super::cache_peers::Peers>>,
}

/// The look at the generation after a value went into memory, made even
/// when its caller goes away first (review 159's rule, kept through
/// cancellation). moka's `insert` can wait after the value is already in
/// its map (to tell its listener of a value replaced, or to run its
/// housekeeping when its log of writes is full), so a caller dropped there,
/// by a client that hung up, skipped the look, and memory served a value
/// older than another front end's write until its TTL. Dropped armed, a
/// guard whose generation moved takes the key out (on a task of its own
/// when that has to wait); one that did not costs nothing (always so
/// without an L2 that others write, whose generation stays 0).
struct Recheck<'a> {
    cache: &'a Cache,
    key: &'a str,
    generation: u64,
    armed: bool,
}

impl<'a> Recheck<'a> {
    fn armed(cache: &'a Cache, key: &'a str, generation: u64) -> Recheck<'a> {
        Recheck {
            cache,
            key,
            generation,
            armed: true,
        }
    }

    fn moved(&self) -> bool {
        self.cache.generation() != self.generation
    }

    /// The look, awaited: disarmed once the key is out (or did not need to be).
    async fn finish(mut self) {
        if self.moved() {
            self.cache.l1.invalidate(self.key).await;
        }
        self.armed = false;
    }

    /// Nothing of this caller's went into memory (it failed): no look.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Recheck<'_> {
    fn drop(&mut self) {
        use futures_util::FutureExt as _;
        if !self.armed || !self.moved() {
            return;
        }
        let l1 = &self.cache.l1;
        // Done at its first poll unless another task holds the key's lock.
        if l1.invalidate(self.key).now_or_never().is_some() {
            return;
        }
        let (l1, key) = (l1.clone(), self.key.to_owned());
        // A runtime shutting down drops the task unrun: then all of it goes.
        let unrun = AllIfUnrun(Some(l1.clone()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                l1.invalidate(&key).await;
                unrun.done();
            });
        }
    }
}

/// Empties the memory it holds when dropped before [`AllIfUnrun::done`].
struct AllIfUnrun(Option<moka::future::Cache<String, Entry>>);

impl AllIfUnrun {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for AllIfUnrun {
    fn drop(&mut self) {
        if let Some(l1) = self.0.take() {
            l1.invalidate_all();
        }
    }
}

/// Starts listening for other front ends' writes of the L2 on `pg`.
#[cfg(feature = "postgres")]
fn listen_to_peers(
    pg: &crate::pg::PgDatabase,
    l1: &moka::future::Cache<String, Entry>,
) -> Arc<super::cache_peers::Peers> {
    use crate::pg::Heard;
    let peers = super::cache_peers::Peers::new();
    let (weak, l1) = (Arc::downgrade(&peers), l1.clone());
    pg.listen(peers.everything(), move |heard| {
        let (weak, l1) = (weak.clone(), l1.clone());
        async move {
            let Some(p) = weak.upgrade() else {
                return false; // the cache is gone
            };
            match heard {
                Heard::Listening => {
                    l1.invalidate_all();
                    p.set_listening(true);
                }
                Heard::Lost => {
                    p.set_listening(false);
                    l1.invalidate_all();
                }
                Heard::Payload(payload) => match p.heard(&payload) {
                    None => {}
                    Some(None) => l1.invalidate_all(),
                    Some(Some(key)) => l1.invalidate(key).await,
                },
                Heard::Idle => {}
            }
            true
        }
    });
    peers
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// How long after asking the writer for a commit ([`Cache::count_a_commit`])
/// it is asked again while the file's header still counts none.
const COMMIT_AGAIN: Duration = Duration::from_secs(1);

/// How entries are weighed against [`CacheConfig::max_bytes`].
#[derive(Debug, Clone, Copy)]
struct Weights {
    floor: u64,
    max_entry: u64,
}

impl Weights {
    fn of(config: &CacheConfig) -> Weights {
        Weights {
            floor: (config.max_bytes / config.max_entries.max(1)).max(1),
            max_entry: config.max_entry_bytes.min(config.max_bytes),
        }
    }

    /// `value` as an entry of memory, expiring at `expires`.
    fn entry(self, value: Json, expires: Option<SystemTime>, generation: u64) -> Entry {
        let bytes = footprint_past(&value, self.max_entry);
        let weight = if bytes > self.max_entry {
            u32::MAX
        } else {
            u32::try_from(bytes.max(self.floor)).unwrap_or(u32::MAX)
        };
        Entry {
            value: Arc::new(value),
            expires,
            weight,
            generation,
        }
    }
}

impl Entry {
    /// `value` as an entry memory never keeps, read at `generation` (a
    /// shared load hands its value to the other callers through moka, which
    /// drops it at its next housekeeping).
    fn too_heavy(value: Json, generation: u64) -> Entry {
        Entry {
            value: Arc::new(value),
            expires: None,
            weight: u32::MAX,
            generation,
        }
    }

    /// Whether memory may keep it.
    fn fits(&self) -> bool {
        self.weight != u32::MAX
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
        Ok(Cache::build(db.map(Backend::from), config, clock, None))
    }

    /// A cache with its L2 on `db`, whose tables are migrated already (a
    /// [`Service`](crate::Service)'s, or a PostgreSQL database's).
    pub fn with_backend(db: Backend, config: CacheConfig, clock: Arc<dyn Clock>) -> Cache {
        Cache::build(Some(db), config, clock, None)
    }

    /// A cache in memory only, because its L2 could not be opened for
    /// `reason` (shown in [`CacheStats::l2_unavailable`]).
    pub fn memory_only(config: CacheConfig, reason: impl Into<Arc<str>>) -> Cache {
        Cache::build(None, config, Arc::new(SystemClock), Some(reason.into()))
    }

    fn build(
        db: Option<Backend>,
        config: CacheConfig,
        clock: Arc<dyn Clock>,
        l2_unavailable: Option<Arc<str>>,
    ) -> Cache {
        let counters = Arc::new(Counters::new());
        let evictions = counters.evictions.clone();
        let weights = Weights::of(&config);
        // Bounded by weight: at most `max_bytes`, and (every entry weighing
        // at least `floor`) at most `max_entries`. Below `u32::MAX`, so an
        // entry weighing that is never admitted.
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.max_bytes.min(u64::from(u32::MAX) - 1))
            .weigher(|_k: &String, e: &Entry| e.weight)
            .expire_after(Expire)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        #[cfg(feature = "postgres")]
        let peers = match &db {
            Some(Backend::Postgres(pg)) => Some(listen_to_peers(pg, &l1)),
            _ => None,
        };
        Cache {
            l1,
            db,
            clock,
            default_ttl: config.default_ttl,
            counters,
            l2_unavailable,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            weights,
            emptied_for: Arc::new(AtomicU64::new(0)),
            commit_asked: Arc::default(),
            #[cfg(feature = "postgres")]
            peers,
        }
    }

    /// The generation of what memory holds, looked at now, or `None` when
    /// memory may be neither read nor filled:
    /// - on PostgreSQL, the count of other front ends' writes heard so far,
    ///   while this one is hearing them;
    /// - on SQLite, the count of changes of the file by connections other
    ///   than this process's writer (`foreign_commits`), seen at once
    ///   however long ago they came; memory is emptied when it moves (a
    ///   key another process deleted or replaced would have stayed in
    ///   memory here until its TTL). `None` when that cannot be told;
    /// - otherwise 0.
    fn watch(&self) -> Option<u64> {
        #[cfg(feature = "postgres")]
        if let Some(p) = &self.peers {
            return p.trusted().then(|| p.generation());
        }
        let Some(Backend::Sqlite(db)) = &self.db else {
            return Some(0);
        };
        let look = db.foreign_commits()?;
        if look.uncounted {
            self.count_a_commit(db);
        }
        let now = look.generation;
        if self.emptied_for.load(Ordering::Acquire) < now {
            // Emptied before it is recorded: a caller that sees `now`
            // recorded reads memory emptied for it.
            self.l1.invalidate_all();
            self.emptied_for.fetch_max(now, Ordering::AcqRel);
        }
        Some(now)
    }

    /// Whether `e`, found in memory when the generation was `now`, may be
    /// answered: on SQLite, only if it was read or written at `now` or
    /// later. Memory is emptied when the generation moves, but not at once
    /// for every reader: an entry read from L2 before another process's
    /// commit could go into memory after the emptying, and moka answers an
    /// old value replaced at that moment (review 211 saw both, one commit
    /// behind, under concurrent reads). On PostgreSQL the generation moves
    /// for every key another front end writes, and the key is dropped.
    fn fresh(&self, e: &Entry, now: u64) -> bool {
        !matches!(self.db, Some(Backend::Sqlite(_))) || e.generation >= now
    }

    /// Has the writer commit a change, once, when the file's header counts
    /// no commit: every look at such a header counts a change, so memory is
    /// never used until one is made, and a process that only reads (a
    /// server restarted on a file closed cleanly, serving what the table
    /// holds) would never make one. The row is litebridge's own and changes
    /// nothing else. Asked again a second later while the header still
    /// counts none (review 214: a write refused, or an index rebuilt later,
    /// left memory unused for good); on a file litebridge may not write,
    /// memory stays unused.
    fn count_a_commit(&self, db: &Database) {
        {
            let mut asked = crate::sync::lock(&self.commit_asked);
            if asked.is_some_and(|t| t.elapsed() < COMMIT_AGAIN) {
                return;
            }
            *asked = Some(std::time::Instant::now());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A value no earlier run wrote: a row overwritten with the same
        // bytes is no commit to SQLite.
        let (db, at) = (db.clone(), micros(SystemTime::now()));
        runtime.spawn(async move {
            let written = db
                .execute_trusted(
                    "INSERT INTO main.litebridge_meta(key, value) VALUES ('cache_counted_at', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![at.to_string()],
                )
                .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "the cache's first commit failed: memory stays unused");
            }
        });
    }

    /// Whether memory may be read and filled now ([`Cache::watch`]).
    fn l1_trusted(&self) -> bool {
        self.watch().is_some()
    }

    /// The generation of what memory holds ([`Cache::watch`]); one no
    /// generation equals when memory may not be used.
    fn generation(&self) -> u64 {
        self.watch().unwrap_or(u64::MAX)
    }

    /// An L2 write of `key` on `db`: `write`, and the notification other
    /// front ends drop the key on, sent with it. A write that named the
    /// cache's channel before it moved (`pg/listen.rs`) and committed after
    /// is told on the new one too: the move's request to empty memory went
    /// out before it committed, and those on the new channel could have
    /// read the old value again since (review 229).
    async fn announced(
        &self,
        db: &Backend,
        key: &str,
        write: (String, crate::value::Params),
    ) -> Result<Vec<crate::ExecResult>> {
        #[cfg(feature = "postgres")]
        if let (Some(p), Backend::Postgres(pg)) = (&self.peers, db) {
            let channel = pg.cache_channel();
            let notify = "SELECT pg_catalog.pg_notify(?1, ?2)";
            let done = db
                .own_batch(vec![
                    write,
                    (notify.to_owned(), params![channel.clone(), p.payload(key)]),
                ])
                .await?;
            let now = pg.cache_channel();
            if now != channel
                && let Err(e) = db
                    .own_batch(vec![(notify.to_owned(), params![now, p.payload(key)])])
                    .await
            {
                // Unheard, as a notification lost with its listener would
                // be. (The key is the caller's data: not logged.)
                tracing::warn!(
                    "a cache write could not be told on the cache's new channel, so other front \
                     ends may serve its key's old value from memory until its TTL: {e}"
                );
            }
            return Ok(done);
        }
        #[cfg(not(feature = "postgres"))]
        let _ = key;
        db.own_batch(vec![write]).await
    }

    /// The lock that orders writes of `key` against copies of it into memory.
    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % self.stripes.len()]
    }

    fn live(&self, e: &Entry) -> bool {
        e.expires.is_none_or(|t| self.clock.now() < t)
    }

    /// The value of `key`, if present and not expired (an L2 that fails to
    /// answer counts as a miss).
    ///
    /// # Errors
    /// None today; the `Result` is kept for L2 backends that must report.
    pub async fn get(&self, key: &str) -> Result<Option<Json>> {
        let now = self.watch();
        let trusted = now.is_some();
        if let Some(now) = now
            && let Some(e) = self.l1.get(key).await
        {
            if self.live(&e) && self.fresh(&e, now) {
                self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some((*e.value).clone()));
            }
            self.l1.invalidate(key).await;
        }
        let _turn = self.stripe(key).lock().await;
        // Set while this waited its turn?
        if trusted
            && let Some(now) = self.watch()
            && let Some(e) = self.l1.get(key).await
            && self.live(&e)
            && self.fresh(&e, now)
        {
            self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((*e.value).clone()));
        }
        let generation = self.generation();
        match self.l2_get(key, generation).await {
            Some(e) => {
                self.counters.l2_hits.fetch_add(1, Ordering::Relaxed);
                // Not if another front end wrote meanwhile: what was read
                // may be older than what it wrote.
                if e.fits() && trusted && self.l1_trusted() && self.generation() == generation {
                    let v = (*e.value).clone();
                    self.remember(key, e, generation).await;
                    return Ok(Some(v));
                }
                // Not kept: the tree itself is the answer, not a copy of it.
                Ok(Some(Arc::unwrap_or_clone(e.value)))
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// The live L2 entry of `key`, read at `generation` (seen before this
    /// was called); `None` also when L2 fails (counted).
    async fn l2_get(&self, key: &str, generation: u64) -> Option<Entry> {
        let db = self.db.as_ref()?;
        let rows = match db
            .own_query(
                &format!(
                    "SELECT value, expires_at FROM {} WHERE key = ?1",
                    db.own("cache")
                ),
                params![key],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.counters.l2_failed("read", &e);
                return None;
            }
        };
        let row = rows.rows.into_iter().next()?;
        let expires = match row.get(1) {
            Some(Value::Integer(us)) => {
                Some(UNIX_EPOCH + Duration::from_micros(u64::try_from(*us).unwrap_or(0)))
            }
            _ => None,
        };
        let value = match row.into_iter().next() {
            Some(Value::Text(t)) => {
                match super::read_tree(&t, db, || format!("the cached value of key {key:?}")) {
                    Ok(value) => value.unwrap_or(Json::Null),
                    // Stored by an earlier version, or before the limit
                    // was lowered: a miss.
                    Err(e) => {
                        self.counters.l2_failed("read", &e);
                        return None;
                    }
                }
            }
            _ => Json::Null,
        };
        let e = self.weights.entry(value, expires, generation);
        self.live(&e).then_some(e)
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
    /// `value` cannot be written as JSON; with an L2, [`Error::TooLarge`]
    /// when its tree would pass the database's `max_result_bytes` (nothing
    /// changed); or writing L2 failed (then the key is out of memory, and
    /// L2 holds what it held before: see the module's note).
    pub async fn set(&self, key: &str, value: Json, ttl: Option<Duration>) -> Result<()> {
        let text = self.l2_text(&value)?;
        let _turn = self.stripe(key).lock().await;
        self.l1.invalidate(key).await;
        self.store(key, value, text, ttl, false).await
    }

    /// `value`'s text for L2 (`None` without one), refused past what a
    /// stored value may be read back within (`storable`).
    fn l2_text(&self, value: &Json) -> Result<Option<String>> {
        let Some(db) = &self.db else {
            return Ok(None);
        };
        let text =
            serde_json::to_string(value).map_err(|e| Error::invalid("value", e.to_string()))?;
        super::storable(&text, db, "value")?;
        Ok(Some(text))
    }

    /// A loaded value's text for L2, or `None` (logged) when it is not to
    /// be kept at all: the caller has it, and the next call loads it again.
    fn loaded_text(&self, key: &str, value: &Json) -> Option<Option<String>> {
        match self.l2_text(value) {
            Ok(text) => Some(text),
            Err(e) => {
                self.counters.not_kept(key, &e);
                None
            }
        }
    }

    /// Writes L2 (`text`, from [`Cache::l2_text`]), then memory; when L2
    /// fails the error is counted and returned, and memory gets the value
    /// only if `keep_on_failure`.
    async fn store(
        &self,
        key: &str,
        value: Json,
        text: Option<String>,
        ttl: Option<Duration>,
        keep_on_failure: bool,
    ) -> Result<()> {
        let expires = self.expiry(ttl);
        let mut failed = None;
        // As in `get`: another front end's write heard while this one was
        // written may be the later one (review 159: its notification came
        // before this value went into memory, which then served it until
        // its TTL).
        let generation = self.generation();
        if let (Some(db), Some(text)) = (&self.db, text) {
            let write = (
                format!(
                    "INSERT INTO {}(key, value, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value,
                         expires_at = excluded.expires_at",
                    db.own("cache")
                ),
                params![key, text, expires.map(micros)],
            );
            if let Err(e) = self.announced(db, key, write).await {
                self.counters.l2_failed("write", &e);
                if !keep_on_failure {
                    return Err(e);
                }
                failed = Some(e);
            }
        }
        let entry = self.weights.entry(value, expires, generation);
        if entry.fits() && self.l1_trusted() && self.generation() == generation {
            self.remember(key, entry, generation).await;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Puts `entry` in memory, read or written while the generation was
    /// `generation`, and takes it out again if another front end's write
    /// was heard meanwhile: its listener moves the generation before it
    /// drops the key, so a drop that came between the caller's look and
    /// this insert is seen here (review 159: it was not, and memory served
    /// the older value until its TTL).
    async fn remember(&self, key: &str, entry: Entry, generation: u64) {
        let recheck = Recheck::armed(self, key, generation);
        self.l1.insert(key.to_owned(), entry).await;
        recheck.finish().await;
    }

    /// Removes `key` from both levels; whether it was there.
    ///
    /// # Errors
    /// Writing L2 failed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let _turn = self.stripe(key).lock().await;
        let in_l1 = self.l1.remove(key).await.is_some();
        let in_l2 = match &self.db {
            Some(db) => {
                let write = (
                    format!("DELETE FROM {} WHERE key = ?1", db.own("cache")),
                    params![key],
                );
                self.announced(db, key, write).await?[0].changes > 0
            }
            None => false,
        };
        Ok(in_l1 || in_l2)
    }

    /// The value of `key`, computing it with `load` when missing. Concurrent
    /// misses of one key run one `load` and share its result. Errors are not
    /// cached. A load's failure is shared at once when it is the method's
    /// own (`worker_error`; `worker_crashed`, even when its caller had
    /// turned retries off: crashes are not multiplied by the crowd); a
    /// caller that waited on another's load that failed otherwise (its
    /// caller's short deadline) waits once more, for a load shared again
    /// with the other waiters and run by one of them (its own, perhaps),
    /// and if that fails too, runs its own with its own options. A wait has
    /// no deadline of its own here: [`Cache::get_or_load_by`] gives it one.
    ///
    /// # Errors
    /// What `load` returns (L2 failures only cost the cache).
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
        self.get_or_load_by(key, ttl, None, load).await
    }

    /// [`Cache::get_or_load`] for a caller with a `deadline` (and the
    /// `timeout` it came from, for the error): waiting on another caller's
    /// load ends there ([`Error::Timeout`] at [`TimeoutStage::Queued`]: this
    /// caller's own load never started), however long that load may still
    /// run. A load of this caller's own is never cut off here (the other
    /// callers sharing it would see it abandoned): `load` must end by the
    /// same deadline itself, which it may reach only later, after a shared
    /// load failed. The cache's own steps end at the deadline too: reading
    /// L2 before a load (a timeout, as for a wait), and waiting for a
    /// loaded value to be stored (the caller has its value; the store is
    /// finished in the background).
    ///
    /// A waiter that saw 200 shared loads given up in a row (their callers
    /// went away) runs its own: moka panics there, and that panic is
    /// caught.
    ///
    /// # Errors
    /// As [`Cache::get_or_load`]; [`Error::Timeout`] past the deadline.
    pub async fn get_or_load_by<F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        deadline: Option<(tokio::time::Instant, Duration)>,
        load: F,
    ) -> Result<Json>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Json>>,
    {
        use futures_util::FutureExt as _;

        // Before the load: reading what is there ends at the deadline (the
        // call never started).
        if let Some(v) = by(deadline, self.get(key)).await?? {
            return Ok(v);
        }
        // After it: the caller has its value. Storing it is waited for
        // until the deadline, and finished in the background past it.
        let keep_text = |value: Json, text: Option<String>| async move {
            match deadline {
                None => {
                    let _ = self.store(key, value, text, ttl, true).await;
                }
                Some((at, _)) => {
                    let (cache, key) = (self.clone(), key.to_owned());
                    let mut store =
                        Box::pin(async move { cache.store(&key, value, text, ttl, true).await });
                    tokio::select! {
                        biased;
                        _ = &mut store => {}
                        () = tokio::time::sleep_until(at) => {
                            tokio::spawn(store);
                        }
                    }
                }
            }
        };
        // A value too large to keep (see `storable`) is not copied.
        let keep = |value: &Json| {
            let text = self.loaded_text(key, value);
            let value = text.is_some().then(|| value.clone());
            async move {
                if let (Some(value), Some(text)) = (value, text) {
                    keep_text(value, text).await;
                }
            }
        };
        let Some(start) = self.watch() else {
            // Not hearing the other front ends: nothing goes into memory.
            if let Some(e) = by(deadline, self.l2_get(key, 0)).await? {
                return Ok((*e.value).clone());
            }
            let value = load().await?;
            keep(&value).await;
            return Ok(value);
        };
        // Armed for the whole of it: a caller that goes away after moka put
        // the value in memory still has it checked. A caller that fails put
        // nothing there (moka keeps no error, and its own load's value is
        // kept only once it succeeded).
        let recheck = Recheck::armed(self, key, start);
        let loaded = async {
            let mut load = Some(load);
            let mut again = false;
            let mut stale = false;
            let value = loop {
                let mine = &mut load;
                // Set once this caller's own load runs for everyone.
                let running = AtomicBool::new(false);
                let shared = self.l1.try_get_with(key.to_owned(), async {
                    running.store(true, Ordering::Relaxed);
                    // Taken first: a read of L2 past the deadline is this
                    // caller's own failure.
                    let load = mine.take().expect("moka runs one init future once");
                    if let Some(e) = by(deadline, self.l2_get(key, start)).await? {
                        return Ok(e);
                    }
                    let value = load().await?;
                    // Kept in memory even if L2 fails (counted): the load
                    // succeeded. One too large to keep in L2 is kept in
                    // neither (memory refuses it too: it weighs more than
                    // moka admits, below).
                    let Some(text) = self.loaded_text(key, &value) else {
                        return Ok(Entry::too_heavy(value, start));
                    };
                    keep_text(value.clone(), text).await;
                    // moka keeps what this returns, but an entry that does not
                    // fit weighs more than it admits: it goes at its next
                    // housekeeping, or below.
                    Ok::<_, Error>(self.weights.entry(value, self.expiry(ttl), start))
                });
                // moka panics in a waiter whose wait outlived 200 loads in a
                // row whose callers went away (a crowd that disconnects): that
                // panic is caught, and such a waiter runs its own load.
                let shared = std::panic::AssertUnwindSafe(shared).catch_unwind();
                let shared = {
                    // On the heap: it holds the load, which is large.
                    let mut shared = Box::pin(shared);
                    match deadline {
                        None => shared.await,
                        Some((deadline, timeout)) => {
                            tokio::select! {
                                biased;
                                r = &mut shared => r,
                                () = tokio::time::sleep_until(deadline) => {
                                    if !running.load(Ordering::Relaxed) {
                                        return Err(Error::Timeout {
                                            after: timeout,
                                            stage: TimeoutStage::Queued,
                                        });
                                    }
                                    shared.await
                                }
                            }
                        }
                    }
                };
                let shared = match shared {
                    Ok(shared) => shared,
                    // This caller's own load panicked: not moka's to answer.
                    Err(panic) if running.load(Ordering::Relaxed) => {
                        std::panic::resume_unwind(panic)
                    }
                    Err(_) => {
                        tracing::warn!(
                            key,
                            "cache: the shared loads of this key were abandoned by their callers \
                             too many times in a row; this caller runs its own"
                        );
                        let load = load.take().expect("not run: its waiter never ran a load");
                        let value = load().await?;
                        keep(&value).await;
                        break value;
                    }
                };
                let method_failed = |e: &Error| {
                    matches!(
                        e.kind(),
                        crate::error::ErrorKind::WorkerError
                            | crate::error::ErrorKind::WorkerCrashed
                    )
                };
                match shared {
                    // In memory from before a change of the file by another
                    // process, seen before this caller began (review 211):
                    // not an answer. Taken out and asked for once more;
                    // then this caller reads L2 and loads on its own.
                    Ok(entry) if !self.fresh(&entry, start) => {
                        self.l1.invalidate(key).await;
                        if !stale {
                            stale = true;
                            continue;
                        }
                        // Always there: this caller's own load's entry is fresh.
                        let Some(load) = load.take() else {
                            break (*entry.value).clone();
                        };
                        if let Some(e) = by(deadline, self.l2_get(key, start)).await? {
                            break Arc::unwrap_or_clone(e.value);
                        }
                        let value = load().await?;
                        keep(&value).await;
                        break value;
                    }
                    Ok(entry) if entry.fits() => break (*entry.value).clone(),
                    Ok(entry) => {
                        // Memory does not keep it: out of moka (its pending
                        // work too, which holds a copy of the entry), it is
                        // this caller's alone unless other callers shared
                        // the load, and is not copied (review 251: a value
                        // too large to cache was copied, 200 MB more).
                        self.l1.invalidate(key).await;
                        self.l1.run_pending_tasks().await;
                        break Arc::try_unwrap(entry.value).unwrap_or_else(|v| (*v).clone());
                    }
                    // This caller's own failure, or the method's (it raised, or
                    // crashed its worker): the answer.
                    Err(e) if load.is_none() || method_failed(&e) => return Err((*e).clone()),
                    // Another caller's load failed in a way its own options may
                    // explain (its deadline): once more, shared again with the
                    // other waiters and run by one of them (this one, perhaps),
                    // so a crowd does not call at once.
                    Err(_) if !again => again = true,
                    // Twice: this caller's own load, with its own options.
                    Err(_) => {
                        let load = load.take().expect("not run yet");
                        let value = load().await?;
                        keep(&value).await;
                        break value;
                    }
                }
            };
            Ok(value)
        }
        .await;
        match loaded {
            Ok(value) => {
                // Another front end may have written while this loaded or read.
                recheck.finish().await;
                Ok(value)
            }
            Err(e) => {
                recheck.disarm();
                Err(e)
            }
        }
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
        let counted = c.l2_entries.load(Ordering::Relaxed);
        CacheStats {
            l1_hits: h1,
            l2_hits: h2,
            misses: m,
            evictions: c.evictions.load(Ordering::Relaxed),
            l1_entries: self.l1.entry_count(),
            l1_bytes: self.l1.weighted_size(),
            l2_entries: self
                .db
                .as_ref()
                .map(|_| if counted == u64::MAX { 0 } else { counted }),
            l2_errors: c.l2_errors.load(Ordering::Relaxed),
            l2_unavailable: self.l2_unavailable.clone(),
            hit_rate: if reads == 0 {
                0.0
            } else {
                (h1 + h2) as f64 / reads as f64
            },
            listening: self.listening(),
        }
    }

    fn listening(&self) -> Option<bool> {
        #[cfg(feature = "postgres")]
        if let Some(p) = &self.peers {
            return Some(p.trusted());
        }
        None
    }
}

/// `step`, ended at `deadline` when there is one ([`Error::Timeout`] at
/// [`TimeoutStage::Queued`]: the steps it bounds come before a call starts,
/// or after its caller has the answer).
async fn by<T>(
    deadline: Option<(tokio::time::Instant, Duration)>,
    step: impl std::future::Future<Output = T>,
) -> Result<T> {
    match deadline {
        None => Ok(step.await),
        Some((at, timeout)) => {
            tokio::time::timeout_at(at, step)
                .await
                .map_err(|_| Error::Timeout {
                    after: timeout,
                    stage: TimeoutStage::Queued,
                })
        }
    }
}

impl Cache {
    /// Counts the L2 table's rows now (one scan of its primary key), for
    /// [`CacheStats::l2_entries`]; `None` without an L2 or when L2 fails.
    pub async fn count_l2(&self) -> Option<u64> {
        let db = self.db.as_ref()?;
        match count_rows(db).await {
            Ok(n) => {
                self.counters.l2_entries.store(n, Ordering::Relaxed);
                Some(n)
            }
            Err(e) => {
                self.counters.l2_failed("count its rows", &e);
                None
            }
        }
    }

    /// As [`Cache::count_l2`], unless this was counted within `fresh` (or a
    /// count is running): for statistics any caller may ask for, which must
    /// not each scan the table.
    pub async fn count_l2_within(&self, fresh: Duration) {
        {
            let mut at = crate::sync::lock(&self.counters.counted_at);
            if at.is_some_and(|t| t.elapsed() < fresh) {
                return;
            }
            // Taken now: a caller arriving during the count skips it too.
            *at = Some(std::time::Instant::now());
        }
        self.count_l2().await;
    }

    /// What deletes this cache's expired L2 rows, holding neither the cache
    /// nor the database (a task that held them would keep them open); one
    /// that does nothing for a cache without L2.
    pub fn sweeper(&self) -> CacheSweeper {
        CacheSweeper {
            clock: self.clock.clone(),
            counters: self.counters.clone(),
            enabled: self.db.is_some(),
        }
    }
}

async fn count_rows(db: &Backend) -> Result<u64> {
    let rows = db
        .own_query(&format!("SELECT count(*) FROM {}", db.own("cache")), ())
        .await?;
    Ok(match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    })
}

/// Deletes a cache's expired L2 rows; see the module's note on sweeping.
#[derive(Clone)]
pub struct CacheSweeper {
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    enabled: bool,
}

impl std::fmt::Debug for CacheSweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheSweeper").finish_non_exhaustive()
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Expired rows deleted.
    pub deleted: u64,
    /// It stopped at its bound with expired rows left: sweep again soon.
    pub more: bool,
}

impl CacheSweeper {
    /// Deletes expired rows of `db`'s cache table, oldest first, at most
    /// 500 rows per statement, and rows while the values before them come
    /// to less than 16 MiB (so 16 MiB and one row at most), for 20
    /// statements, then counts the rows left.
    ///
    /// # Errors
    /// A delete failed (counted as an L2 failure too).
    pub async fn sweep(&self, db: impl Into<Backend>) -> Result<Swept> {
        let db = &db.into();
        if !self.enabled {
            return Ok(Swept {
                deleted: 0,
                more: false,
            });
        }
        let now = micros(self.clock.now());
        let mut deleted = 0;
        for _ in 0..SWEEP_STEPS {
            let n = sweep_batch(db, now, SWEEP_BYTES)
                .await
                .inspect_err(|e| self.counters.l2_failed("delete expired rows", e))?;
            deleted += n;
            // A short batch may be one whose rows were set again meanwhile
            // (on PostgreSQL): only an empty one says none is left.
            if n == 0 {
                if let Ok(left) = count_rows(db).await {
                    self.counters.l2_entries.store(left, Ordering::Relaxed);
                }
                return Ok(Swept {
                    deleted,
                    more: false,
                });
            }
        }
        Ok(Swept {
            deleted,
            more: true,
        })
    }
}

/// One statement of a sweep: deletes the oldest expired rows (at most
/// [`SWEEP_BATCH`]) while the bytes of values before each are under
/// `bytes`; returns how many.
async fn sweep_batch(db: &Backend, now: i64, bytes: i64) -> Result<u64> {
    Ok(db
        .own_execute(
            format!(
                // The condition again outside: on PostgreSQL a key set
                // again after the inner select is deleted only if still
                // expired (a review found it deleted). `octet_length` reads
                // a value's size, not the value.
                "DELETE FROM {t} WHERE key IN (
                     SELECT key FROM (
                         SELECT key, own, sum(own) OVER (
                             ORDER BY expires_at, key ROWS UNBOUNDED PRECEDING) AS upto
                         FROM (
                             SELECT key, expires_at, octet_length(value) AS own FROM {t}
                             WHERE expires_at IS NOT NULL AND expires_at <= ?1
                             ORDER BY expires_at, key LIMIT ?2) AS oldest) AS sized
                     WHERE upto - own < ?3)
                   AND expires_at IS NOT NULL AND expires_at <= ?1",
                t = db.own("cache")
            ),
            params![now, SWEEP_BATCH as i64, bytes],
        )
        .await?
        .changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a hostile review: a sweep's statement deleted 500 rows
    /// whatever their size, holding the writer while it freed them all.
    #[tokio::test]
    async fn a_sweeps_statement_deletes_a_bounded_size_of_values() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Database::open(dir.path().join("c.db"), crate::DbConfig::default())
            .await
            .unwrap();
        let _cache = Cache::open(Some(db.clone()), CacheConfig::default())
            .await
            .unwrap();
        // The oldest is 5,000 bytes, then ten of 1,000; one not expired.
        db.write(|c| {
            c.execute_batch(
                "INSERT INTO main.litebridge_cache VALUES ('big', printf('%.*c', 5000, 'x'), 1);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
                 INSERT INTO main.litebridge_cache
                 SELECT 'k' || i, printf('%.*c', 1000, 'x'), 1 + i FROM n;
                 INSERT INTO main.litebridge_cache VALUES ('live', 'x', 1000);",
            )?;
            Ok(())
        })
        .await
        .unwrap();
        let db: Backend = db.into();
        // The first row goes whatever its size; then as many as fit.
        let batches: Vec<u64> = [
            sweep_batch(&db, 500, 2500).await.unwrap(),
            sweep_batch(&db, 500, 2500).await.unwrap(),
            sweep_batch(&db, 500, 2500).await.unwrap(),
            sweep_batch(&db, 500, 2500).await.unwrap(),
            sweep_batch(&db, 500, 2500).await.unwrap(),
        ]
        .into();
        assert_eq!(batches, [1, 3, 3, 3, 1]);
        assert_eq!(
            sweep_batch(&db, 500, 2500).await.unwrap(),
            0,
            "the live row stays"
        );
    }

    /// Review 211: a value read from L2 before another process's commit
    /// went into memory after a reader had emptied memory for that commit
    /// (or moka answered the old value it was replacing then), and readers
    /// got it, one commit behind. An entry read before the change is never
    /// answered, wherever it came from.
    #[tokio::test]
    async fn an_entry_read_before_another_process_wrote_is_never_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let db = crate::Database::open(&path, crate::DbConfig::default())
            .await
            .unwrap();
        let cache = Cache::open(Some(db.clone()), CacheConfig::default())
            .await
            .unwrap();
        cache
            .set("k", serde_json::json!("old"), None)
            .await
            .unwrap();
        let before = cache.watch().unwrap();
        // Another connection (as another process) writes.
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute(
                "UPDATE litebridge_cache SET value = '\"new\"' WHERE key = 'k'",
                [],
            )
            .unwrap();
        // A reader sees it and empties memory ...
        assert!(cache.watch().unwrap() > before);
        // ... and then a racing reader's copy, read before the commit, goes in.
        let older = cache.weights.entry(serde_json::json!("old"), None, before);
        cache.l1.insert("k".into(), older).await;
        assert_eq!(
            cache.get("k").await.unwrap(),
            Some(serde_json::json!("new"))
        );
        // The same for a call's cached result.
        let older = cache.weights.entry(serde_json::json!("old"), None, before);
        cache.l1.insert("k".into(), older).await;
        let got = cache
            .get_or_load("k", None, || async { Ok(serde_json::json!("loaded")) })
            .await
            .unwrap();
        assert_eq!(got, serde_json::json!("new"));
        drop(other);
    }

    /// What moka's `insert` may leave (the value in its map, the insert
    /// still waiting) when its caller goes away before looking at the
    /// generation: a write of the key another front end made meanwhile,
    /// whose drop the listener made before the value went in. No test can
    /// make moka's insert wait, so the guard is dropped where it would be.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_caller_gone_before_its_look_leaves_no_value_older_than_a_write_heard() {
        let (cache, peers) = with_peers().await;
        let in_memory = |key: &'static str| {
            let l1 = cache.l1.clone();
            async move {
                // The guard's task, spawned on this runtime, runs at a yield.
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                l1.get(key).await.is_some()
            }
        };

        let look = Recheck::armed(&cache, "k", cache.generation());
        assert_eq!(
            peers.heard("1:k"),
            Some(Some("k")),
            "another front end wrote k"
        );
        let older = cache.weights.entry(serde_json::json!("older"), None, 0);
        cache.l1.insert("k".into(), older).await;
        drop(look);
        assert!(!in_memory("k").await, "the older value was left in memory");

        // Nothing heard: the value stays, and no task was needed.
        let look = Recheck::armed(&cache, "k2", cache.generation());
        let value = cache.weights.entry(serde_json::json!("v"), None, 0);
        cache.l1.insert("k2".into(), value).await;
        drop(look);
        assert!(in_memory("k2").await);

        // Looked at, the guard does nothing more when dropped.
        let look = Recheck::armed(&cache, "k3", cache.generation());
        let value = cache.weights.entry(serde_json::json!("v"), None, 0);
        cache.l1.insert("k3".into(), value).await;
        look.finish().await;
        assert!(in_memory("k3").await);
    }

    /// A memory-only cache whose L1 is trusted, as with a listener on
    /// PostgreSQL; the peers to make it hear other front ends' writes.
    #[cfg(feature = "postgres")]
    async fn with_peers() -> (Cache, Arc<super::super::cache_peers::Peers>) {
        let mut cache = Cache::open(None, CacheConfig::default()).await.unwrap();
        let peers = super::super::cache_peers::Peers::new();
        peers.set_listening(true);
        cache.peers = Some(peers.clone());
        (cache, peers)
    }

    /// Review 179: dropped by a runtime shutting down (a task that held
    /// it), the guard's task was spawned onto the closed runtime and
    /// dropped unrun, leaving the value for the cache's other clones.
    #[cfg(feature = "postgres")]
    #[test]
    fn a_look_dropped_as_its_runtime_shuts_down_still_takes_the_value_out() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = runtime();
        let (cache, peers) = first.block_on(with_peers());
        let held = cache.clone();
        first.block_on(async {
            tokio::spawn(async move {
                let look = Recheck::armed(&held, "k", held.generation());
                peers.heard("1:k");
                let older = held.weights.entry(serde_json::json!("older"), None, 0);
                held.l1.insert("k".into(), older).await;
                std::future::pending::<()>().await;
                drop(look);
            });
            // The task runs to its wait.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        drop(first);
        let gone = runtime().block_on(cache.l1.get("k")).is_none();
        assert!(gone, "the older value was left in memory");
    }
}
