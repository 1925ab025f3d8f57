//! Request inputs checked at the edge: the caller (from the bearer token) and path ids.
//! JSON bodies are `cityevents_common::json::Json`, the `Idempotency-Key` header
//! `cityevents_common::idempotency`.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use cityevents_common::validate;
use http::request::Parts;
use keel::Problem;
use keel::security::jwt::{Auth, Claims};
use uuid::Uuid;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The user id (`sub`).
    pub(crate) id: Uuid,
    /// Whether the token carries the `moderator` or `admin` role: manages any event.
    pub(crate) moderator: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Auth(claims) =
            Auth::<Claims>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let id = Uuid::parse_str(&claims.sub).map_err(|_| {
            Problem::new(http::StatusCode::UNAUTHORIZED, "invalid-token", "Invalid token")
                .detail("the token's subject is not a user id")
                .into_response()
        })?;
        use keel::security::jwt::HasRoles as _;
        let moderator =
            claims.has_role(cityevents_common::roles::ADMIN) || claims.has_role(cityevents_common::roles::MODERATOR);
        Ok(Self { id, moderator })
    }
}

/// Parses a path id.
pub(crate) fn path_uuid(field: &str, value: &str) -> Result<Uuid, Problem> {
    validate::uuid(field, value)
}
