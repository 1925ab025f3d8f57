//! The bus, its backends, consumers and the outbox (feature `events`); see the crate docs.

pub mod consumer;
mod envelope;
mod in_process;
#[cfg(feature = "kafka")]
mod kafka;
pub(crate) mod metrics;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "sql")]
pub mod outbox;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub(crate) use crate::config::memory_bus_name;
use crate::config::{BusBackend, BusConfig};
pub use consumer::{Consumer, ConsumerControl, ConsumerOptions, Dependency, Failure, Handler, Message};
pub use envelope::{Envelope, Event};
pub use metrics::ConsumerMetrics;

use keel_health::connect::{ConnectTracker, ConnectionCheck, Connects, Phase};
use keel_health::{CheckFuture, Outcome, sanitize};

/// An event could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// Serialization failed.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// The bytes or `data` are not what was expected.
    #[error("cannot decode event: {0}")]
    Decode(String),
}

/// A bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Not connected (yet, or any more); the reason says why.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The broker did not confirm in time.
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// The broker could route the message nowhere (RabbitMQ `NO_ROUTE`): not published.
    #[error("unroutable: no queue is bound for topic {0}")]
    Unroutable(String),
    /// The broker refused the message (negative confirm).
    #[error("the broker refused the message: {0}")]
    Rejected(String),
    /// The in-process bus is full (`bus.capacity`).
    #[error("topic {0} is full")]
    Full(String),
    /// A topic or group name the brokers cannot take.
    #[error("invalid name {0:?}: use 1-100 characters of [A-Za-z0-9_-] separated by dots")]
    InvalidName(String),
    /// The configuration cannot be used.
    #[error("bus configuration: {0}")]
    Config(String),
    /// The broker returned an error.
    #[error("broker error: {0}")]
    Broker(String),
    /// The event could not be encoded.
    #[error(transparent)]
    Event(#[from] EventError),
}

impl BusError {
    /// The kind of failure, as a `send` span's `error.type` says it: `unavailable`, `timeout`,
    /// `unroutable`, `rejected`, `full`, `invalid_name`, `config`, `broker`, `event`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Unroutable(_) => "unroutable",
            Self::Rejected(_) => "rejected",
            Self::Full(_) => "full",
            Self::InvalidName(_) => "invalid_name",
            Self::Config(_) => "config",
            Self::Broker(_) => "broker",
            Self::Event(_) => "event",
        }
    }
}

/// A consumer group's lag on a topic ([`Bus::partition_lag`]): messages not handled yet, per
/// partition (`None` on a broker without partitions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lag {
    /// Each partition and its lag, by partition.
    pub partitions: Vec<(Option<i32>, u64)>,
}

impl Lag {
    /// The lag summed over the partitions.
    pub fn total(&self) -> u64 {
        self.partitions.iter().map(|(_, n)| n).sum()
    }
}

/// A message that failed for good, kept in `<topic>.dlq`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// The event.
    pub envelope: Envelope,
    /// The consumer group that gave up on it (a replay goes back to this group only).
    pub group: String,
    /// Why (the handler's last error, sanitized).
    pub reason: String,
    /// Deliveries made before giving up.
    pub attempts: u32,
}

/// Checks a topic or group name: dots separate words of `[A-Za-z0-9_-]`, so every backend can
/// use it in subjects, stream, exchange and queue names.
pub fn validate_name(name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .split('.')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        && !name.ends_with(".dlq");
    if ok { Ok(()) } else { Err(BusError::InvalidName(name.to_owned())) }
}

/// In-process brokers shared by name (`bus.url: memory://<name>`), so several services in one
/// process can talk over one bus. Held weakly: a broker lives while a bus uses it.
static NAMED_BROKERS: std::sync::Mutex<Vec<(String, std::sync::Weak<in_process::Broker>)>> =
    std::sync::Mutex::new(Vec::new());

fn in_process_broker(url: Option<&str>, capacity: usize) -> Arc<in_process::Broker> {
    let Some(name) = url.and_then(memory_bus_name) else {
        return in_process::Broker::new(capacity);
    };
    let mut named = NAMED_BROKERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    named.retain(|(_, b)| b.strong_count() > 0);
    if let Some(b) = named.iter().find(|(n, _)| n == name).and_then(|(_, b)| b.upgrade()) {
        return b;
    }
    let b = in_process::Broker::new(capacity);
    named.push((name.to_owned(), Arc::downgrade(&b)));
    b
}

