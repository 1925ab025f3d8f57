//! OTLP trace export and the OpenTelemetry SDK settings: Keel's `telemetry.*` keys, with the
//! standard `OTEL_*` variables beneath them.
//!
//! Every setting is resolved here, from the configuration and the environment, and handed to the
//! SDK and the exporter explicitly: left unset, the exporter builders and `Resource::builder()`
//! would read the same variables themselves and let them win over Keel's keys. The one thing the
//! exporters still read on their own is `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, which they add over
//! the headers they are given; so the final headers are set again on every request (the gRPC
//! interceptor, [`HeaderClient`]).
//!
//! `config check` reports what [`problems`] finds: a bad endpoint, protocol, header, timeout,
//! sampler or resource attribute, and a CA, certificate or key file that cannot be read.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use super::{OtlpProtocol, TelemetryConfig, TelemetryError};
use keel_config::Profile;

/// The export deadline when neither `telemetry.otlp.timeout` nor a variable sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads an environment variable (the process's, or a loader's in `config check` and tests).
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A configuration key (`telemetry.otlp.endpoint`).
    Key(String),
    /// An environment variable (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    Env(&'static str),
}

impl Origin {
    fn key(path: &str) -> Self {
        Self::Key(path.to_owned())
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(k) => f.write_str(k),
            Self::Env(v) => f.write_str(v),
        }
    }
}

/// A setting that cannot be used, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) origin: Origin,
    pub(crate) message: String,
}

impl Problem {
    fn new(origin: Origin, message: impl Into<String>) -> Self {
        Self { origin, message: message.into() }
    }
}

/// How new traces are sampled; `parent_based` follows a caller's decision first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SamplerSetting {
    pub(crate) parent_based: bool,
    /// The fraction of new (or, without `parent_based`, all) traces sampled.
    pub(crate) ratio: f64,
}

impl SamplerSetting {
    fn sampler(self) -> Sampler {
        let root = if self.ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if self.ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(self.ratio)
        };
        if self.parent_based { Sampler::ParentBased(Box::new(root)) } else { root }
    }
}

/// A file named by a key or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSetting {
    pub(crate) path: PathBuf,
    pub(crate) origin: Origin,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Export {
    pub(crate) protocol: OtlpProtocol,
    /// The URL used: for `http/protobuf` from a generic endpoint, with `/v1/traces`.
    pub(crate) url: String,
    /// Lower-case names; Keel's over `OTEL_EXPORTER_OTLP_TRACES_HEADERS` over
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) timeout: Duration,
    pub(crate) ca_file: Option<FileSetting>,
    pub(crate) client_cert: Option<FileSetting>,
    pub(crate) client_key: Option<FileSetting>,
}

/// Everything the tracer provider is built from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// `telemetry.service_name` or `OTEL_SERVICE_NAME`; `None`: the service's own name.
    pub(crate) service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, beneath `service.*` and `deployment.environment.name`.
    pub(crate) resource: Vec<(String, String)>,
    pub(crate) sampler: SamplerSetting,
    /// `None`: no endpoint, or `OTEL_SDK_DISABLED=true`.
    pub(crate) export: Option<Export>,
}

const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
const TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
const TRACES_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE";
const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
const TRACES_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY";

/// A variable's value; empty counts as unset, as the specification says.
fn var(env: Lookup<'_>, name: &'static str) -> Option<(String, Origin)> {
    env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(|v| (v, Origin::Env(name)))
}

/// The first variable of `names` that is set.
fn first_var(env: Lookup<'_>, names: &[&'static str]) -> Option<(String, Origin)> {
    names.iter().find_map(|n| var(env, n))
}

/// Resolves the settings from the configuration and the environment: each of Keel's keys wins
/// over the variables for the same thing, a signal-specific variable over the generic one.
pub(crate) fn resolve(cfg: &TelemetryConfig, env: Lookup<'_>) -> Result<Settings, Vec<Problem>> {
    let mut problems = Vec::new();

    let service_name = match &cfg.service_name {
        Some(name) if name.trim().is_empty() => {
            problems.push(Problem::new(
                Origin::key("telemetry.service_name"),
                "is empty: leave it unset or name the service",
            ));
            None
        }
        Some(name) => Some(name.clone()),
        None => var(env, SERVICE_NAME).map(|(v, _)| v),
    };
    let resource = match var(env, RESOURCE_ATTRIBUTES) {
        None => Vec::new(),
        Some((raw, origin)) => match parse_pairs(&raw) {
            Ok(pairs) => pairs,
            Err(e) => {
                problems.push(Problem::new(origin, e));
                Vec::new()
            }
        },
    };
    let sampler = match sampler(cfg, env) {
        Ok(s) => s,
        Err(p) => {
            problems.push(p);
            SamplerSetting { parent_based: true, ratio: 1.0 }
        }
    };
    let disabled = var(env, SDK_DISABLED).is_some_and(|(v, _)| v.eq_ignore_ascii_case("true"));
    let export = if disabled { None } else { export(cfg, env, &mut problems) };
    if problems.is_empty() { Ok(Settings { service_name, resource, sampler, export }) } else { Err(problems) }
}

