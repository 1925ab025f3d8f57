//! Circuit breakers: stop calling a dependency that is failing, and find out promptly when it
//! has recovered.
//!
//! * **Closed** — calls pass; each outcome goes into a sliding window (the last `window.size`
//!   calls, or the calls of the last `window.size` seconds). Once the window holds at least
//!   `minimum_calls`, a failure rate ≥ `failure_rate` or a slow-call rate (calls slower than
//!   `slow_call_duration`) ≥ `slow_call_rate` opens the breaker.
//! * **Open** — calls are rejected at once (no dependency traffic) for `open_wait`. A breaker
//!   given a readiness probe ([`CircuitBreaker::set_readiness_probe`]; Keel's HTTP client uses
//!   the upstream's `health_path`) goes half-open as soon as the probe succeeds instead: a call
//!   rejected while open starts one probe in the background (one in flight at most, 200 ms
//!   doubling to 1 s between probes, jittered), so trial calls start within about a second of
//!   the upstream's readiness returning, and a long `open_wait` only bounds the case where no
//!   probe is configured.
//! * **Half-open** — then up to `half_open_calls` trial calls pass. If their failure (or slow)
//!   rate stays under the thresholds the breaker closes, else it opens for another `open_wait`.
//!   A trial call that is dropped before it reports (a cancelled request) frees its slot, so
//!   the breaker can never get stuck half-open — recovery takes `open_wait` plus the trial
//!   calls, not minutes.
//!
//! Metrics: `circuit_breaker_state{name}` (0 closed, 1 open, 2 half-open),
//! `circuit_breaker_calls_total{name,outcome="success|failure|rejected"}`,
//! `circuit_breaker_transitions_total{name,from,to}`; every transition is logged.
//!
//! ```
//! use keel_resilience::breaker::{BreakerConfig, CircuitBreaker};
//!
//! # async fn demo() {
//! let breaker = CircuitBreaker::new("payments", BreakerConfig::default());
//! let result = breaker.call(async { Ok::<_, std::io::Error>(42) }, |r| r.is_err()).await;
//! assert_eq!(result.unwrap().unwrap(), 42);
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};

use crate::reprobe::ProbeGate;

/// `circuit_breakers.<name>.*` (and `upstreams.<name>.breaker.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failure rate (0–1) that opens the breaker. Default `0.5`.
    pub failure_rate: f64,
    /// Slow-call rate (0–1) that opens the breaker. Default `1.0` (only if every call is slow).
    pub slow_call_rate: f64,
    /// A call at least this long counts as slow. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub slow_call_duration: Duration,
    /// The sliding window.
    pub window: WindowConfig,
    /// Fewest calls in the window before rates are judged. Default `10`.
    pub minimum_calls: u32,
    /// How long the breaker stays open before trial calls. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub open_wait: Duration,
    /// Trial calls let through when half-open. Default `3`.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(5),
            window: WindowConfig::default(),
            minimum_calls: 10,
            open_wait: Duration::from_secs(5),
            half_open_calls: 3,
        }
    }
}

impl BreakerConfig {
    /// Problems with the values, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        for (field, v) in [("failure_rate", self.failure_rate), ("slow_call_rate", self.slow_call_rate)] {
            if !(v > 0.0 && v <= 1.0) {
                p.push((field, "must be more than 0 and at most 1".to_owned()));
            }
        }
        if self.window.size == 0 {
            p.push(("window.size", "must be at least 1".into()));
        }
        if self.minimum_calls == 0 {
            p.push(("minimum_calls", "must be at least 1".into()));
        }
        if self.half_open_calls == 0 {
            p.push(("half_open_calls", "must be at least 1".into()));
        }
        if self.open_wait.is_zero() {
            p.push(("open_wait", "must be more than 0s".into()));
        }
        if self.window.kind == WindowKind::Count && self.minimum_calls > self.window.size {
            p.push(("minimum_calls", "exceeds window.size: a count window that small could never open".into()));
        }
        p
    }
}

