//! Feature flags from a YAML file, hot-reloaded without a restart, and overridable at runtime
//! in a store every replica reads.
//!
//! This is `keel-features`, re-exported by `keel` as `keel::features`; of Keel's crates it depends
//! on `keel-config` and `keel-telemetry` (and, with the `sql` feature, `keel-data`).
//!
//! The file is a map from flag key to [`FlagDef`] (`enabled`, `strategy`, `rules`,
//! `description`, `tags`); strategies are `simple`, `percentage`, `user`, `environment` and
//! `time` ([`Strategy`]). Any strategy can add gates in `rules`: a deny list of users, a
//! client version range, time windows (days and hours in a time zone), required attributes, and
//! composite `all` / `any` [`Condition`]s. A flag is evaluated against an [`EvalContext`] (user
//! id, environment, client version, attributes); unknown flags are off. Keys may be
//! hierarchical (`feed.live.reactions`); [`Flags::report_under`] lists a prefix.
//!
//! * **Runtime overrides.** The file is the reviewed default. [`Flags::set_override`] replaces
//!   one flag (or adds one) in a [`FlagStore`] — the service's database (`SqlStore`), its Redis
//!   (`RedisStore`) or the process's memory ([`MemoryStore`]) — with a history of who changed what and why
//!   ([`Flags::history`]). [`Flags::sync`] polls the store, so every replica applies a change
//!   within its poll interval; [`Flags::subscribe`] tells code that must react.
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
#[cfg(feature = "redis")]
mod redis_store;
mod rules;
#[cfg(feature = "sql")]
mod sql;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use config::{FeaturesConfig, StoreConfig, StoreKind};
pub use error::{FlagProblem, FlagsError};
pub use model::{FlagDef, Rules, Strategy, bucket};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use rules::{Condition, MAX_DEPTH, MAX_LIST, Window};
#[cfg(feature = "sql")]
pub use sql::{SqlStore, migrations};
use store::Overrides;
pub use store::{FlagChange, FlagStore, MemoryStore, StoreError};

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
    version: Option<String>,
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

    /// The client's version (`2.4.1`, a leading `v` allowed), for `rules.versions`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
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
    defaults: Option<&'static str>,
}

impl FlagsOptions {
    /// Evaluations without an explicit environment use `environment` (the service profile).
    pub fn new(environment: impl Into<String>) -> Self {
        Self { environment: environment.into(), metrics: None, reloads: None, defaults: None }
    }

    /// Report `feature_flag_evaluations_total` and `feature_flags_reloads_total` here.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// The service's built-in flags (YAML, the file's format): the layer under the file, so a
    /// capability the code ships behind a flag has its reviewed default without any file, and
    /// a file only lists what it changes.
    pub fn defaults(mut self, yaml: &'static str) -> Self {
        self.defaults = Some(yaml);
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
    store_errors: IntCounter,
    overrides: IntGauge,
}

impl FlagMetrics {
    fn new(m: &Metrics) -> Result<Self, prometheus::Error> {
        let evaluations = IntCounterVec::new(
            Opts::new(
                "feature_flag_evaluations_total",
                "Feature flag evaluations by flag and result (on, off); flags nobody defined count under the flag _unknown.",
            ),
            &["flag", "result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("feature_flags_reloads_total", "Feature flag file reloads by outcome (ok, error)."),
            &["outcome"],
        )?;
        let store_errors = IntCounter::new(
            "feature_flags_store_errors_total",
            "Reads of the flag override store that failed (the last overrides read stay in effect).",
        )?;
        let overrides =
            IntGauge::new("feature_flag_overrides", "Flags whose runtime override is in effect instead of the file.")?;
        m.register(evaluations.clone())?;
        m.register(reloads.clone())?;
        m.register(store_errors.clone())?;
        m.register(overrides.clone())?;
        Ok(Self {
            reload_ok: reloads.with_label_values(&["ok"]),
            reload_error: reloads.with_label_values(&["error"]),
            evaluations,
            store_errors,
            overrides,
        })
    }
}

/// Where a flag's definition in effect comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The service's built-in defaults ([`FlagsOptions::defaults`]).
    Default,
    /// The flags file.
    File,
    /// A runtime override of a flag the defaults or the file define.
    Override,
    /// A runtime override of a flag only the override defines.
    Runtime,
}

/// Evaluations of one flag since the process started, by result.
#[derive(Debug, Default)]
pub(crate) struct FlagStats {
    on: AtomicU64,
    off: AtomicU64,
}

/// One immutable version of the flag set.
struct Snapshot {
    flags: HashMap<String, Compiled>,
    loaded_at: SystemTime,
}

/// The two layers the set is made of: the file and the store's overrides over it.
struct Layers {
    defaults: BTreeMap<String, FlagDef>,
    file: BTreeMap<String, FlagDef>,
    file_hash: [u8; 32],
    overrides: Overrides,
}

/// What the watcher last read of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(String),
}

