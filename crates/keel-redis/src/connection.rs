//! The managed connection (feature `redis`); see the crate docs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, ScriptInvocation};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::RedisConfig;
pub use redis as driver;

use keel_health::connect::{ConnectTracker, ConnectionCheck, Connects, Phase};
use keel_health::{CheckFuture, Outcome, sanitize};
use keel_problem::Problem;
use keel_resilience::reprobe::Availability;
use keel_telemetry::Metrics;

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// Redis is known to be down (or not connected yet); failed fast. Answers 503.
    #[error("redis unavailable: {reason}")]
    Unavailable {
        /// Why (sanitized).
        reason: String,
    },
    /// No answer within `redis.command_timeout`. Answers 503.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed. Answers 500 (details logged).
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The configuration cannot be used.
    #[error("redis configuration: {0}")]
    Config(String),
}

impl From<RedisError> for Problem {
    /// 503 (`SERVICE_DEGRADED`, with `Retry-After`) while Redis is unavailable or slow, else
    /// 500; the cause is logged, never sent.
    fn from(e: RedisError) -> Self {
        match &e {
            RedisError::Unavailable { .. } | RedisError::Timeout(_) => {
                tracing::warn!(error = %e, "redis call refused");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service degraded")
                    .detail("a dependency of this service is unavailable; retry later")
                    .code("SERVICE_DEGRADED")
                    .retry_after(keel_problem::DEPENDENCY_RETRY_AFTER_SECS)
            }
            _ => {
                tracing::error!(error = %e, "redis call failed");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for RedisError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

struct Inner {
    manager: ConnectionManager,
    client: redis::Client,
    prefix: String,
    config: RedisConfig,
    available: Availability,
    connect: ConnectTracker,
    commands: IntCounterVec,
    duration: Histogram,
    target: Target,
}

/// Where the client connects, as OpenTelemetry's database conventions name it on each span.
struct Target {
    address: String,
    port: Option<u16>,
    /// The database index (`db.namespace`).
    namespace: String,
}

impl Target {
    fn of(client: &redis::Client) -> Self {
        let info = client.get_connection_info();
        let (address, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), Some(*port)),
            redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), Some(*port)),
            other => (other.to_string(), None),
        };
        Self { address, port, namespace: info.redis_settings().db().to_string() }
    }
}

/// What a span is named after: a command's first word (`GET`), never an argument, or a fixed
/// name (`PIPELINE`, `EVALSHA`). Read only when a span is made.
#[derive(Clone, Copy)]
enum Operation<'a> {
    Command(&'a Cmd),
    Named(&'static str),
}

impl Operation<'_> {
    fn name(self) -> String {
        match self {
            Self::Command(cmd) => match cmd.args_iter().next() {
                Some(redis::Arg::Simple(name)) if name.len() <= 32 => {
                    String::from_utf8_lossy(name).to_ascii_uppercase()
                }
                _ => "COMMAND".to_owned(),
            },
            Self::Named(name) => name.to_owned(),
        }
    }
}

