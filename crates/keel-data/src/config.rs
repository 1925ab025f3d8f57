//! The `database` section. It exists without a SQL feature too, so a file that sets it loads
//! the same in every build.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Profile, Secret, Section, Validation};
use keel_resilience::ConnectConfig;

/// `database.*`: the SQL pool of a service that declares one (`Setup::database`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// **Secret.** `postgres://…`, `mysql://…` (or `mariadb://…`) or `sqlite://path`. Unset in
    /// development and test: `sqlite://data/<service>.db` (created). Required in production.
    pub url: Option<Secret>,
    /// Readiness fails while the database is unreachable. `false`: the service stays ready as
    /// `degraded` and database calls fail fast with 503. Default `true`.
    pub required: bool,
    /// Apply pending migrations when connecting. Default `true` in development and test,
    /// `false` in production, where it is refused: run `<service> migrate` instead.
    pub auto_migrate: bool,
    /// Pool sizing and timeouts.
    pub pool: PoolConfig,
    /// Background connection retries.
    pub connect: ConnectConfig,
    /// Deadline of the readiness check (`SELECT 1`). Default `1s`.
    #[serde(with = "keel_config::duration")]
    pub check_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            required: true,
            auto_migrate: true,
            pool: PoolConfig::default(),
            connect: ConnectConfig::default(),
            check_timeout: Duration::from_secs(1),
        }
    }
}

/// `database.pool.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open at once. Default `10`.
    pub max_connections: u32,
    /// Connections kept open when idle. Default `0`.
    pub min_connections: u32,
    /// Longest wait for a free connection; then the call fails (503). Default `2s`.
    #[serde(with = "keel_config::duration")]
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this. Default `10m`.
    #[serde(with = "keel_config::duration")]
    pub idle_timeout: Duration,
    /// Connections are replaced after this. Default `30m`.
    #[serde(with = "keel_config::duration")]
    pub max_lifetime: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

impl Section for DatabaseConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if let Some(url) = &self.url {
            let u = url.expose();
            let known = ["postgres://", "postgresql://", "mysql://", "mariadb://", "sqlite:"];
            if !known.iter().any(|p| u.starts_with(p)) {
                v.invalid("url", "must start with postgres://, mysql://, mariadb:// or sqlite:");
            }
        }
        if v.profile() == Profile::Production && self.auto_migrate {
            v.production(
                "auto_migrate",
                "production never migrates on start-up: run `<service> migrate` as a separate step",
            );
        }
        v.section("pool", &self.pool);
        if self.check_timeout.is_zero() {
            v.invalid("check_timeout", "must be more than 0s");
        }
        v.section("connect", &self.connect);
    }
}

impl Section for PoolConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.max_connections == 0 {
            v.invalid("max_connections", "must be at least 1");
        }
        if self.min_connections > self.max_connections {
            v.invalid("min_connections", "must not exceed database.pool.max_connections");
        }
        if self.acquire_timeout.is_zero() {
            v.invalid("acquire_timeout", "must be more than 0s, or a lost database hangs requests");
        }
        if self.idle_timeout.is_zero() {
            v.invalid("idle_timeout", "must be more than 0s");
        }
        if self.max_lifetime.is_zero() {
            v.invalid("max_lifetime", "must be more than 0s");
        }
    }
}