/// The connected backend.
enum Conn {
    InProcess(Arc<in_process::Broker>),
    #[cfg(feature = "nats")]
    Nats(Box<nats::Conn>),
    #[cfg(feature = "rabbitmq")]
    Rabbit(Arc<rabbitmq::Conn>),
    #[cfg(feature = "kafka")]
    Kafka(Arc<kafka::Conn>),
}

struct Inner {
    config: BusConfig,
    url: Option<String>,
    conn: OnceCell<Conn>,
    connect: ConnectTracker,
    /// The broker as messaging spans name it.
    peer: trace::Peer,
}

/// A service's message bus. Cheap to clone; connects in the background (see [`Bus::connect`]).
///
/// ```
/// # async fn demo() -> Result<(), keel_events::BusError> {
/// use keel_events::{Bus, Envelope};
///
/// let bus = Bus::in_process(1000);
/// let mut sub = bus.subscribe("joins", "notifier", &Default::default()).await?;
/// bus.publish("joins", &Envelope::raw("joins", "join.created", 1, serde_json::json!({"id": 1}))).await?;
/// let delivery = sub.next().await.unwrap()?;
/// assert_eq!(delivery.envelope().unwrap().ty, "join.created");
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("backend", &self.inner.config.backend).finish_non_exhaustive()
    }
}

/// How a subscription is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Messages delivered but not settled at once (broker prefetch). Default `64`.
    pub prefetch: u16,
    /// A delivery not settled within this is redelivered by the broker (NATS `ack_wait`).
    /// Default `30s`.
    pub ack_wait: Duration,
    /// Fan-out: this subscriber gets every message of the topic, shared with no one, from the
    /// moment it subscribes; nothing is kept for it once it is gone. For state that every
    /// instance of a service keeps for itself (revoked sessions, caches). Default `false`: a
    /// durable consumer group.
    pub fan_out: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self { prefetch: 64, ack_wait: Duration::from_secs(30), fan_out: false }
    }
}

impl SubscribeOptions {
    /// Sets the prefetch.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }
    /// Sets the ack wait.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    /// Makes the subscription a per-subscriber fan-out (see [`SubscribeOptions::fan_out`]).
    pub fn fan_out(mut self) -> Self {
        self.fan_out = true;
        self
    }
}

/// How long the broker keeps a fan-out subscriber's queue or consumer after the subscriber is
/// gone (a crashed instance leaves nothing behind for longer than this).
#[cfg(any(feature = "nats", feature = "rabbitmq"))]
const FAN_OUT_EXPIRY: Duration = Duration::from_secs(60);

