//! Shared helpers: start the notifier in-process on a private database (and, where asked, NATS
//! with private topics), sign tokens, read and seed notifications.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keel::config::{Loader, Profile, Secret};
use keel::data::Backend;
use keel::security::jwt::{Jwt, JwtKey};
use keel::testing::{self, TestDatabase};
use serde_json::Value;

pub const SECRET: &str = "cityevents-notifier-test-hs256-secret-0123456789";

/// Signs tokens the service accepts (issuer and audience `cityevents`, key `test`).
pub fn signer() -> Jwt {
    Jwt::builder()
        .issuer("cityevents")
        .audience(["cityevents"])
        .key(JwtKey::hs256("test", &Secret::new(SECRET)).unwrap())
        .sign_with("test")
        .build()
        .unwrap()
}

pub fn token(sub: &str) -> String {
    let jwt = signer();
    jwt.issue(&jwt.claims(sub).role("user")).unwrap()
}

/// A private database of `backend`, or `None` (skipped) when its server is not running here.
pub async fn database(backend: Backend) -> Option<TestDatabase> {
    Some(match backend {
        Backend::Postgres => {
            if !testing::require("PostgreSQL", &testing::postgres_url()) {
                return None;
            }
            TestDatabase::postgres(&testing::postgres_url()).await.unwrap()
        }
        Backend::MySql => {
            if !testing::require("MariaDB", &testing::mysql_url()) {
                return None;
            }
            TestDatabase::mysql(&testing::mysql_url()).await.unwrap()
        }
        Backend::Sqlite => TestDatabase::sqlite().unwrap(),
    })
}

/// Where the service gets its events from.
pub enum Broker {
    /// The in-process bus (nothing can be published to it from the test).
    InProcess,
    /// NATS, with the catalogue's topics under this `bus.namespace` (private to the test).
    Nats { namespace: String },
}

pub struct Notifier {
    pub running: Option<keel::Running>,
    pub base: String,
    pub db: TestDatabase,
    pub http: reqwest::Client,
}

impl Notifier {
    pub async fn start(db: TestDatabase, broker: &Broker) -> Self {
        let mut env: Vec<(String, String)> = vec![
            ("CITYEVENTS_NOTIFIER__HTTP__PORT".into(), "0".into()),
            ("CITYEVENTS_NOTIFIER__HTTP__ADDR".into(), "127.0.0.1".into()),
            ("CITYEVENTS_NOTIFIER__DATABASE__URL".into(), db.url().to_owned()),
            ("CITYEVENTS_NOTIFIER__SECURITY__JWT__ISSUER".into(), "cityevents".into()),
            ("CITYEVENTS_NOTIFIER__SECURITY__JWT__AUDIENCE".into(), "cityevents".into()),
            ("CITYEVENTS_NOTIFIER__SECURITY__JWT__KEYS__TEST__ALGORITHM".into(), "HS256".into()),
            ("CITYEVENTS_NOTIFIER__SECURITY__JWT__KEYS__TEST__SECRET".into(), SECRET.into()),
        ];
        if let Broker::Nats { namespace } = broker {
            env.extend([
                ("CITYEVENTS_NOTIFIER__BUS__BACKEND".into(), "nats".into()),
                ("CITYEVENTS_NOTIFIER__BUS__URL".into(), testing::nats_url()),
                ("CITYEVENTS_NOTIFIER__BUS__NAMESPACE".into(), namespace.clone()),
            ]);
        }
        let loaded =
            Loader::new(cityevents_common::services::NOTIFIER.0, Profile::Test).env(env).load().expect("config");
        let running = keel::app::start(cityevents_notifier::service(), loaded).await.expect("starts");
        keel::http::client::install_tls_provider();
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
        let n = Self { base: format!("http://{}", running.http_addr()), running: Some(running), db, http };
        n.wait_ready().await;
        n
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until the database is migrated and every consumer is subscribed.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.http.get(self.url("/health/ready")).send().await.unwrap();
            if r.status() == 200 {
                return;
            }
            let body = r.text().await.unwrap_or_default();
            assert!(tokio::time::Instant::now() < deadline, "never ready: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /api/v1/me/notifications{query}` as `user`: status and body.
    pub async fn list(&self, user: &str, query: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(&format!("/api/v1/me/notifications{query}")))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Every notification of `user` (following cursors), newest first.
    pub async fn all(&self, user: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("?limit=100&cursor={c}"),
                None => "?limit=100".into(),
            };
            let (status, body) = self.list(user, &q).await;
            assert_eq!(status, 200, "{body}");
            out.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// Polls until `user` has at least `n` notifications.
    pub async fn wait_for(&self, user: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.all(user).await;
            if all.len() >= n {
                return all;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} of {n} notifications: {all:?}", all.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(std::future::pending()).await.expect("clean shutdown");
        }
    }
}

/// A pool on the test database, to seed rows directly.
pub async fn pool(db: &TestDatabase) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(2).connect(db.url()).await.unwrap()
}

/// Inserts a notification row.
pub async fn seed(pool: &sqlx::AnyPool, backend: Backend, id: &str, user: &str, created_at: i64) {
    let sql = backend.sql(
        "INSERT INTO notifications (id, user_id, kind, event_id, message, created_at, read_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    );
    sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
        .bind(id)
        .bind(user)
        .bind("join.confirmed")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(format!("You're in: {id}"))
        .bind(created_at)
        .bind(None::<i64>)
        .execute(pool)
        .await
        .unwrap();
}
