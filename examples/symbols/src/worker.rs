//! `symbols-worker`: consumes `symbol.*` (consumer group [`GROUP`], with Keel's inbox) into a
//! projection of every symbol and per-project counters, and serves the counters at
//! `GET /v1/projects/{project_id}/stats`.
//!
//! **Exactly once.** Each message is handled in the inbox transaction ([`Message::tx`]): the
//! projection, the counters, the activity row and the inbox's "processed" mark commit together,
//! so a redelivered or republished message is acknowledged without being applied again. The
//! activity table's primary key (the event id) would refuse a second application even so.
//!
//! **Order.** A symbol's versions are consecutive (1 when created, +1 per change), and the worker
//! applies version `n + 1` only on top of version `n`. Handlers run concurrently, so a change
//! may arrive before the one it follows: it is early ([`Failure::early`](keel::events::Failure)),
//! tried again every 200 ms, never dead-lettered meanwhile, until its predecessor is applied (for up to
//! 5 minutes after it was published; the failure backoff, up to minutes, is for failures). A version already
//! applied is a duplicate: recorded as `stale`, counted nowhere.
//!
//! **Failures.** An unknown event type, a schema version it does not know or a payload it cannot
//! decode fails permanently: straight to `symbols.dlq`. A change whose predecessor has not come
//! `app.order_wait` (5 minutes) after it was published is retried with backoff, then
//! dead-lettered with the reason once its deliveries reach `app.max_attempts`. A database outage
//! spends no attempt: the consumer pauses until the database is back (Keel's consumer).
//! `symbols-worker dlq list symbols` shows dead letters; `dlq replay` sends them back.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel::config::{Section, Validation};
use keel::data::{Backend, DataError, Db};
use keel::events::{ConsumerOptions, Event, Failure, Handler, Message};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use crate::error::SymbolError;
use crate::events::{SymbolChange, SymbolCreated, SymbolDeleted, SymbolUpdated};
use crate::model::{self, Check, now_micros};

/// The worker's consumer group (queue `<namespace>.symbols.symbols-worker` on RabbitMQ).
pub const GROUP: &str = "symbols-worker";

/// The worker's `app` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Messages handled at once. Default `8`.
    pub concurrency: usize,
    /// Deliveries of a message that keeps failing (for a reason of its own) before it goes to
    /// the dead-letter queue. Default `16`: with the default backoff, more than half an hour.
    pub max_attempts: u32,
    /// First wait before a retry; doubles per attempt. Default `1s`.
    #[serde(with = "keel::config::duration")]
    pub retry_initial: Duration,
    /// Longest wait before a retry. Default `5m`.
    #[serde(with = "keel::config::duration")]
    pub retry_max: Duration,
    /// How long after it was published a change that came before its predecessor is tried
    /// again every 200 ms; then it retries on the backoff above. Default `5m`.
    #[serde(with = "keel::config::duration")]
    pub order_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let c = ConsumerOptions::default();
        Self {
            concurrency: c.concurrency,
            max_attempts: c.max_attempts,
            retry_initial: c.retry_initial,
            retry_max: c.retry_max,
            order_wait: c.order_wait,
        }
    }
}

impl Section for WorkerConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(1..=256).contains(&self.concurrency) {
            v.invalid("concurrency", "must be between 1 and 256");
        }
        if !(1..=100).contains(&self.max_attempts) {
            v.invalid("max_attempts", "must be between 1 and 100");
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.retry_initial) {
            v.invalid("retry_initial", "must be between 10ms and 1h");
        }
        if self.retry_max < self.retry_initial || self.retry_max > Duration::from_secs(24 * 3600) {
            v.invalid("retry_max", "must be at least retry_initial and at most 1d");
        }
        if self.order_wait > Duration::from_secs(24 * 3600) {
            v.invalid("order_wait", "must be at most 1d");
        }
    }
}

impl WorkerConfig {
    /// The consumer options these settings give.
    pub fn consumer_options(&self) -> ConsumerOptions {
        ConsumerOptions::default()
            .concurrency(self.concurrency)
            .max_attempts(self.max_attempts)
            .retry_backoff(self.retry_initial, self.retry_max)
            .order_wait(ConsumerOptions::default().order_retry, self.order_wait)
    }
}

/// Applies `symbol.*` to the projection and counters (see the module docs).
#[derive(Debug, Clone)]
pub struct ProjectionHandler {
    db: Db,
}

impl ProjectionHandler {
    /// A handler writing to `db` (the inbox's database).
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Created,
    Updated,
    Deleted,
}

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    /// Already applied (a duplicate, or a version the projection is past).
    Stale,
    /// Its predecessor is not applied yet; holds the projection's version.
    Early(i64),
}

