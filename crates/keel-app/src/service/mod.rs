//! What a service declares: build info, config section, routes, checks and background tasks.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "events")]
mod events;
#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "security")]
mod security;
#[cfg(feature = "sql")]
mod sql;
#[cfg(feature = "storage")]
mod storage;

use super::{Config, KeelConfig};
use keel_config::{ConfigError, NoConfig, Profile, Section};
use keel_health::{Health, HealthCheck};
use keel_telemetry::Metrics;

/// Name, version, commit and build profile of a binary. Make it with [`crate::build_info!`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuildInfo {
    /// Service name: the env prefix (`HELLO__…`), the `service` log field and metric label.
    pub name: String,
    /// Version.
    pub version: String,
    /// Git commit the binary was built from, or `unknown`.
    pub commit: String,
    /// `debug` or `release`.
    pub profile: String,
}

impl BuildInfo {
    /// Build info; `commit` falls back to the commit Keel itself was built from.
    pub fn new(name: &str, version: &str, commit: Option<&str>, profile: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            commit: commit.filter(|c| !c.is_empty()).unwrap_or(crate::BUILD_COMMIT).to_owned(),
            profile: profile.to_owned(),
        }
    }

    /// The same build under another service name (one binary, several services).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// What `version` and `--version` print: one `key: value` line each for name, version, commit
/// and build profile.
///
/// ```
/// let info = keel_app::BuildInfo::new("hello", "1.2.3", Some("abc123"), "release");
/// assert_eq!(info.to_string(), "name: hello\nversion: 1.2.3\ncommit: abc123\nbuild: release");
/// ```
impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "name: {}\nversion: {}\ncommit: {}\nbuild: {}", self.name, self.version, self.commit, self.profile)
    }
}

/// Build info of the crate this macro is expanded in: package name and version, the commit
/// from `KEEL_GIT_COMMIT` at build time (else the repository's `HEAD` when Keel was built), and
/// `debug` or `release`.
///
/// ```
/// let info = keel_app::build_info!();
/// assert!(!info.version.is_empty());
/// ```
#[macro_export]
macro_rules! build_info {
    () => {
        $crate::BuildInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            option_env!("KEEL_GIT_COMMIT"),
            if cfg!(debug_assertions) { "debug" } else { "release" },
        )
    };
}

/// An error from a service's set-up function.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// A set-up step refused what the configuration at `path` gives it: a [`ConfigError`], so the
/// process exits with [`exit::CONFIG`](super::exit::CONFIG).
fn misconfigured(path: &str, e: impl std::fmt::Display) -> SetupError {
    Box::new(ConfigError::invalid(path, e.to_string()))
}

type SetupFn<C> = Box<dyn FnOnce(&mut Setup<C>) -> Result<Router, SetupError> + Send>;
pub(crate) type CommandFn<C> = Box<dyn FnOnce(&clap::ArgMatches, super::Loaded<C>) -> std::process::ExitCode + Send>;
pub(crate) type TaskFn = Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;
/// The columns a service declared with [`Service::rotates_data_keys`]: table, key, column.
pub(crate) type EncryptedColumns = Arc<[(&'static str, &'static str, &'static str)]>;
pub(crate) type HookFn = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A service definition: hand it to [`crate::run`].
///
/// ```no_run
/// use axum::{Json, Router, routing::get};
///
/// fn main() -> std::process::ExitCode {
///     let service = keel_app::Service::new(keel_app::build_info!())
///         .router(Router::new().route("/hello", get(|| async { Json(serde_json::json!({"message": "hello"})) })));
///     keel_app::run(service)
/// }
/// ```
pub struct Service<C = NoConfig> {
    pub(crate) build: BuildInfo,
    pub(crate) setup: SetupFn<C>,
    #[cfg(feature = "sql")]
    pub(crate) migrations: Option<Arc<keel_data::Migrations>>,
    pub(crate) commands: Vec<(clap::Command, CommandFn<C>)>,
    pub(crate) config_defaults: Vec<(String, String)>,
    pub(crate) tracing_layers: Vec<keel_telemetry::BoxLayer>,
    /// Whether the service keeps an audit log (`audit verify` is offered).
    pub(crate) audit_log: bool,
    /// The encrypted columns of a service that keeps its data keys in its database
    /// ([`Service::rotates_data_keys`]): `keys rotate` and `keys status` work.
    pub(crate) data_keys: Option<EncryptedColumns>,
    /// The service's built-in flags ([`Service::flags`]).
    pub(crate) default_flags: Option<&'static str>,
    _config: PhantomData<fn() -> C>,
}

impl<C> std::fmt::Debug for Service<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("build", &self.build).finish_non_exhaustive()
    }
}