impl Bus {
    /// A bus for `config`, not connected yet. For `nats`, `rabbitmq` and `kafka` the URL is
    /// required.
    pub fn new(config: &BusConfig) -> Result<Self, BusError> {
        let url = config.url.as_ref().map(|u| u.expose().to_owned());
        match config.backend {
            BusBackend::InProcess => {}
            #[cfg(feature = "nats")]
            BusBackend::Nats if url.is_some() => {}
            #[cfg(feature = "rabbitmq")]
            BusBackend::Rabbitmq if url.is_some() => {}
            #[cfg(feature = "kafka")]
            BusBackend::Kafka if url.is_some() => {}
            #[cfg(feature = "kafka")]
            BusBackend::Kafka => return Err(BusError::Config("bus.url is required for the kafka backend".into())),
            #[cfg(feature = "nats")]
            BusBackend::Nats => return Err(BusError::Config("bus.url is required for the nats backend".into())),
            #[cfg(feature = "rabbitmq")]
            BusBackend::Rabbitmq => {
                return Err(BusError::Config("bus.url is required for the rabbitmq backend".into()));
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(BusError::Config(format!(
                    "bus.backend {other}: this build does not include it (cargo feature `{other}`)"
                )));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                peer: trace::Peer::of(config.backend, url.as_deref()),
                config: config.clone(),
                url,
                conn: OnceCell::new(),
                connect: ConnectTracker::new("bus", config.connect.clone()),
            }),
        })
    }

    /// A connected in-process bus holding up to `capacity` messages per topic and group.
    pub fn in_process(capacity: usize) -> Self {
        let config = BusConfig { capacity, ..BusConfig::default() };
        let inner = Inner {
            conn: OnceCell::new_with(Some(Conn::InProcess(in_process::Broker::new(capacity)))),
            url: None,
            connect: ConnectTracker::new("bus", config.connect.clone()),
            peer: trace::Peer::of(config.backend, None),
            config,
        };
        inner.connect.set(Phase::Connected);
        Self { inner: Arc::new(inner) }
    }

    /// Connects now (one attempt, bounded by `bus.connect.attempt_timeout`).
    pub async fn connect(&self) -> Result<(), BusError> {
        let timeout = self.inner.config.connect.attempt_timeout;
        match tokio::time::timeout(timeout, self.try_connect()).await {
            Ok(r) => r,
            Err(_) => Err(BusError::Unavailable(format!("no connection within {timeout:?}"))),
        }
    }

    async fn try_connect(&self) -> Result<(), BusError> {
        let inner = &self.inner;
        inner
            .conn
            .get_or_try_init(|| async {
                let conn = match inner.config.backend {
                    #[cfg(feature = "nats")]
                    BusBackend::Nats => {
                        Conn::Nats(Box::new(nats::Conn::connect(inner.url.as_deref().unwrap_or_default()).await?))
                    }
                    #[cfg(feature = "rabbitmq")]
                    BusBackend::Rabbitmq => {
                        Conn::Rabbit(rabbitmq::Conn::connect(inner.url.as_deref().unwrap_or_default()).await?)
                    }
                    #[cfg(feature = "kafka")]
                    BusBackend::Kafka => Conn::Kafka(
                        kafka::Conn::connect(inner.url.as_deref().unwrap_or_default(), &inner.config).await?,
                    ),
                    _ => Conn::InProcess(in_process_broker(inner.url.as_deref(), inner.config.capacity)),
                };
                Ok::<_, BusError>(conn)
            })
            .await?;
        inner.connect.set(Phase::Connected);
        Ok(())
    }

    /// Connects with backoff (`bus.connect.*`) until connected or `stop`; what `Setup::bus` runs.
    pub async fn connect_in_background(self, stop: CancellationToken) {
        let attempts = self
            .inner
            .connect
            .connect(
                &stop,
                || async { self.try_connect().await.map_err(|e| ("connect", sanitize(&e.to_string()))) },
                |_| {},
            )
            .await;
        if let Some(n) = attempts {
            tracing::info!(backend = %self.inner.config.backend, attempts = n, "bus connected");
        }
    }

    fn conn(&self) -> Result<&Conn, BusError> {
        self.inner.conn.get().ok_or_else(|| BusError::Unavailable(self.inner.connect.reason()))
    }

    /// The backend.
    pub fn backend(&self) -> BusBackend {
        self.inner.config.backend
    }

    /// The broker as messaging spans name it.
    pub(crate) fn peer(&self) -> &trace::Peer {
        &self.inner.peer
    }

    /// Whether readiness requires the broker (`bus.required`).
    pub fn is_required(&self) -> bool {
        self.inner.config.required
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        match self.inner.conn.get() {
            None => false,
            Some(Conn::InProcess(_)) => true,
            #[cfg(feature = "nats")]
            Some(Conn::Nats(c)) => c.is_connected(),
            #[cfg(feature = "rabbitmq")]
            Some(Conn::Rabbit(c)) => c.is_connected(),
            #[cfg(feature = "kafka")]
            Some(Conn::Kafka(c)) => c.is_connected(),
        }
    }

    /// Publishes `envelope` to `topic` and waits for the broker's confirmation (bounded by
    /// `bus.publish_timeout`). `Ok` means the broker has it stored: a durable stream (NATS), a
    /// queue (RabbitMQ, `mandatory`, so an unroutable message is [`BusError::Unroutable`]), or
    /// every group's in-process queue.
    ///
    /// While spans are exported and the current span is sampled, the publish is a `send {topic}`
    /// span under the current span. An envelope stamped under the current span (as
    /// [`Envelope::new`] stamps it), or with no trace context, goes out with that span's context
    /// as its creation context (the span is then a PRODUCER); one that carries another context
    /// keeps it, and the span (a CLIENT) links to it.
    pub async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<(), BusError> {
        if !keel_telemetry::is_traced() {
            let payload = envelope.to_bytes()?;
            return self.publish_encoded(topic, envelope, payload).await;
        }
        let here = keel_telemetry::span_context(&tracing::Span::current());
        let custom = trace::custom_context(envelope, &here);
        let send = trace::Sending {
            destination: Some(topic),
            id: Some(&envelope.id),
            batch: None,
            producer: custom.is_none(),
        };
        let span = trace::send_span(self.peer(), &send);
        let stamped;
        let envelope = match custom {
            Some(linked) => {
                keel_telemetry::add_link(&span, linked, []);
                envelope
            }
            None => {
                let mut own = envelope.clone();
                trace::stamp(&mut own, &span);
                stamped = own;
                &stamped
            }
        };
        let result = async {
            let payload = envelope.to_bytes()?;
            self.publish_encoded(topic, envelope, payload).await
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &result {
            trace::fail(&span, e.kind());
        }
        result
    }

    /// [`Bus::publish`] for an envelope already in wire form (the outbox stores it so).
    pub(crate) async fn publish_encoded(
        &self,
        topic: &str,
        envelope: &Envelope,
        payload: Vec<u8>,
    ) -> Result<(), BusError> {
        validate_name(topic)?;
        let topic = &*self.namespaced(topic);
        let timeout = self.inner.config.publish_timeout;
        let work = async {
            match self.conn()? {
                Conn::InProcess(b) => b.publish(topic, envelope, None),
                #[cfg(feature = "nats")]
                Conn::Nats(c) => c.publish(topic, envelope, payload, None).await,
                #[cfg(feature = "rabbitmq")]
                Conn::Rabbit(c) => c.publish(topic, envelope, payload, None).await,
                #[cfg(feature = "kafka")]
                Conn::Kafka(c) => c.publish(topic, envelope, payload, None).await,
            }
        };
        #[cfg(not(any(feature = "nats", feature = "rabbitmq", feature = "kafka")))]
        let _ = payload;
        tokio::time::timeout(timeout, work).await.map_err(|_| BusError::Timeout(timeout))?
    }

    /// Subscribes to `topic` as consumer group `group`: every group gets every message; within a
    /// group, subscribers share the messages. Creates the stream / exchange / queues if needed;
    /// a failure here is an error, never a silently idle subscriber.
    ///
    /// With [`SubscribeOptions::fan_out`] the subscription is a group of its own, named
    /// `<group>.<random suffix>`: it sees every message published after it subscribed, and the
    /// broker drops its queue (RabbitMQ, non-durable, expiring) or consumer (NATS, ephemeral) a
    /// minute after it is gone. On the in-process bus it never takes the backlog kept for the
    /// first durable group.
    pub async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: &SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        validate_name(topic)?;
        validate_name(group)?;
        let group = if options.fan_out {
            format!("{group}.{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
        } else {
            group.to_owned()
        };
        let topic = &*self.namespaced(topic);
        let inner = match self.conn()? {
            Conn::InProcess(b) => SubInner::InProcess(b.subscribe(topic, &group, options.fan_out)),
            #[cfg(feature = "nats")]
            Conn::Nats(c) => SubInner::Nats(Box::new(c.subscribe(topic, &group, options).await?)),
            #[cfg(feature = "rabbitmq")]
            Conn::Rabbit(c) => SubInner::Rabbit(Box::new(c.subscribe(topic, &group, options).await?)),
            #[cfg(feature = "kafka")]
            Conn::Kafka(c) => SubInner::Kafka(Box::new(c.subscribe(topic, &group, options).await?)),
        };
        Ok(Subscription { inner, group })
    }

    /// Messages of `group` on `topic` not handled yet (consumer lag), as the broker counts them:
    /// not delivered yet, and delivered but not settled, waiting out a retry's delay included
    /// (NATS: pending and ack-pending; RabbitMQ: the group's queue and its retry queue; Kafka:
    /// end offsets minus committed offsets). The sum of [`Bus::partition_lag`].
    pub async fn lag(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        Ok(self.partition_lag(topic, group).await?.total())
    }

    /// [`Bus::lag`] per partition: one entry per partition of the topic on Kafka, a single
    /// entry without a partition on the brokers that have none.
    pub async fn partition_lag(&self, topic: &str, group: &str) -> Result<Lag, BusError> {
        let topic = &*self.namespaced(topic);
        let whole = |n: u64| Lag { partitions: vec![(None, n)] };
        match self.conn()? {
            Conn::InProcess(b) => Ok(whole(b.lag(topic, group))),
            #[cfg(feature = "nats")]
            Conn::Nats(c) => c.lag(topic, group).await.map(whole),
            #[cfg(feature = "rabbitmq")]
            Conn::Rabbit(c) => c.lag(topic, group).await.map(whole),
            #[cfg(feature = "kafka")]
            Conn::Kafka(c) => c.lag(topic, group).await,
        }
    }

    /// Up to `limit` dead letters of `topic`, oldest first, without removing them.
    pub async fn dlq_list(&self, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        validate_name(topic)?;
        let topic = &*self.namespaced(topic);
        match self.conn()? {
            Conn::InProcess(b) => Ok(b.dlq_list(topic, limit)),
            #[cfg(feature = "nats")]
            Conn::Nats(c) => c.dlq_list(topic, limit).await,
            #[cfg(feature = "rabbitmq")]
            Conn::Rabbit(c) => c.dlq_list(topic, limit).await,
            #[cfg(feature = "kafka")]
            Conn::Kafka(c) => c.dlq_list(topic, limit).await,
        }
    }

    /// Moves dead letters of `topic` (all, or only the one with event id `id`) back to the group
    /// that gave up on them, with a fresh attempt count. Returns how many were replayed.
    pub async fn dlq_replay(&self, topic: &str, id: Option<&str>) -> Result<usize, BusError> {
        validate_name(topic)?;
        let topic = &*self.namespaced(topic);
        match self.conn()? {
            Conn::InProcess(b) => b.dlq_replay(topic, id),
            #[cfg(feature = "nats")]
            Conn::Nats(c) => c.dlq_replay(topic, id).await,
            #[cfg(feature = "rabbitmq")]
            Conn::Rabbit(c) => c.dlq_replay(topic, id).await,
            #[cfg(feature = "kafka")]
            Conn::Kafka(c) => c.dlq_replay(topic, id).await,
        }
    }

    /// Deletes the dead letter of `topic` with event id `id` without replaying it (a poison
    /// message an operator gave up on). Returns how many were removed (0 when none has that id).
    pub async fn dlq_discard(&self, topic: &str, id: &str) -> Result<usize, BusError> {
        validate_name(topic)?;
        let topic = &*self.namespaced(topic);
        match self.conn()? {
            Conn::InProcess(b) => Ok(b.dlq_discard(topic, id)),
            #[cfg(feature = "nats")]
            Conn::Nats(c) => c.dlq_discard(topic, id).await,
            #[cfg(feature = "rabbitmq")]
            Conn::Rabbit(c) => c.dlq_discard(topic, id).await,
            #[cfg(feature = "kafka")]
            Conn::Kafka(c) => c.dlq_discard(topic, id).await,
        }
    }

    /// Deletes the dead letters of `topic`. Returns how many.
    pub async fn dlq_purge(&self, topic: &str) -> Result<usize, BusError> {
        validate_name(topic)?;
        let topic = &*self.namespaced(topic);
        match self.conn()? {
            Conn::InProcess(b) => Ok(b.dlq_purge(topic)),
            #[cfg(feature = "nats")]
            Conn::Nats(c) => c.dlq_purge(topic).await,
            #[cfg(feature = "rabbitmq")]
            Conn::Rabbit(c) => c.dlq_purge(topic).await,
            #[cfg(feature = "kafka")]
            Conn::Kafka(c) => c.dlq_purge(topic).await,
        }
    }

    /// `topic` as named on the broker: under `bus.namespace` when one is set.
    fn namespaced<'a>(&self, topic: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.inner.config.namespace {
            Some(ns) => std::borrow::Cow::Owned(format!("{ns}.{topic}")),
            None => std::borrow::Cow::Borrowed(topic),
        }
    }

    /// Closes the broker connection (at the end of shutdown).
    pub async fn close(&self) {
        match self.inner.conn.get() {
            #[cfg(feature = "nats")]
            Some(Conn::Nats(c)) => c.close().await,
            #[cfg(feature = "rabbitmq")]
            Some(Conn::Rabbit(c)) => c.close().await,
            #[cfg(feature = "kafka")]
            Some(Conn::Kafka(c)) => c.close().await,
            _ => {}
        }
    }

    /// The readiness check `bus`: down while the broker is unreachable, with the reason.
    pub fn readiness_check(&self) -> BusCheck {
        ConnectionCheck::readiness(self.clone())
    }

    /// The startup check `bus_connect`: down once `bus.connect.max_elapsed` passed unconnected.
    pub fn startup_check(&self) -> BusCheck {
        ConnectionCheck::startup(self.clone())
    }
}

