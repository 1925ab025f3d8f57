//! City Events gateway (BFF): the only public entry. JWT at the edge, rate limits, routing to the
//! four services, an aggregate event page and the OpenAPI document.
//!
//! * **Routing** — [`routes::ROUTES`] lists every public operation and who answers it; each is
//!   forwarded with its method, path, query, body (at most `http.body_limit`, 64 KiB) and the contract's
//!   headers through Keel's HTTP client for `upstreams.<auth|events|joins|notifier>` (retries of
//!   idempotent calls, a breaker per upstream), each attempt cut at `app.upstream_timeouts.read`
//!   (GET, HEAD) or `.write`, all of them at `.total`. The answer's status, body,
//!   `Content-Type`, `Retry-After`, `Location` and `WWW-Authenticate` come back unchanged; a
//!   service that is down or behind an open breaker is a 503 problem at once, a slow one a 504, a
//!   broken answer a 502. Any other path is a 404 problem.
//! * **Readiness** — the gateway's own: Redis when a limiter keeps its counts there. An
//!   upstream's `health_path` check only degrades it (see [`Setup::http_client_optional`]), so a
//!   down service takes its own routes out, not the whole API.
//! * **Edge authentication** — a request carrying an invalid or expired bearer token is refused
//!   with 401 on every route; routes that need a user refuse a missing token with 401. Neither
//!   reaches a service.
//! * **Rate limits** — Keel's limiter with three policies: `rate_limits.api` counts per user (the
//!   token's `sub`) and client IP (`key: [user, ip]`; without a token, per IP); `rate_limits.ip`
//!   counts every request of a client IP, whoever signs it, so more accounts do not buy more
//!   budget; `rate_limits.strict` gives sign-up ([`routes::STRICT`]) a stricter budget per IP.
//!   429 problem with `Retry-After` and `RateLimit-*` (the tighter limiter's). `backend: redis`
//!   shares the counts between instances, and `ip` and `api` decide in one round trip; a policy's `rules` give routes their own failure mode
//!   or limit (the shipped config serves reads with an in-process limiter while Redis is down
//!   and refuses writes and sign-in).
//! * **`GET /api/v1/events/{id}/view`** — the event, the caller's participation and the seat
//!   counts fetched in parallel; the event's error is the answer, a failing non-critical part is
//!   `{"unavailable": true}`.
//! * **Completed lists** (`compose.rs`) — each item of `GET /api/v1/events` and
//!   `GET /api/v1/me/events` gets `seats: {capacity, taken, free, waitlisted}` from one joins call
//!   per page (`{"unavailable": true}` when joins fails); each item of an event's participants,
//!   waitlist and bans gets the user's display `name` from one auth call (`null` when unknown or
//!   auth fails).
//! * **Reports about accounts** (`reports.rs`) — `POST /api/v1/reports` about an account is
//!   forwarded only once auth has a profile for it (404 `target_not_found` otherwise): the events
//!   service cannot tell.
//! * **`GET /api/v1/openapi.json`** — [`openapi::document`]; **`GET /api/v1/docs/`** — the
//!   interactive reference over it ([`reference`]).
//! * **The web front end** — server-rendered pages under `/` ([`web`]).
//!
//! Configuration: `upstreams.{auth,events,joins,notifier}.base_url` are required (in development
//! they default to `http://127.0.0.1:<port>` of each service); `rate_limits.api`, `.ip` and
//! `.strict` are required in production (elsewhere the defaults are in process: 600 requests a
//! minute per user and IP, 1200 a minute per IP, 20 sign-ups per 10 minutes per IP);
//! `security.jwt.*` (verify-only keys); `http.body_limit` (default 64 KiB);
//! `app.upstream_timeouts.{read,write,total}` (2 s, 5 s, 6 s); `app.web.secure_cookies` (default
//! `true` outside development). In production every limiter must keep its counts in Redis. CORS
//! is Keel's (`cors.*`).

mod calendar;
pub mod capabilities;
mod catchup;
mod compose;
mod edge;
mod feed;
mod forward;
mod live;
pub mod openapi;
mod origin;
pub mod reference;
mod reports;
pub mod routes;
mod view;
mod views;
pub mod web;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler as _;
use axum::routing::MethodRouter;
use keel::Setup;
use keel::app::SetupError;
use keel::config::{Profile, Section, Validation};
use keel::resilience::rate_limit::{BackendKind, KeyPart, RateLimitLayer, RateLimitPolicy};
use serde::{Deserialize, Serialize};

