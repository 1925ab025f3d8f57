//! The fixture as a real process: signals, graceful and forced shutdown, the CLI, JSON logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Proc, run_cli};
use serde_json::Value;

/// Held for the whole of each test here: they start fixture processes on ports picked a moment
/// before (one also binds one on purpose, and a fixture that fails to start may hold its
/// management port, `http.port + 1000`, for a moment), so run side by side a port could be
/// taken between the pick and the bind, and a readiness check answered by another test's
/// process: seen as refused connections in CI.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A raw HTTP/1.1 GET on its own connection, started now and read to the end later.
fn start_get(addr: std::net::SocketAddr, path: &str) -> std::thread::JoinHandle<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

#[test]
fn sigterm_finishes_in_flight_request_and_refuses_new_connections() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[]);
    let addr = p.http.unwrap();
    let slow = start_get(addr, "/slow?ms=1500");
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    p.wait_for("stopped accepting connections");
    // New connections are refused while the slow request is still being served.
    let refused = (0..50).any(|_| {
        let r = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err();
        if !r {
            std::thread::sleep(Duration::from_millis(10));
        }
        r
    });
    assert!(refused, "listener still accepting after shutdown began");
    let response = slow.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "in-flight request completed: {response}");
    assert!(response.ends_with("done"), "{response}");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);
    p.wait_for("shutdown complete");
}

/// A GET on a new connection: the status code, or what went wrong.
fn get_status(addr: std::net::SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line in {out:?}"))
}

/// `http.reuse_port`: a second process binds the first one's ports while it serves, takes
/// connections only once it is ready, and the first one's drain then refuses nobody. A client
/// opening a new connection for every request is answered every time, before, during and after.
#[test]
fn a_replacement_on_the_same_port_takes_over_without_a_refused_connection() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _one_at_a_time = serial();
    let env = [("FIXTURE__HTTP__REUSE_PORT", "true"), ("FIXTURE__SHUTDOWN__DRAIN_DELAY", "500ms")];
    let mut old = Proc::spawn(&env);
    let (addr, mgmt) = (old.http.unwrap(), old.mgmt.unwrap());
    old.wait_for("ready: accepting connections");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let client = std::thread::spawn(move || {
        let (mut answered, mut failed) = (0u32, Vec::new());
        while !stopped.load(Ordering::Relaxed) {
            match get_status(addr, "/health/live") {
                Ok(200) => answered += 1,
                other => failed.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (answered, failed)
    });
    let mut new = Proc::spawn_on(addr.port(), mgmt.port(), &env);
    let ready = new.wait_for("ready: accepting connections");
    assert!(ready.contains("\"listener\":\"http\""), "{ready}");
    // Without the setting the same ports are taken.
    let mut plain = Proc::spawn_on(addr.port(), mgmt.port(), &[]);
    let code = plain.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 69, "a process without http.reuse_port cannot bind: {}", plain.seen.join("\n"));
    old.signal("TERM");
    assert_eq!(old.wait_exit(Duration::from_secs(20)), 0);
    // The new process alone, for a while.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = client.join().unwrap();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), failed.len() as u32 + answered);
    assert!(answered >= 20, "only {answered} requests made");
    assert_eq!(get_status(addr, "/health/live"), Ok(200), "the replacement serves");
    new.signal("TERM");
    assert_eq!(new.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn shutdown_timeout_forces_a_non_zero_exit_naming_what_was_running() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[("FIXTURE__SHUTDOWN__TIMEOUT", "500ms"), ("FIXTURE__APP__STUBBORN_TASK", "true")]);
    let started = Instant::now();
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 70);
    assert!(started.elapsed() < Duration::from_secs(5));
    let line = p.wait_for("shutdown was not clean");
    assert!(line.contains("stubborn") && line.contains("timeout"), "{line}");
}

#[test]
fn slow_request_past_the_timeout_forces_exit_too() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[("FIXTURE__SHUTDOWN__TIMEOUT", "300ms")]);
    let _slow = start_get(p.http.unwrap(), "/slow?ms=10000");
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 70);
    let line = p.wait_for("shutdown was not clean");
    assert!(line.contains("1 request(s) in flight"), "{line}");
}

#[test]
fn second_signal_forces_exit() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[("FIXTURE__SHUTDOWN__DRAIN_DELAY", "30s")]);
    p.signal("TERM");
    p.wait_for("shutdown started");
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 70);
    p.wait_for("second signal");
}

