//! The service's own metrics.

use prometheus::{IntCounterVec, Opts};

/// How a sign-in attempt ended: the `outcome` label of `auth_login_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginOutcome {
    Success,
    InvalidCredentials,
    Locked,
    InvalidInput,
}

impl LoginOutcome {
    const ALL: [Self; 4] = [Self::Success, Self::InvalidCredentials, Self::Locked, Self::InvalidInput];

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Locked => "locked",
            Self::InvalidInput => "invalid_input",
        }
    }
}

/// `auth_login_attempts_total{outcome}`.
#[derive(Debug, Clone)]
pub(crate) struct LoginMetrics {
    attempts: IntCounterVec,
}

impl LoginMetrics {
    /// Registers the counters in `metrics`, every outcome present from the start (at 0), so
    /// rates and alerts work before the first failure.
    pub(crate) fn register(metrics: &keel::telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let attempts =
            IntCounterVec::new(Opts::new("auth_login_attempts_total", "Sign-in attempts by outcome."), &["outcome"])?;
        for o in LoginOutcome::ALL {
            attempts.with_label_values(&[o.label()]);
        }
        metrics.register(attempts.clone())?;
        Ok(Self { attempts })
    }

    pub(crate) fn count(&self, outcome: LoginOutcome) {
        self.attempts.with_label_values(&[outcome.label()]).inc();
    }
}
