//! Start-up and graceful shutdown of one service.
//!
//! # Shutdown order
//!
//! 1. Readiness answers 503 at once (`shutting down`).
//! 2. Wait `shutdown.drain_delay` while still serving, so load balancers stop sending traffic;
//!    HTTP/1 answers carry `Connection: close` meanwhile, so clients' pooled connections end
//!    after an answer rather than under a request in step 3.
//! 3. Stop accepting: listeners close (new connections are refused); in-flight requests go on.
//! 4. Wait for in-flight requests, within `shutdown.timeout` counted from step 3.
//! 5. Cancel background tasks, workers and health loops and wait for them, within the same
//!    deadline: every worker's `JoinHandle` is awaited; a worker still running at the deadline is
//!    logged by name and aborted.
//! 6. Run `on_shutdown` hooks (close pools), within the same deadline.
//!
//! A second stop signal, or the deadline, forces the end: [`ShutdownError::Forced`] lists
//! what was still running and the process exits non-zero.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::service::{BuildInfo, HookFn, Service, Setup, SetupError, TaskFn};
use super::{KeelConfig, Loaded, ShutdownConfig};
use keel_config::Profile;
use keel_config::{ReloadLog, Section};
use keel_features::{Flags, FlagsOptions};
use keel_health::Health;
use keel_http::{StackError, StackHandle};
use keel_management::status::{self, Identity, Process};
use keel_management::{Admin, SignInCodes};
use keel_telemetry::Metrics;
use keel_workers::Workers;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The service's set-up function failed.
    #[error("service set-up failed: {0}")]
    Setup(SetupError),
    /// The HTTP stack could not be built.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// A metric could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The feature flags file could not be loaded.
    #[error(transparent)]
    Features(#[from] keel_features::FlagsError),
    /// The worker registry could not be set up.
    #[error(transparent)]
    Workers(#[from] keel_workers::WorkerError),
    /// The management address cannot be derived from the configuration.
    #[error("management.addr is needed: http.port + 1000 is past 65535")]
    ManagementAddr,
    /// A file of `http.tls` cannot be read or used.
    #[error(transparent)]
    Tls(#[from] keel_tls::TlsError),
    /// The gRPC side could not be built.
    #[cfg(feature = "grpc")]
    #[error(transparent)]
    Grpc(#[from] keel_grpc::GrpcError),
    /// gRPC would be served in plaintext in production without `grpc.plaintext`.
    #[error("{0}")]
    Plaintext(&'static str),
}

impl StartError {
    /// Whether the configuration is at fault (exit [`exit::CONFIG`](super::exit::CONFIG)) rather
    /// than the environment (exit [`exit::START`](super::exit::START)): a set-up step that
    /// returned a [`ConfigError`](keel_config::ConfigError), a feature-flags file that does not
    /// load, or a management address the configuration cannot give.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Setup(e) => e.is::<keel_config::ConfigError>(),
            Self::Features(_) | Self::ManagementAddr | Self::Tls(_) | Self::Plaintext(_) => true,
            #[cfg(feature = "grpc")]
            Self::Grpc(keel_grpc::GrpcError::Reflection(_)) => true,
            _ => false,
        }
    }
}

/// Why shutdown was not clean.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// Shutdown was cut short; the process should exit non-zero.
    #[error("shutdown forced ({reason}): {in_flight} request(s) in flight, still running: [{}]", .still_running.join(", "))]
    Forced {
        /// A second signal, or the timeout.
        reason: &'static str,
        /// HTTP requests still being handled.
        in_flight: usize,
        /// Background tasks and hooks that had not finished.
        still_running: Vec<String>,
    },
}

/// Names of the background tasks that are still running.
#[derive(Clone, Default)]
struct Tasks {
    next: Arc<AtomicU64>,
    live: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Tasks {
    fn spawn(&self, tracker: &TaskTracker, name: String, fut: impl Future<Output = ()> + Send + 'static) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.live.lock() {
            l.insert(id, name.clone());
        }
        let live = self.live.clone();
        tracker.spawn(async move {
            struct Done(Arc<Mutex<BTreeMap<u64, String>>>, u64);
            impl Drop for Done {
                fn drop(&mut self) {
                    if let Ok(mut l) = self.0.lock() {
                        l.remove(&self.1);
                    }
                }
            }
            let _done = Done(live, id);
            fut.await;
            tracing::debug!(task = %name, "background task finished");
        });
    }

    fn names(&self) -> Vec<String> {
        self.live.lock().map(|l| l.values().cloned().collect()).unwrap_or_default()
    }
}

/// A started service.
pub struct Running {
    name: String,
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    health: Health,
    metrics: Metrics,
    shutdown_cfg: ShutdownConfig,
    stop_accepting: CancellationToken,
    /// Cancelled when shutdown begins (see `keel_server::Limits::closing_on`).
    draining: CancellationToken,
    stop_tasks: CancellationToken,
    server_failed: CancellationToken,
    tracker: TaskTracker,
    tasks: Tasks,
    workers: Workers,
    servers: Vec<JoinHandle<()>>,
    hooks: Vec<(String, HookFn)>,
    stack: StackHandle,
    sign_in: Option<SignInCodes>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .field("http_addr", &self.http_addr)
            .field("management_addr", &self.management_addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public listener's bound address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The gRPC listener's bound address: `grpc.port`'s, or the public one when gRPC shares it;
    /// `None` when the service serves no gRPC.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The management listener's bound address (the public one when they share it).
    pub fn management_addr(&self) -> SocketAddr {
        self.management_addr.unwrap_or(self.http_addr)
    }

    /// A one-time link that signs a browser in to this service's operator page
    /// (`http://<management>/admin/login?code=…`, valid once for an hour), or `None` when no
    /// `management.admin_token` is set. A launcher prints it; each call makes a new one.
    pub fn sign_in_link(&self) -> Option<String> {
        let codes = self.sign_in.as_ref()?;
        let mut addr = self.management_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Some(format!("http://{addr}/admin/login?code={}", codes.issue()))
    }

    /// The health registry.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The metric registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The worker registry.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// Completes if a listener stops on its own (an accept loop failed).
    pub fn failed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.server_failed.clone().cancelled_owned()
    }

    /// Shuts down gracefully (see the module docs); `force` completing (a second signal) cuts it
    /// short.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future part-way leaves the service half stopped. Use
    /// `force` to cut it short instead.
    pub async fn shutdown(mut self, force: impl Future<Output = ()>) -> Result<(), ShutdownError> {
        let stack = self.stack.clone();
        let stack_in_graceful = stack.clone();
        let tasks = self.tasks.clone();
        let workers = self.workers.clone();
        let servers_abort: Vec<_> = self.servers.iter().map(JoinHandle::abort_handle).collect();
        let stop_tasks = self.stop_tasks.clone();
        let running_hook = Arc::new(Mutex::new(None::<String>));
        let hook_name = running_hook.clone();

        let graceful = async move {
            self.health.set_shutting_down();
            self.draining.cancel();
            tracing::info!(
                service = %self.name,
                drain_delay_ms = self.shutdown_cfg.drain_delay.as_millis() as u64,
                "shutdown started: readiness is down"
            );
            tokio::time::sleep(self.shutdown_cfg.drain_delay).await;
            self.stop_accepting.cancel();
            tracing::info!(service = %self.name, in_flight = stack_in_graceful.in_flight(), "stopped accepting connections; draining");
            let deadline = Instant::now() + self.shutdown_cfg.timeout;
            let servers = futures_util::future::join_all(std::mem::take(&mut self.servers));
            if tokio::time::timeout_at(deadline, servers).await.is_err() {
                return Err("timeout");
            }
            self.stop_tasks.cancel();
            self.tracker.close();
            let (tracked, late) =
                tokio::join!(tokio::time::timeout_at(deadline, self.tracker.wait()), self.workers.join(deadline));
            if tracked.is_err() || !late.is_empty() {
                return Err("timeout");
            }
            for (name, hook) in std::mem::take(&mut self.hooks) {
                if let Ok(mut h) = hook_name.lock() {
                    *h = Some(name.clone());
                }
                if tokio::time::timeout_at(deadline, hook()).await.is_err() {
                    return Err("timeout");
                }
            }
            if let Ok(mut h) = hook_name.lock() {
                *h = None;
            }
            tracing::info!(service = %self.name, "shutdown complete");
            Ok(())
        };
        let reason = tokio::select! {
            r = graceful => match r {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            },
            () = force => "second signal",
        };
        let in_flight = stack.in_flight();
        let mut still_running = tasks.names();
        if let Some(h) = running_hook.lock().ok().and_then(|h| h.clone()) {
            still_running.push(format!("on_shutdown hook {h}"));
        }
        stop_tasks.cancel();
        still_running.extend(workers.abort_all().into_iter().map(|w| format!("worker {w}")));
        for a in servers_abort {
            a.abort();
        }
        Err(ShutdownError::Forced { reason, in_flight, still_running })
    }
}

/// What set-up built, before anything listens or runs.
struct Assembled {
    base: Base,
    declared: Declared,
    router: Router,
    stack: StackHandle,
}

/// Runs everything [`start`] runs before it binds a listener — the service's set-up, the HTTP
/// stack, the management router and address — and drops the result: nothing listens, connects
/// or runs. `config check` uses it, so a configuration it passes is one `serve` accepts.
///
/// Must run inside a Tokio runtime (set-up may build clients that need one).
pub async fn check<C: Section>(service: Service<C>, loaded: Loaded<C>) -> Result<(), StartError> {
    #[cfg(feature = "client")]
    keel_http::client::install_tls_provider();
    check_assembled(assemble(service, loaded, true)?)
}

// The rest of `check` and `start_in` takes no `C`: compiled once here, not once per
// service's config type in every binary.
fn check_assembled(a: Assembled) -> Result<(), StartError> {
    let http_addr = a.base.keel.http_addr();
    let mgmt_addr = a.base.keel.management_addr().ok_or(StartError::ManagementAddr)?;
    let shared = mgmt_addr == http_addr && http_addr.port() != 0;
    let (management, _) = management_router(&a, &Process::default(), !shared);
    if shared {
        // The same merge `start` makes: a service route on /metrics or /admin/* is refused here too.
        let _merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| management.merge(a.router.clone())))
            .map_err(|_| StartError::Stack(StackError::RouteConflict))?;
    }
    Ok(())
}

