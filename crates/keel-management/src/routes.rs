use axum::Router;
use axum::extract::{Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use subtle::{Choice, ConstantTimeEq};

use std::sync::Arc;

use crate::audit::AuditSource;
use crate::ops::ConsumerOps;
use crate::session::{self, SignInCodes};
use crate::status::{self, Bound, Process, Sources};

use keel_config::Secret;
use keel_http::problem::Problem;
use keel_http::{catch_panic, context, problems, request_id};
use keel_telemetry::{METRICS_CONTENT_TYPE, Metrics};

/// One service's management routes and what they share; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    token: Option<Secret>,
    pub(crate) sources: Sources,
    process: Process,
    codes: SignInCodes,
    /// The service's audit log, when it keeps one (`/admin/audit`).
    pub(crate) audit: Option<Arc<dyn AuditSource>>,
    /// Its consumers, for the console's pause and dead letters.
    pub(crate) consumers: Arc<[Arc<dyn ConsumerOps>]>,
    /// Its rotating data keys, for the console's key section.
    pub(crate) data_keys: Option<Arc<dyn crate::ops::DataKeyOps>>,
    /// The changes made through this listener, for the console page.
    pub(crate) journal: crate::console::Journal,
}

impl Admin {
    /// The admin of the service `sources` describes, behind `token` (`management.admin_token`;
    /// `None` closes `/admin/*`). Its page shows the members of `process` with the same token.
    pub fn new(token: Option<Secret>, sources: Sources, process: Process) -> Self {
        Self {
            token,
            sources,
            process,
            codes: SignInCodes::default(),
            audit: None,
            consumers: Arc::new([]),
            data_keys: None,
            journal: Default::default(),
        }
    }

    /// Serves `source` on `/admin/audit` (see [`crate::audit`]).
    pub fn with_audit(mut self, source: Arc<dyn AuditSource>) -> Self {
        self.audit = Some(source);
        self
    }

    /// Lets the console pause `consumers` and act on their topics' dead letters (see
    /// [`crate::ops`]).
    pub fn with_consumers(mut self, consumers: Vec<Arc<dyn ConsumerOps>>) -> Self {
        self.consumers = consumers.into();
        self
    }

    /// Shows `keys` on the console and lets an operator rotate them (see [`crate::ops`]).
    pub fn with_data_keys(mut self, keys: Arc<dyn crate::ops::DataKeyOps>) -> Self {
        self.data_keys = Some(keys);
        self
    }

    /// What the status page reads.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// The one-time sign-in codes of this listener; `None` without an admin token.
    pub fn sign_in_codes(&self) -> Option<&SignInCodes> {
        self.token.as_ref().map(|_| &self.codes)
    }

    /// Records where the service listens and shows it on the pages of its process.
    pub fn serving(&self, bound: Bound) {
        let _ = self.sources.listeners.set(bound);
        self.process.join(self.sources.clone(), self.token.clone());
    }

    /// The management routes, `/metrics` rendering `metrics`. On a listener of its own
    /// (`own_listener`) any other path is 404; sharing the public listener, the API's fallback
    /// answers instead.
    pub fn router(&self, metrics: Metrics, own_listener: bool) -> Router {
        router(metrics, self.clone(), own_listener)
    }

    /// The admin token, when admin is open.
    pub(crate) fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// The variable that sets this service's admin token.
    fn token_setting(&self) -> String {
        format!("{}__MANAGEMENT__ADMIN_TOKEN", keel_config::env_prefix(&self.sources.identity.name))
    }
}

