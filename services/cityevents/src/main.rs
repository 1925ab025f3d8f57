//! City Events launcher.

fn main() -> std::process::ExitCode {
    keel::run(cityevents_gateway::service())
}
