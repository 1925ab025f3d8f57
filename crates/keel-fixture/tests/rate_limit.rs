//! Rate limiting, local and shared through the real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fixture, client, eventually};
use keel::redis::RedisConfig;
use keel::resilience::rate_limit::{OnBackendError, RateLimitMetrics, RateLimitPolicy, RateLimiter, Verdict};
use keel::testing::{FaultProxy, Mode, TestRedis, host_port, redis_url, require};
use serde_json::Value;

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("FIXTURE__APP__RATE_LIMITED", "true"), ("FIXTURE__RATE_LIMITS__API__WINDOW", "1m")];
    v.extend_from_slice(extra);
    v
}

async fn hit(f: &Fixture, xff: Option<&str>) -> reqwest::Response {
    let mut r = client().get(f.url("/limited"));
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn local_policy_limits_with_headers_and_retry_after() {
    let f = Fixture::start(&env(&[("FIXTURE__RATE_LIMITS__API__LIMIT", "3")])).await;
    for remaining in ["2", "1", "0"] {
        let resp = hit(&f, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-limit"], "3");
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining);
        assert!(resp.headers().contains_key("ratelimit-reset"));
    }
    let resp = hit(&f, None).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "one request every 20 s: {retry}");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    assert!(body["request_id"].is_string());
    let m = f.running().metrics().render();
    assert!(m.contains("rate_limit_decisions_total{decision=\"allowed\",policy=\"api\"} 3"), "{m}");
    assert!(m.contains("rate_limit_decisions_total{decision=\"limited\",policy=\"api\"} 1"), "{m}");
    f.stop().await;
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    let f = Fixture::start(&env(&[("FIXTURE__RATE_LIMITS__API__LIMIT", "2")])).await;
    let statuses: Vec<u16> =
        futures_util::future::join_all(["1.1.1.1", "2.2.2.2", "3.3.3.3"].map(|ip| hit(&f, Some(ip))))
            .await
            .into_iter()
            .map(|r| r.status().as_u16())
            .collect();
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, vec![200, 200, 429], "one key (the peer) whatever the header says");
    f.stop().await;

    // From a trusted proxy, the header names the client: three clients, three keys.
    let f = Fixture::start(&env(&[
        ("FIXTURE__RATE_LIMITS__API__LIMIT", "2"),
        ("FIXTURE__HTTP__TRUSTED_PROXIES", "127.0.0.1/32"),
    ]))
    .await;
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        assert_eq!(hit(&f, Some(ip)).await.status(), 200);
    }
    assert_eq!(hit(&f, Some("1.1.1.1")).await.status(), 200);
    assert_eq!(hit(&f, Some("1.1.1.1")).await.status(), 429, "the same client's third request");
    f.stop().await;
}

