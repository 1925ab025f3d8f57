//! RabbitMQ backend (lapin).
//!
//! * A topic `joins` is a durable topic exchange `joins`. A consumer group `notifier` is a durable
//!   queue `joins.notifier` bound with `#`, plus a retry queue `joins.notifier.retry` whose
//!   expired messages dead-letter back into it (`retry` with a delay = publish there with a
//!   per-message TTL, then ack). The DLQ is the durable queue `joins.dlq`.
//! * A fan-out subscription gets queues of its own (`joins.<group>.<suffix>` and its retry
//!   queue), not durable, expiring a minute (the retry queue: an hour) after their last use.
//! * Publishes are persistent, `mandatory` and confirmed: the broker's `basic.return`
//!   (`NO_ROUTE`: no queue bound yet) is [`BusError::Unroutable`] and a negative confirm is
//!   [`BusError::Rejected`] — the outbox keeps such rows and retries them.
//! * The attempt number travels in the `x-keel-attempt` header; a delivery dropped unsettled is
//!   NACKed with requeue (and a crashed consumer's channel closing requeues it too).
//! * A lost connection is re-established on the next use.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::{Acker as BusAcker, BusError, DeadLetter, Delivery, Envelope, SubscribeOptions};
use keel_health::sanitize;

const ATTEMPT: &str = "x-keel-attempt";
const REPLAY_GROUP: &str = "x-keel-replay-group";
const DEAD_GROUP: &str = "x-keel-group";
const DEAD_REASON: &str = "x-keel-reason";

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(sanitize(&e.to_string()))
}

struct Live {
    connection: Connection,
    /// Publisher-confirm channel shared by publishes, retries and dead letters.
    publish: Channel,
    topics: HashSet<String>,
}

pub(super) struct Conn {
    url: String,
    live: Mutex<Option<Live>>,
    connected: std::sync::atomic::AtomicBool,
    /// The back-off between reconnection attempts (the `live` lock keeps them one at a time).
    reconnect: keel_resilience::reprobe::ProbeGate,
}

fn queue_opts() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

/// A group queue's options: durable, or (fan-out) transient and expiring `expiry` after its
/// last use.
fn group_queue(fan_out: bool, expiry: Duration) -> (QueueDeclareOptions, FieldTable) {
    if !fan_out {
        return (queue_opts(), FieldTable::default());
    }
    let mut args = FieldTable::default();
    let ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    (QueueDeclareOptions::default(), args)
}

/// A fan-out group's retry queue is never consumed, and publishing to it does not count as a
/// use: it must outlive the longest retry delay (a consumer's `retry_max`, 5 min by default).
const FAN_OUT_RETRY_EXPIRY: Duration = Duration::from_secs(3600);

fn header_str(h: &FieldTable, k: &str) -> Option<String> {
    match h.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_u32(h: &FieldTable, k: &str) -> Option<u32> {
    match h.inner().get(k)? {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        _ => None,
    }
}

fn properties(envelope: &Envelope, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/cloudevents+json"))
        .with_message_id(ShortString::from(envelope.id.as_str()))
        .with_headers(headers)
}

/// Turns a publisher confirmation into a result.
fn confirmed(c: Confirmation, topic: &str) -> Result<(), BusError> {
    match c {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BusError::Unroutable(topic.to_owned())),
        Confirmation::Nack(_) => Err(BusError::Rejected(format!("negative confirm for {topic}"))),
    }
}

impl Conn {
    pub(super) async fn connect(url: &str) -> Result<Arc<Self>, BusError> {
        let conn = Arc::new(Self {
            url: url.to_owned(),
            live: Mutex::new(None),
            connected: std::sync::atomic::AtomicBool::new(false),
            reconnect: keel_resilience::reprobe::ProbeGate::default(),
        });
        conn.publisher().await?;
        Ok(conn)
    }

