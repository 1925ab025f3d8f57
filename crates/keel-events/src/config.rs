//! The `bus` and `outbox` sections. They exist without the `events` feature too, so a file that
//! sets them loads the same in every build.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Secret, Section, Validation};
use keel_resilience::ConnectConfig;

mod kafka;
pub(crate) use kafka::bootstrap_servers;
pub use kafka::{KafkaConfig, KafkaSecurity, SaslMechanism};

/// The shortest `outbox.lease`.
const MIN_LEASE: Duration = Duration::from_millis(200);

/// The largest `outbox.batch_size`.
const MAX_OUTBOX_BATCH: u32 = 10_000;

/// The name in an in-process bus URL, `memory://<name>` (1–64 of `[A-Za-z0-9._-]`).
pub(crate) fn memory_bus_name(url: &str) -> Option<&str> {
    let name = url.strip_prefix("memory://")?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(name)
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
    /// Apache Kafka, or a broker speaking its protocol (`kafka://host:9092,host2:9092`).
    Kafka,
}

impl BusBackend {
    /// Its name in configuration (`in_process`, `nats`, `rabbitmq`, `kafka`), also the `messaging.system`
    /// of its spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProcess => "in_process",
            Self::Nats => "nats",
            Self::Rabbitmq => "rabbitmq",
            Self::Kafka => "kafka",
        }
    }
}

impl std::fmt::Display for BusBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `bus.*`: the message bus of a service that publishes or consumes events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BusConfig {
    /// `in_process` (default; refused in production: it is not durable), `nats`, `rabbitmq` or
    /// `kafka`.
    pub backend: BusBackend,
    /// **Secret.** The broker URL; required for `nats`, `rabbitmq` and `kafka`
    /// (`kafka://host:9092,host2:9092`: the bootstrap servers). For `in_process`,
    /// `memory://<name>` makes every service in the process with the same name share one bus
    /// (several services in one process); unset gives the service a bus of its own.
    pub url: Option<Secret>,
    /// Prefix of every topic on the broker (`<namespace>.<topic>`), so several environments or
    /// test runs can share one broker without seeing each other's messages. Default unset.
    pub namespace: Option<String>,
    /// Readiness fails while the broker is unreachable. Default `true`.
    pub required: bool,
    /// Deadline for a publish to be confirmed by the broker. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub publish_timeout: Duration,
    /// `in_process`: messages a topic (per consumer group) holds before publishes are refused. Default `10000`.
    pub capacity: usize,
    /// Background connection retries.
    pub connect: ConnectConfig,
    /// The Kafka backend's settings (security, topic creation, client properties).
    pub kafka: KafkaConfig,
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
            kafka: KafkaConfig::default(),
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
    #[serde(with = "keel_config::duration")]
    pub poll_interval: Duration,
    /// How long a claim lasts unless renewed. A working relay renews its claims every quarter of
    /// this and stops publishing a claim it could not renew in time, so the rows of a relay that
    /// died are taken over within this, and never while their relay still publishes them.
    /// Default `2s`.
    #[serde(with = "keel_config::duration")]
    pub lease: Duration,
    /// Publish attempts before a row is marked dead. Default `12`.
    pub max_attempts: u32,
    /// Smallest wait before a failed row is retried (backoff `2^n s`, ±10 % jitter). Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub backoff_min: Duration,
    /// Largest wait between attempts. Default `30m`.
    #[serde(with = "keel_config::duration")]
    pub backoff_max: Duration,
    /// Sent rows are deleted after this long. Default `24h`.
    #[serde(with = "keel_config::duration")]
    pub retention: Duration,
    /// Publishes in flight at once (rows with the same key are still published one by one). Default `256`.
    pub max_in_flight: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            lease: Duration::from_secs(2),
            max_attempts: 12,
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(30 * 60),
            retention: Duration::from_secs(24 * 3600),
            max_in_flight: 256,
        }
    }
}

impl Section for BusConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        // Whether a broker is needed at all is known only once the service asks for the bus
        // (`Setup::bus`), which is where a missing URL or `in_process` in production is refused.
        match (self.backend, self.url.as_ref().map(Secret::expose)) {
            (BusBackend::Nats, Some(u)) if !(u.starts_with("nats://") || u.starts_with("tls://")) => {
                v.invalid("url", "must start with nats:// for the nats backend")
            }
            (BusBackend::Rabbitmq, Some(u)) if !(u.starts_with("amqp://") || u.starts_with("amqps://")) => {
                v.invalid("url", "must start with amqp:// or amqps:// for the rabbitmq backend")
            }
            (BusBackend::Kafka, Some(u)) => {
                if let Err(why) = bootstrap_servers(u) {
                    v.invalid("url", why);
                }
            }
            (BusBackend::InProcess, Some(u)) if memory_bus_name(u).is_none() => v.invalid(
                "url",
                "must be memory://<name> for the in_process backend (services with the same name share one bus)",
            ),
            _ => {}
        }
        if let Some(ns) = &self.namespace {
            let ok = !ns.is_empty()
                && ns.len() <= 50
                && ns
                    .split('.')
                    .all(|w| !w.is_empty() && w.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
            if !ok {
                v.invalid("namespace", "must be dot-separated words of [A-Za-z0-9_-], at most 50 characters");
            }
        }
        if self.publish_timeout.is_zero() {
            v.invalid("publish_timeout", "must be more than 0s");
        }
        if self.capacity == 0 {
            v.invalid("capacity", "must be at least 1");
        }
        v.section("connect", &self.connect);
        if self.backend == BusBackend::Kafka {
            v.section("kafka", &self.kafka);
        }
    }
}

impl Section for OutboxConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.batch_size == 0 {
            v.invalid("batch_size", "must be at least 1");
        } else if self.batch_size > MAX_OUTBOX_BATCH {
            // One statement binds a parameter per claimed row; SQLite takes at most 32 766.
            v.invalid("batch_size", format!("must be at most {MAX_OUTBOX_BATCH}"));
        }
        if self.max_attempts == 0 {
            v.invalid("max_attempts", "must be at least 1");
        }
        if self.max_in_flight == 0 {
            v.invalid("max_in_flight", "must be at least 1");
        }
        if self.lease.is_zero() || self.poll_interval.is_zero() || self.backoff_min.is_zero() {
            v.invalid("", "lease, poll_interval and backoff_min must be more than 0s");
        } else if self.lease < MIN_LEASE {
            // Renewed every quarter of it: shorter would be a write every few milliseconds.
            v.invalid("lease", "must be at least 200ms");
        }
        if self.backoff_max < self.backoff_min {
            v.invalid("backoff_max", "must be at least outbox.backoff_min");
        }
    }
}
