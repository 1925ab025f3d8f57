//! Shared helpers: small axum "services" on port 0 that record what reaches them, the gateway
//! started in-process in front of them, and tokens.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cityevents_common::testing::{TestEnv, TestKey, TestService};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use keel::app::Loader;
use keel::config::Profile;
use serde_json::{Value, json};

/// The key the gateway trusts and the tests sign with.
pub const KEY: TestKey = TestKey::new("test", "cityevents-gateway-test-hs256-secret-0123456789");

/// A valid access token for `sub`.
pub fn token(sub: &str) -> String {
    KEY.token(sub, "user")
}

/// A token signed with the right key but with these claims.
pub fn token_with(claims: Value) -> String {
    KEY.jwt().issue(&claims).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// One request as a service received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A fake service on 127.0.0.1:0 recording every request.
pub struct Stub {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    /// Serves `router`, recording requests first.
    pub async fn start(name: &'static str, router: Router) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let router = router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                log.lock().unwrap().push(Seen {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers.clone(),
                    body: bytes.clone(),
                });
                next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { name, addr, seen }
    }

    /// Echoes what it got as JSON, with status 200.
    pub async fn echo(name: &'static str) -> Self {
        Self::echo_answering(name, 200, false).await
    }

    /// Echoes what it got as JSON with `status`; `extra` adds `Location`, `Retry-After` and a
    /// header the gateway must not pass on.
    pub async fn echo_answering(name: &'static str, status: u16, extra: bool) -> Self {
        let router = Router::new().fallback(move |req: Request| async move { echo(name, req, status, extra).await });
        Self::start(name, router).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn echo(name: &str, req: Request, status: u16, extra: bool) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({
            "upstream": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "body": String::from_utf8_lossy(&body),
        })),
    )
        .into_response();
    if extra {
        let h = resp.headers_mut();
        h.insert("location", HeaderValue::from_static("/api/v1/somewhere"));
        h.insert("retry-after", HeaderValue::from_static("7"));
        h.insert("x-internal", HeaderValue::from_static("do-not-leak"));
    }
    resp
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The gateway running in this process (its base URL and client through `Deref`).
pub struct Gateway {
    app: TestService,
}

/// The environment of a gateway whose upstreams are `upstreams` (name → base URL), with a
/// generous rate limits, plus `extra` (variables in full, replacing the defaults).
pub fn env(upstreams: &[(&str, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = TestEnv::new(cityevents_common::services::GATEWAY.name)
        .trust(&KEY)
        .set("RATE_LIMITS__API__LIMIT", "10000")
        .set("RATE_LIMITS__API__KEY", "user,ip")
        .set("RATE_LIMITS__IP__LIMIT", "10000")
        .set("RATE_LIMITS__STRICT__LIMIT", "10000");
    for (name, url) in upstreams {
        let n = name.to_uppercase();
        env = env
            .set(&format!("UPSTREAMS__{n}__BASE_URL"), url)
            .set(&format!("UPSTREAMS__{n}__CONNECT_TIMEOUT"), "500ms")
            .set(&format!("UPSTREAMS__{n}__REQUEST_TIMEOUT"), "2s");
    }
    for (k, v) in extra {
        env = env.var(*k, *v);
    }
    env.into_vars()
}

impl Gateway {
    pub async fn try_start(env: Vec<(String, String)>) -> Result<Self, keel::app::StartError> {
        Self::try_start_profile(Profile::Test, env).await
    }

    pub async fn try_start_profile(
        profile: Profile,
        env: Vec<(String, String)>,
    ) -> Result<Self, keel::app::StartError> {
        let loaded = Loader::new(cityevents_common::services::GATEWAY.name, profile).env(env).load().expect("config");
        let app = TestService::try_start(cityevents_gateway::service(), loaded).await?;
        Ok(Self { app })
    }

    /// A gateway in front of these stubs (each under its own name).
    pub async fn start(stubs: &[&Stub], extra: &[(&str, &str)]) -> Self {
        let ups: Vec<(&str, String)> = stubs.iter().map(|s| (s.name, s.url())).collect();
        Self::try_start(env(&ups, extra)).await.expect("starts")
    }

    /// A gateway started by the test itself (from its own configuration).
    pub fn from_service(app: TestService) -> Self {
        Self { app }
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

impl Deref for Gateway {
    type Target = TestService;

    fn deref(&self) -> &TestService {
        &self.app
    }
}

/// The four echo services.
pub async fn echoes() -> [Stub; 4] {
    [Stub::echo("auth").await, Stub::echo("events").await, Stub::echo("joins").await, Stub::echo("notifier").await]
}

/// The four echo services, each answering `status` with the extra headers.
pub async fn echoes_answering(status: u16) -> [Stub; 4] {
    [
        Stub::echo_answering("auth", status, true).await,
        Stub::echo_answering("events", status, true).await,
        Stub::echo_answering("joins", status, true).await,
        Stub::echo_answering("notifier", status, true).await,
    ]
}

/// Asserts `resp` is a problem document with `status`; returns its body.
pub async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{:?}", resp.headers());
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    body
}