fn assemble<C: Section>(service: Service<C>, loaded: Loaded<C>, checking: bool) -> Result<Assembled, StartError> {
    let config_yaml = keel_telemetry::mask::scrub(&loaded.to_yaml()).into_owned();
    let has_database = service.has_database();
    let config = Arc::new(loaded.config);
    let base = Base::new(service.build.clone(), config.keel.clone(), loaded.profile, service.default_flags)?;
    let mut setup = Setup {
        name: base.build.name.clone(),
        checking,
        #[cfg(feature = "sql")]
        migrations: service.migrations.clone(),
        config,
        profile: loaded.profile,
        health: base.health.clone(),
        metrics: base.metrics.clone(),
        tasks: Vec::new(),
        workers: base.workers.clone(),
        features: base.flags.clone(),
        hooks: Vec::new(),
        #[cfg(feature = "redis")]
        redis: None,
        #[cfg(feature = "storage")]
        storage: None,
        rate_limit_metrics: None,
        breakers: None,
        #[cfg(feature = "client")]
        client_metrics: None,
        #[cfg(feature = "client")]
        clients: std::collections::BTreeMap::new(),
        limiters: std::collections::BTreeMap::new(),
        #[cfg(feature = "events")]
        bus: None,
        #[cfg(feature = "events")]
        consumer_metrics: None,
        consumers: Vec::new(),
        data_keys: None,
        rotates_data_keys: service.data_keys.clone(),
        product: None,
        #[cfg(all(feature = "events", feature = "sql"))]
        outbox: None,
        dependencies: Arc::default(),
        audit: None,
        #[cfg(feature = "grpc")]
        grpc: keel_grpc::GrpcServices::default(),
        #[cfg(feature = "grpc")]
        grpc_client_metrics: None,
    };
    let api = (service.setup)(&mut setup).map_err(StartError::Setup)?;
    flag_sync(&mut setup)?;
    let summary = summary(&setup, has_database);
    let declared = Declared {
        #[cfg(feature = "grpc")]
        grpc: std::mem::take(&mut setup.grpc),
        tasks: setup.tasks,
        hooks: setup.hooks,
        breakers: setup.breakers,
        limiters: setup.limiters,
        audit: setup.audit,
        consumers: setup.consumers,
        data_keys: setup.data_keys,
        product: setup.product,
        summary,
        config_yaml,
    };
    base.finish(api, declared)
}

