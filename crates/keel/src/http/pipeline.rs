//! Keel's stack as one service.
//!
//! [`stack`](super::stack) uses this instead of stacking [`SecurityHeadersLayer`], the CORS
//! layer, [`CatchPanicLayer`](super::catch_panic::CatchPanicLayer),
//! [`RequestIdLayer`](super::request_id::RequestIdLayer), [`TraceLayer`],
//! [`HttpMetricsLayer`], [`TimeoutLayer`](super::timeout::TimeoutLayer), `DefaultBodyLimit`,
//! [`LoadShedLayer`], [`CompressionLayer`] and [`ProblemsLayer`]. It answers requests as that
//! stack would (but for the differences below), through the same functions of those modules,
//! but in one `call` and one response future.
//! Stacked, each layer moved the request (about 250 bytes) and the growing response future
//! once more, cloned its own shared state for every request, looked up the request headers it
//! needs by name, read the clock on its own and polled the layer under it.
//!
//! Compression and problems are not kept here: a request that offers an encoding has both
//! put around the routes for it alone, and goes through them as stacked (so the service axum
//! clones for every request stays the routes and one `Arc`). One that offers none (or with
//! `http.compression` off) cannot be compressed, so it goes past them to the routes, and the
//! pipeline makes its error answers problem documents itself, with the id and route it
//! already holds, as the problems layer would.
//!
//! The stacked layers stay, for use on their own. Differences, on purpose: a panic in the
//! routes (their `call`, their future, the rewrite of their error) is caught inside the request
//! span, metrics and access log, so it is counted and logged as a 500 like any other; stacked,
//! catch-panic sits outside them and such a request was neither. A panic in Keel's own
//! recording of the answer (a subscriber that panics, say) is still answered with a 500, not
//! counted. A panic while making the request span is logged and the request served without
//! the span; stacked, it was answered with a 500.
//!
//! The body limit is set here too, as `DefaultBodyLimit`'s layer sets it (an extension a route
//! can override with its own), but only on requests whose body is not known to be empty
//! (`is_end_stream`): an empty one can exceed no limit, and the extension cost an allocation
//! and a map insert per request. (A route middleware that swapped an empty body for another
//! would get axum's default limit for it.)

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::response::Response;
use http::{Request, header};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::compression::CompressionLayer;
use super::cors::CorsLayer;
use super::load_shed::LoadShedLayer;
use super::metrics::HttpMetricsLayer;
use super::problem::Problem;
use super::problems::ProblemsLayer;
use super::request_id::{self, RequestId};
use super::security_headers::SecurityHeadersLayer;
use super::trace::TraceLayer;
use super::{catch_panic, compression, context, load_shed, problems, timeout, trace};
use crate::telemetry::RequestSpan;

/// Keel's stack as one layer; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct PipelineLayer {
    // One `Arc`: axum clones the layered service for every request.
    shared: Arc<Layers>,
}

/// The layers [`PipelineLayer`] does the work of, outermost first.
#[derive(Debug)]
pub(crate) struct Layers {
    pub(crate) security_headers: SecurityHeadersLayer,
    pub(crate) cors: CorsLayer,
    pub(crate) trace: TraceLayer,
    pub(crate) metrics: HttpMetricsLayer,
    pub(crate) timeout: timeout::TimeoutLayer,
    pub(crate) shed: LoadShedLayer,
    pub(crate) compression: CompressionLayer,
    pub(crate) body_limit: axum::extract::DefaultBodyLimit,
}

impl Layers {
    /// The layers of Keel's stack for `service`, as `cfg` sets them, recording into `metrics`.
    pub(crate) fn from_config(
        service: &str,
        cfg: &crate::config::KeelConfig,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, super::StackError> {
        Ok(Self {
            security_headers: SecurityHeadersLayer::new(&cfg.http.hsts),
            cors: super::cors::layer(&cfg.cors)?,
            trace: TraceLayer::new(service, cfg.log.access_log),
            metrics: HttpMetricsLayer::new(metrics)?,
            timeout: timeout::TimeoutLayer::new(cfg.http.request_timeout),
            shed: LoadShedLayer::new(cfg.http.max_in_flight).with_metrics(metrics)?,
            compression: CompressionLayer::new(cfg.http.compression),
            body_limit: axum::extract::DefaultBodyLimit::max(cfg.http.body_limit),
        })
    }
}

impl PipelineLayer {
    /// Does what these layers, stacked as [`stack`](super::stack) documents, would do.
    pub(crate) fn new(layers: Layers) -> Self {
        Self { shared: Arc::new(layers) }
    }
}

impl<S> Layer<S> for PipelineLayer {
    type Service = Pipeline<S>;
    fn layer(&self, inner: S) -> Pipeline<S> {
        Pipeline { inner: Core { inner, shared: self.shared.clone() } }
    }
}

/// The service made by [`PipelineLayer`]: CORS around [`Core`] for requests with an `Origin`.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline<S> {
    inner: Core<S>,
}

