//! Rate limiting: named policies, an in-process (GCRA) or a shared Redis (sliding window)
//! backend, per-route rules, and a tower layer keyed by client IP, user, route and/or a header.
//!
//! This is `keel-rate-limit`, re-exported by `keel` as `keel::resilience::rate_limit`; of Keel's
//! crates it depends on `keel-config`, `keel-telemetry`, `keel-http` and `keel-redis`.
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
//!     on_backend_error: fail_closed   # fail_open | fail_closed | fallback_local
//!     rules:                # requests matching a rule get its settings instead
//!       reads:
//!         methods: [GET, HEAD]
//!         paths: ["/api/**"]
//!         on_backend_error: fallback_local   # Redis down: an in-process limiter decides
//! ```
//!
//! Every answer carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (seconds); a refused request gets a 429 problem (`RATE_LIMITED`) with `Retry-After`. When
//! the backend fails, `fail_closed` answers 503 `SERVICE_DEGRADED`, `fail_open` lets the
//! request through and `fallback_local` decides with an in-process limiter of the same limit,
//! divided by `instances` (the service's replica count, so N replicas together allow about the
//! limit); all are counted. A rule that sets none of `limit`, `window`, `burst` or `key` counts with its
//! policy (one budget); one that does counts on its own. Rules may not overlap, so a request
//! matches at most one. Metrics:
//! `rate_limit_decisions_total{policy,decision="allowed|limited|error"}` (one per request; `error`
//! when the failure mode decided), `rate_limit_backend_errors_total{policy}`,
//! `rate_limit_backend_duration_seconds{policy}` and
//! `rate_limit_backend_active{policy,backend="redis|local|none"}` (1 for what decides now;
//! `none`: the failure mode). A rule's `policy` label is `<policy>.<rule>`.

mod layer;
mod local;
#[cfg(feature = "redis")]
mod redis;
mod route;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use layer::{RateLimit, RateLimitLayer};
pub use local::LocalLimiter;
#[cfg(feature = "redis")]
pub use redis::RedisLimiter;
pub use route::{PathPattern, RouteMatch};

use keel_config::{Profile, Section, Validation};
use keel_telemetry::Metrics;

/// `rate_limits.<name>.*`: one named policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Requests allowed per window. Default `100`.
    pub limit: u32,
    /// The window. Default `1m`.
    #[serde(with = "keel_config::duration")]
    pub window: Duration,
    /// Local backend only: requests allowed at once after a quiet spell (GCRA burst). Default: `limit`.
    pub burst: Option<u32>,
    /// What requests are counted by. Default `[ip]`.
    pub key: Vec<KeyPart>,
    /// Where counts live. Default `local`.
    pub backend: BackendKind,
    /// What to do when the backend fails. Default `fail_closed` in production, else `fail_open`.
    pub on_backend_error: Option<OnBackendError>,
    /// How many instances of the service share the budget (1 to 10 000). `fallback_local`
    /// gives each instance `limit / instances` (at least 1) while the backend is away, so N
    /// replicas together allow about the limit, not N times it. Default `1`.
    pub instances: u32,
    /// Per-route rules by name: a request matching one gets its settings. Default none.
    pub rules: BTreeMap<String, RateLimitRule>,
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
            instances: 1,
            rules: BTreeMap::new(),
        }
    }
}

/// `rate_limits.<name>.rules.<rule>.*`: settings for the requests a rule matches; what it leaves
/// unset is the policy's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitRule {
    /// Methods it applies to (`GET`, `POST`, …). Empty: any method.
    pub methods: Vec<String>,
    /// Path patterns it applies to (`/api/v1/events/{id}`, `/api/v1/**`). Empty: any path.
    pub paths: Vec<String>,
    /// Requests allowed per window (then it counts on its own).
    pub limit: Option<u32>,
    /// The window (then it counts on its own).
    #[serde(with = "keel_config::duration::option")]
    pub window: Option<Duration>,
    /// Local backend only: the GCRA burst (then it counts on its own).
    pub burst: Option<u32>,
    /// What requests are counted by (then it counts on its own).
    pub key: Option<Vec<KeyPart>>,
    /// What to do when the backend fails.
    pub on_backend_error: Option<OnBackendError>,
}

impl RateLimitRule {
    /// Whether it counts on its own rather than with its policy.
    pub fn counts_separately(&self) -> bool {
        self.limit.is_some() || self.window.is_some() || self.burst.is_some() || self.key.is_some()
    }

