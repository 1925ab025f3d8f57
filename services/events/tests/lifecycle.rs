//! Create, read, update, publish and cancel, with every rule: drafts are private, only the
//! organizer changes an event (admins may cancel any), only a future draft is published, a
//! canceled or ended event is immutable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Svc, assert_conflict, assert_invalid, at, hours, id};
use keel::data::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

cityevents_common::on_every_backend!(
    crud_and_visibility,
    publish_and_cancel_rules,
    ended_events_are_immutable,
    venue_time_zone_and_cancel_reason,
    unpublish_and_moderation,
    a_banned_organizers_events_are_hidden,
    online_events_give_their_link_to_seat_holders
);

async fn online_events_give_their_link_to_seat_holders(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (org, seated, waiting, stranger, moderator) =
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (to, ts, tw, tx, tm) = (
        s.token(org, "user"),
        s.token(seated, "user"),
        s.token(waiting, "user"),
        s.token(stranger, "user"),
        s.token(moderator, "moderator"),
    );
    // Bad links are refused naming the field; a good one is trimmed.
    for bad in ["http://meet.example.com/x", "javascript:alert(1)", "https://u:p@meet.example.com/", "meet"] {
        let (status, p) = s.post("/api/v1/events", Some(&to), common_event(json!({"online_url": bad}))).await;
        assert_invalid(status, &p, "online_url");
    }
    let link = "https://meet.example.com/jazz?pwd=s3cret";
    let e = s.create_published(&to, json!({"online_url": format!("  {link} ")})).await;
    let path = format!("/api/v1/events/{}", id(&e));
    // Everyone sees that it is online; only the organizer sees the link on the event.
    let (_, public) = s.get(&path, None).await;
    assert_eq!((public["online"].as_bool(), public.get("online_url")), (Some(true), None), "{public}");
    assert!(s.get(&path, Some(&ts)).await.1.get("online_url").is_none());
    let (_, own, headers) = s.send(Method::GET, &path, Some(&to), None, &[]).await;
    assert_eq!(own["online_url"], link);
    assert_eq!(headers["cache-control"], "private, no-store", "the link is kept out of caches");
    let (_, mine) = s.get("/api/v1/me/events", Some(&to)).await;
    assert_eq!(mine["items"][0]["online_url"], link);
    let (_, listed) = s.get("/api/v1/events?limit=100", None).await;
    assert!(!listed.to_string().contains("meet.example.com"), "never in a public list");
    let (_, batch) = s.post("/api/v1/events/batch", None, json!({"ids": [id(&e)]})).await;
    assert!(!batch.to_string().contains("meet.example.com"), "nor in a batch");

    // The link: the organizer, a moderator and a seat holder; not a waitlisted user or a stranger.
    let link_path = format!("{path}/online-link");
    s.joins.place(&id(&e), &ts, "confirmed");
    s.joins.place(&id(&e), &tw, "waitlisted");
    for (who, token) in [("organizer", &to), ("moderator", &tm), ("seat holder", &ts)] {
        let (status, body, headers) = s.send(Method::GET, &link_path, Some(token), None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{who}: {body}");
        assert_eq!(headers["cache-control"], "private, no-store", "{who}");
        assert_eq!(body["url"], link, "{who}");
    }
    for (who, token) in [("waitlisted", &tw), ("stranger", &tx)] {
        let (status, p) = s.get(&link_path, Some(token)).await;
        assert_eq!((status, p["code"].as_str()), (StatusCode::FORBIDDEN, Some("seat_required")), "{who}: {p}");
    }
    assert_eq!(s.get(&link_path, None).await.0, StatusCode::UNAUTHORIZED);
    // The joins service cannot tell: 503, no link.
    s.joins.down(true);
    let (status, p) = s.get(&link_path, Some(&ts)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{p}");
    assert!(!p.to_string().contains("meet.example.com"));
    s.joins.down(false);

    // Not online: 404. The organizer removes the link with "", and it is online no more.
    let offline = s.create_published(&to, json!({})).await;
    assert_eq!(offline["online"], false);
    assert_eq!(
        s.get(&format!("/api/v1/events/{}/online-link", id(&offline)), Some(&to)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, cleared) = s.patch(&path, Some(&to), json!({"online_url": ""})).await;
    assert_eq!((status, cleared["online"].as_bool(), cleared.get("online_url")), (StatusCode::OK, Some(false), None));
    assert_eq!(s.get(&link_path, Some(&ts)).await.0, StatusCode::NOT_FOUND);
    let (_, again) = s.patch(&path, Some(&to), json!({"online_url": link})).await;
    assert_eq!(again["online_url"], link);

    // A draft's link is nobody else's business: 404 to a would-be seat holder.
    let draft = s.create(&to, json!({"online_url": link})).await;
    s.joins.place(&id(&draft), &ts, "confirmed");
    assert_eq!(s.get(&format!("/api/v1/events/{}/online-link", id(&draft)), Some(&ts)).await.0, StatusCode::NOT_FOUND);

    // Called off: 409, to everyone.
    assert_eq!(s.post_empty(&format!("{path}/cancel"), Some(&to)).await.0, StatusCode::OK);
    let (status, p) = s.get(&link_path, Some(&ts)).await;
    assert_conflict(status, &p, "event_canceled");
    s.stop().await;
}

/// A valid new event with `extra` fields.
fn common_event(extra: Value) -> Value {
    let mut e = json!({
        "title": "Online jazz", "city": "Lyon", "category": "music",
        "starts_at": at(hours(24)), "ends_at": at(hours(26)),
    });
    e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    e
}

async fn crud_and_visibility(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb) = (s.token(alice, "user"), s.token(bob, "user"));

    // Creating needs a token.
    let (status, body) = s.post("/api/v1/events", None, json!({"title": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = s.post("/api/v1/events", Some("not-a-jwt"), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A subject that is not a user id is refused.
    let (status, body) = s.post("/api/v1/events", Some(&s.token_for("robot")), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let starts = "2031-06-01T19:00:00+02:00";
    let (status, e, headers) = s
        .send(
            Method::POST,
            "/api/v1/events",
            Some(&ta),
            Some(json!({"title": "  Jazz night ", "city": "Lyon", "category": "music",
                        "starts_at": starts, "ends_at": "2031-06-01T22:30:00.25Z", "capacity": 40})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    let eid = id(&e);
    assert_eq!(headers["location"], format!("/api/v1/events/{eid}").as_str());
    assert_eq!(Uuid::parse_str(&eid).unwrap().get_version_num(), 7);
    assert_eq!(e["organizer_id"], alice.to_string());
    assert_eq!(e["title"], "Jazz night", "trimmed");
    assert_eq!(e["description"], "", "defaults to empty");
    assert_eq!(e["starts_at"], "2031-06-01T17:00:00Z", "stored and shown in UTC");
    assert_eq!(e["ends_at"], "2031-06-01T22:30:00.25Z");
    assert_eq!(e["capacity"], 40);
    assert_eq!(e["status"], "draft");
    assert_eq!(e["created_at"], e["updated_at"]);
    assert_eq!(e["version"], 1, "a new event is version 1");
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = [
        "id",
        "organizer_id",
        "title",
        "description",
        "city",
        "category",
        "starts_at",
        "ends_at",
        "capacity",
        "status",
        "created_at",
        "updated_at",
        "venue",
        "time_zone",
        "starts_at_local",
        "ends_at_local",
        "status_reason",
        "version",
        "online",
    ];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected);

    // A draft is its organizer's only; anyone else gets 404, as if it did not exist.
    let path = format!("/api/v1/events/{eid}");
    assert_eq!(s.get(&path, Some(&ta)).await, (StatusCode::OK, e.clone()));
    assert_eq!(s.get(&path, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get(&path, Some(&tb)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.patch(&path, Some(&tb), json!({"title": "mine now"})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.post_empty(&format!("{path}/publish"), Some(&tb)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.post_empty(&format!("{path}/cancel"), Some(&tb)).await.0, StatusCode::NOT_FOUND);

    // Partial update: only the given fields change.
    let (status, u) = s.patch(&path, Some(&ta), json!({"title": "Jazz & blues", "description": "Bring a chair"})).await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["title"], "Jazz & blues");
    assert_eq!(u["description"], "Bring a chair");
    for same in ["city", "category", "starts_at", "ends_at", "capacity", "status", "created_at"] {
        assert_eq!(u[same], e[same], "{same}");
    }
    assert!(u["updated_at"].as_str() >= e["updated_at"].as_str());
    // Every field can be changed, and a change that changes nothing is a no-op.
    let (status, u2) = s
        .patch(
            &path,
            Some(&ta),
            json!({"city": "Paris", "category": "nightlife", "starts_at": "2031-07-01T18:00:00Z",
                   "ends_at": "2031-07-01T21:00:00Z", "capacity": 0, "description": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{u2}");
    assert_eq!(
        (&u2["city"], &u2["category"], &u2["starts_at"], &u2["ends_at"], &u2["capacity"], &u2["description"]),
        (
            &json!("Paris"),
            &json!("nightlife"),
            &json!("2031-07-01T18:00:00Z"),
            &json!("2031-07-01T21:00:00Z"),
            &json!(0),
            &json!("")
        )
    );
    let (status, u3) = s.patch(&path, Some(&ta), json!({"city": "Paris"})).await;
    assert_eq!((status, &u3), (StatusCode::OK, &u2));
    // `{}` changes nothing and is refused (the document's `minProperties: 1`); unchanged.
    let (status, refused) = s.patch(&path, Some(&ta), json!({})).await;
    assert_eq!((status, &refused["errors"][0]["field"]), (StatusCode::BAD_REQUEST, &json!("body")), "{refused}");
    assert_eq!(s.get(&path, Some(&ta)).await.1, u2);

    // Published: everyone sees it, only the organizer changes it (403 for others).
    let (status, p) = s.post_empty(&format!("{path}/publish"), Some(&ta)).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["status"], "published");
    assert_eq!(s.get(&path, None).await, (StatusCode::OK, p.clone()));
    assert_eq!(s.get(&path, Some(&tb)).await, (StatusCode::OK, p.clone()));
    let (status, body) = s.patch(&path, Some(&tb), json!({"title": "mine now"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.post_empty(&format!("{path}/cancel"), Some(&tb)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.post_empty(&format!("{path}/publish"), Some(&tb)).await.0, StatusCode::FORBIDDEN);
    let (status, p2) = s.patch(&path, Some(&ta), json!({"capacity": 100})).await;
    assert_eq!((status, &p2["capacity"], &p2["status"]), (StatusCode::OK, &json!(100), &json!("published")));

    // Unknown and malformed ids.
    let unknown = format!("/api/v1/events/{}", Uuid::now_v7());
    assert_eq!(s.get(&unknown, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.patch(&unknown, Some(&ta), json!({"title": "x"})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.post_empty(&format!("{unknown}/publish"), Some(&ta)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.post_empty(&format!("{unknown}/cancel"), Some(&ta)).await.0, StatusCode::NOT_FOUND);
    let (status, body) = s.get("/api/v1/events/not-a-uuid", None).await;
    assert_invalid(status, &body, "id");
    // Changes need a token.
    assert_eq!(s.patch(&path, None, json!({"title": "x"})).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.post_empty(&format!("{path}/cancel"), None).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

async fn publish_and_cancel_rules(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob, admin) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb, tadmin) = (s.token(alice, "user"), s.token(bob, "user"), s.token(admin, "admin"));

    // Only a draft that starts in the future is publishable.
    let started = s.create(&ta, json!({"starts_at": at(hours(-1)), "ends_at": at(hours(2))})).await;
    let (status, body) = s.post_empty(&format!("/api/v1/events/{}/publish", id(&started)), Some(&ta)).await;
    assert_conflict(status, &body, "not_publishable");
    let e = s.create_published(&ta, json!({})).await;
    let path = format!("/api/v1/events/{}", id(&e));
    let (status, body) = s.post_empty(&format!("{path}/publish"), Some(&ta)).await;
    assert_conflict(status, &body, "not_publishable");

    // An admin may cancel anyone's event; it stays public, and is frozen.
    let (status, p) = s.post_empty(&format!("{path}/cancel"), Some(&tadmin)).await;
    assert_invalid(status, &p, "reason");
    let (status, c) = s.post(&format!("{path}/cancel"), Some(&tadmin), json!({"reason": "Reported twice"})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["status"], "canceled");
    assert_eq!(c["organizer_id"], alice.to_string());
    assert_eq!(s.get(&path, Some(&tb)).await, (StatusCode::OK, c.clone()));
    let (status, body) = s.patch(&path, Some(&ta), json!({"title": "Back on"})).await;
    assert_conflict(status, &body, "event_canceled");
    let (status, body) = s.post_empty(&format!("{path}/publish"), Some(&ta)).await;
    assert_conflict(status, &body, "event_canceled");
    let (status, body) = s.post_empty(&format!("{path}/cancel"), Some(&ta)).await;
    assert_conflict(status, &body, "event_canceled");
    assert_eq!(s.get(&path, None).await.1, c, "nothing changed");

    // An admin has no other powers: no edits of others' events.
    let other = s.create_published(&tb, json!({})).await;
    let (status, _) = s.patch(&format!("/api/v1/events/{}", id(&other)), Some(&tadmin), json!({"title": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The organizer cancels a draft: it never was public and stays private.
    let draft = s.create(&ta, json!({})).await;
    let dpath = format!("/api/v1/events/{}", id(&draft));
    let (status, d) = s.post_empty(&format!("{dpath}/cancel"), Some(&ta)).await;
    assert_eq!((status, &d["status"]), (StatusCode::OK, &json!("canceled")));
    assert_eq!(s.get(&dpath, Some(&ta)).await, (StatusCode::OK, d.clone()));
    assert_eq!(s.get(&dpath, Some(&tb)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get(&dpath, None).await.0, StatusCode::NOT_FOUND);
    let (status, body) = s.post_empty(&format!("{dpath}/publish"), Some(&ta)).await;
    assert_conflict(status, &body, "event_canceled");
    // An admin may cancel a draft too (it is not visible to them otherwise).
    let draft2 = s.create(&tb, json!({})).await;
    let (status, d2) =
        s.post(&format!("/api/v1/events/{}/cancel", id(&draft2)), Some(&tadmin), json!({"reason": "Spam"})).await;
    assert_eq!((status, &d2["status"]), (StatusCode::OK, &json!("canceled")));
    s.stop().await;
}

async fn venue_time_zone_and_cancel_reason(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let alice = Uuid::now_v7();
    let ta = s.token(alice, "user");

    // Local times without an offset are read in the event's zone and shown back in it.
    let e = s
        .create(
            &ta,
            json!({"venue": "Hot Clube, Praça da Alegria 48", "time_zone": "europe/lisbon",
                   "starts_at": "2031-07-01T21:30", "ends_at": "2031-07-01T23:59:59"}),
        )
        .await;
    assert_eq!(e["venue"], "Hot Clube, Praça da Alegria 48");
    assert_eq!(e["time_zone"], "Europe/Lisbon", "the canonical name");
    assert_eq!(e["starts_at"], "2031-07-01T20:30:00Z");
    assert_eq!(e["starts_at_local"], "2031-07-01T21:30:00+01:00");
    assert_eq!(e["ends_at_local"], "2031-07-01T23:59:59+01:00");
    assert_eq!(e["status_reason"], Value::Null);
    let path = format!("/api/v1/events/{}", id(&e));

    // A new zone alone keeps the instants; sent with a time, the time is read in the new zone.
    let (status, moved) = s.patch(&path, Some(&ta), json!({"time_zone": "America/New_York"})).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(
        (moved["starts_at"].as_str(), moved["starts_at_local"].as_str()),
        (Some("2031-07-01T20:30:00Z"), Some("2031-07-01T16:30:00-04:00"))
    );
    let (status, moved) = s
        .patch(
            &path,
            Some(&ta),
            json!({"time_zone": "Europe/Berlin", "starts_at": "2031-12-01T19:00", "ends_at": "2031-12-01T22:00"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["starts_at"], "2031-12-01T18:00:00Z", "winter: UTC+1");
    assert_eq!(moved["starts_at_local"], "2031-12-01T19:00:00+01:00");
    assert_eq!(s.patch(&path, Some(&ta), json!({"venue": ""})).await.1["venue"], "");

    // Bad zones, venues and local times are named.
    for (body, field) in [
        (json!({"time_zone": "Mars/Olympus"}), "time_zone"),
        (json!({"time_zone": ""}), "time_zone"),
        (json!({"venue": "v".repeat(201)}), "venue"),
        (json!({"starts_at": "2031-12-01 19:00 tomorrow"}), "starts_at"),
    ] {
        let (status, p) = s.patch(&path, Some(&ta), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body}: {p}");
    }

    // Canceled with a reason: kept, shown, and bounded.
    let published = s.create_published(&ta, json!({})).await;
    let cancel = format!("/api/v1/events/{}/cancel", id(&published));
    let (status, p) = s.post(&cancel, Some(&ta), json!({"reason": "r".repeat(501)})).await;
    assert_eq!((status, p["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("reason")), "{p}");
    let (status, p) = s.post(&cancel, Some(&ta), json!({"why": "x"})).await;
    assert_eq!((status, p["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("why")), "{p}");
    let (status, c) = s.post(&cancel, Some(&ta), json!({"reason": "Venue flooded"})).await;
    assert_eq!((status, c["status_reason"].as_str()), (StatusCode::OK, Some("Venue flooded")), "{c}");
    assert_eq!(s.get(&format!("/api/v1/events/{}", id(&published)), None).await.1["status_reason"], "Venue flooded");
    s.stop().await;
}
async fn public_ids(s: &Svc) -> Vec<String> {
    let (_, page) = s.get("/api/v1/events?limit=100", None).await;
    page["items"].as_array().unwrap().iter().map(id).collect()
}

async fn unpublish_and_moderation(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob, moderator) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb, tm) = (s.token(alice, "user"), s.token(bob, "user"), s.token(moderator, "moderator"));
    // Nobody joined: the organizer takes it back to draft; it is private again.
    let e = s.create_published(&ta, json!({})).await;
    let path = format!("/api/v1/events/{}", id(&e));
    let (status, d) = s.post_empty(&format!("{path}/unpublish"), Some(&ta)).await;
    assert_eq!((status, d["status"].as_str()), (StatusCode::OK, Some("draft")), "{d}");
    assert_eq!(s.get(&path, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get(&path, Some(&tb)).await.0, StatusCode::NOT_FOUND);
    assert!(!public_ids(&s).await.contains(&id(&e)));
    let (status, body) = s.post_empty(&format!("{path}/unpublish"), Some(&ta)).await;
    assert_conflict(status, &body, "not_published");
    // Published again, then canceled after another unpublish: it stays private.
    assert_eq!(s.post_empty(&format!("{path}/publish"), Some(&ta)).await.0, StatusCode::OK);
    assert!(public_ids(&s).await.contains(&id(&e)));
    assert_eq!(s.post_empty(&format!("{path}/unpublish"), Some(&ta)).await.0, StatusCode::OK);
    assert_eq!(s.post_empty(&format!("{path}/cancel"), Some(&ta)).await.0, StatusCode::OK);
    assert_eq!(s.get(&path, None).await.0, StatusCode::NOT_FOUND, "never public as canceled");

    // Someone joined: the organizer is refused and told to cancel instead.
    let joined = s.create_published(&ta, json!({})).await;
    let jpath = format!("/api/v1/events/{}", id(&joined));
    s.joins.set(&id(&joined), 1, 0);
    let (status, body) = s.post_empty(&format!("{jpath}/unpublish"), Some(&ta)).await;
    assert_conflict(status, &body, "event_has_participants");
    s.joins.set(&id(&joined), 0, 2);
    let (status, body) = s.post_empty(&format!("{jpath}/unpublish"), Some(&ta)).await;
    assert_conflict(status, &body, "event_has_participants");
    // The joins service cannot tell: 503, nothing changes.
    s.joins.down(true);
    let (status, body) = s.post_empty(&format!("{jpath}/unpublish"), Some(&ta)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    s.joins.down(false);
    assert_eq!(s.get(&jpath, None).await.1["status"], "published");

    // Others: 403 for a user, a reason required of a moderator, who then may whatever the joins.
    let (status, _) = s.post_empty(&format!("{jpath}/unpublish"), Some(&tb)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, p) = s.post_empty(&format!("{jpath}/unpublish"), Some(&tm)).await;
    assert_invalid(status, &p, "reason");
    let (status, p) = s.post(&format!("{jpath}/unpublish"), Some(&tm), json!({"reason": "   "})).await;
    assert_invalid(status, &p, "reason");
    let calls = s.joins.calls.load(std::sync::atomic::Ordering::SeqCst);
    let (status, d) = s.post(&format!("{jpath}/unpublish"), Some(&tm), json!({"reason": "Spam listing"})).await;
    assert_eq!((status, d["status"].as_str()), (StatusCode::OK, Some("draft")), "{d}");
    assert_eq!(s.joins.calls.load(std::sync::atomic::Ordering::SeqCst), calls, "a moderator needs no count");
    let (_, seen) = s.get(&jpath, Some(&ta)).await;
    assert_eq!(seen["status_reason"], "Spam listing", "the organizer sees why");
    assert_eq!(s.get(&jpath, Some(&tm)).await.0, StatusCode::NOT_FOUND, "a draft is its organizer's");
    // Republished, the reason is gone.
    let (_, p) = s.post_empty(&format!("{jpath}/publish"), Some(&ta)).await;
    assert_eq!(p["status_reason"], Value::Null, "{p}");

    // A moderator cancels anyone's event with a reason (without one: 400); a user may not.
    let other = s.create_published(&tb, json!({})).await;
    let cancel = format!("/api/v1/events/{}/cancel", id(&other));
    assert_eq!(s.post_empty(&cancel, Some(&ta)).await.0, StatusCode::FORBIDDEN);
    let (status, p) = s.post_empty(&cancel, Some(&tm)).await;
    assert_invalid(status, &p, "reason");
    let (status, c) = s.post(&cancel, Some(&tm), json!({"reason": "Fraudulent"})).await;
    assert_eq!((status, c["status_reason"].as_str()), (StatusCode::OK, Some("Fraudulent")), "{c}");
    let (status, body) =
        s.post(&format!("/api/v1/events/{}/unpublish", id(&other)), Some(&tm), json!({"reason": "x"})).await;
    assert_conflict(status, &body, "event_canceled");
    // A moderator edits nothing.
    let (status, _) = s.patch(&format!("/api/v1/events/{}", id(&joined)), Some(&tm), json!({"title": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Each moderator action, and only those, went to the audit log through the moderation topic.
    let recorded = s.moderation.wait_for(&format!("event:{}", id(&other)), 1).await;
    let c: cityevents_common::catalogue::ModerationRecorded = recorded[0].decode().unwrap();
    assert_eq!((c.actor, c.action.as_str(), c.reason.as_deref()), (moderator, "event.cancel", Some("Fraudulent")));
    assert_eq!(c.details["organizer_id"], bob.to_string());
    let recorded = s.moderation.wait_for(&format!("event:{}", id(&joined)), 1).await;
    let u: cityevents_common::catalogue::ModerationRecorded = recorded[0].decode().unwrap();
    assert_eq!((u.action.as_str(), u.reason.as_deref()), ("event.unpublish", Some("Spam listing")));
    assert!(s.moderation.about(&format!("event:{}", id(&e))).is_empty(), "the organizer's own is no moderation");

    // An event that has ended cannot go back to draft.
    let past = s.create_published(&ta, json!({})).await;
    s.shift(&past, 48).await;
    let (status, body) = s.post_empty(&format!("/api/v1/events/{}/unpublish", id(&past)), Some(&ta)).await;
    assert_conflict(status, &body, "event_ended");
    s.stop().await;
}

async fn a_banned_organizers_events_are_hidden(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob, moderator) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb, tm) = (s.token(alice, "user"), s.token(bob, "user"), s.token(moderator, "moderator"));
    let e = s.create_published(&ta, json!({"city": "Hiddenville"})).await;
    let kept = s.create_published(&tb, json!({"city": "Hiddenville"})).await;
    let path = format!("/api/v1/events/{}", id(&e));
    let banned_at = time::OffsetDateTime::now_utc();
    s.publish(
        cityevents_common::catalogue::ACCOUNTS_TOPIC,
        &cityevents_common::catalogue::AccountBanned {
            user_id: alice,
            by: moderator,
            reason: "spam".into(),
            at: banned_at,
            version: 1,
        },
    )
    .await;
    cityevents_common::testing::eventually("the event hidden", Duration::from_secs(10), || async {
        (s.get(&path, None).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(!public_ids(&s).await.contains(&id(&e)));
    assert!(public_ids(&s).await.contains(&id(&kept)), "others' events stay");
    assert_eq!(s.get(&path, Some(&tb)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get(&path, Some(&tm)).await.0, StatusCode::OK, "moderators still see it");
    assert_eq!(s.get(&path, Some(&ta)).await.0, StatusCode::OK, "its organizer too");
    let (_, batch) = s.post("/api/v1/events/batch", None, json!({"ids": [id(&e), id(&kept)]})).await;
    assert_eq!(batch["events"].as_object().unwrap().len(), 1, "{batch}");
    let (_, cities) = s.get("/api/v1/meta/cities?q=hiddenv", None).await;
    assert_eq!(cities["items"][0]["events"], 1, "{cities}");
    // A moderator can still act on it.
    let (status, _) = s.post(&format!("{path}/unpublish"), Some(&tm), json!({"reason": "clean-up"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.post_empty(&format!("{path}/publish"), Some(&ta)).await.0, StatusCode::OK);

    // Lifted: shown again; a ban older than that arriving late changes nothing.
    let lifted_at = banned_at + time::Duration::seconds(5);
    s.publish(
        cityevents_common::catalogue::ACCOUNTS_TOPIC,
        &cityevents_common::catalogue::AccountUnbanned { user_id: alice, by: moderator, at: lifted_at, version: 2 },
    )
    .await;
    cityevents_common::testing::eventually("the event shown again", Duration::from_secs(10), || async {
        (s.get(&path, None).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    s.publish(
        cityevents_common::catalogue::ACCOUNTS_TOPIC,
        &cityevents_common::catalogue::AccountBanned {
            user_id: alice,
            by: moderator,
            reason: "old".into(),
            // A later wall clock, an older version: the version decides.
            at: banned_at + time::Duration::seconds(60),
            version: 1,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.get(&path, None).await.0, StatusCode::OK, "a stale ban is ignored");
    assert!(public_ids(&s).await.contains(&id(&e)));
    s.stop().await;
}

async fn ended_events_are_immutable(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let alice = Uuid::now_v7();
    let ta = s.token(alice, "user");

    // A draft that is already over.
    let past = s.create(&ta, json!({"starts_at": at(hours(-3)), "ends_at": at(hours(-1))})).await;
    let path = format!("/api/v1/events/{}", id(&past));
    let (status, body) = s.patch(&path, Some(&ta), json!({"title": "again"})).await;
    assert_conflict(status, &body, "event_ended");
    let (status, body) = s.post_empty(&format!("{path}/cancel"), Some(&ta)).await;
    assert_conflict(status, &body, "event_ended");
    let (status, body) = s.post_empty(&format!("{path}/publish"), Some(&ta)).await;
    assert_conflict(status, &body, "not_publishable");

    // A published event that ends while we wait (the lead leaves time to publish it first).
    let soon = time::Duration::milliseconds(2500);
    let e = s
        .create_published(&ta, json!({"starts_at": at(soon), "ends_at": at(soon + time::Duration::milliseconds(300))}))
        .await;
    let path = format!("/api/v1/events/{}", id(&e));
    let ends =
        time::OffsetDateTime::parse(e["ends_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let wait = ends - time::OffsetDateTime::now_utc() + time::Duration::milliseconds(200);
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    let (status, body) = s.patch(&path, Some(&ta), json!({"capacity": 3})).await;
    assert_conflict(status, &body, "event_ended");
    let (status, body) = s.post_empty(&format!("{path}/cancel"), Some(&ta)).await;
    assert_conflict(status, &body, "event_ended");
    let (status, body): (StatusCode, Value) = s.get(&path, None).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("published")));
    s.stop().await;
}

#[test]
fn the_binary_answers_version_and_exits_78_on_a_bad_config() {
    cityevents_common::testing::check_binary_cli(env!("CARGO_BIN_EXE_cityevents-events"), "cityevents-events");
}
