//! The HTTP server stack every Keel service gets, and its parts.
//!
//! This is `keel-http`, re-exported by `keel` as `keel::http`; of Keel's crates it depends on
//! `keel-config`, `keel-problem` (re-exported as [`problem`]), `keel-tls`, `keel-resilience`,
//! `keel-telemetry` and `keel-health`. [`extract`] holds the extractors whose refusals are
//! problems naming the field.
//!
//! Layers, outermost first (each is its own module with a `Layer` + `Service` pair):
//!
//! 0. [`failures`] — keeps the last 5xx answers with their request ids for the operator page.
//! 1. [`proxy_secret`] — forwarded client addresses only from a proxy that sends
//!    `http.proxy_secret` (when one is set).
//! 2. [`security_headers`] — `nosniff`, `DENY`, `no-referrer`, HSTS when configured.
//! 3. [`cors`] — exact-origin allowlist; preflights answered here.
//! 4. [`request_id`] — accept a well-formed `X-Request-ID` or make one; echo it.
//! 5. [`context`] — the request's id as the current [`context::RequestContext`] below it.
//! 6. [`trace`] — the `request` span (continuing the caller's `traceparent`) and access log.
//! 7. [`metrics`] — `http_server_*` metrics labelled by route template.
//! 8. [`catch_panic`] — a panic anywhere below becomes a 500 problem; the panic is logged.
//! 9. [`timeout`] — `http.request_timeout`, then 504 problem.
//! 10. body limit — `http.body_limit` via `axum::extract::DefaultBodyLimit` (413 problem);
//!     a route can override it with its own `DefaultBodyLimit` route layer.
//! 11. [`load_shed`] — over `http.max_in_flight` requests in flight, 503 + `Retry-After`.
//! 12. [`compression`] — gzip when the client accepts it.
//! 13. [`problems`] — bare framework errors (extractor rejections, 404, 405) become problems.
//!
//! The order matters: security headers and CORS are outermost so that the stack's own answers
//! (a panic's 500, a timeout's 504, an overload 503) carry them too — a browser can then read
//! the problem and its `Retry-After` instead of seeing an opaque CORS failure; the request id
//! exists before the span so every log line has it; trace and metrics wrap catch-panic,
//! timeout and shedding so those answers are traced and counted (a handler's panic is a 500
//! in the access log and in `http_server_requests_total`); everything runs after routing
//! (`Router::layer`) so the route template is known.
//!
//! [`stack`] builds exactly this with one `tower::ServiceBuilder`; each module is also usable
//! on its own, around any `tower::Service<http::Request<B>>`.
//!
//! Probes (`/health/*`, `/healthz`, `/livez`, `/readyz`) get only security headers,
//! request-id, context, metrics and catch-panic: they are never shed, timed out, CORS-checked or
//! access-logged, so an overloaded instance is not killed by its liveness probe and probe
//! traffic does not flood the logs.

pub mod catch_panic;
#[cfg(feature = "client")]
pub mod client;
/// The `upstreams` sections; the client itself needs the `client` feature.
#[cfg(not(feature = "client"))]
pub mod client {
    mod config;
    pub use config::UpstreamConfig;
}
pub mod client_ip;
pub mod compression;
mod config;
pub mod context;
pub mod cors;
pub mod extract;
pub mod failures;
pub mod load_shed;
pub mod middleware;
pub mod page;

/// What Keel's exported macros name, not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use tower;
}
pub mod metrics;
pub use keel_problem as problem;
pub mod problems;
pub mod proxy_secret;
pub mod request_id;
pub mod security_headers;
pub mod timeout;
pub mod trace;

use axum::Router;
use tower::Layer;
use tower::layer::util::{Identity, Stack};

pub use config::{Http2Config, HttpConfig};
pub use cors::CorsConfig;
pub use problem::Problem;
pub use security_headers::HstsConfig;

pub use keel_problem::DEPENDENCY_RETRY_AFTER_SECS;

/// The authenticated caller, put in the request extensions by authentication middleware.
/// Rate limits keyed by `user` count per principal (and per client IP when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);
pub use request_id::RequestId;

