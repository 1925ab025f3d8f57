//! Reports to the moderators: members report an event or a person (`GET`/`POST /report`; a
//! person auth does not know is a 404, see `crate::reports`), and moderators work through the
//! queue (`GET /moderation/reports`), acting on a target in one place: dismiss; unpublish or
//! cancel an event; take down a person's picture; ban the account (of a reported person, or of a
//! reported event's organizer). Cancel and ban, which cannot be undone from the queue, ask for a
//! confirmation first; every action needs a reason, kept in the audit log. The action itself is
//! the events' or accounts' own route; then the target's reports are resolved at the events
//! service, which tells each reporter.
//!
//! An action reads the target from the queue again (the events service's), never from the form:
//! the account a ban bans is the reported person or the reported event's organizer as the queue
//! says, and a target that is not in the queue, or is about the moderator (their account, their
//! event), is refused before anything is done.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect};
use cityevents_api::reports::{Kind, Queue, Reason};
use http::{Method, StatusCode};
use keel::http::extract::{Path, Query};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::Site;
use super::account::{Errors, status_of};
use super::call::Failure;
use super::pages::{self, ConfirmPage, Layout, Page, PageResult, render};
use crate::routes::Upstream;

const QUEUE: &str = "/moderation/reports";

/// What is reported, as the form names it.
fn kind_of(s: &str) -> Option<Kind> {
    match s {
        "event" => Some(Kind::Event),
        "user" => Some(Kind::User),
        _ => None,
    }
}

/// Where a reported target's page is.
fn page_of(kind: Kind, id: Uuid) -> String {
    match kind {
        Kind::Event => format!("/events/{id}"),
        Kind::User => format!("/organizers/{id}"),
    }
}

/// A reported target's name: the event's title, the person's display name.
async fn name_of(site: &Site, page: &Page, kind: Kind, id: Uuid) -> Option<String> {
    match kind {
        Kind::Event => {
            let e = site
                .get::<serde_json::Value>(
                    Upstream::Events,
                    &format!("/api/v1/events/{id}"),
                    page.token(),
                    &page.address,
                )
                .await;
            e.ok().and_then(|v| v.get("title").and_then(|t| t.as_str()).map(str::to_owned))
        }
        Kind::User => {
            let p = site
                .get::<cityevents_api::auth::Profile>(
                    Upstream::Auth,
                    &format!("/api/v1/profiles/{id}"),
                    None,
                    &page.address,
                )
                .await;
            p.ok().map(|p| p.name)
        }
    }
}

