//! Shared test helpers: a private MariaDB database (or a skip), the service and the worker started
//! in this process on port 0, a RabbitMQ bus under a namespace of the test's own, polling.
//!
//! A server that is not running here skips the test, except under `CI=true`, where it fails
//! (`keel::testing::require`).
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::Duration;

use keel::app::{Loader, StartError};
use keel::config::{Profile, Secret, Section};
use keel::events::{Bus, BusBackend, BusConfig};
use keel::testing::{self, TestDatabase};
use keel::{Running, Service};
use serde_json::Value;

/// How long a started service may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The HS256 key the tests' services verify tokens with (`security.jwt.keys.test`).
const JWT_SECRET: &str = "symbols-tests-only-hs256-key-0123456789abcdef";

/// A verifier and issuer with the tests' key.
pub fn jwt() -> keel::security::jwt::Jwt {
    let key = keel::security::jwt::JwtKey::hs256("test", &Secret::new(JWT_SECRET)).unwrap();
    keel::security::jwt::Jwt::builder().key(key).sign_with("test").build().unwrap()
}

/// A token for `sub` with `roles`, valid for five minutes.
pub fn token(sub: &str, roles: &[&str]) -> String {
    let jwt = jwt();
    let mut claims = jwt.claims(sub);
    claims.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    jwt.issue(&claims).unwrap()
}

/// A token with the write role, signed with a key the services do not know (a forgery).
pub fn forged_writer_token() -> String {
    let key = keel::security::jwt::JwtKey::hs256("test", &Secret::new("another-key-".repeat(4))).unwrap();
    let jwt = keel::security::jwt::Jwt::builder().key(key).sign_with("test").build().unwrap();
    let mut claims = jwt.claims("mallory");
    claims.roles = vec![symbols::WRITE_ROLE.to_owned()];
    jwt.issue(&claims).unwrap()
}

/// A token that may write symbols.
pub fn writer_token() -> String {
    token("writer", &[symbols::WRITE_ROLE])
}

/// Adds `authorization: Bearer` metadata to a tonic client's calls (none: anonymous).
#[derive(Debug, Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

/// A private MariaDB database, or `None` (skip) when MariaDB is not running here.
pub async fn mariadb() -> Option<TestDatabase> {
    if !testing::require("MariaDB", &testing::mysql_url()) {
        return None;
    }
    Some(TestDatabase::mysql(&testing::mysql_url()).await.expect("a MariaDB database"))
}

/// Whether RabbitMQ is running here (else the test skips).
pub fn rabbitmq() -> bool {
    testing::require("RabbitMQ", &testing::rabbitmq_url())
}

/// Where a service's events go.
#[derive(Debug, Clone)]
pub enum Broker {
    /// The in-process bus of this name (`memory://<name>`): shared by the services of one test.
    InProcess(String),
    /// RabbitMQ, topics under this namespace (private to the test).
    Rabbit(String),
}

impl Broker {
    pub fn in_process() -> Self {
        Self::InProcess(testing::unique_topic("symbols"))
    }

    pub fn rabbit() -> Self {
        Self::Rabbit(testing::unique_topic("symbols"))
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::InProcess(name) => {
                vec![("BUS__BACKEND", "in_process".into()), ("BUS__URL", format!("memory://{name}"))]
            }
            Self::Rabbit(ns) => vec![
                ("BUS__BACKEND", "rabbitmq".into()),
                ("BUS__URL", testing::rabbitmq_url()),
                ("BUS__NAMESPACE", ns.clone()),
            ],
        }
    }

    /// A bus as the services see it, connected (for publishing and reading dead letters).
    pub async fn bus(&self) -> Bus {
        let mut cfg = BusConfig::default();
        match self {
            Self::InProcess(name) => cfg.url = Some(Secret::new(format!("memory://{name}"))),
            Self::Rabbit(ns) => {
                cfg.backend = BusBackend::Rabbitmq;
                cfg.url = Some(Secret::new(testing::rabbitmq_url()));
                cfg.namespace = Some(ns.clone());
            }
        }
        cfg.publish_timeout = Duration::from_secs(5);
        let bus = Bus::new(&cfg).unwrap();
        bus.connect().await.unwrap();
        bus
    }
}

