//! Turns a panic anywhere below it into a 500 problem, logging the panic instead of sending it.
//!
//! Its 500 carries the request id that the request-id layer (outside it in Keel's stack) gave
//! the request; used without that layer, it makes one for the problem.

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
use super::request_id::{HEADER, RequestId};

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

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let id = RequestId::from_extensions(req.extensions()).unwrap_or_else(RequestId::generate);
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => ResponseFuture { kind: Kind::Running { inner: AssertUnwindSafe(fut).catch_unwind() }, id },
            Err(payload) => {
                let resp = panic_response(&id, payload);
                ResponseFuture { kind: Kind::Answered { resp: Some(resp) }, id }
            }
        }
    }
}

pin_project! {
    /// Response future of [`CatchPanic`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        id: RequestId,
    }
}

pin_project! {
    // An enum, not both fields: every layer above moves this future, and a response is
    // 128 bytes.
    #[project = KindProj]
    enum Kind<F> {
        Running { #[pin] inner: CatchUnwind<AssertUnwindSafe<F>> },
        // The call itself panicked; `None` once the answer has been returned.
        Answered { resp: Option<Response> },
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
        let inner = match this.kind.project() {
            KindProj::Running { inner } => inner,
            KindProj::Answered { resp } => {
                let resp =
                    resp.take().unwrap_or_else(|| Problem::internal().into_response_with_id(Some(this.id.as_str())));
                return Poll::Ready(Ok(resp));
            }
        };
        match std::task::ready!(inner.poll(cx)) {
            Ok(res) => Poll::Ready(res.map(|r| r.map(Body::new))),
            Err(payload) => Poll::Ready(Ok(panic_response(this.id, payload))),
        }
    }
}

/// The 500 answer to a panic with `payload`; the panic message is logged, never sent.
fn panic_response(id: &RequestId, payload: Box<dyn Any + Send>) -> Response {
    // Logged (and the payload dropped) under a guard of its own: a subscriber that panics on
    // this line as well must not turn the 500 into a dropped connection.
    let logged = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(panic = %message, request_id = id.as_str(), "request handler panicked");
    }));
    if let Err(second) = logged {
        // Not dropped: its `Drop` could panic too, and nothing would catch that one.
        std::mem::forget(second);
    }
    let mut resp = Problem::internal().into_response_with_id(Some(id.as_str()));
    resp.headers_mut().insert(HEADER.clone(), id.0.clone());
    resp
}
