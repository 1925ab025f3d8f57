//! What a symbol is, the limits of every field, and the checks both edges (HTTP and gRPC) run
//! through [`crate::store::Symbols`] before anything reaches the database.
//!
//! Every check collects all the problems of one request, each naming its field, so a client
//! fixes them in one round; messages say what was expected and never echo the value sent.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest project id (characters of `[A-Za-z0-9_-]`).
pub const MAX_PROJECT_ID: usize = 64;
/// Longest name (characters).
pub const MAX_NAME: usize = 128;
/// Longest kind (characters).
pub const MAX_KIND: usize = 32;
/// Largest `data` object, as compact JSON (bytes).
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Deepest nesting of `data` (the object itself is depth 1).
pub const MAX_DATA_DEPTH: usize = 32;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 20;
/// Largest page size.
pub const MAX_LIMIT: u32 = 100;
/// Largest offset: deeper pages cost a scan of every row skipped, so they are refused.
pub const MAX_OFFSET: u32 = 10_000;

/// A symbol as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    /// UUIDv7.
    pub id: Uuid,
    /// The project it belongs to.
    pub project_id: String,
    /// Unique (ignoring case) among the project's live symbols.
    pub name: String,
    /// What kind of symbol it is (`color`, `font`, `component`, …).
    pub kind: String,
    /// The value: a JSON object.
    pub data: Map<String, Value>,
    /// 1 when created, +1 per change (deletion included).
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
    /// When it was deleted; deleted symbols are never returned.
    pub deleted_at: Option<i64>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field, as the request names it (`name`, `data.a.b`, `limit`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The problems found in one request.
#[derive(Debug, Default)]
pub(crate) struct Check(Vec<FieldError>);

impl Check {
    pub(crate) fn invalid(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError { field: field.to_owned(), message: message.into() });
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() { Ok(value) } else { Err(self.0) }
    }
}

/// A project id: 1–64 of `[A-Za-z0-9_-]` (it is a path segment).
pub(crate) fn project_id(c: &mut Check, raw: &str) -> String {
    if raw.is_empty() {
        c.invalid("project_id", "is required");
    } else if raw.chars().count() > MAX_PROJECT_ID {
        c.invalid("project_id", format!("must be at most {MAX_PROJECT_ID} characters"));
    } else if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        c.invalid("project_id", "must be letters, digits, '_' or '-'");
    }
    raw.to_owned()
}

/// A symbol id: a UUID.
pub(crate) fn symbol_id(c: &mut Check, raw: &str) -> Uuid {
    if raw.is_empty() {
        c.invalid("id", "is required");
        return Uuid::nil();
    }
    Uuid::parse_str(raw).unwrap_or_else(|_| {
        c.invalid("id", "must be a UUID");
        Uuid::nil()
    })
}

/// A name: trimmed, 1–128 characters, no control characters.
pub(crate) fn name(c: &mut Check, raw: &str) -> String {
    let v = raw.trim();
    if v.is_empty() {
        c.invalid("name", "is required");
    } else if v.chars().count() > MAX_NAME {
        c.invalid("name", format!("must be at most {MAX_NAME} characters"));
    } else if v.chars().any(char::is_control) {
        c.invalid("name", "must not contain control characters");
    }
    v.to_owned()
}

/// The key a name is unique by within a project: its lowercase form.
pub(crate) fn name_key(name: &str) -> String {
    name.to_lowercase()
}

/// A kind: 1–32 characters, a lowercase ASCII letter then `[a-z0-9_.-]`.
pub(crate) fn kind(c: &mut Check, raw: &str) -> String {
    let mut chars = raw.chars();
    match chars.next() {
        None => c.invalid("kind", "is required"),
        Some(_) if raw.len() > MAX_KIND => c.invalid("kind", format!("must be at most {MAX_KIND} characters")),
        Some(first) => {
            let rest_ok = chars.all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '_' | '.' | '-'));
            if !first.is_ascii_lowercase() || !rest_ok {
                c.invalid("kind", "must be a lowercase letter followed by lowercase letters, digits, '_', '.' or '-'");
            }
        }
    }
    raw.to_owned()
}

/// `data`: an object, at most [`MAX_DATA_BYTES`] as compact JSON and [`MAX_DATA_DEPTH`] deep.
pub(crate) fn data(c: &mut Check, data: Map<String, Value>) -> Map<String, Value> {
    if depth_of_map(&data) > MAX_DATA_DEPTH {
        c.invalid("data", format!("must be nested at most {MAX_DATA_DEPTH} levels deep"));
    } else if encoded_len(&data) > MAX_DATA_BYTES {
        c.invalid("data", format!("must be at most {} KiB as JSON", MAX_DATA_BYTES / 1024));
    }
    data
}

fn depth_of_map(m: &Map<String, Value>) -> usize {
    1 + m.values().map(depth).max().unwrap_or(0)
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => depth_of_map(m),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The compact JSON length of `data` (what is stored).
fn encoded_len(data: &Map<String, Value>) -> usize {
    serde_json::to_vec(data).map_or(usize::MAX, |v| v.len())
}

/// An expected version: positive when given.
pub(crate) fn expected_version(c: &mut Check, v: Option<i64>) -> Option<i64> {
    if v.is_some_and(|v| v < 1) {
        c.invalid("expected_version", "must be at least 1");
    }
    v
}

/// What [`crate::store::Symbols::create`] takes, unchecked (as either edge received it).
#[derive(Debug, Clone, Default)]
pub struct NewSymbol {
    /// Required.
    pub name: String,
    /// Required.
    pub kind: String,
    /// Optional: `{}` when absent.
    pub data: Option<Map<String, Value>>,
}

/// What [`crate::store::Symbols::update`] takes, unchecked: the fields to change.
#[derive(Debug, Clone, Default)]
pub struct SymbolPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new kind.
    pub kind: Option<String>,
    /// A new value (replaces the whole object).
    pub data: Option<Map<String, Value>>,
    /// Change only if the symbol is at this version.
    pub expected_version: Option<i64>,
}

