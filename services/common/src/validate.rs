//! Input checks that answer `400 application/problem+json` naming the field, so every limit in
//! the API fails the same way.

use keel::http::Problem;

/// A 400 problem for one invalid field ([`Problem::invalid`]).
pub fn invalid(field: &str, message: &str) -> Problem {
    Problem::invalid(field, message)
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
