//! Configuration: defaults, then one TOML file, then
//! environment variables, then flags. Every key is in one table: its section,
//! its environment names (`LITEBRIDGE_<SECTION>_<KEY>` and the seed system's
//! names), its kind and its default. A key that is not in the table, or a
//! value that does not fit its kind, is refused naming the key, the value and
//! what was expected. `--print-config` shows each value and where it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use litebridge::auth::{TierLimits, Tiers};
use litebridge::pg::PgConfig;
use litebridge::resilience::{Backoff, Growth};
use litebridge::store::CacheConfig;
use litebridge::workers::WorkerConfig;
use litebridge::{DbConfig, Durability};

use crate::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Text,
    /// Text never shown (`--print-config` says whether it is set).
    Secret,
    /// One of the listed words.
    Word(&'static [&'static str]),
}

/// A value, parsed once, when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Int(i64),
    Bool(bool),
    /// Text, or one of a `Word` key's words.
    Text(String),
}

struct Key {
    name: &'static str,
    env: &'static [&'static str],
    kind: Kind,
    /// The library's own default where it has one, so the two cannot drift.
    default: fn() -> Value,
    help: &'static str,
}

const fn int_kind(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

fn int(v: impl TryInto<i64>) -> Value {
    Value::Int(v.try_into().unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> Value {
    int(d.as_millis())
}

fn text(t: impl Into<String>) -> Value {
    Value::Text(t.into())
}

fn db() -> DbConfig {
    DbConfig::default()
}

fn pg() -> PgConfig {
    PgConfig::new("")
}

fn nats() -> litebridge::workers::nats::NatsConfig {
    litebridge::workers::nats::NatsConfig::new("")
}

fn workers() -> WorkerConfig {
    WorkerConfig::new(Vec::<String>::new())
}

/// One of a default tier's limits; 0 for none.
fn tier(name: &str, limit: fn(TierLimits) -> Option<u64>) -> Value {
    int(Tiers::default().get(name).and_then(limit).unwrap_or(0))
}

const KEYS: &[Key] = &[
    Key {
        name: "server.listen",
        env: &[],
        kind: Kind::Text,
        default: || text("127.0.0.1:7070"),
        help: "address of `serve`",
    },
    Key {
        name: "server.max_concurrent_requests",
        env: &[],
        kind: int_kind(1, 1_000_000),
        default: || Value::Int(1024),
        help: "HTTP requests handled at once; more get `overloaded`",
    },
    Key {
        name: "server.max_connections",
        env: &[],
        kind: int_kind(1, 1_000_000),
        default: || Value::Int(1024),
        help: "HTTP connections open at once; more wait to be accepted",
    },
    Key {
        name: "server.read_timeout_ms",
        env: &[],
        kind: int_kind(100, 3_600_000),
        default: || ms(Duration::from_secs(30)),
        help: "a request's head, then its body, must arrive within this",
    },
    Key {
        name: "server.shutdown_grace_ms",
        env: &[],
        kind: int_kind(0, 3_600_000),
        default: || ms(Duration::from_secs(10)),
        help: "time requests in flight get to finish after SIGTERM",
    },
    Key {
        name: "server.dashboard",
        env: &[],
        kind: Kind::Bool,
        default: || Value::Bool(true),
        help: "the dashboard at `/` and its data at `GET /api/dashboard` (same keys and scopes as /rpc)",
    },
    Key {
        name: "server.log_level",
        env: &["LOG_LEVEL"],
        kind: Kind::Word(&["error", "warn", "info", "debug", "trace"]),
        default: || text("info"),
        help: "log verbosity (logs go to stderr)",
    },
    Key {
        name: "server.log_format",
        env: &[],
        kind: Kind::Word(&["auto", "json", "text"]),
        default: || text("auto"),
        help: "text on a terminal, JSON otherwise",
    },
    Key {
        name: "backend.kind",
        env: &[],
        kind: Kind::Word(&["sqlite", "postgres"]),
        default: || text("sqlite"),
        help: "the database: a SQLite file (`db.*`) or PostgreSQL (`postgres.*`)",
    },
    Key {
        name: "postgres.url",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "connection URL, several hosts allowed (as `pg_autoctl show uri` prints it); its user owns litebridge's schema",
    },
    Key {
        name: "postgres.client_user",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "the role that runs the clients' SQL: not the URL's user, not a superuser (docs/postgres.md)",
    },
    Key {
        name: "postgres.client_password",
        env: &[],
        kind: Kind::Secret,
        default: || text(""),
        help: "that role's password, when it needs one",
    },
    Key {
        name: "postgres.client_schema",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "the schema the clients' unqualified names resolve in (empty: the role's own search_path)",
    },
    Key {
        name: "postgres.schema",
        env: &[],
        kind: Kind::Text,
        default: || text(pg().schema),
        help: "litebridge's own schema (stores, keys, quotas)",
    },
    Key {
        name: "postgres.replicas",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "streaming replicas for reads that allow them, `host:port` separated by commas",
    },
    Key {
        name: "postgres.connections",
        env: &[],
        kind: int_kind(1, 1000),
        default: || int(pg().connections),
        help: "connections for the clients' SQL, per server",
    },
    Key {
        name: "postgres.connect_timeout_ms",
        env: &[],
        kind: int_kind(100, 600_000),
        default: || ms(pg().connect_timeout),
        help: "wait for a connection to be made",
    },
    Key {
        name: "postgres.statement_cache",
        env: &[],
        kind: int_kind(1, 100_000),
        default: || int(pg().statement_cache),
        help: "prepared statements kept per connection",
    },
    Key {
        name: "postgres.one_message_reads",
        env: &[],
        kind: Kind::Bool,
        default: || Value::Bool(pg().one_message_reads),
        help: "a statement's later reads in one round trip, their values in the query's text: other API keys can read them in pg_stat_activity (docs/postgres.md)",
    },
    Key {
        name: "postgres.reads_per_message",
        env: &[],
        kind: int_kind(1, 64),
        default: || int(pg().reads_per_message),
        help: "with one_message_reads, the most reads of one API key sent in one message when they wait for a connection (1: each alone)",
    },
    Key {
        name: "postgres.writes_per_message",
        env: &[],
        kind: int_kind(1, 64),
        default: || int(pg().writes_per_message),
        help: "with one_message_writes, the most single-statement writes of one API key sent in one message, each its own transaction, when they wait for a connection (1: each alone; a connection lost makes them outcome_unknown)",
    },
    Key {
        name: "postgres.reads_together_below_ms",
        env: &[],
        kind: int_kind(1, 60_000),
        default: || ms(pg().reads_together_below),
        help: "reads and writes of a statement whose last one alone took longer go alone, not several to a message",
    },
    Key {
        name: "postgres.isolate_requests",
        env: &[],
        kind: Kind::Bool,
        default: || Value::Bool(pg().isolate_requests),
        help: "after every request, reset the session's settings and close a connection where the clients' code prepared a statement, so that a write key's function another key's request runs cannot reach that caller's later requests (off only where every key that may create functions is trusted; docs/postgres.md)",
    },
    Key {
        name: "postgres.one_message_writes",
        env: &[],
        kind: Kind::Bool,
        default: || Value::Bool(pg().one_message_writes),
        help: "a statement's later writes in two round trips instead of three, their values in the query's text: other API keys can read them in pg_stat_activity (docs/postgres.md)",
    },
    Key {
        name: "postgres.replicated_to",
        env: &[],
        kind: int_kind(0, 64),
        default: || int(pg().replicated_to),
        help: "acknowledge a write only once this many standbys flushed it, else outcome_unknown at its deadline (0: the server's acknowledgement; needs pg_read_all_stats for litebridge's role; docs/postgres.md)",
    },
    Key {
        name: "postgres.replicated_standbys",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "the standbys replicated_to counts, application_name patterns (LIKE) separated by commas, such as pgautofailover_standby_% (empty: every physical sender streaming from the primary, pg_receivewal and pg_basebackup included)",
    },
    Key {
        name: "postgres.health_check_interval_ms",
        env: &[],
        kind: int_kind(100, 60_000),
        default: || ms(pg().health_check_interval),
        help: "probes of the primary and the replicas (health, lag)",
    },
    Key {
        name: "db.path",
        env: &[],
        kind: Kind::Text,
        default: || text("litebridge.db"),
        help: "the database file",
    },
    Key {
        name: "db.readers",
        env: &["POOL_MAX_READERS"],
        kind: int_kind(1, 256),
        default: || int(db().readers),
        help: "read-lane connections",
    },
    Key {
        name: "db.heavy_readers",
        env: &["POOL_MAX_WORKERS"],
        kind: int_kind(1, 64),
        default: || int(db().heavy_readers),
        help: "heavy-lane connections",
    },
    Key {
        name: "db.write_queue",
        env: &[],
        kind: int_kind(1, 16_777_216),
        default: || int(db().write_queue),
        help: "write queue capacity",
    },
    Key {
        name: "db.max_batch",
        env: &[],
        kind: int_kind(1, 1_048_576),
        default: || int(db().max_batch),
        help: "requests per group commit at most",
    },
    Key {
        name: "db.max_wait_ms",
        env: &[],
        kind: int_kind(0, 1000),
        default: || ms(db().max_wait),
        help: "wait for a fuller batch",
    },
    Key {
        name: "db.durability",
        env: &[],
        kind: Kind::Word(&["normal", "full"]),
        default: || text(db().durability.to_string()),
        help: "what an acknowledged write survives",
    },
    Key {
        name: "db.busy_timeout_ms",
        env: &[],
        kind: int_kind(0, 3_600_000),
        default: || ms(db().busy_timeout),
        help: "wait on locks held by other processes",
    },
    Key {
        name: "db.cache_size",
        env: &["POOL_CACHE_SIZE"],
        kind: int_kind(-1_000_000_000, 1_000_000_000),
        default: || Value::Int(db().cache_size),
        help: "PRAGMA cache_size per connection",
    },
    Key {
        name: "db.mmap_size",
        env: &["POOL_MMAP_SIZE"],
        kind: int_kind(0, 1 << 40),
        default: || int(db().mmap_size),
        help: "PRAGMA mmap_size",
    },
    Key {
        name: "db.timeout_ms",
        env: &["POOL_ACQUIRE_TIMEOUT"],
        kind: int_kind(1, 86_400_000),
        default: || ms(db().default_timeout.unwrap_or_default()),
        help: "default deadline of a database operation",
    },
    Key {
        name: "db.health_check_interval_ms",
        env: &["POOL_HEALTH_CHECK"],
        kind: int_kind(10, 86_400_000),
        default: || ms(db().health_check_interval),
        help: "connection health checks",
    },
    Key {
        name: "db.max_write_hold_ms",
        env: &[],
        kind: int_kind(10, 3_600_000),
        default: || ms(db().max_write_hold),
        help: "longest one client request may hold the writer",
    },
    Key {
        name: "db.max_result_bytes",
        env: &[],
        kind: int_kind(1024, 1 << 30),
        default: || int(db().max_result_bytes),
        help: "largest query result and largest value client SQL may build",
    },
    Key {
        name: "db.max_request_memory",
        env: &[],
        kind: int_kind(1 << 20, 1 << 40),
        default: || int(db().max_request_memory),
        help: "most memory SQLite may take for one client request (page cache growth included)",
    },
    Key {
        name: "db.max_schema_objects",
        env: &[],
        kind: int_kind(1, 1_000_000),
        default: || int(db().max_schema_objects),
        help: "schema objects past which client SQL may create no more",
    },
    Key {
        name: "db.max_schema_bytes",
        env: &[],
        kind: int_kind(1024, 1 << 30),
        default: || int(db().max_schema_bytes),
        help: "schema SQL bytes past which client SQL may create no more",
    },
    Key {
        name: "db.quick_check_on_open",
        env: &[],
        kind: Kind::Bool,
        default: || Value::Bool(db().quick_check_on_open),
        help: "refuse a damaged file at start",
    },
    Key {
        name: "db.read_mark_keeper",
        env: &[],
        kind: Kind::Bool,
        default: || Value::Bool(db().read_mark_keeper),
        help: "keep an idle read transaction so point reads skip two lock calls (off if this process writes the file through other connections)",
    },
    Key {
        name: "workers.transport",
        env: &[],
        kind: Kind::Word(&["local", "nats"]),
        default: || text("local"),
        help: "where bridge.call goes: worker processes started here (`local`) or worker hosts on NATS (`nats`, see `nats.*` and `litebridge worker-host`)",
    },
    Key {
        name: "nats.url",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "NATS servers, comma-separated (nats://n1:4222,nats://n2:4222)",
    },
    Key {
        name: "nats.token",
        env: &[],
        kind: Kind::Secret,
        default: || text(""),
        help: "the token the NATS servers require, if any",
    },
    Key {
        name: "nats.user",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "the user the NATS servers require, if any (with nats.password)",
    },
    Key {
        name: "nats.password",
        env: &[],
        kind: Kind::Secret,
        default: || text(""),
        help: "that user's password",
    },
    Key {
        name: "nats.nkey_file",
        env: &[],
        kind: Kind::Secret,
        default: || text(""),
        help: "a file holding a user's nkey seed (SU..., as `nk -gen user` prints it), for servers that list the user's public key",
    },
    Key {
        name: "nats.credentials_file",
        env: &[],
        kind: Kind::Secret,
        default: || text(""),
        help: "a .creds file (a user JWT and its nkey seed, as `nsc` writes it), for servers in operator mode",
    },
    Key {
        name: "nats.prefix",
        env: &[],
        kind: Kind::Text,
        default: || text(nats().prefix),
        help: "first token of every subject, so deployments can share a server (same on hosts and front ends)",
    },
    Key {
        name: "nats.queue_group",
        env: &[],
        kind: Kind::Text,
        default: || text(nats().queue_group),
        help: "the queue group worker hosts serve calls in",
    },
    Key {
        name: "nats.ack_delay_ms",
        env: &[],
        kind: int_kind(0, 60_000),
        default: || ms(nats().ack_delay),
        help: "a host acknowledges a call still running after this long",
    },
    Key {
        name: "nats.ack_timeout_ms",
        env: &[],
        kind: int_kind(1, 600_000),
        default: || ms(nats().ack_timeout),
        help: "a call neither acknowledged nor answered this long after ack_delay is asked about: sent elsewhere if every host says it never had it, else lost (worker_crashed)",
    },
    Key {
        name: "nats.heartbeat_ms",
        env: &[],
        kind: int_kind(10, 600_000),
        default: || ms(nats().heartbeat),
        help: "how often a worker host announces itself",
    },
    Key {
        name: "nats.host_dead_after",
        env: &[],
        kind: int_kind(1, 1000),
        default: || int(nats().host_dead_after),
        help: "missed heartbeats after which a host is dead and its calls fail (worker_crashed)",
    },
    Key {
        name: "nats.reconnect_grace_ms",
        env: &[],
        kind: int_kind(0, 600_000),
        default: || ms(nats().reconnect_grace),
        help: "while NATS is unreachable, new calls wait this long before failing (unavailable)",
    },
    Key {
        name: "nats.connect_timeout_ms",
        env: &[],
        kind: int_kind(100, 600_000),
        default: || ms(nats().connect_timeout),
        help: "wait for the first connection to NATS",
    },
    Key {
        name: "nats.server_stale_after_ms",
        env: &[],
        kind: int_kind(0, 86_400_000),
        default: || ms(nats().server_stale_after),
        help: "the longest the NATS servers keep a client that stopped answering (ping_interval x (ping_max + 2)); a front end resends an unacknowledged call that every host says it never had only after listening this long (and host_dead_after heartbeats more)",
    },
    Key {
        name: "workers.command",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "worker command line (no bridge when empty)",
    },
    Key {
        name: "workers.framework_path",
        env: &["SQLITE_FRAMEWORK_PATH"],
        kind: Kind::Text,
        default: || text(""),
        help: "serve the Python functions under this directory by dotted path (generic mode; used when workers.command is empty)",
    },
    Key {
        name: "workers.allow_prefixes",
        env: &[],
        kind: Kind::Text,
        default: || text("src"),
        help: "generic mode: dotted prefixes that may be called, comma-separated (e.g. \"src.generator,src.tools\")",
    },
    Key {
        name: "workers.python",
        env: &["PYTHON_EXECUTABLE"],
        kind: Kind::Text,
        default: || text("python3"),
        help: "the Python interpreter: runs generic mode and replaces a leading python/python3/python3.N in workers.command",
    },
    Key {
        name: "workers.python_path",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "directories put before the workers' PYTHONPATH (e.g. where litebridge_worker is), colon-separated",
    },
    Key {
        name: "workers.processes",
        env: &["MAX_PROCESSES"],
        kind: int_kind(1, 256),
        default: || int(workers().processes),
        help: "worker processes",
    },
    Key {
        name: "workers.max_in_flight",
        env: &[],
        kind: int_kind(1, 100_000),
        default: || int(workers().max_in_flight),
        help: "calls in flight per worker",
    },
    Key {
        name: "workers.timeout_ms",
        env: &["REQUEST_TIMEOUT"],
        kind: int_kind(1, 86_400_000),
        default: || ms(workers().call_timeout),
        help: "default deadline of a worker call",
    },
    Key {
        name: "workers.start_timeout_ms",
        env: &[],
        kind: int_kind(1, 3_600_000),
        default: || ms(workers().start_timeout),
        help: "how long a worker may take to start (import its modules, load a model) and say it is ready; past it the start fails and the worker is stopped",
    },
    Key {
        name: "workers.max_retries",
        env: &["RETRY_ATTEMPTS"],
        kind: int_kind(0, 100),
        default: || int(workers().retry.retries()),
        help: "retries of an idempotent call whose worker crashed, after the first attempt (0: none)",
    },
    Key {
        name: "workers.retry_backoff",
        env: &["RETRY_BACKOFF"],
        kind: Kind::Word(&["exponential", "linear", "constant"]),
        default: || text("exponential"),
        help: "how the wait before each retry grows: doubling, by retry_backoff_ms each time, or not",
    },
    Key {
        name: "workers.retry_backoff_ms",
        env: &[],
        kind: int_kind(0, 3_600_000),
        default: || Value::Int(100),
        help: "the wait before the first retry (a random part of it, full jitter)",
    },
    Key {
        name: "workers.retry_backoff_max_ms",
        env: &[],
        kind: int_kind(0, 3_600_000),
        default: || ms(Backoff::default().max),
        help: "the longest wait before a retry",
    },
    Key {
        name: "workers.breaker_enabled",
        env: &["CIRCUIT_BREAKER_ENABLED"],
        kind: Kind::Bool,
        default: || Value::Bool(workers().breaker.enabled),
        help: "a circuit breaker per method (false: no call is ever refused by one)",
    },
    Key {
        name: "workers.breaker_threshold",
        env: &["CIRCUIT_BREAKER_THRESHOLD"],
        kind: int_kind(1, 10_000),
        default: || int(workers().breaker.consecutive_failures.unwrap_or(0)),
        help: "failures in a row that open a method's breaker (and calls judged before the failure-rate rule applies)",
    },
    Key {
        name: "workers.breaker_open_ms",
        env: &["CIRCUIT_BREAKER_TIMEOUT"],
        kind: int_kind(1, 86_400_000),
        default: || ms(workers().breaker.open_for),
        help: "how long an open breaker refuses calls before letting probes through",
    },
    Key {
        name: "workers.breaker_slow_call_ms",
        env: &[],
        kind: int_kind(0, 86_400_000),
        default: || ms(workers().breaker.slow_call_duration.unwrap_or_default()),
        help: "calls at least this long count as slow, and all slow opens the breaker (0: no call is slow; long LLM calls are normal)",
    },
    Key {
        name: "workers.recycle_after_calls",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || int(workers().recycle_after_calls.unwrap_or(0)),
        help: "recycle a worker after this many calls (0: never)",
    },
    Key {
        name: "workers.max_idle_ms",
        env: &["PROCESS_IDLE_TIMEOUT"],
        kind: int_kind(0, i64::MAX),
        default: || ms(workers().max_idle.unwrap_or_default()),
        help: "recycle a worker that had no call for this long (0: never; the seed used 300000)",
    },
    Key {
        name: "workers.max_age_ms",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || ms(workers().max_age.unwrap_or_default()),
        help: "recycle a worker older than this (0: never)",
    },
    Key {
        name: "workers.max_reply_mb",
        env: &[],
        kind: int_kind(1, 4096),
        default: || int((workers().max_line_bytes >> 20) as i64),
        help: "the longest line (a reply) a worker may write, in MiB; a longer one is passed over and its call fails with too_large (a line without end, past 16 times this, gets the worker replaced). litebridge holds a reply as a JSON tree, which can take tens of times its size",
    },
    Key {
        name: "workers.max_rss_mb",
        env: &[],
        kind: int_kind(0, 1 << 30),
        default: || int(workers().max_rss_bytes.unwrap_or(0) >> 20),
        help: "recycle a worker whose resident memory passes this many MiB (0: never)",
    },
    Key {
        name: "backup.enabled",
        env: &["POOL_ENABLE_BACKUP"],
        kind: Kind::Bool,
        default: || Value::Bool(false),
        help: "take verified backups on a schedule",
    },
    Key {
        name: "backup.dir",
        env: &[],
        kind: Kind::Text,
        default: || text(""),
        help: "where backups go (default: <db>.backups)",
    },
    Key {
        name: "backup.interval_s",
        env: &[],
        kind: int_kind(1, 31_536_000),
        default: || Value::Int(3600),
        help: "between two scheduled backups",
    },
    Key {
        name: "backup.keep",
        env: &[],
        kind: int_kind(1, 100_000),
        default: || Value::Int(24),
        help: "backups kept; older ones are deleted",
    },
    Key {
        name: "security.local_scopes",
        env: &[],
        kind: Kind::Text,
        default: || text("admin"),
        help: "scopes of stdio/MCP sessions and of HTTP on loopback while no key exists (metrics, read, write, bridge, admin; comma-separated)",
    },
    Key {
        name: "security.key_refresh_ms",
        env: &[],
        kind: int_kind(50, 3_600_000),
        default: || ms(Duration::from_secs(1)),
        help: "how often keys are re-read (revocations by other processes) and quota counts written",
    },
    Key {
        name: "quota.free_daily",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("free", |t| t.daily),
        help: "free tier: requests per UTC day (0: unlimited)",
    },
    Key {
        name: "quota.free_monthly",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("free", |t| t.monthly),
        help: "free tier: requests per UTC month (0: unlimited)",
    },
    Key {
        name: "quota.free_concurrent",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("free", |t| t.concurrent.map(u64::from)),
        help: "free tier: requests in flight at once (0: unlimited)",
    },
    Key {
        name: "quota.pro_daily",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("pro", |t| t.daily),
        help: "pro tier: requests per UTC day (0: unlimited)",
    },
    Key {
        name: "quota.pro_monthly",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("pro", |t| t.monthly),
        help: "pro tier: requests per UTC month (0: unlimited)",
    },
    Key {
        name: "quota.pro_concurrent",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("pro", |t| t.concurrent.map(u64::from)),
        help: "pro tier: requests in flight at once (0: unlimited)",
    },
    Key {
        name: "quota.enterprise_daily",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("enterprise", |t| t.daily),
        help: "enterprise tier: requests per UTC day (0: unlimited)",
    },
    Key {
        name: "quota.enterprise_monthly",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("enterprise", |t| t.monthly),
        help: "enterprise tier: requests per UTC month (0: unlimited)",
    },
    Key {
        name: "quota.enterprise_concurrent",
        env: &[],
        kind: int_kind(0, i64::MAX),
        default: || tier("enterprise", |t| t.concurrent.map(u64::from)),
        help: "enterprise tier: requests in flight at once (0: unlimited)",
    },
    Key {
        name: "cache.enabled",
        env: &["CACHE_ENABLED"],
        kind: Kind::Bool,
        default: || Value::Bool(true),
        help: "cache worker results (cacheable methods, cache keys)",
    },
    Key {
        name: "cache.default_ttl_s",
        env: &["CACHE_TTL"],
        kind: int_kind(0, 315_360_000),
        default: || {
            int(CacheConfig::default()
                .default_ttl
                .map_or(0, |t| t.as_secs()))
        },
        help: "lifetime of an entry set without one, in seconds (0: until deleted or evicted)",
    },
    Key {
        name: "cache.max_entries",
        env: &[],
        kind: int_kind(1, 1 << 32),
        default: || int(CacheConfig::default().max_entries),
        help: "entries kept in memory",
    },
    Key {
        name: "cache.max_memory_mb",
        env: &[],
        kind: int_kind(1, 4095),
        default: || int(CacheConfig::default().max_bytes >> 20),
        help: "memory the entries kept in memory may take, estimated from their JSON trees, in MiB",
    },
    Key {
        name: "cache.max_entry_kb",
        env: &[],
        kind: int_kind(1, 4 << 20),
        default: || int(CacheConfig::default().max_entry_bytes >> 10),
        help: "an entry larger than this (its JSON tree, estimated, in KiB) is never kept in memory, only in the database",
    },
];

/// Environment variables of the clients, never read as configuration.
const CLIENT_PREFIX: &str = "LITEBRIDGE_CLIENT_";

/// Keys that changed meaning, refused with what to use instead (a value
/// reinterpreted in silence would change what a deployment does).
const RETIRED: &[(&str, &str)] = &[(
    "workers.retry_attempts",
    "it counted attempts, the first included; use `workers.max_retries` (environment RETRY_ATTEMPTS), which counts retries after the first attempt as the seed system does (3 means up to 4 attempts; 0 means none)",
)];

fn unknown_key(name: &str) -> String {
    if let Some((_, instead)) = RETIRED.iter().find(|(old, _)| *old == name) {
        return format!("`{name}` is no longer read: {instead}");
    }
    let hint = did_you_mean(name, |k| format!("`{k}`"));
    let section = name.split_once('.').map_or(name, |(s, _)| s);
    let in_section: Vec<&str> = KEYS
        .iter()
        .filter_map(|k| k.name.strip_prefix(section)?.strip_prefix('.'))
        .collect();
    if in_section.is_empty() {
        format!(
            "unknown configuration key `{name}`{hint} (sections: {})",
            sections().join(", ")
        )
    } else {
        format!(
            "unknown configuration key `{name}`{hint} (keys of [{section}]: {})",
            in_section.join(", ")
        )
    }
}

/// The sections of the configuration, in the order of [`KEYS`].
fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let section = k.name.split_once('.').map_or(k.name, |(s, _)| s);
        if !out.contains(&section) {
            out.push(section);
        }
    }
    out
}

/// The keys `name` was probably meant to be: those with its last part in
/// another section (`db.max_batch` for `writer.max_batch`), else the
/// closest when it is close (a letter or two off).
fn nearest_keys(name: &str) -> Vec<&'static str> {
    let leaf = |n: &str| {
        n.rsplit_once('.')
            .map_or(n.to_owned(), |(_, l)| l.to_owned())
    };
    let wanted_leaf = leaf(name);
    let same_leaf: Vec<&'static str> = KEYS
        .iter()
        .map(|k| k.name)
        .filter(|k| leaf(k).eq_ignore_ascii_case(&wanted_leaf))
        .collect();
    if !same_leaf.is_empty() {
        return same_leaf;
    }
    crate::suggest::closest(name, KEYS.iter().map(|k| k.name))
        .into_iter()
        .collect()
}

