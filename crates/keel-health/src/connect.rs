//! The first connection to a dependency, made in the background — shared by `keel_data`,
//! `keel_redis` and `keel_events`, so all report the same states, reasons and checks.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{CheckFuture, HealthCheck, Kind, Outcome};
use keel_resilience::{Backoff, ConnectConfig};

/// Where a dependency's start-up stands.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Not connected yet.
    Connecting { attempts: u32, last_error: Option<String>, gave_up: bool },
    /// Connected (and, for SQL, migrated when asked to).
    Connected,
    /// Connected, but a required step failed (auto-migration); the text says why.
    Failed(String),
}

/// Tracks a dependency's background connection.
#[derive(Debug)]
pub struct ConnectTracker {
    what: &'static str,
    cfg: ConnectConfig,
    phase: Mutex<Phase>,
}

/// A failed attempt: a metric `kind` and a sanitized message.
pub type AttemptError = (&'static str, String);

impl ConnectTracker {
    pub fn new(what: &'static str, cfg: ConnectConfig) -> Self {
        Self { what, cfg, phase: Mutex::new(Phase::Connecting { attempts: 0, last_error: None, gave_up: false }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    pub fn phase(&self) -> Phase {
        self.lock().clone()
    }

    pub fn set(&self, phase: Phase) {
        *self.lock() = phase;
    }

    /// Why calls are refused: for `Unavailable` errors and probe bodies.
    pub fn reason(&self) -> String {
        match &*self.lock() {
            Phase::Connecting { attempts, last_error: Some(e), .. } => format!("connecting (attempt {attempts}): {e}"),
            Phase::Connecting { .. } => "connecting".into(),
            Phase::Failed(e) => e.clone(),
            Phase::Connected => "the connection was lost; re-probing".into(),
        }
    }

    /// The startup check: down once `max_elapsed` passed without a first connection.
    pub fn startup_outcome(&self) -> Outcome {
        match &*self.lock() {
            Phase::Connecting { gave_up: true, last_error, .. } => Outcome::Down(format!(
                "no connection within {}.connect.max_elapsed: {}",
                self.what,
                last_error.as_deref().unwrap_or("unknown error")
            )),
            _ => Outcome::Up,
        }
    }

    /// Runs `attempt` (bounded by `attempt_timeout`) with backoff until it succeeds, reporting
    /// each failure's kind to `failed`. Returns the attempts made, or `None` if `stop` came first.
    pub async fn connect<F, Fut>(
        &self,
        stop: &CancellationToken,
        mut attempt: F,
        failed: impl Fn(&'static str),
    ) -> Option<u32>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), AttemptError>>,
    {
        let mut backoff = Backoff::from_config(&self.cfg);
        let started = Instant::now();
        loop {
            let bounded = tokio::time::timeout(self.cfg.attempt_timeout, attempt());
            let result = tokio::select! {
                () = stop.cancelled() => return None,
                r = bounded => r,
            };
            let (kind, error) = match result {
                Ok(Ok(())) => return Some(backoff.attempts() + 1),
                Ok(Err(e)) => e,
                Err(_) => {
                    ("timeout", format!("no answer within {}", humantime::format_duration(self.cfg.attempt_timeout)))
                }
            };
            failed(kind);
            {
                let mut phase = self.lock();
                if let Phase::Connecting { attempts, last_error, gave_up } = &mut *phase {
                    *attempts += 1;
                    if *attempts <= 3 || attempts.is_power_of_two() {
                        tracing::warn!(dependency = self.what, attempt = *attempts, error = %error, "not reachable yet; retrying");
                    }
                    *last_error = Some(error);
                    if !self.cfg.max_elapsed.is_zero() && started.elapsed() > self.cfg.max_elapsed && !*gave_up {
                        *gave_up = true;
                        tracing::error!(
                            dependency = self.what,
                            attempts = *attempts,
                            "giving up on the first connection; the startup probe is down, retries go on"
                        );
                    }
                }
            }
            let wait = backoff.next_delay();
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
/// A dependency connected in the background (a database, Redis, a broker), reported by two
/// checks ([`ConnectionCheck`]): at start-up, down once its first connection took longer than
/// its `connect.max_elapsed`; at readiness, its own probe.
pub trait Connects: Send + Sync + 'static {
    /// The readiness check's name (`database`).
    const READINESS: &'static str;
    /// The startup check's name (`database_connect`).
    const STARTUP: &'static str;
    /// Its background connection.
    fn connection(&self) -> &ConnectTracker;
    /// Whether readiness fails while it is down (its section's `required`).
    fn required(&self) -> bool;
    /// The readiness check's deadline.
    fn timeout(&self) -> Duration {
        crate::DEFAULT_TIMEOUT
    }
    /// Probes it for readiness.
    fn ready(&self) -> CheckFuture<'_>;
}

/// A [`Connects`]'s startup or readiness check.
#[derive(Debug, Clone)]
pub struct ConnectionCheck<D> {
    dependency: D,
    startup: bool,
}

impl<D: Connects> ConnectionCheck<D> {
    /// The readiness check, [`Connects::READINESS`].
    pub fn readiness(dependency: D) -> Self {
        Self { dependency, startup: false }
    }

    /// The startup check, [`Connects::STARTUP`]: required whatever the dependency's
    /// `required`, since a service that never connected cannot be started.
    pub fn startup(dependency: D) -> Self {
        Self { dependency, startup: true }
    }
}

impl<D: Connects> HealthCheck for ConnectionCheck<D> {
    fn name(&self) -> &str {
        if self.startup { D::STARTUP } else { D::READINESS }
    }
    fn kind(&self) -> Kind {
        if self.startup { Kind::Startup } else { Kind::Readiness }
    }
    fn required(&self) -> bool {
        self.startup || self.dependency.required()
    }
    fn timeout(&self) -> Duration {
        self.dependency.timeout()
    }
    fn check(&self) -> CheckFuture<'_> {
        if self.startup {
            let outcome = self.dependency.connection().startup_outcome();
            return Box::pin(std::future::ready(outcome));
        }
        self.dependency.ready()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    struct Fake {
        tracker: ConnectTracker,
        required: bool,
    }

    impl Connects for Fake {
        const READINESS: &'static str = "fake";
        const STARTUP: &'static str = "fake_connect";
        fn connection(&self) -> &ConnectTracker {
            &self.tracker
        }
        fn required(&self) -> bool {
            self.required
        }
        fn ready(&self) -> CheckFuture<'_> {
            Box::pin(std::future::ready(Outcome::Down(self.tracker.reason())))
        }
    }

    fn fake(required: bool) -> Fake {
        Fake { tracker: ConnectTracker::new("fake", ConnectConfig::default()), required }
    }

    #[tokio::test]
    async fn the_two_checks_are_named_placed_and_required_as_the_dependency_says() {
        let ready = ConnectionCheck::readiness(fake(false));
        assert_eq!((ready.name(), ready.kind(), ready.required()), ("fake", Kind::Readiness, false));
        assert_eq!(ready.timeout(), crate::DEFAULT_TIMEOUT);
        assert!(matches!(ready.check().await, Outcome::Down(r) if r == "connecting"), "its own probe");
        let startup = ConnectionCheck::startup(fake(false));
        assert_eq!(
            (startup.name(), startup.kind(), startup.required()),
            ("fake_connect", Kind::Startup, true),
            "start-up needs the connection whatever `required` says"
        );
        assert!(matches!(startup.check().await, Outcome::Up), "up while still within max_elapsed");
    }

    #[tokio::test]
    async fn the_startup_check_fails_once_connecting_gave_up() {
        let startup = ConnectionCheck::startup(fake(true));
        startup.dependency.tracker.set(Phase::Connecting {
            attempts: 3,
            last_error: Some("refused".into()),
            gave_up: true,
        });
        match startup.check().await {
            Outcome::Down(r) => assert!(r.contains("fake.connect.max_elapsed") && r.contains("refused"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
