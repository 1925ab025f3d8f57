//! The outbound HTTP client: one per upstream, safe by default.
//!
//! Every call through a [`Client`] gets, in this order:
//!
//! 1. the upstream's **bulkhead** (bounded concurrency and queue);
//! 2. **retries** with backoff and a budget — only for idempotent requests (GET, HEAD, PUT,
//!    DELETE, OPTIONS, or any with an `Idempotency-Key`) that timed out, failed in transport or
//!    got 502/503/504, and for any request when no connection could be made (nothing was sent);
//! 3. per attempt, the upstream's **circuit breaker** (5xx, timeouts and connection errors are
//!    failures, except a 503 marked [`OVERLOADED`]: a refusal at capacity, passed on uncounted;
//!    an open breaker answers at once without a request; with `health_path` set, a readiness
//!    probe of that path while open starts the trial calls as soon as it answers 2xx);
//! 4. a **connect timeout** and a **request timeout** (never infinite; also cut to the caller's
//!    own remaining time);
//! 5. a **response size cap**: the body is read chunk by chunk and the read stops with
//!    [`ClientError::TooLarge`] the moment it passes `max_response_bytes`, so a 2 GB answer
//!    cannot exhaust memory;
//! 6. **propagation** of `traceparent`, `X-Request-ID` and the remaining deadline
//!    (`x-request-timeout-ms`), `Keel-Proxy-Secret` when `proxy_secret` is set (see
//!    [`crate::proxy_secret`]), and a `client` span per attempt.
//!
//! Metrics: `http_client_requests_total{upstream,method,status}` (`status` is the code, or
//! `error`), `http_client_request_duration_seconds{upstream}`, plus the breaker's and
//! bulkhead's.
//!
//! ```ignore
//! let events = s.http_client("events")?;          // upstreams.events.*
//! let resp = events.get("/events/42").await?;      // Result<Response, ClientError>
//! let event: Event = resp.json()?;
//! ```

mod config;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response as AxumResponse};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tracing::Instrument;

pub use config::UpstreamConfig;

use super::Problem;
use super::context::TIMEOUT_HEADER_NAME;
use super::problem::OVERLOADED;
use keel_health::{Check, Kind, Outcome};
use keel_resilience::breaker::{CircuitBreaker, Outcome as BreakerOutcome, Rejected};
use keel_resilience::bulkhead::{Bulkhead, BulkheadError, BulkheadMetrics};
use keel_resilience::retry::{GaveUp, Retry};
use keel_telemetry::Metrics;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The upstream's breaker is open: no request was sent. Answers 503.
    #[error("upstream {upstream}: circuit open")]
    BreakerOpen {
        /// The upstream.
        upstream: String,
        /// The breaker's refusal.
        source: Rejected,
    },
    /// The upstream's bulkhead refused the call. Answers 503.
    #[error("upstream {upstream}: {source}")]
    Bulkhead {
        /// The upstream.
        upstream: String,
        /// Why.
        source: BulkheadError,
    },
    /// The caller's own deadline (its remaining time) ran out: not the upstream's fault, so it is
    /// neither retried nor counted by the breaker. Answers 504.
    #[error("upstream {upstream}: the caller's deadline passed")]
    DeadlineExceeded {
        /// The upstream.
        upstream: String,
    },
    /// No answer in time. Answers 504.
    #[error("upstream {upstream}: no answer within {after:?}")]
    Timeout {
        /// The upstream.
        upstream: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The body passed `max_response_bytes`; the read was abandoned. Answers 502.
    #[error("upstream {upstream}: response body larger than {limit} bytes")]
    TooLarge {
        /// The upstream.
        upstream: String,
        /// The cap.
        limit: usize,
    },
    /// No connection could be made (refused, no route, DNS, TLS handshake, `connect_timeout`):
    /// the upstream is down and nothing was sent, so it is retried whatever the method. Answers
    /// 503 with `Retry-After`.
    #[error("upstream {upstream}: cannot connect: {message}")]
    Unreachable {
        /// The upstream.
        upstream: String,
        /// What happened.
        message: String,
    },
    /// Talking to the upstream failed once connected (reset, malformed answer). Answers 502.
    #[error("upstream {upstream}: {message}")]
    Transport {
        /// The upstream.
        upstream: String,
        /// What happened.
        message: String,
    },
    /// The request could not be built (bad path or header). Answers 500.
    #[error("upstream {upstream}: invalid request: {message}")]
    Invalid {
        /// The upstream.
        upstream: String,
        /// What is wrong.
        message: String,
    },
    /// The body is not the JSON expected. Answers 502.
    #[error("upstream {upstream}: unexpected body: {message}")]
    Decode {
        /// The upstream.
        upstream: String,
        /// What is wrong.
        message: String,
    },
}

