//! The service: the database, the worker pool and the cache wired together.
//! Every transport (HTTP, stdio, MCP) calls this, through one method table.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::DbConfig;
use crate::db::Database;
use crate::error::Result;
use crate::store::{Cache, CacheConfig, MemoryStore, StateStore};

/// How often expired memory entries are deleted.
pub(crate) const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
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
    /// Workflow state.
    pub state: StateStore,
    /// Agent memory.
    pub memory: MemoryStore,
    /// When the service started.
    pub started: SystemTime,
    /// Where `admin.backup` writes, recorded and pruned (set by the caller).
    pub backups: Option<crate::backups::BackupPolicy>,
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
        if let Err(e) = crate::store::migrate(&db).await {
            db.close().await;
            return Err(e);
        }
        let clock: Arc<dyn crate::store::Clock> = Arc::new(crate::store::SystemClock);
        let state = StateStore::new(db.clone(), clock.clone());
        let memory = MemoryStore::new(db.clone(), clock.clone());
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
        // Expired memory entries are never returned; this reclaims their rows.
        // The task holds the database weakly: dropping the service's last
        // handle closes it, and the task ends.
        let weak = db.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else {
                    return; // every handle was dropped
                };
                if !db.health().healthy {
                    return; // closed, or found damaged: leave it alone
                }
                let sweeper = MemoryStore::new(db, clock.clone());
                if let Err(e) = sweeper.sweep().await {
                    tracing::warn!("sweeping expired memory entries failed: {e}");
                }
            }
        });
        Ok(Service {
            db,
            workers,
            cache,
            state,
            memory,
            started: SystemTime::now(),
            backups: None,
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
