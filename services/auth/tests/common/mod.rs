//! Starts cityevents-auth in-process on a private database (SQLite file, PostgreSQL or MariaDB
//! database) with fresh keys, and talks to it over HTTP.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cityevents_auth::AuthConfig;
pub use cityevents_common::testing::Backend;
use cityevents_common::testing::{TestEnv, TestKey, TestService, database};
use keel::app::Loaded;
use keel::config::Secret;
use keel::security::crypto::{MasterKey, generate_key};
use keel::security::jwt::Claims;
use keel::testing::TestDatabase;
use serde_json::Value;

pub const NAME: &str = cityevents_common::services::AUTH.name;
pub const PASSWORD: &str = "plum-harbor-velvet-42";

/// The service, running.
pub struct Svc {
    app: TestService,
    pub loaded: Loaded<AuthConfig>,
    /// The key auth signs with (a fresh one per service).
    key: TestKey,
    pub pool: sqlx::AnyPool,
    /// The service's private in-process bus (`memory://…`): a test publishes on it too.
    pub bus_url: String,
    // Last: dropped (and the database deleted) after the pool is closed.
    pub db: TestDatabase,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    pub fn field(&self) -> &str {
        self.body["errors"][0]["field"].as_str().unwrap_or_default()
    }

    /// The body without what differs on every request.
    pub fn shape(&self) -> Value {
        let mut b = self.body.clone();
        if let Some(o) = b.as_object_mut() {
            o.remove("request_id");
        }
        b
    }

    pub fn is_problem(&self) -> bool {
        self.headers.get("content-type").is_some_and(|v| v == "application/problem+json")
    }
}

/// The service's settings on `db_url`, signing with `key`, with fresh encryption keys.
pub fn env(db_url: &str, key: &TestKey) -> TestEnv {
    let master = generate_key();
    let wrapped = MasterKey::from_secret(&Secret::new(master.clone())).unwrap().new_data_key("k1").unwrap();
    TestEnv::new(NAME)
        .trust(key)
        .set("LOG__LEVEL", "warn")
        .set("DATABASE__URL", db_url)
        .set("SECURITY__JWT__SIGNING_KEY", key.kid())
        .set("SECURITY__ENCRYPTION__MASTER_KEY", master)
        .set("SECURITY__ENCRYPTION__BLIND_INDEX_KEY", generate_key())
        .set("SECURITY__ENCRYPTION__ACTIVE_KEY", "k1")
        .set("SECURITY__ENCRYPTION__DATA_KEYS__K1", wrapped)
        .set("SECURITY__AUDIT__ACTIVE_KEY", "a1")
        .set("SECURITY__AUDIT__KEYS__A1__SECRET", generate_key())
        // Cheap Argon2 so tests stay fast; the production default is 19 MiB × 2.
        .set("SECURITY__PASSWORDS__MEMORY_KIB", "256")
        .set("SECURITY__PASSWORDS__ITERATIONS", "1")
        // Delays long enough that no test outruns them by being slow; tests move time in the
        // database instead. Small IP and account thresholds, so a test reaches them quickly.
        .set("APP__LOCKOUT__BASE_DELAY", "1m")
        .set("APP__LOCKOUT__IP_FREE_FAILURES", "12")
        .set("APP__LOCKOUT__ACCOUNT_FREE_FAILURES", "15")
}

impl Svc {
    /// Starts the service on `backend` with `settings` over the tests' own ([`env`]), or `None` (test
    /// skipped) when its server is not running.
    pub async fn start_with(backend: Backend, settings: &[(&str, &str)]) -> Option<Self> {
        let db = database(backend).await?;
        let key = TestKey::random("k1");
        let bus_url = format!("memory://auth-test-{}", uuid::Uuid::now_v7().simple());
        let mut env = env(db.url(), &key).set("BUS__URL", bus_url.as_str());
        for (k, v) in settings {
            env = env.set(k, *v);
        }
        let loaded = env.load::<AuthConfig>();
        let app = TestService::start(cityevents_auth::service(), loaded.clone()).await;
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(2).connect(db.url()).await.unwrap();
        Some(Self { app, loaded, key, pool, bus_url, db })
    }

