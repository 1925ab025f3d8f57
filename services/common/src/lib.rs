//! What the City Events services share, and nothing else: the names and default ports of the
//! services, the event catalogue (topics and typed payloads), keyset pagination, time helpers,
//! the caller from the access token, small input-validation helpers, which answer RFC 9457 problems, the `no-store` layer for personal data, the follower of
//! session revocations, and (cargo feature `testing`) what their integration
//! tests share.
//!
//! Anything service-specific stays in its service crate; anything generic belongs in `keel`.

pub mod caller;
pub mod catalogue;
pub mod idempotency;
pub mod organizer_bans;
pub mod page;
pub mod private;
pub mod sessions;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod upstream;
pub mod validate;
pub mod zone;

/// The services of the platform, their default ports (management listeners at +1000) and the
/// name Keel knows each by (its env prefix: `cityevents-auth` → `CITYEVENTS_AUTH__…`).
pub mod services {
    /// The BFF gateway: the only public entry.
    pub const GATEWAY: (&str, u16) = ("cityevents-gateway", 8080);
    /// Accounts, tokens and lockout.
    pub const AUTH: (&str, u16) = ("cityevents-auth", 8081);
    /// Events (the things people join).
    pub const EVENTS: (&str, u16) = ("cityevents-events", 8082);
    /// Joins, capacity and waitlists.
    pub const JOINS: (&str, u16) = ("cityevents-joins", 8083);
    /// Per-user notifications.
    pub const NOTIFIER: (&str, u16) = ("cityevents-notifier", 8084);
    /// All of them, in start order (upstreams before the gateway).
    pub const ALL: [(&str, u16); 5] = [AUTH, EVENTS, JOINS, NOTIFIER, GATEWAY];

    /// The services each service calls over HTTP, as `(upstreams.<key>, service)`: the gateway
    /// forwards to the four others; events asks joins whether anyone joined before an
    /// unpublish. The launcher points them at 127.0.0.1 all-in-one and outside production.
    pub fn upstreams_of(name: &str) -> &'static [(&'static str, (&'static str, u16))] {
        match name {
            n if n == GATEWAY.0 => &[("auth", AUTH), ("events", EVENTS), ("joins", JOINS), ("notifier", NOTIFIER)],
            n if n == EVENTS.0 => &[("joins", JOINS)],
            _ => &[],
        }
    }

    /// Each service's largest request body (`http.body_limit`, one setting for its whole API):
    /// what its largest valid request needs with room to spare. The gateway's is the largest of
    /// them, so it forwards whatever a service accepts; past a limit the 413 problem
    /// (`body_too_large`) says it.
    pub fn body_limit(name: &str) -> &'static str {
        match name {
            n if n == GATEWAY.0 || n == EVENTS.0 => "64KiB",
            n if n == JOINS.0 => "16KiB",
            // Credentials, names and reasons; mail preferences.
            _ => "8KiB",
        }
    }

    /// The configuration defaults every binary of `service` starts from (below its config file
    /// and environment): its port and body limit. Use with `keel::Service::config_defaults`.
    pub fn defaults((name, port): (&str, u16)) -> Vec<(String, String)> {
        let p = keel::config::env_prefix(name);
        vec![
            (format!("{p}__HTTP__PORT"), port.to_string()),
            (format!("{p}__HTTP__BODY_LIMIT"), body_limit(name).into()),
        ]
    }
}

/// Roles carried in the access token's `role` claim.
pub use cityevents_api::auth::roles;
