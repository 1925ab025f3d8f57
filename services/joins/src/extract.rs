//! Request inputs checked at the edge: the caller (from the bearer token), JSON bodies that
//! refuse unknown fields and answer 400 problems, the `Idempotency-Key` header and page queries.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use cityevents_common::page::{PageQuery, PageRequest};
use cityevents_common::validate;
use http::request::Parts;
use keel::Problem;
use keel::security::jwt::{Auth, Claims};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Largest JSON body accepted, in bytes.
const MAX_BODY: usize = 16 * 1024;
/// Longest `Idempotency-Key`.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The user id (`sub`).
    pub(crate) id: Uuid,
    /// Whether the token carries the `admin` role.
    pub(crate) admin: bool,
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
        let admin = claims.role.as_deref() == Some(cityevents_common::roles::ADMIN)
            || claims.roles.iter().any(|r| r == cityevents_common::roles::ADMIN);
        Ok(Self { id, admin })
    }
}

/// A JSON body of `T` (which should `deny_unknown_fields`): malformed JSON, a wrong type, a
/// missing or unknown field, or a body over 16 KiB is a 400 problem naming what is wrong.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY).await.map_err(|_| {
            validate::invalid("body", &format!("must be a JSON object of at most {MAX_BODY} bytes")).into_response()
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| json_problem(&e).into_response())
    }
}

/// A 400 problem for a body serde refused, naming the field when serde does.
fn json_problem(e: &serde_json::Error) -> Problem {
    let message = e.to_string();
    // serde names fields in backticks: "unknown field `x`, expected …", "missing field `x`".
    let names_field = message.starts_with("unknown field") || message.starts_with("missing field");
    let field = message.split('`').nth(1).filter(|f| names_field && !f.is_empty() && f.len() <= 64 && !f.contains(' '));
    let text = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "is not valid JSON".to_owned(),
        _ => message.split(" at line ").next().unwrap_or("is not acceptable").to_owned(),
    };
    match (e.classify(), field) {
        (serde_json::error::Category::Data, Some(f)) => validate::invalid(f, &text),
        _ => validate::invalid("body", &text),
    }
}

/// The `Idempotency-Key` header: required, 1 to 128 characters of `[A-Za-z0-9_-]`.
pub(crate) fn idempotency_key(headers: &http::HeaderMap) -> Result<String, Problem> {
    const FIELD: &str = "Idempotency-Key";
    let mut values = headers.get_all("idempotency-key").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(validate::invalid(FIELD, "header is required once (1 to 128 characters of A-Z a-z 0-9 _ -)"));
    };
    let key = value.to_str().unwrap_or_default();
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(key.to_owned())
    } else {
        Err(validate::invalid(FIELD, "must be 1 to 128 characters of A-Z a-z 0-9 _ -"))
    }
}

/// `?limit=&cursor=` as text, so a bad `limit` is our 400 naming the field rather than the
/// framework's plain-text rejection.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPage {
    limit: Option<String>,
    cursor: Option<String>,
}

impl RawPage {
    /// Parses and checks the page request.
    pub(crate) fn validate(&self) -> Result<PageRequest, Problem> {
        let limit = match self.limit.as_deref() {
            None | Some("") => None,
            Some(l) => Some(l.parse::<u32>().map_err(|_| validate::invalid("limit", "must be between 1 and 100"))?),
        };
        PageQuery { limit, cursor: self.cursor.clone() }.validate()
    }
}

/// Parses a path id.
pub(crate) fn path_uuid(field: &str, value: &str) -> Result<Uuid, Problem> {
    validate::uuid(field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_checked() {
        let mut h = http::HeaderMap::new();
        assert!(idempotency_key(&h).is_err(), "missing");
        for bad in ["", "has space", "é", &"x".repeat(129), "a/b"] {
            h.insert(
                "idempotency-key",
                http::HeaderValue::from_str(bad).unwrap_or(http::HeaderValue::from_static("!")),
            );
            assert!(idempotency_key(&h).is_err(), "{bad:?}");
        }
        for good in ["a", "A-b_9", &"x".repeat(128)] {
            h.insert("idempotency-key", http::HeaderValue::from_str(good).unwrap());
            assert_eq!(idempotency_key(&h).unwrap(), good);
        }
        h.append("idempotency-key", http::HeaderValue::from_static("second"));
        assert!(idempotency_key(&h).is_err(), "twice");
    }

    #[test]
    fn json_problems_name_the_field() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct B {
            user_id: String,
        }
        let p = |s: &str| json_problem(&serde_json::from_str::<B>(s).unwrap_err());
        assert_eq!(p(r#"{"user_id": "a", "x": 1}"#).field_errors()[0].field, "x");
        assert_eq!(p("{}").field_errors()[0].field, "user_id");
        assert_eq!(p(r#"{"user_id": 5}"#).field_errors()[0].field, "body");
        assert_eq!(p("{").field_errors()[0].field, "body");
        assert_eq!(p("{").status_code(), 400);
    }

    #[test]
    fn page_limits_are_checked() {
        let raw = |l: &str| RawPage { limit: Some(l.into()), cursor: None }.validate();
        assert!(raw("abc").is_err());
        assert!(raw("0").is_err());
        assert!(raw("101").is_err());
        assert_eq!(raw("5").unwrap().limit, 5);
    }
}