impl Handler for ProjectionHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let ty = msg.envelope().ty.clone();
        // `decode` checks type and version: a mismatch fails every time, so it is permanent.
        let (op, change) = match ty.as_str() {
            SymbolCreated::TYPE => (Op::Created, msg.decode::<SymbolCreated>()?.0),
            SymbolUpdated::TYPE => (Op::Updated, msg.decode::<SymbolUpdated>()?.0),
            SymbolDeleted::TYPE => (Op::Deleted, msg.decode::<SymbolDeleted>()?.0),
            other => return Err(Failure::permanent(format!("unknown event type on the symbols topic: {other:.64}"))),
        };
        // The service checked these; a message from elsewhere may not have been.
        let mut c = Check::default();
        model::project_id(&mut c, &change.project_id);
        model::name(&mut c, &change.name);
        model::kind(&mut c, &change.kind);
        if c.finish(()).is_err() || change.version < 1 {
            return Err(Failure::permanent("the event's project id, name, kind or version is malformed"));
        }
        let event_id = msg.envelope().id.clone();
        // Without the inbox transaction the effects would not be exactly-once: refuse.
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
        // A lost connection marks the database down and pauses the consumer (no attempt spent).
        let failed = |e: sqlx::Error| Failure::transient(&DataError::from(e));
        let outcome = apply(tx, &self.db, op, &change).await.map_err(failed)?;
        if let Outcome::Early(at) = outcome {
            return Err(Failure::early(format!(
                "symbol {} is at version {at} here; version {} waits for the ones before it",
                change.symbol_id, change.version
            )));
        }
        record(tx, &self.db, &event_id, &ty, &change, outcome).await.map_err(failed)?;
        tracing::debug!(event = %ty, symbol_id = %change.symbol_id, version = change.version, ?outcome, "symbol event handled");
        Ok(())
    }
}

/// Applies one change in `tx`, if it is the next version of its symbol.
async fn apply(tx: &mut Transaction<'static, Any>, db: &Db, op: Op, c: &SymbolChange) -> Result<Outcome, sqlx::Error> {
    let backend = db.backend();
    let now = now_micros();
    if op == Op::Created {
        if c.version != 1 {
            return Ok(Outcome::Stale);
        }
        // A symbol already projected makes no row: the event is a duplicate.
        let (insert, or_not) = match backend {
            Backend::MySql => ("INSERT IGNORE INTO", ""),
            Backend::Sqlite => ("INSERT OR IGNORE INTO", ""),
            Backend::Postgres => ("INSERT INTO", " ON CONFLICT DO NOTHING"),
        };
        let sql = format!(
            "{insert} symbol_projection (symbol_id, project_id, name, kind, version, deleted, updated_at) \
             VALUES ($1, $2, $3, $4, 1, 0, $5){or_not}"
        );
        let done = sqlx::query(db.statement(&sql))
            .bind(c.symbol_id.to_string())
            .bind(&c.project_id)
            .bind(&c.name)
            .bind(&c.kind)
            .bind(now)
            .execute(db.on(&mut **tx))
            .await?;
        if done.rows_affected() == 0 {
            return Ok(Outcome::Stale);
        }
        bump(tx, db, &c.project_id, Counts { live: 1, created: 1, ..Counts::default() }, c.occurred_at).await?;
        return Ok(Outcome::Applied);
    }
    // A locking read where the database has row locks; SQLite's transaction already holds the
    // write lock (the inbox row was written first).
    let lock = if backend == Backend::Sqlite { "" } else { " FOR UPDATE" };
    let sql = format!("SELECT version, deleted FROM symbol_projection WHERE symbol_id = $1{lock}");
    let row = sqlx::query(db.statement(&sql)).bind(c.symbol_id.to_string()).fetch_optional(db.on(&mut **tx)).await?;
    let Some(row) = row else { return Ok(Outcome::Early(0)) };
    let (version, deleted): (i64, i64) = (row.try_get("version")?, row.try_get::<i64, _>("deleted")?);
    if c.version <= version {
        return Ok(Outcome::Stale);
    }
    if c.version > version + 1 || deleted != 0 {
        return Ok(Outcome::Early(version));
    }
    let (sql, counts) = match op {
        Op::Deleted => (
            "UPDATE symbol_projection SET version = $1, updated_at = $2, deleted = 1 WHERE symbol_id = $3",
            Counts { live: -1, deleted: 1, ..Counts::default() },
        ),
        _ => (
            "UPDATE symbol_projection SET version = $1, updated_at = $2, name = $3, kind = $4 WHERE symbol_id = $5",
            Counts { updated: 1, ..Counts::default() },
        ),
    };
    let mut q = sqlx::query(db.statement(sql)).bind(c.version).bind(now);
    if op != Op::Deleted {
        q = q.bind(&c.name).bind(&c.kind);
    }
    q.bind(c.symbol_id.to_string()).execute(db.on(&mut **tx)).await?;
    bump(tx, db, &c.project_id, counts, c.occurred_at).await?;
    Ok(Outcome::Applied)
}