/// The bus's readiness or startup check.
pub type BusCheck = ConnectionCheck<Bus>;

impl Connects for Bus {
    const READINESS: &'static str = "bus";
    const STARTUP: &'static str = "bus_connect";
    fn connection(&self) -> &ConnectTracker {
        &self.inner.connect
    }
    fn required(&self) -> bool {
        self.inner.config.required
    }
    fn ready(&self) -> CheckFuture<'_> {
        // An idle service never publishes, so nothing else would reconnect a lost RabbitMQ
        // connection: readiness would stay down, keeping away the traffic that could reconnect it.
        #[cfg(feature = "rabbitmq")]
        if let Some(Conn::Rabbit(c)) = self.inner.conn.get()
            && !c.is_connected()
        {
            let c = c.clone();
            return Box::pin(async move {
                if c.redial().await {
                    Outcome::Up
                } else {
                    Outcome::Down("rabbitmq connection lost; reconnecting".to_owned())
                }
            });
        }
        let outcome = if self.is_connected() {
            Outcome::Up
        } else if self.inner.conn.get().is_some() {
            Outcome::Down(format!("{} connection lost; reconnecting", self.backend()))
        } else {
            Outcome::Down(self.inner.connect.reason())
        };
        Box::pin(std::future::ready(outcome))
    }
}

