//! The typed configuration of a [`Database`](crate::Database).
//!
//! Plain structs with public fields, each documented with its default, and a
//! builder that validates on [`DbConfigBuilder::build`]. Only the binary reads
//! files and the environment; the library takes this struct.

use std::time::Duration;

use crate::error::{Error, Result};

/// Default number of read-lane connections.
pub const DEFAULT_READERS: usize = 4;
/// Default number of heavy-lane connections.
pub const DEFAULT_HEAVY_READERS: usize = 2;
/// Default capacity of the write queue.
pub const DEFAULT_WRITE_QUEUE: usize = 4096;
/// Default largest group-commit batch.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// Default capacity of the heavy-lane queue.
pub const DEFAULT_HEAVY_QUEUE: usize = 256;
/// Default busy timeout.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default page cache per connection, in SQLite's `cache_size` units (negative: KiB).
pub const DEFAULT_CACHE_SIZE: i64 = -64_000;
/// Default memory map size in bytes.
pub const DEFAULT_MMAP_SIZE: u64 = 256 * 1024 * 1024;
/// Default limit on the WAL file size kept after a checkpoint.
pub const DEFAULT_JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// Default prepared statements cached per connection.
pub const DEFAULT_STATEMENT_CACHE: usize = 128;
/// Default deadline of an operation that does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between connection health checks.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Default longest time one client request may run on the writer.
pub const DEFAULT_MAX_WRITE_HOLD: Duration = Duration::from_secs(10);
/// Default largest result (and largest single value) a client query may build.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;
/// Default most memory SQLite may take for one client request.
pub const DEFAULT_MAX_REQUEST_MEMORY: usize = 256 * 1024 * 1024;
/// Default most schema objects (tables, indexes, views, triggers) client SQL may create.
pub const DEFAULT_MAX_SCHEMA_OBJECTS: usize = 5_000;
/// Default largest schema (the SQL text of every object) client SQL may grow.
pub const DEFAULT_MAX_SCHEMA_BYTES: usize = 4 * 1024 * 1024;

/// What an acknowledged write survives. Maps to `PRAGMA synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode: an acknowledged write survives a
    /// crash of the process, but the last commits may be lost on power loss or
    /// an operating-system crash. The database is never corrupted either way.
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is fsynced before it is acknowledged;
    /// an acknowledged write survives power loss too. Group commit amortizes
    /// one fsync over every write of a batch.
    Full,
}

impl std::str::FromStr for Durability {
    type Err = Error;

    /// Parses `"normal"` or `"full"` (any case).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the value for anything else.
    fn from_str(value: &str) -> Result<Durability> {
        match value.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Durability::Normal),
            "full" => Ok(Durability::Full),
            _ => Err(Error::invalid(
                "durability",
                format!("{value:?} is not a durability; expected \"normal\" or \"full\""),
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    /// `normal` or `full`, as parsed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Normal => "normal",
            Durability::Full => "full",
        })
    }
}

