//! The events list (search, filters, pages, seats) and an event's page (join, leave, waitlist).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use cityevents_api::events::{Event, EventStatus};
use cityevents_api::gateway::{EventPage, Seats};
use cityevents_api::joins::{Counts, Join};
use cityevents_common::zone::Zone;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use keel::http::extract::Query;
use serde::Deserialize;
use serde_json::Value;
use time::{Date, Duration};

use super::Site;
use super::call::Failure;
use super::pages::{self, Layout, Page, PageResult, PathId, render};
use crate::routes::Upstream;

/// Events on one page of the list.
const PAGE_SIZE: u32 = 20;

/// `GET /` query: the search form's fields and the page's cursor.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    cursor: Option<String>,
}

/// An event as a list shows it.
#[derive(Debug)]
pub(crate) struct Card {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) place: String,
    pub(crate) category: String,
    pub(crate) when: String,
    pub(crate) datetime: String,
    pub(crate) seats: String,
    pub(crate) full: bool,
}

impl Card {
    pub(crate) fn new(page: &Page, e: &Event, seats: &str, full: bool) -> Self {
        Self {
            id: e.id.to_string(),
            title: e.title.clone(),
            place: place(e),
            category: e.category.clone(),
            when: page.when(e.starts_at, &e.time_zone),
            datetime: pages::machine_time(e.starts_at),
            seats: seats.to_owned(),
            full,
        }
    }
}

/// The venue line: `venue, city` (no map).
fn place(e: &Event) -> String {
    if e.venue.trim().is_empty() { e.city.clone() } else { format!("{}, {}", e.venue, e.city) }
}

/// What the seats of a listed event say, and whether none is free.
pub(crate) fn seats_line(seats: &Seats) -> (String, bool) {
    match seats {
        Seats::Unavailable(_) => ("Seats: not known right now".into(), false),
        Seats::Known(s) => match s.free {
            None => ("Open to everyone".into(), false),
            Some(0) if s.waitlisted > 0 => (format!("Full · {} on the waitlist", s.waitlisted), true),
            Some(0) => ("Full · join the waitlist".into(), true),
            Some(1) => (format!("1 of {} seats free", s.capacity), false),
            Some(n) => (format!("{n} of {} seats free", s.capacity), false),
        },
    }
}

#[derive(Template)]
#[template(path = "web/events.html")]
struct ListPage {
    layout: Layout,
    query: ListQuery,
    cards: Vec<Card>,
    next: Option<String>,
    filtered: bool,
    errors: Vec<(&'static str, String)>,
}

impl ListPage {
    fn error(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|(f, _)| *f == field).map(|(_, m)| m.as_str())
    }
}