#[test]
fn logs_are_json_lines_with_service_request_and_trace_ids() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[]);
    let resp = std::thread::spawn({
        let url = p.url("/log");
        move || {
            let mut s = TcpStream::connect(url.trim_start_matches("http://").trim_end_matches("/log")).unwrap();
            s.write_all(b"GET /log HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-request-id: log-req-42\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        }
    })
    .join()
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"));
    let line = p.wait_for("fixture-log");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["service"], "fixture");
    assert_eq!(v["request_id"], "log-req-42");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "continues the caller's trace");
    assert_eq!(v["span_id"].as_str().map(str::len), Some(16));
    assert_ne!(v["span_id"], "00f067aa0ba902b7", "a new server span");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["marker"], "fixture-log");
    // Every stdout line is JSON.
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
    for l in p.seen.iter().filter(|l| !l.starts_with("stderr: ")) {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[test]
fn panic_is_logged_as_a_structured_line() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[]);
    let resp = start_get(p.http.unwrap(), "/panic").join().unwrap();
    assert!(resp.starts_with("HTTP/1.1 500"));
    assert!(!resp.contains("vault"));
    let line = p.wait_for("request handler panicked");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["fields"]["panic"].as_str().unwrap().contains("vault"), "the log keeps the detail: {line}");
    assert!(v["request_id"].is_string());
    assert!(!p.seen.iter().any(|l| l.starts_with("stderr: thread")), "no unstructured panic text: {:?}", p.seen);
}

