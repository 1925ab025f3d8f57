//! Logging in with an OpenID Connect provider (auth's `app.oidc.providers`): the log-in and
//! sign-up pages offer a link per provider; auth does every check (see its `oidc` module).
//!
//! * `GET /login/oidc/{provider}?next=` starts a flow at auth and sends the browser to the
//!   provider, keeping the flow's `state` in an HTTP-only cookie (`ce_oidc`, for an hour at most). A
//!   link, not a form: the site's `form-action 'self'` would stop a form's redirect to the
//!   provider.
//! * `POST /account/identities/link` `{provider, password}` (the account page) starts a flow that
//!   links the provider to the signed-in person's account, once auth has the account's password
//!   (when it has one): a new way in must not come with a session alone. The answer is a page
//!   with a link to the provider (the form's redirect would be stopped, as above).
//! * `GET /login/oidc/{provider}/callback` hands the provider's `code` and `state`, with the
//!   cookie's `state`, to auth: signed in (a new account is welcomed), linked, or the page
//!   offering to link the sign-in to the account with the same address (`POST /login/oidc/link`
//!   with its password). A refusal is the log-in page with a sentence.
//! * `POST /account/identities/{provider}/unlink` (the account page) unlinks one, never the last
//!   way to log in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use cityevents_api::oidc::{Identities, Outcome, Provider, Providers, Start};
use http::{HeaderMap, Method, StatusCode, header};
use keel::http::extract::Query;
use serde::Deserialize;
use serde_json::json;

use super::Site;
use super::account::{Errors, LoginPage, status_of, with_zone};
use super::call::Failure;
use super::pages::{self, Layout, Page, PageResult, render};
use super::session;
use crate::routes::Upstream;

/// How long the list of providers is kept (auth's configuration changes with a restart).
const PROVIDERS_TTL: Duration = Duration::from_secs(60);
/// How long the `state` cookie lives: the longest `app.oidc.flow_ttl` auth takes, so auth's
/// setting decides (the cookie is single-use and cleared by the callback).
const STATE_MAX_AGE: Duration = Duration::from_secs(3600);

/// The providers the viewer may sign in or link with: none while the capability
/// (`cityevents.signin.providers`) is off for them.
pub(crate) async fn providers(site: &Site, page: &Page) -> Vec<Provider> {
    if !page.caps.providers {
        return Vec::new();
    }
    all_providers(site, page).await
}

/// The providers auth offers, kept a minute; none when auth does not answer.
async fn all_providers(site: &Site, page: &Page) -> Vec<Provider> {
    if let Ok(kept) = site.providers.lock()
        && let Some((at, list)) = kept.as_ref()
        && at.elapsed() < PROVIDERS_TTL
    {
        return list.clone();
    }
    match site.get::<Providers>(Upstream::Auth, "/api/v1/auth/oidc/providers", None, &page.address).await {
        Ok(p) => {
            if let Ok(mut kept) = site.providers.lock() {
                *kept = Some((Instant::now(), p.items.clone()));
            }
            p.items
        }
        Err(_) => Vec::new(),
    }
}

/// Provider `id`'s name, as auth lists it (the id itself when it does not).
async fn provider_name(site: &Site, page: &Page, id: &str) -> String {
    all_providers(site, page).await.into_iter().find(|p| p.id == id).map_or_else(|| id.to_owned(), |p| p.name)
}

/// A provider id as auth takes it: anything else names no provider.
fn provider_id(id: &str) -> Option<&str> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(id)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StartQuery {
    next: Option<String>,
}

/// The log-in page with `summary`, for a flow that did not end signed in.
async fn login_refused(site: &Site, page: &Page, status: StatusCode, summary: String, next: String) -> Response {
    let errors = Errors { summary: Some(summary), ..Errors::default() };
    let t = LoginPage {
        layout: page.layout(site, "Log in").await,
        email: String::new(),
        next,
        errors,
        providers: providers(site, page).await,
    };
    forget_state(site, render(status, &t))
}

/// What a failed call to auth's flow routes says to the person.
fn sentence(f: &Failure, provider: &str) -> String {
    match f.code() {
        Some("oidc_refused") => format!(
            "The log-in with {provider} could not be completed (it may have expired or been used already). Try again."
        ),
        Some("provider_unavailable") => {
            format!("{provider} cannot be reached right now. Try again in a moment, or log in with your password.")
        }
        Some("provider_not_found") => "That way to log in is not offered here.".to_owned(),
        _ => f.message(),
    }
}

