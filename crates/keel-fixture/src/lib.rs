//! A service that exercises every part of the Keel chassis, for Keel's black-box tests.
//!
//! Routes: `GET /hello`, `GET /items/{id}` (typed path), `POST /echo` (typed JSON body),
//! `POST /upload` (raw body, its own 64 KiB limit),
//! `GET /slow?ms=N` (sleeps), `GET /stream?ms=N` (two chunks `ms` apart), `GET /peer` (the
//! client's address), `GET /panic`, `GET /problem`, `GET /log` (logs a line with a
//! field), `GET /traceparent` (what an outbound call would carry), `GET /bare-error` (a bare text 500). Config section `app`: `greeting`, `api_key`
//! (a secret), `stubborn_task` (a background task that ignores cancellation, to test forced
//! shutdown), `failing_check` (a readiness check that is always down) and `warmup` (a startup
//! check that is down for that long), `workers` (a periodic `ticker` and a continuous `listener`
//! worker), `panicky_worker` (a periodic `crashy` worker whose every other run panics).
//! `auth` (JWT-protected `/auth/*` routes); with `database`, `POST /audit` appends to the audit log.
//! `GET /flags/{key}?user=&env=` evaluates a feature flag (`features.file`).

use std::time::Duration;

pub mod echo;

use axum::extract::{Path, Query};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use keel::config::{Secret, Section, Validation};
use keel::features::EvalContext;
use keel::health::{Check, Kind, Outcome};
use keel::workers::Worker;
use keel::{Problem, RequestId};
use serde::{Deserialize, Serialize};

/// The fixture's `app` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FixtureConfig {
    /// What `/hello` says.
    pub greeting: String,
    /// A secret, to test masking and production rules.
    pub api_key: Option<Secret>,
    /// Start a background task that ignores its stop token.
    pub stubborn_task: bool,
    /// Add a readiness check that is always down.
    pub failing_check: bool,
    /// A startup check that stays down this long after start.
    #[serde(with = "keel::config::duration")]
    pub warmup: Duration,
    /// Use the SQL database (`database.*`): `/db/*` routes.
    pub database: bool,
    /// Field encryption with rotating data keys (needs `database` and `security.encryption.*`):
    /// `PUT`/`GET /secrets/{id}` store and read a value sealed with the keyring.
    pub encrypted: bool,
    /// Events (needs `database`): `POST /events` writes an item and enqueues `item.created` on
    /// topic `items` through the outbox; consumer group `indexer` logs each one it handles.
    pub events: bool,
    /// The topic `POST /events` publishes to. Default `items`.
    pub events_topic: String,
    /// Use Redis (`redis.*`): `/cache/*` routes.
    pub redis: bool,
    /// `GET /limited` under the rate-limit policy `rate_limits.api`.
    pub rate_limited: bool,
    /// `GET /proxy/{*path}`: forwards to the upstream `upstreams.echo`.
    pub upstream: bool,
    /// Run a periodic worker `ticker` (every 50 ms) and a continuous worker `listener`.
    pub workers: bool,
    /// Run a periodic worker `crashy` whose every other run panics.
    pub panicky_worker: bool,
    /// JWT-protected routes (`security.jwt.*`): `GET /auth/me`, `GET /auth/admin` (role
    /// `admin`), and `POST /auth/login`, which logs the password and Authorization header it
    /// gets (to prove the log masks them).
    pub auth: bool,
    /// The gRPC service `fixture.v1.Echo` (`echo`), with its descriptors for reflection.
    pub grpc: bool,
}

impl Default for FixtureConfig {
    fn default() -> Self {
        Self {
            greeting: "hello".into(),
            api_key: None,
            stubborn_task: false,
            failing_check: false,
            warmup: Duration::ZERO,
            database: false,
            encrypted: false,
            events: false,
            events_topic: "items".into(),
            redis: false,
            rate_limited: false,
            upstream: false,
            workers: false,
            panicky_worker: false,
            auth: false,
            grpc: false,
        }
    }
}

impl Section for FixtureConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.greeting.is_empty() || self.greeting.len() > 64 {
            v.invalid("greeting", "must be 1 to 64 characters");
        }
    }
}

#[derive(Deserialize)]
struct FlagQuery {
    user: Option<String>,
    env: Option<String>,
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: u64,
}

#[derive(Debug, Deserialize, Serialize)]
struct Echo {
    name: String,
    age: u32,
}

/// The fixture's migrations, one set per backend.
pub fn migrations() -> keel::data::Migrations {
    keel::data::migrations!()
}

