//! Extractors whose every refusal is an RFC 9457 [`Problem`] naming what was wrong.
//!
//! axum's own extractors answer a bad request with plain text (a malformed JSON body, a query
//! parameter of the wrong type, a path segment that is not a UUID) and a body of the wrong shape
//! with 422; the stack's [`problems`](crate::problems) layer turns those into problems after the
//! fact. These answer a problem themselves, `400 invalid_input` with `errors[]` naming the field
//! as the client sent it, so a handler needs no `Result<Query<_>, QueryRejection>` and no
//! `Path<String>` parsed by hand:
//!
//! | extractor | refuses with | field named |
//! |---|---|---|
//! | [`Json<T>`] / [`OptionalJson<T>`] | 415 without a JSON content type, 413 over `http.body_limit`, 400 otherwise | the body's field (`a.b`, `ids[2]`) or `body` |
//! | [`Query<T>`] | 400 | the parameter: unknown, repeated or of the wrong type |
//! | [`Path<T>`] | 400 | the route's parameter (`id`) |
//!
//! A message says what was expected and never echoes the client's value. A request body's or
//! query's field path comes from `serde_path_to_error`; what was wrong with it (unknown,
//! missing, repeated, of the wrong type) from the error serde's derived code raised, which serde
//! renders as text only (see [`json`]).
//!
//! ```
//! use axum::Router;
//! use axum::routing::{get, post};
//! use keel_http::extract::{Json, Path, Query};
//! use uuid::Uuid;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Rename {
//!     name: String,
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Filter {
//!     city: Option<String>,
//! }
//!
//! async fn rename(Path(id): Path<Uuid>, Json(body): Json<Rename>) -> String {
//!     format!("{id}: {}", body.name)
//! }
//!
//! async fn list(Query(filter): Query<Filter>) -> String {
//!     filter.city.unwrap_or_default()
//! }
//!
//! let app: Router = Router::new().route("/items/{id}", post(rename)).route("/items", get(list));
//! ```

/// `Deref`/`DerefMut` to the extracted value, as axum's extractors have.
macro_rules! deref_to_value {
    ($extractor:ident) => {
        impl<T> std::ops::Deref for $extractor<T> {
            type Target = T;

            fn deref(&self) -> &T {
                &self.0
            }
        }

        impl<T> std::ops::DerefMut for $extractor<T> {
            fn deref_mut(&mut self) -> &mut T {
                &mut self.0
            }
        }
    };
}
use deref_to_value;

pub mod json;
pub mod path;
pub mod query;

pub use json::{Json, OptionalJson, body};
pub use path::Path;
pub use query::Query;

use crate::problem::Problem;

/// Longest field name repeated back to a client; a longer unknown one is reported as its
/// container (`body`, `query`).
const MAX_FIELD_NAME: usize = 64;

/// What serde's derived code refused, from its error's text.
///
/// serde's `de::Error` constructors (`unknown_field`, `missing_field`, `duplicate_field`,
/// `invalid_type`) reach a format's error type only as text: serde_json's and
/// serde_urlencoded's errors carry no kind. These are serde's own fixed wordings.
#[derive(Debug, PartialEq, Eq)]
enum Refused<'a> {
    Unknown,
    Missing(&'a str),
    Repeated(&'a str),
    Expected(&'a str),
    Other,
}

impl<'a> Refused<'a> {
    fn of(message: &'a str) -> Self {
        if message.starts_with("unknown field `") {
            Self::Unknown
        } else if let Some(name) = quoted_after(message, "missing field `") {
            Self::Missing(name)
        } else if let Some(name) = quoted_after(message, "duplicate field `") {
            Self::Repeated(name)
        } else if let Some((_, expected)) = message.rsplit_once(", expected ") {
            // `invalid type: string "…", expected i64`: only what was expected, so the
            // client's value is never echoed back.
            Self::Expected(expected)
        } else {
            Self::Other
        }
    }
}

/// The text between `prefix` (at the start) and the next backtick.
fn quoted_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(prefix)?;
    rest.find('`').map(|len| &rest[..len])
}

/// How a container names its unknown fields: what is said of one that is named, and of the
/// container when the name is too long to repeat.
#[derive(Debug, Clone, Copy)]
struct Unknown {
    field: &'static str,
    container: &'static str,
}

/// The problem for a value serde refused at `path` (`serde_path_to_error`'s, `.` for the
/// whole value), inside `container` (`body`, `query`).
fn refusal(container: &str, path: &str, message: &str, unknown: Unknown) -> Problem {
    let whole = path == ".";
    match Refused::of(message) {
        // serde_path_to_error's path already ends at an unknown key.
        Refused::Unknown if whole || path.rsplit('.').next().is_some_and(|key| key.len() > MAX_FIELD_NAME) => {
            Problem::invalid(container, unknown.container)
        }
        Refused::Unknown => Problem::invalid(path, unknown.field),
        // A missing or repeated field is refused by its parent, whose path this may be.
        Refused::Missing(name) => Problem::invalid(&within(path, name), "is required"),
        Refused::Repeated(name) => Problem::invalid(&within(path, name), "is given twice"),
        Refused::Expected(_) | Refused::Other if whole => {
            Problem::invalid(container, &format!("must be {} with the documented fields", a_container(container)))
        }
        Refused::Expected(expected) => Problem::invalid(path, &format!("must be {}", in_json_terms(expected))),
        Refused::Other => Problem::invalid(path, "is not valid"),
    }
}

fn a_container(container: &str) -> &'static str {
    if container == "body" { "a JSON object" } else { "a query string" }
}

/// `name` inside the value at `path`, where `path` may already end at it.
fn within(path: &str, name: &str) -> String {
    if path == "." {
        name.to_owned()
    } else if path == name || path.strip_suffix(name).is_some_and(|p| p.ends_with('.')) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// serde's name for an expected type, as a JSON or form client would say it.
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
        "a map" | "a JSON object" | "an object" => "an object".to_owned(),
        "a boolean" | "a string" | "a UUID" => expected.to_owned(),
        s if s.starts_with("struct ") => "an object".to_owned(),
        s if s.starts_with("one of ") || s.starts_with("variant identifier") => {
            "one of the documented values".to_owned()
        }
        _ => "of the documented type".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_wordings_are_classified() {
        assert_eq!(Refused::of("unknown field `x`, expected one of `a`, `b`"), Refused::Unknown);
        assert_eq!(Refused::of("unknown field `x`, there are no fields"), Refused::Unknown);
        assert_eq!(Refused::of("missing field `email`"), Refused::Missing("email"));
        assert_eq!(Refused::of("duplicate field `email`"), Refused::Repeated("email"));
        assert_eq!(Refused::of("invalid type: string \"secret\", expected u32"), Refused::Expected("u32"));
        assert_eq!(Refused::of("something else"), Refused::Other);
        // A value that only looks like a wording is not one.
        assert_eq!(Refused::of("invalid value: missing field `x`"), Refused::Other);
    }

    #[test]
    fn expected_types_never_echo_a_value() {
        for (serde, said) in [
            ("u32", "an integer from 0 to 4294967295"),
            ("i64", "an integer"),
            ("a sequence", "an array"),
            ("struct Inner", "an object"),
            ("a UUID", "a UUID"),
            ("one of `a`, `b`", "one of the documented values"),
            ("something \"secret\"", "of the documented type"),
        ] {
            assert_eq!(in_json_terms(serde), said);
        }
    }
}
