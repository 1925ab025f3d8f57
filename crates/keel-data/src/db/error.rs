//! Errors of the data layer, and how they leave the service as HTTP.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::Backend;
use keel_problem::Problem;

/// Seconds a client is asked to wait when the database is unavailable.
pub const RETRY_AFTER_SECS: u64 = keel_problem::DEPENDENCY_RETRY_AFTER_SECS;

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
    /// A statement ran past the time [`crate::Db::fetch_all_within`] allowed it and was cut off.
    /// Answers 503 `query-timeout` with `Retry-After`.
    #[error("the statement ran past its time limit of {after:?}")]
    StatementTimeout {
        /// The limit.
        after: std::time::Duration,
    },
    /// The database returned an error. Answers 404 for "no row", else 500 (details only logged).
    #[error("database error: {0}")]
    Sql(#[source] sqlx::Error),
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

/// A statement's error as a [`DataError`]: a pool that gave no connection in time is
/// [`DataError::AcquireTimeout`] (503), anything else [`DataError::Sql`]. Counts nothing: a
/// statement run through [`Db::exec`](crate::Db::exec) or [`Db::on`](crate::Db::on) was
/// counted where it failed.
impl From<sqlx::Error> for DataError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Self::AcquireTimeout,
            e => Self::Sql(e),
        }
    }
}

impl DataError {
    /// A short, stable label for `db_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::AcquireTimeout => "pool_timeout",
            Self::StatementTimeout { .. } => "statement_timeout",
            Self::Sql(e) => sql_kind(e),
            Self::Migrate(_) => "migrate",
            Self::NoMigrations(_) | Self::Config(_) => "config",
        }
    }
}

/// Every `db_errors_total{kind}` label: [`DataError::kind`]'s, and `timeout` for a connection or
/// query attempt that did not answer in time. The series exist at zero from the start.
pub(crate) const KINDS: [&str; 21] = [
    "unavailable",
    "timeout",
    "statement_timeout",
    "pool_timeout",
    "pool_closed",
    "io",
    "tls",
    "protocol",
    "database",
    "connection_lost",
    "shutdown",
    "too_many_connections",
    "read_only",
    "serialization",
    "deadlock",
    "lock_timeout",
    "row_not_found",
    "decode",
    "config",
    "migrate",
    "other",
];

pub(crate) fn sql_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Io(_) => "io",
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Protocol(_) => "protocol",
        // A code of the retryable table says which (`shutdown`, `serialization`, …).
        sqlx::Error::Database(_) if is_statement_timeout(e) => "statement_timeout",
        sqlx::Error::Database(_) => retry_kind(e).map_or("database", RetryKind::label),
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => "decode",
        sqlx::Error::Configuration(_) => "config",
        _ => "other",
    }
}

/// Why a failed database call may succeed if made again. Each kind answers 503 with
/// `Retry-After`; see [`RETRYABLE`] for the codes behind each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryKind {
    /// The connection broke or the server is gone (I/O error, PostgreSQL class `08`, MySQL
    /// client errors 2006/2013). Marks the database down.
    ConnectionLost,
    /// The server is shutting down, crashed, or is not accepting connections yet (PostgreSQL
    /// `57P01`/`57P02`/`57P03`, MySQL 1053, MariaDB 1927). Marks the database down.
    Shutdown,
    /// The server refuses more connections (PostgreSQL `53300`, MySQL 1040/1203).
    TooManyConnections,
    /// A write reached a read-only server or transaction (PostgreSQL `25006`, MySQL
    /// 1290/1792/1836): a fail-over in progress, or a replica.
    ReadOnly,
    /// A serialization failure (PostgreSQL `40001`; SQLite `SQLITE_BUSY_SNAPSHOT`, 517: a read
    /// snapshot went stale before the write): run the transaction again.
    Serialization,
    /// A deadlock victim (PostgreSQL `40P01`, MySQL 1213): run the transaction again.
    Deadlock,
    /// A lock was not granted in time (PostgreSQL `55P03`, MySQL 1205; SQLite `SQLITE_BUSY`, 5,
    /// and its extended codes 261 and 773, once `busy_timeout` ran out, and `SQLITE_LOCKED`, 6
    /// and 262): other writers held the database that long.
    LockTimeout,
}

impl RetryKind {
    /// Whether this error means the database itself is unreachable, so callers should fail fast
    /// until a re-probe or the health check finds it back. A conflict between transactions, a
    /// full connection table or a read-only server says nothing of the kind.
    pub fn marks_down(self) -> bool {
        matches!(self, Self::ConnectionLost | Self::Shutdown)
    }