enum SubInner {
    InProcess(in_process::Subscription),
    #[cfg(feature = "nats")]
    Nats(Box<nats::Subscription>),
    #[cfg(feature = "rabbitmq")]
    Rabbit(Box<rabbitmq::Subscription>),
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::Subscription>),
}

/// A consumer group's stream of deliveries.
pub struct Subscription {
    inner: SubInner,
    group: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("group", &self.group).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The group as the broker knows it (with its suffix, for a fan-out subscription).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next delivery; `None` when the subscription ended (connection closed for good). A
    /// delivery for another group (a targeted DLQ replay) is settled here and skipped.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        loop {
            let d = match &mut self.inner {
                SubInner::InProcess(s) => s.next().await.map(Ok),
                #[cfg(feature = "nats")]
                SubInner::Nats(s) => s.next().await,
                #[cfg(feature = "rabbitmq")]
                SubInner::Rabbit(s) => s.next().await,
                #[cfg(feature = "kafka")]
                SubInner::Kafka(s) => s.next().await,
            };
            match d {
                Some(Ok(d)) if d.replay_group.as_deref().is_some_and(|g| g != self.group) => {
                    // Replayed for another group: not ours to handle again.
                    if let Err(e) = d.ack().await {
                        return Some(Err(e));
                    }
                }
                other => return other,
            }
        }
    }
}

