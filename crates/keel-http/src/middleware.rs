//! What the middleware modules share, here and in keel-grpc's.

use bytes::Bytes;

/// A response body the layers that answer for themselves (shedding, timeouts, gRPC deadlines)
/// or watch the stream (gRPC metrics and traces) can box into `axum::body::Body`: bytes, with
/// errors that convert to a `BoxError`, as axum's, tonic's and hyper's bodies are.
pub trait ResponseBody: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static {}

/// `impl Layer<S> for $layer` whose service is `$service { inner, layer: self.clone() }`.
#[doc(hidden)]
#[macro_export]
macro_rules! layer_with_config {
    ($layer:ident => $service:ident) => {
        impl<S> $crate::__private::tower::Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $service { inner, layer: self.clone() }
            }
        }
    };
}
