//! The outbound HTTP client against local upstream servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::{Fixture, client, eventually};
use keel::http::client::UpstreamConfig;
use keel::http::client::{Client, ClientError, ClientMetrics, Request};
use keel::resilience::breaker::{CircuitBreaker, Registry, State};
use serde_json::Value;

#[derive(Clone, Default)]
struct Upstream {
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    flaky_left: Arc<AtomicUsize>,
}

async fn upstream() -> (SocketAddr, Upstream) {
    let u = Upstream::default();
    u.healthy.store(true, Ordering::SeqCst);
    let s = u.clone();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/endless",
            get(|| async {
                let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                Body::from_stream(stream)
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/fail",
            get({
                let s = s.clone();
                move || async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    if s.healthy.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, "boom")
                    }
                }
            }),
        )
        .route(
            "/flaky",
            get({
                let s = s.clone();
                move || async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    flaky(&s)
                }
            })
            .post({
                let s = s.clone();
                move || async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    flaky(&s)
                }
            }),
        )
        .route(
            "/echo-headers",
            get(|h: HeaderMap| async move {
                let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                axum::Json(serde_json::json!({
                    "x-request-id": get("x-request-id"),
                    "x-request-timeout-ms": get("x-request-timeout-ms"),
                }))
            }),
        )
        .route(
            "/health",
            get({
                let s = s.clone();
                move || async move {
                    if s.healthy.load(Ordering::SeqCst) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, u)
}

fn flaky(s: &Upstream) -> (StatusCode, &'static str) {
    let left = s.flaky_left.load(Ordering::SeqCst);
    if left > 0 {
        s.flaky_left.store(left - 1, Ordering::SeqCst);
        (StatusCode::SERVICE_UNAVAILABLE, "try again")
    } else {
        (StatusCode::OK, "ok")
    }
}

fn cfg(addr: SocketAddr) -> UpstreamConfig {
    let mut c = UpstreamConfig::default();
    c.base_url = format!("http://{addr}");
    c.retry.initial_delay = Duration::from_millis(5);
    c.retry.max_delay = Duration::from_millis(20);
    c
}

fn make(name: &str, c: &UpstreamConfig) -> (Client, keel::telemetry::Metrics) {
    let metrics = keel::telemetry::Metrics::new();
    let registry = Registry::new(metrics.registry()).unwrap();
    let breaker = registry.get_or_create(name, &c.breaker);
    (Client::new(name, c, breaker, Some(ClientMetrics::new(&metrics).unwrap())).unwrap(), metrics)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap_with_memory_bounded() {
    let (addr, _) = upstream().await;
    let mut c = cfg(addr);
    c.max_response_bytes = 1 << 20;
    let (client, metrics) = make("big", &c);
    let before = rss_bytes();
    let started = Instant::now();
    let err = client.get("/endless").await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { limit, .. } if limit == 1 << 20), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 32 << 20, "RSS grew {} MiB", grown >> 20);
    // A declared oversize body is refused before any of it is read (a raw server, so the
    // header is exactly what the test writes).
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = raw.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000000\r\n\r\nxxxx").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut c2 = cfg(raw_addr);
    c2.max_response_bytes = 1 << 20;
    let (declared, _) = make("declared", &c2);
    let started = Instant::now();
    let err = declared.get("/").await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "refused on the header, not after reading");
    assert!(metrics.render().contains("http_client_requests_total{method=\"GET\",status=\"error\",upstream=\"big\"}"));
}

#[tokio::test]
async fn a_slow_upstream_times_out() {
    let (addr, _) = upstream().await;
    let mut c = cfg(addr);
    c.request_timeout = Duration::from_millis(200);
    c.retry.max_attempts = 1;
    let (client, _) = make("slow", &c);
    let started = Instant::now();
    let err = client.get("/slow").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_request_can_set_its_own_attempt_timeout() {
    let (addr, _) = upstream().await;
    let mut c = cfg(addr);
    c.request_timeout = Duration::from_secs(30);
    c.retry.max_attempts = 2;
    let (client, metrics) = make("per-request", &c);
    let started = Instant::now();
    let err =
        client.send(Request::new(http::Method::GET, "/slow").timeout(Duration::from_millis(200))).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { after, .. } if after == Duration::from_millis(200)), "{err}");
    // Two attempts of 200 ms each, not the upstream's 30 s.
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(
        metrics
            .render()
            .contains("http_client_requests_total{method=\"GET\",status=\"error\",upstream=\"per-request\"} 2")
    );
}

