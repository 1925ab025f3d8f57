//! One `request` span per request, continuing the caller's W3C trace, plus an access-log line.
//!
//! The span is an ordinary `tracing` span, entered whenever the response future is polled, so
//! every layer of the process's subscriber sees it and every event inside it: Keel's log lines
//! (which lift its `service`, `request_id`, `trace_id` and `span_id` to the top level),
//! OpenTelemetry export, and an application's own layers. Its fields follow OpenTelemetry's
//! current HTTP server semantic conventions:
//!
//! | field | value |
//! |---|---|
//! | `http.request.method` | `GET` |
//! | `http.route` | the matched template (`/items/{id}`), only when a route matched |
//! | `http.response.status_code` | recorded when the response is ready |
//! | `url.path`, `url.scheme` | the request's path (never the query, which may carry secrets; a path parameter named `token` or `secret` in the matched route is `***`) and scheme |
//! | `server.address`, `server.port` | from `Host` (or the HTTP/2 authority) |
//! | `client.address` | the client, through `http.trusted_proxies` (see [`super::client_ip`]) |
//! | `user_agent.original` | `User-Agent` |
//! | `network.protocol.version` | `1.0`, `1.1`, `2` |
//!
//! plus Keel's `service` and `request_id`, and `otel.kind = server` and, when spans are
//! exported, `otel.name = "{method} {route}"`. A 5xx sets `otel.status_code = error`.
//!
//! It must sit inside the request-id layer (it reads its
//! [`RequestId`](super::request_id::RequestId)) and after routing (it reads [`MatchedPath`]);
//! Keel's stack applies it with `Router::layer`, which runs after routing.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Version};
use pin_project_lite::pin_project;
use tracing::field::Empty;

use super::client_ip::IpNet;
use crate::middleware::{InnerFuture, Middleware};

/// The `route` label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// Adds request spans; see the module docs.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    service: &'static str,
    access_log: bool,
    trusted_proxies: Arc<[IpNet]>,
}

impl TraceLayer {
    /// Spans tagged with `service`; `access_log` adds an `info` line per finished request.
    ///
    /// The process keeps one copy of each distinct service name for its life, so `service`
    /// should be a name from configuration, not something made per request.
    pub fn new(service: impl AsRef<str>, access_log: bool) -> Self {
        Self { service: keel_telemetry::intern::intern(service.as_ref()), access_log, trusted_proxies: Arc::from([]) }
    }

    /// Reads `client.address` through these proxies (`http.trusted_proxies`); without them it
    /// is the socket peer.
    pub fn trusted_proxies(mut self, proxies: &[IpNet]) -> Self {
        self.trusted_proxies = Arc::from(proxies);
        self
    }
}

crate::layer_with_config!(TraceLayer => Trace);

impl<ReqB, F> Middleware<ReqB, F> for TraceLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let span = request_span(self, &req);
        // The span is entered while the response future is polled, which is where everything
        // below runs: axum calls the route (and the handler) on the first poll.
        let inner = inner(req);
        ResponseFuture { inner, call: CallSpan::starting(span, self.access_log) }
    }
}

/// The request's span, its parent the caller's `traceparent` if it sent one.
fn request_span<B>(layer: &TraceLayer, req: &Request<B>) -> tracing::Span {
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let method = req.method().as_str();
    let (host, port) = server_address(req);
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = peer.map(|p| client_address(p, req.headers(), &layer.trusted_proxies));
    let user_agent = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        service = layer.service,
        request_id = request_id_field(req),
        http.request.method = method,
        http.route = route,
        url.path = &*logged_path(route, req.uri().path()),
        url.scheme = req.uri().scheme_str().unwrap_or(scheme(req.extensions())),
        server.address = host,
        server.port = port,
        client.address = client.map(tracing::field::display),
        user_agent.original = user_agent,
        network.protocol.version = protocol_version(req.version()),
        http.response.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if keel_telemetry::exporting() {
        // Semantic conventions: `{method} {route}`, or the method alone without a route (a
        // path would make one span name per URL).
        match route {
            Some(r) => span.record("otel.name", format!("{method} {r}")),
            None => span.record("otel.name", method),
        };
    }
    continue_trace(&span, req.headers());
    span
}

/// Path parameters whose values are secrets (a capability URL's token): never recorded.
const SECRET_PARAMS: [&str; 2] = ["{token}", "{secret}"];

/// `path` as the span records it: with the segments the matched `route` names in
/// [`SECRET_PARAMS`] replaced by `***` (the route template itself when the segments do not line
/// up, as with a wildcard).
fn logged_path<'a>(route: Option<&str>, path: &'a str) -> std::borrow::Cow<'a, str> {
    let Some(route) = route.filter(|r| SECRET_PARAMS.iter().any(|p| r.contains(p))) else {
        return std::borrow::Cow::Borrowed(path);
    };
    if route.split('/').count() != path.split('/').count() || route.contains("{*") {
        return std::borrow::Cow::Owned(route.to_owned());
    }
    let segments: Vec<&str> = route
        .split('/')
        .zip(path.split('/'))
        .map(|(t, p)| if SECRET_PARAMS.contains(&t) { "***" } else { p })
        .collect();
    std::borrow::Cow::Owned(segments.join("/"))
}