async fn redis_handle(prefix: &str, url: &str) -> keel::redis::Redis {
    let mut cfg = RedisConfig::default();
    cfg.key_prefix = Some(prefix.to_owned());
    let metrics = keel::telemetry::Metrics::new();
    let r = keel::redis::Redis::new("t", url, &cfg, &metrics).unwrap();
    r.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_redis_never_exceed_the_limit() {
    if !require("Redis", &redis_url()) {
        return;
    }
    let keys = TestRedis::new(&redis_url());
    let policy = RateLimitPolicy { limit: 50, window: Duration::from_secs(3), ..RateLimitPolicy::default() };
    let mut limiters = Vec::new();
    for _ in 0..3 {
        // Separate handles: separate connections, as three service instances would have.
        let r = redis_handle(keys.prefix(), &redis_url()).await;
        limiters.push(Arc::new(RateLimiter::redis("shared", policy.clone(), OnBackendError::FailClosed, r, None)));
    }
    // 3 × 100 attempts, as fast as possible, well inside one window: exactly `limit` pass.
    let started = Instant::now();
    let tasks: Vec<_> = limiters
        .iter()
        .map(|l| {
            let l = l.clone();
            tokio::spawn(async move {
                let mut allowed = 0u32;
                for _ in 0..100 {
                    if let Verdict::Decided(d) = l.check("client-1").await
                        && d.allowed
                    {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let total: u32 = futures_util::future::join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert!(started.elapsed() < Duration::from_secs(3), "the burst fit in one window");
    assert_eq!(total, 50, "tolerance 0: the Lua script decides atomically");

    // Over a longer run, any window of 1 s admits at most the limit, so T seconds admit at
    // most limit × (T / window + 1).
    let policy = RateLimitPolicy { limit: 20, window: Duration::from_secs(1), ..RateLimitPolicy::default() };
    let url = redis_url();
    let limiters: Vec<_> = futures_util::future::join_all((0..3).map(|_| redis_handle(keys.prefix(), &url)))
        .await
        .into_iter()
        .map(|r| Arc::new(RateLimiter::redis("sliding", policy.clone(), OnBackendError::FailClosed, r, None)))
        .collect();
    let run = Duration::from_millis(2500);
    let started = Instant::now();
    let tasks: Vec<_> = limiters
        .iter()
        .map(|l| {
            let l = l.clone();
            tokio::spawn(async move {
                let mut allowed = Vec::new();
                while started.elapsed() < run {
                    if let Verdict::Decided(d) = l.check("client-2").await
                        && d.allowed
                    {
                        allowed.push(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                allowed
            })
        })
        .collect();
    let mut times: Vec<Duration> =
        futures_util::future::join_all(tasks).await.into_iter().flat_map(Result::unwrap).collect();
    times.sort();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(times.len() as f64 <= 20.0 * (elapsed / 1.0 + 1.0), "{} allowed in {elapsed:.2}s", times.len());
    assert!(times.len() >= 40, "the limit is reached again in later windows: {}", times.len());
}

/// Two Redis policies in one layer (`RateLimitLayer::then`) decide each request in one script
/// call, and count as the two layers nested would: the first (per IP) counts a request the
/// second (per user) refuses; the second never counts one the first refused. When Redis fails,
/// each applies its own failure mode, in order, and the first that refuses ends it.
#[tokio::test]
async fn policies_deciding_together_take_one_round_trip_and_count_in_order() {
    if !require("Redis", &redis_url()) {
        return;
    }
    let keys = TestRedis::new(&redis_url());
    let proxy = FaultProxy::start(host_port(&redis_url()).unwrap(), Mode::Forward).await.unwrap();
    let mut cfg = RedisConfig::default();
    cfg.key_prefix = Some(keys.prefix().to_owned());
    cfg.command_timeout = Duration::from_millis(300);
    let metrics = keel::telemetry::Metrics::new();
    let redis = keel::redis::Redis::new("t", &format!("redis://{}", proxy.host_port()), &cfg, &metrics).unwrap();
    redis.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    let policy = |limit| RateLimitPolicy { limit, window: Duration::from_secs(60), ..RateLimitPolicy::default() };
    let limiter = |name: &str, limit, on_error| RateLimiter::redis(name, policy(limit), on_error, redis.clone(), None);
    let (ip, api) = (limiter("ip", 3, OnBackendError::FailClosed), limiter("api", 2, OnBackendError::FailClosed));
    let ok_calls = || {
        let m = metrics.render();
        m.lines()
            .find_map(|l| l.strip_prefix("redis_commands_total{outcome=\"ok\"} "))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = ok_calls();
    let decided = |v: &[Verdict]| -> Vec<(bool, u32)> {
        v.iter()
            .map(|v| match v {
                Verdict::Decided(d) => (d.allowed, d.remaining),
                other => panic!("not decided: {other:?}"),
            })
            .collect()
    };
    let both = [(&ip, "k"), (&api, "k")];
    assert_eq!(decided(&RateLimiter::check_in_order(&both).await), [(true, 2), (true, 1)]);
    assert_eq!(decided(&RateLimiter::check_in_order(&both).await), [(true, 1), (true, 0)]);
    // The per-user policy refuses; the per-IP one has counted the request.
    assert_eq!(decided(&RateLimiter::check_in_order(&both).await), [(true, 0), (false, 0)]);
    // The per-IP policy refuses: the per-user one is not asked.
    assert_eq!(decided(&RateLimiter::check_in_order(&both).await), [(false, 0)]);
    assert_eq!(ok_calls() - before, 4, "one round trip per request for both policies");
    let card = |key: String| {
        let redis = redis.clone();
        async move { redis.query::<u64>(redis::cmd("ZCARD").arg(key)).await.unwrap() }
    };
    assert_eq!(card(redis.key("rl:ip:k")).await, 3, "the per-IP policy counted every request it allowed");
    assert_eq!(card(redis.key("rl:api:k")).await, 2, "refused requests are not counted after the refusal");

    // Redis cut: each policy's own failure mode, in order.
    proxy.take_down();
    let open = limiter("open", 3, OnBackendError::FailOpen);
    let fallback = limiter("fallback", 1, OnBackendError::FallbackLocal);
    assert_eq!(
        RateLimiter::check_in_order(&[(&open, "k"), (&api, "k")]).await,
        [Verdict::FailedOpen, Verdict::FailedClosed]
    );
    assert_eq!(RateLimiter::check_in_order(&[(&api, "k"), (&open, "k")]).await, [Verdict::FailedClosed]);
    let v = RateLimiter::check_in_order(&[(&fallback, "k"), (&open, "k")]).await;
    assert_eq!(decided(&v[..1]), [(true, 0)], "the local fallback decides");
    assert_eq!(v[1], Verdict::FailedOpen);
    // The fallback's local limiter refuses the next one: the others are not asked.
    assert_eq!(decided(&RateLimiter::check_in_order(&[(&fallback, "k"), (&open, "k")]).await), [(false, 0)]);
    // One of four replicas sharing a limit of 8: its fallback allows its share, 2, not 8.
    let shared = RateLimitPolicy { instances: 4, ..policy(8) };
    let replica = RateLimiter::redis("replica", shared, OnBackendError::FallbackLocal, redis.clone(), None);
    let mut allowed = 0;
    for _ in 0..8 {
        if decided(&RateLimiter::check_in_order(&[(&replica, "k")]).await)[0].0 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 2, "limit / instances while Redis is away");
    proxy.restore();
}

async fn redis_fixture(proxy: &FaultProxy, keys: &TestRedis, on_error: &str) -> Fixture {
    let url = format!("redis://{}", proxy.host_port());
    let f = Fixture::start(&env(&[
        ("FIXTURE__APP__REDIS", "true"),
        ("FIXTURE__REDIS__URL", &url),
        ("FIXTURE__REDIS__KEY_PREFIX", keys.prefix()),
        ("FIXTURE__REDIS__COMMAND_TIMEOUT", "300ms"),
        ("FIXTURE__REDIS__CONNECT__INITIAL_DELAY", "50ms"),
        ("FIXTURE__REDIS__CONNECT__MAX_DELAY", "200ms"),
        ("FIXTURE__HEALTH__INTERVAL", "100ms"),
        ("FIXTURE__HEALTH__TTL", "1s"),
        ("FIXTURE__RATE_LIMITS__API__LIMIT", "3"),
        ("FIXTURE__RATE_LIMITS__API__BACKEND", "redis"),
        ("FIXTURE__RATE_LIMITS__API__ON_BACKEND_ERROR", on_error),
    ]))
    .await;
    eventually("redis up", || async {
        client().get(f.url("/health/ready")).send().await.unwrap().status() == 200
            && client().get(f.url("/health/ready")).send().await.unwrap().json::<Value>().await.unwrap()["status"]
                == "up"
    })
    .await;
    f
}

async fn redis_outage(on_error: &str) {
    let fallback = on_error == "fallback_local";
    if !require("Redis", &redis_url()) {
        return;
    }
    let keys = TestRedis::new(&redis_url());
    let proxy = FaultProxy::start(host_port(&redis_url()).unwrap(), Mode::Forward).await.unwrap();
    let f = redis_fixture(&proxy, &keys, on_error).await;
    // Shared limiting works: 3 allowed, the 4th limited.
    for _ in 0..3 {
        assert_eq!(hit(&f, None).await.status(), 200);
    }
    assert_eq!(hit(&f, None).await.status(), 429);
    // Redis cut mid-run.
    proxy.take_down();
    let during: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(hit(&f, None).await.status().as_u16());
        }
        v
    };
    match (on_error, fallback) {
        (_, true) => assert_eq!(during, vec![200, 200, 200, 429, 429], "the local fallback limits alone"),
        ("fail_closed", _) => assert!(during.iter().all(|s| *s == 503), "{during:?}"),
        _ => assert!(during.iter().all(|s| *s == 200), "{during:?}"),
    }
    let m = f.running().metrics().render();
    assert!(m.contains("rate_limit_backend_errors_total{policy=\"api\"} 5"), "{m}");
    if !fallback {
        assert!(m.contains("rate_limit_decisions_total{decision=\"error\",policy=\"api\"} 5"), "{m}");
    }
    let active = if fallback { "local" } else { "none" };
    assert!(m.contains(&format!("rate_limit_backend_active{{backend=\"{active}\",policy=\"api\"}} 1")), "{m}");
    assert!(m.contains("rate_limit_backend_active{backend=\"redis\",policy=\"api\"} 0"), "{m}");
    if on_error == "fail_closed" {
        let resp = hit(&f, None).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "SERVICE_DEGRADED");
    }
    // Redis back: shared limiting resumes (the key's earlier hits still count).
    proxy.restore();
    // (With the fallback, its exhausted local limiter answers 429 too: Redis must be in force.)
    let redis_active =
        || f.running().metrics().render().contains("rate_limit_backend_active{backend=\"redis\",policy=\"api\"} 1");
    eventually("limiting resumes", || async { hit(&f, None).await.status() == 429 && redis_active() }).await;
    let m = f.running().metrics().render();
    assert!(m.contains(&format!("rate_limit_backend_active{{backend=\"{active}\",policy=\"api\"}} 0")), "{m}");
    f.stop().await;
}

#[tokio::test]
async fn redis_outage_fail_closed_refuses_with_503() {
    redis_outage("fail_closed").await;
}

#[tokio::test]
async fn redis_outage_fail_open_lets_requests_through() {
    redis_outage("fail_open").await;
}

#[tokio::test]
async fn redis_outage_with_local_fallback_still_limits() {
    redis_outage("fallback_local").await;
}

#[test]
fn a_policy_with_a_bad_key_is_a_config_error() {
    let e = keel::app::Loader::new("svc", keel::config::Profile::Test)
        .env([("SVC__RATE_LIMITS__API__KEY", "ip,cookie"), ("SVC__RATE_LIMITS__API__LIMIT", "0")])
        .load::<keel::config::NoConfig>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("rate_limits.api"), "{e}");
    let _ = RateLimitMetrics::new(&keel::telemetry::Metrics::new()).unwrap();
}