#[derive(Debug, Default)]
struct StoreStatus {
    synced_at: Option<SystemTime>,
    error: Option<String>,
}

struct Inner {
    current: ArcSwap<Snapshot>,
    file: Option<PathBuf>,
    environment: String,
    metrics: Option<FlagMetrics>,
    reloads: Option<ReloadLog>,
    /// Serializes rebuilds (not evaluations), so two cannot interleave compile and swap.
    layers: Mutex<Layers>,
    /// What the watcher last saw of the file (a read error is reported once, not per poll).
    seen: Mutex<Option<Seen>>,
    store: Mutex<Arc<dyn FlagStore>>,
    store_status: Mutex<StoreStatus>,
    stats: Mutex<HashMap<String, Arc<FlagStats>>>,
    changes: broadcast::Sender<FlagEvent>,
}

/// How many changes a [`Flags::subscribe`] receiver may fall behind before it misses some.
pub const SUBSCRIPTION_BUFFER: usize = 256;

/// The most changes [`Flags::history`] returns at once.
pub const MAX_HISTORY: u32 = 1000;

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Validates a flags file without keeping it (for `config check`).
pub fn check_file(path: &Path) -> Result<usize, FlagsError> {
    let text = read(path)?;
    model::parse(&text).map(|f| f.len()).map_err(|problems| invalid(path, problems))
}

/// Validates one flag's key and definition, as an override is validated before it is stored.
///
/// ```
/// let def = keel_features::FlagDef { enabled: true, ..Default::default() };
/// assert!(keel_features::check_flag("feed.live", &def).is_ok());
/// assert!(keel_features::check_flag("no spaces", &def).is_err());
/// ```
pub fn check_flag(key: &str, def: &FlagDef) -> Result<(), Vec<FlagProblem>> {
    model::check_one(key, def)
}

fn read(path: &Path) -> Result<String, FlagsError> {
    std::fs::read_to_string(path).map_err(|source| FlagsError::Read { path: path.to_owned(), source })
}

fn invalid(path: &Path, problems: Vec<FlagProblem>) -> FlagsError {
    FlagsError::Invalid { origin: path.display().to_string(), problems }
}

