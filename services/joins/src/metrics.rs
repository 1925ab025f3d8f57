//! The service's business metrics: `joins_attempts_total{outcome, reason}` and
//! `joins_changes_total{change}`.
//!
//! A change is counted once its transaction committed (the API's, the settle worker's); one
//! made while a consumer handles an `event.*` message is counted when the handler returns, just
//! before the inbox transaction commits, so a commit failing then (the message is delivered
//! again) can count it twice.

use prometheus::{IntCounterVec, Opts};

use crate::store::Announce;

/// Why a join was refused: the `reason` label of `outcome="refused"` (the problem's `code`).
pub(crate) const REFUSALS: [&str; 5] =
    ["event_closed", "already_joined", "banned", "organizer_cannot_join", "event_not_found"];

/// What the joins of one transaction did, from its `join.*` announcements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    confirmed: u64,
    waitlisted: u64,
    promoted: u64,
    left: u64,
    kicked: u64,
    banned: u64,
    canceled: u64,
}

impl Tally {
    /// Counts one announcement; `reason` is the change's (`None` for a leave).
    pub(crate) fn add(&mut self, kind: Announce, reason: Option<&str>) {
        let slot = match (kind, reason) {
            (Announce::Confirmed, _) => &mut self.confirmed,
            (Announce::Waitlisted, _) => &mut self.waitlisted,
            (Announce::Promoted, _) => &mut self.promoted,
            (Announce::Kicked, Some("banned")) => &mut self.banned,
            (Announce::Kicked, _) => &mut self.kicked,
            (Announce::Canceled, None) => &mut self.left,
            (Announce::Canceled, Some(_)) => &mut self.canceled,
        };
        *slot += 1;
    }
}

/// The counters; cheap to clone. [`JoinMetrics::none`] counts nothing (tests of the consumer).
#[derive(Debug, Clone, Default)]
pub struct JoinMetrics {
    counters: Option<(IntCounterVec, IntCounterVec)>,
}

impl JoinMetrics {
    /// Registers both counters in `metrics`, every label value at 0 from the start.
    pub fn register(metrics: &keel::telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "joins_attempts_total",
                "Join requests by outcome (confirmed, waitlisted, refused) and, when refused, reason.",
            ),
            &["outcome", "reason"],
        )?;
        attempts.with_label_values(&["confirmed", "none"]);
        attempts.with_label_values(&["waitlisted", "none"]);
        for r in REFUSALS {
            attempts.with_label_values(&["refused", r]);
        }
        metrics.register(attempts.clone())?;
        let changes = IntCounterVec::new(
            Opts::new(
                "joins_changes_total",
                "Joins changed after they were made: promoted from the waitlist, left, kicked, banned, or canceled with their event.",
            ),
            &["change"],
        )?;
        for c in ["promoted", "left", "kicked", "banned", "canceled"] {
            changes.with_label_values(&[c]);
        }
        metrics.register(changes.clone())?;
        Ok(Self { counters: Some((attempts, changes)) })
    }

    /// Metrics that count nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Counts a committed tally.
    pub(crate) fn count(&self, t: Tally) {
        let Some((attempts, changes)) = &self.counters else { return };
        for (outcome, n) in [("confirmed", t.confirmed), ("waitlisted", t.waitlisted)] {
            if n > 0 {
                attempts.with_label_values(&[outcome, "none"]).inc_by(n);
            }
        }
        for (change, n) in [
            ("promoted", t.promoted),
            ("left", t.left),
            ("kicked", t.kicked),
            ("banned", t.banned),
            ("canceled", t.canceled),
        ] {
            if n > 0 {
                changes.with_label_values(&[change]).inc_by(n);
            }
        }
    }

    /// Counts a refused join whose problem has `code` (other refusals, such as invalid input,
    /// are not join attempts and are not counted).
    pub(crate) fn refused(&self, code: &str) {
        if let Some((attempts, _)) = &self.counters
            && REFUSALS.contains(&code)
        {
            attempts.with_label_values(&["refused", code]).inc();
        }
    }
}
