//! Turns a panic anywhere below it into a 500 problem, logging the panic instead of sending it.
//!
//! It is the outermost layer, so it is outside the request-id layer; that layer records the id
//! in a [`PanicSlot`] this layer put in the request, so even a panic's 500 carries the request id.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Request};
use tower::{Layer, Service};

use super::problem::Problem;
use super::request_id::{HEADER, RequestId};

/// Where the request-id layer leaves the id for a panic response.
#[derive(Clone, Default, Debug)]
pub(crate) struct PanicSlot(Arc<OnceLock<HeaderValue>>);

impl PanicSlot {
    pub(crate) fn set(&self, id: &RequestId) {
        let _ = self.0.set(id.0.clone());
    }
}

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

type BoxFut<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for CatchPanic<S>
where
    S: Service<Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFut<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let slot = PanicSlot::default();
        req.extensions_mut().insert(slot.clone());
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => Box::pin(AssertUnwindSafe(fut).catch_unwind().map(move |r| match r {
                Ok(res) => res.map(|resp| resp.map(Body::new)),
                Err(payload) => Ok(panic_response(&slot, payload)),
            })),
            Err(payload) => {
                let resp = panic_response(&slot, payload);
                Box::pin(std::future::ready(Ok(resp)))
            }
        }
    }
}

fn panic_response(slot: &PanicSlot, payload: Box<dyn Any + Send>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    let id = slot.0.get().and_then(|v| v.to_str().ok()).map(str::to_owned);
    tracing::error!(panic = %message, request_id = id.as_deref().unwrap_or(""), "request handler panicked");
    let mut resp = Problem::internal().into_response_with_id(id.as_deref());
    if let Some(v) = slot.0.get() {
        resp.headers_mut().insert(HEADER.clone(), v.clone());
    }
    resp
}
