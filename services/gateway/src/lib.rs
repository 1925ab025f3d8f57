//! City Events gateway (BFF): the only public entry; JWT at the edge, rate limits, routing, aggregate views, OpenAPI.

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service {
    keel::Service::new(keel::build_info!())
}
