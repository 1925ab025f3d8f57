//! Several services in one process: the single-binary mode of a platform whose services
//! otherwise run as separate processes (as Grafana Mimir and Loki do).
//!
//! Each member keeps everything it has on its own: its configuration (own env prefix, own
//! file), listeners, health, metrics registry, tasks and shutdown. What they share is the
//! process: one Tokio runtime, one log/trace pipeline (following the **first** member's
//! `log.format`, `log.mask_fields` and `telemetry.*`, with the group's name as `service`), and
//! whatever the configuration makes shared, such as an in-process bus named `memory://<name>`.
//!
//! # Log levels
//!
//! Each member keeps its own `log.level` for what it logs while it handles a request or runs a
//! background task (lines whose `service` is the member's name). When every
//! member has the same directives, they are the process's; otherwise the process logs at the
//! default (`info`), a member's bare level applies to its own work (`CITYEVENTS_JOINS__LOG__LEVEL=
//! debug` gives the joins service's debug lines and no one else's) and its `target=level`
//! directives apply as they are (`info,cityevents_joins=debug`: that crate, wherever it logs). A
//! member can log more than the process, not less (`tracing-subscriber`'s span-scoped directives
//! only enable); `RUST_LOG` still replaces it all.
//!
//! # Start and shutdown order
//!
//! Members start in the order they were added, each fully (listeners bound, start-up checks
//! scheduled) before the next; put upstreams before the services that call them. If one fails
//! to start, the ones already started are shut down and the process exits 69, or 78 when the
//! configuration is at fault ([`StartError::is_config`]). On a stop signal
//! (or a listener failing) members shut down in **reverse** order, one after the other, each
//! with its own drain delay and deadline, so a gateway stops taking requests before the services
//! behind it go. A second signal forces every remaining shutdown.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::config::worker_threads;
use super::lifecycle::{Running, StartError, start_in};
use super::service::{BuildInfo, Service};
use super::{KeelConfig, Loaded, Loader};
use super::{Signals, cli::exit, install_panic_hook, runtime, startup_error};
use keel_config::{ConfigError, Profile, Section};
use keel_management::status::Process;
use keel_telemetry::{self as telemetry, TelemetryOptions};

type StartFuture = Pin<Box<dyn Future<Output = Result<Running, StartError>> + Send>>;
type LoadFn = Box<dyn FnOnce() -> Result<Prepared, ConfigError> + Send>;
type StartedFn = Box<dyn FnOnce(&[Running]) + Send>;
type Members = Vec<(String, Prepared)>;

struct Prepared {
    keel: KeelConfig,
    tracing_layers: Vec<telemetry::BoxLayer>,
    profile: Profile,
    start: Box<dyn FnOnce(Process) -> StartFuture + Send>,
}

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A member's configuration is invalid (every member is checked before any starts).
    #[error("{service}: {error}")]
    Config {
        /// The member.
        service: String,
        /// Its problems.
        error: ConfigError,
    },
    /// A member could not start.
    #[error("{service}: {error}")]
    Start {
        /// The member.
        service: String,
        /// Why.
        error: StartError,
    },
}

/// Services run together in one process.
///
/// ```no_run
/// use keel_app::Group;
/// use keel_app::Loader;
/// use keel_config::Profile;
///
/// fn main() -> std::process::ExitCode {
///     let profile = Profile::Development;
///     let api = keel_app::Service::new(keel_app::build_info!().named("api"));
///     let worker = keel_app::Service::new(keel_app::build_info!().named("worker"));
///     Group::new(keel_app::build_info!())
///         .add(worker, Loader::new("worker", profile).process_env())
///         .add(api, Loader::new("api", profile).process_env())
///         .on_started(|running| {
///             for r in running {
///                 println!("listening on {}", r.http_addr());
///             }
///         })
///         .run()
/// }
/// ```
pub struct Group {
    build: BuildInfo,
    members: Vec<(String, LoadFn)>,
    on_started: Option<StartedFn>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Group").field("build", &self.build).field("members", &names).finish_non_exhaustive()
    }
}

impl Group {
    /// An empty group; `build` names the process in logs.
    pub fn new(build: BuildInfo) -> Self {
        Self { build, members: Vec::new(), on_started: None }
    }

    /// Adds `service`, configured by `loader` (give it the service's own name so its env prefix
    /// is its own). Configuration is loaded when the group starts.
    ///
    /// The service's own [`Service::config_defaults`] apply beneath the loader's defaults.
    pub fn add<C: Section>(mut self, service: Service<C>, loader: Loader) -> Self {
        let name = service.build.name.clone();
        let loader = loader.beneath_defaults(service.config_defaults.iter().cloned());
        let load: LoadFn = Box::new(move || Ok(prepare(service, loader.load::<C>()?)));
        self.members.push((name, load));
        self
    }

