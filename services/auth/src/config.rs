//! The service's `app` section: sign-in throttling and refresh-token lifetime.
//!
//! ```yaml
//! app:
//!   lockout:
//!     free_failures: 5            # failed sign-ins for one account from one client IP …
//!     ip_free_failures: 50        # … from one client IP, any account …
//!     account_free_failures: 100  # … for one account, any client IP, before delays start
//!     base_delay: 1s              # the first delay; it doubles with each further failure …
//!     max_delay: 15m              # … up to this
//!     window: 1h                  # a counter is forgotten this long after its last failure
//!     device_ttl: 180days         # a device that signed in is counted apart this long
//!   refresh_ttl: 30d
//!   refresh_reuse_grace: 10s   # a spent refresh token used again this soon gets the same successor
//!   email_verification_ttl: 24h  # how long a mailed verification link works
//!   password_reset_ttl: 1h       # how long a mailed password-reset link works
//!   password_reset_mails_per_hour: 3  # reset mails one account receives in an hour, at most
//!   registration_floor: 150ms    # every registration answers no sooner than this
//!   oidc: {}                     # OpenID Connect providers: see oidc/config.rs
//! ```

use std::time::Duration;

use keel::config::{Section, Validation};
use serde::{Deserialize, Serialize};

/// Longest throttling window accepted.
const MAX_LOCKOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest and longest refresh-token lifetime accepted.
const MIN_REFRESH_TTL: Duration = Duration::from_secs(60);
const MAX_REFRESH_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest grace window for a spent refresh token: longer would let a stolen token in unseen.
const MAX_REUSE_GRACE: Duration = Duration::from_secs(60);

/// `app.*` of `cityevents-auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Delaying sign-ins after repeated failures.
    pub lockout: LockoutConfig,
    /// Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime).
    /// Default `30days`.
    #[serde(with = "keel::config::duration")]
    pub refresh_ttl: Duration,
    /// A refresh token used again within this long after its rotation (two tabs refreshing at
    /// once) is answered with the same successor instead of counting as reuse; later, a second
    /// use revokes the family. `0s` turns the window off. Default `10s`, at most `1m`.
    #[serde(with = "keel::config::duration")]
    pub refresh_reuse_grace: Duration,
    /// How long a mailed verification link works (a new request spends the previous one).
    /// Default `24h`, between `10m` and `7days`.
    #[serde(with = "keel::config::duration")]
    pub email_verification_ttl: Duration,
    /// How long a mailed password-reset link works (a new request spends the previous one).
    /// Default `1h`, between `5m` and `24h`.
    #[serde(with = "keel::config::duration")]
    pub password_reset_ttl: Duration,
    /// Password-reset mails one account receives in an hour, at most: requests past it (by
    /// anyone, from anywhere) are answered as usual and send nothing. Default `3`, between `1`
    /// and `100`.
    pub password_reset_mails_per_hour: u32,
    /// Every accepted registration answers no sooner than this after it arrived, whether it
    /// made an account or found the address taken: the two do different writes, and their
    /// time must not tell which happened. Above the usual time of either (the Argon2 run plus
    /// a few writes). Default `150ms`, between `0s` and `2s`.
    #[serde(with = "keel::config::duration")]
    pub registration_floor: Duration,
    /// Avatars: decoding and clean-up (see `profiles.rs`).
    pub pictures: cityevents_media::PicturesConfig,
    /// Sign-in with OpenID Connect providers (see `oidc/config.rs`).
    pub oidc: crate::oidc::OidcConfig,
}

/// `app.lockout.*`: failed sign-ins are counted per account and client IP, per client IP and per
/// account; once a counter holds its free failures, each further attempt it covers must wait a
/// delay that doubles with every failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockoutConfig {
    /// Failed sign-ins for one account from one client IP before delays start. Default `5`.
    pub free_failures: u32,
    /// Failed sign-ins from one client IP, whatever the account, before delays start (password
    /// spraying). Default `50`.
    pub ip_free_failures: u32,
    /// Failed sign-ins for one account from all client IPs together, by devices without a
    /// device token of the account, before delays start for all of them: far above what a
    /// forgetful owner makes. A device that signed in before is not delayed by it. Default `100`.
    pub account_free_failures: u32,
    /// The first delay; each further failure doubles it. Default `1s`.
    #[serde(with = "keel::config::duration")]
    pub base_delay: Duration,
    /// The longest delay. Default `15m`, at most `window`.
    #[serde(with = "keel::config::duration")]
    pub max_delay: Duration,
    /// A counter is forgotten this long after its last failure. Default `1h`.
    #[serde(with = "keel::config::duration")]
    pub window: Duration,
    /// How long a device token (given with a successful sign-in or password reset) keeps its
    /// device counted apart from the account's other failures. Default `180days`, between `1h`
    /// and `400days`.
    #[serde(with = "keel::config::duration")]
    pub device_ttl: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            free_failures: 5,
            ip_free_failures: 50,
            account_free_failures: 100,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            window: Duration::from_secs(3600),
            device_ttl: Duration::from_secs(180 * 24 * 3600),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            lockout: LockoutConfig::default(),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            email_verification_ttl: Duration::from_secs(24 * 3600),
            password_reset_ttl: Duration::from_secs(3600),
            password_reset_mails_per_hour: 3,
            registration_floor: Duration::from_millis(150),
            pictures: cityevents_media::PicturesConfig::default(),
            oidc: crate::oidc::OidcConfig::default(),
        }
    }
}

