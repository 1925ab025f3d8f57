//! The current request's id and deadline, for code that has no access to the request (an
//! outbound HTTP call deep inside a handler).
//!
//! Keel's stack runs every request's future inside a `tokio::task_local!` scope holding its
//! [`RequestContext`]. Keel's HTTP client reads it to send `X-Request-ID` and the remaining
//! time (`x-request-timeout-ms`) upstream, so request ids follow a call chain and an upstream
//! never works past its caller's deadline.
//!
//! The semantics are tokio's [`LocalKey::scope`](tokio::task::LocalKey::scope): the context
//! belongs to the future it was given to and is set while that future is polled (and while it
//! is dropped); a request served inside another's poll sees its own, then the outer one again.
//! A task spawned from a handler does not inherit it: pass it on with [`scope`].

use std::future::Future;
use std::time::Duration;

use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

use super::RequestId;

/// The header that carries a caller's remaining time budget, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// [`TIMEOUT_HEADER`] as a header name (looked up on every request; a `&str` key is parsed on
/// every lookup).
pub static TIMEOUT_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(TIMEOUT_HEADER);

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// What is known about the request being handled.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Its id.
    pub request_id: Option<RequestId>,
    /// When its answer is due.
    pub deadline: Option<Instant>,
}

impl RequestContext {
    /// Time left before the deadline (zero once passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// The context of the request whose future is being polled, if any.
///
/// ```
/// use keel_http::context::{self, RequestContext};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(context::current().is_none());
/// let ctx = RequestContext { request_id: None, deadline: Some(tokio::time::Instant::now()) };
/// let seen = context::scope(ctx, async { context::current() }).await;
/// assert!(seen.is_some_and(|c| c.deadline.is_some()));
/// assert!(context::current().is_none());
/// # }
/// ```
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(RequestContext::clone).ok()
}

/// Runs `fut` with `ctx` as the current request context (see the module docs).
pub fn scope<F: Future>(ctx: RequestContext, fut: F) -> Scoped<F> {
    CURRENT.scope(ctx, fut)
}

/// A future run with a request context: see [`scope`].
pub type Scoped<F> = TaskLocalFuture<RequestContext, F>;

/// Sets the [`RequestContext`] (its id, from [`RequestIdLayer`](super::request_id::RequestIdLayer),
/// which must be outside it) around everything below it; the timeout layer adds the deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContextLayer;

crate::layer_with_config!(RequestContextLayer => SetRequestContext);

impl<B, F: Future> crate::middleware::Middleware<B, F> for RequestContextLayer {
    type Future = Scoped<F>;

    fn call(&self, req: http::Request<B>, inner: impl FnOnce(http::Request<B>) -> F) -> Scoped<F> {
        let ctx = RequestContext { request_id: RequestId::from_extensions(req.extensions()), deadline: None };
        scope(ctx, inner(req))
    }
}

#[cfg(test)]
mod tests {
    use std::task::Context;

    use super::*;

    fn ctx(id: &str) -> RequestContext {
        RequestContext {
            request_id: Some(RequestId(http::HeaderValue::from_str(id).unwrap())),
            deadline: Some(Instant::now()),
        }
    }

    fn current_id() -> Option<String> {
        current().and_then(|c| c.request_id).map(|id| id.as_str().to_owned())
    }

    #[tokio::test]
    async fn set_only_while_its_future_is_polled() {
        assert_eq!(current_id(), None);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut fut = Box::pin(scope(ctx("a"), async move {
            let before = current_id();
            rx.await.unwrap();
            (before, current_id())
        }));
        // First poll: pending, and the context is gone again afterwards.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(current_id(), None);
        tx.send(()).unwrap();
        // Second poll: the context is there again, moved back and forth without loss.
        let (before, after) = fut.await;
        assert_eq!(before.as_deref(), Some("a"));
        assert_eq!(after.as_deref(), Some("a"));
        assert_eq!(current_id(), None);
    }

    #[tokio::test]
    async fn nested_scopes_restore_the_outer_one() {
        let seen = scope(ctx("outer"), async {
            let inner = scope(ctx("inner"), async { current_id() }).await;
            (inner, current_id())
        })
        .await;
        assert_eq!(seen, (Some("inner".to_owned()), Some("outer".to_owned())));
    }

    #[tokio::test]
    async fn restored_when_the_poll_unwinds() {
        let seen = scope(ctx("outer"), async {
            let unwound = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(scope(ctx("a"), async {
                let seen = current_id();
                std::panic::panic_any(seen);
            })))
            .await;
            let inner = unwound.unwrap_err().downcast::<Option<String>>().map(|b| *b).ok().flatten();
            (inner, current_id())
        })
        .await;
        assert_eq!(seen, (Some("a".to_owned()), Some("outer".to_owned())));
        assert_eq!(current_id(), None);
    }
}
