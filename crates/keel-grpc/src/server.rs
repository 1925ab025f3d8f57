//! The gRPC side of a service: its tonic services behind Keel's gRPC stack, with
//! `grpc.health.v1` following readiness and, when switched on, server reflection.
//!
//! Layers, outermost first:
//!
//! 1. request id (`x-request-id` metadata: accepted when well formed, else made; echoed);
//! 2. the request context (its id, then its deadline, for Keel's clients below);
//! 3. [`trace`](crate::trace) — the `grpc` span continuing `traceparent`, the access line;
//! 4. [`metrics`](crate::metrics) — `grpc_server_*`;
//! 5. [`catch_panic`](crate::catch_panic) — a panic is `INTERNAL`, never its message;
//! 6. [`shed`](crate::shed) — past `grpc.max_in_flight`, `RESOURCE_EXHAUSTED`;
//! 7. [`deadline`](crate::deadline) — `grpc-timeout` and `grpc.request_timeout`, and the end
//!    of open streams at shutdown;
//! 8. [`limit`](crate::limit) — `grpc.max_message_size` per request message;
//! 9. the layers the service added ([`GrpcServices::layer`]: `Setup::grpc_layer`, e.g. its
//!    rate limiter), under [`answers`](crate::answers), which turns their HTTP refusals into
//!    gRPC statuses.
//!
//! CORS, compression and HTTP problem documents do not apply: gRPC clients are not browsers,
//! tonic negotiates its own compression, and failures are statuses.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Layer;

use crate::config::GrpcConfig;
use crate::method::Known;
use crate::shed::ShedLayer;
use keel_health::{Health, Kind};
use keel_telemetry::Metrics;

/// Why the gRPC side could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// A metric could not be registered (a name used twice).
    #[error("cannot register gRPC metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A file descriptor set given for reflection does not decode or is incomplete.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// A layer the service put on its gRPC calls, as a function of the router.
type Wrap = std::sync::Arc<dyn Fn(Router) -> Router + Send + Sync>;

/// The tonic services a service serves, what reflection describes them with, and the layers
/// the service puts on them.
#[derive(Default, Clone)]
pub struct GrpcServices {
    routes: Option<tonic::service::Routes>,
    names: Vec<String>,
    descriptors: Vec<&'static [u8]>,
    layers: Vec<Wrap>,
}

impl std::fmt::Debug for GrpcServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServices")
            .field("names", &self.names)
            .field("descriptors", &self.descriptors.len())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// A tonic service [`GrpcServices::add`] takes (a generated `…Server::new(handler)`): what
/// `tonic::service::Routes::add_service` requires, named once.
pub trait GrpcService:
    tower::Service<
        Request<tonic::body::Body>,
        Error = Infallible,
        Response: axum::response::IntoResponse,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            Request<tonic::body::Body>,
            Error = Infallible,
            Response: axum::response::IntoResponse,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

impl GrpcServices {
    /// Adds a tonic service (a generated `…Server::new(handler)`).
    pub fn add<S: GrpcService>(&mut self, svc: S) -> &mut Self {
        self.names.push(S::NAME.to_owned());
        self.routes = Some(match self.routes.take() {
            Some(r) => r.add_service(svc),
            None => tonic::service::Routes::new(svc),
        });
        self
    }

    /// Adds an encoded `FileDescriptorSet` (from `tonic-prost-build`'s
    /// `file_descriptor_set_path`, or `protox`) for reflection to describe.
    pub fn descriptors(&mut self, encoded: &'static [u8]) -> &mut Self {
        self.descriptors.push(encoded);
        self
    }

    /// Puts `layer` (a tower layer for axum routers: Keel's rate limiter, an HTTP middleware)
    /// on every gRPC call, below Keel's gRPC stack; an HTTP answer it gives itself (a 429
    /// problem) reaches the client as the matching gRPC status (see [`crate::answers`]). Layers
    /// added later run later (inside earlier ones).
    pub fn layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        <L::Service as tower::Service<Request<Body>>>::Response: axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
    {
        self.layers.push(std::sync::Arc::new(move |r: Router| r.layer(layer.clone())));
        self
    }

