//! gzip response compression (`http.compression`): `tower_http::compression`.
//!
//! A response is compressed when the request offers gzip in `Accept-Encoding` and the response
//! is worth it (tower-http's default predicate: 32 bytes or more, not already compressed, not
//! an image, event stream or gRPC). Such responses get `Content-Encoding: gzip` and
//! `Vary: Accept-Encoding`. With `http.compression: false` nothing is compressed. The body is
//! boxed back into an `axum::body::Body`, so the layers above see one body type.

use axum::body::Body;
use http::Response;
use tower::Layer;
use tower::layer::util::Stack;
use tower::util::MapResponseLayer;
use tower_http::compression::CompressionBody;

type ToBody = fn(Response<CompressionBody<Body>>) -> Response<Body>;
type Layers = Stack<tower_http::compression::CompressionLayer, MapResponseLayer<ToBody>>;

/// Compresses responses; see the module docs.
///
/// ```
/// use axum::{Router, routing::get};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "a body long enough to be worth compressing, more or less" }))
///     .layer(keel_http::compression::CompressionLayer::new(true));
/// ```
#[derive(Clone)]
pub struct CompressionLayer {
    layers: Layers,
    enabled: bool,
}

impl std::fmt::Debug for CompressionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressionLayer").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

impl CompressionLayer {
    /// gzip when `enabled` and the client accepts it; never when not `enabled`.
    pub fn new(enabled: bool) -> Self {
        let to_body: ToBody = |r| r.map(Body::new);
        Self {
            layers: Stack::new(
                tower_http::compression::CompressionLayer::new().gzip(enabled).no_br().no_deflate().no_zstd(),
                MapResponseLayer::new(to_body),
            ),
            enabled,
        }
    }
}

impl<S> Layer<S> for CompressionLayer {
    type Service = <Layers as Layer<S>>::Service;
    fn layer(&self, inner: S) -> Self::Service {
        self.layers.layer(inner)
    }
}
