//! `keel audit`'s live part against the symbols API, started from its binary with MariaDB and
//! RabbitMQ each behind the auditor's fault proxy: every check passes. (The static part audits
//! this example with the rest of the repository: crates/keel-audit/tests/workspace.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use keel_audit::live::{Dependency, LiveOptions};

const BIN: &str = env!("CARGO_BIN_EXE_symbols");

#[tokio::test(flavor = "multi_thread")]
async fn the_symbols_api_passes_the_live_audit_with_both_dependencies_cut() {
    let Some(db) = common::mariadb().await else { return };
    if !common::rabbitmq() {
        return;
    }
    // The development profile keeps its keys in ./data: the token and the service share a folder.
    let dir = tempfile::tempdir().unwrap();
    let issued = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["token", "issue", "auditor", "--role", symbols::WRITE_ROLE])
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();

    let mariadb = keel::testing::host_port(&keel::testing::mysql_url()).unwrap();
    let rabbitmq = keel::testing::host_port(&keel::testing::rabbitmq_url()).unwrap();
    let db_url = db.url().replace(&mariadb.to_string(), "$KEEL_AUDIT_MARIADB_ADDR");
    let bus_url = keel::testing::rabbitmq_url().replace(&rabbitmq.to_string(), "$KEEL_AUDIT_RABBITMQ_ADDR");
    assert!(db_url.contains("$KEEL_AUDIT") && bus_url.contains("$KEEL_AUDIT"), "{db_url} {bus_url}");
    let (port, mgmt) = (keel::testing::unused_port(), keel::testing::unused_port());
    let run = format!(
        "env -C {dir} SYMBOLS__HTTP__PORT={port} SYMBOLS__MANAGEMENT__ADDR=127.0.0.1:{mgmt} SYMBOLS__LOG__FORMAT=json \
         SYMBOLS__HTTP__REQUEST_TIMEOUT=10s \
         SYMBOLS__DATABASE__URL={db_url} SYMBOLS__BUS__BACKEND=rabbitmq SYMBOLS__BUS__URL={bus_url} {BIN} serve",
        dir = dir.path().display()
    );
    let mut live = LiveOptions::new(format!("http://127.0.0.1:{port}"));
    live.management_url = Some(format!("http://127.0.0.1:{mgmt}"));
    live.run = Some(run);
    live.dependencies = vec![
        Dependency::parse(&format!("mariadb={mariadb}")).unwrap(),
        Dependency::parse(&format!("rabbitmq={rabbitmq}")).unwrap(),
    ];
    live.origin = Some("https://app.example".into());
    // Slow headers and idle connections end at http.header_read_timeout (10 s), slow bodies at
    // the request timeout set above.
    live.bound = Duration::from_secs(15);
    live.idle_bound = Duration::from_secs(15);
    // Listing reads no body; creating one does (JSON), behind the write role.
    live.path = "/v1/projects/audit/symbols".into();
    live.headers = vec![("Authorization".into(), format!("Bearer {token}"))];
    // The API's limit is 1200 requests a minute per client (config/symbols.yaml's rate_limits).
    live.burst = 1500;
    let report = keel_audit::audit_live(&keel_audit::Options::new("."), &live, true).await.unwrap();
    let open: Vec<String> = report.findings.iter().map(|f| format!("{} {}", f.rule.id, f.evidence)).collect();
    assert!(open.is_empty(), "{open:#?}");
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    for rule in [
        "live/readiness-ignores-dependency",
        "live/readiness-no-recovery",
        "live/abrupt-shutdown",
        "live/no-rate-limit",
    ] {
        let rule = keel_audit::checks::rule(rule).unwrap();
        assert_eq!(report.status(rule), keel_audit::Status::Pass, "{}", rule.id);
    }
}