/// Count- or time-based sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// `count` (the last `size` calls) or `time` (the calls of the last `size` seconds).
    pub kind: WindowKind,
    /// Calls, or seconds. Default `20` calls.
    pub size: u32,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self { kind: WindowKind::Count, size: 20 }
    }
}

/// See [`WindowConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// The last N calls.
    Count,
    /// The calls of the last N seconds.
    Time,
}

/// A breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass.
    Closed,
    /// Calls are rejected.
    Open,
    /// A few trial calls pass.
    HalfOpen,
}

impl State {
    /// The value of `circuit_breaker_state`.
    pub fn metric(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed (as the caller classifies it).
    Failure,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Counts {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }
}

#[derive(Debug)]
enum Window {
    /// Outcomes of the last N calls: (failed, slow).
    Count { ring: Vec<(bool, bool)>, next: usize, len: usize },
    /// Per-second buckets: (second since origin, counts).
    Time { buckets: Vec<(u64, Counts)>, origin: Instant },
}

impl Window {
    fn new(cfg: &WindowConfig, now: Instant) -> Self {
        let n = cfg.size.max(1) as usize;
        match cfg.kind {
            WindowKind::Count => Self::Count { ring: vec![(false, false); n], next: 0, len: 0 },
            WindowKind::Time => Self::Time { buckets: vec![(u64::MAX, Counts::default()); n], origin: now },
        }
    }

    fn push(&mut self, failed: bool, slow: bool, now: Instant) {
        match self {
            Self::Count { ring, next, len } => {
                ring[*next] = (failed, slow);
                *next = (*next + 1) % ring.len();
                *len = (*len + 1).min(ring.len());
            }
            Self::Time { buckets, origin } => {
                let sec = now.saturating_duration_since(*origin).as_secs();
                let n = buckets.len();
                let slot = &mut buckets[(sec % n as u64) as usize];
                if slot.0 != sec {
                    *slot = (sec, Counts::default());
                }
                slot.1.add(failed, slow);
            }
        }
    }

