//! The auth service's wire types: accounts, sign-in, sessions and account moderation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::fields::{self, bounded, email, mail_token, new_password, password, required_text};
use crate::limits::{LINE, MAX_NAME, MAX_REASON};

/// The roles an account may have.
pub mod roles {
    /// Every registered account.
    pub const USER: &str = "user";
    /// Keeps the platform clean: unpublishes or cancels any event with a reason, bans accounts
    /// and bans users from events. Given by an admin.
    pub const MODERATOR: &str = "moderator";
    /// Created only with `cityevents-auth admin create`; manages roles, and moderates too.
    pub const ADMIN: &str = "admin";
}

/// Every role, least power first.
pub const ROLES: [&str; 3] = [roles::USER, roles::MODERATOR, roles::ADMIN];

/// `POST /api/v1/auth/register`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The address to verify.
    #[schema(schema_with = email)]
    pub email: String,
    /// The password.
    #[schema(schema_with = new_password)]
    pub password: String,
    /// Display name.
    #[schema(schema_with = display_name)]
    pub name: String,
    /// Sign the new account in at once: a new account's answer is 201 with its first session.
    /// The answer then tells whether an account was made (an address already registered, or
    /// looking like one, still gets 202 and no session), which the default keeps to the mail.
    #[serde(default)]
    pub sign_in: bool,
    /// The device's IANA time zone, for the session's place (see `LoginRequest`).
    #[serde(default)]
    #[schema(schema_with = time_zone_hint)]
    pub time_zone: Option<String>,
}

/// `POST /api/v1/auth/login`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The address registered.
    #[schema(schema_with = email)]
    pub email: String,
    /// The password.
    #[schema(schema_with = password)]
    pub password: String,
    /// The `device_token` an earlier sign-in or password reset of this account gave this
    /// device: its attempts are then counted apart, so that failures from elsewhere do not
    /// delay it. Anything else (another account's, expired, malformed) is ignored.
    #[serde(default)]
    #[schema(schema_with = device_token)]
    pub device_token: Option<String>,
    /// The device's IANA time zone (`Europe/Lisbon`), when the client knows it: the session
    /// list names its city as where the sign-in came from. An unknown zone is ignored.
    #[serde(default)]
    #[schema(schema_with = time_zone_hint)]
    pub time_zone: Option<String>,
}

fn time_zone_hint() -> ObjectBuilder {
    fields::nullable(bounded(64), Type::String)
        .description(Some("An IANA time zone name, e.g. Europe/Lisbon; null or left out: not known."))
}

fn device_token() -> ObjectBuilder {
    fields::token().description(Some("A device token from an earlier sign-in or reset of this account."))
}

/// `POST /api/v1/auth/refresh` and `/logout`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last pair.
    #[schema(schema_with = fields::token)]
    pub refresh_token: String,
}

/// `POST /api/v1/auth/verify-email`: the token a verification mail carried.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the mail.
    #[schema(schema_with = mail_token)]
    pub token: String,
}

/// `POST /api/v1/auth/password-reset/request`: where to send the mail.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// The account's address.
    #[schema(schema_with = email)]
    pub email: String,
}

/// `POST /api/v1/auth/password-reset`: the token a reset mail carried and the new password.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    /// The token from the mail.
    #[schema(schema_with = mail_token)]
    pub token: String,
    /// The new password.
    #[schema(schema_with = new_password)]
    pub password: String,
}

/// `POST /api/v1/auth/password`: a signed-in user's change of password.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    /// The password now.
    #[schema(schema_with = password)]
    pub current_password: String,
    /// The new one.
    #[schema(schema_with = new_password)]
    pub new_password: String,
}

/// `PUT /api/v1/admin/users/{id}/role`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// The new role.
    #[schema(schema_with = role_input)]
    pub role: String,
}

/// `POST /api/v1/admin/users/{id}/ban`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountBanRequest {
    /// Shown to the user when they try to sign in, and kept in the audit log.
    #[schema(schema_with = ban_reason)]
    pub reason: String,
}

/// An access token and the refresh token that renews it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    /// A JWT: `sub` = user id, `role`, `iss` = `aud` = `cityevents`.
    pub access_token: String,
    /// Single use: each refresh returns a new pair.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(schema_with = bearer)]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(minimum = 0)]
    pub expires_in: u64,
    /// Sign-in only: this device's proof that it signed in to the account; send it with the
    /// device's next sign-ins (`app.lockout.device_ttl`, 180 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

/// The answer to a password reset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasswordReset {
    /// The resetting device's proof of the mailbox: send it with its sign-ins, which are then
    /// not delayed by failures from elsewhere.
    pub device_token: String,
}

/// The answer to a registration: where the mail went, the same whatever the address's state;
/// with `sign_in` asked and a new account made, also its first session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Registration {
    /// The address the mail went to, normalized (Unicode NFC, lower-case domain).
    #[schema(schema_with = email_out)]
    pub email: String,
    /// The new account's first token pair (201), when the request asked for `sign_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<TokenPair>,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// UUIDv7.
    pub id: Uuid,
    /// The address.
    #[schema(schema_with = email_out)]
    pub email: String,
    /// Display name.
    pub name: String,
    /// `moderator`: may cancel or unpublish any event, ban accounts and ban users from events;
    /// `admin`: that, and manages roles and lists users.
    #[schema(schema_with = role)]
    pub role: String,
    /// Whether the owner proved the address is theirs.
    pub email_verified: bool,
    /// When the account was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A ban on an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountBan {
    /// Why.
    #[schema(schema_with = reason_out)]
    pub reason: String,
    /// The moderator or admin who banned it.
    #[schema(required = true)]
    pub banned_by: Option<Uuid>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub banned_at: OffsetDateTime,
}

