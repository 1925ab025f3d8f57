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
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    rules: Arc<[(RouteMatch, Arc<RateLimiter>)]>,
    trusted: Arc<[IpNet]>,
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
        Self { limiter, rules: rules.into(), trusted: trusted_proxies.into() }
    }

    /// The policy's own limiter (for requests no rule matches).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Every limiter: the policy's own, then the rules'.
    pub fn limiters(&self) -> impl Iterator<Item = &Arc<RateLimiter>> {
        std::iter::once(&self.limiter).chain(self.rules.iter().map(|(_, l)| l))
    }

    /// The limiter deciding a request with `method` and `path`.
    pub fn limiter_for(&self, method: &http::Method, path: &str) -> &Arc<RateLimiter> {
        self.rules.iter().find(|(m, _)| m.matches(method, path)).map_or(&self.limiter, |(_, l)| l)
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
            let limiter = layer.limiter_for(req.method(), req.uri().path());
            let k = key(&req, &limiter.policy.key, &layer.trusted);
            match limiter.check(&k).await {
                Verdict::Decided(d) if d.allowed => {
                    let mut resp = inner.call(req).await?;
                    put_headers(&mut resp, &d);
                    Ok(resp)
                }
                Verdict::Decided(d) => {
                    let mut resp = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                        .detail(format!("the {} rate limit is reached; retry after the given time", limiter.name))
                        .code("RATE_LIMITED")
                        .retry_after(secs_ceil(d.retry_after).max(1))
                        .into_response();
                    put_headers(&mut resp, &d);
                    Ok(resp)
                }
                // No decision was made, so there are no RateLimit-* numbers to report.
                Verdict::FailedOpen => inner.call(req).await,
                Verdict::FailedClosed => {
                    Ok(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service degraded")
                        .detail("rate limiting is unavailable and this endpoint fails closed; retry later")
                        .code("SERVICE_DEGRADED")
                        .retry_after(1)
                        .into_response())
                }
            }
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
}