    fn counts(&self, now: Instant) -> Counts {
        match self {
            Self::Count { ring, len, .. } => {
                // Until the ring is full the valid entries are its first `len`; after, all.
                let mut c = Counts::default();
                for (failed, slow) in ring.iter().take(*len) {
                    c.add(*failed, *slow);
                }
                c
            }
            Self::Time { buckets, origin } => {
                let sec = now.saturating_duration_since(*origin).as_secs();
                let n = buckets.len() as u64;
                let mut c = Counts::default();
                for (s, b) in buckets {
                    if *s != u64::MAX && *s <= sec && sec - *s < n {
                        c.calls += b.calls;
                        c.failures += b.failures;
                        c.slow += b.slow;
                    }
                }
                c
            }
        }
    }
}

/// The breaker's state machine, without clocks or metrics: every method takes `now`.
#[derive(Debug)]
pub(crate) struct Machine {
    cfg: BreakerConfig,
    state: State,
    window: Window,
    opened_at: Instant,
    trials_admitted: u32,
    trials: Counts,
    /// Incremented each time half-open begins: a trial reports only into its own round.
    round: u32,
    /// A readiness probe found the dependency back while open: trials may start now.
    ready_early: bool,
}

/// A state change, for metrics and logs.
pub(crate) type Transition = (State, State);

impl Machine {
    pub(crate) fn new(cfg: BreakerConfig, now: Instant) -> Self {
        let window = Window::new(&cfg.window, now);
        Self {
            cfg,
            state: State::Closed,
            window,
            opened_at: now,
            trials_admitted: 0,
            trials: Counts::default(),
            round: 0,
            ready_early: false,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Admits a call (`Ok(is_trial)`) or rejects it (`Err(time until trials)`).
    pub(crate) fn admit(&mut self, now: Instant) -> (Result<bool, Duration>, Option<Transition>) {
        match self.state {
            State::Closed => (Ok(false), None),
            State::Open => {
                let waited = now.saturating_duration_since(self.opened_at);
                if waited < self.cfg.open_wait && !self.ready_early {
                    return (Err(self.cfg.open_wait - waited), None);
                }
                self.state = State::HalfOpen;
                self.round = self.round.wrapping_add(1);
                self.trials_admitted = 1;
                self.trials = Counts::default();
                (Ok(true), Some((State::Open, State::HalfOpen)))
            }
            State::HalfOpen => {
                if self.trials_admitted < self.cfg.half_open_calls {
                    self.trials_admitted += 1;
                    (Ok(true), None)
                } else {
                    (Err(Duration::ZERO), None)
                }
            }
        }
    }

    /// Records the end of a call admitted in the current round.
    #[cfg(test)]
    pub(crate) fn record(&mut self, trial: bool, outcome: Outcome, took: Duration, now: Instant) -> Option<Transition> {
        self.record_in(self.round, trial, outcome, took, now)
    }

    /// Records the end of a call admitted in half-open round `round` (or while closed).
    pub(crate) fn record_in(
        &mut self,
        round: u32,
        trial: bool,
        outcome: Outcome,
        took: Duration,
        now: Instant,
    ) -> Option<Transition> {
        if trial && round != self.round {
            // A late answer from an earlier trial round.
            return None;
        }
        let failed = outcome == Outcome::Failure;
        let slow = took >= self.cfg.slow_call_duration;
        match (self.state, trial) {
            (State::HalfOpen, true) => {
                self.trials.add(failed, slow);
                if self.trials.calls < self.cfg.half_open_calls {
                    return None;
                }
                if self.over_threshold(self.trials) {
                    self.open(now);
                    Some((State::HalfOpen, State::Open))
                } else {
                    self.state = State::Closed;
                    self.window = Window::new(&self.cfg.window, now);
                    Some((State::HalfOpen, State::Closed))
                }
            }
            (State::Closed, false) => {
                self.window.push(failed, slow, now);
                let c = self.window.counts(now);
                if c.calls >= self.cfg.minimum_calls && self.over_threshold(c) {
                    self.open(now);
                    Some((State::Closed, State::Open))
                } else {
                    None
                }
            }
            // A late answer from a call admitted in an earlier state changes nothing.
            _ => None,
        }
    }

    /// Forgets every admitted trial (tests: in-flight calls that will never report).
    #[cfg(test)]
    fn abandon_all(&mut self) {
        if self.state == State::HalfOpen {
            self.trials_admitted = self.trials.calls;
        }
    }

    /// A trial call that never reported (dropped): give its slot back.
    #[cfg(test)]
    pub(crate) fn abandon(&mut self, trial: bool) {
        self.abandon_in(self.round, trial);
    }

    /// [`Machine::abandon`] for a call admitted in round `round`.
    pub(crate) fn abandon_in(&mut self, round: u32, trial: bool) {
        if trial && round == self.round && self.state == State::HalfOpen && self.trials_admitted > self.trials.calls {
            self.trials_admitted -= 1;
        }
    }

    fn over_threshold(&self, c: Counts) -> bool {
        let calls = f64::from(c.calls.max(1));
        f64::from(c.failures) / calls >= self.cfg.failure_rate || f64::from(c.slow) / calls >= self.cfg.slow_call_rate
    }

    /// A readiness probe found the dependency back: if still open, the next call is a trial.
    pub(crate) fn upstream_ready(&mut self) {
        if self.state == State::Open {
            self.ready_early = true;
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.ready_early = false;
        self.opened_at = now;
        self.trials_admitted = 0;
        self.trials = Counts::default();
    }
}

#[derive(Clone, Debug)]
struct BreakerMetrics {
    state: IntGaugeVec,
    calls: IntCounterVec,
    transitions: IntCounterVec,
}

/// A call was refused because the breaker is open (or half-open with no trial slot free).
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit breaker {name} is open; retry in {retry_in:?}")]
pub struct Rejected {
    /// The breaker.
    pub name: String,
    /// Time until it lets trial calls through.
    pub retry_in: Duration,
}

/// A readiness probe: resolves to `true` when the dependency says it is ready. It must bound
/// its own time.
pub type ReadinessProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Default)]
struct Probing {
    probe: OnceLock<ReadinessProbe>,
    gate: ProbeGate,
}

impl std::fmt::Debug for Probing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probing").field("configured", &self.probe.get().is_some()).finish_non_exhaustive()
    }
}

