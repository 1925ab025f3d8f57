//! The `health` section.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Section, Validation};

/// `health.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HealthConfig {
    /// How often each check runs in the background. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub interval: Duration,
    /// A cached result older than this counts as down. Default `15s` (3 × interval).
    #[serde(with = "keel_config::duration")]
    pub ttl: Duration,
    /// How long after start a dependency that has never been up is only being waited for: a
    /// check that fails before it was ever up logs at INFO ("waiting for …") until then, and
    /// one WARN once this passes. After a check was up once, going down is always a WARN.
    /// Default `30s`.
    #[serde(with = "keel_config::duration")]
    pub startup_grace: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(5), ttl: Duration::from_secs(15), startup_grace: Duration::from_secs(30) }
    }
}

impl Section for HealthConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.interval.is_zero() {
            v.invalid("interval", "must be more than 0s");
        }
        if self.ttl <= self.interval {
            v.invalid("ttl", "must be longer than health.interval, or every result would be stale");
        }
    }
}
