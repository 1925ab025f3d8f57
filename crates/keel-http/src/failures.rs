//! The last server errors (5xx) a service answered, with their request ids: what an operator
//! pastes into the log search at 3 a.m.
//!
//! [`RecentFailuresLayer`] keeps the last [`KEPT`] answers with a 5xx status — when, method,
//! route template, status and the `x-request-id` the client got — in a [`RecentFailures`] the
//! operator page reads. Outermost in the stack, it sees every 5xx the layers below make (a
//! panic's 500, a timeout's 504, an overload 503) and the request id already on the response.
//! Per request it keeps the method's label, the route template and the list (two shared
//! pointers: two reference counts touched); only a 5xx takes the list's lock.
//!
//! ```
//! use axum::{Router, routing::get, http::StatusCode};
//! use keel_http::failures::{RecentFailures, RecentFailuresLayer};
//!
//! let recent = RecentFailures::default();
//! let app: Router = Router::new()
//!     .route("/boom", get(|| async { StatusCode::BAD_GATEWAY }))
//!     .layer(RecentFailuresLayer::new(recent.clone()));
//! assert!(recent.list().is_empty());
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::extract::MatchedPath;
use http::Request;
use pin_project_lite::pin_project;
use serde::Serialize;

use crate::metrics::method_label;
use crate::middleware::{InnerFuture, Middleware};
use crate::trace::UNMATCHED;

/// How many server errors are kept.
pub const KEPT: usize = 20;

/// One server error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// When it was answered (RFC 3339, UTC, milliseconds).
    pub at: String,
    /// The method (`_OTHER` for a non-standard one).
    pub method: &'static str,
    /// The route template (`unmatched` for none).
    pub route: String,
    /// The status.
    pub status: u16,
    /// The `x-request-id` the client got (empty when the stack below set none).
    pub request_id: String,
}

/// The last [`KEPT`] server errors, newest first; cheap to clone (one shared list).
#[derive(Debug, Clone, Default)]
pub struct RecentFailures {
    // One `Arc`: it is cloned for every request.
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    list: Mutex<VecDeque<Failure>>,
    /// Server errors since start, kept or not.
    total: std::sync::atomic::AtomicU64,
}

impl RecentFailures {
    fn push(&self, failure: Failure) {
        self.inner.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut list = self.inner.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() == KEPT {
            list.pop_back();
        }
        list.push_front(failure);
    }

    /// The kept server errors, newest first.
    pub fn list(&self) -> Vec<Failure> {
        self.inner.list.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    /// Server errors answered since start (the list keeps the last [`KEPT`]).
    pub fn total(&self) -> u64 {
        self.inner.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Records server errors into a [`RecentFailures`]; see the module docs.
#[derive(Debug, Clone)]
pub struct RecentFailuresLayer {
    recent: RecentFailures,
}

impl RecentFailuresLayer {
    /// Records into `recent`.
    pub fn new(recent: RecentFailures) -> Self {
        Self { recent }
    }
}

crate::layer_with_config!(RecentFailuresLayer => RecordFailures);

impl<ReqB, F> Middleware<ReqB, F> for RecentFailuresLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = method_label(req.method());
        ResponseFuture { inner: inner(req), recent: self.recent.clone(), route, method }
    }
}

pin_project! {
    /// Response future of [`RecordFailures`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        recent: RecentFailures,
        route: Option<MatchedPath>,
        method: &'static str,
    }
}

impl<F: InnerFuture> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &out
            && resp.status().is_server_error()
        {
            let id = resp.headers().get(&crate::request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            this.recent.push(Failure {
                at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                method: this.method,
                route: this.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str).to_owned(),
                status: resp.status().as_u16(),
                request_id: id.to_owned(),
            });
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use http::StatusCode;
    use tower::ServiceExt;

    #[tokio::test]
    async fn server_errors_are_kept_newest_first_with_their_request_ids() {
        let recent = RecentFailures::default();
        let app = axum::Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route("/items/{id}", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route("/bad", get(|| async { StatusCode::BAD_REQUEST }))
            .layer(
                tower::ServiceBuilder::new()
                    .layer(RecentFailuresLayer::new(recent.clone()))
                    .layer(crate::request_id::RequestIdLayer),
            );
        let get = |uri: &str, id: Option<&str>| {
            let mut req = Request::get(uri);
            if let Some(id) = id {
                req = req.header("x-request-id", id);
            }
            app.clone().oneshot(req.body(Body::empty()).unwrap())
        };
        assert_eq!(get("/ok", None).await.unwrap().status(), 200);
        assert_eq!(get("/bad", None).await.unwrap().status(), 400);
        assert!(recent.list().is_empty(), "only 5xx are kept");
        get("/items/7", Some("req-first")).await.unwrap();
        let resp = get("/items/8", None).await.unwrap();
        let made = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let list = recent.list();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].method, list[0].route.as_str(), list[0].status), ("GET", "/items/{id}", 503));
        assert_eq!(list[0].request_id, made, "the id the client got, made by the stack");
        assert_eq!(list[1].request_id, "req-first");
        for _ in 0..KEPT {
            get("/items/9", None).await.unwrap();
        }
        assert_eq!(recent.list().len(), KEPT, "bounded");
        assert_eq!(recent.total(), 2 + KEPT as u64);
        assert_ne!(recent.list()[KEPT - 1].request_id, "req-first", "the oldest went first");
    }
}
