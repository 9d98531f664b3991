//! Stores built on the database: workflow state, agent memory and the
//! two-level cache, over litebridge's own tables (see `schema`).

mod cache;
mod memory;
mod schema;
mod state;

pub use cache::{Cache, CacheConfig, CacheStats, Clock, SystemClock};
pub use memory::{MAX_NAME, MemoryEntry, MemoryStore};
pub use schema::{SCHEMA_VERSION, migrate};
pub use state::{MAX_RUN_ID, StateRecord, StateStore, StateUpdate};