use crate::forward::Gateway;
use crate::routes::{
    EVENT_CALENDAR_PATH, FEED_CALENDAR_PATH, FOR_YOU_PATH, INDEX_PATH, OPENAPI_PATH, REPORTS_PATH, ROUTES, Upstream,
    VIEW_PATH,
};

/// The rate-limit policy every request counts against, per user and client IP (`rate_limits.api.*`).
pub const RATE_LIMIT_POLICY: &str = "api";
/// The policy every request counts against per client IP, whoever signs it (`rate_limits.ip.*`):
/// more accounts do not buy more budget.
pub const IP_RATE_LIMIT_POLICY: &str = "ip";
/// The stricter per-IP policy of the routes in [`routes::STRICT`] (`rate_limits.strict.*`).
pub const STRICT_RATE_LIMIT_POLICY: &str = "strict";

/// The gateway's `app` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Not a setting: the body limit is Keel's `http.body_limit`. Read only to say so, rather
    /// than "unknown field", to a configuration that still sets it.
    #[serde(skip_serializing)]
    #[doc(hidden)]
    pub max_body: Option<serde::de::IgnoredAny>,
    /// How long a forwarded call may take (`app.upstream_timeouts.*`).
    pub upstream_timeouts: UpstreamTimeouts,
    /// The web front end (`app.web.*`).
    pub web: web::WebConfig,
    /// Full-text searches of the events service (`GET /api/v1/events?q=`, and the site's
    /// search) go through a client of their own, `events_search`: the settings of
    /// `upstreams.events` without retries, its own circuit breaker, and this bulkhead
    /// (`app.search.max_concurrent`, default `64`; `max_queue`, default `64`; `queue_timeout`,
    /// default `1s`; past them 503 at once). A flood of slow searches then opens that breaker
    /// only: the rest of the events API goes on.
    pub search: keel::resilience::bulkhead::BulkheadConfig,
    /// Pictures (cover and avatar uploads and files) go through clients of their own,
    /// `events_pictures` and `auth_pictures`: the upstream's settings without retries, their own
    /// circuit breakers, and this bulkhead (defaults as `app.search`). While a service's object
    /// store is away its pictures fail and open that breaker only: lists, pages and sign-in go on.
    pub pictures: keel::resilience::bulkhead::BulkheadConfig,
}

/// `app.upstream_timeouts`: each attempt of a forwarded call is cut at `read` (GET, HEAD) or
/// `write` (every other method), or the upstream's `request_timeout` if shorter; all attempts of
/// one call together (retries and their backoff included) at `total`, past which the answer is
/// a 504 problem. Retries themselves are the upstream's (`upstreams.<name>.retry`, idempotent
/// requests only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// Per attempt of a read. Default `2s`.
    #[serde(with = "keel::config::duration")]
    pub read: Duration,
    /// Per attempt of a write. Default `5s`.
    #[serde(with = "keel::config::duration")]
    pub write: Duration,
    /// All attempts of one call. Default `6s`.
    #[serde(with = "keel::config::duration")]
    pub total: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self { read: Duration::from_secs(2), write: Duration::from_secs(5), total: Duration::from_secs(6) }
    }
}

impl UpstreamTimeouts {
    /// The deadline of one attempt of a `method` call.
    pub fn attempt(&self, method: &http::Method) -> Duration {
        if matches!(*method, http::Method::GET | http::Method::HEAD) { self.read } else { self.write }
    }
}

impl Section for GatewayConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.max_body.is_some() {
            v.invalid("max_body", "is not a setting: set the gateway's body limit with http.body_limit");
        }
        if let Some(url) = &self.web.public_url
            && let Err(message) = origin::check_public_url(url)
        {
            v.invalid("web.public_url", message);
        }
        let t = &self.upstream_timeouts;
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&t.total) {
            v.invalid("upstream_timeouts.total", "must be more than 0s and at most 60s");
        }
        for (field, d) in [("read", t.read), ("write", t.write)] {
            if d.is_zero() || d > t.total {
                v.invalid(
                    &format!("upstream_timeouts.{field}"),
                    "must be more than 0s and at most upstream_timeouts.total",
                );
            }
        }
    }
}

/// A configuration problem at `path`: `serve` and `config check` exit 78 with it.
fn misconfigured(path: &str, message: String) -> SetupError {
    Box::new(keel::config::ConfigError::invalid(path, message))
}

