//! The joins service end to end on SQLite, PostgreSQL and MariaDB: capacity and the FIFO
//! waitlist, idempotent joins, 50 concurrent joins on 10 seats, leaving and promotion, kicks and
//! bans, organizer-only routes, `event.*` handling (capacity changes, cancellation, redelivery,
//! out-of-order and poison messages), keyset pages, and what lands in the outbox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use cityevents_common::catalogue::EventSnapshot;
use cityevents_common::on_every_backend;
use cityevents_common::testing::eventually;
use common::{KEY, Svc, User, key, snapshot};
use keel::data::Backend;
use keel::events::Envelope;
use serde_json::Value;
use uuid::Uuid;

fn types(a: &[(String, Uuid, String, Option<String>)]) -> Vec<&str> {
    a.iter().map(|(t, ..)| t.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------

async fn capacity_waitlist_idempotency_and_promotion(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let ev = svc.publish_event(organizer.id, 2).await;
    let id = ev.event_id;
    assert_eq!(svc.counts(id).await, (2, 0, 0));
    let (a, b, c) = (svc.user(), svc.user(), svc.user());

    let key_a = key();
    let (s, first) = svc.join(&a, id, &key_a).await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["status"], "confirmed");
    assert_eq!(first["event_id"], id.to_string());
    assert_eq!(first["user_id"], a.id.to_string());
    assert!(first.get("position").is_none(), "{first}");
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'), "{first}");
    assert_eq!(svc.join(&b, id, &key()).await.1["status"], "confirmed");
    let (s, third) = svc.join(&c, id, &key()).await;
    assert_eq!(
        (s, third["status"].as_str(), third["position"].as_i64()),
        (201, Some("waitlisted"), Some(1)),
        "{third}"
    );
    assert_eq!(svc.counts(id).await, (2, 2, 1));

    // The same key again: the same status and body, and no second join.
    let r = svc
        .http
        .post(svc.url(&format!("/api/v1/events/{id}/join")))
        .bearer_auth(&a.token)
        .header("Idempotency-Key", &key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    assert_eq!(svc.counts(id).await, (2, 2, 1));
    // A new key for an active join is a conflict.
    let (s, p) = svc.join(&a, id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("already_joined")), "{p}");
    // The same key for another event: refused.
    let other = svc.publish_event(organizer.id, 5).await;
    let (s, p) = svc.join(&a, other.event_id, &key_a).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("idempotency_key_reused")), "{p}");
    assert_eq!(svc.counts(other.event_id).await, (5, 0, 0));
    // The same key by another user is that user's own key.
    assert_eq!(svc.join(&svc.user(), other.event_id, &key_a).await.0, 201);

    // Missing or malformed keys.
    let r = svc.http.post(svc.url(&format!("/api/v1/events/{id}/join"))).bearer_auth(&a.token).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "invalid_input");
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key");
    for bad in ["has space", "x/y", &"k".repeat(129), ""] {
        assert_eq!(svc.join(&a, id, bad).await.0, 400, "{bad:?}");
    }
    // Unknown event, bad id, no token.
    assert_eq!(svc.join(&a, Uuid::now_v7(), &key()).await.0, 404);
    let r = svc
        .http
        .post(svc.url("/api/v1/events/nope/join"))
        .bearer_auth(&a.token)
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = svc
        .http
        .post(svc.url(&format!("/api/v1/events/{id}/join")))
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A leaves: C (the oldest waitlisted) gets the seat, in the same transaction.
    assert_eq!(svc.delete(&a, &format!("/api/v1/events/{id}/join")).await.0, 204);
    assert_eq!(svc.counts(id).await, (2, 2, 0));
    assert_eq!(svc.my_status(&c, id).await.unwrap()["status"], "confirmed");
    assert_eq!(svc.my_status(&a, id).await.unwrap()["status"], "canceled");
    assert_eq!(svc.delete(&a, &format!("/api/v1/events/{id}/join")).await.0, 404, "not joined any more");
    assert_eq!(svc.table_counts(id).await, (2, 0));

    // A's old key still answers what it answered, though the state changed.
    let (s, again) = svc.join(&a, id, &key_a).await;
    assert_eq!((s, &again), (201, &first));
    // A rejoins with a new key: now the event is full, so A waits.
    let (s, rejoin) = svc.join(&a, id, &key()).await;
    assert_eq!((s, rejoin["status"].as_str(), rejoin["position"].as_i64()), (201, Some("waitlisted"), Some(1)));
    assert_ne!(rejoin["join_id"], first["join_id"]);
    let mine = svc.my_status(&a, id).await.unwrap();
    assert_eq!((mine["status"].as_str(), mine["position"].as_i64()), (Some("waitlisted"), Some(1)));

    // Counts of a page of events in one call; events not known here are left out.
    let unknown = Uuid::now_v7();
    let (s, v) = svc.get(None, &format!("/api/v1/events/counts?ids={id},{unknown},{},{id}", other.event_id)).await;
    assert_eq!(s, 200, "{v}");
    let mut items: Vec<(String, i64, i64, i64)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let n = |k: &str| i[k].as_i64().unwrap();
            (i["event_id"].as_str().unwrap().to_owned(), n("capacity"), n("confirmed"), n("waitlisted"))
        })
        .collect();
    items.sort();
    let mut want = vec![(id.to_string(), 2, 2, 1), (other.event_id.to_string(), 5, 1, 0)];
    want.sort();
    assert_eq!(items, want);
    for bad in ["", "ids=", "ids=nope", "ids=1&x=2"] {
        let (s, p) = svc.get(None, &format!("/api/v1/events/counts?{bad}")).await;
        assert_eq!((s, p["code"].as_str()), (400, Some("invalid_input")), "{bad}: {p}");
    }

    // The outbox holds one event per change, keyed by the event, with the catalogue payloads.
    let got = svc.announced(id).await;
    assert_eq!(
        types(&got),
        ["join.confirmed", "join.confirmed", "join.waitlisted", "join.canceled", "join.promoted", "join.waitlisted"]
    );
    assert_eq!(got[0].1, a.id);
    assert_eq!(got[2], ("join.waitlisted".into(), c.id, "waitlisted".into(), None));
    assert_eq!(got[3], ("join.canceled".into(), a.id, "canceled".into(), None));
    assert_eq!(got[4], ("join.promoted".into(), c.id, "confirmed".into(), Some("seat_freed".into())));
    let envs = svc.outbox().await;
    let promoted = envs.iter().find(|e| e.ty == "join.promoted").unwrap();
    let change = promoted.decode::<cityevents_common::catalogue::JoinPromoted>().unwrap().0;
    assert_eq!((change.event_title.as_str(), change.event_id), ("Jazz in the park", id));
    svc.stop().await;
}
on_every_backend!(capacity_waitlist_idempotency_and_promotion, unverified_accounts_may_join);

