//! An OTLP trace receiver for the started service: the trace ids of the spans it exports, so
//! the trace check sees propagation even when the logs do not carry trace ids. One port serves
//! every OTLP transport an SDK may use: gRPC, and HTTP (`POST /v1/traces`) with protobuf or
//! JSON bodies, gzip-compressed or not.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message as _;

use crate::AuditError;

/// Trace ids kept; a service exporting more during an audit is not short of proof.
const MAX_TRACES: usize = 100_000;
/// The largest OTLP/HTTP body accepted, after decompression (an SDK's batch is far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The OTLP transport the started service is told to use (`OTEL_EXPORTER_OTLP_PROTOCOL`); the
/// receiver serves all three whatever it is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`.
    Grpc,
    /// `http/protobuf`: the OpenTelemetry specification's default.
    #[default]
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

impl OtlpProtocol {
    /// Parses the variable's values: `grpc`, `http/protobuf`, `http/json`.
    pub fn parse(s: &str) -> Result<OtlpProtocol, String> {
        match s {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            _ => Err(format!("`{s}`: grpc, http/protobuf or http/json")),
        }
    }

    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
        }
    }
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<HashSet<String>>>);

impl Receiver {
    fn keep(&self, ids: impl Iterator<Item = String>) {
        if let Ok(mut seen) = self.0.lock() {
            for id in ids {
                if seen.len() >= MAX_TRACES {
                    break;
                }
                seen.insert(id);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn span_ids(req: &ExportTraceServiceRequest) -> impl Iterator<Item = String> + '_ {
    req.resource_spans.iter().flat_map(|r| r.scope_spans.iter()).flat_map(|s| s.spans.iter()).map(|s| hex(&s.trace_id))
}

/// The trace ids of an OTLP/JSON export: hex strings in
/// `resourceSpans[].scopeSpans[].spans[].traceId` (`instrumentationLibrarySpans` before OTLP 0.15).
fn json_ids(doc: &serde_json::Value) -> Vec<String> {
    let list = |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_array()).cloned().unwrap_or_default();
    let mut ids = Vec::new();
    for resource in list(doc, "resourceSpans") {
        let scopes = [list(&resource, "scopeSpans"), list(&resource, "instrumentationLibrarySpans")].concat();
        for scope in scopes {
            for span in list(&scope, "spans") {
                if let Some(id) = span.get("traceId").and_then(|t| t.as_str()) {
                    ids.push(id.to_ascii_lowercase());
                }
            }
        }
    }
    ids
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(span_ids(req.get_ref()));
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// `POST /v1/traces`: protobuf or JSON, answered in kind as the OTLP/HTTP specification says
/// (400 for a body that does not decode, 415 for another media type).
async fn http_export(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match media.as_str() {
        "application/x-protobuf" => match ExportTraceServiceRequest::decode(body) {
            Ok(req) => {
                receiver.keep(span_ids(&req));
                let ok = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                ([(header::CONTENT_TYPE, "application/x-protobuf")], ok).into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("not an OTLP trace export: {e}")).into_response(),
        },
        "application/json" => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(doc) => {
                receiver.keep(json_ids(&doc).into_iter());
                ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response(),
        },
        _ => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/x-protobuf or application/json").into_response(),
    }
}

/// The receiver, serving until dropped.
pub(crate) struct Sink {
    addr: SocketAddr,
    protocol: OtlpProtocol,
    ids: Arc<Mutex<HashSet<String>>>,
    /// Dropped with the sink: the server stops accepting and finishes the exports under way.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Sink {
    /// Serves OTLP (gRPC and HTTP) on an ephemeral port of 127.0.0.1; the service is told to
    /// use `protocol`.
    pub(crate) async fn start(protocol: OtlpProtocol) -> Result<Sink, AuditError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| AuditError::Live(format!("OTLP receiver: {e}")))?;
        let addr = listener.local_addr().map_err(|e| AuditError::Live(format!("OTLP receiver: {e}")))?;
        let receiver = Receiver::default();
        let ids = receiver.0.clone();
        let http = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            // The limit above applies to what this yields: a gzip bomb stops at MAX_BODY.
            .layer(tower_http::decompression::RequestDecompressionLayer::new())
            .with_state(receiver.clone());
        let app = tonic::service::Routes::new(TraceServiceServer::new(receiver)).into_axum_router().merge(http);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // axum::serve speaks HTTP/1.1 and HTTP/2 without TLS, so gRPC and OTLP/HTTP share the port.
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Sink { addr, protocol, ids, _stop: stop })
    }