/// `GET /login/oidc/{provider}`.
pub(crate) async fn start(
    State(site): State<Arc<Site>>,
    page: Page,
    Path(id): Path<String>,
    query: Result<Query<StartQuery>, keel::http::Problem>,
) -> PageResult {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let next = pages::local_path(query.next.as_deref());
    let Some(id) = provider_id(&id) else { return Ok(pages::not_found(&page)) };
    if page.token().is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    let name = provider_name(&site, &page, id).await;
    let path = format!("/api/v1/auth/oidc/{id}/start");
    match start_at(&site, &page, &path, None, &json!({ "next": next })).await {
        Ok((s, cookie)) => {
            let mut resp = Redirect::to(&s.authorization_url).into_response();
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            Ok(resp)
        }
        Err(f) => Ok(login_refused(&site, &page, status_of(&f), sentence(&f, &name), next).await),
    }
}

/// Starts a flow at auth's `path`: its answer and the `state` cookie to set.
async fn start_at(
    site: &Site,
    page: &Page,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> Result<(Start, http::HeaderValue), Failure> {
    let r = site.send(Upstream::Auth, Method::POST, path, token, Some(body), &page.address, &[]).await?;
    let s = Site::read::<Start>(Upstream::Auth, &r)?;
    let sessions = &site.sessions;
    let cookie = sessions.cookie(sessions.oidc_cookie(), s.state.clone(), STATE_MAX_AGE);
    Ok((s, cookie))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LinkStartForm {
    provider: String,
    #[serde(default)]
    password: String,
}

#[derive(Template)]
#[template(path = "web/oidc_continue.html")]
struct ContinuePage {
    layout: Layout,
    provider_name: String,
    authorization_url: String,
}

/// `POST /account/identities/link`: auth checks the password and starts a flow that links.
pub(crate) async fn link_start(
    State(site): State<Arc<Site>>,
    page: Page,
    Form(form): Form<LinkStartForm>,
) -> PageResult {
    let token = page.signed("/account")?;
    let Some(id) = provider_id(&form.provider) else { return Ok(pages::not_found(&page)) };
    let name = provider_name(&site, &page, id).await;
    let path = format!("/api/v1/auth/identities/{id}/start");
    let password = (!form.password.is_empty()).then_some(form.password.as_str());
    let body = json!({ "next": "/account", "password": password });
    match start_at(&site, &page, &path, Some(token), &body).await {
        Ok((s, cookie)) => {
            let t = ContinuePage {
                layout: page.layout(&site, format!("Link {name}")).await,
                provider_name: name,
                authorization_url: s.authorization_url,
            };
            let mut resp = render(StatusCode::OK, &t);
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            Ok(resp)
        }
        Err(f) if f.status.is_client_error() && f.status != StatusCode::UNAUTHORIZED => {
            let mut errors = Errors::of(&f);
            // The account page's own field: its password form has another.
            if let Some(m) = errors.fields.remove("password") {
                errors.fields.insert("link_password".to_owned(), m);
            } else {
                errors.summary = Some(sentence(&f, &name));
            }
            Ok(super::settings::account_refused(&site, &page, token, errors, status_of(&f)).await)
        }
        Err(f) => Ok(pages::failed(&page, &f, "/account")),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `resp` with the `state` cookie cleared.
fn forget_state(site: &Site, mut resp: Response) -> Response {
    let sessions = &site.sessions;
    let cookie = sessions.cookie(sessions.oidc_cookie(), String::new(), Duration::ZERO);
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

#[derive(Template)]
#[template(path = "web/oidc_link.html")]
struct LinkPage {
    layout: Layout,
    offer: String,
    email: String,
    provider_name: String,
    has_password: bool,
    next: String,
    errors: Errors,
}

/// `GET /login/oidc/{provider}/callback`.
pub(crate) async fn callback(
    State(site): State<Arc<Site>>,
    page: Page,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<CallbackQuery>, keel::http::Problem>,
) -> PageResult {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let Some(id) = provider_id(&id) else { return Ok(pages::not_found(&page)) };
    let name = provider_name(&site, &page, id).await;
    let refused = |summary: String| login_refused(&site, &page, StatusCode::BAD_REQUEST, summary, "/".to_owned());
    if let Some(error) = &query.error {
        let summary = if error == "access_denied" {
            format!("The log-in with {name} was canceled. Log in another way, or try again.")
        } else {
            format!("{name} did not log you in. Try again, or log in another way.")
        };
        return Ok(refused(summary).await);
    }
    let browser_state =
        session::cookie_value(&headers, site.sessions.oidc_cookie()).filter(|s| session::well_formed(s));
    let (Some(code), Some(state), Some(browser_state)) = (query.code, query.state, browser_state) else {
        let summary = format!(
            "The log-in with {name} could not be completed in this browser (it may have been started in another one, \
             or too long ago). Try again."
        );
        return Ok(refused(summary).await);
    };
    let body = with_zone(&page, json!({ "state": state, "browser_state": browser_state, "code": code }));
    let path = format!("/api/v1/auth/oidc/{id}/callback");
    let headers = page.sign_in_headers();
    let answered =
        match site.send(Upstream::Auth, Method::POST, &path, None, Some(&body), &page.address, &headers).await {
            Ok(r) => Site::read::<Outcome>(Upstream::Auth, &r),
            Err(f) => Err(f),
        };
    let outcome = match answered {
        Ok(o) => o,
        Err(f) => {
            let status = status_of(&f);
            return Ok(login_refused(&site, &page, status, sentence(&f, &name), "/".to_owned()).await);
        }
    };
    Ok(forget_state(&site, finish(&site, &page, outcome).await?))
}

/// Where an outcome takes the browser.
async fn finish(site: &Site, page: &Page, outcome: Outcome) -> PageResult {
    Ok(match outcome {
        Outcome::SignedIn { session, next, created } => {
            if let Err(f) = site.sessions.started(site, &session, &page.address).await {
                return Ok(pages::failed(page, &f, "/login"));
            }
            let to = match (created, next.as_str()) {
                (true, "/") => "/?notice=welcome".to_owned(),
                (false, "/") => "/?notice=signed_in".to_owned(),
                _ => next,
            };
            session::start(Redirect::to(&to).into_response(), session.refresh_token)
        }
        Outcome::Linked { .. } => Redirect::to("/account?notice=linked").into_response(),
        Outcome::ConfirmLink { offer, email, provider_name, has_password, next } => {
            let t = LinkPage {
                layout: page.layout(site, format!("Link {provider_name}")).await,
                offer,
                email,
                provider_name,
                has_password,
                next,
                errors: Errors::default(),
            };
            render(StatusCode::OK, &t)
        }
    })
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LinkForm {
    #[serde(default)]
    offer: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    provider_name: String,
    next: Option<String>,
}

/// `POST /login/oidc/link`: the offer confirmed with the account's password.
pub(crate) async fn link(State(site): State<Arc<Site>>, page: Page, Form(form): Form<LinkForm>) -> PageResult {
    let body = with_zone(&page, json!({ "offer": form.offer, "password": form.password }));
    let headers = page.sign_in_headers();
    let path = "/api/v1/auth/oidc/link";
    let answered = match site.send(Upstream::Auth, Method::POST, path, None, Some(&body), &page.address, &headers).await
    {
        Ok(r) => Site::read::<Outcome>(Upstream::Auth, &r),
        Err(f) => Err(f),
    };
    match answered {
        Ok(outcome) => finish(&site, &page, outcome).await,
        Err(f) if f.code() == Some("invalid_token") => {
            let summary = "This offer to link has expired or was used. Log in again with the provider.".to_owned();
            Ok(login_refused(&site, &page, StatusCode::BAD_REQUEST, summary, "/".to_owned()).await)
        }
        Err(f) => {
            let mut errors = Errors::of(&f);
            if f.code() == Some("invalid_credentials") {
                errors.summary = None;
                errors.fields.insert("password".into(), "That is not this account's password.".into());
            }
            let provider_name = form.provider_name.chars().take(40).collect::<String>();
            let t = LinkPage {
                layout: page.layout(&site, format!("Link {provider_name}")).await,
                offer: form.offer,
                email: form.email.chars().take(254).collect(),
                provider_name,
                has_password: true,
                next: pages::local_path(form.next.as_deref()),
                errors,
            };
            Ok(render(status_of(&f), &t))
        }
    }
}

/// The viewer's ways to log in, for the account page; `None` when auth does not answer.
pub(crate) async fn identities(site: &Site, page: &Page, token: &str) -> Option<Identities> {
    site.get::<Identities>(Upstream::Auth, "/api/v1/auth/identities", Some(token), &page.address).await.ok()
}

/// `POST /account/identities/{provider}/unlink`.
pub(crate) async fn unlink(State(site): State<Arc<Site>>, page: Page, Path(id): Path<String>) -> PageResult {
    let token = page.signed("/account")?;
    let Some(id) = provider_id(&id) else { return Ok(pages::not_found(&page)) };
    let path = format!("/api/v1/auth/identities/{id}");
    match site.send(Upstream::Auth, Method::DELETE, &path, Some(token), None, &page.address, &[]).await {
        Ok(_) => Ok(Redirect::to("/account?notice=unlinked").into_response()),
        Err(f) => Ok(pages::failed(&page, &f, "/account")),
    }
}