/// The three limiters: `rate_limits.api` (per user and client IP), `rate_limits.ip` (per client
/// IP) and `rate_limits.strict` (per client IP, for [`routes::STRICT`]), connecting Redis first
/// when a policy keeps its counts there. Each is required in production; elsewhere an unset one
/// is an in-process policy: 600 a minute per user and IP, 1200 a minute per IP, 20 per 10
/// minutes per IP.
struct Limits {
    api: RateLimitLayer,
    ip: RateLimitLayer,
    strict: RateLimitLayer,
}

fn limits(s: &mut Setup<GatewayConfig>) -> Result<Limits, SetupError> {
    let minute = Duration::from_secs(60);
    let policy = |limit, window, key| RateLimitPolicy { limit, window, key, ..RateLimitPolicy::default() };
    Ok(Limits {
        api: limiter(s, RATE_LIMIT_POLICY, policy(600, minute, vec![KeyPart::User, KeyPart::Ip]), "600", "user,ip")?,
        ip: limiter(s, IP_RATE_LIMIT_POLICY, policy(1200, minute, vec![KeyPart::Ip]), "1200", "ip")?,
        strict: limiter(s, STRICT_RATE_LIMIT_POLICY, policy(20, 10 * minute, vec![KeyPart::Ip]), "20", "ip")?,
    })
}

fn limiter(
    s: &mut Setup<GatewayConfig>,
    name: &str,
    default: RateLimitPolicy,
    example_limit: &str,
    example_key: &str,
) -> Result<RateLimitLayer, SetupError> {
    let Some(policy) = s.keel().rate_limits.get(name).cloned() else {
        if s.profile() == Profile::Production {
            let env = format!("CITYEVENTS_GATEWAY__RATE_LIMITS__{}", name.to_uppercase());
            return Err(misconfigured(
                &format!("rate_limits.{name}"),
                format!(
                    "is not configured: the gateway is the public entry and must be rate limited \
                     (e.g. {env}__LIMIT={example_limit}, {env}__KEY={example_key}, {env}__BACKEND=redis)"
                ),
            ));
        }
        return s.rate_limit_or(name, default);
    };
    if s.profile() == Profile::Production && policy.backend != BackendKind::Redis {
        // Each instance would count on its own: n gateways give every client n times the budget.
        return Err(misconfigured(
            &format!("rate_limits.{name}.backend"),
            "must be redis in production: a per-instance limiter gives every client its budget once per \
             gateway instance"
                .into(),
        ));
    }
    if name == RATE_LIMIT_POLICY && !policy.key.contains(&KeyPart::User) {
        tracing::warn!(
            policy = name,
            key = ?policy.key,
            "the policy does not count by user; set rate_limits.api.key: [user, ip] to count signed-in callers by their token"
        );
    }
    if policy.backend == BackendKind::Redis {
        s.redis()?;
    }
    s.rate_limit(name)
}

