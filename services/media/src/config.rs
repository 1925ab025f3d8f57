//! `app.pictures.*` and what it builds.

/// `app.pictures.*`: what decoding uploads may cost this instance, and the clean-up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PicturesConfig {
    /// Uploads decoded at once (each takes a core for up to a second, and up to 128 MB: see
    /// `Limits`). Default `1`.
    pub max_concurrent: usize,
    /// Longest an upload waits for one of those, then 503 `IMAGES_BUSY` (within the gateway's
    /// 5 s write deadline). Default `2s`.
    #[serde(with = "keel::config::duration")]
    pub queue_timeout: std::time::Duration,
    /// How often the service's sweep worker looks for files nobody shows. Default `10m`.
    #[serde(with = "keel::config::duration")]
    pub sweep_every: std::time::Duration,
    /// Files younger than this are never swept (an upload between storing and recording).
    /// Default `1h`; at least `1s`.
    #[serde(with = "keel::config::duration")]
    pub sweep_grace: std::time::Duration,
}

impl Default for PicturesConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 1,
            queue_timeout: std::time::Duration::from_secs(2),
            sweep_every: std::time::Duration::from_secs(600),
            sweep_grace: std::time::Duration::from_secs(3600),
        }
    }
}

impl keel::config::Section for PicturesConfig {
    fn validate(&self, v: &mut keel::config::Validation<'_>) {
        if self.max_concurrent == 0 {
            v.invalid("max_concurrent", "must be at least 1");
        }
        if self.queue_timeout.is_zero() {
            v.invalid("queue_timeout", "must be more than 0s");
        }
        if self.sweep_every.is_zero() {
            v.invalid("sweep_every", "must be more than 0s");
        }
        if self.sweep_grace < std::time::Duration::from_secs(1) {
            v.invalid("sweep_grace", "must be at least 1s: a picture stored and not yet recorded must not be swept");
        }
    }
}

/// The store and the decoding pipeline of a service's pictures.
#[derive(Debug, Clone)]
pub struct Pictures {
    /// Where the files are.
    pub store: keel::storage::Store,
    /// Decoding, bounded.
    pub pipeline: crate::Pipeline,
}

impl Pictures {
    /// Pictures in `store`, decoded as `cfg` allows.
    pub fn new(store: keel::storage::Store, cfg: &PicturesConfig) -> Self {
        let limits = crate::Limits { max_bytes: cityevents_api::limits::MAX_PICTURE, ..crate::Limits::default() };
        Self { store, pipeline: crate::Pipeline::new(cfg.max_concurrent, cfg.queue_timeout, limits) }
    }
}
