//! Calls `GET /hello` N times in process, bare or through `keel::http::stack`, for counting
//! instructions per request with callgrind — repeatable to the instruction on a machine whose
//! timings drift by several percent between runs:
//!
//! ```text
//! bash bench/stack-instructions.sh        # builds it, runs it under callgrind, prints a table
//! ```
//!
//! `stack_instructions TARGET N` with TARGET `bare`, `keel` (the production stack, no access
//! line), `keel_access_log` (with one) or `ablate` (the stack built layer by layer, leaving out
//! the layers named in `SKIP=a,b`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::Router;
use axum::body::Body;
use http::Request;
use keel_bench::{hello_request, hello_router as routes, production_logs};
use tower::ServiceExt;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "keel".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let _guard = keel::telemetry::init(&production_logs()).unwrap();
    let mut cfg = keel::app::KeelConfig::default();
    cfg.cors.allowed_origins = vec!["https://app.example.com".into()];
    cfg.log.access_log = target == "keel_access_log";
    let metrics = keel::telemetry::Metrics::new();
    let router = match target.as_str() {
        "bare" => routes(),
        "keel" | "keel_access_log" => keel::http::stack("bench", &cfg, &metrics, routes(), Router::new()).unwrap().0,
        "ablate" => {
            let skip = std::env::var("SKIP").unwrap_or_default();
            let skip: Vec<&str> = skip.split(',').collect();
            keel_bench::ablated_stack(&cfg, &metrics, &skip).unwrap_or_else(|e| {
                eprintln!("SKIP: {e}");
                std::process::exit(64);
            })
        }
        other => {
            eprintln!("unknown target {other}: bare | keel | keel_access_log | ablate");
            std::process::exit(64);
        }
    }
    .with_state::<()>(());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for _ in 0..n {
            let resp = ServiceExt::<Request<Body>>::oneshot(router.clone(), hello_request()).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            std::hint::black_box(body);
        }
    });
}
