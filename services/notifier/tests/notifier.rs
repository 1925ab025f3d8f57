//! The notifier end to end, started in-process on port 0:
//!
//! * the API on SQLite, PostgreSQL and MariaDB: 401 without a token, newest-first keyset pages
//!   that stay stable while rows arrive, the unread filter, mark-read (204, idempotent), 404 for
//!   someone else's notification, 400 naming a bad parameter;
//! * the consumers through NATS on SQLite and PostgreSQL: every `join.*` and `event.canceled`
//!   becomes a notification, other `event.*` are ignored, a redelivered message is applied once,
//!   and poison messages land in `<topic>.dlq`.
//!
//! Tests skip when their server is not running here, except under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cityevents_common::catalogue::{
    EVENTS_TOPIC, EventCanceled, EventPublished, EventSnapshot, JOINS_TOPIC, JoinCanceled, JoinChange, JoinConfirmed,
    JoinKicked, JoinPromoted, JoinWaitlisted,
};
use cityevents_common::testing::eventually;
use common::{Broker, Notifier, database, nats_bus, pool, seed, token};
use keel::data::Backend;
use keel::events::{Bus, Envelope, Event};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// API

async fn api(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let n = Notifier::start(db, &Broker::InProcess).await;
    let seeded = pool(&n.db).await;
    let (alice, bob) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());

    // Five for Alice: two share a timestamp (the id breaks the tie); one for Bob.
    let ids: Vec<String> = (0..5).map(|_| Uuid::now_v7().to_string()).collect();
    for (i, id) in ids.iter().enumerate() {
        let at = 1_700_000_000_000_000 + (i.min(3) as i64) * 1_000_000;
        seed(&seeded, backend, id, &alice, at).await;
    }
    let bobs = Uuid::now_v7().to_string();
    seed(&seeded, backend, &bobs, &bob, 1_700_000_000_000_000).await;
    // Newest first: (t3, ids[4]), (t3, ids[3]), t2, t1, t0.
    let want: Vec<&str> = [4, 3, 2, 1, 0].iter().map(|&i| ids[i].as_str()).collect();

    // No token, or a bad one: 401 problems.
    for path in ["/api/v1/me/notifications".to_owned(), format!("/api/v1/me/notifications/{}/read", ids[0])] {
        let r = if path.ends_with("/read") { n.http.post(n.url(&path)) } else { n.http.get(n.url(&path)) };
        let resp = r.try_clone().unwrap().send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert_eq!(r.bearer_auth("not-a-token").send().await.unwrap().status(), 401, "{path}");
    }

    // Pages of two, following cursors; a row arriving meanwhile (newer) shifts nothing.
    let (status, first) = n.list(&alice, "?limit=2").await;
    assert_eq!(status, 200, "{first}");
    let page_ids = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    };
    let mut got = page_ids(&first);
    let item = &first["items"][0];
    assert_eq!(item["kind"], "join.confirmed");
    assert!(item["event_id"].is_string() && item["message"].is_string());
    assert_eq!(item["created_at"], "2023-11-14T22:13:23Z");
    assert_eq!(item["read_at"], Value::Null);
    seed(&seeded, backend, &Uuid::now_v7().to_string(), &alice, 1_800_000_000_000_000).await;
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let (status, page) = n.list(&alice, &format!("?limit=2&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page}");
        got.extend(page_ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(got, want, "newest first, each once, unaffected by the newer row");
    assert_eq!(n.all(&alice).await.len(), 6);
    assert_eq!(n.all(&bob).await.len(), 1, "each user sees only their own");

    // Mark read: 204, and again 204; the unread filter drops it; read_at is set.
    let read = |id: &str, user: &str| {
        n.http.post(n.url(&format!("/api/v1/me/notifications/{id}/read"))).bearer_auth(token(user)).send()
    };
    assert_eq!(read(&ids[2], &alice).await.unwrap().status(), 204);
    assert_eq!(read(&ids[2], &alice).await.unwrap().status(), 204, "idempotent");
    let (_, unread) = n.list(&alice, "?unread=true").await;
    let unread_ids = page_ids(&unread);
    assert_eq!(unread_ids.len(), 5);
    assert!(!unread_ids.contains(&ids[2]));
    // Empty values are the parameters left out (`allowEmptyValue` in the OpenAPI document).
    let (status, empty) = n.list(&alice, "?unread=&limit=").await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(page_ids(&empty).len(), 6, "every notification, default page size: {empty}");
    let all = n.all(&alice).await;
    let marked = all.iter().find(|i| i["id"] == ids[2].as_str()).unwrap();
    assert!(marked["read_at"].as_str().unwrap().ends_with('Z'), "{marked}");
    let (_, unread_paged) = n.list(&alice, "?unread=true&limit=4").await;
    assert_eq!(page_ids(&unread_paged).len(), 4);
    let c = unread_paged["next_cursor"].as_str().unwrap();
    let (_, rest) = n.list(&alice, &format!("?unread=true&limit=4&cursor={c}")).await;
    assert_eq!(page_ids(&rest), vec![ids[0].clone()]);
    assert_eq!(rest["next_cursor"], Value::Null);

    // Someone else's, or none at all: 404. Bob's stays unread.
    let resp = read(&bobs, &alice).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(read(&Uuid::now_v7().to_string(), &alice).await.unwrap().status(), 404);
    assert_eq!(n.all(&bob).await[0]["read_at"], Value::Null);

    // The unread count, and "mark all read": the caller's only, idempotent.
    let call = |method: reqwest::Method, path: &str, user: &str| {
        n.http.request(method, n.url(path)).bearer_auth(token(user)).send()
    };
    let json = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let count = "/api/v1/me/notifications/unread-count";
    let all_read = "/api/v1/me/notifications/read-all";
    assert_eq!(json(call(reqwest::Method::GET, count, &alice).await.unwrap()).await, serde_json::json!({"unread": 5}));
    assert_eq!(json(call(reqwest::Method::GET, count, &bob).await.unwrap()).await, serde_json::json!({"unread": 1}));
    assert_eq!(n.http.get(n.url(count)).send().await.unwrap().status(), 401);
    assert_eq!(n.http.post(n.url(all_read)).send().await.unwrap().status(), 401);
    assert_eq!(
        json(call(reqwest::Method::POST, all_read, &alice).await.unwrap()).await,
        serde_json::json!({"marked": 5})
    );
    assert_eq!(
        json(call(reqwest::Method::POST, all_read, &alice).await.unwrap()).await,
        serde_json::json!({"marked": 0})
    );
    assert_eq!(json(call(reqwest::Method::GET, count, &alice).await.unwrap()).await, serde_json::json!({"unread": 0}));
    assert!(n.all(&alice).await.iter().all(|i| i["read_at"].is_string()));
    assert_eq!(
        json(call(reqwest::Method::GET, count, &bob).await.unwrap()).await,
        serde_json::json!({"unread": 1}),
        "Bob's untouched"
    );

    // Bad input: 400 naming the field.
    let bad = read("not-a-uuid", &alice).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["errors"][0]["field"], "id");
    for (q, field) in [
        ("?limit=0", "limit"),
        ("?limit=x", "limit"),
        ("?cursor=zzz", "cursor"),
        ("?unread=maybe", "unread"),
        ("?read=false", "read"),
    ] {
        let (status, body) = n.list(&alice, q).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(body["code"], "invalid_input", "{q}");
        assert_eq!(body["errors"][0]["field"], field, "{q}");
    }

    seeded.close().await;
    // The status page counts on this backend too (nothing promoted or mailed here).
    let figures = n.figures().await;
    assert_eq!(figures.keys().map(String::as_str).collect::<Vec<_>>(), ["mails failed", "mails sent", "promotions"]);
    n.stop().await;
}

