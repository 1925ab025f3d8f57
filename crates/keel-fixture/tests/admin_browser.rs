//! The admin status page rendered by a real headless browser (Debian's `chromium`).
//!
//! The page needs `Authorization: Bearer …`, which Chromium's command line cannot send, so the
//! browser talks to a small local proxy (below, test-only) that adds the header and forwards to
//! the management listener. Skipped with a message when Chromium is missing, except under
//! `CI=true`, where it fails.
//!
//! With `KEEL_ADMIN_SCREENSHOT=<file.png>` it also saves a screenshot of the page
//! (`scripts/admin-screenshot.sh` does that).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use common::{Fixture, client, eventually};

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "browser-test-token-0123456789abcdef";

/// Forwards every GET to `upstream`, adding the admin bearer token.
async fn proxy(State(upstream): State<String>, req: Request) -> Response {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let resp = client().get(format!("{upstream}{path}")).bearer_auth(TOKEN).send().await.unwrap();
    let status = resp.status();
    let content_type = resp.headers().get("content-type").cloned();
    let body = resp.bytes().await.unwrap();
    let mut out = (status, body).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out
}

async fn start_proxy(upstream: String) -> (String, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let app = axum::Router::new().fallback(proxy).with_state(upstream);
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(s.cancelled_owned()).await.unwrap();
    });
    (format!("http://{addr}"), stop)
}

/// Runs headless Chromium with `args` and the page `url`; returns stdout. Output goes to a file
/// (a large DOM would fill a pipe nobody reads while we wait).
async fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> String {
    let out_path = profile.join("stdout.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.join("chrome").display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::read_to_string(out_path).unwrap()
}

#[tokio::test]
async fn the_status_page_renders_in_a_real_browser() {
    if !keel::testing::require_program("Chromium", CHROMIUM) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags.yaml");
    std::fs::write(
        &flags,
        "new_checkout:\n  enabled: true\n  strategy: percentage\n  rules: {percentage: 25}\n  description: The new <checkout> flow\n  tags: [checkout, payments]\n\
         beta_search:\n  enabled: true\n  strategy: user\n  rules: {users: [alice, bob]}\n\
         winter_sale:\n  enabled: false\n  strategy: time\n  rules: {start: \"2026-12-01T00:00:00Z\", end: \"2027-01-01T00:00:00Z\"}\n",
    )
    .unwrap();
    let f = Fixture::start(&[
        ("FIXTURE__MANAGEMENT__ADMIN_TOKEN", TOKEN),
        ("FIXTURE__APP__WORKERS", "true"),
        ("FIXTURE__APP__PANICKY_WORKER", "true"),
        ("FIXTURE__APP__FAILING_CHECK", "true"),
        ("FIXTURE__APP__RATE_LIMITED", "true"),
        ("FIXTURE__RATE_LIMITS__API__LIMIT", "100"),
        ("FIXTURE__APP__UPSTREAM", "true"),
        ("FIXTURE__UPSTREAMS__ECHO__BASE_URL", "http://127.0.0.1:9"),
        ("FIXTURE__FEATURES__FILE", flags.to_str().unwrap()),
        ("FIXTURE__FEATURES__POLL_INTERVAL", "50ms"),
        ("FIXTURE__HEALTH__INTERVAL", "100ms"),
        ("FIXTURE__HEALTH__TTL", "5s"),
    ])
    .await;
    // Something in every section: a rejected flags version, some worker runs, fresh checks.
    std::fs::write(&flags, "new_checkout: {enabled: true, strategy: percentage, rules: {percentage: 150}}\n").unwrap();
    let workers = f.running().workers().clone();
    eventually("a rejected reload and worker runs", || {
        let (w, m) = (workers.clone(), f.running().metrics().clone());
        async move {
            m.render().contains(r#"feature_flags_reloads_total{outcome="error"} 1"#)
                && w.statuses().iter().all(|s| s.runs > 0 || s.schedule == "continuous")
                && w.statuses().iter().any(|s| s.panics > 0)
        }
    })
    .await;
    f.running().health().run_all().await;

    let (base, stop_proxy) = start_proxy(f.mgmt.clone()).await;
    let url = format!("{base}/admin/status");
    let dom = chromium(dir.path(), &["--dump-dom"], &url).await;

    // The browser parsed a page, not an error: headings and rows of every kind are in the DOM.
    assert!(dom.contains("<title>fixture · status</title>"), "{dom}");
    for heading in [
        "Service",
        "Health checks",
        "Workers",
        "Circuit breakers",
        "Rate limits",
        "Feature flags",
        "Recent configuration reloads",
    ] {
        assert!(dom.contains(&format!("<h2>{heading}</h2>")), "no {heading} heading");
    }
    let row = |class: &str, needle: &str| {
        dom.split(&format!("<tr class=\"{class}\">")).skip(1).any(|r| r.split("</tr>").next().unwrap().contains(needle))
    };
    assert!(row("check", "<td>self</td>"), "no health-check row for `self`");
    assert!(row("check", "<td>broken</td>") && dom.contains("postgres://app:***@db"), "the failing check, sanitized");
    assert!(row("worker", "<td>ticker</td>") && row("worker", "every 50ms"), "no ticker worker row");
    assert!(row("worker", "<td>crashy</td>") && row("worker", "crashy worker run"), "no crashy worker row");
    assert!(row("breaker", "<td>echo</td>") && row("breaker", "closed"));
    assert!(row("rate-limit", "<td>api</td>") && row("rate-limit", "local"));
    assert!(row("flag", "<td>new_checkout</td>") && row("flag", "The new &lt;checkout&gt; flow"), "flag row, escaped");
    assert!(row("flag", "<td>beta_search</td>"));
    assert!(row("reload", "rejected") && row("reload", "new_checkout.rules.percentage"));
    assert!(!dom.contains("<checkout>"), "unescaped text reached the DOM");

    if let Ok(path) = std::env::var("KEEL_ADMIN_SCREENSHOT") {
        let shot = format!("--screenshot={path}");
        chromium(dir.path(), &[&shot, "--window-size=1280,1800", "--hide-scrollbars"], &url).await;
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        eprintln!("screenshot: {path}");
    }
    stop_proxy.cancel();
    f.stop().await;
}
