//! JSON request bodies: [`Json`], [`OptionalJson`] and [`parse`].
//!
//! | what is wrong | status | `code` | field named |
//! |---|---|---|---|
//! | no JSON `Content-Type` (`application/json` or `application/*+json`) | 415 | `unsupported_media_type` | — |
//! | the body is over the route's limit | 413 | `body_too_large` | `body` |
//! | the body cannot be read, is not JSON, has trailing data or is not an object | 400 | `invalid_input` | `body` |
//! | an unknown, missing, repeated or mistyped field | 400 | `invalid_input` | that field (`a.b`, `ids[2]`) |
//!
//! The size limit is Keel's `http.body_limit` (or a route's own `DefaultBodyLimit`); the 413
//! problem says it. The field's path is `serde_path_to_error`'s; whether it was unknown,
//! missing, repeated or of the wrong type comes from serde's wording of the error its derived
//! code raised, the only form in which serde_json passes it on.
//!
//! ```
//! use axum::Router;
//! use axum::routing::post;
//! use keel_http::extract::Json;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Rename {
//!     name: String,
//! }
//!
//! async fn rename(Json(body): Json<Rename>) -> String {
//!     body.name
//! }
//!
//! let app: Router = Router::new().route("/rename", post(rename));
//! ```

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::{Unknown, refusal};
use crate::problem::Problem;
use crate::problems::{BodyLimit, body_too_large};

/// A JSON request body of type `T`, which should be a struct with
/// `#[serde(deny_unknown_fields)]` so a misspelt field is refused rather than ignored.
///
/// Refuses with 415 without a JSON content type, 413 over the route's body limit and 400
/// (`invalid_input`, naming the field) otherwise; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

super::deref_to_value!(Json);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(unsupported_media_type());
        }
        parse(&body(req, state).await?).map(Json)
    }
}

/// An optional JSON body: `None` when the request has no body at all (a `POST` that needs no
/// input), otherwise exactly what [`Json`] accepts and refuses.
#[derive(Debug, Clone, Default)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let bytes = body(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        if !json {
            return Err(unsupported_media_type());
        }
        parse(&bytes).map(|v| Self(Some(v)))
    }
}

/// The request's body, within the route's body limit (`http.body_limit`): the 413
/// `body_too_large` problem past it, naming the limit, as [`Json`] answers. For a handler that
/// reads the body as bytes (a proxy forwarding it unread).
pub async fn body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Problem> {
    let limit = req.extensions().get::<BodyLimit>().copied();
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large(limit)
        } else {
            Problem::invalid("body", "could not be read")
        }
    })
}

/// The 415 problem for a body sent without a JSON content type.
pub fn unsupported_media_type() -> Problem {
    Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
        .code("unsupported_media_type")
        .detail("send the body as JSON with `Content-Type: application/json`")
}

/// Whether the content type is `application/json` or `application/<something>+json`.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as one JSON object of type `T`, or the 400 problem naming what is wrong (see
/// the [module docs](self)). [`Json`] calls it on the body it read.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Item {
///     qty: u32,
/// }
///
/// let p = keel_http::extract::json::parse::<Item>(br#"{"qty": -1}"#).unwrap_err();
/// assert_eq!(p.field_errors()[0].field, "qty");
/// assert_eq!(p.field_errors()[0].message, "must be an integer from 0 to 4294967295");
/// ```
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde's derived structs also accept arrays (`["a@b.co", "pw"]`): a body is an object, so
    // anything else is refused up front.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if !matches!(inner.classify(), Category::Data) {
            return Problem::invalid("body", "is not valid JSON");
        }
        // serde's text without serde_json's position (` at line 1 column 9`).
        let text = inner.to_string();
        let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
        refusal("body", &e.path().to_string(), message, UNKNOWN)
    })?;
    de.end().map_err(|_| Problem::invalid("body", "is not valid JSON"))?;
    Ok(value)
}

