//! The `redis` section. It exists without the `redis` feature too, so a file that sets it loads
//! the same in every build.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Secret, Section, Validation};
use keel_resilience::ConnectConfig;

/// `redis.*`: the Redis connection of a service that declares one (`Setup::redis`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// **Secret.** `redis://[:password@]host:6379/0` or `unix:///path`. Required when the
    /// service uses Redis. (`rediss://` needs TLS support this build does not include.)
    pub url: Option<Secret>,
    /// Readiness fails while Redis is unreachable. `false`: `degraded`, calls fail fast. Default `true`.
    pub required: bool,
    /// Prepended to every key made with `Redis::key`. Default `<service>:`.
    pub key_prefix: Option<String>,
    /// Deadline of one command. Default `1s`.
    #[serde(with = "keel_config::duration")]
    pub command_timeout: Duration,
    /// Background connection retries.
    pub connect: ConnectConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            required: true,
            key_prefix: None,
            command_timeout: Duration::from_secs(1),
            connect: ConnectConfig::default(),
        }
    }
}

impl Section for RedisConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if let Some(url) = &self.url {
            let u = url.expose();
            if u.starts_with("rediss://") {
                v.invalid(
                    "url",
                    "rediss:// (TLS) is not supported by this build: terminate TLS in front, or use redis://",
                );
            } else if !["redis://", "unix://", "redis+unix://"].iter().any(|p| u.starts_with(p)) {
                v.invalid("url", "must start with redis:// or unix://");
            }
        }
        if self.command_timeout.is_zero() {
            v.invalid("command_timeout", "must be more than 0s");
        }
        v.section("connect", &self.connect);
    }
}