impl Durability {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Where SQLite keeps temporary tables and indices. Maps to `PRAGMA temp_store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TempStore {
    /// SQLite's compile-time default.
    Default,
    /// Temporary files (through a small page cache of their own): the
    /// memory of a `DISTINCT`, `GROUP BY` or `UNION` over big values stays
    /// bounded whatever the request.
    #[default]
    File,
    /// Memory: faster for big temporary results, but one request can then
    /// hold as much memory as its temporary b-trees grow to.
    Memory,
}

impl TempStore {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            TempStore::Default => "DEFAULT",
            TempStore::File => "FILE",
            TempStore::Memory => "MEMORY",
        }
    }
}

/// How litebridge keeps the write-ahead log from growing without bound.
///
/// SQLite's own auto-checkpoint is disabled: a checkpoint thread with a
/// connection of its own copies the log back (`PASSIVE`) once it holds
/// `passive_pages`, so neither the writer nor a reader pays for it; the
/// writer runs only the short last step that lets the log start over, and
/// the `TRUNCATE` past `max_wal_bytes` (see the `checkpointer` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Run a `PASSIVE` checkpoint once the WAL holds this many pages.
    /// Default: 4000 (~16 MB with 4 KiB pages). SQLite's own 1000 checkpoints
    /// four times as often, and a page rewritten by many commits (the end of
    /// a table that grows) is copied back once per checkpoint, not once per
    /// commit: measured here, 4000 gives ~25 % more pipelined writes than 1000
    /// (8000 and 16000 give no more). This is where a cycle's first
    /// background round starts; the writer lets the log start over once the
    /// rounds have caught up, so a cycle runs past it: under a pipelined
    /// insert load the `-wal` file peaked at 6,800 frames, and at 9,200
    /// since the writer waits for the rounds to leave it little to copy
    /// (both under the default `max_wal_bytes`; BENCHMARKS.md).
    pub passive_pages: u32,
    /// When a passive checkpoint cannot keep up (readers pin old snapshots) and the
    /// WAL file exceeds this size, the writer runs a `TRUNCATE` checkpoint
    /// between two batches, which waits (up to `restart_wait`) for readers to
    /// move on, then lets the WAL start over and shrinks the file.
    /// Default: 64 MiB.
    pub max_wal_bytes: u64,
    /// How long that `TRUNCATE` checkpoint may wait for readers. Default: 200 ms.
    pub restart_wait: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            passive_pages: 4000,
            max_wal_bytes: 64 * 1024 * 1024,
            restart_wait: Duration::from_millis(200),
        }
    }
}

/// The configuration of a [`Database`](crate::Database).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbConfig {
    /// Read-lane connections (point reads). Default: [`DEFAULT_READERS`].
    pub readers: usize,
    /// Heavy-lane connections (long queries on their own threads). Default: [`DEFAULT_HEAVY_READERS`].
    pub heavy_readers: usize,
    /// Capacity of the write queue; callers wait (or get `overloaded` on the
    /// `try_` path) beyond it. Default: [`DEFAULT_WRITE_QUEUE`].
    pub write_queue: usize,
    /// Largest number of requests in one group-commit transaction. Default: [`DEFAULT_MAX_BATCH`].
    pub max_batch: usize,
    /// How long the writer waits for more requests before committing a batch
    /// that is not full. Zero commits whatever is queued at once, which gives
    /// the lowest latency; a small wait (100 us - 1 ms) gives bigger batches
    /// under `durability = full`. Default: zero.
    pub max_wait: Duration,
    /// Capacity of the heavy-lane queue. Default: [`DEFAULT_HEAVY_QUEUE`].
    pub heavy_queue: usize,
    /// What an acknowledged write survives. Default: [`Durability::Normal`].
    pub durability: Durability,
    /// How long SQLite retries when another process holds a lock. Default: [`DEFAULT_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
    /// `PRAGMA cache_size` per connection (negative: KiB). Default: [`DEFAULT_CACHE_SIZE`].
    pub cache_size: i64,
    /// `PRAGMA mmap_size` in bytes. Default: [`DEFAULT_MMAP_SIZE`].
    pub mmap_size: u64,
    /// `PRAGMA temp_store`. Default: [`TempStore::File`].
    pub temp_store: TempStore,
    /// `PRAGMA foreign_keys`. Default: true.
    pub foreign_keys: bool,
    /// `PRAGMA journal_size_limit` in bytes. Default: [`DEFAULT_JOURNAL_SIZE_LIMIT`].
    pub journal_size_limit: i64,
    /// Prepared statements cached per connection. Default: [`DEFAULT_STATEMENT_CACHE`].
    pub statement_cache: usize,
    /// Deadline of an operation that does not set its own; `None` for no deadline.
    /// Default: [`DEFAULT_TIMEOUT`].
    pub default_timeout: Option<Duration>,
    /// Interval between health checks of idle connections. Default: [`DEFAULT_HEALTH_CHECK_INTERVAL`].
    pub health_check_interval: Duration,
    /// WAL checkpoint policy. Default: [`CheckpointConfig::default`].
    pub checkpoint: CheckpointConfig,
    /// Run `PRAGMA quick_check` when opening and refuse a damaged file. Default: true.
    pub quick_check_on_open: bool,
    /// Keep one idle read transaction on the newest snapshot while reads run
    /// and this `Database` is alone on the file, so point reads skip two lock
    /// system calls each (see `db::keeper`). Turn off when the application
    /// writes the same file through connections of its own in this process:
    /// those cannot be told from litebridge's, and the keeper would hold up
    /// their checkpoints.
    pub read_mark_keeper: bool,
    /// Create the database file when it does not exist. Default: true.
    pub create: bool,
    /// The longest one client request (SQL text given to `execute`, `batch`,
    /// `execute_many`) may run on the writer, whatever its own deadline: past
    /// it the statement is interrupted and the request fails with `timeout`
    /// (nothing of it commits). Every other write waits behind the writer, so
    /// this bounds what one caller can make everyone wait; a batch stops
    /// taking new requests once it has run this long, and `/ready` reports a
    /// writer busy longer. Default: [`DEFAULT_MAX_WRITE_HOLD`].
    pub max_write_hold: Duration,
    /// The largest result a client query may return, the most bytes of rows
    /// a write's statements may return (`RETURNING`, all of a request's
    /// together), and the longest single value (text or blob) client SQL
    /// may build (SQLite's length limit on client connections): refused
    /// with `too_large` before more is built. Also the most a stored value
    /// (memory, state, cache) may take read back into a JSON tree.
    /// Default: [`DEFAULT_MAX_RESULT_BYTES`].
    pub max_result_bytes: usize,
    /// The most memory SQLite may take for one client request (what it
    /// allocates minus what it frees while the request runs: values being
    /// built, sorts, the growth of the connection's page cache), refused
    /// with `too_large` past it: one step of a statement can hold many
    /// values at once (a row of many columns, each under the length limit).
    /// Must leave room for the page cache (`cache_size`) and one result
    /// (`max_result_bytes`). Default: [`DEFAULT_MAX_REQUEST_MEMORY`].
    ///
    /// Enforced through SQLite's allocator, which can only be set before
    /// SQLite first runs in the process: if anything else used SQLite first
    /// (another crate, [`rusqlite`] directly), it is not enforced, and one
    /// long step of a statement is not stopped at its deadline from inside
    /// the allocator either (a warning is logged through `tracing`). Call
    /// [`crate::install_memory_budgets`] first thing to make sure.
    pub max_request_memory: usize,
    /// The most objects (tables, indexes, views, triggers) the schema may
    /// hold for client SQL to create another: every connection re-reads the
    /// whole schema after a change, so its size is everyone's latency.
    /// Default: [`DEFAULT_MAX_SCHEMA_OBJECTS`].
    pub max_schema_objects: usize,
    /// The most bytes of SQL text the schema may hold for client SQL to
    /// create another object. Default: [`DEFAULT_MAX_SCHEMA_BYTES`].
    pub max_schema_bytes: usize,
    #[doc(hidden)]
    pub faults: Option<std::sync::Arc<crate::fault::Faults>>,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            readers: DEFAULT_READERS,
            heavy_readers: DEFAULT_HEAVY_READERS,
            write_queue: DEFAULT_WRITE_QUEUE,
            max_batch: DEFAULT_MAX_BATCH,
            max_wait: Duration::ZERO,
            heavy_queue: DEFAULT_HEAVY_QUEUE,
            durability: Durability::Normal,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            cache_size: DEFAULT_CACHE_SIZE,
            mmap_size: DEFAULT_MMAP_SIZE,
            temp_store: TempStore::File,
            foreign_keys: true,
            journal_size_limit: DEFAULT_JOURNAL_SIZE_LIMIT,
            statement_cache: DEFAULT_STATEMENT_CACHE,
            default_timeout: Some(DEFAULT_TIMEOUT),
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            checkpoint: CheckpointConfig::default(),
            quick_check_on_open: true,
            read_mark_keeper: true,
            create: true,
            max_write_hold: DEFAULT_MAX_WRITE_HOLD,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_request_memory: DEFAULT_MAX_REQUEST_MEMORY,
            max_schema_objects: DEFAULT_MAX_SCHEMA_OBJECTS,
            max_schema_bytes: DEFAULT_MAX_SCHEMA_BYTES,
            faults: None,
        }
    }
}