fn sampler(cfg: &TelemetryConfig, env: Lookup<'_>) -> Result<SamplerSetting, Problem> {
    if let Some(ratio) = cfg.sampling_ratio {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Problem::new(Origin::key("telemetry.sampling_ratio"), "must be between 0.0 and 1.0"));
        }
        return Ok(SamplerSetting { parent_based: true, ratio });
    }
    let Some((name, origin)) = var(env, TRACES_SAMPLER) else {
        return Ok(SamplerSetting { parent_based: true, ratio: 1.0 });
    };
    let ratio = || -> Result<f64, Problem> {
        let Some((arg, origin)) = var(env, TRACES_SAMPLER_ARG) else { return Ok(1.0) };
        arg.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
            Problem::new(origin, format!("`{arg}` is not a sampling ratio: use a number between 0.0 and 1.0"))
        })
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "always_on" => SamplerSetting { parent_based: false, ratio: 1.0 },
        "always_off" => SamplerSetting { parent_based: false, ratio: 0.0 },
        "traceidratio" => SamplerSetting { parent_based: false, ratio: ratio()? },
        "parentbased_always_on" => SamplerSetting { parent_based: true, ratio: 1.0 },
        "parentbased_always_off" => SamplerSetting { parent_based: true, ratio: 0.0 },
        "parentbased_traceidratio" => SamplerSetting { parent_based: true, ratio: ratio()? },
        _ => {
            return Err(Problem::new(
                origin,
                format!(
                    "`{name}` is not a supported sampler: use always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ),
            ));
        }
    })
}

fn export(cfg: &TelemetryConfig, env: Lookup<'_>, problems: &mut Vec<Problem>) -> Option<Export> {
    let o = &cfg.otlp;
    // `generic`: an endpoint to which `/v1/traces` is appended for OTLP/HTTP.
    let (endpoint, endpoint_origin, generic) = match &o.endpoint {
        Some(ep) => (ep.trim().to_owned(), Origin::key("telemetry.otlp.endpoint"), true),
        None => match (var(env, TRACES_ENDPOINT), var(env, ENDPOINT)) {
            (Some((ep, origin)), _) => (ep, origin, false),
            (None, Some((ep, origin))) => (ep, origin, true),
            (None, None) => return None,
        },
    };
    let protocol = match &o.protocol {
        Some(p) => *p,
        None => match first_var(env, &[TRACES_PROTOCOL, PROTOCOL]) {
            None => OtlpProtocol::Grpc,
            Some((raw, origin)) => match raw.as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                _ => {
                    problems.push(Problem::new(origin, format!("`{raw}` is not supported: use grpc or http/protobuf")));
                    OtlpProtocol::Grpc
                }
            },
        },
    };
    let ok = endpoint
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if !ok {
        let example = match protocol {
            OtlpProtocol::Grpc => "http://otel-collector:4317",
            OtlpProtocol::HttpProtobuf => "http://otel-collector:4318",
        };
        problems.push(Problem::new(endpoint_origin, format!("`{endpoint}` is not an http(s) URL such as {example}")));
    }
    let url = if generic && protocol == OtlpProtocol::HttpProtobuf {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint
    };

    let mut headers = BTreeMap::new();
    for name in [HEADERS, TRACES_HEADERS] {
        if let Some((raw, origin)) = var(env, name) {
            match parse_pairs(&raw) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        match check_header(&k, &v, protocol) {
                            Ok(k) => {
                                headers.insert(k, v);
                            }
                            Err(e) => problems.push(Problem::new(origin.clone(), e)),
                        }
                    }
                }
                Err(e) => problems.push(Problem::new(origin, e)),
            }
        }
    }
    for (k, v) in &o.headers {
        match check_header(k, v.expose(), protocol) {
            Ok(name) => {
                headers.insert(name, v.expose().to_owned());
            }
            Err(e) => problems.push(Problem::new(Origin::Key(format!("telemetry.otlp.headers.{k}")), e)),
        }
    }

    let timeout = match o.timeout {
        Some(t) if t.is_zero() => {
            problems.push(Problem::new(Origin::key("telemetry.otlp.timeout"), "must be more than 0s"));
            DEFAULT_TIMEOUT
        }
        Some(t) => t,
        None => match first_var(env, &[TRACES_TIMEOUT, TIMEOUT]) {
            None => DEFAULT_TIMEOUT,
            Some((raw, origin)) => match raw.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    problems.push(Problem::new(
                        origin,
                        format!("`{raw}` is not a timeout: use a whole number of milliseconds, more than 0"),
                    ));
                    DEFAULT_TIMEOUT
                }
            },
        },
    };

    let file = |key: &Option<PathBuf>, path: &str, vars: &[&'static str]| match key {
        Some(p) => Some(FileSetting { path: p.clone(), origin: Origin::key(path) }),
        None => first_var(env, vars).map(|(p, origin)| FileSetting { path: PathBuf::from(p), origin }),
    };
    let ca_file = file(&o.ca_file, "telemetry.otlp.ca_file", &[TRACES_CERTIFICATE, CERTIFICATE]);
    let client_cert =
        file(&o.client_cert_file, "telemetry.otlp.client_cert_file", &[TRACES_CLIENT_CERTIFICATE, CLIENT_CERTIFICATE]);
    let client_key = file(&o.client_key_file, "telemetry.otlp.client_key_file", &[TRACES_CLIENT_KEY, CLIENT_KEY]);
    match (&client_cert, &client_key) {
        (Some(c), None) => {
            problems.push(Problem::new(c.origin.clone(), "needs its private key: set telemetry.otlp.client_key_file"));
        }
        (None, Some(k)) => {
            problems.push(Problem::new(k.origin.clone(), "needs its certificate: set telemetry.otlp.client_cert_file"));
        }
        _ => {}
    }
    Some(Export { protocol, url, headers, timeout, ca_file, client_cert, client_key })
}

