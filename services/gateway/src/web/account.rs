//! Signing up, in and out, confirming an address and resetting a password.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect};
use cityevents_api::auth::{PasswordReset, Registration, TokenPair};
use http::{Method, StatusCode};
use keel::http::extract::Query;
use serde::Deserialize;
use serde_json::json;

use super::Site;
use super::call::Failure;
use super::pages::{self, Layout, Page, PageResult, render};
use super::session;
use crate::routes::Upstream;

/// What a form page shows next to its fields, and above them.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub(crate) fields: BTreeMap<String, String>,
    pub(crate) summary: Option<String>,
    /// The account page's picture form's refusal.
    pub(crate) avatar: Option<String>,
}

impl Errors {
    pub(crate) fn of(f: &Failure) -> Self {
        let fields = f.fields();
        let summary = Some(if fields.is_empty() { f.message() } else { "Check the fields marked below.".to_owned() });
        Self { fields, summary, avatar: None }
    }

    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The status a form page answers with after `f`: the service's 4xx, or 503 and friends.
pub(crate) fn status_of(f: &Failure) -> StatusCode {
    if f.status.is_client_error() || f.status.is_server_error() { f.status } else { StatusCode::BAD_REQUEST }
}

#[derive(Template)]
#[template(path = "web/login.html")]
pub(crate) struct LoginPage {
    pub(crate) layout: Layout,
    pub(crate) email: String,
    pub(crate) next: String,
    pub(crate) errors: Errors,
    /// The OpenID Connect providers offered beside the password.
    pub(crate) providers: Vec<cityevents_api::oidc::Provider>,
}

impl LoginPage {
    /// The link that logs in with provider `id` and comes back to this page's `next`.
    fn provider_href(&self, id: &str) -> String {
        if self.next == "/" {
            return format!("/login/oidc/{id}");
        }
        let next: String = form_urlencoded::byte_serialize(self.next.as_bytes()).collect();
        format!("/login/oidc/{id}?next={next}")
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// `GET /login`.
pub(crate) async fn login_form(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<NextQuery>, keel::http::Problem>,
) -> PageResult {
    let next = pages::local_path(query.as_ref().ok().and_then(|q| q.next.as_deref()));
    if page.viewer.signed.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    let t = LoginPage {
        layout: page.layout(&site, "Log in").await,
        email: String::new(),
        next,
        errors: Errors::default(),
        providers: super::oidc::providers(&site, &page).await,
    };
    Ok(render(StatusCode::OK, &t))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

/// The verify page's layout: no banner asking for what the page itself does.
async fn confirming_layout(site: &Site, page: &Page) -> Layout {
    Layout { confirming: true, ..page.layout(site, "Confirm your address").await }
}

/// `body` with the browser's time zone, for the session's place.
pub(crate) fn with_zone(page: &Page, mut body: serde_json::Value) -> serde_json::Value {
    if let Some(zone) = &page.zone {
        body["time_zone"] = json!(zone.name());
    }
    body
}

/// Signs in at auth with the browser's device token, `User-Agent` and time zone (the session
/// list's device and place), and keeps the session; the pair auth gave.
async fn sign_in(site: &Site, page: &Page, email: &str, password: &str) -> Result<TokenPair, Failure> {
    let mut body = with_zone(page, json!({ "email": email.trim(), "password": password }));
    if let Some(device) = &page.device {
        body["device_token"] = json!(device);
    }
    let path = "/api/v1/auth/login";
    let headers = page.sign_in_headers();
    let r = site.send(Upstream::Auth, Method::POST, path, None, Some(&body), &page.address, &headers).await?;
    let pair: TokenPair = Site::read(Upstream::Auth, &r)?;
    site.sessions.started(site, &pair, &page.address).await?;
    Ok(pair)
}

/// `POST /login`.
pub(crate) async fn login(State(site): State<Arc<Site>>, page: Page, Form(form): Form<LoginForm>) -> PageResult {
    let next = pages::local_path(form.next.as_deref());
    let signed = sign_in(&site, &page, &form.email, &form.password).await;
    Ok(match signed {
        Ok(pair) => {
            let to = if next == "/" { "/?notice=signed_in".to_owned() } else { next };
            let resp = session::start(Redirect::to(&to).into_response(), pair.refresh_token);
            session::remember_device(resp, pair.device_token)
        }
        Err(f) => {
            let mut errors = Errors::of(&f);
            if f.code() == Some("invalid_credentials") {
                errors.summary = Some("That e-mail address and password do not match an account.".into());
            }
            let providers = super::oidc::providers(&site, &page).await;
            let t =
                LoginPage { layout: page.layout(&site, "Log in").await, email: form.email, next, errors, providers };
            render(status_of(&f), &t)
        }
    })
}

/// `POST /logout`.
pub(crate) async fn logout(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    if let Some(signed) = &page.viewer.signed {
        site.sessions.forget(&signed.refresh).await;
        let body = json!({ "refresh_token": signed.refresh });
        // Signed out in this browser whatever auth says; a refusal is logged by the client.
        let _ =
            site.send(Upstream::Auth, Method::POST, "/api/v1/auth/logout", None, Some(&body), &page.address, &[]).await;
    }
    Ok(session::end(Redirect::to("/?notice=signed_out")))
}

#[derive(Template)]
#[template(path = "web/signup.html")]
struct SignupPage {
    layout: Layout,
    name: String,
    email: String,
    errors: Errors,
    min_password: usize,
    /// The OpenID Connect providers offered beside the form.
    providers: Vec<cityevents_api::oidc::Provider>,
}

/// `GET /signup`.
pub(crate) async fn signup_form(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let t = SignupPage {
        layout: page.layout(&site, "Sign up").await,
        name: String::new(),
        email: String::new(),
        errors: Errors::default(),
        min_password: cityevents_api::limits::MIN_PASSWORD,
        providers: super::oidc::providers(&site, &page).await,
    };
    Ok(render(StatusCode::OK, &t))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SignupForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// `POST /signup`: the account is made unverified, its address gets a link, and a new account
/// is signed in at once (auth's `sign_in`); the pages then ask to confirm the address, with a
/// button for a new link. An address that has an account already (or looks like one) gets its
/// mail and no session: the log-in page then says to check the inbox.
pub(crate) async fn signup(State(site): State<Arc<Site>>, page: Page, Form(form): Form<SignupForm>) -> PageResult {
    let body = with_zone(
        &page,
        json!({ "name": form.name.trim(), "email": form.email.trim(), "password": form.password, "sign_in": true }),
    );
    let path = "/api/v1/auth/register";
    let headers = page.sign_in_headers();
    let made = match site.send(Upstream::Auth, Method::POST, path, None, Some(&body), &page.address, &headers).await {
        Ok(r) => Site::read::<Registration>(Upstream::Auth, &r),
        Err(f) => Err(f),
    };
    Ok(match made {
        Ok(Registration { session: Some(pair), .. }) => {
            match site.sessions.started(&site, &pair, &page.address).await {
                Ok(_) => session::start(Redirect::to("/?notice=registered").into_response(), pair.refresh_token),
                // Made and signed in at auth, but the account did not read back: log in.
                Err(_) => Redirect::to("/login?notice=registered_log_in").into_response(),
            }
        }
        Ok(Registration { session: None, .. }) => Redirect::to("/login?notice=registered_log_in").into_response(),
        Err(f) => {
            let t = SignupPage {
                layout: page.layout(&site, "Sign up").await,
                name: form.name,
                email: form.email,
                errors: Errors::of(&f),
                providers: super::oidc::providers(&site, &page).await,
                min_password: cityevents_api::limits::MIN_PASSWORD,
            };
            render(status_of(&f), &t)
        }
    })
}

#[derive(Template)]
#[template(path = "web/verify.html")]
struct VerifyPage {
    layout: Layout,
    token: String,
    errors: Errors,
    sent: bool,
}

impl VerifyPage {
    fn can_resend(&self) -> bool {
        self.layout.user.as_ref().is_some_and(|u| !u.email_verified)
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// `GET /verify-email?token=…` (the link in the mail): a button that confirms, so a mail
/// scanner following the link does not spend it.
pub(crate) async fn verify_form(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<TokenQuery>, keel::http::Problem>,
) -> PageResult {
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    let t = VerifyPage { layout: confirming_layout(&site, &page).await, token, errors: Errors::default(), sent: false };
    Ok(render(StatusCode::OK, &t))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct VerifyForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    resend: bool,
}

/// `POST /verify-email`: confirms with the link's token, or (`resend`) mails a new link.
pub(crate) async fn verify(State(site): State<Arc<Site>>, page: Page, Form(form): Form<VerifyForm>) -> PageResult {
    let result = if form.resend {
        let Some(token) = page.token() else {
            return Ok(Redirect::to(&pages::login_then("/verify-email")).into_response());
        };
        let empty = json!({});
        site.send(
            Upstream::Auth,
            Method::POST,
            "/api/v1/auth/verify-email/request",
            Some(token),
            Some(&empty),
            &page.address,
            &[],
        )
        .await
    } else {
        let body = json!({ "token": form.token.trim() });
        site.send(Upstream::Auth, Method::POST, "/api/v1/auth/verify-email", None, Some(&body), &page.address, &[])
            .await
    };
    Ok(match result {
        Ok(_) if form.resend => {
            let t = VerifyPage {
                layout: confirming_layout(&site, &page).await,
                token: String::new(),
                errors: Errors::default(),
                sent: true,
            };
            render(StatusCode::OK, &t)
        }
        Ok(_) => {
            // The account changed: read it afresh on the next page.
            if let Some(signed) = &page.viewer.signed {
                site.sessions.forget(&signed.refresh).await;
                // The cookie still names the session; the next page refreshes it.
                return Ok(Redirect::to("/?notice=verified").into_response());
            }
            Redirect::to("/login?notice=verified").into_response()
        }
        Err(f) => {
            let mut errors = Errors::of(&f);
            if f.code() == Some("invalid_token") {
                errors.summary = Some(
                    "This link has expired or was already used. Log in and ask for a new one from your account page."
                        .into(),
                );
            }
            let t =
                VerifyPage { layout: confirming_layout(&site, &page).await, token: form.token, errors, sent: false };
            render(status_of(&f), &t)
        }
    })
}

#[derive(Template)]
#[template(path = "web/reset.html")]
struct ResetPage {
    layout: Layout,
    token: String,
    email: String,
    errors: Errors,
    sent: bool,
    min_password: usize,
}

/// `GET /reset-password[?token=…]`: ask for a link, or (with the link's token) choose a new
/// password.
pub(crate) async fn reset_form(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<TokenQuery>, keel::http::Problem>,
) -> PageResult {
    let mut token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    let mut errors = Errors::default();
    let mut status = StatusCode::OK;
    // The link is checked before its form: a used or expired one says so at once, with the
    // address form to ask for a new one, instead of after a new password was typed.
    if !token.is_empty() {
        let body = json!({ "token": token.trim() });
        let path = "/api/v1/auth/password-reset/check";
        if let Err(f) = site.send(Upstream::Auth, Method::POST, path, None, Some(&body), &page.address, &[]).await {
            errors = Errors::of(&f);
            status = status_of(&f);
            // Only a link that no longer works loses its form; auth busy or away keeps it (the
            // form says why, and setting the password checks the link anyway).
            if f.code() == Some("invalid_token") || f.status == StatusCode::BAD_REQUEST {
                errors.summary = Some(EXPIRED_RESET.into());
                token.clear();
            }
        }
    }
    let t = ResetPage {
        layout: page.layout(&site, "Reset your password").await,
        token,
        email: String::new(),
        errors,
        sent: false,
        min_password: cityevents_api::limits::MIN_PASSWORD,
    };
    Ok(render(status, &t))
}

/// What a reset link that no longer works says.
const EXPIRED_RESET: &str = "This link has expired or was already used. Ask for a new one below.";

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ResetForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

/// `POST /reset-password`: mails a link (`email`), or sets the password (`token`, `password`),
/// which ends every session of the account, this browser's too.
pub(crate) async fn reset(State(site): State<Arc<Site>>, page: Page, Form(form): Form<ResetForm>) -> PageResult {
    let setting = !form.token.trim().is_empty();
    let result = if setting {
        let body = json!({ "token": form.token.trim(), "password": form.password });
        site.send(Upstream::Auth, Method::POST, "/api/v1/auth/password-reset", None, Some(&body), &page.address, &[])
            .await
    } else {
        let body = json!({ "email": form.email.trim() });
        site.send(
            Upstream::Auth,
            Method::POST,
            "/api/v1/auth/password-reset/request",
            None,
            Some(&body),
            &page.address,
            &[],
        )
        .await
    };
    Ok(match result {
        Ok(answer) if setting => {
            if let Some(signed) = &page.viewer.signed {
                site.sessions.forget(&signed.refresh).await;
            }
            // The reset proved the mailbox: this browser's sign-ins are counted on their own.
            let device = serde_json::from_slice::<PasswordReset>(&answer.body).ok().map(|r| r.device_token);
            session::remember_device(session::end(Redirect::to("/login?notice=password_reset")), device)
        }
        Ok(_) => {
            let t = ResetPage {
                layout: page.layout(&site, "Reset your password").await,
                token: String::new(),
                email: form.email,
                errors: Errors::default(),
                sent: true,
                min_password: cityevents_api::limits::MIN_PASSWORD,
            };
            render(StatusCode::OK, &t)
        }
        Err(f) => {
            let mut errors = Errors::of(&f);
            if f.code() == Some("invalid_token") {
                errors.summary = Some(EXPIRED_RESET.into());
            }
            let token = if f.code() == Some("invalid_token") { String::new() } else { form.token };
            let t = ResetPage {
                layout: page.layout(&site, "Reset your password").await,
                token,
                email: form.email,
                errors,
                sent: false,
                min_password: cityevents_api::limits::MIN_PASSWORD,
            };
            render(status_of(&f), &t)
        }
    })
}
