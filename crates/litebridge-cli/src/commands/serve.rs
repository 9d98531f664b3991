//! `litebridge serve` (HTTP) and `litebridge stdio`.

use std::sync::Arc;

use litebridge::Service;

use crate::cli::ServiceArgs;
use crate::settings::Settings;
use crate::{CliResult, Failure};

/// The effective settings: defaults, file, environment, then these flags.
fn settings(args: &ServiceArgs, listen: Option<String>) -> CliResult<Settings> {
    let mut flags = Vec::new();
    if let Some(db) = &args.db {
        flags.push(("db.path", "db", db.display().to_string()));
    }
    if let Some(w) = &args.workers {
        flags.push(("workers.command", "workers", w.clone()));
    }
    if let Some(n) = args.processes {
        flags.push(("workers.processes", "processes", n.to_string()));
    }
    if let Some(l) = listen {
        flags.push(("server.listen", "listen", l));
    }
    if let Some(f) = &args.log_format {
        flags.push(("server.log_format", "log-format", f.clone()));
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    Settings::load(args.config.as_deref(), &env, &flags)
}

async fn open(s: &Settings) -> CliResult<Service> {
    Ok(Service::open(
        s.db_path(),
        s.db_config()?,
        s.worker_config(),
        s.cache_config(),
        s.cache_enabled(),
    )
    .await?)
}

/// Serves HTTP until SIGTERM or SIGINT: stops accepting, lets requests in
/// flight finish, then stops the workers and closes the database (commit,
/// checkpoint). A second signal exits at once.
pub(crate) async fn http(args: &ServiceArgs, listen: Option<String>) -> CliResult {
    let s = settings(args, listen)?;
    if args.print_config {
        print!("{}", s.describe());
        return Ok(());
    }
    crate::logging::init(s.log_level(), s.log_format());
    let listen = s.listen().to_owned();
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        Failure::new(format!(
            "--listen {listen:?} is not an address; expected IP:PORT, e.g. 127.0.0.1:7070"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new(format!("cannot listen on {addr}: {e}")))?;
    let service = Arc::new(open(&s).await?);
    let local = listener
        .local_addr()
        .map_err(|e| Failure::new(format!("cannot read the listening address: {e}")))?;
    println!("listening on {local}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let app = crate::transport::http::router(service.clone(), s.max_concurrent_requests());
    // After the signal, requests in flight get the grace period, then the
    // connections still open are dropped.
    let signalled = Arc::new(tokio::sync::Notify::new());
    let notify = signalled.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        notify.notify_one();
    });
    let grace = s.shutdown_grace();
    tokio::select! {
        r = server => r.map_err(|e| Failure::new(format!("the HTTP server failed: {e}")))?,
        () = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("requests still running after {} ms: closing them", grace.as_millis());
        }
    }
    // A second signal while draining: leave now.
    let drain = service.shutdown();
    tokio::select! {
        () = drain => {}
        () = shutdown_signal() => std::process::exit(130),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, serve until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub(crate) async fn stdio(args: &ServiceArgs) -> CliResult {
    let s = settings(args, None)?;
    if args.print_config {
        // stdout belongs to the protocol: the configuration goes to stderr.
        eprint!("{}", s.describe());
        return Ok(());
    }
    crate::logging::init(s.log_level(), s.log_format());
    let service = open(&s).await?;
    crate::transport::stdio::serve(service, tokio::io::stdin(), tokio::io::stdout())
        .await
        .map_err(|e| Failure::new(format!("stdio transport: {e}")))
}
