//! One `request` span per request, continuing the caller's W3C trace, plus an access-log line.
//!
//! The span carries `service`, `request_id`, `trace_id`, `span_id`, `http.request.method` and
//! `http.route` (the matched template), so every log line written while handling the request
//! has them. The status (`http.response.status_code`) is a field of the access line, and of
//! the span when spans are exported.
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
use tracing::field::Empty;

use super::request_id::RequestId;

/// The `route` label and span field of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

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
        let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str);
        let id = req.extensions().get::<RequestId>().map(RequestId::as_str).unwrap_or_default();
        let method = req.method().as_str();
        // Field names follow OpenTelemetry's HTTP semantic conventions, so the same names serve
        // logs and exported spans. The `otel.*` fields are read only by the exporter: without
        // one they are left out rather than formatted, visited and skipped.
        let exporting = crate::telemetry::exporting();
        let span = if exporting {
            let span = tracing::info_span!(
                "request",
                service = self.layer.service,
                request_id = id,
                http.request.method = method,
                http.route = route,
                http.response.status_code = Empty,
                otel.name = Empty,
                otel.kind = "server",
                otel.status_code = Empty,
            );
            span.record("otel.name", format!("{method} {route}"));
            span
        } else {
            tracing::info_span!(
                "request",
                service = self.layer.service,
                request_id = id,
                http.request.method = method,
                http.route = route,
            )
        };
        // Continue the caller's trace. `trace_id` and `span_id` are not span fields: the log
        // formatter reads them from the span's trace context only when a line is written.
        if req.headers().contains_key(&TRACEPARENT) {
            crate::telemetry::set_parent(&span, crate::telemetry::extract_context(req.headers()));
        }
        // The span is entered while the response future is polled, which is where everything
        // below runs: the layers under this one log nothing in `call`, and axum calls the
        // route (and the handler) on the first poll. Not entering it here too saves an
        // enter and exit per request.
        let inner = self.inner.call(req);
        ResponseFuture { inner, span, start: Instant::now(), access_log: self.layer.access_log, exporting }
    }
}

pin_project! {
    /// Response future of [`Trace`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        start: Instant,
        access_log: bool,
        exporting: bool,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            let status = resp.status().as_u16();
            // A field of the span only for the exporter: recording it costs a lookup of the
            // span, and the lines that need it (these two) carry it themselves.
            if *this.exporting {
                this.span.record("http.response.status_code", status);
            }
            let latency_ms = || this.start.elapsed().as_secs_f64() * 1000.0;
            if status >= 500 {
                if *this.exporting {
                    this.span.record("otel.status_code", "ERROR");
                }
                tracing::error!(http.response.status_code = status, latency_ms = latency_ms(), "request failed");
            } else if *this.access_log {
                tracing::info!(http.response.status_code = status, latency_ms = latency_ms(), "request finished");
            }
        }
        Poll::Ready(out)
    }
}
