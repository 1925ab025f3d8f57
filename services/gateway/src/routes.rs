//! The route table: every public path, which service answers it and whether it needs a user.
//!
//! It is the one list the gateway's router, its edge authentication and the OpenAPI document are
//! built from (the OpenAPI document has one operation per route), so they cannot drift.
//! Paths use axum's `{param}` syntax, which is also OpenAPI's.

use cityevents_common::services::{self, Module};

/// Who answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// `cityevents-auth`.
    Auth,
    /// `cityevents-events`.
    Events,
    /// `cityevents-joins`.
    Joins,
    /// `cityevents-notifier`.
    Notifier,
    /// The gateway itself (the aggregate view, the OpenAPI document).
    Gateway,
}

impl Upstream {
    /// The forwarding upstreams, each with its row of the module table (whose short name is its
    /// `upstreams.<name>` key): the gateway's row lists exactly these.
    pub const FORWARDED: [(Upstream, &'static Module); 4] = [
        (Upstream::Auth, &services::AUTH),
        (Upstream::Events, &services::EVENTS),
        (Upstream::Joins, &services::JOINS),
        (Upstream::Notifier, &services::NOTIFIER),
    ];

    /// The `upstreams.<name>` key (`gateway` for the gateway's own routes).
    pub fn name(self) -> &'static str {
        Self::FORWARDED.iter().find(|(u, _)| *u == self).map_or(services::GATEWAY.short, |(_, m)| m.short)
    }
}

