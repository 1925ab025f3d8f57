//! The HTTP server stack every Keel service gets, and its parts.
//!
//! Layers, outermost first (each is its own module with a `Layer` + `Service` pair):
//!
//! 1. [`security_headers`] — `nosniff`, `DENY`, `no-referrer`, HSTS when configured.
//! 2. [`cors`] — exact-origin allowlist; preflights answered here.
//! 3. [`catch_panic`] — a panic anywhere below becomes a 500 problem; the panic is logged.
//! 4. [`request_id`] — accept a well-formed `X-Request-ID` or make one; echo it.
//! 5. [`trace`] — the `request` span (continuing the caller's `traceparent`) and access log.
//! 6. [`metrics`] — `http_server_*` metrics labelled by route template.
//! 7. [`timeout`] — `http.request_timeout`, then 504 problem.
//! 8. body limit — `http.body_limit` via `axum::extract::DefaultBodyLimit` (413 problem);
//!    a route can override it with its own `DefaultBodyLimit` route layer.
//! 9. [`load_shed`] — over `http.max_in_flight` requests in flight, 503 + `Retry-After`.
//! 10. [`compression`] — gzip when the client accepts it.
//! 11. [`problems`] — bare framework errors (extractor rejections, 404, 405) become problems.
//!
//! The order matters: security headers and CORS are outermost so that the stack's own answers
//! (a panic's 500, a timeout's 504, an overload 503) carry them too — a browser can then read
//! the problem and its `Retry-After` instead of seeing an opaque CORS failure; the request id
//! exists before the span so every log line has it; trace and metrics wrap timeout and
//! shedding so those answers are traced and counted; everything runs after routing
//! (`Router::layer`) so the route template is known.
//!
//! [`stack`] runs all these as one service (the private `pipeline` module): the same answers,
//! without the cost of stacking (each layer moving the request and the response future once
//! more), and a panic in a handler counted as the 500 it becomes (see the module's docs for the
//! exact differences). It sets the body limit only on requests that have a body. The modules
//! above remain, each usable on its own.
//!
//! Probes (`/health/*`, `/healthz`, `/livez`, `/readyz`) get only security headers,
//! catch-panic, request-id and metrics: they are never shed, timed out, CORS-checked or
//! access-logged, so an overloaded instance is not killed by its liveness probe and probe
//! traffic does not flood the logs.

pub mod catch_panic;
#[cfg(feature = "client")]
pub mod client;
pub mod client_ip;
pub mod compression;
pub mod context;
pub mod cors;
pub mod load_shed;
mod macros;
pub mod metrics;
mod pipeline;
pub mod problem;
pub mod problems;
pub mod request_id;
pub mod security_headers;
pub mod timeout;
pub mod trace;

use axum::Router;

pub use problem::Problem;

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
/// use keel::http::bearer_token;
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

use crate::config::KeelConfig;
use crate::telemetry::Metrics;

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
}

impl StackHandle {
    /// API requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.shed.in_flight()
    }
}

/// Wraps `api` in the full stack and `probes` in the light one, and merges them.
pub fn stack(
    service: &str,
    cfg: &KeelConfig,
    metrics: &Metrics,
    api: Router,
    probes: Router,
) -> Result<(Router, StackHandle), StackError> {
    let layers = pipeline::Layers::from_config(service, cfg, metrics)?;
    let (http_metrics, shed) = (layers.metrics.clone(), layers.shed.clone());
    // One `Router::layer` call with the whole stack as one service (see `pipeline`): axum
    // boxes the route again for every `layer` call, and each box is a clone and an
    // allocation per request.
    let api = api.layer(pipeline::PipelineLayer::new(layers));
    let probes = probes.layer(http_metrics).layer(request_id::RequestIdLayer).layer(catch_panic::CatchPanicLayer);
    // `merge` keeps the fallback of its argument when neither router set one: the API's,
    // which has the full stack, so unmatched paths get problem responses.
    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probes.merge(api)))
        .map_err(|_| StackError::RouteConflict)?;
    Ok((merged, StackHandle { shed }))
}
