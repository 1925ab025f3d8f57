//! CPU cost of Keel's HTTP stack per request, in process: the same `GET /hello` router called
//! bare and wrapped in `keel::http::stack`, one request at a time on one thread. No sockets and
//! no load generator, so the difference between the two is the stack alone; the wrk script
//! (`bench/http-stack.sh`) measures the whole server under load.
//!
//! `cargo bench -p keel-bench --bench http_stack`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

// The allocator Keel's binaries use (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::Router;
use axum::body::Body;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use keel_bench::{hello_request, hello_router as routes, production_logs};
use tower::ServiceExt;

async fn call(router: Router) -> usize {
    let resp = ServiceExt::<Request<Body>>::oneshot(router, hello_request()).await.unwrap();
    assert_eq!(resp.status(), 200);
    axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().len()
}

fn stack(c: &mut Criterion) {
    // Keel's log pipeline as a production service has it (JSON, info); no access log, so
    // nothing is written and the figure is the stack's own.
    let _guard = keel::telemetry::init(&production_logs()).unwrap();
    let mut cfg = keel::app::KeelConfig::default();
    cfg.cors.allowed_origins = vec!["https://app.example.com".into()];
    cfg.log.access_log = false;
    let metrics = keel::telemetry::Metrics::new();
    let (keel, _) = keel::http::stack("bench", &cfg, &metrics, routes(), Router::new()).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group("GET /hello in process");
    g.throughput(Throughput::Elements(1));
    // Routers are `Arc`s inside: the clone per call is the same small cost for both.
    let bare = routes().with_state::<()>(());
    g.bench_function("baseline: bare axum router", |b| b.to_async(&rt).iter(|| call(bare.clone())));
    // What one `Router::layer` call costs before its layer does anything: axum clones the
    // layered route (a box) on every request and boxes its future.
    let one = routes().layer(tower::layer::util::Identity::new()).with_state::<()>(());
    g.bench_function("bare axum router + Router::layer(Identity)", |b| b.to_async(&rt).iter(|| call(one.clone())));
    let keel = keel.with_state::<()>(());
    g.bench_function("keel::http::stack", |b| b.to_async(&rt).iter(|| call(keel.clone())));
    g.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
