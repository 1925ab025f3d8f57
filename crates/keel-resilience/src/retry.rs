//! Retries with exponential backoff, full jitter, and a retry budget.
//!
//! Only outcomes the caller classifies as retryable are retried. A [`RetryBudget`] caps retries
//! at a ratio of recent requests (plus a small floor per second), so when a dependency is down a
//! fleet of callers adds at most that ratio of extra load instead of multiplying it by
//! `max_attempts`.
//!
//! ```
//! use keel_resilience::retry::{Retry, RetryConfig};
//!
//! # async fn demo() {
//! let retry = Retry::new(RetryConfig::default());
//! let mut calls = 0;
//! let out: Result<u32, &str> = retry
//!     .run(|_attempt| { calls += 1; let n = calls; async move { if n < 2 { Err("flaky") } else { Ok(n) } } },
//!          |r| r.is_err())
//!     .await;
//! assert_eq!(out, Ok(2));
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Backoff;

/// `upstreams.<name>.retry.*` and similar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included; `1` turns retries off. Default `3`.
    pub max_attempts: u32,
    /// Cap of the first backoff wait. Default `50ms`.
    #[serde(with = "keel_config::duration")]
    pub initial_delay: Duration,
    /// Largest backoff cap. Default `1s`.
    #[serde(with = "keel_config::duration")]
    pub max_delay: Duration,
    /// The retry budget.
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            budget: BudgetConfig::default(),
        }
    }
}

/// `…retry.budget.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries allowed per request made, on average (0.2 = one retry per five requests). Default `0.2`.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic (so a quiet caller can still retry). Default `5`.
    pub min_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self { ratio: 0.2, min_per_second: 5 }
    }
}

/// A token bucket of retries: each request deposits `ratio` tokens, time deposits
/// `min_per_second`, each retry takes one. The bucket holds at most ten seconds' worth.
#[derive(Debug)]
pub struct RetryBudget {
    cfg: BudgetConfig,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// A full budget.
    pub fn new(cfg: BudgetConfig) -> Self {
        let cap = Self::cap_of(&cfg);
        Self { cfg, state: Mutex::new((cap, Instant::now())) }
    }

    fn cap_of(cfg: &BudgetConfig) -> f64 {
        (f64::from(cfg.min_per_second) * 10.0).max(1.0) + cfg.ratio * 100.0
    }

    fn refill(&self, s: &mut (f64, Instant), now: Instant) {
        let secs = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + secs * f64::from(self.cfg.min_per_second)).min(Self::cap_of(&self.cfg));
        s.1 = now;
    }

    /// A request was made.
    pub fn deposit(&self) {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.refill(&mut s, Instant::now());
        s.0 = (s.0 + self.cfg.ratio).min(Self::cap_of(&self.cfg));
    }

    /// Takes one retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.refill(&mut s, Instant::now());
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens left (for tests and diagnostics).
    pub fn balance(&self) -> f64 {
        self.state.lock().map(|s| s.0).unwrap_or_default()
    }
}

/// Why a retry was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The outcome was final (success, or not retryable).
    Final,
    /// `max_attempts` reached.
    Attempts,
    /// The retry budget was spent.
    Budget,
}

/// A retry policy with its budget. Cheap to clone (the budget is shared).
#[derive(Debug, Clone)]
pub struct Retry {
    cfg: RetryConfig,
    budget: Arc<RetryBudget>,
}

impl Retry {
    /// A policy with a fresh budget.
    pub fn new(cfg: RetryConfig) -> Self {
        let budget = Arc::new(RetryBudget::new(cfg.budget.clone()));
        Self { cfg, budget }
    }

    /// The budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Runs `op(attempt)` (attempt counts from 1) until its output is not retryable, attempts
    /// run out, or the budget is spent; returns the last output.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops between or during attempts.
    pub async fn run<T, F, Fut>(&self, op: F, retryable: impl Fn(&T) -> bool) -> T
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_observed(op, retryable, |_, _| {}).await
    }

    /// [`Retry::run`], calling `observe(attempt, why)` when it stops retrying.
    pub async fn run_observed<T, F, Fut>(
        &self,
        mut op: F,
        retryable: impl Fn(&T) -> bool,
        mut observe: impl FnMut(u32, GaveUp),
    ) -> T
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        self.budget.deposit();
        let mut backoff = Backoff::new(self.cfg.initial_delay, self.cfg.max_delay);
        let mut attempt = 1;
        loop {
            let out = op(attempt).await;
            let why = if !retryable(&out) {
                Some(GaveUp::Final)
            } else if attempt >= self.cfg.max_attempts {
                Some(GaveUp::Attempts)
            } else if !self.budget.withdraw() {
                Some(GaveUp::Budget)
            } else {
                None
            };
            if let Some(why) = why {
                observe(attempt, why);
                return out;
            }
            tokio::time::sleep(backoff.next_delay()).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(max_attempts: u32, ratio: f64, min_per_second: u32) -> Retry {
        Retry::new(RetryConfig {
            max_attempts,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            budget: BudgetConfig { ratio, min_per_second },
        })
    }

    #[tokio::test]
    async fn retries_only_retryable_outcomes_up_to_max_attempts() {
        let r = quick(3, 1.0, 100);
        let mut n = 0;
        let out: Result<(), &str> = r
            .run(
                |_| {
                    n += 1;
                    async { Err("down") }
                },
                |o| o.is_err(),
            )
            .await;
        assert_eq!((out, n), (Err("down"), 3));
        let mut n = 0;
        let out: Result<(), &str> = r
            .run(
                |_| {
                    n += 1;
                    async { Err("bad request") }
                },
                |_| false,
            )
            .await;
        assert_eq!((out, n), (Err("bad request"), 1));
    }

    #[tokio::test]
    async fn the_budget_caps_retries_at_a_ratio_of_requests() {
        // No floor, 10 % ratio, and the bucket starts full (cap = 1 + 10 = 11 tokens): after the
        // initial tokens are spent, 100 failing requests may add only ~10 retries.
        let r = quick(5, 0.1, 0);
        let start = r.budget().balance();
        let mut calls = 0u32;
        for _ in 0..100 {
            let _: Result<(), ()> = r
                .run(
                    |_| {
                        calls += 1;
                        async { Err(()) }
                    },
                    |o| o.is_err(),
                )
                .await;
        }
        let retries = calls - 100;
        assert!(f64::from(retries) <= start + 100.0 * 0.1 + 1.0, "retries {retries}, start {start}");
        assert!(retries < 400, "without a budget it would be 400");
    }
}