    /// Adds `service` with a configuration already loaded (what [`crate::run`] does for one).
    pub(crate) fn add_loaded<C: Section>(mut self, service: Service<C>, loaded: Loaded<C>) -> Self {
        let name = service.build.name.clone();
        self.members.push((name, Box::new(move || Ok(prepare(service, loaded)))));
        self
    }

    /// Called once every member is started (to print where they listen, say).
    pub fn on_started(mut self, f: impl FnOnce(&[Running]) + Send + 'static) -> Self {
        self.on_started = Some(Box::new(f));
        self
    }

    /// The members' names, in start order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|(n, _)| n.clone()).collect()
    }

    fn prepare(self) -> Result<(Members, Option<StartedFn>), Vec<GroupError>> {
        let mut prepared = Vec::new();
        let mut errors = Vec::new();
        for (service, load) in self.members {
            match load() {
                Ok(p) => prepared.push((service, p)),
                Err(error) => errors.push(GroupError::Config { service, error }),
            }
        }
        if errors.is_empty() { Ok((prepared, self.on_started)) } else { Err(errors) }
    }

    /// Loads every member's configuration, then starts them in order; for tests and launchers
    /// that manage the process themselves (telemetry is the caller's). On a start failure the
    /// members already started are shut down.
    pub async fn start(self) -> Result<Vec<Running>, Vec<GroupError>> {
        let (prepared, on_started) = self.prepare()?;
        let running = start_all(prepared).await.map_err(|e| vec![e])?;
        if let Some(f) = on_started {
            f(&running);
        }
        Ok(running)
    }

    /// Runs the group as the process: loads and validates every member's configuration (listing
    /// every problem of every member), sets up telemetry, starts the members, waits for SIGTERM
    /// or SIGINT, and shuts them down. Returns the exit code ([`exit`]).
    pub fn run(self) -> ExitCode {
        let build = self.build.clone();
        let (mut prepared, on_started) = match self.prepare() {
            Ok(p) => p,
            Err(errors) => {
                let problems: Vec<String> = errors
                    .iter()
                    .flat_map(|e| match e {
                        GroupError::Config { service, error } => {
                            error.problems.iter().map(|p| format!("{service}: {p}")).collect::<Vec<_>>()
                        }
                        other => vec![other.to_string()],
                    })
                    .collect();
                startup_error(&build, "invalid configuration", serde_json::json!({ "problems": problems }));
                return ExitCode::from(exit::CONFIG);
            }
        };
        let Some((_, first)) = prepared.first() else {
            startup_error(&build, "nothing to run: the group has no services", serde_json::json!({}));
            return ExitCode::from(exit::CONFIG);
        };
        let opts = TelemetryOptions {
            service: build.name.clone(),
            version: build.version.clone(),
            profile: first.profile,
            level: log_filter(prepared.iter().map(|(name, p)| (name.as_str(), p.keel.log.level.as_str()))),
            format: first.keel.log.format,
            telemetry: first.keel.telemetry.clone(),
            mask_fields: first.keel.log.mask_fields.clone(),
        };
        let configured = prepared.iter().filter_map(|(_, p)| p.keel.runtime.worker_threads).max();
        let workers = match worker_threads(configured, std::env::var("TOKIO_WORKER_THREADS").ok().as_deref()) {
            Ok(w) => w,
            Err(problem) => {
                startup_error(&build, "invalid configuration", serde_json::json!({ "problems": [problem] }));
                return ExitCode::from(exit::CONFIG);
            }
        };
        let rt = match runtime(workers) {
            Ok(rt) => rt,
            Err(e) => {
                startup_error(&build, "cannot start the async runtime", serde_json::json!({ "error": e.to_string() }));
                return ExitCode::from(exit::START);
            }
        };
        let layers: Vec<telemetry::BoxLayer> =
            prepared.iter_mut().flat_map(|(_, p)| std::mem::take(&mut p.tracing_layers)).collect();
        let code = rt.block_on(async move {
            let guard = match telemetry::init_with_layers(&opts, layers) {
                Ok(g) => g,
                Err(e) => {
                    startup_error(&build, "cannot set up telemetry", serde_json::json!({ "error": e.to_string() }));
                    return exit::START;
                }
            };
            install_panic_hook();
            let mut signals = match Signals::new() {
                Ok(s) => s,
                Err(e) => {
                    startup_error(
                        &build,
                        "cannot listen for stop signals",
                        serde_json::json!({ "error": e.to_string() }),
                    );
                    return exit::START;
                }
            };
            let running = match start_all(prepared).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "start-up failed");
                    guard.shutdown();
                    let (details, code) = match &e {
                        GroupError::Start { service, error } => (
                            serde_json::json!({ "error": error.to_string(), "member": service }),
                            if error.is_config() { exit::CONFIG } else { exit::START },
                        ),
                        GroupError::Config { .. } => (serde_json::json!({ "error": e.to_string() }), exit::CONFIG),
                    };
                    startup_error(&build, "start-up failed", details);
                    return code;
                }
            };
            if let Some(f) = on_started {
                f(&running);
            }
            let failed = futures_util::future::select_all(running.iter().map(|r| Box::pin(r.failed())));
            let listener_failed = tokio::select! {
                sig = signals.next() => {
                    tracing::info!(signal = sig, "stop signal received");
                    false
                }
                _ = failed => {
                    tracing::error!("a listener failed; shutting down");
                    true
                }
            };
            let force = CancellationToken::new();
            let forcing = force.clone();
            tokio::spawn(async move {
                let sig = signals.next().await;
                tracing::warn!(signal = sig, "second stop signal: forcing exit");
                forcing.cancel();
            });
            let clean = stop_all(running, &force).await;
            guard.shutdown();
            match (clean, listener_failed) {
                (false, _) => exit::FORCED_SHUTDOWN,
                (true, true) => exit::FAILURE,
                (true, false) => 0,
            }
        });
        rt.shutdown_timeout(super::lifecycle::RUNTIME_GRACE);
        ExitCode::from(code)
    }
}