/// `YYYY-MM-DD` from a date field, as the instant its day starts in `zone`.
fn day_start(value: &str, zone: &Zone) -> Option<String> {
    let date = Date::parse(value.trim(), time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    day_instant(date, zone)
}

fn day_instant(date: Date, zone: &Zone) -> Option<String> {
    let micros = zone.read_local(&format!("{date}T00:00"))?;
    let t = cityevents_common::time::from_micros(micros);
    Some(pages::machine_time(t))
}

/// The events service's path for the search `query`, dates read in `zone`, and the fields
/// that could not be read.
fn list_path(query: &ListQuery, zone: &Zone) -> (String, Vec<(&'static str, String)>) {
    let mut errors = Vec::new();
    let mut upstream = form_urlencoded::Serializer::new(String::new());
    upstream.append_pair("limit", &PAGE_SIZE.to_string());
    for (name, value) in [("q", &query.q), ("city", &query.city), ("category", &query.category)] {
        if !value.trim().is_empty() {
            upstream.append_pair(name, value.trim());
        }
    }
    if query.from.trim().is_empty() {
        upstream.append_pair("exclude_expired", "true");
    } else {
        match day_start(&query.from, zone) {
            Some(t) => {
                upstream.append_pair("from", &t);
            }
            None => errors.push(("from", "Enter a date like 2030-07-15.".to_owned())),
        }
    }
    if !query.to.trim().is_empty() {
        let next_day = Date::parse(query.to.trim(), time::macros::format_description!("[year]-[month]-[day]"))
            .ok()
            .and_then(|d| d.checked_add(Duration::days(1)))
            .and_then(|d| day_instant(d, zone));
        match next_day {
            Some(t) => {
                upstream.append_pair("to", &t);
            }
            None => errors.push(("to", "Enter a date like 2030-07-15.".to_owned())),
        }
    }
    if let Some(cursor) = query.cursor.as_deref().filter(|c| !c.is_empty()) {
        upstream.append_pair("cursor", cursor);
    }
    let path = format!("/api/v1/events?{}", upstream.finish());
    (path, errors)
}

/// `GET /`: the events, searched and filtered, upcoming first.
pub(crate) async fn list(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<ListQuery>, keel::http::Problem>,
) -> PageResult {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let zone = page.zone.clone().unwrap_or_else(Zone::utc);
    let (path, mut errors) = list_path(&query, &zone);
    let listed = site.get::<Value>(Upstream::Events, &path, page.token(), &page.address).await;
    let (cards, next) = match listed {
        Ok(mut answer) => {
            if let Some(items) = answer.get_mut("items").and_then(Value::as_array_mut) {
                crate::compose::seats(&site.gw, items).await;
            }
            match serde_json::from_value::<EventPage>(answer) {
                Ok(p) => {
                    let cards = p
                        .items
                        .iter()
                        .map(|item| {
                            let (seats, full) = seats_line(&item.seats);
                            Card::new(&page, &item.event, &seats, full)
                        })
                        .collect();
                    (cards, p.next_cursor.map(|c| next_link(&query, &c)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the events list was unreadable");
                    return Ok(pages::failed(&page, &bad_answer(), "/"));
                }
            }
        }
        // The service's word on a filter goes next to the field.
        Err(f) if f.status == StatusCode::BAD_REQUEST && !f.fields().is_empty() => {
            for (field, message) in f.fields() {
                let field = match field.as_str() {
                    "q" => "q",
                    "city" => "city",
                    "category" => "category",
                    "from" => "from",
                    "to" => "to",
                    _ => "q",
                };
                errors.push((field, message));
            }
            (Vec::new(), None)
        }
        Err(f) => return Ok(pages::failed(&page, &f, "/")),
    };
    let filtered =
        [&query.q, &query.city, &query.category, &query.from, &query.to].iter().any(|v| !v.trim().is_empty());
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let t = ListPage { layout: page.layout(&site, "Events").await, query, cards, next, filtered, errors };
    Ok(render(status, &t))
}

/// The link to the page after this one, with the same search.
fn next_link(q: &ListQuery, cursor: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [("q", &q.q), ("city", &q.city), ("category", &q.category), ("from", &q.from), ("to", &q.to)] {
        if !value.trim().is_empty() {
            s.append_pair(name, value.trim());
        }
    }
    s.append_pair("cursor", cursor);
    format!("/?{}", s.finish())
}

fn bad_answer() -> Failure {
    Failure::unreadable(Upstream::Events)
}

/// The viewer's place at an event.
#[derive(Debug, Default)]
struct Place {
    /// `confirmed`, `waitlisted`, `canceled`, `kicked`, or empty when never joined.
    status: String,
    position: Option<i64>,
}

#[derive(Template)]
#[template(path = "web/event.html")]
struct EventPageView {
    layout: Layout,
    card: Card,
    event: Event,
    paragraphs: Vec<String>,
    status: &'static str,
    organizer: Option<String>,
    is_organizer: bool,
    place: Option<Place>,
    key: String,
    error: Option<String>,
}

impl EventPageView {
    fn joined(&self) -> bool {
        self.place.as_ref().is_some_and(|p| p.status == "confirmed" || p.status == "waitlisted")
    }

    fn status_is(&self, status: &str) -> bool {
        self.place.as_ref().is_some_and(|p| p.status == status)
    }

    fn open(&self) -> bool {
        self.event.status == EventStatus::Published && self.event.ends_at > time::OffsetDateTime::now_utc()
    }
}

/// `GET /events/{id}`.
pub(crate) async fn show(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let id = page.event_id(id)?;
    Ok(event_page(&site, &page, id, None).await)
}

/// The event's page, with `error` (a join or leave that failed) above its actions.
async fn event_page(site: &Site, page: &Page, id: uuid::Uuid, error: Option<(StatusCode, String)>) -> Response {
    let authorization = page.token().and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
    let back = format!("/events/{id}");
    let view = match crate::view::assemble(&site.gw, &id, authorization).await {
        Ok(view) => view,
        Err(Ok(answer)) => return pages::failed(page, &Failure::from_answer(Upstream::Events, &answer), &back),
        Err(Err(e)) => return pages::failed(page, &Failure::from_error(Upstream::Events, e), &back),
    };
    let Some(event) = view.get("event").cloned().and_then(|e| serde_json::from_value::<Event>(e).ok()) else {
        return pages::failed(page, &bad_answer(), &back);
    };
    let counts = view.get("counts").cloned().and_then(|c| serde_json::from_value::<Counts>(c).ok());
    let place = view.get("participation").cloned().and_then(|p| serde_json::from_value::<Join>(p).ok());
    let seats = counts.as_ref().map(|c| {
        let free = u64::try_from((c.capacity - c.confirmed).max(0)).unwrap_or(0);
        Seats::Known(cityevents_api::gateway::SeatCounts {
            capacity: event.capacity,
            taken: u64::try_from(c.confirmed).unwrap_or(0),
            free: (event.capacity > 0).then_some(free.min(u64::from(event.capacity))),
            waitlisted: u64::try_from(c.waitlisted).unwrap_or(0),
        })
    });
    let (seats_text, full) = match &seats {
        Some(s) => seats_line(s),
        None => ("Seats: not known right now".into(), false),
    };
    let organizer = match page.token() {
        Some(token) => organizer_name(site, page, token, event.organizer_id).await,
        None => None,
    };
    let is_organizer = page.viewer.user().is_some_and(|u| u.id == event.organizer_id);
    let (status, message) = error.unzip();
    let t = EventPageView {
        layout: page.layout(site, event.title.clone()).await,
        card: Card::new(page, &event, &seats_text, full),
        paragraphs: event
            .description
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        status: match event.status {
            EventStatus::Draft => "Draft: only you can see it",
            EventStatus::Published => "",
            EventStatus::Canceled => "Canceled",
        },
        organizer,
        is_organizer,
        place: place.map(|j| Place { status: j.status, position: j.position }),
        key: uuid::Uuid::now_v7().simple().to_string(),
        error: message,
        event,
    };
    render(status.unwrap_or(StatusCode::OK), &t)
}

/// The organizer's display name (auth answers signed-in callers only).
pub(crate) async fn organizer_name(site: &Site, page: &Page, token: &str, id: uuid::Uuid) -> Option<String> {
    #[derive(Deserialize)]
    struct Name {
        name: String,
    }
    #[derive(Deserialize)]
    struct Names {
        items: Vec<Name>,
    }
    let path = format!("/api/v1/users/names?ids={id}");
    let names: Names = site.get(Upstream::Auth, &path, Some(token), &page.address).await.ok()?;
    names.items.into_iter().next().map(|n| n.name)
}

/// A join form: the idempotency key it was rendered with, so a second click is the same join.
#[derive(Debug, Deserialize)]
pub(crate) struct JoinForm {
    #[serde(default)]
    key: String,
}

/// `POST /events/{id}/join`.
pub(crate) async fn join(
    State(site): State<Arc<Site>>,
    page: Page,
    id: PathId,
    Form(form): Form<JoinForm>,
) -> PageResult {
    let id = page.event_id(id)?;
    let back = format!("/events/{id}");
    let token = page.signed(&back)?;
    let key = if !form.key.is_empty()
        && form.key.len() <= cityevents_api::limits::MAX_IDEMPOTENCY_KEY
        && form.key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        form.key
    } else {
        uuid::Uuid::now_v7().simple().to_string()
    };
    let key = HeaderValue::from_str(&key).unwrap_or_else(|_| HeaderValue::from_static("web"));
    let path = format!("/api/v1/events/{id}/join");
    let extra = [(HeaderName::from_static("idempotency-key"), key)];
    let empty = Value::Object(serde_json::Map::new());
    Ok(match site.send(Upstream::Joins, Method::POST, &path, Some(token), Some(&empty), &page.address, &extra).await {
        Ok(answer) => {
            let waitlisted = answer.json::<Join>().is_ok_and(|j| j.status == "waitlisted");
            let notice = if waitlisted { "waitlisted" } else { "joined" };
            Redirect::to(&format!("{back}?notice={notice}")).into_response()
        }
        Err(f) => after_failure(&site, &page, id, &f).await,
    })
}

/// `POST /events/{id}/leave`.
pub(crate) async fn leave(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let id = page.event_id(id)?;
    let back = format!("/events/{id}");
    let token = page.signed(&back)?;
    let path = format!("/api/v1/events/{id}/join");
    Ok(match site.send(Upstream::Joins, Method::DELETE, &path, Some(token), None, &page.address, &[]).await {
        Ok(_) => Redirect::to(&format!("{back}?notice=left")).into_response(),
        Err(f) => after_failure(&site, &page, id, &f).await,
    })
}

/// The event's page again with what went wrong, or the failure's own page when it is not about
/// the join (signed out, the platform failing).
async fn after_failure(site: &Site, page: &Page, id: uuid::Uuid, f: &Failure) -> Response {
    if f.status.is_client_error() && f.status != StatusCode::UNAUTHORIZED && f.status != StatusCode::NOT_FOUND {
        return event_page(site, page, id, Some((f.status, f.message()))).await;
    }
    pages::failed(page, f, &format!("/events/{id}"))
}

#[cfg(test)]
mod tests {
    use cityevents_api::gateway::{SeatCounts, Unavailable};

    use super::*;

    #[test]
    fn seats_say_what_is_free() {
        let s = |capacity, taken, free, waitlisted| Seats::Known(SeatCounts { capacity, taken, free, waitlisted });
        assert_eq!(seats_line(&s(40, 38, Some(2), 0)), ("2 of 40 seats free".into(), false));
        assert_eq!(seats_line(&s(40, 39, Some(1), 0)), ("1 of 40 seats free".into(), false));
        assert_eq!(seats_line(&s(2, 2, Some(0), 3)), ("Full · 3 on the waitlist".into(), true));
        assert_eq!(seats_line(&s(2, 2, Some(0), 0)), ("Full · join the waitlist".into(), true));
        assert_eq!(seats_line(&s(0, 5, None, 0)), ("Open to everyone".into(), false));
        assert!(seats_line(&Seats::Unavailable(Unavailable { unavailable: true })).0.contains("not known"));
    }

    #[test]
    fn date_filters_start_at_midnight_in_the_viewers_zone() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(day_start("2030-07-15", &berlin).as_deref(), Some("2030-07-14T22:00:00Z"));
        assert_eq!(day_start("2030-07-15", &Zone::utc()).as_deref(), Some("2030-07-15T00:00:00Z"));
        assert_eq!(day_start("15/07/2030", &Zone::utc()), None);
    }

    #[test]
    fn the_next_page_keeps_the_search() {
        let q = ListQuery { q: "jazz night".into(), city: "Berlin".into(), ..ListQuery::default() };
        assert_eq!(next_link(&q, "c1"), "/?q=jazz+night&city=Berlin&cursor=c1");
    }
}
