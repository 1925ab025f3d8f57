//! Shared helpers: start the joins service in-process on a private database, feed it `event.*`
//! through a consumer that runs the service's own handler with its inbox, mint tokens, and read
//! what it put in the outbox.
//!
//! The service's configured bus is an in-process one the test cannot reach, so a second
//! consumer — `EventsHandler` with an inbox on the same database, group `joins`, exactly what
//! the service registers — runs on a bus the test owns. (The NATS test drives the service's own
//! consumer end to end instead.)
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Deref;
use std::time::Duration;

use cityevents_common::catalogue::{
    EVENTS_TOPIC, EventCanceled, EventPublished, EventSnapshot, EventUpdated, JOINS_TOPIC,
};
use cityevents_common::testing::{TestEnv, TestKey, TestService, database, eventually};
use cityevents_joins::{EventsHandler, JoinsConfig};
use keel::data::DatabaseConfig;
use keel::data::{Backend, Db};
use keel::events::OutboxConfig;
use keel::events::outbox::Outbox;
use keel::events::{Bus, Consumer, ConsumerOptions, Envelope};
use keel::testing::TestDatabase;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The key the service trusts and the tests sign with.
pub const KEY: TestKey = TestKey::new("k1", "joins-test-hs256-secret-0123456789abcdef");

/// The joins service running in this process, with a test-owned feed of `event.*` (its base URL
/// and client through `Deref`).
pub struct Svc {
    app: TestService,
    pub backend: Backend,
    pub db: Db,
    pub bus: Bus,
    stop: CancellationToken,
    consumer: Option<tokio::task::JoinHandle<()>>,
    _database: TestDatabase,
}

/// A user with a token.
#[derive(Clone)]
pub struct User {
    pub id: Uuid,
    pub token: String,
}

