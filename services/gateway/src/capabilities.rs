//! City Events capabilities behind feature flags: the gateway, which serves both the site and
//! the API, gates their routes and tells the pages which to show.
//!
//! Each flag is built in ([`DEFAULTS`], on), can be changed in `features.file`, and overridden at
//! runtime on the management listener (`PUT /admin/flags/{key}`): a change applies to the next
//! request, without a restart. A request is evaluated with its user (the site's session or a
//! verified bearer token), so `user` and `percentage` rollouts work on the site and the API
//! alike. A capability that is off answers 404 (the site's page, the API's problem with code
//! `capability_off`), and its links, buttons and forms are not shown.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel::features::{EvalContext, Flags};

use crate::web::session::Viewer;
use keel::http::Principal;

/// The built-in flags (`services/gateway/flags.yaml`).
pub const DEFAULTS: &str = include_str!("../flags.yaml");

/// The personal feed: the For you tab and `GET /api/v1/me/feed`.
pub const FOR_YOU: &str = "cityevents.feed.for_you";
/// Live updates: `GET /live` and the pages' live counts.
pub const LIVE: &str = "cityevents.live";
/// Sign-in and linking with an OpenID provider.
pub const PROVIDERS: &str = "cityevents.signin.providers";
/// Uploading avatars and event covers.
pub const UPLOADS: &str = "cityevents.pictures.uploads";

/// Which capabilities the current request's viewer has (a request extension the pages read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub(crate) for_you: bool,
    pub(crate) live: bool,
    pub(crate) providers: bool,
    pub(crate) uploads: bool,
}

impl Capabilities {
    /// The answer for `flag`, if it is one of the four.
    fn of(&self, flag: &str) -> Option<bool> {
        match flag {
            FOR_YOU => Some(self.for_you),
            LIVE => Some(self.live),
            PROVIDERS => Some(self.providers),
            UPLOADS => Some(self.uploads),
            _ => None,
        }
    }
}

impl Default for Capabilities {
    /// The built-in defaults: everything on.
    fn default() -> Self {
        Self { for_you: true, live: true, providers: true, uploads: true }
    }
}

/// The evaluation context of `req`: its user, when known.
fn context(req: &Request) -> EvalContext {
    let ext = req.extensions();
    let user = ext
        .get::<Viewer>()
        .and_then(|v| v.user())
        .map(|u| u.id.to_string())
        .or_else(|| ext.get::<Principal>().map(|p| p.0.clone()));
    match user {
        Some(u) => EvalContext::new().user(u),
        None => EvalContext::new(),
    }
}

/// Evaluates every capability for the request (one version of the flags) and adds them as an
/// extension for the pages.
pub(crate) async fn evaluate(State(flags): State<Flags>, mut req: Request, next: Next) -> Response {
    let ctx = context(&req);
    let view = flags.view();
    let caps = Capabilities {
        for_you: view.is_enabled(FOR_YOU, &ctx),
        live: view.is_enabled(LIVE, &ctx),
        providers: view.is_enabled(PROVIDERS, &ctx),
        uploads: view.is_enabled(UPLOADS, &ctx),
    };
    req.extensions_mut().insert(caps);
    next.run(req).await
}

/// A route of the capability `flag`: 404 while it is off for the caller. Used as
/// `from_fn_with_state(Gate::new(&flags, UPLOADS), gate)`.
#[derive(Clone)]
pub(crate) struct Gate {
    flags: Flags,
    flag: &'static str,
}

impl Gate {
    pub(crate) fn new(flags: &Flags, flag: &'static str) -> Self {
        Self { flags: flags.clone(), flag }
    }
}

/// The middleware of a [`Gate`].
pub(crate) async fn gate(State(g): State<Gate>, req: Request, next: Next) -> Response {
    // A page's request was evaluated once already ([`evaluate`]); the API's is evaluated here.
    let on = match req.extensions().get::<Capabilities>().and_then(|c| c.of(g.flag)) {
        Some(on) => on,
        None => g.flags.is_enabled(g.flag, &context(&req)),
    };
    if on {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        return keel::Problem::not_found()
            .code("capability_off")
            .detail("this capability is not available")
            .into_response();
    }
    let page = crate::web::pages::Page::of(req.extensions());
    if req.method() == http::Method::POST {
        // A refused upload is read first: answered mid-upload, a browser shows a reset connection.
        crate::web::drain(req.into_body(), cityevents_api::limits::MAX_PICTURE_REQUEST).await;
    }
    crate::web::pages::not_found(&page)
}