/// Whether a route needs a signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; a token, when sent, must still be valid (and is forwarded).
    Public,
    /// Signing in, refreshing and signing out: any `Authorization` header is dropped unread, so a
    /// client holding an expired access token can still get a new one.
    Anonymous,
    /// A valid bearer token, checked at the edge before any upstream call.
    User,
}

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Verb {
    /// The method.
    pub fn method(self) -> http::Method {
        match self {
            Self::Get => http::Method::GET,
            Self::Post => http::Method::POST,
            Self::Put => http::Method::PUT,
            Self::Patch => http::Method::PATCH,
            Self::Delete => http::Method::DELETE,
        }
    }

    /// The lowercase name OpenAPI uses as the operation key.
    pub fn openapi_key(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }

    pub(crate) fn filter(self) -> axum::routing::MethodFilter {
        use axum::routing::MethodFilter;
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Patch => MethodFilter::PATCH,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// One operation of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Method.
    pub verb: Verb,
    /// Path template (`/api/v1/events/{id}`); forwarded unchanged.
    pub path: &'static str,
    /// Who answers.
    pub upstream: Upstream,
    /// Whether a user is required.
    pub access: Access,
}

const fn r(verb: Verb, path: &'static str, upstream: Upstream, access: Access) -> Route {
    Route { verb, path, upstream, access }
}

use Access::{Anonymous, Public, User};
use Upstream::{Auth, Events, Gateway, Joins, Notifier};
use Verb::{Delete, Get, Patch, Post, Put};

/// Path of the aggregate event page.
pub const VIEW_PATH: &str = "/api/v1/events/{id}/view";
/// Path of an event's iCalendar file.
pub const EVENT_CALENDAR_PATH: &str = "/api/v1/events/{id}/calendar.ics";
/// Path of a personal calendar feed (the token is its secret).
pub const FEED_CALENDAR_PATH: &str = "/api/v1/calendars/{token}/events.ics";
/// The caller's for-you feed, composed by the gateway (`feed.rs`).
pub const FOR_YOU_PATH: &str = "/api/v1/me/feed";
/// `POST`: a report to the moderators (the events service's; an account reported is checked at
/// auth first, see `crate::reports`).
pub const REPORTS_PATH: &str = "/api/v1/reports";
/// Path of the OpenAPI document.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Path of the API's index: links to the document and the main collections.
pub const INDEX_PATH: &str = "/api/v1/";

/// Operations with a stricter budget of their own per client IP (`rate_limits.strict`): those
/// that create accounts or send e-mail, which a script would otherwise run by the thousand.
pub const STRICT: &[(Verb, &str)] = &[
    (Post, "/api/v1/auth/register"),
    (Post, "/api/v1/auth/verify-email/request"),
    (Post, "/api/v1/auth/verify-email"),
    (Post, "/api/v1/auth/password-reset/request"),
    (Post, "/api/v1/auth/password-reset"),
    (Post, "/api/v1/auth/password-reset/check"),
];

/// Uploads: their body may be a picture (`cityevents_api::limits::MAX_PICTURE_REQUEST`), past
/// the gateway's `http.body_limit`.
pub const UPLOADS: &[(Verb, &str)] = &[(Put, "/api/v1/events/{id}/cover"), (Put, "/api/v1/me/avatar")];

/// Whether `route` is in [`UPLOADS`].
pub fn is_upload(route: &Route) -> bool {
    UPLOADS.iter().any(|&(verb, path)| verb == route.verb && path == route.path)
}

/// Event lists whose items the gateway completes with `seats` from joins (see `compose.rs`).
pub const WITH_SEATS: &[(Verb, &str)] =
    &[(Get, "/api/v1/events"), (Get, "/api/v1/me/events"), (Get, "/api/v1/events/trending")];

/// Lists of users whose items the gateway completes with their display `name` from auth.
pub const WITH_NAMES: &[(Verb, &str)] = &[
    (Get, "/api/v1/events/{id}/participants"),
    (Get, "/api/v1/events/{id}/waitlist"),
    (Get, "/api/v1/events/{id}/bans"),
];

/// How the gateway completes `route`'s list, if it does.
pub(crate) fn completion(route: &Route) -> Option<crate::compose::Completion> {
    let is = |table: &[(Verb, &str)]| table.iter().any(|&(verb, path)| verb == route.verb && path == route.path);
    if is(WITH_SEATS) {
        Some(crate::compose::Completion::Seats)
    } else if is(WITH_NAMES) {
        Some(crate::compose::Completion::Names)
    } else {
        None
    }
}

/// Whether `route` is in [`STRICT`].
pub fn is_strict(route: &Route) -> bool {
    STRICT.iter().any(|&(verb, path)| verb == route.verb && path == route.path)
}

/// Every public operation (docs/cityevents.md, "Service APIs").
pub const ROUTES: &[Route] = &[
    // auth
    r(Post, "/api/v1/auth/register", Auth, Anonymous),
    r(Post, "/api/v1/auth/login", Auth, Anonymous),
    r(Post, "/api/v1/auth/refresh", Auth, Anonymous),
    r(Post, "/api/v1/auth/logout", Auth, Anonymous),
    r(Post, "/api/v1/auth/verify-email/request", Auth, User),
    r(Post, "/api/v1/auth/verify-email", Auth, Anonymous),
    r(Post, "/api/v1/auth/password-reset/request", Auth, Anonymous),
    r(Post, "/api/v1/auth/password-reset", Auth, Anonymous),
    r(Post, "/api/v1/auth/password-reset/check", Auth, Anonymous),
    r(Post, "/api/v1/auth/password", Auth, User),
    r(Post, "/api/v1/auth/logout-all", Auth, User),
    r(Get, "/api/v1/auth/sessions", Auth, User),
    r(Delete, "/api/v1/auth/sessions/{id}", Auth, User),
    r(Get, "/api/v1/me", Auth, User),
    r(Get, "/api/v1/admin/users", Auth, User),
    r(Put, "/api/v1/admin/users/{id}/role", Auth, User),
    r(Post, "/api/v1/admin/users/{id}/ban", Auth, User),
    r(Delete, "/api/v1/admin/users/{id}/ban", Auth, User),
    r(Post, "/api/v1/admin/users/{id}/logout-all", Auth, User),
    r(Post, "/api/v1/admin/users/{id}/avatar/remove", Auth, User),
    r(Get, "/api/v1/profiles/{id}", Auth, Public),
    r(Patch, "/api/v1/me/profile", Auth, User),
    r(Put, "/api/v1/me/avatar", Auth, User),
    r(Delete, "/api/v1/me/avatar", Auth, User),
    r(Get, "/api/v1/profiles/{id}/avatar/{hash}/{file}", Auth, Public),
    // events
    r(Get, "/api/v1/events", Events, Public),
    r(Post, "/api/v1/events", Events, User),
    r(Post, "/api/v1/events/batch", Events, Public),
    r(Get, "/api/v1/events/{id}", Events, Public),
    r(Patch, "/api/v1/events/{id}", Events, User),
    r(Post, "/api/v1/events/{id}/publish", Events, User),
    r(Post, "/api/v1/events/{id}/cancel", Events, User),
    r(Post, "/api/v1/events/{id}/unpublish", Events, User),
    r(Get, "/api/v1/events/{id}/online-link", Events, User),
    r(Put, "/api/v1/events/{id}/cover", Events, User),
    r(Delete, "/api/v1/events/{id}/cover", Events, User),
    r(Get, "/api/v1/events/{id}/cover/{hash}/{file}", Events, Public),
    r(Get, "/api/v1/events/trending", Events, Public),
    r(Get, "/api/v1/me/events", Events, User),
    r(Get, "/api/v1/meta/cities", Events, Public),
    r(Post, REPORTS_PATH, Events, User),
    r(Get, "/api/v1/moderation/reports", Events, User),
    r(Post, "/api/v1/moderation/reports/resolve", Events, User),
    // joins
    r(Post, "/api/v1/events/{id}/join", Joins, User),
    r(Delete, "/api/v1/events/{id}/join", Joins, User),
    r(Get, "/api/v1/events/{id}/join", Joins, User),
    r(Get, "/api/v1/me/joins", Joins, User),
    r(Get, "/api/v1/events/{id}/participants", Joins, User),
    r(Get, "/api/v1/events/{id}/waitlist", Joins, User),
    r(Get, "/api/v1/events/{id}/stats", Joins, User),
    r(Delete, "/api/v1/events/{id}/participants/{user_id}", Joins, User),
    r(Post, "/api/v1/events/{id}/bans", Joins, User),
    r(Get, "/api/v1/events/{id}/bans", Joins, User),
    r(Delete, "/api/v1/events/{id}/bans/{user_id}", Joins, User),
    r(Get, "/api/v1/events/{id}/counts", Joins, Public),
    // notifier
    r(Get, "/api/v1/me/notifications", Notifier, User),
    r(Post, "/api/v1/me/notifications/{id}/read", Notifier, User),
    r(Get, "/api/v1/me/notifications/unread-count", Notifier, User),
    r(Post, "/api/v1/me/notifications/read-all", Notifier, User),
    r(Get, "/api/v1/me/mail-preferences", Notifier, User),
    r(Get, "/api/v1/me/calendar-feed", Joins, User),
    r(Post, "/api/v1/me/calendar-feed", Joins, User),
    r(Delete, "/api/v1/me/calendar-feed", Joins, User),
    r(Get, "/api/v1/organizers/{id}/follow", Notifier, User),
    r(Put, "/api/v1/organizers/{id}/follow", Notifier, User),
    r(Delete, "/api/v1/organizers/{id}/follow", Notifier, User),
    r(Get, "/api/v1/organizers/{id}/followers", Notifier, Public),
    r(Get, "/api/v1/me/following", Notifier, User),
    r(Put, "/api/v1/me/mail-preferences", Notifier, User),
    // the gateway's own
    r(Get, VIEW_PATH, Gateway, Public),
    r(Get, EVENT_CALENDAR_PATH, Gateway, Public),
    r(Get, FEED_CALENDAR_PATH, Gateway, Anonymous),
    r(Get, FOR_YOU_PATH, Gateway, User),
    r(Get, OPENAPI_PATH, Gateway, Public),
    r(Get, INDEX_PATH, Gateway, Public),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(seen.insert((route.verb, route.path)), "{route:?} twice");
            assert!(route.path.starts_with("/api/v1/"), "{route:?}");
        }
    }

    #[test]
    fn every_strict_operation_is_a_route() {
        for &(verb, path) in STRICT {
            assert!(ROUTES.iter().any(|r| r.verb == verb && r.path == path && is_strict(r)), "{verb:?} {path}");
        }
    }

    #[test]
    fn the_forwarded_upstreams_are_the_gateways_row_of_the_module_table() {
        let forwarded: Vec<&str> = Upstream::FORWARDED.iter().map(|(_, m)| m.short).collect();
        assert_eq!(forwarded, services::GATEWAY.upstreams);
        assert_eq!(Upstream::Joins.name(), "joins");
        assert_eq!(Upstream::Gateway.name(), "gateway");
    }
}
