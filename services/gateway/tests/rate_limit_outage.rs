//! The shipped rate-limit policy (deploy/config/gateway.yaml) through a Redis outage: the test
//! runs its own redis-server on a free port (never the shared one) and stops it mid-test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cityevents_common::testing::eventually;
use common::{Gateway, Stub, echoes, problem, token};
use keel::app::Loader;
use keel::config::Profile;
use serde_json::Value;

const ADMIN_TOKEN: &str = "rate-limit-outage-admin-token-0123456789abcdef";
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A redis-server of this test's own, on `port`, keeping nothing on disk.
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Self { child, port, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Stops it the way its package does (SIGTERM) and waits until it has exited.
    fn stop(mut self) -> u16 {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `rate_limits` section of the shipped gateway configuration, as it is.
fn shipped_rate_limits() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/config/gateway.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '#']);
        if top_level {
            inside = line.starts_with("rate_limits:");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains("backend: redis"), "the shipped policy keeps its counts in Redis:\n{out}");
    out
}

async fn start_gateway(stubs: &[Stub; 4], redis_port: u16) -> (Gateway, tempfile::NamedTempFile) {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(shipped_rate_limits().as_bytes()).unwrap();
    let ups: Vec<(&str, String)> = stubs.iter().map(|s| (s.name, s.url())).collect();
    let mut env: Vec<(String, String)> =
        common::env(&ups, &[]).into_iter().filter(|(k, _)| !k.contains("__RATE_LIMITS__")).collect();
    let url = format!("redis://127.0.0.1:{redis_port}");
    for (k, v) in [
        ("CITYEVENTS_RATE_LIMIT", "3"),
        ("CITYEVENTS_GATEWAY__REDIS__URL", url.as_str()),
        ("CITYEVENTS_GATEWAY__REDIS__COMMAND_TIMEOUT", "300ms"),
        ("CITYEVENTS_GATEWAY__REDIS__CONNECT__INITIAL_DELAY", "50ms"),
        ("CITYEVENTS_GATEWAY__REDIS__CONNECT__MAX_DELAY", "200ms"),
        ("CITYEVENTS_GATEWAY__HEALTH__INTERVAL", "100ms"),
        ("CITYEVENTS_GATEWAY__HEALTH__TTL", "1s"),
        ("CITYEVENTS_GATEWAY__MANAGEMENT__ADMIN_TOKEN", ADMIN_TOKEN),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    let loaded = Loader::new(cityevents_common::services::GATEWAY.name, Profile::Test)
        .file(file.path())
        .env(env)
        .load()
        .expect("the shipped rate_limits section is valid");
    let app = cityevents_common::testing::TestService::try_start(cityevents_gateway::service(), loaded)
        .await
        .expect("starts");
    (Gateway::from_service(app), file)
}

async fn anonymous_get(gw: &Gateway) -> reqwest::Response {
    gw.http.get(gw.url("/api/v1/events")).send().await.unwrap()
}

async fn login(gw: &Gateway) -> reqwest::Response {
    gw.http.post(gw.url("/api/v1/auth/login")).json(&serde_json::json!({"email": "a@b.c"})).send().await.unwrap()
}

async fn metrics(gw: &Gateway) -> String {
    gw.http.get(gw.management_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// `(name, in_force, active_backend)` of each limiter on the status page.
async fn status(gw: &Gateway) -> Vec<(String, String, String)> {
    let doc: Value = gw
        .http
        .get(gw.management_url("/admin/status"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["rate_limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("in_force"), s("active_backend"))
        })
        .collect()
}

fn active(m: &str, policy: &str, backend: &str) -> bool {
    m.contains(&format!("rate_limit_backend_active{{backend=\"{backend}\",policy=\"{policy}\"}} 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_reads_limited_locally_and_refuses_writes() {
    if !keel::testing::require_program("redis-server", REDIS_SERVER) {
        return;
    }
    let redis = OwnRedis::start(free_port());
    let stubs = echoes().await;
    let (gw, _file) = start_gateway(&stubs, redis.port).await;
    let within = Duration::from_secs(10);

    // Redis up: one shared budget of 3 for reads and writes alike (the reads rule only changes
    // the failure mode).
    eventually("Redis connected", within, || async {
        let r = gw.http.get(gw.url("/health/ready")).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        (v["status"] == "up").then_some(())
    })
    .await;
    let resp = anonymous_get(&gw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-remaining"], "2");
    let resp = login(&gw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-remaining"], "1", "the GET above and this login share the budget");
    assert_eq!(anonymous_get(&gw).await.status(), 200);
    assert_eq!(problem(anonymous_get(&gw).await, 429).await["code"], "RATE_LIMITED");
    let m = metrics(&gw).await;
    assert!(active(&m, "api", "redis") && active(&m, "api.reads", "redis"), "{m}");
    assert!(status(&gw).await.iter().all(|(_, now, b)| now == "backend" && b == "redis"));

    // Redis stopped.
    let port = redis.stop();
    let events_before = stubs[1].count();
    // Anonymous reads go on, limited by the in-process limiter (a fresh budget of 3).
    let mut during = Vec::new();
    for _ in 0..4 {
        let resp = anonymous_get(&gw).await;
        if resp.status() == 200 {
            assert!(resp.headers().contains_key("ratelimit-remaining"), "decided locally: {:?}", resp.headers());
        }
        during.push(resp.status().as_u16());
    }
    assert_eq!(during, [200, 200, 200, 429], "the local fallback serves and limits reads");
    assert_eq!(stubs[1].count(), events_before + 3);
    // Logins and signed-in writes fail closed.
    let logins_before = stubs[0].count();
    let resp = login(&gw).await;
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(problem(resp, 503).await["code"], "SERVICE_DEGRADED");
    let write = gw
        .http
        .post(gw.url("/api/v1/events"))
        .bearer_auth(token("alice"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(write.headers().contains_key("retry-after"));
    assert_eq!(problem(write, 503).await["code"], "SERVICE_DEGRADED");
    assert_eq!(stubs[0].count(), logins_before, "a refused login never reaches auth");
    let m = metrics(&gw).await;
    // The per-IP policy, outermost, is the one that met the outage on the writes and failed
    // closed (the per-user one behind it was not asked).
    assert!(active(&m, "api.reads", "local") && active(&m, "ip.reads", "local") && active(&m, "ip", "none"), "{m}");
    assert!(m.contains("rate_limit_backend_active{backend=\"redis\",policy=\"api.reads\"} 0"), "{m}");
    let s = status(&gw).await;
    assert!(s.contains(&("api.reads".into(), "local_fallback".into(), "local".into())), "{s:?}");
    assert!(s.contains(&("ip".into(), "failure_mode".into(), "none".into())), "{s:?}");

    // Redis back (empty: it kept nothing): the Redis limiter is in force again, so reads the
    // exhausted local limiter would refuse pass, and logins are served.
    let _redis = OwnRedis::start(port);
    eventually("the Redis limiter is back for reads", within, || async {
        (anonymous_get(&gw).await.status() == 200).then_some(())
    })
    .await;
    eventually("logins are served again", within, || async { (login(&gw).await.status() == 200).then_some(()) }).await;
    let m = metrics(&gw).await;
    assert!(active(&m, "api", "redis") && active(&m, "api.reads", "redis"), "{m}");
    assert!(status(&gw).await.iter().all(|(_, now, b)| now == "backend" && b == "redis"));
    gw.stop().await;
}
