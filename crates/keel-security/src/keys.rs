//! Data keys that rotate themselves: versioned in the service's database, re-encrypted in the
//! background, retired once nothing uses them.
//!
//! [`DataKeys`] keeps a [`Keyring`] in step with the table `keel_data_keys` ([`migrations`]):
//!
//! * **Versioned keys.** [`DataKeys::rotate`] makes key `rot-<n>` (`n` one more than the newest),
//!   wraps it with the master key, which never enters the database, and stores it. Two instances
//!   rotating at once cannot both win: the generation is the primary key.
//! * **Safe activation.** A new key becomes active three `refresh_interval`s after it is made.
//!   Every instance rereads the table each interval ([`DataKeys::refresh`]), so all of them can
//!   decrypt with the key before any of them encrypts with it. Until the first rotation the
//!   configuration's `active_key` is active; the configuration's keys always decrypt.
//! * **Re-encryption.** [`DataKeys::maintain`] moves the values of the declared
//!   [`EncryptedColumn`]s to the active key, a batch per column per run, each row with a
//!   compare-and-set `UPDATE`, so a value written meanwhile is never overwritten. Once a pass
//!   finds nothing to move, the work is idle until the active key changes (or a recheck, every
//!   `retire_after`).
//! * **Retirement.** A rotated key that a newer active key superseded is retired once the counts
//!   have found no value of it for `retire_after` (so a value read just before it moved stays
//!   readable as long): its wrapped key is deleted and its row stays, as history. A key of
//!   the configuration is never deleted, only reported unused ([`KeyStatus::values`] is 0).
//!
//! Progress is in the metrics (`data_keys_values{key}`, `data_keys_pending_values`,
//! `data_keys_reencrypted_total`, …, see [`DataKeys::with_metrics`]) and in
//! [`DataKeys::status`], which the operations page shows.
//!
//! ```ignore
//! let keys = DataKeys::new(&db, &cfg.security.encryption, [EncryptedColumn::new("users", "id", "email_ciphertext")?])?;
//! keys.refresh().await?;
//! let ring = keys.keyring(); // encrypts with the active key, whichever it is now
//! keys.rotate().await?;      // `rot-1`, active in 3 × refresh_interval
//! keys.maintain(&policy).await?;
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec, Opts};
use sqlx::{AnyPool, Row};

use crate::config::{EncryptionConfig, ROTATED_KID_PREFIX};
use crate::crypto::{CryptoError, Keyring, MasterKey, Ring, VERSION};
use keel_data::{Backend, Db, Traced};
use keel_telemetry::Metrics;

/// A new key becomes active this many refresh intervals after it is made.
const ACTIVATION_INTERVALS: u32 = 3;

/// Errors of the data-key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The database refused or failed.
    #[error("data keys database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A key is unusable: it does not unwrap with the master key, or the configuration lacks one.
    #[error("data keys: {0}")]
    Crypto(#[from] CryptoError),
    /// Another instance made the next key at the same moment; the table has it.
    #[error("another instance rotated the data keys at the same time")]
    Concurrent,
    /// A declared column is unusable.
    #[error("encrypted column: {0}")]
    Column(String),
    /// A metric could not be registered.
    #[error("data keys metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A column that holds values of the keyring (`v1:<kid>:…`), in a table whose primary key is
/// one text column: the re-encryption worker moves its values to the active key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedColumn {
    table: String,
    key: String,
    column: String,
}

impl EncryptedColumn {
    /// `table.column`, its rows identified by the text column `key`. Names are SQL
    /// identifiers: a letter or `_`, then letters, digits or `_`, at most 63.
    pub fn new(table: &str, key: &str, column: &str) -> Result<Self, KeyError> {
        for name in [table, key, column] {
            let ok = name.len() < 64
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(KeyError::Column(format!("`{name}` is not a plain SQL identifier")));
            }
        }
        Ok(Self { table: table.to_owned(), key: key.to_owned(), column: column.to_owned() })
    }

    /// `table.column`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }
}

