//! `litebridge worker-host`: worker processes served on NATS.

use litebridge::workers::WorkerPool;
use litebridge::workers::nats::WorkerHost;

use crate::cli::WorkerHostArgs;
use crate::settings::Settings;
use crate::{CliResult, Failure};

/// Starts the pool, serves it on NATS until SIGTERM or SIGINT, then stops
/// taking calls, finishes those in flight and stops the workers.
pub(crate) async fn run(args: WorkerHostArgs) -> CliResult {
    let mut flags = Vec::new();
    if let Some(u) = args.nats {
        flags.push(("nats.url", "nats", u));
    }
    if let Some(w) = args.workers {
        flags.push(("workers.command", "workers", w));
    }
    if let Some(n) = args.processes {
        flags.push(("workers.processes", "processes", n.to_string()));
    }
    if let Some(f) = args.log_format {
        flags.push(("server.log_format", "log-format", f));
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let s = Settings::load(args.config.as_deref(), &env, &flags)?;
    if args.print_config {
        print!("{}", s.describe());
        return Ok(());
    }
    crate::logging::init(s.log_level(), s.log_format());
    let mut nats = s.nats_config()?;
    nats.host_id = args.name;
    nats.validate().map_err(|e| match e {
        // The one value of a host's that is no setting: its flag is named.
        litebridge::Error::Config {
            key,
            value,
            expected,
        } if key == "nats.host_id" => {
            Failure::new(format!("invalid --name {value}: expected {expected}"))
        }
        e => s.refused(e),
    })?;
    let Some(workers) = s.local_workers()? else {
        return Err(Failure::new(
            "a worker host needs its workers: --workers \"python3 worker.py\" (workers.command) or workers.framework_path",
        ));
    };
    // A signal while the workers start stops them (their process groups
    // with them) and leaves at once, as `serve` does.
    // Listening first: the start launches every worker before it first
    // waits, and a signal then took the default action, leaving them
    // orphaned (review 157).
    crate::signals::listen();
    let started = tokio::select! {
        biased;
        started = WorkerPool::start(workers) => Ok(started),
        number = crate::signals::first() => Err(number),
    };
    let started = match started {
        Ok(started) => started,
        Err(number) => {
            eprintln!("litebridge: stopped by a signal while starting, before serving anything");
            std::process::exit(i32::from(crate::signals::stopped_status(number)));
        }
    };
    let pool = started?;
    // Connecting may take a few connect timeouts: a signal meanwhile
    // stops the workers and leaves, rather than announcing the host to
    // drain it at once (review 156).
    let host = tokio::select! {
        biased;
        host = WorkerHost::start(pool.clone(), nats) => host,
        number = crate::signals::first() => {
            pool.kill_now();
            eprintln!("litebridge: stopped by a signal while starting, before serving anything");
            std::process::exit(i32::from(crate::signals::stopped_status(number)));
        }
    };
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            pool.shutdown().await;
            return Err(e.into());
        }
    };
    let methods: Vec<String> = pool.methods().into_iter().map(|m| m.name).collect();
    println!(
        "serving {} on NATS as host {}",
        if methods.is_empty() {
            "any method under the workers' prefixes".to_owned()
        } else {
            methods.join(", ")
        },
        host.id()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    crate::signals::first().await;
    tracing::info!("shutting down: finishing the calls in flight");
    // A second signal leaves at once, with no worker left behind, as
    // `serve`'s does (review 156: the drain could not be cut short).
    tokio::select! {
        () = host.shutdown() => {}
        number = crate::signals::nth(2) => {
            pool.kill_now();
            std::process::exit(crate::signals::left_status(number));
        }
    }
    crate::signals::stopped()
}
