//! `GET /api/v1/docs/`: the interactive API reference, Swagger UI over
//! [`OPENAPI_PATH`](crate::routes::OPENAPI_PATH), its files built into the binary
//! (utoipa-swagger-ui's `vendored` feature: no CDN, nothing fetched at build or run time).
//!
//! The page loads only its own scripts and stylesheets (`script-src 'self'`: Swagger UI's
//! files hold no inline script; no `unsafe-inline` anywhere), fetches only from this origin,
//! and may be framed by no one.
//! "Try it out" is on, so the page calls the API as any client does, with a token when one is
//! given to its "Authorize" dialog; the token stays in the page (not persisted).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderValue, StatusCode, header};
use utoipa_swagger_ui::Config;

use crate::routes::OPENAPI_PATH;

/// Where the reference is served; its files are below it.
pub const PATH: &str = "/api/v1/docs/";

/// The policy of every file of the reference. The one inline style allowed, by its hash, is the
/// `<style>` element Swagger UI's bundle adds at start (the browser test fails if a new version
/// of the bundle adds another).
const CSP: &str = "default-src 'none'; script-src 'self'; \
                   style-src 'self' 'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        Config::new([OPENAPI_PATH])
            .try_it_out_enabled(true)
            .display_request_duration(true)
            .display_operation_id(true)
            .persist_authorization(false)
            .validator_url("none"),
    )
});

/// `GET /api/v1/docs`: to the page, whose files are addressed relative to its slash.
pub(crate) async fn redirect() -> Redirect {
    Redirect::permanent(PATH)
}

/// `GET /api/v1/docs/` and `GET /api/v1/docs/{file}`.
pub(crate) async fn serve(req: Request) -> Response {
    let file = req.uri().path().strip_prefix(PATH).unwrap_or_default();
    let found = match utoipa_swagger_ui::serve(file, CONFIG.clone()) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, file, "serving a file of the API reference failed");
            return keel::Problem::internal().into_response();
        }
    };
    let Some(found) = found else {
        return keel::Problem::not_found()
            .detail("no such file of the API reference; see /api/v1/docs/")
            .into_response();
    };
    let content_type = HeaderValue::from_str(&found.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    // The page and its settings change with the release; the bundles are large and stable.
    let cache = if file.is_empty() || file.ends_with(".html") || file == "swagger-initializer.js" {
        "no-cache"
    } else {
        "public, max-age=86400"
    };
    // The bundle's files are static data: served from it, not copied per request.
    let body = match found.bytes {
        Cow::Borrowed(data) => Body::from(Bytes::from_static(data)),
        Cow::Owned(data) => Body::from(data),
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if found.gzpipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}