/// Everything from catch-panic to the routes: only the routes and the shared layers (see the
/// module docs on compression and problems).
#[derive(Debug, Clone)]
pub(crate) struct Core<S> {
    inner: S,
    shared: Arc<Layers>,
}

impl<S, ReqB> Service<Request<ReqB>> for Pipeline<S>
where
    S: Service<Request<ReqB>, Response = Response> + Clone,
    ReqB: http_body::Body,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let seen = Seen::scan(req.headers());
        if !seen.origin {
            // No CORS to do but `Vary`, added with the security headers when the core is done.
            return ResponseFuture { kind: Kind::Plain { fut: self.inner.start(req, seen, true) } };
        }
        // The ready inner service goes to tower_http's CORS; a clone stays for next time.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let mut cors = self.inner.shared.cors.tower().layer(ready);
        let headers = self.inner.shared.security_headers.clone();
        ResponseFuture { kind: Kind::Cors { fut: Box::pin(cors.call(req)), headers } }
    }
}

pin_project! {
    /// Response future of [`Pipeline`].
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Plain { #[pin] fut: CoreFuture<F> },
        // Boxed: tower-http's future carries the CORS headers it will add, which every request
        // would otherwise carry about.
        Cors {
            fut: Pin<Box<tower_http::cors::ResponseFuture<CoreFuture<F>>>>,
            headers: SecurityHeadersLayer,
        },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Plain { fut } => fut.poll(cx),
            KindProj::Cors { fut, headers } => {
                let mut out = std::task::ready!(fut.as_mut().poll(cx));
                if let Ok(resp) = &mut out {
                    headers.apply(resp.headers_mut());
                }
                Poll::Ready(out)
            }
        }
    }
}

impl<S, ReqB> Service<Request<ReqB>> for Core<S>
where
    S: Service<Request<ReqB>, Response = Response> + Clone,
    ReqB: http_body::Body,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CoreFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let seen = Seen::scan(req.headers());
        self.start(req, seen, false)
    }
}

/// The request headers the pipeline reads, found in one pass over them: a request carries
/// few headers, and looking each of these up by name hashed the name every time (the custom
/// ones byte by byte).
struct Seen {
    origin: bool,
    traceparent: bool,
    accept_encoding: bool,
    /// The first `X-Request-ID` made an id (if valid), and how many were sent.
    request_id: Option<RequestId>,
    request_ids: usize,
    /// What the first `x-request-timeout-ms` asked for (`None` inside if it is not a number).
    asked: Option<Option<Duration>>,
}

impl Seen {
    fn scan(headers: &http::HeaderMap) -> Self {
        let mut seen = Seen {
            origin: false,
            traceparent: false,
            accept_encoding: false,
            request_id: None,
            request_ids: 0,
            asked: None,
        };
        for (name, value) in headers {
            // The length first: most names differ from all five in it.
            match name.as_str().len() {
                6 if name == header::ORIGIN => seen.origin = true,
                11 if name == crate::telemetry::TRACEPARENT => seen.traceparent = true,
                12 if name == request_id::HEADER => {
                    if seen.request_ids == 0 {
                        seen.request_id = RequestId::parse(value);
                    }
                    seen.request_ids += 1;
                }
                15 if name == header::ACCEPT_ENCODING => seen.accept_encoding = true,
                20 if name == context::TIMEOUT_HEADER_NAME && seen.asked.is_none() => {
                    seen.asked = Some(timeout::asked(value));
                }
                _ => {}
            }
        }
        seen
    }
}

impl<S> Core<S> {
    /// Starts a request. `edge`: the answer also gets `Vary: origin` and the security headers
    /// (no CORS layer around this one to do the rest).
    fn start<ReqB>(&mut self, mut req: Request<ReqB>, seen: Seen, edge: bool) -> CoreFuture<S::Future>
    where
        S: Service<Request<ReqB>, Response = Response> + Clone,
        ReqB: http_body::Body,
    {
        let shared = &self.shared;
        if !req.body().is_end_stream() {
            shared.body_limit.apply(&mut req);
        }
        let id = request_id::settle(&mut req, seen.request_id, seen.request_ids);
        let route = req.extensions().get::<MatchedPath>().cloned();
        let (service, method) = (shared.trace.service(), req.method());
        // A panic here (in a propagator or subscriber) loses the span, not the request: it is
        // logged, and the request is served without the span's fields on its lines. Stacked,
        // catch-panic answered it with a 500.
        let span = std::panic::catch_unwind(AssertUnwindSafe(|| {
            RequestSpan::continuing(service, Some(&id), method, route.as_ref(), req.headers(), seen.traceparent)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(request_id = id.as_str(), "making the request span panicked; serving without it");
            RequestSpan::Made(tracing::Span::none())
        });
        let method = super::metrics::method_label(req.method());
        let timeout = timeout::budget(seen.asked.flatten(), shared.timeout.timeout());
        // One clock reading serves the deadline, the latency in the access line and the
        // duration metric.
        let start = Instant::now();
        // What outbound calls made for the request read (see `context`).
        let ctx =
            context::RequestContext { request_id: Some(id.clone()), deadline: Some(timeout::deadline(start, timeout)) };
        shared.metrics.in_flight().inc();
        let admitted = shared.shed.admit();
        // From here until it is dropped, the request counts as in flight (and holds its place
        // among the admitted).
        let state = State { shared: shared.clone(), id, route, method, start, timeout, admitted };
        let stage = if !admitted {
            Stage::Answered { resp: Some(load_shed::shed_response(Some(&state.id))) }
        } else {
            let negotiated = shared.compression.enabled() && seen.accept_encoding;
            let inner = &mut self.inner;
            let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if negotiated {
                    negotiate(inner, shared.compression, req)
                } else {
                    Inner::Plain { fut: inner.call(req) }
                }
            }));
            match called {
                Ok(fut) => Stage::Running { fut },
                Err(payload) => Stage::Answered { resp: Some(catch_panic::panic_response(&state.id, payload)) },
            }
        };
        CoreFuture { stage, span, ctx: Some(ctx), state: Some(state), sleep: None, edge }
    }
}

