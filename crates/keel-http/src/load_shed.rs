//! Server-side load shedding: past `max_in_flight` concurrent requests, answer 503 at once.
//!
//! Shedding early keeps latency bounded for the requests already admitted, instead of letting
//! every request slow down together until all of them time out. The shed response is a problem
//! document with `Retry-After` and is counted in `http_server_requests_shed_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::Request;
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tower::Service;

use super::problem::Problem;
use super::request_id::RequestId;

/// Seconds suggested in `Retry-After` when shedding.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Counts requests in flight and sheds past the limit. Clones share the count.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    max: usize,
    // One `Arc` for the count and the counter: axum clones the layered service per request.
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    in_flight: AtomicUsize,
    shed: Option<IntCounter>,
}

impl LoadShedLayer {
    /// Sheds when more than `max` requests are in flight.
    pub fn new(max: usize) -> Self {
        Self { max, shared: Arc::default() }
    }

    /// Counts shed requests in `http_server_requests_shed_total`.
    pub fn with_metrics(mut self, metrics: &keel_telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let c = IntCounter::new(
            "http_server_requests_shed_total",
            "Requests refused with 503 because too many were in flight.",
        )?;
        metrics.register(c.clone())?;
        self.shared = Arc::new(Shared { in_flight: AtomicUsize::new(self.in_flight()), shed: Some(c) });
        Ok(self)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}

crate::layer_with_config!(LoadShedLayer => LoadShed);

/// The service made by [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

impl LoadShedLayer {
    /// Takes a place among the requests in flight, or counts the request as shed when there is
    /// none. A place taken is given back with [`release`](Self::release).
    fn admit(&self) -> bool {
        let before = self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if before < self.max {
            return true;
        }
        self.release();
        if let Some(c) = &self.shared.shed {
            c.inc();
        }
        false
    }

    /// Gives back a place taken by [`admit`](Self::admit).
    fn release(&self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The 503 answer to a shed request.
fn shed_response(id: Option<&RequestId>) -> Response {
    Problem::unavailable("the service is at capacity; retry shortly", RETRY_AFTER_SECS)
        .code("OVERLOADED")
        .into_response_with_id(id.map(RequestId::as_str))
}

/// A place taken by [`LoadShedLayer::admit`], given back when dropped.
struct Guard(LoadShedLayer);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for LoadShed<S>
where
    S: Service<Request<ReqB>, Response = http::Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if !self.layer.admit() {
            let resp = shed_response(RequestId::from_extensions(req.extensions()).as_ref());
            return ResponseFuture { kind: Kind::Shed { resp: Some(resp) } };
        }
        let guard = Guard(self.layer.clone());
        ResponseFuture { kind: Kind::Running { inner: self.inner.call(req), _guard: guard } }
    }
}

pin_project! {
    /// Response future of [`LoadShed`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    // An enum, not both fields: every layer above moves this future, and a response is
    // 128 bytes.
    #[project = KindProj]
    enum Kind<F> {
        Running { #[pin] inner: F, _guard: Guard },
        // `None` once the 503 has been returned.
        Shed { resp: Option<Response> },
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running { inner, .. } => inner.poll(cx).map(|r| r.map(|resp| resp.map(Body::new))),
            KindProj::Shed { resp } => {
                Poll::Ready(Ok(resp.take().unwrap_or_else(|| Problem::internal().into_response())))
            }
        }
    }
}

use axum::response::IntoResponse as _;
