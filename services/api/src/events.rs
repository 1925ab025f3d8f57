//! The events service's wire types: an event, what creates and changes it, its lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::fields::{self, bounded, integer, optional_text, required_text};
use crate::limits::{
    MAX_CAPACITY, MAX_CATEGORY, MAX_CITY, MAX_DESCRIPTION, MAX_ONLINE_URL, MAX_REASON, MAX_TIME, MAX_TITLE, MAX_VENUE,
    MAX_YEAR, MAX_ZONE, MIN_YEAR,
};

/// Where an event is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Visible to its organizer only; may be edited and published.
    Draft,
    /// Public; joins are open.
    Published,
    /// Called off; kept for the record, immutable.
    Canceled,
}

impl EventStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [Self; 3] = [Self::Draft, Self::Published, Self::Canceled];

    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the stored and wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "draft" => Some(Self::Draft),
            "published" => Some(Self::Published),
            "canceled" => Some(Self::Canceled),
            _ => None,
        }
    }
}

/// An event (times in UTC, and in the event's time zone as `*_local`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Event id.
    pub id: Uuid,
    /// The organizer's user id.
    pub organizer_id: Uuid,
    /// Title.
    #[schema(schema_with = out::title)]
    pub title: String,
    /// Description (may be empty).
    #[schema(schema_with = out::description)]
    pub description: String,
    /// City.
    #[schema(schema_with = out::city)]
    pub city: String,
    /// Category.
    #[schema(schema_with = out::category)]
    pub category: String,
    /// Venue (may be empty).
    #[schema(schema_with = out::venue)]
    pub venue: String,
    /// IANA time zone.
    #[schema(schema_with = out::time_zone)]
    pub time_zone: String,
    /// Whether it takes place online: its join link goes to the organizer, moderators, admins
    /// and the users who hold a seat only (`GET /api/v1/events/{id}/online-link`).
    #[serde(default)]
    pub online: bool,
    /// The join link, answered to the organizer only (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = out::online_url)]
    pub online_url: Option<String>,
    /// Its cover picture, when it has one (`PUT /api/v1/events/{id}/cover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover: Option<Cover>,
    /// Start (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// End (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// The start in the event's time zone (RFC 3339 with that zone's offset then).
    #[schema(schema_with = out::starts_at_local)]
    pub starts_at_local: String,
    /// The end in the event's time zone.
    #[schema(schema_with = out::ends_at_local)]
    pub ends_at_local: String,
    /// Seats; `0` = unlimited.
    #[schema(minimum = 0)]
    pub capacity: u32,
    /// A draft is visible to its organizer only.
    #[schema(schema_with = out::status)]
    pub status: EventStatus,
    /// Why it was canceled or unpublished, when a reason was given; `null` otherwise.
    #[schema(schema_with = out::status_reason, required = true)]
    pub status_reason: Option<String>,
    /// Grows by one with every change (a calendar's `SEQUENCE`).
    #[schema(minimum = 1)]
    pub version: u64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// `POST /api/v1/events`: a new event (a draft). Every field but `description`, `venue`,
/// `time_zone` and `capacity` is required.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EventInput)]
pub struct NewEvent {
    /// Title.
    #[schema(schema_with = input::title)]
    pub title: String,
    /// Description; default empty.
    #[serde(default)]
    #[schema(schema_with = input::description)]
    pub description: String,
    /// City.
    #[schema(schema_with = input::city)]
    pub city: String,
    /// Category.
    #[schema(schema_with = input::category)]
    pub category: String,
    /// Venue; default empty.
    #[serde(default)]
    #[schema(schema_with = input::venue)]
    pub venue: String,
    /// IANA time zone; default `UTC`.
    #[serde(default)]
    #[schema(schema_with = input::time_zone)]
    pub time_zone: Option<String>,
    /// An online event's join link (`https://`); absent or `""`: none.
    #[serde(default)]
    #[schema(schema_with = input::online_url)]
    pub online_url: Option<String>,
    /// Start: RFC 3339, or a local time without offset in `time_zone`.
    #[schema(schema_with = input::time)]
    pub starts_at: String,
    /// End, like the start.
    #[schema(schema_with = input::time)]
    pub ends_at: String,
    /// Seats; default `0` (unlimited). `5.0` is `5`.
    #[serde(default, deserialize_with = "crate::json::whole_number")]
    #[schema(schema_with = input::capacity)]
    pub capacity: i64,
}

