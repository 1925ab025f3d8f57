//! Keel's sections as one [`KeelConfig`], the management and shutdown sections, and the rules
//! that span sections.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Aggregate, Profile, Reader, Section, Validation};
use keel_data::DatabaseConfig;
use keel_events::{BusConfig, OutboxConfig};
use keel_features::FeaturesConfig;
use keel_grpc::GrpcConfig;
use keel_health::HealthConfig;
use keel_http::client::UpstreamConfig;
use keel_http::cors::CorsConfig;
use keel_http::{HttpConfig, StackConfig};
use keel_management::ManagementConfig;
use keel_rate_limit::RateLimitPolicy;
use keel_redis::RedisConfig;
use keel_security::SecurityConfig;
use keel_storage::StorageConfig;
use keel_telemetry::{LogConfig, LogFormat, TelemetryConfig};

/// Loads a service's configuration: Keel's sections and the service's own (see [`keel_config`]).
///
/// ```
/// use keel_app::Loader;
/// use keel_config::{NoConfig, Profile};
///
/// let loaded = Loader::new("hello", Profile::Production)
///     .env([("HELLO__CORS__ALLOWED_ORIGINS", "https://app.example"), ("HELLO__HTTP__PORT", "9000")])
///     .load::<NoConfig>()
///     .unwrap();
/// assert_eq!(loaded.config.keel.http.port, 9000);
///
/// let err = Loader::new("hello", Profile::Production)
///     .env([("HELLO__HTTP__PROT", "1"), ("HELLO__LOG__LEVEL", "trace")])
///     .load::<NoConfig>()
///     .unwrap_err();
/// let text = err.to_string();
/// assert!(text.contains("unknown key `http.prot`"));
/// assert!(text.contains("cors.allowed_origins"));
/// assert!(text.contains("log.level"));
///
/// // Settings a launcher gives beneath the file and the environment.
/// let loaded = Loader::new("api", Profile::Test)
///     .defaults([("API__HTTP__PORT", "8081"), ("API__LOG__LEVEL", "debug")])
///     .env([("API__HTTP__PORT", "9000")])
///     .load::<NoConfig>()
///     .unwrap();
/// assert_eq!(loaded.config.keel.http.port, 9000); // the environment wins
/// assert_eq!(loaded.config.keel.log.level, "debug");
/// ```
pub type Loader = keel_config::Loader<KeelConfig>;
/// A loaded configuration and what is known about it.
pub type Loaded<C> = keel_config::Loaded<KeelConfig, C>;
/// The whole effective configuration: Keel's sections and the service's (`app`).
pub type Config<C> = keel_config::Config<KeelConfig, C>;

/// Keel's own sections: everything at the top level of the config file except `app`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct KeelConfig {
    /// The public (API and probes) listener.
    pub http: HttpConfig,
    /// gRPC services (`Setup::grpc_service`): their listener and limits.
    pub grpc: GrpcConfig,
    /// The management listener (metrics, admin).
    pub management: ManagementConfig,
    /// Cross-origin resource sharing.
    pub cors: CorsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The async runtime.
    pub runtime: RuntimeConfig,
    /// Tracing export.
    pub telemetry: TelemetryConfig,
    /// Health-check scheduling.
    pub health: HealthConfig,
    /// The SQL database, for services that declare one.
    pub database: DatabaseConfig,
    /// Redis, for services that declare it.
    pub redis: RedisConfig,
    /// The object store, for services that declare one (`Setup::storage`).
    pub storage: StorageConfig,
    /// Named rate-limit policies (`Setup::rate_limit("<name>")`).
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    /// Named upstream HTTP services (`Setup::http_client("<name>")`).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// JWT, passwords, field encryption.
    pub security: SecurityConfig,
    /// The message bus, for services that publish or consume events (`Setup::bus`).
    pub bus: BusConfig,
    /// The transactional outbox relay (`Setup::outbox`).
    pub outbox: OutboxConfig,
    /// Feature flags (`keel_features`).
    pub features: FeaturesConfig,
}