impl DbConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> DbConfigBuilder {
        DbConfigBuilder {
            config: DbConfig::default(),
        }
    }

    /// Checks every value, naming the first bad one.
    ///
    /// # Errors
    /// [`Error::Config`] with the key (as in the `[db]` section of the
    /// configuration file), the value and what was expected.
    pub fn validate(&self) -> Result<()> {
        fn range(key: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
            if v < lo || v > hi {
                return Err(Error::config(
                    format!("db.{key}"),
                    v,
                    format!("an integer from {lo} to {hi}"),
                ));
            }
            Ok(())
        }
        range("readers", self.readers, 1, 256)?;
        range("heavy_readers", self.heavy_readers, 1, 64)?;
        range("write_queue", self.write_queue, 1, 1 << 24)?;
        range("max_batch", self.max_batch, 1, 1 << 20)?;
        range("heavy_queue", self.heavy_queue, 1, 1 << 20)?;
        range("statement_cache", self.statement_cache, 0, 1 << 16)?;
        if self.max_wait > Duration::from_secs(1) {
            return Err(Error::config(
                "db.max_wait_ms",
                self.max_wait.as_millis(),
                "at most 1000 ms (it delays every write)",
            ));
        }
        if self.health_check_interval < Duration::from_millis(10) {
            return Err(Error::config(
                "db.health_check_interval_ms",
                self.health_check_interval.as_millis(),
                "at least 10 ms",
            ));
        }
        if self.default_timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "db.timeout_ms",
                0,
                "a positive number of milliseconds (omit it for no deadline)",
            ));
        }
        if self.max_write_hold < Duration::from_millis(10)
            || self.max_write_hold > Duration::from_secs(3_600)
        {
            return Err(Error::config(
                "db.max_write_hold_ms",
                self.max_write_hold.as_millis(),
                "from 10 to 3600000 milliseconds",
            ));
        }
        range("max_result_bytes", self.max_result_bytes, 1024, 1 << 30)?;
        range(
            "max_request_memory",
            self.max_request_memory,
            1 << 20,
            1 << 40,
        )?;
        let cache_bytes = self.cache_bytes();
        if self.max_request_memory < cache_bytes.saturating_add(self.max_result_bytes) {
            return Err(Error::config(
                "db.max_request_memory",
                self.max_request_memory,
                format!(
                    "at least the page cache (db.cache_size: {cache_bytes} bytes) plus the largest \
                     result (db.max_result_bytes: {}), {} bytes",
                    self.max_result_bytes,
                    cache_bytes.saturating_add(self.max_result_bytes)
                ),
            ));
        }
        range("max_schema_objects", self.max_schema_objects, 1, 1_000_000)?;
        range("max_schema_bytes", self.max_schema_bytes, 1024, 1 << 30)?;
        if self.checkpoint.passive_pages == 0 {
            return Err(Error::config(
                "db.checkpoint_pages",
                0,
                "a positive number of pages",
            ));
        }
        Ok(())
    }
}