/// Checks that the flags' override store is the one `features.store.kind` asks for and, when it
/// is shared (a database or Redis), declares the task that follows it.
fn flag_sync<C: Section>(setup: &mut Setup<C>) -> Result<(), StartError> {
    use keel_features::StoreKind;
    let cfg = setup.config.keel.features.store.clone();
    let have = setup.features.store_kind();
    let wanted = match cfg.kind {
        StoreKind::Database => Some(("database", "a service with a database (Setup::database)")),
        StoreKind::Redis => Some(("redis", "a service with Redis (Setup::redis)")),
        StoreKind::Auto | StoreKind::Memory => None,
    };
    if let Some((kind, needs)) = wanted
        && have != kind
    {
        return Err(StartError::Setup(Box::new(keel_config::ConfigError::invalid(
            "features.store.kind",
            format!("`{kind}` needs {needs}"),
        ))));
    }
    if have != "memory" {
        let flags = setup.features.clone();
        setup.task("feature-flags-sync", move |stop| flags.sync(cfg.poll_interval, stop));
    }
    Ok(())
}

/// What [`assemble`] makes before the service's set-up runs; with [`Base::finish`], everything
/// of it that does not depend on the service's config type, compiled once in this crate.
struct Base {
    build: BuildInfo,
    profile: Profile,
    keel: KeelConfig,
    started_at: std::time::SystemTime,
    started: std::time::Instant,
    health: Health,
    metrics: Metrics,
    workers: Workers,
    flags: Flags,
    reloads: ReloadLog,
}

