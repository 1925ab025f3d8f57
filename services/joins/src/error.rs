//! Why a request failed, and how that leaves the service: a problem the client caused (4xx,
//! said as is), or a database/outbox failure (logged; the client gets a bare 500 or 503).
//! Transient database conflicts (deadlocks, serialization failures, a busy SQLite) are told
//! apart so a request can run its transaction again instead of failing.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use keel::Problem;
use keel::data::DataError;
use keel::events::outbox::OutboxError;

/// A failed request.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The answer to give (4xx).
    Problem(Problem),
    /// A statement failed.
    Sql(sqlx::Error),
    /// The pool refused (database down, pool exhausted).
    Data(DataError),
    /// Enqueueing an event failed.
    Outbox(OutboxError),
}

impl From<Problem> for Fail {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<DataError> for Fail {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Sql(e) => Self::Sql(e),
            e => Self::Data(e),
        }
    }
}

impl From<OutboxError> for Fail {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Sql(e) => Self::Sql(e),
            OutboxError::Data(e) => Self::from(e),
            e => Self::Outbox(e),
        }
    }
}

impl keel::data::Transient for Fail {
    /// Keel's conflicts (a serialization failure or deadlock, a lock not granted in time, a
    /// busy or locked SQLite), or a unique key another transaction took first: the next run
    /// sees its row.
    fn is_transient(&self) -> bool {
        match self {
            Self::Sql(e) => e.is_transient() || matches!(e, sqlx::Error::Database(db) if db.is_unique_violation()),
            Self::Data(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl Fail {
    /// The response, with `db` told about statement failures (metrics, availability).
    pub(crate) fn into_response_with(self, db: &keel::data::Db) -> Response {
        match self {
            Self::Problem(p) => p.into_response(),
            Self::Sql(e) => db.observe(e).into_response(),
            Self::Data(e) => e.into_response(),
            Self::Outbox(e) => {
                tracing::error!(error = %e, "enqueueing an event failed");
                Problem::internal().into_response()
            }
        }
    }
}

/// 409 with a stable `code`.
pub(crate) fn conflict(code: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").code(code).detail(detail)
}

/// 403 with a stable `code`.
pub(crate) fn forbidden(code: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").code(code).detail(detail)
}

/// 404 with a detail.
pub(crate) fn not_found(detail: &str) -> Problem {
    Problem::not_found().detail(detail)
}
