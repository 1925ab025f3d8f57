//! Resilience primitives. Today: [`backoff`], used to (re)connect dependencies.
//!
//! Retries, circuit breakers, bulkheads and rate limits build on these.

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
pub mod rate_limit;
pub mod retry;

pub use backoff::Backoff;
