//! Prometheus rule files: valid (promtool when it is installed), and every alert with a summary
//! and a runbook that exists.

use std::process::Command;

use serde_norway::Value;

use super::line_containing;
use crate::{Area, Collector, Repo, Rule, Severity, is_test_path};

pub(crate) static INVALID_RULES: Rule = Rule {
    id: "prometheus/invalid-rules",
    title: "Prometheus rule files are valid",
    severity: Severity::High,
    area: Area::Observability,
    seed: "",
    why: "Prometheus refuses a whole rule file with one bad rule: every alert in it silently stops existing until someone reads the server's log.",
    fix: "Fix what `promtool check rules <file>` reports, and run it in CI.",
};

pub(crate) static NO_RUNBOOK: Rule = Rule {
    id: "prometheus/no-runbook",
    title: "Every alert links a runbook",
    severity: Severity::Medium,
    area: Area::Observability,
    seed: "seed 004 (runbooks for common failures)",
    why: "An alert without a runbook pages someone who then has to work out from scratch, at night, what it means and what to do.",
    fix: "Add `annotations: {runbook_url: …}` to every alert, pointing at a page that says what the alert means, how to confirm it and how to mitigate it.",
};

pub(crate) static RUNBOOK_MISSING: Rule = Rule {
    id: "prometheus/runbook-missing",
    title: "Runbook links point at pages that exist",
    severity: Severity::Medium,
    area: Area::Observability,
    seed: "seed 004 (runbooks for common failures)",
    why: "A runbook link into the repository that leads nowhere is worse than none: the responder loses time finding out it does not exist.",
    fix: "Write the runbook at the linked path, or fix the link.",
};

pub(crate) static NO_SUMMARY: Rule = Rule {
    id: "prometheus/no-summary",
    title: "Every alert says what is wrong (summary or description)",
    severity: Severity::Low,
    area: Area::Observability,
    seed: "",
    why: "A notification that carries only the alert's name and labels does not tell the responder what is broken or how badly.",
    fix: "Add `annotations: {summary: …, description: …}` with the affected service and the measured value (`{{ $value }}`).",
};

pub(crate) static NO_ALERTS: Rule = Rule {
    id: "prometheus/no-alerts",
    title: "Alerts are defined as code beside the service",
    severity: Severity::Low,
    area: Area::Observability,
    seed: "seed 003 (Prometheus scrape config), seed 000 #6",
    why: "Metrics nobody alerts on are noticed only when users complain; alert rules kept outside the repository drift from the metrics the code exports.",
    fix: "Keep Prometheus alerting rules (error rate, latency, saturation, dependency health) in the repository and check them with promtool in CI.",
};

pub(crate) const RULES: &[&Rule] = &[&INVALID_RULES, &NO_RUNBOOK, &RUNBOOK_MISSING, &NO_SUMMARY, &NO_ALERTS];

/// Whether a YAML document is a Prometheus rule file: `groups:` whose entries have `rules:`.
fn is_rule_file(doc: &Value) -> bool {
    doc.get("groups")
        .and_then(Value::as_sequence)
        .is_some_and(|g| !g.is_empty() && g.iter().all(|grp| grp.get("rules").is_some_and(Value::is_sequence)))
}

