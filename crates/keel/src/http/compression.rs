//! gzip response compression (`http.compression`), built on `tower_http::compression`.
//!
//! A response is compressed when the request offers gzip in `Accept-Encoding` and the response
//! is worth it (tower-http's default predicate: 32 bytes or more, not already compressed, not
//! an image, event stream or gRPC). Such responses get `Content-Encoding: gzip` and
//! `Vary: Accept-Encoding`.
//!
//! A request that offers no coding at all (no `Accept-Encoding`: most API clients, probes and
//! load generators) goes straight to the inner service, as does every request when
//! `http.compression` is `false`. tower-http would send the same body, but only after wrapping
//! it in its pass-through `CompressionBody`, which axum then boxes once more: an allocation and
//! an indirection on every body read of a request that can never be compressed. tower-http
//! would also add `Vary: Accept-Encoding` to such an answer when it would have compressed it
//! for another client; it is left out here. That is safe for caches: the uncompressed body
//! suits every client, and every compressed answer does carry the `Vary`, so a cache never
//! hands gzip to a client that did not ask for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Compresses responses; see the module docs.
///
/// ```
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "a body long enough to be worth compressing, more or less" }))
///     .layer(keel::http::compression::CompressionLayer::new(true));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CompressionLayer {
    enabled: bool,
}

impl CompressionLayer {
    /// gzip when `enabled` and the client accepts it; never when not `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

impl<S> Layer<S> for CompressionLayer {
    type Service = Compression<S>;
    fn layer(&self, inner: S) -> Compression<S> {
        Compression {
            inner: tower_http::compression::CompressionLayer::new().gzip(self.enabled).layer(inner),
            enabled: self.enabled,
        }
    }
}

/// The service made by [`CompressionLayer`].
#[derive(Clone)]
pub struct Compression<S> {
    inner: tower_http::compression::Compression<S>,
    enabled: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Compression<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compression").field("inner", self.inner.get_ref()).field("enabled", &self.enabled).finish()
    }
}

impl<S, ReqB> Service<Request<ReqB>> for Compression<S>
where
    S: Service<Request<ReqB>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // tower-http's `poll_ready` is the inner service's.
        self.inner.get_mut().poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.enabled && req.headers().contains_key(header::ACCEPT_ENCODING) {
            ResponseFuture { kind: Kind::Negotiated { fut: Box::pin(self.inner.call(req)) } }
        } else {
            ResponseFuture { kind: Kind::Plain { fut: self.inner.get_mut().call(req) } }
        }
    }
}

pin_project! {
    /// Response future of [`Compression`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Plain { #[pin] fut: F },
        // Boxed: tower-http's future carries its predicate and negotiated coding (about 170
        // bytes), which every request would otherwise move through the layers above.
        Negotiated { fut: Pin<Box<tower_http::compression::ResponseFuture<F, tower_http::compression::DefaultPredicate>>> },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Plain { fut } => fut.poll(cx),
            KindProj::Negotiated { fut } => fut.as_mut().poll(cx).map_ok(|r| r.map(Body::new)),
        }
    }
}
