//! Liveness, readiness and startup probes against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Fixture, client, eventually};
use serde_json::Value;

async fn get(url: String) -> (u16, Value) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn every_probe_and_alias_answers() {
    let f = Fixture::start(&[]).await;
    eventually("first check results", || async { get(f.url("/health/ready")).await.0 == 200 }).await;
    for path in ["/health/live", "/healthz", "/livez", "/health/ready", "/readyz", "/health/startup"] {
        let (status, body) = get(f.url(path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["status"], "up", "{path}");
    }
    let (_, body) = get(f.url("/health/ready")).await;
    let check = &body["checks"]["self"];
    assert_eq!(check["status"], "up");
    assert!(check["latency_ms"].is_u64() && check["age_ms"].is_u64(), "{body}");
    f.stop().await;
}

#[tokio::test]
async fn failing_required_check_fails_readiness_not_liveness_and_hides_secrets() {
    let f = Fixture::start(&[("FIXTURE__APP__FAILING_CHECK", "true")]).await;
    eventually("check ran", || async { !get(f.url("/health/ready")).await.1["checks"]["broken"]["age_ms"].is_null() })
        .await;
    let (status, body) = get(f.url("/health/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "down");
    let err = body["checks"]["broken"]["error"].as_str().unwrap();
    assert!(err.contains("connection refused") && !err.contains("hunter2"), "{err}");
    assert!(err.contains("app:***@db"), "{err}");
    assert_eq!(get(f.url("/health/live")).await.0, 200, "liveness never depends on dependencies");
    let metrics = f.running().metrics().render();
    assert!(metrics.contains("health_check_up{check=\"broken\"} 0"), "{metrics}");
    f.stop().await;
}

#[tokio::test]
async fn readiness_turns_503_at_once_on_shutdown_while_serving_continues() {
    let f = Fixture::start(&[("FIXTURE__SHUTDOWN__DRAIN_DELAY", "1500ms")]).await;
    eventually("ready", || async { get(f.url("/health/ready")).await.0 == 200 }).await;
    let ready = f.url("/health/ready");
    let live = f.url("/health/live");
    let hello = f.url("/hello");
    let mut f = f;
    let running = f.running.take().unwrap();
    let stopper = tokio::spawn(async move { running.shutdown(std::future::pending()).await });
    // During the drain delay: not ready, but still alive and still serving.
    eventually("ready → 503", || async { get(ready.clone()).await.0 == 503 }).await;
    let (_, body) = get(ready.clone()).await;
    assert_eq!(body["reason"], "shutting down");
    assert_eq!(get(live.clone()).await.0, 200);
    assert_eq!(client().get(&hello).send().await.unwrap().status(), 200);
    stopper.await.unwrap().unwrap();
    // After the drain: the listener is closed.
    let err = client().get(&hello).timeout(Duration::from_secs(2)).send().await.unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn startup_probe_waits_for_startup_checks() {
    let f = Fixture::start(&[
        ("FIXTURE__APP__WARMUP", "700ms"),
        ("FIXTURE__HEALTH__INTERVAL", "50ms"),
        ("FIXTURE__HEALTH__TTL", "1s"),
    ])
    .await;
    let (status, body) = get(f.url("/health/startup")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["warmup"]["error"], "warming up");
    assert_eq!(get(f.url("/health/live")).await.0, 200, "liveness is not startup");
    eventually("warmed up", || async { get(f.url("/health/startup")).await.0 == 200 }).await;
    f.stop().await;
}
