//! The audit log as an operation log: `GET /admin/audit` lists a service's audit log, newest
//! first, filtered by actor, action (or an action prefix), target and time range, a page at a
//! time — as the operator's page, JSON, or an export of every matching row as CSV or JSON lines.
//!
//! The management crate does not read databases: a service that keeps an audit log hands
//! [`Admin::with_audit`](crate::Admin::with_audit) an [`AuditSource`] (keel-app's reads
//! `keel_security::audit::AuditLog`). Verifying the chain stays `<service> audit verify`.
//!
//! | query | meaning |
//! |---|---|
//! | `actor`, `target` | exactly this actor (`user:42`) or target |
//! | `action` | this action (`auth.login`), or every action under a prefix ending in `.` or `*` (`moderation.`) |
//! | `since`, `until` | at or after, and before, a UTC time (`2026-11-28T17:00:00Z`) or a date |
//! | `before` | rows older than this id (the previous page's `next`) |
//! | `limit` | rows per page, 1 to 1000 (default 100) |
//! | `format` | `html`, `json` (`{items, next}`), `csv` or `jsonl`; without it, HTML for a browser, else JSON. `csv` and `jsonl` export every matching row (a download) |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use askama::Template;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use keel_http::problem::Problem;
use serde::{Deserialize, Serialize};

use crate::Admin;

/// Which rows to list: every criterion given holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Who acted.
    pub actor: Option<String>,
    /// The action, or a prefix ending in `.` or `*`.
    pub action: Option<String>,
    /// What it was done to.
    pub target: Option<String>,
    /// At or after this UTC time.
    pub since: Option<String>,
    /// Before this UTC time.
    pub until: Option<String>,
    /// Rows older than this id.
    pub before: Option<i64>,
    /// At most this many rows (1 to [`MAX_LIMIT`]).
    pub limit: u32,
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// Its position in the chain.
    pub id: i64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Its details (a JSON object, masked as stored).
    pub details: serde_json::Value,
    /// The key that chained it (empty: none).
    pub key_id: String,
    /// The row's hash.
    pub hash: String,
}

/// Why a listing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditReadError {
    /// A criterion is unusable (a time that is not one): 400.
    Filter(String),
    /// The log cannot be read now (its database): 503.
    Unavailable(String),
}

/// What an [`AuditSource::list`] answers.
pub type AuditList<'a> = Pin<Box<dyn Future<Output = Result<Vec<AuditRow>, AuditReadError>> + Send + 'a>>;

/// What an [`AuditSource::record`] answers: why it was not written.
pub type AuditWrite<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// An operator's action, to record in the audit log (its outcome is `success`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Who acted (`admin-token`).
    pub actor: String,
    /// What they did (`flags.override`).
    pub action: String,
    /// What to (`flag:feed.live`).
    pub target: String,
    /// Its details: a JSON object, masked as stored (before, after, reason).
    pub details: serde_json::Value,
}

/// A service's audit log, as the management routes read and append to it.
pub trait AuditSource: Send + Sync + 'static {
    /// The rows `filter` selects, newest first.
    fn list(&self, filter: AuditFilter) -> AuditList<'_>;
    /// Appends `entry` (a change an operator made through the management routes).
    fn record(&self, entry: AuditEntry) -> AuditWrite<'_>;
}

/// The most rows a page (and each read of an export) has.
pub const MAX_LIMIT: u32 = 1000;
/// A page's rows when the query does not say.
const DEFAULT_LIMIT: u32 = 100;
/// The most rows an export writes: beyond, narrow the range.
pub const MAX_EXPORT: usize = 1_000_000;
/// The longest actor, action or target accepted.
const MAX_TEXT: usize = 256;

/// The query of `GET /admin/audit`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
    Csv,
    JsonLines,
}

