//! CORS from configuration, built on `tower_http::cors`.
//!
//! Origins are compared **exactly** on scheme, host and port after normalisation (lower case,
//! default ports dropped), never by suffix: an allowlist of `https://example.com` does not admit
//! `https://evil-example.com` or `https://example.com.evil.io`. Credentials are only ever sent
//! with an explicit origin list. Preflights are answered by this layer and cached by browsers
//! for `cors.max_age`.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::cors::AllowOrigin;

use crate::config::CorsConfig;

/// Why a CORS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid CORS configuration: {0}")]
pub struct CorsError(String);

/// Normalises an origin to `scheme://host[:port]`, or explains why it is not one.
///
/// ```
/// use keel::http::cors::normalize_origin;
/// assert_eq!(normalize_origin("HTTPS://App.Example.com:443").unwrap(), "https://app.example.com");
/// assert_eq!(normalize_origin("http://localhost:5173").unwrap(), "http://localhost:5173");
/// assert!(normalize_origin("https://example.com/path").is_err());
/// assert!(normalize_origin("example.com").is_err());
/// ```
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let bad = |why: &str| format!("`{origin}` is not an origin ({why}); write scheme://host[:port]");
    let uri = http::Uri::from_str(origin.trim()).map_err(|_| bad("does not parse"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase).ok_or_else(|| bad("no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("has user info"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path or query"));
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() || host.contains('*') {
        return Err(bad("no host, or a wildcard host"));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Builds the layer, or says why the configuration is unusable (instead of panicking as
/// `tower_http` would on `*` with credentials).
pub fn layer(cfg: &CorsConfig) -> Result<CorsLayer, CorsError> {
    Ok(CorsLayer { cors: Arc::new(tower_layer(cfg)?) })
}

fn tower_layer(cfg: &CorsConfig) -> Result<tower_http::cors::CorsLayer, CorsError> {
    let wildcard = cfg.allowed_origins.iter().any(|o| o == "*");
    if wildcard && cfg.allow_credentials {
        return Err(CorsError("`*` cannot be combined with credentials".into()));
    }
    let origin = if wildcard {
        AllowOrigin::any()
    } else {
        let list = cfg
            .allowed_origins
            .iter()
            .map(|o| {
                let n = normalize_origin(o).map_err(CorsError)?;
                HeaderValue::from_str(&n).map_err(|e| CorsError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    let methods = cfg
        .allowed_methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| CorsError(format!("`{m}` is not a method"))))
        .collect::<Result<Vec<_>, _>>()?;
    let names = |list: &[String]| {
        list.iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|_| CorsError(format!("`{h}` is not a header name"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(tower_http::cors::CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(names(&cfg.allowed_headers)?)
        .expose_headers(names(&cfg.exposed_headers)?)
        .allow_credentials(cfg.allow_credentials)
        .max_age(cfg.max_age))
}

/// `Vary` of an answer to a request without `Origin`, so a cache never hands it to a browser
/// that needs CORS headers. Only `Origin` matters here: `tower_http::cors` adds the preflight
/// headers (`access-control-request-method`, `-headers`) to the answers it makes, and a request
/// without `Origin` is never a preflight. Every response carries this, so it is kept short.
pub(crate) const VARY: HeaderValue = HeaderValue::from_static("origin");

/// CORS as `tower_http::cors` does it, with a fast path: a request without an `Origin` header
/// (server to server, same-origin navigation) only gets `Vary`, and does not pay for cloning and
/// evaluating the CORS rules. Made by [`layer`].
#[derive(Debug, Clone)]
pub struct CorsLayer {
    cors: Arc<tower_http::cors::CorsLayer>,
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;
    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner, cors: self.cors.clone() }
    }
}

/// The service made by [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    cors: Arc<tower_http::cors::CorsLayer>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Cors<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if !req.headers().contains_key(header::ORIGIN) {
            return ResponseFuture { kind: Kind::Plain { fut: self.inner.call(req) } };
        }
        // The ready inner service goes to tower_http's CORS; a clone stays for next time.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let mut cors = self.cors.layer(ready);
        ResponseFuture { kind: Kind::Cors { fut: Box::pin(cors.call(req)) } }
    }
}

pin_project! {
    /// Response future of [`Cors`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Plain { #[pin] fut: F },
        // Boxed: tower-http's future carries the CORS headers it will add (about 180 bytes),
        // and every request, CORS or not, would move them through the layers above.
        Cors { fut: Pin<Box<tower_http::cors::ResponseFuture<F>>> },
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Default,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Cors { fut } => fut.as_mut().poll(cx),
            KindProj::Plain { fut } => {
                let mut out = std::task::ready!(fut.poll(cx));
                if let Ok(resp) = &mut out {
                    resp.headers_mut().append(header::VARY, VARY);
                }
                Poll::Ready(out)
            }
        }
    }
}