cityevents_common::on_every_backend!(api);

// ---------------------------------------------------------------------------------------------
// Consumers (through NATS, so the test can publish to the service's bus)

fn change(user: Uuid, event: Uuid, title: &str, reason: Option<&str>) -> JoinChange {
    JoinChange {
        join_id: Uuid::now_v7(),
        event_id: event,
        user_id: user,
        event_title: title.into(),
        status: "confirmed".into(),
        reason: reason.map(str::to_owned),
        note: None,
        organizer_id: None,
        at: OffsetDateTime::now_utc(),
    }
}

fn envelope<E: Event>(e: &E) -> Envelope {
    Envelope::new("cityevents-test", e).unwrap()
}

async fn consumers(backend: Backend) {
    let namespace = keel::testing::unique_topic("notifier-test");
    let Some(bus) = nats_bus(&namespace).await else { return };
    let Some(db) = database(backend).await else { return };
    let (joins, events) = (JOINS_TOPIC, EVENTS_TOPIC);
    let n = Notifier::start(db, &Broker::Nats { namespace }).await;
    let (user, organizer, event) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

    // Every join.* type for one user, and the organizer's event.canceled.
    let confirmed = envelope(&JoinConfirmed(change(user, event, "Jazz", None)));
    let sent = [
        confirmed.clone(),
        envelope(&JoinWaitlisted(change(user, event, "Jazz", None))),
        envelope(&JoinPromoted(change(user, event, "Jazz", Some("seat_freed")))),
        envelope(&JoinCanceled(change(user, event, "Jazz", None))),
        envelope(&JoinCanceled(JoinChange {
            note: Some(" Storm warning ".into()),
            ..change(user, event, "Jazz", Some("event_canceled"))
        })),
        envelope(&JoinKicked(change(user, event, "Jazz", Some("kicked")))),
        envelope(&JoinCanceled(JoinChange {
            note: Some("Spam listing".into()),
            ..change(user, event, "Jazz", Some("event_unpublished"))
        })),
    ];
    for e in &sent {
        bus.publish(joins, e).await.unwrap();
    }
    let snapshot = EventSnapshot {
        event_id: event,
        organizer_id: organizer,
        title: "Jazz".into(),
        city: "Berlin".into(),
        category: "music".into(),
        starts_at: OffsetDateTime::now_utc(),
        ends_at: OffsetDateTime::now_utc() + time::Duration::hours(2),
        capacity: 10,
        status: "published".into(),
        venue: String::new(),
        time_zone: "UTC".into(),
        version: 2,
        link_tag: String::new(),
    };
    bus.publish(events, &envelope(&EventPublished(snapshot.clone()))).await.unwrap();
    let unpublished = cityevents_common::catalogue::EventUnpublished {
        event: EventSnapshot { status: "draft".into(), version: 3, ..snapshot },
        reason: Some("Spam listing".into()),
    };
    bus.publish(events, &envelope(&unpublished)).await.unwrap();
    let canceled = EventCanceled {
        event_id: event,
        organizer_id: organizer,
        title: "Jazz".into(),
        canceled_at: OffsetDateTime::now_utc(),
        version: 3,
        reason: Some("Storm warning".into()),
    };
    bus.publish(events, &envelope(&canceled)).await.unwrap();

    let mut got: Vec<(String, String)> = n
        .wait_for(&user.to_string(), sent.len())
        .await
        .iter()
        .map(|i| {
            assert_eq!(i["event_id"], event.to_string().as_str());
            (i["kind"].as_str().unwrap().to_owned(), i["message"].as_str().unwrap().to_owned())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("join.canceled", "Jazz was canceled: Storm warning"),
        ("join.canceled", "You left Jazz"),
        ("join.canceled", "Jazz was unpublished: Spam listing"),
        ("join.confirmed", "You're in: Jazz"),
        ("join.kicked", "You were removed from Jazz"),
        ("join.promoted", "A seat opened up: you're in for Jazz"),
        ("join.waitlisted", "You're on the waitlist for Jazz"),
    ]
    .iter()
    .map(|(k, m)| ((*k).to_owned(), (*m).to_owned()))
    .collect();
    want.sort();
    assert_eq!(got, want);
    let org = n.wait_for(&organizer.to_string(), 2).await;
    assert_eq!(org.len(), 2, "event.published is ignored: {org:?}");
    let mut org: Vec<(String, String)> = org
        .iter()
        .map(|i| (i["kind"].as_str().unwrap().to_owned(), i["message"].as_str().unwrap().to_owned()))
        .collect();
    org.sort();
    assert_eq!(
        org,
        [
            ("event.canceled".to_owned(), "Your event Jazz was canceled: Storm warning".to_owned()),
            ("event.unpublished".to_owned(), "Your event Jazz was unpublished: Spam listing".to_owned()),
        ]
    );

    // A reporter hears what the moderators decided: about an event (linked), about an account
    // (the nil id); the topic's audit records are not theirs.
    let reporter = Uuid::now_v7();
    let moderation = cityevents_common::catalogue::MODERATION_TOPIC;
    let record = cityevents_common::catalogue::ModerationRecorded {
        actor: Uuid::now_v7(),
        action: "report.resolve".into(),
        target: format!("user:{reporter}"),
        reason: None,
        details: json!({}),
        at: OffsetDateTime::now_utc(),
    };
    bus.publish(moderation, &envelope(&record)).await.unwrap();
    let resolved =
        |event_id: Option<Uuid>, subject: &str, outcome: &str| cityevents_common::catalogue::ReportResolved {
            report_id: Uuid::now_v7(),
            reporter_id: reporter,
            event_id,
            subject: subject.into(),
            outcome: outcome.into(),
            at: OffsetDateTime::now_utc(),
        };
    bus.publish(moderation, &envelope(&resolved(Some(event), "Jazz", "canceled"))).await.unwrap();
    bus.publish(moderation, &envelope(&resolved(None, "an account", "dismissed"))).await.unwrap();
    let mut told: Vec<(String, String, String)> = n
        .wait_for(&reporter.to_string(), 2)
        .await
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (s("kind"), s("event_id"), s("message"))
        })
        .collect();
    told.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(
        told,
        [
            (
                "report.resolved".to_owned(),
                event.to_string(),
                "Your report about Jazz was reviewed: the event is canceled. Thank you.".to_owned()
            ),
            (
                "report.resolved".to_owned(),
                Uuid::nil().to_string(),
                "Your report about an account was reviewed: the moderators found nothing against the rules. Thank you."
                    .to_owned()
            ),
        ]
    );

    // A second publish of the same envelope is dropped by JetStream's duplicate window; the
    // inbox's part (a redelivery after a lost ack) is proven below on the in-process bus.
    bus.publish(joins, &confirmed).await.unwrap();
    let marker = envelope(&JoinConfirmed(change(user, event, "Blues", None)));
    bus.publish(joins, &marker).await.unwrap();
    n.wait_for(&user.to_string(), sent.len() + 1).await;

    // Poison: an unknown type, a payload of the wrong shape, an unsupported version.
    let poison = [
        Envelope::raw("cityevents-test", "join.exploded", 1, json!({"x": 1})),
        Envelope::raw("cityevents-test", "join.confirmed", 1, json!({"not": "a join"})),
        Envelope::raw(
            "cityevents-test",
            "join.confirmed",
            99,
            serde_json::to_value(change(user, event, "X", None)).unwrap(),
        ),
    ];
    for p in &poison {
        bus.publish(joins, p).await.unwrap();
    }
    let dead = eventually("every poison message in the DLQ", Duration::from_secs(20), || async {
        let dead = bus.dlq_list(joins, 10).await.unwrap();
        (dead.len() >= poison.len()).then_some(dead)
    })
    .await;
    let mut dead_ids: Vec<&str> = dead.iter().map(|d| d.envelope.id.as_str()).collect();
    let mut poison_ids: Vec<&str> = poison.iter().map(|p| p.id.as_str()).collect();
    dead_ids.sort_unstable();
    poison_ids.sort_unstable();
    assert_eq!(dead_ids, poison_ids);
    for d in &dead {
        assert_eq!(d.group, "notifier");
        assert_eq!(d.attempts, 1, "permanent: no retries ({})", d.reason);
        assert!(d.reason.contains("permanent"), "{}", d.reason);
    }
    let all = n.all(&user.to_string()).await;
    assert_eq!(all.len(), sent.len() + 1, "no duplicate, and poison wrote nothing: {all:?}");
    // The promotion is one of the last hour on the status page.
    assert_eq!(n.figures().await["promotions"], (1, 1));

    n.stop().await;
}

