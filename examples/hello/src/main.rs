//! The smallest Keel service. Run with `cargo run -p hello`, then `curl localhost:8080/hello`.

// mimalloc instead of the system allocator: under load glibc's malloc serialises threads that
// free memory another thread allocated (tokio moves tasks between workers), see
// docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::{Json, Router, routing::get};
use serde_json::{Value, json};

async fn hello() -> Json<Value> {
    Json(json!({ "message": "hello" }))
}

fn main() -> std::process::ExitCode {
    keel::run(keel::Service::new(keel::build_info!()).router(Router::new().route("/hello", get(hello))))
}
