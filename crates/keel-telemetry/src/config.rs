//! The `log` and `telemetry` sections.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::otlp::{self, Origin};
use super::{mentions_trace, parse_filter};
use keel_config::{Profile, Secret, Section, Templates, Validation};

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
    #[serde(with = "keel_config::duration::option")]
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

impl Section for LogConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        const TRACE: &str = "`trace` logs too much (and may log secrets) for production";
        let prod = v.profile() == Profile::Production;
        if let Err(e) = parse_filter(&self.level) {
            v.invalid("level", e);
        }
        if prod && mentions_trace(&self.level) {
            v.production("level", TRACE);
        }
        if let Some(rl) = v.env("RUST_LOG").filter(|s| !s.trim().is_empty()) {
            match parse_filter(&rl) {
                Err(e) => v.invalid_env("RUST_LOG", e),
                Ok(()) if prod && mentions_trace(&rl) => v.production_env("RUST_LOG", TRACE),
                Ok(()) => {}
            }
        }
    }
}

impl Section for TelemetryConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        // Keel's keys, and the `OTEL_*` variables beneath them.
        let problems = otlp::problems(self, &|name| v.env(name));
        for p in problems {
            match p.origin {
                Origin::Key(path) => {
                    let path = path.strip_prefix("telemetry.").unwrap_or(&path).to_owned();
                    v.invalid(&path, p.message);
                }
                Origin::Env(var) => v.invalid_env(var, p.message),
            }
        }
    }

    fn templates(t: &mut Templates<'_>) {
        // `telemetry.otlp.headers` maps names to secrets: `<name>_file` entries need a `<name>`.
        t.file_entries("otlp.headers");
    }
}
