//! Resilience primitives, usable on their own: backoff schedules, a retry
//! policy with a retry budget, and circuit breakers.
//!
//! They follow tower's split: the retry loop decides nothing itself, a policy
//! does; randomness and time are injectable (a [`Random`] source, Tokio's
//! clock), so tests are exact and never sleep.

mod backoff;
mod breaker;
mod budget;
mod retry;

pub use backoff::{Backoff, DefaultRandom, Growth, Random};
pub use breaker::{
    BreakerConfig, BreakerEvent, BreakerRegistry, BreakerState, BreakerStatus, CircuitBreaker,
    Permit, Rejected,
};
pub use budget::RetryBudget;
pub use retry::{DEFAULT_MAX_ATTEMPTS, RetryEvent, RetryPolicy};
