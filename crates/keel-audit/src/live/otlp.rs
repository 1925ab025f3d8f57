//! An OTLP/gRPC trace receiver for the started service: the trace ids of the spans it exports,
//! so the trace check sees propagation even when the logs do not carry trace ids.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

use crate::AuditError;

/// Trace ids kept; a service exporting more during an audit is not short of proof.
const MAX_TRACES: usize = 100_000;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<HashSet<String>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Ok(mut ids) = self.0.lock() {
            let spans =
                req.get_ref().resource_spans.iter().flat_map(|r| r.scope_spans.iter()).flat_map(|s| s.spans.iter());
            for span in spans {
                if ids.len() >= MAX_TRACES {
                    break;
                }
                ids.insert(span.trace_id.iter().map(|b| format!("{b:02x}")).collect());
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The receiver, serving until dropped.
pub(crate) struct Sink {
    addr: SocketAddr,
    ids: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Serves OTLP/gRPC on an ephemeral port of 127.0.0.1.
    pub(crate) async fn start() -> Result<Sink, AuditError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| AuditError::Live(format!("OTLP receiver: {e}")))?;
        let addr = listener.local_addr().map_err(|e| AuditError::Live(format!("OTLP receiver: {e}")))?;
        let receiver = Receiver::default();
        let ids = receiver.0.clone();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(receiver));
        let task = tokio::spawn(async move {
            let _ = server.serve_with_incoming(incoming).await;
        });
        Ok(Sink { addr, ids, task })
    }

    /// The variables that point an OpenTelemetry SDK (Keel's included) at this receiver.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let endpoint = format!("http://{}", self.addr);
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
            ("OTEL_TRACES_EXPORTER".into(), "otlp".into()),
            ("KEEL_AUDIT_OTLP_ENDPOINT".into(), endpoint),
        ]
    }

    /// Whether a span of trace `id` (32 hex digits) was received.
    pub(crate) fn saw(&self, id: &str) -> bool {
        self.ids.lock().is_ok_and(|ids| ids.contains(id))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    #[tokio::test]
    async fn exported_spans_are_seen_by_trace_id() {
        let sink = Sink::start().await.unwrap();
        let endpoint = sink.env().into_iter().find(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap().1;
        let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
        let span = Span { trace_id: vec![0xab; 16], span_id: vec![1; 8], name: "GET /".into(), ..Default::default() };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        };
        client.export(req).await.unwrap();
        assert!(sink.saw(&"ab".repeat(16)));
        assert!(!sink.saw(&"cd".repeat(16)));
    }
}