/// "; did you mean `a` or `b`?" for the keys `name` was probably meant to
/// be, each written by `show`; empty when none is close.
fn did_you_mean(name: &str, show: impl Fn(&str) -> String) -> String {
    let keys: Vec<String> = nearest_keys(name).into_iter().map(show).collect();
    crate::suggest::did_you_mean(&keys)
}

/// The `LITEBRIDGE_` variable that sets `key` (`db.max_batch`:
/// `LITEBRIDGE_DB_MAX_BATCH`).
fn env_name(key: &str) -> String {
    format!(
        "LITEBRIDGE_{}",
        key.to_ascii_uppercase().replacen('.', "_", 1)
    )
}

/// Whether a command's program is a Python interpreter named bare
/// (`python`, `python3`, `python3.11`), which `workers.python`
/// (PYTHON_EXECUTABLE), when given, replaces. A path is kept: it was chosen.
fn is_python(program: &str) -> bool {
    match program.strip_prefix("python") {
        Some(rest) => rest.chars().all(|c| c.is_ascii_digit() || c == '.'),
        None => false,
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(n) => write!(f, "environment {n}"),
            Source::Flag(n) => write!(f, "flag --{n}"),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    values: BTreeMap<&'static str, (Value, Source)>,
}

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

fn check(k: &Key, raw: &str, from: &Source) -> Result<Value, Failure> {
    let bad = |expected: String| {
        Failure::new(format!(
            "invalid configuration `{}` = {raw:?} (from {from}): expected {expected}",
            k.name
        ))
    };
    match k.kind {
        Kind::Int { min, max } => match raw.trim().parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(Value::Int(v)),
            _ => Err(bad(format!("an integer from {min} to {max}"))),
        },
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(bad("true or false".into())),
        },
        Kind::Text | Kind::Secret => Ok(Value::Text(raw.to_owned())),
        Kind::Word(words) => {
            let v = raw.trim().to_ascii_lowercase();
            if words.contains(&v.as_str()) {
                Ok(Value::Text(v))
            } else {
                Err(bad(format!("one of {}", words.join(", "))))
            }
        }
    }
}

