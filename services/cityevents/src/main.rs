//! The City Events launcher: the whole platform in one process with zero setup, or any one of
//! its services as if it were that service's own binary.
//!
//! ```text
//! cityevents                         all five services in one process (embedded defaults)
//! cityevents serve <service>         one service (same as its own binary with `serve`)
//! cityevents <service> <command…>    that service's CLI: `cityevents auth admin create --email …`,
//!                                    `cityevents events migrate`, `cityevents joins dlq list …`
//! cityevents --version               the launcher's name, version, commit and build profile
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

use cityevents::all_in_one;

const USAGE: &str = "\
City Events

usage:
  cityevents                            run every service in one process (zero setup)
  cityevents serve <service> [args…]    run one service, as its own binary would
  cityevents <service> <command> […]    that service's commands (serve, migrate, config check,
                                        healthcheck, dlq, audit, keys, slo rules, admin create…)
  cityevents --version                  name, version, git commit and build profile

services: auth, events, joins, notifier, gateway
";

/// Runs `$body` with `$svc` bound to the named service (their config types differ).
macro_rules! with_service {
    ($name:expr, |$svc:ident| $body:expr) => {
        match $name {
            "auth" => {
                let $svc = cityevents_auth::service();
                Some($body)
            }
            "events" => {
                let $svc = cityevents_events::service();
                Some($body)
            }
            "joins" => {
                let $svc = cityevents_joins::service();
                Some($body)
            }
            "notifier" => {
                let $svc = cityevents_notifier::service();
                Some($body)
            }
            "gateway" => {
                let $svc = cityevents_gateway::service();
                Some($body)
            }
            _ => None,
        }
    };
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    match first.as_deref() {
        None | Some("all") => all_in_one::run(&args),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V") | Some("--version") | Some("version") => {
            println!("{}", keel::build_info!());
            ExitCode::SUCCESS
        }
        Some("serve") => {
            let Some(name) = args.get(2).and_then(|a| a.to_str()).map(str::to_owned) else {
                eprint!("cityevents serve: which service?\n\n{USAGE}");
                return ExitCode::from(keel::app::exit::USAGE);
            };
            // `cityevents serve joins --config f` → `cityevents-joins --config f serve`.
            let rest = args.iter().skip(3).cloned();
            service_cli(&name, rest.chain(std::iter::once(OsString::from("serve"))))
        }
        Some(name) => service_cli(name, args.iter().skip(2).cloned()),
    }
}

/// Runs the service's own CLI with `rest` as its arguments.
fn service_cli(name: &str, rest: impl Iterator<Item = OsString>) -> ExitCode {
    let profile = match all_in_one::profile() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let rest: Vec<OsString> = rest.collect();
    // Commands that only read: no development secrets file is written for them.
    let reads_only = rest.windows(2).any(|w| w[0] == "config" && w[1] == "check")
        || rest.iter().any(|a| a == "--help" || a == "-h" || a == "help");
    let mode = if reads_only { all_in_one::Mode::SingleReadOnly } else { all_in_one::Mode::Single };
    let result = with_service!(name, |svc| {
        let keel_name = svc.build_info().name.clone();
        match all_in_one::defaults(&keel_name, profile, mode) {
            Ok(defaults) => keel::app::run_from(
                svc.config_defaults(defaults),
                std::iter::once(OsString::from(keel_name)).chain(rest.iter().cloned()),
            ),
            Err(e) => {
                eprintln!("cityevents: {e}");
                ExitCode::from(keel::app::exit::CONFIG)
            }
        }
    });
    result.unwrap_or_else(|| {
        eprint!("cityevents: unknown service or command `{name}`\n\n{USAGE}");
        ExitCode::from(keel::app::exit::USAGE)
    })
}
