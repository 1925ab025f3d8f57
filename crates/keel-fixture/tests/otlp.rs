//! Spans are exported over OTLP/gRPC: a receiver runs in this process and checks what arrives.
//!
//! Its own test binary, because logging and tracing are set up once per process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::otlp::{Receiver, attr, hex, string};
use common::{Fixture, client, eventually};
use keel::telemetry::TelemetryConfig;
use keel::testing::TestDatabase;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Counts spans made in the process, exported or not: the SQL statements' (`sql`), the
/// messages' `create` and `send` spans; and the consumers' `consume` spans that ended.
#[derive(Clone, Default)]
struct SpansMade {
    sql: Arc<AtomicUsize>,
    create: Arc<AtomicUsize>,
    send: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
}

impl<S> tracing_subscriber::Layer<S> for SpansMade
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let (target, name) = (attrs.metadata().target(), attrs.metadata().name());
        let counter = match name {
            "sql" if target.starts_with("keel_data") => &self.sql,
            "create" if target.starts_with("keel_events") => &self.create,
            "send" if target.starts_with("keel_events") => &self.send,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && span.name() == "consume"
            && span.metadata().target().starts_with("keel_events")
        {
            self.processed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl SpansMade {
    fn made(&self) -> usize {
        self.sql.load(Ordering::SeqCst)
    }
    /// `create` and `send` spans made so far.
    fn messaging(&self) -> (usize, usize) {
        (self.create.load(Ordering::SeqCst), self.send.load(Ordering::SeqCst))
    }
    fn processed(&self) -> usize {
        self.processed.load(Ordering::SeqCst)
    }
}

/// A bound value no span may show.
const BOUND: &str = "otlp-bound-value-5e1f";

/// A fixture on one SQL backend, and the trace its requests run in.
struct SqlRun {
    /// The expected `db.system.name`.
    system: String,
    trace_id: String,
    /// The database's name (`db.namespace`) and host (`server.address`), none for SQLite.
    namespace: Option<String>,
    address: Option<String>,
    /// Its own fixture (SQLite runs in the main one).
    fixture: Option<Fixture>,
    _db: TestDatabase,
}

impl SqlRun {
    /// A run on a database server, in a fixture of its own using it.
    async fn on_server(system: &str, trace_id: &str, db: TestDatabase) -> Self {
        let fixture = Fixture::start(&[("FIXTURE__APP__DATABASE", "true"), ("FIXTURE__DATABASE__URL", db.url())]).await;
        Self {
            system: system.into(),
            trace_id: trace_id.into(),
            namespace: db_name(db.url()),
            address: db_host(db.url()),
            fixture: Some(fixture),
            _db: db,
        }
    }
}

/// The name of the database a server URL names.
fn db_name(url: &str) -> Option<String> {
    Some(url.rsplit('/').next()?.split('?').next()?.to_owned())
}

/// The host of a server URL.
fn db_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    Some(rest.split([':', '/']).next()?.to_owned())
}

/// Adds an item, then lists them, in a sampled trace `trace_id` (retrying while the database
/// connects).
async fn sql_requests(f: &Fixture, trace_id: &str, parent: &str) {
    let header = format!("00-{trace_id}-{parent}-01");
    eventually("the database to take an insert", || {
        let (url, header) = (f.url("/db/items"), header.clone());
        async move {
            let body = serde_json::json!({ "name": BOUND });
            client().post(url).header("traceparent", header).json(&body).send().await.unwrap().status() == 201
        }
    })
    .await;
    let r = client().get(f.url("/db/items")).header("traceparent", &header).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(BOUND));
}

/// The one span named `name` whose parent is a server span `server` of `trace_id`.
fn child<'a>(spans: &'a [&Span], trace_id: &str, server: &str, name: &str) -> &'a Span {
    let servers: Vec<_> =
        spans.iter().filter(|s| s.name == server && hex(&s.trace_id) == trace_id).map(|s| &s.span_id).collect();
    spans.iter().copied().find(|s| s.name == name && servers.contains(&&s.parent_span_id)).unwrap_or_else(|| {
        let names: Vec<_> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).map(|s| &s.name).collect();
        panic!("no {name} span under {server} in {trace_id}; that trace has {names:?}")
    })
}

