//! The event aggregate: its fields and limits, its life cycle (`draft → published → canceled`)
//! and the rules that decide who may change it and when.

use cityevents_common::catalogue::{EventCanceled, EventSnapshot, EventUnpublished};
use cityevents_common::time::{from_micros, to_micros};
use cityevents_common::validate;
use cityevents_common::zone::Zone;
use http::StatusCode;
use keel::http::Problem;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

pub use cityevents_api::limits::{
    MAX_CAPACITY, MAX_CATEGORY, MAX_CITY, MAX_DESCRIPTION, MAX_ONLINE_URL, MAX_REASON, MAX_TIME, MAX_TITLE, MAX_VENUE,
    MAX_YEAR, MIN_YEAR,
};

pub use cityevents_api::events::EventStatus as Status;

pub use cityevents_common::caller::Caller;

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event id (UUIDv7).
    pub id: Uuid,
    /// The user who created it.
    pub organizer_id: Uuid,
    /// Title, 1–120 characters.
    pub title: String,
    /// Description, up to 4000 characters, may be empty.
    pub description: String,
    /// City, 1–80 characters.
    pub city: String,
    /// Category, 1–80 characters.
    pub category: String,
    /// Venue, up to 200 characters, may be empty.
    pub venue: String,
    /// IANA time zone (canonical name); local times are shown in it.
    pub time_zone: String,
    /// An online event's join link; only its organizer, moderators and confirmed participants
    /// are given it.
    pub online_url: Option<String>,
    /// The cover picture's content hash (`covers/<id>/<hash>/…` in the object store).
    pub cover: Option<String>,
    /// Start, microseconds since the epoch.
    pub starts_at: i64,
    /// End, microseconds since the epoch; after the start.
    pub ends_at: i64,
    /// Seats, `0` = unlimited.
    pub capacity: i64,
    /// Life-cycle state.
    pub status: Status,
    /// When it was published (micros); `None` while it never was, and again once unpublished
    /// (a draft canceled after that stays private).
    pub published_at: Option<i64>,
    /// Why it was canceled or unpublished, when a reason was given.
    pub status_reason: Option<String>,
    /// Whether its organizer's account is banned: hidden from everyone but the organizer and
    /// moderators (only single-event reads fill it in; lists leave such events out).
    pub hidden: bool,
    /// Bumped on every change.
    pub version: i64,
    /// Creation time, microseconds since the epoch.
    pub created_at: i64,
    /// Last change, microseconds since the epoch.
    pub updated_at: i64,
}

