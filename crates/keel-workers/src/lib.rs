//! Supervised background workers: periodic jobs and long-running loops that cannot fail
//! silently.
//!
//! This is `keel-workers`, re-exported by `keel` as `keel::workers`; of Keel's crates it depends on
//! `keel-resilience`, `keel-telemetry` and `keel-health`.
//!
//! A [`Worker`] is a name, a [`Schedule`] and an async function that gets a [`Context`] (a
//! cancellation token plus [`Context::heartbeat`]). The [`Workers`] registry, owned by the app
//! lifecycle, runs each one in its own supervisor task:
//!
//! * **Periodic** workers run every `interval`, the first time after a random delay up to their
//!   jitter. Runs never overlap: a tick that arrives while the previous run is still going is
//!   skipped and counted (`worker_skipped_ticks_total`).
//! * **Continuous** workers run once and are expected to return only when cancelled.
//! * A **panic** inside a run is caught, logged at `error` and counted
//!   (`worker_runs_total{outcome="panic"}`); the worker then restarts after an exponential
//!   backoff with full jitter (`worker_restarts_total`). A continuous worker that returns before
//!   shutdown is restarted the same way. An error returned from a periodic run is logged and
//!   counted; the next tick runs as usual.
//! * **Run now**: [`Workers::run_now`] starts a periodic worker's run outside its schedule (the
//!   operator console's button); it never overlaps a run in progress and leaves the schedule as
//!   it is.
//! * **Health**: each worker adds the check `worker:<name>` (liveness, or readiness with
//!   [`Worker::readiness`]). It is down when the last success is older than the threshold
//!   (default 2 × interval for periodic workers), so a worker that keeps failing takes the
//!   probe down instead of running half-dead.
//!
//! # Cancellation and shutdown
//!
//! At shutdown (after in-flight requests drained) the lifecycle cancels every worker's token
//! and awaits every supervisor's `JoinHandle` until the `shutdown.timeout` deadline. A run in
//! progress is not dropped: it sees [`Context::cancelled`] complete and should return at its
//! next step; the supervisor waits for it. A worker still running at the deadline is logged,
//! aborted (dropped at its next `.await`) and named in the forced-shutdown error (exit 70).
//! When [`Workers::join`] returns, no supervisor task is left: each has finished or been
//! aborted and awaited.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keel_workers::{Worker, Workers};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let workers = Workers::new(None, None).unwrap();
//! workers
//!     .add(Worker::periodic("tick", Duration::from_millis(10), |_ctx| async { Ok::<_, std::io::Error>(()) }))
//!     .unwrap();
//! let stop = CancellationToken::new();
//! workers.start(&stop);
//! stop.cancel();
//! let late = workers.join(tokio::time::Instant::now() + Duration::from_secs(5)).await;
//! assert!(late.is_empty());
//! assert_eq!(workers.alive(), 0);
//! # }
//! ```

mod state;
mod supervise;
mod worker;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use state::{RunOutcome, WorkerStatus};
pub use worker::{Context, DEFAULT_RESTART_INITIAL, DEFAULT_RESTART_MAX, RunError, Schedule, Worker};

use keel_health::Health;
use keel_telemetry::Metrics;
use state::{Shared, WorkerCheck, WorkerMetrics};
use supervise::Plan;

/// How long an aborted worker task gets to be dropped before it is reported anyway.
const ABORT_GRACE: Duration = Duration::from_millis(100);

