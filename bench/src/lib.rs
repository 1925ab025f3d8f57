//! What the in-process benchmarks share: the route every target serves, the request wrk sends,
//! and the log set-up of a production service.

use axum::body::Body;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

/// `GET /hello`: a constant JSON body, the worst case for any middleware.
pub async fn hello() -> Json<Value> {
    Json(json!({ "message": "hello" }))
}

/// `GET /work`: some CPU work (about what parsing and validating a small JSON body and
/// building a response costs), the same on every target, so it shows the stack's share on a
/// route that does something.
pub async fn work() -> Json<Value> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..62_000u64 {
        x = std::hint::black_box(x.rotate_left(7) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    }
    Json(json!({ "message": "hello", "checksum": x }))
}

/// A router with only `GET /hello`.
pub fn hello_router() -> Router {
    Router::new().route("/hello", get(hello))
}

/// What `wrk` sends for `GET /hello`.
pub fn hello_request() -> axum::http::Request<Body> {
    let req = axum::http::Request::get("/hello").header("host", "127.0.0.1").body(Body::empty());
    // A constant request: building it cannot fail.
    req.unwrap_or_default()
}

/// Keel's log pipeline as a production service has it: JSON lines at `info`, no exporter.
pub fn production_logs() -> keel::telemetry::TelemetryOptions {
    keel::telemetry::TelemetryOptions {
        service: "bench".into(),
        version: "0".into(),
        profile: keel::config::Profile::Production,
        level: "info".into(),
        format: keel::telemetry::LogFormat::Json,
        telemetry: keel::telemetry::TelemetryConfig::default(),
        mask_fields: Vec::new(),
    }
}

/// The layers of Keel's API stack, outermost first, by the names [`ablated_stack`] takes.
pub const LAYERS: [&str; 12] = [
    "security_headers",
    "cors",
    "request_id",
    "context",
    "trace",
    "metrics",
    "catch_panic",
    "timeout",
    "body_limit",
    "load_shed",
    "compression",
    "problems",
];

/// [`hello_router`] under Keel's API stack built layer by layer, leaving out the layers named
/// in `skip` (names from [`LAYERS`]; `none` and empty names leave nothing out), to measure what
/// each layer costs. The order is `keel::http::stack`'s (crates/keel-http/src/lib.rs); keep the
/// two in step. The trace layer writes no access line. Registers the HTTP metrics in `metrics`.
/// An unknown name is an error listing the layers, so a typo cannot measure the whole stack.
pub fn ablated_stack(
    cfg: &keel::app::KeelConfig,
    metrics: &keel::telemetry::Metrics,
    skip: &[&str],
) -> Result<Router, String> {
    use keel::http::*;
    if let Some(bad) = skip.iter().find(|l| !l.is_empty() && **l != "none" && !LAYERS.contains(l)) {
        return Err(format!("no layer `{bad}`; layers: {}", LAYERS.join(", ")));
    }
    let some = |name: &str| (!skip.contains(&name)).then_some(());
    let cors = some("cors").map(|()| cors::layer(&cfg.cors)).transpose().map_err(|e| e.to_string())?;
    let http_metrics =
        some("metrics").map(|()| metrics::HttpMetricsLayer::new(metrics)).transpose().map_err(|e| e.to_string())?;
    Ok(hello_router().layer(
        tower::ServiceBuilder::new()
            .option_layer(
                some("security_headers").map(|()| security_headers::SecurityHeadersLayer::new(&cfg.http.hsts)),
            )
            .option_layer(cors)
            .option_layer(some("request_id").map(|()| request_id::RequestIdLayer))
            .option_layer(some("context").map(|()| context::RequestContextLayer))
            .option_layer(some("trace").map(|()| trace::TraceLayer::new("bench", false)))
            .option_layer(http_metrics)
            .option_layer(some("catch_panic").map(|()| catch_panic::CatchPanicLayer))
            .option_layer(some("timeout").map(|()| timeout::TimeoutLayer::new(cfg.http.request_timeout)))
            .option_layer(some("body_limit").map(|()| axum::extract::DefaultBodyLimit::max(cfg.http.body_limit)))
            .option_layer(some("load_shed").map(|()| load_shed::LoadShedLayer::new(cfg.http.max_in_flight)))
            .option_layer(some("compression").map(|()| compression::CompressionLayer::new(cfg.http.compression)))
            .option_layer(some("problems").map(|()| problems::ProblemsLayer::new()))
            .map_response(axum::response::IntoResponse::into_response),
    ))
}

/// What the events benchmarks return on failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `publish` `n` times with 256 calls awaited at once; calls per second, or the first error.
async fn in_flight<F, Fut>(n: usize, publish: F) -> Result<f64, BoxError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    use futures_util::StreamExt;
    let started = std::time::Instant::now();
    let results: Vec<Result<(), BoxError>> =
        futures_util::stream::iter(0..n).map(|_| publish()).buffer_unordered(256).collect().await;
    let took = started.elapsed();
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(n as f64 / took.as_secs_f64())
}

/// Raw `rdkafka` publishing with Keel's producer settings (idempotent, `acks=all`) and 256
/// deliveries awaited at once: the ceiling the Kafka pipeline is compared with. Messages/s.
pub async fn raw_kafka_publish(n: usize, partitions: i32) -> Result<f64, BoxError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let servers = keel::testing::kafka_url().trim_start_matches("kafka://").to_owned();
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &servers);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.create()?;
    let topic = keel::testing::unique_topic("rawbench");
    admin.create_topics(&[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()).await?;
    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .create()?;
    let payload = keel::events::Envelope::raw("bench", "bench.raw", 1, json!({ "n": 0, "at": 0 })).to_bytes()?;
    let rate = in_flight(n, || {
        let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
        async move {
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic).payload(&payload[..]);
            producer.send(record, std::time::Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
            Ok(())
        }
    })
    .await?;
    admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
    Ok(rate)
}

/// Raw JetStream publishing of `n` messages, 256 acks in flight, to a stream of its own (deleted
/// after): the ceiling for anything built on it. Messages/s.
pub async fn raw_jetstream_publish(n: usize) -> Result<f64, BoxError> {
    let client = async_nats::connect(keel::testing::nats_url()).await?;
    let js = async_nats::jetstream::new(client);
    let topic = keel::testing::unique_topic("rawbench");
    let stream = topic.replace('.', "_");
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![topic.clone()],
        ..Default::default()
    })
    .await?;
    let payload = keel::events::Envelope::raw("bench", "bench.raw", 1, json!({ "n": 0, "at": 0 })).to_bytes()?;
    let rate = in_flight(n, || {
        let (js, topic, payload) = (js.clone(), topic.clone(), payload.clone());
        async move {
            js.publish(topic, payload.into()).await?.await?;
            Ok(())
        }
    })
    .await?;
    js.delete_stream(&stream).await?;
    Ok(rate)
}
