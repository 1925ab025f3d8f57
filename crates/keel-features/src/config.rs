//! The `features` section.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Section, Validation};

/// `features.*`: feature flags from a YAML file (`keel_features`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FeaturesConfig {
    /// The flags file. Unset: no flags (every flag evaluates to off). An invalid file is a
    /// configuration error at start-up.
    pub file: Option<std::path::PathBuf>,
    /// Watch the file and apply changes without a restart; an invalid new version is rejected
    /// as a whole and the last good set stays active. Default `true`.
    pub reload: bool,
    /// How often the file is checked for changes. Default `1s`.
    #[serde(with = "keel_config::duration")]
    pub poll_interval: Duration,
    /// Where runtime overrides of flags live (`features.store.*`).
    pub store: StoreConfig,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self { file: None, reload: true, poll_interval: Duration::from_secs(1), store: StoreConfig::default() }
    }
}

/// `features.store.*`: where runtime overrides of flags (set through `/admin/flags`) live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreConfig {
    /// `auto` (default): the service's database when it has one, else its Redis when it has
    /// one, else memory; `database` / `redis`: that one (a start-up error for a service without
    /// it); `memory`: this process only, lost on restart and not seen by other replicas.
    pub kind: StoreKind,
    /// How often each replica reads the store's version; a change made on one replica is in
    /// effect on the others within this. Default `500ms`.
    #[serde(with = "keel_config::duration")]
    pub poll_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { kind: StoreKind::Auto, poll_interval: Duration::from_millis(500) }
    }
}

/// Where runtime overrides live ([`StoreConfig::kind`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The service's database when it has one, else its Redis, else memory.
    #[default]
    Auto,
    /// The service's database.
    Database,
    /// The service's Redis.
    Redis,
    /// This process only.
    Memory,
}

impl Section for FeaturesConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.poll_interval.is_zero() {
            v.invalid("poll_interval", "must be more than 0s");
        }
        if self.store.poll_interval < Duration::from_millis(50) {
            v.invalid("store.poll_interval", "must be at least 50ms: every replica reads the store this often");
        }
        // A bad flags file is a configuration error: refuse it before any port is bound, and let
        // `config check` show every problem in it.
        if let Some(file) = &self.file
            && let Err(e) = super::check_file(file)
        {
            v.invalid("file", e.to_string());
        }
    }
}