fn int(v: Option<&AnyValue>) -> Option<i64> {
    match v {
        Some(AnyValue::IntValue(n)) => Some(*n),
        _ => None,
    }
}

/// The statements of one run's requests: client spans under their request's server span, in the
/// caller's trace, with the database conventions' attributes.
fn check_made_spans(spans: &[&Span], run: &SqlRun) {
    let t = run.trace_id.as_str();
    let sqlite = run.system == "sqlite";
    let placeholder = if run.system == "postgresql" { "$1" } else { "?" };
    let insert = child(spans, t, "POST /db/items", "INSERT items");
    let select = child(spans, t, "GET /db/items", "SELECT items");
    for (span, op, text) in [
        (insert, "INSERT", format!("INSERT INTO items (name) VALUES ({placeholder})")),
        (select, "SELECT", "SELECT id, name FROM items ORDER BY id".to_owned()),
    ] {
        let a = &span.attributes;
        let what = format!("{} on {}: {a:?}", span.name, run.system);
        assert_eq!(span.kind, 3, "SPAN_KIND_CLIENT: {what}");
        assert_eq!(hex(&span.trace_id), t, "{what}");
        assert_eq!(string(attr(a, "db.system.name")).as_deref(), Some(run.system.as_str()), "{what}");
        assert_eq!(string(attr(a, "db.operation.name")).as_deref(), Some(op), "{what}");
        assert_eq!(string(attr(a, "db.collection.name")).as_deref(), Some("items"), "{what}");
        assert_eq!(string(attr(a, "db.query.summary")).as_deref(), Some(span.name.as_str()), "{what}");
        assert_eq!(string(attr(a, "db.query.text")).as_deref(), Some(text.as_str()), "{what}");
        assert_eq!(string(attr(a, "db.namespace")), run.namespace, "{what}");
        if sqlite {
            assert!(attr(a, "server.address").is_none() && attr(a, "server.port").is_none(), "{what}");
        } else {
            assert_eq!(string(attr(a, "server.address")), run.address, "{what}");
            assert!(int(attr(a, "server.port")).is_some_and(|p| p > 0), "{what}");
        }
        assert!(attr(a, "error.type").is_none(), "{what}");
    }
    let rows = attr(&select.attributes, "db.response.returned_rows");
    assert!(int(rows).is_some_and(|n| n >= 1), "{:?}", select.attributes);
    // The transaction around the insert: its start and its commit.
    child(spans, t, "POST /db/items", "BEGIN");
    child(spans, t, "POST /db/items", "COMMIT");
}

/// A fixture whose `POST /events` enqueues `item.created` through the outbox on one bus, and
/// what the spans of the event it published in a sampled trace must show.
struct EventRun {
    /// The expected `messaging.system`.
    system: &'static str,
    trace_id: String,
    topic: String,
    event_id: String,
    /// The broker's `server.address` and `server.port`; none for the in-process bus.
    server: Option<(String, i64)>,
    /// Its own fixture (the in-process bus runs in the main one).
    fixture: Option<Fixture>,
    _db: Option<TestDatabase>,
}

