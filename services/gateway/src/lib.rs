//! City Events gateway (BFF): the only public entry. JWT at the edge, rate limits, routing to the
//! four services, an aggregate event page and the OpenAPI document.
//!
//! * **Routing** — [`routes::ROUTES`] lists every public operation and who answers it; each is
//!   forwarded with its method, path, query, body (at most `app.max_body`) and the contract's
//!   headers through Keel's HTTP client for `upstreams.<auth|events|joins|notifier>` (timeouts,
//!   retries of idempotent calls, a breaker per upstream). The answer's status, body,
//!   `Content-Type`, `Retry-After`, `Location` and `WWW-Authenticate` come back unchanged; a
//!   service that is down, slow or behind an open breaker is a 502/504/503 problem. Any other path
//!   is a 404 problem.
//! * **Edge authentication** — a request carrying an invalid or expired bearer token is refused
//!   with 401 on every route; routes that need a user refuse a missing token with 401. Neither
//!   reaches a service.
//! * **Rate limit** — Keel's limiter with the policy `rate_limits.api`, counted per user (the
//!   token's `sub`, with `key: [user]`) or else per client IP; 429 problem with `Retry-After` and
//!   `RateLimit-*`. `backend: redis` shares the counts between instances; the policy's `rules`
//!   give routes their own failure mode or limit (the shipped config serves reads with an
//!   in-process limiter while Redis is down and refuses writes and sign-in).
//! * **`GET /api/v1/events/{id}/view`** — the event, the caller's participation and the seat
//!   counts fetched in parallel; the event's error is the answer, a failing non-critical part is
//!   `{"unavailable": true}`.
//! * **`GET /api/v1/openapi.json`** — [`openapi::DOCUMENT`].
//!
//! Configuration: `upstreams.{auth,events,joins,notifier}.base_url` are required (in development
//! they default to `http://127.0.0.1:<port>` of each service); `rate_limits.api` is required in
//! production (elsewhere the default is 600 requests a minute per user, in process);
//! `security.jwt.*` (verify-only keys); `app.max_body` (default 64 KiB). CORS is Keel's (`cors.*`).

mod edge;
mod forward;
pub mod openapi;
pub mod routes;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::MethodRouter;
use keel::Setup;
use keel::app::SetupError;
use keel::config::{Profile, Section, Validation};
use keel::http::client::Client;
use keel::http::client::UpstreamConfig;
use keel::resilience::rate_limit::{
    BackendKind, KeyPart, OnBackendError, RateLimitLayer, RateLimitMetrics, RateLimitPolicy, RateLimiter,
};
use serde::{Deserialize, Serialize};

use crate::forward::Gateway;
use crate::routes::{OPENAPI_PATH, ROUTES, Upstream, VIEW_PATH};

/// The rate-limit policy the gateway applies (`rate_limits.api.*`).
pub const RATE_LIMIT_POLICY: &str = "api";

/// The gateway's `app` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Largest request body forwarded; past it a 413 problem. Default `64KiB` (the API's bodies
    /// are small JSON documents).
    #[serde(with = "keel::config::bytes")]
    pub max_body: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self { max_body: 64 * 1024 }
    }
}

impl Section for GatewayConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(1024..=16 << 20).contains(&self.max_body) {
            v.invalid("max_body", "must be between 1KiB and 16MiB");
        }
    }
}

/// The client for upstream `name`: `upstreams.<name>` when configured; in development only, the
/// service's local default port; otherwise a set-up error naming the missing key.
fn upstream(s: &mut Setup<GatewayConfig>, name: &str, port: u16) -> Result<Client, SetupError> {
    if s.keel().upstreams.contains_key(name) {
        return s.http_client(name);
    }
    if s.profile() != Profile::Development {
        return Err(format!(
            "upstreams.{name}.base_url is not configured: the gateway forwards to the {name} service \
             (env CITYEVENTS_GATEWAY__UPSTREAMS__{}__BASE_URL)",
            name.to_uppercase()
        )
        .into());
    }
    let mut cfg = UpstreamConfig::default();
    cfg.base_url = format!("http://127.0.0.1:{port}");
    tracing::warn!(upstream = name, base_url = %cfg.base_url, "upstream not configured; using the development default");
    let breaker = s.breakers()?.get_or_create(name, &cfg.breaker);
    Ok(Client::new(name, &cfg, breaker, None)?)
}