/// A circuit breaker. Share it with `Arc` (a [`Registry`] does).
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    machine: Arc<Mutex<Machine>>,
    metrics: Option<BreakerMetrics>,
    probing: Arc<Probing>,
}

/// Admission to call through a breaker; report how the call went with [`Permit::record`].
/// Dropping it unreported counts as "abandoned" (the call was cancelled), not as a failure.
#[must_use = "report the outcome with Permit::record"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
    round: u32,
    started: Instant,
    done: bool,
}

impl Permit<'_> {
    /// Reports the outcome.
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.finish(self.round, self.trial, outcome, self.started);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.lock().abandon_in(self.round, self.trial);
        }
    }
}

impl CircuitBreaker {
    /// A breaker without metrics.
    pub fn new(name: impl Into<String>, cfg: BreakerConfig) -> Self {
        Self {
            name: name.into(),
            machine: Arc::new(Mutex::new(Machine::new(cfg, Instant::now()))),
            metrics: None,
            probing: Arc::default(),
        }
    }

    /// Sets the readiness probe that ends the open state early (the first one set stays; a
    /// breaker shared by several clients of one upstream probes one readiness path). See the
    /// module docs.
    pub fn set_readiness_probe(&self, probe: ReadinessProbe) {
        let _ = self.probing.probe.set(probe);
    }

    /// While open: starts one readiness probe in the background if one is due.
    fn probe_if_due(&self, now: Instant) {
        let Some(probe) = self.probing.probe.get().cloned() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        if !self.probing.gate.try_start(now) {
            return;
        }
        let (probing, machine, name) = (self.probing.clone(), self.machine.clone(), self.name.clone());
        rt.spawn(async move {
            let ok = probe().await;
            probing.gate.finish(ok, Instant::now());
            if ok {
                machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner).upstream_ready();
                tracing::info!(breaker = %name, "readiness probe answered: trial calls may start");
            }
        });
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        // One clock read for the decision and the start: clock reads are most of the cost.
        let now = Instant::now();
        let (result, round, open) = {
            let mut m = self.lock();
            let (result, transition) = m.admit(now);
            // Under the lock, so concurrent transitions set the state gauge in order.
            if let Some(t) = transition {
                self.transitioned(t);
            }
            (result, m.round, m.state() == State::Open)
        };
        match result {
            Ok(trial) => Ok(Permit { breaker: self, trial, round, started: now, done: false }),
            Err(retry_in) => {
                if let Some(m) = &self.metrics {
                    m.calls.with_label_values(&[&self.name, "rejected"]).inc();
                }
                if open {
                    self.probe_if_due(now);
                }
                Err(Rejected { name: self.name.clone(), retry_in })
            }
        }
    }

    fn finish(&self, round: u32, trial: bool, outcome: Outcome, started: Instant) {
        let now = Instant::now();
        {
            let mut m = self.lock();
            if let Some(t) = m.record_in(round, trial, outcome, now.saturating_duration_since(started), now) {
                self.transitioned(t);
            }
        }
        if let Some(m) = &self.metrics {
            let label = if outcome == Outcome::Success { "success" } else { "failure" };
            m.calls.with_label_values(&[&self.name, label]).inc();
        }
    }

    fn transitioned(&self, (from, to): Transition) {
        if to == State::Open {
            // The first readiness probe waits a back-off: the upstream has only just failed.
            self.probing.gate.arm(Instant::now());
            tracing::warn!(breaker = %self.name, from = from.as_str(), to = to.as_str(), "circuit breaker opened");
        } else {
            tracing::info!(breaker = %self.name, from = from.as_str(), to = to.as_str(), "circuit breaker state changed");
        }
        if let Some(m) = &self.metrics {
            m.state.with_label_values(&[&self.name]).set(to.metric());
            m.transitions.with_label_values(&[&self.name, from.as_str(), to.as_str()]).inc();
        }
    }

    /// Runs `fut` through the breaker; `is_failure` classifies its output.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call frees its permit without counting as a failure.
    pub async fn call<T, F>(&self, fut: F, is_failure: impl FnOnce(&T) -> bool) -> Result<T, Rejected>
    where
        F: Future<Output = T>,
    {
        let permit = self.try_acquire()?;
        let out = fut.await;
        permit.record(if is_failure(&out) { Outcome::Failure } else { Outcome::Success });
        Ok(out)
    }
}

