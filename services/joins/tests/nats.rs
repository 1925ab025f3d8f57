//! The service's own wiring end to end over NATS JetStream: its consumer (group `joins`, with the
//! inbox) takes `event.published` from the broker, and its outbox relay publishes `join.*` to the
//! broker. Topics are unique per run (`app.events_topic`, `app.joins_topic`) so runs never share
//! streams. Skips when NATS is not running, except under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cityevents_common::catalogue::{EventPublished, JoinConfirmed};
use cityevents_common::testing::eventually;
use common::{Svc, key, snapshot};
use keel::config::Secret;
use keel::data::Backend;
use keel::events::{Bus, Envelope, SubscribeOptions};
use keel::events::{BusBackend, BusConfig};
use keel::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_in_and_joins_out_through_nats() {
    if !testing::require("NATS", &testing::nats_url()) {
        return;
    }
    let (events_topic, joins_topic) =
        (testing::unique_topic("cityevents_events"), testing::unique_topic("cityevents_joins"));
    let nats = testing::nats_url();
    let env = [
        ("BUS__BACKEND", "nats"),
        ("BUS__URL", nats.as_str()),
        ("APP__EVENTS_TOPIC", events_topic.as_str()),
        ("APP__JOINS_TOPIC", joins_topic.as_str()),
    ];
    let Some(svc) = Svc::start_with(Backend::Sqlite, &env).await else { return };

    let mut cfg = BusConfig::default();
    cfg.backend = BusBackend::Nats;
    cfg.url = Some(Secret::new(nats.clone()));
    let bus = Bus::new(&cfg).unwrap();
    bus.connect().await.unwrap();
    let mut probe = bus.subscribe(&joins_topic, "probe", &SubscribeOptions::default()).await.unwrap();

    let ev = snapshot(svc.user().id, 3);
    bus.publish(&events_topic, &Envelope::new("cityevents-events", &EventPublished(ev.clone())).unwrap())
        .await
        .unwrap();
    eventually("the service's consumer to open the event", Duration::from_secs(20), || async {
        (svc.get(None, &format!("/api/v1/events/{}/counts", ev.event_id)).await.0 == 200).then_some(())
    })
    .await;

    let user = svc.user();
    let (s, body) = svc.join(&user, ev.event_id, &key()).await;
    assert_eq!(s, 201, "{body}");
    let delivery =
        tokio::time::timeout(Duration::from_secs(20), probe.next()).await.expect("join.* on NATS").unwrap().unwrap();
    let change = delivery.envelope().unwrap().decode::<JoinConfirmed>().unwrap().0;
    assert_eq!((change.event_id, change.user_id, change.status.as_str()), (ev.event_id, user.id, "confirmed"));
    delivery.ack().await.unwrap();
    bus.close().await;
    svc.stop().await;
}
