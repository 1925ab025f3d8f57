//! A signed-in person's account: who they are, their password, the devices signed in, and
//! which mails they get.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use cityevents_api::auth::{SessionList, TokenPair};
use cityevents_api::notifications::MailPreferences;
use http::{Method, StatusCode};
use keel::http::extract::{Path, Query};
use serde::Deserialize;
use serde_json::json;

use super::Site;
use super::account::{Errors, status_of};
use super::call::Failure;
use super::pages::{self, Layout, Page, PageResult, PathId, render};
use super::session;
use crate::routes::Upstream;

/// A live session as the account page lists it.
struct SessionRow {
    id: String,
    started: String,
    started_at: String,
    last_used: String,
    last_used_at: String,
    device: String,
    place: String,
    /// This browser's own session.
    current: bool,
}

#[derive(Template)]
#[template(path = "web/account.html")]
struct AccountPage {
    layout: Layout,
    /// `None`: auth did not list them just now.
    sessions: Option<Vec<SessionRow>>,
    member_since: String,
    errors: Errors,
    min_password: usize,
    /// The profile form's values: as saved, or as sent when refused.
    name: String,
    bio: String,
    city: String,
    /// The viewer's picture (400×400), when they gave one.
    avatar: Option<String>,
    /// The picture form's refusal.
    avatar_error: Option<String>,
    /// The ways to log in (providers linked, a password); `None`: auth did not answer.
    identities: Option<cityevents_api::oidc::Identities>,
}

impl AccountPage {
    fn role(&self) -> &str {
        match self.layout.user.as_ref().map(|u| u.role.as_str()) {
            Some("admin") => "Administrator",
            Some("moderator") => "Moderator",
            _ => "Member",
        }
    }

    fn verified(&self) -> bool {
        self.layout.user.as_ref().is_some_and(|u| u.email_verified)
    }
}

const ACCOUNT: &str = "/account";

async fn sessions(site: &Site, page: &Page, token: &str) -> Result<SessionList, Failure> {
    site.get::<SessionList>(Upstream::Auth, "/api/v1/auth/sessions", Some(token), &page.address).await
}

async fn account_page(
    site: &Site,
    page: &Page,
    sessions: Result<SessionList, Failure>,
    errors: Errors,
    status: StatusCode,
) -> Response {
    account_page_with(site, page, sessions, errors, status, None).await
}

/// The account page with `errors` (a form of the page was refused).
pub(crate) async fn account_refused(
    site: &Site,
    page: &Page,
    token: &str,
    errors: Errors,
    status: StatusCode,
) -> Response {
    let listed = sessions(site, page, token).await;
    account_page(site, page, listed, errors, status).await
}

/// The account page with the picture form's refusal `f`.
async fn avatar_refused(site: &Site, page: &Page, token: &str, f: &Failure) -> Response {
    let listed = sessions(site, page, token).await;
    let errors = Errors { avatar: Some(f.message()), ..Errors::default() };
    account_page(site, page, listed, errors, status_of(f)).await
}