/// The fixture service.
pub fn service() -> keel::Service<FixtureConfig> {
    keel::Service::new(keel::build_info!())
        .name("fixture")
        .with_config::<FixtureConfig>()
        .migrations(migrations())
        .keeps_audit_log()
        .rotates_data_keys([("secrets", "id", "value")])
        .setup(|s| {
            let greeting = s.config().greeting.clone();
            if s.config().grpc && s.config().auth {
                // Every call needs a bearer token; the handler sees its claims.
                let auth = keel::grpc::auth::JwtInterceptor::<keel::security::jwt::Claims>::new(s.jwt()?);
                s.grpc_service(echo::pb::echo_server::EchoServer::with_interceptor(echo::EchoApi, auth));
                s.grpc_descriptors(echo::FILE_DESCRIPTOR_SET);
            } else if s.config().grpc {
                s.grpc_service(echo::pb::echo_server::EchoServer::new(echo::EchoApi));
                s.grpc_descriptors(echo::FILE_DESCRIPTOR_SET);
            }
            s.health_check(Check::new("self", Kind::Readiness, || async { Outcome::Up }));
            if s.config().failing_check {
                s.health_check(Check::new("broken", Kind::Readiness, || async {
                    Outcome::down("connect postgres://app:hunter2@db:5432/app: connection refused")
                }));
            }
            let warm_at = std::time::Instant::now() + s.config().warmup;
            s.health_check(Check::new("warmup", Kind::Startup, move || async move {
                if std::time::Instant::now() >= warm_at { Outcome::Up } else { Outcome::down("warming up") }
            }));
            if s.config().stubborn_task {
                s.task("stubborn", |_stop| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
            }
            s.task("polite", |stop| async move { stop.cancelled().await });
            if s.config().workers {
                s.worker(Worker::periodic("ticker", Duration::from_millis(50), |_ctx| async {
                    Ok::<_, keel::workers::RunError>(())
                }))?;
                s.worker(
                    Worker::continuous("listener", |ctx| async move {
                        loop {
                            ctx.heartbeat();
                            tokio::select! {
                                _ = ctx.cancelled() => return Ok::<_, keel::workers::RunError>(()),
                                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            }
                        }
                    })
                    .stale_after(Duration::from_secs(5)),
                )?;
            }
            if s.config().panicky_worker {
                let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                s.worker(
                    Worker::periodic("crashy", Duration::from_millis(50), move |_ctx| {
                        let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        crashy(n)
                    })
                    .restart_backoff(Duration::from_millis(10), Duration::from_millis(50)),
                )?;
            }
            let flags = s.features().clone();
            let deps = Deps {
                db: if s.config().database { Some(s.database()?) } else { None },
                redis: if s.config().redis { Some(s.redis()?) } else { None },
            };
            let secrets = if s.config().encrypted {
                let db = deps.db.clone().ok_or("app.encrypted needs app.database")?;
                let ring = s.data_keys(&db)?;
                secrets_routes(db, ring)
            } else {
                Router::new()
            };
            let events = if s.config().events {
                let db = deps.db.clone().ok_or("app.events needs app.database")?;
                events_routes(s, db)?
            } else {
                Router::new()
            };
            let limited = if s.config().rate_limited {
                Router::new().route("/limited", get(|| async { "ok" }).route_layer(s.rate_limit("api")?))
            } else {
                Router::new()
            };
            let proxy = if s.config().upstream {
                let client = s.http_client("echo")?;
                Router::new().route(
                    "/proxy/{*path}",
                    get(move |Path(path): Path<String>| {
                        let client = client.clone();
                        async move {
                            match client.get(&format!("/{path}")).await {
                                Ok(r) => (r.status, r.body).into_response(),
                                Err(e) => e.into_response(),
                            }
                        }
                    }),
                )
            } else {
                Router::new()
            };
            let auth = if s.config().auth { auth_routes(s.jwt()?) } else { Router::new() };
            let audit = match &deps.db {
                Some(db) => audit_routes(s.audit_log(db)?),
                None => Router::new(),
            };
            Ok(Router::new()
                .merge(events)
                .merge(secrets)
                .merge(auth)
                .merge(audit)
                .merge(limited)
                .merge(proxy)
                .merge(dependency_routes(deps))
                .route("/hello", get(move || async move { Json(serde_json::json!({ "message": greeting })) }))
                .route(
                    "/peer",
                    get(|axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>| async move {
                        peer.to_string()
                    }),
                )
                .route(
                    "/stream",
                    get(|Query(q): Query<SlowQuery>| async move {
                        // Two chunks, `ms` apart: an answer still being sent.
                        let chunks = futures_util::stream::unfold(0u8, move |n| async move {
                            match n {
                                0 => Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"first ")), 1)),
                                1 => {
                                    tokio::time::sleep(Duration::from_millis(q.ms)).await;
                                    Some((Ok(bytes::Bytes::from_static(b"second")), 2))
                                }
                                _ => None,
                            }
                        });
                        axum::body::Body::from_stream(chunks)
                    }),
                )
                .route(
                    "/flags/{key}",
                    get(move |Path(key): Path<String>, Query(q): Query<FlagQuery>| async move {
                        let mut ctx = EvalContext::new();
                        if let Some(u) = q.user {
                            ctx = ctx.user(u);
                        }
                        if let Some(e) = q.env {
                            ctx = ctx.environment(e);
                        }
                        Json(serde_json::json!({ "flag": key, "enabled": flags.is_enabled(&key, &ctx) }))
                    }),
                )
                .route("/items/{id}", get(|Path(id): Path<u32>| async move { Json(serde_json::json!({ "id": id })) }))
                .route("/echo", post(|Json(e): Json<Echo>| async move { Json(e) }))
                .route(
                    "/upload",
                    post(|body: axum::body::Bytes| async move { body.len().to_string() })
                        .route_layer(axum::extract::DefaultBodyLimit::max(64 * 1024)),
                )
                .route(
                    "/slow",
                    get(|Query(q): Query<SlowQuery>| async move {
                        tokio::time::sleep(Duration::from_millis(q.ms)).await;
                        "done"
                    }),
                )
                .route("/panic", get(panicking))
                .route(
                    "/problem",
                    get(|| async {
                        Problem::new(http::StatusCode::CONFLICT, "conflict", "Conflict").detail("already there")
                    }),
                )
                .route(
                    "/log",
                    get(|id: RequestId| async move {
                        tracing::info!(marker = "fixture-log", "handler log line");
                        id.to_string()
                    }),
                )
                .route(
                    "/warn",
                    get(|| async {
                        tracing::warn!(marker = "fixture-warn", "handler warning");
                        "warned"
                    }),
                )
                .route(
                    "/traceparent",
                    get(|| async {
                        let mut headers = http::HeaderMap::new();
                        keel::telemetry::inject_current(&mut headers);
                        headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
                    }),
                )
                .route(
                    "/bare-error",
                    get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "db password=hunter2 refused") }),
                ))
        })
}

