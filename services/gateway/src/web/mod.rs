//! The web front end: server-rendered pages under `/` for people in a browser, beside the JSON
//! API under `/api/v1`.
//!
//! Every page is HTML from a compile-checked askama template (auto-escaped) with one stylesheet
//! and one script of its own (`/static/site.css`, `/static/site.js`); every page and form works
//! without the script, which only shows times in the viewer's time zone. The pages call the
//! services through the gateway's own clients ([`call`]), so they get the API routes' timeouts,
//! retries, breakers and rate limits, and a failed call is a sentence for a person (a field's
//! message next to the field), never a service's internals.
//!
//! * **Sessions and forms** — see [`session`]: an `HttpOnly`, `SameSite=Lax` cookie with the
//!   refresh token (`Secure` outside development), access tokens kept in the gateway, a CSRF
//!   token checked on every POST.
//! * **Headers** — every response: `Content-Security-Policy: default-src 'none'; script-src
//!   'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none';
//!   base-uri 'none'` (no inline script or style anywhere); pages are `Cache-Control: no-store`.
//! * **Errors** — a path that is no page is the 404 page; a path under `/api/` that is no
//!   operation stays the API's 404 problem.
//!
//! Configuration: `app.web.secure_cookies` (default: `true` outside the development profile).

use crate::capabilities::{self as caps, Gate};

mod account;
mod calendar;
pub(crate) mod call;
mod events;
mod feeds;
mod me;
mod moderation;
mod oidc;
mod organizer;
mod organizers;
pub(crate) mod pages;
mod reports;
pub(crate) mod session;
mod settings;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler as _;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, header};
use keel::resilience::rate_limit::RateLimitLayer;
use serde::{Deserialize, Serialize};

use crate::forward::Gateway;

pub(crate) use events::seats_line;
pub(crate) use pages::{Page, machine_time};

/// The policy of every page and file of the site.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `app.web`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Mark the cookies `Secure` and give them the `__Host-` prefix: the site is reached over
    /// HTTPS. Default: `true` outside the development profile.
    pub secure_cookies: Option<bool>,
    /// The site's origin as people reach it (`https://events.example.org`), for the absolute
    /// links in calendar files, share links and OpenGraph tags. Default: the request's `Host`.
    pub public_url: Option<String>,
}

/// What the pages share.
#[derive(Debug)]
pub(crate) struct Site {
    pub(crate) gw: Arc<Gateway>,
    pub(crate) sessions: session::Sessions,
    /// The hub of this instance's live-update streams.
    pub(crate) live: Arc<crate::live::Live>,
    /// The city field's suggestions, kept a minute (every events page offers them).
    pub(crate) cities: std::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
    /// Public profiles (organizer names, home cities) kept a minute: every event page names its
    /// organizer.
    pub(crate) profiles:
        std::sync::Mutex<std::collections::HashMap<uuid::Uuid, (std::time::Instant, cityevents_api::auth::Profile)>>,
    /// The OpenID Connect providers auth offers, kept a minute (the log-in page lists them).
    pub(crate) providers: std::sync::Mutex<Option<(std::time::Instant, Vec<cityevents_api::oidc::Provider>)>>,
}

const STYLESHEET: &str = include_str!("../../static/site.css");
const SCRIPT: &str = include_str!("../../static/site.js");

/// Reads an upload's body and drops it as it streams in, up to `limit` bytes: a page that
/// refuses an upload answers after the browser has sent it (answered mid-upload, the browser
/// shows a reset connection), without holding megabytes per request.
pub(crate) async fn drain(body: axum::body::Body, limit: usize) {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            break;
        }
    }
}

/// `halt`, once an upload's body has been read and dropped ([`drain`], up to
/// `MAX_PICTURE_REQUEST`): a page that refuses an upload before holding it.
pub(crate) async fn after_draining(body: axum::body::Body, halt: pages::Halt) -> pages::Halt {
    drain(body, cityevents_api::limits::MAX_PICTURE_REQUEST).await;
    halt
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Not fingerprinted: a short life, so a new release shows within minutes.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

/// The policy headers on everything the site answers; pages are never stored, nor is anything
/// that sets a cookie (a shared cache would hand it to others).
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    if h.contains_key(header::SET_COOKIE) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    } else if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A path that is no page: the 404 page, or the API's problem under `/api/`.
async fn fallback(req: Request) -> Response {
    if is_api(req.uri().path()) {
        return keel::Problem::not_found().detail("no such API path; see /api/v1/openapi.json").into_response();
    }
    pages::not_found(&Page::of(req.extensions()))
}

