//! An in-process OTLP/gRPC trace receiver.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Collects every export it is sent, and the metadata (headers) each came with.
#[derive(Clone, Default)]
pub struct Receiver(pub Arc<Mutex<Vec<ExportTraceServiceRequest>>>, pub Arc<Mutex<Vec<http::HeaderMap>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.1.lock().unwrap().push(req.metadata().clone().into_headers());
        self.0.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on an ephemeral port; returns the address.
    pub async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(self.clone()));
        tokio::spawn(server.serve_with_incoming(incoming));
        addr
    }

    /// Serves over TLS with `cert_pem` and `key_pem` on an ephemeral port; returns the address.
    pub async fn start_tls(&self, cert_pem: &str, key_pem: &str) -> SocketAddr {
        use tonic::transport::{Identity, ServerTlsConfig};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(TraceServiceServer::new(self.clone()));
        tokio::spawn(server.serve_with_incoming(incoming));
        addr
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }
}

/// A CA, and a server certificate it signed for `localhost` and `127.0.0.1`: (CA PEM, server
/// certificate PEM, server key PEM).
pub fn test_pki() -> (String, String, String) {
    let pki = keel::testing::test_pki(&["localhost", "127.0.0.1"]);
    (pki.ca, pki.cert, pki.key)
}

pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

pub fn string(v: Option<&AnyValue>) -> Option<String> {
    match v {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets up telemetry for the fixture with JSON lines at `warn` and `telemetry`'s export.
pub fn init_json(version: &str, telemetry: keel::telemetry::TelemetryConfig) -> keel::telemetry::TelemetryGuard {
    keel::telemetry::init(&keel::telemetry::TelemetryOptions {
        service: "fixture".into(),
        version: version.into(),
        profile: keel::config::Profile::Test,
        level: "warn".into(),
        format: keel::telemetry::LogFormat::Json,
        telemetry,
        mask_fields: Vec::new(),
    })
    .unwrap()
}
