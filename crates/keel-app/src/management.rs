//! The management listener: `/metrics` and `/admin/*`.
//!
//! | route | answers |
//! |---|---|
//! | `GET /admin/status` | the status page: HTML, or JSON with `Accept: application/json` |
//! | `GET /admin/flags` | the active feature flags (JSON) |
//! | `GET`/`PUT /admin/log-level` | the log filter; a change is recorded as a reload |
//!
//! Every `/admin/*` route requires `Authorization: Bearer <management.admin_token>` (the scheme
//! in any case) on every address, loopback included: a local process (a sidecar, a compromised neighbour) is not
//! trusted by position. The comparison takes the same time wherever the given token differs.
//! With no token configured every `/admin/*` route answers 401: admin is closed, not open.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};

use super::status::Sources;

use keel_config::{Profile, Secret};
use keel_http::problem::Problem;
use keel_http::{catch_panic, context, problems, request_id};
use keel_telemetry::{self as telemetry, METRICS_CONTENT_TYPE, Metrics};

pub(crate) fn router(metrics: Metrics, admin_token: Option<Secret>, sources: Sources) -> Router {
    let admin = Router::new()
        .route("/admin/log-level", get(get_level).put(put_level))
        .route("/admin/status", get(status))
        .route("/admin/flags", get(flags))
        .with_state(sources)
        .layer(middleware::from_fn_with_state(admin_token, require_admin));
    Router::new().route("/metrics", get(render)).with_state(metrics).merge(admin).layer(
        tower::ServiceBuilder::new()
            .layer(request_id::RequestIdLayer)
            .layer(context::RequestContextLayer)
            .layer(catch_panic::CatchPanicLayer)
            .layer(problems::ProblemsLayer::new()),
    )
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
        .and_then(keel_http::bearer_token)
        .unwrap_or("");
    if token_matches(given.as_bytes(), token.expose().as_bytes()) {
        next.run(req).await
    } else {
        unauthorized("a valid admin bearer token is required")
    }
}

/// Constant-time in the given token: the loop runs over the expected token's length whatever
/// is given, so neither where a guess differs nor how long it is shows in the timing.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let same_len = (given.len() as u64).ct_eq(&(expected.len() as u64));
    let mut same = Choice::from(1);
    for (i, e) in expected.iter().enumerate() {
        same &= given.get(i).copied().unwrap_or(0).ct_eq(e);
    }
    bool::from(same & same_len & Choice::from(u8::from(!expected.is_empty())))
}

fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

async fn status(State(sources): State<Sources>, headers: HeaderMap) -> Response {
    let doc = sources.snapshot();
    let mut r = if wants_json(&headers) {
        axum::Json(doc).into_response()
    } else {
        let mut r = super::status::render_html(&doc).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        // Nothing on the page loads or runs anything; say so, so injected markup could not either.
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        );
        r.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        r
    };
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    r
}

async fn flags(State(sources): State<Sources>) -> Response {
    let mut r = axum::Json(sources.flags.report()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Serialize, Deserialize)]
struct Level {
    level: String,
}

async fn get_level() -> Response {
    axum::Json(Level { level: telemetry::log_level().unwrap_or_default() }).into_response()
}

async fn put_level(State(sources): State<Sources>, body: axum::body::Bytes) -> Response {
    let profile = sources.profile;
    let text = String::from_utf8_lossy(&body);
    let level = serde_json::from_str::<Level>(&text).map(|l| l.level).unwrap_or_else(|_| text.trim().to_owned());
    if profile == Profile::Production && telemetry::mentions_trace(&level) {
        sources.reloads.record("log level", false, format!("`{level}` refused: trace is not allowed in production"));
        return Problem::bad_request("`trace` is refused in production: it logs too much and may log secrets")
            .field("level", "trace is not allowed in production")
            .into_response();
    }
    match telemetry::set_log_level(&level) {
        Ok(()) => {
            sources.reloads.record("log level", true, level.clone());
            axum::Json(Level { level }).into_response()
        }
        Err(e) => {
            sources.reloads.record("log level", false, format!("`{level}`: {e}"));
            Problem::bad_request(e).field("level", "not a valid level or filter").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches(b"s3cret-token", b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret-toke", b"s3cret-tokenX", b"S3cret-token", b"\0"] {
            assert!(!token_matches(wrong, b"s3cret-token"), "{wrong:?}");
        }
        assert!(!token_matches(b"", b""), "an empty token never matches");
    }
}
