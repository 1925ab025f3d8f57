//! Service lifecycle and the shared command line.
//!
//! This is `keel-app`, re-exported by `keel` as `keel::app`; of Keel's crates it depends on every
//! other Keel crate but `keel-testing`.
//!
//! [`crate::run`] is the whole `main` of a Keel binary:
//!
//! | command | does |
//! |---|---|
//! | `serve` (default) | load and validate config, start, serve until SIGTERM/SIGINT, shut down gracefully |
//! | `config check` | print the effective config (secrets as `"***"`), or every problem; exit 0 / 78 |
//! | `healthcheck [--ready]` | GET `http://127.0.0.1:<http.port>/health/live` (or `/health/ready`); exit 0 / 1 |
//! | `version` (or `--version`, `-V`) | name, version, git commit, build profile |
//! | `dlq list\|replay\|purge TOPIC` | a topic's dead letters on the configured broker (feature `events`) |
//! | `migrate [status]` | apply or list database migrations (a service with [`Service::migrations`]) |
//! | `audit verify [--checkpoint ROWS:HASH]` | walk the audit log's keyed hash chain (and check it against a checkpoint); exit 0 / 1 naming the first broken row (a service with [`Service::keeps_audit_log`]) |
//! | `keys generate \| new <kid> \| rewrap --new-master-key-file F` | field-encryption keys (`security`) |
//! | `keys rotate \| status` | make a data key in the database now; list the keys and the values each encrypts (a service with [`Service::rotates_data_keys`]) |
//!
//! A command the service cannot use (`migrate` without migrations, `audit` without an audit log)
//! is not listed in `--help` and refused with exit 64. `--help` ends with where configuration
//! comes from (the environment-variable scheme, `KEEL_ENV`, the config file), the ports and the
//! admin token. A service adds commands of its own with [`Service::command`]. [`run_from`] takes the arguments
//! from a list instead of the process (a launcher that hosts several services), and [`Group`]
//! runs several services in one process.
//!
//! `--config PATH` (or `KEEL_CONFIG`) names the config file; `KEEL_ENV` picks the profile.
//! Exit codes are in [`exit`].

#![forbid(unsafe_code)]

mod cli;
mod config;
mod group;
mod lifecycle;
#[cfg(feature = "sql")]
mod migrate;
#[cfg(feature = "security")]
mod security;
mod service;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// The `clap` Keel's CLI is built with, for [`Service::command`].
pub use clap;
pub use cli::exit;
pub use config::{Config, KeelConfig, Loaded, Loader, RuntimeConfig, ShutdownConfig};
pub use group::{Group, GroupError};
pub use lifecycle::{Running, ShutdownError, StartError, check, start};
pub use service::{BuildInfo, Service, Setup, SetupError};

use cli::{Cli, Command, ConfigCommand};
use keel_config::{ConfigError, Profile, Section};

/// Runs a service binary: parses the command line, loads configuration, and does what the
/// command asks (see the module docs). Never panics; start-up failures print one structured
/// error line and return a non-zero exit code.
pub fn run<C: Section>(service: Service<C>) -> ExitCode {
    run_from(service, std::env::args_os())
}

