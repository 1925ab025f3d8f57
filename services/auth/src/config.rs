//! The service's `app` section: sign-in lockout and refresh-token lifetime.
//!
//! ```yaml
//! app:
//!   lockout:
//!     max_failures: 5   # failed sign-ins for one e-mail address …
//!     window: 15m       # … within this long lock it …
//!     duration: 15m     # … for this long
//!   refresh_ttl: 30d
//! ```

use std::time::Duration;

use keel::config::{Section, Validation};
use serde::{Deserialize, Serialize};

/// Longest lockout window and lockout duration accepted.
const MAX_LOCKOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest and longest refresh-token lifetime accepted.
const MIN_REFRESH_TTL: Duration = Duration::from_secs(60);
const MAX_REFRESH_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// `app.*` of `cityevents-auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Locking an e-mail address after repeated failed sign-ins.
    pub lockout: LockoutConfig,
    /// Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime).
    /// Default `30days`.
    #[serde(with = "keel::config::duration")]
    pub refresh_ttl: Duration,
}

/// `app.lockout.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockoutConfig {
    /// Failed sign-ins within `window` that lock the address. Default `5`.
    pub max_failures: u32,
    /// Failures older than this (counted from the first of the window) are forgotten.
    /// Default `15m`.
    #[serde(with = "keel::config::duration")]
    pub window: Duration,
    /// How long a locked address is refused, even with the right password. Default `15m`.
    #[serde(with = "keel::config::duration")]
    pub duration: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self { max_failures: 5, window: Duration::from_secs(15 * 60), duration: Duration::from_secs(15 * 60) }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { lockout: LockoutConfig::default(), refresh_ttl: Duration::from_secs(30 * 24 * 3600) }
    }
}

impl Section for AuthConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(1..=1000).contains(&self.lockout.max_failures) {
            v.invalid("lockout.max_failures", "must be between 1 and 1000");
        }
        for (path, d) in [("lockout.window", self.lockout.window), ("lockout.duration", self.lockout.duration)] {
            if d < Duration::from_secs(1) || d > MAX_LOCKOUT {
                v.invalid(path, "must be between 1s and 7days");
            }
        }
        if self.refresh_ttl < MIN_REFRESH_TTL || self.refresh_ttl > MAX_REFRESH_TTL {
            v.invalid("refresh_ttl", "must be between 1m and 365days");
        }
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
        assert_eq!(d.lockout.max_failures, 5);
        assert_eq!(d.lockout.window, Duration::from_secs(900));
        assert_eq!(d.refresh_ttl, Duration::from_secs(30 * 86_400));
        let c = load(&[("LOCKOUT__MAX_FAILURES", "3"), ("LOCKOUT__DURATION", "1h"), ("REFRESH_TTL", "7days")]).unwrap();
        assert_eq!((c.lockout.max_failures, c.lockout.duration), (3, Duration::from_secs(3600)));
        assert_eq!(c.refresh_ttl, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn nonsense_is_refused_naming_the_key() {
        for (key, value) in [
            ("LOCKOUT__MAX_FAILURES", "0"),
            ("LOCKOUT__WINDOW", "0s"),
            ("LOCKOUT__DURATION", "0s"),
            ("LOCKOUT__DURATION", "30days"),
            ("REFRESH_TTL", "10s"),
            ("REFRESH_TTL", "5"),
            ("LOCKOUT__MAX_FAILUREZ", "3"),
        ] {
            let e = load(&[(key, value)]).unwrap_err();
            let path = format!("app.{}", key.to_lowercase().replace("__", "."));
            assert!(e.contains(&path), "{key}={value}: {e}");
        }
    }
}