/// Whether `key` is `prefix` or under it (`feed` and `feed.` both list `feed.live`).
fn under(key: &str, prefix: &str) -> bool {
    let prefix = prefix.strip_suffix('.').unwrap_or(prefix);
    prefix.is_empty() || key == prefix || key.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'))
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
        let defaults = match options.defaults {
            Some(yaml) => model::parse(yaml)
                .map_err(|problems| FlagsError::Invalid { origin: "<built-in defaults>".into(), problems })?,
            None => BTreeMap::new(),
        };
        let hash = sha256(text.as_bytes());
        let flags = Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Snapshot { flags: HashMap::new(), loaded_at: SystemTime::now() }),
                file,
                environment: options.environment,
                metrics,
                reloads: options.reloads,
                layers: Mutex::new(Layers { defaults, file: defs, file_hash: hash, overrides: Overrides::default() }),
                seen: Mutex::new(Some(Seen::Content(hash))),
                store: Mutex::new(Arc::new(MemoryStore::default())),
                store_status: Mutex::default(),
                stats: Mutex::default(),
                changes: broadcast::channel(SUBSCRIPTION_BUFFER).0,
            }),
        };
        flags.rebuild(&lock(&flags.inner.layers));
        Ok(flags)
    }

    /// Keeps runtime overrides in `store` (shared by the service's replicas) instead of this
    /// process's memory. Its overrides apply from the next [`Flags::refresh`] ([`Flags::sync`]
    /// calls it at once, then every poll interval). Overrides set before are dropped.
    pub fn attach(&self, store: Arc<dyn FlagStore>) {
        *lock(&self.inner.store) = store;
        let mut layers = lock(&self.inner.layers);
        layers.overrides = Overrides::default();
        self.rebuild(&layers);
    }

    /// What keeps the overrides: `memory`, `database` or `redis`.
    pub fn store_kind(&self) -> &'static str {
        lock(&self.inner.store).kind()
    }

    fn store(&self) -> Arc<dyn FlagStore> {
        lock(&self.inner.store).clone()
    }

    /// Reads the store's version and, if it moved, its overrides, and applies them. A failure
    /// keeps the overrides last read (logged once per outage, counted, shown on
    /// `/admin/flags`).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let store = self.store();
        if !store.ready() && lock(&self.inner.store_status).synced_at.is_none() {
            // Still connecting or migrating at start-up: readiness says so; nothing to report.
            return Ok(());
        }
        let known = lock(&self.inner.layers).overrides.version;
        let result = match store.version().await {
            Ok(v) if v == known => Ok(None),
            Ok(v) => store.load().await.map(|o| Some((o, v < known))),
            Err(e) => Err(e),
        };
        let mut status = lock(&self.inner.store_status);
        match result {
            Ok(loaded) => {
                if let Some((overrides, reset)) = loaded {
                    self.apply_overrides(overrides, reset);
                }
                if status.error.take().is_some() {
                    tracing::info!("feature flag store readable again");
                }
                status.synced_at = Some(SystemTime::now());
                Ok(())
            }
            Err(e) => {
                if let Some(m) = &self.inner.metrics {
                    m.store_errors.inc();
                }
                let text = e.to_string();
                if status.error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "feature flag store unreadable; the last overrides read stay in effect");
                }
                status.error = Some(text);
                Err(e)
            }
        }
    }

    /// Applies `overrides` unless a newer version is already applied. `reset`: the store's
    /// version went back (a Redis that lost its data, a table restored from a backup), so its
    /// content is the truth whatever its version.
    fn apply_overrides(&self, mut overrides: Overrides, reset: bool) {
        let mut layers = lock(&self.inner.layers);
        if reset {
            tracing::warn!(
                from = layers.overrides.version,
                to = overrides.version,
                "feature flag store version went back; applying its content as it is"
            );
        } else if overrides.version <= layers.overrides.version {
            // A slower read that lost the race to a newer one (or one that saw nothing new).
            return;
        }
        overrides.flags.retain(|key, o| match model::check_one(key, &o.def) {
            Ok(()) => true,
            Err(problems) => {
                let why = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                tracing::error!(flag = %key, error = %why, "ignoring an invalid flag override; the file's definition applies");
                false
            }
        });
        layers.overrides = overrides;
        self.rebuild(&layers);
    }

    /// Polls the store every `every` (see [`Flags::refresh`]) until `stop` is cancelled, so a
    /// change made on another replica applies here within `every`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a set is applied with a single store, never half.
    pub async fn sync(self, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.refresh() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Overrides `key` with `def` at runtime (or adds it, if the file has no such flag), in the
    /// store every replica reads, and applies it here at once. `actor` and `reason` go into the
    /// flag's history. Returns the change.
    pub async fn set_override(
        &self,
        key: &str,
        def: FlagDef,
        actor: &str,
        reason: &str,
    ) -> Result<Option<FlagChange>, OverrideError> {
        model::check_one(key, &def).map_err(OverrideError::Invalid)?;
        self.change(key, Some(&def), actor, reason).await
    }

    /// Removes `key`'s override: the flag follows the file again (or no longer exists, if the
    /// file has no such flag). `Ok(None)`: it had no override.
    pub async fn remove_override(
        &self,
        key: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<FlagChange>, OverrideError> {
        self.change(key, None, actor, reason).await
    }

    async fn change(
        &self,
        key: &str,
        def: Option<&FlagDef>,
        actor: &str,
        reason: &str,
    ) -> Result<Option<FlagChange>, OverrideError> {
        let change = self.store().set(key, def, actor, reason).await.map_err(OverrideError::Store)?;
        if let Some(c) = &change {
            tracing::info!(
                target: "audit",
                flag = %key,
                actor = %c.actor,
                reason = %c.reason,
                change = c.id,
                removed = c.after.is_none(),
                "feature flag override changed"
            );
        }
        // Applied here now; the other replicas follow on their next poll. A failed read is
        // reported by `refresh` and retried by `sync`.
        let _ = self.refresh().await;
        Ok(change)
    }

    /// The newest `limit` (at most [`MAX_HISTORY`]) override changes, of `key` or of every flag,
    /// newest first.
    pub async fn history(&self, key: Option<&str>, limit: u32) -> Result<Vec<FlagChange>, StoreError> {
        self.store().history(key, limit.min(MAX_HISTORY)).await
    }

    /// Every later change of a flag's definition in effect (from the file or the store), as it
    /// is applied here. A receiver that falls more than [`SUBSCRIPTION_BUFFER`] changes behind
    /// gets `RecvError::Lagged` and should re-read what it depends on.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let flags = keel_features::Flags::from_yaml("feed.live: {enabled: false}", Default::default()).unwrap();
    /// let mut changes = flags.subscribe();
    /// let on = keel_features::FlagDef { enabled: true, ..Default::default() };
    /// flags.set_override("feed.live", on, "ops", "launch").await.unwrap();
    /// let event = changes.recv().await.unwrap();
    /// assert_eq!(event.key, "feed.live");
    /// assert!(event.after.unwrap().enabled);
    /// # }
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<FlagEvent> {
        self.inner.changes.subscribe()
    }

    /// Compiles `layers` and swaps the result in, then tells subscribers what changed.
    /// Called with the layers locked, so rebuilds are serialized.
    fn rebuild(&self, layers: &Layers) {
        let mut merged: BTreeMap<String, (FlagDef, Source)> =
            layers.defaults.iter().map(|(k, d)| (k.clone(), (d.clone(), Source::Default))).collect();
        merged.extend(layers.file.iter().map(|(k, d)| (k.clone(), (d.clone(), Source::File))));
        for (k, o) in &layers.overrides.flags {
            let source = if merged.contains_key(k) { Source::Override } else { Source::Runtime };
            merged.insert(k.clone(), (o.def.clone(), source));
        }
        let flags = model::compile(merged, |k| self.handles(k));
        let previous = self.inner.current.swap(Arc::new(Snapshot { flags, loaded_at: SystemTime::now() }));
        if let Some(m) = &self.inner.metrics {
            m.overrides.set(layers.overrides.flags.len() as i64);
        }
        let current = self.inner.current.load();
        let keys: std::collections::BTreeSet<&String> = previous.flags.keys().chain(current.flags.keys()).collect();
        for key in keys {
            let (before, after) = (previous.flags.get(key), current.flags.get(key));
            if before.map(|c| (&c.def, c.source)) != after.map(|c| (&c.def, c.source)) {
                // No receiver is fine: nobody subscribed.
                let _ = self.inner.changes.send(FlagEvent {
                    key: key.clone(),
                    before: before.map(|c| c.def.clone()),
                    after: after.map(|c| c.def.clone()),
                    source: after.map(|c| c.source),
                });
            }
        }
    }

    fn handles(&self, key: &str) -> model::Handles {
        let (on, off) = counters(self.inner.metrics.as_ref(), key);
        let stats = lock(&self.inner.stats).entry(key.to_owned()).or_default().clone();
        model::Handles { on, off, stats }
    }

    /// Whether `key` is on for `ctx`. Unknown flags are off.
    pub fn is_enabled(&self, key: &str, ctx: &EvalContext) -> bool {
        evaluate(&self.inner, &self.inner.current.load(), key, ctx)
    }

    /// What `key` gives `ctx`, and where its definition comes from, without counting the
    /// evaluation (for operators trying a flag). `None`: no such flag.
    pub fn explain(&self, key: &str, ctx: &EvalContext) -> Option<(bool, Source)> {
        let snapshot = self.inner.current.load();
        let flag = snapshot.flags.get(key)?;
        Some((flag.decide(key, ctx, &self.inner.environment), flag.source))
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
        let mut seen = lock(&self.inner.seen);
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
        *seen = Some(Seen::Content(hash));
        if lock(&self.inner.layers).file_hash == hash {
            return Ok(self.len());
        }
        self.apply(&text, hash, path)
    }

    /// Replaces the file's layer with `text` (flags not loaded from a file; tests). Same rules
    /// as [`Flags::reload`].
    pub fn replace_yaml(&self, text: &str) -> Result<usize, FlagsError> {
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
                let n = defs.len();
                {
                    let mut layers = lock(&self.inner.layers);
                    layers.file = defs;
                    layers.file_hash = hash;
                    // The one store that publishes the new set: readers hold either snapshot whole.
                    self.rebuild(&layers);
                }
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
            let seen = lock(&self.inner.seen).clone();
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
        self.report_under("")
    }

    /// The flags named `prefix` or under it (`feed` lists `feed.live` and `feed.ranking`; empty:
    /// every flag), for `/admin/flags?prefix=`.
    pub fn report_under(&self, prefix: &str) -> FlagsReport {
        let snapshot = self.inner.current.load();
        let (file_defs, overrides) = {
            let layers = lock(&self.inner.layers);
            let mut under = layers.defaults.clone();
            under.extend(layers.file.clone());
            (under, layers.overrides.clone())
        };
        let mut flags: Vec<FlagReport> = snapshot
            .flags
            .iter()
            .filter(|(k, _)| under(k, prefix))
            .map(|(k, c)| {
                let o = overrides.flags.get(k);
                FlagReport {
                    key: k.clone(),
                    def: c.def.clone(),
                    source: c.source,
                    file_default: if c.source == Source::Override { file_defs.get(k).cloned() } else { None },
                    overridden_by: o.map(|o| o.updated_by.clone()),
                    overridden_at: o.and_then(|o| rfc3339_ms(o.updated_at_ms)),
                    evaluations: Evaluations {
                        on: c.stats.on.load(Ordering::Relaxed),
                        off: c.stats.off.load(Ordering::Relaxed),
                    },
                }
            })
            .collect();
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        let status = lock(&self.inner.store_status);
        FlagsReport {
            file: self.inner.file.as_ref().map(|p| p.display().to_string()),
            loaded_at: humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
            environment: self.inner.environment.clone(),
            store: StoreReport {
                kind: self.store_kind(),
                version: overrides.version,
                synced_at: status.synced_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                error: status.error.clone(),
            },
            flags,
        }
    }
}

/// Milliseconds since the epoch as RFC 3339, for reports.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    let t = SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))?;
    Some(humantime::format_rfc3339_millis(t).to_string())
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
    if on { &flag.stats.on } else { &flag.stats.off }.fetch_add(1, Ordering::Relaxed);
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

/// A change of one flag's definition in effect ([`Flags::subscribe`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FlagEvent {
    /// The flag.
    pub key: String,
    /// Its definition before (`None`: it did not exist).
    pub before: Option<FlagDef>,
    /// Its definition now (`None`: it no longer exists).
    pub after: Option<FlagDef>,
    /// Where the definition now comes from.
    pub source: Option<Source>,
}

