//! A signed-in person's own lists: the events they joined and their notifications.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use cityevents_api::joins::JoinPage;
use cityevents_api::notifications::NotificationPage;
use http::{Method, StatusCode};
use keel::http::extract::{Path, Query};
use serde::Deserialize;
use serde_json::json;

use super::Site;
use super::pages::{self, Layout, Page, PageResult, render};
use crate::routes::Upstream;

/// Items on one page of a list.
const PAGE_SIZE: u32 = 20;

/// `?cursor=` of a list page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Cursor {
    cursor: Option<String>,
}

impl Cursor {
    fn path(&self, base: &str) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("limit", &PAGE_SIZE.to_string());
        if let Some(c) = self.cursor.as_deref().filter(|c| !c.is_empty()) {
            s.append_pair("cursor", c);
        }
        format!("{base}?{}", s.finish())
    }
}

fn next_link(base: &str, cursor: Option<String>) -> Option<String> {
    cursor.map(|c| {
        format!("{base}?{}", form_urlencoded::Serializer::new(String::new()).append_pair("cursor", &c).finish())
    })
}

/// A joined event as the list shows it.
struct Row {
    event_id: String,
    title: String,
    when: String,
    datetime: String,
    status: &'static str,
}

#[derive(Template)]
#[template(path = "web/my_joins.html")]
struct MyJoins {
    layout: Layout,
    rows: Vec<Row>,
    next: Option<String>,
}

/// `GET /my/joins`.
pub(crate) async fn joins(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<Cursor>, keel::http::Problem>,
) -> PageResult {
    let token = page.signed("/my/joins")?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let list: JoinPage =
        match site.get(Upstream::Joins, &query.path("/api/v1/me/joins"), Some(token), &page.address).await {
            Ok(l) => l,
            Err(f) => return Ok(pages::failed(&page, &f, "/my/joins")),
        };
    let rows = list
        .items
        .iter()
        .map(|j| Row {
            event_id: j.event_id.to_string(),
            title: j.title.clone(),
            when: page.when(j.starts_at, "UTC"),
            datetime: pages::machine_time(j.starts_at),
            status: match (j.event_status.as_str(), j.status.as_str()) {
                ("canceled", _) => "Event canceled",
                (_, "confirmed") => "Going",
                (_, "waitlisted") => "On the waitlist",
                (_, "kicked") => "Removed by the organizer",
                _ => "Left",
            },
        })
        .collect();
    let t =
        MyJoins { layout: page.layout(&site, "My joins").await, rows, next: next_link("/my/joins", list.next_cursor) };
    Ok(render(StatusCode::OK, &t))
}

/// A notification as the list shows it.
struct Item {
    id: String,
    /// `None`: about no event (a report about an account).
    event_id: Option<String>,
    message: String,
    when: String,
    datetime: String,
    unread: bool,
}

#[derive(Template)]
#[template(path = "web/notifications.html")]
struct Notifications {
    layout: Layout,
    items: Vec<Item>,
    next: Option<String>,
}

/// `GET /notifications`.
pub(crate) async fn notifications(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<Cursor>, keel::http::Problem>,
) -> PageResult {
    let token = page.signed("/notifications")?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let path = query.path("/api/v1/me/notifications");
    let list: NotificationPage = match site.get(Upstream::Notifier, &path, Some(token), &page.address).await {
        Ok(l) => l,
        Err(f) => return Ok(pages::failed(&page, &f, "/notifications")),
    };
    let items = list
        .items
        .iter()
        .map(|n| Item {
            id: n.id.to_string(),
            event_id: (!n.event_id.is_nil()).then(|| n.event_id.to_string()),
            message: n.message.clone(),
            when: page.when(n.created_at, "UTC"),
            datetime: pages::machine_time(n.created_at),
            unread: n.read_at.is_none(),
        })
        .collect();
    let t = Notifications {
        layout: page.layout(&site, "Notifications").await,
        items,
        next: next_link("/notifications", list.next_cursor),
    };
    Ok(render(StatusCode::OK, &t))
}

/// `POST /notifications/{id}/read`, or `POST /notifications/read-all` (`id` is `all`).
pub(crate) async fn read(State(site): State<Arc<Site>>, page: Page, Path(id): Path<String>) -> PageResult {
    let token = page.signed("/notifications")?;
    let path = if id == "all" {
        "/api/v1/me/notifications/read-all".to_owned()
    } else {
        match uuid::Uuid::parse_str(&id) {
            Ok(id) => format!("/api/v1/me/notifications/{id}/read"),
            Err(_) => return Ok(pages::not_found(&page)),
        }
    };
    Ok(
        match site
            .send(Upstream::Notifier, Method::POST, &path, Some(token), Some(&json!({})), &page.address, &[])
            .await
        {
            Ok(_) => Redirect::to("/notifications?notice=read").into_response(),
            Err(f) => pages::failed(&page, &f, "/notifications"),
        },
    )
}
