//! What the middleware modules share, here and in keel-grpc's.
//!
//! Each Keel middleware is a layer holding its configuration (`XLayer`), the per-call part
//! that layer does ([`Middleware`]: look at the request, call the inner service or answer
//! itself, wrap the inner future in the module's `ResponseFuture`), and [`Layered`], the one
//! `tower::Service` they all run as: readiness is the inner service's, and each call is the
//! layer's [`Middleware::call`].
//!
//! ```
//! use http::Request;
//! use keel_http::middleware::{Layered, Middleware};
//!
//! /// Adds `x-seen: 1` to every request.
//! #[derive(Clone)]
//! struct MarkLayer;
//!
//! impl<B, F> Middleware<B, F> for MarkLayer {
//!     type Future = F;
//!     fn call(&self, mut req: Request<B>, inner: impl FnOnce(Request<B>) -> F) -> F {
//!         req.headers_mut().insert("x-seen", http::HeaderValue::from_static("1"));
//!         inner(req)
//!     }
//! }
//!
//! let svc = tower::service_fn(|req: Request<()>| {
//!     std::future::ready(Ok::<_, std::convert::Infallible>(req.headers().contains_key("x-seen")))
//! });
//! let mut marked = Layered::new(svc, MarkLayer);
//! assert_eq!(tower::Service::call(&mut marked, Request::new(())).into_inner(), Ok(true));
//! ```

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use tower::Service;

/// A response body the layers that answer for themselves (shedding, timeouts, gRPC deadlines)
/// or watch the stream (gRPC metrics and traces) can box into `axum::body::Body`: bytes, with
/// errors that convert to a `BoxError`, as axum's, tonic's and hyper's bodies are.
pub trait ResponseBody: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static {}

/// The future of the service a middleware wraps: an HTTP response with body `Self::Body`, or the
/// service's error. Names the two so a `ResponseFuture` can be written over one parameter.
pub trait InnerFuture: Future<Output = Result<http::Response<Self::Body>, Self::Error>> {
    /// The response's body.
    type Body;
    /// The inner service's error.
    type Error;
}

impl<F, B, E> InnerFuture for F
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Body = B;
    type Error = E;
}

/// What a middleware does with one call, given the request and the inner service's `call`
/// (which it may skip, answering itself). `F` is the inner service's future.
pub trait Middleware<ReqB, F> {
    /// The call's future, usually the module's `ResponseFuture<F>`.
    type Future;

    /// Handles `req`, calling `inner` at most once.
    fn call(&self, req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future;
}

/// The service a Keel middleware layer makes: `inner`, with each call through `layer`'s
/// [`Middleware::call`]. Ready when `inner` is.
#[derive(Debug, Clone)]
pub struct Layered<S, L> {
    inner: S,
    layer: L,
}

impl<S, L> Layered<S, L> {
    /// `inner` behind `layer`.
    pub fn new(inner: S, layer: L) -> Self {
        Self { inner, layer }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The middleware's configuration.
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

impl<S, L, ReqB, R> Service<Request<ReqB>> for Layered<S, L>
where
    S: Service<Request<ReqB>>,
    L: Middleware<ReqB, S::Future, Future: Future<Output = Result<R, S::Error>>>,
{
    type Response = R;
    type Error = S::Error;
    type Future = L::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let inner = &mut self.inner;
        self.layer.call(req, |req| inner.call(req))
    }
}

/// `pub type $service<S> = Layered<S, $layer>`, and `impl Layer<S> for $layer` making it.
#[doc(hidden)]
#[macro_export]
macro_rules! layer_with_config {
    ($layer:ident => $service:ident) => {
        #[doc = concat!("The service made by [`", stringify!($layer), "`].")]
        pub type $service<S> = $crate::middleware::Layered<S, $layer>;

        impl<S> $crate::__private::tower::Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $crate::middleware::Layered::new(inner, self.clone())
            }
        }
    };
}
