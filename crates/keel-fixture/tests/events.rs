//! Events against the real brokers and databases: bus semantics on every backend (in-process,
//! NATS JetStream, RabbitMQ, Kafka), the outbox on PostgreSQL, MariaDB and SQLite, consumers with an
//! inbox, dead-lettering and replay, broker cuts, killed consumers, `NO_ROUTE`, two relays.
//!
//! Every test uses its own topic names and database. NATS, RabbitMQ and Kafka tests skip when the broker
//! is unreachable, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::config::Secret;
use keel::data::DatabaseConfig;
use keel::data::{Backend, Db};
use keel::events::consumer::handler_fn;
use keel::events::outbox::Outbox;
use keel::events::{Bus, Consumer, ConsumerOptions, Envelope, Failure, Handler, Message, SubscribeOptions};
use keel::events::{BusBackend, BusConfig, OutboxConfig};
use keel::testing::{self, FaultProxy, Mode, TestDatabase, unique_topic};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Set-up helpers

/// Polls `f` until it returns `Some`, failing the test after `limit`.
async fn until<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Broker {
    InProcess,
    Nats,
    Rabbit,
    Kafka,
}

fn bus_config(broker: Broker, url: Option<String>) -> BusConfig {
    let mut cfg = BusConfig::default();
    cfg.backend = match broker {
        Broker::InProcess => BusBackend::InProcess,
        Broker::Nats => BusBackend::Nats,
        Broker::Rabbit => BusBackend::Rabbitmq,
        Broker::Kafka => BusBackend::Kafka,
    };
    // One partition: the shared tests check the order of unkeyed messages, which Kafka keeps
    // only within a partition. `two_kafka_consumers_keep_each_keys_order` uses several.
    cfg.kafka.partitions = Some(1);
    cfg.kafka.replication_factor = Some(1);
    cfg.url = url.map(Secret::new);
    cfg.publish_timeout = Duration::from_secs(3);
    cfg.connect.attempt_timeout = Duration::from_secs(3);
    cfg
}

/// A connected bus, or `None` (skipped) when the broker is not running here.
async fn bus(broker: Broker) -> Option<Bus> {
    let url = match broker {
        Broker::InProcess => return Some(Bus::in_process(10_000)),
        Broker::Nats => testing::nats_url(),
        Broker::Rabbit => testing::rabbitmq_url(),
        Broker::Kafka => testing::kafka_url(),
    };
    if !testing::require(&format!("{broker:?}"), &url) {
        return None;
    }
    let bus = Bus::new(&bus_config(broker, Some(url))).unwrap();
    bus.connect().await.unwrap();
    Some(bus)
}

async fn database(backend: Backend) -> Option<(TestDatabase, Db)> {
    let db = match backend {
        Backend::Postgres => {
            if !testing::require("PostgreSQL", &testing::postgres_url()) {
                return None;
            }
            TestDatabase::postgres(&testing::postgres_url()).await.unwrap()
        }
        Backend::MySql => {
            if !testing::require("MariaDB", &testing::mysql_url()) {
                return None;
            }
            TestDatabase::mysql(&testing::mysql_url()).await.unwrap()
        }
        Backend::Sqlite => TestDatabase::sqlite().unwrap(),
    };
    let mut cfg = DatabaseConfig::default();
    cfg.pool.max_connections = 8;
    let kdb = Db::new("events-test", db.url(), &cfg, None, &keel::telemetry::Metrics::new()).unwrap();
    kdb.clone().connect_in_background(CancellationToken::new()).await;
    keel::testing::create_events_tables(&kdb).await.unwrap();
    sqlx::query("CREATE TABLE effects (message_id VARCHAR(64) NOT NULL)").execute(kdb.pool()).await.unwrap();
    Some((db, kdb))
}

fn fast_outbox() -> OutboxConfig {
    let mut cfg = OutboxConfig::default();
    cfg.poll_interval = Duration::from_millis(20);
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.lease = Duration::from_secs(10);
    cfg
}

fn event(n: usize) -> Envelope {
    Envelope::raw("events-test", "thing.happened", 1, serde_json::json!({ "n": n }))
}

/// Records every envelope id a consumer saw (with repeats).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for id in self.ids() {
            *m.entry(id).or_default() += 1;
        }
        m
    }
    /// A consumer of `topic` (group `g`) handling one message at a time into this record, until
    /// `stop`.
    fn one_at_a_time(&self, bus: &Bus, topic: &str, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let consumer =
            Consumer::new(bus.clone(), topic, "g", self.handler()).options(ConsumerOptions::default().concurrency(1));
        tokio::spawn(consumer.run(stop.clone()))
    }

    fn handler(&self) -> impl Handler {
        let seen = self.clone();
        handler_fn(move |env: Envelope| {
            let seen = seen.clone();
            async move {
                seen.0.lock().unwrap().push(env.id);
                Ok(())
            }
        })
    }
}

/// Writes an effect row in the inbox transaction (so "applied once" is countable).
struct Effect;

impl Handler for Effect {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let id = msg.envelope().id.clone();
        let tx = msg.tx().ok_or_else(|| Failure::permanent("no inbox"))?;
        sqlx::query(sqlx::AssertSqlSafe("INSERT INTO effects (message_id) VALUES ('".to_owned() + &id + "')"))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn effects(db: &Db) -> (i64, i64) {
    use sqlx::Row;
    let row =
        sqlx::query("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM effects").fetch_one(db.pool()).await.unwrap();
    (row.try_get(0).unwrap(), row.try_get(1).unwrap())
}

fn quick_consumer() -> ConsumerOptions {
    ConsumerOptions::default()
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .subscribe(SubscribeOptions::default().ack_wait(Duration::from_secs(2)))
}

// ---------------------------------------------------------------------------------------------
// Bus semantics, the same on every backend

async fn next(s: &mut keel::events::Subscription) -> keel::events::Delivery {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("a delivery").unwrap().unwrap()
}

async fn bus_semantics(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    let topic = unique_topic("sem");
    let opts = SubscribeOptions::default().ack_wait(Duration::from_secs(2));
    // RabbitMQ refuses (NO_ROUTE) until a group's queue exists: subscribe first, as consumers do.
    let mut a = bus.subscribe(&topic, "a", &opts).await.unwrap();
    let mut b = bus.subscribe(&topic, "b", &opts).await.unwrap();
    let (e1, e2) = (event(1), event(2));
    bus.publish(&topic, &e1).await.unwrap();
    bus.publish(&topic, &e2).await.unwrap();

    // Every group gets every message.
    let d = next(&mut b).await;
    assert_eq!(d.envelope().unwrap().id, e1.id);
    d.ack().await.unwrap();
    let d = next(&mut b).await;
    assert_eq!(d.envelope().unwrap().id, e2.id);
    d.ack().await.unwrap();

    // Group a: the first delivery is retried after a delay, the second dropped unsettled (as if
    // the consumer crashed); both come back with a higher attempt number.
    let d = next(&mut a).await;
    assert_eq!((d.envelope().unwrap().id.clone(), d.attempt()), (e1.id.clone(), 1));
    d.retry(Duration::from_millis(100)).await.unwrap();
    let d = next(&mut a).await;
    assert_eq!((d.envelope().unwrap().id.clone(), d.attempt()), (e2.id.clone(), 1));
    drop(d);
    let mut again = HashMap::new();
    for _ in 0..2 {
        let d = next(&mut a).await;
        again.insert(d.envelope().unwrap().id.clone(), d);
    }
    let d1 = again.remove(&e1.id).expect("the retried message comes back");
    assert_eq!(d1.attempt(), 2, "{broker:?}: retried delivery carries attempt 2");
    d1.ack().await.unwrap();
    let d = again.remove(&e2.id).expect("a dropped delivery is redelivered");
    assert!(d.attempt() >= 2, "{broker:?}: redelivery counts as an attempt ({})", d.attempt());
    d.dead_letter("a", "boom: cannot handle").await.unwrap();

    // The DLQ has it, with group, reason and attempts.
    let dead = until(Duration::from_secs(5), || async {
        let l = bus.dlq_list(&topic, 10).await.unwrap();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.id, e2.id);
    assert_eq!(dead[0].group, "a");
    assert!(dead[0].reason.contains("boom"), "{:?}", dead[0]);
    assert!(dead[0].attempts >= 2);
    // Listing does not remove.
    assert_eq!(bus.dlq_list(&topic, 10).await.unwrap().len(), 1);

    // Replay goes back to group a only, with a fresh attempt count.
    assert_eq!(bus.dlq_replay(&topic, None).await.unwrap(), 1);
    let d = next(&mut a).await;
    assert_eq!((d.envelope().unwrap().id.clone(), d.attempt()), (e2.id.clone(), 1));
    d.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(700), b.next()).await.is_err(),
        "{broker:?}: group b must not see a replay meant for a"
    );
    assert!(bus.dlq_list(&topic, 10).await.unwrap().is_empty());

    // Purge.
    bus.publish(&topic, &event(3)).await.unwrap();
    next(&mut b).await.ack().await.unwrap();
    next(&mut a).await.dead_letter("a", "again").await.unwrap();
    until(Duration::from_secs(5), || async { (bus.dlq_list(&topic, 10).await.unwrap().len() == 1).then_some(()) })
        .await;
    assert_eq!(bus.dlq_purge(&topic).await.unwrap(), 1);
    assert!(bus.dlq_list(&topic, 10).await.unwrap().is_empty());

