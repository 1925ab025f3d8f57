//! Input checks that answer `400 application/problem+json` naming the field, so every limit in
//! the API fails the same way.

use keel::http::Problem;

/// A 400 problem for one invalid field.
pub fn invalid(field: &str, message: &str) -> Problem {
    Problem::bad_request(format!("{field} {message}")).code("invalid_input").field(field, message)
}

/// Checks `value` is at most `max` characters, not blank and free of control characters but
/// tab and newline; answers it trimmed. The length counts what was sent, as the OpenAPI
/// document's `maxLength` does.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, Problem> {
    let v = value.trim();
    if v.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.chars().count() > max {
        return Err(invalid(field, &format!("must be at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// Like [`text`] but empty is allowed.
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<String, Problem> {
    if value.trim().is_empty() { Ok(String::new()) } else { text(field, value, max) }
}

/// Parses a UUID path or body value.
pub fn uuid(field: &str, value: &str) -> Result<uuid::Uuid, Problem> {
    uuid::Uuid::parse_str(value).map_err(|_| invalid(field, "must be a UUID"))
}

/// A comma-separated list of 1 to `max` UUIDs in `field` (empty parts ignored, repeats
/// dropped, order kept), or a 400 naming `field`.
pub fn uuid_list(field: &str, raw: Option<&str>, max: usize) -> Result<Vec<uuid::Uuid>, Problem> {
    let mut ids = Vec::new();
    for part in raw.unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let id = uuid(field, part)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() || ids.len() > max {
        return Err(invalid(field, &format!("must list 1 to {max} ids, comma-separated")));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        assert_eq!(text("title", "  Jazz  ", 120).unwrap(), "Jazz");
        assert!(text("title", "   ", 120).is_err());
        assert!(text("title", &"x".repeat(121), 120).is_err());
        assert!(text("title", "a\u{0}b", 120).is_err());
        assert!(text("title", &"é".repeat(120), 120).is_ok(), "characters, not bytes");
        assert!(text("title", &format!(" {} ", "x".repeat(119)), 120).is_err(), "as sent, before trimming");
    }
}

/// A request's query string as `T` — a struct of text fields with
/// `#[serde(deny_unknown_fields)]` — or a 400 naming the parameter that is not one of the
/// operation's (`q is not a parameter of this operation`), so a misspelt or unsupported filter
/// is never silently ignored.
pub fn query<T>(q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Problem> {
    q.map(|axum::extract::Query(v)| v).map_err(|rejection| {
        let text = rejection.body_text();
        match text.split("unknown field `").nth(1).and_then(|rest| rest.split('`').next()) {
            Some(name) => invalid(name, "is not a parameter of this operation"),
            None => invalid("query", "is not a valid query string"),
        }
    })
}

#[cfg(test)]
mod query_tests {
    use axum::extract::{FromRequestParts, Query};

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        #[allow(dead_code)]
        limit: Option<String>,
    }

    async fn parse(uri: &str) -> Result<Q, keel::http::Problem> {
        let (mut parts, ()) = http::Request::builder().uri(uri).body(()).unwrap().into_parts();
        super::query(Query::<Q>::from_request_parts(&mut parts, &()).await)
    }

    #[tokio::test]
    async fn an_unknown_parameter_is_named() {
        assert!(parse("/x?limit=5").await.is_ok());
        let p = parse("/x?limit=5&q=jazz").await.unwrap_err();
        let body = serde_json::to_value(&p).unwrap();
        assert_eq!(body["errors"][0]["field"], "q", "{body}");
    }
}
