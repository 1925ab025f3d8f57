//! `cityevents audit`: the production-readiness audit (`keel audit`, docs/audit.md) of this
//! repository and, live, of a City Events service started from this binary with its PostgreSQL
//! behind the auditor's fault proxy. Both come out clean but for the findings named here, each
//! with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use cityevents_common::testing::{Backend, database};

const BIN: &str = env!("CARGO_BIN_EXE_cityevents");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_repository_has_no_open_finding() {
    let out =
        Command::new(BIN).args(["audit"]).arg(root()).args(["--fail-on", "info", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["open"], 0, "{}", serde_json::to_string_pretty(&v["findings"]).unwrap());
    assert!(v["summary"]["accepted"].as_u64().unwrap() > 0, "the baseline's justified entries");
    let out = Command::new(BIN).args(["audit", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: cityevents audit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_service_passes_the_live_audit_but_rate_limiting_which_the_gateway_does() {
    let Some(db) = database(Backend::Postgres).await else { return };
    // The service reaches PostgreSQL through the auditor's proxy: same URL, the proxy's address.
    let url = db
        .url()
        .replace("127.0.0.1:5432", "$KEEL_AUDIT_POSTGRES_ADDR")
        .replace("localhost:5432", "$KEEL_AUDIT_POSTGRES_ADDR");
    assert!(url.contains("$KEEL_AUDIT_POSTGRES_ADDR"), "{url}");
    let (port, mgmt) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    // No access log: no log line carries the trace id the audit sends, so the trace check can
    // pass only through the spans exported to the audit's OTLP receiver (OTEL_EXPORTER_OTLP_*).
    let run = format!(
        "env CITYEVENTS_EVENTS__HTTP__PORT={port} CITYEVENTS_EVENTS__MANAGEMENT__ADDR=127.0.0.1:{mgmt} \
         CITYEVENTS_EVENTS__LOG__FORMAT=json CITYEVENTS_EVENTS__LOG__ACCESS_LOG=false \
         CITYEVENTS_EVENTS__DATABASE__URL={url} {BIN} serve events"
    );
    let out = tokio::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["audit", "--live-only", "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--management-url", &format!("http://127.0.0.1:{mgmt}"), "--run", &run])
        .args(["--dependency", "postgres=127.0.0.1:5432", "--origin", "http://127.0.0.1:8080"])
        // Keel cuts slow headers and idle connections at http.header_read_timeout (10 s).
        .args(["--bound", "15s", "--idle-bound", "15s", "--format", "json", "--fail-on", "high"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    // Rate limits are the gateway's (docs/cityevents.md): the events service sits behind it.
    assert_eq!(found, ["live/no-rate-limit"], "{}", serde_json::to_string_pretty(&v["findings"]).unwrap());
    let checklist = v["checklist"].as_array().unwrap();
    let passed = |rule: &str| checklist.iter().any(|c| c["rule"] == rule && c["status"] == "pass");
    for rule in [
        "live/readiness-ignores-dependency",
        "live/liveness-follows-dependency",
        "live/readiness-no-recovery",
        "live/metrics-no-red",
        "live/cors-lookalike-origin",
        "live/slowloris",
        "live/logs-not-json",
        "live/no-request-id",
        "live/no-trace-propagation",
        "live/abrupt-shutdown",
    ] {
        assert!(passed(rule), "{rule} did not pass: {}", serde_json::to_string_pretty(&v["checklist"]).unwrap());
    }
    assert!(v["notes"].as_array().unwrap().is_empty(), "{}", v["notes"]);
}