/// An account as moderators and admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ManagedUser {
    /// The account.
    #[serde(flatten)]
    pub user: User,
    /// `null` unless banned.
    #[schema(required = true)]
    pub ban: Option<AccountBan>,
}

/// A page of accounts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ManagedUserPage {
    /// Oldest first.
    pub items: Vec<ManagedUser>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(schema_with = fields::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

/// One live session (a refresh-token family).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Its id.
    #[schema(schema_with = fields::uuid)]
    pub id: String,
    /// When the sign-in happened.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When its refresh token was last rotated.
    #[serde(with = "time::serde::rfc3339")]
    pub last_used_at: OffsetDateTime,
    /// The browser or app and its system at sign-in, from its `User-Agent`
    /// (`Firefox on Linux`; `Unknown device` when it did not say).
    #[serde(default)]
    pub device: String,
    /// Roughly where the sign-in came from, worked out at sign-in without asking anyone: the
    /// city of the device's time zone when it gave one, and the network (`203.0.113.0/24`).
    #[serde(default)]
    pub place: String,
    /// Whether this is the caller's own session (the one its access token came with).
    #[serde(default)]
    pub current: bool,
}

/// The caller's live sessions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// Most recently used first.
    pub items: Vec<Session>,
}

// A profile change's fields: `null` means unchanged, as absent does.
fn new_display_name() -> ObjectBuilder {
    crate::fields::nullable(display_name(), Type::String)
}

fn bio() -> ObjectBuilder {
    crate::fields::nullable(
        crate::fields::optional_text(MAX_BIO)
            .description(Some("Up to 500 characters, line breaks kept; empty clears it; `null`: unchanged.")),
        Type::String,
    )
}

fn home_city() -> ObjectBuilder {
    crate::fields::nullable(
        crate::fields::optional_text(crate::limits::MAX_CITY).description(Some(
            "Home city, up to 80 characters (where *Near me* looks); empty clears it; `null`: unchanged.",
        )),
        Type::String,
    )
}

fn display_name() -> ObjectBuilder {
    bounded(MAX_NAME)
        .min_length(Some(1))
        .pattern(Some(LINE))
        .description(Some("Display name; no control characters (tabs and newlines included)."))
}

fn email_out() -> ObjectBuilder {
    fields::formatted(utoipa::openapi::KnownFormat::Email)
}

fn role_input() -> ObjectBuilder {
    fields::string().enum_values(Some(ROLES))
}

fn role() -> ObjectBuilder {
    role_input().description(Some(
        "`moderator`: may cancel or unpublish any event, ban accounts and ban users from events; \
         `admin`: that, and manages roles and lists users.",
    ))
}

fn ban_reason() -> ObjectBuilder {
    required_text(MAX_REASON)
        .description(Some("Shown to the user when they try to sign in, and kept in the audit log."))
}

fn reason_out() -> ObjectBuilder {
    bounded(MAX_REASON)
}

fn bearer() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["Bearer"]))
}

/// Longest profile text (characters).
pub const MAX_BIO: usize = 500;

/// What anyone may see of a person: on their organizer page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    /// The user.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// A few words about them, in their own words (may be empty).
    #[schema(max_length = 500)]
    pub bio: String,
    /// Their home city (may be empty): where "near me" looks.
    #[schema(max_length = 80)]
    pub city: String,
    /// When the account was created.
    #[serde(with = "time::serde::rfc3339")]
    pub member_since: OffsetDateTime,
    /// Their picture, when they gave one (`PUT /api/v1/me/avatar`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<Avatar>,
}

/// A person's picture: square JPEG files on this origin, named by their content, so each URL
/// can be cached for good (`Cache-Control: public, max-age=31536000, immutable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Avatar {
    /// 96×96, beside a name (`/api/v1/profiles/{id}/avatar/{hash}/small.jpg`).
    pub small: String,
    /// 400×400, on their page (`…/large.jpg`).
    pub large: String,
}

impl Avatar {
    /// The URLs of user `id`'s avatar stored under `hash`.
    pub fn of(id: Uuid, hash: &str) -> Self {
        Self {
            small: format!("/api/v1/profiles/{id}/avatar/{hash}/small.jpg"),
            large: format!("/api/v1/profiles/{id}/avatar/{hash}/large.jpg"),
        }
    }
}

/// `PATCH /api/v1/me/profile`: what changes; a field left out stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    /// Display name, 1–100 characters; `null` or absent: unchanged.
    #[schema(schema_with = new_display_name)]
    pub name: Option<String>,
    /// Up to 500 characters; empty clears it.
    #[schema(schema_with = bio)]
    pub bio: Option<String>,
    /// Home city, up to 80 characters; empty clears it.
    #[schema(schema_with = home_city)]
    pub city: Option<String>,
}