    /// The policy this rule makes of `base` (without rules).
    pub fn apply(&self, base: &RateLimitPolicy) -> RateLimitPolicy {
        RateLimitPolicy {
            limit: self.limit.unwrap_or(base.limit),
            window: self.window.unwrap_or(base.window),
            burst: if self.counts_separately() { self.burst } else { base.burst },
            key: self.key.clone().unwrap_or_else(|| base.key.clone()),
            backend: base.backend,
            on_backend_error: self.on_backend_error.or(base.on_backend_error),
            instances: base.instances,
            rules: BTreeMap::new(),
        }
    }
}

fn limit_problems(
    p: &mut Vec<(String, String)>,
    at: &str,
    limit: Option<u32>,
    window: Option<Duration>,
    burst: Option<u32>,
    key: Option<&[KeyPart]>,
    backend: BackendKind,
) {
    if limit == Some(0) {
        p.push((format!("{at}limit"), "must be at least 1".into()));
    }
    if window.is_some_and(|w| w.is_zero()) {
        p.push((format!("{at}window"), "must be more than 0s".into()));
    }
    if burst == Some(0) {
        p.push((format!("{at}burst"), "must be at least 1".into()));
    }
    if burst.is_some() && backend == BackendKind::Redis {
        p.push((
            format!("{at}burst"),
            "applies to the local backend only; the Redis sliding window allows `limit` per window".into(),
        ));
    }
    if key.is_some_and(<[KeyPart]>::is_empty) {
        p.push((format!("{at}key"), "needs at least one part (ip, user, route, header:<name>)".into()));
    }
}

impl Section for RateLimitPolicy {
    fn validate(&self, v: &mut Validation<'_>) {
        for (field, message) in self.problems() {
            v.invalid(&field, message);
        }
        if v.profile() == Profile::Production {
            for (field, message) in self.production_problems(OnBackendError::FailClosed) {
                v.production(&field, message);
            }
        }
    }
}

impl RateLimitPolicy {
    /// What one of `instances` instances may allow on its own: the limit (and burst) divided
    /// among them, at least 1.
    ///
    /// ```
    /// use keel_rate_limit::RateLimitPolicy;
    /// let p = RateLimitPolicy { limit: 300, instances: 4, ..RateLimitPolicy::default() };
    /// assert_eq!(p.instance_share().limit, 75);
    /// let tiny = RateLimitPolicy { limit: 3, instances: 5, ..RateLimitPolicy::default() };
    /// assert_eq!(tiny.instance_share().limit, 1);
    /// ```
    pub fn instance_share(&self) -> RateLimitPolicy {
        let n = self.instances.max(1);
        RateLimitPolicy {
            limit: (self.limit / n).max(1),
            burst: self.burst.map(|b| (b / n).max(1)),
            instances: 1,
            ..self.clone()
        }
    }