/// Why a worker could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Two workers with one name.
    #[error("a worker named `{0}` is already registered")]
    Duplicate(String),
    /// A periodic worker needs a positive interval.
    #[error("worker `{0}`: the interval must be more than 0s")]
    ZeroInterval(String),
    /// An empty name.
    #[error("a worker needs a name")]
    EmptyName,
    /// Registered after [`Workers::start`].
    #[error("worker `{0}` was added after the workers started")]
    Started(String),
    /// Metrics could not be registered.
    #[error("cannot register worker metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why [`Workers::run_now`] started no run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunNowError {
    /// No worker has that name.
    #[error("no worker is named `{0}`")]
    Unknown(String),
    /// A continuous worker is always running: there is no run to start.
    #[error("worker `{0}` is continuous: it is always running")]
    Continuous(String),
    /// Its supervisor is not running (not started yet, or stopped).
    #[error("worker `{0}` is not running (not started, or stopped)")]
    Stopped(String),
    /// A run is in progress: runs never overlap.
    #[error("worker `{0}` is running now: runs never overlap")]
    Busy(String),
    /// A run was requested and has not started yet.
    #[error("a run of worker `{0}` is already requested and starts as soon as the worker is free")]
    Requested(String),
}

#[derive(Default)]
struct Registry {
    pending: Vec<Plan>,
    all: Vec<Arc<Shared>>,
    handles: Vec<(String, JoinHandle<()>)>,
    /// Workers that had to be aborted at shutdown.
    late: Vec<String>,
    started: bool,
    /// Health checks every worker waits for before its first run.
    requires: Vec<String>,
}

struct Inner {
    registry: Mutex<Registry>,
    metrics: Option<WorkerMetrics>,
    health: Option<Health>,
}

/// The registry of a service's workers. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("alive", &self.alive()).finish_non_exhaustive()
    }
}

impl Workers {
    /// A registry reporting `worker_*` metrics into `metrics` and adding each worker's health
    /// check to `health`, when given.
    pub fn new(metrics: Option<&Metrics>, health: Option<&Health>) -> Result<Self, WorkerError> {
        let metrics = metrics.map(WorkerMetrics::new).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner { registry: Mutex::new(Registry::default()), metrics, health: health.cloned() }),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a worker; it starts with [`Workers::start`].
    pub fn add(&self, worker: Worker) -> Result<(), WorkerError> {
        if worker.name.is_empty() {
            return Err(WorkerError::EmptyName);
        }
        if let Schedule::Periodic { interval, .. } = worker.schedule
            && interval.is_zero()
        {
            return Err(WorkerError::ZeroInterval(worker.name));
        }
        let mut reg = self.registry();
        if reg.started {
            return Err(WorkerError::Started(worker.name));
        }
        if reg.all.iter().any(|s| s.name == worker.name) {
            return Err(WorkerError::Duplicate(worker.name));
        }
        let shared = Arc::new(Shared::new(
            worker.name.clone(),
            worker.schedule,
            worker.probe,
            worker.stale_after,
            self.inner.metrics.as_ref(),
        ));
        if let Some(h) = &self.inner.health {
            h.add(WorkerCheck { shared: shared.clone(), name: format!("worker:{}", worker.name) });
        }
        reg.all.push(shared.clone());
        reg.pending.push(Plan {
            shared,
            run: worker.run,
            restart_initial: worker.restart_initial,
            restart_max: worker.restart_max,
            requires: worker.requires,
            health: self.inner.health.clone(),
        });
        Ok(())
    }

    /// Spawns a supervisor task per registered worker; each stops when `token` is cancelled and
    /// runs in the span current here (so a process running several services can tell whose
    /// worker logged). Must run inside a Tokio runtime.
    pub fn start(&self, token: &CancellationToken) {
        let span = tracing::Span::current();
        let mut reg = self.registry();
        reg.started = true;
        let common = std::mem::take(&mut reg.requires);
        for mut plan in std::mem::take(&mut reg.pending) {
            for c in &common {
                if !plan.requires.contains(c) {
                    plan.requires.push(c.clone());
                }
            }
            let shared = plan.shared.clone();
            shared.alive.store(true, Ordering::SeqCst);
            let token = token.child_token();
            let handle = tokio::spawn(
                async move {
                    // Cleared on every way out, including abort (which drops this future).
                    struct Alive(Arc<Shared>);
                    impl Drop for Alive {
                        fn drop(&mut self) {
                            self.0.alive.store(false, Ordering::SeqCst);
                            self.0.running.store(false, Ordering::SeqCst);
                        }
                    }
                    let _alive = Alive(plan.shared.clone());
                    supervise::supervise(plan, token).await;
                }
                .instrument(span.clone()),
            );
            reg.handles.push((shared.name.clone(), handle));
        }
    }

