//! Per-service Prometheus metrics.
//!
//! Each service owns a [`Metrics`] registry rather than a process-global one, so several
//! services in one process (the all-in-one launcher, tests) each expose their own numbers.
//! Rendered in the Prometheus text format (0.0.4) on the management listener at `/metrics`.
//! Every metric name Keel registers is listed in `docs/metrics.md`.

use prometheus::core::Collector;
use prometheus::{Encoder, IntGauge, Opts, Registry, TextEncoder};

/// A service's metric registry.
///
/// ```
/// let metrics = keel_telemetry::Metrics::new();
/// let jobs = prometheus::IntCounter::new("jobs_total", "Jobs done.").unwrap();
/// metrics.register(jobs.clone()).unwrap();
/// jobs.inc();
/// assert!(metrics.render().contains("jobs_total 1"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with `build_info` and the process metrics (`process_resident_memory_bytes`,
    /// `process_cpu_seconds_total`, `process_open_fds`, `process_start_time_seconds`, …).
    /// `build_info` is labelled with `service`, `version` and `commit`.
    pub fn for_service(service: &str, version: &str, commit: &str) -> Result<Self, prometheus::Error> {
        let m = Self::new();
        let info = IntGauge::with_opts(
            Opts::new("build_info", "Build of the running service; the value is always 1.")
                .const_label("service", service)
                .const_label("version", version)
                .const_label("commit", commit),
        )?;
        info.set(1);
        m.register(info)?;
        #[cfg(target_os = "linux")]
        m.register(prometheus::process_collector::ProcessCollector::for_self())?;
        Ok(m)
    }

    /// Registers a metric or collector. Registering the same name twice is an error.
    pub fn register(&self, c: impl Collector + 'static) -> Result<(), prometheus::Error> {
        self.registry.register(Box::new(c))
    }

    /// The underlying registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
