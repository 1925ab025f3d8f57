//! The acceptor against a rustls client: server certificates, client certificates (optional and
//! required), reloading changed files, keeping the previous ones when the new are unusable, and
//! start-up errors that name the setting. Certificates come from a CA made here (rcgen).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_tls::{Acceptor, ClientAuth, ServerTlsConfig, TlsError};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A CA, and PEM certificates and keys it signs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { pem, issuer: Issuer::new(params, key) }
    }

    /// (certificate, key) for `names`.
    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, ca: &Ca) -> ServerTlsConfig {
    let (cert, key) = ca.sign(&["localhost"]);
    let mut cfg = ServerTlsConfig::default();
    cfg.cert_file = Some(write(dir, "tls.crt", &cert));
    cfg.key_file = Some(write(dir, "tls.key", &key));
    cfg
}

/// A client trusting `ca`, presenting `identity` (certificate, key) if given.
fn client(ca: &Ca, identity: Option<(String, String)>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Serves `acceptor` on a fresh port: each connection gets "hello" after its handshake, and its
/// client's certificate count. Returns the address.
async fn serve(acceptor: Acceptor) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let peers = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                    let _ = tls.write_all(format!("hello {peers}").as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// What the server says over a TLS connection from `client`, or the client's error.
async fn talk(addr: std::net::SocketAddr, client: &tokio_rustls::TlsConnector) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = client.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut text = String::new();
    tls.read_to_string(&mut text).await.map_err(|e| e.to_string())?;
    if text.is_empty() { Err("closed without an answer".into()) } else { Ok(text) }
}

#[tokio::test]
async fn serves_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let acceptor = Acceptor::new(&config(dir.path(), &ca)).unwrap().unwrap();
    let addr = serve(acceptor).await;
    assert_eq!(talk(addr, &client(&ca, None)).await.unwrap(), "hello 0");
    // A client that trusts another CA refuses the server.
    let e = talk(addr, &client(&Ca::new(), None)).await.unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test]
async fn tls_is_off_without_files() {
    assert!(Acceptor::new(&ServerTlsConfig::default()).unwrap().is_none());
}

#[tokio::test]
async fn required_client_certificates_refuse_clients_without_one_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let clients = Ca::new();
    let mut cfg = config(dir.path(), &ca);
    cfg.client_ca_file = Some(write(dir.path(), "clients.crt", &clients.pem));
    cfg.client_auth = ClientAuth::Required;
    let addr = serve(Acceptor::new(&cfg).unwrap().unwrap()).await;

    assert_eq!(talk(addr, &client(&ca, Some(clients.sign(&["orders"])))).await.unwrap(), "hello 1");
    // TLS 1.3: the client learns of the refusal when it reads.
    assert!(talk(addr, &client(&ca, None)).await.is_err(), "no certificate");
    assert!(talk(addr, &client(&ca, Some(Ca::new().sign(&["orders"])))).await.is_err(), "another CA");
}

#[tokio::test]
async fn optional_client_certificates_are_checked_when_given() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let clients = Ca::new();
    let mut cfg = config(dir.path(), &ca);
    cfg.client_ca_file = Some(write(dir.path(), "clients.crt", &clients.pem));
    cfg.client_auth = ClientAuth::Optional;
    let addr = serve(Acceptor::new(&cfg).unwrap().unwrap()).await;

    assert_eq!(talk(addr, &client(&ca, None)).await.unwrap(), "hello 0");
    assert_eq!(talk(addr, &client(&ca, Some(clients.sign(&["orders"])))).await.unwrap(), "hello 1");
    assert!(talk(addr, &client(&ca, Some(Ca::new().sign(&["orders"])))).await.is_err(), "another CA");
}

#[tokio::test]
async fn changed_files_are_reloaded_and_unusable_ones_keep_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let old = Ca::new();
    let mut cfg = config(dir.path(), &old);
    cfg.reload_interval = Duration::from_millis(50);
    let acceptor = Acceptor::new(&cfg).unwrap().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(acceptor.clone().watch(stop.clone()));
    let addr = serve(acceptor).await;
    assert!(talk(addr, &client(&old, None)).await.is_ok());

    // A renewal half written (a certificate whose key is not there yet): still the old one.
    let new = Ca::new();
    let (cert, key) = new.sign(&["localhost"]);
    write(dir.path(), "tls.crt", &cert);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(talk(addr, &client(&old, None)).await.is_ok(), "kept the previous certificate");

    // Whole again: new connections get the new certificate.
    write(dir.path(), "tls.key", &key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while talk(addr, &client(&new, None)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was not loaded within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(talk(addr, &client(&old, None)).await.is_err(), "the old certificate is gone");

    // A file removed (a secret volume mid-swap): the current one stays.
    std::fs::remove_file(dir.path().join("tls.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(talk(addr, &client(&new, None)).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn unusable_files_stop_the_start_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let cfg = config(dir.path(), &ca);

    let mut missing = cfg.clone();
    missing.key_file = Some(dir.path().join("nope.key"));
    let e = Acceptor::new(&missing).unwrap_err();
    assert!(matches!(e, TlsError::Read { .. }) && e.to_string().contains("http.tls.key_file"), "{e}");

    let mut garbage = cfg.clone();
    garbage.cert_file = Some(write(dir.path(), "garbage.crt", "not a certificate"));
    let e = Acceptor::new(&garbage).unwrap_err();
    assert!(e.to_string().contains("http.tls.cert_file"), "{e}");

    // A key that is not the certificate's.
    let mut mismatched = cfg.clone();
    mismatched.key_file = Some(write(dir.path(), "other.key", &ca.sign(&["localhost"]).1));
    let e = Acceptor::new(&mismatched).unwrap_err();
    assert!(matches!(e, TlsError::Rustls(_)), "{e}");
    assert!(!e.to_string().contains("PRIVATE KEY"), "no key material in errors: {e}");
}

#[tokio::test]
async fn the_served_certificates_expiry_follows_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let signed_until = |year: i32| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 2);
        (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
    };
    let (cert, key) = signed_until(2031);
    let mut cfg = ServerTlsConfig::default();
    cfg.cert_file = Some(write(dir.path(), "tls.crt", &cert));
    cfg.key_file = Some(write(dir.path(), "tls.key", &key));
    cfg.reload_interval = Duration::from_millis(50);
    let acceptor = Acceptor::new(&cfg).unwrap().unwrap();
    // 2031-01-02T00:00:00Z, then 2032-01-02T00:00:00Z
    assert_eq!(acceptor.not_after(), Some(1_925_078_400));
    let stop = CancellationToken::new();
    let watching = tokio::spawn(acceptor.clone().watch(stop.clone()));
    let (cert, key) = signed_until(2032);
    write(dir.path(), "tls.key", &key);
    write(dir.path(), "tls.crt", &cert);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while acceptor.not_after() != Some(1_956_614_400) {
        assert!(tokio::time::Instant::now() < deadline, "still {:?}", acceptor.not_after());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    watching.await.unwrap();
}
