//! Logs, traces and metrics, on `tracing-subscriber`'s [`Registry`] and its layers.
//!
//! This is `keel-telemetry`, re-exported by `keel` as `keel::telemetry`; of Keel's crates it
//! depends on `keel-config`.
//!
//! [`init`] installs one subscriber for the process: a `Registry` with, in order,
//!
//! 1. the application's own layers (given to [`init_with_layers`], or to the service builder's
//!    `tracing_layer`): they see every span and event, filtered only by their own filters;
//! 2. `tracing-opentelemetry`, which gives every span at `info` and above its W3C trace and span
//!    ids, continues a caller's `traceparent` ([`set_parent`]), and exports spans over OTLP
//!    (gRPC or HTTP/protobuf, TLS for `https://`, with headers) when `telemetry.otlp.endpoint`
//!    or `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the standard `OTEL_*` variables apply beneath
//!    Keel's `telemetry.*` keys (see `otlp`). `warn` and `error` events become span events;
//! 3. the fmt layer writing log lines to stdout through `tracing-appender`'s non-blocking writer
//!    (a dedicated thread; a full queue makes loggers wait rather than drop lines): JSON lines
//!    in production and test (the `json` module's layout: `service`, `request_id`, `trace_id`, `span_id`
//!    lifted to the top level), `tracing-subscriber`'s pretty format in development (colour only
//!    on a terminal with `NO_COLOR` unset or empty). Its filter reads `log.level` (or
//!    `RUST_LOG`, which wins): a `Targets` filter for targets and levels, an `EnvFilter` for
//!    directives with span filters, either replaceable without a lock on any callback, so
//!    `PUT /admin/log-level` changes it at run time; spans at `info` always pass, so a `warn`
//!    line inside a request still carries the request's fields and ids.
//!
//! Fields named like secrets or personal data (`password`, `token`, `authorization`, `cookie`,
//! `email`, … plus `log.mask_fields`) are written as `***`, and every other field and the message
//! go through [`scrub`](crate::mask::scrub) (credentials become `***`), in both formats.
//!
//! * **Metrics** — a Prometheus registry per service: [`Metrics`].
//!
//! Logging and tracing are process-wide (one subscriber per process), so [`init`] is called once
//! per process by `keel::run`; later calls return a handle to the first set-up.

mod config;
mod filter;
pub mod intern;
mod json;
pub mod mask;
mod metrics;
pub(crate) mod otlp;
mod pretty;
#[cfg(test)]
mod test_writer;

use std::io::IsTerminal as _;
use std::sync::{Mutex, OnceLock};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use config::{LogConfig, LogFormat, OtlpConfig, OtlpProtocol, TelemetryConfig};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};
/// A span's W3C ids, sampled flag and trace state ([`span_context`]), for crates that compare or
/// link them without depending on `opentelemetry` themselves.
pub use opentelemetry::trace::SpanContext;

use keel_config::Profile;

/// A tracing layer of the application's own (an error reporter, `console-subscriber`, a
/// second exporter), added to Keel's subscriber by [`init_with_layers`].
pub type BoxLayer = Box<dyn Layer<Registry> + Send + Sync + 'static>;

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
    /// Field names logged as `***`, beyond `keel_telemetry::mask::DEFAULT_FIELDS` (`log.mask_fields`).
    pub mask_fields: Vec<String>,
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("cannot set up OTLP export to {endpoint}: {message}")]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
}

/// Replaces the fmt layer's filter.
type SetFilter = filter::LogFilter;

