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
        format: keel::config::LogFormat::Json,
        telemetry: keel::config::TelemetryConfig::default(),
        mask_fields: Vec::new(),
    }
}