/// What the service's set-up declared, taken out of its [`Setup`].
struct Declared {
    #[cfg(feature = "grpc")]
    grpc: keel_grpc::GrpcServices,
    tasks: Vec<(String, TaskFn)>,
    hooks: Vec<(String, HookFn)>,
    breakers: Option<keel_resilience::breaker::Registry>,
    limiters: std::collections::BTreeMap<String, keel_rate_limit::RateLimitLayer>,
    audit: Option<Arc<dyn keel_management::audit::AuditSource>>,
    consumers: Vec<Arc<dyn keel_management::ops::ConsumerOps>>,
    data_keys: Option<Arc<dyn keel_management::ops::DataKeyOps>>,
    product: Option<Arc<dyn keel_management::ops::ProductFigures>>,
    summary: Vec<(String, String)>,
    config_yaml: String,
}

impl Base {
    fn new(
        build: BuildInfo,
        keel: KeelConfig,
        profile: Profile,
        default_flags: Option<&'static str>,
    ) -> Result<Self, StartError> {
        let (started_at, started) = (std::time::SystemTime::now(), std::time::Instant::now());
        let metrics = Metrics::for_service(&build.name, &build.version, &build.commit)?;
        let health =
            Health::new(keel.health.interval, keel.health.ttl, Some(&metrics)).startup_grace(keel.health.startup_grace);
        let workers = Workers::new(Some(&metrics), Some(&health))?;
        let reloads = ReloadLog::default();
        let mut flag_options = FlagsOptions::new(profile.as_str()).metrics(&metrics).reloads(reloads.clone());
        if let Some(yaml) = default_flags {
            flag_options = flag_options.defaults(yaml);
        }
        let flags = match &keel.features.file {
            Some(file) => Flags::open(file, flag_options)?,
            None => Flags::empty(flag_options)?,
        };
        Ok(Self { build, profile, keel, started_at, started, health, metrics, workers, flags, reloads })
    }

    fn finish(self, api: Router, d: Declared) -> Result<Assembled, StartError> {
        #[cfg(feature = "grpc")]
        if !d.grpc.is_empty() {
            plaintext_check(&self.keel, self.profile)?;
        }
        let (router, stack) = keel_http::stack(
            &self.build.name,
            &self.keel,
            &self.metrics,
            api,
            keel_health::router(self.health.clone()),
        )?;
        Ok(Assembled { base: self, declared: d, router, stack })
    }
}

/// Production refuses gRPC without TLS on its listener unless `grpc.plaintext` says the
/// network encrypts.
#[cfg(feature = "grpc")]
fn plaintext_check(keel: &KeelConfig, profile: Profile) -> Result<(), StartError> {
    let encrypted = if keel.grpc.port.is_some() { keel.grpc.tls.enabled() } else { keel.http.tls.enabled() };
    if profile == Profile::Production && !encrypted && !keel.grpc.plaintext {
        return Err(StartError::Plaintext(
            "gRPC in plaintext in production: set grpc.tls (with grpc.port) or http.tls, or grpc.plaintext: true when a mesh or the network encrypts",
        ));
    }
    Ok(())
}

