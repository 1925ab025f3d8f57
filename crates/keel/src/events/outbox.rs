//! The transactional outbox: an event is written in the same SQL transaction as the state
//! change it announces, and a relay publishes it afterwards — so a committed change is never
//! left unannounced and a rolled-back one is never announced.
//!
//! * [`Outbox::enqueue`] inserts into `keel_outbox` inside the caller's transaction.
//! * [`Outbox::run`] (the relay; `Setup::outbox` starts it) claims batches of due rows (`FOR
//!   UPDATE SKIP LOCKED` on PostgreSQL and MySQL/MariaDB; SQLite serializes writers) and leases
//!   them (`outbox.lease`), so several relay instances share one outbox and a dead relay's rows
//!   are taken over. It publishes with broker confirmation, marks rows sent, and on failure
//!   retries with backoff `2^n s` clamped to `[backoff_min, backoff_max]` with ±10 % jitter; after
//!   `max_attempts` a row is **dead**, its last error kept.
//! * **Per-key ordering**: a row with a key is claimed only when no earlier unsent row has the
//!   same key, so events of one aggregate reach the broker in order even across relays and
//!   retries; rows without a key go out in parallel.
//! * Sent rows are deleted after `outbox.retention` (`0s`: at once, instead of being marked
//!   sent — the fastest setting, without the trail of what was published).
//! * The relay records a batch's results while it publishes the next batch (the recorded rows
//!   stay leased until then), so the database and the broker work at the same time.
//!
//! The tables come from [`schema_steps`]: put each step's SQL in a migration of the service, in
//! order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metrics::OutboxMetrics;
use super::{Bus, BusError, Envelope, Event, EventError, now_ms};
use crate::config::OutboxConfig;
use crate::data::{Backend, DataError, Db};
use crate::health::sanitize;

/// Largest envelope the outbox takes (the brokers' default message limit is 1 MiB).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

const PENDING: i32 = 0;
const SENT: i32 = 1;
const DEAD: i32 = 2;

/// An outbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database refused.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A statement failed.
    #[error("outbox statement failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// The event could not be encoded.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Bad input: a topic name or an oversized event.
    #[error("{0}")]
    Invalid(String),
}

/// The SQL that creates `keel_outbox` and `keel_inbox` for `backend` (step 1 of
/// [`schema_steps`]): put it in a migration, and every later step in a migration after it.
///
/// ```
/// let sql = keel::events::outbox::schema(keel::data::Backend::Postgres);
/// assert!(sql.contains("keel_outbox") && sql.contains("keel_inbox"));
/// ```
pub fn schema(backend: Backend) -> &'static str {
    schema_steps(backend)[0]
}

/// Every step of the events tables' schema for `backend`, oldest first; put each in its own
/// migration, in this order. A step never changes once released (migration tools check what was
/// applied), so a new Keel version adds steps instead: a database at step 1 gets only the later
/// ones.
///
/// | step | what |
/// |---|---|
/// | 1 | `keel_outbox` and `keel_inbox` |
/// | 2 | claims walk `(status, seq)`: cheap however long the backlog; drops two unused indexes |
///
/// ```
/// use keel::data::Backend;
/// let steps = keel::events::outbox::schema_steps(Backend::Sqlite);
/// assert_eq!(steps[0], keel::events::outbox::schema(Backend::Sqlite));
/// assert!(steps[1].contains("keel_outbox_pending"));
/// ```
pub fn schema_steps(backend: Backend) -> [&'static str; 2] {
    match backend {
        Backend::Postgres => [include_str!("sql/postgres.sql"), include_str!("sql/postgres_2.sql")],
        Backend::MySql => [include_str!("sql/mysql.sql"), include_str!("sql/mysql_2.sql")],
        Backend::Sqlite => [include_str!("sql/sqlite.sql"), include_str!("sql/sqlite_2.sql")],
    }
}

/// The outbox of one service database. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    source: String,
    config: OutboxConfig,
    relay_id: String,
    claims: AtomicU64,
    wake: Notify,
    metrics: OutboxMetrics,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("relay", &self.inner.relay_id).finish_non_exhaustive()
    }
}

/// A claimed row.
struct Claimed {
    seq: i64,
    topic: String,
    key: Option<String>,
    payload: String,
    attempts: i32,
}

