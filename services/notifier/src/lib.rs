//! City Events notifier: turns join.* and event.canceled into per-user notifications.

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service {
    keel::Service::new(keel::build_info!())
}
