//! The transactional outbox: an event is written in the same SQL transaction as the state
//! change it announces, and a relay publishes it afterwards — so a committed change is never
//! left unannounced and a rolled-back one is never announced.
//!
//! * [`Outbox::enqueue`] inserts into `keel_outbox` inside the caller's transaction.
//! * [`Outbox::run`] (the relay; `Setup::outbox` starts it) claims batches of rows and leases
//!   them (`outbox.lease`, 2 s), so several relay instances share one outbox. A relay renews its
//!   leases every quarter lease while it works and publishes a claimed row only while its lease
//!   holds, so a dead relay's rows are taken over within a lease, and a live relay's never. It
//!   publishes with broker confirmation, marks rows sent, and on failure holds
//!   the row back for `backoff_min` doubling per failed attempt up to `backoff_max`, ±10 %
//!   jitter (a [`Backoff`](keel_resilience::Backoff) with proportional jitter); after
//!   `max_attempts` a row is **dead**, its last error kept.
//! * **Per-key ordering**: a row with a key is published only after every earlier row with that
//!   key, even across relays and retries. A claim takes, oldest first, every row whose key has no
//!   row waiting (leased by another relay, or held back after a failure): across keys, and within
//!   a key a run of consecutive rows, which are then published one after another. Rows without a
//!   key go out in parallel. Rows of waiting keys are passed over (up to `24 × batch_size` of
//!   them), so a stuck key does not hold up the others.
//! * **Cost**: a claim reads the waiting rows' keys through a small index (`keel_outbox_held`)
//!   and walks the pending rows through `(status, seq)` until it has a batch, so its cost is the
//!   batch plus the rows of keys that wait, not the backlog. Claims of several relays
//!   take turns (a transaction-scoped advisory lock on PostgreSQL, a row lock on MySQL/MariaDB,
//!   SQLite's write lock), which is what keeps a key's rows from being split between relays.
//! * **Broker outages spend no attempts**: a publish that fails because the broker is
//!   unreachable or did not confirm in time gives the row back untouched and pauses the relay
//!   until the bus is connected again (`outbox_relay_paused`).
//! * Sent rows are deleted after `outbox.retention` (`0s`: at once, instead of being marked
//!   sent — the fastest setting, without the trail of what was published).
//! * The relay records a batch's results while it publishes the next batch (the recorded rows
//!   stay leased until then), so the database and the broker work at the same time.
//! * **Tracing** (OpenTelemetry's messaging conventions): while spans are exported, an event
//!   enqueued under a sampled span gets a `create {topic}` span (kind PRODUCER) under it, whose
//!   context is stored as the event's `traceparent`, its creation context. The relay publishes a
//!   batch in a `send` span (kind CLIENT, a root: a batch mixes many requests' messages) linked to
//!   each message's creation context, made only when one of them is sampled.
//!
//! The tables are Keel's: [`migrations`] creates and upgrades them, recorded in
//! `_keel_events_migrations`, and keel-app applies them with the service's own migrations.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metrics::OutboxMetrics;
use super::trace::{self, Peer};
use super::{Bus, BusError, Envelope, Event, EventError, now_ms};
use crate::OutboxConfig;
use keel_data::{Backend, DataError, Db};
use keel_health::sanitize;
use keel_resilience::Backoff;
use tracing::Instrument as _;

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

impl From<OutboxError> for keel_http::Problem {
    /// A database failure answers as [`DataError`] does; an event that could not be encoded or
    /// was refused (a bad topic, an oversized event) is this service's bug: 500, logged.
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Data(e) => e.into(),
            OutboxError::Sql(e) => DataError::Sql(e).into(),
            e => {
                tracing::error!(error = %e, "enqueueing an event failed");
                keel_http::Problem::internal()
            }
        }
    }
}

