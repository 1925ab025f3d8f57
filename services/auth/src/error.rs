//! How handlers fail: the service's problems (`code` values of the contract) and one error type
//! that turns database, crypto and hashing failures into 5xx problems without leaking their text.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use keel::data::{DataError, Db};
use keel::http::Problem;
use keel::security::crypto::CryptoError;
use keel::security::jwt::JwtError;
use keel::security::password::PasswordError;

/// An invalid input field: a 400 `invalid_input` problem for clients, an [`crate::AdminError`]
/// for the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct FieldError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

impl From<FieldError> for Problem {
    fn from(e: FieldError) -> Self {
        cityevents_common::validate::invalid(e.field, &e.message)
    }
}

/// 401 `invalid_credentials`: the same for a wrong password and an unknown address.
pub(crate) fn invalid_credentials() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "invalid-credentials", "Invalid credentials")
        .code("invalid_credentials")
        .detail("the e-mail address or the password is wrong")
}

/// 429 `locked` with `Retry-After`: the same whether or not the account exists.
pub(crate) fn locked(retry_after_secs: u64) -> Problem {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "locked", "Too many failed sign-ins")
        .code("locked")
        .detail("sign-in for this address is paused after too many failed attempts; retry later")
        .retry_after(retry_after_secs)
}

/// 409 `email_taken`.
pub(crate) fn email_taken() -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict")
        .code("email_taken")
        .detail("an account with this e-mail address exists")
        .field("email", "is already registered")
}

/// 401 `invalid_refresh_token`: unknown, expired or revoked.
pub(crate) fn invalid_refresh_token() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "invalid-refresh-token", "Invalid refresh token")
        .code("invalid_refresh_token")
        .detail("the refresh token is unknown, expired or revoked; sign in again")
}

/// 401 `refresh_reused`: a spent token came back, so its whole family was revoked.
pub(crate) fn refresh_reused() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "refresh-reused", "Refresh token reused")
        .code("refresh_reused")
        .detail("this refresh token was already used; every session it belongs to is signed out")
}

/// 400 `invalid_token`: an account token (from a mail) that is unknown, used, replaced by a
/// newer one or expired; the same answer for each.
pub(crate) fn invalid_token() -> Problem {
    Problem::bad_request("the link is invalid, used or expired; ask for a new one")
        .code("invalid_token")
        .field("token", "is invalid, used or expired")
}

/// 409 `already_verified`.
pub(crate) fn already_verified() -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict")
        .code("already_verified")
        .detail("this account's e-mail address is verified already")
}

/// A handler failure.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// An answer for the client.
    Problem(Problem),
    /// The database failed or is unavailable (503 or 500).
    Data(DataError),
    /// Anything else that is our fault: logged, answered with a bare 500.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(p) => p.into_response(),
            Self::Data(e) => e.into_response(),
            Self::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                Problem::internal().into_response()
            }
        }
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::Problem(e.into())
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> Self {
        Self::Data(e)
    }
}

impl From<CryptoError> for ApiError {
    fn from(e: CryptoError) -> Self {
        Self::Internal(format!("field encryption: {e}"))
    }
}

impl From<JwtError> for ApiError {
    fn from(e: JwtError) -> Self {
        Self::Internal(format!("issuing an access token: {e}"))
    }
}

impl From<keel::events::outbox::OutboxError> for ApiError {
    fn from(e: keel::events::outbox::OutboxError) -> Self {
        match e {
            keel::events::outbox::OutboxError::Data(d) => Self::Data(d),
            other => Self::Internal(format!("enqueueing an event: {other}")),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        // Overloaded is a 503 with Retry-After; the rest are logged 500s.
        Self::Problem(e.into())
    }
}

/// Counts a query's error on the pool's metrics (`db_errors_total`) as it becomes a [`DataError`].
pub(crate) trait Observe<T> {
    /// See the trait.
    fn obs(self, db: &Db) -> Result<T, DataError>;
}

impl<T> Observe<T> for Result<T, sqlx::Error> {
    fn obs(self, db: &Db) -> Result<T, DataError> {
        self.map_err(|e| db.observe(e))
    }
}
