//! Certificates for tests that speak TLS: a throwaway CA and a server certificate it signed.

/// A CA and a server certificate it signed, all PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate: what a client pins.
    pub ca: String,
    /// The server's certificate.
    pub cert: String,
    /// The server's private key (PKCS#8).
    pub key: String,
    /// A client certificate the CA signed (`client`), for mTLS.
    pub client_cert: String,
    /// Its private key (PKCS#8).
    pub client_key: String,
}

/// A fresh CA and a server certificate it signed for `names` (DNS names or IP addresses).
///
/// ```
/// let pki = keel_testing::test_pki(&["localhost", "127.0.0.1"]);
/// assert!(pki.ca.starts_with("-----BEGIN CERTIFICATE-----") && pki.key.contains("PRIVATE KEY"));
/// ```
#[allow(clippy::expect_used)]
pub fn test_pki(names: &[&str]) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).expect("a self-signed CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a server key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .expect("server parameters")
        .signed_by(&key, &issuer)
        .expect("a signed certificate");
    let client_key = KeyPair::generate().expect("a client key");
    let client = CertificateParams::new(vec!["client".to_owned()])
        .expect("client parameters")
        .signed_by(&client_key, &issuer)
        .expect("a signed client certificate");
    TestPki {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}