impl Section for AuthConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        let l = &self.lockout;
        if !(1..=1000).contains(&l.free_failures) {
            v.invalid("lockout.free_failures", "must be between 1 and 1000");
        }
        for (path, n) in [
            ("lockout.ip_free_failures", l.ip_free_failures),
            ("lockout.account_free_failures", l.account_free_failures),
        ] {
            if n < l.free_failures || n > 1_000_000 {
                v.invalid(path, "must be at least lockout.free_failures and at most 1000000");
            }
        }
        if l.window < Duration::from_secs(60) || l.window > MAX_LOCKOUT {
            v.invalid("lockout.window", "must be between 1m and 7days");
        }
        if l.base_delay < Duration::from_millis(100) || l.base_delay > Duration::from_secs(3600) {
            v.invalid("lockout.base_delay", "must be between 100ms and 1h");
        }
        if l.max_delay < l.base_delay || l.max_delay > l.window {
            v.invalid("lockout.max_delay", "must be at least lockout.base_delay and at most lockout.window");
        }
        if l.device_ttl < Duration::from_secs(3600) || l.device_ttl > Duration::from_secs(400 * 24 * 3600) {
            v.invalid("lockout.device_ttl", "must be between 1h and 400days");
        }
        if self.refresh_ttl < MIN_REFRESH_TTL || self.refresh_ttl > MAX_REFRESH_TTL {
            v.invalid("refresh_ttl", "must be between 1m and 365days");
        }
        if self.refresh_reuse_grace > MAX_REUSE_GRACE {
            v.invalid("refresh_reuse_grace", "must be at most 1m");
        }
        if self.email_verification_ttl < Duration::from_secs(600) || self.email_verification_ttl > MAX_LOCKOUT {
            v.invalid("email_verification_ttl", "must be between 10m and 7days");
        }
        if self.password_reset_ttl < Duration::from_secs(300) || self.password_reset_ttl > Duration::from_secs(86_400) {
            v.invalid("password_reset_ttl", "must be between 5m and 24h");
        }
        if !(1..=100).contains(&self.password_reset_mails_per_hour) {
            v.invalid("password_reset_mails_per_hour", "must be between 1 and 100");
        }
        if self.registration_floor > Duration::from_secs(2) {
            v.invalid("registration_floor", "must be at most 2s");
        }
        v.section("pictures", &self.pictures);
        v.section("oidc", &self.oidc);
    }

    fn templates(t: &mut keel::config::Templates<'_>) {
        t.map_entries("oidc.providers", &crate::oidc::config::ProviderConfig::default());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel::app::Loader;
    use keel::config::Profile;

    fn load(env: &[(&str, &str)]) -> Result<AuthConfig, String> {
        Loader::new("cityevents-auth", Profile::Test)
            .env(env.iter().map(|(k, v)| (format!("CITYEVENTS_AUTH__APP__{k}"), (*v).to_owned())))
            .load::<AuthConfig>()
            .map(|l| l.config.app)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let d = load(&[]).unwrap();
        assert_eq!(d, AuthConfig::default());
        assert_eq!(
            (d.lockout.free_failures, d.lockout.ip_free_failures, d.lockout.account_free_failures),
            (5, 50, 100)
        );
        assert_eq!((d.lockout.base_delay, d.lockout.max_delay), (Duration::from_secs(1), Duration::from_secs(900)));
        assert_eq!(d.lockout.window, Duration::from_secs(3600));
        assert_eq!(d.refresh_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(d.refresh_reuse_grace, Duration::from_secs(10));
        assert_eq!(d.email_verification_ttl, Duration::from_secs(86_400));
        assert_eq!(d.password_reset_ttl, Duration::from_secs(3600));
        assert_eq!(d.password_reset_mails_per_hour, 3);
        assert_eq!(load(&[("PASSWORD_RESET_MAILS_PER_HOUR", "10")]).unwrap().password_reset_mails_per_hour, 10);
        assert_eq!(d.registration_floor, Duration::from_millis(150));
        assert!(load(&[("REGISTRATION_FLOOR", "3s")]).is_err());
        assert_eq!(load(&[("REFRESH_REUSE_GRACE", "0s")]).unwrap().refresh_reuse_grace, Duration::ZERO);
        let c =
            load(&[("LOCKOUT__FREE_FAILURES", "3"), ("LOCKOUT__MAX_DELAY", "1h"), ("REFRESH_TTL", "7days")]).unwrap();
        assert_eq!((c.lockout.free_failures, c.lockout.max_delay), (3, Duration::from_secs(3600)));
        assert_eq!(c.refresh_ttl, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn providers_are_read_from_the_environment_and_checked() {
        let corp = [
            ("OIDC__REDIRECT_BASE", "https://events.example.org"),
            ("OIDC__PROVIDERS__CORP__NAME", "Corp"),
            ("OIDC__PROVIDERS__CORP__ISSUER", "https://login.corp.example"),
            ("OIDC__PROVIDERS__CORP__CLIENT_ID", "cityevents"),
            ("OIDC__PROVIDERS__CORP__CLIENT_SECRET", "s3cr3t-from-the-idp"),
        ];
        let c = load(&corp).unwrap();
        let p = &c.oidc.providers["corp"];
        assert_eq!(
            (p.name.as_str(), p.issuer.as_str(), p.client_id.as_str()),
            ("Corp", "https://login.corp.example", "cityevents")
        );
        assert_eq!(p.client_secret.expose(), "s3cr3t-from-the-idp");
        assert_eq!(p.scopes, ["openid", "email", "profile"]);
        assert_eq!(c.oidc.flow_ttl, Duration::from_secs(600));
        for (key, value, path) in [
            ("OIDC__REDIRECT_BASE", "", "app.oidc.redirect_base"),
            ("OIDC__REDIRECT_BASE", "https://events.example.org/site", "app.oidc.redirect_base"),
            ("OIDC__PROVIDERS__CORP__ISSUER", "not a url", "app.oidc.providers.corp.issuer"),
            ("OIDC__PROVIDERS__CORP__SCOPES", "openid,profile", "app.oidc.providers.corp.scopes"),
            ("OIDC__PROVIDERS__CORP__CLIENT_SECRET", "", "app.oidc.providers.corp.client_secret"),
            ("OIDC__FLOW_TTL", "2h", "app.oidc.flow_ttl"),
        ] {
            let mut env: Vec<(&str, &str)> = corp.iter().filter(|(k, _)| *k != key).copied().collect();
            if !value.is_empty() {
                env.push((key, value));
            }
            let e = load(&env).unwrap_err();
            assert!(e.contains(path), "{key}={value}: {e}");
        }
        // The secret from a file (a mounted secret), as every secret may be given.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corp-secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let path = file.display().to_string();
        let mut env: Vec<(&str, &str)> = corp.iter().filter(|(k, _)| !k.ends_with("CLIENT_SECRET")).copied().collect();
        env.push(("OIDC__PROVIDERS__CORP__CLIENT_SECRET_FILE", &path));
        assert_eq!(load(&env).unwrap().oidc.providers["corp"].client_secret.expose(), "from-a-file");
        let e = load(&[("OIDC__PROVIDERS__NOT_OK__NAME", "x")]).unwrap_err();
        assert!(e.contains("app.oidc.providers.not_ok"), "{e}");
    }

    #[test]
    fn nonsense_is_refused_naming_the_key() {
        for (key, value) in [
            ("LOCKOUT__FREE_FAILURES", "0"),
            ("LOCKOUT__IP_FREE_FAILURES", "2"),
            ("LOCKOUT__ACCOUNT_FREE_FAILURES", "4"),
            ("LOCKOUT__WINDOW", "0s"),
            ("LOCKOUT__BASE_DELAY", "0s"),
            ("LOCKOUT__MAX_DELAY", "2h"),
            ("LOCKOUT__DURATION", "15m"),
            ("REFRESH_TTL", "10s"),
            ("REFRESH_TTL", "5"),
            ("REFRESH_REUSE_GRACE", "2m"),
            ("EMAIL_VERIFICATION_TTL", "1m"),
            ("PASSWORD_RESET_TTL", "2days"),
            ("PASSWORD_RESET_MAILS_PER_HOUR", "0"),
            ("PASSWORD_RESET_MAILS_PER_HOUR", "101"),
            ("LOCKOUT__FREE_FAILUREZ", "3"),
        ] {
            let e = load(&[(key, value)]).unwrap_err();
            let path = format!("app.{}", key.to_lowercase().replace("__", "."));
            assert!(e.contains(&path), "{key}={value}: {e}");
        }
    }
}
