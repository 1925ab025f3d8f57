//! Feature flags from a YAML file, hot-reloaded without a restart.
//!
//! This is `keel-features`, re-exported by `keel` as `keel::features`; of Keel's crates it depends
//! on `keel-config` and `keel-telemetry`.
//!
//! The file is a map from flag key to [`FlagDef`] (`enabled`, `strategy`, `rules`,
//! `description`, `tags`); strategies are `simple`, `percentage`, `user`, `environment` and
//! `time` ([`Strategy`]). A flag is evaluated against an [`EvalContext`] (user id, environment,
//! attributes); unknown flags are off.
//!
//! * **Atomic reload.** A new version of the file is parsed and validated as a whole, then
//!   swapped in with one pointer store ([`arc_swap`]); an evaluation sees either the old set or
//!   the new one, never a mix. An invalid version is rejected entirely: the last good set stays
//!   active, and the error is logged, counted (`feature_flags_reloads_total{outcome="error"}`)
//!   and shown on `/admin/status`.
//! * **Cheap evaluation.** A read is a lock-free snapshot load, a hash-map lookup and an atomic
//!   counter increment; each flag's counters are resolved once per reload, not per evaluation.
//! * **Deterministic percentages.** [`bucket`] hashes `<flag key>:<user id>` with SHA-256, so a
//!   user's answer is the same on every replica and after every restart.
//!
//! # Example
//!
//! ```
//! use keel_features::{EvalContext, Flags, FlagsOptions};
//!
//! let flags = Flags::from_yaml(
//!     "new_checkout:\n  enabled: true\n  strategy: user\n  rules:\n    users: [alice]\n",
//!     FlagsOptions::new("production"),
//! )
//! .unwrap();
//! assert!(flags.is_enabled("new_checkout", &EvalContext::new().user("alice")));
//! assert!(!flags.is_enabled("new_checkout", &EvalContext::new().user("bob")));
//! assert!(!flags.is_enabled("no_such_flag", &EvalContext::new()));
//! ```

mod config;
mod error;
mod model;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, Opts};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use config::FeaturesConfig;
pub use error::{FlagProblem, FlagsError};
pub use model::{FlagDef, Rules, Strategy, bucket};

use keel_config::ReloadLog;
use keel_telemetry::Metrics;
use model::Compiled;

/// How long a changed file must stay the same before it is applied, so a file caught half
/// written is not parsed (and rejected) on the way.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// Who and where an evaluation is for.
///
/// ```
/// let ctx = keel_features::EvalContext::new().user("42").environment("staging").attribute("plan", "pro");
/// # let _ = ctx;
/// ```
#[derive(Debug, Clone, Default)]
pub struct EvalContext {
    user_id: Option<String>,
    environment: Option<String>,
    attributes: BTreeMap<String, String>,
}

impl EvalContext {
    /// An anonymous context in the service's own environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// The user (for `percentage` and `user`).
    pub fn user(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    /// The environment (for `environment`); default: the service profile.
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }

    /// An attribute (for `rules.attributes`).
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// How [`Flags`] are built.
#[derive(Debug, Clone, Default)]
pub struct FlagsOptions {
    environment: String,
    metrics: Option<Metrics>,
    reloads: Option<ReloadLog>,
}

impl FlagsOptions {
    /// Evaluations without an explicit environment use `environment` (the service profile).
    pub fn new(environment: impl Into<String>) -> Self {
        Self { environment: environment.into(), metrics: None, reloads: None }
    }

    /// Report `feature_flag_evaluations_total` and `feature_flags_reloads_total` here.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Record reload attempts here (shown on `/admin/status`).
    pub fn reloads(mut self, log: ReloadLog) -> Self {
        self.reloads = Some(log);
        self
    }
}

#[derive(Debug, Clone)]
struct FlagMetrics {
    evaluations: IntCounterVec,
    reload_ok: IntCounter,
    reload_error: IntCounter,
}

impl FlagMetrics {
    fn new(m: &Metrics) -> Result<Self, prometheus::Error> {
        let evaluations = IntCounterVec::new(
            Opts::new(
                "feature_flag_evaluations_total",
                "Feature flag evaluations by flag and result (on, off); unknown flags count as flag=\"_unknown\".",
            ),
            &["flag", "result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("feature_flags_reloads_total", "Feature flag file reloads by outcome (ok, error)."),
            &["outcome"],
        )?;
        m.register(evaluations.clone())?;
        m.register(reloads.clone())?;
        Ok(Self {
            reload_ok: reloads.with_label_values(&["ok"]),
            reload_error: reloads.with_label_values(&["error"]),
            evaluations,
        })
    }
}

/// One immutable version of the flag set.
struct Snapshot {
    flags: HashMap<String, Compiled>,
    hash: [u8; 32],
    loaded_at: SystemTime,
}

/// What the file looked like the last time the watcher read it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(String),
}

struct Inner {
    current: ArcSwap<Snapshot>,
    file: Option<PathBuf>,
    environment: String,
    metrics: Option<FlagMetrics>,
    reloads: Option<ReloadLog>,
    /// Serializes reloads (not evaluations) so two reloads cannot interleave parse and swap.
    reloading: Mutex<Option<Seen>>,
}

/// A service's feature flags. Cheap to clone; clones share the current set.
#[derive(Clone)]
pub struct Flags {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags").field("file", &self.inner.file).field("count", &self.len()).finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Validates a flags file without keeping it (for `config check`).
pub fn check_file(path: &Path) -> Result<usize, FlagsError> {
    let text = read(path)?;
    model::parse(&text).map(|f| f.len()).map_err(|problems| invalid(path, problems))
}

fn read(path: &Path) -> Result<String, FlagsError> {
    std::fs::read_to_string(path).map_err(|source| FlagsError::Read { path: path.to_owned(), source })
}

fn invalid(path: &Path, problems: Vec<FlagProblem>) -> FlagsError {
    FlagsError::Invalid { origin: path.display().to_string(), problems }
}

impl Flags {
    /// No flags: every evaluation is off.
    pub fn empty(options: FlagsOptions) -> Result<Self, FlagsError> {
        Self::build(None, "", options)
    }

