//! The joins service's wire types: participations, seat counts and bans from events.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::fields::{self, bounded, optional_text};
use crate::limits::MAX_REASON;

/// What a join's `status` may be.
pub const JOIN_STATUSES: [&str; 4] = ["confirmed", "waitlisted", "canceled", "kicked"];

/// A participation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Join {
    /// Its id.
    pub join_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// The participant.
    pub user_id: Uuid,
    /// `kicked`: removed or banned by the organizer or a moderator (see `reason`).
    #[schema(schema_with = status)]
    pub status: String,
    /// Place on the waitlist (waitlisted only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, nullable = false)]
    pub position: Option<i64>,
    /// Why, when it was not the user's own doing (`kicked`, `banned`, `event_canceled`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// When the user joined.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One of the caller's joins, with its event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MyJoin {
    /// Its id.
    pub join_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// `kicked`: removed or banned by the organizer or a moderator.
    #[schema(schema_with = status)]
    pub status: String,
    /// The event's title.
    pub title: String,
    /// The event's start.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// The event's end.
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// The event's status.
    #[schema(schema_with = event_status)]
    pub event_status: String,
    /// When the user joined.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A page of the caller's joins.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinPage {
    /// Newest first.
    pub items: Vec<MyJoin>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

/// A participant of an event, as its organizer sees them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Participant {
    /// The join.
    pub join_id: Uuid,
    /// The participant.
    pub user_id: Uuid,
    /// `confirmed` or `waitlisted`.
    #[schema(schema_with = listed_status)]
    pub status: String,
    /// Place on the waitlist (waitlisted only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, nullable = false)]
    pub position: Option<i64>,
    /// When they joined.
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
    /// The user's display name (completed by the gateway).
    #[schema(schema_with = fields::completed_name, required = true)]
    pub name: Option<String>,
}

/// A page of participants (or of the waitlist, in FIFO order).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParticipantPage {
    /// Participants.
    pub items: Vec<Participant>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

/// Seat counts of an event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    /// `0` = unlimited.
    #[schema(minimum = 0)]
    pub capacity: i64,
    /// Confirmed joins.
    #[schema(minimum = 0)]
    pub confirmed: i64,
    /// Joins on the waitlist.
    #[schema(minimum = 0)]
    pub waitlisted: i64,
}

/// Organizer statistics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// `0` = unlimited.
    #[schema(minimum = 0)]
    pub capacity: i64,
    /// Confirmed joins.
    #[schema(minimum = 0)]
    pub confirmed: i64,
    /// Joins on the waitlist.
    #[schema(minimum = 0)]
    pub waitlisted: i64,
    /// Joins canceled by their user or with the event.
    #[schema(minimum = 0)]
    pub canceled: i64,
    /// Participants removed or banned.
    #[schema(minimum = 0)]
    pub kicked: i64,
}

/// `POST /api/v1/events/{id}/bans`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// Who.
    #[schema(schema_with = fields::uuid)]
    pub user_id: String,
    /// Why; required of a moderator or admin banning from someone else's event.
    #[schema(schema_with = ban_reason)]
    pub reason: Option<String>,
    /// Until when (in the future, before 2201); for good when absent.
    #[schema(schema_with = expires_at_input)]
    pub expires_at: Option<String>,
}

/// A ban from an event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ban {
    /// The event.
    pub event_id: Uuid,
    /// Banned.
    #[serde(flatten)]
    pub ban: BanItem,
}

/// A ban from an event, in the event's list of bans.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BanItem {
    /// Who.
    pub user_id: Uuid,
    /// The organizer, moderator or admin who banned.
    pub banned_by: Uuid,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Why, when a reason was given.
    #[schema(schema_with = reason_out, required = true)]
    pub reason: Option<String>,
    /// `null`: for good.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(schema_with = expires_at, required = true)]
    pub expires_at: Option<OffsetDateTime>,
}

/// A ban in the list of an event's bans, with the user's name (completed by the gateway).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListedBan {
    /// The ban.
    #[serde(flatten)]
    pub ban: BanItem,
    /// The user's display name.
    #[schema(schema_with = fields::completed_name, required = true)]
    pub name: Option<String>,
}

/// The bans in force (an expired ban is not listed).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BanPage {
    /// Newest first.
    pub items: Vec<ListedBan>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

fn status() -> ObjectBuilder {
    fields::string().enum_values(Some(JOIN_STATUSES))
}

fn listed_status() -> ObjectBuilder {
    fields::string().enum_values(Some(["confirmed", "waitlisted"]))
}

fn event_status() -> ObjectBuilder {
    fields::string().enum_values(Some(["published", "canceled"]))
}

fn ban_reason() -> ObjectBuilder {
    optional_text(MAX_REASON)
        .description(Some("Why; required of a moderator or admin banning from someone else's event."))
}

fn reason_out() -> ObjectBuilder {
    fields::nullable(bounded(MAX_REASON), Type::String)
}

fn expires_at_input() -> ObjectBuilder {
    fields::date_time().description(Some("Until when (in the future, before 2201); for good when absent."))
}

fn expires_at() -> ObjectBuilder {
    fields::nullable(fields::date_time(), Type::String).description(Some("`null`: for good."))
}

/// Whether the caller has a personal calendar feed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CalendarFeed {
    /// Whether a feed address works now.
    pub active: bool,
    /// When the address in use was made; `null` without one.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub created_at: Option<OffsetDateTime>,
}

/// A new personal calendar feed address: shown once (only its hash is kept).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewCalendarFeed {
    /// The secret: whoever has it reads the caller's calendar.
    #[schema(min_length = 43, max_length = 43)]
    pub token: String,
    /// The feed's path on the gateway (`/api/v1/calendars/{token}/events.ics`).
    pub path: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A feed's secret, as the gateway asks joins for its events (in a body, so it appears in no
/// request path or log).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedToken {
    /// The secret from the feed's address.
    pub token: String,
}

/// One event of a personal feed (joins to the gateway).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedItem {
    /// The event.
    pub event_id: Uuid,
    /// `confirmed`, `waitlisted`, or `canceled` (the event was canceled).
    pub status: String,
}

/// The events of a personal feed, soonest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedItems {
    /// At most 100.
    pub items: Vec<FeedItem>,
}