/// Breakers by name, with shared metrics.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    breakers: Arc<Mutex<BTreeMap<String, Arc<CircuitBreaker>>>>,
    metrics: Option<BreakerMetrics>,
}

impl Registry {
    /// A registry reporting into `metrics` (a service's is `keel::telemetry::Metrics::registry`).
    pub fn new(metrics: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let state = IntGaugeVec::new(
            Opts::new("circuit_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open."),
            &["name"],
        )?;
        let calls = IntCounterVec::new(
            Opts::new("circuit_breaker_calls_total", "Calls through circuit breakers by outcome."),
            &["name", "outcome"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new("circuit_breaker_transitions_total", "Circuit breaker state changes."),
            &["name", "from", "to"],
        )?;
        metrics.register(Box::new(state.clone()))?;
        metrics.register(Box::new(calls.clone()))?;
        metrics.register(Box::new(transitions.clone()))?;
        Ok(Self { breakers: Arc::default(), metrics: Some(BreakerMetrics { state, calls, transitions }) })
    }

    /// The breaker called `name`, created with `cfg` on first use.
    pub fn get_or_create(&self, name: &str, cfg: &BreakerConfig) -> Arc<CircuitBreaker> {
        let mut map = self.breakers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(name.to_owned())
            .or_insert_with(|| {
                if let Some(m) = &self.metrics {
                    m.state.with_label_values(&[name]).set(0);
                }
                Arc::new(CircuitBreaker {
                    name: name.to_owned(),
                    machine: Arc::new(Mutex::new(Machine::new(cfg.clone(), Instant::now()))),
                    metrics: self.metrics.clone(),
                    probing: Arc::default(),
                })
            })
            .clone()
    }

    /// Every breaker and its state.
    pub fn states(&self) -> Vec<(String, State)> {
        let map = self.breakers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(k, b)| (k.clone(), b.state())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            minimum_calls: 4,
            window: WindowConfig { kind: WindowKind::Count, size: 4 },
            open_wait: Duration::from_secs(5),
            half_open_calls: 2,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_rejects_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0);
        let ms = Duration::from_millis(1);
        for ok in [true, false, true, false] {
            assert_eq!(m.admit(t0).0, Ok(false));
            m.record(false, if ok { Outcome::Success } else { Outcome::Failure }, ms, t0);
        }
        assert_eq!(m.state(), State::Open, "2 of 4 failed = 50 %");
        assert!(m.admit(t0 + Duration::from_secs(4)).0.is_err());
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.admit(t1), (Ok(true), Some((State::Open, State::HalfOpen))));
        assert_eq!(m.admit(t1).0, Ok(true));
        assert!(m.admit(t1).0.is_err(), "only 2 trial calls");
        assert_eq!(m.record(true, Outcome::Success, ms, t1), None);
        assert_eq!(m.record(true, Outcome::Success, ms, t1), Some((State::HalfOpen, State::Closed)));
        assert_eq!(m.state(), State::Closed);
    }

    #[test]
    fn a_failed_trial_reopens_and_abandoned_trials_free_their_slot() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0);
        for _ in 0..4 {
            let _ = m.admit(t0);
            m.record(false, Outcome::Failure, Duration::ZERO, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.admit(t1).0, Ok(true));
        assert_eq!(m.admit(t1).0, Ok(true));
        m.abandon(true);
        assert_eq!(m.admit(t1).0, Ok(true), "the abandoned slot is free again");
        m.record(true, Outcome::Failure, Duration::ZERO, t1);
        m.record(true, Outcome::Success, Duration::ZERO, t1);
        assert_eq!(m.state(), State::Open, "half of the trials failed");
    }

    #[test]
    fn a_late_trial_from_an_earlier_round_is_ignored() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.half_open_calls = 1;
        let mut m = Machine::new(c, t0);
        for _ in 0..4 {
            m.record(false, Outcome::Failure, Duration::ZERO, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.admit(t1).0, Ok(true));
        let round1 = m.round;
        m.record(true, Outcome::Failure, Duration::ZERO, t1);
        assert_eq!(m.state(), State::Open, "the trial failed");
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(m.admit(t2).0, Ok(true));
        // A late answer from round 1 must not decide round 2.
        assert_eq!(m.record_in(round1, true, Outcome::Success, Duration::ZERO, t2), None);
        m.abandon_in(round1, true);
        assert_eq!(m.state(), State::HalfOpen);
        assert_eq!(m.record(true, Outcome::Success, Duration::ZERO, t2), Some((State::HalfOpen, State::Closed)));
    }

    #[test]
    fn a_ready_upstream_ends_the_open_state_early() {
        let t0 = Instant::now();
        let mut m = Machine::new(cfg(), t0);
        for _ in 0..4 {
            m.record(false, Outcome::Failure, Duration::ZERO, t0);
        }
        assert!(m.admit(t0).0.is_err());
        m.upstream_ready();
        assert_eq!(m.admit(t0), (Ok(true), Some((State::Open, State::HalfOpen))), "trials start at once");
        m.record(true, Outcome::Failure, Duration::ZERO, t0);
        m.record(true, Outcome::Failure, Duration::ZERO, t0);
        assert_eq!(m.state(), State::Open);
        assert!(m.admit(t0).0.is_err(), "reopening forgets the early readiness");
    }

    #[tokio::test]
    async fn a_readiness_probe_half_opens_the_breaker_long_before_open_wait() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let mut c = cfg();
        c.open_wait = Duration::from_secs(60);
        let breaker = CircuitBreaker::new("probed", c);
        let (ready, probes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (r, n) = (ready.clone(), probes.clone());
        breaker.set_readiness_probe(Arc::new(move || {
            n.fetch_add(1, Ordering::SeqCst);
            let ready = r.load(Ordering::SeqCst);
            Box::pin(async move { ready })
        }));
        for _ in 0..4 {
            breaker.try_acquire().unwrap().record(Outcome::Failure);
        }
        assert_eq!(breaker.state(), State::Open);
        // Rejected calls probe, but not in a tight loop: the upstream is still not ready.
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            assert!(breaker.try_acquire().is_err());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let made = probes.load(Ordering::SeqCst);
        assert!((1..=4).contains(&made), "{made} probes in 700 ms: backed off, one at a time");
        ready.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        let permit = loop {
            if let Ok(p) = breaker.try_acquire() {
                break p;
            }
            assert!(Instant::now() < deadline, "no trial call within 5 s of readiness (open_wait is 60 s)");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(breaker.state(), State::HalfOpen);
        permit.record(Outcome::Success);
    }

    #[test]
    fn slow_calls_open_too() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.slow_call_rate = 0.75;
        c.slow_call_duration = Duration::from_millis(100);
        let mut m = Machine::new(c, t0);
        for took in [200, 200, 5, 200] {
            let _ = m.admit(t0);
            m.record(false, Outcome::Success, Duration::from_millis(took), t0);
        }
        assert_eq!(m.state(), State::Open);
    }

    #[tokio::test]
    async fn the_layer_opens_on_5xx_and_rejects_without_calling() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::{Layer, ServiceExt, service_fn};

        let calls = Arc::new(AtomicUsize::new(0));
        let breaker = Arc::new(CircuitBreaker::new("t", cfg()));
        let c = calls.clone();
        let svc = BreakerLayer::new(breaker.clone()).layer(service_fn(move |_: ()| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                let mut r = http::Response::new(());
                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                Ok::<_, std::convert::Infallible>(r)
            }
        }));
        for _ in 0..4 {
            assert_eq!(svc.clone().oneshot(()).await.unwrap().status(), 502);
        }
        assert_eq!(breaker.state(), State::Open);
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<Rejected>().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 4, "rejected without calling");
    }

    #[test]
    fn time_window_forgets_old_calls() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.window = WindowConfig { kind: WindowKind::Time, size: 2 };
        let mut m = Machine::new(c, t0);
        for _ in 0..3 {
            m.record(false, Outcome::Failure, Duration::ZERO, t0);
        }
        // Three seconds later the failures have left the window.
        let later = t0 + Duration::from_secs(3);
        for _ in 0..3 {
            m.record(false, Outcome::Success, Duration::ZERO, later);
        }
        assert_eq!(m.state(), State::Closed);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// Admit a call and report it (or abandon it: a cancelled request).
            Call {
                fail: bool,
                slow: bool,
                abandon: bool,
            },
            /// Admit a call and keep it in flight.
            Start,
            /// Report the oldest in-flight call.
            Finish {
                fail: bool,
            },
            Wait(u64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                6 => (any::<bool>(), any::<bool>(), proptest::bool::weighted(0.1))
                    .prop_map(|(fail, slow, abandon)| Step::Call { fail, slow, abandon }),
                1 => Just(Step::Start),
                1 => any::<bool>().prop_map(|fail| Step::Finish { fail }),
                2 => (0u64..8_000).prop_map(Step::Wait),
            ]
        }

        fn config(min: u32, size: u32, trials: u32) -> BreakerConfig {
            BreakerConfig {
                minimum_calls: min,
                window: WindowConfig { kind: WindowKind::Count, size },
                half_open_calls: trials,
                open_wait: Duration::from_secs(5),
                slow_call_duration: Duration::from_millis(100),
                slow_call_rate: 0.9,
                failure_rate: 0.5,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn state_machine_invariants(
                steps in proptest::collection::vec(step(), 1..400),
                min in 1u32..8, size in 1u32..12, trials in 1u32..4,
            ) {
                let cfg = config(min, size, trials);
                let mut now = Instant::now();
                let mut m = Machine::new(cfg.clone(), now);
                let mut in_flight: Vec<bool> = Vec::new(); // trial?
                for s in steps {
                    match s {
                        Step::Wait(ms) => now += Duration::from_millis(ms),
                        Step::Start => {
                            if let Ok(trial) = m.admit(now).0 {
                                in_flight.push(trial);
                            }
                        }
                        Step::Finish { fail } => {
                            if !in_flight.is_empty() {
                                let trial = in_flight.remove(0);
                                let o = if fail { Outcome::Failure } else { Outcome::Success };
                                check(m.record(trial, o, Duration::ZERO, now), &m, &cfg, now)?;
                            }
                        }
                        Step::Call { fail, slow, abandon } => {
                            let before = m.state();
                            let open_for = now.saturating_duration_since(m.opened_at);
                            let (admitted, t) = m.admit(now);
                            if before == State::Open {
                                // Rejects exactly until open_wait has passed, then lets a trial in.
                                prop_assert_eq!(admitted.is_ok(), open_for >= cfg.open_wait);
                            }
                            if let Some(t) = t {
                                prop_assert_eq!(t, (State::Open, State::HalfOpen));
                            }
                            if let Ok(trial) = admitted {
                                if abandon {
                                    m.abandon(trial);
                                } else {
                                    let took = if slow { Duration::from_millis(200) } else { Duration::ZERO };
                                    let o = if fail { Outcome::Failure } else { Outcome::Success };
                                    check(m.record(trial, o, took, now), &m, &cfg, now)?;
                                }
                            }
                        }
                    }
                    if m.state() == State::HalfOpen {
                        prop_assert!(m.trials_admitted <= cfg.half_open_calls);
                    }
                }
                // Recovery: once the dependency is healthy, healthy traffic closes the breaker
                // within a few rounds of open_wait. (Earlier failures still in the window can
                // open it once more — that is the window judging real calls — and a trial round
                // may hold an earlier failed trial.)
                m.abandon_all();
                for _ in 0..3 {
                    now += cfg.open_wait;
                    for _ in 0..(cfg.window.size + cfg.half_open_calls) {
                        if let Ok(trial) = m.admit(now).0 {
                            m.record(trial, Outcome::Success, Duration::ZERO, now);
                        }
                    }
                }
                prop_assert_eq!(m.state(), State::Closed);
            }
        }

        fn check(t: Option<Transition>, m: &Machine, cfg: &BreakerConfig, now: Instant) -> Result<(), TestCaseError> {
            if let Some((from, to)) = t {
                prop_assert!(!(from == State::Closed && to == State::HalfOpen), "closed never goes half-open");
                prop_assert!(!(from == State::Open && to == State::Closed), "open never closes without trials");
                if (from, to) == (State::Closed, State::Open) {
                    prop_assert!(m.window.counts(now).calls >= cfg.minimum_calls, "opens only with enough calls");
                }
            }
            Ok(())
        }
    }
}

