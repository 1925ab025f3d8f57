//! A tamper-evident audit log in the service's own database.
//!
//! [`AuditLog::record`] appends a row to `audit_log` and emits a structured `audit` log line.
//! Each row stores a MAC of its own content and of the previous row's hash, so changing,
//! inserting or deleting a row breaks the chain from there on; [`AuditLog::verify`] (and
//! `<service> audit verify`) walks the chain and names the first broken row.
//!
//! * **Keyed.** The MAC is HMAC-SHA256 under the active key of `security.audit.keys`
//!   ([`AuditKeys`]); each row names its key (`key_id`), so keys rotate: new rows take the new
//!   active key, and `verify` checks old rows with the retired keys still listed. Without a
//!   key (development) rows are chained with plain SHA-256, which anyone who can write the table
//!   can recompute; an unkeyed row after a keyed one is reported as broken.
//! * **Anchored.** A chain that verifies can still have lost its newest rows, or have been
//!   rewritten by someone holding the key. So the head of the chain, its row count and hash (a
//!   [`Checkpoint`]), is written outside the table: in every `audit` log line, in the
//!   `audit checkpoint` line and the `audit_log_rows` gauge that [`AuditLog::checkpoint`]
//!   writes every `security.audit.checkpoint_interval`. Each checkpoint also checks that the
//!   table still holds the previous one (`audit_log_tamper_detected_total`), and
//!   `audit verify --checkpoint ROWS:HASH` checks the chain against a checkpoint taken from the
//!   logs.
//!
//! Appends are serialized so concurrent writers still build one chain: PostgreSQL takes a
//! transaction's advisory lock that only other appenders wait on, MySQL/MariaDB lock the last
//! row (`FOR UPDATE`), and SQLite has a single writer; a writer that loses a race (a duplicate
//! id, a deadlock, a busy database) retries. Details are masked ([`keel_telemetry::mask::Masker`]) before they are
//! stored or logged.
//!
//! ```ignore
//! let audit = keel_security::audit::AuditLog::from_db(&db).with_keys(AuditKeys::from_config(&cfg)?);
//! audit.record("user:42", "password.change", "user:42", Outcome::Success, json!({"ip": ip})).await?;
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use prometheus::{Gauge, IntCounter, IntGauge};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use crate::config::AuditConfig;
use crate::crypto::{hex, hmac_key};
use keel_data::{Backend, Db, Traced};
use keel_telemetry::Metrics;
use keel_telemetry::mask::Masker;

/// The `prev_hash` of the first row, and the hash of an empty chain's head.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_ATTEMPTS: u32 = 50;
/// How far back [`AuditLog::record_once`] looks for its key, in rows.
pub const ONCE_WINDOW: i64 = 10_000;
const PAGE: i64 = 1000;

/// Errors writing or reading the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database refused or failed.
    #[error("audit log database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// Concurrent appenders kept colliding.
    #[error("could not append to the audit log after {0} attempts")]
    Contention(u32),
    /// A chain key is missing or unusable.
    #[error("audit log key: {0}")]
    Key(String),
    /// A metric could not be registered.
    #[error("audit log metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A [`AuditFilter`] criterion is unusable.
    #[error("audit log filter: {0}")]
    Filter(String),
}

/// What [`AuditLog::try_append`] did.
enum Appended {
    New(AuditEntry),
    /// `record_once` found its key: this row.
    Already(AuditEntry),
}

/// How the audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was attempted and failed.
    Failure,
    /// It was refused (authorization).
    Denied,
}

impl Outcome {
    /// `success`, `failure` or `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

/// One appended row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub id: i64,
    /// RFC 3339 time of the append.
    pub at: String,
    /// The row's hash.
    pub hash: String,
}

/// The head of the chain at some moment: how many rows it had and the last row's hash.
/// Written as `ROWS:HASH` (its [`fmt::Display`] and [`std::str::FromStr`] form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Rows in the chain (the id of its last row).
    pub rows: i64,
    /// The last row's hash ([`GENESIS`] for an empty chain).
    pub hash: String,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.rows, self.hash)
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rows, hash) = s.trim().split_once(':').ok_or("expected ROWS:HASH")?;
        let rows: i64 = rows.parse().map_err(|_| format!("`{rows}` is not a row count"))?;
        if rows < 0 || hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err("expected ROWS:HASH, with a count of at least 0 and a 64-digit hex hash".into());
        }
        Ok(Self { rows, hash: hash.to_ascii_lowercase() })
    }
}