/// Calls the routes under compression and problems (a request that offers an encoding). The
/// ready routes go under them; a clone stays for next time. Out of line: most requests offer
/// none, and the rest pay far more for compressing.
#[inline(never)]
fn negotiate<S, ReqB>(routes: &mut S, compression: CompressionLayer, req: Request<ReqB>) -> Inner<S::Future>
where
    S: Service<Request<ReqB>, Response = Response> + Clone,
{
    let clone = routes.clone();
    let ready = std::mem::replace(routes, clone);
    Inner::Negotiated { fut: compression.layer(ProblemsLayer.layer(ready)).call(req) }
}

/// A request being handled: counted out of the in-flight gauge (and given back its place
/// among the admitted) when dropped, answered or cancelled.
struct State {
    shared: Arc<Layers>,
    id: RequestId,
    route: Option<MatchedPath>,
    method: &'static str,
    start: Instant,
    timeout: Duration,
    admitted: bool,
}

impl State {
    fn deadline(&self) -> Instant {
        timeout::deadline(self.start, self.timeout)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.shared.metrics.in_flight().dec();
        if self.admitted {
            self.shared.shed.release();
        }
    }
}

pin_project! {
    /// Response future of [`Core`].
    pub(crate) struct CoreFuture<F> {
        #[pin]
        stage: Stage<F>,
        span: RequestSpan,
        // Made current while the routes' future (or the rewrite of its error) is polled, not
        // while either is called or dropped; `None` only during such a poll.
        ctx: Option<context::RequestContext>,
        // `None` once answered.
        state: Option<State>,
        // Made on the first `Pending` only: a request answered in one poll never touches the
        // runtime's timer. Boxed, so the future every request moves about stays small.
        sleep: Option<Pin<Box<Sleep>>>,
        edge: bool,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<F> {
        Running { #[pin] fut: Inner<F> },
        // An error answer being made a problem document.
        Rewriting { fut: problems::BoxFut },
        // Shed, or the inner call panicked; `None` once returned.
        Answered { resp: Option<Response> },
    }
}

pin_project! {
    /// The routes' future, through compression and problems or straight.
    #[project = InnerProj]
    enum Inner<F> {
        Plain { #[pin] fut: F },
        Negotiated { #[pin] fut: compression::ResponseFuture<problems::ResponseFuture<F>> },
    }
}

impl<F, E> Future for Inner<F>
where
    F: Future<Output = Result<Response, E>>,
{
    /// The answer, and whether it still has to go through problems.
    type Output = Result<(Response, bool), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InnerProj::Plain { fut } => fut.poll(cx).map_ok(|r| (r, true)),
            InnerProj::Negotiated { fut } => fut.poll(cx).map_ok(|r| (r, false)),
        }
    }
}

impl<F, E> Future for CoreFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(state) = this.state.as_ref() else {
            // Polled after it answered: the inner future may have panicked, so it is not
            // polled again.
            return Poll::Ready(Ok(Problem::internal().into_response()));
        };
        let (mut stage, sleep, ctx) = (this.stage, this.sleep, this.ctx);
        // Past the deadline, or still in time.
        let mut expired = |cx: &mut Context<'_>| -> Poll<Response> {
            let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(state.deadline())));
            std::task::ready!(sleep.as_mut().poll(cx));
            Poll::Ready(timeout::timed_out(state.timeout, Some(&state.id)))
        };
        let span = this.span;
        // The rest of what the stacked catch-panic layer covered: the deadline, and recording
        // the answer (a subscriber that panics on the access line, say).
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            span.in_scope(|span| {
                let resp = loop {
                    let polled = match stage.as_mut().project() {
                        StageProj::Answered { resp } => {
                            break resp.take().unwrap_or_else(|| Problem::internal().into_response());
                        }
                        // Caught here, so the panic's 500 is counted and logged like any answer.
                        StageProj::Rewriting { fut } => std::panic::catch_unwind(AssertUnwindSafe(|| {
                            context::enter(ctx, || fut.as_mut().poll(cx).map(|r| Ok((r, false))))
                        })),
                        StageProj::Running { fut } => {
                            std::panic::catch_unwind(AssertUnwindSafe(|| context::enter(ctx, || fut.poll(cx))))
                        }
                    };
                    match polled {
                        Ok(Poll::Ready(Ok((resp, true)))) if problems::is_error(resp.status()) => {
                            // Polled in the request's context too, as the problems layer ran
                            // inside the timeout layer's.
                            let rewrite = problems::normalize(resp, Some(state.id.clone()), state.route.clone());
                            stage.set(Stage::Rewriting { fut: Box::pin(rewrite) });
                        }
                        Ok(Poll::Ready(Ok((resp, _)))) => break resp,
                        Ok(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                        Ok(Poll::Pending) => break std::task::ready!(expired(cx)),
                        Err(payload) => break catch_panic::panic_response(&state.id, payload),
                    }
                };
                let status = resp.status();
                // The clock the deadline runs on (tokio's, which tests may pause).
                let elapsed = state.start.elapsed();
                state.shared.metrics.record(state.method, state.route.as_ref(), status, elapsed.as_secs_f64());
                trace::finished(span, status.as_u16(), || elapsed, state.shared.trace.access_log());
                Poll::Ready(Ok(resp))
            })
        }))
        .unwrap_or_else(|payload| Poll::Ready(Ok(catch_panic::panic_response(&state.id, payload))));
        let Poll::Ready(out) = polled else { return Poll::Pending };
        let Some(state) = this.state.take() else { return Poll::Ready(out) };
        let Ok(mut resp) = out else { return Poll::Ready(out) };
        let headers = resp.headers_mut();
        let id = state.id.header_value().clone();
        if !*this.edge {
            headers.insert(request_id::HEADER.clone(), id);
            return Poll::Ready(Ok(resp));
        }
        // The security headers are added only where the handler did not set them, which takes
        // a pass over the answer's header names: made before the id and `Vary` are in, though
        // those two still go first on the wire, as the stacked layers put them.
        state.shared.security_headers.apply_after(headers, 2, |headers| {
            headers.insert(request_id::HEADER.clone(), id);
            headers.append(header::VARY, super::cors::VARY);
        });
        Poll::Ready(Ok(resp))
    }
}

