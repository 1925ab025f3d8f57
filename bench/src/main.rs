//! Serves the same `GET /hello` (trivial) and `GET /work` (some CPU work) three ways in one
//! process, for `bench/http-stack.sh`:
//!
//! * `bare` — plain axum, no middleware (the baseline);
//! * `keel` — a Keel service in the production profile: the full stack, JSON access logs;
//! * `keel_no_access_log` — the same with `log.access_log: false`.
//!
//! Run with `cargo run --release -p keel-bench -- PORTS_FILE`; it writes the three addresses
//! as JSON to `PORTS_FILE` and serves until SIGTERM/SIGINT.

use std::process::ExitCode;

use axum::routing::get;
use axum::{Json, Router};
use keel::config::{Loader, Profile};
use serde_json::{Value, json};

async fn hello() -> Json<Value> {
    Json(json!({ "message": "hello" }))
}

/// A handler with some CPU work (about what parsing and validating a small JSON body and
/// building a response costs): the same on every target, so it shows the stack's share on a
/// route that does something.
async fn work() -> Json<Value> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..20_000u64 {
        x = std::hint::black_box(x.rotate_left(7) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    }
    Json(json!({ "message": "hello", "checksum": x }))
}

fn routes() -> Router {
    Router::new().route("/hello", get(hello)).route("/work", get(work))
}

fn keel_service() -> keel::Service {
    keel::Service::new(keel::build_info!()).router(routes())
}

async fn start_keel(name: &str, access_log: bool) -> Result<keel::Running, String> {
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
    keel::app::start(keel_service().name(name), loaded).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(ports_file) = std::env::args().nth(1) else {
        eprintln!("usage: keel-bench PORTS_FILE");
        return ExitCode::from(64);
    };
    match run(&ports_file).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(ports_file: &str) -> Result<(), String> {
    let opts = keel::telemetry::TelemetryOptions {
        service: "keel-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        profile: Profile::Production,
        level: "info".into(),
        format: keel::config::LogFormat::Json,
        telemetry: keel::config::TelemetryConfig::default(),
    };
    let guard = keel::telemetry::init(&opts).map_err(|e| e.to_string())?;

    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let bare_addr = bare_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(bare_listener, routes()).await });

    let keel = start_keel("keel", true).await?;
    let quiet = start_keel("quiet", false).await?;
    let ports = json!({
        "bare": bare_addr.to_string(),
        "keel": keel.http_addr().to_string(),
        "keel_no_access_log": quiet.http_addr().to_string(),
    });
    std::fs::write(ports_file, ports.to_string()).map_err(|e| e.to_string())?;

    let _ = tokio::signal::ctrl_c().await;
    let _ = keel.shutdown(std::future::pending()).await;
    let _ = quiet.shutdown(std::future::pending()).await;
    guard.shutdown();
    Ok(())
}
