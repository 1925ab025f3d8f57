//! The City Events launcher: the whole platform in one process with zero setup, or any one of
//! its services as if it were that service's own binary.
//!
//! ```text
//! cityevents                         all five services in one process (embedded defaults)
//! cityevents serve <service>         one service (same as its own binary with `serve`)
//! cityevents <service> <command…>    that service's CLI: `cityevents auth admin create --email …`,
//!                                    `cityevents events migrate`, `cityevents joins dlq list …`
//! cityevents services [--json]       the module table (names, ports, database, upstreams)
//! cityevents audit [PATH] [options]  the production-readiness audit (`keel audit`, docs/audit.md)
//! cityevents --version               the launcher's name, version, commit and build profile
//! cityevents --help                   commands, services and ports, configuration, profiles
//! ```
//!
//! Services: `auth`, `events`, `joins`, `notifier`, `gateway`. See `docs/cityevents.md`.

// mimalloc instead of the system allocator: under load glibc's malloc serialises threads that
// free memory another thread allocated (tokio moves tasks between workers), see
// docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ffi::OsString;
use std::process::ExitCode;

use cityevents::{all_in_one, modules};
use cityevents_common::services;

/// `--help`: commands, services and their ports, configuration, profiles, where data goes.
fn usage() -> String {
    let mut ports = String::new();
    for m in &services::ALL {
        ports.push_str(&format!(
            "  {:<9} API 127.0.0.1:{:<5}  management 127.0.0.1:{:<5}  {}\n",
            m.short,
            m.port,
            m.management_port(),
            m.about
        ));
    }
    format!(
        "City Events: the event platform on Keel.

usage:
  cityevents [all]                      run every service in one process (zero setup)
  cityevents serve <service> [args…]    run one service, as its own binary would
  cityevents <service> <command> […]    that service's commands: serve, migrate, config check,
                                        healthcheck, dlq, audit, keys, slo rules, admin create…
                                        (`cityevents <service> --help` lists them)
  cityevents services [--json]          the module table: each service's names, ports, database
                                        and upstreams (tab-separated, or JSON)
  cityevents audit [PATH] [options…]    audit a repository's production readiness, as `keel audit`
                                        (`cityevents audit --help`; docs/audit.md)
  cityevents version | --version        name, version, git commit and build profile
  cityevents help | --help              this text

services (the gateway's port is the public API; management serves /metrics and /admin/*):
{ports}
configuration, each service its own (environment over its config file over defaults):
  CITYEVENTS_<SERVICE>__<SECTION>__<KEY>=<value>
      any setting of one service: CITYEVENTS_GATEWAY__HTTP__PORT=8000,
      CITYEVENTS_JOINS__LOG__LEVEL=debug
  KEEL_ENV=development|test|production
      the profile (default development); production needs real secrets and databases
  cityevents serve <service> --config FILE
      a YAML config file (deploy/config/ has one per service)

development profile: secrets (JWT, encryption, audit and the operator page's admin token) are
generated on the first run into data/dev-secrets.json, databases are SQLite files in data/, mail
is written to data/mail/. The all-in-one banner prints the operator page's sign-in link.
Docs: docs/cityevents.md.
"
    )
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let second = args.get(2).and_then(|a| a.to_str());
    match first.as_deref() {
        None | Some("all") if second.is_some_and(is_help) => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        None | Some("all") if second.is_some_and(is_version) => {
            println!("{}", keel::build_info!());
            ExitCode::SUCCESS
        }
        None | Some("all") => all_in_one::run(&args),
        Some(a) if is_help(a) => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Some("services") => services_command(second),
        Some("audit") => keel_audit::cli::audit_main("cityevents audit", args.iter().skip(2).cloned()),
        Some(a) if is_version(a) => {
            println!("{}", keel::build_info!());
            ExitCode::SUCCESS
        }
        Some("serve") => {
            let Some(name) = second.map(str::to_owned) else {
                eprint!("cityevents serve: which service?\n\n{}", usage());
                return ExitCode::from(keel::app::exit::USAGE);
            };
            // `cityevents serve joins --config f` → `cityevents-joins --config f serve`.
            let rest = args.iter().skip(3).cloned();
            service_cli(&name, rest.chain(std::iter::once(OsString::from("serve"))))
        }
        Some(name) => service_cli(name, args.iter().skip(2).cloned()),
    }
}

/// `cityevents services [--json]`: the module table, for scripts and people.
fn services_command(format: Option<&str>) -> ExitCode {
    let text = match format {
        None => services::table(),
        Some("--json") => format!("{:#}\n", services::json()),
        Some(other) => {
            eprint!("cityevents services: unknown option `{other}` (--json or nothing)\n\n{}", usage());
            return ExitCode::from(keel::app::exit::USAGE);
        }
    };
    // A reader that stops early (`| head`) is not a failure worth a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Runs the service's own CLI with `rest` as its arguments.
fn service_cli(name: &str, rest: impl Iterator<Item = OsString>) -> ExitCode {
    let profile = match all_in_one::profile() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let rest: Vec<OsString> = rest.collect();
    let mode = if writes_secrets(&rest) { all_in_one::Mode::Single } else { all_in_one::Mode::SingleReadOnly };
    let Some((module, svc)) = modules::build(name) else {
        eprint!("cityevents: unknown service or command `{name}`\n\n{}", usage());
        return ExitCode::from(keel::app::exit::USAGE);
    };
    match all_in_one::defaults(module.name, profile, mode) {
        Ok(defaults) => svc.run_cli(defaults, rest),
        Err(e) => {
            eprintln!("cityevents: {e}");
            ExitCode::from(keel::app::exit::CONFIG)
        }
    }
}

fn is_help(a: &str) -> bool {
    matches!(a, "-h" | "--help" | "help")
}

fn is_version(a: &str) -> bool {
    matches!(a, "-V" | "--version" | "version")
}

/// Whether a service command may create `data/dev-secrets.json` (development): only `serve` and
/// `admin create`, which keep data under the development keys. Every other command reads the
/// file when it exists (`audit verify` needs its key) and otherwise gets keys made up in memory.
fn writes_secrets(args: &[OsString]) -> bool {
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    if args.iter().any(|a| is_help(a) || matches!(*a, "-V" | "--version")) {
        return false;
    }
    // The positional words, without `--config FILE` / `-c FILE` / `--config=FILE`.
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--config" | "-c" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => words.push(a),
        }
    }
    match words.first().copied() {
        None | Some("serve") => true,
        Some("admin") => words.get(1) == Some(&"create"),
        Some(_) => false,
    }
}
