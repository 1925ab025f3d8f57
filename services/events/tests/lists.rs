//! The public list (published only; filters; the sort allowlist; keyset pages that stay stable
//! while rows are inserted), the organizer's own list, and the batch lookup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::{Svc, at, hours, id};
use keel::data::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

cityevents_common::on_every_backend!(filters_and_sorts, keyset_pages_are_stable_under_inserts, my_events, batch_lookup);

/// Follows `next_cursor` from `first` (a query string without `cursor`) to the end.
async fn walk(s: &Svc, path: &str, query: &str, token: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let q = match &cursor {
            None => query.to_owned(),
            Some(c) => format!("{query}&cursor={c}"),
        };
        let (status, page) = s.get(&format!("{path}?{q}"), token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(id).collect()
}

async fn filters_and_sorts(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb) = (s.token(alice, "user"), s.token(bob, "user"));

    // Published events in several cities and categories, created in this order.
    let specs = [
        ("Lyon", "music", 30),
        ("lyon", "Theatre", 10),
        ("Paris", "MUSIC", 20),
        ("Évry", "music", 50),
        ("Lyon", "music", 40),
    ];
    let mut published = Vec::new();
    for (city, category, h) in specs {
        let t = if published.len() % 2 == 0 { &ta } else { &tb };
        let e = s
            .create_published(
                t,
                json!({"city": city, "category": category, "starts_at": at(hours(h)),
                                        "ends_at": at(hours(h + 2))}),
            )
            .await;
        published.push(e);
    }
    // Not listed: a draft, and a canceled event.
    s.create(&ta, json!({"city": "Lyon", "starts_at": at(hours(5)), "ends_at": at(hours(6))})).await;
    let canceled = s.create_published(&ta, json!({"city": "Lyon"})).await;
    let (status, _) = s.post_empty(&format!("/api/v1/events/{}/cancel", id(&canceled)), Some(&ta)).await;
    assert_eq!(status, StatusCode::OK);

    let by = |key: &str, desc: bool| {
        let mut v = published.clone();
        v.sort_by(|a, b| {
            let o = a[key].as_str().unwrap().cmp(b[key].as_str().unwrap()).then(id(a).cmp(&id(b)));
            if desc { o.reverse() } else { o }
        });
        ids(&v)
    };
    let list = |q: &'static str| {
        let s = &s;
        async move {
            let (status, page) = s.get(&format!("/api/v1/events?{q}"), None).await;
            assert_eq!(status, StatusCode::OK, "{q}: {page}");
            assert_eq!(page["next_cursor"], Value::Null, "{q}");
            ids(page["items"].as_array().unwrap())
        }
    };

    // Every allowed order; the default is soonest first. Published only.
    assert_eq!(list("").await, by("starts_at", false));
    assert_eq!(list("sort=starts_at").await, by("starts_at", false));
    assert_eq!(list("sort=-starts_at").await, by("starts_at", true));
    assert_eq!(list("sort=created_at").await, ids(&published));
    let mut newest = ids(&published);
    newest.reverse();
    assert_eq!(list("sort=-created_at").await, newest);
    // Items are full events.
    let (_, page) = s.get("/api/v1/events?sort=created_at&limit=1", None).await;
    assert_eq!(page["items"][0], published[0]);
    assert!(page["next_cursor"].is_string());

    // Filters: exact city and category, case-insensitive; starts_at range [from, to).
    let pick = |idx: &[usize]| idx.iter().map(|&i| id(&published[i])).collect::<HashSet<_>>();
    let set = |v: Vec<String>| v.into_iter().collect::<HashSet<_>>();
    assert_eq!(set(list("city=LYON").await), pick(&[0, 1, 4]));
    assert_eq!(set(list("city=%C3%A9vry").await), pick(&[3]));
    assert_eq!(set(list("city=Ly").await), pick(&[]), "exact, not a prefix");
    assert_eq!(set(list("category=music").await), pick(&[0, 2, 3, 4]));
    assert_eq!(set(list("city=lyon&category=Music").await), pick(&[0, 4]));
    let from = urlencode(published[2]["starts_at"].as_str().unwrap());
    let to = urlencode(published[4]["starts_at"].as_str().unwrap());
    let (_, page) = s.get(&format!("/api/v1/events?from={from}&to={to}"), None).await;
    assert_eq!(set(ids(page["items"].as_array().unwrap())), pick(&[2, 0]), "from inclusive, to exclusive");
    let (_, page) = s.get(&format!("/api/v1/events?from={from}&sort=-starts_at"), None).await;
    assert_eq!(ids(page["items"].as_array().unwrap()), [3, 4, 0, 2].map(|i| id(&published[i])));

    // Paged walks give the same order as one page, in every order.
    for sort in ["starts_at", "-starts_at", "created_at", "-created_at"] {
        let walked = ids(&walk(&s, "/api/v1/events", &format!("sort={sort}&limit=2"), None).await);
        let whole = ids(&walk(&s, "/api/v1/events", &format!("sort={sort}"), None).await);
        assert_eq!(walked, whole, "{sort}");
        assert_eq!(walked.len(), 5);
    }
    // A cursor belongs to its order.
    let (_, page) = s.get("/api/v1/events?sort=starts_at&limit=2", None).await;
    let c = page["next_cursor"].as_str().unwrap();
    for other in ["-starts_at", "created_at", "-created_at"] {
        let (status, problem) = s.get(&format!("/api/v1/events?sort={other}&cursor={c}"), None).await;
        common::assert_invalid(status, &problem, "cursor");
    }
    let (status, problem) = s.get(&format!("/api/v1/me/events?cursor={c}"), Some(&ta)).await;
    common::assert_invalid(status, &problem, "cursor");
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn keyset_pages_are_stable_under_inserts(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let t = s.token(Uuid::now_v7(), "user");
    // Eight events; starts_at ties (two per slot) are broken by id.
    let base = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let starts = |slot: i64| {
        (base + time::Duration::hours(slot)).format(&time::format_description::well_known::Rfc3339).unwrap()
    };
    let mut original = Vec::new();
    for slot in [4, 1, 3, 2, 1, 4, 3, 2] {
        let e = s.create_published(&t, json!({"starts_at": starts(slot * 10), "ends_at": starts(slot * 10 + 1)})).await;
        original.push(e);
    }

    for sort in ["starts_at", "-starts_at", "created_at", "-created_at"] {
        let before = ids(&walk(&s, "/api/v1/events", &format!("sort={sort}&limit=100"), None).await);
        let (status, page1) = s.get(&format!("/api/v1/events?sort={sort}&limit=3"), None).await;
        assert_eq!(status, StatusCode::OK);
        let first = ids(page1["items"].as_array().unwrap());
        let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
        assert_eq!(first, before[..3]);

        // New rows: one sorting before the cursor and one after (for the created_at orders the
        // new rows are the newest, so after the cursor ascending and before it descending).
        let early = s.create_published(&t, json!({"starts_at": starts(0), "ends_at": starts(1)})).await;
        let late = s.create_published(&t, json!({"starts_at": starts(90), "ends_at": starts(91)})).await;
        // And a tie with the last row served, on the other side of its id.
        let last = &page1["items"][2];
        let tie = s.create_published(&t, json!({"starts_at": last["starts_at"], "ends_at": last["ends_at"]})).await;

        let mut rest = Vec::new();
        let mut c = cursor;
        loop {
            let (status, page) = s.get(&format!("/api/v1/events?sort={sort}&limit=3&cursor={c}"), None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            rest.extend(ids(page["items"].as_array().unwrap()));
            match page["next_cursor"].as_str() {
                Some(n) => c = n.to_owned(),
                None => break,
            }
        }
        let new: HashSet<String> = [&early, &late, &tie].iter().map(|e| id(e)).collect();
        let old_rest: Vec<String> = rest.iter().filter(|i| !new.contains(*i)).cloned().collect();
        assert_eq!(old_rest, before[3..], "{sort}: no duplicates or gaps among the original rows");
        let all: Vec<&String> = first.iter().chain(&rest).collect();
        assert_eq!(all.len(), all.iter().collect::<HashSet<_>>().len(), "{sort}: nothing served twice");
        match sort {
            "starts_at" => {
                assert!(!rest.contains(&id(&early)) && rest.contains(&id(&late)), "{sort}");
            }
            "-starts_at" => {
                assert!(rest.contains(&id(&early)) && !rest.contains(&id(&late)), "{sort}");
            }
            "created_at" => assert!(rest.contains(&id(&early)) && rest.contains(&id(&late)), "{sort}"),
            _ => assert!(!rest.contains(&id(&early)) && !rest.contains(&id(&late)), "{sort}"),
        }
        // Clean up so the next order starts from the original rows.
        for e in [&early, &late, &tie] {
            let (status, _) = s.post_empty(&format!("/api/v1/events/{}/cancel", id(e)), Some(&t)).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert_eq!(original.len(), 8);
    s.stop().await;
}

async fn my_events(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb) = (s.token(alice, "user"), s.token(bob, "user"));
    let draft = s.create(&ta, json!({"title": "draft"})).await;
    let published = s.create_published(&ta, json!({"title": "published"})).await;
    let canceled = s.create(&ta, json!({"title": "canceled"})).await;
    let (_, canceled) = s.post_empty(&format!("/api/v1/events/{}/cancel", id(&canceled)), Some(&ta)).await;
    let ended = s.create(&ta, json!({"starts_at": at(hours(-5)), "ends_at": at(hours(-4))})).await;
    s.create(&tb, json!({"title": "bob's"})).await;

    let (status, page) = s.get("/api/v1/me/events", Some(&ta)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([ended, canceled, published, draft]), "all statuses, newest first");
    assert_eq!(page["next_cursor"], Value::Null);
    let walked = walk(&s, "/api/v1/me/events", "limit=1", Some(&ta)).await;
    assert_eq!(json!(walked), page["items"]);
    let (_, page) = s.get("/api/v1/me/events", Some(&tb)).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, page) = s.get("/api/v1/me/events", Some(&s.token(Uuid::now_v7(), "user"))).await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));
    s.stop().await;
}

