//! Kafka backend (rdkafka on librdkafka).
//!
//! * A topic `joins` is the Kafka topic `joins` (under `bus.namespace`, `<ns>.joins`); its dead
//!   letters are the topic `joins.dlq`. Keel creates both on first use with
//!   `bus.kafka.partitions` and `bus.kafka.replication_factor`, or, with `create_topics: false`,
//!   refuses a topic that does not exist.
//! * Publishes use an idempotent producer (`enable.idempotence`, `acks=all`): the envelope's key
//!   is the record key (murmur2 partitioning, as the Java client does, so every producer puts a
//!   key on the same partition), its id, type, source, trace context, request id and schema
//!   version are headers beside the CloudEvents JSON, and `Ok` means every in-sync replica has it.
//! * A consumer group is a Kafka consumer group. Offsets are stored only once a message is
//!   settled, and only up to the oldest message not settled yet in its partition, then committed
//!   every second: a crash redelivers what was not settled (the inbox absorbs the repeats).
//!   Within a partition, messages of different keys are handled concurrently and messages of one
//!   key one at a time, in order; `retry` holds the message (and its key) in the subscription
//!   until its delay has passed, without holding up the other keys. A rebalance waits for the
//!   deliveries of the partitions being given up to be settled (up to `ack_wait`) and commits
//!   before the partitions go.
//! * A fan-out subscription reads every partition from its end when it subscribes, outside any
//!   group: nothing is kept for it once it is gone.
//! * Dead letters are records of `<topic>.dlq` with the group, reason and attempts as headers.
//!   `dlq list` reads them from the group `<topic>.dlq.cursor`'s committed offsets; a replay
//!   publishes the event again with the group to replay for and records a marker, and replaying
//!   or purging every dead letter moves the cursor past them.

mod subscription;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

use super::{BusError, DeadLetter, Envelope, Lag, SubscribeOptions};
use crate::config::{BusConfig, KafkaConfig, bootstrap_servers};
use keel_health::sanitize;

pub(super) use subscription::{Acker, Subscription};

const REPLAY_GROUP: &str = "keel-replay-group";
const DEAD_GROUP: &str = "keel-group";
const DEAD_REASON: &str = "keel-reason";
const DEAD_ATTEMPTS: &str = "keel-attempts";
/// A DLQ record saying the dead letter of this event id, earlier in its partition, was replayed.
const REPLAYED: &str = "keel-replayed";

/// How long a metadata, offset or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `dlq list` reads the dead-letter topic for.
const DLQ_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(sanitize(&e.to_string()))
}

/// Whether a librdkafka error code says the brokers are away or busy (the outbox then pauses
/// instead of spending the row's attempts), rather than answering about this message.
fn transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::QueueFull
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::UnknownTopicOrPartition
            | C::WaitCache
    )
}

fn kafka_error(e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(code) if transient(code) => BusError::Unavailable(sanitize(&format!("Kafka: {e}"))),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessage) => {
            BusError::Rejected(sanitize(&e.to_string()))
        }
        _ => broker(e),
    }
}

/// Whether a publish error says the producer's identity (its id and epoch) is no longer
/// accepted, so that no later publish of it can succeed: a new producer is needed. librdkafka
/// raises most of these as fatal errors itself; a broker may also answer them per message.
fn fenced(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerIdMapping
            | C::Fatal
    )
}

fn new_producer(config: &ClientConfig, context: &Context) -> Result<FutureProducer<Context>, BusError> {
    config.create_with_context(context.clone()).map_err(|e| BusError::Config(sanitize(&format!("Kafka producer: {e}"))))
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, BusError> + Send + 'static) -> Result<T, BusError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BusError::Broker(format!("Kafka call failed: {e}")))?
}

/// The client context of the producer: tracks whether any broker connection is up (from
/// librdkafka's statistics, every second) and sends librdkafka's errors to the log.
#[derive(Clone, Default)]
pub(super) struct Context {
    up: Arc<AtomicBool>,
    quiet: Arc<Quiet>,
}

/// Logs librdkafka's errors at most once per [`Quiet::EVERY`] (it reports a lost broker on
/// every reconnection attempt); the rest go to DEBUG.
#[derive(Default)]
pub(super) struct Quiet {
    last: Mutex<Option<std::time::Instant>>,
}

