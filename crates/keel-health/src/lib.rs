//! Health checks and the liveness, readiness and startup probes.
//!
//! This is `keel-health`, re-exported by `keel` as `keel::health`; of Keel's crates it depends on
//! `keel-config`, `keel-resilience` and `keel-telemetry`.
//!
//! Checks run in the background, each on its own interval, and their results are cached with a
//! time-to-live; probes only read the cache, so probe traffic never reaches a dependency, and a
//! result older than the TTL counts as down (a cache that never expires would report a dead
//! dependency as healthy). A check that overruns its timeout counts as down. A check that is
//! down runs again after 200 ms, doubling to 1 s (jittered, never later than its interval), so
//! readiness comes back within about a second of the dependency.
//!
//! | endpoint | answers 200 when |
//! |---|---|
//! | `GET /health/live` (`/healthz`, `/livez`) | the process answers and every required liveness check is up; never depends on external services |
//! | `GET /health/ready` (`/readyz`) | start-up finished, every required readiness check is up, and the service is neither drained by an operator nor shutting down |
//! | `GET /health/startup` | start-up finished and every required startup check is up |
//!
//! Body: `{"status":"up|down|degraded","checks":{"<name>":{"status":…,"latency_ms":…,"age_ms":…,"error":…}}}`.
//! An optional check that is down makes the status `degraded` but the probe still answers 200.
//! Error texts go through [`sanitize`]: credentials become `***` (the crate's one scrubber,
//! [`scrub`](keel_telemetry::mask::scrub)) and the text is capped at 300 bytes.
//!
//! # Example
//!
//! ```
//! use keel_health::{Check, Kind, Outcome};
//!
//! let disk = Check::new("disk", Kind::Readiness, || async {
//!     let free_gb = 12; // measure it
//!     if free_gb > 1 { Outcome::Up } else { Outcome::down("less than 1 GB free") }
//! })
//! .optional();
//! # let _ = disk;
//! ```

mod config;
#[doc(hidden)]
pub mod connect;
mod routes;
mod sanitize;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prometheus::IntGaugeVec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use config::HealthConfig;
pub use routes::router;
pub use sanitize::sanitize;

/// A check's default timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default of `health.startup_grace`.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(30);
/// How often [`Health::wait_for`] looks at the cached results again.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// The first wait before a check that is down runs again.
const DOWN_RECHECK_FIRST: Duration = Duration::from_millis(200);
/// The longest wait before a check that is down runs again (unless its interval is shorter).
const DOWN_RECHECK_MAX: Duration = Duration::from_secs(1);

/// Which probe a check feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `/health/live`: only checks of the process itself (a deadlocked worker), never a dependency.
    Liveness,
    /// `/health/ready`: dependencies the service needs to serve traffic.
    Readiness,
    /// `/health/startup`: one-off start-up work (a cache warm-up).
    Startup,
}

/// A probe status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Working.
    Up,
    /// Working with reduced function (an optional dependency is down).
    Degraded,
    /// Not working.
    Down,
}

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Healthy.
    Up,
    /// Usable but impaired, with the reason.
    Degraded(String),
    /// Unhealthy, with the reason.
    Down(String),
}

impl Outcome {
    /// Down, for this reason.
    pub fn down(reason: impl Into<String>) -> Self {
        Self::Down(reason.into())
    }

    /// Degraded, for this reason.
    pub fn degraded(reason: impl Into<String>) -> Self {
        Self::Degraded(reason.into())
    }
}

impl<E: std::fmt::Display> From<Result<(), E>> for Outcome {
    fn from(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => Self::Up,
            Err(e) => Self::Down(e.to_string()),
        }
    }
}

/// The future a check returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A health check. Most services use [`Check`]; implement this for a check with state.
pub trait HealthCheck: Send + Sync + 'static {
    /// Unique name, shown in probe bodies and the `check` metric label.
    fn name(&self) -> &str;
    /// Which probe it feeds. Default readiness.
    fn kind(&self) -> Kind {
        Kind::Readiness
    }
    /// Whether the probe fails when this check is down (else the probe is `degraded`). Default true.
    fn required(&self) -> bool {
        true
    }
    /// Deadline for one run. Default 1 s.
    fn timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
    /// How often to run; `None` uses `health.interval`.
    fn interval(&self) -> Option<Duration> {
        None
    }
    /// Runs the check once.
    fn check(&self) -> CheckFuture<'_>;
}

/// A check made from a closure.
pub struct Check<F> {
    name: String,
    kind: Kind,
    required: bool,
    timeout: Duration,
    interval: Option<Duration>,
    f: F,
}