    /// Flags from `path`; see [`Flags::watch`] for hot reload.
    pub fn open(path: impl Into<PathBuf>, options: FlagsOptions) -> Result<Self, FlagsError> {
        let path = path.into();
        let text = read(&path)?;
        Self::build(Some(path), &text, options)
    }

    /// Flags from YAML text (tests, embedded defaults).
    pub fn from_yaml(text: &str, options: FlagsOptions) -> Result<Self, FlagsError> {
        Self::build(None, text, options)
    }

    fn build(file: Option<PathBuf>, text: &str, options: FlagsOptions) -> Result<Self, FlagsError> {
        let origin = file.as_deref().map_or_else(|| "<inline>".to_owned(), |p| p.display().to_string());
        let defs = model::parse(text).map_err(|problems| FlagsError::Invalid { origin, problems })?;
        let metrics = match &options.metrics {
            Some(m) => Some(FlagMetrics::new(m).map_err(|e| FlagsError::Invalid {
                origin: "metrics".into(),
                problems: vec![FlagProblem { path: String::new(), message: e.to_string() }],
            })?),
            None => None,
        };
        let hash = sha256(text.as_bytes());
        let flags = model::compile(defs, |k| counters(metrics.as_ref(), k));
        Ok(Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Snapshot { flags, hash, loaded_at: SystemTime::now() }),
                file,
                environment: options.environment,
                metrics,
                reloads: options.reloads,
                reloading: Mutex::new(Some(Seen::Content(hash))),
            }),
        })
    }

    /// Whether `key` is on for `ctx`. Unknown flags are off.
    pub fn is_enabled(&self, key: &str, ctx: &EvalContext) -> bool {
        evaluate(&self.inner, &self.inner.current.load(), key, ctx)
    }

    /// The current set, pinned: every evaluation through the view uses the same version even if
    /// a reload happens meanwhile (several flags read for one request agree with each other).
    ///
    /// ```
    /// # let flags = keel_features::Flags::from_yaml("a: {enabled: true}\nb: {enabled: true}", Default::default()).unwrap();
    /// let view = flags.view();
    /// let ctx = keel_features::EvalContext::new();
    /// assert_eq!(view.is_enabled("a", &ctx), view.is_enabled("b", &ctx));
    /// ```
    pub fn view(&self) -> FlagsView {
        FlagsView { inner: self.inner.clone(), snapshot: self.inner.current.load_full() }
    }

    /// Number of flags in the current set.
    pub fn len(&self) -> usize {
        self.inner.current.load().flags.len()
    }

    /// Whether the current set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flags file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// Reads the file again and swaps in its flags if they are valid; otherwise keeps the
    /// current set and returns why (also logged, counted and recorded). Returns the number of
    /// flags now active. An unchanged file is not re-applied.
    pub fn reload(&self) -> Result<usize, FlagsError> {
        let path = self.inner.file.as_deref().ok_or(FlagsError::NoFile)?;
        let mut seen = self.inner.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                let now = Seen::Unreadable(e.to_string());
                if seen.as_ref() != Some(&now) {
                    self.rejected(&e);
                }
                *seen = Some(now);
                return Err(e);
            }
        };
        let hash = sha256(text.as_bytes());
        if self.inner.current.load().hash == hash {
            *seen = Some(Seen::Content(hash));
            return Ok(self.len());
        }
        *seen = Some(Seen::Content(hash));
        self.apply(&text, hash, path)
    }

    /// Replaces the set with `text` (flags not loaded from a file; tests). Same rules as
    /// [`Flags::reload`].
    pub fn replace_yaml(&self, text: &str) -> Result<usize, FlagsError> {
        let _serial = self.inner.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        self.apply(text, sha256(text.as_bytes()), Path::new("<inline>"))
    }

    fn apply(&self, text: &str, hash: [u8; 32], origin: &Path) -> Result<usize, FlagsError> {
        match model::parse(text) {
            Err(problems) => {
                let e = invalid(origin, problems);
                self.rejected(&e);
                Err(e)
            }
            Ok(defs) => {
                let flags = model::compile(defs, |k| counters(self.inner.metrics.as_ref(), k));
                let n = flags.len();
                // The one store that publishes the new set: readers hold either snapshot whole.
                self.inner.current.store(Arc::new(Snapshot { flags, hash, loaded_at: SystemTime::now() }));
                if let Some(m) = &self.inner.metrics {
                    m.reload_ok.inc();
                }
                if let Some(log) = &self.inner.reloads {
                    log.record("feature flags", true, format!("{n} flags from {}", origin.display()));
                }
                tracing::info!(flags = n, file = %origin.display(), "feature flags reloaded");
                Ok(n)
            }
        }
    }

    fn rejected(&self, e: &FlagsError) {
        if let Some(m) = &self.inner.metrics {
            m.reload_error.inc();
        }
        if let Some(log) = &self.inner.reloads {
            log.record("feature flags", false, e.to_string());
        }
        tracing::error!(error = %e, "feature flags reload rejected; the previous flags stay active");
    }

    /// Polls the file every `every` and applies changes (after [`RELOAD_DEBOUNCE`] without
    /// further change) until `stop` is cancelled. Polling content rather than waiting for
    /// file-system events also follows Kubernetes ConfigMap updates (a symlink swap) and editors
    /// that replace the file. Returns at once for flags without a file.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a reload is never left half done (the swap is a single store).
    pub async fn watch(self, every: Duration, stop: CancellationToken) {
        let Some(path) = self.inner.file.clone() else { return };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let first = match std::fs::read(&path) {
                Ok(b) => sha256(&b),
                Err(_) => {
                    // `reload` reports a read error once, not on every poll.
                    let _ = self.reload();
                    continue;
                }
            };
            let seen = self.inner.reloading.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if seen == Some(Seen::Content(first)) {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_DEBOUNCE) => {}
            }
            if std::fs::read(&path).map(|b| sha256(&b)).ok() != Some(first) {
                // Still being written: look again on the next poll.
                continue;
            }
            let _ = self.reload();
        }
    }

    /// The current set, for `/admin/flags`.
    pub fn report(&self) -> FlagsReport {
        let snapshot = self.inner.current.load();
        let mut flags: Vec<FlagReport> =
            snapshot.flags.iter().map(|(k, c)| FlagReport { key: k.clone(), def: c.def.clone() }).collect();
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        FlagsReport {
            file: self.inner.file.as_ref().map(|p| p.display().to_string()),
            loaded_at: humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
            environment: self.inner.environment.clone(),
            flags,
        }
    }
}

