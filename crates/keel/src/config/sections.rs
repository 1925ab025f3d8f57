//! The configuration sections every Keel service has.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Profile, Secret};

/// Keel's own sections: everything at the top level of the config file except `app`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct KeelConfig {
    /// The public (API and probes) listener.
    pub http: HttpConfig,
    /// The management listener (metrics, admin).
    pub management: ManagementConfig,
    /// Cross-origin resource sharing.
    pub cors: CorsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Tracing export.
    pub telemetry: TelemetryConfig,
    /// Health-check scheduling.
    pub health: HealthConfig,
    /// The SQL database, for services that declare one.
    pub database: DatabaseConfig,
    /// Redis, for services that declare it.
    pub redis: RedisConfig,
    /// Named rate-limit policies (`Setup::rate_limit("<name>")`).
    pub rate_limits: std::collections::BTreeMap<String, crate::resilience::rate_limit::RateLimitPolicy>,
    /// Named upstream HTTP services (`Setup::http_client("<name>")`).
    pub upstreams: std::collections::BTreeMap<String, UpstreamConfig>,
    /// JWT, passwords, field encryption.
    pub security: SecurityConfig,
    /// The message bus, for services that publish or consume events (`Setup::bus`).
    pub bus: BusConfig,
    /// The transactional outbox relay (`Setup::outbox`).
    pub outbox: OutboxConfig,
    /// Feature flags (`keel::features`).
    pub features: FeaturesConfig,
}

impl KeelConfig {
    /// The defaults for a profile: pretty logs and no drain delay in development, JSON logs and a
    /// 5 s drain delay in production.
    pub fn for_profile(profile: Profile) -> Self {
        let prod = profile == Profile::Production;
        Self {
            http: HttpConfig::default(),
            management: ManagementConfig::default(),
            cors: CorsConfig::default(),
            log: LogConfig {
                format: if profile == Profile::Development { LogFormat::Pretty } else { LogFormat::Json },
                ..LogConfig::default()
            },
            shutdown: ShutdownConfig {
                drain_delay: if prod { Duration::from_secs(5) } else { Duration::ZERO },
                ..ShutdownConfig::default()
            },
            telemetry: TelemetryConfig::default(),
            health: HealthConfig::default(),
            database: DatabaseConfig { auto_migrate: !prod, ..DatabaseConfig::default() },
            redis: RedisConfig::default(),
            rate_limits: std::collections::BTreeMap::new(),
            upstreams: std::collections::BTreeMap::new(),
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
}

impl Default for KeelConfig {
    fn default() -> Self {
        Self::for_profile(Profile::Development)
    }
}

/// `http.*`: the public listener and its request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HttpConfig {
    /// IP address to bind. Default `0.0.0.0` (all interfaces, as containers need).
    pub addr: IpAddr,
    /// TCP port. Default `8080`; `0` picks a free port (tests).
    pub port: u16,
    /// Whole-request deadline; past it the client gets a 504 problem. Default `30s`.
    #[serde(with = "super::duration")]
    pub request_timeout: Duration,
    /// Largest request body accepted; larger ones get 413. Default `1MiB`. Routes can raise or
    /// lower it with `axum::extract::DefaultBodyLimit`.
    #[serde(with = "super::bytes")]
    pub body_limit: usize,
    /// Requests handled at once before new ones are shed with 503 + `Retry-After`. Default `1024`.
    pub max_in_flight: usize,
    /// Open connections accepted at once; further clients wait in the kernel's backlog. Bounds
    /// file descriptors against connection floods. Default `4096`.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv4 address, or an IPv6 /64) at once;
    /// its further connections are closed as soon as they are accepted. Counted per TCP peer:
    /// behind a proxy, the proxy is the client. Default `256`.
    pub max_connections_per_ip: usize,
    /// A client must send a request's headers within this (slow-header attacks hold
    /// connections open otherwise); it is also the first request's deadline on a new
    /// connection, and the idle timeout of an HTTP/1 keep-alive connection. Default `10s`.
    #[serde(with = "super::duration")]
    pub header_read_timeout: Duration,
    /// HTTP/2 connections.
    pub http2: Http2Config,
    /// gzip responses when the client accepts it. Default `true`.
    pub compression: bool,
    /// Strict-Transport-Security. Turn on when clients reach the service over TLS (usually
    /// terminated at the ingress).
    pub hsts: HstsConfig,
    /// Proxies (CIDRs) allowed to tell the client's IP through `X-Forwarded-For` / `Forwarded`.
    /// Default none: the socket peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            request_timeout: Duration::from_secs(30),
            body_limit: 1 << 20,
            max_in_flight: 1024,
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
            http2: Http2Config::default(),
            compression: true,
            hsts: HstsConfig::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `http.http2.*`: HTTP/2 connections (cleartext with prior knowledge, or TLS with ALPN at a
/// proxy in front).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Http2Config {
    /// A connection with no stream open for this long is sent `GOAWAY` and closed; if it has
    /// still opened none after as long again, it is dropped. Default `30s`.
    #[serde(with = "super::duration")]
    pub idle_timeout: Duration,
    /// Interval of the keep-alive `PING`s the server sends. Default `20s`.
    #[serde(with = "super::duration")]
    pub keep_alive_interval: Duration,
    /// A `PING` not acknowledged within this closes the connection. Default `20s`.
    #[serde(with = "super::duration")]
    pub keep_alive_timeout: Duration,
    /// Streams (requests) a client may have open at once on one connection. Default `100`.
    pub max_concurrent_streams: u32,
    /// Largest header list (decoded, as HTTP/2 counts it) a request may send. Default `32KiB`.
    #[serde(with = "super::bytes")]
    pub max_header_list_size: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 100,
            max_header_list_size: 32 << 10,
        }
    }
}