/// Why an override was not changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverrideError {
    /// The key or definition is invalid; every problem is listed.
    #[error("invalid flag: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FlagProblem>),
    /// The store could not be written; nothing changed.
    #[error(transparent)]
    Store(StoreError),
}

/// The active flag set.
#[derive(Debug, Clone, Serialize)]
pub struct FlagsReport {
    /// The file, if any.
    pub file: Option<String>,
    /// When the active set was last rebuilt (RFC 3339).
    pub loaded_at: String,
    /// The default environment of evaluations.
    pub environment: String,
    /// Where runtime overrides live.
    pub store: StoreReport,
    /// Every flag, by key.
    pub flags: Vec<FlagReport>,
}

/// The override store, as [`FlagsReport`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// `memory` (this process only), `database` or `redis` (every replica).
    pub kind: &'static str,
    /// The version of the overrides in effect.
    pub version: i64,
    /// When the store was last read successfully (RFC 3339).
    pub synced_at: Option<String>,
    /// Why the last read failed, while it does.
    pub error: Option<String>,
}

/// One flag of [`FlagsReport`].
#[derive(Debug, Clone, Serialize)]
pub struct FlagReport {
    /// Its key.
    pub key: String,
    /// Its definition in effect.
    #[serde(flatten)]
    pub def: FlagDef,
    /// Where that definition comes from.
    pub source: Source,
    /// The definition an override replaces (the file's, or the built-in default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_default: Option<FlagDef>,
    /// Who set the override in effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overridden_by: Option<String>,
    /// When (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overridden_at: Option<String>,
    /// Its evaluations in this process since it started.
    pub evaluations: Evaluations,
}

/// Evaluations of a flag by result.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Evaluations {
    /// Answered on.
    pub on: u64,
    /// Answered off.
    pub off: u64,
}

#[cfg(test)]
mod tests;
