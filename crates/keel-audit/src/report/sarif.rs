use serde_json::{Value, json as j};

use crate::{Finding, Report, Rule, Severity, checks};

/// SARIF's `level` for a severity.
fn level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

/// GitHub code scanning's `security-severity` (CVSS-like, 0–10) for a severity.
fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "0.0",
    }
}

fn rule(r: &Rule) -> Value {
    j!({
        "id": r.id,
        "name": r.id.replace(['/', '-'], "_"),
        "shortDescription": {"text": r.title},
        "fullDescription": {"text": r.why},
        "help": {"text": format!("{}\n\nFix: {}", r.why, r.fix), "markdown": format!("{}\n\n**Fix:** {}{}", r.why, r.fix, if r.seed.is_empty() { String::new() } else { format!("\n\n_Seen in: {}._", r.seed) })},
        "defaultConfiguration": {"level": level(r.severity)},
        "properties": {"tags": ["production-readiness", format!("{:?}", r.area).to_ascii_lowercase()], "security-severity": security_severity(r.severity), "precision": "high"},
    })
}

/// A path as a URI reference: each segment percent-encoded (RFC 3986 unreserved characters kept).
fn uri(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn result(f: &Finding, index: usize, occurrence: usize, suppressed: Option<&str>) -> Value {
    let mut v = j!({
        "ruleId": f.rule.id,
        "ruleIndex": index,
        "level": level(f.severity()),
        "message": {"text": format!("{}: {}", f.rule.title, f.evidence)},
        // The n-th finding with the same fingerprint: code scanning keeps them apart.
        "partialFingerprints": {"keelAudit/v1": format!("{}:{occurrence}", f.fingerprint())},
    });
    // SARIF needs a location: a finding about the whole repository (or the running service)
    // points at the root; a file outside the root (--manifests) by an absolute file URI.
    let artifact = if f.path.is_empty() {
        j!({"uri": ".", "uriBaseId": "%SRCROOT%"})
    } else if f.path.starts_with('/') {
        j!({"uri": format!("file://{}", uri(&f.path))})
    } else {
        j!({"uri": uri(&f.path), "uriBaseId": "%SRCROOT%"})
    };
    let mut physical = j!({"artifactLocation": artifact});
    if let Some(line) = f.line {
        physical["region"] = j!({"startLine": line});
    }
    v["locations"] = j!([{"physicalLocation": physical}]);
    if let Some(why) = suppressed {
        v["suppressions"] = j!([{"kind": "external", "justification": why}]);
    }
    v
}

/// The report as SARIF 2.1.0: every rule in the driver, open findings as results, accepted ones
/// as results with an external suppression.
pub fn sarif(report: &Report) -> String {
    let rules: Vec<&Rule> = checks::rules().collect();
    let index = |f: &Finding| rules.iter().position(|r| r.id == f.rule.id).unwrap_or(0);
    let mut seen = std::collections::HashMap::new();
    let mut occurrence = |f: &Finding| {
        let n = seen.entry(f.fingerprint()).or_insert(0usize);
        *n += 1;
        *n
    };
    let mut results = Vec::new();
    for f in &report.findings {
        let n = occurrence(f);
        results.push(result(f, index(f), n, None));
    }
    for (f, why) in &report.accepted {
        let n = occurrence(f);
        results.push(result(f, index(f), n, Some(why)));
    }
    let doc = j!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "keel audit",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://example.invalid/keel/blob/main/docs/audit.md",
                "rules": rules.iter().map(|r| rule(r)).collect::<Vec<_>>(),
            }},
            "results": results,
            "properties": {"notes": report.notes},
        }],
    });
    serde_json::to_string_pretty(&doc).map(|s| s + "\n").unwrap_or_default()
}
