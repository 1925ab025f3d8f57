//! How a consumer runs ([`ConsumerOptions`]).

use super::*;

/// How a consumer runs.
///
/// The retry defaults are sized so that a message failing for a reason the consumer cannot
/// recognise as an outage is still retried for more than half an hour before it is
/// dead-lettered: 16 deliveries, 15 waits of 1 s doubling to 5 min, at least 34 min in all
/// after jitter. A recognised outage spends no attempt at all (see [`Failure::Unavailable`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// Handlers running at once. Default `8`.
    pub concurrency: usize,
    /// Deliveries before a failing message is dead-lettered. Default `16`.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt. Default `1s`.
    pub retry_initial: Duration,
    /// Largest retry delay. Default `5m`.
    pub retry_max: Duration,
    /// A handler still running after this is abandoned and retried. Default `30s`.
    pub handler_timeout: Duration,
    /// While paused, how often the dependencies are looked at again. Default `200ms`.
    pub pause_poll: Duration,
    /// How often consumer lag is read from the broker. Default `15s`.
    pub lag_interval: Duration,
    /// Inbox rows older than this are pruned (a redelivery later than that is not recognised).
    /// Default `7d`.
    pub inbox_retention: Duration,
    /// How soon an early message ([`Failure::Early`]) is tried again. Default `200ms`.
    pub order_retry: Duration,
    /// How long after its publication an early message is tried again that way and never
    /// dead-lettered; past it, an ordinary retry. Default `5m`.
    pub order_wait: Duration,
    /// Broker subscription settings.
    pub subscribe: SubscribeOptions,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 16,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            handler_timeout: Duration::from_secs(30),
            pause_poll: Duration::from_millis(200),
            lag_interval: Duration::from_secs(15),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            order_retry: Duration::from_millis(200),
            order_wait: Duration::from_secs(300),
            subscribe: SubscribeOptions::default(),
        }
    }
}

impl ConsumerOptions {
    /// Sets the concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the attempts before the DLQ (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets how soon an early message is tried again, and for how long after its publication.
    pub fn order_wait(mut self, retry_every: Duration, wait: Duration) -> Self {
        self.order_retry = retry_every;
        self.order_wait = wait;
        self
    }
    /// Sets the retry backoff bounds.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }
    /// Sets the handler timeout.
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }
    /// Sets how often a paused consumer looks at its dependencies (10 ms to 1 s).
    pub fn pause_poll(mut self, d: Duration) -> Self {
        self.pause_poll = d.clamp(Duration::from_millis(10), Duration::from_secs(1));
        self
    }
    /// Sets the broker subscription settings.
    pub fn subscribe(mut self, s: SubscribeOptions) -> Self {
        self.subscribe = s;
        self
    }
}
