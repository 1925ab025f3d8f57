//! The site's calendar pages: an event's `.ics` download (the signed-in viewer's token passed on,
//! so an organizer gets their draft's) and the personal calendar feed page, where a person makes,
//! replaces or revokes the secret address their calendar application subscribes to.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use cityevents_api::joins::{CalendarFeed, NewCalendarFeed};
use http::{HeaderValue, Method, StatusCode};
use serde_json::json;

use super::Site;
use super::pages::{self, Layout, Page, PageResult, PathId, render};
use crate::routes::Upstream;

/// `GET /events/{id}/calendar.ics`.
pub(crate) async fn event_file(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let id = page.event_id(id)?;
    let authorization = page.token().and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
    let origin = site.gw.origin.of_host(page.host.as_ref());
    let resp = crate::calendar::event_answer(&site.gw, &id, authorization, &origin).await;
    if resp.status() == StatusCode::OK {
        return Ok(resp);
    }
    // Not the file: the event page says why, as a page.
    Ok(Redirect::to(&format!("/events/{id}")).into_response())
}

const PAGE: &str = "/account/calendar";

#[derive(Template)]
#[template(path = "web/calendar.html")]
struct FeedPage {
    layout: Layout,
    /// When the address in use was made (`None`: no feed).
    since: Option<String>,
    /// A new address, shown this once.
    fresh: Option<Fresh>,
}

struct Fresh {
    https: String,
    webcal: String,
    google: String,
}

/// `GET /account/calendar`.
pub(crate) async fn show(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(PAGE)?;
    let feed: CalendarFeed =
        match site.get(Upstream::Joins, "/api/v1/me/calendar-feed", Some(token), &page.address).await {
            Ok(f) => f,
            Err(f) => return Ok(pages::failed(&page, &f, PAGE)),
        };
    let since = feed
        .created_at
        .filter(|_| feed.active)
        .map(|t| pages::when(t, &page.zone.clone().unwrap_or_else(cityevents_common::zone::Zone::utc)));
    let t = FeedPage { layout: page.layout(&site, "Your calendar feed").await, since, fresh: None };
    Ok(render(StatusCode::OK, &t))
}

/// `POST /account/calendar`: a new address (the page shows it once), replacing the old.
pub(crate) async fn create(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(PAGE)?;
    let empty = json!({});
    let path = "/api/v1/me/calendar-feed";
    let made = match site.send(Upstream::Joins, Method::POST, path, Some(token), Some(&empty), &page.address, &[]).await
    {
        Ok(answer) => match answer.json::<NewCalendarFeed>() {
            Ok(made) => made,
            Err(_) => return Ok(pages::failed(&page, &super::call::Failure::unreadable(Upstream::Joins), PAGE)),
        },
        Err(f) => return Ok(pages::failed(&page, &f, PAGE)),
    };
    let origin = site.gw.origin.of_host(page.host.as_ref());
    let https = format!("{origin}{}", made.path);
    let webcal = format!("webcal://{}", https.split_once("://").map_or(https.as_str(), |(_, rest)| rest));
    let google = {
        let cid: String = form_urlencoded::byte_serialize(webcal.as_bytes()).collect();
        format!("https://calendar.google.com/calendar/render?cid={cid}")
    };
    let since =
        Some(pages::when(made.created_at, &page.zone.clone().unwrap_or_else(cityevents_common::zone::Zone::utc)));
    let mut layout = page.layout(&site, "Your calendar feed").await;
    layout.notice = Some("Your new calendar address is ready. Any address you had before no longer works.");
    let t = FeedPage { layout, since, fresh: Some(Fresh { https, webcal, google }) };
    // The secret is on this page: never stored by the browser or a proxy (pages are no-store).
    Ok(render(StatusCode::OK, &t))
}

/// `POST /account/calendar/revoke`.
pub(crate) async fn revoke(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(PAGE)?;
    let path = "/api/v1/me/calendar-feed";
    Ok(match site.send(Upstream::Joins, Method::DELETE, path, Some(token), None, &page.address, &[]).await {
        Ok(_) => Redirect::to("/account/calendar?notice=feed_revoked").into_response(),
        // Revoked already (another tab): what was asked for is so.
        Err(f) if f.status == StatusCode::NOT_FOUND => {
            Redirect::to("/account/calendar?notice=feed_revoked").into_response()
        }
        Err(f) => pages::failed(&page, &f, PAGE),
    })
}
