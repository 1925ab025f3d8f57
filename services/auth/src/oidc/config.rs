//! `app.oidc.*`: the OpenID Connect providers people may sign in with.
//!
//! ```yaml
//! app:
//!   oidc:
//!     redirect_base: https://events.example.org   # the site's origin: callbacks are
//!                                                  # <redirect_base>/login/oidc/<id>/callback
//!     flow_ttl: 10m          # how long a started sign-in may take at the provider
//!     link_ttl: 15m          # how long a "link this sign-in to your account" offer stands
//!     request_timeout: 10s   # each call to a provider (discovery, keys, token)
//!     providers:
//!       google:
//!         name: Google                          # shown on the button
//!         issuer: https://accounts.google.com   # discovery: <issuer>/.well-known/openid-configuration
//!         client_id: 1234.apps.googleusercontent.com
//!         client_secret_file: /run/secrets/google-client-secret
//!         scopes: [openid, email, profile]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use keel::config::{Profile, Secret, Section, Templates, Validation};
use serde::{Deserialize, Serialize};

/// The longest provider id (it is part of paths and stored beside each link).
pub(crate) const MAX_PROVIDER_ID: usize = 32;

/// `app.oidc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OidcConfig {
    /// The site's public origin (`https://host[:port]`, no path): each provider's redirect URI
    /// is `<redirect_base>/login/oidc/<id>/callback`, which must be registered with it.
    /// Required when a provider is configured.
    pub redirect_base: Option<String>,
    /// How long a started sign-in may spend at the provider before its callback is refused.
    /// Default `10m`, between `1m` and `1h`.
    #[serde(with = "keel::config::duration")]
    pub flow_ttl: Duration,
    /// How long the offer to link a provider's sign-in to the account with the same verified
    /// address stands (the owner confirms with the account's password). Default `15m`,
    /// between `1m` and `1h`.
    #[serde(with = "keel::config::duration")]
    pub link_ttl: Duration,
    /// Each call to a provider: discovery, its keys, the code exchange. Default `10s`, between
    /// `1s` and `60s`.
    #[serde(with = "keel::config::duration")]
    pub request_timeout: Duration,
    /// The providers by id (`[a-z0-9-]`, at most 32 characters; it names the callback path).
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            redirect_base: None,
            flow_ttl: Duration::from_secs(600),
            link_ttl: Duration::from_secs(900),
            request_timeout: Duration::from_secs(10),
            providers: BTreeMap::new(),
        }
    }
}

/// `app.oidc.providers.<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// The name on the sign-in button ("Continue with <name>"). Required.
    pub name: String,
    /// The issuer identifier; its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`. `https` (production requires it).
    pub issuer: String,
    /// The client id the provider registered for this site. Required.
    pub client_id: String,
    /// The client's secret (`client_secret_file` in production). Required.
    pub client_secret: Secret,
    /// Scopes asked for; `openid` and `email` are required (accounts are found by address).
    /// Default `[openid, email, profile]`.
    pub scopes: Vec<String>,
}

// `Secret` has no `PartialEq` of its own (nothing should compare secrets by accident); two
// configurations are equal when their settings are.
impl PartialEq for ProviderConfig {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.issuer, &self.client_id, &self.scopes)
            == (&other.name, &other.issuer, &other.client_id, &other.scopes)
            && self.client_secret.expose() == other.client_secret.expose()
    }
}

impl Eq for ProviderConfig {}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            issuer: String::new(),
            client_id: String::new(),
            client_secret: Secret::new(""),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
        }
    }
}

/// Whether `id` may name a provider.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PROVIDER_ID
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `http(s)://host[:port]` with no path, query or user, as `url` parses it.
fn origin(value: &str) -> Result<url::Url, &'static str> {
    let u = url::Url::parse(value).map_err(|_| "must be an absolute URL")?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err("must be an http(s) URL with a host");
    }
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
        return Err("must not carry a user, query or fragment");
    }
    Ok(u)
}

impl Section for OidcConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        for (path, d) in [("flow_ttl", self.flow_ttl), ("link_ttl", self.link_ttl)] {
            if d < Duration::from_secs(60) || d > Duration::from_secs(3600) {
                v.invalid(path, "must be between 1m and 1h");
            }
        }
        if self.request_timeout < Duration::from_secs(1) || self.request_timeout > Duration::from_secs(60) {
            v.invalid("request_timeout", "must be between 1s and 60s");
        }
        match &self.redirect_base {
            Some(base) => match origin(base) {
                Ok(u) if u.path() != "/" => v.invalid("redirect_base", "must be an origin, without a path"),
                Ok(u) if u.scheme() != "https" && v.profile() == Profile::Production => {
                    v.production("redirect_base", "must be https in production");
                }
                Ok(_) => {}
                Err(why) => v.invalid("redirect_base", why),
            },
            None if !self.providers.is_empty() => {
                v.invalid("redirect_base", "is required when a provider is configured (the site's origin)");
            }
            None => {}
        }
        for (id, p) in &self.providers {
            if !valid_id(id) || id == "link" {
                // `link` is a path of its own beside the providers' (`/login/oidc/link`).
                v.invalid(&format!("providers.{id}"), "ids are 1 to 32 of a-z, 0-9 and -, and not `link`");
            }
            v.section(&format!("providers.{id}"), p);
        }
    }

    fn templates(t: &mut Templates<'_>) {
        t.map_entries("providers", &ProviderConfig::default());
    }
}

impl Section for ProviderConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.name.trim().is_empty() || self.name.chars().count() > 40 {
            v.invalid("name", "is required, at most 40 characters");
        }
        match origin(&self.issuer) {
            Ok(u) if u.scheme() != "https" && v.profile() == Profile::Production => {
                v.production("issuer", "must be https in production");
            }
            Ok(_) => {}
            Err(why) => v.invalid("issuer", why),
        }
        if self.client_id.is_empty() || self.client_id.len() > 512 {
            v.invalid("client_id", "is required, at most 512 bytes");
        }
        if self.client_secret.expose().is_empty() {
            v.invalid("client_secret", "is required (client_secret_file in production)");
        }
        for needed in ["openid", "email"] {
            if !self.scopes.iter().any(|s| s == needed) {
                v.invalid("scopes", format!("must include `{needed}`"));
            }
        }
        if self.scopes.iter().any(|s| s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic())) {
            v.invalid("scopes", "each is 1 to 64 visible ASCII characters");
        }
    }
}
