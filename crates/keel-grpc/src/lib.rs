//! gRPC for Keel services: tonic services served beside the HTTP routes (on the same port,
//! routed by content type, or on `grpc.port`) behind a gRPC stack with the same guarantees as
//! the HTTP one, `grpc.health.v1` following readiness, switchable server reflection, and a
//! client with the HTTP client's timeouts, retries, breakers and metrics.
//!
//! This is `keel-grpc`, re-exported by `keel` as `keel::grpc` (feature `grpc`); of Keel's crates
//! it depends on `keel-config`, `keel-tls`, `keel-resilience`, `keel-telemetry`, `keel-health`,
//! `keel-http` and `keel-security` (JWT on calls, [`auth`], with the `security` feature). Without its `grpc` feature only [`GrpcConfig`] is built, so a config file with a
//! `grpc` section loads in every build.
//!
//! A service registers its tonic services in set-up; Keel does the rest:
//!
//! ```ignore
//! keel::app::Service::new(keel::app::build_info!()).setup(|s| {
//!     s.grpc_service(SymbolsServer::new(SymbolsApi::new(db)));
//!     s.grpc_descriptors(symbols::FILE_DESCRIPTOR_SET); // for reflection
//!     Ok(http_routes)
//! })
//! ```
//!
//! See `docs/grpc.md` for the whole picture: the stack's layers ([`server`]), status mapping
//! ([`status`]), metrics ([`metrics`]), deadlines and drain ([`deadline`]), the client
//! ([`client`]) and TLS.

#![forbid(unsafe_code)]

mod config;

pub use config::GrpcConfig;

#[cfg(feature = "grpc")]
pub mod answers;
#[cfg(all(feature = "grpc", feature = "security"))]
pub mod auth;
#[cfg(feature = "grpc")]
pub mod body;
#[cfg(feature = "grpc")]
pub mod catch_panic;
#[cfg(feature = "grpc")]
pub mod client;
#[cfg(feature = "grpc")]
mod connect;
#[cfg(feature = "grpc")]
pub mod deadline;
#[cfg(feature = "grpc")]
pub mod limit;
#[cfg(feature = "grpc")]
#[cfg(feature = "grpc")]
pub mod method;
#[cfg(feature = "grpc")]
pub mod metrics;
#[cfg(feature = "grpc")]
pub mod server;
#[cfg(feature = "grpc")]
pub mod shed;
#[cfg(feature = "grpc")]
pub mod status;
#[cfg(feature = "grpc")]
pub mod trace;

/// The tonic Keel is built with: generated code and services must use this one.
#[cfg(feature = "grpc")]
pub use tonic;
/// `grpc.health.v1`, for clients that probe a service's health.
#[cfg(feature = "grpc")]
pub use tonic_health;

#[cfg(feature = "grpc")]
pub use client::{GrpcClient, GrpcClientError, GrpcClientMetrics};
#[cfg(feature = "grpc")]
pub use server::{Dispatch, GrpcError, GrpcServer, GrpcService, GrpcServices, HealthSync};
#[cfg(feature = "grpc")]
pub use status::status;
