//! The current request's id and deadline, for code that has no access to the request (an
//! outbound HTTP call deep inside a handler).
//!
//! Keel's stack runs every request's future with its [`RequestContext`] set as the current
//! one while it is polled. Keel's HTTP client reads it to send `X-Request-ID` and the
//! remaining time (`x-request-timeout-ms`) upstream, so request ids follow a call chain and an
//! upstream never works past its caller's deadline.
//!
//! Like a tokio task-local, the context belongs to the future it was given to: it is set on
//! the polling thread only while that future is polled, and put back as it was when the poll
//! returns (or unwinds), so a request served inside another's poll sees its own and then
//! hands the outer one back. A task spawned from a handler does not inherit it. Unlike a
//! task-local, it is kept in a plain thread-local cell: setting and restoring it is two moves
//! of the context, with no borrow flag (a request pays for it on every poll). And unlike
//! tokio's scope, it is not set while the future is dropped (completed, timed out or
//! cancelled): a `Drop` that calls [`current`] sees the context of whatever is being polled
//! around it, if anything.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::RequestId;

/// The header that carries a caller's remaining time budget, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// [`TIMEOUT_HEADER`] as a header name (looked up on every request; a `&str` key is parsed on
/// every lookup).
pub static TIMEOUT_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(TIMEOUT_HEADER);

thread_local! {
    /// The context of the future this thread is polling, if it was given one.
    static CURRENT: Cell<Option<RequestContext>> = const { Cell::new(None) };
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

/// The context of the request whose future this thread is polling, if any.
///
/// ```
/// use keel::http::context::{self, RequestContext};
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
    CURRENT
        .try_with(|cell| {
            let ctx = cell.take();
            let copy = ctx.clone();
            cell.set(ctx);
            copy
        })
        .ok()
        .flatten()
}

/// Runs `fut` with `ctx` as the current request context whenever it is polled (not while it is
/// dropped; see the module docs).
pub fn scope<F: Future>(ctx: RequestContext, fut: F) -> Scoped<F> {
    Scoped { ctx: Some(ctx), fut }
}

pin_project! {
    /// A future run with a request context: see [`scope`].
    #[derive(Debug)]
    pub struct Scoped<F> {
        ctx: Option<RequestContext>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        enter(this.ctx, || this.fut.poll(cx))
    }
}

/// Runs `f` with the context in `slot` as the current one, and puts it back in `slot` when
/// `f` returns or unwinds (the thread's previous context, if any, is current again). Runs `f`
/// without it if the thread is being torn down.
fn enter<R>(slot: &mut Option<RequestContext>, f: impl FnOnce() -> R) -> R {
    let Ok(previous) = CURRENT.try_with(|cell| cell.replace(slot.take())) else { return f() };
    let _restore = Restore { slot, previous };
    f()
}

/// Gives the context back to its future, and the thread its previous one, when dropped.
struct Restore<'a> {
    slot: &'a mut Option<RequestContext>,
    previous: Option<RequestContext>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        if let Ok(ctx) = CURRENT.try_with(|cell| cell.replace(previous)) {
            *self.slot = ctx;
        }
    }
}

/// Sets the [`RequestContext`] (its id, from [`RequestIdLayer`](super::request_id::RequestIdLayer),
/// which must be outside it) around everything below it; the timeout layer adds the deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContextLayer;

impl<S> tower::Layer<S> for RequestContextLayer {
    type Service = SetRequestContext<S>;
    fn layer(&self, inner: S) -> SetRequestContext<S> {
        SetRequestContext { inner }
    }
}

/// The service made by [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct SetRequestContext<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for SetRequestContext<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ctx = RequestContext { request_id: RequestId::from_extensions(req.extensions()), deadline: None };
        scope(ctx, self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn restored_when_the_poll_unwinds() {
        let mut outer = Some(ctx("outer"));
        enter(&mut outer, || {
            let mut slot = Some(ctx("a"));
            let mut seen = None;
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                enter(&mut slot, || {
                    seen = current_id();
                    std::panic::panic_any("in the poll");
                })
            }));
            assert_eq!(unwound.unwrap_err().downcast_ref::<&str>(), Some(&"in the poll"));
            assert_eq!(seen.as_deref(), Some("a"), "set during the poll");
            assert_eq!(current_id().as_deref(), Some("outer"), "the thread's previous context is put back");
            let back = slot.and_then(|c| c.request_id).map(|id| id.as_str().to_owned());
            assert_eq!(back.as_deref(), Some("a"), "and the future's is given back to it");
        });
        assert_eq!(current_id(), None);
        assert!(outer.is_some());
    }
}
