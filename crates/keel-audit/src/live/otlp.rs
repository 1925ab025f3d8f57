//! An OTLP receiver for the started service: the trace ids of the spans it exports, so the trace
//! check sees propagation even when the logs do not carry trace ids. One port serves every OTLP
//! transport an SDK may use: gRPC, and HTTP (`POST /v1/traces`) with protobuf or JSON bodies,
//! gzip-compressed or not. Metrics and logs exported the same ways are accepted and dropped, so
//! a service's SDK has nothing to complain about in the logs the audit reads.
//!
//! Requests decode into messages that keep only the trace ids (every other field is skipped), so
//! memory is bounded by the body limit, the few requests served at once, the time a body may take
//! and [`MAX_TRACES`] ids of 16 bytes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message as _;
use serde::Deserialize;

use crate::AuditError;

/// Trace ids kept; a service exporting more during an audit is not short of proof.
const MAX_TRACES: usize = 100_000;
/// The largest export accepted, after decompression: tonic's default for a gRPC message; an
/// SDK's batch (512 spans) is far smaller.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Exports decoded at once; more wait their turn.
const CONCURRENT: usize = 4;
/// How long an export's body may take to arrive: a stalled one must not hold a turn.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const GRPC_TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const GRPC_METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const GRPC_LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

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

// `ExportTraceServiceRequest` cut down to the path to each span's trace id (same field numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct TraceIds {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceTraceIds>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceTraceIds {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeTraceIds>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeTraceIds {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<SpanTraceId>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SpanTraceId {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
}

/// Any message, every field skipped: a metrics or logs export, and every export's response
/// (an empty response is full success).
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

// The OTLP/JSON form, cut down the same way; ids are hex.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonTraceIds {
    #[serde(default)]
    resource_spans: Vec<JsonResource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonResource {
    #[serde(default)]
    scope_spans: Vec<JsonScope>,
    /// The name of `scopeSpans` before OTLP 0.15.
    #[serde(default)]
    instrumentation_library_spans: Vec<JsonScope>,
}

#[derive(Deserialize)]
struct JsonScope {
    #[serde(default)]
    spans: Vec<JsonSpan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpan {
    /// `null` is the default value in the protobuf JSON mapping.
    #[serde(default)]
    trace_id: Option<String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<HashSet<String>>>);

impl Receiver {
    /// Keeps `ids` (32 lowercase hex digits each) up to [`MAX_TRACES`].
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

// Only W3C trace ids (16 bytes, 32 hex digits in JSON) are kept: other lengths are no trace id,
// and would let one export fill memory with a few large ones.

fn span_ids(req: &TraceIds) -> impl Iterator<Item = String> + '_ {
    req.resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .filter(|s| s.trace_id.len() == 16)
        .map(|s| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
}

fn json_ids(doc: &JsonTraceIds) -> impl Iterator<Item = String> + '_ {
    doc.resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter().chain(r.instrumentation_library_spans.iter()))
        .flat_map(|s| s.spans.iter())
        .filter_map(|s| s.trace_id.as_deref())
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// The unary gRPC method of traces: records the trace ids of an export.
struct TraceExport(Receiver);

impl tonic::server::UnaryService<TraceIds> for TraceExport {
    type Response = Ignored;
    type Future = std::future::Ready<Result<tonic::Response<Ignored>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<TraceIds>) -> Self::Future {
        self.0.keep(span_ids(req.get_ref()));
        std::future::ready(Ok(tonic::Response::new(Ignored {})))
    }
}

/// The unary gRPC method of metrics and logs: accepts and drops.
struct Discard;

impl tonic::server::UnaryService<Ignored> for Discard {
    type Response = Ignored;
    type Future = std::future::Ready<Result<tonic::Response<Ignored>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<Ignored>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(Ignored {})))
    }
}

fn grpc<D: prost::Message + Default + Send + 'static>() -> tonic::server::Grpc<tonic_prost::ProstCodec<Ignored, D>> {
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_BODY)
}

async fn grpc_traces(State(receiver): State<Receiver>, req: Request) -> Response {
    grpc::<TraceIds>().unary(TraceExport(receiver), req).await.into_response()
}

async fn grpc_ignored(req: Request) -> Response {
    grpc::<Ignored>().unary(Discard, req).await.into_response()
}

/// How an OTLP/HTTP request is encoded; its response (errors included) is encoded alike.
#[derive(Clone, Copy, PartialEq)]
enum Media {
    Protobuf,
    Json,
}

