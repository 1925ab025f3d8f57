//! City Events joins: capacity under concurrency, FIFO waitlists, idempotent joins; consumes event.*, emits join.*.

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service {
    keel::Service::new(keel::build_info!())
}
