//! The worker bridge: long-lived worker processes called over JSON-RPC 2.0 on
//! their stdin/stdout.
//!
//! # Design
//!
//! **Many calls per pipe.** A round trip to a process costs a thread wake-up
//! on each side (~70 us here); one call at a time per worker would cap a pool
//! near 14k calls/s. Each worker takes up to `max_in_flight` calls at once,
//! matched to answers by id, and a call goes to the least-loaded worker.
//! Callers beyond every worker's limit wait in a bounded queue (then
//! `overloaded`), inside their deadline.
//!
//! **Crashes.** The reader task of a worker sees its stdout end, collects the
//! exit status, and fails every call in flight with `worker_crashed` (pid,
//! exit code or signal, its last stderr lines): the outcome of those calls is
//! unknown, so only methods the worker declared idempotent are retried, on
//! another worker, by the pool's retry policy. The supervisor starts a
//! replacement with backoff; more than `max_restarts_per_minute` restarts
//! mark the pool unhealthy instead of spinning.
//!
//! **Deadlines and cancellation.** A call's deadline covers its time queued.
//! When it passes, or the caller drops the future, the worker gets
//! `$/cancelRequest`; a worker still busy with the call after `cancel_grace`,
//! once the call has also run as long as `call_timeout` allows, is replaced at the next health check (recycled: a new worker takes the
//! slot, the old one finishes its other callers' calls, then is stopped), so
//! a stuck handler cannot hold a slot forever, and one caller's short
//! deadline never fails another's call.
//!
//! **Launching.** The pool and `process` see a worker as three byte streams,
//! a way to signal it and a future of its exit (`launch`): real processes in
//! production, fakes that hang, crash, print garbage or start slowly in the
//! tests (`fake`), which run the pool's behaviours under paused time.
//!
//! **Process groups.** Each worker leads its own process group, so shutdown
//! (drain, close stdin, SIGTERM, SIGKILL) reaches what it started. Workers
//! exit by themselves when stdin closes, so none outlives litebridge.
//!
//! **Recycling and health.** Every `health_interval` each worker gets
//! `$/ping` (no answer in `ping_timeout`: killed and replaced) and is checked
//! against the recycling limits (calls served, age, idle time, resident
//! memory). A recycled worker's replacement is started and swapped in first;
//! the old one then finishes the calls it has, sees stdin close and exits, so
//! no call is lost.
//!
//! **Breakers.** One circuit breaker per method, around the retries: each call
//! reports one outcome. Crashes, exceptions other than a deliberate
//! `WorkerError`, and timeouts of calls that had the default deadline count
//! as failures; a deliberate `WorkerError`, a caller's shorter deadline, a
//! wait in the queue, bad params and a full queue do not.
//!
//! **Names.** Only methods a worker announced (or, in generic mode, names
//! under the prefixes it announced) reach a worker; the protocol's own `$/`
//! names never do, and per-method state stays bounded (`names`).
//!
//! **Other machines.** With the `nats` feature, [`nats::WorkerHost`] serves
//! a pool on NATS and [`nats::NatsBridge`] calls it from a front end; a
//! service holds either transport as a [`Bridge`].

mod bridge;
mod config;
#[cfg(test)]
mod fake;
mod launch;
mod ledger;
mod names;
#[cfg(feature = "nats")]
pub mod nats;
mod pool;
mod process;
mod protocol;
mod signal;

pub use bridge::Bridge;
pub use config::WorkerConfig;
pub use pool::{
    Abandoned, CallOptions, MethodStats, PoolEvent, PoolStatus, WorkerPool, WorkerStatus,
};
pub use protocol::{MethodInfo, ParamInfo};