/// The first broken link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The row where the chain breaks.
    pub id: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Rows checked.
    pub rows: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
    /// Rows chained without a key (written before `security.audit.active_key` was set).
    pub unkeyed: u64,
    /// The head of the verified part of the chain.
    pub head: Checkpoint,
}

/// The chain keys: HMAC-SHA256 keys by id and the one new rows are chained with. Without
/// any, rows are chained with plain SHA-256.
#[derive(Clone, Default)]
pub struct AuditKeys {
    active: Option<String>,
    keys: BTreeMap<String, Hmac<Sha256>>,
}

impl fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKeys").field("active", &self.active).field("ids", &self.keys.keys()).finish()
    }
}

impl AuditKeys {
    /// The keys of `security.audit`.
    pub fn from_config(cfg: &AuditConfig) -> Result<Self, AuditError> {
        let mut keys = BTreeMap::new();
        for (id, key) in &cfg.keys {
            let what = format!("keys.{id}.secret");
            let secret = key.secret.as_ref().ok_or_else(|| AuditError::Key(format!("{what} is not set")))?;
            keys.insert(id.clone(), hmac_key(secret, &what).map_err(|e| AuditError::Key(e.to_string()))?);
        }
        if let Some(active) = &cfg.active_key
            && !keys.contains_key(active)
        {
            return Err(AuditError::Key(format!("active_key `{active}` is not one of the keys")));
        }
        Ok(Self { active: cfg.active_key.clone(), keys })
    }

    /// The id of the key new rows are chained with.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// The key `id` names, with its id (as [`Fields::hash`] takes it).
    fn get<'a>(&'a self, id: &'a str) -> Option<(&'a str, &'a Hmac<Sha256>)> {
        self.keys.get(id).map(|mac| (id, mac))
    }
}

/// The audit log's metrics.
#[derive(Debug, Clone)]
struct AuditMetrics {
    rows: IntGauge,
    checkpoint_at: Gauge,
    tampered: IntCounter,
}

impl AuditMetrics {
    fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let m = Self {
            rows: IntGauge::new("audit_log_rows", "Rows in the audit chain at its last append or checkpoint.")?,
            checkpoint_at: Gauge::new(
                "audit_log_checkpoint_timestamp_seconds",
                "Unix time of the audit log's last checkpoint.",
            )?,
            tampered: IntCounter::new(
                "audit_log_tamper_detected_total",
                "Checkpoints that found the audit log truncated or rewritten since the previous one.",
            )?,
        };
        metrics.register(m.rows.clone())?;
        metrics.register(m.checkpoint_at.clone())?;
        metrics.register(m.tampered.clone())?;
        Ok(m)
    }
}

/// What the process last saw of the chain's head.
#[derive(Debug, Default)]
struct Anchor {
    last: Option<Checkpoint>,
    /// Set once a checkpoint found the table no longer holding `last`: it stays the reference,
    /// so every later checkpoint reports it again until the process restarts.
    tampered: bool,
}

/// The audit log's table and the indexes [`AuditLog::list`] filters by, as a migration set of
/// Keel's own (recorded in `_keel_audit_migrations`), for every backend: keel-app applies it with
/// the migrations of a service that keeps an audit log (`Service::keeps_audit_log`). Creating
/// the table is idempotent, so a table an earlier [`AuditLog::ensure_table`] made is kept as it is.
///
/// ```
/// let m = keel_security::audit::migrations();
/// assert_eq!(m.for_backend(keel_data::Backend::Postgres).unwrap().iter().count(), 2);
/// ```
pub fn migrations() -> keel_data::Migrations {
    keel_data::migrations!(library "keel_audit")
}

/// Which rows [`AuditLog::list`] returns: every given criterion holds (exact actor, action and
/// target; `action` ending in `.` or `*` matches the actions under that prefix), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Who acted (`user:42`, `system`).
    pub actor: Option<String>,
    /// The action (`auth.login`), or a prefix ending in `.` or `*` (`moderation.`).
    pub action: Option<String>,
    /// What it was done to.
    pub target: Option<String>,
    /// At or after this RFC 3339 time (UTC, as the rows keep it).
    pub since: Option<String>,
    /// Before this RFC 3339 time.
    pub until: Option<String>,
    /// Rows older than this id (the previous page's last id): keyset paging.
    pub before: Option<i64>,
    /// At most this many rows (1 to [`MAX_LIST`]; 0 means [`MAX_LIST`]).
    pub limit: u32,
}

