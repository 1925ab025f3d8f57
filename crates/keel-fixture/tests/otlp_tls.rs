//! OTLP/gRPC over TLS: a receiver with a certificate from a private CA, trusted through
//! `telemetry.otlp.ca_file`, gets the spans and the `telemetry.otlp.headers`.
//!
//! Its own test binary, because logging and tracing are set up once per process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::eventually;
use common::otlp::{Receiver, attr, string, test_pki};
use keel::config::Secret;
use keel::telemetry::TelemetryConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_receiver_with_the_configured_headers() {
    let (ca, cert, key) = test_pki();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let receiver = Receiver::default();
    let addr = receiver.start_tls(&cert, &key).await;

    let mut telemetry = TelemetryConfig::default();
    telemetry.otlp.endpoint = Some(format!("https://{addr}"));
    telemetry.otlp.ca_file = Some(ca_file);
    telemetry.otlp.headers.insert("x-api-key".into(), Secret::new("secret"));
    telemetry.otlp.timeout = Some(Duration::from_secs(5));
    let guard = common::otlp::init_json("1.0.0", telemetry);

    tracing::info_span!("over tls").in_scope(|| tracing::warn!("inside"));
    let g = guard.clone();
    tokio::task::spawn_blocking(move || g.flush()).await.unwrap();
    eventually("span exported over TLS", || {
        let r = receiver.clone();
        async move { r.spans().iter().any(|s| s.name == "over tls") }
    })
    .await;
    let headers = receiver.1.lock().unwrap().clone();
    assert!(!headers.is_empty());
    assert!(headers.iter().all(|h| h.get("x-api-key").is_some_and(|v| v == "secret")), "{headers:?}");
    let batches = receiver.0.lock().unwrap().clone();
    let resource = batches[0].resource_spans[0].resource.clone().expect("resource");
    assert_eq!(string(attr(&resource.attributes, "service.name")).as_deref(), Some("fixture"));
    guard.shutdown();
}