/// Reads the TOML file at `path` into `values`, refusing an unknown key or a
/// value that does not fit its key, naming the file and the key.
fn read_file(
    path: &Path,
    values: &mut BTreeMap<&'static str, (Value, Source)>,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(format!(
            "cannot read the configuration file {}: {e}",
            path.display()
        ))
    })?;
    // The message without the offending line's value, which may be a
    // password: its key only (a duplicate key was not named).
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map(|t| t.matches('\n').count() + 1);
        let key = line
            .and_then(|l| text.lines().nth(l - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.len() <= 64
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
            });
        let at = match (line, key) {
            (Some(l), Some(k)) => format!(" (line {l}, key `{k}`)"),
            (Some(l), None) => format!(" (line {l})"),
            _ => String::new(),
        };
        Failure::new(format!(
            "the configuration file {} is not valid TOML{at}: {}",
            path.display(),
            e.message()
        ))
    })?;
    for (section, body) in table {
        let toml::Value::Table(entries) = body else {
            return Err(Failure::new(format!(
                "{}: `{section}` must be a [section] (sections: {})",
                path.display(),
                sections().join(", ")
            )));
        };
        for (name, value) in entries {
            let full = format!("{section}.{name}");
            let k = key(&full).ok_or_else(|| {
                Failure::new(format!("{}: {}", path.display(), unknown_key(&full)))
            })?;
            let raw = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(Failure::new(format!(
                        "{}: `{full}` must be a string, a number or true/false",
                        path.display()
                    )));
                }
            };
            let from = Source::File(path.to_path_buf());
            let v = check(k, &raw, &from)?;
            values.insert(k.name, (v, from));
        }
    }
    Ok(())
}