/// The most rows one [`AuditLog::list`] returns.
pub const MAX_LIST: u32 = 1000;

/// One row as [`AuditLog::list`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the chain.
    pub id: i64,
    /// RFC 3339 time of the append (UTC, microseconds).
    pub at: String,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The details, masked as they were stored (a JSON object).
    pub details: Value,
    /// The row's hash.
    pub hash: String,
    /// The key that chained it (empty: none).
    pub key_id: String,
}

/// Normalizes a UTC time (`2026-11-28T17:00:00Z`, fractions optional, or a date) to the rows'
/// form (microseconds), so that text order is time order.
fn row_time(t: &str) -> Result<String, AuditError> {
    let full = if t.len() == 10 { format!("{t}T00:00:00Z") } else { t.to_owned() };
    let parsed = humantime::parse_rfc3339_weak(&full)
        .map_err(|e| AuditError::Filter(format!("`{t}` is not a UTC RFC 3339 time or a date: {e}")))?;
    Ok(humantime::format_rfc3339_micros(parsed).to_string())
}

/// The audit log of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: AnyPool,
    backend: Backend,
    /// The database it was made from, whose statements are traced ([`Db::on`]).
    db: Option<Db>,
    masker: Masker,
    keys: AuditKeys,
    metrics: Option<AuditMetrics>,
    anchor: Arc<Mutex<Anchor>>,
    ready: Arc<tokio::sync::OnceCell<()>>,
}

impl AuditLog {
    /// The audit log in `db`.
    pub fn from_db(db: &Db) -> Self {
        Self { db: Some(db.clone()), ..Self::new(db.pool().clone(), db.backend()) }
    }

