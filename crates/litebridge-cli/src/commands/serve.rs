//! `litebridge serve` (HTTP) and `litebridge stdio`.

use std::path::Path;
use std::sync::Arc;

use litebridge::store::CacheConfig;
use litebridge::workers::WorkerConfig;
use litebridge::{DbConfig, Service};

use crate::{CliResult, Failure};

async fn open(db: &Path, workers: Option<&str>, processes: usize) -> CliResult<Service> {
    let workers = workers.map(|cmd| {
        let mut c = WorkerConfig::from_command_line(cmd);
        c.processes = processes;
        c
    });
    Ok(Service::open(db, DbConfig::default(), workers, CacheConfig::default()).await?)
}

/// Serves HTTP until SIGTERM or SIGINT: stops accepting, lets requests in
/// flight finish, then stops the workers and closes the database (commit,
/// checkpoint). A second signal exits at once.
pub(crate) async fn http(
    db: &Path,
    listen: &str,
    workers: Option<&str>,
    processes: usize,
) -> CliResult {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        Failure::new(format!(
            "--listen {listen:?} is not an address; expected IP:PORT, e.g. 127.0.0.1:7070"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new(format!("cannot listen on {addr}: {e}")))?;
    let service = Arc::new(open(db, workers, processes).await?);
    let local = listener
        .local_addr()
        .map_err(|e| Failure::new(format!("cannot read the listening address: {e}")))?;
    println!("listening on {local}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let app = crate::transport::http::router(service.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Failure::new(format!("the HTTP server failed: {e}")))?;
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

pub(crate) async fn stdio(db: &Path, workers: Option<&str>, processes: usize) -> CliResult {
    let service = open(db, workers, processes).await?;
    crate::transport::stdio::serve(service, tokio::io::stdin(), tokio::io::stdout())
        .await
        .map_err(|e| Failure::new(format!("stdio transport: {e}")))
}