    /// Problems with the values, as `(field, message)`: every one, rules included.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        limit_problems(&mut p, "", Some(self.limit), Some(self.window), self.burst, Some(&self.key), self.backend);
        if !(1..=10_000).contains(&self.instances) {
            p.push(("instances".into(), "must be from 1 to 10000".into()));
        }
        let local_fallback = |mode: Option<OnBackendError>| {
            mode == Some(OnBackendError::FallbackLocal) && self.backend == BackendKind::Local
        };
        if local_fallback(self.on_backend_error) {
            p.push((
                "on_backend_error".into(),
                "fallback_local needs backend: redis (the local backend cannot fail)".into(),
            ));
        }
        let mut parsed: Vec<(&str, RouteMatch)> = Vec::new();
        for (name, rule) in &self.rules {
            let at = format!("rules.{name}.");
            if name.trim().is_empty() || name.contains(['.', ' ']) {
                p.push((format!("rules.{name}"), "a rule name is a word without dots or spaces".into()));
            }
            if rule.methods.is_empty() && rule.paths.is_empty() {
                p.push((
                    format!("rules.{name}"),
                    "matches every request: give `methods`, `paths` or both (or change the policy itself)".into(),
                ));
            }
            limit_problems(&mut p, &at, rule.limit, rule.window, rule.burst, rule.key.as_deref(), self.backend);
            if local_fallback(rule.on_backend_error) {
                p.push((
                    format!("{at}on_backend_error"),
                    "fallback_local needs backend: redis (the local backend cannot fail)".into(),
                ));
            }
            match RouteMatch::parse(&rule.methods, &rule.paths) {
                Ok(m) => parsed.push((name.as_str(), m)),
                Err(problems) => p.extend(problems.into_iter().map(|(f, m)| (format!("{at}{f}"), m))),
            }
        }
        for (i, (a, ma)) in parsed.iter().enumerate() {
            for (b, mb) in &parsed[i + 1..] {
                if ma.overlaps(mb) {
                    p.push((
                        format!("rules.{b}"),
                        format!(
                            "overlaps rule `{a}`: some request matches both; rules must be disjoint (methods or paths)"
                        ),
                    ));
                }
            }
        }
        p
    }

    /// Problems production refuses, with `default_mode` the profile's failure mode: a Redis
    /// policy or rule that fails open while covering writes (they would go unlimited during an
    /// outage).
    pub fn production_problems(&self, default_mode: OnBackendError) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.backend != BackendKind::Redis {
            return p;
        }
        let why = "lets writes through unlimited while Redis is down: use fail_closed, fallback_local, \
                   or a rule failing open for safe methods (GET, HEAD) only";
        if self.on_backend_error.unwrap_or(default_mode) == OnBackendError::FailOpen {
            p.push(("on_backend_error".into(), why.into()));
        }
        for (name, rule) in &self.rules {
            let safe = RouteMatch::parse(&rule.methods, &rule.paths).is_ok_and(|m| m.only_safe_methods());
            if rule.on_backend_error == Some(OnBackendError::FailOpen) && !safe {
                p.push((format!("rules.{name}.on_backend_error"), why.into()));
            }
        }
        p
    }

    /// The limiters this policy needs: its own, then one per rule (named `<policy>.<rule>`).
    pub fn limiter_specs(&self, name: &str, default_mode: OnBackendError) -> Result<Vec<LimiterSpec>, String> {
        let mut specs = vec![LimiterSpec {
            name: name.to_owned(),
            counter: name.to_owned(),
            policy: RateLimitPolicy { rules: BTreeMap::new(), ..self.clone() },
            on_error: self.on_backend_error.unwrap_or(default_mode),
            route: None,
        }];
        for (rule_name, rule) in &self.rules {
            let route = RouteMatch::parse(&rule.methods, &rule.paths).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|(f, m)| format!("rate_limits.{name}.rules.{rule_name}.{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            let policy = rule.apply(self);
            let full = format!("{name}.{rule_name}");
            specs.push(LimiterSpec {
                counter: if rule.counts_separately() { full.clone() } else { name.to_owned() },
                name: full,
                on_error: policy.on_backend_error.unwrap_or(default_mode),
                policy,
                route: Some(route),
            });
        }
        Ok(specs)
    }
}

/// One limiter of a policy (see [`RateLimitPolicy::limiter_specs`]).
#[derive(Debug, Clone)]
pub struct LimiterSpec {
    /// Its name in metrics and on the status page: `<policy>` or `<policy>.<rule>`.
    pub name: String,
    /// Whose counts it shares in the backend: its own name, or its policy's.
    pub counter: String,
    /// The settings it applies (a rule's merged over its policy's).
    pub policy: RateLimitPolicy,
    /// The failure mode in force (the setting, else the profile's default).
    pub on_error: OnBackendError,
    /// The requests it applies to (`None`: the policy's own, for requests no rule matches).
    pub route: Option<RouteMatch>,
}
/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP (see [`keel_http::client_ip`]).
    Ip,
    /// The authenticated caller ([`keel_http::Principal`]); the client IP when anonymous.
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
    /// Decide with an in-process limiter of the same limit (per instance) until the backend
    /// answers again (counted as its decision). Needs `backend: redis`.
    FallbackLocal,
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

impl Verdict {
    /// Whether the request goes on: allowed, or let through by `fail_open`.
    pub fn lets_through(self) -> bool {
        matches!(self, Self::Decided(Decision { allowed: true, .. }) | Self::FailedOpen)
    }
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
    active: IntGaugeVec,
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
        let active = IntGaugeVec::new(
            Opts::new(
                "rate_limit_backend_active",
                "1 for what decides a limiter's requests now: its backend (redis or local), the local \
                 fallback (local) or the failure mode (none).",
            ),
            &["policy", "backend"],
        )?;
        metrics.register(decisions.clone())?;
        metrics.register(backend_errors.clone())?;
        metrics.register(duration.clone())?;
        metrics.register(active.clone())?;
        Ok(Self(LimiterMetrics { decisions, backend_errors, duration, active }))
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
    /// What decides now (an [`InForce`] as `u8`): changes only on a backend failure or recovery.
    in_force: AtomicU8,
}

