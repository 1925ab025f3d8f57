//! The first connection to a dependency, made in the background — shared by `keel_data` and
//! `keel_redis`, so both report the same states, reasons and startup checks.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::Outcome;
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
