//! What every page shares: who it is for, the layout around it, notices, times in the viewer's
//! zone, and the 404, problem and refused pages.

use std::convert::Infallible;

use crate::capabilities::Capabilities;
use askama::Template;
use axum::extract::FromRequestParts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use cityevents_api::auth::{User, roles};
use cityevents_common::zone::Zone;
use http::request::Parts;
use http::{Extensions, HeaderValue, StatusCode};
use keel::http::extract::Path;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Site;
use super::call::Failure;
use super::session::{ClientAddress, Csrf, KnownDevice, Viewer};
use crate::routes::Upstream;

/// A route's `{id}`: a UUID, or the refusal of anything else (which names nothing: the pages
/// answer it with their 404 page, not a problem).
pub(crate) type PathId = Result<Path<uuid::Uuid>, keel::http::Problem>;

/// The cookie `site.js` sets to the browser's IANA time zone, so the next pages are rendered in
/// it (without the script, times are in each event's own zone).
const ZONE_COOKIE: &str = "ce_tz";

/// Notices a redirect may ask a page to show (`?notice=`): only these texts, so a link cannot
/// make the site say something of its choosing.
const NOTICES: &[(&str, &str)] = &[
    ("signed_in", "You are logged in."),
    ("signed_out", "You are logged out."),
    ("registered", "Welcome! Your account is ready. Check your inbox for the link that confirms your address."),
    ("registered_log_in", "Check your inbox: we sent a mail to that address. Then log in."),
    ("verified", "Your e-mail address is confirmed."),
    (
        "confirm_first",
        "Confirm your address before you create an event: open the link we sent you, or ask for a new one.",
    ),
    ("password_reset", "Your password is changed. Log in with the new one."),
    ("joined", "You are in. See you there!"),
    ("waitlisted", "The event is full, so you are on the waitlist. We will tell you when a seat frees up."),
    ("left", "You left the event."),
    ("created", "Your event is saved as a draft. Publish it when it is ready."),
    ("saved", "Your changes are saved."),
    (
        "seats_cut",
        "Saved with fewer seats than people holding one: everyone keeps their seat, and new joins wait until seats free up.",
    ),
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
    ("account_signed_out", "The account is logged out everywhere. Its owner can log in again."),
    ("feed_revoked", "Your calendar feed is off: its address no longer works."),
    ("followed", "You follow this organizer: we will tell you when they publish an event."),
    ("unfollowed", "You no longer follow this organizer."),
    ("profile_saved", "Your profile is saved."),
    ("cover_saved", "The cover picture is saved: it shows on the event and in lists."),
    ("cover_removed", "The cover picture is removed."),
    ("avatar_saved", "Your picture is saved: it shows on your organizer page."),
    ("avatar_removed", "Your picture is removed."),
    ("welcome", "Welcome! Your account is ready."),
    ("reported", "Thank you: the moderators will look at your report, and we will tell you what they decide."),
    ("report_resolved", "Done: the reports are closed, and each reporter is told."),
    ("reports_closed", "Nothing was done: those reports are closed already."),
    ("note_required", "Say why before you act: the reason is kept in the audit log."),
    ("linked", "The sign-in is linked to your account: you can log in with it from now on."),
    ("unlinked", "That sign-in is unlinked: it no longer logs in to your account."),
];

/// What a page handler knows of its request (an extractor; never refuses).
/// What a page handler answers: its page, or a [`Halt`]. Both are HTML for a person, never a
/// problem document (the site's pages answer pages; the API answers problems).
pub(crate) type PageResult = Result<Response, Halt>;

/// A page handler's answer decided before the handler's own: the redirect to sign in, the 404
/// page. Helpers return it and `?` answers it. Boxed: it travels in `Result`s.
#[derive(Debug)]
pub(crate) struct Halt(Box<Response>);