impl<F, Fut> Check<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    /// A required check with the default timeout.
    pub fn new(name: impl Into<String>, kind: Kind, f: F) -> Self {
        Self { name: name.into(), kind, required: true, timeout: DEFAULT_TIMEOUT, interval: None, f }
    }

    /// Down makes the probe `degraded` instead of failing it.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Deadline for one run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often to run.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }
}

impl<F, Fut> HealthCheck for Check<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> Kind {
        self.kind
    }
    fn required(&self) -> bool {
        self.required
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn interval(&self) -> Option<Duration> {
        self.interval
    }
    fn check(&self) -> CheckFuture<'_> {
        Box::pin((self.f)())
    }
}

#[derive(Debug, Clone)]
struct Result_ {
    outcome: Outcome,
    latency: Duration,
    at: Instant,
}

struct Entry {
    check: Arc<dyn HealthCheck>,
    last: RwLock<Option<Result_>>,
    /// Whether the check was ever up (or degraded): before that, down is "waiting".
    ever_up: AtomicBool,
    /// Whether the one WARN for a check still down after the start-up grace was logged.
    warned_late: AtomicBool,
}

struct Inner {
    entries: RwLock<Vec<Arc<Entry>>>,
    started: AtomicBool,
    shutting_down: AtomicBool,
    /// Why an operator drained the instance (readiness down until undrained).
    drained: RwLock<Option<String>>,
    interval: Duration,
    ttl: Duration,
    gauge: Option<IntGaugeVec>,
    wake: tokio::sync::Notify,
    /// Bumped whenever a probe's answer may have changed: a check's outcome, start-up finished,
    /// shutdown begun.
    changes: tokio::sync::watch::Sender<u64>,
    created: Instant,
    startup_grace: RwLock<Duration>,
}

/// The registry of a service's checks and its probe state. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("started", &self.inner.started.load(Ordering::Relaxed))
            .field("shutting_down", &self.inner.shutting_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One check's line in a probe body.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Its status.
    pub status: Status,
    /// How long the last run took.
    pub latency_ms: Option<u64>,
    /// How long ago the last run finished.
    pub age_ms: Option<u64>,
    /// Why it is not up (sanitized).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether it can fail the probe.
    pub required: bool,
}

/// A probe's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Overall status.
    pub status: Status,
    /// Why the probe is down when no single check explains it (starting, drained, shutting down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each check of this probe's kind.
    pub checks: BTreeMap<String, CheckReport>,
}

impl Report {
    /// Whether the probe answers 200.
    pub fn is_ok(&self) -> bool {
        self.status != Status::Down
    }
}

impl Health {
    /// A registry with the given run interval and result TTL, reporting `health_check_up{check}`
    /// into `metrics` when given.
    pub fn new(interval: Duration, ttl: Duration, metrics: Option<&keel_telemetry::Metrics>) -> Self {
        let gauge = metrics.and_then(|m| {
            let g = IntGaugeVec::new(
                prometheus::Opts::new(
                    "health_check_up",
                    "1 when the health check's last fresh result was up or degraded, else 0.",
                ),
                &["check"],
            )
            .ok()?;
            m.register(g.clone()).ok()?;
            Some(g)
        });
        Self {
            inner: Arc::new(Inner {
                entries: RwLock::new(Vec::new()),
                started: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                drained: RwLock::new(None),
                interval,
                ttl,
                gauge,
                wake: tokio::sync::Notify::new(),
                changes: tokio::sync::watch::Sender::new(0),
                created: Instant::now(),
                startup_grace: RwLock::new(DEFAULT_STARTUP_GRACE),
            }),
        }
    }

    /// How long after creation a check that was never up is only being waited for (logged at
    /// INFO); default 30 s. See `health.startup_grace`.
    pub fn startup_grace(self, grace: Duration) -> Self {
        if let Ok(mut g) = self.inner.startup_grace.write() {
            *g = grace;
        }
        self
    }

    fn in_startup_grace(&self) -> bool {
        let grace = self.inner.startup_grace.read().map(|g| *g).unwrap_or(DEFAULT_STARTUP_GRACE);
        self.inner.created.elapsed() < grace
    }

    /// Whether check `name`'s last fresh result is up or degraded (false when it is unknown,
    /// has not run yet, or is stale).
    pub fn is_up(&self, name: &str) -> bool {
        let entries = self.entries();
        let mut named = entries.iter().filter(|e| e.check.name() == name).peekable();
        named.peek().is_some()
            && named.all(|e| {
                e.last.read().ok().is_some_and(|l| {
                    l.as_ref()
                        .is_some_and(|r| r.at.elapsed() <= self.inner.ttl && !matches!(r.outcome, Outcome::Down(_)))
                })
            })
    }

