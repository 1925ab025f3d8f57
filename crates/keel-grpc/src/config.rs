//! `grpc.*`: the gRPC listener and its limits.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Section, Validation};
use keel_tls::ServerTlsConfig;

/// `grpc.*`: where a service's tonic services are served and how they are bounded. Used only
/// by a service that registers gRPC services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// A port of its own for gRPC. Default none: gRPC shares the public listener
    /// (`http.port`), where requests with `content-type: application/grpc` go to the gRPC
    /// services and everything else to the HTTP routes.
    pub port: Option<u16>,
    /// Largest request message accepted (its length prefix), per message of a stream too;
    /// past it the call ends with `RESOURCE_EXHAUSTED`. Default `4MiB` (tonic's own default
    /// per service; raise both to accept more).
    #[serde(with = "keel_config::bytes")]
    pub max_message_size: usize,
    /// The longest a handler may take to answer (its response headers), whatever deadline the
    /// client sent in `grpc-timeout`; then `DEADLINE_EXCEEDED`. A client's deadline also bounds
    /// the whole call, streams included. Default `30s`.
    #[serde(with = "keel_config::duration")]
    pub request_timeout: Duration,
    /// Calls in flight (until their response headers) past which new ones are answered
    /// `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`. Health checks are never refused.
    /// Default `1024`.
    pub max_in_flight: usize,
    /// Serves `grpc.reflection.v1` (and `v1alpha`) describing the registered services, for
    /// `grpcurl` and the like. Default `false`.
    pub reflection: bool,
    /// TLS on the gRPC port of its own (as `http.tls`; on the shared port `http.tls` applies).
    pub tls: ServerTlsConfig,
    /// In production, gRPC is refused without TLS on its listener unless this is `true` (a
    /// service mesh or the node network encrypts). Default `false`.
    pub plaintext: bool,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            port: None,
            max_message_size: 4 << 20,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            reflection: false,
            tls: ServerTlsConfig::default(),
            plaintext: false,
        }
    }
}

impl Section for GrpcConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.max_message_size == 0 || self.max_message_size > u32::MAX as usize {
            v.invalid("max_message_size", "must be more than 0 and at most 4GiB (the length prefix is 32 bits)");
        }
        if self.request_timeout.is_zero() {
            v.invalid("request_timeout", "must be more than 0s: no call may run forever");
        }
        if self.max_in_flight == 0 {
            v.invalid("max_in_flight", "must be at least 1");
        }
        if self.tls.enabled() && self.port.is_none() {
            v.invalid("tls", "applies to grpc.port only; on the shared listener set http.tls");
        }
        v.section("tls", &self.tls);
    }
}