/// `http.hsts.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HstsConfig {
    /// Send `Strict-Transport-Security`. Default `false`.
    pub enabled: bool,
    /// `max-age`. Default `1year` (365.25 days).
    #[serde(with = "super::duration")]
    pub max_age: Duration,
    /// Add `includeSubDomains`. Default `true`.
    pub include_subdomains: bool,
}

impl Default for HstsConfig {
    fn default() -> Self {
        Self { enabled: false, max_age: Duration::from_secs(31_557_600), include_subdomains: true }
    }
}

/// `management.*`: the listener for `/metrics` and `/admin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ManagementConfig {
    /// `ip:port` to bind. Default `127.0.0.1:<http.port + 1000>`. Set it equal to the public
    /// address to serve everything on one port.
    pub addr: Option<SocketAddr>,
    /// Bearer token that `/admin/*` requires (a secret: env, `${VAR}` or `admin_token_file`).
    /// Unset: `/admin/*` answers 401 for everyone.
    pub admin_token: Option<Secret>,
}

/// `cors.*`: which browser origins may call the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`, scheme + host + port). In env, comma-separated.
    /// Empty: no cross-origin access (refused in production). `*` is refused in production and
    /// never combines with credentials.
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`. Default `false`.
    pub allow_credentials: bool,
    /// Methods allowed cross-origin.
    pub allowed_methods: Vec<String>,
    /// Request headers allowed cross-origin.
    pub allowed_headers: Vec<String>,
    /// Response headers readable cross-origin.
    pub exposed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer. Default `10m`.
    #[serde(with = "super::duration")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            allowed_methods: s(&["GET", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: s(&["authorization", "content-type", "idempotency-key", "traceparent", "x-request-id"]),
            exposed_headers: s(&[
                "x-request-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ]),
            max_age: Duration::from_secs(600),
        }
    }
}

/// `log.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LogConfig {
    /// Level or `tracing` filter directives (`info`, `info,sqlx=warn`). Default `info`.
    /// `RUST_LOG`, when set, wins. `trace` is refused in production. Changeable at run time
    /// through `PUT /admin/log-level`.
    pub level: String,
    /// `json` (one object per line) or `pretty`. Default: `pretty` in development, else `json`.
    pub format: LogFormat,
    /// One `info` line per finished request. Default `true`.
    pub access_log: bool,
    /// Field names whose values are logged as `***` (compared case-insensitively, `-` = `_`),
    /// added to the built-in list (`password`, `token`, `authorization`, `cookie`, `email`, …;
    /// see `docs/security.md`). `Bearer <token>` is masked in every field regardless.
    pub mask_fields: Vec<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Pretty, access_log: true, mask_fields: Vec::new() }
    }
}

