//! Who is calling, from the verified access token: the extractor every City Events service
//! takes its caller with.
//!
//! `Caller` is required (401 without a valid token, a problem from Keel's
//! [`Auth`](keel::security::jwt::Auth)); `Option<Caller>` is `None` for an anonymous request
//! and still a 401 for a token that is sent but refused. A token whose subject is not a user id
//! is a 401 too: every account id is a UUID. Both are checked before the body is read, so a bad
//! token is a 401 whatever the body holds.
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use cityevents_common::caller::Caller;
//!
//! async fn mine(caller: Caller) -> String {
//!     caller.id.to_string()
//! }
//!
//! async fn public(caller: Option<Caller>) -> &'static str {
//!     if caller.is_some() { "signed in" } else { "anonymous" }
//! }
//!
//! let app: Router = Router::new().route("/mine", get(mine)).route("/public", get(public));
//! ```

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::StatusCode;
use http::request::Parts;
use keel::http::Problem;
use keel::security::jwt::{Auth, Claims, HasRoles as _};
use uuid::Uuid;

use crate::roles;

/// The caller behind a verified access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user id (`sub`).
    pub id: Uuid,
    /// Whether the token carries the `admin` role.
    pub admin: bool,
    /// Whether the token carries the `moderator` role (admins moderate too).
    pub moderator: bool,
    /// Whether the token says the caller's e-mail address is verified (`email_verified`).
    pub verified: bool,
}

impl Caller {
    /// The caller the verified `claims` describe, or the 401 for a subject that is not a user id.
    pub fn from_claims(claims: &Claims) -> Result<Self, Problem> {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| {
            Problem::new(StatusCode::UNAUTHORIZED, "invalid-token", "Unauthorized")
                .detail("the bearer token was refused: its subject is not a user id")
                .challenge("Bearer error=\"invalid_token\"")
        })?;
        let admin = claims.has_role(roles::ADMIN);
        Ok(Self {
            id,
            admin,
            moderator: admin || claims.has_role(roles::MODERATOR),
            verified: claims.email_verified == Some(true),
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    /// Keel's `Auth` refusal, or the 401 above; both with their `WWW-Authenticate` challenge.
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Auth(claims) = <Auth<Claims> as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Self::from_claims(&claims)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, Problem> {
        match <Auth<Claims> as OptionalFromRequestParts<S>>::from_request_parts(parts, state).await? {
            Some(Auth(claims)) => Self::from_claims(&claims).map(Some),
            None => Ok(None),
        }
    }
}
