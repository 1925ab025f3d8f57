//! `http.tls.*`: TLS on a listener.

use std::path::PathBuf;
use std::time::Duration;

use keel_config::{Section, Validation};
use serde::{Deserialize, Serialize};

/// TLS on a listener. Off unless `cert_file` and `key_file` are set; then the listener speaks
/// only TLS (HTTP/2 and HTTP/1.1 by ALPN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ServerTlsConfig {
    /// The certificate chain, PEM, the server's own certificate first. Default none.
    pub cert_file: Option<PathBuf>,
    /// The private key of the first certificate, PEM (PKCS#8, PKCS#1 or SEC1). Default none.
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM, that client certificates must chain to. Required when
    /// `client_auth` is not `none`. Default none.
    pub client_ca_file: Option<PathBuf>,
    /// Whether clients present a certificate: `none` (default), `optional` (checked when
    /// presented) or `required` (mTLS: a client without one is refused during the handshake).
    pub client_auth: ClientAuth,
    /// How often the files are read again; a change takes effect for new connections. Default
    /// `10s`.
    #[serde(with = "keel_config::duration")]
    pub reload_interval: Duration,
    /// A client must finish the handshake within this, or the connection is closed. Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub handshake_timeout: Duration,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: ClientAuth::None,
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerTlsConfig {
    /// Whether the listener serves TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Client certificates on a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for and, when presented, must chain to `client_ca_file`.
    Optional,
    /// Every client must present a certificate that chains to `client_ca_file` (mTLS).
    Required,
}

impl Section for ServerTlsConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => v.invalid("key_file", "is required with cert_file"),
            (None, Some(_)) => v.invalid("cert_file", "is required with key_file"),
            _ => {}
        }
        if self.client_auth != ClientAuth::None {
            if self.client_ca_file.is_none() {
                v.invalid("client_ca_file", "is required when client_auth is optional or required");
            }
            if !self.enabled() {
                v.invalid("client_auth", "needs TLS: set cert_file and key_file");
            }
        } else if self.client_ca_file.is_some() {
            v.invalid("client_auth", "is none, so client_ca_file is unused: set optional or required");
        }
        for (key, d) in [("reload_interval", self.reload_interval), ("handshake_timeout", self.handshake_timeout)] {
            if d.is_zero() {
                v.invalid(key, "must be more than 0s");
            }
        }
    }
}