impl IntoResponse for Halt {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<Response> for Halt {
    fn from(page: Response) -> Self {
        Self(Box::new(page))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) viewer: Viewer,
    pub(crate) csrf: String,
    pub(crate) address: HeaderValue,
    /// The device cookie: the device token auth gave this browser.
    pub(crate) device: Option<String>,
    pub(crate) notice: Option<&'static str>,
    /// The viewer's zone, when their browser told it; else `None` (each event's own).
    pub(crate) zone: Option<Zone>,
    /// The request's `Host`, for absolute links when `app.web.public_url` is not set.
    pub(crate) host: Option<HeaderValue>,
    /// The browser's `User-Agent` (at most 512 bytes), passed on with a sign-in so the session
    /// list can name the device.
    pub(crate) agent: Option<HeaderValue>,
    /// The capabilities the viewer has ([`crate::capabilities`]).
    pub(crate) caps: Capabilities,
}

impl Page {
    /// From the extensions the session middleware set (signed out, fresh CSRF when missing).
    pub(crate) fn of(ext: &Extensions) -> Self {
        Self {
            viewer: ext.get::<Viewer>().cloned().unwrap_or_default(),
            csrf: ext.get::<Csrf>().map(|c| c.0.clone()).unwrap_or_default(),
            address: ext.get::<ClientAddress>().map_or_else(|| HeaderValue::from_static("0.0.0.0"), |a| a.0.clone()),
            device: ext.get::<KnownDevice>().and_then(|d| d.0.clone()),
            caps: ext.get::<Capabilities>().copied().unwrap_or_default(),
            notice: None,
            zone: None,
            host: None,
            agent: None,
        }
    }

    /// The headers a sign-in passes on to auth: the browser's `User-Agent`.
    pub(crate) fn sign_in_headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        self.agent.iter().map(|a| (http::header::USER_AGENT, a.clone())).collect()
    }

    /// The access token, if signed in.
    pub(crate) fn token(&self) -> Option<&str> {
        self.viewer.token()
    }

    /// The access token, or the redirect to log in and come back to `back`.
    pub(crate) fn signed(&self, back: &str) -> Result<&str, Halt> {
        self.token().ok_or_else(|| Redirect::to(&login_then(back)).into_response().into())
    }

    /// The access token of a viewer whose address is confirmed: a signed-out viewer is sent to
    /// log in, an unconfirmed one to the page that asks for the address to be confirmed (what
    /// needs it, creating an event, is not offered before).
    pub(crate) fn confirmed(&self, back: &str) -> Result<&str, Halt> {
        let token = self.signed(back)?;
        if self.viewer.user().is_some_and(|u| !u.email_verified) {
            return Err(Redirect::to("/verify-email?notice=confirm_first").into_response().into());
        }
        Ok(token)
    }

    /// A path's `{id}` as a UUID: anything else names no event, so the 404 page.
    pub(crate) fn event_id(&self, id: PathId) -> Result<uuid::Uuid, Halt> {
        id.map(|Path(id)| id).map_err(|_| not_found(self).into())
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
            confirming: false,
            caps: self.caps,
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
        // HTTP/2 names the host in the URI's authority, not in a Host header.
        page.host = parts
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        page.agent = parts.headers.get(http::header::USER_AGENT).filter(|a| a.len() <= 512).cloned();
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

/// `t` on `zone`'s wall clock.
fn wall(t: OffsetDateTime, zone: &Zone) -> OffsetDateTime {
    zone.local(cityevents_common::time::to_micros(t))
        .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok())
        .unwrap_or(t)
}

/// From `start` to `end` on `zone`'s wall clock, the zone named: `Tue 14 Jan 2030, 19:00–22:00
/// (America/New_York)`, or with both dates when it ends on another day (`Fri 29 Mar 2030, 18:00 –
/// Mon 1 Apr 2030, 19:00 (Europe/Berlin)`).
pub(crate) fn span(start: OffsetDateTime, end: OffsetDateTime, zone: &Zone) -> String {
    let (a, b) = (wall(start, zone), wall(end, zone));
    let day = time::macros::format_description!("[weekday repr:short] [day padding:none] [month repr:short] [year]");
    let clock = time::macros::format_description!("[hour]:[minute]");
    let (Ok(a_day), Ok(a_clock), Ok(b_day), Ok(b_clock)) =
        (a.format(&day), a.format(&clock), b.format(&day), b.format(&clock))
    else {
        return format!("{start} – {end}");
    };
    if a.date() == b.date() {
        format!("{a_day}, {a_clock}–{b_clock} ({})", zone.name())
    } else {
        format!("{a_day}, {a_clock} – {b_day}, {b_clock} ({})", zone.name())
    }
}

/// The same span on the viewer's clock when it reads differently from the venue's (`""` when
/// the viewer's zone is unknown or shows the same times).
pub(crate) fn viewer_span(viewer: Option<&Zone>, start: OffsetDateTime, end: OffsetDateTime, venue: &Zone) -> String {
    let Some(viewer) = viewer else { return String::new() };
    // The wall-clock readings, not the instants (`OffsetDateTime`'s `==` compares instants).
    let reads = |t: OffsetDateTime, z: &Zone| {
        let w = wall(t, z);
        (w.date(), w.time())
    };
    if viewer.name() == venue.name()
        || (reads(start, viewer) == reads(start, venue) && reads(end, viewer) == reads(end, venue))
    {
        return String::new();
    }
    span(start, end, viewer)
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
    /// The page is about confirming the address itself: no banner asking for it.
    pub(crate) confirming: bool,
    /// The capabilities the viewer has: what the page links to and offers.
    pub(crate) caps: Capabilities,
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

    /// Whether the viewer's address is confirmed.
    pub(crate) fn confirmed(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.email_verified)
    }