fn evaluate(inner: &Inner, snapshot: &Snapshot, key: &str, ctx: &EvalContext) -> bool {
    let Some(flag) = snapshot.flags.get(key) else {
        if let Some(m) = &inner.metrics {
            // Made on first use: no placeholder series in a service that never asks for one.
            m.evaluations.with_label_values(&["_unknown", "off"]).inc();
        }
        return false;
    };
    let on = flag.decide(key, ctx, &inner.environment);
    if let Some(c) = if on { &flag.on } else { &flag.off } {
        c.inc();
    }
    on
}

/// One version of the flag set, held for a while ([`Flags::view`]).
#[derive(Clone)]
pub struct FlagsView {
    inner: Arc<Inner>,
    snapshot: Arc<Snapshot>,
}

impl std::fmt::Debug for FlagsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagsView").field("count", &self.snapshot.flags.len()).finish_non_exhaustive()
    }
}

impl FlagsView {
    /// Whether `key` is on for `ctx` in this version.
    pub fn is_enabled(&self, key: &str, ctx: &EvalContext) -> bool {
        evaluate(&self.inner, &self.snapshot, key, ctx)
    }
}

fn counters(m: Option<&FlagMetrics>, key: &str) -> (Option<IntCounter>, Option<IntCounter>) {
    match m {
        Some(m) => {
            (Some(m.evaluations.with_label_values(&[key, "on"])), Some(m.evaluations.with_label_values(&[key, "off"])))
        }
        None => (None, None),
    }
}

/// The active flag set.
#[derive(Debug, Clone, Serialize)]
pub struct FlagsReport {
    /// The file, if any.
    pub file: Option<String>,
    /// When the active set was loaded (RFC 3339).
    pub loaded_at: String,
    /// The default environment of evaluations.
    pub environment: String,
    /// Every flag, by key.
    pub flags: Vec<FlagReport>,
}

/// One flag of [`FlagsReport`].
#[derive(Debug, Clone, Serialize)]
pub struct FlagReport {
    /// Its key.
    pub key: String,
    /// Its definition.
    #[serde(flatten)]
    pub def: FlagDef,
}

#[cfg(test)]
mod tests;
