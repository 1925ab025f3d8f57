//! The `floor` target: the least per-request work the foundation requires, as one hand-written
//! tower layer over the routes (applied with `Router::layer`, so axum clones and boxes the
//! layered route per request as it does Keel's stack). It does only what no implementation of
//! the required features can skip, each the cheapest way:
//!
//! * a request id: a valid incoming `X-Request-ID` kept, else a UUIDv7 made; put in the
//!   extensions, echoed in the response (sharing one allocation);
//! * metrics: the request counted in flight (with a guard, so a cancelled request is counted
//!   out), the matched route read for the label, a counter and a duration histogram recorded
//!   through handles resolved once (no label lookup at all);
//! * the other four headers: `Vary: origin` and the three security headers.
//!
//! No span or log context, deadline, load shedding, CORS check, panic catching, compression
//! check or problem rewriting — each of those costs more than nothing. Keel's stack does all of
//! them, so on the same machine it cannot be cheaper than this.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderName, HeaderValue, Request, Response, header};
use keel::http::RequestId;
use pin_project_lite::pin_project;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts};
use tower::{Layer, Service};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

struct Metrics {
    in_flight: IntGauge,
    requests: IntCounter,
    duration: Histogram,
}

/// The layer; see the module docs.
#[derive(Clone)]
struct FloorLayer(Arc<Metrics>);

impl<S> Layer<S> for FloorLayer {
    type Service = Floor<S>;
    fn layer(&self, inner: S) -> Floor<S> {
        Floor { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
struct Floor<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Counts the request out of the in-flight gauge however it ends.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl<S, B, ResB> Service<Request<B>> for Floor<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let guard = InFlight(self.metrics.clone());
        let id = req.headers().get(&REQUEST_ID).and_then(RequestId::parse).unwrap_or_else(RequestId::generate);
        let header = id.header_value().clone();
        req.extensions_mut().insert(id);
        // The route label: read, as a per-route series would need it.
        std::hint::black_box(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
        FloorFuture { inner: self.inner.call(req), start, header: Some(header), guard: Some(guard) }
    }
}

pin_project! {
    struct FloorFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        header: Option<HeaderValue>,
        guard: Option<InFlight>,
    }
}

impl<F, ResB, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(guard)) = (&mut out, this.guard.take()) {
            guard.0.requests.inc();
            guard.0.duration.observe(this.start.elapsed().as_secs_f64());
            let h = resp.headers_mut();
            if let Some(id) = this.header.take() {
                h.insert(REQUEST_ID.clone(), id);
            }
            h.insert(header::VARY, HeaderValue::from_static("origin"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        Poll::Ready(out)
    }
}

/// `routes` under the floor layer.
pub(crate) fn floor_routes(routes: Router) -> Result<Router, prometheus::Error> {
    let metrics = Metrics {
        in_flight: IntGauge::with_opts(Opts::new("floor_in_flight", "floor"))?,
        requests: IntCounter::with_opts(Opts::new("floor_requests", "floor"))?,
        duration: Histogram::with_opts(
            HistogramOpts::new("floor_duration", "floor").buckets(keel::http::metrics::DURATION_BUCKETS.to_vec()),
        )?,
    };
    Ok(routes.layer(FloorLayer(Arc::new(metrics))))
}