impl KeelConfig {
    /// The defaults for a profile: pretty logs and no drain delay in development, JSON logs and a
    /// 5 s drain delay in production.
    pub fn for_profile(profile: Profile) -> Self {
        let prod = profile == Profile::Production;
        let mut log = LogConfig::default();
        log.format = if profile == Profile::Development { LogFormat::Pretty } else { LogFormat::Json };
        let mut database = DatabaseConfig::default();
        database.auto_migrate = !prod;
        // A developer's machine serves itself: nothing on the network reaches a service in the
        // development profile unless `http.addr` says so. Containers (test, production) need
        // every interface.
        let mut http = HttpConfig::default();
        if profile == Profile::Development {
            http.addr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        }
        Self {
            http,
            grpc: GrpcConfig::default(),
            management: ManagementConfig::default(),
            cors: CorsConfig::default(),
            log,
            shutdown: ShutdownConfig {
                drain_delay: if prod { Duration::from_secs(5) } else { Duration::ZERO },
                ..ShutdownConfig::default()
            },
            runtime: RuntimeConfig::default(),
            telemetry: TelemetryConfig::default(),
            health: HealthConfig::default(),
            database,
            redis: RedisConfig::default(),
            storage: StorageConfig::default(),
            rate_limits: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            bus: BusConfig::default(),
            outbox: OutboxConfig::default(),
            features: FeaturesConfig::default(),
            security: SecurityConfig::default(),
        }
    }

    /// The management listener's address: `management.addr`, else `127.0.0.1:<http.port + 1000>`
    /// (port 0 stays 0, so tests get an ephemeral port for both).
    pub fn management_addr(&self) -> Option<SocketAddr> {
        if let Some(addr) = self.management.addr {
            return Some(addr);
        }
        let port = match self.http.port {
            0 => 0,
            p => p.checked_add(1000)?,
        };
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    }

    /// The public listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.http.addr, self.http.port)
    }

    /// The gRPC listener's own address (`http.addr`, `grpc.port`), or `None` when gRPC shares
    /// the public listener.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.port.map(|p| SocketAddr::new(self.http.addr, p))
    }
}

impl Default for KeelConfig {
    fn default() -> Self {
        Self::for_profile(Profile::Development)
    }
}

impl<'a> From<&'a KeelConfig> for StackConfig<'a> {
    fn from(k: &'a KeelConfig) -> Self {
        StackConfig::new(&k.http, &k.cors, k.log.access_log)
    }
}

impl Aggregate for KeelConfig {
    fn for_profile(profile: Profile) -> Self {
        Self::for_profile(profile)
    }

    fn read(&mut self, r: &mut Reader<'_>) {
        r.section("http", &mut self.http);
        r.section("grpc", &mut self.grpc);
        r.section("management", &mut self.management);
        r.section("cors", &mut self.cors);
        r.section("log", &mut self.log);
        r.section("shutdown", &mut self.shutdown);
        r.section("runtime", &mut self.runtime);
        r.section("telemetry", &mut self.telemetry);
        r.section("health", &mut self.health);
        r.section("database", &mut self.database);
        r.section("redis", &mut self.redis);
        r.section("storage", &mut self.storage);
        r.section("rate_limits", &mut self.rate_limits);
        r.section("upstreams", &mut self.upstreams);
        r.section("bus", &mut self.bus);
        r.section("outbox", &mut self.outbox);
        r.section("features", &mut self.features);
        r.section("security", &mut self.security);
    }

