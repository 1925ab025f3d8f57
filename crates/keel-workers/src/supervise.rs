//! The task that drives one worker: schedules runs, catches panics, restarts with backoff.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::state::{RunOutcome, Shared};
use super::worker::{Context, RunFn, Schedule};
use keel_resilience::Backoff;

pub(crate) struct Plan {
    pub(crate) shared: Arc<Shared>,
    pub(crate) run: RunFn,
    pub(crate) restart_initial: Duration,
    pub(crate) restart_max: Duration,
    pub(crate) requires: Vec<String>,
    pub(crate) health: Option<keel_health::Health>,
}

/// Why a run loop ended.
enum Ended {
    Cancelled,
    Restart,
}

struct Finished {
    outcome: RunOutcome,
    took: Duration,
    error: Option<String>,
}

pub(crate) async fn supervise(plan: Plan, token: CancellationToken) {
    let shared = plan.shared.clone();
    let jitter = match shared.schedule {
        Schedule::Periodic { jitter, .. } if !jitter.is_zero() => {
            let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rand::random_range(0..=nanos))
        }
        _ => Duration::ZERO,
    };
    // Its staleness clock starts once its dependencies are up: waiting for a database that is
    // still connecting is not a stale worker (nor a failing liveness probe).
    if let Some(health) = &plan.health
        && !plan.requires.is_empty()
        && !health.wait_for(&plan.requires, &token).await
    {
        return;
    }
    shared.started(jitter);
    if !jitter.is_zero() {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(jitter) => {}
        }
    }
    let mut backoff = Backoff::new(plan.restart_initial, plan.restart_max);
    loop {
        let ended = match shared.schedule {
            Schedule::Periodic { interval, .. } => periodic(&plan, &token, interval, &mut backoff).await,
            Schedule::Continuous => continuous(&plan, &token, &mut backoff).await,
        };
        match ended {
            Ended::Cancelled => break,
            Ended::Restart => {
                shared.restarting();
                let delay = backoff.next_delay();
                tracing::warn!(
                    worker = %shared.name,
                    delay_ms = delay.as_millis() as u64,
                    attempt = backoff.attempts(),
                    "restarting worker after a backoff"
                );
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!(worker = %shared.name, "worker stopped");
}

/// Starts one run: the call and its future are both guarded against panics.
fn start_run(plan: &Plan, token: &CancellationToken) -> BoxFuture<'static, Finished> {
    let ctx = Context { token: token.child_token(), shared: plan.shared.clone() };
    plan.shared.run_started();
    let started = Instant::now();
    let run = plan.run.clone();
    // The call itself may panic before returning a future (a bug in synchronous set-up code).
    let fut = std::panic::catch_unwind(AssertUnwindSafe(move || run(ctx)));
    Box::pin(async move {
        let result = match fut {
            Err(payload) => Err(payload),
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
        };
        let took = started.elapsed();
        match result {
            Ok(Ok(())) => Finished { outcome: RunOutcome::Ok, took, error: None },
            Ok(Err(e)) => Finished { outcome: RunOutcome::Error, took, error: Some(e.to_string()) },
            Err(payload) => Finished { outcome: RunOutcome::Panic, took, error: Some(panic_message(&*payload)) },
        }
    })
}

fn record(shared: &Shared, f: Finished) -> RunOutcome {
    match (&f.outcome, &f.error) {
        (RunOutcome::Error, Some(e)) => tracing::warn!(worker = %shared.name, error = %e, "worker run failed"),
        (RunOutcome::Panic, Some(e)) => tracing::error!(worker = %shared.name, panic = %e, "worker run panicked"),
        _ => tracing::debug!(worker = %shared.name, took_ms = f.took.as_millis() as u64, "worker run finished"),
    }
    let outcome = f.outcome;
    shared.run_finished(f.outcome, f.took, f.error);
    outcome
}

async fn periodic(plan: &Plan, token: &CancellationToken, interval: Duration, backoff: &mut Backoff) -> Ended {
    let shared = &plan.shared;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The schedule's first run, at once: started here rather than raced against a requested
    // run in the loop, so a request made before it is answered by it.
    ticker.tick().await;
    let mut current: Option<BoxFuture<'static, Finished>> = Some(start_run(plan, token));
    loop {
        // The run is polled here, beside the ticker, so a tick during a long run is seen (and
        // skipped) rather than silently delayed. Biased, in this order: a due tick runs before
        // a requested run, so the schedule's run answers the request rather than adding one.
        tokio::select! {
            biased;
            _ = token.cancelled() => {
                if let Some(run) = current.take() {
                    // The run got a child token: let it finish its current step.
                    record(shared, run.await);
                }
                return Ended::Cancelled;
            }
            f = poll_current(&mut current), if current.is_some() => {
                current = None;
                match record(shared, f) {
                    RunOutcome::Panic => return Ended::Restart,
                    RunOutcome::Ok => backoff.reset(),
                    RunOutcome::Error => {}
                }
            }
            _ = ticker.tick() => {
                if current.is_some() {
                    shared.skipped();
                    tracing::debug!(worker = %shared.name, "tick skipped: the previous run is still going");
                } else {
                    current = Some(start_run(plan, token));
                }
            }
            () = shared.run_now.notified(), if current.is_none() => {
                // A tick may have answered the request already.
                if shared.requested.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!(worker = %shared.name, "worker run requested by an operator");
                    current = Some(start_run(plan, token));
                }
            }
        }
    }
}

async fn poll_current(current: &mut Option<BoxFuture<'static, Finished>>) -> Finished {
    match current {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn continuous(plan: &Plan, token: &CancellationToken, backoff: &mut Backoff) -> Ended {
    let f = start_run(plan, token).await;
    let took = f.took;
    let outcome = record(&plan.shared, f);
    if token.is_cancelled() {
        return Ended::Cancelled;
    }
    if outcome == RunOutcome::Ok {
        tracing::warn!(worker = %plan.shared.name, "continuous worker returned before shutdown");
    }
    // A run that lasted longer than the longest backoff was healthy for a while: start the
    // backoff over rather than punishing a rare crash with the longest wait.
    if took > plan.restart_max {
        backoff.reset();
    }
    Ended::Restart
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}
