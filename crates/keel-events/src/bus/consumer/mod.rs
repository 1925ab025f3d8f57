//! Consumers: a [`Handler`] per topic and consumer group, run with bounded concurrency, retries
//! with backoff, then the dead-letter queue.
//!
//! * **Outcomes**: a handler returns `Ok(())`, [`Failure::retry`] (optionally after a delay),
//!   [`Failure::permanent`] or [`Failure::unavailable`]. Retries back off exponentially
//!   (`retry_initial` doubling up to `retry_max`, ±10 % jitter); after `max_attempts` deliveries,
//!   or on a permanent failure, the message goes to `<topic>.dlq` with the reason and attempt
//!   count. A panicking handler, or one past `handler_timeout`, is a retry, not a lost message.
//! * **Attempts count only failures of the message itself.** A failure that says a dependency is
//!   unavailable ([`Failure::unavailable`], or any error [`Failure::transient`] recognises: the
//!   database or Redis known down, a connection error, a pool timeout, an open breaker) spends
//!   no attempt: the message is held unsettled and the consumer **pauses** (takes no new
//!   message) until the dependency is back, then runs the handler again with the same attempt
//!   number. The consumer also pauses, before taking a message, while a [`Dependency`] it waits
//!   for ([`Consumer::depends_on`]; the inbox database always) reports itself down. While
//!   paused it polls every `pause_poll`, so work resumes within a second of the dependency.
//!   The pause is logged once when it starts and once when it ends, counted in
//!   `consumer_paused` / `consumer_pauses_total`, and reported by the readiness check as
//!   degraded. Before the consumer first takes messages, a dependency still coming up (the
//!   inbox database connecting at start-up) is being waited for instead: logged at INFO, not
//!   counted in `consumer_pauses_total`, and the readiness check is down (`waiting: …`). A
//!   broker it cannot subscribe to yet is logged at INFO for its first 30 s, then WARN.
//! * **Paused by hand**: [`Consumer::control`] gives a [`ConsumerControl`] whose `pause` stops
//!   the consumer taking messages (handlers running finish and settle) until `resume`; it is a
//!   pause like a dependency's (logged, counted, readiness degraded with the reason given).
//! * **Idempotent by default** (with [`Consumer::inbox`]): the message id is recorded in the
//!   `keel_inbox` table in the same transaction as the handler's writes ([`Message::tx`]), so a
//!   redelivery (a crash between commit and ack, a broker redelivering) is acknowledged without
//!   running the handler again.
//! * **Tracing**: the handler runs in a `process <topic>` span (kind CONSUMER, OpenTelemetry's
//!   messaging conventions) whose parent is the message's creation context (its `traceparent`:
//!   the outbox's `create` span, or the producer's span), which it also links to as the
//!   conventions ask, with the producer's `request_id` on every log line.
//! * **Graceful stop**: when the stop token fires, no more messages are fetched; in-flight
//!   handlers finish and their messages are settled, held messages are handed back unsettled
//!   (their next delivery counts one attempt); then [`Consumer::run`] returns.
//!
//! ```
//! use keel_events::{Bus, Consumer, Envelope, Failure, Message};
//!
//! struct Notify;
//! impl keel_events::Handler for Notify {
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
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::ConsumerMetrics;
use super::{Bus, Delivery, Envelope, Event, SubscribeOptions};
use keel_health::{CheckFuture, HealthCheck, Kind, Outcome, sanitize};

mod dependency;
mod failure;
mod handler;
mod health;
mod options;
mod pause;

#[cfg(feature = "sql")]
use dependency::Named;
pub use dependency::{Dependency, FnDependency, dependency_fn};
pub use failure::{Failure, is_unavailable};
pub use handler::{FnHandler, Handler, Message, handler_fn};
pub use health::ConsumerCheck;
use health::{Status, SubState};
pub use options::ConsumerOptions;
pub use pause::ConsumerControl;
use pause::{Held, STARTUP_WAIT};

