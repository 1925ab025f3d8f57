//! The probe endpoints.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};

use super::{Health, Kind};

/// `/health/live` (`/healthz`, `/livez`), `/health/ready` (`/readyz`), `/health/startup`.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/healthz", get(live))
        .route("/livez", get(live))
        .route("/health/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/health/startup", get(startup))
        .with_state(health)
}

async fn live(State(h): State<Health>) -> Response {
    respond(&h, Kind::Liveness)
}

async fn ready(State(h): State<Health>) -> Response {
    respond(&h, Kind::Readiness)
}

async fn startup(State(h): State<Health>) -> Response {
    respond(&h, Kind::Startup)
}

fn respond(h: &Health, kind: Kind) -> Response {
    let report = h.report(kind);
    let status = if report.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::to_vec(&report).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}
