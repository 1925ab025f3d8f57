//! Sign-in with OpenID Connect providers: what auth's `/api/v1/auth/oidc/*` and
//! `/api/v1/auth/identities` take and answer. The gateway's web pages drive the flow (its
//! callback is a browser redirect); these routes are not forwarded by the public API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::TokenPair;

/// A provider people may sign in with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Its id in `app.oidc.providers` (`google`), part of its paths.
    pub id: String,
    /// Its name on the button ("Continue with Google").
    pub name: String,
}

/// `GET /api/v1/auth/oidc/providers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Providers {
    /// In id order; empty when none is configured.
    pub items: Vec<Provider>,
}

/// `POST /api/v1/auth/oidc/{provider}/start`: a flow that signs in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The site path to land on afterwards (`/events/42`); anything else means `/`.
    #[serde(default)]
    pub next: Option<String>,
}

/// `POST /api/v1/auth/identities/{provider}/start` (bearer): a flow that links the provider to
/// the caller's account. A new way in is as strong as a password: an account that has one must
/// give it (a wrong one counts as a failed sign-in).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStartRequest {
    /// The site path to land on afterwards; anything else means `/`.
    #[serde(default)]
    pub next: Option<String>,
    /// The account's password: required when it has one.
    #[serde(default)]
    pub password: Option<String>,
}

/// The answer to a start: send the browser to `authorization_url`, and keep `state` in the
/// browser (an HTTP-only cookie) to hand back with the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Start {
    /// The provider's authorization endpoint with this flow's parameters (`state`, `nonce`,
    /// the PKCE challenge, the scopes, the redirect URI).
    pub authorization_url: String,
    /// The flow's `state`, single-use.
    pub state: String,
}

/// `POST /api/v1/auth/oidc/{provider}/callback`: what the provider's redirect brought.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
    /// `state` of the redirect's query.
    pub state: String,
    /// The `state` the browser kept when the flow started: the two must be equal, so a
    /// callback URL made for one browser fails in another.
    pub browser_state: String,
    /// `code` of the redirect's query.
    pub code: String,
    /// The device's IANA time zone, for the session's place.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// What a callback (or a confirmed link) came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Signed in: a session for the account the provider's account is linked to (made now
    /// when `created`).
    SignedIn {
        /// The new session.
        session: TokenPair,
        /// Where the browser goes next (a site path).
        next: String,
        /// Whether the account was made by this sign-in.
        created: bool,
    },
    /// The provider was linked to the signed-in caller's account.
    Linked {
        /// The provider's id.
        provider: String,
        /// Where the browser goes next.
        next: String,
    },
    /// An account already has the provider's verified address: its owner confirms the link
    /// with the account's password (`POST /api/v1/auth/oidc/link`) within `app.oidc.link_ttl`.
    ConfirmLink {
        /// Single-use proof of this offer.
        offer: String,
        /// The address both share.
        email: String,
        /// The provider's name.
        provider_name: String,
        /// Whether the account has a password to confirm with (else: sign in with a linked
        /// provider, then link this one from the account page).
        has_password: bool,
        /// Where the browser goes next.
        next: String,
    },
}

/// `POST /api/v1/auth/oidc/link`: the account's owner confirms an offer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The offer of the `confirm_link` outcome.
    pub offer: String,
    /// The account's password.
    pub password: String,
    /// The device's IANA time zone, for the session's place.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// A provider linked to the caller's account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The provider's id.
    pub provider: String,
    /// The provider's name.
    pub name: String,
    /// When it was linked.
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
    /// When it last signed in.
    #[serde(with = "time::serde::rfc3339")]
    pub last_used_at: OffsetDateTime,
}

/// `GET /api/v1/auth/identities`: the caller's ways to sign in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identities {
    /// The providers linked, in id order.
    pub items: Vec<Identity>,
    /// Whether the account has a password.
    pub has_password: bool,
    /// Providers configured and not linked yet.
    pub available: Vec<Provider>,
}