/// A consumer: see the module docs.
pub struct Consumer<H> {
    bus: Bus,
    topic: String,
    group: String,
    handler: Arc<H>,
    options: ConsumerOptions,
    #[cfg(feature = "sql")]
    inbox: Option<keel_data::Db>,
    /// What the handler needs: no message is taken while one is down.
    dependencies: Vec<Arc<dyn Dependency>>,
    held: Held,
    control: ConsumerControl,
    metrics: Option<ConsumerMetrics>,
    state: Arc<SubState>,
    /// Called whenever readiness changes (subscribed, paused, resumed), so it need not wait
    /// for the check's interval.
    on_subscribed: Vec<Arc<dyn Fn() + Send + Sync>>,
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
            dependencies: Vec::new(),
            held: Held::default(),
            control: ConsumerControl::default(),
            metrics: None,
            state: Arc::new(SubState::default()),
            on_subscribed: Vec::new(),
        }
    }

    /// Sets the options.
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Records processed message ids in `db`'s `keel_inbox` table (see [`super::outbox::migrations`]),
    /// in the handler's transaction: redeliveries are acknowledged without effect. The consumer
    /// waits for `db` (as the dependency `inbox database`): it takes no message while `db` is
    /// known to be down.
    #[cfg(feature = "sql")]
    pub fn inbox(mut self, db: keel_data::Db) -> Self {
        self.dependencies.push(Arc::new(Named { name: "inbox database", dep: db.clone() }));
        self.inbox = Some(db);
        self
    }

    /// Waits for `dependency`: while it reports itself down the consumer takes no message
    /// (messages stay with the broker, unconsumed) and spends no attempt.
    ///
    /// ```
    /// # fn demo(bus: keel_events::Bus, smtp_is_up: fn() -> bool) {
    /// use keel_events::consumer::{dependency_fn, handler_fn};
    /// let consumer = keel_events::Consumer::new(bus, "joins", "mailer", handler_fn(|_env| async { Ok(()) }))
    ///     .depends_on(dependency_fn("smtp", smtp_is_up));
    /// # let _ = consumer;
    /// # }
    /// ```
    pub fn depends_on(mut self, dependency: impl Dependency) -> Self {
        self.dependencies.push(Arc::new(dependency));
        self
    }

    /// Counts messages, handling time, lag and pauses in `metrics` (Setup does this for the
    /// consumers it runs).
    pub fn with_metrics(mut self, metrics: ConsumerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs `f` each time the readiness this consumer reports changes: subscribed (again, after
    /// a lost connection), paused, resumed. Setup uses it to refresh readiness at once; each call
    /// adds one more callback.
    pub fn on_subscribed(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_subscribed.push(Arc::new(f));
        self
    }

    /// The handle that pauses and resumes this consumer by hand ([`ConsumerControl`]).
    pub fn control(&self) -> ConsumerControl {
        self.control.clone()
    }

    /// The bus it consumes from.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The topic it consumes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// `<topic>:<group>`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.topic, self.group)
    }

    /// The readiness check `consumer:<topic>:<group>` (required when `bus.required` is): down
    /// until the subscription exists, with
    /// the reason it could not be made; degraded while the consumer is paused (it will resume by
    /// itself, and the missing dependency has its own check), so a pause alone does not take
    /// the service out of rotation.
    pub fn readiness_check(&self) -> ConsumerCheck {
        ConsumerCheck {
            name: format!("consumer:{}:{}", self.topic, self.group),
            state: self.state.clone(),
            required: self.bus.is_required(),
        }
    }

    /// Subscribes (retrying with backoff until `stop`) and handles messages until `stop` fires;
    /// then finishes the messages in flight and returns.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let mut lag_at: Option<Instant> = None;
        #[cfg(feature = "sql")]
        let mut prune_at: Option<Instant> = None;
        // Capped at 1 s, so a consumer subscribes again within a second of the broker's return.
        let mut backoff = keel_resilience::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        // When the current pause began; kept across re-subscriptions.
        let mut paused: Option<Instant> = None;
        let (began, mut subscribed_once) = (Instant::now(), false);
        // Whether it has taken messages since it started: before, a dependency still down is
        // being waited for (INFO), not a pause (WARN, `consumer_pauses_total`).
        let mut taking_once = false;
        loop {
            let mut sub = match this.bus.subscribe(&this.topic, &this.group, &this.options.subscribe).await {
                Ok(s) => s,
                Err(e) => {
                    let reason = sanitize(&e.to_string());
                    if backoff.attempts() < 3 || backoff.attempts().is_power_of_two() {
                        // Before the first subscription, during start-up, the broker is being
                        // waited for: not worth a WARN yet.
                        if subscribed_once || began.elapsed() >= STARTUP_WAIT {
                            tracing::warn!(topic = %this.topic, group = %this.group, error = %reason, "cannot subscribe yet; retrying");
                        } else {
                            tracing::info!(topic = %this.topic, group = %this.group, reason = %reason, "waiting for the bus to subscribe");
                        }
                    }
                    this.state.set(Status::Down(reason));
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            subscribed_once = true;
            // Subscribed first, so the group's queue or durable consumer exists and keeps what is
            // published meanwhile; no message is taken while a dependency is down (the pause
            // below), so none is taken before the inbox database is ready.
            // A dependency down now is recorded as a wait (or pause) the loop below ends when it
            // is back, even if it is back before the loop looks again.
            match this.pause_reason() {
                Some(reason) => this.wait_for(reason, &mut paused, taking_once || this.control.paused().is_some()),
                None => this.state.set(Status::Up),
            }
            this.changed();
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
                if let Some(reason) = this.pause_reason() {
                    // An operator's pause is never the start-up wait: readiness stays degraded.
                    this.wait_for(reason, &mut paused, taking_once || this.control.paused().is_some());
                    tokio::select! {
                        () = stop.cancelled() => break false,
                        () = this.control.woken() => continue,
                        () = tokio::time::sleep(this.options.pause_poll) => continue,
                    }
                }
                if let Some(since) = paused.take() {
                    this.resume(since.elapsed(), !taking_once);
                }
                taking_once = true;
                let permit = tokio::select! {
                    () = stop.cancelled() => break false,
                    () = this.held.wake.notified() => continue,
                    () = this.control.woken() => continue,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break false },
                };
                // One timer per idle stretch, not one per message: it only has to wake the loop
                // for the lag gauge and the inbox pruning when no message comes.
                let next = tokio::select! {
                    biased;
                    () = stop.cancelled() => break false,
                    // A handler found a dependency down: take nothing more until it is back.
                    () = this.held.wake.notified() => continue,
                    // An operator paused it: take nothing more.
                    () = this.control.woken() => continue,
                    d = sub.next() => d,
                    () = &mut idle => {
                        idle.as_mut().reset(tokio::time::Instant::now() + this.options.lag_interval);
                        continue;
                    }
                };
                match next {
                    Some(Ok(delivery)) => {
                        let (this, stop) = (this.clone(), stop.clone());
                        // In the current span: a service's messages keep its log scope (Group).
                        in_flight.spawn(
                            async move {
                                this.process(delivery, &stop).await;
                                drop(permit);
                            }
                            .in_current_span(),
                        );
                    }
                    // A fan-out subscription's broker side is ephemeral and may be gone (NATS deletes
                    // an idle ephemeral consumer): make a new one rather than wait on a dead one.
                    Some(Err(e)) if this.options.subscribe.fan_out => {
                        tracing::warn!(topic = %this.topic, group = %this.group, error = %e, "receiving failed");
                        break true;
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
                break;
            }
            this.state.set(Status::Down("the subscription ended; subscribing again".into()));
            tracing::warn!(topic = %this.topic, group = %this.group, "subscription ended; subscribing again");
        }
        // A stopped consumer is not a paused one.
        if paused.is_some()
            && let Some(m) = &this.metrics
        {
            m.set_paused(&this.topic, &this.group, false);
        }
    }

    async fn record_lag(&self) {
        let Some(m) = &self.metrics else { return };
        if self.options.subscribe.fan_out {
            // Its queue is its own and renamed on every subscription: no group lag to report.
            return;
        }
        match self.bus.partition_lag(&self.topic, &self.group).await {
            Ok(lag) => m.lag(&self.topic, &self.group, &lag),
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
            sqlx::query(sqlx::AssertSqlSafe(sql.into_owned())).bind(&self.group).bind(cutoff).execute(db.exec()).await
        {
            tracing::warn!(error = %e, "pruning the inbox failed");
        }
    }

    async fn process(&self, delivery: Delivery, stop: &CancellationToken) {
        let (span, attempt) = match delivery.envelope() {
            Ok(env) => {
                let peer = self.bus.peer();
                // Made for every message, exported or not: its fields are on the handler's lines.
                let span = tracing::info_span!(
                    "consume",
                    otel.name = format!("process {}", self.topic),
                    otel.kind = "consumer",
                    otel.status_code = tracing::field::Empty,
                    messaging.system = peer.system,
                    "messaging.operation.type" = "process",
                    messaging.operation.name = "process",
                    messaging.destination.name = %self.topic,
                    messaging.consumer.group.name = %self.group,
                    messaging.message.id = %env.id,
                    server.address = peer.address.as_deref(),
                    server.port = peer.port(),
                    event.r#type = %env.ty,
                    attempt = i64::from(delivery.attempt()),
                    request_id = env.request_id.as_deref(),
                    "error.type" = tracing::field::Empty,
                );
                if let Some(tp) = &env.traceparent {
                    // One message: its creation context is the parent (the trace stays whole), and
                    // also a link, the conventions' way of tying a process span to its message.
                    let cx = keel_telemetry::context_from_traceparent(tp, env.tracestate.as_deref());
                    if keel_telemetry::exporting() {
                        keel_telemetry::add_link(&span, super::trace::creation_context(env), []);
                    }
                    keel_telemetry::set_parent(&span, cx);
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
            // Taken just as a dependency went down: held without running the handler.
            let mut result = if self.dependency_down() {
                self.count("unavailable");
                Err(Failure::unavailable("a dependency is unavailable"))
            } else {
                self.run_handler(&delivery).await
            };
            if let Err(Failure::Unavailable { reason }) = &result {
                let reason = reason.clone();
                match self.hold(&delivery, &reason, stop).await {
                    Some(r) => result = r,
                    None => {
                        // Stopping: dropped unsettled, the broker delivers it again.
                        tracing::info!(attempt, "stopping while the message waits for a dependency; handing it back");
                        return;
                    }
                }
            }
            // `hold` returns no `Unavailable`; were one to get here it would be a plain retry.
            let result = result.map_err(|f| match f {
                Failure::Unavailable { reason } => Failure::retry(reason),
                f => f,
            });
            // Failed, unless merely early within `order_wait` (nothing failed: it is retried).
            if let Err(f) = &result
                && !(matches!(f, Failure::Early { .. }) && self.within_order_wait(&delivery))
            {
                super::trace::fail(&tracing::Span::current(), f.kind());
            }
            let settled = match result {
                Ok(()) => {
                    self.count("ok");
                    delivery.ack().await
                }
                Err(Failure::Early { reason }) if self.within_order_wait(&delivery) => {
                    tracing::debug!(reason = %reason, attempt, retry_in = ?self.options.order_retry, "message early; will retry");
                    self.count("early");
                    delivery.retry(self.options.order_retry).await
                }
                Err(Failure::Early { reason }) if attempt < self.options.max_attempts => {
                    let delay = super::redelivery(self.options.retry_initial, self.options.retry_max).delay(attempt);
                    tracing::warn!(reason = %reason, attempt, retry_in = ?delay, "message still early past order_wait; will retry");
                    self.count("retry");
                    delivery.retry(delay).await
                }
                Err(Failure::Retry { reason, after }) if attempt < self.options.max_attempts => {
                    let delay = after.unwrap_or_else(|| {
                        super::redelivery(self.options.retry_initial, self.options.retry_max).delay(attempt)
                    });
                    tracing::warn!(error = %reason, attempt, retry_in = ?delay, "handler failed; will retry");
                    self.count("retry");
                    delivery.retry(delay).await
                }
                Err(failure) => {
                    let reason = match &failure {
                        Failure::Retry { reason, .. } | Failure::Unavailable { reason } => {
                            format!("gave up after {attempt} attempts: {reason}")
                        }
                        Failure::Early { reason } => {
                            format!("still early {:?} after it was published: {reason}", self.options.order_wait)
                        }
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

    /// Whether the delivery's message was published less than `order_wait` ago (its
    /// envelope's `time`); an unreadable time counts as past it.
    fn within_order_wait(&self, delivery: &Delivery) -> bool {
        let Ok(env) = delivery.envelope() else { return false };
        let Ok(published) = humantime::parse_rfc3339_weak(&env.time) else { return false };
        std::time::SystemTime::now().duration_since(published).is_ok_and(|age| age < self.options.order_wait)
            // A clock a little behind the producer's: just published.
            || published > std::time::SystemTime::now()
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.message(&self.topic, &self.group, outcome);
        }
    }

    /// [`Self::handle`], timed; an `Unavailable` outcome is counted here (the others once settled).
    async fn run_handler(&self, delivery: &Delivery) -> Result<(), Failure> {
        let started = Instant::now();
        let result = self.handle(delivery).await;
        if let Some(m) = &self.metrics {
            m.duration(&self.topic, &self.group, started.elapsed());
        }
        // A retry while a dependency the consumer waits for is down is most likely caused by it
        // (a handler that maps every error to a retry): it spends no attempt either.
        let result = match result {
            Err(Failure::Retry { reason, .. }) if self.dependency_down() => Err(Failure::Unavailable { reason }),
            r => r,
        };
        if let Err(Failure::Unavailable { reason }) = &result {
            tracing::debug!(reason = %sanitize(reason), "a dependency is unavailable; holding the message");
            self.count("unavailable");
        }
        result
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
            let mut tx = db.begin_write().await.map_err(|e| Failure::transient(&e))?;
            let sql = db.sql(match db.backend() {
                keel_data::Backend::Postgres => {
                    "INSERT INTO keel_inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                }
                keel_data::Backend::MySql => {
                    "INSERT IGNORE INTO keel_inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, $3)"
                }
                keel_data::Backend::Sqlite => {
                    "INSERT OR IGNORE INTO keel_inbox (consumer_group, message_id, processed_at) VALUES ($1, $2, $3)"
                }
            });
            let inserted = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                .bind(&self.group)
                .bind(&envelope.id)
                .bind(super::now_ms())
                .execute(db.on(&mut *tx))
                .await
                .map_err(|e| Failure::transient(&keel_data::DataError::from(e)))?;
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
        if let (Some(tx), Some(db)) = (msg.tx.take(), &self.inbox) {
            return match result {
                Ok(()) => db.commit(tx).await.map_err(|e| Failure::transient(&e)),
                Err(f) => Err(f), // dropping the transaction rolls it back
            };
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use keel_telemetry::Metrics;

    /// Counts log events by message.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<String>>>);

    impl Logs {
        fn count(&self, prefix: &str) -> usize {
            self.0.lock().unwrap().iter().filter(|m| m.starts_with(prefix)).count()
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logs {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }

    fn metric(metrics: &Metrics, name: &str) -> i64 {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as i64)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A dependency ("store") goes down while messages arrive. With `registered`, the consumer
    /// waits for it; without, only the handler's `Failure::unavailable` says so. Either way
    /// nothing is dead-lettered even with one attempt allowed, every message is handled once
    /// at attempt 1 after the store is back, and the pause is visible in metrics and logged once.
    async fn waits_out_an_outage(registered: bool) {
        let logs = Logs::default();
        let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
        // Tests run side by side with other subscribers (or none): recompute which callsites
        // are enabled now that this one is in place.
        tracing::callsite::rebuild_interest_cache();
        let up = Arc::new(AtomicBool::new(true));
        let handled: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
        let calls_while_down = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (u, h, c) = (up.clone(), handled.clone(), calls_while_down.clone());
        let handler = handler_fn(move |env: Envelope| {
            let (u, h, c) = (u.clone(), h.clone(), c.clone());
            async move {
                if !u.load(Ordering::SeqCst) {
                    c.fetch_add(1, Ordering::SeqCst);
                    return Err(Failure::unavailable("store down"));
                }
                h.lock().unwrap().push((env.id, 0));
                Ok::<_, Failure>(())
            }
        });
        // `handler_fn` does not see the attempt: record it through a wrapper.
        struct Attempts<H>(H, Arc<Mutex<Vec<(String, u32)>>>);
        impl<H: Handler> Handler for Attempts<H> {
            async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
                let r = self.0.handle(msg).await;
                if r.is_ok()
                    && let Some(last) = self.1.lock().unwrap().last_mut()
                {
                    last.1 = msg.attempt();
                }
                r
            }
        }
        let bus = Bus::in_process(1000);
        let metrics = Metrics::new();
        let options = ConsumerOptions::default()
            .max_attempts(1)
            .concurrency(1)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
            .pause_poll(Duration::from_millis(20));
        let mut consumer = Consumer::new(bus.clone(), "store", "writer", Attempts(handler, handled.clone()))
            .options(options)
            .with_metrics(ConsumerMetrics::new(&metrics).unwrap());
        if registered {
            let flag = up.clone();
            consumer = consumer.depends_on(dependency_fn("store", move || flag.load(Ordering::SeqCst)));
        }
        let check = consumer.readiness_check();
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer.run(stop.clone()));
        let publish = |n: usize| {
            let bus = bus.clone();
            async move {
                bus.publish("store", &Envelope::raw("test", "thing", 1, serde_json::json!({ "n": n }))).await.unwrap();
            }
        };

        publish(0).await;
        until("the first message", || handled.lock().unwrap().len() == 1).await;
        up.store(false, Ordering::SeqCst);
        for n in 1..=20 {
            publish(n).await;
        }
        let paused = "consumer_paused{group=\"writer\",topic=\"store\"}";
        until("the pause", || metric(&metrics, paused) == 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(metric(&metrics, paused), 1, "still paused while the store is down");
        assert!(matches!(check.check().await, Outcome::Degraded(r) if r.contains("paused")), "degraded, not down");
        assert!(bus.dlq_list("store", 10).await.unwrap().is_empty(), "nothing dead-lettered during the outage");
        if registered {
            assert_eq!(calls_while_down.load(Ordering::SeqCst), 0, "no message taken while the store is known down");
        } else {
            // One message held and probed; the rest wait with the broker.
            assert!(bus.lag("store", "writer").await.unwrap() >= 19);
        }

        up.store(true, Ordering::SeqCst);
        until("every message", || handled.lock().unwrap().len() == 21).await;
        until("the resume", || metric(&metrics, paused) == 0).await;
        assert_eq!(check.check().await, Outcome::Up);
        let handled = handled.lock().unwrap().clone();
        let ids: std::collections::HashSet<_> = handled.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids.len(), 21, "each message handled exactly once");
        assert!(handled.iter().all(|(_, a)| *a == 1), "no attempt spent: {handled:?}");
        assert!(bus.dlq_list("store", 10).await.unwrap().is_empty());
        assert_eq!(metric(&metrics, "consumer_pauses_total{group=\"writer\",topic=\"store\"}"), 1);
        assert_eq!(metric(&metrics, "consumer_messages_total{group=\"writer\",outcome=\"retry\""), 0);
        assert_eq!(metric(&metrics, "consumer_messages_total{group=\"writer\",outcome=\"dead\""), 0);
        assert_eq!(logs.count("consumer paused"), 1, "the pause is logged once: {:?}", logs.0.lock().unwrap());
        assert_eq!(logs.count("consumer resumed"), 1, "the resume is logged once");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_registered_dependency_down_pauses_without_spending_attempts() {
        waits_out_an_outage(true).await;
    }

    #[tokio::test]
    async fn a_handler_reporting_unavailable_holds_the_message_without_spending_attempts() {
        waits_out_an_outage(false).await;
    }

    /// A dependency down when the consumer subscribes and back before the consumer looks again:
    /// readiness must follow it up, not stay on `waiting`.
    #[tokio::test]
    async fn a_dependency_back_right_after_subscribing_makes_it_ready() {
        let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(Logs::default()));
        let bus = Bus::in_process(10);
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = asked.clone();
        // Down on the first question only: the subscription sees it down, the loop sees it up.
        let dep = dependency_fn("store", move || a.fetch_add(1, Ordering::SeqCst) > 0);
        let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = handled.clone();
        let handler = handler_fn(move |_env: Envelope| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Failure>(())
            }
        });
        let consumer = Consumer::new(bus.clone(), "quick", "g", handler)
            .options(ConsumerOptions::default().pause_poll(Duration::from_millis(20)))
            .depends_on(dep);
        let check = consumer.readiness_check();
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer.run(stop.clone()));
        until("the dependency asked twice", || asked.load(Ordering::SeqCst) >= 2).await;
        bus.publish("quick", &Envelope::raw("test", "thing", 1, serde_json::json!({}))).await.unwrap();
        until("the message", || handled.load(Ordering::SeqCst) == 1).await;
        assert_eq!(check.check().await, Outcome::Up, "ready once the dependency is back");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_held_message_is_handed_back_on_stop_not_dead_lettered() {
        let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(Logs::default()));
        let bus = Bus::in_process(10);
        let handler = handler_fn(|_env: Envelope| async { Err::<(), _>(Failure::unavailable("never back")) });
        let options = ConsumerOptions::default().max_attempts(1).pause_poll(Duration::from_millis(20));
        let stop = CancellationToken::new();
        let task = tokio::spawn(Consumer::new(bus.clone(), "held", "g", handler).options(options).run(stop.clone()));
        let mut sub_check = None;
        for _ in 0..3 {
            if bus.publish("held", &Envelope::raw("test", "thing", 1, serde_json::json!({}))).await.is_ok() {
                sub_check = Some(());
                break;
            }
        }
        assert!(sub_check.is_some());
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops while holding").unwrap();
        assert!(bus.dlq_list("held", 10).await.unwrap().is_empty());
        // Handed back: the next subscriber of the group gets it.
        let mut sub = bus.subscribe("held", "g", &SubscribeOptions::default()).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(2), sub.next()).await.unwrap().unwrap().unwrap();
        d.ack().await.unwrap();
    }

    #[test]
    fn failures_are_classified() {
        #[derive(Debug, thiserror::Error)]
        #[error("loading the user failed")]
        struct Wrapped(#[source] std::io::Error);

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_unavailable(&refused));
        assert!(matches!(Failure::from(Wrapped(refused)), Failure::Unavailable { .. }), "found in the source chain");
        assert!(matches!(Failure::from(super::super::BusError::Unavailable("x".into())), Failure::Unavailable { .. }));
        assert!(matches!(Failure::from(std::io::Error::other("bad input")), Failure::Retry { .. }));
        assert!(matches!(Failure::from(super::super::BusError::Full("t".into())), Failure::Retry { .. }));
        #[cfg(feature = "sql")]
        {
            use keel_data::DataError;
            assert!(matches!(
                Failure::from(DataError::Unavailable { reason: "x".into() }),
                Failure::Unavailable { .. }
            ));
            assert!(matches!(Failure::from(DataError::AcquireTimeout), Failure::Unavailable { .. }));
            assert!(matches!(Failure::from(DataError::Sql(sqlx::Error::PoolTimedOut)), Failure::Unavailable { .. }));
            assert!(matches!(Failure::from(sqlx::Error::PoolClosed), Failure::Unavailable { .. }));
            assert!(matches!(Failure::from(DataError::Sql(sqlx::Error::RowNotFound)), Failure::Retry { .. }));
        }
    }

    #[test]
    fn default_retries_outlast_a_half_hour_outage() {
        let o = ConsumerOptions::default();
        // The shortest schedule jitter can make: every wait at 90 % of its base.
        let shortest: f64 = (1..o.max_attempts)
            .map(|attempt| {
                let factor = 2f64.powi(i32::try_from(attempt - 1).unwrap());
                (o.retry_initial.as_secs_f64() * factor).clamp(o.retry_initial.as_secs_f64(), o.retry_max.as_secs_f64())
                    * 0.9
            })
            .sum();
        assert!(shortest > 30.0 * 60.0, "{shortest} s");
        assert!(o.pause_poll <= Duration::from_millis(250));
    }

    /// An operator's pause: nothing is taken while it lasts (the messages wait with the broker,
    /// none is dead-lettered), readiness is degraded with the reason, and after the resume every
    /// message is handled once.
    #[tokio::test]
    async fn an_operator_pause_takes_nothing_until_resumed() {
        let bus = Bus::in_process(100);
        let metrics = Metrics::new();
        let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = handled.clone();
        let handler = handler_fn(move |_env: Envelope| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<(), Failure>(())
            }
        });
        let consumer = Consumer::new(bus.clone(), "orders", "billing", handler)
            .options(ConsumerOptions::default().pause_poll(Duration::from_millis(20)))
            .with_metrics(ConsumerMetrics::new(&metrics).unwrap());
        let (control, check) = (consumer.control(), consumer.readiness_check());
        assert_eq!((consumer.topic(), consumer.group()), ("orders", "billing"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer.run(stop.clone()));
        let publish = |n: usize| {
            let bus = bus.clone();
            async move {
                bus.publish("orders", &Envelope::raw("test", "order", 1, serde_json::json!({ "n": n }))).await.unwrap();
            }
        };
        publish(0).await;
        until("the first message", || handled.load(Ordering::SeqCst) == 1).await;

        // Paused while idle, waiting on the subscription: the next message is not taken.
        assert!(control.pause("incident 42\n"));
        assert!(!control.pause("again"), "already paused");
        let paused = "consumer_paused{group=\"billing\",topic=\"orders\"}";
        until("the pause", || metric(&metrics, paused) == 1).await;
        for n in 1..=5 {
            publish(n).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(handled.load(Ordering::SeqCst), 1, "nothing taken while paused");
        assert_eq!(bus.lag("orders", "billing").await.unwrap(), 5, "they wait with the broker");
        match check.check().await {
            Outcome::Degraded(r) => assert!(r.contains("paused by an operator: again"), "{r}"),
            other => panic!("degraded while paused, got {other:?}"),
        }
        assert_eq!(control.paused().as_deref(), Some("again"));

        assert!(control.resume());
        assert!(!control.resume(), "already running");
        until("every message", || handled.load(Ordering::SeqCst) == 6).await;
        until("the resume", || metric(&metrics, paused) == 0).await;
        assert_eq!(check.check().await, Outcome::Up);
        assert!(bus.dlq_list("orders", 10).await.unwrap().is_empty());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