/// How log lines are written (always to stdout, never to files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, coloured when stdout is a terminal.
    Pretty,
}

/// `shutdown.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// After a stop signal readiness fails at once; the listener keeps accepting for this long so
    /// load balancers deregister the instance. Default `5s` in production, `0s` otherwise.
    #[serde(with = "super::duration")]
    pub drain_delay: Duration,
    /// Time allowed, after the drain delay, for in-flight requests and background tasks to
    /// finish; past it the process exits non-zero. Default `30s`.
    #[serde(with = "super::duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_delay: Duration::ZERO, timeout: Duration::from_secs(30) }
    }
}

/// `telemetry.*`. The standard `OTEL_*` variables fill in what these keys leave unset (see
/// `docs/configuration.md`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// OTLP export.
    pub otlp: OtlpConfig,
    /// Fraction of new traces sampled, 0.0–1.0 (a sampled parent is always followed). Unset:
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, else `1.0`.
    pub sampling_ratio: Option<f64>,
    /// The `service.name` resource attribute. Unset: `OTEL_SERVICE_NAME`, else the service's name.
    pub service_name: Option<String>,
}

/// `telemetry.otlp.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// Collector endpoint (`http://otel-collector:4317`, `https://…`). With `http/protobuf`,
    /// `/v1/traces` is appended. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as is), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; with neither, spans are not exported (trace ids are still
    /// made, logged and propagated).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else `grpc`.
    pub protocol: Option<OtlpProtocol>,
    /// Export deadline per batch. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` (milliseconds),
    /// else `10s`.
    #[serde(with = "crate::telemetry::otlp::optional_duration")]
    pub timeout: Option<Duration>,
    /// **Secret values.** Headers (gRPC metadata) sent with every export, e.g. an API key;
    /// over those of `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`.
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// A PEM file of CA certificates trusted for an `https://` endpoint, beside the system's.
    /// Unset: `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`.
    pub ca_file: Option<std::path::PathBuf>,
    /// A PEM client certificate for mutual TLS (with `client_key_file`). Unset:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of `client_cert_file`. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_KEY`.
    pub client_key_file: Option<std::path::PathBuf>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` and `telemetry.otlp.protocol` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// `health.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HealthConfig {
    /// How often each check runs in the background. Default `5s`.
    #[serde(with = "super::duration")]
    pub interval: Duration,
    /// A cached result older than this counts as down. Default `15s` (3 × interval).
    #[serde(with = "super::duration")]
    pub ttl: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(5), ttl: Duration::from_secs(15) }
    }
}

/// `database.*`: the SQL pool of a service that declares one (`Setup::database`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// **Secret.** `postgres://…`, `mysql://…` (or `mariadb://…`) or `sqlite://path`. Unset in
    /// development and test: `sqlite://data/<service>.db` (created). Required in production.
    pub url: Option<Secret>,
    /// Readiness fails while the database is unreachable. `false`: the service stays ready as
    /// `degraded` and database calls fail fast with 503. Default `true`.
    pub required: bool,
    /// Apply pending migrations when connecting. Default `true` in development and test,
    /// `false` in production, where it is refused: run `<service> migrate` instead.
    pub auto_migrate: bool,
    /// Pool sizing and timeouts.
    pub pool: PoolConfig,
    /// Background connection retries.
    pub connect: ConnectConfig,
    /// Deadline of the readiness check (`SELECT 1`). Default `1s`.
    #[serde(with = "super::duration")]
    pub check_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            required: true,
            auto_migrate: true,
            pool: PoolConfig::default(),
            connect: ConnectConfig::default(),
            check_timeout: Duration::from_secs(1),
        }
    }
}

