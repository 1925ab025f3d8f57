//! The admin routes (`/admin/status`, `/admin/flags`, `/admin/log-level`), workers and feature
//! flags, seen from outside the running fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Fixture, client, eventually};
use serde_json::Value;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

const FLAGS: &str = "\
new_checkout:
  enabled: true
  strategy: percentage
  rules: {percentage: 50}
  description: The new checkout flow
  tags: [checkout]
beta:
  enabled: true
  strategy: user
  rules: {users: [alice]}
launch:
  enabled: false
";

/// A fixture with workers, flags, a rate-limit policy and a circuit breaker, and its flags file.
async fn full_fixture(dir: &tempfile::TempDir) -> (Fixture, std::path::PathBuf) {
    let path = dir.path().join("flags.yaml");
    std::fs::write(&path, FLAGS).unwrap();
    let f = Fixture::start(&[
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
        ("FIXTURE__APP__WORKERS", "true"),
        ("FIXTURE__APP__RATE_LIMITED", "true"),
        ("FIXTURE__RATE_LIMITS__API__LIMIT", "100"),
        ("FIXTURE__APP__UPSTREAM", "true"),
        ("FIXTURE__UPSTREAMS__ECHO__BASE_URL", "http://127.0.0.1:9"),
        ("FIXTURE__FEATURES__FILE", path.to_str().unwrap()),
        ("FIXTURE__FEATURES__POLL_INTERVAL", "50ms"),
    ])
    .await;
    (f, path)
}

async fn admin_json(f: &Fixture, path: &str) -> Value {
    let resp = client()
        .get(format!("{}{path}", f.mgmt))
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn every_admin_route_needs_the_token() {
    let f = Fixture::start(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN)]).await;
    let c = client();
    for path in ["/admin/status", "/admin/flags", "/admin/log-level"] {
        let url = format!("{}{path}", f.mgmt);
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} without a token");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        for wrong in ["wrong", &TOKEN[..TOKEN.len() - 1], &format!("{TOKEN}x"), &TOKEN.to_uppercase()] {
            let resp = c.get(&url).bearer_auth(wrong).send().await.unwrap();
            assert_eq!(resp.status(), 401, "{path} with {wrong}");
        }
        let resp = c.get(&url).header("authorization", format!("Basic {TOKEN}")).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}: only a bearer token counts");
        let resp = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} with the token");
        // The auth-scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let resp = c.get(&url).header("authorization", format!("{scheme} {TOKEN}")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path} with scheme {scheme}");
        }
    }
    f.stop().await;

    // No token configured: closed to everyone, loopback included, saying which setting opens it.
    let f = Fixture::start(&[]).await;
    for path in ["/admin/status", "/admin/flags"] {
        let resp = client().get(format!("{}{path}", f.mgmt)).bearer_auth("").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let p: Value = resp.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("FIXTURE__MANAGEMENT__ADMIN_TOKEN"), "{p}");
    }
    assert!(f.running().sign_in_link().is_none(), "no token, no sign-in link");
    f.stop().await;
}

#[tokio::test]
async fn unknown_management_paths_are_404_and_the_root_leads_to_the_page() {
    let f = Fixture::start(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN)]).await;
    for path in ["/nope", "/admin/nope", "/admin/", "/metricsx"] {
        let resp = client().get(format!("{}{path}", f.mgmt)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{path}");
        assert!(resp.headers().contains_key("x-request-id"), "{path}: the problem has its request id");
    }
    // The listener's address and /admin lead to the page.
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for path in ["/", "/admin"] {
        let resp = c.get(format!("{}{path}", f.mgmt)).send().await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()),
            (303, "/admin/status"),
            "{path}"
        );
    }
    f.stop().await;
}

