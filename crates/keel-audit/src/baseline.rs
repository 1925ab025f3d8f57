//! Baselines: findings a team has looked at and accepted, each with the reason, so CI fails
//! only on new ones.
//!
//! A baseline is JSON: `{"version": 1, "accepted": [{"rule", "path", "fingerprint", "reason"}]}`.
//! An entry matches a finding with the same rule and path and either the same fingerprint (rule,
//! path and evidence: stable when lines move) or no fingerprint (the rule accepted for the whole
//! file). Entries that match nothing are reported as stale, so the file does not silently
//! accept a problem that comes back later.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AuditError, Finding, Report};

/// The current baseline format.
pub const VERSION: u32 = 1;

/// A baseline file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The accepted findings.
    pub accepted: Vec<Entry>,
}

/// One accepted finding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The rule id (`docker/no-healthcheck`).
    pub rule: String,
    /// The file, as in the report (empty for the repository as a whole).
    #[serde(default)]
    pub path: String,
    /// The finding's fingerprint; absent accepts the rule for the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why it is accepted. Required: an unexplained exception is a finding nobody owns.
    pub reason: String,
}

impl Entry {
    fn matches(&self, f: &Finding) -> bool {
        self.rule == f.rule.id
            && self.path == f.path
            && self.fingerprint.as_ref().is_none_or(|fp| *fp == f.fingerprint())
    }
}

impl Baseline {
    /// Reads and validates a baseline file: known version, known rules, a reason on every entry.
    pub fn load(path: &Path) -> Result<Baseline, AuditError> {
        let err = |m: String| AuditError::Baseline(path.to_path_buf(), m);
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let b: Baseline = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if b.version != VERSION {
            return Err(err(format!("version {} (this keel audit reads version {VERSION})", b.version)));
        }
        for (i, e) in b.accepted.iter().enumerate() {
            if crate::checks::rule(&e.rule).is_none() {
                return Err(err(format!("accepted[{i}]: unknown rule `{}`", e.rule)));
            }
            if e.reason.trim().is_empty() {
                return Err(err(format!("accepted[{i}] ({} {}): a reason is required", e.rule, e.path)));
            }
        }
        Ok(b)
    }

    /// A baseline accepting every open finding of `report`, each with `reason`.
    pub fn from_report(report: &Report, reason: &str) -> Baseline {
        let accepted = report
            .findings
            .iter()
            .map(|f| Entry {
                rule: f.rule.id.to_owned(),
                path: f.path.clone(),
                fingerprint: Some(f.fingerprint()),
                reason: reason.to_owned(),
            })
            .chain(report.accepted.iter().map(|(f, why)| Entry {
                rule: f.rule.id.to_owned(),
                path: f.path.clone(),
                fingerprint: Some(f.fingerprint()),
                reason: why.clone(),
            }))
            .collect();
        Baseline { version: VERSION, accepted }
    }

    /// Moves the findings this baseline accepts from open to accepted; returns the entries that
    /// matched no finding (stale).
    pub fn apply(&self, report: &mut Report) -> Vec<Entry> {
        let mut used = vec![false; self.accepted.len()];
        let mut open = Vec::new();
        for f in std::mem::take(&mut report.findings) {
            match self.accepted.iter().position(|e| e.matches(&f)) {
                Some(i) => {
                    used[i] = true;
                    let reason = self.accepted[i].reason.clone();
                    report.accepted.push((f, reason));
                }
                None => open.push(f),
            }
        }
        // An entry for a whole file can match several findings; mark those too.
        for (i, e) in self.accepted.iter().enumerate() {
            if !used[i] && report.accepted.iter().any(|(f, _)| e.matches(f)) {
                used[i] = true;
            }
        }
        report.findings = open;
        self.accepted.iter().zip(used).filter(|(_, u)| !u).map(|(e, _)| e.clone()).collect()
    }

    /// Pretty JSON, newline-terminated.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).map(|s| s + "\n").unwrap_or_default()
    }
}