/// With several notifier instances one participation's changes can be applied out of order; the
/// feed shows them in the order they happened (`JoinChange::at`), not in the order they arrived.
#[tokio::test]
async fn the_feed_shows_a_participations_changes_in_the_order_they_happened() {
    let namespace = keel::testing::unique_topic("notifier-order");
    let Some(bus) = nats_bus(&namespace).await else { return };
    let Some(db) = database(Backend::Sqlite).await else { return };
    let n = Notifier::start(db, &Broker::Nats { namespace }).await;
    let (user, event) = (Uuid::now_v7(), Uuid::now_v7());
    let t = OffsetDateTime::now_utc();
    let left = JoinChange {
        status: "canceled".into(),
        at: t - time::Duration::seconds(1),
        ..change(user, event, "Jazz", None)
    };
    let back = JoinChange { status: "waitlisted".into(), at: t, ..change(user, event, "Jazz", None) };
    // The later change (a rejoin, waitlisted) is applied first, the earlier one (left) after it.
    bus.publish(JOINS_TOPIC, &envelope(&JoinWaitlisted(back))).await.unwrap();
    n.wait_for(&user.to_string(), 1).await;
    bus.publish(JOINS_TOPIC, &envelope(&JoinCanceled(left))).await.unwrap();
    let feed = n.wait_for(&user.to_string(), 2).await;
    let kinds: Vec<&str> = feed.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["join.waitlisted", "join.canceled"], "newest first, the rejoin on top: {feed:?}");
    n.stop().await;
}

