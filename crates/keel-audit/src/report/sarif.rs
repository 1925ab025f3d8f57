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

fn result(f: &Finding, index: usize, suppressed: Option<&str>) -> Value {
    let mut v = j!({
        "ruleId": f.rule.id,
        "ruleIndex": index,
        "level": level(f.severity()),
        "message": {"text": format!("{}: {}", f.rule.title, f.evidence)},
        "partialFingerprints": {"keelAudit/v1": f.fingerprint()},
    });
    // SARIF needs a location; a repository-wide finding points at the root.
    let uri = if f.path.is_empty() { ".".to_owned() } else { f.path.clone() };
    let mut physical = j!({"artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"}});
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
    let mut results: Vec<Value> = report.findings.iter().map(|f| result(f, index(f), None)).collect();
    results.extend(report.accepted.iter().map(|(f, why)| result(f, index(f), Some(why))));
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
