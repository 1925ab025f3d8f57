//! Serves the same `GET /hello` (trivial) and `GET /work` (some CPU work) several ways in one
//! process, for `bench/http-stack.sh`:
//!
//! * `bare` — plain axum, no middleware (the baseline);
//! * `bare_headers` — plain axum answering with the five headers Keel's stack adds (request id,
//!   `Vary`, three security headers; constant values of the same length): what the bigger
//!   answer alone costs, the server's encoding and wrk's parsing included;
//! * `keel` — a Keel service in the production profile: the full stack, JSON access logs; it
//!   also serves `GET /db` and `GET /db_untraced` (one SQLite read, with and without its
//!   statement's span; see `db_routes`);
//! * `keel_no_access_log` — the same with `log.access_log: false`;
//! * `floor` — bare axum under one layer doing the least the foundation requires per request
//!   (see `floor.rs`);
//! * `skip:SET`, one per set in `KEEL_BENCH_ABLATE` — Keel's stack without some layers (see
//!   `serve_ablated`).
//!
//! Run with `cargo run --release -p keel-bench -- PORTS_FILE`; it writes the targets'
//! addresses as JSON to `PORTS_FILE` and serves until SIGTERM/SIGINT.

use std::process::ExitCode;

mod floor;

// The same allocator as Keel's service binaries (both targets share it); `--features sysalloc`
// measures with glibc's malloc instead.
#[cfg(not(feature = "sysalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use keel::app::Loader;
use keel::config::Profile;
use keel::data::Db;
use keel_bench::{hello, work};
use serde_json::{Value, json};

fn routes() -> Router {
    Router::new().route("/hello", get(hello)).route("/work", get(work))
}

