//! The acceptor: a rustls server configuration built from the files, swapped when they change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientAuth, ServerTlsConfig};

/// Why TLS could not be set up. Names the file and never holds key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        /// The setting that names the file (`http.tls.cert_file` …).
        setting: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{setting}: {path}: {message}")]
    Pem {
        /// The setting that names the file.
        setting: String,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA (a key that does not match the certificate,
    /// an unsupported algorithm).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The handshake failed, or took longer than `handshake_timeout`.
    #[error("TLS handshake: {0}")]
    Handshake(#[from] std::io::Error),
}

/// In the extensions of every request that came over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encrypted;

/// The client's certificate chain (leaf first), in each request's extensions on a listener that
/// asks for client certificates and was given one.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

impl PeerCertificates {
    /// The chain the client of `stream` presented, if any.
    pub fn of<IO>(stream: &TlsStream<IO>) -> Option<Self> {
        let chain = stream.get_ref().1.peer_certificates()?;
        Some(Self(Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())))
    }
}

/// Terminates TLS for a listener with the current configuration. Cheap to clone; clones share
/// the configuration and see reloads.
#[derive(Debug, Clone)]
pub struct Acceptor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ServerTlsConfig,
    /// The section the configuration came from (`http.tls`), for errors.
    section: &'static str,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// When the served certificate expires (Unix seconds), when it could be read.
    not_after: Option<i64>,
    /// [`Files::fingerprint`] of what the configuration was built from: the key's bytes are not
    /// kept beside rustls' own copy.
    fingerprint: u64,
}

/// The files' contents, as read for one (re)build.
#[derive(Hash)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Acceptor {
    /// The acceptor for `cfg`, or `None` when TLS is off. Reads and checks every file now, so a
    /// bad one stops the start.
    pub fn new(cfg: &ServerTlsConfig) -> Result<Option<Self>, TlsError> {
        Self::for_section(cfg, "http.tls")
    }

    /// [`Acceptor::new`] for the configuration at `section` (`grpc.tls`), which errors name.
    pub fn for_section(cfg: &ServerTlsConfig, section: &'static str) -> Result<Option<Self>, TlsError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let files = read(cfg, section)?;
        let (config, not_after) = build(cfg, section, &files)?;
        let current = RwLock::new(Loaded { config, not_after, fingerprint: files.fingerprint() });
        Ok(Some(Self { inner: Arc::new(Inner { cfg: cfg.clone(), section, current }) }))
    }

    /// When the certificate served now stops being valid (its `notAfter`, Unix seconds), for
    /// `tls_certificate_expiry_timestamp_seconds`; `None` if it could not be read.
    pub fn not_after(&self) -> Option<i64> {
        self.inner.current.read().unwrap_or_else(PoisonError::into_inner).not_after
    }

    /// How long a client has to finish the handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.inner.cfg.handshake_timeout
    }

    /// The handshake on `io` with the current configuration, bounded by `handshake_timeout`.
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.inner.current.read().unwrap_or_else(PoisonError::into_inner).config.clone();
        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
        match tokio::time::timeout(self.inner.cfg.handshake_timeout, handshake).await {
            Ok(done) => Ok(done?),
            Err(_) => Err(TlsError::Handshake(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("not finished within {:?}", self.inner.cfg.handshake_timeout),
            ))),
        }
    }

    /// Reads the files every `reload_interval` until `stop` is cancelled; see the crate docs.
    pub async fn watch(self, stop: CancellationToken) {
        self.watch_then(stop, |_| {}).await;
    }

    /// [`Acceptor::watch`], calling `on_reload` after each reload that took effect (to export the
    /// new certificate's expiry, say).
    pub async fn watch_then(self, stop: CancellationToken, mut on_reload: impl FnMut(&Self) + Send) {
        let mut tick = tokio::time::interval(self.inner.cfg.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // What was last refused (the contents, and why), so a bad or missing file is logged once
        // per change, not every tick.
        let mut refused: Option<(Option<u64>, String)> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Reload::Unchanged => refused = None,
                Reload::Reloaded => {
                    refused = None;
                    tracing::info!(cert_file = ?self.inner.cfg.cert_file, "TLS certificate reloaded");
                    on_reload(&self);
                }
                Reload::Refused(fingerprint, e) => {
                    let now = Some((fingerprint, e.to_string()));
                    if now != refused {
                        tracing::error!(error = %e, "TLS files changed but cannot be used; serving with the previous ones");
                    }
                    refused = now;
                }
            }
        }
    }

    /// Builds a new configuration if the files changed.
    fn reload(&self) -> Reload {
        let files = match read(&self.inner.cfg, self.inner.section) {
            Ok(files) => files,
            Err(e) => return Reload::Refused(None, e),
        };
        let fingerprint = files.fingerprint();
        if self.inner.current.read().unwrap_or_else(PoisonError::into_inner).fingerprint == fingerprint {
            return Reload::Unchanged;
        }
        match build(&self.inner.cfg, self.inner.section, &files) {
            Ok((config, not_after)) => {
                *self.inner.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Loaded { config, not_after, fingerprint };
                Reload::Reloaded
            }
            Err(e) => Reload::Refused(Some(fingerprint), e),
        }
    }
}

enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed and cannot be used: their fingerprint (`None` when one could not be
    /// read), and why.
    Refused(Option<u64>, TlsError),
}

impl Files {
    /// Tells changed contents from unchanged ones (not a security check: the files are trusted).
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

fn read(cfg: &ServerTlsConfig, section: &str) -> Result<Files, TlsError> {
    let missing = |field: &str| TlsError::Pem {
        setting: format!("{section}.{field}"),
        path: PathBuf::new(),
        message: "is not set".into(),
    };
    Ok(Files {
        cert: read_file(section, "cert_file", cfg.cert_file.as_deref())?.ok_or_else(|| missing("cert_file"))?,
        key: read_file(section, "key_file", cfg.key_file.as_deref())?.ok_or_else(|| missing("key_file"))?,
        ca: read_file(section, "client_ca_file", cfg.client_ca_file.as_deref())?,
    })
}

/// The contents of the file at `section.field`, if one is named.
pub(crate) fn read_file(section: &str, field: &str, path: Option<&Path>) -> Result<Option<Vec<u8>>, TlsError> {
    path.map(|p| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            setting: format!("{section}.{field}"),
            path: p.to_owned(),
            source,
        })
    })
    .transpose()
}

fn path_of(p: &Option<PathBuf>) -> PathBuf {
    p.clone().unwrap_or_default()
}

pub(crate) fn certificates(setting: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::Pem { setting: setting.to_owned(), path: path.to_owned(), message };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The `notAfter` of a DER certificate, in Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_cert::der::Decode as _;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    i64::try_from(parsed.tbs_certificate.validity.not_after.to_unix_duration().as_secs()).ok()
}

/// The server configuration, and when its certificate expires.
fn build(cfg: &ServerTlsConfig, section: &str, files: &Files) -> Result<(Arc<ServerConfig>, Option<i64>), TlsError> {
    let cert_path = path_of(&cfg.cert_file);
    let key_path = path_of(&cfg.key_file);
    let ca_setting = format!("{section}.client_ca_file");
    let certs = certificates(&format!("{section}.cert_file"), &cert_path, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::Pem {
        setting: format!("{section}.key_file"),
        path: key_path,
        message: format!("holds no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match (cfg.client_auth, &files.ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (auth, ca) => {
            let ca_path = path_of(&cfg.client_ca_file);
            let ca = ca.as_deref().ok_or_else(|| TlsError::Pem {
                setting: ca_setting.clone(),
                path: ca_path.clone(),
                message: "is required when client_auth is optional or required".into(),
            })?;
            let mut roots = RootCertStore::empty();
            for c in certificates(&ca_setting, &ca_path, ca)? {
                roots.add(c).map_err(|e| TlsError::Pem {
                    setting: ca_setting.clone(),
                    path: ca_path.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Rustls(e.to_string()))?)
        }
    };
    let expires = certs.first().and_then(not_after);
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), expires))
}