async fn account_page_with(
    site: &Site,
    page: &Page,
    sessions: Result<SessionList, Failure>,
    errors: Errors,
    status: StatusCode,
    sent: Option<(String, String, String)>,
) -> Response {
    let profile = match page.viewer.user() {
        Some(u) => {
            let path = format!("/api/v1/profiles/{}", u.id);
            site.get::<cityevents_api::auth::Profile>(Upstream::Auth, &path, None, &page.address).await.ok()
        }
        None => None,
    };
    let avatar = profile.as_ref().and_then(|p| p.avatar.as_ref()).map(|a| a.large.clone());
    let (name, bio, city) = match sent {
        Some(values) => values,
        None => {
            let name = page.viewer.user().map(|u| u.name.clone()).unwrap_or_default();
            let (bio, city) = profile.map(|p| (p.bio, p.city)).unwrap_or_default();
            (name, bio, city)
        }
    };
    let avatar_error = errors.avatar.clone();
    let sessions = sessions.ok().map(|list| {
        list.items
            .into_iter()
            .map(|s| SessionRow {
                id: s.id,
                started: page.when(s.started_at, "UTC"),
                started_at: pages::machine_time(s.started_at),
                last_used: page.when(s.last_used_at, "UTC"),
                last_used_at: pages::machine_time(s.last_used_at),
                device: s.device,
                place: s.place,
                current: s.current,
            })
            .collect()
    });
    let member_since = page.viewer.user().map(|u| page.when(u.created_at, "UTC")).unwrap_or_default();
    let identities = match page.token() {
        Some(token) => super::oidc::identities(site, page, token).await,
        None => None,
    };
    let t = AccountPage {
        identities,
        layout: page.layout(site, "Your account").await,
        sessions,
        member_since,
        errors,
        min_password: cityevents_api::limits::MIN_PASSWORD,
        name,
        bio,
        city,
        avatar,
        avatar_error,
    };
    render(status, &t)
}

/// The account page again with the profile form's refusal `f` next to its fields.
pub(crate) async fn profile_errors(site: &Site, page: &Page, f: &Failure, sent: (String, String, String)) -> Response {
    let Some(token) = page.token() else { return pages::failed(page, f, ACCOUNT) };
    let listed = sessions(site, page, token).await;
    account_page_with(site, page, listed, Errors::of(f), status_of(f), Some(sent)).await
}

/// `GET /account`.
pub(crate) async fn show(
    State(site): State<Arc<Site>>,
    page: Page,
    query: Result<Query<AccountQuery>, keel::http::Problem>,
) -> PageResult {
    let token = page.signed(ACCOUNT)?;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let listed = sessions(&site, &page, token).await;
    // Ending a session, here or elsewhere, ends the account's access tokens: the kept one may be
    // refused now. It is dropped then (see `Site::send`), so one more load refreshes the session.
    if let Err(f) = &listed
        && f.status == StatusCode::UNAUTHORIZED
        && !query.again
    {
        let mut again = form_urlencoded::Serializer::new(String::new());
        again.append_pair("again", "true");
        if let Some(n) = &query.notice {
            again.append_pair("notice", n);
        }
        return Ok(Redirect::to(&format!("{ACCOUNT}?{}", again.finish())).into_response());
    }
    Ok(account_page(&site, &page, listed, Errors::default(), StatusCode::OK).await)
}

/// `GET /account`'s query: the notice to show, and whether this is the reload after a refused
/// token (at most one).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AccountQuery {
    #[serde(default)]
    again: bool,
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
}

/// `POST /account/password`: auth ends every session and starts a new one for this browser.
pub(crate) async fn change_password(
    State(site): State<Arc<Site>>,
    page: Page,
    Form(form): Form<PasswordForm>,
) -> PageResult {
    let token = page.signed(ACCOUNT)?;
    let body = json!({ "current_password": form.current_password, "new_password": form.new_password });
    let pair = site.post::<TokenPair>(Upstream::Auth, "/api/v1/auth/password", Some(token), &body, &page.address).await;
    Ok(match pair {
        Ok(pair) => {
            if let Some(signed) = &page.viewer.signed {
                site.sessions.forget(&signed.refresh).await;
            }
            // The new pair is this browser's session whether or not the account reads back now.
            let _ = site.sessions.started(&site, &pair, &page.address).await;
            session::start(Redirect::to("/account?notice=password_changed").into_response(), pair.refresh_token)
        }
        Err(f) if f.status.is_client_error() && f.status != StatusCode::UNAUTHORIZED => {
            let mut errors = Errors::of(&f);
            if f.code() == Some("account_banned") {
                errors.summary = Some(f.message());
            }
            let listed = sessions(&site, &page, token).await;
            account_page(&site, &page, listed, errors, status_of(&f)).await
        }
        Err(f) => pages::failed(&page, &f, ACCOUNT),
    })
}

