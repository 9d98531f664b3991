//! Stores built on the database: workflow state, agent memory and the
//! two-level cache, over litebridge's own tables (see `schema`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> litebridge::Result<()> {
//! use std::time::Duration;
//! use litebridge::store::{Cache, CacheConfig, migrate};
//! use litebridge::{Database, DbConfig};
//! use serde_json::json;
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let db = Database::open(dir.path().join("app.db"), DbConfig::default()).await?;
//! migrate(&db).await?;
//! // L1 in memory, L2 in the database: entries survive a restart.
//! let cache = Cache::open(Some(db.clone()), CacheConfig::default()).await?;
//! let ttl = Some(Duration::from_secs(600));
//! let weather = cache
//!     .get_or_load("weather:paris", ttl, || async { Ok(json!({"celsius": 18})) })
//!     .await?; // loaded once; concurrent callers of one key wait for it
//! assert_eq!(cache.get("weather:paris").await?, Some(weather));
//! assert_eq!(cache.stats().misses, 1);
//! # Ok(()) }
//! ```

mod cache;
#[cfg(feature = "postgres")]
mod cache_peers;
mod memory;
mod schema;
mod state;

pub use cache::{
    Cache, CacheConfig, CacheStats, CacheSweeper, Clock, Swept, SystemClock, footprint,
};
pub use memory::{MAX_NAME, MemoryEntry, MemoryStore};
pub use schema::{SCHEMA_VERSION, migrate};
pub use state::{MAX_RUN_ID, StateRecord, StateStore, StateUpdate};
