//! What the outbox sends: `event.published`, `event.updated` (only for a published event that
//! changed) and `event.canceled` (only for a published event), with full payloads, keyed by
//! event id, carrying the request id; nothing for drafts. Also: the events reach a NATS
//! consumer, and the migrations carry Keel's outbox schema verbatim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cityevents_common::catalogue::{EVENTS_TOPIC, EventCanceled, EventPublished, EventUpdated};
use cityevents_common::testing::eventually;
use common::{Svc, id};
use futures_util::future::join_all;
use keel::data::Backend;
use keel::events::consumer::handler_fn;
use keel::events::{Bus, Consumer, Envelope};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

cityevents_common::on_every_backend!(the_outbox_emits_exactly_the_right_events, concurrent_changes_have_one_winner);

fn time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

/// Checks a snapshot against the event's JSON.
fn same_snapshot(snap: &cityevents_common::catalogue::EventSnapshot, e: &Value) {
    assert_eq!(snap.event_id.to_string(), id(e));
    assert_eq!(snap.organizer_id.to_string(), e["organizer_id"].as_str().unwrap());
    assert_eq!(snap.title, e["title"].as_str().unwrap());
    assert_eq!(snap.city, e["city"].as_str().unwrap());
    assert_eq!(snap.category, e["category"].as_str().unwrap());
    assert_eq!(snap.starts_at, time(&e["starts_at"]));
    assert_eq!(snap.ends_at, time(&e["ends_at"]));
    assert_eq!(u64::from(snap.capacity), e["capacity"].as_u64().unwrap());
    assert_eq!(snap.status, e["status"].as_str().unwrap());
}

