//! An application's own tracing layer, given to the service builder, sees each request's span
//! and the events inside it. The service runs through `keel::run_from`, as a binary's `main`
//! would run it, and stops on SIGTERM.
//!
//! Its own test binary: telemetry is set up once per process, and the test signals itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Default)]
struct Seen {
    /// Span name and fields, by span id.
    spans: BTreeMap<u64, (String, BTreeMap<String, String>)>,
    /// Each event's message and the name of the span it was logged in.
    events: Vec<(String, Option<String>, BTreeMap<String, String>)>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}").trim_matches('"').to_owned());
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().spans.insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.0.lock().unwrap().spans.get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let span = ctx.event_span(event).map(|s| s.name().to_owned());
        self.0.lock().unwrap().events.push((message, span, fields));
    }
}

#[test]
fn an_application_layer_sees_the_request_span_and_the_events_inside_it() {
    let recorder = Recorder::default();
    let port = common::free_port();
    let mgmt = common::free_port();
    let service = keel::Service::new(keel::BuildInfo::new("applayer", "1.0.0", None, "test"))
        .router(axum::Router::new().route(
            "/hello/{name}",
            axum::routing::get(|| async {
                tracing::info!(answer = 42, "inside the handler");
                "hi"
            }),
        ))
        .config_defaults([
            ("APPLAYER__HTTP__ADDR", "127.0.0.1".to_owned()),
            ("APPLAYER__HTTP__PORT", port.to_string()),
            ("APPLAYER__MANAGEMENT__ADDR", format!("127.0.0.1:{mgmt}")),
            ("APPLAYER__LOG__LEVEL", "info".to_owned()),
        ])
        .tracing_layer(recorder.clone());
    let server = std::thread::spawn(move || keel::app::run_from(service, ["applayer", "serve"]));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(async {
        let client = common::client();
        let url = format!("http://127.0.0.1:{port}/hello/ada");
        for _ in 0..200 {
            if let Ok(r) = client.get(&url).header("user-agent", "app-layer-test").send().await {
                return r.status();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service never answered on {url}");
    });
    assert_eq!(status, 200);

    let seen = recorder.0.lock().unwrap().clone();
    let (_, request) = seen
        .spans
        .values()
        .find(|(name, f)| name == "request" && f.get("url.path").map(String::as_str) == Some("/hello/ada"))
        .unwrap_or_else(|| panic!("no request span: {seen:#?}"));
    assert_eq!(request["service"], "applayer");
    assert_eq!(request["http.request.method"], "GET");
    assert_eq!(request["http.route"], "/hello/{name}");
    assert_eq!(request["http.response.status_code"], "200");
    assert_eq!(request["url.scheme"], "http");
    assert_eq!(request["server.address"], "127.0.0.1");
    assert_eq!(request["server.port"], port.to_string());
    assert_eq!(request["client.address"], "127.0.0.1");
    assert_eq!(request["user_agent.original"], "app-layer-test");
    assert_eq!(request["network.protocol.version"], "1.1");
    assert!(request.contains_key("request_id"), "{request:?}");
    let inside = seen.events.iter().find(|(m, _, _)| m == "inside the handler").expect("the handler's event");
    assert_eq!(inside.1.as_deref(), Some("request"), "logged inside the request span");
    assert_eq!(inside.2["answer"], "42");
    let access = seen.events.iter().find(|(m, _, _)| m == "request finished").expect("the access line");
    assert_eq!(access.1.as_deref(), Some("request"));

    // SIGTERM: the service's own handler stops it, and `run_from` returns.
    let killed = std::process::Command::new("kill").args(["-TERM", &std::process::id().to_string()]).status().unwrap();
    assert!(killed.success());
    let code = server.join().unwrap();
    assert_eq!(format!("{code:?}"), format!("{:?}", std::process::ExitCode::SUCCESS));
}