const UNKNOWN: Unknown = Unknown { field: "is not a known field", container: "has an unknown field" };

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;
    use crate::extract::MAX_FIELD_NAME;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Signup {
        email: String,
        name: String,
        n: Option<u32>,
        count: Option<i64>,
        ids: Option<Vec<String>>,
        inner: Option<Inner>,
        id: Option<uuid::Uuid>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        on: bool,
    }

    /// The field and message of the one error `body` is refused with.
    fn refusal(body: &str) -> (String, String) {
        let p = parse::<Signup>(body.as_bytes()).unwrap_err();
        assert_eq!(p.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(p.code_str(), Some("invalid_input"));
        let e = &p.field_errors()[0];
        (e.field.clone(), e.message.clone())
    }

    fn field(body: &str) -> String {
        refusal(body).0
    }

    #[test]
    fn good_bodies_parse() {
        let b = parse::<Signup>(br#" {"email":"a","name":"b","n":5,"ids":["x"],"inner":{"on":true}} "#).unwrap();
        assert_eq!((b.email.as_str(), b.n, b.ids.unwrap().len()), ("a", Some(5), 1));
    }

    #[test]
    fn every_refusal_names_a_field() {
        assert_eq!(
            refusal(r#"{"email":"a","name":"b","role":"admin"}"#),
            ("role".into(), "is not a known field".into())
        );
        assert_eq!(refusal(r#"{"email":"a"}"#), ("name".into(), "is required".into()));
        assert_eq!(refusal(r#"{}"#), ("email".into(), "is required".into()));
        assert_eq!(refusal(r#"{"email":5,"name":"b"}"#), ("email".into(), "must be a string".into()));
        assert_eq!(refusal(r#"{"email":"a","email":"b","name":"c"}"#), ("email".into(), "is given twice".into()));
        assert_eq!(refusal(r#"{"email":"a","name":"b","id":"nope"}"#), ("id".into(), "is not valid".into()));
        assert_eq!(field(r#"{"email":"a","name":"b","n":-1}"#), "n");
        assert_eq!(field(r#"{"email":"a","name":"b","ids":[1]}"#), "ids[0]");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{}}"#), "inner.on");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{"on":true,"off":1}}"#), "inner.off");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{"on":"yes"}}"#), "inner.on");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{"on":true,"on":false}}"#), "inner.on");
    }

    #[test]
    fn malformed_or_non_object_bodies_name_the_body() {
        for body in [
            r#"{"email":"a","name":"b""#,
            r#"{"email":"a","name":"b"} trailing"#,
            r#"{"email":"a","name":"b"} {}"#,
            "{",
        ] {
            assert_eq!(refusal(body), ("body".into(), "is not valid JSON".into()), "{body}");
        }
        for body in ["[1,2]", r#"["a","b"]"#, "null", "5", "", "   "] {
            assert_eq!(refusal(body), ("body".into(), "must be a JSON object".into()), "{body:?}");
        }
    }

    #[test]
    fn messages_say_what_was_expected_without_echoing_the_value() {
        let message = |body: &str| refusal(body).1;
        let base = r#""email":"a","name":"b""#;
        assert_eq!(message(r#"{"email":"a","name":12345678}"#), "must be a string");
        assert_eq!(message(&format!(r#"{{{base},"n":-1}}"#)), "must be an integer from 0 to 4294967295");
        assert_eq!(message(&format!(r#"{{{base},"n":1.5}}"#)), "must be an integer from 0 to 4294967295");
        assert_eq!(message(&format!(r#"{{{base},"count":"ten"}}"#)), "must be an integer");
        assert_eq!(message(&format!(r#"{{{base},"ids":"x"}}"#)), "must be an array");
        assert_eq!(message(&format!(r#"{{{base},"inner":[]}}"#)), "must be an object");
        assert_eq!(message(&format!(r#"{{{base},"inner":{{"on":"secret-value"}}}}"#)), "must be a boolean");
        let long = "k".repeat(MAX_FIELD_NAME + 1);
        assert_eq!(refusal(&format!(r#"{{{base},"{long}":1}}"#)), ("body".into(), "has an unknown field".into()));
        for body in [r#"{"email":"secret-value","name":7}"#, r#"{"email":"a","name":"b","id":"secret-value"}"#] {
            let p = parse::<Signup>(body.as_bytes()).unwrap_err();
            let text = serde_json::to_string(&p).unwrap();
            assert!(!text.contains("secret-value") && !text.contains('7'), "{text}");
        }
    }

    async fn call(content_type: Option<&str>, body: impl Into<Body>) -> (StatusCode, Value) {
        async fn handler(Json(b): Json<Signup>) -> String {
            b.email
        }
        let app = Router::new().route("/", post(handler)).layer(DefaultBodyLimit::max(64));
        let mut req = http::Request::post("/");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = app.oneshot(req.body(body.into()).unwrap()).await.unwrap().into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())))
    }

    #[tokio::test]
    async fn the_extractor_answers_problems() {
        let ok = r#"{"email":"a@b.co","name":"b"}"#;
        assert_eq!(call(Some("application/json"), ok).await, (StatusCode::OK, Value::String("a@b.co".into())));
        assert_eq!(call(Some("application/merge-patch+json; charset=utf-8"), ok).await.0, StatusCode::OK);

        for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
            let (status, p) = call(ct, ok).await;
            assert_eq!(
                (status, p["code"].as_str()),
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
            );
        }

        let big = format!(r#"{{"email":"a@b.co","name":"{}"}}"#, "n".repeat(100));
        let (status, p) = call(Some("application/json"), big).await;
        assert_eq!((status, p["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));
        assert_eq!(p["errors"][0]["field"], "body");

        let (status, p) = call(Some("application/json"), r#"{"email":"a","name":"b","x":1}"#).await;
        assert_eq!((status, p["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_input")));
        assert_eq!(p["errors"][0]["field"], "x");
    }

    #[tokio::test]
    async fn an_optional_body_may_be_absent_but_not_wrong() {
        async fn handler(OptionalJson(b): OptionalJson<Signup>) -> String {
            b.map_or_else(|| "none".to_owned(), |b| b.email)
        }
        let app = Router::new().route("/", post(handler)).layer(DefaultBodyLimit::max(64));
        let call = |ct: Option<&'static str>, body: &'static str| {
            let app = app.clone();
            async move {
                let mut req = http::Request::post("/");
                if let Some(ct) = ct {
                    req = req.header(header::CONTENT_TYPE, ct);
                }
                let resp = app.oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        assert_eq!(call(None, "").await, (StatusCode::OK, "none".to_owned()), "no body at all");
        assert_eq!(call(Some("application/json"), "").await, (StatusCode::OK, "none".to_owned()));
        let ok = r#"{"email":"a@b.co","name":"b"}"#;
        assert_eq!(call(Some("application/json"), ok).await, (StatusCode::OK, "a@b.co".to_owned()));
        assert_eq!(call(Some("text/plain"), ok).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(call(Some("application/json"), r#"{"x":1}"#).await.0, StatusCode::BAD_REQUEST);
        let big: &'static str = Box::leak(format!(r#"{{"email":"{}"}}"#, "e".repeat(100)).into_boxed_str());
        assert_eq!(call(Some("application/json"), big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
