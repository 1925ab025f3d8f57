//! Authentication at the edge: the bearer token is verified once, before the rate limiter (so a
//! signed-in caller is counted by user, anyone else by IP), and each route then refuses a missing
//! or invalid token with Keel's 401 problems before any upstream is called.

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use keel::http::{Principal, Problem};
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
pub(crate) async fn authorize(parts: &mut Parts, access: Access) -> Result<Option<Claims>, Problem> {
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
            Err(rejection) => Err(rejection.into()),
        },
        Access::Public | Access::Anonymous => {
            match <Auth<Claims> as OptionalFromRequestParts<()>>::from_request_parts(parts, &()).await {
                Ok(auth) => Ok(auth.map(|Auth(claims)| claims)),
                Err(rejection) => Err(rejection.into()),
            }
        }
    }
}

/// The query parameters each operation takes ([`crate::openapi::query_parameters`]).
pub(crate) type QueryParameters =
    std::collections::HashMap<(http::Method, &'static str), std::collections::BTreeSet<String>>;

/// Refuses, with a 400 problem naming each of them, query parameters the matched operation does
/// not take, before anything is forwarded: a misspelt or unsupported filter (`?q=` where there is
/// no search) must not answer 200 as if it had been applied.
pub(crate) async fn known_query(
    State(known): State<std::sync::Arc<QueryParameters>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(query) = req.uri().query().filter(|q| !q.is_empty()) else {
        return next.run(req).await;
    };
    let Ok(axum::extract::Query(pairs)) = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri()) else {
        return cityevents_common::validate::invalid("query", "is not a valid query string").into_response();
    };
    let path = req.extensions().get::<axum::extract::MatchedPath>().map(axum::extract::MatchedPath::as_str);
    // HEAD is served by the GET handler; a method the path does not take is axum's 405.
    let method = if req.method() == http::Method::HEAD { http::Method::GET } else { req.method().clone() };
    let Some((_, takes)) = path.and_then(|p| known.iter().find(|((m, route), _)| *m == method && *route == p)) else {
        return next.run(req).await;
    };
    let mut unknown: Vec<&str> =
        pairs.iter().map(|(name, _)| name.as_str()).filter(|name| !takes.contains(*name)).collect();
    unknown.sort_unstable();
    unknown.dedup();
    if unknown.is_empty() {
        return next.run(req).await;
    }
    tracing::debug!(query = query.len(), unknown = ?unknown, "unknown query parameters refused");
    let mut problem = keel::Problem::bad_request(format!(
        "{} {} not a parameter of this operation",
        unknown.join(", "),
        if unknown.len() == 1 { "is" } else { "are" }
    ))
    .code("invalid_input");
    for name in unknown {
        problem = problem.field(name, "is not a parameter of this operation");
    }
    problem.into_response()
}
