//! `symbols-worker`: consumes `symbol.*` into per-project counters (see `symbols::worker`).

// mimalloc instead of the system allocator: under load glibc's malloc serialises threads that
// free memory another thread allocated (tokio moves tasks between workers).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keel::run(symbols::worker_service())
}
