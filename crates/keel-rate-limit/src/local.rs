//! The in-process backend: GCRA through `governor`, one state per key.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, RateLimitPolicy};

type Keyed = RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock, StateInformationMiddleware>;

/// Drop the state of idle keys every this many decisions, so memory follows active clients.
const CLEAN_EVERY: u64 = 4096;
/// Above this many keys, idle ones are dropped at once rather than at the next round.
const MAX_KEYS: usize = 100_000;

/// A per-instance limiter: `limit` per `window`, replenished evenly (one request every
/// `window / limit`), with bursts up to `burst`.
pub struct LocalLimiter {
    limiter: Keyed,
    clock: DefaultClock,
    limit: u32,
    period: Duration,
    burst: u32,
    decisions: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter").field("limit", &self.limit).field("period", &self.period).finish_non_exhaustive()
    }
}

/// The GCRA quota of a policy: one cell every `window / limit`, bursts up to `burst`.
pub(crate) fn quota(policy: &RateLimitPolicy) -> (Quota, Duration, u32) {
    let limit = policy.limit.max(1);
    let period = (policy.window / limit).max(Duration::from_nanos(1));
    let burst = policy.burst.unwrap_or(limit).max(1);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    (quota, period, burst)
}

impl LocalLimiter {
    /// A limiter for `policy`.
    pub fn new(policy: &RateLimitPolicy) -> Self {
        let (quota, period, burst) = quota(policy);
        let clock = DefaultClock::default();
        let limiter =
            RateLimiter::dashmap_with_clock(quota, clock.clone()).with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            clock,
            limit: policy.limit,
            period,
            burst,
            decisions: AtomicU64::new(0),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Decides for `key`.
    pub fn check(&self, key: &str) -> Decision {
        // Keys are client-chosen text: keep a fixed-size hash (randomly seeded, so collisions
        // cannot be aimed) and drop idle keys regularly, at once when there are too many.
        let n = self.decisions.fetch_add(1, Ordering::Relaxed);
        if n % CLEAN_EVERY == CLEAN_EVERY - 1 || (n.is_multiple_of(256) && self.limiter.len() > MAX_KEYS) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let hashed = std::hash::BuildHasher::hash_one(&self.hasher, key);
        match self.limiter.check_key(&hashed) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit: self.limit.max(self.burst),
                    remaining,
                    reset: self.period.saturating_mul(self.burst.saturating_sub(remaining)),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit: self.limit.max(self.burst),
                    remaining: 0,
                    reset: self.period.saturating_mul(self.burst),
                    retry_after: wait,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn limit_then_refuse_then_replenish() {
        let policy = RateLimitPolicy { limit: 3, window: Duration::from_secs(60), ..RateLimitPolicy::default() };
        let l = LocalLimiter::new(&policy);
        let d: Vec<Decision> = (0..4).map(|_| l.check("a")).collect();
        assert_eq!(d.iter().map(|d| d.allowed).collect::<Vec<_>>(), vec![true, true, true, false]);
        assert_eq!(d.iter().map(|d| d.remaining).collect::<Vec<_>>(), vec![2, 1, 0, 0]);
        assert!(d[3].retry_after > Duration::from_secs(19) && d[3].retry_after <= Duration::from_secs(20));
        assert!(l.check("b").allowed, "keys are independent");
    }

    proptest! {
        /// GCRA arithmetic: over any stretch of time T, no more than burst + T/period requests
        /// pass, however they arrive.
        #[test]
        fn never_more_than_burst_plus_rate(limit in 1u32..50, window_ms in 100u64..10_000, burst in proptest::option::of(1u32..60),
                                          gaps in proptest::collection::vec(0u64..2_000, 1..300)) {
            let policy = RateLimitPolicy { limit, window: Duration::from_millis(window_ms), burst, ..RateLimitPolicy::default() };
            let (quota, period, burst) = quota(&policy);
            let clock = FakeRelativeClock::default();
            let limiter = governor::RateLimiter::direct_with_clock(quota, clock.clone());
            let mut elapsed = Duration::ZERO;
            let mut allowed = 0u64;
            for gap in gaps {
                clock.advance(Duration::from_millis(gap));
                elapsed += Duration::from_millis(gap);
                if limiter.check().is_ok() {
                    allowed += 1;
                }
            }
            let bound = u64::from(burst) + (elapsed.as_nanos() / period.as_nanos().max(1)) as u64;
            prop_assert!(allowed <= bound, "allowed {allowed} > bound {bound}");
        }
    }
}