/// The settings worth a glance on the status page, secrets and passwords in URLs masked.
fn summary<C: Section>(s: &Setup<C>, has_database: bool) -> Vec<(String, String)> {
    let k = &s.config.keel;
    let mut out: Vec<(String, String)> = Vec::new();
    #[cfg(feature = "sql")]
    if has_database {
        // Described, not resolved: resolving the SQLite default makes its directory.
        let url = match &k.database.url {
            Some(u) => keel_telemetry::mask::scrub(u.expose()).into_owned(),
            None if s.profile == Profile::Production => "(not set)".to_owned(),
            None => format!("sqlite://data/{}.db (the default outside production)", s.name),
        };
        out.push(("database".into(), url));
    }
    #[cfg(not(feature = "sql"))]
    let _ = has_database;
    #[cfg(feature = "events")]
    if s.bus.is_some() {
        let backend = serde_json::to_value(k.bus.backend).ok().and_then(|v| v.as_str().map(str::to_owned));
        let url = k.bus.url.as_ref().map(|u| keel_telemetry::mask::scrub(u.expose()).into_owned());
        out.push(("bus".into(), [backend, url].into_iter().flatten().collect::<Vec<_>>().join(" ")));
    }
    #[cfg(feature = "redis")]
    if s.redis.is_some() {
        let url =
            k.redis.url.as_ref().map_or_else(String::new, |u| keel_telemetry::mask::scrub(u.expose()).into_owned());
        out.push(("redis".into(), url));
    }
    #[cfg(feature = "grpc")]
    if !s.grpc.is_empty() {
        let port = k.grpc.port.map_or_else(|| "the public port".to_owned(), |p| format!("port {p}"));
        let reflection = if k.grpc.reflection { ", reflection on" } else { "" };
        out.push(("gRPC".into(), format!("{} on {port}{reflection}", s.grpc.names().join(", "))));
    }
    out.push(("log".into(), format!("{} ({:?})", k.log.level, k.log.format).to_lowercase()));
    out.push((
        "traces".into(),
        k.telemetry.otlp.endpoint.as_deref().map_or_else(
            || "off (telemetry.otlp.endpoint unset)".into(),
            |e| keel_telemetry::mask::scrub(e).into_owned(),
        ),
    ));
    if let Some(file) = &k.features.file {
        out.push(("feature flags".into(), file.display().to_string()));
    }
    out.push((
        "admin token".into(),
        if k.management.admin_token.is_some() { "set".into() } else { "not set (admin is closed)".into() },
    ));
    out
}

fn management_router(a: &Assembled, process: &Process, own_listener: bool) -> (Router, Admin) {
    let (b, d) = (&a.base, &a.declared);
    let sources = status::Sources {
        identity: Identity {
            name: b.build.name.clone(),
            version: b.build.version.clone(),
            commit: b.build.commit.clone(),
            build: b.build.profile.clone(),
        },
        profile: b.profile,
        started_at: b.started_at,
        started: b.started,
        health: b.health.clone(),
        breakers: d.breakers.clone(),
        limiters: d.limiters.values().flat_map(|l| l.limiters().cloned()).collect(),
        workers: b.workers.clone(),
        flags: b.flags.clone(),
        reloads: b.reloads.clone(),
        metrics: b.metrics.clone(),
        failures: a.stack.recent_failures().clone(),
        product: d.product.clone().map(status::Product::new),
        traffic: status::Traffic::new(b.metrics.clone()),
        upstreams: b.keel.upstreams.iter().map(|(name, u)| (name.clone(), u.base_url.clone())).collect(),
        summary: d.summary.clone(),
        config_yaml: d.config_yaml.clone(),
        listeners: Arc::default(),
    };
    let mut admin = Admin::new(b.keel.management.admin_token.clone(), sources, process.clone());
    if let Some(audit) = &d.audit {
        admin = admin.with_audit(audit.clone());
    }
    admin = admin.with_consumers(d.consumers.clone());
    if let Some(keys) = &d.data_keys {
        admin = admin.with_data_keys(keys.clone());
    }
    (admin.router(b.metrics.clone(), own_listener), admin)
}