/// The fingerprint of a join link on the bus (`EventSnapshot::link_tag`).
pub fn link_tag(url: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(url.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A 409 problem with a stable `code`.
pub fn conflict(code: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").code(code).detail(detail)
}

/// 403: the caller may see the event but not change it.
pub fn forbidden(detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
}

impl Event {
    /// Whether the event is public: published, or canceled after it was published (a draft
    /// canceled before that was never public and stays private).
    pub fn public(&self) -> bool {
        match self.status {
            Status::Published => true,
            Status::Canceled => self.published_at.is_some(),
            Status::Draft => false,
        }
    }

    /// Whether `caller` may know the event exists: a public event (one whose organizer is
    /// banned only to moderators), or one of their own.
    pub fn visible_to(&self, caller: Option<&Caller>) -> bool {
        if caller.is_some_and(|c| c.id == self.organizer_id) {
            return true;
        }
        self.public() && (!self.hidden || caller.is_some_and(|c| c.moderator))
    }

    /// Whether the event is over at `now` (micros).
    pub fn ended(&self, now: i64) -> bool {
        self.ends_at <= now
    }

    /// Checks that `caller` may edit or publish the event: 404 when they may not know it
    /// exists (someone else's draft), 403 when it is someone else's public event.
    pub fn check_organizer(&self, caller: &Caller) -> Result<(), Problem> {
        if caller.id == self.organizer_id {
            return Ok(());
        }
        if !self.visible_to(Some(caller)) {
            return Err(Problem::not_found());
        }
        Err(forbidden("only the organizer may change this event"))
    }

    /// Checks that `caller` may cancel or unpublish the event: its organizer, or a moderator or
    /// admin (any event). `Ok(true)` when the caller acts as a moderator on someone else's event
    /// (a reason is then required).
    pub fn check_can_moderate(&self, caller: &Caller) -> Result<bool, Problem> {
        if caller.id == self.organizer_id {
            return Ok(false);
        }
        if caller.admin || caller.moderator {
            return Ok(true);
        }
        self.check_organizer(caller).map(|()| false)
    }

    /// Checks that the event may be unpublished at `now`: published and not over.
    pub fn check_unpublishable(&self, now: i64) -> Result<(), Problem> {
        match self.status {
            Status::Canceled => Err(conflict("event_canceled", "a canceled event cannot be unpublished")),
            Status::Draft => Err(conflict("not_published", "the event is not published")),
            Status::Published if self.ended(now) => {
                Err(conflict("event_ended", "the event is over and cannot be unpublished"))
            }
            Status::Published => Ok(()),
        }
    }

    /// Checks that the event may still be edited at `now`.
    pub fn check_editable(&self, now: i64) -> Result<(), Problem> {
        if self.status == Status::Canceled {
            return Err(conflict("event_canceled", "a canceled event cannot be changed"));
        }
        if self.ended(now) {
            return Err(conflict("event_ended", "the event is over and cannot be changed"));
        }
        Ok(())
    }

    /// Checks that the event may be published at `now`: a draft that has not started yet.
    pub fn check_publishable(&self, now: i64) -> Result<(), Problem> {
        match self.status {
            Status::Canceled => Err(conflict("event_canceled", "a canceled event cannot be published")),
            Status::Published => Err(conflict("not_publishable", "the event is already published")),
            Status::Draft if self.starts_at <= now => {
                Err(conflict("not_publishable", "only an event that starts in the future can be published"))
            }
            Status::Draft => Ok(()),
        }
    }

    /// Checks that the event may be canceled at `now`.
    pub fn check_cancelable(&self, now: i64) -> Result<(), Problem> {
        if self.status == Status::Canceled {
            return Err(conflict("event_canceled", "the event is already canceled"));
        }
        if self.ended(now) {
            return Err(conflict("event_ended", "the event is over and cannot be canceled"));
        }
        Ok(())
    }

    /// What `event.published` and `event.updated` carry.
    pub fn snapshot(&self) -> EventSnapshot {
        EventSnapshot {
            event_id: self.id,
            organizer_id: self.organizer_id,
            title: self.title.clone(),
            city: self.city.clone(),
            category: self.category.clone(),
            starts_at: from_micros(self.starts_at),
            ends_at: from_micros(self.ends_at),
            capacity: u32::try_from(self.capacity).unwrap_or(0),
            status: self.status.as_str().to_owned(),
            venue: self.venue.clone(),
            time_zone: self.time_zone.clone(),
            version: u64::try_from(self.version).unwrap_or(0),
            link_tag: self.online_url.as_deref().map(link_tag).unwrap_or_default(),
        }
    }

    /// What `event.canceled` carries.
    pub fn canceled(&self) -> EventCanceled {
        EventCanceled {
            event_id: self.id,
            organizer_id: self.organizer_id,
            title: self.title.clone(),
            canceled_at: from_micros(self.updated_at),
            version: u64::try_from(self.version).unwrap_or(0),
            reason: self.status_reason.clone(),
        }
    }

    /// What `event.unpublished` carries.
    pub fn unpublished(&self) -> EventUnpublished {
        EventUnpublished { event: self.snapshot(), reason: self.status_reason.clone() }
    }

    /// The event's zone (UTC when its stored name is unknown, which validation prevents).
    pub fn zone(&self) -> Zone {
        Zone::named(&self.time_zone).unwrap_or_else(Zone::utc)
    }

    /// Whether `caller` may always have the join link: the organizer, a moderator or an admin
    /// (anyone else needs a seat).
    pub fn link_without_seat(&self, caller: &Caller) -> bool {
        caller.id == self.organizer_id || caller.moderator || caller.admin
    }

    /// The wire form for `caller`: the organizer also gets the join link.
    pub fn view_for(&self, caller: Option<&Caller>) -> EventView {
        let mut view = self.view();
        if caller.is_some_and(|c| c.id == self.organizer_id) {
            view.online_url.clone_from(&self.online_url);
        }
        view
    }

    /// The wire form (without the join link).
    pub fn view(&self) -> EventView {
        let zone = self.zone();
        EventView {
            id: self.id,
            organizer_id: self.organizer_id,
            title: self.title.clone(),
            description: self.description.clone(),
            city: self.city.clone(),
            category: self.category.clone(),
            venue: self.venue.clone(),
            time_zone: zone.name().to_owned(),
            online: self.online_url.is_some(),
            online_url: None,
            cover: self.cover.as_deref().map(|h| cityevents_api::events::Cover::of(self.id, h)),
            starts_at: from_micros(self.starts_at),
            ends_at: from_micros(self.ends_at),
            starts_at_local: zone.local(self.starts_at).unwrap_or_default(),
            ends_at_local: zone.local(self.ends_at).unwrap_or_default(),
            capacity: u32::try_from(self.capacity).unwrap_or(0),
            status: self.status,
            status_reason: self.status_reason.clone(),
            version: u64::try_from(self.version).unwrap_or(0),
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
        }
    }
}

pub use cityevents_api::events::{Event as EventView, EventPatch, NewEvent};

/// Collects the problems of one request so a client learns every bad field at once.
#[derive(Debug, Default)]
pub struct Errors(Option<Problem>);

impl Errors {
    /// Records `p` (its field errors join the first problem's).
    pub fn push(&mut self, p: Problem) {
        self.0 = Some(match self.0.take() {
            None => p,
            Some(first) => p.field_errors().iter().fold(first, |acc, f| acc.field(&f.field, &f.message)),
        });
    }

    /// Keeps the value of `r`, or records its problem.
    pub fn take<T>(&mut self, r: Result<T, Problem>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(p) => {
                self.push(p);
                None
            }
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), Problem> {
        match self.0 {
            None => Ok(()),
            Some(p) => Err(p),
        }
    }
}

/// Parses an RFC 3339 time (any offset, kept as UTC) to microseconds, without range limits
/// (for list filters).
pub fn parse_time(field: &str, value: &str) -> Result<i64, Problem> {
    if value.len() > MAX_TIME {
        return Err(validate::invalid(field, "must be an RFC 3339 time"));
    }
    OffsetDateTime::parse(value.trim(), &Rfc3339)
        .map(to_micros)
        .map_err(|_| validate::invalid(field, "must be an RFC 3339 time, e.g. 2030-05-01T19:00:00Z"))
}

/// Parses an event time: RFC 3339, or a local date and time without an offset
/// (`2030-05-01T19:00`) read in `zone`; within years 2000–2200; to microseconds.
pub fn parse_event_time(field: &str, value: &str, zone: &Zone) -> Result<i64, Problem> {
    let micros = match zone.read_local(value) {
        Some(micros) if value.len() <= MAX_TIME => micros,
        _ => parse_time(field, value).map_err(|_| {
            validate::invalid(
                field,
                "must be an RFC 3339 time (2030-05-01T19:00:00+02:00) or a local time in time_zone (2030-05-01T19:00)",
            )
        })?,
    };
    let year = from_micros(micros).year();
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return Err(validate::invalid(field, &format!("must be between the years {MIN_YEAR} and {MAX_YEAR}")));
    }
    Ok(micros)
}

/// Parses an IANA time zone name.
pub fn parse_zone(value: &str) -> Result<Zone, Problem> {
    Zone::named(value.trim())
        .ok_or_else(|| validate::invalid("time_zone", "must be an IANA time zone name, e.g. Europe/Berlin or UTC"))
}

/// Checks an optional reason (trimmed; empty is none).
pub fn parse_reason(value: Option<&str>) -> Result<Option<String>, Problem> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => validate::text("reason", v, MAX_REASON).map(Some),
    }
}