/// Posts an item (the fixture enqueues its event) with a `traceparent` of `trace_id` and the
/// `flags`, then waits until a consumer has processed a message. Returns the event's id.
async fn post_event(f: &Fixture, made: &SpansMade, trace_id: &str, parent: &str, flags: &str) -> String {
    let before = made.processed();
    let r = client()
        .post(f.url("/events"))
        .header("traceparent", format!("00-{trace_id}-{parent}-{flags}"))
        .json(&serde_json::json!({ "name": "otlp-event" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let id = body["event_id"].as_str().unwrap().to_owned();
    eventually("the consumer to process the event", || async move { made.processed() > before }).await;
    id
}

/// The attributes every messaging span of `run` has, for `operation` (`create`, `send`,
/// `process`).
fn check_messaging_attributes(span: &Span, run: &EventRun, operation: &str) {
    let a = &span.attributes;
    let what = format!("{} on {}: {a:?}", span.name, run.system);
    assert_eq!(string(attr(a, "messaging.system")).as_deref(), Some(run.system), "{what}");
    assert_eq!(string(attr(a, "messaging.operation.type")).as_deref(), Some(operation), "{what}");
    assert_eq!(string(attr(a, "messaging.operation.name")).as_deref(), Some(operation), "{what}");
    assert_eq!(string(attr(a, "messaging.destination.name")).as_deref(), Some(run.topic.as_str()), "{what}");
    match &run.server {
        Some((address, port)) => {
            assert_eq!(string(attr(a, "server.address")).as_deref(), Some(address.as_str()), "{what}");
            assert_eq!(int(attr(a, "server.port")), Some(*port), "{what}");
        }
        None => assert!(attr(a, "server.address").is_none() && attr(a, "server.port").is_none(), "{what}"),
    }
    assert!(attr(a, "error.type").is_none(), "{what}");
}

/// The event of one run: a `create` span (PRODUCER) under its request's server span, whose
/// context the message carried; the relay's `send` (CLIENT, a trace of its own) linked to it; the
/// consumer's `process` (CONSUMER) in the request's trace, a child of the creation context and
/// linked to it.
fn check_event_spans(spans: &[&Span], run: &EventRun) {
    let (t, topic) = (run.trace_id.as_str(), run.topic.as_str());
    let names = || spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    let create = child(spans, t, "POST /events", &format!("create {topic}"));
    assert_eq!(create.kind, 4, "SPAN_KIND_PRODUCER: {create:?}");
    check_messaging_attributes(create, run, "create");
    assert_eq!(string(attr(&create.attributes, "messaging.message.id")), Some(run.event_id.clone()));
    assert!(
        spans.iter().any(|s| s.name == "INSERT keel_outbox" && s.parent_span_id == create.span_id),
        "the outbox's INSERT runs under the create span: {:?}",
        names()
    );
    let to_create = |l: &&opentelemetry_proto::tonic::trace::v1::span::Link| {
        l.span_id == create.span_id && l.trace_id == create.trace_id
    };
    let send = spans
        .iter()
        .find(|s| s.name == format!("send {topic}") && s.links.iter().any(|l| to_create(&l)))
        .unwrap_or_else(|| panic!("no send span linked to {topic}'s create span; got {:?}", names()));
    assert_eq!(send.kind, 3, "SPAN_KIND_CLIENT: {send:?}");
    assert!(send.parent_span_id.is_empty() && hex(&send.trace_id) != t, "a trace of its own: {send:?}");
    check_messaging_attributes(send, run, "send");
    let count = int(attr(&send.attributes, "messaging.batch.message_count"));
    assert!(count.is_some_and(|n| n >= 1), "{:?}", send.attributes);
    let link = send.links.iter().find(to_create).unwrap();
    assert_eq!(string(attr(&link.attributes, "messaging.message.id")), Some(run.event_id.clone()));
    let process = spans
        .iter()
        .find(|s| s.name == format!("process {topic}") && s.parent_span_id == create.span_id)
        .unwrap_or_else(|| panic!("no process span under {topic}'s create span; got {:?}", names()));
    assert_eq!(process.kind, 5, "SPAN_KIND_CONSUMER: {process:?}");
    assert_eq!(hex(&process.trace_id), t);
    assert!(process.links.iter().any(|l| to_create(&l)), "linked to the creation context: {process:?}");
    check_messaging_attributes(process, run, "process");
    let a = &process.attributes;
    assert_eq!(string(attr(a, "messaging.consumer.group.name")).as_deref(), Some("indexer"), "{a:?}");
    assert_eq!(string(attr(a, "messaging.message.id")), Some(run.event_id.clone()), "{a:?}");
    assert_eq!(int(attr(a, "attempt")), Some(1), "{a:?}");
}

/// The host and port of a broker URL (`nats://127.0.0.1:4222`).
fn broker(url: &str) -> (String, i64) {
    let host = db_host(url).unwrap();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let port = rest.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(4222);
    (host, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    let receiver = Receiver::default();
    let addr = receiver.start().await;

    let mut telemetry = TelemetryConfig::default();
    telemetry.otlp.endpoint = Some(format!("http://{addr}"));
    telemetry.otlp.timeout = Some(Duration::from_secs(5));
    let made_spans = SpansMade::default();
    let guard = keel::telemetry::init_with_layers(
        &keel::telemetry::TelemetryOptions {
            service: "fixture".into(),
            version: "9.9.9".into(),
            profile: keel::config::Profile::Test,
            level: "warn".into(),
            format: keel::telemetry::LogFormat::Json,
            telemetry,
            mask_fields: Vec::new(),
        },
        vec![Box::new(made_spans.clone())],
    )
    .unwrap();

    // An upstream that answers with the traceparent it received.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let echo = axum::Router::new().route(
        "/trace",
        axum::routing::get(|h: http::HeaderMap| async move {
            h.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        }),
    );
    tokio::spawn(async move { axum::serve(upstream, echo).await });
    let base = format!("http://{upstream_addr}");
    // Redis, when it runs here: its calls are child spans of the request's.
    let redis = keel::testing::require("Redis", &keel::testing::redis_url())
        .then(|| keel::testing::TestRedis::new(&keel::testing::redis_url()));
    // SQLite always, in this fixture: its statements are child spans of the request's.
    let sqlite = TestDatabase::sqlite().unwrap();
    let mut env = vec![
        ("FIXTURE__APP__UPSTREAM", "true".to_owned()),
        ("FIXTURE__UPSTREAMS__ECHO__BASE_URL", base.clone()),
        ("FIXTURE__APP__DATABASE", "true".to_owned()),
        ("FIXTURE__DATABASE__URL", sqlite.url().to_owned()),
        // Events, on the in-process bus: `POST /events` enqueues one through the outbox.
        ("FIXTURE__APP__EVENTS", "true".to_owned()),
        ("FIXTURE__OUTBOX__POLL_INTERVAL", "50ms".to_owned()),
    ];
    if let Some(keys) = &redis {
        env.push(("FIXTURE__APP__REDIS", "true".to_owned()));
        env.push(("FIXTURE__REDIS__URL", keel::testing::redis_url()));
        env.push(("FIXTURE__REDIS__KEY_PREFIX", keys.prefix().to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = Fixture::start(&env).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = client()
        .get(f.url("/items/7"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // What an outbound call made inside the handler would carry: same trace, the server span.
    let traced = |path: &str| {
        let url = f.url(path);
        async move {
            let header = format!("00-{trace_id}-{parent}-01");
            client().get(url).header("traceparent", header).send().await.unwrap().text().await.unwrap()
        }
    };
    let outbound = traced("/traceparent").await;
    let parts: Vec<&str> = outbound.split('-').collect();
    assert_eq!(parts.len(), 4, "{outbound}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"), "{outbound}");
    assert_ne!(parts[2], parent, "the parent of an outbound call is the server span");
    // Keel's HTTP client sends it: the upstream sees the caller's trace.
    let seen = traced("/proxy/trace").await;
    assert_eq!(seen.split('-').nth(1), Some(trace_id), "upstream got: {seen}");
    // SQL statements, on SQLite here and on PostgreSQL and MariaDB/MySQL when they run here, each
    // in a trace of its own; then one request its caller did not sample makes no span at all.
    let mut runs = vec![SqlRun {
        system: "sqlite".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4701".into(),
        namespace: None,
        address: None,
        fixture: None,
        _db: sqlite,
    }];
    if keel::testing::require("PostgreSQL", &keel::testing::postgres_url()) {
        let db = TestDatabase::postgres(&keel::testing::postgres_url()).await.unwrap();
        runs.push(SqlRun::on_server("postgresql", "4bf92f3577b34da6a3ce929d0e0e4702", db).await);
    }
    if keel::testing::require("MariaDB", &keel::testing::mysql_url()) {
        let db = TestDatabase::mysql(&keel::testing::mysql_url()).await.unwrap();
        let version: String = {
            use sqlx::Connection as _;
            let mut c = sqlx::AnyConnection::connect(db.url()).await.unwrap();
            sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut c).await.unwrap()
        };
        let system = if version.to_ascii_lowercase().contains("mariadb") { "mariadb" } else { "mysql" };
        runs.push(SqlRun::on_server(system, "4bf92f3577b34da6a3ce929d0e0e4703", db).await);
    }
    for run in &runs {
        sql_requests(run.fixture.as_ref().unwrap_or(&f), &run.trace_id, parent).await;
    }
    let made = made_spans.made();
    assert!(made >= 3 * runs.len(), "a span per statement: {made}");
    let unsampled = format!("00-0af7651916cd43dd8448eb211c80319c-{parent}-00");
    let r = client().get(f.url("/db/items")).header("traceparent", unsampled).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(made_spans.made(), made, "no span is made for a statement of a request not sampled");
    if redis.is_some() {
        eventually("Redis to answer", || async {
            let header = format!("00-{trace_id}-{parent}-01");
            let r = client().get(f.url("/cache/otlp")).header("traceparent", header).send().await.unwrap();
            r.status() == 404
        })
        .await;
    }
    // An event through the outbox, the relay and the consumer, on the in-process bus and on
    // NATS when it runs here: each in a sampled trace of its own.
    let mut events = vec![EventRun {
        system: "in_process",
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4711".into(),
        topic: "items".into(),
        event_id: String::new(),
        server: None,
        fixture: None,
        _db: None,
    }];
    let nats = keel::testing::nats_url();
    if keel::testing::require("NATS", &nats) {
        let db = TestDatabase::sqlite().unwrap();
        let topic = keel::testing::unique_topic("otlp");
        let fixture = Fixture::start(&[
            ("FIXTURE__APP__DATABASE", "true"),
            ("FIXTURE__DATABASE__URL", db.url()),
            ("FIXTURE__APP__EVENTS", "true"),
            ("FIXTURE__APP__EVENTS_TOPIC", &topic),
            ("FIXTURE__BUS__BACKEND", "nats"),
            ("FIXTURE__BUS__URL", &nats),
            ("FIXTURE__OUTBOX__POLL_INTERVAL", "50ms"),
        ])
        .await;
        events.push(EventRun {
            system: "nats",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4712".into(),
            topic,
            event_id: String::new(),
            server: Some(broker(&nats)),
            fixture: Some(fixture),
            _db: Some(db),
        });
    }
    for run in &mut events {
        let ef = run.fixture.as_ref().unwrap_or(&f);
        eventually("the events fixture to be ready", || {
            let url = ef.url("/health/ready");
            async move { client().get(url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        run.event_id = post_event(ef, &made_spans, &run.trace_id, parent, "01").await;
    }
    // An event of a request its caller did not sample makes no create or send span.
    let messaging = made_spans.messaging();
    assert!(messaging.0 >= events.len() && messaging.1 >= events.len(), "{messaging:?}");
    post_event(&f, &made_spans, "0af7651916cd43dd8448eb211c803199", parent, "00").await;
    assert_eq!(made_spans.messaging(), messaging, "no create or send span for an event not sampled");
    // A publish straight to the bus under a sampled span: a send span whose context the message
    // carries as its creation context.
    let direct_trace = "4bf92f3577b34da6a3ce929d0e0e4721";
    let carried = {
        use tracing::Instrument as _;
        let bus = keel::events::Bus::in_process(10);
        let mut sub = bus.subscribe("direct", "otlp", &Default::default()).await.unwrap();
        let span = tracing::info_span!("direct");
        let caller = keel::telemetry::context_from_traceparent(&format!("00-{direct_trace}-{parent}-01"), None);
        keel::telemetry::set_parent(&span, caller);
        async {
            let envelope = keel::events::Envelope::raw("otlp", "direct.sent", 1, serde_json::json!({}));
            bus.publish("direct", &envelope).await.unwrap();
        }
        .instrument(span)
        .await;
        let delivery = sub.next().await.unwrap().unwrap();
        let carried = delivery.envelope().unwrap().traceparent.clone().unwrap();
        delivery.ack().await.unwrap();
        carried
    };
    f.stop().await;
    for run in &mut runs {
        if let Some(f) = run.fixture.take() {
            f.stop().await;
        }
    }
    for run in &mut events {
        if let Some(f) = run.fixture.take() {
            f.stop().await;
        }
    }
    let g = guard.clone();
    tokio::task::spawn_blocking(move || g.flush()).await.unwrap();

    eventually("span exported", || {
        let r = receiver.clone();
        async move { !r.0.lock().unwrap().is_empty() }
    })
    .await;
    let batches = receiver.0.lock().unwrap().clone();
    let resource_spans: Vec<_> = batches.iter().flat_map(|b| b.resource_spans.iter()).collect();
    let resource = resource_spans[0].resource.as_ref().expect("resource");
    assert_eq!(string(attr(&resource.attributes, "service.name")).as_deref(), Some("fixture"));
    assert_eq!(string(attr(&resource.attributes, "service.version")).as_deref(), Some("9.9.9"));
    assert_eq!(string(attr(&resource.attributes, "deployment.environment.name")).as_deref(), Some("test"));

    let spans: Vec<_> = resource_spans.iter().flat_map(|r| r.scope_spans.iter()).flat_map(|s| s.spans.iter()).collect();
    let span = spans
        .iter()
        .find(|s| s.name == "GET /items/{id}")
        .unwrap_or_else(|| panic!("no server span; got {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
    assert_eq!(hex(&span.trace_id), trace_id, "continues the caller's trace");
    assert_eq!(hex(&span.parent_span_id), parent, "child of the caller's span");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(string(attr(&span.attributes, "http.route")).as_deref(), Some("/items/{id}"));
    assert_eq!(string(attr(&span.attributes, "http.request.method")).as_deref(), Some("GET"));
    assert!(attr(&span.attributes, "request_id").is_some());
    let outbound_parent = spans.iter().find(|s| s.name == "GET /traceparent").expect("second span");
    assert_eq!(hex(&outbound_parent.span_id), parts[2], "injected span id is the server span's");
    if redis.is_some() {
        // The Redis GET of `/cache/{key}`: a client span under that request's server span, with
        // the database conventions' attributes and neither key nor value.
        let servers: Vec<_> = spans.iter().filter(|s| s.name == "GET /cache/{key}").map(|s| &s.span_id).collect();
        let get = spans
            .iter()
            .find(|s| s.name == "GET" && servers.contains(&&s.parent_span_id))
            .unwrap_or_else(|| panic!("no Redis span; got {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
        assert_eq!(get.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(hex(&get.trace_id), trace_id);
        assert_eq!(string(attr(&get.attributes, "db.system.name")).as_deref(), Some("redis"));
        assert_eq!(string(attr(&get.attributes, "db.operation.name")).as_deref(), Some("GET"));
        assert_eq!(string(attr(&get.attributes, "server.address")).as_deref(), Some("127.0.0.1"));
        let port = int(attr(&get.attributes, "server.port"));
        assert!(port.is_some_and(|p| p > 0), "server.port is an integer: {:?}", get.attributes);
        assert!(!format!("{:?}", get.attributes).contains("otlp"), "no key in the span: {:?}", get.attributes);
    }
    for run in &runs {
        check_made_spans(&spans, run);
    }
    for run in &events {
        check_event_spans(&spans, run);
    }
    let direct = spans.iter().find(|s| s.name == "direct").expect("the direct publisher's span");
    let send = child(&spans, direct_trace, "direct", "send direct");
    assert_eq!(send.kind, 4, "SPAN_KIND_PRODUCER: its context is the creation context: {send:?}");
    assert_eq!(carried.split('-').nth(2), Some(hex(&send.span_id).as_str()), "{carried}");
    assert_eq!(send.parent_span_id, direct.span_id);
    assert_eq!(string(attr(&send.attributes, "messaging.message.id")).map(|id| id.len()), Some(36));
    assert!(attr(&send.attributes, "messaging.batch.message_count").is_none(), "one message: {send:?}");
    for unsampled in ["0af7651916cd43dd8448eb211c80319c", "0af7651916cd43dd8448eb211c803199"] {
        let exported: Vec<_> = spans.iter().filter(|s| hex(&s.trace_id) == unsampled).collect();
        assert!(exported.is_empty(), "nothing of an unsampled request is exported: {exported:?}");
    }
    // No bound value in any span.
    for s in &spans {
        assert!(!format!("{:?}", s.attributes).contains(BOUND), "a bound value in {}: {:?}", s.name, s.attributes);
    }
    guard.shutdown();
}
