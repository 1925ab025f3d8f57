//! The live audit against a service nobody here would ship (tests/fixtures/live/bad_service.py,
//! Python's standard library only): every live problem it has is found, and what it does right
//! (a liveness endpoint, a bounded shutdown) passes. Keel's own services are audited live in
//! services/cityevents/tests/audit.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn python() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "python3 is required under CI=true");
        eprintln!("skipped: python3 is not installed");
    }
    ok
}

#[test]
fn every_live_problem_of_the_bad_service_is_found() {
    if !python() {
        return;
    }
    let port = keel_testing::unused_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/live/bad_service.py");
    let url = format!("http://127.0.0.1:{port}");
    let run = format!("python3 {} {port}", script.display());
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["audit", "--live-only", "--url", &url, "--run", &run, "--bound", "3s", "--idle-bound", "3s"])
        .args(["--origin", "https://app.example", "--format", "json", "--fail-on", "critical"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: BTreeSet<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = [
        "live/no-readiness",
        "live/no-startup-probe",
        "live/no-metrics",
        "live/security-headers",
        "live/server-banner",
        "live/cors-lookalike-origin",
        "live/error-leak",
        "live/bad-input-500",
        "live/no-body-limit",
        "live/no-rate-limit",
        "live/slowloris",
        "live/slow-body",
        "live/idle-connections",
        "live/logs-not-json",
        "live/no-request-id",
        "live/no-trace-propagation",
        "live/abrupt-shutdown",
    ]
    .into();
    assert_eq!(found, expected, "{}", serde_json::to_string_pretty(&v["findings"]).unwrap());
    let status = |rule: &str| {
        v["checklist"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["rule"] == rule)
            .map(|c| c["status"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(status("live/no-liveness"), "pass");
    assert_eq!(status("live/slow-shutdown"), "pass");
    // No dependency was given, no metrics exist: those checks did not apply.
    for rule in ["live/readiness-ignores-dependency", "live/metrics-invalid", "repo/no-ci"] {
        assert_eq!(status(rule), "n/a", "{rule}");
    }
    let evidence = |rule: &str| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["rule"] == rule)
            .map(|f| f["evidence"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert!(evidence("live/cors-lookalike-origin").contains("https://evilapp.example: reflected, with credentials"));
    assert!(evidence("live/error-leak").contains("Traceback (most recent call last)"));
    assert!(evidence("live/abrupt-shutdown").contains("killed by signal 15"));
    assert!(evidence("live/server-banner").contains("Python/"));
}

#[test]
fn a_service_that_dies_during_the_audit_is_an_error_not_findings() {
    if !python() {
        return;
    }
    let port = keel_testing::unused_port();
    // Answers GET, and exits on the first POST (the error checks send one).
    let service = format!(
        "python3 -c 'import http.server, os\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200); self.send_header(\"Content-Length\", \"2\"); self.end_headers(); self.wfile.write(b\"ok\")\n    def do_POST(self):\n        os._exit(137)\nhttp.server.HTTPServer((\"127.0.0.1\", {port}), H).serve_forever()'"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "audit",
            "--live-only",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--run",
            &service,
            "--bound",
            "2s",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Seen dead after the error checks (whose POST killed it), or one check later when the exit
    // is reaped after the next check started.
    assert!(stderr.contains("the service exited (Code(137)) during the"), "{stderr}");
}

#[test]
fn a_service_that_never_answers_is_an_error_not_a_report() {
    if !python() {
        return;
    }
    let port = keel_testing::unused_port();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["audit", "--live-only", "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--run", "python3 -c 'import sys; print(\"cannot start: no config\"); sys.exit(3)'"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited (Code(3)) before answering") && stderr.contains("cannot start: no config"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["audit", "--live-only", "--url", &format!("http://127.0.0.1:{port}"), "--startup-timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer within"));

    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["audit", "--live-only", "--url", "https://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes an http:// URL"));
    let out = Command::new(env!("CARGO_BIN_EXE_keel")).args(["audit", "--run", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--run needs --url");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["audit", "--url", "http://127.0.0.1:1", "--run", "true", "--dependency", "pg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=HOST:PORT"));
}