/// Keel's data-key table as a migration set of its own (recorded in `_keel_data_keys_migrations`)
/// for every backend: keel-app applies it with the migrations of a service that keeps its data
/// keys in its database (`Service::rotates_data_keys`).
///
/// ```
/// let m = keel_security::keys::migrations();
/// assert_eq!(m.for_backend(keel_data::Backend::Sqlite).unwrap().iter().count(), 1);
/// ```
pub fn migrations() -> keel_data::Migrations {
    keel_data::Migrations::library("keel_data_keys")
        .postgres(sqlx::migrate!("migrations/keys/postgres"))
        .mysql(sqlx::migrate!("migrations/keys/mysql"))
        .sqlite(sqlx::migrate!("migrations/keys/sqlite"))
}

/// What [`DataKeys::maintain`] does: the `security.encryption` settings it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Make a new key when the newest is this old (none: only on request).
    pub rotate_every: Option<Duration>,
    /// Rows moved per column per run.
    pub batch: u32,
    /// How long an unused key stays after a newer one became active.
    pub retire_after: Duration,
}

impl Policy {
    /// The policy `security.encryption.*` describes.
    pub fn from_config(cfg: &EncryptionConfig) -> Self {
        Self { rotate_every: cfg.rotate_every, batch: cfg.reencrypt_batch, retire_after: cfg.retire_after }
    }
}

/// Where a key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// `security.encryption.data_keys`.
    Configuration,
    /// Made by rotation, in `keel_data_keys`.
    Database,
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// New values are encrypted with it.
    Active,
    /// Made, known to the instances, not yet active.
    Pending,
    /// Decrypts values not yet moved; a newer key is active.
    Superseded,
    /// Deleted: values it encrypted can no longer be read.
    Retired,
}

/// One key as [`DataKeys::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    /// The key id (`v1:<kid>:…`).
    pub kid: String,
    /// The configuration or the database.
    pub source: KeySource,
    /// Active, pending, superseded or retired.
    pub state: KeyState,
    /// When it was made, in microseconds since the epoch (database keys).
    pub created_at: Option<i64>,
    /// When it became (or becomes) active (database keys).
    pub active_from: Option<i64>,
    /// When it was retired.
    pub retired_at: Option<i64>,
    /// Values encrypted with it at the last count (none before the first).
    pub values: Option<u64>,
}

/// The keys and the re-encryption's progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeysStatus {
    /// The key new values are encrypted with.
    pub active: String,
    /// Every key, configuration first, then the database's by generation.
    pub keys: Vec<KeyStatus>,
    /// The declared columns (`table.column`).
    pub columns: Vec<String>,
    /// Values still on an older key of the ring (the last count, less those moved since).
    pub pending_values: Option<u64>,
    /// Values that no key of the ring decrypts (altered, or their key retired) at the last pass.
    pub unreadable_values: u64,
    /// Values moved by this instance since it started.
    pub reencrypted: u64,
    /// When the last count was made, in microseconds since the epoch.
    pub counted_at: Option<i64>,
    /// When the next scheduled rotation is due (with `rotate_every`).
    pub next_rotation_at: Option<i64>,
    /// When this instance last read the key table.
    pub refreshed_at: Option<i64>,
}

/// What one [`DataKeys::maintain`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The key a rotation made.
    pub rotated: Option<String>,
    /// Values moved to the active key.
    pub moved: u64,
    /// Keys retired.
    pub retired: Vec<String>,
    /// Nothing to do: every value was on the active key at the last pass.
    pub idle: bool,
}

#[derive(Debug, Clone)]
struct StoredKey {
    generation: i64,
    kid: String,
    wrapped: Option<String>,
    created_at: i64,
    active_from: i64,
    retired_at: Option<i64>,
}