/// A permit that owns its breaker, for futures that outlive a borrow (the tower layer).
#[must_use = "report the outcome with OwnedPermit::record"]
#[derive(Debug)]
pub struct OwnedPermit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
    round: u32,
    started: Instant,
    done: bool,
}

impl OwnedPermit {
    /// Reports the outcome.
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.finish(self.round, self.trial, outcome, self.started);
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.lock().abandon_in(self.round, self.trial);
        }
    }
}

/// [`CircuitBreaker::try_acquire`] for an `Arc`ed breaker.
pub fn try_acquire_owned(breaker: &Arc<CircuitBreaker>) -> Result<OwnedPermit, Rejected> {
    let mut permit = breaker.try_acquire()?;
    let (trial, round, started) = (permit.trial, permit.round, permit.started);
    // Ownership moves to the OwnedPermit: the borrowed one must not abandon its slot on drop.
    permit.done = true;
    Ok(OwnedPermit { breaker: breaker.clone(), trial, round, started, done: false })
}

/// Decides whether a call's result counts as a failure for the breaker.
pub trait Classify<T, E>: Clone + Send + Sync + 'static {
    /// `true` when the call failed.
    fn is_failure(&self, result: &Result<T, E>) -> bool;
}

/// Errors, and HTTP responses with a 5xx status, are failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<B, E> Classify<http::Response<B>, E> for ServerErrors {
    fn is_failure(&self, result: &Result<http::Response<B>, E>) -> bool {
        result.as_ref().map_or(true, |r| r.status().is_server_error())
    }
}