/// The session cookie a sign-in answer sets.
fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/admin"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_browser_signs_in_with_a_one_time_link_or_the_token() {
    let f = Fixture::start(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN)]).await;
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let status = format!("{}/admin/status", f.mgmt);
    // A browser without a session is sent to the form; a script gets 401.
    let resp = c.get(&status).header("accept", "text/html").send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/admin/login"));
    let form = c.get(format!("{}/admin/login", f.mgmt)).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("name=\"token\""));

    // The link works once and sets a cookie that reads every admin page.
    let link = f.running().sign_in_link().unwrap();
    assert!(link.starts_with(&format!("{}/admin/login?code=", f.mgmt)), "{link}");
    let resp = c.get(&link).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["location"].to_str().unwrap()), (303, "/admin/status"));
    let cookie = session_cookie(&resp);
    let again = c.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 401, "a link works once");
    assert!(again.headers().get("set-cookie").is_none());
    for path in ["/admin/status", "/admin/flags", "/admin/log-level"] {
        let resp = c.get(format!("{}{path}", f.mgmt)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} with the session cookie");
    }
    // A change needs the bearer token: no page a browser visits can make one.
    let put =
        c.put(format!("{}/admin/log-level", f.mgmt)).header("cookie", &cookie).body("debug").send().await.unwrap();
    assert_eq!(put.status(), 401);
    // A forged or foreign cookie is refused.
    for bad in ["keel_admin=1.abc", "keel_admin=", &cookie.replace('.', ".x")] {
        let resp = c.get(&status).header("cookie", bad).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{bad}");
    }

    // The form: the wrong token is refused, the right one signs in.
    let form = |token: &str| {
        c.post(format!("{}/admin/login", f.mgmt))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    let wrong = form("wrong").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = form(TOKEN).await.unwrap();
    assert_eq!(right.status(), 303);
    let cookie = session_cookie(&right);
    assert_eq!(c.get(&status).header("cookie", &cookie).send().await.unwrap().status(), 200);
    // Signing out clears it, and ends it: a copy of the cookie is refused from then on (the
    // finding: it kept working for up to 12 h). Another session goes on.
    let again = form(TOKEN).await.unwrap();
    let kept = session_cookie(&again);
    let out = c.post(format!("{}/admin/logout", f.mgmt)).header("cookie", &cookie).send().await.unwrap();
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(c.get(&status).header("cookie", &cookie).send().await.unwrap().status(), 401, "a copy after sign-out");
    assert_eq!(c.get(&status).header("cookie", &kept).send().await.unwrap().status(), 200, "another session");
    f.stop().await;

    // Another token (another deployment) does not accept this one's cookie.
    let other = Fixture::start(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", "another-token-0123456789abcdef")]).await;
    let resp = c.get(format!("{}/admin/status", other.mgmt)).header("cookie", &kept).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    other.stop().await;
}

#[tokio::test]
async fn status_json_shows_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = full_fixture(&dir).await;
    // A rejected log-level change is a reload attempt too (logging is not set up in tests).
    let resp =
        client().put(format!("{}/admin/log-level", f.mgmt)).bearer_auth(TOKEN).body("loud").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let mut doc = Value::Null;
    for _ in 0..400 {
        doc = admin_json(&f, "/admin/status").await;
        let ticker = doc["workers"].as_array().unwrap().iter().find(|w| w["name"] == "ticker").cloned();
        if ticker.is_some_and(|t| t["runs"].as_u64().unwrap() > 0)
            && doc["health"]["readiness"]["checks"]["self"]["latency_ms"].is_u64()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s = &doc["service"];
    assert_eq!(s["name"], "fixture");
    assert_eq!(s["profile"], "test");
    assert!(s["version"].is_string() && s["commit"].is_string() && s["uptime_seconds"].is_u64());
    let ready = &doc["health"]["readiness"];
    assert_eq!(ready["checks"]["self"]["status"], "up");
    assert!(ready["checks"]["self"]["age_ms"].is_u64());
    assert!(doc["health"]["liveness"]["checks"]["worker:ticker"].is_object());
    assert!(doc["health"]["startup"]["checks"]["warmup"].is_object());
    let workers = doc["workers"].as_array().unwrap();
    let ticker = workers.iter().find(|w| w["name"] == "ticker").unwrap();
    assert_eq!(ticker["schedule"], "periodic");
    assert_eq!(ticker["interval_ms"], 50);
    assert!(ticker["last_success"].is_string() && ticker["last_run_started"].is_string());
    assert_eq!(ticker["healthy"], true);
    let listener = workers.iter().find(|w| w["name"] == "listener").unwrap();
    assert_eq!(listener["schedule"], "continuous");
    assert_eq!(listener["alive"], true);
    assert_eq!(doc["breakers"][0]["name"], "echo");
    assert_eq!(doc["breakers"][0]["state"], "closed");
    let limit = &doc["rate_limits"][0];
    assert_eq!(
        (limit["name"].as_str(), limit["policy"]["limit"].as_u64(), limit["policy"]["backend"].as_str()),
        (Some("api"), Some(100), Some("local"))
    );
    assert_eq!(limit["on_backend_error"], "fail_open");
    let flags = doc["flags"]["flags"].as_array().unwrap();
    assert_eq!(
        flags.iter().map(|f| f["key"].as_str().unwrap()).collect::<Vec<_>>(),
        ["beta", "launch", "new_checkout"]
    );
    assert!(doc["flags"]["file"].as_str().unwrap().ends_with("flags.yaml"));
    let reload = &doc["reloads"][0];
    assert_eq!((reload["what"].as_str(), reload["ok"].as_bool()), (Some("log level"), Some(false)));

    // A server error is listed with the request id its client got; a 4xx is not.
    assert_eq!(doc["recent_failures"]["total"], 0);
    client().get(f.url("/no-such-page")).send().await.unwrap();
    let failed = client().get(f.url("/panic")).send().await.unwrap();
    assert_eq!(failed.status(), 500);
    let id = failed.headers()["x-request-id"].to_str().unwrap().to_owned();
    let doc = admin_json(&f, "/admin/status").await;
    let recent = &doc["recent_failures"];
    assert_eq!(recent["total"], 1);
    let item = &recent["items"][0];
    assert_eq!(
        (item["method"].as_str(), item["route"].as_str(), item["status"].as_u64()),
        (Some("GET"), Some("/panic"), Some(500))
    );
    assert_eq!(item["request_id"], id.as_str());
    let html = client()
        .get(format!("{}/admin/status", f.mgmt))
        .bearer_auth(TOKEN)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&format!("<code>{id}</code>")), "the page lists the request id");
    f.stop().await;
}