use axum::response::IntoResponse as _;

#[cfg(test)]
mod tests {
    //! The pipeline against the layers it stands for, stacked in the order listed in the
    //! `http` module docs: every answer must be the same, byte for byte.
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{DefaultBodyLimit, Path};
    use axum::response::IntoResponse as _;
    use axum::routing::{get, post};
    use http::{Request, StatusCode};
    use tower::{Service, ServiceExt};

    use crate::config::KeelConfig;
    use crate::http::{RequestId, timeout, trace};
    use crate::http::{catch_panic, compression, cors, load_shed, metrics, problems, request_id, security_headers};
    use crate::telemetry::Metrics;

    /// The request context as a handler sees it, before and after a yield (so on two polls):
    /// its id, and whether its deadline is within 20 ms and within 300 ms. Short, so an offered
    /// gzip never applies and bodies compare as they are.
    async fn context_seen() -> String {
        let before = context_now();
        tokio::task::yield_now().await;
        format!("{before} {}", context_now())
    }

    fn context_now() -> String {
        let ctx = crate::http::context::current();
        let id = ctx.as_ref().and_then(|c| c.request_id.as_ref()).map_or("-", RequestId::as_str).to_owned();
        let left = ctx.as_ref().and_then(crate::http::context::RequestContext::remaining);
        let within = |ms| left.map_or("-", |l| if l <= Duration::from_millis(ms) { "y" } else { "n" });
        format!("{id} {} {}", within(20), within(300))
    }

    /// What `/outer` serves its inner request through.
    static NESTED: std::sync::OnceLock<Router> = std::sync::OnceLock::new();

