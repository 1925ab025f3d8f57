//! What the launcher builds from each row of the module table
//! ([`cityevents_common::services`]): the one place that names each service's crate. The
//! all-in-one group and `cityevents <service> …` both go through [`BUILD`].

use std::ffi::OsString;
use std::process::ExitCode;

use cityevents_common::services::{self, Module};
use keel::app::{Group, Loader};

/// A service built from its row, whatever its configuration type.
pub trait Built {
    /// The name Keel knows it by.
    fn keel_name(&self) -> &str;
    /// Runs its CLI as its own binary would, `args` without the program name, with `defaults`
    /// beneath its own defaults, config file and environment.
    fn run_cli(self: Box<Self>, defaults: Vec<(String, String)>, args: Vec<OsString>) -> ExitCode;
    /// Adds it to the all-in-one `group`, its settings from `loader`.
    fn join(self: Box<Self>, group: Group, loader: Loader) -> Group;
}

impl<C: keel::config::Section> Built for keel::Service<C> {
    fn keel_name(&self) -> &str {
        &self.build_info().name
    }

    fn run_cli(self: Box<Self>, defaults: Vec<(String, String)>, args: Vec<OsString>) -> ExitCode {
        let name = OsString::from(self.keel_name());
        keel::app::run_from(self.config_defaults(defaults), std::iter::once(name).chain(args))
    }

    fn join(self: Box<Self>, group: Group, loader: Loader) -> Group {
        group.add(*self, loader)
    }
}

/// Builds one service.
pub type BuildFn = fn() -> Box<dyn Built>;

/// How each row of the module table is built, in the table's order (a test holds them equal).
pub const BUILD: [(&Module, BuildFn); 5] = [
    (&services::AUTH, auth),
    (&services::EVENTS, events),
    (&services::JOINS, joins),
    (&services::NOTIFIER, notifier),
    (&services::GATEWAY, gateway),
];

fn auth() -> Box<dyn Built> {
    Box::new(cityevents_auth::service())
}

fn events() -> Box<dyn Built> {
    Box::new(cityevents_events::service())
}

fn joins() -> Box<dyn Built> {
    Box::new(cityevents_joins::service())
}

fn notifier() -> Box<dyn Built> {
    Box::new(cityevents_notifier::service())
}

fn gateway() -> Box<dyn Built> {
    Box::new(cityevents_gateway::service())
}

/// The service whose short name is `short` (`joins`), built.
pub fn build(short: &str) -> Option<(&'static Module, Box<dyn Built>)> {
    BUILD.iter().find(|(m, _)| m.short == short).map(|(m, f)| (*m, f()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_table_is_built_once_in_order_under_its_name() {
        let rows: Vec<&str> = BUILD.iter().map(|(m, _)| m.short).collect();
        let table: Vec<&str> = services::ALL.iter().map(|m| m.short).collect();
        assert_eq!(rows, table);
        for (m, f) in BUILD {
            assert_eq!(f().keel_name(), m.name);
        }
        assert!(build("nope").is_none());
    }
}