    /// Waits until every check in `names` is up ([`Health::is_up`]) or `stop` is cancelled;
    /// `true` when they are. For work that needs its dependencies before it starts (a worker's
    /// first run, a consumer taking messages). Checks that are not registered are ignored.
    pub async fn wait_for(&self, names: &[String], stop: &tokio_util::sync::CancellationToken) -> bool {
        let registered: Vec<&String> =
            names.iter().filter(|n| self.entries().iter().any(|e| e.check.name() == n.as_str())).collect();
        loop {
            if registered.iter().all(|n| self.is_up(n)) {
                return true;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(WAIT_POLL) => {}
            }
        }
    }

    /// Adds a check. Checks added after [`Health::spawn`] start on the next spawn only.
    pub fn add(&self, check: impl HealthCheck) -> &Self {
        self.add_arc(Arc::new(check))
    }

    /// Adds a shared check.
    pub fn add_arc(&self, check: Arc<dyn HealthCheck>) -> &Self {
        if let Some(g) = &self.inner.gauge {
            g.with_label_values(&[check.name()]).set(0);
        }
        if let Ok(mut e) = self.inner.entries.write() {
            e.push(Arc::new(Entry {
                check,
                last: RwLock::new(None),
                ever_up: AtomicBool::new(false),
                warned_late: AtomicBool::new(false),
            }));
        }
        self
    }