/// `database.pool.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open at once. Default `10`.
    pub max_connections: u32,
    /// Connections kept open when idle. Default `0`.
    pub min_connections: u32,
    /// Longest wait for a free connection; then the call fails (503). Default `2s`.
    #[serde(with = "super::duration")]
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this. Default `10m`.
    #[serde(with = "super::duration")]
    pub idle_timeout: Duration,
    /// Connections are replaced after this. Default `30m`.
    #[serde(with = "super::duration")]
    pub max_lifetime: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

/// `database.connect.*`, `redis.connect.*`: retries of the first connection, in the background,
/// with exponential backoff and full jitter (each wait is random between 0 and the current cap).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ConnectConfig {
    /// Cap of the first wait. Default `100ms`.
    #[serde(with = "super::duration")]
    pub initial_delay: Duration,
    /// Largest cap; the cap doubles per attempt up to this. Default `10s`.
    #[serde(with = "super::duration")]
    pub max_delay: Duration,
    /// Give up after this long without a first connection: the dependency's startup check goes
    /// down (so an orchestrator restarts the instance) while retries go on. `0s`: never. Default `0s`.
    #[serde(with = "super::duration")]
    pub max_elapsed: Duration,
    /// Deadline of one connection attempt. Default `5s`.
    #[serde(with = "super::duration")]
    pub attempt_timeout: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::ZERO,
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

/// `redis.*`: the Redis connection of a service that declares one (`Setup::redis`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// **Secret.** `redis://[:password@]host:6379/0` or `unix:///path`. Required when the
    /// service uses Redis. (`rediss://` needs TLS support this build does not include.)
    pub url: Option<Secret>,
    /// Readiness fails while Redis is unreachable. `false`: `degraded`, calls fail fast. Default `true`.
    pub required: bool,
    /// Prepended to every key made with `Redis::key`. Default `<service>:`.
    pub key_prefix: Option<String>,
    /// Deadline of one command. Default `1s`.
    #[serde(with = "super::duration")]
    pub command_timeout: Duration,
    /// Background connection retries.
    pub connect: ConnectConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            required: true,
            key_prefix: None,
            command_timeout: Duration::from_secs(1),
            connect: ConnectConfig::default(),
        }
    }
}

/// `upstreams.<name>.*`: an HTTP service this one calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// `http://events:8082`. Required.
    pub base_url: String,
    /// Deadline to open a connection. Default `2s`.
    #[serde(with = "super::duration")]
    pub connect_timeout: Duration,
    /// Deadline of one attempt (also bounded by the caller's own remaining time). Default `10s`.
    #[serde(with = "super::duration")]
    pub request_timeout: Duration,
    /// Largest response body read; past it the read stops with an error. Default `10MiB`.
    #[serde(with = "super::bytes")]
    pub max_response_bytes: usize,
    /// Retries of idempotent requests (GET, HEAD, PUT, DELETE, OPTIONS, or any carrying an
    /// `Idempotency-Key`) that failed to connect, timed out, or got 502/503/504.
    pub retry: crate::resilience::retry::RetryConfig,
    /// This upstream's circuit breaker (5xx, timeouts and connection errors are failures).
    pub breaker: crate::resilience::breaker::BreakerConfig,
    /// This upstream's bulkhead.
    pub bulkhead: crate::resilience::bulkhead::BulkheadConfig,
    /// When set, a readiness check `GET <base_url><health_path>` (`upstream:<name>`).
    pub health_path: Option<String>,
    /// Whether that check can fail readiness (else `degraded`). Default `true`.
    pub required: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 10 << 20,
            retry: crate::resilience::retry::RetryConfig::default(),
            breaker: crate::resilience::breaker::BreakerConfig::default(),
            bulkhead: crate::resilience::bulkhead::BulkheadConfig::default(),
            health_path: None,
            required: true,
        }
    }
}

