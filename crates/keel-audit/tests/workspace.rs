//! Keel audits itself: the workspace (services, deploy files, examples/symbols) has no open
//! finding, and every finding its baseline accepts still exists and has a reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use keel_audit::baseline::Baseline;

#[test]
fn the_workspace_comes_out_clean_with_its_justified_baseline() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut report = keel_audit::audit(&keel_audit::Options::new(&root)).unwrap();
    let baseline = Baseline::load(&root.join(keel_audit::cli::DEFAULT_BASELINE)).unwrap();
    let stale = baseline.apply(&mut report);
    let open: Vec<String> =
        report.findings.iter().map(|f| format!("{} {}: {}", f.rule.id, f.location(), f.evidence)).collect();
    assert!(open.is_empty(), "open findings in the workspace:\n{}", open.join("\n"));
    assert!(stale.is_empty(), "baseline entries that match nothing: {stale:?}");
    // The services' own deployment files were read: every area applies.
    for area in keel_audit::Area::ALL {
        let (passed, applicable) = report.score(area);
        assert!(applicable > 0 && passed == applicable, "{area:?}: {passed}/{applicable}");
    }
    if std::env::var_os("CI").is_some() {
        assert!(report.notes.is_empty(), "{:?}", report.notes);
    }
}
