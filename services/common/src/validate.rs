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

/// `text` folded for matching what people type: lowercased, accents and other combining marks
/// dropped after canonical decomposition (`São Paulo` and `sao paulo` fold alike), runs of
/// whitespace one space, trimmed.
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    use unicode_normalization::char::is_combining_mark;
    let folded: String = text.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod fold_tests {
    use super::fold;

    #[test]
    fn accents_case_and_spaces_fold_away() {
        assert_eq!(fold("São  Paulo "), "sao paulo");
        assert_eq!(fold("ZÜRICH"), "zurich");
        assert_eq!(fold("Kraków"), "krakow");
        assert_eq!(fold("Ōsaka"), "osaka");
        assert_eq!(fold("Lisboa"), "lisboa");
        assert_eq!(fold("東京"), "東京");
    }
}

/// An optional web link someone will be sent to (an online event's join link): trimmed; empty
/// is none; otherwise at most `max` characters, an absolute `https://` address with a host and
/// no user or password in it (a link with credentials would hand them to every reader).
pub fn https_link(field: &str, value: &str, max: usize) -> Result<Option<String>, Problem> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > max {
        return Err(invalid(field, &format!("must be at most {max} characters")));
    }
    let uri: http::Uri =
        v.parse().map_err(|_| invalid(field, "must be a web address, e.g. https://example.com/room"))?;
    if uri.scheme_str().map(str::to_ascii_lowercase).as_deref() != Some("https") {
        return Err(invalid(field, "must start with https://"));
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => Err(invalid(field, "must not contain a user name or password")),
        Some(a) if !a.host().is_empty() => Ok(Some(v.to_owned())),
        _ => Err(invalid(field, "must name a host, e.g. https://example.com/room")),
    }
}

#[cfg(test)]
mod link_tests {
    use super::https_link;

    #[test]
    fn only_https_addresses_without_credentials() {
        assert_eq!(https_link("u", "  ", 500).unwrap(), None);
        assert_eq!(
            https_link("u", " https://meet.example.com/abc-def?pwd=x ", 500).unwrap().as_deref(),
            Some("https://meet.example.com/abc-def?pwd=x")
        );
        for bad in [
            "http://meet.example.com/x",
            "javascript:alert(1)",
            "meet.example.com/x",
            "https://user:pw@meet.example.com/",
            "https:///path",
            "https://exa mple.com/",
            "ftp://example.com/",
        ] {
            let p = https_link("online_url", bad, 500).unwrap_err();
            assert_eq!(p.field_errors()[0].field, "online_url", "{bad}");
        }
        assert!(https_link("u", &format!("https://example.com/{}", "x".repeat(500)), 500).is_err());
    }
}

/// A feed's `limit` as sent (absent or empty: the default, 20): a number from 1 to 50.
pub fn feed_limit(raw: Option<&str>) -> Result<u32, Problem> {
    use cityevents_api::limits::{DEFAULT_LIMIT, MAX_FEED};
    match raw.map(str::trim) {
        None | Some("") => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_FEED).contains(l))
            .ok_or_else(|| invalid("limit", &format!("must be a number from 1 to {MAX_FEED}"))),
    }
}

#[cfg(test)]
mod feed_limit_tests {
    use super::feed_limit;

    #[test]
    fn empty_is_the_default_and_the_rest_is_bounded() {
        assert_eq!(feed_limit(None).unwrap(), 20);
        assert_eq!(feed_limit(Some("")).unwrap(), 20);
        assert_eq!(feed_limit(Some("50")).unwrap(), 50);
        for bad in ["0", "51", "-1", "ten", "1.5"] {
            assert_eq!(feed_limit(Some(bad)).unwrap_err().field_errors()[0].field, "limit", "{bad}");
        }
    }
}