/// Checks one header; returns its name in lower case.
fn check_header(name: &str, value: &str, protocol: OtlpProtocol) -> Result<String, String> {
    let parsed =
        HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
    if protocol == OtlpProtocol::Grpc && parsed.as_str().ends_with("-bin") {
        return Err(format!("`{name}`: binary (`-bin`) gRPC metadata is not supported"));
    }
    if HeaderValue::from_str(value).is_err() {
        // The value may be a secret: never repeat it.
        return Err(format!("the value of `{name}` is not a valid header value (visible ASCII only)"));
    }
    Ok(parsed.as_str().to_owned())
}

/// Parses `key=value,key2=value2` (the W3C baggage form of `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS`), percent-decoding keys and values.
fn parse_pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            // Show the key only: the item may hold a secret.
            let key: String = item.chars().take_while(|c| *c != ':').take(40).collect();
            return Err(format!("`{key}…` is not key=value: write key=value,key2=value2"));
        };
        let key = percent_decode(k.trim()).ok_or_else(|| format!("`{}` is not percent-encoded correctly", k.trim()))?;
        if key.is_empty() {
            return Err("an item has an empty key: write key=value,key2=value2".into());
        }
        let value =
            percent_decode(v.trim()).ok_or_else(|| format!("the value of `{key}` is not percent-encoded correctly"))?;
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every problem `config check` should report: unusable settings, and files that cannot be read
/// or hold no PEM certificate or key.
pub(crate) fn problems(cfg: &TelemetryConfig, env: Lookup<'_>) -> Vec<Problem> {
    match resolve(cfg, env) {
        Err(problems) => problems,
        Ok(Settings { export: Some(e), .. }) => {
            let mut out = Vec::new();
            if let Some(f) = &e.ca_file
                && let Err(m) = read_certs(&f.path)
            {
                out.push(Problem::new(f.origin.clone(), m));
            }
            if let Some(f) = &e.client_cert
                && let Err(m) = read_certs(&f.path)
            {
                out.push(Problem::new(f.origin.clone(), m));
            }
            if let Some(f) = &e.client_key
                && let Err(m) = read_key(&f.path)
            {
                out.push(Problem::new(f.origin.clone(), m));
            }
            out
        }
        Ok(_) => Vec::new(),
    }
}

/// A PEM file's bytes, when it holds at least one certificate.
fn read_certs(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

/// A PEM file's bytes, when it holds a private key.
fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{} holds no PEM private key: {e}", path.display()))?;
    Ok(pem)
}

