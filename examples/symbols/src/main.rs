//! `symbols`: the HTTP/JSON and gRPC API (see the crate docs and `README.md`).

// mimalloc instead of the system allocator: under load glibc's malloc serialises threads that
// free memory another thread allocated (tokio moves tasks between workers).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keel::run(symbols::service())
}
