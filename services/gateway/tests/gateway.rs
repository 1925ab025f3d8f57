//! The gateway in-process (port 0) in front of small axum services started by each test:
//! routing of every table entry, edge authentication, rate limits (in process and shared through
//! Redis), the aggregate view with failing parts, upstream failures, body limits, unknown paths,
//! the OpenAPI document, and refusing to start without an upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::get;
use cityevents_gateway::routes::{Access, ROUTES, Upstream};
use common::{Gateway, Stub, closed_port, echoes, echoes_answering, env, now, problem, token, token_with};
use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A concrete path for a template.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", &Uuid::now_v7().to_string())
        .replace("{user_id}", &Uuid::now_v7().to_string())
        .replace("{hash}", "0123456789abcdef")
        .replace("{file}", if template.contains("/avatar/") { "small.jpg" } else { "card.jpg" })
}

fn stub_for(stubs: &[Stub; 4], upstream: Upstream) -> &Stub {
    stubs.iter().find(|s| s.name == upstream.name()).unwrap()
}

fn counts(stubs: &[Stub; 4]) -> Vec<usize> {
    stubs.iter().map(Stub::count).collect()
}

#[tokio::test]
async fn every_route_reaches_its_service_with_method_path_query_body_and_headers() {
    let stubs = echoes_answering(201).await;
    let doc: Value = cityevents_gateway::openapi::document().unwrap();
    let declared = cityevents_gateway::openapi::query_parameters(&doc);
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let bearer = format!("Bearer {}", token(&Uuid::now_v7().to_string()));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut forwarded = 0;
    for (i, route) in ROUTES.iter().enumerate().filter(|(_, r)| r.upstream != Upstream::Gateway) {
        let stub = stub_for(&stubs, route.upstream);
        let before = counts(&stubs);
        let path = concrete(route.path);
        // Each parameter the operation takes, once (none: no query string at all).
        let names = &declared[&(route.verb.method(), route.path)];
        let query = names.iter().map(|n| format!("{n}=caf%C3%A9%20au%20lait")).collect::<Vec<_>>().join("&");
        let body = format!("{{\"route\":{i},\"text\":\"h\u{e9}llo\"}}");
        let has_body = matches!(route.verb.method(), http::Method::POST | http::Method::PUT | http::Method::PATCH);
        let url = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut req = gw
            .http
            .request(route.verb.method(), gw.url(&url))
            .header("authorization", &bearer)
            .header("accept", "application/json")
            .header("idempotency-key", format!("key-{i}"))
            .header("x-request-id", format!("req-{i}"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .header("cookie", "session=secret")
            .header("user-agent", "journey/1.0")
            .header("x-custom", "not-forwarded");
        if has_body {
            req = req.header("content-type", "application/json").body(body.clone());
        }
        let resp = req.send().await.unwrap();
        let what = format!("{} {}", route.verb.method(), route.path);
        assert_eq!(resp.status(), 201, "{what}: the service's status comes back");
        assert_eq!(resp.headers()["content-type"], "application/json", "{what}");
        assert_eq!(resp.headers()["location"], "/api/v1/somewhere", "{what}");
        assert_eq!(resp.headers()["retry-after"], "7", "{what}");
        assert!(!resp.headers().contains_key("x-internal"), "{what}: other service headers stay inside");
        assert_eq!(resp.headers()["x-request-id"], format!("req-{i}").as_str(), "{what}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["upstream"], route.upstream.name(), "{what}");

        // Exactly one request reached exactly that service, as sent.
        let mut want = before.clone();
        let at = stubs.iter().position(|s| s.name == stub.name).unwrap();
        want[at] += 1;
        assert_eq!(counts(&stubs), want, "{what}");
        let seen = stub.requests().pop().unwrap();
        assert_eq!(seen.method, route.verb.method(), "{what}");
        assert_eq!(seen.path, path, "{what}");
        assert_eq!(seen.query.as_deref(), (!query.is_empty()).then_some(query.as_str()), "{what}");
        let h = &seen.headers;
        if route.access == Access::Anonymous {
            assert!(!h.contains_key("authorization"), "{what}: sign-in routes never see a token");
        } else {
            assert_eq!(h["authorization"], bearer.as_str(), "{what}");
        }
        assert_eq!(h["accept"], "application/json", "{what}");
        assert_eq!(h["user-agent"], "journey/1.0", "{what}: auth names a session's device by it");
        assert_eq!(h["idempotency-key"], format!("key-{i}").as_str(), "{what}");
        assert_eq!(h["x-request-id"], format!("req-{i}").as_str(), "{what}: the request id follows the call");
        let tp = h["traceparent"].to_str().unwrap();
        assert_eq!(tp.split('-').nth(1), Some(trace_id), "{what}: the trace continues ({tp})");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{what}");
        assert!(!h.contains_key("cookie") && !h.contains_key("x-custom"), "{what}: {h:?}");
        if has_body {
            assert_eq!(h["content-type"], "application/json", "{what}");
            assert_eq!(seen.body, body.as_bytes(), "{what}");
        } else {
            assert!(seen.body.is_empty(), "{what}");
        }
        forwarded += 1;
    }
    assert_eq!(forwarded, 69, "every forwarded operation was tried");
    assert!(declared.values().any(|n| n.len() > 3), "some operation takes several parameters");

    // A public route without a token is forwarded without one.
    let resp = gw.http.get(gw.url("/api/v1/events?city=Berlin")).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let seen = stubs[1].requests().pop().unwrap();
    assert!(!seen.headers.contains_key("authorization"));
    assert_eq!(seen.query.as_deref(), Some("city=Berlin"));
    gw.stop().await;
}

#[tokio::test]
async fn bad_or_missing_tokens_are_refused_at_the_edge() {
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let sub = Uuid::now_v7().to_string();
    let expired = token_with(json!({"sub": sub, "exp": now() - 3600, "iss": "cityevents", "aud": "cityevents"}));
    let foreign = token_with(json!({"sub": sub, "exp": now() + 300, "iss": "elsewhere", "aud": "cityevents"}));
    let forged = {
        let other = keel::security::jwt::Jwt::builder()
            .issuer("cityevents")
            .audience(["cityevents"])
            .key(
                keel::security::jwt::JwtKey::hs256(
                    "test",
                    &keel::config::Secret::new("another-secret-of-at-least-32-bytes!!"),
                )
                .unwrap(),
            )
            .sign_with("test")
            .build()
            .unwrap();
        other.issue(&other.claims(&sub)).unwrap()
    };
    for route in ROUTES.iter().filter(|r| r.access != Access::Anonymous) {
        let path = concrete(route.path);
        let what = format!("{} {}", route.verb.method(), route.path);
        if route.access == Access::User {
            let resp = gw.http.request(route.verb.method(), gw.url(&path)).send().await.unwrap();
            assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{what}");
            let body = problem(resp, 401).await;
            assert_eq!(body["type"], "urn:keel:problem:unauthorized", "{what}");
        }
        // Another scheme (`curl -u a:b`): no token was sent, so none was refused.
        let resp = gw
            .http
            .request(route.verb.method(), gw.url(&path))
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .unwrap();
        let body = problem(resp, 401).await;
        assert_eq!(body["type"], "urn:keel:problem:unauthorized", "{what}");
        assert!(body["detail"].as_str().unwrap().starts_with("expected a Bearer token"), "{what}: {body}");
        for bad in
            ["Bearer garbage", &format!("Bearer {expired}"), &format!("Bearer {foreign}"), &format!("Bearer {forged}")]
        {
            let resp =
                gw.http.request(route.verb.method(), gw.url(&path)).header("authorization", bad).send().await.unwrap();
            let body = problem(resp, 401).await;
            assert_eq!(body["type"], "urn:keel:problem:invalid-token", "{what} with {bad}");
        }
    }
    assert_eq!(counts(&stubs), vec![0, 0, 0, 0], "nothing reached a service");

    // Signing in and refreshing work whatever stale token the client still sends.
    for path in ["/api/v1/auth/login", "/api/v1/auth/refresh"] {
        let resp = gw
            .http
            .post(gw.url(path))
            .header("authorization", format!("Bearer {expired}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let seen = stubs[0].requests().pop().unwrap();
        assert!(!seen.headers.contains_key("authorization"), "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn query_parameters_an_operation_does_not_take_are_refused_by_name() {
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let bearer = token(&Uuid::now_v7().to_string());
    let id = Uuid::now_v7();
    // What the document declares goes through.
    for path in ["/api/v1/events?q=jazz&city=lyon&exclude_expired=true&limit=5", "/api/v1/me/events?status=draft"] {
        let resp = gw.http.get(gw.url(path)).bearer_auth(&bearer).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let before = counts(&stubs);
    // Anything else is a 400 naming it, and nothing reaches a service.
    for (method, path, names) in [
        (http::Method::GET, "/api/v1/events?search=jazz".to_owned(), vec!["search"]),
        (http::Method::GET, "/api/v1/me/events?status=draft&city=x&page=2".to_owned(), vec!["city", "page"]),
        (http::Method::GET, format!("/api/v1/events/{id}?expand=1"), vec!["expand"]),
        (http::Method::POST, format!("/api/v1/events/{id}/join?force=true"), vec!["force"]),
        (http::Method::GET, format!("/api/v1/events/{id}/view?x"), vec!["x"]),
    ] {
        let resp = gw.http.request(method, gw.url(&path)).bearer_auth(&bearer).send().await.unwrap();
        let body = problem(resp, 400).await;
        assert_eq!(body["code"], "invalid_input", "{path}: {body}");
        let fields: Vec<&str> =
            body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, names, "{path}: {body}");
    }
    assert_eq!(counts(&stubs), before, "refused at the edge");
    // HEAD takes what GET takes; a method the path does not take stays a 405.
    let head = gw.http.head(gw.url("/api/v1/events?city=lyon")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let head = gw.http.head(gw.url("/api/v1/events?nope=1")).send().await.unwrap();
    assert_eq!(head.status(), 400);
    let put = gw.http.put(gw.url("/api/v1/events?x=1")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(put.status(), 405);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let t = token("u1");
    problem(gw.http.get(gw.url("/api/v1/nope")).bearer_auth(&t).send().await.unwrap(), 404).await;
    problem(gw.http.get(gw.url("/api/v2/events")).send().await.unwrap(), 404).await;
    problem(gw.http.get(gw.url("/api/v1/auth/login")).send().await.unwrap(), 405).await;
    problem(gw.http.put(gw.url("/api/v1/me")).bearer_auth(&t).send().await.unwrap(), 405).await;
    assert_eq!(counts(&stubs), vec![0, 0, 0, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn bodies_past_the_limit_are_refused_with_413() {
    let stubs = echoes().await;
    let gw =
        Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[("CITYEVENTS_GATEWAY__HTTP__BODY_LIMIT", "1KiB")]).await;
    let big = json!({"title": "x".repeat(4096)}).to_string();
    let resp = gw
        .http
        .post(gw.url("/api/v1/events"))
        .bearer_auth(token("u1"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let p = problem(resp, 413).await;
    assert_eq!(p["code"], "body_too_large", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("at most 1 KiB (1024 bytes)"), "the limit is said: {p}");
    assert_eq!(counts(&stubs), vec![0, 0, 0, 0]);
    let ok = gw
        .http
        .post(gw.url("/api/v1/events"))
        .bearer_auth(token("u1"))
        .header("content-type", "application/json")
        .body(json!({"title": "Jazz"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_route_table() {
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let resp = gw.http.get(gw.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let table: BTreeSet<(String, String)> =
        ROUTES.iter().map(|r| (r.verb.method().to_string(), r.path.to_owned())).collect();
    assert_eq!(cityevents_gateway::openapi::operations(&doc), table);

    // The index points at the document and at collections the route table serves.
    let resp = gw.http.get(gw.url("/api/v1/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let index: Value = resp.json().await.unwrap();
    assert_eq!(index["openapi"], "/api/v1/openapi.json", "{index}");
    let links = index["links"].as_object().unwrap();
    assert!(links.len() >= 5, "{index}");
    for (name, path) in links {
        let path = path.as_str().unwrap();
        assert!(ROUTES.iter().any(|r| r.path == path), "{name}: {path} is not a route");
    }
    // Typed without its slash, it redirects.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = no_redirects.get(gw.url("/api/v1")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (308, "/api/v1/"));
    gw.stop().await;
}

#[tokio::test]
async fn the_interactive_reference_is_served_from_the_binary_over_the_document() {
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let index: Value = gw.http.get(gw.url("/api/v1/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(index["reference"], "/api/v1/docs/", "{index}");
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = no_redirects.get(gw.url("/api/v1/docs")).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (308, "/api/v1/docs/"));

    let page = gw.http.get(gw.url("/api/v1/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for part in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{csp}");
    let html = page.text().await.unwrap();
    // Everything the page loads is a file of its own, none inline and none from elsewhere.
    let mut loaded = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            loaded.push(part.split('"').next().unwrap().to_owned());
        }
    }
    assert!(loaded.iter().any(|f| f.ends_with("swagger-ui-bundle.js")), "{loaded:?}");
    assert!(!html.contains("<script>") && !html.contains("<style"), "no inline script or style: {html}");
    for file in &loaded {
        assert!(!file.contains("//"), "{file} is not from this origin");
        let url = gw.url(&format!("/api/v1/docs/{}", file.trim_start_matches("./")));
        let resp = gw.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert!(!resp.bytes().await.unwrap().is_empty(), "{file}");
    }
    // The settings point the page at the served document, and nowhere else.
    let init = gw.http.get(gw.url("/api/v1/docs/swagger-initializer.js")).send().await.unwrap();
    assert!(init.headers()["content-type"].to_str().unwrap().contains("javascript"));
    let init = init.text().await.unwrap();
    assert!(init.contains("\"url\": \"/api/v1/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    assert!(!init.contains("petstore"), "{init}");

    let missing = gw.http.get(gw.url("/api/v1/docs/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    gw.stop().await;
}

/// The reference in headless Chromium (Debian's `chromium`): the page runs under its policy,
/// fetches the document and shows its operations, and logs nothing (no policy violation, no
/// failed load). Skipped with a message without Chromium, except under `CI=true`.
#[tokio::test]
async fn the_interactive_reference_renders_in_a_real_browser() {
    use keel::testing::browser;
    if !keel::testing::require_program("Chromium", browser::CHROMIUM) {
        return;
    }
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, url) = (dir.path().to_owned(), gw.url("/api/v1/docs"));
    let page = tokio::task::spawn_blocking(move || {
        browser::chromium(&path, &["--dump-dom", "--virtual-time-budget=20000"], &url)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(page.console.is_empty(), "console messages: {:#?}", page.console);
    for shown in ["City Events API", "listEvents", "createEvent", "joinEvent", "/api/v1/events/{id}/view"] {
        assert!(page.dom.contains(shown), "{shown} is not on the page: {}", page.dom);
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_old_body_limit_setting_is_refused_naming_the_new_one() {
    let stubs = echoes().await;
    let ups: Vec<(&str, String)> = stubs.iter().map(|s| (s.name, s.url())).collect();
    let vars = env(&ups, &[("CITYEVENTS_GATEWAY__APP__MAX_BODY", "64KiB")]);
    let loaded = keel::app::Loader::new(cityevents_common::services::GATEWAY.name, keel::config::Profile::Test)
        .env(vars)
        .load::<cityevents_gateway::GatewayConfig>();
    let Err(e) = loaded else { panic!("app.max_body was accepted") };
    let text = e.to_string();
    assert!(text.contains("max_body") && text.contains("http.body_limit"), "{text}");
}

#[tokio::test]
async fn refuses_to_start_without_an_upstream() {
    let stubs = echoes().await;
    let ups: Vec<(&str, String)> = stubs.iter().filter(|s| s.name != "notifier").map(|s| (s.name, s.url())).collect();
    let err = Gateway::try_start(env(&ups, &[])).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("upstreams.notifier"), "{text}");
}

#[tokio::test]
async fn development_defaults_need_no_upstream_or_rate_limit_settings() {
    // Only the JWT keys: upstreams default to the services' local ports, the limit to 600/min.
    let jwt_only: Vec<(String, String)> =
        env(&[], &[]).into_iter().filter(|(k, _)| !k.contains("__RATE_LIMITS__")).collect();
    let gw = Gateway::try_start_profile(keel::config::Profile::Development, jwt_only).await.expect("starts");
    let resp = gw.http.get(gw.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-limit"], "600");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits

async fn get_as(gw: &Gateway, who: Option<&str>) -> reqwest::Response {
    let mut r = gw.http.get(gw.url("/api/v1/events"));
    if let Some(t) = who {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn assert_limited(resp: reqwest::Response, limit: &str) {
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(resp.headers()["ratelimit-limit"], limit);
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    assert!(resp.headers().contains_key("ratelimit-reset"));
    let body = problem(resp, 429).await;
    assert_eq!(body["code"], "RATE_LIMITED");
}

#[tokio::test]
async fn rate_limit_counts_per_user_else_per_ip() {
    let stubs = echoes().await;
    let gw = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &[("CITYEVENTS_GATEWAY__RATE_LIMITS__API__LIMIT", "3")])
        .await;
    let (alice, bob) = (token("alice"), token("bob"));
    for remaining in ["2", "1", "0"] {
        let resp = get_as(&gw, Some(&alice)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-limit"], "3");
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining);
    }
    assert_limited(get_as(&gw, Some(&alice)).await, "3").await;
    // Another user from the same address has a quota of their own, and so has anonymous traffic.
    assert_eq!(get_as(&gw, Some(&bob)).await.status(), 200);
    for _ in 0..3 {
        assert_eq!(get_as(&gw, None).await.status(), 200);
    }
    assert_limited(get_as(&gw, None).await, "3").await;
    assert_eq!(stubs[1].count(), 3 + 1 + 3, "refused requests never reach the service");
    gw.stop().await;
}

/// Accounts registered from one address share its budget, and sign-up has a stricter one.
#[tokio::test]
async fn more_accounts_do_not_buy_more_budget_and_sign_up_is_stricter() {
    let stubs = echoes().await;
    let gw = Gateway::start(
        &stubs.iter().collect::<Vec<_>>(),
        &[
            ("CITYEVENTS_GATEWAY__RATE_LIMITS__API__LIMIT", "10"),
            ("CITYEVENTS_GATEWAY__RATE_LIMITS__IP__LIMIT", "12"),
            ("CITYEVENTS_GATEWAY__RATE_LIMITS__STRICT__LIMIT", "2"),
        ],
    )
    .await;
    // Five fresh accounts from one address, three requests each: together they get the
    // address's 12, not five budgets of 10.
    let mut served = 0;
    for i in 0..5 {
        let t = token(&format!("fresh{i}"));
        for _ in 0..3 {
            served += usize::from(get_as(&gw, Some(&t)).await.status() == 200);
        }
    }
    assert_eq!(served, 12);
    assert_limited(get_as(&gw, Some(&token("fresh9"))).await, "12").await;

    // Sign-up from another address: two, then 429 with the sign-up budget's numbers, while the
    // rest of the API still answers that address.
    let other = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 3])).build().unwrap();
    assert_eq!(other.get(gw.url("/api/v1/events")).send().await.unwrap().status(), 200);
    let body = json!({"email": "new@example.com", "password": "a long enough password", "name": "New"});
    let register = || other.post(gw.url("/api/v1/auth/register")).json(&body).send();
    for _ in 0..2 {
        let resp = register().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    assert_limited(register().await.unwrap(), "2").await;
    assert_eq!(other.get(gw.url("/api/v1/events")).send().await.unwrap().status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn rate_limit_is_shared_through_redis() {
    let url = keel::testing::redis_url();
    if !keel::testing::require("Redis", &url) {
        return;
    }
    let keys = keel::testing::TestRedis::new(&url);
    let stubs = echoes().await;
    let extra = [
        ("CITYEVENTS_GATEWAY__RATE_LIMITS__API__LIMIT", "3"),
        ("CITYEVENTS_GATEWAY__RATE_LIMITS__API__BACKEND", "redis"),
        ("CITYEVENTS_GATEWAY__REDIS__URL", url.as_str()),
        ("CITYEVENTS_GATEWAY__REDIS__KEY_PREFIX", keys.prefix()),
    ];
    let one = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &extra).await;
    let two = Gateway::start(&stubs.iter().collect::<Vec<_>>(), &extra).await;
    // Redis connects in the background: wait until the first decision is made (headers present).
    let alice = token(&Uuid::now_v7().to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probe = token(&Uuid::now_v7().to_string());
    while !get_as(&one, Some(&probe)).await.headers().contains_key("ratelimit-limit") {
        assert!(Instant::now() < deadline, "the Redis limiter never decided");
        tokio::time::sleep(Duration::from_millis(50)).await;
        probe = token(&Uuid::now_v7().to_string());
    }
    assert_eq!(get_as(&one, Some(&alice)).await.headers()["ratelimit-remaining"], "2");
    assert_eq!(get_as(&two, Some(&alice)).await.headers()["ratelimit-remaining"], "1");
    assert_eq!(get_as(&one, Some(&alice)).await.status(), 200);
    assert_limited(get_as(&two, Some(&alice)).await, "3").await;
    assert_eq!(get_as(&two, Some(&token("someone-else"))).await.status(), 200);
    one.stop().await;
    two.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Upstream failures

#[tokio::test]
async fn unreachable_slow_or_failing_services_answer_problems_quickly() {
    // events always fails (500); joins is slow; auth is not running at all.
    let events = Stub::start(
        "events",
        Router::new().fallback(|| async {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "application/problem+json")],
                r#"{"status":500,"title":"boom","type":"urn:x"}"#,
            )
        }),
    )
    .await;
    let joins = Stub::start(
        "joins",
        Router::new().fallback(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "late"
        }),
    )
    .await;
    let notifier = Stub::echo("notifier").await;
    let ups = vec![
        ("auth", format!("http://127.0.0.1:{}", closed_port())),
        ("events", events.url()),
        ("joins", joins.url()),
        ("notifier", notifier.url()),
    ];
    let gw = Gateway::try_start(env(
        &ups,
        &[
            ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__BREAKER__MINIMUM_CALLS", "2"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__BREAKER__OPEN_WAIT", "30s"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__RETRY__MAX_ATTEMPTS", "1"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__REQUEST_TIMEOUT", "300ms"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__RETRY__MAX_ATTEMPTS", "1"),
        ],
    ))
    .await
    .unwrap();

    // Not running: 503 (nothing was sent), at once.
    let started = Instant::now();
    let resp = gw
        .http
        .post(gw.url("/api/v1/auth/login"))
        .json(&json!({"email": "a@b.c", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    problem(resp, 503).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Too slow: 504 after the upstream's timeout, not the service's 3 s.
    let started = Instant::now();
    let id = Uuid::now_v7();
    problem(gw.http.get(gw.url(&format!("/api/v1/events/{id}/counts"))).send().await.unwrap(), 504).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // A service's own 500 problem comes back as it is, until the breaker opens: then 503 at once.
    for _ in 0..2 {
        let resp = gw.http.get(gw.url("/api/v1/events")).send().await.unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.json::<Value>().await.unwrap()["title"], "boom");
    }
    let resp = gw.http.get(gw.url("/api/v1/events")).send().await.unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let body = problem(resp, 503).await;
    assert_eq!(body["code"], "SERVICE_DEGRADED");
    assert_eq!(events.count(), 2, "an open breaker sends nothing");
    gw.stop().await;
}

/// Searches that fail (the events service cut them off) open the breaker of the searches'
/// client only: the events list, and every other events route, keep being forwarded.
#[tokio::test]
async fn failing_searches_open_their_own_breaker_only() {
    let events = Stub::start(
        "events",
        Router::new().fallback(|uri: http::Uri| async move {
            if uri.query().unwrap_or_default().contains("q=") {
                let body = r#"{"status":503,"title":"Query took too long","type":"urn:query-timeout"}"#;
                (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/problem+json")], body).into_response()
            } else {
                axum::Json(json!({"items": [], "next_cursor": null})).into_response()
            }
        }),
    )
    .await;
    let (joins, notifier) = (Stub::echo("joins").await, Stub::echo("notifier").await);
    let ups = vec![
        ("auth", format!("http://127.0.0.1:{}", closed_port())),
        ("events", events.url()),
        ("joins", joins.url()),
        ("notifier", notifier.url()),
    ];
    let gw = Gateway::try_start(env(
        &ups,
        &[
            ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__BREAKER__MINIMUM_CALLS", "2"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__BREAKER__OPEN_WAIT", "30s"),
        ],
    ))
    .await
    .unwrap();
    for _ in 0..2 {
        let resp = gw.http.get(gw.url("/api/v1/events?q=jazz")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.json::<Value>().await.unwrap()["type"], "urn:query-timeout", "the service's own problem");
    }
    assert_eq!(events.count(), 2, "searches are not retried");
    let body = problem(gw.http.get(gw.url("/api/v1/events?q=rock")).send().await.unwrap(), 503).await;
    assert_eq!(body["code"], "SERVICE_DEGRADED", "the searches' breaker is open");
    assert_eq!(events.count(), 2, "an open breaker sends nothing");
    // The rest of the events API is untouched, and so is the site's list.
    for path in ["/api/v1/events", "/api/v1/events?city=Lyon", "/api/v1/events?limit=5"] {
        let resp = gw.http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(events.count(), 5);
    let metrics = gw.http.get(gw.management_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"circuit_breaker_state{name="events_search"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"circuit_breaker_state{name="events"} 0"#), "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_stays_ready_while_an_upstream_is_down_and_its_routes_answer_503() {
    let (events, joins, notifier) =
        (Stub::echo("events").await, Stub::echo("joins").await, Stub::echo("notifier").await);
    let ups = vec![
        ("auth", format!("http://127.0.0.1:{}", closed_port())),
        ("events", events.url()),
        ("joins", joins.url()),
        ("notifier", notifier.url()),
    ];
    // Even an upstream marked required only degrades the gateway: its breaker turns the down
    // service's routes into quick 503s while every other route answers.
    let gw = Gateway::try_start(env(
        &ups,
        &[
            ("CITYEVENTS_GATEWAY__UPSTREAMS__AUTH__HEALTH_PATH", "/health/ready"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__AUTH__REQUIRED", "true"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__HEALTH_PATH", "/health/ready"),
        ],
    ))
    .await
    .unwrap();
    let ready = gw.http.get(gw.url("/health/ready")).send().await.unwrap();
    let status = ready.status();
    let body: Value = ready.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_ne!(body["checks"]["upstream:auth"]["status"], "up", "the down upstream is reported: {body}");

    let started = Instant::now();
    let resp =
        gw.http.post(gw.url("/api/v1/auth/login")).json(&json!({"email": "a@b.c", "password": "x"})).send().await;
    problem(resp.unwrap(), 503).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(gw.http.get(gw.url("/api/v1/events")).send().await.unwrap().status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_hung_upstream_costs_a_read_two_attempts_a_write_one_and_any_call_the_total() {
    let joins = Stub::start(
        "joins",
        Router::new().fallback(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        }),
    )
    .await;
    let (auth, events, notifier) = (Stub::echo("auth").await, Stub::echo("events").await, Stub::echo("notifier").await);
    let ups =
        vec![("auth", auth.url()), ("events", events.url()), ("joins", joins.url()), ("notifier", notifier.url())];
    let gw = Gateway::try_start(env(
        &ups,
        &[
            ("CITYEVENTS_GATEWAY__APP__UPSTREAM_TIMEOUTS__READ", "300ms"),
            ("CITYEVENTS_GATEWAY__APP__UPSTREAM_TIMEOUTS__WRITE", "700ms"),
            ("CITYEVENTS_GATEWAY__APP__UPSTREAM_TIMEOUTS__TOTAL", "1s"),
            // The upstream's own timeout is longer: the route's apply.
            ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__REQUEST_TIMEOUT", "30s"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__RETRY__MAX_ATTEMPTS", "2"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__BREAKER__WINDOW__SIZE", "100"),
            ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__BREAKER__MINIMUM_CALLS", "100"),
        ],
    ))
    .await
    .unwrap();
    let id = Uuid::now_v7();
    let bearer = token(&Uuid::now_v7().to_string());

    // A read: two attempts of 300 ms.
    let started = Instant::now();
    problem(gw.http.get(gw.url(&format!("/api/v1/events/{id}/counts"))).send().await.unwrap(), 504).await;
    let read = started.elapsed();
    assert_eq!(joins.count(), 2, "one retry of a read");
    assert!(read < Duration::from_secs(2), "{read:?}");

    // A write without an Idempotency-Key: one attempt of 700 ms, never retried.
    let started = Instant::now();
    let resp = gw.http.post(gw.url(&format!("/api/v1/events/{id}/join"))).bearer_auth(&bearer).send().await.unwrap();
    problem(resp, 504).await;
    assert_eq!(joins.count(), 3, "a write is not retried");
    assert!(started.elapsed() >= Duration::from_millis(650), "{:?}", started.elapsed());

    // A write with an Idempotency-Key may be retried, but all attempts stop at the total (1 s).
    let started = Instant::now();
    let resp = gw
        .http
        .post(gw.url(&format!("/api/v1/events/{id}/join")))
        .bearer_auth(&bearer)
        .header("idempotency-key", "k-1")
        .send()
        .await
        .unwrap();
    problem(resp, 504).await;
    let bounded = started.elapsed();
    assert_eq!(joins.count(), 5, "retried once");
    assert!(bounded < Duration::from_millis(1400), "two 700 ms attempts cut at the 1 s total: {bounded:?}");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_timeouts_longer_than_their_total_are_refused() {
    let stubs = echoes().await;
    let ups: Vec<(&str, String)> = stubs.iter().map(|s| (s.name, s.url())).collect();
    let loaded = keel::app::Loader::new(cityevents_common::services::GATEWAY.name, keel::config::Profile::Test)
        .env(env(
            &ups,
            &[
                ("CITYEVENTS_GATEWAY__APP__UPSTREAM_TIMEOUTS__WRITE", "10s"),
                ("CITYEVENTS_GATEWAY__APP__UPSTREAM_TIMEOUTS__TOTAL", "6s"),
                ("CITYEVENTS_GATEWAY__APP__UPSTREAM_TIMEOUTS__READ", "0s"),
            ],
        ))
        .load::<cityevents_gateway::GatewayConfig>();
    let Err(err) = loaded else { panic!("refused") };
    let err = err.to_string();
    assert!(err.contains("app.upstream_timeouts.write") && err.contains("app.upstream_timeouts.read"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The aggregate view

const MISSING: &str = "00000000-0000-7000-8000-000000000404";
const NOT_JOINED: &str = "00000000-0000-7000-8000-000000000001";
const BROKEN: &str = "00000000-0000-7000-8000-000000000500";

async fn view_services() -> (Stub, Stub) {
    let events = Stub::start(
        "events",
        Router::new().route(
            "/api/v1/events/{id}",
            get(|Path(id): Path<String>| async move {
                if id == MISSING {
                    return (
                        StatusCode::NOT_FOUND,
                        [("content-type", "application/problem+json")],
                        r#"{"type":"urn:keel:problem:not-found","title":"Not found","status":404,"detail":"no such event"}"#,
                    )
                        .into_response();
                }
                axum::Json(json!({"id": id, "title": "Jazz", "capacity": 10, "status": "published"})).into_response()
            }),
        ),
    )
    .await;
    let joins = Stub::start(
        "joins",
        Router::new()
            .route(
                "/api/v1/events/{id}/join",
                get(|Path(id): Path<String>| async move {
                    match id.as_str() {
                        NOT_JOINED => StatusCode::NOT_FOUND.into_response(),
                        BROKEN => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            "late".into_response()
                        }
                        _ => {
                            axum::Json(json!({"join_id": "j1", "event_id": id, "status": "confirmed"})).into_response()
                        }
                    }
                }),
            )
            .route(
                "/api/v1/events/{id}/counts",
                get(|Path(id): Path<String>| async move {
                    if id == BROKEN {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    axum::Json(json!({"capacity": 10, "confirmed": 3, "waitlisted": 0})).into_response()
                }),
            ),
    )
    .await;
    (events, joins)
}

fn view_env() -> [(&'static str, &'static str); 3] {
    [
        ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__REQUEST_TIMEOUT", "300ms"),
        ("CITYEVENTS_GATEWAY__UPSTREAMS__JOINS__RETRY__MAX_ATTEMPTS", "1"),
        ("CITYEVENTS_GATEWAY__UPSTREAMS__EVENTS__RETRY__MAX_ATTEMPTS", "1"),
    ]
}

#[tokio::test]
async fn view_aggregates_event_participation_and_counts() {
    let (events, joins) = view_services().await;
    let (auth, notifier) = (Stub::echo("auth").await, Stub::echo("notifier").await);
    let gw = Gateway::start(&[&auth, &events, &joins, &notifier], &view_env()).await;
    let t = token(&Uuid::now_v7().to_string());
    let view = |id: String, with_token: bool| {
        let mut r = gw.http.get(gw.url(&format!("/api/v1/events/{id}/view")));
        if with_token {
            r = r.bearer_auth(&t);
        }
        r.send()
    };

    let id = Uuid::now_v7().to_string();
    let resp = view(id.clone(), true).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["event"]["id"], id.as_str());
    assert_eq!(v["participation"]["status"], "confirmed");
    assert_eq!(v["counts"], json!({"capacity": 10, "confirmed": 3, "waitlisted": 0}));
    let seen_event = events.requests().pop().unwrap();
    assert_eq!(
        seen_event.headers["authorization"],
        format!("Bearer {t}").as_str(),
        "drafts need the organizer's token"
    );

    // Without a token: no participation, and joins is not asked for it.
    let joins_before = joins.requests().len();
    let v: Value = view(id.clone(), false).await.unwrap().json().await.unwrap();
    assert_eq!(v["participation"], Value::Null);
    assert_eq!(v["counts"]["capacity"], 10);
    let asked: Vec<String> = joins.requests()[joins_before..].iter().map(|s| s.path.clone()).collect();
    assert_eq!(asked, vec![format!("/api/v1/events/{id}/counts")]);

    // Not joined: null.
    let v: Value = view(NOT_JOINED.into(), true).await.unwrap().json().await.unwrap();
    assert_eq!(v["participation"], Value::Null);
    assert_eq!(v["event"]["title"], "Jazz");

    // joins times out on one part and fails on the other: both unavailable, the page still answers.
    let started = Instant::now();
    let resp = view(BROKEN.into(), true).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(v["participation"], json!({"unavailable": true}));
    assert_eq!(v["counts"], json!({"unavailable": true}));
    assert_eq!(v["event"]["title"], "Jazz");

    // The event is critical: its 404 is the answer, as events sent it.
    let resp = view(MISSING.into(), true).await.unwrap();
    let body = problem(resp, 404).await;
    assert_eq!(body["detail"], "no such event");

    // A bad id never reaches a service.
    let before = (events.count(), joins.count());
    let body = problem(view("..%2F..%2Fme".into(), true).await.unwrap(), 400).await;
    assert_eq!(body["errors"][0]["field"], "id");
    assert_eq!((events.count(), joins.count()), before);

    // A bad token is refused even though the page is public.
    problem(gw.http.get(gw.url(&format!("/api/v1/events/{id}/view"))).bearer_auth("nope").send().await.unwrap(), 401)
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn view_fails_when_the_events_service_is_down() {
    let (_, joins) = view_services().await;
    let (auth, notifier) = (Stub::echo("auth").await, Stub::echo("notifier").await);
    let ups = vec![
        ("auth", auth.url()),
        ("events", format!("http://127.0.0.1:{}", closed_port())),
        ("joins", joins.url()),
        ("notifier", notifier.url()),
    ];
    let gw = Gateway::try_start(env(&ups, &view_env())).await.unwrap();
    let started = Instant::now();
    let resp = gw.http.get(gw.url(&format!("/api/v1/events/{}/view", Uuid::now_v7()))).send().await.unwrap();
    problem(resp, 503).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.stop().await;
}

#[test]
fn the_binary_answers_version_and_exits_78_on_a_bad_config() {
    cityevents_common::testing::check_binary_cli(env!("CARGO_BIN_EXE_cityevents-gateway"), "cityevents-gateway");
}

// ---------------------------------------------------------------------------------------------
// Seats in event lists

#[tokio::test]
async fn event_lists_carry_seats_from_one_joins_call_per_page() {
    let (full, open, unlimited, draft) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let page = json!({
        "items": [
            {"id": full.to_string(), "capacity": 2},
            {"id": open.to_string(), "capacity": 10},
            {"id": unlimited.to_string(), "capacity": 0},
            {"id": draft.to_string(), "capacity": 5},
        ],
        "next_cursor": "abc",
    });
    let listed = page.clone();
    let events = Stub::start(
        "events",
        Router::new().route("/api/v1/events", get(move || async move { axum::Json(listed) })).route(
            "/api/v1/me/events",
            get(|| async {
                (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/problem+json")],
                    r#"{"type":"urn:keel:problem:validation","title":"Invalid","status":400}"#,
                )
            }),
        ),
    )
    .await;
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = healthy.clone();
    let joins = Stub::start(
        "joins",
        Router::new().route(
            "/api/v1/events/counts",
            get(move || {
                let up = up.clone();
                async move {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    axum::Json(json!({"items": [
                        {"event_id": full.to_string(), "capacity": 2, "confirmed": 2, "waitlisted": 4},
                        {"event_id": open.to_string(), "capacity": 10, "confirmed": 3, "waitlisted": 0},
                        {"event_id": unlimited.to_string(), "capacity": 0, "confirmed": 7, "waitlisted": 0},
                    ]}))
                    .into_response()
                }
            }),
        ),
    )
    .await;
    let (auth, notifier) = (Stub::echo("auth").await, Stub::echo("notifier").await);
    let gw = Gateway::start(&[&auth, &events, &joins, &notifier], &view_env()).await;

    let resp = gw.http.get(gw.url("/api/v1/events?city=Berlin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["next_cursor"], "abc", "the page is otherwise unchanged");
    let seats: Vec<Value> = v["items"].as_array().unwrap().iter().map(|i| i["seats"].clone()).collect();
    assert_eq!(
        seats,
        vec![
            json!({"capacity": 2, "taken": 2, "free": 0, "waitlisted": 4}),
            json!({"capacity": 10, "taken": 3, "free": 7, "waitlisted": 0}),
            json!({"capacity": 0, "taken": 7, "free": null, "waitlisted": 0}),
            json!({"capacity": 5, "taken": 0, "free": 5, "waitlisted": 0}),
        ]
    );
    let asked = joins.requests();
    assert_eq!(asked.len(), 1, "one call for the whole page");
    assert_eq!(asked[0].path, "/api/v1/events/counts");
    assert_eq!(asked[0].query.as_deref(), Some(format!("ids={full},{open},{unlimited},{draft}").as_str()));

    // joins fails: the page still answers, seats unavailable.
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let v: Value = gw.http.get(gw.url("/api/v1/events")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["seats"] == json!({"unavailable": true})), "{v}");

    // The events service's refusal is relayed as it is, and joins is not asked.
    let before = joins.count();
    let t = token(&Uuid::now_v7().to_string());
    let resp = gw.http.get(gw.url("/api/v1/me/events")).bearer_auth(&t).send().await.unwrap();
    problem(resp, 400).await;
    assert_eq!(joins.count(), before);
    gw.stop().await;
}

#[tokio::test]
async fn user_lists_carry_display_names_from_one_auth_call_per_page() {
    let (ann, bob, gone) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let event = Uuid::now_v7();
    let page = json!({
        "items": [
            {"join_id": "j1", "user_id": ann.to_string(), "status": "confirmed"},
            {"join_id": "j2", "user_id": bob.to_string(), "status": "confirmed"},
            {"join_id": "j3", "user_id": gone.to_string(), "status": "confirmed"},
        ],
        "next_cursor": null,
    });
    let listed = page.clone();
    let joins = Stub::start(
        "joins",
        Router::new()
            .route("/api/v1/events/{id}/participants", get(move || async move { axum::Json(listed) }))
            .route("/api/v1/events/{id}/bans", get(|| async { axum::Json(json!({"items": [], "next_cursor": null})) })),
    )
    .await;
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = healthy.clone();
    let auth = Stub::start(
        "auth",
        Router::new().route(
            "/api/v1/users/names",
            get(move || {
                let up = up.clone();
                async move {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    axum::Json(json!({"items": [
                        {"id": ann.to_string(), "name": "Ann"},
                        {"id": bob.to_string(), "name": "Bob <b>"},
                    ]}))
                    .into_response()
                }
            }),
        ),
    )
    .await;
    let (events, notifier) = (Stub::echo("events").await, Stub::echo("notifier").await);
    let gw = Gateway::start(&[&auth, &events, &joins, &notifier], &view_env()).await;
    let t = token(&Uuid::now_v7().to_string());

    let path = format!("/api/v1/events/{event}/participants");
    let resp = gw.http.get(gw.url(&path)).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let names: Vec<Value> = v["items"].as_array().unwrap().iter().map(|i| i["name"].clone()).collect();
    assert_eq!(names, [json!("Ann"), json!("Bob <b>"), Value::Null], "an account auth does not know: null");
    assert_eq!(v["items"][0]["join_id"], "j1", "the items are otherwise unchanged");
    let asked = auth.requests();
    assert_eq!(asked.len(), 1, "one call for the page");
    assert_eq!(asked[0].query.as_deref(), Some(format!("ids={ann},{bob},{gone}").as_str()));
    assert_eq!(asked[0].headers["authorization"], format!("Bearer {t}").as_str(), "with the caller's token");

    // An empty page asks nobody; auth failing leaves the names null, the page answered.
    gw.http.get(gw.url(&format!("/api/v1/events/{event}/bans"))).bearer_auth(&t).send().await.unwrap();
    assert_eq!(auth.requests().len(), 1);
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let v: Value = gw.http.get(gw.url(&path)).bearer_auth(&t).send().await.unwrap().json().await.unwrap();
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["name"].is_null()), "{v}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Joins of an event published a moment ago

#[tokio::test]
async fn a_join_of_an_event_joins_has_not_heard_of_yet_waits_for_it() {
    // `lagging`: published, joins hears of it after two tries; `never`: published, joins never
    // hears of it; `draft`: the events service does not show it.
    let (lagging, never, draft) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let events = Stub::start(
        "events",
        Router::new().route(
            "/api/v1/events/{id}",
            get(move |Path(id): Path<Uuid>| async move {
                if id == draft {
                    return (
                        StatusCode::NOT_FOUND,
                        [("content-type", "application/problem+json")],
                        r#"{"type":"urn:keel:problem:not-found","title":"Not found","status":404}"#,
                    )
                        .into_response();
                }
                axum::Json(json!({"id": id, "title": "Jazz", "status": "published"})).into_response()
            }),
        ),
    )
    .await;
    let tries = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<Uuid, usize>::new()));
    let counted = tries.clone();
    let joins = Stub::start(
        "joins",
        Router::new().route(
            "/api/v1/events/{id}/join",
            axum::routing::post(move |Path(id): Path<Uuid>| {
                let counted = counted.clone();
                async move {
                    let n = {
                        let mut t = counted.lock().unwrap();
                        let n = t.entry(id).or_default();
                        *n += 1;
                        *n
                    };
                    if id == lagging && n > 2 {
                        return (StatusCode::CREATED, axum::Json(json!({"event_id": id, "status": "confirmed"})))
                            .into_response();
                    }
                    (
                        StatusCode::NOT_FOUND,
                        [("content-type", "application/problem+json")],
                        r#"{"type":"urn:keel:problem:not-found","title":"Not found","status":404,"code":"event_not_found"}"#,
                    )
                        .into_response()
                }
            }),
        ),
    )
    .await;
    let (auth, notifier) = (Stub::echo("auth").await, Stub::echo("notifier").await);
    let gw = Gateway::start(&[&auth, &events, &joins, &notifier], &view_env()).await;
    let t = token(&Uuid::now_v7().to_string());
    let join = |id: Uuid, key: &'static str| {
        gw.http
            .post(gw.url(&format!("/api/v1/events/{id}/join")))
            .bearer_auth(&t)
            .header("idempotency-key", key)
            .json(&json!({}))
            .send()
    };

    // Joins catches up on the third try: the person is in, with one idempotency key throughout.
    let resp = join(lagging, "k-lagging").await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(tries.lock().unwrap()[&lagging], 3);
    let sent: Vec<_> = joins.requests().into_iter().filter(|s| s.path.contains(&lagging.to_string())).collect();
    assert!(sent.iter().all(|s| s.headers["idempotency-key"] == "k-lagging"), "the same join each time");
    let asked = events.requests();
    assert_eq!(asked.len(), 1, "events asked once");
    assert_eq!(asked[0].path, format!("/api/v1/events/{lagging}"));
    assert!(asked[0].headers.get("authorization").is_none(), "as anyone would see it");

    // Joins never hears of it: a retryable 503 after every pause, not a 404.
    let started = Instant::now();
    let resp = join(never, "k-never").await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = problem(resp, 503).await;
    assert_eq!(body["code"], "event_not_ready");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert_eq!(tries.lock().unwrap()[&never], 6, "one try and five repeats");
    assert!(started.elapsed() >= Duration::from_millis(1_500), "{:?}", started.elapsed());

    // An event the events service does not show keeps joins' 404, asked once.
    let body = problem(join(draft, "k-draft").await.unwrap(), 404).await;
    assert_eq!(body["code"], "event_not_found");
    assert_eq!(tries.lock().unwrap()[&draft], 1);

    // Leaving is not a join: relayed as it is.
    let before = joins.count();
    let resp = gw.http.delete(gw.url(&format!("/api/v1/events/{never}/join"))).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), 405, "the stub has no DELETE");
    assert_eq!(joins.count(), before + 1);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Reports about accounts

#[tokio::test]
async fn a_report_about_an_account_auth_does_not_know_stops_at_the_gateway() {
    let known = Uuid::now_v7();
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up = healthy.clone();
    let auth = Stub::start(
        "auth",
        Router::new().route(
            "/api/v1/profiles/{id}",
            get(move |Path(id): Path<Uuid>| {
                let up = up.clone();
                async move {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    if id != known {
                        return StatusCode::NOT_FOUND.into_response();
                    }
                    axum::Json(json!({"id": id, "name": "Ann", "bio": "", "city": null, "member_since": "2026-01-01T00:00:00Z"}))
                        .into_response()
                }
            }),
        ),
    )
    .await;
    let events = Stub::echo_answering("events", 201, false).await;
    let (joins, notifier) = (Stub::echo("joins").await, Stub::echo("notifier").await);
    let gw = Gateway::start(&[&auth, &events, &joins, &notifier], &[]).await;
    let t = token(&Uuid::now_v7().to_string());
    let send = |body: String, bearer: Option<&str>| {
        let mut req = gw.http.post(gw.url("/api/v1/reports")).header("content-type", "application/json").body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.send()
    };
    let about = |kind: &str, id: Uuid| format!(r#"{{"kind":"{kind}","target_id":"{id}","reason":"spam"}}"#);

    // An account auth does not know: 404, and the events service never hears of it.
    let body = problem(send(about("user", Uuid::now_v7()), Some(&t)).await.unwrap(), 404).await;
    assert_eq!(body["code"], "target_not_found", "{body}");
    assert_eq!((auth.count(), events.count()), (1, 0));
    assert!(auth.requests()[0].headers.get("authorization").is_none(), "a public profile, asked as anyone");

    // A known account: forwarded as it came, once.
    let sent = about("user", known);
    let resp = send(sent.clone(), Some(&t)).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!((auth.count(), events.count()), (2, 1));
    let seen = events.requests().pop().unwrap();
    assert_eq!((seen.path.as_str(), seen.body.as_ref()), ("/api/v1/reports", sent.as_bytes()));
    assert_eq!(seen.headers["authorization"], format!("Bearer {t}").as_str());

    // An event, or a body the events service refuses itself: forwarded without asking auth.
    for body in [about("event", Uuid::now_v7()), "{\"kind\":\"user\"}".to_owned(), "not json".to_owned()] {
        assert_eq!(send(body.clone(), Some(&t)).await.unwrap().status(), 201, "{body}");
    }
    assert_eq!((auth.count(), events.count()), (2, 4));

    // Signed out: the edge's 401 before anyone is asked.
    assert_eq!(send(about("user", known), None).await.unwrap().status(), 401);
    assert_eq!((auth.count(), events.count()), (2, 4));

    // Auth cannot say: 503, nothing forwarded.
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let body = problem(send(about("user", known), Some(&t)).await.unwrap(), 503).await;
    assert_eq!(body["code"], "SERVICE_DEGRADED", "{body}");
    assert_eq!(events.count(), 4);
    gw.stop().await;
}
