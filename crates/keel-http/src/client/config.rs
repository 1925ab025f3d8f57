//! The `upstreams.<name>` sections. They exist without the `client` feature too, so a file that
//! sets them loads the same in every build.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Section, Validation};
use keel_resilience::breaker::BreakerConfig;
use keel_resilience::bulkhead::BulkheadConfig;
use keel_resilience::retry::RetryConfig;

/// `upstreams.<name>.*`: an HTTP service this one calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// `http://events:8082`. Required.
    pub base_url: String,
    /// Deadline to open a connection. Default `2s`.
    #[serde(with = "keel_config::duration")]
    pub connect_timeout: Duration,
    /// Deadline of one attempt (also bounded by the caller's own remaining time). Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub request_timeout: Duration,
    /// Largest response body read; past it the read stops with an error. Default `10MiB`.
    #[serde(with = "keel_config::bytes")]
    pub max_response_bytes: usize,
    /// Retries of idempotent requests (GET, HEAD, PUT, DELETE, OPTIONS, or any carrying an
    /// `Idempotency-Key`) that failed to connect, timed out, or got 502/503/504.
    pub retry: RetryConfig,
    /// This upstream's circuit breaker (5xx, timeouts and connection errors are failures).
    pub breaker: BreakerConfig,
    /// This upstream's bulkhead.
    pub bulkhead: BulkheadConfig,
    /// When set, a readiness check `GET <base_url><health_path>` (`upstream:<name>`).
    pub health_path: Option<String>,
    /// Whether that check can fail readiness (else `degraded`). Default `true`.
    pub required: bool,
    /// TLS for an `https://` base URL: a pinned CA (`ca_file`), a client certificate
    /// (`cert_file`, `key_file`) for mTLS, the name to check (`server_name`). Default: the
    /// public web PKI roots and no client certificate.
    pub tls: keel_tls::ClientTlsConfig,
    /// gRPC only: in production a gRPC client (`Setup::grpc_client`) refuses an `http://`
    /// base URL unless this is `true` (a service mesh or the node network encrypts). Default
    /// `false`.
    pub plaintext: bool,
    /// **Secret.** Sent as `Keel-Proxy-Secret` with every request: the upstream's
    /// `http.proxy_secret`, which this service holds as the proxy the upstream trusts to tell
    /// the client's address (`X-Forwarded-For`). Default none.
    pub proxy_secret: Option<keel_config::Secret>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 10 << 20,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            bulkhead: BulkheadConfig::default(),
            health_path: None,
            required: true,
            tls: keel_tls::ClientTlsConfig::default(),
            plaintext: false,
            proxy_secret: None,
        }
    }
}

impl Section for UpstreamConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        let base = self.base_url.parse::<http::Uri>().ok();
        let plain = base.as_ref().is_some_and(|b| b.query().is_none() && !self.base_url.contains('#'));
        if !plain || !base.is_some_and(|b| matches!(b.scheme_str(), Some("http" | "https")) && b.host().is_some()) {
            v.invalid("base_url", "must be an http(s) URL without query or fragment, such as http://events:8082");
        }
        let ratio = self.retry.budget.ratio;
        if !ratio.is_finite() || ratio < 0.0 {
            v.invalid("retry.budget.ratio", "must be a number of at least 0");
        }
        for (field, d) in [("connect_timeout", self.connect_timeout), ("request_timeout", self.request_timeout)] {
            if d.is_zero() {
                v.invalid(field, "must be more than 0s: no call may wait forever");
            }
        }
        if self.max_response_bytes == 0 {
            v.invalid("max_response_bytes", "must be more than 0");
        }
        if self.retry.max_attempts == 0 {
            v.invalid("retry.max_attempts", "must be at least 1 (1 = no retries)");
        }
        for (field, message) in self.breaker.problems() {
            v.invalid(&format!("breaker.{field}"), message);
        }
        if self.bulkhead.max_concurrent == 0 {
            v.invalid("bulkhead.max_concurrent", "must be at least 1");
        }
        if self.tls.is_set() && !self.base_url.starts_with("https://") {
            v.invalid("tls", "applies to an https:// base_url only");
        }
        v.section("tls", &self.tls);
        if let Some(p) = &self.health_path
            && !p.starts_with('/')
        {
            v.invalid("health_path", "must start with /");
        }
    }
}
