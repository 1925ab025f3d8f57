//! `upstreams.<name>.tls.*`: how a client checks the server it calls and proves who it is.

use std::path::PathBuf;
use std::sync::Arc;

use keel_config::{Section, Validation};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

use crate::server::{TlsError, certificates, read_file};

/// TLS of an outbound client (`https://` upstreams). Unset, the server is checked against the
/// public web PKI roots and no client certificate is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientTlsConfig {
    /// CA certificates, PEM, that the server's certificate must chain to: only these are trusted
    /// (a pinned, usually private, CA). Default none: the public web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate chain, PEM, sent when the server asks (mTLS). Default none.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`'s first certificate, PEM. Default none.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the URL's host (a
    /// certificate issued for `symbols.internal` reached through an IP). Default: the host.
    pub server_name: Option<String>,
}

impl Section for ClientTlsConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => v.invalid("key_file", "is required with cert_file"),
            (None, Some(_)) => v.invalid("cert_file", "is required with key_file"),
            _ => {}
        }
        if let Some(name) = &self.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            v.invalid("server_name", "must be a DNS name or an IP address");
        }
    }
}

impl ClientTlsConfig {
    /// Whether anything differs from the default (public roots, no client certificate).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.server_name.is_some()
    }

    /// The rustls configuration (ring, named explicitly), reading the files now. `section` names
    /// the settings in errors (`upstreams.symbols.tls`); `alpn` is what to offer (`h2` for gRPC).
    pub fn rustls(&self, section: &str, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        match read_file(section, "ca_file", self.ca_file.as_deref())? {
            Some(pem) => {
                let path = self.ca_file.clone().unwrap_or_default();
                let setting = format!("{section}.ca_file");
                for c in certificates(&setting, &path, &pem)? {
                    roots.add(c).map_err(|e| TlsError::Pem {
                        setting: setting.clone(),
                        path: path.clone(),
                        message: format!("not a usable CA certificate: {e}"),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots);
        let cert = read_file(section, "cert_file", self.cert_file.as_deref())?;
        let key = read_file(section, "key_file", self.key_file.as_deref())?;
        let mut config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let path = self.cert_file.clone().unwrap_or_default();
                let chain = certificates(&format!("{section}.cert_file"), &path, &cert)?;
                let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Pem {
                    setting: format!("{section}.key_file"),
                    path: self.key_file.clone().unwrap_or_default(),
                    message: format!("holds no usable private key: {e}"),
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::Rustls(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A client configuration for a service probing its own TLS listener on the loopback
/// (`healthcheck`): it trusts exactly the certificate in `cfg.cert_file` — the one the listener
/// serves — whatever CA issued it, and offers `alpn`. `section` names the settings in errors.
/// A listener with `client_auth: required` cannot be probed this way: the probe has no client
/// certificate.
pub fn probe_config(
    cfg: &crate::ServerTlsConfig,
    section: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let pem = read_file(section, "cert_file", cfg.cert_file.as_deref())?.unwrap_or_default();
    let path = cfg.cert_file.clone().unwrap_or_default();
    let leaf = certificates(&format!("{section}.cert_file"), &path, &pem)?.swap_remove(0);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned { leaf, provider: provider.clone() });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Trusts one end-entity certificate, byte for byte (the listener's own), and checks the
/// handshake's signatures with it as usual.
#[derive(Debug)]
struct Pinned {
    leaf: rustls::pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
