//! Path parameters: [`Path`].
//!
//! axum's `Path` with its rejection made a problem: a parameter that does not parse (a route's
//! `{id}` that is not a UUID, a `{page}` that is not a number) is `400 invalid_input` naming the
//! route's parameter, with what it must be and never the value sent. A route and handler that
//! disagree (a parameter the route does not have, a type serde cannot read from a path) are the
//! service's bug: 500, logged.
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use keel_http::extract::Path;
//! use uuid::Uuid;
//!
//! async fn show(Path(id): Path<Uuid>) -> String {
//!     id.to_string()
//! }
//!
//! async fn member(Path((event, user)): Path<(Uuid, Uuid)>) -> String {
//!     format!("{event} {user}")
//! }
//!
//! let app: Router =
//!     Router::new().route("/events/{id}", get(show)).route("/events/{id}/members/{user_id}", get(member));
//! ```

use std::any::TypeId;

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::in_json_terms;
use crate::problem::Problem;

/// The route's path parameters as `T` (one value, a tuple in the route's order, or a struct
/// by name), or a 400 problem naming the parameter (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

super::deref_to_value!(Path);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send + 'static,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(problem::<T>(&rejection)),
        }
    }
}

/// The problem for a rejected path.
fn problem<T: 'static>(rejection: &PathRejection) -> Problem {
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        // No parameters at all where the handler wants some: the route and handler disagree.
        tracing::error!(error = %rejection, "a handler takes path parameters its route does not have");
        return Problem::internal();
    };
    match e.kind() {
        ErrorKind::ParseErrorAtKey { key, expected_type, .. } => {
            Problem::invalid(key, &format!("must be {}", in_json_terms(expected_type)))
        }
        ErrorKind::ParseErrorAtIndex { expected_type, .. } | ErrorKind::ParseError { expected_type, .. } => {
            // axum names no key here (a tuple or a single value of a primitive type).
            Problem::invalid("path", &format!("has a parameter that must be {}", in_json_terms(expected_type)))
        }
        ErrorKind::InvalidUtf8InPathParam { key } => Problem::invalid(key, "must be UTF-8 once percent-decoded"),
        // A type that parses itself (a UUID) refused the text: axum names the key.
        ErrorKind::DeserializeError { key, .. } if is_uuids::<T>() => Problem::invalid(key, "must be a UUID"),
        ErrorKind::DeserializeError { key, .. } => Problem::invalid(key, "is not valid"),
        ErrorKind::WrongNumberOfParameters { .. } | ErrorKind::UnsupportedType { .. } => {
            tracing::error!(error = %rejection, "a handler's path type does not fit its route");
            Problem::internal()
        }
        // The other kinds a custom type's error gives without a key.
        _ => Problem::invalid("path", "is not valid"),
    }
}

/// Whether every parameter of `T` is a UUID or text, so a refused one is a UUID.
fn is_uuids<T: 'static>() -> bool {
    let t = TypeId::of::<T>();
    [
        TypeId::of::<Uuid>(),
        TypeId::of::<(Uuid, Uuid)>(),
        TypeId::of::<(Uuid, String)>(),
        TypeId::of::<(String, Uuid)>(),
        TypeId::of::<(Uuid, Uuid, Uuid)>(),
    ]
    .contains(&t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::StatusCode;
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;

    async fn call(app: &Router, uri: &str) -> (StatusCode, Value) {
        let resp = app.clone().oneshot(http::Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())))
    }

    #[derive(serde::Deserialize)]
    struct Paged {
        id: Uuid,
        page: u32,
    }

    fn app() -> Router {
        Router::new()
            .route("/one/{id}", get(|Path(id): Path<Uuid>| async move { id.to_string() }))
            .route(
                "/two/{id}/members/{user_id}",
                get(|Path((a, b)): Path<(Uuid, Uuid)>| async move { format!("{a} {b}") }),
            )
            .route("/named/{id}/{page}", get(|Path(p): Path<Paged>| async move { format!("{} {}", p.id, p.page) }))
            .route("/number/{n}", get(|Path(n): Path<u32>| async move { n.to_string() }))
            .route("/none", get(|Path(id): Path<Uuid>| async move { id.to_string() }))
    }

    fn field(p: &Value) -> (&str, &str) {
        (p["errors"][0]["field"].as_str().unwrap(), p["errors"][0]["message"].as_str().unwrap())
    }

    #[tokio::test]
    async fn parameters_parse() {
        let id = "0193a4f0-7c8e-7000-8000-000000000001";
        assert_eq!(call(&app(), &format!("/one/{id}")).await.1, Value::String(id.into()));
        assert_eq!(call(&app(), &format!("/two/{id}/members/{id}")).await.1, Value::String(format!("{id} {id}")));
        assert_eq!(call(&app(), &format!("/named/{id}/3")).await.1, Value::String(format!("{id} 3")));
    }

    #[tokio::test]
    async fn a_parameter_that_does_not_parse_is_named() {
        let id = "0193a4f0-7c8e-7000-8000-000000000001";
        let (status, p) = call(&app(), "/one/secret-value").await;
        assert_eq!((status, p["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_input")));
        assert_eq!(field(&p), ("id", "must be a UUID"));
        assert!(!p.to_string().contains("secret-value"), "{p}");
        assert_eq!(field(&call(&app(), &format!("/two/{id}/members/nope")).await.1), ("user_id", "must be a UUID"));
        assert_eq!(field(&call(&app(), &format!("/two/nope/members/{id}")).await.1), ("id", "must be a UUID"));
        assert_eq!(
            field(&call(&app(), &format!("/named/{id}/ten")).await.1),
            ("page", "must be an integer from 0 to 4294967295")
        );
        assert_eq!(field(&call(&app(), "/named/nope/3").await.1), ("id", "is not valid"));
        assert_eq!(
            field(&call(&app(), "/number/ten").await.1),
            ("path", "has a parameter that must be an integer from 0 to 4294967295")
        );
        assert_eq!(field(&call(&app(), "/one/%FF").await.1), ("id", "must be UTF-8 once percent-decoded"));
    }

    #[tokio::test]
    async fn a_route_and_handler_that_disagree_are_a_500() {
        let (status, p) = call(&app(), "/none").await;
        assert_eq!((status, p["status"].as_u64()), (StatusCode::INTERNAL_SERVER_ERROR, Some(500)));
    }
}