impl Quiet {
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn error(&self, what: &str, error: &KafkaError, reason: &str) {
        let now = std::time::Instant::now();
        let loud = match self.last.lock() {
            Ok(mut last) if last.is_none_or(|t| now.duration_since(t) >= Self::EVERY) => {
                *last = Some(now);
                true
            }
            _ => false,
        };
        let reason = sanitize(reason);
        if loud {
            tracing::warn!(error = %error, reason = %reason, "{what}");
        } else {
            tracing::debug!(error = %error, reason = %reason, "{what}");
        }
    }
}

#[derive(serde::Deserialize)]
struct Stats {
    #[serde(default)]
    brokers: HashMap<String, BrokerStats>,
}

#[derive(serde::Deserialize)]
struct BrokerStats {
    state: String,
}

impl ClientContext for Context {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(s) = serde_json::from_slice::<Stats>(statistics) {
            self.up.store(s.brokers.values().any(|b| b.state == "UP"), Ordering::Relaxed);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.up.store(false, Ordering::Relaxed);
        }
        self.quiet.error("Kafka client error", &error, reason);
    }
}

/// A client of `group` that reads and commits its offsets by hand and never joins it.
fn group_client(client: &ClientConfig, group: &str) -> Result<BaseConsumer, BusError> {
    client
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| BusError::Config(sanitize(&format!("Kafka consumer: {e}"))))
}

/// The settings every client of this bus shares: brokers, identity, security.
fn client_config(url: &str, k: &KafkaConfig) -> Result<ClientConfig, BusError> {
    let servers = bootstrap_servers(url).map_err(|why| BusError::Config(format!("bus.url {why}")))?;
    let mut c = ClientConfig::new();
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", servers)
        .set("client.id", &k.client_id)
        .set("security.protocol", k.security_protocol.as_str())
        // Find a returning broker within about a second, as the other backends do.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    if k.security_protocol.sasl() {
        c.set("sasl.mechanism", k.sasl_mechanism.as_str());
        if let Some(u) = &k.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &k.sasl_password {
            c.set("sasl.password", p.expose());
        }
    }
    for (key, file) in [
        ("ssl.ca.location", &k.tls_ca_file),
        ("ssl.certificate.location", &k.tls_cert_file),
        ("ssl.key.location", &k.tls_key_file),
    ] {
        if let Some(f) = file {
            c.set(key, f.to_string_lossy());
        }
    }
    Ok(c)
}

