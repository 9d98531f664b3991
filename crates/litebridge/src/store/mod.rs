//! Stores built on the database: for now the two-level cache (state and
//! memory stores come with issue 5).

mod cache;

pub use cache::{Cache, CacheConfig, CacheStats, Clock, SystemClock};