    /// The service's account store on the test's database, as the service builds it.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn accounts(&self) -> cityevents_auth::Accounts {
        use keel::security::crypto::{BlindIndex, Keyring};
        use keel::security::password::{PasswordHasher, PasswordPolicy};
        let keel = &self.loaded.config.keel;
        let db =
            keel::data::Db::new("auth-test", self.db.url(), &keel.database, None, &keel::telemetry::Metrics::new())
                .unwrap();
        db.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
        assert!(db.is_available(), "the test database answers");
        let audit = keel::security::audit::AuditLog::from_db(&db);
        cityevents_auth::Accounts::new(
            db,
            Keyring::from_config(&keel.security.encryption).unwrap(),
            BlindIndex::from_config(&keel.security.encryption).unwrap(),
            PasswordHasher::from_config(&keel.security.passwords).unwrap(),
            PasswordPolicy::from_config(&keel.security.passwords),
            audit,
        )
    }

    pub async fn stop(self) {
        self.pool.close().await;
        self.app.stop().await;
    }

    async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Self::read(self.app.http.post(self.app.url(path)).json(body).send().await.unwrap()).await
    }

    /// Puts raw bytes with a content type, with a bearer token or none.
    pub async fn put_raw(&self, path: &str, bearer: Option<&str>, content_type: &str, body: Vec<u8>) -> Reply {
        let mut req = self.app.http.put(self.app.url(path)).header("content-type", content_type).body(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.unwrap()).await
    }

    /// The raw answer to a GET: status, headers and bytes.
    pub async fn get_bytes(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let resp = self.app.http.get(self.app.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.headers().clone(), resp.bytes().await.unwrap().to_vec())
    }

    /// Posts raw bytes with a content type (or none).
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Reply {
        let mut req = self.app.http.post(self.app.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Self::read(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        let mut req = self.app.http.get(self.app.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.unwrap()).await
    }

    pub async fn post_bearer(&self, path: &str, bearer: &str, body: &Value) -> Reply {
        Self::read(self.app.http.post(self.app.url(path)).bearer_auth(bearer).json(body).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str, bearer: Option<&str>) -> Reply {
        let mut req = self.app.http.delete(self.app.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.unwrap()).await
    }

    pub async fn put(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        let mut req = self.app.http.put(self.app.url(path)).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.unwrap()).await
    }

    pub async fn patch(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        let mut req = self.app.http.patch(self.app.url(path)).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.unwrap()).await
    }

    /// Registers `email` with [`PASSWORD`]; returns the new user's id (from the contact
    /// announced for the notifier: the answer itself is the same for a taken address).
    pub async fn register(&self, email: &str, name: &str) -> String {
        let r = self
            .post("/api/v1/auth/register", &serde_json::json!({"email": email, "password": PASSWORD, "name": name}))
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let normalized = r.body["email"].as_str().unwrap().to_owned();
        self.user_id(&normalized).await.unwrap_or_else(|| panic!("{email} registered no account"))
    }

    /// The id of the account with (normalized) address `email`, if one was created.
    pub async fn user_id(&self, email: &str) -> Option<String> {
        let contacts = self.outbox("cityevents.accounts").await;
        contacts.iter().find(|c| c["email"] == email).map(|c| c["user_id"].as_str().unwrap().to_owned())
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/api/v1/auth/login", &serde_json::json!({"email": email, "password": password})).await
    }

    /// Signs in from another loopback address (`127.0.0.<host>`): another client IP.
    pub async fn login_from(&self, host: u8, email: &str, password: &str) -> Reply {
        self.login_as(host, serde_json::json!({"email": email, "password": password})).await
    }

    /// Signs in from `127.0.0.<host>` with a device token.
    pub async fn login_device(&self, host: u8, email: &str, password: &str, device: &str) -> Reply {
        self.login_as(host, serde_json::json!({"email": email, "password": password, "device_token": device})).await
    }

    /// Signs in with a `User-Agent` and the device's time zone, as a browser through the site.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn login_agent(&self, email: &str, password: &str, agent: &str, zone: &str) -> Reply {
        let body = serde_json::json!({"email": email, "password": password, "time_zone": zone});
        let req = self.app.http.post(self.app.url("/api/v1/auth/login")).header("user-agent", agent).json(&body);
        Self::read(req.send().await.unwrap()).await
    }

    /// Posts `body` to the sign-in route from `127.0.0.<host>`.
    async fn login_as(&self, host: u8, body: Value) -> Reply {
        let client =
            reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, host])).build().unwrap();
        Self::read(client.post(self.app.url("/api/v1/auth/login")).json(&body).send().await.unwrap()).await
    }

    /// Replaces the password hash of the account `user_id` (a PHC string: no quotes in it).
    #[allow(dead_code)] // not every test binary uses it
    pub async fn set_password_hash(&self, user_id: &str, phc: &str) {
        // Literals: the placeholder syntax differs between the backends.
        assert!(!phc.contains('\'') && !user_id.contains('\''));
        let sql = format!("UPDATE users SET password_hash = '{phc}' WHERE id = '{user_id}'");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool).await.unwrap();
        assert_eq!(done.rows_affected(), 1, "no account {user_id}");
    }

    /// Moves every sign-in counter's last failure `secs` into the past.
    pub async fn age_login_failures(&self, secs: i64) {
        // A literal: the placeholder syntax differs between the backends.
        let micros = secs * 1_000_000;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE login_throttle SET last_failure_at = last_failure_at - {micros}"
        )))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Signs in and returns (access, refresh).
    pub async fn tokens(&self, email: &str) -> (String, String) {
        self.tokens_with(email, PASSWORD).await
    }

    /// Signs in with `password` and returns (access, refresh).
    pub async fn tokens_with(&self, email: &str, password: &str) -> (String, String) {
        let r = self.login(email, password).await;
        assert_eq!(r.status, 200, "{r:?}");
        (r.body["access_token"].as_str().unwrap().to_owned(), r.body["refresh_token"].as_str().unwrap().to_owned())
    }

    pub async fn refresh(&self, token: &str) -> Reply {
        self.post("/api/v1/auth/refresh", &serde_json::json!({"refresh_token": token})).await
    }

    /// Verifies an access token the way every City Events service does.
    pub fn claims(&self, token: &str) -> Claims {
        self.key.jwt().verify(token).unwrap()
    }

    /// The audit log as `actor|action|target|outcome|details` lines.
    pub async fn audit(&self) -> Vec<String> {
        let rows: Vec<(String, String, String, String, String)> =
            sqlx::query_as("SELECT actor, action, target, outcome, details FROM audit_log ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        rows.into_iter().map(|(a, b, c, d, e)| format!("{a}|{b}|{c}|{d}|{e}")).collect()
    }

    /// The mail requests auth enqueued so far (the outbox keeps published rows for a day), oldest
    /// first, as their `data` objects.
    pub async fn mail_requests(&self) -> Vec<Value> {
        self.outbox("cityevents.mail").await
    }

    /// The events auth enqueued on `topic`, oldest first, as their `data` objects.
    pub async fn outbox(&self, topic: &str) -> Vec<Value> {
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT payload FROM keel_outbox WHERE topic = '{topic}' ORDER BY seq"
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter().map(|(p,)| serde_json::from_str::<Value>(&p).unwrap()["data"].clone()).collect()
    }

    /// The token of the newest verification mail requested for `email`.
    pub async fn verification_token(&self, email: &str) -> String {
        let mails = self.mail_requests().await;
        let mail = mails
            .iter()
            .rev()
            .find(|m| m["to"] == email && m["mail"]["template"] == "verify_email")
            .unwrap_or_else(|| panic!("no verification mail for {email}: {mails:?}"));
        mail["mail"]["token"].as_str().unwrap().to_owned()
    }

    /// The management `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.app.http.get(self.app.management_url("/metrics")).send().await.unwrap().text().await.unwrap()
    }
}

/// One test per backend for each scenario `async fn name(svc: &Svc)`, on a service started
/// with the settings in brackets after its name, if any: `name["SECURITY__…" = "1"]`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident $([$($key:literal = $value:literal),* $(,)?])?),* $(,)?) => {$(
        mod $name {
            use super::common::{Backend, Svc};

            async fn run(backend: Backend) {
                let settings: &[(&str, &str)] = &[$($(($key, $value)),*)?];
                let Some(svc) = Svc::start_with(backend, settings).await else { return };
                super::$name(&svc).await;
                svc.stop().await;
            }

            #[tokio::test]
            async fn sqlite() {
                run(Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                run(Backend::Postgres).await;
            }

            #[tokio::test]
            async fn mysql() {
                run(Backend::MySql).await;
            }
        }
    )*};
}
