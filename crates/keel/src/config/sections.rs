//! The `log` and `telemetry` sections, until `keel::telemetry` owns them.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Problem, ProblemKind, Profile, Section, Source, Validation};
// The one import from outside this module: the filter syntax belongs to telemetry, which will
// own these sections.
use crate::telemetry::{mentions_trace, parse_filter};

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

/// `telemetry.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// OTLP export.
    pub otlp: OtlpConfig,
    /// Fraction of new traces sampled, 0.0–1.0 (a sampled parent is always followed). Default `1.0`.
    pub sampling_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp: OtlpConfig::default(), sampling_ratio: 1.0 }
    }
}

/// `telemetry.otlp.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// OTLP/gRPC collector endpoint (`http://otel-collector:4317`). Unset: spans are not exported
    /// (trace ids are still made, logged and propagated).
    pub endpoint: Option<String>,
    /// Export deadline per batch. Default `10s`.
    #[serde(with = "super::duration")]
    pub timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self { endpoint: None, timeout: Duration::from_secs(10) }
    }
}

impl Section for LogConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        let prod = v.profile() == Profile::Production;
        let rust_log = (v.env)("RUST_LOG").filter(|s| !s.trim().is_empty());
        if let Err(e) = parse_filter(&self.level) {
            v.invalid("level", e);
        }
        if prod && mentions_trace(&self.level) {
            v.production("level", "`trace` logs too much (and may log secrets) for production");
        }
        if let Some(rl) = &rust_log {
            let problem = match parse_filter(rl) {
                Err(e) => Some((ProblemKind::Invalid, e)),
                Ok(()) if prod && mentions_trace(rl) => {
                    Some((ProblemKind::Production, "`trace` logs too much (and may log secrets) for production".into()))
                }
                Ok(()) => None,
            };
            if let Some((kind, message)) = problem {
                v.problems.push(Problem {
                    path: "RUST_LOG".into(),
                    source: Some(Source::Env("RUST_LOG".into())),
                    kind,
                    message,
                });
            }
        }
    }
}

impl Section for TelemetryConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(0.0..=1.0).contains(&self.sampling_ratio) || self.sampling_ratio.is_nan() {
            v.invalid("sampling_ratio", "must be between 0.0 and 1.0");
        }
        if let Some(ep) = &self.otlp.endpoint {
            let ok = ep
                .parse::<http::Uri>()
                .ok()
                .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
            if !ok {
                v.invalid("otlp.endpoint", format!("`{ep}` is not an http(s) URL such as http://otel-collector:4317"));
            }
        }
    }
}
