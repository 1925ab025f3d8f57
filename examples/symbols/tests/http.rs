//! The HTTP/JSON API against a real MariaDB: CRUD, validation, pagination, soft delete, events
//! written in the transaction of their change, probes, pool metrics and start-up refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{App, Broker, Env, count, mariadb, metric, pool};
use keel::config::Profile;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row as _;

async fn start() -> Option<(App, keel::testing::TestDatabase)> {
    let db = mariadb().await?;
    let app = App::start(symbols::service(), &Env::new(symbols::SERVICE, &db, &Broker::in_process())).await;
    Some((app, db))
}

fn path(project: &str) -> String {
    format!("/v1/projects/{project}/symbols")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_over_http() {
    let Some((app, _db)) = start().await else { return };
    let base = path("site-1");

    // Create: 201, Location, version 1, data kept as sent.
    let r = app.http.post(app.url(&base)).json(&json!({"name": " Primary Blue ", "kind": "color", "data": {"hex": "#0000ff", "alpha": 1, "tags": ["brand"]}})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("{base}/{id}"));
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(created["name"], "Primary Blue", "trimmed");
    assert_eq!(created["project_id"], "site-1");
    assert_eq!(created["version"], 1);
    assert_eq!(created["data"], json!({"hex": "#0000ff", "alpha": 1, "tags": ["brand"]}));
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    // Read.
    let (s, got) = app.get(&location).await;
    assert_eq!(s, 200);
    assert_eq!(got, created);

    // The name is unique per project, ignoring case, among live symbols.
    let (s, p) = app.post(&base, json!({"name": "primary BLUE", "kind": "color"})).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("name_taken")), "{p}");
    let (s, _) = app.post(&path("site-2"), json!({"name": "Primary Blue", "kind": "color"})).await;
    assert_eq!(s, 201, "another project may use the name");
    let (s, _) = app.get(&format!("{}/{id}", path("site-2"))).await;
    assert_eq!(s, 404, "a symbol is found only in its project");

    // Update: only what is given changes; the version moves on.
    let (s, updated) = app.patch(&location, json!({"name": "Brand Blue", "expected_version": 1})).await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(
        (updated["name"].as_str(), updated["kind"].as_str(), updated["version"].as_i64()),
        (Some("Brand Blue"), Some("color"), Some(2))
    );
    assert_eq!(updated["data"], created["data"]);
    let (s, updated) = app.patch(&location, json!({"data": {"hex": "#0000fe"}})).await;
    assert_eq!((s, updated["version"].as_i64()), (200, Some(3)));
    assert_eq!(updated["data"], json!({"hex": "#0000fe"}), "data is replaced whole");
    // A stale version is refused.
    let (s, p) = app.patch(&location, json!({"kind": "colour", "expected_version": 2})).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("version_mismatch")), "{p}");
    // A change that changes nothing makes no version.
    let (s, same) = app.patch(&location, json!({"name": "Brand Blue"})).await;
    assert_eq!((s, same["version"].as_i64()), (200, Some(3)));
    // Renaming onto a live name is a conflict.
    let (s, other) = app.post(&base, json!({"name": "Red", "kind": "color"})).await;
    assert_eq!(s, 201);
    let (s, p) = app.patch(&format!("{base}/{}", other["id"].as_str().unwrap()), json!({"name": "brand blue"})).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("name_taken")));

    // Soft delete: gone from reads and lists, the name free again.
    let (s, p) = app.delete(&format!("{location}?expected_version=2")).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("version_mismatch")));
    let (s, _) = app.delete(&format!("{location}?expected_version=3")).await;
    assert_eq!(s, 204);
    assert_eq!(app.get(&location).await.0, 404);
    assert_eq!(app.delete(&location).await.0, 404);
    assert_eq!(app.patch(&location, json!({"name": "x"})).await.0, 404);
    let (_, list) = app.get(&base).await;
    assert!(list["items"].as_array().unwrap().iter().all(|s| s["id"] != id.as_str()));
    let (s, again) = app.post(&base, json!({"name": "brand blue", "kind": "color"})).await;
    assert_eq!(s, 201, "a deleted symbol's name can be used again: {again}");
    assert_ne!(again["id"], created["id"]);

    // An unknown id is a 404 problem.
    let (s, ct, p) = app.send(Method::GET, &format!("{base}/{}", uuid::Uuid::now_v7()), None).await;
    assert_eq!((s, ct.as_str(), p["code"].as_str()), (404, "application/problem+json", Some("not_found")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_400_problems_naming_each_field() {
    let Some((app, _db)) = start().await else { return };
    let base = path("p1");
    let fields = |p: &Value| -> Vec<String> {
        p["errors"]
            .as_array()
            .map(|e| e.iter().map(|f| f["field"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let big = "x".repeat(70 * 1024);
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["name", "kind"]),
        (json!({"name": "   ", "kind": "color"}), vec!["name"]),
        (json!({"name": "a".repeat(129), "kind": "color"}), vec!["name"]),
        (json!({"name": "tab\there", "kind": "color"}), vec!["name"]),
        (json!({"name": "ok", "kind": "Color!"}), vec!["kind"]),
        (json!({"name": "ok", "kind": "a".repeat(33)}), vec!["kind"]),
        (json!({"name": "ok", "kind": "color", "data": {"s": big}}), vec!["data"]),
        (json!({"name": "ok", "kind": "color", "data": deep}), vec!["data"]),
        (json!({"name": "ok", "kind": "color", "data": [1]}), vec!["data"]),
        (json!({"name": "ok", "kind": "color", "colour": "x"}), vec!["colour"]),
        (json!({"name": 5, "kind": "color"}), vec!["name"]),
    ];
    for (body, want) in cases {
        let (s, ct, p) = app.send(Method::POST, &base, Some(body.clone())).await;
        assert_eq!((s, ct.as_str()), (400, "application/problem+json"), "{body}: {p}");
        assert_eq!(p["code"], "invalid_input");
        assert_eq!(fields(&p), want, "{p}");
    }
    // A repeated key, at the top or deep in data.
    for raw in [r#"{"name":"a","name":"b","kind":"c"}"#, r#"{"name":"a","kind":"c","data":{"x":{"k":1,"k":2}}}"#] {
        let r =
            app.http.post(app.url(&base)).header("content-type", "application/json").body(raw).send().await.unwrap();
        let (s, _, p) = common::response(r).await;
        assert_eq!(s, 400, "{raw}");
        assert!(p["errors"][0]["message"].as_str().unwrap().contains("twice"), "{p}");
    }
    // Not JSON: no content type, or one a browser sends cross-site without a preflight.
    let r = app.http.post(app.url(&base)).body("name=a").send().await.unwrap();
    assert_eq!(r.status(), 415);
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let body = r#"{"name":"a","kind":"b"}"#;
        let r = app.http.post(app.url(&base)).header("content-type", ct).body(body).send().await.unwrap();
        assert_eq!(r.status(), 415, "{ct}");
    }
    let r = app.http.post(app.url(&base)).header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A value is never echoed back.
    let (_, p) = app.post(&base, json!({"name": "ok", "kind": "SECRET-KIND"})).await;
    assert!(!p.to_string().contains("SECRET-KIND"), "{p}");

    // Path and query.
    assert_eq!(fields(&app.post(&path("bad.project"), json!({"name": "a", "kind": "b"})).await.1), ["project_id"]);
    assert_eq!(fields(&app.get(&path(&"p".repeat(65))).await.1), ["project_id"]);
    assert_eq!(fields(&app.get(&format!("{base}/not-a-uuid")).await.1), ["id"]);
    for (q, want) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=abc", "limit"),
        ("?offset=-1", "offset"),
        ("?offset=10001", "offset"),
        ("?page=2", "page"),
        ("?limit=1&limit=2", "limit"),
    ] {
        let (s, p) = app.get(&format!("{base}{q}")).await;
        assert_eq!((s, fields(&p)), (400, vec![want.to_owned()]), "{q}: {p}");
    }
    // An update must change something; versions are positive.
    let (s, created) = app.post(&base, json!({"name": "n", "kind": "k"})).await;
    assert_eq!(s, 201);
    let one = format!("{base}/{}", created["id"].as_str().unwrap());
    assert_eq!(app.patch(&one, json!({})).await.0, 400);
    assert_eq!(fields(&app.patch(&one, json!({"name": "m", "expected_version": 0})).await.1), ["expected_version"]);
    assert_eq!(fields(&app.delete(&format!("{one}?expected_version=x")).await.1), ["expected_version"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_by_offset_and_skip_deleted_symbols() {
    let Some((app, _db)) = start().await else { return };
    let base = path("paged");
    let mut ids = Vec::new();
    for i in 0..5 {
        let (s, b) = app.post(&base, json!({"name": format!("s{i}"), "kind": "text"})).await;
        assert_eq!(s, 201);
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    app.post(&path("elsewhere"), json!({"name": "s0", "kind": "text"})).await;
    let page = |q: &'static str| {
        let app = &app;
        let base = base.clone();
        async move { app.get(&format!("{base}{q}")).await.1 }
    };
    let names = |p: &Value| -> Vec<String> {
        p["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };

    let p = page("?limit=2").await;
    assert_eq!(
        (p["total_count"].as_i64(), p["has_next"].as_bool(), p["offset"].as_i64(), p["limit"].as_i64()),
        (Some(5), Some(true), Some(0), Some(2))
    );
    assert_eq!(names(&p), ["s0", "s1"], "oldest first");
    let p = page("?offset=2&limit=2").await;
    assert_eq!((names(&p), p["has_next"].as_bool()), (vec!["s2".to_owned(), "s3".to_owned()], Some(true)));
    let p = page("?offset=4&limit=2").await;
    assert_eq!((names(&p), p["has_next"].as_bool()), (vec!["s4".to_owned()], Some(false)));
    let p = page("?offset=9").await;
    assert_eq!((names(&p).len(), p["total_count"].as_i64(), p["has_next"].as_bool()), (0, Some(5), Some(false)));
    let p = page("").await;
    assert_eq!((p["limit"].as_i64(), names(&p).len()), (Some(20), 5));

    // Deleted symbols leave the list and the count.
    assert_eq!(app.delete(&format!("{base}/{}", ids[1])).await.0, 204);
    let p = page("?limit=2").await;
    assert_eq!((names(&p), p["total_count"].as_i64()), (vec!["s0".to_owned(), "s2".to_owned()], Some(4)));
    let p = page("?offset=2&limit=2").await;
    assert_eq!((names(&p), p["has_next"].as_bool()), (vec!["s3".to_owned(), "s4".to_owned()], Some(false)));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_enqueues_its_event_in_its_transaction() {
    let Some((app, db)) = start().await else { return };
    let pool = pool(&db).await;
    let base = path("outboxed");
    // The request id travels with the event (the worker's log lines carry it).
    let r = app
        .http
        .post(app.url(&base))
        .header("x-request-id", "req-create-1")
        .json(&json!({"name": "a", "kind": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-create-1");
    let s: Value = r.json().await.unwrap();
    let one = format!("{base}/{}", s["id"].as_str().unwrap());
    app.patch(&one, json!({"name": "b"})).await;
    app.patch(&one, json!({"name": "b"})).await; // no change: no event
    app.delete(&one).await;
    // Refused changes enqueue nothing.
    app.post(&base, json!({"name": "x", "kind": "BAD"})).await;
    let (_, s2) = app.post(&base, json!({"name": "c", "kind": "k"})).await;
    assert_eq!(app.post(&base, json!({"name": "C", "kind": "k"})).await.0, 409);

    let rows = sqlx::query("SELECT topic, partition_key, payload FROM keel_outbox ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let events: Vec<(String, String, Value)> = rows
        .iter()
        .map(|r| {
            let payload: String = r.try_get("payload").unwrap();
            (r.try_get("topic").unwrap(), r.try_get("partition_key").unwrap(), serde_json::from_str(&payload).unwrap())
        })
        .collect();
    let kinds: Vec<(&str, i64)> =
        events.iter().map(|(_, _, e)| (e["type"].as_str().unwrap(), e["data"]["version"].as_i64().unwrap())).collect();
    assert_eq!(kinds, [("symbol.created", 1), ("symbol.updated", 2), ("symbol.deleted", 3), ("symbol.created", 1)]);
    for (topic, key, e) in &events {
        assert_eq!(topic, symbols::events::TOPIC);
        assert_eq!(key, e["data"]["symbol_id"].as_str().unwrap(), "keyed by symbol");
        assert_eq!(e["dataversion"], 1);
        assert_eq!(e["source"], symbols::SERVICE);
        assert!(e["data"].get("data").is_none(), "no user data in events");
    }
    assert_eq!(events[0].2["requestid"], "req-create-1");
    assert_eq!(events[3].2["data"]["symbol_id"], s2["id"]);
    assert_eq!(count(&pool, "symbols").await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_pool_metrics() {
    let Some((app, _db)) = start().await else { return };
    let (s, body) = app.get("/health/ready").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(app.get("/health/live").await.0, 200);
    let text = app.metrics().await;
    assert!(metric(&text, "db_pool_max_connections", &[]) >= 1.0, "pool metrics are exported");
    assert!(text.contains("db_pool_connections{"), "open connections by state");
    assert!(text.contains("outbox_pending"), "outbox metrics");
    // CORS answers no origin it was not told to (none by default; never `*`).
    let r = app
        .http
        .request(Method::OPTIONS, app.url(&path("p")))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

/// Start-up never panics: what cannot work is refused with a configuration error (exit 78 from
/// the binary), naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_unsafe_settings_without_panicking() {
    let Some(db) = mariadb().await else { return };
    let env = Env::new(symbols::SERVICE, &db, &Broker::in_process());
    // CORS `*` and no origins at all are refused by the configuration itself.
    let wildcard =
        env.clone().set("CORS__ALLOWED_ORIGINS", "*").loader(Profile::Production).load::<keel::config::NoConfig>();
    assert!(wildcard.unwrap_err().to_string().contains("cors.allowed_origins"));
    // An in-process (non-durable) bus is refused by the service's set-up.
    let env = env.set("CORS__ALLOWED_ORIGINS", "https://app.example").set("DATABASE__AUTO_MIGRATE", "false");
    let loaded = env.loader(Profile::Production).load().unwrap();
    let e = keel::app::start(symbols::service(), loaded).await.unwrap_err();
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("bus.backend"), "{e}");
}

/// Reads are open; every write needs a valid token with the write role: 401 (with
/// `WWW-Authenticate: Bearer`) without one or with one that fails, 403 without the role, and
/// nothing is written either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_writers_token() {
    let Some((app, _db)) = start().await else { return };
    let base = path("guarded");
    let (status, created) = app.post(&base, json!({"name": "kept", "kind": "k"})).await;
    assert_eq!(status, 201, "{created}");
    let one = format!("{base}/{}", created["id"].as_str().unwrap());

    let other_key = common::forged_writer_token();
    let reader = common::token("reader", &["symbols:read"]);
    let body = json!({"name": "intruder", "kind": "k"});
    for (who, token, want) in [
        ("no token", None, 401),
        ("another key's", Some(other_key.as_str()), 401),
        ("a reader", Some(reader.as_str()), 403),
    ] {
        let send = |method: Method, url: &str, body: Option<&Value>| {
            let mut r = app.anonymous.request(method, app.url(url));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r.json(b);
            }
            r.send()
        };
        for (method, url, body) in
            [(Method::POST, &base, Some(&body)), (Method::PATCH, &one, Some(&body)), (Method::DELETE, &one, None)]
        {
            let r = send(method.clone(), url, body).await.unwrap();
            assert_eq!(r.status(), want, "{who}: {method} {url}");
            if want == 401 {
                let challenge = r.headers()["www-authenticate"].to_str().unwrap();
                assert!(challenge.starts_with("Bearer"), "{who}: {challenge}");
            }
            let (_, ct, problem) = common::response(r).await;
            assert_eq!(ct, "application/problem+json", "{who}: {problem}");
        }
        // Reads need nothing (a token there is not looked at).
        let r = send(Method::GET, &one, None).await.unwrap();
        assert_eq!(r.status(), 200, "{who}");
    }
    let (_, list) = app.get(&base).await;
    assert_eq!(list["total_count"], 1, "nothing written: {list}");
    assert_eq!(list["items"][0]["name"], "kept");
    assert_eq!(list["items"][0]["version"], 1);
    app.stop().await;
}
