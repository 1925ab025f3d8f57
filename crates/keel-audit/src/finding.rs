//! What the audit reports: rules (the checklist), findings against them, their severities and
//! the areas the readiness score is given for.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// How bad a finding is, in the seeds' terms: critical blocks production, info only informs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; never fails a run unless `--fail-on info`.
    Info,
    /// A hardening step missing.
    Low,
    /// A production risk under some conditions (a slow peer, a restart, a second replica).
    Medium,
    /// A production risk under normal operation.
    High,
    /// A production blocker: a leaked secret, a service that cannot be probed.
    Critical,
}

impl Severity {
    /// Every severity, least severe first.
    pub const ALL: [Severity; 5] =
        [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    /// The lowercase name used in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses `info`, `low`, `medium`, `high` or `critical` (any case).
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The areas of the readiness score, after seed 004's checklist sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Area {
    /// Secrets, environment files, hard-coded values.
    Configuration,
    /// Probes and health checks.
    Health,
    /// Logs, metrics, traces, alerts and their runbooks.
    Observability,
    /// Start-up, shutdown, timeouts, failures of dependencies.
    Resilience,
    /// CORS, secrets in images, privileges.
    Security,
    /// Images: user, base, stages, health checks.
    Containers,
    /// Compose files and Kubernetes manifests.
    Deployment,
    /// CI and reproducible builds.
    Delivery,
}

impl Area {
    /// Every area, in report order.
    pub const ALL: [Area; 8] = [
        Area::Configuration,
        Area::Health,
        Area::Observability,
        Area::Resilience,
        Area::Security,
        Area::Containers,
        Area::Deployment,
        Area::Delivery,
    ];

    /// The heading used in reports.
    pub fn title(self) -> &'static str {
        match self {
            Area::Configuration => "Environment & configuration",
            Area::Health => "Health checks & readiness",
            Area::Observability => "Logging & observability",
            Area::Resilience => "Resilience & error handling",
            Area::Security => "Security",
            Area::Containers => "Docker & images",
            Area::Deployment => "Deployment (compose, Kubernetes)",
            Area::Delivery => "Delivery (CI, builds)",
        }
    }
}

/// One checklist item: what is checked, why it matters and how to fix it.
#[derive(Debug)]
pub struct Rule {
    /// Stable identifier, `<kind>/<name>` (`docker/root-user`): baselines and SARIF key on it.
    pub id: &'static str,
    /// The checklist line, phrased as the state wanted ("Containers run as a non-root user").
    pub title: &'static str,
    /// The severity of a finding against it.
    pub severity: Severity,
    /// The area it scores in.
    pub area: Area,
    /// Where the seeds raise it (`seed 000 #15`), or empty.
    pub seed: &'static str,
    /// Why a finding matters, in the seeds' words.
    pub why: &'static str,
    /// What to do about it.
    pub fix: &'static str,
}

/// One problem found: a rule broken at a place, with the evidence.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The rule broken.
    pub rule: &'static Rule,
    /// The file, relative to the audited root with `/` separators; empty for the repository as a
    /// whole (no CI configuration, say).
    pub path: String,
    /// The 1-based line, when the finding has one.
    pub line: Option<u32>,
    /// What was seen: the offending line or the missing piece, in a sentence.
    pub evidence: String,
}

impl Finding {
    /// The severity (the rule's).
    pub fn severity(&self) -> Severity {
        self.rule.severity
    }

    /// A stable identity that survives lines moving and counts changing: the rule, the file and
    /// the evidence with its whitespace collapsed and every digit read as `0`. Baselines and
    /// SARIF's `partialFingerprints` use it.
    pub fn fingerprint(&self) -> String {
        let digits: String = self.evidence.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect();
        let evidence: Vec<&str> = digits.split_whitespace().collect();
        let mut h = Sha256::new();
        h.update(self.rule.id.as_bytes());
        h.update([0]);
        h.update(self.path.as_bytes());
        h.update([0]);
        h.update(evidence.join(" ").as_bytes());
        let digest = h.finalize();
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// `path:line`, `path`, `(repository)` or, for the live checks, `(running service)`.
    pub fn location(&self) -> String {
        match (self.path.is_empty(), self.line) {
            (true, _) if self.rule.id.starts_with("live/") => "(running service)".to_owned(),
            (true, _) => "(repository)".to_owned(),
            (false, Some(l)) => format!("{}:{l}", self.path),
            (false, None) => self.path.clone(),
        }
    }
}
