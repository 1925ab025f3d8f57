//! The event catalogue: every event the platform publishes, its topic and its payload.
//!
//! | type | topic | producer | consumers | key |
//! |---|---|---|---|---|
//! | `event.published` | [`EVENTS_TOPIC`] | events | joins, notifier | event id |
//! | `event.updated` | [`EVENTS_TOPIC`] | events | joins | event id |
//! | `event.unpublished` | [`EVENTS_TOPIC`] | events | joins, notifier | event id |
//! | `event.canceled` | [`EVENTS_TOPIC`] | events | joins, notifier | event id |
//! | `join.confirmed` … `join.kicked` | [`JOINS_TOPIC`] | joins | notifier | event id |
//! | `account.contact` | [`ACCOUNTS_TOPIC`] | auth | notifier | user id |
//! | `account.banned`, `account.unbanned` | [`ACCOUNTS_TOPIC`] | auth | events | user id |
//! | `moderation.recorded` | [`MODERATION_TOPIC`] | events, joins | auth (its audit log) | target |
//! | `report.resolved` | [`MODERATION_TOPIC`] | events | notifier (the reporter is told) | reporter |
//! | `mail.requested` | [`MAIL_TOPIC`] | auth, notifier | notifier (mailer) | user id |
//! | `session.revoked` | [`SESSIONS_TOPIC`] | auth | every instance of every service (fan-out) | user id |
//! | `session.sync_requested` | [`SESSIONS_TOPIC`] | every service, on (re)subscribing | auth | — |
//!
//! Payloads are versioned (`VERSION`); an incompatible change adds a new version and consumers
//! keep decoding the old one. Times are RFC 3339 UTC on the wire.
//!
//! `event.*` payloads also carry the event's own `version` (it grows with every change the
//! events service commits). A consumer remembers the last version it applied and ignores an
//! older one, so a redelivered or retried `event.updated` can never overwrite a newer state,
//! whatever order the broker hands them out in. `0` means "unknown" (a payload written before
//! the field existed) and is applied as before.

use keel::events::Event;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Topic of `event.*` (keyed by event id, so one event's changes arrive in order).
pub const EVENTS_TOPIC: &str = "cityevents.events";
/// Topic of `join.*` (keyed by event id).
pub const JOINS_TOPIC: &str = "cityevents.joins";
/// Topic of `account.*` (keyed by user id).
pub const ACCOUNTS_TOPIC: &str = "cityevents.accounts";
/// Topic of `moderation.recorded` (keyed by target): moderation done in other services, for
/// auth's audit log.
pub const MODERATION_TOPIC: &str = "cityevents.moderation";
/// Topic of `mail.requested` (keyed by user id). Its messages can carry single-use account
/// tokens: only the notifier's mailer consumes it.
pub const MAIL_TOPIC: &str = "cityevents.mail";

/// Topic of `session.*`: session versions. Every instance of every service that verifies
/// access tokens follows it with a fan-out subscription of its own.
pub const SESSIONS_TOPIC: &str = "cityevents.sessions";

/// The state of an event that consumers need: sent whole in `event.published` and
/// `event.updated`, so a consumer never has to call back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSnapshot {
    /// Event id.
    pub event_id: Uuid,
    /// The user who created it.
    pub organizer_id: Uuid,
    /// Title.
    pub title: String,
    /// City.
    pub city: String,
    /// Category.
    pub category: String,
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// End (after the start).
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// Seats; `0` = unlimited.
    pub capacity: u32,
    /// `published`, `canceled`, or `draft` in `event.unpublished`.
    pub status: String,
    /// Where it takes place (may be empty).
    #[serde(default)]
    pub venue: String,
    /// Its IANA time zone (`UTC` when absent).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The event's version in the events service when this was sent; newer is larger. `0`
    /// (absent) = unknown.
    #[serde(default)]
    pub version: u64,
    /// A fingerprint of an online event's join link (16 hex characters of its SHA-256), empty
    /// when it has none: a new link gives a new one. The link itself never goes on the bus.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_tag: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// `event.published`: a draft became public; joins open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventPublished(pub EventSnapshot);

/// `event.updated`: a published event changed (a capacity change may promote waitlisted users).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventUpdated(pub EventSnapshot);

/// `event.canceled`: every join of the event is canceled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCanceled {
    /// Event id.
    pub event_id: Uuid,
    /// The organizer.
    pub organizer_id: Uuid,
    /// Title (for notifications).
    pub title: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub canceled_at: OffsetDateTime,
    /// The event's version after the cancel (see [`EventSnapshot::version`]).
    #[serde(default)]
    pub version: u64,
    /// Why, in the words of who canceled it (for participants); absent when none was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `event.unpublished`: a published event went back to draft (its organizer, while nobody had
/// joined, or a moderator, whatever the joins). Joins close; any still active are canceled with
/// reason `event_unpublished`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventUnpublished {
    /// The event as it is now (status `draft`).
    #[serde(flatten)]
    pub event: EventSnapshot,
    /// Why, when a reason was given (a moderator always gives one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event for EventUnpublished {
    const TYPE: &'static str = "event.unpublished";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.event.event_id.to_string())
    }
}

