//! A JSON body extractor whose every rejection is a problem in the platform's shape.
//!
//! axum's own `Json` answers malformed bodies with plain text and shape errors with 422; the
//! platform contract wants `400 invalid_input` naming the field. So: a syntax error or a body
//! that is not an object names the field `body`; an unknown, missing or mistyped field names
//! that field. A body over the route's limit is `413`, a missing or non-JSON `Content-Type` `415`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use http::{StatusCode, header};
use keel::http::Problem;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use cityevents_common::validate::invalid;

/// A JSON request body of type `T` (use `#[serde(deny_unknown_fields)]` on `T`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Json<T>(pub(crate) T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .code("unsupported_media_type")
            .detail("send the body as JSON with `Content-Type: application/json`"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large() } else { invalid("body", "could not be read") }
        })?;
        parse(&bytes).map(Json)
    }
}

/// The 413 problem for a body over the route's limit.
pub(crate) fn too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large")
        .code("body_too_large")
        .detail("the request body is larger than this endpoint accepts")
        .field("body", "is too large")
}

fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as `T`, or the 400 problem naming what is wrong.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde's derived structs also accept arrays (`["a@b.co", "pw", "name"]`): every body here
    // is an object, so anything else is refused up front.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| rejection(&e))?;
    de.end().map_err(|_| invalid("body", "is not valid JSON"))?;
    Ok(value)
}

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
    // Only types are wrong here (every accepted field is a string): say which was expected
    // without echoing the value.
    let expected = message.rsplit_once(", expected ").map_or("another type", |(_, x)| x);
    invalid(&path, &format!("must be {expected}"))
}

fn quoted_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let len = text[start..].find('`')?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        name: String,
    }

    fn field(bytes: &str) -> String {
        let p = parse::<Body>(bytes.as_bytes()).unwrap_err();
        assert_eq!(p.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(p.code_str(), Some("invalid_input"));
        p.field_errors()[0].field.clone()
    }

    #[test]
    fn every_rejection_names_a_field() {
        assert!(parse::<Body>(br#"{"email":"a","name":"b"}"#).is_ok());
        assert_eq!(field(r#"{"email":"a","name":"b","role":"admin"}"#), "role");
        assert_eq!(field(r#"{"email":"a"}"#), "name");
        assert_eq!(field(r#"{"email":5,"name":"b"}"#), "email");
        assert_eq!(field(r#"{"email":"a","name":"b""#), "body");
        assert_eq!(field(r#"{"email":"a","name":"b"} trailing"#), "body");
        assert_eq!(field("[1,2]"), "body");
        assert_eq!(field(r#"["a","b"]"#), "body");
        assert_eq!(field("null"), "body");
        assert_eq!(field(""), "body");
        assert_eq!(field(r#"{"email":"a","email":"b","name":"c"}"#), "email");
    }

    #[test]
    fn type_errors_do_not_echo_values() {
        let p = parse::<Body>(br#"{"email":"a","name":12345678}"#).unwrap_err();
        assert!(!p.field_errors()[0].message.contains("12345678"), "{:?}", p.field_errors());
    }
}
