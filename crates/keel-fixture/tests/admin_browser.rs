//! The operator page in a real headless browser (Debian's `chromium`): it signs in through a
//! one-time link (the session cookie it sets opens the page), renders every section, and logs
//! nothing to the console (no Content-Security-Policy violation, no failed load). Skipped with a
//! message when Chromium is missing, except under `CI=true`, where it fails.
//!
//! With `KEEL_ADMIN_SCREENSHOT=<file.png>` it also saves a screenshot of the page
//! (`scripts/admin-screenshot.sh` does that).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Fixture, eventually};

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "browser-test-token-0123456789abcdef";

/// Runs headless Chromium with `args` on `url`; returns its stdout and its console messages
/// (`CONSOLE` lines of its log). Output goes to files (a large DOM would fill a pipe nobody
/// reads while we wait).
async fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> (String, Vec<String>) {
    let (out_path, err_path) = (profile.join("stdout.txt"), profile.join("stderr.txt"));
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
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.join("chrome").display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
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
    let console = std::fs::read_to_string(err_path)
        .unwrap()
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (std::fs::read_to_string(out_path).unwrap(), console)
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