/// The process's filter directives for members `(name, log.level)`: their common directives, or
/// the default level plus, for each differing member, its bare level scoped to spans whose
/// `service` field is its name (its requests and background work) and its `target=level`
/// directives as they are. A span-scoped directive cannot also name the event's target (its
/// target is the span's), and a target is most often one service's crate anyway.
fn log_filter<'a>(members: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let members: Vec<(&str, &str)> = members.collect();
    let mut levels = members.iter().map(|(_, l)| *l);
    let first = levels.next().unwrap_or("info");
    if levels.all(|l| l == first) {
        return first.to_owned();
    }
    let base = keel_telemetry::LogConfig::default().level;
    let mut out = vec![base.clone()];
    for (name, level) in &members {
        for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let scoped = match directive.split_once('=') {
                Some(_) => directive.to_owned(),
                None if directive == base => continue,
                None => format!("[{{service={name}}}]={directive}"),
            };
            if !out.contains(&scoped) {
                out.push(scoped);
            }
        }
    }
    out.join(",")
}

fn prepare<C: Section>(mut service: Service<C>, loaded: Loaded<C>) -> Prepared {
    Prepared {
        tracing_layers: std::mem::take(&mut service.tracing_layers),
        keel: loaded.config.keel.clone(),
        profile: loaded.profile,
        start: Box::new(move |process| Box::pin(async move { start_in(service, loaded, &process).await })),
    }
}

async fn start_all(prepared: Members) -> Result<Vec<Running>, GroupError> {
    let mut running = Vec::with_capacity(prepared.len());
    // One operator page for the process: every member's shows them all.
    let process = Process::default();
    for (service, p) in prepared {
        match (p.start)(process.clone()).await {
            Ok(r) => running.push(r),
            Err(error) => {
                stop_all(running, &CancellationToken::new()).await;
                return Err(GroupError::Start { service, error });
            }
        }
    }
    Ok(running)
}

/// Shuts members down in reverse start order; `false` if any shutdown was forced.
async fn stop_all(running: Vec<Running>, force: &CancellationToken) -> bool {
    let mut clean = true;
    for r in running.into_iter().rev() {
        let name = r.name().to_owned();
        if let Err(e) = r.shutdown(force.clone().cancelled_owned()).await {
            tracing::error!(member = %name, error = %e, "shutdown was not clean");
            clean = false;
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn one_level_for_all_is_the_process_level() {
        assert_eq!(log_filter([("a", "warn"), ("b", "warn")].into_iter()), "warn");
    }

    #[test]
    fn a_member_with_its_own_level_gets_it_for_its_own_work() {
        let f = log_filter([("a", "info"), ("b", "debug,sqlx=warn"), ("c", "info,c_crate=trace")].into_iter());
        assert_eq!(f, "info,[{service=b}]=debug,sqlx=warn,c_crate=trace");
        keel_telemetry::parse_filter(&f).unwrap();
        let f = log_filter([("a", "debug"), ("b", "info")].into_iter());
        assert_eq!(f, "info,[{service=a}]=debug");
        let f = log_filter([("a", "info,a_crate=debug"), ("b", "info")].into_iter());
        assert_eq!(f, "info,a_crate=debug", "a target directive is enough: nothing scoped");
    }
}