/// The headers Keel's stack adds to these answers, with constant values of the same length.
fn keel_headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (HeaderName::from_static("x-request-id"), HeaderValue::from_static("01a200bb-6276-7a19-b9f2-5351b29844ed")),
        (header::VARY, HeaderValue::from_static("origin")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

/// The same routes answering with [`keel_headers`].
fn routes_with_headers() -> Router {
    Router::new()
        .route("/hello", get(|| async { (keel_headers(), hello().await) }))
        .route("/work", get(|| async { (keel_headers(), work().await) }))
}

fn keel_service(db: &Db) -> keel::Service {
    keel::Service::new(keel::build_info!()).router(routes().merge(db_routes(db)))
}

/// `GET /db`: one indexed SQLite read through [`Db::exec`], a client span when the request is
/// traced; `GET /db_untraced`: the same read on the bare pool. Their difference is what a
/// statement's span costs a request (with `KEEL_BENCH_OTLP_ENDPOINT` set: spans are made only
/// while they are exported).
fn db_routes(db: &Db) -> Router {
    async fn read(db: &Db, traced: bool) -> Result<Json<Value>, StatusCode> {
        let q = sqlx::query_scalar::<_, String>("SELECT name FROM items WHERE id = ?").bind(7_i64);
        let name = if traced { q.fetch_one(db.exec()).await } else { q.fetch_one(db.pool()).await };
        name.map(|n| Json(json!({ "name": n }))).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
    }
    Router::new()
        .route("/db", get(|State(db): State<Db>| async move { read(&db, true).await }))
        .route("/db_untraced", get(|State(db): State<Db>| async move { read(&db, false).await }))
        .with_state(db.clone())
}

/// A SQLite file in the temporary directory with a small `items` table, for [`db_routes`].
async fn bench_db() -> Result<(Db, std::path::PathBuf), String> {
    let path = std::env::temp_dir().join(format!("keel-bench-{}.db", std::process::id()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let metrics = keel::telemetry::Metrics::new();
    let db = Db::new("keel-bench", &url, &keel::data::DatabaseConfig::default(), None, &metrics)
        .map_err(|e| e.to_string())?;
    sqlx::query("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("INSERT OR REPLACE INTO items (id, name) SELECT value, 'item ' || value FROM json_each('[1,2,3,4,5,6,7,8,9,10]')")
        .execute(db.pool())
        .await
        .map_err(|e| e.to_string())?;
    Ok((db, path))
}

async fn start_keel(name: &str, access_log: bool, db: &Db) -> Result<keel::Running, String> {
    let prefix = name.to_ascii_uppercase();
    let loaded = Loader::new(name, Profile::Production)
        .env([
            (format!("{prefix}__HTTP__ADDR"), "127.0.0.1".to_owned()),
            (format!("{prefix}__HTTP__PORT"), "0".to_owned()),
            (format!("{prefix}__CORS__ALLOWED_ORIGINS"), "https://app.example.com".to_owned()),
            (format!("{prefix}__SHUTDOWN__DRAIN_DELAY"), "0s".to_owned()),
            (format!("{prefix}__LOG__ACCESS_LOG"), access_log.to_string()),
        ])
        .load()
        .map_err(|e| e.to_string())?;
    keel::app::start(keel_service(db).name(name), loaded).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    if keel::app::print_version_if_asked(&keel::build_info!().named("keel-bench"), std::env::args_os()) {
        return ExitCode::SUCCESS;
    }
    let Some(ports_file) = std::env::args().nth(1) else {
        eprintln!("usage: keel-bench PORTS_FILE | keel-bench redis-limiter [REDIS_URL] | keel-bench --version");
        return ExitCode::from(keel::app::exit::USAGE);
    };
    if ports_file == "redis-limiter" {
        let url = std::env::args().nth(2).unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        return match redis_limiter(&url).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keel-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&ports_file).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No exporter by default (a service's default). `KEEL_BENCH_OTLP_ENDPOINT` sets one, and
/// `KEEL_BENCH_SAMPLING_RATIO` the ratio: with ratio 0 and no collector listening, nothing is
/// sent, which measures what OpenTelemetry spans cost a request before any export.
fn bench_telemetry() -> keel::telemetry::TelemetryConfig {
    let mut t = keel::telemetry::TelemetryConfig::default();
    t.otlp.endpoint = std::env::var("KEEL_BENCH_OTLP_ENDPOINT").ok();
    t.sampling_ratio = std::env::var("KEEL_BENCH_SAMPLING_RATIO").ok().and_then(|r| r.parse().ok());
    t
}

/// Telemetry as a service in the production profile sets it up: JSON lines at `info`, spans
/// recorded for OpenTelemetry (exported only with `KEEL_BENCH_OTLP_ENDPOINT`).
fn production_telemetry() -> keel::telemetry::TelemetryOptions {
    keel::telemetry::TelemetryOptions {
        service: "keel-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        profile: Profile::Production,
        level: "info".into(),
        format: keel::telemetry::LogFormat::Json,
        telemetry: bench_telemetry(),
        mask_fields: Vec::new(),
    }
}

async fn run(ports_file: &str) -> Result<(), String> {
    let guard = keel::telemetry::init(&production_telemetry()).map_err(|e| e.to_string())?;

    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let bare_addr = bare_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(bare_listener, routes()).await });
    let headers_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let headers_addr = headers_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(headers_listener, routes_with_headers()).await });

    let floor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let floor_addr = floor_listener.local_addr().map_err(|e| e.to_string())?;
    let floor = floor::floor_routes(routes()).map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(floor_listener, floor).await });

    let (db, db_file) = bench_db().await?;
    let keel = start_keel("keel", true, &db).await?;
    let quiet = start_keel("quiet", false, &db).await?;
    let mut ports = json!({
        "bare": bare_addr.to_string(),
        "bare_headers": headers_addr.to_string(),
        "floor": floor_addr.to_string(),
        "keel": keel.http_addr().to_string(),
        "keel_no_access_log": quiet.http_addr().to_string(),
    });
    for (name, addr) in serve_ablated().await? {
        ports[name] = Value::String(addr);
    }
    std::fs::write(ports_file, ports.to_string()).map_err(|e| e.to_string())?;

    let _ = tokio::signal::ctrl_c().await;
    let _ = keel.shutdown(std::future::pending()).await;
    let _ = quiet.shutdown(std::future::pending()).await;
    db.close().await;
    let _ = std::fs::remove_file(db_file);
    guard.shutdown();
    Ok(())
}