impl Svc {
    /// Starts the service on `backend`, or `None` when that server is not running here.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, &[]).await
    }

    /// Starts the service on `backend` with extra settings (keys without the env prefix).
    pub async fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Option<Self> {
        let database = database(backend).await?;
        let mut env = TestEnv::new(cityevents_common::services::JOINS.name)
            .trust(&KEY)
            .set("DATABASE__URL", database.url())
            .set("DATABASE__POOL__MAX_CONNECTIONS", "12")
            .set("DATABASE__POOL__ACQUIRE_TIMEOUT", "10s")
            .set("OUTBOX__POLL_INTERVAL", "50ms");
        for (k, v) in extra {
            env = env.set(k, *v);
        }
        let loaded = env.load::<JoinsConfig>();
        let batch = loaded.config.app.change_batch;
        let app = TestService::start(cityevents_joins::service(), loaded).await;

        // The test's own handle on the database (migrated by now) and its event feed.
        let mut cfg = DatabaseConfig::default();
        cfg.pool.max_connections = 4;
        let db = Db::new("joins-test", database.url(), &cfg, None, &keel::telemetry::Metrics::new()).unwrap();
        db.clone().connect_in_background(CancellationToken::new()).await;
        let outbox =
            Outbox::new(db.clone(), cityevents_common::services::JOINS.name, &OutboxConfig::default(), None).unwrap();
        let bus = Bus::in_process(10_000);
        let stop = CancellationToken::new();
        let options = ConsumerOptions::default()
            .max_attempts(10)
            .retry_backoff(Duration::from_millis(50), Duration::from_millis(200));
        let consumer = Consumer::new(
            bus.clone(),
            EVENTS_TOPIC,
            "joins",
            EventsHandler::new(outbox, JOINS_TOPIC).change_batch(batch),
        )
        .inbox(db.clone())
        .options(options);
        let consumer = tokio::spawn(consumer.run(stop.clone()));
        // `account.*` as the service applies it, on the same test bus.
        let accounts = Consumer::new(
            bus.clone(),
            cityevents_common::catalogue::ACCOUNTS_TOPIC,
            "joins",
            cityevents_common::organizer_bans::OrganizerBansHandler::new(db.clone()),
        )
        .inbox(db.clone());
        tokio::spawn(accounts.run(stop.clone()));
        Some(Self { app, backend, db, bus, stop, consumer: Some(consumer), _database: database })
    }

    pub fn user(&self) -> User {
        self.user_with_role("user")
    }

    pub fn admin(&self) -> User {
        self.user_with_role("admin")
    }

    pub fn user_with_role(&self, role: &str) -> User {
        let id = Uuid::now_v7();
        let token = KEY.token(&id.to_string(), role);
        User { id, token }
    }

    /// Publishes `env` on the event feed and waits until the consumer recorded it.
    pub async fn feed(&self, env: &Envelope) {
        self.feed_nowait(env).await;
        self.wait_applied(&env.id).await;
    }

    /// Publishes `event` on the accounts topic and waits until it was applied.
    pub async fn feed_account<E: keel::events::Event>(&self, event: &E) {
        let env = Envelope::new("cityevents-auth", event).unwrap();
        self.bus.publish(cityevents_common::catalogue::ACCOUNTS_TOPIC, &env).await.unwrap();
        self.wait_applied(&env.id).await;
    }

    pub async fn feed_nowait(&self, env: &Envelope) {
        self.bus.publish(EVENTS_TOPIC, env).await.unwrap();
    }

    pub async fn wait_applied(&self, message_id: &str) {
        let sql = self.db.sql("SELECT COUNT(*) FROM keel_inbox WHERE message_id = $1").into_owned();
        eventually("the consumer to apply the event", Duration::from_secs(20), || {
            let sql = sql.clone();
            async move {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(message_id)
                    .fetch_one(self.db.pool())
                    .await
                    .unwrap();
                (n == 1).then_some(())
            }
        })
        .await;
    }

    /// Publishes an event (as the events service would) and waits until joins knows it.
    pub async fn publish_event(&self, organizer: Uuid, capacity: u32) -> EventSnapshot {
        let s = snapshot(organizer, capacity);
        self.feed(&Envelope::new("cityevents-events", &EventPublished(s.clone())).unwrap()).await;
        s
    }

    /// `event.unpublished` for `s` (its version bumped), with `reason`.
    pub async fn unpublish_event(&self, s: &mut EventSnapshot, reason: Option<&str>) -> Envelope {
        s.version += 1;
        s.status = "draft".into();
        let u = cityevents_common::catalogue::EventUnpublished { event: s.clone(), reason: reason.map(str::to_owned) };
        let env = Envelope::new("cityevents-events", &u).unwrap();
        self.feed(&env).await;
        env
    }

    /// `event.published` again for `s` (its version bumped).
    pub async fn republish_event(&self, s: &mut EventSnapshot) -> Envelope {
        s.version += 1;
        s.status = "published".into();
        let env = Envelope::new("cityevents-events", &EventPublished(s.clone())).unwrap();
        self.feed(&env).await;
        env
    }

    pub async fn update_event(&self, s: &EventSnapshot) -> Envelope {
        let env = Envelope::new("cityevents-events", &EventUpdated(s.clone())).unwrap();
        self.feed(&env).await;
        env
    }

    pub async fn cancel_event(&self, s: &EventSnapshot) -> Envelope {
        let c = EventCanceled {
            event_id: s.event_id,
            organizer_id: s.organizer_id,
            title: s.title.clone(),
            canceled_at: OffsetDateTime::now_utc(),
            version: s.version + 1,
            reason: Some("Storm warning".into()),
        };
        let env = Envelope::new("cityevents-events", &c).unwrap();
        self.feed(&env).await;
        env
    }

    /// `POST /api/v1/events/{id}/join` with `key`: (status, body, replayed header).
    pub async fn join(&self, u: &User, event: Uuid, key: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(&format!("/api/v1/events/{event}/join")))
            .bearer_auth(&u.token)
            .header("Idempotency-Key", key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, u: Option<&User>, path: &str) -> (u16, Value) {
        let mut r = self.http.get(self.url(path));
        if let Some(u) = u {
            r = r.bearer_auth(&u.token);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, u: &User, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).bearer_auth(&u.token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, u: &User, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&u.token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `{capacity, confirmed, waitlisted}` (public).
    pub async fn counts(&self, event: Uuid) -> (i64, i64, i64) {
        let (s, b) = self.get(None, &format!("/api/v1/events/{event}/counts")).await;
        assert_eq!(s, 200, "{b}");
        (b["capacity"].as_i64().unwrap(), b["confirmed"].as_i64().unwrap(), b["waitlisted"].as_i64().unwrap())
    }

    /// The caller's participation status (`None` when 404).
    pub async fn my_status(&self, u: &User, event: Uuid) -> Option<Value> {
        let (s, b) = self.get(Some(u), &format!("/api/v1/events/{event}/join")).await;
        match s {
            200 => Some(b),
            404 => None,
            other => panic!("GET my join: {other} {b}"),
        }
    }

    /// Every `join.*` envelope in the outbox, in order.
    pub async fn outbox(&self) -> Vec<Envelope> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT topic, payload FROM keel_outbox ORDER BY seq")
            .fetch_all(self.db.pool())
            .await
            .unwrap();
        rows.into_iter()
            .filter(|(t, _)| t == JOINS_TOPIC)
            .map(|(_, p)| Envelope::from_bytes(p.as_bytes()).unwrap())
            .collect()
    }

    /// Every envelope enqueued on `topic`, oldest first.
    pub async fn outbox_of(&self, topic: &str) -> Vec<Envelope> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT topic, payload FROM keel_outbox ORDER BY seq")
            .fetch_all(self.db.pool())
            .await
            .unwrap();
        rows.into_iter().filter(|(t, _)| t == topic).map(|(_, p)| Envelope::from_bytes(p.as_bytes()).unwrap()).collect()
    }

    /// `join.*` envelopes of one event: (type, user_id, status, reason).
    pub async fn announced(&self, event: Uuid) -> Vec<(String, Uuid, String, Option<String>)> {
        self.outbox()
            .await
            .into_iter()
            .filter(|e| e.data["event_id"] == event.to_string())
            .map(|e| {
                assert_eq!(e.key.as_deref(), Some(event.to_string().as_str()), "keyed by event id");
                assert_eq!(e.source, "cityevents-joins");
                (
                    e.ty.clone(),
                    Uuid::parse_str(e.data["user_id"].as_str().unwrap()).unwrap(),
                    e.data["status"].as_str().unwrap().to_owned(),
                    e.data["reason"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// Row counts by status straight from the table (to check the counters).
    pub async fn table_counts(&self, event: Uuid) -> (i64, i64) {
        let sql = self.db.sql("SELECT status, COUNT(*) FROM joins WHERE event_id = $1 GROUP BY status").into_owned();
        let rows: Vec<(String, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(event.to_string()).fetch_all(self.db.pool()).await.unwrap();
        let of = |s: &str| rows.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
        (of("confirmed"), of("waitlisted"))
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(c) = self.consumer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        }
        self.app.stop().await;
        self.db.close().await;
    }
}

impl Deref for Svc {
    type Target = TestService;

    fn deref(&self) -> &TestService {
        &self.app
    }
}

/// A published event starting tomorrow.
pub fn snapshot(organizer: Uuid, capacity: u32) -> EventSnapshot {
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::days(1);
    EventSnapshot {
        event_id: Uuid::now_v7(),
        organizer_id: organizer,
        title: "Jazz in the park".into(),
        city: "Lisbon".into(),
        category: "music".into(),
        starts_at: start,
        ends_at: start + time::Duration::hours(2),
        capacity,
        status: "published".into(),
        venue: String::new(),
        time_zone: "UTC".into(),
        version: 2,
        link_tag: String::new(),
    }
}

/// A fresh idempotency key.
pub fn key() -> String {
    format!("k-{}", Uuid::now_v7().simple())
}