impl<C> Service<C> {
    /// Whether the service has a database: it declared [`Service::migrations`].
    pub(crate) fn has_database(&self) -> bool {
        #[cfg(feature = "sql")]
        return self.migrations.is_some();
        #[cfg(not(feature = "sql"))]
        false
    }
}

impl Service<NoConfig> {
    /// A service with no routes of its own (probes and metrics only) and no `app` section.
    pub fn new(build: BuildInfo) -> Self {
        Self {
            build,
            setup: Box::new(|_| Ok(Router::new())),
            #[cfg(feature = "sql")]
            migrations: None,
            commands: Vec::new(),
            config_defaults: Vec::new(),
            tracing_layers: Vec::new(),
            audit_log: false,
            data_keys: None,
            default_flags: None,
            _config: PhantomData,
        }
    }
}

impl<C: Section> Service<C> {
    /// A service whose `app` section is `C`. Keeps the name, migrations and config defaults;
    /// call it before [`Service::setup`] and [`Service::command`], which depend on `C`.
    pub fn with_config<D: Section>(self) -> Service<D> {
        Service {
            build: self.build,
            setup: Box::new(|_| Ok(Router::new())),
            #[cfg(feature = "sql")]
            migrations: self.migrations,
            commands: Vec::new(),
            config_defaults: self.config_defaults,
            tracing_layers: self.tracing_layers,
            audit_log: self.audit_log,
            data_keys: self.data_keys,
            default_flags: self.default_flags,
            _config: PhantomData,
        }
    }

    /// The service's built-in feature flags (YAML in the `features.file` format, usually
    /// `include_str!`): the capabilities its code ships behind flags, with their reviewed
    /// defaults. They are the layer under `features.file` (which lists only what it changes)
    /// and runtime overrides; `/admin/flags` shows them with `"source": "default"`. An invalid
    /// text is a start-up error.
    pub fn flags(mut self, yaml: &'static str) -> Self {
        self.default_flags = Some(yaml);
        self
    }

    /// Serves these routes (for services that need nothing from their config).
    pub fn router(mut self, router: Router) -> Self {
        self.setup = Box::new(move |_| Ok(router));
        self
    }

    /// Builds routes, checks and tasks from the loaded configuration. Runs once, after the
    /// configuration is valid and before any port is bound; an error stops start-up.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use keel_health::{Check, Kind, Outcome};
    ///
    /// let service = keel_app::Service::new(keel_app::build_info!()).setup(|s| {
    ///     s.health_check(Check::new("self", Kind::Liveness, || async { Outcome::Up }));
    ///     s.task("ticker", |stop| async move { stop.cancelled().await });
    ///     Ok(Router::new().route("/ping", get(|| async { "pong" })))
    /// });
    /// ```
    pub fn setup<F>(mut self, f: F) -> Self
    where
        F: FnOnce(&mut Setup<C>) -> Result<Router, SetupError> + Send + 'static,
    {
        self.setup = Box::new(f);
        self
    }

    /// The service's embedded migrations: `<service> migrate` applies them, `migrate status`
    /// lists them, and [`Setup::database`] checks (production) or applies (development) them.
    /// Keel's own tables come first, each library in a set of its own: the flag overrides
    /// ([`keel_features::migrations`]) and, with the `events` feature, the outbox and inbox
    /// ([`keel_events::outbox::migrations`]).
    #[cfg(feature = "sql")]
    pub fn migrations(mut self, migrations: keel_data::Migrations) -> Self {
        let migrations = migrations.with(keel_features::migrations());
        #[cfg(feature = "events")]
        let migrations = migrations.with(keel_events::outbox::migrations());
        #[cfg(feature = "security")]
        let migrations = if self.audit_log { migrations.with(keel_security::audit::migrations()) } else { migrations };
        #[cfg(feature = "security")]
        let migrations =
            if self.data_keys.is_some() { migrations.with(keel_security::keys::migrations()) } else { migrations };
        self.migrations = Some(Arc::new(migrations));
        self
    }

