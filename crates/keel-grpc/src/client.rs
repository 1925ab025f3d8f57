//! The gRPC client: a tower service that generated tonic clients run on, with the HTTP
//! client's guarantees. One per upstream (`upstreams.<name>`), made by `Setup::grpc_client`.
//!
//! Every call gets, in this order:
//!
//! 1. a **deadline**: `upstreams.<name>.request_timeout`, cut to the caller's remaining time
//!    (the request context), sent as `grpc-timeout`; a caller already out of time gets
//!    `DEADLINE_EXCEEDED` without a call;
//! 2. **retries** with backoff and the upstream's retry budget, for methods declared
//!    idempotent ([`GrpcClient::idempotent`]) only, on `UNAVAILABLE` and on attempts that
//!    timed out or failed in transport, and only while nothing of the answer was given to the
//!    caller (gRFC A6: a trailers-only answer or no answer); their requests (at most
//!    [`REPLAY_LIMIT`]) are kept to be sent again;
//! 3. per attempt, the upstream's **circuit breaker**: `UNAVAILABLE`, `DEADLINE_EXCEEDED` (not
//!    the caller's own), `INTERNAL`, `UNKNOWN`, `DATA_LOSS` and transport failures count as
//!    failures; an open breaker answers `UNAVAILABLE` at once, without a call;
//! 4. **propagation** of `traceparent`, `x-request-id` and the deadline, and a `grpc.client`
//!    span per attempt;
//! 5. a **connect timeout** (`connect_timeout`), TCP without Nagle, TLS from
//!    `upstreams.<name>.tls` for `https://` (a pinned CA, a client certificate).
//!
//! Metrics: `grpc_client_handled_total{upstream,grpc_service,grpc_method,grpc_code}` per
//! attempt, `grpc_client_handling_seconds{upstream,grpc_service,grpc_method}` and
//! `grpc_client_retries_total{upstream,result}`, plus the breaker's.
//!
//! ```ignore
//! let symbols = s.grpc_client("symbols")?                 // upstreams.symbols.*
//!     .idempotent(["/symbols.v1.Symbols/GetSymbol", "/symbols.v1.Symbols/ListSymbols"]);
//! let mut api = SymbolsClient::new(symbols);               // any generated tonic client
//! let symbol = api.get_symbol(GetSymbolRequest { .. }).await?;
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;
use tracing::Instrument;

use crate::body::Observed;
use crate::connect::Connector;
use crate::deadline::{GRPC_TIMEOUT, timeout_value};
use crate::method::{UNKNOWN, split};
use crate::metrics::{DURATION_BUCKETS, code_label};
use crate::status::{Code, Status, code_in, response};
use keel_health::{Check, Kind, Outcome};
use keel_http::client::UpstreamConfig;
use keel_resilience::breaker::{CircuitBreaker, Outcome as BreakerOutcome, OwnedPermit, try_acquire_owned};
use keel_resilience::retry::{GaveUp, Retry};
use keel_telemetry::Metrics;

