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
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// An OpenStreetMap search for the venue (a link only: no map is embedded).
    pub(crate) map: String,
    /// The category's label.
    pub(crate) category: String,
    /// The category as stored (its page's name).
    pub(crate) category_name: String,
    /// Start to end on the venue's clock, its zone named.
    pub(crate) when: String,
    /// The same on the viewer's clock when it reads differently; else empty (`site.js` fills it
    /// in when the server did not know the viewer's zone yet).
    pub(crate) local: String,
    pub(crate) datetime: String,
    pub(crate) end_datetime: String,
    pub(crate) zone: String,
    pub(crate) seats: String,
    pub(crate) full: bool,
    /// `Canceled`, `Ended`, or empty while it is on.
    pub(crate) state: &'static str,
    /// The cover's list size (640×360), when it has one.
    pub(crate) cover: Option<String>,
    /// The cover's page size (1280×720).
    pub(crate) cover_wide: Option<String>,
}

impl Card {
    pub(crate) fn new(page: &Page, e: &Event, seats: &str, full: bool) -> Self {
        let zone = Zone::named(&e.time_zone).unwrap_or_else(Zone::utc);
        let state = state(e);
        Self {
            id: e.id.to_string(),
            title: e.title.clone(),
            place: place(e),
            map: map_link(e),
            category: cityevents_api::events::category_label(&e.category).to_owned(),
            // A category from before the set was fixed has no page.
            category_name: cityevents_api::events::category_name(&e.category).unwrap_or_default().to_owned(),
            when: pages::span(e.starts_at, e.ends_at, &zone),
            local: pages::viewer_span(page.zone.as_ref(), e.starts_at, e.ends_at, &zone),
            datetime: pages::machine_time(e.starts_at),
            end_datetime: pages::machine_time(e.ends_at),
            zone: zone.name().to_owned(),
            seats: match state {
                "" => seats.to_owned(),
                "Canceled" => "Canceled: nobody can join".to_owned(),
                _ => "This event is over".to_owned(),
            },
            full: full && state.is_empty(),
            state,
            cover: e.cover.as_ref().map(|c| c.card.clone()),
            cover_wide: e.cover.as_ref().map(|c| c.wide.clone()),
        }
    }
}

/// `Canceled`, `Ended`, or empty.
fn state(e: &Event) -> &'static str {
    if e.status == EventStatus::Canceled {
        "Canceled"
    } else if e.ends_at <= time::OffsetDateTime::now_utc() {
        "Ended"
    } else {
        ""
    }
}

/// The venue line: `venue, city`; an online event says so.
fn place(e: &Event) -> String {
    match (e.venue.trim().is_empty(), e.online) {
        (true, true) => format!("Online · {}", e.city),
        (true, false) => e.city.clone(),
        (false, true) => format!("{}, {} · also online", e.venue, e.city),
        (false, false) => format!("{}, {}", e.venue, e.city),
    }
}

/// An OpenStreetMap search for the venue and city.
fn map_link(e: &Event) -> String {
    let at = if e.venue.trim().is_empty() { e.city.clone() } else { format!("{}, {}", e.venue, e.city) };
    let query: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
    format!("https://www.openstreetmap.org/search?query={query}")
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
    /// `Events`, or the category browsed.
    heading: String,
    /// The form's target: `/` or the category's page.
    action: String,
    /// On a category's page the category is the page's, not a field.
    browsing: bool,
    query: ListQuery,
    cards: Vec<Card>,
    next: Option<String>,
    filtered: bool,
    errors: Vec<(&'static str, String)>,
    /// Cities with upcoming events, for the city field's suggestions.
    cities: Vec<String>,
    /// Cities the typed one could be, when it was not one of them.
    did_you_mean: Vec<(String, String)>,
    /// The viewer's home city and the link listing its events, when they saved one.
    near_me: Option<(String, String)>,
}

impl ListPage {
    fn error(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|(f, _)| *f == field).map(|(_, m)| m.as_str())
    }

    /// `(name, label, selected)` for the category filter.
    fn categories(&self) -> Vec<(&'static str, &'static str, bool)> {
        cityevents_api::events::CATEGORIES
            .iter()
            .map(|(n, l)| (*n, *l, n.eq_ignore_ascii_case(self.query.category.trim())))
            .collect()
    }

    /// Whether any filter beyond the words is set (the filters are then shown open).
    fn narrowed(&self) -> bool {
        [&self.query.city, &self.query.from, &self.query.to].iter().any(|v| !v.trim().is_empty())
            || (!self.browsing && !self.query.category.trim().is_empty())
            || !self.errors.is_empty()
    }
}