    async fn open(&self) -> Result<Live, BusError> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(|e| BusError::Unavailable(sanitize(&e.to_string())))?;
        let publish = connection.create_channel().await.map_err(broker)?;
        publish.confirm_select(ConfirmSelectOptions::default()).await.map_err(broker)?;
        Ok(Live { connection, publish, topics: HashSet::new() })
    }

    /// The live connection, reconnecting if it was lost; runs `f` with it under the lock.
    async fn with_live<T>(&self, f: impl AsyncFnOnce(&mut Live) -> Result<T, BusError>) -> Result<T, BusError> {
        let mut guard = self.live.lock().await;
        let healthy =
            guard.as_ref().is_some_and(|l| l.connection.status().connected() && l.publish.status().connected());
        if !healthy {
            *guard = None;
            // While the broker is away, callers fail fast between reconnection attempts (200 ms
            // doubling to 1 s, jittered): the broker is found again within about a second of its
            // return, and is not dialled by every call meanwhile.
            if !self.reconnect.due(std::time::Instant::now()) {
                self.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                return Err(BusError::Unavailable("connection lost; reconnecting".into()));
            }
            let opened = self.open().await;
            self.reconnect.finish(opened.is_ok(), std::time::Instant::now());
            match opened {
                Ok(l) => *guard = Some(l),
                Err(e) => {
                    self.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.connected.store(true, std::sync::atomic::Ordering::Relaxed);
        match guard.as_mut() {
            Some(live) => f(live).await,
            None => Err(BusError::Unavailable("not connected".into())),
        }
    }

    async fn publisher(&self) -> Result<Channel, BusError> {
        self.with_live(async |l| Ok(l.publish.clone())).await
    }

    /// Dials the broker again if the connection is lost (at the reconnection gate's pace) and
    /// says whether it is up. lapin does not reconnect by itself, and a service that publishes
    /// nothing would otherwise stay disconnected.
    pub(super) async fn redial(&self) -> bool {
        self.publisher().await.is_ok()
    }

    pub(super) fn is_connected(&self) -> bool {
        match self.live.try_lock() {
            Ok(g) => g.as_ref().is_some_and(|l| l.connection.status().connected()),
            // Someone is using it right now: report what was last seen.
            Err(_) => self.connected.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub(super) async fn close(&self) {
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.connection.close(200, ShortString::from("shutdown")).await;
        }
    }

    /// Declares the topic's exchange and DLQ queue once per connection; returns the publish channel.
    async fn ensure_topic(&self, topic: &str) -> Result<Channel, BusError> {
        self.with_live(async |l| {
            if !l.topics.contains(topic) {
                let ex_opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
                l.publish
                    .exchange_declare(topic.into(), ExchangeKind::Topic, ex_opts, FieldTable::default())
                    .await
                    .map_err(broker)?;
                l.publish
                    .queue_declare(format!("{topic}.dlq").into(), queue_opts(), FieldTable::default())
                    .await
                    .map_err(broker)?;
                l.topics.insert(topic.to_owned());
            }
            Ok(l.publish.clone())
        })
        .await
    }

    /// Declares the group's queue (bound to the topic) and its retry queue. A fan-out group's
    /// queues are not durable and expire a minute after their last use.
    async fn ensure_group(
        &self,
        channel: &Channel,
        topic: &str,
        group: &str,
        fan_out: bool,
    ) -> Result<String, BusError> {
        let queue = format!("{topic}.{group}");
        let (opts, args) = group_queue(fan_out, super::FAN_OUT_EXPIRY);
        channel.queue_declare(queue.as_str().into(), opts, args).await.map_err(broker)?;
        channel
            .queue_bind(
                queue.as_str().into(),
                topic.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        self.ensure_retry(channel, &queue, fan_out).await?;
        Ok(queue)
    }

    /// The retry queue of `queue`: its expired messages dead-letter back into `queue`.
    async fn ensure_retry(&self, channel: &Channel, queue: &str, fan_out: bool) -> Result<(), BusError> {
        let (opts, mut args) = group_queue(fan_out, FAN_OUT_RETRY_EXPIRY);
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
        channel.queue_declare(format!("{queue}.retry").into(), opts, args).await.map_err(broker)?;
        Ok(())
    }

    pub(super) async fn publish(
        &self,
        topic: &str,
        envelope: &Envelope,
        payload: Vec<u8>,
        replay_group: Option<&str>,
    ) -> Result<(), BusError> {
        let channel = self.ensure_topic(topic).await?;
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(0));
        let (exchange, key) = match replay_group {
            // A replay goes straight to the group's queue, not to every group.
            Some(g) => {
                headers.insert(REPLAY_GROUP.into(), AMQPValue::LongString(g.into()));
                (String::new(), format!("{topic}.{g}"))
            }
            None => (topic.to_owned(), topic.to_owned()),
        };
        let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirm = channel
            .basic_publish(exchange.into(), key.into(), opts, &payload, properties(envelope, headers))
            .await
            .map_err(broker)?;
        confirmed(confirm.await.map_err(broker)?, topic)
    }

    pub(super) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        group: &str,
        options: &SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        self.ensure_topic(topic).await?;
        let channel = self.with_live(async |l| l.connection.create_channel().await.map_err(broker)).await?;
        channel.basic_qos(options.prefetch, BasicQosOptions::default()).await.map_err(broker)?;
        let queue = self.ensure_group(&channel, topic, group, options.fan_out).await?;
        let consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(broker)?;
        Ok(Subscription {
            consumer,
            channel,
            conn: self.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            fan_out: options.fan_out,
        })
    }

    /// The group queue's ready messages and its retry queue's (waiting out a retry's delay;
    /// the two are declared together).
    pub(super) async fn lag(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        let channel = self.publisher().await?;
        let queue = format!("{topic}.{group}");
        let mut lag = 0;
        for name in [queue.clone(), format!("{queue}.retry")] {
            let q = channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions { passive: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(broker)?;
            lag += u64::from(q.message_count());
        }
        Ok(lag)
    }

    pub(super) async fn dlq_list(&self, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.dlq_walk(topic, limit, Walk::List).await
    }

    pub(super) async fn dlq_replay(&self, topic: &str, id: Option<&str>) -> Result<usize, BusError> {
        Ok(self.dlq_walk(topic, usize::MAX, Walk::Replay(id)).await?.len())
    }

    pub(super) async fn dlq_discard(&self, topic: &str, id: &str) -> Result<usize, BusError> {
        Ok(self.dlq_walk(topic, usize::MAX, Walk::Discard(id)).await?.len())
    }

    /// Reads up to `limit` dead letters on a channel of its own. Listing leaves them all unacked
    /// (they go back when the channel closes); replaying republishes each matching one to its
    /// group's queue, confirmed, and only then acks it — a crash in between duplicates (which
    /// the inbox absorbs) rather than loses; discarding acks the matching one.
    async fn dlq_walk(&self, topic: &str, limit: usize, walk: Walk<'_>) -> Result<Vec<DeadLetter>, BusError> {
        self.ensure_topic(topic).await?;
        let channel = self.with_live(async |l| l.connection.create_channel().await.map_err(broker)).await?;
        let dlq = format!("{topic}.dlq");
        let mut out = Vec::new();
        let mut seen = 0;
        // Taken but not acked: handed back individually (a `multiple` nack would also cover
        // acked tags, which is a channel error).
        let mut unsettled = Vec::new();
        let result = async {
            while seen < limit {
                let Some(m) =
                    channel.basic_get(dlq.as_str().into(), BasicGetOptions::default()).await.map_err(broker)?
                else {
                    break;
                };
                seen += 1;
                let d = m.delivery;
                let headers = d.properties.headers().clone().unwrap_or_default();
                let Ok(envelope) = Envelope::from_bytes(&d.data) else {
                    unsettled.push(d.delivery_tag);
                    continue;
                };
                let dead = DeadLetter {
                    envelope,
                    group: header_str(&headers, DEAD_GROUP).unwrap_or_default(),
                    reason: header_str(&headers, DEAD_REASON).unwrap_or_default(),
                    attempts: header_u32(&headers, ATTEMPT).unwrap_or(0),
                };
                match walk {
                    Walk::List => {
                        unsettled.push(d.delivery_tag);
                        out.push(dead);
                    }
                    Walk::Discard(id) if id == dead.envelope.id => {
                        channel.basic_ack(d.delivery_tag, BasicAckOptions::default()).await.map_err(broker)?;
                        out.push(dead);
                    }
                    Walk::Replay(id) if id.is_none_or(|id| id == dead.envelope.id) => {
                        let payload = dead.envelope.to_bytes()?;
                        let group = (!dead.group.is_empty()).then_some(dead.group.as_str());
                        self.publish(topic, &dead.envelope, payload, group).await?;
                        channel.basic_ack(d.delivery_tag, BasicAckOptions::default()).await.map_err(broker)?;
                        out.push(dead);
                    }
                    Walk::Replay(_) | Walk::Discard(_) => unsettled.push(d.delivery_tag),
                }
            }
            Ok::<_, BusError>(())
        }
        .await;
        for tag in unsettled {
            let _ = channel.basic_nack(tag, BasicNackOptions { multiple: false, requeue: true }).await;
        }
        let _ = channel.close(200, ShortString::from("done")).await;
        result.map(|()| out)
    }

    pub(super) async fn dlq_purge(&self, topic: &str) -> Result<usize, BusError> {
        let channel = self.ensure_topic(topic).await?;
        let n =
            channel.queue_purge(format!("{topic}.dlq").into(), QueuePurgeOptions::default()).await.map_err(broker)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Publishes to a queue by name (default exchange), confirmed.
    async fn to_queue(
        &self,
        queue: &str,
        envelope: &Envelope,
        headers: FieldTable,
        ttl: Option<Duration>,
    ) -> Result<(), BusError> {
        let channel = self.publisher().await?;
        let mut props = properties(envelope, headers);
        if let Some(ttl) = ttl {
            props = props.with_expiration(ShortString::from(ttl.as_millis().max(1).to_string()));
        }
        let payload = envelope.to_bytes()?;
        let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirm = channel.basic_publish("".into(), queue.into(), opts, &payload, props).await.map_err(broker)?;
        confirmed(confirm.await.map_err(broker)?, queue)
    }
}

/// What [`Conn::dlq_walk`] does with the dead letters it reads.
#[derive(Clone, Copy)]
enum Walk<'a> {
    List,
    /// All (`None`), or the one with this event id.
    Replay(Option<&'a str>),
    Discard(&'a str),
}

pub(super) struct Subscription {
    consumer: lapin::Consumer,
    channel: Channel,
    conn: Arc<Conn>,
    topic: String,
    group: String,
    fan_out: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Closing the channel hands its unacked messages back to the queue.
        let channel = self.channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = channel.close(200, ShortString::from("unsubscribed")).await;
            });
        }
    }
}

impl Subscription {
    pub(super) async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let d = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(broker(e))),
        };
        let headers = d.properties.headers().clone().unwrap_or_default();
        let previous = header_u32(&headers, ATTEMPT).unwrap_or(0);
        let attempt = previous.saturating_add(1).saturating_add(u32::from(d.redelivered));
        let replay_group = header_str(&headers, REPLAY_GROUP);
        let payload = Envelope::from_bytes(&d.data);
        let acker = Acker {
            acker: Some(d.acker),
            conn: self.conn.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            attempt,
            fan_out: self.fan_out,
        };
        Some(Ok(Delivery::new(payload, attempt, replay_group, BusAcker::Rabbit(acker))))
    }
}

