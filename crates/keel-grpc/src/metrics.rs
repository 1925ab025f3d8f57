//! RED metrics of the gRPC server, named as go-grpc-prometheus and most dashboards expect:
//!
//! | metric | labels |
//! |---|---|
//! | `grpc_server_started_total` | `grpc_service`, `grpc_method` |
//! | `grpc_server_handled_total` | `grpc_service`, `grpc_method`, `grpc_code` (`OK`, `NOT_FOUND`, …) |
//! | `grpc_server_handling_seconds` | `grpc_service`, `grpc_method` (histogram, until the call ends: streams included) |
//!
//! A call ends with the status in its trailers; one the client abandons counts as `CANCELLED`.
//! Services that are not registered, and methods a service does not have (`UNIMPLEMENTED`), are
//! labelled `unknown`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use keel_http::middleware::{InnerFuture, Middleware, ResponseBody};

use crate::body::Observed;
use crate::method::{Known, UNKNOWN};
use crate::status::Code;

/// The upper bounds of the handling-time buckets: keel-http's request buckets.
pub use keel_http::metrics::DURATION_BUCKETS;

/// The name a code is labelled with (`NOT_FOUND`).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Records the server's metrics; see the module docs.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    started: IntCounterVec,
    handled: IntCounterVec,
    seconds: HistogramVec,
    known: Known,
}

impl GrpcMetricsLayer {
    /// Registers the families in `metrics`; calls to services outside `known` are `unknown`.
    pub fn new(metrics: &keel_telemetry::Metrics, known: Known) -> Result<Self, prometheus::Error> {
        let started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "gRPC calls started on the server."),
            &["grpc_service", "grpc_method"],
        )?;
        let handled = IntCounterVec::new(
            Opts::new("grpc_server_handled_total", "gRPC calls completed on the server, by status code."),
            &["grpc_service", "grpc_method", "grpc_code"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("grpc_server_handling_seconds", "Time from a gRPC call's start to its end.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["grpc_service", "grpc_method"],
        )?;
        metrics.register(started.clone())?;
        metrics.register(handled.clone())?;
        metrics.register(seconds.clone())?;
        Ok(Self { started, handled, seconds, known })
    }
}

keel_http::layer_with_config!(GrpcMetricsLayer => GrpcMetrics);

impl<ReqB, F> Middleware<ReqB, F> for GrpcMetricsLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let (service, method) = self.known.labels(req.uri().path());
        let (service, method) = (service.to_owned(), method.to_owned());
        self.started.with_label_values(&[&service, &method]).inc();
        ResponseFuture {
            inner: inner(req),
            call: Some(Call { layer: self.clone(), service, method, start: Instant::now() }),
        }
    }
}

/// What a call's end is recorded with.
struct Call {
    layer: GrpcMetricsLayer,
    service: String,
    method: String,
    start: Instant,
}

impl Call {
    fn end(self, code: Code) {
        let method = if code == Code::Unimplemented { UNKNOWN } else { self.method.as_str() };
        self.layer.handled.with_label_values(&[&self.service, method, code_label(code)]).inc();
        self.layer.seconds.with_label_values(&[&self.service, method]).observe(self.start.elapsed().as_secs_f64());
    }
}

pin_project! {
    /// Response future of [`GrpcMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the handler answered: the client went away.
            if let Some(call) = this.project().call.take() {
                call.end(Code::Cancelled);
            }
        }
    }
}

impl<F: InnerFuture<Body: ResponseBody>> Future for ResponseFuture<F> {
    type Output = Result<Response<Body>, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let Some(call) = this.call.take() else { return Poll::Pending };
        Poll::Ready(match out {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = Observed::new(body, &parts.headers, Box::new(move |code| call.end(code)));
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            Err(e) => {
                call.end(Code::Internal);
                Err(e)
            }
        })
    }
}
