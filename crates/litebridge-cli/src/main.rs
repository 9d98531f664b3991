//! The `litebridge` binary: a thin shell over the library.

mod bench;
mod cli;
mod commands;
mod dashboard;
mod events;
mod logging;
mod metrics;
mod output;
mod printable;
mod rpc;
mod settings;
mod signals;
mod suggest;
mod transport;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{Cli, Command};

/// This build's version and the commit it was built from (`build.rs`).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("LB_BUILD_COMMIT"),
    ")"
);

// Requests are allocated on runtime threads and freed on the writer thread;
// glibc's arenas serialize that on a lock (a fifth of the CPU of a write-heavy
// run), mimalloc's per-thread free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failed command: one sentence for the user and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<litebridge::Error> for Failure {
    fn from(e: litebridge::Error) -> Failure {
        Failure::new(e.to_string())
    }
}

pub(crate) type CliResult<T = ()> = Result<T, Failure>;

/// A mutex's guard, also after a thread panicked holding it: what the
/// binary keeps behind its mutexes (figures, event subscribers, sessions)
/// stays usable after a panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn main() -> ExitCode {
    // Usage errors exit 1 like every other user mistake: 2 is reserved for
    // `check` finding a damaged database.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    if let Command::Bench {
        cores: Some(n),
        json,
        ..
    } = &cli.command
    {
        // Before the runtime: its threads inherit the set and it sizes itself to it.
        match bench::cores::pin(*n) {
            Ok(cpus) if !json => {
                println!("pinned to CPU{} {cpus:?}", if *n == 1 { "" } else { "s" })
            }
            Ok(_) => {}
            Err(f) => {
                eprintln!("error: {}", printable::printable_text(&f.message));
                return ExitCode::from(f.code);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Query {
                db,
                sql,
                params,
                json,
                create,
                timeout_ms,
            } => commands::query::run(&db, &sql, &params, json, create, timeout_ms).await,
            Command::Check { db, full, json } => commands::check::run(&db, full, json),
            Command::Stdio { common } => commands::serve::stdio(&common).await,
            Command::Mcp { common } => commands::serve::mcp(&common).await,
            Command::WorkerHost { args } => commands::worker_host::run(args).await,
            Command::Serve {
                common,
                listen,
                no_dashboard,
            } => commands::serve::http(&common, listen, no_dashboard).await,
            Command::Backup { db, to, replace } => commands::backup::backup(&db, &to, replace),
            Command::Restore {
                from,
                latest,
                dir,
                db,
            } => match (from, latest) {
                (Some(from), _) => commands::backup::restore(&from, &db),
                (None, _) => commands::backup::restore_latest(&db, dir.as_deref()),
            },
            Command::Keys { action } => commands::keys::run(action).await,
            Command::Bench {
                case,
                seconds,
                json,
                dir,
                cores: _,
                postgres,
                log,
            } => {
                if log {
                    logging::init("info", "json");
                }
                bench::run(&case, seconds, json, dir.as_deref(), postgres.as_deref()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", printable::printable_text(&f.message));
            }
            ExitCode::from(f.code)
        }
    }
}
