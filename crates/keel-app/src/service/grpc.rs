//! [`Setup`]'s gRPC services and clients (feature `grpc`).

use keel_config::{Profile, Section};

use super::{Setup, SetupError, misconfigured};

impl<C: Section> Setup<C> {
    /// Serves a tonic service (a generated `…Server::new(handler)`) behind Keel's gRPC stack:
    /// on the public listener, where `content-type: application/grpc` requests go to it, or on
    /// `grpc.port`. Its name joins `grpc.health.v1`, which follows readiness. In production the
    /// service refuses to start with gRPC in plaintext unless `grpc.plaintext` is set.
    ///
    /// ```ignore
    /// s.grpc_service(SymbolsServer::new(SymbolsApi::new(db.clone())));
    /// ```
    pub fn grpc_service<S: keel_grpc::GrpcService>(&mut self, svc: S) -> &mut Self {
        self.grpc.add(svc);
        self
    }

    /// Puts a tower layer on every gRPC call, below Keel's gRPC stack: the rate limiter the HTTP
    /// routes have, so a gRPC client cannot spend more than the policy gives. Its refusals reach
    /// gRPC clients as statuses (a 429 is `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`;
    /// see `keel::grpc::answers`).
    ///
    /// ```ignore
    /// let limit = s.rate_limit("api")?;
    /// s.grpc_layer(limit.clone());
    /// Ok(routes.layer(limit))
    /// ```
    pub fn grpc_layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<http::Request<axum::body::Body>, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<http::Request<axum::body::Body>>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<http::Request<axum::body::Body>>>::Future: Send + 'static,
    {
        self.grpc.layer(layer);
        self
    }

    /// An encoded `FileDescriptorSet` describing the gRPC services, served by reflection when
    /// `grpc.reflection` is on (`grpcurl list`).
    pub fn grpc_descriptors(&mut self, encoded: &'static [u8]) -> &mut Self {
        self.grpc.descriptors(encoded);
        self
    }

    /// A gRPC client for the upstream `upstreams.<name>` (see [`keel_grpc::client`]): hand it to
    /// generated tonic clients. Declare its idempotent methods with
    /// [`GrpcClient::idempotent`](keel_grpc::GrpcClient::idempotent) to have them retried. In
    /// production an `http://` base URL is refused unless `upstreams.<name>.plaintext` is set.
    pub fn grpc_client(&mut self, name: &str) -> Result<keel_grpc::GrpcClient, SetupError> {
        let cfg = self.upstream(name)?;
        if self.profile == Profile::Production && cfg.base_url.starts_with("http://") && !cfg.plaintext {
            return Err(misconfigured(
                &format!("upstreams.{name}.base_url"),
                "is plaintext gRPC in production: use https:// (with upstreams.<name>.tls), or set upstreams.<name>.plaintext: true when the network encrypts",
            ));
        }
        let breaker = self.breakers()?.get_or_create(name, &cfg.breaker);
        if self.grpc_client_metrics.is_none() {
            self.grpc_client_metrics = Some(keel_grpc::GrpcClientMetrics::new(&self.metrics)?);
        }
        Ok(keel_grpc::GrpcClient::new(name, &cfg, breaker, self.grpc_client_metrics.clone())?)
    }
}
