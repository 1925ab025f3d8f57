//! RED metrics for the HTTP server.
//!
//! * `http_server_requests_total{method,route,status}` — counter
//! * `http_server_request_duration_seconds{method,route,status}` — histogram
//! * `http_server_requests_in_flight` — gauge
//!
//! `route` is the matched route template (`/items/{id}`), or `unmatched`, so a scan of random
//! URLs cannot blow up the number of series. Apply after routing (`Router::layer`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Method, Request};
use pin_project_lite::pin_project;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

use super::trace::UNMATCHED;
use crate::middleware::{InnerFuture, Middleware};
use keel_telemetry::Metrics;

/// Buckets of the request-duration histogram, in seconds.
pub const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Records HTTP metrics; see the module docs.
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    // One `Arc`: the layer is cloned with the route on every request.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells this layer's entries in the per-thread handle cache from other layers'.
    id: u64,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

/// Entries kept per thread before the cache starts over (routes × methods × statuses of every
/// service in the process; far more than a real service has).
const MAX_CACHED: usize = 4096;

/// A request's series, found by label values once and then by this cheap key: the route
/// template's address (axum keeps one `Arc<str>` per route for the router's life), the method
/// and the status. The template's text is kept to detect an address reused by another router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    layer: u64,
    route: usize,
    method: &'static str,
    status: u16,
}

struct Handles {
    route: Box<str>,
    requests: IntCounter,
    duration: Histogram,
}

thread_local! {
    // Per thread, so a hit takes no lock and touches no shared cache line; `with_label_values`
    // hashes three strings and takes a read lock on every call. foldhash, not SipHash: the
    // keys are the process's own (route addresses, method labels, statuses), and SipHash cost
    // more than the rest of the lookup.
    static HANDLES: RefCell<HashMap<Key, Handles, foldhash::fast::FixedState>> =
        RefCell::new(HashMap::with_hasher(foldhash::fast::FixedState::default()));
}

impl Inner {
    fn record(&self, method: &'static str, route: &str, status: http::StatusCode, secs: f64) {
        let key = Key { layer: self.id, route: route.as_ptr() as usize, method, status: status.as_u16() };
        let cached = HANDLES.try_with(|cell| {
            let mut map = cell.try_borrow_mut().ok()?;
            if let Some(h) = map.get(&key).filter(|h| &*h.route == route) {
                h.observe(secs);
                return Some(());
            }
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            let h = self.series(method, route, status);
            h.observe(secs);
            map.insert(key, h);
            Some(())
        });
        // No cache on this thread (being torn down): look the series up directly.
        if !matches!(cached, Ok(Some(()))) {
            self.series(method, route, status).observe(secs);
        }
    }

    fn series(&self, method: &'static str, route: &str, status: http::StatusCode) -> Handles {
        let labels = [method, route, status.as_str()];
        Handles {
            route: route.into(),
            requests: self.requests.with_label_values(&labels),
            duration: self.duration.with_label_values(&labels),
        }
    }
}

impl Handles {
    fn observe(&self, secs: f64) {
        self.requests.inc();
        self.duration.observe(secs);
    }
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
        let id = NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Self { inner: Arc::new(Inner { id, requests, duration, in_flight }) })
    }
}

crate::layer_with_config!(HttpMetricsLayer => HttpMetrics);

impl<ReqB, F> Middleware<ReqB, F> for HttpMetricsLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = method_label(req.method());
        self.inner.in_flight.inc();
        // Made before the inner call: if that panics, unwinding drops it and counts it out.
        let state = State { layer: self.inner.clone(), route, method, start: Instant::now() };
        ResponseFuture { inner: inner(req), state: Some(state) }
    }
}

/// The method as a label: the standard ones by name, anything else as `_OTHER`, so made-up
/// methods cannot create new series.
pub(crate) fn method_label(m: &Method) -> &'static str {
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

/// A request in flight: counted out when dropped, answered or cancelled. Reaches the gauge
/// through the layer's `Arc` rather than a clone of its own (one shared reference count
/// touched per request, not two).
struct State {
    layer: Arc<Inner>,
    route: Option<MatchedPath>,
    method: &'static str,
    start: Instant,
}

impl Drop for State {
    fn drop(&mut self) {
        self.layer.in_flight.dec();
    }
}

pin_project! {
    /// Response future of [`HttpMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<State>,
    }
}

impl<F: InnerFuture> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Some(s), Ok(resp)) = (this.state.take(), &out) {
            let route = s.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            s.layer.record(s.method, route, resp.status(), s.start.elapsed().as_secs_f64());
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, route: &str, status: &str) -> u64 {
        m.registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "http_server_requests_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|s| {
                let l = s.get_label();
                l.iter().any(|p| p.name() == "route" && p.value() == route)
                    && l.iter().any(|p| p.name() == "status" && p.value() == status)
            })
            .map(|s| s.get_counter().get_value() as u64)
            .sum()
    }

    #[test]
    fn cached_handles_count_per_layer_route_and_status() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let (la, lb) = (HttpMetricsLayer::new(&a).unwrap(), HttpMetricsLayer::new(&b).unwrap());
        let route: Arc<str> = Arc::from("/items/{id}");
        for _ in 0..3 {
            la.inner.record("GET", &route, http::StatusCode::OK, 0.001);
        }
        la.inner.record("GET", &route, http::StatusCode::NOT_FOUND, 0.001);
        lb.inner.record("GET", &route, http::StatusCode::OK, 0.001);
        assert_eq!(count(&a, "/items/{id}", "200"), 3);
        assert_eq!(count(&a, "/items/{id}", "404"), 1);
        assert_eq!(count(&b, "/items/{id}", "200"), 1, "another layer's cache entry is not reused");
    }

    #[test]
    fn a_reused_address_with_other_text_gets_its_own_series() {
        let m = Metrics::new();
        let layer = HttpMetricsLayer::new(&m).unwrap();
        // Same buffer (same address), different template text: the cache must not mix them up.
        let mut buf = String::with_capacity(16);
        buf.push_str("/a");
        layer.inner.record("GET", &buf, http::StatusCode::OK, 0.001);
        buf.clear();
        buf.push_str("/b");
        layer.inner.record("GET", &buf, http::StatusCode::OK, 0.001);
        layer.inner.record("GET", &buf, http::StatusCode::OK, 0.001);
        assert_eq!(count(&m, "/a", "200"), 1);
        assert_eq!(count(&m, "/b", "200"), 2);
    }
}