/// How a delivery is settled with its backend.
enum Acker {
    InProcess(in_process::Acker),
    #[cfg(feature = "nats")]
    Nats(nats::Acker),
    #[cfg(feature = "rabbitmq")]
    Rabbit(rabbitmq::Acker),
    #[cfg(feature = "kafka")]
    Kafka(kafka::Acker),
}

/// One delivery of a message. Settle it with [`Delivery::ack`], [`Delivery::retry`] or
/// [`Delivery::dead_letter`]; dropping it unsettled makes the broker deliver it again (as if the
/// consumer had crashed): each backend's acker does that in its own `Drop`.
pub struct Delivery {
    payload: Result<Envelope, EventError>,
    attempt: u32,
    replay_group: Option<String>,
    acker: Option<Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("attempt", &self.attempt).finish_non_exhaustive()
    }
}

impl Delivery {
    fn new(payload: Result<Envelope, EventError>, attempt: u32, replay_group: Option<String>, acker: Acker) -> Self {
        Self { payload, attempt, replay_group, acker: Some(acker) }
    }

    /// The envelope, or why the bytes are not one (a poison message: dead-letter it).
    pub fn envelope(&self) -> Result<&Envelope, &EventError> {
        self.payload.as_ref()
    }

    /// Which delivery this is: 1 the first time.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Done: the broker forgets it.
    pub async fn ack(mut self) -> Result<(), BusError> {
        match self.acker.take() {
            Some(Acker::InProcess(a)) => {
                a.ack();
                Ok(())
            }
            #[cfg(feature = "nats")]
            Some(Acker::Nats(a)) => settled(a.ack()).await,
            #[cfg(feature = "rabbitmq")]
            Some(Acker::Rabbit(a)) => settled(a.ack()).await,
            #[cfg(feature = "kafka")]
            Some(Acker::Kafka(a)) => a.ack(),
            None => Ok(()),
        }
    }