/// `item.created`, published when `POST /events` adds an item.
#[derive(Debug, Serialize, Deserialize)]
pub struct ItemCreated {
    /// The item's name.
    pub name: String,
}

impl keel::events::Event for ItemCreated {
    const TYPE: &'static str = "item.created";
    const VERSION: u32 = 1;
}

/// Logs each `item.created` it handles (inside the consumer span: the producer's request id and
/// trace id are on the line); a name starting with `poison` fails until `POST /events/heal`.
struct Indexer;

static HEALED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl keel::events::Handler for Indexer {
    async fn handle(&self, msg: &mut keel::events::Message) -> Result<(), keel::events::Failure> {
        let item: ItemCreated = msg.decode()?;
        if item.name.starts_with("poison") && !HEALED.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(keel::events::Failure::retry("cannot index a poisoned item"));
        }
        tracing::info!(marker = "event-handled", event_id = %msg.envelope().id, item = %item.name, "indexed item");
        Ok(())
    }
}

fn events_routes(s: &mut keel::Setup<FixtureConfig>, db: keel::data::Db) -> Result<Router, keel::app::SetupError> {
    let bus = s.bus()?;
    let outbox = s.outbox(&db)?;
    let options = keel::events::ConsumerOptions::default()
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let topic = s.config().events_topic.clone();
    s.consume(keel::events::Consumer::new(bus, topic.clone(), "indexer", Indexer).inbox(db.clone()).options(options))?;
    Ok(Router::new()
        .route("/events/heal", post(|| async { HEALED.store(true, std::sync::atomic::Ordering::SeqCst) }))
        .route(
            "/events",
            post(move |Json(item): Json<ItemCreated>| {
                let (db, outbox, topic) = (db.clone(), outbox.clone(), topic.clone());
                async move {
                    let mut tx = db.begin_write().await.map_err(IntoResponse::into_response)?;
                    sqlx::query(sqlx::AssertSqlSafe(db.sql("INSERT INTO items (name) VALUES ($1)").into_owned()))
                        .bind(&item.name)
                        .execute(db.on(&mut *tx))
                        .await
                        .map_err(|e| keel::data::DataError::from(e).into_response())?;
                    let envelope = outbox.enqueue_event(&mut tx, &topic, &item).await.map_err(|e| {
                        tracing::error!(error = %e, "enqueue failed");
                        Problem::internal().into_response()
                    })?;
                    db.commit(tx).await.map_err(IntoResponse::into_response)?;
                    outbox.wake();
                    Ok::<_, axum::response::Response>(Json(serde_json::json!({ "event_id": envelope.id })))
                }
            }),
        ))
}

