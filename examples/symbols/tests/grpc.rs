//! `symbols.v1.Symbols` end to end, through a tonic client over a channel to the running service
//! (gRPC shares the public listener with HTTP), on MariaDB: the operations, and the same checks
//! and error classes as the HTTP API, outages included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{App, Bearer, Broker, Env, eventually, mariadb};
use keel::testing::{FaultProxy, Mode};
use prost_types::value::Kind;
use serde_json::{Value, json};
use symbols::proto::v1::symbols_client::SymbolsClient;
use symbols::proto::v1::{
    CreateSymbolRequest, DeleteSymbolRequest, GetSymbolRequest, ListSymbolsRequest, UpdateSymbolRequest,
};
use symbols::proto::{json_to_struct, struct_to_json};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = SymbolsClient<InterceptedService<Channel, Bearer>>;

/// A client whose calls carry a writer's token.
async fn client(app: &App) -> Client {
    client_with(app, Some(common::writer_token())).await
}

async fn client_with(app: &App, token: Option<String>) -> Client {
    let channel = Channel::from_shared(app.base.clone()).unwrap().connect().await.unwrap();
    SymbolsClient::with_interceptor(channel, Bearer(token))
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("{other} is not an object"),
    }
}

fn create(project: &str, name: &str, kind: &str) -> CreateSymbolRequest {
    CreateSymbolRequest { project_id: project.into(), name: name.into(), kind: kind.into(), data: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_over_grpc() {
    let Some(db) = mariadb().await else { return };
    let env = Env::new(symbols::SERVICE, &db, &Broker::in_process()).set("GRPC__REFLECTION", "true");
    let app = App::start(symbols::service(), &env).await;
    let mut c = client(&app).await;

    // Create, with a value that round-trips through google.protobuf.Struct.
    let data = object(json!({"hex": "#00f", "alpha": 1, "stops": [0, 0.5, {"at": null}], "on": true}));
    let req = CreateSymbolRequest { data: Some(json_to_struct(&data)), ..create("site-1", " Blue ", "color") };
    let s = c.create_symbol(req).await.unwrap().into_inner();
    assert_eq!((s.name.as_str(), s.kind.as_str(), s.version, s.project_id.as_str()), ("Blue", "color", 1, "site-1"));
    assert_eq!(struct_to_json(s.data.clone().unwrap()).unwrap(), data);
    assert!(s.create_time.is_some() && s.create_time == s.update_time);

    // The HTTP API sees the same symbol.
    let (status, http) = app.get(&format!("/v1/projects/site-1/symbols/{}", s.id)).await;
    assert_eq!(status, 200);
    assert_eq!((http["name"].as_str(), http["data"].clone()), (Some("Blue"), Value::Object(data.clone())));

    // Read.
    let get = |id: &str| GetSymbolRequest { project_id: "site-1".into(), id: id.into() };
    assert_eq!(c.get_symbol(get(&s.id)).await.unwrap().into_inner(), s);

    // Conflicts.
    let e = c.create_symbol(create("site-1", "BLUE", "color")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let upd = |name: Option<&str>, expected: Option<i64>| UpdateSymbolRequest {
        project_id: "site-1".into(),
        id: s.id.clone(),
        name: name.map(Into::into),
        kind: None,
        data: None,
        expected_version: expected,
    };
    let u = c.update_symbol(upd(Some("Navy"), Some(1))).await.unwrap().into_inner();
    assert_eq!((u.name.as_str(), u.version, u.data.clone()), ("Navy", 2, s.data.clone()));
    let e = c.update_symbol(upd(Some("Teal"), Some(1))).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let e = c.update_symbol(upd(None, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Lists: total_count and has_next, the default page size for 0.
    for i in 0..4 {
        c.create_symbol(create("site-1", &format!("s{i}"), "text")).await.unwrap();
    }
    let list = |offset: i32, limit: i32| ListSymbolsRequest { project_id: "site-1".into(), offset, limit };
    let page = c.list_symbols(list(0, 2)).await.unwrap().into_inner();
    assert_eq!((page.symbols.len(), page.total_count, page.has_next), (2, 5, true));
    assert_eq!(page.symbols[0].name, "Navy", "oldest first");
    let page = c.list_symbols(list(4, 2)).await.unwrap().into_inner();
    assert_eq!((page.symbols.len(), page.has_next), (1, false));
    let page = c.list_symbols(list(0, 0)).await.unwrap().into_inner();
    assert_eq!(page.symbols.len(), 5);
    for bad in [list(0, 101), list(-1, 1), list(10_001, 1)] {
        assert_eq!(c.list_symbols(bad).await.unwrap_err().code(), Code::InvalidArgument);
    }

    // Soft delete.
    let del = |expected: Option<i64>| DeleteSymbolRequest {
        project_id: "site-1".into(),
        id: s.id.clone(),
        expected_version: expected,
    };
    assert_eq!(c.delete_symbol(del(Some(1))).await.unwrap_err().code(), Code::Aborted);
    c.delete_symbol(del(Some(2))).await.unwrap();
    assert_eq!(c.get_symbol(get(&s.id)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.delete_symbol(del(None)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(app.get(&format!("/v1/projects/site-1/symbols/{}", s.id)).await.0, 404);
    assert_eq!(c.list_symbols(list(0, 0)).await.unwrap().into_inner().total_count, 4);
    c.create_symbol(create("site-1", "blue", "color")).await.unwrap();

    // Numbers JSON cannot hold are refused, naming where.
    let mut nan = prost_types::Struct::default();
    nan.fields.insert("x".into(), prost_types::Value { kind: Some(Kind::NumberValue(f64::INFINITY)) });
    let e = c.create_symbol(CreateSymbolRequest { data: Some(nan), ..create("site-1", "n", "k") }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "data.x: must be a finite number"));

    // grpc.health.v1 serves the service's name while it is ready.
    let channel = Channel::from_shared(app.base.clone()).unwrap().connect().await.unwrap();
    let health = keel::grpc::tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = keel::grpc::tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    // Readiness is copied to grpc.health.v1 periodically: it follows within moments.
    eventually("grpc.health.v1 to say SERVING", Duration::from_secs(10), || async {
        let check = keel::grpc::tonic_health::pb::HealthCheckRequest { service: "symbols.v1.Symbols".into() };
        let status = health.clone().check(check).await.ok()?.into_inner().status;
        (status == serving).then_some(())
    })
    .await;
    app.stop().await;
}

/// The two APIs run one check: each invalid request is refused with the same fields and words
/// over HTTP (`detail` of the 400 problem) and gRPC (message of `INVALID_ARGUMENT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_refuse_alike() {
    let Some(db) = mariadb().await else { return };
    let app = App::start(symbols::service(), &Env::new(symbols::SERVICE, &db, &Broker::in_process())).await;
    let mut c = client(&app).await;
    let big = json!({"s": "x".repeat(70 * 1024)});
    let long = "n".repeat(129);
    let cases: Vec<(&str, &str, &str, Option<Value>)> = vec![
        ("p1", "", "", None),
        ("p1", &long, "Kind", None),
        ("p.1", "ok", "color", None),
        ("p1", "ok", "color", Some(big)),
        ("p1", "line\nbreak", "9lives", None),
    ];
    for (project, name, kind, data) in cases {
        let mut body = json!({"name": name, "kind": kind});
        if let Some(d) = &data {
            body["data"] = d.clone();
        }
        let (status, problem) = app.post(&format!("/v1/projects/{project}/symbols"), body).await;
        assert_eq!(status, 400, "{problem}");
        let req = CreateSymbolRequest {
            project_id: project.into(),
            name: name.into(),
            kind: kind.into(),
            data: data.map(|d| json_to_struct(&object(d))),
        };
        let e = c.create_symbol(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(problem["detail"].as_str(), Some(e.message()), "same refusal over both");
    }
    // Missing and malformed ids.
    for id in ["", "42"] {
        let e = c.get_symbol(GetSymbolRequest { project_id: "p1".into(), id: id.into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id:?}");
    }
    let (status, problem) = app.get("/v1/projects/p1/symbols/42").await;
    let e = c.get_symbol(GetSymbolRequest { project_id: "p1".into(), id: "42".into() }).await.unwrap_err();
    assert_eq!((status, problem["detail"].as_str()), (400, Some(e.message())));
    app.stop().await;
}

/// As on HTTP: reads are open, writes need a valid token with the write role
/// (`UNAUTHENTICATED` without one or with a forged one, `PERMISSION_DENIED` without the role),
/// and a refused call changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_writes_need_a_writers_token() {
    let Some(db) = mariadb().await else { return };
    let app = App::start(symbols::service(), &Env::new(symbols::SERVICE, &db, &Broker::in_process())).await;
    let kept = client(&app).await.create_symbol(create("g", "kept", "k")).await.unwrap().into_inner();
    let forged = common::forged_writer_token();
    let reader = common::token("reader", &["symbols:read"]);
    for (who, token, want) in [
        ("no token", None, Code::Unauthenticated),
        ("a forged token", Some(forged), Code::Unauthenticated),
        ("a reader", Some(reader), Code::PermissionDenied),
    ] {
        let mut c = client_with(&app, token).await;
        let e = c.create_symbol(create("g", "intruder", "k")).await.unwrap_err();
        assert_eq!(e.code(), want, "{who}: create {e:?}");
        let update = UpdateSymbolRequest {
            project_id: "g".into(),
            id: kept.id.clone(),
            name: Some("intruder".into()),
            kind: None,
            data: None,
            expected_version: None,
        };
        assert_eq!(c.update_symbol(update).await.unwrap_err().code(), want, "{who}: update");
        let delete = DeleteSymbolRequest { project_id: "g".into(), id: kept.id.clone(), expected_version: None };
        assert_eq!(c.delete_symbol(delete).await.unwrap_err().code(), want, "{who}: delete");
        if want == Code::PermissionDenied {
            // A reader reads.
            let list = ListSymbolsRequest { project_id: "g".into(), offset: 0, limit: 10 };
            assert_eq!(c.list_symbols(list).await.unwrap().into_inner().symbols, vec![kept.clone()], "{who}");
        }
    }
    // Anonymous reads.
    let mut c = client_with(&app, None).await;
    let got = c.get_symbol(GetSymbolRequest { project_id: "g".into(), id: kept.id.clone() }).await.unwrap();
    assert_eq!(got.into_inner(), kept, "unchanged");
    app.stop().await;
}

/// The finding: gRPC was not rate-limited at all (60 calls succeeded with the HTTP budget
/// spent). Both APIs now spend one budget per client, and gRPC refuses with
/// `RESOURCE_EXHAUSTED` and server pushback, as HTTP answers 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_share_the_rate_limit() {
    let Some(db) = mariadb().await else { return };
    let env = Env::new(symbols::SERVICE, &db, &Broker::in_process())
        .set("RATE_LIMITS__API__LIMIT", "6")
        .set("RATE_LIMITS__API__WINDOW", "1m");
    let app = App::start(symbols::service(), &env).await;
    let mut c = client(&app).await;
    let list = || ListSymbolsRequest { project_id: "rl".into(), offset: 0, limit: 10 };
    for i in 0..3 {
        assert_eq!(app.get("/v1/projects/rl/symbols").await.0, 200, "HTTP call {i}");
        c.list_symbols(list()).await.unwrap_or_else(|e| panic!("gRPC call {i}: {e:?}"));
    }
    let e = c.list_symbols(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("rate limit"), "{e:?}");
    let pushback: u64 = e.metadata().get("grpc-retry-pushback-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1_000..=60_000).contains(&pushback), "{pushback}");
    let e = c.create_symbol(create("rl", "n", "k")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "writes too: {e:?}");
    let (status, problem) = app.get("/v1/projects/rl/symbols").await;
    assert_eq!((status, problem["code"].as_str()), (429, Some("RATE_LIMITED")), "{problem}");
    app.stop().await;
}

/// With the database gone both APIs answer "unavailable, retry later" (503 with `Retry-After`,
/// `UNAVAILABLE` with `grpc-retry-pushback-ms`), say nothing of why, and recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_on_both_apis() {
    let Some(db) = mariadb().await else { return };
    let target = keel::testing::host_port(db.url()).unwrap();
    let proxy = FaultProxy::start(target, Mode::Forward).await.unwrap();
    let url = db.url().replacen(&target.to_string(), &proxy.host_port(), 1);
    let env = Env::new(symbols::SERVICE, &db, &Broker::in_process())
        .set("DATABASE__URL", url)
        .set("DATABASE__POOL__ACQUIRE_TIMEOUT", "500ms");
    let app = App::start(symbols::service(), &env).await;
    let mut c = client(&app).await;
    c.create_symbol(create("p1", "a", "k")).await.unwrap();

    proxy.take_down();
    let list = || ListSymbolsRequest { project_id: "p1".into(), offset: 0, limit: 0 };
    let r = eventually("HTTP to answer 503", Duration::from_secs(15), || async {
        let r = app.http.get(app.url("/v1/projects/p1/symbols")).send().await.ok()?;
        (r.status() == 503).then_some(r)
    })
    .await;
    assert!(r.headers().contains_key("retry-after"));
    let (_, ct, problem) = common::response(r).await;
    assert_eq!((ct.as_str(), problem["code"].as_str()), ("application/problem+json", Some("unavailable")));
    assert!(!problem.to_string().contains(&proxy.host_port()), "{problem}");
    let e = c.list_symbols(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.metadata().contains_key("grpc-retry-pushback-ms"));
    assert!(!e.message().contains(&proxy.host_port()));
    let e = c.create_symbol(create("p1", "b", "k")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    proxy.restore();
    eventually("the database to be back", Duration::from_secs(30), || async {
        let mut c = c.clone();
        c.list_symbols(list()).await.ok()
    })
    .await;
    c.create_symbol(create("p1", "b", "k")).await.unwrap();
    app.stop().await;
}
