//! The notifier's wire types: in-app notifications and mail preferences.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::fields;

/// What a notification's `kind` may be.
pub const KINDS: [&str; 12] = [
    "join.confirmed",
    "join.waitlisted",
    "join.promoted",
    "join.canceled",
    "join.kicked",
    "event.canceled",
    "event.unpublished",
    "event.changed",
    "event.activity",
    "event.followed",
    "event.reminder",
    "report.resolved",
];

/// An in-app notification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// Its id.
    pub id: Uuid,
    /// What happened.
    #[schema(schema_with = kind)]
    pub kind: String,
    /// The event it is about (`report.resolved` about an account: the nil id).
    pub event_id: Uuid,
    /// What to show.
    pub message: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the user marked it read; `null` while unread.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(schema_with = read_at, required = true)]
    pub read_at: Option<OffsetDateTime>,
}

/// A page of notifications, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    /// Notifications.
    pub items: Vec<Notification>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/me/notifications/unread-count`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnreadCount {
    /// Unread notifications.
    #[schema(minimum = 0)]
    pub unread: u64,
}

/// `POST /api/v1/me/notifications/read-all`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Marked {
    /// Notifications marked read by this call.
    #[schema(minimum = 0)]
    pub marked: u64,
}

/// Which mails the user gets (every one is on until turned off).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MailPreferences {
    /// An event you joined was canceled.
    pub event_canceled: bool,
    /// A seat opened up and you got it.
    pub waitlist_promoted: bool,
    /// The organizer removed you from an event.
    pub removed: bool,
    /// An organizer you follow published an event.
    pub followed_published: bool,
    /// You joined an event (the mail carries it for your calendar).
    pub joined: bool,
    /// An event you joined moved, or changed its venue or join link.
    pub event_changed: bool,
    /// An event you hold a seat in starts soon (24 hours and 1 hour before, by default).
    pub reminders: bool,
}

/// `PUT /api/v1/me/mail-preferences`: the preferences to change, at least one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct MailPreferencesPatch {
    /// An event you joined was canceled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub event_canceled: Option<bool>,
    /// A seat opened up and you got it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub waitlist_promoted: Option<bool>,
    /// The organizer removed you from an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub removed: Option<bool>,
    /// An organizer you follow published an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub followed_published: Option<bool>,
    /// You joined an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub joined: Option<bool>,
    /// An event you joined moved, or changed its venue or join link.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub event_changed: Option<bool>,
    /// An event you hold a seat in starts soon.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reminders: Option<bool>,
}

fn kind() -> ObjectBuilder {
    fields::string().enum_values(Some(KINDS)).description(Some(
        "`join.*`: the caller's own participation changed; `event.changed`: an event the caller joined moved or \
         changed venue; `event.canceled`, `event.unpublished`: the caller's event was called off; \
         `event.activity`: who joined and left the caller's event lately (one per event every \
         `app.digest_interval`); `event.followed`: an organizer the caller follows published an event; \
         `event.reminder`: an event the caller holds a seat in starts soon (`app.reminders.before`); \
         `report.resolved`: a moderator resolved the caller's report (about an event, or an account: \
         then `event_id` is the nil id).",
    ))
}

fn read_at() -> ObjectBuilder {
    fields::nullable(fields::date_time(), Type::String)
}

/// The caller follows an organizer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Follow {
    /// The organizer.
    pub organizer_id: Uuid,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// A page of the organizers the caller follows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FollowPage {
    /// Newest first.
    pub items: Vec<Follow>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = crate::fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

/// How many people follow an organizer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Followers {
    /// Followers.
    #[schema(minimum = 0)]
    pub followers: u64,
}