/// [`run`] with the command line from `args` (the first item is the program name) instead of the
/// process's.
///
/// ```no_run
/// // `launcher hello serve` runs the hello service as if its own binary got `serve`.
/// let args: Vec<String> = std::env::args().skip(1).collect();
/// keel_app::run_from(keel_app::Service::new(keel_app::build_info!()), args);
/// ```
pub fn run_from<C, I, T>(mut service: Service<C>, args: I) -> ExitCode
where
    C: Section,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let build = service.build.clone();
    let matches = match command(&service).try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    if matches.get_flag("print_version") {
        println!("{build}");
        return ExitCode::SUCCESS;
    }
    if let Some((sub, sub_matches)) = matches.subcommand()
        && let Some(i) = service.commands.iter().position(|(c, _)| c.get_name() == sub)
    {
        let (_, run) = service.commands.swap_remove(i);
        let config = matches.get_one::<std::path::PathBuf>("config").cloned();
        return match load(&build, config.as_deref(), &service.config_defaults) {
            Ok(loaded) => run(sub_matches, loaded),
            Err(code) => code,
        };
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    if let Some(Command::Version) = cli.command {
        println!("{build}");
        return ExitCode::SUCCESS;
    }
    if let Some(command) = cli.command.as_ref().and_then(cli::Command::name)
        && let Some((_, false)) = cli::offered(&service).into_iter().find(|(c, _)| *c == command)
    {
        let why = if service.has_database() { "keeps no audit log" } else { "has no database" };
        eprintln!("{}: `{command}` does not apply: {} {why}", build.name, build.name);
        return ExitCode::from(exit::USAGE);
    }
    if let Some(Command::Slo { command: cli::SloCommand::Rules { files, runbooks } }) = &cli.command {
        return slo_rules(&build, files, runbooks);
    }
    let profile = match Profile::parse(std::env::var(keel_config::PROFILE_ENV).ok().as_deref()) {
        Ok(p) => p,
        Err(e) => return config_failure(&build, &e, matches!(cli.command, Some(Command::Config { .. }))),
    };
    let mut loader =
        Loader::new(build.name.clone(), profile).defaults(service.config_defaults.iter().cloned()).process_env();
    if let Some(path) = &cli.config {
        loader = loader.file(path);
    }
    let loaded = loader.load::<C>();
    match cli.command {
        Some(Command::Config { command: ConfigCommand::Check }) => match loaded {
            Ok(l) => config_check(service, l),
            Err(e) => config_failure(&build, &e, true),
        },
        Some(Command::Healthcheck { ready, timeout, grpc }) => {
            let loaded = match loaded {
                Ok(l) => l,
                Err(e) => return config_failure(&build, &e, true),
            };
            match grpc {
                Some(service) => grpc_healthcheck(&loaded.config.keel, &service, timeout),
                None => healthcheck(&loaded.config.keel, ready, timeout),
            }
        }
        Some(Command::Version | Command::Slo { .. }) => ExitCode::SUCCESS,
        #[cfg(feature = "events")]
        Some(Command::Dlq { command }) => match loaded {
            Ok(l) => dlq(&build, &l.config.keel, command),
            Err(e) => config_failure(&build, &e, true),
        },
        #[cfg(feature = "sql")]
        Some(Command::Migrate { command }) => match loaded {
            Ok(l) => {
                migrate::run(&build.name, service.migrations.clone(), &l.config.keel, l.profile, command.is_some())
            }
            Err(e) => config_failure(&build, &e, true),
        },
        // Refused above: without the `sql` feature no service has a database.
        #[cfg(not(feature = "sql"))]
        Some(Command::Migrate { .. }) => ExitCode::from(exit::USAGE),
        #[cfg(all(feature = "sql", feature = "security"))]
        Some(Command::Audit { command: cli::AuditCommand::Verify { checkpoint } }) => match loaded {
            Ok(l) => security::audit_verify(&build.name, &l.config.keel, l.profile, checkpoint.as_ref()),
            Err(e) => config_failure(&build, &e, true),
        },
        #[cfg(feature = "security")]
        Some(Command::Keys { command }) => match loaded {
            #[cfg(feature = "sql")]
            Ok(l)
                if matches!(command, cli::KeysCommand::Rotate | cli::KeysCommand::Status)
                    || (service.data_keys.is_some() && matches!(command, cli::KeysCommand::Rewrap { .. })) =>
            {
                security::keys_in_db(&build.name, &l.config.keel, l.profile, &command, service.data_keys.as_deref())
            }
            Ok(l) => security::keys(&l.config.keel, command),
            Err(e) => config_failure(&build, &e, true),
        },
        #[cfg(feature = "security")]
        Some(Command::Token { command }) => match loaded {
            Ok(l) => security::token(&l.config.keel, command),
            Err(e) => config_failure(&build, &e, true),
        },
        None | Some(Command::Serve) => match loaded {
            Ok(l) => serve(service, l),
            Err(e) => config_failure(&build, &e, false),
        },
    }
}

/// The service's command line: Keel's commands that it can use, its own, and the help footer.
fn command<C>(service: &Service<C>) -> clap::Command {
    let build = &service.build;
    let name = keel_telemetry::intern::intern(&build.name);
    let mut cmd = Cli::command()
        .name(name)
        .about(format!("{} {}", build.name, build.version))
        .after_help(cli::footer(&build.name));
    for (c, _) in &service.commands {
        cmd = cmd.subcommand(c.clone());
    }
    // Commands the service cannot use are not offered (and refused when given).
    for (command, offered) in cli::offered(service) {
        if !offered {
            cmd = cmd.mut_subcommand(command, |c| c.hide(true));
        }
    }
    cmd
}

/// `config check` on a configuration that loaded: runs everything `serve` runs before it binds
/// (the service's set-up included), so it fails where `serve` would, with `serve`'s exit code;
/// then prints the effective configuration.
fn config_check<C: Section>(service: Service<C>, loaded: Loaded<C>) -> ExitCode {
    let name = service.build.name.clone();
    let yaml = loaded.to_yaml();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} config check: cannot start the async runtime: {e}");
            return ExitCode::from(exit::START);
        }
    };
    let result = rt.block_on(lifecycle::check(service, loaded));
    rt.shutdown_background();
    match result {
        Ok(()) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(if e.is_config() { exit::CONFIG } else { exit::START })
        }
    }
}