/// `POST /account/sessions/{id}/end`: logs one device out (this one too, if it is this one).
pub(crate) async fn end_session(State(site): State<Arc<Site>>, page: Page, id: PathId) -> PageResult {
    let token = page.signed(ACCOUNT)?;
    let Ok(Path(id)) = id else { return Ok(pages::not_found(&page)) };
    let path = format!("/api/v1/auth/sessions/{id}");
    Ok(match site.send(Upstream::Auth, Method::DELETE, &path, Some(token), None, &page.address, &[]).await {
        // Gone already (another tab ended it): what was asked for is so.
        Ok(_) => Redirect::to("/account?notice=session_ended").into_response(),
        Err(f) if f.code() == Some("session_not_found") => {
            Redirect::to("/account?notice=session_ended").into_response()
        }
        Err(f) => pages::failed(&page, &f, ACCOUNT),
    })
}

/// `POST /account/logout-all`: every device, this one included.
pub(crate) async fn logout_all(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(ACCOUNT)?;
    let empty = json!({});
    Ok(
        match site
            .send(
                Upstream::Auth,
                Method::POST,
                "/api/v1/auth/logout-all",
                Some(token),
                Some(&empty),
                &page.address,
                &[],
            )
            .await
        {
            Ok(_) => {
                if let Some(signed) = &page.viewer.signed {
                    site.sessions.forget(&signed.refresh).await;
                }
                session::end(Redirect::to("/login?notice=signed_out_everywhere"))
            }
            Err(f) => pages::failed(&page, &f, ACCOUNT),
        },
    )
}

/// A kind of mail the preferences page lists.
struct Choice {
    name: &'static str,
    label: &'static str,
    on: bool,
}

#[derive(Template)]
#[template(path = "web/mail_settings.html")]
struct MailSettings {
    layout: Layout,
    choices: Vec<Choice>,
}

const MAIL_SETTINGS: &str = "/settings/notifications";

/// `GET /settings/notifications` (linked from every mail that can be turned off).
pub(crate) async fn mail(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(MAIL_SETTINGS)?;
    let prefs: MailPreferences =
        match site.get(Upstream::Notifier, "/api/v1/me/mail-preferences", Some(token), &page.address).await {
            Ok(p) => p,
            Err(f) => return Ok(pages::failed(&page, &f, MAIL_SETTINGS)),
        };
    let t = MailSettings { layout: page.layout(&site, "Mail settings").await, choices: choices(&prefs) };
    Ok(render(StatusCode::OK, &t))
}

fn choices(p: &MailPreferences) -> Vec<Choice> {
    vec![
        Choice { name: "event_canceled", label: "An event I joined is canceled", on: p.event_canceled },
        Choice { name: "waitlist_promoted", label: "I get a seat from the waitlist", on: p.waitlist_promoted },
        Choice { name: "removed", label: "An organizer removes me from an event", on: p.removed },
        Choice {
            name: "followed_published",
            label: "An organizer I follow publishes an event",
            on: p.followed_published,
        },
        Choice { name: "joined", label: "I join an event (with it for my calendar)", on: p.joined },
        Choice { name: "event_changed", label: "An event I joined moves or changes its venue", on: p.event_changed },
        Choice {
            name: "reminders",
            label: "An event I hold a seat in starts soon (a day and an hour before)",
            on: p.reminders,
        },
    ]
}

/// The preferences form: a box left unticked is not sent, so it means off.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct MailForm {
    #[serde(default)]
    event_canceled: Option<String>,
    #[serde(default)]
    waitlist_promoted: Option<String>,
    #[serde(default)]
    removed: Option<String>,
    #[serde(default)]
    followed_published: Option<String>,
    #[serde(default)]
    joined: Option<String>,
    #[serde(default)]
    event_changed: Option<String>,
    #[serde(default)]
    reminders: Option<String>,
}

