//! The fixture service binary, for Keel's process-level tests.

fn main() -> std::process::ExitCode {
    keel::run(keel_fixture::service())
}
