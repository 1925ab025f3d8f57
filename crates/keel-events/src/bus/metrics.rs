//! Event metrics: registered once per service, shared by its consumers and outbox relay.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use keel_telemetry::Metrics;

use super::Lag;

/// The consumer metrics: `consumer_messages_total`, `consumer_handle_duration_seconds`,
/// `consumer_lag_messages`, `consumer_paused`, `consumer_pauses_total`. Register them once per
/// registry and share them between consumers ([`Consumer::with_metrics`](super::Consumer::with_metrics));
/// `Setup::consume` does both.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    messages: IntCounterVec,
    duration: HistogramVec,
    lag: IntGaugeVec,
    paused: IntGaugeVec,
    pauses: IntCounterVec,
}

impl ConsumerMetrics {
    /// Registers the consumer metrics in `metrics` (an error if they already are).
    pub fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let messages = IntCounterVec::new(
            Opts::new(
                "consumer_messages_total",
                "Handler runs, by outcome (ok, retry, dead; unavailable: held for a dependency, no attempt spent; early: waiting for an earlier message, retried promptly).",
            ),
            &["topic", "group", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("consumer_handle_duration_seconds", "Time a handler took (including the inbox commit).")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["topic", "group"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_messages",
                "Messages waiting for the group, as the broker counts them, per partition (Kafka; empty elsewhere).",
            ),
            &["topic", "group", "partition"],
        )?;
        let paused = IntGaugeVec::new(
            Opts::new("consumer_paused", "1 while the consumer takes no messages because a dependency is unavailable."),
            &["topic", "group"],
        )?;
        let pauses = IntCounterVec::new(
            Opts::new("consumer_pauses_total", "Times the consumer paused for an unavailable dependency."),
            &["topic", "group"],
        )?;
        metrics.register(messages.clone())?;
        metrics.register(duration.clone())?;
        metrics.register(lag.clone())?;
        metrics.register(paused.clone())?;
        metrics.register(pauses.clone())?;
        Ok(Self { messages, duration, lag, paused, pauses })
    }

    pub(crate) fn message(&self, topic: &str, group: &str, outcome: &str) {
        self.messages.with_label_values(&[topic, group, outcome]).inc();
    }

    pub(crate) fn duration(&self, topic: &str, group: &str, took: Duration) {
        self.duration.with_label_values(&[topic, group]).observe(took.as_secs_f64());
    }

    /// One series per partition; `None`: a broker without partitions (an empty `partition`
    /// label, which Prometheus reads as none).
    pub(crate) fn lag(&self, topic: &str, group: &str, lag: &Lag) {
        for (partition, n) in &lag.partitions {
            let partition = partition.map(|p| p.to_string()).unwrap_or_default();
            self.lag.with_label_values(&[topic, group, &partition]).set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn set_paused(&self, topic: &str, group: &str, paused: bool) {
        self.paused.with_label_values(&[topic, group]).set(i64::from(paused));
    }

    pub(crate) fn pause(&self, topic: &str, group: &str) {
        self.pauses.with_label_values(&[topic, group]).inc();
    }
}

/// `outbox_pending`, `outbox_oldest_pending_age_seconds`, `outbox_published_total`,
/// `outbox_publish_failures_total`, `outbox_dead_total`, `outbox_claim_duration_seconds`,
/// `outbox_relay_paused`.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
pub(crate) struct OutboxMetrics {
    pub(crate) pending: IntGauge,
    pub(crate) oldest_age: Gauge,
    pub(crate) published: IntCounter,
    pub(crate) failures: IntCounter,
    pub(crate) dead: IntCounter,
    pub(crate) claim_duration: Histogram,
    pub(crate) paused: IntGauge,
}

#[cfg_attr(not(feature = "sql"), allow(dead_code))]
impl OutboxMetrics {
    pub(crate) fn new(metrics: Option<&Metrics>) -> Result<Self, prometheus::Error> {
        let m = Self {
            pending: IntGauge::new("outbox_pending", "Outbox rows not published yet (not dead).")?,
            oldest_age: Gauge::new("outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row.")?,
            published: IntCounter::new("outbox_published_total", "Outbox rows published and confirmed.")?,
            failures: IntCounter::new("outbox_publish_failures_total", "Failed publish attempts of outbox rows.")?,
            dead: IntCounter::new("outbox_dead_total", "Outbox rows marked dead after their last attempt.")?,
            claim_duration: Histogram::with_opts(
                HistogramOpts::new("outbox_claim_duration_seconds", "Time the relay took to claim a batch of rows.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            )?,
            paused: IntGauge::new(
                "outbox_relay_paused",
                "1 while the relay waits for an unreachable broker (no attempt is spent meanwhile).",
            )?,
        };
        if let Some(metrics) = metrics {
            metrics.register(m.pending.clone())?;
            metrics.register(m.oldest_age.clone())?;
            metrics.register(m.published.clone())?;
            metrics.register(m.failures.clone())?;
            metrics.register(m.dead.clone())?;
            metrics.register(m.claim_duration.clone())?;
            metrics.register(m.paused.clone())?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_one_series_per_partition_and_unlabelled_without_partitions() {
        let metrics = Metrics::new();
        let m = ConsumerMetrics::new(&metrics).unwrap();
        m.lag("orders", "billing", &Lag { partitions: vec![(Some(0), 3), (Some(1), 4)] });
        m.lag("mail", "notifier", &Lag { partitions: vec![(None, 7)] });
        let text = metrics.render();
        for line in [
            r#"consumer_lag_messages{group="billing",partition="0",topic="orders"} 3"#,
            r#"consumer_lag_messages{group="billing",partition="1",topic="orders"} 4"#,
            r#"consumer_lag_messages{group="notifier",partition="",topic="mail"} 7"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
