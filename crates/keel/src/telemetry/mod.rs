//! Logs, traces and metrics.
//!
//! * **Logs** — `tracing` to stdout only: JSON lines in production and test, pretty in
//!   development (in colour only when stdout is a terminal and `NO_COLOR` is unset or empty).
//!   Every line carries `service`, and `request_id`, `trace_id`, `span_id` when a surrounding
//!   span knows them. The level comes from `log.level` (or `RUST_LOG`, which wins)
//!   and can be changed at run time with `PUT /admin/log-level`. Fields named like secrets or
//!   personal data (`password`, `token`, `authorization`, `cookie`, `email`, … plus
//!   `log.mask_fields`) are written as `***`, and every other field and the message go through
//!   [`scrub`](crate::security::mask::scrub) (credentials become `***`), in both formats.
//! * **Traces** — OpenTelemetry. Trace ids are always made, logged and propagated (W3C
//!   `traceparent`); spans are exported over OTLP/gRPC only when `telemetry.otlp.endpoint` is
//!   set, with `service.name`, `service.version` and `deployment.environment.name` resource
//!   attributes and `telemetry.sampling_ratio` applied to new traces. Without an endpoint no
//!   OpenTelemetry spans are built; a light layer gives spans their ids (see [`span_context`]).
//!   With JSON lines and no export, a request's span is made only when something needs it
//!   (`Span::current()`, a span opened inside the request); until then lines logged in the
//!   request are written from its fields, as if it existed.
//! * **Metrics** — a Prometheus registry per service: [`Metrics`].
//!
//! Logging and tracing are process-wide (one subscriber per process), so [`init`] is called once
//! per process by [`crate::run`]; later calls return a handle to the first set-up.

mod deferred;
mod filter;
mod format;
mod ids;
mod layer;
mod metrics;
pub(crate) mod otlp;
mod writer;

use std::io::IsTerminal as _;
use std::sync::{Mutex, OnceLock};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub(crate) use deferred::RequestSpan;
pub use ids::{set_parent, span_context};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};

use crate::config::{LogFormat, Profile, TelemetryConfig};

/// What [`init`] needs.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// `service.name`, and the `service` of lines logged outside any service span.
    pub service: String,
    /// `service.version`.
    pub version: String,
    /// `deployment.environment.name`.
    pub profile: Profile,
    /// Filter directives (`info`, `info,sqlx=warn`).
    pub level: String,
    /// Line format.
    pub format: LogFormat,
    /// OTLP export and sampling.
    pub telemetry: TelemetryConfig,
    /// Field names logged as `***`, beyond `keel::security::mask::DEFAULT_FIELDS` (`log.mask_fields`).
    pub mask_fields: Vec<String>,
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(String),
    /// The log writer thread could not be started.
    #[error("cannot start the log writer thread: {0}")]
    Writer(#[source] std::io::Error),
    /// The OTLP exporter could not be built.
    #[error("cannot set up OTLP export to {endpoint}: {message}")]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
}

struct Global {
    filter: filter::LogFilter,
    /// Whether Keel's subscriber is the process's (another may have been installed first).
    installed: bool,
    level: Mutex<String>,
    provider: SdkTracerProvider,
    /// Whether spans go to an OTLP exporter.
    exporting: bool,
    /// Dropping it flushes the log writer's queue.
    writer: Mutex<Option<writer::WriterGuard>>,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// Flushes and stops trace export; call at the end of shutdown.
#[derive(Debug, Clone)]
pub struct TelemetryGuard {
    _private: (),
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(g) = GLOBAL.get()
            && let Err(e) = g.provider.force_flush()
        {
            tracing::warn!(error = %e, "trace flush failed");
        }
    }

    /// Flushes and shuts the exporter down, then flushes queued log lines. Later spans are
    /// dropped and later log lines are lost: call it last.
    pub fn shutdown(&self) {
        if let Some(g) = GLOBAL.get() {
            if let Err(e) = g.provider.shutdown() {
                tracing::warn!(error = %e, "trace exporter shutdown failed");
            }
            if let Ok(mut w) = g.writer.lock() {
                drop(w.take());
            }
        }
    }
}

/// Sets up logging and tracing for the process. Must run inside a Tokio runtime when OTLP export
/// is configured. The first call wins; later calls (several services in one process, tests)
/// return a guard for the existing set-up.
pub fn init(opts: &TelemetryOptions) -> Result<TelemetryGuard, TelemetryError> {
    if GLOBAL.get().is_some() {
        return Ok(TelemetryGuard { _private: () });
    }
    let level = effective_level(&opts.level);
    let filter = filter::LogFilter::new(&level).map_err(TelemetryError::Filter)?;

    let (provider, exporting) = tracer_provider(opts)?;
    global::set_text_map_propagator(TraceContextPropagator::new());
    // With an exporter, `tracing-opentelemetry` turns spans into OpenTelemetry spans. Without
    // one those would be built only to be dropped, so Keel's log layer gives spans their W3C
    // ids instead (see `ids`).
    // Busy/idle tracking would read the clock on every poll of every span, and thread, source
    // location and target attributes allocate per span; none is worth it per request.
    let otel = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("keel"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(otel_filter())
    });
    let ids = (!exporting).then(|| ids::IdSource::new(otlp::sampling_ratio(&opts.telemetry)));

    // Lines are written to stdout by a dedicated thread, in batches, so a request never waits
    // on a write syscall and nothing is dropped (see `writer`).
    let (stdout, writer_guard) = writer::LineWriter::new(std::io::stdout()).map_err(TelemetryError::Writer)?;
    let masker = crate::security::mask::Masker::new(opts.mask_fields.iter());
    let registry = tracing_subscriber::registry().with(otel);
    let installed = match opts.format {
        LogFormat::Json => {
            let format = format::JsonFormat::new(opts.service.clone(), masker);
            let json = registry.with(layer::LogLayer::json(filter.clone(), ids, format, stdout));
            if exporting {
                json.try_init().is_ok()
            } else {
                // Request spans are made only when needed (see `deferred`).
                deferred::Deferring::new(json).try_init().is_ok()
            }
        }
        LogFormat::Pretty => {
            // Spans at `info` always reach the fmt layer (they print nothing themselves), so a
            // `warn` line logged inside a request still shows the request's span.
            let ansi = format::colour(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            let pretty = format::pretty_layer(masker, ansi, stdout)
                .with_filter(tracing_subscriber::filter::FilterExt::or(filter.clone(), info_spans()));
            registry.with(layer::LogLayer::new(filter.clone(), ids)).with(pretty).try_init().is_ok()
        }
    };
    let _ = GLOBAL.set(Global {
        filter,
        installed,
        level: Mutex::new(filter::normalize(&level)),
        provider,
        exporting,
        writer: Mutex::new(Some(writer_guard)),
    });
    if !installed {
        // Someone else (a test harness) owns the global subscriber; keep going with theirs.
        tracing::debug!("a tracing subscriber was already installed");
    }
    Ok(TelemetryGuard { _private: () })
}