/// The largest request kept to be sent again (an idempotent method's); a larger one is sent
/// once.
pub const REPLAY_LIMIT: usize = 4 << 20;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcClientError {
    /// `base_url` is not a usable endpoint.
    #[error("upstreams.{upstream}.base_url: {message}")]
    Endpoint {
        /// The upstream.
        upstream: String,
        /// What is wrong.
        message: String,
    },
    /// A file of `upstreams.<name>.tls` cannot be read or used.
    #[error(transparent)]
    Tls(#[from] keel_tls::TlsError),
}

/// The metric families of a service's gRPC clients.
#[derive(Debug, Clone)]
pub struct GrpcClientMetrics {
    handled: IntCounterVec,
    seconds: HistogramVec,
    retries: IntCounterVec,
}

impl GrpcClientMetrics {
    /// Registers the families in `metrics`.
    pub fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let handled = IntCounterVec::new(
            Opts::new("grpc_client_handled_total", "gRPC call attempts completed by the client, by status code."),
            &["upstream", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("grpc_client_handling_seconds", "Time from a gRPC call attempt's start to its end.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream", "grpc_service", "grpc_method"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("grpc_client_retries_total", "gRPC retries made, and refused because the budget was spent."),
            &["upstream", "result"],
        )?;
        metrics.register(handled.clone())?;
        metrics.register(seconds.clone())?;
        metrics.register(retries.clone())?;
        Ok(Self { handled, seconds, retries })
    }
}

/// A client for one gRPC upstream; hand it (cloned) to generated tonic clients. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    inner: Arc<Inner>,
    channel: Channel,
}

#[derive(Debug, Clone)]
struct Inner {
    name: Arc<str>,
    request_timeout: Duration,
    retry: Retry,
    breaker: Arc<CircuitBreaker>,
    metrics: Option<GrpcClientMetrics>,
    idempotent: HashSet<String>,
}

impl GrpcClient {
    /// A client for upstream `name` (`cfg.base_url`, `http://` or `https://`); `breaker` comes
    /// from the service's breaker registry. Connects on first use.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        breaker: Arc<CircuitBreaker>,
        metrics: Option<GrpcClientMetrics>,
    ) -> Result<Self, GrpcClientError> {
        let endpoint = |message: String| GrpcClientError::Endpoint { upstream: name.to_owned(), message };
        let tls = if cfg.base_url.starts_with("https://") {
            let config = cfg.tls.rustls(&format!("upstreams.{name}.tls"), &[b"h2"])?;
            let server_name = match &cfg.tls.server_name {
                Some(n) => Some(
                    rustls::pki_types::ServerName::try_from(n.clone())
                        .map_err(|e| endpoint(format!("tls.server_name: {e}")))?,
                ),
                None => None,
            };
            Some((config, server_name))
        } else {
            None
        };
        let channel = Endpoint::from_shared(endpoint_url(&cfg.base_url))
            .map_err(|e| endpoint(e.to_string()))?
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| endpoint(e.to_string()))?
            .connect_with_connector_lazy(Connector { tls });
        if let Some(m) = &metrics {
            for result in ["made", "budget_exhausted"] {
                let _ = m.retries.with_label_values(&[name, result]);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                request_timeout: cfg.request_timeout,
                retry: Retry::new(cfg.retry.clone()),
                breaker,
                metrics,
                idempotent: HashSet::new(),
            }),
            channel,
        })
    }

    /// Declares methods safe to send more than once (`/symbols.v1.Symbols/GetSymbol`; the
    /// leading `/` may be left out): only these are retried. A `.proto`'s
    /// `idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT` methods are the ones to list.
    #[must_use]
    pub fn idempotent<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: AsRef<str>,
    {
        let paths = methods.into_iter().map(|m| format!("/{}", m.as_ref().trim_start_matches('/')));
        Arc::make_mut(&mut self.inner).idempotent.extend(paths);
        self
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The upstream's breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// A readiness check `upstream:<name>` asking the upstream's `grpc.health.v1` whether it
    /// is `SERVING` (`service` `""`: the whole server). Add it with `Setup::health_check`.
    pub fn health_check(&self, required: bool) -> impl keel_health::HealthCheck + use<> {
        let channel = self.channel.clone();
        let limit = self.inner.request_timeout.min(Duration::from_secs(2));
        let check = Check::new(format!("upstream:{}", self.inner.name), Kind::Readiness, move || {
            let channel = channel.clone();
            async move {
                match check_health(channel, "", limit).await {
                    Ok(true) => Outcome::Up,
                    Ok(false) => Outcome::down("grpc.health.v1 answers NOT_SERVING"),
                    Err(s) => Outcome::down(format!("grpc.health.v1: {}", code_label(s.code()))),
                }
            }
        })
        .timeout(limit + Duration::from_millis(200));
        if required { check } else { check.optional() }
    }
}

/// Asks `channel`'s `grpc.health.v1` whether `service` is `SERVING`, within `timeout`.
pub async fn check_health(channel: Channel, service: &str, timeout: Duration) -> Result<bool, Status> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: service.to_owned() });
    req.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(req))
        .await
        .map_err(|_| Status::deadline_exceeded("no answer in time"))??;
    Ok(answer.into_inner().status == ServingStatus::Serving as i32)
}