    /// Marks start-up as finished.
    pub fn set_started(&self) {
        self.inner.started.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Fails readiness from now on (shutdown has begun).
    pub fn set_shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Drains the instance (`Some(why)`, scrubbed as check errors are): readiness answers down, so load balancers and
    /// Kubernetes Services stop sending it traffic, while it keeps serving what reaches it and
    /// liveness stays up. `None` undrains it. Returns whether this changed anything.
    pub fn set_drained(&self, why: Option<String>) -> bool {
        // Shown on the public readiness probe: scrubbed and capped like a check's error.
        let why = why.map(|w| sanitize(&w));
        let mut drained = self.inner.drained.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = drained.is_some() != why.is_some();
        *drained = why;
        drop(drained);
        if changed {
            self.changed();
        }
        changed
    }

    /// Why the instance is drained, when it is ([`Health::set_drained`]).
    pub fn drained(&self) -> Option<String> {
        self.inner.drained.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Notified whenever a probe's answer may have changed (a check's outcome, start-up
    /// finished, shutdown begun), for what mirrors the probes elsewhere (`grpc.health.v1`).
    /// A result going stale past the TTL is not announced: re-read the report now and then.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs every check again now instead of at its next interval (a dependency just came up).
    pub fn trigger(&self) {
        self.inner.wake.notify_waiters();
    }

    /// Runs every check once now and caches the results.
    pub async fn run_all(&self) {
        let entries = self.entries();
        futures_util::future::join_all(entries.iter().map(|e| self.run_one(e))).await;
    }

    /// Starts one background loop per check on `tracker`; they stop when `token` is cancelled
    /// and run in the span current here.
    pub fn spawn(&self, tracker: &TaskTracker, token: &CancellationToken) {
        let span = tracing::Span::current();
        for entry in self.entries() {
            let this = self.clone();
            let token = token.clone();
            let every = entry.check.interval().unwrap_or(self.inner.interval);
            tracker.spawn(
                async move {
                    // A check that is down runs again sooner (200 ms doubling to 1 s, jittered, never
                    // later than its interval): readiness follows a dependency's return within about
                    // a second instead of an interval.
                    let mut retry = keel_resilience::Backoff::new(DOWN_RECHECK_FIRST, DOWN_RECHECK_MAX)
                        .jitter(keel_resilience::backoff::Jitter::Equal);
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = this.run_one(&entry) => {}
                        }
                        let down = entry
                            .last
                            .read()
                            .ok()
                            .is_some_and(|l| l.as_ref().is_some_and(|r| matches!(r.outcome, Outcome::Down(_))));
                        let wait = if down {
                            retry.next_delay().min(every)
                        } else {
                            retry.reset();
                            every
                        };
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep(wait) => {}
                            _ = this.inner.wake.notified() => {}
                        }
                    }
                }
                .instrument(span.clone()),
            );
        }
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner.entries.read().map(|e| e.clone()).unwrap_or_default()
    }

    async fn run_one(&self, entry: &Entry) {
        let started = Instant::now();
        let timeout = entry.check.timeout();
        // A panicking check must not end its loop (its result would freeze): it counts as down.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.check.check()));
        let outcome = match run {
            Err(_) => Outcome::down("the check panicked"),
            Ok(fut) => match tokio::time::timeout(timeout, std::panic::AssertUnwindSafe(fut).catch_unwind()).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => Outcome::down("the check panicked"),
                Err(_) => Outcome::down(format!("timed out after {}", humantime::format_duration(timeout))),
            },
        };
        let outcome = match outcome {
            Outcome::Down(e) => Outcome::Down(sanitize(&e)),
            Outcome::Degraded(e) => Outcome::Degraded(sanitize(&e)),
            Outcome::Up => Outcome::Up,
        };
        let changed = entry.last.read().ok().and_then(|l| l.as_ref().map(|r| r.outcome != outcome)).unwrap_or(true);
        let name = entry.check.name();
        // Before a check was ever up it is being waited for: normal during start-up (INFO),
        // one WARN once the start-up grace has passed.
        let waiting = !entry.ever_up.load(Ordering::Relaxed);
        let in_grace = self.in_startup_grace();
        match &outcome {
            Outcome::Up | Outcome::Degraded(_) if waiting => {
                entry.ever_up.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        if changed {
            match &outcome {
                Outcome::Up => tracing::info!(check = name, "health check up"),
                Outcome::Degraded(e) => tracing::warn!(check = name, error = %e, "health check degraded"),
                Outcome::Down(e) if waiting && in_grace => {
                    tracing::info!(check = name, reason = %e, "waiting for {name}")
                }
                Outcome::Down(e) => {
                    if waiting {
                        entry.warned_late.store(true, Ordering::Relaxed);
                    }
                    tracing::warn!(check = name, error = %e, "health check down")
                }
            }
        } else if let Outcome::Down(e) = &outcome
            && waiting
            && !in_grace
            && !entry.warned_late.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(check = name, error = %e, "health check still down after the start-up grace (health.startup_grace)");
        }
        if let Some(g) = &self.inner.gauge {
            g.with_label_values(&[entry.check.name()]).set(i64::from(!matches!(outcome, Outcome::Down(_))));
        }
        if let Ok(mut last) = entry.last.write() {
            *last = Some(Result_ { outcome, latency: started.elapsed(), at: Instant::now() });
        }
        if changed {
            self.changed();
        }
    }

    /// The answer of the probe for `kind`, from cached results.
    pub fn report(&self, kind: Kind) -> Report {
        let now = Instant::now();
        let mut checks = BTreeMap::new();
        let mut status = Status::Up;
        for entry in self.entries().iter().filter(|e| e.check.kind() == kind) {
            let last = entry.last.read().ok().and_then(|l| l.clone());
            let (st, error, latency, age) = match last {
                None => (Status::Down, Some("not checked yet".to_owned()), None, None),
                Some(r) => {
                    let age = now.saturating_duration_since(r.at);
                    let (st, err) = match r.outcome {
                        _ if age > self.inner.ttl => (
                            Status::Down,
                            Some(format!("stale: last result is {} old", humantime::format_duration(trunc(age)))),
                        ),
                        Outcome::Up => (Status::Up, None),
                        Outcome::Degraded(e) => (Status::Degraded, Some(e)),
                        Outcome::Down(e) => (Status::Down, Some(e)),
                    };
                    (st, err, Some(r.latency.as_millis() as u64), Some(age.as_millis() as u64))
                }
            };
            let required = entry.check.required();
            status = match (st, required) {
                (Status::Down, true) => Status::Down,
                (Status::Up, _) => status,
                (_, _) if status == Status::Down => Status::Down,
                _ => Status::Degraded,
            };
            checks.insert(
                entry.check.name().to_owned(),
                CheckReport { status: st, latency_ms: latency, age_ms: age, error, required },
            );
        }
        let mut reason = None;
        if kind != Kind::Liveness && !self.inner.started.load(Ordering::SeqCst) {
            status = Status::Down;
            reason = Some("starting".into());
        }
        if kind == Kind::Readiness
            && let Some(why) = self.drained()
        {
            status = Status::Down;
            reason = Some(format!("drained: {why}"));
        }
        if kind == Kind::Readiness && self.is_shutting_down() {
            status = Status::Down;
            reason = Some("shutting down".into());
        }
        Report { status, reason, checks }
    }
}

