//! City Events events: organizer CRUD, publish and cancel, public listing; emits event.* through the outbox.

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service {
    keel::Service::new(keel::build_info!())
}
