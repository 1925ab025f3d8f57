use serde_json::{Value, json as j};

use super::{overall, percent};
use crate::{Area, Finding, Report, Severity, Status, checks};

fn finding(f: &Finding) -> Value {
    j!({
        "rule": f.rule.id,
        "title": f.rule.title,
        "severity": f.severity(),
        "area": f.rule.area,
        "path": f.path,
        "line": f.line,
        "evidence": f.evidence,
        "why": f.rule.why,
        "fix": f.rule.fix,
        "seed": f.rule.seed,
        "fingerprint": f.fingerprint(),
    })
}

/// The report as JSON: `summary`, `areas`, `findings`, `accepted`, `checklist`, `notes`.
pub fn json(report: &Report) -> String {
    let (passed, applicable, pct) = overall(report);
    let by_severity: serde_json::Map<String, Value> = Severity::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), j!(report.findings.iter().filter(|f| f.severity() == *s).count())))
        .collect();
    let areas: Vec<Value> = Area::ALL
        .iter()
        .map(|a| {
            let (p, n) = report.score(*a);
            j!({"area": a, "title": a.title(), "passed": p, "applicable": n, "score": if n == 0 { Value::Null } else { j!(percent(p, n)) }})
        })
        .collect();
    let checklist: Vec<Value> = checks::rules()
        .map(|r| {
            let status = match report.status(r) {
                Status::Pass => "pass",
                Status::Fail => "fail",
                Status::Accepted => "accepted",
                Status::NotApplicable => "n/a",
            };
            j!({"rule": r.id, "title": r.title, "area": r.area, "severity": r.severity, "status": status})
        })
        .collect();
    let accepted: Vec<Value> = report
        .accepted
        .iter()
        .map(|(f, why)| {
            let mut v = finding(f);
            v["accepted_because"] = j!(why);
            v
        })
        .collect();
    let doc = j!({
        "tool": {"name": "keel audit", "version": env!("CARGO_PKG_VERSION")},
        "target": report.target,
        "files": report.files,
        "summary": {"score": pct, "passed": passed, "applicable": applicable, "open": report.findings.len(), "by_severity": by_severity, "accepted": report.accepted.len()},
        "areas": areas,
        "findings": report.findings.iter().map(finding).collect::<Vec<_>>(),
        "accepted": accepted,
        "checklist": checklist,
        "notes": report.notes,
    });
    serde_json::to_string_pretty(&doc).map(|s| s + "\n").unwrap_or_default()
}