    // Discard one: the other stays, and nothing is delivered again.
    let (e4, e5) = (event(4), event(5));
    for e in [&e4, &e5] {
        bus.publish(&topic, e).await.unwrap();
        next(&mut b).await.ack().await.unwrap();
        next(&mut a).await.dead_letter("a", "poison").await.unwrap();
    }
    until(Duration::from_secs(5), || async { (bus.dlq_list(&topic, 10).await.unwrap().len() == 2).then_some(()) })
        .await;
    assert_eq!(bus.dlq_discard(&topic, &e4.id).await.unwrap(), 1);
    assert_eq!(bus.dlq_discard(&topic, "no-such-event").await.unwrap(), 0);
    let left = bus.dlq_list(&topic, 10).await.unwrap();
    assert_eq!(left.iter().map(|d| d.envelope.id.as_str()).collect::<Vec<_>>(), [e5.id.as_str()], "{broker:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), a.next()).await.is_err(),
        "{broker:?}: a discarded letter is not delivered"
    );
    assert_eq!(bus.dlq_replay(&topic, None).await.unwrap(), 1, "{broker:?}: only the one kept is replayed");
    // Replayed and dead again at once: a new dead letter, not a duplicate of the first.
    let d = next(&mut a).await;
    assert_eq!(d.envelope().unwrap().id, e5.id);
    d.dead_letter("a", "still poison").await.unwrap();
    let again = until(Duration::from_secs(5), || async {
        let l = bus.dlq_list(&topic, 10).await.unwrap();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!((again.len(), again[0].reason.as_str()), (1, "still poison"), "{broker:?}");
    assert_eq!(bus.dlq_replay(&topic, Some(&e5.id)).await.unwrap(), 1);
    let d = next(&mut a).await;
    assert_eq!(d.envelope().unwrap().id, e5.id);
    d.ack().await.unwrap();
    assert!(bus.dlq_list(&topic, 10).await.unwrap().is_empty());
    bus.close().await;
}

/// The finding: after a burst of out-of-order edits the worker's counters took minutes to catch
/// up while `consumer_lag_messages` read 0, because messages waiting out a retry's delay were
/// not counted. They are now, on every backend.
async fn lag_counts_messages_waiting_for_a_retry(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    let topic = unique_topic("lag");
    let opts = SubscribeOptions::default().ack_wait(Duration::from_secs(30));
    let mut s = bus.subscribe(&topic, "g", &opts).await.unwrap();
    bus.publish(&topic, &event(1)).await.unwrap();
    bus.publish(&topic, &event(2)).await.unwrap();
    let first = next(&mut s).await;
    first.retry(Duration::from_secs(60)).await.unwrap();
    next(&mut s).await.ack().await.unwrap();
    // One message handled, one waiting a minute for its retry. Kafka counts by committed
    // offset: the handled message is after the waiting one, so it is counted until that one is.
    let want = if matches!(broker, Broker::Kafka) { 2 } else { 1 };
    let lag = until(Duration::from_secs(10), || async { bus.lag(&topic, "g").await.ok().filter(|n| *n == want) }).await;
    assert_eq!(lag, want, "{broker:?}");
    bus.close().await;
}

/// Kafka reports a group's lag per partition (the `partition` label of
/// `consumer_lag_messages`); the total is their sum. Other brokers report one figure.
#[tokio::test]
async fn kafka_lag_is_reported_per_partition() {
    if !testing::require("Kafka", &testing::kafka_url()) {
        return;
    }
    let mut cfg = bus_config(Broker::Kafka, Some(testing::kafka_url()));
    cfg.kafka.partitions = Some(4);
    let kafka = Bus::new(&cfg).unwrap();
    kafka.connect().await.unwrap();
    let topic = unique_topic("partlag");
    // Subscribed once so the group exists; nothing is handled.
    drop(kafka.subscribe(&topic, "g", &SubscribeOptions::default()).await.unwrap());
    for k in 0..40 {
        let mut e = event(k);
        e.key = Some(format!("key-{k}"));
        kafka.publish(&topic, &e).await.unwrap();
    }
    let lag = until(Duration::from_secs(10), || async {
        kafka.partition_lag(&topic, "g").await.ok().filter(|l| l.total() == 40)
    })
    .await;
    let partitions: Vec<Option<i32>> = lag.partitions.iter().map(|(p, _)| *p).collect();
    assert_eq!(partitions, [Some(0), Some(1), Some(2), Some(3)]);
    assert!(lag.partitions.iter().filter(|(_, n)| *n > 0).count() >= 2, "keys spread: {lag:?}");
    assert_eq!(kafka.lag(&topic, "g").await.unwrap(), 40);
    kafka.close().await;

    let Some(local) = bus(Broker::InProcess).await else { return };
    let lag = local.partition_lag(&topic, "g").await.unwrap();
    assert_eq!(lag.partitions, [(None, 0)], "no partitions on the in-process bus");
}

#[tokio::test]
async fn lag_counts_retries_in_process() {
    lag_counts_messages_waiting_for_a_retry(Broker::InProcess).await;
}

#[tokio::test]
async fn lag_counts_retries_nats() {
    lag_counts_messages_waiting_for_a_retry(Broker::Nats).await;
}

#[tokio::test]
async fn lag_counts_retries_rabbitmq() {
    lag_counts_messages_waiting_for_a_retry(Broker::Rabbit).await;
}

#[tokio::test]
async fn lag_counts_retries_kafka() {
    lag_counts_messages_waiting_for_a_retry(Broker::Kafka).await;
}

#[tokio::test]
async fn bus_semantics_in_process() {
    bus_semantics(Broker::InProcess).await;
}

#[tokio::test]
async fn bus_semantics_nats() {
    bus_semantics(Broker::Nats).await;
}

#[tokio::test]
async fn bus_semantics_rabbitmq() {
    bus_semantics(Broker::Rabbit).await;
}

#[tokio::test]
async fn bus_semantics_kafka() {
    bus_semantics(Broker::Kafka).await;
}

/// Fan-out: each subscriber gets every message published while it is there, beside (not
/// instead of) the durable group, and a retried delivery comes back to the same subscriber.
async fn fan_out(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    let topic = unique_topic("fan");
    let durable = SubscribeOptions::default();
    let fan = SubscribeOptions::default().fan_out();
    let mut group = bus.subscribe(&topic, "g", &durable).await.unwrap();
    let mut one = bus.subscribe(&topic, "follow", &fan).await.unwrap();
    let mut two = bus.subscribe(&topic, "follow", &fan).await.unwrap();
    assert_ne!(one.group(), two.group(), "{broker:?}: each fan-out subscriber is a group of its own");
    assert!(one.group().starts_with("follow."), "{}", one.group());
    let (e1, e2) = (event(1), event(2));
    bus.publish(&topic, &e1).await.unwrap();
    bus.publish(&topic, &e2).await.unwrap();
    for sub in [&mut one, &mut two] {
        for e in [&e1, &e2] {
            let d = next(sub).await;
            assert_eq!(&d.envelope().unwrap().id, &e.id, "{broker:?}: in order, to every subscriber");
            d.ack().await.unwrap();
        }
    }
    // The durable group shares nothing with them: it gets both as well.
    for e in [&e1, &e2] {
        let d = next(&mut group).await;
        assert_eq!(&d.envelope().unwrap().id, &e.id);
        d.ack().await.unwrap();
    }
    // A retry comes back to the same fan-out subscriber only.
    let e3 = event(3);
    bus.publish(&topic, &e3).await.unwrap();
    next(&mut two).await.ack().await.unwrap();
    next(&mut group).await.ack().await.unwrap();
    let d = next(&mut one).await;
    d.retry(Duration::from_millis(100)).await.unwrap();
    let d = next(&mut one).await;
    assert_eq!((d.envelope().unwrap().id.clone(), d.attempt()), (e3.id.clone(), 2), "{broker:?}");
    d.ack().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), two.next()).await.is_err(), "{broker:?}");
    // A late subscriber sees only what comes after it, and leaving removes its queue.
    let mut late = bus.subscribe(&topic, "follow", &fan).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), late.next()).await.is_err(), "{broker:?}");
    drop(one);
    drop(two);
    let e4 = event(4);
    bus.publish(&topic, &e4).await.unwrap();
    for sub in [&mut late, &mut group] {
        let d = next(sub).await;
        assert_eq!(d.envelope().unwrap().id, e4.id, "{broker:?}");
        d.ack().await.unwrap();
    }
    bus.close().await;
}