/// A service's Redis handle. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.inner.prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// A handle for `url` that connects lazily (nothing is dialled until
    /// [`Redis::connect_in_background`] or the first command). Must be called inside a Tokio
    /// runtime. Registers the metrics in `metrics`.
    pub fn new(service: &str, url: &str, config: &RedisConfig, metrics: &Metrics) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(|e| RedisError::Config(sanitize(&e.to_string())))?;
        let mgr_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect.attempt_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(2)
            .set_min_delay(config.connect.initial_delay)
            .set_max_delay(config.connect.max_delay);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), mgr_config)?;
        let commands =
            IntCounterVec::new(Opts::new("redis_commands_total", "Redis commands by outcome."), &["outcome"])
                .map_err(|e| RedisError::Config(e.to_string()))?;
        let duration = Histogram::with_opts(
            HistogramOpts::new("redis_command_duration_seconds", "Time for a Redis command (or pipeline, or script).")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )
        .map_err(|e| RedisError::Config(e.to_string()))?;
        metrics.register(commands.clone()).map_err(|e| RedisError::Config(e.to_string()))?;
        // Every outcome at zero from the start, so an error ratio has a series before the first error.
        for outcome in ["ok", "error", "timeout", "unavailable"] {
            let _ = commands.with_label_values(&[outcome]);
        }
        metrics.register(duration.clone()).map_err(|e| RedisError::Config(e.to_string()))?;
        let prefix = config.key_prefix.clone().unwrap_or_else(|| format!("{service}:"));
        let target = Target::of(&client);
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                manager,
                client,
                prefix,
                config: config.clone(),
                available: Availability::default(),
                connect: ConnectTracker::new("redis", config.connect.clone()),
                commands,
                duration,
            }),
        })
    }

    /// `key` with this service's prefix.
    ///
    /// With `redis.key_prefix` unset for service `auth`, `key("sessions:42")` is `auth:sessions:42`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    /// Whether `other` is a clone of this handle (the same connection and prefix).
    pub fn same_handle(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether Redis is believed reachable.
    pub fn is_available(&self) -> bool {
        self.inner.available.is_up()
    }

    /// Completes when a re-probe next finds Redis back (set-up re-runs the health checks then).
    pub async fn recovered(&self) {
        self.inner.available.recovered().await;
    }

    /// Completes when a call next finds Redis gone (set-up re-runs the health checks then, so
    /// readiness follows at once).
    pub async fn lost(&self) {
        self.inner.available.lost().await;
    }

    /// While Redis is down after a lost connection: starts one background `PING` through the
    /// managed connection (which reconnects) if due; a success marks Redis available at once.
    fn reprobe(&self) {
        let this = self.clone();
        self.inner.available.spawn_probe(async move {
            let ok = this.ping().await.is_ok();
            if ok {
                tracing::info!("redis answers again (re-probe)");
            }
            this.inner.available.probed(ok);
        });
    }

    /// `PING` within `redis.command_timeout`.
    async fn ping(&self) -> Result<(), String> {
        let mut conn = self.inner.manager.clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.inner.config.command_timeout, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(sanitize(&e.to_string())),
            Err(_) => Err(format!(
                "PING did not answer within {}",
                humantime::format_duration(self.inner.config.command_timeout)
            )),
        }
    }

    /// The managed connection, for commands the helpers below do not cover (they are then not
    /// measured nor failed fast).
    pub fn connection(&self) -> ConnectionManager {
        self.inner.manager.clone()
    }

    fn unavailable(&self) -> RedisError {
        RedisError::Unavailable { reason: self.inner.connect.reason() }
    }

    /// Runs `f` on the connection with the fail-fast check, the deadline and the metrics; when
    /// spans are exported and the caller's span is sampled, in a client span named `operation`
    /// (OpenTelemetry's database conventions: `db.system.name`, `db.operation.name`,
    /// `db.namespace`, `server.address`, `server.port`; no key or value).
    async fn run<T, F, Fut>(&self, operation: Operation<'_>, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_available() {
            self.inner.commands.with_label_values(&["unavailable"]).inc();
            self.reprobe();
            return Err(self.unavailable());
        }
        let target = &self.inner.target;
        // Only where it is exported, under a sampled request: recording one costs several µs
        // per command (measured: PING on one connection at half its rate with a span each).
        let traced =
            keel_telemetry::exporting() && keel_telemetry::span_context(&tracing::Span::current()).is_sampled();
        let span = if !traced {
            tracing::Span::none()
        } else {
            let operation = operation.name();
            tracing::info_span!(
            "redis",
            otel.name = operation.as_str(),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = operation.as_str(),
            db.namespace = %target.namespace,
            server.address = %target.address,
            // As an `i64`: the OpenTelemetry layer exports a `u64` as a string.
            server.port = target.port.map(i64::from),
            "error.type" = tracing::field::Empty,
            )
        };
        let started = Instant::now();
        let limit = self.inner.config.command_timeout;
        let result = tokio::time::timeout(limit, f(self.inner.manager.clone())).instrument(span.clone()).await;
        self.inner.duration.observe(started.elapsed().as_secs_f64());
        let failed = |kind: &str| {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", kind);
        };
        match result {
            Ok(Ok(v)) => {
                self.inner.commands.with_label_values(&["ok"]).inc();
                Ok(v)
            }
            // The client's own response timeout and ours race; either way Redis did not answer.
            // One slow command does not switch on fail-fast (the readiness check decides that):
            // under fail_closed rate limiting it would refuse every request until the next check.
            Ok(Err(e)) if e.is_timeout() => {
                failed("timeout");
                self.inner.commands.with_label_values(&["timeout"]).inc();
                Err(RedisError::Timeout(limit))
            }
            Ok(Err(e)) => {
                failed(if e.is_io_error() || e.is_connection_dropped() { "io" } else { "redis" });
                self.inner.commands.with_label_values(&["error"]).inc();
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.inner.available.lose();
                }
                Err(RedisError::Redis(e))
            }
            Err(_) => {
                failed("timeout");
                self.inner.commands.with_label_values(&["timeout"]).inc();
                Err(RedisError::Timeout(limit))
            }
        }
    }

    /// Runs one command.
    ///
    /// ```ignore
    /// let n: i64 = redis.query(redis::cmd("INCR").arg(redis.key("hits"))).await?;
    /// ```
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        self.run(Operation::Command(cmd), |mut c| async move { cmd.query_async(&mut c).await }).await
    }

    /// Runs a pipeline (`atomic()` for MULTI/EXEC) in one round trip.
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, RedisError> {
        self.run(Operation::Named("PIPELINE"), |mut c| async move { pipe.query_async(&mut c).await }).await
    }

    /// Runs a Lua script (EVALSHA, loading it on first use), atomically on the server.
    pub async fn script<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, RedisError> {
        self.run(Operation::Named("EVALSHA"), |mut c| async move { invocation.invoke_async(&mut c).await }).await
    }

    /// Connects in the background until the first success, with backoff.
    pub async fn connect_in_background(self, stop: CancellationToken) {
        let attempt = || async { self.try_connect().await.map_err(|e| ("connect", sanitize(&e.to_string()))) };
        if self.inner.connect.connect(&stop, attempt, |_| {}).await.is_some() {
            tracing::info!("redis connected");
            self.inner.connect.set(Phase::Connected);
            self.inner.available.set_up();
        }
    }

    async fn try_connect(&self) -> redis::RedisResult<()> {
        let mut conn = self.inner.client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ())
    }

    async fn check(&self) -> Outcome {
        if matches!(self.inner.connect.phase(), Phase::Connecting { .. }) {
            return Outcome::Down(self.unavailable().to_string());
        }
        match self.ping().await {
            Ok(()) => {
                self.inner.available.set_up();
                Outcome::Up
            }
            Err(e) => {
                self.inner.available.lose();
                Outcome::Down(e)
            }
        }
    }

    /// The readiness check (`redis`): required unless `redis.required: false`.
    pub fn readiness_check(&self) -> RedisCheck {
        ConnectionCheck::readiness(self.clone())
    }

    /// The startup check (`redis_connect`): down once `redis.connect.max_elapsed` passed
    /// without a first connection.
    pub fn startup_check(&self) -> RedisCheck {
        ConnectionCheck::startup(self.clone())
    }
}

/// A [`Redis`] health check.
pub type RedisCheck = ConnectionCheck<Redis>;

impl Connects for Redis {
    const READINESS: &'static str = "redis";
    const STARTUP: &'static str = "redis_connect";
    fn connection(&self) -> &ConnectTracker {
        &self.inner.connect
    }
    fn required(&self) -> bool {
        self.inner.config.required
    }
    fn timeout(&self) -> Duration {
        self.inner.config.command_timeout * 2
    }
    fn ready(&self) -> CheckFuture<'_> {
        Box::pin(self.check())
    }
}
