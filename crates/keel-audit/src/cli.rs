//! The command line: `keel audit [PATH] [options]` (also `cityevents audit`).
//!
//! Exit status: 0 when no open finding reaches `--fail-on` (default `high`), 1 when one does, 2
//! on a usage error or when the audit cannot run (an unreadable root or baseline).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::baseline::Baseline;
use crate::report::Format;
use crate::{Options, Severity, checks};

/// The baseline read from the audited root when `--baseline` is not given.
pub const DEFAULT_BASELINE: &str = ".keel-audit-baseline.json";

/// Exit status when a finding reaches the threshold.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit status on a usage error or an audit that could not run.
pub const EXIT_ERROR: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "keel", version, about = "Keel's command-line tools", propagate_version = true)]
struct Keel {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Audit a repository's production readiness (Dockerfiles, compose, Kubernetes, Prometheus
    /// rules, CI, lock files, secrets, and Go / Node / Rust code).
    Audit(AuditArgs),
}

/// `keel audit` options.
#[derive(Args, Debug)]
#[command(after_help = "Exit status: 0 when no open finding reaches --fail-on, 1 when one does, 2 on errors.\n\
Baseline: findings listed in PATH/.keel-audit-baseline.json (or --baseline FILE) are accepted; \
--write-baseline FILE records the current findings there. Docs: docs/audit.md.")]
pub struct AuditArgs {
    /// The repository to audit.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Report format on stdout: markdown, json or sarif.
    #[arg(long, short = 'f', default_value = "markdown", value_parser = parse_format)]
    format: Format,
    /// Write the stdout report to FILE instead.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write the report as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the report as SARIF 2.1.0 to FILE (code scanning upload).
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
    /// Exit 1 when an open finding is at least this severe: info, low, medium, high, critical
    /// or never.
    #[arg(long, default_value = "high", value_parser = parse_threshold, value_name = "SEVERITY")]
    fail_on: Threshold,
    /// Accept the findings listed in FILE (default: PATH/.keel-audit-baseline.json if present).
    #[arg(long, value_name = "FILE", conflicts_with = "no_baseline")]
    baseline: Option<PathBuf>,
    /// Ignore PATH/.keel-audit-baseline.json (also ignored with --live-only).
    #[arg(long)]
    no_baseline: bool,
    /// Write every current finding (open and accepted) to FILE as a baseline, then exit 0.
    #[arg(long, value_name = "FILE")]
    write_baseline: Option<PathBuf>,
    /// The reason recorded with each entry by --write-baseline.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "accepted when the baseline was written; give the reason",
        requires = "write_baseline"
    )]
    reason: String,
    /// Leave out files under this path prefix (repeatable).
    #[arg(long, value_name = "PREFIX")]
    exclude: Vec<String>,
    /// Also check these rendered Kubernetes manifests (`kustomize build … > out.yaml`,
    /// `helm template …`); repeatable.
    #[arg(long = "manifests", value_name = "FILE")]
    manifests: Vec<PathBuf>,
    /// List the rules (the checklist) and exit.
    #[arg(long)]
    list_rules: bool,
    /// Live audit: the running service's base URL (http://). With --run, where the started
    /// service will listen.
    #[arg(long, value_name = "URL", help_heading = "Live audit")]
    url: Option<String>,
    /// Where the service's probes and /metrics are, when not on --url (its management port).
    #[arg(long, value_name = "URL", requires = "url", help_heading = "Live audit")]
    management_url: Option<String>,
    /// Start the service with this command (run as `sh -c 'exec CMD'`; set variables with
    /// `env A=b ./svc`). Enables the log, trace and SIGTERM-drain checks.
    #[arg(long, value_name = "CMD", requires = "url", help_heading = "Live audit")]
    run: Option<String>,
    /// Put a dependency behind the auditor's fault proxy (repeatable): NAME=HOST:PORT. The
    /// command finds the proxy's address in KEEL_AUDIT_<NAME>_ADDR; readiness must drop when
    /// it is cut and recover when it is back.
    #[arg(long = "dependency", value_name = "NAME=HOST:PORT", requires = "run", value_parser = crate::live::Dependency::parse, help_heading = "Live audit")]
    dependencies: Vec<crate::live::Dependency>,
    /// An origin the service allows (https://app.example): look-alikes of it must be refused.
    #[arg(long, value_name = "ORIGIN", requires = "url", help_heading = "Live audit")]
    origin: Option<String>,
    /// The path used by the CORS, error, body-limit, rate-limit and drain checks.
    #[arg(long = "path", value_name = "PATH", default_value = "/", requires = "url", help_heading = "Live audit")]
    live_path: String,
    /// A path whose request takes a while: started before SIGTERM, it must complete.
    #[arg(long, value_name = "PATH", requires = "run", help_heading = "Live audit")]
    slow_path: Option<String>,
    /// How long the started service may take to answer.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Live audit")]
    startup_timeout: std::time::Duration,
    /// Bound for slow clients, readiness after a cut, and the drain.
    #[arg(long, value_name = "DURATION", default_value = "45s", value_parser = humantime::parse_duration, help_heading = "Live audit")]
    bound: std::time::Duration,
    /// Bound for closing an idle keep-alive connection.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration, help_heading = "Live audit")]
    idle_bound: std::time::Duration,
    /// Requests sent (50 at a time) to look for rate limiting.
    #[arg(long, value_name = "N", default_value_t = 200, help_heading = "Live audit")]
    burst: usize,
    /// A header sent with every request (repeatable): `--header 'Authorization: Bearer …'`.
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "url", value_parser = parse_header, help_heading = "Live audit")]
    headers: Vec<(String, String)>,
    /// The OTLP transport the started service is told to use (OTEL_EXPORTER_OTLP_PROTOCOL):
    /// grpc, http/protobuf or http/json. The audit's receiver serves all three.
    #[arg(long, value_name = "PROTOCOL", default_value = "http/protobuf", value_parser = crate::live::OtlpProtocol::parse, requires = "run", help_heading = "Live audit")]
    otlp_protocol: crate::live::OtlpProtocol,
    /// Only the live audit (PATH is not read).
    #[arg(long, requires = "url", help_heading = "Live audit")]
    live_only: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once(':').ok_or_else(|| format!("`{s}`: NAME: VALUE"))?;
    let (k, v) = (k.trim(), v.trim());
    let ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok || v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("`{s}`: not a header (NAME: VALUE, one line)"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("`{s}`: markdown, json or sarif"))
}

