//! Precision and recall of the static audit on the fixtures (tests/fixtures/README.md): each
//! fixture's `EXPECTED` is what a careful reviewer flags, and the totals below are the figures
//! docs/audit.md reports. A rule that gets better or worse changes them: update both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use keel_audit::Options;

const FIXTURES: &[&str] = &["go-kratos", "express-kafka", "k8s", "compose", "clean-go"];

/// True positives, false positives, false negatives over all fixtures (docs/audit.md).
const TOTALS: (usize, usize, usize) = (78, 0, 4);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `rule path[:line]` lines of a fixture's EXPECTED.
fn expected(name: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(fixture(name).join("EXPECTED")).unwrap();
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

fn found(name: &str) -> BTreeSet<String> {
    let report = keel_audit::audit(&Options::new(fixture(name))).unwrap();
    report
        .findings
        .iter()
        .map(|f| {
            let loc = match (f.path.as_str(), f.line) {
                ("", _) => ".".to_owned(),
                (p, Some(l)) => format!("{p}:{l}"),
                (p, None) => p.to_owned(),
            };
            format!("{} {loc}", f.rule.id)
        })
        .collect()
}

#[test]
fn precision_and_recall_on_the_fixtures() {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    let mut table = String::from("fixture        tp  fp  fn\n");
    for name in FIXTURES {
        let want = expected(name);
        let got = found(name);
        let false_positives: Vec<_> = got.difference(&want).collect();
        let misses: Vec<_> = want.difference(&got).collect();
        let hits = got.intersection(&want).count();
        table.push_str(&format!("{name:<14} {hits:>3} {:>3} {:>3}\n", false_positives.len(), misses.len()));
        for f in &false_positives {
            eprintln!("{name}: false positive: {f}");
        }
        for m in &misses {
            eprintln!("{name}: missed: {m}");
        }
        tp += hits;
        fp += false_positives.len();
        fn_ += misses.len();
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    eprintln!("{table}precision {:.1}%  recall {:.1}%", precision * 100.0, recall * 100.0);
    assert_eq!((tp, fp, fn_), TOTALS, "the figures changed: update TOTALS and docs/audit.md\n{table}");
}

#[test]
fn the_clean_fixture_passes_every_applicable_check_and_most_rules_apply() {
    let report = keel_audit::audit(&Options::new(fixture("clean-go"))).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let (passed, applicable, pct) = keel_audit::report::overall(&report);
    assert_eq!((passed, pct), (applicable, 100));
    let rules = keel_audit::checks::rules().filter(|r| !r.id.starts_with("live/")).count();
    // Rust- and Node-only rules and those about a second kind of file cannot apply to a Go service.
    assert!(applicable * 10 >= rules * 8, "{applicable} of {rules} rules applied");
}

#[test]
fn every_rule_fires_on_some_fixture() {
    let mut fired = BTreeSet::new();
    for name in FIXTURES {
        let report = keel_audit::audit(&Options::new(fixture(name))).unwrap();
        fired.extend(report.findings.iter().map(|f| f.rule.id));
    }
    // Rust-only code rules are proven by unit tests on Rust sources (checks::code), the live
    // rules by tests/live.rs.
    let unproven: Vec<_> = keel_audit::checks::rules()
        .map(|r| r.id)
        .filter(|id| !fired.contains(id) && !id.starts_with("live/"))
        .collect();
    let allowed = [
        "docker/secret-in-layer",
        "docker/unpinned-base",
        "docker/full-base-image",
        "k8s/no-startup-probe",
        "k8s/same-liveness-readiness",
        "prometheus/invalid-rules",
        "prometheus/no-runbook",
        "prometheus/runbook-missing",
        "prometheus/no-summary",
    ];
    for id in &unproven {
        assert!(allowed.contains(id), "no fixture shows {id}");
    }
}
