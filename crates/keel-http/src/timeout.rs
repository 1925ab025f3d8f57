//! A whole-request deadline that answers 504 with a problem document.
//!
//! The deadline is `http.request_timeout`, or sooner when the caller sent a smaller budget in
//! `x-request-timeout-ms` (Keel's client does). The request's future is polled with a
//! [`RequestContext`](super::context::RequestContext) carrying its id and deadline as the
//! current one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::middleware::{InnerFuture, Middleware, ResponseBody};
use axum::body::Body;
use axum::response::Response;
use http::{Request, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::problem::Problem;
use super::request_id::RequestId;

/// Answers 504 when the inner service takes longer than the deadline (its future is dropped).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A deadline of `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

crate::layer_with_config!(TimeoutLayer => Timeout);

impl<ReqB, F: Future> Middleware<ReqB, F> for TimeoutLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let id = RequestId::from_extensions(req.extensions());
        let asked = req.headers().get(&super::context::TIMEOUT_HEADER_NAME).and_then(asked);
        let timeout = budget(asked, self.timeout);
        let deadline = deadline(tokio::time::Instant::now(), timeout);
        let ctx = super::context::RequestContext { request_id: id.clone(), deadline: Some(deadline) };
        ResponseFuture { inner: super::context::scope(ctx, inner(req)), sleep: None, deadline, timeout, id }
    }
}

/// The request's time: `configured`, or less when the caller `asked` for less in
/// `x-request-timeout-ms`.
fn budget(asked: Option<Duration>, configured: Duration) -> Duration {
    asked.map_or(configured, |a| a.min(configured))
}

/// The time asked for in an `x-request-timeout-ms` value, if it is a number of milliseconds.
fn asked(value: &http::HeaderValue) -> Option<Duration> {
    value.to_str().ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis)
}

/// `start + timeout`, or a year from `start` when that is past what the clock can hold (a
/// configured timeout of centuries would otherwise panic on every request).
fn deadline(start: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    start.checked_add(timeout).or_else(|| start.checked_add(Duration::from_secs(365 * 86_400))).unwrap_or(start)
}

/// The 504 answer to a request that ran out of `timeout`; logs it.
fn timed_out(timeout: Duration, id: Option<&RequestId>) -> Response {
    tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
    let problem = Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Request timed out")
        .detail(format!("the request did not complete within {}", humantime::format_duration(timeout)));
    problem.into_response_with_id(id.map(RequestId::as_str))
}

pin_project! {
    /// Response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: super::context::Scoped<F>,
        // Made on the first `Pending` only: a request answered in one poll never touches the
        // runtime's timer (looking up its handle and creating the entry cost more than the
        // rest of this layer). Boxed, so the future every request moves about stays small.
        sleep: Option<Pin<Box<Sleep>>>,
        deadline: tokio::time::Instant,
        timeout: Duration,
        id: Option<RequestId>,
    }
}

impl<F: InnerFuture<Body: ResponseBody>> Future for ResponseFuture<F> {
    type Output = Result<Response, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out.map(|r| r.map(Body::new)));
        }
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*this.deadline)));
        std::task::ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Ok(timed_out(*this.timeout, this.id.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_past_what_the_clock_holds_is_a_year_away() {
        let now = tokio::time::Instant::now();
        assert_eq!(deadline(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        let far = deadline(now, Duration::MAX);
        assert_eq!(far, now + Duration::from_secs(365 * 86_400));
    }
}
