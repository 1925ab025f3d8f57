//! Turns a panic anywhere below it into a 500 problem, logging the panic instead of sending it.
//!
//! It is the outermost layer, outside the request-id layer, yet its 500 carries the request id:
//! it settles the id first (the same way the request-id layer does, which then finds it).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::problem::Problem;
use super::request_id::{self, HEADER, RequestId};

/// Catches panics; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CatchPanic<S>
where
    S: Service<Request<ReqB>, Response = http::Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = request_id::ensure(&mut req);
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => ResponseFuture { inner: Some(AssertUnwindSafe(fut).catch_unwind()), early: None, id },
            Err(payload) => {
                let resp = panic_response(&id, payload);
                ResponseFuture { inner: None, early: Some(resp), id }
            }
        }
    }
}

pin_project! {
    /// Response future of [`CatchPanic`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<CatchUnwind<AssertUnwindSafe<F>>>,
        early: Option<Response>,
        id: RequestId,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(resp) = this.early.take() {
            return Poll::Ready(Ok(resp));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(Problem::internal().into_response_with_id(Some(this.id.as_str()))));
        };
        match std::task::ready!(inner.poll(cx)) {
            Ok(res) => Poll::Ready(res.map(|r| r.map(Body::new))),
            Err(payload) => Poll::Ready(Ok(panic_response(this.id, payload))),
        }
    }
}

fn panic_response(id: &RequestId, payload: Box<dyn Any + Send>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    tracing::error!(panic = %message, request_id = id.as_str(), "request handler panicked");
    let mut resp = Problem::internal().into_response_with_id(Some(id.as_str()));
    resp.headers_mut().insert(HEADER.clone(), id.0.clone());
    resp
}
