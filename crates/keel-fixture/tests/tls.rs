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
    // `healthcheck` probes the TLS listener, trusting the certificate it serves.
    let port = p.http.unwrap().port().to_string();
    let probe = |ready: bool| {
        let (port, cert, key) = (port.clone(), cert.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            let args: &[&str] = if ready { &["healthcheck", "--ready"] } else { &["healthcheck"] };
            common::run_cli(
                args,
                &[
                    ("KEEL_ENV", "test"),
                    ("FIXTURE__HTTP__PORT", &port),
                    ("FIXTURE__HTTP__TLS__CERT_FILE", &cert),
                    ("FIXTURE__HTTP__TLS__KEY_FILE", &key),
                ],
            )
        })
    };
    let (code, out, err) = probe(false).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");

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

/// Keel's HTTP client to an mTLS upstream: it pins the upstream's CA and presents its client
/// certificate (`upstreams.<name>.tls`); without the certificate, or trusting another CA, it
/// cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_client_pins_the_upstream_ca_and_presents_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = keel::testing::test_pki(&["localhost", "127.0.0.1"]);
    let other = keel::testing::test_pki(&["localhost"]);
    for (name, text) in [
        ("tls.crt", &pki.cert),
        ("tls.key", &pki.key),
        ("ca.crt", &pki.ca),
        ("client.crt", &pki.client_cert),
        ("client.key", &pki.client_key),
        ("other-ca.crt", &other.ca),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let file = |n: &str| dir.path().join(n).display().to_string();
    let f = common::Fixture::start(&[
        ("FIXTURE__HTTP__TLS__CERT_FILE", &file("tls.crt")),
        ("FIXTURE__HTTP__TLS__KEY_FILE", &file("tls.key")),
        ("FIXTURE__HTTP__TLS__CLIENT_CA_FILE", &file("ca.crt")),
        ("FIXTURE__HTTP__TLS__CLIENT_AUTH", "required"),
    ])
    .await;
    let base = format!("https://localhost:{}", f.running().http_addr().port());
    let call = |ca: &str, identity: bool| {
        let mut cfg = keel::http::client::UpstreamConfig::default();
        cfg.base_url = base.clone();
        cfg.retry.max_attempts = 1;
        cfg.tls.ca_file = Some(dir.path().join(ca));
        if identity {
            cfg.tls.cert_file = Some(dir.path().join("client.crt"));
            cfg.tls.key_file = Some(dir.path().join("client.key"));
        }
        let breaker = std::sync::Arc::new(keel::resilience::breaker::CircuitBreaker::new("up", cfg.breaker.clone()));
        let client = keel::http::client::Client::new("up", &cfg, breaker, None).unwrap();
        async move { client.get("/hello").await }
    };
    let ok = call("ca.crt", true).await.unwrap();
    assert_eq!(ok.status, 200);
    assert!(call("ca.crt", false).await.is_err(), "no client certificate: refused in the handshake");
    assert!(call("other-ca.crt", true).await.is_err(), "a server outside the pinned CA is not trusted");
    f.stop().await;
}
