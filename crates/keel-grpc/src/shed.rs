//! Load shedding: past `grpc.max_in_flight` calls waiting for their handler, new calls are
//! answered `RESOURCE_EXHAUSTED` at once, with gRFC A6's `grpc-retry-pushback-ms`, and counted
//! in `grpc_server_calls_shed_total`. Health checks (`grpc.health.v1.Health`) are never shed:
//! an overloaded instance must not fail its probe for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus::IntCounter;

use keel_http::middleware::{InnerFuture, Middleware, ResponseBody};

use crate::status::{RETRY_PUSHBACK, Status, pushback, response};
use keel_http::load_shed::{Admitted, InFlight};
use keel_http::request_id::RequestId;

/// Milliseconds a shed client is asked to wait.
pub const PUSHBACK_MS: u64 = 1000;

/// The path prefix of the health service, which is never shed.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Counts calls in flight and sheds past the limit. Clones share the count.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    places: InFlight,
}

impl ShedLayer {
    /// Sheds past `max` calls in flight, counting them in `grpc_server_calls_shed_total`.
    pub fn new(max: usize, metrics: &keel_telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let shed = IntCounter::new(
            "grpc_server_calls_shed_total",
            "gRPC calls refused with RESOURCE_EXHAUSTED because too many were in flight.",
        )?;
        metrics.register(shed.clone())?;
        Ok(Self { places: InFlight::new(max).counting_shed(shed) })
    }

    /// Calls whose handler is running now.
    pub fn in_flight(&self) -> usize {
        self.places.taken()
    }
}

keel_http::layer_with_config!(ShedLayer => Shed);

impl<ReqB, F> Middleware<ReqB, F> for ShedLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        if req.uri().path().starts_with(HEALTH) {
            return ResponseFuture { inner: Some(inner(req)), guard: None, shed: None };
        }
        match self.places.admit() {
            Some(guard) => ResponseFuture { inner: Some(inner(req)), guard: Some(guard), shed: None },
            None => {
                let mut status = Status::resource_exhausted("the service is at capacity; retry shortly");
                status.metadata_mut().insert(RETRY_PUSHBACK, pushback(PUSHBACK_MS));
                let resp = response(status, RequestId::from_extensions(req.extensions()).as_ref());
                ResponseFuture { inner: None, guard: None, shed: Some(resp) }
            }
        }
    }
}

pin_project! {
    /// Response future of [`Shed`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        guard: Option<Admitted>,
        shed: Option<Response<Body>>,
    }
}

impl<F: InnerFuture<Body: ResponseBody>> Future for ResponseFuture<F> {
    type Output = Result<Response<Body>, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(resp) = this.shed.take() {
            return Poll::Ready(Ok(resp));
        }
        match this.inner.as_pin_mut() {
            Some(f) => {
                let out = std::task::ready!(f.poll(cx));
                this.guard.take();
                Poll::Ready(out.map(|r| r.map(Body::new)))
            }
            // Polled again after it answered.
            None => Poll::Pending,
        }
    }
}
