//! The module table: the one list of City Events' services, with each one's names, default port,
//! the services it calls and whether it has a database. The launcher's all-in-one group, its
//! service commands and `cityevents services` are built from it, the gateway's upstreams are
//! checked against it, and the deployment tests read the compose file, the Kubernetes manifests
//! and the scripts against it (`deploy/services.tsv` is its printed form, for scripts).
//!
//! Like Grafana Mimir's module list: one codebase, run as one process or one process per module.

use serde::Serialize;

/// One service of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Module {
    /// The short name: the launcher's word (`cityevents serve joins`), the host name in compose
    /// and Kubernetes, the `upstreams.<short>` key of a caller.
    pub short: &'static str,
    /// The name Keel knows it by, its binary and env prefix (`cityevents-joins` →
    /// `CITYEVENTS_JOINS__…`).
    pub name: &'static str,
    /// The default API port; the management listener is at `port + 1000`.
    pub port: u16,
    /// The services it calls over HTTP, by short name.
    pub upstreams: &'static [&'static str],
    /// Whether it has a database (and so a `migrate` command and job).
    pub database: bool,
    /// Its largest request body (`http.body_limit`, one setting for its whole API): what its
    /// largest valid request needs with room to spare. The gateway's is the largest, so it
    /// forwards whatever a service accepts.
    pub body_limit: &'static str,
    /// What it does, in a few words.
    pub about: &'static str,
}

/// The BFF gateway: the only public entry.
pub const GATEWAY: Module = Module {
    short: "gateway",
    name: "cityevents-gateway",
    port: 8080,
    upstreams: &["auth", "events", "joins", "notifier"],
    database: false,
    body_limit: "64KiB",
    about: "the public API and site; forwards to the others",
};
/// Accounts, tokens and lockout.
pub const AUTH: Module = Module {
    short: "auth",
    name: "cityevents-auth",
    port: 8081,
    upstreams: &[],
    database: true,
    // Credentials, names and reasons.
    body_limit: "8KiB",
    about: "accounts, tokens, sessions, moderation",
};
/// Events (the things people join).
pub const EVENTS: Module = Module {
    short: "events",
    name: "cityevents-events",
    port: 8082,
    upstreams: &["joins"],
    database: true,
    body_limit: "64KiB",
    about: "events and their search",
};
/// Joins, capacity and waitlists.
pub const JOINS: Module = Module {
    short: "joins",
    name: "cityevents-joins",
    port: 8083,
    upstreams: &[],
    database: true,
    body_limit: "16KiB",
    about: "joins, capacity, waitlists, bans",
};
/// Per-user notifications.
pub const NOTIFIER: Module = Module {
    short: "notifier",
    name: "cityevents-notifier",
    port: 8084,
    upstreams: &[],
    database: true,
    // Mail preferences.
    body_limit: "8KiB",
    about: "notifications and mail",
};

/// Every service, in start order (the gateway, which calls the others, last).
pub const ALL: [Module; 5] = [AUTH, EVENTS, JOINS, NOTIFIER, GATEWAY];

/// The service with short name `short` (`joins`).
pub fn by_short(short: &str) -> Option<&'static Module> {
    ALL.iter().find(|m| m.short == short)
}

/// The service Keel knows as `name` (`cityevents-joins`).
pub fn by_name(name: &str) -> Option<&'static Module> {
    ALL.iter().find(|m| m.name == name)
}

impl Module {
    /// The management listener's default port.
    pub const fn management_port(&self) -> u16 {
        self.port + 1000
    }

    /// The services it calls.
    pub fn upstream_modules(&self) -> impl Iterator<Item = &'static Module> + use<> {
        let shorts = self.upstreams;
        ALL.iter().filter(move |m| shorts.contains(&m.short))
    }

    /// The configuration defaults every binary of the service starts from (below its config file
    /// and environment): its port and body limit. Use with `keel::Service::config_defaults`.
    pub fn defaults(&self) -> Vec<(String, String)> {
        let p = keel::config::env_prefix(self.name);
        vec![
            (format!("{p}__HTTP__PORT"), self.port.to_string()),
            (format!("{p}__HTTP__BODY_LIMIT"), self.body_limit.into()),
        ]
    }

    /// The module as a [`keel::Service`]: its name, its [`defaults`](Self::defaults) and config
    /// section `C`. `build` is the service crate's own `keel::build_info!()`.
    pub fn service<C: keel::config::Section>(&self, build: keel::BuildInfo) -> keel::Service<C> {
        keel::Service::new(build).name(self.name).config_defaults(self.defaults()).with_config::<C>()
    }

    /// Its row of [`table`]: short name, Keel name, port, management port, `db` or `-`, the
    /// upstreams joined by `,` (or `-`), tab-separated.
    pub fn row(&self) -> String {
        let ups = if self.upstreams.is_empty() { "-".to_owned() } else { self.upstreams.join(",") };
        let db = if self.database { "db" } else { "-" };
        format!("{}\t{}\t{}\t{}\t{db}\t{ups}", self.short, self.name, self.port, self.management_port())
    }
}

/// The table as text for scripts: a `#` header line, then one tab-separated [`Module::row`] per
/// service in start order (`cityevents services`; checked in as `deploy/services.tsv`).
pub fn table() -> String {
    let mut out = String::from("# short\tname\tport\tmanagement\tdatabase\tupstreams\n");
    for m in &ALL {
        out.push_str(&m.row());
        out.push('\n');
    }
    out
}

/// The table as JSON (`cityevents services --json`): an array of objects with the fields of
/// [`Module`] and `management_port`.
pub fn json() -> serde_json::Value {
    ALL.iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("management_port".into(), m.management_port().into());
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ports_and_upstreams_are_consistent() {
        for (i, m) in ALL.iter().enumerate() {
            assert_eq!(m.name, format!("cityevents-{}", m.short));
            assert_eq!(by_short(m.short), Some(m));
            assert_eq!(by_name(m.name), Some(m));
            assert!(ALL.iter().skip(i + 1).all(|o| o.port != m.port && o.port != m.management_port()));
            assert_eq!(m.upstream_modules().count(), m.upstreams.len(), "{}: unknown upstream", m.short);
            assert!(!m.upstreams.contains(&m.short));
        }
        let largest = ALL.iter().map(|m| m.body_limit.trim_end_matches("KiB").parse::<u32>().unwrap()).max();
        assert_eq!(largest, Some(64), "the gateway forwards the largest body any service takes");
        assert_eq!(GATEWAY.body_limit, "64KiB");
        assert_eq!(json()[2]["management_port"], 9083);
        assert_eq!(table().lines().nth(2), Some("events\tcityevents-events\t8082\t9082\tdb\tjoins"));
    }
}