/// The token of an `Authorization` header value that uses the `Bearer` scheme, or `None` for
/// another scheme or an empty token. The scheme is matched in any case (`Bearer`, `bearer`,
/// `BEARER`: RFC 9110 §11.1 makes auth-schemes case-insensitive); spaces around the token are
/// not part of it. The admin endpoints and the JWT extractors read the header with this.
///
/// ```
/// use keel_http::bearer_token;
/// assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
/// assert_eq!(bearer_token("bEaReR   abc "), Some("abc"));
/// assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
/// assert_eq!(bearer_token("Bearer "), None);
/// assert_eq!(bearer_token("Bearerabc"), None);
/// ```
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

use keel_telemetry::Metrics;

/// The settings the stack is built from: `http.*`, `cors.*` and `log.access_log`. A
/// `&keel::app::KeelConfig` converts into it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StackConfig<'a> {
    /// The request limits, compression and HSTS.
    pub http: &'a HttpConfig,
    /// Cross-origin resource sharing.
    pub cors: &'a CorsConfig,
    /// One `info` line per finished request.
    pub access_log: bool,
}

impl<'a> StackConfig<'a> {
    /// The stack for these sections.
    pub fn new(http: &'a HttpConfig, cors: &'a CorsConfig, access_log: bool) -> Self {
        Self { http, cors, access_log }
    }
}

/// Why the stack could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// CORS settings are unusable.
    #[error(transparent)]
    Cors(#[from] cors::CorsError),
    /// A metric could not be registered (a name used twice).
    #[error("cannot register HTTP metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The service declares a route Keel reserves for probes.
    #[error(
        "the service's routes overlap routes Keel reserves: /health/*, /healthz, /livez, /readyz (and /metrics, /admin/* when the management listener shares the public one)"
    )]
    RouteConflict,
}

/// What the stack hands back besides the router.
#[derive(Debug, Clone)]
pub struct StackHandle {
    shed: load_shed::LoadShedLayer,
    failures: failures::RecentFailures,
}

impl StackHandle {
    /// API requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.shed.in_flight()
    }

    /// The last server errors the API answered ([`failures`]).
    pub fn recent_failures(&self) -> &failures::RecentFailures {
        &self.failures
    }
}

/// The API stack's layers, outermost last (as `tower::ServiceBuilder` nests them).
type ApiLayers = Stack<
    problems::ProblemsLayer,
    Stack<
        compression::CompressionLayer,
        Stack<
            load_shed::LoadShedLayer,
            Stack<
                axum::extract::DefaultBodyLimit,
                Stack<
                    timeout::TimeoutLayer,
                    Stack<
                        catch_panic::CatchPanicLayer,
                        Stack<
                            metrics::HttpMetricsLayer,
                            Stack<
                                trace::TraceLayer,
                                Stack<
                                    context::RequestContextLayer,
                                    Stack<
                                        request_id::RequestIdLayer,
                                        Stack<
                                            cors::CorsLayer,
                                            Stack<
                                                security_headers::SecurityHeadersLayer,
                                                Stack<
                                                    proxy_secret::ProxySecretLayer,
                                                    Stack<failures::RecentFailuresLayer, Identity>,
                                                >,
                                            >,
                                        >,
                                    >,
                                >,
                            >,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// Keel's API stack as one `tower::Layer`, in the order the module docs give, for any inner
/// `tower::Service<http::Request<B>>` whose body and response types the layers accept (axum's
/// `Router` and routes, a `tower::service_fn`, later a tonic service). [`stack`] puts it around
/// a service's routes; [`KeelLayer::handle`] reports on it.
///
/// ```
/// use axum::{Router, routing::get};
/// use keel_http::{CorsConfig, HttpConfig, KeelLayer, StackConfig};
/// use keel_telemetry::Metrics;
///
/// let (http, cors) = (HttpConfig::default(), CorsConfig::default());
/// let metrics = Metrics::new();
/// let layer = KeelLayer::from_config("demo", StackConfig::new(&http, &cors, true), &metrics).unwrap();
/// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
/// ```
#[derive(Debug, Clone)]
pub struct KeelLayer {
    layers: ApiLayers,
    http_metrics: metrics::HttpMetricsLayer,
    shed: load_shed::LoadShedLayer,
    failures: failures::RecentFailures,
}