/// `--fail-on`: a severity, or `never` (`None`).
#[derive(Clone, Copy, Debug)]
struct Threshold(Option<Severity>);

fn parse_threshold(s: &str) -> Result<Threshold, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Threshold(None));
    }
    Severity::parse(s)
        .map(|v| Threshold(Some(v)))
        .ok_or_else(|| format!("`{s}`: info, low, medium, high, critical or never"))
}

/// `keel …`: parses `args` (the program name first) and runs the command.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match Keel::try_parse_from(args) {
        Ok(Keel { command: Command::Audit(a) }) => run(&a, "keel audit"),
        Err(e) => exit_clap(e),
    }
}

/// `<program> audit …` for another binary (`cityevents audit`): `args` are what follows
/// `audit`, `program` names the command in messages.
pub fn audit_main(program: &str, args: impl IntoIterator<Item = OsString>) -> ExitCode {
    #[derive(Parser, Debug)]
    struct Only {
        #[command(flatten)]
        args: AuditArgs,
    }
    let argv = std::iter::once(OsString::from(program)).chain(args);
    match Only::try_parse_from(argv) {
        Ok(o) => run(&o.args, program),
        Err(e) => exit_clap(e),
    }
}

/// The name of the first of SIGINT, SIGTERM or SIGHUP received.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

fn exit_clap(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() { ExitCode::from(EXIT_ERROR) } else { ExitCode::SUCCESS }
}

fn write(path: &Path, text: &str, program: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("{program}: {}: {e}", path.display());
            false
        }
    }
}

fn run(a: &AuditArgs, program: &str) -> ExitCode {
    if a.list_rules {
        for r in checks::rules() {
            println!("{:<34} {:<8} {:<13} {}", r.id, r.severity, format!("{:?}", r.area).to_ascii_lowercase(), r.title);
        }
        return ExitCode::SUCCESS;
    }
    let options = Options { root: a.path.clone(), exclude: a.exclude.clone(), manifests: a.manifests.clone() };
    let result = match &a.url {
        None => crate::audit(&options),
        Some(url) => {
            let live = crate::live::LiveOptions {
                url: url.clone(),
                management_url: a.management_url.clone(),
                run: a.run.clone(),
                dependencies: a.dependencies.clone(),
                origin: a.origin.clone(),
                startup_timeout: a.startup_timeout,
                bound: a.bound,
                idle_bound: a.idle_bound,
                burst: a.burst.max(1),
                path: if a.live_path.starts_with('/') { a.live_path.clone() } else { format!("/{}", a.live_path) },
                slow_path: a.slow_path.clone(),
                headers: a.headers.clone(),
                otlp_protocol: a.otlp_protocol,
            };
            match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                // Interrupted, the audit's future is dropped, and with it the service it started
                // (its process group is killed).
                Ok(rt) => rt.block_on(async {
                    tokio::select! {
                        r = crate::audit_live(&options, &live, a.live_only) => r,
                        s = interrupted() => Err(crate::AuditError::Live(format!("interrupted by {s}"))),
                    }
                }),
                Err(e) => Err(crate::AuditError::Live(format!("runtime: {e}"))),
            }
        }
    };
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let baseline_path = match (&a.baseline, a.no_baseline || a.live_only) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(a.path.join(DEFAULT_BASELINE)).filter(|p| p.is_file()),
        (None, true) => None,
    };
    if let Some(path) = &baseline_path {
        match Baseline::load(path) {
            Ok(b) => {
                // An entry of a rule not evaluated this run (a live rule in a static run) is not stale.
                for stale in b.apply(&mut report).into_iter().filter(|e| report.checked.contains(e.rule.as_str())) {
                    let note =
                        format!("baseline entry matches nothing (fixed? remove it): {} {}", stale.rule, stale.path);
                    eprintln!("{program}: {note}");
                    report.notes.push(note);
                }
            }
            Err(e) => {
                eprintln!("{program}: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        }
    }
    if let Some(path) = &a.write_baseline {
        let b = Baseline::from_report(&report, &a.reason);
        if !write(path, &b.to_json(), program) {
            return ExitCode::from(EXIT_ERROR);
        }
        eprintln!("{program}: wrote {} accepted finding(s) to {}", b.accepted.len(), path.display());
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for (path, format) in [(&a.markdown, Format::Markdown), (&a.json, Format::Json), (&a.sarif, Format::Sarif)] {
        if let Some(p) = path {
            ok &= write(p, &format.render(&report), program);
        }
    }
    let text = a.format.render(&report);
    match &a.output {
        Some(p) => ok &= write(p, &text, program),
        // A reader that stops early (`| head`) is not an error worth a panic.
        None => {
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
        }
    }
    if !ok {
        return ExitCode::from(EXIT_ERROR);
    }
    match a.fail_on.0 {
        Some(t) if report.at_least(t) > 0 => {
            eprintln!("{program}: {} open finding(s) at or above {t}", report.at_least(t));
            ExitCode::from(EXIT_FINDINGS)
        }
        _ => ExitCode::SUCCESS,
    }
}