/// `PATCH /api/v1/events/{id}`: the fields to change, at least one (`{}` is refused with 400);
/// absent or `null`: unchanged.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct EventPatch {
    /// New title.
    #[schema(schema_with = input::title)]
    pub title: Option<String>,
    /// New description (`""` clears it).
    #[schema(schema_with = input::description)]
    pub description: Option<String>,
    /// New city.
    #[schema(schema_with = input::city)]
    pub city: Option<String>,
    /// New category.
    #[schema(schema_with = input::category)]
    pub category: Option<String>,
    /// New venue (`""` clears it).
    #[schema(schema_with = input::new_venue)]
    pub venue: Option<String>,
    /// New time zone: the start and end stay the same instants unless they are sent too.
    #[schema(schema_with = input::new_time_zone)]
    pub time_zone: Option<String>,
    /// New join link (`""` removes it: the event is no longer online).
    #[schema(schema_with = input::new_online_url)]
    pub online_url: Option<String>,
    /// New start: RFC 3339, or a local time without offset in the (new) time zone.
    #[schema(schema_with = input::time)]
    pub starts_at: Option<String>,
    /// New end, like the start.
    #[schema(schema_with = input::time)]
    pub ends_at: Option<String>,
    /// New capacity.
    #[serde(default, deserialize_with = "crate::json::optional_whole_number")]
    #[schema(schema_with = input::new_capacity)]
    pub capacity: Option<i64>,
}

impl EventPatch {
    /// Whether no field is set (a `PATCH` of `{}`, or of `null`s only).
    pub fn is_empty(&self) -> bool {
        let Self { title, description, city, category, venue, time_zone, online_url, starts_at, ends_at, capacity } =
            self;
        [title, description, city, category, venue, time_zone, online_url, starts_at, ends_at]
            .iter()
            .all(|f| f.is_none())
            && capacity.is_none()
    }
}

/// A list of events without pages (the trending and for-you feeds).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// The events, best first.
    pub items: Vec<Event>,
}

/// One view of an event's page, as the gateway counts it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// The event.
    pub event_id: Uuid,
    /// Who viewed it, as the gateway knows them (`u:<user id>`, or `a:<address>`); hashed with
    /// the day's salt before it is stored.
    pub viewer: String,
}

/// `POST /api/v1/events/views` (the gateway's own, not exposed): views to count.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewBatch {
    /// 1 to 500 views.
    pub views: Vec<View>,
}

/// `POST /api/v1/events/suggestions` (the gateway's own): what one person's for-you feed is
/// made of.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuggestionRequest {
    /// Organizers they follow (up to 100).
    #[serde(default)]
    pub organizers: Vec<Uuid>,
    /// Categories of events they joined (names outside the set are ignored).
    #[serde(default)]
    pub categories: Vec<String>,
    /// Their home city.
    #[serde(default)]
    pub city: Option<String>,
    /// Events to leave out: those they joined already (up to 100).
    #[serde(default)]
    pub exclude: Vec<Uuid>,
    /// 1 to 50; default 20.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// An event's cover picture: JPEG files on this origin, named by their content, so each URL
/// can be cached for good (`Cache-Control: public, max-age=31536000, immutable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cover {
    /// 640×360, for lists (`/api/v1/events/{id}/cover/{hash}/card.jpg`).
    pub card: String,
    /// 1280×720, for the event's page (`…/wide.jpg`).
    pub wide: String,
}

