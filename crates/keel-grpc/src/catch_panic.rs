//! A panic in a handler becomes `INTERNAL` with no detail; the panic is logged with the
//! request id, never sent. `tower_http::catch_panic` with [`PanicStatus`] as its answer; a
//! panic while a response stream makes its next message is caught by [`Cut`](crate::body::Cut).

use std::any::Any;
use std::panic::AssertUnwindSafe;

use axum::body::Body;
use tower_http::catch_panic::ResponseForPanic;

use crate::status::{Status, response};

/// Catches panics below it; see the module docs.
pub type CatchPanicLayer = tower_http::catch_panic::CatchPanicLayer<PanicStatus>;

/// The layer.
pub fn layer() -> CatchPanicLayer {
    tower_http::catch_panic::CatchPanicLayer::custom(PanicStatus)
}

/// The answer to a panic: `INTERNAL` "internal error", with the request's id.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicStatus;

impl ResponseForPanic for PanicStatus {
    type ResponseBody = Body;

    fn response_for_panic(&mut self, payload: Box<dyn Any + Send + 'static>) -> http::Response<Body> {
        log_panic(payload.as_ref());
        // Dropped under a guard: a payload whose `Drop` panics must not take the answer with it.
        if let Err(second) = std::panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(second);
        }
        let id = keel_http::context::current().and_then(|c| c.request_id);
        response(Status::internal("internal error"), id.as_ref())
    }
}

/// Logs a panic's message with the current request's id.
pub(crate) fn log_panic(payload: &(dyn Any + Send)) {
    let logged = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        let id = keel_http::context::current().and_then(|c| c.request_id);
        tracing::error!(panic = %message, request_id = id.as_ref().map(|i| i.as_str()), "gRPC handler panicked");
    }));
    if let Err(second) = logged {
        std::mem::forget(second);
    }
}