/// The policy (docs/cityevents.md, *Joins*): an account whose address is not verified yet may
/// join an event, like anyone, within its capacity (it may not create events). A verified
/// address would not stop a squatter, who has throwaway mailboxes; the gateway's per-user and
/// per-address rate limits and the organizer's bans do.
async fn unverified_accounts_may_join(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let ev = svc.publish_event(organizer.id, 1).await;
    let id = Uuid::now_v7();
    let newcomer = User { id, token: KEY.unverified_token(&id.to_string(), "user") };
    let (s, joined) = svc.join(&newcomer, ev.event_id, &key()).await;
    assert_eq!((s, joined["status"].as_str()), (201, Some("confirmed")), "{joined}");
    let (s, second) = svc.join(&svc.user(), ev.event_id, &key()).await;
    assert_eq!((s, second["status"].as_str()), (201, Some("waitlisted")), "the same capacity: {second}");
}

/// An `Idempotency-Key` older than the records' life is a new request: its old record is
/// replaced, not replayed and not a conflict.
async fn an_expired_idempotency_key_is_a_new_join(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let ev = svc.publish_event(svc.user().id, 10).await;
    let (u, k) = (svc.user(), key());
    let (s, first) = svc.join(&u, ev.event_id, &k).await;
    assert_eq!(s, 201, "{first}");
    let (s, _) = svc.delete(&u, &format!("/api/v1/events/{}/join", ev.event_id)).await;
    assert_eq!(s, 204);
    // The record ages past the default 24 h.
    let age = svc.backend.sql("UPDATE idempotency_keys SET created_at = created_at - $1 WHERE user_id = $2");
    sqlx::query(sqlx::AssertSqlSafe(age.into_owned()))
        .bind(3 * 86_400 * 1_000_000_i64)
        .bind(u.id.to_string())
        .execute(svc.db.pool())
        .await
        .unwrap();
    let (s, again) = svc.join(&u, ev.event_id, &k).await;
    assert_eq!((s, again["status"].as_str()), (201, Some("confirmed")), "{again}");
    assert_ne!(again["join_id"], first["join_id"], "a new join, not the old answer");
    // And it is that join's record now: a retry replays it.
    let (s, replay) = svc.join(&u, ev.event_id, &k).await;
    assert_eq!((s, &replay["join_id"]), (201, &again["join_id"]), "{replay}");
    svc.stop().await;
}
on_every_backend!(an_expired_idempotency_key_is_a_new_join);

// ---------------------------------------------------------------------------------------------

