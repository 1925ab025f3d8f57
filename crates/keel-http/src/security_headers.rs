//! Security response headers, added when the handler did not set them.
//!
//! `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
//! and `Strict-Transport-Security` when `http.hsts.enabled` (clients reach the service over TLS).
//! Each is one `tower_http::set_header::SetResponseHeaderLayer::if_not_present`, so a value the
//! handler set (even several of them) is kept as it is.
//!
//! ```
//! use axum::{Router, routing::get};
//! use keel_http::security_headers::SecurityHeadersLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(SecurityHeadersLayer::new(&keel_http::security_headers::HstsConfig::default()));
//! ```

use std::time::Duration;

use http::{HeaderValue, header};
use serde::{Deserialize, Serialize};
use tower::Layer;
use tower::layer::util::Stack;
use tower_http::set_header::SetResponseHeaderLayer;

use keel_config::Section;

/// `http.hsts.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HstsConfig {
    /// Send `Strict-Transport-Security`. Default `false`.
    pub enabled: bool,
    /// `max-age`. Default `1year` (365.25 days).
    #[serde(with = "keel_config::duration")]
    pub max_age: Duration,
    /// Add `includeSubDomains`. Default `true`.
    pub include_subdomains: bool,
}

impl Default for HstsConfig {
    fn default() -> Self {
        Self { enabled: false, max_age: Duration::from_secs(31_557_600), include_subdomains: true }
    }
}

impl Section for HstsConfig {}

type Headers = Stack<
    SetResponseHeaderLayer<Option<HeaderValue>>,
    Stack<
        SetResponseHeaderLayer<HeaderValue>,
        Stack<SetResponseHeaderLayer<HeaderValue>, SetResponseHeaderLayer<HeaderValue>>,
    >,
>;

/// Adds the headers; see the module docs.
#[derive(Debug, Clone)]
pub struct SecurityHeadersLayer {
    layers: Headers,
}

impl SecurityHeadersLayer {
    /// The headers for this HSTS setting.
    pub fn new(hsts: &HstsConfig) -> Self {
        let hsts = hsts.enabled.then(|| {
            let mut v = format!("max-age={}", hsts.max_age.as_secs());
            if hsts.include_subdomains {
                v.push_str("; includeSubDomains");
            }
            HeaderValue::from_str(&v).ok()
        });
        let set =
            |name, value: &'static str| SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value));
        let layers = Stack::new(
            SetResponseHeaderLayer::if_not_present(header::STRICT_TRANSPORT_SECURITY, hsts.flatten()),
            Stack::new(
                set(header::REFERRER_POLICY, "no-referrer"),
                Stack::new(set(header::X_FRAME_OPTIONS, "DENY"), set(header::X_CONTENT_TYPE_OPTIONS, "nosniff")),
            ),
        );
        Self { layers }
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = <Headers as Layer<S>>::Service;
    fn layer(&self, inner: S) -> Self::Service {
        self.layers.layer(inner)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{HeaderMap, HeaderValue, Request, Response, header};
    use tower::{Layer, ServiceExt};

    use super::HstsConfig;

    fn applied(headers: HeaderMap, hsts: bool) -> HeaderMap {
        let cfg = HstsConfig { enabled: hsts, ..HstsConfig::default() };
        let handler = tower::service_fn(move |_: Request<()>| {
            let mut resp = Response::new(());
            *resp.headers_mut() = headers.clone();
            async move { Ok::<_, Infallible>(resp) }
        });
        let svc = super::SecurityHeadersLayer::new(&cfg).layer(handler);
        let resp = futures_util::FutureExt::now_or_never(svc.oneshot(Request::new(()))).unwrap().unwrap();
        resp.headers().clone()
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
