//! `telemetry.sampling_ratio`: new traces are sampled at the ratio; a sampled caller is always
//! followed. Its own test binary, because tracing is set up once per process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::otlp::{Receiver, hex};
use common::{Fixture, client, eventually};
use keel::telemetry::TelemetryConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_zero_samples_no_new_trace_but_follows_a_sampled_caller() {
    let receiver = Receiver::default();
    let addr = receiver.start().await;

    let mut telemetry = TelemetryConfig::default();
    telemetry.otlp.endpoint = Some(format!("http://{addr}"));
    telemetry.sampling_ratio = Some(0.0);
    let guard = common::otlp::init_json("1", telemetry);

    let f = Fixture::start(&[]).await;
    for _ in 0..20 {
        assert_eq!(client().get(f.url("/hello")).send().await.unwrap().status(), 200);
    }
    let followed = "0af7651916cd43dd8448eb211c80319c";
    let resp = client()
        .get(f.url("/items/1"))
        .header("traceparent", format!("00-{followed}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    f.stop().await;
    let g = guard.clone();
    tokio::task::spawn_blocking(move || g.flush()).await.unwrap();
    eventually("the followed trace exported", || {
        let r = receiver.clone();
        async move { !r.0.lock().unwrap().is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans: Vec<_> = receiver.spans().into_iter().map(|s| (s.name, hex(&s.trace_id))).collect();
    assert_eq!(spans.len(), 1, "only the sampled caller's request: {spans:?}");
    assert_eq!(spans[0], ("GET /items/{id}".to_owned(), followed.to_owned()));
    guard.shutdown();
}