    /// The variables that point an OpenTelemetry SDK (Keel's included) at this receiver; an
    /// OTLP/HTTP exporter appends `/v1/traces` to the endpoint.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let endpoint = format!("http://{}", self.addr);
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), self.protocol.as_str().into()),
            ("OTEL_TRACES_EXPORTER".into(), "otlp".into()),
            ("KEEL_AUDIT_OTLP_ENDPOINT".into(), endpoint),
        ]
    }

    /// Whether a span of trace `id` (32 hex digits) was received.
    pub(crate) fn saw(&self, id: &str) -> bool {
        self.ids.lock().is_ok_and(|ids| ids.contains(id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write as _;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn export(trace_id: u8) -> ExportTraceServiceRequest {
        let span =
            Span { trace_id: vec![trace_id; 16], span_id: vec![1; 8], name: "GET /".into(), ..Default::default() };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn endpoint(sink: &Sink) -> String {
        sink.env().into_iter().find(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap().1
    }

    #[tokio::test]
    async fn spans_exported_over_grpc_are_seen_by_trace_id() {
        let sink = Sink::start(OtlpProtocol::Grpc).await.unwrap();
        assert!(sink.env().contains(&("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into())));
        let mut client = TraceServiceClient::connect(endpoint(&sink)).await.unwrap();
        client.export(export(0xab)).await.unwrap();
        assert!(sink.saw(&"ab".repeat(16)));
        assert!(!sink.saw(&"cd".repeat(16)));
        // Dropped, the sink stops serving once its connections are gone.
        let addr = sink.addr;
        drop((sink, client));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still serving on {addr}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn spans_exported_over_http_are_seen_in_protobuf_json_and_gzip() {
        let sink = Sink::start(OtlpProtocol::default()).await.unwrap();
        assert!(sink.env().contains(&("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into())));
        let url = format!("{}/v1/traces", endpoint(&sink));
        let http = crate::live::client::http(&[]).unwrap();
        let post = |body: Vec<u8>, media: &'static str| http.post(&url).header("content-type", media).body(body);

        let r = post(export(0x01).encode_to_vec(), "application/x-protobuf").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
        assert!(sink.saw(&"01".repeat(16)));

        // OTLP/JSON spells ids in hex; older SDKs nest spans in instrumentationLibrarySpans.
        let json = serde_json::json!({"resourceSpans": [
            {"scopeSpans": [{"spans": [{"traceId": "0202020202020202020202020202020A", "spanId": "0101010101010101"}]}]},
            {"instrumentationLibrarySpans": [{"spans": [{"traceId": "03".repeat(16)}]}]},
        ]});
        let r = post(serde_json::to_vec(&json).unwrap(), "application/json; charset=utf-8").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(sink.saw("0202020202020202020202020202020a") && sink.saw(&"03".repeat(16)));

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&export(0x04).encode_to_vec()).unwrap();
        let r = post(gz.finish().unwrap(), "application/x-protobuf").header("content-encoding", "gzip").send().await;
        assert_eq!(r.unwrap().status(), 200);
        assert!(sink.saw(&"04".repeat(16)));
    }

    #[tokio::test]
    async fn bad_http_exports_are_refused_and_bounded() {
        let sink = Sink::start(OtlpProtocol::HttpJson).await.unwrap();
        let url = format!("{}/v1/traces", endpoint(&sink));
        let http = crate::live::client::http(&[]).unwrap();
        let status = |body: Vec<u8>, media: &'static str| {
            let req = http.post(&url).header("content-type", media).body(body);
            async move { req.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status(b"\xff\xff\xff".to_vec(), "application/x-protobuf").await, 400);
        assert_eq!(status(b"{".to_vec(), "application/json").await, 400);
        assert_eq!(status(b"{}".to_vec(), "text/plain").await, 415);
        // A gzip bomb: 64 MiB of zeros in about 64 KiB; decompression stops at the limit.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            gz.write_all(&vec![0u8; 1024 * 1024]).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1024 * 1024);
        let r = http.post(&url).header("content-type", "application/json").header("content-encoding", "gzip");
        let code = r.body(bomb).send().await.unwrap().status().as_u16();
        assert!(code == 413 || code == 400, "{code}");
        assert_eq!(
            http.post(&url).header("content-encoding", "br").body("x").send().await.unwrap().status(),
            415,
            "an encoding it cannot read"
        );
        assert!(!sink.saw(&"00".repeat(16)));
    }

    #[test]
    fn protocols_parse_as_the_variable_spells_them() {
        for p in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf, OtlpProtocol::HttpJson] {
            assert_eq!(OtlpProtocol::parse(p.as_str()), Ok(p));
        }
        assert!(OtlpProtocol::parse("http").is_err());
    }
}