/// An empty field of a form is no criterion.
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The filter and format a query asks for; a 400 naming the field otherwise.
fn parse(q: &AuditQuery, headers: &HeaderMap) -> Result<(AuditFilter, Format), Problem> {
    let bad = |field: &str, why: &str| Problem::bad_request(format!("{field} {why}")).field(field, why);
    for (field, value) in [("actor", &q.actor), ("action", &q.action), ("target", &q.target)] {
        if value.as_deref().is_some_and(|v| v.len() > MAX_TEXT || v.chars().any(char::is_control)) {
            return Err(bad(field, &format!("must be at most {MAX_TEXT} bytes, without control characters")));
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad("limit", &format!("must be between 1 and {MAX_LIMIT}")));
    }
    if q.before.is_some_and(|b| b < 1) {
        return Err(bad("before", "must be a row id (1 or more)"));
    }
    // Checked here, not only by the log: an export has sent its 200 before it reads a row.
    for (field, value) in [("since", &q.since), ("until", &q.until)] {
        if let Some(t) = given(value) {
            let full = if t.len() == 10 { format!("{t}T00:00:00Z") } else { t };
            if humantime::parse_rfc3339_weak(&full).is_err() {
                return Err(bad(field, "must be a UTC RFC 3339 time (2026-11-28T10:00:00Z) or a date (2026-11-28)"));
            }
        }
    }
    let format = match q.format.as_deref() {
        Some("html") => Format::Html,
        Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("jsonl") => Format::JsonLines,
        Some(_) => return Err(bad("format", "must be html, json, csv or jsonl")),
        None if crate::routes::wants_html(headers) => Format::Html,
        None => Format::Json,
    };
    let filter = AuditFilter {
        actor: given(&q.actor),
        action: given(&q.action),
        target: given(&q.target),
        since: given(&q.since),
        until: given(&q.until),
        before: q.before,
        limit,
    };
    Ok((filter, format))
}

fn read_problem(e: AuditReadError) -> Problem {
    match e {
        AuditReadError::Filter(why) => Problem::bad_request(why),
        AuditReadError::Unavailable(why) => {
            tracing::warn!(error = %why, "the audit log cannot be read");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
                .detail("the audit log cannot be read right now")
        }
    }
}

/// The query string of `filter` (and `format`) with `before` set: the next page's link.
fn query_string(f: &AuditFilter, before: Option<i64>, format: Option<&str>) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (k, v) in
        [("actor", &f.actor), ("action", &f.action), ("target", &f.target), ("since", &f.since), ("until", &f.until)]
    {
        if let Some(v) = v {
            pairs.push((k, v.clone()));
        }
    }
    if let Some(b) = before {
        pairs.push(("before", b.to_string()));
    }
    if f.limit != DEFAULT_LIMIT {
        pairs.push(("limit", f.limit.to_string()));
    }
    if let Some(format) = format {
        pairs.push(("format", format.to_owned()));
    }
    pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encodes a query value (unreserved characters kept).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Serialize)]
struct Listing {
    items: Vec<AuditRow>,
    /// The next (older) page, when this one is full.
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
struct AuditPage<'a> {
    stylesheet: &'a str,
    service: &'a str,
    filter: &'a AuditFilter,
    rows: &'a [AuditRow],
    next: Option<String>,
    csv: String,
    jsonl: String,
}

/// `GET /admin/audit`.
pub(crate) async fn list(State(admin): State<Admin>, headers: HeaderMap, query: Query<AuditQuery>) -> Response {
    let Some(source) = admin.audit.clone() else {
        return Problem::not_found().detail("this service keeps no audit log").into_response();
    };
    let (filter, format) = match parse(&query, &headers) {
        Ok(p) => p,
        Err(p) => return p.into_response(),
    };
    match format {
        Format::Csv | Format::JsonLines => export(source, filter, format, &admin.sources.identity.name),
        Format::Html | Format::Json => {
            let rows = match source.list(filter.clone()).await {
                Ok(rows) => rows,
                Err(e) => return read_problem(e).into_response(),
            };
            let full = rows.len() == filter.limit as usize;
            let next_before = rows.last().filter(|_| full).map(|r| r.id);
            let mut r = if format == Format::Json {
                let next =
                    next_before.map(|b| format!("/admin/audit?{}", query_string(&filter, Some(b), Some("json"))));
                axum::Json(Listing { items: rows, next }).into_response()
            } else {
                let page = AuditPage {
                    stylesheet: crate::status::STYLESHEET,
                    service: &admin.sources.identity.name,
                    filter: &filter,
                    rows: &rows,
                    next: next_before.map(|b| format!("/admin/audit?{}", query_string(&filter, Some(b), None))),
                    csv: format!("/admin/audit?{}", query_string(&filter, None, Some("csv"))),
                    jsonl: format!("/admin/audit?{}", query_string(&filter, None, Some("jsonl"))),
                };
                crate::routes::page(StatusCode::OK, page.render())
            };
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
            r
        }
    }
}