struct Global {
    set_filter: SetFilter,
    /// Whether Keel's subscriber is the process's (another may have been installed first).
    installed: bool,
    level: Mutex<String>,
    provider: SdkTracerProvider,
    /// Whether spans go to an OTLP exporter.
    exporting: bool,
    /// Dropping it flushes the log writer's queue.
    writer: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>>,
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

/// Lines queued for the writer thread before loggers wait for it.
const LOG_QUEUE_LINES: usize = 128_000;

/// The writer thread's buffer in front of stdout.
const LOG_BUFFER_BYTES: usize = 64 << 10;

/// Sets up logging and tracing for the process: [`init_with_layers`] without layers of the
/// application's own.
pub fn init(opts: &TelemetryOptions) -> Result<TelemetryGuard, TelemetryError> {
    init_with_layers(opts, Vec::new())
}

/// Sets up logging and tracing for the process (see the module docs), with `layers` of the
/// application's own under Keel's. Must run inside a Tokio runtime when OTLP export is
/// configured. The first call wins; later calls (several services in one process, tests)
/// return a guard for the existing set-up and drop their `layers`.
///
/// ```no_run
/// use keel_config::Profile;
/// use keel_telemetry::{LogFormat, TelemetryConfig};
/// use keel_telemetry::{BoxLayer, TelemetryOptions, init_with_layers};
/// use tracing_subscriber::Layer as _;
///
/// # #[tokio::main] async fn main() {
/// let mine: BoxLayer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed();
/// let opts = TelemetryOptions {
///     service: "hello".into(),
///     version: "1.0.0".into(),
///     profile: Profile::Development,
///     level: "info".into(),
///     format: LogFormat::Json,
///     telemetry: TelemetryConfig::default(),
///     mask_fields: Vec::new(),
/// };
/// let guard = init_with_layers(&opts, vec![mine]).unwrap();
/// # guard.shutdown(); }
/// ```
pub fn init_with_layers(opts: &TelemetryOptions, layers: Vec<BoxLayer>) -> Result<TelemetryGuard, TelemetryError> {
    if GLOBAL.get().is_some() {
        return Ok(TelemetryGuard { _private: () });
    }
    let level = effective_level(&opts.level);
    let filter = filter::Directives::parse(&normalize(&level)).map_err(TelemetryError::Filter)?;

    let (provider, exporting) = tracer_provider(opts)?;
    global::set_text_map_propagator(TraceContextPropagator::new());
    // Busy/idle tracking would read the clock on every poll of every span, and thread, source
    // location and target attributes allocate per span; none is worth it per request.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("keel"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(otel_filter());

    let (stdout, writer_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("keel-log-writer")
        // The writer thread writes every line it finds queued into this buffer and flushes when
        // the queue is empty: under load, one write to stdout per batch rather than per line.
        .finish(std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, std::io::stdout()));
    let masker = crate::mask::Masker::new(opts.mask_fields.iter());
    // No layers is `None`, not an empty `Vec`: an empty `Vec` layer is interested in no callsite,
    // which would turn every other layer off.
    let layers = (!layers.is_empty()).then_some(layers);
    let subscriber = tracing_subscriber::registry().with(layers).with(otel);
    let (lines, set_filter) = log_layer(opts, filter, masker, stdout);
    let installed = subscriber.with(lines).try_init().is_ok();
    let _ = GLOBAL.set(Global {
        set_filter,
        installed,
        level: Mutex::new(normalize(&level)),
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

/// The fmt layer for `opts.format`, filtered by `directives` (see `filter`), and the filter,
/// whose directives can be replaced.
fn log_layer<S>(
    opts: &TelemetryOptions,
    directives: filter::Directives,
    masker: crate::mask::Masker,
    writer: tracing_appender::non_blocking::NonBlocking,
) -> (Box<dyn Layer<S> + Send + Sync>, SetFilter)
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    let filter = filter::LogFilter::new(directives);
    let layer: Box<dyn Layer<S> + Send + Sync> = match opts.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(json::JsonFields::new(masker))
            .event_format(json::JsonLine::new(opts.service.clone()))
            .with_writer(writer)
            .with_filter(filter.clone())
            .boxed(),
        LogFormat::Pretty => {
            let ansi = pretty::colour(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            tracing_subscriber::fmt::layer()
                .fmt_fields(pretty::fields(masker))
                .with_ansi(ansi)
                .with_writer(writer)
                .with_filter(filter.clone())
                .boxed()
        }
    };
    (layer, filter)
}

/// The target of spans that only scope log lines (a service's background work in a process that
/// runs several): never exported, or every background task of the process would share one trace
/// that never ends.
pub const SCOPE_TARGET: &str = "keel::scope";

/// What becomes OpenTelemetry data: spans at `info` and above, whatever the log level (so traces
/// stay whole when logs are quiet), and only `warn`/`error` events as span events (an `info` access
/// line would only repeat what the span already says, at a cost on every request). Not the
/// [`SCOPE_TARGET`] spans.
fn otel_filter() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|meta| {
        let max = if meta.is_span() { tracing::Level::INFO } else { tracing::Level::WARN };
        *meta.level() <= max && meta.target() != SCOPE_TARGET
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
    filter::Directives::parse(&normalize(directives)).map(|_| ())
}

/// `directives` without blanks around each directive and without empty ones.
fn normalize(directives: &str) -> String {
    directives.split(',').map(str::trim).filter(|d| !d.is_empty()).collect::<Vec<_>>().join(",")
}

/// Whether directives enable `trace` anywhere.
pub fn mentions_trace(directives: &str) -> bool {
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
    g.set_filter.set(filter::Directives::parse(&normalize(directives))?);
    if let Ok(mut l) = g.level.lock() {
        *l = normalize(directives);
    }
    tracing::info!(level = directives, "log level changed");
    Ok(())
}

/// Whether spans are exported (`telemetry.otlp.endpoint` is set): span attributes that only
/// exported spans show (`otel.name`) need not be computed otherwise.
pub fn exporting() -> bool {
    GLOBAL.get().is_some_and(|g| g.exporting)
}

/// Whether a span made now, under the current span, would be exported: spans are exported and
/// the current span is sampled. The gate of spans that cost on a hot path (a Redis command, an
/// SQL statement, a message's `create` span): unexported or unsampled, they would buy nothing.
pub fn is_traced() -> bool {
    exporting() && span_context(&tracing::Span::current()).is_sampled()
}

/// `span`'s trace context, as an OpenTelemetry context to inject.
fn context_of(span: &tracing::Span) -> Context {
    // An invalid context injects nothing: the propagator checks.
    Context::new().with_remote_span_context(span_context(span))
}

/// The current span's trace context, as an OpenTelemetry context to inject.
fn current_context() -> Context {
    context_of(&tracing::Span::current())
}

/// Makes `cx` (a caller's trace, from [`extract_context`] or [`context_from_traceparent`]) the
/// parent of `span`. Call it before the span is first entered.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    // Fails only for a span no OpenTelemetry layer sees (disabled, or another subscriber).
    let _ = span.set_parent(cx);
}

/// The W3C trace context of `span`: invalid for a span no OpenTelemetry layer sees.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Makes `span` the root of a trace of its own, whatever span is current where it is made (work
/// of a background task that stands for no one request, such as a batch of messages made under
/// many). Call it before the span is first entered.
pub fn set_root(span: &tracing::Span) {
    // Fails only for a span no OpenTelemetry layer sees (disabled, or another subscriber).
    let _ = span.set_parent(Context::new());
}

/// Adds to `span` a link to `linked` (a message's creation context, say) with `attributes`; a
/// link to an invalid context is left out. Links added before the span is first entered are seen
/// by the sampler.
pub fn add_link<I>(span: &tracing::Span, linked: SpanContext, attributes: I)
where
    I: IntoIterator<Item = (&'static str, String)>,
{
    if linked.is_valid() {
        let attributes = attributes.into_iter().map(|(k, v)| opentelemetry::KeyValue::new(k, v)).collect();
        span.add_link_with_attributes(linked, attributes);
    }
}

/// Reads a W3C `traceparent` (and `tracestate`) from request headers.
pub fn extract_context(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's W3C `traceparent` into outbound request headers.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// keel_telemetry::inject_current(&mut headers);
/// ```
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = current_context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The current span's W3C `traceparent` and `tracestate`, for carriers that are not HTTP headers
/// (event envelopes). `None` when there is no sampled-or-not trace context to pass on.
pub fn current_trace_context() -> (Option<String>, Option<String>) {
    trace_context_of(&tracing::Span::current())
}

/// `span`'s W3C `traceparent` and `tracestate` (as [`current_trace_context`] gives the current
/// span's): what a message made under `span` carries as its creation context.
pub fn trace_context_of(span: &tracing::Span) -> (Option<String>, Option<String>) {
    let cx = context_of(span);
    let mut map = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    (map.remove("traceparent"), map.remove("tracestate").filter(|s: &String| !s.is_empty()))
}

/// The span context a `traceparent` (and `tracestate`) describe, read as
/// [`context_from_traceparent`] reads them: invalid when they describe none. To link to, or to
/// compare with [`span_context`].
pub fn span_context_from_traceparent(traceparent: &str, tracestate: Option<&str>) -> SpanContext {
    context_from_traceparent(traceparent, tracestate).span().span_context().clone()
}

/// The OpenTelemetry context a `traceparent` (and `tracestate`) describe, to parent a span on.
/// Read as [`extract_context`] reads the same headers: a value that could not be a header
/// (control characters, non-ASCII) is left out, as the propagator would keep some of those.
pub fn context_from_traceparent(traceparent: &str, tracestate: Option<&str>) -> Context {
    global::get_text_map_propagator(|p| p.extract(&FieldExtractor { traceparent, tracestate }))
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

/// An envelope's trace-context fields, read as [`HeaderExtractor`] reads headers.
struct FieldExtractor<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for FieldExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }?;
        // What `HeaderValue::to_str` accepts: visible ASCII and tab.
        value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)).then_some(value)
    }
    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"].into_iter().filter(|k| self.get(k).is_some()).collect()
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