    /// Declares that the service keeps an audit log ([`Setup::audit_log`]) in its database:
    /// its CLI offers `audit verify` (other services do not offer it and refuse it), and its
    /// migrations create the log's table ([`keel_security::audit::migrations`]).
    #[cfg(all(feature = "sql", feature = "security"))]
    pub fn keeps_audit_log(mut self) -> Self {
        self.audit_log = true;
        // Its table comes with the service's migrations, declared before or after this.
        if let Some(m) = self.migrations.take() {
            self.migrations = Some(match Arc::try_unwrap(m) {
                Ok(m) => Arc::new(m.with(keel_security::audit::migrations())),
                Err(shared) => shared,
            });
        }
        self
    }

    /// Declares that the service keeps its field-encryption data keys in its database, so they
    /// rotate ([`Setup::data_keys`], `security.encryption.rotate_every`), and names every column
    /// that holds values of the keyring: `(table, its text primary key, column)`, moved to each
    /// new key in the background. Its migrations create the key table
    /// ([`keel_security::keys::migrations`]) and its CLI's `keys rotate` and `keys status` work.
    ///
    /// ```
    /// let service = keel_app::Service::new(keel_app::build_info!())
    ///     .migrations(keel_data::Migrations::new())
    ///     .rotates_data_keys([("users", "id", "email_ciphertext")]);
    /// # let _ = service;
    /// ```
    #[cfg(all(feature = "sql", feature = "security"))]
    pub fn rotates_data_keys(
        mut self,
        columns: impl IntoIterator<Item = (&'static str, &'static str, &'static str)>,
    ) -> Self {
        self.data_keys = Some(columns.into_iter().collect());
        if let Some(m) = self.migrations.take() {
            self.migrations = Some(match Arc::try_unwrap(m) {
                Ok(m) => Arc::new(m.with(keel_security::keys::migrations())),
                Err(shared) => shared,
            });
        }
        self
    }

    /// Adds a subcommand of the service's own to its CLI (`<service> <name> …`, listed in
    /// `--help` beside `serve`, `migrate`…). `run` gets the subcommand's matches and the loaded,
    /// validated configuration (the global `--config` and `KEEL_ENV` apply) and returns the exit
    /// code; an invalid configuration exits 78 before `run` is called.
    ///
    /// ```
    /// use std::process::ExitCode;
    ///
    /// let service = keel_app::Service::new(keel_app::build_info!()).command(
    ///     clap::Command::new("greet").about("Print a greeting").arg(clap::Arg::new("who").required(true)),
    ///     |args, _config| {
    ///         println!("hello {}", args.get_one::<String>("who").map_or("", String::as_str));
    ///         ExitCode::SUCCESS
    ///     },
    /// );
    /// # let _ = service;
    /// ```
    pub fn command<F>(mut self, command: clap::Command, run: F) -> Self
    where
        F: FnOnce(&clap::ArgMatches, super::Loaded<C>) -> std::process::ExitCode + Send + 'static,
    {
        self.commands.push((command, Box::new(run)));
        self
    }

    /// Configuration defaults above the built-in ones and below the file and the environment,
    /// as env variables of this service (see [`Loader::defaults`](keel_config::Loader::defaults)); every command
    /// of [`crate::run`] loads with them.
    pub fn config_defaults<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.config_defaults.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Adds a tracing layer of the application's own (an error reporter, `console-subscriber`,
    /// a second exporter) to the process's subscriber, under Keel's: it sees every span
    /// (the `request` span of each HTTP request included) and every event, filtered only by its
    /// own filter (`Layer::with_filter`). Layers take effect when [`crate::run`] sets telemetry
    /// up; a group collects every member's.
    ///
    /// ```
    /// use tracing_subscriber::Layer as _;
    ///
    /// let errors_to_stderr = tracing_subscriber::fmt::layer()
    ///     .with_writer(std::io::stderr)
    ///     .with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
    /// let service = keel_app::Service::new(keel_app::build_info!()).tracing_layer(errors_to_stderr);
    /// # let _ = service;
    /// ```
    pub fn tracing_layer<L>(mut self, layer: L) -> Self
    where
        L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        self.tracing_layers.push(Box::new(layer));
        self
    }

