//! The gateway service as its own process (see `cityevents` for all services in one).

// mimalloc instead of the system allocator: under load glibc's malloc serialises threads that
// free memory another thread allocated (tokio moves tasks between workers), see
// docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keel::run(cityevents_gateway::service())
}