    /// The audit log in the database of `pool`.
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self {
            pool,
            backend,
            db: None,
            masker: Masker::default(),
            keys: AuditKeys::default(),
            metrics: None,
            anchor: Default::default(),
            ready: Default::default(),
        }
    }

    /// `executor` with its statements traced when the log was made from a [`Db`]
    /// ([`AuditLog::from_db`]).
    fn on<'c, X: sqlx::Executor<'c, Database = sqlx::Any>>(&self, executor: X) -> Traced<'_, X> {
        match &self.db {
            Some(db) => db.on(executor),
            None => Traced::untraced(executor),
        }
    }

    /// Masks these detail field names too (beyond [`keel_telemetry::mask::DEFAULT_FIELDS`]).
    pub fn mask_fields<S: AsRef<str>>(mut self, extra: impl IntoIterator<Item = S>) -> Self {
        self.masker = Masker::new(extra);
        self
    }

    /// Chains new rows with the active key of `keys`, and verifies with all of them.
    pub fn with_keys(mut self, keys: AuditKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Reports `audit_log_rows`, `audit_log_checkpoint_timestamp_seconds` and
    /// `audit_log_tamper_detected_total` into `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Result<Self, AuditError> {
        self.metrics = Some(AuditMetrics::register(metrics)?);
        Ok(self)
    }

    /// Makes sure `audit_log` is there (`record`, `verify` and `checkpoint` call it, once per
    /// log): a read when [`migrations`] made it, as `<service> migrate` does for a service that
    /// keeps an audit log, so a database user without DDL rights works; otherwise (a log used
    /// without migrations) it creates the table, or adds the `key_id` column to one made before
    /// keys existed.
    pub async fn ensure_table(&self) -> Result<(), AuditError> {
        self.ready
            .get_or_try_init(|| async {
                let probe = "SELECT key_id FROM audit_log WHERE 1 = 0";
                if sqlx::raw_sql(probe).execute(self.on(&self.pool)).await.is_ok() {
                    return Ok(());
                }
                let ddl = migrations().for_backend(self.backend).and_then(|m| m.iter().next()).map(|m| m.sql.clone());
                if let Some(ddl) = ddl {
                    sqlx::raw_sql(ddl).execute(self.on(&self.pool)).await?;
                }
                if sqlx::raw_sql(probe).execute(self.on(&self.pool)).await.is_err() {
                    sqlx::raw_sql("ALTER TABLE audit_log ADD COLUMN key_id VARCHAR(64) NOT NULL DEFAULT ''")
                        .execute(self.on(&self.pool))
                        .await?;
                }
                Ok::<_, sqlx::Error>(())
            })
            .await?;
        Ok(())
    }

    /// Appends a row and logs it. `details` is masked first.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<AuditEntry, AuditError> {
        self.append(None, actor, action, target, outcome, details).await
    }

    /// [`AuditLog::record`] at most once per `once` (1–128 of `[a-z0-9:.-]`, e.g. the id of
    /// the message that asked for it): when a row with the same `action` and key is among the
    /// newest [`ONCE_WINDOW`] rows, that row is returned and nothing is appended, so a
    /// redelivered message or a retried request is recorded once. The key is kept in the row's
    /// details as `"once"`; the check runs under the append lock.
    pub async fn record_once(
        &self,
        once: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<AuditEntry, AuditError> {
        let valid = !once.is_empty()
            && once.len() <= 128
            // Lowercase only: `LIKE` ignores case on some backends and not on others.
            && once.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b':' | b'.' | b'-'));
        if !valid {
            return Err(AuditError::Key(format!("record_once: {once:?} is not a usable key")));
        }
        self.append(Some(once), actor, action, target, outcome, details).await
    }

    async fn append(
        &self,
        once: Option<&str>,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<AuditEntry, AuditError> {
        self.ensure_table().await?;
        let mut details = details;
        self.masker.json(&mut details);
        if let (Some(once), Value::Object(map)) = (once, &mut details) {
            map.insert("once".to_owned(), Value::String(once.to_owned()));
        } else if let Some(once) = once {
            details = serde_json::json!({ "once": once, "value": details });
        }
        let details = details.to_string();
        let (actor, target) = (self.masker.field("actor", actor), self.masker.field("target", target));
        let mut attempt = 0;
        let entry = loop {
            attempt += 1;
            match self.try_append(once, &actor, action, &target, outcome, &details).await {
                Ok(Appended::New(e)) => break e,
                Ok(Appended::Already(e)) => return Ok(e),
                Err(e) if attempt < MAX_ATTEMPTS && is_contention(&e) => {
                    let wait = rand::random_range(1..=(5 * u64::from(attempt.min(10))));
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(e) if is_contention(&e) => return Err(AuditError::Contention(attempt)),
                Err(e) => return Err(e.into()),
            }
        };
        self.advance(&Checkpoint { rows: entry.id, hash: entry.hash.clone() });
        if let Some(m) = &self.metrics {
            m.rows.set(entry.id);
        }
        tracing::info!(
            target: "audit",
            audit_id = entry.id,
            actor = %actor,
            action,
            audit_target = %target,
            outcome = outcome.as_str(),
            details = %details,
            hash = %entry.hash,
            key_id = self.keys.active().unwrap_or(""),
            "audit"
        );
        Ok(entry)
    }

    /// What the process last saw of the head. A panic while it was held left it consistent
    /// (every update is one assignment), so a poisoned lock is used as is.
    fn anchor(&self) -> std::sync::MutexGuard<'_, Anchor> {
        self.anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the anchor forward to `head` (never back), unless tampering was found.
    fn advance(&self, head: &Checkpoint) {
        let mut anchor = self.anchor();
        if !anchor.tampered && anchor.last.as_ref().is_none_or(|l| head.rows > l.rows) {
            anchor.last = Some(head.clone());
        }
    }

    async fn try_append(
        &self,
        once: Option<&str>,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        details: &str,
    ) -> Result<Appended, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let last_sql = match self.backend {
            Backend::Postgres => {
                // Blocks other appenders only, not readers, and needs no privilege beyond SELECT
                // and INSERT (a table lock in a mode that excludes writers needs UPDATE, DELETE or
                // TRUNCATE, which an append-only role lacks). `IS NULL`: Any cannot decode `void`.
                sqlx::raw_sql("SELECT (pg_advisory_xact_lock(hashtext('keel_audit_log')) IS NULL)")
                    .execute(self.on(&mut *tx))
                    .await?;
                "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
            }
            Backend::MySql => "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1 FOR UPDATE",
            Backend::Sqlite => "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1",
        };
        let last = sqlx::query(last_sql).fetch_optional(self.on(&mut *tx)).await?;
        let (prev_id, prev_hash) = match last {
            Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
            None => (0, GENESIS.to_owned()),
        };
        if let Some(once) = once {
            // serde_json writes `"once":"<key>"` without spaces; the key has no LIKE wildcard.
            let seen = self.backend.sql(
                "SELECT id, at, hash FROM audit_log WHERE id > $1 AND action = $2 AND details LIKE $3 \
                 ORDER BY id LIMIT 1",
            );
            let found = sqlx::query(sqlx::AssertSqlSafe(seen.into_owned()))
                .bind(prev_id - ONCE_WINDOW)
                .bind(action)
                .bind(format!("%\"once\":\"{once}\"%"))
                .fetch_optional(self.on(&mut *tx))
                .await?;
            if let Some(row) = found {
                let entry = AuditEntry { id: row.try_get(0)?, at: row.try_get(1)?, hash: row.try_get(2)? };
                return Ok(Appended::Already(entry));
            }
        }
        let id = prev_id + 1;
        let at = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let key_id = self.keys.active().unwrap_or("");
        let row =
            Fields { id, at: &at, actor, action, target, outcome: outcome.as_str(), details, prev_hash: &prev_hash };
        let hash = row.hash(self.keys.active().and_then(|id| self.keys.get(id)));
        let insert = self.backend.sql(
            "INSERT INTO audit_log (id, at, actor, action, target, outcome, details, prev_hash, hash, key_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        );
        sqlx::query(sqlx::AssertSqlSafe(insert.into_owned()))
            .bind(id)
            .bind(&at)
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(outcome.as_str())
            .bind(details)
            .bind(&prev_hash)
            .bind(&hash)
            .bind(key_id)
            .execute(self.on(&mut *tx))
            .await?;
        tx.commit().await?;
        Ok(Appended::New(AuditEntry { id, at, hash }))
    }

    /// The rows `filter` selects, newest first (at most [`MAX_LIST`]); the next page is the
    /// same filter with `before` set to the last row's id.
    pub async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        self.ensure_table().await?;
        let mut sql = String::from(
            "SELECT id, at, actor, action, target, outcome, details, hash, key_id FROM audit_log WHERE 1 = 1",
        );
        let backend = self.backend;
        let mut binds: Vec<String> = Vec::new();
        // Text is compared byte for byte whatever the columns' collation: MySQL's default ones
        // ignore case and accents, and linguistic ones sort punctuation apart from letters, which
        // would make exact criteria loose and a prefix range wrong.
        let exact = |column: &str| match backend {
            Backend::Postgres => format!("{column} COLLATE \"C\""),
            Backend::MySql => format!("BINARY {column}"),
            Backend::Sqlite => column.to_owned(),
        };
        let mut cond = |sql: &mut String, column: &str, op: &str, value: String| {
            if op == "=" {
                // The plain comparison too, so an index on the column serves it.
                binds.push(value.clone());
                sql.push_str(&format!(" AND {column} = ${}", binds.len()));
            }
            binds.push(value);
            let rhs = match backend {
                Backend::MySql => format!("BINARY ${}", binds.len()),
                Backend::Postgres | Backend::Sqlite => format!("${}", binds.len()),
            };
            sql.push_str(&format!(" AND {} {op} {rhs}", exact(column)));
        };
        if let Some(actor) = &filter.actor {
            cond(&mut sql, "actor", "=", actor.clone());
        }
        match filter.action.as_deref() {
            Some(a) if a.ends_with('*') || a.ends_with('.') => {
                let prefix = a.trim_end_matches('*');
                // A prefix as a byte range (`moderation.` ≤ action < `moderation/`), not LIKE:
                // nothing to escape.
                let mut chars: Vec<char> = prefix.chars().collect();
                if let Some(last) = chars.pop() {
                    let next = char::from_u32(u32::from(last) + 1)
                        .ok_or_else(|| AuditError::Filter(format!("`{a}` is not an action prefix")))?;
                    chars.push(next);
                    cond(&mut sql, "action", ">=", prefix.to_owned());
                    cond(&mut sql, "action", "<", chars.into_iter().collect());
                }
            }
            Some(a) => cond(&mut sql, "action", "=", a.to_owned()),
            None => {}
        }
        if let Some(target) = &filter.target {
            cond(&mut sql, "target", "=", target.clone());
        }
        if let Some(since) = &filter.since {
            cond(&mut sql, "at", ">=", row_time(since)?);
        }
        if let Some(until) = &filter.until {
            cond(&mut sql, "at", "<", row_time(until)?);
        }
        let limit = if filter.limit == 0 { MAX_LIST } else { filter.limit.min(MAX_LIST) };
        let n = binds.len();
        let sql = match filter.before {
            Some(_) => format!("{sql} AND id < ${} ORDER BY id DESC LIMIT ${}", n + 1, n + 2),
            None => format!("{sql} ORDER BY id DESC LIMIT ${}", n + 1),
        };
        let sql = self.backend.sql(&sql).into_owned();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(b);
        }
        if let Some(before) = filter.before {
            query = query.bind(before);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(self.on(&self.pool)).await?;
        rows.iter()
            .map(|row| {
                let text = |i: usize| row.try_get::<String, _>(i);
                let details = text(6)?;
                Ok(AuditRecord {
                    id: row.try_get(0)?,
                    at: text(1)?,
                    actor: text(2)?,
                    action: text(3)?,
                    target: text(4)?,
                    outcome: text(5)?,
                    details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
                    hash: text(7)?,
                    key_id: text(8)?,
                })
            })
            .collect()
    }

    /// Walks the chain from the first row; stops at the first broken link.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        self.verify_against(None).await
    }

    /// Walks the chain like [`Self::verify`] and also checks it against `checkpoint`: the row
    /// it names must still hold its hash (else the chain was rewritten up to there), and the
    /// chain must reach it (else it was truncated).
    pub async fn verify_against(&self, checkpoint: Option<&Checkpoint>) -> Result<Verification, AuditError> {
        self.ensure_table().await?;
        let page_sql = self.backend.sql(
            "SELECT id, at, actor, action, target, outcome, details, prev_hash, hash, key_id FROM audit_log \
             WHERE id > $1 ORDER BY id LIMIT $2",
        );
        let mut v =
            Verification { rows: 0, broken: None, unkeyed: 0, head: Checkpoint { rows: 0, hash: GENESIS.to_owned() } };
        let mut keyed_seen = false;
        'walk: loop {
            let page = sqlx::query(sqlx::AssertSqlSafe(page_sql.clone().into_owned()))
                .bind(v.head.rows)
                .bind(PAGE)
                .fetch_all(self.on(&self.pool))
                .await?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                let id: i64 = row.try_get(0)?;
                let text = |i: usize| row.try_get::<String, _>(i);
                let (at, actor, action, target, outcome, details, prev, hash, key_id) =
                    (text(1)?, text(2)?, text(3)?, text(4)?, text(5)?, text(6)?, text(7)?, text(8)?, text(9)?);
                let expected_id = v.head.rows + 1;
                let problem = if id != expected_id {
                    Some((id, format!("row {expected_id} is missing (next row is {id})")))
                } else if prev != v.head.hash {
                    Some((id, "prev_hash does not match the previous row's hash".to_owned()))
                } else {
                    let fields = Fields {
                        id,
                        at: &at,
                        actor: &actor,
                        action: &action,
                        target: &target,
                        outcome: &outcome,
                        details: &details,
                        prev_hash: &prev,
                    };
                    let key = if key_id.is_empty() {
                        Ok(None)
                    } else {
                        self.keys
                            .get(&key_id)
                            .map(Some)
                            .ok_or_else(|| format!("chained with key `{key_id}`, which is not in security.audit.keys"))
                    };
                    match key {
                        Err(reason) => Some((id, reason)),
                        Ok(None) if keyed_seen => {
                            Some((id, "an unkeyed row after keyed rows (rewritten without the key?)".to_owned()))
                        }
                        Ok(key) if fields.hash(key) != hash => {
                            Some((id, "content does not match its hash (the row was altered)".to_owned()))
                        }
                        Ok(key) => {
                            if key.is_some() {
                                keyed_seen = true;
                            } else {
                                v.unkeyed += 1;
                            }
                            checkpoint
                                .filter(|c| c.rows == id && c.hash != hash)
                                .map(|c| (id, format!("does not match the checkpoint {c} (the chain was rewritten)")))
                        }
                    }
                };
                if let Some((id, reason)) = problem {
                    v.broken = Some(BrokenLink { id, reason });
                    break 'walk;
                }
                v.rows += 1;
                v.head = Checkpoint { rows: id, hash };
            }
        }
        if let Some(c) = checkpoint
            && v.broken.is_none()
            && v.head.rows < c.rows
        {
            v.broken = Some(BrokenLink {
                id: v.head.rows + 1,
                reason: format!("truncated: the checkpoint {c} has {} row(s), the table {}", c.rows, v.head.rows),
            });
        }
        Ok(v)
    }

    /// The head of the chain as the table holds it now.
    pub async fn head(&self) -> Result<Checkpoint, AuditError> {
        self.ensure_table().await?;
        let last = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(self.on(&self.pool))
            .await?;
        Ok(match last {
            Some(row) => Checkpoint { rows: row.try_get(0)?, hash: row.try_get(1)? },
            None => Checkpoint { rows: 0, hash: GENESIS.to_owned() },
        })
    }

    /// Checkpoints the head of the chain outside the table: an `audit checkpoint` log line
    /// (target `audit`) with `rows` and `head_hash`, and the `audit_log_rows` and
    /// `audit_log_checkpoint_timestamp_seconds` gauges. First it checks that the table still
    /// holds the previous checkpoint (or the newest row this process appended): fewer rows
    /// means the chain was truncated, another hash at that row that it was rewritten. Either is
    /// logged as an error and counted in `audit_log_tamper_detected_total`, at this and every
    /// later checkpoint until the process restarts.
    pub async fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let head = self.head().await?;
        let last = self.anchor().last.clone();
        if let Some(last) = last.filter(|l| l.rows > 0) {
            let problem = if head.rows < last.rows {
                Some(format!("truncated: {} row(s), the previous checkpoint had {}", head.rows, last.rows))
            } else {
                let sql = self.backend.sql("SELECT hash FROM audit_log WHERE id = $1");
                let then: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(last.rows)
                    .fetch_optional(self.on(&self.pool))
                    .await?;
                (then.as_deref() != Some(last.hash.as_str())).then(|| {
                    format!("row {} no longer holds the hash of the previous checkpoint: rewritten", last.rows)
                })
            };
            if let Some(problem) = problem {
                self.anchor().tampered = true;
                if let Some(m) = &self.metrics {
                    m.tampered.inc();
                }
                tracing::error!(
                    target: "audit",
                    previous = %last,
                    head = %head,
                    problem = %problem,
                    "audit log tampered with since the previous checkpoint"
                );
            }
        }
        self.advance(&head);
        if let Some(m) = &self.metrics {
            m.rows.set(head.rows);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            m.checkpoint_at.set(now.as_secs_f64());
        }
        tracing::info!(target: "audit", rows = head.rows, head_hash = %head.hash, checkpoint = %head, "audit checkpoint");
        Ok(head)
    }
}