/// Builds and starts a service on a loaded configuration: runs its set-up, binds its
/// listeners, starts health checks and background tasks, and marks start-up finished.
///
/// Must run inside a Tokio runtime. Telemetry is the caller's ([`keel_telemetry::init`]).
pub async fn start<C: Section>(service: Service<C>, loaded: Loaded<C>) -> Result<Running, StartError> {
    start_in(service, loaded, &Process::default()).await
}

/// [`start`] as a member of `process`: its status page shows the other members, and theirs
/// show it.
pub(crate) async fn start_in<C: Section>(
    service: Service<C>,
    loaded: Loaded<C>,
    process: &Process,
) -> Result<Running, StartError> {
    // One rustls crypto provider for the whole process, before anything builds a TLS client.
    #[cfg(feature = "client")]
    keel_http::client::install_tls_provider();
    start_assembled(assemble(service, loaded, false)?, process).await
}

async fn start_assembled(a: Assembled, process: &Process) -> Result<Running, StartError> {
    let http_addr = a.base.keel.http_addr();
    let mgmt_addr = a.base.keel.management_addr().ok_or(StartError::ManagementAddr)?;
    let shared = mgmt_addr == http_addr && http_addr.port() != 0;
    let (management, admin) = management_router(&a, process, !shared);
    let Assembled { base, declared, router, stack } = a;
    let Base { build, profile, keel, health, metrics, workers, flags, .. } = base;
    let Declared {
        tasks: declared,
        hooks,
        #[cfg(feature = "grpc")]
        grpc,
        ..
    } = declared;
    let loaded_profile = profile;

    // The TLS files are read and checked before anything listens.
    let tls = keel_tls::Acceptor::new(&keel.http.tls)?;
    let reuse_port = keel.http.reuse_port;
    let (http_listener, bound_http) = bind(http_addr, reuse_port, reuse_port).await?;
    let stop_accepting = CancellationToken::new();
    let server_failed = CancellationToken::new();
    let refused = keel_server::refused_counter()?;
    metrics.register(refused.clone())?;
    let evicted = keel_server::evicted_counter()?;
    metrics.register(evicted.clone())?;
    // Cancelled as the drain begins: HTTP/1 answers close their connections from then on.
    let draining = CancellationToken::new();
    let limits = keel_server::Limits::new(&keel.http, refused).counting_evictions(evicted).closing_on(draining.clone());
    let mut servers = Vec::new();
    let mut bound_mgmt = None;
    let router = if shared {
        // `merge` keeps its argument's fallback: the API's, with the full stack. A service route
        // on /metrics or /admin/* is a conflict reported as a start-up error, not a panic.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| management.merge(router)))
            .map_err(|_| StartError::Stack(StackError::RouteConflict))?
    } else {
        // Probes, scrapes and the operator page answer while the service starts: never deferred.
        let (l, addr) = bind(mgmt_addr, reuse_port, false).await?;
        bound_mgmt = Some(addr);
        servers.push(serve(
            l,
            &health,
            management.with_state(()),
            limits.clone(),
            &stop_accepting,
            &server_failed,
            "management",
        ));
        router
    };
    // The management listener stays plaintext (probes and scrapes come from inside the cluster);
    // sharing the port, its routes are served over TLS with the rest.
    let http_limits = match &tls {
        Some(acceptor) => limits.clone().with_tls(acceptor.clone()),
        None => limits.clone(),
    };
    let stop_tasks = CancellationToken::new();
    // `tls_certificate_expiry_timestamp_seconds`, registered with the first TLS listener.
    let mut tls_expiry: Option<prometheus::IntGaugeVec> = None;
    #[cfg_attr(not(feature = "grpc"), allow(unused_mut))]
    let mut grpc_addr = None;
    #[cfg_attr(not(feature = "grpc"), allow(unused_mut))]
    let mut grpc_tasks: Vec<(String, BoxTask)> = Vec::new();
    #[cfg(feature = "grpc")]
    let public = if grpc.is_empty() {
        Public::Http(router)
    } else {
        // Open response streams end when the listeners stop accepting (shutdown step 3).
        let server = keel_grpc::GrpcServer::build(
            &build.name,
            &keel.grpc,
            keel.log.access_log,
            &metrics,
            &health,
            grpc,
            stop_accepting.clone(),
        )?;
        let keel_grpc::GrpcServer { router: grpc_router, health: mut sync, .. } = server;
        // grpc.health.v1 answers with readiness from the first call on.
        sync.sync().await;
        grpc_tasks.push(("grpc-health".into(), Box::pin(sync.run(stop_tasks.child_token()))));
        match keel.grpc_addr() {
            None => {
                grpc_addr = Some(bound_http);
                Public::Both(keel_grpc::Dispatch::new(router, grpc_router))
            }
            Some(addr) => {
                let grpc_tls = keel_tls::Acceptor::for_section(&keel.grpc.tls, "grpc.tls")?;
                let (l, bound) = bind(addr, reuse_port, reuse_port).await?;
                grpc_addr = Some(bound);
                let grpc_limits = match &grpc_tls {
                    Some(acceptor) => limits.clone().with_tls(acceptor.clone()),
                    None => limits.clone(),
                };
                if let Some(acceptor) = grpc_tls {
                    let reload = tls_reload(&metrics, &mut tls_expiry, "grpc", acceptor, &stop_tasks)?;
                    grpc_tasks.push(("grpc-tls-reload".into(), reload));
                }
                servers.push(serve(
                    l,
                    &health,
                    grpc_router.with_state(()),
                    grpc_limits,
                    &stop_accepting,
                    &server_failed,
                    "grpc",
                ));
                Public::Http(router)
            }
        }
    };
    #[cfg(not(feature = "grpc"))]
    let public = Public::Http(router);
    servers.push(match public {
        Public::Http(router) => {
            serve(http_listener, &health, router.with_state(()), http_limits, &stop_accepting, &server_failed, "http")
        }
        #[cfg(feature = "grpc")]
        Public::Both(dispatch) => {
            serve(http_listener, &health, dispatch, http_limits, &stop_accepting, &server_failed, "http")
        }
    });

    let tracker = TaskTracker::new();
    let tasks = Tasks::default();
    // Background work runs in a span naming the service, like its requests (`service` field):
    // several services in one process keep their own log levels (see `Group`).
    let member = tracing::info_span!(target: keel_telemetry::SCOPE_TARGET, "service", service = %build.name);
    member.in_scope(|| health.spawn(&tracker, &stop_tasks));
    if let Some(acceptor) = tls {
        let reload = tls_reload(&metrics, &mut tls_expiry, "http", acceptor, &stop_tasks)?;
        tasks.spawn(&tracker, "tls-reload".into(), reload.instrument(member.clone()));
    }
    for (name, task) in grpc_tasks {
        tasks.spawn(&tracker, name, task.instrument(member.clone()));
    }
    for (name, task) in declared {
        tasks.spawn(&tracker, name, task(stop_tasks.child_token()).instrument(member.clone()));
    }
    member.in_scope(|| workers.start(&stop_tasks));
    // The status page's traffic rates compare readings of the metrics.
    let sampling = admin.sources().traffic.clone().sample(stop_tasks.child_token());
    tasks.spawn(&tracker, "status-traffic".into(), sampling);
    admin.serving(status::Bound { http: bound_http, management: bound_mgmt.unwrap_or(bound_http), grpc: grpc_addr });
    if keel.features.reload && flags.file().is_some() {
        let watch = flags.clone().watch(keel.features.poll_interval, stop_tasks.child_token());
        tasks.spawn(&tracker, "feature-flags-watch".into(), watch);
    }
    health.set_started();
    tracing::info!(
        service = %build.name,
        version = %build.version,
        profile = %loaded_profile,
        http = %bound_http,
        management = %bound_mgmt.unwrap_or(bound_http),
        grpc = grpc_addr.map(tracing::field::display),
        "listening"
    );
    Ok(Running {
        name: build.name,
        http_addr: bound_http,
        grpc_addr,
        management_addr: bound_mgmt,
        health,
        metrics,
        shutdown_cfg: keel.shutdown.clone(),
        stop_accepting,
        draining,
        stop_tasks,
        server_failed,
        tracker,
        tasks,
        workers,
        servers,
        hooks,
        stack,
        sign_in: admin.sign_in_codes().cloned(),
    })
}

