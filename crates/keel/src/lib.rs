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
//! This crate is the facade: each concern is a crate of its own, re-exported here under its
//! module name, so a service depends on `keel` alone and picks backends with its features.
//! The crates form layers (each depends only on those above it in this table), so an import
//! cycle is a compile error:
//!
//! | module | crate | what it is for |
//! |---|---|---|
//! | [`config`] | `keel-config` | defaults < YAML < env, `${VAR}` interpolation, secrets, validation, production rules; the `Section` trait each crate's sections implement |
//! | [`problem`] | `keel-problem` | RFC 9457 problem documents, the error every crate answers with |
//! | [`tls`] | `keel-tls` | TLS for listeners: rustls (ring), certificate and key files reloaded on change, client certificates (mTLS) |
//! | [`resilience`] | `keel-resilience`, `keel-rate-limit` | backoff, retries, circuit breakers, bulkheads; rate limits as a tower layer |
//! | [`telemetry`] | `keel-telemetry` | logs, traces and metrics; PII masking; the `log` and `telemetry` sections |
//! | [`health`] | `keel-health` | health checks, the live / ready / startup probes, dependency connection state |
//! | [`http`] | `keel-http` | the HTTP stack as tower layers, problem responses, the outbound client (feature `client`) |
//! | [`server`] | `keel-server` | the accept loop: hyper's timeouts, HTTP/2 settings, connection caps, drain |
//! | [`data`] | `keel-data` | SQL pools (PostgreSQL, MySQL/MariaDB, SQLite), migrations (features `postgres`, `mysql`, `sqlite`) |
//! | [`redis`] | `keel-redis` | a managed Redis connection (feature `redis`) |
//! | [`storage`] | `keel-storage` | an object store: local files or an S3-compatible bucket (feature `storage`) |
//! | [`security`] | `keel-security` | JWT, passwords, field encryption, audit log (feature `security`) |
//! | [`grpc`] | `keel-grpc` | tonic services behind Keel's gRPC stack, `grpc.health.v1`, reflection, the gRPC client (feature `grpc`) |
//! | [`features`] | `keel-features` | feature flags from a YAML file, hot-reloaded, with runtime overrides every replica sees |
//! | [`workers`] | `keel-workers` | supervised periodic and continuous background workers |
//! | [`events`] | `keel-events` | message bus (in-process, NATS JetStream, RabbitMQ), outbox, consumers, DLQ (features `events`, `nats`, `rabbitmq`) |
//! | [`slo`] | `keel-slo` | SLO files turned into Prometheus recording rules and burn-rate alerts, beside alerts on Keel's own metrics (`<binary> slo rules`) |
//! | [`management`] | `keel-management` | the management listener: `/metrics`, the operator page and its sign-in, the log level |
//! | [`app`] | `keel-app` | service definition, start-up, graceful shutdown, the shared CLI |
//! | `testing` | `keel-testing` | fault proxy and per-test databases (feature `test-util`) |
//!
//! Each crate owns its configuration section (`http::HttpConfig`, `data::DatabaseConfig`, …),
//! which validates itself through [`config::Section`]; `app::KeelConfig` gathers them. Without
//! their cargo features, `data`, `events`, `redis`, `security`, `grpc` and `http::client` hold
//! just their sections and pull in none of their third-party crates (sqlx, the brokers'
//! clients, redis, the JWT and cipher crates, tonic's health and reflection services), so a
//! config file loads the same in every build and a service compiles only what it uses.
//!
//! See `docs/` in the repository for every config key, endpoint and metric.

pub use keel_app as app;
pub use keel_config as config;
pub use keel_data as data;
pub use keel_events as events;
pub use keel_features as features;
/// gRPC: tonic services behind Keel's gRPC stack, health, reflection, the client (feature
/// `grpc`; the `grpc` config section is always there).
pub use keel_grpc as grpc;
pub use keel_health as health;
pub use keel_http as http;
pub use keel_management as management;
/// RFC 9457 problem documents (also `keel::http::problem`, where the HTTP stack renders them).
pub use keel_problem as problem;
pub use keel_redis as redis;
pub use keel_security as security;
pub use keel_server as server;
pub use keel_slo as slo;
pub use keel_storage as storage;
pub use keel_telemetry as telemetry;
#[cfg(feature = "test-util")]
pub use keel_testing as testing;
pub use keel_tls as tls;
pub use keel_workers as workers;

pub mod resilience {
    //! Resilience primitives: how a service waits, retries and limits itself when a dependency or a
    //! client misbehaves.
    //!
    //! | module | what it is for |
    //! |---|---|
    //! | [`backoff`] | [`Backoff`]: exponential backoff with jitter, the one schedule behind every retry |
    //! | [`retry`] | retries of a classified outcome, with a retry budget |
    //! | [`breaker`] | circuit breakers per dependency, with a registry and metrics |
    //! | [`bulkhead`] | a concurrency limit with a bounded, timed queue |
    //! | [`rate_limit`] | named rate-limit policies: in-process (GCRA) or shared in Redis, as a tower layer |

    pub use keel_rate_limit as rate_limit;
    pub use keel_resilience::{Backoff, ConnectConfig, backoff, breaker, bulkhead, retry};
}

pub use app::{BUILD_COMMIT, BuildInfo, Running, Service, Setup, build_info, run};
pub use config::Secret;
pub use http::{Problem, RequestId};

/// Compiles the README's example so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
