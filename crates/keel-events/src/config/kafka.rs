//! `bus.kafka.*`: what the Kafka backend needs beyond `bus.url` (the bootstrap servers).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Profile, Secret, Section, Validation};

/// How the client reaches the brokers (Kafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KafkaSecurity {
    /// No TLS, no authentication: refused in production unless `allow_plaintext`.
    #[default]
    Plaintext,
    /// TLS (`tls_*` files), no SASL.
    Ssl,
    /// SASL without TLS: the password crosses the network readable; refused in production
    /// unless `allow_plaintext`.
    SaslPlaintext,
    /// SASL over TLS: what a production cluster should require.
    SaslSsl,
}

impl KafkaSecurity {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether it authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// Whether it encrypts with TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// The SASL mechanism (Kafka's `sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN`: the password itself goes to the broker (only over TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512` (default).
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// librdkafka properties Keel sets itself because its guarantees rest on them: the producer's
/// idempotence and acknowledgements, and the consumer's offset handling.
pub(crate) const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "statistics.interval.ms",
    "partitioner",
];

/// `bus.kafka.*`: the Kafka backend's settings (`bus.backend: kafka`, `bus.url:
/// kafka://host:9092,host2:9092`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// The client id brokers log and quota by. Default `keel`.
    pub client_id: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`. Production refuses the
    /// two without TLS unless `allow_plaintext` is set.
    pub security_protocol: KafkaSecurity,
    /// Production accepts `plaintext` and `sasl_plaintext` (a private network the operator
    /// vouches for). Default `false`.
    pub allow_plaintext: bool,
    /// `SCRAM-SHA-512` (default), `SCRAM-SHA-256` or `PLAIN`; with a `sasl_*` protocol.
    pub sasl_mechanism: SaslMechanism,
    /// The SASL user; required with a `sasl_*` protocol.
    pub sasl_username: Option<String>,
    /// **Secret.** The SASL password (`sasl_password_file` to read it from a file); required
    /// with a `sasl_*` protocol.
    pub sasl_password: Option<Secret>,
    /// PEM file of the CA certificates that sign the brokers' (default: the system's).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by TLS (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Create a missing topic (with its `.dlq` topic) on first use. When `false`, a topic that
    /// does not exist is an error naming it, never a silently idle consumer. Default `true`.
    pub create_topics: bool,
    /// Partitions of a topic Keel creates (the most consumers of one group that can work at
    /// once). Default unset: the broker's `num.partitions`.
    pub partitions: Option<u32>,
    /// Replicas of each partition of a topic Keel creates. Default unset: the broker's
    /// `default.replication.factor` (use 3 on a production cluster).
    pub replication_factor: Option<u16>,
    /// A consumer that stops heart-beating for this long leaves its group, and its partitions
    /// go to the others. Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub session_timeout: Duration,
    /// Other librdkafka properties (`fetch.max.bytes`, `compression.type`, …), passed as given.
    /// The ones Keel's guarantees rest on (idempotence, `acks`, offset handling, security; see
    /// docs/events.md) are refused here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            client_id: "keel".into(),
            security_protocol: KafkaSecurity::Plaintext,
            allow_plaintext: false,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            create_topics: true,
            partitions: None,
            replication_factor: None,
            session_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        }
    }
}

/// The bootstrap servers of a `kafka://host:port,host:port` URL, or why it is not one.
pub(crate) fn bootstrap_servers(url: &str) -> Result<String, String> {
    let Some(list) = url.strip_prefix("kafka://") else {
        return Err("must be kafka://host:port[,host:port…] for the kafka backend".into());
    };
    let list = list.trim_end_matches('/');
    let mut servers = Vec::new();
    for server in list.split(',') {
        let ok = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':'))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!("{server:?} is not host:port (kafka://host:port[,host:port…])"));
        }
        servers.push(server);
    }
    Ok(servers.join(","))
}

impl Section for KafkaConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        let id_ok = !self.client_id.is_empty()
            && self.client_id.len() <= 100
            && self.client_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            v.invalid("client_id", "must be 1-100 characters of [A-Za-z0-9._-]");
        }
        if self.security_protocol.sasl() {
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                v.invalid("sasl_username", "is required with a sasl_* security_protocol");
            }
            if self.sasl_password.as_ref().is_none_or(|p| p.expose().is_empty()) {
                v.invalid("sasl_password", "is required with a sasl_* security_protocol (or sasl_password_file)");
            }
            if self.sasl_mechanism == SaslMechanism::Plain && !self.security_protocol.tls() {
                v.invalid("sasl_mechanism", "PLAIN sends the password itself: use it with sasl_ssl only");
            }
        } else if self.sasl_username.is_some() || self.sasl_password.is_some() {
            v.invalid("security_protocol", "sasl_username/sasl_password are set: use sasl_ssl (or sasl_plaintext)");
        }
        if !self.security_protocol.tls()
            && (self.tls_ca_file.is_some() || self.tls_cert_file.is_some() || self.tls_key_file.is_some())
        {
            v.invalid("security_protocol", "tls_* files are set: use ssl or sasl_ssl");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            v.invalid("tls_key_file", "tls_cert_file and tls_key_file go together");
        }
        for (key, file) in [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                v.invalid(key, format!("{} is not a readable file", f.display()));
            }
        }
        if v.profile() == Profile::Production && !self.security_protocol.tls() && !self.allow_plaintext {
            v.production(
                "security_protocol",
                "production needs TLS to the brokers (ssl or sasl_ssl); set allow_plaintext: true beside it if the network is private",
            );
        }
        if self.partitions == Some(0) {
            v.invalid("partitions", "must be at least 1 (or unset: the broker's default)");
        }
        if self.replication_factor == Some(0) {
            v.invalid("replication_factor", "must be at least 1 (or unset: the broker's default)");
        }
        if self.session_timeout < Duration::from_secs(1) || self.session_timeout > Duration::from_secs(300) {
            v.invalid("session_timeout", "must be between 1s and 5m");
        }
        for key in self.properties.keys() {
            if RESERVED_PROPERTIES.contains(&key.as_str()) {
                v.invalid(
                    &format!("properties.{key}"),
                    "is set by Keel (its delivery guarantees or a bus.kafka setting rest on it)",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_are_parsed() {
        assert_eq!(bootstrap_servers("kafka://127.0.0.1:9092").unwrap(), "127.0.0.1:9092");
        assert_eq!(bootstrap_servers("kafka://a:9092,b.example:9093/").unwrap(), "a:9092,b.example:9093");
        for bad in
            ["nats://a:1", "kafka://", "kafka://a", "kafka://a:0", "kafka://a:x", "kafka://a:1,,b:2", "kafka://a b:1"]
        {
            assert!(bootstrap_servers(bad).is_err(), "{bad}");
        }
    }
}
