//! The management listener: `/metrics` and `/admin/*`.
//!
//! `/admin/*` requires `Authorization: Bearer <management.admin_token>`, compared in constant
//! time, on every address including loopback. With no token configured it answers 401 to all.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::{Profile, Secret};
use crate::http::problem::Problem;
use crate::http::{catch_panic, problems, request_id};
use crate::telemetry::{self, METRICS_CONTENT_TYPE, Metrics};

pub(crate) fn router(metrics: Metrics, admin_token: Option<Secret>, profile: Profile) -> Router {
    let admin = Router::new()
        .route("/admin/log-level", get(get_level).put(put_level))
        .with_state(profile)
        .layer(middleware::from_fn_with_state(admin_token, require_admin));
    Router::new()
        .route("/metrics", get(render))
        .with_state(metrics)
        .merge(admin)
        .layer(problems::ProblemsLayer)
        .layer(request_id::RequestIdLayer)
        .layer(catch_panic::CatchPanicLayer)
}

async fn render(State(m): State<Metrics>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE))], m.render()).into_response()
}

async fn require_admin(State(token): State<Option<Secret>>, req: Request, next: Next) -> Response {
    let unauthorized = |detail: &str| {
        let mut r =
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(token) = token else {
        return unauthorized("admin endpoints are disabled: set management.admin_token");
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        next.run(req).await
    } else {
        unauthorized("a valid admin bearer token is required")
    }
}

#[derive(Serialize, Deserialize)]
struct Level {
    level: String,
}

async fn get_level() -> Response {
    axum::Json(Level { level: telemetry::log_level().unwrap_or_default() }).into_response()
}

async fn put_level(State(profile): State<Profile>, body: axum::body::Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let level = serde_json::from_str::<Level>(&text).map(|l| l.level).unwrap_or_else(|_| text.trim().to_owned());
    if profile == Profile::Production && telemetry::mentions_trace(&level) {
        return Problem::bad_request("`trace` is refused in production: it logs too much and may log secrets")
            .field("level", "trace is not allowed in production")
            .into_response();
    }
    match telemetry::set_log_level(&level) {
        Ok(()) => axum::Json(Level { level }).into_response(),
        Err(e) => Problem::bad_request(e).field("level", "not a valid level or filter").into_response(),
    }
}
