//! [`Setup`]'s object store (feature `storage`).

use keel_config::Section;

use super::{Setup, SetupError, misconfigured};

impl<C: Section> Setup<C> {
    /// The service's object store (`storage.*`): adds the `storage` readiness check. Makes the
    /// directory of a `file:` store (in development `./data/<service>/objects` unless
    /// `storage.url` says otherwise). Later calls return the same store.
    pub fn storage(&mut self) -> Result<keel_storage::Store, SetupError> {
        if let Some(s) = &self.storage {
            return Ok(s.clone());
        }
        let mut cfg = self.config.keel.storage.clone();
        // Refused the same under `config check` and `serve`.
        if cfg.url.is_none() && self.profile == keel_config::Profile::Production {
            return Err(misconfigured("storage.url", "is required in production (s3://<bucket> or file:<dir>)"));
        }
        // `config check` makes no directory: a local store is checked in memory.
        let s3 = matches!(
            cfg.url.as_deref().map(keel_storage::Location::parse),
            Some(Ok(keel_storage::Location::S3 { .. }))
        );
        if self.checking && !s3 {
            cfg.url = Some("memory:".into());
        }
        let store = keel_storage::Store::new(&self.name, &cfg, self.profile, &self.metrics).map_err(|e| match e {
            keel_storage::StorageError::Config(m) => misconfigured("storage", m),
            other => other.into(),
        })?;
        self.health.add(store.readiness_check());
        tracing::info!(at = store.describe(), "object store");
        self.storage = Some(store.clone());
        Ok(store)
    }
}