/// Most cities suggested in the city field.
const CITY_SUGGESTIONS: u32 = 20;

/// The cities `/meta/cities` suggests for `prefix` (every city, busiest first, without one).
async fn cities(site: &Site, page: &Page, prefix: &str, limit: u32) -> Vec<String> {
    #[derive(Deserialize)]
    struct City {
        city: String,
    }
    #[derive(Deserialize)]
    struct Cities {
        items: Vec<City>,
    }
    let q: String = form_urlencoded::byte_serialize(prefix.trim().as_bytes()).collect();
    let path = format!("/api/v1/meta/cities?q={q}&limit={limit}");
    site.get::<Cities>(Upstream::Events, &path, None, &page.address)
        .await
        .map(|c| c.items.into_iter().map(|c| c.city).collect())
        .unwrap_or_default()
}

/// The viewer's home city (their profile's) and the link to its events.
async fn near_me(site: &Site, page: &Page) -> Option<(String, String)> {
    let user = page.viewer.user()?;
    let city = super::organizers::profile(site, page, user.id).await?.city;
    if city.trim().is_empty() {
        return None;
    }
    let link = search_link(&ListQuery { city: city.clone(), ..ListQuery::default() }, None);
    Some((city, link))
}

/// How long the city suggestions are kept.
const CITIES_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// The busiest cities, asked of the events service at most once a [`CITIES_KEPT`] per instance:
/// the query groups every upcoming event, too much for every page view.
async fn suggested_cities(site: &Site, page: &Page) -> Vec<String> {
    let fresh = |kept: &Option<(std::time::Instant, Vec<String>)>| {
        kept.as_ref().filter(|(at, _)| at.elapsed() < CITIES_KEPT).map(|(_, c)| c.clone())
    };
    if let Some(c) = fresh(&site.cities.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
        return c;
    }
    let found = cities(site, page, "", CITY_SUGGESTIONS).await;
    // An empty answer (the service failing) is not kept: the next page asks again.
    if !found.is_empty() {
        *site.cities.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), found.clone()));
    }
    found
}

/// The city a typed one means: itself when it names a city with events (any case or accents),
/// the only city it starts, or `Err` with the cities it could be (none: leave it as typed).
async fn resolve_city(site: &Site, page: &Page, typed: &str) -> Result<Option<String>, Vec<String>> {
    if typed.trim().is_empty() {
        return Ok(None);
    }
    let found = cities(site, page, typed, 5).await;
    let folded = cityevents_common::validate::fold(typed);
    if let Some(exact) = found.iter().find(|c| cityevents_common::validate::fold(c) == folded) {
        return Ok(Some(exact.clone()));
    }
    match found.as_slice() {
        [] => Ok(Some(typed.trim().to_owned())),
        [only] => Ok(Some(only.clone())),
        several => Err(several.to_vec()),
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
    listing(&site, &page, query, None).await
}

/// `GET /categories/{name}`: the list of one category's events.
pub(crate) async fn category(
    State(site): State<Arc<Site>>,
    page: Page,
    keel::http::extract::Path(name): keel::http::extract::Path<String>,
    query: Result<Query<ListQuery>, keel::http::Problem>,
) -> PageResult {
    let Some(name) = cityevents_api::events::category_name(&name) else { return Ok(pages::not_found(&page)) };
    let mut query = query.map(|Query(q)| q).unwrap_or_default();
    query.category = name.to_owned();
    listing(&site, &page, query, Some(name)).await
}

#[derive(Template)]
#[template(path = "web/categories.html")]
struct CategoriesPage {
    layout: Layout,
}

impl CategoriesPage {
    fn categories(&self) -> &'static [(&'static str, &'static str)] {
        &cityevents_api::events::CATEGORIES
    }
}

