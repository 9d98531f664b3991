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

/// One page of a listing (`MemoryStore::page`, `StateStore::page`): its
/// items, and the cursor of the next page (`None`: none follows).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// The last item's key when more may follow: the page was full, or
    /// ended early at [`PAGE_BYTES`] (or the result limit, where lower),
    /// or before a value too large to read.
    pub next: Option<String>,
}

/// The most memory a page's values take read into trees (by
/// [`footprint`]) before the page ends early, its `next` set: 256 MiB. A
/// stored value's tree may take a hundred times its text (small objects),
/// so a page of a few large values took gigabytes for a `read` key
/// (review 159). A page always holds at least one item. Where the result
/// limit (`max_result_bytes`) is lower, it is the bound.
pub const PAGE_BYTES: u64 = 256 << 20;

/// The most bytes of stored text a page of `db` reads, its first item
/// aside: half the result limit (`max_result_bytes`, 64 MiB by default),
/// which a page of a few large values passed, failing every reader (review
/// 207), and the rest for keys. A value stored may be larger than the
/// request that stored it (`1e15` is kept as `1000000000000000.0`): its
/// own page holds it alone.
fn page_text_bytes(db: &crate::Backend) -> i64 {
    i64::try_from(db.max_result_bytes() / 2).unwrap_or(i64::MAX)
}

/// A stored value's text past which its tree may take more than the
/// result limit, as a multiple of the limit: a tree takes at most about
/// 130 times its text (`{"":0}`, six bytes, is an object's first node of
/// 648; nested, `{"":` is one for five bytes: review 251), so a text under
/// a 256th of the limit is never looked at twice.
const TREE_PER_TEXT: usize = 256;

/// Refuses a value about to be stored (`text`, named by `what`) whose tree
/// would take more than `db.max_result_bytes` read back, as the request
/// parser estimates it: a value is read as a query's result is, within
/// that limit ([`read_tree`]), so any `read` key could otherwise have one
/// stored value of a gigabyte's tree read over and over (review 248).
fn storable(text: &str, db: &crate::Backend, what: &str) -> crate::Result<()> {
    let limit = db.max_result_bytes();
    if text.len().saturating_mul(TREE_PER_TEXT) <= limit {
        return Ok(());
    }
    match crate::json::fits_within(text.as_bytes(), limit) {
        Err(crate::json::Unreadable::TooLarge { .. }) => Err(crate::Error::TooLarge {
            what: format!(
                "{what}, read back into a tree (db.max_result_bytes bounds a stored value as it does a result)"
            ),
            limit: limit as u64,
        }),
        _ => Ok(()),
    }
}

/// A stored value's `text` read into a tree within `db.max_result_bytes`
/// (see [`storable`]); `None` for text that is not a value (never written
/// by litebridge). Past the limit (it was lowered since the value was
/// stored), `too_large` naming `what` and the setting that would read it.
fn read_tree(
    text: &str,
    db: &crate::Backend,
    what: impl FnOnce() -> String,
) -> crate::Result<Option<serde_json::Value>> {
    let limit = db.max_result_bytes();
    if text.len().saturating_mul(TREE_PER_TEXT) <= limit {
        return Ok(serde_json::from_str(text).ok());
    }
    match crate::json::parse_alone(text.as_bytes(), limit) {
        Ok(tree) => Ok(Some(tree)),
        Err(crate::json::Unreadable::TooLarge { .. }) => Err(crate::Error::TooLarge {
            what: format!(
                "{}, read into a tree (stored by an earlier version, or before db.max_result_bytes was lowered: raise it to read it, or delete it)",
                what()
            ),
            limit: limit as u64,
        }),
        Err(_) => Ok(None),
    }
}

/// The rows of a page read within [`page_text_bytes`], each ending with the
/// count of rows there were before the bound: those rows without it, and
/// whether any was left out.
fn text_bounded(mut rows: Vec<Vec<crate::Value>>) -> (Vec<Vec<crate::Value>>, bool) {
    let chosen = match rows.first().and_then(|r| r.last()) {
        Some(crate::Value::Integer(n)) => usize::try_from(*n).unwrap_or(usize::MAX),
        _ => 0,
    };
    for row in &mut rows {
        row.pop();
    }
    let left = rows.len() < chosen;
    (rows, left)
}

/// The most memory a page of `db`'s values takes read into trees:
/// [`PAGE_BYTES`], or the result limit where it is lower (review 250: a
/// page under a limit of 1 MiB built 55 MB of trees).
fn page_tree_bytes(db: &crate::Backend) -> u64 {
    PAGE_BYTES.min(db.max_result_bytes() as u64)
}

/// Takes `items` while their values' trees (`weight`) stay within
/// [`page_tree_bytes`], at least one; whether it stopped early. The item
/// that passes the limit is made and dropped; those after it are never
/// made (so a page peaks at the limit and one value more, with its rows'
/// text read first).
fn within_page_bytes<T>(
    db: &crate::Backend,
    items: impl Iterator<Item = crate::Result<T>>,
    weight: impl Fn(&T) -> u64,
) -> crate::Result<(Vec<T>, bool)> {
    let most = page_tree_bytes(db);
    let mut taken = Vec::new();
    let mut total = 0u64;
    for item in items {
        let item = match item {
            Ok(item) => item,
            // A value past the limit (`read_tree`) ends the page before it,
            // so the items before it are listed; first on its page, it is
            // the answer, saying how to list past it.
            Err(_) if !taken.is_empty() => return Ok((taken, true)),
            Err(crate::Error::TooLarge { mut what, limit }) => {
                // Inside `read_tree`'s parentheses: the message goes on
                // "is over the limit of ...".
                let hint = "a listing goes on past it with `after` set to its key";
                what = match what.strip_suffix(')') {
                    Some(head) => format!("{head}; {hint})"),
                    None => format!("{what} ({hint})"),
                };
                return Err(crate::Error::TooLarge { what, limit });
            }
            Err(e) => return Err(e),
        };
        let w = weight(&item);
        if !taken.is_empty() && total.saturating_add(w) > most {
            return Ok((taken, true));
        }
        total = total.saturating_add(w);
        taken.push(item);
    }
    Ok((taken, false))
}