    /// Awaits every supervisor task until `deadline`; the token passed to [`Workers::start`]
    /// must be cancelled first. Tasks still running at the deadline are logged, aborted and
    /// awaited briefly; their names are returned. Afterwards no worker task is left running,
    /// except one blocking a thread without ever reaching an `.await` (it is still named).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: handles taken before the future is dropped are detached, not awaited.
    pub async fn join(&self, deadline: Instant) -> Vec<String> {
        let handles = std::mem::take(&mut self.registry().handles);
        let mut late = Vec::new();
        for (name, mut handle) in handles {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                tracing::error!(worker = %name, "worker did not stop within shutdown.timeout; aborting it");
                handle.abort();
                if tokio::time::timeout(ABORT_GRACE, handle).await.is_err() {
                    tracing::error!(worker = %name, "aborted worker is still running (blocking a thread?)");
                }
                late.push(name);
            }
        }
        self.registry().late.extend(late.iter().cloned());
        late
    }

    /// Makes every worker wait for health check `check` before its first run (as
    /// [`Worker::requires`] does for one); call before [`Workers::start`].
    pub fn require_for_all(&self, check: impl Into<String>) {
        let check = check.into();
        let mut reg = self.registry();
        if !reg.requires.contains(&check) {
            reg.requires.push(check);
        }
    }

    /// Aborts every worker task still running and returns the names of those and of any
    /// aborted earlier by [`Workers::join`] (for a forced shutdown's report).
    pub fn abort_all(&self) -> Vec<String> {
        let reg = self.registry();
        for (_, h) in &reg.handles {
            h.abort();
        }
        let mut names: BTreeSet<String> = reg.late.iter().cloned().collect();
        names.extend(reg.all.iter().filter(|s| s.alive.load(Ordering::SeqCst)).map(|s| s.name.clone()));
        names.into_iter().collect()
    }

    /// Asks the periodic worker `name` for a run now, besides its schedule (an operator's
    /// "run now"). The run starts as soon as its supervisor is free: at once, or, before its first
    /// run, once its dependencies are up and its start-up jitter has passed. Any run that starts
    /// meanwhile (a tick) answers the request: one request never makes two runs. The schedule
    /// is unchanged, and a tick that falls during the run is skipped as usual.
    pub fn run_now(&self, name: &str) -> Result<(), RunNowError> {
        let shared = self.registry().all.iter().find(|s| s.name == name).cloned();
        let Some(shared) = shared else { return Err(RunNowError::Unknown(name.to_owned())) };
        if matches!(shared.schedule, Schedule::Continuous) {
            return Err(RunNowError::Continuous(shared.name.clone()));
        }
        if !shared.alive.load(Ordering::SeqCst) {
            return Err(RunNowError::Stopped(shared.name.clone()));
        }
        if shared.running.load(Ordering::SeqCst) {
            return Err(RunNowError::Busy(shared.name.clone()));
        }
        if shared.requested.swap(true, Ordering::SeqCst) {
            return Err(RunNowError::Requested(shared.name.clone()));
        }
        shared.run_now.notify_one();
        Ok(())
    }

    /// Supervisor tasks still running.
    pub fn alive(&self) -> usize {
        self.registry().all.iter().filter(|s| s.alive.load(Ordering::SeqCst)).count()
    }

    /// Every worker's state, in registration order.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        let all = self.registry().all.clone();
        all.iter().map(|s| s.status()).collect()
    }

    /// Whether no worker is registered.
    pub fn is_empty(&self) -> bool {
        self.registry().all.is_empty()
    }
}

#[cfg(test)]
mod tests;
