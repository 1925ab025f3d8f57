//! Security response headers, added when the handler did not set them.
//!
//! `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
//! and `Strict-Transport-Security` when `http.hsts.enabled` (clients reach the service over TLS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use tower::Service;

use crate::config::HstsConfig;

/// Adds the headers; see the module docs.
#[derive(Debug, Clone)]
pub struct SecurityHeadersLayer {
    headers: Headers,
}

/// The headers without HSTS are the same for every service: a static list, so the clone axum
/// makes of the layered service for every request (and the one each response future keeps)
/// touches no reference count shared between worker threads. With HSTS the list is shared.
#[derive(Debug, Clone)]
enum Headers {
    Default,
    Custom(Arc<[(HeaderName, HeaderValue)]>),
}

static DEFAULT: [(HeaderName, HeaderValue); 3] = [
    (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
];

impl Headers {
    fn list(&self) -> &[(HeaderName, HeaderValue)] {
        match self {
            Headers::Default => &DEFAULT,
            Headers::Custom(list) => list,
        }
    }
}

impl SecurityHeadersLayer {
    /// The headers for this HSTS setting.
    pub fn new(hsts: &HstsConfig) -> Self {
        if !hsts.enabled {
            return Self { headers: Headers::Default };
        }
        let mut headers = DEFAULT.to_vec();
        let mut v = format!("max-age={}", hsts.max_age.as_secs());
        if hsts.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.push((header::STRICT_TRANSPORT_SECURITY, v));
        }
        Self { headers: Headers::Custom(headers.into()) }
    }
}

impl SecurityHeadersLayer {
    /// Adds the headers `headers` does not have yet.
    fn apply(&self, headers: &mut http::HeaderMap) {
        self.apply_after(headers, 0, |_| {});
    }

    /// [`apply`](Self::apply), with `more` other headers (none of these) added by `before`
    /// ahead of them: room is made for all, so the map grows at most once, and the answer's
    /// header names are looked through before `before` adds to them.
    fn apply_after(&self, headers: &mut http::HeaderMap, more: usize, before: impl FnOnce(&mut http::HeaderMap)) {
        let list = self.headers.list();
        headers.reserve(list.len() + more);
        // A handler rarely sets any of them, and an answer carries few headers: one pass over
        // those (comparing standard names is comparing two small integers) tells whether the
        // cheaper `append` may be used for all. An entry lookup per header cost about 70
        // instructions more each.
        let set = headers.keys().any(|name| list.iter().any(|(k, _)| k == name));
        before(headers);
        for (k, v) in list {
            if !set {
                headers.append(k.clone(), v.clone());
            } else if let http::header::Entry::Vacant(e) = headers.entry(k.clone()) {
                e.insert(v.clone());
            }
        }
    }
}

super::macros::layer_with_config!(SecurityHeadersLayer => SecurityHeaders);

/// The service made by [`SecurityHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    layer: SecurityHeadersLayer,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SecurityHeaders<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture { inner: self.inner.call(req), layer: self.layer.clone() }
    }
}

pin_project! {
    /// Response future of [`SecurityHeaders`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        layer: SecurityHeadersLayer,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &mut out {
            this.layer.apply(resp.headers_mut());
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, header};

    use crate::config::HstsConfig;

    fn applied(mut headers: HeaderMap, hsts: bool) -> HeaderMap {
        let cfg = HstsConfig { enabled: hsts, ..HstsConfig::default() };
        super::SecurityHeadersLayer::new(&cfg).apply(&mut headers);
        headers
    }

    #[test]
    fn each_header_is_added_once() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let h = applied(h, true);
        for name in [
            header::X_CONTENT_TYPE_OPTIONS,
            header::X_FRAME_OPTIONS,
            header::REFERRER_POLICY,
            header::STRICT_TRANSPORT_SECURITY,
        ] {
            assert_eq!(h.get_all(&name).iter().count(), 1, "{name}");
        }
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn a_handler_s_own_value_is_kept_and_the_others_added() {
        let mut h = HeaderMap::new();
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
        let h = applied(h, false);
        assert_eq!(h.get_all(header::X_FRAME_OPTIONS).iter().collect::<Vec<_>>(), ["SAMEORIGIN"]);
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(!h.contains_key(header::STRICT_TRANSPORT_SECURITY));
    }

    #[test]
    fn a_handler_s_hsts_and_repeated_values_are_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=60"));
        h.append(header::REFERRER_POLICY, HeaderValue::from_static("origin"));
        h.append(header::REFERRER_POLICY, HeaderValue::from_static("strict-origin"));
        let h = applied(h, true);
        assert_eq!(h.get_all(header::STRICT_TRANSPORT_SECURITY).iter().collect::<Vec<_>>(), ["max-age=60"]);
        assert_eq!(h.get_all(header::REFERRER_POLICY).iter().collect::<Vec<_>>(), ["origin", "strict-origin"]);
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
}
