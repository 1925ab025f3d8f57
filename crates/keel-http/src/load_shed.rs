//! Server-side load shedding: past `max_in_flight` concurrent requests, answer 503 at once.
//!
//! Shedding early keeps latency bounded for the requests already admitted, instead of letting
//! every request slow down together until all of them time out. The shed response is a problem
//! document with `Retry-After` and is counted in `http_server_requests_shed_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use http::Request;
use pin_project_lite::pin_project;
use prometheus::IntCounter;

use crate::middleware::{InnerFuture, Middleware, ResponseBody};

use super::problem::Problem;
use super::request_id::RequestId;

/// Seconds suggested in `Retry-After` when shedding.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Places for the requests (or gRPC calls) in flight, at most `max` taken at once; clones share
/// them. The count behind [`LoadShedLayer`] and keel-grpc's shedding.
#[derive(Debug, Clone)]
pub struct InFlight {
    max: usize,
    // One `Arc` for the count and the counter: axum clones the layered service per request.
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    in_flight: AtomicUsize,
    shed: OnceLock<IntCounter>,
}

impl InFlight {
    /// At most `max` places.
    pub fn new(max: usize) -> Self {
        Self { max, shared: Arc::default() }
    }

    /// Counts each refusal in `shed`, for every clone (the first counter given stays).
    #[must_use]
    pub fn counting_shed(self, shed: IntCounter) -> Self {
        let _ = self.shared.shed.set(shed);
        self
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Takes a place, given back when the [`Admitted`] is dropped; `None` (counted as shed)
    /// when all are taken.
    pub fn admit(&self) -> Option<Admitted> {
        let before = self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if before < self.max {
            return Some(Admitted(self.shared.clone()));
        }
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(c) = self.shared.shed.get() {
            c.inc();
        }
        None
    }
}

/// A place taken by [`InFlight::admit`], given back when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts requests in flight and sheds past the limit. Clones share the count.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    places: InFlight,
}

impl LoadShedLayer {
    /// Sheds when more than `max` requests are in flight.
    pub fn new(max: usize) -> Self {
        Self { places: InFlight::new(max) }
    }

    /// Counts shed requests in `http_server_requests_shed_total`.
    pub fn with_metrics(mut self, metrics: &keel_telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let c = IntCounter::new(
            "http_server_requests_shed_total",
            "Requests refused with 503 because too many were in flight.",
        )?;
        metrics.register(c.clone())?;
        self.places = self.places.counting_shed(c);
        Ok(self)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.places.taken()
    }
}

crate::layer_with_config!(LoadShedLayer => LoadShed);

/// The 503 answer to a shed request.
fn shed_response(id: Option<&RequestId>) -> Response {
    Problem::unavailable("the service is at capacity; retry shortly", RETRY_AFTER_SECS)
        .code("OVERLOADED")
        .into_response_with_id(id.map(RequestId::as_str))
}

impl<ReqB, F> Middleware<ReqB, F> for LoadShedLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let Some(place) = self.places.admit() else {
            let resp = shed_response(RequestId::from_extensions(req.extensions()).as_ref());
            return ResponseFuture { kind: Kind::Shed { resp: Some(resp) } };
        };
        ResponseFuture { kind: Kind::Running { inner: inner(req), _place: place } }
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
        Running { #[pin] inner: F, _place: Admitted },
        // `None` once the 503 has been returned.
        Shed { resp: Option<Response> },
    }
}

impl<F: InnerFuture<Body: ResponseBody>> Future for ResponseFuture<F> {
    type Output = Result<Response, F::Error>;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn places_are_taken_up_to_max_and_given_back_when_dropped() {
        let shed = IntCounter::new("shed_total", "refused").unwrap();
        let places = InFlight::new(2).counting_shed(shed.clone());
        let first = places.admit().expect("a first place");
        let second = places.clone().admit().expect("a clone takes from the same places");
        assert_eq!(places.taken(), 2);
        assert!(places.admit().is_none(), "past max");
        assert_eq!(places.taken(), 2, "a refusal keeps no place");
        assert_eq!(shed.get(), 1, "and is counted");
        drop(first);
        assert_eq!(places.taken(), 1);
        let _third = places.admit().expect("a place given back is free again");
        drop(second);
        assert_eq!(places.taken(), 1);
    }

    #[test]
    fn a_counter_added_later_sees_the_places_already_taken() {
        let places = InFlight::new(1);
        let held = places.admit().unwrap();
        let counted = places.clone().counting_shed(IntCounter::new("shed_total", "refused").unwrap());
        assert!(counted.admit().is_none(), "the place held before is still taken");
        drop(held);
        assert_eq!(counted.taken(), 0);
        assert!(places.admit().is_some());
    }
}