impl MailForm {
    fn preferences(&self) -> MailPreferences {
        MailPreferences {
            event_canceled: self.event_canceled.is_some(),
            waitlist_promoted: self.waitlist_promoted.is_some(),
            removed: self.removed.is_some(),
            followed_published: self.followed_published.is_some(),
            joined: self.joined.is_some(),
            event_changed: self.event_changed.is_some(),
            reminders: self.reminders.is_some(),
        }
    }
}

/// `POST /settings/notifications`.
pub(crate) async fn save_mail(State(site): State<Arc<Site>>, page: Page, Form(form): Form<MailForm>) -> PageResult {
    let token = page.signed(MAIL_SETTINGS)?;
    let body = match serde_json::to_value(form.preferences()) {
        Ok(b) => b,
        Err(_) => return Ok(pages::failed(&page, &Failure::unreadable(Upstream::Notifier), MAIL_SETTINGS)),
    };
    let path = "/api/v1/me/mail-preferences";
    Ok(match site.send(Upstream::Notifier, Method::PUT, path, Some(token), Some(&body), &page.address, &[]).await {
        Ok(_) => Redirect::to("/settings/notifications?notice=saved").into_response(),
        Err(f) => pages::failed(&page, &f, MAIL_SETTINGS),
    })
}

/// `POST /account/avatar`: the picture form (multipart, its CSRF token in the action's query),
/// passed on as it came to `PUT /api/v1/me/avatar`.
pub(crate) async fn avatar(State(site): State<Arc<Site>>, page: Page, req: axum::extract::Request) -> PageResult {
    let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
    let token = match page.signed(ACCOUNT) {
        Ok(t) => t,
        Err(halt) => return Err(super::after_draining(req.into_body(), halt).await),
    };
    let sent = site
        .send_upload(Upstream::Auth, "/api/v1/me/avatar", token, content_type, req.into_body(), &page.address)
        .await;
    forget_profile(&site, &page);
    Ok(match sent {
        Ok(_) => Redirect::to("/account?notice=avatar_saved").into_response(),
        Err(f) if f.status.is_client_error() && f.status != StatusCode::UNAUTHORIZED => {
            avatar_refused(&site, &page, token, &f).await
        }
        Err(f) => pages::failed(&page, &f, ACCOUNT),
    })
}

/// Drops the viewer's profile from the site's short-lived copy, so their pages show the new
/// picture at once.
fn forget_profile(site: &Site, page: &Page) {
    if let Some(user) = page.viewer.user() {
        site.profiles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&user.id);
    }
}

/// `POST /account/avatar/remove`.
pub(crate) async fn remove_avatar(State(site): State<Arc<Site>>, page: Page) -> PageResult {
    let token = page.signed(ACCOUNT)?;
    let sent =
        site.send(Upstream::Auth, Method::DELETE, "/api/v1/me/avatar", Some(token), None, &page.address, &[]).await;
    forget_profile(&site, &page);
    Ok(match sent {
        Ok(_) => Redirect::to("/account?notice=avatar_removed").into_response(),
        Err(f) => pages::failed(&page, &f, ACCOUNT),
    })
}

#[cfg(test)]
mod tests {
    use axum::extract::FromRequest as _;

    use super::*;

    async fn form(body: &str) -> MailForm {
        let req = http::Request::post("/")
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        Form::<MailForm>::from_request(req, &()).await.unwrap().0
    }

    #[tokio::test]
    async fn an_unticked_box_turns_its_mail_off() {
        let p = form("csrf=x&event_canceled=on&removed=on").await.preferences();
        assert!(p.event_canceled && p.removed && !p.waitlist_promoted);
        let p = form("csrf=x").await.preferences();
        assert!(!p.event_canceled && !p.removed && !p.waitlist_promoted);
        let listed: Vec<_> = choices(&p).iter().map(|c| c.name).collect();
        assert_eq!(listed, cityevents_common::catalogue::MAIL_PREFERENCES);
    }
}
