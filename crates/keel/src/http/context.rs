//! The current request's id and deadline, for code that has no access to the request (an
//! outbound HTTP call deep inside a handler).
//!
//! The timeout layer runs every request inside a [`RequestContext`] scope. Keel's HTTP client
//! reads it to send `X-Request-ID` and the remaining time (`x-request-timeout-ms`) upstream, so
//! request ids follow a call chain and an upstream never works past its caller's deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::RequestId;

/// The header that carries a caller's remaining time budget, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// [`TIMEOUT_HEADER`] as a header name (looked up on every request; a `&str` key is parsed on
/// every lookup).
pub static TIMEOUT_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(TIMEOUT_HEADER);

tokio::task_local! {
    static CONTEXT: RequestContext;
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

/// The context of the request this task is handling, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `ctx` as the current request context.
pub fn scope<F: Future>(ctx: RequestContext, fut: F) -> tokio::task::futures::TaskLocalFuture<RequestContext, F> {
    CONTEXT.scope(ctx, fut)
}
