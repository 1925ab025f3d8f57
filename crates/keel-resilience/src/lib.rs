//! Resilience primitives: how a service waits, retries and limits itself when a dependency
//! misbehaves.
//!
//! This is `keel-resilience`, re-exported by `keel` as `keel::resilience` (beside its rate
//! limits, which are an HTTP layer). It depends on `keel-config` alone among Keel's crates.
//!
//! | module | what it is for |
//! |---|---|
//! | [`backoff`] | [`Backoff`]: exponential backoff with jitter, the one schedule behind every retry (connecting to dependencies, [`retry`], re-probes, worker restarts, event redeliveries, the outbox) |
//! | [`retry`] | retries of a classified outcome, with a retry budget |
//! | [`breaker`] | circuit breakers per dependency, with a registry and metrics |
//! | [`bulkhead`] | a concurrency limit with a bounded, timed queue |
//!
//! `reprobe` (not for services' own use) re-probes a dependency believed down when it is next
//! used; Keel's SQL, Redis and bus connections use it.

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
#[doc(hidden)]
pub mod reprobe;
pub mod retry;

pub use backoff::{Backoff, ConnectConfig};
