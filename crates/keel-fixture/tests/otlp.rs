//! Spans are exported over OTLP/gRPC: a receiver runs in this process and checks what arrives.
//!
//! Its own test binary, because logging and tracing are set up once per process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::otlp::{Receiver, attr, hex, string};
use common::{Fixture, client, eventually};
use keel::telemetry::TelemetryConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    let receiver = Receiver::default();
    let addr = receiver.start().await;

    let mut telemetry = TelemetryConfig::default();
    telemetry.otlp.endpoint = Some(format!("http://{addr}"));
    telemetry.otlp.timeout = Some(Duration::from_secs(5));
    let guard = common::otlp::init_json("9.9.9", telemetry);

    // An upstream that answers with the traceparent it received.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let echo = axum::Router::new().route(
        "/trace",
        axum::routing::get(|h: http::HeaderMap| async move {
            h.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        }),
    );
    tokio::spawn(async move { axum::serve(upstream, echo).await });
    let base = format!("http://{upstream_addr}");
    // Redis, when it runs here: its calls are child spans of the request's.
    let redis = keel::testing::require("Redis", &keel::testing::redis_url())
        .then(|| keel::testing::TestRedis::new(&keel::testing::redis_url()));
    let mut env =
        vec![("FIXTURE__APP__UPSTREAM", "true".to_owned()), ("FIXTURE__UPSTREAMS__ECHO__BASE_URL", base.clone())];
    if let Some(keys) = &redis {
        env.push(("FIXTURE__APP__REDIS", "true".to_owned()));
        env.push(("FIXTURE__REDIS__URL", keel::testing::redis_url()));
        env.push(("FIXTURE__REDIS__KEY_PREFIX", keys.prefix().to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = Fixture::start(&env).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = client()
        .get(f.url("/items/7"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // What an outbound call made inside the handler would carry: same trace, the server span.
    let traced = |path: &str| {
        let url = f.url(path);
        async move {
            let header = format!("00-{trace_id}-{parent}-01");
            client().get(url).header("traceparent", header).send().await.unwrap().text().await.unwrap()
        }
    };
    let outbound = traced("/traceparent").await;
    let parts: Vec<&str> = outbound.split('-').collect();
    assert_eq!(parts.len(), 4, "{outbound}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"), "{outbound}");
    assert_ne!(parts[2], parent, "the parent of an outbound call is the server span");
    // Keel's HTTP client sends it: the upstream sees the caller's trace.
    let seen = traced("/proxy/trace").await;
    assert_eq!(seen.split('-').nth(1), Some(trace_id), "upstream got: {seen}");
    if redis.is_some() {
        eventually("Redis to answer", || async {
            let header = format!("00-{trace_id}-{parent}-01");
            let r = client().get(f.url("/cache/otlp")).header("traceparent", header).send().await.unwrap();
            r.status() == 404
        })
        .await;
    }
    f.stop().await;
    let g = guard.clone();
    tokio::task::spawn_blocking(move || g.flush()).await.unwrap();

    eventually("span exported", || {
        let r = receiver.clone();
        async move { !r.0.lock().unwrap().is_empty() }
    })
    .await;
    let batches = receiver.0.lock().unwrap().clone();
    let resource_spans: Vec<_> = batches.iter().flat_map(|b| b.resource_spans.iter()).collect();
    let resource = resource_spans[0].resource.as_ref().expect("resource");
    assert_eq!(string(attr(&resource.attributes, "service.name")).as_deref(), Some("fixture"));
    assert_eq!(string(attr(&resource.attributes, "service.version")).as_deref(), Some("9.9.9"));
    assert_eq!(string(attr(&resource.attributes, "deployment.environment.name")).as_deref(), Some("test"));

    let spans: Vec<_> = resource_spans.iter().flat_map(|r| r.scope_spans.iter()).flat_map(|s| s.spans.iter()).collect();
    let span = spans
        .iter()
        .find(|s| s.name == "GET /items/{id}")
        .unwrap_or_else(|| panic!("no server span; got {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
    assert_eq!(hex(&span.trace_id), trace_id, "continues the caller's trace");
    assert_eq!(hex(&span.parent_span_id), parent, "child of the caller's span");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(string(attr(&span.attributes, "http.route")).as_deref(), Some("/items/{id}"));
    assert_eq!(string(attr(&span.attributes, "http.request.method")).as_deref(), Some("GET"));
    assert!(attr(&span.attributes, "request_id").is_some());
    let outbound_parent = spans.iter().find(|s| s.name == "GET /traceparent").expect("second span");
    assert_eq!(hex(&outbound_parent.span_id), parts[2], "injected span id is the server span's");
    if redis.is_some() {
        // The Redis GET of `/cache/{key}`: a client span under that request's server span, with
        // the database conventions' attributes and neither key nor value.
        let servers: Vec<_> = spans.iter().filter(|s| s.name == "GET /cache/{key}").map(|s| &s.span_id).collect();
        let get = spans
            .iter()
            .find(|s| s.name == "GET" && servers.contains(&&s.parent_span_id))
            .unwrap_or_else(|| panic!("no Redis span; got {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
        assert_eq!(get.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(hex(&get.trace_id), trace_id);
        assert_eq!(string(attr(&get.attributes, "db.system.name")).as_deref(), Some("redis"));
        assert_eq!(string(attr(&get.attributes, "db.operation.name")).as_deref(), Some("GET"));
        assert_eq!(string(attr(&get.attributes, "server.address")).as_deref(), Some("127.0.0.1"));
        assert!(attr(&get.attributes, "server.port").is_some());
        assert!(!format!("{:?}", get.attributes).contains("otlp"), "no key in the span: {:?}", get.attributes);
    }
    guard.shutdown();
}