fn trunc(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ttl: Duration) -> Health {
        Health::new(Duration::from_millis(10), ttl, None)
    }

    #[tokio::test]
    async fn required_down_fails_optional_down_degrades() {
        let h = health(Duration::from_secs(60));
        h.add(Check::new("db", Kind::Readiness, || async { Outcome::Up }));
        h.add(Check::new("cache", Kind::Readiness, || async { Outcome::down("refused") }).optional());
        h.set_started();
        h.run_all().await;
        let r = h.report(Kind::Readiness);
        assert_eq!(r.status, Status::Degraded);
        assert!(r.is_ok());
        assert_eq!(r.checks["cache"].error.as_deref(), Some("refused"));
        h.add(Check::new("queue", Kind::Readiness, || async { Outcome::down("gone") }));
        h.run_all().await;
        assert_eq!(h.report(Kind::Readiness).status, Status::Down);
        assert_eq!(h.report(Kind::Liveness).status, Status::Up);
    }

    #[tokio::test]
    #[allow(clippy::panic)]
    async fn a_panicking_check_is_down_and_keeps_running() {
        let h = health(Duration::from_secs(60));
        h.add(Check::new("boom", Kind::Readiness, || async { panic!("check bug") }));
        h.set_started();
        h.run_all().await;
        h.run_all().await;
        let r = h.report(Kind::Readiness);
        assert_eq!(r.checks["boom"].error.as_deref(), Some("the check panicked"));
    }

    #[tokio::test]
    async fn a_down_check_runs_again_well_before_its_interval() {
        use std::sync::atomic::AtomicU32;
        let h = Health::new(Duration::from_secs(30), Duration::from_secs(60), None);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        h.add(Check::new("db", Kind::Readiness, move || {
            // Down for the first two runs, then back.
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Outcome::down("refused") } else { Outcome::Up } }
        }));
        h.set_started();
        let (tracker, token) = (TaskTracker::new(), CancellationToken::new());
        h.spawn(&tracker, &token);
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.report(Kind::Readiness).status != Status::Up {
            assert!(Instant::now() < deadline, "readiness did not come back before the 30 s interval");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "and once up, it waits its interval again");
    }

    #[tokio::test]
    async fn stale_results_count_as_down() {
        let h = health(Duration::from_millis(20));
        h.add(Check::new("db", Kind::Readiness, || async { Outcome::Up }));
        h.set_started();
        h.run_all().await;
        assert_eq!(h.report(Kind::Readiness).status, Status::Up);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let r = h.report(Kind::Readiness);
        assert_eq!(r.status, Status::Down);
        assert!(r.checks["db"].error.as_deref().unwrap_or_default().starts_with("stale"));
    }

    #[tokio::test]
    async fn timeouts_count_as_down_and_unstarted_is_not_ready() {
        let h = health(Duration::from_secs(60));
        h.add(
            Check::new("slow", Kind::Readiness, || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Outcome::Up
            })
            .timeout(Duration::from_millis(20)),
        );
        assert_eq!(h.report(Kind::Readiness).reason.as_deref(), Some("starting"));
        h.set_started();
        h.run_all().await;
        let r = h.report(Kind::Readiness);
        assert_eq!(r.status, Status::Down);
        assert!(r.checks["slow"].error.as_deref().unwrap_or_default().contains("timed out"));
        h.set_shutting_down();
        assert_eq!(h.report(Kind::Readiness).reason.as_deref(), Some("shutting down"));
    }

    #[tokio::test]
    async fn a_drained_instance_is_not_ready_until_undrained() {
        let h = health(Duration::from_secs(60));
        h.add(Check::new("db", Kind::Readiness, || async { Outcome::Up }));
        h.add(Check::new("loop", Kind::Liveness, || async { Outcome::Up }));
        h.set_started();
        h.run_all().await;
        let mut changes = h.subscribe();
        changes.mark_unchanged();
        assert!(h.set_drained(Some("node maintenance".into())));
        assert!(changes.has_changed().unwrap(), "the gRPC mirror hears of it");
        let r = h.report(Kind::Readiness);
        assert_eq!((r.status, r.reason.as_deref()), (Status::Down, Some("drained: node maintenance")));
        assert_eq!(r.checks["db"].status, Status::Up, "the checks still say what they see");
        assert!(h.report(Kind::Liveness).is_ok(), "draining is not a restart");
        assert!(!h.set_drained(Some("again".into())), "already drained");
        assert_eq!(h.drained().as_deref(), Some("again"));
        assert!(h.set_drained(None));
        assert!(h.report(Kind::Readiness).is_ok());
        assert!(h.drained().is_none());
    }
}