/// What [`crate::store::Symbols::list`] takes, unchecked.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRequest {
    /// Symbols to skip (default 0).
    pub offset: Option<i64>,
    /// Page size (default [`DEFAULT_LIMIT`]).
    pub limit: Option<i64>,
}

/// A checked page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Symbols skipped.
    pub offset: u32,
    /// Page size.
    pub limit: u32,
}

pub(crate) fn page(c: &mut Check, p: PageRequest) -> Page {
    let offset = match p.offset {
        None => 0,
        Some(o) if (0..=i64::from(MAX_OFFSET)).contains(&o) => o as u32,
        Some(_) => {
            c.invalid("offset", format!("must be between 0 and {MAX_OFFSET}"));
            0
        }
    };
    let limit = match p.limit {
        None => DEFAULT_LIMIT,
        Some(l) if (1..=i64::from(MAX_LIMIT)).contains(&l) => l as u32,
        Some(_) => {
            c.invalid("limit", format!("must be between 1 and {MAX_LIMIT}"));
            DEFAULT_LIMIT
        }
    };
    Page { offset, limit }
}

/// One page of a project's live symbols.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolPage {
    /// The symbols, oldest first.
    pub items: Vec<Symbol>,
    /// Live symbols in the project.
    pub total_count: i64,
    /// The page asked for.
    pub page: Page,
    /// Whether symbols follow this page.
    pub has_next: bool,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1000).unwrap_or(i64::MAX)
}

/// `micros` as RFC 3339 (`2025-01-02T03:04:05.123456Z`).
pub fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields<T>(f: impl FnOnce(&mut Check) -> T) -> Vec<String> {
        let mut c = Check::default();
        f(&mut c);
        c.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn project_ids() {
        assert!(fields(|c| project_id(c, "site-1_A")).is_empty());
        assert_eq!(fields(|c| project_id(c, "")), ["project_id"]);
        assert_eq!(fields(|c| project_id(c, "a/b")), ["project_id"]);
        assert_eq!(fields(|c| project_id(c, &"a".repeat(65))), ["project_id"]);
        assert!(fields(|c| project_id(c, &"a".repeat(64))).is_empty());
    }

    #[test]
    fn names_are_trimmed_bounded_and_keyed_by_lowercase() {
        let mut c = Check::default();
        assert_eq!(name(&mut c, "  Primary Blue "), "Primary Blue");
        assert!(c.0.is_empty());
        assert_eq!(fields(|c| name(c, "   ")), ["name"]);
        assert_eq!(fields(|c| name(c, "a\u{7}b")), ["name"]);
        assert_eq!(fields(|c| name(c, &"é".repeat(129))), ["name"]);
        assert!(fields(|c| name(c, &"é".repeat(128))).is_empty());
        assert_eq!(name_key("Primary BLUE"), "primary blue");
    }

    #[test]
    fn kinds() {
        for ok in ["color", "font.family", "c2", "a-b_c"] {
            assert!(fields(|c| kind(c, ok)).is_empty(), "{ok}");
        }
        for bad in ["", "Color", "1color", "co lor", "cölor", &"a".repeat(33)] {
            assert_eq!(fields(|c| kind(c, bad)), ["kind"], "{bad}");
        }
    }

    #[test]
    fn data_is_bounded_in_size_and_depth() {
        let small = json!({"hex": "#0000ff", "n": [1, 2, {"x": null}]});
        let Value::Object(small) = small else { unreachable!() };
        assert!(fields(|c| data(c, small)).is_empty());
        let mut big = Map::new();
        big.insert("s".into(), Value::String("x".repeat(MAX_DATA_BYTES)));
        assert_eq!(fields(|c| data(c, big)), ["data"]);
        let mut deep = Value::Null;
        for _ in 0..MAX_DATA_DEPTH {
            deep = json!({ "d": deep });
        }
        let Value::Object(ok) = deep.clone() else { unreachable!() };
        assert!(fields(|c| data(c, ok)).is_empty());
        let Value::Object(too_deep) = json!({ "d": deep }) else { unreachable!() };
        assert_eq!(fields(|c| data(c, too_deep)), ["data"]);
    }

    #[test]
    fn pages() {
        let mut c = Check::default();
        assert_eq!(page(&mut c, PageRequest::default()), Page { offset: 0, limit: DEFAULT_LIMIT });
        assert_eq!(page(&mut c, PageRequest { offset: Some(5), limit: Some(100) }), Page { offset: 5, limit: 100 });
        assert!(c.0.is_empty());
        assert_eq!(fields(|c| page(c, PageRequest { offset: Some(-1), limit: Some(0) })), ["offset", "limit"]);
        assert_eq!(fields(|c| page(c, PageRequest { offset: Some(10_001), limit: Some(101) })), ["offset", "limit"]);
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500_000), "1970-01-01T00:00:01.5Z");
    }
}
