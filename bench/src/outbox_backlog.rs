//! The outbox relay draining a backlog: 100 000 pending rows (by default) spread over no key,
//! 10 keys and 10 000 keys, published to NATS JetStream with confirms, in one run on this
//! machine, with raw JetStream publishing (256 acks in flight) as the ceiling.
//!
//! `cargo run --release -p keel-bench --bin outbox-backlog [ROWS]` with PostgreSQL and NATS
//! running locally (`KEEL_TEST_POSTGRES_URL`, `KEEL_TEST_NATS_URL`). The relay runs with the
//! default `outbox.*` settings (batches of 500, 256 publishes in flight, sent rows kept 24 h).
//! For each spread it prints the drain rate overall, then per quarter of the backlog the rate
//! and the mean time of a claim (from `outbox_claim_duration_seconds`): a claim whose cost grew
//! with the backlog would show as slower claims in the first quarters.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use keel::config::Secret;
use keel::data::DatabaseConfig;
use keel::data::Db;
use keel::events::outbox::Outbox;
use keel::events::{Bus, Envelope};
use keel::events::{BusBackend, BusConfig, OutboxConfig};
use keel::testing::{TestDatabase, nats_url, postgres_url, unique_topic};
use tokio_util::sync::CancellationToken;

use keel_bench::BoxError;

/// The claims' count and total seconds so far, from the rendered metrics.
fn claims(metrics: &keel::telemetry::Metrics) -> (f64, f64) {
    let text = metrics.render();
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    (value("outbox_claim_duration_seconds_count "), value("outbox_claim_duration_seconds_sum "))
}

struct Quarter {
    rate: f64,
    claim_ms: f64,
}

struct Drain {
    rate: f64,
    quarters: Vec<Quarter>,
    published: u64,
}

async fn drain(rows: usize, keys: Option<usize>) -> Result<Drain, BoxError> {
    let test_db = TestDatabase::postgres(&postgres_url()).await?;
    let mut db_cfg = DatabaseConfig::default();
    db_cfg.pool.max_connections = 8;
    let db = Db::new("bench", test_db.url(), &db_cfg, None, &keel::telemetry::Metrics::new())?;
    db.clone().connect_in_background(CancellationToken::new()).await;
    keel::testing::create_events_tables(&db).await?;
    let mut bus_cfg = BusConfig::default();
    bus_cfg.backend = BusBackend::Nats;
    bus_cfg.url = Some(Secret::new(nats_url()));
    let bus = Bus::new(&bus_cfg)?;
    bus.connect().await?;
    let topic = unique_topic("backlog");
    let metrics = keel::telemetry::Metrics::new();
    let outbox = Outbox::new(db.clone(), "bench", &OutboxConfig::default(), Some(&metrics))?;

    // The backlog, committed before the relay starts: 1 000 rows per transaction.
    for chunk in 0..rows.div_ceil(1000) {
        let mut tx = db.begin().await?;
        let events: Vec<Envelope> = (chunk * 1000..((chunk + 1) * 1000).min(rows))
            .map(|n| {
                let e = Envelope::raw("bench", "bench.event", 1, serde_json::json!({ "n": n }));
                match keys {
                    Some(k) => e.with_key(format!("key-{}", n % k)),
                    None => e,
                }
            })
            .collect();
        outbox.enqueue_all(&mut tx, &topic, &events).await?;
        tx.commit().await?;
    }

    let stop = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(outbox.clone().run(bus.clone(), stop.clone()));
    let deadline = started + Duration::from_secs(600);
    let mut quarters = Vec::new();
    let (mut from, mut at, mut claims_at) = (rows as u64, started, claims(&metrics));
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pending = outbox.pending().await?.0;
        let quarter = (rows as u64 - pending) * 4 / rows as u64;
        if quarter as usize > quarters.len() || pending == 0 {
            let now = Instant::now();
            let c = claims(&metrics);
            let (n, secs) = (c.0 - claims_at.0, c.1 - claims_at.1);
            quarters.push(Quarter {
                rate: (from - pending) as f64 / (now - at).as_secs_f64(),
                claim_ms: if n > 0.0 { secs / n * 1000.0 } else { 0.0 },
            });
            (from, at, claims_at) = (pending, now, c);
        }
        if pending == 0 || Instant::now() > deadline {
            break;
        }
    }
    let took = started.elapsed();
    stop.cancel();
    relay.await?;
    let published = metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("outbox_published_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Drain { rate: rows as f64 / took.as_secs_f64(), quarters, published })
}

#[tokio::main]
async fn main() -> ExitCode {
    if keel::app::print_version_if_asked(&keel::build_info!().named("outbox-backlog"), std::env::args_os()) {
        return ExitCode::SUCCESS;
    }
    let rows: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let raw = match keel_bench::raw_jetstream_publish(rows).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raw JetStream publish failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("raw JetStream publish (256 in flight): {raw:.0} msgs/s");
    let mut ok = true;
    for keys in [None, Some(10), Some(10_000)] {
        let label = keys.map_or("no key".to_owned(), |k| format!("{k} keys"));
        match drain(rows, keys).await {
            Ok(d) => {
                println!(
                    "{rows} rows, {label}: drained at {:.0} rows/s ({:.0} % of raw publish), {} published",
                    d.rate,
                    100.0 * d.rate / raw,
                    d.published
                );
                for (i, q) in d.quarters.iter().enumerate() {
                    println!(
                        "  backlog {:>3}-{:>3} %: {:>6.0} rows/s, claim {:.2} ms",
                        100 - 25 * i,
                        75 - 25 * i as i64,
                        q.rate,
                        q.claim_ms
                    );
                }
                ok &= d.published == rows as u64;
            }
            Err(e) => {
                eprintln!("drain ({label}) failed: {e}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
