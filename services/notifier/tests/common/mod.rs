//! Shared helpers: start the notifier in-process on a private database (and, where asked, NATS
//! with private topics), sign tokens, read and seed notifications.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Deref;
use std::time::Duration;

pub use cityevents_common::testing::database;
use cityevents_common::testing::{TestEnv, TestKey, TestService, eventually};
use keel::config::Secret;
use keel::data::Backend;
use keel::security::crypto::{MasterKey, generate_key};
use keel::testing::{self, TestDatabase};
use serde_json::Value;

/// The key the service trusts and the tests sign with.
pub const KEY: TestKey = TestKey::new("test", "cityevents-notifier-test-hs256-secret-0123456789");

/// A user's access token for `sub`.
pub fn token(sub: &str) -> String {
    KEY.token(sub, "user")
}

/// Where the service gets its events from.
pub enum Broker {
    /// The in-process bus (nothing can be published to it from the test).
    InProcess,
    /// NATS, with the catalogue's topics under this `bus.namespace` (private to the test).
    Nats { namespace: String },
}

/// The notifier running in this process (its base URL and client through `Deref`).
pub struct Notifier {
    app: TestService,
    pub db: TestDatabase,
    mail_dir: tempfile::TempDir,
    /// The encryption settings, shared by its replicas (each reads what another wrote).
    keys: (String, String),
}

/// Another instance of a [`Notifier`] on its database and keys (a second replica, or one
/// started after a restart): its own port and mail directory.
pub struct Replica {
    app: TestService,
    mail_dir: tempfile::TempDir,
}

impl Replica {
    /// The file transport's messages so far.
    pub fn mail_files(&self) -> Vec<String> {
        cityevents_common::testing::eml_files(&self.mail_dir.path().join("mail"))
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

/// The management listener's admin token in these tests.
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

impl Notifier {
    /// Starts the service on `db`; ready once migrated and every consumer is subscribed.
    pub async fn start(db: TestDatabase, broker: &Broker) -> Self {
        Self::start_with(db, broker, &[]).await
    }

    /// [`Notifier::start`] with more settings (`APP__MAIL__…`). Mail goes to a file directory of
    /// its own unless `extra` says otherwise.
    pub async fn start_with(db: TestDatabase, broker: &Broker, extra: &[(&str, &str)]) -> Self {
        let master = generate_key();
        let wrapped = MasterKey::from_secret(&Secret::new(master.clone())).unwrap().new_data_key("n1").unwrap();
        let keys = (master, wrapped);
        let (app, mail_dir) = Self::instance(db.url(), &keys, broker, extra).await;
        Self { app, db, mail_dir, keys }
    }

    /// Starts another instance on this one's database and keys.
    pub async fn replica(&self, broker: &Broker, extra: &[(&str, &str)]) -> Replica {
        let (app, mail_dir) = Self::instance(self.db.url(), &self.keys, broker, extra).await;
        Replica { app, mail_dir }
    }

    async fn instance(
        db_url: &str,
        (master, wrapped): &(String, String),
        broker: &Broker,
        extra: &[(&str, &str)],
    ) -> (TestService, tempfile::TempDir) {
        let mail_dir = tempfile::tempdir().unwrap();
        let mut env = TestEnv::new(cityevents_common::services::NOTIFIER.name)
            .trust(&KEY)
            .set("DATABASE__URL", db_url)
            .set("SECURITY__ENCRYPTION__MASTER_KEY", master.clone())
            .set("SECURITY__ENCRYPTION__ACTIVE_KEY", "n1")
            .set("SECURITY__ENCRYPTION__DATA_KEYS__N1", wrapped.clone())
            .set("APP__MAIL__DIR", mail_dir.path().join("mail").display().to_string())
            .set("MANAGEMENT__ADMIN_TOKEN", ADMIN_TOKEN);
        for (k, v) in extra {
            env = env.set(k, *v);
        }
        if let Broker::Nats { namespace } = broker {
            env = env.set("BUS__BACKEND", "nats").set("BUS__URL", testing::nats_url()).set("BUS__NAMESPACE", namespace);
        }
        let app = TestService::start(cityevents_notifier::service(), env.load()).await;
        (app, mail_dir)
    }

    /// The file transport's messages so far.
    pub fn mail_files(&self) -> Vec<String> {
        cityevents_common::testing::eml_files(&self.mail_dir.path().join("mail"))
    }

    /// `GET`/`PUT /api/v1/me/mail-preferences` as `user`: status and body.
    pub async fn preferences(&self, user: &str, put: Option<Value>) -> (u16, Value) {
        let url = self.url("/api/v1/me/mail-preferences");
        let req = match put {
            Some(body) => self.http.put(url).json(&body),
            None => self.http.get(url),
        };
        let r = req.bearer_auth(token(user)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The product figures of its status page, by name: `(last hour, last day)`; panics on a
    /// read error.
    pub async fn figures(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let doc: Value = self
            .http
            .get(self.management_url("/admin/status"))
            .bearer_auth(ADMIN_TOKEN)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let product = &doc["product"];
        assert!(product["error"].is_null(), "{product}");
        product["figures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let n = |k: &str| f[k].as_u64().unwrap();
                (f["name"].as_str().unwrap().to_owned(), (n("last_hour"), n("last_day")))
            })
            .collect()
    }

    /// The management `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http.get(self.management_url("/metrics")).send().await.unwrap().text().await.unwrap()
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
        eventually(&format!("{n} notifications for {user}"), Duration::from_secs(20), || async {
            let all = self.all(user).await;
            (all.len() >= n).then_some(all)
        })
        .await
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

impl Deref for Notifier {
    type Target = TestService;

    fn deref(&self) -> &TestService {
        &self.app
    }
}

/// A NATS bus under `namespace`, as the service under test sees it (`None`: NATS is not here,
/// the test skips; a failure under `CI=true`).
pub async fn nats_bus(namespace: &str) -> Option<keel::events::Bus> {
    use keel::events::{Bus, BusBackend, BusConfig};
    if !keel::testing::require("NATS", &keel::testing::nats_url()) {
        return None;
    }
    let mut cfg = BusConfig::default();
    cfg.backend = BusBackend::Nats;
    cfg.url = Some(Secret::new(keel::testing::nats_url()));
    cfg.namespace = Some(namespace.to_owned());
    cfg.publish_timeout = Duration::from_secs(5);
    let bus = Bus::new(&cfg).unwrap();
    bus.connect().await.unwrap();
    Some(bus)
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
