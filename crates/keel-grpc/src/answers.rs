//! HTTP middleware on gRPC calls: an answer it gives itself becomes a gRPC status.
//!
//! Keel's HTTP layers (the rate limiter of `Setup::rate_limit`, an application's own) answer
//! refusals with RFC 9457 problems. Put on gRPC calls (`Setup::grpc_layer`), such an answer
//! would reach a gRPC client as a bare HTTP status, which gRPC maps coarsely (429 becomes
//! `UNAVAILABLE`, and the detail is lost). [`HttpAnswersLayer`] sits above them: an answer that
//! is not gRPC (no `application/grpc` content type) becomes the trailers-only status
//! [`crate::status::status`] gives it: a 429 is `RESOURCE_EXHAUSTED` with the problem's detail
//! and its `Retry-After` as `grpc-retry-pushback-ms`, a 503 `UNAVAILABLE`, and so on, with the
//! request's id. gRPC answers pass unchanged.

use std::future::Future;
use std::pin::Pin;

use axum::response::Response;
use http::Request;
use keel_http::middleware::Middleware;
use keel_http::request_id::RequestId;

use crate::status::{response, status};

/// Turns non-gRPC answers from below into gRPC statuses; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpAnswersLayer;

keel_http::layer_with_config!(HttpAnswersLayer => HttpAnswers);

/// Whether `resp` is a gRPC answer (its content type `application/grpc`, `+proto` and the like).
fn is_grpc(resp: &Response) -> bool {
    resp.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<B, F, E> Middleware<B, F> for HttpAnswersLayer
where
    F: Future<Output = Result<Response, E>> + Send + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

    fn call(&self, req: Request<B>, inner: impl FnOnce(Request<B>) -> F) -> Self::Future {
        let id = RequestId::from_extensions(req.extensions());
        let call = inner(req);
        Box::pin(async move {
            let resp = call.await?;
            if is_grpc(&resp) {
                return Ok(resp);
            }
            Ok(response(status(resp), id.as_ref()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::response::IntoResponse;
    use keel_http::Problem;
    use tower::Layer as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::status::{Code, RETRY_PUSHBACK, code_in};

    #[tokio::test]
    async fn problems_become_statuses_and_grpc_answers_pass() {
        let refuse = tower::service_fn(|_req: Request<()>| async {
            let p = Problem::new(http::StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                .detail("the api rate limit is reached")
                .retry_after(7);
            Ok::<_, Infallible>(p.into_response())
        });
        let resp = HttpAnswersLayer.layer(refuse).oneshot(Request::new(())).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK, "trailers-only, as gRPC answers");
        assert_eq!(code_in(resp.headers()), Some(Code::ResourceExhausted));
        assert_eq!(resp.headers()["grpc-message"], "the%20api%20rate%20limit%20is%20reached");
        assert_eq!(resp.headers()[RETRY_PUSHBACK], "7000");

        let grpc = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(response(tonic::Status::not_found("x"), None))
        });
        let resp = HttpAnswersLayer.layer(grpc).oneshot(Request::new(())).await.unwrap();
        assert_eq!(code_in(resp.headers()), Some(Code::NotFound));
    }
}
