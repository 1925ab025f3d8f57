//! Pausing: a consumer takes no message while a dependency it waits for is down, and holds a
//! message whose handler reported one down, without spending its attempts.

use super::*;

/// Longest wait between two tries of a held message when no registered dependency is down
/// (the handler reported an outage the consumer cannot watch): keeps recovery within a second.
pub(super) const PROBE_MAX: Duration = Duration::from_secs(1);
/// How long after a consumer starts a broker it cannot subscribe to yet is logged at INFO.
pub(super) const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// An operator's pause of one consumer (the console's Pause button): while set, the consumer
/// takes no new message; what it is handling finishes and is settled as usual. Get it with
/// [`Consumer::control`] before running the consumer; cheap to clone.
#[derive(Clone, Default)]
pub struct ConsumerControl {
    inner: Arc<ControlInner>,
}

#[derive(Default)]
struct ControlInner {
    /// Why it is paused.
    paused: std::sync::Mutex<Option<String>>,
    /// Wakes the fetch loop so a pause takes effect before the next message, not after it.
    wake: Notify,
}

impl std::fmt::Debug for ConsumerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerControl").field("paused", &self.paused()).finish()
    }
}

impl ConsumerControl {
    /// Pauses the consumer, saying why; returns whether it was running. The readiness check
    /// reports it degraded (`paused: paused by an operator: …`), not down: a paused consumer
    /// does not take the service out of rotation.
    pub fn pause(&self, why: impl Into<String>) -> bool {
        let was = self.lock().replace(sanitize(&why.into())).is_none();
        self.inner.wake.notify_one();
        was
    }

    /// Lets it take messages again (within `pause_poll`); returns whether it was paused.
    pub fn resume(&self) -> bool {
        let was = self.lock().take().is_some();
        self.inner.wake.notify_one();
        was
    }

    /// Why it is paused, when it is.
    pub fn paused(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner.paused.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.wake.notified()
    }
}

/// Messages held because their dependency is unavailable, shared by the fetch loop and the
/// handler tasks.
#[derive(Default)]
pub(super) struct Held {
    pub(super) count: std::sync::atomic::AtomicUsize,
    /// The last unavailability a handler reported (for the log and readiness).
    pub(super) reason: std::sync::Mutex<String>,
    /// Wakes the fetch loop when a message is put on hold, so it stops taking more.
    pub(super) wake: Notify,
}

/// One held message: counted while it lives.
pub(super) struct HeldGuard<'a>(&'a Held);

impl<'a> HeldGuard<'a> {
    pub(super) fn new(held: &'a Held, reason: &str) -> Self {
        *held.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = sanitize(reason);
        held.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        held.wake.notify_one();
        Self(held)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<H: Handler> Consumer<H> {
    /// Why the consumer must not take a message now: a dependency it waits for is down, or a
    /// handler is holding a message because one is.
    pub(super) fn pause_reason(&self) -> Option<String> {
        if let Some(why) = self.control.paused() {
            return Some(format!("paused by an operator: {why}"));
        }
        if let Some(d) = self.dependencies.iter().find(|d| !d.is_available()) {
            return Some(format!("{} unavailable", d.name()));
        }
        if self.held.count.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            let reason = self.held.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            return Some(format!("a handler reported a dependency unavailable: {reason}"));
        }
        None
    }

    /// Whether a dependency it waits for (registered, or the inbox database) is down.
    pub(super) fn dependency_down(&self) -> bool {
        self.dependencies.iter().any(|d| !d.is_available())
    }

    /// A dependency is down: the pause begins now unless it had begun (`paused`), and the
    /// readiness state says why.
    pub(super) fn wait_for(&self, reason: String, paused: &mut Option<Instant>, taking_once: bool) {
        if paused.is_none() {
            *paused = Some(Instant::now());
            self.pause(&reason, !taking_once);
        }
        self.state.set(if taking_once { Status::Paused(reason) } else { Status::Waiting(reason) });
    }

    /// Takes nothing until the dependency is back: at start-up (`starting`, nothing taken yet)
    /// that is waiting for it (INFO); later a pause (WARN, counted).
    pub(super) fn pause(&self, reason: &str, starting: bool) {
        if self.control.paused().is_some() {
            tracing::warn!(
                topic = %self.topic, group = %self.group, reason = %reason,
                "consumer paused by an operator: taking no messages until resumed"
            );
        } else if starting {
            tracing::info!(
                topic = %self.topic, group = %self.group, reason = %reason,
                "consumer waiting for its dependency before taking messages"
            );
        } else {
            tracing::warn!(
                topic = %self.topic, group = %self.group, reason = %reason,
                "consumer paused: taking no messages and spending no attempts until the dependency is back"
            );
        }
        if let Some(m) = &self.metrics {
            m.set_paused(&self.topic, &self.group, true);
            if !starting {
                m.pause(&self.topic, &self.group);
            }
        }
        self.changed();
    }

    pub(super) fn resume(&self, paused_for: Duration, starting: bool) {
        if starting {
            tracing::info!(topic = %self.topic, group = %self.group, waited = ?paused_for, "consumer taking messages");
        } else {
            tracing::info!(topic = %self.topic, group = %self.group, paused_for = ?paused_for, "consumer resumed");
        }
        if let Some(m) = &self.metrics {
            m.set_paused(&self.topic, &self.group, false);
        }
        self.state.set(Status::Up);
        self.changed();
    }

    pub(super) fn changed(&self) {
        for f in &self.on_subscribed {
            f();
        }
    }

    /// Holds `delivery` unsettled (on NATS with in-progress acks, so it is not redelivered
    /// elsewhere) while the consumer's dependencies are down, then runs the handler on it again
    /// with the same attempt number, until it no longer fails with `Unavailable`. When no
    /// registered dependency is down (the handler reported something the consumer cannot
    /// watch), the handler is tried again after `pause_poll`, doubling up to a second. `None`
    /// when the consumer is stopping.
    pub(super) async fn hold(
        &self,
        delivery: &Delivery,
        reason: &str,
        stop: &CancellationToken,
    ) -> Option<Result<(), Failure>> {
        let _held = HeldGuard::new(&self.held, reason);
        let poll = self.options.pause_poll;
        let touch_every = (self.options.subscribe.ack_wait / 3).max(poll);
        let mut touched = Instant::now();
        let mut probe = poll;
        loop {
            let failed_at = Instant::now();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(poll) => {}
                }
                if touched.elapsed() >= touch_every {
                    touched = Instant::now();
                    if let Err(e) = delivery.in_progress().await {
                        tracing::debug!(error = %e, "cannot tell the broker the held message is in progress");
                    }
                }
                if failed_at.elapsed() >= probe && !self.dependency_down() {
                    break;
                }
            }
            match self.run_handler(delivery).await {
                Err(Failure::Unavailable { reason }) => {
                    *self.held.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = sanitize(&reason);
                    probe = (probe * 2).min(PROBE_MAX.max(poll));
                }
                other => return Some(other),
            }
        }
    }
}
