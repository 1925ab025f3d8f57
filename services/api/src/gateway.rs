//! What the gateway answers itself or composes from several services: events with their seats,
//! the aggregate event page, the API index, and the problem every error is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Type};

use crate::events::Event;
use crate::fields;

/// The service behind this part did not answer; the rest of the page is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Unavailable {
    /// Always `true`.
    #[schema(schema_with = always_true)]
    pub unavailable: bool,
}

/// Seats of a listed event: `capacity` is the event's (`0` = unlimited), `taken` the confirmed
/// joins, `free` what is left (`null` when unlimited), `waitlisted` who waits.
/// `{"unavailable": true}` when the joins service could not be asked; the page is answered
/// anyway.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Seats {
    /// The counts.
    Known(SeatCounts),
    /// The joins service did not answer.
    Unavailable(Unavailable),
}

/// Seat counts of a listed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatCounts {
    /// The event's capacity (`0` = unlimited).
    #[schema(minimum = 0)]
    pub capacity: u32,
    /// Confirmed joins.
    #[schema(minimum = 0)]
    pub taken: u64,
    /// Seats left; `null` when unlimited.
    #[schema(minimum = 0, required = true)]
    pub free: Option<u64>,
    /// Joins on the waitlist.
    #[schema(minimum = 0)]
    pub waitlisted: u64,
}

/// An event in a list, with its seats.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListedEvent {
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// Its seats.
    pub seats: Seats,
}

/// A page of events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Events.
    pub items: Vec<ListedEvent>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

/// A feed of events, best first, without pages (trending, for you).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventFeed {
    /// Events.
    pub items: Vec<ListedEvent>,
}

/// `GET /api/v1/events/{id}/view`: an event with the caller's join and its seat counts, in one
/// call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// The event.
    pub event: Event,
    /// The caller's join; `null` without a token or when not joined.
    #[schema(schema_with = participation)]
    pub participation: serde_json::Value,
    /// Seat counts; `null` when the event has none (a draft).
    #[schema(schema_with = counts)]
    pub counts: serde_json::Value,
}

/// `GET /api/v1/`: where to start.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiIndex {
    /// "City Events API".
    pub name: String,
    /// The gateway's version.
    pub version: String,
    /// Path of the OpenAPI document.
    pub openapi: String,
    /// Path of the interactive API reference (an HTML page over the document).
    pub reference: String,
    /// Paths of the main collections and actions, by name.
    pub links: BTreeMap<String, String>,
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// URI of the problem type, e.g. `urn:keel:problem:not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What happened, for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
    /// The request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub instance: Option<String>,
    /// The request's `X-Request-ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    /// Machine-readable reason, e.g. `invalid_input`, `RATE_LIMITED`, `SERVICE_DEGRADED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<String>,
    /// One entry per invalid field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldError>>,
}

/// One invalid field of a problem.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field (`a.b`, `ids[2]`, or a header's or query parameter's name).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn always_true() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([true]))
}

fn known_or_unavailable(schema: &str, description: &str) -> OneOfBuilder {
    OneOfBuilder::new()
        .item(Ref::from_schema_name(schema))
        .item(Ref::from_schema_name("Unavailable"))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(description))
}

fn participation() -> OneOfBuilder {
    known_or_unavailable("Join", "The caller's join; `null` without a token or when not joined.")
}

fn counts() -> OneOfBuilder {
    known_or_unavailable("Counts", "Seat counts; `null` when the event has none (a draft).")
}