    /// Whether the page asks the viewer to confirm their address (a banner with a button for a
    /// new link).
    pub(crate) fn asks_to_confirm(&self) -> bool {
        !self.confirming && self.user.as_ref().is_some_and(|u| !u.email_verified)
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

/// The second step of an action that cannot be undone (cancel an event, ban, remove someone):
/// what it will do, and a form that sends the first step's fields again with `confirmed=yes`.
/// A page rather than a script's dialog, so it works without JavaScript.
#[derive(Template)]
#[template(path = "web/confirm.html")]
pub(crate) struct ConfirmPage {
    pub(crate) layout: Layout,
    pub(crate) heading: String,
    /// What happens, a sentence each.
    pub(crate) lines: Vec<String>,
    /// The reason given (shown; empty: none).
    pub(crate) reason: String,
    /// Where the form goes, and the fields it sends again.
    pub(crate) action: String,
    pub(crate) fields: Vec<(&'static str, String)>,
    /// The button's words.
    pub(crate) confirm: &'static str,
    /// Where *No, go back* leads.
    pub(crate) back: String,
}

impl ConfirmPage {
    /// Whom a confirmation names: the name the form carried (cut to 100 characters), else
    /// `fallback`.
    pub(crate) fn who(name: &str, fallback: &str) -> String {
        match name.trim() {
            "" => fallback.to_owned(),
            n => crate::calendar::cut(n, 100),
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

/// The page of a call that failed. A 401 sends a signed-out viewer to log in; a signed-in one
/// back to `back_to`, with a session refreshed at auth (or, refused again, to log in).
pub(crate) fn failed(page: &Page, f: &Failure, back_to: &str) -> Response {
    if f.status == StatusCode::UNAUTHORIZED {
        if page.viewer.signed.is_some() {
            return super::session::refused(Redirect::to(back_to));
        }
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

/// `next` when it is a path of this site (see [`same_origin_path`]), else `/`.
pub(crate) fn local_path(next: Option<&str>) -> String {
    next.and_then(same_origin_path).unwrap_or_else(|| "/".to_owned())
}

/// The one check of every redirect target a request supplies (`next` after signing in, a
/// form's `back`): `Some` with the target as the browser will request it when it is a path on
/// this site, `None` otherwise.
///
/// A browser removes tabs and newlines anywhere in a URL, trims spaces and control characters,
/// and reads `\` as `/`, so `/<tab>/evil.example` or `/\evil.example` becomes
/// `//evil.example`: another host. Rather than follow those rewrites, a target holding any
/// control character, white space or backslash is refused outright (and so never reaches a
/// `Location` header, which cannot carry them). The rest is resolved by the WHATWG URL parser
/// (the browser's rules) against this site's origin and must stay on it, and its first path
/// segment must not decode to a slash, backslash or control character (`/%2F/…`, `/%5C…`,
/// `/%09/…`), so that nothing down the line that decodes once more can read a host into it.
pub(crate) fn same_origin_path(target: &str) -> Option<String> {
    if !target.starts_with('/') || target.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return None;
    }
    let base = url::Url::parse("https://this-site.invalid/").ok()?;
    let url = base.join(target).ok()?;
    if url.origin() != base.origin() || !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let path = url.path();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(first).collect::<Vec<u8>>();
    if path.starts_with("//") || decoded.iter().any(|&b| b.is_ascii_control() || b == b'/' || b == b'\\') {
        return None;
    }
    let mut out = path.to_owned();
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = url.fragment() {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
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
    fn spans_are_on_the_venues_clock_and_the_viewers_beside_only_when_it_differs() {
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        let ny = Zone::named("America/New_York").unwrap();
        let lisbon = Zone::named("Europe/Lisbon").unwrap();
        let (start, end) = (at("2030-01-15T00:00:00Z"), at("2030-01-15T03:00:00Z"));
        assert_eq!(span(start, end, &ny), "Mon 14 Jan 2030, 19:00–22:00 (America/New_York)");
        assert_eq!(viewer_span(Some(&lisbon), start, end, &ny), "Tue 15 Jan 2030, 00:00–03:00 (Europe/Lisbon)");
        assert_eq!(viewer_span(Some(&ny), start, end, &ny), "");
        assert_eq!(viewer_span(None, start, end, &ny), "");
        // Another name, the same clock (Lisbon and UTC in winter): nothing beside.
        assert_eq!(viewer_span(Some(&Zone::utc()), start, end, &lisbon), "");
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(
            span(at("2030-03-29T17:00:00Z"), at("2030-04-01T17:00:00Z"), &berlin),
            "Fri 29 Mar 2030, 18:00 – Mon 1 Apr 2030, 19:00 (Europe/Berlin)"
        );
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

    /// What a browser turns into another host, and what cannot go in a `Location` header.
    #[test]
    fn redirect_targets_are_paths_of_this_site_as_a_browser_reads_them() {
        let refused = [
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "\t//evil.example",
            "/\u{b}/evil.example",
            "/\u{c}/evil.example",
            "/\0/evil.example",
            "/\u{7f}/evil.example",
            "/\u{85}/evil.example",
            "/ /evil.example",
            "/\u{a0}/evil.example",
            "/\u{3000}/evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "/./\\evil.example",
            "//evil.example",
            "///evil.example",
            "/.//evil.example",
            "/%2F/evil.example",
            "/%2f%2fevil.example",
            "/%5C/evil.example",
            "/%5cevil.example",
            "/%09/evil.example",
            "/%0a/evil.example",
            "/%00",
            "https://evil.example/",
            "http:/evil.example",
            "javascript:alert(1)",
            "//user@evil.example",
            "evil.example",
            "",
        ];
        for target in refused {
            assert_eq!(same_origin_path(target), None, "{target:?}");
            assert_eq!(local_path(Some(target)), "/", "{target:?}");
        }
        let kept = [
            ("/", "/"),
            ("/events/1", "/events/1"),
            ("/events?q=rock%20music&cursor=c2", "/events?q=rock%20music&cursor=c2"),
            ("/events?q=a%2Fb", "/events?q=a%2Fb"),
            ("/my/events/1#join", "/my/events/1#join"),
            ("/a/../events", "/events"),
            ("/../../events", "/events"),
            ("/événements", "/%C3%A9v%C3%A9nements"),
            ("/admin/users?q=ann&role=moderator", "/admin/users?q=ann&role=moderator"),
        ];
        for (target, to) in kept {
            assert_eq!(same_origin_path(target).as_deref(), Some(to), "{target:?}");
        }
        // Whatever comes out is a valid header value, parses back to itself, and stays here.
        for target in refused.iter().chain(kept.iter().map(|(t, _)| t)) {
            if let Some(to) = same_origin_path(target) {
                assert!(http::HeaderValue::from_str(&to).is_ok(), "{to:?}");
                assert_eq!(same_origin_path(&to).as_deref(), Some(to.as_str()));
            }
        }
    }
}