impl Event for EventPublished {
    const TYPE: &'static str = "event.published";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.0.event_id.to_string())
    }
}

impl Event for EventUpdated {
    const TYPE: &'static str = "event.updated";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.0.event_id.to_string())
    }
}

impl Event for EventCanceled {
    const TYPE: &'static str = "event.canceled";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.event_id.to_string())
    }
}

/// What every `join.*` event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinChange {
    /// Join id.
    pub join_id: Uuid,
    /// Event id.
    pub event_id: Uuid,
    /// The participant.
    pub user_id: Uuid,
    /// The event's title when it happened (for notifications).
    pub event_title: String,
    /// The join's status after the change: `confirmed`, `waitlisted` or `canceled`.
    pub status: String,
    /// Why, when it is not the user's own action: `event_canceled`, `kicked`, `banned`,
    /// `capacity_increased`, `seat_freed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With reason `event_canceled` or `event_unpublished`: the reason given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The event's organizer (absent in messages from before it was carried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizer_id: Option<Uuid>,
    /// When. Strictly increasing across one participation's changes (one user's in one event),
    /// so it orders them wherever they are applied.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

macro_rules! join_event {
    ($(#[$doc:meta])* $name:ident, $ty:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub JoinChange);

        impl Event for $name {
            const TYPE: &'static str = $ty;
            const VERSION: u32 = 1;
            fn key(&self) -> Option<String> {
                Some(self.0.event_id.to_string())
            }
        }
    };
}

join_event!(
    /// `join.confirmed`: the user has a seat.
    JoinConfirmed,
    "join.confirmed"
);
join_event!(
    /// `join.waitlisted`: the event was full; the user is on its FIFO waitlist.
    JoinWaitlisted,
    "join.waitlisted"
);
join_event!(
    /// `join.promoted`: a seat freed up and the oldest waitlisted user got it.
    JoinPromoted,
    "join.promoted"
);
join_event!(
    /// `join.canceled`: the user left, or the event was canceled (`reason`).
    JoinCanceled,
    "join.canceled"
);
join_event!(
    /// `join.kicked`: the organizer removed the user (and maybe banned them: `reason`).
    JoinKicked,
    "join.kicked"
);

/// `account.contact`: where and how to write to a user. Sent when the account is created, when
/// its address is verified, and once for accounts older than the mail channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountContact {
    /// The user.
    pub user_id: Uuid,
    /// The address (normalized).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Whether the user proved the address is theirs; only verified addresses get mail other
    /// than account-security mail.
    pub verified: bool,
    /// The contact's version: strictly increasing per user, so a consumer keeps the newest
    /// whatever order it applies them in (absent in messages from before it was carried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

impl Event for AccountContact {
    const TYPE: &'static str = "account.contact";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// `account.banned`: a moderator or admin banned the account (it cannot sign in, its sessions
/// ended); its events are hidden until `account.unbanned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBanned {
    /// The banned user.
    pub user_id: Uuid,
    /// Who banned them.
    pub by: Uuid,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Grows with every ban and lift of this account: a message older than the one applied is
    /// ignored.
    pub version: u64,
}

impl Event for AccountBanned {
    const TYPE: &'static str = "account.banned";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// `account.unbanned`: the ban was lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountUnbanned {
    /// The user.
    pub user_id: Uuid,
    /// Who lifted the ban.
    pub by: Uuid,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// See [`AccountBanned::version`].
    pub version: u64,
}

impl Event for AccountUnbanned {
    const TYPE: &'static str = "account.unbanned";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// `moderation.recorded`: a moderation action another service carried out (a moderator's
/// cancel or unpublish, a ban from an event), for the platform's audit log, which auth keeps.
/// Enqueued in the transaction of the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerationRecorded {
    /// Who did it.
    pub actor: Uuid,
    /// What, e.g. `event.cancel`, `event.unpublish`, `event.ban`, `event.unban`.
    pub action: String,
    /// On what, e.g. `event:<id>`, `event:<id>/user:<id>`.
    pub target: String,
    /// Why, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else worth keeping (an expiry, the organizer).
    #[serde(default)]
    pub details: serde_json::Value,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for ModerationRecorded {
    const TYPE: &'static str = "moderation.recorded";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.target.clone())
    }
}

/// `report.resolved`: a moderator resolved the report `report_id`; its reporter is told (the
/// notifier). On [`MODERATION_TOPIC`], enqueued with the resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportResolved {
    /// The report.
    pub report_id: Uuid,
    /// Who reported.
    pub reporter_id: Uuid,
    /// The reported event, when an event was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// What was reported, as the reporter reads it: the event's title, or `an account`.
    pub subject: String,
    /// `dismissed`, `unpublished`, `canceled` or `banned`.
    pub outcome: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for ReportResolved {
    const TYPE: &'static str = "report.resolved";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.reporter_id.to_string())
    }
}

