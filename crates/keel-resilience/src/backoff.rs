//! Exponential backoff with jitter: the one schedule every retry in Keel waits on.
//!
//! The `n`-th wait (counting from 1) has the base `initial · multiplierⁿ⁻¹`, capped at `max`;
//! [`Jitter`] then spreads it, so that a fleet of instances that lost the same dependency retries
//! at different moments instead of in step:
//!
//! | jitter | wait | used by |
//! |---|---|---|
//! | [`Jitter::Full`] (default) | uniform in `[0, base]` | connecting to dependencies, [`retry`](super::retry), worker restarts |
//! | [`Jitter::Equal`] | uniform in `[base / 2, base]` | re-probes and down re-checks, where a wait near zero would spin |
//! | [`Jitter::Proportional`]`(f)` | uniform in `[base · (1 − f), base · (1 + f)]` | a consumer's and the outbox's redeliveries (`f = 0.1`), whose bounds are configured and documented |
//! | [`Jitter::None`] | `base` | |
//!
//! A `Backoff` either counts the attempts itself ([`Backoff::next_delay`], [`Backoff::reset`]
//! after a success) or answers for an attempt number kept elsewhere, such as a delivery's
//! attempt count or an outbox row's ([`Backoff::delay`]).
//!
//! ```
//! use std::time::Duration;
//! use keel_resilience::backoff::{Backoff, Jitter};
//!
//! let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
//! for _ in 0..20 {
//!     assert!(b.next_delay() <= Duration::from_secs(10));
//! }
//! b.reset();
//! assert!(b.next_delay() <= Duration::from_millis(100));
//!
//! // A redelivery schedule: 1 s, 2 s, 4 s, … up to 5 min, each ±10 %.
//! let redeliver = Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).jitter(Jitter::Proportional(0.1));
//! let third = redeliver.delay(3);
//! assert!(third >= Duration::from_millis(3600) && third <= Duration::from_millis(4400));
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Section, Validation};

/// How a wait is spread around its base; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `[0, base]` ("full jitter", as in the AWS architecture blog's analysis).
    Full,
    /// Uniform in `[base / 2, base]` ("equal jitter"): the half-base floor bounds how often a
    /// loop runs, the jitter still spreads a fleet out.
    Equal,
    /// Uniform in `[base · (1 − f), base · (1 + f)]`: the wait stays near the documented
    /// schedule. An `f` outside `[0, 1]` (or not a number) means no jitter.
    Proportional(f64),
    /// Exactly the base.
    None,
}

