//! Outbox → broker → consumer, against the broker's raw publishing as the ceiling, in one run
//! on this machine, for NATS JetStream and Kafka.
//!
//! `cargo run --release -p keel-bench --bin events-bench [EVENTS] [nats|kafka …]` (default
//! 50 000, both brokers) with PostgreSQL and the brokers running locally
//! (`KEEL_TEST_POSTGRES_URL`, `KEEL_TEST_NATS_URL`, `KEEL_TEST_KAFKA_URL`; Kafka topics get
//! four partitions). For each broker it prints the raw publish rate, then for three runs — as fast as possible with sent rows kept
//! (`outbox.retention: 24h`), the same with rows deleted on send (`0s`), and producers paced at
//! 10 000 events/s — the end-to-end rate (first enqueue to last consumption), the producers'
//! own rate, the end-to-end latency p50/p99 and whether every event arrived exactly once.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel::config::Secret;
use keel::data::DatabaseConfig;
use keel::data::Db;
use keel::events::consumer::handler_fn;
use keel::events::outbox::Outbox;
use keel::events::{Bus, Consumer, ConsumerOptions, Envelope, SubscribeOptions};
use keel::events::{BusBackend, BusConfig, OutboxConfig};
use keel::testing::{TestDatabase, kafka_url, nats_url, postgres_url, unique_topic};
use tokio_util::sync::CancellationToken;

use keel_bench::BoxError;

fn micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

struct Outcome {
    rate: f64,
    /// Events/s the producers alone committed (the database's share of the ceiling).
    produced: f64,
    p50: f64,
    p99: f64,
    received: usize,
    distinct: usize,
}

/// Partitions of the Kafka topics (the consumer's handlers spread over them).
const KAFKA_PARTITIONS: u32 = 4;

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Nats,
    Kafka,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Self::Nats => "NATS",
            Self::Kafka => "Kafka",
        }
    }

    fn config(self) -> BusConfig {
        let mut cfg = BusConfig::default();
        match self {
            Self::Nats => {
                cfg.backend = BusBackend::Nats;
                cfg.url = Some(Secret::new(nats_url()));
            }
            Self::Kafka => {
                cfg.backend = BusBackend::Kafka;
                cfg.url = Some(Secret::new(kafka_url()));
                cfg.kafka.partitions = Some(KAFKA_PARTITIONS);
                cfg.kafka.replication_factor = Some(1);
            }
        }
        cfg
    }
}