/// Which message broker carries events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BusBackend {
    /// In this process's memory: the zero-setup default outside production; not durable.
    #[default]
    InProcess,
    /// NATS JetStream (`nats://host:4222`).
    Nats,
    /// RabbitMQ (`amqp://user:pass@host:5672/vhost`).
    Rabbitmq,
}

impl std::fmt::Display for BusBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InProcess => "in_process",
            Self::Nats => "nats",
            Self::Rabbitmq => "rabbitmq",
        })
    }
}

/// `bus.*`: the message bus of a service that publishes or consumes events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BusConfig {
    /// `in_process` (default; refused in production: it is not durable), `nats` or `rabbitmq`.
    pub backend: BusBackend,
    /// **Secret.** The broker URL; required for `nats` and `rabbitmq`. For `in_process`,
    /// `memory://<name>` makes every service in the process with the same name share one bus
    /// (several services in one process); unset gives the service a bus of its own.
    pub url: Option<Secret>,
    /// Prefix of every topic on the broker (`<namespace>.<topic>`), so several environments or
    /// test runs can share one broker without seeing each other's messages. Default unset.
    pub namespace: Option<String>,
    /// Readiness fails while the broker is unreachable. Default `true`.
    pub required: bool,
    /// Deadline for a publish to be confirmed by the broker. Default `5s`.
    #[serde(with = "super::duration")]
    pub publish_timeout: Duration,
    /// `in_process`: messages a topic (per consumer group) holds before publishes are refused. Default `10000`.
    pub capacity: usize,
    /// Background connection retries.
    pub connect: ConnectConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: BusBackend::InProcess,
            url: None,
            namespace: None,
            required: true,
            publish_timeout: Duration::from_secs(5),
            capacity: 10_000,
            connect: ConnectConfig::default(),
        }
    }
}

/// `outbox.*`: the relay that publishes events written to the `keel_outbox` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Rows claimed per round. Default `500`.
    pub batch_size: u32,
    /// Wait between rounds when the outbox is empty. Default `200ms`.
    #[serde(with = "super::duration")]
    pub poll_interval: Duration,
    /// How long a claim is held; rows of a relay that died are taken over after this. Default `30s`.
    #[serde(with = "super::duration")]
    pub lease: Duration,
    /// Publish attempts before a row is marked dead. Default `12`.
    pub max_attempts: u32,
    /// Smallest wait before a failed row is retried (backoff `2^n s`, ±10 % jitter). Default `5s`.
    #[serde(with = "super::duration")]
    pub backoff_min: Duration,
    /// Largest wait between attempts. Default `30m`.
    #[serde(with = "super::duration")]
    pub backoff_max: Duration,
    /// Sent rows are deleted after this long. Default `24h`.
    #[serde(with = "super::duration")]
    pub retention: Duration,
    /// Publishes in flight at once (rows with the same key are still published one by one). Default `256`.
    pub max_in_flight: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            lease: Duration::from_secs(30),
            max_attempts: 12,
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(30 * 60),
            retention: Duration::from_secs(24 * 3600),
            max_in_flight: 256,
        }
    }
}

/// `features.*`: feature flags from a YAML file (`keel::features`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FeaturesConfig {
    /// The flags file. Unset: no flags (every flag evaluates to off). An invalid file is a
    /// configuration error at start-up.
    pub file: Option<std::path::PathBuf>,
    /// Watch the file and apply changes without a restart; an invalid new version is rejected
    /// as a whole and the last good set stays active. Default `true`.
    pub reload: bool,
    /// How often the file is checked for changes. Default `1s`.
    #[serde(with = "super::duration")]
    pub poll_interval: Duration,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self { file: None, reload: true, poll_interval: Duration::from_secs(1) }
    }
}