#[tokio::test]
async fn status_html_loads_nothing_but_its_stylesheet() {
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = full_fixture(&dir).await;
    let resp = client()
        .get(format!("{}/admin/status", f.mgmt))
        .bearer_auth(TOKEN)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("style-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let html = resp.text().await.unwrap();
    for id in [
        "service",
        "health",
        "traffic",
        "upstreams",
        "rate-limits",
        "workers",
        "consumers",
        "outbox",
        "breakers",
        "flags",
        "reloads",
        "errors",
    ] {
        assert!(html.contains(&format!("<section id=\"fixture-{id}\">")), "no {id} section");
    }
    // Nothing runs and nothing loads but the stylesheet, from this listener.
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("style="), "{html}");
    assert_eq!(html.matches("<link").count(), 1);
    // It reloads itself (no script: a refresh the CSP allows), unless asked not to.
    assert!(html.contains(r#"<meta http-equiv="refresh" content="15">"#), "{html}");
    let still = client()
        .get(format!("{}/admin/status?refresh=off", f.mgmt))
        .bearer_auth(TOKEN)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!still.contains("http-equiv=\"refresh\"") && still.contains("reload every 15 s"), "{still}");
    // Latency as its percentiles' buckets.
    assert!(html.contains("latency <strong>"), "{html}");
    // The icon a browser asks for is no error: none, without a 404 in its console.
    let icon = client().get(format!("{}/favicon.ico", f.mgmt)).send().await.unwrap();
    assert_eq!(icon.status(), 204);
    let css = client().get(format!("{}/admin/static/admin.css", f.mgmt)).send().await.unwrap();
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    f.stop().await;
}

#[tokio::test]
async fn flags_evaluate_and_hot_reload_in_the_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let (f, path) = full_fixture(&dir).await;
    let c = client();
    let flag = |key: &str, query: &str| {
        let url = f.url(&format!("/flags/{key}{query}"));
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().json::<Value>().await.unwrap()["enabled"].as_bool().unwrap() }
    };
    assert!(flag("beta", "?user=alice").await);
    assert!(!flag("beta", "?user=bob").await);
    assert!(!flag("launch", "").await);
    // The same user gets the same answer every time.
    let first = flag("new_checkout", "?user=u-17").await;
    for _ in 0..5 {
        assert_eq!(flag("new_checkout", "?user=u-17").await, first);
    }
    let listed = admin_json(&f, "/admin/flags").await;
    assert_eq!(listed["flags"][0]["key"], "beta");
    assert_eq!(listed["flags"][0]["rules"]["users"][0], "alice");
    assert_eq!(listed["flags"][2]["description"], "The new checkout flow");

    // A valid change applies without a restart.
    std::fs::write(&path, FLAGS.replace("launch:\n  enabled: false", "launch:\n  enabled: true")).unwrap();
    eventually("launch turns on", || flag("launch", "")).await;

    // An invalid version is rejected whole: `launch` would turn off, but `beta` is broken.
    std::fs::write(&path, "launch: {enabled: false}\nbeta: {enabled: true, strategy: user}\n").unwrap();
    eventually("the rejection is recorded", || {
        let f = &f;
        async move {
            let doc = admin_json(f, "/admin/status").await;
            doc["reloads"][0]["ok"] == false
                && doc["reloads"][0]["detail"].as_str().unwrap().contains("beta.rules.users")
        }
    })
    .await;
    assert!(flag("launch", "").await, "the last good set stays active");
    assert!(flag("beta", "?user=alice").await);
    let metrics = f.running().metrics().render();
    assert!(metrics.contains(r#"feature_flags_reloads_total{outcome="error"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"feature_flags_reloads_total{outcome="ok"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"feature_flag_evaluations_total{flag="beta",result="on"}"#));
    f.stop().await;
}

#[tokio::test]
async fn a_panicking_worker_is_restarted_and_the_service_keeps_serving() {
    let f = Fixture::start(&[("FIXTURE__APP__PANICKY_WORKER", "true"), ("FIXTURE__APP__WORKERS", "true")]).await;
    let workers = f.running().workers().clone();
    eventually("several panics and restarts", || {
        let w = workers.clone();
        async move {
            let crashy = w.statuses().into_iter().find(|s| s.name == "crashy").unwrap();
            crashy.panics >= 3 && crashy.restarts >= 3 && crashy.runs > crashy.panics
        }
    })
    .await;
    let resp = client().get(f.url("/hello")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the process is alive and serving");
    let text = f.running().metrics().render();
    assert!(text.contains(r#"worker_runs_total{outcome="panic",worker="crashy"}"#), "{text}");
    assert!(text.contains(r#"worker_runs_total{outcome="ok",worker="crashy"}"#), "{text}");
    assert!(text.contains(r#"worker_restarts_total{worker="crashy"}"#), "{text}");
    assert!(text.contains(r#"worker_last_success_timestamp_seconds{worker="ticker"}"#), "{text}");
    assert_eq!(workers.alive(), 3);
    f.stop().await;
    // Shutdown returned: every worker task has been joined.
    assert_eq!(workers.alive(), 0);
    assert!(workers.statuses().iter().all(|w| !w.alive && !w.running));
}

#[tokio::test]
async fn workers_are_named_when_shutdown_is_forced() {
    // A forced shutdown (second signal) still accounts for every worker.
    let f = Fixture::start(&[("FIXTURE__APP__WORKERS", "true"), ("FIXTURE__APP__STUBBORN_TASK", "true")]).await;
    let workers = f.running().workers().clone();
    let running = f.running.unwrap_or_else(|| panic!("running"));
    let err = running.shutdown(tokio::time::sleep(Duration::from_millis(300))).await.unwrap_err();
    let keel::app::ShutdownError::Forced { still_running, .. } = err else { panic!("not forced") };
    assert!(still_running.iter().any(|t| t == "stubborn"), "{still_running:?}");
    // The workers obeyed their token; none is left running.
    assert!(!still_running.iter().any(|t| t.starts_with("worker ")), "{still_running:?}");
    assert_eq!(workers.alive(), 0);
}

/// A fixture with the flags file, a database (so the overrides' store) and an audit log.
async fn store_fixture(dir: &tempfile::TempDir, db: &keel::testing::TestDatabase) -> Fixture {
    let path = dir.path().join("flags.yaml");
    std::fs::write(&path, FLAGS).unwrap();
    Fixture::start(&[
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
        ("FIXTURE__APP__DATABASE", "true"),
        ("FIXTURE__DATABASE__URL", db.url()),
        ("FIXTURE__FEATURES__FILE", path.to_str().unwrap()),
    ])
    .await
}

#[tokio::test]
async fn flags_are_overridden_at_runtime_with_a_history_and_an_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = keel::testing::TestDatabase::sqlite().unwrap();
    let f = store_fixture(&dir, &db).await;
    let c = client();
    let flag = |key: &str| {
        let url = f.url(&format!("/flags/{key}?user=alice"));
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().json::<Value>().await.unwrap()["enabled"].as_bool().unwrap() }
    };
    let admin = |method: reqwest::Method, path: &str, body: Value| {
        c.request(method, format!("{}{path}", f.mgmt)).bearer_auth(TOKEN).json(&body).send()
    };
    eventually("the store is read", || async {
        admin_json(&f, "/admin/flags").await["store"]["synced_at"].is_string()
    })
    .await;
    assert_eq!(admin_json(&f, "/admin/flags").await["store"]["kind"], "database");
    assert!(!flag("launch").await);

    // Invalid changes are refused whole, each problem named.
    let resp = admin(reqwest::Method::PUT, "/admin/flags/launch", serde_json::json!({"flag": {"enabled": true}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "no reason");
    let resp = admin(
        reqwest::Method::PUT,
        "/admin/flags/launch",
        serde_json::json!({"flag": {"enabled": true, "strategy": "percentage", "rules": {"versions": "nope"}}, "reason": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.unwrap();
    let fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"launch.rules.percentage") && fields.contains(&"launch.rules.versions"), "{problem}");
    assert!(!flag("launch").await, "nothing changed");

    // A change needs the token.
    let resp = c
        .put(format!("{}/admin/flags/launch", f.mgmt))
        .json(&serde_json::json!({"flag": {"enabled": true}, "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // An override applies at once, with who and why.
    let resp = admin(
        reqwest::Method::PUT,
        "/admin/flags/launch",
        serde_json::json!({"flag": {"enabled": true, "rules": {"deny_users": ["bob"]}}, "reason": "launch day"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let shown: Value = resp.json().await.unwrap();
    assert_eq!((shown["source"].as_str(), shown["overridden_by"].as_str()), (Some("override"), Some("admin-token")));
    assert_eq!(shown["file_default"]["enabled"], false);
    assert!(flag("launch").await);
    let evaluated = admin(reqwest::Method::POST, "/admin/flags/launch/evaluate", serde_json::json!({"user": "bob"}))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!((evaluated["on"].as_bool(), evaluated["source"].as_str()), (Some(false), Some("override")));

    // Removing it returns to the file; the history keeps both changes.
    let resp =
        admin(reqwest::Method::DELETE, "/admin/flags/launch", serde_json::json!({"reason": "rollback"})).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!flag("launch").await);
    let resp =
        admin(reqwest::Method::DELETE, "/admin/flags/launch", serde_json::json!({"reason": "again"})).await.unwrap();
    assert_eq!(resp.status(), 404, "no override left to remove");
    let history = admin_json(&f, "/admin/flags/launch/history").await;
    let reasons: Vec<&str> =
        history["changes"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["rollback", "launch day"]);
    assert_eq!(history["changes"][1]["after"]["rules"]["deny_users"][0], "bob");

    // Both changes are in the tamper-evident audit log, with the definitions.
    let audit = admin_json(&f, "/admin/audit?action=flags.&format=json").await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["flags.override_remove", "flags.override"]);
    assert_eq!(audit["items"][1]["target"], "flag:launch");
    assert_eq!(audit["items"][1]["details"]["after"]["enabled"], true);
    assert_eq!(audit["items"][1]["details"]["reason"], "launch day");

    let prefixed = admin_json(&f, "/admin/flags?prefix=new_checkout").await;
    assert_eq!(prefixed["flags"].as_array().unwrap().len(), 1);
    let metrics = f.running().metrics().render();
    assert!(metrics.contains("feature_flag_overrides 0"), "{metrics}");
    f.stop().await;
}

#[tokio::test]
async fn a_signed_in_browser_changes_a_flag_from_the_console_with_csrf_and_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let db = keel::testing::TestDatabase::sqlite().unwrap();
    let f = store_fixture(&dir, &db).await;
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    eventually("the store is read", || async {
        admin_json(&f, "/admin/flags").await["store"]["synced_at"].is_string()
    })
    .await;
    let signed = c.get(f.running().sign_in_link().unwrap()).send().await.unwrap();
    let cookie = session_cookie(&signed);
    let page = |cookie: &str| {
        let req = c.get(format!("{}/admin/flags", f.mgmt)).header("accept", "text/html");
        let req = if cookie.is_empty() { req.bearer_auth(TOKEN) } else { req.header("cookie", cookie) };
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let html = page(&cookie).await;
    assert!(html.contains("<code>launch</code>") && html.contains("flags file"), "{html}");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert!(!page("").await.contains("name=\"csrf\""), "the token alone gets the page read-only");
    let launch = || f.url("/flags/launch");
    let is_on =
        || async { client().get(launch()).send().await.unwrap().json::<Value>().await.unwrap()["enabled"] == true };
    let act = |form: Vec<(&'static str, String)>, cookie: String| {
        let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", urlencoded(v))).collect();
        c.post(format!("{}/admin/console/flags/launch", f.mgmt))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .send()
    };
    let form = |csrf: &str, confirm: &str, reason: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("action", "on".to_owned()),
            ("reason", reason.to_owned()),
            ("definition", String::new()),
            ("confirm", confirm.to_owned()),
        ]
    };

    // Refused: a wrong or missing CSRF token, no confirmation, no reason, no session.
    let r = act(form("forged", "yes", "go"), cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = act(form(&csrf, "", "go"), cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("tick the confirmation"));
    let r = act(form(&csrf, "yes", "  "), cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = act(form(&csrf, "yes", "go"), String::new()).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/admin/login"));
    assert!(!is_on().await, "nothing changed");

    // Done: on at once, said on the page, recorded with the session as the actor.
    let r = act(form(&csrf, "yes", "launch day"), cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/admin/flags?changed=launch");
    assert!(is_on().await);
    let after = c
        .get(format!("{}/admin/flags?changed=launch", f.mgmt))
        .header("accept", "text/html")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(after.contains("Changed launch") && after.contains("runtime override"), "{after}");
    let audit = admin_json(&f, "/admin/audit?action=flags.&format=json").await;
    let actor = audit["items"][0]["actor"].as_str().unwrap();
    assert!(actor.starts_with("operator:") && !actor.contains(&cookie[11..]), "{actor}");

    // An edited definition that is invalid is refused whole; a valid one applies.
    let mut bad = form(&csrf, "yes", "ramp");
    bad[1].1 = "save".into();
    bad[3].1 = r#"{"enabled": true, "strategy": "percentage"}"#.into();
    let r = act(bad.clone(), cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("launch.rules.percentage"));
    bad[3].1 = r#"{"enabled": true, "strategy": "user", "rules": {"users": ["alice"]}}"#.into();
    assert_eq!(act(bad, cookie.clone()).await.unwrap().status(), 303);
    assert!(!is_on().await, "on for alice only now");

    // Back to the file's definition.
    let mut reset = form(&csrf, "yes", "done");
    reset[1].1 = "reset".into();
    assert_eq!(act(reset, cookie.clone()).await.unwrap().status(), 303);
    assert!(!page(&cookie).await.contains("runtime override"));
    let history = admin_json(&f, "/admin/flags/launch/history").await;
    assert_eq!(history["changes"].as_array().unwrap().len(), 3);
    f.stop().await;
}

/// `v` as `application/x-www-form-urlencoded` writes it.
fn urlencoded(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The operations page: drain, run a worker now, pause a consumer, and replay or discard dead
/// letters, each from a signed-in browser's form, with its effect on the running service and its
/// audit entry.
#[tokio::test]
async fn the_console_drains_runs_pauses_and_handles_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/ops.db?mode=rwc", dir.path().display());
    let f = Fixture::start(&[
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
        ("FIXTURE__APP__WORKERS", "true"),
        ("FIXTURE__APP__DATABASE", "true"),
        ("FIXTURE__APP__EVENTS", "true"),
        ("FIXTURE__APP__EVENTS_TOPIC", "items"),
        ("FIXTURE__DATABASE__URL", &db),
        ("FIXTURE__OUTBOX__POLL_INTERVAL", "50ms"),
    ])
    .await;
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    eventually("ready", || async { client().get(f.url("/health/ready")).send().await.unwrap().status() == 200 }).await;
    let cookie = session_cookie(&c.get(f.running().sign_in_link().unwrap()).send().await.unwrap());
    let page = || async {
        let r = c.get(format!("{}/admin/console", f.mgmt)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let html = page().await;
    for part in ["id=\"instance\"", "id=\"log-level\"", "<code>ticker</code>", "<code>indexer</code>", "items.dlq"] {
        assert!(html.contains(part), "{part}: {html}");
    }
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let act = |path: &str, fields: &[(&str, &str)]| {
        let mut body = vec![format!("csrf={}", urlencoded(&csrf)), "confirm=yes".to_owned()];
        body.extend(fields.iter().map(|(k, v)| format!("{k}={}", urlencoded(v))));
        c.post(format!("{}/admin/console/{path}", f.mgmt))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .send()
    };
    let moved = |r: reqwest::Response| r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());

    // Every form checks the session, the CSRF token, the confirmation and the reason.
    let r = c
        .post(format!("{}/admin/console/instance", f.mgmt))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=forged&confirm=yes&reason=x&action=drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(act("instance", &[("action", "drain"), ("reason", " ")]).await.unwrap().status(), 422);
    assert_eq!(client().get(f.url("/health/ready")).send().await.unwrap().status(), 200, "nothing drained");

    // Drain: readiness down with the reason, liveness up, the API still serving; then back.
    let r = act("instance", &[("action", "drain"), ("reason", "node maintenance")]).await.unwrap();
    assert_eq!(moved(r).as_deref(), Some("/admin/console?done=drain"));
    let ready = client().get(f.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("drained: node maintenance"));
    assert_eq!(client().get(f.url("/health/live")).send().await.unwrap().status(), 200);
    assert!(page().await.contains("Undrain"));
    let r = act("instance", &[("action", "undrain"), ("reason", "maintenance over")]).await.unwrap();
    assert_eq!(r.status(), 303);
    eventually("ready again", || async { client().get(f.url("/health/ready")).send().await.unwrap().status() == 200 })
        .await;

    // Run now: a periodic worker runs; a continuous or unknown one is refused.
    let r = act("workers/ticker", &[("reason", "check the job")]).await.unwrap();
    assert!(matches!(r.status().as_u16(), 303 | 409), "{}", r.status());
    let r = act("workers/listener", &[("reason", "x")]).await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("continuous"));
    assert_eq!(act("workers/nope", &[("reason", "x")]).await.unwrap().status(), 404);

    // Pause the consumer: an item's event waits with the broker; readiness stays up.
    let r = act("consumers/items/indexer", &[("action", "pause"), ("reason", "index rebuild")]).await.unwrap();
    assert_eq!(moved(r).as_deref(), Some("/admin/console?done=pause:items:indexer"));
    let handled = || async {
        let m = client().get(format!("{}/metrics", f.mgmt)).send().await.unwrap().text().await.unwrap();
        m.lines()
            .filter(|l| l.starts_with("consumer_messages_total") && l.contains("outcome=\"ok\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let events = f.url("/events");
    let add = |name: &'static str| {
        let events = events.clone();
        async move {
            let r = client().post(events).json(&serde_json::json!({"name": name})).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    add("first").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handled().await, 0.0, "nothing taken while paused");
    let ready = client().get(f.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a paused consumer keeps the instance in rotation");
    assert!(ready.text().await.unwrap().contains("paused by an operator: index rebuild"));
    assert!(page().await.contains("Resume"));
    assert_eq!(
        act("consumers/items/indexer", &[("action", "resume"), ("reason", "done")]).await.unwrap().status(),
        303
    );
    eventually("handled after the resume", || async { handled().await == 1.0 }).await;
    assert_eq!(act("consumers/items/nobody", &[("action", "pause"), ("reason", "x")]).await.unwrap().status(), 404);

    // Dead letters: two poisoned items die; one is discarded, the other replayed once healed.
    add("poison-1").await;
    add("poison-2").await;
    let ids = || async {
        let html = page().await;
        html.split("id=\"letter-").skip(1).map(|s| s.split('"').next().unwrap().to_owned()).collect::<Vec<_>>()
    };
    eventually("two dead letters", || async { ids().await.len() == 2 }).await;
    let html = page().await;
    assert!(html.contains("cannot index a poisoned item") && html.contains("poison-1"), "reason and data shown");
    let dead = ids().await;
    let r =
        act("dead-letters/items", &[("action", "discard"), ("id", &dead[0]), ("reason", "bad data")]).await.unwrap();
    assert_eq!(moved(r), Some(format!("/admin/console?done=discard:{}", dead[0])));
    assert_eq!(ids().await, [dead[1].clone()]);
    let r = act("dead-letters/items", &[("action", "discard"), ("id", &dead[0]), ("reason", "again")]).await.unwrap();
    assert_eq!(r.status(), 404, "already discarded");
    assert_eq!(act("dead-letters/items", &[("action", "replay"), ("reason", "x")]).await.unwrap().status(), 422);
    client().post(f.url("/events/heal")).send().await.unwrap();
    let r = act("dead-letters/items", &[("action", "replay-all"), ("reason", "fixed the indexer")]).await.unwrap();
    assert_eq!(moved(r).as_deref(), Some("/admin/console?done=replayall:1:items"));
    eventually("the replayed letter is handled", || async { handled().await == 2.0 }).await;
    assert!(ids().await.is_empty());
    let notice = c
        .get(format!("{}/admin/console?done=replayall:1:items", f.mgmt))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notice.contains("Replayed 1 dead letter of items."), "{notice}");

    // Each change is in the audit log, with the session as the actor.
    let audit = admin_json(&f, "/admin/audit?format=json&limit=100").await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|i| i["action"].as_str().unwrap()).collect();
    for a in [
        "instance.drain",
        "instance.undrain",
        "consumer.pause",
        "consumer.resume",
        "dead_letters.discard",
        "dead_letters.replay",
    ] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
    // This fixture keeps no data keys: the page says so and the action is refused.
    assert!(page().await.contains("This service keeps no rotating data keys."));
    assert_eq!(act("data-keys", &[("reason", "rotate")]).await.unwrap().status(), 404);
    let drain = audit["items"].as_array().unwrap().iter().find(|i| i["action"] == "instance.drain").unwrap();
    assert_eq!(drain["details"]["after"]["drained"], "node maintenance");
    assert!(drain["target"].as_str().unwrap().starts_with("instance:"));
    f.stop().await;
}

/// The console rotates the data keys: the new key becomes active on the instance, the values
/// move to it in the background and still read back; the keys, the progress and the audit entry
/// are on the page, the metrics and the log.
#[tokio::test]
async fn the_console_rotates_data_keys_and_values_move_to_the_new_key() {
    use keel::security::crypto::{MasterKey, generate_key};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/keys.db?mode=rwc", dir.path().display());
    let master = generate_key();
    let wrapped =
        MasterKey::from_secret(&keel::config::Secret::new(master.clone())).unwrap().new_data_key("k1").unwrap();
    let f = Fixture::start(&[
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
        ("FIXTURE__APP__DATABASE", "true"),
        ("FIXTURE__APP__ENCRYPTED", "true"),
        ("FIXTURE__DATABASE__URL", &db),
        ("FIXTURE__SECURITY__ENCRYPTION__MASTER_KEY", &master),
        ("FIXTURE__SECURITY__ENCRYPTION__DATA_KEYS__K1", &wrapped),
        ("FIXTURE__SECURITY__ENCRYPTION__ACTIVE_KEY", "k1"),
        ("FIXTURE__SECURITY__ENCRYPTION__REFRESH_INTERVAL", "100ms"),
        ("FIXTURE__SECURITY__ENCRYPTION__REENCRYPT_INTERVAL", "100ms"),
    ])
    .await;
    eventually("ready", || async { client().get(f.url("/health/ready")).send().await.unwrap().status() == 200 }).await;
    let ready = client().get(f.url("/health/ready")).send().await.unwrap().text().await.unwrap();
    assert!(ready.contains("data-keys"), "{ready}");
    for (id, value) in [("alice", "alice@example.com"), ("bob", "bob@example.com")] {
        let r = client().put(f.url(&format!("/secrets/{id}"))).body(value).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }

    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie = session_cookie(&c.get(f.running().sign_in_link().unwrap()).send().await.unwrap());
    let page = || async {
        let r = c.get(format!("{}/admin/console", f.mgmt)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let html = page().await;
    assert!(html.contains("Active key: <code>k1</code>") && html.contains("<code>secrets.value</code>"), "{html}");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let rotate = |confirm: bool| {
        let mut body = format!("csrf={}&reason=quarterly+rotation", urlencoded(&csrf));
        if confirm {
            body.push_str("&confirm=yes");
        }
        c.post(format!("{}/admin/console/data-keys", f.mgmt))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(rotate(false).await.unwrap().status(), 422, "the confirmation is required");
    let r = rotate(true).await.unwrap();
    assert_eq!(r.headers()["location"], "/admin/console?done=rotate:rot-1");

    // Active once every instance can know it; then both values move and still read back.
    eventually("rot-1 active and every value on it", || async {
        let m = client().get(format!("{}/metrics", f.mgmt)).send().await.unwrap().text().await.unwrap();
        m.contains("data_keys_values{key=\"rot-1\"} 2") && m.contains("data_keys_pending_values 0")
    })
    .await;
    for (id, value) in [("alice", "alice@example.com"), ("bob", "bob@example.com")] {
        assert_eq!(client().get(f.url(&format!("/secrets/{id}"))).send().await.unwrap().text().await.unwrap(), value);
    }
    let html = page().await;
    assert!(html.contains("Active key: <code>rot-1</code>"), "{html}");
    assert!(html.contains("<td><code>k1</code></td><td>configuration</td><td>superseded</td>"), "{html}");
    let m = client().get(format!("{}/metrics", f.mgmt)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("data_keys_reencrypted_total 2") && m.contains("data_keys_rotations_total 1"), "{m}");

    let audit = admin_json(&f, "/admin/audit?action=data_keys.&format=json").await;
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "data_keys.rotate");
    assert_eq!(entry["details"]["after"]["made"], "rot-1");
    assert_eq!(entry["details"]["before"]["active"], "k1");
    assert_eq!(entry["details"]["reason"], "quarterly rotation");
    f.stop().await;
}
