//! The web front end in a real browser: `tests/web/journey.mjs` (Playwright with Debian's
//! Chromium, axe-core) drives the main journeys on the all-in-one, one of them with JavaScript
//! off, and writes a screenshot of each page at phone and desktop width to
//! `$KEEL_CI_ARTIFACTS/web` (default `ci-artifacts/web`). The site offers logging in with the
//! local OpenID provider of `tests/oidc` (`common::idp`). Needs Node.js, Chromium, the journey's
//! npm packages (`.ci/browser.sh` installs all three) and the provider's (`.ci/oidc.sh`);
//! without them the test is skipped with a message, except under `CI=true`, where it fails.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Platform, repo_root};

fn journey_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Whether the journey can run here; says why not.
fn ready() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = if !keel::testing::require_program("Chromium", keel::testing::browser::CHROMIUM) {
        return false;
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("Node.js (node)")
    } else if !journey_dir().join("node_modules/playwright-core").is_dir()
        || !journey_dir().join("node_modules/axe-core").is_dir()
        || !journey_dir().join("node_modules/ical.js").is_dir()
    {
        Some("the journey's npm packages (npm ci in services/cityevents/tests/web; .ci/browser.sh does it)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) if ci => panic!("{what} is missing, and CI=true requires the browser journeys to run"),
        Some(what) => {
            eprintln!("skipped: {what} is missing");
            false
        }
    }
}