    /// Whether no service was added.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The added services' names (`symbols.v1.Symbols`).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The health service's name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The gRPC router, built; serve it on a listener of its own or beside the HTTP routes with
/// [`Dispatch`].
#[derive(Debug)]
pub struct GrpcServer {
    /// The services with the stack.
    pub router: Router,
    /// Keeps `grpc.health.v1` in step with readiness: run it ([`HealthSync::run`]).
    pub health: HealthSync,
    shed: ShedLayer,
}

impl GrpcServer {
    /// Builds the router for service `name`: `services`, the health service, reflection when
    /// `cfg.reflection`, all behind the stack (see the module docs). Open response streams end
    /// when `drain` is cancelled.
    pub fn build(
        name: &str,
        cfg: &GrpcConfig,
        access_log: bool,
        metrics: &Metrics,
        health: &Health,
        services: GrpcServices,
        drain: CancellationToken,
    ) -> Result<Self, GrpcError> {
        let GrpcServices { routes, mut names, descriptors, layers } = services;
        let (reporter, health_server) = tonic_health::server::health_reporter();
        let sync = HealthSync { reporter, names: names.clone(), health: health.clone(), serving: None };
        let mut routes = routes.unwrap_or_default().add_service(health_server);
        names.push(HEALTH_SERVICE.to_owned());
        if cfg.reflection {
            let reflection = || {
                descriptors.iter().fold(
                    tonic_reflection::server::Builder::configure()
                        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                    |b, d| b.register_encoded_file_descriptor_set(d),
                )
            };
            let v1 = reflection().build_v1().map_err(|e| GrpcError::Reflection(e.to_string()))?;
            let v1alpha = reflection().build_v1alpha().map_err(|e| GrpcError::Reflection(e.to_string()))?;
            routes = routes.add_service(v1).add_service(v1alpha);
            names.push("grpc.reflection.v1.ServerReflection".to_owned());
            names.push("grpc.reflection.v1alpha.ServerReflection".to_owned());
        }
        let known = Known::new(names);
        let shed = ShedLayer::new(cfg.max_in_flight, metrics)?;
        let stack = tower::ServiceBuilder::new()
            .layer(keel_http::request_id::RequestIdLayer)
            .layer(keel_http::context::RequestContextLayer)
            .layer(crate::trace::GrpcTraceLayer::new(name, access_log, known.clone()))
            .layer(crate::metrics::GrpcMetricsLayer::new(metrics, known)?)
            .layer(crate::catch_panic::layer())
            .layer(shed.clone())
            .layer(crate::deadline::DeadlineLayer::new(cfg.request_timeout).drain(drain))
            .layer(crate::limit::MessageLimitLayer::new(cfg.max_message_size));
        let mut router = routes.prepare().into_axum_router();
        if !layers.is_empty() {
            // Applied innermost first, so the first added runs first.
            for wrap in layers.iter().rev() {
                router = wrap(router);
            }
            router = router.layer(crate::answers::HttpAnswersLayer);
        }
        let router = router.layer(stack);
        Ok(Self { router, health: sync, shed })
    }

    /// gRPC calls whose handler is running now.
    pub fn in_flight(&self) -> usize {
        self.shed.in_flight()
    }
}

/// How often readiness is copied to `grpc.health.v1` besides on each change (a result going
/// stale is not announced).
pub const HEALTH_SYNC_EVERY: Duration = Duration::from_millis(500);

/// Copies readiness to `grpc.health.v1`: the server (`""`) and every registered service are
/// `SERVING` exactly when `/health/ready` answers 200, and `NOT_SERVING` from the start of
/// shutdown; copied the moment a check's outcome changes. Watchers (`Health/Watch`) see each
/// change.
#[derive(Debug)]
pub struct HealthSync {
    reporter: HealthReporter,
    names: Vec<String>,
    health: Health,
    serving: Option<bool>,
}

impl HealthSync {
    /// Copies readiness now.
    pub async fn sync(&mut self) {
        let serving = !self.health.is_shutting_down() && self.health.report(Kind::Readiness).is_ok();
        if self.serving == Some(serving) {
            return;
        }
        self.serving = Some(serving);
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
        tracing::debug!(serving, "gRPC health status changed");
    }

    /// Copies readiness on every change and every [`HEALTH_SYNC_EVERY`] until `stop` is
    /// cancelled, then reports `NOT_SERVING`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut changes = self.health.subscribe();
        loop {
            changes.mark_unchanged();
            self.sync().await;
            tokio::select! {
                () = stop.cancelled() => break,
                _ = changes.changed() => {}
                () = tokio::time::sleep(HEALTH_SYNC_EVERY) => {}
            }
        }
        self.reporter.set_service_status("", ServingStatus::NotServing).await;
    }
}

/// One listener for both: requests with a gRPC content type go to `grpc`, the rest to `http`.
#[derive(Debug, Clone)]
pub struct Dispatch {
    http: Router,
    grpc: Router,
}

impl Dispatch {
    /// Routes between the HTTP routes and the gRPC router.
    pub fn new(http: Router, grpc: Router) -> Self {
        Self { http: http.with_state(()), grpc: grpc.with_state(()) }
    }
}

/// Whether `req` is a gRPC call: `application/grpc` or `application/grpc+…` (not gRPC-Web,
/// which is served by neither).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

impl tower::Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_grpc(&req) { self.grpc.call(req) } else { self.http.call(req) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let req = |ct: &str| Request::builder().header("content-type", ct).body(()).unwrap();
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(!is_grpc(&req("application/grpc-web")));
        assert!(!is_grpc(&req("application/json")));
        assert!(!is_grpc(&Request::new(())));
    }
}