    fn validate(&self, v: &mut Validation<'_>) {
        v.section("http", &self.http);
        match self.management_addr() {
            None => v.invalid("management.addr", "http.port + 1000 is past 65535: set management.addr"),
            Some(m) if m.port() != 0 && m.port() == self.http.port && m.ip() != self.http.addr => v.invalid(
                "management.addr",
                "uses the public port on another address; use the same address to share one listener",
            ),
            Some(_) => {}
        }
        v.section("grpc", &self.grpc);
        if let Some(port) = self.grpc.port
            && port != 0
            && (port == self.http.port || self.management_addr().is_some_and(|m| m.port() == port))
        {
            v.invalid("grpc.port", "is the public or management port; leave it unset to share the public listener");
        }
        v.section("management", &self.management);
        v.section("cors", &self.cors);
        v.section("log", &self.log);
        v.section("shutdown", &self.shutdown);
        v.section("runtime", &self.runtime);
        v.section("telemetry", &self.telemetry);
        v.section("rate_limits", &self.rate_limits);
        v.section("upstreams", &self.upstreams);
        v.section("security", &self.security);
        v.section("database", &self.database);
        v.section("redis", &self.redis);
        v.section("storage", &self.storage);
        v.section("bus", &self.bus);
        v.section("outbox", &self.outbox);
        v.section("health", &self.health);
        v.section("features", &self.features);
    }

    fn shown(&self) -> Self {
        let mut shown = self.clone();
        shown.management.addr = self.management_addr();
        shown
    }
}

/// `shutdown.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// After a stop signal readiness fails at once; the listener keeps accepting for this long so
    /// load balancers deregister the instance. Default `5s` in production, `0s` otherwise.
    #[serde(with = "keel_config::duration")]
    pub drain_delay: Duration,
    /// Time allowed, after the drain delay, for in-flight requests and background tasks to
    /// finish; past it the process exits non-zero. Default `30s`.
    #[serde(with = "keel_config::duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_delay: Duration::ZERO, timeout: Duration::from_secs(30) }
    }
}

impl Section for ShutdownConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.timeout.is_zero() {
            v.invalid("timeout", "must be more than 0s");
        }
    }
}

/// `runtime.*`: the Tokio runtime the service runs on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Worker threads. Unset: Tokio's default, `TOKIO_WORKER_THREADS` or else the CPUs the
    /// process may use (a container's CPU limit counts). Set it when several processes share
    /// the machine's CPUs: workers beyond the process's share only add thread switches. In a
    /// group of services in one process the largest value any member sets applies.
    pub worker_threads: Option<usize>,
}

/// Far above any machine's useful count: a typo, not a setting.
const MAX_WORKER_THREADS: usize = 1024;

impl Section for RuntimeConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if let Some(n) = self.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&n)
        {
            v.invalid("worker_threads", format!("must be from 1 to {MAX_WORKER_THREADS}, or unset"));
        }
    }
}

