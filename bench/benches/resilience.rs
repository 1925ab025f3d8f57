//! Resilience primitives, each against a bare baseline in the same run:
//! breaker overhead per call, retry overhead on the success path, in-process limiter decisions.
//!
//! `cargo bench -p keel-bench --bench resilience`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel::resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use keel::resilience::rate_limit::{LocalLimiter, RateLimitPolicy};
use keel::resilience::retry::{Retry, RetryConfig};

fn breaker(c: &mut Criterion) {
    let b = CircuitBreaker::new("bench", BreakerConfig::default());
    let mut g = c.benchmark_group("breaker");
    g.bench_function("baseline: no breaker", |bench| bench.iter(|| black_box(1u64) + 1));
    g.bench_function("acquire + record success", |bench| {
        bench.iter(|| {
            let permit = b.try_acquire().unwrap();
            permit.record(Outcome::Success);
        })
    });
    g.finish();
}

fn retry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let r = Retry::new(RetryConfig::default());
    let mut g = c.benchmark_group("retry");
    g.bench_function("baseline: call once", |bench| {
        bench.to_async(&rt).iter(|| async { black_box(async { Ok::<u32, ()>(1) }.await) })
    });
    g.bench_function("through Retry::run, success", |bench| {
        bench.to_async(&rt).iter(|| r.run(|_| async { Ok::<u32, ()>(1) }, |o| o.is_err()))
    });
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let policy = RateLimitPolicy { limit: u32::MAX / 2, ..RateLimitPolicy::default() };
    let l = LocalLimiter::new(&policy);
    let keys: Vec<String> = (0..1000).map(|i| format!("ip=10.0.{}.{}", i / 256, i % 256)).collect();
    let mut g = c.benchmark_group("local limiter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one key", |bench| bench.iter(|| black_box(l.check("ip=10.0.0.1").allowed)));
    let mut i = 0usize;
    g.bench_function("1000 keys round robin", |bench| {
        bench.iter(|| {
            i = (i + 1) % keys.len();
            black_box(l.check(&keys[i]).allowed)
        })
    });
    g.finish();
}

criterion_group!(benches, breaker, retry, limiter);
criterion_main!(benches);