/// The router of the route table: one handler per operation, grouped by path.
fn router(gw: &Arc<Gateway>, strict: &RateLimitLayer, document: &axum::body::Bytes) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter> = BTreeMap::new();
    for route in ROUTES {
        let gw = gw.clone();
        let method_router = by_path.remove(route.path).unwrap_or_default();
        let method_router = match (route.path, routes::completion(route)) {
            (VIEW_PATH, _) => method_router.on(route.verb.filter(), move |req: Request| view::view(gw, req)),
            (OPENAPI_PATH, _) => {
                let document = document.clone();
                method_router.on(route.verb.filter(), move |req: Request| openapi::serve(document, req))
            }
            (INDEX_PATH, _) => method_router.on(route.verb.filter(), openapi::index),
            (EVENT_CALENDAR_PATH, _) => {
                method_router.on(route.verb.filter(), move |req: Request| calendar::event(gw, req))
            }
            (FOR_YOU_PATH, _) => {
                let gate = capabilities::Gate::new(&gw.flags, capabilities::FOR_YOU);
                let handler = move |req: Request| feed::route(gw, req);
                method_router.on(
                    route.verb.filter(),
                    handler.layer(axum::middleware::from_fn_with_state(gate, capabilities::gate)),
                )
            }
            (REPORTS_PATH, _) => {
                method_router.on(route.verb.filter(), move |req: Request| reports::create(gw, route, req))
            }
            (FEED_CALENDAR_PATH, _) => {
                method_router.on(route.verb.filter(), move |req: Request| calendar::feed(gw, req))
            }
            (_, Some(how)) => {
                method_router.on(route.verb.filter(), move |req: Request| compose::list(gw, route, how, req))
            }
            _ => {
                let gate = capabilities::Gate::new(&gw.flags, capabilities::UPLOADS);
                let forward = move |req: Request| gw.forward(route, req);
                if routes::is_upload(route) {
                    let limit = axum::extract::DefaultBodyLimit::max(cityevents_api::limits::MAX_PICTURE_REQUEST);
                    let gated = axum::middleware::from_fn_with_state(gate, capabilities::gate);
                    method_router.on(route.verb.filter(), forward.layer(limit).layer(gated))
                } else if routes::is_strict(route) {
                    method_router.on(route.verb.filter(), forward.layer(strict.clone()))
                } else {
                    method_router.on(route.verb.filter(), forward)
                }
            }
        };
        by_path.insert(route.path, method_router);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| router.route(path, methods))
        // The index without its slash, as people type it.
        .route("/api/v1", axum::routing::get(|| async { axum::response::Redirect::permanent(INDEX_PATH) }))
        // An HTML page and its files, not an operation of the API: outside the route table.
        .route("/api/v1/docs", axum::routing::get(reference::redirect))
        .route(reference::PATH, axum::routing::get(reference::serve))
        .route("/api/v1/docs/{*file}", axum::routing::get(reference::serve))
}

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<GatewayConfig> {
    cityevents_common::services::GATEWAY
        .service::<GatewayConfig>(keel::build_info!())
        .flags(capabilities::DEFAULTS)
        .setup(|s| {
            let document = openapi::document()?;
            let served = axum::body::Bytes::from(
                serde_json::to_vec(&document).map_err(|e| format!("the OpenAPI document does not serialize: {e}"))?,
            );
            let query_parameters = Arc::new(openapi::query_parameters(&document));
            let jwt = cityevents_common::sessions::follow(s, cityevents_common::services::GATEWAY.name, s.jwt()?)?;
            let mut clients = HashMap::new();
            for (up, module) in Upstream::FORWARDED {
                clients.insert(up, cityevents_common::upstream::client(s, module)?);
            }
            let searches = cityevents_common::upstream::client_for(
                s,
                "events_search",
                &cityevents_common::services::EVENTS,
                s.config().search.clone(),
            )?;
            let mut pictures = HashMap::new();
            for (up, alias, module) in [
                (Upstream::Events, "events_pictures", &cityevents_common::services::EVENTS),
                (Upstream::Auth, "auth_pictures", &cityevents_common::services::AUTH),
            ] {
                let client = cityevents_common::upstream::client_for(s, alias, module, s.config().pictures.clone())?;
                pictures.insert(up, client);
            }
            let limits = limits(s)?;
            let secure_cookies = s.config().web.secure_cookies.unwrap_or(s.profile() != Profile::Development);
            let gw = Arc::new(Gateway {
                clients,
                searches,
                pictures,
                trusted_proxies: s.keel().http.trusted_proxies.clone(),
                timeouts: s.config().upstream_timeouts.clone(),
                origin: origin::Origin::new(s.config().web.public_url.as_deref(), secure_cookies),
                views: views::Views::register(s.metrics())?,
                flags: s.features().clone(),
            });
            let viewed = gw.clone();
            s.worker(keel::workers::Worker::periodic("event-views", views::FLUSH_EVERY, move |_ctx| {
                let gw = viewed.clone();
                async move {
                    gw.views.flush(&gw).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            }))?;
            // Web sessions are shared through Redis when the gateway has one (the distributed set-up).
            let redis = if s.keel().redis.url.is_some() { Some(s.redis()?) } else { None };
            // Live updates: every instance hears every join change (a fan-out subscription).
            let live = live::Live::new();
            let bus = s.bus()?;
            s.consume(live.consumer(bus))?;
            let (hub, flushed) = (live.clone(), gw.clone());
            s.worker(keel::workers::Worker::periodic("live-counts", live::FLUSH_EVERY, move |_ctx| {
                let (hub, gw) = (hub.clone(), flushed.clone());
                async move {
                    hub.flush(&gw).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            }))?;
            Ok(router(&gw, &limits.strict, &served)
                .route_layer(axum::middleware::from_fn_with_state(query_parameters, edge::known_query))
                // The site's pages, and its fallback: the 404 page, or the API's 404 problem.
                .merge(web::router(gw.clone(), secure_cookies, &limits.strict, redis, live))
                // Outermost first: the verifier for the extractors, then identify the caller,
                // then count the request by client IP, then by user and IP, both in one Redis
                // round trip (the strict routes count a third time, per IP, inside).
                .layer(limits.ip.then(limits.api))
                .layer(axum::middleware::from_fn_with_state(jwt.clone(), edge::identify))
                .layer(jwt.extension()))
        })
}
