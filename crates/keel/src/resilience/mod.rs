//! Resilience primitives. Today: [`backoff`], used to (re)connect dependencies.
//!
//! Retries, circuit breakers, bulkheads and rate limits build on these.

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
#[cfg(any(feature = "sql", feature = "redis", feature = "events"))]
pub(crate) mod connect;
pub mod rate_limit;
pub(crate) mod reprobe;
pub mod retry;

pub use backoff::Backoff;
