//! Consumers: a [`Handler`] per topic and consumer group, run with bounded concurrency, retries
//! with backoff, then the dead-letter queue.
//!
//! * **Outcomes**: a handler returns `Ok(())`, [`Failure::retry`] (optionally after a delay) or
//!   [`Failure::permanent`]. Retries back off exponentially (`retry_initial` doubling up to
//!   `retry_max`, ±10 % jitter); after `max_attempts` deliveries, or on a permanent failure, the
//!   message goes to `<topic>.dlq` with the reason and attempt count. A panicking handler, or one
//!   past `handler_timeout`, is a retry, not a lost message.
//! * **Idempotent by default** (with [`Consumer::inbox`]): the message id is recorded in the
//!   `keel_inbox` table in the same transaction as the handler's writes ([`Message::tx`]), so a
//!   redelivery (a crash between commit and ack, a broker redelivering) is acknowledged without
//!   running the handler again.
//! * **Tracing**: the handler runs in a `consume <topic>` span whose parent is the producer's
//!   `traceparent`, with the producer's `request_id` on every log line.
//! * **Graceful stop**: when the stop token fires, no more messages are fetched; in-flight
//!   handlers finish and their messages are settled; then [`Consumer::run`] returns.
//!
//! ```
//! use keel::events::{Bus, Consumer, Envelope, Failure, Message};
//!
//! struct Notify;
//! impl keel::events::Handler for Notify {
//!     async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
//!         let env = msg.envelope();
//!         tracing::info!(id = %env.id, "notifying");
//!         Ok(())
//!     }
//! }
//! # async fn demo() {
//! let bus = Bus::in_process(100);
//! let stop = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(Consumer::new(bus, "joins", "notifier", Notify).run(stop));
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::ConsumerMetrics;
use super::{Bus, Delivery, Envelope, Event, SubscribeOptions};
use crate::health::{CheckFuture, HealthCheck, Kind, Outcome, sanitize};

/// Why a handler did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Try again (after `after`, or the consumer's backoff) until `max_attempts`.
    Retry {
        /// What went wrong.
        reason: String,
        /// Wait at least this long.
        after: Option<Duration>,
    },
    /// Trying again cannot help: straight to the DLQ.
    Permanent {
        /// What went wrong.
        reason: String,
    },
}

impl Failure {
    /// A transient failure: retried with backoff.
    pub fn retry(reason: impl Display) -> Self {
        Self::Retry { reason: reason.to_string(), after: None }
    }
    /// A transient failure to retry no sooner than `after`.
    pub fn retry_after(reason: impl Display, after: Duration) -> Self {
        Self::Retry { reason: reason.to_string(), after: Some(after) }
    }
    /// A failure that no retry can fix: dead-lettered at once.
    pub fn permanent(reason: impl Display) -> Self {
        Self::Permanent { reason: reason.to_string() }
    }
    fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. } | Self::Permanent { reason } => reason,
        }
    }
}

/// Any error is a transient failure, so `?` works in handlers.
impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::retry(e)
    }
}

/// What a handler gets: the envelope, the attempt, and (with an inbox) the transaction its
/// writes must use to be applied exactly once.
pub struct Message {
    envelope: Envelope,
    attempt: u32,
    #[cfg(feature = "sql")]
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").field("id", &self.envelope.id).field("attempt", &self.attempt).finish_non_exhaustive()
    }
}

impl Message {
    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The payload as `E`; a wrong type, version or shape is a permanent failure.
    pub fn decode<E: Event>(&self) -> Result<E, Failure> {
        self.envelope.decode().map_err(Failure::permanent)
    }

    /// Which delivery this is (1 the first time).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The inbox transaction: writes made with it commit together with the "processed" mark.
    /// `None` when the consumer has no inbox.
    #[cfg(feature = "sql")]
    pub fn tx(&mut self) -> Option<&mut sqlx::Transaction<'static, sqlx::Any>> {
        self.tx.as_mut()
    }
}

/// Handles messages of one topic for one group.
///
/// Implement it with `async fn handle(&self, msg: &mut Message) -> Result<(), Failure>`; for a
/// closure over the envelope use [`handler_fn`].
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    fn handle(&self, msg: &mut Message) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A handler from a closure taking the envelope (no access to the inbox transaction).
///
/// ```
/// let h = keel::events::consumer::handler_fn(|env: keel::events::Envelope| async move {
///     tracing::info!(ty = %env.ty, "got");
///     Ok(())
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    FnHandler(f)
}

