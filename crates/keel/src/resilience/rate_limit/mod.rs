//! Rate limiting: named policies, an in-process (GCRA) or a shared Redis (sliding window)
//! backend, and a tower layer keyed by client IP, user, route and/or a header.
//!
//! ```yaml
//! http:
//!   trusted_proxies: [10.0.0.0/8]   # only these may tell us the client IP (X-Forwarded-For)
//! rate_limits:
//!   api:
//!     limit: 100            # requests per window
//!     window: 1m
//!     key: [ip]             # ip | user | route | header:<name>, combined
//!     backend: redis        # local (per instance, GCRA) | redis (shared, sliding window)
//!     on_backend_error: fail_closed   # production default; fail_open elsewhere
//!     local_fallback: true  # when Redis fails, decide with an in-process limiter instead
//! ```
//!
//! Every answer carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (seconds); a refused request gets a 429 problem (`RATE_LIMITED`) with `Retry-After`. When
//! the backend fails, `fail_closed` answers 503 `SERVICE_DEGRADED` and `fail_open` lets the
//! request through; both are counted. Metrics:
//! `rate_limit_decisions_total{policy,decision="allowed|limited|error"}` (one per request; `error`
//! when the failure mode decided), `rate_limit_backend_errors_total{policy}`,
//! `rate_limit_backend_duration_seconds{policy}`.

mod layer;
mod local;
#[cfg(feature = "redis")]
mod redis;

use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use layer::{RateLimit, RateLimitLayer};
pub use local::LocalLimiter;
#[cfg(feature = "redis")]
pub use redis::RedisLimiter;

use crate::telemetry::Metrics;

/// `rate_limits.<name>.*`: one named policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Requests allowed per window. Default `100`.
    pub limit: u32,
    /// The window. Default `1m`.
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
    /// Local backend only: requests allowed at once after a quiet spell (GCRA burst). Default: `limit`.
    pub burst: Option<u32>,
    /// What requests are counted by. Default `[ip]`.
    pub key: Vec<KeyPart>,
    /// Where counts live. Default `local`.
    pub backend: BackendKind,
    /// What to do when the backend fails. Default `fail_closed` in production, else `fail_open`.
    pub on_backend_error: Option<OnBackendError>,
    /// When the backend fails, decide with an in-process limiter of the same policy instead.
    /// Default `false`.
    pub local_fallback: bool,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        Self {
            limit: 100,
            window: Duration::from_secs(60),
            burst: None,
            key: vec![KeyPart::Ip],
            backend: BackendKind::Local,
            on_backend_error: None,
            local_fallback: false,
        }
    }
}

impl RateLimitPolicy {
    /// Problems with the values, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.limit == 0 {
            p.push(("limit", "must be at least 1".into()));
        }
        if self.window.is_zero() {
            p.push(("window", "must be more than 0s".into()));
        }
        if self.burst == Some(0) {
            p.push(("burst", "must be at least 1".into()));
        }
        if self.key.is_empty() {
            p.push(("key", "needs at least one part (ip, user, route, header:<name>)".into()));
        }
        p
    }
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP (see [`crate::http::client_ip`]).
    Ip,
    /// The authenticated caller ([`crate::http::Principal`]); the client IP when anonymous.
    User,
    /// The matched route template.
    Route,
    /// A request header's value (`header:x-api-key`).
    Header(http::HeaderName),
}

impl std::fmt::Display for KeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip => f.write_str("ip"),
            Self::User => f.write_str("user"),
            Self::Route => f.write_str("route"),
            Self::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl std::str::FromStr for KeyPart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ip" => Ok(Self::Ip),
            "user" => Ok(Self::User),
            "route" => Ok(Self::Route),
            _ => match s.strip_prefix("header:") {
                Some(h) => http::HeaderName::from_bytes(h.trim().as_bytes())
                    .map(Self::Header)
                    .map_err(|_| format!("`{h}` is not a header name")),
                None => Err(format!("`{s}` is not a key part: use ip, user, route or header:<name>")),
            },
        }
    }
}

impl Serialize for KeyPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for KeyPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Where counts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// In this process (per instance), GCRA.
    Local,
    /// In Redis, shared by every instance, sliding window (one atomic round trip).
    Redis,
}

/// What to do when the backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Let the request through (counted as `error`).
    FailOpen,
    /// Refuse with 503 `SERVICE_DEGRADED` (counted as `error`).
    FailClosed,
}

/// What a backend decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The policy's limit.
    pub limit: u32,
    /// Requests left in the current window.
    pub remaining: u32,
    /// Time until the window has fully replenished.
    pub reset: Duration,
    /// When refused: time until a request would be allowed.
    pub retry_after: Duration,
}