/// The tracer provider for the process, and whether it exports spans.
pub(crate) fn tracer_provider(
    service: &str,
    version: &str,
    profile: Profile,
    telemetry: &TelemetryConfig,
) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    let settings = resolve(telemetry, &env).map_err(|problems| TelemetryError::Otlp {
        endpoint: telemetry.otlp.endpoint.clone().unwrap_or_else(|| "(unset)".into()),
        message: problems.iter().map(|p| format!("{}: {}", p.origin, p.message)).collect::<Vec<_>>().join("; "),
    })?;
    build(service, version, profile, &settings)
}

fn build(
    service: &str,
    version: &str,
    profile: Profile,
    settings: &Settings,
) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    let resource = resource(service, version, profile, settings);
    let mut builder = SdkTracerProvider::builder().with_resource(resource).with_sampler(settings.sampler.sampler());
    let exporting = settings.export.is_some();
    if let Some(e) = &settings.export {
        let fail = |message: String| TelemetryError::Otlp { endpoint: e.url.clone(), message };
        let exporter = match e.protocol {
            OtlpProtocol::Grpc => grpc_exporter(e).map_err(fail)?,
            OtlpProtocol::HttpProtobuf => http_exporter(e).map_err(fail)?,
        };
        builder = builder.with_batch_exporter(exporter);
    }
    Ok((builder.build(), exporting))
}

/// The resource: `OTEL_RESOURCE_ATTRIBUTES` beneath `service.name`, `service.version` and
/// `deployment.environment.name`.
fn resource(service: &str, version: &str, profile: Profile, settings: &Settings) -> Resource {
    // `builder_empty`: `Resource::builder()` would read `OTEL_SERVICE_NAME` and
    // `OTEL_RESOURCE_ATTRIBUTES` itself, over Keel's values.
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_attributes([
            KeyValue::new("service.name", settings.service_name.clone().unwrap_or_else(|| service.to_owned())),
            KeyValue::new("service.version", version.to_owned()),
            KeyValue::new("deployment.environment.name", profile.as_str()),
        ])
        .build()
}

fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// The CA, client certificate and key PEMs to use (only for an `https://` endpoint).
struct TlsFiles {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn tls_files(e: &Export) -> Result<TlsFiles, String> {
    let with_origin = |f: &FileSetting, m: String| format!("{}: {m}", f.origin);
    let ca = e.ca_file.as_ref().map(|f| read_certs(&f.path).map_err(|m| with_origin(f, m))).transpose()?;
    let identity = match (&e.client_cert, &e.client_key) {
        (Some(c), Some(k)) => Some((
            read_certs(&c.path).map_err(|m| with_origin(c, m))?,
            read_key(&k.path).map_err(|m| with_origin(k, m))?,
        )),
        _ => None,
    };
    Ok(TlsFiles { ca, identity })
}

fn grpc_exporter(e: &Export) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use tonic::metadata::{MetadataKey, MetadataValue};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    // The channel is built here so the exporter does not resolve endpoint or TLS from the
    // environment (`OTEL_EXPORTER_OTLP_INSECURE` would turn `https` into `http`).
    let mut endpoint = Endpoint::from_shared(e.url.clone())
        .map_err(|err| format!("invalid endpoint: {err}"))?
        .timeout(e.timeout)
        .connect_timeout(e.timeout);
    if is_https(&e.url) {
        let files = tls_files(e)?;
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = files.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = files.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).map_err(|err| format!("TLS set-up failed: {err}"))?;
    }
    let channel = endpoint.connect_lazy();
    let mut metadata = Vec::with_capacity(e.headers.len());
    for (k, v) in &e.headers {
        let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|_| format!("`{k}` is not gRPC metadata"))?;
        let value =
            MetadataValue::try_from(v.as_str()).map_err(|_| format!("the value of `{k}` is not gRPC metadata"))?;
        metadata.push((key, value));
    }
    // Runs after the exporter has added `OTEL_EXPORTER_OTLP_HEADERS`: replaces them with the
    // resolved headers (where Keel's keys win).
    let interceptor = move |mut req: tonic::Request<()>| {
        for (k, v) in &metadata {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    };
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_protocol(Protocol::Grpc)
        .with_timeout(e.timeout)
        .with_interceptor(interceptor)
        .build()
        .map_err(|err| err.to_string())
}

