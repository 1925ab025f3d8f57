//! What every page shares: who it is for, the layout around it, notices, times in the viewer's
//! zone, and the 404, problem and refused pages.

use std::convert::Infallible;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use cityevents_api::auth::{User, roles};
use cityevents_common::zone::Zone;
use http::request::Parts;
use http::{Extensions, HeaderValue, StatusCode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Site;
use super::call::Failure;
use super::session::{ClientAddress, Csrf, Viewer};
use crate::routes::Upstream;

/// The cookie `site.js` sets to the browser's IANA time zone, so the next pages are rendered in
/// it (without the script, times are in each event's own zone).
const ZONE_COOKIE: &str = "ce_tz";

/// Notices a redirect may ask a page to show (`?notice=`): only these texts, so a link cannot
/// make the site say something of its choosing.
const NOTICES: &[(&str, &str)] = &[
    ("signed_in", "You are logged in."),
    ("signed_out", "You are logged out."),
    ("registered", "Account created. Check your inbox for the link that confirms your address."),
    ("verified", "Your e-mail address is confirmed."),
    ("password_reset", "Your password is changed. Log in with the new one."),
    ("joined", "You are in. See you there!"),
    ("waitlisted", "The event is full, so you are on the waitlist. We will tell you when a seat frees up."),
    ("left", "You left the event."),
    ("created", "Your event is saved as a draft. Publish it when it is ready."),
    ("saved", "Your changes are saved."),
    ("unchanged", "Nothing was changed."),
    ("published", "Your event is published: people can find and join it."),
    ("unpublished", "Your event is back to a draft."),
    ("canceled", "The event is canceled. Everyone who joined is told."),
    ("kicked", "They are removed from the event."),
    ("banned", "They are banned from this event."),
    ("unbanned", "The ban is lifted."),
    ("read", "Marked as read."),
    ("password_changed", "Your password is changed. Your other devices are logged out."),
    ("session_ended", "That session is logged out."),
    ("signed_out_everywhere", "You are logged out on every device."),
    ("role_changed", "The role is changed. It applies from their next page."),
    ("account_banned", "The account is banned and logged out everywhere."),
    ("account_unbanned", "The account's ban is lifted."),
];

/// What a page handler knows of its request (an extractor; never refuses).
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) viewer: Viewer,
    pub(crate) csrf: String,
    pub(crate) address: HeaderValue,
    pub(crate) notice: Option<&'static str>,
    /// The viewer's zone, when their browser told it; else `None` (each event's own).
    pub(crate) zone: Option<Zone>,
}

impl Page {
    /// From the extensions the session middleware set (signed out, fresh CSRF when missing).
    pub(crate) fn of(ext: &Extensions) -> Self {
        Self {
            viewer: ext.get::<Viewer>().cloned().unwrap_or_default(),
            csrf: ext.get::<Csrf>().map(|c| c.0.clone()).unwrap_or_default(),
            address: ext.get::<ClientAddress>().map_or_else(|| HeaderValue::from_static("0.0.0.0"), |a| a.0.clone()),
            notice: None,
            zone: None,
        }
    }

    /// The access token, if signed in.
    pub(crate) fn token(&self) -> Option<&str> {
        self.viewer.token()
    }

    /// The access token, or the redirect to log in and come back to `back`.
    pub(crate) fn signed(&self, back: &str) -> Result<&str, Box<Response>> {
        self.token().ok_or_else(|| Box::new(Redirect::to(&login_then(back)).into_response()))
    }

    /// A path's `{id}` as a UUID: anything else names no event, so the 404 page.
    pub(crate) fn event_id(&self, id: &str) -> Result<uuid::Uuid, Box<Response>> {
        uuid::Uuid::parse_str(id).map_err(|_| Box::new(not_found(self)))
    }

    /// The layout around this page, with the viewer's unread notifications counted.
    pub(crate) async fn layout(&self, site: &Site, title: impl Into<String>) -> Layout {
        let mut unread = 0;
        if let Some(token) = self.token() {
            #[derive(serde::Deserialize)]
            struct Unread {
                unread: u64,
            }
            // Not worth failing a page over: no badge when the notifier does not answer.
            if let Ok(u) = site
                .get::<Unread>(Upstream::Notifier, "/api/v1/me/notifications/unread-count", Some(token), &self.address)
                .await
            {
                unread = u.unread;
            }
        }
        Layout { unread, ..self.bare(title) }
    }

    /// The layout without calling anything (error pages).
    pub(crate) fn bare(&self, title: impl Into<String>) -> Layout {
        Layout {
            title: title.into(),
            user: self.viewer.user().cloned(),
            unchecked: self.viewer.unchecked,
            csrf: self.csrf.clone(),
            notice: self.notice,
            unread: 0,
        }
    }

