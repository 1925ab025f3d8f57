//! Authentication at the edge: the bearer token is verified once, before the rate limiter (so a
//! signed-in caller is counted by user, anyone else by IP), and each route then refuses a missing
//! or invalid token with Keel's 401 problems before any upstream is called.

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use keel::http::Principal;
use keel::security::jwt::{Auth, Claims, Jwt};

use crate::routes::Access;

/// The verified claims of the request's token, put in the extensions by [`identify`].
#[derive(Debug, Clone)]
pub(crate) struct Identity(pub(crate) Claims);

/// Verifies a bearer token when there is one: a valid token gives the request an [`Identity`]
/// and a [`Principal`] (the rate limiter's `user` key). An invalid one is left for [`authorize`]
/// to refuse, after the limiter has counted it by IP.
pub(crate) async fn identify(State(jwt): State<Jwt>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(keel::http::bearer_token)
        .map(str::to_owned);
    if let Some(claims) = token.and_then(|t| jwt.verify::<Claims>(&t).ok()) {
        req.extensions_mut().insert(Principal(claims.sub.clone()));
        req.extensions_mut().insert(Identity(claims));
    }
    next.run(req).await
}

/// The caller's claims as `access` requires them: `Err` is the 401 problem to answer (no token
/// where one is needed, or a token that does not verify, on any route).
pub(crate) async fn authorize(parts: &mut Parts, access: Access) -> Result<Option<Claims>, Response> {
    if access == Access::Anonymous {
        parts.headers.remove(http::header::AUTHORIZATION);
        return Ok(None);
    }
    if let Some(Identity(claims)) = parts.extensions.get::<Identity>() {
        return Ok(Some(claims.clone()));
    }
    // Not verified by `identify`: Keel's extractors say why, with its exact problem documents.
    match access {
        Access::User => match <Auth<Claims> as FromRequestParts<()>>::from_request_parts(parts, &()).await {
            Ok(Auth(claims)) => Ok(Some(claims)),
            Err(rejection) => Err(rejection.into_response()),
        },
        Access::Public | Access::Anonymous => {
            match <Auth<Claims> as OptionalFromRequestParts<()>>::from_request_parts(parts, &()).await {
                Ok(auth) => Ok(auth.map(|Auth(claims)| claims)),
                Err(rejection) => Err(rejection.into_response()),
            }
        }
    }
}
