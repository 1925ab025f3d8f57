//! The JSON request body extractor of every City Events service, whose every refusal is an
//! RFC 9457 problem in the platform's shape.
//!
//! axum's own `Json` answers a malformed body with plain text and a body of the wrong shape with
//! 422, which the platform does not use. [`Json`] answers instead:
//!
//! | what is wrong | status | `code` | field named |
//! |---|---|---|---|
//! | no JSON `Content-Type` (`application/json` or `application/*+json`) | 415 | `unsupported_media_type` | — |
//! | the body is over the route's limit | 413 | `body_too_large` | `body` |
//! | the body cannot be read, is not JSON, has trailing data or is not an object | 400 | `invalid_input` | `body` |
//! | an unknown, missing, repeated or mistyped field | 400 | `invalid_input` | that field (`a.b`, `ids[2]`) |
//!
//! A message says what was expected and never echoes the client's value.
//!
//! The size limit is Keel's `http.body_limit`, one setting per service for its whole API (City
//! Events defaults it per service in [`crate::services::body_limit`], the gateway's the largest,
//! so what the gateway forwards a service accepts); the 413 problem says it.
//!
//! ```
//! use axum::Router;
//! use axum::routing::post;
//! use cityevents_common::json::Json;
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
use http::{StatusCode, header};
use keel::http::Problem;
use keel::http::problems::{BodyLimit, body_too_large};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::validate::invalid;

/// Longest unknown field name repeated back to a client; a longer one is reported as `body`.
const MAX_FIELD_NAME: usize = 64;

/// A JSON request body of type `T`, which should be a struct with
/// `#[serde(deny_unknown_fields)]` so a misspelt field is refused rather than ignored.
///
/// Refuses with 415 without a JSON content type, 413 over the route's body limit and 400
/// (`invalid_input`, naming the field) otherwise; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

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

/// The request's body, within the stack's `http.body_limit` (413 problem past it, naming it).
async fn body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Problem> {
    let limit = req.extensions().get::<BodyLimit>().copied();
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large(limit)
        } else {
            invalid("body", "could not be read")
        }
    })
}

/// The 415 problem for a body sent without a JSON content type.
fn unsupported_media_type() -> Problem {
    Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
        .code("unsupported_media_type")
        .detail("send the body as JSON with `Content-Type: application/json`")
}

/// Whether the content type is `application/json` or `application/<something>+json`.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as one JSON object of type `T`, or the 400 problem naming what is wrong (see
/// the [module docs](self)). [`Json`] calls it on the body it read.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde's derived structs also accept arrays (`["a@b.co", "pw"]`): every body of the
    // platform is an object, so anything else is refused up front.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| rejection(&e))?;
    de.end().map_err(|_| invalid("body", "is not valid JSON"))?;
    Ok(value)
}

/// The problem for a value serde refused.
fn rejection(e: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let inner = e.inner();
    if !matches!(inner.classify(), Category::Data) {
        return invalid("body", "is not valid JSON");
    }
    // serde's text without the position: `unknown field `x`, expected one of …`.
    let text = inner.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
    let path = e.path().to_string();
    // The path may already end at the offending key (an unknown one does), or at its parent.
    let within = |name: &str| {
        if path == "." {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path.clone()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = quoted_after(message, "unknown field `") {
        if name.len() > MAX_FIELD_NAME {
            return invalid("body", "has an unknown field");
        }
        return invalid(&within(name), "is not a known field");
    }
    if let Some(name) = quoted_after(message, "missing field `") {
        return invalid(&within(name), "is required");
    }
    if let Some(name) = quoted_after(message, "duplicate field `") {
        return invalid(&within(name), "is given twice");
    }
    if path == "." {
        return invalid("body", "must be a JSON object with the documented fields");
    }
    // serde says `invalid type: string "…", expected i64`: keep only what was expected, so the
    // client's value is never echoed back.
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => invalid(&path, &format!("must be {}", in_json_terms(expected))),
        None => invalid(&path, "is not valid"),
    }
}

/// serde's name for an expected type, as a JSON client would say it.
fn in_json_terms(expected: &str) -> String {
    fn range(min: i128, max: i128) -> String {
        format!("an integer from {min} to {max}")
    }
    match expected {
        "i8" => range(i8::MIN.into(), i8::MAX.into()),
        "i16" => range(i16::MIN.into(), i16::MAX.into()),
        "i32" => range(i32::MIN.into(), i32::MAX.into()),
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "i64" | "i128" | "isize" => "an integer".to_owned(),
        "u64" | "u128" | "usize" => "a non-negative integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        s if s.starts_with("struct ") => "an object".to_owned(),
        other => other.to_owned(),
    }
}

/// The text between `prefix` and the next backtick in `text`.
fn quoted_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let len = text[start..].find('`')?;
    Some(&text[start..start + len])
}

pub use cityevents_api::json::{optional_whole_number, whole_number};

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
        assert_eq!(field(r#"{"email":"a","name":"b","n":-1}"#), "n");
        assert_eq!(field(r#"{"email":"a","name":"b","ids":[1]}"#), "ids[0]");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{}}"#), "inner.on");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{"on":true,"off":1}}"#), "inner.off");
        assert_eq!(field(r#"{"email":"a","name":"b","inner":{"on":"yes"}}"#), "inner.on");
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
