//! # Keel
//!
//! A microservice chassis that makes a Rust service production-ready by default: one call,
//! [`run`], gives a binary layered and validated configuration, health probes with cached
//! checks, Prometheus metrics, JSON logs with request and trace ids, OpenTelemetry tracing, a
//! hardened HTTP stack (request ids, timeouts, body limits, load shedding, exact-origin CORS,
//! security headers, RFC 9457 problem responses, panic recovery) and graceful shutdown.
//!
//! ```no_run
//! use axum::{Json, Router, routing::get};
//! use serde_json::json;
//!
//! fn main() -> std::process::ExitCode {
//!     keel::run(keel::Service::new(keel::build_info!()).router(
//!         Router::new().route("/hello", get(|| async { Json(json!({"message": "hello"})) })),
//!     ))
//! }
//! ```
//!
//! | module | what it is for |
//! |---|---|
//! | [`app`] | service definition, start-up, graceful shutdown, the shared CLI |
//! | [`config`] | the `keel-config` crate: defaults < YAML < env, `${VAR}` interpolation, secrets, validation, production rules; depends on no other Keel crate |
//! | `events` | message bus (in-process, NATS JetStream, RabbitMQ), outbox, consumers, DLQ (features `events`, `nats`, `rabbitmq`) |
//! | [`health`] | health checks and the live / ready / startup probes |
//! | [`http`] | the server stack, one module per middleware, problem responses |
//! | [`telemetry`] | logs, traces and metrics; the `log` and `telemetry` sections |
//! | `data` | SQL pools (PostgreSQL, MySQL/MariaDB, SQLite), migrations (features `postgres`, `mysql`, `sqlite`) |
//! | `redis` | a managed Redis connection (feature `redis`) |
//! | [`resilience`] | backoff, retries, circuit breakers, bulkheads (the `keel-resilience` crate), rate limits |
//! | [`features`] | feature flags from a YAML file, hot-reloaded |
//! | [`workers`] | supervised periodic and continuous background workers |
//! | [`security`] | PII masking; JWT, passwords, field encryption, audit log (feature `security`) |
//! | `testing` | fault proxy and per-test databases (feature `test-util`) |
//!
//! Each module owns its configuration section (`http::HttpConfig`, `data::DatabaseConfig`, …),
//! which validates itself through [`config::Section`]; `app::KeelConfig` gathers them. Without
//! their cargo features, `data`, `events`, `redis` and `http::client` hold just their sections,
//! so a config file loads the same in every build.
//!
//! See `docs/` in the repository for every config key, endpoint and metric.

#![forbid(unsafe_code)]

pub mod app;
pub use keel_config as config;
#[cfg(feature = "sql")]
pub mod data;
/// The `database` section; the pool needs a SQL feature (`postgres`, `mysql`, `sqlite`).
#[cfg(not(feature = "sql"))]
pub mod data {
    mod config;
    pub use config::{DatabaseConfig, PoolConfig};
}
#[cfg(feature = "events")]
pub mod events;
/// The `bus` and `outbox` sections; the bus needs the `events` feature.
#[cfg(not(feature = "events"))]
pub mod events {
    mod config;
    pub use config::{BusBackend, BusConfig, OutboxConfig};
}
pub mod features;
pub mod health;
pub mod http;
mod intern;
#[cfg(feature = "redis")]
pub mod redis;
/// The `redis` section; the connection needs the `redis` feature.
#[cfg(not(feature = "redis"))]
pub mod redis {
    mod config;
    pub use config::RedisConfig;
}
pub mod resilience;
pub mod security;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod workers;

pub use app::{BuildInfo, Running, Service, Setup, run};
pub use config::Secret;
pub use http::{Problem, RequestId};

/// Seconds a client is asked to wait when a dependency is unavailable (503 `Retry-After`).
#[cfg(any(feature = "sql", feature = "redis"))]
pub(crate) const fn data_retry_after() -> u64 {
    5
}

/// The git commit this copy of Keel was built from (`unknown` outside a git checkout).
pub const BUILD_COMMIT: &str = env!("KEEL_BUILD_COMMIT");

/// Compiles the README's example so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
