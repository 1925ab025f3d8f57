//! What a consumer's readiness check reports ([`ConsumerCheck`]).

use super::*;

/// What the consumer's readiness check reports.
#[derive(Debug, Clone)]
pub(super) enum Status {
    /// Subscribed and taking messages.
    Up,
    /// Subscribed, but taking none until a dependency is back.
    Paused(String),
    /// Subscribed, and taking none until a dependency is up for the first time (start-up).
    Waiting(String),
    /// Not subscribed, and why.
    Down(String),
}

#[derive(Debug)]
pub(super) struct SubState(std::sync::Mutex<Status>);

impl Default for SubState {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Status::Down("not subscribed yet".into())))
    }
}

impl SubState {
    pub(super) fn set(&self, v: Status) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = v;
    }
    pub(super) fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A consumer's readiness check.
#[derive(Debug, Clone)]
pub struct ConsumerCheck {
    pub(super) name: String,
    pub(super) state: Arc<SubState>,
    /// As the bus's own check: a service whose bus is optional stays ready without it.
    pub(super) required: bool,
}

impl HealthCheck for ConsumerCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> Kind {
        Kind::Readiness
    }
    fn required(&self) -> bool {
        self.required
    }
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            match self.state.get() {
                Status::Up => Outcome::Up,
                Status::Paused(reason) => Outcome::degraded(format!("paused: {reason}")),
                Status::Waiting(reason) => Outcome::Down(format!("waiting: {reason}")),
                Status::Down(reason) => Outcome::Down(format!("not subscribed: {reason}")),
            }
        })
    }
}
