//! The service's own metrics.

use prometheus::{IntCounterVec, IntGauge, Opts};

use crate::lockout::Scope;

/// How a sign-in attempt ended: the `outcome` label of `auth_login_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginOutcome {
    Success,
    InvalidCredentials,
    Locked,
    InvalidInput,
    Banned,
}

impl LoginOutcome {
    const ALL: [Self; 5] = [Self::Success, Self::InvalidCredentials, Self::Locked, Self::InvalidInput, Self::Banned];

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Locked => "locked",
            Self::InvalidInput => "invalid_input",
            Self::Banned => "banned",
        }
    }
}

/// How a refresh ended: the `outcome` label of `auth_refresh_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshOutcome {
    Rotated,
    Repeated,
    Reused,
    Invalid,
}

impl RefreshOutcome {
    const ALL: [Self; 4] = [Self::Rotated, Self::Repeated, Self::Reused, Self::Invalid];

    fn label(self) -> &'static str {
        match self {
            Self::Rotated => "rotated",
            Self::Repeated => "repeated",
            Self::Reused => "reused",
            Self::Invalid => "invalid",
        }
    }
}

/// How a sign-in with an OpenID Connect provider ended: the `outcome` label of
/// `auth_oidc_sign_ins_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OidcOutcome {
    /// Signed in to the account the provider's account is linked to.
    SignedIn,
    /// Signed in to an account made by this sign-in.
    Created,
    /// A signed-in user linked the provider (or confirmed an offer with their password).
    Linked,
    /// An account has the address: its owner was offered to link.
    Offered,
    /// Refused: a failed check (state, code, ID token), a banned account, a conflict.
    Refused,
    /// The provider could not be reached.
    Unavailable,
}

impl OidcOutcome {
    const ALL: [Self; 6] =
        [Self::SignedIn, Self::Created, Self::Linked, Self::Offered, Self::Refused, Self::Unavailable];

    fn label(self) -> &'static str {
        match self {
            Self::SignedIn => "signed_in",
            Self::Created => "created",
            Self::Linked => "linked",
            Self::Offered => "offered",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
        }
    }
}

/// `auth_login_attempts_total{outcome}`, `auth_refresh_total{outcome}`,
/// `auth_login_throttled_total{scope}`, `auth_oidc_sign_ins_total{provider,outcome}` and
/// `auth_active_sessions`.
#[derive(Debug, Clone)]
pub(crate) struct AuthMetrics {
    attempts: IntCounterVec,
    refreshes: IntCounterVec,
    throttled: IntCounterVec,
    oidc: IntCounterVec,
    sessions: IntGauge,
}

impl AuthMetrics {
    /// Registers the counters in `metrics`, every outcome present from the start (at 0), so
    /// rates and alerts work before the first failure.
    pub(crate) fn register<'a>(
        metrics: &keel::telemetry::Metrics,
        providers: impl Iterator<Item = &'a str>,
    ) -> Result<Self, prometheus::Error> {
        let attempts =
            IntCounterVec::new(Opts::new("auth_login_attempts_total", "Sign-in attempts by outcome."), &["outcome"])?;
        for o in LoginOutcome::ALL {
            attempts.with_label_values(&[o.label()]);
        }
        metrics.register(attempts.clone())?;
        let refreshes =
            IntCounterVec::new(Opts::new("auth_refresh_total", "Refresh-token uses by outcome."), &["outcome"])?;
        for o in RefreshOutcome::ALL {
            refreshes.with_label_values(&[o.label()]);
        }
        metrics.register(refreshes.clone())?;
        let throttled = IntCounterVec::new(
            Opts::new(
                "auth_login_throttled_total",
                "Sign-in failure counters that reached their free failures (further attempts are delayed), by scope.",
            ),
            &["scope"],
        )?;
        for scope in Scope::ALL {
            throttled.with_label_values(&[scope.label()]);
        }
        metrics.register(throttled.clone())?;
        let oidc = IntCounterVec::new(
            Opts::new("auth_oidc_sign_ins_total", "Sign-ins with OpenID Connect providers, by provider and outcome."),
            &["provider", "outcome"],
        )?;
        for provider in providers {
            for o in OidcOutcome::ALL {
                oidc.with_label_values(&[provider, o.label()]);
            }
        }
        metrics.register(oidc.clone())?;
        let sessions = IntGauge::new(
            "auth_active_sessions",
            "Sessions that can still be refreshed (signed in, not signed out, revoked or expired), in the whole database; counted every 15 s.",
        )?;
        metrics.register(sessions.clone())?;
        Ok(Self { attempts, refreshes, throttled, oidc, sessions })
    }

    pub(crate) fn count(&self, outcome: LoginOutcome) {
        self.attempts.with_label_values(&[outcome.label()]).inc();
    }

    pub(crate) fn oidc(&self, provider: &str, outcome: OidcOutcome) {
        self.oidc.with_label_values(&[provider, outcome.label()]).inc();
    }

    pub(crate) fn throttled(&self, scope: Scope) {
        self.throttled.with_label_values(&[scope.label()]).inc();
    }

    pub(crate) fn set_sessions(&self, n: i64) {
        self.sessions.set(n);
    }

    pub(crate) fn refreshed(&self, outcome: RefreshOutcome) {
        self.refreshes.with_label_values(&[outcome.label()]).inc();
    }
}