impl Cover {
    /// The URLs of the cover of event `id` stored under `hash`.
    pub fn of(id: Uuid, hash: &str) -> Self {
        Self {
            card: format!("/api/v1/events/{id}/cover/{hash}/card.jpg"),
            wide: format!("/api/v1/events/{id}/cover/{hash}/wide.jpg"),
        }
    }
}

/// `GET /api/v1/events/{id}/online-link`: an online event's join link, for its organizer, a
/// moderator or admin, and the users who hold a seat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnlineLink {
    /// The `https://` address to join at.
    #[schema(schema_with = out::online_url)]
    pub url: String,
}

/// `POST /api/v1/events/{id}/cancel` and `…/unpublish` (the body is optional). Optional for the
/// organizer; required of a moderator or admin acting on someone else's event. The reason shows
/// on the event (`status_reason`) and reaches every participant.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReasonRequest)]
pub struct ReasonBody {
    /// Trimmed; empty means none.
    #[schema(schema_with = input::reason)]
    pub reason: Option<String>,
}

/// `POST /api/v1/events/batch`: events by id.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 100 ids.
    #[schema(schema_with = input::ids)]
    pub ids: Vec<String>,
}

/// `POST /api/v1/events/batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// By id; unknown or not visible ids are absent.
    pub events: BTreeMap<String, Event>,
}

/// `GET /api/v1/meta/cities`: the cities of published events that have not ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CityList {
    /// Most events first.
    pub items: Vec<CityCount>,
}

/// A city and how many listed events it has.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CityCount {
    /// The name as an organizer wrote it.
    pub city: String,
    /// Published events there that have not ended.
    #[schema(minimum = 1)]
    pub events: i64,
}

/// Schemas of the fields of events as answered.
mod out {
    use super::*;

    pub(super) fn title() -> ObjectBuilder {
        bounded(MAX_TITLE)
    }
    pub(super) fn description() -> ObjectBuilder {
        bounded(MAX_DESCRIPTION).description(Some("May be empty."))
    }
    pub(super) fn city() -> ObjectBuilder {
        bounded(MAX_CITY)
    }
    pub(super) fn category() -> ObjectBuilder {
        bounded(MAX_CATEGORY)
    }
    pub(super) fn venue() -> ObjectBuilder {
        bounded(MAX_VENUE).description(Some("Where it takes place (may be empty)."))
    }
    pub(super) fn time_zone() -> ObjectBuilder {
        bounded(MAX_ZONE).description(Some("IANA time zone (canonical name, e.g. `Europe/Berlin`); `UTC` unless set."))
    }
    pub(super) fn online_url() -> ObjectBuilder {
        bounded(MAX_ONLINE_URL).description(Some("The join link (`https://`); answered to the organizer only."))
    }
    pub(super) fn starts_at_local() -> ObjectBuilder {
        fields::date_time()
            .description(Some("The start in the event's time zone (RFC 3339 with that zone's offset then)."))
    }
    pub(super) fn ends_at_local() -> ObjectBuilder {
        fields::date_time().description(Some("The end in the event's time zone."))
    }
    pub(super) fn status() -> ObjectBuilder {
        fields::string()
            .enum_values(Some(EventStatus::ALL.map(EventStatus::as_str)))
            .description(Some("A draft is visible to its organizer only."))
    }
    pub(super) fn status_reason() -> ObjectBuilder {
        fields::nullable(bounded(MAX_REASON), Type::String)
            .description(Some("Why the event was canceled or unpublished, when a reason was given."))
    }
}

/// Schemas of the fields of event input.
/// The categories an event may have: `(name, label)`. Events store the name; pages show the
/// label. Events saved before the set was fixed keep what they had until changed.
pub const CATEGORIES: [(&str, &str); 12] = [
    ("music", "Music"),
    ("arts", "Arts and culture"),
    ("food", "Food and drink"),
    ("sport", "Sport and fitness"),
    ("outdoors", "Outdoors"),
    ("tech", "Tech"),
    ("learning", "Learning"),
    ("community", "Community"),
    ("family", "Family"),
    ("nightlife", "Nightlife"),
    ("wellbeing", "Health and wellbeing"),
    ("other", "Other"),
];

