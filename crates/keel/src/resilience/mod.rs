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
//! `backoff`, `retry`, `breaker` and `bulkhead` are the `keel-resilience` crate; `rate_limit`,
//! which needs `http` and `redis`, lives here. Inside the crate, `connect` runs a dependency's
//! first connection in the background (SQL, Redis, the bus) and `reprobe` re-probes a dependency
//! believed down when it is next used.

#[cfg(any(feature = "sql", feature = "redis", feature = "events"))]
pub(crate) mod connect;
pub mod rate_limit;

#[cfg(any(feature = "sql", feature = "redis", feature = "rabbitmq"))]
pub(crate) use keel_resilience::reprobe;
pub use keel_resilience::{Backoff, ConnectConfig, backoff, breaker, bulkhead, retry};
