//! Per-worker bookkeeping shared by the supervisor, the health check, metrics and the status page.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use serde::Serialize;

use super::worker::{Schedule, threshold};
use keel_health::{CheckFuture, HealthCheck, Kind, Outcome as HealthOutcome};
use keel_telemetry::Metrics;

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Returned `Ok`.
    Ok,
    /// Returned an error.
    Error,
    /// Panicked (caught; the worker restarts after a backoff).
    Panic,
}

impl RunOutcome {
    /// The `outcome` label of `worker_runs_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Panic => "panic",
        }
    }
}

/// The metric families every worker reports into.
#[derive(Clone, Debug)]
pub(crate) struct WorkerMetrics {
    runs: IntCounterVec,
    duration: HistogramVec,
    last_success: GaugeVec,
    restarts: IntCounterVec,
    skipped: IntCounterVec,
}

impl WorkerMetrics {
    pub(crate) fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let runs = IntCounterVec::new(
            Opts::new("worker_runs_total", "Finished worker runs by outcome (ok, error, panic)."),
            &["worker", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("worker_run_duration_seconds", "Duration of worker runs.")
                .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0]),
            &["worker"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "worker_last_success_timestamp_seconds",
                "Unix time of the worker's last successful run or heartbeat; 0 before the first.",
            ),
            &["worker"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new("worker_restarts_total", "Worker restarts after a panic or an early return."),
            &["worker"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new("worker_skipped_ticks_total", "Periodic ticks skipped because the previous run was still going."),
            &["worker"],
        )?;
        metrics.register(runs.clone())?;
        metrics.register(duration.clone())?;
        metrics.register(last_success.clone())?;
        metrics.register(restarts.clone())?;
        metrics.register(skipped.clone())?;
        Ok(Self { runs, duration, last_success, restarts, skipped })
    }

    /// Label lookups happen once per worker, not once per run.
    fn handles(&self, worker: &str) -> Handles {
        let last_success = self.last_success.with_label_values(&[worker]);
        last_success.set(0.0);
        Handles {
            ok: self.runs.with_label_values(&[worker, "ok"]),
            error: self.runs.with_label_values(&[worker, "error"]),
            panic: self.runs.with_label_values(&[worker, "panic"]),
            duration: self.duration.with_label_values(&[worker]),
            last_success,
            restarts: self.restarts.with_label_values(&[worker]),
            skipped: self.skipped.with_label_values(&[worker]),
        }
    }
}

struct Handles {
    ok: IntCounter,
    error: IntCounter,
    panic: IntCounter,
    duration: Histogram,
    last_success: Gauge,
    restarts: IntCounter,
    skipped: IntCounter,
}

#[derive(Debug, Clone, Default)]
struct Stats {
    /// When the supervisor started (the reference for staleness before the first success).
    since: Option<Instant>,
    last_run_started: Option<SystemTime>,
    last_run_finished: Option<SystemTime>,
    last_outcome: Option<RunOutcome>,
    last_duration: Option<Duration>,
    last_success: Option<(SystemTime, Instant)>,
    last_error: Option<String>,
    runs: u64,
    failures: u64,
    panics: u64,
    restarts: u64,
    skipped: u64,
    restarting: bool,
}

/// State of one worker, shared with its runs' [`super::Context`].
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) probe: Kind,
    pub(crate) stale_after: Option<Duration>,
    /// The supervisor task exists (set at spawn, cleared by a drop guard, even on abort).
    pub(crate) alive: AtomicBool,
    /// A run is in progress.
    pub(crate) running: AtomicBool,
    /// An operator asked for a run now ([`crate::Workers::run_now`]) and no run has started
    /// since: any run that starts answers it.
    pub(crate) requested: AtomicBool,
    /// Wakes the supervisor's loop for a requested run.
    pub(crate) run_now: tokio::sync::Notify,
    stats: Mutex<Stats>,
    handles: Option<Handles>,
}