/// See [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    fn handle(&self, msg: &mut Message) -> impl Future<Output = Result<(), Failure>> + Send {
        (self.0)(msg.envelope.clone())
    }
}

/// How a consumer runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Handlers running at once. Default `8`.
    pub concurrency: usize,
    /// Deliveries before a failing message is dead-lettered. Default `5`.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt. Default `1s`.
    pub retry_initial: Duration,
    /// Largest retry delay. Default `5m`.
    pub retry_max: Duration,
    /// A handler still running after this is abandoned and retried. Default `30s`.
    pub handler_timeout: Duration,
    /// How often consumer lag is read from the broker. Default `15s`.
    pub lag_interval: Duration,
    /// Inbox rows older than this are pruned (a redelivery later than that is not recognised).
    /// Default `7d`.
    pub inbox_retention: Duration,
    /// Broker subscription settings.
    pub subscribe: SubscribeOptions,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            handler_timeout: Duration::from_secs(30),
            lag_interval: Duration::from_secs(15),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            subscribe: SubscribeOptions::default(),
        }
    }
}

impl ConsumerOptions {
    /// Sets the concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the attempts before the DLQ (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets the retry backoff bounds.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }
    /// Sets the handler timeout.
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }
    /// Sets the broker subscription settings.
    pub fn subscribe(mut self, s: SubscribeOptions) -> Self {
        self.subscribe = s;
        self
    }
}

/// A consumer: see the module docs.
pub struct Consumer<H> {
    bus: Bus,
    topic: String,
    group: String,
    handler: Arc<H>,
    options: ConsumerOptions,
    #[cfg(feature = "sql")]
    inbox: Option<crate::data::Db>,
    metrics: Option<ConsumerMetrics>,
    state: Arc<SubState>,
    /// Called whenever the subscription is (re)made, so readiness need not wait for its interval.
    on_subscribed: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("topic", &self.topic).field("group", &self.group).finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    /// A consumer of `topic` in group `group`.
    pub fn new(bus: Bus, topic: impl Into<String>, group: impl Into<String>, handler: H) -> Self {
        Self {
            bus,
            topic: topic.into(),
            group: group.into(),
            handler: Arc::new(handler),
            options: ConsumerOptions::default(),
            #[cfg(feature = "sql")]
            inbox: None,
            metrics: None,
            state: Arc::new(SubState::default()),
            on_subscribed: None,
        }
    }

    /// Sets the options.
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Records processed message ids in `db`'s `keel_inbox` table (see [`super::outbox::schema`]),
    /// in the handler's transaction: redeliveries are acknowledged without effect.
    #[cfg(feature = "sql")]
    pub fn inbox(mut self, db: crate::data::Db) -> Self {
        self.inbox = Some(db);
        self
    }

    /// Runs `f` each time the subscription is made (Setup uses it to refresh readiness at once).
    pub(crate) fn on_subscribed(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_subscribed = Some(Arc::new(f));
        self
    }

    /// `<topic>:<group>`.
    pub(crate) fn describe(&self) -> String {
        format!("{}:{}", self.topic, self.group)
    }

    /// Counts messages, handling time and lag in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: ConsumerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The readiness check `consumer:<topic>:<group>`: down until the subscription exists, with
    /// the reason it could not be made.
    pub fn readiness_check(&self) -> ConsumerCheck {
        ConsumerCheck { name: format!("consumer:{}:{}", self.topic, self.group), state: self.state.clone() }
    }

