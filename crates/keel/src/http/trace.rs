//! One `request` span per request, continuing the caller's W3C trace, plus an access-log line.
//!
//! The span carries `service`, `request_id`, `trace_id`, `span_id`, `http.request.method` and
//! `http.route` (the matched template), so every log line written while handling the request
//! has them. The status (`http.response.status_code`) is a field of the access line, and of
//! the span when spans are exported. With JSON lines and no span export the span is made only
//! if the request needs it; its lines are the same either way (see `keel::telemetry`).
//! It must sit inside the request-id layer (it reads [`RequestId`]) and after routing (it reads
//! [`MatchedPath`]); Keel's stack applies it with `Router::layer`, which runs after routing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::request_id::RequestId;
use crate::telemetry::RequestSpan;

/// The `route` label and span field of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// Adds request spans; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    service: &'static str,
    access_log: bool,
}

impl TraceLayer {
    /// Spans tagged with `service`; `access_log` adds an `info` line per finished request.
    ///
    /// The process keeps one copy of each distinct service name for its life, so `service`
    /// should be a name from configuration, not something made per request.
    pub fn new(service: impl AsRef<str>, access_log: bool) -> Self {
        Self { service: crate::intern::intern(service.as_ref()), access_log }
    }
}

super::macros::layer_with_config!(TraceLayer => Trace);

/// The service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    layer: TraceLayer,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Trace<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Field names follow OpenTelemetry's HTTP semantic conventions, so the same names serve
        // logs and exported spans. Without export and with JSON lines, the span itself is made
        // only if the request needs it (see `keel::telemetry`'s `deferred` module).
        let id = RequestId::from_extensions(req.extensions());
        let span = RequestSpan::new(
            self.layer.service,
            id.as_ref(),
            req.method(),
            req.extensions().get::<MatchedPath>(),
            req.headers(),
        );
        // The span is entered while the response future is polled, which is where everything
        // below runs: the layers under this one log nothing in `call`, and axum calls the
        // route (and the handler) on the first poll. Not entering it here too saves an
        // enter and exit per request.
        let inner = self.inner.call(req);
        ResponseFuture { inner, span, start: Instant::now(), access_log: self.layer.access_log }
    }
}

pin_project! {
    /// Response future of [`Trace`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: RequestSpan,
        start: Instant,
        access_log: bool,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (inner, start, access_log) = (this.inner, *this.start, *this.access_log);
        this.span.in_scope(|span| {
            let out = std::task::ready!(inner.poll(cx));
            if let Ok(resp) = &out {
                finished(span, resp.status().as_u16(), || start.elapsed(), access_log);
            }
            Poll::Ready(out)
        })
    }
}

/// Logs the access or failure line (with the status, so it need not be a span field), and gives
/// an exported span its status.
/// `elapsed` is read only when a line is written.
fn finished(
    span: Option<&tracing::Span>,
    status: u16,
    elapsed: impl FnOnce() -> std::time::Duration,
    access_log: bool,
) {
    let exporting = crate::telemetry::exporting();
    if exporting && let Some(span) = span {
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
    }
    let latency_ms = || elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(http.response.status_code = status, latency_ms = latency_ms(), "request failed");
    } else if access_log {
        access_line(status, latency_ms);
    }
}

/// `tracing::info!(http.response.status_code = status, latency_ms, "request finished")`, from
/// a callsite of Keel's own ([`ACCESS`]), so that the JSON format knows the line by its
/// metadata and writes it without looking up its fields (see `telemetry::format`). Subscribers
/// see an event with the same target, level, fields and message as the macro's (its metadata's
/// name and line differ). Before any subscriber is set, the macro itself is used: it also hands
/// the line to the `log` crate then.
fn access_line(status: u16, latency_ms: impl FnOnce() -> f64) {
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return;
    }
    if !tracing::dispatcher::has_been_set() {
        tracing::info!(http.response.status_code = status, latency_ms = latency_ms(), "request finished");
        return;
    }
    let interest = ACCESS_CALLSITE.interest();
    if interest.is_never() {
        return;
    }
    if !interest.is_always() && !tracing::dispatcher::get_default(|d| d.enabled(&ACCESS)) {
        return;
    }
    let message = format_args!("request finished");
    let latency_ms = latency_ms();
    let values: [Option<&dyn tracing::Value>; 3] = [Some(&message), Some(&status), Some(&latency_ms)];
    tracing::Event::dispatch(&ACCESS, &ACCESS.fields().value_set_all(&values));
}

static ACCESS_CALLSITE: tracing_core::callsite::DefaultCallsite = tracing_core::callsite::DefaultCallsite::new(&ACCESS);

/// The access line's metadata: the fields in [`access_line`]'s order.
pub(crate) static ACCESS: tracing::Metadata<'static> = tracing_core::metadata! {
    name: "request finished",
    target: module_path!(),
    level: tracing::Level::INFO,
    fields: &["message", "http.response.status_code", "latency_ms"],
    callsite: &ACCESS_CALLSITE,
    kind: tracing_core::metadata::Kind::EVENT,
};
