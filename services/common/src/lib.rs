//! What the City Events services share, and nothing else: the module table (every service, its
//! name, port and upstreams), the event catalogue (topics and typed payloads), time helpers,
//! the caller from the access token, small input-validation helpers, which answer RFC 9457 problems, the `no-store` layer for personal data, the follower of
//! session revocations, and (cargo feature `testing`) what their integration
//! tests share.
//!
//! Anything service-specific stays in its service crate; anything generic belongs in `keel`.

pub mod caller;
pub mod catalogue;
pub mod figures;
pub mod ical;
pub mod idempotency;
pub mod organizer_bans;
pub mod private;
pub mod sessions;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod upstream;
pub mod validate;
pub mod zone;

pub mod services;

/// Roles carried in the access token's `role` claim.
pub use cityevents_api::auth::roles;

#[cfg(test)]
mod tests {
    /// The API's published limits are what Keel's pagination enforces.
    #[test]
    fn the_api_states_keels_page_limits() {
        use cityevents_api::limits;
        use keel::http::page;
        assert_eq!((limits::DEFAULT_LIMIT, limits::MAX_LIMIT), (page::DEFAULT_LIMIT, page::MAX_LIMIT));
        assert_eq!(limits::MAX_CURSOR, page::MAX_CURSOR_LEN);
    }
}