/// Backoff schedule and attempt count; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max` (`max` below `initial` is raised to it), with
    /// [`Jitter::Full`].
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), multiplier: 2.0, jitter: Jitter::Full, attempt: 0 }
    }

    /// From `database.connect` / `redis.connect`.
    pub fn from_config(c: &ConnectConfig) -> Self {
        Self::new(c.initial_delay, c.max_delay)
    }

    /// Grows each base by `multiplier` instead of 2. A multiplier below 1 (or not a number) is
    /// taken as 1: the schedule never shrinks.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        self
    }

    /// Spreads each wait this way instead of [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The base of the `attempt`-th wait (counting from 1; 0 counts as 1), before jitter:
    /// `initial · multiplier^(attempt − 1)`, at most `max`.
    pub fn base(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        if exponent == 0 || self.initial.is_zero() {
            return self.initial;
        }
        // In nanoseconds as f64: exact for whole multipliers up to 2^53 ns (104 days), and it
        // saturates instead of overflowing (`as` maps infinity to u64::MAX).
        let max = u64::try_from(self.max.as_nanos()).unwrap_or(u64::MAX);
        let initial = u64::try_from(self.initial.as_nanos()).unwrap_or(u64::MAX);
        let factor = self.multiplier.powi(i32::try_from(exponent).unwrap_or(i32::MAX));
        let nanos = (initial as f64 * factor).min(max as f64);
        Duration::from_nanos((nanos as u64).min(max))
    }

    /// The `attempt`-th wait (counting from 1): [`Backoff::base`] spread by the jitter. For an
    /// attempt count kept elsewhere; does not touch this backoff's own count.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base(attempt);
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        match self.jitter {
            Jitter::Full => Duration::from_nanos(rand::random_range(0..=nanos)),
            Jitter::Equal => Duration::from_nanos(rand::random_range(nanos / 2..=nanos)),
            Jitter::Proportional(f) => {
                let f = if (0.0..=1.0).contains(&f) { f } else { 0.0 };
                let factor = rand::random_range(1.0 - f..=1.0 + f);
                Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
            }
            Jitter::None => base,
        }
    }

    /// The base of the next wait [`Backoff::next_delay`] draws (its upper bound, unless the
    /// jitter is [`Jitter::Proportional`]).
    pub fn cap(&self) -> Duration {
        self.base(self.attempt.saturating_add(1))
    }

    /// The next wait; then the count goes up by one.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.delay(self.attempt)
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first wait (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `database.connect.*`, `redis.connect.*`: retries of the first connection, in the background,
/// with exponential backoff and full jitter (each wait is random between 0 and the current cap).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ConnectConfig {
    /// Cap of the first wait. Default `100ms`.
    #[serde(with = "keel_config::duration")]
    pub initial_delay: Duration,
    /// Largest cap; the cap doubles per attempt up to this. Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub max_delay: Duration,
    /// Give up after this long without a first connection: the dependency's startup check goes
    /// down (so an orchestrator restarts the instance) while retries go on. `0s`: never. Default `0s`.
    #[serde(with = "keel_config::duration")]
    pub max_elapsed: Duration,
    /// Deadline of one connection attempt. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub attempt_timeout: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::ZERO,
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

impl Section for ConnectConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.initial_delay.is_zero() {
            v.invalid("initial_delay", "must be more than 0s");
        }
        if self.max_delay < self.initial_delay {
            v.invalid("max_delay", "must be at least initial_delay");
        }
        if self.attempt_timeout.is_zero() {
            v.invalid("attempt_timeout", "must be more than 0s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap()
    }

    #[test]
    fn caps_double_up_to_max_and_waits_stay_below() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let caps: Vec<u64> = (0..6)
            .map(|_| {
                let cap = b.cap();
                assert!(b.next_delay() <= cap);
                ms(cap)
            })
            .collect();
        assert_eq!(caps, vec![100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.cap(), Duration::from_secs(1), "no overflow after many attempts");
        assert_eq!(b.base(u32::MAX), Duration::from_secs(1));
        b.reset();
        assert_eq!((b.attempts(), b.cap()), (0, Duration::from_millis(100)));
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half_of_the_base() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1)).jitter(Jitter::Equal);
        for cap in [200, 400, 800, 1000, 1000] {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(cap / 2) && d <= Duration::from_millis(cap), "{d:?} for cap {cap} ms");
        }
    }

    #[test]
    fn proportional_jitter_stays_within_its_fraction_of_the_base() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(1800));
        let b = Backoff::new(min, max).jitter(Jitter::Proportional(0.1));
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let base = (5.0 * 2f64.powi(attempt.max(1) as i32 - 1)).clamp(5.0, 1800.0);
            assert!(d.as_secs_f64() >= base * 0.9 - 1e-9 && d.as_secs_f64() <= base * 1.1 + 1e-9, "{attempt}: {d:?}");
        }
        assert_eq!(b.attempts(), 0, "delay(n) leaves the count alone");
        // A fraction outside [0, 1] is no jitter, never a negative wait.
        let odd = Backoff::new(min, max).jitter(Jitter::Proportional(7.0));
        assert_eq!(odd.delay(2), Duration::from_secs(10));
    }

    #[test]
    fn the_multiplier_sets_the_growth_and_never_shrinks_it() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).multiplier(3.0).jitter(Jitter::None);
        let bases: Vec<u64> = (1..=6).map(|n| ms(b.delay(n))).collect();
        assert_eq!(bases, vec![10, 30, 90, 270, 810, 1000]);
        for odd in [0.5, -2.0, f64::NAN] {
            let flat = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).multiplier(odd);
            assert_eq!(flat.base(30), Duration::from_millis(10), "{odd}");
        }
        let huge = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).multiplier(f64::INFINITY);
        assert_eq!(huge.base(2), Duration::from_secs(1));
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO).multiplier(f64::INFINITY);
        assert_eq!(zero.delay(9), Duration::ZERO);
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