/// `<service> slo rules FILE...`: needs no configuration, only the files.
fn slo_rules(build: &BuildInfo, files: &[std::path::PathBuf], runbooks: &str) -> ExitCode {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => match keel_slo::parse(&source, &text) {
                Ok(f) => parsed.push(f),
                Err(e) => problems.extend(e.problems),
            },
            Err(e) => problems.push(format!("{source}: cannot be read: {e}")),
        }
    }
    let mut services: Vec<&str> = parsed.iter().map(|f| f.service.as_str()).collect();
    services.sort_unstable();
    if let Some(w) = services.windows(2).find(|w| w[0] == w[1]) {
        problems.push(format!("service `{}` has more than one SLO file", w[0]));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{} slo rules: {p}", build.name);
        }
        return ExitCode::from(exit::CONFIG);
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let header = keel_slo::header(&build.name, &names);
    match keel_slo::to_yaml(&keel_slo::rules(&parsed, runbooks), &header) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{} slo rules: {e}", build.name);
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// `<service> dlq list | replay | purge`: talks to the configured broker directly.
#[cfg(feature = "events")]
fn dlq(build: &BuildInfo, keel: &KeelConfig, command: cli::DlqCommand) -> ExitCode {
    use keel_events::Bus;
    let name = &build.name;
    let cfg = &keel.bus;
    if cfg.backend == keel_events::BusBackend::InProcess {
        eprintln!(
            "{name} dlq: bus.backend is in_process: its dead letters live in the serving process's memory and \
             are not reachable from here (use nats or rabbitmq)"
        );
        return ExitCode::from(exit::CONFIG);
    }
    let bus = match Bus::new(cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{name} dlq: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} dlq: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    rt.block_on(async {
        if let Err(e) = bus.connect().await {
            eprintln!("{name} dlq: {e}");
            return ExitCode::from(exit::START);
        }
        let result = match &command {
            cli::DlqCommand::List { topic, limit } => bus.dlq_list(topic, *limit).await.map(|list| {
                for d in &list {
                    println!("{}", serde_json::to_string(d).unwrap_or_default());
                }
                eprintln!("{} dead letter(s) in {topic}.dlq", list.len());
            }),
            cli::DlqCommand::Replay { topic, id } => bus
                .dlq_replay(topic, id.as_deref())
                .await
                .map(|n| println!("replayed {n} dead letter(s) from {topic}.dlq")),
            cli::DlqCommand::Discard { topic, id } => match bus.dlq_discard(topic, id).await {
                Ok(0) => {
                    eprintln!("{name} dlq: no dead letter {id} in {topic}.dlq");
                    bus.close().await;
                    return ExitCode::from(exit::FAILURE);
                }
                other => other.map(|n| println!("discarded {n} dead letter(s) from {topic}.dlq")),
            },
            cli::DlqCommand::Purge { topic } => {
                bus.dlq_purge(topic).await.map(|n| println!("purged {n} dead letter(s) from {topic}.dlq"))
            }
        };
        bus.close().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name} dlq: {e}");
                ExitCode::from(exit::FAILURE)
            }
        }
    })
}

/// For a binary with a command line of its own (a benchmark, a launcher): when the first
/// argument is `--version` or `-V`, prints `build` as the `version` command does and returns
/// `true`; the caller then exits 0.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     if keel_app::print_version_if_asked(&keel_app::build_info!(), std::env::args_os()) {
///         return std::process::ExitCode::SUCCESS;
///     }
///     // … the binary's own work
///     std::process::ExitCode::SUCCESS
/// }
/// ```
pub fn print_version_if_asked(build: &BuildInfo, args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    let asked = args.into_iter().nth(1).is_some_and(|a| a == "--version" || a == "-V");
    if asked {
        println!("{build}");
    }
    asked
}

/// Loads the configuration for a service command, printing every problem on failure.
fn load<C: Section>(
    build: &BuildInfo,
    file: Option<&std::path::Path>,
    defaults: &[(String, String)],
) -> Result<Loaded<C>, ExitCode> {
    let profile = Profile::parse(std::env::var(keel_config::PROFILE_ENV).ok().as_deref())
        .map_err(|e| config_failure(build, &e, true))?;
    let mut loader = Loader::new(build.name.clone(), profile).defaults(defaults.iter().cloned()).process_env();
    if let Some(path) = file {
        loader = loader.file(path);
    }
    loader.load::<C>().map_err(|e| config_failure(build, &e, true))
}

fn config_failure(build: &BuildInfo, e: &ConfigError, human: bool) -> ExitCode {
    if human {
        eprintln!("{e}");
    } else {
        let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        startup_error(build, "invalid configuration", serde_json::json!({ "problems": problems }));
    }
    ExitCode::from(exit::CONFIG)
}

