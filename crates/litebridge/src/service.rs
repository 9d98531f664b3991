//! The service: the database, the worker pool and the cache wired together.
//! Every transport (HTTP, stdio, MCP) calls this, through one method table.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::backend::Backend;
use crate::config::DbConfig;
use crate::db::Database;
use crate::error::Result;
use crate::store::{Cache, CacheConfig, MemoryStore, StateStore};

/// How often expired memory and cache entries are deleted.
pub(crate) const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// The next cache sweep after one that stopped at its bound.
const SWEEP_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);
/// The table whose lock a sweep round runs under on PostgreSQL (front ends
/// take turns; only litebridge's own role can take it).
const SWEEP_LOCK: &str = "memory";
use crate::workers::{Bridge, WorkerConfig, WorkerPool};

/// How long calls in flight over NATS get to finish at shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What [`Service::open`] opens and starts: the database's settings, the
/// workers (none by default), the cache, and whether the cache keeps worker
/// results.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// The database.
    pub db: DbConfig,
    /// Worker processes to start; `None` for no bridge. With `nats` set,
    /// only its call settings (deadline, retries, breakers) are used: the
    /// workers run on worker hosts.
    pub workers: Option<WorkerConfig>,
    /// Reach the workers through worker hosts on NATS instead of starting
    /// them here.
    #[cfg(feature = "nats")]
    pub nats: Option<crate::workers::nats::NatsConfig>,
    /// The two-level cache.
    pub cache: CacheConfig,
    /// Cache worker results: calls given a cache key, and methods the workers
    /// declare cacheable. Default: false.
    pub cache_worker_results: bool,
}

/// Everything a transport serves: the database, the stores on it (workflow
/// state, agent memory, the two-level cache) and the workers. Cheap to
/// clone; dropping the last handle closes the database.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> litebridge::Result<()> {
/// use litebridge::{Service, ServiceConfig, params};
/// use litebridge::store::StateUpdate;
/// use serde_json::json;
///
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.db");
/// let service = Service::open(&path, ServiceConfig::default()).await?;
///
/// // SQL: one writer with group commit, readers on the caller's thread.
/// service.db.execute("CREATE TABLE notes(body TEXT)", ()).await?;
/// service.db.execute("INSERT INTO notes VALUES (?1)", params!["hello"]).await?;
/// let rows = service.db.query("SELECT count(*) FROM notes", ()).await?;
/// assert_eq!(rows.rows[0][0], litebridge::Value::Integer(1));
///
/// // A workflow run's state, and an agent's memory with a lifetime.
/// service.state.save(StateUpdate {
///     run_id: "run-1".into(),
///     state: json!({"step": 2}),
///     status: Some("running".into()),
///     ..StateUpdate::default()
/// }).await?;
/// let ttl = Some(std::time::Duration::from_secs(3600));
/// service.memory.store("agent-7", "tone", &json!("brief"), ttl).await?;
/// assert_eq!(service.memory.get("agent-7", "tone").await?, Some(json!("brief")));
///
/// service.shutdown().await; // commit, checkpoint, close
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Service {
    /// The database: SQLite or PostgreSQL.
    pub db: Backend,
    /// The workers, when configured: a local pool or worker hosts on NATS.
    pub workers: Option<Bridge>,
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
    /// Opens the database at `db_path`, starts the workers (if any) and the
    /// cache, as `config` says.
    ///
    /// # Errors
    /// What [`Database::open`] or [`WorkerPool::start`] return (a cache whose
    /// table cannot be used goes on in memory, with a warning);
    /// the parts already started are stopped.
    pub async fn open(db_path: impl AsRef<Path>, config: ServiceConfig) -> Result<Service> {
        let db = Database::open(db_path, config.db.clone()).await?;
        if let Err(e) = crate::store::migrate(&db).await {
            db.close().await;
            return Err(e);
        }
        Service::with_backend(Backend::Sqlite(db), config).await
    }

    /// Serves `db`, open and migrated already (a
    /// [`PgDatabase`](crate::pg::PgDatabase) migrates its own schema at
    /// connect): starts the workers (if any) and the cache as `config` says
    /// (its `db` settings are not read).
    ///
    /// # Errors
    /// What [`WorkerPool::start`] returns; the database is closed then.
    pub async fn with_backend(db: Backend, config: ServiceConfig) -> Result<Service> {
        let ServiceConfig {
            db: _,
            workers,
            cache,
            cache_worker_results,
            #[cfg(feature = "nats")]
            nats,
        } = config;
        let clock: Arc<dyn crate::store::Clock> = Arc::new(crate::store::SystemClock);
        let state = StateStore::new(db.clone(), clock.clone());
        let memory = MemoryStore::new(db.clone(), clock.clone());
        let cache = Cache::with_backend(db.clone(), cache, clock.clone());
        cache.count_l2().await;
        let started = match workers {
            None => None,
            Some(config) => {
                #[cfg(feature = "nats")]
                let bridge = match nats {
                    Some(nats) => {
                        Box::pin(crate::workers::nats::NatsBridge::connect(nats, &config))
                            .await
                            .map(Bridge::Nats)
                    }
                    None => WorkerPool::start(config).await.map(Bridge::Local),
                };
                #[cfg(not(feature = "nats"))]
                let bridge = WorkerPool::start(config).await.map(Bridge::Local);
                Some(bridge)
            }
        };
        let workers = match started {
            Some(started) => match started {
                Ok(pool) => {
                    if cache_worker_results {
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
        // Expired memory and cache entries are never returned; this reclaims
        // their rows. The task holds the database weakly: dropping the
        // service's last handle closes it, and the task ends. Front ends
        // sharing a PostgreSQL database take turns: a round runs under a
        // lock of litebridge's memory table, and one that finds it taken is
        // skipped.
        let weak = db.downgrade();
        let cache_sweeper = cache.sweeper();
        tokio::spawn(async move {
            let mut wait = SWEEP_INTERVAL;
            loop {
                tokio::time::sleep(wait).await;
                let Some(db) = weak.upgrade() else {
                    return; // every handle was dropped
                };
                if !db.health().healthy {
                    continue; // down, closed or found damaged: leave it alone
                }
                let round = async {
                    if let Err(e) = MemoryStore::new(db.clone(), clock.clone()).sweep().await {
                        tracing::warn!("sweeping expired memory entries failed: {e}");
                    }
                    let claims_more = match db.forget_claims().await {
                        Ok(forgot) => forgot.more,
                        Err(e) => {
                            tracing::warn!("sweeping old idempotency records failed: {e}");
                            false
                        }
                    };
                    // Bounded per sweep; while it finds more, it comes back soon.
                    match cache_sweeper.sweep(db.clone()).await {
                        Ok(swept) if swept.more => SWEEP_AGAIN,
                        _ if claims_more => SWEEP_AGAIN,
                        _ => SWEEP_INTERVAL,
                    }
                };
                wait = match Box::pin(db.exclusively(SWEEP_LOCK, round)).await {
                    Ok(Some(next)) => next,
                    Ok(None) => SWEEP_INTERVAL, // another front end is sweeping
                    Err(e) => {
                        tracing::warn!("sweeping expired entries: {e}");
                        SWEEP_INTERVAL
                    }
                };
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
            w.shutdown(SHUTDOWN_GRACE).await;
        }
        self.db.close().await;
    }
}
