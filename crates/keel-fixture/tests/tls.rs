//! TLS on the public listener of a running service (`http.tls`): HTTPS with the configured
//! certificate while the management listener stays plaintext, a renewed certificate served
//! without a restart, and files that cannot be used stopping the start with exit 78.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Proc, eventually};

fn write_pki(dir: &Path) -> String {
    let pki = keel::testing::test_pki(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("tls.crt"), &pki.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &pki.key).unwrap();
    pki.ca
}

/// A client that trusts only `ca`.
fn pinned(ca: &str) -> reqwest::Client {
    keel::http::client::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

// Multi-threaded: the HTTP/2 clients' connection tasks must keep running (answering the drain's
// GOAWAY and PING) while the test thread waits for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_and_picks_up_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_pki(dir.path());
    let cert = dir.path().join("tls.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    let mut p = Proc::spawn(&[
        ("FIXTURE__HTTP__TLS__CERT_FILE", &cert),
        ("FIXTURE__HTTP__TLS__KEY_FILE", &key),
        ("FIXTURE__HTTP__TLS__RELOAD_INTERVAL", "100ms"),
    ]);
    let https = format!("https://localhost:{}/health/live", p.http.unwrap().port());
    let r = pinned(&old).get(&https).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(reqwest::get(p.url("/health/live")).await.is_err(), "plaintext on the TLS port");
    let metrics = common::client().get(p.management_url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200, "the management listener stays plaintext");

    let new = write_pki(dir.path());
    eventually("the renewed certificate is served", || {
        let (client, url) = (pinned(&new), https.clone());
        async move { client.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(pinned(&old).get(&https).send().await.is_err(), "the old certificate is no longer served");
    p.wait_for("TLS certificate reloaded");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn unusable_tls_files_stop_the_start_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path());
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate").unwrap();
    let garbage = dir.path().join("garbage.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    let (code, _, stderr) = common::run_cli(
        &["serve"],
        &[
            ("KEEL_ENV", "test"),
            ("FIXTURE__HTTP__PORT", "0"),
            ("FIXTURE__MANAGEMENT__ADDR", "127.0.0.1:0"),
            ("FIXTURE__HTTP__TLS__CERT_FILE", &garbage),
            ("FIXTURE__HTTP__TLS__KEY_FILE", &key),
        ],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("http.tls.cert_file") && stderr.contains("garbage.crt"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