    /// Still being worked on: keeps the broker from delivering it again while the consumer holds
    /// it (NATS: an in-progress ack, which restarts `ack_wait`). RabbitMQ and the in-process bus
    /// keep an unsettled delivery with its consumer as long as the subscription lives, so there
    /// it does nothing.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        match &self.acker {
            #[cfg(feature = "nats")]
            Some(Acker::Nats(a)) => a.in_progress().await,
            _ => Ok(()),
        }
    }

    /// Deliver it again after `delay`, with the attempt count one higher.
    pub async fn retry(mut self, delay: Duration) -> Result<(), BusError> {
        match self.acker.take() {
            Some(Acker::InProcess(a)) => {
                a.retry(delay);
                Ok(())
            }
            #[cfg(feature = "nats")]
            Some(Acker::Nats(a)) => settled(a.retry(delay)).await,
            #[cfg(feature = "rabbitmq")]
            Some(Acker::Rabbit(a)) => match &self.payload {
                Ok(envelope) => settled(a.retry(delay, envelope)).await,
                // Undecodable: nothing to park; leave it for redelivery.
                Err(e) => Err(BusError::Event(e.clone())),
            },
            #[cfg(feature = "kafka")]
            Some(Acker::Kafka(a)) => a.retry(delay),
            None => Ok(()),
        }
    }

    /// Give up: move it to `<topic>.dlq` with `reason` and the attempt count, then ack it. If
    /// the DLQ cannot take it the delivery is left for redelivery (an error is returned), so it
    /// is never lost.
    pub async fn dead_letter(mut self, group: &str, reason: &str) -> Result<(), BusError> {
        let reason = sanitize(reason);
        let (envelope, raw) = match &self.payload {
            Ok(e) => (e.clone(), None),
            Err(e) => (Envelope::raw("keel", "keel.undecodable", 1, serde_json::Value::Null), Some(e.to_string())),
        };
        let reason = match raw {
            Some(why) => format!("{reason} ({why})"),
            None => reason,
        };
        let dead = DeadLetter { envelope, group: group.to_owned(), reason, attempts: self.attempt };
        match self.acker.take() {
            Some(Acker::InProcess(a)) => a.dead_letter(dead),
            #[cfg(feature = "nats")]
            Some(Acker::Nats(a)) => settled(a.dead_letter(dead)).await,
            #[cfg(feature = "rabbitmq")]
            Some(Acker::Rabbit(a)) => settled(a.dead_letter(dead)).await,
            #[cfg(feature = "kafka")]
            Some(Acker::Kafka(a)) => settled(a.dead_letter(dead)).await,
            None => Ok(()),
        }
    }
}