/// `GET /categories`: every category, each a link to its page.
pub(crate) async fn categories(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let t = CategoriesPage { layout: page.layout(&site, "Categories").await };
    Ok(render(StatusCode::OK, &t))
}

async fn listing(site: &Site, page: &Page, mut query: ListQuery, browsing: Option<&'static str>) -> PageResult {
    // A city typed without accents or in part is the city it names.
    let mut did_you_mean = Vec::new();
    match resolve_city(site, page, &query.city).await {
        Ok(Some(city)) => query.city = city,
        Ok(None) => {}
        Err(several) => {
            did_you_mean = several
                .into_iter()
                .map(|c| {
                    let link = search_link(&ListQuery { city: c.clone(), cursor: None, ..query.clone() }, None);
                    (c, link)
                })
                .collect();
        }
    }
    let zone = page.zone.clone().unwrap_or_else(Zone::utc);
    let (path, mut errors) = list_path(&query, &zone);
    // The viewer's home city is asked for beside the list, not after it.
    let (listed, near_me) =
        tokio::join!(site.get::<Value>(Upstream::Events, &path, page.token(), &page.address), near_me(site, page));
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
                            Card::new(page, &item.event, &seats, full)
                        })
                        .collect();
                    (cards, p.next_cursor.map(|c| next_link(&query, &c)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the events list was unreadable");
                    return Ok(pages::failed(page, &bad_answer(), "/"));
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
        Err(f) => return Ok(pages::failed(page, &f, "/")),
    };
    let filtered = [&query.q, &query.city, &query.from, &query.to].iter().any(|v| !v.trim().is_empty())
        || (browsing.is_none() && !query.category.trim().is_empty());
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let heading =
        browsing.map_or_else(|| "Events".to_owned(), |c| cityevents_api::events::category_label(c).to_owned());
    let action = browsing.map_or_else(|| "/".to_owned(), |c| format!("/categories/{c}"));
    let t = ListPage {
        layout: page.layout(site, heading.clone()).await,
        heading,
        action,
        browsing: browsing.is_some(),
        query,
        cards,
        next,
        filtered,
        errors,
        cities: suggested_cities(site, page).await,
        did_you_mean,
        near_me,
    };
    Ok(render(status, &t))
}

/// The link to the page after this one, with the same search.
fn next_link(q: &ListQuery, cursor: &str) -> String {
    search_link(q, Some(cursor))
}

/// The list with `q`'s search, from `cursor`.
fn search_link(q: &ListQuery, cursor: Option<&str>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [("q", &q.q), ("city", &q.city), ("category", &q.category), ("from", &q.from), ("to", &q.to)] {
        if !value.trim().is_empty() {
            s.append_pair(name, value.trim());
        }
    }
    if let Some(cursor) = cursor {
        s.append_pair("cursor", cursor);
    }
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
    /// The organizer's picture (96×96), when they gave one.
    organizer_avatar: Option<String>,
    is_organizer: bool,
    place: Option<Place>,
    key: String,
    error: Option<String>,
    /// What the viewer's place says (live updates replace it).
    place_text: String,
    /// The page's absolute address (share link, `og:url`).
    url: String,
    /// The site's origin, for the cover's absolute address (`og:image`).
    origin: String,
    /// `og:description`: the start of the description, or when and where.
    summary: String,
    /// "Add to calendar" links, while the event is on.
    links: Option<crate::calendar::AddLinks>,
    /// An online event's join link, for a viewer who holds a seat (or organizes or moderates).
    join_link: Option<String>,
    /// Whether the viewer is one who gets the link (else the page says how to get it).
    may_have_link: bool,
}