/// `n` events through outbox → broker → consumer. `pace`: producers commit their batches of 100
/// on a schedule of that many events/s (latency at a load the pipeline keeps up with); `None`:
/// as fast as the database takes them (the throughput ceiling; latency then includes the
/// backlog).
async fn pipeline(broker: Broker, n: usize, retention: Duration, pace: Option<f64>) -> Result<Outcome, BoxError> {
    let test_db = TestDatabase::postgres(&postgres_url()).await?;
    let mut db_cfg = DatabaseConfig::default();
    db_cfg.pool.max_connections = 16;
    let db = Db::new("bench", test_db.url(), &db_cfg, None, &keel::telemetry::Metrics::new())?;
    db.clone().connect_in_background(CancellationToken::new()).await;
    keel::testing::create_events_tables(&db).await?;
    let bus = Bus::new(&broker.config())?;
    bus.connect().await?;

    let topic = unique_topic("bench");
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let seen = Arc::new(Mutex::new(HashSet::with_capacity(n)));
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, s, r) = (latencies.clone(), seen.clone(), received.clone());
    let handler = handler_fn(move |env: Envelope| {
        let (l, s, r) = (l.clone(), s.clone(), r.clone());
        async move {
            let at = env.data["at"].as_i64().unwrap_or(0);
            if let Ok(mut l) = l.lock() {
                l.push((micros() - at) as f64 / 1000.0);
            }
            if let Ok(mut s) = s.lock() {
                s.insert(env.id);
            }
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    });
    let stop = CancellationToken::new();
    let options = ConsumerOptions::default()
        .concurrency(128)
        .subscribe(SubscribeOptions::default().prefetch(512).ack_wait(Duration::from_secs(30)));
    let consumer =
        tokio::spawn(Consumer::new(bus.clone(), &topic, "bench", handler).options(options).run(stop.clone()));
    // Let the durable consumer exist (Kafka: its group be joined) before the first publish.
    tokio::time::sleep(Duration::from_millis(if broker == Broker::Kafka { 3000 } else { 500 })).await;

    let mut cfg = OutboxConfig::default();
    cfg.poll_interval = Duration::from_millis(5);
    cfg.batch_size = 1000;
    cfg.max_in_flight = 512;
    cfg.retention = retention;
    let outbox = Outbox::new(db.clone(), "bench", &cfg, None)?;
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));

    // Producers: 4 writers, 100 events per transaction (one multi-row INSERT), as fast as the
    // database takes them.
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (db, outbox, topic) = (db.clone(), outbox.clone(), topic.clone());
            tokio::spawn(async move {
                for batch in (w..n / 100).step_by(4) {
                    if let Some(rate) = pace {
                        let at = started + Duration::from_secs_f64(batch as f64 * 100.0 / rate);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    let mut tx = db.begin().await?;
                    let events: Vec<Envelope> = (0..100)
                        .map(|i| {
                            let data = serde_json::json!({ "n": batch * 100 + i, "at": micros() });
                            Envelope::raw("bench", "bench.event", 1, data)
                        })
                        .collect();
                    outbox.enqueue_all(&mut tx, &topic, &events).await?;
                    tx.commit().await?;
                    outbox.wake();
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let produced = n as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(300);
    while received.load(std::sync::atomic::Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    // Anything extra (a duplicate) would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    relay.await?;
    consumer.await?;
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    let distinct = seen.lock().map(|s| s.len()).unwrap_or(0);
    Ok(Outcome {
        rate: n as f64 / took.as_secs_f64(),
        produced,
        p50: pct(0.50),
        p99: pct(0.99),
        received: received.load(std::sync::atomic::Ordering::Relaxed),
        distinct,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    if keel::app::print_version_if_asked(&keel::build_info!().named("events-bench"), std::env::args_os()) {
        return ExitCode::SUCCESS;
    }
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let mut brokers: Vec<Broker> = std::env::args()
        .skip(2)
        .filter_map(|a| match a.as_str() {
            "nats" => Some(Broker::Nats),
            "kafka" => Some(Broker::Kafka),
            _ => None,
        })
        .collect();
    if brokers.is_empty() {
        brokers = vec![Broker::Nats, Broker::Kafka];
    }
    let mut ok = true;
    for broker in brokers {
        ok &= bench(broker, n).await;
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The raw rate and the three pipeline runs on `broker`; whether every event arrived once.
async fn bench(broker: Broker, n: usize) -> bool {
    let raw = match broker {
        Broker::Nats => keel_bench::raw_jetstream_publish(n).await,
        Broker::Kafka => keel_bench::raw_kafka_publish(n, KAFKA_PARTITIONS as i32).await,
    };
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raw {} publish failed: {e}", broker.name());
            return false;
        }
    };
    println!("raw {} publish (256 in flight): {raw:.0} msgs/s", broker.name());
    let mut ok = true;
    let day = Duration::from_secs(24 * 3600);
    let runs = [
        ("max rate, retention 24h (rows marked sent)", day, None),
        ("max rate, retention 0s (rows deleted on send)", Duration::ZERO, None),
        ("paced 10 000/s, retention 24h", day, Some(10_000.0)),
    ];
    for (label, retention, pace) in runs {
        match pipeline(broker, n, retention, pace).await {
            Ok(o) => {
                println!("outbox -> {} -> consumer, {label}:", broker.name());
                println!(
                    "   {:.0} events/s ({:.0} % of raw publish; producers alone {:.0}/s), end-to-end latency p50 {:.1} ms, p99 {:.1} ms",
                    o.rate,
                    100.0 * o.rate / raw,
                    o.produced,
                    o.p50,
                    o.p99
                );
                println!(
                    "  events: {n} written, {} received, {} distinct (zero loss: {})",
                    o.received,
                    o.distinct,
                    o.distinct == n
                );
                ok &= o.distinct == n;
            }
            Err(e) => {
                eprintln!("{} pipeline ({label}) failed: {e}", broker.name());
                ok = false;
            }
        }
    }
    ok
}