/// Spans at `info` and above, whatever the log level: they carry the ids and fields of every
/// line logged inside them.
fn info_spans() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|m| m.is_span() && *m.level() <= tracing::Level::INFO)
}

/// What becomes OpenTelemetry data: spans at `info` and above, whatever the log level (so traces
/// stay whole when logs are quiet), and only `warn`/`error` events as span events (an `info` access
/// line would only repeat what the span already says, at a cost on every request).
fn otel_filter() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|meta| {
        let max = if meta.is_span() { tracing::Level::INFO } else { tracing::Level::WARN };
        *meta.level() <= max
    })
}

fn tracer_provider(opts: &TelemetryOptions) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    otlp::tracer_provider(&opts.service, &opts.version, opts.profile, &opts.telemetry)
}

fn effective_level(configured: &str) -> String {
    std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| configured.to_owned())
}

/// Checks filter directives (`info`, `warn,keel=debug`).
pub fn parse_filter(directives: &str) -> Result<(), String> {
    if directives.trim().is_empty() {
        return Err("is empty: use a level such as info".into());
    }
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    for d in directives.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // A bare target (`sqlx`) silently means "everything from sqlx at trace": ask for a level.
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "`{d}` has no level: use one of off, error, warn, info, debug, trace (e.g. info or info,sqlx=warn)"
            ));
        }
    }
    filter::parse(directives).map(|_| ())
}

/// Whether directives enable `trace` anywhere.
pub(crate) fn mentions_trace(directives: &str) -> bool {
    directives.split(',').any(|d| {
        let level = d.rsplit('=').next().unwrap_or(d).trim();
        level.eq_ignore_ascii_case("trace")
    })
}

/// The current log filter directives.
pub fn log_level() -> Option<String> {
    GLOBAL.get().and_then(|g| g.level.lock().ok().map(|l| l.clone()))
}

/// Replaces the log filter for the whole process, at once, without a restart.
pub fn set_log_level(directives: &str) -> Result<(), String> {
    parse_filter(directives)?;
    let g = GLOBAL.get().ok_or_else(|| "logging is not initialised".to_owned())?;
    if !g.installed {
        return Err("another tracing subscriber is installed; Keel's log filter is not in effect".into());
    }
    g.filter.set(directives)?;
    if let Ok(mut l) = g.level.lock() {
        *l = filter::normalize(directives);
    }
    tracing::info!(level = directives, "log level changed");
    Ok(())
}

/// Whether spans are exported (`telemetry.otlp.endpoint` is set): span attributes that only
/// exported spans show (`otel.name`) need not be computed otherwise.
pub(crate) fn exporting() -> bool {
    GLOBAL.get().is_some_and(|g| g.exporting)
}

/// The current span's trace context, as an OpenTelemetry context to inject.
fn current_context() -> Context {
    // An invalid context injects nothing: the propagator checks.
    Context::new().with_remote_span_context(span_context(&tracing::Span::current()))
}

/// Reads a W3C `traceparent` (and `tracestate`) from request headers.
pub fn extract_context(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's W3C `traceparent` into outbound request headers.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// keel::telemetry::inject_current(&mut headers);
/// ```
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = current_context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The current span's W3C `traceparent` and `tracestate`, for carriers that are not HTTP headers
/// (event envelopes). `None` when there is no sampled-or-not trace context to pass on.
pub fn current_trace_context() -> (Option<String>, Option<String>) {
    let cx = current_context();
    let mut map = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    (map.remove("traceparent"), map.remove("tracestate").filter(|s: &String| !s.is_empty()))
}

/// The OpenTelemetry context a `traceparent` (and `tracestate`) describe, to parent a span on.
pub fn context_from_traceparent(traceparent: &str, tracestate: Option<&str>) -> Context {
    let mut map = std::collections::HashMap::new();
    map.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(s) = tracestate {
        map.insert("tracestate".to_owned(), s.to_owned());
    }
    global::get_text_map_propagator(|p| p.extract(&map))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("warn,keel=debug").is_ok());
        assert!(parse_filter("loud").is_err());
        assert!(parse_filter("").is_err());
        assert!(mentions_trace("trace"));
        assert!(mentions_trace("info,sqlx=trace"));
        assert!(!mentions_trace("info,tracer=debug"));
    }
}
