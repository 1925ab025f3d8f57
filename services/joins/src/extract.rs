//! Request inputs checked at the edge: the caller (from the bearer token) and page queries.
//! JSON bodies are `cityevents_common::json::Json`, the `Idempotency-Key` header
//! `cityevents_common::idempotency`.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use cityevents_api::params::PageParams;
use cityevents_common::page::{PageQuery, PageRequest};
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

/// Checks `?limit=&cursor=`, read as text so a bad `limit` is our 400 naming the field rather
/// than the framework's plain-text rejection.
pub(crate) fn page(q: &PageParams) -> Result<PageRequest, Problem> {
    let limit = match q.limit.as_deref() {
        None | Some("") => None,
        Some(l) => Some(l.parse::<u32>().map_err(|_| validate::invalid("limit", "must be between 1 and 100"))?),
    };
    PageQuery { limit, cursor: q.cursor.clone() }.validate()
}

/// Parses a path id.
pub(crate) fn path_uuid(field: &str, value: &str) -> Result<Uuid, Problem> {
    validate::uuid(field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_are_checked() {
        let raw = |l: &str| page(&PageParams { limit: Some(l.into()), cursor: None });
        assert!(raw("abc").is_err());
        assert!(raw("0").is_err());
        assert!(raw("101").is_err());
        assert_eq!(raw("5").unwrap().limit, 5);
    }
}