impl EventPageView {
    fn joined(&self) -> bool {
        self.place.as_ref().is_some_and(|p| p.status == "confirmed" || p.status == "waitlisted")
    }

    fn status_is(&self, status: &str) -> bool {
        self.place.as_ref().is_some_and(|p| p.status == status)
    }

    fn open(&self) -> bool {
        self.event.status == EventStatus::Published && self.card.state.is_empty()
    }
}

/// `GET /events/{id}`.
pub(crate) async fn show(
    State(site): State<Arc<Site>>,
    page: Page,
    id: PathId,
    method: http::Method,
    headers: http::HeaderMap,
) -> PageResult {
    let id = page.event_id(id)?;
    let resp = event_page(&site, &page, id, None).await;
    // A page shown is a view (the trending feed), keyed by the address as the services see it.
    if resp.status() == StatusCode::OK {
        let address = page.address.to_str().ok().and_then(|a| a.parse().ok());
        let address = address.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        site.gw.views.note_request(id, (&method, &headers), page.viewer.user().map(|u| u.id), address);
    }
    Ok(resp)
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
    let host = super::organizers::profile(site, page, event.organizer_id).await;
    let organizer_avatar = host.as_ref().and_then(|p| p.avatar.as_ref()).map(|a| a.small.clone());
    let organizer = host.map(|p| p.name);
    let is_organizer = page.viewer.user().is_some_and(|u| u.id == event.organizer_id);
    let may_have_link =
        is_organizer || place.as_ref().is_some_and(|p| p.status == "confirmed") || pages::moderator(page.viewer.user());
    let join_link = match page.token() {
        Some(token) if event.online && may_have_link && event.status != EventStatus::Canceled => {
            online_link(site, page, token, event.id).await
        }
        _ => None,
    };
    let (status, message) = error.unzip();
    let card = Card::new(page, &event, &seats_text, full);
    let origin = site.gw.origin.of_host(page.host.as_ref());
    let url = crate::calendar::page_url(&origin, &event.id);
    let links = (card.state.is_empty() && event.status == EventStatus::Published)
        .then(|| crate::calendar::add_links(&event, &url));
    let summary = match event.description.split_whitespace().collect::<Vec<_>>().join(" ") {
        d if d.is_empty() => format!("{} · {}", card.when, card.place),
        d => crate::calendar::cut(&d, 200),
    };
    let t = EventPageView {
        layout: page.layout(site, event.title.clone()).await,
        card,
        url,
        origin: origin.clone(),
        summary,
        links,
        join_link,
        may_have_link,
        paragraphs: event
            .description
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        status: match event.status {
            EventStatus::Draft => "Draft: only you can see it",
            EventStatus::Published if event.ends_at <= time::OffsetDateTime::now_utc() => "This event is over",
            EventStatus::Published => "",
            EventStatus::Canceled => "This event is canceled",
        },
        organizer,
        organizer_avatar,
        is_organizer,
        place_text: crate::live::place_text(place.as_ref()),
        place: place.map(|j| Place { status: j.status }),
        key: uuid::Uuid::now_v7().simple().to_string(),
        error: message,
        event,
    };
    render(status.unwrap_or(StatusCode::OK), &t)
}

/// Event `id`'s join link as the events service gives it to the bearer of `token` (`None` when
/// it refuses or cannot answer: the page then says where the link will be).
async fn online_link(site: &Site, page: &Page, token: &str, id: uuid::Uuid) -> Option<String> {
    let path = format!("/api/v1/events/{id}/online-link");
    match site.get::<cityevents_api::events::OnlineLink>(Upstream::Events, &path, Some(token), &page.address).await {
        Ok(link) => Some(link.url),
        Err(f) => {
            tracing::debug!(status = f.status.as_u16(), "no join link for the page");
            None
        }
    }
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