/// `KEEL_BENCH_ABLATE=SET;SET;…`, each SET a comma-separated list of layers of Keel's stack
/// (`keel_bench::LAYERS`, or `none`): one more target per set, `skip:SET`, serving `/hello`
/// through the stack without those layers, under `axum::serve` like the bare targets. Against
/// `skip:none`, each shows what its layers cost in time, which instruction counts miss
/// (atomics shared between cores, clock reads, cache misses).
async fn serve_ablated() -> Result<Vec<(String, String)>, String> {
    let Ok(sets) = std::env::var("KEEL_BENCH_ABLATE") else {
        return Ok(Vec::new());
    };
    let mut cfg = keel::app::KeelConfig::default();
    cfg.cors.allowed_origins = vec!["https://app.example.com".into()];
    let mut served = Vec::new();
    for set in sets.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let skip: Vec<&str> = set.split(',').map(str::trim).collect();
        let router = keel_bench::ablated_stack(&cfg, &keel::telemetry::Metrics::new(), &skip)
            .map_err(|e| format!("KEEL_BENCH_ABLATE: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        served.push((format!("skip:{set}"), listener.local_addr().map_err(|e| e.to_string())?.to_string()));
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    Ok(served)
}

/// Redis sliding-window limiter over one connection: decisions/s with `KEEL_BENCH_TASKS` (32) tasks sharing the one
/// multiplexed connection, and per-decision latency percentiles; next to raw PING as the
/// ceiling of the same connection.
async fn redis_limiter(url: &str) -> Result<(), String> {
    use keel::resilience::rate_limit::{OnBackendError, RateLimitPolicy, RateLimiter};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    // As in a service: each command's span is recorded (its cost is part of what is measured).
    let _telemetry = keel::telemetry::init(&production_telemetry()).map_err(|e| e.to_string())?;
    let mut cfg = keel::redis::RedisConfig::default();
    cfg.key_prefix = Some(format!("keelbench:{}:", std::process::id()));
    let metrics = keel::telemetry::Metrics::new();
    let redis = keel::redis::Redis::new("bench", url, &cfg, &metrics).map_err(|e| e.to_string())?;
    redis.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    let policy = RateLimitPolicy { limit: 1_000_000_000, window: Duration::from_secs(1), ..RateLimitPolicy::default() };
    let limiter = Arc::new(RateLimiter::redis("bench", policy, OnBackendError::FailClosed, redis.clone(), None));
    let tasks: usize = std::env::var("KEEL_BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    const RUN: Duration = Duration::from_secs(5);

    async fn run<F, Fut>(tasks: usize, f: F) -> (f64, Vec<Duration>)
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = 0usize;
                    while started.elapsed() < RUN {
                        let s = Instant::now();
                        f(t * 1_000_000 + i).await;
                        lat.push(s.elapsed());
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in handles {
            all.extend(t.await.unwrap_or_default());
        }
        let rate = all.len() as f64 / started.elapsed().as_secs_f64();
        all.sort();
        (rate, all)
    }
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or_default()
    };

    let r = redis.clone();
    let (ping_rate, ping) = run(tasks, move |_| {
        let r = r.clone();
        async move {
            let _: Result<String, _> = r.query(&keel::redis::driver::cmd("PING")).await;
        }
    })
    .await;
    let l = limiter.clone();
    let (rate, lat) = run(tasks, move |i| {
        let l = l.clone();
        async move {
            let _ = l.check(&format!("ip=10.0.0.{}", i % 200)).await;
        }
    })
    .await;
    println!("| operation (one connection, {tasks} tasks, {}s) | ops/s | p50 | p99 |", RUN.as_secs());
    println!("|---|---|---|---|");
    println!("| PING (ceiling) | {ping_rate:.0} | {:?} | {:?} |", pct(&ping, 0.5), pct(&ping, 0.99));
    println!("| sliding-window decision (Lua) | {rate:.0} | {:?} | {:?} |", pct(&lat, 0.5), pct(&lat, 0.99));
    println!("| ratio to PING | {:.1}% | | |", rate / ping_rate * 100.0);
    // Remove only this run's keys (never the whole database).
    let keys: Vec<String> = redis
        .query(keel::redis::driver::cmd("KEYS").arg(format!("{}*", redis.prefix())))
        .await
        .map_err(|e| e.to_string())?;
    if !keys.is_empty() {
        let _: i64 = redis.query(keel::redis::driver::cmd("DEL").arg(keys)).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