/// The limiter of `rate_limits.api` (after connecting Redis when the policy keeps its counts
/// there); outside production an unconfigured policy is a local one keyed by user.
fn rate_limit(s: &mut Setup<GatewayConfig>) -> Result<RateLimitLayer, SetupError> {
    if let Some(policy) = s.keel().rate_limits.get(RATE_LIMIT_POLICY).cloned() {
        if !policy.key.contains(&KeyPart::User) {
            tracing::warn!(
                policy = RATE_LIMIT_POLICY,
                key = ?policy.key,
                "the policy does not count by user; set rate_limits.api.key: [user] to count signed-in callers by their token"
            );
        }
        if policy.backend == BackendKind::Redis {
            s.redis()?;
        }
        return s.rate_limit(RATE_LIMIT_POLICY);
    }
    if s.profile() == Profile::Production {
        return Err("rate_limits.api is not configured: the gateway is the public entry and must be rate limited \
                    (e.g. CITYEVENTS_GATEWAY__RATE_LIMITS__API__LIMIT=600, __KEY=user, __BACKEND=redis)"
            .into());
    }
    let policy = RateLimitPolicy { limit: 600, key: vec![KeyPart::User], ..RateLimitPolicy::default() };
    let metrics = RateLimitMetrics::new(s.metrics())?;
    let limiter = RateLimiter::local(RATE_LIMIT_POLICY, policy, OnBackendError::FailOpen, Some(&metrics));
    Ok(RateLimitLayer::new(Arc::new(limiter), &s.keel().http.trusted_proxies))
}

/// The router of the route table: one handler per operation, grouped by path.
fn router(gw: &Arc<Gateway>, max_body: usize) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter> = BTreeMap::new();
    for route in ROUTES {
        let gw = gw.clone();
        let method_router = by_path.remove(route.path).unwrap_or_default();
        let method_router = match route.path {
            VIEW_PATH => method_router.on(route.verb.filter(), move |req: Request| view::view(gw, req)),
            OPENAPI_PATH => method_router.on(route.verb.filter(), openapi::serve),
            _ => method_router.on(route.verb.filter(), move |req: Request| gw.forward(route, req)),
        };
        by_path.insert(route.path, method_router);
    }
    by_path.into_iter().fold(Router::new(), |router, (path, methods)| {
        router.route(path, methods.route_layer(DefaultBodyLimit::max(max_body)))
    })
}

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<GatewayConfig> {
    keel::Service::new(keel::build_info!())
        .name(cityevents_common::services::GATEWAY.0)
        .config_defaults(cityevents_common::services::defaults(cityevents_common::services::GATEWAY))
        .with_config::<GatewayConfig>()
        .setup(|s| {
            serde_json::from_str::<serde_json::Value>(openapi::DOCUMENT)
                .map_err(|e| format!("the embedded OpenAPI document is not JSON: {e}"))?;
            let jwt = s.jwt()?;
            let mut clients = HashMap::new();
            for (up, name, port) in Upstream::FORWARDED {
                clients.insert(up, upstream(s, name, port)?);
            }
            let limit = rate_limit(s)?;
            let gw = Arc::new(Gateway { clients, trusted_proxies: s.keel().http.trusted_proxies.clone() });
            Ok(router(&gw, s.config().max_body)
                .fallback(|| async { keel::Problem::not_found().detail("no such API path; see /api/v1/openapi.json") })
                // Outermost first: the verifier for the extractors, then identify the caller,
                // then count the request by user or IP.
                .layer(limit)
                .layer(axum::middleware::from_fn_with_state(jwt.clone(), edge::identify))
                .layer(jwt.extension()))
        })
}