fn capacity(value: i64) -> Result<i64, Problem> {
    if (0..=MAX_CAPACITY).contains(&value) {
        Ok(value)
    } else {
        Err(validate::invalid("capacity", &format!("must be between 0 and {MAX_CAPACITY} (0 = unlimited)")))
    }
}

fn online_url(value: &str) -> Result<Option<String>, Problem> {
    validate::https_link("online_url", value, MAX_ONLINE_URL)
}

fn order(starts_at: i64, ends_at: i64) -> Result<(), Problem> {
    if ends_at > starts_at { Ok(()) } else { Err(validate::invalid("ends_at", "must be after starts_at")) }
}

/// The validated fields of a new or changed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// City.
    pub city: String,
    /// Category.
    pub category: String,
    /// Venue.
    pub venue: String,
    /// Canonical IANA time zone name.
    pub time_zone: String,
    /// The join link of an online event.
    pub online_url: Option<String>,
    /// Start (micros).
    pub starts_at: i64,
    /// End (micros).
    pub ends_at: i64,
    /// Seats.
    pub capacity: i64,
}

/// One of the fixed categories ([`cityevents_api::events::CATEGORIES`]), case-insensitive, as
/// its name.
fn category(field: &str, value: &str) -> Result<String, Problem> {
    validate::text(field, value, MAX_CATEGORY)?;
    cityevents_api::events::category_name(value).map(str::to_owned).ok_or_else(|| {
        let names: Vec<&str> = cityevents_api::events::CATEGORIES.iter().map(|(n, _)| *n).collect();
        validate::invalid(field, &format!("must be one of {}", names.join(", ")))
    })
}