impl OutboxError {
    /// The kind of failure, as a `create` span's `error.type` says it.
    fn kind(&self) -> &'static str {
        match self {
            Self::Data(_) => "data",
            Self::Sql(_) => "sql",
            Self::Event(_) => "event",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Keel's events tables as a migration set of their own (recorded in
/// `_keel_events_migrations`), for every backend: keel-app applies it before the service's own
/// migrations, in `<service> migrate` and with `database.auto_migrate`. A version once released
/// never changes (sqlx checks what was applied), so a Keel upgrade adds versions instead.
///
/// | version | what |
/// |---|---|
/// | 1 | `keel_outbox` and `keel_inbox` |
/// | 2 | claims walk `(status, seq)`: cheap however long the backlog; drops two unused indexes |
/// | 3 | `keel_outbox_held`: the rows a claim must wait for, read without scanning the backlog; drops the per-key index; on MySQL/MariaDB, `keel_outbox_lock` |
///
/// A database whose service carried copies of these steps as its own migrations (files named
/// `*_keel_events.sql`, `*_keel_events_2.sql`, `*_keel_events_3.sql`, as Keel once asked) is
/// taken over on the first `migrate`: the service's records of the copies move to Keel's table,
/// nothing runs twice, and the copies can be deleted from the service.
///
/// ```
/// use keel_data::Backend;
/// let m = keel_events::outbox::migrations();
/// let steps: Vec<_> = m.for_backend(Backend::Sqlite).unwrap().iter().map(|s| s.version).collect();
/// assert_eq!(steps, [1, 2, 3]);
/// ```
pub fn migrations() -> keel_data::Migrations {
    keel_data::migrations!(library "keel_events")
        .adopt("keel events", 1)
        .adopt("keel events 2", 2)
        .adopt("keel events 3", 3)
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
    /// This relay's claims whose rows are leased (claimed and not yet recorded), the leases the
    /// renewal extends, each with the time its lease was last taken: the claim's or its last
    /// renewal's start. Its rows are leased until a lease after that.
    held: std::sync::Mutex<HashMap<String, Instant>>,
    wake: Notify,
    metrics: OutboxMetrics,
    /// The bus the relay in this process publishes to, for the `create` spans' attributes
    /// (unset until the relay starts, or when it runs elsewhere).
    peer: std::sync::OnceLock<Peer>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("relay", &self.inner.relay_id).finish_non_exhaustive()
    }
}

/// A message's trace context as stored: `traceparent`, `tracestate`.
type Stamp = (Option<String>, Option<String>);

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

/// A claim token and the rows it leased.
#[derive(Default)]
struct Batch {
    claim: String,
    rows: Vec<Claimed>,
    /// The claim saw every pending row (fewer than its window) and took every one it could
    /// (fewer than a batch): what it left is leased or held back, so a claim made at once would
    /// find only rows enqueued since, and those wake the relay (or its next poll finds them).
    whole: bool,
}

/// The relay's one round being recorded in the background while the next is published.
#[derive(Default)]
struct Settling(Option<(String, tokio::task::JoinHandle<()>)>);

impl Settling {
    fn start(&mut self, outbox: Outbox, claim: String, round: Round) {
        let token = claim.clone();
        let task = tokio::spawn(
            async move {
                if let Err(e) = outbox.settle(&claim, round).await {
                    tracing::warn!(error = %e, "recording outbox results failed; the leases will expire and rows be retried");
                }
                outbox.release(&claim);
            }
            .in_current_span(),
        );
        self.0 = Some((token, task));
    }

    /// The claim being recorded, if any: its rows are still leased, by this relay.
    fn claim(&self) -> Option<&str> {
        self.0.as_ref().map(|(c, _)| c.as_str())
    }

    /// Waits for the recording in flight, if any (a panic in it is logged, not propagated: the
    /// rows' leases expire and they are published again).
    async fn finish(&mut self) {
        if let Some((_, task)) = self.0.take()
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
    /// Not tried, or given back untouched: an earlier row with the same key failed in this round
    /// or one of the two before it, or the broker was unreachable.
    released: Vec<i64>,
    /// Keys whose rows failed or were held back in this round: the next rounds, claimed before
    /// this one is recorded, must not publish past them.
    stopped: HashSet<String>,
    /// A publish failed because the broker was unreachable or did not confirm in time.
    outage: Option<String>,
    /// Rows were given back unpublished because their lease could not be renewed in time.
    lapsed: bool,
    /// The kind of the first failed publish (`BusError::kind`), the `send` span's `error.type`.
    error: Option<&'static str>,
}

/// Keys the relay must not publish past, from the last two rounds: a batch is claimed while the
/// one before it is published and the one before that is recorded, so its claim cannot yet see
/// those rounds' failures in the table.
#[derive(Default)]
struct Stopped([HashSet<String>; 2]);

impl Stopped {
    fn push(&mut self, keys: HashSet<String>) {
        self.0.swap(0, 1);
        self.0[0] = keys;
    }
    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|s| s.contains(key))
    }
    fn clear(&mut self) {
        self.0 = Default::default();
    }
}

