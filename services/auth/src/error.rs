//! How handlers fail: the service's problems (`code` values of the contract). Handlers answer
//! `Result<_, Problem>`; Keel's errors (database, outbox, field encryption, password hashing)
//! become 5xx problems through their `From` impls, without leaking their text.

use http::StatusCode;
use keel::http::Problem;

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
