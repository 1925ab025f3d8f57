//! Turns a panic anywhere below it into a 500 problem, logging the panic instead of sending it:
//! `tower_http::catch_panic` with [`PanicProblem`] as its answer.
//!
//! The problem carries the id of the request being handled, read from the
//! [request context](super::context) that [`RequestContextLayer`](super::context::RequestContextLayer)
//! (in Keel's stack, outside this layer) sets; without one the problem has no id.
//!
//! ```
//! use axum::{Router, routing::get};
//! use keel_http::{catch_panic::CatchPanicLayer, context::RequestContextLayer, request_id::RequestIdLayer};
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(CatchPanicLayer)
//!     .layer(RequestContextLayer)
//!     .layer(RequestIdLayer);
//! ```

use std::any::Any;
use std::panic::AssertUnwindSafe;

use axum::BoxError;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use tower::Layer;
use tower::layer::util::Stack;
use tower::util::MapResponseLayer;
use tower_http::body::UnsyncBoxBody;
use tower_http::catch_panic::ResponseForPanic;

use super::context;
use super::problem::Problem;
use super::request_id::HEADER;

type ToBody = fn(http::Response<UnsyncBoxBody<Bytes, BoxError>>) -> Response;
type Layers = Stack<tower_http::catch_panic::CatchPanicLayer<PanicProblem>, MapResponseLayer<ToBody>>;

/// Catches panics; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = <Layers as Layer<S>>::Service;
    fn layer(&self, inner: S) -> Self::Service {
        let to_body: ToBody = |r| r.map(Body::new);
        let layers: Layers =
            Stack::new(tower_http::catch_panic::CatchPanicLayer::custom(PanicProblem), MapResponseLayer::new(to_body));
        layers.layer(inner)
    }
}

/// The answer to a panic: a 500 problem with the current request's id; the panic message is
/// logged (with the id), never sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicProblem;

impl ResponseForPanic for PanicProblem {
    type ResponseBody = Body;

    fn response_for_panic(&mut self, payload: Box<dyn Any + Send + 'static>) -> Response {
        let id = context::current().and_then(|c| c.request_id);
        let id = id.as_ref().map(|i| i.as_str());
        // Logged (and the payload dropped) under a guard of its own: a subscriber that panics
        // on this line as well must not turn the 500 into a dropped connection.
        let logged = std::panic::catch_unwind(AssertUnwindSafe(move || {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            tracing::error!(panic = %message, request_id = id, "request handler panicked");
        }));
        if let Err(second) = logged {
            // Not dropped: its `Drop` could panic too, and nothing would catch that one.
            std::mem::forget(second);
        }
        let mut resp = Problem::internal().into_response_with_id(id);
        if let Some(v) = id.and_then(|i| http::HeaderValue::from_str(i).ok()) {
            resp.headers_mut().insert(HEADER.clone(), v);
        }
        resp
    }
}