/// The reload task of `listener`'s TLS files, keeping its certificate's expiry in
/// `tls_certificate_expiry_timestamp_seconds{listener}` (registered in `slot` on first use).
fn tls_reload(
    metrics: &Metrics,
    slot: &mut Option<prometheus::IntGaugeVec>,
    listener: &'static str,
    tls: keel_tls::Acceptor,
    stop: &CancellationToken,
) -> Result<BoxTask, StartError> {
    let family = match slot {
        Some(g) => g.clone(),
        None => {
            let g = prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "tls_certificate_expiry_timestamp_seconds",
                    "When the certificate a TLS listener serves expires (its notAfter), in Unix seconds.",
                ),
                &["listener"],
            )?;
            metrics.register(g.clone())?;
            slot.insert(g).clone()
        }
    };
    let gauge = family.with_label_values(&[listener]);
    let export = move |tls: &keel_tls::Acceptor| {
        if let Some(at) = tls.not_after() {
            gauge.set(at);
        }
    };
    export(&tls);
    Ok(Box::pin(tls.watch_then(stop.child_token(), export)))
}

/// A background task, boxed.
type BoxTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the public listener serves.
enum Public {
    /// The HTTP routes.
    Http(Router),
    /// The HTTP routes and, for gRPC content types, the gRPC services.
    #[cfg(feature = "grpc")]
    Both(keel_grpc::Dispatch),
}

