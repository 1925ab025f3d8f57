//! The feed tabs beside the upcoming list (`/`): `/feed/latest` (the events most recently published that
//! have not ended, 20 a page), `/feed/trending` (`GET /api/v1/events/trending`) and, signed in,
//! `/feed/for-you` (the gateway's for-you composition, `crate::feed`).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use cityevents_api::gateway::{EventFeed, EventPage, ListedEvent};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use super::call::Failure;
use super::events::{Card, seats_line};
use super::pages::{self, Layout, Page, PageResult, render};
use crate::routes::Upstream;

/// Events a feed page shows.
const PAGE_SIZE: u32 = 20;

#[derive(Template)]
#[template(path = "web/feed.html")]
struct FeedPage {
    layout: Layout,
    heading: &'static str,
    /// The tab's name in `web/tabs.html`.
    tab: &'static str,
    /// What the feed is made of.
    explain: &'static str,
    /// The heading when it is empty.
    empty: &'static str,
    cards: Vec<Card>,
    next: Option<String>,
}

/// `?cursor=` of the latest feed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LatestQuery {
    #[serde(default)]
    cursor: Option<String>,
}

fn cards(page: &Page, items: &[ListedEvent]) -> Vec<Card> {
    items
        .iter()
        .map(|item| {
            let (seats, full) = seats_line(&item.seats);
            Card::new(page, &item.event, &seats, full)
        })
        .collect()
}

/// `value`'s items completed with seats, read as `T`.
async fn completed<T: serde::de::DeserializeOwned>(site: &Site, mut value: Value) -> Option<T> {
    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
        crate::compose::seats(&site.gw, items).await;
    }
    serde_json::from_value(value).map_err(|e| tracing::warn!(error = %e, "a feed was unreadable")).ok()
}

/// Feed page `tab` with `cards`.
async fn show(site: &Site, page: &Page, tab: &'static str, cards: Vec<Card>, next: Option<String>) -> PageResult {
    let (heading, explain, empty) = match tab {
        "latest" => ("Latest events", "Newest first: events as they are published.", "Nothing new yet"),
        "trending" => {
            ("Trending", "What people are looking at and joining today and yesterday.", "Nothing is trending yet")
        }
        _ => (
            "For you",
            "From organizers you follow, in your home city, and in the categories of events you joined.",
            "Nothing for you yet: follow organizers, join events or set your home city",
        ),
    };
    let t = FeedPage { layout: page.layout(site, heading).await, heading, tab, explain, empty, cards, next };
    Ok(render(StatusCode::OK, &t))
}

/// `GET /feed/latest`.
pub(crate) async fn latest(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<LatestQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let cursor = query.map(|Query(q)| q.cursor).unwrap_or_default().filter(|c| !c.is_empty());
    let mut path = format!("/api/v1/events?sort=-published_at&exclude_expired=true&limit={PAGE_SIZE}");
    if let Some(c) = &cursor {
        let c: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
        path.push_str(&format!("&cursor={c}"));
    }
    let answer = match site.get::<Value>(Upstream::Events, &path, page.token(), &page.address).await {
        Ok(a) => a,
        Err(f) => return Ok(pages::failed(&page, &f, "/feed/latest")),
    };
    let Some(list) = completed::<EventPage>(&site, answer).await else {
        return Ok(pages::failed(&page, &Failure::unreadable(Upstream::Events), "/feed/latest"));
    };
    let next = list.next_cursor.map(|c| {
        let c: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
        format!("/feed/latest?cursor={c}")
    });
    show(&site, &page, "latest", cards(&page, &list.items), next).await
}

/// `GET /feed/trending`.
pub(crate) async fn trending(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let path = format!("/api/v1/events/trending?limit={PAGE_SIZE}");
    let answer = match site.get::<Value>(Upstream::Events, &path, None, &page.address).await {
        Ok(a) => a,
        Err(f) => return Ok(pages::failed(&page, &f, "/feed/trending")),
    };
    let Some(list) = completed::<EventFeed>(&site, answer).await else {
        return Ok(pages::failed(&page, &Failure::unreadable(Upstream::Events), "/feed/trending"));
    };
    show(&site, &page, "trending", cards(&page, &list.items), None).await
}

/// `GET /feed/for-you`: signed in only.
pub(crate) async fn for_you(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed("/feed/for-you")?;
    let (Some(user), Ok(authorization)) = (page.viewer.user(), HeaderValue::from_str(&format!("Bearer {token}")))
    else {
        return Ok(pages::failed(&page, &Failure::unreadable(Upstream::Events), "/feed/for-you"));
    };
    let answer = match crate::feed::for_you(&site.gw, user.id, &authorization, PAGE_SIZE).await {
        Ok(a) => a,
        Err(Ok(answer)) => return Ok(pages::failed(&page, &Failure::from_answer(Upstream::Events, &answer), "/")),
        Err(Err(e)) => return Ok(pages::failed(&page, &Failure::from_error(Upstream::Events, e), "/")),
    };
    let Ok(list) = serde_json::from_value::<EventFeed>(answer) else {
        return Ok(pages::failed(&page, &Failure::unreadable(Upstream::Events), "/feed/for-you"));
    };
    show(&site, &page, "for-you", cards(&page, &list.items), None).await
}