/// What a mail says: the template and what it fills in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum Mail {
    /// Confirm the address with this single-use token.
    VerifyEmail {
        /// The token (in clear: only its hash is stored).
        token: String,
        /// When it stops working.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// Choose a new password with this single-use token.
    ResetPassword {
        /// The token (in clear: only its hash is stored).
        token: String,
        /// When it stops working.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// The password was changed (or reset) and every other session ended.
    PasswordChanged,
    /// A provider (its name) was linked to the account: a new way to sign in.
    SignInAdded {
        /// The provider's name, as the site shows it.
        provider: String,
    },
    /// Someone tried to register an account with this address, which has one.
    AlreadyRegistered,
    /// Someone tried to register an account with this address, which looks like an existing
    /// account's (the same UTS #39 skeleton), so it cannot be used.
    AddressUnavailable,
    /// An event the user joined was canceled (or taken back to draft).
    EventCanceled {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
        /// Why, in the words of who called it off; absent when none was given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A seat opened up and the user, waitlisted, got it.
    WaitlistPromoted {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
    },
    /// The organizer removed the user from an event.
    Removed {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
    },
    /// An organizer the user follows published an event.
    FollowedPublished {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
        /// The organizer's name, when the notifier knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        organizer: Option<String>,
        /// When it starts, on the venue's clock with the zone named (`2031-06-20 21:00
        /// (Europe/Lisbon)`).
        when: String,
    },
    /// The user joined an event and holds a seat (with the event in their calendar).
    Joined {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
    },
    /// An event the user holds a seat in or waits for moved, or changed its venue or join link.
    EventChanged {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
        /// What changed, as the notification says it.
        change: String,
    },
    /// An event the user holds a seat in starts soon.
    Reminder {
        /// The event.
        event_id: Uuid,
        /// Its title.
        title: String,
        /// How soon, as the mail says it (`in 1 hour`).
        soon: String,
    },
}

/// The kinds of mail a user can turn off ([`Mail::preference`]); account-security mail cannot be.
pub const MAIL_PREFERENCES: [&str; 7] =
    ["event_canceled", "waitlist_promoted", "removed", "followed_published", "joined", "event_changed", "reminders"];

impl Mail {
    /// The template's name (`verify_email`, …).
    pub fn template(&self) -> &'static str {
        match self {
            Self::VerifyEmail { .. } => "verify_email",
            Self::ResetPassword { .. } => "reset_password",
            Self::PasswordChanged => "password_changed",
            Self::SignInAdded { .. } => "sign_in_added",
            Self::AlreadyRegistered => "already_registered",
            Self::AddressUnavailable => "address_unavailable",
            Self::EventCanceled { .. } => "event_canceled",
            Self::WaitlistPromoted { .. } => "waitlist_promoted",
            Self::Removed { .. } => "removed",
            Self::FollowedPublished { .. } => "followed_published",
            Self::Joined { .. } => "joined",
            Self::EventChanged { .. } => "event_changed",
            Self::Reminder { .. } => "reminder",
        }
    }

    /// The event the mail is about, if it is about one.
    pub fn event_id(&self) -> Option<Uuid> {
        match self {
            Self::EventCanceled { event_id, .. }
            | Self::WaitlistPromoted { event_id, .. }
            | Self::Removed { event_id, .. }
            | Self::FollowedPublished { event_id, .. }
            | Self::Joined { event_id, .. }
            | Self::EventChanged { event_id, .. }
            | Self::Reminder { event_id, .. } => Some(*event_id),
            Self::VerifyEmail { .. }
            | Self::ResetPassword { .. }
            | Self::PasswordChanged
            | Self::SignInAdded { .. }
            | Self::AlreadyRegistered
            | Self::AddressUnavailable => None,
        }
    }

    /// The preference that turns this mail off, or `None` for account-security mail, which is
    /// always sent (to the address in the request, verified or not).
    pub fn preference(&self) -> Option<&'static str> {
        match self {
            Self::EventCanceled { .. } => Some(MAIL_PREFERENCES[0]),
            Self::WaitlistPromoted { .. } => Some(MAIL_PREFERENCES[1]),
            Self::Removed { .. } => Some(MAIL_PREFERENCES[2]),
            Self::FollowedPublished { .. } => Some(MAIL_PREFERENCES[3]),
            Self::Joined { .. } => Some(MAIL_PREFERENCES[4]),
            Self::EventChanged { .. } => Some(MAIL_PREFERENCES[5]),
            Self::Reminder { .. } => Some(MAIL_PREFERENCES[6]),
            Self::VerifyEmail { .. }
            | Self::ResetPassword { .. }
            | Self::PasswordChanged
            | Self::SignInAdded { .. }
            | Self::AlreadyRegistered
            | Self::AddressUnavailable => None,
        }
    }
}