/// Wraps a tower service in a [`CircuitBreaker`]: rejected calls fail at once with
/// [`Rejected`] (boxed), others are classified by `C` (default: errors and 5xx).
///
/// ```
/// use std::sync::Arc;
/// use keel_resilience::breaker::{BreakerConfig, BreakerLayer, CircuitBreaker};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # async fn demo() {
/// let breaker = Arc::new(CircuitBreaker::new("inventory", BreakerConfig::default()));
/// let svc = BreakerLayer::new(breaker).layer(service_fn(|_: ()| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// assert!(svc.oneshot(()).await.is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BreakerLayer<C = ServerErrors> {
    breaker: Arc<CircuitBreaker>,
    classify: C,
}

impl BreakerLayer<ServerErrors> {
    /// Errors and 5xx responses count as failures.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker, classify: ServerErrors }
    }
}

impl<C> BreakerLayer<C> {
    /// A custom classification.
    pub fn with_classifier<D>(self, classify: D) -> BreakerLayer<D> {
        BreakerLayer { breaker: self.breaker, classify }
    }
}

impl<S, C: Clone> tower::Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;
    fn layer(&self, inner: S) -> Breaker<S, C> {
        Breaker { inner, breaker: self.breaker.clone(), classify: self.classify.clone() }
    }
}

/// The service made by [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct Breaker<S, C> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    classify: C,
}

impl<S, C, Req> tower::Service<Req> for Breaker<S, C>
where
    S: tower::Service<Req>,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Response: Send + 'static,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match try_acquire_owned(&self.breaker) {
            Ok(p) => p,
            Err(rejected) => return Box::pin(std::future::ready(Err(rejected.into()))),
        };
        let fut = self.inner.call(req);
        let classify = self.classify.clone();
        Box::pin(async move {
            let result = fut.await;
            permit.record(if classify.is_failure(&result) { Outcome::Failure } else { Outcome::Success });
            result.map_err(Into::into)
        })
    }
}