async fn batch_lookup(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb) = (s.token(alice, "user"), s.token(bob, "user"));
    let public = s.create_published(&ta, json!({})).await;
    let draft = s.create(&ta, json!({})).await;
    let bobs = s.create_published(&tb, json!({})).await;
    let unknown = Uuid::now_v7().to_string();
    let ask = json!({"ids": [id(&public), id(&draft), unknown, id(&bobs), id(&public)]});

    let (status, body) = s.post("/api/v1/events/batch", None, ask.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"events": {id(&public): public, id(&bobs): bobs}}));
    let (_, body) = s.post("/api/v1/events/batch", Some(&tb), ask.clone()).await;
    assert_eq!(body, json!({"events": {id(&public): public, id(&bobs): bobs}}), "not alice's draft");
    let (_, body) = s.post("/api/v1/events/batch", Some(&ta), ask.clone()).await;
    assert_eq!(body, json!({"events": {id(&public): public, id(&draft): draft, id(&bobs): bobs}}));

    // 100 ids (the limit), most unknown.
    let mut many: Vec<String> = (0..98).map(|_| Uuid::now_v7().to_string()).collect();
    many.push(id(&public));
    many.push(id(&bobs));
    let (status, body) = s.post("/api/v1/events/batch", None, json!({ "ids": many })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"].as_object().unwrap().len(), 2);
    many.push(Uuid::now_v7().to_string());
    let (status, problem) = s.post("/api/v1/events/batch", None, json!({ "ids": many })).await;
    common::assert_invalid(status, &problem, "ids");
    s.stop().await;
}