/// What decides a limiter's requests at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InForce {
    /// The configured backend (`local` or `redis`).
    Backend,
    /// The backend failed: the in-process fallback limiter (`fallback_local`).
    LocalFallback,
    /// The backend failed: the failure mode (`fail_open` lets through, `fail_closed` refuses).
    FailureMode,
}

impl InForce {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::LocalFallback,
            2 => Self::FailureMode,
            _ => Self::Backend,
        }
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("name", &self.name).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl RateLimiter {
    fn build(
        name: &str,
        policy: RateLimitPolicy,
        on_error: OnBackendError,
        backend: Backend,
        metrics: Option<&RateLimitMetrics>,
    ) -> Self {
        let fallback = (on_error == OnBackendError::FallbackLocal && !matches!(backend, Backend::Local(_)))
            .then(|| LocalLimiter::new(&policy.instance_share()));
        let limiter = Self {
            name: name.to_owned(),
            policy,
            on_error,
            backend,
            fallback,
            metrics: metrics.map(|m| m.0.clone()),
            in_force: AtomicU8::new(InForce::Backend as u8),
        };
        limiter.publish(InForce::Backend);
        // At zero from the start, so `rate()` and the backend-error alert see the series before
        // the first failure.
        if let Some(m) = &limiter.metrics {
            let _ = m.backend_errors.with_label_values(&[&limiter.name]);
        }
        limiter
    }

    /// An in-process limiter for `policy`.
    pub fn local(
        name: &str,
        policy: RateLimitPolicy,
        on_error: OnBackendError,
        metrics: Option<&RateLimitMetrics>,
    ) -> Self {
        let backend = Backend::Local(LocalLimiter::new(&policy));
        Self::build(name, policy, on_error, backend, metrics)
    }

    /// A Redis-backed limiter for `policy`; keys live under `redis`'s prefix.
    #[cfg(feature = "redis")]
    pub fn redis(
        name: &str,
        policy: RateLimitPolicy,
        on_error: OnBackendError,
        redis: keel_redis::Redis,
        metrics: Option<&RateLimitMetrics>,
    ) -> Self {
        Self::redis_sharing(name, name, policy, on_error, redis, metrics)
    }

    /// A Redis-backed limiter named `name` that shares the counts of `counter` (a rule that
    /// counts with its policy).
    #[cfg(feature = "redis")]
    pub fn redis_sharing(
        name: &str,
        counter: &str,
        policy: RateLimitPolicy,
        on_error: OnBackendError,
        redis: keel_redis::Redis,
        metrics: Option<&RateLimitMetrics>,
    ) -> Self {
        let backend = Backend::Redis(RedisLimiter::new(counter, &policy, redis));
        Self::build(name, policy, on_error, backend, metrics)
    }

    /// The limiter's name (`<policy>` or `<policy>.<rule>`).
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

    /// What decides now.
    pub fn in_force(&self) -> InForce {
        InForce::from_u8(self.in_force.load(Ordering::Relaxed))
    }

    /// The backend deciding now, as in `rate_limit_backend_active`: `redis`, `local`, or
    /// `none` when the failure mode decides.
    pub fn active_backend(&self) -> &'static str {
        match self.in_force() {
            InForce::Backend => self.backend_name(),
            InForce::LocalFallback => "local",
            InForce::FailureMode => "none",
        }
    }

    fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Local(_) => "local",
            #[cfg(feature = "redis")]
            Backend::Redis(_) => "redis",
        }
    }

    fn publish(&self, now: InForce) {
        let Some(m) = &self.metrics else { return };
        let active = match now {
            InForce::Backend => self.backend_name(),
            InForce::LocalFallback => "local",
            InForce::FailureMode => "none",
        };
        let mut backends = vec!["local", "none"];
        if self.backend_name() == "redis" {
            backends.push("redis");
        }
        for b in backends {
            m.active.with_label_values(&[&self.name, b]).set(i64::from(b == active));
        }
    }

    /// Records what decides now; logs and publishes a change.
    fn switch(&self, now: InForce, error: Option<&BackendError>) {
        let before = InForce::from_u8(self.in_force.swap(now as u8, Ordering::Relaxed));
        if before == now {
            return;
        }
        self.publish(now);
        match (now, error) {
            (InForce::Backend, _) => {
                tracing::info!(policy = %self.name, backend = self.backend_name(), "rate-limit backend is back in force");
            }
            (_, e) => tracing::warn!(
                policy = %self.name,
                error = e.map(tracing::field::display),
                now = self.active_backend(),
                on_backend_error = ?self.on_error,
                "rate-limit backend failed; deciding with the failure mode until it answers again"
            ),
        }
    }

    fn count(&self, decision: &str) {
        if let Some(m) = &self.metrics {
            m.decisions.with_label_values(&[&self.name, decision]).inc();
        }
    }

    /// Decides for one request with this key.
    pub async fn check(&self, key: &str) -> Verdict {
        let mut verdicts = Self::check_in_order(&[(self, key)]).await;
        verdicts.pop().unwrap_or(Verdict::FailedClosed)
    }

    /// Decides for one request under several limiters, in order, as if each were a layer
    /// around the next: the first refusal (a 429's decision, or a failure mode that refuses)
    /// ends it, and the limiters after it neither count the request nor decide. The answer
    /// holds a verdict for each limiter up to and including the one that refused.
    ///
    /// Consecutive Redis limiters on the same [`keel_redis::Redis`] handle decide in one round
    /// trip (one script, atomic); their `rate_limit_backend_duration_seconds` each observe that
    /// round trip. When it fails, each applies its own failure mode, in order.
    pub async fn check_in_order<K: AsRef<str>>(checks: &[(&Self, K)]) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(checks.len());
        let mut i = 0;
        while i < checks.len() {
            let started = Instant::now();
            let (limiter, key) = (checks[i].0, checks[i].1.as_ref());
            let results: Vec<(usize, Result<Decision, BackendError>)> = match &limiter.backend {
                Backend::Local(l) => vec![(i, Ok(l.check(key)))],
                #[cfg(feature = "redis")]
                Backend::Redis(r) => {
                    let run: Vec<(&RedisLimiter, &str)> = checks[i..]
                        .iter()
                        .map_while(|(l, k)| match &l.backend {
                            Backend::Redis(other) if r.shares_redis_with(other) => Some((other, k.as_ref())),
                            _ => None,
                        })
                        .collect();
                    match RedisLimiter::check_in_order(&run).await {
                        Ok(decisions) => decisions.into_iter().enumerate().map(|(n, d)| (i + n, Ok(d))).collect(),
                        // Each limiter of the run decides by its own failure mode.
                        Err(e) => (i..i + run.len()).map(|n| (n, Err(BackendError(e.0.clone())))).collect(),
                    }
                }
            };
            i += results.len();
            for (n, result) in results {
                let verdict = checks[n].0.settle(result, checks[n].1.as_ref(), started);
                verdicts.push(verdict);
                if !verdict.lets_through() {
                    return verdicts;
                }
            }
        }
        verdicts
    }

    /// Turns a backend's answer into the verdict, with its metrics and failure mode.
    fn settle(&self, result: Result<Decision, BackendError>, key: &str, started: Instant) -> Verdict {
        if let Some(m) = &self.metrics {
            m.duration.with_label_values(&[&self.name]).observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(d) => {
                self.switch(InForce::Backend, None);
                self.count(if d.allowed { "allowed" } else { "limited" });
                Verdict::Decided(d)
            }
            Err(e) => {
                tracing::debug!(policy = %self.name, error = %e, "rate-limit backend failed");
                if let Some(m) = &self.metrics {
                    m.backend_errors.with_label_values(&[&self.name]).inc();
                }
                if let Some(local) = &self.fallback {
                    // Decided after all (locally): counted as that decision.
                    self.switch(InForce::LocalFallback, Some(&e));
                    let d = local.check(key);
                    self.count(if d.allowed { "allowed" } else { "limited" });
                    return Verdict::Decided(d);
                }
                self.switch(InForce::FailureMode, Some(&e));
                self.count("error");
                match self.on_error {
                    OnBackendError::FailOpen => Verdict::FailedOpen,
                    OnBackendError::FailClosed | OnBackendError::FallbackLocal => Verdict::FailedClosed,
                }
            }
        }
    }
}