pub(crate) fn check(repo: &Repo, out: &mut Collector) {
    let promtool = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut alerts = 0usize;
    let mut rule_files = 0usize;
    let deployable = repo.files().iter().any(|f| {
        let name = crate::file_name(f);
        super::dockerfile::is_dockerfile(name) || name == "go.mod" || name == "package.json" || name == "Cargo.toml"
    });
    for rel in repo.files().iter().filter(|f| (f.ends_with(".yaml") || f.ends_with(".yml")) && !is_test_path(f)) {
        let Some(text) = repo.read(rel) else { continue };
        if !text.contains("groups:") {
            continue;
        }
        let Ok(doc) = serde_norway::from_str::<Value>(&text) else { continue };
        if !is_rule_file(&doc) {
            continue;
        }
        rule_files += 1;
        for rule in [&INVALID_RULES, &NO_RUNBOOK, &RUNBOOK_MISSING, &NO_SUMMARY] {
            out.checked(rule);
        }
        if promtool {
            let path = repo.root().join(rel);
            if let Ok(o) = Command::new("promtool").args(["check", "rules"]).arg(&path).output()
                && !o.status.success()
            {
                let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
                let root = repo.root().display().to_string();
                let first = text
                    .lines()
                    .find(|l| l.contains("FAILED") || l.contains("error") || l.contains(':'))
                    .unwrap_or("promtool check rules failed");
                out.find(&INVALID_RULES, rel, None, first.replace(&root, "").trim().to_owned());
            }
        }
        let groups = doc.get("groups").and_then(Value::as_sequence).cloned().unwrap_or_default();
        for group in &groups {
            for rule in group.get("rules").and_then(Value::as_sequence).into_iter().flatten() {
                let expr = rule.get("expr").map(value_text).unwrap_or_default();
                let name = rule.get("alert").or_else(|| rule.get("record")).map(value_text).unwrap_or_default();
                if name.is_empty() || expr.trim().is_empty() {
                    if !promtool {
                        let line = line_containing(&text, &name);
                        out.find(
                            &INVALID_RULES,
                            rel,
                            line,
                            format!("rule `{name}` without a name (alert/record) or an expr"),
                        );
                    }
                    continue;
                }
                let Some(alert) = rule.get("alert").map(value_text) else { continue };
                alerts += 1;
                let line = line_containing(&text, &format!("alert: {alert}"));
                let annotations = rule.get("annotations");
                let annotation =
                    |k: &str| annotations.and_then(|a| a.get(k)).map(value_text).filter(|v| !v.trim().is_empty());
                match annotation("runbook_url").or_else(|| annotation("runbook")) {
                    None => out.find(&NO_RUNBOOK, rel, line, format!("alert {alert} has no runbook_url")),
                    Some(url) => {
                        if let Some(target) = repo_target(&url, rel)
                            && !repo.has(&target)
                        {
                            out.find(
                                &RUNBOOK_MISSING,
                                rel,
                                line,
                                format!("alert {alert}: runbook {target} is not in the repository"),
                            );
                        }
                    }
                }
                if annotation("summary").is_none()
                    && annotation("description").is_none()
                    && annotation("message").is_none()
                {
                    out.find(&NO_SUMMARY, rel, line, format!("alert {alert} has no summary or description"));
                }
            }
        }
    }
    if rule_files > 0 && !promtool {
        out.note("promtool is not installed: Prometheus rule files were checked for structure only (install Debian's `prometheus` package for full validation)");
    }
    if deployable {
        out.checked(&NO_ALERTS);
        if alerts == 0 {
            out.find(&NO_ALERTS, "", None, "no Prometheus alerting rules in the repository");
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// The repository path a runbook link names, when it names one: a relative path, or a code
/// host's `…/blob/<ref>/<path>` or `…/tree/<ref>/<path>` link. Anchors and queries are dropped.
fn repo_target(url: &str, rule_file: &str) -> Option<String> {
    let url = url.split(['#', '?']).next().unwrap_or(url);
    if let Some(rest) = url
        .split_once("/blob/")
        .or_else(|| url.split_once("/tree/"))
        .or_else(|| url.split_once("/-/blob/"))
        .map(|(_, r)| r)
    {
        // `<ref>/<path>`: the ref is one segment (branch names with `/` are not resolved).
        return rest.split_once('/').map(|(_, p)| p.to_owned()).filter(|p| !p.is_empty());
    }
    if url.contains("://") {
        return None;
    }
    // Relative to the rule file's directory.
    let mut parts: Vec<&str> = rule_file.split('/').collect();
    parts.pop();
    for seg in url.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runbook_links_into_the_repository_are_resolved() {
        assert_eq!(
            repo_target("https://github.com/o/r/blob/main/docs/runbooks/x.md#fix", "deploy/rules.yaml").as_deref(),
            Some("docs/runbooks/x.md")
        );
        assert_eq!(
            repo_target("../docs/run.md", "deploy/prometheus/rules.yaml").as_deref(),
            Some("deploy/docs/run.md")
        );
        assert_eq!(repo_target("https://wiki.example.com/runbooks/x", "r.yaml"), None);
    }

    #[test]
    fn alerts_without_runbooks_summaries_or_with_dangling_links_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("docs/high-errors.md"), "# runbook").unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch").unwrap();
        let rules = "groups:\n  - name: svc\n    rules:\n      - alert: HighErrors\n        expr: rate(http_requests_total{code=~\"5..\"}[5m]) > 1\n        annotations:\n          summary: errors\n          runbook_url: https://git.example.com/o/r/blob/main/docs/high-errors.md\n      - alert: NoRunbook\n        expr: up == 0\n      - alert: Dangling\n        expr: up == 0\n        annotations:\n          description: down\n          runbook_url: https://git.example.com/o/r/blob/main/docs/missing.md\n      - record: job:up:sum\n        expr: sum(up)\n";
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let repo = Repo::open(dir.path(), &[]).unwrap();
        let mut out = Collector::default();
        check(&repo, &mut out);
        let got: Vec<(&str, Option<u32>)> = out.findings().iter().map(|f| (f.rule.id, f.line)).collect();
        assert_eq!(
            got,
            [
                ("prometheus/no-runbook", Some(9)),
                ("prometheus/no-summary", Some(9)),
                ("prometheus/runbook-missing", Some(11))
            ]
        );
    }

    #[test]
    fn a_service_without_alerts_is_found_and_a_broken_rule_file_fails_promtool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("go.mod"), "module x").unwrap();
        let repo = Repo::open(dir.path(), &[]).unwrap();
        let mut out = Collector::default();
        check(&repo, &mut out);
        assert_eq!(out.findings().iter().map(|f| f.rule.id).collect::<Vec<_>>(), ["prometheus/no-alerts"]);

        std::fs::write(
            dir.path().join("alerts.yml"),
            "groups:\n  - name: g\n    rules:\n      - alert: Broken\n        expr: rate(x[5m] >\n        annotations: {summary: s, runbook_url: https://w/x}\n",
        )
        .unwrap();
        let repo = Repo::open(dir.path(), &[]).unwrap();
        let mut out = Collector::default();
        check(&repo, &mut out);
        let ids: Vec<&str> = out.findings().iter().map(|f| f.rule.id).collect();
        if Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()) {
            assert_eq!(ids, ["prometheus/invalid-rules"], "{:?}", out.findings());
        } else {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required under CI=true (.ci/promtool.sh installs it)"
            );
            eprintln!("skipped: promtool is not installed");
        }
    }
}
