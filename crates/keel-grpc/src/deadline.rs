//! The call's deadline: the client's `grpc-timeout`, and `grpc.request_timeout` for the
//! handler; and the end of open streams when the server drains.
//!
//! The handler's future is polled with a [`RequestContext`](keel_http::context::RequestContext)
//! whose deadline is the nearer of the two, so Keel's HTTP and gRPC clients called from it send
//! the remaining time upstream. A handler that has not answered by then is dropped and the call
//! ends `DEADLINE_EXCEEDED`. The client's deadline also bounds the response stream; and when
//! the drain token is cancelled (shutdown) a stream waiting for its next message ends
//! `UNAVAILABLE`, so long-lived streams do not hold the drain to `shutdown.timeout`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use keel_http::middleware::{InnerFuture, Middleware, ResponseBody};

use crate::body::Cut;
use crate::status::{Status, response};
use keel_http::context::{self, RequestContext, Scoped};
use keel_http::request_id::RequestId;

/// The header a client's deadline comes in.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The time a `grpc-timeout` value asks for: at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`).
///
/// ```
/// use std::time::Duration;
/// use keel_grpc::deadline::parse_timeout;
///
/// assert_eq!(parse_timeout(&"250m".parse().unwrap()), Some(Duration::from_millis(250)));
/// assert_eq!(parse_timeout(&"2S".parse().unwrap()), Some(Duration::from_secs(2)));
/// assert_eq!(parse_timeout(&"123456789S".parse().unwrap()), None);
/// assert_eq!(parse_timeout(&"10x".parse().unwrap()), None);
/// ```
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let v = value.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `duration` as a `grpc-timeout` value (milliseconds, rounded up; at most 8 digits).
pub fn timeout_value(duration: Duration) -> HeaderValue {
    let ms = duration.as_nanos().div_ceil(1_000_000).min(99_999_999);
    HeaderValue::try_from(format!("{ms}m")).unwrap_or(HeaderValue::from_static("1m"))
}

/// Applies the deadlines and the drain; see the module docs.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    request_timeout: Duration,
    drain: Option<CancellationToken>,
}

impl DeadlineLayer {
    /// Handlers get at most `request_timeout`.
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout, drain: None }
    }

    /// Ends waiting response streams when `drain` is cancelled.
    #[must_use]
    pub fn drain(mut self, drain: CancellationToken) -> Self {
        self.drain = Some(drain);
        self
    }
}

keel_http::layer_with_config!(DeadlineLayer => Deadline);

/// `start + d`, or a year on when the clock cannot hold it.
fn after(start: Instant, d: Duration) -> Instant {
    start.checked_add(d).or_else(|| start.checked_add(Duration::from_secs(365 * 86_400))).unwrap_or(start)
}

impl<ReqB, F: Future> Middleware<ReqB, F> for DeadlineLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let now = Instant::now();
        let id = RequestId::from_extensions(req.extensions());
        let asked = req.headers().get(GRPC_TIMEOUT).and_then(parse_timeout).map(|d| after(now, d));
        let handler = after(now, self.request_timeout);
        let deadline = asked.map_or(handler, |a| a.min(handler));
        let ctx = RequestContext { request_id: id.clone(), deadline: Some(deadline) };
        ResponseFuture {
            inner: context::scope(ctx, inner(req)),
            sleep: tokio::time::sleep_until(deadline),
            asked,
            drain: self.drain.clone(),
            id,
        }
    }
}

pin_project! {
    /// Response future of [`Deadline`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Scoped<F>,
        #[pin]
        sleep: Sleep,
        asked: Option<Instant>,
        drain: Option<CancellationToken>,
        id: Option<RequestId>,
    }
}

impl<F: InnerFuture<Body: ResponseBody>> Future for ResponseFuture<F> {
    type Output = Result<Response<Body>, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            let asked = *this.asked;
            let drain = this.drain.take().map(CancellationToken::cancelled_owned);
            return Poll::Ready(out.map(|resp| resp.map(|b| Body::new(Cut::new(b, asked, drain)))));
        }
        std::task::ready!(this.sleep.poll(cx));
        tracing::warn!("gRPC call passed its deadline before the handler answered");
        Poll::Ready(Ok(response(Status::deadline_exceeded("the call's deadline passed"), this.id.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_written_in_milliseconds_rounded_up() {
        assert_eq!(timeout_value(Duration::from_micros(1500)), "2m");
        assert_eq!(timeout_value(Duration::from_secs(3)), "3000m");
        assert_eq!(timeout_value(Duration::from_secs(10_000_000)), "99999999m");
        assert_eq!(parse_timeout(&timeout_value(Duration::from_millis(7))), Some(Duration::from_millis(7)));
        assert_eq!(parse_timeout(&HeaderValue::from_static("m")), None);
        assert_eq!(parse_timeout(&HeaderValue::from_static("1H")), Some(Duration::from_secs(3600)));
    }
}