impl DbConfig {
    /// The most bytes one connection's page cache may hold (`cache_size`
    /// in pages is taken at 4 KiB a page, SQLite's default page size).
    fn cache_bytes(&self) -> usize {
        let bytes = if self.cache_size < 0 {
            self.cache_size.unsigned_abs().saturating_mul(1024)
        } else {
            self.cache_size.unsigned_abs().saturating_mul(4096)
        };
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// Builds a validated [`DbConfig`].
#[derive(Debug, Clone)]
pub struct DbConfigBuilder {
    config: DbConfig,
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $ty:ty),* $(,)?) => {
        $(
            #[$doc]
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl DbConfigBuilder {
    setter! {
        /// Sets [`DbConfig::readers`].
        readers: usize,
        /// Sets [`DbConfig::heavy_readers`].
        heavy_readers: usize,
        /// Sets [`DbConfig::write_queue`].
        write_queue: usize,
        /// Sets [`DbConfig::max_batch`].
        max_batch: usize,
        /// Sets [`DbConfig::max_wait`].
        max_wait: Duration,
        /// Sets [`DbConfig::heavy_queue`].
        heavy_queue: usize,
        /// Sets [`DbConfig::durability`].
        durability: Durability,
        /// Sets [`DbConfig::busy_timeout`].
        busy_timeout: Duration,
        /// Sets [`DbConfig::cache_size`].
        cache_size: i64,
        /// Sets [`DbConfig::mmap_size`].
        mmap_size: u64,
        /// Sets [`DbConfig::temp_store`].
        temp_store: TempStore,
        /// Sets [`DbConfig::foreign_keys`].
        foreign_keys: bool,
        /// Sets [`DbConfig::journal_size_limit`].
        journal_size_limit: i64,
        /// Sets [`DbConfig::statement_cache`].
        statement_cache: usize,
        /// Sets [`DbConfig::default_timeout`].
        default_timeout: Option<Duration>,
        /// Sets [`DbConfig::health_check_interval`].
        health_check_interval: Duration,
        /// Sets [`DbConfig::checkpoint`].
        checkpoint: CheckpointConfig,
        /// Sets [`DbConfig::quick_check_on_open`].
        quick_check_on_open: bool,
        /// Sets [`DbConfig::read_mark_keeper`].
        read_mark_keeper: bool,
        /// Sets [`DbConfig::create`].
        create: bool,
        /// Sets [`DbConfig::max_write_hold`].
        max_write_hold: Duration,
        /// Sets [`DbConfig::max_result_bytes`].
        max_result_bytes: usize,
        /// Sets [`DbConfig::max_request_memory`].
        max_request_memory: usize,
        /// Sets [`DbConfig::max_schema_objects`].
        max_schema_objects: usize,
        /// Sets [`DbConfig::max_schema_bytes`].
        max_schema_bytes: usize,
    }

    #[doc(hidden)]
    pub fn faults(mut self, faults: std::sync::Arc<crate::fault::Faults>) -> Self {
        self.config.faults = Some(faults);
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid key, its value and what was expected.
    pub fn build(self) -> Result<DbConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn bad_values_name_the_key() {
        let err = DbConfig::builder().readers(0).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "invalid configuration `db.readers` = 0: expected an integer from 1 to 256"
        );
    }

    #[test]
    fn the_request_memory_leaves_room_for_the_cache_and_a_result() {
        let err = DbConfig::builder()
            .cache_size(-100_000)
            .max_request_memory(64 << 20)
            .build()
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("`db.max_request_memory` = 67108864"),
            "{message}"
        );
        assert!(
            message.contains("db.cache_size: 102400000 bytes"),
            "{message}"
        );
        DbConfig::builder()
            .cache_size(-1000)
            .max_result_bytes(1 << 20)
            .max_request_memory(4 << 20)
            .build()
            .unwrap();
    }

    #[test]
    fn durability_parses_and_refuses() {
        assert_eq!("FULL".parse::<Durability>().unwrap(), Durability::Full);
        for d in [Durability::Normal, Durability::Full] {
            assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
        }
        let err = "fast".parse::<Durability>().unwrap_err();
        assert!(err.to_string().contains("\"fast\""), "{err}");
    }
}