/// Checks every limit of `input`; the problem names every bad field.
pub fn validate_new(input: NewEvent) -> Result<Fields, Problem> {
    let mut e = Errors::default();
    let title = e.take(validate::text("title", &input.title, MAX_TITLE));
    let description = e.take(validate::optional_text("description", &input.description, MAX_DESCRIPTION));
    let city = e.take(validate::text("city", &input.city, MAX_CITY));
    let category = e.take(category("category", &input.category));
    let venue = e.take(validate::optional_text("venue", &input.venue, MAX_VENUE));
    let zone = match &input.time_zone {
        Some(z) => e.take(parse_zone(z)),
        None => Some(Zone::utc()),
    };
    // Without a valid zone, only times with an offset can be read.
    let read_in = zone.clone().unwrap_or_else(Zone::utc);
    let starts_at = e.take(parse_event_time("starts_at", &input.starts_at, &read_in));
    let ends_at = e.take(parse_event_time("ends_at", &input.ends_at, &read_in));
    let capacity = e.take(capacity(input.capacity));
    let online_url = e.take(online_url(input.online_url.as_deref().unwrap_or_default()));
    if let (Some(s), Some(en)) = (starts_at, ends_at) {
        e.take(order(s, en));
    }
    e.finish()?;
    match (title, description, city, category, venue, zone, online_url, starts_at, ends_at, capacity) {
        (
            Some(title),
            Some(description),
            Some(city),
            Some(category),
            Some(venue),
            Some(zone),
            Some(online_url),
            Some(starts_at),
            Some(ends_at),
            Some(capacity),
        ) => Ok(Fields {
            title,
            description,
            city,
            category,
            venue,
            time_zone: zone.name().to_owned(),
            online_url,
            starts_at,
            ends_at,
            capacity,
        }),
        _ => Err(Problem::bad_request("invalid event")),
    }
}

/// The event's fields with `patch` applied, every limit checked (including that the end
/// stays after the start).
pub fn apply_patch(patch: EventPatch, current: &Event) -> Result<Fields, Problem> {
    if patch.is_empty() {
        return Err(validate::invalid("body", "must name at least one field to change"));
    }
    let mut e = Errors::default();
    let mut f = Fields {
        title: current.title.clone(),
        description: current.description.clone(),
        city: current.city.clone(),
        category: current.category.clone(),
        venue: current.venue.clone(),
        time_zone: current.time_zone.clone(),
        online_url: current.online_url.clone(),
        starts_at: current.starts_at,
        ends_at: current.ends_at,
        capacity: current.capacity,
    };
    if let Some(v) = patch.title.and_then(|v| e.take(validate::text("title", &v, MAX_TITLE))) {
        f.title = v;
    }
    if let Some(v) = patch.description.and_then(|v| e.take(validate::optional_text("description", &v, MAX_DESCRIPTION)))
    {
        f.description = v;
    }
    if let Some(v) = patch.city.and_then(|v| e.take(validate::text("city", &v, MAX_CITY))) {
        f.city = v;
    }
    if let Some(v) = patch.category.and_then(|v| e.take(category("category", &v))) {
        f.category = v;
    }
    if let Some(v) = patch.venue.and_then(|v| e.take(validate::optional_text("venue", &v, MAX_VENUE))) {
        f.venue = v;
    }
    if let Some(v) = patch.online_url.and_then(|v| e.take(online_url(&v))) {
        f.online_url = v;
    }
    let mut times_ok = true;
    let mut zone = current.zone();
    if let Some(v) = patch.time_zone {
        match e.take(parse_zone(&v)) {
            Some(z) => {
                f.time_zone = z.name().to_owned();
                zone = z;
            }
            None => times_ok = false,
        }
    }
    if let Some(v) = patch.starts_at {
        match e.take(parse_event_time("starts_at", &v, &zone)) {
            Some(v) => f.starts_at = v,
            None => times_ok = false,
        }
    }
    if let Some(v) = patch.ends_at {
        match e.take(parse_event_time("ends_at", &v, &zone)) {
            Some(v) => f.ends_at = v,
            None => times_ok = false,
        }
    }
    if times_ok {
        e.take(order(f.starts_at, f.ends_at));
    }
    if let Some(v) = patch.capacity.and_then(|v| e.take(capacity(v))) {
        f.capacity = v;
    }
    e.finish()?;
    Ok(f)
}

