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
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self { file: None, reload: true, poll_interval: Duration::from_secs(1) }
    }
}

impl Section for FeaturesConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.poll_interval.is_zero() {
            v.invalid("poll_interval", "must be more than 0s");
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
