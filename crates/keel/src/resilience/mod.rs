//! Resilience primitives: how a service waits, retries and limits itself when a dependency or a
//! client misbehaves.
//!
//! | module | what it is for |
//! |---|---|
//! | [`backoff`] | [`Backoff`]: exponential backoff with jitter, the one schedule behind every retry (connecting to dependencies, [`retry`], re-probes, worker restarts, event redeliveries, the outbox) |
//! | [`retry`] | retries of a classified outcome, with a retry budget |
//! | [`breaker`] | circuit breakers per dependency, with a registry and metrics |
//! | [`bulkhead`] | a concurrency limit with a bounded, timed queue |
//! | [`rate_limit`] | named rate-limit policies: in-process (GCRA) or shared in Redis, as a tower layer |
//!
//! Inside the crate, `connect` runs a dependency's first connection in the background (SQL,
//! Redis, the bus) and `reprobe` re-probes a dependency believed down when it is next used.

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
#[cfg(any(feature = "sql", feature = "redis", feature = "events"))]
pub(crate) mod connect;
pub mod rate_limit;
pub(crate) mod reprobe;
pub mod retry;

pub use backoff::{Backoff, ConnectConfig};