    /// The build info.
    pub fn build_info(&self) -> &BuildInfo {
        &self.build
    }

    /// Renames the service (its env prefix, log `service` field and metric labels).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.build.name = name.into();
        self
    }
}

/// What a set-up function can use and declare.
pub struct Setup<C> {
    pub(crate) name: String,
    /// Set-up runs for `config check`: build everything, connect to nothing, write no file.
    pub(crate) checking: bool,
    #[cfg(feature = "sql")]
    pub(crate) migrations: Option<Arc<keel_data::Migrations>>,
    pub(crate) config: Arc<Config<C>>,
    pub(crate) profile: Profile,
    pub(crate) health: Health,
    pub(crate) metrics: Metrics,
    pub(crate) tasks: Vec<(String, TaskFn)>,
    pub(crate) workers: keel_workers::Workers,
    pub(crate) features: keel_features::Flags,
    pub(crate) hooks: Vec<(String, HookFn)>,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<keel_redis::Redis>,
    #[cfg(feature = "storage")]
    pub(crate) storage: Option<keel_storage::Store>,
    pub(crate) rate_limit_metrics: Option<keel_rate_limit::RateLimitMetrics>,
    pub(crate) breakers: Option<keel_resilience::breaker::Registry>,
    #[cfg(feature = "client")]
    pub(crate) client_metrics: Option<keel_http::client::ClientMetrics>,
    /// Made once per name: asking twice must not double budgets, bulkheads or checks.
    #[cfg(feature = "client")]
    pub(crate) clients: std::collections::BTreeMap<String, keel_http::client::Client>,
    pub(crate) limiters: std::collections::BTreeMap<String, keel_rate_limit::RateLimitLayer>,
    #[cfg(feature = "events")]
    pub(crate) bus: Option<keel_events::Bus>,
    #[cfg(feature = "events")]
    pub(crate) consumer_metrics: Option<keel_events::ConsumerMetrics>,
    /// What `product_figures` counts for the operator page.
    pub(crate) product: Option<std::sync::Arc<dyn keel_management::ops::ProductFigures>>,
    /// The data keys `data_keys` keeps, for the console.
    pub(crate) data_keys: Option<std::sync::Arc<dyn keel_management::ops::DataKeyOps>>,
    /// The columns the service declared with [`Service::rotates_data_keys`].
    #[cfg_attr(not(all(feature = "sql", feature = "security")), allow(dead_code))]
    pub(crate) rotates_data_keys: Option<EncryptedColumns>,
    /// The consumers `consume` runs, for the console's pause and dead letters.
    pub(crate) consumers: Vec<std::sync::Arc<dyn keel_management::ops::ConsumerOps>>,
    #[cfg(all(feature = "events", feature = "sql"))]
    pub(crate) outbox: Option<keel_events::outbox::Outbox>,
    /// The health checks of the connections made in set-up that consumers wait for before they
    /// subscribe (`bus`). Not the database: a consumer subscribes first, so its queue keeps what
    /// is published meanwhile, and takes nothing until its inbox database is up. Read when the
    /// consumer starts, after set-up.
    #[cfg_attr(not(feature = "events"), allow(dead_code))]
    pub(crate) dependencies: Arc<std::sync::Mutex<Vec<String>>>,
    /// The audit log `audit_log` made, served on `/admin/audit`.
    pub(crate) audit: Option<std::sync::Arc<dyn keel_management::audit::AuditSource>>,
    /// The tonic services to serve (`grpc_service`).
    #[cfg(feature = "grpc")]
    pub(crate) grpc: keel_grpc::GrpcServices,
    #[cfg(feature = "grpc")]
    pub(crate) grpc_client_metrics: Option<keel_grpc::GrpcClientMetrics>,
}

