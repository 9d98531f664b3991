//! The bridge a service calls: local worker processes, or worker hosts over NATS.

use std::time::Duration;

use serde_json::Value as Json;

use crate::error::Result;
use crate::workers::{CallOptions, MethodInfo, PoolEvent, PoolStatus, WorkerPool};

/// Where `bridge.call` goes: the same calls, options, errors and statistics
/// whichever transport serves them. Cheap to clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Bridge {
    /// Worker processes of this process, over their stdin/stdout.
    Local(WorkerPool),
    /// Worker hosts on other machines, over NATS.
    #[cfg(feature = "nats")]
    Nats(crate::workers::nats::NatsBridge),
}

impl Bridge {
    /// Calls `method` with `params`; see [`WorkerPool::call`].
    ///
    /// # Errors
    /// See [`WorkerPool::call`] and
    /// [`NatsBridge::call`](crate::workers::nats::NatsBridge::call).
    pub async fn call(&self, method: &str, params: Json, options: CallOptions) -> Result<Json> {
        match self {
            Bridge::Local(p) => p.call(method, params, options).await,
            // Boxed: the NATS call's future is larger than the local one's,
            // and every local call would carry its size (measured: 7,128
            // bytes against 5,584).
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => Box::pin(n.call(method, params, options)).await,
        }
    }

    /// A snapshot: workers, breakers, per-method statistics.
    pub fn status(&self) -> PoolStatus {
        match self {
            Bridge::Local(p) => p.status(),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.status(),
        }
    }

    /// The methods the workers announce.
    pub fn methods(&self) -> Vec<MethodInfo> {
        match self {
            Bridge::Local(p) => p.methods(),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.methods(),
        }
    }

    /// Whether `method` may be retried after its outcome became unknown.
    pub fn idempotent(&self, method: &str) -> bool {
        match self {
            Bridge::Local(p) => p.idempotent(method),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.idempotent(method),
        }
    }

    /// Whether the workers accept names they did not announce (generic mode).
    pub fn accepts_any_method(&self) -> bool {
        match self {
            Bridge::Local(p) => p.accepts_any_method(),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.accepts_any_method(),
        }
    }

    /// Resets the circuit breaker of `method`; false if it has none yet.
    pub fn reset_breaker(&self, method: &str) -> bool {
        match self {
            Bridge::Local(p) => p.reset_breaker(method),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.reset_breaker(method),
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<PoolEvent> {
        match self {
            Bridge::Local(p) => p.subscribe(),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.subscribe(),
        }
    }

    /// Caches results through `cache` from now on.
    pub fn use_cache(&self, cache: crate::store::Cache) {
        match self {
            Bridge::Local(p) => p.use_cache(cache),
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.use_cache(cache),
        }
    }

    /// The worker hosts seen (none for local workers).
    #[cfg(feature = "nats")]
    pub fn hosts(&self) -> Vec<crate::workers::nats::HostStatus> {
        match self {
            Bridge::Local(_) => Vec::new(),
            Bridge::Nats(n) => n.hosts(),
        }
    }

    /// Answers that came after their caller stopped waiting, counted and
    /// dropped (always 0 for local workers, whose late answers have no
    /// caller to reach).
    #[cfg(feature = "nats")]
    pub fn late_answers(&self) -> u64 {
        match self {
            Bridge::Local(_) => 0,
            Bridge::Nats(n) => n.late_answers(),
        }
    }

    /// The transport's name: `local` or `nats`.
    pub fn transport(&self) -> &'static str {
        match self {
            Bridge::Local(_) => "local",
            #[cfg(feature = "nats")]
            Bridge::Nats(_) => "nats",
        }
    }

    /// Kills the local workers now (see [`WorkerPool::kill_now`]); over
    /// NATS the hosts' workers are the hosts' own.
    pub fn kill_now(&self) {
        match self {
            Bridge::Local(p) => p.kill_now(),
            #[cfg(feature = "nats")]
            Bridge::Nats(_) => {}
        }
    }

    /// Stops: refuses new calls and lets those in flight finish (up to
    /// `grace` over NATS; the pool's own shutdown grace locally).
    pub async fn shutdown(&self, grace: Duration) {
        match self {
            Bridge::Local(p) => p.shutdown().await,
            #[cfg(feature = "nats")]
            Bridge::Nats(n) => n.shutdown(grace).await,
        }
        let _ = grace;
    }
}
