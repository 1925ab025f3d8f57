//! Exponential backoff with full jitter.
//!
//! Each wait is drawn uniformly from `[0, cap]`, where the cap starts at `initial` and doubles per
//! attempt up to `max` ("full jitter", as in the AWS architecture blog's analysis): a fleet of
//! instances that lost the same dependency spreads its retries out instead of retrying in step.
//!
//! ```
//! use std::time::Duration;
//! use keel::resilience::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
//! for _ in 0..20 {
//!     assert!(b.next_delay() <= Duration::from_secs(10));
//! }
//! b.reset();
//! assert!(b.next_delay() <= Duration::from_millis(100));
//! ```

use std::time::Duration;

/// Backoff state; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts with a cap of `initial`, doubling up to `max` (`max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), attempt: 0 }
    }

    /// From `database.connect` / `redis.connect`.
    pub fn from_config(c: &crate::config::ConnectConfig) -> Self {
        Self::new(c.initial_delay, c.max_delay)
    }

    /// The cap of the next wait, without jitter.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// The next wait: uniform in `[0, cap]`; then the cap doubles.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }

    /// The next wait, uniform in `[cap / 2, cap]` ("equal jitter"); then the cap doubles. For
    /// re-probes, where a wait near zero would probe in a tight loop: the half-cap floor bounds
    /// the rate, the jitter still spreads a fleet out.
    pub fn next_delay_equal_jitter(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(nanos / 2..=nanos))
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first cap (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_double_up_to_max_and_waits_stay_below() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let caps: Vec<u64> = (0..6)
            .map(|_| {
                let cap = b.cap();
                assert!(b.next_delay() <= cap);
                cap.as_millis() as u64
            })
            .collect();
        assert_eq!(caps, vec![100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.cap(), Duration::from_secs(1), "no overflow after many attempts");
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half_of_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        for cap in [200, 400, 800, 1000, 1000] {
            let d = b.next_delay_equal_jitter();
            assert!(d >= Duration::from_millis(cap / 2) && d <= Duration::from_millis(cap), "{d:?} for cap {cap} ms");
        }
    }

    #[test]
    fn jitter_spreads_waits() {
        let mut waits: Vec<Duration> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay()).collect();
        waits.sort();
        waits.dedup();
        assert!(waits.len() > 40, "waits are random, not in step");
    }
}
