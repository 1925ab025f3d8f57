//! Forwarding: a table route goes to its service with the same method, path, query and body and
//! the headers the contract names; the answer's status, body and a few headers come back as they
//! are. Keel's client adds the request id, the trace context and the remaining deadline, and
//! applies the upstream's timeouts, retries (idempotent calls only), breaker and size cap; its
//! failures answer 502/503/504 problems.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use keel::http::client::{self, Client, ClientError};
use keel::http::client_ip::{IpNet, client_ip};
use keel::http::{Problem, context};

use crate::UpstreamTimeouts;
use crate::catchup;
use crate::edge;
use crate::routes::{Route, Upstream};

/// Request headers passed to a service. The request id and `traceparent` are set by Keel's
/// client from the request context (the caller's values when valid); they are copied here too so
/// they survive where no tracing pipeline is installed.
const REQUEST_HEADERS: [HeaderName; 8] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    // Auth names a session's device by it (the session list).
    header::USER_AGENT,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Response headers passed back to the client; everything else a service sets stays inside.
const RESPONSE_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::LOCATION,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
    header::CONTENT_DISPOSITION,
    HeaderName::from_static("idempotent-replayed"),
];

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) clients: HashMap<Upstream, Client>,
    /// The events service's full-text searches (`events_search`): their own breaker and
    /// bulkhead, so that expensive searches failing never open the breaker of the rest of the
    /// events API.
    pub(crate) searches: Client,
    /// Pictures of the events service and auth (`events_pictures`, `auth_pictures`): their own
    /// breakers, so that an object store that is away never opens the breaker of the rest of
    /// the service's API.
    pub(crate) pictures: HashMap<Upstream, Client>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) timeouts: UpstreamTimeouts,
    /// The site's origin for absolute links.
    pub(crate) origin: crate::origin::Origin,
    /// Event page views waiting to be sent (the trending feed).
    pub(crate) views: crate::views::Views,
    /// The gateway's flags: which capabilities are on ([`crate::capabilities`]).
    pub(crate) flags: keel::features::Flags,
}

impl Gateway {
    /// The client of `upstream`; a 500 problem (never expected: set-up makes one per upstream).
    pub(crate) fn client(&self, upstream: Upstream) -> Result<&Client, Problem> {
        self.clients
            .get(&upstream)
            .ok_or_else(|| Problem::internal_error("forwarding", format!("no client for upstream {}", upstream.name())))
    }

    /// The client for a call of `method` to `target` (path and query) on `upstream`: the
    /// searches' own for a full-text search of the events service, else the upstream's.
    pub(crate) fn client_for(&self, upstream: Upstream, method: &Method, target: &str) -> Result<&Client, Problem> {
        if is_search(upstream, method, target) {
            return Ok(&self.searches);
        }
        if is_picture(target)
            && let Some(c) = self.pictures.get(&upstream)
        {
            return Ok(c);
        }
        self.client(upstream)
    }

    /// `req` with the attempt deadline of its method (`app.upstream_timeouts.read|write`).
    pub(crate) fn timed(&self, req: client::Request, method: &Method) -> client::Request {
        req.timeout(self.timeouts.attempt(method))
    }

    /// Runs `call` (every attempt of one upstream call) within `app.upstream_timeouts.total`,
    /// or the request's own deadline when that comes first: past it the client answers
    /// [`ClientError::DeadlineExceeded`], a 504.
    pub(crate) async fn bounded<T>(&self, call: impl Future<Output = T>) -> T {
        let mut ctx = context::current().unwrap_or(context::RequestContext { request_id: None, deadline: None });
        let total = tokio::time::Instant::now() + self.timeouts.total;
        ctx.deadline = Some(ctx.deadline.map_or(total, |d| d.min(total)));
        context::scope(ctx, call).await
    }

    /// Forwards `req` as `route` says.
    pub(crate) async fn forward(self: Arc<Self>, route: &'static Route, req: Request) -> Result<Response, Problem> {
        Ok(relay(self.send(route, req).await?))
    }