    /// The `db_errors_total{kind}` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection_lost",
            Self::Shutdown => "shutdown",
            Self::TooManyConnections => "too_many_connections",
            Self::ReadOnly => "read_only",
            Self::Serialization => "serialization",
            Self::Deadlock => "deadlock",
            Self::LockTimeout => "lock_timeout",
        }
    }

    /// Seconds the client is asked to wait: a conflict clears at once, an outage takes longer.
    pub fn retry_after(self) -> u64 {
        match self {
            Self::Serialization | Self::Deadlock | Self::LockTimeout => 1,
            _ => RETRY_AFTER_SECS,
        }
    }
}

/// One row of [`RETRYABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryableCode {
    /// The backend that reports it.
    pub backend: Backend,
    /// PostgreSQL: the SQLSTATE. MySQL/MariaDB: the error number (its SQLSTATE is too coarse:
    /// most share `HY000`). SQLite: the extended result code.
    pub code: &'static str,
    /// What it means.
    pub kind: RetryKind,
}

const fn row(backend: Backend, code: &'static str, kind: RetryKind) -> RetryableCode {
    RetryableCode { backend, code, kind }
}

/// The database errors that answer 503 with `Retry-After` instead of 500. Errors without a
/// server code (I/O, TLS, protocol errors, a closed pool) are [`RetryKind::ConnectionLost`].
pub const RETRYABLE: &[RetryableCode] = {
    use Backend::{MySql, Postgres, Sqlite};
    use RetryKind::{ConnectionLost, Deadlock, LockTimeout, ReadOnly, Serialization, Shutdown, TooManyConnections};
    &[
        // PostgreSQL, by SQLSTATE.
        row(Postgres, "08000", ConnectionLost),     // connection_exception
        row(Postgres, "08003", ConnectionLost),     // connection_does_not_exist
        row(Postgres, "08006", ConnectionLost),     // connection_failure
        row(Postgres, "08001", ConnectionLost),     // sqlclient_unable_to_establish_sqlconnection
        row(Postgres, "08004", ConnectionLost),     // sqlserver_rejected_establishment_of_sqlconnection
        row(Postgres, "57P01", Shutdown),           // admin_shutdown
        row(Postgres, "57P02", Shutdown),           // crash_shutdown
        row(Postgres, "57P03", Shutdown),           // cannot_connect_now
        row(Postgres, "53300", TooManyConnections), // too_many_connections
        row(Postgres, "25006", ReadOnly),           // read_only_sql_transaction
        row(Postgres, "40001", Serialization),      // serialization_failure
        row(Postgres, "40P01", Deadlock),           // deadlock_detected
        row(Postgres, "55P03", LockTimeout),        // lock_not_available
        // MySQL and MariaDB, by error number.
        row(MySql, "2006", ConnectionLost),     // CR_SERVER_GONE_ERROR
        row(MySql, "2013", ConnectionLost),     // CR_SERVER_LOST
        row(MySql, "1053", Shutdown),           // ER_SERVER_SHUTDOWN
        row(MySql, "1927", Shutdown),           // ER_CONNECTION_KILLED (MariaDB)
        row(MySql, "1040", TooManyConnections), // ER_CON_COUNT_ERROR
        row(MySql, "1203", TooManyConnections), // ER_TOO_MANY_USER_CONNECTIONS
        row(MySql, "1290", ReadOnly),           // ER_OPTION_PREVENTS_STATEMENT (--read-only)
        row(MySql, "1792", ReadOnly),           // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        row(MySql, "1836", ReadOnly),           // ER_READ_ONLY_MODE
        row(MySql, "1213", Deadlock),           // ER_LOCK_DEADLOCK
        row(MySql, "1205", LockTimeout),        // ER_LOCK_WAIT_TIMEOUT
        // SQLite, by (extended) result code.
        row(Sqlite, "5", LockTimeout),     // SQLITE_BUSY
        row(Sqlite, "261", LockTimeout),   // SQLITE_BUSY_RECOVERY
        row(Sqlite, "773", LockTimeout),   // SQLITE_BUSY_TIMEOUT
        row(Sqlite, "517", Serialization), // SQLITE_BUSY_SNAPSHOT
        row(Sqlite, "6", LockTimeout),     // SQLITE_LOCKED
        row(Sqlite, "262", LockTimeout),   // SQLITE_LOCKED_SHAREDCACHE
    ]
};

/// The row of [`RETRYABLE`] for `backend` and `code`.
pub fn lookup(backend: Backend, code: &str) -> Option<RetryKind> {
    RETRYABLE.iter().find(|r| r.backend == backend && r.code == code).map(|r| r.kind)
}

/// The server's code for a database error: `(backend, SQLSTATE or error number)`.
fn server_code(e: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<(Backend, String)> {
    #[cfg(feature = "mysql")]
    if let Some(my) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some((Backend::MySql, my.number().to_string()));
    }
    #[cfg(feature = "postgres")]
    if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return Some((Backend::Postgres, pg.code().to_owned()));
    }
    #[cfg(feature = "sqlite")]
    if let Some(lite) = e.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // The extended result code, as a number.
        return sqlx::error::DatabaseError::code(lite).map(|c| (Backend::Sqlite, c.into_owned()));
    }
    let _ = e;
    None
}

