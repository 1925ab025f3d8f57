//! `notifier_notifications_total{kind, channel}`: notifications sent, in the app (written to a
//! user's list) or by e-mail (handed to the transport).
//!
//! One written while a consumer handles a message is counted when the handler returns, just
//! before its inbox transaction commits: a commit failing then (the message comes again) can
//! count it twice. The workers' are counted after their commit.

use prometheus::{IntCounterVec, Opts};

/// In-app notification kinds: the ones the document states.
const IN_APP: [&str; 12] = cityevents_api::notifications::KINDS;

/// The counter; cheap to clone. [`NotificationMetrics::none`] counts nothing.
#[derive(Debug, Clone, Default)]
pub struct NotificationMetrics {
    sent: Option<IntCounterVec>,
}

impl NotificationMetrics {
    /// Registers the counter in `metrics`, every kind of each channel at 0.
    pub fn register(metrics: &keel::telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let sent = IntCounterVec::new(
            Opts::new(
                "notifier_notifications_total",
                "Notifications sent, by kind (a join.* or event.* change, or a mail template) and channel (in_app, email).",
            ),
            &["kind", "channel"],
        )?;
        for kind in IN_APP {
            sent.with_label_values(&[kind, "in_app"]);
        }
        for kind in crate::mail::TEMPLATES {
            sent.with_label_values(&[kind, "email"]);
        }
        metrics.register(sent.clone())?;
        Ok(Self { sent: Some(sent) })
    }

    /// Metrics that count nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// `n` in-app notifications of `kind` were written.
    pub(crate) fn in_app(&self, kind: &str, n: u64) {
        if let Some(c) = &self.sent
            && n > 0
        {
            c.with_label_values(&[kind, "in_app"]).inc_by(n);
        }
    }

    /// One mail of `template` was handed to the transport.
    pub(crate) fn email(&self, template: &str) {
        if let Some(c) = &self.sent {
            c.with_label_values(&[template, "email"]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    /// The kinds the activity digest writes are among those the document states.
    #[test]
    fn the_document_lists_the_activity_kinds() {
        for kind in [crate::activity::CHANGED, crate::activity::ACTIVITY] {
            assert!(super::IN_APP.contains(&kind), "{kind}");
        }
    }
}