    fn routes() -> Router {
        Router::new()
            .route("/hello", get(|| async { axum::Json(serde_json::json!({ "message": "hello" })) }))
            .route("/ctx", get(context_seen))
            // A request served in process, inside this one's poll (short enough not to be gzipped).
            .route(
                "/outer",
                get(|| async {
                    let Some(router) = NESTED.get() else { return "-".to_owned() };
                    let inner = request("GET", "/ctx", &[("x-request-id", "in-1")], "");
                    let (_, _, body) = raw(router, inner).await;
                    format!("{}|{}", String::from_utf8_lossy(&body), context_now())
                }),
            )
            .route("/long", get(|| async { "a".repeat(300) }))
            .route(
                "/panic",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("secret detail");
                    }
                    "unreachable"
                }),
            )
            .route_service("/panic-in-call", tower::service_fn(panics_in_call))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }))
            .route("/items/{id}", get(|Path(id): Path<u32>| async move { id.to_string() }))
            .route("/echo", post(|body: String| async move { body }))
            .route("/echo-64", post(|body: String| async move { body }).layer(DefaultBodyLimit::max(64)))
            .route("/echo-any", post(|body: String| async move { body }).layer(DefaultBodyLimit::disable()))
            .route(
                "/problem",
                get(|| async { crate::http::Problem::new(StatusCode::CONFLICT, "taken", "Already taken") }),
            )
            .route(
                "/id",
                get(|id: RequestId, headers: http::HeaderMap| async move {
                    let raw = headers.get("x-request-id").map(|v| v.to_str().unwrap_or("?").to_owned());
                    format!("{id} {}", raw.as_deref().unwrap_or("-"))
                }),
            )
    }

    /// A service that panics in `call` itself, before any future exists.
    fn panics_in_call(
        _: Request<Body>,
    ) -> std::future::Ready<Result<axum::response::Response, std::convert::Infallible>> {
        panic!("at once")
    }

    fn config(max_in_flight: usize) -> KeelConfig {
        let mut cfg = KeelConfig::default();
        cfg.cors.allowed_origins = vec!["https://app.example.com".into()];
        cfg.cors.allow_credentials = true;
        cfg.http.body_limit = 16;
        cfg.http.max_in_flight = max_in_flight;
        cfg.http.request_timeout = Duration::from_millis(300);
        cfg.http.hsts.enabled = true;
        cfg
    }

    /// Keel's stack as it was before the pipeline: one layer per concern.
    fn layered(cfg: &KeelConfig, m: &Metrics) -> Router {
        routes().layer(
            tower::ServiceBuilder::new()
                .layer(security_headers::SecurityHeadersLayer::new(&cfg.http.hsts))
                .layer(cors::layer(&cfg.cors).unwrap())
                .layer(catch_panic::CatchPanicLayer)
                .layer(request_id::RequestIdLayer)
                .layer(trace::TraceLayer::new("test", true))
                .layer(metrics::HttpMetricsLayer::new(m).unwrap())
                .layer(timeout::TimeoutLayer::new(cfg.http.request_timeout))
                .layer(DefaultBodyLimit::max(cfg.http.body_limit))
                .layer(load_shed::LoadShedLayer::new(cfg.http.max_in_flight).with_metrics(m).unwrap())
                .layer(compression::CompressionLayer::new(cfg.http.compression))
                .layer(problems::ProblemsLayer),
        )
    }

    fn fused(cfg: &KeelConfig, m: &Metrics) -> (Router, crate::http::StackHandle) {
        let mut cfg = cfg.clone();
        cfg.log.access_log = true;
        crate::http::stack("test", &cfg, m, routes(), Router::new()).unwrap()
    }

    type Answer = (StatusCode, Vec<(String, String)>, bytes::Bytes);

    /// The answer with a new id replaced by a placeholder (it differs between two stacks).
    async fn answer(router: &Router, req: Request<Body>) -> Answer {
        let (status, mut headers, body) = raw(router, req).await;
        // Only a new id, a UUIDv7, is replaced; an id the caller sent is compared as it is.
        let echoed = headers.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| v.clone());
        let Some(id) = echoed.filter(|v| uuid::Uuid::parse_str(v).is_ok_and(|u| u.get_version_num() == 7)) else {
            return (status, headers, body);
        };
        for (_, v) in &mut headers {
            *v = v.replace(&id, "<id>");
        }
        let body = String::from_utf8_lossy(&body).replace(&id, "<id>");
        (status, headers, bytes::Bytes::from(body))
    }

    /// The answer's status, headers (in the order they go on the wire) and body.
    async fn raw(router: &Router, req: Request<Body>) -> Answer {
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers: Vec<_> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("<binary>").to_owned()))
            .collect();
        (status, headers, axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap())
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        m.registry()
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|s| labels.iter().all(|(k, v)| s.get_label().iter().any(|p| p.name() == *k && p.value() == *v)))
            // An unset kind reads as zero.
            .map(|s| s.get_counter().get_value() + s.get_gauge().get_value())
            .sum()
    }

    /// Method, path, headers, body.
    type Case = (&'static str, &'static str, Vec<(&'static str, &'static str)>, &'static str);

    const ID: (&str, &str) = ("x-request-id", "req-1");
    const ORIGIN: (&str, &str) = ("origin", "https://app.example.com");

    #[tokio::test]
    async fn answers_exactly_as_the_stacked_layers() {
        let cfg = config(64);
        let (a, b) = (Metrics::new(), Metrics::new());
        let (fused, handle) = fused(&cfg, &a);
        let layered = layered(&cfg, &b);
        for (method, uri, headers, body) in cases() {
            let got = answer(&fused, request(method, uri, &headers, body)).await;
            let want = answer(&layered, request(method, uri, &headers, body)).await;
            assert_eq!(got, want, "{method} {uri} {headers:?}");
        }
        // Counted as the stacked layers count them (the preflight is answered by CORS, uncounted).
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "/hello"), ("status", "200")]), 8.0);
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "/slow"), ("status", "504")]), 4.0);
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "unmatched"), ("status", "404")]), 3.0);
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "/problem"), ("status", "409")]), 2.0);
        for (route, status) in [("/hello", "200"), ("/slow", "504"), ("unmatched", "404"), ("/items/{id}", "400")] {
            let labels = [("route", route), ("status", status)];
            let want = value(&b, "http_server_requests_total", &labels);
            assert_eq!(value(&a, "http_server_requests_total", &labels), want, "{route} {status}");
        }
        // The one difference, on purpose: a panic is counted as the 500 it becomes. Stacked,
        // catch-panic sits outside the metrics layer and the request went uncounted.
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "/panic"), ("status", "500")]), 2.0);
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "/panic-in-call"), ("status", "500")]), 2.0);
        assert_eq!(value(&b, "http_server_requests_total", &[("route", "/panic"), ("status", "500")]), 0.0);
        assert_eq!(value(&a, "http_server_requests_in_flight", &[]), 0.0);
        assert_eq!(value(&b, "http_server_requests_in_flight", &[]), 0.0);
        assert_eq!(handle.in_flight(), 0);
    }

    #[tokio::test]
    async fn answers_as_the_stacked_layers_with_compression_off() {
        let mut cfg = config(64);
        cfg.http.compression = false;
        let (fused, _) = fused(&cfg, &Metrics::new());
        let layered = layered(&cfg, &Metrics::new());
        for (method, uri, headers, body) in cases() {
            let got = answer(&fused, request(method, uri, &headers, body)).await;
            let want = answer(&layered, request(method, uri, &headers, body)).await;
            assert_eq!(got, want, "{method} {uri} {headers:?}");
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            ("GET", "/hello", vec![ID], ""),
            ("GET", "/hello", vec![ID, ORIGIN], ""),
            ("GET", "/hello", vec![("x-request-id", "first"), ("x-request-id", "second")], ""),
            ("GET", "/hello", vec![ID, ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], ""),
            ("GET", "/hello", vec![ID, ("origin", "https://evil-app.example.com")], ""),
            (
                "OPTIONS",
                "/hello",
                vec![
                    ID,
                    ORIGIN,
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                ],
                "",
            ),
            ("GET", "/long", vec![ID, ("accept-encoding", "gzip")], ""),
            ("GET", "/long", vec![ID, ORIGIN, ("accept-encoding", "gzip")], ""),
            ("GET", "/missing", vec![ID], ""),
            ("GET", "/missing", vec![ID, ("accept-encoding", "gzip")], ""),
            ("GET", "/items/x", vec![ID, ORIGIN, ("accept-encoding", "gzip")], ""),
            ("DELETE", "/hello", vec![ID], ""),
            ("GET", "/items/x", vec![ID], ""),
            ("POST", "/echo", vec![ID, ("content-type", "text/plain")], "a body well over sixteen bytes"),
            ("GET", "/panic", vec![ID], ""),
            ("GET", "/panic", vec![ID, ORIGIN], ""),
            ("GET", "/panic-in-call", vec![ID], ""),
            ("GET", "/slow", vec![ID, ("x-request-timeout-ms", "20")], ""),
            ("GET", "/slow", vec![ID, ORIGIN, ("x-request-timeout-ms", "20")], ""),
            // Only the first value counts; it is not a number, so the configured 300 ms apply.
            ("GET", "/slow", vec![ID, ("x-request-timeout-ms", "soon"), ("x-request-timeout-ms", "20")], ""),
            // New ids (compared as a placeholder).
            ("GET", "/hello", vec![], ""),
            ("GET", "/hello", vec![ORIGIN, ("accept-encoding", "identity")], ""),
            ("GET", "/missing", vec![ORIGIN], ""),
            ("GET", "/slow", vec![("x-request-timeout-ms", "20")], ""),
            ("GET", "/panic-in-call", vec![ORIGIN], ""),
            ("GET", "/problem", vec![], ""),
            // Compressed: a sent id, so the bodies can be compared as they are.
            ("GET", "/problem", vec![ID, ("accept-encoding", "gzip")], ""),
            ("GET", "/hello", vec![("x-request-id", "has space"), ("x-request-id", "ok")], ""),
        ]
    }

    #[tokio::test]
    async fn the_routes_see_the_request_context_and_it_does_not_outlive_the_poll() {
        let cfg = config(64);
        let (fused, _) = fused(&cfg, &Metrics::new());
        let layered = layered(&cfg, &Metrics::new());
        let (gzip, asked) = (("accept-encoding", "gzip"), ("x-request-timeout-ms", "20"));
        let cases = [
            (vec![ID], "req-1 n y req-1 n y"),
            (vec![ID, gzip], "req-1 n y req-1 n y"),
            (vec![ID, ORIGIN], "req-1 n y req-1 n y"),
            (vec![ID, ORIGIN, gzip], "req-1 n y req-1 n y"),
            (vec![ID, asked], "req-1 y y req-1 y y"),
            (vec![ID, ORIGIN, gzip, asked], "req-1 y y req-1 y y"),
        ];
        for (headers, want) in cases {
            for (name, router) in [("fused", &fused), ("stacked", &layered)] {
                let (status, _, body) = raw(router, request("GET", "/ctx", &headers, "")).await;
                assert_eq!(
                    (status, String::from_utf8_lossy(&body).as_ref()),
                    (StatusCode::OK, want),
                    "{name} {headers:?}"
                );
                assert_eq!(context_now(), "- - -", "{name} {headers:?}: still set after the request");
            }
        }
        // Served inside another request's poll: the inner request sees its own context, and the
        // outer one its own again afterwards.
        let _ = NESTED.set(fused.clone());
        for headers in [vec![ID], vec![ID, ORIGIN, gzip]] {
            let (_, _, body) = raw(&fused, request("GET", "/outer", &headers, "")).await;
            assert_eq!(String::from_utf8_lossy(&body), "in-1 n y in-1 n y|req-1 n y", "{headers:?}");
        }
    }

    /// A service that must be polled ready before each call, as tower's contract asks;
    /// a clone starts out not ready (axum's routes are always ready, so this is what shows
    /// which instance the pipeline calls).
    #[derive(Default)]
    struct ReadyFirst {
        ready: bool,
    }

    impl Clone for ReadyFirst {
        fn clone(&self) -> Self {
            Self { ready: false }
        }
    }

    impl Service<Request<Body>> for ReadyFirst {
        type Response = axum::response::Response;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            self.ready = true;
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let status = if std::mem::take(&mut self.ready) { StatusCode::OK } else { StatusCode::IM_A_TEAPOT };
            std::future::ready(Ok((status, "a body long enough to be worth compressing, more or less").into_response()))
        }
    }

    #[tokio::test]
    async fn the_instance_polled_ready_is_the_one_called() {
        let mut cfg = config(64);
        (cfg.log.access_log, cfg.http.compression) = (false, true);
        let layers = super::Layers::from_config("test", &cfg, &Metrics::new()).unwrap();
        let mut svc = tower::Layer::layer(&super::PipelineLayer::new(layers), ReadyFirst::default());
        let gzip = ("accept-encoding", "gzip");
        for headers in [vec![ID], vec![ID, gzip], vec![ID, ORIGIN], vec![ID, ORIGIN, gzip]] {
            // Twice each: the instance left behind must be polled ready again, not called as is.
            for _ in 0..2 {
                let resp = svc.ready().await.unwrap().call(request("GET", "/", &headers, "")).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{headers:?}");
                let gzipped = resp.headers().get("content-encoding").is_some_and(|v| v == "gzip");
                assert_eq!(gzipped, headers.contains(&gzip), "{headers:?}");
            }
        }
    }

    /// Panics on every error line: a broken subscriber.
    struct PanicsOnErrors;

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicsOnErrors {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                panic!("the subscriber failed too");
            }
        }
    }

    #[tokio::test]
    async fn a_panic_is_answered_500_even_when_logging_it_panics() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(PanicsOnErrors));
        let cfg = config(64);
        let (fused, _) = fused(&cfg, &Metrics::new());
        let layered = layered(&cfg, &Metrics::new());
        for (name, router) in [("fused", &fused), ("stacked", &layered)] {
            for path in ["/panic", "/panic-in-call"] {
                let (status, headers, body) = raw(router, request("GET", path, &[ID], "")).await;
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{name} {path}");
                assert!(headers.contains(&("x-request-id".to_owned(), "req-1".to_owned())), "{name} {path}");
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains("req-1") && !text.contains("secret") && !text.contains("subscriber"), "{text}");
            }
        }
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_limited_as_stacked() {
        // Set only on requests with a body: one streamed in chunks, with no length known
        // beforehand, is one of them. A route's own limit, or none, still wins.
        let cfg = config(64);
        let (fused, _) = fused(&cfg, &Metrics::new());
        let layered = layered(&cfg, &Metrics::new());
        let streamed = |path: &str, text: &'static str, extra: Option<(&str, &str)>| {
            let chunks = text.as_bytes().chunks(5).map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c)));
            let mut b = Request::post(path).header("x-request-id", "req-1").header("content-type", "text/plain");
            if let Some((k, v)) = extra {
                b = b.header(k, v);
            }
            b.body(Body::from_stream(futures_util::stream::iter(chunks))).unwrap()
        };
        const OVER_16: &str = "a body well over sixteen bytes";
        const OVER_64: &str = "a body well over sixty-four bytes, which is the limit of that one route alone";
        let cases = [
            ("/echo", OVER_16, StatusCode::PAYLOAD_TOO_LARGE),
            ("/echo", "short", StatusCode::OK),
            ("/echo-64", OVER_16, StatusCode::OK),
            ("/echo-64", OVER_64, StatusCode::PAYLOAD_TOO_LARGE),
            ("/echo-any", OVER_64, StatusCode::OK),
        ];
        for (path, text, status) in cases {
            for extra in [None, Some(("accept-encoding", "gzip")), Some(ORIGIN)] {
                let got = answer(&fused, streamed(path, text, extra)).await;
                assert_eq!(got.0, status, "{path} {text} {extra:?}");
                // (Gzipped when offered and worth it.)
                if status == StatusCode::OK && !got.1.iter().any(|(k, _)| k == "content-encoding") {
                    assert_eq!(&got.2[..], text.as_bytes(), "{path} {extra:?}");
                }
                assert_eq!(got, answer(&layered, streamed(path, text, extra)).await, "{path} {text} {extra:?}");
            }
        }
        // No body, no limit to apply: answered the same, and as an empty body.
        let empty = || request("POST", "/echo", &[ID, ("content-type", "text/plain")], "");
        let got = answer(&fused, empty()).await;
        assert_eq!((got.0, &got.2[..]), (StatusCode::OK, &b""[..]));
        assert_eq!(got, answer(&layered, empty()).await);
    }

    #[tokio::test]
    async fn made_and_replaced_ids_are_echoed() {
        let cfg = config(64);
        let (fused, _) = fused(&cfg, &Metrics::new());
        for headers in [vec![], vec![("x-request-id", "has space")], vec![ORIGIN]] {
            let (status, got, _) = raw(&fused, request("GET", "/hello", &headers, "")).await;
            assert_eq!(status, StatusCode::OK);
            let id = got.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| v.clone()).unwrap();
            assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7, "{headers:?}");
            let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
            for h in
                ["x-content-type-options", "x-frame-options", "referrer-policy", "strict-transport-security", "vary"]
            {
                assert!(names.contains(&h), "{h} missing with {headers:?}: {names:?}");
            }
        }
        // Handlers get the id echoed; the request's own header holds it only when one was sent
        // (replaced when invalid), never an unchecked value.
        for (sent, raw_is_id) in [(None, false), (Some("has space"), true), (Some("ok-1"), true)] {
            let headers: Vec<(&str, &str)> = sent.map(|v| ("x-request-id", v)).into_iter().collect();
            let (_, got, body) = raw(&fused, request("GET", "/id", &headers, "")).await;
            let echoed = got.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| v.clone()).unwrap();
            let body = String::from_utf8(body.to_vec()).unwrap();
            let raw = if raw_is_id { echoed.clone() } else { "-".to_owned() };
            assert_eq!(body, format!("{echoed} {raw}"), "sent {sent:?}");
            if sent == Some("ok-1") {
                assert_eq!(echoed, "ok-1");
            }
        }
        // The id of a problem the stack makes itself is the one echoed.
        let resp = fused.clone().oneshot(request("GET", "/panic", &[], "")).await.unwrap();
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: serde_json::Value =
            serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
        assert_eq!(body["request_id"], echoed);
        assert!(!body.to_string().contains("secret detail"));
    }

    #[tokio::test]
    async fn sheds_as_the_stacked_layers_and_counts_it() {
        let cfg = config(0);
        let (a, b) = (Metrics::new(), Metrics::new());
        let (fused, handle) = fused(&cfg, &a);
        let layered = layered(&cfg, &b);
        for headers in [vec![ID], vec![ID, ORIGIN]] {
            let got = answer(&fused, request("GET", "/hello", &headers, "")).await;
            assert_eq!(got.0, StatusCode::SERVICE_UNAVAILABLE);
            assert!(got.1.iter().any(|(k, v)| k == "retry-after" && v == "1"));
            assert_eq!(got, answer(&layered, request("GET", "/hello", &headers, "")).await, "{headers:?}");
        }
        assert_eq!(value(&a, "http_server_requests_shed_total", &[]), 2.0);
        assert_eq!(value(&a, "http_server_requests_total", &[("route", "/hello"), ("status", "503")]), 2.0);
        assert_eq!(handle.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_request_gives_back_its_place() {
        let cfg = config(64);
        let m = Metrics::new();
        let (fused, handle) = fused(&cfg, &m);
        let slow = fused.clone().oneshot(request("GET", "/slow", &[], ""));
        let mut slow = Box::pin(slow);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut slow).await.is_err());
        assert_eq!(handle.in_flight(), 1);
        assert_eq!(value(&m, "http_server_requests_in_flight", &[]), 1.0);
        drop(slow);
        assert_eq!(handle.in_flight(), 0);
        assert_eq!(value(&m, "http_server_requests_in_flight", &[]), 0.0);
        assert_eq!(value(&m, "http_server_requests_total", &[("route", "/slow")]), 0.0, "not answered, not counted");
    }
}
