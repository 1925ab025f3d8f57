//! Accounts as moderators and admins manage them: the admins' account list (find, change a
//! role), and banning an account or lifting its ban (moderators too, from an event's page).
//! Auth decides who may do what; these pages show its refusals as sentences.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect};
use cityevents_api::auth::{ManagedUserPage, ROLES};
use http::{Method, StatusCode};
use keel::http::extract::{Path, Query};
use serde::Deserialize;
use serde_json::json;

use super::Site;
use super::pages::{self, ConfirmPage, Layout, Page, PageResult, render};
use crate::routes::Upstream;

/// Accounts on one page of the list.
const PAGE_SIZE: u32 = 25;

const USERS: &str = "/admin/users";

/// `?q=&role=&banned=&cursor=` of the account list.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsersQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    banned: String,
    #[serde(default)]
    cursor: String,
}

impl UsersQuery {
    /// The filters as a query string (no cursor): the list a form comes back to.
    fn filters(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("q", self.q.trim()), ("role", &self.role), ("banned", &self.banned)] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.finish()
    }

    fn api_path(&self) -> String {
        let filters = self.filters();
        let mut s = form_urlencoded::Serializer::new(filters);
        s.append_pair("limit", &PAGE_SIZE.to_string());
        if !self.cursor.is_empty() {
            s.append_pair("cursor", &self.cursor);
        }
        format!("/api/v1/admin/users?{}", s.finish())
    }

    /// This list's address, for the forms on it.
    fn here(&self) -> String {
        let filters = self.filters();
        if filters.is_empty() { USERS.to_owned() } else { format!("{USERS}?{filters}") }
    }

    fn next(&self, cursor: Option<String>) -> Option<String> {
        let cursor = cursor?;
        let mut s = form_urlencoded::Serializer::new(self.filters());
        s.append_pair("cursor", &cursor);
        Some(format!("{USERS}?{}", s.finish()))
    }
}

/// An account as the list shows it.
struct Row {
    id: String,
    name: String,
    email: String,
    role: String,
    verified: bool,
    since: String,
    /// `(reason, when)` of its ban.
    ban: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "web/admin_users.html")]
