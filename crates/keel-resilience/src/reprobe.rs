//! Re-probing a dependency believed down, on use.
//!
//! A dependency marked down (a lost connection) is not left for the next periodic health check
//! to clear: the next call that finds it down starts one cheap probe (a `SELECT 1` on a fresh
//! connection, a `PING`, an upstream's readiness path) in the background and fails fast itself;
//! a probe that succeeds clears the mark at once. Probes are bounded: at most one in flight per
//! dependency, and between probes a back-off of 200 ms doubling to 1 s with equal jitter (a
//! fleet that lost the same dependency does not probe in step). So the first call after the
//! dependency answers again succeeds within about a second, and a dependency that stays down
//! costs at most one probe a second per instance.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::backoff::{Backoff, Jitter};

/// The first wait before a re-probe.
pub const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait between re-probes.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct GateState {
    in_flight: bool,
    next: Option<Instant>,
    backoff: Backoff,
}

/// One probe in flight at most, and a back-off between probes.
#[derive(Debug)]
pub struct ProbeGate {
    state: Mutex<GateState>,
}

impl Default for ProbeGate {
    fn default() -> Self {
        Self {
            state: Mutex::new(GateState {
                in_flight: false,
                next: None,
                backoff: Backoff::new(FIRST_WAIT, MAX_WAIT).jitter(Jitter::Equal),
            }),
        }
    }
}

impl ProbeGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The dependency just went down: the first probe may start after the first back-off.
    pub fn arm(&self, now: Instant) {
        let mut s = self.lock();
        s.backoff.reset();
        let wait = s.backoff.next_delay();
        s.next = Some(now + wait);
    }

    /// Whether a probe may start now; if so it is in flight until [`ProbeGate::finish`].
    pub fn try_start(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if s.in_flight || s.next.is_some_and(|n| now < n) {
            return false;
        }
        s.in_flight = true;
        true
    }

    /// Whether the back-off has passed, for a caller that serializes its attempts itself (and
    /// may be cancelled mid-attempt: it must not leave a probe marked in flight).
    pub fn due(&self, now: Instant) -> bool {
        self.lock().next.is_none_or(|n| now >= n)
    }

    /// The probe ended: a failure waits longer before the next one, a success resets the wait.
    pub fn finish(&self, ok: bool, now: Instant) {
        let mut s = self.lock();
        s.in_flight = false;
        if ok {
            s.backoff.reset();
            s.next = None;
        } else {
            let wait = s.backoff.next_delay();
            s.next = Some(now + wait);
        }
    }
}

/// Whether a dependency is believed reachable, with the re-probe that clears a lost connection.
#[derive(Debug, Default)]
pub struct Availability {
    up: AtomicBool,
    /// Down because a connection failed: a re-probe may clear it. Down for another reason
    /// (migrations pending) only the periodic check clears it.
    lost: AtomicBool,
    gate: ProbeGate,
    recovered: tokio::sync::Notify,
    lost_connection: tokio::sync::Notify,
}

impl Availability {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Reachable (a check or the first connection succeeded).
    pub fn set_up(&self) {
        self.lost.store(false, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
    }

    /// Down for a reason a connection probe cannot judge (migrations pending or failed).
    pub fn set_down(&self) {
        self.lost.store(false, Ordering::Relaxed);
        self.up.store(false, Ordering::Relaxed);
    }

    /// The connection was lost: down, and re-probed on use.
    pub fn lose(&self) {
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let was_lost = self.lost.swap(true, Ordering::Relaxed);
        if was_up || !was_lost {
            self.gate.arm(Instant::now());
        }
        if was_up {
            self.lost_connection.notify_waiters();
        }
    }

    /// Completes when the dependency is next marked down by a lost connection
    /// ([`Availability::lose`]): callers waiting for it give up at once, and readiness can be
    /// re-checked without waiting for the next periodic check.
    pub async fn lost(&self) {
        self.lost_connection.notified().await;
    }

    /// Whether the caller should start a re-probe now (down with a lost connection, none in
    /// flight, the back-off passed). It must then call [`Availability::probed`].
    pub fn probe_due(&self) -> bool {
        !self.is_up() && self.lost.load(Ordering::Relaxed) && self.gate.try_start(Instant::now())
    }

    /// A re-probe's result: a success marks the dependency up at once (unless something else
    /// marked it down meanwhile) and wakes [`Availability::recovered`].
    pub fn probed(&self, ok: bool) {
        self.gate.finish(ok, Instant::now());
        if ok && self.lost.load(Ordering::Relaxed) {
            self.set_up();
            self.recovered.notify_waiters();
        }
    }

    /// Starts `probe` in the background when a re-probe is due ([`Availability::probe_due`]);
    /// `probe` must end with [`Availability::probed`]. Outside a runtime the probe counts as
    /// failed, so the next call may try again.
    pub fn spawn_probe(&self, probe: impl std::future::Future<Output = ()> + Send + 'static) {
        if !self.probe_due() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(probe)),
            Err(_) => self.probed(false),
        }
    }

    /// Completes when a re-probe next finds the dependency back.
    pub async fn recovered(&self) {
        self.recovered.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_in_flight_and_a_growing_wait_between_probes() {
        let gate = ProbeGate::default();
        let t0 = Instant::now();
        gate.arm(t0);
        assert!(!gate.try_start(t0), "the first probe waits the first back-off");
        let t1 = t0 + FIRST_WAIT;
        assert!(gate.try_start(t1));
        assert!(!gate.try_start(t1), "one probe in flight at most");
        gate.finish(false, t1);
        assert!(!gate.try_start(t1 + Duration::from_millis(199)), "at least half of the 400 ms cap");
        let mut now = t1;
        for _ in 0..10 {
            now += MAX_WAIT;
            assert!(gate.try_start(now), "the wait never passes 1 s");
            gate.finish(false, now);
        }
        gate.finish(true, now);
        assert!(gate.try_start(now), "a success clears the wait");
    }

    #[test]
    fn a_successful_probe_clears_a_lost_connection_but_not_another_reason() {
        let a = Availability::default();
        a.set_up();
        a.lose();
        assert!(!a.is_up());
        assert!(!a.probe_due(), "not before the first back-off");
        std::thread::sleep(FIRST_WAIT);
        assert!(a.probe_due());
        assert!(!a.probe_due(), "one in flight");
        a.probed(true);
        assert!(a.is_up());

        a.set_down();
        std::thread::sleep(FIRST_WAIT);
        assert!(!a.probe_due(), "migrations pending: only the check clears it");
        a.probed(true);
        assert!(!a.is_up());
    }
}
