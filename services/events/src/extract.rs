//! A JSON body extractor whose every refusal is an RFC 9457 problem naming the field, instead of
//! axum's plain-text rejections (and its 422, which the platform does not use).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use cityevents_common::validate;
use http::{StatusCode, header};
use keel::http::Problem;
use serde::de::DeserializeOwned;

/// A JSON request body of type `T`. Refuses with 415 without a JSON content type, 413 over the
/// body limit and 400 (`invalid_input`, naming the field) for malformed JSON, a wrong type, a
/// missing field or an unknown one.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("send the body as Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(status, "payload-too-large", "Payload too large").detail("the request body is too large")
            } else {
                Problem::bad_request("the request body could not be read")
            }
        })?;
        parse(&bytes).map(Json)
    }
}

fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Decodes `bytes` as `T`, or a 400 problem naming where it went wrong.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        problem(&path, &inner)
    })?;
    de.end().map_err(|e| problem(".", &e))?;
    Ok(value)
}

fn problem(path: &str, e: &serde_json::Error) -> Problem {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => validate::invalid("body", "is not valid JSON"),
        Category::Data => {
            // serde's messages name the type it wanted, never the client's value in full; drop
            // the position suffix, which means nothing to a client of a one-line body.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default().to_owned();
            let root = path == "." || path.is_empty();
            // An unknown field's path already ends with it; a missing field's is its parent.
            let field = match named_field(&message) {
                Some(name) if root => name.to_owned(),
                Some(name) if path != name && !path.ends_with(&format!(".{name}")) => format!("{path}.{name}"),
                _ if root => "body".to_owned(),
                _ => path.to_owned(),
            };
            let message = if message.starts_with("unknown field") {
                "is not a known field".to_owned()
            } else if message.starts_with("missing field") {
                "is required".to_owned()
            } else {
                message
            };
            validate::invalid(&field, &message)
        }
    }
}

/// The field a "missing field `x`" or "unknown field `x`, expected …" message is about.
fn named_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        n: Option<u32>,
    }

    fn field(body: &str) -> String {
        parse::<Body>(body.as_bytes()).unwrap_err().field_errors()[0].field.clone()
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(field(r#"{"title": 5}"#), "title");
        assert_eq!(field(r#"{"title": "x", "n": -1}"#), "n");
        assert_eq!(field(r#"{"title": "x", "extra": 1}"#), "extra");
        assert_eq!(field(r#"{}"#), "title");
        assert_eq!(field(r#"{"title": "x""#), "body");
        assert_eq!(field(r#"{"title": "x"} trailing"#), "body");
        assert_eq!(field("5"), "body");
        assert!(parse::<Body>(br#"{"title": "x"}"#).is_ok());
    }
}
