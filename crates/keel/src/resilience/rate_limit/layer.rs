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

use super::{Decision, KeyPart, RateLimiter, Verdict};
use crate::http::Problem;
use crate::http::client_ip::{IpNet, client_ip};

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Applies a [`RateLimiter`]. Put it on a router (`Router::layer`) or a route
/// (`MethodRouter::route_layer`); build it with `Setup::rate_limit("<policy>")`.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    trusted: Arc<[IpNet]>,
}

impl RateLimitLayer {
    /// A layer for `limiter`; `trusted_proxies` may tell the client IP (see `http::client_ip`).
    pub fn new(limiter: Arc<RateLimiter>, trusted_proxies: &[IpNet]) -> Self {
        Self { limiter, trusted: trusted_proxies.into() }
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

/// The key of a request under a policy's key parts.
fn key<B>(req: &Request<B>, parts: &[KeyPart], trusted: &[IpNet]) -> String {
    let ip = || {
        let peer =
            req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        client_ip(peer, req.headers(), trusted)
    };
    parts
        .iter()
        .map(|p| match p {
            KeyPart::Ip => format!("ip={}", ip()),
            KeyPart::User => match req.extensions().get::<crate::http::Principal>() {
                Some(user) => format!("user={}", user.0),
                None => format!("ip={}", ip()),
            },
            KeyPart::Route => {
                format!("route={}", req.extensions().get::<MatchedPath>().map_or(req.uri().path(), MatchedPath::as_str))
            }
            KeyPart::Header(h) => {
                format!("{h}={}", req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("-"))
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn put_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
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
            let k = key(&req, &layer.limiter.policy.key, &layer.trusted);
            match layer.limiter.check(&k).await {
                Verdict::Decided(d) if d.allowed => {
                    let mut resp = inner.call(req).await?;
                    put_headers(&mut resp, &d);
                    Ok(resp)
                }
                Verdict::Decided(d) => {
                    let mut resp = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                        .detail(format!("the {} rate limit is reached; retry after the given time", layer.limiter.name))
                        .code("RATE_LIMITED")
                        .retry_after(secs_ceil(d.retry_after).max(1))
                        .into_response();
                    put_headers(&mut resp, &d);
                    Ok(resp)
                }
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