#[test]
fn runtime_log_level_change() {
    let _one_at_a_time = serial();
    let token = "0123456789abcdef0123456789abcdef";
    let mut p = Proc::spawn(&[("FIXTURE__MANAGEMENT__ADMIN_TOKEN", token), ("FIXTURE__LOG__LEVEL", "warn")]);
    let mgmt = p.mgmt.unwrap();
    let put = |body: &str| {
        let mut s = TcpStream::connect(mgmt).unwrap();
        let req = format!(
            "PUT /admin/log-level HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    // At warn, a warn line inside a request still carries the request's ids.
    start_get(p.http.unwrap(), "/warn").join().unwrap();
    let line = p.wait_for("fixture-warn");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["request_id"].is_string() && v["trace_id"].is_string() && v["span_id"].is_string(), "{line}");
    // At warn, the handler's info line is not written.
    start_get(p.http.unwrap(), "/log").join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.drain();
    assert!(!p.seen.iter().any(|l| l.contains("fixture-log")));
    let out = put(r#"{"level":"info"}"#);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    start_get(p.http.unwrap(), "/log").join().unwrap();
    p.wait_for("fixture-log");
    let out = put("very-loud");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // A change with an expiry goes back to the filter before it; a second one on top of it
    // goes back to the same, not to the first change's filter.
    let get = || {
        let mut s = TcpStream::connect(mgmt).unwrap();
        let req = format!(
            "GET /admin/log-level HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        serde_json::from_str::<Value>(out.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    let out = put(r#"{"level":"debug","expires_in":"30s"}"#);
    assert!(out.starts_with("HTTP/1.1 200") && out.contains(r#""reverts_to":"info""#), "{out}");
    let out = put(r#"{"level":"warn","expires_in":"1s"}"#);
    assert!(out.contains(r#""reverts_to":"info""#), "back to the filter before both: {out}");
    assert!(get()["reverts_at"].is_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get()["level"] != "info" {
        assert!(std::time::Instant::now() < deadline, "the change did not expire: {}", get());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(get()["reverts_to"].is_null(), "nothing pending after the revert");
    p.wait_for("log level change expired; reverted");
    start_get(p.http.unwrap(), "/log").join().unwrap();
    p.wait_for("fixture-log");
    for bad in [r#"{"level":"debug","expires_in":"25h"}"#, r#"{"level":"debug","expires_in":"soon"}"#] {
        let out = put(bad);
        assert!(out.starts_with("HTTP/1.1 400") && out.contains("expires_in"), "{out}");
    }
    assert_eq!(get()["level"], "info", "a refused change changes nothing");
}

#[test]
fn bind_failure_exits_69_with_one_structured_line() {
    let _one_at_a_time = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stdout, stderr) = run_cli(
        &["serve"],
        &[("KEEL_ENV", "test"), ("FIXTURE__HTTP__ADDR", "127.0.0.1"), ("FIXTURE__HTTP__PORT", &port)],
    );
    assert_eq!(code, 69, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["message"], "start-up failed");
    assert!(v["error"].as_str().unwrap().contains(&port));
    assert!(!stderr.contains("panicked"));
}

#[test]
fn config_check_and_bad_config_exit_codes() {
    let _one_at_a_time = serial();
    let (code, stdout, _) = run_cli(&["config", "check"], &[("FIXTURE__APP__API_KEY", "super-secret-value")]);
    assert_eq!(code, 0);
    assert!(stdout.contains("api_key: '***'") && !stdout.contains("super-secret-value"), "{stdout}");
    let parsed: Value = serde_norway::from_str(&stdout).expect("config check prints YAML");
    assert_eq!(parsed["http"]["port"], 8080);
    // Every problem, not only the first; exit 78 (EX_CONFIG).
    let (code, _, stderr) = run_cli(
        &["config", "check"],
        &[
            ("KEEL_ENV", "production"),
            ("FIXTURE__HTTP__PORT", "x"),
            ("FIXTURE__LOG__LEVEL", "trace"),
            ("FIXTURE__NOPE", "1"),
        ],
    );
    assert_eq!(code, 78);
    for needle in ["http.port", "log.level", "cors.allowed_origins", "unknown key `nope`"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // `serve` with a bad config: one JSON line, exit 78, before any port is bound.
    let (code, _, stderr) = run_cli(&["serve"], &[("FIXTURE__HTTP__PORT", "x")]);
    assert_eq!(code, 78);
    let v: Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(v["problems"][0].as_str().unwrap().contains("http.port"));
    // A bad profile.
    let (code, _, stderr) = run_cli(&["config", "check"], &[("KEEL_ENV", "staging")]);
    assert_eq!(code, 78, "{stderr}");
    // --config and KEEL_CONFIG.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "http:\n  port: ${P:-7777}\n").unwrap();
    let (code, stdout, _) = run_cli(&["--config", file.to_str().unwrap(), "config", "check"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("port: 7777"));
    let (_, stdout, _) = run_cli(&["config", "check"], &[("KEEL_CONFIG", file.to_str().unwrap()), ("P", "7778")]);
    assert!(stdout.contains("port: 7778"));
}

#[test]
fn config_check_runs_the_set_up_that_serve_runs_and_touches_nothing() {
    let _one_at_a_time = serial();
    // The set-up refuses a Redis without a URL: serve exits 78, and config check with it.
    let env =
        [("FIXTURE__APP__REDIS", "true"), ("FIXTURE__HTTP__PORT", "0"), ("FIXTURE__MANAGEMENT__ADDR", "127.0.0.1:0")];
    let (checked, _, check_err) = run_cli(&["config", "check"], &env);
    let (served, _, serve_err) = run_cli(&["serve"], &env);
    assert_eq!((checked, served), (78, 78), "config check: {check_err}\nserve: {serve_err}");
    assert!(check_err.contains("redis.url"), "{check_err}");
    // A database on the default SQLite file: checked without making `data/` or the file.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FIXTURE__APP__DATABASE", "true")
        .args(["config", "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "config check made files");
}

#[test]
fn healthcheck_and_version_commands() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[]);
    let port = p.http.unwrap().port().to_string();
    let env = [("FIXTURE__HTTP__PORT", port.as_str())];
    let (code, stdout, _) = run_cli(&["healthcheck"], &env);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("\"status\":\"up\""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while run_cli(&["healthcheck", "--ready"], &env).0 != 0 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
    let (code, _, stderr) = run_cli(&["healthcheck", "--timeout", "500ms"], &env);
    assert_eq!(code, 1, "nothing listening: {stderr}");
    // Live but not ready: `healthcheck` passes, `healthcheck --ready` fails.
    let mut p = Proc::spawn(&[("FIXTURE__APP__FAILING_CHECK", "true")]);
    let port = p.http.unwrap().port().to_string();
    let env = [("FIXTURE__HTTP__PORT", port.as_str())];
    assert_eq!(run_cli(&["healthcheck"], &env).0, 0);
    let (code, stdout, _) = run_cli(&["healthcheck", "--ready"], &env);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("503"), "{stdout}");
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10));
    assert!(stderr.contains("127.0.0.1"), "{stderr}");

    let (code, stdout, _) = run_cli(&["version"], &[]);
    assert_eq!(code, 0);
    for key in ["name: fixture", "version: 0.1.0", "commit: ", "build: "] {
        assert!(stdout.contains(key), "{stdout}");
    }
    // `--version` and `-V` print the same, without loading any configuration.
    for flag in ["--version", "-V"] {
        let (code, out, err) = run_cli(&[flag], &[("FIXTURE__HTTP__PORT", "not-a-port")]);
        assert_eq!((code, out.as_str()), (0, stdout.as_str()), "{flag}: {err}");
    }
}

#[test]
fn a_bad_yaml_file_names_its_line_and_column_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "http:\n  port: 8080\n  addr: [unclosed\n").unwrap();
    let (code, _, stderr) = run_cli(&["--config", file.to_str().unwrap(), "config", "check"], &[]);
    assert_eq!(code, 78, "{stderr}");
    let problem = format!("  - (in {}): not valid YAML: ", file.display());
    assert!(stderr.contains(&problem), "{stderr}");
    assert!(stderr.contains(" line 3 column "), "the position of the problem: {stderr}");
}

#[test]
fn a_set_up_step_refusing_the_configuration_exits_78_and_a_bad_command_line_64() {
    let _one_at_a_time = serial();
    // `app.redis` makes the set-up ask for Redis, and `redis.url` is missing: the configuration
    // is at fault, not the environment.
    let (code, _, stderr) = run_cli(
        &["serve"],
        &[
            ("KEEL_ENV", "test"),
            ("FIXTURE__HTTP__ADDR", "127.0.0.1"),
            ("FIXTURE__HTTP__PORT", "0"),
            ("FIXTURE__APP__REDIS", "true"),
        ],
    );
    assert_eq!(code, 78, "{stderr}");
    let line: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert!(line["error"].as_str().unwrap().contains("redis.url"), "{stderr}");
    let (code, _, stderr) = run_cli(
        &["serve"],
        &[
            ("KEEL_ENV", "test"),
            ("FIXTURE__HTTP__ADDR", "127.0.0.1"),
            ("FIXTURE__HTTP__PORT", "0"),
            ("FIXTURE__APP__DATABASE", "true"),
            ("FIXTURE__DATABASE__URL", "oracle://db/app"),
        ],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
    for args in [&["--no-such-option"][..], &["no-such-command"][..], &["healthcheck", "--timeout", "soon"][..]] {
        let (code, _, stderr) = run_cli(args, &[]);
        assert_eq!(code, 64, "{args:?}: {stderr}");
    }
}

#[test]
fn pretty_logs_redirected_to_a_pipe_have_no_colour() {
    let _one_at_a_time = serial();
    let mut p = Proc::spawn(&[("KEEL_ENV", "development"), ("FIXTURE__LOG__FORMAT", "pretty")]);
    p.wait_for("listening");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);
    let all = p.seen.join("\n");
    assert!(all.contains("INFO"), "pretty lines were written: {all}");
    assert!(!all.contains('\x1b'), "escape codes in a redirected log: {all:?}");
}

#[test]
fn slo_rules_prints_a_rule_file_or_exits_78_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("fixture.yaml");
    std::fs::write(
        &good,
        "service: fixture\nobjectives:\n  - name: availability\n    sli: availability\n    objective: 0.999\n",
    )
    .unwrap();
    // Needs no configuration: an unusable one does not matter.
    let (code, out, err) = run_cli(
        &["slo", "rules", good.to_str().unwrap(), "--runbooks", "https://rb.example/"],
        &[("FIXTURE__HTTP__PORT", "not-a-port")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("# Generated by `fixture slo rules "), "{out}");
    for want in [
        "- name: slo:fixture:recording",
        "record: slo:sli_error:ratio_rate5m",
        "alert: SloAvailabilityBurnRateFast",
        "- name: keel:fixture:alerts",
        "runbook_url: https://rb.example/KeelTargetDown.md",
    ] {
        assert!(out.contains(want), "{want} missing in\n{out}");
    }

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "service: fixture\nobjectives:\n  - {name: a, sli: latency, objective: 2}\n").unwrap();
    let missing = dir.path().join("missing.yaml");
    let (code, out, err) =
        run_cli(&["slo", "rules", bad.to_str().unwrap(), missing.to_str().unwrap(), good.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    for want in [
        "objectives[0].objective: 2 is not a fraction strictly between 0 and 1",
        "objectives[0].threshold: a latency objective needs one",
        "missing.yaml: cannot be read",
    ] {
        assert!(err.contains(want), "{want} missing in\n{err}");
    }
    let (code, _, err) = run_cli(&["slo", "rules", good.to_str().unwrap(), good.to_str().unwrap()], &[]);
    assert_eq!(code, 78);
    assert!(err.contains("service `fixture` has more than one SLO file"), "{err}");
}
