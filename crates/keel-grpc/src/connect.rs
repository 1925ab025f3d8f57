//! How the gRPC client reaches its upstream: TCP (no Nagle), then TLS with Keel's client
//! configuration for an `https://` upstream (a pinned CA, a client certificate; ALPN `h2`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::BoxError;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A connection to the upstream.
pub(crate) type Io = TokioIo<Either<TcpStream, TlsStream<TcpStream>>>;

/// Connects to the URI it is given; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    /// For an `https://` upstream: the configuration, and the name the certificate must carry
    /// when it is not the host. tonic's endpoint is given the URL as `http://` (tonic refuses
    /// `https://` without TLS of its own), so this, not the scheme, says whether to speak TLS.
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>,
}

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the upstream URL has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let Some((config, name)) = tls else {
                return Ok(TokioIo::new(Either::Left(tcp)));
            };
            let name = match name {
                Some(n) => n,
                None => ServerName::try_from(host)?,
            };
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(Either::Right(tls)))
        })
    }
}