impl From<ClientError> for Problem {
    /// 503 (`SERVICE_DEGRADED`, with `Retry-After`) for an upstream behind an open breaker, a
    /// full bulkhead or out of reach; 504 for one that timed out; 502 for a bad answer; 500 for
    /// a request this service built wrong. The cause is logged, never sent.
    fn from(e: ClientError) -> Self {
        tracing::warn!(error = %e, "upstream call failed");
        let (status, slug, title, code) = match &e {
            ClientError::BreakerOpen { .. } | ClientError::Bulkhead { .. } | ClientError::Unreachable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "Service degraded",
                Some("SERVICE_DEGRADED"),
            ),
            ClientError::Timeout { .. } | ClientError::DeadlineExceeded { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", "Upstream timed out", None)
            }
            ClientError::Invalid { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error", None)
            }
            _ => (StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway", None),
        };
        let retry_after = match &e {
            ClientError::BreakerOpen { source, .. } => source.retry_in.as_secs().max(1),
            _ => 1,
        };
        let mut p = Problem::new(status, slug, title).detail("a service this one depends on did not answer properly");
        if let Some(c) = code {
            p = p.code(c).retry_after(retry_after);
        }
        p
    }
}

impl IntoResponse for ClientError {
    fn into_response(self) -> AxumResponse {
        Problem::from(self).into_response()
    }
}

/// An upstream's answer, with its body read in full (within the cap).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    upstream: Arc<str>,
}

impl Response {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Decode { upstream: self.upstream.to_string(), message: e.to_string() })
    }
}

/// A request to send with [`Client::send`].
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Option<Bytes>,
    timeout: Option<Duration>,
}

impl Request {
    /// `method path` (the path is joined to the upstream's base URL).
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self { method, path: path.into(), headers: HeaderMap::new(), body: None, timeout: None }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path (and query), as given to [`Request::new`].
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Cuts each attempt of this request at `timeout` when that is shorter than the upstream's
    /// `request_timeout` (a call that must answer sooner than the upstream's slowest). Still cut
    /// to the caller's own remaining time.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// A JSON body.
    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Result<Self, serde_json::Error> {
        self.body = Some(Bytes::from(serde_json::to_vec(body)?));
        self.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(self)
    }

    /// A raw body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Safe to send twice: an idempotent method, or an `Idempotency-Key`.
    fn retryable(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
            || self.headers.contains_key("idempotency-key")
    }
}

/// The metric families of a service's clients.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    bulkhead: BulkheadMetrics,
}

impl ClientMetrics {
    /// Registers the families in `metrics`.
    pub fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_client_requests_total",
                "Outbound HTTP attempts by upstream, method and status (or error).",
            ),
            &["upstream", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_client_request_duration_seconds", "Outbound HTTP attempt duration.")
                .buckets(super::metrics::DURATION_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("http_client_retries_total", "Outbound retries made, and refused because the budget was spent."),
            &["upstream", "result"],
        )?;
        metrics.register(requests.clone())?;
        metrics.register(duration.clone())?;
        metrics.register(retries.clone())?;
        Ok(Self { requests, duration, retries, bulkhead: BulkheadMetrics::new(metrics.registry())? })
    }
}