/// `mail.requested`: send `mail` to a user. Account-security mail names its address (`to`,
/// `name`: the account's, even before it is verified); any other goes to the user's verified
/// contact address, if the user has not turned its kind off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailRequested {
    /// The recipient.
    pub user_id: Uuid,
    /// The address to write to; `None`: the user's verified contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The name to greet; `None`: the contact's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What to say.
    pub mail: Mail,
}

impl Event for MailRequested {
    const TYPE: &'static str = "mail.requested";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// `session.revoked`: access tokens of `user_id` whose `sv` claim is below `version` are
/// refused from now on (the user's sessions were ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevoked {
    /// The user.
    pub user_id: Uuid,
    /// The user's session version now; tokens carrying a lower one are refused.
    pub version: u64,
}

impl Event for SessionRevoked {
    const TYPE: &'static str = "session.revoked";
    const VERSION: u32 = 1;
    fn key(&self) -> Option<String> {
        Some(self.user_id.to_string())
    }
}

/// `session.sync_requested`: a follower of [`SESSIONS_TOPIC`] has just (re)subscribed and may
/// have missed raises; auth answers by sending the recent `session.revoked` again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSyncRequested {
    /// Who asks (for the logs).
    pub service: String,
}

impl Event for SessionSyncRequested {
    const TYPE: &'static str = "session.sync_requested";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preferences the document states (`MailPreferences`) are the ones a user can set.
    #[test]
    fn the_document_lists_every_mail_preference() {
        let schemas = cityevents_api::schemas();
        let json = serde_json::to_value(&schemas["MailPreferences"]).unwrap();
        let mut stated: Vec<&str> = json["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let mut known = MAIL_PREFERENCES.to_vec();
        stated.sort_unstable();
        known.sort_unstable();
        assert_eq!(stated, known);
    }

    use keel::events::Envelope;

    #[test]
    fn mail_requests_round_trip_with_their_template_named() {
        let m = MailRequested {
            user_id: Uuid::now_v7(),
            to: Some("ada@example.com".into()),
            name: None,
            mail: Mail::VerifyEmail { token: "t".into(), expires_at: OffsetDateTime::UNIX_EPOCH },
        };
        let env = Envelope::new("cityevents-auth", &m).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["mail"]["template"], "verify_email");
        assert!(json.get("name").is_none());
        assert_eq!(env.decode::<MailRequested>().unwrap(), m);
        assert_eq!(m.mail.template(), "verify_email");
        assert_eq!(m.mail.preference(), None);
        let canceled = Mail::EventCanceled { event_id: Uuid::nil(), title: "Jazz".into(), reason: None };
        assert_eq!(canceled.preference(), Some("event_canceled"));
    }

    #[test]
    fn join_events_round_trip_through_an_envelope() {
        let change = JoinChange {
            join_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            event_title: "Jazz".into(),
            status: "confirmed".into(),
            reason: None,
            note: None,
            organizer_id: None,
            at: OffsetDateTime::UNIX_EPOCH,
        };
        let env = Envelope::new("cityevents-joins", &JoinConfirmed(change.clone())).unwrap();
        assert_eq!(env.ty, "join.confirmed");
        assert_eq!(env.decode::<JoinConfirmed>().unwrap().0, change);
        assert!(env.decode::<JoinPromoted>().is_err(), "type is checked on decode");
    }
}