/// The server's code for a database error, as a span records it (`db.response.status_code`):
/// PostgreSQL's SQLSTATE, MySQL's error number, SQLite's extended result code.
pub(crate) fn server_code_of(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => {
            server_code(db.as_ref()).map(|(_, code)| code).or_else(|| db.code().map(std::borrow::Cow::into_owned))
        }
        _ => None,
    }
}

/// Whether `e` may succeed if the call is made again, and why; `None` for errors that will not
/// (a bad query, a constraint, "no row").
pub fn retry_kind(e: &sqlx::Error) -> Option<RetryKind> {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolClosed => {
            Some(RetryKind::ConnectionLost)
        }
        sqlx::Error::Database(db) => server_code(db.as_ref()).and_then(|(backend, code)| lookup(backend, &code)),
        _ => None,
    }
}

/// Whether the server cut a statement off for its time: PostgreSQL `57014` (query_canceled),
/// MariaDB 1969 (ER_STATEMENT_TIMEOUT), MySQL 3024 (ER_QUERY_TIMEOUT).
pub(crate) fn is_statement_timeout(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    match server_code(db.as_ref()) {
        Some((Backend::Postgres, code)) => code == "57014",
        Some((Backend::MySql, code)) => code == "1969" || code == "3024",
        _ => false,
    }
}

/// Whether an error means the connection to the database is gone (as opposed to a bad query,
/// a conflict between transactions, or a pool that is merely busy: a pool timeout under load
/// says nothing about the database).
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    retry_kind(e).is_some_and(RetryKind::marks_down)
}

impl DataError {
    /// Why the call may succeed if made again (after `Retry-After`), or `None`. A database that
    /// is down or a pool wait that timed out count as [`RetryKind::ConnectionLost`] and
    /// [`RetryKind::TooManyConnections`].
    pub fn retry_kind(&self) -> Option<RetryKind> {
        match self {
            Self::Unavailable { .. } => Some(RetryKind::ConnectionLost),
            Self::AcquireTimeout => Some(RetryKind::TooManyConnections),
            Self::Sql(e) => retry_kind(e),
            _ => None,
        }
    }

    /// Whether the call may succeed if made again: it answers 503 with `Retry-After`.
    pub fn is_retryable(&self) -> bool {
        self.retry_kind().is_some()
    }
}

