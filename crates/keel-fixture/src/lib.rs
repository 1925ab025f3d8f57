//! A service that exercises every part of the Keel chassis, for Keel's black-box tests.
//!
//! Routes: `GET /hello`, `GET /items/{id}` (typed path), `POST /echo` (typed JSON body),
//! `POST /upload` (raw body, its own 64 KiB limit),
//! `GET /slow?ms=N` (sleeps), `GET /panic`, `GET /problem`, `GET /log` (logs a line with a
//! field), `GET /traceparent` (what an outbound call would carry), `GET /bare-error` (a bare text 500). Config section `app`: `greeting`, `api_key`
//! (a secret), `stubborn_task` (a background task that ignores cancellation, to test forced
//! shutdown), `failing_check` (a readiness check that is always down) and `warmup` (a startup
//! check that is down for that long).

use std::time::Duration;

use axum::extract::{Path, Query};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel::config::{Secret, Section, Validation};
use keel::health::{Check, Kind, Outcome};
use keel::{Problem, RequestId};
use serde::{Deserialize, Serialize};

/// The fixture's `app` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FixtureConfig {
    /// What `/hello` says.
    pub greeting: String,
    /// A secret, to test masking and production rules.
    pub api_key: Option<Secret>,
    /// Start a background task that ignores its stop token.
    pub stubborn_task: bool,
    /// Add a readiness check that is always down.
    pub failing_check: bool,
    /// A startup check that stays down this long after start.
    #[serde(with = "keel::config::duration")]
    pub warmup: Duration,
}

impl Default for FixtureConfig {
    fn default() -> Self {
        Self {
            greeting: "hello".into(),
            api_key: None,
            stubborn_task: false,
            failing_check: false,
            warmup: Duration::ZERO,
        }
    }
}

impl Section for FixtureConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.greeting.is_empty() || self.greeting.len() > 64 {
            v.invalid("greeting", "must be 1 to 64 characters");
        }
    }
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct Echo {
    name: String,
    age: u32,
}

/// The fixture service.
pub fn service() -> keel::Service<FixtureConfig> {
    keel::Service::new(keel::build_info!()).name("fixture").with_config::<FixtureConfig>().setup(|s| {
        let greeting = s.config().greeting.clone();
        s.health_check(Check::new("self", Kind::Readiness, || async { Outcome::Up }));
        if s.config().failing_check {
            s.health_check(Check::new("broken", Kind::Readiness, || async {
                Outcome::down("connect postgres://app:hunter2@db:5432/app: connection refused")
            }));
        }
        let warm_at = std::time::Instant::now() + s.config().warmup;
        s.health_check(Check::new("warmup", Kind::Startup, move || async move {
            if std::time::Instant::now() >= warm_at { Outcome::Up } else { Outcome::down("warming up") }
        }));
        if s.config().stubborn_task {
            s.task("stubborn", |_stop| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
        s.task("polite", |stop| async move { stop.cancelled().await });
        Ok(Router::new()
            .route("/hello", get(move || async move { Json(serde_json::json!({ "message": greeting })) }))
            .route("/items/{id}", get(|Path(id): Path<u32>| async move { Json(serde_json::json!({ "id": id })) }))
            .route("/echo", post(|Json(e): Json<Echo>| async move { Json(e) }))
            .route(
                "/upload",
                post(|body: axum::body::Bytes| async move { body.len().to_string() })
                    .route_layer(axum::extract::DefaultBodyLimit::max(64 * 1024)),
            )
            .route(
                "/slow",
                get(|Query(q): Query<SlowQuery>| async move {
                    tokio::time::sleep(Duration::from_millis(q.ms)).await;
                    "done"
                }),
            )
            .route("/panic", get(panicking))
            .route(
                "/problem",
                get(|| async {
                    Problem::new(http::StatusCode::CONFLICT, "conflict", "Conflict").detail("already there")
                }),
            )
            .route(
                "/log",
                get(|id: RequestId| async move {
                    tracing::info!(marker = "fixture-log", "handler log line");
                    id.to_string()
                }),
            )
            .route(
                "/warn",
                get(|| async {
                    tracing::warn!(marker = "fixture-warn", "handler warning");
                    "warned"
                }),
            )
            .route(
                "/traceparent",
                get(|| async {
                    let mut headers = http::HeaderMap::new();
                    keel::telemetry::inject_current(&mut headers);
                    headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
                }),
            )
            .route(
                "/bare-error",
                get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "db password=hunter2 refused") }),
            ))
    })
}

#[allow(clippy::panic)]
async fn panicking() -> &'static str {
    panic!("secret internal detail: the vault is at 10.0.0.7")
}