/// `security.*`: JWT keys, password hashing and field encryption (used by `keel::security`,
/// cargo feature `security`). Every key, secret and data key is configuration: nothing has a
/// default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SecurityConfig {
    /// Issuing and verifying JSON Web Tokens.
    pub jwt: JwtConfig,
    /// Password hashing (Argon2id) and the password policy.
    pub passwords: PasswordsConfig,
    /// Envelope encryption of fields and blind indexes.
    pub encryption: EncryptionConfig,
}

/// `security.jwt.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtConfig {
    /// Expected `iss`; tokens from another issuer are refused, and issued tokens carry it.
    /// Unset: `iss` is not checked.
    pub issuer: Option<String>,
    /// Accepted `aud` values (a token must name one). Empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default `30s`; at most `5m`.
    #[serde(with = "super::duration")]
    pub leeway: Duration,
    /// Lifetime of issued tokens. Default `15m`.
    #[serde(with = "super::duration")]
    pub ttl: Duration,
    /// The `kid` of the key new tokens are signed with. Unset: this service only verifies.
    pub signing_key: Option<String>,
    /// Verification (and signing) keys by `kid`. Each pins its algorithm.
    pub keys: std::collections::BTreeMap<String, JwtKeyConfig>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            ttl: Duration::from_secs(900),
            signing_key: None,
            keys: std::collections::BTreeMap::new(),
        }
    }
}

/// `security.jwt.keys.<kid>.*`: one key. Secrets come from env or `<field>_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtKeyConfig {
    /// `HS256`, `RS256` or `EdDSA`. Required: a token whose header names another algorithm is
    /// refused, which is what stops `none` and algorithm-confusion attacks.
    pub algorithm: Option<JwtAlgorithm>,
    /// **Secret.** HS256 only: the shared key, at least 32 bytes.
    pub secret: Option<Secret>,
    /// RS256 / EdDSA: the public key (PEM) used to verify.
    pub public_key: Option<String>,
    /// **Secret.** RS256 / EdDSA: the private key (PEM), only where tokens are issued.
    pub private_key: Option<Secret>,
}

/// A JWT signature algorithm Keel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// Ed25519.
    EdDSA,
}

/// `security.passwords.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PasswordsConfig {
    /// Argon2id memory cost in KiB. Default `19456` (19 MiB, the OWASP minimum).
    pub memory_kib: u32,
    /// Argon2id passes. Default `2`.
    pub iterations: u32,
    /// Argon2id lanes. Default `1`.
    pub parallelism: u32,
    /// Hashes computed at once (each on a blocking thread). `0`: the number of CPUs. Default `0`.
    pub max_concurrent_hashes: usize,
    /// Longest wait for a hashing slot; past it the call fails as overloaded (503) instead of
    /// queueing without bound. Default `5s`.
    #[serde(with = "super::duration")]
    pub queue_timeout: Duration,
    /// Shortest password accepted, in characters. Default `12`; production refuses less.
    pub min_length: usize,
    /// Longest password accepted, in bytes (bounds hashing cost). Default `128`.
    pub max_length: usize,
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent_hashes: 0,
            queue_timeout: Duration::from_secs(5),
            min_length: 12,
            max_length: 128,
        }
    }
}

/// `security.encryption.*`: envelope encryption of fields (see `keel::security::crypto`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EncryptionConfig {
    /// **Secret.** The master key, 32 bytes in base64; it only wraps data keys.
    pub master_key: Option<Secret>,
    /// **Secret.** The blind-index (HMAC) key, at least 32 bytes in base64; keep it apart from
    /// the master key.
    pub blind_index_key: Option<Secret>,
    /// The data key new values are encrypted with.
    pub active_key: Option<String>,
    /// Data keys by id, each wrapped by the master key (`<service> keys new <id>` makes one).
    /// Wrapped keys are not secret; every listed key can still decrypt.
    pub data_keys: std::collections::BTreeMap<String, String>,
}
