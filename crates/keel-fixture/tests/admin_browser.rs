//! The operator page in a real headless browser (Debian's `chromium`): it signs in through a
//! one-time link (the session cookie it sets opens the page), renders every section, and logs
//! nothing to the console (no Content-Security-Policy violation, no failed load). Skipped with a
//! message when Chromium is missing, except under `CI=true`, where it fails.
//!
//! With `KEEL_ADMIN_SCREENSHOT=<file.png>` it also saves a screenshot of the page
//! (`scripts/admin-screenshot.sh` does that).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, eventually};

const TOKEN: &str = "browser-test-token-0123456789abcdef";

/// `url` in headless Chromium, off the runtime's threads.
async fn chromium(dir: &std::path::Path, args: &[&str], url: &str) -> (String, Vec<String>) {
    let (dir, args, url) = (dir.to_owned(), args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(), url.to_owned());
    let page = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        keel::testing::browser::chromium(&dir, &args, &url)
    })
    .await
    .unwrap()
    .unwrap();
    (page.dom, page.console)
}

#[tokio::test]
async fn the_status_page_renders_in_a_real_browser() {
    if !keel::testing::require_program("Chromium", keel::testing::browser::CHROMIUM) {
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

    // Signed in through the link: the browser follows it to the page with the cookie it set.
    let link = f.running().sign_in_link().unwrap();
    let (dom, console) = chromium(dir.path(), &["--dump-dom"], &link).await;
    assert!(console.is_empty(), "console messages: {console:#?}");

    // The browser parsed the page, not an error: headings and rows of every kind are in the DOM.
    assert!(dom.contains("<title>fixture · status</title>"), "{dom}");
    for heading in [
        "Service",
        "Health checks",
        "Traffic",
        "Upstreams",
        "Workers",
        "Consumers",
        "Outbox",
        "Circuit breakers",
        "Rate limits",
        "Feature flags",
        "Recent configuration reloads",
    ] {
        assert!(dom.contains(&format!("<h3>{heading}")), "no {heading} heading");
    }
    let row = |class: &str, needle: &str| {
        dom.split(&format!("<tr class=\"{class}\">")).skip(1).any(|r| r.split("</tr>").next().unwrap().contains(needle))
    };
    assert!(row("check", "<td>self</td>"), "no health-check row for `self`");
    assert!(row("check", "<td>broken</td>") && dom.contains("postgres://app:***@db"), "the failing check, sanitized");
    assert!(row("worker", "<td>ticker</td>") && row("worker", "every 50ms"), "no ticker worker row");
    assert!(row("worker", "<td>crashy</td>") && row("worker", "crashy worker run"), "no crashy worker row");
    assert!(row("breaker", "<td>echo</td>") && row("breaker", "closed"));
    assert!(row("upstream", "<td>echo</td>") && row("upstream", "http://127.0.0.1:9"), "the upstream and its URL");
    assert!(row("rate-limit", "<td>api</td>") && row("rate-limit", "local"));
    assert!(row("flag", "<td>new_checkout</td>") && row("flag", "The new &lt;checkout&gt; flow"), "flag row, escaped");
    assert!(row("flag", "<td>beta_search</td>"));
    assert!(row("reload", "rejected") && row("reload", "new_checkout.rules.percentage"));
    assert!(!dom.contains("<checkout>"), "unescaped text reached the DOM");

    if let Ok(path) = std::env::var("KEEL_ADMIN_SCREENSHOT") {
        let shot = format!("--screenshot={path}");
        let link = f.running().sign_in_link().unwrap();
        chromium(dir.path(), &[&shot, "--window-size=1280,1800", "--hide-scrollbars"], &link).await;
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        eprintln!("screenshot: {path}");
    }
    f.stop().await;
}
