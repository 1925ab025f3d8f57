//! City Events auth: accounts, access and refresh tokens, lockout, audit log.

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service {
    keel::Service::new(keel::build_info!())
}