impl Shared {
    pub(crate) fn new(
        name: String,
        schedule: Schedule,
        probe: Kind,
        stale_after: Option<Duration>,
        metrics: Option<&WorkerMetrics>,
    ) -> Self {
        let handles = metrics.map(|m| m.handles(&name));
        Self {
            name,
            schedule,
            probe,
            stale_after,
            alive: AtomicBool::new(false),
            running: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            run_now: tokio::sync::Notify::new(),
            stats: Mutex::new(Stats::default()),
            handles,
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic elsewhere while holding it; the numbers are still
        // the best we have.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn started(&self, jitter: Duration) {
        let mut s = self.stats();
        s.since = Some(Instant::now() + jitter);
    }

    pub(crate) fn run_started(&self) {
        self.running.store(true, Ordering::SeqCst);
        // This run answers a pending request: one request, one run.
        self.requested.store(false, Ordering::SeqCst);
        let mut s = self.stats();
        s.last_run_started = Some(SystemTime::now());
        s.restarting = false;
    }

    pub(crate) fn run_finished(&self, outcome: RunOutcome, took: Duration, error: Option<String>) {
        self.running.store(false, Ordering::SeqCst);
        {
            let mut s = self.stats();
            s.runs = s.runs.saturating_add(1);
            s.last_run_finished = Some(SystemTime::now());
            s.last_outcome = Some(outcome);
            s.last_duration = Some(took);
            match outcome {
                RunOutcome::Ok => {}
                RunOutcome::Error => s.failures = s.failures.saturating_add(1),
                RunOutcome::Panic => s.panics = s.panics.saturating_add(1),
            }
            if error.is_some() {
                s.last_error = error;
            }
        }
        if let Some(h) = &self.handles {
            match outcome {
                RunOutcome::Ok => h.ok.inc(),
                RunOutcome::Error => h.error.inc(),
                RunOutcome::Panic => h.panic.inc(),
            }
            h.duration.observe(took.as_secs_f64());
        }
        if outcome == RunOutcome::Ok && matches!(self.schedule, Schedule::Periodic { .. }) {
            self.heartbeat();
        }
    }

    pub(crate) fn heartbeat(&self) {
        let now = SystemTime::now();
        self.stats().last_success = Some((now, Instant::now()));
        if let Some(h) = &self.handles {
            h.last_success.set(now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
        }
    }

    pub(crate) fn restarting(&self) {
        {
            let mut s = self.stats();
            s.restarts = s.restarts.saturating_add(1);
            s.restarting = true;
        }
        if let Some(h) = &self.handles {
            h.restarts.inc();
        }
    }

    pub(crate) fn skipped(&self) {
        {
            let mut s = self.stats();
            s.skipped = s.skipped.saturating_add(1);
        }
        if let Some(h) = &self.handles {
            h.skipped.inc();
        }
    }

    /// The health verdict now.
    pub(crate) fn health(&self) -> HealthOutcome {
        let s = self.stats().clone();
        let now = Instant::now();
        if let Some(limit) = threshold(self.schedule, self.stale_after) {
            let reference = s.last_success.map(|(_, at)| at).or(s.since);
            if let Some(reference) = reference {
                let age = now.saturating_duration_since(reference);
                if age > limit {
                    let what = if s.last_success.is_some() { "no success for" } else { "no success yet after" };
                    let mut msg = format!(
                        "{what} {} (threshold {})",
                        humantime::format_duration(coarse(age)),
                        humantime::format_duration(limit)
                    );
                    if let Some(e) = &s.last_error {
                        msg.push_str(&format!("; last error: {e}"));
                    }
                    return HealthOutcome::Down(msg);
                }
            }
        }
        if s.since.is_some() && !self.alive.load(Ordering::SeqCst) {
            return HealthOutcome::down("the worker has stopped");
        }
        if s.restarting {
            let e = s.last_error.unwrap_or_default();
            return HealthOutcome::Degraded(format!("restarting after a failure ({} restarts): {e}", s.restarts));
        }
        HealthOutcome::Up
    }

    pub(crate) fn status(&self) -> WorkerStatus {
        let health = self.health();
        let s = self.stats().clone();
        let (schedule, interval_ms) = match self.schedule {
            Schedule::Periodic { interval, .. } => ("periodic", Some(interval.as_millis() as u64)),
            Schedule::Continuous => ("continuous", None),
        };
        WorkerStatus {
            name: self.name.clone(),
            schedule,
            interval_ms,
            probe: self.probe,
            alive: self.alive.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
            healthy: !matches!(health, HealthOutcome::Down(_)),
            health: match health {
                HealthOutcome::Up => None,
                HealthOutcome::Degraded(m) | HealthOutcome::Down(m) => Some(m),
            },
            last_run_started: s.last_run_started.map(rfc3339),
            last_run_finished: s.last_run_finished.map(rfc3339),
            last_outcome: s.last_outcome,
            last_duration_ms: s.last_duration.map(|d| d.as_millis() as u64),
            last_success: s.last_success.map(|(t, _)| rfc3339(t)),
            last_error: s.last_error,
            runs: s.runs,
            failures: s.failures,
            panics: s.panics,
            restarts: s.restarts,
            skipped_ticks: s.skipped,
        }
    }
}

/// Whole milliseconds under 10 s, whole seconds above: readable, and never "0s" for a real delay.
fn coarse(d: Duration) -> Duration {
    if d < Duration::from_secs(10) {
        Duration::from_millis(d.as_millis() as u64)
    } else {
        Duration::from_secs(d.as_secs())
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One worker as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Name.
    pub name: String,
    /// `periodic` or `continuous`.
    pub schedule: &'static str,
    /// Periodic interval.
    pub interval_ms: Option<u64>,
    /// The probe its health check feeds.
    pub probe: Kind,
    /// Its supervisor task is running.
    pub alive: bool,
    /// A run is in progress.
    pub running: bool,
    /// Its health check is not down.
    pub healthy: bool,
    /// Why it is degraded or down.
    pub health: Option<String>,
    /// When the last run started (RFC 3339).
    pub last_run_started: Option<String>,
    /// When the last run finished.
    pub last_run_finished: Option<String>,
    /// How the last run ended.
    pub last_outcome: Option<RunOutcome>,
    /// How long the last run took.
    pub last_duration_ms: Option<u64>,
    /// The last success (run or heartbeat).
    pub last_success: Option<String>,
    /// The last error or panic message.
    pub last_error: Option<String>,
    /// Finished runs.
    pub runs: u64,
    /// Runs that returned an error.
    pub failures: u64,
    /// Runs that panicked.
    pub panics: u64,
    /// Restarts.
    pub restarts: u64,
    /// Ticks skipped because a run was still going.
    pub skipped_ticks: u64,
}

/// The health check of one worker: `worker:<name>`.
pub(crate) struct WorkerCheck {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
}

impl HealthCheck for WorkerCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> Kind {
        self.shared.probe
    }
    fn check(&self) -> CheckFuture<'_> {
        let outcome = self.shared.health();
        Box::pin(async move { outcome })
    }
}