impl Settings {
    /// Defaults, then `file`, then the environment `env`, then `flags`.
    pub(crate) fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &[(&'static str, &'static str, String)],
    ) -> Result<Settings, Failure> {
        let mut values: BTreeMap<&'static str, (Value, Source)> = KEYS
            .iter()
            .map(|k| (k.name, ((k.default)(), Source::Default)))
            .collect();
        if let Some(path) = file {
            read_file(path, &mut values)?;
        }
        let env_map: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (name, value) in &env_map {
            // Reserved for the clients (`LITEBRIDGE_CLIENT_BIN`, `_URL`,
            // `_KEY`), which often share an environment with a server.
            if name.starts_with(CLIENT_PREFIX) {
                continue;
            }
            if let Some(rest) = name.strip_prefix("LITEBRIDGE_") {
                let full = rest.to_ascii_lowercase().replacen('_', ".", 1);
                let k = key(&full).ok_or_else(|| {
                    Failure::new(if RETIRED.iter().any(|(old, _)| *old == full) {
                        format!("{name}: {}", unknown_key(&full))
                    } else {
                        format!(
                            "unknown configuration variable {name} (there is no key `{full}`){}",
                            did_you_mean(&full, env_name)
                        )
                    })
                })?;
                let from = Source::Env((*name).to_owned());
                values.insert(k.name, (check(k, value, &from)?, from));
            }
        }
        for k in KEYS {
            // The seed system's names, unless the LITEBRIDGE_ name was given.
            if matches!(values[k.name].1, Source::Env(_)) {
                continue;
            }
            for alias in k.env {
                if let Some(value) = env_map.get(alias) {
                    let from = Source::Env((*alias).to_owned());
                    values.insert(k.name, (check(k, value, &from)?, from));
                }
            }
        }
        for (name, flag, value) in flags {
            let k = key(name).expect("flags map to known keys");
            let from = Source::Flag(flag);
            values.insert(k.name, (check(k, value, &from)?, from));
        }
        Ok(Settings { values })
    }

    // The accessors below read a key of the kind they name: each key's
    // value was checked against its kind when it was read (defaults too,
    // in `every_default_fits_its_key`), and every accessor is exercised by
    // the tests, so asking a key for another kind is a bug found there.

    fn get(&self, name: &str) -> &str {
        match &self.values[name].0 {
            Value::Text(t) => t,
            other => unreachable!("`{name}` is read as text but holds {other:?}"),
        }
    }

    fn int(&self, name: &str) -> i64 {
        match self.values[name].0 {
            Value::Int(i) => i,
            ref other => unreachable!("`{name}` is read as an integer but holds {other:?}"),
        }
    }

    fn ms(&self, name: &str) -> Duration {
        Duration::from_millis(self.int(name).max(0) as u64)
    }

    fn bool(&self, name: &str) -> bool {
        match self.values[name].0 {
            Value::Bool(b) => b,
            ref other => unreachable!("`{name}` is read as true/false but holds {other:?}"),
        }
    }

    /// The scopes of local sessions.
    pub(crate) fn local_scopes(&self) -> Result<litebridge::auth::Scopes, Failure> {
        let raw = self.get("security.local_scopes");
        raw.parse::<litebridge::auth::Scopes>().map_err(|e| {
            Failure::new(format!(
                "invalid configuration `security.local_scopes` = {raw:?} (from {}): {e}",
                self.values["security.local_scopes"].1
            ))
        })
    }

    pub(crate) fn key_refresh(&self) -> Duration {
        self.ms("security.key_refresh_ms")
    }

    /// The tiers, with the configured limits.
    pub(crate) fn tiers(&self) -> litebridge::auth::Tiers {
        let mut tiers = litebridge::auth::Tiers::default();
        for t in ["free", "pro", "enterprise"] {
            let limit = |what: &str| {
                let v = self.int(&format!("quota.{t}_{what}"));
                (v > 0).then_some(v as u64)
            };
            tiers.set(
                t,
                litebridge::auth::TierLimits {
                    daily: limit("daily"),
                    monthly: limit("monthly"),
                    concurrent: limit("concurrent").map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
                },
            );
        }
        tiers
    }

    /// The PostgreSQL configuration when `backend.kind` is `postgres`;
    /// `None` for SQLite. `db.timeout_ms` and `db.max_result_bytes` apply
    /// to both engines.
    ///
    /// # Errors
    /// A PostgreSQL setting that is missing or invalid, naming it.
    pub(crate) fn pg_config(&self) -> Result<Option<PgConfig>, Failure> {
        if self.get("backend.kind") != "postgres" {
            // A PostgreSQL setting given to a SQLite service: the data would
            // go to a local file the operator does not expect.
            if let Some(k) = KEYS.iter().find(|k| {
                k.name.starts_with("postgres.") && self.values[k.name].1 != Source::Default
            }) {
                return Err(Failure::new(format!(
                    "`{}` is set (from {}) but `backend.kind` is \"sqlite\" (from {}): set backend.kind = \"postgres\" (LITEBRIDGE_BACKEND_KIND) to use PostgreSQL, or remove the postgres settings",
                    k.name, self.values[k.name].1, self.values["backend.kind"].1
                )));
            }
            return Ok(None);
        }
        let url = self.get("postgres.url").trim();
        if url.is_empty() {
            return Err(Failure::new(format!(
                "`backend.kind` = \"postgres\" (from {}) needs `postgres.url` (environment LITEBRIDGE_POSTGRES_URL): postgres://owner@host:5432/db, several hosts allowed",
                self.values["backend.kind"].1
            )));
        }
        let optional = |name: &str| {
            let v = self.get(name).trim();
            (!v.is_empty()).then(|| v.to_owned())
        };
        let mut c = PgConfig::new(url);
        c.client_user = optional("postgres.client_user");
        c.client_password = optional("postgres.client_password");
        c.client_schema = optional("postgres.client_schema");
        c.schema = self.get("postgres.schema").trim().to_owned();
        c.replicas = self.list("postgres.replicas");
        c.connections = self.int("postgres.connections") as usize;
        c.connect_timeout = self.ms("postgres.connect_timeout_ms");
        c.statement_cache = self.int("postgres.statement_cache") as usize;
        c.one_message_reads = self.bool("postgres.one_message_reads");
        c.reads_per_message = self.int("postgres.reads_per_message") as usize;
        c.reads_together_below = self.ms("postgres.reads_together_below_ms");
        c.isolate_requests = self.bool("postgres.isolate_requests");
        c.writes_per_message = self.int("postgres.writes_per_message") as usize;
        c.one_message_writes = self.bool("postgres.one_message_writes");
        c.health_check_interval = self.ms("postgres.health_check_interval_ms");
        c.replicated_to = self.int("postgres.replicated_to") as usize;
        c.replicated_standbys = self.list("postgres.replicated_standbys");
        c.default_timeout = self.ms("db.timeout_ms");
        c.max_result_bytes = self.int("db.max_result_bytes") as usize;
        c.validate().map_err(|e| self.refused(e))?;
        Ok(Some(c))
    }

    /// A key's value as a list: its items separated by commas, trimmed,
    /// the empty ones left out.
    fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        PathBuf::from(self.get("db.path"))
    }

    pub(crate) fn listen(&self) -> &str {
        self.get("server.listen")
    }

    /// Where `key`'s value came from (the default, a file, the environment
    /// or a flag), for a message about it.
    pub(crate) fn source(&self, key: &str) -> &Source {
        &self.values[key].1
    }

    /// The library's refusal of a configured value, saying where the value
    /// came from when it is one of these settings (a value's type is
    /// checked as it is read, [`check`]; what it says, or how it goes with
    /// the others, by the library's own `validate`).
    pub(crate) fn refused(&self, e: litebridge::Error) -> Failure {
        match &e {
            litebridge::Error::Config {
                key,
                value,
                expected,
            } if self
                .values
                .get(key.as_str())
                .is_some_and(|(_, from)| *from != Source::Default) =>
            {
                Failure::new(format!(
                    "invalid configuration `{key}` = {value} (from {}): expected {expected}",
                    self.source(key)
                ))
            }
            _ => e.into(),
        }
    }

    pub(crate) fn dashboard(&self) -> bool {
        self.bool("server.dashboard")
    }

    pub(crate) fn max_concurrent_requests(&self) -> usize {
        self.int("server.max_concurrent_requests") as usize
    }

    pub(crate) fn accept_limits(&self) -> crate::transport::accept::Limits {
        crate::transport::accept::Limits {
            max_connections: self.int("server.max_connections") as usize,
            read_timeout: self.ms("server.read_timeout_ms"),
        }
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        self.ms("server.shutdown_grace_ms")
    }

    pub(crate) fn log_level(&self) -> &str {
        self.get("server.log_level")
    }

    pub(crate) fn log_format(&self) -> &str {
        self.get("server.log_format")
    }

    fn durability(&self) -> Result<Durability, Failure> {
        let raw = self.get("db.durability");
        raw.parse().map_err(|e| {
            Failure::new(format!(
                "invalid configuration `db.durability` = {raw:?} (from {}): {e}",
                self.values["db.durability"].1
            ))
        })
    }

    pub(crate) fn db_config(&self) -> Result<DbConfig, Failure> {
        let b = DbConfig::builder()
            .readers(self.int("db.readers") as usize)
            .heavy_readers(self.int("db.heavy_readers") as usize)
            .write_queue(self.int("db.write_queue") as usize)
            .max_batch(self.int("db.max_batch") as usize)
            .max_wait(self.ms("db.max_wait_ms"))
            .durability(self.durability()?)
            .busy_timeout(self.ms("db.busy_timeout_ms"))
            .cache_size(self.int("db.cache_size"))
            .mmap_size(self.int("db.mmap_size") as u64)
            .default_timeout(Some(self.ms("db.timeout_ms")))
            .health_check_interval(self.ms("db.health_check_interval_ms"))
            .quick_check_on_open(self.bool("db.quick_check_on_open"))
            .read_mark_keeper(self.bool("db.read_mark_keeper"))
            .max_write_hold(self.ms("db.max_write_hold_ms"))
            .max_result_bytes(self.int("db.max_result_bytes") as usize)
            .max_request_memory(self.int("db.max_request_memory") as usize)
            .max_schema_objects(self.int("db.max_schema_objects") as usize)
            .max_schema_bytes(self.int("db.max_schema_bytes") as usize);
        Ok(b.build()?)
    }

    /// The worker pool's configuration; `None` when neither a command nor a
    /// framework path is set (no bridge).
    ///
    /// # Errors
    /// A framework path that is not a directory, or prefixes that are empty,
    /// naming the key and where its value came from.
    /// The NATS connection (`nats.*`); `nats.url` must be set.
    ///
    /// # Errors
    /// A missing URL or an invalid value, naming the key.
    pub(crate) fn nats_config(&self) -> Result<litebridge::workers::nats::NatsConfig, Failure> {
        let url = self.get("nats.url").trim();
        if url.is_empty() {
            return Err(Failure::new(
                "`nats.url` is needed: nats://host:4222, several servers separated by commas \
                 ([nats] url in the configuration file, LITEBRIDGE_NATS_URL, or --nats of worker-host)",
            ));
        }
        let optional = |name: &str| {
            let v = self.get(name).trim();
            (!v.is_empty()).then(|| v.to_owned())
        };
        let mut c = litebridge::workers::nats::NatsConfig::new(url);
        c.token = optional("nats.token");
        c.user = optional("nats.user");
        c.password = optional("nats.password");
        c.nkey_file = optional("nats.nkey_file").map(std::path::PathBuf::from);
        c.credentials_file = optional("nats.credentials_file").map(std::path::PathBuf::from);
        c.prefix = self.get("nats.prefix").trim().to_owned();
        c.queue_group = self.get("nats.queue_group").trim().to_owned();
        c.ack_delay = self.ms("nats.ack_delay_ms");
        c.ack_timeout = self.ms("nats.ack_timeout_ms");
        c.heartbeat = self.ms("nats.heartbeat_ms");
        c.host_dead_after = self.int("nats.host_dead_after") as u32;
        c.reconnect_grace = self.ms("nats.reconnect_grace_ms");
        c.connect_timeout = self.ms("nats.connect_timeout_ms");
        c.server_stale_after = self.ms("nats.server_stale_after_ms");
        c.validate().map_err(|e| self.refused(e))?;
        Ok(c)
    }

    /// The NATS connection of `serve`, `stdio` and `mcp` when
    /// `workers.transport` is `nats`; `None` for local workers.
    ///
    /// # Errors
    /// As [`Settings::nats_config`].
    pub(crate) fn worker_transport(
        &self,
    ) -> Result<Option<litebridge::workers::nats::NatsConfig>, Failure> {
        if self.get("workers.transport") == "nats" {
            self.nats_config().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The settings of each call, whichever transport: deadline, retries, breakers.
    fn call_settings(&self, mut c: WorkerConfig) -> WorkerConfig {
        c.call_timeout = self.ms("workers.timeout_ms");
        let base = self.ms("workers.retry_backoff_ms");
        let growth = match self.get("workers.retry_backoff") {
            "linear" => Growth::Linear { base, step: base },
            "constant" => Growth::Constant(base),
            _ => Growth::Exponential { base, factor: 2.0 },
        };
        c.retry = c
            .retry
            .max_retries(self.int("workers.max_retries") as u32)
            .backoff(Backoff {
                growth,
                max: self.ms("workers.retry_backoff_max_ms"),
                full_jitter: true,
            });
        c.breaker.enabled = self.bool("workers.breaker_enabled");
        c.breaker.consecutive_failures = Some(self.int("workers.breaker_threshold") as u32);
        c.breaker.open_for = self.ms("workers.breaker_open_ms");
        let slow = self.ms("workers.breaker_slow_call_ms");
        c.breaker.slow_call_duration = (!slow.is_zero()).then_some(slow);
        c
    }

    /// The workers of `serve`, `stdio` and `mcp`: processes started here, or
    /// (with `workers.transport = "nats"`) only the settings of each call.
    ///
    /// # Errors
    /// An invalid or contradictory setting, naming it.
    pub(crate) fn worker_config(&self) -> Result<Option<WorkerConfig>, Failure> {
        if self.get("workers.transport") == "nats" {
            // The workers run on the hosts; only the call settings are ours.
            if let Some(k) = ["workers.command", "workers.framework_path"]
                .into_iter()
                .find(|k| self.values[*k].1 != Source::Default)
            {
                return Err(Failure::new(format!(
                    "`{k}` is set (from {}) but `workers.transport` is \"nats\" (from {}): over NATS the workers run on worker hosts (`litebridge worker-host --nats URL --workers CMD`); remove {k} here, or set workers.transport = \"local\"",
                    self.values[k].1, self.values["workers.transport"].1
                )));
            }
            return Ok(Some(
                self.call_settings(WorkerConfig::new(Vec::<String>::new())),
            ));
        }
        self.local_workers()
    }

    /// Worker processes to start here (`workers.*`); `None` when no command
    /// or framework path is set.
    ///
    /// # Errors
    /// An invalid setting, naming it.
    pub(crate) fn local_workers(&self) -> Result<Option<WorkerConfig>, Failure> {
        let python = self.get("workers.python").trim();
        let command = self.get("workers.command").trim();
        let framework = self.get("workers.framework_path").trim();
        if !command.is_empty() && !framework.is_empty() {
            tracing::warn!(
                "workers.command is set, so workers.framework_path ({}) is not used",
                self.values["workers.framework_path"].1
            );
        }
        let words: Vec<String> = if !command.is_empty() {
            let mut words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
            // Only when given: a default must not replace the program named.
            let given = self.values["workers.python"].1 != Source::Default;
            if given && is_python(&words[0]) && !python.is_empty() {
                words[0] = python.to_owned();
            }
            words
        } else if !framework.is_empty() {
            self.generic_command(python, framework)?
        } else {
            if self.values["workers.processes"].1 != Source::Default {
                tracing::warn!(
                    "workers.processes is set ({}) but no workers are: give workers.command (--workers \"CMD\") to start any",
                    self.values["workers.processes"].1
                );
            }
            return Ok(None);
        };
        let mut c = self.call_settings(WorkerConfig::new(words));
        let python_path = self.get("workers.python_path").trim();
        if !python_path.is_empty() {
            let joined = match std::env::var("PYTHONPATH") {
                Ok(old) if !old.is_empty() => format!("{python_path}:{old}"),
                _ => python_path.to_owned(),
            };
            c.env.push(("PYTHONPATH".into(), joined));
        }
        c.processes = self.int("workers.processes") as usize;
        c.max_in_flight = self.int("workers.max_in_flight") as usize;
        let positive = |name: &str| (self.int(name) > 0).then(|| self.int(name) as u64);
        c.recycle_after_calls = positive("workers.recycle_after_calls");
        c.max_idle = positive("workers.max_idle_ms").map(Duration::from_millis);
        c.max_age = positive("workers.max_age_ms").map(Duration::from_millis);
        c.max_rss_bytes = positive("workers.max_rss_mb").map(|mb| mb << 20);
        c.max_line_bytes = (self.int("workers.max_reply_mb") as usize) << 20;
        c.start_timeout = self.ms("workers.start_timeout_ms");
        Ok(Some(c))
    }

    /// `python -m litebridge_worker --root DIR --allow PREFIX...`: the SDK's
    /// generic mode over the seed's framework directory.
    fn generic_command(&self, python: &str, framework: &str) -> Result<Vec<String>, Failure> {
        let from = |k: &str| self.values[k].1.to_string();
        if !Path::new(framework).is_dir() {
            return Err(Failure::new(format!(
                "invalid configuration `workers.framework_path` = {framework:?} (from {}): not a directory",
                from("workers.framework_path")
            )));
        }
        let prefixes: Vec<&str> = self
            .get("workers.allow_prefixes")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if prefixes.is_empty() {
            return Err(Failure::new(format!(
                "invalid configuration `workers.allow_prefixes` = \"\" (from {}): expected dotted prefixes, e.g. \"src.generator\"",
                from("workers.allow_prefixes")
            )));
        }
        // Dotted paths of public names, as the SDK accepts them (a trailing
        // dot allowed): a prefix like `--root` would be read by the worker
        // as an option and widen what it serves.
        let dotted = |p: &str| {
            p.trim_end_matches('.').split('.').all(|part| {
                part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        };
        if let Some(bad) = prefixes.iter().find(|p| !dotted(p)) {
            return Err(Failure::new(format!(
                "invalid configuration `workers.allow_prefixes` (from {}): {bad:?} is not a dotted path of public Python names (e.g. \"src.generator\")",
                from("workers.allow_prefixes")
            )));
        }
        let mut words: Vec<String> = vec![
            if python.is_empty() { "python3" } else { python }.into(),
            "-m".into(),
            "litebridge_worker".into(),
            // One word, whatever the path begins with.
            format!("--root={framework}"),
            "--allow".into(),
        ];
        words.extend(prefixes.into_iter().map(str::to_owned));
        Ok(words)
    }

    /// Where backups of the database go.
    pub(crate) fn backup_dir(&self) -> PathBuf {
        match self.get("backup.dir") {
            "" => {
                let mut p = self.db_path().into_os_string();
                p.push(".backups");
                PathBuf::from(p)
            }
            dir => PathBuf::from(dir),
        }
    }

    /// The backup policy: always known (for `admin.backup` and recovery);
    /// scheduled only when `backup.enabled`.
    pub(crate) fn backup_policy(&self) -> litebridge::backups::BackupPolicy {
        litebridge::backups::BackupPolicy {
            dir: self.backup_dir(),
            interval: Duration::from_secs(self.int("backup.interval_s").max(1) as u64),
            keep: self.int("backup.keep").max(1) as usize,
        }
    }

    pub(crate) fn backup_enabled(&self) -> bool {
        self.bool("backup.enabled")
    }

    /// Backup settings given (in a file, the environment) while backups are
    /// off: they do nothing, which the operator who wrote them should hear.
    pub(crate) fn backup_settings_unused(&self) -> Option<&'static str> {
        if self.backup_enabled() {
            return None;
        }
        ["backup.dir", "backup.interval_s", "backup.keep"]
            .into_iter()
            .find(|k| self.values[*k].1 != Source::Default)
    }

    pub(crate) fn cache_enabled(&self) -> bool {
        self.bool("cache.enabled")
    }

    pub(crate) fn cache_config(&self) -> CacheConfig {
        let ttl = self.int("cache.default_ttl_s");
        CacheConfig {
            max_entries: self.int("cache.max_entries") as u64,
            max_bytes: (self.int("cache.max_memory_mb") as u64) << 20,
            max_entry_bytes: (self.int("cache.max_entry_kb") as u64) << 10,
            default_ttl: (ttl > 0).then(|| Duration::from_secs(ttl as u64)),
        }
    }

    /// `key = value  # source`, one line each, by section: a configuration
    /// file that gives every value as it is now (a secret that is set is
    /// left out, in a comment).
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for section in sections() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{section}]\n"));
            for k in KEYS
                .iter()
                .filter(|k| k.name.split_once('.').map(|(s, _)| s) == Some(section))
            {
                out.push_str(&self.describe_key(k));
            }
        }
        out
    }

    fn describe_key(&self, k: &Key) -> String {
        let (_, name) = k.name.split_once('.').expect("section.key");
        let (value, from) = &self.values[k.name];
        if k.kind == Kind::Secret && matches!(value, Value::Text(t) if !t.is_empty()) {
            return format!("# {name} = (set, not shown)  # {from}; {}\n", k.help);
        }
        let shown = match value {
            Value::Text(t) if k.name == "postgres.url" => {
                format!("{:?}", PgConfig::new(t.as_str()).redacted_url())
            }
            Value::Text(t) if k.name == "nats.url" => format!(
                "{:?}",
                litebridge::workers::nats::NatsConfig::new(t.as_str()).redacted_url()
            ),
            Value::Text(t) => format!("{t:?}"),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
        };
        format!("{name} = {shown}  # {from}; {}\n", k.help)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn every_default_fits_its_key() {
        for k in KEYS {
            let value = (k.default)();
            let raw = match &value {
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Text(t) => t.clone(),
            };
            assert_eq!(
                check(k, &raw, &Source::Default).unwrap(),
                value,
                "the default of {}",
                k.name
            );
        }
        // Every accessor on the defaults: each reads its keys as their kind.
        let s = Settings::load(None, &[], &[]).unwrap();
        assert_eq!(
            format!("{:?}", s.db_config().unwrap()),
            format!("{:?}", DbConfig::default())
        );
        assert!(s.worker_config().unwrap().is_none());
        assert_eq!(s.tiers(), Tiers::default());
        let _ = (
            s.backup_policy(),
            s.backup_enabled(),
            s.cache_config(),
            s.cache_enabled(),
        );
        let _ = (
            s.local_scopes().unwrap(),
            s.key_refresh(),
            s.listen(),
            s.accept_limits(),
        );
        let _ = (
            s.max_concurrent_requests(),
            s.shutdown_grace(),
            s.log_level(),
            s.log_format(),
        );
        assert_eq!(s.db_path(), PathBuf::from("litebridge.db"));
    }

    #[test]
    fn flags_over_env_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lb.toml");
        std::fs::write(
            &file,
            "[db]\nreaders = 3\ndurability = \"full\"\n[workers]\nprocesses = 5\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            &env(&[
                ("LITEBRIDGE_DB_READERS", "6"),
                ("MAX_PROCESSES", "7"),
                ("POOL_MAX_WORKERS", "3"),
            ]),
            &[("workers.processes", "processes", "8".into())],
        )
        .unwrap();
        assert_eq!(s.int("db.readers"), 6);
        assert_eq!(s.get("db.durability"), "full");
        assert_eq!(s.int("workers.processes"), 8);
        assert_eq!(s.int("db.heavy_readers"), 3);
        let shown = s.describe();
        assert!(
            shown.contains("readers = 6  # environment LITEBRIDGE_DB_READERS"),
            "{shown}"
        );
        assert!(
            shown.contains("processes = 8  # flag --processes"),
            "{shown}"
        );
        assert!(shown.contains("durability = \"full\"  # file"), "{shown}");
        assert!(
            shown.contains("heavy_readers = 3  # environment POOL_MAX_WORKERS"),
            "{shown}"
        );
    }

    /// A misspelt key gets the one it was probably meant to be, and the
    /// keys of its section, not all of them (the list was 110 names long).
    #[test]
    fn a_misspelt_key_is_answered_with_the_key_it_was_meant_to_be() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lb.toml");
        let refused = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let e = Settings::load(Some(&file), &[], &[]).unwrap_err();
            assert!(
                e.message.starts_with(&format!("{}: ", file.display())),
                "{}",
                e.message
            );
            e.message
        };
        // A letter off.
        let m = refused("[db]\nreadrs = 3\n");
        assert!(m.contains("unknown configuration key `db.readrs`; did you mean `db.readers`? (keys of [db]: path, readers,"), "{m}");
        // The right name in the wrong section.
        let m = refused("[writer]\nmax_batch = 3\n");
        assert!(m.contains("`writer.max_batch`; did you mean `db.max_batch`? (sections: server, backend, postgres, db,"), "{m}");
        // Case.
        let m = refused("[workers]\nProcesses = 3\n");
        assert!(m.contains("did you mean `workers.processes`?"), "{m}");
        // Nothing close: no guess, the section's keys.
        let m = refused("[db]\nwal_mode = true\n");
        assert!(
            m.contains("unknown configuration key `db.wal_mode` (keys of [db]:"),
            "{m}"
        );
        assert!(!m.contains("did you mean"), "{m}");
        assert!(!m.contains("workers.") && !m.contains("cache."), "{m}");
        // A name in several sections: each of them.
        let m = refused("[writer]\nconnect_timeout_ms = 3\n");
        assert!(
            m.contains("did you mean `postgres.connect_timeout_ms` or `nats.connect_timeout_ms`?"),
            "{m}"
        );
        // A section that is not a table lists the sections.
        let m = refused("db = 3\n");
        assert!(
            m.contains("`db` must be a [section] (sections: server, backend,"),
            "{m}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lb.toml");
        std::fs::write(&file, "[db]\nreadrs = 3\n").unwrap();
        let e = Settings::load(Some(&file), &[], &[]).unwrap_err();
        assert!(
            e.message.contains("unknown configuration key `db.readrs`"),
            "{}",
            e.message
        );
        let e = Settings::load(None, &env(&[("POOL_MAX_READERS", "many")]), &[]).unwrap_err();
        assert_eq!(
            e.message,
            "invalid configuration `db.readers` = \"many\" (from environment POOL_MAX_READERS): expected an integer from 1 to 256"
        );
        let e =
            Settings::load(None, &env(&[("LITEBRIDGE_DB_DURABILITY", "fast")]), &[]).unwrap_err();
        assert!(e.message.contains("one of normal, full"), "{}", e.message);
        let e = Settings::load(None, &env(&[("LITEBRIDGE_DB_NOPE", "1")]), &[]).unwrap_err();
        assert_eq!(
            e.message,
            "unknown configuration variable LITEBRIDGE_DB_NOPE (there is no key `db.nope`)"
        );
        let e = Settings::load(None, &env(&[("LITEBRIDGE_DB_READRS", "2")]), &[]).unwrap_err();
        assert!(
            e.message.ends_with("; did you mean LITEBRIDGE_DB_READERS?"),
            "{}",
            e.message
        );
        // The clients' own variables share the environment and are not ours.
        Settings::load(
            None,
            &env(&[
                ("LITEBRIDGE_CLIENT_BIN", "/usr/local/bin/litebridge"),
                ("LITEBRIDGE_CLIENT_KEY", "lb_x"),
            ]),
            &[],
        )
        .unwrap();
        std::fs::write(&file, "not toml at all [").unwrap();
        let e = Settings::load(Some(&file), &[], &[]).unwrap_err();
        assert!(e.message.contains("not valid TOML"), "{}", e.message);
        // A key given twice is named (its value never: it may be a secret).
        std::fs::write(&file, "[db]\nreaders = 3\nreaders = 4\n").unwrap();
        let e = Settings::load(Some(&file), &[], &[]).unwrap_err();
        assert!(
            e.message.contains("key `readers`") && e.message.contains("line 3"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("= 4"), "{}", e.message);
    }

    #[test]
    fn the_seed_systems_names_reach_the_typed_configs() {
        let s = Settings::load(
            None,
            &env(&[
                ("POOL_CACHE_SIZE", "-32000"),
                ("POOL_HEALTH_CHECK", "1000"),
                ("REQUEST_TIMEOUT", "1500"),
                ("RETRY_ATTEMPTS", "5"),
                ("CIRCUIT_BREAKER_THRESHOLD", "9"),
                ("PYTHON_EXECUTABLE", "/usr/bin/python3.11"),
                ("CACHE_ENABLED", "false"),
                ("LITEBRIDGE_WORKERS_COMMAND", "python3 examples/worker.py"),
            ]),
            &[],
        )
        .unwrap();
        let db = s.db_config().unwrap();
        assert_eq!(db.cache_size, -32000);
        assert_eq!(db.health_check_interval, Duration::from_secs(1));
        let w = s.worker_config().unwrap().unwrap();
        assert_eq!(
            w.command,
            vec![
                "/usr/bin/python3.11".to_owned(),
                "examples/worker.py".into()
            ]
        );
        assert_eq!(w.call_timeout, Duration::from_millis(1500));
        assert_eq!(
            w.retry.retries(),
            5,
            "RETRY_ATTEMPTS counts retries, as the seed's"
        );
        assert_eq!(w.breaker.consecutive_failures, Some(9));
        assert!(!s.cache_enabled());
    }

    #[test]
    fn the_seeds_breaker_retry_and_recycling_settings() {
        let s = Settings::load(
            None,
            &env(&[
                ("LITEBRIDGE_WORKERS_COMMAND", "python worker.py"),
                ("RETRY_ATTEMPTS", "0"),
                ("RETRY_BACKOFF", "linear"),
                ("CIRCUIT_BREAKER_ENABLED", "false"),
                ("CIRCUIT_BREAKER_TIMEOUT", "120000"),
                ("CIRCUIT_BREAKER_THRESHOLD", "20"),
                ("PROCESS_IDLE_TIMEOUT", "300000"),
                ("LITEBRIDGE_WORKERS_MAX_RSS_MB", "512"),
            ]),
            &[],
        )
        .unwrap();
        let w = s.worker_config().unwrap().unwrap();
        assert_eq!(
            w.command,
            ["python", "worker.py"],
            "PYTHON_EXECUTABLE not given"
        );
        assert_eq!(w.retry.retries(), 0);
        assert!(!w.breaker.enabled);
        assert_eq!(w.breaker.open_for, Duration::from_secs(120));
        assert_eq!(w.breaker.judged_after(), 20);
        assert_eq!(w.breaker.slow_call_duration, None);
        assert_eq!(w.max_idle, Some(Duration::from_secs(300)));
        assert_eq!(w.max_rss_bytes, Some(512 << 20));
        assert_eq!(w.max_age, None);

        // The default pool: breakers on, open 60 s, no slow calls, 3 retries.
        let s = Settings::load(None, &env(&[("LITEBRIDGE_WORKERS_COMMAND", "x")]), &[]).unwrap();
        let w = s.worker_config().unwrap().unwrap();
        assert!(w.breaker.enabled);
        assert_eq!(w.breaker.open_for, Duration::from_secs(60));
        assert_eq!(w.breaker.slow_call_duration, None);
        assert_eq!(w.retry.retries(), 3);
    }

    #[test]
    fn the_old_retry_attempts_key_is_refused_saying_what_to_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lb.toml");
        std::fs::write(&file, "[workers]\nretry_attempts = 3\n").unwrap();
        let e = Settings::load(Some(&file), &[], &[]).unwrap_err();
        assert!(
            e.message
                .contains("`workers.retry_attempts` is no longer read")
                && e.message.contains("workers.max_retries"),
            "{}",
            e.message
        );
        let e = Settings::load(
            None,
            &env(&[("LITEBRIDGE_WORKERS_RETRY_ATTEMPTS", "3")]),
            &[],
        )
        .unwrap_err();
        assert!(
            e.message
                .starts_with("LITEBRIDGE_WORKERS_RETRY_ATTEMPTS: `workers.retry_attempts`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn values_the_library_refuses_name_where_they_came_from() {
        let s = Settings::load(
            None,
            &env(&[
                ("LITEBRIDGE_BACKEND_KIND", "postgres"),
                ("LITEBRIDGE_POSTGRES_URL", "postgres://o@127.0.0.1/db"),
                ("LITEBRIDGE_POSTGRES_SCHEMA", "Bad"),
                ("LITEBRIDGE_NATS_URL", "http://127.0.0.1:4222"),
            ]),
            &[],
        )
        .unwrap();
        let e = s.pg_config().unwrap_err();
        assert!(
            e.message.starts_with(
                "invalid configuration `postgres.schema` = \"Bad\" (from environment LITEBRIDGE_POSTGRES_SCHEMA): expected"
            ),
            "{}",
            e.message
        );
        let e = s.nats_config().unwrap_err();
        assert!(
            e.message.contains(
                "`nats.url` = \"http://127.0.0.1:4222\" (from environment LITEBRIDGE_NATS_URL)"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn sqlite_framework_path_runs_the_generic_worker_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let s = Settings::load(
            None,
            &env(&[
                ("SQLITE_FRAMEWORK_PATH", root.as_str()),
                ("PYTHON_EXECUTABLE", "/usr/bin/python3.11"),
                (
                    "LITEBRIDGE_WORKERS_ALLOW_PREFIXES",
                    "src.generator, src.tools",
                ),
                ("LITEBRIDGE_WORKERS_PYTHON_PATH", "/opt/sdk"),
            ]),
            &[],
        )
        .unwrap();
        let w = s.worker_config().unwrap().unwrap();
        let root_flag = format!("--root={root}");
        let expected: Vec<String> = [
            "/usr/bin/python3.11",
            "-m",
            "litebridge_worker",
            root_flag.as_str(),
            "--allow",
            "src.generator",
            "src.tools",
        ]
        .map(String::from)
        .into();
        assert_eq!(w.command, expected);
        assert!(
            w.env
                .iter()
                .any(|(k, v)| k == "PYTHONPATH" && v.starts_with("/opt/sdk"))
        );

        // A command given wins; PYTHON_EXECUTABLE replaces a bare python name only.
        for (command, program) in [
            ("python3 w.py", "/usr/bin/python3.11"),
            ("python3.12 w.py", "/usr/bin/python3.11"),
            ("/venv/bin/python w.py", "/venv/bin/python"),
            ("node w.js", "node"),
        ] {
            let s = Settings::load(
                None,
                &env(&[
                    ("SQLITE_FRAMEWORK_PATH", root.as_str()),
                    ("PYTHON_EXECUTABLE", "/usr/bin/python3.11"),
                    ("LITEBRIDGE_WORKERS_COMMAND", command),
                ]),
                &[],
            )
            .unwrap();
            assert_eq!(
                s.worker_config().unwrap().unwrap().command[0],
                program,
                "{command}"
            );
        }

        // A prefix that is no dotted name (one that would read as an option).
        let s = Settings::load(
            None,
            &env(&[
                ("SQLITE_FRAMEWORK_PATH", root.as_str()),
                (
                    "LITEBRIDGE_WORKERS_ALLOW_PREFIXES",
                    "src,--root,/,--allow,os",
                ),
            ]),
            &[],
        )
        .unwrap();
        let e = s.worker_config().unwrap_err();
        assert!(
            e.message
                .contains("\"--root\" is not a dotted path of public Python names"),
            "{}",
            e.message
        );

        let missing = dir.path().join("nope").display().to_string();
        let s = Settings::load(
            None,
            &env(&[("SQLITE_FRAMEWORK_PATH", missing.as_str())]),
            &[],
        )
        .unwrap();
        let e = s.worker_config().unwrap_err();
        assert!(
            e.message.contains("`workers.framework_path`")
                && e.message.contains("environment SQLITE_FRAMEWORK_PATH")
                && e.message.contains("not a directory"),
            "{}",
            e.message
        );
    }
}