    /// Sends `req` to `route`'s service and returns its answer unread; `Err` is the gateway's
    /// own answer when the request never left (refused at the edge, unreadable body).
    pub(crate) async fn send(
        &self,
        route: &'static Route,
        req: Request,
    ) -> Result<Result<client::Response, ClientError>, Problem> {
        let (mut parts, body) = req.into_parts();
        // Refused at the edge: nothing reaches a service, and the body is never read.
        edge::authorize(&mut parts, route.access).await?;
        let target =
            parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let client = self.client_for(route.upstream, &parts.method, &target)?;
        let mut out = client::Request::new(parts.method.clone(), target);
        for name in &REQUEST_HEADERS {
            for value in parts.headers.get_all(name) {
                out = out.header(name.clone(), value.clone());
            }
        }
        out = out.header(HeaderName::from_static("x-forwarded-for"), self.client_address(&parts));
        let method = parts.method.clone();
        // Bounded by `http.body_limit` (Keel's stack): 413 past it.
        let body = keel::http::extract::body(Request::from_parts(parts, body), &()).await?;
        if !body.is_empty() || matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            out = out.body(body);
        }
        let out = self.timed(out, &method);
        Ok(self.call(route.upstream, client, out).await)
    }

    /// Sends `req` with `client` (of `upstream`) within [`Gateway::bounded`]; a join goes
    /// through [`catchup::join`].
    pub(crate) async fn call(
        &self,
        upstream: Upstream,
        client: &Client,
        req: client::Request,
    ) -> Result<client::Response, ClientError> {
        match catchup::join_of(upstream, req.method(), req.path()) {
            Some(id) => {
                let id = id.to_owned();
                self.bounded(catchup::join(self, client, req, &id)).await
            }
            None => self.bounded(client.send(req)).await,
        }
    }

    /// The client's address as the gateway resolved it (trusted proxies only), for services that
    /// trust the gateway as their proxy.
    fn client_address(&self, parts: &http::request::Parts) -> HeaderValue {
        let ip = self.client_ip(parts);
        HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0.0.0.0"))
    }

    /// The client's IP address (the peer's, or a trusted proxy's `X-Forwarded-For`).
    pub(crate) fn client_ip(&self, parts: &http::request::Parts) -> IpAddr {
        let peer =
            parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        client_ip(peer, &parts.headers, &self.trusted_proxies)
    }
}

/// Whether a call is about a picture: an event's cover (`/api/v1/events/{id}/cover…`) or a
/// person's (`/api/v1/me/avatar`, `/api/v1/profiles/{id}/avatar/…`).
pub(crate) fn is_picture(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let parts: Vec<&str> = path.split('/').collect();
    matches!(
        parts.as_slice(),
        ["", "api", "v1", "events", _, "cover", ..]
            | ["", "api", "v1", "me", "avatar"]
            | ["", "api", "v1", "profiles", _, "avatar", ..]
    )
}

/// Whether a call is a full-text search of the events service: `GET /api/v1/events` with a `q`
/// that is not blank.
pub(crate) fn is_search(upstream: Upstream, method: &Method, target: &str) -> bool {
    if upstream != Upstream::Events || method != Method::GET {
        return false;
    }
    let Some((path, query)) = target.split_once('?') else { return false };
    path == "/api/v1/events"
        && url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "q" && !v.trim().is_empty())
}

/// The service's answer as the client's: status, body and the listed headers unchanged; a call
/// that failed is Keel's 502/503/504 problem.
pub(crate) fn relay(result: Result<client::Response, ClientError>) -> Response {
    match result {
        Ok(resp) => {
            let mut headers = HeaderMap::new();
            for name in &RESPONSE_HEADERS {
                for value in resp.headers.get_all(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
            let mut out = Response::new(Body::from(resp.body));
            *out.status_mut() = resp.status;
            *out.headers_mut() = headers;
            out
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_are_told_from_the_rest() {
        for target in [
            "/api/v1/events/01a2-x/cover",
            "/api/v1/events/01a2-x/cover/0123456789abcdef/card.jpg",
            "/api/v1/me/avatar",
            "/api/v1/profiles/01a2-x/avatar/0123456789abcdef/small.jpg?x=1",
        ] {
            assert!(is_picture(target), "{target}");
        }
        for target in ["/api/v1/events/01a2-x", "/api/v1/events?q=cover", "/api/v1/me/profile", "/api/v1/profiles/x"] {
            assert!(!is_picture(target), "{target}");
        }
    }

    #[test]
    fn only_a_search_of_the_events_list_is_a_search() {
        let get = Method::GET;
        for target in
            ["/api/v1/events?q=jazz", "/api/v1/events?city=Lyon&q=jazz%20night", "/api/v1/events?q=+a+&limit=5"]
        {
            assert!(is_search(Upstream::Events, &get, target), "{target}");
        }
        for target in [
            "/api/v1/events",
            "/api/v1/events?q=",
            "/api/v1/events?q=+",
            "/api/v1/events?city=q",
            "/api/v1/events/batch?q=x",
            "/api/v1/meta/cities?q=ly",
        ] {
            assert!(!is_search(Upstream::Events, &get, target), "{target}");
        }
        assert!(!is_search(Upstream::Events, &Method::POST, "/api/v1/events?q=jazz"));
        assert!(!is_search(Upstream::Joins, &get, "/api/v1/events?q=jazz"));
    }
}
