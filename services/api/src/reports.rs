//! Reports to the moderators: what the events service's `/api/v1/reports` and
//! `/api/v1/moderation/reports` take and answer.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::fields;

fn details() -> ObjectBuilder {
    fields::nullable(fields::optional_text(MAX_DETAILS), Type::String)
        .description(Some("Trimmed; empty or null means none (then the reason may not be `other`)."))
}

fn note() -> ObjectBuilder {
    fields::nullable(fields::optional_text(MAX_NOTE), Type::String).description(Some("Trimmed; empty means none."))
}

/// The longest `details` of a report (characters).
pub const MAX_DETAILS: usize = 1000;
/// The longest note a moderator leaves when resolving (characters).
pub const MAX_NOTE: usize = 500;

/// What is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ReportKind)]
pub enum Kind {
    /// An event (`target_id`: the event's id).
    Event,
    /// An account (`target_id`: the user's id).
    User,
}

impl Kind {
    /// Its name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::User => "user",
        }
    }
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ReportReason)]
pub enum Reason {
    /// Advertising, repeated or unrelated posts.
    Spam,
    /// A fraud: fake tickets, payment elsewhere, phishing.
    Scam,
    /// Hateful, harassing or abusive.
    Offensive,
    /// False or misleading: the place, the time, who organizes.
    Misleading,
    /// Something else (`details` required).
    Other,
}

impl Reason {
    /// Every reason, in the order forms offer them.
    pub const ALL: [Self; 5] = [Self::Spam, Self::Scam, Self::Offensive, Self::Misleading, Self::Other];

    /// Its name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spam => "spam",
            Self::Scam => "scam",
            Self::Offensive => "offensive",
            Self::Misleading => "misleading",
            Self::Other => "other",
        }
    }

    /// The reason named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What a person reads.
    pub fn label(self) -> &'static str {
        match self {
            Self::Spam => "Spam or advertising",
            Self::Scam => "A scam or fraud",
            Self::Offensive => "Hateful, harassing or abusive",
            Self::Misleading => "False or misleading",
            Self::Other => "Something else",
        }
    }
}

/// `POST /api/v1/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReport {
    /// What is reported.
    pub kind: Kind,
    /// Its id.
    pub target_id: Uuid,
    /// Why.
    pub reason: Reason,
    /// What the moderators should know (required for `other`; at most 1,000 characters).
    #[serde(default)]
    #[schema(schema_with = details)]
    pub details: Option<String>,
}

/// A report as its reporter sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// Its id.
    pub id: Uuid,
    /// What is reported.
    pub kind: Kind,
    /// Its id.
    pub target_id: Uuid,
    /// Why.
    pub reason: Reason,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One open report in the queue. Who sent it is not told: moderators judge what was reported,
/// not who reported it (the reporter hears the outcome by notification).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueuedReport {
    /// Its id.
    pub id: Uuid,
    /// Why.
    pub reason: Reason,
    /// What they wrote.
    #[serde(default)]
    pub details: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The reported event, as the queue shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = ReportedEvent)]
pub struct EventContext {
    /// Its title.
    pub title: String,
    /// `draft`, `published` or `canceled`.
    pub status: String,
    /// Who organizes it.
    pub organizer_id: Uuid,
    /// When it starts.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// Where.
    pub city: String,
}

/// A reported target with its open reports: one line of the queue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = ReportQueueItem)]
pub struct QueueItem {
    /// What is reported.
    pub kind: Kind,
    /// Its id.
    pub target_id: Uuid,
    /// How many reports are open on it.
    pub open: u64,
    /// When the first of them came.
    #[serde(with = "time::serde::rfc3339")]
    pub first_reported_at: OffsetDateTime,
    /// The latest ten, newest first.
    pub reports: Vec<QueuedReport>,
    /// The event, for an event that still exists.
    #[serde(default)]
    pub event: Option<EventContext>,
}

/// `GET /api/v1/moderation/reports`: the targets with open reports, the most reported first,
/// then the longest waiting; at most 50.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[schema(as = ReportQueue)]
pub struct Queue {
    /// The targets.
    pub items: Vec<QueueItem>,
}

/// What a moderator did about a target's reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ReportOutcome)]
pub enum Outcome {
    /// Nothing broke the rules.
    Dismissed,
    /// The event was taken back to a draft.
    Unpublished,
    /// The event was canceled.
    Canceled,
    /// The account was banned.
    Banned,
    /// The account's picture was taken down.
    PictureRemoved,
}

impl Outcome {
    /// Its name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dismissed => "dismissed",
            Self::Unpublished => "unpublished",
            Self::Canceled => "canceled",
            Self::Banned => "banned",
            Self::PictureRemoved => "picture_removed",
        }
    }
}

/// `POST /api/v1/moderation/reports/resolve`: resolves every open report on a target.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReportResolution)]
pub struct Resolve {
    /// What was reported.
    pub kind: Kind,
    /// Its id.
    pub target_id: Uuid,
    /// What was done (the action itself is the events' or accounts' own route).
    pub outcome: Outcome,
    /// Why, for the audit log (at most 500 characters).
    #[serde(default)]
    #[schema(schema_with = note)]
    pub note: Option<String>,
}

/// The answer to a resolve.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = ReportsResolved)]
pub struct Resolved {
    /// How many reports it closed (each reporter is told).
    pub resolved: u64,
}