/// The request's id as a span field. Borrowed, not `RequestId::from_extensions`: that clones
/// the header value, once per request.
pub fn request_id_field<B>(req: &Request<B>) -> Option<&str> {
    let id = req.extensions().get::<tower_http::request_id::RequestId>()?;
    Some(id.header_value().to_str().unwrap_or_default())
}

/// Makes `span` a child of the caller's span when the request carries W3C `traceparent`.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        keel_telemetry::set_parent(span, keel_telemetry::extract_context(headers));
    }
}

/// `Host` (or the authority of an HTTP/2 or absolute-form request), split into address and
/// port; the port defaults to the scheme's.
fn server_address<B>(req: &Request<B>) -> (Option<&str>, Option<u16>) {
    let authority = req
        .uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()));
    let Some(authority) = authority else { return (None, None) };
    let default_port = if req.uri().scheme_str() == Some("https") { 443 } else { 80 };
    // `[::1]:8080`, `example.com:8080`, `example.com`.
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => (h, p.parse().ok()),
        _ => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (Some(host), Some(port.unwrap_or(default_port)))
}

fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() { peer.to_canonical() } else { super::client_ip::client_ip(peer, headers, trusted) }
}

/// `https` for a request the listener received over TLS, else `http`.
fn scheme(extensions: &http::Extensions) -> &'static str {
    if extensions.get::<keel_tls::Encrypted>().is_some() { "https" } else { "http" }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A call being traced, HTTP or gRPC: its span, when it started, and whether its end is logged
/// when it did not fail (`log.access_log`).
#[derive(Debug, Clone)]
pub struct CallSpan {
    /// The call's span.
    pub span: tracing::Span,
    /// When the call started.
    pub start: Instant,
    /// Whether a call that did not fail logs its end.
    pub access_log: bool,
}

impl CallSpan {
    /// A call starting now in `span`.
    pub fn starting(span: tracing::Span, access_log: bool) -> Self {
        Self { span, start: Instant::now(), access_log }
    }

    /// Milliseconds since the call started.
    pub fn latency_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

pin_project! {
    /// Response future of [`Trace`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: CallSpan,
    }
}

impl<F: InnerFuture> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.call.span.enter();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            finished(this.call, resp.status().as_u16());
        }
        Poll::Ready(out)
    }
}

/// Gives the span its status, and logs the access or failure line.
fn finished(call: &CallSpan, status: u16) {
    call.span.record("http.response.status_code", status);
    if status >= 500 {
        call.span.record("otel.status_code", "error");
        tracing::error!(http.response.status_code = status, latency_ms = call.latency_ms(), "request failed");
    } else if call.access_log {
        tracing::info!(http.response.status_code = status, latency_ms = call.latency_ms(), "request finished");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn server_address_and_port_come_from_the_authority_or_host() {
        assert_eq!(server_address(&req("/x", Some("api.example:8443"))), (Some("api.example"), Some(8443)));
        assert_eq!(server_address(&req("/x", Some("api.example"))), (Some("api.example"), Some(80)));
        assert_eq!(server_address(&req("/x", Some("[::1]:9000"))), (Some("::1"), Some(9000)));
        assert_eq!(server_address(&req("/x", Some("[::1]"))), (Some("::1"), Some(80)));
        assert_eq!(server_address(&req("https://h.example/x", None)), (Some("h.example"), Some(443)));
        assert_eq!(server_address(&req("/x", None)), (None, None));
    }

    #[test]
    fn a_secret_path_parameter_is_never_recorded() {
        let route = Some("/api/v1/calendars/{token}/events.ics");
        assert_eq!(logged_path(route, "/api/v1/calendars/s3cr3t/events.ics"), "/api/v1/calendars/***/events.ics");
        assert_eq!(logged_path(Some("/items/{id}"), "/items/7"), "/items/7");
        assert_eq!(logged_path(None, "/no/route"), "/no/route");
        assert_eq!(logged_path(Some("/f/{secret}/{*rest}"), "/f/s3cr3t/a/b"), "/f/{secret}/{*rest}");
    }

    #[test]
    fn protocol_versions_are_written_as_the_conventions_say() {
        assert_eq!(protocol_version(Version::HTTP_11), "1.1");
        assert_eq!(protocol_version(Version::HTTP_2), "2");
        assert_eq!(protocol_version(Version::HTTP_10), "1.0");
    }
}