struct UsersPage {
    layout: Layout,
    query: UsersQuery,
    here: String,
    rows: Vec<Row>,
    next: Option<String>,
    fields: BTreeMap<String, String>,
    roles: [&'static str; 3],
}

impl UsersPage {
    fn error(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

/// `GET /admin/users` (admins).
pub(crate) async fn users(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<UsersQuery>, keel::http::Problem>,
) -> PageResult {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let here = query.here();
    let token = page.signed(&here)?;
    let (list, fields) =
        match site.get::<ManagedUserPage>(Upstream::Auth, &query.api_path(), Some(token), &page.address).await {
            Ok(list) => (list, BTreeMap::new()),
            Err(f) if f.status == StatusCode::BAD_REQUEST && !f.fields().is_empty() => {
                (ManagedUserPage { items: Vec::new(), next_cursor: None }, f.fields())
            }
            Err(f) => return Ok(pages::failed(&page, &f, &here)),
        };
    let rows = list
        .items
        .into_iter()
        .map(|m| Row {
            id: m.user.id.to_string(),
            since: page.when(m.user.created_at, "UTC"),
            ban: m.ban.map(|b| (b.reason, page.when(b.banned_at, "UTC"))),
            name: m.user.name,
            email: m.user.email,
            role: m.user.role,
            verified: m.user.email_verified,
        })
        .collect();
    let t = UsersPage {
        layout: page.layout(&site, "Accounts").await,
        next: query.next(list.next_cursor),
        here,
        query,
        rows,
        fields,
        roles: ROLES,
    };
    Ok(render(if t.fields.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST }, &t))
}

/// A form on an account: a role, a reason, and the page to come back to.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AccountForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    reason: String,
    back: Option<String>,
    /// Whose account, as the page showed it (for the confirmation's words only).
    #[serde(default)]
    name: String,
    /// `yes`: the confirmation page's second step (ban).
    #[serde(default)]
    confirmed: String,
}

/// Where a form comes back to: `back` when it is a path of this site (see
/// [`pages::same_origin_path`]), else the list.
fn back_to(back: Option<&str>) -> String {
    back.and_then(pages::same_origin_path).unwrap_or_else(|| USERS.to_owned())
}

/// `back` (see [`back_to`]) with `notice` added.
fn back_with(back: Option<&str>, notice: &str) -> String {
    let back = back_to(back);
    let sep = if back.contains('?') { '&' } else { '?' };
    format!("{back}{sep}notice={notice}")
}

/// `POST /admin/users/{id}/{action}`: `role` and `logout` (admins), `ban` (a confirmation page
/// first), `unban`.
pub(crate) async fn act(
    State(site): State<Arc<Site>>,
    page: Page,
    path: Result<Path<(uuid::Uuid, String)>, keel::http::Problem>,
    Form(form): Form<AccountForm>,
) -> PageResult {
    let back = back_to(form.back.as_deref());
    let token = page.signed(&back)?;
    let Ok(Path((id, action))) = path else { return Ok(pages::not_found(&page)) };
    if action == "ban" && form.confirmed != "yes" && !form.reason.trim().is_empty() {
        let who = ConfirmPage::who(&form.name, "this account");
        let t = ConfirmPage {
            layout: page.layout(&site, "Are you sure?").await,
            heading: format!("Ban {who}?"),
            lines: vec![
                format!("{who} is logged out everywhere at once and cannot log in until the ban is lifted."),
                "Their events are hidden from everyone. The reason below is kept in the audit log.".to_owned(),
            ],
            reason: form.reason.trim().to_owned(),
            action: format!("/admin/users/{id}/ban"),
            fields: vec![
                ("reason", form.reason.trim().to_owned()),
                ("back", back.clone()),
                ("name", form.name.trim().to_owned()),
            ],
            confirm: "Yes, ban the account",
            back,
        };
        return Ok(render(StatusCode::OK, &t));
    }
    let (method, path, body, notice) = match action.as_str() {
        "role" => {
            (Method::PUT, format!("/api/v1/admin/users/{id}/role"), Some(json!({ "role": form.role })), "role_changed")
        }
        "ban" => (
            Method::POST,
            format!("/api/v1/admin/users/{id}/ban"),
            Some(json!({ "reason": form.reason.trim() })),
            "account_banned",
        ),
        "unban" => (Method::DELETE, format!("/api/v1/admin/users/{id}/ban"), None, "account_unbanned"),
        "logout" => (Method::POST, format!("/api/v1/admin/users/{id}/logout-all"), None, "account_signed_out"),
        _ => return Ok(pages::not_found(&page)),
    };
    Ok(match site.send(Upstream::Auth, method, &path, Some(token), body.as_ref(), &page.address, &[]).await {
        Ok(_) => Redirect::to(&back_with(form.back.as_deref(), notice)).into_response(),
        Err(f) => pages::failed(&page, &f, &back),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_keeps_its_filters_across_pages_and_forms() {
        let q = UsersQuery { q: " ann ".into(), role: "moderator".into(), banned: String::new(), cursor: "c1".into() };
        assert_eq!(q.here(), "/admin/users?q=ann&role=moderator");
        assert_eq!(q.api_path(), "/api/v1/admin/users?q=ann&role=moderator&limit=25&cursor=c1");
        assert_eq!(q.next(Some("c2".into())).as_deref(), Some("/admin/users?q=ann&role=moderator&cursor=c2"));
        assert_eq!(q.next(None), None);
        assert_eq!(UsersQuery::default().here(), "/admin/users");
    }

    #[test]
    fn forms_come_back_only_to_this_site() {
        assert_eq!(back_with(Some("/my/events/1"), "account_banned"), "/my/events/1?notice=account_banned");
        assert_eq!(back_with(Some("/admin/users?q=a"), "role_changed"), "/admin/users?q=a&notice=role_changed");
        assert_eq!(back_with(Some("https://evil.example"), "x"), "/admin/users?notice=x");
        assert_eq!(back_with(Some("/\t/evil.example"), "x"), "/admin/users?notice=x");
        assert_eq!(back_with(Some("/\u{b}"), "x"), "/admin/users?notice=x");
        assert_eq!(back_with(None, "x"), "/admin/users?notice=x");
    }
}