/// Whether `path` is the API's rather than the site's.
fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// The site's routes; `strict` is the limiter of the API's sign-up and account-mail routes,
/// counted for their pages too.
/// With `redis`, the gateway instances share the sessions' access tokens through it.
pub(crate) fn router(
    gw: Arc<Gateway>,
    secure_cookies: bool,
    strict: &RateLimitLayer,
    redis: Option<keel::redis::Redis>,
    live: Arc<crate::live::Live>,
) -> Router {
    let sessions = session::Sessions::new(secure_cookies);
    let sessions = match redis {
        Some(r) => sessions.shared(r),
        None => sessions,
    };
    let site = Arc::new(Site {
        gw,
        sessions,
        live,
        cities: std::sync::Mutex::default(),
        profiles: std::sync::Mutex::default(),
        providers: std::sync::Mutex::default(),
    });
    let flags = site.gw.flags.clone();
    let gated = |flag: &'static str| axum::middleware::from_fn_with_state(Gate::new(&flags, flag), caps::gate);
    Router::new()
        .route("/", get(events::list))
        .route("/events/{id}", get(events::show))
        .route("/live", get(crate::live::stream).layer(gated(caps::LIVE)))
        .route("/feed/latest", get(feeds::latest))
        .route("/feed/trending", get(feeds::trending))
        .route("/feed/for-you", get(feeds::for_you).layer(gated(caps::FOR_YOU)))
        .route("/categories", get(events::categories))
        .route("/categories/{name}", get(events::category))
        .route("/events/{id}/join", post(events::join))
        .route("/events/{id}/leave", post(events::leave))
        .route("/events/{id}/calendar.ics", get(calendar::event_file))
        .route("/account/calendar", get(calendar::show).post(calendar::create))
        .route("/account/calendar/revoke", post(calendar::revoke))
        .route("/my/joins", get(me::joins))
        .route("/my/events", get(organizer::mine))
        .route("/my/events/new", get(organizer::new_form).post(organizer::create))
        .route("/my/events/{id}", get(organizer::manage))
        .route("/my/events/{id}/edit", get(organizer::edit_form).post(organizer::edit))
        .route(
            "/my/events/{id}/cover",
            post(organizer::cover)
                .layer(axum::extract::DefaultBodyLimit::max(cityevents_api::limits::MAX_PICTURE_REQUEST))
                .layer(gated(caps::UPLOADS)),
        )
        .route("/my/events/{id}/{action}", post(organizer::act))
        .route("/notifications", get(me::notifications))
        .route("/notifications/{id}/read", post(me::read))
        .route("/account", get(settings::show))
        .route("/account/password", post(settings::change_password))
        .route("/account/profile", post(organizers::save_profile))
        .route(
            "/account/avatar",
            post(settings::avatar)
                .layer(axum::extract::DefaultBodyLimit::max(cityevents_api::limits::MAX_PICTURE_REQUEST))
                .layer(gated(caps::UPLOADS)),
        )
        .route("/account/avatar/remove", post(settings::remove_avatar))
        .route("/organizers/{id}", get(organizers::show))
        .route("/organizers/{id}/{action}", post(organizers::act))
        .route("/account/sessions/{id}/end", post(settings::end_session))
        .route("/account/logout-all", post(settings::logout_all))
        .route("/settings/notifications", get(settings::mail).post(settings::save_mail))
        .route("/admin/users", get(moderation::users))
        .route("/report", get(reports::form).post(reports::send))
        .route("/moderation/reports", get(reports::queue))
        .route("/moderation/reports/{kind}/{id}", post(reports::act))
        .route("/admin/users/{id}/{action}", post(moderation::act))
        .route("/login", get(account::login_form).post(account::login))
        .route("/login/oidc/link", post(oidc::link.layer(strict.clone())).layer(gated(caps::PROVIDERS)))
        .route("/login/oidc/{provider}", get(oidc::start.layer(strict.clone())).layer(gated(caps::PROVIDERS)))
        .route(
            "/login/oidc/{provider}/callback",
            get(oidc::callback.layer(strict.clone())).layer(gated(caps::PROVIDERS)),
        )
        .route("/account/identities/link", post(oidc::link_start).layer(gated(caps::PROVIDERS)))
        .route("/account/identities/{provider}/unlink", post(oidc::unlink))
        .route("/logout", post(account::logout))
        .route("/signup", get(account::signup_form).post(account::signup.layer(strict.clone())))
        .route("/verify-email", get(account::verify_form).post(account::verify.layer(strict.clone())))
        .route("/reset-password", get(account::reset_form).post(account::reset.layer(strict.clone())))
        .route("/static/site.css", get(|| async { file("text/css; charset=utf-8", STYLESHEET) }))
        .route("/static/site.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .fallback(fallback)
        // Inside the session: capabilities are evaluated for the signed-in user.
        .layer(axum::middleware::from_fn_with_state(flags.clone(), caps::evaluate))
        .layer(axum::middleware::from_fn_with_state(site.clone(), session::middleware))
        .layer(axum::middleware::from_fn(headers))
        .with_state(site)
}