/// An endpoint channel to `url` (`http://127.0.0.1:8080`) with `tls` for `https://`, for
/// probes and tests that need no breaker or retries.
pub fn channel(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(endpoint_url(url))?
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector_lazy(Connector { tls: tls.map(|t| (t, None)) }))
}

/// `url` as tonic's endpoint takes it: `https://` becomes `http://`, TLS being the connector's
/// (see `connect`).
fn endpoint_url(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    }
}

impl tower::Service<Request<tonic::body::Body>> for GrpcClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for the channel itself (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let (inner, channel) = (self.inner.clone(), self.channel.clone());
        Box::pin(async move { inner.call(channel, req).await })
    }
}

/// The request of one attempt: its head, and its body when it can be sent again.
struct Attempt<'a> {
    parts: &'a http::request::Parts,
    body: Payload<'a>,
}

/// An attempt's request body.
enum Payload<'a> {
    /// Sent once, as the caller streams it.
    Once(tonic::body::Body),
    /// Kept, to be sent again.
    Replay(&'a Bytes),
}

/// What an attempt came to, for the retry decision.
enum Tried {
    /// An answer the caller gets (its status may still come in the trailers).
    Answer(Response<Body>),
    /// A failure before any answer: the status the caller gets, and whether it may be retried.
    Failed(Status, bool),
}

