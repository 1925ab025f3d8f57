//! Shared test helpers: the events service started in this process on port 0 against its own
//! database (SQLite file, or a fresh PostgreSQL / MariaDB database), with a private in-process
//! bus the test taps, and JWTs minted with the test key.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cityevents_common::catalogue::EVENTS_TOPIC;
pub use cityevents_common::testing::database;
use cityevents_common::testing::{TestEnv, TestKey, TestService, eventually};
use keel::config::Secret;
use keel::data::Backend;
use keel::events::{Bus, Envelope, SubscribeOptions};
use keel::events::{BusBackend, BusConfig};
use keel::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// The key the service trusts and the tests sign with.
pub const KEY: TestKey = TestKey::new("k1", "cityevents-events-tests-hs256-secret-0123456789");

/// Every envelope published on `cityevents.events`, in arrival order.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<Envelope>>>);

impl Seen {
    /// Everything published on `topic` of `bus` from now on.
    pub async fn tap(bus: &Bus, topic: &str) -> Self {
        let mut sub = bus.subscribe(topic, "test-tap", &SubscribeOptions::default()).await.unwrap();
        let seen = Self::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = sub.next().await {
                if let Ok(env) = d.envelope() {
                    s.0.lock().unwrap().push(env.clone());
                }
                let _ = d.ack().await;
            }
        });
        seen
    }

    pub fn all(&self) -> Vec<Envelope> {
        self.0.lock().unwrap().clone()
    }

    /// `(type, key)` of every envelope about `id`, in order.
    pub fn about(&self, id: &str) -> Vec<Envelope> {
        self.all().into_iter().filter(|e| e.key.as_deref() == Some(id)).collect()
    }

    /// Waits until `n` envelopes about `id` arrived; returns them.
    pub async fn wait_for(&self, id: &str, n: usize) -> Vec<Envelope> {
        eventually(&format!("{n} events about {id}"), Duration::from_secs(20), || async {
            let got = self.about(id);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// A stand-in for the joins service's `GET /api/v1/events/{id}/counts` and `GET
/// /api/v1/events/{id}/join` (the bearer's place): what the test sets (unknown events and
/// places 404), or 500 for every call while `down`.
#[derive(Clone, Default)]
pub struct JoinsStub {
    counts: Arc<Mutex<std::collections::HashMap<String, (i64, i64)>>>,
    /// `(event, authorization header)` → the place's status.
    places: Arc<Mutex<std::collections::HashMap<(String, String), String>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl JoinsStub {
    /// Serves on 127.0.0.1:0; returns the stub and its base URL.
    async fn start() -> (Self, String) {
        use axum::extract::{Path, State};
        use axum::response::IntoResponse;
        let stub = Self::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/events/{id}/counts",
                axum::routing::get(|State(st): State<JoinsStub>, Path(id): Path<String>| async move {
                    st.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if st.down.load(std::sync::atomic::Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    match st.counts.lock().unwrap().get(&id) {
                        Some((c, w)) => {
                            axum::Json(json!({"capacity": 0, "confirmed": c, "waitlisted": w})).into_response()
                        }
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .route(
                "/api/v1/events/{id}/join",
                axum::routing::get(
                    |State(st): State<JoinsStub>, Path(id): Path<String>, headers: axum::http::HeaderMap| async move {
                        st.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if st.down.load(std::sync::atomic::Ordering::SeqCst) {
                            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                        }
                        let bearer = headers
                            .get(axum::http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        match st.places.lock().unwrap().get(&(id, bearer)) {
                            Some(status) => axum::Json(json!({"status": status})).into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                ),
            )
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (stub, url)
    }

    /// Says `event` has `confirmed` seated and `waitlisted` waiting.
    pub fn set(&self, event: &str, confirmed: i64, waitlisted: i64) {
        self.counts.lock().unwrap().insert(event.to_owned(), (confirmed, waitlisted));
    }

    /// Says the bearer of `token` has a place at `event` with `status`.
    pub fn place(&self, event: &str, token: &str, status: &str) {
        self.places.lock().unwrap().insert((event.to_owned(), format!("Bearer {token}")), status.to_owned());
    }

    /// Makes every call fail (or answer again).
    pub fn down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The service under test (its base URL and client through `Deref`).
pub struct Svc {
    app: TestService,
    /// The joins service it asks before an unpublish.
    pub joins: JoinsStub,
    /// What reached the bus (in-process backend only).
    pub seen: Seen,
    /// What reached `cityevents.moderation` (in-process backend only).
    pub moderation: Seen,
    _bus: Option<Bus>,
    _db: TestDatabase,
}

/// `now + offset` as RFC 3339.
pub fn at(offset: time::Duration) -> String {
    (OffsetDateTime::now_utc() + offset).format(&Rfc3339).unwrap()
}

pub fn hours(h: i64) -> time::Duration {
    time::Duration::hours(h)
}

impl Svc {
    /// Starts the service on `backend` with a private in-process bus the test taps.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_tapped(backend, &[]).await
    }

    /// [`Svc::start`] with extra settings (keys without the env prefix).
    pub async fn start_tapped(backend: Backend, extra: &[(&str, &str)]) -> Option<Self> {
        let db = database(backend).await?;
        let bus_url = format!("memory://events-test-{}", Uuid::now_v7().simple());
        let mut cfg = BusConfig::default();
        cfg.backend = BusBackend::InProcess;
        cfg.url = Some(Secret::new(bus_url.clone()));
        let bus = Bus::new(&cfg).unwrap();
        bus.connect().await.unwrap();
        // Subscribe before anything is published: a new group sees only later messages.
        let seen = Seen::tap(&bus, EVENTS_TOPIC).await;
        let moderation = Seen::tap(&bus, cityevents_common::catalogue::MODERATION_TOPIC).await;
        let mut settings = vec![("BUS__URL", bus_url.as_str())];
        settings.extend_from_slice(extra);
        let mut svc = Self::start_with(db, &settings).await;
        svc.seen = seen;
        svc.moderation = moderation;
        svc._bus = Some(bus);
        Some(svc)
    }

    /// Starts the service on `backend` with extra settings (keys without the env prefix), or
    /// `None` when that database server is not running here.
    pub async fn start_on(backend: Backend, extra: &[(&str, &str)]) -> Option<Self> {
        let db = database(backend).await?;
        Some(Self::start_with(db, extra).await)
    }

    /// The URL of the service's database.
    pub fn database_url(&self) -> &str {
        self._db.url()
    }

    /// Inserts published events straight into the database, 100 to a statement (and into
    /// SQLite's full-text index, as the service's store would): `(title, description,
    /// starts_at micros)` each, in Lyon, two hours long. Returns their ids in order. For tables
    /// too large to fill through the API.
    pub async fn seed_published(&self, events: &[(String, String, i64)]) -> Vec<String> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(self._db.url()).unwrap();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(self._db.url()).await.unwrap();
        let organizer = Uuid::now_v7().to_string();
        let now = OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(100) {
            let mut text = String::from(
                "INSERT INTO events (id, organizer_id, title, description, city, city_key, category, category_key, \
                 starts_at, ends_at, capacity, status, published_at, version, created_at, updated_at, venue, time_zone) \
                 VALUES ",
            );
            for i in 0..chunk.len() {
                let p: Vec<String> = (1..=9).map(|k| format!("${}", i * 9 + k)).collect();
                text.push_str(&format!(
                    "{}({}, {}, {}, {}, 'Lyon', 'lyon', 'music', 'music', {}, {}, 0, 'published', {}, 1, {}, {}, '', 'UTC')",
                    if i > 0 { ", " } else { "" },
                    p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
                ));
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(backend.sql(&text).into_owned()));
            for (title, description, starts_at) in chunk {
                let id = Uuid::now_v7().to_string();
                ids.push(id.clone());
                q = q
                    .bind(id)
                    .bind(organizer.clone())
                    .bind(title.clone())
                    .bind(description.clone())
                    .bind(*starts_at)
                    .bind(*starts_at + 7_200_000_000)
                    .bind(now)
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut conn).await.unwrap();
        }
        if backend == Backend::Sqlite {
            for statement in [
                "INSERT INTO events_fts_rows (id) SELECT id FROM events WHERE id NOT IN (SELECT id FROM events_fts_rows)",
                "INSERT INTO events_fts (rowid, title, city, venue, description) \
                 SELECT r.rowid, e.title, e.city, e.venue, e.description FROM events e \
                 JOIN events_fts_rows r ON r.id = e.id WHERE r.rowid NOT IN (SELECT rowid FROM events_fts)",
            ] {
                sqlx::query(statement).execute(&mut conn).await.unwrap();
            }
        }
        ids
    }

    /// Starts the service on `db` with extra settings (keys without the env prefix).
    pub async fn start_with(db: TestDatabase, extra: &[(&str, &str)]) -> Self {
        let (joins, joins_url) = JoinsStub::start().await;
        let mut env = TestEnv::new(cityevents_common::services::EVENTS.name)
            .trust(&KEY)
            .set("UPSTREAMS__JOINS__BASE_URL", joins_url.as_str())
            .set("UPSTREAMS__JOINS__RETRY__MAX_ATTEMPTS", "1")
            .set("DATABASE__URL", db.url())
            .set("DATABASE__POOL__MAX_CONNECTIONS", "5")
            .set("OUTBOX__POLL_INTERVAL", "50ms")
            // Trending answers as the signals stand (the cache has its unit test).
            .set("APP__TRENDING_CACHE", "0s");
        for (k, v) in extra {
            env = env.set(k, *v);
        }
        let app = TestService::start(cityevents_events::service(), env.load()).await;
        Self { app, joins, seen: Seen::default(), moderation: Seen::default(), _bus: None, _db: db }
    }

    /// Publishes `event` on `topic` of the service's in-process bus (as another service would).
    pub async fn publish<E: keel::events::Event>(&self, topic: &str, event: &E) {
        let env = Envelope::new("cityevents-test", event).unwrap();
        self._bus.as_ref().expect("an in-process bus").publish(topic, &env).await.unwrap();
    }

    /// Moves an event `hours` into the past (both ends) on the service's database directly, as
    /// time would: the API publishes only events that have not started.
    pub async fn shift(&self, event: &Value, hours: i64) {
        sqlx::any::install_default_drivers();
        let backend = keel::data::Backend::from_url(self._db.url()).unwrap();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(self._db.url()).await.unwrap();
        let statement = "UPDATE events SET starts_at = starts_at - $1, ends_at = ends_at - $2 WHERE id = $3";
        let micros = hours * 3_600_000_000;
        sqlx::query(sqlx::AssertSqlSafe(backend.sql(statement).into_owned()))
            .bind(micros)
            .bind(micros)
            .bind(event["id"].as_str().unwrap().to_owned())
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// An access token for `user` with `role`, as auth would issue it.
    pub fn token(&self, user: Uuid, role: &str) -> String {
        KEY.token(&user.to_string(), role)
    }

    /// An access token with an arbitrary subject.
    pub fn token_for(&self, sub: &str) -> String {
        KEY.token(sub, "user")
    }

    /// Sends a request; returns status, body (JSON or `null`) and headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut r = self.app.http.request(method, self.app.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, body, headers)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, b, _) = self.send(Method::GET, path, token, None, &[]).await;
        (s, b)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, b, _) = self.send(Method::POST, path, token, Some(body), &[]).await;
        (s, b)
    }

    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, b, _) = self.send(Method::POST, path, token, None, &[]).await;
        (s, b)
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, b, _) = self.send(Method::PATCH, path, token, Some(body), &[]).await;
        (s, b)
    }

    /// Creates an event from defaults (tomorrow, Lyon, music, 50 seats) overridden by `fields`;
    /// asserts 201 and returns it.
    pub async fn create(&self, token: &str, fields: Value) -> Value {
        let mut body = json!({
            "title": "Jazz night",
            "description": "Live jazz by the river.",
            "city": "Lyon",
            "category": "music",
            "starts_at": at(hours(24)),
            "ends_at": at(hours(27)),
            "capacity": 50,
        });
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, event) = self.post("/api/v1/events", Some(token), body).await;
        assert_eq!(status, StatusCode::CREATED, "{event}");
        event
    }

    /// Creates and publishes an event; returns it (published).
    pub async fn create_published(&self, token: &str, fields: Value) -> Value {
        let e = self.create(token, fields).await;
        let (status, e) = self.post_empty(&format!("/api/v1/events/{}/publish", id(&e)), Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{e}");
        e
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

impl Deref for Svc {
    type Target = TestService;

    fn deref(&self) -> &TestService {
        &self.app
    }
}

/// The `id` of an event body.
pub fn id(event: &Value) -> String {
    event["id"].as_str().unwrap().to_owned()
}

/// Asserts a 400 problem with `code: invalid_input` naming `field`.
pub fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
    assert_eq!(body["code"], "invalid_input", "{field}: {body}");
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&field), "expected {field} in {fields:?}: {body}");
}

/// Asserts a 409 problem with `code`.
pub fn assert_conflict(status: StatusCode, body: &Value, code: &str) {
    assert_eq!(status, StatusCode::CONFLICT, "{code}: {body}");
    assert_eq!(body["code"], code, "{body}");
}
