//! gRPC through Keel: the fixture's `fixture.v1.Echo` behind the gRPC stack on the shared
//! public port and on `grpc.port`, health following readiness through a Redis outage, the
//! drain of an open stream at shutdown, TLS and mTLS with a certificate reload on both listener
//! kinds, and the client's retries and breaker on gRPC codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Fixture, client, eventually, free_port};
use keel::grpc::tonic::transport::Channel;
use keel::grpc::tonic::{Code, Request};
use keel::testing::{FaultProxy, Mode, TestRedis, host_port, redis_url, require};
use keel_fixture::echo::pb::echo_client::EchoClient;
use keel_fixture::echo::pb::{SayRequest, WatchRequest};

fn say(text: &str, mode: &str) -> SayRequest {
    SayRequest { text: text.into(), mode: mode.into(), sleep_ms: 0 }
}

fn channel(base: &str) -> Channel {
    keel::grpc::client::channel(base, None).unwrap()
}

/// `Some(serving)`, or `None` when the check itself failed.
async fn serving(channel: Channel, service: &str) -> Option<bool> {
    keel::grpc::client::check_health(channel, service, Duration::from_secs(2)).await.ok()
}

async fn metrics(f: &Fixture) -> String {
    client().get(format!("{}/metrics", f.mgmt)).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn a_call_goes_through_the_stack_beside_the_http_routes() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let f = Fixture::start(&[
        ("FIXTURE__APP__GRPC", "true"),
        ("FIXTURE__GRPC__REQUEST_TIMEOUT", "1s"),
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
    ])
    .await;
    assert_eq!(f.running().grpc_addr(), Some(f.running().http_addr()), "gRPC shares the public port");
    // The operator page names the gRPC listener and services.
    let status: serde_json::Value = client()
        .get(format!("{}/admin/status", f.mgmt))
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["listeners"]["grpc"], f.running().http_addr().to_string(), "{status}");
    let summary = status["config"]["summary"].to_string();
    assert!(summary.contains("fixture.v1.Echo on the public port"), "{summary}");
    let mut echo = EchoClient::new(channel(&f.base));

    // Request id and deadline reach the handler; the id comes back.
    let mut req = Request::new(say("hi", ""));
    req.metadata_mut().insert("x-request-id", "grpc-test-1".parse().unwrap());
    req.set_timeout(Duration::from_millis(800));
    let resp = echo.say(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "grpc-test-1");
    let reply = resp.into_inner();
    assert_eq!((reply.text.as_str(), reply.request_id.as_str()), ("hi", "grpc-test-1"));
    assert!(reply.remaining_ms > 0 && reply.remaining_ms <= 800, "{}", reply.remaining_ms);
    // Without grpc-timeout the handler gets grpc.request_timeout.
    let reply = echo.say(say("x", "")).await.unwrap().into_inner();
    assert!(reply.remaining_ms > 800 && reply.remaining_ms <= 1000, "{}", reply.remaining_ms);
    assert!(!reply.request_id.is_empty(), "an id is made when none is sent");

    // A panic is INTERNAL with nothing of the panic in it.
    let err = echo.say(say("x", "panic")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "internal error");
    // A Keel problem keeps its class and detail, and its Retry-After as pushback.
    let err = echo.say(say("x", "unavailable")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.metadata().get("grpc-retry-pushback-ms").unwrap(), "2000");
    // grpc.request_timeout cuts a slow handler before the client's own, later, deadline.
    let mut req = Request::new(SayRequest { text: "x".into(), mode: "sleep".into(), sleep_ms: 3000 });
    req.set_timeout(Duration::from_millis(2500));
    let started = std::time::Instant::now();
    assert_eq!(echo.say(req).await.unwrap_err().code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // HTTP on the same port is untouched.
    let hello = client().get(f.url("/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    // Health: the server and the service.
    assert_eq!(serving(channel(&f.base), "").await, Some(true));
    assert_eq!(serving(channel(&f.base), "fixture.v1.Echo").await, Some(true));

    // An unknown method is UNIMPLEMENTED, labelled `unknown`.
    let mut raw = keel::grpc::tonic::client::Grpc::new(channel(&f.base));
    raw.ready().await.unwrap();
    let err = raw
        .unary::<SayRequest, keel_fixture::echo::pb::SayReply, _>(
            Request::new(say("x", "")),
            "/fixture.v1.Echo/Nope".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    let text = metrics(&f).await;
    for (code, method) in [
        ("OK", "Say"),
        ("INTERNAL", "Say"),
        ("UNAVAILABLE", "Say"),
        ("DEADLINE_EXCEEDED", "Say"),
        ("UNIMPLEMENTED", "unknown"),
    ] {
        let line = format!(
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"fixture.v1.Echo\"}}"
        );
        assert!(text.contains(&line), "{line} missing:\n{}", grep(&text, "grpc_server"));
    }
    assert!(text.contains("grpc_server_handling_seconds_bucket{grpc_method=\"Say\""), "{}", grep(&text, "grpc_server"));
    f.stop().await;
}

fn grep(text: &str, needle: &str) -> String {
    text.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn calls_past_max_in_flight_are_shed_but_health_is_not() {
    let f = Fixture::start(&[("FIXTURE__APP__GRPC", "true"), ("FIXTURE__GRPC__MAX_IN_FLIGHT", "1")]).await;
    let mut slow = EchoClient::new(channel(&f.base));
    let busy =
        tokio::spawn(
            async move { slow.say(SayRequest { text: "x".into(), mode: "sleep".into(), sleep_ms: 1500 }).await },
        );
    let mut echo = EchoClient::new(channel(&f.base));
    eventually("a call over the cap is shed", || {
        let mut echo = echo.clone();
        async move { echo.say(say("x", "")).await.is_err_and(|e| e.code() == Code::ResourceExhausted) }
    })
    .await;
    let err = echo.say(say("x", "")).await.unwrap_err();
    assert_eq!(err.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
    assert_eq!(serving(channel(&f.base), "").await, Some(true), "health checks are never shed");
    assert!(busy.await.unwrap().is_ok(), "the admitted call finishes");
    assert!(metrics(&f).await.contains("grpc_server_calls_shed_total"));
    f.stop().await;
}

#[tokio::test]
async fn health_follows_readiness_through_a_redis_outage() {
    if !require("Redis", &redis_url()) {
        return;
    }
    let proxy = FaultProxy::start(host_port(&redis_url()).unwrap(), Mode::Forward).await.unwrap();
    let keys = TestRedis::new(&redis_url());
    let redis = format!("redis://{}", proxy.host_port());
    let f = Fixture::start(&[
        ("FIXTURE__APP__GRPC", "true"),
        ("FIXTURE__APP__REDIS", "true"),
        ("FIXTURE__REDIS__URL", &redis),
        ("FIXTURE__REDIS__KEY_PREFIX", keys.prefix()),
        ("FIXTURE__HEALTH__INTERVAL", "100ms"),
        ("FIXTURE__HEALTH__TTL", "1s"),
        ("FIXTURE__REDIS__CONNECT__INITIAL_DELAY", "50ms"),
        ("FIXTURE__REDIS__CONNECT__MAX_DELAY", "200ms"),
        ("FIXTURE__REDIS__CONNECT__ATTEMPT_TIMEOUT", "1s"),
        ("FIXTURE__REDIS__COMMAND_TIMEOUT", "500ms"),
    ])
    .await;
    let base = f.base.clone();
    eventually("SERVING once Redis is up", || {
        let c = channel(&base);
        async move { serving(c, "fixture.v1.Echo").await == Some(true) }
    })
    .await;
    proxy.take_down();
    eventually("NOT_SERVING while Redis is down", || {
        let c = channel(&base);
        async move { serving(c, "fixture.v1.Echo").await == Some(false) }
    })
    .await;
    assert_eq!(serving(channel(&base), "").await, Some(false), "the whole server too");
    let ready = client().get(f.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "the same readiness as /health/ready");
    proxy.restore();
    eventually("SERVING again once Redis is back", || {
        let c = channel(&base);
        async move { serving(c, "").await == Some(true) }
    })
    .await;
    f.stop().await;
}

#[tokio::test]
async fn an_open_stream_ends_unavailable_when_the_server_drains() {
    let f = Fixture::start(&[("FIXTURE__APP__GRPC", "true"), ("FIXTURE__SHUTDOWN__TIMEOUT", "20s")]).await;
    let mut echo = EchoClient::new(channel(&f.base));
    let mut ticks = echo.watch(WatchRequest { every_ms: 50 }).await.unwrap().into_inner();
    assert_eq!(ticks.message().await.unwrap().unwrap().n, 1);
    assert_eq!(ticks.message().await.unwrap().unwrap().n, 2);
    let started = std::time::Instant::now();
    let running = { f }.running.take().unwrap();
    let stopping = tokio::spawn(running.shutdown(std::future::pending()));
    let end = loop {
        match ticks.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    stopping.await.unwrap().expect("a clean shutdown, not one forced at its timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "the stream held the drain: {:?}", started.elapsed());
}

/// Writes a fresh PKI to `dir` and returns it.
fn write_pki(dir: &std::path::Path) -> keel::testing::TestPki {
    let pki = keel::testing::test_pki(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("tls.crt"), &pki.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &pki.key).unwrap();
    std::fs::write(dir.join("ca.crt"), &pki.ca).unwrap();
    std::fs::write(dir.join("client.crt"), &pki.client_cert).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client_key).unwrap();
    pki
}

/// A TLS channel to `url` trusting the CA in `dir`, with the client certificate there if `mtls`.
fn tls_channel(url: &str, dir: &std::path::Path, ca: &str, mtls: bool) -> Channel {
    let ca_file = dir.join(format!("pinned-{}.crt", ca.len() ^ ca.as_bytes()[ca.len() / 2] as usize));
    std::fs::write(&ca_file, ca).unwrap();
    let mut tls = keel::tls::ClientTlsConfig::default();
    tls.ca_file = Some(ca_file);
    if mtls {
        let (cert, key) = (dir.join("client-copy.crt"), dir.join("client-copy.key"));
        std::fs::copy(dir.join("client.crt"), &cert).unwrap();
        std::fs::copy(dir.join("client.key"), &key).unwrap();
        tls.cert_file = Some(cert);
        tls.key_file = Some(key);
    }
    keel::grpc::client::channel(url, Some(tls.rustls("test.tls", &[b"h2"]).unwrap())).unwrap()
}

async fn tls_and_mtls(shared: bool) {
    let dir = tempfile::tempdir().unwrap();
    let old = write_pki(dir.path());
    let file = |n: &str| dir.path().join(n).display().to_string();
    let section = if shared { "HTTP" } else { "GRPC" };
    let port = free_port().to_string();
    let mut env = vec![
        ("FIXTURE__APP__GRPC".to_owned(), "true".to_owned()),
        (format!("FIXTURE__{section}__TLS__CERT_FILE"), file("tls.crt")),
        (format!("FIXTURE__{section}__TLS__KEY_FILE"), file("tls.key")),
        (format!("FIXTURE__{section}__TLS__CLIENT_CA_FILE"), file("ca.crt")),
        (format!("FIXTURE__{section}__TLS__CLIENT_AUTH"), "required".to_owned()),
        (format!("FIXTURE__{section}__TLS__RELOAD_INTERVAL"), "100ms".to_owned()),
    ];
    if !shared {
        env.push(("FIXTURE__GRPC__PORT".to_owned(), port));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let f = Fixture::start(&env).await;
    let addr = f.running().grpc_addr().unwrap();
    assert_eq!(addr == f.running().http_addr(), shared);
    let url = format!("https://localhost:{}", addr.port());

    let reply = EchoClient::new(tls_channel(&url, dir.path(), &old.ca, true)).say(say("tls", "")).await.unwrap();
    assert_eq!(reply.into_inner().text, "tls");
    let refused = EchoClient::new(tls_channel(&url, dir.path(), &old.ca, false)).say(say("x", "")).await;
    assert!(refused.is_err(), "a client without a certificate is refused");
    let plain = EchoClient::new(channel(&format!("http://127.0.0.1:{}", addr.port()))).say(say("x", "")).await;
    assert!(plain.is_err(), "plaintext is refused");
    // A probe has no client certificate: `healthcheck --grpc` says so rather than failing a handshake.
    let vars: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let port = f.running().http_addr().port().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        let mut vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.extend([("KEEL_ENV", "test"), ("FIXTURE__HTTP__PORT", port.as_str())]);
        common::run_cli(&["healthcheck", "--grpc"], &vars)
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("client_auth is required"), "{err}");

    // A renewed certificate (and CA) is served without a restart.
    let new = write_pki(dir.path());
    eventually("the renewed certificate is served", || {
        let c = tls_channel(&url, dir.path(), &new.ca, true);
        async move { EchoClient::new(c).say(say("x", "")).await.is_ok() }
    })
    .await;
    let stale = EchoClient::new(tls_channel(&url, dir.path(), &old.ca, true)).say(say("x", "")).await;
    assert!(stale.is_err(), "the old certificate is no longer served");
    // The served certificate's expiry is exported for the expiry alert.
    let listener = if shared { "http" } else { "grpc" };
    let text = metrics(&f).await;
    let expiry = format!("tls_certificate_expiry_timestamp_seconds{{listener=\"{listener}\"}} ");
    let at: i64 = text.lines().find_map(|l| l.strip_prefix(&expiry)).expect(&expiry).parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(at > now, "{at} is not in the future");
    if !shared {
        // The public listener is untouched by grpc.tls.
        assert_eq!(client().get(f.url("/hello")).send().await.unwrap().status(), 200);
    }
    f.stop().await;
}

#[tokio::test]
async fn tls_and_mtls_on_the_grpc_port_with_a_certificate_reload() {
    tls_and_mtls(false).await;
}

#[tokio::test]
async fn tls_and_mtls_on_the_shared_port_with_a_certificate_reload() {
    tls_and_mtls(true).await;
}

#[tokio::test]
async fn production_refuses_plaintext_grpc_unless_told_the_network_encrypts() {
    let vars = [
        ("FIXTURE__HTTP__PORT", "0"),
        ("FIXTURE__APP__GRPC", "true"),
        ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://app.example"),
    ];
    let loaded = keel::app::Loader::new("fixture", keel::config::Profile::Production).env(vars).load().unwrap();
    let err = keel::app::start(keel_fixture::service(), loaded).await.unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("grpc.plaintext"), "{err}");
    let mut vars = vars.to_vec();
    vars.push(("FIXTURE__GRPC__PLAINTEXT", "true"));
    let loaded = keel::app::Loader::new("fixture", keel::config::Profile::Production).env(vars).load().unwrap();
    let running = keel::app::start(keel_fixture::service(), loaded).await.unwrap();
    running.shutdown(std::future::pending()).await.unwrap();
}

fn upstream(base: &str, attempts: u32) -> keel::http::client::UpstreamConfig {
    let mut cfg = keel::http::client::UpstreamConfig::default();
    cfg.base_url = base.to_owned();
    cfg.retry.max_attempts = attempts;
    cfg.retry.initial_delay = Duration::from_millis(1);
    cfg.retry.max_delay = Duration::from_millis(5);
    cfg.breaker.minimum_calls = 4;
    cfg.breaker.failure_rate = 0.5;
    cfg.breaker.open_wait = Duration::from_secs(60);
    cfg
}

#[tokio::test]
async fn the_client_retries_idempotent_methods_on_unavailable_and_opens_its_breaker() {
    let f = Fixture::start(&[("FIXTURE__APP__GRPC", "true")]).await;
    let metrics = keel::telemetry::Metrics::new();
    let client_metrics = keel::grpc::GrpcClientMetrics::new(&metrics).unwrap();
    let make = |attempts, idempotent: bool| {
        let cfg = upstream(&f.base, attempts);
        let breaker = std::sync::Arc::new(keel::resilience::breaker::CircuitBreaker::new("echo", cfg.breaker.clone()));
        let c = keel::grpc::GrpcClient::new("echo", &cfg, breaker, Some(client_metrics.clone())).unwrap();
        if idempotent { c.idempotent(["fixture.v1.Echo/Say"]) } else { c }
    };
    let handled = |code: &str| {
        let text = metrics.render();
        let line = format!(
            "grpc_client_handled_total{{grpc_code=\"{code}\",grpc_method=\"Say\",grpc_service=\"fixture.v1.Echo\",upstream=\"echo\"}} "
        );
        text.lines().find_map(|l| l.strip_prefix(&line).map(|n| n.parse::<u64>().unwrap())).unwrap_or(0)
    };

    // Idempotent: three attempts, each UNAVAILABLE; the caller gets the last status.
    let mut echo = EchoClient::new(make(3, true));
    let err = echo.say(say("x", "unavailable")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(handled("UNAVAILABLE"), 3);
    assert!(
        metrics.render().contains("grpc_client_retries_total{result=\"made\",upstream=\"echo\"} 2"),
        "{}",
        metrics.render()
    );
    // Not declared idempotent: one attempt.
    let mut once = EchoClient::new(make(3, false));
    assert_eq!(once.say(say("x", "unavailable")).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(handled("UNAVAILABLE"), 4);
    // A good call through the client, with its request id and deadline sent on.
    let reply = echo.say(say("ok", "")).await.unwrap().into_inner();
    assert_eq!(reply.text, "ok");
    assert!(reply.remaining_ms > 0 && reply.remaining_ms <= 10_000, "{}", reply.remaining_ms);
    assert_eq!(handled("OK"), 1);

    // Failures open the breaker: the next call is refused without reaching the server.
    let mut fragile = EchoClient::new(make(1, false));
    for _ in 0..4 {
        let _ = fragile.say(say("x", "unavailable")).await;
    }
    let served_before = grep(&metrics_text(&f).await, "grpc_server_started_total");
    let err = fragile.say(say("x", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("circuit open"), "{err:?}");
    assert_eq!(grep(&metrics_text(&f).await, "grpc_server_started_total"), served_before, "no call was made");
    f.stop().await;
}

async fn metrics_text(f: &Fixture) -> String {
    metrics(f).await
}

// Multi-threaded: the blocking reads of the process's output must not stall the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_continues_the_callers_trace_and_answers_healthcheck_grpc() {
    let mut p = common::Proc::spawn(&[("FIXTURE__APP__GRPC", "true"), ("FIXTURE__LOG__FORMAT", "json")]);
    let base = format!("http://{}", p.http.unwrap());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = Request::new(say("traced", ""));
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    req.metadata_mut().insert("x-request-id", "grpc-trace-1".parse().unwrap());
    let mut echo = EchoClient::new(channel(&base));
    let reply = echo.say(req).await.unwrap().into_inner();
    assert!(reply.traceparent.contains(trace_id), "the handler runs in the caller's trace: {reply:?}");

    let line = p.wait_for("\"echo said\"");
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["trace_id"], trace_id, "{line}");
    assert_eq!(log["request_id"], "grpc-trace-1", "{line}");
    let line = p.wait_for("\"call finished\"");
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["trace_id"], trace_id, "{line}");
    assert_eq!(log["fields"]["grpc_code"], "OK", "{line}");

    let port = p.http.unwrap().port().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        common::run_cli(&["healthcheck", "--grpc"], &[("KEEL_ENV", "test"), ("FIXTURE__HTTP__PORT", port.as_str())])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SERVING"), "{out}");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        common::run_cli(
            &["healthcheck", "--grpc", "fixture.v1.Nope"],
            &[("KEEL_ENV", "test"), ("FIXTURE__HTTP__PORT", "1")],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "nothing listens on port 1: {out}{err}");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), 0);
}

/// The services reflection lists on `base`, or the code it failed with.
async fn reflected(base: &str) -> Result<Vec<String>, Code> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel(base));
    let mut answers =
        client.server_reflection_info(tokio_stream::iter([ask])).await.map_err(|s| s.code())?.into_inner();
    match answers.message().await.map_err(|s| s.code())?.and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => panic!("not a list of services: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_is_off_unless_switched_on() {
    let off = Fixture::start(&[("FIXTURE__APP__GRPC", "true")]).await;
    assert_eq!(reflected(&off.base).await, Err(Code::Unimplemented));
    off.stop().await;
    let on = Fixture::start(&[("FIXTURE__APP__GRPC", "true"), ("FIXTURE__GRPC__REFLECTION", "true")]).await;
    let services = reflected(&on.base).await.unwrap();
    for name in ["fixture.v1.Echo", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{name} not in {services:?}");
    }
    on.stop().await;
}

#[tokio::test]
async fn a_jwt_interceptor_refuses_calls_without_a_valid_token_and_hands_over_the_claims() {
    const SECRET: &str = "fixture-hs256-secret-for-tests-0123456789";
    let f = Fixture::start(&[
        ("FIXTURE__APP__GRPC", "true"),
        ("FIXTURE__APP__AUTH", "true"),
        ("FIXTURE__SECURITY__JWT__ISSUER", "https://auth.fixture"),
        ("FIXTURE__SECURITY__JWT__KEYS__K1__ALGORITHM", "HS256"),
        ("FIXTURE__SECURITY__JWT__KEYS__K1__SECRET", SECRET),
    ])
    .await;
    let signer = |iss: &str| {
        keel::security::jwt::Jwt::builder()
            .issuer(iss)
            .key(keel::security::jwt::JwtKey::hs256("k1", &keel::config::Secret::new(SECRET)).unwrap())
            .sign_with("k1")
            .build()
            .unwrap()
    };
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let claims = serde_json::json!({"sub": "u1", "exp": exp, "iss": "https://auth.fixture"});
    let call = |token: Option<String>| {
        let mut echo = EchoClient::new(channel(&f.base));
        async move {
            let mut req = Request::new(say("hi", ""));
            if let Some(t) = token {
                req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            echo.say(req).await
        }
    };
    let reply = call(Some(signer("https://auth.fixture").issue(&claims).unwrap())).await.unwrap();
    assert_eq!(reply.into_inner().text, "u1: hi", "the handler gets the claims");
    let err = call(None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut foreign = claims.clone();
    foreign["iss"] = "https://evil".into();
    let err = call(Some(signer("https://evil").issue(&foreign).unwrap())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("refused"), "{err:?}");
    assert_eq!(serving(channel(&f.base), "").await, Some(true), "health needs no token");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_grpc_probes_a_tls_grpc_port_trusting_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path());
    let file = |n: &str| dir.path().join(n).display().to_string();
    let (cert, key) = (file("tls.crt"), file("tls.key"));
    let grpc_port = free_port().to_string();
    let env = [
        ("FIXTURE__APP__GRPC", "true"),
        ("FIXTURE__GRPC__PORT", grpc_port.as_str()),
        ("FIXTURE__GRPC__TLS__CERT_FILE", cert.as_str()),
        ("FIXTURE__GRPC__TLS__KEY_FILE", key.as_str()),
    ];
    let f = Fixture::start(&env).await;
    let mut owned: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    owned.push(("KEEL_ENV".into(), "test".into()));
    owned.push(("FIXTURE__HTTP__PORT".into(), f.running().http_addr().port().to_string()));
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::run_cli(&["healthcheck", "--grpc", "fixture.v1.Echo"], &vars)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("fixture.v1.Echo: SERVING"), "{out}");
    f.stop().await;
}