#[derive(Debug, Default)]
struct State {
    stored: Vec<StoredKey>,
    refreshed_at: Option<i64>,
    /// The active key the current pass moves values to; a pass starts over when it changes.
    pass_active: Option<String>,
    /// Per column: the key after which the current pass goes on ("" from the start).
    cursors: BTreeMap<String, String>,
    /// The columns the current pass is through with.
    done: std::collections::BTreeSet<String>,
    /// Values moved and unreadable in the current pass.
    pass_moved: u64,
    pass_unreadable: u64,
    unreadable: u64,
    /// Values per key at the last count.
    counts: Option<BTreeMap<String, u64>>,
    /// Since when each key with no value has had none, by every count since.
    unused_since: BTreeMap<String, i64>,
    counted_at: Option<i64>,
    /// Values moved since the last count.
    moved_since_count: u64,
    reencrypted: u64,
    /// The active key a whole pass found nothing to move for, and when.
    settled: Option<(String, i64)>,
}

struct KeyMetrics {
    values: IntGaugeVec,
    pending: IntGauge,
    unreadable: IntGauge,
    reencrypted: IntCounter,
    rotations: IntCounter,
    retired: IntCounter,
    refresh_failures: IntCounter,
    active_since: Gauge,
}

impl KeyMetrics {
    fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let m = Self {
            values: IntGaugeVec::new(
                Opts::new("data_keys_values", "Encrypted values per data key at the last count."),
                &["key"],
            )?,
            pending: IntGauge::new("data_keys_pending_values", "Encrypted values still on an older data key.")?,
            unreadable: IntGauge::new(
                "data_keys_unreadable_values",
                "Encrypted values no data key decrypts, at the last re-encryption pass.",
            )?,
            reencrypted: IntCounter::new(
                "data_keys_reencrypted_total",
                "Values this instance moved to the active data key.",
            )?,
            rotations: IntCounter::new("data_keys_rotations_total", "Data keys this instance made.")?,
            retired: IntCounter::new("data_keys_retired_total", "Data keys this instance retired.")?,
            refresh_failures: IntCounter::new(
                "data_keys_refresh_failures_total",
                "Reads of the data-key table that failed (the last keys stay in use).",
            )?,
            active_since: Gauge::new(
                "data_keys_active_since_timestamp_seconds",
                "Unix time the active data key became active (0: the configuration's key).",
            )?,
        };
        metrics.register(m.values.clone())?;
        metrics.register(m.pending.clone())?;
        metrics.register(m.unreadable.clone())?;
        metrics.register(m.reencrypted.clone())?;
        metrics.register(m.rotations.clone())?;
        metrics.register(m.retired.clone())?;
        metrics.register(m.refresh_failures.clone())?;
        metrics.register(m.active_since.clone())?;
        Ok(m)
    }
}

