//! The tower layer that applies a [`RateLimiter`] to requests.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use tower::{Layer, Service};

use super::{Decision, KeyPart, RateLimiter, RouteMatch, Verdict};
use keel_http::Problem;
use keel_http::client_ip::{IpNet, client_ip};

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Applies a policy's [`RateLimiter`]s: the one of the rule a request matches, else the
/// policy's own. Put it on a router (`Router::layer`) or a route (`MethodRouter::route_layer`);
/// build it with `Setup::rate_limit("<policy>")`.
///
/// Several policies on one router are one layer made with [`RateLimitLayer::then`]: it counts
/// a request as the layers nested in that order would, and decides the Redis policies in one
/// round trip instead of one each.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    stages: Arc<[Stage]>,
}

/// One policy of a layer: its own limiter, its rules' and who may tell the client IP.
#[derive(Clone, Debug)]
struct Stage {
    limiter: Arc<RateLimiter>,
    rules: Arc<[(RouteMatch, Arc<RateLimiter>)]>,
    trusted: Arc<[IpNet]>,
}

impl Stage {
    fn limiter_for(&self, method: &http::Method, path: &str) -> &Arc<RateLimiter> {
        self.rules.iter().find(|(m, _)| m.matches(method, path)).map_or(&self.limiter, |(_, l)| l)
    }
}

impl RateLimitLayer {
    /// A layer for `limiter`; `trusted_proxies` may tell the client IP (see `http::client_ip`).
    pub fn new(limiter: Arc<RateLimiter>, trusted_proxies: &[IpNet]) -> Self {
        Self::with_rules(limiter, Vec::new(), trusted_proxies)
    }

    /// A layer deciding with the limiter of the first of `rules` a request matches, else with
    /// `limiter`.
    pub fn with_rules(
        limiter: Arc<RateLimiter>,
        rules: Vec<(RouteMatch, Arc<RateLimiter>)>,
        trusted_proxies: &[IpNet],
    ) -> Self {
        Self { stages: Arc::new([Stage { limiter, rules: rules.into(), trusted: trusted_proxies.into() }]) }
    }

    /// This layer's policies, then `inner`'s, in one layer: a request is counted against each
    /// in turn and the first that refuses answers (`inner`'s policies do not count it), as
    /// `ServiceBuilder::new().layer(self).layer(inner)` would. Consecutive policies kept in the
    /// same Redis decide in one round trip (see [`RateLimiter::check_in_order`]).
    ///
    /// ```ignore
    /// // Per client IP first, then per user: one Redis round trip for both.
    /// router.layer(s.rate_limit("ip")?.then(s.rate_limit("api")?))
    /// ```
    #[must_use]
    pub fn then(self, inner: Self) -> Self {
        Self { stages: self.stages.iter().chain(inner.stages.iter()).cloned().collect() }
    }

    /// The first policy's own limiter (for requests no rule matches).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.stages[0].limiter
    }

    /// Every limiter: each policy's own, then its rules'.
    pub fn limiters(&self) -> impl Iterator<Item = &Arc<RateLimiter>> {
        self.stages.iter().flat_map(|s| std::iter::once(&s.limiter).chain(s.rules.iter().map(|(_, l)| l)))
    }

    /// The first policy's limiter deciding a request with `method` and `path`.
    pub fn limiter_for(&self, method: &http::Method, path: &str) -> &Arc<RateLimiter> {
        self.stages[0].limiter_for(method, path)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit { inner, layer: self.clone() }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

/// The key of a request under a policy's key parts. Each part is length-prefixed, so no value
/// (a crafted header containing `|` or `=`) can make one request's key equal another's.
fn key<B>(req: &Request<B>, parts: &[KeyPart], trusted: &[IpNet]) -> String {
    let ip = || {
        let peer =
            req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        client_key(client_ip(peer, req.headers(), trusted))
    };
    let mut out = String::with_capacity(64);
    for p in parts {
        let (tag, value): (&str, std::borrow::Cow<'_, str>) = match p {
            KeyPart::Ip => ("ip", ip().into()),
            KeyPart::User => match req.extensions().get::<keel_http::Principal>() {
                Some(user) => ("user", user.0.as_str().into()),
                None => ("ip", ip().into()),
            },
            // Unmatched paths share one key: they are the client's choice, not a resource.
            KeyPart::Route => {
                ("route", req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).into())
            }
            KeyPart::Header(h) => match req.headers().get(h) {
                Some(v) => ("h", String::from_utf8_lossy(v.as_bytes())),
                None => ("h-none", "".into()),
            },
        };
        out.push_str(tag);
        out.push(':');
        out.push_str(&value.len().to_string());
        out.push(':');
        out.push_str(&value);
        out.push('|');
    }
    out
}