#[allow(clippy::panic)]
async fn crashy(run: u64) -> Result<(), keel::workers::RunError> {
    if run.is_multiple_of(2) {
        panic!("crashy worker run {run}"); // allow-panic: the worker exists to test panic recovery
    }
    Ok(())
}

/// The fixture's token claims: every field typed, so a token with a claim of the wrong type is
/// refused rather than half-read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixtureClaims {
    /// Subject.
    pub sub: String,
    /// Expiry.
    pub exp: u64,
    /// One role.
    pub role: String,
    /// E-mail.
    pub email: String,
}

impl keel::security::HasRoles for FixtureClaims {
    fn has_role(&self, role: &str) -> bool {
        self.role == role
    }
}

struct Admin;

impl keel::security::Role for Admin {
    const NAME: &'static str = "admin";
}

#[derive(Deserialize)]
struct Login {
    email: String,
    password: String,
}

fn auth_routes(jwt: keel::security::Jwt) -> Router {
    use keel::security::{Auth, RequireRole};
    Router::new()
        .route(
            "/auth/me",
            get(|Auth(c): Auth<FixtureClaims>| async move { Json(serde_json::json!({"sub": c.sub, "role": c.role})) }),
        )
        .route(
            "/auth/admin",
            get(|r: RequireRole<Admin, FixtureClaims>| async move { format!("hello admin {}", r.claims().sub) }),
        )
        .route(
            "/auth/login",
            post(|headers: http::HeaderMap, Json(login): Json<Login>| async move {
                let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                // Deliberately careless logging: the formatter must mask all of it.
                tracing::info!(
                    marker = "fixture-login",
                    email = %login.email,
                    password = %login.password,
                    authorization = %authorization,
                    note = %format!("client sent {authorization} with {}", login.password.len()),
                    "login attempt"
                );
                http::StatusCode::NO_CONTENT
            }),
        )
        .layer(jwt.extension())
}

#[derive(Deserialize)]
struct AuditEvent {
    actor: String,
    action: String,
    details: serde_json::Value,
}

fn audit_routes(log: keel::security::audit::AuditLog) -> Router {
    Router::new().route(
        "/audit",
        post(move |Json(e): Json<AuditEvent>| {
            let log = log.clone();
            async move {
                match log
                    .record(&e.actor, &e.action, "fixture", keel::security::audit::Outcome::Success, e.details)
                    .await
                {
                    Ok(entry) => Ok(Json(serde_json::json!({"id": entry.id, "hash": entry.hash}))),
                    Err(err) => {
                        tracing::error!(error = %err, "audit append failed");
                        Err(Problem::internal())
                    }
                }
            }
        }),
    )
}

#[allow(clippy::panic)]
async fn panicking() -> &'static str {
    panic!("secret internal detail: the vault is at 10.0.0.7") // allow-panic: the route exists to test panic recovery
}

#[derive(Clone)]
struct Deps {
    db: Option<keel::data::Db>,
    redis: Option<keel::redis::Redis>,
}

/// `PUT`/`GET /secrets/{id}`: a value stored sealed with the keyring, read back in clear.
fn secrets_routes(db: keel::data::Db, ring: keel::security::crypto::Keyring) -> Router {
    use keel::http::Problem;
    let put = {
        let (db, ring) = (db.clone(), ring.clone());
        move |Path(id): Path<String>, body: String| async move {
            let sealed = ring.encrypt_str(&body).map_err(Problem::from)?;
            let mut conn = db.acquire().await.map_err(Problem::from)?;
            sqlx::query(db.statement("DELETE FROM secrets WHERE id = $1"))
                .bind(&id)
                .execute(db.on(&mut *conn))
                .await
                .map_err(|e| Problem::from(keel::data::DataError::from(e)))?;
            sqlx::query(db.statement("INSERT INTO secrets (id, value) VALUES ($1, $2)"))
                .bind(&id)
                .bind(sealed)
                .execute(db.on(&mut *conn))
                .await
                .map_err(|e| Problem::from(keel::data::DataError::from(e)))?;
            Ok::<_, Problem>(http::StatusCode::NO_CONTENT)
        }
    };
    let get_one = move |Path(id): Path<String>| async move {
        let mut conn = db.acquire().await.map_err(Problem::from)?;
        let sealed: Option<String> = sqlx::query_scalar(db.statement("SELECT value FROM secrets WHERE id = $1"))
            .bind(&id)
            .fetch_optional(db.on(&mut *conn))
            .await
            .map_err(|e| Problem::from(keel::data::DataError::from(e)))?
            .flatten();
        let sealed = sealed.ok_or_else(Problem::not_found)?;
        ring.decrypt_str(&sealed).map_err(Problem::from)
    };
    Router::new().route("/secrets/{id}", get(get_one).put(put))
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
}

