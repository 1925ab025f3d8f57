//! `symbol.*` from the service's outbox through RabbitMQ to `symbols-worker`, on MariaDB:
//! every change applied exactly once (redeliveries and republished duplicates included), and a
//! message the worker cannot handle dead-lettered (after its retries when it might have
//! succeeded later, at once when it never can). One SQLite test runs the same path with the
//! in-process bus: the zero-setup development run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{App, Broker, Env, count, eventually, mariadb, metric, pool, rabbitmq};
use keel::events::{Envelope, Event};
use serde_json::{Value, json};
use sqlx::Row as _;
use symbols::events::{SymbolChange, SymbolUpdated, TOPIC};

/// The worker's env: quick retries, few attempts, so dead letters come within seconds.
fn worker_env(db: &keel::testing::TestDatabase, broker: &Broker) -> Env {
    Env::new(symbols::WORKER, db, broker)
        .set("APP__MAX_ATTEMPTS", "4")
        .set("APP__RETRY_INITIAL", "50ms")
        .set("APP__RETRY_MAX", "200ms")
}

/// The worker's counters for `project`, once `want` holds of them.
async fn stats_until(worker: &App, project: &str, want: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("stats of {project}"), Duration::from_secs(30), || async {
        let (s, b) = worker.get(&format!("/v1/projects/{project}/stats")).await;
        (s == 200 && want(&b)).then_some(b)
    })
    .await
}

fn totals(s: &Value) -> (i64, i64, i64, i64) {
    let n = |k: &str| s[k].as_i64().unwrap();
    (n("live_symbols"), n("created_total"), n("updated_total"), n("deleted_total"))
}

