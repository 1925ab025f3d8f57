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

cityevents_common::on_every_backend!(
    filters_and_sorts,
    keyset_pages_are_stable_under_inserts,
    my_events,
    batch_lookup,
    full_text_search,
    city_suggestions,
    search_cost_is_bounded,
    search_has_its_own_limits,
    trending_and_suggestions
);

/// `(status, items' titles)` of a feed answer.
fn titles(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .map(|a| a.iter().map(|e| e["title"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn views(s: &Svc, views: &[(&Value, &str)]) -> (StatusCode, Value) {
    let views: Vec<Value> = views.iter().map(|(e, v)| json!({"event_id": id(e), "viewer": v})).collect();
    s.post("/api/v1/events/views", None, json!({ "views": views })).await
}

async fn trending_and_suggestions(backend: Backend) {
    use cityevents_common::catalogue::{JOINS_TOPIC, JoinChange, JoinConfirmed, JoinWaitlisted};
    let Some(s) = Svc::start(backend).await else { return };
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (ta, tb) = (s.token(ann, "user"), s.token(bob, "user"));
    let a = s.create_published(&ta, json!({"title": "Alpha", "city": "Lyon", "category": "music"})).await;
    let b = s.create_published(&ta, json!({"title": "Beta", "city": "Porto", "category": "food"})).await;
    let c = s.create_published(&tb, json!({"title": "Gamma", "city": "Lyon", "category": "tech"})).await;
    let d = s.create_published(&tb, json!({"title": "Delta", "city": "Porto", "category": "music"})).await;
    assert_eq!(titles(&s.get("/api/v1/events/trending", None).await.1), Vec::<String>::new(), "nobody looked yet");
    // The latest feed: most recently published first, whenever the draft was made.
    let elsewhere = |title: &str| json!({"title": title, "city": "Oslo", "category": "other"});
    let early = s.create(&ta, elsewhere("Drafted long ago")).await;
    s.create_published(&ta, elsewhere("Published first")).await;
    assert_eq!(s.post_empty(&format!("/api/v1/events/{}/publish", id(&early)), Some(&ta)).await.0, StatusCode::OK);
    let (_, latest) = s.get("/api/v1/events?sort=-published_at&limit=2", None).await;
    assert_eq!(titles(&latest), ["Drafted long ago", "Published first"], "{latest}");

    // Views: one viewer counts once per event and day, within a batch and across batches.
    let (status, body) =
        views(&s, &[(&a, "a:10.0.0.1"), (&a, "a:10.0.0.1"), (&a, "a:10.0.0.2"), (&b, "a:10.0.0.1")]).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(views(&s, &[(&a, "a:10.0.0.1"), (&b, "a:10.0.0.1")]).await.0, StatusCode::NO_CONTENT);
    let (status, trending) = s.get("/api/v1/events/trending", None).await;
    assert_eq!((status, titles(&trending)), (StatusCode::OK, vec!["Alpha".to_owned(), "Beta".to_owned()]));
    assert!(trending["items"][0].get("online_url").is_none());
    // Only hashes are stored: no address, no user id.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(s.database_url()).await.unwrap();
    let actors: Vec<(String,)> = sqlx::query_as("SELECT actor FROM event_signals").fetch_all(&mut conn).await.unwrap();
    assert_eq!(actors.len(), 3, "{actors:?}");
    assert!(actors.iter().all(|(a,)| a.len() == 32 && !a.contains("10.0.0")), "{actors:?}");

    // Joins weigh three views; a person who joins twice counts once.
    let join = |user: Uuid, event: &Value| JoinChange {
        join_id: Uuid::now_v7(),
        event_id: Uuid::parse_str(&id(event)).unwrap(),
        user_id: user,
        event_title: "x".into(),
        status: "confirmed".into(),
        reason: None,
        note: None,
        organizer_id: None,
        at: time::OffsetDateTime::now_utc(),
    };
    s.publish(JOINS_TOPIC, &JoinConfirmed(join(bob, &c))).await;
    s.publish(JOINS_TOPIC, &JoinWaitlisted(join(bob, &c))).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let top = titles(&s.get("/api/v1/events/trending", None).await.1);
        if top == ["Gamma", "Alpha", "Beta"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the join never counted: {top:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let count: Vec<(i64,)> =
        sqlx::query_as("SELECT COUNT(*) FROM event_signals WHERE kind = 2").fetch_all(&mut conn).await.unwrap();
    assert_eq!(count[0].0, 1, "one joiner, one signal");
    // A city narrows it (any case); limit cuts it; an event over leaves it.
    assert_eq!(titles(&s.get("/api/v1/events/trending?city=PORTO", None).await.1), ["Beta"]);
    assert_eq!(titles(&s.get("/api/v1/events/trending?limit=1", None).await.1), ["Gamma"]);
    s.shift(&a, 48).await;
    assert_eq!(titles(&s.get("/api/v1/events/trending", None).await.1), ["Gamma", "Beta"]);

    // Bad input is refused naming the field.
    for (query, field) in [("limit=0", "limit"), ("limit=51", "limit"), ("nope=1", "nope")] {
        let (status, p) = s.get(&format!("/api/v1/events/trending?{query}"), None).await;
        common::assert_invalid(status, &p, field);
    }
    let (status, p) = s.post("/api/v1/events/views", None, json!({"views": []})).await;
    common::assert_invalid(status, &p, "views");
    let many: Vec<Value> = (0..501).map(|i| json!({"event_id": id(&b), "viewer": format!("a:{i}")})).collect();
    let (status, p) = s.post("/api/v1/events/views", None, json!({ "views": many })).await;
    common::assert_invalid(status, &p, "views");
    let (status, p) = views(&s, &[(&b, " ")]).await;
    common::assert_invalid(status, &p, "viewer");

    // Suggestions: followed organizers first (4), then the home city (2), then categories (1);
    // events joined left out; nothing to go on, nothing suggested.
    let svc = &s;
    let suggest = |body: Value| async move { svc.post("/api/v1/events/suggestions", None, body).await };
    let (status, got) = suggest(json!({"organizers": [bob], "city": "lyon", "categories": ["music", "nope"]})).await;
    assert_eq!((status, titles(&got)), (StatusCode::OK, vec!["Gamma".to_owned(), "Delta".to_owned()]), "{got}");
    let (_, got) = suggest(json!({"city": "porto", "categories": ["MUSIC"], "exclude": [id(&d)]})).await;
    assert_eq!(titles(&got), ["Beta"]);
    let (_, got) = suggest(json!({"categories": ["music"]})).await;
    assert_eq!(titles(&got), ["Delta"], "Alpha is over");
    assert_eq!(titles(&suggest(json!({})).await.1), Vec::<String>::new());
    let (status, p) = suggest(json!({"limit": 0})).await;
    common::assert_invalid(status, &p, "limit");
    let (status, p) = suggest(json!({"organizers": (0..101).map(|_| Uuid::now_v7()).collect::<Vec<_>>()})).await;
    common::assert_invalid(status, &p, "organizers");

    // Old signals and past days' salts are pruned.
    let today = time::OffsetDateTime::now_utc().unix_timestamp().div_euclid(86_400);
    let old = format!(
        "INSERT INTO event_signals (event_id, day, kind, actor) VALUES ('{}', {}, 1, 'old')",
        id(&b),
        today - 5
    );
    sqlx::query(sqlx::AssertSqlSafe(old)).execute(&mut conn).await.unwrap();
    let salt = format!("INSERT INTO signal_salts (day, salt) VALUES ({}, 'old')", today - 1);
    sqlx::query(sqlx::AssertSqlSafe(salt)).execute(&mut conn).await.unwrap();
    let db = keel::data::Db::new(
        "events-prune-test",
        s.database_url(),
        &keel::data::DatabaseConfig::default(),
        None,
        &keel::telemetry::Metrics::new(),
    )
    .unwrap();
    db.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    cityevents_events::trend::prune(db).await.unwrap();
    let left: Vec<(i64,)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM event_signals WHERE day < {today}")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(left[0].0, 0, "signals older than the window are gone");
    let salts: Vec<(i64,)> = sqlx::query_as("SELECT day FROM signal_salts").fetch_all(&mut conn).await.unwrap();
    assert_eq!(salts, vec![(today,)], "only today's salt is kept");
    s.stop().await;
}

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
        ("lyon", "arts", 10),
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

    // A parameter the list does not take is refused by name, never ignored.
    for (query, name) in [("search=jazz", "search"), ("city=lyon&page=2", "page"), ("status=draft", "status")] {
        let (status, problem) = s.get(&format!("/api/v1/events?{query}"), None).await;
        common::assert_invalid(status, &problem, name);
    }
    let (status, problem) = s.get("/api/v1/me/events?city=lyon", Some(&ta)).await;
    common::assert_invalid(status, &problem, "city");

    // Paged walks give the same order as one page, in every order.
    for sort in ["starts_at", "-starts_at", "created_at", "-created_at", "-published_at"] {
        let walked = ids(&walk(&s, "/api/v1/events", &format!("sort={sort}&limit=2"), None).await);
        let whole = ids(&walk(&s, "/api/v1/events", &format!("sort={sort}"), None).await);
        assert_eq!(walked, whole, "{sort}");
        assert_eq!(walked.len(), 5);
    }
    // A cursor belongs to its order.
    let (_, page) = s.get("/api/v1/events?sort=starts_at&limit=2", None).await;
    let c = page["next_cursor"].as_str().unwrap();
    for other in ["-starts_at", "created_at", "-created_at", "-published_at"] {
        let (status, problem) = s.get(&format!("/api/v1/events?sort={other}&cursor={c}"), None).await;
        common::assert_invalid(status, &problem, "cursor");
    }
    let (status, problem) = s.get(&format!("/api/v1/me/events?cursor={c}"), Some(&ta)).await;
    common::assert_invalid(status, &problem, "cursor");
    // exclude_expired: an event that has ended is left out (one that is on is not).
    let ended =
        s.create_published(&ta, json!({"city": "Lyon", "starts_at": at(hours(1)), "ends_at": at(hours(3))})).await;
    s.shift(&ended, 4).await;
    let ongoing =
        s.create_published(&ta, json!({"city": "Lyon", "starts_at": at(hours(1)), "ends_at": at(hours(3))})).await;
    s.shift(&ongoing, 2).await;
    let lyon = set(list("city=lyon").await);
    assert!(lyon.contains(&id(&ended)) && lyon.contains(&id(&ongoing)));
    let current = set(list("city=lyon&exclude_expired=true").await);
    assert!(!current.contains(&id(&ended)) && current.contains(&id(&ongoing)), "{current:?}");
    assert_eq!(set(list("city=lyon&exclude_expired=false").await), lyon);
    let (status, problem) = s.get("/api/v1/events?exclude_expired=yes", None).await;
    common::assert_invalid(status, &problem, "exclude_expired");

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
    // One status; pages within it.
    assert_eq!(json!(walk(&s, "/api/v1/me/events", "status=draft&limit=1", Some(&ta)).await), json!([ended, draft]));
    assert_eq!(json!(walk(&s, "/api/v1/me/events", "status=published", Some(&ta)).await), json!([published]));
    assert_eq!(json!(walk(&s, "/api/v1/me/events", "status=canceled", Some(&ta)).await), json!([canceled]));
    let (status, problem) = s.get("/api/v1/me/events?status=archived", Some(&ta)).await;
    common::assert_invalid(status, &problem, "status");
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

async fn full_text_search(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let t = s.token(Uuid::now_v7(), "user");
    let event = |title: &str, description: &str, city: &str, h: i64| {
        json!({"title": title, "description": description, "city": city, "category": "music",
               "starts_at": at(hours(h)), "ends_at": at(hours(h + 2))})
    };
    // In the title and twice in the description; in the description only; as a prefix; not at all.
    let night = s.create_published(&t, event("Jazz night", "Live jazz, more jazz and blues", "Lyon", 30)).await;
    let poetry = s.create_published(&t, event("Poetry evening", "Readings about the jazz age", "Paris", 10)).await;
    let brunch = s.create_published(&t, event("Sunday brunch", "Pancakes with jazzy tunes", "Lyon", 20)).await;
    let mut others = Vec::new();
    for (i, title) in ["Rock concert", "Opera gala", "Chess club", "Film club", "Ballet"].iter().enumerate() {
        others.push(s.create_published(&t, event(title, "Something else entirely", "Nantes", 40 + i as i64)).await);
    }
    // A draft never matches.
    s.create(&t, event("Jazz draft", "Unpublished jazz", "Lyon", 5)).await;
    // The venue is searched too.
    let mut at_venue = event("Open mic", "Bring your own songs", "Lyon", 50);
    at_venue["venue"] = json!("Le Sirius, quai Augagneur");
    let open_mic = s.create_published(&t, at_venue).await;

    let search = |q: String| {
        let s = &s;
        async move {
            let (status, page) = s.get(&format!("/api/v1/events?{q}"), None).await;
            assert_eq!(status, StatusCode::OK, "{q}: {page}");
            ids(page["items"].as_array().unwrap())
        }
    };
    // Ranked: the title match first; every word of q must match (as a word prefix).
    let jazz = search("q=jazz".into()).await;
    assert_eq!(jazz.len(), 3, "{jazz:?}");
    assert_eq!(jazz[0], id(&night), "the best match first");
    assert_eq!(jazz.iter().collect::<HashSet<_>>(), [id(&night), id(&poetry), id(&brunch)].iter().collect());
    assert_eq!(
        search("q=JAZZ%20lyon".into()).await.into_iter().collect::<HashSet<_>>(),
        [id(&night), id(&brunch)].into()
    );
    assert_eq!(search("q=pancake".into()).await, [id(&brunch)]);
    assert_eq!(search("q=club%20chess".into()).await, [id(&others[2])]);
    assert!(search("q=zeppelin".into()).await.is_empty());
    assert_eq!(search("q=sirius".into()).await, [id(&open_mic)], "by venue");
    let (status, _) =
        s.patch(&format!("/api/v1/events/{}", id(&others[1])), Some(&t), json!({"venue": "Zeppelin hall"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(search("q=zeppelin".into()).await, [id(&others[1])], "a new venue is searchable at once");
    // Combined with filters and other orders.
    assert_eq!(search("q=jazz&city=paris".into()).await, [id(&poetry)]);
    assert_eq!(search("q=jazz&sort=starts_at".into()).await, [id(&poetry), id(&brunch), id(&night)]);
    assert_eq!(search("q=jazz&sort=relevance".into()).await, jazz);
    // Keyset pages walk the same ranking.
    assert_eq!(ids(&walk(&s, "/api/v1/events", "q=jazz&limit=1", None).await), jazz);
    assert_eq!(
        ids(&walk(&s, "/api/v1/events", "q=jazz&sort=-starts_at&limit=2", None).await),
        [id(&night), id(&brunch), id(&poetry)]
    );
    // A relevance cursor belongs to its search.
    let (_, page) = s.get("/api/v1/events?q=jazz&limit=1", None).await;
    let c = page["next_cursor"].as_str().unwrap();
    let (status, problem) = s.get(&format!("/api/v1/events?q=club&cursor={c}"), None).await;
    common::assert_invalid(status, &problem, "cursor");
    // Bad input is named.
    for (query, field) in [("q=a%20b", "q"), ("sort=relevance", "sort"), ("q=jazz&sort=rank", "sort")] {
        let (status, problem) = s.get(&format!("/api/v1/events?{query}"), None).await;
        common::assert_invalid(status, &problem, field);
    }
    let long = "x".repeat(101);
    let (status, problem) = s.get(&format!("/api/v1/events?q={long}"), None).await;
    common::assert_invalid(status, &problem, "q");
    // Query syntax of any backend is only text.
    for q in ["jazz%22%20OR%20%22", "jazz*%20%2B%2B", "jazz%27);--", "NEAR(jazz)", "jazz%20%7C%20rock"] {
        let (status, page) = s.get(&format!("/api/v1/events?q={q}"), None).await;
        assert_eq!(status, StatusCode::OK, "{q}: {page}");
    }
    // An edit is searchable at once; a canceled event is not listed.
    let (status, _) =
        s.patch(&format!("/api/v1/events/{}", id(&others[0])), Some(&t), json!({"title": "Jazz rock"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(search("q=jazz".into()).await.contains(&id(&others[0])));
    let (status, _) = s.post_empty(&format!("/api/v1/events/{}/cancel", id(&night)), Some(&t)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!search("q=jazz".into()).await.contains(&id(&night)));
    s.stop().await;
}

async fn city_suggestions(backend: Backend) {
    let Some(s) = Svc::start(backend).await else { return };
    let t = s.token(Uuid::now_v7(), "user");
    let in_city = |city: &str, h: i64| json!({"city": city, "starts_at": at(hours(h)), "ends_at": at(hours(h + 1))});
    for (city, n) in
        [("Lyon", 3), ("lyon", 0), ("Lille", 1), ("Paris", 2), ("Le_Mans", 1), ("100%ville", 1), ("São Paulo", 1)]
    {
        for i in 0..n {
            s.create_published(&t, in_city(city, 10 + i)).await;
        }
    }
    // Not counted: a draft, a canceled event, an event that has ended.
    s.create(&t, in_city("Lille", 5)).await;
    let canceled = s.create_published(&t, in_city("Lille", 6)).await;
    s.post_empty(&format!("/api/v1/events/{}/cancel", id(&canceled)), Some(&t)).await;
    let ended = s.create_published(&t, in_city("Lille", 1)).await;
    s.shift(&ended, 5).await;

    let cities = |q: &str| {
        let s = &s;
        let q = q.to_owned();
        async move {
            let (status, body) = s.get(&format!("/api/v1/meta/cities{q}"), None).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["city"].as_str().unwrap().to_lowercase(), c["events"].as_i64().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    let all = cities("").await;
    assert_eq!(all[0], ("lyon".into(), 3), "most events first: {all:?}");
    assert_eq!(all[1], ("paris".into(), 2));
    assert_eq!(all.len(), 6, "{all:?}");
    // Without accents, as people type on any keyboard.
    assert_eq!(cities("?q=Sao").await, [("são paulo".into(), 1)]);
    assert_eq!(cities("?q=s%C3%A3o%20p").await, [("são paulo".into(), 1)]);
    assert_eq!(cities("?q=L").await, [("lyon".into(), 3), ("le_mans".into(), 1), ("lille".into(), 1)]);
    assert_eq!(cities("?q=LYO").await, [("lyon".into(), 3)]);
    assert_eq!(cities("?q=l&limit=1").await, [("lyon".into(), 3)]);
    // LIKE's wildcards in q are only characters.
    assert_eq!(cities("?q=le_").await, [("le_mans".into(), 1)]);
    assert!(cities("?q=_").await.is_empty());
    assert_eq!(cities("?q=100%25").await, [("100%ville".into(), 1)]);
    assert!(cities("?q=%25").await.is_empty());
    assert!(cities("?q=zz").await.is_empty());
    for (query, field) in [("?limit=0", "limit"), ("?limit=21", "limit"), ("?limit=x", "limit"), ("?city=x", "city")] {
        let (status, problem) = s.get(&format!("/api/v1/meta/cities{query}"), None).await;
        common::assert_invalid(status, &problem, field);
    }
    s.stop().await;
}

/// A search over a large table ranks at most `app.search.max_ranked` matches (the latest
/// starting), each scored once, and pages through them; a search ordered by a column lists
/// every match.
async fn search_cost_is_bounded(backend: Backend) {
    let Some(s) = Svc::start_on(backend, &[("APP__SEARCH__MAX_RANKED", "40")]).await else { return };
    let hour = 3_600_000_000_i64;
    let first = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000 + 24 * hour;
    // One event in four matches: a word in half the rows or more scores (next to) 0 on
    // SQLite's bm25 and MariaDB's ranking, which could then tell no match from another.
    let text = |i: i64| if i % 4 == 0 { "Songs by the harbour" } else { "Songs in the park" };
    let mut rows: Vec<(String, String, i64)> =
        (0..2000).map(|i| (format!("Evening {i}"), text(i).to_owned(), first + i * hour)).collect();
    rows[1992].0 = "Harbour festival".into();
    rows[4].0 = "Harbour lights".into();
    let seeded = s.seed_published(&rows).await;

    let ranked = walk(&s, "/api/v1/events", "q=harbour&limit=100", None).await;
    assert_eq!(ranked.len(), 40, "only max_ranked matches are ranked");
    let latest: HashSet<String> = seeded[1840..].iter().step_by(4).cloned().collect();
    assert_eq!(ids(&ranked).into_iter().collect::<HashSet<_>>(), latest, "the latest-starting matches");
    assert_eq!(id(&ranked[0]), seeded[1992], "the title match first");
    assert_eq!(ids(&walk(&s, "/api/v1/events", "q=harbour&limit=7", None).await), ids(&ranked), "pages agree");
    // Filters apply before the cap: the early title match is found when the range asks for it.
    let until = time::OffsetDateTime::from_unix_timestamp((first + 20 * hour) / 1_000_000).unwrap();
    let to = urlencode(&until.format(&time::format_description::well_known::Rfc3339).unwrap());
    let early = walk(&s, "/api/v1/events", &format!("q=harbour&to={to}&limit=100"), None).await;
    assert_eq!(early.len(), 5, "5 of the 20 events that start before match");
    assert_eq!(id(&early[0]), seeded[4]);

    let all = walk(&s, "/api/v1/events", "q=harbour&sort=starts_at&limit=100", None).await;
    assert_eq!(all.len(), 500, "ordered by a column, every match is listed");
    assert_eq!(id(&all[0]), seeded[0]);
    s.stop().await;
}

/// Holds the `events` table the way a long migration or a runaway statement would, so that
/// reads of it wait (PostgreSQL, MariaDB: a table lock). SQLite readers never wait for a writer
/// in WAL mode, so nothing can hold them there.
async fn hold_events_table(backend: Backend, url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let statements: &[&str] = match backend {
        Backend::Postgres => &["BEGIN", "LOCK TABLE events IN ACCESS EXCLUSIVE MODE"],
        Backend::MySql => &["LOCK TABLES events WRITE"],
        Backend::Sqlite => unreachable!("SQLite readers cannot be held"),
    };
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*statement)).execute(&mut conn).await.unwrap();
    }
    conn
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Searches have their own concurrency limit and time limit: with the table held, a search is
/// cut off at `app.search.timeout` (503 `query-timeout`), the next one is refused at once (503
/// `search-busy`) instead of taking another connection, and the service stays ready. On SQLite,
/// where nothing holds a reader, a search of 20,000 matches is cut off at 1 ms instead.
async fn search_has_its_own_limits(backend: Backend) {
    let timeout = if backend == Backend::Sqlite { "1ms" } else { "1500ms" };
    let settings =
        [("APP__SEARCH__MAX_CONCURRENT", "1"), ("APP__SEARCH__MAX_QUEUE", "0"), ("APP__SEARCH__TIMEOUT", timeout)];
    let Some(s) = Svc::start_on(backend, &settings).await else { return };
    let hour = 3_600_000_000_i64;
    let first = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000 + 24 * hour;
    let search = |q: &str| {
        let (http, url) = (s.http.clone(), s.url(&format!("/api/v1/events?q={q}")));
        async move {
            let r = http.get(url).send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let overloaded = r.headers().contains_key("keel-overloaded");
            (r.status(), (retry_after, overloaded), r.json::<Value>().await.unwrap())
        }
    };
    if backend == Backend::Sqlite {
        let rows: Vec<_> = (0..20_000).map(|i| (format!("Harbour {i}"), "Songs".to_owned(), first + i)).collect();
        s.seed_published(&rows).await;
        let (status, retry_after, problem) = search("harbour").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
        assert!(problem["type"].as_str().unwrap().ends_with("query-timeout"), "{problem}");
        assert_eq!(retry_after, (Some("1".to_owned()), false), "a time-out is a failure, not a refusal");
        let metrics = s.http.get(s.management_url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert_eq!(counter(&metrics, r#"events_searches_total{outcome="timeout"}"#), 1.0);
        // Lists ordered by a column are not searches: no limit of theirs applies.
        assert_eq!(s.get("/api/v1/events?limit=5", None).await.0, StatusCode::OK);
        s.stop().await;
        return;
    }
    let rows: Vec<_> = (0..3).map(|i| (format!("Harbour {i}"), "Songs".to_owned(), first + i * hour)).collect();
    s.seed_published(&rows).await;
    assert_eq!(s.get("/api/v1/events?q=harbour", None).await.1["items"].as_array().unwrap().len(), 3);

    let holder = hold_events_table(backend, s.database_url()).await;
    let slow = tokio::spawn(search("harbour"));
    // Ordering only: the first search takes the one slot before the second asks.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (status, retry_after, problem) = search("songs").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert!(problem["type"].as_str().unwrap().ends_with("search-busy"), "{problem}");
    assert_eq!(retry_after, (Some("1".to_owned()), true), "refused at once: marked overloaded");
    let ready = s.http.get(s.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "searches do not take the service's connections");

    let (status, retry_after, problem) = slow.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert!(problem["type"].as_str().unwrap().ends_with("query-timeout"), "{problem}");
    assert_eq!(retry_after, (Some("1".to_owned()), false), "a time-out is a failure, not a refusal");
    drop(holder);

    let items =
        cityevents_common::testing::eventually("searches answer again", std::time::Duration::from_secs(20), || async {
            let (status, page) = s.get("/api/v1/events?q=harbour", None).await;
            (status == StatusCode::OK).then(|| page["items"].as_array().unwrap().len())
        })
        .await;
    assert_eq!(items, 3);
    let metrics = s.http.get(s.management_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(counter(&metrics, r#"events_searches_total{outcome="busy"}"#) >= 1.0);
    assert_eq!(counter(&metrics, r#"events_searches_total{outcome="timeout"}"#), 1.0);
    assert!(counter(&metrics, r#"events_searches_total{outcome="ok"}"#) >= 2.0);
    s.stop().await;
}