/// The label of category `name` (case-insensitive), or `name` itself for one outside the set.
pub fn category_label(name: &str) -> &str {
    CATEGORIES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.trim())).map_or(name, |(_, label)| label)
}

/// The set's name for `value` (case-insensitive, trimmed), if it is one.
pub fn category_name(value: &str) -> Option<&'static str> {
    CATEGORIES.iter().find(|(n, _)| n.eq_ignore_ascii_case(value.trim())).map(|(n, _)| *n)
}

mod input {
    use super::*;

    pub(super) fn title() -> ObjectBuilder {
        required_text(MAX_TITLE)
    }
    pub(super) fn description() -> ObjectBuilder {
        optional_text(MAX_DESCRIPTION)
    }
    pub(super) fn city() -> ObjectBuilder {
        required_text(MAX_CITY)
    }
    pub(super) fn category() -> ObjectBuilder {
        let names: Vec<serde_json::Value> = CATEGORIES.iter().map(|(n, _)| serde_json::Value::from(*n)).collect();
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(names))
            .description(Some("One of the fixed categories (case-insensitive): docs/cityevents.md, *Categories*."))
    }
    pub(super) fn venue() -> ObjectBuilder {
        optional_text(MAX_VENUE).description(Some("Where it takes place; default empty."))
    }
    pub(super) fn new_venue() -> ObjectBuilder {
        optional_text(MAX_VENUE).description(Some("New venue (`\"\"` clears it)."))
    }
    pub(super) fn time_zone() -> ObjectBuilder {
        required_text(MAX_ZONE).description(Some("IANA time zone name (case-insensitive); default `UTC`."))
    }
    pub(super) fn online_url() -> ObjectBuilder {
        fields::nullable(optional_text(MAX_ONLINE_URL), Type::String).description(Some(
            "An online event's join link: an `https://` address without user or password. Given to the organizer, \
             moderators, admins and the users who hold a seat only. Absent, `null` or `\"\"`: not online.",
        ))
    }
    pub(super) fn new_online_url() -> ObjectBuilder {
        optional_text(MAX_ONLINE_URL).description(Some("New join link (`https://`); `\"\"` removes it."))
    }
    pub(super) fn new_time_zone() -> ObjectBuilder {
        required_text(MAX_ZONE).description(Some(
            "New IANA time zone: the start and end keep their instants unless they are sent too (then read in the new zone).",
        ))
    }
    pub(super) fn time() -> ObjectBuilder {
        fields::string().min_length(Some(1)).max_length(Some(MAX_TIME)).description(Some(format!(
            "RFC 3339 with an offset (`2030-05-01T19:00:00+02:00`), or a local date and time without one \
             (`2030-05-01T19:00`) read in `time_zone`. Years {MIN_YEAR}-{MAX_YEAR}."
        )))
    }
    pub(super) fn capacity() -> ObjectBuilder {
        integer(0).maximum(Some(MAX_CAPACITY)).description(Some(format!(
            "Seats, 0 to {MAX_CAPACITY}; `0` = unlimited. A whole number (`5.0` is read as `5`)."
        )))
    }
    pub(super) fn new_capacity() -> ObjectBuilder {
        integer(0).maximum(Some(MAX_CAPACITY)).description(Some(format!(
            "New seats, 0 to {MAX_CAPACITY} (`0` = unlimited). A whole number (`5.0` is read as `5`)."
        )))
    }
    pub(super) fn reason() -> ObjectBuilder {
        fields::nullable(optional_text(MAX_REASON), Type::String).description(Some("Trimmed; empty means none."))
    }
    pub(super) fn ids() -> utoipa::openapi::schema::ArrayBuilder {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(fields::uuid())
            .min_items(Some(1))
            .max_items(Some(crate::limits::MAX_BATCH))
    }
}