impl From<DataError> for Problem {
    /// The problem a handler answers for a database failure: 503 with `Retry-After` for what
    /// may pass ([`DataError::retry_kind`], a statement cut off for its time), 404 for a row
    /// that is not there, else 500 (the cause logged, never sent).
    fn from(this: DataError) -> Self {
        if let DataError::StatementTimeout { after } = this {
            tracing::warn!(limit = ?after, "a statement ran past its time limit and was cut off");
            return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "query-timeout", "Query took too long")
                .detail("the query took longer than this service allows for it: narrow it, or retry later")
                .code("QUERY_TIMEOUT")
                .retry_after(1);
        }
        if let Some(kind) = this.retry_kind() {
            tracing::warn!(error = %this, kind = kind.label(), "database call refused or failed transiently");
            let detail = match kind {
                RetryKind::Serialization | RetryKind::Deadlock | RetryKind::LockTimeout => {
                    "the request conflicted with another one; retry it"
                }
                _ => "a dependency of this service is unavailable; retry later",
            };
            return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service degraded")
                .detail(detail)
                .code("SERVICE_DEGRADED")
                .retry_after(kind.retry_after());
        }
        match &this {
            DataError::Sql(sqlx::Error::RowNotFound) => Problem::not_found(),
            _ => {
                tracing::error!(error = %this, "database call failed");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for DataError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every label an error can get is one of the series that exist from the start.
    #[test]
    fn every_kind_is_listed() {
        let errors = [
            DataError::Unavailable { reason: String::new() },
            DataError::AcquireTimeout,
            DataError::StatementTimeout { after: std::time::Duration::from_secs(1) },
            DataError::Sql(sqlx::Error::PoolTimedOut),
            DataError::Sql(sqlx::Error::PoolClosed),
            DataError::Sql(sqlx::Error::Io(std::io::Error::other("x"))),
            DataError::Sql(sqlx::Error::Protocol("x".into())),
            DataError::Sql(sqlx::Error::RowNotFound),
            DataError::Sql(sqlx::Error::ColumnNotFound("x".into())),
            DataError::Sql(sqlx::Error::Configuration("x".into())),
            DataError::Sql(sqlx::Error::WorkerCrashed),
            DataError::NoMigrations(Backend::Sqlite),
            DataError::Config(String::new()),
        ];
        let mut labels: Vec<&str> = errors.iter().map(DataError::kind).collect();
        labels.extend(RETRYABLE.iter().map(|r| r.kind.label()));
        labels.extend(["tls", "database", "migrate", "timeout"]);
        for label in labels {
            assert!(KINDS.contains(&label), "{label}");
        }
    }

    /// Every row of the table, one by one: its kind, whether it marks the database down, and
    /// the answer (503 with `Retry-After`).
    #[test]
    fn every_row_of_the_table_classifies_and_answers_503() {
        let expect: &[(Backend, &str, RetryKind, bool)] = &[
            (Backend::Postgres, "08000", RetryKind::ConnectionLost, true),
            (Backend::Postgres, "08003", RetryKind::ConnectionLost, true),
            (Backend::Postgres, "08006", RetryKind::ConnectionLost, true),
            (Backend::Postgres, "08001", RetryKind::ConnectionLost, true),
            (Backend::Postgres, "08004", RetryKind::ConnectionLost, true),
            (Backend::Postgres, "57P01", RetryKind::Shutdown, true),
            (Backend::Postgres, "57P02", RetryKind::Shutdown, true),
            (Backend::Postgres, "57P03", RetryKind::Shutdown, true),
            (Backend::Postgres, "53300", RetryKind::TooManyConnections, false),
            (Backend::Postgres, "25006", RetryKind::ReadOnly, false),
            (Backend::Postgres, "40001", RetryKind::Serialization, false),
            (Backend::Postgres, "40P01", RetryKind::Deadlock, false),
            (Backend::Postgres, "55P03", RetryKind::LockTimeout, false),
            (Backend::MySql, "2006", RetryKind::ConnectionLost, true),
            (Backend::MySql, "2013", RetryKind::ConnectionLost, true),
            (Backend::MySql, "1053", RetryKind::Shutdown, true),
            (Backend::MySql, "1927", RetryKind::Shutdown, true),
            (Backend::MySql, "1040", RetryKind::TooManyConnections, false),
            (Backend::MySql, "1203", RetryKind::TooManyConnections, false),
            (Backend::MySql, "1290", RetryKind::ReadOnly, false),
            (Backend::MySql, "1792", RetryKind::ReadOnly, false),
            (Backend::MySql, "1836", RetryKind::ReadOnly, false),
            (Backend::MySql, "1213", RetryKind::Deadlock, false),
            (Backend::MySql, "1205", RetryKind::LockTimeout, false),
            (Backend::Sqlite, "5", RetryKind::LockTimeout, false),
            (Backend::Sqlite, "261", RetryKind::LockTimeout, false),
            (Backend::Sqlite, "773", RetryKind::LockTimeout, false),
            (Backend::Sqlite, "517", RetryKind::Serialization, false),
            (Backend::Sqlite, "6", RetryKind::LockTimeout, false),
            (Backend::Sqlite, "262", RetryKind::LockTimeout, false),
        ];
        assert_eq!(RETRYABLE.len(), expect.len(), "a test per row");
        for &(backend, code, kind, down) in expect {
            assert_eq!(lookup(backend, code), Some(kind), "{backend} {code}");
            assert_eq!(kind.marks_down(), down, "{backend} {code}");
            assert!(kind.retry_after() >= 1);
        }
        // Codes are per backend: a MySQL number is not a PostgreSQL SQLSTATE.
        assert_eq!(lookup(Backend::Postgres, "1213"), None);
        assert_eq!(lookup(Backend::MySql, "40P01"), None);
        assert_eq!(lookup(Backend::Postgres, "23505"), None, "a unique violation is the caller's");
        assert_eq!(lookup(Backend::Sqlite, "2067"), None, "SQLITE_CONSTRAINT_UNIQUE is the caller's");
    }

    #[test]
    fn connection_errors_without_a_code_are_retryable_and_bad_queries_are_not() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(retry_kind(&io), Some(RetryKind::ConnectionLost));
        assert!(is_connection_error(&io));
        assert_eq!(retry_kind(&sqlx::Error::PoolClosed), Some(RetryKind::ConnectionLost));
        assert_eq!(retry_kind(&sqlx::Error::RowNotFound), None);
        assert_eq!(retry_kind(&sqlx::Error::PoolTimedOut), None, "a busy pool says nothing of the database");
        assert!(DataError::AcquireTimeout.is_retryable());
        assert!(!DataError::Config("x".into()).is_retryable());
    }

    #[test]
    fn a_retryable_error_is_a_503_problem_with_retry_after() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        let resp = DataError::Sql(io).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], RETRY_AFTER_SECS.to_string().as_str());
        let resp = DataError::Config("x".into()).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
