//! Every input limit answers a 400 problem (`code: invalid_input`) naming the field, and the
//! largest allowed values are stored whole on every backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Svc, assert_invalid, at, hours, id};
use keel::data::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

cityevents_common::on_every_backend!(event_limits, list_and_batch_limits);

fn valid() -> Value {
    json!({
        "title": "Jazz night",
        "city": "Lyon",
        "category": "music",
        "starts_at": at(hours(24)),
        "ends_at": at(hours(26)),
        "capacity": 10,
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut v = valid();
    v[field] = value;
    v
}

fn without(field: &str) -> Value {
    let mut v = valid();
    v.as_object_mut().unwrap().remove(field);
    v
}

async fn event_limits(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let t = s.token(Uuid::now_v7(), "user");
    let long = |n: usize| json!("x".repeat(n));
    let cases: Vec<(Value, &str)> = vec![
        (with("title", json!("")), "title"),
        (with("title", json!("   ")), "title"),
        (with("title", long(121)), "title"),
        (with("title", json!("a\u{0}b")), "title"),
        (with("title", json!(5)), "title"),
        (with("title", json!(format!(" {} ", "x".repeat(119)))), "title"),
        (without("title"), "title"),
        (with("description", long(4001)), "description"),
        (with("city", json!("")), "city"),
        (with("city", long(81)), "city"),
        (without("city"), "city"),
        (with("category", json!(" ")), "category"),
        (with("category", long(81)), "category"),
        (with("starts_at", json!("tomorrow")), "starts_at"),
        (with("starts_at", json!("2030-05-01 19:00")), "starts_at"),
        (with("starts_at", json!("2030-05-01T25:00:00")), "starts_at"),
        (with("time_zone", json!("Europe/Nowhere")), "time_zone"),
        (with("venue", json!("v".repeat(201))), "venue"),
        (with("starts_at", json!("1999-12-31T23:00:00Z")), "starts_at"),
        (with("starts_at", json!(1_900_000_000)), "starts_at"),
        (without("starts_at"), "starts_at"),
        (with("ends_at", json!("2201-01-01T00:00:00Z")), "ends_at"),
        (with("ends_at", json!("")), "ends_at"),
        (with("ends_at", json!(at(hours(23)))), "ends_at"),
        (with("capacity", json!(-1)), "capacity"),
        (with("capacity", json!(100_001)), "capacity"),
        (with("capacity", json!("ten")), "capacity"),
        (with("capacity", json!(1.5)), "capacity"),
        (with("status", json!("published")), "status"),
        (with("organizer_id", json!(Uuid::now_v7())), "organizer_id"),
    ];
    for (body, field) in cases {
        let (status, problem) = s.post("/api/v1/events", Some(&t), body).await;
        assert_invalid(status, &problem, field);
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["type"], "urn:keel:problem:bad-request", "{problem}");
    }
    // ends_at equal to starts_at.
    let same = at(hours(30));
    let (status, problem) = s
        .post(
            "/api/v1/events",
            Some(&t),
            json!({"title": "x", "city": "y", "category": "music",
        "starts_at": same, "ends_at": same}),
        )
        .await;
    assert_invalid(status, &problem, "ends_at");
    // Categories come from the fixed set, any case, stored by name.
    let (status, problem) = s.post("/api/v1/events", Some(&t), with("category", json!("jazz"))).await;
    assert_invalid(status, &problem, "category");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("music, arts"), "{problem}");
    let e = s.create(&t, with("category", json!(" Outdoors "))).await;
    assert_eq!(e["category"], "outdoors");
    // Several bad fields are named together.
    let mut body = with("title", json!(""));
    body["capacity"] = json!(-5);
    let (status, problem) = s.post("/api/v1/events", Some(&t), body).await;
    assert_invalid(status, &problem, "title");
    assert_invalid(status, &problem, "capacity");

    // Malformed JSON, trailing garbage and a body that is not an object.
    for raw in ["{\"title\": ", "{} {}", "[]", "null", ""] {
        let resp = s
            .http
            .post(format!("{}/api/v1/events", s.base))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_input", "{raw:?}: {body}");
    }
    // Not JSON at all.
    let resp = s
        .http
        .post(format!("{}/api/v1/events", s.base))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // A body over the 64 KiB limit is refused before it is parsed. Just over: the server answers
    // 413 and closes without reading the rest, and a body much larger than the socket buffers
    // could still be being written then (the client would see a reset instead of the answer).
    let (status, _, _) =
        s.send(Method::POST, "/api/v1/events", Some(&t), Some(with("description", long(80_000))), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // The largest values are accepted and stored whole (multi-byte characters count as one).
    let big = json!({
        "title": "é".repeat(120),
        "description": "ü".repeat(4000),
        "city": "Ö".repeat(80),
        "category": "wellbeing",
        "starts_at": "2000-01-01T00:00:00Z",
        "ends_at": "2200-12-31T23:59:59.999999Z",
        "capacity": 100_000,
    });
    let e = s.create(&t, big.clone()).await;
    for f in ["title", "description", "city", "category", "starts_at", "ends_at", "capacity"] {
        assert_eq!(e[f], big[f], "{f}");
    }
    let (_, again) = s.get(&format!("/api/v1/events/{}", id(&e)), Some(&t)).await;
    assert_eq!(again, e, "read back unchanged");
    let e0 = s.create(&t, with("capacity", json!(0))).await;
    assert_eq!(e0["capacity"], 0);
    // JSON Schema's integer: a whole number written with a fraction is that number.
    let e5 = s.create(&t, with("capacity", json!(5.0))).await;
    assert_eq!(e5["capacity"], 5);

    // The same limits on PATCH, plus the order of the merged times.
    let path = format!("/api/v1/events/{}", id(&e0));
    let starts = e0["starts_at"].as_str().unwrap().to_owned();
    let patches: Vec<(Value, &str)> = vec![
        (json!({"title": ""}), "title"),
        (json!({"title": long(121)}), "title"),
        (json!({"description": long(4001)}), "description"),
        (json!({"city": long(81)}), "city"),
        (json!({"category": ""}), "category"),
        (json!({"starts_at": "soon"}), "starts_at"),
        (json!({"ends_at": starts}), "ends_at"),
        (json!({"starts_at": at(hours(100))}), "ends_at"),
        (json!({"capacity": 100_001}), "capacity"),
        (json!({"capacity": -1}), "capacity"),
        (json!({"status": "published"}), "status"),
        (json!({"id": Uuid::now_v7()}), "id"),
        // The document's `minProperties: 1`: a patch that changes nothing is refused.
        (json!({}), "body"),
        (json!({"title": null, "capacity": null}), "body"),
        (json!({"capacity": 2.5}), "capacity"),
    ];
    for (body, field) in patches {
        let (status, problem) = s.patch(&path, Some(&t), body).await;
        assert_invalid(status, &problem, field);
    }
    assert_eq!(s.get(&path, Some(&t)).await.1, e0, "no refused patch changed anything");
    let (status, patched) = s.patch(&path, Some(&t), json!({"capacity": 7.0})).await;
    assert_eq!((status, &patched["capacity"]), (StatusCode::OK, &json!(7)), "{patched}");
    s.stop().await;
}

async fn list_and_batch_limits(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let cases = [
        ("sort=title", "sort"),
        ("sort=starts_at;drop", "sort"),
        ("sort=-id", "sort"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("cursor=%25%25%25", "cursor"),
        ("cursor=eyJrIjoxLCJpIjoieCJ9", "cursor"),
        ("from=yesterday", "from"),
        ("to=2030-13-01T00:00:00Z", "to"),
        ("from=2030-02-01T00:00:00Z&to=2030-01-01T00:00:00Z", "to"),
        ("from=2030-01-01T00:00:00Z&to=2030-01-01T00:00:00Z", "to"),
    ];
    for (q, field) in cases {
        let (status, problem) = s.get(&format!("/api/v1/events?{q}"), None).await;
        assert_invalid(status, &problem, field);
    }
    let (status, problem) = s.get(&format!("/api/v1/events?city={}", "x".repeat(81)), None).await;
    assert_invalid(status, &problem, "city");
    let (status, problem) = s.get(&format!("/api/v1/events?category={}", "x".repeat(81)), None).await;
    assert_invalid(status, &problem, "category");
    for q in ["limit=1", "limit=100", "sort=-created_at&limit=5", "city=&category=&from=&to=&cursor="] {
        assert_eq!(s.get(&format!("/api/v1/events?{q}"), None).await.0, StatusCode::OK, "{q}");
    }
    let t = s.token(Uuid::now_v7(), "user");
    let (status, problem) = s.get("/api/v1/me/events?limit=0", Some(&t)).await;
    assert_invalid(status, &problem, "limit");
    assert_eq!(s.get("/api/v1/me/events", None).await.0, StatusCode::UNAUTHORIZED);

    let ids = |n: usize| json!((0..n).map(|_| Uuid::now_v7().to_string()).collect::<Vec<_>>());
    let batch: Vec<(Value, &str)> = vec![
        (json!({"ids": []}), "ids"),
        (json!({"ids": ids(101)}), "ids"),
        (json!({"ids": ["nope"]}), "ids[0]"),
        (json!({"ids": [Uuid::now_v7(), 7]}), "ids[1]"),
        (json!({"ids": "x"}), "ids"),
        (json!({}), "ids"),
        (json!({"ids": ids(1), "more": true}), "more"),
    ];
    for (body, field) in batch {
        let (status, problem) = s.post("/api/v1/events/batch", None, body).await;
        assert_invalid(status, &problem, field);
    }
    let (status, body) = s.post("/api/v1/events/batch", None, json!({"ids": ids(100)})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"events": {}})));
    s.stop().await;
}
