//! `keel audit`: the production-readiness audit of the seeds, as a tool.
//!
//! The static part reads a repository in any language and its deployment files, and reports
//! what the seeds' hand-written audits found in real services: images that run as root,
//! manifests without probes or limits, alerts without runbooks, committed secrets, `panic` in
//! start-up paths, CORS open to every origin, servers without timeouts. Each finding has a file,
//! a line, a severity, the reason and the fix; the report scores readiness per area and lists a
//! checklist in the style of seed 004's. See `docs/audit.md`.
//!
//! ```no_run
//! use keel_audit::{Options, Severity};
//!
//! let report = keel_audit::audit(&Options::new(".")).unwrap();
//! println!("{}", keel_audit::report::markdown(&report));
//! assert!(report.worst().is_none_or(|s| s < Severity::High));
//! ```

pub mod baseline;
pub mod checks;
pub mod cli;
mod finding;
pub mod live;
mod repo;
pub mod report;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use finding::{Area, Finding, Rule, Severity};
pub use repo::{Repo, file_name, is_test_path};

/// Why an audit could not run (a finding is not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The root is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// A file or directory could not be read.
    #[error("{0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The live audit could not run: the service did not start, or its URL is unusable.
    #[error("live audit: {0}")]
    Live(String),
    /// The baseline file is not a baseline.
    #[error("baseline {0}: {1}")]
    Baseline(PathBuf, String),
}

/// What to audit and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The repository's root.
    pub root: PathBuf,
    /// Path prefixes, relative to the root, left out of every check.
    pub exclude: Vec<String>,
    /// Rendered Kubernetes manifests (kustomize or helm output) read besides the repository's.
    pub manifests: Vec<PathBuf>,
}

impl Options {
    /// Audits `root` with nothing excluded and no extra manifests.
    pub fn new(root: impl Into<PathBuf>) -> Options {
        Options { root: root.into(), exclude: Vec::new(), manifests: Vec::new() }
    }
}

/// Findings as they are collected, and which rules were evaluated (a rule never evaluated, such
/// as the Dockerfile rules in a repository without one, is "not applicable" in the checklist).
#[derive(Debug, Default)]
pub struct Collector {
    findings: Vec<Finding>,
    checked: BTreeSet<&'static str>,
    notes: Vec<String>,
}

impl Collector {
    /// Records that `rule` was evaluated (whether or not it found anything).
    pub fn checked(&mut self, rule: &'static Rule) {
        self.checked.insert(rule.id);
    }

    /// Records a finding against `rule` (which counts as evaluated).
    pub fn find(&mut self, rule: &'static Rule, path: &str, line: Option<u32>, evidence: impl Into<String>) {
        self.checked.insert(rule.id);
        self.findings.push(Finding { rule, path: path.to_owned(), line, evidence: evidence.into() });
    }

    /// A remark for the report: a check skipped and why (promtool missing, a file not parsed).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether `rule` has been evaluated.
    pub fn was_checked(&self, rule: &Rule) -> bool {
        self.checked.contains(rule.id)
    }

    /// The findings so far.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }
}

/// The outcome of an audit.
#[derive(Debug)]
pub struct Report {
    /// What was audited (the root as given).
    pub target: String,
    /// Open findings, worst first, then by place.
    pub findings: Vec<Finding>,
    /// Findings a baseline accepted, with the baseline's reason.
    pub accepted: Vec<(Finding, String)>,
    /// Ids of the rules evaluated.
    pub checked: BTreeSet<&'static str>,
    /// Checks skipped or degraded, and why.
    pub notes: Vec<String>,
    /// How many files were looked at.
    pub files: usize,
}

/// One checklist line: a rule and how the audited code stands against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Evaluated, nothing open.
    Pass,
    /// Evaluated, findings open.
    Fail,
    /// Evaluated, every finding accepted by the baseline (scored as passed: each has a reason).
    Accepted,
    /// Nothing to evaluate it on.
    NotApplicable,
}

impl Report {
    /// The worst open severity, if any finding is open.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(Finding::severity).max()
    }

    /// Open findings at or above `severity`.
    pub fn at_least(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity() >= severity).count()
    }

    /// Where `rule` stands.
    pub fn status(&self, rule: &Rule) -> Status {
        if self.findings.iter().any(|f| f.rule.id == rule.id) {
            Status::Fail
        } else if self.accepted.iter().any(|(f, _)| f.rule.id == rule.id) {
            Status::Accepted
        } else if self.checked.contains(rule.id) {
            Status::Pass
        } else {
            Status::NotApplicable
        }
    }

    /// The readiness score of `area`: checklist items passed and items applicable.
    pub fn score(&self, area: Area) -> (usize, usize) {
        let mut passed = 0;
        let mut applicable = 0;
        for rule in checks::rules().filter(|r| r.area == area) {
            match self.status(rule) {
                Status::Pass | Status::Accepted => {
                    passed += 1;
                    applicable += 1;
                }
                Status::Fail => applicable += 1,
                Status::NotApplicable => {}
            }
        }
        (passed, applicable)
    }
}

/// Runs the static audit of `options.root`.
pub fn audit(options: &Options) -> Result<Report, AuditError> {
    let repo = Repo::open(&options.root, &options.exclude)?;
    let mut out = Collector::default();
    checks::run(&repo, &options.manifests, &mut out)?;
    Ok(finish(out, options.root.display().to_string(), repo.files().len()))
}

/// Runs the live audit of a service, and the static audit of `options.root` unless `live_only`.
pub async fn audit_live(options: &Options, live: &live::LiveOptions, live_only: bool) -> Result<Report, AuditError> {
    let mut out = Collector::default();
    let mut files = 0;
    if !live_only {
        let repo = Repo::open(&options.root, &options.exclude)?;
        checks::run(&repo, &options.manifests, &mut out)?;
        files = repo.files().len();
    }
    live::run(live, &mut out).await?;
    let target = if live_only { live.url.clone() } else { format!("{} and {}", options.root.display(), live.url) };
    Ok(finish(out, target, files))
}

fn finish(out: Collector, target: String, files: usize) -> Report {
    let Collector { mut findings, checked, notes } = out;
    findings.sort_by(|a, b| {
        b.severity()
            .cmp(&a.severity())
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.line.cmp(&b.line))
            .then_with(|| a.rule.id.cmp(b.rule.id))
    });
    findings
        .dedup_by(|a, b| a.rule.id == b.rule.id && a.path == b.path && a.line == b.line && a.evidence == b.evidence);
    Report { target, findings, accepted: Vec::new(), checked, notes, files }
}