/// A bound listener: listening, or (`http.reuse_port`) bound and waiting for the service's
/// first readiness before it listens, so a replacement takes no connection it cannot serve.
enum Bound {
    Listening(TcpListener),
    WhenReady(tokio::net::TcpSocket),
}

/// The backlog of a listener (tokio's own for `TcpListener::bind`).
const BACKLOG: u32 = 1024;

/// Binds `addr`, with `SO_REUSEPORT` when `reuse_port` (listening at once unless `defer`).
async fn bind(addr: SocketAddr, reuse_port: bool, defer: bool) -> Result<(Bound, SocketAddr), StartError> {
    let failed = |source| StartError::Bind { addr, source };
    if !reuse_port {
        let l = TcpListener::bind(addr).await.map_err(failed)?;
        let bound = l.local_addr().map_err(failed)?;
        return Ok((Bound::Listening(l), bound));
    }
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(failed)?;
    // As `TcpListener::bind` does, plus the port shared with a replacement.
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.set_reuseport(true).map_err(failed)?;
    socket.bind(addr).map_err(failed)?;
    let bound = socket.local_addr().map_err(failed)?;
    if defer {
        return Ok((Bound::WhenReady(socket), bound));
    }
    Ok((Bound::Listening(socket.listen(BACKLOG).map_err(failed)?), bound))
}

/// Waits until readiness first answers up (or degraded); `false` if `stop` comes first.
async fn first_ready(health: &Health, stop: &CancellationToken) -> bool {
    let mut changes = health.subscribe();
    loop {
        if health.report(keel_health::Kind::Readiness).status != keel_health::Status::Down {
            return true;
        }
        // A result going stale is not announced: look again now and then as well.
        tokio::select! {
            () = stop.cancelled() => return false,
            changed = changes.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn serve<S>(
    listener: Bound,
    health: &Health,
    service: S,
    limits: keel_server::Limits,
    stop: &CancellationToken,
    failed: &CancellationToken,
    which: &'static str,
) -> JoinHandle<()>
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let stop = stop.clone();
    let failed = failed.clone();
    let health = health.clone();
    tokio::spawn(async move {
        let listener = match listener {
            Bound::Listening(l) => l,
            Bound::WhenReady(socket) => {
                if !first_ready(&health, &stop).await {
                    return;
                }
                match socket.listen(BACKLOG) {
                    Ok(l) => {
                        tracing::info!(listener = which, "ready: accepting connections (http.reuse_port)");
                        l
                    }
                    Err(e) => {
                        tracing::error!(listener = which, error = %e, "cannot listen");
                        failed.cancel();
                        return;
                    }
                }
            }
        };
        keel_server::serve_service(listener, service, limits, stop.clone()).await;
        if !stop.is_cancelled() {
            tracing::error!(listener = which, "listener stopped unexpectedly");
            failed.cancel();
        }
    })
}

/// How long [`crate::run`] lets the runtime finish leftover tasks after a forced shutdown.
pub(crate) const RUNTIME_GRACE: Duration = Duration::from_millis(250);