    /// `t` (UTC) as a person reads it, in the viewer's zone or else `fallback` (the event's).
    pub(crate) fn when(&self, t: OffsetDateTime, fallback: &str) -> String {
        let zone = self.zone.clone().or_else(|| Zone::named(fallback)).unwrap_or_else(Zone::utc);
        when(t, &zone)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut page = Self::of(&parts.extensions);
        let query = parts.uri.query().unwrap_or_default();
        page.notice = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "notice")
            .and_then(|(_, v)| NOTICES.iter().find(|(code, _)| *code == v).map(|(_, text)| *text));
        page.zone = parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == ZONE_COOKIE)
            .and_then(|c| Zone::named(c.value()));
        Ok(page)
    }
}

/// `t` in `zone`: `Tue 1 Dec 2026, 19:00 (Europe/Berlin)`.
pub(crate) fn when(t: OffsetDateTime, zone: &Zone) -> String {
    let local = zone
        .local(cityevents_common::time::to_micros(t))
        .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok())
        .unwrap_or(t);
    let format = time::macros::format_description!(
        "[weekday repr:short] [day padding:none] [month repr:short] [year], [hour]:[minute]"
    );
    let text = local.format(&format).unwrap_or_else(|_| t.to_string());
    format!("{text} ({})", zone.name())
}

/// `t` as the `datetime` of a `<time>` element (UTC, RFC 3339).
pub(crate) fn machine_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The frame of every page.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) title: String,
    pub(crate) user: Option<User>,
    pub(crate) unchecked: bool,
    pub(crate) csrf: String,
    pub(crate) notice: Option<&'static str>,
    pub(crate) unread: u64,
}

/// Whether `user` may moderate (a moderator or an admin).
pub(crate) fn moderator(user: Option<&User>) -> bool {
    user.is_some_and(|u| u.role == roles::MODERATOR || u.role == roles::ADMIN)
}

impl Layout {
    /// Whether the viewer may moderate (a moderator or an admin).
    pub(crate) fn moderates(&self) -> bool {
        moderator(self.user.as_ref())
    }

    /// Whether the viewer is an admin.
    pub(crate) fn administers(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role == roles::ADMIN)
    }
}

/// `t` rendered with `status`; a template that fails to render is logged and a plain 500.
pub(crate) fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<!doctype html><title>Error</title><p>Something went wrong.</p>"))
                .into_response()
        }
    }
}

/// A page that says what went wrong.
#[derive(Template)]
#[template(path = "web/problem.html")]
struct ProblemPage {
    layout: Layout,
    heading: String,
    message: String,
    request_id: Option<String>,
}

/// The 404 page.
pub(crate) fn not_found(page: &Page) -> Response {
    let t = ProblemPage {
        layout: page.bare("Page not found"),
        heading: "Page not found".into(),
        message: "There is no page at this address. It may have moved, or the link may be mistyped.".into(),
        request_id: None,
    };
    render(StatusCode::NOT_FOUND, &t)
}

/// The page of a call that failed (a 401 sends the viewer to log in).
pub(crate) fn failed(page: &Page, f: &Failure, back_to: &str) -> Response {
    if f.status == StatusCode::UNAUTHORIZED {
        return Redirect::to(&login_then(back_to)).into_response();
    }
    let heading = match f.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        s if s.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    let t = ProblemPage {
        layout: page.bare(heading),
        heading: heading.into(),
        message: f.message(),
        request_id: f.request_id().map(str::to_owned),
    };
    render(f.status, &t)
}

/// A form refused before its handler (CSRF, size, cross-site).
pub(crate) fn refused(_site: &Site, status: StatusCode, why: &str, csrf: &str) -> Response {
    let page = Page { csrf: csrf.to_owned(), ..Page::of(&Extensions::new()) };
    let t = ProblemPage {
        layout: page.bare("Form not accepted"),
        heading: "Form not accepted".into(),
        message: why.into(),
        request_id: None,
    };
    render(status, &t)
}

/// `/login?next=<to>`.
pub(crate) fn login_then(to: &str) -> String {
    let next: String = form_urlencoded::byte_serialize(to.as_bytes()).collect();
    format!("/login?next={next}")
}

/// `next` when it is a path of this site, else `/` (never another origin).
pub(crate) fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains(['\\', '\r', '\n']) => p.to_owned(),
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_zone_with_its_name() {
        let t = OffsetDateTime::parse("2030-07-15T17:00:00Z", &Rfc3339).unwrap();
        assert_eq!(when(t, &Zone::named("Europe/Berlin").unwrap()), "Mon 15 Jul 2030, 19:00 (Europe/Berlin)");
        assert_eq!(when(t, &Zone::utc()), "Mon 15 Jul 2030, 17:00 (UTC)");
        assert_eq!(machine_time(t), "2030-07-15T17:00:00Z");
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path(Some("/events/1")), "/events/1");
        for elsewhere in ["//evil.example", "https://evil.example", "/\\evil.example", "evil", ""] {
            assert_eq!(local_path(Some(elsewhere)), "/", "{elsewhere}");
        }
        assert_eq!(local_path(None), "/");
        assert_eq!(login_then("/events/1?x=1"), "/login?next=%2Fevents%2F1%3Fx%3D1");
    }
}