#[tokio::test]
async fn fan_out_in_process() {
    fan_out(Broker::InProcess).await;
    // Fan-out subscribers never take the backlog kept for the first durable group, and a
    // dropped one stops counting against the bus's bound.
    let bus = Bus::in_process(2);
    let fan = bus.subscribe("backlog", "follow", &SubscribeOptions::default().fan_out()).await.unwrap();
    let (e1, e2) = (event(1), event(2));
    bus.publish("backlog", &e1).await.unwrap();
    bus.publish("backlog", &e2).await.unwrap();
    drop(fan);
    bus.publish("backlog", &event(3)).await.unwrap_err();
    let mut g = bus.subscribe("backlog", "g", &SubscribeOptions::default()).await.unwrap();
    for e in [e1, e2] {
        let d = next(&mut g).await;
        assert_eq!(d.envelope().unwrap().id, e.id);
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn fan_out_nats() {
    fan_out(Broker::Nats).await;
}

#[tokio::test]
async fn fan_out_rabbitmq() {
    fan_out(Broker::Rabbit).await;
}

#[tokio::test]
async fn fan_out_kafka() {
    fan_out(Broker::Kafka).await;
}

#[tokio::test]
async fn in_process_bus_is_bounded() {
    let bus = Bus::in_process(2);
    let _sub = bus.subscribe("bounded", "g", &SubscribeOptions::default()).await.unwrap();
    bus.publish("bounded", &event(1)).await.unwrap();
    bus.publish("bounded", &event(2)).await.unwrap();
    let err = bus.publish("bounded", &event(3)).await.unwrap_err();
    assert!(matches!(err, keel::events::BusError::Full(_)), "{err}");
    assert!(bus.publish("bad topic", &event(4)).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Consumers: poison messages, retries, DLQ, replay

async fn poison_goes_to_dlq_and_replay_brings_it_back(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    let topic = unique_topic("poison");
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled = Seen::default();
    let (h, s) = (healed.clone(), handled.clone());
    let handler = handler_fn(move |env: Envelope| {
        let (h, s) = (h.clone(), s.clone());
        async move {
            if env.data["poison"] == true && !h.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Failure::retry("cannot parse the widget"));
            }
            s.0.lock().unwrap().push(env.id);
            Ok(())
        }
    });
    let stop = CancellationToken::new();
    let consumer = Consumer::new(bus.clone(), &topic, "worker", handler).options(quick_consumer());
    let task = tokio::spawn(consumer.run(stop.clone()));
    let poison = Envelope::raw("t", "thing", 1, serde_json::json!({"poison": true}));
    let fine = event(1);
    until(Duration::from_secs(10), || async { bus.publish(&topic, &poison).await.ok() }).await;
    bus.publish(&topic, &fine).await.unwrap();

    let dead = until(Duration::from_secs(15), || async {
        let l = bus.dlq_list(&topic, 10).await.unwrap();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(dead[0].envelope.id, poison.id);
    assert_eq!(dead[0].attempts, 3, "{broker:?}: dead after max_attempts");
    assert!(dead[0].reason.contains("gave up after 3 attempts: cannot parse the widget"), "{}", dead[0].reason);
    assert_eq!(handled.ids(), vec![fine.id.clone()]);

    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(bus.dlq_replay(&topic, Some(&poison.id)).await.unwrap(), 1);
    until(Duration::from_secs(10), || async { (handled.ids().len() == 2).then_some(()) }).await;
    assert_eq!(handled.counts()[&poison.id], 1);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("consumer stops").unwrap();
}

/// The finding: out-of-order messages waiting for their predecessor were retried on the failure
/// backoff (up to 58 s), so a burst of 21 edits to one record took minutes to catch up. Early
/// messages are tried again every `order_retry` and spend no attempt: here 20 versions arrive
/// newest first with a failure backoff of 30 s and 3 attempts, and all are applied in order
/// within seconds, none dead-lettered.
async fn early_messages_are_retried_promptly_without_spending_attempts(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    let topic = unique_topic("early");
    let applied = Arc::new(Mutex::new(Vec::<i64>::new()));
    let a = applied.clone();
    let handler = handler_fn(move |env: Envelope| {
        let a = a.clone();
        async move {
            let version = env.data["version"].as_i64().unwrap_or_default();
            let mut applied = a.lock().unwrap();
            let at = applied.last().copied().unwrap_or(0);
            if version > at + 1 {
                return Err(Failure::early(format!("version {version} waits for {}", at + 1)));
            }
            if version == at + 1 {
                applied.push(version);
            }
            Ok(())
        }
    });
    let stop = CancellationToken::new();
    let options = ConsumerOptions::default()
        .max_attempts(3)
        .retry_backoff(Duration::from_secs(30), Duration::from_secs(60))
        .order_wait(Duration::from_millis(50), Duration::from_secs(60))
        .subscribe(SubscribeOptions::default().ack_wait(Duration::from_secs(5)));
    let consumer = Consumer::new(bus.clone(), &topic, "projection", handler).options(options);
    let task = tokio::spawn(consumer.run(stop.clone()));
    let versions: Vec<Envelope> =
        (1..=20).map(|v| Envelope::raw("t", "record.changed", 1, serde_json::json!({ "version": v }))).collect();
    until(Duration::from_secs(10), || async { bus.publish(&topic, &versions[19]).await.ok() }).await;
    for env in versions.iter().rev().skip(1) {
        bus.publish(&topic, env).await.unwrap();
    }
    until(Duration::from_secs(20), || async { (applied.lock().unwrap().len() == 20).then_some(()) }).await;
    assert_eq!(*applied.lock().unwrap(), (1..=20).collect::<Vec<_>>(), "{broker:?}");
    assert!(bus.dlq_list(&topic, 10).await.unwrap().is_empty(), "{broker:?}: nothing dead-lettered");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("consumer stops").unwrap();
}

#[tokio::test]
async fn early_messages_in_process() {
    early_messages_are_retried_promptly_without_spending_attempts(Broker::InProcess).await;
}

#[tokio::test]
async fn early_messages_nats() {
    early_messages_are_retried_promptly_without_spending_attempts(Broker::Nats).await;
}

#[tokio::test]
async fn early_messages_rabbitmq() {
    early_messages_are_retried_promptly_without_spending_attempts(Broker::Rabbit).await;
}

#[tokio::test]
async fn early_messages_kafka() {
    early_messages_are_retried_promptly_without_spending_attempts(Broker::Kafka).await;
}

#[tokio::test]
async fn poison_message_dlq_and_replay_in_process() {
    poison_goes_to_dlq_and_replay_brings_it_back(Broker::InProcess).await;
}

#[tokio::test]
async fn poison_message_dlq_and_replay_nats() {
    poison_goes_to_dlq_and_replay_brings_it_back(Broker::Nats).await;
}

#[tokio::test]
async fn poison_message_dlq_and_replay_rabbitmq() {
    poison_goes_to_dlq_and_replay_brings_it_back(Broker::Rabbit).await;
}

#[tokio::test]
async fn poison_message_dlq_and_replay_kafka() {
    poison_goes_to_dlq_and_replay_brings_it_back(Broker::Kafka).await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_not_fatal() {
    let bus = Bus::in_process(100);
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_env: Envelope| {
        let c = c.clone();
        async move {
            if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                panic!("handler bug");
            }
            Ok(())
        }
    });
    let stop = CancellationToken::new();
    let task =
        tokio::spawn(Consumer::new(bus.clone(), "panics", "g", handler).options(quick_consumer()).run(stop.clone()));
    bus.publish("panics", &event(1)).await.unwrap();
    until(Duration::from_secs(5), || async { (calls.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(()) })
        .await;
    assert!(bus.dlq_list("panics", 10).await.unwrap().is_empty());
    stop.cancel();
    task.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Inbox: a redelivery never applies an effect twice; a killed consumer's message comes back

async fn killed_consumer_is_redelivered_and_applied_once(broker: Broker, backend: Backend) {
    let Some(bus) = bus(broker).await else { return };
    let Some((_guard, db)) = database(backend).await else { return };
    let topic = unique_topic("killed");

    // First consumer: writes the effect in the inbox transaction, then hangs before committing.
    struct Hang;
    impl Handler for Hang {
        async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
            Effect.handle(msg).await?;
            std::future::pending::<()>().await;
            Ok(())
        }
    }
    let opts = quick_consumer().handler_timeout(Duration::from_secs(60));
    let stop = CancellationToken::new();
    let first = tokio::spawn(
        Consumer::new(bus.clone(), &topic, "effects", Hang).inbox(db.clone()).options(opts.clone()).run(stop.clone()),
    );
    let ev = event(1);
    until(Duration::from_secs(10), || async { bus.publish(&topic, &ev).await.ok() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Killed mid-message: the task is dropped without settling or committing.
    first.abort();
    let _ = first.await;
    assert_eq!(effects(&db).await.0, 0, "the killed handler's transaction rolled back");

    let stop2 = CancellationToken::new();
    let second = tokio::spawn(
        Consumer::new(bus.clone(), &topic, "effects", Effect).inbox(db.clone()).options(opts).run(stop2.clone()),
    );
    until(Duration::from_secs(20), || async { (effects(&db).await.0 == 1).then_some(()) }).await;

    // The same message again (a broker redelivery after a lost ack): acknowledged, not applied.
    bus.publish(&topic, &ev).await.unwrap();
    let other = event(2);
    bus.publish(&topic, &other).await.unwrap();
    until(Duration::from_secs(10), || async { (effects(&db).await.1 == 2).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(effects(&db).await, (2, 2), "{broker:?}/{backend}: each effect applied exactly once");
    stop.cancel();
    stop2.cancel();
    tokio::time::timeout(Duration::from_secs(10), second).await.expect("consumer stops").unwrap();
}

#[tokio::test]
async fn killed_consumer_applied_once_in_process_sqlite() {
    killed_consumer_is_redelivered_and_applied_once(Broker::InProcess, Backend::Sqlite).await;
}

#[tokio::test]
async fn killed_consumer_applied_once_nats_postgres() {
    killed_consumer_is_redelivered_and_applied_once(Broker::Nats, Backend::Postgres).await;
}

#[tokio::test]
async fn killed_consumer_applied_once_rabbitmq_mariadb() {
    killed_consumer_is_redelivered_and_applied_once(Broker::Rabbit, Backend::MySql).await;
}

#[tokio::test]
async fn killed_consumer_applied_once_kafka_postgres() {
    killed_consumer_is_redelivered_and_applied_once(Broker::Kafka, Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// Consumers wait out an outage of their inbox database instead of dead-lettering

/// Writes an effect in the inbox transaction and records the attempt it succeeded at.
struct Recorder(Arc<Mutex<Vec<u32>>>);

impl Handler for Recorder {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        Effect.handle(msg).await?;
        self.0.lock().unwrap().push(msg.attempt());
        Ok(())
    }
}

/// The value of the sample `name{labels}` in `metrics`, 0 if absent.
fn sample(metrics: &keel::telemetry::Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The consumer's PostgreSQL inbox (reached through a fault proxy, so only this test's
/// connections break) refuses connections for a few seconds while messages are published.
/// With two attempts and 50-200 ms between them, a consumer spending attempts on the outage
/// would dead-letter them; this one pauses, and after the outage handles each message exactly
/// once at attempt 1.
async fn consumer_waits_out_an_inbox_outage(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    if !testing::require("PostgreSQL", &testing::postgres_url()) {
        return;
    }
    let test_db = TestDatabase::postgres(&testing::postgres_url()).await.unwrap();
    let target = testing::host_port(test_db.url()).unwrap();
    let proxy = FaultProxy::start(target, Mode::Forward).await.unwrap();
    let url = test_db.url().replacen(&target.to_string(), &proxy.host_port(), 1);
    let mut cfg = DatabaseConfig::default();
    cfg.pool.max_connections = 4;
    cfg.pool.acquire_timeout = Duration::from_secs(1);
    let db = Db::new("events-test", &url, &cfg, None, &keel::telemetry::Metrics::new()).unwrap();
    db.clone().connect_in_background(CancellationToken::new()).await;
    keel::testing::create_events_tables(&db).await.unwrap();
    sqlx::query("CREATE TABLE effects (message_id VARCHAR(64) NOT NULL)").execute(db.pool()).await.unwrap();
    // What a service's health loop does: the readiness check marks the database down and up.
    let stop = CancellationToken::new();
    let health = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            use keel::health::HealthCheck;
            let check = db.readiness_check();
            while !stop.is_cancelled() {
                let _ = check.check().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let topic = unique_topic("outage");
    let metrics = keel::telemetry::Metrics::new();
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let opts = ConsumerOptions::default()
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .pause_poll(Duration::from_millis(50))
        .subscribe(SubscribeOptions::default().ack_wait(Duration::from_secs(10)));
    let consumer = tokio::spawn(
        Consumer::new(bus.clone(), &topic, "effects", Recorder(attempts.clone()))
            .inbox(db.clone())
            .options(opts)
            .with_metrics(keel::events::ConsumerMetrics::new(&metrics).unwrap())
            .run(stop.clone()),
    );
    let before: Vec<Envelope> = (0..5).map(event).collect();
    until(Duration::from_secs(10), || async { bus.publish(&topic, &before[0]).await.ok() }).await;
    for ev in &before[1..] {
        bus.publish(&topic, ev).await.unwrap();
    }
    until(Duration::from_secs(10), || async { (effects(&db).await.1 == 5).then_some(()) }).await;

    proxy.take_down();
    for n in 5..25 {
        bus.publish(&topic, &event(n)).await.unwrap();
    }
    let paused = format!("consumer_paused{{group=\"effects\",topic=\"{topic}\"}}");
    until(Duration::from_secs(10), || async { (sample(&metrics, &paused) == 1.0).then_some(()) }).await;
    // Long enough for two attempts 50-200 ms apart to have been spent many times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sample(&metrics, &paused), 1.0, "{broker:?}: paused for the whole outage");
    assert!(bus.dlq_list(&topic, 10).await.unwrap().is_empty(), "{broker:?}: nothing dead-lettered in the outage");

    proxy.restore();
    until(Duration::from_secs(20), || async { (effects(&db).await.1 == 25).then_some(()) }).await;
    until(Duration::from_secs(5), || async { (sample(&metrics, &paused) == 0.0).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(effects(&db).await, (25, 25), "{broker:?}: every message applied exactly once");
    assert!(bus.dlq_list(&topic, 10).await.unwrap().is_empty(), "{broker:?}: nothing dead-lettered");
    let attempts = attempts.lock().unwrap().clone();
    assert!(attempts.iter().all(|a| *a == 1), "{broker:?}: no attempt spent on the outage: {attempts:?}");
    let pauses = format!("consumer_pauses_total{{group=\"effects\",topic=\"{topic}\"}}");
    assert!(sample(&metrics, &pauses) >= 1.0);
    for outcome in ["retry", "dead"] {
        let name = format!("consumer_messages_total{{group=\"effects\",outcome=\"{outcome}\",topic=\"{topic}\"}}");
        assert_eq!(sample(&metrics, &name), 0.0, "{broker:?}: no {outcome}");
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer).await.expect("consumer stops").unwrap();
    health.await.unwrap();
    db.close().await;
}

#[tokio::test]
async fn consumer_waits_out_an_inbox_outage_in_process() {
    consumer_waits_out_an_inbox_outage(Broker::InProcess).await;
}

#[tokio::test]
async fn consumer_waits_out_an_inbox_outage_nats() {
    consumer_waits_out_an_inbox_outage(Broker::Nats).await;
}

#[tokio::test]
async fn consumer_waits_out_an_inbox_outage_rabbitmq() {
    consumer_waits_out_an_inbox_outage(Broker::Rabbit).await;
}

#[tokio::test]
async fn consumer_waits_out_an_inbox_outage_kafka() {
    consumer_waits_out_an_inbox_outage(Broker::Kafka).await;
}

/// A delivery held with in-progress acks is not redelivered after `ack_wait` (JetStream).
#[tokio::test]
async fn nats_in_progress_keeps_a_held_delivery() {
    let Some(bus) = bus(Broker::Nats).await else { return };
    let topic = unique_topic("held");
    let opts = SubscribeOptions::default().ack_wait(Duration::from_secs(1));
    let mut sub = bus.subscribe(&topic, "g", &opts).await.unwrap();
    bus.publish(&topic, &event(1)).await.unwrap();
    let held = next(&mut sub).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.in_progress().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next()).await.is_err(),
        "held for 3 s with a 1 s ack_wait, yet not redelivered"
    );
    assert_eq!(held.attempt(), 1);
    held.ack().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Outbox

async fn enqueue(outbox: &Outbox, db: &Db, topic: &str, n: usize, commit: bool) -> Vec<String> {
    let mut tx = db.begin().await.unwrap();
    let events: Vec<Envelope> = (0..n).map(event).collect();
    // Half one by one, half in bulk: both paths write the same rows.
    let (one_by_one, bulk) = events.split_at(n / 2);
    for e in one_by_one {
        outbox.enqueue(&mut tx, topic, e).await.unwrap();
    }
    outbox.enqueue_all(&mut tx, topic, bulk).await.unwrap();
    let ids = events.into_iter().map(|e| e.id).collect();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    ids
}

async fn outbox_publishes_committed_events_only(backend: Backend) {
    let Some((_guard, db)) = database(backend).await else { return };
    let bus = Bus::in_process(10_000);
    let topic = unique_topic("ob");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(Consumer::new(bus.clone(), &topic, "g", seen.handler()).run(stop.clone()));
    let metrics = keel::telemetry::Metrics::new();
    let outbox = Outbox::new(db.clone(), "events-test", &fast_outbox(), Some(&metrics)).unwrap();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));

    let committed = enqueue(&outbox, &db, &topic, 50, true).await;
    let rolled_back = enqueue(&outbox, &db, &topic, 5, false).await;
    outbox.wake();
    until(Duration::from_secs(15), || async { (seen.ids().len() >= 50).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = seen.counts();
    assert_eq!(counts.len(), 50, "{backend}");
    assert!(committed.iter().all(|id| counts.get(id) == Some(&1)), "{backend}: each committed event once");
    assert!(rolled_back.iter().all(|id| !counts.contains_key(id)), "{backend}: rolled back events never published");
    assert_eq!(outbox.pending().await.unwrap().0, 0);
    let text = metrics.render();
    assert!(text.contains("outbox_published_total 50"), "{text}");
    assert_eq!(outbox.prune().await.unwrap(), 0, "{backend}: nothing sent before the retention");

    // Oversized events and bad topics are refused at enqueue, with a clear error.
    let mut tx = db.begin().await.unwrap();
    let big = Envelope::raw("t", "big", 1, serde_json::json!("x".repeat(keel::events::outbox::MAX_PAYLOAD)));
    let err = outbox.enqueue(&mut tx, &topic, &big).await.unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert!(outbox.enqueue(&mut tx, "no spaces allowed", &event(1)).await.is_err());
    drop(tx);

    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
}

#[tokio::test]
async fn outbox_postgres() {
    outbox_publishes_committed_events_only(Backend::Postgres).await;
}

#[tokio::test]
async fn outbox_mariadb() {
    outbox_publishes_committed_events_only(Backend::MySql).await;
}

#[tokio::test]
async fn outbox_sqlite() {
    outbox_publishes_committed_events_only(Backend::Sqlite).await;
}

/// A service's transaction enqueues one event, the relay claims a batch meanwhile, then the
/// transaction enqueues another. On MySQL/MariaDB under repeatable read, the claim locked the
/// gap at the end of the table, the second insert waited for it, the claim's lease waited for
/// the first insert's row: a deadlock, and the service's transaction failed.
async fn an_open_enqueue_survives_a_claim(backend: Backend) {
    let Some((_guard, db)) = database(backend).await else { return };
    let bus = Bus::in_process(10_000);
    let topic = unique_topic("open");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(Consumer::new(bus.clone(), &topic, "g", seen.handler()).run(stop.clone()));
    let mut cfg = fast_outbox();
    cfg.retention = Duration::from_millis(1);
    let outbox = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let mut ids = enqueue(&outbox, &db, &topic, 50, true).await;

    let mut tx = db.begin().await.unwrap();
    let (first, second) = (event(1_000), event(1_001));
    outbox.enqueue(&mut tx, &topic, &first).await.unwrap();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));
    // The relay claims the 50 committed rows now (and, under the old locking, waited here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    outbox.enqueue(&mut tx, &topic, &second).await.unwrap_or_else(|e| panic!("{backend}: {e}"));
    tx.commit().await.unwrap();
    ids.extend([first.id, second.id]);
    outbox.wake();

    until(Duration::from_secs(15), || async { (seen.ids().len() >= 52).then_some(()) }).await;
    let counts = seen.counts();
    assert!(ids.iter().all(|id| counts.get(id) == Some(&1)), "{backend}: each event once");
    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
    // Sent rows past the retention are pruned (on MySQL/MariaDB at READ COMMITTED as well).
    until(Duration::from_secs(15), || async { (outbox.pending().await.unwrap().0 == 0).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    outbox.prune().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keel_outbox").fetch_one(db.pool()).await.unwrap();
    assert_eq!(left, 0, "{backend}");
}

#[tokio::test]
async fn open_enqueue_mariadb() {
    an_open_enqueue_survives_a_claim(Backend::MySql).await;
}

#[tokio::test]
async fn open_enqueue_postgres() {
    an_open_enqueue_survives_a_claim(Backend::Postgres).await;
}

async fn two_relays_publish_each_event_once(backend: Backend) {
    let Some((_guard, db)) = database(backend).await else { return };
    let bus = Bus::in_process(100_000);
    let topic = unique_topic("two");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(
        Consumer::new(bus.clone(), &topic, "g", seen.handler())
            .options(ConsumerOptions::default().concurrency(32))
            .run(stop.clone()),
    );
    let mut cfg = fast_outbox();
    cfg.batch_size = 50;
    let (m1, m2) = (keel::telemetry::Metrics::new(), keel::telemetry::Metrics::new());
    let r1 = Outbox::new(db.clone(), "events-test", &cfg, Some(&m1)).unwrap();
    let r2 = Outbox::new(db.clone(), "events-test", &cfg, Some(&m2)).unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(enqueue(&r1, &db, &topic, 100, true).await);
    }
    let t1 = tokio::spawn(r1.clone().run(bus.clone(), stop.clone()));
    let t2 = tokio::spawn(r2.clone().run(bus.clone(), stop.clone()));
    until(Duration::from_secs(30), || async { (seen.ids().len() >= 1000).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = seen.counts();
    assert_eq!(seen.ids().len(), 1000, "{backend}: no event published twice");
    assert!(ids.iter().all(|id| counts.get(id) == Some(&1)));
    let published = |m: &keel::telemetry::Metrics| -> u64 {
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix("outbox_published_total "))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let (p1, p2) = (published(&m1), published(&m2));
    assert_eq!(p1 + p2, 1000, "{backend}: {p1} + {p2}");
    assert!(p1 > 0 && p2 > 0, "{backend}: both relays took a share ({p1}, {p2})");
    stop.cancel();
    for t in [t1, t2, consumer] {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn two_relays_postgres() {
    two_relays_publish_each_event_once(Backend::Postgres).await;
}

#[tokio::test]
async fn two_relays_mariadb() {
    two_relays_publish_each_event_once(Backend::MySql).await;
}

#[tokio::test]
async fn outbox_keeps_per_key_order_across_failures() {
    let Some((_guard, db)) = database(Backend::Postgres).await else { return };
    let bus = Bus::in_process(10_000);
    let topic = unique_topic("order");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = seen.one_at_a_time(&bus, &topic, &stop);
    let outbox = Outbox::new(db.clone(), "events-test", &fast_outbox(), None).unwrap();
    let mut tx = db.begin().await.unwrap();
    let mut want: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..60 {
        let key = format!("k{}", i % 3);
        let e = event(i).with_key(&key);
        outbox.enqueue(&mut tx, &topic, &e).await.unwrap();
        want.entry(key).or_default().push(e.id);
    }
    tx.commit().await.unwrap();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));
    until(Duration::from_secs(15), || async { (seen.ids().len() >= 60).then_some(()) }).await;
    let got = seen.ids();
    for ids in want.values() {
        let order: Vec<&String> = got.iter().filter(|id| ids.contains(id)).collect();
        assert_eq!(order, ids.iter().collect::<Vec<_>>(), "events of one key arrive in order");
    }
    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
}

/// Ids per key in enqueue order, for `backlog` rows over `keys` keys, committed in one go.
async fn enqueue_keyed(
    outbox: &Outbox,
    db: &Db,
    topic: &str,
    rows: usize,
    keys: usize,
) -> HashMap<String, Vec<String>> {
    let mut want: HashMap<String, Vec<String>> = HashMap::new();
    let mut tx = db.begin().await.unwrap();
    let envelopes: Vec<Envelope> = (0..rows)
        .map(|i| {
            let key = format!("k{}", i % keys);
            let e = event(i).with_key(&key);
            want.entry(key).or_default().push(e.id.clone());
            e
        })
        .collect();
    outbox.enqueue_all(&mut tx, topic, &envelopes).await.unwrap();
    tx.commit().await.unwrap();
    want
}

/// Every key's events arrived in enqueue order, each once.
fn assert_per_key_order(backend: Backend, got: &[String], want: &HashMap<String, Vec<String>>) {
    let total: usize = want.values().map(Vec::len).sum();
    assert_eq!(got.len(), total, "{backend}: every event once");
    for (key, ids) in want {
        let order: Vec<&String> = got.iter().filter(|id| ids.contains(id)).collect();
        assert_eq!(order, ids.iter().collect::<Vec<_>>(), "{backend}: events of {key} arrive in order");
    }
}

/// A backlog over a few keys goes out in runs: a claim takes many consecutive rows of each key,
/// not one per key, and the relay claims again at once instead of waiting for its poll. (The
/// claim that took one row per key and then slept drained this backlog at 3 rows a minute.)
async fn a_backlog_over_few_keys_drains_in_runs(backend: Backend) {
    let Some((_guard, db)) = database(backend).await else { return };
    let bus = Bus::in_process(10_000);
    let topic = unique_topic("runs");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = seen.one_at_a_time(&bus, &topic, &stop);
    let mut cfg = fast_outbox();
    cfg.batch_size = 100;
    cfg.poll_interval = Duration::from_secs(60);
    let metrics = keel::telemetry::Metrics::new();
    let outbox = Outbox::new(db.clone(), "events-test", &cfg, Some(&metrics)).unwrap();
    let want = enqueue_keyed(&outbox, &db, &topic, 600, 3).await;
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));
    until(Duration::from_secs(30), || async { (seen.ids().len() >= 600).then_some(()) }).await;
    until(Duration::from_secs(5), || async { (outbox.pending().await.unwrap().0 == 0).then_some(()) }).await;
    assert_per_key_order(backend, &seen.ids(), &want);
    let claims: u64 = metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("outbox_claim_duration_seconds_count "))
        .map_or(0, |v| v.trim().parse().unwrap());
    assert!((6..=20).contains(&claims), "{backend}: 600 rows in batches of 100 took {claims} claims");
    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
}

#[tokio::test]
async fn backlog_runs_postgres() {
    a_backlog_over_few_keys_drains_in_runs(Backend::Postgres).await;
}

#[tokio::test]
async fn backlog_runs_mariadb() {
    a_backlog_over_few_keys_drains_in_runs(Backend::MySql).await;
}

#[tokio::test]
async fn backlog_runs_sqlite() {
    a_backlog_over_few_keys_drains_in_runs(Backend::Sqlite).await;
}

/// Two relays on one keyed backlog: each event once, every key in order, whatever relay took it.
async fn two_relays_keep_per_key_order(backend: Backend) {
    let Some((_guard, db)) = database(backend).await else { return };
    let bus = Bus::in_process(100_000);
    let topic = unique_topic("tworder");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = seen.one_at_a_time(&bus, &topic, &stop);
    let mut cfg = fast_outbox();
    cfg.batch_size = 40;
    let r1 = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let r2 = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let mut want = enqueue_keyed(&r1, &db, &topic, 1000, 25).await;
    let t1 = tokio::spawn(r1.clone().run(bus.clone(), stop.clone()));
    let t2 = tokio::spawn(r2.clone().run(bus.clone(), stop.clone()));
    // More rows while both relays work.
    for _ in 0..5 {
        let more = enqueue_keyed(&r2, &db, &topic, 100, 25).await;
        for (k, ids) in more {
            want.entry(k).or_default().extend(ids);
        }
        r1.wake();
        r2.wake();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(Duration::from_secs(60), || async { (seen.ids().len() >= 1500).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_per_key_order(backend, &seen.ids(), &want);
    stop.cancel();
    for t in [t1, t2, consumer] {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn two_relays_keyed_postgres() {
    two_relays_keep_per_key_order(Backend::Postgres).await;
}

#[tokio::test]
async fn two_relays_keyed_mariadb() {
    two_relays_keep_per_key_order(Backend::MySql).await;
}

#[tokio::test]
async fn two_relays_keyed_sqlite() {
    two_relays_keep_per_key_order(Backend::Sqlite).await;
}

/// Rows of a key that waits are passed over: behind a dead relay's lease
/// on the head of a 100-row key, batches of 10 still carry every other key. (The claim that
/// looked only at the `4 × batch_size` oldest pending rows found nothing but the stuck key's, and
/// every key stalled until the lease ended.)
async fn a_stuck_key_holds_up_no_other(backend: Backend) {
    let Some((_guard, db)) = database(backend).await else { return };
    let bus = Bus::in_process(10_000);
    let topic = unique_topic("stuck");
    let seen = Seen::default();
    let stop = CancellationToken::new();
    let consumer = seen.one_at_a_time(&bus, &topic, &stop);
    let mut cfg = fast_outbox();
    cfg.batch_size = 10;
    let outbox = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let mut want = enqueue_keyed(&outbox, &db, &topic, 100, 1).await;
    let head: i64 = sqlx::query_scalar("SELECT MIN(seq) FROM keel_outbox").fetch_one(db.pool()).await.unwrap();
    // A relay that died holding the head of k0, its lease running far beyond the test.
    let far = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
        .unwrap()
        + 3_600_000;
    let dead = db.sql("UPDATE keel_outbox SET locked_until = $1, claim = 'dead:0' WHERE seq = $2").into_owned();
    sqlx::query(sqlx::AssertSqlSafe(dead)).bind(far).bind(head).execute(db.pool()).await.unwrap();
    let mut others: HashMap<String, Vec<String>> = HashMap::new();
    let mut tx = db.begin().await.unwrap();
    for i in 0..50 {
        let e = event(i).with_key(format!("other{}", i % 5));
        outbox.enqueue(&mut tx, &topic, &e).await.unwrap();
        others.entry(e.key.clone().unwrap()).or_default().push(e.id);
    }
    tx.commit().await.unwrap();
    let other_ids: std::collections::HashSet<String> = others.values().flatten().cloned().collect();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));
    until(Duration::from_secs(15), || async { (seen.ids().len() >= 50).then_some(()) }).await;
    let got = seen.ids();
    assert!(got.iter().all(|id| other_ids.contains(id)), "{backend}: nothing of the stuck key went out");
    assert_per_key_order(backend, &got, &others);

    // The dead relay's lease ends: the stuck key follows, in order.
    let ended = db.sql("UPDATE keel_outbox SET locked_until = 1 WHERE seq = $1").into_owned();
    sqlx::query(sqlx::AssertSqlSafe(ended)).bind(head).execute(db.pool()).await.unwrap();
    outbox.wake();
    until(Duration::from_secs(15), || async { (seen.ids().len() >= 150).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    want.extend(others);
    assert_per_key_order(backend, &seen.ids(), &want);
    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
}

#[tokio::test]
async fn stuck_key_postgres() {
    a_stuck_key_holds_up_no_other(Backend::Postgres).await;
}

#[tokio::test]
async fn stuck_key_mariadb() {
    a_stuck_key_holds_up_no_other(Backend::MySql).await;
}

#[tokio::test]
async fn stuck_key_sqlite() {
    a_stuck_key_holds_up_no_other(Backend::Sqlite).await;
}

/// A relay whose publish hangs (its broker connection stalled) keeps renewing its leases: a
/// second relay leaves its rows alone for many leases. Killed, its rows are taken over by the
/// second relay within a lease or so (not a fixed 30 s), each published once, in order.
#[tokio::test]
async fn a_working_relay_keeps_its_rows_and_a_dead_ones_are_taken_over() {
    if !testing::require("NATS", &testing::nats_url()) {
        return;
    }
    let Some((_guard, db)) = database(Backend::Postgres).await else { return };
    let target = testing::host_port(&testing::nats_url()).unwrap();
    let proxy = FaultProxy::start(target, Mode::Forward).await.unwrap();
    let mut hung = bus_config(Broker::Nats, Some(format!("nats://{}", proxy.host_port())));
    hung.publish_timeout = Duration::from_secs(30);
    let hung = Bus::new(&hung).unwrap();
    hung.connect().await.unwrap();
    let direct = bus(Broker::Nats).await.unwrap();
    let topic = unique_topic("lease");
    let stop = CancellationToken::new();
    let seen = Seen::default();
    let consumer = seen.one_at_a_time(&direct, &topic, &stop);
    until(Duration::from_secs(10), || async { direct.lag(&topic, "g").await.ok() }).await;
    let mut cfg = fast_outbox();
    cfg.lease = Duration::from_millis(400);
    let first = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let second = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let want = enqueue_keyed(&first, &db, &topic, 20, 2).await;
    proxy.set_mode(Mode::Stall);
    let stop_first = CancellationToken::new();
    let dying = tokio::spawn(first.clone().run(hung.clone(), stop_first.clone()));
    let claims = || async {
        let claims: Vec<Option<String>> = sqlx::query_scalar("SELECT DISTINCT claim FROM keel_outbox WHERE status = 0")
            .fetch_all(db.pool())
            .await
            .unwrap();
        claims
    };
    let held = until(Duration::from_secs(10), || async {
        let c = claims().await;
        (c.len() == 1 && c[0].is_some()).then(|| c[0].clone())
    })
    .await;
    let relay = tokio::spawn(second.clone().run(direct.clone(), stop.clone()));
    // Five leases later the hung relay still holds every row, under the same claim.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(claims().await, vec![held], "the working relay renewed its leases");
    assert!(seen.ids().is_empty(), "the second relay left the first's rows alone");

    // The hung relay dies: the second takes its rows over.
    let killed = std::time::Instant::now();
    dying.abort();
    let _ = dying.await;
    until(Duration::from_secs(15), || async { (seen.ids().len() >= 20).then_some(()) }).await;
    eprintln!("taken over {:?} after the relay died (lease {:?})", killed.elapsed(), cfg.lease);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_per_key_order(Backend::Postgres, &seen.ids(), &want);
    stop.cancel();
    for t in [relay, consumer] {
        t.await.unwrap();
    }
    drop(stop_first);
}

/// Keeps the newest version of each key (`latest`), in the inbox transaction, and records every
/// write that took effect.
#[derive(Clone, Default)]
struct Latest(Arc<Mutex<Vec<(String, i64)>>>);

impl Handler for Latest {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let data = &msg.envelope().data;
        let (key, version) = (data["k"].as_str().unwrap_or_default().to_owned(), data["v"].as_i64().unwrap_or(0));
        // Handlers of different speeds, as on busy instances: a later version often overtakes.
        let spread = msg.envelope().id.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        tokio::time::sleep(Duration::from_millis(spread % 50)).await;
        let tx = msg.tx().ok_or_else(|| Failure::permanent("no inbox"))?;
        // The version guard: an older version than the one stored changes nothing.
        let done = sqlx::query(
            "INSERT INTO latest (k, version) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET version = excluded.version \
             WHERE latest.version < excluded.version",
        )
        .bind(&key)
        .bind(version)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            // The row stays locked until the inbox transaction commits: the next write of this
            // key waits for it, so the writes are recorded in the order they take effect.
            self.0.lock().unwrap().push((key, version));
        }
        Ok(())
    }
}

/// Three instances of one group on a queue they share (NATS, RabbitMQ) can be handed one key's
/// messages out of order. A handler that keeps the newest version still applies each key's
/// versions in increasing order and ends on the last: the pattern City Events' consumers use
/// (docs/events.md, several instances of a group).
async fn three_instances_apply_each_keys_versions_in_order(broker: Broker) {
    let Some(bus) = bus(broker).await else { return };
    let Some((_guard, db)) = database(Backend::Postgres).await else { return };
    sqlx::query("CREATE TABLE latest (k VARCHAR(64) PRIMARY KEY, version BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let topic = unique_topic("versions");
    let stop = CancellationToken::new();
    let latest = Latest::default();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let consumer = Consumer::new(bus.clone(), &topic, "g", latest.clone())
            .inbox(db.clone())
            .options(quick_consumer().concurrency(8));
        instances.push(tokio::spawn(consumer.run(stop.clone())));
    }
    until(Duration::from_secs(10), || async { bus.lag(&topic, "g").await.ok() }).await;
    let (keys, versions) = (10, 30);
    for v in 1..=versions {
        for k in 0..keys {
            let e =
                Envelope::raw("events-test", "thing.versioned", 1, serde_json::json!({ "k": format!("k{k}"), "v": v }))
                    .with_key(format!("k{k}"));
            bus.publish(&topic, &e).await.unwrap();
        }
    }
    until(Duration::from_secs(60), || async {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM latest WHERE version = $1")
            .bind(i64::from(versions))
            .fetch_one(db.pool())
            .await
            .unwrap();
        (done == keys).then_some(())
    })
    .await;
    let written = latest.0.lock().unwrap().clone();
    for k in 0..keys {
        let key = format!("k{k}");
        let applied: Vec<i64> = written.iter().filter(|(w, _)| *w == key).map(|(_, v)| *v).collect();
        assert!(applied.windows(2).all(|w| w[0] < w[1]), "{broker:?}: {key} applied out of order: {applied:?}");
        assert_eq!(applied.last(), Some(&i64::from(versions)), "{broker:?}: {key} ends on its last version");
    }
    eprintln!(
        "{broker:?}: {} of {} messages took effect; the rest came after a newer version of their key",
        written.len(),
        keys * i64::from(versions)
    );
    stop.cancel();
    for t in instances {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn three_instances_keep_each_keys_newest_nats() {
    three_instances_apply_each_keys_versions_in_order(Broker::Nats).await;
}

#[tokio::test]
async fn three_instances_keep_each_keys_newest_rabbitmq() {
    three_instances_apply_each_keys_versions_in_order(Broker::Rabbit).await;
}

/// A key whose oldest row cannot be published (RabbitMQ `NO_ROUTE`) holds back its later rows,
/// and only its own: other keys keep flowing, and the held key follows in order once the row
/// gets through.
#[tokio::test]
async fn a_failing_row_holds_back_its_key_only() {
    let Some(bus) = bus(Broker::Rabbit).await else { return };
    let Some((_guard, db)) = database(Backend::Postgres).await else { return };
    let (nowhere, open) = (unique_topic("held"), unique_topic("flowing"));
    let stop = CancellationToken::new();
    let seen = Seen::default();
    let consumer = seen.one_at_a_time(&bus, &open, &stop);
    // The consumer's queue exists before anything is published to `open`.
    until(Duration::from_secs(10), || async { bus.lag(&open, "g").await.ok() }).await;
    let mut cfg = fast_outbox();
    cfg.max_attempts = 1000;
    let outbox = Outbox::new(db.clone(), "events-test", &cfg, None).unwrap();
    let head = event(0).with_key("a");
    let mut tx = db.begin().await.unwrap();
    outbox.enqueue(&mut tx, &nowhere, &head).await.unwrap();
    let a_later: Vec<Envelope> = (1..4).map(|i| event(i).with_key("a")).collect();
    outbox.enqueue_all(&mut tx, &open, &a_later).await.unwrap();
    let b: Vec<Envelope> = (4..10).map(|i| event(i).with_key("b")).collect();
    outbox.enqueue_all(&mut tx, &open, &b).await.unwrap();
    tx.commit().await.unwrap();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));

    let b_ids: Vec<String> = b.iter().map(|e| e.id.clone()).collect();
    until(Duration::from_secs(15), || async { (seen.ids() == b_ids).then_some(()) }).await;
    // The head has failed at least once by now; key a's later rows have not gone out.
    until(Duration::from_secs(10), || async {
        let attempts: i32 =
            sqlx::query_scalar("SELECT attempts FROM keel_outbox WHERE partition_key = 'a' ORDER BY seq LIMIT 1")
                .fetch_one(db.pool())
                .await
                .unwrap();
        (attempts >= 2).then_some(())
    })
    .await;
    assert_eq!(seen.ids(), b_ids, "key a's later rows wait for its head");

    // A queue is bound to the head's topic: the head goes, then a's later rows, in order.
    let seen_head = Seen::default();
    let late = tokio::spawn(Consumer::new(bus.clone(), &nowhere, "g", seen_head.handler()).run(stop.clone()));
    until(Duration::from_secs(20), || async { (seen_head.ids() == vec![head.id.clone()]).then_some(()) }).await;
    let mut want = b_ids.clone();
    want.extend(a_later.iter().map(|e| e.id.clone()));
    until(Duration::from_secs(20), || async { (seen.ids() == want).then_some(()) }).await;
    stop.cancel();
    for t in [relay, consumer, late] {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn rabbitmq_no_route_is_not_marked_sent_and_is_retried() {
    let Some(bus) = bus(Broker::Rabbit).await else { return };
    let Some((_guard, db)) = database(Backend::Postgres).await else { return };
    let topic = unique_topic("noroute");
    let metrics = keel::telemetry::Metrics::new();
    let outbox = Outbox::new(db.clone(), "events-test", &fast_outbox(), Some(&metrics)).unwrap();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));
    let ids = enqueue(&outbox, &db, &topic, 1, true).await;
    outbox.wake();

    // No queue is bound to the topic yet: NO_ROUTE. The row stays pending with the reason.
    let err: String = until(Duration::from_secs(10), || async {
        let row =
            sqlx::query_as::<_, (i32, i32, Option<String>)>("SELECT status, attempts, last_error FROM keel_outbox")
                .fetch_one(db.pool())
                .await
                .unwrap();
        (row.1 >= 1).then(|| {
            assert_eq!(row.0, 0, "not marked sent");
            row.2.unwrap_or_default()
        })
    })
    .await;
    assert!(err.contains("unroutable"), "{err}");
    assert!(metrics.render().contains("outbox_publish_failures_total"), "failures counted");

    // A consumer group appears (its queue is bound): the retry gets through.
    let seen = Seen::default();
    let consumer = tokio::spawn(Consumer::new(bus.clone(), &topic, "late", seen.handler()).run(stop.clone()));
    until(Duration::from_secs(20), || async { (seen.ids() == ids).then_some(()) }).await;
    until(Duration::from_secs(5), || async { (outbox.pending().await.unwrap().0 == 0).then_some(()) }).await;
    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
}

#[tokio::test]
async fn nats_cut_outbox_grows_then_drains_every_event_once() {
    if !testing::require("NATS", &testing::nats_url()) {
        return;
    }
    let Some((_guard, db)) = database(Backend::Postgres).await else { return };
    let target = testing::host_port(&testing::nats_url()).unwrap();
    let proxy = FaultProxy::start(target, Mode::Forward).await.unwrap();
    // The relay reaches NATS through the proxy; the consumer directly.
    let relay_bus = Bus::new(&bus_config(Broker::Nats, Some(format!("nats://{}", proxy.host_port())))).unwrap();
    relay_bus.connect().await.unwrap();
    let consumer_bus = bus(Broker::Nats).await.unwrap();
    let topic = unique_topic("cut");
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(
        Consumer::new(consumer_bus.clone(), &topic, "effects", Effect)
            .inbox(db.clone())
            .options(ConsumerOptions::default().concurrency(16))
            .run(stop.clone()),
    );
    let metrics = keel::telemetry::Metrics::new();
    let outbox = Outbox::new(db.clone(), "events-test", &fast_outbox(), Some(&metrics)).unwrap();
    let relay = tokio::spawn(outbox.clone().run(relay_bus.clone(), stop.clone()));
    let paused = || metrics.render().lines().any(|l| l == "outbox_relay_paused 1");

    let mut written = 0usize;
    let mut seen_paused = false;
    let mut max_pending = 0u64;
    let writer_started = std::time::Instant::now();
    let mut cut_at = None;
    while writer_started.elapsed() < Duration::from_secs(14) {
        enqueue(&outbox, &db, &topic, 20, true).await;
        written += 20;
        outbox.wake();
        if cut_at.is_none() && writer_started.elapsed() > Duration::from_secs(2) {
            proxy.take_down();
            proxy.cut();
            cut_at = Some(std::time::Instant::now());
        }
        if let Some(t) = cut_at {
            max_pending = max_pending.max(outbox.pending().await.unwrap().0);
            seen_paused |= paused();
            if t.elapsed() > Duration::from_secs(10) {
                proxy.restore();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    assert!(max_pending >= 200, "the outbox grew while the broker was cut ({max_pending})");
    assert!(seen_paused, "outbox_relay_paused showed the wait for the broker");
    until(Duration::from_secs(90), || async { (outbox.pending().await.unwrap().0 == 0).then_some(()) }).await;
    let spent: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM keel_outbox WHERE attempts > 0").fetch_one(db.pool()).await.unwrap();
    assert_eq!(spent, 0, "the broker's outage spent no row's attempts");
    assert!(!paused(), "the relay resumed");
    until(Duration::from_secs(60), || async { (effects(&db).await.1 == written as i64).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(effects(&db).await, (written as i64, written as i64), "every event delivered and applied once");
    stop.cancel();
    relay.await.unwrap();
    consumer.await.unwrap();
}

#[test]
fn keels_tables_are_created_only_by_keel_events() {
    // keel-events applies its own migrations: no service, example or other crate may carry a
    // copy of them (the copies would run again, or drift).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut found = Vec::new();
    let mut dirs = vec![root.join("crates"), root.join("services"), root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("keel-events") || path.ends_with("target") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                let text = std::fs::read_to_string(&path).unwrap().to_ascii_lowercase();
                let name = path.file_name().unwrap().to_string_lossy().to_ascii_lowercase();
                if name.contains("keel_events") || text.contains("keel_outbox") || text.contains("keel_inbox") {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    assert!(found.is_empty(), "copies of keel-events' migrations outside keel-events: {found:?}");
}

// ---------------------------------------------------------------------------------------------
// Kafka: a consumer group of two instances keeps each key's order

/// Two instances of one consumer group (two connections, as two processes would have) on a
/// topic of four partitions; the second joins while the first is working, so the group
/// rebalances mid-stream. Ten keys' messages are interleaved and the handlers take a little
/// time at random, concurrently. At the end every message was handled, both instances took
/// some, and each key's messages were handled in the order they were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kafka_consumers_keep_each_keys_order() {
    if !testing::require("Kafka", &testing::kafka_url()) {
        return;
    }
    let connect = || async {
        let mut cfg = bus_config(Broker::Kafka, Some(testing::kafka_url()));
        cfg.kafka.partitions = Some(4);
        let bus = Bus::new(&cfg).unwrap();
        bus.connect().await.unwrap();
        bus
    };
    let (producer, one, two) = (connect().await, connect().await, connect().await);
    let topic = unique_topic("ordered");
    // (instance, key, sequence) in the order the handlers ran.
    let log: Arc<Mutex<Vec<(usize, String, u64)>>> = Arc::default();
    let handler = |instance: usize| {
        let log = log.clone();
        handler_fn(move |env: Envelope| {
            let log = log.clone();
            async move {
                let key = env.key.clone().unwrap_or_default();
                let seq = env.data["seq"].as_u64().unwrap_or_default();
                log.lock().unwrap().push((instance, key, seq));
                tokio::time::sleep(Duration::from_millis(rand_ms(env.id.as_bytes()))).await;
                Ok(())
            }
        })
    };
    let opts = ConsumerOptions::default().concurrency(8);
    let stop = CancellationToken::new();
    let first =
        tokio::spawn(Consumer::new(one.clone(), &topic, "ordered", handler(1)).options(opts.clone()).run(stop.clone()));
    let (keys, per_key) = (10usize, 20u64);
    let publish = |from: u64, to: u64| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            for seq in from..to {
                for k in 0..keys {
                    let mut e = Envelope::raw("order-test", "thing.changed", 1, serde_json::json!({ "seq": seq }));
                    e.key = Some(format!("key-{k}"));
                    until(Duration::from_secs(10), || async { producer.publish(&topic, &e).await.ok() }).await;
                }
            }
        }
    };
    publish(0, per_key).await;
    let second =
        tokio::spawn(Consumer::new(two.clone(), &topic, "ordered", handler(2)).options(opts).run(stop.clone()));
    // More rounds, a little apart, until the second instance has joined and taken some (the
    // group rebalances while the first is working), and some after.
    let mut rounds = per_key;
    let took = |i: usize| log.lock().unwrap().iter().filter(|(n, _, _)| *n == i).count();
    while took(2) == 0 || rounds < 2 * per_key {
        assert!(rounds < 4000, "the second instance never took a message");
        publish(rounds, rounds + 1).await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let per_key = rounds;
    let total = keys * usize::try_from(per_key).unwrap();
    until(Duration::from_secs(60), || async {
        let log = log.lock().unwrap();
        let distinct: std::collections::HashSet<_> = log.iter().map(|(_, k, s)| (k.clone(), *s)).collect();
        (distinct.len() == total).then_some(())
    })
    .await;
    stop.cancel();
    for task in [first, second] {
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("consumer stops").unwrap();
    }
    let log = log.lock().unwrap().clone();
    let by = |i: usize| log.iter().filter(|(n, _, _)| *n == i).count();
    assert!(by(1) > 0 && by(2) > 0, "both instances took messages: {} and {}", by(1), by(2));
    // A message handed back in the rebalance may run again (the inbox absorbs that); its key's
    // first runs must still be in publication order.
    let mut next: HashMap<String, u64> = HashMap::new();
    for (_, key, seq) in &log {
        let want = next.entry(key.clone()).or_insert(0);
        if *seq == *want {
            *want += 1;
        } else {
            assert!(*seq < *want, "{key}: message {seq} handled before {want}");
        }
    }
    assert!(next.values().all(|n| *n == per_key), "{next:?}");
    for bus in [producer, one, two] {
        bus.close().await;
    }
}

/// A few milliseconds, different per message, without a random-number dependency.
fn rand_ms(seed: &[u8]) -> u64 {
    seed.iter().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b))) % 5
}

/// A subscription whose service takes nothing for a while (a consumer paused for a dependency)
/// with far more published than its buffer holds, records produced in batches: once it takes
/// again, every message arrives, in order, none twice. Reading in the middle of a record batch
/// after a pause lost the rest of the batch on the test broker; partition queues never do that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_kafka_buffer_loses_nothing() {
    let Some(bus) = bus(Broker::Kafka).await else { return };
    let topic = unique_topic("full");
    let mut sub = bus.subscribe(&topic, "g", &SubscribeOptions::default().prefetch(8)).await.unwrap();
    let sent: Vec<Envelope> = (0..2000).map(event).collect();
    let results = futures_util::future::join_all(sent.iter().map(|e| bus.publish(&topic, e))).await;
    assert!(results.iter().all(Result::is_ok), "published");
    // Taking nothing: the buffer fills, librdkafka's queue fills, fetching stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let d = next(&mut sub).await;
        got.push(d.envelope().unwrap().id.clone());
        d.ack().await.unwrap();
        if got.len() % 500 == 0 {
            // Pauses now and then, with the buffer full again.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let want: Vec<String> = sent.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, want, "every message, in order (one partition), none twice");
    bus.close().await;
}

/// Two consumers of one topic in one group would share their metrics, readiness check and
/// console row: the second is refused at start-up, naming both.
#[tokio::test]
async fn a_second_consumer_of_the_same_topic_and_group_is_refused() {
    let noop = || handler_fn(|_env: Envelope| async { Ok::<(), Failure>(()) });
    let service = keel::Service::new(keel::BuildInfo::new("twice", "1.0.0", None, "test")).setup(move |s| {
        let bus = s.bus()?;
        s.consume(Consumer::new(bus.clone(), "orders", "billing", noop()))?;
        s.consume(Consumer::new(bus.clone(), "orders", "shipping", noop()))?;
        s.consume(Consumer::new(bus, "orders", "billing", noop()))?;
        Ok(axum::Router::new())
    });
    let loaded = keel::app::Loader::new("twice", keel::config::Profile::Test)
        .env([
            ("TWICE__HTTP__PORT".to_owned(), "0".to_owned()),
            ("TWICE__HTTP__ADDR".to_owned(), "127.0.0.1".to_owned()),
        ])
        .load()
        .unwrap();
    let Err(err) = keel::app::start(service, loaded).await else {
        panic!("a second consumer of orders/billing started")
    };
    let err = err.to_string();
    assert!(err.contains("`orders` in group `billing` is already running"), "{err}");
}

/// A RabbitMQ bus nothing publishes to is ready again once the broker is back: the readiness
/// check redials (lapin does not reconnect by itself), or an idle service would stay out of
/// rotation, kept away from the traffic that could have reconnected it. `keel audit` found it
/// on examples/symbols (docs/audit.md).
#[tokio::test]
async fn an_idle_rabbitmq_bus_is_ready_again_after_an_outage() {
    use keel::health::{HealthCheck, Outcome};
    let url = testing::rabbitmq_url();
    if !testing::require("RabbitMQ", &url) {
        return;
    }
    let target = testing::host_port(&url).unwrap();
    let proxy = FaultProxy::start(target, Mode::Forward).await.unwrap();
    let through = url.replace(&target.to_string(), &proxy.host_port()).replace("localhost:5672", &proxy.host_port());
    assert!(through.contains(&proxy.host_port()), "{through}");
    let bus = Bus::new(&bus_config(Broker::Rabbit, Some(through))).unwrap();
    bus.connect().await.unwrap();
    let check = bus.readiness_check();
    let up = || async { matches!(check.check().await, Outcome::Up) };
    assert!(up().await);

    proxy.take_down();
    until(Duration::from_secs(10), || async { (!up().await).then_some(()) }).await;
    proxy.restore();
    let back = std::time::Instant::now();
    until(Duration::from_secs(10), || async { up().await.then_some(()) }).await;
    eprintln!("ready again {:?} after the broker returned", back.elapsed());
    assert!(bus.is_connected());
}