/// The hashed content of one row.
struct Fields<'a> {
    id: i64,
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
    details: &'a str,
    prev_hash: &'a str,
}

impl Fields<'_> {
    /// An unambiguous encoding (a JSON array) of the row, MAC'd under `key` (its id is part of
    /// the content) or, unkeyed, SHA-256'd; hex.
    fn hash(&self, key: Option<(&str, &Hmac<Sha256>)>) -> String {
        let Self { id, at, actor, action, target, outcome, details, prev_hash } = self;
        match key {
            None => {
                let canonical = serde_json::json!([id, at, actor, action, target, outcome, details, prev_hash]);
                hex(&Sha256::digest(canonical.to_string().as_bytes()))
            }
            Some((key_id, mac)) => {
                let canonical = serde_json::json!([id, at, actor, action, target, outcome, details, prev_hash, key_id]);
                let mut mac = mac.clone();
                mac.update(canonical.to_string().as_bytes());
                hex(&mac.finalize().into_bytes())
            }
        }
    }
}

/// A lost race between appenders: try again.
fn is_contention(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    if matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) {
        return true;
    }
    let code = db.code().unwrap_or_default();
    // PostgreSQL deadlock / serialization; MySQL deadlock (1213) / lock wait (1205) / duplicate
    // (1062, 23000); SQLite busy / locked.
    matches!(code.as_ref(), "40P01" | "40001" | "1213" | "1205" | "1062" | "23000" | "5" | "6" | "517")
        || db.message().contains("database is locked")
}