impl Claimed {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            seq: r.try_get(0)?,
            topic: r.try_get(1)?,
            key: r.try_get(2)?,
            payload: r.try_get(3)?,
            attempts: r.try_get(4)?,
        })
    }
}

/// The relay's one round being recorded in the background while the next is published.
#[derive(Default)]
struct Settling(Option<tokio::task::JoinHandle<()>>);

impl Settling {
    fn start(&mut self, outbox: Outbox, claim: String, round: Round) {
        self.0 = Some(tokio::spawn(async move {
            if let Err(e) = outbox.settle(&claim, round).await {
                tracing::warn!(error = %e, "recording outbox results failed; the leases will expire and rows be retried");
            }
        }));
    }

    /// Waits for the recording in flight, if any (a panic in it is logged, not propagated: the
    /// rows' leases expire and they are published again).
    async fn finish(&mut self) {
        if let Some(task) = self.0.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "recording outbox results panicked; the leases will expire and rows be retried");
        }
    }
}

/// What publishing a claimed batch came to.
#[derive(Default)]
struct Round {
    sent: Vec<i64>,
    failed: Vec<(i64, i32, String)>,
    /// Not tried: an earlier row with the same key failed in this round.
    released: Vec<i64>,
}

impl Outbox {
    /// An outbox on `db`; events get `source` (the service name). Registers the `outbox_*`
    /// metrics when `metrics` is given.
    pub fn new(
        db: Db,
        source: &str,
        config: &OutboxConfig,
        metrics: Option<&crate::telemetry::Metrics>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                source: source.to_owned(),
                config: config.clone(),
                relay_id: format!("{:08x}", rand::random::<u32>()),
                claims: AtomicU64::new(0),
                wake: Notify::new(),
                metrics: OutboxMetrics::new(metrics)?,
            }),
        })
    }

    /// Writes `envelope` for `topic` in `tx`: it is published only if `tx` commits.
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'static, Any>,
        topic: &str,
        envelope: &Envelope,
    ) -> Result<(), OutboxError> {
        self.enqueue_all(tx, topic, std::slice::from_ref(envelope)).await
    }

    /// Writes several envelopes for `topic` in `tx` with one multi-row `INSERT` per 100 (for
    /// producers that emit events in bulk). All or nothing: a bad envelope fails the call.
    pub async fn enqueue_all(
        &self,
        tx: &mut Transaction<'static, Any>,
        topic: &str,
        envelopes: &[Envelope],
    ) -> Result<(), OutboxError> {
        super::validate_name(topic).map_err(|e| OutboxError::Invalid(e.to_string()))?;
        let mut payloads = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let payload = String::from_utf8(envelope.to_bytes()?).map_err(|e| OutboxError::Invalid(e.to_string()))?;
            if payload.len() > MAX_PAYLOAD {
                return Err(OutboxError::Invalid(format!(
                    "event {} is {} bytes; the outbox takes at most {MAX_PAYLOAD}",
                    envelope.id,
                    payload.len()
                )));
            }
            payloads.push(payload);
        }
        let now = now_ms();
        let rows: Vec<(&Envelope, String)> = envelopes.iter().zip(payloads).collect();
        for chunk in rows.chunks(100) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 6;
                    format!("(${}, ${}, ${}, ${}, 0, 0, ${}, ${}, 0)", p + 1, p + 2, p + 3, p + 4, p + 5, p + 6)
                })
                .collect();
            let text = format!(
                "INSERT INTO keel_outbox (event_id, topic, partition_key, payload, status, attempts, created_at, \
                 next_attempt_at, locked_until) VALUES {}",
                values.join(", ")
            );
            let sql = self.inner.db.sql(&text).into_owned();
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (envelope, payload) in chunk {
                q = q.bind(envelope.id.as_str()).bind(topic).bind(envelope.key.as_deref()).bind(payload.as_str());
                q = q.bind(now).bind(now);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Wraps `event` in an envelope from this service (with the current request id and trace)
    /// and enqueues it; returns the envelope.
    pub async fn enqueue_event<E: Event>(
        &self,
        tx: &mut Transaction<'static, Any>,
        topic: &str,
        event: &E,
    ) -> Result<Envelope, OutboxError> {
        let envelope = Envelope::new(&self.inner.source, event)?;
        self.enqueue(tx, topic, &envelope).await?;
        Ok(envelope)
    }

    /// Tells the relay in this process to look now rather than at its next poll (call it after
    /// committing a transaction that enqueued events).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The relay: publishes due rows to `bus` until `stop`.
    ///
    /// It works in rounds of up to `batch_size` rows, three stages deep: while one batch is
    /// published, the next is claimed and the previous one's results are recorded. Claimed and
    /// unrecorded rows stay leased, so no relay takes them twice and a later row with the same
    /// key waits for them. On `stop` it finishes the batch being published, records it, and
    /// gives back the batch it had claimed ahead, so another relay can take it at once.
    pub async fn run(self, bus: Bus, stop: CancellationToken) {
        let cfg = &self.inner.config;
        let mut gauges_at: Option<Instant> = None;
        let mut prune_at: Option<Instant> = None;
        let mut failures = crate::resilience::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut settling = Settling::default();
        let mut ahead: Option<(String, Vec<Claimed>)> = None;
        while !stop.is_cancelled() {
            // Until the database is connected (and migrated, where that is automatic) there is
            // no table to read: wait quietly instead of logging failures.
            let ready = bus.is_connected() && self.inner.db.is_available();
            if ready && gauges_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                gauges_at = Some(Instant::now());
                if let Err(e) = self.update_gauges().await {
                    tracing::debug!(error = %e, "cannot read outbox gauges");
                }
            }
            if ready && prune_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                prune_at = Some(Instant::now());
                match self.prune().await {
                    Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned sent outbox rows"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
                }
            }
            let claimed = match ahead.take() {
                Some(batch) => Ok(batch),
                None if ready => self.claim().await,
                None => Ok((String::new(), Vec::new())),
            };
            match claimed {
                Ok((claim, rows)) if !rows.is_empty() => {
                    failures.reset();
                    let claim_ahead = async {
                        if bus.is_connected() && !stop.is_cancelled() { Some(self.claim().await) } else { None }
                    };
                    let (round, next) = tokio::join!(self.publish(&bus, rows), claim_ahead);
                    settling.finish().await;
                    settling.start(self.clone(), claim, round);
                    match next {
                        Some(Ok(batch)) if !batch.1.is_empty() => {
                            ahead = Some(batch);
                            continue;
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "claiming outbox rows failed; trying again"),
                        _ => {}
                    }
                }
                Ok(_) => failures.reset(),
                Err(e) => {
                    let wait = failures.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "claiming outbox rows failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            }
            settling.finish().await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(cfg.poll_interval) => {}
                () = self.inner.wake.notified() => {}
            }
        }
        settling.finish().await;
        if let Some((claim, rows)) = ahead {
            let round = Round { released: rows.iter().map(|r| r.seq).collect(), ..Round::default() };
            if let Err(e) = self.settle(&claim, round).await {
                tracing::warn!(error = %e, "giving back claimed outbox rows failed; their leases will expire");
            }
        }
    }

    fn next_claim(&self) -> String {
        format!("{}:{}", self.inner.relay_id, self.inner.claims.fetch_add(1, Ordering::Relaxed))
    }

    /// Claims up to `batch_size` due rows under a new claim token.
    async fn claim(&self) -> Result<(String, Vec<Claimed>), OutboxError> {
        let db = &self.inner.db;
        let cfg = &self.inner.config;
        let claim = self.next_claim();
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(cfg.lease.as_millis()).unwrap_or(i64::MAX));
        let limit = i64::from(cfg.batch_size);
        // Due, not leased, and no earlier unsent row with the same key (per-key order).
        let due = |now: usize| {
            format!(
                "status = 0 AND next_attempt_at <= ${now} AND locked_until <= ${} AND (partition_key IS NULL OR NOT EXISTS \
                 (SELECT 1 FROM keel_outbox p WHERE p.partition_key = o.partition_key AND p.status = 0 AND p.seq < o.seq))",
                now + 1
            )
        };
        match db.backend() {
            Backend::MySql => {
                // MySQL cannot UPDATE a table it selects from in a subquery: lock and read the
                // rows, then lease them, in one transaction.
                let mut tx = db.begin_with(READ_COMMITTED).await?;
                let text = format!(
                    "SELECT seq, topic, partition_key, payload, attempts FROM keel_outbox o WHERE {} \
                     ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED",
                    due(1)
                );
                let rows = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned()))
                    .bind(now)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(Claimed::from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                if rows.is_empty() {
                    tx.rollback().await?;
                    return Ok((claim, rows));
                }
                let text = format!(
                    "UPDATE keel_outbox SET locked_until = $1, claim = $2 WHERE seq IN ({})",
                    marks(3, rows.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned())).bind(until).bind(&claim);
                for r in &rows {
                    q = q.bind(r.seq);
                }
                q.execute(&mut *tx).await?;
                tx.commit().await?;
                Ok((claim, rows))
            }
            backend => {
                // One statement claims and returns the rows (PostgreSQL, SQLite ≥ 3.35).
                let lock = if backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
                let text = format!(
                    "UPDATE keel_outbox SET locked_until = $1, claim = $2 WHERE seq IN \
                     (SELECT seq FROM keel_outbox o WHERE {} ORDER BY seq LIMIT $5{lock}) \
                     RETURNING seq, topic, partition_key, payload, attempts",
                    due(3)
                );
                let sql = db.sql(&text);
                let rows = sqlx::query(AssertSqlSafe(sql.into_owned()))
                    .bind(until)
                    .bind(&claim)
                    .bind(now)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(db.pool())
                    .await?;
                let mut rows = rows.iter().map(Claimed::from_row).collect::<Result<Vec<_>, sqlx::Error>>()?;
                // RETURNING has no order; per-key chains need it.
                rows.sort_unstable_by_key(|r| r.seq);
                Ok((claim, rows))
            }
        }
    }

    /// Publishes claimed rows: rows with the same key one after another (stopping at the first
    /// failure, so order holds), everything else concurrently up to `max_in_flight`.
    async fn publish(&self, bus: &Bus, rows: Vec<Claimed>) -> Round {
        let mut chains: Vec<Vec<Claimed>> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for row in rows {
            match row.key.clone() {
                Some(k) => match by_key.get(&k) {
                    Some(&i) => chains[i].push(row),
                    None => {
                        by_key.insert(k, chains.len());
                        chains.push(vec![row]);
                    }
                },
                None => chains.push(vec![row]),
            }
        }
        let results: Vec<Round> = futures_util::stream::iter(chains)
            .map(|chain| async move {
                let mut round = Round::default();
                let mut rows = chain.into_iter();
                for row in rows.by_ref() {
                    let published = match Envelope::from_bytes(row.payload.as_bytes()) {
                        Ok(env) => bus.publish_encoded(&row.topic, &env, row.payload.into_bytes()).await,
                        Err(e) => Err(BusError::Event(e)),
                    };
                    match published {
                        Ok(()) => round.sent.push(row.seq),
                        Err(e) => {
                            round.failed.push((row.seq, row.attempts, sanitize(&e.to_string())));
                            break;
                        }
                    }
                }
                round.released.extend(rows.map(|r| r.seq));
                round
            })
            .buffer_unordered(self.inner.config.max_in_flight)
            .collect()
            .await;
        let mut all = Round::default();
        for r in results {
            all.sent.extend(r.sent);
            all.failed.extend(r.failed);
            all.released.extend(r.released);
        }
        all
    }

    /// Records a round: sent rows, failed rows (rescheduled or dead), released rows.
    async fn settle(&self, claim: &str, round: Round) -> Result<(), OutboxError> {
        let db = &self.inner.db;
        let cfg = &self.inner.config;
        let m = &self.inner.metrics;
        let now = now_ms();
        for chunk in round.sent.chunks(500) {
            // `retention: 0s`: nothing is kept, so a sent row is deleted instead of rewritten.
            let (text, keep) = if cfg.retention.is_zero() {
                (format!("DELETE FROM keel_outbox WHERE claim = $1 AND seq IN ({})", marks(2, chunk.len())), false)
            } else {
                let text = format!(
                    "UPDATE keel_outbox SET status = {SENT}, sent_at = $1, locked_until = 0, claim = NULL \
                     WHERE claim = $2 AND seq IN ({})",
                    marks(3, chunk.len())
                );
                (text, true)
            };
            let sql = db.sql(&text);
            let q = sqlx::query(AssertSqlSafe(sql.into_owned()));
            let mut q = if keep { q.bind(now).bind(claim) } else { q.bind(claim) };
            for s in chunk {
                q = q.bind(*s);
            }
            q.execute(db.pool()).await?;
            m.published.inc_by(chunk.len() as u64);
        }
        for (seq, attempts, error) in round.failed {
            let attempts = attempts.saturating_add(1);
            let dead = u32::try_from(attempts).unwrap_or(u32::MAX) >= cfg.max_attempts;
            let wait = super::backoff(u32::try_from(attempts).unwrap_or(1), cfg.backoff_min, cfg.backoff_max);
            let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            let error: String = error.chars().take(1000).collect();
            let status = if dead { DEAD } else { PENDING };
            let sql = db.sql(
                "UPDATE keel_outbox SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4, \
                 locked_until = 0, claim = NULL WHERE seq = $5 AND claim = $6",
            );
            sqlx::query(AssertSqlSafe(sql.into_owned()))
                .bind(status)
                .bind(attempts)
                .bind(next)
                .bind(&error)
                .bind(seq)
                .bind(claim)
                .execute(db.pool())
                .await?;
            m.failures.inc();
            if dead {
                m.dead.inc();
                tracing::error!(seq, attempts, error = %error, "outbox row is dead: it will not be published again");
            } else {
                tracing::warn!(seq, attempts, retry_in = ?wait, error = %error, "publishing an outbox row failed");
            }
        }
        for chunk in round.released.chunks(500) {
            let text = format!(
                "UPDATE keel_outbox SET locked_until = 0, claim = NULL WHERE claim = $1 AND seq IN ({})",
                marks(2, chunk.len())
            );
            let sql = db.sql(&text);
            let mut q = sqlx::query(AssertSqlSafe(sql.into_owned())).bind(claim);
            for s in chunk {
                q = q.bind(*s);
            }
            q.execute(db.pool()).await?;
        }
        Ok(())
    }

    async fn update_gauges(&self) -> Result<(), OutboxError> {
        let (pending, oldest) = self.pending().await?;
        let m = &self.inner.metrics;
        m.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        m.oldest_age.set(oldest.map_or(0.0, |t| (now_ms().saturating_sub(t)).max(0) as f64 / 1000.0));
        Ok(())
    }

    /// Rows not published yet (and not dead), and the creation time (ms) of the oldest.
    pub async fn pending(&self) -> Result<(u64, Option<i64>), OutboxError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), MIN(created_at) FROM keel_outbox WHERE status = {PENDING}"
        )))
        .fetch_one(self.inner.db.pool())
        .await?;
        let count: i64 = row.try_get(0)?;
        Ok((u64::try_from(count).unwrap_or(0), row.try_get(1)?))
    }

    /// Rows marked dead, with their last error: `(event id, topic, attempts, last error)`.
    pub async fn dead(&self, limit: i64) -> Result<Vec<(String, String, i32, Option<String>)>, OutboxError> {
        let text = format!(
            "SELECT event_id, topic, attempts, last_error FROM keel_outbox WHERE status = {DEAD} ORDER BY seq LIMIT $1"
        );
        let sql = self.inner.db.sql(&text);
        let rows = sqlx::query(AssertSqlSafe(sql.into_owned())).bind(limit).fetch_all(self.inner.db.pool()).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Deletes sent rows older than `outbox.retention`.
    pub async fn prune(&self) -> Result<u64, OutboxError> {
        let db = &self.inner.db;
        let keep = i64::try_from(self.inner.config.retention.as_millis()).unwrap_or(i64::MAX);
        let text = format!("DELETE FROM keel_outbox WHERE status = {SENT} AND sent_at < $1");
        let q = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned())).bind(now_ms().saturating_sub(keep));
        let done = if db.backend() == Backend::MySql {
            // Its scan of the (status, seq) index would otherwise lock the gap every new
            // pending row goes into, and hold up every enqueue until the delete is done.
            let mut tx = db.begin_with(READ_COMMITTED).await?;
            let done = q.execute(&mut *tx).await?;
            tx.commit().await?;
            done
        } else {
            q.execute(db.pool()).await?
        };
        Ok(done.rows_affected())
    }
}

/// How the relay starts its MySQL/MariaDB transactions: at `READ COMMITTED`, where InnoDB locks
/// only the rows a statement takes, not the gaps between them. Under its default (repeatable
/// read), the relay's locks covered the gap at the end of `keel_outbox`, and a service's
/// transaction that enqueued before and after a claim could deadlock with it, and fail.
const READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";

/// `$from, $from+1, …` (n placeholders) for an `IN` list.
fn marks(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}