impl Inner {
    async fn call(
        self: Arc<Self>,
        channel: Channel,
        req: Request<tonic::body::Body>,
    ) -> Result<Response<Body>, BoxError> {
        let ctx = keel_http::context::current();
        let id = ctx.as_ref().and_then(|c| c.request_id.clone());
        let mut timeout = self.request_timeout;
        let mut cut_by_caller = false;
        if let Some(left) = ctx.as_ref().and_then(keel_http::context::RequestContext::remaining) {
            if left < Duration::from_millis(1) {
                return Ok(response(Status::deadline_exceeded("the caller's deadline passed"), id.as_ref()));
            }
            if left < timeout {
                timeout = left;
                cut_by_caller = true;
            }
        }
        let (mut parts, body) = req.into_parts();
        if let Some(id) = &id {
            parts.headers.insert(keel_http::request_id::HEADER.clone(), id.header_value().clone());
        }
        let path = parts.uri.path().to_owned();
        let (service, method) = split(&path).unwrap_or((UNKNOWN, UNKNOWN));
        let labels = [self.name.to_string(), service.to_owned(), method.to_owned()];
        if !self.idempotent.contains(&path) {
            let attempt = Attempt { parts: &parts, body: Payload::Once(body) };
            return Ok(self.finish(self.attempt(&channel, attempt, 1, timeout, cut_by_caller, &labels).await, &id));
        }
        let replay = match http_body_util::Limited::new(body, REPLAY_LIMIT).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let status = Status::from_error(e);
                return Ok(response(status, id.as_ref()));
            }
        };
        let started = Instant::now();
        let out = self
            .retry
            .run_observed(
                |attempt| {
                    // Each attempt gets what is left of the call's time.
                    let left = timeout.saturating_sub(started.elapsed());
                    let a = Attempt { parts: &parts, body: Payload::Replay(&replay) };
                    self.attempt(&channel, a, attempt, left, cut_by_caller, &labels)
                },
                |out| matches!(out, Tried::Failed(_, true)),
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
            .await;
        Ok(self.finish(out, &id))
    }

    fn finish(&self, out: Tried, id: &Option<keel_http::request_id::RequestId>) -> Response<Body> {
        match out {
            Tried::Answer(resp) => resp,
            Tried::Failed(status, _) => response(status, id.as_ref()),
        }
    }

    async fn attempt(
        &self,
        channel: &Channel,
        a: Attempt<'_>,
        attempt: u32,
        timeout: Duration,
        cut_by_caller: bool,
        labels: &[String; 3],
    ) -> Tried {
        let started = Instant::now();
        let record = {
            let (metrics, labels) = (self.metrics.clone(), labels.clone());
            move |code: Code| {
                if let Some(m) = &metrics {
                    let [upstream, service, method] = &labels;
                    m.handled.with_label_values(&[upstream, service, method, code_label(code)]).inc();
                    m.seconds.with_label_values(&[upstream, service, method]).observe(started.elapsed().as_secs_f64());
                }
            }
        };
        if timeout < Duration::from_millis(1) {
            record(Code::DeadlineExceeded);
            return Tried::Failed(Status::deadline_exceeded("the call's deadline passed"), false);
        }
        let permit = match try_acquire_owned(&self.breaker) {
            Ok(p) => p,
            Err(rejected) => {
                record(Code::Unavailable);
                let mut s = Status::unavailable(format!("upstream {}: circuit open", self.name));
                let millis = u64::try_from(rejected.retry_in.as_millis()).unwrap_or(u64::MAX);
                s.metadata_mut().insert(crate::status::RETRY_PUSHBACK, crate::status::pushback(millis));
                return Tried::Failed(s, false);
            }
        };
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = format_args!("{}/{}", labels[1], labels[2]),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            upstream = &*self.name,
            attempt,
            rpc.system = "grpc",
            rpc.service = labels[1].as_str(),
            rpc.method = labels[2].as_str(),
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let mut req = Request::from_parts(a.parts.clone(), ());
        keel_telemetry::inject_current(req.headers_mut());
        req.headers_mut().insert(GRPC_TIMEOUT, timeout_value(timeout));
        let body = match a.body {
            Payload::Once(b) => b,
            Payload::Replay(bytes) => tonic::body::Body::new(http_body_util::Full::new(bytes.clone())),
        };
        let req = req.map(|()| body);
        let sent = tokio::time::timeout(timeout, channel.clone().oneshot(req)).instrument(span.clone()).await;
        let failed = |code: Code, message: String, retry: bool, permit: OwnedPermit| {
            permit.record(if counts_against(code, cut_by_caller) {
                BreakerOutcome::Failure
            } else {
                BreakerOutcome::Success
            });
            span.record("rpc.grpc.status_code", code as i32);
            span.record("otel.status_code", "error");
            record(code);
            Tried::Failed(Status::new(code, message), retry)
        };
        match sent {
            Err(_) if cut_by_caller => {
                failed(Code::DeadlineExceeded, "the caller's deadline passed".into(), false, permit)
            }
            Err(_) => failed(
                Code::DeadlineExceeded,
                format!("upstream {}: no answer within {timeout:?}", self.name),
                true,
                permit,
            ),
            Ok(Err(e)) => {
                let message = keel_health::sanitize(&format!("upstream {}: {e}", self.name));
                tracing::debug!(parent: &span, error = %message, "gRPC call failed in transport");
                failed(Code::Unavailable, message, true, permit)
            }
            Ok(Ok(resp)) => match code_in(resp.headers()) {
                // Trailers-only: the whole answer is a status, and may be retried.
                Some(code) if code != Code::Ok => {
                    let retry = code == Code::Unavailable;
                    permit.record(if counts_against(code, false) {
                        BreakerOutcome::Failure
                    } else {
                        BreakerOutcome::Success
                    });
                    span.record("rpc.grpc.status_code", code as i32);
                    record(code);
                    if retry {
                        let status = Status::from_header_map(resp.headers()).unwrap_or_else(|| Status::new(code, ""));
                        Tried::Failed(status, true)
                    } else {
                        Tried::Answer(resp.map(Body::new))
                    }
                }
                _ => {
                    let (parts, body) = resp.into_parts();
                    let end_span = span.clone();
                    let on_end = Box::new(move |code: Code| {
                        permit.record(if counts_against(code, false) {
                            BreakerOutcome::Failure
                        } else {
                            BreakerOutcome::Success
                        });
                        end_span.record("rpc.grpc.status_code", code as i32);
                        record(code);
                    });
                    let body = Observed::new(body, &parts.headers, on_end);
                    Tried::Answer(Response::from_parts(parts, Body::new(body)))
                }
            },
        }
    }
}

/// Whether a call that ended with `code` counts against the upstream's breaker (the caller's
/// own deadline does not).
fn counts_against(code: Code, cut_by_caller: bool) -> bool {
    match code {
        Code::DeadlineExceeded => !cut_by_caller,
        Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss => true,
        _ => false,
    }
}
