//! Reports to the moderators: members report events and accounts (bounded per reporter and per
//! target, never their own), moderators see one queue ordered by how reported and how long
//! waiting, with the event's context, and resolve a target's reports at once: the audit log
//! hears of it and every reporter is told, in the same transaction, exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Svc, id};
use keel::data::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

cityevents_common::on_every_backend!(reports_reach_the_queue_and_reporters_hear_the_outcome);

fn report(kind: &str, target: &str, reason: &str) -> Value {
    json!({ "kind": kind, "target_id": target, "reason": reason })
}

async fn reports_reach_the_queue_and_reporters_hear_the_outcome(backend: Backend) {
    let settings = [("APP__REPORTS__PER_REPORTER_PER_HOUR", "4"), ("APP__REPORTS__MAX_OPEN_PER_TARGET", "3")];
    let Some(s) = Svc::start_tapped(backend, &settings).await else { return };
    let organizer = Uuid::now_v7();
    let org = s.token(organizer, "user");
    let event = s.create_published(&org, json!({ "title": "Totally real concert" })).await;
    let event_id = id(&event);
    let other = id(&s.create_published(&org, json!({ "title": "Another one" })).await);
    let people: Vec<(Uuid, String)> = (0..5).map(|_| Uuid::now_v7()).map(|u| (u, s.token(u, "user"))).collect();
    let (ann, ann_token) = &people[0];

    // Bad input and the rules.
    let (st, _) = s.post("/api/v1/reports", None, report("event", &event_id, "scam")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = s.post("/api/v1/reports", Some(ann_token), report("event", &event_id, "other")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "`other` needs details: {body}");
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("event", &event_id, "boring")).await;
    assert!(st.is_client_error(), "an unknown reason");
    let mut long = report("event", &event_id, "scam");
    long["details"] = json!("x".repeat(1001));
    assert_eq!(s.post("/api/v1/reports", Some(ann_token), long).await.0, StatusCode::BAD_REQUEST);
    let (st, body) = s.post("/api/v1/reports", Some(&org), report("event", &event_id, "spam")).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("own_content")), "{body}");
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("user", &ann.to_string(), "spam")).await;
    assert_eq!(st, StatusCode::CONFLICT, "nobody reports themselves");
    let (st, _) =
        s.post("/api/v1/reports", Some(ann_token), report("event", &Uuid::now_v7().to_string(), "spam")).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "an unknown event");

    // Three people report the event; a fourth finds it has enough.
    let mut scam = report("event", &event_id, "scam");
    scam["details"] = json!("They ask for payment by bank transfer to a private account.");
    for (_, token) in &people[..3] {
        let (st, body) = s.post("/api/v1/reports", Some(token), scam.clone()).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert_eq!(body["reason"], "scam");
    }
    let (st, body) = s.post("/api/v1/reports", Some(ann_token), scam.clone()).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("already_reported")), "{body}");
    let (st, body) = s.post("/api/v1/reports", Some(&people[3].1), scam.clone()).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::CONFLICT, Some("enough_reports")), "{body}");
    // One report of the other event, and of the organizer's account.
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("event", &other, "misleading")).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("user", &organizer.to_string(), "offensive")).await;
    assert_eq!(st, StatusCode::CREATED);
    // Ann has sent 3 in the hour (and was refused the rest): one more, then 429.
    let (st, _) = s.post("/api/v1/reports", Some(ann_token), report("user", &people[4].0.to_string(), "spam")).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, body, headers) = s
        .send(
            reqwest::Method::POST,
            "/api/v1/reports",
            Some(ann_token),
            Some(report("user", &people[3].0.to_string(), "spam")),
            &[],
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_reports")), "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "3600");

    // The queue: moderators only; the most reported first, with the event's context.
    assert_eq!(s.get("/api/v1/moderation/reports", Some(ann_token)).await.0, StatusCode::FORBIDDEN);
    let moderator = Uuid::now_v7();
    let m = s.token(moderator, "moderator");
    let (st, queue) = s.get("/api/v1/moderation/reports", Some(&m)).await;
    assert_eq!(st, StatusCode::OK, "{queue}");
    let items = queue["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{queue}");
    assert_eq!((items[0]["target_id"].as_str(), items[0]["open"].as_u64()), (Some(event_id.as_str()), Some(3)));
    assert_eq!(items[0]["event"]["title"], "Totally real concert");
    assert_eq!(items[0]["event"]["status"], "published");
    assert_eq!(items[0]["event"]["organizer_id"], organizer.to_string());
    assert_eq!(items[0]["reports"].as_array().unwrap().len(), 3);
    assert!(items[0]["reports"][0]["details"].as_str().unwrap().contains("bank transfer"));
    // The rest, one report each, the longest waiting first.
    let rest: Vec<&str> = items[1..].iter().map(|i| i["target_id"].as_str().unwrap()).collect();
    assert_eq!(rest, [other.as_str(), &organizer.to_string(), &people[4].0.to_string()]);

    // Resolving: moderators only; the outcome must fit the target.
    let resolve = |outcome: &str, kind: &str, target: &str| json!({ "kind": kind, "target_id": target, "outcome": outcome, "note": "Payment outside the platform" });
    let path = "/api/v1/moderation/reports/resolve";
    assert_eq!(s.post(path, Some(ann_token), resolve("canceled", "event", &event_id)).await.0, StatusCode::FORBIDDEN);
    let (st, _) = s.post(path, Some(&m), resolve("canceled", "user", &organizer.to_string())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "an account is not canceled");
    let (st, _) = s.post(path, Some(&m), resolve("picture_removed", "event", &event_id)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "an event has no picture to take down");
    let (st, body) = s.post(path, Some(&m), resolve("canceled", "event", &event_id)).await;
    assert_eq!((st, body["resolved"].as_u64()), (StatusCode::OK, Some(3)), "{body}");
    let (st, body) = s.post(path, Some(&m), resolve("canceled", "event", &event_id)).await;
    assert_eq!((st, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_open_reports")), "{body}");
    // The audit log hears it once; each reporter's outcome once.
    let record = s.moderation.wait_for(&format!("event:{event_id}"), 1).await;
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].ty, "moderation.recorded");
    assert_eq!(record[0].data["action"], "report.resolve");
    assert_eq!(record[0].data["details"]["outcome"], "canceled");
    assert_eq!(record[0].data["actor"], moderator.to_string());
    for (person, _) in &people[..3] {
        let told = s.moderation.wait_for(&person.to_string(), 1).await;
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].ty, "report.resolved");
        assert_eq!(told[0].data["outcome"], "canceled");
        assert_eq!(told[0].data["subject"], "Totally real concert");
        assert_eq!(told[0].data["event_id"], event_id);
    }
    // Closed reports leave the queue; the reporters may report it again.
    let (_, queue) = s.get("/api/v1/moderation/reports", Some(&m)).await;
    assert_eq!(queue["items"].as_array().unwrap().len(), 3);
    let (st, _) = s.post(path, Some(&m), resolve("dismissed", "user", &organizer.to_string())).await;
    assert_eq!(st, StatusCode::OK);
    let told = s.moderation.wait_for(&ann.to_string(), 2).await;
    assert_eq!(told[1].data["subject"], "an account");
    assert_eq!(told[1].data["outcome"], "dismissed");
    assert!(told[1].data.get("event_id").is_none());
    s.stop().await;
}
