//! A tamper-evident audit log in the service's own database.
//!
//! [`AuditLog::record`] appends a row to `audit_log` and emits a structured `audit` log line.
//! Each row stores the SHA-256 of its own content and the previous row's hash, so changing,
//! inserting or deleting a row breaks the chain from there on; [`AuditLog::verify`] (and
//! `<service> audit verify`) walks the chain and names the first broken row. The hash in the
//! log line anchors the chain outside the database: rewriting the whole tail consistently also
//! needs the log store.
//!
//! Appends are serialized so concurrent writers still build one chain: PostgreSQL takes a table
//! lock that only other appenders wait on, MySQL/MariaDB lock the last row (`FOR UPDATE`), and
//! SQLite has a single writer; a writer that loses a race (a duplicate id, a deadlock, a busy
//! database) retries. Details are masked ([`keel_telemetry::mask::Masker`]) before they are
//! stored or logged.
//!
//! ```ignore
//! let audit = keel_security::audit::AuditLog::from_db(&db);
//! audit.record("user:42", "password.change", "user:42", Outcome::Success, json!({"ip": ip})).await?;
//! ```

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use keel_data::{Backend, Db};
use keel_telemetry::mask::Masker;

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_ATTEMPTS: u32 = 50;
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
}

/// The audit log of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: AnyPool,
    backend: Backend,
    masker: Masker,
    ready: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

impl AuditLog {
    /// The audit log in `db`.
    pub fn from_db(db: &Db) -> Self {
        Self::new(db.pool().clone(), db.backend())
    }

    /// The audit log in the database of `pool`.
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self { pool, backend, masker: Masker::default(), ready: Default::default() }
    }

    /// Masks these detail field names too (beyond [`keel_telemetry::mask::DEFAULT_FIELDS`]).
    pub fn mask_fields<S: AsRef<str>>(mut self, extra: impl IntoIterator<Item = S>) -> Self {
        self.masker = Masker::new(extra);
        self
    }

    /// Creates `audit_log` if it does not exist (idempotent; `record` and `verify` call it).
    pub async fn ensure_table(&self) -> Result<(), AuditError> {
        self.ready
            .get_or_try_init(|| async {
                let ddl = match self.backend {
                    Backend::Postgres | Backend::Sqlite => {
                        "CREATE TABLE IF NOT EXISTS audit_log (id BIGINT PRIMARY KEY, at TEXT NOT NULL, \
                         actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, \
                         details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
                    }
                    Backend::MySql => {
                        "CREATE TABLE IF NOT EXISTS audit_log (id BIGINT PRIMARY KEY, at VARCHAR(40) NOT NULL, \
                         actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, outcome VARCHAR(16) NOT NULL, \
                         details TEXT NOT NULL, prev_hash CHAR(64) NOT NULL, hash CHAR(64) NOT NULL) ENGINE=InnoDB"
                    }
                };
                sqlx::raw_sql(ddl).execute(&self.pool).await.map(|_| ())
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
        self.ensure_table().await?;
        let mut details = details;
        self.masker.json(&mut details);
        let details = details.to_string();
        let (actor, target) = (self.masker.field("actor", actor), self.masker.field("target", target));
        let mut attempt = 0;
        let entry = loop {
            attempt += 1;
            match self.try_append(&actor, action, &target, outcome, &details).await {
                Ok(e) => break e,
                Err(e) if attempt < MAX_ATTEMPTS && is_contention(&e) => {
                    let wait = rand::random_range(1..=(5 * u64::from(attempt.min(10))));
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(e) if is_contention(&e) => return Err(AuditError::Contention(attempt)),
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(
            target: "audit",
            audit_id = entry.id,
            actor = %actor,
            action,
            audit_target = %target,
            outcome = outcome.as_str(),
            details = %details,
            hash = %entry.hash,
            "audit"
        );
        Ok(entry)
    }

    async fn try_append(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        details: &str,
    ) -> Result<AuditEntry, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let last_sql = match self.backend {
            Backend::Postgres => {
                // Blocks other appenders only (the mode conflicts with itself), not readers.
                sqlx::raw_sql("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
                "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
            }
            Backend::MySql => "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1 FOR UPDATE",
            Backend::Sqlite => "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1",
        };
        let last = sqlx::query(last_sql).fetch_optional(&mut *tx).await?;
        let (prev_id, prev_hash) = match last {
            Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
            None => (0, GENESIS.to_owned()),
        };
        let id = prev_id + 1;
        let at = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let hash = row_hash(id, &at, actor, action, target, outcome.as_str(), details, &prev_hash);
        let insert = self.backend.sql(
            "INSERT INTO audit_log (id, at, actor, action, target, outcome, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(AuditEntry { id, at, hash })
    }

    /// Walks the chain from the first row; stops at the first broken link.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        self.ensure_table().await?;
        let page_sql = self.backend.sql(
            "SELECT id, at, actor, action, target, outcome, details, prev_hash, hash FROM audit_log \
             WHERE id > $1 ORDER BY id LIMIT $2",
        );
        let (mut expected_id, mut prev_hash, mut rows) = (1_i64, GENESIS.to_owned(), 0_u64);
        loop {
            let page = sqlx::query(sqlx::AssertSqlSafe(page_sql.clone().into_owned()))
                .bind(expected_id - 1)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?;
            if page.is_empty() {
                return Ok(Verification { rows, broken: None });
            }
            for row in &page {
                let id: i64 = row.try_get(0)?;
                let text = |i: usize| row.try_get::<String, _>(i);
                let (at, actor, action, target, outcome, details, prev, hash) =
                    (text(1)?, text(2)?, text(3)?, text(4)?, text(5)?, text(6)?, text(7)?, text(8)?);
                let broken = |reason: String| Ok(Verification { rows, broken: Some(BrokenLink { id, reason }) });
                if id != expected_id {
                    return broken(format!("row {expected_id} is missing (next row is {id})"));
                }
                if prev != prev_hash {
                    return broken("prev_hash does not match the previous row's hash".into());
                }
                if row_hash(id, &at, &actor, &action, &target, &outcome, &details, &prev) != hash {
                    return broken("content does not match its hash (the row was altered)".into());
                }
                rows += 1;
                expected_id = id + 1;
                prev_hash = hash;
            }
        }
    }
}

/// SHA-256 over an unambiguous encoding (a JSON array) of the row, hex.
#[allow(clippy::too_many_arguments)]
fn row_hash(
    id: i64,
    at: &str,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let canonical = serde_json::json!([id, at, actor, action, target, outcome, details, prev_hash]).to_string();
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
