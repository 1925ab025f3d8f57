//! One `grpc` span per call, continuing the caller's W3C trace (`traceparent` metadata), and an
//! access-log line when the call ends.
//!
//! The span is entered whenever the handler's future or the response stream is polled, so
//! every line logged while serving the call carries its `request_id` and `trace_id`. Fields
//! follow OpenTelemetry's RPC conventions:
//!
//! | field | value |
//! |---|---|
//! | `rpc.system` | `grpc` |
//! | `rpc.service`, `rpc.method` | `symbols.v1.Symbols`, `GetSymbol` (`unknown` when not registered) |
//! | `rpc.grpc.status_code` | the code the call ended with (`5`) |
//! | `client.address` | the TCP peer |
//!
//! plus Keel's `service` and `request_id`, `otel.kind = server`, `otel.name =
//! "{rpc.service}/{rpc.method}"`. A server-side failure (`UNKNOWN`, `DEADLINE_EXCEEDED`,
//! `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`) sets `otel.status_code = error`
//! and logs `call failed` at `error`; otherwise `log.access_log` logs `call finished` at `info`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, Response};
use pin_project_lite::pin_project;

use keel_http::middleware::{InnerFuture, Middleware, ResponseBody};
use keel_http::trace::CallSpan;
use tracing::field::Empty;

use crate::body::Observed;
use crate::method::Known;
use crate::metrics::code_label;
use crate::status::{Code, is_server_error};

/// Adds call spans; see the module docs.
#[derive(Debug, Clone)]
pub struct GrpcTraceLayer {
    service: &'static str,
    access_log: bool,
    known: Known,
}

impl GrpcTraceLayer {
    /// Spans tagged with `service`; `access_log` logs each finished call.
    pub fn new(service: &str, access_log: bool, known: Known) -> Self {
        Self { service: keel_telemetry::intern::intern(service), access_log, known }
    }
}

keel_http::layer_with_config!(GrpcTraceLayer => GrpcTrace);

impl<ReqB, F> Middleware<ReqB, F> for GrpcTraceLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let span = call_span(self, &req);
        let inner = {
            let _entered = span.enter();
            inner(req)
        };
        ResponseFuture { inner, call: CallSpan::starting(span, self.access_log) }
    }
}

fn call_span<B>(layer: &GrpcTraceLayer, req: &Request<B>) -> tracing::Span {
    let (service, method) = layer.known.labels(req.uri().path());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical());
    let span = tracing::info_span!(
        "grpc",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        service = layer.service,
        request_id = keel_http::trace::request_id_field(req),
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        client.address = peer.map(tracing::field::display),
    );
    if span.is_disabled() {
        return span;
    }
    if keel_telemetry::exporting() {
        span.record("otel.name", format!("{service}/{method}"));
    }
    keel_http::trace::continue_trace(&span, req.headers());
    span
}

/// Gives the span its code, and logs the access or failure line.
fn finished(call: &CallSpan, code: Code) {
    call.span.record("rpc.grpc.status_code", code as i32);
    let latency_ms = call.latency_ms();
    if is_server_error(code) {
        call.span.record("otel.status_code", "error");
        tracing::error!(rpc.grpc.status_code = code as i32, grpc_code = code_label(code), latency_ms, "call failed");
    } else if call.access_log {
        tracing::info!(rpc.grpc.status_code = code as i32, grpc_code = code_label(code), latency_ms, "call finished");
    }
}

pin_project! {
    /// Response future of [`GrpcTrace`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: CallSpan,
    }
}

impl<F: InnerFuture<Body: ResponseBody>> Future for ResponseFuture<F> {
    type Output = Result<Response<Body>, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = {
            let _entered = this.call.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        let call = this.call.clone();
        Poll::Ready(out.map(|resp| {
            let (parts, body) = resp.into_parts();
            let span = call.span.clone();
            let body = {
                // A trailers-only answer is reported at once: inside the span too.
                let _entered = span.enter();
                Observed::new(body, &parts.headers, Box::new(move |code| finished(&call, code)))
            };
            let body = body.in_span(span);
            Response::from_parts(parts, Body::new(body))
        }))
    }
}
