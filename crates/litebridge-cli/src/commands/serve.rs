//! `litebridge stdio`: the service on stdin/stdout.

use std::path::Path;

use litebridge::store::CacheConfig;
use litebridge::workers::WorkerConfig;
use litebridge::{DbConfig, Service};

use crate::{CliResult, Failure};

pub(crate) async fn stdio(db: &Path, workers: Option<&str>, processes: usize) -> CliResult {
    let workers = workers.map(|cmd| {
        let mut c = WorkerConfig::from_command_line(cmd);
        c.processes = processes;
        c
    });
    let service = Service::open(db, DbConfig::default(), workers, CacheConfig::default()).await?;
    crate::transport::stdio::serve(service, tokio::io::stdin(), tokio::io::stdout())
        .await
        .map_err(|e| Failure::new(format!("stdio transport: {e}")))
}