impl KeelLayer {
    /// The stack for `service` as `cfg` sets it, recording into `metrics` (registers the
    /// `http_server_*` metrics there, so build one per registry).
    pub fn from_config<'a>(
        service: &str,
        cfg: impl Into<StackConfig<'a>>,
        metrics: &Metrics,
    ) -> Result<Self, StackError> {
        let cfg = cfg.into();
        let http_metrics = metrics::HttpMetricsLayer::new(metrics)?;
        let shed = load_shed::LoadShedLayer::new(cfg.http.max_in_flight).with_metrics(metrics)?;
        let failures = failures::RecentFailures::default();
        let layers = tower::ServiceBuilder::new()
            .layer(failures::RecentFailuresLayer::new(failures.clone()))
            .layer(proxy_secret::ProxySecretLayer::new(cfg.http.proxy_secret.as_ref()))
            .layer(security_headers::SecurityHeadersLayer::new(&cfg.http.hsts))
            .layer(cors::layer(cfg.cors)?)
            .layer(request_id::RequestIdLayer)
            .layer(context::RequestContextLayer)
            .layer(trace::TraceLayer::new(service, cfg.access_log).trusted_proxies(&cfg.http.trusted_proxies))
            .layer(http_metrics.clone())
            .layer(catch_panic::CatchPanicLayer)
            .layer(timeout::TimeoutLayer::new(cfg.http.request_timeout))
            .layer(axum::extract::DefaultBodyLimit::max(cfg.http.body_limit))
            .layer(shed.clone())
            .layer(compression::CompressionLayer::new(cfg.http.compression))
            .layer(problems::ProblemsLayer::new().body_limit(cfg.http.body_limit))
            .into_inner();
        Ok(Self { layers, http_metrics, shed, failures })
    }

    /// What the stack reports while it serves.
    pub fn handle(&self) -> StackHandle {
        StackHandle { shed: self.shed.clone(), failures: self.failures.clone() }
    }
}

impl<S> Layer<S> for KeelLayer {
    type Service = <ApiLayers as Layer<S>>::Service;
    fn layer(&self, inner: S) -> Self::Service {
        self.layers.layer(inner)
    }
}

/// Wraps `api` in the full stack ([`KeelLayer`]) and `probes` in the light one, and merges them.
pub fn stack<'a>(
    service: &str,
    cfg: impl Into<StackConfig<'a>>,
    metrics: &Metrics,
    api: Router,
    probes: Router,
) -> Result<(Router, StackHandle), StackError> {
    let cfg = cfg.into();
    let keel = KeelLayer::from_config(service, cfg, metrics)?;
    let (http_metrics, handle) = (keel.http_metrics.clone(), keel.handle());
    // One `Router::layer` call: axum boxes the route once per call.
    let api = api.layer(keel);
    let probes = probes.layer(
        tower::ServiceBuilder::new()
            .layer(security_headers::SecurityHeadersLayer::new(&cfg.http.hsts))
            .layer(request_id::RequestIdLayer)
            .layer(context::RequestContextLayer)
            .layer(http_metrics)
            .layer(catch_panic::CatchPanicLayer),
    );
    // `merge` keeps the fallback of its argument when neither router set one: the API's,
    // which has the full stack, so unmatched paths get problem responses.
    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probes.merge(api)))
        .map_err(|_| StackError::RouteConflict)?;
    Ok((merged, handle))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use tower::{Layer, ServiceExt};

    use super::{CorsConfig, HttpConfig, KeelLayer, StackConfig};
    use keel_telemetry::Metrics;

    #[tokio::test]
    async fn the_layer_wraps_a_plain_tower_service() {
        let metrics = Metrics::new();
        let layer = KeelLayer::from_config(
            "plain",
            StackConfig::new(&HttpConfig::default(), &CorsConfig::default(), true),
            &metrics,
        )
        .unwrap();
        let svc = layer.layer(tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(Body::from("plain")))
        }));
        let req = http::Request::builder().uri("/x").header("x-request-id", "abc-1").body(Body::empty()).unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-request-id"], "abc-1");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        let text = metrics.render();
        assert!(
            text.lines().any(|l| l.starts_with("http_server_requests_total") && l.contains("status=\"200\"")),
            "{text}"
        );
        assert_eq!(layer.handle().in_flight(), 0);
    }
}