/// The worker threads: `runtime.worker_threads`, else `TOKIO_WORKER_THREADS` (`env`), checked
/// here because Tokio panics on a value it cannot use; `None` for Tokio's default.
pub(crate) fn worker_threads(configured: Option<usize>, env: Option<&str>) -> Result<Option<usize>, String> {
    match (configured, env) {
        (Some(n), _) => Ok(Some(n)),
        (None, None) => Ok(None),
        (None, Some(v)) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Ok(Some(n)),
            _ => Err(format!("TOKIO_WORKER_THREADS: must be a number from 1 to {MAX_WORKER_THREADS}, not {v:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokio_worker_threads_is_checked_before_tokio_reads_it() {
        assert_eq!(worker_threads(Some(3), Some("x")), Ok(Some(3)), "the setting wins");
        assert_eq!(worker_threads(None, None), Ok(None));
        assert_eq!(worker_threads(None, Some(" 2 ")), Ok(Some(2)));
        for bad in ["0", "two", "", "1025", "-1"] {
            let e = worker_threads(None, Some(bad)).unwrap_err();
            assert!(e.starts_with("TOKIO_WORKER_THREADS: must be a number from 1 to 1024"), "{bad}: {e}");
        }
    }

    #[test]
    fn worker_threads_are_bounded() {
        let load = |n: &str| {
            Loader::new("svc", Profile::Test).env([("SVC__RUNTIME__WORKER_THREADS", n)]).load::<keel_config::NoConfig>()
        };
        assert_eq!(load("3").unwrap().config.keel.runtime.worker_threads, Some(3));
        for bad in ["0", "1025"] {
            let text = load(bad).unwrap_err().to_string();
            assert!(text.contains("runtime.worker_threads") && text.contains("from 1 to 1024"), "{bad}: {text}");
        }
        let unset = Loader::new("svc", Profile::Test).load::<keel_config::NoConfig>().unwrap();
        assert_eq!(unset.config.keel.runtime.worker_threads, None);
    }

    #[test]
    fn the_kafka_section_is_validated() {
        let dir = std::env::temp_dir().join(format!("keel-kafka-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("kafka-password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let props = dir.join("svc.yaml");
        std::fs::write(&props, "bus:\n  kafka:\n    properties:\n      enable.idempotence: \"false\"\n      fetch.max.bytes: \"1048576\"\n").unwrap();
        let load = |profile, vars: &[(&str, &str)]| {
            let mut env = vec![("SVC__BUS__BACKEND", "kafka"), ("SVC__BUS__URL", "kafka://k1:9092,k2:9092")];
            env.extend_from_slice(vars);
            Loader::new("svc", profile).env(env).load::<keel_config::NoConfig>()
        };
        let ok = load(Profile::Test, &[]).unwrap();
        assert_eq!(ok.config.keel.bus.kafka.client_id, "keel");
        let bad_url = load(Profile::Test, &[("SVC__BUS__URL", "kafka://k1")]).unwrap_err().to_string();
        assert!(bad_url.contains("bus.url") && bad_url.contains("host:port"), "{bad_url}");
        let sasl = load(Profile::Test, &[("SVC__BUS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl")]).unwrap_err().to_string();
        assert!(sasl.contains("bus.kafka.sasl_username") && sasl.contains("bus.kafka.sasl_password"), "{sasl}");
        let file = password.to_str().unwrap();
        let with_file = load(
            Profile::Test,
            &[
                ("SVC__BUS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                ("SVC__BUS__KAFKA__SASL_USERNAME", "svc"),
                ("SVC__BUS__KAFKA__SASL_PASSWORD_FILE", file),
            ],
        )
        .unwrap();
        assert_eq!(
            with_file.config.keel.bus.kafka.sasl_password.as_ref().map(|p| p.expose().trim().to_owned()).as_deref(),
            Some("s3cret")
        );
        let env = [("SVC__BUS__BACKEND", "kafka"), ("SVC__BUS__URL", "kafka://k1:9092")];
        let reserved = Loader::new("svc", Profile::Test).file(&props).env(env).load::<keel_config::NoConfig>();
        let reserved = reserved.unwrap_err().to_string();
        assert!(
            reserved.contains("bus.kafka.properties.enable.idempotence") && reserved.contains("set by Keel"),
            "{reserved}"
        );
        assert!(!reserved.contains("fetch.max.bytes"), "{reserved}");
        let plain = load(Profile::Production, &[]).unwrap_err().to_string();
        assert!(plain.contains("bus.kafka.security_protocol") && plain.contains("TLS"), "{plain}");
        let allowed = load(Profile::Production, &[("SVC__BUS__KAFKA__ALLOW_PLAINTEXT", "true")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!allowed.contains("bus.kafka"), "{allowed}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn development_listens_on_loopback_and_containers_on_every_interface() {
        let addr = |p| KeelConfig::for_profile(p).http.addr;
        assert_eq!(addr(Profile::Development), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(addr(Profile::Test), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(addr(Profile::Production), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(KeelConfig::default().http.addr, IpAddr::V4(Ipv4Addr::LOCALHOST), "default is development");
    }
}
