//! TLS for Keel's listeners: rustls with one crypto provider (ring), the certificate chain and
//! key from PEM files, reloaded without a restart when the files change, and client
//! certificates (mTLS) checked against a configured CA; and [`ClientTlsConfig`], the clients' side:
//! a pinned CA and a client certificate.
//!
//! This is `keel-tls`, re-exported by `keel` as `keel::tls`; of Keel's crates it depends on
//! `keel-config` only. `keel-http` holds a [`ServerTlsConfig`] as `http.tls`, and `keel-server`
//! terminates TLS with an [`Acceptor`] when it is set.
//!
//! # Reloading
//!
//! [`Acceptor::watch`] reads the certificate, key and CA files every `reload_interval` and, when
//! any of them changed, builds a new configuration from all three. New connections use it;
//! connections already open keep the one they were accepted with. A file that cannot be read or
//! parsed (a renewal half written) keeps the previous configuration and logs an error each time
//! it is found different; the reload happens once the files are whole again. Comparing contents
//! rather than modification times also catches Kubernetes' secret volume updates, which swap a
//! symbolic link.
//!
//! # Example
//!
//! ```no_run
//! use keel_tls::{Acceptor, ServerTlsConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), keel_tls::TlsError> {
//! let mut cfg = ServerTlsConfig::default();
//! cfg.cert_file = Some("/run/secrets/tls.crt".into());
//! cfg.key_file = Some("/run/secrets/tls.key".into());
//! let Some(acceptor) = Acceptor::new(&cfg)? else { return Ok(()) };
//! tokio::spawn(acceptor.clone().watch(CancellationToken::new()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! let (tcp, _) = listener.accept().await?;
//! let tls = acceptor.accept(tcp).await?;
//! # drop(tls); Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod client;
mod config;
mod server;

pub use client::{ClientTlsConfig, probe_config};
pub use config::{ClientAuth, ServerTlsConfig};
pub use server::{Acceptor, Encrypted, PeerCertificates, TlsError};

/// The process's rustls crypto provider (ring). Installing it as the default does not change
/// what Keel's own TLS uses, which names it explicitly; other libraries' rustls (the HTTP client,
/// database and broker drivers) need a process default, and two compiled-in providers panic
/// without one.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