#[tokio::test]
async fn consumers_nats_sqlite() {
    consumers(Backend::Sqlite).await;
}

#[tokio::test]
async fn consumers_nats_postgres() {
    consumers(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// Redelivery: the service's handlers with Keel's inbox, on a bus the test shares

async fn redelivery_is_applied_once(backend: Backend) {
    use std::sync::Arc;

    use keel::events::{Consumer, ConsumerOptions};
    use tokio_util::sync::CancellationToken;

    let Some(test_db) = database(backend).await else { return };
    let db = keel::data::Db::new(
        "notifier-test",
        test_db.url(),
        &keel::data::DatabaseConfig::default(),
        Some(Arc::new(cityevents_notifier::migrations())),
        &keel::telemetry::Metrics::new(),
    )
    .unwrap();
    // Connects and applies the service's migrations (auto_migrate is on by default).
    db.clone().connect_in_background(CancellationToken::new()).await;
    let bus = Bus::in_process(1000);
    let (topic, events_topic) = (JOINS_TOPIC, EVENTS_TOPIC);
    let stop = CancellationToken::new();
    let options = ConsumerOptions::default().retry_backoff(Duration::from_millis(20), Duration::from_millis(100));
    let joins = tokio::spawn(
        Consumer::new(bus.clone(), topic, "notifier", cityevents_notifier::JoinsHandler::new(db.clone()))
            .inbox(db.clone())
            .options(options.clone())
            .run(stop.clone()),
    );
    let events = tokio::spawn(
        Consumer::new(bus.clone(), events_topic, "notifier", cityevents_notifier::EventsHandler::new(db.clone()))
            .inbox(db.clone())
            .options(options)
            .run(stop.clone()),
    );
    let count = |user: Uuid| {
        let db = db.clone();
        async move {
            let sql = db.sql("SELECT COUNT(*) FROM notifications WHERE user_id = $1").into_owned();
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(user.to_string()).fetch_one(db.pool()).await.unwrap();
            n
        }
    };
    let until = |user: Uuid, want: i64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count(user).await < want {
            assert!(tokio::time::Instant::now() < deadline, "{backend}: fewer than {want} notifications");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let (user, event) = (Uuid::now_v7(), Uuid::now_v7());
    let first = envelope(&JoinConfirmed(change(user, event, "Jazz", None)));
    // The consumer subscribes in the background: publish until a delivery happened.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        bus.publish(topic, &first).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(200), until(user, 1)).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the consumer never handled a message");
    }
    // The same message, redelivered several times, then a new one.
    for _ in 0..3 {
        bus.publish(topic, &first).await.unwrap();
    }
    bus.publish(topic, &envelope(&JoinWaitlisted(change(user, event, "Jazz", None)))).await.unwrap();
    until(user, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(user).await, 2, "{backend}: each message applied once");

    // event.canceled for the organizer; event.published ignored; a poison message to the DLQ.
    let organizer = Uuid::now_v7();
    let canceled = EventCanceled {
        event_id: event,
        organizer_id: organizer,
        title: "Jazz".into(),
        canceled_at: OffsetDateTime::now_utc(),
        version: 3,
        reason: None,
    };
    bus.publish(events_topic, &envelope(&canceled)).await.unwrap();
    until(organizer, 1).await;
    let poison = Envelope::raw("cityevents-test", "join.confirmed", 1, json!("garbage"));
    bus.publish(topic, &poison).await.unwrap();
    let dead = eventually(&format!("{backend}: the poison message in the DLQ"), Duration::from_secs(10), || async {
        bus.dlq_list(topic, 10).await.unwrap().into_iter().next()
    })
    .await;
    assert_eq!(dead.envelope.id, poison.id);

    stop.cancel();
    joins.await.unwrap();
    events.await.unwrap();
    db.close().await;
}

cityevents_common::on_every_backend!(redelivery_is_applied_once);

// ---------------------------------------------------------------------------------------------
// A database outage: the notifier's consumers pause instead of dead-lettering

/// The notifier's database (behind a fault proxy: only this test's connections break) refuses
/// connections for three seconds while `join.*` messages arrive. With the notifier's own
/// attempts and a fast retry backoff, a consumer spending attempts on the outage would
/// dead-letter them (as the measured 30-second outage did); it pauses instead, and afterwards
/// every message becomes exactly one notification.
#[tokio::test]
async fn a_database_outage_dead_letters_nothing() {
    use std::sync::Arc;

    use keel::events::{Consumer, ConsumerOptions};
    use keel::health::HealthCheck;
    use keel::testing::{FaultProxy, Mode};
    use tokio_util::sync::CancellationToken;

    let Some(test_db) = database(Backend::Postgres).await else { return };
    let target = keel::testing::host_port(test_db.url()).unwrap();
    let proxy = FaultProxy::start(target, Mode::Forward).await.unwrap();
    let url = test_db.url().replacen(&target.to_string(), &proxy.host_port(), 1);
    let mut cfg = keel::data::DatabaseConfig::default();
    cfg.pool.acquire_timeout = Duration::from_secs(1);
    let db = keel::data::Db::new(
        "notifier-test",
        &url,
        &cfg,
        Some(Arc::new(cityevents_notifier::migrations())),
        &keel::telemetry::Metrics::new(),
    )
    .unwrap();
    db.clone().connect_in_background(CancellationToken::new()).await;
    let stop = CancellationToken::new();
    // The service's health loop: its database check marks the database down and up again.
    let health = {
        let (check, stop) = (db.readiness_check(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = check.check().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let bus = Bus::in_process(1000);
    let config = cityevents_notifier::NotifierConfig::default();
    let options = ConsumerOptions::default()
        .concurrency(config.concurrency)
        .max_attempts(config.max_attempts)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100));
    let consumer = tokio::spawn(
        Consumer::new(bus.clone(), JOINS_TOPIC, "notifier", cityevents_notifier::JoinsHandler::new(db.clone()))
            .inbox(db.clone())
            .options(options)
            .run(stop.clone()),
    );
    let user = Uuid::now_v7();
    let count = || {
        let db = db.clone();
        async move {
            let sql = db.sql("SELECT COUNT(*) FROM notifications WHERE user_id = $1").into_owned();
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(user.to_string()).fetch_one(db.pool()).await
        }
    };
    let first = envelope(&JoinConfirmed(change(user, Uuid::now_v7(), "Jazz", None)));
    bus.publish(JOINS_TOPIC, &first).await.unwrap();
    eventually("the first notification", Duration::from_secs(10), || async {
        (count().await.ok()? == 1).then_some(())
    })
    .await;

    proxy.take_down();
    for _ in 0..20 {
        let e = envelope(&JoinPromoted(change(user, Uuid::now_v7(), "Jazz", None)));
        bus.publish(JOINS_TOPIC, &e).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bus.dlq_list(JOINS_TOPIC, 10).await.unwrap().is_empty(), "nothing dead-lettered during the outage");

    proxy.restore();
    eventually("every notification", Duration::from_secs(20), || async { (count().await.ok()? == 21).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await.unwrap(), 21, "each message notified exactly once");
    assert!(bus.dlq_list(JOINS_TOPIC, 10).await.unwrap().is_empty(), "nothing dead-lettered");
    stop.cancel();
    consumer.await.unwrap();
    health.await.unwrap();
}

#[test]
fn the_binary_answers_version_and_exits_78_on_a_bad_config() {
    cityevents_common::testing::check_binary_cli(env!("CARGO_BIN_EXE_cityevents-notifier"), "cityevents-notifier");
}

// ---------------------------------------------------------------------------------------------
// Around an event: changes of time or place for its participants, a digest for its organizer

async fn participants_hear_of_moves_and_organizers_get_digests(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let url = format!("memory://notifier-activity-{}", Uuid::now_v7().simple());
    // One message at a time: the digest then holds exactly what was published before it is due
    // (concurrent first counts of one event retry one of them, which may land in the next digest).
    let settings = [("BUS__URL", url.as_str()), ("APP__DIGEST_INTERVAL", "1s"), ("APP__CONCURRENCY", "1")];
    let n = Notifier::start_with(db, &Broker::InProcess, &settings).await;
    let bus = Bus::new(&{
        let mut cfg = keel::events::BusConfig::default();
        cfg.url = Some(keel::config::Secret::new(url.clone()));
        cfg
    })
    .unwrap();
    bus.connect().await.unwrap();
    let (organizer, event) = (Uuid::now_v7(), Uuid::now_v7());
    let (stays, waits, leaves) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let at = |t: &str| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    let mut snapshot = EventSnapshot {
        event_id: event,
        organizer_id: organizer,
        title: "Fado night".into(),
        city: "Lisbon".into(),
        category: "music".into(),
        starts_at: at("2031-07-01T20:00:00Z"),
        ends_at: at("2031-07-01T22:00:00Z"),
        capacity: 2,
        status: "published".into(),
        venue: "Tasca do Chico".into(),
        time_zone: "Europe/Lisbon".into(),
        version: 2,
        link_tag: String::new(),
    };
    bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(snapshot.clone()))).await.unwrap();
    let with = |user: Uuid, status: &str, reason: Option<&str>| JoinChange {
        status: status.into(),
        ..change(user, event, "Fado night", reason)
    };
    for e in [
        envelope(&JoinConfirmed(with(stays, "confirmed", None))),
        envelope(&JoinConfirmed(with(leaves, "confirmed", None))),
        envelope(&JoinWaitlisted(with(waits, "waitlisted", None))),
        envelope(&JoinCanceled(with(leaves, "canceled", None))),
    ] {
        bus.publish(JOINS_TOPIC, &e).await.unwrap();
    }
    n.wait_for(&leaves.to_string(), 2).await;
    n.wait_for(&waits.to_string(), 1).await;

    // The organizer: one digest for all of it, once the interval has passed.
    let digest = n.wait_for(&organizer.to_string(), 1).await;
    assert_eq!(
        (digest[0]["kind"].as_str(), digest[0]["message"].as_str()),
        (Some("event.activity"), Some("Fado night: 3 people joined, 1 participant left"))
    );
    assert_eq!(digest[0]["event_id"], event.to_string());

    // An event the notifier never heard published: the joins carry its organizer.
    let (org2, event2) = (Uuid::now_v7(), Uuid::now_v7());
    let carried = JoinChange { organizer_id: Some(org2), ..change(Uuid::now_v7(), event2, "Quiz night", None) };
    bus.publish(JOINS_TOPIC, &envelope(&JoinConfirmed(carried))).await.unwrap();
    let digest = n.wait_for(&org2.to_string(), 1).await;
    assert_eq!(digest[0]["message"], "Quiz night: 1 person joined");

    // Moved an hour later: those still in (seated or waiting) are told, in Lisbon time.
    snapshot.version = 3;
    snapshot.starts_at = at("2031-07-01T21:00:00Z");
    snapshot.ends_at = at("2031-07-01T23:00:00Z");
    bus.publish(EVENTS_TOPIC, &envelope(&cityevents_common::catalogue::EventUpdated(snapshot.clone()))).await.unwrap();
    let told = n.wait_for(&stays.to_string(), 2).await;
    let moved = told.iter().find(|i| i["kind"] == "event.changed").unwrap();
    assert_eq!(moved["message"], "Fado night changed: now 2031-07-01 22:00 to 2031-07-02 00:00 (Europe/Lisbon)");
    n.wait_for(&waits.to_string(), 2).await;
    // A new venue too; a new title alone, or an older snapshot arriving late, tells no one.
    snapshot.version = 4;
    snapshot.venue = "Clube de Fado".into();
    bus.publish(EVENTS_TOPIC, &envelope(&cityevents_common::catalogue::EventUpdated(snapshot.clone()))).await.unwrap();
    let told = n.wait_for(&stays.to_string(), 3).await;
    assert!(told.iter().any(|i| i["message"] == "Fado night changed: at Clube de Fado"), "{told:?}");
    // Online now (the link's fingerprint changed; the link itself is not on the bus): told too.
    snapshot.version = 5;
    snapshot.link_tag = "a1b2c3d4e5f60718".into();
    bus.publish(EVENTS_TOPIC, &envelope(&cityevents_common::catalogue::EventUpdated(snapshot.clone()))).await.unwrap();
    let told = n.wait_for(&stays.to_string(), 4).await;
    let online = "Fado night changed: now online: the join link is on its page";
    assert!(told.iter().any(|i| i["message"] == online), "{told:?}");
    let mut renamed = snapshot.clone();
    renamed.version = 6;
    renamed.title = "Fado nights".into();
    bus.publish(EVENTS_TOPIC, &envelope(&cityevents_common::catalogue::EventUpdated(renamed))).await.unwrap();
    let mut stale = snapshot.clone();
    stale.version = 3;
    stale.venue = "Somewhere old".into();
    bus.publish(EVENTS_TOPIC, &envelope(&cityevents_common::catalogue::EventUpdated(stale))).await.unwrap();
    // A marker after them: once it is handled, they were too.
    bus.publish(JOINS_TOPIC, &envelope(&JoinConfirmed(change(Uuid::now_v7(), Uuid::now_v7(), "x", None))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(n.all(&stays.to_string()).await.len(), 4, "no more for a title or a stale snapshot");
    assert_eq!(n.all(&leaves.to_string()).await.len(), 2, "who left hears nothing of the changes");
    n.stop().await;
}
cityevents_common::on_every_backend!(participants_hear_of_moves_and_organizers_get_digests);

// ---------------------------------------------------------------------------------------------
// Followers

async fn followers_hear_of_new_events_once_by_app_and_mail(backend: Backend) {
    use cityevents_common::catalogue::{ACCOUNTS_TOPIC, AccountContact};
    let Some(db) = database(backend).await else { return };
    let url = format!("memory://notifier-follows-{}", Uuid::now_v7().simple());
    let n = Notifier::start_with(db, &Broker::InProcess, &[("BUS__URL", url.as_str())]).await;
    let bus = Bus::new(&{
        let mut cfg = keel::events::BusConfig::default();
        cfg.url = Some(keel::config::Secret::new(url.clone()));
        cfg
    })
    .unwrap();
    bus.connect().await.unwrap();
    let (organizer, fan, quiet, stranger) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (user, name) in [(organizer, "Olive"), (fan, "Fay"), (quiet, "Quinn")] {
        let c = AccountContact {
            user_id: user,
            email: format!("{}@example.com", name.to_lowercase()),
            name: name.into(),
            verified: true,
            version: None,
        };
        bus.publish(ACCOUNTS_TOPIC, &envelope(&c)).await.unwrap();
    }
    let at = |t: &str| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    let snapshot = |title: &str| EventSnapshot {
        event_id: Uuid::now_v7(),
        organizer_id: organizer,
        title: title.into(),
        city: "Lisbon".into(),
        category: "music".into(),
        starts_at: at("2031-06-20T20:00:00Z"),
        ends_at: at("2031-06-20T22:00:00Z"),
        capacity: 10,
        status: "published".into(),
        venue: "Terraço".into(),
        time_zone: "Europe/Lisbon".into(),
        version: 2,
        link_tag: String::new(),
    };
    let follow_url = |who: Uuid| n.url(&format!("/api/v1/organizers/{who}/follow"));
    let put = |user: Uuid, who: Uuid| {
        let req = n.http.put(follow_url(who)).bearer_auth(token(&user.to_string()));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Nobody follows someone who has published nothing, nor themselves.
    let (status, body) = put(fan, organizer).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("organizer_not_found")), "{body}");
    let first = snapshot("Warm-up");
    bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(first.clone()))).await.unwrap();
    let followed = eventually("the organizer is known", Duration::from_secs(20), || async {
        let (status, body) = put(fan, organizer).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(followed["organizer_id"], organizer.to_string());
    let (status, again) = put(fan, organizer).await;
    assert_eq!((status, &again["since"]), (200, &followed["since"]), "a repeat answers the follow there is");
    assert_eq!(put(quiet, organizer).await.0, 200);
    let (status, body) = put(organizer, organizer).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("cannot_follow_self")), "{body}");
    assert_eq!(n.http.put(follow_url(organizer)).send().await.unwrap().status(), 401);
    let count: Value = n
        .http
        .get(n.url(&format!("/api/v1/organizers/{organizer}/followers")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["followers"], 2, "public: {count}");
    let mine = n.http.get(follow_url(organizer)).bearer_auth(token(&stranger.to_string())).send().await.unwrap();
    assert_eq!(mine.status(), 404, "a stranger does not follow");
    let listed: Value = n
        .http
        .get(n.url("/api/v1/me/following"))
        .bearer_auth(token(&fan.to_string()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["organizer_id"], organizer.to_string(), "{listed}");
    // Quinn hears in the app only.
    assert_eq!(n.preferences(&quiet.to_string(), Some(json!({"followed_published": false}))).await.0, 200);

    // A new event: both followers are told once, in Lisbon time, with the organizer's name.
    let jazz = snapshot("Rooftop jazz");
    bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(jazz.clone()))).await.unwrap();
    let told = n.wait_for(&fan.to_string(), 1).await;
    assert_eq!(told[0]["kind"], "event.followed");
    assert_eq!(told[0]["message"], "New from Olive: Rooftop jazz, 2031-06-20 21:00 (Europe/Lisbon)");
    assert_eq!(told[0]["event_id"], jazz.event_id.to_string());
    n.wait_for(&quiet.to_string(), 1).await;
    let mail = eventually("Fay's mail", Duration::from_secs(20), || async {
        n.mail_files().into_iter().find(|m| m.contains("fay@example.com") && m.contains("New from Olive"))
    })
    .await;
    assert!(mail.contains("Rooftop jazz"), "{mail}");
    // A republication, a redelivery and an update tell no one again; after unfollowing, nothing.
    let mut again = jazz.clone();
    again.version = 4;
    bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(again))).await.unwrap();
    let resp = n.http.delete(follow_url(organizer)).bearer_auth(token(&quiet.to_string())).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let quiz = snapshot("Quiz night");
    bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(quiz))).await.unwrap();
    n.wait_for(&fan.to_string(), 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fan_told = n.all(&fan.to_string()).await;
    assert_eq!(fan_told.len(), 2, "once per new event: {fan_told:?}");
    assert_eq!(n.all(&quiet.to_string()).await.len(), 1, "unfollowed: nothing more");
    assert!(!n.mail_files().iter().any(|m| m.contains("quinn@example.com")), "Quinn turned that mail off");
    n.stop().await;
}
cityevents_common::on_every_backend!(followers_hear_of_new_events_once_by_app_and_mail);