#[derive(Template)]
#[template(path = "web/report.html")]
struct ReportPage {
    layout: Layout,
    kind: &'static str,
    id: Uuid,
    /// What is reported, as people read it.
    subject: String,
    reasons: Vec<(&'static str, &'static str)>,
    chosen: String,
    details: String,
    errors: Errors,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReportQuery {
    #[serde(default)]
    kind: String,
    id: Option<Uuid>,
}

fn reasons() -> Vec<(&'static str, &'static str)> {
    Reason::ALL.iter().map(|r| (r.as_str(), r.label())).collect()
}

/// `GET /report?kind=event|user&id=`.
pub(crate) async fn form(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<ReportQuery>, keel::http::Problem>,
) -> PageResult {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let (Some(kind), Some(id)) = (kind_of(&q.kind), q.id) else { return Ok(pages::not_found(&page)) };
    page.signed(&format!("/report?kind={}&id={id}", kind.as_str()))?;
    let Some(subject) = name_of(&site, &page, kind, id).await else { return Ok(pages::not_found(&page)) };
    let t = ReportPage {
        layout: page.layout(&site, "Report to the moderators").await,
        kind: kind.as_str(),
        id,
        subject,
        reasons: reasons(),
        chosen: String::new(),
        details: String::new(),
        errors: Errors::default(),
    };
    Ok(render(StatusCode::OK, &t))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReportForm {
    #[serde(default)]
    kind: String,
    id: Option<Uuid>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    details: String,
}

/// `POST /report`.
pub(crate) async fn send(State(site): State<Arc<Site>>, page: Page, Form(f): Form<ReportForm>) -> PageResult {
    let (Some(kind), Some(id)) = (kind_of(&f.kind), f.id) else { return Ok(pages::not_found(&page)) };
    let back = page_of(kind, id);
    let token = page.signed(&back)?;
    // The events service cannot tell whether a person exists; auth can (as for the API route).
    if kind == Kind::User {
        let profile = format!("/api/v1/profiles/{id}");
        match site.send(Upstream::Auth, Method::GET, &profile, None, None, &page.address, &[]).await {
            Ok(_) => {}
            Err(f) if f.status == StatusCode::NOT_FOUND => return Ok(pages::not_found(&page)),
            Err(f) => return Ok(pages::failed(&page, &f, &back)),
        }
    }
    let mut body = json!({ "kind": kind.as_str(), "target_id": id, "reason": f.reason });
    if !f.details.trim().is_empty() {
        body["details"] = json!(f.details.trim());
    }
    let refused = match site
        .send(Upstream::Events, Method::POST, "/api/v1/reports", Some(token), Some(&body), &page.address, &[])
        .await
    {
        Ok(_) => return Ok(Redirect::to(&format!("{back}?notice=reported")).into_response()),
        Err(f) => f,
    };
    let mut errors = Errors::of(&refused);
    if Reason::parse(&f.reason).is_none() {
        errors.fields.insert("reason".into(), "Choose what is wrong.".into());
    }
    let subject = name_of(&site, &page, kind, id).await.unwrap_or_default();
    let t = ReportPage {
        layout: page.layout(&site, "Report to the moderators").await,
        kind: kind.as_str(),
        id,
        subject,
        reasons: reasons(),
        chosen: f.reason,
        details: f.details,
        errors,
    };
    Ok(render(status_of(&refused), &t))
}

/// One report as the queue shows it.
struct Line {
    reason: &'static str,
    details: String,
    when: String,
    datetime: String,
}

/// One reported target.
struct Item {
    kind: &'static str,
    id: Uuid,
    href: String,
    name: String,
    open: u64,
    since: String,
    /// An event's status, when and where; empty for a person.
    context: String,
    /// Whether there is an account to ban: the person, or the event's organizer.
    bannable: bool,
    /// Whether it is an event that can still be called off.
    live_event: bool,
    /// Whether it is about the viewer (their account, their event): another moderator's to act on.
    mine: bool,
    lines: Vec<Line>,
}

#[derive(Template)]
#[template(path = "web/reports.html")]
struct QueuePage {
    layout: Layout,
    items: Vec<Item>,
}

/// `GET /moderation/reports`.
pub(crate) async fn queue(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(QUEUE)?;
    let queue: Queue = match site.get(Upstream::Events, "/api/v1/moderation/reports", Some(token), &page.address).await
    {
        Ok(q) => q,
        Err(f) => return Ok(pages::failed(&page, &f, QUEUE)),
    };
    let me = page.viewer.user().map(|u| u.id);
    let mut items = Vec::new();
    for i in queue.items {
        let (name, context, account, live_event) = match (&i.event, i.kind) {
            (Some(e), _) => {
                let when = page.when(e.starts_at, "UTC");
                (
                    e.title.clone(),
                    format!("{} · {} · {when}", e.status, e.city),
                    Some(e.organizer_id),
                    e.status != "canceled",
                )
            }
            (None, Kind::Event) => ("An event that no longer exists".to_owned(), String::new(), None, false),
            (None, Kind::User) => {
                let name =
                    name_of(&site, &page, Kind::User, i.target_id).await.unwrap_or_else(|| "A person".to_owned());
                (name, String::new(), Some(i.target_id), false)
            }
        };
        let lines = i
            .reports
            .iter()
            .map(|r| Line {
                reason: r.reason.label(),
                details: r.details.clone().unwrap_or_default(),
                when: page.when(r.created_at, "UTC"),
                datetime: pages::machine_time(r.created_at),
            })
            .collect();
        items.push(Item {
            kind: i.kind.as_str(),
            id: i.target_id,
            href: page_of(i.kind, i.target_id),
            name,
            open: i.open,
            since: page.when(i.first_reported_at, "UTC"),
            context,
            bannable: account.is_some(),
            live_event,
            mine: account.is_some() && account == me,
            lines,
        });
    }
    let t = QueuePage { layout: page.layout(&site, "Reports").await, items };
    Ok(render(StatusCode::OK, &t))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    confirmed: String,
}

/// `POST /moderation/reports/{kind}/{id}`: `dismiss`, `unpublish`, `cancel`, `remove_picture`, `ban`.
pub(crate) async fn act(
    State(site): State<Arc<Site>>,
    page: Page,
    path: Result<Path<(String, Uuid)>, keel::http::Problem>,
    Form(form): Form<ActForm>,
) -> PageResult {
    let token = page.signed(QUEUE)?;
    let Ok(Path((kind, id))) = path else { return Ok(pages::not_found(&page)) };
    let Some(kind) = kind_of(&kind) else { return Ok(pages::not_found(&page)) };
    let note = form.note.trim().to_owned();
    if note.is_empty() {
        return Ok(Redirect::to(&format!("{QUEUE}?notice=note_required")).into_response());
    }
    // The target as the queue has it, whatever the form says.
    let queue: Queue = match site.get(Upstream::Events, "/api/v1/moderation/reports", Some(token), &page.address).await
    {
        Ok(q) => q,
        Err(f) => return Ok(pages::failed(&page, &f, QUEUE)),
    };
    let Some(item) = queue.items.into_iter().find(|i| i.kind == kind && i.target_id == id) else {
        // Resolved meanwhile (by another moderator, or a second click).
        return Ok(Redirect::to(&format!("{QUEUE}?notice=reports_closed")).into_response());
    };
    // Whose account a ban bans: the person, or the event's organizer (none for an event that
    // no longer exists).
    let account = match kind {
        Kind::User => Some(id),
        Kind::Event => item.event.as_ref().map(|e| e.organizer_id),
    };
    if account.is_some() && account == page.viewer.user().map(|u| u.id) {
        let why = "These reports are about you or your own event: another moderator resolves them.";
        return Ok(pages::failed(&page, &Failure::forbidden(Upstream::Events, why), QUEUE));
    }
    let who = ConfirmPage::who(&form.name, "this");
    let lasting = matches!(form.action.as_str(), "cancel" | "ban");
    if lasting && form.confirmed != "yes" {
        let (heading, lines, confirm) = if form.action == "cancel" {
            (
                format!("Cancel {who}?"),
                vec![
                    "Everyone who joined is told, with the reason below. A canceled event cannot be published again."
                        .to_owned(),
                ],
                "Yes, cancel the event",
            )
        } else {
            (
                "Ban the account?".to_owned(),
                vec![
                    "The account is logged out everywhere at once and cannot log in until the ban is lifted."
                        .to_owned(),
                    "Its events are hidden from everyone.".to_owned(),
                ],
                "Yes, ban the account",
            )
        };
        let fields =
            vec![("action", form.action.clone()), ("note", note.clone()), ("name", form.name.trim().to_owned())];
        let t = ConfirmPage {
            layout: page.layout(&site, "Are you sure?").await,
            heading,
            lines,
            reason: note,
            action: format!("{QUEUE}/{}/{id}", kind.as_str()),
            fields,
            confirm,
            back: QUEUE.to_owned(),
        };
        return Ok(render(StatusCode::OK, &t));
    }
    let reason = json!({ "reason": note });
    let (done, outcome) = match (form.action.as_str(), kind) {
        ("dismiss", _) => (Ok(()), "dismissed"),
        ("unpublish", Kind::Event) => (event_call(&site, &page, token, id, "unpublish", &reason).await, "unpublished"),
        ("cancel", Kind::Event) => (event_call(&site, &page, token, id, "cancel", &reason).await, "canceled"),
        ("remove_picture", Kind::User) => {
            let path = format!("/api/v1/admin/users/{id}/avatar/remove");
            let done =
                site.send(Upstream::Auth, Method::POST, &path, Some(token), Some(&reason), &page.address, &[]).await;
            (done.map(|_| ()), "picture_removed")
        }
        ("ban", _) => {
            let Some(account) = account else { return Ok(pages::not_found(&page)) };
            // Banned already (by another moderator, or before), auth answers the ban there is:
            // the reports are still to close.
            let path = format!("/api/v1/admin/users/{account}/ban");
            let done =
                site.send(Upstream::Auth, Method::POST, &path, Some(token), Some(&reason), &page.address, &[]).await;
            (done.map(|_| ()), "banned")
        }
        _ => return Ok(pages::not_found(&page)),
    };
    if let Err(f) = done {
        return Ok(pages::failed(&page, &f, QUEUE));
    }
    let body = json!({ "kind": kind.as_str(), "target_id": id, "outcome": outcome, "note": note });
    let path = "/api/v1/moderation/reports/resolve";
    Ok(match site.send(Upstream::Events, Method::POST, path, Some(token), Some(&body), &page.address, &[]).await {
        Ok(_) => Redirect::to(&format!("{QUEUE}?notice=report_resolved")).into_response(),
        Err(f) => pages::failed(&page, &f, QUEUE),
    })
}

/// A moderator's `unpublish` or `cancel` of event `id`, with its reason.
async fn event_call(
    site: &Site,
    page: &Page,
    token: &str,
    id: Uuid,
    action: &str,
    reason: &serde_json::Value,
) -> Result<(), Failure> {
    let path = format!("/api/v1/events/{id}/{action}");
    site.send(Upstream::Events, Method::POST, &path, Some(token), Some(reason), &page.address, &[]).await.map(|_| ())
}
