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

/// The rule groups of a YAML document: a Prometheus rule file's `groups:` (entries with
/// `rules:`), or a `kind: PrometheusRule`'s `spec.groups`.
fn rule_groups(doc: &Value) -> Option<&Vec<Value>> {
    let groups = match doc.get("kind").and_then(Value::as_str) {
        Some("PrometheusRule") => doc.get("spec").and_then(|s| s.get("groups")),
        _ => doc.get("groups"),
    }?;
    groups
        .as_sequence()
        .filter(|g| !g.is_empty() && g.iter().all(|grp| grp.get("rules").is_some_and(Value::is_sequence)))
}

/// `promtool check rules` on `groups` written to a file of their own (so a PrometheusRule's
/// groups are checked too): the first line of its complaint, `None` when they pass, `Err` when
/// promtool could not be run on them.
fn promtool_check(groups: &[Value]) -> Result<Option<String>, String> {
    use std::io::Write as _;
    let mut doc = serde_norway::Mapping::new();
    doc.insert(Value::String("groups".into()), Value::Sequence(groups.to_vec()));
    let text = serde_norway::to_string(&Value::Mapping(doc)).map_err(|e| e.to_string())?;
    // A new file of our own (O_EXCL), removed when dropped.
    let mut file =
        tempfile::Builder::new().prefix("keel-audit-rules-").suffix(".yaml").tempfile().map_err(|e| e.to_string())?;
    file.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let o = Command::new("promtool").args(["check", "rules"]).arg(file.path()).output().map_err(|e| e.to_string())?;
    if o.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let first = text
        .lines()
        .find(|l| l.contains("error") || l.contains("FAILED") || l.contains(':'))
        .unwrap_or("promtool check rules failed");
    Ok(Some(crate::checks::excerpt(&first.replace(&file.path().display().to_string(), ""))))
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
        // Every document of the file (a PrometheusRule beside a Deployment, say).
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .collect();
        for doc in &docs {
            let Some(groups) = rule_groups(doc) else { continue };
            rule_files += 1;
            for rule in [&INVALID_RULES, &NO_RUNBOOK, &RUNBOOK_MISSING, &NO_SUMMARY] {
                out.checked(rule);
            }
            if promtool {
                match promtool_check(groups) {
                    Ok(None) => {}
                    Ok(Some(complaint)) => out.find(&INVALID_RULES, rel, None, complaint),
                    Err(e) => out.note(format!("{rel}: promtool could not be run on its rules: {e}")),
                }
            }
            for group in groups {
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
                                && in_this_repo(repo, &target)
                                && !repo.has(&target)
                                && !repo
                                    .files()
                                    .iter()
                                    .any(|f| f.starts_with(&format!("{}/", target.trim_end_matches('/'))))
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

/// Whether a runbook path names this repository's content: its first segment is one of the
/// repository's top-level files or folders (a link into another repository's `runbooks/` is not
/// checked).
fn in_this_repo(repo: &Repo, target: &str) -> bool {
    let first = target.split('/').next().unwrap_or(target);
    repo.files().iter().any(|f| f == first || f.starts_with(&format!("{first}/")))
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

    #[test]
    fn prometheus_rule_resources_and_links_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("docs/runbooks")).unwrap();
        std::fs::write(dir.path().join("docs/runbooks/index.md"), "#").unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch").unwrap();
        let rules = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: x}\nspec:\n  groups:\n    - name: x\n      rules:\n        - alert: Elsewhere\n          expr: up == 0\n          annotations: {summary: s, runbook_url: \"https://github.com/acme/runbooks/blob/main/alerts/elsewhere.md\"}\n        - alert: Folder\n          expr: up == 0\n          annotations: {summary: s, runbook_url: \"https://github.com/acme/app/tree/main/docs/runbooks\"}\n        - alert: Bare\n          expr: up == 0\n";
        std::fs::write(dir.path().join("monitoring.yaml"), rules).unwrap();
        let repo = Repo::open(dir.path(), &[]).unwrap();
        let mut out = Collector::default();
        check(&repo, &mut out);
        let got: Vec<(&str, Option<u32>)> = out.findings().iter().map(|f| (f.rule.id, f.line)).collect();
        assert_eq!(
            got,
            [("prometheus/no-runbook", Some(18)), ("prometheus/no-summary", Some(18))],
            "{:?}",
            out.findings()
        );
        assert!(out.was_checked(&NO_ALERTS) && !out.findings().iter().any(|f| f.rule.id == "prometheus/no-alerts"));
    }
}