fn http_exporter(e: &Export) -> Result<opentelemetry_otlp::SpanExporter, String> {
    // Ring, as for Keel's other TLS clients; a no-op when a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut client = reqwest::Client::builder()
        .timeout(e.timeout)
        .connect_timeout(e.timeout)
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if is_https(&e.url) {
        let files = tls_files(e)?;
        if let Some(ca) = files.ca {
            for cert in reqwest::Certificate::from_pem_bundle(&ca).map_err(|err| format!("CA file: {err}"))? {
                client = client.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = files.identity {
            let pem = [cert, b"\n".to_vec(), key].concat();
            client =
                client.identity(reqwest::Identity::from_pem(&pem).map_err(|err| format!("client certificate: {err}"))?);
        }
    }
    let http = client.build().map_err(|err| format!("cannot build the HTTP client: {err}"))?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "OTLP/HTTP export needs a Tokio runtime: set telemetry up inside one".to_owned())?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &e.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("`{k}` is not a header name"))?;
        let mut value = HeaderValue::from_str(v).map_err(|_| format!("the value of `{k}` is not a header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(e.url.clone())
        .with_timeout(e.timeout)
        .with_http_client(HeaderClient { http, headers, runtime })
        .build()
        .map_err(|err| err.to_string())
}

/// The OTLP/HTTP client: reqwest, setting the resolved headers on every request (over those the
/// exporter read from `OTEL_EXPORTER_OTLP_HEADERS`).
struct HeaderClient {
    http: reqwest::Client,
    headers: http::HeaderMap,
    /// The batch processor exports from its own thread, outside any runtime; reqwest needs
    /// Tokio's, so each request runs as a task on the runtime telemetry was set up in.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for HeaderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be API keys.
        f.debug_struct("HeaderClient").field("headers", &self.headers.keys().collect::<Vec<_>>()).finish()
    }
}

type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>> + Send + 'a>>;

impl opentelemetry_http::HttpClient for HeaderClient {
    // `async_trait`'s signature, written out.
    fn send_bytes<'life0, 'async_trait>(&'life0 self, request: http::Request<Bytes>) -> SendFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let (http, headers) = (self.http.clone(), self.headers.clone());
        let task = self.runtime.spawn(async move {
            let mut request = request;
            for (k, v) in &headers {
                request.headers_mut().insert(k.clone(), v.clone());
            }
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut out = http::Response::builder().status(response.status());
            if let Some(h) = out.headers_mut() {
                *h = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        Box::pin(async move { task.await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn resolve_with(cfg: &TelemetryConfig, vars: &[(&str, &str)]) -> Result<Settings, Vec<Problem>> {
        resolve(cfg, &env(vars))
    }

    fn export_of(cfg: &TelemetryConfig, vars: &[(&str, &str)]) -> Export {
        resolve_with(cfg, vars).unwrap().export.expect("export")
    }

    fn origins(r: Result<Settings, Vec<Problem>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|p| p.origin.to_string()).collect()
    }

    fn with_endpoint(ep: &str) -> TelemetryConfig {
        let mut cfg = TelemetryConfig::default();
        cfg.otlp.endpoint = Some(ep.into());
        cfg
    }

    #[test]
    fn nothing_set_means_no_export_and_parent_based_sampling_of_everything() {
        let s = resolve_with(&TelemetryConfig::default(), &[]).unwrap();
        assert_eq!(s.export, None);
        assert_eq!(s.sampler, SamplerSetting { parent_based: true, ratio: 1.0 });
        assert_eq!(s.service_name, None);
        assert!(s.resource.is_empty());
    }

    #[test]
    fn keels_endpoint_wins_over_both_variables() {
        let vars = [(ENDPOINT, "http://generic:4317"), (TRACES_ENDPOINT, "http://traces:4317/x")];
        assert_eq!(export_of(&with_endpoint("http://keel:4317"), &vars).url, "http://keel:4317");
        assert_eq!(export_of(&TelemetryConfig::default(), &vars).url, "http://traces:4317/x");
        assert_eq!(export_of(&TelemetryConfig::default(), &vars[..1]).url, "http://generic:4317");
    }

    #[test]
    fn http_protobuf_appends_the_signal_path_to_generic_endpoints_only() {
        let mut cfg = with_endpoint("https://keel:4318/");
        cfg.otlp.protocol = Some(OtlpProtocol::HttpProtobuf);
        assert_eq!(export_of(&cfg, &[]).url, "https://keel:4318/v1/traces");
        let http = [(PROTOCOL, "http/protobuf")];
        let e = export_of(&TelemetryConfig::default(), &[http[0], (ENDPOINT, "http://c:4318/base")]);
        assert_eq!((e.protocol, e.url.as_str()), (OtlpProtocol::HttpProtobuf, "http://c:4318/base/v1/traces"));
        let e = export_of(&TelemetryConfig::default(), &[http[0], (TRACES_ENDPOINT, "http://c:4318/custom")]);
        assert_eq!(e.url, "http://c:4318/custom");
        // gRPC uses the endpoint as given.
        assert_eq!(export_of(&TelemetryConfig::default(), &[(ENDPOINT, "http://c:4317")]).url, "http://c:4317");
    }

    #[test]
    fn protocol_precedence_and_refusals() {
        let mut cfg = with_endpoint("http://c:4317");
        let vars = [(PROTOCOL, "grpc"), (TRACES_PROTOCOL, "http/protobuf")];
        assert_eq!(export_of(&cfg, &vars).protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(export_of(&cfg, &vars[..1]).protocol, OtlpProtocol::Grpc);
        cfg.otlp.protocol = Some(OtlpProtocol::Grpc);
        assert_eq!(export_of(&cfg, &vars).protocol, OtlpProtocol::Grpc);
        // Keel's key wins, so a bad variable is not even read.
        assert!(resolve_with(&cfg, &[(PROTOCOL, "http/json")]).is_ok());
        assert_eq!(origins(resolve_with(&with_endpoint("http://c:4317"), &[(PROTOCOL, "http/json")])), [PROTOCOL]);
        let parsed: Result<OtlpProtocol, _> = serde_norway::from_str("http/json");
        assert!(parsed.is_err());
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert_eq!(origins(resolve_with(&with_endpoint("otel:4317"), &[])), ["telemetry.otlp.endpoint"]);
        assert_eq!(origins(resolve_with(&with_endpoint("ftp://otel"), &[])), ["telemetry.otlp.endpoint"]);
        assert_eq!(origins(resolve_with(&TelemetryConfig::default(), &[(ENDPOINT, "nope")])), [ENDPOINT]);
        assert!(resolve_with(&with_endpoint("https://otel.example:443"), &[]).is_ok());
    }

    #[test]
    fn headers_merge_keel_over_traces_over_generic_and_are_decoded() {
        let mut cfg = with_endpoint("http://c:4317");
        cfg.otlp.headers.insert("X-Api-Key".into(), keel_config::Secret::new("keel"));
        let vars =
            [(HEADERS, "x-api-key=generic, x-tenant=a%20b,x-only-generic=1"), (TRACES_HEADERS, "x-tenant=traces%2C1")];
        let h = export_of(&cfg, &vars).headers;
        let want: BTreeMap<String, String> = [("x-api-key", "keel"), ("x-only-generic", "1"), ("x-tenant", "traces,1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(h, want);
    }

    #[test]
    fn bad_headers_are_refused_without_repeating_values() {
        let mut cfg = with_endpoint("http://c:4317");
        cfg.otlp.headers.insert("bad name".into(), keel_config::Secret::new("v"));
        cfg.otlp.headers.insert("x-ok".into(), keel_config::Secret::new("line\nbreak-s3cret"));
        cfg.otlp.headers.insert("x-data-bin".into(), keel_config::Secret::new("AAAA"));
        let problems = resolve_with(&cfg, &[]).unwrap_err();
        let paths: Vec<String> = problems.iter().map(|p| p.origin.to_string()).collect();
        assert_eq!(
            paths,
            ["telemetry.otlp.headers.bad name", "telemetry.otlp.headers.x-data-bin", "telemetry.otlp.headers.x-ok"]
        );
        assert!(problems.iter().all(|p| !p.message.contains("s3cret")));
        // `-bin` is a plain header over HTTP.
        cfg.otlp.headers.retain(|k, _| k == "x-data-bin");
        cfg.otlp.protocol = Some(OtlpProtocol::HttpProtobuf);
        assert!(resolve_with(&cfg, &[]).is_ok());

        let e = resolve_with(&TelemetryConfig::default(), &[(ENDPOINT, "http://c"), (HEADERS, "api-key:s3cret")]);
        let problems = e.unwrap_err();
        assert_eq!(problems[0].origin, Origin::Env(HEADERS));
        assert!(!problems[0].message.contains("s3cret"), "{}", problems[0].message);
        assert_eq!(
            origins(resolve_with(&TelemetryConfig::default(), &[(ENDPOINT, "http://c"), (HEADERS, "k=%zz")])),
            [HEADERS]
        );
    }

    #[test]
    fn sampler_precedence_and_parsing() {
        let s = |cfg: &TelemetryConfig, vars: &[(&str, &str)]| resolve_with(cfg, vars).unwrap().sampler;
        let none = TelemetryConfig::default();
        let on = |parent_based, ratio| SamplerSetting { parent_based, ratio };
        assert_eq!(s(&none, &[(TRACES_SAMPLER, "always_on")]), on(false, 1.0));
        assert_eq!(s(&none, &[(TRACES_SAMPLER, "always_off")]), on(false, 0.0));
        assert_eq!(s(&none, &[(TRACES_SAMPLER, "traceidratio"), (TRACES_SAMPLER_ARG, "0.25")]), on(false, 0.25));
        assert_eq!(s(&none, &[(TRACES_SAMPLER, "traceidratio")]), on(false, 1.0));
        assert_eq!(s(&none, &[(TRACES_SAMPLER, "parentbased_always_on")]), on(true, 1.0));
        assert_eq!(s(&none, &[(TRACES_SAMPLER, "parentbased_always_off")]), on(true, 0.0));
        assert_eq!(
            s(&none, &[(TRACES_SAMPLER, "parentbased_traceidratio"), (TRACES_SAMPLER_ARG, "0.5")]),
            on(true, 0.5)
        );
        let mut keel = TelemetryConfig { sampling_ratio: Some(0.1), ..TelemetryConfig::default() };
        assert_eq!(s(&keel, &[(TRACES_SAMPLER, "always_off")]), on(true, 0.1));
        assert_eq!(s(&keel, &[(TRACES_SAMPLER, "jaeger_remote")]), on(true, 0.1), "not read under Keel's key");

        assert_eq!(origins(resolve_with(&none, &[(TRACES_SAMPLER, "jaeger_remote")])), [TRACES_SAMPLER]);
        let bad_arg = [(TRACES_SAMPLER, "traceidratio"), (TRACES_SAMPLER_ARG, "2")];
        assert_eq!(origins(resolve_with(&none, &bad_arg)), [TRACES_SAMPLER_ARG]);
        keel.sampling_ratio = Some(1.5);
        assert_eq!(origins(resolve_with(&keel, &[])), ["telemetry.sampling_ratio"]);
        keel.sampling_ratio = Some(f64::NAN);
        assert_eq!(origins(resolve_with(&keel, &[])), ["telemetry.sampling_ratio"]);

        assert!(matches!(on(true, 0.5).sampler(), Sampler::ParentBased(_)));
        assert!(matches!(on(false, 0.0).sampler(), Sampler::AlwaysOff));
        assert!(matches!(on(false, 0.3).sampler(), Sampler::TraceIdRatioBased(r) if r == 0.3));
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let mut cfg = TelemetryConfig::default();
        let vars = [(SERVICE_NAME, "from-env"), (RESOURCE_ATTRIBUTES, "team=core,region=eu%2Dwest")];
        let s = resolve_with(&cfg, &vars).unwrap();
        assert_eq!(s.service_name.as_deref(), Some("from-env"));
        assert_eq!(s.resource, [("team".to_owned(), "core".to_owned()), ("region".to_owned(), "eu-west".to_owned())]);
        cfg.service_name = Some("from-keel".into());
        assert_eq!(resolve_with(&cfg, &vars).unwrap().service_name.as_deref(), Some("from-keel"));
        assert_eq!(origins(resolve_with(&cfg, &[(RESOURCE_ATTRIBUTES, "team")])), [RESOURCE_ATTRIBUTES]);
        cfg.service_name = Some(" ".into());
        assert_eq!(origins(resolve_with(&cfg, &[])), ["telemetry.service_name"]);
    }

    #[test]
    fn keels_resource_attributes_win_over_the_variable() {
        let mut settings = Settings {
            service_name: None,
            resource: vec![
                ("service.name".into(), "env".into()),
                ("deployment.environment.name".into(), "env".into()),
                ("team".into(), "core".into()),
            ],
            sampler: SamplerSetting { parent_based: true, ratio: 1.0 },
            export: None,
        };
        let get = |r: &Resource, k: &'static str| r.get(&opentelemetry::Key::new(k)).map(|v| v.to_string());
        let r = resource("svc", "1.2.3", Profile::Test, &settings);
        assert_eq!(get(&r, "service.name").as_deref(), Some("svc"));
        assert_eq!(get(&r, "service.version").as_deref(), Some("1.2.3"));
        assert_eq!(get(&r, "deployment.environment.name").as_deref(), Some("test"));
        assert_eq!(get(&r, "team").as_deref(), Some("core"));
        assert_eq!(get(&r, "telemetry.sdk.language").as_deref(), Some("rust"));
        settings.service_name = Some("named".into());
        let r = resource("svc", "1.2.3", Profile::Test, &settings);
        assert_eq!(get(&r, "service.name").as_deref(), Some("named"));
        let (_, exporting) = build("svc", "1.2.3", Profile::Test, &settings).unwrap();
        assert!(!exporting);
    }

    #[test]
    fn timeout_precedence() {
        let mut cfg = with_endpoint("http://c:4317");
        assert_eq!(export_of(&cfg, &[]).timeout, DEFAULT_TIMEOUT);
        let vars = [(TIMEOUT, "2500"), (TRACES_TIMEOUT, "700")];
        assert_eq!(export_of(&cfg, &vars).timeout, Duration::from_millis(700));
        assert_eq!(export_of(&cfg, &vars[..1]).timeout, Duration::from_millis(2500));
        cfg.otlp.timeout = Some(Duration::from_secs(3));
        assert_eq!(export_of(&cfg, &vars).timeout, Duration::from_secs(3));
        cfg.otlp.timeout = None;
        assert_eq!(origins(resolve_with(&cfg, &[(TIMEOUT, "5s")])), [TIMEOUT]);
        cfg.otlp.timeout = Some(Duration::ZERO);
        assert_eq!(origins(resolve_with(&cfg, &[])), ["telemetry.otlp.timeout"]);
    }

    #[test]
    fn tls_files_precedence_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let mut cfg = with_endpoint("https://c:4317");
        let vars = [(CERTIFICATE, "/generic.pem"), (TRACES_CERTIFICATE, "/traces.pem")];
        assert_eq!(export_of(&cfg, &vars).ca_file.unwrap().path, PathBuf::from("/traces.pem"));
        assert_eq!(export_of(&cfg, &vars[..1]).ca_file.unwrap().origin, Origin::Env(CERTIFICATE));
        cfg.otlp.ca_file = Some(missing.clone());
        let e = export_of(&cfg, &vars);
        assert_eq!(e.ca_file.unwrap().origin, Origin::key("telemetry.otlp.ca_file"));

        let p = problems(&cfg, &env(&[]));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].origin, Origin::key("telemetry.otlp.ca_file"));
        assert!(p[0].message.contains("cannot read"), "{}", p[0].message);
        cfg.otlp.ca_file = Some(not_pem.clone());
        assert!(problems(&cfg, &env(&[]))[0].message.contains("no PEM certificate"));

        cfg.otlp.ca_file = None;
        let p = problems(&cfg, &env(&[(CLIENT_CERTIFICATE, not_pem.to_str().unwrap())]));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].origin, Origin::Env(CLIENT_CERTIFICATE));
        assert!(p[0].message.contains("private key"), "{}", p[0].message);
        let both = [(CLIENT_CERTIFICATE, not_pem.to_str().unwrap()), (CLIENT_KEY, not_pem.to_str().unwrap())];
        let p: Vec<String> = problems(&cfg, &env(&both)).into_iter().map(|p| p.origin.to_string()).collect();
        assert_eq!(p, [CLIENT_CERTIFICATE, CLIENT_KEY]);
    }

    #[test]
    fn sdk_disabled_turns_export_off() {
        let cfg = with_endpoint("http://c:4317");
        assert_eq!(resolve_with(&cfg, &[(SDK_DISABLED, "TRUE")]).unwrap().export, None);
        assert!(resolve_with(&cfg, &[(SDK_DISABLED, "false")]).unwrap().export.is_some());
    }

    #[test]
    fn pairs_parse() {
        assert_eq!(
            parse_pairs(" a=1 , b = x%3Dy ,,").unwrap(),
            [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "x=y".to_owned())]
        );
        assert!(parse_pairs("=1").is_err());
        assert!(parse_pairs("a=%4").is_err());
        assert_eq!(percent_decode("%E2%9C%93").as_deref(), Some("✓"));
    }

    #[test]
    fn optional_timeout_serde() {
        let cfg: crate::OtlpConfig = serde_norway::from_str("timeout: 250ms").unwrap();
        assert_eq!(cfg.timeout, Some(Duration::from_millis(250)));
        let cfg: crate::OtlpConfig = serde_norway::from_str("timeout: null").unwrap();
        assert_eq!(cfg.timeout, None);
        assert!(serde_norway::from_str::<crate::OtlpConfig>("timeout: 5").is_err());
        let yaml = serde_norway::to_string(&crate::OtlpConfig::default()).unwrap();
        assert!(yaml.contains("timeout: null"), "{yaml}");
    }
}
