//! Forwarded addresses only from a proxy that proves itself.
//!
//! `http.trusted_proxies` trusts `X-Forwarded-For` / `Forwarded` by the peer's address. Where
//! others share that address (loopback on a machine running other processes, a node's pod
//! network), the address proves nothing; `http.proxy_secret` adds a shared secret the proxy
//! sends as `Keel-Proxy-Secret` (a Keel client sends it for `upstreams.<name>.proxy_secret`). On
//! a request without the right secret this layer removes the forwarded headers, so everything
//! after it (the access log's `client.address`, rate-limit keys, a handler reading
//! [`crate::client_ip::client_ip`]) sees the socket peer as the client. The secret header itself
//! is always removed: no handler or log line sees it. Without a configured secret the layer
//! changes nothing (the address alone decides, as `http.trusted_proxies` says).
//!
//! ```
//! use axum::{Router, routing::get};
//! use keel_config::Secret;
//! use keel_http::proxy_secret::ProxySecretLayer;
//!
//! let secret = Secret::new("a-long-random-value-shared-with-the-proxy");
//! let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(ProxySecretLayer::new(Some(&secret)));
//! ```

use std::sync::Arc;

use http::{HeaderName, Request};
use keel_config::Secret;
use subtle::ConstantTimeEq as _;

use crate::middleware::Middleware;

/// The header a proxy proves itself with.
pub static HEADER: HeaderName = HeaderName::from_static("keel-proxy-secret");

/// The headers that tell the client's address ([`crate::client_ip`] reads them).
static FORWARDED: [HeaderName; 2] = [HeaderName::from_static("x-forwarded-for"), http::header::FORWARDED];

/// Removes forwarded headers from requests without the proxy secret (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ProxySecretLayer {
    secret: Option<Arc<Secret>>,
}

impl ProxySecretLayer {
    /// A layer requiring `secret` (`http.proxy_secret`); `None` changes nothing.
    pub fn new(secret: Option<&Secret>) -> Self {
        Self { secret: secret.cloned().map(Arc::new) }
    }
}

crate::layer_with_config!(ProxySecretLayer => ProxySecret);

impl<B, F> Middleware<B, F> for ProxySecretLayer {
    type Future = F;

    fn call(&self, mut req: Request<B>, inner: impl FnOnce(Request<B>) -> F) -> F {
        if let Some(secret) = &self.secret {
            let headers = req.headers_mut();
            let proven = headers.get_all(&HEADER).iter().count() == 1
                && headers.get(&HEADER).is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret.expose().as_bytes())));
            headers.remove(&HEADER);
            if !proven {
                for name in &FORWARDED {
                    headers.remove(name);
                }
            }
        }
        inner(req)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::HeaderMap;
    use tower::Layer as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn seen(secret: Option<&str>, headers: &[(&str, &str)]) -> HeaderMap {
        let secret = secret.map(Secret::new);
        let svc = ProxySecretLayer::new(secret.as_ref())
            .layer(tower::service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req.headers().clone()) }));
        let mut req = Request::new(());
        for (k, v) in headers {
            req.headers_mut().append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn forwarded_headers_pass_only_with_the_secret() {
        let fwd = [("x-forwarded-for", "192.0.2.7"), ("forwarded", "for=192.0.2.7")];
        let with = |s: &'static str| [fwd[0], fwd[1], ("keel-proxy-secret", s)];
        let h = seen(Some("s3cret-s3cret"), &with("s3cret-s3cret")).await;
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["forwarded"], "for=192.0.2.7");
        assert!(!h.contains_key("keel-proxy-secret"), "handlers never see the secret");
        for wrong in ["s3cret-s3cre", "s3cret-s3cret-", "other"] {
            let h = seen(Some("s3cret-s3cret"), &with(wrong)).await;
            assert!(!h.contains_key("x-forwarded-for") && !h.contains_key("forwarded"), "{wrong}: {h:?}");
            assert!(!h.contains_key("keel-proxy-secret"));
        }
        let h = seen(Some("s3cret-s3cret"), &fwd).await;
        assert!(!h.contains_key("x-forwarded-for"), "no secret: {h:?}");
        // Sent twice (one of them the right one): not proven.
        let twice = [fwd[0], ("keel-proxy-secret", "s3cret-s3cret"), ("keel-proxy-secret", "x")];
        assert!(!seen(Some("s3cret-s3cret"), &twice).await.contains_key("x-forwarded-for"));
        // No secret configured: the addresses alone decide.
        assert_eq!(seen(None, &fwd).await["x-forwarded-for"], "192.0.2.7");
    }
}
