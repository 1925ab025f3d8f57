//! `/admin/flags`: the flag set, and runtime overrides of it.
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /admin/flags[?prefix=feed]` | the flags in effect (all, or those named `prefix` or under it), the store, each flag's source and evaluations |
//! | `GET /admin/flags/{key}` | one flag |
//! | `PUT /admin/flags/{key}` | override it: `{"flag": {…definition…}, "reason": "…"}` |
//! | `DELETE /admin/flags/{key}` | remove its override: `{"reason": "…"}` |
//! | `GET /admin/flags/{key}/history[?limit=50]` | its override changes, newest first |
//! | `POST /admin/flags/{key}/evaluate` | what it gives `{"user", "environment", "version", "attributes"}`, without counting |
//!
//! Changes take the admin token (a signed-in page reads only), need a reason, are kept in the
//! flag's history and, when the service keeps one, in its audit log (`flags.override`,
//! `flags.override_remove`, with the definitions before and after).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use keel_features::{EvalContext, FlagDef, OverrideError};
use keel_http::problem::Problem;

use crate::routes::Admin;

/// Largest request body of a flag change.
const MAX_BODY: usize = 64 * 1024;
/// Who a change made with the admin token is recorded as.
pub(crate) const ACTOR: &str = "admin-token";

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    prefix: Option<String>,
    /// Set by the console after a change: the page says so.
    changed: Option<String>,
}

pub(crate) async fn list(State(admin): State<Admin>, headers: http::HeaderMap, Query(q): Query<ListQuery>) -> Response {
    if crate::routes::wants_html(&headers) {
        let notice = q.changed.filter(|k| k.len() <= 100).map(|k| {
            format!("Changed {k}: in effect here now, and on every replica within the store's poll interval.")
        });
        return crate::console::flags_page(&admin, &headers, StatusCode::OK, notice, None);
    }
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > 100 {
        return Problem::invalid("prefix", "at most 100 characters").into_response();
    }
    no_store(axum::Json(admin.sources.flags.report_under(&prefix)).into_response())
}

fn unknown(key: &str) -> Response {
    Problem::not_found().detail(format!("no flag `{key}`")).into_response()
}

pub(crate) async fn one(State(admin): State<Admin>, Path(key): Path<String>) -> Response {
    let report = admin.sources.flags.report_under(&key);
    match report.flags.into_iter().find(|f| f.key == key) {
        Some(flag) => no_store(axum::Json(flag).into_response()),
        None => unknown(&key),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    flag: FlagDef,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    reason: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Problem>> {
    if body.len() > MAX_BODY {
        return Err(Box::new(
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
                .detail(format!("a flag change is at most {MAX_BODY} bytes")),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Box::new(Problem::bad_request(format!("not a valid body: {e}"))))
}

/// Why `reason` (trimmed) is not one a change can be recorded with, if it is not.
pub(crate) fn reason_error(reason: &str) -> Option<&'static str> {
    if reason.is_empty() || reason.len() > keel_features::store::MAX_TEXT {
        Some("say why, in 1 to 255 characters: it is kept in the flag's history and the audit log")
    } else if reason.chars().any(char::is_control) {
        Some("no control characters")
    } else {
        None
    }
}

fn check_reason(reason: &str) -> Result<(), Box<Problem>> {
    match reason_error(reason.trim()) {
        Some(why) => Err(Box::new(Problem::invalid("reason", why))),
        None => Ok(()),
    }
}

fn failed(e: OverrideError) -> Response {
    match e {
        OverrideError::Invalid(problems) => {
            let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-flag", "Invalid flag")
                .detail("the flag was not changed");
            for problem in problems {
                p = p.field(problem.path, problem.message);
            }
            p.into_response()
        }
        OverrideError::Store(e) => {
            tracing::warn!(error = %e, "flag override not stored");
            Problem::unavailable("the flag store is unavailable; nothing changed", 1).into_response()
        }
        other => Problem::internal_error("flag override", other).into_response(),
    }
}

pub(crate) async fn put(State(admin): State<Admin>, Path(key): Path<String>, body: axum::body::Bytes) -> Response {
    let req: Put = match parse(&body) {
        Ok(r) => r,
        Err(p) => return (*p).into_response(),
    };
    if let Err(p) = check_reason(&req.reason) {
        return (*p).into_response();
    }
    let flags = &admin.sources.flags;
    match flags.set_override(&key, req.flag, ACTOR, req.reason.trim()).await {
        Err(e) => failed(e),
        Ok(change) => {
            if let Some(c) = &change {
                audit(
                    &admin,
                    ACTOR,
                    "flags.override",
                    &key,
                    json!({"before": c.before, "after": c.after, "reason": c.reason, "change": c.id}),
                )
                .await;
            }
            one(State(admin), Path(key)).await
        }
    }
}

pub(crate) async fn delete(State(admin): State<Admin>, Path(key): Path<String>, body: axum::body::Bytes) -> Response {
    let req: Delete = match parse(&body) {
        Ok(r) => r,
        Err(p) => return (*p).into_response(),
    };
    if let Err(p) = check_reason(&req.reason) {
        return (*p).into_response();
    }
    match admin.sources.flags.remove_override(&key, ACTOR, req.reason.trim()).await {
        Err(e) => failed(e),
        Ok(None) => Problem::not_found().detail(format!("`{key}` has no override")).into_response(),
        Ok(Some(c)) => {
            audit(
                &admin,
                ACTOR,
                "flags.override_remove",
                &key,
                json!({"before": c.before, "reason": c.reason, "change": c.id}),
            )
            .await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// Records a change in the service's audit log, when it keeps one. The change is already made
/// and in the flag's history: a failed audit write is logged, not undone.
pub(crate) async fn audit(admin: &Admin, actor: &str, action: &str, key: &str, details: serde_json::Value) {
    crate::console::record(admin, actor, action, &format!("flag:{key}"), details).await;
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryQuery {
    limit: Option<u32>,
}

pub(crate) async fn history(
    State(admin): State<Admin>,
    Path(key): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, keel_features::MAX_HISTORY);
    match admin.sources.flags.history(Some(&key), limit).await {
        Ok(changes) => {
            let changes: Vec<_> = changes
                .into_iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "key": c.key,
                        "before": c.before,
                        "after": c.after,
                        "actor": c.actor,
                        "reason": c.reason,
                        "at": keel_features::rfc3339_ms(c.at_ms),
                    })
                })
                .collect();
            no_store(axum::Json(json!({"key": key, "changes": changes})).into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, "flag history unavailable");
            Problem::unavailable("the flag store is unavailable", 1).into_response()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Evaluate {
    user: Option<String>,
    environment: Option<String>,
    version: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

pub(crate) async fn evaluate(State(admin): State<Admin>, Path(key): Path<String>, body: axum::body::Bytes) -> Response {
    let req: Evaluate = if body.is_empty() {
        Evaluate::default()
    } else {
        match parse(&body) {
            Ok(r) => r,
            Err(p) => return (*p).into_response(),
        }
    };
    let mut ctx = EvalContext::new();
    if let Some(u) = req.user {
        ctx = ctx.user(u);
    }
    if let Some(e) = req.environment {
        ctx = ctx.environment(e);
    }
    if let Some(v) = req.version {
        ctx = ctx.version(v);
    }
    for (k, v) in req.attributes {
        ctx = ctx.attribute(k, v);
    }
    match admin.sources.flags.explain(&key, &ctx) {
        Some((on, source)) => no_store(axum::Json(json!({"key": key, "on": on, "source": source})).into_response()),
        None => unknown(&key),
    }
}