    /// Subscribes (retrying with backoff until `stop`) and handles messages until `stop` fires;
    /// then finishes the messages in flight and returns.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let mut lag_at: Option<Instant> = None;
        #[cfg(feature = "sql")]
        let mut prune_at: Option<Instant> = None;
        let mut backoff = crate::resilience::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let mut sub = match this.bus.subscribe(&this.topic, &this.group, &this.options.subscribe).await {
                Ok(s) => s,
                Err(e) => {
                    let reason = sanitize(&e.to_string());
                    if backoff.attempts() < 3 || backoff.attempts().is_power_of_two() {
                        tracing::warn!(topic = %this.topic, group = %this.group, error = %reason, "cannot subscribe yet; retrying");
                    }
                    this.state.set_down(reason);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            // Subscribed first, so the group's queue or durable consumer exists and keeps what is
            // published meanwhile; but every message needs the inbox, so none is taken before
            // its database is ready.
            #[cfg(feature = "sql")]
            if let Some(db) = &this.inbox {
                while !db.is_available() {
                    this.state.set_down("waiting for the inbox database".into());
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
            this.state.set_up();
            if let Some(f) = &this.on_subscribed {
                f();
            }
            tracing::info!(topic = %this.topic, group = %this.group, "consumer subscribed");
            let permits = Arc::new(Semaphore::new(this.options.concurrency));
            let idle = tokio::time::sleep(this.options.lag_interval);
            tokio::pin!(idle);
            let mut in_flight = JoinSet::new();
            let ended = loop {
                while in_flight.try_join_next().is_some() {}
                if lag_at.is_none_or(|t| t.elapsed() >= this.options.lag_interval) {
                    lag_at = Some(Instant::now());
                    this.record_lag().await;
                }
                #[cfg(feature = "sql")]
                if prune_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                    prune_at = Some(Instant::now());
                    this.prune_inbox().await;
                }
                let permit = tokio::select! {
                    () = stop.cancelled() => break false,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break false },
                };
                // One timer per idle stretch, not one per message: it only has to wake the loop
                // for the lag gauge and the inbox pruning when no message comes.
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => break false,
                    d = sub.next() => d,
                    () = &mut idle => {
                        idle.as_mut().reset(tokio::time::Instant::now() + this.options.lag_interval);
                        continue;
                    }
                };
                match next {
                    Some(Ok(delivery)) => {
                        let this = this.clone();
                        in_flight.spawn(async move {
                            this.process(delivery).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic = %this.topic, group = %this.group, error = %e, "receiving failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None => break true,
                }
            };
            // Settling needs the subscription's connection: keep it until every handler is done.
            while in_flight.join_next().await.is_some() {}
            drop(sub);
            if !ended || stop.is_cancelled() {
                return;
            }
            this.state.set_down("the subscription ended; subscribing again".into());
            tracing::warn!(topic = %this.topic, group = %this.group, "subscription ended; subscribing again");
        }
    }

    async fn record_lag(&self) {
        let Some(m) = &self.metrics else { return };
        match self.bus.lag(&self.topic, &self.group).await {
            Ok(n) => m.lag(&self.topic, &self.group, n),
            Err(e) => tracing::debug!(error = %e, "cannot read consumer lag"),
        }
    }

    #[cfg(feature = "sql")]
    async fn prune_inbox(&self) {
        let Some(db) = &self.inbox else { return };
        if !db.is_available() {
            return;
        }
        let cutoff = super::now_ms() - i64::try_from(self.options.inbox_retention.as_millis()).unwrap_or(i64::MAX);
        let sql = db.sql("DELETE FROM keel_inbox WHERE consumer_group = $1 AND processed_at < $2");
        if let Err(e) =
            sqlx::query(sqlx::AssertSqlSafe(sql.into_owned())).bind(&self.group).bind(cutoff).execute(db.pool()).await
        {
            tracing::warn!(error = %e, "pruning the inbox failed");
        }
    }

    async fn process(&self, delivery: Delivery) {
        let (span, attempt) = match delivery.envelope() {
            Ok(env) => {
                let span = tracing::info_span!(
                    "consume",
                    otel.name = format!("{} process", self.topic),
                    otel.kind = "consumer",
                    messaging.system = %self.bus.backend(),
                    messaging.destination.name = %self.topic,
                    messaging.consumer.group.name = %self.group,
                    messaging.message.id = %env.id,
                    event.r#type = %env.ty,
                    attempt = delivery.attempt(),
                    request_id = env.request_id.as_deref(),
                );
                if let Some(tp) = &env.traceparent {
                    crate::telemetry::set_parent(
                        &span,
                        crate::telemetry::context_from_traceparent(tp, env.tracestate.as_deref()),
                    );
                }
                (span, delivery.attempt())
            }
            Err(e) => {
                tracing::error!(topic = %self.topic, group = %self.group, error = %e, "undecodable message; dead-lettering");
                self.count("dead");
                if let Err(e) = delivery.dead_letter(&self.group, "undecodable message").await {
                    tracing::error!(error = %e, "dead-lettering failed; the message will be redelivered");
                }
                return;
            }
        };
        async move {
            let started = Instant::now();
            let result = self.handle(&delivery).await;
            if let Some(m) = &self.metrics {
                m.duration(&self.topic, &self.group, started.elapsed());
            }
            let settled = match result {
                Ok(()) => {
                    self.count("ok");
                    delivery.ack().await
                }
                Err(Failure::Retry { reason, after }) if attempt < self.options.max_attempts => {
                    let delay = after
                        .unwrap_or_else(|| super::backoff(attempt, self.options.retry_initial, self.options.retry_max));
                    tracing::warn!(error = %reason, attempt, retry_in = ?delay, "handler failed; will retry");
                    self.count("retry");
                    delivery.retry(delay).await
                }
                Err(failure) => {
                    let reason = match &failure {
                        Failure::Retry { reason, .. } => format!("gave up after {attempt} attempts: {reason}"),
                        Failure::Permanent { reason } => format!("permanent failure: {reason}"),
                    };
                    tracing::error!(error = %failure.reason(), attempt, "handler failed for good; dead-lettering");
                    self.count("dead");
                    delivery.dead_letter(&self.group, &reason).await
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "settling the message failed; the broker will redeliver it");
            }
        }
        .instrument(span)
        .await;
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.message(&self.topic, &self.group, outcome);
        }
    }

    /// Runs the handler (in the inbox transaction when there is one), bounded and panic-safe.
    async fn handle(&self, delivery: &Delivery) -> Result<(), Failure> {
        let Ok(envelope) = delivery.envelope() else { return Err(Failure::permanent("undecodable message")) };
        let mut msg = Message {
            envelope: envelope.clone(),
            attempt: delivery.attempt(),
            #[cfg(feature = "sql")]
            tx: None,
        };
        #[cfg(feature = "sql")]
        if let Some(db) = &self.inbox {
            let mut tx = db.begin().await.map_err(Failure::retry)?;
            let sql = db.sql(match db.backend() {
                crate::data::Backend::Postgres => {
                    "INSERT INTO keel_inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                }
                crate::data::Backend::MySql => {
                    "INSERT IGNORE INTO keel_inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, $3)"
                }
                crate::data::Backend::Sqlite => {
                    "INSERT OR IGNORE INTO keel_inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, $3)"
                }
            });
            let inserted = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                .bind(&self.group)
                .bind(&envelope.id)
                .bind(super::now_ms())
                .execute(&mut *tx)
                .await
                .map_err(Failure::retry)?;
            if inserted.rows_affected() == 0 {
                tracing::info!("already processed (inbox); acknowledging without handling again");
                return Ok(());
            }
            msg.tx = Some(tx);
        }
        let run = AssertUnwindSafe(self.handler.handle(&mut msg)).catch_unwind();
        let result = match tokio::time::timeout(self.options.handler_timeout, run).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Failure::retry("the handler panicked")),
            Err(_) => {
                Err(Failure::retry(format!("the handler did not finish within {:?}", self.options.handler_timeout)))
            }
        };
        #[cfg(feature = "sql")]
        if let Some(tx) = msg.tx.take() {
            return match result {
                Ok(()) => tx.commit().await.map_err(Failure::retry),
                Err(f) => Err(f), // dropping the transaction rolls it back
            };
        }
        result
    }
}

/// Whether the subscription exists, and if not why.
#[derive(Debug)]
struct SubState(std::sync::Mutex<Result<(), String>>);

impl Default for SubState {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Err("not subscribed yet".into())))
    }
}

impl SubState {
    fn set(&self, v: Result<(), String>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = v;
    }
    fn set_up(&self) {
        self.set(Ok(()));
    }
    fn set_down(&self, reason: String) {
        self.set(Err(reason));
    }
    fn get(&self) -> Result<(), String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A consumer's readiness check.
#[derive(Debug, Clone)]
pub struct ConsumerCheck {
    name: String,
    state: Arc<SubState>,
}

impl HealthCheck for ConsumerCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> Kind {
        Kind::Readiness
    }
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            match self.state.get() {
                Ok(()) => Outcome::Up,
                Err(reason) => Outcome::Down(format!("not subscribed: {reason}")),
            }
        })
    }
}
