//! The service: the database, the worker pool and the cache wired together.
//! Every transport (HTTP, stdio, MCP) calls this, through one method table.

use std::path::Path;
use std::time::SystemTime;

use crate::config::DbConfig;
use crate::db::Database;
use crate::error::Result;
use crate::store::{Cache, CacheConfig};
use crate::workers::{WorkerConfig, WorkerPool};

/// Everything a transport serves.
#[derive(Debug, Clone)]
pub struct Service {
    /// The database.
    pub db: Database,
    /// The worker pool, when workers are configured.
    pub workers: Option<WorkerPool>,
    /// The two-level cache (also the bridge's result cache).
    pub cache: Cache,
    /// When the service started.
    pub started: SystemTime,
}

impl Service {
    /// Opens the database, starts the workers (if any) and the cache. With
    /// `cache_bridge`, worker results are cached (calls with a cache key and
    /// methods the workers declare cacheable).
    ///
    /// # Errors
    /// What [`Database::open`], [`WorkerPool::start`] or [`Cache::open`] return;
    /// the parts already started are stopped.
    pub async fn open(
        db_path: impl AsRef<Path>,
        db_config: DbConfig,
        workers: Option<WorkerConfig>,
        cache: CacheConfig,
        cache_bridge: bool,
    ) -> Result<Service> {
        let db = Database::open(db_path, db_config).await?;
        let cache = match Cache::open(Some(db.clone()), cache).await {
            Ok(c) => c,
            Err(e) => {
                db.close().await;
                return Err(e);
            }
        };
        let workers = match workers {
            Some(config) => match WorkerPool::start(config).await {
                Ok(pool) => {
                    if cache_bridge {
                        pool.use_cache(cache.clone());
                    }
                    Some(pool)
                }
                Err(e) => {
                    db.close().await;
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(Service {
            db,
            workers,
            cache,
            started: SystemTime::now(),
        })
    }

    /// Stops the workers, then commits what is queued, checkpoints and closes
    /// the database.
    pub async fn shutdown(&self) {
        if let Some(w) = &self.workers {
            w.shutdown().await;
        }
        self.db.close().await;
    }
}
