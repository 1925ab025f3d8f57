//! Query strings: [`Query`].
//!
//! `T` is a struct with `#[serde(deny_unknown_fields)]`, so a misspelt or unsupported filter is
//! refused rather than silently ignored:
//!
//! | what is wrong | field named | message |
//! |---|---|---|
//! | a parameter the operation does not have | that parameter | `is not a parameter of this operation` |
//! | a parameter given twice | that parameter | `is given twice` |
//! | a parameter of the wrong type (`limit=ten` for a `u32`) | that parameter | `is not valid` |
//! | a required parameter missing | that parameter | `is required` |
//!
//! Every refusal is `400 invalid_input`. The query is decoded as
//! `application/x-www-form-urlencoded` by `serde_urlencoded`, as axum's `Query` does.
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use keel_http::extract::Query;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Page {
//!     limit: Option<u32>,
//!     cursor: Option<String>,
//! }
//!
//! async fn list(Query(page): Query<Page>) -> String {
//!     format!("{:?} {:?}", page.limit, page.cursor)
//! }
//!
//! let app: Router = Router::new().route("/items", get(list));
//! ```

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::{Unknown, refusal};
use crate::problem::Problem;

/// A request's query string as `T`, or a 400 problem naming the parameter (see the
/// [module docs](self)). No query string is the same as an empty one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

super::deref_to_value!(Query);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Parses a query string (without its `?`) as `T`, or the 400 problem naming the parameter.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Filter {
///     city: Option<String>,
/// }
///
/// let p = keel_http::extract::query::parse::<Filter>("city=Lisbon&q=jazz").unwrap_err();
/// assert_eq!(p.field_errors()[0].field, "q");
/// assert_eq!(p.field_errors()[0].message, "is not a parameter of this operation");
/// ```
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, Problem> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de)
        .map_err(|e| refusal("query", &e.path().to_string(), &e.inner().to_string(), UNKNOWN))
}

const UNKNOWN: Unknown = Unknown {
    field: "is not a parameter of this operation",
    container: "has a parameter this operation does not have",
};

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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        limit: Option<u32>,
        city: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Required {
        ids: String,
    }

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(q: &str) -> (String, String) {
        let p = parse::<T>(q).unwrap_err();
        assert_eq!((p.status_code(), p.code_str()), (StatusCode::BAD_REQUEST, Some("invalid_input")));
        let e = &p.field_errors()[0];
        (e.field.clone(), e.message.clone())
    }

    #[test]
    fn good_queries_parse() {
        let q = parse::<Q>("limit=5&city=S%C3%A3o+Paulo").unwrap();
        assert_eq!((q.limit, q.city.as_deref()), (Some(5), Some("São Paulo")));
        let q = parse::<Q>("").unwrap();
        assert_eq!((q.limit, q.city), (None, None));
    }

    #[test]
    fn every_refusal_names_the_parameter() {
        assert_eq!(refusal::<Q>("limit=5&q=jazz"), ("q".into(), "is not a parameter of this operation".into()));
        assert_eq!(refusal::<Q>("city=a&city=b"), ("city".into(), "is given twice".into()));
        // serde_urlencoded parses a number itself and says only that it failed.
        assert_eq!(refusal::<Q>("limit=ten"), ("limit".into(), "is not valid".into()));
        assert_eq!(refusal::<Q>("limit=-1"), ("limit".into(), "is not valid".into()));
        assert_eq!(refusal::<Required>(""), ("ids".into(), "is required".into()));
        let long = "k".repeat(100);
        assert_eq!(
            refusal::<Q>(&format!("{long}=1")),
            ("query".into(), "has a parameter this operation does not have".into())
        );
    }

    #[test]
    fn a_value_is_never_echoed() {
        let p = parse::<Q>("limit=secret-value").unwrap_err();
        assert!(!serde_json::to_string(&p).unwrap().contains("secret-value"));
    }

    #[tokio::test]
    async fn the_extractor_answers_a_problem() {
        async fn handler(Query(q): Query<Q>) -> String {
            format!("{:?}", q.limit)
        }
        let app = Router::new().route("/", get(handler));
        let call = |uri: &'static str| {
            let app = app.clone();
            async move {
                let resp = app.oneshot(http::Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
                let status = resp.status();
                let ct = resp.headers().get(http::header::CONTENT_TYPE).cloned();
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
                (status, ct, bytes)
            }
        };
        let (status, _, body) = call("/?limit=3").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"Some(3)"[..]));
        assert_eq!(call("/").await.0, StatusCode::OK);
        let (status, ct, body) = call("/?limit=3&sort=new").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(ct.unwrap(), crate::problem::CONTENT_TYPE);
        let p: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["errors"][0]["field"], "sort");
    }
}