fn router(metrics: Metrics, admin: Admin, own_listener: bool) -> Router {
    let guarded = Router::new()
        .route("/admin/log-level", get(crate::level::get_level).put(crate::level::put_level))
        .route("/admin/console", get(crate::operate::page))
        .route("/admin/status", get(status))
        .route("/admin/flags", get(crate::flags::list))
        .route("/admin/flags/{key}", get(crate::flags::one).put(crate::flags::put).delete(crate::flags::delete))
        .route("/admin/flags/{key}/history", get(crate::flags::history))
        .route("/admin/flags/{key}/evaluate", post(crate::flags::evaluate))
        .route("/admin/audit", get(crate::audit::list))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_admin));
    let open = Router::new()
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        // Checks the session and its CSRF token itself: a browser's change, not a script's.
        .route("/admin/console/flags/{key}", post(crate::console::flag_action))
        .route("/admin/console/instance", post(crate::operate::instance))
        .route("/admin/console/log-level", post(crate::operate::log_level))
        .route("/admin/console/workers/{name}", post(crate::operate::run_worker))
        .route("/admin/console/consumers/{topic}/{group}", post(crate::operate::consumer))
        .route("/admin/console/dead-letters/{topic}", post(crate::operate::dead_letters))
        .route("/admin/console/data-keys", post(crate::operate::rotate_data_key))
        .route(status::STYLESHEET, get(stylesheet));
    let mut router =
        Router::new().route("/metrics", get(render)).with_state(metrics).merge(guarded.merge(open).with_state(admin));
    if own_listener {
        // A person typing the listener's address lands on the page.
        let to_page = || async { Redirect::to("/admin/status") };
        router = router
            .route("/", get(to_page))
            .route("/admin", get(to_page))
            // Browsers ask for it on every page: no icon, and no 404 in their console.
            .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
            .fallback(|| async { Problem::not_found().detail("no such management path") });
    }
    router.layer(
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

fn unauthorized(detail: &str) -> Response {
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

async fn require_admin(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let Some(token) = &admin.token else {
        return unauthorized(&format!(
            "admin endpoints are disabled: set management.admin_token ({})",
            admin.token_setting()
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(keel_http::bearer_token)
        .unwrap_or("");
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    let allowed = token_matches(given.as_bytes(), token.expose().as_bytes())
        || (reading && session::from_headers(req.headers()).is_some_and(|c| session::verify(token, c)));
    let to_login = !allowed && reading && given.is_empty() && wants_html(req.headers());
    if allowed {
        return next.run(req).await;
    }
    if to_login {
        return Redirect::to("/admin/login").into_response();
    }
    unauthorized("a valid admin bearer token is required")
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

/// A page of the admin UI: HTML that loads only the stylesheet, and may be framed by no one.
pub(crate) fn page(status: StatusCode, html: Result<String, askama::Error>) -> Response {
    let html = match html {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "rendering an admin page failed");
            return Problem::internal().into_response();
        }
    };
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct StatusQuery {
    refresh: Option<String>,
}

async fn status(State(admin): State<Admin>, headers: HeaderMap, Query(q): Query<StatusQuery>) -> Response {
    let doc = admin.sources.page_with_product(&admin.process, admin.token.as_ref()).await;
    let mut r = if wants_json(&headers) {
        let mut r = axum::Json(doc).into_response();
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    } else {
        page(StatusCode::OK, status::render_html(&doc, admin.audit.is_some(), status::refresh(q.refresh.as_deref())))
    };
    r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
    r
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        status::CSS,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

fn login_page(admin: &Admin, status: StatusCode, error: Option<&str>) -> Response {
    page(status, status::render_login(&admin.sources.identity.name, &admin.token_setting(), error))
}

/// Signed in: the session cookie, and on to the operator page.
fn signed_in(token: &Secret) -> Response {
    let mut r = Redirect::to("/admin/status").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(Some(&session::issue(token)))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn login_form(State(admin): State<Admin>, Query(q): Query<LoginQuery>) -> Response {
    let Some(token) = &admin.token else {
        let why = format!("Admin endpoints are disabled: set management.admin_token ({}).", admin.token_setting());
        return login_page(&admin, StatusCode::UNAUTHORIZED, Some(&why));
    };
    match q.code {
        Some(code) if admin.codes.redeem(&code) => signed_in(token),
        Some(_) => login_page(
            &admin,
            StatusCode::UNAUTHORIZED,
            Some("This sign-in link was used already or has expired. Sign in with the admin token."),
        ),
        None => login_page(&admin, StatusCode::OK, None),
    }
}

async fn login(
    State(admin): State<Admin>,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(token) = &admin.token else {
        let why = format!("Admin endpoints are disabled: set management.admin_token ({}).", admin.token_setting());
        return login_page(&admin, StatusCode::UNAUTHORIZED, Some(&why));
    };
    match form {
        Ok(axum::Form(f)) if token_matches(f.token.trim().as_bytes(), token.expose().as_bytes()) => signed_in(token),
        _ => login_page(&admin, StatusCode::UNAUTHORIZED, Some("That is not this service's admin token.")),
    }
}

async fn logout(State(admin): State<Admin>, headers: http::HeaderMap) -> Response {
    // Ended here, not only forgotten by this browser: a copy of the cookie stops working too.
    if let (Some(token), Some(cookie)) = (&admin.token, session::from_headers(&headers)) {
        session::end(token, cookie);
    }
    let mut r = Redirect::to("/admin/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
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
