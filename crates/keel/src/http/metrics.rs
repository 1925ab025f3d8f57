//! RED metrics for the HTTP server.
//!
//! * `http_server_requests_total{method,route,status}` — counter
//! * `http_server_request_duration_seconds{method,route,status}` — histogram
//! * `http_server_requests_in_flight` — gauge
//!
//! `route` is the matched route template (`/items/{id}`), or `unmatched`, so a scan of random
//! URLs cannot blow up the number of series. Apply after routing (`Router::layer`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use tower::Service;

use super::trace::UNMATCHED;
use crate::telemetry::Metrics;

/// Buckets of the request-duration histogram, in seconds.
pub const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Records HTTP metrics; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

impl HttpMetricsLayer {
    /// Registers the metrics in `metrics`.
    pub fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let labels = &["method", "route", "status"];
        let requests = IntCounterVec::new(Opts::new("http_server_requests_total", "HTTP requests handled."), labels)?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_server_request_duration_seconds", "Time to produce the response head.")
                .buckets(DURATION_BUCKETS.to_vec()),
            labels,
        )?;
        let in_flight = IntGauge::new("http_server_requests_in_flight", "HTTP requests being handled now.")?;
        metrics.register(requests.clone())?;
        metrics.register(duration.clone())?;
        metrics.register(in_flight.clone())?;
        Ok(Self { requests, duration, in_flight })
    }
}

super::macros::layer_with_config!(HttpMetricsLayer => HttpMetrics);

/// The service made by [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    layer: HttpMetricsLayer,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HttpMetrics<S>
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
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        self.layer.in_flight.inc();
        let guard = InFlight(self.layer.in_flight.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            state: Some(State { layer: self.layer.clone(), route, method, start: Instant::now(), _guard: guard }),
        }
    }
}

/// The method as a label: the standard ones by name, anything else as `_OTHER`, so made-up
/// methods cannot create new series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct State {
    layer: HttpMetricsLayer,
    route: Option<MatchedPath>,
    method: Method,
    start: Instant,
    _guard: InFlight,
}

pin_project! {
    /// Response future of [`HttpMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Some(s), Ok(resp)) = (this.state.take(), &out) {
            let status = resp.status();
            let route = s.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            let labels = [method_label(&s.method), route, status.as_str()];
            s.layer.requests.with_label_values(&labels).inc();
            s.layer.duration.with_label_values(&labels).observe(s.start.elapsed().as_secs_f64());
        }
        Poll::Ready(out)
    }
}
