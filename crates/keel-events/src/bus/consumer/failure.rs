//! How a handler fails ([`Failure`]), and which errors mean a dependency is unavailable.

use super::*;

/// Why a handler did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Try again (after `after`, or the consumer's backoff) until `max_attempts`.
    Retry {
        /// What went wrong.
        reason: String,
        /// Wait at least this long.
        after: Option<Duration>,
    },
    /// Trying again cannot help: straight to the DLQ.
    Permanent {
        /// What went wrong.
        reason: String,
    },
    /// Something the handler needs is unavailable; the message itself is fine. The consumer
    /// holds the message (spending no attempt), pauses until its dependencies are back, then
    /// runs the handler on it again.
    Unavailable {
        /// What is unavailable.
        reason: String,
    },
    /// The message came before one it depends on (version 3 of a record before version 2):
    /// nothing failed, it is early. Retried every `order_retry` (default 200 ms), not on the
    /// failure backoff, and never dead-lettered, for up to `order_wait` (default 5 min) after
    /// it was published; past that it is an ordinary retry, dead-lettered once its deliveries
    /// (the early ones included) reach `max_attempts`.
    Early {
        /// What it waits for.
        reason: String,
    },
}

impl Failure {
    /// A transient failure: retried with backoff.
    pub fn retry(reason: impl Display) -> Self {
        Self::Retry { reason: reason.to_string(), after: None }
    }
    /// A transient failure to retry no sooner than `after`.
    pub fn retry_after(reason: impl Display, after: Duration) -> Self {
        Self::Retry { reason: reason.to_string(), after: Some(after) }
    }
    /// The message is early: one it depends on is not handled yet (see [`Failure::Early`]).
    pub fn early(reason: impl Display) -> Self {
        Self::Early { reason: reason.to_string() }
    }
    /// A failure that no retry can fix: dead-lettered at once.
    pub fn permanent(reason: impl Display) -> Self {
        Self::Permanent { reason: reason.to_string() }
    }
    /// A dependency is unavailable: the consumer pauses, holding the message, without counting
    /// an attempt.
    pub fn unavailable(reason: impl Display) -> Self {
        Self::Unavailable { reason: reason.to_string() }
    }
    /// The failure `error` stands for: [`Failure::Unavailable`] when it (or an error it wraps)
    /// says a dependency is unavailable (see [`is_unavailable`]), else [`Failure::Retry`]. What
    /// `?` does in a handler.
    pub fn transient(error: &(dyn std::error::Error + 'static)) -> Self {
        if is_unavailable(error) { Self::unavailable(error) } else { Self::retry(error) }
    }
    pub(super) fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. }
            | Self::Permanent { reason }
            | Self::Unavailable { reason }
            | Self::Early { reason } => reason,
        }
    }
    /// The `error.type` of a `process` span that ended so: `retry`, `permanent`, `unavailable`,
    /// `early`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Retry { .. } => "retry",
            Self::Permanent { .. } => "permanent",
            Self::Unavailable { .. } => "unavailable",
            Self::Early { .. } => "early",
        }
    }
}

/// Any error is a transient failure, so `?` works in handlers: one that says a dependency is
/// unavailable pauses the consumer, any other is a retry (see [`Failure::transient`]).
impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::transient(&e)
    }
}

/// Whether `error`, or an error in its [`source`](std::error::Error::source) chain, says a
/// dependency is unavailable rather than that the message is at fault:
///
/// * Keel's [`DataError::Unavailable`](keel_data::DataError::Unavailable) and
///   [`DataError::AcquireTimeout`](keel_data::DataError::AcquireTimeout);
/// * a `sqlx` error the data layer's table ([`RETRYABLE`](keel_data::RETRYABLE)) calls a lost
///   connection, a server shutting down, too many connections or a read-only server, and a
///   pool timeout;
/// * Keel's `RedisError::Unavailable` / `Timeout` and a Redis connection or I/O error;
/// * an outbound call refused by an open breaker or failing to connect (`ClientError`);
/// * [`BusError::Unavailable`](super::super::BusError::Unavailable) and
///   [`BusError::Timeout`](super::super::BusError::Timeout);
/// * an [`std::io::Error`] of a connection kind (refused, reset, aborted, timed out, …).
pub fn is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if says_unavailable(e) {
            return true;
        }
        next = e.source();
    }
    false
}

fn says_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    #[cfg(feature = "sql")]
    {
        // The data layer's table of transient errors (`data::RETRYABLE`) says which; a conflict
        // between transactions (serialization, deadlock, lock timeout) is the message's to retry.
        let outage = |k: keel_data::RetryKind| {
            use keel_data::RetryKind::{ConnectionLost, ReadOnly, Shutdown, TooManyConnections};
            matches!(k, ConnectionLost | Shutdown | TooManyConnections | ReadOnly)
        };
        if let Some(d) = e.downcast_ref::<keel_data::DataError>() {
            return d.retry_kind().is_some_and(outage);
        }
        if let Some(s) = e.downcast_ref::<sqlx::Error>() {
            return matches!(s, sqlx::Error::PoolTimedOut) || keel_data::retry_kind(s).is_some_and(outage);
        }
    }
    #[cfg(feature = "redis")]
    if let Some(r) = e.downcast_ref::<keel_redis::RedisError>() {
        return match r {
            keel_redis::RedisError::Unavailable { .. } | keel_redis::RedisError::Timeout(_) => true,
            keel_redis::RedisError::Redis(r) => {
                r.is_io_error() || r.is_connection_refusal() || r.is_connection_dropped() || r.is_timeout()
            }
            _ => false,
        };
    }
    #[cfg(feature = "client")]
    if let Some(c) = e.downcast_ref::<keel_http::client::ClientError>() {
        return matches!(
            c,
            keel_http::client::ClientError::BreakerOpen { .. }
                | keel_http::client::ClientError::Unreachable { .. }
                | keel_http::client::ClientError::Transport { .. }
        );
    }
    if let Some(b) = e.downcast_ref::<super::super::BusError>() {
        return matches!(b, super::super::BusError::Unavailable(_) | super::super::BusError::Timeout(_));
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        return matches!(
            io.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NetworkDown
                | K::AddrNotAvailable
        );
    }
    false
}
