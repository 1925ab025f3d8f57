//! Why a write failed inside its transaction: a problem the client caused (4xx, said as is), or
//! a database/outbox failure (logged; the client gets a bare 500 or 503). Transient database
//! conflicts (deadlocks, serialization failures, a busy SQLite, a unique key taken first) are
//! told apart so `keel::data::transaction!` runs the transaction again instead of failing.
//! Statement errors are counted where they fail (`Db::on`). Handlers answer
//! `Result<_, Problem>`: a `Fail` becomes a [`Problem`] through `?`.

use http::StatusCode;
use keel::Problem;
use keel::data::DataError;
use keel::events::outbox::OutboxError;

/// A failed write.
#[derive(Debug)]
pub(crate) enum Fail {
    /// The answer to give (4xx).
    Problem(Problem),
    /// A statement failed (kept raw to tell a unique key taken first apart).
    Sql(sqlx::Error),
    /// The database failed, or the pool refused.
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
        Self::Data(e)
    }
}

impl From<OutboxError> for Fail {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Sql(e) => Self::Sql(e),
            OutboxError::Data(e) => Self::Data(e),
            e => Self::Outbox(e),
        }
    }
}

/// A unique key another transaction took first: the next run sees its row.
fn taken_first(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl keel::data::Transient for Fail {
    /// Keel's conflicts (a serialization failure or deadlock, a lock not granted in time, a
    /// busy or locked SQLite), or a unique key another transaction took first.
    fn is_transient(&self) -> bool {
        match self {
            Self::Sql(e) => e.is_transient() || taken_first(e),
            Self::Data(e) => e.is_transient() || matches!(e, DataError::Sql(e) if taken_first(e)),
            _ => false,
        }
    }
}

impl From<Fail> for Problem {
    /// The answer: 4xx as is; a database failure 503 or 500, an outbox failure 500 (logged).
    fn from(f: Fail) -> Self {
        match f {
            Fail::Problem(p) => p,
            Fail::Sql(e) => DataError::Sql(e).into(),
            Fail::Data(e) => e.into(),
            Fail::Outbox(e) => e.into(),
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
