//! The operator console's actions: changes made from a signed-in browser.
//!
//! A browser has the session cookie, not the bearer token, so a change it sends is accepted only
//! with a CSRF token bound to that session (HMAC of the session under the admin token, in every
//! form of the page), a ticked confirmation, and a reason. The cookie is `SameSite=Strict` too.
//! Each change is recorded like one made with the token: in the flag's history and the audit
//! log, with the session as the actor (`operator:<session id>`).
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /admin/flags` (a browser) | the flags page: each flag, its source and evaluations, and forms to act |
//! | `POST /admin/console/flags/{key}` | `action` = `on`, `off` (the kill switch, on the definition in effect), `save` (`definition`, JSON) or `reset` (remove the override); `reason`, `confirm=yes`, `csrf` |

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;

use keel_features::{FlagDef, FlagReport, FlagsReport, OverrideError, Source};

use crate::audit::AuditEntry;
use crate::routes::Admin;
use crate::session;

#[derive(Template)]
#[template(path = "admin/flags.html")]
struct FlagsPage<'a> {
    stylesheet: &'a str,
    service: &'a str,
    report: &'a FlagsReport,
    csrf: Option<String>,
    audit: bool,
    notice: Option<String>,
    error: Option<String>,
}

impl FlagsPage<'_> {
    fn source(&self, f: &FlagReport) -> &'static str {
        match f.source {
            Source::Default => "built-in default",
            Source::File => "flags file",
            Source::Override => "runtime override",
            Source::Runtime => "runtime only",
        }
    }

    fn json(&self, f: &FlagReport) -> String {
        serde_json::to_string(&f.def).unwrap_or_default()
    }
}

/// The CSRF token a console page puts in its forms: `None` (the page is read only) without a
/// live browser session.
pub(crate) fn page_csrf(admin: &Admin, headers: &HeaderMap) -> Option<String> {
    admin.token().zip(session::from_headers(headers)).and_then(|(token, value)| session::csrf(token, value))
}

/// The flags page for a browser (`GET /admin/flags` with `Accept: text/html`).
pub(crate) fn flags_page(
    admin: &Admin,
    headers: &HeaderMap,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let report = admin.sources.flags.report();
    let csrf = page_csrf(admin, headers);
    let page = FlagsPage {
        stylesheet: crate::status::STYLESHEET,
        service: &admin.sources.identity.name,
        report: &report,
        csrf,
        audit: admin.audit.is_some(),
        notice,
        error,
    };
    let mut r = crate::routes::page(status, page.render());
    r.headers_mut().insert(http::header::VARY, http::HeaderValue::from_static("accept"));
    r
}

#[derive(Debug, Deserialize)]
pub(crate) struct FlagForm {
    #[serde(flatten)]
    signed: Signed,
    #[serde(default)]
    action: String,
    #[serde(default)]
    definition: String,
}

/// What a page says when a form's CSRF token does not match the session.
pub(crate) const EXPIRED: &str = "The form expired: reload the page and try again.";

/// Why a console form was not acted on.
pub(crate) enum Refusal {
    /// Admin is closed (no token): 401.
    Closed,
    /// No live session: to the sign-in form.
    SignIn,
    /// The CSRF token does not match the session: 403.
    Expired,
    /// The form is incomplete (confirmation, reason): 422 with this message.
    Invalid(&'static str),
}

impl Refusal {
    /// The answer, `page` rendering the console page with an error for the form's refusals.
    pub(crate) fn respond(self, page: impl FnOnce(StatusCode, String) -> Response) -> Response {
        match self {
            Self::Closed => keel_http::problem::Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
                .detail("admin endpoints are disabled")
                .into_response(),
            Self::SignIn => Redirect::to("/admin/login").into_response(),
            Self::Expired => page(StatusCode::FORBIDDEN, EXPIRED.into()),
            Self::Invalid(why) => page(StatusCode::UNPROCESSABLE_ENTITY, why.into()),
        }
    }
}

/// Who acts from the console, once the form's checks pass.
pub(crate) struct Operator {
    /// `operator:<session id>`: the session's id, never its secret parts.
    pub(crate) who: String,
    /// Why, trimmed.
    pub(crate) reason: String,
}

/// What every console form carries besides its action's fields.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Signed {
    #[serde(default)]
    pub(crate) csrf: String,
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) confirm: String,
}

/// The checks of every console form: a live session, its CSRF token, the ticked confirmation
/// and a reason.
pub(crate) fn operator(admin: &Admin, headers: &HeaderMap, form: &Signed) -> Result<Operator, Refusal> {
    let token = admin.token().ok_or(Refusal::Closed)?;
    let session = session::from_headers(headers).and_then(|v| Some((session::id(token, v)?, session::csrf(token, v)?)));
    let (id, want) = session.ok_or(Refusal::SignIn)?;
    if want.is_empty() || !bool::from(want.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return Err(Refusal::Expired);
    }
    if form.confirm != "yes" {
        return Err(Refusal::Invalid("tick the confirmation to apply the change"));
    }
    let reason = form.reason.trim();
    if let Some(why) = crate::flags::reason_error(reason) {
        return Err(Refusal::Invalid(why));
    }
    Ok(Operator { who: format!("operator:{id}"), reason: reason.to_owned() })
}

/// Changes kept in memory per service for the console page ([`Journal`]).
pub(crate) const JOURNAL: usize = 50;

/// The operator changes made through this listener since the process started, newest first:
/// shown on the console page whether or not the service keeps an audit log (a stateless
/// gateway keeps none); the audit log, when there is one, is the durable record.
#[derive(Clone, Default)]
pub(crate) struct Journal(Arc<Mutex<VecDeque<JournalEntry>>>);

#[derive(Clone, Debug)]
pub(crate) struct JournalEntry {
    pub(crate) at: String,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) details: String,
}

impl Journal {
    fn push(&self, entry: JournalEntry) {
        let mut j = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        j.push_front(entry);
        j.truncate(JOURNAL);
    }

    /// The newest `n` entries.
    pub(crate) fn recent(&self, n: usize) -> Vec<JournalEntry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().take(n).cloned().collect()
    }
}

/// Records a change: a log line (`operator change`), the console's journal, and the service's
/// audit log when it keeps one. The change is already made: a failed audit write is logged, not
/// undone.
pub(crate) async fn record(admin: &Admin, actor: &str, action: &str, target: &str, details: serde_json::Value) {
    tracing::warn!(%actor, %action, %target, details = %details, "operator change");
    admin.journal.push(JournalEntry {
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        details: details.to_string(),
    });
    let Some(log) = &admin.audit else { return };
    let entry = AuditEntry { actor: actor.to_owned(), action: action.to_owned(), target: target.to_owned(), details };
    if let Err(e) = log.record(entry).await {
        tracing::error!(error = %e, %action, %target, "operator change not written to the audit log");
    }
}

/// `POST /admin/console/flags/{key}`.
pub(crate) async fn flag_action(
    State(admin): State<Admin>,
    Path(key): Path<String>,
    headers: HeaderMap,
    form: axum::extract::Form<FlagForm>,
) -> Response {
    let form = form.0;
    let op = match operator(&admin, &headers, &form.signed) {
        Ok(op) => op,
        Err(r) => {
            return r.respond(|status, why| {
                let why = if status == StatusCode::FORBIDDEN { why } else { format!("{key}: {why}") };
                flags_page(&admin, &headers, status, None, Some(why))
            });
        }
    };
    let refuse =
        |why: &str| flags_page(&admin, &headers, StatusCode::UNPROCESSABLE_ENTITY, None, Some(format!("{key}: {why}")));
    let (who, reason) = (op.who, op.reason.as_str());
    let flags = &admin.sources.flags;
    let current = flags.report_under(&key).flags.into_iter().find(|f| f.key == key);
    let result = match form.action.as_str() {
        "on" | "off" => {
            let Some(current) = current else { return refuse("no such flag") };
            let def = FlagDef { enabled: form.action == "on", ..current.def };
            flags.set_override(&key, def, &who, reason).await
        }
        "save" => match serde_json::from_str::<FlagDef>(&form.definition) {
            Ok(def) => flags.set_override(&key, def, &who, reason).await,
            Err(e) => return refuse(&format!("the definition is not valid JSON for a flag: {e}")),
        },
        "reset" => flags.remove_override(&key, &who, reason).await,
        _ => return refuse("unknown action"),
    };
    match result {
        Ok(Some(change)) => {
            let action = if change.after.is_some() { "flags.override" } else { "flags.override_remove" };
            let details =
                json!({"before": change.before, "after": change.after, "reason": change.reason, "change": change.id});
            crate::flags::audit(&admin, &who, action, &key, details).await;
            Redirect::to(&format!("/admin/flags?changed={}", urlencode(&key))).into_response()
        }
        Ok(None) => refuse("it has no override to remove"),
        Err(OverrideError::Invalid(problems)) => {
            refuse(&problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
        Err(e) => {
            tracing::warn!(error = %e, flag = %key, "console flag change failed");
            flags_page(
                &admin,
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                Some(format!("{key}: the flag store is unavailable; nothing changed")),
            )
        }
    }
}

/// Flag keys are `A-Z a-z 0-9 _ - .`: nothing to escape, but never trust a path.
fn urlencode(key: &str) -> String {
    key.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).collect()
}
