#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use keel_health::{Kind, Status};

async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn status(w: &Workers, name: &str) -> WorkerStatus {
    w.statuses().into_iter().find(|s| s.name == name).unwrap()
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[tokio::test]
async fn a_panicking_run_is_counted_and_the_worker_restarts() {
    let metrics = Metrics::new();
    let workers = Workers::new(Some(&metrics), None).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    workers
        .add(
            Worker::periodic("flaky", Duration::from_millis(5), move |_ctx| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("bug in run {n}");
                    }
                    Ok::<_, RunError>(())
                }
            })
            .restart_backoff(Duration::from_millis(1), Duration::from_millis(5)),
        )
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("runs succeed after two panics", || status(&workers, "flaky").runs >= 4).await;
    let s = status(&workers, "flaky");
    assert_eq!(s.panics, 2);
    assert_eq!(s.restarts, 2);
    assert!(s.alive);
    assert!(s.last_error.as_deref().unwrap().contains("bug in run"), "{s:?}");
    assert!(s.last_success.is_some());
    let text = metrics.render();
    assert!(text.contains(r#"worker_runs_total{outcome="panic",worker="flaky"} 2"#), "{text}");
    assert!(text.contains(r#"worker_restarts_total{worker="flaky"} 2"#), "{text}");
    assert!(text.contains("worker_run_duration_seconds_count{worker=\"flaky\"}"), "{text}");
    assert!(!text.contains("worker_last_success_timestamp_seconds{worker=\"flaky\"} 0\n"), "{text}");
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
}

#[tokio::test]
async fn a_panic_while_building_the_future_is_caught_too() {
    let workers = Workers::new(None, None).unwrap();
    workers
        .add(
            Worker::periodic(
                "sync-panic",
                Duration::from_millis(5),
                |_ctx| -> std::future::Ready<Result<(), RunError>> { panic!("before the future exists") },
            )
            .restart_backoff(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("several restarts", || status(&workers, "sync-panic").restarts >= 3).await;
    assert!(status(&workers, "sync-panic").alive);
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
}

#[tokio::test]
async fn ticks_during_a_long_run_are_skipped_and_runs_never_overlap() {
    let workers = Workers::new(None, None).unwrap();
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), max.clone());
    workers
        .add(Worker::periodic("slow", Duration::from_millis(5), move |_ctx| {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let inside = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, RunError>(())
            }
        }))
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("ticks skipped", || {
        let s = status(&workers, "slow");
        s.skipped_ticks >= 3 && s.runs >= 2
    })
    .await;
    assert_eq!(max.load(Ordering::SeqCst), 1, "two runs overlapped");
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
}

#[tokio::test]
async fn a_worker_without_recent_success_is_unhealthy() {
    let health = Health::new(Duration::from_secs(60), Duration::from_secs(60), None);
    health.set_started();
    let workers = Workers::new(None, Some(&health)).unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    workers
        .add(Worker::periodic("sync", Duration::from_millis(10), move |_ctx| {
            let fail = f.load(Ordering::SeqCst);
            async move { if fail { Err("upstream refused".into()) } else { Ok::<_, RunError>(()) } }
        }))
        .unwrap();
    workers
        .add(
            Worker::periodic("cache", Duration::from_millis(10), |_ctx| async { Err::<(), _>("always failing") })
                .readiness(),
        )
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("sync succeeded", || status(&workers, "sync").last_success.is_some()).await;
    health.run_all().await;
    assert_eq!(health.report(Kind::Liveness).checks["worker:sync"].status, Status::Up);

    fail.store(true, Ordering::SeqCst);
    let mut report = None;
    for _ in 0..500 {
        health.run_all().await;
        let r = health.report(Kind::Liveness);
        if r.status == Status::Down {
            report = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = report.expect("liveness went down");
    let err = report.checks["worker:sync"].error.clone().unwrap();
    assert!(err.contains("no success for") && err.contains("upstream refused"), "{err}");
    // The opted-in worker feeds readiness, not liveness.
    assert!(!report.checks.contains_key("worker:cache"));
    let ready = health.report(Kind::Readiness);
    assert_eq!(ready.checks["worker:cache"].status, Status::Down);
    assert!(ready.checks["worker:cache"].error.as_deref().unwrap().contains("no success yet"));
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
    assert!(!status(&workers, "sync").healthy);
}

#[tokio::test]
async fn shutdown_awaits_a_worker_that_finishes_its_step_after_cancel() {
    let workers = Workers::new(None, None).unwrap();
    let guard = Arc::new(());
    let finished = Arc::new(AtomicBool::new(false));
    let (g, f) = (guard.clone(), finished.clone());
    workers
        .add(Worker::continuous("consumer", move |ctx| {
            let (g, f) = (g.clone(), f.clone());
            async move {
                let _held = g;
                ctx.cancelled().await;
                // Finishing the current item: slower than a cancel, faster than the deadline.
                tokio::time::sleep(Duration::from_millis(150)).await;
                f.store(true, Ordering::SeqCst);
                Ok::<_, RunError>(())
            }
        }))
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("the run started", || Arc::strong_count(&guard) == 3).await;
    stop.cancel();
    let late = workers.join(far()).await;
    assert!(late.is_empty(), "{late:?}");
    assert!(finished.load(Ordering::SeqCst), "join returned before the worker finished");
    assert_eq!(workers.alive(), 0);
    // Only the test's own references remain: the worker, its closure and its run are gone.
    drop(workers);
    assert_eq!(Arc::strong_count(&guard), 1, "something still holds the worker's state");
}

#[tokio::test]
async fn a_worker_past_the_deadline_is_aborted_and_named() {
    let workers = Workers::new(None, None).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    workers
        .add(Worker::continuous("stubborn", move |_ctx| {
            struct Flag(Arc<AtomicBool>);
            impl Drop for Flag {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let flag = Flag(d.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, RunError>(())
            }
        }))
        .unwrap();
    workers
        .add(Worker::continuous("polite", |ctx| async move {
            ctx.cancelled().await;
            Ok::<_, RunError>(())
        }))
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("running", || status(&workers, "stubborn").running).await;
    stop.cancel();
    let late = workers.join(Instant::now() + Duration::from_millis(100)).await;
    assert_eq!(late, vec!["stubborn".to_owned()]);
    assert!(dropped.load(Ordering::SeqCst), "the stubborn run was not dropped");
    assert_eq!(workers.alive(), 0);
    assert_eq!(workers.abort_all(), vec!["stubborn".to_owned()]);
}

#[tokio::test]
async fn a_continuous_worker_that_returns_early_is_restarted() {
    let metrics = Metrics::new();
    let workers = Workers::new(Some(&metrics), None).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    workers
        .add(
            Worker::continuous("listener", move |ctx| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        return Err("connection lost".into());
                    }
                    ctx.heartbeat();
                    ctx.cancelled().await;
                    Ok::<_, RunError>(())
                }
            })
            .restart_backoff(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .unwrap();
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("second run heartbeats", || status(&workers, "listener").last_success.is_some()).await;
    let s = status(&workers, "listener");
    assert_eq!((s.restarts, s.failures), (1, 1));
    assert!(metrics.render().contains(r#"worker_runs_total{outcome="error",worker="listener"} 1"#));
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not restarted after a clean cancel");
}

#[test]
fn bad_registrations_are_errors() {
    let workers = Workers::new(None, None).unwrap();
    let ok = || Worker::periodic("a", Duration::from_secs(1), |_| async { Ok::<_, RunError>(()) });
    workers.add(ok()).unwrap();
    assert!(matches!(workers.add(ok()), Err(WorkerError::Duplicate(n)) if n == "a"));
    let zero = Worker::periodic("z", Duration::ZERO, |_| async { Ok::<_, RunError>(()) });
    assert!(matches!(workers.add(zero), Err(WorkerError::ZeroInterval(_))));
    assert_eq!(ok().threshold(), Some(Duration::from_secs(2)));
    assert_eq!(Worker::continuous("c", |_| async { Ok::<_, RunError>(()) }).threshold(), None);
}

#[tokio::test]
async fn run_now_starts_a_run_besides_the_schedule_and_never_overlaps() {
    let workers = Workers::new(None, None).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (r, gate) = (runs.clone(), release.clone());
    workers
        .add(Worker::periodic("hourly", Duration::from_secs(3600), move |_ctx| {
            let (r, gate) = (r.clone(), gate.clone());
            async move {
                // The first run (the schedule's first tick) returns at once; the others wait.
                if r.fetch_add(1, Ordering::SeqCst) > 0 {
                    gate.notified().await;
                }
                Ok::<_, std::io::Error>(())
            }
        }))
        .unwrap();
    workers
        .add(Worker::continuous("loop", |ctx| async move {
            ctx.cancelled().await;
            Ok::<_, std::io::Error>(())
        }))
        .unwrap();
    assert_eq!(workers.run_now("hourly"), Err(RunNowError::Stopped("hourly".into())), "not started yet");
    let stop = CancellationToken::new();
    workers.start(&stop);
    eventually("the first scheduled run", || status(&workers, "hourly").runs == 1).await;
    workers.run_now("hourly").unwrap();
    eventually("the requested run starts", || runs.load(Ordering::SeqCst) == 2).await;
    assert_eq!(workers.run_now("hourly"), Err(RunNowError::Busy("hourly".into())));
    release.notify_one();
    eventually("the requested run finishes", || status(&workers, "hourly").runs == 2).await;
    assert_eq!(workers.run_now("nope"), Err(RunNowError::Unknown("nope".into())));
    assert_eq!(workers.run_now("loop"), Err(RunNowError::Continuous("loop".into())));
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
    assert_eq!(workers.run_now("hourly"), Err(RunNowError::Stopped("hourly".into())));
}

#[tokio::test]
async fn a_run_requested_before_the_first_tick_makes_no_second_run() {
    let health = Health::new(Duration::from_millis(10), Duration::from_secs(60), None);
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    health.add(keel_health::Check::new("store", Kind::Readiness, move || {
        let up = u.load(Ordering::SeqCst);
        async move { if up { keel_health::Outcome::Up } else { keel_health::Outcome::down("connecting") } }
    }));
    health.set_started();
    let workers = Workers::new(None, Some(&health)).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    workers
        .add(
            Worker::periodic("hourly", Duration::from_secs(3600), move |_ctx| {
                r.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(()) }
            })
            .requires("store"),
        )
        .unwrap();
    let stop = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    health.spawn(&tracker, &stop);
    workers.start(&stop);
    // Asked while it waits for its dependency: the schedule's first run answers it.
    workers.run_now("hourly").unwrap();
    assert_eq!(workers.run_now("hourly"), Err(RunNowError::Requested("hourly".into())), "one request at a time");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "not before its dependency");
    up.store(true, Ordering::SeqCst);
    eventually("the first run", || runs.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one request, one run");
    workers.run_now("hourly").unwrap();
    eventually("a second request runs again", || runs.load(Ordering::SeqCst) == 2).await;
    stop.cancel();
    assert!(workers.join(far()).await.is_empty());
}