async fn fifty_concurrent_joins_on_ten_seats(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let ev = svc.publish_event(svc.user().id, 10).await;
    let id = ev.event_id;
    let users: Vec<_> = (0..50).map(|_| svc.user()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for u in users.clone() {
        let (http, url) = (svc.http.clone(), svc.url(&format!("/api/v1/events/{id}/join")));
        tasks.spawn(async move {
            let r = http.post(url).bearer_auth(&u.token).header("Idempotency-Key", key()).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let mut confirmed = 0;
    let mut positions = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (status, body) = r.unwrap();
        assert_eq!(status, 201, "{body}");
        match body["status"].as_str().unwrap() {
            "confirmed" => confirmed += 1,
            "waitlisted" => positions.push(body["position"].as_i64().unwrap()),
            other => panic!("{other}"),
        }
    }
    positions.sort_unstable();
    assert_eq!(confirmed, 10, "exactly the capacity is confirmed");
    assert_eq!(positions, (1..=40).collect::<Vec<_>>(), "every waitlisted join has its own place");
    assert_eq!(svc.counts(id).await, (10, 10, 40));
    assert_eq!(svc.table_counts(id).await, (10, 40), "the counters match the rows");
    let got = svc.announced(id).await;
    assert_eq!(got.iter().filter(|(t, ..)| t == "join.confirmed").count(), 10);
    assert_eq!(got.iter().filter(|(t, ..)| t == "join.waitlisted").count(), 40);

    // The waitlist is served in the order the seats were refused.
    let organizer_view = svc.admin();
    let (s, w) = svc.get(Some(&organizer_view), &format!("/api/v1/events/{id}/waitlist?limit=100")).await;
    assert_eq!(s, 200, "{w}");
    let waiting: Vec<Uuid> = w["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Uuid::parse_str(i["user_id"].as_str().unwrap()).unwrap())
        .collect();
    let first_waiting = users.iter().find(|u| u.id == waiting[0]).unwrap();
    let confirmed_user = {
        let (_, p) = svc.get(Some(&organizer_view), &format!("/api/v1/events/{id}/participants?limit=100")).await;
        let uid = Uuid::parse_str(p["items"][0]["user_id"].as_str().unwrap()).unwrap();
        users.iter().find(|u| u.id == uid).unwrap().clone()
    };
    assert_eq!(svc.delete(&confirmed_user, &format!("/api/v1/events/{id}/join")).await.0, 204);
    assert_eq!(
        svc.my_status(first_waiting, id).await.unwrap()["status"],
        "confirmed",
        "the head of the queue moves up"
    );
    assert_eq!(svc.counts(id).await, (10, 10, 39));
    let second = users.iter().find(|u| u.id == waiting[1]).unwrap();
    assert_eq!(svc.my_status(second, id).await.unwrap()["position"], 1);
    svc.stop().await;
}
on_every_backend!(fifty_concurrent_joins_on_ten_seats);

// ---------------------------------------------------------------------------------------------

async fn organizer_tools_kick_ban_and_lists(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let ev = svc.publish_event(organizer.id, 1).await;
    let id = ev.event_id;
    let (u1, u2, u3, stranger) = (svc.user(), svc.user(), svc.user(), svc.user());
    // The organizer does not join their own event.
    let (s, p) = svc.join(&organizer, id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("organizer_cannot_join")), "{p}");
    let u3_key = key();
    for u in [&u1, &u2, &u3] {
        let k = if u.id == u3.id { u3_key.clone() } else { key() };
        assert_eq!(svc.join(u, id, &k).await.0, 201);
    }

    // Organizer-only routes: 403 for others, 404 for unknown events, 401 without a token.
    for path in ["participants", "waitlist", "stats"] {
        let (s, p) = svc.get(Some(&stranger), &format!("/api/v1/events/{id}/{path}")).await;
        assert_eq!((s, p["code"].as_str()), (403, Some("not_organizer")), "{path}: {p}");
        assert_eq!(svc.get(Some(&organizer), &format!("/api/v1/events/{}/{path}", Uuid::now_v7())).await.0, 404);
        assert_eq!(svc.get(None, &format!("/api/v1/events/{id}/{path}")).await.0, 401);
        assert_eq!(svc.get(Some(&svc.admin()), &format!("/api/v1/events/{id}/{path}")).await.0, 200, "admins may");
    }
    assert_eq!(svc.delete(&stranger, &format!("/api/v1/events/{id}/participants/{}", u1.id)).await.0, 403);
    let ban_body = format!(r#"{{"user_id": "{}"}}"#, u1.id);
    assert_eq!(svc.post_json(&stranger, &format!("/api/v1/events/{id}/bans"), &ban_body).await.0, 403);
    assert_eq!(svc.counts(id).await, (1, 1, 2), "refused actions changed nothing");

    // Lists: participants (confirmed), waitlist in FIFO order with positions, paged.
    let (_, p) = svc.get(Some(&organizer), &format!("/api/v1/events/{id}/participants")).await;
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    assert_eq!(p["items"][0]["user_id"], u1.id.to_string());
    assert!(p["next_cursor"].is_null());
    let (_, w1) = svc.get(Some(&organizer), &format!("/api/v1/events/{id}/waitlist?limit=1")).await;
    assert_eq!(
        (w1["items"][0]["user_id"].as_str(), w1["items"][0]["position"].as_i64()),
        (Some(u2.id.to_string().as_str()), Some(1))
    );
    let cursor = w1["next_cursor"].as_str().unwrap();
    let (_, w2) = svc.get(Some(&organizer), &format!("/api/v1/events/{id}/waitlist?limit=1&cursor={cursor}")).await;
    assert_eq!(
        (w2["items"][0]["user_id"].as_str(), w2["items"][0]["position"].as_i64()),
        (Some(u3.id.to_string().as_str()), Some(2))
    );
    assert!(w2["next_cursor"].is_null());
    for bad in ["limit=0", "limit=101", "limit=abc", "cursor=%25%25"] {
        let (s, p) = svc.get(Some(&organizer), &format!("/api/v1/events/{id}/waitlist?{bad}")).await;
        assert_eq!((s, p["code"].as_str()), (400, Some("invalid_input")), "{bad}: {p}");
    }

    // Kick the confirmed user: the seat goes to u2.
    assert_eq!(svc.delete(&organizer, &format!("/api/v1/events/{id}/participants/{}", u1.id)).await.0, 204);
    assert_eq!(svc.delete(&organizer, &format!("/api/v1/events/{id}/participants/{}", u1.id)).await.0, 404);
    assert_eq!(svc.delete(&organizer, &format!("/api/v1/events/{id}/participants/nope")).await.0, 400);
    assert_eq!(svc.my_status(&u1, id).await.unwrap()["status"], "kicked");
    assert_eq!(svc.my_status(&u2, id).await.unwrap()["status"], "confirmed");
    // A kicked (not banned) user may join again.
    let (s, j) = svc.join(&u1, id, &key()).await;
    assert_eq!((s, j["status"].as_str(), j["position"].as_i64()), (201, Some("waitlisted"), Some(2)));

    // Ban: bodies are checked; banning a waitlisted user kicks them; banned users cannot join.
    let bans = format!("/api/v1/events/{id}/bans");
    for bad in ["{", "[]", r#"{"user_id": "x"}"#, r#"{"user_id": 5}"#, r#"{"user_id": "{u}", "why": 1}"#, "{}"] {
        let body = bad.replace("{u}", &u3.id.to_string());
        let (s, p) = svc.post_json(&organizer, &bans, &body).await;
        assert_eq!((s, p["code"].as_str()), (400, Some("invalid_input")), "{bad}: {p}");
    }
    let (s, p) = svc.post_json(&organizer, &bans, r#"{"user_id": "x"}"#).await;
    assert_eq!((s, p["errors"][0]["field"].as_str()), (400, Some("user_id")));
    let (s, p) = svc.post_json(&organizer, &bans, &format!(r#"{{"user_id": "{}", "why": 1}}"#, u3.id)).await;
    assert_eq!((s, p["errors"][0]["field"].as_str()), (400, Some("why")));
    let (s, b) = svc.post_json(&organizer, &bans, &format!(r#"{{"user_id": "{}"}}"#, u3.id)).await;
    assert_eq!((s, b["user_id"].as_str()), (201, Some(u3.id.to_string().as_str())), "{b}");
    let (s, again) = svc.post_json(&organizer, &bans, &format!(r#"{{"user_id": "{}"}}"#, u3.id)).await;
    assert_eq!((s, &again), (200, &b), "a repeat changes nothing and answers the ban there is");
    // Only a participant or a waitlisted user: not the organizer, not a stranger.
    let (s, p) = svc.post_json(&organizer, &bans, &format!(r#"{{"user_id": "{}"}}"#, organizer.id)).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("cannot_ban_organizer")), "{p}");
    let (s, p) = svc.post_json(&organizer, &bans, &format!(r#"{{"user_id": "{}"}}"#, stranger.id)).await;
    assert_eq!((s, p["code"].as_str()), (404, Some("not_a_participant")), "{p}");
    assert_eq!(svc.my_status(&u3, id).await.unwrap()["status"], "kicked");
    let (s, p) = svc.join(&u3, id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("banned")), "{p}");
    // Replaying the key of the join the ban ended answers the ban, not the old 201.
    let (s, p) = svc.join(&u3, id, &u3_key).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("banned")), "{p}");
    // u1 moved up to first place.
    assert_eq!(svc.my_status(&u1, id).await.unwrap()["position"], 1);
    // Ban the confirmed user: u1 is promoted.
    let admin = svc.admin();
    let (s, p) = svc.post_json(&admin, &bans, &format!(r#"{{"user_id": "{}"}}"#, u2.id)).await;
    assert_eq!((s, p["errors"][0]["field"].as_str()), (400, Some("reason")), "not their event: a reason: {p}");
    let body = format!(r#"{{"user_id": "{}", "reason": "Harassment"}}"#, u2.id);
    assert_eq!(svc.post_json(&admin, &bans, &body).await.0, 201, "admins may");
    assert_eq!(svc.my_status(&u1, id).await.unwrap()["status"], "confirmed");

    let (s, stats) = svc.get(Some(&organizer), &format!("/api/v1/events/{id}/stats")).await;
    assert_eq!(s, 200);
    assert_eq!(stats, serde_json::json!({"capacity": 1, "confirmed": 1, "waitlisted": 0, "canceled": 0, "kicked": 2}));
    assert_eq!(svc.counts(id).await, (1, 1, 0));

    // Bans are listed (organizer or admin), oldest first, paged; lifted one by one.
    assert_eq!(svc.get(Some(&stranger), &bans).await.0, 403);
    let (s, list) = svc.get(Some(&organizer), &bans).await;
    assert_eq!(s, 200, "{list}");
    let banned: Vec<&str> = list["items"].as_array().unwrap().iter().map(|b| b["user_id"].as_str().unwrap()).collect();
    assert_eq!(banned, [u3.id.to_string(), u2.id.to_string()]);
    assert_eq!(list["items"][1]["banned_by"], admin.id.to_string());
    let (_, first) = svc.get(Some(&organizer), &format!("{bans}?limit=1")).await;
    let (_, second) =
        svc.get(Some(&organizer), &format!("{bans}?limit=1&cursor={}", first["next_cursor"].as_str().unwrap())).await;
    assert_eq!(
        (first["items"][0]["user_id"].as_str(), second["items"][0]["user_id"].as_str()),
        (Some(banned[0]), Some(banned[1]))
    );
    assert!(second["next_cursor"].is_null());
    assert_eq!(svc.delete(&stranger, &format!("{bans}/{}", u3.id)).await.0, 403);
    assert_eq!(svc.delete(&organizer, &format!("{bans}/{}", u3.id)).await.0, 204);
    let (s, p) = svc.delete(&organizer, &format!("{bans}/{}", u3.id)).await;
    assert_eq!((s, p["code"].as_str()), (404, Some("ban_not_found")), "{p}");
    // Lifted: u3 may join again (the seat is taken: the waitlist).
    let (s, j) = svc.join(&u3, id, &key()).await;
    assert_eq!((s, j["status"].as_str()), (201, Some("waitlisted")), "{j}");
    let (_, list) = svc.get(Some(&organizer), &bans).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let got = svc.announced(id).await;
    let tail: Vec<_> = got.iter().skip(3).cloned().collect();
    assert_eq!(
        tail,
        vec![
            ("join.kicked".into(), u1.id, "canceled".into(), Some("kicked".into())),
            ("join.promoted".into(), u2.id, "confirmed".into(), Some("seat_freed".into())),
            ("join.waitlisted".into(), u1.id, "waitlisted".into(), None),
            ("join.kicked".into(), u3.id, "canceled".into(), Some("banned".into())),
            ("join.kicked".into(), u2.id, "canceled".into(), Some("banned".into())),
            ("join.promoted".into(), u1.id, "confirmed".into(), Some("seat_freed".into())),
            ("join.waitlisted".into(), u3.id, "waitlisted".into(), None),
        ]
    );
    svc.stop().await;
}
on_every_backend!(organizer_tools_kick_ban_and_lists);

// ---------------------------------------------------------------------------------------------

async fn event_changes_promote_and_cancel(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let mut ev = svc.publish_event(organizer.id, 1).await;
    let id = ev.event_id;
    let users: Vec<_> = (0..4).map(|_| svc.user()).collect();
    for u in &users[..3] {
        assert_eq!(svc.join(u, id, &key()).await.0, 201);
    }
    assert_eq!(svc.counts(id).await, (1, 1, 2));

    // Capacity 1 → 2: the oldest waitlisted user is promoted.
    ev.version += 1;
    ev.capacity = 2;
    ev.title = "Jazz at the pier".into();
    let grow = svc.update_event(&ev).await;
    assert_eq!(svc.counts(id).await, (2, 2, 1));
    assert_eq!(svc.my_status(&users[1], id).await.unwrap()["status"], "confirmed");
    assert_eq!(svc.my_status(&users[2], id).await.unwrap()["position"], 1);
    let promoted = svc.announced(id).await.pop().unwrap();
    assert_eq!(promoted, ("join.promoted".into(), users[1].id, "confirmed".into(), Some("capacity_increased".into())));

    // Redelivering the same envelope applies it once (the inbox).
    let before = svc.outbox().await.len();
    let updated_at = |svc: &Svc| {
        let sql = svc.db.sql("SELECT updated_at FROM event_capacity WHERE event_id = $1").into_owned();
        let pool = svc.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_one(&pool).await.unwrap()
        }
    };
    let stamp = updated_at(&svc).await;
    svc.feed_nowait(&grow).await;
    svc.feed_nowait(&grow).await;
    eventually("redeliveries to be consumed", Duration::from_secs(10), || async {
        (svc.bus.lag(cityevents_common::catalogue::EVENTS_TOPIC, "joins").await.unwrap() == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(updated_at(&svc).await, stamp, "a redelivery is not applied again");
    assert_eq!(svc.outbox().await.len(), before);

    // Capacity 2 → 1: nobody is bumped; a newcomer waits.
    ev.version += 1;
    ev.capacity = 1;
    svc.update_event(&ev).await;
    assert_eq!(svc.counts(id).await, (1, 2, 1));
    let (_, j) = svc.join(&users[3], id, &key()).await;
    assert_eq!((j["status"].as_str(), j["position"].as_i64()), (Some("waitlisted"), Some(2)));
    // A confirmed user leaving frees no seat while the event is over capacity.
    assert_eq!(svc.delete(&users[0], &format!("/api/v1/events/{id}/join")).await.0, 204);
    assert_eq!(svc.counts(id).await, (1, 1, 2));

    // Unlimited (0): everyone waiting gets in, oldest first.
    ev.version += 1;
    ev.capacity = 0;
    svc.update_event(&ev).await;
    assert_eq!(svc.counts(id).await, (0, 3, 0));
    let got = svc.announced(id).await;
    let promos: Vec<_> = got.iter().filter(|(t, ..)| t == "join.promoted").map(|(_, u, ..)| *u).collect();
    assert_eq!(promos, vec![users[1].id, users[2].id, users[3].id]);

    // me/joins shows the new title.
    let (_, mine) = svc.get(Some(&users[2]), "/api/v1/me/joins").await;
    assert_eq!(mine["items"][0]["title"], "Jazz at the pier");

    // Canceled: every active join is canceled and announced; no one can join any more.
    let cancel = svc.cancel_event(&ev).await;
    assert_eq!(svc.counts(id).await, (0, 0, 0));
    for u in &users[1..] {
        assert_eq!(svc.my_status(u, id).await.unwrap()["status"], "canceled");
    }
    let got = svc.announced(id).await;
    let canceled: HashSet<Uuid> = got
        .iter()
        .filter(|(t, _, _, r)| t == "join.canceled" && r.as_deref() == Some("event_canceled"))
        .map(|(_, u, s, _)| {
            assert_eq!(s, "canceled");
            *u
        })
        .collect();
    assert_eq!(canceled, users[1..].iter().map(|u| u.id).collect());
    assert!(notes_of_cancels(&svc, id).await.iter().all(|n| n.as_deref() == Some("Storm warning")), "the reason given");
    let (s, p) = svc.join(&svc.user(), id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("event_closed")));
    assert_eq!(svc.delete(&users[1], &format!("/api/v1/events/{id}/join")).await.0, 404);
    // A second cancel (another message) changes nothing.
    let n = svc.outbox().await.len();
    let _ = cancel;
    svc.cancel_event(&ev).await;
    assert_eq!(svc.outbox().await.len(), n);

    // An update for an event not known yet is retried until its event.published arrives.
    let late = snapshot(organizer.id, 7);
    let update = Envelope::new("cityevents-events", &cityevents_common::catalogue::EventUpdated(late.clone())).unwrap();
    svc.feed_nowait(&update).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(svc.get(None, &format!("/api/v1/events/{}/counts", late.event_id)).await.0, 404);
    let mut first = late.clone();
    first.capacity = 3;
    first.version = 1;
    svc.feed(&Envelope::new("cityevents-events", &cityevents_common::catalogue::EventPublished(first)).unwrap()).await;
    svc.wait_applied(&update.id).await;
    assert_eq!(svc.counts(late.event_id).await, (7, 0, 0));

    // A payload of an unknown version, or that does not decode, goes to the DLQ at once.
    let v2 = Envelope::raw("cityevents-events", "event.updated", 2, serde_json::to_value(&late).unwrap());
    let garbage = Envelope::raw("cityevents-events", "event.canceled", 1, serde_json::json!({"event_id": 5}));
    svc.feed_nowait(&v2).await;
    svc.feed_nowait(&garbage).await;
    let dead = eventually("poison messages in the DLQ", Duration::from_secs(10), || async {
        let l = svc.bus.dlq_list(cityevents_common::catalogue::EVENTS_TOPIC, 10).await.unwrap();
        (l.len() == 2).then_some(l)
    })
    .await;
    for d in &dead {
        assert_eq!(d.attempts, 1, "permanent: no retries ({})", d.reason);
        assert!(d.reason.contains("permanent"), "{}", d.reason);
    }
    svc.stop().await;
}
on_every_backend!(event_changes_promote_and_cancel);

// ---------------------------------------------------------------------------------------------

/// An event with capacity 1 and six joins (one confirmed, five waitlisted, in order).
/// The `note` of every `join.canceled` for `event` in the outbox.
async fn notes_of_cancels(svc: &Svc, event: Uuid) -> Vec<Option<String>> {
    svc.outbox()
        .await
        .iter()
        .filter(|e| e.ty == "join.canceled")
        .map(|e| e.decode::<cityevents_common::catalogue::JoinCanceled>().unwrap().0)
        .filter(|c| c.event_id == event && c.reason.as_deref() == Some("event_canceled"))
        .map(|c| c.note)
        .collect()
}

async fn unpublished_events_close_and_reopen(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let mut ev = svc.publish_event(organizer.id, 1).await;
    let id = ev.event_id;
    let (a, b) = (svc.user(), svc.user());
    assert_eq!(svc.join(&a, id, &key()).await.1["status"], "confirmed");
    assert_eq!(svc.join(&b, id, &key()).await.1["status"], "waitlisted");

    // Unpublished (by a moderator, with a reason): every active join ends, the reason passed on.
    svc.unpublish_event(&mut ev, Some("Spam listing")).await;
    assert_eq!(svc.counts(id).await, (1, 0, 0));
    let got = svc.announced(id).await;
    let ended: Vec<_> = got.iter().filter(|(t, ..)| t == "join.canceled").map(|(_, u, _, r)| (*u, r.clone())).collect();
    assert_eq!(
        ended,
        vec![(a.id, Some("event_unpublished".into())), (b.id, Some("event_unpublished".into()))],
        "oldest first"
    );
    let notes: Vec<Option<String>> = svc
        .outbox()
        .await
        .iter()
        .filter(|e| e.ty == "join.canceled")
        .map(|e| e.decode::<cityevents_common::catalogue::JoinCanceled>().unwrap().0)
        .filter(|c| c.event_id == id)
        .map(|c| c.note)
        .collect();
    assert_eq!(notes, vec![Some("Spam listing".into()), Some("Spam listing".into())]);
    // Closed while a draft.
    let (s, p) = svc.join(&svc.user(), id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("event_closed")), "{p}");

    // Published again: open, nobody carried over.
    svc.republish_event(&mut ev).await;
    let (s, j) = svc.join(&a, id, &key()).await;
    assert_eq!((s, j["status"].as_str()), (201, Some("confirmed")), "{j}");
    assert_eq!(svc.counts(id).await, (1, 1, 0));

    // An unpublish for an event never opened here closes it, and its older publish that
    // arrives late is ignored.
    let mut late = snapshot(organizer.id, 5);
    let publish =
        Envelope::new("cityevents-events", &cityevents_common::catalogue::EventPublished(late.clone())).unwrap();
    svc.unpublish_event(&mut late, None).await;
    svc.feed(&publish).await;
    let (s, p) = svc.join(&svc.user(), late.event_id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("event_closed")), "{p}");
    svc.stop().await;
}
on_every_backend!(unpublished_events_close_and_reopen);

async fn moderators_ban_with_a_reason_and_an_expiry(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let moderator = svc.user_with_role("moderator");
    let ev = svc.publish_event(organizer.id, 10).await;
    let id = ev.event_id;
    let bans = format!("/api/v1/events/{id}/bans");
    let (troll, pest) = (svc.user(), svc.user());
    let troll_key = key();
    assert_eq!(svc.join(&troll, id, &troll_key).await.0, 201);
    assert_eq!(svc.join(&pest, id, &key()).await.0, 201);

    // A moderator manages any event: lists, and bans with a reason (required) and an expiry.
    assert_eq!(svc.get(Some(&moderator), &format!("/api/v1/events/{id}/participants")).await.0, 200);
    let ban = |u: &User, extra: &str| format!(r#"{{"user_id": "{}"{extra}}}"#, u.id);
    for (extra, field) in [
        ("", "reason"),
        (r#", "reason": "  ""#, "reason"),
        (&format!(r#", "reason": "{}""#, "r".repeat(501)), "reason"),
        (r#", "reason": "x", "expires_at": "tomorrow""#, "expires_at"),
        (r#", "reason": "x", "expires_at": "2001-01-01T00:00:00Z""#, "expires_at"),
        (r#", "reason": "x", "expires_at": "2201-01-01T00:00:00Z""#, "expires_at"),
    ] {
        let (s, p) = svc.post_json(&moderator, &bans, &ban(&troll, extra)).await;
        assert_eq!((s, p["errors"][0]["field"].as_str()), (400, Some(field)), "{extra}: {p}");
    }
    let until = (time::OffsetDateTime::now_utc() + time::Duration::days(7)).replace_nanosecond(0).unwrap();
    let until_text = until.format(&time::format_description::well_known::Rfc3339).unwrap();
    let (s, b) = svc
        .post_json(
            &moderator,
            &bans,
            &ban(&troll, &format!(r#", "reason": "Spam in comments", "expires_at": "{until_text}""#)),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        (b["reason"].as_str(), b["expires_at"].as_str(), b["banned_by"].as_str()),
        (Some("Spam in comments"), Some(until_text.as_str()), Some(moderator.id.to_string().as_str()))
    );
    // The organizer bans without giving a reason; it is for good.
    let (s, b) = svc.post_json(&organizer, &bans, &ban(&pest, "")).await;
    assert_eq!((s, &b["reason"], &b["expires_at"]), (201, &Value::Null, &Value::Null), "{b}");
    let (_, list) = svc.get(Some(&moderator), &bans).await;
    assert_eq!(list["items"][0]["reason"], "Spam in comments", "{list}");

    // While it lasts the user cannot join; once it has expired they can, and it is not listed.
    let (s, p) = svc.join(&troll, id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("banned")), "{p}");
    let expire = svc.backend.sql("UPDATE bans SET expires_at = $1 WHERE user_id = $2");
    sqlx::query(sqlx::AssertSqlSafe(expire.into_owned()))
        .bind(cityevents_common::time::to_micros(time::OffsetDateTime::now_utc()) - 1)
        .bind(troll.id.to_string())
        .execute(svc.db.pool())
        .await
        .unwrap();
    let (_, list) = svc.get(Some(&moderator), &bans).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "only the ban in force: {list}");
    let (s, p) = svc.delete(&moderator, &format!("{bans}/{}", troll.id)).await;
    assert_eq!((s, p["code"].as_str()), (404, Some("ban_not_found")), "an expired ban is not in force: {p}");
    let (s, j) = svc.join(&troll, id, &key()).await;
    assert_eq!((s, j["status"].as_str()), (201, Some("confirmed")), "{j}");
    // Banned again: the old, expired ban is replaced.
    let (s, b) = svc.post_json(&moderator, &bans, &ban(&troll, r#", "reason": "Again""#)).await;
    assert_eq!((s, b["reason"].as_str(), &b["expires_at"]), (201, Some("Again"), &Value::Null), "{b}");
    // The moderator lifts the organizer's ban.
    assert_eq!(svc.delete(&moderator, &format!("{bans}/{}", pest.id)).await.0, 204);

    // What the moderator did, and only that, went out for the audit log, in each transaction.
    let recorded: Vec<cityevents_common::catalogue::ModerationRecorded> = svc
        .outbox_of(cityevents_common::catalogue::MODERATION_TOPIC)
        .await
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    let summary: Vec<(String, String, Option<String>)> =
        recorded.iter().map(|r| (r.action.clone(), r.target.clone(), r.reason.clone())).collect();
    assert_eq!(
        summary,
        vec![
            ("event.ban".into(), format!("event:{id}/user:{}", troll.id), Some("Spam in comments".into())),
            ("event.ban".into(), format!("event:{id}/user:{}", troll.id), Some("Again".into())),
            ("event.unban".into(), format!("event:{id}/user:{}", pest.id), None),
        ]
    );
    assert!(recorded.iter().all(|r| r.actor == moderator.id));
    assert_eq!(recorded[0].details["expires_at"], until_text.as_str());
    svc.stop().await;
}
on_every_backend!(moderators_ban_with_a_reason_and_an_expiry);

async fn a_banned_organizers_events_take_no_new_joins(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let ev = svc.publish_event(organizer.id, 10).await;
    let (early, late) = (svc.user(), svc.user());
    assert_eq!(svc.join(&early, ev.event_id, &key()).await.0, 201);
    let at = time::OffsetDateTime::now_utc();
    let by = Uuid::now_v7();
    svc.feed_account(&cityevents_common::catalogue::AccountBanned {
        user_id: organizer.id,
        by,
        reason: "scams".into(),
        at,
        version: 1,
    })
    .await;
    let (s, p) = svc.join(&late, ev.event_id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("event_closed")), "{p}");
    assert_eq!(svc.my_status(&early, ev.event_id).await.unwrap()["status"], "confirmed", "joins made before stay");
    svc.feed_account(&cityevents_common::catalogue::AccountUnbanned { user_id: organizer.id, by, at, version: 2 })
        .await;
    assert_eq!(svc.join(&late, ev.event_id, &key()).await.0, 201);
    svc.stop().await;
}
on_every_backend!(a_banned_organizers_events_take_no_new_joins);

async fn republished_while_an_unpublish_settles(backend: Backend) {
    // One join canceled per transaction: the rest of the unpublish is the settle worker's.
    let settings = [("APP__CHANGE_BATCH", "1"), ("APP__SETTLE_INTERVAL", "100ms")];
    let Some(svc) = Svc::start_with(backend, &settings).await else { return };
    let organizer = svc.user();
    let mut ev = svc.publish_event(organizer.id, 10).await;
    let users = [svc.user(), svc.user(), svc.user()];
    for u in &users {
        assert_eq!(svc.join(u, ev.event_id, &key()).await.0, 201);
    }
    svc.unpublish_event(&mut ev, Some("mistake")).await;
    // Published again at once: it reopens only once every join of the unpublish is canceled.
    svc.republish_event(&mut ev).await;
    for u in &users {
        assert_eq!(svc.my_status(u, ev.event_id).await.unwrap()["status"], "canceled", "none of them stays");
    }
    assert_eq!(svc.counts(ev.event_id).await, (10, 0, 0));
    assert_eq!(svc.join(&users[0], ev.event_id, &key()).await.0, 201, "open again");
    svc.stop().await;
}
on_every_backend!(republished_while_an_unpublish_settles);

async fn crowded(svc: &Svc) -> (EventSnapshot, Vec<User>) {
    let organizer = svc.user();
    let ev = svc.publish_event(organizer.id, 1).await;
    let users: Vec<_> = (0..6).map(|_| svc.user()).collect();
    for u in &users {
        assert_eq!(svc.join(u, ev.event_id, &key()).await.0, 201);
    }
    assert_eq!(svc.counts(ev.event_id).await, (1, 1, 5));
    (ev, users)
}

async fn pending(svc: &Svc, event: Uuid) -> i64 {
    let sql = svc.db.sql("SELECT pending FROM event_capacity WHERE event_id = $1").into_owned();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(event.to_string()).fetch_one(svc.db.pool()).await.unwrap()
}

async fn stale_snapshots_are_ignored_and_bulk_changes_go_in_batches(backend: Backend) {
    // Two joins per transaction, and a settle worker that (after its first run at start) does
    // not run during the test: what one message's transaction does is visible exactly.
    let settings = [("APP__CHANGE_BATCH", "2"), ("APP__SETTLE_INTERVAL", "10m")];
    let Some(svc) = Svc::start_with(backend, &settings).await else { return };
    let (mut ev, users) = crowded(&svc).await;
    let id = ev.event_id;

    // An older snapshot arriving late (here: version 1 after the published version 2) and a
    // repeat of the current version are acknowledged and change nothing.
    let mut old = ev.clone();
    old.version = 1;
    old.capacity = 10;
    let env = svc.update_event(&old).await;
    svc.wait_applied(&env.id).await;
    old.version = ev.version;
    svc.update_event(&old).await;
    assert_eq!(svc.counts(id).await, (1, 1, 5), "stale snapshots are ignored");

    // Unlimited: the message's transaction promotes two, oldest first; the rest is pending.
    ev.version += 1;
    ev.capacity = 0;
    svc.update_event(&ev).await;
    assert_eq!(svc.counts(id).await, (0, 3, 3));
    assert_eq!(pending(&svc, id).await, 1);
    let promoted: Vec<Uuid> =
        svc.announced(id).await.into_iter().filter(|a| a.0 == "join.promoted").map(|a| a.1).collect();
    assert_eq!(promoted, vec![users[1].id, users[2].id]);

    // Canceled: two joins canceled in the message's transaction, oldest first.
    svc.cancel_event(&ev).await;
    assert_eq!(svc.counts(id).await, (0, 1, 3));
    assert_eq!(pending(&svc, id).await, 1);
    assert_eq!(svc.my_status(&users[0], id).await.unwrap()["status"], "canceled");
    assert_eq!(svc.my_status(&users[2], id).await.unwrap()["status"], "confirmed");
    svc.stop().await;

    // With a settle worker that runs, the rest follows in batches until nothing is pending.
    let settings = [("APP__CHANGE_BATCH", "2"), ("APP__SETTLE_INTERVAL", "100ms")];
    let Some(svc) = Svc::start_with(backend, &settings).await else { return };
    let (mut ev, users) = crowded(&svc).await;
    let id = ev.event_id;
    ev.version += 1;
    ev.capacity = 0;
    svc.update_event(&ev).await;
    eventually("every waitlisted user to be promoted", Duration::from_secs(20), || async {
        (svc.counts(id).await == (0, 6, 0)).then_some(())
    })
    .await;
    let promoted: Vec<Uuid> =
        svc.announced(id).await.into_iter().filter(|a| a.0 == "join.promoted").map(|a| a.1).collect();
    assert_eq!(promoted, users[1..].iter().map(|u| u.id).collect::<Vec<_>>(), "FIFO, each once");
    assert_eq!(pending(&svc, id).await, 0);

    svc.cancel_event(&ev).await;
    eventually("every join to be canceled", Duration::from_secs(20), || async {
        (svc.counts(id).await == (0, 0, 0)).then_some(())
    })
    .await;
    assert_eq!(pending(&svc, id).await, 0);
    let canceled: Vec<Uuid> = svc
        .announced(id)
        .await
        .into_iter()
        .filter(|a| a.0 == "join.canceled" && a.3.as_deref() == Some("event_canceled"))
        .map(|a| a.1)
        .collect();
    assert_eq!(canceled, users.iter().map(|u| u.id).collect::<Vec<_>>(), "oldest first, each once");
    let notes = notes_of_cancels(&svc, id).await;
    assert_eq!(notes.len(), users.len());
    assert!(notes.iter().all(|n| n.as_deref() == Some("Storm warning")), "later batches too: {notes:?}");
    for u in &users {
        assert_eq!(svc.my_status(u, id).await.unwrap()["status"], "canceled");
    }
    svc.stop().await;
}
on_every_backend!(stale_snapshots_are_ignored_and_bulk_changes_go_in_batches);

// ---------------------------------------------------------------------------------------------

async fn my_joins_pages_are_stable(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let me = svc.user();
    let mut events = Vec::new();
    for _ in 0..7 {
        let ev = svc.publish_event(organizer.id, 0).await;
        assert_eq!(svc.join(&me, ev.event_id, &key()).await.0, 201);
        events.push(ev.event_id);
    }
    let page = |cursor: Option<String>| {
        let path = match cursor {
            Some(c) => format!("/api/v1/me/joins?limit=3&cursor={c}"),
            None => "/api/v1/me/joins?limit=3".to_owned(),
        };
        let svc = &svc;
        let me = me.clone();
        async move {
            let (s, b) = svc.get(Some(&me), &path).await;
            assert_eq!(s, 200, "{b}");
            b
        }
    };
    let p1 = page(None).await;
    // A join made while paging does not shift later pages.
    let newer = svc.publish_event(organizer.id, 0).await;
    assert_eq!(svc.join(&me, newer.event_id, &key()).await.0, 201);
    let p2 = page(p1["next_cursor"].as_str().map(str::to_owned)).await;
    let p3 = page(p2["next_cursor"].as_str().map(str::to_owned)).await;
    assert!(p3["next_cursor"].is_null(), "{p3}");
    let seen: Vec<Uuid> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().iter())
        .map(|i| {
            assert_eq!(i["status"], "confirmed");
            assert_eq!(i["title"], "Jazz in the park");
            assert!(i["starts_at"].as_str().is_some());
            Uuid::parse_str(i["event_id"].as_str().unwrap()).unwrap()
        })
        .collect();
    let newest_first: Vec<Uuid> = events.iter().rev().copied().collect();
    assert_eq!(seen, newest_first, "every join once, newest first");
    let (_, all) = svc.get(Some(&me), "/api/v1/me/joins").await;
    assert_eq!(all["items"][0]["event_id"], newer.event_id.to_string());
    assert_eq!(all["items"].as_array().unwrap().len(), 8);
    for bad in ["limit=0", "limit=-1", "cursor=bm90LWEtY3Vyc29y"] {
        assert_eq!(svc.get(Some(&me), &format!("/api/v1/me/joins?{bad}")).await.0, 400, "{bad}");
    }
    // A parameter the list does not take is named, not ignored.
    let (status, problem) = svc.get(Some(&me), "/api/v1/me/joins?status=confirmed").await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (400, Some("status")), "{problem}");
    assert_eq!(svc.get(None, "/api/v1/me/joins").await.0, 401);
    svc.stop().await;
}
on_every_backend!(my_joins_pages_are_stable);

// ---------------------------------------------------------------------------------------------

async fn calendar_feeds_are_secret_replaceable_and_revocable(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let me = svc.user();
    let resolve = |token: &str| {
        let body = serde_json::json!({ "token": token }).to_string();
        let svc = &svc;
        async move {
            let r = svc
                .http
                .post(svc.url("/api/v1/calendar-feeds/resolve"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(svc.get(Some(&me), "/api/v1/me/calendar-feed").await.1["active"], false);
    assert_eq!(svc.delete(&me, "/api/v1/me/calendar-feed").await.0, 404, "nothing to revoke");
    assert_eq!(svc.get(None, "/api/v1/me/calendar-feed").await.0, 401);

    let (status, made) = svc.post_json(&me, "/api/v1/me/calendar-feed", "{}").await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43, "{made}");
    assert_eq!(made["path"], format!("/api/v1/calendars/{token}/events.ics"));
    let (_, shown) = svc.get(Some(&me), "/api/v1/me/calendar-feed").await;
    assert_eq!(
        (shown["active"].as_bool(), shown.get("token")),
        (Some(true), None),
        "the secret is shown once: {shown}"
    );
    // Only the hash is stored.
    let stored: String = sqlx::query_scalar(svc.db.backend().statement("SELECT token_hash FROM calendar_feeds"))
        .fetch_one(svc.db.exec())
        .await
        .unwrap();
    assert_ne!(stored, token);
    assert_eq!(stored.len(), 64);

    // Soonest first: a seat (confirmed), a wait (waitlisted), a canceled event (canceled);
    // left events, others' events and events over for more than 30 days are not in it.
    let later = svc.publish_event(organizer.id, 0).await;
    let mut sooner = snapshot(organizer.id, 1);
    sooner.starts_at -= time::Duration::hours(1);
    sooner.ends_at -= time::Duration::hours(1);
    svc.feed(
        &Envelope::new("cityevents-events", &cityevents_common::catalogue::EventPublished(sooner.clone())).unwrap(),
    )
    .await;
    assert_eq!(svc.join(&svc.user(), sooner.event_id, &key()).await.0, 201);
    let canceled = svc.publish_event(organizer.id, 0).await;
    let left = svc.publish_event(organizer.id, 0).await;
    let theirs = svc.publish_event(organizer.id, 0).await;
    for ev in [later.event_id, sooner.event_id, canceled.event_id, left.event_id] {
        assert_eq!(svc.join(&me, ev, &key()).await.0, 201);
    }
    assert_eq!(svc.join(&svc.user(), theirs.event_id, &key()).await.0, 201);
    assert_eq!(svc.delete(&me, &format!("/api/v1/events/{}/join", left.event_id)).await.0, 204);
    svc.cancel_event(&canceled).await;
    let (status, items) = resolve(&token).await;
    assert_eq!(status, 200, "{items}");
    let got: Vec<(String, &str)> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["event_id"].as_str().unwrap().to_owned(), i["status"].as_str().unwrap()))
        .collect();
    assert_eq!(got.len(), 3, "{items}");
    assert_eq!(got[0], (sooner.event_id.to_string(), "waitlisted"), "{items}");
    let rest: HashSet<(String, &str)> = got[1..].iter().cloned().collect();
    let want: HashSet<(String, &str)> =
        [(later.event_id.to_string(), "confirmed"), (canceled.event_id.to_string(), "canceled")].into_iter().collect();
    assert_eq!(rest, want, "{items}");

    // A new address replaces the old; revoking ends it; strangers' guesses find nothing.
    let (_, again) = svc.post_json(&me, "/api/v1/me/calendar-feed", "{}").await;
    let fresh = again["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token);
    assert_eq!(resolve(&token).await.0, 404, "the replaced address stops working");
    assert_eq!(resolve(&fresh).await.0, 200);
    for guess in ["", "short", &"A".repeat(43), "../../etc/passwd", &format!("{fresh}x")] {
        assert_eq!(resolve(guess).await.0, 404, "{guess}");
    }
    assert_eq!(svc.delete(&me, "/api/v1/me/calendar-feed").await.0, 204);
    assert_eq!(resolve(&fresh).await.0, 404, "a revoked address stops working");
    assert_eq!(svc.get(Some(&me), "/api/v1/me/calendar-feed").await.1["active"], false);
    svc.stop().await;
}
on_every_backend!(calendar_feeds_are_secret_replaceable_and_revocable);

// ---------------------------------------------------------------------------------------------

async fn ended_events_and_bad_tokens(backend: Backend) {
    let Some(svc) = Svc::start(backend).await else { return };
    let organizer = svc.user();
    let mut ended = snapshot(organizer.id, 5);
    ended.starts_at -= time::Duration::days(3);
    ended.ends_at -= time::Duration::days(3);
    svc.feed(
        &Envelope::new("cityevents-events", &cityevents_common::catalogue::EventPublished(ended.clone())).unwrap(),
    )
    .await;
    let (s, p) = svc.join(&svc.user(), ended.event_id, &key()).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("event_closed")), "{p}");
    assert_eq!(p["type"], "urn:keel:problem:conflict");

    // A token whose subject is not a user id is refused; so is a token from another issuer.
    let signer = KEY.jwt();
    let odd = signer.issue(&signer.claims("not-a-uuid")).unwrap();
    let r = svc.http.get(svc.url("/api/v1/me/joins")).bearer_auth(odd).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let other = keel::security::jwt::Jwt::builder()
        .issuer("someone-else")
        .audience(["cityevents"])
        .key(keel::security::jwt::JwtKey::hs256(KEY.kid(), &keel::Secret::new(KEY.secret())).unwrap())
        .sign_with(KEY.kid())
        .build()
        .unwrap();
    let t = other.issue(&other.claims(Uuid::now_v7().to_string())).unwrap();
    assert_eq!(svc.http.get(svc.url("/api/v1/me/joins")).bearer_auth(t).send().await.unwrap().status(), 401);
    svc.stop().await;
}
on_every_backend!(ended_events_and_bad_tokens);

#[test]
fn the_binary_answers_version_and_exits_78_on_a_bad_config() {
    cityevents_common::testing::check_binary_cli(env!("CARGO_BIN_EXE_cityevents-joins"), "cityevents-joins");
}