/// The data keys of one service's database and the keyring they feed. Cheap to clone.
#[derive(Clone)]
pub struct DataKeys {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    db: Option<Db>,
    master: MasterKey,
    configured: Vec<(String, String)>,
    configured_active: String,
    keyring: Keyring,
    columns: Vec<EncryptedColumn>,
    refresh_interval: Duration,
    metrics: Option<KeyMetrics>,
    state: Mutex<State>,
    /// Held from a refresh's read to its install: a slow read finishing after a newer one would
    /// otherwise install an older key set (without a key that values already use).
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys").field("keyring", &self.inner.keyring).field("columns", &self.inner.columns).finish()
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl DataKeys {
    /// The store in `db` for the keys `cfg` describes (master key, configured keys, refresh
    /// interval), re-encrypting `columns`. The keyring starts with the configured keys; call
    /// [`DataKeys::refresh`] to add the database's.
    pub fn new(
        db: &Db,
        cfg: &EncryptionConfig,
        columns: impl IntoIterator<Item = EncryptedColumn>,
    ) -> Result<Self, KeyError> {
        let mut keys = Self::with_pool(db.pool().clone(), db.backend(), cfg, columns)?;
        if let Some(inner) = Arc::get_mut(&mut keys.inner) {
            inner.db = Some(db.clone());
        }
        Ok(keys)
    }

    /// [`DataKeys::new`] on a bare pool (statements untraced).
    pub fn with_pool(
        pool: AnyPool,
        backend: Backend,
        cfg: &EncryptionConfig,
        columns: impl IntoIterator<Item = EncryptedColumn>,
    ) -> Result<Self, KeyError> {
        let master = cfg
            .master_key
            .as_ref()
            .ok_or_else(|| CryptoError::Config("security.encryption.master_key is not set".into()))?;
        let master = MasterKey::from_secret(master)?;
        let configured_active = cfg
            .active_key
            .clone()
            .ok_or_else(|| CryptoError::Config("security.encryption.active_key is not set".into()))?;
        let configured: Vec<(String, String)> = cfg.data_keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let keyring =
            Keyring::new(&master, configured.iter().map(|(k, v)| (k.as_str(), v.as_str())), &configured_active)?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                db: None,
                master,
                configured,
                configured_active,
                keyring,
                columns: columns.into_iter().collect(),
                refresh_interval: cfg.refresh_interval,
                metrics: None,
                state: Mutex::new(State::default()),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Reports the `data_keys_*` metrics into `metrics`. Call before cloning.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Result<Self, KeyError> {
        let m = KeyMetrics::register(metrics)?;
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.metrics = Some(m),
            None => return Err(KeyError::Column("with_metrics must be called before the store is cloned".into())),
        }
        Ok(self)
    }

    /// The keyring: it follows every [`DataKeys::refresh`], in every clone.
    pub fn keyring(&self) -> Keyring {
        self.inner.keyring.clone()
    }

    /// The declared columns.
    pub fn columns(&self) -> &[EncryptedColumn] {
        &self.inner.columns
    }

    fn on<'c, X: sqlx::Executor<'c, Database = sqlx::Any>>(&self, executor: X) -> Traced<'_, X> {
        match &self.inner.db {
            Some(db) => db.on(executor),
            None => Traced::untraced(executor),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rereads the key table and installs its keys with the configured ones; the active key is
    /// the newest whose activation time has come, else the configuration's. On an error the
    /// keyring keeps the keys it had (and `data_keys_refresh_failures_total` counts it).
    pub async fn refresh(&self) -> Result<(), KeyError> {
        let result = self.try_refresh().await;
        if result.is_err()
            && let Some(m) = &self.inner.metrics
        {
            m.refresh_failures.inc();
        }
        result
    }

    async fn try_refresh(&self) -> Result<(), KeyError> {
        let _in_order = self.inner.refreshing.lock().await;
        let rows = sqlx::query(
            "SELECT generation, kid, wrapped, created_at, active_from, retired_at FROM keel_data_keys \
             ORDER BY generation",
        )
        .fetch_all(self.on(&self.inner.pool))
        .await?;
        let stored = rows
            .iter()
            .map(|r| {
                Ok(StoredKey {
                    generation: r.try_get("generation")?,
                    kid: r.try_get("kid")?,
                    wrapped: r.try_get("wrapped")?,
                    created_at: r.try_get("created_at")?,
                    active_from: r.try_get("active_from")?,
                    retired_at: r.try_get("retired_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let now = now_us();
        // A stored key that does not unwrap (another master key wrote it) is left out and
        // reported, never made active: one such row must not stop every instance.
        let usable: Vec<&StoredKey> = stored
            .iter()
            .filter(|k| {
                let Some(w) = k.wrapped.as_deref() else { return false };
                let ok = self.inner.master.unwrap_key(&k.kid, w).is_ok();
                if !ok {
                    tracing::warn!(key = %k.kid, "data key skipped: it does not unwrap with this master key");
                    if let Some(m) = &self.inner.metrics {
                        m.refresh_failures.inc();
                    }
                }
                ok
            })
            .collect();
        let active = usable
            .iter()
            .rev()
            .find(|k| k.active_from <= now)
            .map_or(self.inner.configured_active.as_str(), |k| k.kid.as_str());
        let wrapped = self
            .inner
            .configured
            .iter()
            .map(|(k, w)| (k.as_str(), w.as_str()))
            .chain(usable.iter().filter_map(|k| k.wrapped.as_deref().map(|w| (k.kid.as_str(), w))));
        let ring = Ring::unwrap_all(&self.inner.master, wrapped, active)?;
        let active_since = stored.iter().find(|k| k.kid == ring.active).map_or(0, |k| k.active_from);
        self.inner.keyring.install(ring);
        if let Some(m) = &self.inner.metrics {
            #[allow(clippy::cast_precision_loss)]
            m.active_since.set(active_since as f64 / 1e6);
        }
        let mut state = self.state();
        state.stored = stored;
        state.refreshed_at = Some(now);
        Ok(())
    }

    /// Makes the next key (`rot-<n>`), wrapped with the master key; it becomes active three
    /// refresh intervals from now. [`KeyError::Concurrent`] when another instance made that
    /// generation first.
    pub async fn rotate(&self) -> Result<String, KeyError> {
        let newest: i64 = sqlx::query("SELECT COALESCE(MAX(generation), 0) AS newest FROM keel_data_keys")
            .fetch_one(self.on(&self.inner.pool))
            .await?
            .try_get("newest")?;
        self.rotate_after(newest).await
    }

    /// Makes generation `newest + 1`: a scheduled rotation names the newest it saw, so
    /// instances that saw the same table make one key between them.
    async fn rotate_after(&self, newest: i64) -> Result<String, KeyError> {
        let generation = newest + 1;
        let kid = format!("{ROTATED_KID_PREFIX}{generation}");
        let wrapped = self.inner.master.new_data_key(&kid)?;
        let now = now_us();
        let active_from = now.saturating_add(micros(self.inner.refresh_interval * ACTIVATION_INTERVALS));
        let inserted = sqlx::query(self.inner.backend.statement(
            "INSERT INTO keel_data_keys (generation, kid, wrapped, created_at, active_from, retired_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        ))
        .bind(generation)
        .bind(&kid)
        .bind(&wrapped)
        .bind(now)
        .bind(active_from)
        .execute(self.on(&self.inner.pool))
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(KeyError::Concurrent),
            Err(e) => return Err(e.into()),
        }
        if let Some(m) = &self.inner.metrics {
            m.rotations.inc();
        }
        tracing::info!(key = %kid, active_in = ?self.inner.refresh_interval * ACTIVATION_INTERVALS, "data key made");
        self.refresh().await?;
        Ok(kid)
    }

    /// When the next scheduled rotation is due: `every` after the newest key was made, or now
    /// when the database has none.
    fn next_rotation(&self, every: Duration) -> i64 {
        self.state().stored.last().map_or(0, |k| k.created_at.saturating_add(micros(every)))
    }

    /// One run of the background work: refresh, rotate when due, move a batch of values per
    /// column to the active key, and at the end of a pass count the values per key and retire
    /// unused keys. Idle once a pass moved nothing, until the active key changes or
    /// `retire_after` has passed.
    pub async fn maintain(&self, policy: &Policy) -> Result<Maintenance, KeyError> {
        let mut done = Maintenance::default();
        self.refresh().await?;
        if let Some(every) = policy.rotate_every
            && now_us() >= self.next_rotation(every)
        {
            let newest = self.state().stored.last().map_or(0, |k| k.generation);
            match self.rotate_after(newest).await {
                Ok(kid) => done.rotated = Some(kid),
                Err(KeyError::Concurrent) => self.refresh().await?,
                Err(e) => return Err(e),
            }
        }
        let active = self.inner.keyring.active();
        let recheck = micros(policy.retire_after);
        {
            let mut state = self.state();
            if state.pass_active.as_deref() != Some(active.as_str()) {
                // A new active key: the pass starts over and the values are counted anew.
                state.pass_active = Some(active.clone());
                state.cursors.clear();
                state.done.clear();
                state.pass_moved = 0;
                state.pass_unreadable = 0;
                state.counts = None;
                state.settled = None;
            }
            if let Some((kid, at)) = &state.settled
                && *kid == active
                && now_us() < at.saturating_add(recheck)
            {
                done.idle = true;
                return Ok(done);
            }
            state.settled = None;
        }
        if self.state().counts.is_none() {
            self.count().await?;
        }
        for column in &self.inner.columns {
            if self.state().done.contains(&column.name()) {
                continue;
            }
            done.moved += self.reencrypt_batch(column, &active, policy.batch).await?;
        }
        let pass_over = {
            let mut state = self.state();
            let over = self.inner.columns.iter().all(|c| state.done.contains(&c.name()));
            if over {
                let moved = state.pass_moved;
                state.unreadable = state.pass_unreadable;
                state.done.clear();
                state.pass_moved = 0;
                state.pass_unreadable = 0;
                if moved == 0 {
                    state.settled = Some((active.clone(), now_us()));
                }
                if let Some(m) = &self.inner.metrics {
                    m.unreadable.set(i64::try_from(state.unreadable).unwrap_or(i64::MAX));
                }
                Some(moved)
            } else {
                None
            }
        };
        if let Some(moved) = pass_over {
            let counts = self.count().await?;
            // Moved values are counted again by the next pass before any key is retired.
            if moved == 0 {
                done.retired = self.retire_unused(&counts, policy.retire_after).await?;
            }
        }
        Ok(done)
    }

    /// Moves up to `batch` values of `column` after the pass's cursor to `active`; how many. A
    /// column whose rows are all seen is done for the pass.
    async fn reencrypt_batch(&self, column: &EncryptedColumn, active: &str, batch: u32) -> Result<u64, KeyError> {
        let name = column.name();
        let cursor = self.state().cursors.get(&name).cloned().unwrap_or_default();
        let prefix = format!("{VERSION}:{active}:");
        let EncryptedColumn { table, key, column: col } = column;
        // Identifiers were checked by `EncryptedColumn::new`; the prefix length is a number.
        let select = format!(
            "SELECT {key} AS k, {col} AS v FROM {table} WHERE {col} IS NOT NULL AND SUBSTR({col}, 1, {len}) <> $1 \
             AND {key} > $2 ORDER BY {key} LIMIT {batch}",
            len = prefix.len(),
        );
        let rows = sqlx::query(self.inner.backend.statement(&select))
            .bind(&prefix)
            .bind(&cursor)
            .fetch_all(self.on(&self.inner.pool))
            .await?;
        let update = format!("UPDATE {table} SET {col} = $1 WHERE {key} = $2 AND {col} = $3");
        let ring = &self.inner.keyring;
        let (mut moved, mut unreadable, mut last) = (0u64, 0u64, cursor);
        for row in &rows {
            let id: String = row.try_get("k")?;
            let value: String = row.try_get("v")?;
            last = id.clone();
            let Ok(fresh) = ring.reencrypt(&value) else {
                unreadable += 1;
                continue;
            };
            // Compare-and-set: a value written since the read stays as it was written.
            let done = sqlx::query(self.inner.backend.statement(&update))
                .bind(&fresh)
                .bind(&id)
                .bind(&value)
                .execute(self.on(&self.inner.pool))
                .await?;
            moved += done.rows_affected();
        }
        let complete = rows.len() < usize::try_from(batch).unwrap_or(usize::MAX);
        let mut state = self.state();
        if complete {
            state.cursors.remove(&name);
            state.done.insert(name);
        } else {
            state.cursors.insert(name, last);
        }
        state.pass_moved += moved;
        state.pass_unreadable += unreadable;
        state.moved_since_count += moved;
        state.reencrypted += moved;
        if let Some(m) = &self.inner.metrics {
            m.reencrypted.inc_by(moved);
        }
        self.report_pending(&state);
        Ok(moved)
    }

    /// Counts the values per key in every declared column (one scan per column).
    pub async fn count(&self) -> Result<BTreeMap<String, u64>, KeyError> {
        let mut counts = BTreeMap::<String, u64>::new();
        let lead = VERSION.len() + 2;
        for EncryptedColumn { table, column: col, .. } in &self.inner.columns {
            // The key id sits between the version's `:` and the next one.
            let colon = match self.inner.backend {
                Backend::Sqlite => format!("INSTR(SUBSTR({col}, {lead}), ':')"),
                _ => format!("POSITION(':' IN SUBSTR({col}, {lead}))"),
            };
            // A value without the separator (not a ciphertext) counts under "".
            let sql = format!(
                "SELECT kid, COUNT(*) AS n FROM (SELECT CASE WHEN {colon} > 0 THEN SUBSTR({col}, {lead}, {colon} - 1) \
                 ELSE '' END AS kid FROM {table} WHERE {col} IS NOT NULL) AS used GROUP BY kid"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(self.on(&self.inner.pool)).await?;
            for row in rows {
                let kid: Option<String> = row.try_get("kid")?;
                let n: i64 = row.try_get("n")?;
                *counts.entry(kid.unwrap_or_default()).or_default() += u64::try_from(n).unwrap_or(0);
            }
        }
        if let Some(m) = &self.inner.metrics {
            m.values.reset();
            for kid in self.inner.keyring.key_ids() {
                let n = counts.get(&kid).copied().unwrap_or(0);
                m.values.with_label_values(&[kid.as_str()]).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let now = now_us();
        let mut state = self.state();
        let unused: Vec<String> =
            self.inner.keyring.key_ids().into_iter().filter(|k| counts.get(k).is_none_or(|n| *n == 0)).collect();
        state.unused_since.retain(|k, _| unused.contains(k));
        for kid in unused {
            state.unused_since.entry(kid).or_insert(now);
        }
        state.counts = Some(counts.clone());
        state.counted_at = Some(now);
        state.moved_since_count = 0;
        self.report_pending(&state);
        Ok(counts)
    }

    /// Retires the database's keys that a newer active key superseded and that no count has
    /// found a value of for `after`: a value read just before it moved stays readable as long.
    async fn retire_unused(&self, counts: &BTreeMap<String, u64>, after: Duration) -> Result<Vec<String>, KeyError> {
        let now = now_us();
        let active = self.inner.keyring.active();
        let candidates: Vec<(i64, String)> = {
            let state = self.state();
            let stored = &state.stored;
            stored
                .iter()
                .enumerate()
                .filter(|(_, k)| k.wrapped.is_some() && k.kid != active && counts.get(&k.kid).is_none_or(|n| *n == 0))
                .filter(|(_, k)| {
                    state.unused_since.get(&k.kid).is_some_and(|since| since.saturating_add(micros(after)) <= now)
                })
                .filter(|(i, _)| {
                    stored[i + 1..].iter().any(|later| later.wrapped.is_some() && later.active_from <= now)
                })
                .map(|(_, k)| (k.generation, k.kid.clone()))
                .collect()
        };
        let mut retired = Vec::new();
        for (generation, kid) in candidates {
            let done = sqlx::query(self.inner.backend.statement(
                "UPDATE keel_data_keys SET wrapped = NULL, retired_at = $1 WHERE generation = $2 AND wrapped IS NOT NULL",
            ))
            .bind(now)
            .bind(generation)
            .execute(self.on(&self.inner.pool))
            .await?;
            if done.rows_affected() > 0 {
                tracing::info!(key = %kid, "data key retired: no value uses it");
                if let Some(m) = &self.inner.metrics {
                    m.retired.inc();
                    m.values.with_label_values(&[kid.as_str()]).set(0);
                }
                retired.push(kid);
            }
        }
        if !retired.is_empty() {
            self.refresh().await?;
        }
        Ok(retired)
    }

    /// Re-wraps every stored data key from this store's master key to `new` in one transaction
    /// (master key rotation: the data keys, and so every value, stay the same). Instances still
    /// on the old master key keep the keys they read and fail to reread the table until they
    /// run with `new`. Returns how many keys it re-wrapped.
    pub async fn rewrap_stored(&self, new: &MasterKey) -> Result<usize, KeyError> {
        let mut tx = self.inner.pool.begin().await?;
        // Held until the commit: a key retired meanwhile is not written back.
        let lock = if self.inner.backend == Backend::Sqlite { "" } else { " FOR UPDATE" };
        let select = format!("SELECT generation, kid, wrapped FROM keel_data_keys WHERE wrapped IS NOT NULL{lock}");
        let rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch_all(&mut *tx).await?;
        let update = "UPDATE keel_data_keys SET wrapped = $1 WHERE generation = $2 AND wrapped IS NOT NULL";
        let mut rewrapped = 0;
        for row in &rows {
            let (generation, kid, wrapped): (i64, String, String) =
                (row.try_get("generation")?, row.try_get("kid")?, row.try_get("wrapped")?);
            // Already under the new master key: a second run finishes what the first began.
            if new.unwrap_key(&kid, &wrapped).is_ok() {
                continue;
            }
            let fresh = crate::crypto::rewrap(&self.inner.master, new, &kid, &wrapped)?;
            sqlx::query(self.inner.backend.statement(update)).bind(fresh).bind(generation).execute(&mut *tx).await?;
            rewrapped += 1;
        }
        tx.commit().await?;
        Ok(rewrapped)
    }

    /// Values still on an older key of the ring (what can move): the last count's, less those
    /// moved since (never below 0).
    fn pending(&self, state: &State) -> Option<u64> {
        let active = self.inner.keyring.active();
        let known = self.inner.keyring.key_ids();
        state.counts.as_ref().map(|c| {
            let on_old: u64 = c.iter().filter(|(k, _)| **k != active && known.contains(k)).map(|(_, n)| n).sum();
            on_old.saturating_sub(state.moved_since_count)
        })
    }

    fn report_pending(&self, state: &State) {
        if let (Some(m), Some(n)) = (&self.inner.metrics, self.pending(state)) {
            m.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The keys, their states and the re-encryption's progress as this instance last saw them.
    pub fn status(&self, rotate_every: Option<Duration>) -> KeysStatus {
        let active = self.inner.keyring.active();
        let now = now_us();
        let state = self.state();
        let values = |kid: &str| state.counts.as_ref().map(|c| c.get(kid).copied().unwrap_or(0));
        let mut keys: Vec<KeyStatus> = self
            .inner
            .configured
            .iter()
            .map(|(kid, _)| KeyStatus {
                kid: kid.clone(),
                source: KeySource::Configuration,
                state: if *kid == active { KeyState::Active } else { KeyState::Superseded },
                created_at: None,
                active_from: None,
                retired_at: None,
                values: values(kid),
            })
            .collect();
        keys.extend(state.stored.iter().map(|k| KeyStatus {
            kid: k.kid.clone(),
            source: KeySource::Database,
            state: if k.wrapped.is_none() {
                KeyState::Retired
            } else if k.kid == active {
                KeyState::Active
            } else if k.active_from > now {
                KeyState::Pending
            } else {
                KeyState::Superseded
            },
            created_at: Some(k.created_at),
            active_from: Some(k.active_from),
            retired_at: k.retired_at,
            values: if k.wrapped.is_none() { Some(0) } else { values(&k.kid) },
        }));
        let pending_values = self.pending(&state);
        let next_rotation_at =
            rotate_every.map(|every| state.stored.last().map_or(now, |k| k.created_at.saturating_add(micros(every))));
        KeysStatus {
            active,
            keys,
            columns: self.inner.columns.iter().map(EncryptedColumn::name).collect(),
            pending_values,
            unreadable_values: state.unreadable,
            reencrypted: state.reencrypted,
            counted_at: state.counted_at,
            next_rotation_at,
            refreshed_at: state.refreshed_at,
        }
    }
}
