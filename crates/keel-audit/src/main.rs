//! `keel`: Keel's command-line tools. `keel audit [PATH]` audits a repository's production
//! readiness; see `keel audit --help` and `docs/audit.md`.

fn main() -> std::process::ExitCode {
    keel_audit::cli::main(std::env::args_os())
}