impl<C: Section> Setup<C> {
    /// The service's own `app` section.
    pub fn config(&self) -> &C {
        &self.config.app
    }

    /// The whole configuration, shareable with handlers.
    pub fn full_config(&self) -> Arc<Config<C>> {
        self.config.clone()
    }

    /// Whether this set-up runs for `config check`: everything is built and refused as for
    /// `serve`, but nothing will run, so a step with a side effect of its own (making a
    /// directory, writing a file) should skip it. Keel's own steps already do.
    pub fn checking(&self) -> bool {
        self.checking
    }

    /// Keel's sections.
    pub fn keel(&self) -> &KeelConfig {
        &self.config.keel
    }

    /// The service's name (its env prefix: `cityevents-events` → `CITYEVENTS_EVENTS__…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The health registry (to add checks later or read probe state).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The service's metric registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Adds a health check.
    pub fn health_check(&mut self, check: impl HealthCheck) -> &mut Self {
        self.health.add(check);
        self
    }

    /// Runs a background task from start-up until shutdown. The task gets a token that is
    /// cancelled when shutdown reaches background tasks (after in-flight requests drained); it
    /// must then return within `shutdown.timeout`, or the process exits non-zero and names it.
    pub fn task<F, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push((name.into(), Box::new(move |t| Box::pin(f(t)))));
        self
    }

    /// Registers a supervised [`Worker`](keel_workers::Worker): periodic or continuous, restarted
    /// with backoff after a panic, with a `worker:<name>` health check and `worker_*` metrics.
    /// Unlike [`Setup::task`] (a one-shot future), a worker is never left dead: see
    /// [`keel_workers`]. A duplicate name or a zero interval is an error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_workers::Worker;
    ///
    /// let service = keel_app::Service::new(keel_app::build_info!()).setup(|s| {
    ///     s.worker(Worker::periodic("refresh", Duration::from_secs(30), |_ctx| async {
    ///         Ok::<_, std::io::Error>(())
    ///     }))?;
    ///     Ok(axum::Router::new())
    /// });
    /// # let _ = service;
    /// ```
    pub fn worker(&mut self, worker: keel_workers::Worker) -> Result<&mut Self, SetupError> {
        self.workers.add(worker)?;
        Ok(self)
    }

    /// Shows `figures` on the operator page: what users did in the last hour and day (sign-ups,
    /// orders), read at most once a minute and given 2 s. One per service: a second replaces
    /// the first.
    pub fn product_figures(&mut self, figures: impl keel_management::ops::ProductFigures) -> &mut Self {
        self.product = Some(std::sync::Arc::new(figures));
        self
    }

    /// The service's feature flags (`features.file`, hot-reloaded when `features.reload`);
    /// clone it into handlers. Without a file every flag is off.
    ///
    /// ```
    /// use keel_features::EvalContext;
    ///
    /// let service = keel_app::Service::new(keel_app::build_info!()).setup(|s| {
    ///     let flags = s.features().clone();
    ///     let router = axum::Router::new().route("/checkout", axum::routing::get(move || async move {
    ///         if flags.is_enabled("new_checkout", &EvalContext::new().user("42")) { "new" } else { "old" }
    ///     }));
    ///     Ok(router)
    /// });
    /// # let _ = service;
    /// ```
    pub fn features(&self) -> &keel_features::Flags {
        &self.features
    }

    /// The worker registry (to read worker states).
    pub fn workers(&self) -> &keel_workers::Workers {
        &self.workers
    }

    /// The service's circuit-breaker registry (metrics `circuit_breaker_*`).
    pub fn breakers(&mut self) -> Result<keel_resilience::breaker::Registry, SetupError> {
        if self.breakers.is_none() {
            self.breakers = Some(keel_resilience::breaker::Registry::new(self.metrics.registry())?);
        }
        Ok(self.breakers.clone().unwrap_or_default())
    }

    /// A layer applying the rate-limit policy `rate_limits.<name>`, for a router or a route.
    #[cfg_attr(feature = "redis", doc = "A policy with `backend: redis` needs [`Setup::redis`] called first.")]
    #[cfg_attr(
        not(feature = "redis"),
        doc = "A policy with `backend: redis` needs keel's `redis` feature, and `Setup::redis` called first."
    )]
    ///
    /// ```ignore
    /// let limit = s.rate_limit("api")?;
    /// Ok(Router::new().route("/search", get(search)).layer(limit))
    /// ```
    pub fn rate_limit(&mut self, name: &str) -> Result<keel_rate_limit::RateLimitLayer, SetupError> {
        if let Some(layer) = self.limiters.get(name) {
            return Ok(layer.clone());
        }
        let policy = self
            .config
            .keel
            .rate_limits
            .get(name)
            .cloned()
            .ok_or_else(|| misconfigured(&format!("rate_limits.{name}"), "is not configured"))?;
        self.build_rate_limit(name, policy)
    }

    /// Like [`Setup::rate_limit`], with the service's own `default` policy when
    /// `rate_limits.<name>` is not configured; a configured policy replaces it whole. The
    /// limiter shares the metrics, status page and failure-mode defaults of configured ones.
    ///
    /// ```ignore
    /// let signup = RateLimitPolicy { limit: 20, window: Duration::from_secs(600), ..Default::default() };
    /// let limit = s.rate_limit_or("signup", signup)?;
    /// ```
    pub fn rate_limit_or(
        &mut self,
        name: &str,
        default: keel_rate_limit::RateLimitPolicy,
    ) -> Result<keel_rate_limit::RateLimitLayer, SetupError> {
        if let Some(layer) = self.limiters.get(name) {
            return Ok(layer.clone());
        }
        let policy = self.config.keel.rate_limits.get(name).cloned().unwrap_or(default);
        self.build_rate_limit(name, policy)
    }

    fn build_rate_limit(
        &mut self,
        name: &str,
        policy: keel_rate_limit::RateLimitPolicy,
    ) -> Result<keel_rate_limit::RateLimitLayer, SetupError> {
        use keel_rate_limit::{BackendKind, OnBackendError, RateLimitMetrics, RateLimiter};
        if self.rate_limit_metrics.is_none() {
            self.rate_limit_metrics = Some(RateLimitMetrics::new(&self.metrics)?);
        }
        let metrics = self.rate_limit_metrics.as_ref();
        let on_error = policy.on_backend_error.unwrap_or(if self.profile == Profile::Production {
            OnBackendError::FailClosed
        } else {
            OnBackendError::FailOpen
        });
        let mut built = Vec::new();
        let specs =
            policy.limiter_specs(name, on_error).map_err(|e| misconfigured(&format!("rate_limits.{name}"), e))?;
        for spec in specs {
            let limiter = match spec.policy.backend {
                BackendKind::Local => RateLimiter::local(&spec.name, spec.policy, spec.on_error, metrics),
                #[cfg(feature = "redis")]
                BackendKind::Redis => {
                    let redis = self.redis.clone().ok_or_else(|| {
                        format!(
                            "rate_limits.{name} uses the redis backend: call Setup::redis() before Setup::rate_limit()"
                        )
                    })?;
                    RateLimiter::redis_sharing(&spec.name, &spec.counter, spec.policy, spec.on_error, redis, metrics)
                }
                #[cfg(not(feature = "redis"))]
                BackendKind::Redis => {
                    return Err(format!("rate_limits.{name}: this build has no redis support").into());
                }
            };
            built.push((spec.route, std::sync::Arc::new(limiter)));
        }
        let mut built = built.into_iter();
        let (_, own) = built.next().ok_or_else(|| format!("rate_limits.{name}: no limiter was built"))?;
        let rules = built.filter_map(|(route, l)| route.map(|r| (r, l))).collect();
        let layer = keel_rate_limit::RateLimitLayer::with_rules(own, rules, &self.config.keel.http.trusted_proxies);
        self.limiters.insert(name.to_owned(), layer.clone());
        Ok(layer)
    }

    /// Runs `f` at the end of shutdown, after background tasks stopped (close pools, flush
    /// buffers). Hooks run in the order added, all within `shutdown.timeout`.
    pub fn on_shutdown<F, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.push((name.into(), Box::new(move || Box::pin(f()))));
        self
    }
}
