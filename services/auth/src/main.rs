//! The auth service as its own process (see `cityevents` for all services in one).

fn main() -> std::process::ExitCode {
    keel::run(cityevents_auth::service())
}