/// Whether a publish failed for want of the broker rather than because of the message: such a
/// row is given back without spending an attempt.
fn is_outage(e: &BusError) -> bool {
    matches!(e, BusError::Unavailable(_) | BusError::Timeout(_) | BusError::Full(_))
}

impl Outbox {
    /// An outbox on `db`; events get `source` (the service name). Registers the `outbox_*`
    /// metrics when `metrics` is given.
    pub fn new(
        db: Db,
        source: &str,
        config: &OutboxConfig,
        metrics: Option<&keel_telemetry::Metrics>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                source: source.to_owned(),
                config: config.clone(),
                relay_id: format!("{:08x}", rand::random::<u32>()),
                claims: AtomicU64::new(0),
                held: std::sync::Mutex::new(HashMap::new()),
                wake: Notify::new(),
                metrics: OutboxMetrics::new(metrics)?,
                peer: std::sync::OnceLock::new(),
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
    ///
    /// While spans are exported and the current span is sampled, each envelope stamped under the
    /// current span (as [`Envelope::new`] stamps it), or with no trace context, gets a
    /// `create {topic}` span under the current span, and is stored with that span's context as
    /// its `traceparent`: its creation context, which the relay's `send` span links to and the
    /// consumer's `process` span continues. An envelope carrying another trace context is stored
    /// as it is.
    pub async fn enqueue_all(
        &self,
        tx: &mut Transaction<'static, Any>,
        topic: &str,
        envelopes: &[Envelope],
    ) -> Result<(), OutboxError> {
        self.write(tx, topic, envelopes).await.map(drop)
    }

    /// [`Outbox::enqueue_all`], returning the trace context (`traceparent`, `tracestate`) stored
    /// for each envelope given a `create` span, by its index.
    async fn write(
        &self,
        tx: &mut Transaction<'static, Any>,
        topic: &str,
        envelopes: &[Envelope],
    ) -> Result<Vec<(usize, Stamp)>, OutboxError> {
        super::validate_name(topic).map_err(|e| OutboxError::Invalid(e.to_string()))?;
        let here = keel_telemetry::is_traced().then(|| keel_telemetry::span_context(&tracing::Span::current()));
        let mut spans = Vec::new();
        let mut created = Vec::new();
        let result = self.insert(tx, topic, envelopes, here.as_ref(), &mut spans, &mut created).await;
        if let Err(e) = &result {
            for span in &spans {
                trace::fail(span, e.kind());
            }
        }
        result.map(|()| created)
    }

    /// The `INSERT`s of [`Outbox::write`], with a `create` span per envelope when `here` (the
    /// current span's context) is given; the spans end when the call does.
    async fn insert(
        &self,
        tx: &mut Transaction<'static, Any>,
        topic: &str,
        envelopes: &[Envelope],
        here: Option<&keel_telemetry::SpanContext>,
        spans: &mut Vec<tracing::Span>,
        created: &mut Vec<(usize, Stamp)>,
    ) -> Result<(), OutboxError> {
        let mut payloads = Vec::with_capacity(envelopes.len());
        for (i, envelope) in envelopes.iter().enumerate() {
            let bytes = match here {
                Some(here) if trace::custom_context(envelope, here).is_none() => {
                    let span = trace::create_span(self.inner.peer.get(), topic, &envelope.id);
                    let mut own = envelope.clone();
                    trace::stamp(&mut own, &span);
                    spans.push(span);
                    let bytes = own.to_bytes()?;
                    created.push((i, (own.traceparent, own.tracestate)));
                    bytes
                }
                _ => envelope.to_bytes()?,
            };
            let payload = String::from_utf8(bytes).map_err(|e| OutboxError::Invalid(e.to_string()))?;
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
            let insert = q.execute(self.inner.db.on(&mut **tx));
            match spans.as_slice() {
                // One message: its INSERT shows under its `create` span.
                [one] if envelopes.len() == 1 => insert.instrument(one.clone()).await?,
                _ => insert.await?,
            };
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
        let mut envelope = Envelope::new(&self.inner.source, event)?;
        if let Some((_, (traceparent, tracestate))) =
            self.write(tx, topic, std::slice::from_ref(&envelope)).await?.pop()
        {
            // As stored: the creation context is its `create` span's.
            envelope.traceparent = traceparent;
            envelope.tracestate = tracestate;
        }
        Ok(envelope)
    }

    /// The database it writes to (a consumer's writes beside it go through its [`Db::on`]).
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Tells the relay in this process to look now rather than at its next poll (call it after
    /// committing a transaction that enqueued events).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The relay: publishes due rows to `bus` until `stop`.
    ///
    /// It works in rounds of up to `batch_size` rows, three stages deep: while one batch is
    /// published, the next is claimed (when the last claim left rows it could not take, or as
    /// soon as [`Outbox::wake`] is called during the publish: at a trickle there is nothing
    /// ahead to claim) and the previous one's results are recorded. Claimed and
    /// unrecorded rows stay leased, so no other relay takes them or a later row of their keys;
    /// this relay's own next claim may take a key's following rows, and publishes them only if
    /// the rows before them went out. When the broker is unreachable, the relay gives its rows
    /// back untouched and pauses until the bus is connected again. On `stop` it finishes the
    /// batch being published, records it, and gives back the batch it had claimed ahead, so
    /// another relay can take it at once.
    ///
    /// Beside the rounds, the relay renews the leases of its claims every quarter of
    /// `outbox.lease`. A row is published only while its lease holds with a quarter lease to
    /// spare; rows whose lease could not be renewed in time (the database too slow or away) are
    /// given back unpublished, as another relay may have taken them. So a relay that dies (or
    /// hangs) leaves its rows to the others within one lease, and a live one never publishes a
    /// row another relay has taken over.
    pub async fn run(self, bus: Bus, stop: CancellationToken) {
        let done = CancellationToken::new();
        let renewal = self.clone().renew(done.clone());
        let relay = async {
            self.relay(bus, stop).await;
            done.cancel();
        };
        tokio::join!(relay, renewal);
    }

    /// Renews this relay's leases every quarter lease until `done`.
    async fn renew(self, done: CancellationToken) {
        let lease = self.inner.config.lease;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(lease / 4) => {}
            }
            let claims: Vec<String> = self.held().keys().cloned().collect();
            if claims.is_empty() {
                continue;
            }
            let started = Instant::now();
            match self.extend(&claims).await {
                Ok(()) => {
                    failures = 0;
                    let mut held = self.held();
                    for c in &claims {
                        if let Some(t) = held.get_mut(c) {
                            *t = (*t).max(started);
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures < 3 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "renewing outbox leases failed; rows whose lease ends are given back");
                    }
                }
            }
        }
    }

    /// Extends the leases of the rows still under `claims`: pending and not taken over (a relay
    /// that takes a row over gives it its own claim), even if a lease ran out meanwhile.
    async fn extend(&self, claims: &[String]) -> Result<(), OutboxError> {
        let db = &self.inner.db;
        let until = now_ms().saturating_add(i64::try_from(self.inner.config.lease.as_millis()).unwrap_or(i64::MAX));
        // `locked_until > 0` (true of every leased row) lets SQLite and PostgreSQL use the
        // partial index of waiting rows.
        let text = format!(
            "UPDATE keel_outbox SET locked_until = $1 WHERE status = {PENDING} AND locked_until > 0 \
             AND claim IN ({})",
            marks(2, claims.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned())).bind(until);
        for c in claims {
            q = q.bind(c.as_str());
        }
        q.execute(db.exec()).await?;
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.inner.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claim's rows are recorded (or their recording failed): its leases are not renewed.
    fn release(&self, claim: &str) {
        self.held().remove(claim);
    }

    /// Whether the rows of `claim` are still leased with a quarter lease to spare.
    fn leased(&self, claim: &str) -> bool {
        let lease = self.inner.config.lease;
        self.held().get(claim).is_some_and(|t| t.elapsed() + lease / 4 < lease)
    }

    /// The rounds of [`Outbox::run`].
    async fn relay(&self, bus: Bus, stop: CancellationToken) {
        let _ = self.inner.peer.set(bus.peer().clone());
        let cfg = &self.inner.config;
        let mut gauges_at: Option<Instant> = None;
        let mut prune_at: Option<Instant> = None;
        // Capped at 1 s, so the relay is back within a second of the database.
        let mut failures = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut outages = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut settling = Settling::default();
        let mut stopped = Stopped::default();
        let mut ahead: Option<Batch> = None;
        while !stop.is_cancelled() {
            // Until the database is connected (and migrated, where that is automatic) there is
            // no table to read: wait quietly instead of logging failures.
            let connected = bus.is_connected();
            self.inner.metrics.paused.set(i64::from(!connected));
            let ready = connected && self.inner.db.is_available();
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
                None if ready => self.claim([settling.claim(), None]).await,
                None => Ok(Batch::default()),
            };
            match claimed {
                Ok(Batch { claim, rows, whole }) if !rows.is_empty() => {
                    failures.reset();
                    // Claiming ahead while publishing pays with a backlog, or once this process
                    // enqueued more; at a trickle it is a transaction per row that finds nothing.
                    let published = tokio::sync::Notify::new();
                    let publish = async {
                        let round = self.publish(&bus, rows, &stopped, &claim).await;
                        published.notify_one();
                        round
                    };
                    let claim_ahead = async {
                        if whole {
                            tokio::select! {
                                () = self.inner.wake.notified() => {}
                                () = published.notified() => return None,
                            }
                        }
                        if bus.is_connected() && !stop.is_cancelled() {
                            Some(self.claim([Some(claim.as_str()), settling.claim()]).await)
                        } else {
                            None
                        }
                    };
                    let (mut round, next) = tokio::join!(publish, claim_ahead);
                    settling.finish().await;
                    stopped.push(std::mem::take(&mut round.stopped));
                    let outage = round.outage.take();
                    if round.lapsed {
                        tracing::warn!(
                            "outbox leases could not be renewed in time; the rows they held were given back unpublished"
                        );
                    }
                    settling.start(self.clone(), claim, round);
                    if outage.is_none() {
                        outages.reset();
                    }
                    match next {
                        Some(Ok(batch)) if !batch.rows.is_empty() => {
                            if outage.is_none() {
                                ahead = Some(batch);
                                continue;
                            }
                            self.give_back(batch).await;
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "claiming outbox rows failed; trying again"),
                        _ => {}
                    }
                    if let Some(reason) = outage {
                        settling.finish().await;
                        stopped.clear();
                        if !self.pause(&bus, &stop, &reason, &mut outages).await {
                            break;
                        }
                        continue;
                    }
                    // This process enqueued rows as the publish ended: claim them now, the batch
                    // still being recorded.
                    if whole && woken(&self.inner.wake) {
                        continue;
                    }
                }
                Ok(_) => failures.reset(),
                Err(e) => {
                    // Every failure is retried; the first few and then every power of two logged.
                    if failures.attempts() < 3 || failures.attempts().is_power_of_two() {
                        tracing::warn!(error = %e, failures = failures.attempts() + 1, "claiming outbox rows failed; retrying");
                    }
                    let wait = failures.next_delay();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            }
            // Everything claimed is recorded now, so the table shows every failure.
            settling.finish().await;
            stopped.clear();
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(cfg.poll_interval) => {}
                () = self.inner.wake.notified() => {}
            }
        }
        settling.finish().await;
        if let Some(batch) = ahead {
            self.give_back(batch).await;
        }
    }

    /// Gives a claimed batch back untouched, so any relay can take it at once.
    async fn give_back(&self, batch: Batch) {
        let round = Round { released: batch.rows.iter().map(|r| r.seq).collect(), ..Round::default() };
        if let Err(e) = self.settle(&batch.claim, round).await {
            tracing::warn!(error = %e, "giving back claimed outbox rows failed; their leases will expire");
        }
        self.release(&batch.claim);
    }

    /// Waits, after a publish found the broker unreachable, until the bus says it is connected
    /// (at least one back-off step, so a connection that only looks up is not hammered).
    /// Returns `false` when `stop` fired.
    async fn pause(&self, bus: &Bus, stop: &CancellationToken, reason: &str, backoff: &mut Backoff) -> bool {
        let m = &self.inner.metrics;
        m.paused.set(1);
        let quiet = backoff.attempts() > 0;
        if !quiet {
            tracing::warn!(error = %reason, "the broker is unreachable; the outbox relay pauses (no attempt is spent)");
        }
        let started = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    m.paused.set(0);
                    return false;
                }
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            if bus.is_connected() {
                break;
            }
        }
        m.paused.set(0);
        if !quiet {
            tracing::info!(paused_for = ?started.elapsed(), "the bus is connected again; the outbox relay resumes");
        }
        true
    }

    fn next_claim(&self) -> String {
        format!("{}:{}", self.inner.relay_id, self.inner.claims.fetch_add(1, Ordering::Relaxed))
    }

    /// Claims up to `batch_size` rows under a new claim token: oldest first, every row that is
    /// not waiting and whose key has no waiting row. A waiting row is one leased by another
    /// claim (leases of `ours`, this relay's claims still being published or recorded, do not
    /// stop their keys) or held back until its next attempt. The rows of waiting keys are passed
    /// over in the database, so the batch fills with rows that can go (within the claim's span,
    /// see [`CLAIM_SPAN`]).
    async fn claim(&self, ours: [Option<&str>; 2]) -> Result<Batch, OutboxError> {
        let started = Instant::now();
        let db = &self.inner.db;
        let backend = db.backend();
        let cfg = &self.inner.config;
        let claim = self.next_claim();
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(cfg.lease.as_millis()).unwrap_or(i64::MAX));
        // MySQL: its default isolation's gap locks at the end of `keel_outbox` made a service's
        // transaction that enqueued before and after a claim deadlock with it. SQLite: the write
        // lock up front, so two claims wait for each other instead of failing.
        let mut tx = db.begin_read_committed().await?;
        // Claims take turns, so each one sees the leases the one before it committed.
        match backend {
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CLAIM_LOCK).execute(db.on(&mut *tx)).await?;
            }
            Backend::MySql => {
                sqlx::query("SELECT id FROM keel_outbox_lock WHERE id = 1 FOR UPDATE")
                    .fetch_optional(db.on(&mut *tx))
                    .await?;
            }
            Backend::Sqlite => {}
        }
        // The pending rows are walked in `seq` order through `(status, seq)` from the oldest,
        // over at most `CLAIM_SPAN × batch_size` sequence numbers (the bound on a claim's cost);
        // the waiting keys come from the small index of waiting rows (`locked_until > 0`).
        let oldest: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT MIN(seq) FROM keel_outbox WHERE status = {PENDING}")))
                .fetch_one(db.on(&mut *tx))
                .await?;
        let Some(oldest) = oldest else {
            tx.rollback().await?;
            self.inner.metrics.claim_duration.observe(started.elapsed().as_secs_f64());
            return Ok(Batch { claim, rows: Vec::new(), whole: true });
        };
        let last = oldest.saturating_add(i64::from(cfg.batch_size).saturating_mul(CLAIM_SPAN));
        let text = "SELECT seq FROM keel_outbox WHERE status = 0 AND seq >= $1 AND seq <= $2 AND locked_until <= $3 \
                    AND (partition_key IS NULL OR partition_key NOT IN (SELECT w.partition_key FROM keel_outbox w \
                    WHERE w.status = 0 AND w.locked_until > 0 AND w.locked_until > $4 AND w.partition_key IS NOT NULL \
                    AND (w.claim IS NULL OR w.claim NOT IN ($5, $6)))) ORDER BY seq LIMIT $7";
        let picked: Vec<i64> = sqlx::query(AssertSqlSafe(db.sql(text).into_owned()))
            .bind(oldest)
            .bind(last)
            .bind(now)
            .bind(now)
            .bind(ours[0].unwrap_or(""))
            .bind(ours[1].unwrap_or(""))
            .bind(i64::from(cfg.batch_size))
            .fetch_all(db.on(&mut *tx))
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        if picked.is_empty() {
            tx.rollback().await?;
            self.inner.metrics.claim_duration.observe(started.elapsed().as_secs_f64());
            return Ok(Batch { claim, rows: Vec::new(), whole: true });
        }
        let set =
            format!("UPDATE keel_outbox SET locked_until = $1, claim = $2 WHERE seq IN ({})", marks(3, picked.len()));
        let returning = " RETURNING seq, topic, partition_key, payload, attempts";
        let text = if backend == Backend::MySql { set } else { set + returning };
        let mut q = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned())).bind(until).bind(&claim);
        for seq in &picked {
            q = q.bind(*seq);
        }
        let fetched = if backend == Backend::MySql {
            // No RETURNING: read the leased rows back in the same transaction.
            q.execute(db.on(&mut *tx)).await?;
            let text = format!(
                "SELECT seq, topic, partition_key, payload, attempts FROM keel_outbox WHERE seq IN ({})",
                marks(1, picked.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned()));
            for seq in &picked {
                q = q.bind(*seq);
            }
            q.fetch_all(db.on(&mut *tx)).await?
        } else {
            q.fetch_all(db.on(&mut *tx)).await?
        };
        db.commit(tx).await?;
        self.held().insert(claim.clone(), started);
        let mut rows = fetched.iter().map(Claimed::from_row).collect::<Result<Vec<_>, sqlx::Error>>()?;
        // RETURNING has no order; per-key runs need it.
        rows.sort_unstable_by_key(|r| r.seq);
        self.inner.metrics.claim_duration.observe(started.elapsed().as_secs_f64());
        // The batch did not run out: every row it left in its span is leased or held back.
        let whole = picked.len() < cfg.batch_size as usize;
        Ok(Batch { claim, rows, whole })
    }

    /// Publishes claimed rows: rows with the same key one after another (stopping at the first
    /// failure, so order holds), everything else concurrently up to `max_in_flight`. Keys in
    /// `stopped` are not published (their earlier rows failed in a round not yet recorded), nor
    /// is any row once the lease of `claim` is no longer sure to hold.
    /// In a `send` span when the batch is traced (see [`batch_span`]).
    async fn publish(&self, bus: &Bus, rows: Vec<Claimed>, stopped: &Stopped, claim: &str) -> Round {
        // The batch's span needs every envelope's creation context before the first publish;
        // without an exporter each envelope is decoded just before its own publish instead, so
        // the first messages go out while the rest are decoded.
        let eager = keel_telemetry::exporting();
        let rows: Vec<Ready> = rows
            .into_iter()
            .map(|row| {
                let envelope = eager.then(|| Envelope::from_bytes(row.payload.as_bytes()));
                (row, envelope)
            })
            .collect();
        let span = batch_span(bus, &rows);
        let round = self.publish_rows(bus, rows, stopped, claim).instrument(span.clone()).await;
        if let Some(kind) = round.error {
            trace::fail(&span, kind);
        }
        round
    }

    async fn publish_rows(&self, bus: &Bus, rows: Vec<Ready>, stopped: &Stopped, claim: &str) -> Round {
        let mut chains: Vec<Vec<Ready>> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for row in rows {
            match row.0.key.clone() {
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
        let outage_seen = std::sync::atomic::AtomicBool::new(false);
        let outage_seen = &outage_seen;
        let results: Vec<Round> = futures_util::stream::iter(chains)
            .map(|chain| async move {
                let mut round = Round::default();
                let key = chain.first().and_then(|(r, _)| r.key.clone());
                if key.as_deref().is_some_and(|k| stopped.contains(k)) {
                    round.released.extend(chain.iter().map(|(r, _)| r.seq));
                    round.stopped.extend(key);
                    return round;
                }
                let mut rows = chain.into_iter();
                for (row, envelope) in rows.by_ref() {
                    if outage_seen.load(Ordering::Relaxed) {
                        round.released.push(row.seq);
                        round.stopped.extend(row.key);
                        break;
                    }
                    if !self.leased(claim) {
                        // Another relay may own the row by now: publishing it could overtake
                        // that relay's publish of the key's next rows.
                        round.lapsed = true;
                        round.released.push(row.seq);
                        round.stopped.extend(row.key);
                        break;
                    }
                    let envelope = envelope.unwrap_or_else(|| Envelope::from_bytes(row.payload.as_bytes()));
                    let published = match envelope {
                        Ok(env) => bus.publish_encoded(&row.topic, &env, row.payload.into_bytes()).await,
                        Err(e) => Err(BusError::Event(e)),
                    };
                    match published {
                        Ok(()) => round.sent.push(row.seq),
                        Err(e) if is_outage(&e) => {
                            outage_seen.store(true, Ordering::Relaxed);
                            round.error = round.error.or(Some(e.kind()));
                            round.outage = Some(sanitize(&e.to_string()));
                            round.released.push(row.seq);
                            round.stopped.extend(row.key);
                            break;
                        }
                        Err(e) => {
                            round.error = round.error.or(Some(e.kind()));
                            round.failed.push((row.seq, row.attempts, sanitize(&e.to_string())));
                            round.stopped.extend(row.key);
                            break;
                        }
                    }
                }
                round.released.extend(rows.map(|(r, _)| r.seq));
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
            all.stopped.extend(r.stopped);
            all.outage = all.outage.or(r.outage);
            all.lapsed |= r.lapsed;
            all.error = all.error.or(r.error);
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
            q.execute(db.exec()).await?;
            m.published.inc_by(chunk.len() as u64);
        }
        for (seq, attempts, error) in round.failed {
            let attempts = attempts.saturating_add(1);
            let dead = u32::try_from(attempts).unwrap_or(u32::MAX) >= cfg.max_attempts;
            let wait =
                super::redelivery(cfg.backoff_min, cfg.backoff_max).delay(u32::try_from(attempts).unwrap_or(u32::MAX));
            let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            let error: String = error.chars().take(1000).collect();
            let status = if dead { DEAD } else { PENDING };
            let sql = db.sql(
                "UPDATE keel_outbox SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4, \
                 locked_until = $5, claim = NULL WHERE seq = $6 AND claim = $7",
            );
            // Held back until its next attempt: `locked_until` in the future also stops the
            // key's later rows (see `claim`).
            sqlx::query(AssertSqlSafe(sql.into_owned()))
                .bind(status)
                .bind(attempts)
                .bind(next)
                .bind(&error)
                .bind(if dead { 0 } else { next })
                .bind(seq)
                .bind(claim)
                .execute(db.exec())
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
            q.execute(db.exec()).await?;
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
        .fetch_one(self.inner.db.exec())
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
        let rows = sqlx::query(AssertSqlSafe(sql.into_owned())).bind(limit).fetch_all(self.inner.db.exec()).await?;
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
            let mut tx = db.begin_read_committed().await?;
            let done = q.execute(db.on(&mut *tx)).await?;
            db.commit(tx).await?;
            done
        } else {
            q.execute(db.exec()).await?
        };
        Ok(done.rows_affected())
    }
}

/// A claimed row with its envelope, when decoded ahead of its publish (see
/// `Outbox::publish`).
type Ready = (Claimed, Option<Result<Envelope, EventError>>);

/// The relay's `send` span for a claimed batch, or none.
///
/// Made only while spans are exported and at least one message of the batch was created in a
/// sampled trace. The relay works outside any request, so there is no caller's sampling decision
/// to follow, and a span for a batch of messages nobody traces would be a trace nobody looks at
/// (and a cost on every batch). The span is the root of a trace of its own: the batch mixes
/// messages of many requests, each tied to it by a link to its creation context (with its
/// `messaging.message.id`, and its topic when the batch has several), not by a parent. Being a
/// root, it is sampled at `telemetry.sampling_ratio` (always, at the default 1.0).
fn batch_span(bus: &Bus, rows: &[Ready]) -> tracing::Span {
    if !keel_telemetry::exporting() {
        return tracing::Span::none();
    }
    let contexts: Vec<keel_telemetry::SpanContext> = rows
        .iter()
        .map(|(_, envelope)| match envelope {
            Some(Ok(env)) => trace::creation_context(env),
            _ => keel_telemetry::SpanContext::empty_context(),
        })
        .collect();
    if !contexts.iter().any(keel_telemetry::SpanContext::is_sampled) {
        return tracing::Span::none();
    }
    let first = rows.first().map(|(r, _)| r.topic.as_str());
    let destination = first.filter(|t| rows.iter().all(|(r, _)| r.topic == *t));
    let id = match rows {
        [(_, Some(Ok(env)))] => Some(env.id.as_str()),
        _ => None,
    };
    let send = trace::Sending { destination, id, batch: Some(rows.len()), producer: false };
    let span = trace::send_span(bus.peer(), &send);
    keel_telemetry::set_root(&span);
    // The sampled creation contexts first: a span keeps at most 128 links (the SDK's limit).
    for sampled in [true, false] {
        for ((row, envelope), cx) in rows.iter().zip(&contexts) {
            let Some(Ok(env)) = envelope else { continue };
            if cx.is_sampled() != sampled || !cx.is_valid() {
                continue;
            }
            let mut attributes = vec![("messaging.message.id", env.id.clone())];
            if destination.is_none() {
                attributes.push(("messaging.destination.name", row.topic.clone()));
            }
            keel_telemetry::add_link(&span, cx.clone(), attributes);
        }
    }
    span
}

/// The PostgreSQL advisory lock claims take turns on (`keel_ou` in ASCII).
const CLAIM_LOCK: i64 = 0x006b_6565_6c5f_6f75;

/// A claim walks the pending rows over at most this many times `batch_size` sequence numbers
/// from the oldest: it passes over that many rows of keys that wait (a relay's batches in
/// flight, a key held back after a failure with rows queued behind it) and still fills its
/// batch with other keys' rows, and its cost stays bounded however long the backlog.
const CLAIM_SPAN: i64 = 24;

/// Whether `wake` holds a wake-up, taking it.
fn woken(wake: &tokio::sync::Notify) -> bool {
    futures_util::FutureExt::now_or_never(wake.notified()).is_some()
}

/// `$from, $from+1, …` (n placeholders) for an `IN` list.
fn marks(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}
