//! `symbols`: the HTTP/JSON and gRPC API (see the crate docs and `README.md`).

// mimalloc instead of the system allocator: under load glibc's malloc serialises threads that
// free memory another thread allocated (tokio moves tasks between workers).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let profile = match keel::config::Profile::parse(std::env::var(keel::config::PROFILE_ENV).ok().as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("symbols: {e}");
            return std::process::ExitCode::from(keel::app::exit::CONFIG);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match symbols::dev_defaults(profile, symbols::command_uses_dev_key(&args)) {
        Ok(defaults) => keel::run(symbols::service().config_defaults(defaults)),
        Err(e) => {
            eprintln!("symbols: the development token key: {e}");
            std::process::ExitCode::from(keel::app::exit::CONFIG)
        }
    }
}