#[derive(Deserialize)]
struct Hold {
    ms: u64,
}

fn dependency_routes(deps: Deps) -> Router {
    use axum::extract::State;
    use keel::data::DataError;

    fn db(d: &Deps) -> Result<&keel::data::Db, Problem> {
        d.db.as_ref().ok_or_else(Problem::not_found)
    }
    fn cache(d: &Deps) -> Result<&keel::redis::Redis, Problem> {
        d.redis.as_ref().ok_or_else(Problem::not_found)
    }
    fn problem(e: impl axum::response::IntoResponse) -> axum::response::Response {
        e.into_response()
    }

    Router::new()
        .route(
            "/db/items",
            get(|State(d): State<Deps>| async move {
                let db = db(&d).map_err(problem)?;
                let mut conn = db.acquire().await.map_err(problem)?;
                let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM items ORDER BY id")
                    .fetch_all(db.on(&mut *conn))
                    .await
                    .map_err(|e| problem(keel::data::DataError::from(e)))?;
                Ok::<_, axum::response::Response>(Json(
                    rows.into_iter().map(|(id, name)| serde_json::json!({"id": id, "name": name})).collect::<Vec<_>>(),
                ))
            })
            .post(|State(d): State<Deps>, Json(item): Json<NewItem>| async move {
                let db = db(&d).map_err(problem)?.clone();
                let sql = db.sql("INSERT INTO items (name) VALUES ($1)").into_owned();
                let traced = db.clone();
                db.transaction(|tx| {
                    Box::pin(async move {
                        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(item.name).execute(traced.on(&mut **tx)).await?;
                        Ok::<_, DataError>(())
                    })
                })
                .await
                .map_err(problem)?;
                Ok::<_, axum::response::Response>(http::StatusCode::CREATED)
            }),
        )
        .route(
            "/db/items/rollback",
            post(|State(d): State<Deps>, Json(item): Json<NewItem>| async move {
                // Inserts, then fails: the transaction must roll back.
                let db = db(&d).map_err(problem)?.clone();
                let sql = db.sql("INSERT INTO items (name) VALUES ($1)").into_owned();
                let traced = db.clone();
                let r: Result<(), DataError> = db
                    .transaction(|tx| {
                        Box::pin(async move {
                            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(item.name).execute(traced.on(&mut **tx)).await?;
                            Err(DataError::Config("deliberate failure after the insert".into()))
                        })
                    })
                    .await;
                Ok::<_, axum::response::Response>(format!("{}", r.is_err()))
            }),
        )
        .route(
            "/db/hold",
            get(|State(d): State<Deps>, Query(h): Query<Hold>| async move {
                let db = db(&d).map_err(problem)?;
                let conn = db.acquire().await.map_err(problem)?;
                tokio::time::sleep(Duration::from_millis(h.ms)).await;
                drop(conn);
                Ok::<_, axum::response::Response>("held")
            }),
        )
        .route(
            "/cache/{key}",
            get(|State(d): State<Deps>, Path(key): Path<String>| async move {
                let r = cache(&d).map_err(problem)?;
                let v: Option<String> =
                    r.query(keel::redis::driver::cmd("GET").arg(r.key(&key))).await.map_err(problem)?;
                v.ok_or_else(|| problem(Problem::not_found()))
            })
            .put(|State(d): State<Deps>, Path(key): Path<String>, body: String| async move {
                let r = cache(&d).map_err(problem)?;
                let _: () = r
                    .query(keel::redis::driver::cmd("SET").arg(r.key(&key)).arg(body).arg("EX").arg(300))
                    .await
                    .map_err(problem)?;
                Ok::<_, axum::response::Response>(http::StatusCode::NO_CONTENT)
            }),
        )
        .with_state(deps)
}