fn media(headers: &HeaderMap) -> Option<Media> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    match value.split(';').next()?.trim().to_ascii_lowercase().as_str() {
        "application/x-protobuf" => Some(Media::Protobuf),
        "application/json" => Some(Media::Json),
        _ => None,
    }
}

/// A success or an error, as OTLP/HTTP answers: the (empty) response message, or a
/// `google.rpc.Status` with `code` (3 invalid argument, 8 resource exhausted).
fn answer(media: Media, status: StatusCode, code: i32, message: &str) -> Response {
    let (kind, body) = match (media, status.is_success()) {
        (Media::Protobuf, true) => ("application/x-protobuf", Ignored {}.encode_to_vec()),
        (Media::Protobuf, false) => {
            ("application/x-protobuf", RpcStatus { code, message: message.to_owned() }.encode_to_vec())
        }
        (Media::Json, true) => ("application/json", b"{}".to_vec()),
        (Media::Json, false) => {
            ("application/json", serde_json::json!({"code": code, "message": message}).to_string().into_bytes())
        }
    };
    (status, [(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The answer to a body of another media type (JSON: there is no request encoding to follow).
fn unsupported() -> Response {
    answer(Media::Json, StatusCode::UNSUPPORTED_MEDIA_TYPE, 3, "application/x-protobuf or application/json")
}

/// The answer to a body that is too large (413) or unreadable (400).
fn rejected(e: &BytesRejection, media: Media) -> Response {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE { 8 } else { 3 };
    answer(media, status, code, &e.body_text())
}

/// `POST /v1/traces`: protobuf or JSON (400 for a body that does not decode, 415 for another
/// media type).
async fn http_traces(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(media) = media(&headers) else { return unsupported() };
    let body = match body {
        Ok(b) => b,
        Err(e) => return rejected(&e, media),
    };
    let decoded = match media {
        Media::Protobuf => TraceIds::decode(body).map(|req| receiver.keep(span_ids(&req))).map_err(|e| e.to_string()),
        Media::Json => serde_json::from_slice::<JsonTraceIds>(&body)
            .map(|doc| receiver.keep(json_ids(&doc)))
            .map_err(|e| e.to_string()),
    };
    match decoded {
        Ok(()) => answer(media, StatusCode::OK, 0, ""),
        Err(e) => answer(media, StatusCode::BAD_REQUEST, 3, &format!("not an OTLP trace export: {e}")),
    }
}

/// `POST /v1/metrics` and `/v1/logs`: accepted and dropped.
async fn http_ignored(headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let Some(media) = media(&headers) else { return unsupported() };
    match body {
        Ok(_) => answer(media, StatusCode::OK, 0, ""),
        Err(e) => rejected(&e, media),
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
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| AuditError::Live(format!("OTLP receiver: {e}")))?;
        let addr = listener.local_addr().map_err(|e| AuditError::Live(format!("OTLP receiver: {e}")))?;
        let receiver = Receiver::default();
        let ids = receiver.0.clone();
        let app = axum::Router::new()
            .route(GRPC_TRACES, post(grpc_traces))
            .route(GRPC_METRICS, post(grpc_ignored))
            .route(GRPC_LOGS, post(grpc_ignored))
            .route("/v1/traces", post(http_traces))
            .route("/v1/metrics", post(http_ignored))
            .route("/v1/logs", post(http_ignored))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            // The limit above applies to what this yields: a gzip bomb stops at MAX_BODY. (gRPC
            // messages are decompressed, and bounded, by tonic.)
            .layer(tower_http::decompression::RequestDecompressionLayer::new())
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(CONCURRENT))
            .with_state(receiver);
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

    /// The variables that point an OpenTelemetry SDK (Keel's included) at this receiver. The
    /// trace-specific ones are set too: an SDK prefers them, and the audit's environment may
    /// hold others.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let endpoint = format!("http://{}", self.addr);
        // A signal's own endpoint is used as given: OTLP/HTTP's names the path.
        let traces = match self.protocol {
            OtlpProtocol::Grpc => endpoint.clone(),
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => format!("{endpoint}/v1/traces"),
        };
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), traces),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), self.protocol.as_str().into()),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".into(), self.protocol.as_str().into()),
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
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
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
        assert!(sink.env().contains(&("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), endpoint(&sink))));
        let mut client = TraceServiceClient::connect(endpoint(&sink)).await.unwrap();
        // The full message, every field the trimmed one skips included.
        client.export(export(0xab)).await.unwrap();
        assert!(sink.saw(&"ab".repeat(16)));
        assert!(!sink.saw(&"cd".repeat(16)));
        let mut gzipped = client.clone().send_compressed(tonic::codec::CompressionEncoding::Gzip);
        gzipped.export(export(0xac)).await.unwrap();
        assert!(sink.saw(&"ac".repeat(16)));
        // Too large for a message: refused, not buffered.
        let mut big = export(0xad);
        big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(MAX_BODY);
        let refused = client.export(big.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
        // Small on the wire, too large once decompressed.
        let refused = gzipped.export(big).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(!sink.saw(&"ad".repeat(16)));
        // Metrics and logs are taken and dropped.
        let channel = tonic::transport::Endpoint::from_shared(endpoint(&sink)).unwrap().connect().await.unwrap();
        for path in [GRPC_METRICS, GRPC_LOGS] {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<Ignored, Ignored>::default();
            let path = axum::http::uri::PathAndQuery::from_static(path);
            grpc.unary(tonic::Request::new(Ignored {}), path, codec).await.unwrap();
        }
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

        assert!(sink.env().contains(&("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), url.clone())));
        let r = post(export(0x01).encode_to_vec(), "application/x-protobuf").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
        assert!(sink.saw(&"01".repeat(16)));

        // OTLP/JSON spells ids in hex; older SDKs nest spans in instrumentationLibrarySpans.
        let json = serde_json::json!({"resourceSpans": [
            {"scopeSpans": [{"spans": [
                {"traceId": "0202020202020202020202020202020A", "spanId": "0101010101010101"},
                {"traceId": null}, {"traceId": "05".repeat(17)}, {"traceId": "zz".repeat(16)},
            ]}]},
            {"instrumentationLibrarySpans": [{"spans": [{"traceId": "03".repeat(16)}]}]},
        ]});
        let r = post(serde_json::to_vec(&json).unwrap(), "application/json; charset=utf-8").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(sink.saw("0202020202020202020202020202020a") && sink.saw(&"03".repeat(16)));
        // Only W3C trace ids are kept, whatever their encoding.
        let mut odd = export(0x06);
        odd.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0x06; 17];
        assert_eq!(post(odd.encode_to_vec(), "application/x-protobuf").send().await.unwrap().status(), 200);
        assert_eq!(sink.ids.lock().unwrap().len(), 3, "{:?}", sink.ids.lock().unwrap());

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&export(0x04).encode_to_vec()).unwrap();
        let r = post(gz.finish().unwrap(), "application/x-protobuf").header("content-encoding", "gzip").send().await;
        assert_eq!(r.unwrap().status(), 200);
        assert!(sink.saw(&"04".repeat(16)));

        // Metrics and logs are taken and dropped, answered in kind.
        for path in ["/v1/metrics", "/v1/logs"] {
            let url = format!("{}{path}", endpoint(&sink));
            let r = http.post(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
            assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "{}".to_owned()), "{path}");
            let r = http.post(&url).header("content-type", "application/x-protobuf").body(vec![]).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }

    #[tokio::test]
    async fn bad_http_exports_are_refused_and_bounded() {
        let sink = Sink::start(OtlpProtocol::HttpJson).await.unwrap();
        let url = format!("{}/v1/traces", endpoint(&sink));
        let http = crate::live::client::http(&[]).unwrap();
        let send = |body: Vec<u8>, media: &'static str| http.post(&url).header("content-type", media).body(body).send();
        // Errors are google.rpc.Status messages, encoded as the request was.
        let r = send(b"\xff\xff\xff".to_vec(), "application/x-protobuf").await.unwrap();
        assert_eq!(
            (r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()),
            (400, "application/x-protobuf")
        );
        let status = RpcStatus::decode(r.bytes().await.unwrap()).unwrap();
        assert!(status.code == 3 && status.message.contains("not an OTLP trace export"), "{status:?}");
        let r = send(b"{".to_vec(), "application/json").await.unwrap();
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 3, "{body}");
        let r = send(br#"{"resourceSpans": 5}"#.to_vec(), "application/json").await.unwrap();
        assert_eq!(r.status(), 400, "JSON of the wrong shape");
        assert_eq!(send(b"{}".to_vec(), "text/plain").await.unwrap().status(), 415);
        // A gzip bomb: 64 MiB of zeros in about 64 KiB; decompression stops at the limit.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            gz.write_all(&vec![0u8; 1024 * 1024]).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1024 * 1024);
        let r = http.post(&url).header("content-type", "application/json").header("content-encoding", "gzip");
        let r = r.body(bomb).send().await.unwrap();
        assert_eq!(r.status(), 413);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 8, "{body}");
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