/// The `ok` handler runs the worker's consumer has counted (duplicates acknowledged by the
/// inbox included).
async fn handled(worker: &App) -> f64 {
    metric(&worker.metrics().await, "consumer_messages_total", &["outcome=\"ok\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_reach_the_worker_through_rabbitmq_exactly_once() {
    if !rabbitmq() {
        return;
    }
    let Some(db) = mariadb().await else { return };
    let broker = Broker::rabbit();
    // The worker first: its queue must exist before the outbox publishes (RabbitMQ refuses
    // messages no queue takes; the relay would retry them).
    let worker = App::start(symbols::worker_service(), &worker_env(&db, &broker)).await;
    let api = App::start(symbols::service(), &Env::new(symbols::SERVICE, &db, &broker)).await;
    let base = "/v1/projects/p1/symbols";

    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let (s, b) = api.post(base, json!({"name": name, "kind": "color", "data": {"n": 1}})).await;
        assert_eq!(s, 201);
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    // Changes of one symbol in quick succession: the worker applies them in version order even
    // when its handlers take them concurrently.
    for i in 0..3 {
        assert_eq!(api.patch(&format!("{base}/{}", ids[0]), json!({"name": format!("a{i}")})).await.0, 200);
    }
    assert_eq!(api.delete(&format!("{base}/{}", ids[1])).await.0, 204);

    let stats = stats_until(&worker, "p1", |s| s["deleted_total"] == 1 && s["updated_total"] == 3).await;
    assert_eq!(totals(&stats), (2, 3, 3, 1));
    let pool = pool(&db).await;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT name, version, deleted FROM symbol_projection WHERE symbol_id = '{}'",
        ids[0]
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.try_get::<String, _>("name").unwrap(), "a2");
    assert_eq!(row.try_get::<i64, _>("version").unwrap(), 4);
    assert_eq!(count(&pool, "symbol_activity WHERE outcome = 'applied'").await, 7);

    // The same events again, each twice, straight onto the broker (a producer retrying after a
    // lost confirm, a redelivery): acknowledged, applied never again.
    let bus = broker.bus().await;
    let before = handled(&worker).await;
    let rows = sqlx::query("SELECT payload FROM keel_outbox ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 7);
    for row in &rows {
        let envelope = Envelope::from_bytes(row.try_get::<String, _>("payload").unwrap().as_bytes()).unwrap();
        bus.publish(TOPIC, &envelope).await.unwrap();
        bus.publish(TOPIC, &envelope).await.unwrap();
    }
    eventually("the duplicates to be handled", Duration::from_secs(30), || async {
        (handled(&worker).await >= before + 14.0).then_some(())
    })
    .await;
    let (_, stats) = worker.get("/v1/projects/p1/stats").await;
    assert_eq!(totals(&stats), (2, 3, 3, 1), "duplicates changed nothing");
    assert_eq!(count(&pool, "symbol_activity").await, 7, "one activity row per event");
    assert!(bus.dlq_list(TOPIC, 10).await.unwrap().is_empty(), "nothing dead-lettered");

    // Nothing was left behind: every outbox row was sent.
    assert_eq!(count(&pool, "keel_outbox WHERE status <> 1").await, 0);
    api.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_the_worker_cannot_handle_is_dead_lettered() {
    if !rabbitmq() {
        return;
    }
    let Some(db) = mariadb().await else { return };
    let broker = Broker::rabbit();
    let worker = App::start(symbols::worker_service(), &worker_env(&db, &broker).set("APP__ORDER_WAIT", "1s")).await;
    let bus = broker.bus().await;

    // A change whose predecessors never come: tried again promptly for app.order_wait (it could
    // succeed once they do), then dead-lettered once its deliveries reach app.max_attempts.
    let orphan = SymbolUpdated(SymbolChange {
        symbol_id: uuid::Uuid::now_v7(),
        project_id: "p1".into(),
        name: "ghost".into(),
        kind: "color".into(),
        version: 5,
        occurred_at: 0,
    });
    let orphan = Envelope::new("test", &orphan).unwrap().with_key(orphan.key().unwrap());
    // An event type the worker does not know, and a known type of a schema version it does not:
    // no retry can help, so they are dead-lettered at once.
    let unknown = Envelope::raw("test", "symbol.renamed", 1, json!({"symbol_id": uuid::Uuid::now_v7()}));
    let future = Envelope::raw("test", "symbol.created", 2, json!({"whatever": true}));
    for e in [&orphan, &unknown, &future] {
        bus.publish(TOPIC, e).await.unwrap();
    }

    let dead = eventually("three dead letters", Duration::from_secs(30), || async {
        let l = bus.dlq_list(TOPIC, 10).await.unwrap();
        (l.len() == 3).then_some(l)
    })
    .await;
    let find = |id: &str| dead.iter().find(|d| d.envelope.id == id).unwrap();
    let d = find(&orphan.id);
    assert!(d.attempts >= 4 && d.group == symbols::worker::GROUP, "{d:?}");
    assert!(d.reason.contains("still early 1s after it was published"), "{}", d.reason);
    assert!(d.reason.contains("waits for the ones before it"), "{}", d.reason);
    assert_eq!(find(&unknown.id).attempts, 1, "{:?}", find(&unknown.id));
    assert!(find(&unknown.id).reason.contains("unknown event type"), "{}", find(&unknown.id).reason);
    assert_eq!(find(&future.id).attempts, 1);

    // Nothing was applied, and the worker is still ready.
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "symbol_activity").await, 0);
    assert_eq!(count(&pool, "symbol_stats").await, 0);
    assert_eq!(worker.get("/health/ready").await.0, 200);
    let text = worker.metrics().await;
    assert!(metric(&text, "consumer_messages_total", &["outcome=\"early\""]) >= 3.0, "tried again promptly: {text}");
    assert!(metric(&text, "consumer_messages_total", &["outcome=\"dead\""]) >= 3.0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_the_in_process_bus_need_no_server() {
    let db = keel::testing::TestDatabase::sqlite().unwrap();
    let broker = Broker::in_process();
    let worker = App::start(symbols::worker_service(), &worker_env(&db, &broker)).await;
    let api = App::start(symbols::service(), &Env::new(symbols::SERVICE, &db, &broker)).await;
    let base = "/v1/projects/dev/symbols";
    let (s, b) = api.post(base, json!({"name": "a", "kind": "color"})).await;
    assert_eq!(s, 201);
    assert_eq!(api.post(base, json!({"name": "A", "kind": "color"})).await.0, 409);
    assert_eq!(api.patch(&format!("{base}/{}", b["id"].as_str().unwrap()), json!({"kind": "font"})).await.0, 200);
    let (_, page) = api.get(base).await;
    assert_eq!((page["total_count"].as_i64(), page["has_next"].as_bool()), (Some(1), Some(false)));
    let stats = stats_until(&worker, "dev", |s| s["updated_total"] == 1).await;
    assert_eq!(totals(&stats), (1, 1, 1, 0));
    api.stop().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_that_arrives_before_its_predecessor_waits_for_it() {
    if !rabbitmq() {
        return;
    }
    let Some(db) = mariadb().await else { return };
    let broker = Broker::rabbit();
    let worker = App::start(symbols::worker_service(), &worker_env(&db, &broker).set("APP__MAX_ATTEMPTS", "50")).await;
    let bus = broker.bus().await;
    let change = |version, name: &str| SymbolChange {
        symbol_id: uuid::Uuid::from_u128(42),
        project_id: "ordered".into(),
        name: name.into(),
        kind: "color".into(),
        version,
        occurred_at: version,
    };
    let updated = Envelope::new("test", &SymbolUpdated(change(2, "second"))).unwrap();
    bus.publish(TOPIC, &updated).await.unwrap();
    eventually("the early change to be tried again", Duration::from_secs(30), || async {
        (metric(&worker.metrics().await, "consumer_messages_total", &["outcome=\"early\""]) >= 1.0).then_some(())
    })
    .await;
    let created = Envelope::new("test", &symbols::events::SymbolCreated(change(1, "first"))).unwrap();
    bus.publish(TOPIC, &created).await.unwrap();

    let stats = stats_until(&worker, "ordered", |s| s["updated_total"] == 1).await;
    assert_eq!(totals(&stats), (1, 1, 1, 0));
    let pool = pool(&db).await;
    let name: String =
        sqlx::query("SELECT name FROM symbol_projection").fetch_one(&pool).await.unwrap().try_get("name").unwrap();
    assert_eq!(name, "second");
    assert_eq!(count(&pool, "symbol_activity WHERE outcome = 'applied'").await, 2);
    assert!(bus.dlq_list(TOPIC, 10).await.unwrap().is_empty());
    worker.stop().await;
}