/// Changes to a project's counters.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    live: i64,
    created: i64,
    updated: i64,
    deleted: i64,
}

/// Adds `n` to the counters of `project_id` (creating its row).
async fn bump(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    project_id: &str,
    n: Counts,
    at: i64,
) -> Result<(), sqlx::Error> {
    let upsert = match db.backend() {
        Backend::MySql => {
            "ON DUPLICATE KEY UPDATE live_symbols = live_symbols + VALUES(live_symbols), \
             created_total = created_total + VALUES(created_total), \
             updated_total = updated_total + VALUES(updated_total), \
             deleted_total = deleted_total + VALUES(deleted_total), \
             last_event_at = GREATEST(last_event_at, VALUES(last_event_at))"
        }
        Backend::Sqlite => {
            "ON CONFLICT (project_id) DO UPDATE SET live_symbols = symbol_stats.live_symbols + excluded.live_symbols, \
             created_total = symbol_stats.created_total + excluded.created_total, \
             updated_total = symbol_stats.updated_total + excluded.updated_total, \
             deleted_total = symbol_stats.deleted_total + excluded.deleted_total, \
             last_event_at = MAX(symbol_stats.last_event_at, excluded.last_event_at)"
        }
        Backend::Postgres => {
            "ON CONFLICT (project_id) DO UPDATE SET live_symbols = symbol_stats.live_symbols + excluded.live_symbols, \
             created_total = symbol_stats.created_total + excluded.created_total, \
             updated_total = symbol_stats.updated_total + excluded.updated_total, \
             deleted_total = symbol_stats.deleted_total + excluded.deleted_total, \
             last_event_at = GREATEST(symbol_stats.last_event_at, excluded.last_event_at)"
        }
    };
    let sql = format!(
        "INSERT INTO symbol_stats (project_id, live_symbols, created_total, updated_total, deleted_total, last_event_at) \
         VALUES ($1, $2, $3, $4, $5, $6) {upsert}"
    );
    sqlx::query(db.statement(&sql))
        .bind(project_id)
        .bind(n.live)
        .bind(n.created)
        .bind(n.updated)
        .bind(n.deleted)
        .bind(at)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Records that the event was handled, and how.
async fn record(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    event_id: &str,
    ty: &str,
    c: &SymbolChange,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    let sql = db.statement(
        "INSERT INTO symbol_activity (event_id, event_type, project_id, symbol_id, version, outcome, handled_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    );
    sqlx::query(sql)
        .bind(event_id)
        .bind(ty)
        .bind(&c.project_id)
        .bind(c.symbol_id.to_string())
        .bind(c.version)
        .bind(if outcome == Outcome::Applied { "applied" } else { "stale" })
        .bind(now_micros())
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// A project's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStats {
    /// The project.
    pub project_id: String,
    /// Symbols created and not deleted.
    pub live_symbols: i64,
    /// `symbol.created` applied.
    pub created_total: i64,
    /// `symbol.updated` applied.
    pub updated_total: i64,
    /// `symbol.deleted` applied.
    pub deleted_total: i64,
    /// When the latest change applied happened (RFC 3339), if any.
    pub last_event_at: Option<String>,
}

/// The counters of `project_id` (zeros when no event of it was applied).
pub async fn stats(db: &Db, project_id: &str) -> Result<ProjectStats, SymbolError> {
    let mut c = Check::default();
    let project_id = model::project_id(&mut c, project_id);
    c.finish(()).map_err(SymbolError::Invalid)?;
    let sql = db.statement(
        "SELECT live_symbols, created_total, updated_total, deleted_total, last_event_at FROM symbol_stats \
         WHERE project_id = $1",
    );
    let mut conn = db.acquire().await?;
    let row = sqlx::query(sql).bind(&project_id).fetch_optional(db.on(&mut *conn)).await.map_err(DataError::from)?;
    let Some(row) = row else { return Ok(ProjectStats { project_id, ..ProjectStats::default() }) };
    let read = || -> Result<ProjectStats, sqlx::Error> {
        Ok(ProjectStats {
            project_id: project_id.clone(),
            live_symbols: row.try_get("live_symbols")?,
            created_total: row.try_get("created_total")?,
            updated_total: row.try_get("updated_total")?,
            deleted_total: row.try_get("deleted_total")?,
            last_event_at: Some(model::rfc3339(row.try_get("last_event_at")?)),
        })
    };
    read().map_err(|e| SymbolError::Data(db.observe(e)))
}

/// The worker's routes: `GET /v1/projects/{project_id}/stats`.
pub fn router(db: Db) -> Router {
    Router::new().route("/v1/projects/{project_id}/stats", get(show_stats)).with_state(db)
}

async fn show_stats(State(db): State<Db>, Path(project_id): Path<String>) -> Result<Response, SymbolError> {
    Ok(axum::Json(stats(&db, &project_id).await?).into_response())
}