#[test]
fn the_main_journeys_pass_in_headless_chromium() {
    if !ready() || !common::idp::ready() {
        return;
    }
    // The site's provider `corp`: the redirect URI names the site's port, chosen first.
    let port = keel::testing::unused_port();
    let site = format!("http://127.0.0.1:{port}");
    let idp = common::idp::Idp::start(&format!("{site}/login/oidc/corp/callback"));
    let mut env = idp.env(&site);
    env.push(("CITYEVENTS_GATEWAY__HTTP__PORT".into(), port.to_string()));
    // Reminders looked for every second, one of them 5 hours before: the journey joins an event
    // starting a little over 5 hours later and waits for that reminder.
    env.push(("CITYEVENTS_NOTIFIER__APP__REMINDERS__CHECK_EVERY".into(), "1s".into()));
    env.push(("CITYEVENTS_NOTIFIER__APP__REMINDERS__BEFORE".into(), "24h,5h,1h".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let platform = Platform::all_in_one(&env);
    // The first admin, as the banner says: the launcher's auth CLI on the same data, password
    // (the journey's) on stdin.
    let admin = format!("{}@example.com", common::unique("admin"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cityevents"));
    cmd.args(["auth", "admin", "create", "--email", &admin, "--name", "Ada"])
        .current_dir(platform.dir())
        .env("KEEL_ENV", "development")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse battery staple\n").unwrap();
    let made = child.wait_with_output().unwrap();
    assert!(made.status.success(), "admin create: {}", String::from_utf8_lossy(&made.stderr));
    let shots = std::env::var_os("KEEL_CI_ARTIFACTS")
        .map_or_else(|| repo_root().join("ci-artifacts"), PathBuf::from)
        .join("web");
    let out = Command::new("node")
        .arg("journey.mjs")
        .current_dir(journey_dir())
        .env("BASE_URL", platform.url(""))
        .env("MAIL_DIR", platform.dir().join("data/mail"))
        .env("SHOTS_DIR", &shots)
        .env("ADMIN_EMAIL", &admin)
        .env("IDP_URL", &idp.issuer)
        .env("CHROMIUM", keel::testing::browser::CHROMIUM)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the journeys failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all journeys passed"), "{stdout}\n{stderr}");
    for page in [
        "events",
        "event-waitlisted",
        "notifications",
        "manage-participants",
        "signup",
        "unconfirmed",
        "login",
        "not-found",
        "account",
        "mail-settings",
        "admin-users",
        "moderate-event",
        "confirm-cancel",
        "confirm-ban",
        "reset-spent",
        "event-organizer",
        "event-canceled",
        "calendar-feed",
        "capacity-cut",
        "organizer",
        "categories",
        "account-identities",
        "oidc-link",
        "report",
        "reports-queue",
    ] {
        for width in ["phone", "desktop"] {
            let shot = shots.join(format!("{page}-{width}.png"));
            assert!(shot.is_file(), "no screenshot {}", shot.display());
        }
    }
}

/// The one-time sign-in link the all-in-one's banner printed.
fn sign_in_link(platform: &Platform) -> String {
    platform
        .seen
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.contains("/admin/login?code="))
        .expect("the banner's sign-in link")
        .to_owned()
}

/// The address (`http`, `management`) service `cityevents-<service>` logged it listens on.
fn listener(platform: &Platform, service: &str, key: &str) -> String {
    let service = format!("service=cityevents-{service}");
    platform
        .seen
        .iter()
        .filter(|l| l.contains("listening") && l.contains(&service))
        .find_map(|l| l.split(&format!(" {key}=")).nth(1)?.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| panic!("{service} logged no {key} address"))
}

/// `tests/web/console.mjs`: an operator changes a flag from the gateway's console page in
/// Chromium, and the site follows at once; then drains auth, sets its log level for a few
/// seconds, runs a worker now, pauses a consumer and rotates the data keys from auth's operations
/// page, checking each effect and audit entry.
#[test]
fn the_operator_console_changes_a_flag_in_headless_chromium() {
    if !ready() {
        return;
    }
    let mut platform = Platform::all_in_one(&[]);
    platform.wait_for_line("First admin:", std::time::Duration::from_secs(10));
    let link = sign_in_link(&platform);
    let management = listener(&platform, "gateway", "management");
    let shots = std::env::var_os("KEEL_CI_ARTIFACTS")
        .map_or_else(|| repo_root().join("ci-artifacts"), PathBuf::from)
        .join("web");
    let out = Command::new("node")
        .arg("console.mjs")
        .env("AUTH_MANAGEMENT_URL", format!("http://{}", listener(&platform, "auth", "management")))
        .env("AUTH_URL", format!("http://{}", listener(&platform, "auth", "http")))
        .current_dir(journey_dir())
        .env("SIGN_IN_URL", &link)
        .env("MANAGEMENT_URL", format!("http://{management}"))
        .env("BASE_URL", platform.url(""))
        .env("SHOTS_DIR", &shots)
        .env("CHROMIUM", keel::testing::browser::CHROMIUM)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the console journey failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("console journey passed"), "{stdout}\n{stderr}");
    for page in ["flags", "flag-changed", "operate", "drained", "paused", "rotated"] {
        assert!(shots.join(format!("console-{page}.png")).is_file(), "no screenshot of {page}");
    }
    let status = platform.stop();
    assert!(status.success(), "clean shutdown: {status}");
}

/// `tests/web/dead-letters.mjs`: on an all-in-one running on NATS, two join changes no handler
/// can read die in the notifier's group; the operator inspects, discards, replays and purges
/// them from the notifier's operations page in Chromium. Needs NATS (skipped without it, except
/// under `CI=true`).
#[test]
fn the_operator_console_handles_dead_letters_in_headless_chromium() {
    if !ready() || !keel::testing::require("NATS", &keel::testing::nats_url()) {
        return;
    }
    let namespace = keel::testing::unique_topic("console");
    let mut env: Vec<(String, String)> = Vec::new();
    for service in ["GATEWAY", "AUTH", "EVENTS", "JOINS", "NOTIFIER"] {
        env.push((format!("CITYEVENTS_{service}__BUS__BACKEND"), "nats".into()));
        env.push((format!("CITYEVENTS_{service}__BUS__URL"), keel::testing::nats_url()));
        env.push((format!("CITYEVENTS_{service}__BUS__NAMESPACE"), namespace.clone()));
    }
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut platform = Platform::all_in_one(&refs);
    platform.wait_for_line("First admin:", std::time::Duration::from_secs(10));
    let link = sign_in_link(&platform);
    let notifier = listener(&platform, "notifier", "management");

    // Two join changes without a change in them, on the platform's topic.
    let poison: Vec<keel::events::Envelope> = (0..2)
        .map(|n| {
            keel::events::Envelope::raw("web-test", "join.created", 1, serde_json::json!({"poison": true, "n": n}))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut cfg = keel::events::BusConfig::default();
        cfg.backend = keel::events::BusBackend::Nats;
        cfg.url = Some(keel::config::Secret::new(keel::testing::nats_url()));
        cfg.namespace = Some(namespace.clone());
        let bus = keel::events::Bus::new(&cfg).unwrap();
        bus.connect().await.unwrap();
        for e in &poison {
            bus.publish(cityevents_common::catalogue::JOINS_TOPIC, e).await.unwrap();
        }
        bus.close().await;
    });

    let shots = std::env::var_os("KEEL_CI_ARTIFACTS")
        .map_or_else(|| repo_root().join("ci-artifacts"), PathBuf::from)
        .join("web");
    let ids: Vec<&str> = poison.iter().map(|e| e.id.as_str()).collect();
    let out = Command::new("node")
        .arg("dead-letters.mjs")
        .current_dir(journey_dir())
        .env("SIGN_IN_URL", &link)
        .env("NOTIFIER_MANAGEMENT_URL", format!("http://{notifier}"))
        .env("POISON", ids.join(","))
        .env("SHOTS_DIR", &shots)
        .env("CHROMIUM", keel::testing::browser::CHROMIUM)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // What the platform said about the letters, for the failure's message.
        let _ = platform.wait_for("-", |_| false, std::time::Duration::from_millis(300));
    }
    assert!(out.status.success(), "the dead letters journey failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("dead letters journey passed"), "{stdout}\n{stderr}");
    platform.wait_for(
        "the purge's log line",
        |l| l.contains("operator change") && l.contains("dead_letters.purge"),
        std::time::Duration::from_secs(5),
    );
    let logged = platform.seen.iter().filter(|l| l.contains("operator change") && l.contains("dead_letters.")).count();
    assert!(logged >= 3, "each change is logged: {logged}");
    let status = platform.stop();
    assert!(status.success(), "clean shutdown: {status}");
}