    /// A root span starts a trace of its own under a sampled span; a span's context written out
    /// as a `traceparent` reads back as the same span context; a link to nothing is left out.
    #[test]
    fn a_root_span_leaves_the_current_trace_and_its_context_reads_back() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = Registry::default().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let request = tracing::info_span!("request");
            set_parent(&request, context_from_traceparent(caller, None));
            let _in = request.enter();
            assert!(is_traced() == exporting(), "sampled here: traced exactly when exporting");
            let child = tracing::info_span!("child");
            let root = tracing::info_span!("root");
            set_root(&root);
            add_link(&root, SpanContext::empty_context(), [("messaging.message.id", "m".to_owned())]);
            add_link(&root, span_context(&child), [("messaging.message.id", "m".to_owned())]);
            let (child_cx, root_cx) = (span_context(&child), span_context(&root));
            assert_eq!(child_cx.trace_id(), span_context(&request).trace_id());
            assert!(root_cx.is_valid() && root_cx.trace_id() != child_cx.trace_id(), "{root_cx:?}");
            let (traceparent, _) = trace_context_of(&child);
            let traceparent = traceparent.expect("a traceparent");
            let back = span_context_from_traceparent(&traceparent, None);
            assert_eq!((back.trace_id(), back.span_id()), (child_cx.trace_id(), child_cx.span_id()));
            assert!(back.is_sampled());
            assert_eq!(current_trace_context().0, trace_context_of(&request).0);
        });
    }

    /// Found by the `traceparent` fuzz target: an envelope's `tracestate` with control
    /// characters was kept (the propagator takes them), while the same value could not arrive as
    /// a header. Both paths now read the same.
    #[test]
    fn an_envelope_trace_context_is_read_as_headers_are() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let bad_state = "congo=t61rcWkgf92#\0\0f067aa0ba902b7";
        let cx = context_from_traceparent(parent, Some(bad_state));
        let span = cx.span().span_context().clone();
        assert!(span.is_valid() && span.trace_state().header().is_empty(), "{span:?}");
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(parent));
        headers.insert("tracestate", http::HeaderValue::from_static("congo=t61rcWkg"));
        let from_headers = extract_context(&headers).span().span_context().clone();
        let from_envelope = context_from_traceparent(parent, Some("congo=t61rcWkg")).span().span_context().clone();
        assert_eq!(from_envelope, from_headers);
        assert_eq!(from_headers.trace_state().get("congo"), Some("t61rcWkg"));
        assert!(
            !context_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}", None)
                .span()
                .span_context()
                .is_valid()
        );
    }
}