/// The final answer for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decided by the backend (or the local fallback).
    Decided(Decision),
    /// The backend failed and the policy fails open.
    FailedOpen,
    /// The backend failed and the policy fails closed.
    FailedClosed,
}

/// A backend failure.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit backend: {0}")]
pub struct BackendError(pub String);

enum Backend {
    Local(LocalLimiter),
    #[cfg(feature = "redis")]
    Redis(RedisLimiter),
}

#[derive(Clone, Debug)]
struct LimiterMetrics {
    decisions: IntCounterVec,
    backend_errors: IntCounterVec,
    duration: HistogramVec,
}

/// Metric families shared by a service's limiters.
#[derive(Clone, Debug)]
pub struct RateLimitMetrics(LimiterMetrics);

impl RateLimitMetrics {
    /// Registers the families in `metrics`.
    pub fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let decisions = IntCounterVec::new(
            Opts::new("rate_limit_decisions_total", "Rate-limit decisions by policy and outcome."),
            &["policy", "decision"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("rate_limit_backend_duration_seconds", "Time to get a decision from the backend.")
                .buckets(vec![0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25]),
            &["policy"],
        )?;
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "rate_limit_backend_errors_total",
                "Rate-limit backend failures (decided by the failure mode or the local fallback).",
            ),
            &["policy"],
        )?;
        metrics.register(decisions.clone())?;
        metrics.register(backend_errors.clone())?;
        metrics.register(duration.clone())?;
        Ok(Self(LimiterMetrics { decisions, backend_errors, duration }))
    }
}

/// A named policy with its backend.
pub struct RateLimiter {
    name: String,
    policy: RateLimitPolicy,
    on_error: OnBackendError,
    backend: Backend,
    fallback: Option<LocalLimiter>,
    metrics: Option<LimiterMetrics>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("name", &self.name).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// An in-process limiter for `policy`.
    pub fn local(
        name: &str,
        policy: RateLimitPolicy,
        on_error: OnBackendError,
        metrics: Option<&RateLimitMetrics>,
    ) -> Self {
        let backend = Backend::Local(LocalLimiter::new(&policy));
        Self { name: name.to_owned(), policy, on_error, backend, fallback: None, metrics: metrics.map(|m| m.0.clone()) }
    }

    /// A Redis-backed limiter for `policy`; keys live under `redis`'s prefix.
    #[cfg(feature = "redis")]
    pub fn redis(
        name: &str,
        policy: RateLimitPolicy,
        on_error: OnBackendError,
        redis: crate::redis::Redis,
        metrics: Option<&RateLimitMetrics>,
    ) -> Self {
        let fallback = policy.local_fallback.then(|| LocalLimiter::new(&policy));
        let backend = Backend::Redis(RedisLimiter::new(name, &policy, redis));
        Self { name: name.to_owned(), policy, on_error, backend, fallback, metrics: metrics.map(|m| m.0.clone()) }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy.
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    /// What happens when the backend fails (the policy's setting or the profile's default).
    pub fn on_backend_error(&self) -> OnBackendError {
        self.on_error
    }

    fn count(&self, decision: &str) {
        if let Some(m) = &self.metrics {
            m.decisions.with_label_values(&[&self.name, decision]).inc();
        }
    }

    /// Decides for one request with this key.
    pub async fn check(&self, key: &str) -> Verdict {
        let started = Instant::now();
        let result: Result<Decision, BackendError> = match &self.backend {
            Backend::Local(l) => Ok(l.check(key)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.check(key).await,
        };
        if let Some(m) = &self.metrics {
            m.duration.with_label_values(&[&self.name]).observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(d) => {
                self.count(if d.allowed { "allowed" } else { "limited" });
                Verdict::Decided(d)
            }
            Err(e) => {
                tracing::warn!(policy = %self.name, error = %e, "rate-limit backend failed");
                if let Some(m) = &self.metrics {
                    m.backend_errors.with_label_values(&[&self.name]).inc();
                }
                if let Some(local) = &self.fallback {
                    // Decided after all (locally): counted as that decision, plus a fallback.
                    let d = local.check(key);
                    self.count(if d.allowed { "allowed" } else { "limited" });
                    return Verdict::Decided(d);
                }
                self.count("error");
                match self.on_error {
                    OnBackendError::FailOpen => Verdict::FailedOpen,
                    OnBackendError::FailClosed => Verdict::FailedClosed,
                }
            }
        }
    }
}