pub(super) struct Acker {
    acker: Option<lapin::Acker>,
    conn: Arc<Conn>,
    topic: String,
    group: String,
    attempt: u32,
    fan_out: bool,
}

impl Acker {
    pub(super) async fn ack(mut self) -> Result<(), BusError> {
        match self.acker.take() {
            Some(a) => a.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(broker),
            None => Ok(()),
        }
    }

    pub(super) async fn retry(self, delay: Duration, envelope: &Envelope) -> Result<(), BusError> {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(self.attempt)));
        let queue = format!("{}.{}", self.topic, self.group);
        if self.fan_out {
            // Declared again: an expiring queue nobody consumes may have gone meanwhile.
            let channel = self.conn.publisher().await?;
            self.conn.ensure_retry(&channel, &queue, true).await?;
        }
        let retry_queue = format!("{queue}.retry");
        // Parked in the retry queue first, acked second: a failure in between redelivers.
        self.conn.to_queue(&retry_queue, envelope, headers, Some(delay)).await?;
        self.ack().await
    }

    pub(super) async fn dead_letter(self, dead: DeadLetter) -> Result<(), BusError> {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(dead.attempts)));
        headers.insert(DEAD_GROUP.into(), AMQPValue::LongString(dead.group.as_str().into()));
        headers.insert(DEAD_REASON.into(), AMQPValue::LongString(dead.reason.as_str().into()));
        self.conn.to_queue(&format!("{}.dlq", self.topic), &dead.envelope, headers, None).await?;
        self.ack().await
    }

    fn requeue(&mut self) {
        if let (Some(a), Ok(rt)) = (self.acker.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = a.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            });
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.requeue();
    }
}
