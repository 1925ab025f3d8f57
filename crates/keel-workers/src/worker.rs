//! What a worker is: its schedule, its run function and its health policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::state::Shared;
use keel_health::Kind;

/// The error a worker run returns: anything that converts into a boxed error (`?` works on
/// most error types, and on `String`).
pub type RunError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type RunFuture = Pin<Box<dyn Future<Output = Result<(), RunError>> + Send>>;
pub(crate) type RunFn = Arc<dyn Fn(Context) -> RunFuture + Send + Sync>;

/// When a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// Every `interval`, first after a random delay in `[0, jitter]`. A tick that comes while
    /// the previous run is still going is skipped (runs never overlap).
    Periodic {
        /// Time between run starts.
        interval: Duration,
        /// Largest random delay before the first run, so replicas do not run in step.
        jitter: Duration,
    },
    /// One long-running call (a consumer loop) that should return only once cancelled; if it
    /// returns or panics earlier it is started again after a backoff.
    Continuous,
}

/// A worker definition; register it with `keel::Setup::worker` or [`super::Workers::add`].
///
/// ```
/// use std::time::Duration;
/// use keel_workers::Worker;
///
/// let cleanup = Worker::periodic("cleanup", Duration::from_secs(60), |ctx| async move {
///     if ctx.is_cancelled() {
///         return Ok(());
///     }
///     // delete expired rows …
///     Ok::<_, std::io::Error>(())
/// })
/// .jitter(Duration::from_secs(10))
/// .readiness();
/// # let _ = cleanup;
/// ```
pub struct Worker {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) run: RunFn,
    pub(crate) probe: Kind,
    pub(crate) stale_after: Option<Duration>,
    pub(crate) restart_initial: Duration,
    pub(crate) restart_max: Duration,
    pub(crate) requires: Vec<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("name", &self.name).field("schedule", &self.schedule).finish_non_exhaustive()
    }
}

/// First cap of the restart backoff after a panic (full jitter, doubling).
pub const DEFAULT_RESTART_INITIAL: Duration = Duration::from_secs(1);
/// Largest cap of the restart backoff: a worker that keeps panicking retries about once a minute.
pub const DEFAULT_RESTART_MAX: Duration = Duration::from_secs(60);

fn boxed<F, Fut, E>(f: F) -> RunFn
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<RunError> + 'static,
{
    Arc::new(move |ctx| {
        let fut = f(ctx);
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
}

impl Worker {
    /// A worker that calls `f` every `interval`. Health: down when the last successful run is
    /// older than 2 × `interval` (change with [`Worker::stale_after`]).
    pub fn periodic<F, Fut, E>(name: impl Into<String>, interval: Duration, f: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<RunError> + 'static,
    {
        Self::new(name.into(), Schedule::Periodic { interval, jitter: Duration::ZERO }, boxed(f))
    }

    /// A worker that calls `f` once and expects it to run until [`Context::cancelled`]. Health:
    /// degraded while it is being restarted; with [`Worker::stale_after`], down when
    /// [`Context::heartbeat`] was not called for that long.
    pub fn continuous<F, Fut, E>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<RunError> + 'static,
    {
        Self::new(name.into(), Schedule::Continuous, boxed(f))
    }

    fn new(name: String, schedule: Schedule, run: RunFn) -> Self {
        Self {
            name,
            schedule,
            run,
            probe: Kind::Liveness,
            stale_after: None,
            restart_initial: DEFAULT_RESTART_INITIAL,
            restart_max: DEFAULT_RESTART_MAX,
            requires: Vec::new(),
        }
    }

    /// Waits for health check `check` (`database`, `redis`, …) to be up before the first run,
    /// so a worker does not fail its first runs while a dependency is still connecting. Keel's
    /// services add their database this way to every worker.
    pub fn requires(mut self, check: impl Into<String>) -> Self {
        let check = check.into();
        if !self.requires.contains(&check) {
            self.requires.push(check);
        }
        self
    }

    /// Periodic workers: delays the first run by a random time in `[0, jitter]`.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        if let Schedule::Periodic { interval, .. } = self.schedule {
            self.schedule = Schedule::Periodic { interval, jitter };
        }
        self
    }

    /// Feeds readiness instead of liveness: a stale worker takes the instance out of load
    /// balancing rather than getting it restarted (for work that traffic depends on, such as
    /// a cache refresh).
    pub fn readiness(mut self) -> Self {
        self.probe = Kind::Readiness;
        self
    }

    /// The worker is unhealthy when its last success (a run that returned `Ok`, or a
    /// [`Context::heartbeat`]) is older than this.
    pub fn stale_after(mut self, threshold: Duration) -> Self {
        self.stale_after = Some(threshold);
        self
    }

    /// Backoff between restarts after a panic (and after a continuous worker returned early):
    /// full jitter, the cap doubling from `initial` to `max`. Default 1 s to 60 s.
    pub fn restart_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.restart_initial = initial;
        self.restart_max = max;
        self
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The staleness threshold in effect: the configured one, else 2 × interval for periodic
    /// workers, else none.
    pub fn threshold(&self) -> Option<Duration> {
        threshold(self.schedule, self.stale_after)
    }
}

pub(crate) fn threshold(schedule: Schedule, stale_after: Option<Duration>) -> Option<Duration> {
    stale_after.or(match schedule {
        Schedule::Periodic { interval, .. } => interval.checked_mul(2),
        Schedule::Continuous => None,
    })
}

/// What a run gets: the stop signal and a way to report progress.
#[derive(Clone)]
pub struct Context {
    pub(crate) token: CancellationToken,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("worker", &self.shared.name).finish_non_exhaustive()
    }
}

impl Context {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Cancelled when the service shuts down.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Completes when the service shuts down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: use it in `tokio::select!` and poll it again later.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Whether the service is shutting down.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Records progress now: for a continuous worker, what a successful run is for a periodic
    /// one (it refreshes `worker_last_success_timestamp_seconds` and the health check).
    pub fn heartbeat(&self) {
        self.shared.heartbeat();
    }
}
