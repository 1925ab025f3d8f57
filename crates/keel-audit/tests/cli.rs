//! `keel audit` as CI runs it: exit statuses, the three formats, baselines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A copy of a fixture in a temporary directory (not a git work tree: every file is read).
fn copy(name: &str) -> tempfile::TempDir {
    fn walk(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    walk(&fixture(name), dir.path());
    dir
}

#[test]
fn exit_status_follows_the_threshold() {
    let bad = fixture("go-kratos");
    let bad = bad.to_str().unwrap();
    let out = keel(&["audit", bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("open finding(s) at or above high"));
    assert!(text(&out.stdout).starts_with("# Production readiness audit"));
    assert_eq!(keel(&["audit", bad, "--fail-on", "never"]).status.code(), Some(0));
    assert_eq!(keel(&["audit", bad, "--fail-on", "CRITICAL"]).status.code(), Some(1));
    let k8s = fixture("k8s");
    // The k8s fixture's worst finding is critical; the clean one has none at all.
    assert_eq!(keel(&["audit", k8s.to_str().unwrap(), "--fail-on", "critical"]).status.code(), Some(1));
    let clean = fixture("clean-go");
    assert_eq!(keel(&["audit", clean.to_str().unwrap(), "--fail-on", "info"]).status.code(), Some(0));
}

#[test]
fn usage_errors_and_unreadable_roots_exit_2_with_a_message() {
    let out = keel(&["audit", "/nonexistent/repo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/repo: not a directory"), "{}", text(&out.stderr));
    for args in [&["audit", "--format", "xml"][..], &["audit", "--fail-on", "severe"], &["audit", "--frobnicate"]] {
        let out = keel(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    assert_eq!(keel(&["audit", "--help"]).status.code(), Some(0));
    let out = keel(&["--version"]);
    assert!(text(&out.stdout).starts_with("keel "), "{}", text(&out.stdout));
}

#[test]
fn json_and_sarif_describe_the_same_findings() {
    let dir = tempfile::tempdir().unwrap();
    let (json, sarif) = (dir.path().join("a.json"), dir.path().join("a.sarif"));
    let root = fixture("express-kafka");
    let out = keel(&[
        "audit",
        root.to_str().unwrap(),
        "--fail-on",
        "never",
        "-f",
        "json",
        "--sarif",
        sarif.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(stdout, file);
    let findings = stdout["findings"].as_array().unwrap();
    assert_eq!(stdout["summary"]["open"], findings.len());
    assert!(
        findings.iter().any(|f| f["rule"] == "code/cors-any-origin" && f["path"] == "src/index.js" && f["line"] == 9)
    );
    let checklist = stdout["checklist"].as_array().unwrap();
    assert_eq!(checklist.len(), keel_audit::checks::rules().count());

    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&sarif).unwrap()).unwrap();
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), findings.len());
    for r in results {
        let i = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[i]["id"], r["ruleId"]);
        assert!(["error", "warning", "note"].contains(&r["level"].as_str().unwrap()));
        let uri = r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().unwrap();
        assert!(!uri.starts_with('/'), "relative to the root: {uri}");
        let fp = r["partialFingerprints"]["keelAudit/v1"].as_str().unwrap();
        assert!(fp.len() > 25 && fp[..24].bytes().all(|b| b.is_ascii_hexdigit()) && fp[24..].starts_with(':'), "{fp}");
    }
    let cors = results.iter().find(|r| r["ruleId"] == "code/cors-any-origin").unwrap();
    assert_eq!(cors["level"], "error");
    assert_eq!(cors["locations"][0]["physicalLocation"]["region"]["startLine"], 9);
}

#[test]
fn a_baseline_accepts_known_findings_and_fails_on_new_ones() {
    let repo = copy("go-kratos");
    let root = repo.path().to_str().unwrap().to_owned();
    let baseline = repo.path().join(".keel-audit-baseline.json");

    let out = keel(&[
        "audit",
        &root,
        "--write-baseline",
        baseline.to_str().unwrap(),
        "--reason",
        "legacy, tracked in OPS-12",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Found at the root without --baseline; everything accepted.
    let out = keel(&["audit", &root, "--fail-on", "info", "-f", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["open"], 0);
    assert!(v["accepted"].as_array().unwrap().iter().all(|a| a["accepted_because"] == "legacy, tracked in OPS-12"));

    // Lines moving do not matter; a new problem does.
    let main = repo.path().join("cmd/symbols/main.go");
    let code = std::fs::read_to_string(&main).unwrap();
    let code = code.replacen("var flagconf string", "// the config directory\nvar flagconf string", 1);
    std::fs::write(
        &main,
        code.replacen(
            "\tdefer cleanup()",
            "\tdefer cleanup()\n\tif bc.Server == nil {\n\t\tpanic(\"no server\")\n\t}",
            1,
        ),
    )
    .unwrap();
    let out = keel(&["audit", &root, "-f", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let open = v["findings"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["rule"], "code/panic-at-startup");
    assert!(open[0]["evidence"].as_str().unwrap().contains("no server"));

    // A fixed problem leaves a stale entry, reported; --no-baseline sees everything.
    std::fs::remove_file(repo.path().join("internal/client/prices.go")).unwrap();
    let out = keel(&["audit", &root, "--fail-on", "never"]);
    assert!(text(&out.stderr).contains("baseline entry matches nothing (fixed? remove it): code/http-client-without-timeout internal/client/prices.go"), "{}", text(&out.stderr));
    let out = keel(&["audit", &root, "--no-baseline", "-f", "json", "--fail-on", "never"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().len() > 20);
}

#[test]
fn a_baseline_without_reasons_or_with_unknown_rules_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.json");
    let root = fixture("clean-go");
    for (body, says) in [
        (r#"{"version": 1, "accepted": [{"rule": "repo/no-ci", "path": "", "reason": " "}]}"#, "a reason is required"),
        (
            r#"{"version": 1, "accepted": [{"rule": "repo/nope", "path": "", "reason": "x"}]}"#,
            "unknown rule `repo/nope`",
        ),
        (r#"{"version": 2, "accepted": []}"#, "version 2"),
        (r#"{"version": 1, "accepted": [], "extra": 1}"#, "unknown field"),
    ] {
        std::fs::write(&b, body).unwrap();
        let out = keel(&["audit", root.to_str().unwrap(), "--baseline", b.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{body}");
        assert!(text(&out.stderr).contains(says), "{body}: {}", text(&out.stderr));
    }
}

#[test]
fn excluded_prefixes_and_rendered_manifests() {
    let root = fixture("express-kafka");
    let out = keel(&[
        "audit",
        root.to_str().unwrap(),
        "--exclude",
        "src",
        "--exclude",
        "docker-compose.yml",
        "-f",
        "json",
        "--fail-on",
        "never",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().iter().all(|f| {
        let p = f["path"].as_str().unwrap();
        !p.starts_with("src/") && p != "docker-compose.yml"
    }));
    let manifests = fixture("k8s").join("deployment-no-probes.yaml");
    let clean = fixture("clean-go");
    let out = keel(&["audit", clean.to_str().unwrap(), "--manifests", manifests.to_str().unwrap(), "-f", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().iter().any(|f| f["rule"] == "k8s/no-readiness-probe"));
    let out = keel(&["audit", clean.to_str().unwrap(), "--manifests", "/nonexistent.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn list_rules_prints_the_checklist() {
    let out = keel(&["audit", "--list-rules"]);
    assert!(out.status.success());
    let t = text(&out.stdout);
    assert_eq!(t.lines().count(), keel_audit::checks::rules().count());
    assert!(t.contains("docker/root-user") && t.contains("k8s/no-readiness-probe"));
}