/// The longest a broker may take to confirm a delivery's settling (ack, retry, dead letter).
/// Past it the connection is taken as gone: the call fails, the handler's place is freed, and
/// the consumer finds the subscription dead and subscribes again; the broker delivers the
/// message again (the inbox absorbs the repeat). Without it an ack a lost connection never
/// answers would hold its place for good.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `settle`, bounded by [`SETTLE_TIMEOUT`].
#[cfg(any(feature = "nats", feature = "rabbitmq", feature = "kafka"))]
async fn settled(settle: impl std::future::Future<Output = Result<(), BusError>>) -> Result<(), BusError> {
    tokio::time::timeout(SETTLE_TIMEOUT, settle)
        .await
        .unwrap_or_else(|_| Err(BusError::Unavailable("the broker did not confirm settling in time".into())))
}

/// Milliseconds since the Unix epoch (the outbox and inbox store times as integers so every SQL
/// backend compares them the same way).
#[cfg(feature = "sql")]
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The redelivery schedule of consumers and the outbox: the `n`-th wait is `min · 2^(n-1)`,
/// clamped to `[min, max]`, then ±10 % jitter so retries spread out.
pub(crate) fn redelivery(min: Duration, max: Duration) -> keel_resilience::Backoff {
    keel_resilience::Backoff::new(min, max).jitter(keel_resilience::backoff::Jitter::Proportional(0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_doubles_within_bounds_with_jitter() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(1800));
        for attempt in 1..40 {
            let d = redelivery(min, max).delay(attempt);
            let base = (5.0 * 2f64.powi(attempt as i32 - 1)).clamp(5.0, 1800.0);
            assert!(d.as_secs_f64() >= base * 0.9 - 1e-9 && d.as_secs_f64() <= base * 1.1 + 1e-9, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        for ok in ["joins", "join.confirmed", "a-b_c.d1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a*", "a>", "joins.dlq", &"x".repeat(101)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    fn memory(url: Option<&str>) -> Bus {
        let config = BusConfig { url: url.map(keel_config::Secret::new), ..BusConfig::default() };
        Bus::new(&config).unwrap()
    }

    #[tokio::test]
    async fn in_process_buses_with_the_same_memory_name_share_messages() {
        let (a, b, other, private) = (
            memory(Some("memory://shared-test")),
            memory(Some("memory://shared-test")),
            memory(Some("memory://other")),
            memory(None),
        );
        for bus in [&a, &b, &other, &private] {
            bus.connect().await.unwrap();
        }
        let opts = SubscribeOptions::default();
        let mut sub_b = b.subscribe("t", "g", &opts).await.unwrap();
        let mut sub_other = other.subscribe("t", "g", &opts).await.unwrap();
        let mut sub_private = private.subscribe("t", "g", &opts).await.unwrap();
        a.publish("t", &Envelope::raw("test", "x.y", 1, serde_json::json!({"n": 1}))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), sub_b.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.envelope().unwrap().data["n"], 1);
        got.ack().await.unwrap();
        for sub in [&mut sub_other, &mut sub_private] {
            assert!(tokio::time::timeout(Duration::from_millis(100), sub.next()).await.is_err(), "not shared");
        }
    }

    #[tokio::test]
    async fn namespaces_keep_topics_apart_on_one_broker() {
        let config = |ns: &str| BusConfig {
            url: Some(keel_config::Secret::new("memory://namespaces-test")),
            namespace: Some(ns.to_owned()),
            ..BusConfig::default()
        };
        let (a, a2, b) = (
            Bus::new(&config("run-a")).unwrap(),
            Bus::new(&config("run-a")).unwrap(),
            Bus::new(&config("run-b")).unwrap(),
        );
        for bus in [&a, &a2, &b] {
            bus.connect().await.unwrap();
        }
        let opts = SubscribeOptions::default();
        let mut sub_a2 = a2.subscribe("t", "g", &opts).await.unwrap();
        let mut sub_b = b.subscribe("t", "g", &opts).await.unwrap();
        a.publish("t", &Envelope::raw("test", "x.y", 1, serde_json::json!({}))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), sub_a2.next()).await.unwrap().unwrap().unwrap();
        got.ack().await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(100), sub_b.next()).await.is_err());
        assert_eq!(a.lag("t", "g").await.unwrap(), 0);
    }
}