pub(super) struct Conn {
    /// The idempotent producer, and its generation: replaced when it can no longer publish
    /// ([`fenced`]).
    producer: Mutex<(u64, FutureProducer<Context>)>,
    /// What a replacement producer is made from.
    producer_config: ClientConfig,
    context: Context,
    admin: AdminClient<Context>,
    /// What consumers are made from.
    client: ClientConfig,
    kafka: KafkaConfig,
    publish_timeout: Duration,
    up: Arc<AtomicBool>,
    /// Topics known to exist (with their `.dlq`): publishing does not ask the broker again.
    ready: Mutex<HashSet<String>>,
    /// A group-less client per consumer group, reading the group's committed offsets for `lag`.
    lag_clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl Conn {
    pub(super) async fn connect(url: &str, config: &BusConfig) -> Result<Arc<Self>, BusError> {
        let client = client_config(url, &config.kafka)?;
        let context = Context::default();
        let up = context.up.clone();
        let timeout_ms = config.publish_timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
        let mut producer_config = client.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            // librdkafka gives up on a message when the publish deadline does: a row is never
            // sent by the client after the relay took it as failed.
            .set("message.timeout.ms", &timeout_ms)
            .set("partitioner", "murmur2_random")
            .set("statistics.interval.ms", "1000")
            // Keep a connection to every broker, so that readiness reflects the cluster even
            // while nothing is published.
            .set("enable.sparse.connections", "false");
        let producer = new_producer(&producer_config, &context)?;
        let admin: AdminClient<Context> = client
            .create_with_context(context.clone())
            .map_err(|e| BusError::Config(sanitize(&format!("Kafka admin: {e}"))))?;
        let conn = Arc::new(Self {
            producer: Mutex::new((0, producer)),
            producer_config,
            context,
            admin,
            client,
            kafka: config.kafka.clone(),
            publish_timeout: config.publish_timeout,
            up,
            ready: Mutex::new(HashSet::new()),
            lag_clients: Mutex::new(HashMap::new()),
        });
        // librdkafka connects lazily and never fails to "connect": ask the cluster for its
        // metadata so that an unreachable or refusing broker is an error here.
        let (_, producer) = conn.producer();
        blocking(move || {
            producer.client().fetch_metadata(None, REQUEST_TIMEOUT).map_err(|e| match e.rdkafka_error_code() {
                Some(code) if transient(code) => {
                    BusError::Unavailable(sanitize(&format!("no Kafka broker answered: {e}")))
                }
                _ => broker(e),
            })
        })
        .await?;
        conn.up.store(true, Ordering::Relaxed);
        Ok(conn)
    }

    pub(super) fn is_connected(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) async fn close(&self) {
        // Delivers what is queued (bounded): the outbox marked nothing sent that is not.
        let (_, producer) = self.producer();
        let timeout = self.publish_timeout;
        let _ = blocking(move || producer.flush(timeout).map_err(broker)).await;
    }

    /// Creates `topic` and its `.dlq` once per process (or, with `create_topics: false`,
    /// checks they exist); after that it costs a set lookup.
    async fn ensure(&self, topic: &str) -> Result<(), BusError> {
        if self.ready.lock().map(|r| r.contains(topic)).unwrap_or(false) {
            return Ok(());
        }
        let dlq = format!("{topic}.dlq");
        if self.kafka.create_topics {
            let partitions = self.kafka.partitions.map_or(-1, |p| i32::try_from(p).unwrap_or(i32::MAX));
            let replication = self.kafka.replication_factor.map_or(-1, i32::from);
            let new = [
                NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
                NewTopic::new(&dlq, partitions, TopicReplication::Fixed(replication)),
            ];
            let opts =
                AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)).operation_timeout(Some(REQUEST_TIMEOUT));
            let results = self.admin.create_topics(&new, &opts).await.map_err(kafka_error)?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) if transient(code) => {
                        return Err(BusError::Unavailable(format!("cannot create Kafka topic {name}: {code}")));
                    }
                    Err((name, code)) => {
                        return Err(BusError::Broker(format!("cannot create Kafka topic {name}: {code}")));
                    }
                }
            }
        } else {
            let present = self.topics().await?;
            for name in [topic, dlq.as_str()] {
                if !present.contains(name) {
                    return Err(BusError::Config(format!(
                        "Kafka topic {name} does not exist and bus.kafka.create_topics is false: create it (with its .dlq topic)"
                    )));
                }
            }
        }
        if let Ok(mut r) = self.ready.lock() {
            r.insert(topic.to_owned());
        }
        Ok(())
    }

    /// The topics on the cluster.
    async fn topics(&self) -> Result<HashSet<String>, BusError> {
        let (_, producer) = self.producer();
        blocking(move || {
            let md = producer.client().fetch_metadata(None, REQUEST_TIMEOUT).map_err(kafka_error)?;
            Ok(md.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name().to_owned()).collect())
        })
        .await
    }

    /// The partitions of `topic`.
    fn partitions<C: ClientContext>(client: &rdkafka::client::Client<C>, topic: &str) -> Result<Vec<i32>, BusError> {
        let md = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(kafka_error)?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t {
            Some(t) if t.error().is_none() => Ok(t.partitions().iter().map(|p| p.id()).collect()),
            _ => Err(BusError::Unavailable(format!("Kafka topic {topic} has no metadata (yet)"))),
        }
    }

    /// Forgets that `topic` exists, so that the next publish checks again.
    fn forget(&self, topic: &str) {
        if let Ok(mut r) = self.ready.lock() {
            r.remove(topic);
        }
    }

    pub(super) async fn publish(
        &self,
        topic: &str,
        envelope: &Envelope,
        payload: Vec<u8>,
        replay_group: Option<&str>,
    ) -> Result<(), BusError> {
        self.ensure(topic).await?;
        let mut headers = envelope_headers(envelope);
        if let Some(group) = replay_group {
            headers = headers.insert(Header { key: REPLAY_GROUP, value: Some(group) });
        }
        self.send(topic, envelope.key.as_deref(), &payload, headers).await
    }

    /// Produces one record and waits for every in-sync replica to have it.
    async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), BusError> {
        let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        let (generation, producer) = self.producer();
        match producer.send(record, Timeout::After(self.publish_timeout)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                let code = e.rdkafka_error_code();
                if code == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                    // Made again before the next publish, should it really be gone.
                    self.forget(topic);
                }
                let fatal = producer.client().fatal_error();
                if fatal.is_some() || code.is_some_and(fenced) {
                    self.replace_producer(generation, &e, fatal.map(|(_, why)| why)).await?;
                    // Not the message's fault: given back without spending an attempt.
                    return Err(BusError::Unavailable(sanitize(&format!("Kafka producer replaced after: {e}"))));
                }
                Err(kafka_error(e))
            }
        }
    }

    /// The current producer and its generation.
    fn producer(&self) -> (u64, FutureProducer<Context>) {
        let p = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        (p.0, p.1.clone())
    }

    /// Replaces the producer of `generation` (once, however many publishes failed on it) with a
    /// new one, which the cluster gives a new producer id. librdkafka's own remedy for a fatal
    /// error; the old one's queued messages fail and their rows are published again.
    async fn replace_producer(
        &self,
        generation: u64,
        error: &KafkaError,
        fatal: Option<String>,
    ) -> Result<(), BusError> {
        let old = {
            let mut p = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
            if p.0 != generation {
                return Ok(());
            }
            // Made under the lock, so that publishes racing this one make none of their own.
            let old = std::mem::replace(&mut p.1, new_producer(&self.producer_config, &self.context)?);
            p.0 += 1;
            old
        };
        tracing::warn!(
            error = %sanitize(&error.to_string()),
            fatal = fatal.as_deref().map(sanitize).unwrap_or_default(),
            "the Kafka producer can no longer publish (fenced or failed for good); a new one takes over"
        );
        // Dropping a producer purges and waits for librdkafka's threads: not on an async thread.
        let _ = blocking(move || {
            drop(old);
            Ok(())
        })
        .await;
        Ok(())
    }

    pub(super) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        group: &str,
        options: &SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        self.ensure(topic).await?;
        let conn = self.clone();
        let (topic, group, options) = (topic.to_owned(), group.to_owned(), options.clone());
        blocking(move || Subscription::start(conn, topic, group, options)).await
    }

    /// A client that reads `group`'s committed offsets without joining the group.
    fn lag_client(&self, group: &str) -> Result<Arc<BaseConsumer>, BusError> {
        let mut clients = self.lag_clients.lock().map_err(|_| BusError::Broker("lag clients poisoned".into()))?;
        if let Some(c) = clients.get(group) {
            return Ok(c.clone());
        }
        let c = Arc::new(group_client(&self.client, group)?);
        clients.insert(group.to_owned(), c.clone());
        Ok(c)
    }

    /// Records of `topic` the group has not committed, per partition: published but not
    /// delivered, or delivered and not settled (a retry's wait included).
    pub(super) async fn lag(&self, topic: &str, group: &str) -> Result<Lag, BusError> {
        self.ensure(topic).await?;
        let client = self.lag_client(group)?;
        let topic = topic.to_owned();
        blocking(move || {
            // Serves what librdkafka queued for this client (errors, logs) since the last call.
            let _ = client.poll(Duration::ZERO);
            let mut tpl = TopicPartitionList::new();
            for p in Self::partitions(client.client(), &topic)? {
                tpl.add_partition(&topic, p);
            }
            let committed = client.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(kafka_error)?;
            let mut lag = Lag { partitions: Vec::new() };
            for e in committed.elements() {
                let (low, high) =
                    client.fetch_watermarks(&topic, e.partition(), REQUEST_TIMEOUT).map_err(kafka_error)?;
                let from = match e.offset() {
                    Offset::Offset(o) if o >= low => o,
                    _ => low,
                };
                lag.partitions.push((Some(e.partition()), u64::try_from(high - from).unwrap_or(0)));
            }
            lag.partitions.sort_unstable();
            Ok(lag)
        })
        .await
    }

    /// Produces a dead letter to `<topic>.dlq`, keyed by the event id (so a replay marker lands
    /// after it in the same partition).
    async fn send_dead_letter(&self, topic: &str, dead: &DeadLetter) -> Result<(), BusError> {
        let attempts = dead.attempts.to_string();
        let reason = dead.reason.replace(['\r', '\n'], " ");
        let headers = envelope_headers(&dead.envelope)
            .insert(Header { key: DEAD_GROUP, value: Some(dead.group.as_str()) })
            .insert(Header { key: DEAD_REASON, value: Some(reason.as_str()) })
            .insert(Header { key: DEAD_ATTEMPTS, value: Some(attempts.as_str()) });
        let payload = dead.envelope.to_bytes()?;
        self.send(&format!("{topic}.dlq"), Some(&dead.envelope.id), &payload, headers).await
    }

    /// The dead letters not replayed or purged yet, oldest first, with the cursor positions
    /// just past everything read.
    async fn dead_letters(&self, topic: &str) -> Result<(Vec<DeadLetter>, TopicPartitionList), BusError> {
        self.ensure(topic).await?;
        let dlq = format!("{topic}.dlq");
        let client = self.client.clone();
        blocking(move || read_dlq(&client, &dlq)).await
    }

    pub(super) async fn dlq_list(&self, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let (mut letters, _) = self.dead_letters(topic).await?;
        letters.truncate(limit);
        Ok(letters)
    }

    pub(super) async fn dlq_replay(&self, topic: &str, id: Option<&str>) -> Result<usize, BusError> {
        let (letters, ends) = self.dead_letters(topic).await?;
        let mut n = 0;
        for d in letters.iter().filter(|d| id.is_none_or(|id| id == d.envelope.id)) {
            let payload = d.envelope.to_bytes()?;
            let group = (!d.group.is_empty()).then_some(d.group.as_str());
            self.publish(topic, &d.envelope, payload, group).await?;
            // Marks this one replayed: listed no more, even if the cursor cannot move yet.
            let marker = OwnedHeaders::new().insert(Header { key: REPLAYED, value: Some(d.envelope.id.as_str()) });
            self.send(&format!("{topic}.dlq"), Some(&d.envelope.id), &[], marker).await?;
            n += 1;
        }
        if id.is_none() {
            self.move_cursor(topic, ends).await?;
        }
        Ok(n)
    }

    /// Marks the dead letter `id` handled without publishing it: listed and replayed no more.
    pub(super) async fn dlq_discard(&self, topic: &str, id: &str) -> Result<usize, BusError> {
        let (letters, _) = self.dead_letters(topic).await?;
        let mut n = 0;
        for d in letters.iter().filter(|d| d.envelope.id == id) {
            let marker = OwnedHeaders::new().insert(Header { key: REPLAYED, value: Some(d.envelope.id.as_str()) });
            self.send(&format!("{topic}.dlq"), Some(&d.envelope.id), &[], marker).await?;
            n += 1;
        }
        Ok(n)
    }

    pub(super) async fn dlq_purge(&self, topic: &str) -> Result<usize, BusError> {
        let (letters, ends) = self.dead_letters(topic).await?;
        self.move_cursor(topic, ends).await?;
        Ok(letters.len())
    }

    /// Commits the DLQ cursor at `ends`: what is before them is neither listed nor replayed.
    async fn move_cursor(&self, topic: &str, ends: TopicPartitionList) -> Result<(), BusError> {
        if ends.count() == 0 {
            return Ok(());
        }
        let client = self.client.clone();
        let group = format!("{topic}.dlq.cursor");
        blocking(move || group_client(&client, &group)?.commit(&ends, CommitMode::Sync).map_err(kafka_error)).await
    }
}