#[tokio::test]
async fn an_upstream_nobody_listens_on_is_unreachable_503_and_retried_for_any_method() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut c = cfg(closed);
    c.retry.max_attempts = 2;
    let (client, metrics) = make("down", &c);
    let err = client.send(Request::new(http::Method::POST, "/x").body("{}")).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    // Nothing was sent: a POST is tried again too.
    assert!(
        metrics.render().contains("http_client_requests_total{method=\"POST\",status=\"error\",upstream=\"down\"} 2")
    );
    let resp = axum::response::IntoResponse::into_response(err);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_failing_upstream_opens_the_breaker_which_rejects_fast_then_recovers() {
    let (addr, u) = upstream().await;
    u.healthy.store(false, Ordering::SeqCst);
    let mut c = cfg(addr);
    c.retry.max_attempts = 1;
    c.breaker.minimum_calls = 4;
    c.breaker.open_wait = Duration::from_millis(400);
    c.breaker.half_open_calls = 2;
    let (client, metrics) = make("flappy", &c);
    for _ in 0..4 {
        assert_eq!(client.get("/fail").await.unwrap().status, 500);
    }
    assert_eq!(client.breaker().state(), State::Open);
    // Open: rejected at once, no request reaches the upstream.
    let hits = u.hits.load(Ordering::SeqCst);
    let started = Instant::now();
    let err = client.get("/fail").await.unwrap_err();
    assert!(matches!(err, ClientError::BreakerOpen { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(u.hits.load(Ordering::SeqCst), hits);
    // The upstream recovers: after open_wait, trial calls close the breaker promptly.
    u.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(client.get("/fail").await.unwrap().status, 200);
    assert_eq!(client.breaker().state(), State::HalfOpen);
    assert_eq!(client.get("/fail").await.unwrap().status, 200);
    assert_eq!(client.breaker().state(), State::Closed);
    let m = metrics.render();
    for needle in [
        "circuit_breaker_state{name=\"flappy\"} 0",
        "circuit_breaker_transitions_total{from=\"closed\",name=\"flappy\",to=\"open\"} 1",
        "circuit_breaker_transitions_total{from=\"open\",name=\"flappy\",to=\"half_open\"} 1",
        "circuit_breaker_transitions_total{from=\"half_open\",name=\"flappy\",to=\"closed\"} 1",
        "circuit_breaker_calls_total{name=\"flappy\",outcome=\"rejected\"} 1",
    ] {
        assert!(m.contains(needle), "{needle}\n{m}");
    }
}

#[tokio::test]
async fn only_safe_requests_are_retried() {
    let (addr, u) = upstream().await;
    let (client, metrics) = make("retry", &cfg(addr));
    u.flaky_left.store(2, Ordering::SeqCst);
    assert_eq!(client.get("/flaky").await.unwrap().status, 200, "GET retried through two 503s");
    assert_eq!(u.hits.swap(0, Ordering::SeqCst), 3);
    u.flaky_left.store(2, Ordering::SeqCst);
    let resp = client.send(Request::new(http::Method::POST, "/flaky")).await.unwrap();
    assert_eq!(resp.status, 503, "a POST is not retried");
    assert_eq!(u.hits.swap(0, Ordering::SeqCst), 1);
    u.flaky_left.store(1, Ordering::SeqCst);
    let keyed = Request::new(http::Method::POST, "/flaky")
        .header(http::HeaderName::from_static("idempotency-key"), http::HeaderValue::from_static("k-1"));
    assert_eq!(client.send(keyed).await.unwrap().status, 200, "a POST with an Idempotency-Key is");
    assert_eq!(u.hits.load(Ordering::SeqCst), 2);
    assert!(metrics.render().contains("http_client_retries_total{result=\"made\",upstream=\"retry\"} 3"));
}

#[tokio::test]
async fn the_bulkhead_bounds_concurrent_calls() {
    let (addr, _) = upstream().await;
    let mut c = cfg(addr);
    c.bulkhead.max_concurrent = 1;
    c.bulkhead.max_queue = 0;
    c.request_timeout = Duration::from_secs(10);
    let (client, _) = make("narrow", &c);
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/slow").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client.get("/ok").await.unwrap_err();
    assert!(matches!(err, ClientError::Bulkhead { .. }), "{err}");
    first.abort();
}

#[tokio::test]
async fn request_id_and_deadline_follow_the_call_and_upstream_health_gates_readiness() {
    let (addr, u) = upstream().await;
    let base = format!("http://{addr}");
    let f = Fixture::start(&[
        ("FIXTURE__APP__UPSTREAM", "true"),
        ("FIXTURE__UPSTREAMS__ECHO__BASE_URL", &base),
        ("FIXTURE__UPSTREAMS__ECHO__HEALTH_PATH", "/health"),
        ("FIXTURE__HTTP__REQUEST_TIMEOUT", "3s"),
        ("FIXTURE__HEALTH__INTERVAL", "100ms"),
        ("FIXTURE__HEALTH__TTL", "1s"),
    ])
    .await;
    let resp = client().get(f.url("/proxy/echo-headers")).header("x-request-id", "prop-1").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["x-request-id"], "prop-1");
    let budget: u64 = seen["x-request-timeout-ms"].as_str().unwrap().parse().unwrap();
    assert!(budget > 0 && budget <= 3000, "the caller's remaining time: {budget}");
    // A caller's shorter budget is honoured by the server too.
    let started = Instant::now();
    let resp = client().get(f.url("/slow?ms=3000")).header("x-request-timeout-ms", "200").send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The upstream's health feeds readiness.
    eventually("ready", || async { client().get(f.url("/health/ready")).send().await.unwrap().status() == 200 }).await;
    u.healthy.store(false, Ordering::SeqCst);
    eventually("not ready", || async { client().get(f.url("/health/ready")).send().await.unwrap().status() == 503 })
        .await;
    // Upstream failures reach the caller as problems.
    let resp = client().get(f.url("/proxy/slow")).header("x-request-timeout-ms", "300").send().await.unwrap();
    assert_eq!(resp.status(), 504);
    f.stop().await;
}

#[test]
fn an_upstream_needs_a_base_url_and_finite_timeouts() {
    let e = keel::app::Loader::new("svc", keel::config::Profile::Test)
        .env([
            ("SVC__UPSTREAMS__X__REQUEST_TIMEOUT", "0s"),
            ("SVC__UPSTREAMS__Y__BASE_URL", "http://y:1/?token=abc"),
            ("SVC__UPSTREAMS__Y__RETRY__BUDGET__RATIO", "-1"),
        ])
        .load::<keel::config::NoConfig>()
        .unwrap_err()
        .to_string();
    for key in [
        "upstreams.x.base_url",
        "upstreams.x.request_timeout",
        "upstreams.y.base_url",
        "upstreams.y.retry.budget.ratio",
    ] {
        assert!(e.contains(key), "{key}: {e}");
    }
    let _ = CircuitBreaker::new("unused", Default::default());
}

#[tokio::test]
async fn a_path_cannot_change_the_host() {
    let (addr, _) = upstream().await;
    let (client, _) = make("hosts", &cfg(addr));
    for path in ["@evil.example/x", ".evil.example/x", "//evil.example/x", "evil"] {
        let err = client.get(path).await.unwrap_err();
        assert!(matches!(err, ClientError::Invalid { .. }), "{path}: {err}");
    }
    assert_eq!(client.breaker().state(), State::Closed, "the caller's mistakes are not the upstream's");
}

#[tokio::test]
async fn the_callers_deadline_is_not_the_upstreams_failure() {
    use keel::http::context::{RequestContext, scope};
    let (addr, u) = upstream().await;
    let mut c = cfg(addr);
    c.breaker.minimum_calls = 2;
    c.breaker.window.size = 2;
    let (client, metrics) = make("deadline", &c);
    for _ in 0..3 {
        let ctx = RequestContext {
            request_id: None,
            deadline: Some(tokio::time::Instant::now() + Duration::from_millis(50)),
        };
        let err = scope(ctx, client.get("/slow")).await.unwrap_err();
        assert!(matches!(err, ClientError::DeadlineExceeded { .. }), "{err}");
    }
    assert_eq!(client.breaker().state(), State::Closed);
    let _ = u;
    // Not retried either: one attempt per call.
    assert!(
        metrics
            .render()
            .contains("http_client_requests_total{method=\"GET\",status=\"error\",upstream=\"deadline\"} 3")
    );
}

#[tokio::test]
async fn refusals_at_capacity_do_not_open_the_breaker() {
    // A Keel service past its capacity (a full password-hashing queue, load shedding) answers
    // 503 at once, marked overloaded: that must not open the caller's breaker, which would
    // refuse everyone's calls to a service that is answering. An unmarked 503 still counts.
    let busy = Router::new()
        .route(
            "/busy",
            get(|| async { keel::http::Problem::unavailable("too many sign-ins at once; retry shortly", 1) }),
        )
        .route("/down", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, busy).await });
    let mut c = cfg(addr);
    c.retry.max_attempts = 1;
    c.breaker.minimum_calls = 4;
    let (client, _metrics) = make("busy", &c);
    for _ in 0..20 {
        let resp = client.get("/busy").await.unwrap();
        assert_eq!(resp.status, 503);
        assert_eq!(resp.headers["retry-after"], "1");
        assert_eq!(resp.headers[keel::http::problem::OVERLOADED], "true");
    }
    assert_eq!(client.breaker().state(), State::Closed);
    for _ in 0..4 {
        assert_eq!(client.get("/down").await.unwrap().status, 503);
    }
    assert_eq!(client.breaker().state(), State::Open);
}