/// A CSV cell: quoted when it must be; a leading `=`, `+`, `-`, `@`, tab or carriage return
/// gets a `'` first, so a spreadsheet opening the export runs no formula.
fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{v}") } else { v.to_owned() };
    if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v }
}

fn csv_line(r: &AuditRow) -> String {
    let cells = [
        r.id.to_string(),
        r.at.clone(),
        r.actor.clone(),
        r.action.clone(),
        r.target.clone(),
        r.outcome.clone(),
        r.details.to_string(),
        r.key_id.clone(),
        r.hash.clone(),
    ];
    let mut line = cells.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

const CSV_HEADER: &str = "id,at,actor,action,target,outcome,details,key_id,hash\r\n";

/// Every row `filter` selects, read a page at a time as the body is sent (a download). A read
/// that fails mid-way, or an export that reaches [`MAX_EXPORT`] rows with more to come, ends
/// the body with an error: the client sees a truncated transfer, not a complete-looking file.
fn export(source: Arc<dyn AuditSource>, filter: AuditFilter, format: Format, service: &str) -> Response {
    struct State {
        source: Arc<dyn AuditSource>,
        filter: AuditFilter,
        header: bool,
        done: bool,
        written: usize,
    }
    let csv = format == Format::Csv;
    let start =
        State { source, filter: AuditFilter { limit: MAX_LIMIT, ..filter }, header: csv, done: false, written: 0 };
    let body = futures_util::stream::unfold(start, move |mut st| async move {
        if st.header {
            st.header = false;
            return Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(CSV_HEADER.as_bytes())), st));
        }
        if st.done {
            return None;
        }
        if st.written >= MAX_EXPORT {
            tracing::warn!(rows = st.written, "an audit log export stopped at its limit: narrow the range");
            return Some((
                Err(std::io::Error::other("the export reached its limit; narrow the time range")),
                State { done: true, ..st },
            ));
        }
        let rows = match st.source.list(st.filter.clone()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = ?e, "an audit log export stopped: the log could not be read");
                return Some((
                    Err(std::io::Error::other("the audit log could not be read")),
                    State { done: true, ..st },
                ));
            }
        };
        if rows.is_empty() {
            return None;
        }
        st.done = rows.len() < st.filter.limit as usize;
        st.filter.before = rows.last().map(|r| r.id);
        st.written += rows.len();
        let mut out = String::new();
        for r in &rows {
            if csv {
                out.push_str(&csv_line(r));
            } else if let Ok(line) = serde_json::to_string(r) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        Some((Ok(bytes::Bytes::from(out)), st))
    });
    let (content_type, ext) = if csv { ("text/csv; charset=utf-8", "csv") } else { ("application/jsonl", "jsonl") };
    let name: String = service.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let disposition = format!("attachment; filename=\"{name}-audit.{ext}\"");
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("auth.login"), "auth.login");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn the_next_page_keeps_the_filter() {
        let f = AuditFilter {
            actor: Some("user:1 2".into()),
            action: Some("moderation.".into()),
            limit: 5,
            ..Default::default()
        };
        assert_eq!(
            query_string(&f, Some(42), Some("json")),
            "actor=user%3A1%202&action=moderation.&before=42&limit=5&format=json"
        );
    }

    #[test]
    fn bad_queries_name_their_field() {
        let headers = HeaderMap::new();
        let q = |f: fn(&mut AuditQuery)| {
            let mut q = AuditQuery::default();
            f(&mut q);
            parse(&q, &headers)
        };
        assert!(q(|q| q.limit = Some(0)).is_err());
        assert!(q(|q| q.limit = Some(MAX_LIMIT + 1)).is_err());
        assert!(q(|q| q.before = Some(0)).is_err());
        assert!(q(|q| q.format = Some("xml".into())).is_err());
        assert!(q(|q| q.actor = Some("a\u{7}".into())).is_err());
        assert!(q(|q| q.target = Some("x".repeat(MAX_TEXT + 1))).is_err());
        let (f, format) = q(|q| q.actor = Some("  ".into())).unwrap();
        assert_eq!((f.actor, f.limit, format), (None, DEFAULT_LIMIT, Format::Json));
    }
}