/// The envelope's attributes as record headers (the CloudEvents Kafka binding's `ce_` names,
/// and Keel's), so a consumer in any language can route and trace without parsing the JSON.
fn envelope_headers(e: &Envelope) -> OwnedHeaders {
    let version = e.version.to_string();
    let mut h = OwnedHeaders::new_with_capacity(10)
        .insert(Header { key: "content-type", value: Some("application/cloudevents+json") })
        .insert(Header { key: "ce_specversion", value: Some(e.specversion.as_str()) })
        .insert(Header { key: "ce_id", value: Some(e.id.as_str()) })
        .insert(Header { key: "ce_type", value: Some(e.ty.as_str()) })
        .insert(Header { key: "ce_source", value: Some(e.source.as_str()) })
        .insert(Header { key: "ce_dataversion", value: Some(version.as_str()) });
    for (key, value) in
        [("traceparent", &e.traceparent), ("tracestate", &e.tracestate), ("ce_requestid", &e.request_id)]
    {
        if let Some(v) = value {
            h = h.insert(Header { key, value: Some(v.as_str()) });
        }
    }
    h
}

/// The value of header `key`, as text.
fn header<M: rdkafka::message::Message>(m: &M, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads `dlq` from the cursor group's committed offsets to the end: the dead letters (minus
/// replayed ones), oldest first, and each partition's end.
fn read_dlq(client: &ClientConfig, dlq: &str) -> Result<(Vec<DeadLetter>, TopicPartitionList), BusError> {
    let c = group_client(client, &format!("{dlq}.cursor"))?;
    let mut tpl = TopicPartitionList::new();
    for p in Conn::partitions(c.client(), dlq)? {
        tpl.add_partition(dlq, p);
    }
    let committed = c.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(kafka_error)?;
    let (mut assign, mut ends) = (TopicPartitionList::new(), TopicPartitionList::new());
    let mut remaining = HashMap::new();
    for e in committed.elements() {
        let (low, high) = c.fetch_watermarks(dlq, e.partition(), REQUEST_TIMEOUT).map_err(kafka_error)?;
        let from = match e.offset() {
            Offset::Offset(o) if o >= low => o,
            _ => low,
        };
        ends.add_partition_offset(dlq, e.partition(), Offset::Offset(high)).map_err(broker)?;
        if from < high {
            assign.add_partition_offset(dlq, e.partition(), Offset::Offset(from)).map_err(broker)?;
            remaining.insert(e.partition(), high);
        }
    }
    // (partition, offset, time, letter) and the replay markers: (partition, offset, event id).
    let (mut letters, mut markers) = (Vec::new(), Vec::new());
    if !remaining.is_empty() {
        c.assign(&assign).map_err(kafka_error)?;
        let deadline = std::time::Instant::now() + DLQ_READ_TIMEOUT;
        while !remaining.is_empty() {
            if std::time::Instant::now() >= deadline {
                return Err(BusError::Timeout(DLQ_READ_TIMEOUT));
            }
            let m = match c.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(kafka_error(e)),
            };
            let (p, o) = (m.partition(), m.offset());
            if remaining.get(&p).is_some_and(|high| o + 1 >= *high) {
                remaining.remove(&p);
            }
            if let Some(id) = header(&m, REPLAYED) {
                markers.push((p, o, id));
                continue;
            }
            let Ok(envelope) = Envelope::from_bytes(m.payload().unwrap_or_default()) else { continue };
            let letter = DeadLetter {
                envelope,
                group: header(&m, DEAD_GROUP).unwrap_or_default(),
                reason: header(&m, DEAD_REASON).unwrap_or_default(),
                attempts: header(&m, DEAD_ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0),
            };
            letters.push((p, o, m.timestamp().to_millis().unwrap_or(0), letter));
        }
    }
    letters.retain(|(p, o, _, l)| !markers.iter().any(|(mp, mo, id)| mp == p && mo > o && *id == l.envelope.id));
    letters.sort_by_key(|(p, o, t, _)| (*t, *p, *o));
    Ok((letters.into_iter().map(|(_, _, _, l)| l).collect(), ends))
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;

    /// A producer the cluster fences can publish nothing more: the publish that says so
    /// replaces it (librdkafka's own mock cluster answers one Produce with PRODUCER_FENCED), is
    /// reported as an outage (the outbox spends no attempt on it), and the next one goes out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_producer_is_replaced_and_publishing_goes_on() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let config = BusConfig { publish_timeout: Duration::from_secs(5), ..BusConfig::default() };
        let url = format!("kafka://{}", cluster.bootstrap_servers());
        let conn = Conn::connect(&url, &config).await.unwrap();
        conn.send("orders", Some("k"), b"first", OwnedHeaders::new()).await.unwrap();
        assert_eq!(conn.producer().0, 0);

        cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED]);
        let failed = conn.send("orders", Some("k"), b"second", OwnedHeaders::new()).await;
        assert!(matches!(failed, Err(BusError::Unavailable(_))), "{failed:?}");
        assert_eq!(conn.producer().0, 1, "a new producer took over");

        conn.send("orders", Some("k"), b"second", OwnedHeaders::new()).await.unwrap();
        assert_eq!(conn.producer().0, 1, "and stays");
        conn.close().await;
    }
}