/// Installs the TLS crypto provider (ring) once per process; HTTPS calls need it.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for one upstream. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    name: Arc<str>,
    base: String,
    cfg: Arc<UpstreamConfig>,
    http: reqwest::Client,
    retry: Retry,
    breaker: Arc<CircuitBreaker>,
    bulkhead: Bulkhead,
    metrics: Option<ClientMetrics>,
    /// `upstreams.<name>.proxy_secret` as a header value.
    proxy_secret: Option<HeaderValue>,
}

/// The host and port of a base URL (`http://users:8080`), the port defaulting to the scheme's.
fn server_address(base: &str) -> (Option<&str>, Option<u16>) {
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if h.ends_with(']') || !h.contains(':') => (h, p.parse().ok()),
        _ => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() { (None, None) } else { (Some(host), Some(port.unwrap_or(default))) }
}

/// `base` with any `user:password@` replaced as the semantic conventions ask (`url.full` must not
/// carry credentials).
fn without_credentials(base: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = base.split_once("://") else { return base.into() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://REDACTED:REDACTED@{host}{path}").into(),
        None => base.into(),
    }
}

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

impl Client {
    /// A client for upstream `name`; `breaker` comes from the service's breaker registry.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        breaker: Arc<CircuitBreaker>,
        metrics: Option<ClientMetrics>,
    ) -> Result<Self, ClientError> {
        install_tls_provider();
        let mut builder = reqwest::Client::builder();
        if cfg.tls.is_set() {
            // A pinned CA or a client certificate: Keel's own rustls configuration (ring).
            let tls = cfg
                .tls
                .rustls(&format!("upstreams.{name}.tls"), &[b"h2", b"http/1.1"])
                .map_err(|e| ClientError::Invalid { upstream: name.to_owned(), message: e.to_string() })?;
            builder = builder.use_preconfigured_tls(rustls::ClientConfig::clone(&tls));
        }
        let http = builder
            .connect_timeout(cfg.connect_timeout)
            // Shorter than the servers' idle keep-alive (Keel's closes idle connections after
            // `http.header_read_timeout`, 10 s; Node's after 5 s): reusing a connection the server
            // is closing fails a request that was never seen, and a POST cannot be retried.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Invalid { upstream: name.to_owned(), message: e.to_string() })?;
        let bulkhead = Bulkhead::new(name, cfg.bulkhead.clone(), metrics.as_ref().map(|m| m.bulkhead.clone()));
        if let Some(m) = &metrics {
            // Both results exist at zero from the start, so `rate()` has a series before the first retry.
            for result in ["made", "budget_exhausted"] {
                let _ = m.retries.with_label_values(&[name, result]);
            }
        }
        if let Some(path) = &cfg.health_path {
            // While the breaker is open, the upstream's readiness decides when trials start.
            let (probe_http, url) = (http.clone(), format!("{}{path}", cfg.base_url.trim_end_matches('/')));
            let limit = cfg.request_timeout.min(Duration::from_secs(1));
            breaker.set_readiness_probe(Arc::new(move || {
                let request = probe_http.get(&url).timeout(limit).send();
                Box::pin(async move { request.await.is_ok_and(|r| r.status().is_success()) })
            }));
        }
        let proxy_secret = match &cfg.proxy_secret {
            Some(s) => {
                let mut value = HeaderValue::from_str(s.expose()).map_err(|_| ClientError::Invalid {
                    upstream: name.to_owned(),
                    message: "proxy_secret must be visible ASCII".into(),
                })?;
                // Kept out of debug output and HPACK's tables.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            name: name.into(),
            proxy_secret,
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            cfg: Arc::new(cfg.clone()),
            http,
            retry: Retry::new(cfg.retry.clone()),
            breaker,
            bulkhead,
            metrics,
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream's breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.send(Request::new(Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<Response, ClientError> {
        let req = Request::new(Method::POST, path)
            .json(body)
            .map_err(|e| ClientError::Invalid { upstream: self.name.to_string(), message: e.to_string() })?;
        self.send(req).await
    }

    /// Sends `req` (see the module docs for what happens on the way).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call releases its bulkhead slot and breaker permit.
    pub async fn send(&self, req: Request) -> Result<Response, ClientError> {
        let _slot = self
            .bulkhead
            .acquire()
            .await
            .map_err(|source| ClientError::Bulkhead { upstream: self.name.to_string(), source })?;
        let retryable_request = req.retryable();
        let req = &req;
        self.retry
            .run_observed(
                |attempt| self.attempt(req, attempt),
                // A connection that was never made sent nothing: safe to try again for any method.
                |out| matches!(out, Err(ClientError::Unreachable { .. })) || (retryable_request && should_retry(out)),
                |attempt, why| {
                    if let Some(m) = &self.metrics {
                        if attempt > 1 {
                            m.retries.with_label_values(&[&self.name, "made"]).inc_by(u64::from(attempt - 1));
                        }
                        if why == GaveUp::Budget {
                            m.retries.with_label_values(&[&self.name, "budget_exhausted"]).inc();
                        }
                    }
                },
            )
            .await
    }

    async fn attempt(&self, req: &Request, attempt: u32) -> Result<Response, ClientError> {
        let upstream = || self.name.to_string();
        // The path is joined to the base URL: it must stay a path, or `@evil.com/x` or
        // `.evil.com` would change the host.
        if !req.path.starts_with('/') || req.path.starts_with("//") {
            return Err(ClientError::Invalid {
                upstream: upstream(),
                message: "the path must start with a single /".into(),
            });
        }
        let ctx = super::context::current();
        let mut timeout = req.timeout.map_or(self.cfg.request_timeout, |t| t.min(self.cfg.request_timeout));
        let mut cut_by_caller = false;
        if let Some(left) = ctx.as_ref().and_then(super::context::RequestContext::remaining) {
            if left < Duration::from_millis(1) {
                return Err(ClientError::DeadlineExceeded { upstream: upstream() });
            }
            if left < timeout {
                timeout = left;
                cut_by_caller = true;
            }
        }
        let permit =
            self.breaker.try_acquire().map_err(|source| ClientError::BreakerOpen { upstream: upstream(), source })?;
        let url = format!("{}{}", self.base, req.path);
        // The path only: a query string may carry secrets.
        let path = req.path.split('?').next().unwrap_or_default();
        let (host, port) = server_address(&self.base);
        let span = tracing::info_span!(
            "http.client",
            otel.name = %req.method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            upstream = &*self.name,
            attempt,
            http.request.method = %req.method,
            url.full = format_args!("{}{path}", without_credentials(&self.base)),
            url.path = path,
            server.address = host,
            server.port = port,
            // Semantic conventions: set only on a resend.
            http.request.resend_count = (attempt > 1).then(|| attempt - 1),
            http.response.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = async {
            let mut headers = req.headers.clone();
            keel_telemetry::inject_current(&mut headers);
            if let Some(id) = ctx.as_ref().and_then(|c| c.request_id.clone()) {
                headers.insert(super::request_id::HEADER.clone(), id.0);
            }
            headers.insert(TIMEOUT_HEADER_NAME.clone(), HeaderValue::from(timeout.as_millis() as u64));
            if let Some(secret) = &self.proxy_secret {
                headers.insert(super::proxy_secret::HEADER.clone(), secret.clone());
            }
            let mut builder = self.http.request(req.method.clone(), &url).headers(headers).timeout(timeout);
            if let Some(b) = &req.body {
                builder = builder.body(b.clone());
            }
            let mut resp = builder.send().await.map_err(|e| self.transport(e, timeout))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            // Read within the cap, stopping the moment it is passed.
            let limit = self.cfg.max_response_bytes;
            if resp.content_length().is_some_and(|n| n > limit as u64) {
                return Err(ClientError::TooLarge { upstream: self.name.to_string(), limit });
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e, timeout))? {
                if body.len() + chunk.len() > limit {
                    return Err(ClientError::TooLarge { upstream: self.name.to_string(), limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response { status, headers, body: body.freeze(), upstream: self.name.clone() })
        }
        .instrument(span.clone())
        .await;
        let took = started.elapsed();
        // A timeout set by the caller's deadline is the caller's; an invalid request is ours.
        let result = match result {
            Err(ClientError::Timeout { .. }) if cut_by_caller => {
                Err(ClientError::DeadlineExceeded { upstream: upstream() })
            }
            other => other,
        };
        match &result {
            // A Keel service refusing at capacity answered at once: neither a failure nor a
            // success of the upstream (see `Problem::overloaded`).
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE && r.headers.contains_key(OVERLOADED) => drop(permit),
            Ok(r) if r.status.is_server_error() => permit.record(BreakerOutcome::Failure),
            Ok(_) => permit.record(BreakerOutcome::Success),
            Err(ClientError::DeadlineExceeded { .. } | ClientError::Invalid { .. }) => drop(permit),
            Err(_) => permit.record(BreakerOutcome::Failure),
        }
        let status_label = match &result {
            Ok(r) => {
                span.record("http.response.status_code", r.status.as_u16());
                if r.status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                r.status.as_str().to_owned()
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
                "error".to_owned()
            }
        };
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[&self.name, req.method.as_str(), &status_label]).inc();
            m.duration.with_label_values(&[&self.name]).observe(took.as_secs_f64());
        }
        result
    }

    fn transport(&self, e: reqwest::Error, timeout: Duration) -> ClientError {
        if e.is_builder() {
            ClientError::Invalid { upstream: self.name.to_string(), message: keel_health::sanitize(&e.to_string()) }
        } else if e.is_connect() {
            // Connecting failed or timed out: nothing was sent.
            ClientError::Unreachable { upstream: self.name.to_string(), message: keel_health::sanitize(&e.to_string()) }
        } else if e.is_timeout() {
            ClientError::Timeout { upstream: self.name.to_string(), after: timeout }
        } else {
            ClientError::Transport { upstream: self.name.to_string(), message: keel_health::sanitize(&e.to_string()) }
        }
    }

    /// A readiness check `upstream:<name>` hitting `health_path`, if configured.
    pub fn health_check(&self) -> Option<impl keel_health::HealthCheck> {
        let path = self.cfg.health_path.clone()?;
        let (http, url) = (self.http.clone(), format!("{}{path}", self.base));
        let limit = self.cfg.request_timeout.min(Duration::from_secs(2));
        let check = Check::new(format!("upstream:{}", self.name), Kind::Readiness, move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url).timeout(limit).send().await {
                    Ok(r) if r.status().is_success() => Outcome::Up,
                    Ok(r) => Outcome::down(format!("{} answered {}", url, r.status())),
                    Err(e) => Outcome::down(keel_health::sanitize(&e.to_string())),
                }
            }
        })
        .timeout(limit + Duration::from_millis(200));
        Some(if self.cfg.required { check } else { check.optional() })
    }
}

fn should_retry(out: &Result<Response, ClientError>) -> bool {
    match out {
        Ok(r) => {
            matches!(r.status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
        }
        Err(ClientError::Timeout { .. } | ClientError::Transport { .. }) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_of_a_base_url() {
        assert_eq!(server_address("http://users:8080"), (Some("users"), Some(8080)));
        assert_eq!(server_address("https://api.example/v1"), (Some("api.example"), Some(443)));
        assert_eq!(server_address("http://u:p@[::1]:9000/x"), (Some("::1"), Some(9000)));
        assert_eq!(server_address("http://"), (None, None));
    }

    #[test]
    fn url_full_never_carries_credentials() {
        assert_eq!(without_credentials("http://u:secret@users:8080/v1"), "http://REDACTED:REDACTED@users:8080/v1");
        assert_eq!(without_credentials("http://users:8080"), "http://users:8080");
    }
}