/// An IPv6 client counts by its /64 (one host usually owns a whole /64); IPv4 by address.
fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn put_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    // Stacked limiters (per user inside per IP): the client sees the tighter one, the one an
    // inner limiter already reported when it has no more left than this one.
    let tighter_inside = h
        .get(&REMAINING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|inner| inner <= u64::from(d.remaining));
    if tighter_inside {
        return;
    }
    h.insert(LIMIT.clone(), HeaderValue::from(d.limit));
    h.insert(REMAINING.clone(), HeaderValue::from(d.remaining));
    h.insert(RESET.clone(), HeaderValue::from(secs_ceil(d.reset)));
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let chosen: Vec<(&RateLimiter, String)> = layer
                .stages
                .iter()
                .map(|stage| {
                    let limiter = stage.limiter_for(req.method(), req.uri().path());
                    (&**limiter, key(&req, &limiter.policy.key, &stage.trusted))
                })
                .collect();
            let verdicts = RateLimiter::check_in_order(&chosen).await;
            // Only the last verdict can refuse: a refusal ends the checks.
            let last = verdicts.len().checked_sub(1).map(|n| (verdicts[n], chosen[n].0));
            let refusal = match last {
                Some((Verdict::Decided(d), limiter)) if !d.allowed => Some(
                    Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                        .detail(format!("the {} rate limit is reached; retry after the given time", limiter.name))
                        .code("RATE_LIMITED")
                        .retry_after(secs_ceil(d.retry_after).max(1))
                        .into_response(),
                ),
                Some((Verdict::FailedClosed, _)) => Some(
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service degraded")
                        .detail("rate limiting is unavailable and this endpoint fails closed; retry later")
                        .code("SERVICE_DEGRADED")
                        .retry_after(1)
                        .into_response(),
                ),
                _ => None,
            };
            let mut resp = match refusal {
                Some(resp) => resp,
                None => inner.call(req).await?,
            };
            // Innermost first, as nested layers would: each outer one keeps a tighter inner's.
            // A failure mode decided no numbers, so it reports none.
            for verdict in verdicts.iter().rev() {
                if let Verdict::Decided(d) = verdict {
                    put_headers(&mut resp, d);
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_values_cannot_collide_and_ipv6_counts_by_64() {
        let parts = [
            KeyPart::Header(http::HeaderName::from_static("x-a")),
            KeyPart::Header(http::HeaderName::from_static("x-b")),
        ];
        let req = |a: &str, b: &str| Request::builder().header("x-a", a).header("x-b", b).body(()).unwrap();
        assert_ne!(key(&req("1|h:1:2", "3"), &parts, &[]), key(&req("1", "2|h:1:3"), &parts, &[]));
        let missing = Request::builder().header("x-b", "v").body(()).unwrap();
        assert_ne!(key(&missing, &parts, &[]), key(&req("", "v"), &parts, &[]));
        assert_eq!(
            client_key("2001:db8:1:2:3::9".parse().unwrap()),
            client_key("2001:db8:1:2:ffff::1".parse().unwrap())
        );
        assert_ne!(client_key("2001:db8:1:2::1".parse().unwrap()), client_key("2001:db8:1:3::1".parse().unwrap()));
    }

    /// A per-user limiter inside a per-IP one: the client is told about the tighter of the two,
    /// and whichever refuses answers the 429.
    #[tokio::test]
    async fn stacked_limiters_report_the_tighter_one() {
        use tower::{ServiceBuilder, ServiceExt as _};
        let limiter = |name: &str, limit: u32| {
            let policy = super::super::RateLimitPolicy { limit, ..Default::default() };
            let l = RateLimiter::local(name, policy, super::super::OnBackendError::FailOpen, None);
            RateLimitLayer::new(Arc::new(l), &[])
        };
        let svc = ServiceBuilder::new().layer(limiter("ip", 3)).layer(limiter("user", 2)).service_fn(
            |_req: Request<()>| async { Ok::<_, std::convert::Infallible>(StatusCode::OK.into_response()) },
        );
        let call = |svc: &_| {
            let svc: &RateLimit<RateLimit<_>> = svc;
            svc.clone().oneshot(Request::builder().uri("/x").body(()).unwrap())
        };
        let header = |r: &Response, h: &HeaderName| r.headers()[h].to_str().unwrap().to_owned();
        let first = call(&svc).await.unwrap();
        assert_eq!((header(&first, &LIMIT), header(&first, &REMAINING)), ("2".into(), "1".into()));
        call(&svc).await.unwrap();
        // The per-user limiter refuses; the per-IP one (1 left) keeps its 429 headers.
        let third = call(&svc).await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!((header(&third, &LIMIT), header(&third, &REMAINING)), ("2".into(), "0".into()));
        // Now the per-IP limiter refuses on its own.
        let fourth = call(&svc).await.unwrap();
        assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!((header(&fourth, &LIMIT), header(&fourth, &REMAINING)), ("3".into(), "0".into()));
    }

    /// `then` makes one layer that answers as the two nested layers above do, headers and
    /// refusals alike, and does not count a request in the inner policy once the outer refused.
    #[tokio::test]
    async fn one_layer_of_two_policies_answers_as_nested_layers() {
        use tower::ServiceExt as _;
        let limiter = |name: &str, limit: u32| {
            let policy = super::super::RateLimitPolicy { limit, ..Default::default() };
            Arc::new(RateLimiter::local(name, policy, super::super::OnBackendError::FailOpen, None))
        };
        let (ip, user) = (limiter("ip", 3), limiter("user", 3));
        let layer = RateLimitLayer::new(ip.clone(), &[]).then(RateLimitLayer::new(user.clone(), &[]));
        assert_eq!(layer.limiters().map(|l| l.name()).collect::<Vec<_>>(), ["ip", "user"]);
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(StatusCode::OK.into_response())
        }));
        let call = || svc.clone().oneshot(Request::builder().uri("/x").body(()).unwrap());
        let seen = |r: &Response| {
            let h = |name: &HeaderName| r.headers()[name].to_str().unwrap().to_owned();
            (r.status().as_u16(), h(&LIMIT), h(&REMAINING))
        };
        let anonymous = key(&Request::builder().body(()).unwrap(), &[KeyPart::Ip], &[]);
        // The per-user policy spends one request of its own elsewhere: it is the tighter one.
        assert!(matches!(user.check(&anonymous).await, Verdict::Decided(d) if d.allowed));
        assert_eq!(seen(&call().await.unwrap()), (200, "3".into(), "1".into()));
        assert_eq!(seen(&call().await.unwrap()), (200, "3".into(), "0".into()));
        let refused = call().await.unwrap();
        assert_eq!(seen(&refused), (429, "3".into(), "0".into()));
        assert!(refused.headers().contains_key(http::header::RETRY_AFTER));
        // The per-IP policy's budget is spent (three counted, the last refused by the user's):
        // it refuses alone now, and the per-user policy is not asked.
        assert_eq!(seen(&call().await.unwrap()), (429, "3".into(), "0".into()));
        let fresh_user = limiter("user", 3);
        let layer = RateLimitLayer::new(limiter("ip", 1), &[]).then(RateLimitLayer::new(fresh_user.clone(), &[]));
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(StatusCode::OK.into_response())
        }));
        for expected in [200, 429, 429] {
            let resp = svc.clone().oneshot(Request::builder().uri("/x").body(()).unwrap()).await.unwrap();
            assert_eq!(resp.status().as_u16(), expected);
        }
        let Verdict::Decided(d) = fresh_user.check(&anonymous).await else { panic!("a local limiter decides") };
        assert_eq!(d.remaining, 1, "the per-user policy counted only the request the per-IP one let through");
    }
}
