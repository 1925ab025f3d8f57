//! Calendars: an event's iCalendar file (`GET /api/v1/events/{id}/calendar.ics`, also the site's
//! `/events/{id}/calendar.ics`) and a user's personal feed (`GET
//! /api/v1/calendars/{token}/events.ics`), composed from the events service's events and, for
//! the feed, the joins service's list behind the secret; plus the "add to Google / Outlook"
//! links of an event page.
//!
//! An event's file is `METHOD:PUBLISH`, or `METHOD:CANCEL` with `STATUS:CANCELLED` once it is
//! canceled; its `SEQUENCE` is the event's version, so a calendar that imported it replaces its
//! copy with a newer one. The feed has no method (a subscription): the events the user holds a
//! seat at (`CONFIRMED`) or waits for (`TENTATIVE`), and those canceled while they did
//! (`CANCELLED`), from 30 days back, 100 at most; calendars refresh it hourly.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::response::Response;
use cityevents_api::events::{BatchResponse, Event, EventStatus};
use cityevents_api::joins::{FeedItems, FeedToken};
use cityevents_common::ical::{self, Calendar, Entry, Method};
use cityevents_common::time::to_micros;
use cityevents_common::zone::Zone;
use http::{HeaderValue, StatusCode, header};
use keel::http::Problem;
use keel::http::client::{self, ClientError};
use keel::http::extract::Path;
use uuid::Uuid;

use crate::edge;
use crate::forward::{Gateway, relay};
use crate::routes::{Access, Upstream};

/// Longest description a calendar link carries (the rest is on the event's page).
const LINK_DETAILS: usize = 600;

/// The event's page.
pub(crate) fn page_url(origin: &str, id: &Uuid) -> String {
    format!("{origin}/events/{id}")
}

/// `venue, city` (or the city).
fn location(e: &Event) -> String {
    if e.venue.trim().is_empty() { e.city.clone() } else { format!("{}, {}", e.venue, e.city) }
}

/// The calendar entry of `e`.
fn entry(e: &Event, origin: &str, status: ical::Status) -> Entry {
    Entry {
        uid: ical::uid(&e.id),
        sequence: e.version,
        summary: e.title.clone(),
        description: e.description.clone(),
        location: location(e),
        url: Some(page_url(origin, &e.id)),
        starts_at: to_micros(e.starts_at),
        ends_at: to_micros(e.ends_at),
        zone: Zone::named(&e.time_zone).unwrap_or_else(Zone::utc),
        status,
        created_at: to_micros(e.created_at),
        updated_at: to_micros(e.updated_at),
        category: e.category.clone(),
    }
}

/// The file of one event.
pub(crate) fn event_file(e: &Event, origin: &str) -> String {
    let canceled = e.status == EventStatus::Canceled;
    let mut cal = Calendar::new(if canceled { Method::Cancel } else { Method::Publish });
    cal.push(entry(e, origin, if canceled { ical::Status::Cancelled } else { ical::Status::Confirmed }));
    cal.render()
}