impl Fields {
    /// Whether these are exactly `event`'s current fields (a patch that changes nothing).
    pub fn same_as(&self, event: &Event) -> bool {
        self.title == event.title
            && self.description == event.description
            && self.city == event.city
            && self.category == event.category
            && self.venue == event.venue
            && self.time_zone == event.time_zone
            && self.online_url == event.online_url
            && self.starts_at == event.starts_at
            && self.ends_at == event.ends_at
            && self.capacity == event.capacity
    }
}

/// The lowercased form the city and category filters compare (Unicode-aware, the same on every
/// database).
pub fn key(value: &str) -> String {
    value.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn new(starts: &str, ends: &str) -> NewEvent {
        NewEvent {
            title: "Jazz".into(),
            description: String::new(),
            city: "Lyon".into(),
            category: "music".into(),
            venue: String::new(),
            time_zone: None,
            online_url: None,
            starts_at: starts.into(),
            ends_at: ends.into(),
            capacity: 10,
        }
    }

    #[test]
    fn local_times_are_read_in_the_events_zone() {
        let mut n = new("2030-07-01T19:00", "2030-07-01T22:00:00+02:00");
        n.time_zone = Some("europe/lisbon".into());
        let f = validate_new(n).unwrap();
        assert_eq!(f.time_zone, "Europe/Lisbon");
        assert_eq!(from_micros(f.starts_at).hour(), 18, "19:00 in Lisbon in summer is 18:00 UTC");
        assert_eq!(from_micros(f.ends_at).hour(), 20, "an offset wins over the zone");
        // Without a zone, a local time is read in UTC.
        assert_eq!(
            from_micros(validate_new(new("2030-07-01T19:00", "2030-07-01T20:00")).unwrap().starts_at).hour(),
            19
        );
        let mut bad = new("2030-07-01T19:00", "2030-07-01T20:00");
        bad.time_zone = Some("Mars/Olympus".into());
        let p = validate_new(bad).unwrap_err();
        assert_eq!(p.field_errors()[0].field, "time_zone");
    }

    #[test]
    fn reasons_are_trimmed_and_bounded() {
        assert_eq!(parse_reason(None).unwrap(), None);
        assert_eq!(parse_reason(Some("  ")).unwrap(), None);
        assert_eq!(parse_reason(Some(" storm ")).unwrap().as_deref(), Some("storm"));
        assert!(parse_reason(Some(&"x".repeat(MAX_REASON + 1))).is_err());
    }

    #[test]
    fn times_are_parsed_to_utc_micros_and_bounded() {
        let f = validate_new(new("2030-05-01T19:00:00+02:00", "2030-05-01T18:00:00.5Z")).unwrap();
        assert_eq!(from_micros(f.starts_at).hour(), 17);
        assert_eq!(f.ends_at - f.starts_at, 3_600_000_000 + 500_000);
        for bad in ["1999-12-31T23:59:59Z", "2201-01-01T00:00:00Z", "2030-05-01 19:00", "tomorrow", ""] {
            let p = validate_new(new(bad, "2030-05-01T18:00:00Z")).unwrap_err();
            assert_eq!(p.field_errors()[0].field, "starts_at", "{bad}");
        }
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let mut n = new("2030-05-01T19:00:00Z", "2030-05-01T19:00:00Z");
        n.title = " ".into();
        n.capacity = -1;
        let p = validate_new(n).unwrap_err();
        let fields: Vec<_> = p.field_errors().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["title", "capacity", "ends_at"]);
        assert_eq!(p.code_str(), Some("invalid_input"));
    }

    #[test]
    fn keys_fold_case() {
        assert_eq!(key(" ÉVRY "), "évry");
    }
}