async fn the_outbox_emits_exactly_the_right_events(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, admin) = (Uuid::now_v7(), Uuid::now_v7());
    let (ta, tadmin) = (s.token(alice, "user"), s.token(admin, "admin"));

    // A draft's life is private: creating, editing and canceling it announce nothing.
    let quiet = s.create(&ta, json!({})).await;
    let qpath = format!("/api/v1/events/{}", id(&quiet));
    assert_eq!(s.patch(&qpath, Some(&ta), json!({"capacity": 5})).await.0, StatusCode::OK);
    assert_eq!(s.post_empty(&format!("{qpath}/cancel"), Some(&ta)).await.0, StatusCode::OK);

    // A draft edited, then published (with a request id), updated, no-op updated, canceled.
    let e = s.create(&ta, json!({"title": "Jazz", "capacity": 10})).await;
    let eid = id(&e);
    let path = format!("/api/v1/events/{eid}");
    assert_eq!(s.patch(&path, Some(&ta), json!({"title": "Jazz night"})).await.0, StatusCode::OK);
    let (status, published, _) =
        s.send(Method::POST, &format!("{path}/publish"), Some(&ta), None, &[("x-request-id", "req-publish-1")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, updated) =
        s.patch(&path, Some(&ta), json!({"capacity": 25, "city": "Paris", "venue": "Le Baiser Salé"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.patch(&path, Some(&ta), json!({"capacity": 25})).await.0, StatusCode::OK);
    // Refused changes announce nothing either.
    assert_eq!(s.patch(&path, Some(&ta), json!({"capacity": -1})).await.0, StatusCode::BAD_REQUEST);
    let (status, canceled) =
        s.post(&format!("{path}/cancel"), Some(&ta), json!({"reason": "  The band is ill "})).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status_reason"], "The band is ill");
    assert_eq!(s.post_empty(&format!("{path}/cancel"), Some(&ta)).await.0, StatusCode::CONFLICT);

    // One unpublished by a moderator, with the reason.
    let taken_down = s.create_published(&ta, json!({})).await;
    let tm = s.token(Uuid::now_v7(), "moderator");
    let (status, _) =
        s.post(&format!("/api/v1/events/{}/unpublish", id(&taken_down)), Some(&tm), json!({"reason": "Spam"})).await;
    assert_eq!(status, StatusCode::OK);
    let got = s.seen.wait_for(&id(&taken_down), 2).await;
    assert_eq!(got.iter().map(|e| e.ty.as_str()).collect::<Vec<_>>(), ["event.published", "event.unpublished"]);
    let u: cityevents_common::catalogue::EventUnpublished = got[1].decode().unwrap();
    assert_eq!((u.event.status.as_str(), u.reason.as_deref()), ("draft", Some("Spam")));
    assert_eq!(u.event.event_id.to_string(), id(&taken_down));

    // Another one, canceled by an admin.
    let other = s.create_published(&ta, json!({})).await;
    let (status, _) =
        s.post(&format!("/api/v1/events/{}/cancel", id(&other)), Some(&tadmin), json!({"reason": "Duplicate"})).await;
    assert_eq!(status, StatusCode::OK);

    let got = s.seen.wait_for(&eid, 3).await;
    let types: Vec<&str> = got.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(types, ["event.published", "event.updated", "event.canceled"], "in order, per event");
    for env in &got {
        assert_eq!(env.source, "cityevents-events");
        assert_eq!(env.key.as_deref(), Some(eid.as_str()));
        assert_eq!(env.version, 1);
    }
    assert_eq!(got[0].request_id.as_deref(), Some("req-publish-1"), "the request id travels with the event");
    let p: EventPublished = got[0].decode().unwrap();
    same_snapshot(&p.0, &published);
    assert_eq!(p.0.status, "published");
    assert_eq!(p.0.title, "Jazz night");
    let u: EventUpdated = got[1].decode().unwrap();
    same_snapshot(&u.0, &updated);
    assert_eq!(
        (u.0.capacity, u.0.city.as_str(), u.0.venue.as_str()),
        (25, "Paris", "Le Baiser Salé"),
        "the full new state"
    );
    assert_eq!(u.0.time_zone, "UTC");
    let c: EventCanceled = got[2].decode().unwrap();
    assert_eq!(c.event_id.to_string(), eid);
    assert_eq!(c.organizer_id, alice);
    assert_eq!(c.title, "Jazz night");
    assert_eq!(c.canceled_at, time(&canceled["updated_at"]));
    assert_eq!(c.reason.as_deref(), Some("The band is ill"), "the reason travels to the participants");

    let got = s.seen.wait_for(&id(&other), 2).await;
    let types: Vec<&str> = got.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(types, ["event.published", "event.canceled"]);
    let c: EventCanceled = got[1].decode().unwrap();
    assert_eq!(c.organizer_id, alice, "the organizer, not the admin who canceled");
    assert_eq!(c.reason.as_deref(), Some("Duplicate"));

    // Give stragglers a moment: still exactly these seven, none about the quiet draft.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.seen.about(&id(&quiet)), Vec::<Envelope>::new());
    assert_eq!(s.seen.all().len(), 7, "{:?}", s.seen.all().iter().map(|e| &e.ty).collect::<Vec<_>>());
    s.stop().await;
}

async fn concurrent_changes_have_one_winner(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let t = s.token(Uuid::now_v7(), "user");
    let e = s.create(&t, json!({})).await;
    let path = format!("/api/v1/events/{}", id(&e));

    // Six publishes at once: one wins, the rest find it already published.
    let publish = format!("{path}/publish");
    let results = join_all((0..6).map(|_| s.post_empty(&publish, Some(&t)))).await;
    let ok = results.iter().filter(|(status, _)| *status == StatusCode::OK).count();
    assert_eq!(ok, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(status, _)| *status != StatusCode::OK) {
        common::assert_conflict(*status, body, "not_publishable");
    }
    // Concurrent updates each apply (optimistic retries), each announced once.
    let results = join_all((1..=4).map(|n| s.patch(&path, Some(&t), json!({ "capacity": n * 10 })))).await;
    assert!(results.iter().all(|(status, _)| *status == StatusCode::OK), "{results:?}");
    let got = s.seen.wait_for(&id(&e), 5).await;
    let types: Vec<&str> = got.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(types, ["event.published", "event.updated", "event.updated", "event.updated", "event.updated"]);
    let (_, last) = s.get(&path, None).await;
    let u: EventUpdated = got[4].decode().unwrap();
    assert_eq!(u64::from(u.0.capacity), last["capacity"].as_u64().unwrap(), "the last event is the final state");
    s.stop().await;
}

/// On NATS JetStream, a consumer group on `cityevents.events` gets what the service publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_reach_a_nats_consumer() {
    let url = keel::testing::nats_url();
    if !keel::testing::require("NATS", &url) {
        return;
    }
    let db = common::database(Backend::Sqlite).await.unwrap();
    let s = Svc::start_with(db, &[("BUS__BACKEND", "nats"), ("BUS__URL", url.as_str())]).await;

    let mut cfg = keel::events::BusConfig::default();
    cfg.backend = keel::events::BusBackend::Nats;
    cfg.url = Some(keel::Secret::new(url.clone()));
    let bus = Bus::new(&cfg).unwrap();
    bus.connect().await.unwrap();
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let sink = seen.clone();
    let group = format!("events-test-{}", Uuid::now_v7().simple());
    let consumer = Consumer::new(
        bus.clone(),
        EVENTS_TOPIC,
        group,
        handler_fn(move |env: Envelope| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(env);
                Ok(())
            }
        }),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));

    let t = s.token(Uuid::now_v7(), "user");
    let e = s.create_published(&t, json!({"title": "Over NATS"})).await;
    let eid = id(&e);
    let env = eventually("event.published to reach the NATS consumer", Duration::from_secs(30), || async {
        seen.lock().unwrap().iter().find(|env| env.key.as_deref() == Some(eid.as_str())).cloned()
    })
    .await;
    let p: EventPublished = env.decode().unwrap();
    same_snapshot(&p.0, &e);
    assert_eq!(p.0.title, "Over NATS");
    stop.cancel();
    task.await.unwrap();
    bus.close().await;
    s.stop().await;
}