/// The one structured line a failed start-up leaves on stderr.
fn startup_error(build: &BuildInfo, message: &str, details: serde_json::Value) {
    let mut line = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": "ERROR",
        "service": build.name,
        "message": message,
    });
    if let (Some(l), serde_json::Value::Object(d)) = (line.as_object_mut(), details) {
        l.extend(d);
    }
    eprintln!("{line}");
}

/// The multi-thread runtime, with `worker_threads` workers if set (else Tokio's default).
fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

fn healthcheck(keel: &KeelConfig, ready: bool, timeout: std::time::Duration) -> ExitCode {
    let path = if ready { "/health/ready" } else { "/health/live" };
    let port = keel.http.port;
    let tls = match cli::probe_tls(&keel.http.tls, "http.tls", &[b"http/1.1"]) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match rt.block_on(cli::probe(port, path, timeout, tls)) {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{status} {body}");
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => {
            eprintln!("healthcheck: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// `healthcheck --grpc`: grpc.health.v1 `Check` on 127.0.0.1 at the gRPC port.
fn grpc_healthcheck(keel: &KeelConfig, service: &str, timeout: std::time::Duration) -> ExitCode {
    #[cfg(feature = "grpc")]
    {
        let port = keel.grpc.port.unwrap_or(keel.http.port);
        let (listener, section) =
            if keel.grpc.port.is_some() { (&keel.grpc.tls, "grpc.tls") } else { (&keel.http.tls, "http.tls") };
        let tls = match cli::probe_tls(listener, section, &[b"h2"]) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("healthcheck: {e}");
                return ExitCode::from(exit::FAILURE);
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("healthcheck: {e}");
                return ExitCode::from(exit::FAILURE);
            }
        };
        let answer = rt.block_on(async {
            let channel = keel_grpc::client::channel(&format!("{scheme}://127.0.0.1:{port}"), tls)
                .map_err(|e| keel_grpc::tonic::Status::unavailable(e.to_string()))?;
            keel_grpc::client::check_health(channel, service, timeout).await
        });
        let name = if service.is_empty() { "the server" } else { service };
        match answer {
            Ok(true) => {
                println!("{name}: SERVING");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("{name}: NOT_SERVING");
                ExitCode::from(exit::FAILURE)
            }
            Err(s) => {
                eprintln!(
                    "healthcheck: 127.0.0.1:{port}: {} {}",
                    keel_grpc::metrics::code_label(s.code()),
                    s.message()
                );
                ExitCode::from(exit::FAILURE)
            }
        }
    }
    #[cfg(not(feature = "grpc"))]
    {
        let _ = (keel, service, timeout);
        eprintln!("healthcheck: --grpc needs a build with keel's `grpc` feature");
        ExitCode::from(exit::USAGE)
    }
}

/// One service as the process: a group of one (same telemetry, signals and shutdown).
fn serve<C: Section>(service: Service<C>, loaded: Loaded<C>) -> ExitCode {
    Group::new(service.build.clone()).add_loaded(service, loaded).run()
}

/// Panics are logged as structured `error` lines (with the request's span fields) instead of
/// free text on stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = %message, location = %location, "panic");
    }));
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The git commit this copy of Keel was built from (`unknown` outside a git checkout).
pub const BUILD_COMMIT: &str = env!("KEEL_BUILD_COMMIT");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn help_lists_what_the_service_can_use_and_how_to_configure_it() {
        let plain = Service::new(BuildInfo::new("cityevents-gateway", "1.0", None, "debug"));
        let help = command(&plain).render_help().to_string();
        let lists = |help: &str, c: &str| help.contains(&format!("\n  {c} "));
        assert!(!lists(&help, "migrate") && !lists(&help, "audit"), "no database, no migrate or audit:\n{help}");
        for needle in [
            "serve",
            "config",
            "healthcheck",
            "version",
            "CITYEVENTS_GATEWAY__<SECTION>__<KEY>",
            "CITYEVENTS_GATEWAY__MANAGEMENT__ADMIN_TOKEN",
            "KEEL_ENV=development|test|production",
            "--config PATH",
            "management.addr",
        ] {
            assert!(help.contains(needle), "{needle} missing:\n{help}");
        }
        #[cfg(all(feature = "sql", feature = "security"))]
        {
            let with_db =
                Service::new(BuildInfo::new("svc", "1.0", None, "debug")).migrations(keel_data::Migrations::new());
            let help = command(&with_db).render_help().to_string();
            assert!(lists(&help, "migrate") && !lists(&help, "audit"), "{help}");
            let help = command(&with_db.keeps_audit_log()).render_help().to_string();
            assert!(lists(&help, "audit"), "{help}");
        }
    }
}
