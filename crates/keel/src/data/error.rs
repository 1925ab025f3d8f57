//! Errors of the data layer, and how they leave the service as HTTP.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::Backend;
use crate::http::Problem;

/// Seconds a client is asked to wait when the database is unavailable.
pub const RETRY_AFTER_SECS: u64 = crate::data_retry_after();

/// A data-layer failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The database is known to be down (or not connected yet): failed fast, without waiting on
    /// the pool. Answers 503.
    #[error("database unavailable: {reason}")]
    Unavailable {
        /// Why (sanitized).
        reason: String,
    },
    /// No connection became free within `database.pool.acquire_timeout`. Answers 503.
    #[error("timed out waiting for a database connection")]
    AcquireTimeout,
    /// The database returned an error. Answers 404 for "no row", else 500 (details only logged).
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The service has no migrations for this backend.
    #[error("the service ships no migrations for {0}")]
    NoMigrations(Backend),
    /// The configuration cannot be used.
    #[error("database configuration: {0}")]
    Config(String),
}

impl DataError {
    /// A short, stable label for `db_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::AcquireTimeout => "pool_timeout",
            Self::Sql(e) => sql_kind(e),
            Self::Migrate(_) => "migrate",
            Self::NoMigrations(_) | Self::Config(_) => "config",
        }
    }
}

pub(crate) fn sql_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Io(_) => "io",
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::Database(_) => "database",
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => "decode",
        sqlx::Error::Configuration(_) => "config",
        _ => "other",
    }
}

/// Whether an error means the connection to the database is gone (as opposed to a bad query,
/// or a pool that is merely busy: a pool timeout under load says nothing about the database).
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_))
}

impl IntoResponse for DataError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable { .. } | Self::AcquireTimeout => {
                tracing::warn!(error = %self, "database call refused");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service degraded")
                    .detail("a dependency of this service is unavailable; retry later")
                    .code("SERVICE_DEGRADED")
                    .retry_after(RETRY_AFTER_SECS)
                    .into_response()
            }
            Self::Sql(sqlx::Error::RowNotFound) => Problem::not_found().into_response(),
            _ => {
                tracing::error!(error = %self, "database call failed");
                Problem::internal().into_response()
            }
        }
    }
}
