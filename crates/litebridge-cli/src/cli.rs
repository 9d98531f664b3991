//! The command line: `serve`, `stdio`, `mcp`, `worker-host`, `query`, `check`, `backup`,
//! `restore`, `keys` and `bench`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// litebridge: a resilient SQLite service and process bridge.
#[derive(Debug, Parser)]
#[command(name = "litebridge", version = crate::VERSION, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve JSON-RPC over HTTP (POST /rpc), with /health, /ready and /metrics.
    Serve {
        #[command(flatten)]
        common: ServiceArgs,
        /// The address to listen on; port 0 picks a free one (printed first on stdout).
        #[arg(long)]
        listen: Option<String>,
        /// No dashboard at `/` (`server.dashboard = false`).
        #[arg(long)]
        no_dashboard: bool,
    },
    /// Serve the JSON-RPC method table on stdin/stdout, one JSON value per line.
    Stdio {
        #[command(flatten)]
        common: ServiceArgs,
    },
    /// Serve MCP (Model Context Protocol) on stdin/stdout: litebridge as tools for LLM agents.
    Mcp {
        #[command(flatten)]
        common: ServiceArgs,
    },
    /// Run worker processes here and serve them on NATS to front ends with
    /// `workers.transport = "nats"` (prints `serving METHODS on NATS as host ID`).
    WorkerHost {
        #[command(flatten)]
        args: WorkerHostArgs,
    },
    /// Run one SQL statement and print its rows (a table, or JSON with --json).
    ///
    /// Each PARAM binds to ?1, ?2, ...; it is read as JSON when it parses
    /// (42, 1.5, null, "42" as text, {"$blob": "..."}), as plain text otherwise.
    Query {
        /// The database file.
        #[arg(long)]
        db: PathBuf,
        /// One SQL statement.
        sql: String,
        /// Positional parameters.
        params: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Create the database file if it does not exist.
        #[arg(long)]
        create: bool,
        /// Stop the statement after this many milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Check a database file: quick_check, or integrity_check and foreign_key_check
    /// with --full. Exit code 0 when sound, 2 when damaged.
    Check {
        /// The database file.
        #[arg(long)]
        db: PathBuf,
        /// Run the full integrity and foreign-key checks.
        #[arg(long)]
        full: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a database online (writers keep going), verified before it is put in place.
    Backup {
        /// The database file.
        #[arg(long)]
        db: PathBuf,
        /// The backup file to write (a new file, unless --replace).
        #[arg(long)]
        to: PathBuf,
        /// Overwrite an earlier backup at --to (only a SQLite database that
        /// no process has open is replaced; any other file is refused).
        #[arg(long)]
        replace: bool,
    },
    /// Replace a database with a verified backup; the replaced file is kept aside.
    Restore {
        /// The backup file.
        #[arg(long, required_unless_present = "latest", conflicts_with = "latest")]
        from: Option<PathBuf>,
        /// Use the newest backup in the backup directory that passes verification.
        #[arg(long)]
        latest: bool,
        /// The backup directory for --latest (default: <db>.backups).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The database file to replace.
        #[arg(long)]
        db: PathBuf,
    },
    /// Manage API keys (stored in the database as hashes; a running server
    /// notices changes within `security.key_refresh_ms`).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Measure litebridge against baselines run on this machine in the same run.
    Bench {
        /// A case name, or "all".
        #[arg(long, default_value = "all")]
        case: String,
        /// Seconds each case and each baseline runs.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// One JSON object per line per case.
        #[arg(long)]
        json: bool,
        /// Directory for the benchmark's scratch databases (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Run on this many of the CPUs the process may use (Linux; as `taskset`
        /// would: every thread and worker process of the run is pinned).
        #[arg(long)]
        cores: Option<usize>,
        /// A PostgreSQL URL for the `pg-*` cases (its user creates a role and
        /// a schema for the run, dropped at the end); without it they are skipped.
        #[arg(long)]
        postgres: Option<String>,
        /// Log as `serve` does with its defaults when stderr is not a
        /// terminal (info, JSON on stderr): each request then pays for its
        /// span, as it does under `serve`.
        #[arg(long)]
        log: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysAction {
    /// Create a key; its secret is printed once, as the last word of the last line.
    Create {
        /// The database file (created if missing).
        #[arg(long, required_unless_present = "config")]
        db: Option<PathBuf>,
        /// Or a configuration file: its database (SQLite or PostgreSQL).
        #[arg(long, conflicts_with = "db")]
        config: Option<PathBuf>,
        /// What the key may do: metrics, read, write, bridge, admin, or a comma-separated list.
        #[arg(long)]
        scope: String,
        /// Its tier (quotas): free, pro or enterprise.
        #[arg(long, default_value = "free")]
        tier: String,
        /// A unique name (made up when absent).
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys: names, scopes, tiers, creation, revocation and last use; never secrets.
    List {
        /// The database file.
        #[arg(long, required_unless_present = "config")]
        db: Option<PathBuf>,
        /// Or a configuration file: its database (SQLite or PostgreSQL).
        #[arg(long, conflicts_with = "db")]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by name; running servers stop accepting it without a restart.
    Revoke {
        /// The database file.
        #[arg(long, required_unless_present = "config")]
        db: Option<PathBuf>,
        /// Or a configuration file: its database (SQLite or PostgreSQL).
        #[arg(long, conflicts_with = "db")]
        config: Option<PathBuf>,
        /// The key's name.
        #[arg(long)]
        name: String,
    },
}

/// What `serve` and `stdio` share. Flags override the environment, which
/// overrides the configuration file, which overrides the defaults.
#[derive(Debug, clap::Args)]
pub(crate) struct ServiceArgs {
    /// A TOML configuration file: README "Configuration"; `--print-config` lists every key.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The database file (created if missing). Default: litebridge.db.
    #[arg(long)]
    pub(crate) db: Option<PathBuf>,
    /// The worker command line, e.g. "python3 examples/worker.py"; no bridge if absent.
    #[arg(long)]
    pub(crate) workers: Option<String>,
    /// Worker processes. Default: 2.
    #[arg(long)]
    pub(crate) processes: Option<usize>,
    /// Log format on stderr: auto (text on a terminal, JSON otherwise), json or text.
    #[arg(long)]
    pub(crate) log_format: Option<String>,
    /// If the database fails quick_check, move it aside and restore the newest
    /// verified backup before starting.
    #[arg(long)]
    pub(crate) recover: bool,
    /// Print the effective configuration, with where each value came from, and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

/// The flags of `worker-host`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerHostArgs {
    /// NATS servers, comma-separated (`nats.url`).
    #[arg(long, value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// The worker command line, e.g. "python3 examples/worker.py" (`workers.command`).
    #[arg(long, value_name = "CMD")]
    pub(crate) workers: Option<String>,
    /// Worker processes (`workers.processes`). Default: 2.
    #[arg(long, value_name = "N")]
    pub(crate) processes: Option<usize>,
    /// This host's id in subjects and errors. Default: the machine's name and the pid.
    #[arg(long, value_name = "ID")]
    pub(crate) name: Option<String>,
    /// A TOML configuration file (sections workers, nats, server).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Log format on stderr: auto, json or text.
    #[arg(long)]
    pub(crate) log_format: Option<String>,
    /// Print the effective configuration, with where each value came from, and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}