/// A `text/calendar` answer; `file` names the download, `private` keeps it out of shared caches.
fn calendar_response(body: String, file: Option<&str>, private: bool) -> Response {
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/calendar; charset=utf-8"));
    if let Some(value) = file.and_then(|f| HeaderValue::from_str(&format!("attachment; filename=\"{f}\"")).ok()) {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    let cache = if private { "private, no-store" } else { "public, max-age=60" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// The event `id` as the caller may see it (`authorization` forwarded), or the events service's
/// answer when it is not one.
pub(crate) async fn fetch_event(
    gw: &Gateway,
    id: &Uuid,
    authorization: Option<HeaderValue>,
) -> Result<Event, Result<client::Response, ClientError>> {
    let events = gw.client(Upstream::Events).map_err(|_| Err(no_client()))?;
    let mut req = gw.timed(
        client::Request::new(http::Method::GET, format!("/api/v1/events/{id}"))
            .header(header::ACCEPT, HeaderValue::from_static("application/json")),
        &http::Method::GET,
    );
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    match gw.bounded(events.send(req)).await {
        Ok(r) if r.status == StatusCode::OK => r.json::<Event>().map_err(Err),
        other => Err(other),
    }
}

fn no_client() -> ClientError {
    ClientError::Unreachable { upstream: Upstream::Events.name().to_owned(), message: "no client".to_owned() }
}

/// The answer for event `id`'s file, for a caller with `authorization`.
pub(crate) async fn event_answer(
    gw: &Gateway,
    id: &Uuid,
    authorization: Option<HeaderValue>,
    origin: &str,
) -> Response {
    let private = authorization.is_some();
    match fetch_event(gw, id, authorization).await {
        Ok(e) => {
            // A draft is its organizer's only: never for a shared cache.
            let private = private || e.status == EventStatus::Draft;
            calendar_response(event_file(&e, origin), Some(&format!("event-{id}.ics")), private)
        }
        Err(failed) => relay(failed),
    }
}

/// `GET /api/v1/events/{id}/calendar.ics`.
pub(crate) async fn event(gw: Arc<Gateway>, req: Request) -> Result<Response, Problem> {
    let (mut parts, _) = req.into_parts();
    let claims = edge::authorize(&mut parts, Access::Public).await?;
    let Path(id) = Path::<Uuid>::from_request_parts(&mut parts, &()).await?;
    let authorization = claims.and(parts.headers.get(header::AUTHORIZATION).cloned());
    let origin = gw.origin.of(&parts.headers, &parts.uri);
    Ok(event_answer(&gw, &id, authorization, &origin).await)
}

/// `GET /api/v1/calendars/{token}/events.ics`: the personal feed behind the secret.
pub(crate) async fn feed(gw: Arc<Gateway>, req: Request) -> Result<Response, Problem> {
    let (mut parts, _) = req.into_parts();
    edge::authorize(&mut parts, Access::Anonymous).await?;
    let Path(token) = Path::<String>::from_request_parts(&mut parts, &()).await?;
    // Only what a secret of ours can be is asked about.
    if token.is_empty() || token.len() > 64 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err(Problem::not_found().detail("no such calendar feed"));
    }
    let origin = gw.origin.of(&parts.headers, &parts.uri);
    let joins = gw.client(Upstream::Joins)?;
    // The secret in a body: no path, span or log on the way holds it.
    let req = gw.timed(
        client::Request::new(http::Method::POST, "/api/v1/calendar-feeds/resolve".to_owned())
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .json(&FeedToken { token })
            .map_err(|e| Problem::internal_error("calendar feed", e))?,
        &http::Method::GET,
    );
    let items = match gw.bounded(joins.send(req)).await {
        Ok(r) if r.status == StatusCode::OK => match r.json::<FeedItems>() {
            Ok(items) => items.items,
            Err(e) => return Ok(relay(Err(e))),
        },
        other => return Ok(relay(other)),
    };
    let mut cal = Calendar::new(Method::None).name("City Events").refresh_minutes(60);
    if !items.is_empty() {
        let events = gw.client(Upstream::Events)?;
        let ids: Vec<String> = items.iter().map(|i| i.event_id.to_string()).collect();
        let req = gw.timed(
            client::Request::new(http::Method::POST, "/api/v1/events/batch".to_owned())
                .json(&serde_json::json!({ "ids": ids }))
                .map_err(|e| Problem::internal_error("calendar feed", e))?,
            &http::Method::POST,
        );
        let found = match gw.bounded(events.send(req)).await {
            Ok(r) if r.status == StatusCode::OK => match r.json::<BatchResponse>() {
                Ok(b) => b.events,
                Err(e) => return Ok(relay(Err(e))),
            },
            other => return Ok(relay(other)),
        };
        for item in &items {
            // An event no longer public (back to draft, its organizer banned) is left out.
            let Some(e) = found.get(&item.event_id.to_string()) else { continue };
            let status = match (e.status, item.status.as_str()) {
                (EventStatus::Canceled, _) | (_, "canceled") => ical::Status::Cancelled,
                (_, "waitlisted") => ical::Status::Tentative,
                _ => ical::Status::Confirmed,
            };
            cal.push(entry(e, &origin, status));
        }
    }
    Ok(calendar_response(cal.render(), None, true))
}

/// `text`, cut to at most `max` characters (with an ellipsis when cut).
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Links that open the calendar services' "new event" form filled in with `e`.
#[derive(Debug, Clone)]
pub(crate) struct AddLinks {
    pub(crate) google: String,
    pub(crate) outlook: String,
    pub(crate) office: String,
}

/// The "add to calendar" links of `e`, whose page is `url`.
pub(crate) fn add_links(e: &Event, url: &str) -> AddLinks {
    let (start, end) = (to_micros(e.starts_at), to_micros(e.ends_at));
    let details = format!("{}\n\n{url}", cut(&e.description, LINK_DETAILS));
    let details = details.trim_start();
    let place = location(e);
    let google = query(&[
        ("action", "TEMPLATE"),
        ("text", &e.title),
        ("dates", &format!("{}/{}", ical::utc_basic(start), ical::utc_basic(end))),
        ("ctz", &e.time_zone),
        ("details", details),
        ("location", &place),
    ]);
    let iso = |t: time::OffsetDateTime| crate::web::machine_time(t);
    let outlook = query(&[
        ("path", "/calendar/action/compose"),
        ("rru", "addevent"),
        ("subject", &e.title),
        ("startdt", &iso(e.starts_at)),
        ("enddt", &iso(e.ends_at)),
        ("body", details),
        ("location", &place),
    ]);
    AddLinks {
        google: format!("https://calendar.google.com/calendar/render?{google}"),
        outlook: format!("https://outlook.live.com/calendar/0/action/compose?{outlook}"),
        office: format!("https://outlook.office.com/calendar/0/action/compose?{outlook}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use super::*;

    fn event(status: EventStatus) -> Event {
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        Event {
            id: Uuid::parse_str("0190a5b2-0000-7000-8000-000000000001").unwrap(),
            organizer_id: Uuid::nil(),
            title: "Jazz & friends".into(),
            description: "Bring a friend.".into(),
            city: "New York".into(),
            category: "Music".into(),
            venue: "Blue Note".into(),
            time_zone: "America/New_York".into(),
            online: false,
            online_url: None,
            cover: None,
            starts_at: at("2030-01-15T00:00:00Z"),
            ends_at: at("2030-01-15T03:00:00Z"),
            starts_at_local: "2030-01-14T19:00:00-05:00".into(),
            ends_at_local: "2030-01-14T22:00:00-05:00".into(),
            capacity: 10,
            status,
            status_reason: None,
            version: 4,
            created_at: at("2029-12-01T10:00:00Z"),
            updated_at: at("2029-12-02T10:00:00Z"),
        }
    }

    #[test]
    fn a_file_publishes_the_event_and_a_canceled_one_cancels_it() {
        let text = event_file(&event(EventStatus::Published), "https://city.example").replace("\r\n ", "");
        assert!(text.contains("METHOD:PUBLISH\r\n"));
        assert!(text.contains("UID:0190a5b2-0000-7000-8000-000000000001@cityevents\r\n"));
        assert!(text.contains("SEQUENCE:4\r\n"));
        assert!(text.contains("DTSTART;TZID=America/New_York:20300114T190000\r\n"));
        assert!(text.contains("LOCATION:Blue Note\\, New York\r\n"));
        assert!(text.contains("URL:https://city.example/events/0190a5b2-0000-7000-8000-000000000001\r\n"));
        assert!(text.contains("STATUS:CONFIRMED\r\n"));
        let canceled = event_file(&event(EventStatus::Canceled), "https://city.example");
        assert!(canceled.contains("METHOD:CANCEL\r\n"));
        assert!(canceled.contains("STATUS:CANCELLED\r\n"));
    }

    #[test]
    fn add_links_carry_the_event_in_utc_with_the_venues_zone() {
        let links = add_links(&event(EventStatus::Published), "https://city.example/events/x");
        assert!(
            links
                .google
                .starts_with("https://calendar.google.com/calendar/render?action=TEMPLATE&text=Jazz+%26+friends")
        );
        assert!(
            links.google.contains("&dates=20300115T000000Z%2F20300115T030000Z&ctz=America%2FNew_York"),
            "{}",
            links.google
        );
        assert!(links.google.contains("details=Bring+a+friend.%0A%0Ahttps%3A%2F%2Fcity.example%2Fevents%2Fx"));
        assert!(links.outlook.starts_with("https://outlook.live.com/calendar/0/action/compose?"));
        assert!(
            links.outlook.contains("&startdt=2030-01-15T00%3A00%3A00Z&enddt=2030-01-15T03%3A00%3A00Z"),
            "{}",
            links.outlook
        );
        assert!(links.office.starts_with("https://outlook.office.com/"));
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