/// A service's environment for a test: listening on 127.0.0.1 port 0, fast outbox rounds.
#[derive(Debug, Clone)]
pub struct Env {
    service: String,
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn new(service: &str, db: &TestDatabase, broker: &Broker) -> Self {
        let mut env = Self { service: service.to_owned(), vars: Vec::new() }
            .set("HTTP__PORT", "0")
            .set("HTTP__ADDR", "127.0.0.1")
            .set("DATABASE__URL", db.url())
            .set("OUTBOX__POLL_INTERVAL", "20ms")
            .set("OUTBOX__BACKOFF_MIN", "100ms")
            .set("OUTBOX__BACKOFF_MAX", "500ms");
        for (k, v) in broker.vars() {
            env = env.set(k, v);
        }
        if service == symbols::SERVICE {
            env = env
                .set("SECURITY__JWT__KEYS__TEST__ALGORITHM", "HS256")
                .set("SECURITY__JWT__KEYS__TEST__SECRET", JWT_SECRET);
        }
        env
    }

    /// Sets `KEY` (written without the service's prefix: `APP__MAX_ATTEMPTS`).
    #[must_use]
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        let name = format!("{}__{key}", keel::config::env_prefix(&self.service));
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value.into()));
        self
    }

    pub fn loader(&self, profile: Profile) -> Loader {
        Loader::new(&self.service, profile).defaults(symbols::config_defaults(&self.service)).env(self.vars.clone())
    }
}

/// A service running in this process, ready. `http` sends a writer's token with every request;
/// `anonymous` sends none.
#[derive(Debug)]
pub struct App {
    pub running: Running,
    pub base: String,
    pub http: reqwest::Client,
    pub anonymous: reqwest::Client,
}

impl App {
    pub async fn start<C: Section>(service: Service<C>, env: &Env) -> Self {
        Self::try_start(service, env).await.expect("the service starts")
    }

    pub async fn try_start<C: Section>(service: Service<C>, env: &Env) -> Result<Self, StartError> {
        let loaded = env.loader(Profile::Test).load().expect("a valid test configuration");
        let running = keel::app::start(service, loaded).await?;
        keel::http::client::install_tls_provider();
        let client = || reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", writer_token()).parse().unwrap());
        let http = client().default_headers(headers).build().unwrap();
        let anonymous = client().build().unwrap();
        let app = Self { base: format!("http://{}", running.http_addr()), http, anonymous, running };
        let ready = app.url("/health/ready");
        eventually("the service to be ready", READY_WITHIN, || async {
            let r = app.http.get(&ready).send().await.ok()?;
            (r.status() == reqwest::StatusCode::OK).then_some(())
        })
        .await;
        Ok(app)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn management_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.management_addr())
    }

    /// A request with a JSON body: status, `content-type` and body (`Null` when none).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        response(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, b) = self.send(reqwest::Method::GET, path, None).await;
        (s, b)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, b) = self.send(reqwest::Method::POST, path, Some(body)).await;
        (s, b)
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, b) = self.send(reqwest::Method::PATCH, path, Some(body)).await;
        (s, b)
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let (s, _, b) = self.send(reqwest::Method::DELETE, path, None).await;
        (s, b)
    }

    /// The management listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http.get(self.management_url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// Shuts down and waits until it stopped cleanly.
    pub async fn stop(self) {
        self.running.shutdown(std::future::pending()).await.expect("a clean shutdown");
    }
}

pub async fn response(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = r.text().await.unwrap();
    (status, ct, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Calls `check` every 25 ms until it returns `Some`; fails the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A pool on the test database, to look at rows directly.
pub async fn pool(db: &TestDatabase) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(2).connect(db.url()).await.unwrap()
}

/// `SELECT COUNT(*)` of `sql` (`FROM …` onwards, no placeholders).
pub async fn count(pool: &sqlx::AnyPool, from: &str) -> i64 {
    use sqlx::Row as _;
    let sql = format!("SELECT COUNT(*) AS n FROM {from}");
    sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap().try_get("n").unwrap()
}

/// The sum of the `name` samples whose labels include every one of `labels` (`outcome="ok"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
