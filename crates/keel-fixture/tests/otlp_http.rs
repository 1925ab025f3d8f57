//! OTLP/HTTP with protobuf bodies, configured only through the standard `OTEL_*` variables: a
//! receiver at `/v1/traces` decodes what arrives.
//!
//! The service runs as a child process, with the variables in its environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use std::time::Duration;

use common::otlp::{attr, string};
use common::{Proc, client, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

type Seen = Arc<Mutex<Vec<(http::HeaderMap, ExportTraceServiceRequest)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_http_receiver_configured_by_otel_variables() {
    let seen = Seen::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: http::HeaderMap, body: axum::body::Bytes| async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                seen.lock().unwrap().push((headers, req));
                ([(http::header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The fixture binary, so the variables are its own and `serve` checks them like any setting.
    let endpoint = format!("http://{addr}");
    let mut fixture = Proc::spawn(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=from%20env,x-tenant=acme"),
        ("OTEL_SERVICE_NAME", "renamed"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=core,service.version=overridden"),
    ]);
    let resp = client().get(fixture.url("/items/7")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A clean stop flushes the exporter.
    fixture.signal("TERM");
    assert_eq!(fixture.wait_exit(Duration::from_secs(30)), 0, "{}", fixture.seen.join("\n"));
    eventually("span exported over HTTP", || {
        let s = seen.clone();
        async move { !s.lock().unwrap().is_empty() }
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let (headers, req) = &seen[0];
    assert_eq!(headers.get("x-api-key").unwrap(), "from env");
    assert_eq!(headers.get("x-tenant").unwrap(), "acme");
    assert_eq!(headers.get("content-type").unwrap(), "application/x-protobuf");
    let rs = &req.resource_spans[0];
    let resource = rs.resource.as_ref().expect("resource");
    assert_eq!(string(attr(&resource.attributes, "service.name")).as_deref(), Some("renamed"));
    assert_eq!(string(attr(&resource.attributes, "team")).as_deref(), Some("core"));
    // Keel's own attributes win over the variable's.
    let version = string(attr(&resource.attributes, "service.version"));
    assert!(version.is_some_and(|v| v != "overridden"));
    assert_eq!(string(attr(&resource.attributes, "deployment.environment.name")).as_deref(), Some("test"));
    let names: Vec<&str> = rs.scope_spans.iter().flat_map(|s| s.spans.iter()).map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"GET /items/{id}"), "{names:?}");
}