// ---------------------------------------------------------------------------------------------
// Reminders

/// Reminders 24 h and 1 h before, to who holds a seat, exactly once with two instances racing
/// for them and a third started after one stops; none for a waitlisted person, one who left, or
/// a canceled event; an event moved into the window is reminded of at its new time.
async fn reminders_go_out_once_with_two_instances_and_a_restart(backend: Backend) {
    use cityevents_common::catalogue::{ACCOUNTS_TOPIC, AccountContact, EventUpdated};
    let Some(db) = database(backend).await else { return };
    let url = format!("memory://notifier-reminders-{}", Uuid::now_v7().simple());
    // One message at a time: events and joins are applied in the order published.
    let settings = [("BUS__URL", url.as_str()), ("APP__CONCURRENCY", "1"), ("APP__REMINDERS__CHECK_EVERY", "1s")];
    let a = Notifier::start_with(db, &Broker::InProcess, &settings).await;
    let b = a.replica(&Broker::InProcess, &settings).await;
    let bus = Bus::new(&{
        let mut cfg = keel::events::BusConfig::default();
        cfg.url = Some(keel::config::Secret::new(url.clone()));
        cfg
    })
    .unwrap();
    bus.connect().await.unwrap();
    let [seated, also, waits, leaves, late, moves, organizer] = std::array::from_fn(|_| Uuid::now_v7());
    let contact = AccountContact {
        user_id: seated,
        email: "sam@example.com".into(),
        name: "Sam".into(),
        verified: true,
        version: None,
    };
    bus.publish(ACCOUNTS_TOPIC, &envelope(&contact)).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let snapshot = |title: &str, starts_in: time::Duration| EventSnapshot {
        event_id: Uuid::now_v7(),
        organizer_id: organizer,
        title: title.into(),
        city: "Lisbon".into(),
        category: "music".into(),
        starts_at: now + starts_in,
        ends_at: now + starts_in + time::Duration::hours(2),
        capacity: 10,
        status: "published".into(),
        venue: "Tasca do Chico".into(),
        time_zone: "Europe/Lisbon".into(),
        version: 1,
        link_tag: String::new(),
    };
    let soon = snapshot("Soon", time::Duration::minutes(59));
    let tomorrow = snapshot("Tomorrow", time::Duration::hours(23) + time::Duration::minutes(30));
    let called_off = snapshot("Called off", time::Duration::hours(3));
    let mut moved = snapshot("Moved", time::Duration::hours(3));
    // Joined two days ago (a reminder goes to who held a seat before its time).
    let join = |user: Uuid, e: &EventSnapshot, status: &str| JoinChange {
        status: status.into(),
        organizer_id: Some(organizer),
        at: now - time::Duration::days(2),
        ..change(user, e.event_id, &e.title, None)
    };
    // The joins first, the events after: nothing is due before everyone's place is known.
    for (e, expect) in [
        (envelope(&JoinConfirmed(join(seated, &soon, "confirmed"))), (seated, 1)),
        (envelope(&JoinConfirmed(join(seated, &tomorrow, "confirmed"))), (seated, 2)),
        (envelope(&JoinConfirmed(join(also, &soon, "confirmed"))), (also, 1)),
        (envelope(&JoinWaitlisted(join(waits, &soon, "waitlisted"))), (waits, 1)),
        (envelope(&JoinConfirmed(join(leaves, &soon, "confirmed"))), (leaves, 1)),
        (
            envelope(&JoinCanceled(JoinChange {
                at: now - time::Duration::days(1),
                ..join(leaves, &soon, "canceled")
            })),
            (leaves, 2),
        ),
        (envelope(&JoinConfirmed(join(moves, &moved, "confirmed"))), (moves, 1)),
    ] {
        bus.publish(JOINS_TOPIC, &e).await.unwrap();
        a.wait_for(&expect.0.to_string(), expect.1).await;
    }
    // Called off while three hours away, then (a later version, still canceled) moved close:
    // its participant joins after, and hears nothing.
    bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(called_off.clone()))).await.unwrap();
    let cancel = EventCanceled {
        event_id: called_off.event_id,
        organizer_id: organizer,
        title: called_off.title.clone(),
        canceled_at: now,
        version: 2,
        reason: None,
    };
    bus.publish(EVENTS_TOPIC, &envelope(&cancel)).await.unwrap();
    a.wait_for(&organizer.to_string(), 1).await;
    let close = EventSnapshot {
        version: 3,
        status: "canceled".into(),
        starts_at: now + time::Duration::minutes(30),
        ends_at: now + time::Duration::minutes(90),
        ..called_off.clone()
    };
    bus.publish(EVENTS_TOPIC, &envelope(&EventUpdated(close))).await.unwrap();
    bus.publish(JOINS_TOPIC, &envelope(&JoinConfirmed(join(late, &called_off, "confirmed")))).await.unwrap();
    a.wait_for(&late.to_string(), 1).await;
    for e in [&soon, &tomorrow, &moved] {
        bus.publish(EVENTS_TOPIC, &envelope(&EventPublished(e.clone()))).await.unwrap();
    }
    let reminders = |all: Vec<Value>| -> Vec<String> {
        all.iter()
            .filter(|i| i["kind"] == "event.reminder")
            .map(|i| i["message"].as_str().unwrap().to_owned())
            .collect()
    };
    eventually("Sam's two reminders", Duration::from_secs(20), || async {
        (reminders(a.all(&seated.to_string()).await).len() >= 2).then_some(())
    })
    .await;
    a.wait_for(&also.to_string(), 2).await;
    // Three hours away (known only now): the day's reminder, saying how soon it really is.
    // Moved to 40 minutes from now: told of the move and reminded again, for the new time.
    eventually("the moved event's first reminder", Duration::from_secs(20), || async {
        (reminders(a.all(&moves.to_string()).await) == ["Soon: Moved starts in 3 hours"]).then_some(())
    })
    .await;
    moved.version = 2;
    moved.starts_at = now + time::Duration::minutes(40);
    moved.ends_at = now + time::Duration::minutes(100);
    bus.publish(EVENTS_TOPIC, &envelope(&EventUpdated(moved.clone()))).await.unwrap();
    eventually("the moved event's reminder", Duration::from_secs(20), || async {
        (reminders(a.all(&moves.to_string()).await).len() == 2).then_some(())
    })
    .await;

    // A restart: one instance stops, another starts; both rounds go on for a while.
    let mail = b.mail_files();
    b.stop().await;
    let c = a.replica(&Broker::InProcess, &settings).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut sam = reminders(a.all(&seated.to_string()).await);
    sam.sort();
    assert_eq!(sam, ["Soon: Soon starts in 1 hour", "Soon: Tomorrow starts in 1 day"], "exactly once each");
    assert_eq!(reminders(a.all(&also.to_string()).await), ["Soon: Soon starts in 1 hour"]);
    let mut moved_told = reminders(a.all(&moves.to_string()).await);
    moved_told.sort();
    assert_eq!(moved_told, ["Soon: Moved starts in 3 hours", "Soon: Moved starts in 40 minutes"]);
    assert!(a.all(&moves.to_string()).await.iter().any(|i| i["kind"] == "event.changed"), "told of the move");
    for (who, what) in [(waits, "waits for a seat"), (leaves, "left"), (late, "joined a canceled event")] {
        assert!(reminders(a.all(&who.to_string()).await).is_empty(), "no reminder for one who {what}");
    }
    // Sam's mail: one per reminder, with when and where, whichever instance sent it.
    let sam_mail = eventually("Sam's reminder mail", Duration::from_secs(20), || async {
        let mut all = mail.clone();
        all.extend(a.mail_files());
        all.extend(c.mail_files());
        let found: Vec<String> =
            all.into_iter().filter(|m| m.contains("sam@example.com") && m.contains("Subject: Soon:")).collect();
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert_eq!(sam_mail.len(), 2, "one mail per reminder");
    let hour = sam_mail.iter().find(|m| m.contains("Subject: Soon: Soon starts in 1 hour")).unwrap();
    assert!(hour.contains("Tasca do Chico, Lisbon") && hour.contains("(Europe/Lisbon)"), "{hour}");
    c.stop().await;
    a.stop().await;
}
cityevents_common::on_every_backend!(reminders_go_out_once_with_two_instances_and_a_restart);
